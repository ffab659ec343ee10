//! Judging one device's answer: an ACL reading (or a failure to get one) becomes an
//! [`Outcome`] for one principal and operation, under the device's profile and policy
//! (DESIGN.md §4; the operation → ACL mapping is in [`crate::acl::operation`]).

use crate::acl::dm::{DmAcl, dm_verdict};
use crate::acl::lwm2m::{LwPath, lwm2m_verdict};
use crate::acl::{Operation, Principal, Verdict};
use crate::config::Profile;
use crate::lwm2m::decode_access_control;
use crate::verifier::{Outcome, Reason};

/// What a device answered, as raw as the verifier needs it: parsing is the verifier's job,
/// so an unparseable ACL is classified (`bad-acl`) in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclReading {
    /// `dm` profile: the ACL strings from the node up towards the root, the node's own first,
    /// ending with the first non-empty one (or the root's).
    Dm {
        chain: Vec<String>,
        is_interior: bool,
    },
    /// `lwm2m` profile: the `/2` payload and its content format.
    Lwm2m {
        content_format: u16,
        payload: Vec<u8>,
    },
}

/// Why no reading was had. South maps its transport errors onto these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadFailure {
    #[error("no answer: {0}")]
    Unreachable(String),
    #[error("secure channel: {0}")]
    SecureChannel(String),
    #[error("device answered {code}")]
    DeviceError { code: String },
    #[error("unusable answer: {0}")]
    BadAnswer(String),
}

impl ReadFailure {
    pub fn reason(&self) -> Reason {
        match self {
            ReadFailure::Unreachable(_) => Reason::Unreachable,
            ReadFailure::SecureChannel(_) => Reason::SecureChannel,
            ReadFailure::DeviceError { .. } => Reason::DeviceError,
            ReadFailure::BadAnswer(_) => Reason::BadAcl,
        }
    }
}

fn failed(reason: Reason, detail: impl Into<String>) -> Outcome {
    Outcome::Failed {
        reason,
        detail: detail.into(),
    }
}

/// May `principal` perform `operation` on `uri` of a device with `profile`, given what the
/// device answered? A principal the ACL does not name (and no wildcard or default covers)
/// is `denied`: evaluation fails closed.
pub fn evaluate(
    profile: Profile,
    operation: Operation,
    uri: &str,
    principal: &Principal,
    reply: Result<AclReading, ReadFailure>,
) -> Outcome {
    let reading = match reply {
        Ok(r) => r,
        Err(e) => return failed(e.reason(), e.to_string()),
    };
    let verdict = match (profile, reading) {
        (Profile::Dm(policy), AclReading::Dm { chain, is_interior }) => {
            let mut parsed = Vec::with_capacity(chain.len());
            for (depth, text) in chain.iter().enumerate() {
                match DmAcl::parse(text) {
                    Ok(acl) => parsed.push(acl),
                    Err(e) => {
                        return failed(
                            Reason::BadAcl,
                            format!("ACL '{text}' (ancestor {depth} of {uri}): {e}"),
                        );
                    }
                }
            }
            dm_verdict(policy, &parsed, is_interior, operation, principal)
        }
        (
            Profile::Lwm2m(policy),
            AclReading::Lwm2m {
                content_format,
                payload,
            },
        ) => {
            let path = match LwPath::parse(uri) {
                Ok(p) => p,
                Err(e) => return failed(Reason::NoAcl, format!("{uri}: {e}")),
            };
            let instances = match decode_access_control(content_format, &payload) {
                Ok(i) => i,
                Err(e) => return failed(Reason::BadAcl, format!("/2 ({content_format}): {e}")),
            };
            lwm2m_verdict(policy, &instances, &path, operation, principal)
        }
        (profile, _) => {
            return failed(
                Reason::BadAcl,
                format!("reading does not match profile {profile}"),
            );
        }
    };
    match verdict {
        Verdict::Allowed => Outcome::Allowed,
        Verdict::Denied { detail } => failed(Reason::Denied, detail),
        Verdict::NoAcl { detail } => failed(Reason::NoAcl, detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::dm::DmPolicy;
    use crate::acl::lwm2m::{AccessControl, Lwm2mPolicy, Rights};
    use crate::lwm2m::{content_format, encode_access_control};

    const DM: Profile = Profile::Dm(DmPolicy::Replace);
    const OWNER: Profile = Profile::Lwm2m(Lwm2mPolicy::Owner);
    const WRITE_BIT: Profile = Profile::Lwm2m(Lwm2mPolicy::WriteBit);

    fn server(id: &str, ssid: u16) -> Principal {
        Principal::new(id, ssid).expect("valid principal")
    }

    fn dm(chain: &[&str]) -> Result<AclReading, ReadFailure> {
        Ok(AclReading::Dm {
            chain: chain.iter().map(|s| (*s).to_owned()).collect(),
            is_interior: false,
        })
    }

    fn lwm2m(instances: &[AccessControl]) -> Result<AclReading, ReadFailure> {
        Ok(AclReading::Lwm2m {
            content_format: content_format::TLV,
            payload: encode_access_control(content_format::TLV, instances).expect("encode"),
        })
    }

    fn reason(outcome: Outcome) -> Option<Reason> {
        match outcome {
            Outcome::Allowed => None,
            Outcome::Failed { reason, .. } => Some(reason),
        }
    }

    /// `/3/0` owned by ServerA (101); ServerB (102) may read; no default entry.
    fn device_ac() -> AccessControl {
        AccessControl::new(0, 3, 0, 101).with_rights(102, Rights::READ)
    }

    #[test]
    fn dm_get_is_allowed_by_the_effective_get_entry() {
        let b = server("ServerB", 102);
        let reply = dm(&["", "Get=ServerB&Replace=ServerA"]);
        assert_eq!(
            evaluate(DM, Operation::Get, "/3/0/1", &b, reply),
            Outcome::Allowed
        );
    }

    #[test]
    fn dm_get_is_denied_to_a_server_with_replace_only() {
        let b = server("ServerB", 102);
        let reply = dm(&["Replace=ServerB&Get=ServerA"]);
        assert_eq!(
            reason(evaluate(DM, Operation::Get, "/3/0/1", &b, reply)),
            Some(Reason::Denied)
        );
    }

    #[test]
    fn lwm2m_get_needs_r_for_the_principals_ssid() {
        let b = server("ServerB", 102);
        let c = server("ServerC", 103);
        for profile in [OWNER, WRITE_BIT] {
            let get = |who: &Principal, acs: &[AccessControl]| {
                evaluate(profile, Operation::Get, "/3/0/1", who, lwm2m(acs))
            };
            assert_eq!(get(&b, &[device_ac()]), Outcome::Allowed, "{profile}");
            assert_eq!(
                reason(get(&c, &[device_ac()])),
                Some(Reason::Denied),
                "{profile}"
            );
            // The default entry (key 0) covers servers without their own.
            let with_default = device_ac().with_rights(0, Rights::READ);
            assert_eq!(get(&c, &[with_default]), Outcome::Allowed, "{profile}");
            // The owner holds every right when it has no entry of its own.
            let a = server("ServerA", 101);
            assert_eq!(get(&a, &[device_ac()]), Outcome::Allowed, "{profile}");
        }
    }

    #[test]
    fn replace_keeps_the_granting_semantics_of_each_policy() {
        let a = server("ServerA", 101);
        let b = server("ServerB", 102);
        let ac = [device_ac().with_rights(102, Rights::READ | Rights::WRITE)];
        let replace =
            |profile, who: &Principal| evaluate(profile, Operation::GRANT, "/3/0", who, lwm2m(&ac));
        assert_eq!(replace(OWNER, &a), Outcome::Allowed);
        assert_eq!(reason(replace(OWNER, &b)), Some(Reason::Denied));
        assert_eq!(replace(WRITE_BIT, &b), Outcome::Allowed);
        let dm_replace = |who: &Principal| {
            evaluate(
                DM,
                Operation::GRANT,
                "/3/0",
                who,
                dm(&["", "Replace=ServerA"]),
            )
        };
        assert_eq!(dm_replace(&a), Outcome::Allowed);
        assert_eq!(reason(dm_replace(&b)), Some(Reason::Denied));
    }

    #[test]
    fn exec_and_delete_map_to_their_entries_and_bits() {
        let b = server("ServerB", 102);
        let c = server("ServerC", 103);
        let acl = ["Exec=ServerB&Delete=ServerC"];
        let ac = [AccessControl::new(0, 3, 0, 101)
            .with_rights(102, Rights::EXECUTE)
            .with_rights(103, Rights::DELETE)];
        for (op, allowed, refused) in [(Operation::Exec, &b, &c), (Operation::Delete, &c, &b)] {
            assert_eq!(
                evaluate(DM, op, "/3/0/4", allowed, dm(&acl)),
                Outcome::Allowed
            );
            assert_eq!(
                reason(evaluate(DM, op, "/3/0/4", refused, dm(&acl))),
                Some(Reason::Denied)
            );
            let on_lwm2m = |who| evaluate(OWNER, op, "/3/0/4", who, lwm2m(&ac));
            assert_eq!(on_lwm2m(allowed), Outcome::Allowed, "{op}");
            assert_eq!(reason(on_lwm2m(refused)), Some(Reason::Denied), "{op}");
        }
    }

    #[test]
    fn a_principal_without_an_entry_fails_closed_for_every_operation() {
        let x = server("ServerX", 999);
        for op in Operation::ALL {
            let on_dm = evaluate(
                DM,
                op,
                "/3/0",
                &x,
                dm(&["Add=A&Delete=A&Exec=A&Get=A&Replace=A"]),
            );
            assert_eq!(reason(on_dm), Some(Reason::Denied), "{op}");
            for profile in [OWNER, WRITE_BIT] {
                let on_lwm2m = evaluate(profile, op, "/3/0", &x, lwm2m(&[device_ac()]));
                assert_eq!(reason(on_lwm2m), Some(Reason::Denied), "{op} {profile}");
            }
            // No ACL at all is no-acl, never allowed.
            let none = evaluate(DM, op, "/3/0", &x, dm(&["", ""]));
            assert_eq!(reason(none), Some(Reason::NoAcl), "{op}");
            let none = evaluate(OWNER, op, "/4/0", &x, lwm2m(&[device_ac()]));
            assert_eq!(reason(none), Some(Reason::NoAcl), "{op}");
        }
    }
}
