//! The gateway: wires listeners, the service, south and the store together, and identifies
//! each northbound peer by what its channel proved (DESIGN.md §2).
//!
//! Lifecycle follows mini-redis: [`Gateway::start`] binds everything (so the caller knows the
//! ports), spawns the tasks and returns a handle; [`Gateway::stop`] flips the shutdown signal
//! and waits for every task.

pub mod observe_relay;
pub mod proxy;
pub mod quota;
pub mod registration_front;
pub mod registrations;
pub mod reports;
pub mod service;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::audit::AuditLog;
use crate::coap::{MessageClass, Packet, ResponseType, TransportTuning};
use crate::config::{Config, DeviceProof, EndpointUri, Reach, Registering, Scheme, ServerConfig};
use crate::proxy::forward::refusal as proxy_refusal;
use crate::proxy::{Destination, Membership, PrivilegeIndex};
use crate::registry::block1::{Block1Assembler, echo_block1};
use crate::runtime::{
    AnyListener, Handler, ListenError, Listener, PeerLink, Security, StreamListener, StreamSecurity,
};
use crate::south::{South, SouthError};
use crate::store::PrivilegeStore;
use crate::store::{Fingerprint, RedbStore, StoreError};
use crate::transport::cert::{Anchors, ScopedRule};
use crate::transport::dtls::{DtlsServer, DtlsServerConfig, PskServerConfig, X509Credentials};
use crate::transport::mux::DatagramMux;
use crate::transport::tls::{TlsCredentials, TlsServer};
use crate::transport::{Identity, PeerInfo, TransportError, TransportKind};
use registration_front::{DeviceDirectory, RegistrationFront};
use registrations::Registrations;

pub use service::{Answer, Service};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    South(#[from] Box<SouthError>),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("DTLS server setup: {0}")]
    Dtls(TransportError),
    #[error("certificates: {0}")]
    Credentials(String),
}

/// Answers northbound requests: identity from the channel, then by the first path segment
/// the service (the Gateway Config MO) or the proxy (a device prefix).
pub struct North {
    service: Arc<Service<South>>,
    proxy: Arc<proxy::Proxy>,
    /// Requests that came in Block1 blocks, per session, until whole.
    blocks: std::sync::Mutex<Block1Assembler<std::net::SocketAddr>>,
    /// `[limits]` cache bounds, with budgets shared by every northbound session.
    cache_limits: crate::coap::CacheLimits,
    by_psk: HashMap<Vec<u8>, Arc<ServerConfig>>,
    by_address: HashMap<IpAddr, Arc<ServerConfig>>,
    /// Each certificate server's rule, scoped to the gateway's CA and its own `ca`.
    by_certificate: Vec<(ScopedRule, Arc<ServerConfig>)>,
}

impl North {
    fn server_of(&self, peer: &PeerInfo) -> Option<&Arc<ServerConfig>> {
        match &peer.identity {
            Identity::Psk(id) => self.by_psk.get(id),
            Identity::Address(ip) => self.by_address.get(ip),
            Identity::Certificate(cert) => {
                let mut matching = self
                    .by_certificate
                    .iter()
                    .filter(|(rule, _)| rule.admits(cert));
                let first = matching.next().map(|(_, s)| s);
                if let Some(second) = matching.next() {
                    // Two servers claim one certificate: trust neither.
                    tracing::warn!(
                        certificate = %cert,
                        first = %first.map(|s| s.id.as_str()).unwrap_or_default(),
                        second = %second.1.id,
                        "certificate matches several servers"
                    );
                    return None;
                }
                first
            }
        }
    }
}

impl Handler for North {
    /// Only configured servers get a session: a certificate that chains to a trusted CA but
    /// names no server (or several) is closed after its handshake (a PSK or NoSec peer that
    /// is no server never gets that far).
    fn admits(&self, peer: &PeerInfo) -> bool {
        self.server_of(peer).is_some()
    }

    fn cache_limits(&self) -> crate::coap::CacheLimits {
        self.cache_limits.clone()
    }

    /// Proxied writes may be longer than one message: reassembled here, then forwarded.
    fn accepts_block1(&self) -> bool {
        true
    }

    async fn handle(&self, peer: &PeerInfo, request: Packet) -> Packet {
        self.handle_within(peer, request, service::DEFAULT_MAX_PAYLOAD)
            .await
    }

    async fn handle_within(&self, peer: &PeerInfo, request: Packet, max_payload: usize) -> Packet {
        self.handle_on_link(peer, &PeerLink::closed(), request, max_payload)
            .await
    }

    async fn handle_on_link(
        &self,
        peer: &PeerInfo,
        link: &PeerLink,
        request: Packet,
        max_payload: usize,
    ) -> Packet {
        let Some(server) = self.server_of(peer) else {
            tracing::warn!(addr = %peer.addr, identity = %peer.identity, "unknown server identity: 4.01");
            let mut p = Packet::new();
            p.header.code = MessageClass::Response(ResponseType::Unauthorized);
            p.payload = b"unknown server identity".to_vec();
            return p;
        };
        let (request, last_block) = match self.whole(peer, request) {
            Ok(whole) => whole,
            Err(answer_now) => return answer_now,
        };
        let segments = crate::coap::uri_path(&request).unwrap_or_default();
        let path = format!("/{}", segments.join("/"));
        let span = tracing::info_span!(
            "request",
            server = %server.id,
            method = method_name(request.header.code),
            %path
        );
        let mut answer = match self.proxy.prefixes().route(&segments) {
            Destination::Device { device, path } => {
                self.proxy
                    .handle(server, device, path, &request, link)
                    .instrument(span)
                    .await
            }
            Destination::Unknown(prefix) => {
                tracing::info!(parent: &span, %prefix, "no such device prefix: 4.04");
                proxy_refusal(
                    ResponseType::NotFound,
                    format!("no device with prefix '{prefix}'"),
                )
            }
            Destination::GatewayObject(rest) => {
                let _in = span.enter();
                let answer = self
                    .proxy
                    .gateway_object(self.service.config(), rest, &request);
                tracing::debug!(code = %answer.header.code, "answered");
                answer
            }
            Destination::Gateway => {
                self.serve_locally(peer, server, request, max_payload)
                    .instrument(span)
                    .await
            }
        };
        if let Some(block) = last_block {
            echo_block1(&mut answer, block);
        }
        answer
    }
}

impl North {
    /// The request whole: as it came, or reassembled from its Block1 blocks; `Err` is the
    /// answer to give a block now (2.31 Continue, or a refusal).
    fn whole(
        &self,
        peer: &PeerInfo,
        request: Packet,
    ) -> Result<(Packet, Option<crate::coap::BlockOption>), Packet> {
        let now = tokio::time::Instant::now().into_std();
        self.blocks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .whole(now, peer.addr, request)
    }

    /// A request for the Gateway Config MO, answered by the service.
    async fn serve_locally(
        &self,
        peer: &PeerInfo,
        server: &Arc<ServerConfig>,
        request: Packet,
        max_payload: usize,
    ) -> Packet {
        // Over UDP/DTLS a client retransmits with the same MID and token: the fingerprint
        // lets a committed write be answered again after a restart (RFC 8323 has no MIDs).
        // A read commits nothing, so it needs none (and skips a SHA-256 per GET).
        let read = matches!(
            request.header.code,
            MessageClass::Request(crate::coap::RequestType::Get | crate::coap::RequestType::Fetch)
        );
        let fingerprint = (!read && matches!(peer.kind, TransportKind::Udp | TransportKind::Dtls))
            .then(|| Fingerprint::of_request(&server.id, &request));
        let answer = self
            .service
            .handle_exchange(server, &request, fingerprint, max_payload)
            .await;
        // Reads at debug: a busy front end must not log a line per GET. Writes log their
        // decision at info in the service.
        tracing::debug!(code = %service::code_str(answer.code), "answered");
        answer.into_packet()
    }
}

pub(crate) fn method_name(code: MessageClass) -> &'static str {
    use crate::coap::RequestType;
    match code {
        MessageClass::Request(RequestType::Get) => "GET",
        MessageClass::Request(RequestType::Post) => "POST",
        MessageClass::Request(RequestType::Put) => "PUT",
        MessageClass::Request(RequestType::Delete) => "DELETE",
        MessageClass::Request(RequestType::Fetch) => "FETCH",
        MessageClass::Request(RequestType::Patch) => "PATCH",
        MessageClass::Request(RequestType::IPatch) => "iPATCH",
        _ => "other",
    }
}

/// The TLS server for `coaps+tcp://` listeners: the gateway's certificate, trusting the
/// gateway's CA and every server's own `ca` (which server a chain may be is then scoped to
/// its anchors by [`scoped_rules`]).
fn tls_server(config: &Config) -> Result<TlsServer, GatewayError> {
    let files = config.gateway.certs.as_ref().ok_or_else(|| {
        GatewayError::Credentials("coaps+tcp:// needs the gateway's cert, key and ca".into())
    })?;
    let mut creds = TlsCredentials::from_pem_files(&files.cert, &files.key, &files.ca)
        .map_err(|e| GatewayError::Credentials(e.to_string()))?;
    for server in &config.servers {
        if let Some(ca) = &server.ca {
            let extra = TlsCredentials::ca_from_pem_file(ca)
                .map_err(|e| GatewayError::Credentials(e.to_string()))?;
            creds.ca.extend(extra);
        }
    }
    TlsServer::new(creds, TLS_HANDSHAKE_TIMEOUT)
        .map_err(|e| GatewayError::Credentials(e.to_string()))
}

/// The gateway's certificate for `coaps://` listeners (offered next to PSK), trusting the
/// gateway's CA and every server's own `ca` (scoped per server by [`scoped_rules`]); `None`
/// without gateway certificates.
fn dtls_certificates(config: &Config) -> Result<Option<X509Credentials>, GatewayError> {
    let Some(files) = &config.gateway.certs else {
        return Ok(None);
    };
    let mut creds = X509Credentials::from_pem_files(&files.cert, &files.key, &files.ca)
        .map_err(|e| GatewayError::Credentials(e.to_string()))?;
    for server in &config.servers {
        if let Some(ca) = &server.ca {
            let extra = X509Credentials::ca_from_pem_file(ca)
                .map_err(|e| GatewayError::Credentials(e.to_string()))?;
            creds.ca.extend(extra);
        }
    }
    Ok(Some(creds))
}

/// Each certificate server's rule, counting only for chains verified to the gateway's `ca`
/// or to that server's own `ca` (issue 6: every `ca` is in the listeners' trust store, so
/// without this scope one server's CA could vouch for another server's name).
fn scoped_rules(
    config: &Config,
    servers: &[Arc<ServerConfig>],
) -> Result<Vec<(ScopedRule, Arc<ServerConfig>)>, GatewayError> {
    let read = |path: &std::path::Path| {
        X509Credentials::ca_from_pem_file(path)
            .map(|certs| Anchors::of(&certs))
            .map_err(|e| GatewayError::Credentials(e.to_string()))
    };
    let gateway = match &config.gateway.certs {
        Some(files) => read(&files.ca)?,
        None => Anchors::default(),
    };
    let mut rules = Vec::new();
    for server in servers {
        let Some(rule) = &server.cert_rule else {
            continue;
        };
        let anchors = match &server.ca {
            Some(ca) => gateway.union(&read(ca)?),
            None => gateway.clone(),
        };
        let scoped = ScopedRule {
            rule: rule.clone(),
            anchors,
        };
        rules.push((scoped, server.clone()));
    }
    Ok(rules)
}

/// Binds every `[[lwm2m.listen]]` listener with its registration front. Their DTLS server
/// knows the registering devices' keys only (a server identity is refused at the handshake)
/// and trusts only the gateway's own `ca` for device certificates.
async fn bind_registration_listeners(
    config: &Config,
    registrations: &Arc<Registrations>,
) -> Result<Vec<(Listener, Arc<RegistrationFront>)>, GatewayError> {
    let directory = Arc::new(DeviceDirectory::from_config(config));
    let mut dtls: Option<Arc<DtlsServer>> = None;
    let mut bound = Vec::new();
    for listen in &config.lwm2m.listen {
        let security = match listen.uri.scheme {
            // Lab only: NoSec devices are known by the endpoint name they send.
            Scheme::Coap => Security::NoSec,
            _ => {
                let server = match &dtls {
                    Some(s) => s.clone(),
                    None => {
                        let s = Arc::new(device_dtls_server(config)?);
                        dtls = Some(s.clone());
                        s
                    }
                };
                Security::Dtls(server)
            }
        };
        let listener =
            Listener::bind_with_limits(listen.uri, security, config.limits.datagram_limits())
                .await?;
        let account = crate::registry::Account::new(listen.account.name());
        let front = RegistrationFront::new(account, registrations.clone(), directory.clone())
            .with_max_response_body(config.proxy.max_body);
        tracing::info!(uri = %listener.uri(), account = %listen.account, "LwM2M registration listener");
        bound.push((listener, Arc::new(front)));
    }
    Ok(bound)
}

/// The DTLS server devices register with: their PSKs, and the gateway's certificate with
/// only the gateway's `ca` as trust anchor.
fn device_dtls_server(config: &Config) -> Result<DtlsServer, GatewayError> {
    let keys: HashMap<Vec<u8>, Vec<u8>> = registering_psks(config)
        .map(|p| (p.identity.clone(), p.key.clone()))
        .collect();
    let psk = PskServerConfig::new(Arc::new(move |id: &[u8]| keys.get(id).cloned()));
    let mut server = match &config.gateway.certs {
        Some(files) => {
            let x509 = X509Credentials::from_pem_files(&files.cert, &files.key, &files.ca)
                .map_err(|e| GatewayError::Credentials(e.to_string()))?;
            psk.with_x509(x509)
        }
        None => DtlsServerConfig::from(psk),
    };
    server.handshakes = config.gateway.dtls_handshakes;
    DtlsServer::new(server).map_err(GatewayError::Dtls)
}

/// The PSKs of the devices that register.
fn registering_psks(config: &Config) -> impl Iterator<Item = &crate::config::Psk> {
    config.devices.iter().filter_map(|d| match &d.reach {
        Reach::Registers(Registering {
            proof: DeviceProof::Psk(psk),
            ..
        }) => Some(psk),
        _ => None,
    })
}

/// Bound on a northbound TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A running gateway.
pub struct Gateway {
    listeners: Vec<EndpointUri>,
    /// The `[[lwm2m.listen]]` listeners with their bound ports, in config order.
    lwm2m_listeners: Vec<EndpointUri>,
    registrations: Arc<Registrations>,
    /// The socket of each `coap://` / `coaps://` listener, by its bound URI.
    muxes: Vec<(EndpointUri, Arc<DatagramMux>)>,
    service: Arc<Service<South>>,
    proxy: Arc<proxy::Proxy>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    audit: AuditLog,
    /// The audit batch writer's own stop signal and task.
    audit_writer: (watch::Sender<bool>, tokio::task::JoinHandle<()>),
}

impl Gateway {
    /// Opens the store, binds every listener and starts serving.
    pub async fn start(config: Config) -> Result<Gateway, GatewayError> {
        let config = Arc::new(config);
        let store = Arc::new(RedbStore::open(&config.gateway.store)?);
        let registrations = Arc::new(Registrations::new(
            config.limits.max_registrations,
            config.lwm2m.queue_awake,
        ));
        let south = Arc::new(South::new(&config, registrations.clone()).map_err(Box::new)?);
        let index = Arc::new(std::sync::RwLock::new(PrivilegeIndex::new(
            store.list()?,
            Membership::from_groups(config.groups.iter().map(|g| (&g.id, &g.members))),
        )));
        // The audit writer starts once everything is bound (a failed start leaves no task).
        let (audit, audit_writer) = AuditLog::new(config.audit);
        let proxy = Arc::new(proxy::Proxy::new(
            &config,
            index.clone(),
            south.clone(),
            registrations.clone(),
            audit.clone(),
        ));
        let service = Arc::new(
            Service::new(config.clone(), store.clone(), south)
                .with_registrations(registrations.clone())
                .with_audit(audit.clone()),
        );

        let servers: Vec<Arc<ServerConfig>> =
            config.servers.iter().cloned().map(Arc::new).collect();
        let by_psk: HashMap<Vec<u8>, Arc<ServerConfig>> = servers
            .iter()
            .filter_map(|s| s.psk.as_ref().map(|p| (p.identity.clone(), s.clone())))
            .collect();
        let by_address = servers
            .iter()
            .filter_map(|s| s.nosec_address.map(|a| (a, s.clone())))
            .collect();
        let by_certificate = scoped_rules(&config, &servers)?;
        // A registering device's identity completes a handshake on a north listener too, and
        // is then no server: 4.01 there, rather than a handshake failure that looks like loss.
        let keys: HashMap<Vec<u8>, Vec<u8>> = config
            .servers
            .iter()
            .filter_map(|s| s.psk.as_ref())
            .chain(registering_psks(&config))
            .map(|p| (p.identity.clone(), p.key.clone()))
            .collect();
        let north = Arc::new(North {
            service: service.clone(),
            proxy: proxy.clone(),
            blocks: std::sync::Mutex::new(Block1Assembler::with_max_body(config.proxy.max_body)),
            cache_limits: config.limits.cache_limits(),
            by_psk,
            by_address,
            by_certificate,
        });

        let mut bound = Vec::new();
        let mut dtls: Option<Arc<DtlsServer>> = None;
        let mut tls: Option<Arc<TlsServer>> = None;
        let tcp_limits = config.limits.stream_limits();
        let udp_limits = config.limits.datagram_limits();
        for uri in &config.gateway.listen {
            let listener = match uri.scheme {
                Scheme::Coap => {
                    // Only configured servers' addresses get a session (issue 6 item 4).
                    let north = north.clone();
                    let known = Arc::new(move |ip| north.by_address.contains_key(&ip));
                    let security = Security::NoSecKnown(known);
                    AnyListener::Datagram(
                        Listener::bind_with_limits(*uri, security, udp_limits).await?,
                    )
                }
                Scheme::Coaps => {
                    let server = match &dtls {
                        Some(s) => s.clone(),
                        None => {
                            let keys = keys.clone();
                            let psk = PskServerConfig::new(Arc::new(move |id: &[u8]| {
                                keys.get(id).cloned()
                            }));
                            let mut cfg = match dtls_certificates(&config)? {
                                Some(x509) => psk.with_x509(x509),
                                None => DtlsServerConfig::from(psk),
                            };
                            cfg.handshakes = config.gateway.dtls_handshakes;
                            let s = Arc::new(DtlsServer::new(cfg).map_err(GatewayError::Dtls)?);
                            dtls = Some(s.clone());
                            s
                        }
                    };
                    let security = Security::Dtls(server);
                    AnyListener::Datagram(
                        Listener::bind_with_limits(*uri, security, udp_limits).await?,
                    )
                }
                Scheme::CoapTcp => AnyListener::Stream(
                    StreamListener::bind_with_limits(
                        *uri,
                        // Other sources get 4.01 and no slot past the pre-auth deadline.
                        StreamSecurity::NoSecKnown({
                            let north = north.clone();
                            Arc::new(move |ip| north.by_address.contains_key(&ip))
                        }),
                        tcp_limits,
                    )
                    .await?,
                ),
                Scheme::CoapsTcp => {
                    let server = match &tls {
                        Some(s) => s.clone(),
                        None => {
                            let s = Arc::new(tls_server(&config)?);
                            tls = Some(s.clone());
                            s
                        }
                    };
                    let security = StreamSecurity::Tls(server);
                    AnyListener::Stream(
                        StreamListener::bind_with_limits(*uri, security, tcp_limits).await?,
                    )
                }
            };
            bound.push(listener);
        }

        let (stop, shutdown) = watch::channel(false);
        let mut tasks = JoinSet::new();
        // The proxy's index follows the store's change feed (subscribed here, before any
        // listener runs): a committed change decides the next proxied request.
        let (applied, index_changes) = watch::channel(0);
        let feed = crate::proxy::spawn_index_feed(store.clone(), index, shutdown.clone(), applied);
        tasks.spawn(proxy.clone().follow_index(index_changes, shutdown.clone()));
        tasks.spawn(async move {
            let _ = feed.await;
        });
        let listeners = bound.iter().map(AnyListener::uri).collect();
        let lwm2m_bound = bind_registration_listeners(&config, &registrations).await?;
        let lwm2m_listeners = lwm2m_bound.iter().map(|(l, _)| l.uri()).collect();
        let device_tuning = TransportTuning::unreliable()
            .with_ack_timeout(config.gateway.ack_timeout)
            .with_nstart(config.gateway.nstart);
        for (listener, front) in lwm2m_bound {
            tasks.spawn(listener.run(front, device_tuning.clone(), shutdown.clone()));
        }
        tasks.spawn(registrations.clone().run_expiry(shutdown.clone()));
        let muxes = bound
            .iter()
            .filter_map(|l| match l {
                AnyListener::Datagram(l) => Some((l.uri(), l.mux())),
                AnyListener::Stream(_) => None,
            })
            .collect();
        for listener in bound {
            let north = north.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(listener.run(north, TransportTuning::unreliable(), shutdown));
        }
        // Stopped after the listeners, so what their last requests record is written.
        let (audit_stop, audit_shutdown) = watch::channel(false);
        let audit_task = audit_writer.spawn(store, audit_shutdown);
        Ok(Gateway {
            listeners,
            lwm2m_listeners,
            registrations,
            muxes,
            service,
            proxy,
            stop,
            tasks,
            audit,
            audit_writer: (audit_stop, audit_task),
        })
    }

    /// The listeners with their bound ports.
    pub fn listeners(&self) -> &[EndpointUri] {
        &self.listeners
    }

    /// The LwM2M registration listeners with their bound ports, in config order.
    pub fn lwm2m_listeners(&self) -> &[EndpointUri] {
        &self.lwm2m_listeners
    }

    /// The registrations of the gateway's devices.
    pub fn registrations(&self) -> &Arc<Registrations> {
        &self.registrations
    }

    /// The mux of the `coap://` or `coaps://` listener bound at `uri`, to watch its counters
    /// (sessions, pending handshakes, refusals, evictions).
    pub fn mux(&self, uri: &EndpointUri) -> Option<Arc<DatagramMux>> {
        self.muxes
            .iter()
            .find(|(u, _)| u == uri)
            .map(|(_, m)| m.clone())
    }

    /// The secure proxy (its index and Observe relay).
    pub fn proxy(&self) -> &Arc<proxy::Proxy> {
        &self.proxy
    }

    pub fn service(&self) -> &Arc<Service<South>> {
        &self.service
    }

    /// The audit trail (privilege write decisions, proxied decisions), to hand to the proxy.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Stops accepting and waits for the listener tasks, then for the audit writer to write
    /// what is queued.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        let (audit_stop, audit_task) = self.audit_writer;
        let _ = audit_stop.send(true);
        let _ = audit_task.await;
    }

    /// Serves until `shutdown` resolves, then stops.
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()>) {
        shutdown.await;
        tracing::info!("shutting down");
        self.stop().await;
    }
}
