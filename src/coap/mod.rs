//! Sans-IO CoAP core: message layer (dedup, retransmission), tokens of one exchange, and
//! block-wise (Block2) transfer, for CoAP over UDP/DTLS (RFC 7252, RFC 7959) and over TCP/TLS
//! (RFC 8323).
//!
//! The two stack shapes: UDP/DTLS is one [`Endpoint`] per peer session — tokens both ways
//! ([`ClientExchange`] per outgoing request) → message ([`ServerExchanges`], one MID space,
//! retransmission, separate responses) → datagram; TCP/TLS has no message layer and is one
//! [`StreamEndpoint`] per connection: token ([`ClientExchange::new_reliable`] per outgoing
//! request) → framing ([`StreamConnection`]). Block2 reassembly is the
//! same code for both.
//!
//! # What this module never does
//!
//! It never touches a socket, never reads the clock and never draws randomness: datagrams
//! come in and go out as plain byte values, time is an [`Instant`](std::time::Instant) argument
//! that must never go backwards, and the caller supplies message IDs, tokens and the random
//! fraction for the initial retransmission timeout. That makes every state machine here
//! deterministic and testable in virtual time (see `tests.rs`).
//!
//! # Layout
//!
//! The gateway's transport demultiplexes peers *before* this layer, so each type below is
//! instantiated once per peer session and no peer address appears here.
//!
//! * [`tuning`] — [`TransportTuning`]: RFC 7252 transmission parameters and derived times.
//! * [`endpoint`] — [`Endpoint`]: one datagram peer session in both roles. Owns the one MID
//!   space, the table of our outgoing exchanges (NSTART and its queue), the matching of
//!   responses to them, separate responses of the server role and the session's one timer
//!   table; reuses [`ServerExchanges`] and [`ClientExchange`] for the rest.
//! * [`observe`] — Observe (RFC 7641) state of one session: the 24-bit sequence numbers
//!   and the §3.4 reorder rule, our observations and the peer's observers (with a cap and
//!   the 24 h CON rule); the [`Endpoint`] wires them into its routing and timer table.
//! * [`server`] — [`ServerExchanges`]: the server role of one peer session. Owns the
//!   dedup table of request MIDs and the cached responses for duplicate replay.
//! * [`client`] — [`ClientExchange`]: one outgoing request/response exchange, with CON
//!   retransmission, separate responses and Block2 reassembly. Owns its MIDs and token.
//! * [`block`] — [`BlockOption`] and [`Block2Cache`]: server-side Block2 slicing, keyed by a
//!   caller-supplied cache key.
//! * [`block1`] — [`Block1Sender`](block1::Block1Sender): client-side Block1 slicing of a
//!   request body and the 2.31 Continue / late-negotiation arithmetic.
//! * [`budget`] — [`CacheLimits`]: per-peer and shared entry/byte bounds of the dedup table
//!   and the Block2 cache.
//! * [`tcp`] — RFC 8323 framing ([`encode_frame`], [`decode_frame`]) and typed signaling
//!   messages ([`Signal`]) for CoAP over TCP and TLS.
//! * [`stream`] — [`StreamConnection`]: one reliable connection (either role), with the CSM
//!   exchange, Ping/Pong, Release/Abort and the peer's Max-Message-Size.
//! * [`stream_endpoint`] — [`StreamEndpoint`]: one reliable connection in both roles, the
//!   stream counterpart of [`Endpoint`]: the token layer both ways (the peer's requests as
//!   [`EndpointEvent::Request`], ours matched by token), NSTART and its queue, one timer
//!   table over the connection's and the exchanges' timers.
//! * this file — re-exports of the `coap_lite` message types, strict [`decode`], and small
//!   option helpers every upper layer needs ([`uri_path`], [`set_uri`], [`content_format`]…).
//!
//! # Method classes (quinn style)
//!
//! The state machines expose getters, `handle_*` (input: datagrams and timeouts), mutators
//! (`respond`) and `poll_*` (output). After every `handle_*` call the driver calls
//! `poll_transmit` until it returns `None`, then `poll_event`, then re-arms one timer from
//! `poll_timeout`.

pub mod block;
pub mod block1;
pub mod budget;
pub mod client;
pub mod endpoint;
mod nstart;
pub mod observe;
pub mod server;
pub mod stream;
pub mod stream_endpoint;
mod stream_observe;
pub mod tcp;
pub mod tuning;

#[cfg(test)]
mod tests;

use std::collections::LinkedList;

pub use block::{Block2Cache, BlockError, BlockOption};
pub use budget::{CacheLimits, SharedBudget};
pub use client::{ClientError, ClientEvent, ClientExchange};
pub use coap_lite::{
    CoapOption, ContentFormat, MessageClass, MessageType, Packet, RequestType, ResponseType,
};
pub use endpoint::{Endpoint, EndpointEvent, RequestId};
pub use observe::{NotifyError, ObservationId, ObserveEnd, ObserverRemoval};
pub use server::{Inbound, Responder, ServerExchanges};
pub use stream::{StreamConnection, StreamEvent};
pub use stream_endpoint::StreamEndpoint;
pub use tcp::{FrameError, Signal, decode_frame, encode_frame};
pub use tuning::TransportTuning;

/// Errors of the CoAP core that are not specific to the client role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoapError {
    /// The datagram is not a well-formed CoAP message (peer's fault).
    #[error("malformed CoAP message: {0}")]
    Malformed(String),
    /// An option that must be text is not UTF-8 (peer's fault).
    #[error("option {option} is not valid UTF-8")]
    InvalidUtf8 {
        /// The option number.
        option: u16,
    },
    /// We were asked to send something that is not a response (our fault).
    #[error("not a response code: {0}")]
    NotAResponse(String),
    /// The message could not be encoded, typically because it exceeds the datagram limit
    /// (our fault; use [`Block2Cache`] for large bodies).
    #[error("cannot encode CoAP message: {0}")]
    Encode(String),
    /// The message exceeds the peer's Max-Message-Size (RFC 8323 §5.3.1; our fault: slice
    /// the body with [`Block2Cache::apply_within`] first).
    #[error("message of {size} bytes exceeds the peer's Max-Message-Size of {limit}")]
    TooLarge {
        /// The encoded frame size.
        size: usize,
        /// The peer's Max-Message-Size.
        limit: usize,
    },
    /// The reliable connection is closed (released or aborted); nothing more can be sent.
    #[error("connection closed")]
    Closed,
}

/// Largest encoded message this core emits (coap-lite's `Packet::MAX_SIZE`, 1280 bytes:
/// the IPv6 minimum MTU). A 1024-byte block plus header and options fits.
pub const MAX_MESSAGE_SIZE: usize = Packet::MAX_SIZE;

/// Largest token RFC 7252 allows.
pub const MAX_TOKEN_LEN: usize = 8;

/// Decodes one datagram strictly (RFC 7252 §3): version 1, token length ≤ 8, an Empty
/// message is exactly 4 bytes, and a payload marker is followed by a non-empty payload.
/// Never panics.
pub fn decode(bytes: &[u8]) -> Result<Packet, CoapError> {
    let [b0, code, _, _, ..] = bytes else {
        return Err(CoapError::Malformed(
            "shorter than the 4-byte header".into(),
        ));
    };
    if b0 >> 6 != 1 {
        return Err(CoapError::Malformed(format!("version {}", b0 >> 6)));
    }
    if *code == 0 && bytes.len() != 4 {
        return Err(CoapError::Malformed(
            "Empty message with token, options or payload".into(),
        ));
    }
    let packet = Packet::from_bytes(bytes).map_err(|e| CoapError::Malformed(e.to_string()))?;
    // coap-lite accepts a payload marker followed by nothing; re-encoding is canonical
    // otherwise, so a length mismatch means exactly that format error.
    let canonical = packet
        .to_bytes_unlimited()
        .map_err(|e| CoapError::Malformed(e.to_string()))?;
    if canonical.len() != bytes.len() {
        return Err(CoapError::Malformed(
            "payload marker without payload".into(),
        ));
    }
    Ok(packet)
}

/// Encodes a message for one datagram, refusing anything above [`MAX_MESSAGE_SIZE`].
pub fn encode(packet: &Packet) -> Result<Vec<u8>, CoapError> {
    packet
        .to_bytes_with_limit(MAX_MESSAGE_SIZE)
        .map_err(|e| CoapError::Encode(e.to_string()))
}

/// The header fields of a datagram whose 4-byte header is readable and whose version is 1:
/// `(type, message id)`. Used to answer a malformed CON with an RST.
pub(crate) fn peek_header(bytes: &[u8]) -> Option<(MessageType, u16)> {
    let [b0, _, m0, m1, ..] = bytes else {
        return None;
    };
    if b0 >> 6 != 1 {
        return None;
    }
    let t = match (b0 >> 4) & 0x3 {
        0 => MessageType::Confirmable,
        1 => MessageType::NonConfirmable,
        2 => MessageType::Acknowledgement,
        _ => MessageType::Reset,
    };
    Some((t, u16::from_be_bytes([*m0, *m1])))
}

/// An Empty message (ACK or RST) with the given MID, encoded. Cannot fail.
pub(crate) fn empty_message(t: MessageType, mid: u16) -> Vec<u8> {
    let b0 = 0x40
        | match t {
            MessageType::Confirmable => 0x00,
            MessageType::NonConfirmable => 0x10,
            MessageType::Acknowledgement => 0x20,
            MessageType::Reset => 0x30,
        };
    let [m0, m1] = mid.to_be_bytes();
    vec![b0, 0, m0, m1]
}

/// Encodes `value` as a minimal big-endian CoAP uint option value (0 is zero bytes).
pub fn encode_uint(value: u32) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes.iter().skip(skip).copied().collect()
}

/// Decodes a CoAP uint option value of at most 4 bytes.
pub fn decode_uint(value: &[u8]) -> Option<u32> {
    if value.len() > 4 {
        return None;
    }
    Some(value.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

fn text_options(p: &Packet, option: CoapOption) -> Result<Vec<String>, CoapError> {
    let Some(values) = p.get_option(option) else {
        return Ok(Vec::new());
    };
    values
        .iter()
        .map(|v| {
            String::from_utf8(v.clone()).map_err(|_| CoapError::InvalidUtf8 {
                option: option.into(),
            })
        })
        .collect()
}

/// The Uri-Path segments of a request, in order (not percent-decoded: CoAP options carry
/// the decoded text already). Non-UTF-8 segments are an error.
pub fn uri_path(p: &Packet) -> Result<Vec<String>, CoapError> {
    text_options(p, CoapOption::UriPath)
}

/// The Uri-Query arguments of a request, in order, e.g. `["ep=dev1", "lt=60"]`.
pub fn uri_query(p: &Packet) -> Result<Vec<String>, CoapError> {
    text_options(p, CoapOption::UriQuery)
}

fn uint16_option(p: &Packet, option: CoapOption) -> Option<u16> {
    p.get_first_option(option)
        .and_then(|v| decode_uint(v))
        .and_then(|v| u16::try_from(v).ok())
}

/// The Content-Format number, if present and well-formed (any value, also ones coap-lite's
/// [`ContentFormat`] enum does not know).
pub fn content_format(p: &Packet) -> Option<u16> {
    uint16_option(p, CoapOption::ContentFormat)
}

/// The Accept number, if present and well-formed.
pub fn accept(p: &Packet) -> Option<u16> {
    uint16_option(p, CoapOption::Accept)
}

/// Replaces the Content-Format option with `cf` (minimal big-endian uint; 11542 works).
pub fn set_content_format(p: &mut Packet, cf: u16) {
    set_single(p, CoapOption::ContentFormat, encode_uint(u32::from(cf)));
}

/// Replaces the Accept option with `cf`.
pub fn set_accept(p: &mut Packet, cf: u16) {
    set_single(p, CoapOption::Accept, encode_uint(u32::from(cf)));
}

/// Replaces all values of `option` with the single `value`.
pub fn set_single(p: &mut Packet, option: CoapOption, value: Vec<u8>) {
    let mut list = LinkedList::new();
    list.push_back(value);
    p.set_option(option, list);
}

/// Sets Uri-Path and Uri-Query from `"/a/b?x=1&y"`: the part before `?` is split on `/`
/// (one leading `/` ignored; `"/"` or `""` means no Uri-Path), the part after `?` is split
/// on `&` (empty arguments dropped). Replaces any previous Uri-Path/Uri-Query. No
/// percent-decoding is done.
pub fn set_uri(p: &mut Packet, uri: &str) {
    let (path, query) = match uri.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (uri, None),
    };
    let path = path.strip_prefix('/').unwrap_or(path);
    let segments: LinkedList<Vec<u8>> = if path.is_empty() {
        LinkedList::new()
    } else {
        path.split('/').map(|s| s.as_bytes().to_vec()).collect()
    };
    p.set_option(CoapOption::UriPath, segments);
    let args: LinkedList<Vec<u8>> = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|a| !a.is_empty())
        .map(|a| a.as_bytes().to_vec())
        .collect();
    p.set_option(CoapOption::UriQuery, args);
}

/// A response to `request` with code `code` and the request's token. The type is set for
/// convenience (ACK with the request's MID for a CON, NON otherwise);
/// [`ServerExchanges::respond`] sets type and MID authoritatively anyway.
pub fn response_to(request: &Packet, code: ResponseType) -> Packet {
    let mut r = Packet::new();
    r.header.code = MessageClass::Response(code);
    match request.header.get_type() {
        MessageType::Confirmable => {
            r.header.set_type(MessageType::Acknowledgement);
            r.header.message_id = request.header.message_id;
        }
        _ => r.header.set_type(MessageType::NonConfirmable),
    }
    r.set_token(request.get_token().to_vec());
    r
}

/// `"2.05"`, `"4.03"`, … for any code.
pub fn code_string(code: MessageClass) -> String {
    code.to_string()
}

/// `p` without any value of option number `number`: `p` itself when it has none (the
/// common case on every request, so no copy), else [`without_option`].
pub fn dropping_option(p: Packet, number: u16) -> Packet {
    if p.get_option(CoapOption::from(number)).is_some() {
        without_option(&p, number)
    } else {
        p
    }
}

/// A copy of `p` without any value of option number `number` (coap-lite's `clear_option`
/// leaves an empty list behind; this removes the entry).
pub fn without_option(p: &Packet, number: u16) -> Packet {
    let mut q = Packet::new();
    q.header = p.header.clone();
    q.set_token(p.get_token().to_vec());
    for (n, values) in p.options() {
        if *n != number && !values.is_empty() {
            q.set_option(CoapOption::from(*n), values.clone());
        }
    }
    q.payload = p.payload.clone();
    q
}

#[cfg(test)]
mod helper_tests {
    use super::*;

    #[test]
    fn set_uri_then_uri_path_and_uri_query_round_trip() {
        let mut p = Packet::new();
        set_uri(&mut p, "/gw/priv/3?ep=dev1&&lt=60");
        assert_eq!(uri_path(&p).unwrap(), ["gw", "priv", "3"]);
        assert_eq!(uri_query(&p).unwrap(), ["ep=dev1", "lt=60"]);
        set_uri(&mut p, "/");
        assert!(uri_path(&p).unwrap().is_empty());
        assert!(uri_query(&p).unwrap().is_empty());
    }

    #[test]
    fn uri_path_rejects_non_utf8() {
        let mut p = Packet::new();
        p.add_option(CoapOption::UriPath, vec![0xff, 0xfe]);
        assert_eq!(uri_path(&p), Err(CoapError::InvalidUtf8 { option: 11 }));
    }

    #[test]
    fn content_format_11542_is_minimal_big_endian_and_round_trips() {
        let mut p = Packet::new();
        set_content_format(&mut p, 11542);
        assert_eq!(
            p.get_first_option(CoapOption::ContentFormat).unwrap(),
            &vec![0x2d, 0x16]
        );
        let p = decode(&encode(&p).unwrap()).unwrap();
        assert_eq!(content_format(&p), Some(11542));
        let mut p = p;
        set_content_format(&mut p, 0);
        assert_eq!(content_format(&p), Some(0));
        set_accept(&mut p, 112);
        assert_eq!(accept(&p), Some(112));
    }

    #[test]
    fn code_string_formats_class_dot_detail() {
        assert_eq!(
            code_string(MessageClass::Response(ResponseType::Content)),
            "2.05"
        );
        assert_eq!(
            code_string(MessageClass::Response(ResponseType::Forbidden)),
            "4.03"
        );
        assert_eq!(code_string(MessageClass::Request(RequestType::Get)), "0.01");
    }

    #[test]
    fn response_to_copies_token_and_acks_a_con() {
        let mut req = Packet::new();
        req.header.message_id = 77;
        req.set_token(vec![1, 2, 3]);
        let r = response_to(&req, ResponseType::Content);
        assert_eq!(r.get_token(), [1, 2, 3]);
        assert_eq!(r.header.message_id, 77);
        assert_eq!(r.header.get_type(), MessageType::Acknowledgement);
    }

    #[test]
    fn decode_rejects_format_errors() {
        assert!(decode(&[0x40, 0x01]).is_err(), "short");
        assert!(decode(&[0x80, 0x01, 0, 1]).is_err(), "version 2");
        assert!(decode(&[0x41, 0x00, 0, 1, 9]).is_err(), "empty with token");
        assert!(
            decode(&[0x40, 0x01, 0, 1, 0xff]).is_err(),
            "marker without payload"
        );
        assert!(decode(&[0x49, 0x01, 0, 1]).is_err(), "tkl 9");
        assert!(decode(&[0x40, 0x01, 0, 1, 0xff, b'x']).is_ok());
    }

    #[test]
    fn uint_helpers_are_minimal_and_bounded() {
        assert_eq!(encode_uint(0), Vec::<u8>::new());
        assert_eq!(encode_uint(0x0102), vec![1, 2]);
        assert_eq!(decode_uint(&[1, 2]), Some(0x0102));
        assert_eq!(decode_uint(&[1, 2, 3, 4, 5]), None);
    }

    #[test]
    fn dropping_option_removes_the_entry_and_keeps_the_rest() {
        let mut p = Packet::new();
        p.add_option(CoapOption::Block2, vec![0x16]);
        p.add_option(CoapOption::ETag, vec![1]);
        p.payload = b"x".to_vec();
        let q = dropping_option(p.clone(), 23);
        assert!(q.get_option(CoapOption::Block2).is_none());
        assert_eq!(q.get_option(CoapOption::ETag).map(|v| v.len()), Some(1));
        assert_eq!(q.payload, b"x");
        let r = dropping_option(q.clone(), 27);
        assert_eq!(r.to_bytes().ok(), q.to_bytes().ok(), "no Block1: unchanged");
    }

    #[test]
    fn without_option_removes_the_entry() {
        let mut p = Packet::new();
        p.add_option(CoapOption::Block2, vec![0x16]);
        p.add_option(CoapOption::ETag, vec![1]);
        let q = without_option(&p, 23);
        assert!(q.get_option(CoapOption::Block2).is_none());
        assert!(q.get_option(CoapOption::ETag).is_some());
    }
}
