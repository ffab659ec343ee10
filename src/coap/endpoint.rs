//! One CoAP endpoint per datagram peer session (UDP or DTLS), playing both roles at once
//! (RFC 7252 §4, §5.2; LwM2M: a device registers as the client of the session, then the
//! server sends requests to it over the very same session).
//!
//! Owns: the one MID space of this session (our requests, their Block2 follow-ups, our NON
//! responses and our CON separate responses all take MIDs from one counter, starting at the
//! caller's random first value), the table of our outgoing exchanges (each a
//! [`ClientExchange`], keyed by [`RequestId`]) with the NSTART limit and its bounded queue
//! (RFC 7252 §4.7), the matching of incoming responses to them (ACK/RST by MID, responses by
//! token), the ACKs of CON responses (replayed when the peer retransmits one), the separate
//! responses of the server role (empty ACK after a threshold, then the response as a CON,
//! retransmitted until ACKed), Observe in both roles (RFC 7641: our observations and the
//! peer's observers, state in [`super::observe`], wiring in `endpoint_observe.rs`), and one
//! timer table over all of it.
//! Reuses, does not copy: `Nstart` (`nstart.rs`: the NSTART slots and queue, shared with
//! the stream endpoint), [`ServerExchanges`] (dedup of the peer's requests and replay of our
//! stored answers, critical options) and [`ClientExchange`] (retransmission, separate
//! responses, Block2 reassembly).
//! Does not own: executing requests (the caller gets [`EndpointEvent::Request`] and hands the
//! [`Responder`] back to [`Endpoint::respond`]), Block2 slicing of our answers (the runtime's
//! pipeline), sockets, the clock or randomness (tokens, the first MID and the random fraction
//! of the initial timeout are arguments).
//!
//! # Method classes and poll order (quinn style)
//!
//! * getters: [`tuning`](Endpoint::tuning), [`next_mid`](Endpoint::next_mid),
//!   [`in_flight`](Endpoint::in_flight), [`queued`](Endpoint::queued),
//!   [`separate_in_flight`](Endpoint::separate_in_flight), [`is_idle`](Endpoint::is_idle),
//!   [`dedup_len`](Endpoint::dedup_len), [`observations`](Endpoint::observations),
//!   [`observers`](Endpoint::observers), [`is_observed`](Endpoint::is_observed),
//!   [`is_registering`](Endpoint::is_registering);
//! * input: [`handle_datagram`](Endpoint::handle_datagram),
//!   [`handle_timeout`](Endpoint::handle_timeout);
//! * mutators (application commands): [`start_request`](Endpoint::start_request),
//!   [`cancel`](Endpoint::cancel), [`respond`](Endpoint::respond),
//!   [`abandon`](Endpoint::abandon), [`start_observe`](Endpoint::start_observe),
//!   [`reregister`](Endpoint::reregister),
//!   [`cancel_observation`](Endpoint::cancel_observation),
//!   [`forget_observation`](Endpoint::forget_observation), [`notify`](Endpoint::notify);
//! * output: [`poll_transmit`](Endpoint::poll_transmit), [`poll_event`](Endpoint::poll_event),
//!   [`poll_timeout`](Endpoint::poll_timeout).
//!
//! After every input or mutator call the driver drains `poll_transmit` (sending each datagram
//! in order), then `poll_event`, then re-arms its single timer from `poll_timeout`. `now` must
//! never go backwards.
//!
//! # Routing one datagram
//!
//! | message                                  | goes to                                     |
//! |------------------------------------------|---------------------------------------------|
//! | request (CON/NON), ping, reserved codes  | [`ServerExchanges`] (dedup, RST, 4.02/4.05) |
//! | empty ACK / RST                          | our notification with that MID (an RST removes the observer), else our separate response with that MID, else our exchange in flight with that MID, else ignored |
//! | piggybacked response (ACK)               | our exchange in flight with that MID        |
//! | CON / NON response                       | our exchange with that token, else a notification of our observation with that token; a CON is ACKed (and re-ACKed when retransmitted, no second event); a CON matching nothing gets an RST, a NON nothing |
//!
//! # Separate responses (server role)
//!
//! With a threshold set ([`Endpoint::with_separate_after`]; default ACK_TIMEOUT / 2), a CON
//! request still unanswered that long after it arrived is acknowledged with an empty ACK,
//! and a duplicate of it replays that ACK. The answer then goes out as a CON with a fresh
//! MID, retransmitted like a request (ACK_TIMEOUT back-off, MAX_RETRANSMIT) until the peer
//! ACKs or resets it; a duplicate of the request after that replays the response.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::budget::Account;
use super::client::DEFAULT_MAX_BODY;
use super::nstart::Nstart;
use super::observe::{
    ClientObservations, DEFAULT_MAX_OBSERVERS, ObservationId, ObserveEnd, ObserverRemoval,
    Observers,
};
use super::tuning::deadline;
use super::{
    ClientError, ClientExchange, CoapError, Inbound, MessageType, Packet, Responder,
    ServerExchanges, TransportTuning, decode, empty_message, peek_header,
};

#[path = "endpoint_observe.rs"]
mod observe_glue;

pub use super::nstart::DEFAULT_QUEUE_LIMIT;

/// CON responses we ACKed, remembered to re-ACK their retransmissions.
const ACKED_RESPONSES_LIMIT: usize = 64;

/// Names one request started with [`Endpoint::start_request`]; its outcome comes back in
/// [`EndpointEvent::Response`] with the same id, exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub(super) u64);

/// What the endpoint tells its driver, from [`Endpoint::poll_event`].
#[derive(Debug)]
#[must_use]
pub enum EndpointEvent {
    /// The peer sent a new request (duplicates never show up here). Pass `responder` back to
    /// [`Endpoint::respond`] or [`Endpoint::abandon`].
    Request {
        /// The decoded request, as received.
        request: Packet,
        /// The obligation to answer it.
        responder: Responder,
    },
    /// One of our requests finished: the response (Block2 reassembled) or why not. (The
    /// requests of an observation report through the observation's events instead.)
    Response {
        /// As returned by [`Endpoint::start_request`].
        id: RequestId,
        /// The response, or the failure ([`ClientError::Busy`] when the NSTART queue was
        /// full and nothing was sent).
        result: Result<Packet, ClientError>,
    },
    /// A notification of one of our observations (client role), in §3.4 order: the first
    /// response to the registration, then every newer notification; older ones and
    /// duplicates never show up. CON notifications were ACKed.
    Notification {
        /// As returned by [`Endpoint::start_observe`].
        id: ObservationId,
        /// The notification, Observe option included.
        response: Packet,
    },
    /// One of our observations ended; no event for it follows.
    ObservationEnded {
        /// As returned by [`Endpoint::start_observe`].
        id: ObservationId,
        /// Cancelled, ended by the peer, or failed.
        reason: ObserveEnd,
    },
    /// The peer's observation of one of our resources ended (server role), or a
    /// registration was refused for the observer cap.
    ObserverRemoved {
        /// The observation's token.
        token: Vec<u8>,
        /// Why.
        reason: ObserverRemoval,
    },
}

/// A request waiting for an NSTART slot.
#[derive(Debug)]
struct Queued {
    request: Packet,
    token: Vec<u8>,
    rng_fraction: f64,
}

/// One of our CON separate responses, retransmitted until ACKed.
#[derive(Debug)]
struct SeparateResponse {
    mid: u16,
    bytes: Vec<u8>,
    retransmits: u32,
    timeout: Duration,
    deadline: Instant,
}

/// Both roles of CoAP for one datagram peer session (see the module doc).
#[derive(Debug)]
pub struct Endpoint {
    tuning: TransportTuning,
    server: ServerExchanges,
    /// The one MID counter of the session.
    next_mid: u16,
    separate_after: Option<Duration>,
    rng_fraction: f64,
    max_body: usize,
    /// Our exchanges in flight (at most NSTART) and our requests waiting for a slot.
    requests: Nstart<Queued>,
    /// The peer's CON requests in the handler, by request MID: `Some(t)` = send an empty ACK
    /// at `t` if still unanswered, `None` = the empty ACK went out (answer separately).
    in_handler: BTreeMap<u16, Option<Instant>>,
    separate: Vec<SeparateResponse>,
    /// `(expiry, mid)` of CON responses we ACKed, in arrival order.
    acked_responses: VecDeque<(Instant, u16)>,
    /// Our observations of the peer's resources (client role).
    observations: ClientObservations,
    /// The peer's observations of our resources (server role).
    observers: Observers,
    /// The peer's GET requests with Observe = 0 in the handler: request MID → token.
    registering: BTreeMap<u16, Vec<u8>>,
    outbox: VecDeque<Vec<u8>>,
    events: VecDeque<EndpointEvent>,
}

impl Endpoint {
    /// An endpoint for one session. `first_mid` starts the MID space (pass a random value,
    /// RFC 7252 §4.4). NSTART comes from `tuning.nstart` (at least 1); separate responses
    /// after ACK_TIMEOUT / 2; the NSTART queue holds [`DEFAULT_QUEUE_LIMIT`] requests.
    pub fn new(tuning: TransportTuning, first_mid: u16) -> Self {
        let nstart = usize::try_from(tuning.nstart).unwrap_or(1);
        let separate_after = Some(tuning.ack_timeout / 2);
        Self {
            server: ServerExchanges::new(tuning.clone()).with_first_mid(first_mid),
            tuning,
            next_mid: first_mid,
            separate_after,
            rng_fraction: 0.0,
            max_body: DEFAULT_MAX_BODY,
            requests: Nstart::new(nstart),
            in_handler: BTreeMap::new(),
            separate: Vec::new(),
            acked_responses: VecDeque::new(),
            observations: ClientObservations::default(),
            observers: Observers::new(DEFAULT_MAX_OBSERVERS),
            registering: BTreeMap::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Sets NSTART, our exchanges in flight at once (default `tuning.nstart`, 1; 0 acts as 1).
    /// **Danger:** RFC 7252 §4.7 asks for 1 unless the peer is known to cope with more.
    pub fn with_nstart(mut self, nstart: usize) -> Self {
        self.requests.set_nstart(nstart);
        self
    }

    /// Sets how many requests may wait for an NSTART slot (default [`DEFAULT_QUEUE_LIMIT`]);
    /// one more fails at once with [`ClientError::Busy`].
    pub fn with_queue_limit(mut self, limit: usize) -> Self {
        self.requests.set_queue_limit(limit);
        self
    }

    /// Sets how long a CON request may stay unanswered before it gets an empty ACK and its
    /// answer goes out as a separate response (default ACK_TIMEOUT / 2); `None` always
    /// answers piggybacked (the peer retransmits meanwhile and duplicates are ignored).
    pub fn with_separate_after(mut self, after: Option<Duration>) -> Self {
        self.separate_after = after;
        self
    }

    /// Sets the random fraction in `[0, 1)` for the initial timeout of our separate
    /// responses (the caller supplies randomness; default 0).
    pub fn with_rng_fraction(mut self, fraction: f64) -> Self {
        self.rng_fraction = fraction;
        self
    }

    /// Sets the largest response body our requests accept (default 1 MiB).
    pub fn with_max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }

    /// Sets the bounds of the dedup table ([`ServerExchanges::with_account`]). Call it before
    /// the first datagram.
    pub fn with_account(mut self, account: Account) -> Self {
        self.server = self.server.with_account(account);
        self
    }

    /// The transmission parameters in use.
    pub fn tuning(&self) -> &TransportTuning {
        &self.tuning
    }

    /// The MID the next message of ours that needs one will use.
    pub fn next_mid(&self) -> u16 {
        self.next_mid
    }

    /// Our exchanges in flight (at most NSTART).
    pub fn in_flight(&self) -> usize {
        self.requests.in_flight()
    }

    /// Our requests waiting for an NSTART slot.
    pub fn queued(&self) -> usize {
        self.requests.queued()
    }

    /// Whether one more request of ours would be taken (queued if no slot is free) rather
    /// than refused `Busy`: the serve loop takes the next one from its link only then.
    pub fn has_room(&self) -> bool {
        self.requests.has_room()
    }

    /// Our separate responses not yet ACKed.
    pub fn separate_in_flight(&self) -> usize {
        self.separate.len()
    }

    /// Live entries of the dedup table of the peer's requests (for leak tests).
    pub fn dedup_len(&self) -> usize {
        self.server.len()
    }

    /// Nothing of ours is outstanding: no request in flight or queued, no separate response
    /// or CON notification awaiting its ACK, no observation of ours. (The peer's requests in
    /// the handler and its observations of our resources are the driver's to count.)
    pub fn is_idle(&self) -> bool {
        self.requests.is_empty()
            && self.separate.is_empty()
            && self.observations.len() == 0
            && !self.observers.con_in_flight()
    }

    /// Starts one of our requests: `request` carries code, options and payload (CON unless
    /// its type says NON; MID and token are overwritten), `token` at most 8 bytes and unique
    /// among our requests in flight, `rng_fraction` in `[0, 1)` for the initial timeout. It
    /// goes out at once if fewer than NSTART are in flight, else it queues; a full queue, an
    /// invalid request or a token in use fail at once with an event. Either way the outcome
    /// comes as exactly one [`EndpointEvent::Response`] with the returned id.
    pub fn start_request(
        &mut self,
        now: Instant,
        request: Packet,
        token: Vec<u8>,
        rng_fraction: f64,
    ) -> RequestId {
        let id = self.requests.new_id();
        let queued = Queued {
            request,
            token,
            rng_fraction,
        };
        if self.requests.may_launch_now() {
            self.launch(now, id, queued);
        } else if let Err(e) = self.requests.enqueue(id, queued) {
            self.outcome(now, id, Err(e));
        }
        self.pump(now);
        id
    }

    /// Withdraws a request still waiting in the NSTART queue: it is never sent and no event
    /// comes for it. `false` if it is not queued: a request in flight runs to its end (the
    /// peer may already be executing it) and its event still comes.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        self.requests.cancel(id)
    }

    /// Gives up one of our requests, queued or in flight: it is not (re)transmitted again,
    /// its NSTART slot goes to the next queued request, and no event comes for it. A late
    /// response to it then matches nothing (a CON one gets RST). `false` if it is unknown.
    pub fn give_up(&mut self, now: Instant, id: RequestId) -> bool {
        let found = self.requests.give_up(id);
        if found {
            self.pump(now);
        }
        found
    }

    /// Answers a request from [`EndpointEvent::Request`]: piggybacked on the ACK of a CON,
    /// as a NON (fresh MID) for a NON, or — once the CON got an empty ACK — as a CON separate
    /// response with a fresh MID, retransmitted until ACKed. The bytes come out of
    /// [`poll_transmit`](Self::poll_transmit). Errors are ours (not a response code, too
    /// large to encode) and leave the request unanswered.
    pub fn respond(
        &mut self,
        now: Instant,
        responder: Responder,
        response: Packet,
    ) -> Result<(), CoapError> {
        let response = self.observe_response(now, &responder, response);
        let request_mid = responder.request_mid();
        let separate = responder.is_confirmable()
            && matches!(self.in_handler.remove(&request_mid), Some(None));
        if separate {
            let mid = self.next_mid;
            let bytes = self
                .server
                .respond_separate(now, responder, response, mid)?;
            self.next_mid = mid.wrapping_add(1);
            let timeout = self.tuning.initial_timeout(self.rng_fraction);
            self.outbox.push_back(bytes.clone());
            self.separate.push(SeparateResponse {
                mid,
                bytes,
                retransmits: 0,
                timeout,
                deadline: deadline(now, timeout),
            });
            return Ok(());
        }
        self.server.set_next_mid(self.next_mid);
        let sent = self.server.respond(now, responder, response);
        self.next_mid = self.server.next_mid();
        self.outbox.push_back(sent?);
        Ok(())
    }

    /// Gives up on answering a request (the handler was cancelled). Duplicates keep being
    /// ignored (or re-ACKed) until the dedup entry expires.
    pub fn abandon(&mut self, responder: Responder) {
        self.in_handler.remove(&responder.request_mid());
        self.registering.remove(&responder.request_mid());
        self.server.abandon(responder);
    }

    /// Feeds one datagram from the peer (see the routing table in the module doc). Never
    /// panics, whatever the bytes.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) {
        let Some((mtype, mid)) = peek_header(bytes) else {
            tracing::debug!("datagram without a CoAP header ignored");
            return;
        };
        let class = bytes.get(1).map_or(0, |code| code >> 5);
        let empty = bytes.get(1) == Some(&0);
        match (mtype, class) {
            (MessageType::Acknowledgement | MessageType::Reset, _) if empty => {
                self.handle_empty_ack_or_rst(now, mtype, mid, bytes);
            }
            (_, 2..=5) => self.handle_response(now, mtype, mid, bytes),
            _ => self.handle_for_server(now, mid, bytes),
        }
        self.pump(now);
    }

    /// Runs every timer that is due: dedup expiry, retransmission of our requests and
    /// separate responses, the separate-response threshold, and the memory of ACKed CON
    /// responses.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.server.handle_timeout(now);
        for exchange in self.requests.active_mut() {
            exchange.handle_timeout(now);
        }
        for (mid, due) in self.in_handler.iter_mut() {
            if due.is_some_and(|t| t <= now) {
                *due = None;
                tracing::debug!(
                    mid,
                    "request still in the handler: empty ACK, separate response"
                );
                let ack = self
                    .server
                    .acknowledge_pending(*mid)
                    .unwrap_or_else(|| empty_message(MessageType::Acknowledgement, *mid));
                self.outbox.push_back(ack);
            }
        }
        let max_retransmit = self.tuning.max_retransmit;
        let outbox = &mut self.outbox;
        self.separate.retain_mut(|s| {
            if s.deadline > now {
                return true;
            }
            if s.retransmits >= max_retransmit {
                tracing::info!(mid = s.mid, "separate response never ACKed, giving up");
                return false;
            }
            s.retransmits += 1;
            s.timeout = s.timeout.saturating_mul(2);
            s.deadline = deadline(now, s.timeout);
            tracing::info!(
                mid = s.mid,
                n = s.retransmits,
                "retransmitting separate response"
            );
            outbox.push_back(s.bytes.clone());
            true
        });
        while self.acked_responses.front().is_some_and(|(t, _)| *t <= now) {
            self.acked_responses.pop_front();
        }
        self.observers_timeout(now);
        self.pump(now);
    }

    /// The next datagram to send, in order. Call until `None` after every input.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outbox.pop_front()
    }

    /// The next event for the driver.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        let event = self.events.pop_front();
        if event.is_none() && self.events.capacity() > 0 {
            // Drained: an idle session keeps no room for events (4 × 112 bytes each).
            self.events = VecDeque::new();
        }
        event
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next: the minimum over
    /// every timer of the session.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let exchanges = self.requests.active().filter_map(|(_, e)| e.poll_timeout());
        let thresholds = self.in_handler.values().filter_map(|t| *t);
        let separate = self.separate.iter().map(|s| s.deadline);
        let acked = self.acked_responses.front().map(|(t, _)| *t);
        exchanges
            .chain(thresholds)
            .chain(separate)
            .chain(acked)
            .chain(self.server.poll_timeout())
            .chain(self.observers.poll_timeout())
            .min()
    }

    /// Requests, pings, reserved codes: the server role's message layer.
    fn handle_for_server(&mut self, now: Instant, mid: u16, bytes: &[u8]) {
        self.server.set_next_mid(self.next_mid);
        let inbound = self.server.handle_datagram(now, bytes);
        self.next_mid = self.server.next_mid();
        match inbound {
            Inbound::Request { request, responder } => {
                if responder.is_confirmable()
                    && let Some(after) = self.separate_after
                {
                    self.in_handler.insert(mid, Some(deadline(now, after)));
                }
                self.observe_request(&request, mid);
                self.events
                    .push_back(EndpointEvent::Request { request, responder });
            }
            Inbound::Reply(reply) => self.outbox.push_back(reply),
            Inbound::Ignore => {}
        }
    }

    /// An empty ACK or RST: for one of our separate responses, or our request in flight.
    fn handle_empty_ack_or_rst(
        &mut self,
        now: Instant,
        mtype: MessageType,
        mid: u16,
        bytes: &[u8],
    ) {
        if decode(bytes).is_err() {
            tracing::debug!(mid, "malformed empty message ignored");
            return;
        }
        if self.observer_ack_or_rst(mtype, mid) {
            return;
        }
        if let Some(pos) = self.separate.iter().position(|s| s.mid == mid) {
            self.separate.swap_remove(pos);
            if mtype == MessageType::Reset {
                tracing::info!(mid, "peer reset our separate response");
            }
            return;
        }
        if let Some(id) = self.exchange_by_mid(mid) {
            self.feed(now, id, bytes);
        }
    }

    /// A response (piggybacked, CON or NON): to our exchange by MID or token.
    fn handle_response(&mut self, now: Instant, mtype: MessageType, mid: u16, bytes: &[u8]) {
        let packet = match decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                if mtype == MessageType::Confirmable {
                    tracing::warn!(mid, error = %e, "malformed CON response, RST");
                    self.outbox
                        .push_back(empty_message(MessageType::Reset, mid));
                }
                return;
            }
        };
        match mtype {
            MessageType::Acknowledgement => {
                if let Some(id) = self.exchange_by_mid(mid) {
                    self.feed(now, id, bytes);
                }
            }
            MessageType::Confirmable => {
                if self.acked_responses.iter().any(|(_, m)| *m == mid) {
                    tracing::debug!(mid, "retransmitted CON response, ACK again");
                    self.outbox
                        .push_back(empty_message(MessageType::Acknowledgement, mid));
                    return;
                }
                let Some(id) = self.exchange_by_token(packet.get_token()) else {
                    if self.handle_notification(now, mtype, mid, packet) {
                        return;
                    }
                    tracing::info!(mid, "CON response matching no request of ours, RST");
                    self.outbox
                        .push_back(empty_message(MessageType::Reset, mid));
                    return;
                };
                let before = self.outbox.len();
                self.feed(now, id, bytes);
                let ack = empty_message(MessageType::Acknowledgement, mid);
                if self.outbox.iter().skip(before).any(|b| *b == ack) {
                    self.remember_acked(now, mid);
                }
            }
            MessageType::NonConfirmable => {
                if let Some(id) = self.exchange_by_token(packet.get_token()) {
                    self.feed(now, id, bytes);
                } else {
                    let _ = self.handle_notification(now, mtype, mid, packet);
                }
            }
            MessageType::Reset => {}
        }
    }

    /// The outcome of one of our requests: to its observation if it is one's, else to the
    /// driver as [`EndpointEvent::Response`].
    fn outcome(&mut self, now: Instant, id: RequestId, result: Result<Packet, ClientError>) {
        if let Some(result) = self.observation_outcome(now, id, result) {
            self.events
                .push_back(EndpointEvent::Response { id, result });
        }
    }

    fn remember_acked(&mut self, now: Instant, mid: u16) {
        if self.acked_responses.len() >= ACKED_RESPONSES_LIMIT {
            self.acked_responses.pop_front();
        }
        let expires = deadline(now, self.tuning.exchange_lifetime());
        self.acked_responses.push_back((expires, mid));
    }

    fn exchange_by_mid(&self, mid: u16) -> Option<RequestId> {
        self.requests
            .active()
            .find(|(_, e)| e.current_mid() == Some(mid))
            .map(|(id, _)| *id)
    }

    fn exchange_by_token(&self, token: &[u8]) -> Option<RequestId> {
        self.requests.live_by_token(token)
    }

    /// Hands a datagram to one exchange, lending it the MID space (a Block2 follow-up takes
    /// the next MID), then collects its output.
    fn feed(&mut self, now: Instant, id: RequestId, bytes: &[u8]) {
        if let Some(exchange) = self.requests.get_mut(id) {
            exchange.set_next_mid(self.next_mid);
            exchange.handle_datagram(now, bytes);
            self.next_mid = exchange.next_mid();
        }
        self.pump(now);
    }

    /// Creates the exchange for a request whose turn has come.
    fn launch(&mut self, now: Instant, id: RequestId, q: Queued) {
        if self.requests.token_in_use(&q.token) {
            let e = ClientError::InvalidRequest("token already in use on this session".into());
            self.outcome(now, id, Err(e));
            return;
        }
        let exchange = ClientExchange::new(
            now,
            self.tuning.clone(),
            q.request,
            self.next_mid,
            q.token,
            q.rng_fraction,
        )
        .with_max_body(self.max_body);
        self.next_mid = exchange.next_mid();
        self.requests.insert(id, exchange);
    }

    /// Moves every exchange's datagrams to the outbox and its outcome to the events, retires
    /// finished exchanges and starts queued requests in their slots.
    fn pump(&mut self, now: Instant) {
        loop {
            let outbox = &mut self.outbox;
            let outcomes = self.requests.collect(|exchange| {
                while let Some(bytes) = exchange.poll_transmit(now) {
                    outbox.push_back(bytes);
                }
                None
            });
            for (id, result) in outcomes {
                self.outcome(now, id, result);
            }
            let mut launched = false;
            while let Some((id, q)) = self.requests.next_to_launch() {
                self.launch(now, id, q);
                launched = true;
            }
            if !launched {
                return;
            }
        }
    }
}

#[cfg(test)]
#[path = "endpoint_tests.rs"]
mod tests;
