//! The TOML configuration: its keys, their defaults, and validation at start.
//!
//! Everything a user can get wrong is checked here, once, and reported with the key that is
//! wrong and why (`servers[1].ssid: 0 is reserved`). The rest of the gateway works with the
//! validated [`Config`] and never re-checks it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::acl::dm::{DmAcl, DmPolicy};
use crate::acl::lwm2m::Lwm2mPolicy;
use crate::transport::cert::{CertMatch, CertRule};
use crate::transport::dtls::ServerHandshakes;

mod audit;
mod limits;
pub mod lwm2m;
pub mod proxy;
pub use audit::AuditConfig;
pub use limits::Limits;
pub use lwm2m::{Account, DeviceProof, Lwm2mConfig, Lwm2mListen, Reach, Registering};

/// A configuration that failed to load; the message names the key and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: impl Into<String>, problem: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.to_string(),
    }
}

/// URI scheme of a listener or a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `coap://` — plain UDP (NoSec).
    Coap,
    /// `coaps://` — DTLS 1.2 over UDP.
    Coaps,
    /// `coap+tcp://` — CoAP over TCP (RFC 8323), NoSec.
    CoapTcp,
    /// `coaps+tcp://` — CoAP over TLS (RFC 8323), mutual X.509.
    CoapsTcp,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Coap => "coap",
            Scheme::Coaps => "coaps",
            Scheme::CoapTcp => "coap+tcp",
            Scheme::CoapsTcp => "coaps+tcp",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Coap | Scheme::CoapTcp => 5683,
            Scheme::Coaps | Scheme::CoapsTcp => 5684,
        }
    }

    /// Whether the transport is a byte stream (RFC 8323) rather than datagrams.
    pub fn is_stream(self) -> bool {
        matches!(self, Scheme::CoapTcp | Scheme::CoapsTcp)
    }

    /// Whether the channel is secured (DTLS or TLS).
    pub fn is_secure(self) -> bool {
        matches!(self, Scheme::Coaps | Scheme::CoapsTcp)
    }
}

/// `coap://host:port` or `coaps://host:port`, host an IPv4 or bracketed IPv6 literal (or
/// `localhost`). No path: endpoints, not resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointUri {
    pub scheme: Scheme,
    pub addr: SocketAddr,
}

impl fmt::Display for EndpointUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.addr)
    }
}

impl FromStr for EndpointUri {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| {
            format!("'{s}' is not a URI (expected coap://, coaps://, coap+tcp:// or coaps+tcp://)")
        })?;
        let scheme = match scheme {
            "coap" => Scheme::Coap,
            "coaps" => Scheme::Coaps,
            "coap+tcp" => Scheme::CoapTcp,
            "coaps+tcp" => Scheme::CoapsTcp,
            other => return Err(format!("'{s}': unknown scheme '{other}'")),
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') {
            return Err(format!("'{s}': an endpoint URI takes no path"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("'{s}': unterminated IPv6 literal"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("'{s}': expected ':' after ']'"))?,
                ),
            };
            let ip: Ipv6Addr = host
                .parse()
                .map_err(|_| format!("'{s}': '{host}' is not an IPv6 address"))?;
            (IpAddr::V6(ip), port)
        } else {
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            let ip = if host == "localhost" {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                host.parse::<Ipv4Addr>()
                    .map(IpAddr::V4)
                    .map_err(|_| format!("'{s}': '{host}' is not an IP address literal"))?
            };
            (ip, port)
        };
        let port = match port {
            None => scheme.default_port(),
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("'{s}': '{p}' is not a port number"))?,
        };
        Ok(EndpointUri {
            scheme,
            addr: SocketAddr::new(host, port),
        })
    }
}

/// How a device's ACL for a URI is read and judged (DESIGN.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Dm(DmPolicy),
    Lwm2m(Lwm2mPolicy),
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Profile::Dm(DmPolicy::Replace) => f.write_str("dm/replace"),
            Profile::Dm(DmPolicy::TndStrict) => f.write_str("dm/tnd-strict"),
            Profile::Lwm2m(Lwm2mPolicy::Owner) => f.write_str("lwm2m/owner"),
            Profile::Lwm2m(Lwm2mPolicy::WriteBit) => f.write_str("lwm2m/write-bit"),
        }
    }
}

/// A pre-shared key: identity and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk {
    pub identity: Vec<u8>,
    pub key: Vec<u8>,
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("Psk")
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .finish_non_exhaustive()
    }
}

/// Certificate material: our certificate and key, and the CA that verifies peers (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// A northbound management server and how its channel identifies it.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// DM ServerID, used in DM ACL strings.
    pub id: String,
    /// LwM2M Short Server ID (1..=65534), used in LwM2M ACLs.
    pub ssid: u16,
    pub psk: Option<Psk>,
    /// NoSec: the source address that identifies this server on `coap://` listeners.
    pub nosec_address: Option<IpAddr>,
    /// Certificate mode: how this server's verified certificate is recognised.
    pub cert_rule: Option<CertRule>,
    /// Extra trust anchor for this server's certificate chain (added to the gateway's CA).
    pub ca: Option<PathBuf>,
}

/// An end device behind the gateway.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub id: String,
    /// The first path segment servers address this device by through the proxy
    /// (`/<prefix>/<path>`); its id unless configured.
    pub prefix: String,
    /// Dialled at a URI, or reached through its registration.
    pub reach: Reach,
    pub profile: Profile,
    /// Credentials the gateway presents to a dialled device on `coaps://` (a registering
    /// device's proof is in [`Reach::Registers`]; these three are then `None`).
    pub psk: Option<Psk>,
    /// Certificate mode towards the device (`coaps://` without PSK, `coaps+tcp://`): what the
    /// gateway presents and which CA verifies the device (device keys, else the gateway's).
    pub certs: Option<CertFiles>,
    /// Optional check of the device's certificate identity.
    pub cert_rule: Option<CertRule>,
}

#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub id: String,
    pub members: Vec<String>,
}

/// Gateway-wide settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: Vec<EndpointUri>,
    /// The redb file holding committed privileges.
    pub store: PathBuf,
    /// The gateway's own DM ACL on the `Privileges` node, checked before anything else.
    pub privileges_acl: DmAcl,
    /// Deadline for one device's ACL read, handshake included. Default 3000 ms.
    pub device_timeout: Duration,
    /// Upper bound on concurrent device reads across all verifications. Default 256.
    pub max_in_flight: usize,
    /// Local address of the southbound socket (default: unspecified address, any port).
    pub south_bind: Option<SocketAddr>,
    /// CoAP ACK_TIMEOUT towards devices, in ms (RFC 7252 default 2000).
    pub ack_timeout: Duration,
    /// NSTART towards one device: our exchanges in flight on its session (RFC 7252 §4.7,
    /// default 1; more wait in a queue).
    pub nstart: u32,
    /// The gateway's own certificate, key and trust anchor for X.509 on DTLS and TLS.
    pub certs: Option<CertFiles>,
    /// Who runs the `coaps://` listeners' PSK handshakes (`dtls_handshakes`, default
    /// `lean`; `openssl` puts OpenSSL back in charge of every handshake).
    pub dtls_handshakes: ServerHandshakes,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub servers: Vec<ServerConfig>,
    pub devices: Vec<DeviceConfig>,
    pub groups: Vec<GroupConfig>,
    /// `[lwm2m]`: where devices register.
    pub lwm2m: Lwm2mConfig,
    /// `[limits]`: every resource cap (privileges, listing pages, caches, failure reports,
    /// listener admission).
    pub limits: Limits,
    /// `[proxy]`: how servers reach devices through the gateway.
    pub proxy: proxy::ProxyConfig,
    /// `[audit]`: the audit trail's switch and retention.
    pub audit: AuditConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway: RawGateway,
    #[serde(default)]
    limits: limits::RawLimits,
    #[serde(default)]
    audit: audit::RawAudit,
    #[serde(default)]
    lwm2m: lwm2m::RawLwm2m,
    #[serde(default)]
    proxy: proxy::RawProxy,
    #[serde(default)]
    servers: Vec<RawServer>,
    #[serde(default)]
    devices: Vec<RawDevice>,
    #[serde(default)]
    groups: Vec<RawGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    listen: Vec<String>,
    #[serde(default = "default_store")]
    store: PathBuf,
    #[serde(default = "default_privileges_acl")]
    privileges_acl: String,
    #[serde(default = "default_device_timeout_ms")]
    device_timeout_ms: u64,
    #[serde(default = "default_max_in_flight")]
    max_in_flight: usize,
    south_bind: Option<String>,
    #[serde(default = "default_ack_timeout_ms")]
    ack_timeout_ms: u64,
    #[serde(default = "default_nstart")]
    nstart: u32,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    #[serde(default)]
    dtls_handshakes: ServerHandshakes,
}

fn default_store() -> PathBuf {
    PathBuf::from("privgw.redb")
}
fn default_privileges_acl() -> String {
    "Add=*&Delete=*&Get=*&Replace=*".into()
}
fn default_device_timeout_ms() -> u64 {
    3000
}
fn default_max_in_flight() -> usize {
    256
}
fn default_nstart() -> u32 {
    1
}
fn default_ack_timeout_ms() -> u64 {
    2000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    id: String,
    ssid: u32,
    psk_identity: Option<String>,
    psk_key: Option<String>,
    psk_key_hex: Option<String>,
    nosec_address: Option<String>,
    cert_match: Option<String>,
    spki_sha256: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    id: String,
    /// The proxy path prefix, when it is not the id.
    prefix: Option<String>,
    uri: Option<String>,
    /// Reached through its LwM2M registration instead of a `uri`.
    #[serde(default)]
    registers: bool,
    /// Its LwM2M endpoint name, when it is not the DeviceID (registering devices).
    endpoint: Option<String>,
    /// Lab only: a registering device accepted over `coap://` by its endpoint name.
    #[serde(default)]
    nosec: bool,
    #[serde(default = "default_profile")]
    profile: String,
    policy: Option<String>,
    psk_identity: Option<String>,
    psk_key: Option<String>,
    psk_key_hex: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    cert_match: Option<String>,
    spki_sha256: Option<String>,
}

fn default_profile() -> String {
    "lwm2m".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    id: String,
    members: Vec<String>,
}

impl Config {
    /// Reads and validates a config file. Relative paths in it (the store) are taken
    /// relative to the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse_in(&text, path.parent()).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text; relative paths stay relative to the working folder.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_in(text, None)
    }

    /// Parses and validates config text whose relative paths (store, certificates) are
    /// relative to `base`.
    pub fn parse_in(text: &str, base: Option<&Path>) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        validate(raw, base)
    }

    pub fn server_by_id(&self, id: &str) -> Option<&ServerConfig> {
        self.servers.iter().find(|s| s.id == id)
    }
}

fn psk_from(
    key: &str,
    identity: Option<String>,
    secret: Option<String>,
    secret_hex: Option<String>,
) -> Result<Option<Psk>, ConfigError> {
    let secret = match (secret, secret_hex) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                format!("{key}.psk_key"),
                "give psk_key or psk_key_hex, not both",
            ));
        }
        (Some(s), None) => Some(s.into_bytes()),
        (None, Some(h)) => {
            Some(decode_hex(&h).map_err(|p| invalid(format!("{key}.psk_key_hex"), p))?)
        }
        (None, None) => None,
    };
    match (identity, secret) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(invalid(
            format!("{key}.psk_key"),
            "psk_identity is set but no psk_key",
        )),
        (None, Some(_)) => Err(invalid(
            format!("{key}.psk_identity"),
            "a psk_key needs a psk_identity",
        )),
        (Some(identity), Some(secret)) => {
            if identity.is_empty() || identity.len() > 128 {
                return Err(invalid(
                    format!("{key}.psk_identity"),
                    "must be 1 to 128 bytes",
                ));
            }
            if secret.is_empty() || secret.len() > 64 {
                return Err(invalid(format!("{key}.psk_key"), "must be 1 to 64 bytes"));
            }
            Ok(Some(Psk {
                identity: identity.into_bytes(),
                key: secret,
            }))
        }
    }
}

/// Decodes a hex string (no separators).
pub fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    if s.len() % 2 != 0 {
        return Err("hex needs an even number of digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("'{s}' is not hex"))
        })
        .collect()
}

/// Validates an identifier used as a DeviceID, GroupID or ServerID.
pub fn check_identifier(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 64 {
        return Err(format!("'{s}' must be 1 to 64 characters"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err(format!(
            "'{s}' may only hold letters, digits, '-', '_', '.' and ':'"
        ));
    }
    Ok(())
}

/// Resolves a configured file against the config's folder and checks it can be read.
fn file(key: &str, path: PathBuf, base: Option<&Path>) -> Result<PathBuf, ConfigError> {
    let path = match base {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path,
    };
    std::fs::File::open(&path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    Ok(path)
}

/// `cert`, `key` and `ca` go together.
fn cert_files(
    key: &str,
    cert: Option<PathBuf>,
    private_key: Option<PathBuf>,
    ca: Option<PathBuf>,
    base: Option<&Path>,
) -> Result<Option<CertFiles>, ConfigError> {
    match (cert, private_key, ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(private_key), Some(ca)) => Ok(Some(CertFiles {
            cert: file(&format!("{key}.cert"), cert, base)?,
            key: file(&format!("{key}.key"), private_key, base)?,
            ca: file(&format!("{key}.ca"), ca, base)?,
        })),
        _ => Err(invalid(key, "cert, key and ca go together")),
    }
}

/// A device's `cert`, `key` and `ca` go together, except that `ca` alone is the device's
/// own trust anchor used with the gateway's cert and key.
fn device_cert_files(
    key: &str,
    cert: Option<PathBuf>,
    private_key: Option<PathBuf>,
    ca: Option<PathBuf>,
    gateway: &Option<CertFiles>,
    base: Option<&Path>,
) -> Result<Option<CertFiles>, ConfigError> {
    let (None, None, Some(ca)) = (&cert, &private_key, &ca) else {
        return cert_files(key, cert, private_key, ca, base);
    };
    let ca = file(&format!("{key}.ca"), ca.clone(), base)?;
    let gateway = gateway.as_ref().ok_or_else(|| {
        invalid(
            format!("{key}.ca"),
            "a ca alone is used with the gateway's cert and key: give them in [gateway] (or cert and key here)",
        )
    })?;
    Ok(Some(CertFiles {
        cert: gateway.cert.clone(),
        key: gateway.key.clone(),
        ca,
    }))
}

fn cert_rule(
    key: &str,
    cert_match: Option<String>,
    spki: Option<String>,
) -> Result<Option<CertRule>, ConfigError> {
    let pin = spki
        .map(|h| {
            decode_hex(&h)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    invalid(
                        format!("{key}.spki_sha256"),
                        "must be 64 hex digits (SHA-256)",
                    )
                })
        })
        .transpose()?;
    match (cert_match, pin) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(invalid(
            format!("{key}.cert_match"),
            "spki_sha256 pins a key; cert_match must name whose (e.g. \"cn:serverA\")",
        )),
        (Some(m), pin) => Ok(Some(CertRule {
            matcher: m
                .parse::<CertMatch>()
                .map_err(|e| invalid(format!("{key}.cert_match"), e))?,
            spki_sha256: pin,
        })),
    }
}

/// A device's `profile` and `policy`.
fn device_profile(key: &str, profile: &str, policy: Option<&str>) -> Result<Profile, ConfigError> {
    Ok(match (profile, policy) {
        ("dm", None) => Profile::Dm(DmPolicy::Replace),
        ("dm", Some(p)) => Profile::Dm(p.parse().map_err(|_| {
            invalid(
                format!("{key}.policy"),
                format!("'{p}' is not a dm policy (replace | tnd-strict)"),
            )
        })?),
        ("lwm2m", None) => Profile::Lwm2m(Lwm2mPolicy::Owner),
        ("lwm2m", Some(p)) => Profile::Lwm2m(p.parse().map_err(|_| {
            invalid(
                format!("{key}.policy"),
                format!("'{p}' is not an lwm2m policy (owner | write-bit)"),
            )
        })?),
        (other, _) => {
            return Err(invalid(
                format!("{key}.profile"),
                format!("'{other}' is not a profile (dm | lwm2m)"),
            ));
        }
    })
}

/// Registering devices need a listener their proof works on: `coaps://` for PSK and
/// certificates (the latter with the gateway's certificate), `coap://` for `nosec`.
fn check_registration_listeners(
    lwm2m: &Lwm2mConfig,
    devices: &[DeviceConfig],
    gateway_certs: bool,
) -> Result<(), ConfigError> {
    let has = |scheme| lwm2m.listen.iter().any(|l| l.uri.scheme == scheme);
    if lwm2m.listen.iter().any(|l| l.uri.scheme == Scheme::Coaps)
        && !gateway_certs
        && !devices.iter().any(
            |d| matches!(&d.reach, Reach::Registers(r) if matches!(r.proof, DeviceProof::Psk(_))),
        )
    {
        return Err(invalid(
            "lwm2m.listen",
            "a coaps:// registration listener needs PSK devices or the gateway's cert, key and ca",
        ));
    }
    for (i, d) in devices.iter().enumerate() {
        let Reach::Registers(r) = &d.reach else {
            continue;
        };
        let (scheme, what) = match r.proof {
            DeviceProof::NoSec => (Scheme::Coap, "nosec = true needs a coap://"),
            _ => (Scheme::Coaps, "a secured registration needs a coaps://"),
        };
        if !has(scheme) {
            return Err(invalid(
                format!("devices[{i}]"),
                format!("{what} listener in [[lwm2m.listen]]"),
            ));
        }
    }
    Ok(())
}

fn validate(raw: RawConfig, base: Option<&Path>) -> Result<Config, ConfigError> {
    let g = raw.gateway;
    let raw_limits = raw.limits;
    let gateway_certs = cert_files("gateway", g.cert, g.key, g.ca, base)?;
    let store = match base {
        Some(dir) if g.store.is_relative() => dir.join(&g.store),
        _ => g.store,
    };
    if g.listen.is_empty() {
        return Err(invalid("gateway.listen", "at least one listener is needed"));
    }
    let listen = g
        .listen
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse()
                .map_err(|e| invalid(format!("gateway.listen[{i}]"), e))
        })
        .collect::<Result<Vec<EndpointUri>, _>>()?;
    let privileges_acl =
        DmAcl::parse(&g.privileges_acl).map_err(|e| invalid("gateway.privileges_acl", e))?;
    if !(1..=600_000).contains(&g.device_timeout_ms) {
        return Err(invalid(
            "gateway.device_timeout_ms",
            "must be 1 to 600000 ms",
        ));
    }
    if !(1..=65_536).contains(&g.max_in_flight) {
        return Err(invalid("gateway.max_in_flight", "must be 1 to 65536"));
    }
    if !(10..=60_000).contains(&g.ack_timeout_ms) {
        return Err(invalid("gateway.ack_timeout_ms", "must be 10 to 60000 ms"));
    }
    if !(1..=16).contains(&g.nstart) {
        return Err(invalid("gateway.nstart", "must be 1 to 16"));
    }
    let south_bind = g
        .south_bind
        .as_deref()
        .map(|s| {
            s.parse::<SocketAddr>()
                .map_err(|_| invalid("gateway.south_bind", format!("'{s}' is not ip:port")))
        })
        .transpose()?;

    let mut server_ids = BTreeSet::new();
    let mut ssids = BTreeSet::new();
    let mut identities = BTreeSet::new();
    let mut servers = Vec::new();
    for (i, s) in raw.servers.into_iter().enumerate() {
        let key = format!("servers[{i}]");
        check_identifier(&s.id).map_err(|p| invalid(format!("{key}.id"), p))?;
        if s.id == "*" || !server_ids.insert(s.id.clone()) {
            return Err(invalid(
                format!("{key}.id"),
                format!("'{}' is used twice", s.id),
            ));
        }
        let ssid = match s.ssid {
            0 | 65535 => {
                return Err(invalid(
                    format!("{key}.ssid"),
                    format!("{} is reserved (1..65534)", s.ssid),
                ));
            }
            n @ 1..=65534 => n as u16,
            n => {
                return Err(invalid(
                    format!("{key}.ssid"),
                    format!("{n} is out of range (1..65534)"),
                ));
            }
        };
        if !ssids.insert(ssid) {
            return Err(invalid(
                format!("{key}.ssid"),
                format!("{ssid} is used twice"),
            ));
        }
        let psk = psk_from(&key, s.psk_identity, s.psk_key, s.psk_key_hex)?;
        if let Some(psk) = &psk {
            if !identities.insert(psk.identity.clone()) {
                return Err(invalid(
                    format!("{key}.psk_identity"),
                    "used by another server",
                ));
            }
        }
        let nosec_address = s
            .nosec_address
            .as_deref()
            .map(|a| {
                a.parse::<IpAddr>().map_err(|_| {
                    invalid(
                        format!("{key}.nosec_address"),
                        format!("'{a}' is not an IP address"),
                    )
                })
            })
            .transpose()?;
        if s.key.is_some() {
            return Err(invalid(
                format!("{key}.key"),
                "the gateway never holds a server's private key (give cert, cert_match or spki_sha256)",
            ));
        }
        let mut rule = cert_rule(&key, s.cert_match, s.spki_sha256)?;
        if let Some(cert) = s.cert {
            // A server's own certificate: pin its key, and match its CN unless told otherwise.
            let path = file(&format!("{key}.cert"), cert, base)?;
            let pem = std::fs::read(&path)
                .map_err(|e| invalid(format!("{key}.cert"), format!("{}: {e}", path.display())))?;
            let id = openssl::x509::X509::from_pem(&pem)
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    crate::transport::cert::CertIdentity::from_x509(&c).map_err(|e| e.to_string())
                })
                .map_err(|e| invalid(format!("{key}.cert"), format!("{}: {e}", path.display())))?;
            let matcher =
                match rule.take() {
                    Some(r) if r.spki_sha256.is_some_and(|p| p != id.spki_sha256) => {
                        return Err(invalid(
                            format!("{key}.spki_sha256"),
                            "does not match the key of the configured cert",
                        ));
                    }
                    Some(r) => r.matcher,
                    None => CertMatch::Cn(id.subject_cn.clone().ok_or_else(|| {
                        invalid(format!("{key}.cert"), "has no CN; give cert_match")
                    })?),
                };
            rule = Some(CertRule {
                matcher,
                spki_sha256: Some(id.spki_sha256),
            });
        }
        let ca =
            s.ca.map(|p| file(&format!("{key}.ca"), p, base))
                .transpose()?;
        if psk.is_none() && nosec_address.is_none() && rule.is_none() {
            return Err(invalid(
                key,
                "a server needs psk_identity/psk_key, cert_match (or cert) or nosec_address to be identified",
            ));
        }
        if rule.is_some() && gateway_certs.is_none() {
            return Err(invalid(
                format!("{key}.cert_match"),
                "certificate identities need the gateway's cert, key and ca",
            ));
        }
        servers.push(ServerConfig {
            id: s.id,
            ssid,
            psk,
            nosec_address,
            cert_rule: rule,
            ca,
        });
    }

    let mut devices = Vec::new();
    let mut device_ids = BTreeSet::new();
    // The gateway keeps one session per device endpoint, so two devices cannot share one.
    let mut endpoints: BTreeMap<SocketAddr, String> = BTreeMap::new();
    let mut registering_endpoints = BTreeSet::new();
    // A device's PSK identity is also known to the north listeners (it gets 4.01 there), so
    // it must not be a server's.
    let mut registering_identities = identities.clone();
    for (i, d) in raw.devices.into_iter().enumerate() {
        let key = format!("devices[{i}]");
        check_identifier(&d.id).map_err(|p| invalid(format!("{key}.id"), p))?;
        if !device_ids.insert(d.id.clone()) {
            return Err(invalid(
                format!("{key}.id"),
                format!("'{}' is used twice", d.id),
            ));
        }
        let profile = device_profile(&key, &d.profile, d.policy.as_deref())?;
        let prefix = d.prefix.unwrap_or_else(|| d.id.clone());
        let psk = psk_from(&key, d.psk_identity, d.psk_key, d.psk_key_hex)?;
        let rule = cert_rule(&key, d.cert_match, d.spki_sha256)?;
        if d.registers {
            if d.uri.is_some() {
                return Err(invalid(
                    format!("{key}.uri"),
                    "a registering device is reached through its registration: no uri",
                ));
            }
            if let Some(k) = [
                ("cert", d.cert.is_some()),
                ("key", d.key.is_some()),
                ("ca", d.ca.is_some()),
            ]
            .into_iter()
            .find_map(|(k, set)| set.then_some(k))
            {
                return Err(invalid(
                    format!("{key}.{k}"),
                    "a registering device is verified with the gateway's cert and ca (give cert_match)",
                ));
            }
            if !matches!(profile, Profile::Lwm2m(_)) {
                return Err(invalid(
                    format!("{key}.profile"),
                    "only lwm2m devices register",
                ));
            }
            let raw_reg = lwm2m::RawRegistering {
                endpoint: d.endpoint,
                nosec: d.nosec,
            };
            let registering = lwm2m::registering(&key, &d.id, raw_reg, psk, rule)?;
            if !registering_endpoints.insert(registering.endpoint.clone()) {
                return Err(invalid(
                    format!("{key}.endpoint"),
                    format!(
                        "'{}' is the endpoint of another device",
                        registering.endpoint
                    ),
                ));
            }
            match &registering.proof {
                DeviceProof::Psk(p) if !registering_identities.insert(p.identity.clone()) => {
                    return Err(invalid(
                        format!("{key}.psk_identity"),
                        "used by a server or another registering device",
                    ));
                }
                DeviceProof::Certificate(_) if gateway_certs.is_none() => {
                    return Err(invalid(
                        format!("{key}.cert_match"),
                        "certificate identities need the gateway's cert, key and ca",
                    ));
                }
                _ => {}
            }
            devices.push(DeviceConfig {
                id: d.id,
                prefix,
                reach: Reach::Registers(registering),
                profile,
                psk: None,
                certs: None,
                cert_rule: None,
            });
            continue;
        }
        if d.endpoint.is_some() || d.nosec {
            return Err(invalid(
                format!("{key}.endpoint"),
                "endpoint and nosec are for devices with registers = true",
            ));
        }
        let Some(raw_uri) = d.uri else {
            return Err(invalid(
                format!("{key}.uri"),
                "missing: give the device's uri, or registers = true",
            ));
        };
        let uri: EndpointUri = raw_uri
            .parse()
            .map_err(|e| invalid(format!("{key}.uri"), e))?;
        if let Some(other) = endpoints.insert(uri.addr, d.id.clone()) {
            return Err(invalid(
                format!("{key}.uri"),
                format!(
                    "{} is also the endpoint of device '{other}' (one device per endpoint)",
                    uri.addr
                ),
            ));
        }
        let own_certs = device_cert_files(&key, d.cert, d.key, d.ca, &gateway_certs, base)?;
        // Certificates are used towards a device on coaps+tcp://, and on coaps:// when no
        // PSK is given; the device's own files win over the gateway's.
        let wants_certs =
            uri.scheme == Scheme::CoapsTcp || (uri.scheme == Scheme::Coaps && psk.is_none());
        let certs = if wants_certs {
            Some(own_certs.or_else(|| gateway_certs.clone()).ok_or_else(|| {
                invalid(
                    key.clone(),
                    format!(
                        "a {}:// device needs psk_identity/psk_key{} or certificates (cert, key, ca here or in [gateway])",
                        uri.scheme.as_str(),
                        if uri.scheme == Scheme::CoapsTcp { " (DTLS only)" } else { "" }
                    ),
                )
            })?)
        } else {
            own_certs
        };
        if psk.is_some() && rule.is_some() {
            return Err(invalid(
                format!("{key}.cert_match"),
                "cert_match / spki_sha256 check a device certificate; this device uses PSK",
            ));
        }
        if uri.scheme == Scheme::CoapsTcp && psk.is_some() {
            return Err(invalid(
                format!("{key}.psk_key"),
                "coaps+tcp:// uses certificates; PSK is for coaps:// (DTLS)",
            ));
        }
        devices.push(DeviceConfig {
            id: d.id,
            prefix,
            reach: Reach::Dialed(uri),
            profile,
            psk,
            certs,
            cert_rule: rule,
        });
    }

    let mut groups = Vec::new();
    let mut group_ids = BTreeMap::new();
    for (i, grp) in raw.groups.into_iter().enumerate() {
        let key = format!("groups[{i}]");
        check_identifier(&grp.id).map_err(|p| invalid(format!("{key}.id"), p))?;
        if group_ids.insert(grp.id.clone(), i).is_some() {
            return Err(invalid(
                format!("{key}.id"),
                format!("'{}' is used twice", grp.id),
            ));
        }
        let mut seen = BTreeSet::new();
        for (j, m) in grp.members.iter().enumerate() {
            if !device_ids.contains(m) {
                return Err(invalid(
                    format!("{key}.members[{j}]"),
                    format!("'{m}' is not a configured device"),
                ));
            }
            if !seen.insert(m) {
                return Err(invalid(
                    format!("{key}.members[{j}]"),
                    format!("'{m}' is listed twice"),
                ));
            }
        }
        groups.push(GroupConfig {
            id: grp.id,
            members: grp.members,
        });
    }

    let listens_x509 = listen.iter().any(|u| u.scheme == Scheme::CoapsTcp);
    if listens_x509 && gateway_certs.is_none() {
        return Err(invalid(
            "gateway.cert",
            "a coaps+tcp:// listener needs the gateway's cert, key and ca",
        ));
    }

    proxy::check_prefixes(
        devices
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("devices[{i}]"), d.prefix.as_str())),
    )?;
    let lwm2m = raw.lwm2m.validate(&server_ids, &listen)?;
    check_registration_listeners(&lwm2m, &devices, gateway_certs.is_some())?;

    for name in privileges_acl.named_servers() {
        if !server_ids.contains(name) {
            return Err(invalid(
                "gateway.privileges_acl",
                format!("names '{name}', which is not a configured server"),
            ));
        }
    }

    Ok(Config {
        gateway: GatewayConfig {
            listen,
            store,
            privileges_acl,
            device_timeout: Duration::from_millis(g.device_timeout_ms),
            max_in_flight: g.max_in_flight,
            south_bind,
            ack_timeout: Duration::from_millis(g.ack_timeout_ms),
            nstart: g.nstart,
            certs: gateway_certs.clone(),
            dtls_handshakes: g.dtls_handshakes,
        },
        servers,
        devices,
        groups,
        lwm2m,
        limits: raw_limits.validate()?,
        proxy: raw.proxy.validate()?,
        audit: raw.audit.validate()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[gateway]
listen = ["coaps://127.0.0.1:5684", "coap://[::1]:5683"]
store = "privgw.redb"

[[servers]]
id = "ServerA"
ssid = 101
psk_identity = "serverA"
psk_key = "secretA"

[[servers]]
id = "ServerB"
ssid = 102
psk_identity = "serverB"
psk_key_hex = "0a0b"

[[devices]]
id = "devA"
uri = "coaps://127.0.0.1:15684"
profile = "lwm2m"
policy = "owner"
psk_identity = "gateway"
psk_key = "devkeyA"

[[devices]]
id = "devB"
uri = "coap://127.0.0.1:15683"
profile = "dm"

[[groups]]
id = "G1"
members = ["devA", "devB"]
"#;

    #[test]
    fn good_config_loads_with_defaults() {
        let c = Config::parse(GOOD).expect("valid");
        assert_eq!(c.gateway.listen.len(), 2);
        assert_eq!(c.gateway.listen[1].addr, "[::1]:5683".parse().unwrap());
        assert_eq!(c.gateway.device_timeout, Duration::from_millis(3000));
        assert_eq!(c.gateway.max_in_flight, 256);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.servers[1].psk.as_ref().unwrap().key, vec![0x0a, 0x0b]);
        assert_eq!(c.devices[1].profile, Profile::Dm(DmPolicy::Replace));
        assert_eq!(c.groups[0].members, vec!["devA", "devB"]);
    }

    fn error_of(text: &str) -> String {
        Config::parse(text).expect_err("must fail").to_string()
    }

    #[test]
    fn reserved_ssid_names_the_key() {
        let e = error_of(&GOOD.replace("ssid = 102", "ssid = 0"));
        assert!(
            e.contains("servers[1].ssid") && e.contains("reserved"),
            "{e}"
        );
    }

    #[test]
    fn unknown_group_member_names_the_key() {
        let e = error_of(&GOOD.replace("[\"devA\", \"devB\"]", "[\"devA\", \"devZ\"]"));
        assert!(
            e.contains("groups[0].members[1]") && e.contains("devZ"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = error_of(&GOOD.replace("store =", "stroe ="));
        assert!(e.contains("stroe"), "{e}");
    }

    #[test]
    fn caps_under_gateway_are_refused_as_unknown_keys() {
        // They live in `[limits]`; the `[gateway]` spelling was never released.
        for line in ["max_reports = 8", "tcp_max_per_ip = 4"] {
            let e = error_of(&GOOD.replace("[gateway]\n", &format!("[gateway]\n{line}\n")));
            assert!(e.contains("unknown field"), "{line}: {e}");
        }
    }

    #[test]
    fn bad_listen_uri_names_the_key() {
        let e = error_of(&GOOD.replace("coap://[::1]:5683", "http://x"));
        assert!(e.contains("gateway.listen[1]"), "{e}");
    }

    #[test]
    fn coaps_device_without_key_is_refused() {
        let e = error_of(&GOOD.replace("psk_key = \"devkeyA\"", ""));
        assert!(e.contains("devices[0]"), "{e}");
    }

    #[test]
    fn bad_policy_names_the_key() {
        let e = error_of(&GOOD.replace("policy = \"owner\"", "policy = \"sometimes\""));
        assert!(e.contains("devices[0].policy"), "{e}");
    }

    #[test]
    fn two_devices_on_one_endpoint_are_refused() {
        let e = error_of(&GOOD.replace("coap://127.0.0.1:15683", "coap://127.0.0.1:15684"));
        assert!(e.contains("devices[1].uri") && e.contains("devA"), "{e}");
    }

    const CERTS: &str = r#"
[gateway]
listen = ["coaps+tcp://127.0.0.1:5685", "coaps://127.0.0.1:5684"]
cert = "certs/gateway.pem"
key = "certs/gateway.key"
ca = "certs/ca.pem"

[[servers]]
id = "ServerA"
ssid = 101
cert_match = "san-dns:serverA.example"

[[servers]]
id = "ServerB"
ssid = 102
cert = "certs/serverB.pem"

[[devices]]
id = "devA"
uri = "coaps+tcp://127.0.0.1:15685"
cert_match = "cn:devA"
"#;

    #[test]
    fn certificate_keys_load() {
        let c = Config::parse(CERTS).expect("valid");
        assert!(c.gateway.certs.is_some());
        let rule = c.servers[0].cert_rule.as_ref().unwrap();
        assert_eq!(rule.matcher, CertMatch::SanDns("serverA.example".into()));
        let b = c.servers[1].cert_rule.as_ref().unwrap();
        assert_eq!(b.matcher, CertMatch::Cn("serverB".into()));
        assert!(b.spki_sha256.is_some(), "a server cert pins its key");
        assert_eq!(
            c.devices[0].certs, c.gateway.certs,
            "devices default to the gateway's files"
        );
        assert_eq!(
            c.devices[0].reach.dialed().unwrap().scheme,
            Scheme::CoapsTcp
        );
    }

    #[test]
    fn a_device_ca_alone_is_its_anchor_with_the_gateways_cert_and_key() {
        let c = Config::parse(&CERTS.replace(
            "cert_match = \"cn:devA\"",
            "cert_match = \"cn:devA\"\nca = \"certs/devB.pem\"",
        ))
        .expect("a ca alone is valid");
        let gateway = c.gateway.certs.as_ref().unwrap();
        let device = c.devices[0].certs.as_ref().unwrap();
        assert_eq!((&device.cert, &device.key), (&gateway.cert, &gateway.key));
        assert_eq!(device.ca, Path::new("certs/devB.pem"));

        // Without the gateway's cert and key there is nothing to present.
        let e = error_of(&GOOD.replace(
            "psk_key = \"devkeyA\"",
            "psk_key = \"devkeyA\"\nca = \"certs/ca.pem\"",
        ));
        assert!(
            e.contains("devices[0].ca") && e.contains("[gateway]"),
            "{e}"
        );
        // A cert without its key still fails.
        let e = error_of(&CERTS.replace(
            "cert_match = \"cn:devA\"",
            "cert = \"certs/devA.pem\"\nca = \"certs/ca.pem\"",
        ));
        assert!(e.contains("go together"), "{e}");
    }

    #[test]
    fn missing_certificate_file_names_key_and_path() {
        let e = error_of(&CERTS.replace("certs/gateway.key", "certs/nope.key"));
        assert!(
            e.contains("gateway.key") && e.contains("certs/nope.key"),
            "{e}"
        );
    }

    #[test]
    fn cert_identities_need_gateway_certificates() {
        let text = CERTS
            .replace("cert = \"certs/gateway.pem\"\n", "")
            .replace("key = \"certs/gateway.key\"\n", "")
            .replace("ca = \"certs/ca.pem\"\n", "");
        let e = error_of(&text);
        assert!(e.contains("gateway") || e.contains("cert"), "{e}");
    }

    #[test]
    fn bad_pin_and_match_are_refused() {
        let e = error_of(&CERTS.replace(
            "cert_match = \"cn:devA\"",
            "cert_match = \"cn:devA\"\nspki_sha256 = \"abcd\"",
        ));
        assert!(e.contains("devices[0].spki_sha256"), "{e}");
        let e = error_of(&CERTS.replace("san-dns:serverA.example", "dns:serverA"));
        assert!(e.contains("servers[0].cert_match"), "{e}");
    }

    #[test]
    fn endpoint_uris_parse() {
        let u: EndpointUri = "coaps://[::1]".parse().unwrap();
        assert_eq!(u.addr.port(), 5684);
        let u: EndpointUri = "coap://localhost:1".parse().unwrap();
        assert_eq!(u.addr, "127.0.0.1:1".parse().unwrap());
        assert!("coap://example.com:5683".parse::<EndpointUri>().is_err());
        assert!("coap://127.0.0.1:99999".parse::<EndpointUri>().is_err());
        assert!("coap://127.0.0.1:5683/x".parse::<EndpointUri>().is_err());
        let u: EndpointUri = "coaps+tcp://[::1]".parse().unwrap();
        assert_eq!((u.scheme, u.addr.port()), (Scheme::CoapsTcp, 5684));
        let u: EndpointUri = "coap+tcp://127.0.0.1".parse().unwrap();
        assert_eq!((u.scheme, u.addr.port()), (Scheme::CoapTcp, 5683));
    }

    const REGISTERING: &str = r#"
[gateway]
listen = ["coaps://127.0.0.1:5684"]

[[servers]]
id = "ServerA"
ssid = 101
psk_identity = "serverA"
psk_key = "secretA"

[[lwm2m.listen]]
uri = "coaps://127.0.0.1:5784"
[[lwm2m.listen]]
uri = "coaps://127.0.0.1:5785"
account = "ServerA"
[[lwm2m.listen]]
uri = "coap://127.0.0.1:5783"

[[devices]]
id = "dev1"
registers = true
profile = "lwm2m"
policy = "owner"
psk_identity = "dev1"
psk_key_hex = "0102"

[[devices]]
id = "dev2"
registers = true
endpoint = "urn:imei:490154203237518"
nosec = true
"#;

    #[test]
    fn registering_devices_and_their_listeners_load() {
        let c = Config::parse(REGISTERING).unwrap();
        assert_eq!(c.lwm2m.listen.len(), 3);
        assert_eq!(c.lwm2m.listen[0].account, Account::Gateway);
        assert_eq!(c.lwm2m.listen[1].account, Account::Server("ServerA".into()));
        assert_eq!(c.lwm2m.queue_awake, Duration::from_secs(93));
        let Reach::Registers(r) = &c.devices[0].reach else {
            panic!("dev1 registers")
        };
        assert_eq!(r.endpoint, "dev1");
        assert!(
            matches!(&r.proof, DeviceProof::Psk(p) if p.identity == b"dev1" && p.key == [1, 2])
        );
        assert!(c.devices[0].psk.is_none(), "no dialling credentials");
        let Reach::Registers(r) = &c.devices[1].reach else {
            panic!("dev2 registers")
        };
        assert_eq!(r.endpoint, "urn:imei:490154203237518");
        assert_eq!(r.proof, DeviceProof::NoSec);
    }

    #[test]
    fn registering_device_mistakes_name_the_key() {
        let cases = [
            (
                REGISTERING.replace(
                    "id = \"dev1\"\nregisters = true",
                    "id = \"dev1\"\nregisters = true\nuri = \"coap://127.0.0.1:1\"",
                ),
                "devices[0].uri",
            ),
            (
                REGISTERING.replace("account = \"ServerA\"", "account = \"ServerZ\""),
                "lwm2m.listen[1].account",
            ),
            (
                REGISTERING.replace("coaps://127.0.0.1:5785", "coaps://127.0.0.1:5684"),
                "lwm2m.listen[1].uri",
            ),
            (
                REGISTERING.replace("coap://127.0.0.1:5783", "coap+tcp://127.0.0.1:5783"),
                "lwm2m.listen[2].uri",
            ),
            (
                REGISTERING.replace(
                    "nosec = true",
                    "nosec = true\npsk_identity = \"x\"\npsk_key = \"y\"",
                ),
                "devices[1]",
            ),
            (REGISTERING.replace("nosec = true", ""), "devices[1]"),
            (
                REGISTERING.replace("urn:imei:490154203237518", "dev1"),
                "devices[1].endpoint",
            ),
            (
                REGISTERING.replace("[[lwm2m.listen]]\nuri = \"coap://127.0.0.1:5783\"", ""),
                "devices[1]",
            ),
            (
                REGISTERING.replace(
                    "profile = \"lwm2m\"\npolicy = \"owner\"",
                    "profile = \"dm\"",
                ),
                "devices[0].profile",
            ),
            (
                REGISTERING.replace(
                    "psk_key_hex = \"0102\"",
                    "psk_key_hex = \"0102\"\nca = \"ca.pem\"",
                ),
                "devices[0].ca",
            ),
        ];
        for (text, key) in cases {
            let e = error_of(&text);
            assert!(e.starts_with(key), "expected {key}: {e}");
        }
        let e = error_of(&GOOD.replace("id = \"devB\"", "id = \"devB\"\nnosec = true"));
        assert!(e.contains("devices[1].endpoint"), "{e}");
        let e = error_of(&GOOD.replace("uri = \"coap://127.0.0.1:15683\"\n", ""));
        assert!(e.contains("devices[1].uri"), "{e}");
    }

    #[test]
    fn dtls_handshakes_default_to_lean_and_take_openssl() {
        assert_eq!(
            Config::parse(GOOD).unwrap().gateway.dtls_handshakes,
            ServerHandshakes::Lean
        );
        let openssl = GOOD.replacen(
            "store = \"privgw.redb\"",
            "store = \"privgw.redb\"\ndtls_handshakes = \"openssl\"",
            1,
        );
        assert_eq!(
            Config::parse(&openssl).unwrap().gateway.dtls_handshakes,
            ServerHandshakes::OpenSsl
        );
        let bad = GOOD.replacen(
            "store = \"privgw.redb\"",
            "store = \"privgw.redb\"\ndtls_handshakes = \"gnutls\"",
            1,
        );
        assert!(
            error_of(&bad).contains("dtls_handshakes"),
            "{}",
            error_of(&bad)
        );
    }

    #[test]
    fn nstart_defaults_to_one_and_is_bounded() {
        assert_eq!(Config::parse(GOOD).unwrap().gateway.nstart, 1);
        let two = GOOD.replace(
            "store = \"privgw.redb\"",
            "store = \"privgw.redb\"\nnstart = 2",
        );
        assert_eq!(Config::parse(&two).unwrap().gateway.nstart, 2);
        let zero = GOOD.replace(
            "store = \"privgw.redb\"",
            "store = \"privgw.redb\"\nnstart = 0",
        );
        assert!(error_of(&zero).contains("gateway.nstart"));
    }
}
