//! Caps on stored privileges: in total and per server (the Grantor, the server whose
//! verified write made or last changed an entry). Checked after the gateway gate and the
//! validation, before any device traffic, so a full gateway costs no device reads.
//!
//! Owns: the counts, initialised from the store at start and kept in step with each commit,
//! and the reservations that make the check exact under concurrency: a write takes its
//! slot before verification and gives it back if it does not commit (the
//! [`Reservation`] drop guard), so two concurrent Adds cannot both take the last slot.
//! Does not own: the store (the source of truth) or the answer code (`front::answer`).
//!
//! What counts: an Add takes one slot in total and one for the requesting server; a Replace
//! by another server than the entry's Grantor moves the entry to the requester (one slot for
//! the requester, one back to the old Grantor on commit); a Delete gives both back on commit.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::config::Limits;
use crate::mo::ChangeKind;

/// A cap that a write would exceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// The gateway holds `max` privileges.
    #[error(
        "privilege limit reached: the gateway holds {max} privileges (limits.max_privileges); delete some first"
    )]
    Total { max: usize },
    /// `server` is the Grantor of `max` privileges.
    #[error(
        "privilege limit reached: {server} is the Grantor of {max} privileges (limits.max_privileges_per_server); delete some first"
    )]
    PerServer { server: String, max: usize },
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_grantor: HashMap<String, usize>,
}

impl Counts {
    fn add(&mut self, grantor: &str, total: isize, own: isize) {
        self.total = self.total.saturating_add_signed(total);
        let n = self.by_grantor.entry(grantor.to_owned()).or_default();
        *n = n.saturating_add_signed(own);
        if *n == 0 {
            self.by_grantor.remove(grantor);
        }
    }
}

/// Privilege counts and caps of one gateway.
#[derive(Debug)]
pub struct Quota {
    max_total: usize,
    max_per_server: usize,
    counts: Mutex<Counts>,
}

impl Quota {
    /// Caps from `[limits]`; `by_grantor` is what the store holds now.
    pub fn new(limits: &Limits, by_grantor: HashMap<String, usize>) -> Self {
        let total = by_grantor.values().sum();
        Quota {
            max_total: limits.max_privileges,
            max_per_server: limits.max_privileges_per_server,
            counts: Mutex::new(Counts { total, by_grantor }),
        }
    }

    /// Privileges counted in total (reservations included).
    pub fn total(&self) -> usize {
        self.lock().total
    }

    /// Privileges counted for `grantor` (reservations included).
    pub fn of(&self, grantor: &str) -> usize {
        self.lock().by_grantor.get(grantor).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the slots a `kind` write by `server` needs (`old_grantor`: the Grantor of the
    /// entry it changes, if any), or refuses with the cap it would exceed.
    pub fn reserve(
        &self,
        server: &str,
        kind: ChangeKind,
        old_grantor: Option<&str>,
    ) -> Result<Reservation<'_>, QuotaError> {
        let moves = kind == ChangeKind::Replace && old_grantor.is_some_and(|g| g != server);
        let (total, own) = match kind {
            ChangeKind::Add => (1, 1),
            ChangeKind::Replace if moves => (0, 1),
            _ => (0, 0),
        };
        let mut counts = self.lock();
        if total > 0 && counts.total >= self.max_total {
            return Err(QuotaError::Total {
                max: self.max_total,
            });
        }
        let held = counts.by_grantor.get(server).copied().unwrap_or(0);
        if own > 0 && held >= self.max_per_server {
            return Err(QuotaError::PerServer {
                server: server.to_owned(),
                max: self.max_per_server,
            });
        }
        counts.add(server, total, own);
        let on_commit = match kind {
            ChangeKind::Delete => old_grantor.map(|g| (g.to_owned(), -1, -1)),
            ChangeKind::Replace if moves => old_grantor.map(|g| (g.to_owned(), 0, -1)),
            _ => None,
        };
        Ok(Reservation {
            quota: self,
            server: server.to_owned(),
            taken: (total, own),
            on_commit,
            done: false,
        })
    }
}

/// Slots taken for one write: [`commit`](Self::commit) once the store committed it;
/// dropping it uncommitted gives them back.
#[derive(Debug)]
#[must_use = "commit the reservation after the store commit, or drop it to give the slots back"]
pub struct Reservation<'a> {
    quota: &'a Quota,
    server: String,
    taken: (isize, isize),
    /// (old Grantor, total, own) applied on commit.
    on_commit: Option<(String, isize, isize)>,
    done: bool,
}

impl Reservation<'_> {
    /// The write is committed: keep the slots, release the old Grantor's.
    pub fn commit(mut self) {
        if let Some((grantor, total, own)) = self.on_commit.take() {
            self.quota.lock().add(&grantor, total, own);
        }
        self.done = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.done {
            let (total, own) = self.taken;
            self.quota.lock().add(&self.server, -total, -own);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(total: usize, per_server: usize) -> Quota {
        let limits = Limits {
            max_privileges: total,
            max_privileges_per_server: per_server,
            ..Limits::default()
        };
        Quota::new(&limits, HashMap::new())
    }

    #[test]
    fn adds_are_capped_per_server_and_in_total() {
        let q = quota(3, 2);
        q.reserve("A", ChangeKind::Add, None).unwrap().commit();
        q.reserve("A", ChangeKind::Add, None).unwrap().commit();
        assert_eq!(
            q.reserve("A", ChangeKind::Add, None).unwrap_err(),
            QuotaError::PerServer {
                server: "A".into(),
                max: 2
            }
        );
        q.reserve("B", ChangeKind::Add, None).unwrap().commit();
        assert_eq!(
            q.reserve("C", ChangeKind::Add, None).unwrap_err(),
            QuotaError::Total { max: 3 }
        );
        // Replacing one's own entry needs no slot, even at the cap.
        q.reserve("A", ChangeKind::Replace, Some("A"))
            .unwrap()
            .commit();
    }

    #[test]
    fn an_uncommitted_reservation_gives_its_slot_back() {
        let q = quota(1, 1);
        let r = q.reserve("A", ChangeKind::Add, None).unwrap();
        assert!(
            q.reserve("B", ChangeKind::Add, None).is_err(),
            "the slot is taken"
        );
        drop(r);
        assert_eq!((q.total(), q.of("A")), (0, 0));
        q.reserve("B", ChangeKind::Add, None).unwrap().commit();
        assert_eq!(q.total(), 1);
    }

    #[test]
    fn delete_and_moving_replace_release_on_commit() {
        let q = Quota::new(
            &Limits {
                max_privileges: 10,
                max_privileges_per_server: 1,
                ..Limits::default()
            },
            HashMap::from([("A".to_owned(), 1)]),
        );
        assert!(q.reserve("B", ChangeKind::Add, None).is_ok());
        // B takes A's entry over: B's slot is taken, A's comes back on commit.
        q.reserve("B", ChangeKind::Replace, Some("A"))
            .unwrap()
            .commit();
        assert_eq!((q.of("A"), q.of("B"), q.total()), (0, 1, 1));
        let del = q.reserve("A", ChangeKind::Delete, Some("B")).unwrap();
        assert_eq!(q.of("B"), 1, "nothing released before the commit");
        del.commit();
        assert_eq!((q.of("B"), q.total()), (0, 0));
    }
}
