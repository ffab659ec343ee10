//! The transport edge: the only module that touches sockets and DTLS.
//!
//! It owns moving datagrams (UDP, DTLS) or bytes (TCP, TLS) between the network and per-peer
//! sessions, and proving who the peer is. It yields `(PeerInfo, datagrams or a byte stream)`
//! and nothing more: it knows no CoAP, no MIDs, no
//! tokens, no ACLs. Everything above it (the sans-IO CoAP core, the verifier) reads the peer's
//! identity from [`PeerInfo`], never from a payload (DESIGN §2, STYLE item 10).
//!
//! # Layout
//!
//! * [`mux`] — one UDP socket, many peers: [`mux::DatagramMux`] routes each datagram by source
//!   address to a per-peer [`mux::Pipe`]. One receive task per socket, bounded queues, a cap on
//!   the number of peers; nothing per peer is a thread.
//!   A server mux asks a stateless [`mux::Gate`] about datagrams from addresses without a
//!   pipe, and caps pipes per source IP and handshakes in progress.
//! * [`datagram_queue`] — the bounded queue from the mux to one pipe (~100 bytes idle, where
//!   a tokio channel allocated 1.3 KB per pipe).
//! * [`cookie`] — stateless DTLS cookies (sans-IO): ClientHello parsing, the cookie MAC
//!   under a rotating secret, the HelloVerifyRequest.
//! * [`dtls`] — DTLS 1.2 (OpenSSL) over a [`mux::Pipe`]: PSK and X.509 certificates.
//!   [`dtls::DtlsServer::accept`] and [`dtls::DtlsClient::connect`] run one bounded handshake
//!   and yield a [`dtls::DtlsSession`].
//! * [`compact_session`] — after the handshake, a session with an AES-128 AEAD suite leaves
//!   OpenSSL: its pipe and a [`record_layer::RecordLayer`] (~1 KB) carry it, OpenSSL's ~30 KB
//!   of handshake state are freed. [`key_block`] derives its keys from the master secret,
//!   [`replay_window`] refuses replayed records.
//! * [`psk_server`] — a server PSK handshake without OpenSSL (sans-IO) for the AES-128 AEAD
//!   suites, straight into a compact session; OpenSSL keeps every other handshake.
//!   [`handshake_codec`] frames its messages and holds the PSK key schedule.
//! * [`record_buffers`] — a session that stays with OpenSSL (a CBC suite) holds OpenSSL's
//!   record buffers only while it is inside an SSL call.
//!
//! * [`tcp`] — a TCP listener with a connection cap and accept backoff, and a bounded
//!   connect (CoAP over TCP, RFC 8323; NoSec identity = source address).
//! * [`tls`] — TLS 1.2/1.3 with mutual X.509 (rustls) over a TCP stream: bounded handshakes
//!   yielding a `tokio_rustls` stream and the peer's certificate identity.
//!
//! Both [`mux::Pipe`] (NoSec) and [`dtls::DtlsSession`] implement [`DatagramSession`], so the
//! layer above drives either the same way.
//!
//! # Failure model
//!
//! Nothing a peer sends can panic this module. A peer that misbehaves, stalls its handshake or
//! floods its queue only loses its own datagrams or its own session; other peers are unaffected.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub mod cert;
mod compact_session;
pub mod cookie;
mod datagram_queue;
pub mod dtls;
pub mod handshake_codec;
pub mod key_block;
pub mod mux;
pub mod psk_server;
mod record_buffers;
pub mod record_layer;
pub mod replay_window;
pub mod tcp;
pub mod tls;

#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;

/// Who a peer is, as proven by the transport (never as claimed in a payload).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The DTLS PSK identity the session was authenticated with.
    Psk(Vec<u8>),
    /// NoSec: the peer's source address is all we know (LwM2M NoSec semantics).
    Address(IpAddr),
    /// A verified X.509 certificate (DTLS or TLS).
    Certificate(std::sync::Arc<cert::CertIdentity>),
}

impl Identity {
    /// A string that names exactly this peer, for per-peer accounting: a certificate by its
    /// public key (two certificates with one name are two peers), the others as displayed.
    pub fn key(&self) -> String {
        match self {
            Identity::Certificate(cert) => format!("spki:{}", cert::hex(&cert.spki_sha256)),
            other => other.to_string(),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Psk(id) => write!(f, "psk:{}", String::from_utf8_lossy(id)),
            Identity::Address(ip) => write!(f, "address:{ip}"),
            Identity::Certificate(cert) => write!(f, "certificate:{cert}"),
        }
    }
}

/// Which transport a session runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Plain UDP (NoSec).
    Udp,
    /// DTLS 1.2 over UDP.
    Dtls,
    /// Plain TCP (NoSec, RFC 8323).
    Tcp,
    /// TLS 1.2 or 1.3 over TCP (RFC 8323).
    Tls,
}

/// Transport facts about one peer, attached to everything it sends.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's UDP or TCP address.
    pub addr: SocketAddr,
    /// The transport the session runs over.
    pub kind: TransportKind,
    /// The identity proven by that transport.
    pub identity: Identity,
}

/// A datagram session with one peer: a plain UDP [`mux::Pipe`] or a [`dtls::DtlsSession`].
///
/// One call to [`recv`](Self::recv) yields one application datagram (for DTLS: one decrypted
/// record); one call to [`send`](Self::send) emits one.
pub trait DatagramSession: Send {
    /// The next application datagram from the peer. `Err` once the session is closed.
    fn recv(&mut self) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send;
    /// Send one application datagram to the peer.
    fn send(&mut self, datagram: &[u8]) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// The peer's UDP address.
    fn peer(&self) -> SocketAddr;
    /// The peer's address, transport kind and proven identity.
    fn peer_info(&self) -> PeerInfo;
    /// Ends the session politely (DTLS: close_notify, so a peer that keeps one session per
    /// address does not ignore the next handshake from this port); plain UDP has nothing to say.
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseCause {
    /// The peer closed the session cleanly (DTLS close_notify).
    PeerClosed,
    /// The session's datagram source ended: the mux was shut down or dropped, or the pipe was
    /// replaced by a newer one for the same peer.
    Shutdown,
    /// A fatal DTLS alert or protocol error (the text comes from OpenSSL).
    Fatal(String),
}

impl std::fmt::Display for CloseCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseCause::PeerClosed => f.write_str("closed by peer"),
            CloseCause::Shutdown => f.write_str("transport shut down"),
            CloseCause::Fatal(detail) => write!(f, "fatal error: {detail}"),
        }
    }
}

/// Who said a DTLS handshake failed: OpenSSL, or [`psk_server`].
#[derive(Debug, thiserror::Error)]
pub enum HandshakeFailure {
    #[error(transparent)]
    OpenSsl(#[from] openssl::ssl::Error),
    #[error(transparent)]
    Lean(#[from] psk_server::PskServerError),
}

/// Errors of the transport edge, named by who is at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Our side: the UDP socket could not be bound.
    #[error("cannot bind UDP socket on {addr}: {source}")]
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The network: sending to or receiving from a peer failed at the socket.
    #[error("UDP I/O with {peer} failed: {source}")]
    Io {
        /// The peer.
        peer: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A datagram went out truncated (the OS accepted fewer bytes than given).
    #[error("datagram to {peer} truncated: {sent} of {len} bytes sent")]
    ShortSend {
        /// The peer.
        peer: SocketAddr,
        /// Bytes handed to the OS.
        len: usize,
        /// Bytes the OS accepted.
        sent: usize,
    },
    /// The session is over; see [`CloseCause`].
    #[error("session with {peer} closed: {cause}")]
    Closed {
        /// The peer.
        peer: SocketAddr,
        /// Why it ended.
        cause: CloseCause,
    },
    /// Our side: OpenSSL refused the DTLS configuration.
    #[error("DTLS setup failed ({context}): {source}")]
    Config {
        /// What we were configuring.
        context: &'static str,
        /// OpenSSL's error queue.
        #[source]
        source: openssl::error::ErrorStack,
    },
    /// Our side: the configuration is unusable before OpenSSL even sees it.
    #[error("invalid DTLS configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: &'static str,
    },
    /// The peer or the credentials: the DTLS handshake failed (alert, unknown identity,
    /// no common cipher suite, a certificate we rejected, the peer went away).
    #[error("DTLS handshake with {peer} failed: {reason}")]
    Handshake {
        /// The peer.
        peer: SocketAddr,
        /// Why, in one line: OpenSSL's certificate verify error when we rejected the peer's
        /// certificate (e.g. "certificate has expired", "unable to get local issuer
        /// certificate"), else the reasons on OpenSSL's error queue (e.g. "tlsv1 alert
        /// unknown ca", "peer did not return a certificate", "no shared cipher").
        reason: String,
        /// OpenSSL's account of the failure, or ours.
        #[source]
        source: HandshakeFailure,
    },
    /// The peer completed the handshake but its proven identity cannot be read (a verified
    /// certificate we cannot parse, or no identity at all). No session results.
    #[error("DTLS peer {peer} authenticated, but its identity cannot be read: {reason}")]
    PeerIdentity {
        /// The peer.
        peer: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// Our side: a certificate, key or CA file cannot be used.
    #[error("DTLS credentials {}: {reason}", path.display())]
    DtlsCredentials {
        /// The file at fault.
        path: std::path::PathBuf,
        /// Why (missing file, not PEM, key does not match the certificate).
        reason: String,
    },
    /// The peer or the network: the handshake did not complete in time, with no alert
    /// (silent peer, lost flights, or a wrong key: DTLS silently drops records it cannot
    /// authenticate). Nothing here proves the credentials wrong, so callers count it as the
    /// peer being unreachable, not as a secure-channel failure.
    #[error("DTLS handshake with {peer} timed out after {after:?}{}", if *peer_answered { " (no alert; the peer answered, then its flights stopped arriving: lost packets, or a key it cannot verify)" } else { " (no answer)" })]
    HandshakeTimeout {
        /// The peer.
        peer: SocketAddr,
        /// The configured bound.
        after: Duration,
        /// Whether the peer sent anything at all. A peer that answered and then fell silent
        /// either lost packets or dropped records it could not authenticate (wrong PSK);
        /// the two look the same on the wire.
        peer_answered: bool,
    },
    /// The peer: its ClientHello carried a cookie that OpenSSL's `DTLSv1_listen` did not
    /// accept (or none at all), so no handshake started.
    #[error("DTLS ClientHello from {peer} refused: no valid cookie")]
    CookieRejected {
        /// The peer.
        peer: SocketAddr,
    },
    /// Sending a DTLS record failed.
    #[error("DTLS send to {peer} failed: {source}")]
    DtlsSend {
        /// The peer.
        peer: SocketAddr,
        /// The error (an OpenSSL error wrapped as I/O, or the socket's).
        #[source]
        source: io::Error,
    },
    /// Our side: the TCP listener could not be bound.
    #[error("cannot bind TCP listener on {addr}: {source}")]
    TcpBind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Our side: the TCP listener kept failing to accept (after backing off up to 64 s).
    #[error("TCP accept on {addr} failed: {source}")]
    TcpAccept {
        /// The listener's address.
        addr: SocketAddr,
        /// The last OS error.
        #[source]
        source: io::Error,
    },
    /// The network or the peer: a TCP connect was refused or failed.
    #[error("TCP connect to {peer} failed: {source}")]
    TcpConnect {
        /// The peer.
        peer: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The network or the peer: a TCP connect did not complete in time.
    #[error("TCP connect to {peer} timed out after {after:?}")]
    ConnectTimeout {
        /// The peer.
        peer: SocketAddr,
        /// The configured bound.
        after: Duration,
    },
    /// The network: an accepted TCP connection is already gone (its address is unreadable).
    #[error("TCP connection lost before the TLS handshake: {source}")]
    TcpGone {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Our side: a TLS certificate, key or CA file is unusable.
    #[error("TLS {part} ({origin}): {problem}")]
    Credentials {
        /// Which credential.
        part: tls::CredentialPart,
        /// The file path, or `in-memory PEM`.
        origin: String,
        /// What is wrong with it.
        #[source]
        problem: tls::CredentialProblem,
    },
    /// Our side: rustls refused the TLS configuration (e.g. the key does not match the
    /// certificate, or the CA certificate is malformed).
    #[error("TLS setup failed ({context}): {source}")]
    TlsConfig {
        /// What we were configuring.
        context: &'static str,
        /// rustls' account.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The peer or the credentials: the TLS handshake failed. The text is rustls': unknown
    /// issuer, expired certificate, name mismatch, no client certificate, or a fatal alert
    /// from the peer saying which of these it found in ours.
    #[error("TLS handshake with {peer} failed: {source}")]
    TlsHandshake {
        /// The peer.
        peer: SocketAddr,
        /// rustls' error, or the socket's.
        #[source]
        source: tls::TlsFailure,
    },
    /// The peer: the TLS handshake did not complete in time (a silent or stalled peer).
    #[error("TLS handshake with {peer} timed out after {after:?}")]
    TlsHandshakeTimeout {
        /// The peer.
        peer: SocketAddr,
        /// The configured bound.
        after: Duration,
    },
    /// The peer: its certificate passed verification but cannot be read as an identity (or
    /// none was presented, which verification should already have refused).
    #[error("TLS peer {peer}: unusable certificate identity: {reason}")]
    PeerCertificate {
        /// The peer.
        peer: SocketAddr,
        /// What is wrong.
        reason: String,
    },
}
