//! An in-memory [`PrivilegeStore`] for unit tests: same semantics, no durability.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::mo::{Privilege, PrivilegeName};
use crate::store::{Commit, PrivilegeStore, StoreError};

#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<(u64, BTreeMap<PrivilegeName, Privilege>)>,
}

impl PrivilegeStore for MemoryStore {
    fn commit(&self, commit: Commit) -> Result<PrivilegeName, StoreError> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (counter, map) = &mut *guard;
        match commit {
            Commit::Add { name, entry } => {
                let name = match name {
                    Some(n) => n,
                    None => loop {
                        *counter += 1;
                        let n = PrivilegeName::new(&format!("p{counter}")).map_err(|e| {
                            StoreError::Corrupt {
                                name: String::new(),
                                message: e.to_string(),
                            }
                        })?;
                        if !map.contains_key(&n) {
                            break n;
                        }
                    },
                };
                if map.contains_key(&name) {
                    return Err(StoreError::Exists(name));
                }
                map.insert(name.clone(), entry);
                Ok(name)
            }
            Commit::Replace { name, entry } => match map.get_mut(&name) {
                Some(slot) => {
                    *slot = entry;
                    Ok(name)
                }
                None => Err(StoreError::Missing(name)),
            },
            Commit::Delete { name } => match map.remove(&name) {
                Some(_) => Ok(name),
                None => Err(StoreError::Missing(name)),
            },
        }
    }

    fn get(&self, name: &PrivilegeName) -> Result<Option<Privilege>, StoreError> {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(guard.1.get(name).cloned())
    }

    fn list(&self) -> Result<Vec<(PrivilegeName, Privilege)>, StoreError> {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(guard
            .1
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}
