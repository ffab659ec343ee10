//! `[proxy]` and the device `prefix` key: how servers reach end devices through the gateway
//! (issue 8, DESIGN.md §6). A server sends `METHOD /<prefix>/<path>`; the gateway forwards
//! `<path>` to the device whose `prefix` it is, if a privilege or the device's own ACL allows.
//!
//! ```toml
//! [proxy]
//! device_acl_ttl_ms = 10000   # how long a device's own ACL, read for a fallback decision, is reused
//! deadline_ms = 5000          # a proxied request without a device answer by then gets 5.04
//! max_body_bytes = 65536      # the largest body forwarded either way (Block1/Block2 reassembled)
//!
//! [[devices]]
//! id = "dev1"
//! prefix = "d1"               # the first path segment servers address it by (default: its id)
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, check_identifier, invalid};

/// Validated `[proxy]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// How long a device's own ACL read for a fallback decision is reused (0: every request).
    pub device_acl_ttl: Duration,
    /// A proxied request that has no device answer by then is answered 5.04.
    pub deadline: Duration,
    /// The largest body forwarded in either direction.
    pub max_body: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            device_acl_ttl: Duration::from_millis(DEFAULT_ACL_TTL_MS),
            deadline: Duration::from_millis(DEFAULT_DEADLINE_MS),
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

const DEFAULT_ACL_TTL_MS: u64 = 10_000;
const DEFAULT_DEADLINE_MS: u64 = 5_000;
const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// `[proxy]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    device_acl_ttl_ms: Option<u64>,
    deadline_ms: Option<u64>,
    max_body_bytes: Option<usize>,
}

impl RawProxy {
    pub(crate) fn validate(self) -> Result<ProxyConfig, ConfigError> {
        let d = ProxyConfig::default();
        let ttl = self
            .device_acl_ttl_ms
            .map_or(d.device_acl_ttl, Duration::from_millis);
        if ttl > Duration::from_secs(3600) {
            return Err(invalid(
                "proxy.device_acl_ttl_ms",
                "must be at most 3600000",
            ));
        }
        let deadline = match self.deadline_ms {
            None => d.deadline,
            Some(ms) if (1..=600_000).contains(&ms) => Duration::from_millis(ms),
            Some(_) => return Err(invalid("proxy.deadline_ms", "must be 1 to 600000")),
        };
        let max_body = match self.max_body_bytes {
            None => d.max_body,
            Some(n) if (1024..=16 * 1024 * 1024).contains(&n) => n,
            Some(_) => {
                return Err(invalid("proxy.max_body_bytes", "must be 1024 to 16777216"));
            }
        };
        Ok(ProxyConfig {
            device_acl_ttl: ttl,
            deadline,
            max_body,
        })
    }
}

/// First path segments the gateway answers itself: no device may take them as its prefix.
pub const RESERVED_PREFIXES: [&str; 3] = ["GwConfig", ".well-known", "25"];

/// Checks the devices' prefixes (each device's `prefix`, else its id): a valid identifier,
/// not one the gateway answers itself, and one device per prefix. `prefixes` pairs each
/// device's config key (`devices[3]`) with its prefix.
pub(crate) fn check_prefixes<'a>(
    prefixes: impl IntoIterator<Item = (String, &'a str)>,
) -> Result<(), ConfigError> {
    let mut seen: BTreeMap<&str, String> = BTreeMap::new();
    for (key, prefix) in prefixes {
        check_identifier(prefix).map_err(|p| invalid(format!("{key}.prefix"), p))?;
        if RESERVED_PREFIXES.contains(&prefix) {
            return Err(invalid(
                format!("{key}.prefix"),
                format!("'{prefix}' is a path the gateway answers itself"),
            ));
        }
        if let Some(other) = seen.insert(prefix, key.clone()) {
            return Err(invalid(
                format!("{key}.prefix"),
                format!("'{prefix}' is also the prefix of {other}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        assert_eq!(
            RawProxy::default().validate().unwrap(),
            ProxyConfig::default()
        );
        let raw = RawProxy {
            deadline_ms: Some(0),
            ..RawProxy::default()
        };
        assert!(raw.validate().is_err());
        let raw = RawProxy {
            max_body_bytes: Some(10),
            ..RawProxy::default()
        };
        assert!(raw.validate().is_err());
    }

    #[test]
    fn prefixes_are_unique_and_not_reserved() {
        let ok = [
            ("devices[0]".to_string(), "d1"),
            ("devices[1]".into(), "d2"),
        ];
        assert!(check_prefixes(ok).is_ok());
        let twice = [
            ("devices[0]".to_string(), "d1"),
            ("devices[1]".into(), "d1"),
        ];
        let e = check_prefixes(twice).unwrap_err().to_string();
        assert!(
            e.contains("devices[1].prefix") && e.contains("devices[0]"),
            "{e}"
        );
        for reserved in RESERVED_PREFIXES {
            assert!(check_prefixes([("devices[0]".to_string(), reserved)]).is_err());
        }
        assert!(check_prefixes([("devices[0]".to_string(), "a/b")]).is_err());
    }
}
