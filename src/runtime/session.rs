//! The serve loop of one peer session on a datagram transport (UDP or DTLS), whichever side
//! opened it: datagrams in → one [`Endpoint`] (both roles: dedup, ping, bad options, our
//! outstanding requests, separate responses) → the peer's requests to the shared
//! [`Pipeline`] and our responses back out; our own requests come in from a [`PeerLink`]
//! and their outcomes go back to it. A retransmitted request is answered from the dedup
//! cache and never executed twice.
//!
//! Owns: the tokio side of one session — the socket calls, the single sleep re-armed from
//! [`Endpoint::poll_timeout`], the randomness the endpoint is given (first MID, tokens,
//! timeout fractions), the map from the endpoint's [`RequestId`]s to the waiting link
//! callers, and the idle timeout.
//! Does not own: protocol state (all in the [`Endpoint`]), executing requests (the
//! [`Pipeline`] and the [`Handler`]).
//!
//! Observe (RFC 7641) rides on the same loop: the link's observations (client role) get a
//! random 8-byte token and their notifications are forwarded to the [`Observation`]'s
//! channel; the handlers' [`ObserverHandle`]s (server role) become [`Endpoint::notify`]
//! calls, a notification sent while its registration is still in the handler waiting for
//! the answer to go out.
//!
//! A peer's CON request still in the handler after ACK_TIMEOUT / 2 (the endpoint's default
//! threshold) gets an empty ACK, and its answer goes out as a CON separate response.
//!
//! # Entry points
//!
//! * [`serve_session`] — a session accepted by a listener: the link is created here and
//!   reaches handlers through [`Handler::handle_on_link`].
//! * [`serve_session_linked`] — any session, with a link made beforehand by
//!   [`PeerLink::new`]: the side that dialed (a device registering with the gateway) keeps
//!   the [`PeerLink`] and serves the peer's requests on the same socket.
//! * [`spawn_session`] — [`serve_session_linked`] spawned, returning the link and the task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use tokio::sync::mpsc;

use crate::coap::{
    Endpoint, EndpointEvent, ObservationId, ObserveEnd, Packet, RequestId, Responder,
    TransportTuning,
};
use crate::runtime::client::random_bytes;
use crate::runtime::peer_link::{
    LINK_CAPACITY, LinkCommand, LinkError, LinkInbox, ObserveReply, ObserverError, PeerLink,
};
#[cfg(doc)]
use crate::runtime::peer_link::{Observation, ObserverHandle};
use crate::runtime::pipeline::{DRAIN_LIMIT, Pipeline, Start};
use crate::runtime::{Handler, Shutdown, stopped};
use crate::transport::{DatagramSession, PeerInfo};

/// A session with no traffic for this long ends (its peer slot is freed), unless a request
/// of ours or of the peer's is still outstanding.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Serves one peer until it goes quiet, its transport closes, or `shutdown`. Handlers get
/// this session's [`PeerLink`] through [`Handler::handle_on_link`].
pub async fn serve_session<S: DatagramSession, H: Handler>(
    session: S,
    peer: PeerInfo,
    handler: Arc<H>,
    tuning: TransportTuning,
    shutdown: Shutdown,
) {
    let (_link, inbox) = PeerLink::new(LINK_CAPACITY);
    serve_session_linked(session, peer, handler, tuning, shutdown, inbox).await;
}

/// Spawns [`serve_session_linked`] with a new link; returns the link (to send requests to
/// the peer) and the task (it ends as [`serve_session`] does).
pub fn spawn_session<S: DatagramSession + 'static, H: Handler>(
    session: S,
    peer: PeerInfo,
    handler: Arc<H>,
    tuning: TransportTuning,
    shutdown: Shutdown,
) -> (PeerLink, JoinHandle<()>) {
    let (link, inbox) = PeerLink::new(LINK_CAPACITY);
    let task = tokio::spawn(serve_session_linked(
        session, peer, handler, tuning, shutdown, inbox,
    ));
    (link, task)
}

/// A random fraction in `[0, 1)` for the initial retransmission timeout.
fn random_fraction() -> f64 {
    f64::from(u16::from_be_bytes(random_bytes::<2>())) / 65536.0
}

/// Serves one peer in both roles — its requests to `handler`, ours from `inbox`'s
/// [`PeerLink`] — until it goes quiet, its transport closes, or `shutdown`. When it returns
/// the link is closed: requests still waiting fail with [`LinkError::Closed`].
pub async fn serve_session_linked<S: DatagramSession, H: Handler>(
    mut session: S,
    peer: PeerInfo,
    handler: Arc<H>,
    tuning: TransportTuning,
    mut shutdown: Shutdown,
    inbox: LinkInbox,
) {
    // RFC 7252 §4.4: our MIDs start at a random value in every session.
    let first_mid = u16::from_be_bytes(random_bytes::<2>());
    let LinkInbox { mut rx, link } = inbox;
    let mut driver = Driver {
        endpoint: Endpoint::new(tuning.clone(), first_mid)
            .with_account(handler.cache_limits().dedup_account())
            .with_max_body(handler.max_response_body())
            .with_rng_fraction(random_fraction()),
        pipeline: Pipeline::new(handler, peer, tuning.exchange_lifetime()).with_link(link),
        waiting: HashMap::new(),
        observing: HashMap::new(),
        parked: Vec::new(),
    };
    let mut last_heard = Instant::now();
    let mut stopping = false;

    loop {
        driver.settle(&mut session).await;
        driver.forget_abandoned();
        let now = Instant::now();
        // Only an idle session may time out: a request of ours or of the peer's in progress
        // keeps it open (and must not make the sleep below spin), and so does a handler that
        // kept the link (a device's registration lives as long as its lifetime says).
        let idle_at =
            (driver.is_idle() && !driver.pipeline.link_held()).then_some(last_heard + IDLE_TIMEOUT);
        let wake = [
            driver.endpoint.poll_timeout(),
            driver.pipeline.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .map(Instant::from_std)
        .chain(idle_at)
        .min()
        .unwrap_or(now + IDLE_TIMEOUT);
        tokio::select! {
            received = session.recv() => {
                let bytes = match received {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::debug!("session ends: {e}");
                        break;
                    }
                };
                last_heard = Instant::now();
                driver.endpoint.handle_datagram(last_heard.into_std(), &bytes);
            }
            Some(done) = driver.pipeline.finished() => {
                let now = Instant::now().into_std();
                let (responder, response) = driver.pipeline.complete(now, done, None);
                driver.respond(now, responder, response);
            }
            Some(command) = rx.recv() => driver.command(Instant::now().into_std(), command),
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if idle_at.is_some_and(|t| now >= t) && driver.is_idle() && !driver.pipeline.link_held() {
                    tracing::debug!("session idle, closing");
                    break;
                }
                driver.give_up_abandoned(now.into_std());
                driver.endpoint.handle_timeout(now.into_std());
                driver.pipeline.handle_timeout(now.into_std());
            }
            _ = stopped(&mut shutdown) => {
                stopping = true;
                break;
            }
        }
    }
    // No new requests either way: the link closes and callers still waiting get `Closed`.
    drop(rx);
    driver.waiting.clear();
    // Requests already in the handler are finished and answered (each is bounded by the
    // device deadline).
    let drain_until = Instant::now() + DRAIN_LIMIT;
    while let Some(done) = driver.pipeline.drain_next(drain_until).await {
        let now = Instant::now().into_std();
        let (responder, response) = driver.pipeline.complete(now, done, None);
        driver.respond(now, responder, response);
        driver.settle(&mut session).await;
    }
    if stopping {
        // Stopped by its owner (not ended by the peer): say goodbye, briefly.
        let _ = tokio::time::timeout(CLOSE_BUDGET, session.close()).await;
    }
}

/// How long a stopped session may take to send its close_notify.
const CLOSE_BUDGET: Duration = Duration::from_millis(200);

/// The state one serve loop drives.
struct Driver<H> {
    endpoint: Endpoint,
    pipeline: Pipeline<H, Responder>,
    /// Link callers waiting for the outcome of our requests.
    waiting: HashMap<RequestId, oneshot::Sender<Result<Packet, LinkError>>>,
    /// Our observations (client role) and where their notifications go.
    observing: HashMap<ObservationId, Sink>,
    /// Notifications whose registration is still in the handler.
    parked: Vec<Parked>,
}

/// Where one observation's output goes: the first response to the waiting
/// [`PeerLink::observe`] call, the rest into the [`Observation`]'s channel.
struct Sink {
    first: Option<ObserveReply>,
    notifications: mpsc::Sender<Packet>,
}

/// A notification waiting for its registration's answer to go out.
struct Parked {
    token: Vec<u8>,
    response: Packet,
    confirmable: bool,
    reply: oneshot::Sender<Result<(), ObserverError>>,
}

impl<H: Handler> Driver<H> {
    /// Nothing in progress in either role.
    fn is_idle(&self) -> bool {
        self.endpoint.is_idle()
            && self.waiting.is_empty()
            && self.observing.is_empty()
            && self.pipeline.in_handler() == 0
    }

    /// One command from the link.
    /// Our requests whose callers stopped waiting (a verification deadline cut them off) are
    /// given up, so they neither keep retransmitting nor hold the NSTART slot the next
    /// request needs. Checked when a new request comes and at every timer.
    fn give_up_abandoned(&mut self, now: std::time::Instant) {
        let abandoned: Vec<RequestId> = self
            .waiting
            .iter()
            .filter(|(_, reply)| reply.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in abandoned {
            self.waiting.remove(&id);
            self.endpoint.give_up(now, id);
            tracing::debug!("our request's caller gave up: exchange abandoned");
        }
    }

    fn command(&mut self, now: std::time::Instant, command: LinkCommand) {
        match command {
            LinkCommand::Request { request, reply } => {
                if reply.is_closed() {
                    return; // The caller gave up before we got to it.
                }
                self.give_up_abandoned(now);
                let token = random_bytes::<4>().to_vec();
                let id = self
                    .endpoint
                    .start_request(now, request, token, random_fraction());
                self.waiting.insert(id, reply);
            }
            LinkCommand::Observe {
                request,
                reply,
                notifications,
            } => {
                if reply.is_closed() {
                    return;
                }
                let token = random_bytes::<8>().to_vec();
                let id = self
                    .endpoint
                    .start_observe(now, request, token, random_fraction());
                let sink = Sink {
                    first: Some(reply),
                    notifications,
                };
                self.observing.insert(id, sink);
            }
            LinkCommand::StopObserving { id } => self.stop_observing(now, id),
            LinkCommand::Reregister { id } => {
                let _ = self.endpoint.reregister(now, id, random_fraction());
            }
            LinkCommand::Notify {
                token,
                response,
                confirmable,
                reply,
            } => self.notify(
                now,
                Parked {
                    token,
                    response,
                    confirmable,
                    reply,
                },
            ),
        }
    }

    /// Cancels an observation whose owner let go: a GET with Observe = 1, or, if a request
    /// of the observation is in flight, forgetting it (an RST answers its next notification).
    fn stop_observing(&mut self, now: std::time::Instant, id: ObservationId) {
        if self.observing.remove(&id).is_none() {
            return;
        }
        if !self.endpoint.cancel_observation(now, id, random_fraction()) {
            self.endpoint.forget_observation(id);
        }
    }

    /// A handler's notification: sent, parked until its registration is answered, or
    /// refused.
    fn notify(&mut self, now: std::time::Instant, n: Parked) {
        if n.reply.is_closed() {
            return;
        }
        if !self.endpoint.is_observed(&n.token) && self.endpoint.is_registering(&n.token) {
            self.parked.push(n);
            return;
        }
        let sent = self
            .endpoint
            .notify(now, &n.token, n.response, n.confirmable);
        let _ = n.reply.send(sent.map_err(ObserverError::from));
    }

    /// Retries the parked notifications after an answer went out.
    fn unpark(&mut self, now: std::time::Instant) {
        for n in std::mem::take(&mut self.parked) {
            self.notify(now, n);
        }
    }

    /// One observation event for the link's owner.
    fn observation_event(&mut self, id: ObservationId, response: Option<Packet>, end: bool) {
        let Some(sink) = self.observing.get_mut(&id) else {
            return;
        };
        let mut closed = false;
        match (sink.first.take(), response) {
            (Some(first), Some(p)) => closed = first.send(Ok((id, p))).is_err(),
            (None, Some(p)) => match sink.notifications.try_send(p) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!("observation not read fast enough, notification dropped");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
            },
            (first, None) => sink.first = first,
        }
        if end {
            self.observing.remove(&id);
        } else if closed {
            let now = Instant::now().into_std();
            self.stop_observing(now, id);
        }
    }

    /// The end of an observation: its final response is the last item; a failure before
    /// the first response goes to the waiting caller.
    fn observation_ended(&mut self, id: ObservationId, reason: ObserveEnd) {
        match reason {
            ObserveEnd::Final(p) => self.observation_event(id, Some(p), true),
            ObserveEnd::Failed(e) => {
                if let Some(first) = self.observing.remove(&id).and_then(|s| s.first) {
                    let _ = first.send(Err(LinkError::from(e)));
                }
            }
            _ => self.observation_event(id, None, true),
        }
    }

    /// Drops the waits of link callers that gave up (dropped their future); a request of
    /// theirs still queued for NSTART is withdrawn, one in flight runs to its end.
    fn forget_abandoned(&mut self) {
        let endpoint = &mut self.endpoint;
        self.waiting.retain(|id, reply| {
            if reply.is_closed() {
                endpoint.cancel(*id);
                false
            } else {
                true
            }
        });
    }

    /// Sends what the endpoint has to send and dispatches its events, until neither is left.
    async fn settle<S: DatagramSession>(&mut self, session: &mut S) {
        loop {
            while let Some(bytes) = self.endpoint.poll_transmit() {
                if let Err(e) = session.send(&bytes).await {
                    tracing::debug!("send failed: {e}");
                }
            }
            let Some(event) = self.endpoint.poll_event() else {
                return;
            };
            match event {
                EndpointEvent::Request { request, responder } => {
                    let now = Instant::now().into_std();
                    if let Start::Answer(responder, answer) =
                        self.pipeline.start(now, request, responder)
                    {
                        self.respond(now, responder, answer);
                    }
                }
                EndpointEvent::Response { id, result } => {
                    if let Some(reply) = self.waiting.remove(&id) {
                        // The caller may have given up; the exchange finished anyway.
                        let _ = reply.send(result.map_err(LinkError::from));
                    }
                }
                EndpointEvent::Notification { id, response } => {
                    self.observation_event(id, Some(response), false);
                }
                EndpointEvent::ObservationEnded { id, reason } => {
                    self.observation_ended(id, reason);
                }
                EndpointEvent::ObserverRemoved { token, reason } => {
                    tracing::debug!(?token, ?reason, "peer's observation ended");
                }
            }
        }
    }

    fn respond(&mut self, now: std::time::Instant, responder: Responder, response: Packet) {
        if let Err(e) = self.endpoint.respond(now, responder, response) {
            tracing::error!("cannot encode our response: {e}");
        }
        if !self.parked.is_empty() {
            self.unpark(now);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The serve loop over an in-memory session in paused tokio time.

    use std::net::SocketAddr;

    use tokio::sync::{mpsc, watch};

    use super::*;
    use crate::coap::{MessageClass, MessageType, RequestType, ResponseType, decode, encode};
    use crate::transport::{CloseCause, Identity, TransportError, TransportKind};

    /// Our side of an in-memory datagram pipe; the test plays the peer on the other side.
    struct FakeSession {
        tx: mpsc::UnboundedSender<Vec<u8>>,
        rx: mpsc::UnboundedReceiver<Vec<u8>>,
    }

    struct FakePeer {
        tx: mpsc::UnboundedSender<Vec<u8>>,
        rx: mpsc::UnboundedReceiver<Vec<u8>>,
    }

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 5683))
    }

    fn info() -> PeerInfo {
        PeerInfo {
            addr: addr(),
            kind: TransportKind::Udp,
            identity: Identity::Address(addr().ip()),
        }
    }

    fn pipe() -> (FakeSession, FakePeer) {
        let (to_peer, from_us) = mpsc::unbounded_channel();
        let (to_us, from_peer) = mpsc::unbounded_channel();
        (
            FakeSession {
                tx: to_peer,
                rx: from_peer,
            },
            FakePeer {
                tx: to_us,
                rx: from_us,
            },
        )
    }

    impl DatagramSession for FakeSession {
        async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
            self.rx.recv().await.ok_or(TransportError::Closed {
                peer: addr(),
                cause: CloseCause::Shutdown,
            })
        }

        async fn send(&mut self, datagram: &[u8]) -> Result<(), TransportError> {
            let _ = self.tx.send(datagram.to_vec());
            Ok(())
        }

        fn peer(&self) -> SocketAddr {
            addr()
        }

        fn peer_info(&self) -> PeerInfo {
            info()
        }
    }

    struct NotFound;

    impl Handler for NotFound {
        async fn handle(&self, _peer: &PeerInfo, request: Packet) -> Packet {
            crate::coap::response_to(&request, ResponseType::NotFound)
        }
    }

    fn get() -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(RequestType::Get);
        crate::coap::set_uri(&mut p, "/3/0");
        p
    }

    /// A link request the peer answers only after longer than IDLE_TIMEOUT (its
    /// retransmissions spaced 100 s and more apart) keeps the session open; once answered
    /// and quiet for IDLE_TIMEOUT, the session ends and the link closes.
    #[tokio::test(start_paused = true)]
    async fn the_idle_timeout_waits_for_an_outstanding_link_request() {
        let (session, mut peer) = pipe();
        let tuning = TransportTuning::unreliable().with_ack_timeout(Duration::from_secs(100));
        let (_stop, shutdown) = watch::channel(false);
        let (link, task) = spawn_session(session, info(), Arc::new(NotFound), tuning, shutdown);
        let asking = {
            let link = link.clone();
            tokio::spawn(async move { link.request(get()).await })
        };
        let first = decode(&peer.rx.recv().await.unwrap()).unwrap();
        assert_eq!(first.header.get_type(), MessageType::Confirmable);
        tokio::time::sleep(IDLE_TIMEOUT + Duration::from_secs(100)).await;
        assert!(!link.is_closed(), "still waiting for the answer");
        let mut answer = crate::coap::response_to(&first, ResponseType::Content);
        answer.payload = b"late".to_vec();
        peer.tx.send(encode(&answer).unwrap()).unwrap();
        assert_eq!(asking.await.unwrap().unwrap().payload, b"late");
        // A link held outside the loop (a registration's) keeps the idle session open…
        tokio::time::sleep(IDLE_TIMEOUT + Duration::from_secs(1)).await;
        assert!(!link.is_closed(), "a held link keeps the session");
        // …and once nobody holds it, the idle timeout ends the session.
        drop(link);
        tokio::time::sleep(IDLE_TIMEOUT + Duration::from_secs(1)).await;
        assert!(task.is_finished(), "idle and unheld: closed");
        task.await.unwrap();
    }

    /// Answers a registration after 100 ms with Observe, having asked its observer handle
    /// to notify at once: the notification waits for the answer.
    struct EagerObserved {
        notified: std::sync::Mutex<Option<JoinHandle<Result<(), ObserverError>>>>,
    }

    impl Handler for EagerObserved {
        async fn handle(&self, _peer: &PeerInfo, request: Packet) -> Packet {
            crate::coap::response_to(&request, ResponseType::NotFound)
        }

        async fn handle_on_link(
            &self,
            _peer: &PeerInfo,
            link: &PeerLink,
            request: Packet,
            _max_payload: usize,
        ) -> Packet {
            let observer = link.observer(&request);
            let mut change = Packet::new();
            change.header.code = MessageClass::Response(ResponseType::Content);
            change.payload = b"1".to_vec();
            let task = tokio::spawn(async move { observer.notify(change).await });
            *self.notified.lock().unwrap() = Some(task);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut answer = crate::coap::response_to(&request, ResponseType::Content);
            crate::coap::observe::set_observe(&mut answer, 0);
            answer
        }
    }

    /// A notification sent while its registration is still in the handler is held until the
    /// answer (with Observe) went out, then sent with the next sequence number.
    #[tokio::test(start_paused = true)]
    async fn a_notification_before_the_registration_is_answered_waits_for_it() {
        let (session, mut peer) = pipe();
        let (_stop, shutdown) = watch::channel(false);
        let handler = Arc::new(EagerObserved {
            notified: std::sync::Mutex::new(None),
        });
        let tuning = TransportTuning::unreliable();
        let (_link, _task) = spawn_session(session, info(), handler.clone(), tuning, shutdown);
        let mut register = get();
        register.header.message_id = 5;
        register.set_token(vec![0xab]);
        crate::coap::observe::set_observe(&mut register, 0);
        peer.tx.send(encode(&register).unwrap()).unwrap();
        let answer = decode(&peer.rx.recv().await.unwrap()).unwrap();
        assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
        let first = crate::coap::observe::observe_value(&answer).expect("added");
        let note = decode(&peer.rx.recv().await.unwrap()).unwrap();
        assert_eq!(note.header.get_type(), MessageType::NonConfirmable);
        assert_eq!(
            (note.get_token(), &note.payload[..]),
            (&[0xab][..], &b"1"[..])
        );
        assert_eq!(crate::coap::observe::observe_value(&note), Some(first + 1));
        let task = handler.notified.lock().unwrap().take().unwrap();
        assert_eq!(task.await.unwrap(), Ok(()));
    }

    /// A link's observation: GET with Observe = 0 and an 8-byte token, the first response,
    /// a NON notification, a stale one dropped; dropping the [`Observation`] sends the GET
    /// with Observe = 1 on the same token.
    #[tokio::test(start_paused = true)]
    async fn an_observation_yields_fresh_notifications_and_cancels_on_drop() {
        use crate::coap::observe::{observe_value, set_observe};
        let (session, mut peer) = pipe();
        let (_stop, shutdown) = watch::channel(false);
        let tuning = TransportTuning::unreliable();
        let (link, _task) = spawn_session(session, info(), Arc::new(NotFound), tuning, shutdown);
        let observing = tokio::spawn(async move { link.observe(get()).await });
        let register = decode(&peer.rx.recv().await.unwrap()).unwrap();
        assert_eq!(observe_value(&register), Some(0));
        let token = register.get_token().to_vec();
        assert_eq!(token.len(), 8);
        let mut first = crate::coap::response_to(&register, ResponseType::Content);
        set_observe(&mut first, 10);
        peer.tx.send(encode(&first).unwrap()).unwrap();
        let mut observation = observing.await.unwrap().unwrap();
        assert_eq!(observe_value(observation.first()), Some(10));
        for (mid, seq) in [(1, 9), (2, 11)] {
            let mut n = first.clone();
            n.header.set_type(MessageType::NonConfirmable);
            n.header.message_id = mid;
            set_observe(&mut n, seq);
            peer.tx.send(encode(&n).unwrap()).unwrap();
        }
        let next = observation.next().await.unwrap();
        assert_eq!(
            observe_value(&next),
            Some(11),
            "9 is older than 10: dropped"
        );
        drop(observation);
        let cancel = decode(&peer.rx.recv().await.unwrap()).unwrap();
        assert_eq!(observe_value(&cancel), Some(1));
        assert_eq!(cancel.get_token(), token);
    }

    /// A request the peer sends while ours is outstanding is served, and both complete.
    #[tokio::test(start_paused = true)]
    async fn the_peers_request_is_served_while_ours_is_outstanding() {
        let (session, mut peer) = pipe();
        let (_stop, shutdown) = watch::channel(false);
        let (link, _task) = spawn_session(
            session,
            info(),
            Arc::new(NotFound),
            TransportTuning::unreliable(),
            shutdown,
        );
        let asking = {
            let link = link.clone();
            tokio::spawn(async move { link.request(get()).await })
        };
        let ours = decode(&peer.rx.recv().await.unwrap()).unwrap();
        let mut theirs = get();
        theirs.header.message_id = 77;
        theirs.set_token(vec![0xee]);
        peer.tx.send(encode(&theirs).unwrap()).unwrap();
        let answer = decode(&peer.rx.recv().await.unwrap()).unwrap();
        assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(
            (answer.header.message_id, answer.get_token()),
            (77, &[0xee][..])
        );
        assert_eq!(
            answer.header.code,
            MessageClass::Response(ResponseType::NotFound)
        );
        let reply = crate::coap::response_to(&ours, ResponseType::Content);
        peer.tx.send(encode(&reply).unwrap()).unwrap();
        let got = asking.await.unwrap().unwrap();
        assert_eq!(
            got.header.code,
            MessageClass::Response(ResponseType::Content)
        );
    }
}
