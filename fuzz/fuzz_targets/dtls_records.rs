//! The record layer of a compact DTLS session: what a hostile path can do to records between
//! two ends (duplicate, reorder, tamper with, pack together, inject) never panics, never
//! delivers a record twice, and never delivers anything the other end did not seal.
//!
//! Input: operations `[op, a, b]…`. `op % 6`: 0 seal `a` bytes (the payload starts with its
//! own index), 1 deliver record `a`, 2 deliver record `a` with byte `b` flipped, 3 deliver
//! records `a` and `b` in one datagram, 4 deliver the next `a` input bytes as a datagram,
//! 5 deliver record `a` cut to `b` bytes. The suite is picked by the first byte.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use privgw::transport::key_block::{Suite, expand};
use privgw::transport::record_layer::{ContentType, Inbound, RecordLayer, Role};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut ops)) = data.split_first() else {
        return;
    };
    let suite = [Suite::Ccm8, Suite::Ccm, Suite::Gcm][usize::from(pick % 3)];
    let keys = expand(&[9u8; 48], &[1u8; 32], &[2u8; 32]);
    let mut sender = RecordLayer::new(suite, &keys, Role::Client, 1);
    let mut receiver = RecordLayer::new(suite, &keys, Role::Server, 1);
    let mut sealed: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut delivered = HashSet::new();
    while let [op, a, b, rest @ ..] = ops {
        ops = rest;
        let pick = |i: u8| {
            sealed
                .get(usize::from(i) % sealed.len().max(1))
                .map(|s| s.1.clone())
        };
        let datagram = match op % 6 {
            0 => {
                let index = u16::try_from(sealed.len()).unwrap_or(u16::MAX);
                let mut payload = index.to_be_bytes().to_vec();
                payload.resize(2 + usize::from(*a), *b);
                let record = sender
                    .seal(ContentType::ApplicationData, &payload)
                    .expect("a short record seals");
                sealed.push((payload, record));
                continue;
            }
            1 => pick(*a),
            2 => pick(*a).map(|mut r| {
                let at = usize::from(*b) % r.len();
                r[at] ^= 0x01;
                r
            }),
            3 => pick(*a).zip(pick(*b)).map(|(x, y)| [x, y].concat()),
            4 => {
                let n = usize::from(*a).min(ops.len());
                let (raw, rest) = ops.split_at(n);
                ops = rest;
                Some(raw.to_vec())
            }
            _ => pick(*a).map(|r| r[..usize::from(*b).min(r.len())].to_vec()),
        };
        let Some(datagram) = datagram else { continue };
        let mut rest = datagram.as_slice();
        while let Some(inbound) = receiver.open_next(&mut rest) {
            if let Inbound::Data(payload) = inbound {
                let index = usize::from(u16::from_be_bytes([payload[0], payload[1]]));
                assert_eq!(payload, sealed[index].0, "delivered what was sealed");
                assert!(delivered.insert(index), "record {index} delivered twice");
            }
        }
    }
});
