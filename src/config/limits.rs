//! The `[limits]` table: every resource cap of the gateway in one place — privileges in the
//! store, the page size of the listing, the per-peer caches of the CoAP layer, the failure
//! reports kept in memory, and the admission caps of the datagram (`coap://`, `coaps://`) and
//! stream (`coap+tcp://`, `coaps+tcp://`) listeners. Every key is optional; the defaults suit
//! a fleet gateway. Errors name the key (`limits.tcp_max_per_ip: must be 1 to
//! tcp_max_connections`).
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
//! max_reports = 256                  # failure reports kept in memory
//! report_max_bytes = 16777216        # their CBOR size together
//! report_max_age_s = 600             # and for how long
//! udp_max_sessions = 65536           # per coap:// / coaps:// listener: live sessions
//! udp_max_sessions_per_ip = 256      #   of them from one source IP
//! dtls_max_handshakes = 256          # per coaps:// listener: handshakes in progress
//! dtls_max_handshakes_per_ip = 8     #   of them from one source IP
//! tcp_max_connections = 250          # per coap+tcp:// / coaps+tcp:// listener
//! tcp_max_per_ip = 16                #   from one IPv4 address or IPv6 /64
//! tcp_max_pre_auth = 64              #   not yet authenticated
//! tcp_auth_timeout_ms = 2000         # accept → TLS handshake and first CSM
//! max_registrations = 100000         # LwM2M registrations held (all listeners, all accounts)
//! ```

use serde::Deserialize;

use std::time::Duration;

use crate::coap::budget::{self, CacheLimits, SharedBudget};
use crate::config::{ConfigError, invalid};
use crate::gateway::reports::ReportLimits;
use crate::transport::mux::DatagramLimits;
use crate::transport::tcp::StreamLimits;
use crate::transport::tcp::admission::AdmissionLimits;

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
    /// Failure reports kept in memory. Default 256.
    pub max_reports: usize,
    /// Their CBOR size together (a single larger report is kept alone). Default 16 MiB.
    pub report_max_bytes: usize,
    /// How long a failure report is kept (`report_max_age_s`). Default 600 s.
    pub report_max_age: Duration,
    /// Live sessions of one `coap://` or `coaps://` listener, handshakes included.
    /// Default 65 536.
    pub udp_max_sessions: usize,
    /// Live sessions of one such listener from one source IP (all ports). Default 256.
    pub udp_max_sessions_per_ip: usize,
    /// DTLS handshakes in progress on one `coaps://` listener. Default 256.
    pub dtls_max_handshakes: usize,
    /// DTLS handshakes in progress on one `coaps://` listener from one source IP. Default 8.
    pub dtls_max_handshakes_per_ip: usize,
    /// Open connections of one `coap+tcp://` or `coaps+tcp://` listener. Default 250.
    pub tcp_max_connections: usize,
    /// Connections of one such listener from one IPv4 address or IPv6 /64. Default 16.
    pub tcp_max_per_ip: usize,
    /// Unauthenticated connections of one such listener. Default 64.
    pub tcp_max_pre_auth: usize,
    /// From accept to TLS handshake done and first CSM received (`tcp_auth_timeout_ms`).
    /// Default 2 s.
    pub tcp_auth_timeout: Duration,
    /// LwM2M registrations held, all listeners and accounts together. Default 100 000.
    pub max_registrations: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let datagram = DatagramLimits::default();
        let stream = StreamLimits::default();
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
            max_reports: 256,
            report_max_bytes: 16 << 20,
            report_max_age: Duration::from_secs(600),
            udp_max_sessions: datagram.max_sessions,
            udp_max_sessions_per_ip: datagram.max_sessions_per_ip,
            dtls_max_handshakes: datagram.max_pending,
            dtls_max_handshakes_per_ip: datagram.max_pending_per_ip,
            tcp_max_connections: stream.max_connections,
            tcp_max_per_ip: stream.admission.max_per_source,
            tcp_max_pre_auth: stream.admission.max_pre_auth,
            tcp_auth_timeout: stream.auth_timeout,
            max_registrations: 100_000,
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
            block2_per_identity: CacheLimits::identity_share(
                budget::DEFAULT_BLOCK2_TOTAL_ENTRIES,
                self.block_cache_total_bytes,
            ),
            dedup_peer_entries: self.dedup_peer_entries,
            dedup_peer_bytes: self.dedup_peer_bytes,
            dedup: SharedBudget::new(self.dedup_total_entries, self.dedup_total_bytes),
        }
    }

    /// The bounds of the failure-report store.
    pub fn report_limits(&self) -> ReportLimits {
        ReportLimits {
            max_count: self.max_reports,
            max_bytes: self.report_max_bytes,
            max_age: self.report_max_age,
        }
    }

    /// The caps of each `coap://` / `coaps://` listener.
    pub fn datagram_limits(&self) -> DatagramLimits {
        DatagramLimits {
            max_sessions: self.udp_max_sessions,
            max_sessions_per_ip: self.udp_max_sessions_per_ip,
            max_pending: self.dtls_max_handshakes,
            max_pending_per_ip: self.dtls_max_handshakes_per_ip,
        }
    }

    /// The caps of each `coap+tcp://` / `coaps+tcp://` listener.
    pub fn stream_limits(&self) -> StreamLimits {
        StreamLimits {
            max_connections: self.tcp_max_connections,
            admission: AdmissionLimits {
                max_per_source: self.tcp_max_per_ip,
                max_pre_auth: self.tcp_max_pre_auth,
            },
            auth_timeout: self.tcp_auth_timeout,
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
    max_reports: Option<usize>,
    report_max_bytes: Option<usize>,
    report_max_age_s: Option<u64>,
    udp_max_sessions: Option<usize>,
    udp_max_sessions_per_ip: Option<usize>,
    dtls_max_handshakes: Option<usize>,
    dtls_max_handshakes_per_ip: Option<usize>,
    tcp_max_connections: Option<usize>,
    tcp_max_per_ip: Option<usize>,
    tcp_max_pre_auth: Option<usize>,
    tcp_auth_timeout_ms: Option<u64>,
    max_registrations: Option<usize>,
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

/// `limits.<key>` must be `min` to `max`; the error says so in `bound` (a number with its
/// unit, or the key that bounds it).
fn within<T: PartialOrd + Copy>(
    key: &str,
    value: Option<T>,
    default: T,
    (min, max): (T, T),
    bound: &str,
) -> Result<T, ConfigError> {
    let v = value.unwrap_or(default);
    if min <= v && v <= max {
        Ok(v)
    } else {
        Err(invalid(format!("limits.{key}"), format!("must be {bound}")))
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
            max_reports: within(
                "max_reports",
                self.max_reports,
                d.max_reports,
                (1, 65_536),
                "1 to 65536",
            )?,
            report_max_bytes: within(
                "report_max_bytes",
                self.report_max_bytes,
                d.report_max_bytes,
                (1024, 1 << 30),
                "1024 to 1073741824",
            )?,
            report_max_age: Duration::from_secs(within(
                "report_max_age_s",
                self.report_max_age_s,
                d.report_max_age.as_secs(),
                (1, 86_400),
                "1 to 86400 s",
            )?),
            ..d.clone()
        };
        let udp_max_sessions = within(
            "udp_max_sessions",
            self.udp_max_sessions,
            d.udp_max_sessions,
            (1, 1 << 20),
            "1 to 1048576",
        )?;
        let dtls_max_handshakes = within(
            "dtls_max_handshakes",
            self.dtls_max_handshakes,
            d.dtls_max_handshakes,
            (1, udp_max_sessions),
            "1 to udp_max_sessions",
        )?;
        let tcp_max_connections = within(
            "tcp_max_connections",
            self.tcp_max_connections,
            d.tcp_max_connections,
            (1, 65_536),
            "1 to 65536",
        )?;
        let default_auth_ms = u64::try_from(d.tcp_auth_timeout.as_millis()).unwrap_or(2000);
        let l = Limits {
            udp_max_sessions,
            udp_max_sessions_per_ip: within(
                "udp_max_sessions_per_ip",
                self.udp_max_sessions_per_ip,
                d.udp_max_sessions_per_ip,
                (1, udp_max_sessions),
                "1 to udp_max_sessions",
            )?,
            dtls_max_handshakes,
            dtls_max_handshakes_per_ip: within(
                "dtls_max_handshakes_per_ip",
                self.dtls_max_handshakes_per_ip,
                d.dtls_max_handshakes_per_ip,
                (1, dtls_max_handshakes),
                "1 to dtls_max_handshakes",
            )?,
            tcp_max_connections,
            tcp_max_per_ip: within(
                "tcp_max_per_ip",
                self.tcp_max_per_ip,
                d.tcp_max_per_ip,
                (1, tcp_max_connections),
                "1 to tcp_max_connections",
            )?,
            tcp_max_pre_auth: within(
                "tcp_max_pre_auth",
                self.tcp_max_pre_auth,
                d.tcp_max_pre_auth,
                (1, tcp_max_connections),
                "1 to tcp_max_connections",
            )?,
            tcp_auth_timeout: Duration::from_millis(within(
                "tcp_auth_timeout_ms",
                self.tcp_auth_timeout_ms,
                default_auth_ms,
                (100, 60_000),
                "100 to 60000 ms",
            )?),
            max_registrations: positive(
                "max_registrations",
                self.max_registrations,
                d.max_registrations,
                10_000_000,
            )?,
            ..l
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
    use std::time::Duration;

    use crate::config::Config;
    use crate::gateway::reports::ReportLimits;
    use crate::transport::mux::{DatagramLimits, MuxConfig};
    use crate::transport::tcp::StreamLimits;

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

    /// The error of `BASE` with these `[limits]` lines.
    fn error_of(lines: &str) -> String {
        Config::parse(&format!("{BASE}[limits]\n{lines}\n"))
            .expect_err("must fail")
            .to_string()
    }

    #[test]
    fn defaults_are_todays_caps() {
        let l = super::Limits::default();
        assert_eq!(
            l.report_limits(),
            ReportLimits {
                max_count: 256,
                max_bytes: 16 << 20,
                max_age: Duration::from_secs(600),
            }
        );
        assert_eq!(l.stream_limits(), StreamLimits::default());
        assert_eq!(
            l.datagram_limits(),
            DatagramLimits {
                max_sessions: 65_536,
                max_sessions_per_ip: 256,
                max_pending: 256,
                max_pending_per_ip: 8,
            }
        );
        let mux = MuxConfig::default();
        assert_eq!((mux.max_sessions, mux.max_sessions_per_ip), (65_536, 256));
        assert_eq!((mux.max_pending, mux.max_pending_per_ip), (256, 8));
    }

    #[test]
    fn report_bounds_are_read_and_checked() {
        let keys = "max_reports = 8\nreport_max_bytes = 4096\nreport_max_age_s = 30";
        let c = Config::parse(&format!("{BASE}[limits]\n{keys}\n")).expect("valid");
        assert_eq!(
            c.limits.report_limits(),
            ReportLimits {
                max_count: 8,
                max_bytes: 4096,
                max_age: Duration::from_secs(30),
            }
        );
        for (line, key) in [
            ("report_max_bytes = 10", "limits.report_max_bytes"),
            ("max_reports = 0", "limits.max_reports"),
            ("report_max_age_s = 0", "limits.report_max_age_s"),
        ] {
            let e = error_of(line);
            assert!(e.starts_with(key), "{line}: {e}");
        }
    }

    #[test]
    fn tcp_limits_load_and_are_checked() {
        let keys = [
            "tcp_max_connections = 100",
            "tcp_max_per_ip = 4",
            "tcp_max_pre_auth = 20",
            "tcp_auth_timeout_ms = 1500",
        ];
        let c = Config::parse(&format!("{BASE}[limits]\n{}\n", keys.join("\n"))).expect("valid");
        let l = c.limits.stream_limits();
        assert_eq!(l.max_connections, 100);
        assert_eq!(l.admission.max_per_source, 4);
        assert_eq!(l.admission.max_pre_auth, 20);
        assert_eq!(l.auth_timeout, Duration::from_millis(1500));
        for (line, key) in [
            ("tcp_max_pre_auth = 300", "limits.tcp_max_pre_auth"),
            ("tcp_max_per_ip = 0", "limits.tcp_max_per_ip"),
            ("tcp_auth_timeout_ms = 5", "limits.tcp_auth_timeout_ms"),
            ("tcp_max_connections = 0", "limits.tcp_max_connections"),
        ] {
            let e = error_of(line);
            assert!(e.starts_with(key), "{line}: {e}");
        }
        assert_eq!(
            error_of("tcp_max_per_ip = 251"),
            "limits.tcp_max_per_ip: must be 1 to tcp_max_connections"
        );
        assert!(error_of("tcp_max_idle = 3").contains("tcp_max_idle"));
    }

    #[test]
    fn datagram_limits_load_and_are_checked() {
        let keys = [
            "udp_max_sessions = 1000",
            "udp_max_sessions_per_ip = 10",
            "dtls_max_handshakes = 50",
            "dtls_max_handshakes_per_ip = 2",
        ];
        let c = Config::parse(&format!("{BASE}[limits]\n{}\n", keys.join("\n"))).expect("valid");
        assert_eq!(
            c.limits.datagram_limits(),
            DatagramLimits {
                max_sessions: 1000,
                max_sessions_per_ip: 10,
                max_pending: 50,
                max_pending_per_ip: 2,
            }
        );
        for (line, error) in [
            (
                "udp_max_sessions = 0",
                "limits.udp_max_sessions: must be 1 to 1048576",
            ),
            (
                "udp_max_sessions_per_ip = 65537",
                "limits.udp_max_sessions_per_ip: must be 1 to udp_max_sessions",
            ),
            (
                "udp_max_sessions = 100\ndtls_max_handshakes = 101",
                "limits.dtls_max_handshakes: must be 1 to udp_max_sessions",
            ),
            (
                "dtls_max_handshakes_per_ip = 0",
                "limits.dtls_max_handshakes_per_ip: must be 1 to dtls_max_handshakes",
            ),
        ] {
            assert_eq!(error_of(line), error, "{line}");
        }
    }
}
