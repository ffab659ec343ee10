//! CoAP over UDP/DTLS: the strict datagram decoder, then the sans-IO server message layer
//! (dedup, piggybacked ACKs, duplicate replay, expiry) and Block2 slicing/lookup, driven by a
//! sequence of datagrams at injected times.
//!
//! Input: records `[ctrl, len, len bytes of datagram]…`. `ctrl` bits 0–3 advance the clock
//! (`n³ × 100 ms`, up to past EXCHANGE_LIFETIME), bit 4 abandons the request instead of
//! answering it, bits 5–7 pick the response body size (0–4900 bytes, so Block2 kicks in).
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use privgw::coap::block::cache_key;
use privgw::coap::{
    self, Block2Cache, BlockOption, Inbound, MessageClass, MessageType, Packet, ResponseType,
    ServerExchanges, TransportTuning,
};

/// The fixed origin of the injected clock (the layer only compares and adds instants).
static BASE: OnceLock<Instant> = OnceLock::new();

fn answer(blocks: &mut Block2Cache, now: Instant, request: &Packet, ctrl: u8) -> Packet {
    let requested = BlockOption::block2(request).and_then(Result::ok);
    let key = cache_key(request);
    if let Some(b) = requested {
        if let Some(p) = blocks.lookup(now, &key, b) {
            return p;
        }
    }
    let mut response = Packet::new();
    response.header.code = MessageClass::Response(ResponseType::Content);
    let len = usize::from(ctrl >> 5) * 700;
    response.payload = (0..len).map(|i| i as u8).collect();
    blocks.apply(now, key, requested, response)
}

fuzz_target!(|data: &[u8]| {
    let base = *BASE.get_or_init(Instant::now);
    let tuning = TransportTuning::unreliable();
    let lifetime = tuning.exchange_lifetime();
    let mut server = ServerExchanges::new(tuning).with_first_mid(0xfff0);
    let mut blocks = Block2Cache::new(lifetime).with_max_entries(4);
    let mut now = base;
    let mut rest = data;
    while let [ctrl, len, tail @ ..] = rest {
        let (dgram, next) = tail.split_at(usize::from(*len).min(tail.len()));
        rest = next;
        now += Duration::from_millis(u64::from(ctrl & 0x0f).pow(3) * 100);
        if server.poll_timeout().is_some_and(|t| t <= now) {
            server.handle_timeout(now);
        }
        if blocks.poll_timeout().is_some_and(|t| t <= now) {
            blocks.handle_timeout(now);
        }
        let strict = coap::decode(dgram);
        if let Ok(p) = &strict {
            // Accepted datagrams are canonical: re-encoding gives the same bytes.
            assert_eq!(p.to_bytes_unlimited().ok().as_deref(), Some(dgram));
        }
        match server.handle_datagram(now, dgram) {
            Inbound::Request { request, responder } => {
                assert!(strict.is_ok(), "a request that the strict decoder refuses");
                assert_eq!(responder.request_mid(), request.header.message_id);
                assert_eq!(responder.token(), request.get_token());
                if ctrl & 0x10 != 0 {
                    server.abandon(responder);
                    continue;
                }
                let confirmable = responder.is_confirmable();
                let (mid, token) = (responder.request_mid(), responder.token().to_vec());
                let response = answer(&mut blocks, now, &request, *ctrl);
                let bytes = server
                    .respond(now, responder, response)
                    .expect("a sliced response fits one datagram");
                let back = coap::decode(&bytes).expect("our response decodes");
                assert_eq!(back.get_token(), &token[..]);
                if confirmable {
                    assert_eq!(back.header.get_type(), MessageType::Acknowledgement);
                    assert_eq!(back.header.message_id, mid);
                } else {
                    assert_eq!(back.header.get_type(), MessageType::NonConfirmable);
                }
            }
            Inbound::Reply(bytes) => {
                coap::decode(&bytes).expect("a reply decodes");
            }
            Inbound::Ignore => {}
        }
    }
});
