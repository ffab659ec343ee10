//! The [`AuditLog`]: where audit records go. Proxied decisions are queued without blocking
//! and written by one background batch writer; privilege changes are encoded here and
//! written by the service, inside the change's own transaction ([`AuditLog::change_batch`])
//! or, for a refusal, in a small write of their own.
//!
//! The queue is bounded ([`QUEUE_CAPACITY`]): when it is full a record is dropped, counted
//! ([`AuditLog::dropped`]) and reported in the log at most once per second — a request is
//! never delayed or failed by its audit record. The writer takes what is queued, waits at
//! most [`BATCH_DELAY`] for more (up to [`BATCH_MAX`] records), and writes the batch in one
//! transaction with the retention bound applied; on shutdown it writes what is still queued.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::audit::record::{AuditEvent, AuditRecord, PrivilegeChange, ProxiedDecision};
use crate::config::AuditConfig;
use crate::runtime::{Shutdown, stopped};
use crate::store::{AuditBatch, PrivilegeStore};

/// Proxied decisions queued for the writer at most; more are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 32_768;
/// Records written in one transaction at most.
pub const BATCH_MAX: usize = 4096;
/// How long the writer waits for more records after the first of a batch: the trail lags
/// the requests by about this much plus one write.
pub const BATCH_DELAY: Duration = Duration::from_millis(200);

/// Where proxied decisions are queued.
enum Sink {
    /// Nothing is recorded.
    Disabled,
    /// The batch writer's queue.
    Queue(mpsc::Sender<AuditRecord>),
    /// Kept in memory, for tests of other modules ([`AuditLog::memory`]).
    Memory(Mutex<Vec<ProxiedDecision>>, usize),
}

struct Inner {
    sink: Sink,
    /// Retention applied with every write (`[audit] max_records`).
    retention: usize,
    dropped: AtomicU64,
    /// When a drop was last logged (milliseconds since `born`, plus one; 0: never).
    last_drop_log: AtomicU64,
    born: Instant,
}

/// The audit trail's entry point; cheap to clone, shared by the service and the proxy.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("enabled", &self.is_enabled())
            .field("retention", &self.inner.retention)
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl AuditLog {
    fn with_sink(sink: Sink, retention: usize) -> AuditLog {
        AuditLog {
            inner: Arc::new(Inner {
                sink,
                retention: retention.max(1),
                dropped: AtomicU64::new(0),
                last_drop_log: AtomicU64::new(0),
                born: Instant::now(),
            }),
        }
    }

    /// A log that records nothing (`[audit] enabled = false`, and services built without
    /// one).
    pub fn disabled() -> AuditLog {
        AuditLog::with_sink(Sink::Disabled, 1)
    }

    /// A log that keeps up to `capacity` proxied decisions in memory ([`taken`](Self::taken))
    /// and counts the rest as dropped; privilege changes are not recorded. For unit tests.
    pub fn memory(capacity: usize) -> AuditLog {
        AuditLog::with_sink(Sink::Memory(Mutex::new(Vec::new()), capacity), 1)
    }

    /// Starts the batch writer on `store` under `config`; returns the log and the writer's
    /// task, which ends after `shutdown` once everything queued by then is written. With
    /// `config.enabled` false the log is [`disabled`](Self::disabled) and the task ends at
    /// once. Same as [`new`](Self::new) then [`AuditWriter::spawn`].
    pub fn start(
        store: Arc<dyn PrivilegeStore>,
        config: AuditConfig,
        shutdown: Shutdown,
    ) -> (AuditLog, JoinHandle<()>) {
        let (log, writer) = AuditLog::new(config);
        (log, writer.spawn(store, shutdown))
    }

    /// The log and its not yet started writer: records are queued from now on and written
    /// once the writer is spawned (so a caller can hand out the log before the store's
    /// other users are ready, and drop the writer if start-up fails).
    pub fn new(config: AuditConfig) -> (AuditLog, AuditWriter) {
        if !config.enabled {
            return (
                AuditLog::disabled(),
                AuditWriter {
                    rx: None,
                    retention: 1,
                },
            );
        }
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let log = AuditLog::with_sink(Sink::Queue(tx), config.max_records);
        let writer = AuditWriter {
            rx: Some(rx),
            retention: config.max_records.max(1),
        };
        (log, writer)
    }

    /// Whether records are kept at all.
    pub fn is_enabled(&self) -> bool {
        !matches!(self.inner.sink, Sink::Disabled)
    }

    /// Records one proxied decision. Never blocks and never fails a request: queued
    /// (bounded channel); when full the record is dropped and a counter of dropped records
    /// is incremented (logged at most once per second).
    pub fn proxied(&self, record: ProxiedDecision) {
        let kept = match &self.inner.sink {
            Sink::Disabled => return,
            Sink::Queue(tx) => tx
                .try_send(AuditRecord::at(
                    SystemTime::now(),
                    AuditEvent::Proxied(record),
                ))
                .is_ok(),
            Sink::Memory(kept, capacity) => {
                let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                let room = kept.len() < *capacity;
                if room {
                    kept.push(record);
                }
                room
            }
        };
        if !kept {
            self.count_drop();
        }
    }

    /// How many proxied decisions were dropped because the queue was full (or the writer
    /// had stopped).
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// The decisions a [`memory`](Self::memory) log kept so far, taken out of it.
    pub fn taken(&self) -> Vec<ProxiedDecision> {
        match &self.inner.sink {
            Sink::Memory(kept, _) => {
                std::mem::take(&mut *kept.lock().unwrap_or_else(|p| p.into_inner()))
            }
            _ => Vec::new(),
        }
    }

    /// The audit batch of one privilege write decision made now, for the store to write
    /// (in the change's own transaction when it commits); `None` when nothing is recorded.
    pub fn change_batch(&self, change: PrivilegeChange) -> Option<AuditBatch> {
        if !matches!(self.inner.sink, Sink::Queue(_)) {
            return None;
        }
        let record = AuditRecord::at(SystemTime::now(), AuditEvent::Privilege(change));
        Some(AuditBatch {
            records: vec![record.encode()],
            retention: self.inner.retention,
        })
    }

    fn count_drop(&self) {
        let total = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now = u64::try_from(self.inner.born.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = self.inner.last_drop_log.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .inner
                .last_drop_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                dropped = total,
                "audit queue full: proxied decisions dropped (total so far)"
            );
        }
    }
}

/// The batch writer of an [`AuditLog`], before it runs.
pub struct AuditWriter {
    /// `None` for a disabled log.
    rx: Option<mpsc::Receiver<AuditRecord>>,
    retention: usize,
}

impl AuditWriter {
    /// Runs the writer on `store` until `shutdown`, then writes what is queued and ends.
    pub fn spawn(self, store: Arc<dyn PrivilegeStore>, shutdown: Shutdown) -> JoinHandle<()> {
        match self.rx {
            Some(rx) => tokio::spawn(write_batches(store, rx, self.retention, shutdown)),
            None => tokio::spawn(async {}),
        }
    }
}

/// The batch writer: one transaction per batch, until `shutdown`; then what is queued.
async fn write_batches(
    store: Arc<dyn PrivilegeStore>,
    mut rx: mpsc::Receiver<AuditRecord>,
    retention: usize,
    mut shutdown: Shutdown,
) {
    let mut batch: Vec<AuditRecord> = Vec::new();
    loop {
        let open = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH_MAX) => n > 0,
            () = stopped(&mut shutdown) => false,
        };
        if !open {
            break;
        }
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < BATCH_MAX {
            let room = BATCH_MAX - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        write(&store, std::mem::take(&mut batch), retention).await;
    }
    // Shutdown: no new batch is waited for, what is queued is written.
    rx.close();
    while rx.recv_many(&mut batch, BATCH_MAX).await > 0 {
        write(&store, std::mem::take(&mut batch), retention).await;
    }
}

async fn write(store: &Arc<dyn PrivilegeStore>, records: Vec<AuditRecord>, retention: usize) {
    if records.is_empty() {
        return;
    }
    let store = store.clone();
    let count = records.len();
    let result = tokio::task::spawn_blocking(move || {
        store.append_audit(AuditBatch {
            records: records.iter().map(AuditRecord::encode).collect(),
            retention,
        })
    })
    .await;
    match result {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(records = count, "audit batch not written: {e}"),
        Err(e) => tracing::error!(records = count, "audit batch writer failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::Operation;
    use crate::store::MemoryStore;

    fn decision(n: usize) -> ProxiedDecision {
        ProxiedDecision {
            server: "ServerB".into(),
            device: format!("dev{n}"),
            method: "GET",
            path: "/3/0/1".into(),
            command: Some(Operation::Get),
            allowed: n % 2 == 0,
            reason: "privilege p1".into(),
            grantor: None,
            latency: Duration::from_micros(10),
        }
    }

    fn devices(store: &MemoryStore) -> Vec<String> {
        let (page, _) = store.audit_page(0, usize::MAX).unwrap();
        page.iter()
            .map(|(_, b)| match AuditRecord::decode(b).unwrap().event {
                AuditEvent::Proxied(d) => d.device,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn proxied_decisions_are_written_in_batches_within_a_second() {
        let store = Arc::new(MemoryStore::default());
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let config = AuditConfig {
            enabled: true,
            max_records: 100,
        };
        let (log, task) = AuditLog::start(store.clone(), config, shutdown);
        for n in 0..5 {
            log.proxied(decision(n));
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while devices(&store).len() < 5 {
            assert!(Instant::now() < deadline, "not written within 2 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(devices(&store), ["dev0", "dev1", "dev2", "dev3", "dev4"]);
        assert_eq!(log.dropped(), 0);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_flushes_what_is_queued_and_later_records_are_dropped() {
        let store = Arc::new(MemoryStore::default());
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let config = AuditConfig {
            enabled: true,
            max_records: 1000,
        };
        let (log, task) = AuditLog::start(store.clone(), config, shutdown);
        // Queued and the stop signalled before the writer has had a chance to run.
        for n in 0..300 {
            log.proxied(decision(n));
        }
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("writer ends after shutdown")
            .unwrap();
        assert_eq!(devices(&store).len(), 300, "everything queued is written");
        log.proxied(decision(0));
        assert_eq!(
            log.dropped(),
            1,
            "after the writer stopped a record is dropped"
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_blocking() {
        // A writer that never runs: the stop is never signalled and the runtime is
        // current-thread, so nothing is taken from the queue while we fill it.
        let store = Arc::new(MemoryStore::default());
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let config = AuditConfig {
            enabled: true,
            max_records: 10,
        };
        let (log, task) = AuditLog::start(store, config, shutdown);
        for n in 0..QUEUE_CAPACITY + 7 {
            log.proxied(decision(n));
        }
        assert_eq!(log.dropped(), 7);
        task.abort();
    }

    #[test]
    fn disabled_and_memory_logs() {
        let off = AuditLog::disabled();
        off.proxied(decision(1));
        assert_eq!((off.dropped(), off.taken().len()), (0, 0));
        let mem = AuditLog::memory(2);
        for n in 0..3 {
            mem.proxied(decision(n));
        }
        assert_eq!(mem.dropped(), 1);
        let kept = mem.taken();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[1].device, "dev1");
        assert!(mem.taken().is_empty());
        let change = PrivilegeChange {
            server: "ServerA".into(),
            command: "Delete".into(),
            name: Some("p1".into()),
            leaves: Vec::new(),
            verdict: crate::audit::Verdict::Committed,
            code: "2.02".into(),
            verified: 1,
            failed: 0,
            reason: None,
        };
        assert!(off.change_batch(change.clone()).is_none());
        assert!(mem.change_batch(change).is_none());
    }

    #[tokio::test]
    async fn disabled_config_starts_nothing() {
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let config = AuditConfig {
            enabled: false,
            max_records: 10,
        };
        let (log, task) = AuditLog::start(Arc::new(MemoryStore::default()), config, shutdown);
        assert!(!log.is_enabled());
        task.await.unwrap();
    }
}
