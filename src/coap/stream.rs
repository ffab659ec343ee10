//! One CoAP-over-TCP/TLS connection (RFC 8323), sans-IO, for either role.
//!
//! Owns: the receive buffer of one byte stream, the signaling state (our CSM, the peer's CSM
//! and Max-Message-Size, Ping/Pong, Release/Abort) and the connection's timers (CSM wait,
//! optional keepalive).
//! Does not own: tokens or request/response matching (the token layer: a
//! [`ClientExchange::new_reliable`](super::ClientExchange::new_reliable) per request, or the
//! server's handler that echoes the request token), block-wise transfer
//! ([`super::Block2Cache::apply_within`] sizes responses to [`StreamConnection::peer_max_message_size`]),
//! the socket or TLS session, and the clock. There are no MIDs, types, ACKs or
//! retransmissions over a reliable transport.
//!
//! # Method classes (quinn style)
//!
//! Getters ([`peer_max_message_size`](StreamConnection::peer_max_message_size),
//! [`peer_csm_received`](StreamConnection::peer_csm_received),
//! [`is_closed`](StreamConnection::is_closed)), input
//! ([`handle_bytes`](StreamConnection::handle_bytes),
//! [`handle_timeout`](StreamConnection::handle_timeout)), mutators
//! ([`send`](StreamConnection::send), [`ping`](StreamConnection::ping),
//! [`release`](StreamConnection::release)) and output
//! ([`poll_transmit`](StreamConnection::poll_transmit),
//! [`poll_event`](StreamConnection::poll_event),
//! [`poll_timeout`](StreamConnection::poll_timeout)). After every input or mutator call the
//! driver writes everything `poll_transmit` yields, then drains `poll_event`, then re-arms
//! one timer from `poll_timeout`. Once `is_closed()` and `poll_transmit` is `None`, the
//! driver closes the socket. `now` must never go backwards.
//!
//! # Policy choices
//!
//! * **CSM first.** Our CSM is the first frame [`poll_transmit`](StreamConnection::poll_transmit)
//!   yields, as RFC 8323 §5.3 requires (libcoap and aiocoap do the same).
//! * **A peer that sends something before its CSM** is accepted leniently: the message is
//!   delivered, the peer's Max-Message-Size stays at the default 1152 bytes, and a warning is
//!   logged once. The CSM must still *arrive*: if none has come within the CSM timeout
//!   (default [`DEFAULT_CSM_TIMEOUT`], 30 s) the connection is aborted. Order is forgiven,
//!   absence is not.
//! * **Framing errors** (TKL > 8, a frame above our Max-Message-Size, malformed options, an
//!   unknown critical signal option) queue an Abort with a diagnostic payload (and
//!   Bad-CSM-Option for a CSM) and close this connection only.
//! * **Ping** is answered with a Pong carrying the Ping's token and *no* Custody option: this
//!   layer cannot know whether the upper layer has answered every outstanding request.
//! * **Release and Abort** from the peer close the connection at once
//!   ([`StreamEvent::Closed`]); unknown signal codes (7.00, 7.06…) are ignored, as are Empty
//!   messages (0.00, RFC 8323 §3.4) and codes of the reserved classes 1 and 6.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::tcp::{DEFAULT_MAX_MESSAGE_SIZE, FrameError, Signal, decode_frame, encode_frame};
use super::tuning::deadline;
use super::{CoapError, MessageClass, Packet};

/// How long we wait for the peer's CSM by default: 30 s.
pub const DEFAULT_CSM_TIMEOUT: Duration = Duration::from_secs(30);

/// What the upper layer gets from a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A request (code class 0). The answer must echo its token.
    Request(Packet),
    /// A response (code classes 2–5); match it to an exchange by token.
    Response(Packet),
    /// The connection is closed (peer's Release/Abort, a framing error, a timeout, or our
    /// own [`StreamConnection::release`]). Reported once; drain `poll_transmit`, then close
    /// the socket.
    Closed {
        /// Human-readable cause, for logs.
        reason: String,
    },
}

#[derive(Debug)]
struct Keepalive {
    interval: Duration,
    /// When to send a Ping (or, if one is outstanding, give up).
    due: Instant,
    awaiting_pong: bool,
}

/// One reliable CoAP connection. See the module doc for the method order and policies.
#[derive(Debug)]
pub struct StreamConnection {
    our_max_message_size: u32,
    inbuf: Vec<u8>,
    peer_max_message_size: usize,
    peer_block_wise: bool,
    peer_csm: bool,
    warned_early: bool,
    csm_deadline: Option<Instant>,
    keepalive: Option<Keepalive>,
    events: VecDeque<StreamEvent>,
    outbox: VecDeque<Vec<u8>>,
    closed: bool,
}

impl StreamConnection {
    /// A fresh connection. `our_max_message_size` is advertised in our CSM (e.g. 1 MiB) and
    /// enforced on every incoming frame; `block_wise` adds the Block-Wise-Transfer option.
    /// The first thing [`poll_transmit`](Self::poll_transmit) yields is our CSM. The CSM
    /// wait starts at `now`.
    pub fn new(now: Instant, our_max_message_size: u32, block_wise: bool) -> Self {
        let mut this = Self {
            our_max_message_size,
            inbuf: Vec::new(),
            peer_max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            peer_block_wise: false,
            peer_csm: false,
            warned_early: false,
            csm_deadline: Some(deadline(now, DEFAULT_CSM_TIMEOUT)),
            keepalive: None,
            events: VecDeque::new(),
            outbox: VecDeque::new(),
            closed: false,
        };
        this.queue_signal(
            &Signal::Csm {
                max_message_size: Some(our_max_message_size),
                block_wise,
            },
            Vec::new(),
        );
        this
    }

    /// Sets how long to wait for the peer's CSM (default 30 s), counted from
    /// [`new`](Self::new)'s `now`. **Danger:** a very short value aborts slow peers on a
    /// congested link.
    pub fn with_csm_timeout(mut self, now: Instant, timeout: Duration) -> Self {
        if !self.peer_csm {
            self.csm_deadline = Some(deadline(now, timeout));
        }
        self
    }

    /// Enables keepalive (default off): after `interval` without any incoming byte a Ping is
    /// sent; if another `interval` passes without any incoming byte, the connection is
    /// aborted ("keepalive: no Pong"). Any received data counts as liveness.
    pub fn with_keepalive(mut self, now: Instant, interval: Duration) -> Self {
        self.keepalive = Some(Keepalive {
            interval,
            due: deadline(now, interval),
            awaiting_pong: false,
        });
        self
    }

    /// The largest frame the peer accepts: 1152 until its CSM says otherwise.
    pub fn peer_max_message_size(&self) -> usize {
        self.peer_max_message_size
    }

    /// The peer's CSM has arrived.
    pub fn peer_csm_received(&self) -> bool {
        self.peer_csm
    }

    /// The peer's CSM carried Block-Wise-Transfer.
    pub fn peer_block_wise(&self) -> bool {
        self.peer_block_wise
    }

    /// The connection is closed; only already queued bytes (an Abort or Release) remain in
    /// [`poll_transmit`](Self::poll_transmit).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Feeds bytes read from the stream, in any chunking. Decodes every complete frame,
    /// handles signals, and queues requests and responses as events. Bytes after the
    /// connection closed are ignored. Never panics.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        if self.closed {
            return;
        }
        if let Some(k) = self.keepalive.as_mut() {
            k.due = deadline(now, k.interval);
            k.awaiting_pong = false;
        }
        self.inbuf.extend_from_slice(bytes);
        let max = usize::try_from(self.our_max_message_size).unwrap_or(usize::MAX);
        let mut pos = 0;
        while !self.closed {
            let rest = self.inbuf.get(pos..).unwrap_or_default();
            match decode_frame(rest, max) {
                Ok(None) => break,
                Ok(Some((packet, used))) => {
                    pos += used;
                    self.handle_packet(packet);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "malformed frame, aborting connection");
                    self.abort(None, format!("{e}"));
                }
            }
        }
        if self.closed {
            self.inbuf = Vec::new();
        } else {
            self.inbuf.drain(..pos.min(self.inbuf.len()));
        }
    }

    fn handle_packet(&mut self, packet: Packet) {
        if packet.header.code == MessageClass::Empty {
            return;
        }
        match Signal::from_packet(&packet) {
            Some(Ok(signal)) => return self.handle_signal(signal, packet.get_token()),
            Some(Err(FrameError::UnknownSignal(detail))) => {
                tracing::warn!(detail, "unknown signaling code, ignored");
                return;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "bad signaling option, aborting connection");
                let bad_option = match e {
                    FrameError::BadSignalOption { detail: 1, option } => Some(option),
                    _ => None,
                };
                return self.abort(bad_option, format!("{e}"));
            }
            None => {}
        }
        if !self.peer_csm && !self.warned_early {
            self.warned_early = true;
            tracing::warn!("peer sent a message before its CSM; accepted");
        }
        match u8::from(packet.header.code) >> 5 {
            0 => self.events.push_back(StreamEvent::Request(packet)),
            2..=5 => self.events.push_back(StreamEvent::Response(packet)),
            class => tracing::warn!(class, "message with a reserved code class, ignored"),
        }
    }

    fn handle_signal(&mut self, signal: Signal, token: &[u8]) {
        match signal {
            Signal::Csm {
                max_message_size,
                block_wise,
            } => {
                self.peer_csm = true;
                self.csm_deadline = None;
                if let Some(m) = max_message_size {
                    self.peer_max_message_size = usize::try_from(m).unwrap_or(usize::MAX);
                }
                self.peer_block_wise |= block_wise;
            }
            Signal::Ping { .. } => {
                self.queue_signal(&Signal::Pong { custody: false }, token.to_vec());
            }
            Signal::Pong { .. } => {}
            Signal::Release { diagnostic, .. } => {
                tracing::info!(%diagnostic, "peer released the connection");
                self.close(format!("peer released the connection: {diagnostic}"));
            }
            Signal::Abort { diagnostic, .. } => {
                tracing::warn!(%diagnostic, "peer aborted the connection");
                self.close(format!("peer aborted the connection: {diagnostic}"));
            }
        }
    }

    /// The next event, in arrival order. [`StreamEvent::Closed`] comes last and once.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    /// Queues a request or response (code, token, options, payload; type and MID are not
    /// sent). Fails with [`CoapError::TooLarge`] if the frame exceeds the peer's
    /// Max-Message-Size (slice large bodies with [`super::Block2Cache::apply_within`] first),
    /// [`CoapError::Closed`] after close, and [`CoapError::Encode`] for signals or Empty
    /// messages (the connection sends those itself) or an unencodable packet.
    pub fn send(&mut self, packet: &Packet) -> Result<(), CoapError> {
        if self.closed {
            return Err(CoapError::Closed);
        }
        let class = u8::from(packet.header.code) >> 5;
        if packet.header.code == MessageClass::Empty || class == 7 {
            return Err(CoapError::Encode(
                "signals and Empty messages are sent by the connection itself".into(),
            ));
        }
        let frame = encode_frame(packet)?;
        if frame.len() > self.peer_max_message_size {
            return Err(CoapError::TooLarge {
                size: frame.len(),
                limit: self.peer_max_message_size,
            });
        }
        self.outbox.push_back(frame);
        Ok(())
    }

    /// Queues a Ping (empty token, no Custody). The Pong is handled internally and counts
    /// as liveness for the keepalive.
    pub fn ping(&mut self) {
        if !self.closed {
            self.queue_signal(&Signal::Ping { custody: false }, Vec::new());
        }
    }

    /// Closes gracefully: queues a Release with `diagnostic` and reports
    /// [`StreamEvent::Closed`]. No-op if already closed.
    pub fn release(&mut self, diagnostic: &str) {
        if self.closed {
            return;
        }
        self.queue_signal(
            &Signal::Release {
                alternative_address: None,
                hold_off: None,
                diagnostic: diagnostic.to_string(),
            },
            Vec::new(),
        );
        self.close(format!("released by us: {diagnostic}"));
    }

    /// The next bytes to write to the stream, in order (one frame per call).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outbox.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next: the CSM wait or
    /// the keepalive, whichever is earlier; `None` once closed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let csm = self.csm_deadline.filter(|_| !self.peer_csm);
        let keepalive = self.keepalive.as_ref().map(|k| k.due);
        match (csm, keepalive) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Aborts if the peer's CSM is overdue; sends a keepalive Ping, or aborts if the
    /// previous one went unanswered.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if !self.peer_csm && self.csm_deadline.is_some_and(|d| d <= now) {
            tracing::warn!("peer's CSM did not arrive in time, aborting connection");
            self.csm_deadline = None;
            self.abort(None, "CSM not received in time".into());
            return;
        }
        let Some(k) = self.keepalive.as_mut() else {
            return;
        };
        if k.due > now {
            return;
        }
        if k.awaiting_pong {
            tracing::info!("keepalive: no Pong, aborting connection");
            self.abort(None, "keepalive: no Pong".into());
            return;
        }
        k.awaiting_pong = true;
        k.due = deadline(now, k.interval);
        tracing::debug!("keepalive: sending Ping");
        self.queue_signal(&Signal::Ping { custody: false }, Vec::new());
    }

    fn queue_signal(&mut self, signal: &Signal, token: Vec<u8>) {
        let mut p = signal.to_packet();
        p.set_token(token);
        match encode_frame(&p) {
            Ok(frame) => self.outbox.push_back(frame),
            // Unreachable for well-formed signals (short token, short options); never panic.
            Err(e) => tracing::error!(error = %e, "cannot encode a signal"),
        }
    }

    /// Queues an Abort and closes.
    fn abort(&mut self, bad_option: Option<u16>, diagnostic: String) {
        self.queue_signal(
            &Signal::Abort {
                bad_option,
                diagnostic: diagnostic.clone(),
            },
            Vec::new(),
        );
        self.close(diagnostic);
    }

    fn close(&mut self, reason: String) {
        if !self.closed {
            self.closed = true;
            self.events.push_back(StreamEvent::Closed { reason });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::{CoapOption, RequestType, ResponseType, response_to, set_uri};

    const MIB: u32 = 1 << 20;

    fn frame(p: &Packet) -> Vec<u8> {
        encode_frame(p).unwrap()
    }

    fn csm(max: Option<u32>) -> Vec<u8> {
        frame(
            &Signal::Csm {
                max_message_size: max,
                block_wise: true,
            }
            .to_packet(),
        )
    }

    fn get(token: &[u8]) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(RequestType::Get);
        p.set_token(token.to_vec());
        set_uri(&mut p, "/gw/acl");
        p
    }

    /// A connection that has sent its CSM (already drained) and received the peer's.
    fn established(t0: Instant, peer_max: Option<u32>) -> StreamConnection {
        let mut c = StreamConnection::new(t0, MIB, true);
        let _ = c.poll_transmit();
        c.handle_bytes(t0, &csm(peer_max));
        c
    }

    #[track_caller]
    fn sent_signal(c: &mut StreamConnection) -> (Signal, Vec<u8>) {
        let bytes = c.poll_transmit().expect("a frame to send");
        let (p, _) = decode_frame(&bytes, usize::MAX).unwrap().unwrap();
        (
            Signal::from_packet(&p).expect("a signal").unwrap(),
            p.get_token().to_vec(),
        )
    }

    #[test]
    fn first_transmission_is_our_csm() {
        let t0 = Instant::now();
        let mut c = StreamConnection::new(t0, MIB, true);
        assert_eq!(
            sent_signal(&mut c).0,
            Signal::Csm {
                max_message_size: Some(MIB),
                block_wise: true
            }
        );
        assert!(c.poll_transmit().is_none());
        assert!(!c.peer_csm_received());
        assert_eq!(c.peer_max_message_size(), 1152);
    }

    #[test]
    fn peer_csm_sets_max_message_size_and_block_wise() {
        let t0 = Instant::now();
        let c = established(t0, Some(4096));
        assert!(c.peer_csm_received());
        assert!(c.peer_block_wise());
        assert_eq!(c.peer_max_message_size(), 4096);
        assert_eq!(c.poll_timeout(), None, "no CSM wait left");
    }

    #[test]
    fn csm_without_max_message_size_keeps_default() {
        let c = established(Instant::now(), None);
        assert_eq!(c.peer_max_message_size(), 1152);
    }

    #[test]
    fn ping_is_answered_with_pong_echoing_the_token() {
        let t0 = Instant::now();
        let mut c = established(t0, None);
        let mut ping = Signal::Ping { custody: true }.to_packet();
        ping.set_token(vec![5, 6]);
        c.handle_bytes(t0, &frame(&ping));
        assert_eq!(
            sent_signal(&mut c),
            (Signal::Pong { custody: false }, vec![5, 6])
        );
        assert_eq!(c.poll_event(), None);
        assert!(!c.is_closed());
    }

    #[test]
    fn our_ping_is_a_ping_signal() {
        let mut c = established(Instant::now(), None);
        c.ping();
        assert_eq!(sent_signal(&mut c).0, Signal::Ping { custody: false });
    }

    #[test]
    fn abort_from_peer_closes_with_its_diagnostic() {
        let t0 = Instant::now();
        let mut c = established(t0, None);
        let abort = Signal::Abort {
            bad_option: None,
            diagnostic: "bye".into(),
        };
        c.handle_bytes(t0, &frame(&abort.to_packet()));
        assert!(c.is_closed());
        assert!(
            matches!(c.poll_event(), Some(StreamEvent::Closed { reason }) if reason.contains("bye"))
        );
        assert_eq!(c.send(&get(&[1])), Err(CoapError::Closed));
        assert!(c.poll_transmit().is_none(), "nothing answers an Abort");
    }

    #[test]
    fn release_from_peer_closes() {
        let t0 = Instant::now();
        let mut c = established(t0, None);
        let release = Signal::Release {
            alternative_address: None,
            hold_off: Some(5),
            diagnostic: String::new(),
        };
        // A request after the Release in the same read is not delivered.
        let mut bytes = frame(&release.to_packet());
        bytes.extend(frame(&get(&[1])));
        c.handle_bytes(t0, &bytes);
        assert!(matches!(c.poll_event(), Some(StreamEvent::Closed { .. })));
        assert_eq!(c.poll_event(), None);
    }

    #[test]
    fn our_release_queues_release_and_reports_closed() {
        let mut c = established(Instant::now(), None);
        c.release("shutting down");
        assert!(
            matches!(sent_signal(&mut c).0, Signal::Release { diagnostic, .. } if diagnostic == "shutting down")
        );
        assert!(matches!(c.poll_event(), Some(StreamEvent::Closed { .. })));
    }

    #[test]
    fn request_split_across_many_calls_arrives_once() {
        let t0 = Instant::now();
        let mut c = established(t0, None);
        let mut req = get(&[1, 2, 3]);
        req.payload = vec![7; 600];
        let bytes = frame(&req);
        for chunk in bytes.chunks(1) {
            c.handle_bytes(t0, chunk);
        }
        match c.poll_event() {
            Some(StreamEvent::Request(p)) => {
                assert_eq!(p.get_token(), [1, 2, 3]);
                assert_eq!(p.payload, vec![7; 600]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.poll_event(), None);
    }

    #[test]
    fn frames_in_one_read_arrive_in_order_and_empty_messages_are_ignored() {
        let t0 = Instant::now();
        let mut c = StreamConnection::new(t0, MIB, false);
        let mut bytes = csm(Some(2000));
        bytes.extend([0x00, 0x00]); // Empty message
        bytes.extend(frame(&get(&[1])));
        let mut resp = response_to(&get(&[2]), ResponseType::Content);
        resp.payload = b"ok".to_vec();
        bytes.extend(frame(&resp));
        c.handle_bytes(t0, &bytes);
        assert!(matches!(c.poll_event(), Some(StreamEvent::Request(p)) if p.get_token() == [1]));
        assert!(matches!(c.poll_event(), Some(StreamEvent::Response(p)) if p.get_token() == [2]));
        assert_eq!(c.poll_event(), None);
        assert_eq!(c.peer_max_message_size(), 2000);
    }

    #[test]
    fn response_larger_than_peer_max_message_size_is_refused_by_send() {
        let t0 = Instant::now();
        let mut c = established(t0, None); // peer keeps the default 1152
        let mut r = response_to(&get(&[1]), ResponseType::Content);
        r.payload = vec![0; 1200];
        assert!(matches!(
            c.send(&r),
            Err(CoapError::TooLarge { limit: 1152, .. })
        ));
        assert!(c.poll_transmit().is_none());
        r.payload = vec![0; 1100];
        assert_eq!(c.send(&r), Ok(()));
        assert!(c.poll_transmit().is_some());
    }

    #[test]
    fn send_refuses_signals() {
        let mut c = established(Instant::now(), None);
        assert!(matches!(
            c.send(&Signal::Ping { custody: false }.to_packet()),
            Err(CoapError::Encode(_))
        ));
    }

    #[test]
    fn malformed_frame_queues_abort_with_diagnostic_and_closes() {
        let t0 = Instant::now();
        let mut c = established(t0, None);
        c.handle_bytes(t0, &[0x09]); // TKL 9
        assert!(c.is_closed());
        match sent_signal(&mut c).0 {
            Signal::Abort { diagnostic, .. } => assert!(diagnostic.contains("token length")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(c.poll_event(), Some(StreamEvent::Closed { .. })));
        c.handle_bytes(t0, &frame(&get(&[1])));
        assert_eq!(c.poll_event(), None, "nothing after close");
    }

    #[test]
    fn frame_above_our_max_message_size_aborts_before_the_body_arrives() {
        let t0 = Instant::now();
        let mut c = StreamConnection::new(t0, 1152, false);
        let _ = c.poll_transmit();
        let mut req = get(&[1]);
        req.payload = vec![0; 5000];
        c.handle_bytes(t0, &frame(&req)[..3]);
        assert!(c.is_closed());
        assert!(matches!(sent_signal(&mut c).0, Signal::Abort { .. }));
    }

    #[test]
    fn unknown_critical_csm_option_aborts_with_bad_csm_option() {
        let t0 = Instant::now();
        let mut c = StreamConnection::new(t0, MIB, false);
        let _ = c.poll_transmit();
        let mut p = Signal::Csm {
            max_message_size: None,
            block_wise: false,
        }
        .to_packet();
        p.add_option(CoapOption::from(7), vec![]);
        c.handle_bytes(t0, &frame(&p));
        assert!(matches!(
            sent_signal(&mut c).0,
            Signal::Abort {
                bad_option: Some(7),
                ..
            }
        ));
        assert!(c.is_closed());
    }

    #[test]
    fn request_before_csm_is_accepted_but_a_missing_csm_times_out() {
        let t0 = Instant::now();
        let mut c = StreamConnection::new(t0, MIB, false);
        let _ = c.poll_transmit();
        c.handle_bytes(t0, &frame(&get(&[1])));
        assert!(matches!(c.poll_event(), Some(StreamEvent::Request(_))));
        let due = c.poll_timeout().unwrap();
        assert_eq!(due, t0 + DEFAULT_CSM_TIMEOUT);
        c.handle_timeout(due - Duration::from_millis(1));
        assert!(!c.is_closed());
        c.handle_timeout(due);
        assert!(c.is_closed());
        assert!(matches!(sent_signal(&mut c).0, Signal::Abort { .. }));
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn keepalive_pings_when_idle_and_aborts_without_pong() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = established(t0, None).with_keepalive(t0, 10 * s);
        assert_eq!(c.poll_timeout(), Some(t0 + 10 * s));
        // Traffic at t0+5 pushes the Ping back.
        c.handle_bytes(t0 + 5 * s, &[0x00, 0x00]);
        c.handle_timeout(t0 + 10 * s);
        assert!(c.poll_transmit().is_none());
        c.handle_timeout(t0 + 15 * s);
        assert_eq!(sent_signal(&mut c).0, Signal::Ping { custody: false });
        // A Pong keeps it alive.
        c.handle_bytes(
            t0 + 16 * s,
            &frame(&Signal::Pong { custody: false }.to_packet()),
        );
        c.handle_timeout(t0 + 26 * s);
        assert_eq!(sent_signal(&mut c).0, Signal::Ping { custody: false });
        c.handle_timeout(t0 + 36 * s);
        assert!(c.is_closed());
        assert!(matches!(sent_signal(&mut c).0, Signal::Abort { .. }));
    }

    #[test]
    fn random_bytes_never_panic() {
        let t0 = Instant::now();
        let mut rng = 0x1357_9bdf_2468_ace0u64;
        let mut next = || {
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let mut c = established(t0, None);
        for _ in 0..20_000 {
            let len = (next() % 32) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            c.handle_bytes(t0, &bytes);
            while c.poll_transmit().is_some() {}
            while c.poll_event().is_some() {}
            if c.is_closed() {
                c = established(t0, None);
            }
        }
    }
}
