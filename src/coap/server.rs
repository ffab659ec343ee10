//! Message layer, server role, for one peer session (RFC 7252 §4): classifies incoming
//! datagrams, deduplicates requests by MID and replays the stored response for duplicates.
//!
//! Owns: the dedup table of this peer's request MIDs (requests only, RFC 7252 §4.5; entries
//! expire after EXCHANGE_LIFETIME) with the encoded response for each, and the MID counter
//! for our NON responses (an [`super::Endpoint`] lends it its one MID space).
//! Does not own: executing requests (the upper layer gets [`Inbound::Request`] and hands the
//! [`Responder`] back to [`ServerExchanges::respond`]), block-wise ([`super::block`]), or the
//! client role ([`super::client`]). Separate responses are the [`super::Endpoint`]'s decision:
//! on its own this table answers a CON piggybacked, and a duplicate that arrives while the
//! handler runs is ignored, so the client's next retransmission after `respond` gets the
//! stored reply. Once the endpoint has sent an empty ACK
//! ([`ServerExchanges::acknowledge_pending`]), duplicates replay that ACK, and after
//! [`ServerExchanges::respond_separate`] they replay the CON response.
//!
//! # Critical options
//!
//! A request carrying a critical (odd-numbered) option this stack does not implement, or a
//! second instance of a non-repeatable critical option, is answered with 4.02 Bad Option
//! (token echoed) and never reaches the upper layer (RFC 7252 §5.4.1). Recognised critical
//! options: If-Match, Uri-Host, If-None-Match, Uri-Port, Uri-Path, Uri-Query, Accept,
//! Block2, Block1, Proxy-Uri and Proxy-Scheme (the upper layer answers 5.05 for proxying it
//! does not do; the pipeline answers 4.02 for Block1 unless the handler reassembles it,
//! [`crate::runtime::Handler::accepts_block1`]). OSCORE (9) is *not* recognised yet. An unknown method code
//! (class 0, e.g. 0.08) is answered with 4.05 Method Not Allowed the same way.
//!
//! # Bounded memory
//!
//! RFC 7252 §4.5 only asks for the response of a *recent* CON to be replayed: a client
//! retransmits for MAX_TRANSMIT_SPAN (45 s) and, with NSTART 1, has one exchange in flight.
//! The table is therefore bounded per peer in entries and bytes and across peers by a shared
//! budget ([`super::budget::CacheLimits`]; defaults 512 entries and 128 KiB per peer, 65 536
//! entries and 16 MiB shared). When a bound is reached the peer's oldest entries go first; a
//! response that still does not fit is sent but not stored, and a request that finds no room
//! at all is executed without a dedup entry. Either way a later duplicate of an evicted
//! exchange is executed again, like a request that arrives after EXCHANGE_LIFETIME — the
//! price of a bound, paid only by a peer that sends hundreds of requests per retransmission
//! window.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::budget::{Account, BudgetError, CacheLimits};
use super::tuning::deadline;

use super::{
    CoapError, MessageClass, MessageType, Packet, ResponseType, TransportTuning, decode,
    empty_message, encode, peek_header,
};

/// Critical options this stack understands (see the module doc).
const RECOGNISED_CRITICAL: [u16; 11] = [1, 3, 5, 7, 11, 15, 17, 23, 27, 35, 39];
/// Critical options that may appear at most once.
const NON_REPEATABLE_CRITICAL: [u16; 7] = [3, 5, 7, 23, 27, 35, 39];

/// What the driver must do with one incoming datagram.
#[derive(Debug)]
#[must_use]
pub enum Inbound {
    /// A new request to execute. `responder` must be passed back to
    /// [`ServerExchanges::respond`] (or explicitly to [`ServerExchanges::abandon`]).
    Request {
        /// The decoded request, as received.
        request: Packet,
        /// The obligation to answer it.
        responder: Responder,
    },
    /// Bytes to send back now, executing nothing: a stored response replayed for a
    /// duplicate, an RST for a ping, a malformed CON or a stray CON response, or a 4.02 for
    /// an unrecognised critical option.
    Reply(Vec<u8>),
    /// Nothing to do: a duplicate still being processed, an ACK/RST or NON response from the
    /// peer, a malformed non-CON message, an empty NON, …
    Ignore,
}

/// The obligation to answer one request; hand it to [`ServerExchanges::respond`].
#[derive(Debug)]
#[must_use = "pass the Responder to ServerExchanges::respond (or abandon) so the peer gets an answer"]
pub struct Responder {
    mid: u16,
    token: Vec<u8>,
    confirmable: bool,
}

impl Responder {
    /// The obligation to answer a request on a reliable connection (RFC 8323): no MID, no
    /// type, only the token to echo.
    pub(crate) fn for_stream(token: Vec<u8>) -> Self {
        Responder {
            mid: 0,
            token,
            confirmable: false,
        }
    }

    /// The MID of the request being answered.
    pub fn request_mid(&self) -> u16 {
        self.mid
    }

    /// The token of the request being answered.
    pub fn token(&self) -> &[u8] {
        &self.token
    }

    /// Whether the request was a CON (answered with a piggybacked ACK).
    pub fn is_confirmable(&self) -> bool {
        self.confirmable
    }
}

#[derive(Debug)]
enum Slot {
    /// Handed to the upper layer; no response yet.
    Pending,
    /// Still in the upper layer, but an empty ACK went out: duplicates replay it.
    Acked,
    /// Encoded response, replayed for duplicates.
    Done(Vec<u8>),
}

#[derive(Debug)]
struct Entry {
    expires: Instant,
    slot: Slot,
    /// Bytes charged to the account for this entry.
    charged: usize,
}

/// What an entry costs besides its stored response: map slot, expiry record, allocation.
const ENTRY_OVERHEAD: usize = 64;

/// The server side of the message layer for one peer session.
///
/// Method classes: getters ([`len`](Self::len), [`is_empty`](Self::is_empty)), input
/// ([`handle_datagram`](Self::handle_datagram), [`handle_timeout`](Self::handle_timeout)),
/// mutators ([`respond`](Self::respond), [`abandon`](Self::abandon)) and output
/// ([`poll_timeout`](Self::poll_timeout)). `now` must never go backwards.
#[derive(Debug)]
pub struct ServerExchanges {
    tuning: TransportTuning,
    entries: HashMap<u16, Entry>,
    /// `(expiry, mid)` in insertion order; with monotonic `now` this is sorted by expiry.
    expiry: VecDeque<(Instant, u16)>,
    next_mid: u16,
    account: Account,
}

impl ServerExchanges {
    /// A fresh table. Our NON responses use MIDs counting up from 0 unless
    /// [`with_first_mid`](Self::with_first_mid) sets a random start, as RFC 7252 §4.4
    /// recommends and every session of the runtime does.
    pub fn new(tuning: TransportTuning) -> Self {
        Self {
            tuning,
            entries: HashMap::new(),
            expiry: VecDeque::new(),
            next_mid: 0,
            account: CacheLimits::process_default().dedup_account(),
        }
    }

    /// Sets the bounds of the table: this peer's share of a shared budget
    /// ([`CacheLimits::dedup_account`]; default [`CacheLimits::process_default`]). Call it
    /// before the first datagram.
    pub fn with_account(mut self, account: Account) -> Self {
        while self.evict_oldest(None) {}
        self.account = account;
        self
    }

    /// Bytes charged for the stored responses (for tests and leak checks).
    pub fn bytes(&self) -> usize {
        self.account.bytes()
    }

    /// Sets the first MID used for NON responses (the caller supplies randomness).
    pub fn with_first_mid(mut self, mid: u16) -> Self {
        self.next_mid = mid;
        self
    }

    /// The MID the next NON response will use.
    pub fn next_mid(&self) -> u16 {
        self.next_mid
    }

    /// Sets the MID the next NON response uses: an [`super::Endpoint`] keeps one MID space
    /// for both roles and lends it to this table around each call.
    pub fn set_next_mid(&mut self, mid: u16) {
        self.next_mid = mid;
    }

    /// The transmission parameters in use.
    pub fn tuning(&self) -> &TransportTuning {
        &self.tuning
    }

    /// Live dedup entries (for leak tests).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No live dedup entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Classifies one datagram from the peer. Never panics, whatever the bytes.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) -> Inbound {
        let packet = match decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                return match peek_header(bytes) {
                    Some((MessageType::Confirmable, mid)) => {
                        tracing::warn!(mid, error = %e, "malformed CON, rejecting with RST");
                        Inbound::Reply(empty_message(MessageType::Reset, mid))
                    }
                    _ => {
                        tracing::debug!(error = %e, "malformed datagram ignored");
                        Inbound::Ignore
                    }
                };
            }
        };
        let mid = packet.header.message_id;
        let mtype = packet.header.get_type();
        match (packet.header.code, mtype) {
            (MessageClass::Empty, MessageType::Confirmable) => {
                tracing::debug!(mid, "CoAP ping, answering RST");
                Inbound::Reply(empty_message(MessageType::Reset, mid))
            }
            (MessageClass::Empty, _) => Inbound::Ignore,
            (MessageClass::Request(_), MessageType::Confirmable | MessageType::NonConfirmable) => {
                self.handle_request(now, packet)
            }
            // An unknown method code (class 0, e.g. 0.08): 4.05, deduplicated like a request.
            (
                MessageClass::Reserved(code),
                MessageType::Confirmable | MessageType::NonConfirmable,
            ) if code >> 5 == 0 => self.handle_request(now, packet),
            // Responses (and reserved codes) have no business at the server role; a CON is
            // rejected so the peer stops retransmitting it.
            (_, MessageType::Confirmable) => {
                tracing::warn!(mid, "response or reserved code in a CON to the server, RST");
                Inbound::Reply(empty_message(MessageType::Reset, mid))
            }
            _ => Inbound::Ignore,
        }
    }

    fn handle_request(&mut self, now: Instant, request: Packet) -> Inbound {
        let mid = request.header.message_id;
        if let Some(entry) = self.entries.get(&mid) {
            return match &entry.slot {
                Slot::Done(bytes) => {
                    tracing::info!(mid, "duplicate request, replaying stored response");
                    Inbound::Reply(bytes.clone())
                }
                Slot::Pending => {
                    tracing::debug!(mid, "duplicate of a request still being processed");
                    Inbound::Ignore
                }
                Slot::Acked => {
                    tracing::debug!(mid, "duplicate of a request answered separately, re-ACK");
                    Inbound::Reply(empty_message(MessageType::Acknowledgement, mid))
                }
            };
        }
        let confirmable = request.header.get_type() == MessageType::Confirmable;
        let responder = Responder {
            mid,
            token: request.get_token().to_vec(),
            confirmable,
        };
        self.insert(now, mid);
        let reject = if matches!(request.header.code, MessageClass::Reserved(_)) {
            tracing::warn!(mid, code = %request.header.code, "unknown method, 4.05");
            Some(ResponseType::MethodNotAllowed)
        } else if let Some(bad) = unrecognised_critical(&request) {
            tracing::warn!(mid, option = bad, "unrecognised critical option, 4.02");
            Some(ResponseType::BadOption)
        } else {
            None
        };
        if let Some(code) = reject {
            let mut response = Packet::new();
            response.header.code = MessageClass::Response(code);
            return match self.respond(now, responder, response) {
                Ok(bytes) => Inbound::Reply(bytes),
                Err(_) => Inbound::Ignore,
            };
        }
        Inbound::Request { request, responder }
    }

    /// Records `mid` as pending, evicting the oldest entries if the budgets demand it; with
    /// no room at all the request runs without a dedup entry.
    fn insert(&mut self, now: Instant, mid: u16) {
        if !self.make_room(ENTRY_OVERHEAD, 1, None) {
            tracing::debug!(mid, "dedup table full, request runs without an entry");
            return;
        }
        let expires = deadline(now, self.tuning.exchange_lifetime());
        self.entries.insert(
            mid,
            Entry {
                expires,
                slot: Slot::Pending,
                charged: ENTRY_OVERHEAD,
            },
        );
        self.expiry.push_back((expires, mid));
    }

    /// Reserves `entries` entries and `bytes` bytes, evicting the oldest entries other than
    /// `keep` until it fits; `false` if it cannot.
    fn make_room(&mut self, bytes: usize, entries: usize, keep: Option<u16>) -> bool {
        loop {
            match self.account.reserve(entries, bytes) {
                Ok(()) => return true,
                Err(BudgetError::TooLarge) => return false,
                Err(_) => {
                    if !self.evict_oldest(keep) {
                        return false;
                    }
                }
            }
        }
    }

    /// Evicts the oldest live entry other than `keep`; `false` if there is none. Every
    /// entry has exactly one expiry record, so records are popped as entries go and the
    /// queue stays as long as the table.
    fn evict_oldest(&mut self, keep: Option<u16>) -> bool {
        let mut kept = None;
        let evicted = loop {
            let Some((t, mid)) = self.expiry.pop_front() else {
                break false;
            };
            if Some(mid) == keep && kept.is_none() {
                kept = Some((t, mid));
                continue;
            }
            if self.entries.get(&mid).is_some_and(|e| e.expires == t) {
                self.remove_entry(mid);
                break true;
            }
        };
        if let Some(record) = kept {
            self.expiry.push_front(record);
        }
        evicted
    }

    fn remove_entry(&mut self, mid: u16) {
        if let Some(e) = self.entries.remove(&mid) {
            self.account.release(1, e.charged);
        }
    }

    /// Stores the encoded response for duplicates if the budgets allow; otherwise forgets
    /// the exchange (a duplicate is executed again).
    fn store_response(&mut self, mid: u16, bytes: &[u8]) {
        if !self.entries.contains_key(&mid) {
            return;
        }
        if !self.make_room(bytes.len(), 0, Some(mid)) {
            tracing::debug!(mid, "response not stored for duplicates (dedup budget)");
            self.forget(mid);
            return;
        }
        if let Some(entry) = self.entries.get_mut(&mid) {
            entry.slot = Slot::Done(bytes.to_vec());
            entry.charged = entry.charged.saturating_add(bytes.len());
        }
    }

    /// Removes `mid`'s entry and its expiry record.
    fn forget(&mut self, mid: u16) {
        let Some(t) = self.entries.get(&mid).map(|e| e.expires) else {
            return;
        };
        if let Some(pos) = self.expiry.iter().position(|r| *r == (t, mid)) {
            self.expiry.remove(pos);
        }
        self.remove_entry(mid);
    }

    /// Finishes a request: sets the message type (piggybacked ACK with the request's MID
    /// for a CON; NON with a fresh MID for a NON), echoes the token, stores the encoded bytes
    /// for duplicate replay and returns them to send.
    ///
    /// `response.header.code` must be a response code. Errors leave the request pending
    /// (duplicates keep being ignored) and are the caller's fault: a non-response code, or a
    /// message above [`super::MAX_MESSAGE_SIZE`] (slice large bodies with
    /// [`super::Block2Cache`] first).
    ///
    /// `now` keeps the signature uniform with the other inputs; it is not used yet.
    pub fn respond(
        &mut self,
        now: Instant,
        responder: Responder,
        mut response: Packet,
    ) -> Result<Vec<u8>, CoapError> {
        let _ = now;
        if !matches!(response.header.code, MessageClass::Response(_)) {
            return Err(CoapError::NotAResponse(response.header.code.to_string()));
        }
        response.header.set_version(1);
        if responder.confirmable {
            response.header.set_type(MessageType::Acknowledgement);
            response.header.message_id = responder.mid;
        } else {
            response.header.set_type(MessageType::NonConfirmable);
            response.header.message_id = self.next_mid;
        }
        response.set_token(responder.token);
        let bytes = encode(&response)?;
        if !responder.confirmable {
            self.next_mid = self.next_mid.wrapping_add(1);
        }
        self.store_response(responder.mid, &bytes);
        Ok(bytes)
    }

    /// Promises a separate response for the pending CON request `mid` (RFC 7252 §5.2.2):
    /// returns the empty ACK to send now, and from now on a duplicate of the request replays
    /// that ACK instead of being ignored. `None` if `mid` is not pending (already answered,
    /// evicted, or never seen).
    pub fn acknowledge_pending(&mut self, mid: u16) -> Option<Vec<u8>> {
        let entry = self.entries.get_mut(&mid)?;
        if !matches!(entry.slot, Slot::Pending) {
            return None;
        }
        entry.slot = Slot::Acked;
        Some(empty_message(MessageType::Acknowledgement, mid))
    }

    /// Finishes a CON request as a separate response: a CON with `mid` (a fresh MID of the
    /// caller's), the request's token, stored so a later duplicate of the request replays it.
    /// The caller retransmits it until it is ACKed. Errors as for [`respond`](Self::respond).
    pub fn respond_separate(
        &mut self,
        now: Instant,
        responder: Responder,
        mut response: Packet,
        mid: u16,
    ) -> Result<Vec<u8>, CoapError> {
        let _ = now;
        if !matches!(response.header.code, MessageClass::Response(_)) {
            return Err(CoapError::NotAResponse(response.header.code.to_string()));
        }
        response.header.set_version(1);
        response.header.set_type(MessageType::Confirmable);
        response.header.message_id = mid;
        response.set_token(responder.token);
        let bytes = encode(&response)?;
        self.store_response(responder.mid, &bytes);
        Ok(bytes)
    }

    /// Gives up on answering a request (e.g. the handler was cancelled). The MID stays in
    /// the table until it expires, so duplicates are ignored rather than executed again.
    pub fn abandon(&mut self, responder: Responder) {
        tracing::debug!(mid = responder.mid, "request abandoned without response");
    }

    /// When the next dedup entry expires.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiry.front().map(|(t, _)| *t)
    }

    /// Expires dedup entries whose EXCHANGE_LIFETIME has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(t, mid)) = self.expiry.front() {
            if t > now {
                break;
            }
            self.expiry.pop_front();
            if self.entries.get(&mid).is_some_and(|e| e.expires <= now) {
                self.remove_entry(mid);
            }
        }
    }
}

/// The first critical option (odd number) the stack does not implement, or a repeated
/// non-repeatable critical option.
fn unrecognised_critical(p: &Packet) -> Option<u16> {
    p.options().find_map(|(n, values)| {
        let critical = n % 2 == 1;
        let unknown = !RECOGNISED_CRITICAL.contains(n);
        let repeated = NON_REPEATABLE_CRITICAL.contains(n) && values.len() > 1;
        (critical && (unknown || repeated)).then_some(*n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::budget::SharedBudget;
    use crate::coap::{CoapOption, RequestType, response_to, set_uri};
    use std::sync::Arc;
    use std::time::Duration;

    fn server() -> ServerExchanges {
        ServerExchanges::new(TransportTuning::unreliable()).with_first_mid(1000)
    }

    fn request(t: MessageType, mid: u16) -> Packet {
        let mut p = Packet::new();
        p.header.set_type(t);
        p.header.code = MessageClass::Request(RequestType::Get);
        p.header.message_id = mid;
        p.set_token(vec![0xaa, 0xbb]);
        set_uri(&mut p, "/a");
        p
    }

    fn bytes(p: &Packet) -> Vec<u8> {
        p.to_bytes().unwrap()
    }

    #[track_caller]
    fn expect_request(inbound: Inbound) -> (Packet, Responder) {
        match inbound {
            Inbound::Request { request, responder } => (request, responder),
            other => panic!("expected Request, got {other:?}"),
        }
    }

    #[track_caller]
    fn expect_reply(inbound: Inbound) -> Packet {
        match inbound {
            Inbound::Reply(b) => decode(&b).unwrap(),
            other => panic!("expected Reply, got {other:?}"),
        }
    }

    #[test]
    fn con_request_is_answered_with_piggybacked_ack_echoing_mid_and_token() {
        let t0 = Instant::now();
        let mut s = server();
        let (req, responder) =
            expect_request(s.handle_datagram(t0, &bytes(&request(MessageType::Confirmable, 7))));
        let out = s
            .respond(t0, responder, response_to(&req, ResponseType::Content))
            .unwrap();
        let p = decode(&out).unwrap();
        assert_eq!(p.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(p.header.message_id, 7);
        assert_eq!(p.get_token(), [0xaa, 0xbb]);
    }

    #[test]
    fn duplicate_con_replays_cached_bytes_and_never_yields_second_request() {
        let t0 = Instant::now();
        let mut s = server();
        let dg = bytes(&request(MessageType::Confirmable, 7));
        let (req, responder) = expect_request(s.handle_datagram(t0, &dg));
        let mut resp = response_to(&req, ResponseType::Content);
        resp.payload = b"hello".to_vec();
        let first = s.respond(t0, responder, resp).unwrap();
        for i in 1..5 {
            match s.handle_datagram(t0 + Duration::from_secs(i), &dg) {
                Inbound::Reply(b) => assert_eq!(b, first),
                other => panic!("expected replay, got {other:?}"),
            }
        }
    }

    #[test]
    fn after_acknowledge_pending_duplicates_replay_the_empty_ack_then_the_separate_response() {
        let t0 = Instant::now();
        let mut s = server();
        let dg = bytes(&request(MessageType::Confirmable, 7));
        let (req, responder) = expect_request(s.handle_datagram(t0, &dg));
        let ack = s.acknowledge_pending(7).unwrap();
        assert_eq!(ack, [0x60, 0, 0, 7]);
        assert_eq!(s.acknowledge_pending(7), None, "only once");
        assert_eq!(
            expect_reply(s.handle_datagram(t0, &dg)),
            decode(&ack).unwrap()
        );
        let out = s
            .respond_separate(
                t0,
                responder,
                response_to(&req, ResponseType::Content),
                0x4242,
            )
            .unwrap();
        let p = decode(&out).unwrap();
        assert_eq!(p.header.get_type(), MessageType::Confirmable);
        assert_eq!(
            (p.header.message_id, p.get_token()),
            (0x4242, &[0xaa, 0xbb][..])
        );
        assert_eq!(expect_reply(s.handle_datagram(t0, &dg)), p);
        assert_eq!(s.acknowledge_pending(99), None, "never seen");
    }

    #[test]
    fn duplicate_while_pending_is_ignored() {
        let t0 = Instant::now();
        let mut s = server();
        let dg = bytes(&request(MessageType::Confirmable, 7));
        let (_req, responder) = expect_request(s.handle_datagram(t0, &dg));
        assert!(matches!(s.handle_datagram(t0, &dg), Inbound::Ignore));
        s.abandon(responder);
    }

    #[test]
    fn non_request_gets_non_response_with_fresh_mid() {
        let t0 = Instant::now();
        let mut s = server();
        let dg = bytes(&request(MessageType::NonConfirmable, 7));
        let (req, responder) = expect_request(s.handle_datagram(t0, &dg));
        let out = s
            .respond(t0, responder, response_to(&req, ResponseType::Content))
            .unwrap();
        let p = decode(&out).unwrap();
        assert_eq!(p.header.get_type(), MessageType::NonConfirmable);
        assert_eq!(p.header.message_id, 1000);
        assert_eq!(p.get_token(), [0xaa, 0xbb]);
        // Duplicate NON replays the same bytes.
        match s.handle_datagram(t0, &dg) {
            Inbound::Reply(b) => assert_eq!(b, out),
            other => panic!("expected replay, got {other:?}"),
        }
    }

    #[test]
    fn ping_gets_rst_and_empty_non_is_ignored() {
        let t0 = Instant::now();
        let mut s = server();
        let p = expect_reply(s.handle_datagram(t0, &[0x40, 0x00, 0x12, 0x34]));
        assert_eq!(p.header.get_type(), MessageType::Reset);
        assert_eq!(p.header.message_id, 0x1234);
        assert!(matches!(
            s.handle_datagram(t0, &[0x50, 0x00, 0x12, 0x34]),
            Inbound::Ignore
        ));
        assert!(matches!(
            s.handle_datagram(t0, &[0x60, 0x00, 0x12, 0x34]),
            Inbound::Ignore
        ));
        assert!(s.is_empty(), "pings are not deduplicated");
    }

    #[test]
    fn unrecognised_critical_option_gets_4_02_with_token_and_no_request() {
        let t0 = Instant::now();
        let mut s = server();
        let mut req = request(MessageType::Confirmable, 9);
        req.add_option(CoapOption::Unknown(2049), vec![1]);
        let dg = bytes(&req);
        let p = expect_reply(s.handle_datagram(t0, &dg));
        assert_eq!(
            p.header.code,
            MessageClass::Response(ResponseType::BadOption)
        );
        assert_eq!(p.get_token(), [0xaa, 0xbb]);
        assert_eq!(p.header.message_id, 9);
        // The duplicate gets the same 4.02.
        assert_eq!(expect_reply(s.handle_datagram(t0, &dg)), p);
    }

    #[test]
    fn repeated_block1_and_repeated_uri_host_are_rejected_as_critical() {
        let t0 = Instant::now();
        let mut s = server();
        // One Block1 goes up (the handler decides); two are 4.02.
        let mut req = request(MessageType::Confirmable, 3);
        req.add_option(CoapOption::Block1, vec![0x0e]);
        assert!(matches!(
            s.handle_datagram(t0, &bytes(&req)),
            Inbound::Request { .. }
        ));
        let mut req = request(MessageType::Confirmable, 1);
        req.add_option(CoapOption::Block1, vec![0x0e]);
        req.add_option(CoapOption::Block1, vec![0x1e]);
        let p = expect_reply(s.handle_datagram(t0, &bytes(&req)));
        assert_eq!(
            p.header.code,
            MessageClass::Response(ResponseType::BadOption)
        );
        let mut req = request(MessageType::Confirmable, 2);
        req.add_option(CoapOption::UriHost, b"a".to_vec());
        req.add_option(CoapOption::UriHost, b"b".to_vec());
        let p = expect_reply(s.handle_datagram(t0, &bytes(&req)));
        assert_eq!(
            p.header.code,
            MessageClass::Response(ResponseType::BadOption)
        );
    }

    #[test]
    fn unknown_method_code_gets_4_05() {
        let t0 = Instant::now();
        let mut s = server();
        let p = expect_reply(s.handle_datagram(t0, &[0x41, 0x08, 0, 3, 0x5a]));
        assert_eq!(
            p.header.code,
            MessageClass::Response(ResponseType::MethodNotAllowed)
        );
        assert_eq!(p.get_token(), [0x5a]);
        assert_eq!(p.header.message_id, 3);
    }

    #[test]
    fn unknown_elective_option_is_passed_through() {
        let t0 = Instant::now();
        let mut s = server();
        let mut req = request(MessageType::Confirmable, 9);
        req.add_option(CoapOption::Unknown(2048), vec![1]);
        let (_req, responder) = expect_request(s.handle_datagram(t0, &bytes(&req)));
        s.abandon(responder);
    }

    #[test]
    fn response_arriving_at_server_is_rst_for_con_and_ignored_otherwise() {
        let t0 = Instant::now();
        let mut s = server();
        let mut resp = request(MessageType::Confirmable, 5);
        resp.header.code = MessageClass::Response(ResponseType::Content);
        let p = expect_reply(s.handle_datagram(t0, &bytes(&resp)));
        assert_eq!(p.header.get_type(), MessageType::Reset);
        resp.header.set_type(MessageType::NonConfirmable);
        assert!(matches!(
            s.handle_datagram(t0, &bytes(&resp)),
            Inbound::Ignore
        ));
        resp.header.set_type(MessageType::Acknowledgement);
        assert!(matches!(
            s.handle_datagram(t0, &bytes(&resp)),
            Inbound::Ignore
        ));
        // An ACK carrying a request code is ignored too.
        let ack_req = request(MessageType::Acknowledgement, 6);
        assert!(matches!(
            s.handle_datagram(t0, &bytes(&ack_req)),
            Inbound::Ignore
        ));
        assert!(s.is_empty());
    }

    #[test]
    fn malformed_con_gets_rst_and_malformed_non_is_ignored() {
        let t0 = Instant::now();
        let mut s = server();
        // CON GET, MID 0x0102, option delta nibble 15 (reserved).
        let p = expect_reply(s.handle_datagram(t0, &[0x40, 0x01, 0x01, 0x02, 0xf1, 0]));
        assert_eq!(p.header.get_type(), MessageType::Reset);
        assert_eq!(p.header.message_id, 0x0102);
        assert!(matches!(
            s.handle_datagram(t0, &[0x50, 0x01, 0x01, 0x02, 0xf1, 0]),
            Inbound::Ignore
        ));
        assert!(matches!(
            s.handle_datagram(t0, &[0x40, 0x01]),
            Inbound::Ignore
        ));
    }

    #[test]
    fn respond_rejects_non_response_code_and_oversize_message() {
        let t0 = Instant::now();
        let mut s = server();
        let (_req, responder) =
            expect_request(s.handle_datagram(t0, &bytes(&request(MessageType::Confirmable, 1))));
        assert!(matches!(
            s.respond(t0, responder, Packet::new()),
            Err(CoapError::NotAResponse(_))
        ));
        let (req, responder) =
            expect_request(s.handle_datagram(t0, &bytes(&request(MessageType::Confirmable, 2))));
        let mut big = response_to(&req, ResponseType::Content);
        big.payload = vec![0; 5000];
        assert!(matches!(
            s.respond(t0, responder, big),
            Err(CoapError::Encode(_))
        ));
    }

    #[test]
    fn dedup_entry_is_gone_after_exchange_lifetime() {
        let t0 = Instant::now();
        let mut s = server();
        let dg = bytes(&request(MessageType::Confirmable, 7));
        let (req, responder) = expect_request(s.handle_datagram(t0, &dg));
        let _ = s
            .respond(t0, responder, response_to(&req, ResponseType::Content))
            .unwrap();
        let lifetime = s.tuning().exchange_lifetime();
        assert_eq!(s.poll_timeout(), Some(t0 + lifetime));
        s.handle_timeout(t0 + lifetime - Duration::from_millis(1));
        assert_eq!(s.len(), 1);
        s.handle_timeout(t0 + lifetime);
        assert_eq!(s.len(), 0);
        assert_eq!(s.poll_timeout(), None);
        // The same MID is now a new request.
        let (_r, responder) = expect_request(s.handle_datagram(t0 + lifetime, &dg));
        s.abandon(responder);
    }

    fn bounded(entries: usize, bytes: usize, shared: &Arc<SharedBudget>) -> ServerExchanges {
        server().with_account(Account::new(shared.clone(), entries, bytes))
    }

    /// Sends CON `mid`, answers it with a `len`-byte body; returns the bytes sent.
    fn exchange(s: &mut ServerExchanges, now: Instant, mid: u16, len: usize) -> Vec<u8> {
        let dg = bytes(&request(MessageType::Confirmable, mid));
        let (req, responder) = expect_request(s.handle_datagram(now, &dg));
        let mut resp = response_to(&req, ResponseType::Content);
        resp.payload = vec![7; len];
        s.respond(now, responder, resp).unwrap()
    }

    #[test]
    fn dedup_table_is_bounded_in_entries_per_peer_oldest_evicted() {
        let t0 = Instant::now();
        let shared = SharedBudget::unlimited();
        let mut s = bounded(4, 1 << 20, &shared);
        for mid in 0..10u16 {
            exchange(&mut s, t0, mid, 10);
        }
        assert_eq!(s.len(), 4);
        // The four most recent are replayed; an evicted one is a new request again.
        let recent = bytes(&request(MessageType::Confirmable, 9));
        assert!(matches!(s.handle_datagram(t0, &recent), Inbound::Reply(_)));
        let old = bytes(&request(MessageType::Confirmable, 0));
        let (_r, responder) = expect_request(s.handle_datagram(t0, &old));
        s.abandon(responder);
        assert!(s.expiry.len() <= 4, "expiry records go with their entries");
    }

    #[test]
    fn dedup_table_is_bounded_in_bytes_per_peer() {
        let t0 = Instant::now();
        let shared = SharedBudget::unlimited();
        let mut s = bounded(1000, 2000, &shared);
        for mid in 0..50u16 {
            exchange(&mut s, t0, mid, 500);
        }
        assert!(s.bytes() <= 2000, "{} bytes", s.bytes());
        assert!(s.len() >= 2, "recent responses are kept");
        let last = bytes(&request(MessageType::Confirmable, 49));
        assert!(matches!(s.handle_datagram(t0, &last), Inbound::Reply(_)));
    }

    #[test]
    fn response_larger_than_the_peer_budget_is_sent_not_stored() {
        let t0 = Instant::now();
        let shared = SharedBudget::unlimited();
        let mut s = bounded(1000, 300, &shared);
        let sent = exchange(&mut s, t0, 1, 1000);
        assert!(sent.len() > 1000);
        assert!(s.is_empty() && s.expiry.is_empty());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn shared_dedup_budget_bounds_all_peers_and_comes_back_on_drop() {
        let t0 = Instant::now();
        let shared = SharedBudget::new(1_000_000, 10_000);
        let mut peers: Vec<ServerExchanges> =
            (0..8).map(|_| bounded(1000, 1 << 20, &shared)).collect();
        for (i, p) in peers.iter_mut().enumerate() {
            for mid in 0..100u16 {
                exchange(p, t0 + Duration::from_millis(i as u64), mid, 200);
            }
        }
        assert!(shared.used_bytes() <= 10_000, "{}", shared.used_bytes());
        peers.clear();
        assert_eq!((shared.used_entries(), shared.used_bytes()), (0, 0));
    }

    /// A peer whose table is empty while other peers hold the whole shared budget still
    /// recognises the retransmission of its pending CON and replays its answer (the
    /// duplicate-table floor); before, it ran without an entry and a retransmitted POST ran
    /// twice.
    #[test]
    fn a_peer_keeps_duplicate_detection_when_others_fill_the_shared_budget() {
        let t0 = Instant::now();
        let limits = crate::coap::budget::CacheLimits {
            dedup: SharedBudget::new(4, 1 << 20),
            ..crate::coap::budget::CacheLimits::new_default()
        };
        let mut greedy = server().with_account(limits.dedup_account());
        for mid in 0..100u16 {
            exchange(&mut greedy, t0, mid, 10);
        }
        assert!(
            limits.dedup.used_entries() >= 4,
            "the shared budget is full"
        );
        let mut quiet = server().with_account(limits.dedup_account());
        let dg = bytes(&request(MessageType::Confirmable, 7));
        let (req, responder) = expect_request(quiet.handle_datagram(t0, &dg));
        assert!(
            matches!(
                quiet.handle_datagram(t0, &dg),
                Inbound::Ignore | Inbound::Reply(_)
            ),
            "a retransmission while the handler runs is not a new request"
        );
        quiet
            .respond(t0, responder, response_to(&req, ResponseType::Created))
            .unwrap();
        assert!(matches!(quiet.handle_datagram(t0, &dg), Inbound::Reply(_)));
    }

    #[test]
    fn flood_keeps_the_table_bounded() {
        // 200 000 requests at one per 5 µs: far more than EXCHANGE_LIFETIME would keep.
        let t0 = Instant::now();
        let shared = SharedBudget::unlimited();
        let mut s = bounded(512, 128 << 10, &shared);
        for i in 0..200_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 5);
            exchange(&mut s, now, i as u16, 60);
            s.handle_timeout(now);
        }
        assert!(s.len() <= 512);
        assert!(s.expiry.len() <= 512);
        assert!(s.bytes() <= 128 << 10);
    }

    /// Issue 6 item 6: every response stayed for EXCHANGE_LIFETIME, so a fast client filled
    /// the whole MID space (65 536 stored responses per peer). The default bound is 512.
    #[test]
    fn default_bounds_keep_a_flooding_peer_to_512_entries() {
        let t0 = Instant::now();
        let mut s = server();
        for i in 0..70_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 20);
            let dg = bytes(&request(MessageType::Confirmable, i as u16));
            if let Inbound::Request { request, responder } = s.handle_datagram(now, &dg) {
                let mut resp = response_to(&request, ResponseType::Content);
                resp.payload = vec![1; 100];
                let _ = s.respond(now, responder, resp);
            }
            s.handle_timeout(now);
        }
        assert!(s.len() <= 512, "{} entries kept", s.len());
    }

    /// xorshift64*, so the fuzz loop is deterministic.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn garbage_never_panics() {
        let t0 = Instant::now();
        let mut s = server();
        let mut rng = 0x1234_5678_9abc_def1u64;
        let seed = bytes(&request(MessageType::Confirmable, 3));
        for i in 0..20_000u32 {
            let len = (next(&mut rng) % 48) as usize;
            let mut dg: Vec<u8> = if i % 2 == 0 {
                (0..len).map(|_| next(&mut rng) as u8).collect()
            } else {
                let mut d = seed.clone();
                for _ in 0..3 {
                    let pos = (next(&mut rng) as usize) % d.len();
                    d[pos] = next(&mut rng) as u8;
                }
                d.truncate(len.max(1));
                d
            };
            if i % 3 == 0 && !dg.is_empty() {
                dg[0] = 0x40 | (dg[0] & 0x3f);
            }
            if let Inbound::Request { request, responder } = s.handle_datagram(t0, &dg) {
                let _ = s.respond(t0, responder, response_to(&request, ResponseType::Content));
            }
        }
    }
}
