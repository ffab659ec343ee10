//! Admission of TCP connections before they authenticate (sans-IO): a per-source cap, a cap
//! on connections still in their pre-authentication phase, and a log budget so a flood of
//! refusals writes a few lines and a periodic summary instead of a line per connection.
//!
//! Owns: the table of open connections of one endpoint (source, phase), which connection is
//! the oldest unauthenticated one, and the refusal counters. Does not own: sockets, clocks or
//! timers ([`Admission`] takes no time at all; [`LogBudget`] is told `now`), nor the deadline
//! itself (the driver closes a connection whose deadline passed and reports it here).
//!
//! # Policy
//!
//! * A connection is *pre-auth* from accept until it has authenticated (TLS handshake done and
//!   the peer's first CSM received; on `coap+tcp://` the CSM alone), then *live*.
//! * **Per source:** at most `max_per_source` connections (pre-auth and live together) from
//!   one source. IPv4 counts per address; IPv6 per /64 (one host owns a whole /64), and an
//!   IPv4-mapped IPv6 address counts as its IPv4 address. One more is refused outright.
//! * **Pre-auth table:** at most `max_pre_auth` pre-auth connections. When it is full, a new
//!   connection *evicts the oldest* pre-auth one rather than being refused: a flood of idle
//!   sockets from many sources then only shortens how long each of them may stay silent,
//!   while a real client (which authenticates in milliseconds) still gets in.
//! * The endpoint's total cap (pre-auth + live) is enforced by the caller before accept
//!   ([`super::TcpEndpoint`]); keeping `max_pre_auth` below it leaves slots to live
//!   connections whatever unauthenticated peers do.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Default cap on connections from one source (IPv4 address, IPv6 /64).
pub const DEFAULT_MAX_PER_SOURCE: usize = 16;
/// Default cap on connections that have not authenticated yet.
pub const DEFAULT_MAX_PRE_AUTH: usize = 64;
/// Default deadline for TLS handshake and first CSM, from accept.
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Caps on pre-authentication state (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Connections (pre-auth and live) from one source.
    pub max_per_source: usize,
    /// Connections not yet authenticated, across all sources.
    pub max_pre_auth: usize,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            max_per_source: DEFAULT_MAX_PER_SOURCE,
            max_pre_auth: DEFAULT_MAX_PRE_AUTH,
        }
    }
}

/// Names one admitted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

/// Why a connection ends before authenticating, as counted for the log summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source already holds `max_per_source` connections; closed at once.
    PerSource,
    /// Evicted from a full pre-auth table by a newer connection.
    Evicted,
    /// Did not authenticate before the deadline.
    Deadline,
    /// The TLS handshake failed.
    Handshake,
}

impl Refusal {
    const ALL: [Refusal; 4] = [
        Refusal::PerSource,
        Refusal::Evicted,
        Refusal::Deadline,
        Refusal::Handshake,
    ];

    fn index(self) -> usize {
        match self {
            Refusal::PerSource => 0,
            Refusal::Evicted => 1,
            Refusal::Deadline => 2,
            Refusal::Handshake => 3,
        }
    }

    /// The summary's name for this count.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::PerSource => "over_source_cap",
            Refusal::Evicted => "evicted_pre_auth",
            Refusal::Deadline => "auth_deadline",
            Refusal::Handshake => "handshake_failed",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::PerSource => "too many connections from this source",
            Refusal::Evicted => "evicted unauthenticated (pre-auth table full)",
            Refusal::Deadline => "did not authenticate in time",
            Refusal::Handshake => "TLS handshake failed",
        })
    }
}

/// What [`Admission::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Serve it as `id`; if `evict` is set, close that (older, pre-auth) connection now.
    Yes { id: ConnId, evict: Option<ConnId> },
    /// Close it at once, without a handshake.
    No(Refusal),
}

/// The connection table of one endpoint. See the module doc.
#[derive(Debug, Default)]
pub struct Admission {
    limits: AdmissionLimits,
    next: u64,
    /// Every open connection and its source key.
    conns: HashMap<ConnId, IpAddr>,
    per_source: HashMap<IpAddr, usize>,
    /// Pre-auth connections by id; ids grow, so the first is the oldest.
    pre_auth: BTreeMap<ConnId, ()>,
}

/// The key a source is counted under: IPv4 address, IPv6 /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

impl Admission {
    /// An empty table with these caps (each at least one).
    pub fn new(limits: AdmissionLimits) -> Admission {
        Admission {
            limits: AdmissionLimits {
                max_per_source: limits.max_per_source.max(1),
                max_pre_auth: limits.max_pre_auth.max(1),
            },
            ..Admission::default()
        }
    }

    /// Decides on a connection just accepted from `ip`.
    pub fn admit(&mut self, ip: IpAddr) -> Admit {
        let source = source_key(ip);
        let count = self.per_source.get(&source).copied().unwrap_or(0);
        if count >= self.limits.max_per_source {
            return Admit::No(Refusal::PerSource);
        }
        let evict = if self.pre_auth.len() >= self.limits.max_pre_auth {
            self.pre_auth.pop_first().map(|(old, ())| old)
        } else {
            None
        };
        self.next += 1;
        let id = ConnId(self.next);
        self.conns.insert(id, source);
        self.pre_auth.insert(id, ());
        *self.per_source.entry(source).or_insert(0) += 1;
        Admit::Yes { id, evict }
    }

    /// `id` authenticated: it leaves the pre-auth table (and can no longer be evicted).
    /// Returns false if it was not pre-auth (unknown, already live, or already evicted).
    pub fn authenticated(&mut self, id: ConnId) -> bool {
        self.pre_auth.remove(&id).is_some()
    }

    /// `id` is closed (in any phase): its slots are freed. Unknown ids are ignored.
    pub fn closed(&mut self, id: ConnId) {
        let Some(source) = self.conns.remove(&id) else {
            return;
        };
        self.pre_auth.remove(&id);
        if let Some(n) = self.per_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    /// Connections not yet authenticated.
    pub fn pre_auth(&self) -> usize {
        self.pre_auth.len()
    }

    /// Open connections that are not pre-auth (authenticated, or evicted and not yet closed).
    pub fn live(&self) -> usize {
        self.conns.len().saturating_sub(self.pre_auth.len())
    }

    /// Connections open from `ip`'s source.
    pub fn from_source(&self, ip: IpAddr) -> usize {
        self.per_source.get(&source_key(ip)).copied().unwrap_or(0)
    }
}

/// How often a [`LogBudget`] summarises.
pub const SUMMARY_PERIOD: Duration = Duration::from_secs(10);
/// Refusals logged one by one in each period before the rest are only counted.
pub const DETAILED_PER_PERIOD: u32 = 5;

/// Rate limit for refusal logs: the first [`DETAILED_PER_PERIOD`] refusals of each
/// [`SUMMARY_PERIOD`] are logged individually, every refusal is counted, and at the end of a
/// period with refusals one summary gives the counts.
#[derive(Debug)]
pub struct LogBudget {
    period_start: Instant,
    detailed: u32,
    counts: [u64; 4],
}

/// Counts of one period, by kind; see [`Refusal::as_str`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Length of the period summarised.
    pub over: Duration,
    /// Counts in [`Refusal`] order, with their names.
    pub counts: Vec<(Refusal, u64)>,
    /// Refusals that were not logged individually.
    pub unlogged: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "in the last {:?}:", self.over)?;
        for (kind, n) in &self.counts {
            write!(f, " {}={n}", kind.as_str())?;
        }
        write!(f, " ({} not logged individually)", self.unlogged)
    }
}

impl LogBudget {
    pub fn new(now: Instant) -> LogBudget {
        LogBudget {
            period_start: now,
            detailed: 0,
            counts: [0; 4],
        }
    }

    /// Counts one refusal; true if it may be logged individually.
    pub fn note(&mut self, kind: Refusal) -> bool {
        if let Some(n) = self.counts.get_mut(kind.index()) {
            *n += 1;
        }
        if self.detailed < DETAILED_PER_PERIOD {
            self.detailed += 1;
            return true;
        }
        false
    }

    /// When [`LogBudget::summary`] should next be called.
    pub fn next_summary(&self) -> Instant {
        self.period_start + SUMMARY_PERIOD
    }

    /// At the end of a period: the summary if anything was refused (then a new period
    /// starts); `None` before the period ends or when it was quiet.
    pub fn summary(&mut self, now: Instant) -> Option<Summary> {
        if now < self.next_summary() {
            return None;
        }
        let over = now.saturating_duration_since(self.period_start);
        let total: u64 = self.counts.iter().sum();
        let unlogged = total.saturating_sub(u64::from(self.detailed));
        let counts = Refusal::ALL
            .iter()
            .filter_map(|k| {
                let n = self.counts.get(k.index()).copied().unwrap_or(0);
                (n > 0).then_some((*k, n))
            })
            .collect();
        *self = LogBudget::new(now);
        (total > 0).then_some(Summary {
            over,
            counts,
            unlogged,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    fn limits(per_source: usize, pre_auth: usize) -> AdmissionLimits {
        AdmissionLimits {
            max_per_source: per_source,
            max_pre_auth: pre_auth,
        }
    }

    fn admitted(a: &mut Admission, ip: IpAddr) -> (ConnId, Option<ConnId>) {
        match a.admit(ip) {
            Admit::Yes { id, evict } => (id, evict),
            Admit::No(r) => panic!("refused: {r}"),
        }
    }

    #[test]
    fn a_source_over_its_cap_is_refused_while_another_source_is_admitted() {
        let mut a = Admission::new(limits(2, 100));
        admitted(&mut a, v4(2));
        admitted(&mut a, v4(2));
        assert_eq!(a.admit(v4(2)), Admit::No(Refusal::PerSource));
        admitted(&mut a, v4(3));
        assert_eq!(a.from_source(v4(2)), 2);
    }

    #[test]
    fn live_connections_count_against_the_source_cap_and_closing_frees_it() {
        let mut a = Admission::new(limits(1, 100));
        let (id, _) = admitted(&mut a, v4(2));
        assert!(a.authenticated(id));
        assert!(!a.authenticated(id), "only once");
        assert_eq!((a.pre_auth(), a.live()), (0, 1));
        assert_eq!(a.admit(v4(2)), Admit::No(Refusal::PerSource));
        a.closed(id);
        a.closed(id);
        assert_eq!(a.from_source(v4(2)), 0);
        admitted(&mut a, v4(2));
    }

    #[test]
    fn a_full_pre_auth_table_evicts_its_oldest_never_a_live_connection() {
        let mut a = Admission::new(limits(10, 2));
        let (first, _) = admitted(&mut a, v4(2));
        let (second, _) = admitted(&mut a, v4(3));
        let (third, evict) = admitted(&mut a, v4(4));
        assert_eq!(evict, Some(first));
        a.closed(first);
        assert!(a.authenticated(second));
        let (_, evict) = admitted(&mut a, v4(5));
        assert_eq!(evict, None, "one pre-auth (third) and one free entry");
        let (_, evict) = admitted(&mut a, v4(6));
        assert_eq!(evict, Some(third));
        a.closed(third);
        assert_eq!((a.pre_auth(), a.live()), (2, 1));
        assert!(!a.authenticated(first), "evicted and closed");
    }

    #[test]
    fn ipv6_counts_per_slash_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(source_key(mapped), v4(2));
        let mut adm = Admission::new(limits(1, 10));
        admitted(&mut adm, a);
        assert_eq!(adm.admit(b), Admit::No(Refusal::PerSource));
        admitted(&mut adm, c);
    }

    #[test]
    fn zero_caps_are_raised_to_one() {
        let mut a = Admission::new(limits(0, 0));
        admitted(&mut a, v4(2));
        assert_eq!(a.admit(v4(2)), Admit::No(Refusal::PerSource));
    }

    #[test]
    fn a_flood_logs_a_few_lines_and_one_summary_per_period() {
        let t0 = Instant::now();
        let mut log = LogBudget::new(t0);
        let logged = (0..10_000)
            .filter(|i| {
                log.note(if i % 2 == 0 {
                    Refusal::PerSource
                } else {
                    Refusal::Deadline
                })
            })
            .count();
        assert_eq!(logged, DETAILED_PER_PERIOD as usize);
        assert_eq!(log.summary(t0 + Duration::from_secs(1)), None, "too early");
        let s = log
            .summary(t0 + SUMMARY_PERIOD)
            .expect("a summary at the end of the period");
        assert_eq!(
            s.counts,
            vec![(Refusal::PerSource, 5_000), (Refusal::Deadline, 5_000)]
        );
        assert_eq!(s.unlogged, 10_000 - u64::from(DETAILED_PER_PERIOD));
        assert!(s.to_string().contains("over_source_cap=5000"), "{s}");
        assert_eq!(log.summary(t0 + SUMMARY_PERIOD * 2), None, "quiet period");
        assert!(log.note(Refusal::Handshake), "a new period logs again");
    }
}
