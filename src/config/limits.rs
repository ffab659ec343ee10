//! The `[limits]` table: bounds on what authorised clients can make the gateway hold —
//! privileges in the store, the page size of the listing, the per-peer caches of the CoAP
//! layer. Every key is optional; the defaults suit a fleet gateway.
//!
//! ```toml
//! [limits]
//! max_privileges = 100000            # in the store, all servers together
//! max_privileges_per_server = 10000  # per Grantor (the server whose verified write made it)
//! list_default_limit = 100           # GET /GwConfig/Privileges page size without ?limit=
//! list_max_limit = 1000              # the largest ?limit= honoured (larger is clamped)
//! block_cache_session_bytes = 1048576   # Block2 bodies kept per session
//! block_cache_session_entries = 16
//! block_cache_total_bytes = 67108864    # all sessions together
//! dedup_peer_entries = 512           # stored responses per peer for duplicate CONs
//! dedup_peer_bytes = 131072
//! dedup_total_entries = 65536        # all peers together
//! dedup_total_bytes = 16777216
//! ```

use serde::Deserialize;

use crate::coap::budget::{self, CacheLimits, SharedBudget};
use crate::config::{ConfigError, invalid};

/// Validated `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Privileges in the store, all servers together. Default 100 000.
    pub max_privileges: usize,
    /// Privileges whose Grantor is one server. Default 10 000.
    pub max_privileges_per_server: usize,
    /// Page size of the listing when the request gives no `limit`. Default 100.
    pub list_default_limit: usize,
    /// Largest page of the listing; an unpaged listing longer than this is paged. Default 1000.
    pub list_max_limit: usize,
    /// Block2 cache bytes per session. Default 1 MiB.
    pub block_cache_session_bytes: usize,
    /// Block2 cache bodies per session. Default 16.
    pub block_cache_session_entries: usize,
    /// Block2 cache bytes of all sessions. Default 64 MiB.
    pub block_cache_total_bytes: usize,
    /// Duplicate-table entries per peer. Default 512.
    pub dedup_peer_entries: usize,
    /// Duplicate-table bytes per peer. Default 128 KiB.
    pub dedup_peer_bytes: usize,
    /// Duplicate-table entries of all peers. Default 65 536.
    pub dedup_total_entries: usize,
    /// Duplicate-table bytes of all peers. Default 16 MiB.
    pub dedup_total_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_privileges: 100_000,
            max_privileges_per_server: 10_000,
            list_default_limit: 100,
            list_max_limit: 1000,
            block_cache_session_bytes: budget::DEFAULT_BLOCK2_SESSION_BYTES,
            block_cache_session_entries: budget::DEFAULT_BLOCK2_SESSION_ENTRIES,
            block_cache_total_bytes: budget::DEFAULT_BLOCK2_TOTAL_BYTES,
            dedup_peer_entries: budget::DEFAULT_DEDUP_PEER_ENTRIES,
            dedup_peer_bytes: budget::DEFAULT_DEDUP_PEER_BYTES,
            dedup_total_entries: budget::DEFAULT_DEDUP_TOTAL_ENTRIES,
            dedup_total_bytes: budget::DEFAULT_DEDUP_TOTAL_BYTES,
        }
    }
}

impl Limits {
    /// Fresh shared budgets of these sizes, for one gateway's sessions.
    pub fn cache_limits(&self) -> CacheLimits {
        CacheLimits {
            block2_session_entries: self.block_cache_session_entries,
            block2_session_bytes: self.block_cache_session_bytes,
            block2: SharedBudget::new(
                budget::DEFAULT_BLOCK2_TOTAL_ENTRIES,
                self.block_cache_total_bytes,
            ),
            dedup_peer_entries: self.dedup_peer_entries,
            dedup_peer_bytes: self.dedup_peer_bytes,
            dedup: SharedBudget::new(self.dedup_total_entries, self.dedup_total_bytes),
        }
    }
}

/// `[limits]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_privileges: Option<usize>,
    max_privileges_per_server: Option<usize>,
    list_default_limit: Option<usize>,
    list_max_limit: Option<usize>,
    block_cache_session_bytes: Option<usize>,
    block_cache_session_entries: Option<usize>,
    block_cache_total_bytes: Option<usize>,
    dedup_peer_entries: Option<usize>,
    dedup_peer_bytes: Option<usize>,
    dedup_total_entries: Option<usize>,
    dedup_total_bytes: Option<usize>,
}

/// `limits.<key>` must be at least 1 (and at most `max`).
fn positive(
    key: &str,
    value: Option<usize>,
    default: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    let v = value.unwrap_or(default);
    if (1..=max).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(
            format!("limits.{key}"),
            format!("must be 1 to {max}"),
        ))
    }
}

impl RawLimits {
    pub(super) fn validate(self) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        const BIG: usize = 1 << 40;
        let l = Limits {
            max_privileges: positive("max_privileges", self.max_privileges, d.max_privileges, BIG)?,
            max_privileges_per_server: positive(
                "max_privileges_per_server",
                self.max_privileges_per_server,
                d.max_privileges_per_server,
                BIG,
            )?,
            list_default_limit: positive(
                "list_default_limit",
                self.list_default_limit,
                d.list_default_limit,
                10_000,
            )?,
            list_max_limit: positive(
                "list_max_limit",
                self.list_max_limit,
                d.list_max_limit,
                10_000,
            )?,
            block_cache_session_bytes: positive(
                "block_cache_session_bytes",
                self.block_cache_session_bytes,
                d.block_cache_session_bytes,
                BIG,
            )?,
            block_cache_session_entries: positive(
                "block_cache_session_entries",
                self.block_cache_session_entries,
                d.block_cache_session_entries,
                65_536,
            )?,
            block_cache_total_bytes: positive(
                "block_cache_total_bytes",
                self.block_cache_total_bytes,
                d.block_cache_total_bytes,
                BIG,
            )?,
            dedup_peer_entries: positive(
                "dedup_peer_entries",
                self.dedup_peer_entries,
                d.dedup_peer_entries,
                65_536,
            )?,
            dedup_peer_bytes: positive(
                "dedup_peer_bytes",
                self.dedup_peer_bytes,
                d.dedup_peer_bytes,
                BIG,
            )?,
            dedup_total_entries: positive(
                "dedup_total_entries",
                self.dedup_total_entries,
                d.dedup_total_entries,
                BIG,
            )?,
            dedup_total_bytes: positive(
                "dedup_total_bytes",
                self.dedup_total_bytes,
                d.dedup_total_bytes,
                BIG,
            )?,
        };
        if l.max_privileges_per_server > l.max_privileges {
            return Err(invalid(
                "limits.max_privileges_per_server",
                "must not exceed limits.max_privileges",
            ));
        }
        if l.list_default_limit > l.list_max_limit {
            return Err(invalid(
                "limits.list_default_limit",
                "must not exceed limits.list_max_limit",
            ));
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[gateway]\nlisten = [\"coap://127.0.0.1:5683\"]\n";

    #[test]
    fn limits_default_when_absent() {
        let c = Config::parse(BASE).unwrap();
        assert_eq!(c.limits, super::Limits::default());
        assert_eq!(c.limits.max_privileges, 100_000);
        assert_eq!(c.limits.max_privileges_per_server, 10_000);
    }

    #[test]
    fn limits_are_read_and_checked() {
        let c = Config::parse(&format!("{BASE}[limits]\nmax_privileges = 5\nmax_privileges_per_server = 2\nlist_default_limit = 3\n")).unwrap();
        assert_eq!(
            (c.limits.max_privileges, c.limits.max_privileges_per_server),
            (5, 2)
        );
        assert_eq!(c.limits.list_default_limit, 3);
        let e = Config::parse(&format!(
            "{BASE}[limits]\nmax_privileges = 5\nmax_privileges_per_server = 6\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("limits.max_privileges_per_server"), "{e}");
        let e = Config::parse(&format!("{BASE}[limits]\ndedup_peer_bytes = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.dedup_peer_bytes"), "{e}");
        let e = Config::parse(&format!("{BASE}[limits]\nbogus = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
