//! The one serve loop of a peer session, whatever the transport and whichever side opened it:
//! bytes in → one sans-IO core ([`SessionCore`]: the datagram [`Endpoint`] or the RFC 8323
//! [`StreamEndpoint`], both roles) → the peer's requests to the shared [`Pipeline`] and our
//! responses back out; our own requests come in from a [`PeerLink`] and their outcomes go
//! back to it. The wire ([`Wire`]: one datagram session, or one byte stream) only carries
//! bytes.
//!
//! Owns: the tokio side of one session — the wire calls, the single sleep re-armed from
//! [`SessionCore::poll_timeout`], the randomness the core is given (first MID, tokens,
//! timeout fractions), the map from the core's [`RequestId`]s to the waiting link callers,
//! the idle timeout (datagram sessions) and the pre-auth deadline (stream connections, see
//! [`PreAuth`]).
//! Does not own: protocol state (all in the core), executing requests (the [`Pipeline`] and
//! the [`Handler`]), the stream specifics (in [`crate::runtime::stream_session`]: the
//! [`StreamEndpoint`]'s [`SessionCore`] and the byte stream's [`Wire`]).
//!
//! On datagrams a retransmitted request is answered from the dedup cache and never executed
//! twice, and a peer's CON request still in the handler after ACK_TIMEOUT / 2 (the endpoint's
//! default threshold) gets an empty ACK, its answer going out as a CON separate response. On
//! streams answers are sliced to the peer's Max-Message-Size, a silent connection is pinged
//! and closed, and our shutdown sends a Release.
//!
//! Observe (RFC 7641) rides on the same loop: the handlers' [`ObserverHandle`]s (server
//! role, every core) become [`SessionCore::notify`] calls, a notification sent while its
//! registration is still in the handler waiting for the answer to go out. The link's
//! observations (client role) get a random 8-byte token and their notifications are
//! forwarded to the [`Observation`]'s channel, where the core offers it (datagrams); on a
//! stream an observation ends at once with
//! [`LinkError::Coap`]`(`[`ClientError::ObserveUnsupported`]`)`. A handle whose peer no
//! longer observes gets [`ObserverError::NotObserved`].
//!
//! # Entry points
//!
//! * [`serve_session`] — a datagram session accepted by a listener: the link is created
//!   here and reaches handlers through [`Handler::handle_on_link`].
//! * [`serve_session_linked`] — any datagram session, with a link made beforehand by
//!   [`PeerLink::new`]: the side that dialed (a device registering with the gateway) keeps
//!   the [`PeerLink`] and serves the peer's requests on the same socket.
//! * [`spawn_session`] — [`serve_session_linked`] spawned, returning the link and the task.
//! * [`serve`] — the loop itself, for any [`SessionCore`] over any [`Wire`]; the stream entry
//!   points ([`serve_stream`](crate::runtime::serve_stream),
//!   [`serve_stream_linked`](crate::runtime::stream_session::serve_stream_linked)) call it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use tokio::sync::mpsc;

#[cfg(doc)]
use crate::coap::StreamEndpoint;
use crate::coap::{
    ClientError, CoapError, Endpoint, EndpointEvent, NotifyError, ObservationId, ObserveEnd,
    Packet, RequestId, Responder, TransportTuning,
};
use crate::runtime::alarm::Alarm;
use crate::runtime::client::{fast_random_bytes, random_bytes};
use crate::runtime::peer_link::{
    LINK_CAPACITY, LinkCommand, LinkError, LinkInbox, ObserveReply, ObserverError, PeerLink, Reply,
};
#[cfg(doc)]
use crate::runtime::peer_link::{Observation, ObserverHandle};
use crate::runtime::pipeline::{DRAIN_LIMIT, Pipeline, Start};
use crate::runtime::{Handler, Shutdown, stopped};
use crate::transport::tcp::PreAuth;
use crate::transport::{DatagramSession, PeerInfo};

/// A datagram session with no traffic for this long ends (its peer slot is freed), unless a
/// request of ours or of the peer's is still outstanding.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

type StdInstant = std::time::Instant;

/// The sans-IO core one serve loop drives: the protocol state of one peer session in both
/// roles. Implemented by [`Endpoint`] (UDP, DTLS) and [`StreamEndpoint`] (TCP, TLS; in
/// `stream_session.rs`). The method classes and poll order are the cores' own: after every
/// input or mutator, drain `poll_transmit`, then `poll_event`, then re-arm from
/// `poll_timeout`.
pub trait SessionCore: Send {
    /// Input: one chunk from the wire (a datagram, or bytes read from the stream).
    fn handle_input(&mut self, now: StdInstant, bytes: &[u8]);
    /// Input: every timer that is due.
    fn handle_timeout(&mut self, now: StdInstant);
    /// Output: the next bytes to send (a datagram, or a frame).
    fn poll_transmit(&mut self) -> Option<Vec<u8>>;
    /// Output: the next event (a peer's request, the outcome of one of ours, Observe).
    fn poll_event(&mut self) -> Option<EndpointEvent>;
    /// Output: when `handle_timeout` is due next.
    fn poll_timeout(&self) -> Option<StdInstant>;
    /// Whether [`start_request`](Self::start_request) would take one more request (queued
    /// beyond NSTART) rather than refuse it `Busy`: the serve loop takes our next request
    /// from the link only then, so callers wait in the link's channel (backpressure) instead
    /// of failing under a burst.
    fn has_room(&self) -> bool;
    /// Starts one of our requests (`rng_fraction` for the initial retransmission timeout,
    /// ignored on streams); exactly one [`EndpointEvent::Response`] follows.
    fn start_request(
        &mut self,
        now: StdInstant,
        request: Packet,
        token: Vec<u8>,
        rng_fraction: f64,
    ) -> RequestId;
    /// Withdraws a queued request of ours (no event follows); `false` if not queued.
    fn cancel(&mut self, id: RequestId) -> bool;
    /// Drops a request of ours, queued or in flight (no event follows).
    fn give_up(&mut self, now: StdInstant, id: RequestId) -> bool;
    /// Answers a peer's request.
    fn respond(
        &mut self,
        now: StdInstant,
        responder: Responder,
        response: Packet,
    ) -> Result<(), CoapError>;
    /// Nothing of ours is outstanding.
    fn is_idle(&self) -> bool;
    /// The session is over (a stream was released or aborted); the loop ends once the last
    /// bytes are out. Datagram sessions never say so: their wire ends instead.
    fn is_closed(&self) -> bool {
        false
    }
    /// The peer's Max-Message-Size for the pipeline's Block2 slicing and payload budget:
    /// `None` on datagrams (1024-byte blocks), `Some` on streams.
    fn max_message_size(&self) -> Option<usize> {
        None
    }
    /// The peer has shown it speaks CoAP on this session (on streams: its CSM arrived), which
    /// authenticates a pre-auth connection.
    fn peer_ready(&self) -> bool {
        true
    }
    /// The session ends on our side (shutdown, drained): a stream sends its Release.
    fn finish(&mut self, now: StdInstant) {
        let _ = now;
    }
    /// Starts observing (client role); `None` if the core offers no Observe.
    fn start_observe(
        &mut self,
        now: StdInstant,
        request: Packet,
        token: Vec<u8>,
        rng_fraction: f64,
    ) -> Option<ObservationId> {
        let _ = (now, request, token, rng_fraction);
        None
    }
    /// Cancels an observation with a GET carrying Observe = 1.
    fn cancel_observation(&mut self, now: StdInstant, id: ObservationId, frac: f64) -> bool {
        let _ = (now, id, frac);
        false
    }
    /// Forgets an observation at once.
    fn forget_observation(&mut self, id: ObservationId) -> bool {
        let _ = id;
        false
    }
    /// Re-registers an observation.
    fn reregister(&mut self, now: StdInstant, id: ObservationId, frac: f64) -> bool {
        let _ = (now, id, frac);
        false
    }
    /// The peer observes with this token (server role).
    fn is_observed(&self, token: &[u8]) -> bool {
        let _ = token;
        false
    }
    /// A registration with this token is in the handler.
    fn is_registering(&self, token: &[u8]) -> bool {
        let _ = token;
        false
    }
    /// Sends a notification to the peer's observation with `token`.
    fn notify(
        &mut self,
        now: StdInstant,
        token: &[u8],
        response: Packet,
        confirmable: bool,
    ) -> Result<(), NotifyError> {
        let _ = (now, token, response, confirmable);
        Err(NotifyError::NotObserved)
    }
}

impl SessionCore for Endpoint {
    fn handle_input(&mut self, now: StdInstant, bytes: &[u8]) {
        self.handle_datagram(now, bytes);
    }
    fn handle_timeout(&mut self, now: StdInstant) {
        Endpoint::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        Endpoint::poll_transmit(self)
    }
    fn poll_event(&mut self) -> Option<EndpointEvent> {
        Endpoint::poll_event(self)
    }
    fn poll_timeout(&self) -> Option<StdInstant> {
        Endpoint::poll_timeout(self)
    }
    fn has_room(&self) -> bool {
        Endpoint::has_room(self)
    }
    fn start_request(
        &mut self,
        now: StdInstant,
        request: Packet,
        token: Vec<u8>,
        rng_fraction: f64,
    ) -> RequestId {
        Endpoint::start_request(self, now, request, token, rng_fraction)
    }
    fn cancel(&mut self, id: RequestId) -> bool {
        Endpoint::cancel(self, id)
    }
    fn give_up(&mut self, now: StdInstant, id: RequestId) -> bool {
        Endpoint::give_up(self, now, id)
    }
    fn respond(
        &mut self,
        now: StdInstant,
        responder: Responder,
        response: Packet,
    ) -> Result<(), CoapError> {
        Endpoint::respond(self, now, responder, response)
    }
    fn is_idle(&self) -> bool {
        Endpoint::is_idle(self)
    }
    fn start_observe(
        &mut self,
        now: StdInstant,
        request: Packet,
        token: Vec<u8>,
        rng_fraction: f64,
    ) -> Option<ObservationId> {
        Some(Endpoint::start_observe(
            self,
            now,
            request,
            token,
            rng_fraction,
        ))
    }
    fn cancel_observation(&mut self, now: StdInstant, id: ObservationId, frac: f64) -> bool {
        Endpoint::cancel_observation(self, now, id, frac)
    }
    fn forget_observation(&mut self, id: ObservationId) -> bool {
        Endpoint::forget_observation(self, id)
    }
    fn reregister(&mut self, now: StdInstant, id: ObservationId, frac: f64) -> bool {
        Endpoint::reregister(self, now, id, frac)
    }
    fn is_observed(&self, token: &[u8]) -> bool {
        Endpoint::is_observed(self, token)
    }
    fn is_registering(&self, token: &[u8]) -> bool {
        Endpoint::is_registering(self, token)
    }
    fn notify(
        &mut self,
        now: StdInstant,
        token: &[u8],
        response: Packet,
        confirmable: bool,
    ) -> Result<(), NotifyError> {
        Endpoint::notify(self, now, token, response, confirmable)
    }
}

/// The wire is gone (a stream's write failed): the loop ends at once, owing nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireGone;

/// What one serve loop sends and receives bytes over: one datagram session
/// ([`DatagramWire`]) or one byte stream (`StreamWire` in `stream_session.rs`).
pub trait Wire: Send {
    /// The next chunk from the peer — one datagram, or the bytes one read returned — or
    /// `None` once the wire has ended. Must be cancel-safe (it races the other inputs).
    fn recv(&mut self) -> impl Future<Output = Option<Vec<u8>>> + Send;
    /// Sends one datagram or frame. A datagram that cannot be sent is only logged; a
    /// stream that cannot be written is [`WireGone`].
    fn send(&mut self, bytes: &[u8]) -> impl Future<Output = Result<(), WireGone>> + Send;
    /// Pushes out what `send` buffered (a stream's flush), after each batch.
    fn flush(&mut self) -> impl Future<Output = Result<(), WireGone>> + Send {
        async { Ok(()) }
    }
    /// Closes politely at the end of the loop. `stopped`: we are shutting down (the peer did
    /// not end the session).
    fn close(&mut self, stopped: bool) -> impl Future<Output = ()> + Send;
}

/// A [`DatagramSession`] as a [`Wire`]: DTLS says close_notify when we stop, briefly.
pub struct DatagramWire<S>(pub S);

/// How long a stopped datagram session may take to send its close_notify.
const CLOSE_BUDGET: Duration = Duration::from_millis(200);

impl<S: DatagramSession> Wire for DatagramWire<S> {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        match self.0.recv().await {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::debug!("session ends: {e}");
                None
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), WireGone> {
        if let Err(e) = self.0.send(bytes).await {
            tracing::debug!("send failed: {e}");
        }
        Ok(())
    }

    async fn close(&mut self, stopped: bool) {
        if stopped {
            // Stopped by its owner (not ended by the peer): say goodbye, briefly.
            let _ = tokio::time::timeout(CLOSE_BUDGET, self.0.close()).await;
        }
    }
}

/// How one serve loop runs, besides its core and wire.
pub struct ServeOptions {
    /// End the session after this long without traffic, when nothing is outstanding and no
    /// link is held elsewhere (datagram sessions: [`IDLE_TIMEOUT`]); `None` never (streams
    /// keep themselves alive with Ping/Pong instead).
    pub idle_timeout: Option<Duration>,
    /// How long a sliced answer stays cached for its follow-up blocks.
    pub block_lifetime: Duration,
    /// A connection not yet authenticated: authenticated once [`SessionCore::peer_ready`],
    /// closed without a word at its [`PreAuth::cut_off`].
    pub pre_auth: Option<PreAuth>,
}

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
    f64::from(u16::from_be_bytes(fast_random_bytes::<2>())) / 65536.0
}

/// Serves one datagram peer in both roles — its requests to `handler`, ours from `inbox`'s
/// [`PeerLink`] — until it goes quiet, its transport closes, or `shutdown`. When it returns
/// the link is closed: requests still waiting fail with [`LinkError::Closed`].
pub async fn serve_session_linked<S: DatagramSession, H: Handler>(
    session: S,
    peer: PeerInfo,
    handler: Arc<H>,
    tuning: TransportTuning,
    shutdown: Shutdown,
    inbox: LinkInbox,
) {
    // RFC 7252 §4.4: our MIDs start at a random value in every session.
    let first_mid = u16::from_be_bytes(random_bytes::<2>());
    let endpoint = Endpoint::new(tuning.clone(), first_mid)
        .with_account(handler.cache_limits().dedup_account())
        .with_max_body(handler.max_response_body())
        .with_rng_fraction(random_fraction());
    let options = ServeOptions {
        idle_timeout: Some(IDLE_TIMEOUT),
        block_lifetime: tuning.exchange_lifetime(),
        pre_auth: None,
    };
    serve(
        endpoint,
        DatagramWire(session),
        peer,
        handler,
        shutdown,
        inbox,
        options,
    )
    .await;
}

/// Resolves at the pre-auth cut-off, never without a pre-auth.
async fn cut_off(pre_auth: &mut Option<PreAuth>) -> crate::transport::tcp::admission::Refusal {
    match pre_auth {
        Some(p) => p.cut_off().await,
        None => std::future::pending().await,
    }
}

/// The serve loop: one peer in both roles over `wire`, with `core` holding the protocol
/// state — the peer's requests to `handler`, ours from `inbox`'s [`PeerLink`] — until the
/// wire ends, the core closes, the session goes idle (see [`ServeOptions`]), a pre-auth
/// connection is cut off, or `shutdown`. On the way out requests still in the handler are
/// answered (within [`DRAIN_LIMIT`]), the core finishes (a stream's Release) and the wire
/// closes. When it returns the link is closed: requests still waiting fail with
/// [`LinkError::Closed`].
pub async fn serve<C: SessionCore, W: Wire, H: Handler>(
    core: C,
    mut wire: W,
    peer: PeerInfo,
    handler: Arc<H>,
    mut shutdown: Shutdown,
    inbox: LinkInbox,
    options: ServeOptions,
) {
    let ServeOptions {
        idle_timeout,
        block_lifetime,
        mut pre_auth,
    } = options;
    let LinkInbox { mut rx, link } = inbox;
    let mut driver = Driver {
        core,
        pipeline: Pipeline::new(handler, peer, block_lifetime).with_link(link),
        waiting: HashMap::new(),
        observing: HashMap::new(),
        parked: Vec::new(),
    };
    let mut last_heard = Instant::now();
    let mut stopping = false;
    let mut alarm = Alarm::new(last_heard + IDLE_TIMEOUT);
    let stop = stopped(&mut shutdown);
    tokio::pin!(stop);

    loop {
        if driver.settle(&mut wire).await.is_err() {
            return;
        }
        driver.forget_abandoned();
        if driver.core.peer_ready()
            && let Some(p) = pre_auth.as_mut()
        {
            p.authenticated();
        }
        if driver.core.is_closed() {
            break;
        }
        let now = Instant::now();
        // Only an idle session may time out: a request of ours or of the peer's in progress
        // keeps it open (and must not make the sleep below spin), and so does a handler that
        // kept the link (a device's registration lives as long as its lifetime says).
        let idle_at = idle_timeout
            .filter(|_| driver.is_idle() && !driver.pipeline.link_held())
            .map(|after| last_heard + after);
        let wake = [driver.core.poll_timeout(), driver.pipeline.poll_timeout()]
            .into_iter()
            .flatten()
            .map(Instant::from_std)
            .chain(idle_at)
            .min();
        alarm.set(wake, now, IDLE_TIMEOUT);
        let pending_auth = pre_auth.as_ref().is_some_and(PreAuth::is_pending);
        tokio::select! {
            received = wire.recv() => {
                let Some(bytes) = received else {
                    break;
                };
                last_heard = Instant::now();
                driver.core.handle_input(last_heard.into_std(), &bytes);
            }
            Some(done) = driver.pipeline.finished() => {
                let now = Instant::now().into_std();
                let max = driver.core.max_message_size();
                let (responder, response) = driver.pipeline.complete(now, done, max);
                driver.respond(now, responder, response);
            }
            Some(command) = rx.recv(), if driver.core.has_room() => {
                driver.command(Instant::now().into_std(), *command)
            }
            () = alarm.rung() => {
                let now = Instant::now();
                if idle_at.is_some_and(|t| now >= t) && driver.is_idle() && !driver.pipeline.link_held() {
                    tracing::debug!("session idle, closing");
                    break;
                }
                driver.give_up_abandoned(now.into_std());
                driver.core.handle_timeout(now.into_std());
                driver.pipeline.handle_timeout(now.into_std());
            }
            why = cut_off(&mut pre_auth), if pending_auth => {
                if let Some(p) = &pre_auth {
                    p.refused(why, &"no CSM");
                }
                return;
            }
            () = &mut stop => {
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
        let max = driver.core.max_message_size();
        let (responder, response) = driver.pipeline.complete(now, done, max);
        driver.respond(now, responder, response);
        if driver.settle(&mut wire).await.is_err() {
            return;
        }
    }
    driver.core.finish(Instant::now().into_std());
    let _ = driver.settle(&mut wire).await;
    wire.close(stopping).await;
}

/// The state one serve loop drives.
struct Driver<C, H> {
    core: C,
    pipeline: Pipeline<H, Responder>,
    /// Link callers waiting for the outcome of our requests.
    waiting: HashMap<RequestId, Reply>,
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

impl<C: SessionCore, H: Handler> Driver<C, H> {
    /// Nothing in progress in either role.
    fn is_idle(&self) -> bool {
        self.core.is_idle()
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
            self.core.give_up(now, id);
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
                let token = fast_random_bytes::<4>().to_vec();
                let id = self
                    .core
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
                let token = fast_random_bytes::<8>().to_vec();
                let Some(id) = self
                    .core
                    .start_observe(now, request, token, random_fraction())
                else {
                    let _ = reply.send(Err(LinkError::Coap(ClientError::ObserveUnsupported)));
                    return;
                };
                let sink = Sink {
                    first: Some(reply),
                    notifications,
                };
                self.observing.insert(id, sink);
            }
            LinkCommand::StopObserving { id } => self.stop_observing(now, id),
            LinkCommand::Reregister { id } => {
                let _ = self.core.reregister(now, id, random_fraction());
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
        if !self.core.cancel_observation(now, id, random_fraction()) {
            self.core.forget_observation(id);
        }
    }

    /// A handler's notification: sent, parked until its registration is answered, or
    /// refused.
    fn notify(&mut self, now: std::time::Instant, n: Parked) {
        if n.reply.is_closed() {
            return;
        }
        if !self.core.is_observed(&n.token) && self.core.is_registering(&n.token) {
            self.parked.push(n);
            return;
        }
        let sent = self.core.notify(now, &n.token, n.response, n.confirmable);
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
        let core = &mut self.core;
        self.waiting.retain(|id, reply| {
            if reply.is_closed() {
                core.cancel(*id);
                false
            } else {
                true
            }
        });
    }

    /// Sends what the core has to send and dispatches its events, until neither is left.
    /// [`WireGone`] if a stream could not be written.
    async fn settle<W: Wire>(&mut self, wire: &mut W) -> Result<(), WireGone> {
        loop {
            let mut sent = false;
            while let Some(bytes) = self.core.poll_transmit() {
                wire.send(&bytes).await?;
                sent = true;
            }
            if sent {
                wire.flush().await?;
            }
            let Some(event) = self.core.poll_event() else {
                return Ok(());
            };
            match event {
                EndpointEvent::Request { request, responder } => {
                    let now = Instant::now().into_std();
                    let max = self.core.max_message_size();
                    if let Start::Answer(responder, answer) =
                        self.pipeline.start_for(now, request, responder, max)
                    {
                        self.respond(now, responder, answer);
                    }
                }
                EndpointEvent::Response { id, result } => {
                    if let Some(reply) = self.waiting.remove(&id) {
                        // The caller may have given up; the exchange finished anyway.
                        reply.send(result.map_err(LinkError::from));
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
        match self.core.respond(now, responder, response) {
            Ok(()) => {}
            Err(CoapError::Closed) => tracing::debug!("connection closed before our answer"),
            Err(e) => tracing::error!("cannot encode our response: {e}"),
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
