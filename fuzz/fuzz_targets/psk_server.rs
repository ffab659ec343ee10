//! The lean DTLS-PSK server handshake: whatever a peer sends it — its own ClientHello, then
//! any datagrams, mixed with the true client's flight — never panics, and no handshake
//! completes unless the client holding the key sent its Finished.
//!
//! Input: `[pick, ops…]`. `pick` bit 0: the first ClientHello is the lean client's (else
//! the next `pick >> 1` input bytes, which must parse as one). Then ops `[op, n]…`: `op % 3`
//! 0 feeds the next `n` input bytes as a datagram, 1 the true client's key exchange flight,
//! 2 that flight with byte `n` flipped (before its Finished, the handshake may still
//! complete: the Finished is still the true client's).
#![no_main]

use libfuzzer_sys::fuzz_target;
use privgw::cli::bench::psk_handshake::{PskHandshake, Step as ClientStep};
use privgw::transport::cookie::parse_client_hello;
use privgw::transport::handshake_codec::split_record;
use privgw::transport::psk_server::{PskServerHandshake, Step, choose, enabled_suites};

fn keys(identity: &[u8]) -> Option<Vec<u8>> {
    (identity == b"dev").then(|| b"secret".to_vec())
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut input)) = data.split_first() else {
        return;
    };
    let (mut client, lean_hello) = PskHandshake::start(b"dev", b"secret", [1; 32]);
    let hello = if pick & 1 == 1 {
        lean_hello
    } else {
        let n = usize::from(pick >> 1).min(input.len());
        let (raw, rest) = input.split_at(n);
        input = rest;
        raw.to_vec()
    };
    let Ok(parsed) = parse_client_hello(&hello) else {
        return;
    };
    let enabled = enabled_suites(privgw::transport::dtls::DEFAULT_PSK_CIPHERS).expect("known");
    let Some(suite) = choose(&parsed, &enabled) else {
        return;
    };
    let Ok((mut server, flight)) = PskServerHandshake::start(&parsed, &hello, suite, [2; 32])
    else {
        return;
    };
    // The true client's answer, when the hello was its own.
    let true_flight = match client.on_datagram(&flight) {
        Ok(ClientStep::Send(d)) if pick & 1 == 1 => Some(d),
        _ => None,
    };
    // Where the true flight's last record (the Finished, epoch 1) starts.
    let finished_at = true_flight.as_deref().map_or(0, |mut d| {
        let mut at = 0;
        while let Ok((record, rest)) = split_record(d) {
            if rest.is_empty() {
                break;
            }
            at += record.len();
            d = rest;
        }
        at
    });
    let mut true_finished_sent = false;
    while let [op, n, rest @ ..] = input {
        input = rest;
        let datagram = match op % 3 {
            0 => {
                let k = usize::from(*n).min(input.len());
                let (raw, rest) = input.split_at(k);
                input = rest;
                raw.to_vec()
            }
            1 => {
                let Some(f) = &true_flight else { continue };
                true_finished_sent = true;
                f.clone()
            }
            _ => {
                let Some(mut f) = true_flight.clone() else {
                    continue;
                };
                let at = usize::from(*n) % f.len();
                f[at] ^= 0x01;
                // A flip before the Finished may leave the handshake valid (a record number,
                // the ChangeCipherSpec body): the Finished itself is still the client's.
                true_finished_sent |= at < finished_at;
                f
            }
        };
        match server.on_datagram(&datagram, &keys) {
            Ok(Step::Established(_)) => {
                assert!(
                    true_finished_sent,
                    "established without the client's Finished"
                );
                return;
            }
            Ok(_) => {
                let _ = server.resend();
            }
            Err(e) => {
                let _ = e.alert();
                return;
            }
        }
    }
});
