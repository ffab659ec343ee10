//! The simulated device as an LwM2M client that registers (`register = "coaps://…"` in its
//! config), behaving on the wire like the real clients in PEERS.md: for each server account
//! it dials the server from one local port (UDP or DTLS-PSK, the device is the DTLS client),
//! sends `POST /rd?ep=…&lt=…&lwm2m=…` with its object list, answers requests **only** from
//! that server's address and only over that session (the mux admits no other source), sends
//! an Update at lifetime − min(lifetime/2, 93 s), registers again when an Update gets 4.04
//! (how devices come back after a gateway restart) or times out, and in queue mode goes quiet
//! after its awake window — closing its session — and wakes at the next Update time with a
//! full Register, as Anjay does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::coap::{
    self, CoapOption, MessageClass, Packet, RequestType, ResponseType, TransportTuning,
};
use crate::config::{EndpointUri, Psk, Scheme};
use crate::device::DeviceHandler;
use crate::lwm2m::content_format;
use crate::runtime::{AnySession, PeerLink, Shutdown, spawn_session, stopped};
use crate::transport::dtls::{DtlsClient, PskClientConfig, X509ClientConfig, X509Credentials};
use crate::transport::mux::DatagramMux;
use crate::transport::{DatagramSession, TransportError};

/// How a registering simulated device registers (one per server account).
#[derive(Debug, Clone)]
pub struct Registration {
    pub server: EndpointUri,
    pub endpoint: String,
    pub lifetime: Duration,
    /// `lwm2m=` of the Register (`1.0`, `1.1`, `1.2`).
    pub version: String,
    /// Queue mode: `Q` in the Register (1.1+; `b=UQ` for 1.0), quiet after `awake`.
    pub queue: bool,
    pub awake: Duration,
    /// ACK_TIMEOUT of its requests.
    pub ack_timeout: Duration,
    pub psk: Option<Psk>,
    /// DTLS-X.509 instead of PSK: its certificate and key, and the CA that verifies the
    /// server (whose certificate must be valid for the server's IP address).
    pub certs: Option<X509Credentials>,
    /// The link-format object list sent with Register.
    pub objects: String,
}

/// When the next Update is due after a Register or Update (LwM2M clients in the field:
/// lifetime − min(lifetime/2, 93 s)).
pub fn update_after(lifetime: Duration) -> Duration {
    lifetime.saturating_sub((lifetime / 2).min(Duration::from_secs(93)))
}

/// The state of one account, for tests and the demo: the location while registered.
pub type AccountState = watch::Receiver<Option<String>>;

/// Runs one account until `shutdown`; `state` says whether it is registered.
pub async fn run(
    registration: Registration,
    handler: Arc<DeviceHandler>,
    mux: Arc<DatagramMux>,
    state: watch::Sender<Option<String>>,
    mut shutdown: Shutdown,
) {
    let mut retry = Duration::from_millis(500);
    loop {
        let outcome = tokio::select! {
            o = one_session(&registration, &handler, &mux, &state, shutdown.clone()) => o,
            _ = stopped(&mut shutdown) => return,
        };
        state.send_replace(None);
        match outcome {
            SessionEnd::Sleep(until) => {
                tracing::debug!(endpoint = %registration.endpoint, "queue mode: asleep");
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = stopped(&mut shutdown) => return,
                }
                retry = Duration::from_millis(500);
            }
            SessionEnd::Failed(why) => {
                tracing::debug!(endpoint = %registration.endpoint, "registration session ended: {why}; again in {retry:?}");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = stopped(&mut shutdown) => return,
                }
                retry = (retry * 2).min(Duration::from_secs(30));
            }
        }
    }
}

enum SessionEnd {
    /// Queue mode: quiet until then, then a fresh session and Register.
    Sleep(tokio::time::Instant),
    /// Register failed, the session broke or an Update timed out: start over.
    Failed(String),
}

/// One session with the server: Register, then Updates, until it fails or (queue mode) the
/// device falls asleep.
async fn one_session(
    registration: &Registration,
    handler: &Arc<DeviceHandler>,
    mux: &Arc<DatagramMux>,
    state: &watch::Sender<Option<String>>,
    shutdown: Shutdown,
) -> SessionEnd {
    let session = match open(registration, mux).await {
        Ok(s) => s,
        Err(e) => return SessionEnd::Failed(format!("cannot open the session: {e}")),
    };
    let peer = session.peer_info();
    let tuning = TransportTuning::unreliable().with_ack_timeout(registration.ack_timeout);
    let (link, task) = spawn_session(session, peer, handler.clone(), tuning, shutdown);
    let end = registered_loop(registration, &link, state).await;
    // Ends the serve loop: the device no longer answers on this session.
    task.abort();
    end
}

async fn registered_loop(
    registration: &Registration,
    link: &PeerLink,
    state: &watch::Sender<Option<String>>,
) -> SessionEnd {
    loop {
        let location = match register(registration, link).await {
            Ok(location) => location,
            Err(why) => return SessionEnd::Failed(why),
        };
        tracing::info!(endpoint = %registration.endpoint, server = %registration.server, %location, "registered");
        state.send_replace(Some(location.clone()));
        loop {
            let registered_at = tokio::time::Instant::now();
            let next_update = registered_at + update_after(registration.lifetime);
            if registration.queue {
                let sleep_at = registered_at + registration.awake;
                if sleep_at < next_update {
                    tokio::time::sleep_until(sleep_at).await;
                    return SessionEnd::Sleep(next_update);
                }
            }
            tokio::time::sleep_until(next_update).await;
            match update(link, &location).await {
                Ok(()) => tracing::debug!(endpoint = %registration.endpoint, %location, "updated"),
                Err(UpdateError::Unknown) => {
                    tracing::info!(endpoint = %registration.endpoint, %location, "update answered 4.04: registering again");
                    state.send_replace(None);
                    break;
                }
                Err(UpdateError::Failed(why)) => return SessionEnd::Failed(why),
            }
        }
    }
}

/// Dials the server from the device's one local port: UDP, or DTLS-PSK as the client.
async fn open(
    registration: &Registration,
    mux: &Arc<DatagramMux>,
) -> Result<AnySession, TransportError> {
    let pipe = mux.connect(registration.server.addr);
    if registration.server.scheme != Scheme::Coaps {
        return Ok(AnySession::Plain(pipe));
    }
    let client = match (&registration.certs, &registration.psk) {
        (Some(certs), _) => DtlsClient::new(X509ClientConfig::new(certs.clone()))?,
        (None, Some(psk)) => {
            DtlsClient::new(PskClientConfig::new(psk.identity.clone(), psk.key.clone()))?
        }
        (None, None) => return Ok(AnySession::Plain(pipe)),
    };
    Ok(AnySession::Dtls(client.connect(pipe).await?))
}

tokio::task_local! {
    /// The local IP a registering device started inside [`with_local_ip`] binds its socket to.
    static LOCAL_IP: IpAddr;
}

/// Runs `start` (e.g. [`RunningDevice::start`](crate::device::RunningDevice::start) of a
/// registering device) so that the device's socket is bound to `ip` instead of the default
/// for the server's address. The load tool gives each of thousands of simulated devices its
/// own source address in 127.0.0.0/8, as a real fleet comes from many addresses (the
/// gateway's per-IP session and handshake caps then apply per device, not to the fleet).
pub async fn with_local_ip<F: std::future::Future>(ip: IpAddr, start: F) -> F::Output {
    LOCAL_IP.scope(ip, start).await
}

/// A socket for the device's sessions, of the server's address family (or on the IP given
/// by [`with_local_ip`]).
pub async fn bind_for(server: SocketAddr) -> Result<Arc<DatagramMux>, TransportError> {
    if let Ok(ip) = LOCAL_IP.try_with(|ip| *ip) {
        return Ok(DatagramMux::bind(SocketAddr::new(ip, 0), false).await?.0);
    }
    let any = if server.is_ipv6() {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else if server.ip().is_loopback() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    Ok(DatagramMux::bind(SocketAddr::new(any, 0), false).await?.0)
}

fn register_request(registration: &Registration) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Request(RequestType::Post);
    coap::set_uri(&mut p, "/rd");
    let mut query = vec![
        format!("ep={}", registration.endpoint),
        format!("lt={}", registration.lifetime.as_secs()),
        format!("lwm2m={}", registration.version),
    ];
    if registration.queue {
        if registration.version == "1.0" {
            query.push("b=UQ".into());
        } else {
            query.push("Q".into());
        }
    }
    for q in query {
        p.add_option(CoapOption::UriQuery, q.into_bytes());
    }
    coap::set_content_format(&mut p, content_format::LINK_FORMAT);
    p.payload = registration.objects.clone().into_bytes();
    p
}

async fn register(registration: &Registration, link: &PeerLink) -> Result<String, String> {
    let response = link
        .request(register_request(registration))
        .await
        .map_err(|e| format!("Register: {e}"))?;
    if response.header.code != MessageClass::Response(ResponseType::Created) {
        return Err(format!(
            "Register answered {}",
            coap::code_string(response.header.code)
        ));
    }
    let segments: Vec<String> = response
        .get_option(CoapOption::LocationPath)
        .map(|values| {
            values
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect()
        })
        .unwrap_or_default();
    if segments.is_empty() {
        return Err("Register answered 2.01 without Location-Path".into());
    }
    Ok(segments.join("/"))
}

enum UpdateError {
    /// 4.04: the server no longer knows the registration.
    Unknown,
    Failed(String),
}

async fn update(link: &PeerLink, location: &str) -> Result<(), UpdateError> {
    let mut p = Packet::new();
    p.header.code = MessageClass::Request(RequestType::Post);
    coap::set_uri(&mut p, &format!("/{location}"));
    let response = link
        .request(p)
        .await
        .map_err(|e| UpdateError::Failed(format!("Update: {e}")))?;
    match response.header.code {
        MessageClass::Response(ResponseType::Changed) => Ok(()),
        MessageClass::Response(ResponseType::NotFound) => Err(UpdateError::Unknown),
        other => Err(UpdateError::Failed(format!(
            "Update answered {}",
            coap::code_string(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_come_before_the_lifetime_runs_out_like_real_clients() {
        assert_eq!(
            update_after(Duration::from_secs(20)),
            Duration::from_secs(10)
        );
        assert_eq!(
            update_after(Duration::from_secs(300)),
            Duration::from_secs(207)
        );
        assert_eq!(
            update_after(Duration::from_secs(86_400)),
            Duration::from_secs(86_307)
        );
    }

    #[test]
    fn the_register_request_carries_what_wakaama_sends() {
        let r = Registration {
            server: "coap://127.0.0.1:5683".parse().unwrap(),
            endpoint: "dev1".into(),
            lifetime: Duration::from_secs(300),
            version: "1.1".into(),
            queue: true,
            awake: Duration::from_secs(93),
            ack_timeout: Duration::from_secs(2),
            psk: None,
            certs: None,
            objects: "</1/0>,</2/0>,</3/0>".into(),
        };
        let p = register_request(&r);
        let query: Vec<String> = p
            .get_option(CoapOption::UriQuery)
            .unwrap()
            .iter()
            .map(|q| String::from_utf8_lossy(q).into_owned())
            .collect();
        assert_eq!(query, ["ep=dev1", "lt=300", "lwm2m=1.1", "Q"]);
        assert_eq!(coap::content_format(&p), Some(content_format::LINK_FORMAT));
        let parsed = crate::registry::RegistrationRequest::parse(&p).unwrap();
        assert!(matches!(
            parsed,
            crate::registry::RegistrationRequest::Register { endpoint, params }
                if endpoint == "dev1" && params.queue_mode() && params.lifetime_s == 300
        ));
    }
}
