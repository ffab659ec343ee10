//! CoAP over TCP/TLS (RFC 8323): the frame decoder and signal parser on a byte buffer, then
//! the same bytes through a `StreamConnection` (CSM, Ping/Pong, Release/Abort, frame limits)
//! in input-chosen chunks at injected times, then through a `StreamEndpoint` that answers
//! every request with Observe (so a GET with Observe = 0 registers) and notifies every
//! token it has seen after each chunk: the observer table stays within its cap.
//!
//! Input: `[limit, chunk, rest…]`. `limit` picks our Max-Message-Size (tiny to 1 MiB),
//! `chunk` the read size fed to the connection (1–256 bytes).
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use privgw::coap::observe::{DEFAULT_MAX_OBSERVERS, set_observe};
use privgw::coap::{
    EndpointEvent, MessageClass, Packet, ResponseType, Signal, StreamConnection, StreamEndpoint,
    StreamEvent, decode_frame, encode_frame,
};

static BASE: OnceLock<Instant> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let [limit, chunk, bytes @ ..] = data else {
        return;
    };
    let max = match limit % 4 {
        0 => 16 + usize::from(*limit),
        1 => 1152,
        2 => 64 * 1024,
        _ => 1024 * 1024,
    };

    // The decoder alone: consume frames until incomplete or an error.
    let mut buf = bytes;
    while let Ok(Some((packet, used))) = decode_frame(buf, max) {
        assert!(used > 0 && used <= buf.len());
        buf = &buf[used..];
        if let Some(Ok(signal)) = Signal::from_packet(&packet) {
            // A parsed signal survives its own encoding.
            let again = Signal::from_packet(&signal.to_packet());
            assert!(matches!(again, Some(Ok(_))), "{signal:?} → {again:?}");
        }
        let _ = encode_frame(&packet);
    }

    // The connection state machine, fed in chunks.
    let base = *BASE.get_or_init(Instant::now);
    let mut now = base;
    let mut conn = StreamConnection::new(now, u32::try_from(max).unwrap_or(u32::MAX), true)
        .with_csm_timeout(now, Duration::from_secs(5))
        .with_keepalive(now, Duration::from_secs(2));
    let step = usize::from(*chunk).max(1);
    let mut closed = 0;
    for piece in bytes.chunks(step) {
        now += Duration::from_millis(u64::from(piece[0] % 4) * 1000);
        if conn.poll_timeout().is_some_and(|t| t <= now) {
            conn.handle_timeout(now);
        }
        conn.handle_bytes(now, piece);
        while conn.poll_transmit().is_some() {}
        while let Some(ev) = conn.poll_event() {
            if let StreamEvent::Closed { .. } = ev {
                closed += 1;
            }
        }
    }
    assert!(closed <= 1, "Closed reported {closed} times");
    assert_eq!(closed == 1, conn.is_closed());

    // The endpoint's server role with Observe, fed the same chunks.
    let mut now = base;
    let conn = StreamConnection::new(now, u32::try_from(max).unwrap_or(u32::MAX), true);
    let mut endpoint = StreamEndpoint::new(conn, Duration::from_secs(30));
    let mut tokens: Vec<Vec<u8>> = Vec::new();
    for (i, piece) in bytes.chunks(step).enumerate() {
        now += Duration::from_millis(u64::from(piece[0] % 4) * 1000);
        endpoint.handle_bytes(now, piece);
        while let Some(event) = endpoint.poll_event() {
            if let EndpointEvent::Request { request, responder } = event {
                if tokens.len() < 64 {
                    tokens.push(request.get_token().to_vec());
                }
                let mut answer = Packet::new();
                answer.header.code = MessageClass::Response(ResponseType::Content);
                set_observe(&mut answer, 0);
                let _ = endpoint.respond(now, responder, answer);
            }
        }
        for token in &tokens {
            let mut note = Packet::new();
            let code = if i % 7 == 6 {
                ResponseType::NotFound
            } else {
                ResponseType::Content
            };
            note.header.code = MessageClass::Response(code);
            let _ = endpoint.notify(now, token, note, false);
        }
        while endpoint.poll_transmit().is_some() {}
        assert!(endpoint.observers() <= DEFAULT_MAX_OBSERVERS);
    }
});
