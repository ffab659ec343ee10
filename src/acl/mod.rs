//! The two ACL models found on end devices, parsed once and evaluated pure.
//!
//! This module owns the vocabulary shared by both models: the DM command set
//! ([`DmCommand`]), the question asked of an ACL — which [`Operation`] by which
//! [`Principal`] — and the outcome of checking one device's ACL for it
//! ([`Verdict`]).
//!
//! * [`dm`] — OMA DM TND ACL strings (`Get=A+B&Replace=*`) and the `replace` /
//!   `tnd-strict` policies.
//! * [`lwm2m`] — the LwM2M Access Control object (ID 2) and the `owner` /
//!   `write-bit` policies.
//!
//! It does not own reading ACLs from devices (`south`), wire codecs for `/2`
//! ([`crate::lwm2m`]), nor the gateway's own ACL on `Privileges` (`mo`). Nothing
//! here touches a socket, a clock or a lock, and no function panics on any input.

pub mod dm;
pub mod lwm2m;
pub mod operation;
pub mod principal;

pub use operation::Operation;
pub use principal::{Principal, PrincipalError};

use std::fmt;
use std::str::FromStr;

/// A DM command (OMA DM ACL vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DmCommand {
    /// `Add`: create a node (LwM2M Create, `C`).
    Add,
    /// `Delete`: remove a node (LwM2M Delete, `D`).
    Delete,
    /// `Exec`: execute a node (LwM2M Execute, `E`).
    Exec,
    /// `Get`: read a node (LwM2M Read, `R`).
    Get,
    /// `Replace`: write a node (LwM2M Write, `W`).
    Replace,
}

impl DmCommand {
    /// Every command, in canonical (alphabetical) order.
    pub const ALL: [DmCommand; 5] = [
        DmCommand::Add,
        DmCommand::Delete,
        DmCommand::Exec,
        DmCommand::Get,
        DmCommand::Replace,
    ];

    /// The command's name as written in DM ACL strings, e.g. `"Replace"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DmCommand::Add => "Add",
            DmCommand::Delete => "Delete",
            DmCommand::Exec => "Exec",
            DmCommand::Get => "Get",
            DmCommand::Replace => "Replace",
        }
    }

    /// The LwM2M access right matching this command:
    /// Get↔R, Replace↔W, Exec↔E, Delete↔D, Add↔C.
    pub fn lwm2m_right(self) -> lwm2m::Rights {
        match self {
            DmCommand::Add => lwm2m::Rights::CREATE,
            DmCommand::Delete => lwm2m::Rights::DELETE,
            DmCommand::Exec => lwm2m::Rights::EXECUTE,
            DmCommand::Get => lwm2m::Rights::READ,
            DmCommand::Replace => lwm2m::Rights::WRITE,
        }
    }
}

impl fmt::Display for DmCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the five DM command names (matching is case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown DM command {found:?} (expected Add, Delete, Exec, Get or Replace)")]
pub struct UnknownCommand {
    /// What was found instead (at most 32 characters of it).
    pub found: String,
}

impl FromStr for DmCommand {
    type Err = UnknownCommand;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DmCommand::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCommand { found: snippet(s) })
    }
}

/// Outcome of evaluating one device's ACL for one principal and operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The ACL grants the operation to the principal.
    Allowed,
    /// An ACL was found and it does not grant the operation; `detail` says which ACL and why.
    Denied {
        /// Human-readable explanation, e.g. `"owner is 123, server is 101"`.
        detail: String,
    },
    /// There is no ACL (or no AC instance) covering the URI at all.
    NoAcl {
        /// Human-readable explanation of what was looked for.
        detail: String,
    },
}

impl Verdict {
    /// Whether this verdict lets the change through.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allowed)
    }
}

/// At most 32 characters of untrusted input, for error messages.
pub(crate) fn snippet(s: &str) -> String {
    truncate(s, 32)
}

/// At most `max` characters of `s`, with `…` appended if it was longer.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_round_trip_through_from_str_and_display() {
        for c in DmCommand::ALL {
            assert_eq!(c.as_str().parse::<DmCommand>(), Ok(c));
            assert_eq!(c.to_string(), c.as_str());
        }
    }

    #[test]
    fn command_parsing_is_case_sensitive() {
        assert!("get".parse::<DmCommand>().is_err());
        assert!("REPLACE".parse::<DmCommand>().is_err());
        assert!("".parse::<DmCommand>().is_err());
    }

    #[test]
    fn command_maps_to_lwm2m_bit() {
        assert_eq!(DmCommand::Get.lwm2m_right(), lwm2m::Rights::READ);
        assert_eq!(DmCommand::Replace.lwm2m_right(), lwm2m::Rights::WRITE);
        assert_eq!(DmCommand::Exec.lwm2m_right(), lwm2m::Rights::EXECUTE);
        assert_eq!(DmCommand::Delete.lwm2m_right(), lwm2m::Rights::DELETE);
        assert_eq!(DmCommand::Add.lwm2m_right(), lwm2m::Rights::CREATE);
    }

    #[test]
    fn all_is_sorted_and_complete() {
        let mut sorted = DmCommand::ALL;
        sorted.sort();
        assert_eq!(sorted, DmCommand::ALL);
    }

    #[test]
    fn snippet_truncates_long_input_on_char_boundaries() {
        let long = "é".repeat(40);
        let s = snippet(&long);
        assert_eq!(s.chars().count(), 33);
        assert!(s.ends_with('…'));
        assert_eq!(snippet("short"), "short");
    }
}
