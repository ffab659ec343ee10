//! A lean DTLS 1.2 PSK client handshake for the handshake load generator (sans-IO).
//!
//! `bench handshakes` must offer the servers more handshakes than they can take, on the
//! same two cores. An OpenSSL client costs about as much per handshake as either server, so
//! it measured the client as much as the servers. This one does only what a PSK handshake
//! needs, with the project's own record layer and PRF:
//!
//! * flight 1/3: ClientHello offering `TLS_PSK_WITH_AES_128_CCM_8` and extended master
//!   secret (RFC 7627), again with the cookie of a HelloVerifyRequest (RFC 6347 §4.2.1);
//! * flight 4: ServerHello, an optional ServerKeyExchange (the identity hint, ignored),
//!   ServerHelloDone;
//! * flight 5: ClientKeyExchange (the identity), ChangeCipherSpec, Finished (epoch 1);
//! * flight 6: the server's ChangeCipherSpec and Finished, whose verify data is checked.
//!
//! Bytes in, bytes out, no clock: the caller sends what [`Step::Send`] carries, feeds every
//! datagram back to [`PskHandshake::on_datagram`], and calls [`PskHandshake::resend`] when
//! its retransmission timer fires. Fragmented handshake messages, renegotiation and other
//! suites are refused with an error, not handled: the servers under test send none.

use ring::digest;

use crate::transport::handshake_codec::{
    self as codec, EXTENDED_MASTER_SECRET, FramingError, HANDSHAKE_HEADER_LEN, VERIFY_DATA_LEN,
    VERSION, msg,
};
use crate::transport::key_block::{self, Suite};
use crate::transport::record_layer::{ContentType, HEADER_LEN, Inbound, RecordLayer, Role};

const PSK_AES_128_CCM_8: [u8; 2] = [0xC0, 0xA8];

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("the server sent a fatal alert ({0})")]
    Alert(u8),
    #[error("malformed {0} from the server")]
    Malformed(&'static str),
    #[error("the server chose what this client does not do: {0}")]
    Unsupported(&'static str),
    #[error("the server's Finished does not verify")]
    BadFinished,
    #[error("sealing the Finished failed")]
    Seal,
}

/// What the caller does next.
#[derive(Debug)]
pub enum Step {
    /// Send this datagram (and keep it for [`PskHandshake::resend`]).
    Send(Vec<u8>),
    /// Nothing to send: wait for more datagrams.
    Wait,
    /// The handshake is complete: [`PskHandshake::into_records`] gives the session.
    Established,
}

/// One record of our current flight, kept so a retransmission gets fresh sequence numbers.
enum FlightRecord {
    Plain(ContentType, Vec<u8>),
    Protected(Vec<u8>),
}

enum State {
    /// ClientHello sent without a cookie; it is the transcript's start if the server skips
    /// the cookie exchange.
    AwaitHelloVerify {
        first_hello: Vec<u8>,
    },
    /// ClientHello sent (with a cookie, or accepted without one).
    AwaitHelloDone {
        server: Option<ServerHello>,
    },
    /// Our Finished is out; the server's must match `expected`.
    AwaitFinished {
        records: RecordLayer,
        expected: [u8; VERIFY_DATA_LEN],
    },
    Established(RecordLayer),
    Failed,
}

struct ServerHello {
    random: [u8; 32],
    extended_master_secret: bool,
}

/// A PSK client handshake in progress.
pub struct PskHandshake {
    identity: Vec<u8>,
    psk: Vec<u8>,
    client_random: [u8; 32],
    transcript: digest::Context,
    /// Our next handshake message_seq and epoch-0 record sequence number.
    message_seq: u16,
    record_seq: u64,
    /// The server's next message_seq: anything lower is a retransmission.
    server_seq: u16,
    flight: Vec<FlightRecord>,
    state: State,
}

impl PskHandshake {
    /// A handshake as `identity` with `psk`, and its first datagram (a ClientHello).
    pub fn start(identity: &[u8], psk: &[u8], client_random: [u8; 32]) -> (PskHandshake, Vec<u8>) {
        let mut hs = PskHandshake {
            identity: identity.to_vec(),
            psk: psk.to_vec(),
            client_random,
            transcript: digest::Context::new(&digest::SHA256),
            message_seq: 0,
            record_seq: 0,
            server_seq: 0,
            flight: Vec::new(),
            state: State::Failed,
        };
        let hello = hs.client_hello(&[]);
        hs.state = State::AwaitHelloVerify {
            first_hello: hello.clone(),
        };
        hs.flight = vec![FlightRecord::Plain(ContentType::Handshake, hello)];
        let datagram = hs.emit_flight();
        (hs, datagram)
    }

    /// The current flight again, with fresh record sequence numbers (RFC 6347 §4.2.4).
    pub fn resend(&mut self) -> Option<Vec<u8>> {
        match self.state {
            State::Established(_) | State::Failed => None,
            _ => Some(self.emit_flight()),
        }
    }

    /// Feeds one datagram from the server.
    pub fn on_datagram(&mut self, mut datagram: &[u8]) -> Result<Step, HandshakeError> {
        let mut step = Step::Wait;
        while !datagram.is_empty() {
            let (record, rest) = codec::split_record(datagram).map_err(framing)?;
            datagram = rest;
            let next = match u16::from_be_bytes([record[3], record[4]]) {
                0 => self.on_plain_record(record[0], &record[HEADER_LEN..]),
                _ => self.on_protected_record(record),
            };
            match next {
                Ok(Step::Wait) => {}
                Ok(other) => step = other,
                Err(e) => {
                    self.state = State::Failed;
                    return Err(e);
                }
            }
        }
        Ok(step)
    }

    /// The established session's records (our next write sequence number is 1: the
    /// Finished took 0).
    pub fn into_records(self) -> Option<RecordLayer> {
        match self.state {
            State::Established(records) => Some(records),
            _ => None,
        }
    }

    fn on_plain_record(
        &mut self,
        content_type: u8,
        fragment: &[u8],
    ) -> Result<Step, HandshakeError> {
        const ALERT: u8 = ContentType::Alert as u8;
        const HANDSHAKE: u8 = ContentType::Handshake as u8;
        match content_type {
            ALERT => match fragment {
                [2, description] => Err(HandshakeError::Alert(*description)),
                _ => Ok(Step::Wait),
            },
            HANDSHAKE => self.on_handshake_messages(fragment),
            // The server's ChangeCipherSpec: its Finished (epoch 1) says the rest.
            _ => Ok(Step::Wait),
        }
    }

    fn on_handshake_messages(&mut self, mut fragment: &[u8]) -> Result<Step, HandshakeError> {
        let mut step = Step::Wait;
        while !fragment.is_empty() {
            let (message, rest) = codec::split_handshake(fragment).map_err(framing)?;
            fragment = rest;
            let seq = u16::from_be_bytes([message[4], message[5]]);
            if seq < self.server_seq {
                continue; // a retransmission of what we already have
            }
            self.server_seq = seq + 1;
            match self.on_handshake(message)? {
                Step::Wait => {}
                other => step = other,
            }
        }
        Ok(step)
    }

    fn on_handshake(&mut self, message: &[u8]) -> Result<Step, HandshakeError> {
        let body = &message[HANDSHAKE_HEADER_LEN..];
        match (&mut self.state, message[0]) {
            (State::AwaitHelloVerify { .. }, msg::HELLO_VERIFY_REQUEST) => {
                let cookie = parse_hello_verify(body)?;
                let hello = self.client_hello(cookie);
                self.transcript.update(&hello);
                self.state = State::AwaitHelloDone { server: None };
                self.flight = vec![FlightRecord::Plain(ContentType::Handshake, hello)];
                Ok(Step::Send(self.emit_flight()))
            }
            (State::AwaitHelloVerify { first_hello }, msg::SERVER_HELLO) => {
                let first_hello = std::mem::take(first_hello);
                self.transcript.update(&first_hello);
                self.state = State::AwaitHelloDone { server: None };
                self.on_handshake(message)
            }
            (State::AwaitHelloDone { server }, msg::SERVER_HELLO) if server.is_none() => {
                *server = Some(parse_server_hello(body)?);
                self.transcript.update(message);
                Ok(Step::Wait)
            }
            (State::AwaitHelloDone { server: Some(_) }, msg::SERVER_KEY_EXCHANGE) => {
                self.transcript.update(message);
                Ok(Step::Wait)
            }
            (State::AwaitHelloDone { server: Some(_) }, msg::SERVER_HELLO_DONE) => {
                self.transcript.update(message);
                self.key_exchange()
            }
            (State::AwaitHelloDone { .. }, _) => Err(HandshakeError::Unsupported(
                "a handshake message other than ServerHello, ServerKeyExchange, ServerHelloDone",
            )),
            _ => Err(HandshakeError::Malformed("handshake message out of order")),
        }
    }

    /// Flight 5: ClientKeyExchange, ChangeCipherSpec, Finished; the keys and the Finished the
    /// server must answer with.
    fn key_exchange(&mut self) -> Result<Step, HandshakeError> {
        let State::AwaitHelloDone {
            server: Some(server),
        } = std::mem::replace(&mut self.state, State::Failed)
        else {
            return Err(HandshakeError::Malformed(
                "ServerHelloDone before ServerHello",
            ));
        };
        let mut cke_body = Vec::with_capacity(2 + self.identity.len());
        codec::push_u16_prefixed(&mut cke_body, &self.identity);
        let cke = self.handshake_message(msg::CLIENT_KEY_EXCHANGE, &cke_body);
        self.transcript.update(&cke);

        let master = self.master_secret(&server);
        let keys = key_block::expand(&master, &self.client_random, &server.random);
        let mut records = RecordLayer::new(Suite::Ccm8, &keys, Role::Client, 0);
        let ours = codec::finished_data(&master, b"client finished", &self.transcript);
        let finished = self.handshake_message(msg::FINISHED, &ours);
        self.transcript.update(&finished);
        let expected = codec::finished_data(&master, b"server finished", &self.transcript);
        let sealed = records
            .seal(ContentType::Handshake, &finished)
            .map_err(|_| HandshakeError::Seal)?;
        self.flight = vec![
            FlightRecord::Plain(ContentType::Handshake, cke),
            FlightRecord::Plain(ContentType::ChangeCipherSpec, vec![1]),
            FlightRecord::Protected(finished),
        ];
        // The first send uses the Finished just sealed; a resend seals it again.
        let mut datagram = self.emit_plain_records();
        datagram.extend_from_slice(&sealed);
        self.state = State::AwaitFinished { records, expected };
        Ok(Step::Send(datagram))
    }

    fn on_protected_record(&mut self, mut record: &[u8]) -> Result<Step, HandshakeError> {
        let State::AwaitFinished { records, expected } = &mut self.state else {
            return Ok(Step::Wait); // early or late epoch-1 records carry nothing we need
        };
        match records.open_next(&mut record) {
            Some(Inbound::Handshake(message)) => {
                if !codec::finished_matches(&message, expected) {
                    return Err(HandshakeError::BadFinished);
                }
                if let State::AwaitFinished { records, .. } =
                    std::mem::replace(&mut self.state, State::Failed)
                {
                    self.state = State::Established(records);
                }
                Ok(Step::Established)
            }
            Some(Inbound::Alert {
                level: 2,
                description,
            }) => Err(HandshakeError::Alert(description)),
            _ => Ok(Step::Wait),
        }
    }

    fn master_secret(&self, server: &ServerHello) -> [u8; 48] {
        let session_hash = self.transcript.clone().finish();
        codec::psk_master_secret(
            &self.psk,
            server
                .extended_master_secret
                .then_some(session_hash.as_ref()),
            &self.client_random,
            &server.random,
        )
    }

    fn client_hello(&mut self, cookie: &[u8]) -> Vec<u8> {
        let mut body = Vec::with_capacity(64 + cookie.len());
        body.extend_from_slice(&VERSION);
        body.extend_from_slice(&self.client_random);
        body.push(0); // no session id
        body.push(cookie.len() as u8);
        body.extend_from_slice(cookie);
        codec::push_u16_prefixed(&mut body, &PSK_AES_128_CCM_8);
        body.extend_from_slice(&[1, 0]); // compression: null only
        let mut extensions = EXTENDED_MASTER_SECRET.to_vec();
        extensions.extend_from_slice(&[0, 0]);
        codec::push_u16_prefixed(&mut body, &extensions);
        self.handshake_message(msg::CLIENT_HELLO, &body)
    }

    /// `body` with a DTLS handshake header (one fragment), taking the next message_seq.
    fn handshake_message(&mut self, msg_type: u8, body: &[u8]) -> Vec<u8> {
        let m = codec::handshake_message(msg_type, self.message_seq, body);
        self.message_seq += 1;
        m
    }

    fn emit_flight(&mut self) -> Vec<u8> {
        let mut datagram = self.emit_plain_records();
        let protected = self.flight.iter().find_map(|r| match r {
            FlightRecord::Protected(m) => Some(m.clone()),
            FlightRecord::Plain(..) => None,
        });
        if let (Some(message), State::AwaitFinished { records, .. }) = (protected, &mut self.state)
            && let Ok(sealed) = records.seal(ContentType::Handshake, &message)
        {
            datagram.extend_from_slice(&sealed);
        }
        datagram
    }

    fn emit_plain_records(&mut self) -> Vec<u8> {
        let mut datagram = Vec::with_capacity(256);
        for record in &self.flight {
            if let FlightRecord::Plain(content_type, body) = record {
                codec::push_plain_record(&mut datagram, *content_type, self.record_seq, body);
                self.record_seq += 1;
            }
        }
        datagram
    }
}

fn framing(e: FramingError) -> HandshakeError {
    match e {
        FramingError::Fragmented => HandshakeError::Unsupported("fragmented handshake messages"),
        FramingError::Record => HandshakeError::Malformed("record"),
        FramingError::Message => HandshakeError::Malformed("handshake message"),
    }
}

/// The cookie of a HelloVerifyRequest body.
fn parse_hello_verify(body: &[u8]) -> Result<&[u8], HandshakeError> {
    let malformed = HandshakeError::Malformed("HelloVerifyRequest");
    let len = usize::from(*body.get(2).ok_or(malformed.clone())?);
    body.get(3..3 + len).ok_or(malformed)
}

fn parse_server_hello(body: &[u8]) -> Result<ServerHello, HandshakeError> {
    let malformed = || HandshakeError::Malformed("ServerHello");
    let random: [u8; 32] = body
        .get(2..34)
        .and_then(|r| r.try_into().ok())
        .ok_or_else(malformed)?;
    let session_id_len = usize::from(*body.get(34).ok_or_else(malformed)?);
    let at = 35 + session_id_len;
    let suite = body.get(at..at + 2).ok_or_else(malformed)?;
    if suite != PSK_AES_128_CCM_8 {
        return Err(HandshakeError::Unsupported(
            "a suite other than PSK-AES128-CCM8",
        ));
    }
    if body.get(at + 2) != Some(&0) {
        return Err(HandshakeError::Unsupported("compression"));
    }
    let block = body.get(at + 5..).unwrap_or_default();
    let extended_master_secret = codec::extensions(block)
        .ok_or_else(malformed)?
        .iter()
        .any(|(t, _)| *t == EXTENDED_MASTER_SECRET);
    Ok(ServerHello {
        random,
        extended_master_secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started() -> (PskHandshake, Vec<u8>) {
        PskHandshake::start(b"id", b"secret", [7; 32])
    }

    /// A plaintext epoch-0 record of `content_type` carrying `body`.
    fn record(content_type: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![content_type, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 1];
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    /// One unfragmented handshake message.
    fn message(msg_type: u8, seq: u16, body: &[u8]) -> Vec<u8> {
        let len = (body.len() as u32).to_be_bytes();
        let mut m = vec![msg_type];
        m.extend_from_slice(&len[1..]);
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(&[0, 0, 0]);
        m.extend_from_slice(&len[1..]);
        m.extend_from_slice(body);
        m
    }

    fn hello_verify(cookie: &[u8]) -> Vec<u8> {
        let mut body = vec![0xFE, 0xFF, cookie.len() as u8];
        body.extend_from_slice(cookie);
        record(22, &message(msg::HELLO_VERIFY_REQUEST, 0, &body))
    }

    #[test]
    fn the_first_hello_offers_ccm8_and_extended_master_secret_without_a_cookie() {
        let (_, hello) = started();
        assert_eq!(&hello[..3], &[22, 0xFE, 0xFD]);
        let m = &hello[HEADER_LEN..];
        assert_eq!(m[0], msg::CLIENT_HELLO);
        let body = &m[HANDSHAKE_HEADER_LEN..];
        assert_eq!(&body[2..34], &[7; 32]);
        assert_eq!(body[34], 0, "no session id");
        assert_eq!(body[35], 0, "no cookie yet");
        assert_eq!(&body[36..40], &[0, 2, 0xC0, 0xA8]);
        assert_eq!(&body[40..42], &[1, 0]);
        assert_eq!(&body[42..], &[0, 4, 0x00, 0x17, 0, 0]);
    }

    #[test]
    fn a_hello_verify_request_gets_the_hello_again_with_its_cookie_and_the_next_seqs() {
        let (mut hs, _) = started();
        let Ok(Step::Send(again)) = hs.on_datagram(&hello_verify(b"cookie!")) else {
            panic!("the hello is resent");
        };
        assert_eq!(&again[5..11], &[0, 0, 0, 0, 0, 1], "record sequence 1");
        let m = &again[HEADER_LEN..];
        assert_eq!(&m[4..6], &[0, 1], "message_seq 1");
        let body = &m[HANDSHAKE_HEADER_LEN..];
        assert_eq!(&body[35..43], b"\x07cookie!");
        // A retransmitted HelloVerifyRequest is recognised by its message_seq.
        assert!(matches!(
            hs.on_datagram(&hello_verify(b"other")),
            Ok(Step::Wait)
        ));
        let resent = hs.resend().expect("a flight to resend");
        assert_eq!(
            &resent[5..11],
            &[0, 0, 0, 0, 0, 2],
            "a fresh record sequence"
        );
        assert_eq!(resent[HEADER_LEN..], again[HEADER_LEN..]);
    }

    #[test]
    fn a_fatal_alert_ends_the_handshake_with_its_description() {
        let (mut hs, _) = started();
        assert_eq!(
            hs.on_datagram(&record(21, &[2, 40])).unwrap_err(),
            HandshakeError::Alert(40)
        );
        assert!(
            hs.resend().is_none(),
            "a failed handshake sends nothing more"
        );
    }

    #[test]
    fn a_server_hello_with_another_suite_is_refused() {
        let (mut hs, _) = started();
        hs.on_datagram(&hello_verify(b"c")).unwrap();
        let mut body = vec![0xFE, 0xFD];
        body.extend_from_slice(&[9; 32]);
        body.extend_from_slice(&[0, 0x00, 0xA8, 0]);
        let hello = record(22, &message(msg::SERVER_HELLO, 1, &body));
        assert!(matches!(
            hs.on_datagram(&hello),
            Err(HandshakeError::Unsupported(_))
        ));
    }

    #[test]
    fn a_server_hello_done_out_of_order_or_a_fragment_is_an_error_not_a_panic() {
        let (mut hs, _) = started();
        hs.on_datagram(&hello_verify(b"c")).unwrap();
        let done = record(22, &message(msg::SERVER_HELLO_DONE, 1, &[]));
        assert!(hs.on_datagram(&done).is_err());

        let (mut hs, _) = started();
        let mut fragment = message(msg::HELLO_VERIFY_REQUEST, 0, &[0xFE, 0xFF, 1, 1]);
        fragment[11] = 2; // fragment_length ≠ length
        assert_eq!(
            hs.on_datagram(&record(22, &fragment)).unwrap_err(),
            HandshakeError::Unsupported("fragmented handshake messages")
        );
    }

    #[test]
    fn truncated_and_random_datagrams_never_panic() {
        let (_, hello) = started();
        let mut state = 0x1234_5678u32;
        for len in 0..hello.len() {
            let (mut hs, _) = started();
            let _ = hs.on_datagram(&hello_verify(b"cookie")[..len.min(30)]);
            let mut junk = hello[..len].to_vec();
            for b in &mut junk {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                *b ^= (state >> 24) as u8 & 0x0f;
            }
            let _ = hs.on_datagram(&junk);
        }
    }
}
