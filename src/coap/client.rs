//! Client role: one outgoing request/response exchange with one peer (RFC 7252 §4.2, §5.2;
//! RFC 7959 Block2), over UDP/DTLS or, in reliable mode, over TCP/TLS (RFC 8323).
//!
//! Owns: the MIDs this exchange sends (starting at the caller's first MID), its token, the
//! CON retransmission state (exponential back-off from ACK_TIMEOUT·[1, ACK_RANDOM_FACTOR]),
//! the wait for a separate response, and Block2 reassembly with a body-size limit.
//! Does not own: choosing MIDs or tokens (the driver keeps a per-peer MID counter, see
//! [`ClientExchange::next_mid`], and supplies random tokens), NSTART (the driver runs at most
//! `nstart` exchanges per peer), or Block1.
//!
//! # Two modes, one Block2 reassembly
//!
//! [`ClientExchange::new`] is the UDP mode: it speaks datagrams
//! ([`poll_transmit`](ClientExchange::poll_transmit) /
//! [`handle_datagram`](ClientExchange::handle_datagram)) and owns MIDs and retransmission.
//! [`ClientExchange::new_reliable`] is the RFC 8323 mode: no MIDs, ACKs or retransmissions;
//! it speaks [`Packet`]s ([`poll_request`](ClientExchange::poll_request) /
//! [`handle_response`](ClientExchange::handle_response)) that the driver passes through a
//! [`StreamConnection`](super::StreamConnection), which enforces the peer's
//! Max-Message-Size and does the framing. Both modes share the same Block2 follow-up and
//! reassembly code (`absorb_response`), so the two stacks cannot drift apart.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{
    CoapOption, MAX_TOKEN_LEN, MessageClass, MessageType, Packet, TransportTuning, decode,
    empty_message, encode, peek_header, set_single, without_option,
};
use crate::coap::block::BlockOption;
use crate::coap::tcp::encode_frame;
use crate::coap::tuning::deadline;

/// Default limit on a reassembled response body: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No ACK after MAX_RETRANSMIT retransmissions, or no (separate / NON) response in time.
    #[error("no response from peer in time")]
    TimedOut,
    /// The peer rejected the request with an RST.
    #[error("peer reset the exchange")]
    Reset,
    /// The response body exceeds the configured limit.
    #[error("response body exceeds {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The peer's response violates the protocol (bad Block2 sequence, ETag change, …).
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The request given to [`ClientExchange::new`] cannot be sent (our fault).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Too many requests already wait for this peer (the [`super::Endpoint`]'s NSTART
    /// queue is full); nothing was sent.
    #[error("too many requests queued for this peer")]
    Busy,
    /// The reliable connection closed (released, aborted, or failed) before the response
    /// came ([`super::StreamEndpoint`]).
    #[error("connection closed before the response")]
    ConnectionClosed,
    /// Observe was asked of a session that does not offer it (a TCP/TLS connection, whose
    /// [`super::StreamEndpoint`] serves no observations); nothing was sent.
    #[error("Observe is not supported on this transport")]
    ObserveUnsupported,
}

/// The outcome of an exchange, returned once by [`ClientExchange::poll_event`].
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The response, with the full reassembled body as payload and no Block2 option.
    Response(Packet),
    /// The exchange failed.
    Failed(ClientError),
}

/// One request in flight (the initial request or one Block2 follow-up).
#[derive(Debug)]
struct InFlight {
    mid: u16,
    bytes: Vec<u8>,
    confirmable: bool,
    /// Retransmissions done so far.
    retransmits: u32,
    /// Current retransmission timeout (doubles on each retransmission).
    timeout: Duration,
    /// `bytes` must go out on the next `poll_transmit`.
    send_pending: bool,
    /// When to retransmit (CON, not yet ACKed) — or when to give up waiting.
    deadline: Option<Instant>,
    /// An empty ACK arrived; waiting for the separate response.
    acked: bool,
    /// The request as sent (reliable mode hands this out via `poll_request`).
    packet: Packet,
}

/// State of the RFC 8323 (reliable) mode.
#[derive(Debug)]
struct Reliable {
    /// The whole exchange, all blocks included, must finish by then.
    deadline: Instant,
}

/// One client exchange: send a request, retransmit, reassemble, report one event.
///
/// Method classes: getters ([`next_mid`](Self::next_mid), [`is_done`](Self::is_done)), input
/// ([`handle_datagram`](Self::handle_datagram), [`handle_timeout`](Self::handle_timeout)) and
/// output ([`poll_transmit`](Self::poll_transmit), [`poll_timeout`](Self::poll_timeout),
/// [`poll_event`](Self::poll_event)). After each input call, drain `poll_transmit`, then
/// `poll_event`, then re-arm the timer from `poll_timeout`. `now` must never go backwards.
///
/// After the event is reported the exchange still answers a retransmitted separate
/// response with its ACK; drop it once `poll_timeout` is `None` or when convenient.
#[derive(Debug)]
pub struct ClientExchange {
    tuning: TransportTuning,
    /// The request without Block2, as given (type, code, options, payload).
    request: Packet,
    token: Vec<u8>,
    next_mid: u16,
    rng_fraction: f64,
    max_body: usize,
    current: Option<InFlight>,
    /// ACKs and RSTs to send.
    outbox: VecDeque<Vec<u8>>,
    /// Reassembled body so far.
    body: Vec<u8>,
    etag: Option<Vec<u8>>,
    event: Option<ClientEvent>,
    done: bool,
    /// MID of the last separate CON response we ACKed, to re-ACK its retransmissions.
    last_separate_mid: Option<u16>,
    /// `Some` in RFC 8323 mode.
    reliable: Option<Reliable>,
}

impl ClientExchange {
    /// Starts an exchange. `request` carries code, options and payload (MID and token are
    /// overwritten); its type decides CON (the default of `Packet::new()`) or NON. `mid` is
    /// the first MID to use, `token` at most 8 bytes (the caller supplies randomness), and
    /// `rng_fraction` in `[0, 1)` places the initial timeout in
    /// `[ACK_TIMEOUT, ACK_TIMEOUT·ACK_RANDOM_FACTOR]`.
    ///
    /// An invalid request (token too long, ACK/RST type, not a request code, too large to
    /// encode) does not panic: the exchange reports `Failed(InvalidRequest)` at once.
    ///
    /// Nothing is sent until [`poll_transmit`](Self::poll_transmit); `now` is accepted for
    /// a uniform signature and not used yet (timers start at the first transmission).
    pub fn new(
        now: Instant,
        tuning: TransportTuning,
        request: Packet,
        mid: u16,
        token: Vec<u8>,
        rng_fraction: f64,
    ) -> Self {
        let _ = now;
        Self::start(tuning, request, mid, token, rng_fraction, None)
    }

    /// Starts an exchange over a reliable transport (RFC 8323: TCP, TLS). `request` carries
    /// code, options and payload (type and MID are meaningless and ignored); `token` is at
    /// most 8 bytes. The whole exchange, every Block2 follow-up included, must finish within
    /// `response_timeout` from `now`, else it fails with [`ClientError::TimedOut`].
    ///
    /// The request is handed out by [`poll_request`](Self::poll_request) (give it to
    /// [`StreamConnection::send`](super::StreamConnection::send)); responses come in through
    /// [`handle_response`](Self::handle_response). Each Block2 follow-up uses a fresh token:
    /// the previous one incremented as a big-endian counter of the same length (a zero-length
    /// token stays empty, which is only safe with one exchange per connection). Route
    /// responses by the current [`token`](Self::token), or offer each response to every
    /// exchange: one whose token does not match ignores it.
    ///
    /// An invalid request (token too long, not a request code) reports
    /// `Failed(InvalidRequest)` at once, as [`new`](Self::new) does.
    pub fn new_reliable(
        now: Instant,
        request: Packet,
        token: Vec<u8>,
        response_timeout: Duration,
    ) -> Self {
        let reliable = Reliable {
            deadline: deadline(now, response_timeout),
        };
        let mut request = request;
        request.header.set_type(MessageType::Confirmable);
        Self::start(
            TransportTuning::unreliable(),
            request,
            0,
            token,
            0.0,
            Some(reliable),
        )
    }

    fn start(
        tuning: TransportTuning,
        request: Packet,
        mid: u16,
        token: Vec<u8>,
        rng_fraction: f64,
        reliable: Option<Reliable>,
    ) -> Self {
        let mut this = Self {
            tuning,
            request: without_option(&request, CoapOption::Block2.into()),
            token,
            next_mid: mid,
            rng_fraction,
            max_body: DEFAULT_MAX_BODY,
            current: None,
            outbox: VecDeque::new(),
            body: Vec::new(),
            etag: None,
            event: None,
            done: false,
            last_separate_mid: None,
            reliable,
        };
        if this.token.len() > MAX_TOKEN_LEN {
            this.fail(ClientError::InvalidRequest(format!(
                "token of {} bytes (at most 8)",
                this.token.len()
            )));
            return this;
        }
        if !matches!(this.request.header.code, MessageClass::Request(_)) {
            this.fail(ClientError::InvalidRequest("not a request code".into()));
            return this;
        }
        if !matches!(
            this.request.header.get_type(),
            MessageType::Confirmable | MessageType::NonConfirmable
        ) {
            this.fail(ClientError::InvalidRequest(
                "type must be CON or NON".into(),
            ));
            return this;
        }
        // A Block2 option in the caller's request sets the preferred block size.
        let first = match BlockOption::block2(&request) {
            Some(Ok(b)) => Some(BlockOption {
                num: 0,
                more: false,
                szx: b.szx,
            }),
            _ => None,
        };
        this.send_request(first);
        this
    }

    /// Sets the largest body this exchange accepts (default [`DEFAULT_MAX_BODY`], 1 MiB).
    pub fn with_max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }

    /// The first MID this exchange has not used: give it to the next exchange with the peer.
    pub fn next_mid(&self) -> u16 {
        self.next_mid
    }

    /// Sets the MID the next (Block2 follow-up) request of this exchange uses: an
    /// [`super::Endpoint`] lends its one MID space to each exchange around each input call,
    /// so concurrent exchanges never pick the same MID.
    pub fn set_next_mid(&mut self, mid: u16) {
        self.next_mid = mid;
    }

    /// UDP mode: the MID of the request currently in flight (ACKs and RSTs match it), until
    /// the outcome.
    pub fn current_mid(&self) -> Option<u16> {
        if self.reliable.is_some() {
            return None;
        }
        self.current.as_ref().map(|c| c.mid)
    }

    /// The exchange's token: in reliable mode, the token of the request currently in flight
    /// (it changes with each Block2 follow-up).
    pub fn token(&self) -> &[u8] {
        &self.token
    }

    /// The event has been produced (it may still be waiting in [`poll_event`](Self::poll_event)).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Reliable mode only (always `None` in UDP mode, and [`handle_datagram`](Self::handle_datagram)
    /// ignores input in reliable mode).
    pub fn is_reliable(&self) -> bool {
        self.reliable.is_some()
    }

    /// Reliable mode: the next request to send (the initial one, then each Block2
    /// follow-up), once each. Pass it to
    /// [`StreamConnection::send`](super::StreamConnection::send). Always `None` in UDP mode.
    #[must_use]
    pub fn poll_request(&mut self) -> Option<Packet> {
        self.reliable.as_ref()?;
        let cur = self.current.as_mut()?;
        if !cur.send_pending {
            return None;
        }
        cur.send_pending = false;
        Some(cur.packet.clone())
    }

    /// Reliable mode: feeds a response from the connection
    /// ([`StreamEvent::Response`](super::StreamEvent::Response)). Ignored if its token is not
    /// the current one, if its code is not a response, after the outcome, or in UDP mode.
    pub fn handle_response(&mut self, now: Instant, response: Packet) {
        let _ = now;
        if self.reliable.is_none()
            || self.done
            || self.current.is_none()
            || response.get_token() != self.token.as_slice()
            || !(2..=5).contains(&(u8::from(response.header.code) >> 5))
        {
            return;
        }
        self.absorb_response(response);
    }

    /// UDP mode: the next datagram to send: ACKs/RSTs first, then the (re)transmission of the
    /// current request. Call until `None`. Always `None` in reliable mode (use
    /// [`poll_request`](Self::poll_request)).
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.reliable.is_some() {
            return None;
        }
        if let Some(b) = self.outbox.pop_front() {
            return Some(b);
        }
        let cur = self.current.as_mut()?;
        if !cur.send_pending {
            return None;
        }
        cur.send_pending = false;
        cur.deadline = Some(if cur.confirmable {
            deadline(now, cur.timeout)
        } else {
            deadline(now, self.tuning.max_transmit_wait())
        });
        Some(cur.bytes.clone())
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next (in reliable
    /// mode: the overall deadline, until the outcome).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if let Some(r) = &self.reliable {
            return (!self.done).then_some(r.deadline);
        }
        self.current.as_ref().and_then(|c| c.deadline)
    }

    /// Retransmits a CON whose timeout passed (doubling the timeout), or fails with
    /// [`ClientError::TimedOut`] after MAX_RETRANSMIT retransmissions, or when a separate or
    /// NON response does not arrive within MAX_TRANSMIT_WAIT / EXCHANGE_LIFETIME.
    ///
    /// Reliable mode: fails with [`ClientError::TimedOut`] once the overall deadline passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(r) = &self.reliable {
            if !self.done && r.deadline <= now {
                tracing::info!("exchange timed out");
                self.fail(ClientError::TimedOut);
            }
            return;
        }
        let max_retransmit = self.tuning.max_retransmit;
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        match cur.deadline {
            Some(d) if d <= now => {}
            _ => return,
        }
        if cur.confirmable && !cur.acked && cur.retransmits < max_retransmit {
            cur.retransmits += 1;
            cur.timeout = cur.timeout.saturating_mul(2);
            cur.send_pending = true;
            cur.deadline = None;
            tracing::info!(
                mid = cur.mid,
                n = cur.retransmits,
                "retransmitting CON request"
            );
            return;
        }
        tracing::info!(mid = cur.mid, "exchange timed out");
        self.fail(ClientError::TimedOut);
    }

    /// UDP mode: feeds one datagram from the peer. Unrelated messages are ignored (an
    /// unrelated CON gets an RST); malformed ones never panic. Ignored in reliable mode.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) {
        if self.reliable.is_some() {
            return;
        }
        let packet = match decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                if let Some((MessageType::Confirmable, mid)) = peek_header(bytes) {
                    tracing::warn!(mid, error = %e, "malformed CON, rejecting with RST");
                    self.outbox
                        .push_back(empty_message(MessageType::Reset, mid));
                }
                return;
            }
        };
        let mid = packet.header.message_id;
        let mtype = packet.header.get_type();
        let code = packet.header.code;

        // A retransmitted separate response we already accepted: ACK again.
        if mtype == MessageType::Confirmable && self.last_separate_mid == Some(mid) {
            self.outbox
                .push_back(empty_message(MessageType::Acknowledgement, mid));
            return;
        }
        let matches_mid = self.current.as_ref().is_some_and(|c| c.mid == mid);
        let matches_token = !self.done && packet.get_token() == self.token.as_slice();

        match (mtype, code) {
            (MessageType::Reset, MessageClass::Empty) if matches_mid && !self.done => {
                tracing::info!(mid, "peer reset the exchange");
                self.fail(ClientError::Reset);
            }
            (MessageType::Acknowledgement, MessageClass::Empty) if matches_mid && !self.done => {
                if let Some(cur) = self.current.as_mut()
                    && !cur.acked
                {
                    cur.acked = true;
                    cur.send_pending = false;
                    cur.deadline = Some(deadline(now, self.tuning.exchange_lifetime()));
                }
            }
            (MessageType::Acknowledgement, MessageClass::Response(_))
                if matches_mid && matches_token =>
            {
                self.absorb_response(packet);
            }
            (MessageType::Confirmable | MessageType::NonConfirmable, MessageClass::Response(_))
                if matches_token && self.current.is_some() =>
            {
                if mtype == MessageType::Confirmable {
                    self.outbox
                        .push_back(empty_message(MessageType::Acknowledgement, mid));
                    self.last_separate_mid = Some(mid);
                }
                self.absorb_response(packet);
            }
            (MessageType::Confirmable, _) => {
                // A ping, a request, or a response we are not waiting for.
                self.outbox
                    .push_back(empty_message(MessageType::Reset, mid));
            }
            _ => {}
        }
    }

    /// The outcome, once.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.event.take()
    }

    fn fail(&mut self, e: ClientError) {
        self.current = None;
        self.done = true;
        self.event = Some(ClientEvent::Failed(e));
    }

    fn send_request(&mut self, block: Option<BlockOption>) {
        if self.reliable.is_some() {
            if block.is_some_and(|b| b.num > 0) {
                increment_token(&mut self.token);
            }
            return self.send_reliable_request(block);
        }
        let mut p = self.request.clone();
        p.header.message_id = self.next_mid;
        p.set_token(self.token.clone());
        if let Some(b) = block {
            match b.encode() {
                Ok(v) => set_single(&mut p, CoapOption::Block2, v),
                Err(e) => {
                    self.fail(ClientError::Malformed(e.to_string()));
                    return;
                }
            }
        }
        let bytes = match encode(&p) {
            Ok(b) => b,
            Err(e) => {
                self.fail(ClientError::InvalidRequest(e.to_string()));
                return;
            }
        };
        self.current = Some(InFlight {
            mid: self.next_mid,
            bytes,
            confirmable: p.header.get_type() == MessageType::Confirmable,
            retransmits: 0,
            timeout: self.tuning.initial_timeout(self.rng_fraction),
            send_pending: true,
            deadline: None,
            acked: false,
            packet: p,
        });
        self.next_mid = self.next_mid.wrapping_add(1);
    }

    /// Reliable mode: the request goes out as a Packet; the connection frames it.
    fn send_reliable_request(&mut self, block: Option<BlockOption>) {
        let mut p = self.request.clone();
        p.set_token(self.token.clone());
        if let Some(b) = block {
            match b.encode() {
                Ok(v) => set_single(&mut p, CoapOption::Block2, v),
                Err(e) => {
                    self.fail(ClientError::Malformed(e.to_string()));
                    return;
                }
            }
        }
        if let Err(e) = encode_frame(&p) {
            self.fail(ClientError::InvalidRequest(e.to_string()));
            return;
        }
        self.current = Some(InFlight {
            mid: 0,
            bytes: Vec::new(),
            confirmable: false,
            retransmits: 0,
            timeout: Duration::ZERO,
            send_pending: true,
            deadline: None,
            acked: false,
            packet: p,
        });
    }

    /// Block2 reassembly, shared by both modes: validates the block sequence, size and
    /// ETag, appends the payload, and either requests the next block (via `send_request`,
    /// which picks MID or token per mode) or finishes.
    fn absorb_response(&mut self, response: Packet) {
        let block = match BlockOption::block2(&response) {
            None => None,
            Some(Ok(b)) => Some(b),
            Some(Err(e)) => {
                self.fail(ClientError::Malformed(format!("Block2: {e}")));
                return;
            }
        };
        let Some(block) = block else {
            // Not block-wise. If we were in the middle of a transfer, the server gave up
            // on block-wise (e.g. an error response): report it as is.
            if !self.body.is_empty() && !is_error(&response) {
                self.fail(ClientError::Malformed("Block2 missing mid-transfer".into()));
                return;
            }
            if response.payload.len() > self.max_body {
                self.fail(ClientError::TooLarge {
                    limit: self.max_body,
                });
                return;
            }
            self.finish(response);
            return;
        };
        let offset = usize::try_from(block.num)
            .ok()
            .and_then(|n| n.checked_mul(block.size()));
        if offset != Some(self.body.len()) {
            self.fail(ClientError::Malformed(format!(
                "block {} does not continue at byte {}",
                block.num,
                self.body.len()
            )));
            return;
        }
        let etag = response.get_first_option(CoapOption::ETag).cloned();
        if block.num == 0 {
            self.etag = etag;
            let size2 = response
                .get_first_option(CoapOption::Size2)
                .and_then(|v| super::decode_uint(v));
            if size2
                .and_then(|s| usize::try_from(s).ok())
                .is_some_and(|s| s > self.max_body)
            {
                self.fail(ClientError::TooLarge {
                    limit: self.max_body,
                });
                return;
            }
        } else if etag != self.etag {
            self.fail(ClientError::Malformed(
                "ETag changed during block-wise transfer".into(),
            ));
            return;
        }
        if block.more && response.payload.len() != block.size() {
            self.fail(ClientError::Malformed(format!(
                "non-final block of {} bytes, expected {}",
                response.payload.len(),
                block.size()
            )));
            return;
        }
        if self.body.len().saturating_add(response.payload.len()) > self.max_body {
            self.fail(ClientError::TooLarge {
                limit: self.max_body,
            });
            return;
        }
        self.body.extend_from_slice(&response.payload);
        if block.more {
            self.send_request(Some(BlockOption {
                num: block.num.saturating_add(1),
                more: false,
                szx: block.szx,
            }));
        } else {
            let mut full = without_option(&response, CoapOption::Block2.into());
            full.payload = std::mem::take(&mut self.body);
            self.finish(full);
        }
    }

    fn finish(&mut self, response: Packet) {
        self.current = None;
        self.done = true;
        self.event = Some(ClientEvent::Response(response));
    }
}

/// Adds one to `token` as a big-endian counter of the same length (wrapping; an empty token
/// stays empty).
fn increment_token(token: &mut [u8]) {
    for b in token.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            return;
        }
    }
}

fn is_error(p: &Packet) -> bool {
    matches!(p.header.code, MessageClass::Response(r) if r.is_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::{RequestType, ResponseType, set_uri};

    const MID: u16 = 0x1000;
    const TOKEN: [u8; 4] = [1, 2, 3, 4];

    fn get() -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(RequestType::Get);
        set_uri(&mut p, "/big");
        p
    }

    fn exchange(t0: Instant, rng: f64) -> ClientExchange {
        ClientExchange::new(
            t0,
            TransportTuning::unreliable(),
            get(),
            MID,
            TOKEN.to_vec(),
            rng,
        )
    }

    fn response(t: MessageType, mid: u16, token: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut p = Packet::new();
        p.header.set_type(t);
        p.header.message_id = mid;
        p.header.code = MessageClass::Response(ResponseType::Content);
        p.set_token(token.to_vec());
        p.payload = payload.to_vec();
        p.to_bytes().unwrap()
    }

    fn block_response(mid: u16, num: u32, more: bool, szx: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = decode(&response(
            MessageType::Acknowledgement,
            mid,
            &TOKEN,
            payload,
        ))
        .unwrap();
        let b = BlockOption { num, more, szx };
        set_single(&mut p, CoapOption::Block2, b.encode().unwrap());
        p.to_bytes().unwrap()
    }

    #[track_caller]
    fn sent(c: &mut ClientExchange, now: Instant) -> Packet {
        decode(&c.poll_transmit(now).expect("a datagram to send")).unwrap()
    }

    #[test]
    fn first_transmission_is_con_with_mid_and_token() {
        let t0 = Instant::now();
        let mut c = exchange(t0, 0.0);
        let p = sent(&mut c, t0);
        assert_eq!(p.header.get_type(), MessageType::Confirmable);
        assert_eq!(p.header.message_id, MID);
        assert_eq!(p.get_token(), TOKEN);
        assert!(c.poll_transmit(t0).is_none());
        assert_eq!(c.next_mid(), MID + 1);
    }

    #[test]
    fn con_is_resent_within_ack_timeout_times_random_factor() {
        for (rng, ms) in [(0.0, 2000), (0.5, 2500), (0.999, 2999)] {
            let t0 = Instant::now();
            let mut c = exchange(t0, rng);
            let _ = sent(&mut c, t0);
            let due = c.poll_timeout().unwrap();
            assert!(due >= t0 + Duration::from_millis(2000));
            assert!(due < t0 + Duration::from_millis(3000));
            assert!(due >= t0 + Duration::from_millis(ms));
            c.handle_timeout(due - Duration::from_millis(1));
            assert!(c.poll_transmit(due).is_none(), "not before the timeout");
            c.handle_timeout(due);
            assert_eq!(sent(&mut c, due).header.message_id, MID, "same MID");
        }
    }

    #[test]
    fn retransmissions_back_off_exponentially_then_time_out() {
        let t0 = Instant::now();
        let mut c = exchange(t0, 0.0);
        let mut now = t0;
        let _ = sent(&mut c, now);
        let mut gaps = Vec::new();
        loop {
            let due = c.poll_timeout().unwrap();
            gaps.push((due - now).as_secs());
            now = due;
            c.handle_timeout(now);
            if c.poll_transmit(now).is_none() {
                break;
            }
        }
        assert_eq!(gaps, [2, 4, 8, 16, 32], "4 retransmissions, then give up");
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Failed(ClientError::TimedOut))
        );
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn piggybacked_response_completes_exchange() {
        let t0 = Instant::now();
        let mut c = exchange(t0, 0.0);
        let _ = sent(&mut c, t0);
        c.handle_datagram(
            t0,
            &response(MessageType::Acknowledgement, MID, &TOKEN, b"hi"),
        );
        match c.poll_event() {
            Some(ClientEvent::Response(p)) => assert_eq!(p.payload, b"hi"),
            other => panic!("{other:?}"),
        }
        assert!(c.is_done());
        assert_eq!(c.poll_timeout(), None);
        assert!(c.poll_transmit(t0).is_none());
    }

    #[test]
    fn empty_ack_stops_retransmission_and_separate_con_response_is_acked() {
        let t0 = Instant::now();
        let mut c = exchange(t0, 0.0);
        let _ = sent(&mut c, t0);
        c.handle_datagram(t0, &[0x60, 0x00, 0x10, 0x00]); // empty ACK, MID 0x1000
        let t1 = t0 + Duration::from_secs(10);
        c.handle_timeout(t1);
        assert!(c.poll_transmit(t1).is_none(), "no retransmission after ACK");
        let sep = response(MessageType::Confirmable, 0x7777, &TOKEN, b"late");
        c.handle_datagram(t1, &sep);
        let ack = sent(&mut c, t1);
        assert_eq!(ack.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(ack.header.code, MessageClass::Empty);
        assert_eq!(ack.header.message_id, 0x7777);
        assert!(matches!(c.poll_event(), Some(ClientEvent::Response(p)) if p.payload == b"late"));
        // The peer lost our ACK and retransmits: ACK again, no second event.
        c.handle_datagram(t1, &sep);
        assert_eq!(sent(&mut c, t1).header.message_id, 0x7777);
        assert_eq!(c.poll_event(), None);
    }

    #[test]
    fn separate_response_that_never_comes_times_out() {
        let t0 = Instant::now();
        let mut c = exchange(t0, 0.0);
        let _ = sent(&mut c, t0);
        c.handle_datagram(t0, &[0x60, 0x00, 0x10, 0x00]);
        let due = c.poll_timeout().unwrap();
        assert_eq!(due, t0 + TransportTuning::unreliable().exchange_lifetime());
        c.handle_timeout(due);
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Failed(ClientError::TimedOut))
        );
    }

    #[test]
    fn rst_fails_with_reset() {
        let t0 = Instant::now();
        let mut c = exchange(t0, 0.0);
        let _ = sent(&mut c, t0);
        c.handle_datagram(t0, &[0x70, 0x00, 0x10, 0x00]);
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Failed(ClientError::Reset))
        );
    }

    #[test]
    fn unrelated_messages_are_ignored_and_unrelated_con_gets_rst() {
        let t0 = Instant::now();
        let mut c = exchange(t0, 0.0);
        let _ = sent(&mut c, t0);
        // Wrong MID ACK, wrong token ACK, RST for another MID, garbage.
        c.handle_datagram(
            t0,
            &response(MessageType::Acknowledgement, MID + 9, &TOKEN, b"x"),
        );
        c.handle_datagram(
            t0,
            &response(MessageType::Acknowledgement, MID, &[9, 9], b"x"),
        );
        c.handle_datagram(t0, &[0x70, 0x00, 0x99, 0x99]);
        c.handle_datagram(t0, &[0xff, 0x01]);
        assert_eq!(c.poll_event(), None);
        assert!(c.poll_transmit(t0).is_none());
        c.handle_datagram(
            t0,
            &response(MessageType::Confirmable, 0x4242, &[9, 9], b"x"),
        );
        let rst = sent(&mut c, t0);
        assert_eq!(rst.header.get_type(), MessageType::Reset);
        assert_eq!(rst.header.message_id, 0x4242);
        assert_eq!(c.poll_event(), None);
    }

    #[test]
    fn block2_more_requests_next_block_with_new_mid_and_reassembles() {
        let t0 = Instant::now();
        let mut c = exchange(t0, 0.0);
        let _ = sent(&mut c, t0);
        c.handle_datagram(t0, &block_response(MID, 0, true, 2, &[1; 64]));
        let next = sent(&mut c, t0);
        assert_eq!(next.header.message_id, MID + 1);
        assert_eq!(next.get_token(), TOKEN);
        assert_eq!(crate::coap::uri_path(&next).unwrap(), ["big"]);
        let b = BlockOption::block2(&next).unwrap().unwrap();
        assert_eq!(
            b,
            BlockOption {
                num: 1,
                more: false,
                szx: 2
            }
        );
        c.handle_datagram(t0, &block_response(MID + 1, 1, false, 2, &[2; 10]));
        match c.poll_event() {
            Some(ClientEvent::Response(p)) => {
                assert_eq!(p.payload.len(), 74);
                assert!(p.get_option(CoapOption::Block2).is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn body_over_limit_fails_too_large() {
        let t0 = Instant::now();
        let mut c = exchange(t0, 0.0).with_max_body(100);
        let _ = sent(&mut c, t0);
        c.handle_datagram(t0, &block_response(MID, 0, true, 2, &[1; 64]));
        let _ = sent(&mut c, t0);
        c.handle_datagram(t0, &block_response(MID + 1, 1, true, 2, &[1; 64]));
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Failed(ClientError::TooLarge { limit: 100 }))
        );
    }

    #[test]
    fn out_of_sequence_block_fails_malformed() {
        let t0 = Instant::now();
        let mut c = exchange(t0, 0.0);
        let _ = sent(&mut c, t0);
        c.handle_datagram(t0, &block_response(MID, 2, true, 2, &[1; 64]));
        assert!(matches!(
            c.poll_event(),
            Some(ClientEvent::Failed(ClientError::Malformed(_)))
        ));
    }

    #[test]
    fn overlong_token_fails_without_panicking() {
        let t0 = Instant::now();
        let mut c = ClientExchange::new(
            t0,
            TransportTuning::unreliable(),
            get(),
            1,
            vec![0; 20],
            0.0,
        );
        assert!(matches!(
            c.poll_event(),
            Some(ClientEvent::Failed(ClientError::InvalidRequest(_)))
        ));
        assert!(c.poll_transmit(t0).is_none());
    }

    #[test]
    fn non_request_is_sent_once_and_waits_max_transmit_wait() {
        let t0 = Instant::now();
        let mut req = get();
        req.header.set_type(MessageType::NonConfirmable);
        let tuning = TransportTuning::unreliable();
        let mut c = ClientExchange::new(t0, tuning.clone(), req, MID, TOKEN.to_vec(), 0.0);
        assert_eq!(
            sent(&mut c, t0).header.get_type(),
            MessageType::NonConfirmable
        );
        assert_eq!(c.poll_timeout(), Some(t0 + tuning.max_transmit_wait()));
        c.handle_datagram(t0, &response(MessageType::NonConfirmable, 5, &TOKEN, b"ok"));
        assert!(c.poll_transmit(t0).is_none(), "NON response is not ACKed");
        assert!(matches!(c.poll_event(), Some(ClientEvent::Response(_))));
    }

    fn reliable(t0: Instant) -> ClientExchange {
        ClientExchange::new_reliable(t0, get(), TOKEN.to_vec(), Duration::from_secs(30))
    }

    fn stream_block(token: &[u8], num: u32, more: bool, payload: &[u8]) -> Packet {
        let mut p = decode(&response(MessageType::Acknowledgement, 0, token, payload)).unwrap();
        let b = BlockOption { num, more, szx: 6 };
        set_single(&mut p, CoapOption::Block2, b.encode().unwrap());
        p
    }

    #[test]
    fn reliable_mode_hands_out_the_request_as_a_packet_once_and_no_datagrams() {
        let t0 = Instant::now();
        let mut c = reliable(t0);
        assert!(c.is_reliable());
        assert!(c.poll_transmit(t0).is_none());
        let p = c.poll_request().unwrap();
        assert_eq!(p.get_token(), TOKEN);
        assert_eq!(crate::coap::uri_path(&p).unwrap(), ["big"]);
        assert!(c.poll_request().is_none());
        // UDP input is ignored in reliable mode.
        c.handle_datagram(t0, &response(MessageType::Acknowledgement, 0, &TOKEN, b"x"));
        assert_eq!(c.poll_event(), None);
    }

    #[test]
    fn reliable_response_completes_and_wrong_token_is_ignored() {
        let t0 = Instant::now();
        let mut c = reliable(t0);
        let _ = c.poll_request();
        let mut other = stream_block(&[9], 0, false, b"no");
        other = without_option(&other, CoapOption::Block2.into());
        c.handle_response(t0, other);
        assert_eq!(c.poll_event(), None);
        let ok = without_option(&stream_block(&TOKEN, 0, false, b"hi"), 23);
        c.handle_response(t0, ok);
        assert!(matches!(c.poll_event(), Some(ClientEvent::Response(p)) if p.payload == b"hi"));
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn reliable_block2_follow_up_uses_a_fresh_token_and_reassembles() {
        let t0 = Instant::now();
        let mut c = reliable(t0);
        let _ = c.poll_request();
        c.handle_response(t0, stream_block(&TOKEN, 0, true, &[1; 1024]));
        let next = c.poll_request().unwrap();
        assert_eq!(next.get_token(), [1, 2, 3, 5], "fresh token");
        assert_eq!(c.token(), [1, 2, 3, 5]);
        assert_eq!(
            BlockOption::block2(&next).unwrap().unwrap(),
            BlockOption {
                num: 1,
                more: false,
                szx: 6
            }
        );
        // A late answer on the old token is ignored.
        c.handle_response(t0, stream_block(&TOKEN, 1, false, &[9; 5]));
        assert_eq!(c.poll_event(), None);
        c.handle_response(t0, stream_block(&[1, 2, 3, 5], 1, false, &[2; 5]));
        match c.poll_event() {
            Some(ClientEvent::Response(p)) => {
                assert_eq!(p.payload.len(), 1029);
                assert!(p.get_option(CoapOption::Block2).is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reliable_overall_timeout_fails_timed_out_across_blocks() {
        let t0 = Instant::now();
        let mut c = reliable(t0);
        let _ = c.poll_request();
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        let t1 = t0 + Duration::from_secs(20);
        c.handle_response(t1, stream_block(&TOKEN, 0, true, &[1; 1024]));
        let _ = c.poll_request();
        assert_eq!(
            c.poll_timeout(),
            Some(t0 + Duration::from_secs(30)),
            "not reset"
        );
        c.handle_timeout(t0 + Duration::from_secs(29));
        assert_eq!(c.poll_event(), None);
        c.handle_timeout(t0 + Duration::from_secs(30));
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Failed(ClientError::TimedOut))
        );
        assert!(c.poll_request().is_none());
    }

    #[test]
    fn reliable_invalid_request_fails_at_once() {
        let t0 = Instant::now();
        let mut c = ClientExchange::new_reliable(t0, get(), vec![0; 9], Duration::from_secs(1));
        assert!(matches!(
            c.poll_event(),
            Some(ClientEvent::Failed(ClientError::InvalidRequest(_)))
        ));
        assert!(c.poll_request().is_none());
    }

    #[test]
    fn increment_token_carries_and_wraps() {
        let mut t = [0x01, 0xff];
        increment_token(&mut t);
        assert_eq!(t, [0x02, 0x00]);
        let mut t = [0xff, 0xff];
        increment_token(&mut t);
        assert_eq!(t, [0, 0]);
        let mut t: [u8; 0] = [];
        increment_token(&mut t);
    }

    #[test]
    fn garbage_never_panics() {
        let t0 = Instant::now();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let mut c = exchange(t0, 0.0);
        let _ = sent(&mut c, t0);
        let seed = block_response(MID, 0, true, 2, &[1; 64]);
        for i in 0..20_000u32 {
            let len = (next() % 80) as usize;
            let mut dg: Vec<u8> = if i % 2 == 0 {
                (0..len).map(|_| next() as u8).collect()
            } else {
                let mut d = seed.clone();
                let pos = (next() as usize) % d.len();
                d[pos] = next() as u8;
                d.truncate(len.max(4));
                d
            };
            if let Some(b) = dg.first_mut() {
                *b = 0x40 | (*b & 0x3f);
            }
            c.handle_datagram(t0, &dg);
            while c.poll_transmit(t0).is_some() {}
            if c.poll_event().is_some() {
                c = exchange(t0, 0.0);
                let _ = sent(&mut c, t0);
            }
        }
    }
}
