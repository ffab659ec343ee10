//! Client role: one outgoing request/response exchange with one peer (RFC 7252 §4.2, §5.2;
//! RFC 7959 Block1 and Block2), over UDP/DTLS or, in reliable mode, over TCP/TLS (RFC 8323).
//!
//! Owns: the MIDs this exchange sends (starting at the caller's first MID), its token, the
//! CON retransmission state (exponential back-off from ACK_TIMEOUT·[1, ACK_RANDOM_FACTOR]),
//! the wait for a separate response, sending a large request body in Block1 blocks, and
//! Block2 reassembly with a body-size limit.
//! Does not own: choosing MIDs or tokens (the driver keeps a per-peer MID counter, see
//! [`ClientExchange::next_mid`], and supplies random tokens), NSTART (the driver runs at most
//! `nstart` exchanges per peer), or the slicing arithmetic ([`Block1Sender`]).
//!
//! # Block1 (RFC 7959 §2.3, §2.5)
//!
//! A request body larger than one block goes out as blocks NUM 0, 1, 2… with `Block1`
//! (M on all but the last) and `Size1` (the whole length) on the first. The block size is
//! 1024 bytes (SZX 6) over UDP, or the SZX of a `Block1` option in the caller's request if
//! smaller (that option is only a preference and never sent as given); in reliable mode
//! the body is sent whole unless the request would exceed the peer's Max-Message-Size
//! ([`with_peer_max_message_size`](ClientExchange::with_peer_max_message_size)), and then in
//! the largest blocks that fit. Each non-final block waits for 2.31 Continue naming it; a
//! smaller SZX in that 2.31 is adopted for the rest (late negotiation). The response to the
//! last block is the exchange's response, and may start a Block2 transfer. During the
//! transfer 4.13 fails with [`ClientError::RequestEntityTooLarge`] (with the peer's Size1),
//! 4.08 with [`ClientError::RequestEntityIncomplete`]; any other final response ends the
//! exchange as its response. Tokens follow the Block2 follow-ups: one token and a fresh MID
//! per block over UDP (responses match by MID, separate ones by the exchange's one token),
//! a fresh token per block in reliable mode (no MIDs there: the token is what tells the
//! answer to this block from a late answer to the previous one).
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
    CoapOption, MAX_TOKEN_LEN, MessageClass, MessageType, Packet, ResponseType, TransportTuning,
    decode, dropping_option, empty_message, encode, peek_header, set_single, without_option,
};
use crate::coap::block::{BlockOption, MAX_SZX};
use crate::coap::block1::{Block1Sender, Continued};
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
    /// During a Block1 transfer the peer answered 4.13 Request Entity Too Large: it will
    /// not take a body this large (`size1`: the largest it accepts, if it said).
    #[error("peer refuses a request body this large (4.13, Size1 {size1:?})")]
    RequestEntityTooLarge {
        /// The Size1 option of the 4.13, if any.
        size1: Option<u32>,
    },
    /// During a Block1 transfer the peer answered 4.08 Request Entity Incomplete: it lost
    /// (or never had) the earlier blocks.
    #[error("peer lost the earlier blocks of the request body (4.08)")]
    RequestEntityIncomplete,
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
    /// `Some` while the request body is going out in Block1 blocks.
    block1: Option<Block1Sender>,
    /// The request was sent block-wise (the final response loses its Block1 echo).
    sent_block1: bool,
    /// The SZX of a Block2 option in the caller's request: our preferred response size.
    block2_pref: Option<u8>,
    /// The SZX of a Block1 option in the caller's request: our preferred request block size.
    block1_pref: Option<u8>,
    /// The caller sends its own Block1 blocks: this request is one of them, sent as given.
    manual_block1: bool,
    /// Reliable mode: the peer's Max-Message-Size, once the driver told us.
    peer_max_message_size: Option<usize>,
    /// Requests built so far (reliable mode: all but the first take a fresh token).
    requests_sent: u32,
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
        // A Block1 option naming a block past the first, or announcing more, is a caller
        // doing the block-wise transfer itself (a relay, a test tool): that block goes as
        // given. Otherwise its SZX is our preferred block size, and the option goes.
        let caller_block1 = BlockOption::block1(&request).and_then(Result::ok);
        let manual_block1 = caller_block1.is_some_and(|b| b.num > 0 || b.more);
        let block2_pref = match BlockOption::block2(&request) {
            Some(Ok(b)) => Some(b.szx),
            _ => None,
        };
        let template = dropping_option(request, CoapOption::Block2.into());
        let mut this = Self {
            tuning,
            request: if manual_block1 {
                template
            } else {
                dropping_option(template, CoapOption::Block1.into())
            },
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
            block1: None,
            sent_block1: false,
            block2_pref,
            block1_pref: caller_block1.filter(|_| !manual_block1).map(|b| b.szx),
            manual_block1,
            peer_max_message_size: None,
            requests_sent: 0,
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
        this.send_first();
        this
    }

    /// Decides whether the body goes whole or in Block1 blocks, then builds the first
    /// request (which a Block2 preference joins unless Block1 carries it to the last block).
    fn send_first(&mut self) {
        if let Err(e) = self.plan_block1() {
            self.fail(e);
            return;
        }
        let first = match (&self.block1, self.block2_pref) {
            (None, Some(szx)) => Some(BlockOption {
                num: 0,
                more: false,
                szx,
            }),
            _ => None,
        };
        self.send_request(first);
    }

    /// Moves the body into a [`Block1Sender`] if it is too large to go in one message.
    fn plan_block1(&mut self) -> Result<(), ClientError> {
        if self.manual_block1 {
            return Ok(());
        }
        let preferred = self.block1_pref.unwrap_or(MAX_SZX).min(MAX_SZX);
        let szx = if self.reliable.is_some() {
            let Some(mms) = self.peer_max_message_size else {
                return Ok(());
            };
            let mut whole = self.request.clone();
            whole.set_token(self.token.clone());
            if encode_frame(&whole).map_or(usize::MAX, |f| f.len()) <= mms {
                return Ok(());
            }
            // The largest block whose first request (Block1, Size1: the longest options)
            // fits the peer's Max-Message-Size.
            let fits = |szx: u8| {
                let size = (1usize << (szx + 4)).min(self.request.payload.len());
                let mut p = without_payload(&self.request);
                p.set_token(self.token.clone());
                p.payload = vec![0; size];
                let b = BlockOption {
                    num: 0,
                    more: true,
                    szx,
                };
                if let Ok(v) = b.encode() {
                    set_single(&mut p, CoapOption::Block1, v);
                }
                set_single(&mut p, CoapOption::Size1, super::encode_uint(u32::MAX));
                encode_frame(&p).is_ok_and(|f| f.len() <= mms)
            };
            (0..=preferred).rev().find(|&s| fits(s)).ok_or_else(|| {
                ClientError::InvalidRequest(format!(
                    "no block of the request fits the peer's Max-Message-Size of {mms} bytes"
                ))
            })?
        } else {
            if self.request.payload.len() <= 1usize << (preferred + 4) {
                return Ok(());
            }
            preferred
        };
        if u32::try_from(self.request.payload.len()).is_err() {
            return Err(ClientError::InvalidRequest(
                "request body too large for Size1".into(),
            ));
        }
        let body = std::mem::take(&mut self.request.payload);
        self.block1 = Some(Block1Sender::new(body, szx));
        self.sent_block1 = true;
        Ok(())
    }

    /// Reliable mode: the peer's Max-Message-Size (from its CSM; the
    /// [`super::StreamEndpoint`] launches requests only after it). A request body that would
    /// make the request larger then goes in Block1 blocks that fit; without this call the
    /// body is always sent whole. Only effective before the first request is handed out.
    pub fn with_peer_max_message_size(mut self, max_message_size: usize) -> Self {
        let untouched = self.reliable.is_some()
            && !self.done
            && self.requests_sent == 1
            && self.block1.is_none()
            && self.current.as_ref().is_some_and(|c| c.send_pending);
        if untouched {
            self.peer_max_message_size = Some(max_message_size);
            self.current = None;
            self.requests_sent = 0;
            self.send_first();
        }
        self
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
        self.absorb_response(response, true);
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
                self.absorb_response(packet, true);
            }
            (MessageType::Confirmable | MessageType::NonConfirmable, MessageClass::Response(_))
                if matches_token && self.current.is_some() =>
            {
                if mtype == MessageType::Confirmable {
                    self.outbox
                        .push_back(empty_message(MessageType::Acknowledgement, mid));
                    self.last_separate_mid = Some(mid);
                }
                self.absorb_response(packet, false);
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

    /// The next request: the template with the current Block1 block (and Size1 on the
    /// first, and a Block2 preference on the last) or with `block2` for a follow-up.
    fn build_request(&self, block2: Option<BlockOption>) -> Result<Packet, ClientError> {
        let mut p = self.request.clone();
        p.set_token(self.token.clone());
        let mut block2 = block2;
        if let Some(sender) = &self.block1 {
            let (b, part) = sender.current();
            let v = b
                .encode()
                .map_err(|e| ClientError::InvalidRequest(format!("Block1: {e}")))?;
            set_single(&mut p, CoapOption::Block1, v);
            if sender.is_first() {
                let total = u32::try_from(sender.total()).unwrap_or(u32::MAX);
                set_single(&mut p, CoapOption::Size1, super::encode_uint(total));
            }
            p.payload = part.to_vec();
            if !b.more && block2.is_none() {
                block2 = self.block2_pref.map(|szx| BlockOption {
                    num: 0,
                    more: false,
                    szx,
                });
            }
        }
        if let Some(b) = block2 {
            let v = b
                .encode()
                .map_err(|e| ClientError::Malformed(e.to_string()))?;
            set_single(&mut p, CoapOption::Block2, v);
        }
        Ok(p)
    }

    fn send_request(&mut self, block: Option<BlockOption>) {
        if self.reliable.is_some() && self.requests_sent > 0 {
            increment_token(&mut self.token);
        }
        self.requests_sent = self.requests_sent.saturating_add(1);
        let mut p = match self.build_request(block) {
            Ok(p) => p,
            Err(e) => {
                self.fail(e);
                return;
            }
        };
        if self.reliable.is_some() {
            return self.send_reliable_request(p);
        }
        p.header.message_id = self.next_mid;
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
    fn send_reliable_request(&mut self, p: Packet) {
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
    ///
    /// `answers_current`: the response is matched to the request in flight (a piggybacked
    /// ACK by MID, or any reliable-mode response, by the token of this one request) rather
    /// than only by the exchange's token (a separate response, which may be a late
    /// duplicate answering an earlier block).
    fn absorb_response(&mut self, response: Packet, answers_current: bool) {
        let response = if self.block1.is_some() {
            match self.absorb_block1(response, answers_current) {
                Some(r) => r,
                None => return,
            }
        } else if self.sent_block1 {
            without_option(&response, CoapOption::Block1.into())
        } else {
            response
        };
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

    /// A response during the Block1 transfer: a 2.31 moves to the next block (or is a
    /// stale duplicate, ignored), 4.13 and 4.08 fail, anything else ends the transfer and
    /// is returned (without its Block1 echo) for the Block2 / final handling.
    fn absorb_block1(&mut self, response: Packet, answers_current: bool) -> Option<Packet> {
        let MessageClass::Response(code) = response.header.code else {
            return None;
        };
        match code {
            ResponseType::Continue => {
                let ack = match BlockOption::block1(&response) {
                    Some(Ok(b)) => b,
                    _ => {
                        self.fail(ClientError::Malformed(
                            "2.31 Continue without a valid Block1 option".into(),
                        ));
                        return None;
                    }
                };
                let sender = self.block1.as_mut()?;
                match sender.continue_with(ack) {
                    Continued::Next => {
                        tracing::debug!(
                            acked = ack.num,
                            szx = ack.szx,
                            "2.31 Continue, sending the next block"
                        );
                        self.send_request(None);
                    }
                    Continued::Stale if !answers_current => {
                        tracing::debug!(num = ack.num, "stale 2.31 Continue ignored");
                    }
                    Continued::Stale => {
                        let expected = sender.current().0.num;
                        self.fail(ClientError::Malformed(format!(
                            "2.31 Continue for block {}, expected {expected}",
                            ack.num
                        )));
                    }
                    Continued::AfterLast => {
                        self.fail(ClientError::Malformed(
                            "2.31 Continue to the final block".into(),
                        ));
                    }
                }
                None
            }
            ResponseType::RequestEntityTooLarge => {
                let size1 = response
                    .get_first_option(CoapOption::Size1)
                    .and_then(|v| super::decode_uint(v));
                tracing::info!(?size1, "peer refused the Block1 body (4.13)");
                self.fail(ClientError::RequestEntityTooLarge { size1 });
                None
            }
            ResponseType::RequestEntityIncomplete => {
                tracing::info!("peer lost the earlier Block1 blocks (4.08)");
                self.fail(ClientError::RequestEntityIncomplete);
                None
            }
            _ => {
                self.block1 = None;
                Some(without_option(&response, CoapOption::Block1.into()))
            }
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

fn without_payload(p: &Packet) -> Packet {
    let mut q = p.clone();
    q.payload = Vec::new();
    q
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

    // ---- Block1 (RFC 7959 §2.3) ----

    fn put(len: usize) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(RequestType::Put);
        set_uri(&mut p, "/3/0/1");
        p.payload = (0..len).map(|i| (i % 251) as u8).collect();
        p
    }

    fn put_exchange(t0: Instant, request: Packet) -> ClientExchange {
        ClientExchange::new(
            t0,
            TransportTuning::unreliable(),
            request,
            MID,
            TOKEN.to_vec(),
            0.0,
        )
    }

    /// A response with `code`, a Block1 option (if any) and more options.
    fn coded(
        t: MessageType,
        mid: u16,
        code: ResponseType,
        block1: Option<BlockOption>,
        extra: &[(CoapOption, Vec<u8>)],
    ) -> Vec<u8> {
        let mut p = decode(&response(t, mid, &TOKEN, b"")).unwrap();
        p.header.code = MessageClass::Response(code);
        if let Some(b) = block1 {
            set_single(&mut p, CoapOption::Block1, b.encode().unwrap());
        }
        for (o, v) in extra {
            set_single(&mut p, *o, v.clone());
        }
        p.to_bytes().unwrap()
    }

    fn cont(mid: u16, num: u32, szx: u8) -> Vec<u8> {
        let b = BlockOption {
            num,
            more: true,
            szx,
        };
        coded(
            MessageType::Acknowledgement,
            mid,
            ResponseType::Continue,
            Some(b),
            &[],
        )
    }

    fn b1(p: &Packet) -> BlockOption {
        BlockOption::block1(p).expect("a Block1 option").unwrap()
    }

    fn size1(p: &Packet) -> Option<u32> {
        p.get_first_option(CoapOption::Size1)
            .and_then(|v| crate::coap::decode_uint(v))
    }

    #[test]
    fn block1_blocks_go_in_order_with_size1_on_the_first_and_fresh_mids() {
        let t0 = Instant::now();
        let req = put(2500);
        let body = req.payload.clone();
        let mut c = put_exchange(t0, req);
        let mut got = Vec::new();
        let mut seen = Vec::new();
        for i in 0..3u16 {
            let p = sent(&mut c, t0);
            assert!(c.poll_transmit(t0).is_none());
            assert_eq!(p.header.message_id, MID + i, "a fresh MID per block");
            assert_eq!(p.get_token(), TOKEN, "one token over UDP");
            assert_eq!(p.header.code, MessageClass::Request(RequestType::Put));
            assert_eq!(crate::coap::uri_path(&p).unwrap(), ["3", "0", "1"]);
            let b = b1(&p);
            seen.push((b.num, b.more, b.szx, size1(&p), p.payload.len()));
            got.extend_from_slice(&p.payload);
            if b.more {
                c.handle_datagram(t0, &cont(MID + i, b.num, 6));
                assert_eq!(c.poll_event(), None);
            }
        }
        assert_eq!(
            seen,
            [
                (0, true, 6, Some(2500), 1024),
                (1, true, 6, None, 1024),
                (2, false, 6, None, 452)
            ]
        );
        assert_eq!(got, body);
        let last = BlockOption {
            num: 2,
            more: false,
            szx: 6,
        };
        c.handle_datagram(
            t0,
            &coded(
                MessageType::Acknowledgement,
                MID + 2,
                ResponseType::Changed,
                Some(last),
                &[],
            ),
        );
        match c.poll_event() {
            Some(ClientEvent::Response(p)) => {
                assert_eq!(p.header.code, MessageClass::Response(ResponseType::Changed));
                assert!(p.get_option(CoapOption::Block1).is_none());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.next_mid(), MID + 3);
    }

    #[test]
    fn block1_size_is_the_callers_preference_and_a_body_that_fits_goes_whole() {
        let t0 = Instant::now();
        let mut req = put(600);
        let pref = BlockOption {
            num: 0,
            more: false,
            szx: 4,
        };
        set_single(&mut req, CoapOption::Block1, pref.encode().unwrap());
        let mut c = put_exchange(t0, req);
        let p = sent(&mut c, t0);
        assert_eq!(
            b1(&p),
            BlockOption {
                num: 0,
                more: true,
                szx: 4
            }
        );
        assert_eq!(p.payload.len(), 256);
        // 1024 bytes fit one default block: sent whole, without Block1 or Size1.
        let mut c = put_exchange(t0, put(1024));
        let p = sent(&mut c, t0);
        assert_eq!(p.payload.len(), 1024);
        assert!(p.get_option(CoapOption::Block1).is_none());
        assert_eq!(size1(&p), None);
    }

    /// A caller sending its own blocks (Block1 with NUM > 0 or M set) gets each sent as
    /// given and the 2.31 back as the response (the registration test sends a Register in
    /// 16-byte blocks this way).
    #[test]
    fn a_callers_own_block1_block_is_sent_as_given() {
        let t0 = Instant::now();
        let mut req = put(16);
        let block = BlockOption {
            num: 0,
            more: true,
            szx: 0,
        };
        set_single(&mut req, CoapOption::Block1, block.encode().unwrap());
        let mut c = put_exchange(t0, req);
        let p = sent(&mut c, t0);
        assert_eq!(b1(&p), block);
        assert_eq!(p.payload.len(), 16);
        assert!(p.get_option(CoapOption::Size1).is_none());
        c.handle_datagram(t0, &cont(MID, 0, 0));
        match c.poll_event() {
            Some(ClientEvent::Response(r)) => {
                assert_eq!(
                    r.header.code,
                    MessageClass::Response(ResponseType::Continue)
                );
            }
            other => panic!("expected the 2.31 as the response, got {other:?}"),
        }
    }

    #[test]
    fn block1_preference_never_leaks_and_a_block2_preference_rides_on_the_last_block() {
        let t0 = Instant::now();
        let pref = |szx| BlockOption {
            num: 0,
            more: false,
            szx,
        };
        // A Block1 preference with a body that fits one block: sent whole, no Block1.
        let mut req = put(100);
        set_single(&mut req, CoapOption::Block1, pref(4).encode().unwrap());
        let mut c = put_exchange(t0, req);
        let p = sent(&mut c, t0);
        assert!(p.get_option(CoapOption::Block1).is_none());
        assert_eq!(p.payload.len(), 100);
        // A Block2 preference with a block-wise body: only on the last block.
        let mut req = put(1500);
        set_single(&mut req, CoapOption::Block2, pref(3).encode().unwrap());
        let mut c = put_exchange(t0, req);
        let first = sent(&mut c, t0);
        assert!(first.get_option(CoapOption::Block2).is_none());
        c.handle_datagram(t0, &cont(MID, 0, 6));
        let last = sent(&mut c, t0);
        assert!(!b1(&last).more);
        assert_eq!(BlockOption::block2(&last).unwrap().unwrap(), pref(3));
    }

    #[test]
    fn block1_smaller_szx_in_continue_is_adopted_and_num_recomputed() {
        let t0 = Instant::now();
        let req = put(2500);
        let body = req.payload.clone();
        let mut c = put_exchange(t0, req);
        let _ = sent(&mut c, t0);
        c.handle_datagram(t0, &cont(MID, 0, 5)); // the server prefers 512-byte blocks
        let p = sent(&mut c, t0);
        assert_eq!(
            b1(&p),
            BlockOption {
                num: 2,
                more: true,
                szx: 5
            },
            "1024 bytes sent = blocks 0 and 1 of 512"
        );
        assert_eq!(p.payload, body[1024..1536]);
        assert_eq!(size1(&p), None);
        c.handle_datagram(t0, &cont(MID + 1, 2, 5));
        let p = sent(&mut c, t0);
        assert_eq!(b1(&p).num, 3);
        assert_eq!(p.payload, body[1536..2048]);
    }

    #[test]
    fn block1_4_13_and_4_08_fail_typed() {
        let t0 = Instant::now();
        let mut c = put_exchange(t0, put(5000));
        let _ = sent(&mut c, t0);
        c.handle_datagram(
            t0,
            &coded(
                MessageType::Acknowledgement,
                MID,
                ResponseType::RequestEntityTooLarge,
                None,
                &[(CoapOption::Size1, crate::coap::encode_uint(2048))],
            ),
        );
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Failed(ClientError::RequestEntityTooLarge {
                size1: Some(2048)
            }))
        );
        assert_eq!(c.poll_timeout(), None);

        let mut c = put_exchange(t0, put(5000));
        let _ = sent(&mut c, t0);
        c.handle_datagram(t0, &cont(MID, 0, 6));
        let _ = sent(&mut c, t0);
        c.handle_datagram(
            t0,
            &coded(
                MessageType::Acknowledgement,
                MID + 1,
                ResponseType::RequestEntityIncomplete,
                None,
                &[],
            ),
        );
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Failed(ClientError::RequestEntityIncomplete))
        );
    }

    #[test]
    fn block1_other_final_response_before_the_last_block_ends_the_exchange() {
        let t0 = Instant::now();
        let mut c = put_exchange(t0, put(5000));
        let _ = sent(&mut c, t0);
        c.handle_datagram(
            t0,
            &coded(
                MessageType::Acknowledgement,
                MID,
                ResponseType::Unauthorized,
                None,
                &[],
            ),
        );
        match c.poll_event() {
            Some(ClientEvent::Response(p)) => assert_eq!(
                p.header.code,
                MessageClass::Response(ResponseType::Unauthorized)
            ),
            other => panic!("{other:?}"),
        }
        assert!(c.poll_transmit(t0).is_none(), "no further block");
    }

    #[test]
    fn block1_final_response_with_block2_continues_into_reassembly() {
        let t0 = Instant::now();
        let mut c = put_exchange(t0, put(1500));
        let _ = sent(&mut c, t0);
        c.handle_datagram(t0, &cont(MID, 0, 6));
        let last = sent(&mut c, t0);
        assert!(!b1(&last).more);
        // The response to the last block: 2.04 with Block1 echo and Block2 0/1/4.
        let mut r = decode(&block_response(MID + 1, 0, true, 4, &[5; 256])).unwrap();
        r.header.code = MessageClass::Response(ResponseType::Changed);
        let echo = BlockOption {
            num: 1,
            more: false,
            szx: 6,
        };
        set_single(&mut r, CoapOption::Block1, echo.encode().unwrap());
        c.handle_datagram(t0, &r.to_bytes().unwrap());
        let next = sent(&mut c, t0);
        assert_eq!(next.header.message_id, MID + 2);
        assert_eq!(next.get_token(), TOKEN);
        assert_eq!(next.header.code, MessageClass::Request(RequestType::Put));
        assert!(next.get_option(CoapOption::Block1).is_none());
        assert_eq!(size1(&next), None);
        assert!(next.payload.is_empty(), "the body is not repeated");
        assert_eq!(
            BlockOption::block2(&next).unwrap().unwrap(),
            BlockOption {
                num: 1,
                more: false,
                szx: 4
            }
        );
        let mut r = decode(&block_response(MID + 2, 1, false, 4, &[6; 10])).unwrap();
        r.header.code = MessageClass::Response(ResponseType::Changed);
        c.handle_datagram(t0, &r.to_bytes().unwrap());
        match c.poll_event() {
            Some(ClientEvent::Response(p)) => {
                assert_eq!(p.payload.len(), 266);
                assert!(p.get_option(CoapOption::Block1).is_none());
                assert!(p.get_option(CoapOption::Block2).is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn block1_lost_block_is_retransmitted_with_the_same_mid() {
        let t0 = Instant::now();
        let mut c = put_exchange(t0, put(2500));
        let _ = sent(&mut c, t0);
        c.handle_datagram(t0, &cont(MID, 0, 6));
        let first = sent(&mut c, t0);
        let due = c.poll_timeout().unwrap();
        assert_eq!(due, t0 + Duration::from_secs(2));
        c.handle_timeout(due);
        let again = sent(&mut c, due);
        assert_eq!(again.header.message_id, MID + 1);
        assert_eq!(again.payload, first.payload);
        assert_eq!(b1(&again), b1(&first));
        assert_eq!(c.poll_timeout(), Some(due + Duration::from_secs(4)));
        c.handle_datagram(due, &cont(MID + 1, 1, 6));
        assert_eq!(b1(&sent(&mut c, due)).num, 2);
    }

    #[test]
    fn block1_duplicate_continue_is_ignored() {
        let t0 = Instant::now();
        let mut c = put_exchange(t0, put(3500));
        let _ = sent(&mut c, t0);
        c.handle_datagram(t0, &cont(MID, 0, 6));
        let _ = sent(&mut c, t0); // block 1, MID + 1
        // The same piggybacked 2.31 again (old MID): no match, nothing happens.
        c.handle_datagram(t0, &cont(MID, 0, 6));
        assert!(c.poll_transmit(t0).is_none());
        assert_eq!(c.poll_event(), None);
        // A separate CON 2.31 for block 1, then its retransmission: ACKed twice, one step.
        let b = BlockOption {
            num: 1,
            more: true,
            szx: 6,
        };
        let sep = coded(
            MessageType::Confirmable,
            0x5555,
            ResponseType::Continue,
            Some(b),
            &[],
        );
        c.handle_datagram(t0, &[0x60, 0x00, 0x10, 0x01]); // empty ACK for block 1
        c.handle_datagram(t0, &sep);
        let ack = sent(&mut c, t0);
        assert_eq!(ack.header.get_type(), MessageType::Acknowledgement);
        let p = sent(&mut c, t0);
        assert_eq!((p.header.message_id, b1(&p).num), (MID + 2, 2));
        c.handle_datagram(t0, &sep);
        assert_eq!(sent(&mut c, t0).header.message_id, 0x5555, "ACKed again");
        assert!(c.poll_transmit(t0).is_none(), "no block sent twice");
        // A late separate NON 2.31 for block 0: stale, ignored.
        let b = BlockOption {
            num: 0,
            more: true,
            szx: 6,
        };
        let late = coded(
            MessageType::NonConfirmable,
            0x5556,
            ResponseType::Continue,
            Some(b),
            &[],
        );
        c.handle_datagram(t0, &late);
        assert!(c.poll_transmit(t0).is_none());
        assert_eq!(c.poll_event(), None);
        // A piggybacked 2.31 on the current MID naming another block is the peer's error.
        c.handle_datagram(t0, &cont(MID + 2, 0, 6));
        assert!(matches!(
            c.poll_event(),
            Some(ClientEvent::Failed(ClientError::Malformed(_)))
        ));
    }

    #[test]
    fn block1_continue_to_the_last_block_or_without_block1_is_malformed() {
        let t0 = Instant::now();
        let mut c = put_exchange(t0, put(1500));
        let _ = sent(&mut c, t0);
        c.handle_datagram(t0, &cont(MID, 0, 6));
        let _ = sent(&mut c, t0);
        c.handle_datagram(t0, &cont(MID + 1, 1, 6));
        assert!(matches!(
            c.poll_event(),
            Some(ClientEvent::Failed(ClientError::Malformed(_)))
        ));
        let mut c = put_exchange(t0, put(1500));
        let _ = sent(&mut c, t0);
        c.handle_datagram(
            t0,
            &coded(
                MessageType::Acknowledgement,
                MID,
                ResponseType::Continue,
                None,
                &[],
            ),
        );
        assert!(matches!(
            c.poll_event(),
            Some(ClientEvent::Failed(ClientError::Malformed(_)))
        ));
    }

    fn stream_coded(token: &[u8], code: ResponseType, block1: Option<BlockOption>) -> Packet {
        let mut p = decode(&response(MessageType::Acknowledgement, 0, token, b"")).unwrap();
        p.header.code = MessageClass::Response(code);
        if let Some(b) = block1 {
            set_single(&mut p, CoapOption::Block1, b.encode().unwrap());
        }
        p
    }

    #[test]
    fn reliable_block1_only_above_the_peers_max_message_size_with_fresh_tokens() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(30);
        // Without a known Max-Message-Size, or when it fits: whole.
        let mut c = ClientExchange::new_reliable(t0, put(3000), TOKEN.to_vec(), timeout);
        assert_eq!(c.poll_request().unwrap().payload.len(), 3000);
        let mut c = ClientExchange::new_reliable(t0, put(3000), TOKEN.to_vec(), timeout)
            .with_peer_max_message_size(4096);
        let p = c.poll_request().unwrap();
        assert_eq!(p.payload.len(), 3000);
        assert!(p.get_option(CoapOption::Block1).is_none());
        // The RFC 8323 default of 1152 bytes: 1024-byte blocks, a fresh token each.
        let req = put(3000);
        let body = req.payload.clone();
        let mut c = ClientExchange::new_reliable(t0, req, TOKEN.to_vec(), timeout)
            .with_peer_max_message_size(1152);
        let mut got = Vec::new();
        let mut tokens = Vec::new();
        loop {
            let p = c.poll_request().unwrap();
            assert!(c.poll_request().is_none());
            assert!(encode_frame(&p).unwrap().len() <= 1152);
            let b = b1(&p);
            assert_eq!(size1(&p), (b.num == 0).then_some(3000));
            tokens.push(p.get_token().to_vec());
            got.extend_from_slice(&p.payload);
            if !b.more {
                c.handle_response(t0, stream_coded(c.token(), ResponseType::Changed, Some(b)));
                break;
            }
            if b.num > 0 {
                // A late answer on an old token is ignored.
                c.handle_response(t0, stream_coded(&TOKEN, ResponseType::Continue, Some(b)));
                assert!(c.poll_request().is_none());
                assert_eq!(c.poll_event(), None);
            }
            c.handle_response(t0, stream_coded(c.token(), ResponseType::Continue, Some(b)));
        }
        assert_eq!(got, body);
        assert_eq!(tokens, [[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 6]]);
        assert!(matches!(c.poll_event(), Some(ClientEvent::Response(p))
            if p.header.code == MessageClass::Response(ResponseType::Changed)));
        // A peer too small for any block: the request cannot be sent.
        let mut c = ClientExchange::new_reliable(t0, put(3000), TOKEN.to_vec(), timeout)
            .with_peer_max_message_size(20);
        assert!(matches!(
            c.poll_event(),
            Some(ClientEvent::Failed(ClientError::InvalidRequest(_)))
        ));
    }
}
