//! The redb [`PrivilegeStore`]: one file; table `privileges` maps a node name to the CBOR
//! form of the entry, table `meta` holds the counter for gateway-chosen names, tables `dedup`
//! and `dedup_by_time` hold request fingerprints with their answers (and their expiry
//! order), table `audit` maps a sequence number (counted in `meta`, so it survives restarts
//! and deletions) to a CBOR audit record. Each commit
//! is one write transaction with redb's default immediate durability (fsync on commit), so a
//! crash leaves either the whole change or none of it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};

use crate::mo::{Privilege, PrivilegeName, Value};
use crate::store::{
    AUDIT_SWEEP, AuditBatch, AuditPage, ChangeFeed, Commit, CommitExtras, DEDUP_SWEEP, DedupRecord,
    Fingerprint, PrivilegeStore, PrivilegeView, Recorded, StoreChange, StoreError,
    generated_number,
};

const PRIVILEGES: TableDefinition<&str, &[u8]> = TableDefinition::new("privileges");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NAME_COUNTER: &str = "name_counter";
/// Request fingerprint → the answer its committed write got ([`Recorded`]).
const DEDUP: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dedup");
/// Expiry index: big-endian `at_ms` ++ fingerprint → nothing.
const DEDUP_BY_TIME: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dedup_by_time");
/// Audit sequence number → CBOR audit record (`crate::audit`).
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// The last audit sequence number handed out.
const AUDIT_SEQ: &str = "audit_seq";

pub struct RedbStore {
    db: Database,
    path: PathBuf,
    feed: ChangeFeed,
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
        txn.open_table(DEDUP).map_err(|e| fail(&e))?;
        txn.open_table(DEDUP_BY_TIME).map_err(|e| fail(&e))?;
        txn.open_table(AUDIT).map_err(|e| fail(&e))?;
        txn.commit().map_err(|e| fail(&e))?;
        let store = RedbStore {
            db,
            path: path.to_owned(),
            feed: ChangeFeed::default(),
        };
        store.feed.view().fill(store.list()?);
        Ok(store)
    }

    /// Appends audit records inside `txn` and applies the retention bound; returns the last
    /// sequence number.
    fn audit(&self, txn: &WriteTransaction, batch: AuditBatch) -> Result<u64, StoreError> {
        let mut meta = txn.open_table(META).map_err(|e| self.backend(e))?;
        let mut table = txn.open_table(AUDIT).map_err(|e| self.backend(e))?;
        let mut seq = meta
            .get(AUDIT_SEQ)
            .map_err(|e| self.backend(e))?
            .map(|g| g.value())
            .unwrap_or(0);
        let appended = batch.records.len();
        for record in batch.records {
            seq += 1;
            table
                .insert(seq, record.as_slice())
                .map_err(|e| self.backend(e))?;
        }
        meta.insert(AUDIT_SEQ, seq).map_err(|e| self.backend(e))?;
        let len = table.len().map_err(|e| self.backend(e))?;
        let excess = usize::try_from(len)
            .unwrap_or(usize::MAX)
            .saturating_sub(batch.retention.max(1));
        for _ in 0..excess.min(appended + AUDIT_SWEEP) {
            if table.pop_first().map_err(|e| self.backend(e))?.is_none() {
                break;
            }
        }
        Ok(seq)
    }

    fn backend(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// Applies one change inside `txn`.
    fn apply(&self, txn: &WriteTransaction, commit: Commit) -> Result<PrivilegeName, StoreError> {
        let mut table = txn.open_table(PRIVILEGES).map_err(|e| self.backend(e))?;
        match commit {
            Commit::Add { name, entry } => {
                let mut meta = txn.open_table(META).map_err(|e| self.backend(e))?;
                let mut counter = meta
                    .get(NAME_COUNTER)
                    .map_err(|e| self.backend(e))?
                    .map(|g| g.value())
                    .unwrap_or(0);
                let name = match name {
                    Some(n) => n,
                    None => loop {
                        counter += 1;
                        let candidate = format!("p{counter}");
                        if table
                            .get(candidate.as_str())
                            .map_err(|e| self.backend(e))?
                            .is_none()
                        {
                            break PrivilegeName::new(&candidate).map_err(|e| self.backend(e))?;
                        }
                    },
                };
                if table
                    .get(name.as_str())
                    .map_err(|e| self.backend(e))?
                    .is_some()
                {
                    return Err(StoreError::Exists(name));
                }
                // A named `p<n>` moves the counter too, so generated names never collide.
                let counter = counter.max(generated_number(&name).unwrap_or(0));
                meta.insert(NAME_COUNTER, counter)
                    .map_err(|e| self.backend(e))?;
                table
                    .insert(name.as_str(), entry.to_value().to_cbor().as_slice())
                    .map_err(|e| self.backend(e))?;
                Ok(name)
            }
            Commit::Replace { name, entry } => {
                let old = table
                    .insert(name.as_str(), entry.to_value().to_cbor().as_slice())
                    .map_err(|e| self.backend(e))?;
                if old.is_none() {
                    // Dropping the transaction without commit aborts the insert.
                    return Err(StoreError::Missing(name));
                }
                Ok(name)
            }
            Commit::Delete { name } => {
                let old = table.remove(name.as_str()).map_err(|e| self.backend(e))?;
                if old.is_none() {
                    return Err(StoreError::Missing(name));
                }
                Ok(name)
            }
        }
    }

    /// Writes a dedup record inside `txn`, after dropping up to [`DEDUP_SWEEP`] expired ones
    /// (oldest first, by the time index).
    fn record(&self, txn: &WriteTransaction, record: &DedupRecord) -> Result<(), StoreError> {
        let mut by_fp = txn.open_table(DEDUP).map_err(|e| self.backend(e))?;
        let mut by_time = txn.open_table(DEDUP_BY_TIME).map_err(|e| self.backend(e))?;
        let age = u64::try_from(record.max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = record.answer.at_ms.saturating_sub(age).to_be_bytes();
        let expired: Vec<Vec<u8>> = by_time
            .range(..cutoff.as_slice())
            .map_err(|e| self.backend(e))?
            .take(DEDUP_SWEEP)
            .map(|item| item.map(|(k, _)| k.value().to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| self.backend(e))?;
        for key in expired {
            by_time
                .remove(key.as_slice())
                .map_err(|e| self.backend(e))?;
            if let Some(fp) = key.get(8..) {
                by_fp.remove(fp).map_err(|e| self.backend(e))?;
            }
        }
        let mut time_key = record.answer.at_ms.to_be_bytes().to_vec();
        time_key.extend_from_slice(&record.fingerprint.0);
        by_time
            .insert(time_key.as_slice(), [].as_slice())
            .map_err(|e| self.backend(e))?;
        by_fp
            .insert(
                record.fingerprint.0.as_slice(),
                record.answer.encode().as_slice(),
            )
            .map_err(|e| self.backend(e))?;
        Ok(())
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
    fn commit_with(
        &self,
        commit: Commit,
        extras: CommitExtras,
    ) -> Result<PrivilegeName, StoreError> {
        self.feed.commit(|| {
            let entry = commit.stored_entry();
            let txn = self.db.begin_write().map_err(|e| self.backend(e))?;
            let name = self.apply(&txn, commit)?;
            if let Some(record) = extras.dedup {
                self.record(&txn, &record)?;
            }
            if let Some(batch) = extras.audit {
                self.audit(&txn, batch)?;
            }
            txn.commit().map_err(|e| self.backend(e))?;
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
        let txn = self.db.begin_write().map_err(|e| self.backend(e))?;
        let seq = self.audit(&txn, batch)?;
        txn.commit().map_err(|e| self.backend(e))?;
        Ok(seq)
    }

    fn audit_page(&self, since: u64, limit: usize) -> Result<AuditPage, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.backend(e))?;
        let table = txn.open_table(AUDIT).map_err(|e| self.backend(e))?;
        let Some(from) = since.checked_add(1) else {
            return Ok((Vec::new(), false));
        };
        let mut out = Vec::new();
        for item in table.range(from..).map_err(|e| self.backend(e))? {
            if out.len() == limit {
                return Ok((out, true));
            }
            let (k, v) = item.map_err(|e| self.backend(e))?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok((out, false))
    }

    fn recall(
        &self,
        fingerprint: &Fingerprint,
        now: SystemTime,
        max_age: Duration,
    ) -> Result<Option<Recorded>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.backend(e))?;
        let table = txn.open_table(DEDUP).map_err(|e| self.backend(e))?;
        let Some(found) = table
            .get(fingerprint.0.as_slice())
            .map_err(|e| self.backend(e))?
        else {
            return Ok(None);
        };
        let recorded = Recorded::decode(found.value()).map_err(|e| StoreError::Corrupt {
            name: "dedup".into(),
            message: e.to_string(),
        })?;
        Ok(recorded.is_fresh(now, max_age).then_some(recorded))
    }

    fn next_name(
        &self,
        taken: &dyn Fn(&PrivilegeName) -> bool,
    ) -> Result<PrivilegeName, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.backend(e))?;
        let table = txn.open_table(PRIVILEGES).map_err(|e| self.backend(e))?;
        let meta = txn.open_table(META).map_err(|e| self.backend(e))?;
        let mut counter = meta
            .get(NAME_COUNTER)
            .map_err(|e| self.backend(e))?
            .map(|g| g.value())
            .unwrap_or(0);
        loop {
            counter = counter
                .checked_add(1)
                .ok_or_else(|| self.backend("name counter exhausted"))?;
            let name = PrivilegeName::new(&format!("p{counter}")).map_err(|e| self.backend(e))?;
            let stored = table
                .get(name.as_str())
                .map_err(|e| self.backend(e))?
                .is_some();
            if !stored && !taken(&name) {
                return Ok(name);
            }
        }
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
