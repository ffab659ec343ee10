//! Prefix routing (issue 8 §1), sans-IO: which part of the gateway a northbound request is
//! for, by its first path segment.
//!
//! | first segment | destination |
//! |---|---|
//! | none, `GwConfig`, `.well-known` | the gateway's own resources (the Gateway Config MO) |
//! | `25` | the LwM2M Gateway object (device discovery) |
//! | a device's `prefix` (default: its DeviceID) | that device, with the segments after it |
//! | anything else | nobody: 4.04 |
//!
//! Config validation keeps prefixes unique and off the gateway's own names
//! ([`crate::config::proxy::RESERVED_PREFIXES`]).

use std::collections::HashMap;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination<'a, S> {
    /// The Gateway Config MO and `/.well-known/core`.
    Gateway,
    /// The LwM2M Gateway object `/25`, with the segments after `25`.
    GatewayObject(&'a [S]),
    /// A device: its DeviceID and the path on it.
    Device { device: &'a str, path: &'a [S] },
    /// A first segment that names nothing.
    Unknown(&'a str),
}

/// The device prefixes: prefix → DeviceID.
#[derive(Debug, Clone, Default)]
pub struct Prefixes {
    by_prefix: HashMap<String, String>,
}

impl Prefixes {
    /// From (prefix, DeviceID) pairs (unique prefixes, as config validation ensures; a later
    /// duplicate replaces an earlier one).
    pub fn new<P: Into<String>, D: Into<String>>(pairs: impl IntoIterator<Item = (P, D)>) -> Self {
        Prefixes {
            by_prefix: pairs
                .into_iter()
                .map(|(p, d)| (p.into(), d.into()))
                .collect(),
        }
    }

    /// The destination of a request with Uri-Path `segments`.
    pub fn route<'a, S: AsRef<str>>(&'a self, segments: &'a [S]) -> Destination<'a, S> {
        let Some((first, rest)) = segments.split_first() else {
            return Destination::Gateway;
        };
        match first.as_ref() {
            "GwConfig" | ".well-known" => Destination::Gateway,
            "25" => Destination::GatewayObject(rest),
            prefix => match self.by_prefix.get(prefix) {
                Some(device) => Destination::Device {
                    device: device.as_str(),
                    path: rest,
                },
                None => Destination::Unknown(first.as_ref()),
            },
        }
    }

    /// Every prefix, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.by_prefix.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_segment_decides() {
        let p = Prefixes::new([("d1", "dev1"), ("dev2", "dev2")]);
        let path = |s: &str| -> Vec<String> {
            s.split('/')
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        };
        let a = path("");
        assert_eq!(p.route(&a), Destination::Gateway);
        let a = path("/GwConfig/Privileges");
        assert_eq!(p.route(&a), Destination::Gateway);
        let a = path("/.well-known/core");
        assert_eq!(p.route(&a), Destination::Gateway);
        let a = path("/25/0/1");
        assert_eq!(p.route(&a), Destination::GatewayObject(&a[1..]));
        let a = path("/d1/3/0/1");
        assert_eq!(
            p.route(&a),
            Destination::Device {
                device: "dev1",
                path: &a[1..]
            }
        );
        let a = path("/dev1/3");
        assert_eq!(
            p.route(&a),
            Destination::Unknown("dev1"),
            "the id is not the prefix"
        );
        let a = path("/d1");
        assert_eq!(
            p.route(&a),
            Destination::Device {
                device: "dev1",
                path: &a[1..]
            }
        );
    }
}
