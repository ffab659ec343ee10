//! TLS 1.2 and 1.3 with mutual X.509 authentication (rustls), for CoAP over TLS (RFC 8323).
//!
//! This module proves identities; it moves no CoAP. [`TlsServer::accept`] runs the server
//! handshake over an accepted TCP stream (see [`super::tcp`]), [`TlsClient::connect`] dials
//! and runs the client handshake. Both are bounded by a handshake timeout and yield a
//! `tokio_rustls` stream plus the [`PeerInfo`] whose identity is the peer's verified leaf
//! certificate ([`CertIdentity`]). The RFC 8323 framing above reads and writes the stream.
//!
//! # Policy
//!
//! * Both sides present a certificate and verify the other's chain against the configured CA
//!   (the server with `WebPkiClientVerifier`: a client without a certificate is refused). The
//!   client also checks the server's name (DNS or IP [`ServerName`]).
//! * The peer's identity records which trust anchor its chain verifies to
//!   ([`CertIdentity::trust_anchor`]): rustls does not say, so the presented chain is checked
//!   once more per handshake with OpenSSL against the same anchors.
//! * ALPN `coap` (RFC 8323 §8.2) is offered by both sides. A peer that offers no ALPN is
//!   accepted; one that offers only other protocols is refused by rustls.
//! * The crypto provider is *ring*, named explicitly (not the process default).
//!
//! # What fails, and where
//!
//! Every refusal ends in [`TransportError::TlsHandshake`] carrying rustls' reason (unknown
//! issuer, expired, not valid for name, no certificates presented) or the peer's fatal alert.
//! Note the TLS 1.3 message order: a client sends its certificate in its last flight, so when
//! the *server* refuses it, the client's handshake has already completed and the refusal
//! (an alert) arrives on the client's first read. The server's `accept` always fails.
//!
//! After the handshake nothing here bounds reads: the framing layer owns idle timeouts.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use openssl::x509::X509;
use openssl::x509::store::{X509Store, X509StoreBuilder};

use super::cert::{CertIdentity, verified_anchor};
use super::{Identity, PeerInfo, TransportError, TransportKind, tcp};

/// The ALPN protocol id of CoAP over TLS (RFC 8323 §8.2).
pub const ALPN_COAP: &[u8] = b"coap";

/// TLS 1.3 and TLS 1.2, the versions [`TlsServer::new`] and [`TlsClient::new`] allow.
pub static DEFAULT_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Our certificate chain and key, and the CA that peers' certificates must chain to.
pub struct TlsCredentials {
    /// Our certificate first, then any intermediates.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The private key of our certificate.
    pub key: PrivateKeyDer<'static>,
    /// Trust anchors for the peer's chain.
    pub ca: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for TlsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCredentials")
            .field(
                "cert_chain",
                &format_args!("{} certificate(s)", self.cert_chain.len()),
            )
            .field("key", &format_args!("<redacted>"))
            .field("ca", &format_args!("{} certificate(s)", self.ca.len()))
            .finish()
    }
}

impl Clone for TlsCredentials {
    fn clone(&self) -> Self {
        TlsCredentials {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
        }
    }
}

/// Which credential a [`TransportError::Credentials`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialPart {
    /// Our certificate chain.
    Certificate,
    /// Our private key.
    PrivateKey,
    /// The CA certificates.
    Ca,
}

impl fmt::Display for CredentialPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CredentialPart::Certificate => "certificate",
            CredentialPart::PrivateKey => "private key",
            CredentialPart::Ca => "CA certificate",
        })
    }
}

/// What is wrong with a credential.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialProblem {
    /// The file is missing or unreadable.
    #[error("cannot read the file: {0}")]
    Unreadable(#[source] io::Error),
    /// The PEM text is malformed.
    #[error("malformed PEM: {0}")]
    Pem(#[source] rustls::pki_types::pem::Error),
    /// No `CERTIFICATE` block.
    #[error("no PEM CERTIFICATE block found")]
    NoCertificate,
    /// No `PRIVATE KEY` / `EC PRIVATE KEY` / `RSA PRIVATE KEY` block.
    #[error("no PEM private key block found (PKCS#8, SEC1 or PKCS#1)")]
    NoKey,
}

impl TlsCredentials {
    /// Reads a PEM certificate chain, a PEM private key and PEM CA certificates from files.
    /// Errors name the file and say why (missing, no certificate, no key, no CA).
    pub fn from_pem_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TransportError> {
        let read = |part, path: &Path| {
            std::fs::read(path).map_err(|e| TransportError::Credentials {
                part,
                origin: path.display().to_string(),
                problem: CredentialProblem::Unreadable(e),
            })
        };
        let cert_pem = read(CredentialPart::Certificate, cert)?;
        let key_pem = read(CredentialPart::PrivateKey, key)?;
        let ca_pem = read(CredentialPart::Ca, ca)?;
        Ok(TlsCredentials {
            cert_chain: parse_certs(CredentialPart::Certificate, &cert_pem, cert)?,
            key: parse_key(&key_pem, key)?,
            ca: parse_certs(CredentialPart::Ca, &ca_pem, ca)?,
        })
    }

    /// Reads extra trust anchors (PEM CA certificates) from a file.
    pub fn ca_from_pem_file(ca: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
        let pem = std::fs::read(ca).map_err(|e| TransportError::Credentials {
            part: CredentialPart::Ca,
            origin: ca.display().to_string(),
            problem: CredentialProblem::Unreadable(e),
        })?;
        parse_certs(CredentialPart::Ca, &pem, ca)
    }

    /// Parses PEM bytes: a certificate chain, a private key, CA certificates.
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, TransportError> {
        let origin = Path::new("in-memory PEM");
        Ok(TlsCredentials {
            cert_chain: parse_certs(CredentialPart::Certificate, cert, origin)?,
            key: parse_key(key, origin)?,
            ca: parse_certs(CredentialPart::Ca, ca, origin)?,
        })
    }
}

fn credential_error(
    part: CredentialPart,
    origin: &Path,
    problem: CredentialProblem,
) -> TransportError {
    TransportError::Credentials {
        part,
        origin: origin.display().to_string(),
        problem,
    }
}

fn parse_certs(
    part: CredentialPart,
    pem: &[u8],
    origin: &Path,
) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| credential_error(part, origin, CredentialProblem::Pem(e)))?;
    if certs.is_empty() {
        return Err(credential_error(
            part,
            origin,
            CredentialProblem::NoCertificate,
        ));
    }
    Ok(certs)
}

fn parse_key(pem: &[u8], origin: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    let part = CredentialPart::PrivateKey;
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        let problem = match e {
            rustls::pki_types::pem::Error::NoItemsFound => CredentialProblem::NoKey,
            other => CredentialProblem::Pem(other),
        };
        credential_error(part, origin, problem)
    })
}

fn config_error(context: &'static str) -> impl FnOnce(rustls::Error) -> TransportError {
    move |e| TransportError::TlsConfig {
        context,
        source: Box::new(e),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(ca: &[CertificateDer<'static>]) -> Result<RootCertStore, TransportError> {
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert.clone())
            .map_err(config_error("adding a CA certificate to the trust store"))?;
    }
    Ok(roots)
}

/// Why a handshake failed: rustls' verdict, or the socket's error.
#[derive(Debug, thiserror::Error)]
pub enum TlsFailure {
    /// rustls refused the peer or was refused by it (the text says which and why).
    #[error("{0}")]
    Tls(rustls::Error),
    /// The connection failed underneath (reset, EOF mid-handshake).
    #[error("{0}")]
    Io(io::Error),
}

impl From<io::Error> for TlsFailure {
    /// tokio-rustls wraps rustls' errors in `io::Error`; unwrap them so callers can match.
    fn from(e: io::Error) -> Self {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => TlsFailure::Tls(tls.clone()),
            None => TlsFailure::Io(e),
        }
    }
}

/// Our trust anchors as an OpenSSL store, to tell which one a chain verified by rustls
/// chains to (rustls does not say).
#[derive(Clone)]
struct AnchorStore(Arc<X509Store>);

impl AnchorStore {
    fn new(ca: &[CertificateDer<'static>]) -> Result<AnchorStore, TransportError> {
        let bad = |source| TransportError::TlsConfig {
            context: "reading a CA certificate to record trust anchors",
            source: Box::new(source),
        };
        let mut store = X509StoreBuilder::new().map_err(bad)?;
        for der in ca {
            store
                .add_cert(X509::from_der(der).map_err(bad)?)
                .map_err(bad)?;
        }
        Ok(AnchorStore(Arc::new(store.build())))
    }

    /// The anchor `certs` (leaf first, as the peer sent them) verifies to, if any.
    fn anchor_of(&self, certs: &[CertificateDer<'static>]) -> Option<[u8; 32]> {
        let (leaf, rest) = certs.split_first()?;
        let leaf = X509::from_der(leaf).ok()?;
        let intermediates: Vec<X509> = rest
            .iter()
            .filter_map(|der| X509::from_der(der).ok())
            .collect();
        verified_anchor(&self.0, &leaf, &intermediates)
    }
}

/// The peer's identity from its verified leaf certificate, with the anchor it chains to.
fn peer_info(
    peer: SocketAddr,
    certs: Option<&[CertificateDer<'static>]>,
    anchors: &AnchorStore,
) -> Result<PeerInfo, TransportError> {
    let certs = certs.unwrap_or_default();
    let leaf = certs
        .first()
        .ok_or_else(|| TransportError::PeerCertificate {
            peer,
            reason: "no certificate presented".into(),
        })?;
    let id = CertIdentity::from_der(leaf).map_err(|e| TransportError::PeerCertificate {
        peer,
        reason: e.to_string(),
    })?;
    let id = id.with_trust_anchor(anchors.anchor_of(certs));
    Ok(PeerInfo {
        addr: peer,
        kind: TransportKind::Tls,
        identity: Identity::Certificate(Arc::new(id)),
    })
}

/// The server side: requires and verifies client certificates.
#[derive(Clone)]
pub struct TlsServer {
    acceptor: TlsAcceptor,
    anchors: AnchorStore,
    handshake_timeout: Duration,
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServer")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// A server allowing TLS 1.3 and 1.2.
    pub fn new(creds: TlsCredentials, handshake_timeout: Duration) -> Result<Self, TransportError> {
        TlsServer::with_protocol_versions(creds, handshake_timeout, DEFAULT_VERSIONS)
    }

    /// A server allowing only `versions` (e.g. `&[&rustls::version::TLS12]`).
    pub fn with_protocol_versions(
        creds: TlsCredentials,
        handshake_timeout: Duration,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Result<Self, TransportError> {
        let provider = provider();
        let anchors = AnchorStore::new(&creds.ca)?;
        let roots = Arc::new(root_store(&creds.ca)?);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider))
            .build()
            .map_err(|e| TransportError::TlsConfig {
                context: "client certificate verifier",
                source: Box::new(e),
            })?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(config_error("protocol versions"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(creds.cert_chain, creds.key)
            .map_err(config_error("server certificate and key"))?;
        config.alpn_protocols = vec![ALPN_COAP.to_vec()];
        Ok(TlsServer {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            anchors,
            handshake_timeout,
        })
    }

    /// Runs the server handshake on `tcp` within the handshake timeout and returns the
    /// stream with the client's certificate identity.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<(server::TlsStream<TcpStream>, PeerInfo), TransportError> {
        let peer = tcp
            .peer_addr()
            .map_err(|source| TransportError::TcpGone { source })?;
        let stream =
            match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    return Err(TransportError::TlsHandshake {
                        peer,
                        source: e.into(),
                    });
                }
                Err(_) => {
                    return Err(TransportError::TlsHandshakeTimeout {
                        peer,
                        after: self.handshake_timeout,
                    });
                }
            };
        let info = peer_info(peer, stream.get_ref().1.peer_certificates(), &self.anchors)?;
        Ok((stream, info))
    }
}

/// The client side: presents our certificate, verifies the server's chain and name.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    anchors: AnchorStore,
    handshake_timeout: Duration,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// A client allowing TLS 1.3 and 1.2.
    pub fn new(creds: TlsCredentials, handshake_timeout: Duration) -> Result<Self, TransportError> {
        TlsClient::with_protocol_versions(creds, handshake_timeout, DEFAULT_VERSIONS)
    }

    /// A client allowing only `versions`.
    pub fn with_protocol_versions(
        creds: TlsCredentials,
        handshake_timeout: Duration,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Result<Self, TransportError> {
        let anchors = AnchorStore::new(&creds.ca)?;
        let roots = root_store(&creds.ca)?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(config_error("protocol versions"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(creds.cert_chain, creds.key)
            .map_err(config_error("client certificate and key"))?;
        config.alpn_protocols = vec![ALPN_COAP.to_vec()];
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            anchors,
            handshake_timeout,
        })
    }

    /// Connects to `addr` and runs the client handshake, verifying the server as
    /// `server_name`. The TCP connect and the handshake together take at most the handshake
    /// timeout. Returns the stream and the server's certificate identity.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: ServerName<'static>,
    ) -> Result<(client::TlsStream<TcpStream>, PeerInfo), TransportError> {
        let started = tokio::time::Instant::now();
        let tcp = tcp::connect(addr, self.handshake_timeout).await?;
        let left = self.handshake_timeout.saturating_sub(started.elapsed());
        let stream =
            match tokio::time::timeout(left, self.connector.connect(server_name, tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    return Err(TransportError::TlsHandshake {
                        peer: addr,
                        source: e.into(),
                    });
                }
                Err(_) => {
                    return Err(TransportError::TlsHandshakeTimeout {
                        peer: addr,
                        after: self.handshake_timeout,
                    });
                }
            };
        let info = peer_info(addr, stream.get_ref().1.peer_certificates(), &self.anchors)?;
        Ok((stream, info))
    }
}
