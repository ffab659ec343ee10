//! DTLS 1.2 over a [`Pipe`], with OpenSSL: handshakes, identities, records.
//!
//! This module owns the DTLS contexts ([`DtlsServer`], [`DtlsClient`]), one bounded handshake
//! per peer, and the resulting [`DtlsSession`], which moves one decrypted record per
//! [`recv`](DatagramSession::recv). It proves the peer's identity (today: the PSK identity,
//! [`DtlsSession::psk_identity`]); it does not decide what that identity may do.
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
//!   the handshake again, which retransmits a lost flight once the DTLS timer (1 s, doubling)
//!   has expired. `DTLSv1_handle_timeout` is deliberately *not* called from outside that poll:
//!   it would write through tokio-openssl's BIO without a task context, which is undefined
//!   behaviour.
//! * Each handshake is bounded by its `handshake_timeout` and runs in the caller's task, so a
//!   silent or failing peer only ever fails its own session.
//!
//! # Server hardening
//!
//! Cookie exchange (HelloVerifyRequest) is always on: the cookie is HMAC-SHA256 over the peer
//! address with a random per-server secret. Session resumption and renegotiation are off, so
//! every session runs the PSK callback exactly once and its identity cannot change later.
//!
//! A wrong key does not produce an alert: DTLS silently discards records it cannot
//! authenticate (RFC 6347 §4.1.2.7), so both sides end in [`TransportError::HandshakeTimeout`].
//! An unknown identity fails at once with an alert.

use std::fmt;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openssl::ex_data::Index;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslRef, SslSessionCacheMode,
    SslVerifyMode, SslVersion,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_openssl::SslStream;

use super::mux::Pipe;
use super::{CloseCause, DatagramSession, Identity, PeerInfo, TransportError, TransportKind};

/// Default cipher suites: `PSK-AES128-CCM8` (TLS_PSK_WITH_AES_128_CCM_8, mandatory for
/// CoAP/LwM2M) first, then suites libcoap and other stacks commonly offer.
pub const DEFAULT_PSK_CIPHERS: &str =
    "PSK-AES128-CCM8:PSK-AES128-CCM:PSK-AES128-GCM-SHA256:PSK-AES128-CBC-SHA256";

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
            .finish()
    }
}

/// Per-`Ssl` extra data slots shared by every context in the process.
#[derive(Clone, Copy)]
struct ExIndices {
    /// The peer address, for the cookie callbacks.
    peer: Index<Ssl, SocketAddr>,
    /// The PSK identity accepted by the server callback.
    identity: Index<Ssl, Vec<u8>>,
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
    };
    // A lost race only wastes two index slots.
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

/// The peer address as bytes, for the cookie MAC.
fn addr_bytes(addr: &SocketAddr) -> Vec<u8> {
    let mut out = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    out.extend_from_slice(&addr.port().to_be_bytes());
    out
}

/// HMAC-SHA256 over the peer address stored in the `Ssl`.
fn cookie_for(
    key: &PKey<Private>,
    ssl: &SslRef,
    peer_idx: Index<Ssl, SocketAddr>,
) -> Option<Vec<u8>> {
    let peer = ssl.ex_data(peer_idx)?;
    let mut signer = Signer::new(MessageDigest::sha256(), key).ok()?;
    signer.update(&addr_bytes(peer)).ok()?;
    signer.sign_to_vec().ok()
}

/// The server role: accepts DTLS sessions on pipes handed out by an accepting mux.
pub struct DtlsServer {
    ctx: SslContext,
    indices: ExIndices,
    handshake_timeout: Duration,
    mtu: u32,
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
    /// Build the server context: DTLS 1.2, PSK via `cfg.keys`, cookie exchange on.
    pub fn new(cfg: PskServerConfig) -> Result<Self, TransportError> {
        check_mtu(cfg.mtu)?;
        let indices = ex_indices()?;
        let mut b = base_context(&cfg.ciphers)?;
        b.set_options(SslOptions::COOKIE_EXCHANGE);
        b.set_session_cache_mode(SslSessionCacheMode::OFF);

        let keys = cfg.keys.clone();
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

        let mut secret = [0u8; 32];
        openssl::rand::rand_bytes(&mut secret).map_err(|source| TransportError::Config {
            context: "generating the cookie secret",
            source,
        })?;
        let hmac_key = PKey::hmac(&secret).map_err(|source| TransportError::Config {
            context: "creating the cookie HMAC key",
            source,
        })?;
        let peer_idx = indices.peer;
        let gen_key = hmac_key.clone();
        b.set_cookie_generate_cb(move |ssl, out| {
            let cookie =
                cookie_for(&gen_key, ssl, peer_idx).ok_or_else(openssl::error::ErrorStack::get)?;
            let Some(dst) = out.get_mut(..cookie.len()) else {
                return Err(openssl::error::ErrorStack::get());
            };
            dst.copy_from_slice(&cookie);
            Ok(cookie.len())
        });
        b.set_cookie_verify_cb(move |ssl, cookie| {
            cookie_for(&hmac_key, ssl, peer_idx).is_some_and(|expected| {
                expected.len() == cookie.len() && openssl::memcmp::eq(&expected, cookie)
            })
        });

        Ok(DtlsServer {
            ctx: b.build(),
            indices,
            handshake_timeout: cfg.handshake_timeout,
            mtu: cfg.mtu,
        })
    }

    /// Run the server handshake on `pipe`, bounded by the configured handshake timeout.
    ///
    /// Run each accept in its own task (one per pipe from the mux's accept queue): a handshake
    /// waits on its peer for up to the timeout, and must not hold up anyone else's.
    pub async fn accept(&self, pipe: Pipe) -> Result<DtlsSession, TransportError> {
        let peer = pipe.peer();
        let mut ssl = new_ssl(&self.ctx, self.mtu)?;
        ssl.set_ex_data(self.indices.peer, peer);
        let mut stream = SslStream::new(ssl, pipe).map_err(|source| TransportError::Config {
            context: "attaching the pipe",
            source,
        })?;
        handshake(&mut stream, Role::Server, peer, self.handshake_timeout).await?;
        let identity = stream
            .ssl()
            .ex_data(self.indices.identity)
            .cloned()
            .unwrap_or_default();
        tracing::debug!(peer = %peer, identity = %String::from_utf8_lossy(&identity), "DTLS session accepted");
        Ok(DtlsSession {
            stream,
            peer,
            identity,
        })
    }
}

/// The client role: opens DTLS sessions to peers over pipes from [`super::mux::DatagramMux::connect`].
pub struct DtlsClient {
    ctx: SslContext,
    identity: Vec<u8>,
    handshake_timeout: Duration,
    mtu: u32,
}

impl fmt::Debug for DtlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DtlsClient")
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .field("handshake_timeout", &self.handshake_timeout)
            .field("mtu", &self.mtu)
            .finish_non_exhaustive()
    }
}

impl DtlsClient {
    /// Build the client context: DTLS 1.2, PSK with `cfg.identity` / `cfg.key`.
    pub fn new(cfg: PskClientConfig) -> Result<Self, TransportError> {
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
        let mut b = base_context(&cfg.ciphers)?;
        let identity = cfg.identity.clone();
        let key = cfg.key;
        b.set_psk_client_callback(move |_ssl, _hint, identity_out, psk_out| {
            // OpenSSL wants the identity NUL-terminated.
            let (Some(id_dst), Some(key_dst)) = (
                identity_out.get_mut(..identity.len() + 1),
                psk_out.get_mut(..key.len()),
            ) else {
                tracing::error!("PSK identity or key longer than OpenSSL's buffer");
                return Ok(0);
            };
            let (id_bytes, nul) = id_dst.split_at_mut(identity.len());
            id_bytes.copy_from_slice(&identity);
            nul.fill(0);
            key_dst.copy_from_slice(&key);
            Ok(key.len())
        });
        Ok(DtlsClient {
            ctx: b.build(),
            identity: cfg.identity,
            handshake_timeout: cfg.handshake_timeout,
            mtu: cfg.mtu,
        })
    }

    /// Run the client handshake on `pipe`, bounded by the configured handshake timeout.
    pub async fn connect(&self, pipe: Pipe) -> Result<DtlsSession, TransportError> {
        let peer = pipe.peer();
        let ssl = new_ssl(&self.ctx, self.mtu)?;
        let mut stream = SslStream::new(ssl, pipe).map_err(|source| TransportError::Config {
            context: "attaching the pipe",
            source,
        })?;
        handshake(&mut stream, Role::Client, peer, self.handshake_timeout).await?;
        tracing::debug!(peer = %peer, "DTLS session connected");
        Ok(DtlsSession {
            stream,
            peer,
            identity: self.identity.clone(),
        })
    }
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

#[derive(Clone, Copy)]
enum Role {
    Client,
    Server,
}

/// Drive one handshake to completion, failure, or `timeout`.
///
/// Polls the handshake and wakes every [`HANDSHAKE_TICK`] to poll it again: each poll lets
/// OpenSSL check its retransmission timer (see the module doc).
async fn handshake(
    stream: &mut SslStream<Pipe>,
    role: Role,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<(), TransportError> {
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
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => {
            tracing::info!(peer = %peer, error = %source, "DTLS handshake failed");
            Err(TransportError::Handshake { peer, source })
        }
        Err(_) => {
            let peer_answered = stream.get_ref().received() > 0;
            tracing::info!(peer = %peer, after = ?timeout, peer_answered, "DTLS handshake timed out");
            Err(TransportError::HandshakeTimeout {
                peer,
                after: timeout,
                peer_answered,
            })
        }
    }
}

/// An established DTLS 1.2 session with one peer.
pub struct DtlsSession {
    stream: SslStream<Pipe>,
    peer: SocketAddr,
    identity: Vec<u8>,
}

impl fmt::Debug for DtlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DtlsSession")
            .field("peer", &self.peer)
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .field("cipher", &self.cipher_name())
            .finish()
    }
}

impl DtlsSession {
    /// The PSK identity this session was authenticated with: on the server, the identity the
    /// client presented (and `keys` accepted); on the client, our own identity.
    pub fn psk_identity(&self) -> Option<&[u8]> {
        Some(self.identity.as_slice())
    }

    /// The negotiated cipher suite, in OpenSSL's naming (e.g. `PSK-AES128-CCM8`).
    pub fn cipher_name(&self) -> Option<&'static str> {
        self.stream.ssl().current_cipher().map(|c| c.name())
    }

    /// Send close_notify. Best effort: the peer may never see it.
    pub async fn close(&mut self) -> Result<(), TransportError> {
        self.stream
            .shutdown()
            .await
            .map_err(|source| TransportError::DtlsSend {
                peer: self.peer,
                source,
            })
    }
}

impl DatagramSession for DtlsSession {
    async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
        let mut buf = vec![0u8; MAX_RECORD];
        match self.stream.read(&mut buf).await {
            // Zero bytes: close_notify, or the pipe ended. OpenSSL never yields an empty
            // application record from SSL_read.
            Ok(0) => {
                let cause = if self.stream.get_ref().source_ended() {
                    CloseCause::Shutdown
                } else {
                    CloseCause::PeerClosed
                };
                Err(TransportError::Closed {
                    peer: self.peer,
                    cause,
                })
            }
            Ok(n) => {
                buf.truncate(n);
                Ok(buf)
            }
            Err(err) => Err(TransportError::Closed {
                peer: self.peer,
                cause: CloseCause::Fatal(err.to_string()),
            }),
        }
    }

    async fn send(&mut self, datagram: &[u8]) -> Result<(), TransportError> {
        let peer = self.peer;
        let written = self
            .stream
            .write(datagram)
            .await
            .map_err(|source| TransportError::DtlsSend { peer, source })?;
        if written != datagram.len() {
            return Err(TransportError::ShortSend {
                peer,
                len: datagram.len(),
                sent: written,
            });
        }
        Ok(())
    }

    fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn peer_info(&self) -> PeerInfo {
        PeerInfo {
            addr: self.peer,
            kind: TransportKind::Dtls,
            identity: Identity::Psk(self.identity.clone()),
        }
    }
}
