//! Stateless DTLS cookies (RFC 6347 §4.2.1): ClientHello parsing, the cookie MAC under a
//! rotating secret, and the HelloVerifyRequest, all as pure functions of their inputs.
//!
//! The mux asks [`CookieJar::check`] about every epoch-0 handshake datagram from an address
//! it keeps no state for. A ClientHello without a valid cookie is answered with a
//! HelloVerifyRequest built here and nothing is remembered; only a ClientHello carrying a
//! valid cookie (which proves the client receives at its source address) gets a pipe and
//! an OpenSSL handshake.
//!
//! The cookie is HMAC-SHA256 over the client's address and port and the ClientHello fields a
//! client must repeat unchanged (version, random, session id, cipher suites, compression
//! methods), keyed by a secret replaced every [`ROTATION`]; the previous secret still
//! verifies, so a cookie stays good for one to two periods. Time is an argument.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::hmac;

/// How often the cookie secret is replaced.
pub const ROTATION: Duration = Duration::from_secs(60);

/// Cookie length: a full HMAC-SHA256.
pub const COOKIE_LEN: usize = 32;

/// DTLS record header length (type, version, epoch, sequence number, length).
const RECORD_HEADER: usize = 13;
/// DTLS handshake header length (type, length, message_seq, fragment offset and length).
const HANDSHAKE_HEADER: usize = 12;
/// Record content type: handshake.
const CONTENT_HANDSHAKE: u8 = 22;
/// Handshake type: client_hello.
const CLIENT_HELLO: u8 = 1;
/// Handshake type: hello_verify_request.
const HELLO_VERIFY_REQUEST: u8 = 3;
/// DTLS 1.0 on the wire; RFC 6347 §4.2.1 has DTLS 1.2 servers send it in the HVR.
const DTLS_1_0: [u8; 2] = [0xFE, 0xFF];

/// Why a datagram is not a usable ClientHello. Every variant is the peer's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// Not a DTLS handshake record in epoch 0.
    #[error("not an epoch-0 DTLS handshake record")]
    NotHandshake,
    /// A handshake message other than ClientHello.
    #[error("not a ClientHello")]
    NotClientHello,
    /// A ClientHello split over several fragments (never the case for a first flight).
    #[error("fragmented ClientHello")]
    Fragmented,
    /// The bytes end before the field named.
    #[error("truncated at {0}")]
    Truncated(&'static str),
}

/// The fields of a ClientHello that the cookie covers, borrowed from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// The record's 48-bit sequence number (the HVR echoes it).
    pub record_seq: [u8; 6],
    /// The handshake message_seq (0 first, 1 after a HelloVerifyRequest).
    pub message_seq: u16,
    /// client_version.
    pub version: [u8; 2],
    /// The 32-byte client random.
    pub random: &'a [u8],
    /// The session id (0–32 bytes).
    pub session_id: &'a [u8],
    /// The cookie (empty in a first ClientHello).
    pub cookie: &'a [u8],
    /// The cipher suite list, raw.
    pub cipher_suites: &'a [u8],
    /// The compression method list, raw.
    pub compression: &'a [u8],
}

/// A cursor over peer bytes: every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        let head = self.bytes.get(..n).ok_or(HelloError::Truncated(what))?;
        self.bytes = self.bytes.get(n..).unwrap_or_default();
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        self.take(1, what)?
            .first()
            .copied()
            .ok_or(HelloError::Truncated(what))
    }

    fn uint(&mut self, n: usize, what: &'static str) -> Result<usize, HelloError> {
        Ok(self
            .take(n, what)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)))
    }

    /// A vector with an `n`-byte length prefix.
    fn vector(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        let len = self.uint(n, what)?;
        self.take(len, what)
    }
}

/// Whether `datagram` starts with an epoch-0 DTLS handshake record (what a new peer sends).
pub fn is_epoch0_handshake(datagram: &[u8]) -> bool {
    datagram.first() == Some(&CONTENT_HANDSHAKE)
        && datagram.get(1) == Some(&0xFE)
        && datagram.get(3..5) == Some(&[0, 0][..])
}

/// Parses the first record of `datagram` as an unfragmented DTLS ClientHello. Never panics.
pub fn parse_client_hello(datagram: &[u8]) -> Result<ClientHello<'_>, HelloError> {
    if !is_epoch0_handshake(datagram) {
        return Err(HelloError::NotHandshake);
    }
    let mut record = Reader { bytes: datagram };
    record.take(5, "record header")?;
    let seq = record.take(6, "record sequence")?;
    let fragment = record.vector(2, "record body")?;
    let mut hs = Reader { bytes: fragment };
    if hs.u8("handshake type")? != CLIENT_HELLO {
        return Err(HelloError::NotClientHello);
    }
    let length = hs.uint(3, "handshake length")?;
    let message_seq = hs.uint(2, "message_seq")?;
    let offset = hs.uint(3, "fragment offset")?;
    let fragment_len = hs.uint(3, "fragment length")?;
    if offset != 0 || fragment_len != length {
        return Err(HelloError::Fragmented);
    }
    let mut body = Reader {
        bytes: hs.take(length, "ClientHello body")?,
    };
    let version = body.take(2, "client_version")?;
    Ok(ClientHello {
        record_seq: seq.try_into().map_err(|_| HelloError::Truncated("seq"))?,
        message_seq: u16::try_from(message_seq).unwrap_or(u16::MAX),
        version: version
            .try_into()
            .map_err(|_| HelloError::Truncated("ver"))?,
        random: body.take(32, "random")?,
        session_id: body.vector(1, "session_id")?,
        cookie: body.vector(1, "cookie")?,
        cipher_suites: body.vector(2, "cipher_suites")?,
        compression: body.vector(1, "compression_methods")?,
    })
}

/// The HelloVerifyRequest record answering `hello` with `cookie`: record type 22, version
/// DTLS 1.0, epoch 0, the ClientHello's record sequence number, message_seq 0.
pub fn hello_verify_request(hello: &ClientHello<'_>, cookie: &[u8]) -> Vec<u8> {
    let cookie = cookie.get(..cookie.len().min(255)).unwrap_or_default();
    let body_len = 2 + 1 + cookie.len();
    let hs_len = HANDSHAKE_HEADER + body_len;
    let mut out = Vec::with_capacity(RECORD_HEADER + hs_len);
    out.push(CONTENT_HANDSHAKE);
    out.extend_from_slice(&DTLS_1_0);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&hello.record_seq);
    out.extend_from_slice(&u16::try_from(hs_len).unwrap_or(u16::MAX).to_be_bytes());
    out.push(HELLO_VERIFY_REQUEST);
    out.extend_from_slice(&u24(body_len));
    out.extend_from_slice(&[0, 0]); // message_seq
    out.extend_from_slice(&[0, 0, 0]); // fragment offset
    out.extend_from_slice(&u24(body_len));
    out.extend_from_slice(&DTLS_1_0);
    out.push(u8::try_from(cookie.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(cookie);
    out
}

fn u24(n: usize) -> [u8; 3] {
    let [_, a, b, c] = u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
    [a, b, c]
}

/// HMAC-SHA256 under `key` over the peer's address and port and the ClientHello fields a
/// client repeats unchanged. Each field is length-prefixed so no two inputs collide.
///
/// `ring`'s key keeps the keyed inner and outer hash states, so a cookie costs the
/// message's own compressions only (OpenSSL 3.0's `PKey::hmac` + `Signer` fetched the
/// algorithm from the provider on every call: a fifth of the CPU of a handshake).
pub fn cookie_mac(key: &hmac::Key, peer: SocketAddr, hello: &ClientHello<'_>) -> [u8; COOKIE_LEN] {
    let v4;
    let v6;
    let ip: &[u8] = match peer.ip() {
        IpAddr::V4(ip) => {
            v4 = ip.octets();
            &v4
        }
        IpAddr::V6(ip) => {
            v6 = ip.octets();
            &v6
        }
    };
    let mut mac = hmac::Context::with_key(key);
    for field in [
        ip,
        &peer.port().to_be_bytes(),
        &hello.version,
        hello.random,
        hello.session_id,
        hello.cipher_suites,
        hello.compression,
    ] {
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        mac.update(&len.to_be_bytes());
        mac.update(field);
    }
    let mut cookie = [0u8; COOKIE_LEN];
    cookie.copy_from_slice(mac.sign().as_ref());
    cookie
}

fn mac_key(secret: &[u8; 32]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret)
}

/// The current and the previous cookie secret. Pure: time and fresh randomness are
/// arguments.
#[derive(Clone)]
pub struct CookieSecrets {
    current: hmac::Key,
    previous: Option<hmac::Key>,
    rotated_at: Instant,
    period: Duration,
}

impl std::fmt::Debug for CookieSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieSecrets")
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

impl CookieSecrets {
    /// Starts with `secret` at `now`, rotating every `period`.
    pub fn new(secret: [u8; 32], now: Instant, period: Duration) -> Self {
        CookieSecrets {
            current: mac_key(&secret),
            previous: None,
            rotated_at: now,
            period,
        }
    }

    /// Whether a rotation is due at `now`.
    pub fn rotation_due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.rotated_at) >= self.period
    }

    /// Replaces the current secret with `fresh`, keeping the current one as previous. After
    /// two periods without traffic both are replaced, so no cookie older than that verifies.
    pub fn rotate(&mut self, now: Instant, fresh: [u8; 32]) {
        let idle = now.saturating_duration_since(self.rotated_at);
        let current = std::mem::replace(&mut self.current, mac_key(&fresh));
        self.previous = (idle < self.period * 2).then_some(current);
        self.rotated_at = now;
    }

    /// The cookie to send to `peer` for `hello`.
    pub fn issue(&self, peer: SocketAddr, hello: &ClientHello<'_>) -> [u8; COOKIE_LEN] {
        cookie_mac(&self.current, peer, hello)
    }

    /// Whether `hello` carries a cookie issued to `peer` under the current or previous secret.
    pub fn verify(&self, peer: SocketAddr, hello: &ClientHello<'_>) -> bool {
        let matches = |key: &hmac::Key| {
            let mac = cookie_mac(key, peer, hello);
            mac.len() == hello.cookie.len() && openssl::memcmp::eq(&mac, hello.cookie)
        };
        !hello.cookie.is_empty()
            && (matches(&self.current) || self.previous.as_ref().is_some_and(matches))
    }
}

/// What to do with a datagram from a peer without state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloVerdict {
    /// A ClientHello with a valid cookie: create the peer's state and start the handshake.
    Admit,
    /// A ClientHello without a cookie: send this HelloVerifyRequest, keep nothing.
    Verify(Vec<u8>),
    /// A ClientHello with a wrong or expired cookie: drop it.
    BadCookie,
    /// Not a usable ClientHello: drop it.
    Invalid(HelloError),
}

/// The server's cookie secrets, shared by the mux (stateless answers) and the DTLS server
/// (which checks the cookie again before OpenSSL continues the handshake).
#[derive(Debug)]
pub struct CookieJar {
    secrets: Mutex<CookieSecrets>,
}

impl CookieJar {
    /// A jar with a random secret, rotating every [`ROTATION`].
    pub fn new() -> Result<Self, openssl::error::ErrorStack> {
        Ok(CookieJar {
            secrets: Mutex::new(CookieSecrets::new(
                fresh_secret()?,
                Instant::now(),
                ROTATION,
            )),
        })
    }

    /// Decides about one datagram from `peer` at `now` (see [`HelloVerdict`]).
    pub fn check(&self, now: Instant, peer: SocketAddr, datagram: &[u8]) -> HelloVerdict {
        let hello = match parse_client_hello(datagram) {
            Ok(hello) => hello,
            Err(e) => return HelloVerdict::Invalid(e),
        };
        let mut secrets = self
            .secrets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if secrets.rotation_due(now) {
            if let Ok(fresh) = fresh_secret() {
                secrets.rotate(now, fresh);
            }
        }
        if hello.cookie.is_empty() {
            let cookie = secrets.issue(peer, &hello);
            return HelloVerdict::Verify(hello_verify_request(&hello, &cookie));
        }
        if secrets.verify(peer, &hello) {
            HelloVerdict::Admit
        } else {
            HelloVerdict::BadCookie
        }
    }
}

fn fresh_secret() -> Result<[u8; 32], openssl::error::ErrorStack> {
    let mut secret = [0u8; 32];
    openssl::rand::rand_bytes(&mut secret)?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal DTLS 1.2 ClientHello record with `cookie`.
    /// The cookie `secrets` issue for the cookieless first ClientHello of [`peer`].
    fn issue_for_first_hello(secrets: &CookieSecrets) -> Vec<u8> {
        let first = client_hello(0, 0, b"");
        secrets
            .issue(peer(), &parse_client_hello(&first).unwrap())
            .to_vec()
    }

    pub(crate) fn client_hello(seq: u8, message_seq: u16, cookie: &[u8]) -> Vec<u8> {
        let mut body = vec![0xFE, 0xFD];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.push(u8::try_from(cookie.len()).unwrap());
        body.extend_from_slice(cookie);
        body.extend_from_slice(&[0, 2, 0xC0, 0xA8]); // PSK-AES128-CCM8
        body.extend_from_slice(&[1, 0]); // null compression
        let mut hs = vec![CLIENT_HELLO];
        hs.extend_from_slice(&u24(body.len()));
        hs.extend_from_slice(&message_seq.to_be_bytes());
        hs.extend_from_slice(&[0, 0, 0]);
        hs.extend_from_slice(&u24(body.len()));
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, seq];
        rec.extend_from_slice(&u16::try_from(hs.len()).unwrap().to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:5000".parse().unwrap()
    }

    #[test]
    fn parses_a_client_hello() {
        let bytes = client_hello(3, 0, b"");
        let hello = parse_client_hello(&bytes).unwrap();
        assert_eq!(hello.record_seq, [0, 0, 0, 0, 0, 3]);
        assert_eq!(hello.version, [0xFE, 0xFD]);
        assert_eq!(hello.random, &[7u8; 32][..]);
        assert!(hello.cookie.is_empty());
        assert_eq!(hello.cipher_suites, &[0xC0, 0xA8][..]);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = client_hello(0, 0, b"abc");
        for len in 0..bytes.len() {
            assert!(parse_client_hello(&bytes[..len]).is_err(), "prefix {len}");
        }
        assert!(parse_client_hello(&bytes).is_ok());
    }

    #[test]
    fn rejects_other_records_and_fragments() {
        assert_eq!(parse_client_hello(&[23; 40]), Err(HelloError::NotHandshake));
        let mut server_hello = client_hello(0, 0, b"");
        server_hello[13] = 2;
        assert_eq!(
            parse_client_hello(&server_hello),
            Err(HelloError::NotClientHello)
        );
        let mut fragment = client_hello(0, 0, b"");
        fragment[20] = 1; // fragment offset low byte
        assert_eq!(parse_client_hello(&fragment), Err(HelloError::Fragmented));
    }

    #[test]
    fn hello_verify_request_layout() {
        let bytes = client_hello(9, 0, b"");
        let hello = parse_client_hello(&bytes).unwrap();
        let hvr = hello_verify_request(&hello, &[0xAB; 32]);
        assert_eq!(&hvr[..5], &[22, 0xFE, 0xFF, 0, 0]);
        assert_eq!(&hvr[5..11], &[0, 0, 0, 0, 0, 9], "echoes the record seq");
        assert_eq!(
            u16::from_be_bytes([hvr[11], hvr[12]]) as usize,
            hvr.len() - 13
        );
        assert_eq!(hvr[13], HELLO_VERIFY_REQUEST);
        assert_eq!(&hvr[14..17], &[0, 0, 35]);
        assert_eq!(&hvr[17..19], &[0, 0], "message_seq 0");
        assert_eq!(&hvr[22..25], &[0, 0, 35]);
        assert_eq!(&hvr[25..27], &DTLS_1_0);
        assert_eq!(hvr[27], 32);
        assert_eq!(&hvr[28..], &[0xAB; 32]);
    }

    /// RFC 6347 §4.2.1: the HelloVerifyRequest must not amplify. The smallest datagram the
    /// parser takes as a ClientHello (empty session id, cipher suites and compression) is
    /// still no smaller than the HVR sent for it.
    #[test]
    fn a_hello_verify_request_is_never_larger_than_the_client_hello() {
        let mut body = vec![0xFE, 0xFD];
        body.extend_from_slice(&[7u8; 32]);
        body.extend_from_slice(&[0, 0, 0, 0, 0]); // session id, cookie, suites, compression
        let mut hs = vec![CLIENT_HELLO];
        hs.extend_from_slice(&u24(body.len()));
        hs.extend_from_slice(&[0, 0, 0, 0, 0]);
        hs.extend_from_slice(&u24(body.len()));
        hs.extend_from_slice(&body);
        let mut smallest = vec![22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 0];
        smallest.extend_from_slice(&u16::try_from(hs.len()).unwrap().to_be_bytes());
        smallest.extend_from_slice(&hs);
        let jar = CookieJar::new().unwrap();
        let HelloVerdict::Verify(hvr) = jar.check(Instant::now(), peer(), &smallest) else {
            panic!("the smallest ClientHello gets a HelloVerifyRequest");
        };
        assert!(
            hvr.len() <= smallest.len(),
            "HVR {} bytes for a {}-byte ClientHello",
            hvr.len(),
            smallest.len()
        );
        assert!(parse_client_hello(&smallest[..smallest.len() - 1]).is_err());
    }

    #[test]
    fn cookie_binds_address_port_and_hello() {
        let t0 = Instant::now();
        let secrets = CookieSecrets::new([1; 32], t0, ROTATION);
        let cookie = issue_for_first_hello(&secrets);
        assert_eq!(cookie.len(), COOKIE_LEN);
        let second = client_hello(1, 1, &cookie);
        let hello = parse_client_hello(&second).unwrap();
        assert!(secrets.verify(peer(), &hello));
        assert!(!secrets.verify("127.0.0.1:5001".parse().unwrap(), &hello));
        assert!(!secrets.verify("127.0.0.2:5000".parse().unwrap(), &hello));
        let mut other_random = second.clone();
        other_random[30] ^= 1;
        assert!(!secrets.verify(peer(), &parse_client_hello(&other_random).unwrap()));
        let empty = client_hello(1, 1, b"");
        assert!(!secrets.verify(peer(), &parse_client_hello(&empty).unwrap()));
    }

    #[test]
    fn previous_secret_verifies_until_the_next_rotation() {
        let t0 = Instant::now();
        let mut secrets = CookieSecrets::new([1; 32], t0, ROTATION);
        let cookie = issue_for_first_hello(&secrets);
        let second = client_hello(1, 1, &cookie);
        let hello = parse_client_hello(&second).unwrap();
        assert!(!secrets.rotation_due(t0 + ROTATION / 2));
        assert!(secrets.rotation_due(t0 + ROTATION));
        secrets.rotate(t0 + ROTATION, [2; 32]);
        assert!(secrets.verify(peer(), &hello), "previous secret accepted");
        secrets.rotate(t0 + ROTATION * 2, [3; 32]);
        assert!(
            !secrets.verify(peer(), &hello),
            "two rotations later: refused"
        );
    }

    #[test]
    fn a_long_idle_gap_drops_both_secrets() {
        let t0 = Instant::now();
        let mut secrets = CookieSecrets::new([1; 32], t0, ROTATION);
        let cookie = issue_for_first_hello(&secrets);
        secrets.rotate(t0 + ROTATION * 5, [2; 32]);
        let second = client_hello(1, 1, &cookie);
        assert!(!secrets.verify(peer(), &parse_client_hello(&second).unwrap()));
    }

    #[test]
    fn jar_answers_verifies_and_refuses() {
        let jar = CookieJar::new().unwrap();
        let now = Instant::now();
        let first = client_hello(4, 0, b"");
        let HelloVerdict::Verify(hvr) = jar.check(now, peer(), &first) else {
            panic!("cookieless ClientHello must get a HelloVerifyRequest");
        };
        let cookie = &hvr[28..];
        let second = client_hello(5, 1, cookie);
        assert_eq!(jar.check(now, peer(), &second), HelloVerdict::Admit);
        let forged = client_hello(5, 1, &[0; 32]);
        assert_eq!(jar.check(now, peer(), &forged), HelloVerdict::BadCookie);
        assert_eq!(
            jar.check(now, peer(), &[1]),
            HelloVerdict::Invalid(HelloError::NotHandshake)
        );
    }
}
