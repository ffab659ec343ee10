//! The server side of a DTLS 1.2 PSK handshake without OpenSSL, for the AES-128 AEAD suites
//! a compact session carries (sans-IO).
//!
//! OpenSSL's handshake cost the gateway more CPU than anything else it does for a new
//! session (library and allocator), and its result is thrown away for our record layer
//! anyway ([`super::compact_session`]). This does the same PSK handshake directly:
//!
//! * [`choose`] decides, from a ClientHello whose cookie the listener verified, whether this
//!   handshake is ours: OpenSSL's choice (the client's first suite the server enables) must
//!   be a PSK suite with an AEAD the record layer knows. Anything else — certificates, CBC —
//!   goes to OpenSSL as before.
//! * [`PskServerHandshake::start`] answers with ServerHello (extended master secret and
//!   renegotiation_info echoed when offered) and ServerHelloDone in one datagram.
//! * The client's ClientKeyExchange names the identity; the key comes from the server's
//!   lookup (unknown: fatal alert unknown_psk_identity, as OpenSSL). Its Finished (epoch 1)
//!   must verify (else decrypt_error); a record that does not authenticate is dropped, so a
//!   client with the wrong key times out, as with OpenSSL (RFC 6347 §4.1.2.7).
//! * The answer is ChangeCipherSpec + Finished; the session goes on in a compact session
//!   with that datagram as its last flight.
//!
//! Bytes in, bytes out, no clock: the caller sends what a step carries and calls
//! [`PskServerHandshake::resend`] when its retransmission timer fires. A retransmitted
//! ClientHello also brings our flight again. Fragmented handshake messages are refused
//! (a PSK client's flights are a few hundred bytes).

use ring::digest;

use super::cookie::ClientHello;
use super::handshake_codec::{
    self as codec, EMPTY_RENEGOTIATION_INFO_SCSV, EXTENDED_MASTER_SECRET, HANDSHAKE_HEADER_LEN,
    MAX_IDENTITY_LEN, MAX_PSK_LEN, RENEGOTIATION_INFO, alert, msg,
};
use super::key_block::{self, Suite};
use super::record_layer::{ContentType, HEADER_LEN, Inbound, RecordLayer, Role};

/// Why a lean PSK handshake failed, and the alert it sends (if any).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PskServerError {
    #[error("the client sent a fatal alert ({0})")]
    Alert(u8),
    #[error("malformed {0} from the client")]
    Malformed(&'static str),
    #[error("unexpected {0} from the client")]
    Unexpected(&'static str),
    #[error("the client offered no null compression")]
    NoNullCompression,
    #[error("the client does not offer DTLS 1.2")]
    ProtocolVersion,
    #[error("the client's renegotiation_info is not empty in a new handshake")]
    Renegotiation,
    #[error("unknown PSK identity")]
    UnknownIdentity,
    #[error("the client's Finished does not verify")]
    BadFinished,
    #[error("sealing our Finished failed")]
    Seal,
}

impl PskServerError {
    /// The fatal alert description we send for it; `None` when the client ended it.
    pub fn alert(&self) -> Option<u8> {
        match self {
            PskServerError::Alert(_) => None,
            PskServerError::Malformed(_) => Some(alert::DECODE_ERROR),
            PskServerError::Unexpected(_) => Some(alert::UNEXPECTED_MESSAGE),
            PskServerError::NoNullCompression => Some(alert::ILLEGAL_PARAMETER),
            PskServerError::ProtocolVersion => Some(alert::PROTOCOL_VERSION),
            PskServerError::Renegotiation => Some(alert::HANDSHAKE_FAILURE),
            PskServerError::UnknownIdentity => Some(alert::UNKNOWN_PSK_IDENTITY),
            PskServerError::BadFinished => Some(alert::DECRYPT_ERROR),
            PskServerError::Seal => Some(alert::HANDSHAKE_FAILURE),
        }
    }
}

/// A PSK cipher suite this module negotiates: its IANA number, its record protection and
/// OpenSSL's name for it (what sessions report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeanSuite {
    pub id: [u8; 2],
    pub suite: Suite,
    pub name: &'static str,
}

const LEAN_SUITES: [LeanSuite; 3] = [
    LeanSuite {
        id: [0xC0, 0xA8],
        suite: Suite::Ccm8,
        name: "PSK-AES128-CCM8",
    },
    LeanSuite {
        id: [0xC0, 0xA4],
        suite: Suite::Ccm,
        name: "PSK-AES128-CCM",
    },
    LeanSuite {
        id: [0x00, 0xA8],
        suite: Suite::Gcm,
        name: "PSK-AES128-GCM-SHA256",
    },
];

/// OpenSSL cipher names → IANA numbers, for the suites a server may enable
/// ([`super::dtls::DEFAULT_PSK_CIPHERS`], [`super::dtls::DEFAULT_X509_CIPHERS`] and their
/// common relatives).
const KNOWN_NAMES: [(&str, [u8; 2]); 10] = [
    ("PSK-AES128-CCM8", [0xC0, 0xA8]),
    ("PSK-AES128-CCM", [0xC0, 0xA4]),
    ("PSK-AES128-GCM-SHA256", [0x00, 0xA8]),
    ("PSK-AES128-CBC-SHA256", [0x00, 0xAE]),
    ("PSK-AES256-CCM8", [0xC0, 0xA9]),
    ("PSK-AES128-CBC-SHA", [0x00, 0x8C]),
    ("ECDHE-ECDSA-AES128-CCM8", [0xC0, 0xAE]),
    ("ECDHE-ECDSA-AES128-CCM", [0xC0, 0xAC]),
    ("ECDHE-ECDSA-AES128-GCM-SHA256", [0xC0, 0x2B]),
    ("ECDHE-ECDSA-AES128-SHA256", [0xC0, 0x23]),
];

/// The server's enabled suites in its order, as IANA numbers; `None` when the OpenSSL
/// cipher string names one this table does not know (then OpenSSL decides every time).
pub fn enabled_suites(openssl_ciphers: &str) -> Option<Vec<[u8; 2]>> {
    openssl_ciphers
        .split([':', ',', ' '])
        .filter(|n| !n.is_empty())
        .map(|name| {
            KNOWN_NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, id)| *id)
        })
        .collect()
}

/// The suite OpenSSL would pick for `hello` (the client's first that `enabled` has), if it
/// is one of ours; `None`: leave the handshake to OpenSSL.
pub fn choose(hello: &ClientHello<'_>, enabled: &[[u8; 2]]) -> Option<LeanSuite> {
    let first = hello
        .cipher_suites
        .chunks_exact(2)
        .map(|c| [c[0], c[1]])
        .find(|id| enabled.contains(id))?;
    LEAN_SUITES.iter().copied().find(|s| s.id == first)
}

/// What the caller does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this datagram.
    Send(Vec<u8>),
    /// Nothing to send: wait for more datagrams.
    Wait,
    /// Send this datagram (ChangeCipherSpec + Finished): the handshake is complete, and
    /// [`PskServerHandshake::into_session`] gives the session.
    Established(Vec<u8>),
}

enum State {
    /// Our ServerHello flight is out; the ClientKeyExchange comes next.
    AwaitKeyExchange,
    /// The keys are known; the client's Finished must carry `expected`.
    AwaitFinished {
        records: RecordLayer,
        master: [u8; 48],
        expected: [u8; codec::VERIFY_DATA_LEN],
    },
    Established {
        records: RecordLayer,
        last_flight: Vec<u8>,
    },
    Failed,
}

/// A server PSK handshake in progress.
pub struct PskServerHandshake {
    suite: LeanSuite,
    client_random: [u8; 32],
    server_random: [u8; 32],
    extended_master_secret: bool,
    transcript: digest::Context,
    /// The ClientHello's message_seq: ours start there too, and the client's next is one up.
    hello_seq: u16,
    client_next_seq: u16,
    /// Our next epoch-0 record sequence number.
    record_seq: u64,
    /// ServerHello and ServerHelloDone, re-sent with fresh record numbers.
    flight: [Vec<u8>; 2],
    identity: Vec<u8>,
    state: State,
}

impl PskServerHandshake {
    /// Answers `hello` (its whole first record in `hello_record`, cookie verified) with
    /// `suite` ([`choose`]): the handshake and its first datagram.
    pub fn start(
        hello: &ClientHello<'_>,
        hello_record: &[u8],
        suite: LeanSuite,
        server_random: [u8; 32],
    ) -> Result<(PskServerHandshake, Vec<u8>), PskServerError> {
        // DTLS versions count down: 1.0 is {254, 255}, 1.2 {254, 253}.
        if hello.version[0] != 0xFE || hello.version[1] > codec::VERSION[1] {
            return Err(PskServerError::ProtocolVersion);
        }
        if !hello.compression.contains(&0) {
            return Err(PskServerError::NoNullCompression);
        }
        let client_random: [u8; 32] = hello
            .random
            .try_into()
            .map_err(|_| PskServerError::Malformed("ClientHello random"))?;
        let offered = offered_extensions(hello, hello_record)?;
        let mut transcript = digest::Context::new(&digest::SHA256);
        transcript.update(client_hello_message(hello_record)?);
        let mut hs = PskServerHandshake {
            suite,
            client_random,
            server_random,
            extended_master_secret: offered.extended_master_secret,
            transcript,
            hello_seq: hello.message_seq,
            client_next_seq: hello.message_seq.wrapping_add(1),
            record_seq: codec::record_seq(hello_record),
            flight: [Vec::new(), Vec::new()],
            identity: Vec::new(),
            state: State::AwaitKeyExchange,
        };
        let server_hello = hs.server_hello(offered.renegotiation_info);
        let done =
            codec::handshake_message(msg::SERVER_HELLO_DONE, hs.hello_seq.wrapping_add(1), &[]);
        hs.transcript.update(&server_hello);
        hs.transcript.update(&done);
        hs.flight = [server_hello, done];
        let datagram = hs.emit_flight();
        Ok((hs, datagram))
    }

    /// Our current flight again, with fresh record sequence numbers (RFC 6347 §4.2.4);
    /// `None` once our last flight is out (the compact session resends that one).
    pub fn resend(&mut self) -> Option<Vec<u8>> {
        match self.state {
            State::AwaitKeyExchange | State::AwaitFinished { .. } => Some(self.emit_flight()),
            State::Established { .. } | State::Failed => None,
        }
    }

    /// Feeds one datagram from the client; `lookup` maps a PSK identity to its key.
    pub fn on_datagram(
        &mut self,
        mut datagram: &[u8],
        lookup: &dyn Fn(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<Step, PskServerError> {
        let mut step = Step::Wait;
        while !datagram.is_empty() && matches!(step, Step::Wait) {
            let Ok((record, rest)) = codec::split_record(datagram) else {
                break; // the rest of a malformed datagram is dropped, as a record layer does
            };
            datagram = rest;
            let next = match codec::epoch(record) {
                0 => self.on_plain_record(record, lookup),
                _ => self.on_protected_record(record),
            };
            match next {
                Ok(s) => step = s,
                Err(e) => {
                    self.state = State::Failed;
                    return Err(e);
                }
            }
        }
        Ok(step)
    }

    /// The established session: its records (our next epoch-1 sequence number is 1), the
    /// client's PSK identity and our last flight.
    pub fn into_session(self) -> Option<(RecordLayer, Vec<u8>, Vec<u8>)> {
        match self.state {
            State::Established {
                records,
                last_flight,
            } => Some((records, self.identity, last_flight)),
            _ => None,
        }
    }

    pub fn suite(&self) -> LeanSuite {
        self.suite
    }

    /// A fatal alert record (epoch 0: the client may not have our keys).
    pub fn fatal_alert(&mut self, description: u8) -> Vec<u8> {
        let mut datagram = Vec::with_capacity(HEADER_LEN + 2);
        codec::push_plain_record(
            &mut datagram,
            ContentType::Alert,
            self.record_seq,
            &[2, description],
        );
        self.record_seq += 1;
        datagram
    }

    fn on_plain_record(
        &mut self,
        record: &[u8],
        lookup: &dyn Fn(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<Step, PskServerError> {
        const ALERT: u8 = ContentType::Alert as u8;
        const HANDSHAKE: u8 = ContentType::Handshake as u8;
        let fragment = &record[HEADER_LEN..];
        match record[0] {
            ALERT => match fragment {
                [2, description] => Err(PskServerError::Alert(*description)),
                _ => Ok(Step::Wait),
            },
            HANDSHAKE => self.on_handshake_messages(fragment, lookup),
            // ChangeCipherSpec: the epoch-1 records say the rest. Anything else: noise.
            _ => Ok(Step::Wait),
        }
    }

    fn on_handshake_messages(
        &mut self,
        mut fragment: &[u8],
        lookup: &dyn Fn(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<Step, PskServerError> {
        let mut step = Step::Wait;
        while !fragment.is_empty() {
            let (message, rest) = codec::split_handshake(fragment)
                .map_err(|_| PskServerError::Malformed("handshake message"))?;
            fragment = rest;
            let seq = codec::message_seq(message);
            if seq == self.hello_seq && message[0] == msg::CLIENT_HELLO {
                // The client missed our flight.
                if let State::AwaitKeyExchange | State::AwaitFinished { .. } = self.state {
                    step = Step::Send(self.emit_flight());
                }
                continue;
            }
            if seq != self.client_next_seq {
                continue; // a retransmission of what we have, or from the future: dropped
            }
            match (&self.state, message[0]) {
                (State::AwaitKeyExchange, msg::CLIENT_KEY_EXCHANGE) => {
                    self.key_exchange(message, lookup)?;
                }
                _ => return Err(PskServerError::Unexpected("handshake message")),
            }
        }
        Ok(step)
    }

    /// The ClientKeyExchange: the identity, its key, the session's keys and the Finished
    /// the client must send.
    fn key_exchange(
        &mut self,
        message: &[u8],
        lookup: &dyn Fn(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<(), PskServerError> {
        let body = &message[HANDSHAKE_HEADER_LEN..];
        let identity = body
            .get(2..)
            .filter(|id| id.len() == usize::from(u16::from_be_bytes([body[0], body[1]])))
            .ok_or(PskServerError::Malformed("ClientKeyExchange"))?;
        if identity.len() > MAX_IDENTITY_LEN {
            return Err(PskServerError::UnknownIdentity);
        }
        let mut psk = lookup(identity)
            .filter(|k| !k.is_empty() && k.len() <= MAX_PSK_LEN)
            .ok_or(PskServerError::UnknownIdentity)?;
        self.identity = identity.to_vec();
        self.transcript.update(message);
        self.client_next_seq = self.client_next_seq.wrapping_add(1);
        let session_hash = self.transcript.clone().finish();
        let master = codec::psk_master_secret(
            &psk,
            self.extended_master_secret.then_some(session_hash.as_ref()),
            &self.client_random,
            &self.server_random,
        );
        psk.fill(0);
        let keys = key_block::expand(&master, &self.client_random, &self.server_random);
        let expected = codec::finished_data(&master, b"client finished", &self.transcript);
        self.state = State::AwaitFinished {
            records: RecordLayer::new(self.suite.suite, &keys, Role::Server, 0),
            master,
            expected,
        };
        Ok(())
    }

    fn on_protected_record(&mut self, mut record: &[u8]) -> Result<Step, PskServerError> {
        let State::AwaitFinished {
            records, expected, ..
        } = &mut self.state
        else {
            return Ok(Step::Wait); // before the keys: the client resends its whole flight
        };
        match records.open_next(&mut record) {
            Some(Inbound::Handshake(message)) => {
                if !codec::finished_matches(&message, expected)
                    || codec::message_seq(&message) != self.client_next_seq
                {
                    return Err(PskServerError::BadFinished);
                }
                self.finish(&message)
            }
            Some(Inbound::Alert {
                level: 2,
                description,
            }) => Err(PskServerError::Alert(description)),
            Some(Inbound::Data(_)) => Err(PskServerError::Unexpected("application data")),
            // Unauthentic (a wrong key), replayed, or a warning: dropped.
            _ => Ok(Step::Wait),
        }
    }

    /// Our ChangeCipherSpec and Finished, in one datagram.
    fn finish(&mut self, client_finished: &[u8]) -> Result<Step, PskServerError> {
        let State::AwaitFinished {
            mut records,
            mut master,
            ..
        } = std::mem::replace(&mut self.state, State::Failed)
        else {
            return Err(PskServerError::Unexpected("Finished"));
        };
        self.transcript.update(client_finished);
        let ours = codec::finished_data(&master, b"server finished", &self.transcript);
        master.fill(0);
        let finished =
            codec::handshake_message(msg::FINISHED, self.hello_seq.wrapping_add(2), &ours);
        let mut datagram = Vec::with_capacity(64);
        codec::push_plain_record(
            &mut datagram,
            ContentType::ChangeCipherSpec,
            self.record_seq,
            &[1],
        );
        self.record_seq += 1;
        let sealed = records
            .seal(ContentType::Handshake, &finished)
            .map_err(|_| PskServerError::Seal)?;
        datagram.extend_from_slice(&sealed);
        self.state = State::Established {
            records,
            last_flight: datagram.clone(),
        };
        Ok(Step::Established(datagram))
    }

    fn server_hello(&self, renegotiation_info: bool) -> Vec<u8> {
        let mut body = Vec::with_capacity(64);
        body.extend_from_slice(&codec::VERSION);
        body.extend_from_slice(&self.server_random);
        body.push(0); // no session id: not resumable
        body.extend_from_slice(&self.suite.id);
        body.push(0); // null compression
        let mut extensions = Vec::new();
        if self.extended_master_secret {
            extensions.extend_from_slice(&EXTENDED_MASTER_SECRET);
            extensions.extend_from_slice(&[0, 0]);
        }
        if renegotiation_info {
            extensions.extend_from_slice(&RENEGOTIATION_INFO);
            extensions.extend_from_slice(&[0, 1, 0]);
        }
        if !extensions.is_empty() {
            codec::push_u16_prefixed(&mut body, &extensions);
        }
        codec::handshake_message(msg::SERVER_HELLO, self.hello_seq, &body)
    }

    fn emit_flight(&mut self) -> Vec<u8> {
        let mut datagram = Vec::with_capacity(128);
        for message in &self.flight {
            codec::push_plain_record(
                &mut datagram,
                ContentType::Handshake,
                self.record_seq,
                message,
            );
            self.record_seq += 1;
        }
        datagram
    }
}

/// What the client's hello asks of ours.
struct Offered {
    extended_master_secret: bool,
    renegotiation_info: bool,
}

/// The ClientHello message (header included) in its record.
fn client_hello_message(hello_record: &[u8]) -> Result<&[u8], PskServerError> {
    let fragment = hello_record
        .get(HEADER_LEN..)
        .ok_or(PskServerError::Malformed("ClientHello record"))?;
    codec::split_handshake(fragment)
        .map(|(message, _)| message)
        .map_err(|_| PskServerError::Malformed("ClientHello"))
}

/// The extensions after the compression methods (none is fine: no extensions block).
fn offered_extensions(
    hello: &ClientHello<'_>,
    hello_record: &[u8],
) -> Result<Offered, PskServerError> {
    let message = client_hello_message(hello_record)?;
    let body = &message[HANDSHAKE_HEADER_LEN..];
    let fixed = 2
        + 32
        + 1
        + hello.session_id.len()
        + 1
        + hello.cookie.len()
        + 2
        + hello.cipher_suites.len()
        + 1
        + hello.compression.len();
    let malformed = PskServerError::Malformed("ClientHello extensions");
    let list = match body.get(fixed..) {
        None | Some([]) => Vec::new(),
        Some([l0, l1, block @ ..])
            if block.len() == usize::from(u16::from_be_bytes([*l0, *l1])) =>
        {
            codec::extensions(block).ok_or(malformed)?
        }
        Some(_) => return Err(malformed),
    };
    let has = |t: [u8; 2]| list.iter().any(|(ty, _)| *ty == t);
    // RFC 5746 §3.6: in a new handshake the field is empty (one zero length byte).
    if list
        .iter()
        .any(|(ty, body)| *ty == RENEGOTIATION_INFO && *body != [0])
    {
        return Err(PskServerError::Renegotiation);
    }
    let scsv = hello
        .cipher_suites
        .chunks_exact(2)
        .any(|c| c == EMPTY_RENEGOTIATION_INFO_SCSV);
    Ok(Offered {
        extended_master_secret: has(EXTENDED_MASTER_SECRET),
        renegotiation_info: scsv || has(RENEGOTIATION_INFO),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::bench::psk_handshake::{PskHandshake, Step as ClientStep};
    use crate::transport::cookie::parse_client_hello;

    const CCM8: LeanSuite = LEAN_SUITES[0];

    fn keys(identity: &[u8]) -> Option<Vec<u8>> {
        (identity == b"dev").then(|| b"secret".to_vec())
    }

    /// The lean client's first ClientHello, answered by a server (no cookie round: the
    /// listener's gate does that before this module sees a hello).
    fn started(psk: &[u8]) -> (PskHandshake, PskServerHandshake, Vec<u8>) {
        let (client, hello) = PskHandshake::start(b"dev", psk, [1; 32]);
        let parsed = parse_client_hello(&hello).unwrap();
        let (server, flight) = PskServerHandshake::start(&parsed, &hello, CCM8, [2; 32]).unwrap();
        (client, server, flight)
    }

    fn client_flight(client: &mut PskHandshake, server_flight: &[u8]) -> Vec<u8> {
        match client.on_datagram(server_flight).unwrap() {
            ClientStep::Send(d) => d,
            other => panic!("the client sent nothing: {other:?}"),
        }
    }

    #[test]
    fn a_full_handshake_with_the_lean_client_yields_matching_record_layers() {
        let (mut client, mut server, flight) = started(b"secret");
        let finished = client_flight(&mut client, &flight);
        let Step::Established(last) = server.on_datagram(&finished, &keys).unwrap() else {
            panic!("no Finished from the server");
        };
        assert!(matches!(
            client.on_datagram(&last).unwrap(),
            ClientStep::Established
        ));
        let mut ours = client.into_records().unwrap();
        let (mut theirs, identity, last_flight) = server.into_session().unwrap();
        assert_eq!(identity, b"dev");
        assert_eq!(last_flight, last);
        let sealed = ours.seal(ContentType::ApplicationData, b"GET").unwrap();
        assert_eq!(
            theirs.open_next(&mut &sealed[..]),
            Some(Inbound::Data(b"GET".to_vec()))
        );
        let back = theirs.seal(ContentType::ApplicationData, b"2.05").unwrap();
        assert_eq!(
            ours.open_next(&mut &back[..]),
            Some(Inbound::Data(b"2.05".to_vec()))
        );
    }

    #[test]
    fn the_server_hello_echoes_extended_master_secret_and_takes_the_hellos_message_seq() {
        let (_, _, flight) = started(b"secret");
        let (record, rest) = codec::split_record(&flight).unwrap();
        let (hello, _) = codec::split_handshake(&record[HEADER_LEN..]).unwrap();
        assert_eq!(hello[0], msg::SERVER_HELLO);
        assert_eq!(codec::message_seq(hello), 0);
        let body = &hello[HANDSHAKE_HEADER_LEN..];
        assert_eq!(&body[35..37], &CCM8.id);
        assert_eq!(&body[38..], &[0, 4, 0x00, 0x17, 0, 0]);
        let (done, _) = codec::split_record(rest).unwrap();
        assert_eq!(done[HEADER_LEN], msg::SERVER_HELLO_DONE);
        assert_eq!(codec::record_seq(done), codec::record_seq(record) + 1);
    }

    #[test]
    fn an_unknown_identity_is_refused_with_its_alert() {
        let (mut client, mut server, flight) = started(b"secret");
        let finished = client_flight(&mut client, &flight);
        let err = server.on_datagram(&finished, &|_: &[u8]| None).unwrap_err();
        assert_eq!(err, PskServerError::UnknownIdentity);
        assert_eq!(err.alert(), Some(alert::UNKNOWN_PSK_IDENTITY));
        let alert = server.fatal_alert(alert::UNKNOWN_PSK_IDENTITY);
        assert_eq!(&alert[HEADER_LEN..], &[2, 115]);
        assert!(server.into_session().is_none());
    }

    #[test]
    fn a_wrong_key_leaves_the_finished_unopened_and_the_handshake_waiting() {
        let (mut client, mut server, flight) = started(b"not the secret");
        let finished = client_flight(&mut client, &flight);
        assert_eq!(server.on_datagram(&finished, &keys), Ok(Step::Wait));
        assert!(server.resend().is_some(), "still in the handshake");
        assert!(server.into_session().is_none());
    }

    #[test]
    fn a_retransmitted_client_hello_brings_the_flight_again_with_fresh_record_numbers() {
        let (client, hello) = PskHandshake::start(b"dev", b"secret", [1; 32]);
        drop(client);
        let parsed = parse_client_hello(&hello).unwrap();
        let (mut server, flight) =
            PskServerHandshake::start(&parsed, &hello, CCM8, [2; 32]).unwrap();
        let Ok(Step::Send(again)) = server.on_datagram(&hello, &keys) else {
            panic!("no resend");
        };
        assert_eq!(again.len(), flight.len());
        let seq = |d: &[u8]| codec::record_seq(codec::split_record(d).unwrap().0);
        assert_eq!(seq(&again), seq(&flight) + 2);
    }

    #[test]
    fn garbage_truncation_and_compression_without_null_never_panic() {
        let (mut client, mut server, flight) = started(b"secret");
        let finished = client_flight(&mut client, &flight);
        for cut in 0..finished.len() {
            let (_, mut s, _) = started(b"secret");
            let _ = s.on_datagram(&finished[..cut], &keys);
        }
        let mut x: u32 = 7;
        for _ in 0..2000 {
            let junk: Vec<u8> = (0..64)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (x >> 16) as u8
                })
                .collect();
            let _ = server.on_datagram(&junk, &keys);
        }
        let (_, mut hello) = PskHandshake::start(b"dev", b"secret", [1; 32]);
        // The compression list [1, 0] sits just before the extensions: make it [1, 1].
        let at = hello.len() - 2 - 4 - 1;
        hello[at] = 1;
        let parsed = parse_client_hello(&hello).unwrap();
        assert_eq!(
            PskServerHandshake::start(&parsed, &hello, CCM8, [2; 32]).err(),
            Some(PskServerError::NoNullCompression)
        );
    }

    #[test]
    fn a_dtls_1_0_client_and_a_renegotiation_are_refused() {
        let (_, hello) = PskHandshake::start(b"dev", b"secret", [1; 32]);
        let mut old = hello.clone();
        old[26] = 0xFF; // client_version {254, 255}: after the record and handshake headers
        let parsed = parse_client_hello(&old).unwrap();
        assert_eq!(parsed.version, [0xFE, 0xFF]);
        assert_eq!(
            PskServerHandshake::start(&parsed, &old, CCM8, [2; 32]).err(),
            Some(PskServerError::ProtocolVersion)
        );
        // The lean client's extensions block is EMS alone: make it renegotiation_info
        // carrying a previous verify_data byte.
        let mut reneg = hello.clone();
        reneg.truncate(reneg.len() - 4);
        reneg.extend_from_slice(&[0xFF, 0x01, 0, 2, 1, 7]);
        fix_lengths(&mut reneg, 2);
        let parsed = parse_client_hello(&reneg).unwrap();
        assert_eq!(
            PskServerHandshake::start(&parsed, &reneg, CCM8, [2; 32]).err(),
            Some(PskServerError::Renegotiation)
        );
    }

    /// Grows the record, handshake and extensions lengths of a one-message hello by `by`.
    fn fix_lengths(hello: &mut [u8], by: usize) {
        let grow = |b: &mut [u8]| {
            let v = b.iter().fold(0usize, |a, x| (a << 8) | usize::from(*x)) + by;
            let n = b.len();
            for (i, x) in b.iter_mut().enumerate() {
                *x = (v >> (8 * (n - 1 - i))) as u8;
            }
        };
        grow(&mut hello[11..13]);
        grow(&mut hello[14..17]);
        grow(&mut hello[22..25]);
        let ext_len_at = hello.len() - 6 - 2;
        grow(&mut hello[ext_len_at..ext_len_at + 2]);
    }

    #[test]
    fn the_suite_is_openssls_choice_and_only_ours_when_it_is_an_aead_psk_suite() {
        let enabled = enabled_suites(crate::transport::dtls::DEFAULT_PSK_CIPHERS).unwrap();
        assert_eq!(enabled.len(), 4);
        let (_, hello) = PskHandshake::start(b"dev", b"secret", [1; 32]);
        let parsed = parse_client_hello(&hello).unwrap();
        assert_eq!(choose(&parsed, &enabled), Some(CCM8));
        // A client preferring CBC gets OpenSSL; a server without CCM_8 gets no lean suite
        // for a client that offers only CCM_8.
        let cbc_first = ClientHello {
            cipher_suites: &[0x00, 0xAE, 0xC0, 0xA8],
            ..parsed
        };
        assert_eq!(choose(&cbc_first, &enabled), None);
        assert_eq!(choose(&parsed, &[[0x00, 0xA8]]), None);
        assert!(enabled_suites("PSK-AES128-CCM8:HIGH").is_none());
        let mixed = format!(
            "{}:{}",
            crate::transport::dtls::DEFAULT_PSK_CIPHERS,
            crate::transport::dtls::DEFAULT_X509_CIPHERS
        );
        assert_eq!(enabled_suites(&mixed).unwrap().len(), 8);
    }
}
