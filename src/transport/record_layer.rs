//! DTLS 1.2 records of an established session, protected and checked here (sans-IO).
//!
//! After OpenSSL's handshake a session with an AES-128 AEAD suite ([`Suite`]) drops OpenSSL's
//! state (~30 KB: the handshake buffer DTLS keeps for retransmissions, the `SSL` object, the
//! record buffers) and keeps this: two keys, two salts, the next write sequence number and
//! the anti-replay window, about 1 KB.
//!
//! The wire format is RFC 6347 §4.1 with the AEAD construction of RFC 5246 §6.2.3.3:
//!
//! * header: type, version {254, 253}, epoch 1, 48-bit sequence number, length;
//! * fragment: an 8-byte explicit nonce (our epoch ‖ sequence number, as OpenSSL and
//!   libcoap's stacks send), the ciphertext, the tag;
//! * nonce: salt ‖ explicit nonce; additional data: epoch ‖ sequence number ‖ type ‖ version ‖
//!   plaintext length.
//!
//! Inbound records that do not authenticate, replay an accepted sequence number, carry
//! another epoch or are malformed are discarded without an answer (RFC 6347 §4.1.2.7);
//! [`RecordLayer::open_next`] says which, for a debug line.

use aes::Aes128Enc;
use ccm::aead::generic_array::GenericArray;
use ccm::aead::{AeadInPlace, KeyInit};
use ccm::consts::{U8, U12, U16};
use ring::aead as ring_aead;

use super::key_block::{DirectionKeys, KeyBlock, Suite};
use super::replay_window::ReplayWindow;

/// Bytes of a DTLS record header.
pub const HEADER_LEN: usize = 13;
/// The epoch of every record after the handshake (no renegotiation).
pub const EPOCH: u16 = 1;
const VERSION: [u8; 2] = [0xFE, 0xFD];
const EXPLICIT_NONCE_LEN: usize = 8;
/// Largest plaintext (2^14).
pub const MAX_PLAINTEXT: usize = 16_384;
/// Largest sequence number of an epoch (48 bits).
const MAX_SEQ: u64 = (1 << 48) - 1;

/// A record's content type (RFC 5246 §6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    ChangeCipherSpec = 20,
    Alert = 21,
    Handshake = 22,
    ApplicationData = 23,
}

/// Which end of the handshake we were: it picks the keys each direction uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Why a record could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("a DTLS record carries at most {MAX_PLAINTEXT} bytes, not {0}")]
    TooLong(usize),
    #[error("the epoch's 2^48 sequence numbers are used up")]
    SequenceExhausted,
    #[error("the cipher refused to seal the record")]
    Cipher,
}

/// One record taken from an inbound datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Authenticated application data (never empty).
    Data(Vec<u8>),
    /// An authenticated alert.
    Alert { level: u8, description: u8 },
    /// An authenticated handshake record: the peer's Finished, the peer retransmitting its
    /// last flight (it missed ours), or a renegotiation attempt (not supported, ignored).
    Handshake(Vec<u8>),
    /// Not delivered, and why.
    Discarded(Discard),
}

/// Why an inbound record was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// Too short, a length past the datagram, or the wrong version: the rest of the
    /// datagram is dropped with it.
    Malformed,
    /// A record of another epoch (a retransmitted epoch-0 handshake record, or garbage).
    OtherEpoch(u16),
    /// A sequence number already accepted or older than the window.
    Replayed(u64),
    /// The tag did not verify.
    Unauthentic,
    /// Authenticated, but nothing to deliver: a ChangeCipherSpec, an unknown type, an empty
    /// application record, a malformed alert.
    Ignored(u8),
}

/// One direction's AEAD key.
enum Aead {
    Ccm8(Box<ccm::Ccm<Aes128Enc, U8, U12>>),
    Ccm(Box<ccm::Ccm<Aes128Enc, U16, U12>>),
    Gcm(Box<ring_aead::LessSafeKey>),
}

impl Aead {
    fn new(suite: Suite, key: &[u8; 16]) -> Aead {
        let key_array = GenericArray::from_slice(key);
        match suite {
            Suite::Ccm8 => Aead::Ccm8(Box::new(ccm::Ccm::new(key_array))),
            Suite::Ccm => Aead::Ccm(Box::new(ccm::Ccm::new(key_array))),
            Suite::Gcm => {
                // A 16-byte key is always a valid AES-128 key.
                let unbound = ring_aead::UnboundKey::new(&ring_aead::AES_128_GCM, key)
                    .unwrap_or_else(|_| unreachable!("AES-128 takes 16-byte keys"));
                Aead::Gcm(Box::new(ring_aead::LessSafeKey::new(unbound)))
            }
        }
    }

    /// Encrypts `buf[from..]` in place and appends the tag; `false` if the cipher refused
    /// (only inputs past its limit: 2^24 bytes for CCM with a 12-byte nonce, 2^36 for GCM,
    /// while records are at most 2^14).
    fn seal(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut Vec<u8>, from: usize) -> bool {
        let n = GenericArray::from_slice(nonce);
        let body = &mut buf[from..];
        match self {
            Aead::Ccm8(c) => c
                .encrypt_in_place_detached(n, aad, body)
                .map(|tag| buf.extend_from_slice(&tag))
                .is_ok(),
            Aead::Ccm(c) => c
                .encrypt_in_place_detached(n, aad, body)
                .map(|tag| buf.extend_from_slice(&tag))
                .is_ok(),
            Aead::Gcm(k) => {
                let nonce = ring_aead::Nonce::assume_unique_for_key(*nonce);
                k.seal_in_place_separate_tag(nonce, ring_aead::Aad::from(aad), body)
                    .map(|tag| buf.extend_from_slice(tag.as_ref()))
                    .is_ok()
            }
        }
    }

    /// Decrypts `body` in place if `tag` authenticates it.
    fn open(&self, nonce: &[u8; 12], aad: &[u8], body: &mut [u8], tag: &[u8]) -> bool {
        let n = GenericArray::from_slice(nonce);
        match self {
            Aead::Ccm8(c) => c
                .decrypt_in_place_detached(n, aad, body, GenericArray::from_slice(tag))
                .is_ok(),
            Aead::Ccm(c) => c
                .decrypt_in_place_detached(n, aad, body, GenericArray::from_slice(tag))
                .is_ok(),
            Aead::Gcm(k) => {
                let Ok(tag) = ring_aead::Tag::try_from(tag) else {
                    return false;
                };
                let nonce = ring_aead::Nonce::assume_unique_for_key(*nonce);
                k.open_in_place_separate_tag(nonce, ring_aead::Aad::from(aad), tag, body, 0..)
                    .is_ok()
            }
        }
    }
}

/// One direction: its key and salt.
struct Direction {
    aead: Aead,
    salt: [u8; 4],
}

impl Direction {
    fn new(suite: Suite, keys: &DirectionKeys) -> Direction {
        Direction {
            aead: Aead::new(suite, &keys.key),
            salt: keys.salt,
        }
    }

    fn nonce(&self, explicit: &[u8]) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&self.salt);
        nonce[4..].copy_from_slice(explicit);
        nonce
    }
}

/// The record protection of one established DTLS 1.2 session, epoch 1.
pub struct RecordLayer {
    suite: Suite,
    write: Direction,
    read: Direction,
    next_seq: u64,
    window: ReplayWindow,
}

impl std::fmt::Debug for RecordLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordLayer")
            .field("suite", &self.suite)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

/// The additional data of a record: epoch ‖ sequence number ‖ type ‖ version ‖ length.
fn additional_data(seq_field: &[u8], content_type: u8, plaintext_len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(seq_field);
    aad[8] = content_type;
    aad[9..11].copy_from_slice(&VERSION);
    // At most 2^14 + 2048: fits.
    aad[11..13].copy_from_slice(&(plaintext_len as u16).to_be_bytes());
    aad
}

impl RecordLayer {
    /// The records of a session that `role` completed with `keys`; our first record goes
    /// out with `next_seq` (one past the last one OpenSSL wrote in epoch 1).
    pub fn new(suite: Suite, keys: &KeyBlock, role: Role, next_seq: u64) -> RecordLayer {
        let (ours, theirs) = match role {
            Role::Client => (&keys.client, &keys.server),
            Role::Server => (&keys.server, &keys.client),
        };
        RecordLayer {
            suite,
            write: Direction::new(suite, ours),
            read: Direction::new(suite, theirs),
            next_seq,
            window: ReplayWindow::default(),
        }
    }

    /// One protected record carrying `plaintext`, a whole datagram.
    pub fn seal(
        &mut self,
        content_type: ContentType,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(SealError::TooLong(plaintext.len()));
        }
        if self.next_seq > MAX_SEQ {
            return Err(SealError::SequenceExhausted);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut seq_field = [0u8; 8];
        seq_field[..2].copy_from_slice(&EPOCH.to_be_bytes());
        seq_field[2..].copy_from_slice(&seq.to_be_bytes()[2..]);
        let tag_len = self.suite.tag_len();
        let fragment_len = EXPLICIT_NONCE_LEN + plaintext.len() + tag_len;
        let mut record = Vec::with_capacity(HEADER_LEN + fragment_len);
        record.push(content_type as u8);
        record.extend_from_slice(&VERSION);
        record.extend_from_slice(&seq_field);
        record.extend_from_slice(&(fragment_len as u16).to_be_bytes());
        record.extend_from_slice(&seq_field);
        let body_at = record.len();
        record.extend_from_slice(plaintext);
        let aad = additional_data(&seq_field, content_type as u8, plaintext.len());
        let nonce = self.write.nonce(&seq_field);
        if !self.write.aead.seal(&nonce, &aad, &mut record, body_at) {
            return Err(SealError::Cipher);
        }
        Ok(record)
    }

    /// Takes the first record off `datagram` (advancing it) and opens it; `None` once the
    /// datagram is used up.
    pub fn open_next(&mut self, datagram: &mut &[u8]) -> Option<Inbound> {
        if datagram.is_empty() {
            return None;
        }
        let Some((header, fragment, rest)) = split_record(datagram) else {
            *datagram = &[];
            return Some(Inbound::Discarded(Discard::Malformed));
        };
        *datagram = rest;
        Some(self.open(header, fragment))
    }

    fn open(&mut self, header: &[u8], fragment: &[u8]) -> Inbound {
        let content_type = header[0];
        let epoch = header_epoch(header);
        if epoch != EPOCH {
            return Inbound::Discarded(Discard::OtherEpoch(epoch));
        }
        let seq_field = &header[3..11];
        let seq = header_sequence(header);
        if !self.window.is_fresh(seq) {
            return Inbound::Discarded(Discard::Replayed(seq));
        }
        let tag_len = self.suite.tag_len();
        if fragment.len() < EXPLICIT_NONCE_LEN + tag_len
            || fragment.len() - EXPLICIT_NONCE_LEN - tag_len > MAX_PLAINTEXT
        {
            return Inbound::Discarded(Discard::Malformed);
        }
        let (explicit, sealed) = fragment.split_at(EXPLICIT_NONCE_LEN);
        let (ciphertext, tag) = sealed.split_at(sealed.len() - tag_len);
        let aad = additional_data(seq_field, content_type, ciphertext.len());
        let nonce = self.read.nonce(explicit);
        let mut plaintext = ciphertext.to_vec();
        if !self.read.aead.open(&nonce, &aad, &mut plaintext, tag) {
            return Inbound::Discarded(Discard::Unauthentic);
        }
        self.window.accept(seq);
        classify(content_type, plaintext)
    }
}

/// What an authenticated record means to the session.
fn classify(content_type: u8, plaintext: Vec<u8>) -> Inbound {
    const DATA: u8 = ContentType::ApplicationData as u8;
    const ALERT: u8 = ContentType::Alert as u8;
    const HANDSHAKE: u8 = ContentType::Handshake as u8;
    const CHANGE_CIPHER_SPEC: u8 = ContentType::ChangeCipherSpec as u8;
    match content_type {
        DATA if !plaintext.is_empty() => Inbound::Data(plaintext),
        ALERT => match plaintext[..] {
            [level, description] => Inbound::Alert { level, description },
            _ => Inbound::Discarded(Discard::Ignored(content_type)),
        },
        HANDSHAKE => Inbound::Handshake(plaintext),
        // A ChangeCipherSpec after the handshake changes nothing (no renegotiation).
        CHANGE_CIPHER_SPEC => Inbound::Discarded(Discard::Ignored(content_type)),
        _ => Inbound::Discarded(Discard::Ignored(content_type)),
    }
}

/// `(header, fragment, rest)` of the first record in `datagram`, if well formed.
fn split_record(datagram: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let header = datagram.get(..HEADER_LEN)?;
    if header[1..3] != VERSION {
        return None;
    }
    let len = header_length(header);
    let fragment = datagram.get(HEADER_LEN..HEADER_LEN + len)?;
    let rest = &datagram[HEADER_LEN + len..];
    Some((header, fragment, rest))
}

/// The highest sequence number of an `epoch` record among the records in `datagram` (what
/// OpenSSL wrote, read from the pipe), if any.
pub fn highest_sequence(datagram: &[u8], epoch: u16) -> Option<u64> {
    let mut rest = datagram;
    let mut highest = None;
    while let Some(header) = rest.get(..HEADER_LEN) {
        if header_epoch(header) == epoch {
            highest = highest.max(Some(header_sequence(header)));
        }
        rest = rest
            .get(HEADER_LEN + header_length(header)..)
            .unwrap_or_default();
    }
    highest
}

// The fields of a record header (`HEADER_LEN` bytes: type, version, epoch, sequence
// number, length).

fn header_epoch(header: &[u8]) -> u16 {
    u16::from_be_bytes([header[3], header[4]])
}

fn header_sequence(header: &[u8]) -> u64 {
    header[5..11]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

fn header_length(header: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([header[11], header[12]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::key_block::expand;

    fn pair(suite: Suite) -> (RecordLayer, RecordLayer) {
        let keys = expand(&[3u8; 48], &[1u8; 32], &[2u8; 32]);
        (
            RecordLayer::new(suite, &keys, Role::Client, 1),
            RecordLayer::new(suite, &keys, Role::Server, 1),
        )
    }

    fn open_all(layer: &mut RecordLayer, datagram: &[u8]) -> Vec<Inbound> {
        let mut rest = datagram;
        std::iter::from_fn(|| layer.open_next(&mut rest)).collect()
    }

    #[test]
    fn each_suite_carries_data_both_ways() {
        for suite in [Suite::Ccm8, Suite::Ccm, Suite::Gcm] {
            let (mut client, mut server) = pair(suite);
            let up = client
                .seal(ContentType::ApplicationData, b"GET")
                .expect("seal");
            assert_eq!(up.len(), HEADER_LEN + 8 + 3 + suite.tag_len(), "{suite:?}");
            assert_eq!(open_all(&mut server, &up), [Inbound::Data(b"GET".to_vec())]);
            let down = server
                .seal(ContentType::ApplicationData, b"2.05")
                .expect("seal");
            assert_eq!(
                open_all(&mut client, &down),
                [Inbound::Data(b"2.05".to_vec())]
            );
        }
    }

    #[test]
    fn the_header_names_epoch_one_and_the_next_sequence_number() {
        let (mut client, _) = pair(Suite::Ccm8);
        let first = client
            .seal(ContentType::ApplicationData, b"a")
            .expect("seal");
        let second = client
            .seal(ContentType::ApplicationData, b"a")
            .expect("seal");
        assert_eq!(first[..3], [23, 0xFE, 0xFD]);
        assert_eq!(first[3..11], [0, 1, 0, 0, 0, 0, 0, 1]);
        assert_eq!(second[3..11], [0, 1, 0, 0, 0, 0, 0, 2]);
        // The explicit nonce repeats the epoch and sequence number.
        assert_eq!(first[13..21], first[3..11]);
        assert_eq!(highest_sequence(&[first, second].concat(), 1), Some(2));
    }

    #[test]
    fn a_replayed_record_is_delivered_once() {
        let (mut client, mut server) = pair(Suite::Ccm8);
        let up = client
            .seal(ContentType::ApplicationData, b"x")
            .expect("seal");
        assert_eq!(open_all(&mut server, &up), [Inbound::Data(b"x".to_vec())]);
        assert_eq!(
            open_all(&mut server, &up),
            [Inbound::Discarded(Discard::Replayed(1))]
        );
    }

    #[test]
    fn a_tampered_record_is_discarded_and_does_not_move_the_window() {
        let (mut client, mut server) = pair(Suite::Ccm);
        let up = client
            .seal(ContentType::ApplicationData, b"abc")
            .expect("seal");
        for at in [HEADER_LEN - 3, HEADER_LEN + 2, HEADER_LEN + 9, up.len() - 1] {
            let mut bad = up.clone();
            bad[at] ^= 1;
            assert!(
                matches!(open_all(&mut server, &bad)[..], [Inbound::Discarded(_)]),
                "byte {at}"
            );
        }
        assert_eq!(open_all(&mut server, &up), [Inbound::Data(b"abc".to_vec())]);
    }

    #[test]
    fn our_own_records_do_not_open_with_our_read_key() {
        let (mut client, _) = pair(Suite::Gcm);
        let up = client
            .seal(ContentType::ApplicationData, b"loop")
            .expect("seal");
        assert_eq!(
            open_all(&mut client, &up),
            [Inbound::Discarded(Discard::Unauthentic)]
        );
    }

    #[test]
    fn several_records_in_one_datagram_are_opened_in_order() {
        let (mut client, mut server) = pair(Suite::Ccm8);
        let datagram = [
            client
                .seal(ContentType::ApplicationData, b"1")
                .expect("seal"),
            client
                .seal(ContentType::Handshake, b"\x14finished")
                .expect("seal"),
            client.seal(ContentType::Alert, &[1, 0]).expect("seal"),
        ]
        .concat();
        assert_eq!(
            open_all(&mut server, &datagram),
            [
                Inbound::Data(b"1".to_vec()),
                Inbound::Handshake(b"\x14finished".to_vec()),
                Inbound::Alert {
                    level: 1,
                    description: 0
                },
            ]
        );
    }

    #[test]
    fn malformed_and_foreign_records_are_discarded_without_panic() {
        let (mut client, mut server) = pair(Suite::Ccm8);
        let good = client
            .seal(ContentType::ApplicationData, b"ok")
            .expect("seal");
        let mut epoch0 = good.clone();
        epoch0[4] = 0;
        assert_eq!(
            open_all(&mut server, &epoch0),
            [Inbound::Discarded(Discard::OtherEpoch(0))]
        );
        let mut long = good.clone();
        long[12] = 0xFF;
        assert_eq!(
            open_all(&mut server, &long),
            [Inbound::Discarded(Discard::Malformed)]
        );
        for cut in 0..good.len() {
            let _ = open_all(&mut server, &good[..cut]);
        }
        let mut short = good[..HEADER_LEN].to_vec();
        short[11..13].copy_from_slice(&[0, 0]);
        assert_eq!(
            open_all(&mut server, &short),
            [Inbound::Discarded(Discard::Malformed)]
        );
        assert_eq!(
            open_all(&mut server, &good),
            [Inbound::Data(b"ok".to_vec())]
        );
    }

    #[test]
    fn empty_application_data_and_unknown_types_are_not_delivered() {
        let (mut client, mut server) = pair(Suite::Ccm8);
        let empty = client
            .seal(ContentType::ApplicationData, b"")
            .expect("seal");
        assert_eq!(
            open_all(&mut server, &empty),
            [Inbound::Discarded(Discard::Ignored(23))]
        );
        let ccs = client
            .seal(ContentType::ChangeCipherSpec, &[1])
            .expect("seal");
        assert_eq!(
            open_all(&mut server, &ccs),
            [Inbound::Discarded(Discard::Ignored(20))]
        );
    }

    #[test]
    fn the_sequence_numbers_run_out_at_two_to_the_48() {
        let keys = expand(&[3u8; 48], &[1u8; 32], &[2u8; 32]);
        let mut layer = RecordLayer::new(Suite::Ccm8, &keys, Role::Client, MAX_SEQ);
        assert!(layer.seal(ContentType::ApplicationData, b"last").is_ok());
        assert_eq!(
            layer.seal(ContentType::ApplicationData, b"one more"),
            Err(SealError::SequenceExhausted)
        );
        assert_eq!(
            layer.seal(ContentType::ApplicationData, &vec![0; MAX_PLAINTEXT + 1]),
            Err(SealError::TooLong(MAX_PLAINTEXT + 1))
        );
    }
}
