//! Shared setup for the integration tests: a [`Fleet`] of simulated devices and one gateway
//! that names them, all on loopback with OS-chosen ports, plus small helpers (clients,
//! replies, raw datagrams, a time bound per test).
//!
//! Every test builds its own fleet with its own temporary store, so tests share nothing and
//! run in parallel.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use privgw::cli::ctl::{ClientCredentials, GatewayClient, Reply};
use privgw::coap::{self, CoapOption, MessageClass, MessageType, Packet, RequestType};
use privgw::config::{Config, EndpointUri, Scheme};
use privgw::device::{AcInstance, Behaviour, DeviceSimConfig, RunningDevice};
use privgw::gateway::{Gateway, GatewayError};
use privgw::mo::Value;
use privgw::pki::{Issued, Pki, Profile};

pub mod relay;

/// Server A's and server B's Short Server IDs.
pub const SSID_A: u16 = 101;
pub const SSID_B: u16 = 102;

/// Every test body runs under this bound, so a hang fails the test instead of the suite.
pub const TEST_BOUND: Duration = Duration::from_secs(30);

/// Runs `f` under [`TEST_BOUND`]; panics if it takes longer.
pub async fn bounded<F: Future>(f: F) -> F::Output {
    match tokio::time::timeout(TEST_BOUND, f).await {
        Ok(v) => v,
        Err(_) => panic!("test did not finish within {TEST_BOUND:?}"),
    }
}

/// One AC instance for `/object/object_instance`, owned by `owner`, with full rights for the
/// owner and Read for everybody (key 0).
pub fn ac(instance: u16, object: u16, object_instance: u16, owner: u16) -> AcInstance {
    ac_with(
        instance,
        object,
        object_instance,
        owner,
        &[(owner, 31), (0, 1)],
    )
}

/// An AC instance with an explicit ACL (Short Server ID → rights bits R=1 W=2 E=4 D=8 C=16).
pub fn ac_with(
    instance: u16,
    object: u16,
    object_instance: u16,
    owner: u16,
    acl: &[(u16, u8)],
) -> AcInstance {
    AcInstance {
        instance,
        object,
        object_instance,
        owner,
        acl: acl.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    }
}

/// How a device of the fleet is reached.
#[derive(Debug, Clone)]
enum Kind {
    /// A simulated device, started by the fleet.
    Simulated(Box<DeviceSimConfig>),
    /// A URI nobody answers on (`coap://` or `coaps://`).
    Dead(Scheme),
    /// A simulated LwM2M client that registers, started after the gateway, on these
    /// `[[lwm2m.listen]]` listeners (indices into [`FleetBuilder::lwm2m_listen`]).
    Registering(Box<DeviceSimConfig>, Vec<usize>),
}

#[derive(Debug, Clone)]
struct DeviceSpec {
    id: String,
    profile: &'static str,
    policy: Option<&'static str>,
    psk_key: String,
    /// Whether the device has DTLS PSK keys (sim and gateway entry); without them a
    /// `coaps://` device is read over DTLS-X.509.
    psk: bool,
    kind: Kind,
}

/// Builds a [`Fleet`]: devices, groups and gateway settings.
#[derive(Debug, Clone)]
pub struct FleetBuilder {
    devices: Vec<DeviceSpec>,
    groups: Vec<(String, Vec<String>)>,
    listen: Vec<String>,
    privileges_acl: Option<String>,
    device_timeout_ms: u64,
    ack_timeout_ms: Option<u64>,
    /// NoSec source address per server id.
    nosec: BTreeMap<&'static str, String>,
    /// Where simulated devices listen (`coaps://127.0.0.1:0` unless changed).
    device_listen: String,
    /// The gateway's own `cert`, `key`, `ca` (PEM files), if any.
    gateway_certs: Option<CertPaths>,
    /// Certificate, key and CA given to the simulated devices added after
    /// [`device_certs`](Self::device_certs) (for `coaps+tcp://` devices).
    device_certs: Option<CertPaths>,
    /// Extra TOML lines per server entry (`ServerA`, `ServerB`).
    server_lines: BTreeMap<&'static str, Vec<String>>,
    /// Extra TOML lines per device entry, by DeviceID.
    device_lines: BTreeMap<String, Vec<String>>,
    /// Whether simulated devices added from now on get DTLS PSK keys (default: yes).
    device_psk: bool,
    /// Lines of the `[limits]` table.
    limits_lines: Vec<String>,
    /// Lines of the `[proxy]` table.
    proxy_lines: Vec<String>,
    /// Devices reached through a lossy [`relay::Relay`], by DeviceID.
    relays: BTreeMap<String, relay::LinkConfig>,
    /// `[[lwm2m.listen]]`: scheme and account (`None`: the gateway's own). Default when a
    /// device registers: one `coaps://` listener for the gateway's own account.
    lwm2m_listen: Vec<(Scheme, Option<&'static str>)>,
    /// Lines of the `[lwm2m]` table.
    lwm2m_lines: Vec<String>,
    /// Lines of the `[audit]` table.
    audit_lines: Vec<String>,
}

/// PEM files: certificate, private key, CA.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl CertPaths {
    /// `certs/<name>.pem`, `certs/<name>.key` and `certs/ca.pem` of the committed test PKI.
    pub fn committed(name: &str) -> CertPaths {
        CertPaths {
            cert: certs_dir().join(format!("{name}.pem")),
            key: certs_dir().join(format!("{name}.key")),
            ca: certs_dir().join("ca.pem"),
        }
    }

    /// `<dir>/<name>.pem`, `<dir>/<name>.key`, and the CA file given.
    pub fn in_dir(dir: &Path, name: &str, ca: &Path) -> CertPaths {
        CertPaths {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            ca: ca.to_owned(),
        }
    }

    /// As `ctl` client credentials.
    pub fn credentials(&self) -> ClientCredentials {
        ClientCredentials::Certificates {
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca: self.ca.clone(),
        }
    }
}

/// The committed test PKI folder (`certs/`).
pub fn certs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("certs")
}

/// The committed test CA (`certs/ca.pem` + `certs/ca.key`) as a [`Pki`] that can issue more
/// certificates (expired ones, other keys under a configured name).
pub fn committed_pki() -> Pki {
    let cert = std::fs::read(certs_dir().join("ca.pem")).expect("certs/ca.pem");
    let key = std::fs::read(certs_dir().join("ca.key")).expect("certs/ca.key");
    Pki {
        ca: Issued {
            cert: openssl::x509::X509::from_pem(&cert).expect("ca.pem is PEM"),
            key: openssl::pkey::PKey::private_key_from_pem(&key).expect("ca.key is PEM"),
        },
    }
}

impl Default for FleetBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl FleetBuilder {
    pub fn new() -> Self {
        FleetBuilder {
            devices: Vec::new(),
            groups: Vec::new(),
            listen: vec!["coaps://127.0.0.1:0".to_owned()],
            privileges_acl: None,
            device_timeout_ms: 3000,
            ack_timeout_ms: None,
            nosec: BTreeMap::new(),
            device_listen: "coaps://127.0.0.1:0".to_owned(),
            gateway_certs: None,
            device_certs: None,
            server_lines: BTreeMap::new(),
            device_lines: BTreeMap::new(),
            device_psk: true,
            limits_lines: Vec::new(),
            proxy_lines: Vec::new(),
            relays: BTreeMap::new(),
            lwm2m_listen: Vec::new(),
            lwm2m_lines: Vec::new(),
            audit_lines: Vec::new(),
        }
    }

    /// Adds a line to the gateway's `[proxy]` table, e.g. `deadline_ms = 1000`.
    pub fn proxy_toml(mut self, line: &str) -> Self {
        self.proxy_lines.push(line.to_owned());
        self
    }

    /// Adds a line to the gateway's `[audit]` table, e.g. `max_records = 3`.
    pub fn audit_toml(mut self, line: &str) -> Self {
        self.audit_lines.push(line.to_owned());
        self
    }

    /// Adds a line to the gateway's `[limits]` table, e.g. `max_privileges = 3`.
    pub fn limits_toml(mut self, line: &str) -> Self {
        self.limits_lines.push(line.to_owned());
        self
    }

    fn sim(&self, id: &str, profile: &'static str) -> DeviceSimConfig {
        DeviceSimConfig {
            id: id.to_owned(),
            listen: self.device_listen.clone(),
            profile: profile.to_owned(),
            psk_identity: self.device_psk.then(|| "gateway".to_owned()),
            psk_key: self.device_psk.then(|| format!("devkey-{id}")),
            psk_key_hex: None,
            cert: self.device_certs.as_ref().map(|c| c.cert.clone()),
            key: self.device_certs.as_ref().map(|c| c.key.clone()),
            ca: self.device_certs.as_ref().map(|c| c.ca.clone()),
            behaviour: Behaviour::Normal,
            access_control: Vec::new(),
            acls: BTreeMap::new(),
            ..DeviceSimConfig::default()
        }
    }

    fn push(&mut self, id: &str, profile: &'static str, policy: Option<&'static str>, kind: Kind) {
        self.devices.push(DeviceSpec {
            id: id.to_owned(),
            profile,
            policy,
            psk_key: format!("devkey-{id}"),
            psk: self.device_psk,
            kind,
        });
    }

    /// An LwM2M device (policy `owner`) with these AC instances, over DTLS-PSK.
    pub fn lwm2m(self, id: &str, access_control: Vec<AcInstance>) -> Self {
        self.lwm2m_with(id, None, Behaviour::Normal, access_control)
    }

    /// An LwM2M device with an explicit policy and behaviour.
    pub fn lwm2m_with(
        mut self,
        id: &str,
        policy: Option<&'static str>,
        behaviour: Behaviour,
        access_control: Vec<AcInstance>,
    ) -> Self {
        let mut cfg = self.sim(id, "lwm2m");
        cfg.behaviour = behaviour;
        cfg.access_control = access_control;
        self.push(id, "lwm2m", policy, Kind::Simulated(Box::new(cfg)));
        self
    }

    /// An LwM2M device (policy `owner`) whose simulator config `adjust` changes (resources,
    /// slowness…).
    pub fn lwm2m_adjusted(
        mut self,
        id: &str,
        access_control: Vec<AcInstance>,
        adjust: impl FnOnce(&mut DeviceSimConfig),
    ) -> Self {
        let mut cfg = self.sim(id, "lwm2m");
        cfg.access_control = access_control;
        adjust(&mut cfg);
        self.push(id, "lwm2m", None, Kind::Simulated(Box::new(cfg)));
        self
    }

    /// A DM device (policy `replace`) with these node ACLs (path → ACL string).
    pub fn dm(self, id: &str, acls: &[(&str, &str)]) -> Self {
        self.dm_with(id, None, Behaviour::Normal, acls)
    }

    pub fn dm_with(
        mut self,
        id: &str,
        policy: Option<&'static str>,
        behaviour: Behaviour,
        acls: &[(&str, &str)],
    ) -> Self {
        let mut cfg = self.sim(id, "dm");
        cfg.behaviour = behaviour;
        cfg.acls = acls
            .iter()
            .map(|(p, a)| ((*p).to_owned(), (*a).to_owned()))
            .collect();
        self.push(id, "dm", policy, Kind::Simulated(Box::new(cfg)));
        self
    }

    /// An LwM2M device (policy `owner`) that registers with the gateway's first
    /// `[[lwm2m.listen]]` listener over DTLS-PSK (identity = its id), as a real client would.
    pub fn registering(self, id: &str, access_control: Vec<AcInstance>) -> Self {
        self.registering_with(id, &[0], access_control, |_| {})
    }

    /// A registering device on the listeners `accounts` (indices into
    /// [`lwm2m_listen`](Self::lwm2m_listen)); `adjust` changes its simulator config
    /// (lifetime, queue mode, LwM2M version…). Over `coap://` listeners it is a NoSec device.
    pub fn registering_with(
        mut self,
        id: &str,
        accounts: &[usize],
        access_control: Vec<AcInstance>,
        adjust: impl FnOnce(&mut DeviceSimConfig),
    ) -> Self {
        let mut cfg = DeviceSimConfig {
            id: id.to_owned(),
            profile: "lwm2m".to_owned(),
            psk_identity: Some(id.to_owned()),
            psk_key: Some(format!("devkey-{id}")),
            access_control,
            ..DeviceSimConfig::default()
        };
        adjust(&mut cfg);
        self.push(
            id,
            "lwm2m",
            None,
            Kind::Registering(Box::new(cfg), accounts.to_vec()),
        );
        self
    }

    /// Replaces the `[[lwm2m.listen]]` listeners: scheme and account (`None`: the gateway's
    /// own account). Ports are chosen when the fleet starts and kept across restarts.
    pub fn lwm2m_listen(mut self, listeners: &[(Scheme, Option<&'static str>)]) -> Self {
        self.lwm2m_listen = listeners.to_vec();
        self
    }

    /// A line of the gateway's `[lwm2m]` table (`queue_awake_s = 1`).
    pub fn lwm2m_toml(mut self, line: &str) -> Self {
        self.lwm2m_lines.push(line.to_owned());
        self
    }

    /// An LwM2M device whose URI points at a port nobody listens on.
    pub fn dead(mut self, id: &str, scheme: Scheme) -> Self {
        self.push(id, "lwm2m", None, Kind::Dead(scheme));
        self
    }

    pub fn group(mut self, id: &str, members: &[&str]) -> Self {
        self.groups.push((
            id.to_owned(),
            members.iter().map(|m| (*m).to_owned()).collect(),
        ));
        self
    }

    /// Replaces the gateway's listeners (default: one `coaps://127.0.0.1:0`).
    pub fn listen(mut self, uris: &[&str]) -> Self {
        self.listen = uris.iter().map(|u| (*u).to_owned()).collect();
        self
    }

    /// Where the simulated devices added after this call listen, e.g. `coaps://[::1]:0`.
    pub fn device_listen(mut self, uri: &str) -> Self {
        self.device_listen = uri.to_owned();
        self
    }

    pub fn privileges_acl(mut self, acl: &str) -> Self {
        self.privileges_acl = Some(acl.to_owned());
        self
    }

    pub fn device_timeout_ms(mut self, ms: u64) -> Self {
        self.device_timeout_ms = ms;
        self
    }

    pub fn ack_timeout_ms(mut self, ms: u64) -> Self {
        self.ack_timeout_ms = Some(ms);
        self
    }

    /// Lets server `server` (`"ServerA"`/`"ServerB"`) in over NoSec from `address`.
    pub fn nosec(mut self, server: &'static str, address: &str) -> Self {
        self.nosec.insert(server, address.to_owned());
        self
    }

    /// The gateway's `cert`, `key` and `ca` (needed for `coaps+tcp://` listeners, server
    /// certificate rules and `coaps+tcp://` devices without their own files).
    pub fn gateway_certs(mut self, certs: CertPaths) -> Self {
        self.gateway_certs = Some(certs);
        self
    }

    /// Certificate, key and CA of the simulated devices added after this call (what a
    /// `coaps+tcp://` device presents, and the CA it verifies the gateway with).
    pub fn device_certs(mut self, certs: Option<CertPaths>) -> Self {
        self.device_certs = certs;
        self
    }

    /// Whether the simulated devices added after this call have DTLS PSK keys (default
    /// `true`). With `false` (and [`device_certs`](Self::device_certs) set) a `coaps://`
    /// device serves DTLS-X.509 only, and its gateway entry has no `psk_identity`/`psk_key`,
    /// so the gateway reads it over DTLS-X.509.
    pub fn device_psk(mut self, on: bool) -> Self {
        self.device_psk = on;
        self
    }

    /// Adds a raw TOML line (e.g. `cert_match = "san-dns:serverA.example"`) to a server entry.
    pub fn server_toml(mut self, server: &'static str, line: &str) -> Self {
        self.server_lines
            .entry(server)
            .or_default()
            .push(line.to_owned());
        self
    }

    /// Adds a raw TOML line (e.g. `cert_match = "san-dns:devA.example"`) to a device entry.
    pub fn device_toml(mut self, device: &str, line: &str) -> Self {
        self.device_lines
            .entry(device.to_owned())
            .or_default()
            .push(line.to_owned());
        self
    }

    /// Puts device `id` behind a [`relay::Relay`] with this behaviour: the gateway's entry
    /// names the relay's address, the relay forwards to the device.
    pub fn relay(mut self, id: &str, link: relay::LinkConfig) -> Self {
        self.relays.insert(id.to_owned(), link);
        self
    }

    /// Starts every device, writes the gateway config naming them and starts the gateway.
    pub async fn start(self) -> Fleet {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("privgw.redb");
        let mut devices = Vec::new();
        let mut registering = Vec::new();
        let mut relays = Vec::new();
        let mut uris = Vec::new();
        for spec in &self.devices {
            let uri = match &spec.kind {
                Kind::Registering(..) => EndpointUri {
                    scheme: Scheme::Coaps,
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                },
                Kind::Simulated(cfg) => {
                    let dev = RunningDevice::start(cfg).await.expect("device starts");
                    let mut uri = dev.uri();
                    devices.push((spec.id.clone(), dev));
                    if let Some(link) = self.relays.get(&spec.id) {
                        let r = relay::Relay::start(uri.addr, link.clone())
                            .await
                            .expect("relay starts");
                        uri.addr = r.addr();
                        relays.push((spec.id.clone(), r));
                    }
                    uri
                }
                Kind::Dead(scheme) => EndpointUri {
                    scheme: *scheme,
                    addr: unused_udp_addr(),
                },
            };
            uris.push(uri);
        }
        let lwm2m_uris = self.lwm2m_uris();
        let config_text = self.config_text(&store, &uris, &lwm2m_uris);
        let gateway = start_gateway(&config_text).await;
        for spec in &self.devices {
            let Kind::Registering(cfg, accounts) = &spec.kind else {
                continue;
            };
            if accounts.is_empty() {
                continue; // Configured, never started: a device that is not registered.
            }
            let mut cfg = (**cfg).clone();
            cfg.register = accounts
                .iter()
                .map(|&i| lwm2m_uris[i].to_string())
                .collect();
            let dev = RunningDevice::start(&cfg).await.expect("device starts");
            assert!(
                dev.wait_registered(Duration::from_secs(10)).await,
                "{} did not register with {:?}",
                spec.id,
                cfg.register
            );
            devices.push((spec.id.clone(), dev));
            registering.push((spec.id.clone(), cfg));
        }
        Fleet {
            gateway: Some(gateway),
            devices,
            registering,
            relays,
            device_uris: self
                .devices
                .iter()
                .map(|d| d.id.clone())
                .zip(uris)
                .collect(),
            config_text,
            _dir: dir,
        }
    }

    /// The `[[lwm2m.listen]]` URIs, on free loopback ports (kept across gateway restarts).
    fn lwm2m_uris(&self) -> Vec<EndpointUri> {
        let mut listen = self.lwm2m_listen.clone();
        let registers = self
            .devices
            .iter()
            .any(|d| matches!(d.kind, Kind::Registering(..)));
        if listen.is_empty() && registers {
            listen.push((Scheme::Coaps, None));
        }
        listen
            .iter()
            .map(|(scheme, _)| EndpointUri {
                scheme: *scheme,
                addr: unused_udp_addr(),
            })
            .collect()
    }

    fn config_text(
        &self,
        store: &std::path::Path,
        uris: &[EndpointUri],
        lwm2m_uris: &[EndpointUri],
    ) -> String {
        let listen: Vec<String> = self.listen.iter().map(|l| format!("{l:?}")).collect();
        let mut toml = format!(
            "[gateway]\nlisten = [{}]\nstore = {:?}\ndevice_timeout_ms = {}\n",
            listen.join(", "),
            store,
            self.device_timeout_ms
        );
        if let Some(ms) = self.ack_timeout_ms {
            writeln!(toml, "ack_timeout_ms = {ms}").unwrap();
        }
        if let Some(acl) = &self.privileges_acl {
            writeln!(toml, "privileges_acl = {acl:?}").unwrap();
        }
        if let Some(c) = &self.gateway_certs {
            writeln!(
                toml,
                "cert = {:?}\nkey = {:?}\nca = {:?}",
                c.cert, c.key, c.ca
            )
            .unwrap();
        }
        for (id, ssid, identity, key) in [
            ("ServerA", SSID_A, "serverA", "secretA"),
            ("ServerB", SSID_B, "serverB", "secretB"),
        ] {
            write!(
                toml,
                "\n[[servers]]\nid = \"{id}\"\nssid = {ssid}\npsk_identity = \"{identity}\"\npsk_key = \"{key}\"\n"
            )
            .unwrap();
            if let Some(addr) = self.nosec.get(id) {
                writeln!(toml, "nosec_address = {addr:?}").unwrap();
            }
            for line in self.server_lines.get(id).into_iter().flatten() {
                writeln!(toml, "{line}").unwrap();
            }
        }
        if !self.lwm2m_lines.is_empty() {
            writeln!(toml, "\n[lwm2m]\n{}", self.lwm2m_lines.join("\n")).unwrap();
        }
        for (i, uri) in lwm2m_uris.iter().enumerate() {
            write!(toml, "\n[[lwm2m.listen]]\nuri = \"{uri}\"\n").unwrap();
            if let Some(Some(account)) = self.lwm2m_listen.get(i).map(|(_, a)| a) {
                writeln!(toml, "account = \"{account}\"").unwrap();
            }
        }
        for (spec, uri) in self.devices.iter().zip(uris) {
            if let Kind::Registering(cfg, accounts) = &spec.kind {
                write!(
                    toml,
                    "\n[[devices]]\nid = \"{}\"\nregisters = true\nprofile = \"lwm2m\"\n",
                    spec.id
                )
                .unwrap();
                if let Some(endpoint) = &cfg.endpoint {
                    writeln!(toml, "endpoint = {endpoint:?}").unwrap();
                }
                let secured = accounts.is_empty()
                    || accounts
                        .iter()
                        .any(|&a| lwm2m_uris[a].scheme == Scheme::Coaps);
                match (&cfg.psk_identity, &cfg.psk_key) {
                    // A certificate device: its cert_match comes from device_toml.
                    _ if cfg.cert.is_some() => {}
                    (Some(identity), Some(key)) if secured => {
                        writeln!(toml, "psk_identity = {identity:?}\npsk_key = {key:?}").unwrap()
                    }
                    _ => writeln!(toml, "nosec = true").unwrap(),
                }
                for line in self.device_lines.get(&spec.id).into_iter().flatten() {
                    writeln!(toml, "{line}").unwrap();
                }
                continue;
            }
            write!(
                toml,
                "\n[[devices]]\nid = \"{}\"\nuri = \"{uri}\"\nprofile = \"{}\"\n",
                spec.id, spec.profile
            )
            .unwrap();
            if let Some(p) = spec.policy {
                writeln!(toml, "policy = \"{p}\"").unwrap();
            }
            if uri.scheme == Scheme::Coaps && spec.psk {
                writeln!(
                    toml,
                    "psk_identity = \"gateway\"\npsk_key = \"{}\"",
                    spec.psk_key
                )
                .unwrap();
            }
            for line in self.device_lines.get(&spec.id).into_iter().flatten() {
                writeln!(toml, "{line}").unwrap();
            }
        }
        for (id, members) in &self.groups {
            let members: Vec<String> = members.iter().map(|m| format!("{m:?}")).collect();
            write!(
                toml,
                "\n[[groups]]\nid = \"{id}\"\nmembers = [{}]\n",
                members.join(", ")
            )
            .unwrap();
        }
        if !self.proxy_lines.is_empty() {
            writeln!(toml, "\n[proxy]\n{}", self.proxy_lines.join("\n")).unwrap();
        }
        if !self.limits_lines.is_empty() {
            writeln!(toml, "\n[limits]\n{}", self.limits_lines.join("\n")).unwrap();
        }
        if !self.audit_lines.is_empty() {
            writeln!(toml, "\n[audit]\n{}", self.audit_lines.join("\n")).unwrap();
        }
        toml
    }
}

/// A loopback UDP address nobody listens on (bound, read, released).
pub fn unused_udp_addr() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("local addr")
}

async fn start_gateway(config_text: &str) -> Gateway {
    let config = Config::parse(config_text)
        .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{config_text}"));
    Gateway::start(config).await.expect("gateway starts")
}

/// Devices and a gateway, running.
pub struct Fleet {
    gateway: Option<Gateway>,
    devices: Vec<(String, RunningDevice)>,
    /// The simulator config of each registering device, to start it again.
    registering: Vec<(String, DeviceSimConfig)>,
    relays: Vec<(String, relay::Relay)>,
    device_uris: Vec<(String, EndpointUri)>,
    config_text: String,
    _dir: tempfile::TempDir,
}

impl Fleet {
    pub fn builder() -> FleetBuilder {
        FleetBuilder::new()
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("gateway running")
    }

    /// The gateway's listener with scheme `scheme` (the first one if several).
    pub fn uri(&self, scheme: Scheme) -> EndpointUri {
        *self
            .gateway()
            .listeners()
            .iter()
            .find(|l| l.scheme == scheme)
            .expect("a listener with that scheme")
    }

    /// The gateway's `[[lwm2m.listen]]` listeners, in the builder's order.
    pub fn lwm2m_uri(&self, index: usize) -> EndpointUri {
        self.gateway().lwm2m_listeners()[index]
    }

    /// The gateway's first `coaps://` listener.
    pub fn coaps(&self) -> EndpointUri {
        self.uri(Scheme::Coaps)
    }

    pub fn device(&self, id: &str) -> &RunningDevice {
        &self
            .devices
            .iter()
            .find(|(d, _)| d == id)
            .unwrap_or_else(|| panic!("no simulated device {id}"))
            .1
    }

    /// The relay in front of device `id` (see [`FleetBuilder::relay`]).
    pub fn relay(&self, id: &str) -> &relay::Relay {
        &self
            .relays
            .iter()
            .find(|(d, _)| d == id)
            .unwrap_or_else(|| panic!("no relay in front of {id}"))
            .1
    }

    /// Requests served by every simulated device, by DeviceID.
    pub fn requests(&self) -> BTreeMap<String, u64> {
        self.devices
            .iter()
            .map(|(id, d)| (id.clone(), d.requests()))
            .collect()
    }

    /// Requests served by all simulated devices together.
    pub fn total_requests(&self) -> u64 {
        self.devices.iter().map(|(_, d)| d.requests()).sum()
    }

    pub fn device_uri(&self, id: &str) -> EndpointUri {
        self.device_uris
            .iter()
            .find(|(d, _)| d == id)
            .map(|(_, u)| *u)
            .unwrap_or_else(|| panic!("no device {id}"))
    }

    /// Server A over DTLS-PSK.
    pub async fn server_a(&self) -> GatewayClient {
        connect(self.coaps(), "serverA", "secretA").await
    }

    /// Server B over DTLS-PSK.
    pub async fn server_b(&self) -> GatewayClient {
        connect(self.coaps(), "serverB", "secretB").await
    }

    /// The gateway's first `coap+tcp://` listener.
    pub fn coap_tcp(&self) -> EndpointUri {
        self.uri(Scheme::CoapTcp)
    }

    /// The gateway's first `coaps+tcp://` listener.
    pub fn coaps_tcp(&self) -> EndpointUri {
        self.uri(Scheme::CoapsTcp)
    }

    /// A client on the gateway's `coaps+tcp://` listener presenting `certs`; panics if the
    /// connection cannot be set up.
    pub async fn tls_client(&self, certs: &CertPaths) -> GatewayClient {
        let uri = self.coaps_tcp();
        GatewayClient::connect_with(uri, certs.credentials())
            .await
            .unwrap_or_else(|e| panic!("{} cannot connect to {uri}: {e}", certs.cert.display()))
    }

    /// A DTLS-X.509 client on the gateway's first `coaps://` listener presenting `certs`;
    /// panics if the handshake fails.
    pub async fn dtls_client(&self, certs: &CertPaths) -> GatewayClient {
        let uri = self.coaps();
        GatewayClient::connect_with(uri, certs.credentials())
            .await
            .unwrap_or_else(|e| panic!("{} cannot connect to {uri}: {e}", certs.cert.display()))
    }

    /// A client on the gateway's `coap+tcp://` listener (NoSec).
    pub async fn tcp_client(&self) -> GatewayClient {
        let uri = self.coap_tcp();
        GatewayClient::connect_with(uri, ClientCredentials::None)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {uri}: {e}"))
    }

    /// The gateway config this fleet started with.
    pub fn config_text(&self) -> &str {
        &self.config_text
    }

    /// Stops the gateway and starts a new one on the same config and store file.
    pub async fn restart_gateway(&mut self) {
        self.try_restart_gateway()
            .await
            .expect("the gateway restarts on its store");
    }

    /// Like [`restart_gateway`](Self::restart_gateway), returning the start error.
    pub async fn try_restart_gateway(&mut self) -> Result<(), GatewayError> {
        if let Some(g) = self.gateway.take() {
            g.stop().await;
        }
        let config = Config::parse(&self.config_text).expect("valid config");
        self.gateway = Some(Gateway::start(config).await?);
        Ok(())
    }

    /// Stops one simulated device (a registering one sends no De-register, like real
    /// clients on SIGTERM).
    pub async fn stop_device(&mut self, id: &str) {
        if let Some(i) = self.devices.iter().position(|(d, _)| d == id) {
            self.devices.remove(i).1.stop().await;
        }
    }

    /// Stops registering device `id` (no De-register, like a reboot) and starts it again on
    /// its config: it registers afresh, from a new port.
    pub async fn reboot_registering_device(&mut self, id: &str) {
        let cfg = self
            .registering
            .iter()
            .find(|(d, _)| d == id)
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| panic!("{id} is no registering device"));
        self.stop_device(id).await;
        let dev = RunningDevice::start(&cfg)
            .await
            .expect("device starts again");
        assert!(
            dev.wait_registered(Duration::from_secs(10)).await,
            "{id} registered again"
        );
        self.devices.push((id.to_owned(), dev));
    }

    pub async fn stop(mut self) {
        if let Some(g) = self.gateway.take() {
            g.stop().await;
        }
        for (_, d) in self.devices.drain(..) {
            d.stop().await;
        }
    }
}

/// A DTLS-PSK client; panics if the handshake fails.
pub async fn connect(uri: EndpointUri, identity: &str, key: &str) -> GatewayClient {
    GatewayClient::connect(
        uri,
        Some((identity.as_bytes().to_vec(), key.as_bytes().to_vec())),
    )
    .await
    .unwrap_or_else(|e| panic!("{identity} cannot connect to {uri}: {e}"))
}

/// GET a path and return the reply (panics on transport errors).
pub async fn get(client: &mut GatewayClient, path: &str) -> Reply {
    client
        .request(RequestType::Get, path, None, None, &[])
        .await
        .expect("GET answered")
}

/// POST a privilege (DM Add); panics on transport errors.
pub async fn add(
    client: &mut GatewayClient,
    target: &str,
    target_type: &str,
    uri: &str,
    acl: &str,
) -> Reply {
    client
        .add(target, target_type, uri, acl)
        .await
        .expect("Add answered")
}

/// PUT a whole privilege node with optional preconditions.
pub async fn put(
    client: &mut GatewayClient,
    name: &str,
    body: &Value,
    options: &[(CoapOption, Vec<u8>)],
) -> Reply {
    client
        .request(
            RequestType::Put,
            &format!("/GwConfig/Privileges/{name}"),
            Some((60, body.to_cbor())),
            None,
            options,
        )
        .await
        .expect("PUT answered")
}

/// DELETE a privilege node; panics on transport errors.
pub async fn delete(client: &mut GatewayClient, name: &str) -> Reply {
    client
        .request(
            RequestType::Delete,
            &format!("/GwConfig/Privileges/{name}"),
            None,
            None,
            &[],
        )
        .await
        .expect("DELETE answered")
}

/// The names of the committed privileges (GET /GwConfig/Privileges).
pub async fn privilege_names(client: &mut GatewayClient) -> Vec<String> {
    let reply = get(client, "/GwConfig/Privileges").await;
    assert_eq!(reply.code, "2.05", "list: {}", reply.render());
    match reply.document {
        Some(Value::Map(m)) => m.into_iter().map(|(k, _)| k).collect(),
        other => panic!("list is not a map: {other:?}"),
    }
}

/// The `Status` of an error body.
pub fn status(reply: &Reply) -> Option<i64> {
    reply.document.as_ref()?.get("Status")?.as_int()
}

/// `(DeviceID, Reason)` of every `Failed` entry, in order.
pub fn failures(reply: &Reply) -> Vec<(String, String)> {
    reply
        .document
        .as_ref()
        .and_then(|d| d.get("Failed"))
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|f| {
                    (
                        f.get("DeviceID")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_owned(),
                        f.get("Reason")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A text leaf of a document.
pub fn text<'a>(doc: &'a Value, key: &str) -> Option<&'a str> {
    doc.get(key).and_then(Value::as_str)
}

/// Pairs for [`failures`] comparisons.
pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Certificates minted per test, and assertions shared by the mixed-transport fleets
// ---------------------------------------------------------------------------------------

/// Both loopback addresses, as IP SANs of minted device certificates.
pub const LOOPBACK: [std::net::IpAddr; 2] = [
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
];

/// Writes `issued` as `<dir>/<name>.pem/.key` and returns the paths with `certs/ca.pem` as
/// the CA that verifies the gateway (or, for a device, the gateway's client certificate).
pub fn mint(dir: &Path, name: &str, issued: &Issued) -> CertPaths {
    issued.write(dir, name).expect("write minted certificate");
    CertPaths::in_dir(dir, name, &certs_dir().join("ca.pem"))
}

/// The hex SHA-256 of the SubjectPublicKeyInfo of the PEM certificate `pem_file`.
pub fn spki_of(pem_file: &Path) -> String {
    let pem = std::fs::read(pem_file).unwrap();
    let cert = openssl::x509::X509::from_pem(&pem).unwrap();
    privgw::transport::cert::hex(
        &privgw::transport::cert::CertIdentity::from_x509(&cert)
            .unwrap()
            .spki_sha256,
    )
}

/// The access control of device `id` in a mixed fleet: /3/0 is A's; /4/0, /5/0 and /6/0
/// are B's on `odd[0]`, `odd[1]` and `odd[2]` respectively (A's elsewhere).
pub fn one_odd_device_per_object(id: &str, odd: [&str; 3]) -> Vec<AcInstance> {
    let owner = |odd: &str| if id == odd { SSID_B } else { SSID_A };
    vec![
        ac(0, 3, 0, SSID_A),
        ac(1, 4, 0, owner(odd[0])),
        ac(2, 5, 0, owner(odd[1])),
        ac(3, 6, 0, owner(odd[2])),
    ]
}

/// For each of `ids`: a Device Add of /3/0 by `a` is 2.01 with only that device Verified,
/// Grantor ServerA, TargetID the device, readable back (2.05); only that device was asked.
pub async fn each_device_add_is_2_01_verified_only_that_device(
    fleet: &Fleet,
    a: &mut GatewayClient,
    ids: &[&str],
) {
    for &id in ids {
        let before = fleet.requests();
        let reply = add(a, id, "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{id}: {}", reply.render());
        assert_eq!(reply.verified_ids(), [id]);
        assert!(reply.failed_ids().is_empty(), "{}", reply.render());
        let doc = reply.document.as_ref().expect("CBOR body");
        assert_eq!(
            text(doc, "Grantor"),
            Some("ServerA"),
            "A proved by its cert"
        );
        assert_eq!(text(doc, "TargetID"), Some(id));
        let location = reply.location.clone().expect("Location-Path");
        let stored = get(a, &location).await;
        assert_eq!(stored.code, "2.05", "{}", stored.render());
        // Only the target was asked.
        for (other, n) in fleet.requests() {
            let asked = n - before[&other];
            if other == id {
                assert!(asked >= 1, "{id} was not asked");
            } else {
                assert_eq!(asked, 0, "{other} was asked for {id}'s write");
            }
        }
    }
}

/// A Device Add of `uri` on `id` by `a` is 4.03 (Status 425) with `id` denied and no
/// Location; `id` was asked, devA/devB/devC other than `id` were not; nothing is stored.
pub async fn device_add_is_4_03_denied(fleet: &Fleet, a: &mut GatewayClient, id: &str, uri: &str) {
    let reply = add(a, id, "Device", uri, "Get=ServerB").await;
    assert_eq!(reply.code, "4.03", "{}", reply.render());
    assert_eq!(status(&reply), Some(425));
    assert_eq!(failures(&reply), pairs(&[(id, "denied")]));
    assert!(reply.location.is_none());
    assert!(fleet.device(id).requests() >= 1);
    for other in ["devA", "devB", "devC"] {
        if other != id {
            assert_eq!(fleet.device(other).requests(), 0);
        }
    }
    assert!(privilege_names(a).await.is_empty());
}

/// A Group Add of G1 `uri` by `a` is 4.03 (Status 425) naming exactly `odd` denied and no
/// device Verified; every member was asked, not just until the first failure. Returns the
/// reply for further checks.
pub async fn group_add_is_4_03_naming_only(
    fleet: &Fleet,
    a: &mut GatewayClient,
    uri: &str,
    odd: &str,
) -> Reply {
    let before = fleet.requests();
    let reply = add(a, "G1", "Group", uri, "Get=ServerB").await;
    assert_eq!(reply.code, "4.03", "{uri}: {}", reply.render());
    assert_eq!(status(&reply), Some(425));
    assert_eq!(failures(&reply), pairs(&[(odd, "denied")]), "{uri}");
    assert!(reply.verified_ids().is_empty(), "{}", reply.render());
    for (id, n) in fleet.requests() {
        assert!(n > before[&id], "{id} was not asked for {uri}");
    }
    reply
}

/// A Group Add of G1 /3/0 by `a` is 2.01 with devA, devB and devC Verified and a Location;
/// every device was asked; one privilege is stored. Returns the reply.
pub async fn group_add_verifies_all_three(fleet: &Fleet, a: &mut GatewayClient) -> Reply {
    let reply = add(a, "G1", "Group", "/3/0", "Get=ServerB&Replace=ServerB").await;
    assert_eq!(reply.code, "2.01", "{}", reply.render());
    assert!(reply.location.is_some());
    assert_eq!(reply.verified_ids(), ["devA", "devB", "devC"]);
    for (id, n) in fleet.requests() {
        assert!(n >= 1, "{id} was not asked");
    }
    assert_eq!(privilege_names(a).await.len(), 1);
    reply
}

/// devT fails with `secure-channel` (5.02, Status 500) alone and answered nothing; in the
/// group (G1 of devT and the healthy devB), devB was read but nothing was committed.
/// Returns the group reply.
pub async fn device_is_secure_channel_failure(fleet: &Fleet, a: &mut GatewayClient) -> Reply {
    let reply = add(a, "devT", "Device", "/3/0", "Get=ServerB").await;
    assert_eq!(reply.code, "5.02", "{}", reply.render());
    assert_eq!(status(&reply), Some(500));
    assert_eq!(failures(&reply), pairs(&[("devT", "secure-channel")]));
    let group = add(a, "G1", "Group", "/3/0", "Get=ServerB").await;
    assert_eq!(group.code, "5.02", "{}", group.render());
    assert_eq!(failures(&group), pairs(&[("devT", "secure-channel")]));
    assert_eq!(
        fleet.device("devT").requests(),
        0,
        "no request on a bad channel"
    );
    assert!(fleet.device("devB").requests() >= 1);
    assert!(privilege_names(a).await.is_empty());
    group
}

/// The transport a certificate client comes in over: `coaps+tcp://` (TLS) or the first
/// `coaps://` listener (DTLS-X.509).
#[derive(Clone, Copy, Debug)]
pub enum CertTransport {
    Tls,
    Dtls,
}

impl Fleet {
    /// A client presenting `certs` over `transport` ([`Fleet::tls_client`] or
    /// [`Fleet::dtls_client`]); panics if the connection cannot be set up.
    pub async fn cert_client(&self, transport: CertTransport, certs: &CertPaths) -> GatewayClient {
        match transport {
            CertTransport::Tls => self.tls_client(certs).await,
            CertTransport::Dtls => self.dtls_client(certs).await,
        }
    }

    /// A client whose certificate verifies but names no configured server: the gateway
    /// closes its channel right after the handshake, so a GET gets no answer at all (no
    /// session, no 4.01). Returns the client's error; panics on an answer, or if the channel
    /// stays open for 20 s.
    pub async fn closed_after_handshake(
        &self,
        transport: CertTransport,
        credentials: &ClientCredentials,
    ) -> String {
        let uri = match transport {
            CertTransport::Tls => self.coaps_tcp(),
            CertTransport::Dtls => self.coaps(),
        };
        let attempt = async {
            let mut c = GatewayClient::connect_with(uri, credentials.clone())
                .await
                .map_err(|e| format!("connect: {e}"))?;
            c.request(RequestType::Get, "/GwConfig/Privileges", None, None, &[])
                .await
                .map_err(|e| format!("GET: {e}"))
        };
        match tokio::time::timeout(Duration::from_secs(20), attempt).await {
            Ok(Err(why)) => why,
            Ok(Ok(reply)) => panic!("answered {}: {}", reply.code, reply.render()),
            Err(_) => panic!("{uri}: neither answered nor closed within 20 s"),
        }
    }
}

/// Server A's certificates from two CAs the gateway does not trust, minted into `dir`: one
/// of another name (unknown issuer), and one that copies the trusted CA's name with another
/// key (the signature does not verify). `(CA name, credentials)` each, in files of their
/// own.
pub fn server_a_from_unknown_cas(dir: &Path) -> Vec<(&'static str, ClientCredentials)> {
    ["foreign CA", "privgw test CA"]
        .into_iter()
        .enumerate()
        .map(|(i, ca_name)| {
            let impostor = Pki::new_ca(ca_name)
                .unwrap()
                .issue("serverA", &["serverA.example"], &[], &[], Profile::Both, 30)
                .unwrap();
            let paths = mint(dir, &format!("impostor-{i}"), &impostor);
            (ca_name, paths.credentials())
        })
        .collect()
}

/// An expired server A certificate from the trusted CA, minted into `dir`.
pub fn expired_server_a(dir: &Path) -> ClientCredentials {
    let expired = committed_pki()
        .issue("serverA", &["serverA.example"], &[], &[], Profile::Both, -1)
        .unwrap();
    mint(dir, "expired", &expired).credentials()
}

/// A server A certificate from the trusted CA with the same names but another key than the
/// one `pin` names, minted into `dir` as `name`.
pub fn rekeyed_server_a(dir: &Path, name: &str, pin: &str) -> CertPaths {
    let other_key = committed_pki()
        .issue("serverA", &["serverA.example"], &[], &[], Profile::Both, 30)
        .unwrap();
    assert_ne!(other_key.spki_sha256_hex().unwrap(), pin);
    mint(dir, name, &other_key)
}

/// serverC (issued by the trusted CA, named by no server entry) over `transport`: GET and a
/// group Add are both 4.01. Returns the Add's reply.
pub async fn unconfigured_server_is_closed(fleet: &Fleet, transport: CertTransport) -> String {
    fleet
        .closed_after_handshake(transport, &CertPaths::committed("serverC").credentials())
        .await
}

/// Issue 6 item 1 over `transport`: ServerB's own CA (see [`server_b_with_own_ca`], added to
/// `b` with `dir`) issues a certificate named `serverA.example`. It chains to an anchor the
/// gateway trusts, but not to one trusted *for ServerA*, so it is nobody: its channel is
/// closed after the handshake. The same CA still vouches for ServerB (GET 2.05). Returns the started
/// fleet; the caller checks that the gateway is unharmed.
pub async fn own_ca_vouches_for_its_server_only(
    b: FleetBuilder,
    transport: CertTransport,
    dir: &Path,
) -> Fleet {
    let (builder, b_ca) = server_b_with_own_ca(b, dir);
    let fleet = builder.start().await;
    let impostor = b_ca
        .issue("serverA", &["serverA.example"], &[], &[], Profile::Both, 30)
        .unwrap();
    let fake_a = mint(dir, "fake-serverA", &impostor);
    let why = fleet
        .closed_after_handshake(transport, &fake_a.credentials())
        .await;
    eprintln!("fake ServerA closed: {why}");

    let real_b = b_ca
        .issue("serverB", &["serverB.example"], &[], &[], Profile::Both, 30)
        .unwrap();
    let mut b = fleet
        .cert_client(transport, &mint(dir, "serverB", &real_b))
        .await;
    let reply = get(&mut b, "/GwConfig/Privileges").await;
    assert_eq!(reply.code, "2.05", "{}", reply.render());
    fleet
}

/// A device certificate for devT (`devT.example`, both loopback addresses) from the trusted
/// CA that expired yesterday, minted into `dir`.
pub fn expired_dev_t(dir: &Path) -> CertPaths {
    let expired = committed_pki()
        .issue(
            "devT",
            &["devT.example", "localhost"],
            &[],
            &LOOPBACK,
            Profile::Both,
            -1,
        )
        .unwrap();
    mint(dir, "devT", &expired)
}

/// A device certificate for devT (`devT.example`, both loopback addresses) from a CA the
/// gateway does not trust, minted into `dir` (the device still trusts the gateway through
/// `certs/ca.pem`).
pub fn dev_t_from_a_foreign_ca(dir: &Path) -> CertPaths {
    let foreign = Pki::new_ca("foreign CA").unwrap();
    let cert = foreign
        .issue("devT", &["devT.example"], &[], &LOOPBACK, Profile::Both, 30)
        .unwrap();
    mint(dir, "devT", &cert)
}

/// A group Add on G1 (devT and devB) /3/0 is 2.01 with both devices verified. Returns the
/// reply.
pub async fn group_add_verifies_dev_b_and_dev_t(a: &mut GatewayClient) -> Reply {
    let reply = add(a, "G1", "Group", "/3/0", "Get=ServerB").await;
    assert_eq!(reply.code, "2.01", "{}", reply.render());
    assert_eq!(reply.verified_ids(), ["devB", "devT"]);
    reply
}

/// A CA that only ServerB trusts (its own `ca`, written to `dir`), with ServerB known by
/// `san-dns:serverB.example`.
pub fn server_b_with_own_ca(b: FleetBuilder, dir: &Path) -> (FleetBuilder, Pki) {
    let own = Pki::new_ca("ServerB's own CA").unwrap();
    let path = dir.join("serverB-ca.pem");
    std::fs::write(&path, own.ca.cert_pem().unwrap()).unwrap();
    let b = b
        .server_toml("ServerB", r#"cert_match = "san-dns:serverB.example""#)
        .server_toml("ServerB", &format!("ca = {path:?}"));
    (b, own)
}

// ---------------------------------------------------------------------------------------
// Raw CoAP over UDP (NoSec listeners)
// ---------------------------------------------------------------------------------------

/// A request of type `t` and `code` with `mid`, `token` and the Uri-Path of `path`.
pub fn request_packet(
    t: MessageType,
    code: RequestType,
    mid: u16,
    token: &[u8],
    path: &str,
) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(t);
    p.header.code = MessageClass::Request(code);
    p.header.message_id = mid;
    p.set_token(token.to_vec());
    coap::set_uri(&mut p, path);
    p
}

/// A POST to /GwConfig/Privileges of type `t` carrying the CBOR Add of
/// `(target, target_type, uri)` with `acl`.
pub fn add_packet(
    t: MessageType,
    mid: u16,
    token: &[u8],
    (target, target_type, uri): (&str, &str, &str),
    acl: &str,
) -> Packet {
    let mut p = request_packet(t, RequestType::Post, mid, token, "/GwConfig/Privileges");
    coap::set_content_format(&mut p, 60);
    p.payload = privgw::cli::ctl::privilege_body(target, target_type, uri, acl).to_cbor();
    p
}

/// A UDP socket on 127.0.0.1 connected to `gateway`.
pub async fn raw_socket(gateway: SocketAddr) -> tokio::net::UdpSocket {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(gateway).await.unwrap();
    socket
}

/// The next datagram on `socket` (within 5 s).
pub async fn recv_datagram(socket: &tokio::net::UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    buf.truncate(n);
    buf
}

/// Sends `p` and decodes the answer (within 5 s).
pub async fn exchange(socket: &tokio::net::UdpSocket, p: &Packet) -> Packet {
    socket.send(&coap::encode(p).unwrap()).await.unwrap();
    coap::decode(&recv_datagram(socket).await).unwrap()
}
