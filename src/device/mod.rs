//! A simulated end device (`privgw device`): serves a `dm` or `lwm2m` ACL set over
//! `coap://` or `coaps://` (DTLS-PSK) with the same runtime as the gateway, so the demo,
//! the tests and a user at an interop table have real devices to talk to.
//!
//! * `lwm2m`: `GET /2` and `GET /2/<n>` answer the Access Control object in TLV (default),
//!   SenML-JSON, SenML-CBOR or LwM2M-CBOR per Accept.
//! * `dm`: `GET <path>?prop=ACL` answers the node's ACL string (empty = inherit) and
//!   `?prop=Format` answers `node` (interior) or `chr` (leaf).
//!
//! It counts the requests it serves and keeps a short log of what it answered, so tests can
//! assert that no request reached it and the demo can print what each device said.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod objects;
pub mod registering;

use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::acl::lwm2m::{AccessControl, Rights};
use crate::coap::{self, MessageClass, Packet, RequestType, ResponseType, TransportTuning};
use crate::config::{EndpointUri, Psk, Scheme, decode_hex};
use crate::lwm2m::{content_format, encode_access_control, format_name};
use crate::runtime::{
    AnyListener, Handler, ListenError, Listener, PeerLink, Security, StreamListener, StreamSecurity,
};
use crate::transport::dtls::{DtlsServer, DtlsServerConfig, PskLookup, X509Credentials};
use crate::transport::tls::{TlsCredentials, TlsServer};
use crate::transport::{PeerInfo, TransportError};

/// How the simulated device misbehaves, for failure tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// Answers correctly.
    #[default]
    Normal,
    /// Answers every ACL read 2.05 with bytes that are no valid ACL.
    Garbage,
    /// Answers every request 5.00.
    ServerError,
}

/// A simulated device's configuration (TOML, see `examples/devA.toml`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSimConfig {
    pub id: String,
    /// Where it serves as a CoAP server (a dialled device). Empty for a registering one.
    #[serde(default)]
    pub listen: String,
    /// Registering mode: the LwM2M server(s) it registers with, one per account (a URI or a
    /// list); it then listens nowhere and answers over its registrations' sessions only.
    #[serde(default, deserialize_with = "one_or_many")]
    pub register: Vec<String>,
    /// Its LwM2M endpoint name (default: `id`).
    pub endpoint: Option<String>,
    /// Registration lifetime `lt` in seconds (default 300).
    pub lifetime_s: Option<u64>,
    /// `lwm2m=` of its Register: `1.0`, `1.1` (default) or `1.2`.
    pub lwm2m_version: Option<String>,
    /// Queue mode: `Q` in its Register; it goes quiet `queue_awake_s` after each Register
    /// or Update (default 93) and registers again at the next Update time.
    #[serde(default)]
    pub queue: bool,
    pub queue_awake_s: Option<u64>,
    /// CoAP ACK_TIMEOUT of its own requests (Register, Update), ms (default 2000).
    pub ack_timeout_ms: Option<u64>,
    /// `lwm2m` or `dm`.
    #[serde(default = "default_profile")]
    pub profile: String,
    pub psk_identity: Option<String>,
    pub psk_key: Option<String>,
    pub psk_key_hex: Option<String>,
    /// Certificate mode (coaps+tcp://): our certificate, key, and the CA that verifies the
    /// gateway.
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    pub ca: Option<std::path::PathBuf>,
    #[serde(default)]
    pub behaviour: Behaviour,
    /// `lwm2m`: the Access Control object instances.
    #[serde(default)]
    pub access_control: Vec<AcInstance>,
    /// `lwm2m`: the content formats it answers `/2` in (default: TLV, SenML-JSON,
    /// SenML-CBOR, LwM2M-CBOR); an Accept of another gets 4.06, like a real client that
    /// lacks a codec.
    #[serde(default)]
    pub formats: Vec<u16>,
    /// `dm`: node path → ACL string.
    #[serde(default)]
    pub acls: BTreeMap<String, String>,
    /// `lwm2m`: resource values besides the Device object defaults, `"/3303/0/5700" = "21.5"`
    /// (see [`objects`]).
    #[serde(default)]
    pub resources: BTreeMap<String, String>,
    /// Every answer is this late (a slow device, for separate responses).
    pub slow_ms: Option<u64>,
    /// Keep no log of the requests it answered (a fleet member: nobody reads 10 000 logs,
    /// and formatting each line was a tenth of the fleet's CPU per read).
    #[serde(default)]
    pub quiet: bool,
}

fn default_profile() -> String {
    "lwm2m".into()
}

/// `register = "uri"` or `register = ["uri", …]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// One AC instance in config form.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcInstance {
    pub instance: u16,
    pub object: u16,
    pub object_instance: u16,
    pub owner: u16,
    /// Short Server ID (as a string key, TOML keys are strings) → rights bits.
    #[serde(default)]
    pub acl: BTreeMap<String, u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("device config: {0}")]
    Invalid(String),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("DTLS setup: {0}")]
    Dtls(TransportError),
    #[error("certificates: {0}")]
    Credentials(TransportError),
}

impl DeviceSimConfig {
    pub fn load(path: &Path) -> Result<Self, DeviceError> {
        let text = std::fs::read_to_string(path).map_err(|source| DeviceError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config: DeviceSimConfig = toml::from_str(&text)
            .map_err(|e| DeviceError::Invalid(format!("{}: {e}", path.display())))?;
        // Certificate paths are relative to the config file, like the gateway's.
        if let Some(dir) = path.parent() {
            for p in [&mut config.cert, &mut config.key, &mut config.ca]
                .into_iter()
                .flatten()
            {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        Ok(config)
    }

    /// The objects besides `/2` of an `lwm2m` device (`None` for `dm`).
    fn objects(&self) -> Result<Option<objects::Objects>, DeviceError> {
        if self.profile != "lwm2m" {
            return Ok(None);
        }
        objects::Objects::new(&self.id, &self.resources)
            .map(Some)
            .map_err(DeviceError::Invalid)
    }

    fn instances(&self) -> Result<Vec<AccessControl>, DeviceError> {
        self.access_control
            .iter()
            .map(|a| {
                let mut ac = AccessControl::new(a.instance, a.object, a.object_instance, a.owner);
                for (ssid, bits) in &a.acl {
                    let ssid: u16 = ssid.parse().map_err(|_| {
                        DeviceError::Invalid(format!("acl key '{ssid}' is not a Short Server ID"))
                    })?;
                    let rights = Rights::from_bits(*bits).ok_or_else(|| {
                        DeviceError::Invalid(format!("rights {bits} are not 0..=31"))
                    })?;
                    ac = ac.with_rights(ssid, rights);
                }
                Ok(ac)
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Model {
    Lwm2m(Vec<AccessControl>),
    Dm(BTreeMap<String, String>),
}

impl Model {
    /// The link-format object list a registering device sends: its Server, Access Control
    /// and Device instances, and the objects its AC instances govern.
    fn object_list(&self, objects: Option<&objects::Objects>) -> String {
        let mut links = std::collections::BTreeSet::from([(1u16, Some(0u16)), (3, Some(0))]);
        for (o, i) in objects.map(objects::Objects::instances).unwrap_or_default() {
            links.insert((o, Some(i)));
        }
        if let Model::Lwm2m(instances) = self {
            links.insert((2, None));
            for ac in instances {
                links.insert((2, Some(ac.instance)));
                let instance = (ac.object_instance_id != crate::acl::lwm2m::OBJECT_LEVEL)
                    .then_some(ac.object_instance_id);
                links.insert((ac.object_id, instance));
            }
        }
        links
            .into_iter()
            .map(|(o, i)| match i {
                Some(i) => format!("</{o}/{i}>"),
                None => format!("</{o}>"),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The device's request handler.
pub struct DeviceHandler {
    id: String,
    model: Model,
    behaviour: Behaviour,
    requests: AtomicU64,
    /// Requests served per peer address (a registering device: per server account).
    by_peer: Mutex<BTreeMap<SocketAddr, u64>>,
    /// `lwm2m`: the content formats it answers `/2` in (empty: all four); others get 4.06.
    formats: Vec<u16>,
    /// `lwm2m`: the objects besides `/2`.
    objects: Option<objects::Objects>,
    slow: Option<Duration>,
    /// Writes arriving in Block1 blocks, per peer, until whole.
    blocks: Mutex<crate::registry::block1::Block1Assembler<SocketAddr>>,
    /// Observers of `objects` resources, by path.
    observers: Mutex<BTreeMap<String, Vec<crate::runtime::ObserverHandle>>>,
    /// What it answered, for the demo (`None`: a quiet device keeps no log).
    log: Option<Mutex<Vec<String>>>,
}

impl DeviceHandler {
    fn new(
        config: &DeviceSimConfig,
        model: Model,
        objects: Option<objects::Objects>,
    ) -> Arc<DeviceHandler> {
        Arc::new(DeviceHandler {
            objects,
            slow: config.slow_ms.map(Duration::from_millis),
            blocks: Mutex::new(crate::registry::block1::Block1Assembler::new()),
            observers: Mutex::new(BTreeMap::new()),
            id: config.id.clone(),
            model,
            behaviour: config.behaviour,
            requests: AtomicU64::new(0),
            by_peer: Mutex::new(BTreeMap::new()),
            formats: config.formats.clone(),
            log: (!config.quiet).then(|| Mutex::new(Vec::new())),
        })
    }

    /// Logs the line `line` makes, unless the device is quiet or its log is full (then
    /// the line is never formatted).
    fn record(&self, line: impl FnOnce() -> String) {
        let Some(log) = &self.log else {
            return;
        };
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() < 1000 {
            log.push(line());
        }
    }

    fn answer(&self, request: &Packet) -> Packet {
        let path = coap::uri_path(request).unwrap_or_default();
        let query = coap::uri_query(request).unwrap_or_default();
        let is_get = request.header.code == MessageClass::Request(RequestType::Get);
        if self.behaviour == Behaviour::ServerError {
            return coap::response_to(request, ResponseType::InternalServerError);
        }
        let on_ac_object = path.first().is_some_and(|o| o == "2");
        if let Some(objects) = &self.objects {
            if !on_ac_object && path.first().is_none_or(|s| s != ".well-known") {
                let response = objects.answer(request, &path);
                self.record(|| {
                    format!(
                        "{} → {} /{}",
                        self.id,
                        coap::code_string(response.header.code),
                        path.join("/")
                    )
                });
                return response;
            }
        }
        if !is_get {
            return coap::response_to(request, ResponseType::MethodNotAllowed);
        }
        if path == [".well-known", "core"] {
            let mut response = coap::response_to(request, ResponseType::Content);
            coap::set_content_format(&mut response, content_format::LINK_FORMAT);
            response.payload = match &self.model {
                Model::Lwm2m(_) => b"</2>;ct=\"11542 110 112 11544\"".to_vec(),
                Model::Dm(acls) => acls
                    .keys()
                    .map(|k| format!("<{k}>"))
                    .collect::<Vec<_>>()
                    .join(",")
                    .into_bytes(),
            };
            return response;
        }
        match &self.model {
            Model::Lwm2m(instances) => self.answer_lwm2m(request, &path, instances),
            Model::Dm(acls) => self.answer_dm(request, &path, &query, acls),
        }
    }

    fn answer_lwm2m(
        &self,
        request: &Packet,
        path: &[String],
        instances: &[AccessControl],
    ) -> Packet {
        // The whole object (every gateway read) is encoded from the device's own instances.
        let selected: std::borrow::Cow<'_, [AccessControl]> = match path {
            [o] if o == "2" => std::borrow::Cow::Borrowed(instances),
            [o, n] if o == "2" => match n.parse::<u16>() {
                Ok(n) => instances
                    .iter()
                    .filter(|i| i.instance == n)
                    .cloned()
                    .collect(),
                Err(_) => return coap::response_to(request, ResponseType::NotFound),
            },
            _ => return coap::response_to(request, ResponseType::NotFound),
        };
        if path.len() == 2 && selected.is_empty() {
            return coap::response_to(request, ResponseType::NotFound);
        }
        let cf = coap::accept(request).unwrap_or(content_format::TLV);
        let refused = !self.formats.is_empty() && !self.formats.contains(&cf);
        if format_name(cf).is_none() || refused {
            return coap::response_to(request, ResponseType::NotAcceptable);
        }
        let mut response = coap::response_to(request, ResponseType::Content);
        coap::set_content_format(&mut response, cf);
        if self.behaviour == Behaviour::Garbage {
            response.payload = vec![0xc8, 0x00, 0xff, 0x01];
            self.record(|| format!("{} → 2.05 /2 (garbage)", self.id));
            return response;
        }
        match encode_access_control(cf, &selected) {
            Ok(bytes) => response.payload = bytes,
            Err(e) => {
                let mut r = coap::response_to(request, ResponseType::InternalServerError);
                r.payload = e.to_string().into_bytes();
                return r;
            }
        }
        self.record(|| {
            let summary: Vec<String> = selected
                .iter()
                .map(|i| {
                    format!(
                        "/{}/{} owner {}",
                        i.object_id,
                        if i.object_instance_id == crate::acl::lwm2m::OBJECT_LEVEL {
                            "*".to_owned()
                        } else {
                            i.object_instance_id.to_string()
                        },
                        i.owner
                    )
                })
                .collect();
            format!(
                "{} → 2.05 /{} ({}): {}",
                self.id,
                path.join("/"),
                format_name(cf).unwrap_or("?"),
                summary.join(", ")
            )
        });
        response
    }

    fn answer_dm(
        &self,
        request: &Packet,
        path: &[String],
        query: &[String],
        acls: &BTreeMap<String, String>,
    ) -> Packet {
        let node = format!("/{}", path.join("/"));
        let prefix = if node == "/" {
            "/".to_owned()
        } else {
            format!("{node}/")
        };
        let has_children = acls.keys().any(|k| k.starts_with(&prefix) && *k != node);
        if !acls.contains_key(&node) && !has_children && node != "/" {
            return coap::response_to(request, ResponseType::NotFound);
        }
        let mut response = coap::response_to(request, ResponseType::Content);
        coap::set_content_format(&mut response, content_format::TEXT);
        match query {
            [q] if q == "prop=ACL" => {
                let acl = if self.behaviour == Behaviour::Garbage {
                    "Replace==&&*".to_owned()
                } else {
                    acls.get(&node).cloned().unwrap_or_default()
                };
                self.record(|| format!("{} → 2.05 {node}?prop=ACL: \"{acl}\"", self.id));
                response.payload = acl.into_bytes();
            }
            [q] if q == "prop=Format" => {
                response.payload = if has_children || node == "/" {
                    b"node".to_vec()
                } else {
                    b"chr".to_vec()
                };
            }
            _ => return coap::response_to(request, ResponseType::NotFound),
        }
        response
    }
}

impl DeviceHandler {
    /// RFC 7641 as an LwM2M client: a GET with Observe = 0 on a resource that answers 2.05
    /// adds the observer; a PUT that changes it notifies every observer of that path.
    fn observe_hooks(&self, link: &PeerLink, request: &Packet, response: &mut Packet) {
        let path = coap::uri_path(request).unwrap_or_default().join("/");
        let ok = |code| response.header.code == MessageClass::Response(code);
        let method = request.header.code;
        let observe_0 = request
            .get_first_option(coap::CoapOption::Observe)
            .is_some_and(|v| coap::decode_uint(v) == Some(0));
        if method == MessageClass::Request(RequestType::Get)
            && observe_0
            && ok(ResponseType::Content)
        {
            response.add_option(coap::CoapOption::Observe, vec![0]);
            let mut observers = self.observers.lock().unwrap_or_else(|p| p.into_inner());
            observers
                .entry(path)
                .or_default()
                .push(link.observer(request));
        } else if method == MessageClass::Request(RequestType::Put) && ok(ResponseType::Changed) {
            let handles = self
                .observers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&path)
                .cloned()
                .unwrap_or_default();
            let mut get = request.clone();
            get.header.code = MessageClass::Request(RequestType::Get);
            get.payload.clear();
            let mut notification = self.answer(&get);
            notification.add_option(coap::CoapOption::Observe, vec![0]);
            for handle in handles {
                let notification = notification.clone();
                tokio::spawn(async move {
                    let _ = handle.notify(notification).await;
                });
            }
        }
    }
}

impl Handler for DeviceHandler {
    async fn handle(&self, peer: &PeerInfo, request: Packet) -> Packet {
        self.handle_on_link(peer, &PeerLink::closed(), request, 1024)
            .await
    }

    /// Writes longer than one message come in Block1 blocks (RFC 7959), as from a real
    /// client's server: reassembled, then answered whole.
    fn accepts_block1(&self) -> bool {
        true
    }

    async fn handle_on_link(
        &self,
        peer: &PeerInfo,
        link: &PeerLink,
        request: Packet,
        _max_payload: usize,
    ) -> Packet {
        let now = tokio::time::Instant::now().into_std();
        let whole = self
            .blocks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .whole(now, peer.addr, request);
        let (request, last_block) = match whole {
            Ok(whole) => whole,
            Err(answer_now) => return answer_now,
        };
        let mut response = self.answer_counted(peer, link, &request).await;
        if let Some(block) = last_block {
            crate::registry::block1::echo_block1(&mut response, block);
        }
        response
    }
}

impl DeviceHandler {
    /// Counts and answers one whole request.
    async fn answer_counted(&self, peer: &PeerInfo, link: &PeerLink, request: &Packet) -> Packet {
        self.requests.fetch_add(1, Ordering::Relaxed);
        *self
            .by_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(peer.addr)
            .or_default() += 1;
        if let Some(slow) = self.slow {
            tokio::time::sleep(slow).await;
        }
        let mut response = self.answer(request);
        if self.objects.is_some() {
            self.observe_hooks(link, request, &mut response);
        }
        response
    }
}

/// A running simulated device.
pub struct RunningDevice {
    /// Where it listens; for a registering device, the scheme of its first registration and
    /// the local address its sessions come from.
    uri: EndpointUri,
    handler: Arc<DeviceHandler>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Registering mode: each account's location while registered.
    accounts: Vec<registering::AccountState>,
}

impl RunningDevice {
    /// Binds and starts serving.
    pub async fn start(config: &DeviceSimConfig) -> Result<RunningDevice, DeviceError> {
        let model = match config.profile.as_str() {
            "lwm2m" => Model::Lwm2m(config.instances()?),
            "dm" => Model::Dm(config.acls.clone()),
            other => {
                return Err(DeviceError::Invalid(format!(
                    "profile '{other}' (lwm2m | dm)"
                )));
            }
        };
        let psk = match (&config.psk_identity, &config.psk_key, &config.psk_key_hex) {
            (Some(id), Some(k), None) => Some(Psk {
                identity: id.clone().into_bytes(),
                key: k.clone().into_bytes(),
            }),
            (Some(id), None, Some(h)) => Some(Psk {
                identity: id.clone().into_bytes(),
                key: decode_hex(h).map_err(DeviceError::Invalid)?,
            }),
            (None, None, None) => None,
            _ => {
                return Err(DeviceError::Invalid(
                    "give psk_identity with psk_key or psk_key_hex".into(),
                ));
            }
        };
        if !config.register.is_empty() {
            return Self::start_registering(config, model, psk).await;
        }
        if config.endpoint.is_some() || config.lifetime_s.is_some() || config.queue {
            return Err(DeviceError::Invalid(
                "endpoint, lifetime_s and queue are for a device with register = \"…\"".into(),
            ));
        }
        let uri: EndpointUri = config
            .listen
            .parse()
            .map_err(|e| DeviceError::Invalid(format!("listen: {e}")))?;
        let tls_creds = match (&config.cert, &config.key, &config.ca) {
            (Some(c), Some(k), Some(a)) => {
                Some(TlsCredentials::from_pem_files(c, k, a).map_err(DeviceError::Credentials)?)
            }
            (None, None, None) => None,
            _ => return Err(DeviceError::Invalid("cert, key and ca go together".into())),
        };
        let listener = match (uri.scheme, psk) {
            (Scheme::Coap, _) => AnyListener::Datagram(Listener::bind(uri, Security::NoSec).await?),
            (Scheme::Coaps, psk) => {
                let lookup: Option<PskLookup> = psk.map(|psk| {
                    Arc::new(move |id: &[u8]| {
                        (id == psk.identity.as_slice()).then(|| psk.key.clone())
                    }) as PskLookup
                });
                let x509 = match (&config.cert, &config.key, &config.ca) {
                    (Some(c), Some(k), Some(a)) => Some(
                        X509Credentials::from_pem_files(c, k, a)
                            .map_err(DeviceError::Credentials)?,
                    ),
                    _ => None,
                };
                if lookup.is_none() && x509.is_none() {
                    return Err(DeviceError::Invalid(
                        "coaps:// needs psk_identity/psk_key or cert/key/ca".into(),
                    ));
                }
                let server = DtlsServer::new(DtlsServerConfig::new(lookup, x509))
                    .map_err(DeviceError::Dtls)?;
                AnyListener::Datagram(Listener::bind(uri, Security::Dtls(Arc::new(server))).await?)
            }
            (Scheme::CoapTcp, _) => {
                AnyListener::Stream(StreamListener::bind(uri, StreamSecurity::NoSec).await?)
            }
            (Scheme::CoapsTcp, _) => {
                let creds = tls_creds.ok_or_else(|| {
                    DeviceError::Invalid("coaps+tcp:// needs cert, key and ca".into())
                })?;
                let server = TlsServer::new(creds, Duration::from_secs(10))
                    .map_err(DeviceError::Credentials)?;
                AnyListener::Stream(
                    StreamListener::bind(uri, StreamSecurity::Tls(Arc::new(server))).await?,
                )
            }
        };
        let uri = listener.uri();
        let handler = DeviceHandler::new(config, model, config.objects()?);
        let (stop, shutdown) = watch::channel(false);
        let task =
            tokio::spawn(listener.run(handler.clone(), TransportTuning::unreliable(), shutdown));
        Ok(RunningDevice {
            uri,
            handler,
            stop,
            tasks: vec![task],
            accounts: Vec::new(),
        })
    }

    /// Registering mode: one task per account, all from one local port.
    async fn start_registering(
        config: &DeviceSimConfig,
        model: Model,
        psk: Option<Psk>,
    ) -> Result<RunningDevice, DeviceError> {
        if !config.listen.is_empty() {
            return Err(DeviceError::Invalid(
                "a registering device listens nowhere: give register or listen, not both".into(),
            ));
        }
        let certs = match (&config.cert, &config.key, &config.ca) {
            (Some(c), Some(k), Some(a)) => {
                Some(X509Credentials::from_pem_files(c, k, a).map_err(DeviceError::Credentials)?)
            }
            (None, None, None) => None,
            _ => return Err(DeviceError::Invalid("cert, key and ca go together".into())),
        };
        let servers = config
            .register
            .iter()
            .map(|s| {
                s.parse::<EndpointUri>()
                    .map_err(|e| DeviceError::Invalid(format!("register: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(bad) = servers.iter().find(|u| u.scheme.is_stream()) {
            return Err(DeviceError::Invalid(format!(
                "register: {bad}: devices register over coap:// or coaps://"
            )));
        }
        if servers.iter().any(|u| u.scheme == Scheme::Coaps) && psk.is_none() && certs.is_none() {
            return Err(DeviceError::Invalid(
                "register over coaps:// needs psk_identity/psk_key or cert/key/ca".into(),
            ));
        }
        let version = config.lwm2m_version.clone().unwrap_or_else(|| "1.1".into());
        if !["1.0", "1.1", "1.2"].contains(&version.as_str()) {
            return Err(DeviceError::Invalid(format!(
                "lwm2m_version '{version}' (1.0 | 1.1 | 1.2)"
            )));
        }
        let lifetime = Duration::from_secs(config.lifetime_s.unwrap_or(300).max(1));
        let awake = Duration::from_secs(config.queue_awake_s.unwrap_or(93).max(1));
        let ack_timeout =
            Duration::from_millis(config.ack_timeout_ms.unwrap_or(2000).clamp(10, 60_000));
        let objects = model.object_list(config.objects()?.as_ref());
        let mux = registering::bind_for(servers[0].addr)
            .await
            .map_err(DeviceError::Dtls)?;
        let uri = EndpointUri {
            scheme: servers[0].scheme,
            addr: mux.local_addr(),
        };
        let handler = DeviceHandler::new(config, model, config.objects()?);
        let (stop, shutdown) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut accounts = Vec::new();
        for server in servers {
            let registration = registering::Registration {
                server,
                endpoint: config.endpoint.clone().unwrap_or_else(|| config.id.clone()),
                lifetime,
                version: version.clone(),
                queue: config.queue,
                awake,
                ack_timeout,
                psk: psk.clone(),
                certs: certs.clone(),
                objects: objects.clone(),
            };
            let (state, watcher) = watch::channel(None);
            accounts.push(watcher);
            tasks.push(tokio::spawn(registering::run(
                registration,
                handler.clone(),
                mux.clone(),
                state,
                shutdown.clone(),
            )));
        }
        Ok(RunningDevice {
            uri,
            handler,
            stop,
            tasks,
            accounts,
        })
    }

    pub fn uri(&self) -> EndpointUri {
        self.uri
    }

    pub fn addr(&self) -> SocketAddr {
        self.uri.addr
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.handler.requests.load(Ordering::Relaxed)
    }

    /// Requests served from `peer` (for a registering device: over that server's account).
    pub fn requests_from(&self, peer: SocketAddr) -> u64 {
        let by_peer = self
            .handler
            .by_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        by_peer.get(&peer).copied().unwrap_or(0)
    }

    /// What the device answered since the last call.
    pub fn take_log(&self) -> Vec<String> {
        self.handler.log.as_ref().map_or_else(Vec::new, |log| {
            std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner()))
        })
    }

    /// Registering mode: waits until every account is registered (false after `timeout`).
    pub async fn wait_registered(&self, timeout: Duration) -> bool {
        let all = async {
            for account in &self.accounts {
                let mut account = account.clone();
                if account.wait_for(|l| l.is_some()).await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(timeout, all).await.unwrap_or(false)
    }

    /// Registering mode: each account's location (`rd/<id>`) while registered.
    pub fn locations(&self) -> Vec<Option<String>> {
        self.accounts.iter().map(|a| a.borrow().clone()).collect()
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
