//! The fan-out driver: runs a [`Verification`]'s reads concurrently, bounded by a shared
//! semaphore (`max_in_flight`), each under its own deadline, and feeds the replies back.
//!
//! A read goes one of two ways:
//! * *untasked*, when the reader can hand the request straight to an open session
//!   ([`AclReader::start_untasked`]: a dialled device read warm): the answer comes back on
//!   one queue shared by the whole fan-out, tagged with the read's index, and the deadline
//!   is one entry in a queue (every read has the same deadline, so the queue is in deadline
//!   order) under one timer. No task, channel, timer or future per device: this is the
//!   path of every warm group write.
//! * *tasked*, otherwise (connecting, a registered device, a DM walk): one tokio task per
//!   read in flight, spawned once it holds its permit, with a span per device.
//!
//! Per-device detail is at `debug`: a 10 000-member group at the default `info` writes one
//! line per decision (the caller's), not one per device, and costs no formatting per device.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tracing::Instrument;

use crate::coap::Packet;
use crate::config::DeviceConfig;
use crate::runtime::{LinkError, PeerLink, Tagged};
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

    /// Starts the read of `device` without a task, if it can go now over an open session:
    /// the session it went over, its answer to come on `answers` tagged `tag` (for
    /// [`finish_untasked`](Self::finish_untasked)). `None` (the default): nothing was
    /// sent, the read goes through [`read_acl`](Self::read_acl).
    fn start_untasked(
        &self,
        _device: &DeviceConfig,
        _answers: &mpsc::UnboundedSender<Tagged>,
        _tag: usize,
    ) -> Option<PeerLink> {
        None
    }

    /// The reading in the answer to a read [`start_untasked`](Self::start_untasked) sent
    /// over `over`.
    fn finish_untasked(
        &self,
        _device: &DeviceConfig,
        _over: PeerLink,
        _answer: Result<Packet, LinkError>,
    ) -> Result<AclReading, ReadFailure> {
        Err(ReadFailure::BadAnswer(
            "this reader starts no untasked reads".into(),
        ))
    }
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
    let mut reads = Reads::new(deadline);
    // Shared by the read tasks: one count per read rather than a copy of its name.
    let principal = Arc::new(verification.principal().clone());
    let mut next = None;
    loop {
        let Some(query) = next.take().or_else(|| verification.poll_query()) else {
            if reads.is_empty() {
                return;
            }
            reads.next_outcome(&*reader, verification).await;
            continue;
        };
        let permit = match in_flight.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(TryAcquireError::Closed) => None,
            Err(TryAcquireError::NoPermits) => tokio::select! {
                () = reads.next_outcome(&*reader, verification) => {
                    next = Some(query);
                    continue;
                }
                // Only a closed semaphore fails (shutdown): the read goes ahead unbounded.
                permit = in_flight.clone().acquire_owned() => permit.ok(),
            },
        };
        reads.start(&reader, &principal, query, permit);
    }
}

/// What a read task ends with: its verification index, the device, the URI and the reply.
type Read = (
    usize,
    Arc<DeviceConfig>,
    String,
    Result<AclReading, ReadFailure>,
);

/// The reads in flight, both ways.
struct Reads {
    tasks: JoinSet<Read>,
    /// Which verification index each task answers.
    index_of_task: HashMap<tokio::task::Id, usize, BuildHasherDefault<IntHasher>>,
    untasked: Untasked,
    deadline: Duration,
}

/// The untasked reads: their answers' queue, and their deadlines.
struct Untasked {
    answers: mpsc::UnboundedReceiver<Tagged>,
    sender: mpsc::UnboundedSender<Tagged>,
    /// By verification index; an answer for an index not here came after its deadline.
    pending: HashMap<usize, Pending, BuildHasherDefault<IntHasher>>,
    /// In start order, hence in deadline order; answered entries are skipped when they
    /// reach the front.
    deadlines: VecDeque<(Instant, usize)>,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

/// One untasked read in flight.
struct Pending {
    device: Arc<DeviceConfig>,
    uri: String,
    over: PeerLink,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Hashes integers the runtime or the verifier made (task ids, read indexes: unique, not
/// chosen by a peer) with one multiplication instead of SipHash.
#[derive(Default)]
struct IntHasher(u64);

impl Hasher for IntHasher {
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

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

impl Reads {
    fn new(deadline: Duration) -> Self {
        let (sender, answers) = mpsc::unbounded_channel();
        Reads {
            tasks: JoinSet::new(),
            index_of_task: HashMap::default(),
            untasked: Untasked {
                answers,
                sender,
                pending: HashMap::default(),
                deadlines: VecDeque::new(),
                timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
                armed: None,
            },
            deadline,
        }
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.untasked.pending.is_empty()
    }

    /// Starts one read: untasked if the reader can, else in a task of its own.
    fn start<R: AclReader>(
        &mut self,
        reader: &Arc<R>,
        principal: &Arc<Principal>,
        query: Query<Arc<DeviceConfig>>,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let Some(over) = reader.start_untasked(&query.device, &self.untasked.sender, query.index)
        else {
            return self.spawn(reader, principal, query, permit);
        };
        tracing::debug!(device = %query.device.id, uri = %query.uri, "reading ACL over the open session");
        let due = Instant::now() + self.deadline;
        let untasked = &mut self.untasked;
        untasked.deadlines.push_back((due, query.index));
        untasked.pending.insert(
            query.index,
            Pending {
                device: query.device,
                uri: query.uri,
                over,
                _permit: permit,
            },
        );
        untasked.arm();
    }

    /// Waits for the next read to end (an answer, a task, a deadline) and gives its
    /// outcome to the verification. Never returns while no read is in flight.
    async fn next_outcome<R: AclReader>(
        &mut self,
        reader: &R,
        verification: &mut Verification<Arc<DeviceConfig>>,
    ) {
        let timed = self.untasked.armed.is_some();
        let untasked = !self.untasked.pending.is_empty();
        tokio::select! {
            Some(joined) = self.tasks.join_next_with_id() => self.feed(verification, joined),
            Some((index, answer)) = self.untasked.answers.recv(), if untasked => {
                if let Some(p) = self.untasked.pending.remove(&index) {
                    let reply = reader.finish_untasked(&p.device, p.over, answer);
                    conclude(verification, index, &p.device, &p.uri, reply);
                }
            }
            () = &mut self.untasked.timer, if timed => self.expire(verification),
            else => std::future::pending().await,
        }
    }

    /// Fails the untasked reads whose deadline has passed.
    fn expire(&mut self, verification: &mut Verification<Arc<DeviceConfig>>) {
        let now = Instant::now();
        let untasked = &mut self.untasked;
        untasked.armed = None;
        while let Some(&(due, index)) = untasked.deadlines.front() {
            if due > now {
                break;
            }
            untasked.deadlines.pop_front();
            if let Some(p) = untasked.pending.remove(&index) {
                let reply = Err(no_answer_within(self.deadline));
                conclude(verification, index, &p.device, &p.uri, reply);
            }
        }
        untasked.arm();
    }

    fn spawn<R: AclReader>(
        &mut self,
        reader: &Arc<R>,
        principal: &Arc<Principal>,
        query: Query<Arc<DeviceConfig>>,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let reader = reader.clone();
        let principal = principal.clone();
        let deadline = self.deadline;
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
                Err(_) => Err(no_answer_within(deadline)),
            };
            (query.index, query.device, query.uri, reply)
        }
        .instrument(span);
        let handle = self.tasks.spawn(read);
        self.index_of_task.insert(handle.id(), index);
    }

    /// Gives a finished read task's reply (or our own task's failure) to the verification.
    fn feed(
        &mut self,
        verification: &mut Verification<Arc<DeviceConfig>>,
        joined: Result<(tokio::task::Id, Read), tokio::task::JoinError>,
    ) {
        match joined {
            Ok((id, (index, device, uri, reply))) => {
                self.index_of_task.remove(&id);
                conclude(verification, index, &device, &uri, reply);
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

impl Untasked {
    /// Points the timer at the earliest deadline of a read still pending.
    fn arm(&mut self) {
        while let Some(&(_, index)) = self.deadlines.front() {
            if self.pending.contains_key(&index) {
                break;
            }
            self.deadlines.pop_front();
        }
        let due = self.deadlines.front().map(|&(due, _)| due);
        if due != self.armed {
            if let Some(due) = due {
                self.timer.as_mut().reset(due);
            }
            self.armed = due;
        }
    }
}

fn no_answer_within(deadline: Duration) -> ReadFailure {
    ReadFailure::Unreachable(format!("no answer within {} ms", deadline.as_millis()))
}

/// Gives one read's reply to the verification, and its outcome to the debug log.
fn conclude(
    verification: &mut Verification<Arc<DeviceConfig>>,
    index: usize,
    device: &DeviceConfig,
    uri: &str,
    reply: Result<AclReading, ReadFailure>,
) {
    match verification.handle_reply(index, reply) {
        Some(Outcome::Allowed) => tracing::debug!(device = %device.id, %uri, "allowed"),
        Some(Outcome::Failed { reason, detail }) => {
            tracing::debug!(device = %device.id, %uri, %reason, %detail, "failed")
        }
        None => {}
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

    /// Starts every read untasked over one fake session, which answers each with a DM ACL
    /// granting ServerA Replace, except the reads whose index is a multiple of 10: those it
    /// keeps unanswered. `read_acl` must not be needed.
    struct SessionReader {
        link: PeerLink,
    }

    impl AclReader for SessionReader {
        async fn read_acl(
            &self,
            _device: &DeviceConfig,
            _on_behalf: &Principal,
            _uri: &str,
        ) -> Result<AclReading, ReadFailure> {
            Err(ReadFailure::BadAnswer("went the tasked way".into()))
        }

        fn start_untasked(
            &self,
            _device: &DeviceConfig,
            answers: &mpsc::UnboundedSender<Tagged>,
            tag: usize,
        ) -> Option<PeerLink> {
            let mut request = Packet::new();
            request.payload = tag.to_be_bytes().to_vec();
            self.link
                .try_request_tagged(request, answers, tag)
                .then(|| self.link.clone())
        }

        fn finish_untasked(
            &self,
            _device: &DeviceConfig,
            _over: PeerLink,
            answer: Result<Packet, LinkError>,
        ) -> Result<AclReading, ReadFailure> {
            let answer = answer.map_err(|e| ReadFailure::Unreachable(e.to_string()))?;
            Ok(AclReading::Dm {
                chain: vec![String::from_utf8_lossy(&answer.payload).into_owned()],
                is_interior: true,
            })
        }
    }

    /// 100 members through 4 permits, untasked: 90 commit-worthy answers, and the 10 the
    /// session never answers fail at the deadline as unreachable, so the group rejects and
    /// names exactly those 10; never more than 4 reads in flight; every permit comes back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn untasked_reads_get_their_answers_and_the_silent_ones_fail_at_the_deadline() {
        use crate::runtime::peer_link::LinkCommand;
        let (link, inbox) = PeerLink::new(64);
        // The session ends when the last link goes (the inbox keeps one of its own).
        let crate::runtime::LinkInbox {
            mut rx,
            link: own_link,
        } = inbox;
        drop(own_link);
        let in_flight = Arc::new(Semaphore::new(4));
        let permits = in_flight.clone();
        let most_in_flight = Arc::new(AtomicUsize::new(0));
        let most = most_in_flight.clone();
        let session = tokio::spawn(async move {
            let mut unanswered = Vec::new();
            while let Some(command) = rx.recv().await {
                let LinkCommand::Request { request, reply } = *command else {
                    continue;
                };
                most.fetch_max(4 - permits.available_permits(), Ordering::SeqCst);
                let tag = usize::from_be_bytes(request.payload.try_into().expect("tag"));
                if tag % 10 == 0 {
                    unanswered.push(reply);
                    continue;
                }
                let mut answer = Packet::new();
                answer.payload = b"Replace=ServerA".to_vec();
                reply.send(Ok(answer));
            }
            unanswered.len()
        });
        let reader = Arc::new(SessionReader { link });
        let principal = Principal::new("ServerA", 101).expect("principal");
        let mut verification =
            Verification::new(Operation::GRANT, principal, "/3/0", (0..100).map(device));
        let started = std::time::Instant::now();
        let deadline = Duration::from_millis(150);
        let ran = tokio::time::timeout(
            Duration::from_secs(5),
            run(
                reader.clone(),
                &mut verification,
                in_flight.clone(),
                deadline,
            ),
        )
        .await;
        assert!(
            ran.is_ok(),
            "the fan-out never ended: deadlines not enforced"
        );
        let took = started.elapsed();
        match verification.poll_decision() {
            Some(Decision::Reject {
                failed: failures, ..
            }) => {
                let mut failed: Vec<&str> = failures.iter().map(|f| f.device_id.as_str()).collect();
                failed.sort_unstable();
                let expected: Vec<String> =
                    (0..100).step_by(10).map(|n| format!("dev{n:03}")).collect();
                assert_eq!(failed, expected);
                for f in &failures {
                    assert!(f.detail.contains("no answer within 150 ms"), "{f:?}");
                }
            }
            other => panic!("expected a rejection naming the 10 silent reads, got {other:?}"),
        }
        assert!(
            took >= Duration::from_millis(150),
            "decided before the deadline: {took:?}"
        );
        assert!(
            took < Duration::from_secs(3),
            "deadline not enforced: {took:?}"
        );
        assert!(most_in_flight.load(Ordering::SeqCst) <= 4);
        assert_eq!(in_flight.available_permits(), 4, "every permit came back");
        drop(reader);
        assert_eq!(session.await.expect("session"), 10);
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
