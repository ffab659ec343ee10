//! One CoAP endpoint per reliable connection (TCP or TLS, RFC 8323), playing both roles at
//! once — the stream counterpart of [`Endpoint`](super::Endpoint): the peer's requests come
//! out as [`EndpointEvent::Request`] with a [`Responder`] (its token), our requests go in with
//! [`StreamEndpoint::start_request`] and come back as [`EndpointEvent::Response`].
//!
//! Owns: the token layer of one connection in both directions (our outgoing exchanges, each a
//! [`ClientExchange::new_reliable`] keyed by [`RequestId`] and matched by its current token;
//! the peer's requests answered by echoing theirs), NSTART and its bounded queue with the
//! same semantics as the datagram [`Endpoint`](super::Endpoint) (a full queue fails at once
//! with [`ClientError::Busy`], [`cancel`](StreamEndpoint::cancel) withdraws a queued request,
//! [`give_up`](StreamEndpoint::give_up) drops one queued or in flight), and one timer table:
//! the connection's (CSM wait, keepalive) and the exchanges' response deadlines.
//! Reuses, does not copy: `Nstart` (`nstart.rs`: the NSTART slots and queue, shared with
//! the datagram endpoint), [`StreamConnection`] (framing, CSM, Ping/Pong, Release/Abort, the
//! peer's Max-Message-Size) and [`ClientExchange`] (Block2 follow-ups and reassembly).
//! Does not own: executing requests, Block2 slicing of our answers (the runtime's pipeline
//! sizes them to [`peer_max_message_size`](StreamEndpoint::peer_max_message_size)), sockets,
//! the clock or randomness (tokens are arguments). There are no MIDs, types, ACKs,
//! retransmissions or dedup on a reliable transport.
//!
//! # Policy choices
//!
//! * **Our requests wait for the peer's CSM.** They stay in the NSTART queue until the peer's
//!   CSM has arrived, so the first one is sized against the peer's real Max-Message-Size;
//!   our own CSM is always the first frame out. If the CSM never comes the connection
//!   aborts at its CSM timeout and the waiting requests fail with
//!   [`ClientError::ConnectionClosed`].
//! * **A peer's request before its CSM** is served (the connection is lenient about order).
//! * **Observe, server role** (RFC 8323 §7, in `stream_observe.rs`): the peer may observe our
//!   resources; notifications go out with [`notify`](StreamEndpoint::notify). We do not
//!   observe the peer over a stream: the runtime refuses our own observations over a stream
//!   link.
//! * **When the connection closes** every request of ours, queued or in flight, fails with
//!   [`ClientError::ConnectionClosed`], exactly once; answers to the peer's requests fail
//!   with [`CoapError::Closed`].
//!
//! # Method classes and poll order (quinn style)
//!
//! * getters: [`peer_max_message_size`](StreamEndpoint::peer_max_message_size),
//!   [`peer_csm_received`](StreamEndpoint::peer_csm_received),
//!   [`is_closed`](StreamEndpoint::is_closed), [`is_idle`](StreamEndpoint::is_idle),
//!   [`in_flight`](StreamEndpoint::in_flight), [`queued`](StreamEndpoint::queued);
//! * input: [`handle_bytes`](StreamEndpoint::handle_bytes),
//!   [`handle_timeout`](StreamEndpoint::handle_timeout);
//! * mutators: [`start_request`](StreamEndpoint::start_request),
//!   [`cancel`](StreamEndpoint::cancel), [`give_up`](StreamEndpoint::give_up),
//!   [`respond`](StreamEndpoint::respond), [`abandon`](StreamEndpoint::abandon),
//!   [`release`](StreamEndpoint::release);
//! * output: [`poll_transmit`](StreamEndpoint::poll_transmit),
//!   [`poll_event`](StreamEndpoint::poll_event),
//!   [`poll_timeout`](StreamEndpoint::poll_timeout).
//!
//! After every input or mutator call the driver writes everything `poll_transmit` yields,
//! then drains `poll_event`, then re-arms one timer from `poll_timeout`. Once
//! [`is_closed`](StreamEndpoint::is_closed) and `poll_transmit` is `None`, it closes the
//! socket. `now` must never go backwards.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::client::DEFAULT_MAX_BODY;
use super::endpoint::RequestId;
use super::nstart::Nstart;
use super::observe::{DEFAULT_MAX_OBSERVERS, Observers};
use super::{
    ClientError, ClientExchange, CoapError, EndpointEvent, Packet, Responder, StreamConnection,
    StreamEvent,
};

/// A request of ours waiting for an NSTART slot (or for the peer's CSM).
#[derive(Debug)]
struct Queued {
    request: Packet,
    token: Vec<u8>,
}

/// Both roles of CoAP over one reliable connection (see the module doc).
#[derive(Debug)]
pub struct StreamEndpoint {
    pub(super) conn: StreamConnection,
    response_timeout: Duration,
    max_body: usize,
    /// Our exchanges in flight (at most NSTART) and our requests waiting for a slot (or the
    /// peer's CSM).
    requests: Nstart<Queued>,
    /// The peer's observations of our resources (server role), capped.
    pub(super) observers: Observers,
    /// Tokens of the peer's registrations (GET with Observe = 0) still in the handler.
    pub(super) registering: BTreeSet<Vec<u8>>,
    pub(super) events: VecDeque<EndpointEvent>,
    /// The connection's close has been turned into failures of our requests.
    close_reported: bool,
}

impl StreamEndpoint {
    /// An endpoint over a fresh connection: `conn` as built by [`StreamConnection::new`]
    /// (its CSM is the first frame out; add keepalive or a CSM timeout there). Each of our
    /// requests, every Block2 follow-up included, must be answered within
    /// `response_timeout` of its start. NSTART 1, a queue of [`DEFAULT_QUEUE_LIMIT`](super::endpoint::DEFAULT_QUEUE_LIMIT).
    pub fn new(conn: StreamConnection, response_timeout: Duration) -> Self {
        Self {
            conn,
            response_timeout,
            max_body: DEFAULT_MAX_BODY,
            requests: Nstart::new(1),
            observers: Observers::new(DEFAULT_MAX_OBSERVERS),
            registering: BTreeSet::new(),
            events: VecDeque::new(),
            close_reported: false,
        }
    }

    /// Sets NSTART, our exchanges in flight at once (default 1; 0 acts as 1).
    pub fn with_nstart(mut self, nstart: usize) -> Self {
        self.requests.set_nstart(nstart);
        self
    }

    /// Sets how many requests may wait for a slot (default [`DEFAULT_QUEUE_LIMIT`](super::endpoint::DEFAULT_QUEUE_LIMIT)); one
    /// more fails at once with [`ClientError::Busy`].
    pub fn with_queue_limit(mut self, limit: usize) -> Self {
        self.requests.set_queue_limit(limit);
        self
    }

    /// Sets the largest response body our requests accept (default 1 MiB).
    pub fn with_max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }

    /// The largest frame the peer accepts: 1152 until its CSM says otherwise.
    pub fn peer_max_message_size(&self) -> usize {
        self.conn.peer_max_message_size()
    }

    /// The peer's CSM has arrived.
    pub fn peer_csm_received(&self) -> bool {
        self.conn.peer_csm_received()
    }

    /// The connection is closed (released, aborted, timed out); only already queued bytes
    /// remain in [`poll_transmit`](Self::poll_transmit).
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Our exchanges in flight (at most NSTART).
    pub fn in_flight(&self) -> usize {
        self.requests.in_flight()
    }

    /// Our requests waiting for a slot or for the peer's CSM.
    pub fn queued(&self) -> usize {
        self.requests.queued()
    }

    /// Whether one more request of ours would be taken rather than refused `Busy`.
    pub fn has_room(&self) -> bool {
        self.requests.has_room()
    }

    /// No request of ours is in flight or queued. (The peer's requests in the handler are
    /// the driver's to count.)
    pub fn is_idle(&self) -> bool {
        self.requests.is_empty()
    }

    /// Starts one of our requests: `request` carries code, options and payload (type and MID
    /// are meaningless here), `token` at most 8 bytes and unique among our requests in
    /// flight. It goes out once the peer's CSM is in and fewer than NSTART are in flight,
    /// else it queues; a full queue, an invalid request, a token in use or a closed
    /// connection fail at once with an event. Either way the outcome comes as exactly one
    /// [`EndpointEvent::Response`] with the returned id.
    pub fn start_request(&mut self, now: Instant, request: Packet, token: Vec<u8>) -> RequestId {
        let id = self.requests.new_id();
        if self.conn.is_closed() {
            self.outcome(id, Err(ClientError::ConnectionClosed));
        } else if let Err(e) = self.requests.enqueue(id, Queued { request, token }) {
            self.outcome(id, Err(e));
        }
        self.pump(now);
        id
    }

    /// Withdraws a request still waiting in the queue: it is never sent and no event comes
    /// for it. `false` if it is not queued (one in flight runs to its end).
    pub fn cancel(&mut self, id: RequestId) -> bool {
        self.requests.cancel(id)
    }

    /// Gives up one of our requests, queued or in flight: no event comes for it, its slot
    /// goes to the next queued request, and a late response to it matches nothing (and is
    /// ignored). `false` if it is unknown.
    pub fn give_up(&mut self, now: Instant, id: RequestId) -> bool {
        let found = self.requests.give_up(id);
        if found {
            self.pump(now);
        }
        found
    }

    /// Answers a request from [`EndpointEvent::Request`]: `response` gets the request's token;
    /// a 2.xx with Observe to a registration makes the peer an observer (its sequence number
    /// is set here), any other answer loses Observe. Fails with
    /// [`CoapError::TooLarge`] above the peer's Max-Message-Size (slice first),
    /// [`CoapError::Closed`] once closed, [`CoapError::NotAResponse`] for a non-response.
    pub fn respond(
        &mut self,
        now: Instant,
        responder: Responder,
        response: Packet,
    ) -> Result<(), CoapError> {
        if !matches!(response.header.code, super::MessageClass::Response(_)) {
            return Err(CoapError::NotAResponse(response.header.code.to_string()));
        }
        let mut response = self.observe_response(now, &responder, response);
        response.set_token(responder.token().to_vec());
        self.conn.send(&response)
    }

    /// Gives up on answering a request (its handler was cancelled). Nothing is sent.
    pub fn abandon(&mut self, responder: Responder) {
        self.observe_abandoned(&responder);
    }

    /// Closes gracefully: a Release with `diagnostic`; our requests still waiting fail with
    /// [`ClientError::ConnectionClosed`]. No-op if already closed.
    pub fn release(&mut self, now: Instant, diagnostic: &str) {
        self.conn.release(diagnostic);
        self.drain_connection(now);
    }

    /// Feeds bytes read from the stream, in any chunking. Never panics, whatever the bytes.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        self.conn.handle_bytes(now, bytes);
        self.drain_connection(now);
    }

    /// Runs every timer that is due: the connection's CSM wait and keepalive, and the
    /// response deadlines of our exchanges.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.conn.handle_timeout(now);
        for exchange in self.requests.active_mut() {
            exchange.handle_timeout(now);
        }
        self.drain_connection(now);
    }

    /// The next frame to write, in order. Call until `None` after every input.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.conn.poll_transmit()
    }

    /// The next event for the driver: [`EndpointEvent::Request`],
    /// [`EndpointEvent::Response`] or [`EndpointEvent::ObserverRemoved`] (the client-role
    /// observation events never come on a stream).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next: the minimum of the
    /// connection's timers and our exchanges' deadlines.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.requests
            .active()
            .filter_map(|(_, e)| e.poll_timeout())
            .chain(self.conn.poll_timeout())
            .min()
    }

    /// Routes the connection's events (requests to the driver, responses to our exchanges
    /// by token, the close to our waiting requests), then advances the exchanges.
    fn drain_connection(&mut self, now: Instant) {
        while let Some(event) = self.conn.poll_event() {
            match event {
                StreamEvent::Request(request) => {
                    self.observe_request(&request);
                    let responder = Responder::for_stream(request.get_token().to_vec());
                    self.events
                        .push_back(EndpointEvent::Request { request, responder });
                }
                StreamEvent::Response(response) => {
                    let token = response.get_token();
                    let found = self.requests.live_by_token(token);
                    match found.and_then(|id| self.requests.get_mut(id)) {
                        Some(exchange) => exchange.handle_response(now, response),
                        None => tracing::debug!(?token, "response matching no request of ours"),
                    }
                }
                StreamEvent::Closed { reason } => {
                    tracing::debug!(%reason, "connection closed");
                }
            }
        }
        self.pump(now);
    }

    /// Fails everything of ours once the connection is closed.
    fn report_close(&mut self) {
        if self.close_reported || !self.conn.is_closed() {
            return;
        }
        self.close_reported = true;
        for id in self.requests.clear() {
            self.outcome(id, Err(ClientError::ConnectionClosed));
        }
        self.observers_closed();
    }

    fn outcome(&mut self, id: RequestId, result: Result<Packet, ClientError>) {
        self.events
            .push_back(EndpointEvent::Response { id, result });
    }

    /// Moves every exchange's requests to the connection and its outcome to the events,
    /// retires finished exchanges and starts queued requests in their slots.
    fn pump(&mut self, now: Instant) {
        loop {
            let conn = &mut self.conn;
            let outcomes = self.requests.collect(|exchange| {
                let mut failure = None;
                while let Some(p) = exchange.poll_request() {
                    if let Err(e) = conn.send(&p) {
                        tracing::info!(error = %e, "cannot send our request");
                        failure.get_or_insert(match e {
                            CoapError::Closed => ClientError::ConnectionClosed,
                            other => ClientError::InvalidRequest(other.to_string()),
                        });
                    }
                }
                failure
            });
            for (id, result) in outcomes {
                self.outcome(id, result);
            }
            if self.conn.is_closed() {
                self.report_close();
                return;
            }
            let mut launched = false;
            while self.conn.peer_csm_received()
                && let Some((id, q)) = self.requests.next_to_launch()
            {
                self.launch(now, id, q);
                launched = true;
            }
            if !launched {
                return;
            }
        }
    }

    /// Creates the exchange for a request whose turn has come.
    fn launch(&mut self, now: Instant, id: RequestId, q: Queued) {
        if self.requests.token_in_use(&q.token) {
            let e = ClientError::InvalidRequest("token already in use on this connection".into());
            self.outcome(id, Err(e));
            return;
        }
        let exchange = ClientExchange::new_reliable(now, q.request, q.token, self.response_timeout)
            .with_peer_max_message_size(self.conn.peer_max_message_size())
            .with_max_body(self.max_body);
        self.requests.insert(id, exchange);
    }
}

#[cfg(test)]
#[path = "stream_endpoint_tests.rs"]
mod tests;
