//! An established DTLS session carried without OpenSSL: its [`Pipe`] and a [`RecordLayer`].
//!
//! [`take_over`] runs right after OpenSSL's handshake. When the suite is one the record layer
//! knows and OpenSSL holds nothing unread, it derives the keys from the session's master
//! secret, reads the next write sequence number off what the pipe sent, and frees the `SSL`
//! object with its handshake buffer. Otherwise the session stays with OpenSSL.
//!
//! What OpenSSL did after the handshake, this does too:
//!
//! * The server resends its last flight (ChangeCipherSpec + Finished, kept as the datagram
//!   that carried it) when the client retransmits its Finished, i.e. when ours was lost. Only
//!   an authenticated epoch-1 handshake record triggers it (never an unauthenticated epoch-0
//!   one, which anyone could spoof), at most [`MAX_RESENDS`] times, and the flight is dropped
//!   once the client has sent data or an alert, which it does only after our Finished.
//! * close_notify ends the session as `PeerClosed`, a fatal alert as `Fatal`; a warning
//!   alert, a renegotiation attempt and anything unauthentic are dropped.

use std::collections::VecDeque;
use std::net::SocketAddr;

use foreign_types::ForeignTypeRef;
use tokio_openssl::SslStream;

use super::key_block::{self, Suite};
use super::mux::Pipe;
use super::record_layer::{ContentType, Inbound, RecordLayer, Role};
use super::{CloseCause, DatagramSession, TransportError};

/// Times the server resends its last flight at most.
pub const MAX_RESENDS: u8 = 8;

/// close_notify (RFC 5246 §7.2.1), a warning.
const CLOSE_NOTIFY: [u8; 2] = [1, 0];
const FATAL: u8 = 2;

/// The server's last handshake flight, kept until the client shows it arrived.
#[derive(Debug)]
struct LastFlight {
    datagram: Vec<u8>,
    resends_left: u8,
}

/// A DTLS session whose records are protected here.
#[derive(Debug)]
pub struct CompactSession {
    pipe: Pipe,
    records: RecordLayer,
    last_flight: Option<LastFlight>,
    /// Records opened but not yet returned (several in one datagram).
    backlog: VecDeque<Vec<u8>>,
    /// The peer closed after what is in `backlog`.
    closing: Option<CloseCause>,
}

unsafe extern "C" {
    fn SSL_has_pending(ssl: *const openssl_sys::SSL) -> std::ffi::c_int;
}

/// The session carried by its pipe and a [`RecordLayer`], with OpenSSL's state freed; or the
/// stream back, unchanged, when OpenSSL must keep it (another suite, a record already read
/// and waiting, no epoch-1 record seen on the pipe, a server without its last flight).
pub fn take_over(
    mut stream: SslStream<Pipe>,
    role: Role,
    last_flight: Option<Vec<u8>>,
) -> Result<CompactSession, SslStream<Pipe>> {
    let ssl = stream.ssl();
    let Some(suite) = ssl
        .current_cipher()
        .and_then(|c| Suite::from_protocol_id(c.protocol_id()))
    else {
        return Err(stream);
    };
    // SAFETY: a live SSL object; SSL_has_pending only reads its record layer.
    if unsafe { SSL_has_pending(ssl.as_ptr()) } != 0 {
        return Err(stream);
    }
    let Some(next_seq) = stream
        .get_ref()
        .highest_sent_sequence()
        .and_then(|s| s.checked_add(1))
    else {
        return Err(stream);
    };
    let last_flight = match (role, last_flight) {
        (Role::Server, Some(datagram)) => Some(LastFlight {
            datagram,
            resends_left: MAX_RESENDS,
        }),
        (Role::Server, None) => return Err(stream),
        (Role::Client, _) => None,
    };
    let Some(keys) = session_keys(ssl) else {
        return Err(stream);
    };
    let records = RecordLayer::new(suite, &keys, role, next_seq);
    let mut pipe = stream.get_mut().take();
    pipe.set_packing(None);
    drop(stream);
    Ok(CompactSession {
        pipe,
        records,
        last_flight,
        backlog: VecDeque::new(),
        closing: None,
    })
}

impl CompactSession {
    /// A server session whose handshake ran here ([`super::psk_server`]): `records` after
    /// our Finished, and the datagram that carried it.
    pub fn established(pipe: Pipe, records: RecordLayer, last_flight: Vec<u8>) -> CompactSession {
        CompactSession {
            pipe,
            records,
            last_flight: Some(LastFlight {
                datagram: last_flight,
                resends_left: MAX_RESENDS,
            }),
            backlog: VecDeque::new(),
            closing: None,
        }
    }
}

/// The key block of the session's master secret and randoms.
fn session_keys(ssl: &openssl::ssl::SslRef) -> Option<key_block::KeyBlock> {
    let session = ssl.session()?;
    let mut master = [0u8; 48];
    let mut client_random = [0u8; 32];
    let mut server_random = [0u8; 32];
    let ok = session.master_key(&mut master) == master.len()
        && ssl.client_random(&mut client_random) == client_random.len()
        && ssl.server_random(&mut server_random) == server_random.len();
    let keys = ok.then(|| key_block::expand(&master, &client_random, &server_random));
    master.fill(0);
    keys
}

impl CompactSession {
    fn peer(&self) -> SocketAddr {
        self.pipe.peer()
    }

    /// The next application record.
    pub async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
        loop {
            if let Some(record) = self.backlog.pop_front() {
                return Ok(record);
            }
            if let Some(cause) = self.closing.clone() {
                return Err(TransportError::Closed {
                    peer: self.peer(),
                    cause,
                });
            }
            let datagram = self.pipe.recv().await?;
            self.open(&datagram).await;
        }
    }

    /// Opens every record of one datagram.
    async fn open(&mut self, datagram: &[u8]) {
        let mut rest = datagram;
        while let Some(inbound) = self.records.open_next(&mut rest) {
            match inbound {
                Inbound::Data(record) => {
                    self.last_flight = None;
                    self.backlog.push_back(record);
                }
                Inbound::Alert { level, description } => {
                    self.last_flight = None;
                    if [level, description] == CLOSE_NOTIFY {
                        self.closing = Some(CloseCause::PeerClosed);
                        return;
                    }
                    if level == FATAL {
                        self.closing = Some(CloseCause::Fatal(format!(
                            "fatal alert {description} received"
                        )));
                        return;
                    }
                    tracing::debug!(peer = %self.peer(), level, description, "DTLS warning alert ignored");
                }
                Inbound::Handshake(_) => self.resend_last_flight().await,
                Inbound::Discarded(why) => {
                    tracing::debug!(peer = %self.peer(), ?why, "DTLS record discarded");
                }
            }
        }
    }

    /// The client retransmitted its Finished: ours was lost, send it again.
    async fn resend_last_flight(&mut self) {
        let Some(flight) = self.last_flight.as_mut().filter(|f| f.resends_left > 0) else {
            tracing::debug!(peer = %self.peer(), "DTLS handshake record after the handshake ignored");
            return;
        };
        flight.resends_left -= 1;
        tracing::debug!(peer = %self.pipe.peer(), "DTLS last flight resent");
        let _ = self.pipe.send(&flight.datagram).await;
    }

    /// Sends one application record.
    pub async fn send(&mut self, datagram: &[u8]) -> Result<(), TransportError> {
        self.send_record(ContentType::ApplicationData, datagram)
            .await
    }

    async fn send_record(
        &mut self,
        content_type: ContentType,
        plaintext: &[u8],
    ) -> Result<(), TransportError> {
        let peer = self.peer();
        let record =
            self.records
                .seal(content_type, plaintext)
                .map_err(|e| TransportError::DtlsSend {
                    peer,
                    source: std::io::Error::other(e),
                })?;
        self.pipe.send(&record).await
    }

    /// Sends close_notify. Best effort: the peer may never see it.
    pub async fn close(&mut self) -> Result<(), TransportError> {
        self.send_record(ContentType::Alert, &CLOSE_NOTIFY).await
    }
}
