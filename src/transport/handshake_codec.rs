//! DTLS 1.2 handshake framing and the PSK key schedule, for the handshakes done without
//! OpenSSL: the PSK server ([`super::psk_server`]) and the bench's PSK client.
//!
//! Records and handshake messages are split and built whole (a message in one fragment:
//! PSK flights are far below any MTU); the premaster secret is RFC 4279's, the master secret
//! RFC 5246's or RFC 7627's (extended), Finished RFC 5246 §7.4.9, all over SHA-256.

use ring::digest;

use super::key_block;
use super::record_layer::{ContentType, HEADER_LEN};

/// DTLS 1.2 on the wire.
pub const VERSION: [u8; 2] = [0xFE, 0xFD];
pub const HANDSHAKE_HEADER_LEN: usize = 12;
pub const VERIFY_DATA_LEN: usize = 12;
/// The extended_master_secret extension (RFC 7627).
pub const EXTENDED_MASTER_SECRET: [u8; 2] = [0x00, 0x17];
/// The renegotiation_info extension (RFC 5746).
pub const RENEGOTIATION_INFO: [u8; 2] = [0xFF, 0x01];
/// TLS_EMPTY_RENEGOTIATION_INFO_SCSV, a cipher suite that stands for an empty
/// renegotiation_info (RFC 5746 §3.3).
pub const EMPTY_RENEGOTIATION_INFO_SCSV: [u8; 2] = [0x00, 0xFF];
/// Longest PSK identity and key taken (OpenSSL's `PSK_MAX_IDENTITY_LEN`, `PSK_MAX_PSK_LEN`).
pub const MAX_IDENTITY_LEN: usize = 256;
pub const MAX_PSK_LEN: usize = 512;

/// Handshake message types (RFC 5246 §7.4, RFC 6347 §4.3.2).
pub mod msg {
    pub const CLIENT_HELLO: u8 = 1;
    pub const SERVER_HELLO: u8 = 2;
    pub const HELLO_VERIFY_REQUEST: u8 = 3;
    pub const SERVER_KEY_EXCHANGE: u8 = 12;
    pub const SERVER_HELLO_DONE: u8 = 14;
    pub const CLIENT_KEY_EXCHANGE: u8 = 16;
    pub const FINISHED: u8 = 20;
}

/// Alert descriptions sent (RFC 5246 §7.2, RFC 4279 §2).
pub mod alert {
    pub const HANDSHAKE_FAILURE: u8 = 40;
    pub const ILLEGAL_PARAMETER: u8 = 47;
    pub const DECODE_ERROR: u8 = 50;
    pub const DECRYPT_ERROR: u8 = 51;
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    pub const PROTOCOL_VERSION: u8 = 70;
    pub const UNKNOWN_PSK_IDENTITY: u8 = 115;
}

/// Bytes that are not what the framing says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("truncated or overlong record")]
    Record,
    #[error("truncated handshake message")]
    Message,
    #[error("fragmented handshake message")]
    Fragmented,
}

/// `(record, rest)`: the first record of `datagram`, header included, any version (a
/// HelloVerifyRequest may come in a DTLS 1.0 record, RFC 6347 §4.2.1).
pub fn split_record(datagram: &[u8]) -> Result<(&[u8], &[u8]), FramingError> {
    let header = datagram.get(..HEADER_LEN).ok_or(FramingError::Record)?;
    let end = HEADER_LEN + usize::from(u16::from_be_bytes([header[11], header[12]]));
    let record = datagram.get(..end).ok_or(FramingError::Record)?;
    Ok((record, &datagram[end..]))
}

/// A record's epoch.
pub fn epoch(record: &[u8]) -> u16 {
    u16::from_be_bytes([record[3], record[4]])
}

/// A record's 48-bit sequence number.
pub fn record_seq(record: &[u8]) -> u64 {
    record[5..11]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// A handshake message's message_seq.
pub fn message_seq(message: &[u8]) -> u16 {
    u16::from_be_bytes([message[4], message[5]])
}

/// `(message, rest)`: the first whole handshake message (header included) of a record.
pub fn split_handshake(fragment: &[u8]) -> Result<(&[u8], &[u8]), FramingError> {
    let header = fragment
        .get(..HANDSHAKE_HEADER_LEN)
        .ok_or(FramingError::Message)?;
    let u24 = |b: &[u8]| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
    let (length, offset, fragment_length) =
        (u24(&header[1..4]), u24(&header[6..9]), u24(&header[9..12]));
    if offset != 0 || fragment_length != length {
        return Err(FramingError::Fragmented);
    }
    let end = HANDSHAKE_HEADER_LEN + length;
    let message = fragment.get(..end).ok_or(FramingError::Message)?;
    Ok((message, &fragment[end..]))
}

/// `body` with a DTLS handshake header (one fragment).
pub fn handshake_message(msg_type: u8, message_seq: u16, body: &[u8]) -> Vec<u8> {
    let len = (body.len() as u32).to_be_bytes();
    let mut m = Vec::with_capacity(HANDSHAKE_HEADER_LEN + body.len());
    m.push(msg_type);
    m.extend_from_slice(&len[1..]);
    m.extend_from_slice(&message_seq.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0]);
    m.extend_from_slice(&len[1..]);
    m.extend_from_slice(body);
    m
}

/// Appends a plaintext epoch-0 record to `out`.
pub fn push_plain_record(out: &mut Vec<u8>, content_type: ContentType, seq: u64, body: &[u8]) {
    out.push(content_type as u8);
    out.extend_from_slice(&VERSION);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&seq.to_be_bytes()[2..]);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}

pub fn push_u16_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The master secret of a PSK handshake: RFC 4279 §2's premaster (N zero bytes and the
/// PSK, each length-prefixed) through RFC 7627's extended derivation when `session_hash`
/// is given (the transcript hash through ClientKeyExchange), else RFC 5246's.
pub fn psk_master_secret(
    psk: &[u8],
    session_hash: Option<&[u8]>,
    client_random: &[u8; 32],
    server_random: &[u8; 32],
) -> [u8; 48] {
    let mut premaster = Vec::with_capacity(4 + 2 * psk.len());
    push_u16_prefixed(&mut premaster, &vec![0; psk.len()]);
    push_u16_prefixed(&mut premaster, psk);
    let mut master = [0u8; 48];
    match session_hash {
        Some(hash) => {
            key_block::prf_sha256(&premaster, b"extended master secret", hash, &mut master)
        }
        None => {
            let mut seed = [0u8; 64];
            seed[..32].copy_from_slice(client_random);
            seed[32..].copy_from_slice(server_random);
            key_block::prf_sha256(&premaster, b"master secret", &seed, &mut master);
        }
    }
    premaster.fill(0);
    master
}

/// The 12 bytes of a Finished: `PRF(master, label, Hash(handshake messages))`.
pub fn finished_data(
    master: &[u8],
    label: &[u8],
    transcript: &digest::Context,
) -> [u8; VERIFY_DATA_LEN] {
    let hash = transcript.clone().finish();
    let mut out = [0u8; VERIFY_DATA_LEN];
    key_block::prf_sha256(master, label, hash.as_ref(), &mut out);
    out
}

/// Whether a received Finished message (header included) carries `expected`, compared in
/// constant time.
pub fn finished_matches(message: &[u8], expected: &[u8; VERIFY_DATA_LEN]) -> bool {
    message.len() == HANDSHAKE_HEADER_LEN + VERIFY_DATA_LEN
        && message[0] == msg::FINISHED
        && message[HANDSHAKE_HEADER_LEN..]
            .iter()
            .zip(expected.iter())
            .fold(0, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// `(type, body)` of each extension in an extensions block (after its length prefix);
/// `None` when the lengths do not add up.
pub fn extensions(mut block: &[u8]) -> Option<Vec<([u8; 2], &[u8])>> {
    let mut out = Vec::new();
    while !block.is_empty() {
        let [t0, t1, l0, l1, rest @ ..] = block else {
            return None;
        };
        let len = usize::from(u16::from_be_bytes([*l0, *l1]));
        out.push(([*t0, *t1], rest.get(..len)?));
        block = &rest[len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_messages_split_and_refuse_truncation_and_fragments() {
        let m = handshake_message(msg::FINISHED, 5, &[9; 12]);
        assert_eq!(message_seq(&m), 5);
        let mut d = Vec::new();
        push_plain_record(&mut d, ContentType::Handshake, 0x0102_0304_0506, &m);
        push_plain_record(&mut d, ContentType::ChangeCipherSpec, 7, &[1]);
        let (first, rest) = split_record(&d).unwrap();
        assert_eq!(record_seq(first), 0x0102_0304_0506);
        assert_eq!(epoch(first), 0);
        let (message, tail) = split_handshake(&first[HEADER_LEN..]).unwrap();
        assert_eq!(message, &m[..]);
        assert!(tail.is_empty());
        assert!(split_record(rest).unwrap().1.is_empty());
        assert_eq!(split_record(&d[..20]), Err(FramingError::Record));
        assert_eq!(split_handshake(&m[..15]), Err(FramingError::Message));
        let mut fragment = m.clone();
        fragment[11] = 4; // fragment_length 4 of 12
        assert_eq!(split_handshake(&fragment), Err(FramingError::Fragmented));
    }

    #[test]
    fn extensions_are_listed_and_a_bad_length_is_refused() {
        let block = [0x00, 0x17, 0, 0, 0xFF, 0x01, 0, 1, 0];
        let ext = extensions(&block).unwrap();
        assert_eq!(
            ext,
            [
                (EXTENDED_MASTER_SECRET, &[][..]),
                (RENEGOTIATION_INFO, &[0][..])
            ]
        );
        assert!(extensions(&block[..7]).is_none());
        assert!(extensions(&[0x00]).is_none());
    }

    #[test]
    fn a_finished_is_checked_byte_for_byte() {
        let expected = [3u8; VERIFY_DATA_LEN];
        let good = handshake_message(msg::FINISHED, 2, &expected);
        assert!(finished_matches(&good, &expected));
        let mut bad = good.clone();
        bad[HANDSHAKE_HEADER_LEN + 11] ^= 1;
        assert!(!finished_matches(&bad, &expected));
        assert!(!finished_matches(&good[..20], &expected));
    }
}
