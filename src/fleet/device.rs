//! One device of a fleet as a simulator config: its id, credentials, and the ACL its role
//! calls for (normal: ServerA may Replace `/3/0`; deny: another server owns it; timeout:
//! every answer an hour late; garbage: 2.05 with no valid ACL).

use std::collections::BTreeMap;

use crate::device::{AcInstance, Behaviour, DeviceSimConfig};
use crate::fleet::{DEVICE_CERT, FleetSpec, Mode, Profile, Role, Security, device_id};

/// ServerA's Short Server ID in the gateway config the fleet writes.
pub const SERVER_A_SSID: u16 = 101;
/// ServerB's.
pub const SERVER_B_SSID: u16 = 102;
/// A timeout device answers this late: later than any verification deadline.
const NEVER_MS: u64 = 3_600_000;

/// Device `i`'s PSK key (dialled and registering alike).
pub fn psk_key(i: usize) -> String {
    format!("key{i}")
}

/// The PSK identity device `i` expects from (dialled) or presents to (registering) the
/// gateway.
pub fn psk_identity(mode: Mode, i: usize) -> String {
    match mode {
        Mode::Dialed => "gateway".to_owned(),
        Mode::Register => device_id(i),
    }
}

/// The simulator config of device `i` with `role`.
pub fn config(spec: &FleetSpec, i: usize, role: Role) -> DeviceSimConfig {
    let mut cfg = DeviceSimConfig {
        id: device_id(i),
        profile: spec.profile.as_str().to_owned(),
        behaviour: if role == Role::Garbage {
            Behaviour::Garbage
        } else {
            Behaviour::Normal
        },
        slow_ms: (role == Role::Timeout).then_some(NEVER_MS),
        quiet: true,
        ..DeviceSimConfig::default()
    };
    match spec.mode {
        Mode::Dialed => cfg.listen = format!("{}://127.0.0.1:0", spec.security.scheme()),
        Mode::Register => {
            cfg.register = spec.gateway.iter().map(|g| g.to_string()).collect();
            // No Update falls into a measurement (the first is due after 3 507 s).
            cfg.lifetime_s = Some(3600);
        }
    }
    match spec.security {
        Security::Psk => {
            cfg.psk_identity = Some(psk_identity(spec.mode, i));
            cfg.psk_key = Some(psk_key(i));
        }
        Security::X509 => {
            cfg.cert = Some(spec.cert_file(DEVICE_CERT, "pem"));
            cfg.key = Some(spec.cert_file(DEVICE_CERT, "key"));
            cfg.ca = Some(spec.cert_file("ca", "pem"));
        }
        Security::Nosec => {}
    }
    let owner = if role == Role::Deny {
        SERVER_B_SSID
    } else {
        SERVER_A_SSID
    };
    match spec.profile {
        Profile::Lwm2m => {
            cfg.access_control = vec![AcInstance {
                instance: 0,
                object: 3,
                object_instance: 0,
                owner,
                acl: BTreeMap::new(),
            }];
        }
        Profile::Dm => {
            let replace = if role == Role::Deny {
                "ServerB"
            } else {
                "ServerA"
            };
            cfg.acls = BTreeMap::from([
                ("/".to_owned(), "Get=*".to_owned()),
                ("/3".to_owned(), format!("Get=*&Replace={replace}")),
                ("/3/0".to_owned(), String::new()),
            ]);
        }
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Fractions;

    fn spec(mode: Mode, security: Security, profile: Profile) -> FleetSpec {
        FleetSpec {
            count: 3,
            profile,
            security,
            mode,
            fractions: Fractions::default(),
            gateway: Some("coaps://127.0.0.1:5784".parse().unwrap()),
            in_flight: 8,
            register_patience: std::time::Duration::from_secs(5),
            certs: "certs".into(),
        }
    }

    #[test]
    fn a_denying_lwm2m_device_is_owned_by_server_b() {
        let s = spec(Mode::Dialed, Security::Psk, Profile::Lwm2m);
        let normal = config(&s, 1, Role::Normal);
        let deny = config(&s, 1, Role::Deny);
        assert_eq!(normal.access_control[0].owner, SERVER_A_SSID);
        assert_eq!(deny.access_control[0].owner, SERVER_B_SSID);
        assert_eq!(normal.listen, "coaps://127.0.0.1:0");
        assert_eq!(normal.psk_identity.as_deref(), Some("gateway"));
        assert_eq!(normal.psk_key.as_deref(), Some("key1"));
    }

    #[test]
    fn roles_map_to_simulator_behaviours() {
        let s = spec(Mode::Dialed, Security::Nosec, Profile::Dm);
        assert_eq!(config(&s, 0, Role::Garbage).behaviour, Behaviour::Garbage);
        assert!(config(&s, 0, Role::Timeout).slow_ms.is_some());
        assert!(config(&s, 0, Role::Normal).slow_ms.is_none());
        assert_eq!(
            config(&s, 0, Role::Deny).acls["/3"],
            "Get=*&Replace=ServerB"
        );
        assert_eq!(config(&s, 0, Role::Normal).listen, "coap://127.0.0.1:0");
    }

    #[test]
    fn a_registering_device_presents_its_own_identity() {
        let s = spec(Mode::Register, Security::Psk, Profile::Lwm2m);
        let c = config(&s, 2, Role::Normal);
        assert_eq!(c.register, vec!["coaps://127.0.0.1:5784".to_owned()]);
        assert_eq!(c.psk_identity.as_deref(), Some("dev00002"));
        assert!(c.listen.is_empty());
    }
}
