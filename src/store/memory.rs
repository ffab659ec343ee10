//! An in-memory [`PrivilegeStore`] for unit tests: same semantics, no durability.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::mo::{Privilege, PrivilegeName};
use crate::store::{
    AUDIT_SWEEP, AuditBatch, AuditPage, ChangeFeed, Commit, CommitExtras, Fingerprint,
    PrivilegeStore, PrivilegeView, Recorded, StoreChange, StoreError, generated_number,
};

#[derive(Debug, Default)]
struct State {
    counter: u64,
    map: BTreeMap<PrivilegeName, Privilege>,
    dedup: HashMap<Fingerprint, Recorded>,
    audit_seq: u64,
    audit: BTreeMap<u64, Vec<u8>>,
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    feed: ChangeFeed,
}

impl MemoryStore {
    /// A store whose change-feed subscribers lag after `capacity` unread changes.
    pub fn with_feed_capacity(capacity: usize) -> MemoryStore {
        MemoryStore {
            state: Mutex::default(),
            feed: ChangeFeed::with_capacity(capacity),
        }
    }

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
    fn append_audit(&mut self, batch: AuditBatch) -> u64 {
        let appended = batch.records.len();
        for record in batch.records {
            self.audit_seq += 1;
            self.audit.insert(self.audit_seq, record);
        }
        let excess = self.audit.len().saturating_sub(batch.retention.max(1));
        for _ in 0..excess.min(appended + AUDIT_SWEEP) {
            self.audit.pop_first();
        }
        self.audit_seq
    }

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
    fn commit_with(
        &self,
        commit: Commit,
        extras: CommitExtras,
    ) -> Result<PrivilegeName, StoreError> {
        self.feed.commit(|| {
            let entry = commit.stored_entry();
            let mut state = self.state();
            let name = state.apply(commit)?;
            if let Some(r) = extras.dedup {
                let at = std::time::UNIX_EPOCH + Duration::from_millis(r.answer.at_ms);
                state.dedup.retain(|_, old| old.is_fresh(at, r.max_age));
                state.dedup.insert(r.fingerprint, r.answer);
            }
            if let Some(batch) = extras.audit {
                state.append_audit(batch);
            }
            Ok((name, entry))
        })
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StoreChange> {
        self.feed.subscribe()
    }

    fn view(&self) -> &PrivilegeView {
        self.feed.view()
    }

    fn append_audit(&self, batch: AuditBatch) -> Result<u64, StoreError> {
        Ok(self.state().append_audit(batch))
    }

    fn audit_page(&self, since: u64, limit: usize) -> Result<AuditPage, StoreError> {
        let state = self.state();
        let mut rest = state
            .audit
            .range(since.saturating_add(1)..)
            .map(|(k, v)| (*k, v.clone()));
        let page: Vec<_> = rest.by_ref().take(limit).collect();
        let more = since < u64::MAX && rest.next().is_some();
        Ok((page, more))
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
