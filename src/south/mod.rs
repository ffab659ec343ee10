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
use crate::runtime::{AnySession, CoapClient, RequestError};
use crate::transport::TransportError;
use crate::transport::dtls::{DtlsClient, PskClientConfig};
use crate::transport::mux::DatagramMux;
use crate::verifier::{AclReading, ReadFailure};

use fanout::AclReader;

/// One device's link: the client, once connected.
type Link = Arc<tokio::sync::Mutex<Option<CoapClient<AnySession>>>>;

pub struct South {
    /// One socket per address family, created on first use.
    muxes: tokio::sync::Mutex<HashMap<bool, Arc<DatagramMux>>>,
    bind: Option<SocketAddr>,
    dtls: HashMap<String, Arc<DtlsClient>>,
    links: Mutex<HashMap<String, Link>>,
    tuning: TransportTuning,
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
}

impl South {
    /// Prepares DTLS contexts for every `coaps://` device; sockets open on first use.
    pub fn new(config: &Config) -> Result<South, SouthError> {
        let mut dtls = HashMap::new();
        for d in &config.devices {
            if let (Scheme::Coaps, Some(psk)) = (d.uri.scheme, &d.psk) {
                let mut cfg = PskClientConfig::new(psk.identity.clone(), psk.key.clone());
                cfg.handshake_timeout = handshake_budget(config.gateway.device_timeout);
                let client = DtlsClient::new(cfg).map_err(|source| SouthError::Dtls {
                    device: d.id.clone(),
                    source,
                })?;
                dtls.insert(d.id.clone(), Arc::new(client));
            }
        }
        let tuning = TransportTuning::unreliable().with_ack_timeout(config.gateway.ack_timeout);
        Ok(South {
            muxes: tokio::sync::Mutex::new(HashMap::new()),
            bind: config.gateway.south_bind,
            dtls,
            links: Mutex::new(HashMap::new()),
            tuning,
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

    async fn connect(&self, device: &DeviceConfig) -> Result<CoapClient<AnySession>, ReadFailure> {
        let mux = self.mux_for(device.uri.addr).await?;
        let pipe = mux.connect(device.uri.addr);
        let session = match device.uri.scheme {
            Scheme::CoapTcp | Scheme::CoapsTcp => {
                return Err(ReadFailure::SecureChannel(format!(
                    "{}:// is not wired yet",
                    device.uri.scheme.as_str()
                )));
            }
            Scheme::Coap => AnySession::Plain(pipe),
            Scheme::Coaps => {
                let client = self.dtls.get(&device.id).ok_or_else(|| {
                    ReadFailure::SecureChannel("no DTLS credentials for this device".into())
                })?;
                let session = client.connect(pipe).await.map_err(handshake_failure)?;
                AnySession::Dtls(session)
            }
        };
        Ok(CoapClient::new(session, self.tuning.clone()))
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
        let Some(client) = guard.as_mut() else {
            return Err(ReadFailure::Unreachable("no link".into()));
        };
        match client.request(request).await {
            Ok(response) => Ok(response),
            Err(e) => {
                *guard = None;
                Err(match e {
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
        }
    }
}

fn handshake_failure(e: TransportError) -> ReadFailure {
    match e {
        TransportError::HandshakeTimeout {
            peer_answered: false,
            ..
        } => ReadFailure::Unreachable(e.to_string()),
        other => ReadFailure::SecureChannel(other.to_string()),
    }
}

impl AclReader for South {
    async fn read_acl(&self, device: &DeviceConfig, uri: &str) -> Result<AclReading, ReadFailure> {
        profile::read_acl(self, device, uri).await
    }
}
