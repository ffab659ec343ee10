//! Per-device outcomes and the decision over all of them, with the CoAP answer each maps to.

use std::fmt;

/// Why one device failed the check. The string forms are the wire contract (`Reason` in `Failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The ACL was read and it does not grant the operation to the principal.
    Denied,
    /// There is no ACL / AC instance for that URI.
    NoAcl,
    /// No answer by the deadline.
    Unreachable,
    /// Handshake or credential failure towards the device.
    SecureChannel,
    /// The ACL could not be parsed.
    BadAcl,
    /// The device answered 4.xx/5.xx.
    DeviceError,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Denied => "denied",
            Reason::NoAcl => "no-acl",
            Reason::Unreachable => "unreachable",
            Reason::SecureChannel => "secure-channel",
            Reason::BadAcl => "bad-acl",
            Reason::DeviceError => "device-error",
        }
    }

    /// Denials are the device's own word; the rest are failures to get a word at all.
    pub fn is_denial(self) -> bool {
        matches!(self, Reason::Denied | Reason::NoAcl)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The most characters of a `Detail` (in answers and logs): a device's malformed ACL is
/// quoted, and a device chooses how long that is.
pub const MAX_DETAIL_CHARS: usize = 200;

/// `detail` cut to [`MAX_DETAIL_CHARS`] characters (on a char boundary), with an ellipsis
/// when anything was cut.
pub fn truncate_detail(detail: &str) -> String {
    match detail.char_indices().nth(MAX_DETAIL_CHARS) {
        None => detail.to_owned(),
        Some((end, _)) => {
            let mut cut = detail[..end].to_owned();
            // Keep the total at MAX_DETAIL_CHARS, the ellipsis included.
            cut.pop();
            cut.push('…');
            cut
        }
    }
}

/// What one (device, URI) check came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Failed { reason: Reason, detail: String },
}

/// One failing device in the answer's `Failed` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub device_id: String,
    pub reason: Reason,
    pub detail: String,
}

/// The class of a rejection, which fixes the CoAP code and `Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// Some device denied: 4.03, Status 425.
    Forbidden,
    /// Every failure was a timeout: 5.04, Status 504.
    Timeout,
    /// Other failures only: 5.02, Status 500.
    BadGateway,
}

impl RejectKind {
    pub fn status(self) -> u16 {
        match self {
            RejectKind::Forbidden => 425,
            RejectKind::Timeout => 504,
            RejectKind::BadGateway => 500,
        }
    }

    /// Classifies a non-empty failure list (DESIGN.md §5 answers table).
    pub fn of(failed: &[Failure]) -> RejectKind {
        if failed.iter().any(|f| f.reason.is_denial()) {
            RejectKind::Forbidden
        } else if !failed.is_empty() && failed.iter().all(|f| f.reason == Reason::Unreachable) {
            RejectKind::Timeout
        } else {
            RejectKind::BadGateway
        }
    }
}

/// The verifier's final word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every member is allowed: commit. `verified` is sorted by DeviceID.
    Commit { verified: Vec<String> },
    /// At least one member failed: commit nothing. `failed` is sorted by DeviceID and lists
    /// every failing device once.
    Reject {
        kind: RejectKind,
        failed: Vec<Failure>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(id: &str, reason: Reason) -> Failure {
        Failure {
            device_id: id.into(),
            reason,
            detail: String::new(),
        }
    }

    #[test]
    fn any_denial_is_forbidden() {
        let failed = [f("a", Reason::Unreachable), f("b", Reason::Denied)];
        assert_eq!(RejectKind::of(&failed), RejectKind::Forbidden);
        assert_eq!(RejectKind::of(&[f("a", Reason::NoAcl)]).status(), 425);
    }

    #[test]
    fn all_unreachable_is_timeout() {
        let failed = [f("a", Reason::Unreachable), f("b", Reason::Unreachable)];
        assert_eq!(RejectKind::of(&failed), RejectKind::Timeout);
    }

    #[test]
    fn mixed_transport_failures_are_bad_gateway() {
        let failed = [f("a", Reason::Unreachable), f("b", Reason::BadAcl)];
        assert_eq!(RejectKind::of(&failed), RejectKind::BadGateway);
        assert_eq!(
            RejectKind::of(&[f("a", Reason::SecureChannel)]).status(),
            500
        );
    }

    #[test]
    fn details_are_cut_on_char_boundaries_with_an_ellipsis() {
        assert_eq!(truncate_detail("short"), "short");
        let exact = "x".repeat(MAX_DETAIL_CHARS);
        assert_eq!(truncate_detail(&exact), exact);
        let long = "ü".repeat(MAX_DETAIL_CHARS + 1);
        let cut = truncate_detail(&long);
        assert_eq!(cut.chars().count(), MAX_DETAIL_CHARS);
        assert!(cut.ends_with('…'));
        assert!(cut.starts_with("üü"));
    }
}
