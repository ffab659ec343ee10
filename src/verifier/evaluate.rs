//! Judging one device's answer: an ACL reading (or a failure to get one) becomes an
//! [`Outcome`] under the device's profile and policy (DESIGN.md §4).

use crate::acl::Verdict;
use crate::acl::dm::{DmAcl, dm_verdict};
use crate::acl::lwm2m::{LwPath, lwm2m_verdict};
use crate::config::{Profile, ServerConfig};
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

/// Does `server` hold Replace on `uri` of a device with `profile`, given what it answered?
pub fn evaluate(
    profile: Profile,
    uri: &str,
    server: &ServerConfig,
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
            dm_verdict(policy, &parsed, is_interior, &server.id)
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
            lwm2m_verdict(policy, &instances, &path, server.ssid)
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
