//! South: the gateway's secured CoAP client towards end devices. One UDP socket serves every
//! device; each device has one link (a DTLS session kept for reuse, or a plain pipe) used by
//! one exchange at a time. [`South`] reads the ACL that governs a URI per the device's
//! profile ([`profile`]) and maps every failure onto the verifier's reasons.

pub mod fanout;
pub mod profile;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::coap::{ClientError, Packet, TransportTuning};
use crate::config::{Config, DeviceConfig, Scheme};
use crate::runtime::{AnySession, CoapClient, Io, RequestError, StreamClient, StreamRequestError};
use crate::transport::dtls::{DtlsClient, PskClientConfig, X509ClientConfig, X509Credentials};
use crate::transport::mux::DatagramMux;
use crate::transport::tls::{TlsClient, TlsCredentials};
use crate::transport::{DatagramSession, Identity, TransportError, tcp};
use crate::verifier::{AclReading, ReadFailure};
use rustls::pki_types::ServerName;

use fanout::AclReader;

/// A connected device: datagrams (UDP, DTLS) or a stream (TCP, TLS).
enum DeviceClient {
    Datagram(CoapClient<AnySession>),
    Stream(StreamClient<Box<dyn Io>>),
}

/// One device's link: the client, once connected.
type Link = Arc<tokio::sync::Mutex<Option<DeviceClient>>>;

/// The largest message we accept from a device over TCP/TLS (our CSM).
const STREAM_MAX_MESSAGE_SIZE: u32 = 64 * 1024;

pub struct South {
    /// One socket per address family, created on first use.
    muxes: tokio::sync::Mutex<HashMap<bool, Arc<DatagramMux>>>,
    bind: Option<SocketAddr>,
    dtls: HashMap<String, Arc<DtlsClient>>,
    tls: HashMap<String, Arc<TlsClient>>,
    links: Mutex<HashMap<String, Link>>,
    tuning: TransportTuning,
    device_timeout: Duration,
}

/// The DTLS handshake gets 90 % of the device deadline, so its own timeout (which knows
/// whether the device answered at all) classifies the failure before the fan-out deadline
/// cuts it off.
fn handshake_budget(device_timeout: Duration) -> Duration {
    device_timeout.mul_f64(0.9).max(Duration::from_millis(1))
}

#[derive(Debug, thiserror::Error)]
pub enum SouthError {
    #[error("device '{device}': DTLS setup: {source}")]
    Dtls {
        device: String,
        source: TransportError,
    },
    #[error("device '{device}': TLS setup: {source}")]
    Tls {
        device: String,
        source: TransportError,
    },
}

impl South {
    /// Prepares DTLS and TLS contexts for every secured device; sockets open on first use.
    pub fn new(config: &Config) -> Result<South, SouthError> {
        let budget = handshake_budget(config.gateway.device_timeout);
        let mut dtls = HashMap::new();
        let mut tls = HashMap::new();
        for d in &config.devices {
            match (d.uri.scheme, &d.psk, &d.certs) {
                (Scheme::Coaps, Some(psk), _) => {
                    let mut cfg = PskClientConfig::new(psk.identity.clone(), psk.key.clone());
                    cfg.handshake_timeout = budget;
                    let client = DtlsClient::new(cfg).map_err(|source| SouthError::Dtls {
                        device: d.id.clone(),
                        source,
                    })?;
                    dtls.insert(d.id.clone(), Arc::new(client));
                }
                (Scheme::Coaps, None, Some(files)) => {
                    let dtls_error = |source| SouthError::Dtls {
                        device: d.id.clone(),
                        source,
                    };
                    let creds = X509Credentials::from_pem_files(&files.cert, &files.key, &files.ca)
                        .map_err(dtls_error)?;
                    let mut cfg = X509ClientConfig::new(creds);
                    cfg.handshake_timeout = budget;
                    let client = DtlsClient::new(cfg).map_err(dtls_error)?;
                    dtls.insert(d.id.clone(), Arc::new(client));
                }
                (Scheme::CoapsTcp, _, Some(files)) => {
                    let tls_error = |source| SouthError::Tls {
                        device: d.id.clone(),
                        source,
                    };
                    let creds = TlsCredentials::from_pem_files(&files.cert, &files.key, &files.ca)
                        .map_err(tls_error)?;
                    let client = TlsClient::new(creds, budget).map_err(tls_error)?;
                    tls.insert(d.id.clone(), Arc::new(client));
                }
                _ => {}
            }
        }
        let tuning = TransportTuning::unreliable().with_ack_timeout(config.gateway.ack_timeout);
        Ok(South {
            muxes: tokio::sync::Mutex::new(HashMap::new()),
            bind: config.gateway.south_bind,
            dtls,
            tls,
            links: Mutex::new(HashMap::new()),
            tuning,
            device_timeout: config.gateway.device_timeout,
        })
    }

    async fn mux_for(&self, peer: SocketAddr) -> Result<Arc<DatagramMux>, ReadFailure> {
        let v6 = peer.is_ipv6();
        let mut muxes = self.muxes.lock().await;
        if let Some(m) = muxes.get(&v6) {
            return Ok(m.clone());
        }
        let bind = match self.bind {
            Some(b) if b.is_ipv6() == v6 => b,
            _ if v6 => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            _ => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        };
        let (mux, _) = DatagramMux::bind(bind, false)
            .await
            .map_err(|e| ReadFailure::Unreachable(format!("cannot open south socket: {e}")))?;
        muxes.insert(v6, mux.clone());
        Ok(mux)
    }

    fn link(&self, device: &str) -> Link {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.entry(device.to_owned()).or_default().clone()
    }

    async fn connect(&self, device: &DeviceConfig) -> Result<DeviceClient, ReadFailure> {
        let addr = device.uri.addr;
        let stream: Box<dyn Io> = match device.uri.scheme {
            Scheme::Coap => {
                let pipe = self.mux_for(addr).await?.connect(addr);
                return Ok(DeviceClient::Datagram(CoapClient::new(
                    AnySession::Plain(pipe),
                    self.tuning.clone(),
                )));
            }
            Scheme::Coaps => {
                let client = self.dtls.get(&device.id).ok_or_else(|| {
                    ReadFailure::SecureChannel("no DTLS credentials for this device".into())
                })?;
                let pipe = self.mux_for(addr).await?.connect(addr);
                let mut session = client.connect(pipe).await.map_err(handshake_failure)?;
                if device.psk.is_none() {
                    if let Err(e) = check_identity(device, &session.peer_info().identity) {
                        // Tell the device the session is over (close_notify): it keeps a
                        // session per address, and the next handshake comes from this port.
                        let _ = session.close().await;
                        return Err(e);
                    }
                }
                return Ok(DeviceClient::Datagram(CoapClient::new(
                    AnySession::Dtls(session),
                    self.tuning.clone(),
                )));
            }
            Scheme::CoapTcp => Box::new(
                tcp::connect(addr, handshake_budget(self.device_timeout))
                    .await
                    .map_err(|e| ReadFailure::Unreachable(e.to_string()))?,
            ),
            Scheme::CoapsTcp => {
                let client = self.tls.get(&device.id).ok_or_else(|| {
                    ReadFailure::SecureChannel("no TLS credentials for this device".into())
                })?;
                let name = ServerName::IpAddress(addr.ip().into());
                let (stream, info) = client
                    .connect(addr, name)
                    .await
                    .map_err(handshake_failure)?;
                check_identity(device, &info.identity)?;
                Box::new(stream)
            }
        };
        Ok(DeviceClient::Stream(StreamClient::new(
            stream,
            STREAM_MAX_MESSAGE_SIZE,
            self.device_timeout,
        )))
    }

    /// One request to a device over its link, connecting (handshaking) if needed. A link that
    /// failed is dropped so the next request starts a fresh session.
    pub async fn request(
        &self,
        device: &DeviceConfig,
        request: Packet,
    ) -> Result<Packet, ReadFailure> {
        let link = self.link(&device.id);
        let mut guard = link.lock().await;
        if guard.is_none() {
            *guard = Some(self.connect(device).await?);
        }
        let result = match guard.as_mut() {
            Some(DeviceClient::Datagram(client)) => {
                client.request(request).await.map_err(|e| match e {
                    RequestError::Coap(ClientError::TimedOut) => ReadFailure::Unreachable(
                        "no CoAP response (retransmissions exhausted)".into(),
                    ),
                    RequestError::Coap(ClientError::Reset) => {
                        ReadFailure::DeviceError { code: "RST".into() }
                    }
                    RequestError::Coap(other) => ReadFailure::BadAnswer(other.to_string()),
                    RequestError::Transport(t) => ReadFailure::SecureChannel(t.to_string()),
                })
            }
            Some(DeviceClient::Stream(client)) => {
                client.request(request).await.map_err(|e| match e {
                    StreamRequestError::Coap(ClientError::TimedOut) => {
                        ReadFailure::Unreachable("no CoAP response in time".into())
                    }
                    StreamRequestError::Coap(other) => ReadFailure::BadAnswer(other.to_string()),
                    StreamRequestError::Send(e) => ReadFailure::BadAnswer(e.to_string()),
                    StreamRequestError::Io(e) => {
                        ReadFailure::Unreachable(format!("connection: {e}"))
                    }
                    StreamRequestError::Closed(reason) => {
                        ReadFailure::Unreachable(format!("connection closed: {reason}"))
                    }
                })
            }
            None => Err(ReadFailure::Unreachable("no link".into())),
        };
        if result.is_err() {
            if let Some(DeviceClient::Datagram(client)) = guard.take() {
                // Say goodbye so the device drops its side too: a device that keeps a stale
                // session for our address ignores our next ClientHello (RFC 6347 §4.2.8).
                if let AnySession::Dtls(mut session) = client.into_session() {
                    let _ = tokio::time::timeout(CLOSE_NOTIFY_BUDGET, session.close()).await;
                }
            }
        }
        result
    }
}

/// How long sending a close_notify to a failed device may take.
const CLOSE_NOTIFY_BUDGET: Duration = Duration::from_millis(200);

/// A device's certificate must match its `cert_match` / `spki_sha256`, if configured.
fn check_identity(device: &DeviceConfig, identity: &Identity) -> Result<(), ReadFailure> {
    let Some(rule) = &device.cert_rule else {
        return Ok(());
    };
    match identity {
        Identity::Certificate(cert) if rule.matches(cert) => Ok(()),
        Identity::Certificate(cert) => Err(ReadFailure::SecureChannel(format!(
            "device certificate '{cert}' does not match {}",
            rule.matcher
        ))),
        other => Err(ReadFailure::SecureChannel(format!(
            "expected a certificate, the channel proved {other:?}"
        ))),
    }
}

fn handshake_failure(e: TransportError) -> ReadFailure {
    match e {
        TransportError::HandshakeTimeout {
            peer_answered: false,
            ..
        }
        | TransportError::TlsHandshakeTimeout { .. }
        | TransportError::TcpConnect { .. }
        | TransportError::ConnectTimeout { .. } => ReadFailure::Unreachable(e.to_string()),
        other => ReadFailure::SecureChannel(other.to_string()),
    }
}

impl AclReader for South {
    async fn read_acl(&self, device: &DeviceConfig, uri: &str) -> Result<AclReading, ReadFailure> {
        profile::read_acl(self, device, uri).await
    }
}
