//! The gateway TOML that matches a fleet (`privgw fleet --write-config`): servers ServerA and
//! ServerB with PSKs, every device (dialled: its URI and credentials; registering: as an
//! expected registration) and one group `ALL` of all of them.

use std::fmt::Write as _;
use std::path::Path;

use crate::config::EndpointUri;
use crate::fleet::device::{SERVER_A_SSID, SERVER_B_SSID, psk_identity, psk_key};
use crate::fleet::{DEVICE_CERT, FleetSpec, Mode, Security, device_id};

/// ServerA's and ServerB's PSKs (identity, key) in the written config.
pub const SERVER_A_PSK: (&str, &str) = ("serverA", "secretA");
pub const SERVER_B_PSK: (&str, &str) = ("serverB", "secretB");

/// What the gateway's own side looks like.
#[derive(Debug, Clone)]
pub struct GatewaySide<'a> {
    /// The gateway's north listener (`--gateway-listen`).
    pub listen: EndpointUri,
    /// Its store file (relative paths are relative to the config file).
    pub store: &'a Path,
    /// `device_timeout_ms`: the deadline of one device's read, handshake included.
    pub device_timeout_ms: u64,
}

/// The gateway TOML. `uris` are the dialled devices' addresses in device order (unused in
/// register mode, where the devices register with `spec.gateway`).
pub fn gateway_toml(spec: &FleetSpec, side: &GatewaySide<'_>, uris: &[EndpointUri]) -> String {
    let mut t = String::with_capacity(200 + spec.count * 110);
    let _ = write!(
        t,
        "# Written by `privgw fleet`: {} {} {} devices ({}).\n\
         [gateway]\nlisten = [\"{}\"]\nstore = {:?}\ndevice_timeout_ms = {}\nmax_in_flight = 256\n",
        spec.count,
        spec.mode.as_str(),
        spec.security.as_str(),
        spec.profile.as_str(),
        side.listen,
        side.store,
        side.device_timeout_ms,
    );
    if spec.security == Security::X509 {
        let _ = write!(
            t,
            "cert = {:?}\nkey = {:?}\nca = {:?}\n",
            spec.cert_file("gateway", "pem"),
            spec.cert_file("gateway", "key"),
            spec.cert_file("ca", "pem"),
        );
    }
    for (id, ssid, (identity, key)) in [
        ("ServerA", SERVER_A_SSID, SERVER_A_PSK),
        ("ServerB", SERVER_B_SSID, SERVER_B_PSK),
    ] {
        let _ = write!(
            t,
            "\n[[servers]]\nid = \"{id}\"\nssid = {ssid}\npsk_identity = \"{identity}\"\npsk_key = \"{key}\"\n"
        );
    }
    if let (Mode::Register, Some(gateway)) = (spec.mode, spec.gateway) {
        let _ = write!(t, "\n[[lwm2m.listen]]\nuri = \"{gateway}\"\n");
    }
    let policy = match spec.profile {
        crate::fleet::Profile::Lwm2m => "owner",
        crate::fleet::Profile::Dm => "replace",
    };
    for i in 0..spec.count {
        let id = device_id(i);
        let _ = write!(
            t,
            "\n[[devices]]\nid = \"{id}\"\nprofile = \"{}\"\npolicy = \"{policy}\"\n",
            spec.profile.as_str()
        );
        match spec.mode {
            Mode::Dialed => {
                if let Some(uri) = uris.get(i) {
                    let _ = writeln!(t, "uri = \"{uri}\"");
                }
            }
            Mode::Register => t.push_str("registers = true\n"),
        }
        match spec.security {
            Security::Psk => {
                let _ = write!(
                    t,
                    "psk_identity = \"{}\"\npsk_key = \"{}\"\n",
                    psk_identity(spec.mode, i),
                    psk_key(i)
                );
            }
            Security::X509 => {
                let _ = writeln!(t, "cert_match = \"cn:{DEVICE_CERT}\"");
            }
            Security::Nosec if spec.mode == Mode::Register => t.push_str("nosec = true\n"),
            Security::Nosec => {}
        }
    }
    t.push_str("\n[[groups]]\nid = \"ALL\"\nmembers = [");
    for i in 0..spec.count {
        if i > 0 {
            t.push_str(", ");
        }
        let _ = write!(t, "\"{}\"", device_id(i));
    }
    t.push_str("]\n");
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::fleet::{Fractions, Profile};

    fn spec(mode: Mode, security: Security, profile: Profile) -> FleetSpec {
        FleetSpec {
            count: 3,
            profile,
            security,
            mode,
            fractions: Fractions::default(),
            gateway: Some(
                format!("{}://127.0.0.1:5784", security.scheme())
                    .parse()
                    .unwrap(),
            ),
            in_flight: 8,
            register_patience: std::time::Duration::from_secs(5),
            certs: concat!(env!("CARGO_MANIFEST_DIR"), "/certs").into(),
        }
    }

    fn side() -> GatewaySide<'static> {
        GatewaySide {
            listen: "coaps://127.0.0.1:5684".parse().unwrap(),
            store: Path::new("fleet.redb"),
            device_timeout_ms: 3000,
        }
    }

    fn uris() -> Vec<EndpointUri> {
        (0..3)
            .map(|i| format!("coaps://127.0.0.1:{}", 20000 + i).parse().unwrap())
            .collect()
    }

    #[test]
    fn every_written_config_is_one_the_gateway_accepts() {
        for mode in [Mode::Dialed, Mode::Register] {
            for security in [Security::Psk, Security::X509, Security::Nosec] {
                for profile in [Profile::Lwm2m, Profile::Dm] {
                    if mode == Mode::Register && profile == Profile::Dm {
                        continue;
                    }
                    let s = spec(mode, security, profile);
                    let uris: Vec<EndpointUri> = uris()
                        .into_iter()
                        .map(|u| {
                            format!("{}://{}", security.scheme(), u.addr)
                                .parse()
                                .unwrap()
                        })
                        .collect();
                    let toml = gateway_toml(&s, &side(), &uris);
                    let config = Config::parse(&toml).unwrap_or_else(|e| {
                        panic!("{mode:?} {security:?} {profile:?}: {e}\n{toml}")
                    });
                    assert_eq!(config.devices.len(), 3, "{toml}");
                }
            }
        }
    }

    #[test]
    fn the_group_names_every_device_and_dialed_devices_their_uri() {
        let toml = gateway_toml(
            &spec(Mode::Dialed, Security::Psk, Profile::Lwm2m),
            &side(),
            &uris(),
        );
        assert!(toml.contains("members = [\"dev00000\", \"dev00001\", \"dev00002\"]"));
        assert!(toml.contains(
            "uri = \"coaps://127.0.0.1:20002\"\npsk_identity = \"gateway\"\npsk_key = \"key2\""
        ));
        let reg = gateway_toml(
            &spec(Mode::Register, Security::Psk, Profile::Lwm2m),
            &side(),
            &[],
        );
        assert!(reg.contains("[[lwm2m.listen]]\nuri = \"coaps://127.0.0.1:5784\""));
        assert!(reg.contains("registers = true\npsk_identity = \"dev00001\"\npsk_key = \"key1\""));
    }
}
