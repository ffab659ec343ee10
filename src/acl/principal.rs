//! Who asks: a northbound management server as the end devices' ACLs name it (DESIGN.md §2)
//! — its DM ServerID (in DM ACL strings) and its LwM2M Short Server ID (in the Access Control
//! object). A plain value: it carries no credential, and how the server proved who it is
//! (PSK, certificate, source address) stays with the gateway that built it.

use std::fmt;

use super::dm::{DmAclError, check_id};
use super::snippet;

/// A server as the device ACLs know it. Construct with [`Principal::new`], which checks that
/// both names can appear in the ACLs at all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    server_id: String,
    ssid: u16,
}

/// Why a (ServerID, SSID) pair cannot name a principal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrincipalError {
    /// The ServerID could not be written in a DM ACL (empty, `*`, whitespace, `=&+`, …).
    #[error("server id {id:?} cannot be named in a DM ACL: {cause}")]
    InvalidServerId {
        /// The id (truncated).
        id: String,
        /// What the DM ACL grammar objects to.
        cause: DmAclError,
    },
    /// 0 and 65535 are reserved Short Server IDs (0 is the AC default entry's key).
    #[error("short server id {ssid} is reserved (1..=65534)")]
    ReservedSsid {
        /// The reserved value.
        ssid: u16,
    },
}

impl Principal {
    /// The principal with DM ServerID `server_id` and LwM2M Short Server ID `ssid`.
    pub fn new(server_id: impl Into<String>, ssid: u16) -> Result<Principal, PrincipalError> {
        let server_id = server_id.into();
        check_id(&server_id, 0).map_err(|cause| PrincipalError::InvalidServerId {
            id: snippet(&server_id),
            cause,
        })?;
        if ssid == 0 || ssid == u16::MAX {
            return Err(PrincipalError::ReservedSsid { ssid });
        }
        Ok(Principal { server_id, ssid })
    }

    /// The DM ServerID, as written in DM ACL strings.
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// The LwM2M Short Server ID (1..=65534), the key of its entry in an AC instance's ACL.
    pub fn ssid(&self) -> u16 {
        self.ssid
    }
}

impl fmt::Display for Principal {
    /// `ServerA (SSID 101)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SSID {})", self.server_id, self.ssid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_principal_keeps_both_names() {
        let p = Principal::new("ServerB", 102).expect("valid");
        assert_eq!(p.server_id(), "ServerB");
        assert_eq!(p.ssid(), 102);
        assert_eq!(p.to_string(), "ServerB (SSID 102)");
    }

    #[test]
    fn reserved_short_server_ids_are_refused() {
        for ssid in [0, u16::MAX] {
            assert_eq!(
                Principal::new("ServerB", ssid),
                Err(PrincipalError::ReservedSsid { ssid })
            );
        }
        assert!(Principal::new("ServerB", 1).is_ok());
        assert!(Principal::new("ServerB", 65534).is_ok());
    }

    #[test]
    fn server_ids_that_no_dm_acl_can_name_are_refused() {
        for id in ["", "*", "Server B", "A+B", "A=B", "A&B", "Ä"] {
            assert!(
                matches!(
                    Principal::new(id, 101),
                    Err(PrincipalError::InvalidServerId { .. })
                ),
                "{id:?}"
            );
        }
    }
}
