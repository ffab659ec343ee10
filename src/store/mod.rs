//! Committed privileges behind a narrow trait: [`PrivilegeStore`]. The redb implementation
//! keeps one file and commits each verified change in one durable write transaction (fsync
//! before the answer is sent); the in-memory one serves unit tests.
//!
//! Calls are synchronous; async callers go through `spawn_blocking`.
//!
//! A commit may carry a [`dedup`] record (the request's fingerprint and its answer), written
//! in the same transaction, so a retransmission after a crash is answered from it, and an
//! audit record (CBOR, encoded by `crate::audit`), so the trail of changes is exactly the
//! changes. The audit table is keyed by a sequence number that survives restarts and is
//! bounded by count ([`AuditBatch::retention`]).
//!
//! Every committed change is published on the store's change [`feed`] after its
//! transaction commits ([`PrivilegeStore::subscribe`]).

pub mod dedup;
pub mod feed;
mod memory;
mod redb_store;
pub mod view;

pub use dedup::{Fingerprint, Recorded};
pub use feed::{ChangeFeed, StoreChange};
pub use memory::MemoryStore;
pub use redb_store::RedbStore;
pub use view::PrivilegeView;

use std::time::{Duration, SystemTime};

use crate::mo::{Privilege, PrivilegeName};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {message}")]
    Backend { path: String, message: String },
    #[error("stored entry '{name}' is unreadable: {message}")]
    Corrupt { name: String, message: String },
    #[error("privilege '{0}' exists already")]
    Exists(PrivilegeName),
    #[error("privilege '{0}' does not exist")]
    Missing(PrivilegeName),
}

/// A fingerprinted request's answer, to commit with its write.
#[derive(Debug, Clone)]
pub struct DedupRecord {
    pub fingerprint: Fingerprint,
    pub answer: Recorded,
    /// Records older than this are expired (EXCHANGE_LIFETIME).
    pub max_age: Duration,
}

/// One verified write to commit atomically.
#[derive(Debug, Clone)]
pub enum Commit {
    /// Insert a new entry; `name` `None` lets the store name it (`p1`, `p2`, …).
    Add {
        name: Option<PrivilegeName>,
        entry: Privilege,
    },
    /// Overwrite an existing entry.
    Replace {
        name: PrivilegeName,
        entry: Privilege,
    },
    Delete {
        name: PrivilegeName,
    },
}

impl Commit {
    /// The entry this commit stores (`None` for a Delete): what the change feed publishes.
    pub fn stored_entry(&self) -> Option<Privilege> {
        match self {
            Commit::Add { entry, .. } | Commit::Replace { entry, .. } => Some(entry.clone()),
            Commit::Delete { .. } => None,
        }
    }
}

/// Audit records to append in one transaction (each CBOR, encoded by `crate::audit`), and
/// the retention bound: after appending, the oldest records beyond `retention` are deleted,
/// at most `records.len() + AUDIT_SWEEP` of them per transaction (so a lowered bound is
/// reached over a few writes, with bounded work in each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditBatch {
    pub records: Vec<Vec<u8>>,
    pub retention: usize,
}

/// How many audit records beyond the new ones one transaction deletes at most.
pub const AUDIT_SWEEP: usize = 256;

/// What a commit writes in its transaction besides the change itself.
#[derive(Debug, Clone, Default)]
pub struct CommitExtras {
    /// The request's fingerprint and answer (duplicate suppression across restarts).
    pub dedup: Option<DedupRecord>,
    /// The audit record of the change.
    pub audit: Option<AuditBatch>,
}

/// How many expired dedup records one commit removes at most (expiry is lazy and bounded).
pub const DEDUP_SWEEP: usize = 64;

/// The number in a gateway-style name `p<n>` (so a named Add of `p7` moves the counter past 7).
pub fn generated_number(name: &PrivilegeName) -> Option<u64> {
    let digits = name.as_str().strip_prefix('p')?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A page of the audit table: `(seq, CBOR record)` in `seq` order, and whether more follow.
pub type AuditPage = (Vec<(u64, Vec<u8>)>, bool);

pub trait PrivilegeStore: Send + Sync + 'static {
    /// Applies `commit` atomically and durably; returns the name it applied to.
    fn commit(&self, commit: Commit) -> Result<PrivilegeName, StoreError> {
        self.commit_recorded(commit, None)
    }

    /// Like [`commit`](Self::commit), and in the same transaction records `record` (a
    /// request fingerprint and the answer it gets) and drops up to [`DEDUP_SWEEP`] records
    /// older than their `max_age`.
    fn commit_recorded(
        &self,
        commit: Commit,
        record: Option<DedupRecord>,
    ) -> Result<PrivilegeName, StoreError> {
        self.commit_with(
            commit,
            CommitExtras {
                dedup: record,
                audit: None,
            },
        )
    }

    /// Applies `commit` and writes `extras` (dedup record, audit records) in one durable
    /// transaction: all of it or none. On success the change is published on the feed.
    fn commit_with(
        &self,
        commit: Commit,
        extras: CommitExtras,
    ) -> Result<PrivilegeName, StoreError>;

    /// A receiver of every change committed from now on, in commit order (see [`feed`]).
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StoreChange>;

    /// The committed privileges in memory (see [`view`]): reads without a transaction.
    fn view(&self) -> &PrivilegeView;

    /// Appends `batch` to the audit table in one durable transaction (applying its
    /// retention); returns the `seq` of the last record appended (0 if none ever was).
    fn append_audit(&self, batch: AuditBatch) -> Result<u64, StoreError>;

    /// Up to `limit` audit records with `seq > since`, in `seq` order, and whether more
    /// follow.
    fn audit_page(&self, since: u64, limit: usize) -> Result<AuditPage, StoreError>;

    /// The answer recorded for `fingerprint`, if it is younger than `max_age` at `now`.
    fn recall(
        &self,
        fingerprint: &Fingerprint,
        now: SystemTime,
        max_age: Duration,
    ) -> Result<Option<Recorded>, StoreError>;

    /// The next gateway-chosen name `p<n>` after the counter that is neither stored nor
    /// `taken` (reserved by a write in progress). Writes nothing: the counter moves when an
    /// Add of that name commits.
    fn next_name(
        &self,
        taken: &dyn Fn(&PrivilegeName) -> bool,
    ) -> Result<PrivilegeName, StoreError>;
    fn get(&self, name: &PrivilegeName) -> Result<Option<Privilege>, StoreError>;
    /// Every entry in name order.
    fn list(&self) -> Result<Vec<(PrivilegeName, Privilege)>, StoreError>;

    /// Up to `limit` entries whose names sort after `after` (exclusive), in name order, and
    /// whether more follow. The default reads the whole list; backends override it.
    fn list_page(
        &self,
        after: Option<&PrivilegeName>,
        limit: usize,
    ) -> Result<(Vec<(PrivilegeName, Privilege)>, bool), StoreError> {
        let mut rest: Vec<_> = self
            .list()?
            .into_iter()
            .filter(|(n, _)| after.is_none_or(|a| n.as_str() > a.as_str()))
            .collect();
        let more = rest.len() > limit;
        rest.truncate(limit);
        Ok((rest, more))
    }

    /// How many entries each Grantor holds (for the privilege caps; read once at start).
    fn grantor_counts(&self) -> Result<std::collections::HashMap<String, usize>, StoreError> {
        let mut counts = std::collections::HashMap::new();
        for (_, p) in self.list()? {
            *counts.entry(p.grantor).or_insert(0) += 1;
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mo::TargetType;

    fn entry(acl: &str) -> Privilege {
        let mut p = Privilege::from_leaves([
            ("TargetID", "G1"),
            ("TargetType", "Group"),
            ("URI", "/3/0"),
            ("ACL", acl),
        ])
        .unwrap();
        p.grantor = "ServerA".into();
        p.verified_at = "2026-11-29T10:00:00Z".into();
        p
    }

    fn exercise(store: &dyn PrivilegeStore) {
        let n1 = store
            .commit(Commit::Add {
                name: None,
                entry: entry("Get=ServerB"),
            })
            .unwrap();
        let n2 = store
            .commit(Commit::Add {
                name: None,
                entry: entry("Get=ServerC"),
            })
            .unwrap();
        assert_ne!(n1, n2, "generated names are unique");
        let named = PrivilegeName::new("mine").unwrap();
        store
            .commit(Commit::Add {
                name: Some(named.clone()),
                entry: entry("Get=ServerB"),
            })
            .unwrap();
        assert!(matches!(
            store.commit(Commit::Add {
                name: Some(named.clone()),
                entry: entry("Get=ServerB")
            }),
            Err(StoreError::Exists(_))
        ));
        store
            .commit(Commit::Replace {
                name: named.clone(),
                entry: entry("Replace=ServerB"),
            })
            .unwrap();
        assert_eq!(
            store.get(&named).unwrap().unwrap().acl.to_string(),
            "Replace=ServerB"
        );
        assert_eq!(store.list().unwrap().len(), 3);
        store.commit(Commit::Delete { name: n1.clone() }).unwrap();
        assert!(store.get(&n1).unwrap().is_none());
        assert!(matches!(
            store.commit(Commit::Delete { name: n1 }),
            Err(StoreError::Missing(_))
        ));
        assert!(matches!(
            store.commit(Commit::Replace {
                name: PrivilegeName::new("nope").unwrap(),
                entry: entry("Get=*")
            }),
            Err(StoreError::Missing(_))
        ));
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].1.target_type, TargetType::Group);
    }

    fn pages(store: &dyn PrivilegeStore) {
        for i in [3, 1, 2, 10] {
            let name = PrivilegeName::new(&format!("n{i}")).unwrap();
            store
                .commit(Commit::Add {
                    name: Some(name),
                    entry: entry("Get=*"),
                })
                .unwrap();
        }
        let names = |v: Vec<(PrivilegeName, Privilege)>| -> Vec<String> {
            v.into_iter().map(|(n, _)| n.as_str().to_owned()).collect()
        };
        let (first, more) = store.list_page(None, 2).unwrap();
        assert_eq!(
            (names(first), more),
            (vec!["n1".into(), "n10".into()], true)
        );
        let after = PrivilegeName::new("n10").unwrap();
        let (rest, more) = store.list_page(Some(&after), 2).unwrap();
        assert_eq!((names(rest), more), (vec!["n2".into(), "n3".into()], false));
        let counts = store.grantor_counts().unwrap();
        assert_eq!(counts.get("ServerA"), Some(&4));
    }

    #[test]
    fn both_stores_page_in_name_order_and_count_by_grantor() {
        pages(&MemoryStore::default());
        let dir = tempfile::tempdir().unwrap();
        pages(&RedbStore::open(&dir.path().join("p.redb")).unwrap());
    }

    #[test]
    fn memory_store_behaves() {
        exercise(&MemoryStore::default());
        names_and_dedup(&MemoryStore::default());
    }

    fn record(fp: u8, at_ms: u64, name: &str) -> DedupRecord {
        DedupRecord {
            fingerprint: Fingerprint([fp; 32]),
            answer: Recorded {
                at_ms,
                code: 0x41,
                content_format: Some(60),
                location_path: vec!["GwConfig".into(), "Privileges".into(), name.into()],
                payload: vec![0xa0],
            },
            max_age: LIFE,
        }
    }

    const LIFE: Duration = Duration::from_secs(247);
    const T0: u64 = 1_800_000_000_000;

    fn at(ms: u64) -> SystemTime {
        std::time::UNIX_EPOCH + Duration::from_millis(ms)
    }

    /// Reserved names are skipped, a named `p<n>` moves the counter, and a recorded
    /// fingerprint is recalled until it is EXCHANGE_LIFETIME old.
    fn names_and_dedup(store: &dyn PrivilegeStore) {
        let p1 = PrivilegeName::new("p1").unwrap();
        assert_eq!(store.next_name(&|_| false).unwrap(), p1);
        assert_eq!(store.next_name(&|n| *n == p1).unwrap().as_str(), "p2");
        store
            .commit_recorded(
                Commit::Add {
                    name: Some(PrivilegeName::new("p5").unwrap()),
                    entry: entry("Get=*"),
                },
                Some(record(1, T0, "p5")),
            )
            .unwrap();
        assert_eq!(store.next_name(&|_| false).unwrap().as_str(), "p6");
        let fp = Fingerprint([1; 32]);
        let got = store.recall(&fp, at(T0 + 246_000), LIFE).unwrap();
        assert_eq!(got.unwrap().location_path[2], "p5");
        assert!(store.recall(&fp, at(T0 + 247_000), LIFE).unwrap().is_none());
        assert!(
            store
                .recall(&Fingerprint([2; 32]), at(T0), LIFE)
                .unwrap()
                .is_none()
        );
        // A later commit sweeps the expired record away.
        store
            .commit_recorded(
                Commit::Add {
                    name: None,
                    entry: entry("Get=*"),
                },
                Some(record(2, T0 + 300_000, "p6")),
            )
            .unwrap();
        assert!(
            store
                .recall(&fp, at(T0 + 1000), Duration::from_secs(1 << 30))
                .unwrap()
                .is_none(),
            "swept"
        );
    }

    #[test]
    fn redb_dedup_records_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            names_and_dedup(&store);
            store
                .commit_recorded(
                    Commit::Add {
                        name: None,
                        entry: entry("Get=*"),
                    },
                    Some(record(3, T0 + 400_000, "p7")),
                )
                .unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        let got = store
            .recall(&Fingerprint([3; 32]), at(T0 + 400_001), LIFE)
            .unwrap()
            .expect("recorded in the commit, durable");
        assert_eq!(got.location_path[2], "p7");
        assert_eq!(store.next_name(&|_| false).unwrap().as_str(), "p8");
    }

    fn batch(records: &[&str], retention: usize) -> AuditBatch {
        AuditBatch {
            records: records.iter().map(|r| r.as_bytes().to_vec()).collect(),
            retention,
        }
    }

    fn seqs(page: &AuditPage) -> Vec<u64> {
        page.0.iter().map(|(s, _)| *s).collect()
    }

    /// Sequence numbers count on, pages start after `since`, retention keeps the newest.
    fn audit_table(store: &dyn PrivilegeStore) {
        assert_eq!(store.audit_page(0, 10).unwrap(), (Vec::new(), false));
        assert_eq!(store.append_audit(batch(&["a", "b", "c"], 10)).unwrap(), 3);
        let page = store.audit_page(0, 2).unwrap();
        assert_eq!((seqs(&page), page.1), (vec![1, 2], true));
        assert_eq!(page.0[1].1, b"b");
        let page = store.audit_page(2, 2).unwrap();
        assert_eq!((seqs(&page), page.1), (vec![3], false));
        // A commit carries its record in its own transaction.
        store
            .commit_with(
                Commit::Add {
                    name: Some(PrivilegeName::new("x").unwrap()),
                    entry: entry("Get=*"),
                },
                CommitExtras {
                    dedup: None,
                    audit: Some(batch(&["commit"], 10)),
                },
            )
            .unwrap();
        let page = store.audit_page(3, 10).unwrap();
        assert_eq!(page.0, vec![(4, b"commit".to_vec())]);
        // A refused commit writes no record either.
        assert!(
            store
                .commit_with(
                    Commit::Delete {
                        name: PrivilegeName::new("nope").unwrap()
                    },
                    CommitExtras {
                        dedup: None,
                        audit: Some(batch(&["lost"], 10)),
                    },
                )
                .is_err()
        );
        assert_eq!(seqs(&store.audit_page(0, 100).unwrap()), [1, 2, 3, 4]);
        // Retention 3: the oldest go, the sequence goes on.
        assert_eq!(store.append_audit(batch(&["e", "f"], 3)).unwrap(), 6);
        assert_eq!(seqs(&store.audit_page(0, 100).unwrap()), [4, 5, 6]);
        // A much lower bound is reached with bounded work per write: records + AUDIT_SWEEP.
        let many: Vec<String> = (0..600).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        store.append_audit(batch(&many, 1000)).unwrap();
        assert_eq!(store.audit_page(0, 10_000).unwrap().0.len(), 603);
        store.append_audit(batch(&["g"], 1)).unwrap();
        assert_eq!(
            store.audit_page(0, 10_000).unwrap().0.len(),
            604 - 1 - AUDIT_SWEEP,
            "one write deletes at most its records + AUDIT_SWEEP"
        );
        store.append_audit(batch(&[], 1)).unwrap();
        store.append_audit(batch(&[], 1)).unwrap();
        assert_eq!(seqs(&store.audit_page(0, 10_000).unwrap()), [607]);
    }

    #[test]
    fn both_stores_keep_a_bounded_audit_table() {
        audit_table(&MemoryStore::default());
        let dir = tempfile::tempdir().unwrap();
        audit_table(&RedbStore::open(&dir.path().join("a.redb")).unwrap());
    }

    #[test]
    fn redb_audit_records_and_their_sequence_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            store
                .commit_with(
                    Commit::Add {
                        name: None,
                        entry: entry("Get=*"),
                    },
                    CommitExtras {
                        dedup: None,
                        audit: Some(batch(&["committed p1"], 2)),
                    },
                )
                .unwrap();
            store.append_audit(batch(&["two", "three"], 2)).unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        let page = store.audit_page(0, 10).unwrap();
        assert_eq!(seqs(&page), [2, 3]);
        assert_eq!(store.append_audit(batch(&["four"], 2)).unwrap(), 4);
    }

    /// Every commit is published after it commits, in order, with the stored entry; a
    /// failed commit publishes nothing.
    fn feed(store: &dyn PrivilegeStore) {
        let mut rx = store.subscribe();
        let p = PrivilegeName::new("f1").unwrap();
        store
            .commit(Commit::Add {
                name: Some(p.clone()),
                entry: entry("Get=ServerB"),
            })
            .unwrap();
        let acl_in_view =
            |store: &dyn PrivilegeStore| store.view().get(&p).map(|e| e.acl.to_string());
        assert_eq!(
            acl_in_view(store).as_deref(),
            Some("Get=ServerB"),
            "the view has a commit once it returns"
        );
        assert!(
            store
                .commit(Commit::Delete {
                    name: PrivilegeName::new("none").unwrap()
                })
                .is_err()
        );
        store
            .commit(Commit::Replace {
                name: p.clone(),
                entry: entry("Get=ServerC"),
            })
            .unwrap();
        assert_eq!(acl_in_view(store).as_deref(), Some("Get=ServerC"));
        store.commit(Commit::Delete { name: p.clone() }).unwrap();
        assert_eq!(acl_in_view(store), None);
        let got: Vec<StoreChange> = (0..3).map(|_| rx.try_recv().unwrap()).collect();
        assert!(rx.try_recv().is_err(), "nothing more");
        assert_eq!(
            got.iter().map(|c| c.seq).collect::<Vec<_>>(),
            [got[0].seq, got[0].seq + 1, got[0].seq + 2]
        );
        assert!(got.iter().all(|c| c.name == p));
        assert_eq!(
            got[0].entry.as_ref().unwrap().acl.to_string(),
            "Get=ServerB"
        );
        assert_eq!(
            got[1].entry.as_ref().unwrap().acl.to_string(),
            "Get=ServerC"
        );
        assert_eq!(got[2].entry, None);
    }

    #[test]
    fn both_stores_publish_committed_changes() {
        feed(&MemoryStore::default());
        let dir = tempfile::tempdir().unwrap();
        feed(&RedbStore::open(&dir.path().join("f.redb")).unwrap());
    }

    #[test]
    fn redb_store_behaves_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            exercise(&store);
        }
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.list().unwrap().len(), 2, "entries survive a reopen");
        let (page, more) = store.view().page(None, 10);
        assert_eq!(
            page.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            store
                .list()
                .unwrap()
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>(),
            "the view opens with the table's entries"
        );
        assert!(!more);
        // Generated names keep counting after a restart: no reuse of a deleted name.
        let n = store
            .commit(Commit::Add {
                name: None,
                entry: entry("Get=*"),
            })
            .unwrap();
        assert_eq!(n.as_str(), "p3");
    }
}
