//! `[audit]`: the audit trail of privilege changes and proxied decisions (`crate::audit`).
//!
//! ```toml
//! [audit]
//! enabled = true          # record privilege writes and proxied decisions
//! max_records = 100000    # records kept in the store; the oldest are deleted first
//! ```

use serde::Deserialize;

use crate::config::{ConfigError, invalid};

/// The largest `max_records` (the table's size is bounded by it; 10⁸ records are some GB).
pub const MAX_RECORDS_LIMIT: usize = 100_000_000;

/// Validated `[audit]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    pub enabled: bool,
    /// Records kept (by count; at least 1).
    pub max_records: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            max_records: 100_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    #[serde(default = "default_enabled")]
    enabled: bool,
    #[serde(default = "default_max_records")]
    max_records: usize,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            enabled: default_enabled(),
            max_records: default_max_records(),
        }
    }
}

fn default_enabled() -> bool {
    AuditConfig::default().enabled
}

fn default_max_records() -> usize {
    AuditConfig::default().max_records
}

impl RawAudit {
    pub(crate) fn validate(self) -> Result<AuditConfig, ConfigError> {
        if !(1..=MAX_RECORDS_LIMIT).contains(&self.max_records) {
            return Err(invalid(
                "audit.max_records",
                format!("must be 1 to {MAX_RECORDS_LIMIT}"),
            ));
        }
        Ok(AuditConfig {
            enabled: self.enabled,
            max_records: self.max_records,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[gateway]\nlisten = [\"coaps://127.0.0.1:5684\"]\nstore = \"x.redb\"\n";

    #[test]
    fn defaults_keys_and_bounds() {
        let c = Config::parse(BASE).unwrap();
        assert_eq!(c.audit, super::AuditConfig::default());
        assert!(c.audit.enabled);
        assert_eq!(c.audit.max_records, 100_000);
        let c = Config::parse(&format!(
            "{BASE}[audit]\nenabled = false\nmax_records = 5\n"
        ))
        .unwrap();
        assert_eq!((c.audit.enabled, c.audit.max_records), (false, 5));
        let e = Config::parse(&format!("{BASE}[audit]\nmax_records = 0\n")).unwrap_err();
        assert!(e.to_string().contains("audit.max_records"), "{e}");
        assert!(Config::parse(&format!("{BASE}[audit]\nretention = 5\n")).is_err());
    }
}
