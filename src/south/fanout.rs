//! The fan-out driver: runs a [`Verification`]'s reads concurrently, bounded by a shared
//! semaphore (`max_in_flight`), each under its own deadline, and feeds the replies back.
//! One tokio task per read in flight, never a thread; a span per device so the log reads
//! like the seed's sequence diagrams. Per-device detail is at `debug` (span, read, outcome):
//! a 10 000-member group at the default `info` writes one line per decision (the caller's),
//! not one per device, and costs no formatting per device.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::DeviceConfig;
use crate::verifier::{AclReading, Outcome, Principal, Query, ReadFailure, Verification};

/// Reads the ACL that governs `uri` on a device, for a question `on_behalf` a server asks
/// (a registered device is read over that server's account if it has one there).
/// Implemented by [`crate::south::South`] over real sockets; tests may supply their own.
pub trait AclReader: Send + Sync + 'static {
    fn read_acl(
        &self,
        device: &DeviceConfig,
        on_behalf: &Principal,
        uri: &str,
    ) -> impl Future<Output = Result<AclReading, ReadFailure>> + Send;
}

/// Drives every read of `verification` to an outcome. Returns when all have one; the
/// decision is then `verification.poll_decision()`.
///
/// A read's task is spawned only once it holds its `in_flight` permit: a 10 000-member
/// group keeps at most `max_in_flight` tasks alive, not 10 000 parked on the semaphore
/// (whose futures were allocated, faulted in and freed again on every write). While it
/// waits for a permit, the driver feeds back the replies that arrive.
pub async fn run<R: AclReader>(
    reader: Arc<R>,
    verification: &mut Verification<Arc<DeviceConfig>>,
    in_flight: Arc<Semaphore>,
    deadline: Duration,
) {
    let mut reads = Reads {
        tasks: JoinSet::new(),
        index_of_task: HashMap::default(),
    };
    // Shared by the read tasks: one count per read rather than a copy of its name.
    let principal = Arc::new(verification.principal().clone());
    let mut next = None;
    loop {
        let Some(query) = next.take().or_else(|| verification.poll_query()) else {
            match reads.tasks.join_next_with_id().await {
                Some(joined) => reads.feed(verification, joined),
                None => return,
            }
            continue;
        };
        let permit = match in_flight.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(TryAcquireError::Closed) => None,
            Err(TryAcquireError::NoPermits) => tokio::select! {
                Some(joined) = reads.tasks.join_next_with_id() => {
                    reads.feed(verification, joined);
                    next = Some(query);
                    continue;
                }
                // Only a closed semaphore fails (shutdown): the read goes ahead unbounded.
                permit = in_flight.clone().acquire_owned() => permit.ok(),
            },
        };
        reads.spawn(&reader, &principal, query, permit, deadline);
    }
}

/// What a read task ends with: its verification index, the device, the URI and the reply.
type Read = (
    usize,
    Arc<DeviceConfig>,
    String,
    Result<AclReading, ReadFailure>,
);

/// The reads in flight, and which verification index each task answers.
struct Reads {
    tasks: JoinSet<Read>,
    index_of_task: HashMap<tokio::task::Id, usize, BuildHasherDefault<TaskIdHasher>>,
}

/// Hashes tokio task ids (a `u64` each, unique, made by the runtime, not by a peer) with
/// one multiplication instead of SipHash: two lookups per device read.
#[derive(Default)]
struct TaskIdHasher(u64);

impl Hasher for TaskIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl Reads {
    fn spawn<R: AclReader>(
        &mut self,
        reader: &Arc<R>,
        principal: &Arc<Principal>,
        query: Query<Arc<DeviceConfig>>,
        permit: Option<OwnedSemaphorePermit>,
        deadline: Duration,
    ) {
        let reader = reader.clone();
        let principal = principal.clone();
        let span = tracing::debug_span!("device", id = %query.device.id, uri = %query.uri);
        let index = query.index;
        let read = async move {
            let _permit = permit;
            tracing::debug!("reading ACL");
            let reply = match tokio::time::timeout(
                deadline,
                reader.read_acl(&query.device, &principal, &query.uri),
            )
            .await
            {
                Ok(reply) => reply,
                Err(_) => Err(ReadFailure::Unreachable(format!(
                    "no answer within {} ms",
                    deadline.as_millis()
                ))),
            };
            (query.index, query.device, query.uri, reply)
        }
        .instrument(span);
        let handle = self.tasks.spawn(read);
        self.index_of_task.insert(handle.id(), index);
    }

    /// Gives a finished read's reply (or our own task's failure) to the verification.
    fn feed(
        &mut self,
        verification: &mut Verification<Arc<DeviceConfig>>,
        joined: Result<(tokio::task::Id, Read), tokio::task::JoinError>,
    ) {
        match joined {
            Ok((id, (index, device, uri, reply))) => {
                self.index_of_task.remove(&id);
                if let Some(outcome) = verification.handle_reply(index, reply) {
                    match outcome {
                        Outcome::Allowed => tracing::debug!(device = %device.id, %uri, "allowed"),
                        Outcome::Failed { reason, detail } => {
                            tracing::debug!(device = %device.id, %uri, %reason, %detail, "failed")
                        }
                    }
                }
            }
            Err(e) => {
                // Our own fault, not the device's: still give the read an outcome so the
                // verification ends (and rejects).
                tracing::error!("device read task failed: {e}");
                if let Some(index) = self.index_of_task.remove(&e.id()) {
                    verification.handle_reply(
                        index,
                        Err(ReadFailure::BadAnswer(format!("internal error: {e}"))),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::acl::Operation;
    use crate::acl::dm::DmPolicy;
    use crate::config::{Profile, Reach};
    use crate::verifier::{Decision, Member};

    /// Answers every read with a DM ACL granting ServerA Replace, after a short pause, and
    /// records the most reads and the most tasks alive at once.
    #[derive(Default)]
    struct CountingReader {
        reading: AtomicUsize,
        most_reading: AtomicUsize,
        most_tasks: AtomicUsize,
    }

    impl AclReader for CountingReader {
        async fn read_acl(
            &self,
            _device: &DeviceConfig,
            _on_behalf: &Principal,
            _uri: &str,
        ) -> Result<AclReading, ReadFailure> {
            let now = self.reading.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_reading.fetch_max(now, Ordering::SeqCst);
            let tasks = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            self.most_tasks.fetch_max(tasks, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
            self.reading.fetch_sub(1, Ordering::SeqCst);
            Ok(AclReading::Dm {
                chain: vec!["Replace=ServerA".into()],
                is_interior: true,
            })
        }
    }

    fn device(n: usize) -> Member<Arc<DeviceConfig>> {
        let id = format!("dev{n:03}");
        Member {
            id: id.clone(),
            profile: Profile::Dm(DmPolicy::Replace),
            device: Arc::new(DeviceConfig {
                prefix: id.clone(),
                id,
                reach: Reach::Dialed("coap://127.0.0.1:5683".parse().expect("uri")),
                profile: Profile::Dm(DmPolicy::Replace),
                psk: None,
                certs: None,
                cert_rule: None,
            }),
        }
    }

    /// 200 members through 4 permits: every read gets an outcome and the group commits,
    /// never more than 4 reads run at once, and never more than 4 read tasks exist (a task
    /// is spawned with its permit, not parked on the semaphore).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_keeps_at_most_max_in_flight_read_tasks() {
        let reader = Arc::new(CountingReader::default());
        let principal = Principal::new("ServerA", 101).expect("principal");
        let mut verification =
            Verification::new(Operation::GRANT, principal, "/3/0", (0..200).map(device));
        let in_flight = Arc::new(Semaphore::new(4));
        run(
            reader.clone(),
            &mut verification,
            in_flight.clone(),
            Duration::from_secs(5),
        )
        .await;
        match verification.poll_decision() {
            Some(Decision::Commit { verified }) => assert_eq!(verified.len(), 200),
            other => panic!("expected a commit of 200, got {other:?}"),
        }
        assert_eq!(reader.most_reading.load(Ordering::SeqCst), 4);
        // This test's own task and the 4 reads.
        let tasks = reader.most_tasks.load(Ordering::SeqCst);
        assert!(tasks <= 5, "{tasks} tasks alive at once");
        assert_eq!(in_flight.available_permits(), 4, "every permit came back");
    }
}
