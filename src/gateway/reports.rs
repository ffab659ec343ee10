//! Failure reports: the complete `Failed` list of a refused write whose answer had to be
//! truncated to fit one message (DESIGN.md §5), served at `/GwConfig/Reports/<id>`.
//!
//! Pure and in memory: time is an argument (`now`), ids come from the caller (random hex,
//! unguessable). Bounded in count, bytes and age: inserting beyond `max_count` reports or
//! `max_bytes` (their CBOR size together) drops the oldest reports; a report older than
//! `max_age` is gone (pruned on every call, so no timer is needed). A single report larger
//! than `max_bytes` is still kept, alone. Reports do not survive a restart.
//!
//! Only the server whose write was refused may read its report. Any other server gets the
//! same answer as for an unknown or expired id (4.04), so a report's existence leaks nothing.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::mo::Value;

/// The URI path under which reports are served.
pub const REPORTS_PATH: &str = "/GwConfig/Reports";

/// How many reports are kept, how large together, and for how long (config
/// `limits.max_reports`, default 256; `limits.report_max_bytes`, default 16 MiB;
/// `limits.report_max_age_s`, default 600).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportLimits {
    pub max_count: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
}

#[derive(Debug)]
struct Report {
    owner: String,
    created: Instant,
    body: Value,
    /// The body's CBOR size, counted against `max_bytes`.
    bytes: usize,
}

/// The reports of refused writes, by id.
#[derive(Debug)]
pub struct ReportStore {
    limits: ReportLimits,
    by_id: HashMap<String, Report>,
    /// Ids oldest first (insertion order is age order: `now` never goes back).
    order: VecDeque<String>,
    /// The `bytes` of every report kept.
    bytes: usize,
}

impl ReportStore {
    pub fn new(limits: ReportLimits) -> Self {
        ReportStore {
            limits: ReportLimits {
                max_count: limits.max_count.max(1),
                ..limits
            },
            by_id: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
        }
    }

    /// The CBOR size of every report kept now (after pruning at `now`).
    pub fn bytes(&mut self, now: Instant) -> usize {
        self.prune(now);
        self.bytes
    }

    /// Reports kept now (after pruning at `now`).
    pub fn len(&mut self, now: Instant) -> usize {
        self.prune(now);
        self.by_id.len()
    }

    pub fn is_empty(&mut self, now: Instant) -> bool {
        self.len(now) == 0
    }

    /// Keeps `body` under `id` for `owner` (a ServerID), dropping the oldest reports beyond
    /// the count and byte bounds. An id already present is replaced.
    pub fn insert(&mut self, now: Instant, id: String, owner: &str, body: Value) {
        self.prune(now);
        if let Some(old) = self.by_id.remove(&id) {
            self.bytes = self.bytes.saturating_sub(old.bytes);
            self.order.retain(|k| *k != id);
        }
        let bytes = body.to_cbor().len();
        while !self.by_id.is_empty()
            && (self.by_id.len() >= self.limits.max_count
                || self.bytes.saturating_add(bytes) > self.limits.max_bytes)
        {
            self.drop_oldest();
        }
        self.order.push_back(id.clone());
        self.bytes = self.bytes.saturating_add(bytes);
        self.by_id.insert(
            id,
            Report {
                owner: owner.to_owned(),
                created: now,
                body,
                bytes,
            },
        );
    }

    fn drop_oldest(&mut self) {
        if let Some(id) = self.order.pop_front() {
            if let Some(r) = self.by_id.remove(&id) {
                self.bytes = self.bytes.saturating_sub(r.bytes);
            }
        }
    }

    /// The report `id` if it is still kept and `server` owns it; `None` otherwise, whether it
    /// never existed, expired, was evicted or belongs to another server.
    pub fn get(&mut self, now: Instant, id: &str, server: &str) -> Option<&Value> {
        self.prune(now);
        self.by_id
            .get(id)
            .filter(|r| r.owner == server)
            .map(|r| &r.body)
    }

    fn prune(&mut self, now: Instant) {
        while let Some(oldest) = self.order.front() {
            let expired = self
                .by_id
                .get(oldest)
                .is_none_or(|r| now.saturating_duration_since(r.created) >= self.limits.max_age);
            if !expired {
                break;
            }
            self.drop_oldest();
        }
    }
}

/// A fresh unguessable report id: 128 random bits as lowercase hex.
pub fn new_report_id() -> Result<String, openssl::error::ErrorStack> {
    let mut bytes = [0u8; 16];
    openssl::rand::rand_bytes(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_count: usize, max_age_s: u64) -> ReportStore {
        ReportStore::new(ReportLimits {
            max_count,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(max_age_s),
        })
    }

    fn body(n: i64) -> Value {
        Value::map([("FailedCount", Value::Int(n))])
    }

    #[test]
    fn the_owner_reads_its_report_and_nobody_else_does() {
        let t0 = Instant::now();
        let mut s = store(4, 600);
        s.insert(t0, "r1".into(), "ServerA", body(30));
        assert_eq!(s.get(t0, "r1", "ServerA"), Some(&body(30)));
        assert_eq!(s.get(t0, "r1", "ServerB"), None);
        assert_eq!(s.get(t0, "r2", "ServerA"), None);
    }

    #[test]
    fn reports_expire_at_max_age() {
        let t0 = Instant::now();
        let mut s = store(4, 600);
        s.insert(t0, "r1".into(), "ServerA", body(1));
        s.insert(
            t0 + Duration::from_secs(300),
            "r2".into(),
            "ServerA",
            body(2),
        );
        let almost = t0 + Duration::from_secs(599);
        assert!(s.get(almost, "r1", "ServerA").is_some());
        let expired = t0 + Duration::from_secs(600);
        assert!(s.get(expired, "r1", "ServerA").is_none());
        assert!(s.get(expired, "r2", "ServerA").is_some());
        assert_eq!(s.len(expired), 1);
        assert!(s.is_empty(t0 + Duration::from_secs(900)));
    }

    #[test]
    fn the_count_bound_drops_the_oldest() {
        let t0 = Instant::now();
        let mut s = store(3, 600);
        for i in 0..5u64 {
            s.insert(
                t0 + Duration::from_secs(i),
                format!("r{i}"),
                "ServerA",
                body(0),
            );
        }
        let now = t0 + Duration::from_secs(5);
        assert_eq!(s.len(now), 3);
        assert!(s.get(now, "r0", "ServerA").is_none());
        assert!(s.get(now, "r1", "ServerA").is_none());
        assert!(s.get(now, "r4", "ServerA").is_some());
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_but_keeps_the_newest() {
        let t0 = Instant::now();
        let big = |tag: &str| Value::map([("Failed", Value::text(tag.repeat(100)))]);
        let size = big("a").to_cbor().len();
        let mut s = ReportStore::new(ReportLimits {
            max_count: 100,
            max_bytes: 2 * size,
            max_age: Duration::from_secs(600),
        });
        s.insert(t0, "r1".into(), "ServerA", big("a"));
        s.insert(t0, "r2".into(), "ServerA", big("b"));
        assert_eq!(s.bytes(t0), 2 * size);
        s.insert(t0, "r3".into(), "ServerA", big("c"));
        assert_eq!(s.len(t0), 2);
        assert!(s.get(t0, "r1", "ServerA").is_none());
        assert_eq!(s.bytes(t0), 2 * size);
        // One report above the whole budget is kept, alone.
        s.insert(t0, "huge".into(), "ServerA", big(&"x".repeat(10)));
        assert_eq!(s.len(t0), 1);
        assert!(s.get(t0, "huge", "ServerA").is_some());
        // Expiry gives the bytes back.
        assert_eq!(s.bytes(t0 + Duration::from_secs(600)), 0);
    }

    #[test]
    fn replacing_an_id_keeps_one_entry() {
        let t0 = Instant::now();
        let mut s = store(2, 600);
        s.insert(t0, "r".into(), "ServerA", body(1));
        s.insert(t0, "r".into(), "ServerB", body(2));
        assert_eq!(s.len(t0), 1);
        assert_eq!(s.get(t0, "r", "ServerB"), Some(&body(2)));
        s.insert(t0, "q".into(), "ServerA", body(3));
        assert_eq!(s.len(t0), 2, "the replaced id left no stale slot behind");
    }

    #[test]
    fn ids_are_32_hex_digits_and_differ() {
        let a = new_report_id().unwrap();
        let b = new_report_id().unwrap();
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }
}
