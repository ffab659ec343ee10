//! South: the gateway's secured CoAP client towards end devices. One UDP socket serves every
//! dialled device; a device that registers is reached over its registration's session
//! instead ([`Registrations`]). [`South`] reads the ACL that governs a URI per the device's
//! profile ([`profile`]) and maps every failure onto the verifier's reasons.
//!
//! # Links under loss
//!
//! Every read runs under the verifier's deadline, which may drop it at any await. A link
//! stays usable after that: a UDP/DTLS link is a session with its own serve loop
//! ([`dialled`]), so a dropped read never cuts a send in half, and the session gives up the
//! abandoned exchange (fresh MID and token for the next one, RFC 7252 §4.5) before the next
//! read needs its NSTART slot; a stream cut off mid-frame says so and is replaced. A DTLS
//! handshake runs in its own task: the read waits for it for [`handshake_budget`] (so a
//! refused handshake is still classified in time), and one that is merely slow (lost
//! flights) goes on in the background for up to [`HANDSHAKE_PATIENCE`] budgets: if it
//! completes before the next read, that read finds the session ready instead of starting
//! over; if not, the next read starts afresh.

pub mod dialled;
pub mod fanout;
pub mod profile;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::coap::{ClientError, MessageClass, Packet, RequestType, ResponseType, TransportTuning};
use crate::config::{Config, DeviceConfig, EndpointUri, Profile, Reach, Scheme};
use crate::gateway::registrations::{Registrations, Route};
use crate::lwm2m::content_format;
use crate::registry::{Account, FormatMemory};
use crate::runtime::{
    ChannelError, ChannelSecurity, ChannelTuning, OpenError, RequestError, StreamRequestError,
};
use crate::runtime::{LinkError, Observation, PeerLink, Tagged};
use crate::transport::dtls::{DtlsClient, PskClientConfig, X509ClientConfig, X509Credentials};
use crate::transport::mux::DatagramMux;
use crate::transport::tls::{TlsClient, TlsCredentials};
use crate::transport::{Identity, TransportError};
use crate::verifier::{AclReading, Principal, ReadFailure};

use dialled::OpenLink;
use fanout::AclReader;

/// One device's link.
type Link = Arc<tokio::sync::Mutex<LinkState>>;

/// What a device's link holds between reads.
#[derive(Default)]
enum LinkState {
    /// Nothing: the next read connects.
    #[default]
    Idle,
    /// A connect (handshake) running in its own task.
    Connecting(tokio::task::JoinHandle<Result<OpenLink, ReadFailure>>),
    /// An open link.
    Open(OpenLink),
}

impl LinkState {
    /// The session of an open datagram link (UDP or DTLS), whether or not it has ended.
    fn datagram_session(&self) -> Option<&PeerLink> {
        match self {
            LinkState::Open(OpenLink::Datagram(s)) => Some(&s.link),
            _ => None,
        }
    }
}

/// A DTLS handshake may go on in the background for this many handshake budgets.
pub const HANDSHAKE_PATIENCE: u32 = 3;

/// The largest message we accept from a device over TCP/TLS (our CSM).
const STREAM_MAX_MESSAGE_SIZE: u32 = 64 * 1024;
/// The largest answer body we read from a device, Block2 reassembled: a DM ACL string or a
/// `/2` of a few hundred AC instances fits many times over; anything larger is `bad-acl`
/// and is not read further.
pub const MAX_DEVICE_BODY: usize = 16 * 1024;

pub struct South {
    /// One socket per address family, created on first use.
    muxes: tokio::sync::Mutex<HashMap<bool, Arc<DatagramMux>>>,
    bind: Option<SocketAddr>,
    security: HashMap<String, ChannelSecurity>,
    links: Mutex<HashMap<String, Link>>,
    tuning: ChannelTuning,
    /// How long a read waits for its link's handshake (or for a sleeping device to wake).
    handshake_wait: Duration,
    /// Devices that register are reached over their registration's session.
    registrations: Arc<Registrations>,
    /// Per registering device, the `/2` content format that last worked.
    formats: Mutex<HashMap<String, FormatMemory>>,
}

impl Drop for South {
    /// Background handshakes end with the South that started them.
    fn drop(&mut self) {
        let links = self.links.get_mut().unwrap_or_else(|p| p.into_inner());
        for link in links.values() {
            if let Ok(state) = link.try_lock() {
                if let LinkState::Connecting(task) = &*state {
                    task.abort();
                }
            }
        }
    }
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
    pub fn new(config: &Config, registrations: Arc<Registrations>) -> Result<South, SouthError> {
        let budget = handshake_budget(config.gateway.device_timeout);
        let patience = budget.saturating_mul(HANDSHAKE_PATIENCE);
        let mut security = HashMap::new();
        for d in &config.devices {
            let Some(uri) = d.reach.dialed() else {
                continue;
            };
            match (uri.scheme, &d.psk, &d.certs) {
                (Scheme::Coaps, Some(psk), _) => {
                    let mut cfg = PskClientConfig::new(psk.identity.clone(), psk.key.clone());
                    cfg.handshake_timeout = patience;
                    // The link's ACK_TIMEOUT is the operator's statement of its round trip.
                    cfg.initial_retransmit = Some(config.gateway.ack_timeout);
                    let client = DtlsClient::new(cfg).map_err(|source| SouthError::Dtls {
                        device: d.id.clone(),
                        source,
                    })?;
                    security.insert(d.id.clone(), ChannelSecurity::Dtls(Arc::new(client)));
                }
                (Scheme::Coaps, None, Some(files)) => {
                    let dtls_error = |source| SouthError::Dtls {
                        device: d.id.clone(),
                        source,
                    };
                    let creds = X509Credentials::from_pem_files(&files.cert, &files.key, &files.ca)
                        .map_err(dtls_error)?;
                    let mut cfg = X509ClientConfig::new(creds);
                    cfg.handshake_timeout = patience;
                    cfg.initial_retransmit = Some(config.gateway.ack_timeout);
                    let client = DtlsClient::new(cfg).map_err(dtls_error)?;
                    security.insert(d.id.clone(), ChannelSecurity::Dtls(Arc::new(client)));
                }
                (Scheme::CoapsTcp, _, Some(files)) => {
                    let tls_error = |source| SouthError::Tls {
                        device: d.id.clone(),
                        source,
                    };
                    let creds = TlsCredentials::from_pem_files(&files.cert, &files.key, &files.ca)
                        .map_err(tls_error)?;
                    let client = TlsClient::new(creds, budget).map_err(tls_error)?;
                    security.insert(d.id.clone(), ChannelSecurity::Tls(Arc::new(client)));
                }
                _ => {}
            }
        }
        let tuning = ChannelTuning {
            datagram: TransportTuning::unreliable()
                .with_ack_timeout(config.gateway.ack_timeout)
                .with_nstart(config.gateway.nstart),
            connect_timeout: budget,
            stream_response_timeout: config.gateway.device_timeout,
            stream_max_message_size: STREAM_MAX_MESSAGE_SIZE,
            // Proxied answers may be larger than an ACL; reads check MAX_DEVICE_BODY themselves.
            max_body: MAX_DEVICE_BODY.max(config.proxy.max_body),
        };
        Ok(South {
            muxes: tokio::sync::Mutex::new(HashMap::new()),
            bind: config.gateway.south_bind,
            security,
            links: Mutex::new(HashMap::new()),
            tuning,
            handshake_wait: budget,
            registrations,
            formats: Mutex::new(HashMap::new()),
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
        // Every read of a known device lands here: no key allocated for it.
        if let Some(link) = links.get(device) {
            return link.clone();
        }
        links.entry(device.to_owned()).or_default().clone()
    }

    /// Starts connecting `device` in its own task (see the module doc).
    async fn spawn_connect(
        &self,
        device: &DeviceConfig,
        uri: EndpointUri,
    ) -> Result<tokio::task::JoinHandle<Result<OpenLink, ReadFailure>>, ReadFailure> {
        let mux = self.mux_for(uri.addr).await?;
        let security = self
            .security
            .get(&device.id)
            .cloned()
            .unwrap_or(ChannelSecurity::None);
        let tuning = self.tuning.clone();
        let device = device.clone();
        Ok(tokio::spawn(async move {
            connect(&device, uri, &mux, &security, &tuning).await
        }))
    }

    /// Brings `state` to an open, usable link: replaces a broken one, starts a connect if
    /// there is none, and waits up to the handshake budget for a connect in progress.
    async fn open<'a>(
        &self,
        state: &'a mut LinkState,
        device: &DeviceConfig,
        uri: EndpointUri,
    ) -> Result<&'a mut OpenLink, ReadFailure> {
        if let LinkState::Open(link) = state {
            if !link.is_usable() {
                // Its session ended, or a stream read was cut off mid-frame.
                tracing::debug!("link not usable, reconnecting");
                if let LinkState::Open(link) = std::mem::take(state) {
                    link.close(CLOSE_NOTIFY_BUDGET).await;
                }
            }
        }
        adopt_finished_connect(state).await;
        if matches!(state, LinkState::Idle) {
            *state = LinkState::Connecting(self.spawn_connect(device, uri).await?);
        }
        if let LinkState::Connecting(task) = state {
            match tokio::time::timeout(self.handshake_wait, &mut *task).await {
                Err(_) => {
                    return Err(ReadFailure::Unreachable(format!(
                        "DTLS handshake with {} not complete after {:?}: no alert, so lost \
                         flights, a silent device, or credentials it drops silently (the \
                         handshake goes on in the background for the next read)",
                        uri.addr, self.handshake_wait
                    )));
                }
                Ok(Ok(Ok(link))) => *state = LinkState::Open(link),
                Ok(joined) => {
                    *state = LinkState::Idle;
                    return Err(match joined {
                        Ok(Err(failure)) => failure,
                        Ok(Ok(_)) => ReadFailure::Unreachable("no link".into()),
                        Err(e) => ReadFailure::Unreachable(format!("connect task failed: {e}")),
                    });
                }
            }
        }
        match state {
            LinkState::Open(link) => Ok(link),
            _ => Err(ReadFailure::Unreachable("no link".into())),
        }
    }

    /// One request to a device over its link, connecting (handshaking) if needed. A link that
    /// failed is dropped so the next request starts a fresh session. A registered device is
    /// reached over its registration on `on_behalf`'s account if it has one there, else the
    /// gateway's own; a sleeping queue-mode device is waited for within the handshake budget
    /// (so the failure is classified before the verifier's deadline).
    pub async fn request(
        &self,
        device: &DeviceConfig,
        on_behalf: &Account,
        request: Packet,
    ) -> Result<Packet, ReadFailure> {
        self.forward(device, on_behalf, request, self.handshake_wait)
            .await
    }

    /// [`request`](Self::request), waiting up to `patience` for a sleeping queue-mode device
    /// (the proxy's deadline rather than the verifier's handshake budget).
    pub async fn forward(
        &self,
        device: &DeviceConfig,
        on_behalf: &Account,
        request: Packet,
        patience: Duration,
    ) -> Result<Packet, ReadFailure> {
        match &device.reach {
            Reach::Dialed(uri) => self.request_dialed(device, *uri, request).await,
            // Boxed, as in `read_ac_object`: each arm's future would size the other's.
            Reach::Registers(r) => {
                Box::pin(async {
                    self.route(&r.endpoint, on_behalf, patience)
                        .await?
                        .session
                        .link
                        .request(request)
                        .await
                        .map_err(link_failure)
                })
                .await
            }
        }
    }

    /// Observes `request`'s resource on the device (RFC 7641, the proxy's Observe relay):
    /// over the registration's session on `on_behalf`'s account (waiting up to `patience`
    /// for a sleeping device), or over a dialled device's UDP/DTLS session. A TCP/TLS device
    /// link has no Observe here: `BadAnswer`.
    pub async fn observe(
        &self,
        device: &DeviceConfig,
        on_behalf: &Account,
        request: Packet,
        patience: Duration,
    ) -> Result<Observation, ReadFailure> {
        let link = match &device.reach {
            Reach::Registers(r) => {
                self.route(&r.endpoint, on_behalf, patience)
                    .await?
                    .session
                    .link
            }
            Reach::Dialed(uri) => {
                let link = self.link(&device.id);
                let mut guard = link.lock().await;
                match self.open(&mut guard, device, *uri).await? {
                    OpenLink::Datagram(s) => s.link.clone(),
                    OpenLink::Stream(_) => {
                        return Err(ReadFailure::BadAnswer(
                            "Observe over a TCP/TLS device link is not relayed".into(),
                        ));
                    }
                }
            }
        };
        link.observe(request).await.map_err(link_failure)
    }

    async fn request_dialed(
        &self,
        device: &DeviceConfig,
        uri: EndpointUri,
        request: Packet,
    ) -> Result<Packet, ReadFailure> {
        let link = self.link(&device.id);
        let mut guard = link.lock().await;
        let warm = guard.datagram_session().filter(|s| !s.is_closed()).cloned();
        let session = match warm {
            // The warm path: an open session, no connect machinery in this future.
            Some(session) => Some(session),
            // Boxed: connecting is rare, and its future would otherwise size every read's.
            None => match Box::pin(self.open(&mut guard, device, uri)).await? {
                OpenLink::Datagram(s) => Some(s.link.clone()),
                OpenLink::Stream(_) => None,
            },
        };
        if let Some(session) = session {
            // The lock guards the link's state, not the exchange: other reads of this device
            // go over the same session meanwhile (the endpoint queues beyond NSTART).
            drop(guard);
            let result = session.request(request).await.map_err(link_failure);
            if result.is_err() {
                Box::pin(close_if_current(&link, &session)).await;
            }
            return result;
        }
        let LinkState::Open(OpenLink::Stream(channel)) = &mut *guard else {
            return Err(ReadFailure::Unreachable("no link".into()));
        };
        let result = Box::pin(channel.request(request))
            .await
            .map_err(request_failure);
        if result.is_err() {
            Box::pin(close_link(&mut guard)).await;
        }
        result
    }

    /// The registration to reach `endpoint` by, waiting up to `patience` for a sleeping one.
    async fn route(
        &self,
        endpoint: &str,
        on_behalf: &Account,
        patience: Duration,
    ) -> Result<Route, ReadFailure> {
        let route = self
            .registrations
            .wait_route(endpoint, on_behalf, patience)
            .await
            .map_err(|e| ReadFailure::Unreachable(e.to_string()))?;
        tracing::debug!(account = %route.account, addr = %route.session.addr, "over the registration");
        Ok(route)
    }

    /// Reads a device's `/2` (Access Control object): with Accept TLV from a dialled device;
    /// from a registered one over its registration, in the formats its LwM2M version allows
    /// (the one that last worked first, the next one on 4.06). Returns the device's answer.
    pub async fn read_ac_object(
        &self,
        device: &DeviceConfig,
        on_behalf: &Account,
    ) -> Result<Packet, ReadFailure> {
        match &device.reach {
            Reach::Dialed(_) => {
                self.request(device, on_behalf, get_ac_object(content_format::TLV))
                    .await
            }
            // Boxed: a registered device's read (format memory, retries on 4.06) would
            // otherwise size every dialled device's read future too.
            Reach::Registers(r) => {
                Box::pin(self.read_ac_object_registered(device, &r.endpoint, on_behalf)).await
            }
        }
    }

    /// [`read_ac_object`](Self::read_ac_object) of a registered device, over its
    /// registration at `endpoint`.
    async fn read_ac_object_registered(
        &self,
        device: &DeviceConfig,
        endpoint: &str,
        on_behalf: &Account,
    ) -> Result<Packet, ReadFailure> {
        let route = self.route(endpoint, on_behalf, self.handshake_wait).await?;
        let order = {
            let mut formats = self.formats.lock().unwrap_or_else(|p| p.into_inner());
            let memory = formats
                .entry(device.id.clone())
                .or_insert_with(|| FormatMemory::new(route.version));
            memory.set_version(route.version);
            memory.order()
        };
        let mut answer = None;
        for accept in order {
            let response = route
                .session
                .link
                .request(get_ac_object(accept))
                .await
                .map_err(link_failure)?;
            if response.header.code != MessageClass::Response(ResponseType::NotAcceptable) {
                if response.header.code == MessageClass::Response(ResponseType::Content) {
                    let mut formats = self.formats.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(memory) = formats.get_mut(&device.id) {
                        memory.worked(accept);
                    }
                }
                return Ok(response);
            }
            tracing::debug!(accept, "device answered 4.06, trying the next format");
            answer = Some(response);
        }
        answer.ok_or_else(|| ReadFailure::BadAnswer("no content format to ask for".into()))
    }
}

/// Closes `link` if `session` is still its session: a request over it failed, so the next
/// read starts afresh (a newer session, opened meanwhile, stays).
async fn close_if_current(link: &Link, session: &PeerLink) {
    let mut guard = link.lock().await;
    if guard
        .datagram_session()
        .is_some_and(|s| s.same_session(session))
    {
        close_link(&mut guard).await;
    }
}

/// Drops a link that failed, saying goodbye so the device drops its side too; the next read
/// starts afresh.
async fn close_link(state: &mut LinkState) {
    if let LinkState::Open(link) = std::mem::take(state) {
        link.close(CLOSE_NOTIFY_BUDGET).await;
    }
}

/// A connect left running by an earlier read: adopt its channel if it has succeeded since;
/// replace one that failed (a stale verdict) or is still running (OpenSSL has backed its
/// retransmission timer off by now, a fresh handshake starts again at 1 s).
async fn adopt_finished_connect(state: &mut LinkState) {
    let LinkState::Connecting(task) = state else {
        return;
    };
    if !task.is_finished() {
        task.abort();
        *state = LinkState::Idle;
        return;
    }
    *state = match task.await {
        Ok(Ok(link)) => LinkState::Open(link),
        _ => LinkState::Idle,
    };
}

/// Opens a link to `device` and checks the identity it proved.
async fn connect(
    device: &DeviceConfig,
    uri: EndpointUri,
    mux: &Arc<DatagramMux>,
    security: &ChannelSecurity,
    tuning: &ChannelTuning,
) -> Result<OpenLink, ReadFailure> {
    let (channel, peer) =
        OpenLink::open(uri, mux, security, tuning)
            .await
            .map_err(|e| match e {
                OpenError::Transport(t) => handshake_failure(t),
                other => ReadFailure::SecureChannel(other.to_string()),
            })?;
    if let Err(e) = check_identity(device, &peer.identity) {
        // Tell the device the session is over (close_notify): it keeps a session per
        // address, and our next handshake comes from this same port.
        channel.close(CLOSE_NOTIFY_BUDGET).await;
        return Err(e);
    }
    Ok(channel)
}

/// Classifies a failed exchange on an open link.
fn request_failure(e: ChannelError) -> ReadFailure {
    match e {
        ChannelError::Datagram(RequestError::Coap(ClientError::TimedOut)) => {
            ReadFailure::Unreachable("no CoAP response (retransmissions exhausted)".into())
        }
        ChannelError::Datagram(RequestError::Coap(ClientError::TooLarge { limit }))
        | ChannelError::Stream(StreamRequestError::Coap(ClientError::TooLarge { limit })) => {
            ReadFailure::BadAnswer(format!("answer larger than {limit} bytes"))
        }
        ChannelError::Datagram(RequestError::Coap(ClientError::Reset)) => {
            ReadFailure::DeviceError { code: "RST".into() }
        }
        ChannelError::Datagram(RequestError::Coap(other)) => {
            ReadFailure::BadAnswer(other.to_string())
        }
        ChannelError::Datagram(RequestError::Transport(t)) => {
            ReadFailure::SecureChannel(t.to_string())
        }
        ChannelError::Stream(StreamRequestError::Coap(ClientError::TimedOut)) => {
            ReadFailure::Unreachable("no CoAP response in time".into())
        }
        ChannelError::Stream(StreamRequestError::Coap(other)) => {
            ReadFailure::BadAnswer(other.to_string())
        }
        ChannelError::Stream(StreamRequestError::Send(e)) => ReadFailure::BadAnswer(e.to_string()),
        ChannelError::Stream(StreamRequestError::Io(e)) => {
            ReadFailure::Unreachable(format!("connection: {e}"))
        }
        ChannelError::Stream(StreamRequestError::Closed(reason)) => {
            ReadFailure::Unreachable(format!("connection closed: {reason}"))
        }
    }
}

/// `GET /2` with `Accept: accept`.
fn get_ac_object(accept: u16) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Request(RequestType::Get);
    crate::coap::set_uri(&mut p, "/2");
    crate::coap::set_accept(&mut p, accept);
    p
}

/// Classifies a failed request over a datagram session (dialled or registered).
fn link_failure(e: LinkError) -> ReadFailure {
    match e {
        LinkError::Closed => ReadFailure::Unreachable("the device's session has ended".into()),
        LinkError::Busy => {
            ReadFailure::Unreachable("too many requests waiting for the device".into())
        }
        LinkError::Coap(ClientError::TimedOut) => {
            ReadFailure::Unreachable("no CoAP response (retransmissions exhausted)".into())
        }
        LinkError::Coap(ClientError::TooLarge { limit }) => {
            ReadFailure::BadAnswer(format!("answer larger than {limit} bytes"))
        }
        LinkError::Coap(ClientError::Reset) => ReadFailure::DeviceError { code: "RST".into() },
        LinkError::Coap(other) => ReadFailure::BadAnswer(other.to_string()),
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

/// Classifies a failed channel setup. A handshake that timed out without an alert is
/// `unreachable` whether or not the device answered some flights: lost packets and a wrong
/// PSK look the same on the wire, and a lossy link must not be reported as rejected
/// credentials. Alerts and certificate verdicts are `secure-channel`.
fn handshake_failure(e: TransportError) -> ReadFailure {
    match e {
        TransportError::HandshakeTimeout { .. }
        | TransportError::TlsHandshakeTimeout { .. }
        | TransportError::TcpConnect { .. }
        | TransportError::ConnectTimeout { .. } => ReadFailure::Unreachable(e.to_string()),
        other => ReadFailure::SecureChannel(other.to_string()),
    }
}

impl AclReader for South {
    /// A dialled LwM2M device whose datagram session is open (and not being replaced right
    /// now): its `GET /2` goes straight into the session's channel.
    fn start_untasked(
        &self,
        device: &DeviceConfig,
        answers: &tokio::sync::mpsc::UnboundedSender<Tagged>,
        tag: usize,
    ) -> Option<PeerLink> {
        if !matches!(device.profile, Profile::Lwm2m(_)) || !matches!(device.reach, Reach::Dialed(_))
        {
            return None;
        }
        let link = self.link(&device.id);
        let session = link.try_lock().ok()?.datagram_session()?.clone();
        session
            .try_request_tagged(get_ac_object(content_format::TLV), answers, tag)
            .then_some(session)
    }

    fn finish_untasked(
        &self,
        device: &DeviceConfig,
        over: PeerLink,
        answer: Result<Packet, LinkError>,
    ) -> Result<AclReading, ReadFailure> {
        match answer {
            Ok(response) => profile::lwm2m_reading(response),
            Err(e) => {
                let link = self.link(&device.id);
                tokio::spawn(async move { close_if_current(&link, &over).await });
                Err(link_failure(e))
            }
        }
    }

    async fn read_acl(
        &self,
        device: &DeviceConfig,
        on_behalf: &Principal,
        uri: &str,
    ) -> Result<AclReading, ReadFailure> {
        let account = Account::new(on_behalf.server_id());
        profile::read_acl(self, device, &account, uri).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(peer_answered: bool) -> TransportError {
        TransportError::HandshakeTimeout {
            peer: SocketAddr::from(([127, 0, 0, 1], 5684)),
            after: Duration::from_secs(10),
            peer_answered,
        }
    }

    /// Issue 6 item 9: a handshake whose flights were lost after the device's first answer
    /// was reported as `secure-channel` ("credentials rejected?").
    #[test]
    fn a_handshake_that_timed_out_is_unreachable_even_after_an_answer() {
        for answered in [false, true] {
            match handshake_failure(timeout(answered)) {
                ReadFailure::Unreachable(detail) => {
                    assert!(!detail.contains("credentials rejected"), "{detail}");
                    assert!(detail.contains("DTLS handshake"), "{detail}");
                }
                other => panic!("answered={answered}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_handshake_that_proved_something_wrong_is_secure_channel() {
        let e = TransportError::PeerIdentity {
            peer: SocketAddr::from(([127, 0, 0, 1], 5684)),
            reason: "no certificate".into(),
        };
        assert!(matches!(
            handshake_failure(e),
            ReadFailure::SecureChannel(_)
        ));
    }
}
