//! The redb [`PrivilegeStore`]: one file; table `privileges` maps a node name to the CBOR
//! form of the entry, table `meta` holds the counter for gateway-chosen names. Each commit
//! is one write transaction with redb's default immediate durability (fsync on commit), so a
//! crash leaves either the whole change or none of it.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::mo::{Privilege, PrivilegeName, Value};
use crate::store::{Commit, PrivilegeStore, StoreError};

const PRIVILEGES: TableDefinition<&str, &[u8]> = TableDefinition::new("privileges");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NAME_COUNTER: &str = "name_counter";

pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

impl RedbStore {
    /// Opens (or creates) the store file and its tables.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let fail = |e: &dyn std::fmt::Display| StoreError::Backend {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let db = Database::create(path).map_err(|e| fail(&e))?;
        let txn = db.begin_write().map_err(|e| fail(&e))?;
        txn.open_table(PRIVILEGES).map_err(|e| fail(&e))?;
        txn.open_table(META).map_err(|e| fail(&e))?;
        txn.commit().map_err(|e| fail(&e))?;
        Ok(RedbStore {
            db,
            path: path.to_owned(),
        })
    }

    fn backend(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn decode(name: &str, bytes: &[u8]) -> Result<Privilege, StoreError> {
        let corrupt = |m: String| StoreError::Corrupt {
            name: name.to_owned(),
            message: m,
        };
        let value = Value::from_cbor(bytes).map_err(|e| corrupt(e.to_string()))?;
        Privilege::from_stored(&value).map_err(|e| corrupt(e.to_string()))
    }
}

impl PrivilegeStore for RedbStore {
    fn commit(&self, commit: Commit) -> Result<PrivilegeName, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.backend(e))?;
        let name = {
            let mut table = txn.open_table(PRIVILEGES).map_err(|e| self.backend(e))?;
            match commit {
                Commit::Add { name, entry } => {
                    let name = match name {
                        Some(n) => n,
                        None => {
                            let mut meta = txn.open_table(META).map_err(|e| self.backend(e))?;
                            let mut counter = meta
                                .get(NAME_COUNTER)
                                .map_err(|e| self.backend(e))?
                                .map(|g| g.value())
                                .unwrap_or(0);
                            let name = loop {
                                counter += 1;
                                let candidate = format!("p{counter}");
                                if table
                                    .get(candidate.as_str())
                                    .map_err(|e| self.backend(e))?
                                    .is_none()
                                {
                                    break candidate;
                                }
                            };
                            meta.insert(NAME_COUNTER, counter)
                                .map_err(|e| self.backend(e))?;
                            PrivilegeName::new(&name).map_err(|e| self.backend(e))?
                        }
                    };
                    if table
                        .get(name.as_str())
                        .map_err(|e| self.backend(e))?
                        .is_some()
                    {
                        return Err(StoreError::Exists(name));
                    }
                    table
                        .insert(name.as_str(), entry.to_value().to_cbor().as_slice())
                        .map_err(|e| self.backend(e))?;
                    name
                }
                Commit::Replace { name, entry } => {
                    let old = table
                        .insert(name.as_str(), entry.to_value().to_cbor().as_slice())
                        .map_err(|e| self.backend(e))?;
                    if old.is_none() {
                        // Dropping the transaction without commit aborts the insert.
                        return Err(StoreError::Missing(name));
                    }
                    name
                }
                Commit::Delete { name } => {
                    let old = table.remove(name.as_str()).map_err(|e| self.backend(e))?;
                    if old.is_none() {
                        return Err(StoreError::Missing(name));
                    }
                    name
                }
            }
        };
        txn.commit().map_err(|e| self.backend(e))?;
        Ok(name)
    }

    fn get(&self, name: &PrivilegeName) -> Result<Option<Privilege>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.backend(e))?;
        let table = txn.open_table(PRIVILEGES).map_err(|e| self.backend(e))?;
        let found = table.get(name.as_str()).map_err(|e| self.backend(e))?;
        found
            .map(|g| Self::decode(name.as_str(), g.value()))
            .transpose()
    }

    fn list(&self) -> Result<Vec<(PrivilegeName, Privilege)>, StoreError> {
        Ok(self.list_page(None, usize::MAX)?.0)
    }

    /// Reads only the page: a range over the name-ordered table, `limit + 1` rows at most.
    fn list_page(
        &self,
        after: Option<&PrivilegeName>,
        limit: usize,
    ) -> Result<(Vec<(PrivilegeName, Privilege)>, bool), StoreError> {
        use std::ops::Bound;
        let txn = self.db.begin_read().map_err(|e| self.backend(e))?;
        let table = txn.open_table(PRIVILEGES).map_err(|e| self.backend(e))?;
        let start = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.as_str()));
        let range = table
            .range::<&str>((start, Bound::Unbounded))
            .map_err(|e| self.backend(e))?;
        let mut out = Vec::new();
        for item in range {
            if out.len() == limit {
                return Ok((out, true));
            }
            let (k, v) = item.map_err(|e| self.backend(e))?;
            let name = PrivilegeName::new(k.value()).map_err(|e| StoreError::Corrupt {
                name: k.value().to_owned(),
                message: e.to_string(),
            })?;
            let entry = Self::decode(k.value(), v.value())?;
            out.push((name, entry));
        }
        Ok((out, false))
    }
}
