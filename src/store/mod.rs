//! Committed privileges behind a narrow trait: [`PrivilegeStore`]. The redb implementation
//! keeps one file and commits each verified change in one durable write transaction (fsync
//! before the answer is sent); the in-memory one serves unit tests.
//!
//! Calls are synchronous; async callers go through `spawn_blocking`.

mod memory;
mod redb_store;

pub use memory::MemoryStore;
pub use redb_store::RedbStore;

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

pub trait PrivilegeStore: Send + Sync + 'static {
    /// Applies `commit` atomically and durably; returns the name it applied to.
    fn commit(&self, commit: Commit) -> Result<PrivilegeName, StoreError>;
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
