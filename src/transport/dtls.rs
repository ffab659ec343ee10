//! DTLS 1.2 over a [`Pipe`], with OpenSSL: handshakes, identities, records.
//!
//! This module owns the DTLS contexts ([`DtlsServer`], [`DtlsClient`]), one bounded handshake
//! per peer, and the resulting [`DtlsSession`], which moves one decrypted record per
//! [`recv`](DatagramSession::recv). It proves the peer's identity — a PSK identity
//! ([`DtlsSession::psk_identity`]) or a verified X.509 certificate
//! ([`DtlsSession::peer_certificate_identity`]) — and does not decide what it may do.
//!
//! OpenSSL runs every client handshake and every server handshake but one kind: a PSK
//! handshake whose suite (OpenSSL's choice: the client's first that the server enables) is
//! AES-128 CCM_8, CCM or GCM runs in [`super::psk_server`] instead
//! ([`ServerHandshakes::Lean`], the default), which costs a third less CPU and goes straight
//! to our record layer. After an OpenSSL handshake a session with one of those suites is
//! carried by our record layer too and OpenSSL's state is freed (`compact_session.rs`,
//! [`DtlsSession::is_compact`]); a CBC session stays with OpenSSL.
//!
//! # Credentials
//!
//! * PSK: [`PskServerConfig`] / [`PskClientConfig`], suites [`DEFAULT_PSK_CIPHERS`].
//! * X.509: [`X509Credentials`] (our chain, our key, the CAs we trust for the peer's chain),
//!   suites [`DEFAULT_X509_CIPHERS`] (`ECDHE-ECDSA-AES128-CCM8` first, LwM2M's mandatory
//!   certificate suite). The client uses [`X509ClientConfig`]; the server takes a
//!   [`DtlsServerConfig`], which may enable PSK and certificates at once. Then the client
//!   picks the mode by the suites it offers; the server's list is the PSK list followed by the
//!   certificate list, and the client's order decides (no server preference).
//! * Authentication is mutual. With a certificate suite, the server requests and requires a
//!   client certificate (`PEER | FAIL_IF_NO_PEER_CERT`) and verifies it against its `ca`; the
//!   client verifies the server's chain against its `ca`. OpenSSL checks validity dates and the
//!   extended key usage for the role (serverAuth / clientAuth). The client also checks that
//!   the server's certificate is valid for the IP address it dials (IP SAN), as the TLS
//!   client checks its server name. Other names are *not* checked here: the caller matches
//!   the exposed [`CertIdentity`] with a `CertRule`. The identity records which trust anchor
//!   the chain verified to ([`CertIdentity::trust_anchor`]), so the caller can scope a rule
//!   to the anchors trusted for one peer. OpenSSL never sends a CertificateRequest for a PSK
//!   suite, so PSK clients are unaffected on a mixed server.
//! * A rejected certificate fails the handshake with [`TransportError::Handshake`] whose
//!   `reason` is OpenSSL's verify error ("certificate has expired", "unable to get local
//!   issuer certificate", "unsuitable certificate purpose") on the side that rejected it,
//!   and the alert it received ("tlsv1 alert unknown ca", ...) on the other.
//!
//! # OpenSSL over a [`Pipe`]
//!
//! The pipe reaches OpenSSL through `tokio-openssl`, i.e. a stream BIO, not a datagram BIO:
//!
//! * The stream BIO answers 0 to datagram ctrl queries, so every `Ssl` gets
//!   `SSL_OP_NO_QUERY_MTU` and an explicit MTU (default [`DEFAULT_MTU`]).
//! * The BIO is non-blocking and has no timer of its own. OpenSSL's retransmission timer is
//!   checked whenever the handshake reads (`dtls1_read_bytes` calls `dtls1_handle_timeout`
//!   before each read). The handshake loop therefore wakes every [`HANDSHAKE_TICK`] and polls
//!   the handshake again, which retransmits a lost flight once the DTLS timer (1 s, doubling;
//!   on a client with `initial_retransmit`, that value, doubling) has expired.
//!   `DTLSv1_handle_timeout` is deliberately *not* called from outside that poll: it would
//!   write through tokio-openssl's BIO without a task context, which is undefined behaviour.
//! * The pipe packs each flight's records into one datagram, retransmissions included, for
//!   the whole session; application data and alerts go one record per datagram (the
//!   `Packer` in `mux.rs`).
//! * Each handshake is bounded by its `handshake_timeout` and runs in the caller's task, so a
//!   silent or failing peer only ever fails its own session.
//!
//! # Server hardening
//!
//! Cookie exchange (HelloVerifyRequest) is always on and stateless ([`super::cookie`]): the
//! listener's mux answers a cookieless ClientHello itself through [`DtlsServer::gate`] and
//! creates a pipe only for a ClientHello with a valid cookie. [`DtlsServer::accept`] checks
//! that cookie again and hands the ClientHello to OpenSSL's `DTLSv1_listen` on a memory BIO,
//! which verifies it through the cookie callback and sets the handshake and record sequence
//! numbers so `SSL_accept` continues at message_seq 1 (RFC 6347 §4.2.1, §4.2.2); a lean
//! handshake takes the same numbers from the ClientHello (its message_seq and record
//! sequence number). On a pipe
//! from a mux without the gate, `accept` sends the HelloVerifyRequest itself. Session
//! resumption and renegotiation are off, so
//! every session runs the PSK callback or the certificate verification exactly once and its
//! identity cannot change later.
//!
//! A wrong key does not produce an alert: DTLS silently discards records it cannot
//! authenticate (RFC 6347 §4.1.2.7), so both sides end in [`TransportError::HandshakeTimeout`].
//! An unknown identity fails at once with an alert (unknown_psk_identity, from either
//! implementation).

use std::fmt;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::ex_data::Index;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslRef, SslSessionCacheMode,
    SslVerifyMode, SslVersion,
};
use openssl::x509::{X509, X509VerifyResult};
use tokio::io::AsyncWriteExt;
use tokio_openssl::SslStream;

use super::cert::{CertIdentity, chain_anchor};
use super::compact_session::{self, CompactSession};
use super::cookie::{CookieJar, HelloVerdict, parse_client_hello};
use super::handshake_codec;
use super::mux::{Gate, Pipe, Verdict};
use super::psk_server::{self, PskServerError};
use super::record_buffers;
use super::record_layer::Role;
use super::{
    CloseCause, DatagramSession, HandshakeFailure, Identity, PeerInfo, TransportError,
    TransportKind,
};

/// Default cipher suites: `PSK-AES128-CCM8` (TLS_PSK_WITH_AES_128_CCM_8, mandatory for
/// CoAP/LwM2M) first, then suites libcoap and other stacks commonly offer.
pub const DEFAULT_PSK_CIPHERS: &str =
    "PSK-AES128-CCM8:PSK-AES128-CCM:PSK-AES128-GCM-SHA256:PSK-AES128-CBC-SHA256";

/// Default certificate cipher suites: `ECDHE-ECDSA-AES128-CCM8`
/// (TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8, mandatory for LwM2M certificate mode) first, then
/// suites common stacks offer. They need an ECDSA key (e.g. P-256) on both sides.
pub const DEFAULT_X509_CIPHERS: &str = "ECDHE-ECDSA-AES128-CCM8:ECDHE-ECDSA-AES128-CCM:\
     ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-SHA256";

/// Default DTLS MTU (bytes of UDP payload): the IPv6 minimum link MTU 1280 minus 40 (IPv6
/// header) and 8 (UDP header).
pub const DEFAULT_MTU: u32 = 1232;

/// Default bound on one handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a pending handshake is polled so OpenSSL can retransmit a lost flight.
pub const HANDSHAKE_TICK: Duration = Duration::from_millis(100);

/// Largest plaintext of one DTLS record (2^14).
const MAX_RECORD: usize = 16_384;

/// Maps a PSK identity to its key; `None` = unknown identity (the handshake fails).
pub type PskLookup = Arc<dyn Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync>;

/// Server-side PSK configuration.
#[derive(Clone)]
pub struct PskServerConfig {
    /// Identity → key. `None` = unknown identity: the handshake fails.
    pub keys: PskLookup,
    /// Bound on one handshake. Default [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// DTLS MTU in bytes of UDP payload. Default [`DEFAULT_MTU`].
    pub mtu: u32,
    /// OpenSSL cipher list. Default [`DEFAULT_PSK_CIPHERS`].
    pub ciphers: String,
}

impl PskServerConfig {
    /// A configuration with the given key lookup and default timeout, MTU and ciphers.
    pub fn new(keys: PskLookup) -> Self {
        PskServerConfig {
            keys,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            mtu: DEFAULT_MTU,
            ciphers: DEFAULT_PSK_CIPHERS.to_owned(),
        }
    }

    /// This PSK configuration plus certificates: a mixed-mode server. The cipher list becomes
    /// the derived default (this list, then [`DEFAULT_X509_CIPHERS`]) unless it was changed
    /// from [`DEFAULT_PSK_CIPHERS`], in which case it is kept as given.
    pub fn with_x509(self, x509: X509Credentials) -> DtlsServerConfig {
        let mut cfg = DtlsServerConfig::from(self);
        if cfg.ciphers.as_deref() == Some(DEFAULT_PSK_CIPHERS) {
            cfg.ciphers = None;
        }
        cfg.x509 = Some(x509);
        cfg
    }
}

impl fmt::Debug for PskServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PskServerConfig")
            .field("keys", &"<lookup>")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("mtu", &self.mtu)
            .field("ciphers", &self.ciphers)
            .finish()
    }
}

/// Client-side PSK configuration.
#[derive(Clone)]
pub struct PskClientConfig {
    /// Our PSK identity (no NUL bytes: OpenSSL passes it as a C string).
    pub identity: Vec<u8>,
    /// The pre-shared key.
    pub key: Vec<u8>,
    /// Bound on one handshake. Default [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// DTLS MTU in bytes of UDP payload. Default [`DEFAULT_MTU`].
    pub mtu: u32,
    /// OpenSSL cipher list. Default [`DEFAULT_PSK_CIPHERS`].
    pub ciphers: String,
    /// First handshake retransmission timeout (doubling, capped at [`MAX_RETRANSMIT`]);
    /// `None` = OpenSSL's 1 s. See [`DtlsClient::connect`].
    pub initial_retransmit: Option<Duration>,
}

impl PskClientConfig {
    /// A configuration with the given credentials and default timeout, MTU and ciphers.
    pub fn new(identity: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        PskClientConfig {
            identity: identity.into(),
            key: key.into(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            mtu: DEFAULT_MTU,
            ciphers: DEFAULT_PSK_CIPHERS.to_owned(),
            initial_retransmit: None,
        }
    }
}

impl fmt::Debug for PskClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PskClientConfig")
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .field("key", &"<redacted>")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("mtu", &self.mtu)
            .field("ciphers", &self.ciphers)
            .field("initial_retransmit", &self.initial_retransmit)
            .finish()
    }
}

/// Our certificate, its key, and the CAs we trust for the peer's chain.
#[derive(Clone)]
pub struct X509Credentials {
    /// Our chain, leaf first (intermediates follow; the root may be omitted).
    pub cert_chain: Vec<X509>,
    /// The leaf's private key.
    pub key: PKey<Private>,
    /// Trust anchors for the peer's chain (must include the root the peer chains to).
    pub ca: Vec<X509>,
}

impl X509Credentials {
    /// Credentials from in-memory certificates and key (checked when a context is built).
    pub fn new(cert_chain: Vec<X509>, key: PKey<Private>, ca: Vec<X509>) -> Self {
        X509Credentials {
            cert_chain,
            key,
            ca,
        }
    }

    /// Reads PEM files: `cert` holds our chain (leaf first), `key` the leaf's private key
    /// (PKCS#8 or traditional, unencrypted), `ca` one or more trust anchors. Each error names
    /// the file and why it cannot be used (missing or unreadable, no PEM certificate / key in
    /// it, the key does not match the certificate).
    /// Reads extra trust anchors (PEM CA certificates) from a file.
    pub fn ca_from_pem_file(ca: &Path) -> Result<Vec<X509>, TransportError> {
        read_pem_certs(ca)
    }

    pub fn from_pem_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TransportError> {
        let cert_chain = read_pem_certs(cert)?;
        let key_pem = read_file(key)?;
        let private =
            PKey::private_key_from_pem(&key_pem).map_err(|e| TransportError::DtlsCredentials {
                path: key.to_path_buf(),
                reason: format!("not a PEM private key ({})", first_reason(&e)),
            })?;
        let anchors = read_pem_certs(ca)?;
        let creds = X509Credentials::new(cert_chain, private, anchors);
        if !creds.key_matches_leaf() {
            return Err(TransportError::DtlsCredentials {
                path: key.to_path_buf(),
                reason: format!(
                    "the private key does not match the certificate in {}",
                    cert.display()
                ),
            });
        }
        Ok(creds)
    }

    /// Whether the private key belongs to the leaf certificate.
    pub fn key_matches_leaf(&self) -> bool {
        self.cert_chain.first().is_some_and(|leaf| {
            leaf.public_key()
                .is_ok_and(|public| public.public_eq(&self.key))
        })
    }

    /// Our leaf certificate's identity (CN, SANs, SPKI), e.g. for logs.
    pub fn identity(&self) -> Option<CertIdentity> {
        self.cert_chain
            .first()
            .and_then(|leaf| CertIdentity::from_x509(leaf).ok())
    }

    /// Installs chain, key and trust anchors on a context and checks them.
    fn install(&self, b: &mut SslContextBuilder) -> Result<(), TransportError> {
        let cfg = |context| move |source| TransportError::Config { context, source };
        let Some((leaf, intermediates)) = self.cert_chain.split_first() else {
            return Err(TransportError::InvalidConfig {
                reason: "X.509 credentials need at least one certificate (the leaf)",
            });
        };
        if self.ca.is_empty() {
            return Err(TransportError::InvalidConfig {
                reason: "X.509 credentials need at least one CA certificate to verify peers",
            });
        }
        if !self.key_matches_leaf() {
            return Err(TransportError::InvalidConfig {
                reason: "the private key does not match the leaf certificate",
            });
        }
        b.set_certificate(leaf)
            .map_err(cfg("installing our certificate"))?;
        for cert in intermediates {
            b.add_extra_chain_cert(cert.clone())
                .map_err(cfg("installing an intermediate certificate"))?;
        }
        b.set_private_key(&self.key)
            .map_err(cfg("installing our private key"))?;
        b.check_private_key()
            .map_err(cfg("checking the private key against the certificate"))?;
        for anchor in &self.ca {
            b.cert_store_mut()
                .add_cert(anchor.clone())
                .map_err(cfg("adding a trusted CA certificate"))?;
        }
        Ok(())
    }
}

impl fmt::Debug for X509Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Credentials")
            .field(
                "leaf",
                &self
                    .identity()
                    .map(|id| id.display_name())
                    .unwrap_or_default(),
            )
            .field("chain_len", &self.cert_chain.len())
            .field("key", &"<redacted>")
            .field("ca_len", &self.ca.len())
            .finish()
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|e| TransportError::DtlsCredentials {
        path: path.to_path_buf(),
        reason: format!("cannot read the file: {e}"),
    })
}

fn read_pem_certs(path: &Path) -> Result<Vec<X509>, TransportError> {
    let pem = read_file(path)?;
    let not_pem = |detail: String| TransportError::DtlsCredentials {
        path: path.to_path_buf(),
        reason: format!("no PEM certificate in the file{detail}"),
    };
    let certs =
        X509::stack_from_pem(&pem).map_err(|e| not_pem(format!(" ({})", first_reason(&e))))?;
    if certs.is_empty() {
        return Err(not_pem(String::new()));
    }
    Ok(certs)
}

/// The first reason string on an OpenSSL error stack, or its display.
fn first_reason(stack: &openssl::error::ErrorStack) -> String {
    stack
        .errors()
        .iter()
        .find_map(|e| e.reason())
        .map(str::to_owned)
        .unwrap_or_else(|| stack.to_string())
}

/// Server configuration: PSK, certificates, or both at once.
#[derive(Clone)]
pub struct DtlsServerConfig {
    /// PSK identity → key; `None` = no PSK suites.
    pub psk: Option<PskLookup>,
    /// Our certificate and the CAs client certificates must chain to; `None` = no
    /// certificate suites.
    pub x509: Option<X509Credentials>,
    /// Bound on one handshake. Default [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// DTLS MTU in bytes of UDP payload. Default [`DEFAULT_MTU`].
    pub mtu: u32,
    /// OpenSSL cipher list; `None` = derived from the enabled modes: [`DEFAULT_PSK_CIPHERS`]
    /// and/or [`DEFAULT_X509_CIPHERS`], PSK first (see [`Self::effective_ciphers`]).
    pub ciphers: Option<String>,
    /// Who runs PSK handshakes with an AEAD suite. Default [`ServerHandshakes::Lean`].
    pub handshakes: ServerHandshakes,
}

/// Who runs a server's handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerHandshakes {
    /// [`super::psk_server`] for PSK handshakes whose suite is AES-128 CCM_8, CCM or GCM;
    /// OpenSSL for every other one (certificates, CBC).
    #[default]
    Lean,
    /// OpenSSL for every handshake.
    #[serde(rename = "openssl")]
    OpenSsl,
}

impl DtlsServerConfig {
    /// A configuration with the given modes and default timeout, MTU and ciphers.
    pub fn new(psk: Option<PskLookup>, x509: Option<X509Credentials>) -> Self {
        DtlsServerConfig {
            psk,
            x509,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            mtu: DEFAULT_MTU,
            ciphers: None,
            handshakes: ServerHandshakes::default(),
        }
    }

    /// The cipher list the server will use: `ciphers` if set, else the defaults of the
    /// enabled modes joined PSK first. The client's preference order decides.
    pub fn effective_ciphers(&self) -> String {
        if let Some(list) = &self.ciphers {
            return list.clone();
        }
        match (self.psk.is_some(), self.x509.is_some()) {
            (true, true) => format!("{DEFAULT_PSK_CIPHERS}:{DEFAULT_X509_CIPHERS}"),
            (false, true) => DEFAULT_X509_CIPHERS.to_owned(),
            _ => DEFAULT_PSK_CIPHERS.to_owned(),
        }
    }
}

impl From<PskServerConfig> for DtlsServerConfig {
    fn from(cfg: PskServerConfig) -> Self {
        DtlsServerConfig {
            psk: Some(cfg.keys),
            x509: None,
            handshake_timeout: cfg.handshake_timeout,
            mtu: cfg.mtu,
            ciphers: Some(cfg.ciphers),
            handshakes: ServerHandshakes::default(),
        }
    }
}

impl fmt::Debug for DtlsServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DtlsServerConfig")
            .field("psk", &self.psk.as_ref().map(|_| "<lookup>"))
            .field("x509", &self.x509)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("mtu", &self.mtu)
            .field("ciphers", &self.effective_ciphers())
            .field("handshakes", &self.handshakes)
            .finish()
    }
}

/// Client-side certificate configuration.
#[derive(Clone, Debug)]
pub struct X509ClientConfig {
    /// Our chain and key, and the CAs the server's chain must verify against.
    pub creds: X509Credentials,
    /// Bound on one handshake. Default [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// DTLS MTU in bytes of UDP payload. Default [`DEFAULT_MTU`].
    pub mtu: u32,
    /// OpenSSL cipher list. Default [`DEFAULT_X509_CIPHERS`].
    pub ciphers: String,
    /// First handshake retransmission timeout; `None` = OpenSSL's 1 s. See
    /// [`PskClientConfig::initial_retransmit`].
    pub initial_retransmit: Option<Duration>,
}

impl X509ClientConfig {
    /// A configuration with the given credentials and default timeout, MTU and ciphers.
    pub fn new(creds: X509Credentials) -> Self {
        X509ClientConfig {
            creds,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            mtu: DEFAULT_MTU,
            ciphers: DEFAULT_X509_CIPHERS.to_owned(),
            initial_retransmit: None,
        }
    }
}

/// Client configuration: PSK or certificates.
#[derive(Clone, Debug)]
pub enum DtlsClientConfig {
    /// Pre-shared key.
    Psk(PskClientConfig),
    /// X.509 certificates (mutual).
    X509(X509ClientConfig),
}

impl From<PskClientConfig> for DtlsClientConfig {
    fn from(cfg: PskClientConfig) -> Self {
        DtlsClientConfig::Psk(cfg)
    }
}

impl From<X509ClientConfig> for DtlsClientConfig {
    fn from(cfg: X509ClientConfig) -> Self {
        DtlsClientConfig::X509(cfg)
    }
}

/// Per-`Ssl` extra data slots shared by every context in the process.
#[derive(Clone, Copy)]
struct ExIndices {
    /// The peer address, for the cookie callbacks.
    peer: Index<Ssl, SocketAddr>,
    /// The PSK identity accepted by the server callback.
    identity: Index<Ssl, Vec<u8>>,
    /// The cookie of the ClientHello [`DtlsServer::accept`] verified, for the verify callback.
    cookie: Index<Ssl, Vec<u8>>,
    /// The first retransmission timeout in µs, for [`retransmit_timer`].
    retransmit: Index<Ssl, u32>,
    /// The PSK a client session presents, for the shared client context's callback.
    psk: Index<Ssl, PskCredential>,
}

/// One client session's PSK identity and key (the identity without NUL bytes).
#[derive(Clone)]
struct PskCredential {
    identity: Vec<u8>,
    key: Vec<u8>,
}

fn ex_indices() -> Result<ExIndices, TransportError> {
    static INDICES: OnceLock<ExIndices> = OnceLock::new();
    if let Some(indices) = INDICES.get() {
        return Ok(*indices);
    }
    let err = |source| TransportError::Config {
        context: "allocating SSL ex_data index",
        source,
    };
    let fresh = ExIndices {
        peer: Ssl::new_ex_index().map_err(err)?,
        identity: Ssl::new_ex_index().map_err(err)?,
        cookie: Ssl::new_ex_index().map_err(err)?,
        retransmit: Ssl::new_ex_index().map_err(err)?,
        psk: Ssl::new_ex_index().map_err(err)?,
    };
    // A lost race only wastes five index slots.
    Ok(*INDICES.get_or_init(|| fresh))
}

/// The settings both roles share: DTLS 1.2 only, the cipher list, no MTU queries to the BIO.
fn base_context(ciphers: &str) -> Result<SslContextBuilder, TransportError> {
    let cfg = |context| move |source| TransportError::Config { context, source };
    let mut b = SslContextBuilder::new(SslMethod::dtls()).map_err(cfg("creating DTLS context"))?;
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))
        .map_err(cfg("setting minimum version DTLS 1.2"))?;
    b.set_max_proto_version(Some(SslVersion::DTLS1_2))
        .map_err(cfg("setting maximum version DTLS 1.2"))?;
    b.set_cipher_list(ciphers)
        .map_err(cfg("setting the cipher list"))?;
    // No renegotiation: a session's proven identity must not change under the layers above.
    b.set_options(SslOptions::NO_QUERY_MTU | SslOptions::NO_TICKET | SslOptions::NO_RENEGOTIATION);
    b.set_verify(SslVerifyMode::NONE);
    Ok(b)
}

fn check_mtu(mtu: u32) -> Result<(), TransportError> {
    // Below ~256 OpenSSL cannot fit handshake fragments; above 65 507 UDP cannot carry it.
    if !(256..=65_507).contains(&mtu) {
        return Err(TransportError::InvalidConfig {
            reason: "mtu must be within 256..=65507 bytes",
        });
    }
    Ok(())
}

/// The server role: accepts DTLS sessions on pipes handed out by an accepting mux.
pub struct DtlsServer {
    ctx: SslContext,
    cookies: Arc<CookieJar>,
    indices: ExIndices,
    handshake_timeout: Duration,
    mtu: u32,
    lean: Option<LeanPsk>,
}

/// What PSK handshakes without OpenSSL need: the keys and the suites the server enables,
/// in its order ([`psk_server::choose`]).
struct LeanPsk {
    keys: PskLookup,
    enabled: Vec<[u8; 2]>,
}

impl fmt::Debug for DtlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DtlsServer")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("mtu", &self.mtu)
            .finish_non_exhaustive()
    }
}

impl DtlsServer {
    /// Build the server context: DTLS 1.2, cookie exchange on, PSK via `psk` and/or
    /// certificates via `x509` (then client certificates are required for certificate
    /// suites). Accepts a [`PskServerConfig`] as before.
    pub fn new(cfg: impl Into<DtlsServerConfig>) -> Result<Self, TransportError> {
        let cfg: DtlsServerConfig = cfg.into();
        check_mtu(cfg.mtu)?;
        if cfg.psk.is_none() && cfg.x509.is_none() {
            return Err(TransportError::InvalidConfig {
                reason: "a DTLS server needs PSK keys, X.509 credentials, or both",
            });
        }
        let indices = ex_indices()?;
        let ciphers = cfg.effective_ciphers();
        let lean = match (&cfg.psk, cfg.handshakes) {
            (Some(keys), ServerHandshakes::Lean) => {
                psk_server::enabled_suites(&ciphers).map(|enabled| LeanPsk {
                    keys: keys.clone(),
                    enabled,
                })
            }
            _ => None,
        };
        let mut b = base_context(&ciphers)?;
        b.set_options(SslOptions::COOKIE_EXCHANGE);
        b.set_session_cache_mode(SslSessionCacheMode::OFF);

        if let Some(keys) = cfg.psk.clone() {
            let identity_idx = indices.identity;
            b.set_psk_server_callback(move |ssl, identity, psk_out| {
                let Some(identity) = identity else {
                    return Ok(0);
                };
                let Some(key) = keys(identity) else {
                    tracing::info!(identity = %String::from_utf8_lossy(identity), "unknown PSK identity");
                    return Ok(0);
                };
                let Some(out) = psk_out.get_mut(..key.len()) else {
                    tracing::error!("PSK for identity longer than OpenSSL's buffer");
                    return Ok(0);
                };
                if key.is_empty() {
                    return Ok(0);
                }
                if ssl
                    .ex_data(identity_idx)
                    .is_some_and(|known| known.as_slice() != identity)
                {
                    tracing::warn!("PSK identity change within a session refused");
                    return Ok(0);
                }
                out.copy_from_slice(&key);
                ssl.set_ex_data(identity_idx, identity.to_vec());
                Ok(key.len())
            });
        }

        if let Some(x509) = &cfg.x509 {
            x509.install(&mut b)?;
            // Tell clients which CAs we accept (CertificateRequest certificate_authorities).
            for anchor in &x509.ca {
                b.add_client_ca(anchor)
                    .map_err(|source| TransportError::Config {
                        context: "adding a CA name to the certificate request",
                        source,
                    })?;
            }
            // Certificate suites: a client certificate is required and verified. OpenSSL sends
            // no CertificateRequest for PSK suites, so PSK clients are not asked for one.
            b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        }

        let cookies = Arc::new(CookieJar::new().map_err(|source| TransportError::Config {
            context: "generating the cookie secret",
            source,
        })?);
        // Cookies are issued statelessly before OpenSSL sees the peer (see the module doc);
        // OpenSSL only ever verifies the one `accept` already checked.
        b.set_cookie_generate_cb(|_ssl, _out| Err(openssl::error::ErrorStack::get()));
        let cookie_idx = indices.cookie;
        b.set_cookie_verify_cb(move |ssl, cookie| {
            ssl.ex_data(cookie_idx).is_some_and(|expected| {
                expected.len() == cookie.len() && openssl::memcmp::eq(expected, cookie)
            })
        });

        Ok(DtlsServer {
            ctx: b.build(),
            cookies,
            indices,
            handshake_timeout: cfg.handshake_timeout,
            mtu: cfg.mtu,
            lean,
        })
    }

    /// Run the server handshake on `pipe`, bounded by the configured handshake timeout.
    ///
    /// Run each accept in its own task (one per pipe from the mux's accept queue): a handshake
    /// waits on its peer for up to the timeout, and must not hold up anyone else's.
    pub async fn accept(&self, mut pipe: Pipe) -> Result<DtlsSession, TransportError> {
        let peer = pipe.peer();
        let started = tokio::time::Instant::now();
        let hello = tokio::time::timeout(self.handshake_timeout, self.await_cookie(&mut pipe))
            .await
            .map_err(|_| TransportError::HandshakeTimeout {
                peer,
                after: self.handshake_timeout,
                peer_answered: false,
            })??;
        if let Some(lean) = &self.lean
            && let Ok(parsed) = parse_client_hello(&hello)
            && let Some(suite) = psk_server::choose(&parsed, &lean.enabled)
        {
            return self.accept_lean(pipe, &hello, suite, lean, started).await;
        }
        let mut ssl = new_ssl(&self.ctx, self.mtu)?;
        ssl.set_ex_data(self.indices.peer, peer);
        listen(&mut ssl, &hello, self.indices.cookie, peer)?;
        let mut stream = attach(ssl, pipe, self.mtu)?;
        let left = self.handshake_timeout.saturating_sub(started.elapsed());
        let last_flight = handshake(&mut stream, Role::Server, peer, left).await?;
        // A certificate suite leaves a verified client certificate; a PSK suite leaves the
        // identity our callback accepted. Anything else yields no session.
        let auth = if let Some(id) = peer_cert_identity(stream.ssl(), peer)? {
            Auth::Certificate(id)
        } else if let Some(identity) = stream.ssl().ex_data(self.indices.identity) {
            Auth::Psk(identity.clone())
        } else {
            return Err(TransportError::PeerIdentity {
                peer,
                reason: "neither a PSK identity nor a client certificate".to_owned(),
            });
        };
        let pipe = stream.get_ref();
        pipe.mux().mark_established(pipe);
        Ok(DtlsSession::established(
            stream,
            peer,
            auth,
            Role::Server,
            last_flight,
        ))
    }
}

impl DtlsServer {
    /// A PSK handshake without OpenSSL ([`psk_server`]), bounded by the handshake timeout;
    /// our flight is resent after 1 s, doubling, while the client's does not come.
    async fn accept_lean(
        &self,
        mut pipe: Pipe,
        hello: &[u8],
        suite: psk_server::LeanSuite,
        lean: &LeanPsk,
        started: tokio::time::Instant,
    ) -> Result<DtlsSession, TransportError> {
        let peer = pipe.peer();
        let failed = |e: PskServerError| TransportError::Handshake {
            peer,
            reason: e.to_string(),
            source: HandshakeFailure::Lean(e),
        };
        let parsed = parse_client_hello(hello)
            .map_err(|_| failed(PskServerError::Malformed("ClientHello")))?;
        let (record, _) = handshake_codec::split_record(hello)
            .map_err(|_| failed(PskServerError::Malformed("ClientHello record")))?;
        let mut server_random = [0u8; 32];
        openssl::rand::rand_bytes(&mut server_random).map_err(|source| TransportError::Config {
            context: "drawing a server random",
            source,
        })?;
        let (mut hs, flight) =
            psk_server::PskServerHandshake::start(&parsed, record, suite, server_random)
                .map_err(failed)?;
        pipe.send(&flight).await?;
        let deadline = started + self.handshake_timeout;
        let mut wait = Duration::from_secs(1);
        let outcome = loop {
            let resend_at = (tokio::time::Instant::now() + wait).min(deadline);
            match tokio::time::timeout_at(resend_at, pipe.recv()).await {
                Ok(datagram) => match hs.on_datagram(&datagram?, &*lean.keys) {
                    Ok(psk_server::Step::Send(flight)) => pipe.send(&flight).await?,
                    Ok(psk_server::Step::Wait) => {}
                    Ok(psk_server::Step::Established(last)) => {
                        // The session takes the address over before the client can answer
                        // our Finished: its first request must not reach a session it
                        // replaces (RFC 6347 §4.2.8).
                        pipe.mux().mark_established(&pipe);
                        pipe.send(&last).await?;
                        break Ok(());
                    }
                    Err(e) => break Err(e),
                },
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(TransportError::HandshakeTimeout {
                        peer,
                        after: self.handshake_timeout,
                        peer_answered: true,
                    });
                }
                Err(_) => {
                    if let Some(flight) = hs.resend() {
                        pipe.send(&flight).await?;
                    }
                    wait = wait.saturating_mul(2);
                }
            }
        };
        if let Err(e) = outcome {
            if e == PskServerError::UnknownIdentity {
                tracing::info!(peer = %peer, "unknown PSK identity");
            }
            if let Some(description) = e.alert() {
                let _ = pipe.send(&hs.fatal_alert(description)).await;
            }
            return Err(failed(e));
        }
        let suite = hs.suite();
        let Some((records, identity, last_flight)) = hs.into_session() else {
            return Err(failed(PskServerError::Unexpected("end of the handshake")));
        };
        let compact = CompactSession::established(pipe, records, last_flight);
        Ok(DtlsSession::compact(
            compact,
            peer,
            Auth::Psk(identity),
            suite.name,
        ))
    }

    /// The stateless admission decision for the listener's mux: a ClientHello with a valid
    /// cookie is admitted, a cookieless one is answered with a HelloVerifyRequest, everything
    /// else from a peer without state is dropped.
    pub fn gate(&self) -> Gate {
        let cookies = self.cookies.clone();
        Gate::new(
            move |now, peer, datagram| match cookies.check(now, peer, datagram) {
                HelloVerdict::Admit => Verdict::Admit,
                HelloVerdict::Verify(hvr) => Verdict::Reply(hvr),
                HelloVerdict::BadCookie | HelloVerdict::Invalid(_) => Verdict::Drop,
            },
        )
    }

    /// Reads the pipe until a ClientHello with a valid cookie (the first datagram, behind
    /// [`gate`](Self::gate)); answers cookieless ones with a HelloVerifyRequest and ignores
    /// anything else.
    async fn await_cookie(&self, pipe: &mut Pipe) -> Result<Vec<u8>, TransportError> {
        let peer = pipe.peer();
        loop {
            let datagram = pipe.recv().await?;
            match self.cookies.check(Instant::now(), peer, &datagram) {
                HelloVerdict::Admit => return Ok(datagram),
                HelloVerdict::Verify(hvr) => pipe.send(&hvr).await?,
                HelloVerdict::BadCookie | HelloVerdict::Invalid(_) => {
                    tracing::debug!(peer = %peer, "datagram before a valid cookie ignored");
                }
            }
        }
    }
}

/// `DTLSv1_listen` and `BIO_ADDR`, which openssl-sys does not bind (libssl/libcrypto 1.1+).
mod listen_ffi {
    use std::ffi::{c_int, c_void};

    unsafe extern "C" {
        pub fn DTLSv1_listen(ssl: *mut openssl_sys::SSL, client: *mut c_void) -> c_int;
        pub fn BIO_ADDR_new() -> *mut c_void;
        pub fn BIO_ADDR_free(addr: *mut c_void);
    }
}

/// Hands the verified second ClientHello to OpenSSL: `DTLSv1_listen` reads it from a memory
/// BIO, checks its cookie through the verify callback (against `cookie_idx`), buffers it and
/// sets the sequence numbers so the following `SSL_accept` continues the handshake. The
/// memory BIOs are replaced (and freed) when the `Ssl` is attached to the pipe.
fn listen(
    ssl: &mut Ssl,
    hello: &[u8],
    cookie_idx: Index<Ssl, Vec<u8>>,
    peer: SocketAddr,
) -> Result<(), TransportError> {
    let cookie = super::cookie::parse_client_hello(hello)
        .map(|h| h.cookie.to_vec())
        .map_err(|_| TransportError::CookieRejected { peer })?;
    ssl.set_ex_data(cookie_idx, cookie);
    let len = std::ffi::c_int::try_from(hello.len())
        .map_err(|_| TransportError::CookieRejected { peer })?;
    let setup = |source| TransportError::Config {
        context: "preparing DTLSv1_listen",
        source,
    };
    // SAFETY: the BIOs are checked for NULL and owned by the SSL after SSL_set_bio; `hello`
    // outlives the BIO_write that copies it; the BIO_ADDR is freed on every path.
    let rc = unsafe {
        let rbio = openssl_sys::BIO_new(openssl_sys::BIO_s_mem());
        let wbio = openssl_sys::BIO_new(openssl_sys::BIO_s_mem());
        if rbio.is_null() || wbio.is_null() {
            openssl_sys::BIO_free_all(rbio);
            openssl_sys::BIO_free_all(wbio);
            return Err(setup(openssl::error::ErrorStack::get()));
        }
        openssl_sys::SSL_set_bio(ssl.as_ptr(), rbio, wbio);
        if openssl_sys::BIO_write(rbio, hello.as_ptr().cast(), len) != len {
            return Err(setup(openssl::error::ErrorStack::get()));
        }
        let addr = listen_ffi::BIO_ADDR_new();
        if addr.is_null() {
            return Err(setup(openssl::error::ErrorStack::get()));
        }
        let rc = listen_ffi::DTLSv1_listen(ssl.as_ptr(), addr);
        listen_ffi::BIO_ADDR_free(addr);
        rc
    };
    if rc == 1 {
        Ok(())
    } else {
        // Clear OpenSSL's error queue for the next user of this thread.
        let errors = openssl::error::ErrorStack::get();
        tracing::debug!(peer = %peer, rc, %errors, "DTLSv1_listen refused the ClientHello");
        Err(TransportError::CookieRejected { peer })
    }
}

/// The verified peer certificate's identity, if the peer presented one.
fn peer_cert_identity(
    ssl: &SslRef,
    peer: SocketAddr,
) -> Result<Option<Arc<CertIdentity>>, TransportError> {
    let Some(cert) = ssl.peer_certificate() else {
        return Ok(None);
    };
    // The handshake only completes with PEER verification passed; double-check anyway.
    let verdict = ssl.verify_result();
    if verdict != X509VerifyResult::OK {
        return Err(TransportError::PeerIdentity {
            peer,
            reason: format!("certificate not verified: {}", verdict.error_string()),
        });
    }
    // The verified chain ends in the trust anchor OpenSSL chose (leaf first).
    let anchor = ssl.verified_chain().and_then(chain_anchor);
    CertIdentity::from_x509(&cert)
        .map(|id| Some(Arc::new(id.with_trust_anchor(anchor))))
        .map_err(|e| TransportError::PeerIdentity {
            peer,
            reason: e.to_string(),
        })
}

#[derive(Clone)]
enum ClientMode {
    /// Our own PSK, set on each session of the shared context.
    Psk(PskCredential),
    /// Certificates: the server's identity is read after each handshake.
    X509,
}

/// The client role: opens DTLS sessions to peers over pipes from [`super::mux::DatagramMux::connect`].
pub struct DtlsClient {
    ctx: SslContext,
    mode: ClientMode,
    handshake_timeout: Duration,
    mtu: u32,
    /// First retransmission timeout in µs (`None` = OpenSSL's own timer).
    initial_retransmit_us: Option<u32>,
    indices: ExIndices,
}

impl fmt::Debug for DtlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &self.mode {
            ClientMode::Psk(psk) => format!("psk:{}", String::from_utf8_lossy(&psk.identity)),
            ClientMode::X509 => "x509".to_owned(),
        };
        f.debug_struct("DtlsClient")
            .field("mode", &mode)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("mtu", &self.mtu)
            .field("initial_retransmit_us", &self.initial_retransmit_us)
            .finish_non_exhaustive()
    }
}

impl DtlsClient {
    /// Build the client context: DTLS 1.2 with PSK ([`PskClientConfig`]) or certificates
    /// ([`X509ClientConfig`]: our chain is sent, the server's chain must verify against
    /// `creds.ca`; names are left to the caller).
    pub fn new(cfg: impl Into<DtlsClientConfig>) -> Result<Self, TransportError> {
        match cfg.into() {
            DtlsClientConfig::Psk(cfg) => Self::new_psk(cfg),
            DtlsClientConfig::X509(cfg) => Self::new_x509(cfg),
        }
    }

    fn new_psk(cfg: PskClientConfig) -> Result<Self, TransportError> {
        check_mtu(cfg.mtu)?;
        if cfg.identity.contains(&0) {
            return Err(TransportError::InvalidConfig {
                reason: "PSK identity must not contain NUL bytes",
            });
        }
        if cfg.key.is_empty() {
            return Err(TransportError::InvalidConfig {
                reason: "PSK key must not be empty",
            });
        }
        let indices = ex_indices()?;
        let ctx = shared_psk_client_context(&cfg.ciphers, indices)?;
        Ok(DtlsClient {
            ctx,
            mode: ClientMode::Psk(PskCredential {
                identity: cfg.identity,
                key: cfg.key,
            }),
            handshake_timeout: cfg.handshake_timeout,
            mtu: cfg.mtu,
            initial_retransmit_us: cfg.initial_retransmit.map(timer_us),
            indices,
        })
    }

    fn new_x509(cfg: X509ClientConfig) -> Result<Self, TransportError> {
        check_mtu(cfg.mtu)?;
        let mut b = base_context(&cfg.ciphers)?;
        cfg.creds.install(&mut b)?;
        b.set_verify(SslVerifyMode::PEER);
        Ok(DtlsClient {
            ctx: b.build(),
            mode: ClientMode::X509,
            handshake_timeout: cfg.handshake_timeout,
            mtu: cfg.mtu,
            initial_retransmit_us: cfg.initial_retransmit.map(timer_us),
            indices: ex_indices()?,
        })
    }

    /// Run the client handshake on `pipe`, bounded by the configured handshake timeout.
    ///
    /// With `initial_retransmit` set, a lost flight is resent after that long instead of
    /// OpenSSL's fixed 1 s, doubling up to [`MAX_RETRANSMIT`].
    ///
    /// With certificates, the server's certificate must also be valid for the address we
    /// dial (an IP SAN for the pipe's peer IP), as the TLS client checks its server name:
    /// another peer's certificate from the same CA fails the handshake ("IP address
    /// mismatch"). `CertRule`s are stricter checks on top, left to the caller.
    pub async fn connect(&self, pipe: Pipe) -> Result<DtlsSession, TransportError> {
        let peer = pipe.peer();
        let mut ssl = new_ssl(&self.ctx, self.mtu)?;
        if let Some(initial) = self.initial_retransmit_us {
            set_retransmit_timer(&mut ssl, self.indices.retransmit, initial);
        }
        if let ClientMode::Psk(psk) = &self.mode {
            ssl.set_ex_data(self.indices.psk, psk.clone());
        }
        if let ClientMode::X509 = self.mode {
            ssl.param_mut()
                .set_ip(peer.ip())
                .map_err(|source| TransportError::Config {
                    context: "setting the peer address to verify",
                    source,
                })?;
        }
        let mut stream = attach(ssl, pipe, self.mtu)?;
        let last_flight =
            handshake(&mut stream, Role::Client, peer, self.handshake_timeout).await?;
        let auth = match &self.mode {
            ClientMode::Psk(psk) => Auth::Psk(psk.identity.clone()),
            ClientMode::X509 => match peer_cert_identity(stream.ssl(), peer)? {
                Some(id) => Auth::Certificate(id),
                None => {
                    return Err(TransportError::PeerIdentity {
                        peer,
                        reason: "the server presented no certificate".to_owned(),
                    });
                }
            },
        };
        Ok(DtlsSession::established(
            stream,
            peer,
            auth,
            Role::Client,
            last_flight,
        ))
    }
}

/// The PSK client context for `ciphers`, built once per cipher list and shared by every
/// PSK device: an `SSL_CTX` per device cost tens of KB each at 10 000 devices. Each session
/// carries its own identity and key in its ex_data ([`ExIndices::psk`]), which the callback
/// reads.
fn shared_psk_client_context(
    ciphers: &str,
    indices: ExIndices,
) -> Result<SslContext, TransportError> {
    static CONTEXTS: OnceLock<std::sync::Mutex<std::collections::HashMap<String, SslContext>>> =
        OnceLock::new();
    let contexts = CONTEXTS.get_or_init(Default::default);
    let mut contexts = contexts.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(ctx) = contexts.get(ciphers) {
        return Ok(ctx.clone());
    }
    let mut b = base_context(ciphers)?;
    b.set_psk_client_callback(move |ssl, _hint, identity_out, psk_out| {
        let Some(psk) = ssl.ex_data(indices.psk) else {
            tracing::error!("DTLS client session without its PSK");
            return Ok(0);
        };
        // OpenSSL wants the identity NUL-terminated.
        let (Some(id_dst), Some(key_dst)) = (
            identity_out.get_mut(..psk.identity.len() + 1),
            psk_out.get_mut(..psk.key.len()),
        ) else {
            tracing::error!("PSK identity or key longer than OpenSSL's buffer");
            return Ok(0);
        };
        let (id_bytes, nul) = id_dst.split_at_mut(psk.identity.len());
        id_bytes.copy_from_slice(&psk.identity);
        nul.fill(0);
        key_dst.copy_from_slice(&psk.key);
        Ok(psk.key.len())
    });
    let ctx = b.build();
    contexts.insert(ciphers.to_owned(), ctx.clone());
    Ok(ctx)
}

/// Cap on the doubling handshake retransmission timeout (RFC 6347 §4.2.4.1: at least 60 s).
pub const MAX_RETRANSMIT: Duration = Duration::from_secs(60);

/// [`MAX_RETRANSMIT`] in µs, as OpenSSL's timer callback counts.
const MAX_RETRANSMIT_US: u32 = 60_000_000;

/// A configured initial timeout in µs, within 1 ms ..= [`MAX_RETRANSMIT`].
fn timer_us(d: Duration) -> u32 {
    u32::try_from(d.as_micros())
        .unwrap_or(u32::MAX)
        .clamp(1_000, MAX_RETRANSMIT_US)
}

/// The next retransmission timeout after `previous_us` (0: the first one): `initial_us`,
/// then doubling up to [`MAX_RETRANSMIT`].
fn next_timeout_us(initial_us: u32, previous_us: u32) -> u32 {
    if previous_us == 0 {
        initial_us.min(MAX_RETRANSMIT_US)
    } else {
        previous_us.saturating_mul(2).min(MAX_RETRANSMIT_US)
    }
}

/// `DTLS_set_timer_cb` (OpenSSL ≥ 1.1.1), which openssl-sys does not bind.
mod timer_ffi {
    use std::ffi::c_uint;

    pub type DtlsTimerCb = unsafe extern "C" fn(*mut openssl_sys::SSL, c_uint) -> c_uint;

    unsafe extern "C" {
        pub fn DTLS_set_timer_cb(ssl: *mut openssl_sys::SSL, cb: DtlsTimerCb);
    }
}

/// OpenSSL's timer callback: asked with 0 for a flight's first timeout, else with the one
/// that just expired. The initial value is read from the `Ssl`'s ex_data.
unsafe extern "C" fn retransmit_timer(
    ssl: *mut openssl_sys::SSL,
    previous_us: std::ffi::c_uint,
) -> std::ffi::c_uint {
    // SAFETY: OpenSSL calls this with the live SSL whose timer it runs.
    let ssl = unsafe { SslRef::from_ptr(ssl) };
    let initial = ex_indices()
        .ok()
        .and_then(|idx| ssl.ex_data(idx.retransmit).copied())
        .unwrap_or(1_000_000);
    next_timeout_us(initial, previous_us)
}

/// Starts the handshake retransmission timer at `initial_us` instead of OpenSSL's fixed
/// 1 s. RFC 6347 §4.2.4.1 recommends 1 s but allows a smaller initial timer where the path
/// is known: towards a device the link's ACK_TIMEOUT (`ack_timeout_ms`) is the operator's
/// statement of its round trip, and at 20 % loss a 1 s, 2 s, 4 s timer leaves a handshake
/// few attempts within a request's deadline.
fn set_retransmit_timer(ssl: &mut Ssl, index: Index<Ssl, u32>, initial_us: u32) {
    ssl.set_ex_data(index, initial_us);
    // SAFETY: the SSL is live; the callback only reads its ex_data.
    unsafe { timer_ffi::DTLS_set_timer_cb(ssl.as_ptr(), retransmit_timer) };
}

/// Puts `ssl` on `pipe`, with the pipe packing handshake records into datagrams of the DTLS
/// MTU for the whole session: each flight, first sent or retransmitted (also the last one,
/// retransmitted after the handshake), travels in as few datagrams as fit; application data
/// and alerts go one record per datagram (see the `Packer` in `mux.rs`).
fn attach(ssl: Ssl, mut pipe: Pipe, mtu: u32) -> Result<SslStream<Pipe>, TransportError> {
    pipe.set_packing(usize::try_from(mtu).ok());
    SslStream::new(ssl, pipe).map_err(|source| TransportError::Config {
        context: "attaching the pipe",
        source,
    })
}

fn new_ssl(ctx: &SslContext, mtu: u32) -> Result<Ssl, TransportError> {
    let mut ssl = Ssl::new(ctx).map_err(|source| TransportError::Config {
        context: "creating the SSL object",
        source,
    })?;
    ssl.set_mtu(mtu).map_err(|source| TransportError::Config {
        context: "setting the DTLS MTU",
        source,
    })?;
    Ok(ssl)
}

/// One line saying why a handshake failed: our verify error if we rejected the peer's
/// certificate, else the reasons on OpenSSL's error queue, else the error itself.
fn handshake_failure_reason(ssl: &SslRef, error: &openssl::ssl::Error, peer: SocketAddr) -> String {
    let verdict = ssl.verify_result();
    if verdict.as_raw() == openssl_sys::X509_V_ERR_IP_ADDRESS_MISMATCH {
        return format!(
            "peer certificate rejected: {} (it is not valid for {}: no IP SAN for the address)",
            verdict.error_string(),
            peer.ip()
        );
    }
    if verdict != X509VerifyResult::OK {
        return format!("peer certificate rejected: {}", verdict.error_string());
    }
    let reasons: Vec<&str> = error
        .ssl_error()
        .map(|stack| stack.errors().iter().filter_map(|e| e.reason()).collect())
        .unwrap_or_default();
    if reasons.is_empty() {
        error.to_string()
    } else {
        reasons.join("; ")
    }
}

/// Drive one handshake to completion, failure, or `timeout`; on completion, the datagram
/// that carried our last flight if it went out last (the server's ChangeCipherSpec +
/// Finished, which a compact session resends if the client asks).
///
/// Polls the handshake and wakes every [`HANDSHAKE_TICK`] to poll it again: each poll lets
/// OpenSSL check its retransmission timer (see the module doc).
async fn handshake(
    stream: &mut SslStream<Pipe>,
    role: Role,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, TransportError> {
    let run = async {
        loop {
            let step = poll_fn(|cx| {
                let pinned = Pin::new(&mut *stream);
                match role {
                    Role::Client => pinned.poll_connect(cx),
                    Role::Server => pinned.poll_accept(cx),
                }
            });
            tokio::select! {
                result = step => return result,
                () = tokio::time::sleep(HANDSHAKE_TICK) => {}
            }
        }
    };
    let outcome = tokio::time::timeout(timeout, run).await;
    let mut last_flight = None;
    if outcome.is_ok() {
        // The last flight (e.g. the server's ChangeCipherSpec + Finished) is followed by no
        // read, so packing still holds it. Best effort, as any datagram: the peer
        // retransmits if it is lost.
        last_flight = stream.get_ref().packed().map(<[u8]>::to_vec);
        if let Err(e) = stream.get_mut().send_pending().await {
            tracing::debug!(peer = %peer, error = %e, "last handshake flight not sent");
        }
    }
    match outcome {
        Ok(Ok(())) => Ok(last_flight),
        Ok(Err(source)) => {
            let reason = handshake_failure_reason(stream.ssl(), &source, peer);
            // A server's failures come from any host that passed the cookie exchange, as
            // fast as it likes: the listener logs them within a budget.
            match role {
                Role::Client => {
                    tracing::info!(peer = %peer, %reason, error = %source, "DTLS handshake failed");
                }
                Role::Server => {
                    tracing::debug!(peer = %peer, %reason, error = %source, "DTLS handshake failed");
                }
            }
            Err(TransportError::Handshake {
                peer,
                reason,
                source: HandshakeFailure::OpenSsl(source),
            })
        }
        Err(_) => {
            let peer_answered = stream.get_ref().received() > 0;
            match role {
                Role::Client => {
                    tracing::info!(peer = %peer, after = ?timeout, peer_answered, "DTLS handshake timed out");
                }
                Role::Server => {
                    tracing::debug!(peer = %peer, after = ?timeout, peer_answered, "DTLS handshake timed out");
                }
            }
            Err(TransportError::HandshakeTimeout {
                peer,
                after: timeout,
                peer_answered,
            })
        }
    }
}

/// How a session was authenticated.
#[derive(Clone)]
enum Auth {
    /// PSK: on the server the client's identity, on the client our own.
    Psk(Vec<u8>),
    /// Certificates: the peer's verified leaf.
    Certificate(Arc<CertIdentity>),
}

impl fmt::Display for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Psk(identity) => write!(f, "psk:{}", String::from_utf8_lossy(identity)),
            Auth::Certificate(id) => write!(f, "x509:{id}"),
        }
    }
}

/// An established DTLS 1.2 session with one peer.
pub struct DtlsSession {
    link: Link,
    peer: SocketAddr,
    auth: Auth,
    cipher: Option<&'static str>,
}

/// Who protects the session's records.
enum Link {
    /// Our record layer, OpenSSL's state freed (an AES-128 AEAD suite).
    Compact(Box<CompactSession>),
    /// OpenSSL, holding its record buffers only inside each call (other suites).
    OpenSsl(Box<SslStream<Pipe>>),
}

impl fmt::Debug for DtlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DtlsSession")
            .field("peer", &self.peer)
            .field("identity", &self.auth.to_string())
            .field("cipher", &self.cipher_name())
            .field("compact", &self.is_compact())
            .finish()
    }
}

impl DtlsSession {
    /// A session whose handshake is done: carried by our own record layer when the suite
    /// allows ([`compact_session::take_over`]), else by OpenSSL with the record buffers the
    /// handshake used given back until the next record ([`record_buffers`]).
    fn established(
        stream: SslStream<Pipe>,
        peer: SocketAddr,
        auth: Auth,
        role: Role,
        last_flight: Option<Vec<u8>>,
    ) -> Self {
        let cipher = stream.ssl().current_cipher().map(|c| c.name());
        let link = match compact_session::take_over(stream, role, last_flight) {
            Ok(compact) => Link::Compact(Box::new(compact)),
            Err(stream) => {
                record_buffers::release(stream.ssl());
                Link::OpenSsl(Box::new(stream))
            }
        };
        let session = DtlsSession {
            link,
            peer,
            auth,
            cipher,
        };
        tracing::debug!(
            peer = %peer,
            identity = %session.auth,
            cipher = cipher.unwrap_or("?"),
            records = if session.is_compact() { "ours" } else { "OpenSSL" },
            "DTLS session {}",
            match role {
                Role::Client => "connected",
                Role::Server => "accepted",
            }
        );
        session
    }

    /// A session whose handshake ran without OpenSSL ([`psk_server`]).
    fn compact(
        compact: CompactSession,
        peer: SocketAddr,
        auth: Auth,
        cipher: &'static str,
    ) -> Self {
        tracing::debug!(peer = %peer, identity = %auth, cipher, records = "ours", handshake = "ours", "DTLS session accepted");
        DtlsSession {
            link: Link::Compact(Box::new(compact)),
            peer,
            auth,
            cipher: Some(cipher),
        }
    }

    /// Whether our own record layer carries this session (OpenSSL's state is freed).
    pub fn is_compact(&self) -> bool {
        matches!(self.link, Link::Compact(_))
    }

    /// The PSK identity this session was authenticated with: on the server, the identity the
    /// client presented (and `keys` accepted); on the client, our own identity. `None` for a
    /// certificate session.
    pub fn psk_identity(&self) -> Option<&[u8]> {
        match &self.auth {
            Auth::Psk(identity) => Some(identity.as_slice()),
            Auth::Certificate(_) => None,
        }
    }

    /// The identity read from the peer's verified certificate (on the server: the client's,
    /// on the client: the server's). `None` for a PSK session.
    pub fn peer_certificate_identity(&self) -> Option<Arc<CertIdentity>> {
        match &self.auth {
            Auth::Certificate(id) => Some(id.clone()),
            Auth::Psk(_) => None,
        }
    }

    /// The negotiated cipher suite, in OpenSSL's naming (e.g. `PSK-AES128-CCM8`).
    pub fn cipher_name(&self) -> Option<&'static str> {
        self.cipher
    }

    /// Send close_notify. Best effort: the peer may never see it.
    pub async fn close(&mut self) -> Result<(), TransportError> {
        let peer = self.peer;
        match &mut self.link {
            Link::Compact(compact) => compact.close().await,
            Link::OpenSsl(stream) => {
                lend_buffers(stream).map_err(|source| TransportError::DtlsSend { peer, source })?;
                let closed = stream.shutdown().await;
                record_buffers::release(stream.ssl());
                closed.map_err(|source| TransportError::DtlsSend { peer, source })
            }
        }
    }
}

/// Lends a session OpenSSL's record buffers for one SSL call.
fn lend_buffers(stream: &SslStream<Pipe>) -> std::io::Result<()> {
    if record_buffers::lend(stream.ssl()) {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            "no memory for the DTLS record buffers",
        ))
    }
}

/// Polls for one application record, holding the record buffers only during the poll.
fn poll_record(
    stream: &mut SslStream<Pipe>,
    cx: &mut std::task::Context<'_>,
) -> Poll<std::io::Result<Vec<u8>>> {
    lend_buffers(stream)?;
    let record = read_record(Pin::new(&mut *stream), cx);
    record_buffers::release(stream.ssl());
    record
}

thread_local! {
    /// Where `SSL_read` decrypts a record: one per worker thread, borrowed only inside one
    /// synchronous poll. A buffer per session would keep up to a record's worth of touched
    /// memory per idle session; a fresh 16 KiB allocation per record cost a malloc, a
    /// shrinking realloc and heap consolidation on every datagram.
    static RECORD_BUFFER: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; MAX_RECORD].into_boxed_slice());
}

/// One application record (empty at the end of the stream), decrypted into the thread's
/// buffer and copied out at its own size.
fn read_record(
    stream: Pin<&mut SslStream<Pipe>>,
    cx: &mut std::task::Context<'_>,
) -> Poll<std::io::Result<Vec<u8>>> {
    use tokio::io::AsyncRead;
    RECORD_BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        let mut read = tokio::io::ReadBuf::new(&mut buffer[..]);
        stream
            .poll_read(cx, &mut read)
            .map_ok(|()| read.filled().to_vec())
    })
}

/// One record from a session OpenSSL carries.
async fn recv_openssl(
    stream: &mut SslStream<Pipe>,
    peer: SocketAddr,
) -> Result<Vec<u8>, TransportError> {
    match poll_fn(|cx| poll_record(stream, cx)).await {
        // Zero bytes: close_notify, or the pipe ended. OpenSSL never yields an empty
        // application record from SSL_read.
        Ok(record) if record.is_empty() => {
            let cause = if stream.get_ref().source_ended() {
                CloseCause::Shutdown
            } else {
                CloseCause::PeerClosed
            };
            Err(TransportError::Closed { peer, cause })
        }
        Ok(record) => Ok(record),
        Err(err) => Err(TransportError::Closed {
            peer,
            cause: CloseCause::Fatal(err.to_string()),
        }),
    }
}

/// One record sent on a session OpenSSL carries.
async fn send_openssl(
    stream: &mut SslStream<Pipe>,
    peer: SocketAddr,
    datagram: &[u8],
) -> Result<(), TransportError> {
    lend_buffers(stream).map_err(|source| TransportError::DtlsSend { peer, source })?;
    let written = stream.write(datagram).await;
    record_buffers::release(stream.ssl());
    let written = written.map_err(|source| TransportError::DtlsSend { peer, source })?;
    if written != datagram.len() {
        return Err(TransportError::ShortSend {
            peer,
            len: datagram.len(),
            sent: written,
        });
    }
    Ok(())
}

impl DatagramSession for DtlsSession {
    async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
        match &mut self.link {
            Link::Compact(compact) => compact.recv().await,
            Link::OpenSsl(stream) => recv_openssl(stream, self.peer).await,
        }
    }

    async fn send(&mut self, datagram: &[u8]) -> Result<(), TransportError> {
        match &mut self.link {
            Link::Compact(compact) => compact.send(datagram).await,
            Link::OpenSsl(stream) => send_openssl(stream, self.peer, datagram).await,
        }
    }

    fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn peer_info(&self) -> PeerInfo {
        let identity = match &self.auth {
            Auth::Psk(identity) => Identity::Psk(identity.clone()),
            Auth::Certificate(id) => Identity::Certificate(id.clone()),
        };
        PeerInfo {
            addr: self.peer,
            kind: TransportKind::Dtls,
            identity,
        }
    }

    async fn close(&mut self) {
        let _ = DtlsSession::close(self).await;
    }
}

#[cfg(test)]
mod timer_tests {
    use super::*;

    #[test]
    fn the_timer_starts_at_the_initial_value_and_doubles_up_to_the_cap() {
        let mut seq = vec![next_timeout_us(500_000, 0)];
        for _ in 0..9 {
            let last = *seq.last().expect("non-empty");
            seq.push(next_timeout_us(500_000, last));
        }
        assert_eq!(
            seq,
            [
                500_000, 1_000_000, 2_000_000, 4_000_000, 8_000_000, 16_000_000, 32_000_000,
                60_000_000, 60_000_000, 60_000_000
            ]
        );
        assert_eq!(next_timeout_us(90_000_000, 0), MAX_RETRANSMIT_US);
        assert_eq!(timer_us(Duration::from_millis(2000)), 2_000_000);
        assert_eq!(timer_us(Duration::ZERO), 1_000, "never a busy loop");
        assert_eq!(timer_us(Duration::from_secs(3600)), MAX_RETRANSMIT_US);
        assert_eq!(
            Duration::from_micros(MAX_RETRANSMIT_US.into()),
            MAX_RETRANSMIT
        );
    }
}

#[cfg(test)]
#[path = "dtls_x509_tests.rs"]
mod x509_tests;
