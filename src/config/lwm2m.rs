//! `[lwm2m]` and the devices that register: where devices register with the gateway (the
//! gateway as their LwM2M server), which LwM2M Server account each listener stands for, and
//! how a device entry says it is reached through its registration instead of a `uri`.
//!
//! ```toml
//! [lwm2m]
//! queue_awake_s = 93              # a queue-mode device listens this long after Register/Update
//!
//! [[lwm2m.listen]]                # each stands for one LwM2M Server account on the devices
//! uri = "coaps://127.0.0.1:5784"  #   the gateway's own account by default
//! [[lwm2m.listen]]
//! uri = "coaps://127.0.0.1:5785"
//! account = "ServerA"             #   the devices' account for server A points here
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, EndpointUri, Psk, Scheme, invalid};
use crate::transport::cert::CertRule;

/// Validated `[lwm2m]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lwm2mConfig {
    pub listen: Vec<Lwm2mListen>,
    /// How long a queue-mode device is taken to listen after its latest Register/Update
    /// (LwM2M: MAX_TRANSMIT_WAIT, 93 s by default).
    pub queue_awake: Duration,
}

/// One registration listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lwm2mListen {
    pub uri: EndpointUri,
    pub account: Account,
}

/// The LwM2M Server account on the devices that a listener stands for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Account {
    /// The gateway's own account: devices register here for the gateway itself.
    Gateway,
    /// The account of a configured northbound server (by its ServerID): ACL reads for that
    /// server's privileges go over it, so the device applies its own access control.
    Server(String),
}

impl Account {
    /// The name used in logs and `/GwConfig/Devices` (`gateway` or the ServerID).
    pub fn name(&self) -> &str {
        match self {
            Account::Gateway => "gateway",
            Account::Server(id) => id,
        }
    }
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How the gateway reaches a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// The gateway dials the device's CoAP server at this URI (it is the client).
    Dialed(EndpointUri),
    /// The device registers with one of the `[[lwm2m.listen]]` listeners and is reached over
    /// that registration's session.
    Registers(Registering),
}

impl Reach {
    /// The dialled URI, if the gateway dials this device.
    pub fn dialed(&self) -> Option<EndpointUri> {
        match self {
            Reach::Dialed(uri) => Some(*uri),
            Reach::Registers(_) => None,
        }
    }
}

impl std::fmt::Display for Reach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reach::Dialed(uri) => write!(f, "{uri}"),
            Reach::Registers(r) => write!(f, "registers as '{}'", r.endpoint),
        }
    }
}

/// A device that registers: its LwM2M endpoint name and how its channel must prove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registering {
    /// The `ep` of its Register (the DeviceID unless `endpoint` is set).
    pub endpoint: String,
    /// How the device proves itself when it registers.
    pub proof: DeviceProof,
}

/// What a registering device's channel must prove (the server MUST check it, LwM2M Core
/// §7.1.1: an endpoint name alone proves nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceProof {
    /// DTLS-PSK: the identity it presents (the key is what the gateway's DTLS server uses).
    Psk(Psk),
    /// DTLS-X.509: its certificate, verified to the gateway's `ca`, must match this rule.
    Certificate(CertRule),
    /// Lab only: a `coap://` registration is accepted by endpoint name.
    NoSec,
}

/// `[lwm2m]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLwm2m {
    #[serde(default)]
    listen: Vec<RawListen>,
    queue_awake_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    uri: String,
    account: Option<String>,
}

impl RawLwm2m {
    /// Checks the listeners against the configured servers and the northbound listeners
    /// (a registration listener never shares an address with one of those).
    pub(super) fn validate(
        self,
        server_ids: &BTreeSet<String>,
        north: &[EndpointUri],
    ) -> Result<Lwm2mConfig, ConfigError> {
        let mut seen: BTreeSet<SocketAddr> = north.iter().map(|u| u.addr).collect();
        let mut listen = Vec::new();
        for (i, l) in self.listen.into_iter().enumerate() {
            let key = format!("lwm2m.listen[{i}]");
            let uri: EndpointUri = l
                .uri
                .parse()
                .map_err(|e| invalid(format!("{key}.uri"), e))?;
            if !matches!(uri.scheme, Scheme::Coap | Scheme::Coaps) {
                return Err(invalid(
                    format!("{key}.uri"),
                    "devices register over coap:// or coaps:// (UDP, DTLS)",
                ));
            }
            if uri.addr.port() != 0 && !seen.insert(uri.addr) {
                return Err(invalid(
                    format!("{key}.uri"),
                    format!("{} is already a listener of the gateway", uri.addr),
                ));
            }
            let account = match l.account {
                None => Account::Gateway,
                Some(id) if server_ids.contains(&id) => Account::Server(id),
                Some(id) => {
                    return Err(invalid(
                        format!("{key}.account"),
                        format!("'{id}' is not a configured server"),
                    ));
                }
            };
            listen.push(Lwm2mListen { uri, account });
        }
        let queue_awake = match self.queue_awake_s {
            None => Duration::from_secs(93),
            Some(s @ 1..=86_400) => Duration::from_secs(s),
            Some(_) => return Err(invalid("lwm2m.queue_awake_s", "must be 1 to 86400 s")),
        };
        Ok(Lwm2mConfig {
            listen,
            queue_awake,
        })
    }
}

/// What a `[[devices]]` entry says about registering.
pub(super) struct RawRegistering {
    pub endpoint: Option<String>,
    pub nosec: bool,
}

/// A registering device's reach, from its entry: `key` is `devices[i]`, `id` its DeviceID.
pub(super) fn registering(
    key: &str,
    id: &str,
    raw: RawRegistering,
    psk: Option<Psk>,
    rule: Option<CertRule>,
) -> Result<Registering, ConfigError> {
    let endpoint = raw.endpoint.unwrap_or_else(|| id.to_owned());
    check_endpoint_name(&endpoint).map_err(|p| invalid(format!("{key}.endpoint"), p))?;
    let proof = match (psk, rule, raw.nosec) {
        (Some(psk), None, false) => DeviceProof::Psk(psk),
        (None, Some(rule), false) => DeviceProof::Certificate(rule),
        (None, None, true) => DeviceProof::NoSec,
        (None, None, false) => {
            return Err(invalid(
                key,
                "a registering device needs psk_identity/psk_key, cert_match (or spki_sha256), or nosec = true",
            ));
        }
        _ => {
            return Err(invalid(
                key,
                "give one of psk_identity/psk_key, cert_match/spki_sha256 or nosec = true",
            ));
        }
    };
    Ok(Registering { endpoint, proof })
}

/// An LwM2M endpoint name: 1 to 255 bytes of printable ASCII (URNs such as
/// `urn:imei:490154203237518` included).
pub fn check_endpoint_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err(format!("'{name}' must be 1 to 255 bytes"));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("'{name}' may only hold printable ASCII"));
    }
    Ok(())
}
