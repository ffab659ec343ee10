//! One audit record and its stored form: a privilege write decision ([`PrivilegeChange`])
//! or a proxied request's decision ([`ProxiedDecision`]), stamped with the wall-clock time.
//!
//! Stored and served as the same map (CBOR in the store, CBOR or JSON on the wire), so what
//! `GET /GwConfig/Audit` shows is what was written:
//!
//! | key | privilege change | proxied decision |
//! |---|---|---|
//! | `Kind` | `"privilege"` | `"proxied"` |
//! | `Time`, `TimeMs` | RFC 3339 (seconds), Unix milliseconds | same |
//! | `Server` | the writing server | the requesting server |
//! | `Command` | `Add`, `Replace`, `Delete` (`Add\|Replace`: a PUT refused before the store said which) | the request's command, absent when it had none |
//! | `Verdict` | `committed` / `refused` | `allowed` / `denied` |
//! | `Code` | the answer's code (`2.01`, `4.03`, …) | – |
//! | `Name`, `Entry` | the node and its leaves (`TargetID`, `TargetType`, `URI`, `ACL`), when known | – |
//! | `Verified`, `FailedCount` | devices verified / failing | – |
//! | `Reason` | why refused (absent when committed) | why allowed or denied |
//! | `Device`, `Method`, `Path`, `Grantor`, `LatencyUs` | – | the proxied request |
//!
//! Owns the encoding only: when records are made is the service's and the proxy's business,
//! where they go is [`crate::audit::AuditLog`]'s and the store's.

use std::time::{Duration, SystemTime};

use crate::acl::Operation;
use crate::mo::privilege::rfc3339;
use crate::mo::{Privilege, Value};
use crate::store::dedup::unix_ms;

/// The decision of the proxy on one proxied request (the proxy fills it in; see
/// [`crate::audit::AuditLog::proxied`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxiedDecision {
    /// ServerID of the requesting server.
    pub server: String,
    /// DeviceID.
    pub device: String,
    /// "GET", "PUT", ...
    pub method: &'static str,
    /// The device path, e.g. "/3/0/1".
    pub path: String,
    /// `None` when the request had no command (4.05/4.00).
    pub command: Option<Operation>,
    pub allowed: bool,
    /// e.g. "privilege p1", "device ACL", "no privilege and device ACL denies: ...".
    pub reason: String,
    /// The grantor when delegated over its account.
    pub grantor: Option<String>,
    pub latency: Duration,
}

/// Whether a privilege write was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Committed,
    Refused,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Committed => "committed",
            Verdict::Refused => "refused",
        }
    }
}

/// One privilege write decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivilegeChange {
    /// ServerID of the writing server.
    pub server: String,
    /// `Add`, `Replace`, `Delete`, or `Add|Replace` (a plain PUT refused by the gate).
    pub command: String,
    /// The node written, when known.
    pub name: Option<String>,
    /// Its writable leaves (`TargetID`, `TargetType`, `URI`, `ACL`): the new entry, or the
    /// deleted one; empty when not known.
    pub leaves: Vec<(String, String)>,
    pub verdict: Verdict,
    /// The answer's code, `"2.01"`-style.
    pub code: String,
    /// Devices whose ACL was verified (committed writes).
    pub verified: usize,
    /// Devices that failed the verification (refused writes).
    pub failed: usize,
    /// Why it was refused; `None` when committed.
    pub reason: Option<String>,
}

impl PrivilegeChange {
    /// The writable leaves of `entry`, in their canonical order.
    pub fn leaves_of(entry: &Privilege) -> Vec<(String, String)> {
        crate::mo::privilege::WRITABLE_LEAVES
            .iter()
            .filter_map(|leaf| entry.leaf(leaf).map(|v| ((*leaf).to_owned(), v)))
            .collect()
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditEvent {
    Privilege(PrivilegeChange),
    Proxied(ProxiedDecision),
}

/// One audit record: an event and when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Wall-clock milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub event: AuditEvent,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable audit record: {0}")]
pub struct RecordError(pub String);

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "FETCH", "PATCH", "iPATCH"];

fn int(n: u64) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

impl AuditRecord {
    /// `event`, happening at `at`.
    pub fn at(at: SystemTime, event: AuditEvent) -> AuditRecord {
        AuditRecord {
            at_ms: unix_ms(at),
            event,
        }
    }

    /// The record as a document (the map of the module doc).
    pub fn to_value(&self) -> Value {
        let time = std::time::UNIX_EPOCH + Duration::from_millis(self.at_ms);
        let mut m: Vec<(String, Value)> = Vec::with_capacity(12);
        let mut put = |k: &str, v: Value| m.push((k.to_owned(), v));
        match &self.event {
            AuditEvent::Privilege(c) => {
                put("Kind", Value::text("privilege"));
                put("Time", Value::text(rfc3339(time)));
                put("TimeMs", int(self.at_ms));
                put("Server", Value::text(&c.server));
                put("Command", Value::text(&c.command));
                if let Some(name) = &c.name {
                    put("Name", Value::text(name));
                }
                if !c.leaves.is_empty() {
                    put(
                        "Entry",
                        Value::Map(
                            c.leaves
                                .iter()
                                .map(|(k, v)| (k.clone(), Value::text(v)))
                                .collect(),
                        ),
                    );
                }
                put("Verdict", Value::text(c.verdict.as_str()));
                put("Code", Value::text(&c.code));
                put("Verified", int(c.verified as u64));
                put("FailedCount", int(c.failed as u64));
                if let Some(reason) = &c.reason {
                    put("Reason", Value::text(reason));
                }
            }
            AuditEvent::Proxied(d) => {
                put("Kind", Value::text("proxied"));
                put("Time", Value::text(rfc3339(time)));
                put("TimeMs", int(self.at_ms));
                put("Server", Value::text(&d.server));
                put("Device", Value::text(&d.device));
                put("Method", Value::text(d.method));
                put("Path", Value::text(&d.path));
                if let Some(op) = d.command {
                    put("Command", Value::text(op.as_str()));
                }
                put(
                    "Verdict",
                    Value::text(if d.allowed { "allowed" } else { "denied" }),
                );
                put("Reason", Value::text(&d.reason));
                if let Some(g) = &d.grantor {
                    put("Grantor", Value::text(g));
                }
                put(
                    "LatencyUs",
                    int(u64::try_from(d.latency.as_micros()).unwrap_or(u64::MAX)),
                );
            }
        }
        Value::Map(m)
    }

    /// The stored form: the document as CBOR.
    pub fn encode(&self) -> Vec<u8> {
        self.to_value().to_cbor()
    }

    /// Reads a stored record back.
    pub fn decode(bytes: &[u8]) -> Result<AuditRecord, RecordError> {
        let v = Value::from_cbor(bytes).map_err(|e| RecordError(e.to_string()))?;
        AuditRecord::from_value(&v)
    }

    /// Reads a record from its document (unknown keys are ignored, `Time` is derived).
    pub fn from_value(v: &Value) -> Result<AuditRecord, RecordError> {
        let missing = |k: &str| RecordError(format!("missing or mistyped '{k}'"));
        let text = |k: &str| v.get(k).and_then(Value::as_str).ok_or_else(|| missing(k));
        let opt_text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let num = |k: &str| {
            v.get(k)
                .and_then(Value::as_int)
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| missing(k))
        };
        let at_ms = num("TimeMs")?;
        let event = match text("Kind")? {
            "privilege" => {
                let verdict = match text("Verdict")? {
                    "committed" => Verdict::Committed,
                    "refused" => Verdict::Refused,
                    other => return Err(RecordError(format!("verdict '{other}'"))),
                };
                let leaves = match v.get("Entry") {
                    None => Vec::new(),
                    Some(Value::Map(m)) => m
                        .iter()
                        .map(|(k, v)| {
                            v.as_str()
                                .map(|s| (k.clone(), s.to_owned()))
                                .ok_or_else(|| missing("Entry"))
                        })
                        .collect::<Result<_, _>>()?,
                    Some(_) => return Err(missing("Entry")),
                };
                AuditEvent::Privilege(PrivilegeChange {
                    server: text("Server")?.to_owned(),
                    command: text("Command")?.to_owned(),
                    name: opt_text("Name"),
                    leaves,
                    verdict,
                    code: text("Code")?.to_owned(),
                    verified: num("Verified")? as usize,
                    failed: num("FailedCount")? as usize,
                    reason: opt_text("Reason"),
                })
            }
            "proxied" => {
                let method = text("Method")?;
                let command = match v.get("Command") {
                    None => None,
                    Some(c) => Some(
                        c.as_str()
                            .and_then(|s| s.parse::<Operation>().ok())
                            .ok_or_else(|| missing("Command"))?,
                    ),
                };
                let allowed = match text("Verdict")? {
                    "allowed" => true,
                    "denied" => false,
                    other => return Err(RecordError(format!("verdict '{other}'"))),
                };
                AuditEvent::Proxied(ProxiedDecision {
                    server: text("Server")?.to_owned(),
                    device: text("Device")?.to_owned(),
                    method: METHODS
                        .iter()
                        .find(|m| **m == method)
                        .copied()
                        .unwrap_or("other"),
                    path: text("Path")?.to_owned(),
                    command,
                    allowed,
                    reason: text("Reason")?.to_owned(),
                    grantor: opt_text("Grantor"),
                    latency: Duration::from_micros(num("LatencyUs")?),
                })
            }
            other => return Err(RecordError(format!("kind '{other}'"))),
        };
        Ok(AuditRecord { at_ms, event })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(verdict: Verdict) -> PrivilegeChange {
        PrivilegeChange {
            server: "ServerA".into(),
            command: "Add".into(),
            name: Some("p1".into()),
            leaves: vec![
                ("TargetID".into(), "G1".into()),
                ("TargetType".into(), "Group".into()),
                ("URI".into(), "/3/0".into()),
                ("ACL".into(), "Get=ServerB".into()),
            ],
            verdict,
            code: if verdict == Verdict::Committed {
                "2.01".into()
            } else {
                "4.03".into()
            },
            verified: 3,
            failed: 0,
            reason: None,
        }
    }

    #[test]
    fn privilege_changes_round_trip_through_cbor() {
        let mut refused = change(Verdict::Refused);
        refused.failed = 2;
        refused.reason = Some("devices refused (425)".into());
        refused.leaves.clear();
        for c in [change(Verdict::Committed), refused] {
            let r = AuditRecord {
                at_ms: 1_800_000_000_123,
                event: AuditEvent::Privilege(c),
            };
            assert_eq!(AuditRecord::decode(&r.encode()).unwrap(), r);
        }
        let v = AuditRecord {
            at_ms: 1_800_000_000_123,
            event: AuditEvent::Privilege(change(Verdict::Committed)),
        }
        .to_value();
        assert_eq!(
            v.get("Time").and_then(Value::as_str),
            Some("2027-01-15T08:00:00Z")
        );
        assert_eq!(
            v.get("Entry")
                .and_then(|e| e.get("ACL"))
                .and_then(Value::as_str),
            Some("Get=ServerB")
        );
        assert!(v.get("Reason").is_none(), "a commit has no reason");
    }

    #[test]
    fn proxied_decisions_round_trip_with_and_without_command_and_grantor() {
        let allowed = ProxiedDecision {
            server: "ServerB".into(),
            device: "devA".into(),
            method: "GET",
            path: "/3/0/1".into(),
            command: Some(Operation::Get),
            allowed: true,
            reason: "privilege p1".into(),
            grantor: Some("ServerA".into()),
            latency: Duration::from_micros(1234),
        };
        let denied = ProxiedDecision {
            method: "PATCH",
            command: None,
            allowed: false,
            reason: "method not allowed".into(),
            grantor: None,
            ..allowed.clone()
        };
        for d in [allowed, denied] {
            let r = AuditRecord {
                at_ms: 7,
                event: AuditEvent::Proxied(d),
            };
            assert_eq!(AuditRecord::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(AuditRecord::decode(&[0xff, 0x00]).is_err());
        let no_kind = Value::map([("TimeMs", Value::Int(1))]).to_cbor();
        assert!(AuditRecord::decode(&no_kind).is_err());
        let odd = Value::map([("TimeMs", Value::Int(1)), ("Kind", Value::text("x"))]).to_cbor();
        assert!(AuditRecord::decode(&odd).is_err());
    }
}
