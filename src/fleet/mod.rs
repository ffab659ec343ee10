//! The fleet simulator behind `privgw fleet`: N simulated end devices (the ones of
//! [`crate::device`]) in one process, apart from the gateway, so that the gateway's memory and
//! CPU can be measured alone. What the fleet is made of lives here ([`FleetSpec`]); which
//! device misbehaves how in [`plan`]; one device's simulator config in [`device`]; starting
//! the fleet (dialled: each device on its own loopback port; registering: N LwM2M clients,
//! each from its own source IP, Registers paced) in [`run`]; the gateway TOML that matches it
//! in [`config`].

pub mod config;
pub mod device;
pub mod plan;
pub mod run;

use std::path::PathBuf;
use std::time::Duration;

use crate::config::EndpointUri;

pub use plan::{Fractions, Plan, Role, device_id};
pub use run::{Fleet, source_ip};

/// The ACL model the devices serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// LwM2M Access Control object (`/2`).
    Lwm2m,
    /// OMA DM ACL strings (`?prop=ACL`).
    Dm,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Lwm2m => "lwm2m",
            Profile::Dm => "dm",
        }
    }
}

/// How the gateway and a device prove themselves to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Security {
    /// DTLS-PSK, one key per device.
    Psk,
    /// DTLS with certificates from the test PKI (`certs/`).
    X509,
    /// Plain UDP.
    Nosec,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Psk => "psk",
            Security::X509 => "x509",
            Security::Nosec => "nosec",
        }
    }

    /// `coaps` or `coap`.
    pub fn scheme(self) -> &'static str {
        match self {
            Security::Nosec => "coap",
            Security::Psk | Security::X509 => "coaps",
        }
    }
}

/// Who dials whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Each device listens on its own loopback UDP port; the gateway dials it.
    Dialed,
    /// Each device is an LwM2M client that registers with the gateway.
    Register,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Dialed => "dialed",
            Mode::Register => "register",
        }
    }
}

/// What a fleet is made of.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub count: usize,
    pub profile: Profile,
    pub security: Security,
    pub mode: Mode,
    pub fractions: Fractions,
    /// Register mode: the gateway's LwM2M listener the devices register with.
    pub gateway: Option<EndpointUri>,
    /// Register mode: Registers (handshakes included) in flight at once.
    pub in_flight: usize,
    /// Register mode: how long one device may take from its start to its 2.01.
    pub register_patience: Duration,
    /// The test PKI's folder (X.509: `ca`, `gateway`, `devA` are used).
    pub certs: PathBuf,
}

/// The device certificate every X.509 device presents (valid for 127.0.0.1).
pub const DEVICE_CERT: &str = "devA";

impl FleetSpec {
    /// Refuses what cannot work before anything is bound.
    pub fn check(&self) -> Result<Plan, String> {
        if self.count == 0 {
            return Err("--count must be at least 1".into());
        }
        if self.mode == Mode::Register {
            if self.profile != Profile::Lwm2m {
                return Err("only lwm2m devices register (--profile lwm2m)".into());
            }
            let Some(gateway) = self.gateway else {
                return Err("--mode register needs --gateway <coap(s)://addr:port>".into());
            };
            if gateway.scheme.as_str() != self.security.scheme() {
                return Err(format!(
                    "--gateway {gateway}: --security {} registers over {}://",
                    self.security.as_str(),
                    self.security.scheme()
                ));
            }
            if self.in_flight == 0 {
                return Err("--in-flight must be at least 1".into());
            }
            if self.count > 200 * 256 {
                return Err(
                    "at most 51200 registering devices (one source IP each in 127.1.0.0/16)".into(),
                );
            }
        }
        Plan::new(self.count, self.fractions)
    }

    /// `certs/<name>.pem` (or `.key`), absolute when the folder is.
    pub fn cert_file(&self, name: &str, ext: &str) -> PathBuf {
        let p = self.certs.join(format!("{name}.{ext}"));
        std::path::absolute(&p).unwrap_or(p)
    }

    /// Writes the test PKI into the certs folder if X.509 is asked for and it is missing.
    pub fn ensure_certs(&self) -> Result<(), String> {
        if self.security != Security::X509 {
            return Ok(());
        }
        let needed = [
            "ca.pem",
            "gateway.pem",
            "gateway.key",
            "devA.pem",
            "devA.key",
        ];
        if needed.iter().all(|f| self.certs.join(f).exists()) {
            return Ok(());
        }
        crate::pki::write_test_pki(&self.certs)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
