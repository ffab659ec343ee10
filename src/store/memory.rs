//! An in-memory [`PrivilegeStore`] for unit tests: same semantics, no durability.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::mo::{Privilege, PrivilegeName};
use crate::store::{
    Commit, DedupRecord, Fingerprint, PrivilegeStore, Recorded, StoreError, generated_number,
};

#[derive(Debug, Default)]
struct State {
    counter: u64,
    map: BTreeMap<PrivilegeName, Privilege>,
    dedup: HashMap<Fingerprint, Recorded>,
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn generated(counter: u64) -> Result<PrivilegeName, StoreError> {
    PrivilegeName::new(&format!("p{counter}")).map_err(|e| StoreError::Corrupt {
        name: String::new(),
        message: e.to_string(),
    })
}

impl State {
    fn apply(&mut self, commit: Commit) -> Result<PrivilegeName, StoreError> {
        match commit {
            Commit::Add { name, entry } => {
                let name = match name {
                    Some(n) => n,
                    None => loop {
                        self.counter += 1;
                        let n = generated(self.counter)?;
                        if !self.map.contains_key(&n) {
                            break n;
                        }
                    },
                };
                if self.map.contains_key(&name) {
                    return Err(StoreError::Exists(name));
                }
                self.counter = self.counter.max(generated_number(&name).unwrap_or(0));
                self.map.insert(name.clone(), entry);
                Ok(name)
            }
            Commit::Replace { name, entry } => match self.map.get_mut(&name) {
                Some(slot) => {
                    *slot = entry;
                    Ok(name)
                }
                None => Err(StoreError::Missing(name)),
            },
            Commit::Delete { name } => match self.map.remove(&name) {
                Some(_) => Ok(name),
                None => Err(StoreError::Missing(name)),
            },
        }
    }
}

impl PrivilegeStore for MemoryStore {
    fn commit_recorded(
        &self,
        commit: Commit,
        record: Option<DedupRecord>,
    ) -> Result<PrivilegeName, StoreError> {
        let mut state = self.state();
        let name = state.apply(commit)?;
        if let Some(r) = record {
            let at = std::time::UNIX_EPOCH + Duration::from_millis(r.answer.at_ms);
            state.dedup.retain(|_, old| old.is_fresh(at, r.max_age));
            state.dedup.insert(r.fingerprint, r.answer);
        }
        Ok(name)
    }

    fn recall(
        &self,
        fingerprint: &Fingerprint,
        now: SystemTime,
        max_age: Duration,
    ) -> Result<Option<Recorded>, StoreError> {
        Ok(self
            .state()
            .dedup
            .get(fingerprint)
            .filter(|r| r.is_fresh(now, max_age))
            .cloned())
    }

    fn next_name(
        &self,
        taken: &dyn Fn(&PrivilegeName) -> bool,
    ) -> Result<PrivilegeName, StoreError> {
        let state = self.state();
        let mut counter = state.counter;
        loop {
            counter += 1;
            let name = generated(counter)?;
            if !state.map.contains_key(&name) && !taken(&name) {
                return Ok(name);
            }
        }
    }

    fn get(&self, name: &PrivilegeName) -> Result<Option<Privilege>, StoreError> {
        Ok(self.state().map.get(name).cloned())
    }

    fn list(&self) -> Result<Vec<(PrivilegeName, Privilege)>, StoreError> {
        Ok(self
            .state()
            .map
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}
