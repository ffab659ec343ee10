//! The LwM2M Access Control object (ID 2) as plain values, device paths, and
//! the `owner` / `write-bit` policies that turn AC instances into a [`Verdict`]
//! on whether a [`Principal`] (by its Short Server ID) may perform an
//! [`Operation`] (by its right: R, W, E, D or C).
//!
//! An AC instance says, for one (Object ID, Object Instance ID) pair — instance
//! [`OBJECT_LEVEL`] meaning the object itself — which rights each Short Server
//! ID has (key 0 = default for servers without an entry) and who owns the
//! instance. Only the owner may manage an AC instance, hence the default
//! [`Lwm2mPolicy::Owner`].
//!
//! This module owns the model and its evaluation only; wire codecs for `/2`
//! live in [`crate::lwm2m`].

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{BitOr, BitOrAssign};
use std::str::FromStr;

use super::{Operation, Principal, Verdict, snippet};

/// LwM2M access rights bit set: R=1 W=2 E=4 D=8 C=16. Always ≤ 31.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
pub struct Rights(u8);

impl Rights {
    /// No rights.
    pub const NONE: Rights = Rights(0);
    /// Read (R, bit 0).
    pub const READ: Rights = Rights(1);
    /// Write (W, bit 1).
    pub const WRITE: Rights = Rights(2);
    /// Execute (E, bit 2).
    pub const EXECUTE: Rights = Rights(4);
    /// Delete (D, bit 3).
    pub const DELETE: Rights = Rights(8);
    /// Create (C, bit 4).
    pub const CREATE: Rights = Rights(16);
    /// All five rights (31).
    pub const FULL: Rights = Rights(31);

    /// Rights from their integer form; `None` if any bit above C (16) is set.
    pub const fn from_bits(bits: u8) -> Option<Rights> {
        if bits & !Rights::FULL.0 == 0 {
            Some(Rights(bits))
        } else {
            None
        }
    }

    /// The integer form (0..=31).
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every right in `other` is in `self`.
    pub const fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no right is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl BitOr for Rights {
    type Output = Rights;

    fn bitor(self, rhs: Rights) -> Rights {
        Rights(self.0 | rhs.0)
    }
}

impl BitOrAssign for Rights {
    fn bitor_assign(&mut self, rhs: Rights) {
        self.0 |= rhs.0;
    }
}

impl fmt::Display for Rights {
    /// Letters in bit order, e.g. `RW`, `RWEDC`; `-` for none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (bit, letter) in [
            (Rights::READ, 'R'),
            (Rights::WRITE, 'W'),
            (Rights::EXECUTE, 'E'),
            (Rights::DELETE, 'D'),
            (Rights::CREATE, 'C'),
        ] {
            if self.contains(bit) {
                write!(f, "{letter}")?;
            }
        }
        Ok(())
    }
}

/// Object Instance ID meaning "the object itself" (LwM2M uses 65535).
pub const OBJECT_LEVEL: u16 = 65535;

/// One instance of the Access Control object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessControl {
    /// The AC instance id (`/2/<instance>`).
    pub instance: u16,
    /// Resource 0: the Object ID this instance controls.
    pub object_id: u16,
    /// Resource 1: the Object Instance ID it controls ([`OBJECT_LEVEL`] = the object).
    pub object_instance_id: u16,
    /// Resource 2: rights per Short Server ID; key 0 is the default.
    pub acl: BTreeMap<u16, Rights>,
    /// Resource 3: the Access Control Owner's Short Server ID.
    pub owner: u16,
}

impl AccessControl {
    /// An instance with an empty ACL.
    pub fn new(instance: u16, object_id: u16, object_instance_id: u16, owner: u16) -> Self {
        AccessControl {
            instance,
            object_id,
            object_instance_id,
            acl: BTreeMap::new(),
            owner,
        }
    }

    /// The same instance with `rights` for `ssid` (builder style, for tests and the simulator).
    #[must_use]
    pub fn with_rights(mut self, ssid: u16, rights: Rights) -> Self {
        self.acl.insert(ssid, rights);
        self
    }

    /// The (object, instance) pair this AC instance controls.
    pub fn key(&self) -> (u16, u16) {
        (self.object_id, self.object_instance_id)
    }
}

/// How an `lwm2m`-profile device's AC object decides whether a server may change a grant
/// ([`Operation::Replace`]); every other operation reads [`effective_rights`] under either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Lwm2mPolicy {
    /// The spec's rule: only the AC instance's owner may manage it.
    #[default]
    Owner,
    /// Weaker option: the server's effective rights include W.
    WriteBit,
}

/// A policy name other than `owner` or `write-bit`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown LwM2M policy {found:?} (expected \"owner\" or \"write-bit\")")]
pub struct UnknownLwm2mPolicy {
    /// What was found (truncated).
    pub found: String,
}

impl FromStr for Lwm2mPolicy {
    type Err = UnknownLwm2mPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "owner" => Ok(Lwm2mPolicy::Owner),
            "write-bit" => Ok(Lwm2mPolicy::WriteBit),
            _ => Err(UnknownLwm2mPolicy { found: snippet(s) }),
        }
    }
}

impl fmt::Display for Lwm2mPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lwm2mPolicy::Owner => "owner",
            Lwm2mPolicy::WriteBit => "write-bit",
        })
    }
}

/// A device path: `/3`, `/3/0`, `/3/0/1` or `/3/0/1/2`.
///
/// Strict: a leading `/`, 1 to 4 segments, each a decimal number without sign
/// or leading zeros, no trailing `/`. Every id is 0..=65534 (65535 is reserved
/// by LwM2M; an object-level path is written without an instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LwPath {
    /// Object ID.
    pub object_id: u16,
    /// Object Instance ID, if the path goes that deep.
    pub instance_id: Option<u16>,
    /// Resource ID, if the path goes that deep.
    pub resource_id: Option<u16>,
    /// Resource Instance ID, if the path goes that deep.
    pub resource_instance_id: Option<u16>,
}

/// A string that is not a valid device path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/` (this includes the empty string).
    #[error("device path {path:?} does not start with '/'")]
    NoLeadingSlash {
        /// The path (truncated).
        path: String,
    },
    /// `//`, a trailing `/`, or `/` alone.
    #[error("device path {path:?} has an empty segment {index}")]
    EmptySegment {
        /// The path (truncated).
        path: String,
        /// 0-based segment index.
        index: usize,
    },
    /// More than object/instance/resource/resource-instance.
    #[error("device path {path:?} has more than 4 segments")]
    TooDeep {
        /// The path (truncated).
        path: String,
    },
    /// A segment that is not a plain decimal number.
    #[error("segment {index} of device path {path:?} is not a decimal id")]
    NotDecimal {
        /// The path (truncated).
        path: String,
        /// 0-based segment index.
        index: usize,
    },
    /// A segment above 65534.
    #[error("segment {index} of device path {path:?} is out of range 0..=65534")]
    OutOfRange {
        /// The path (truncated).
        path: String,
        /// 0-based segment index.
        index: usize,
    },
}

impl LwPath {
    /// Parse a device path strictly (see the type's doc).
    pub fn parse(s: &str) -> Result<LwPath, PathError> {
        let path = || snippet(s);
        let Some(rest) = s.strip_prefix('/') else {
            return Err(PathError::NoLeadingSlash { path: path() });
        };
        let mut ids = [None::<u16>; 4];
        for (index, seg) in rest.split('/').enumerate() {
            let Some(slot) = ids.get_mut(index) else {
                return Err(PathError::TooDeep { path: path() });
            };
            if seg.is_empty() {
                return Err(PathError::EmptySegment {
                    path: path(),
                    index,
                });
            }
            let canonical = seg == "0" || !seg.starts_with('0');
            if !canonical || !seg.bytes().all(|b| b.is_ascii_digit()) {
                return Err(PathError::NotDecimal {
                    path: path(),
                    index,
                });
            }
            match seg.parse::<u16>() {
                Ok(v) if v != u16::MAX => *slot = Some(v),
                _ => {
                    return Err(PathError::OutOfRange {
                        path: path(),
                        index,
                    });
                }
            }
        }
        let [object, instance_id, resource_id, resource_instance_id] = ids;
        let Some(object_id) = object else {
            return Err(PathError::EmptySegment {
                path: path(),
                index: 0,
            });
        };
        Ok(LwPath {
            object_id,
            instance_id,
            resource_id,
            resource_instance_id,
        })
    }

    /// The AC key of this path: (object, instance or [`OBJECT_LEVEL`]).
    pub fn ac_key(&self) -> (u16, u16) {
        (self.object_id, self.instance_id.unwrap_or(OBJECT_LEVEL))
    }
}

impl fmt::Display for LwPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.object_id)?;
        for id in [
            self.instance_id,
            self.resource_id,
            self.resource_instance_id,
        ]
        .into_iter()
        .map_while(|x| x)
        {
            write!(f, "/{id}")?;
        }
        Ok(())
    }
}

impl FromStr for LwPath {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LwPath::parse(s)
    }
}

/// Whether `ssid` is a real server (1..=65534); 0 and 65535 are reserved.
fn is_real_ssid(ssid: u16) -> bool {
    ssid != 0 && ssid != u16::MAX
}

/// Rights of `ssid` on the AC instance's (object, instance): its explicit entry,
/// else [`Rights::FULL`] if it is the owner, else the default entry (key 0),
/// else none.
pub fn effective_rights(ac: &AccessControl, ssid: u16) -> Rights {
    if let Some(r) = ac.acl.get(&ssid) {
        return *r;
    }
    if is_real_ssid(ssid) && ac.owner == ssid {
        return Rights::FULL;
    }
    ac.acl.get(&0).copied().unwrap_or(Rights::NONE)
}

/// Decide whether `principal` may perform `operation` on `path`, by the AC
/// instance for `path.ac_key()` and the principal's Short Server ID.
///
/// `Get`, `Add`, `Delete`, `Exec`: allowed iff [`effective_rights`] include the
/// operation's right (R, C, D, E), under either policy.
///
/// `Replace` — the granting question — follows the policy:
///
/// * [`Lwm2mPolicy::Owner`]: allowed iff the AC instance exists and its owner
///   is the principal (owner 0 or 65535 never passes), whatever its W bit.
/// * [`Lwm2mPolicy::WriteBit`]: allowed iff [`effective_rights`] include W.
///
/// No AC instance for the key → [`Verdict::NoAcl`]. If a (misbehaving) device
/// reports several AC instances for the same key, every one must allow.
pub fn lwm2m_verdict(
    policy: Lwm2mPolicy,
    instances: &[AccessControl],
    path: &LwPath,
    operation: Operation,
    principal: &Principal,
) -> Verdict {
    ssid_verdict(policy, instances, path, operation, principal.ssid())
}

/// [`lwm2m_verdict`] for a raw Short Server ID (which a [`Principal`] never
/// holds reserved; the tests also feed reserved ones).
fn ssid_verdict(
    policy: Lwm2mPolicy,
    instances: &[AccessControl],
    path: &LwPath,
    operation: Operation,
    ssid: u16,
) -> Verdict {
    let key = path.ac_key();
    let mut matching = instances.iter().filter(|ac| ac.key() == key).peekable();
    if matching.peek().is_none() {
        let target = if key.1 == OBJECT_LEVEL {
            format!("object {} (object level)", key.0)
        } else {
            format!("object {} instance {}", key.0, key.1)
        };
        return Verdict::NoAcl {
            detail: format!(
                "no Access Control instance for {target} of {path} among {} instances",
                instances.len()
            ),
        };
    }
    let owner_decides = operation == Operation::Replace && policy == Lwm2mPolicy::Owner;
    let needed = operation.lwm2m_right();
    for ac in matching {
        let denied = if owner_decides {
            if !is_real_ssid(ac.owner) {
                Some(format!(
                    "AC instance /2/{} for {path} has reserved owner {}, server is {ssid}",
                    ac.instance, ac.owner
                ))
            } else if ac.owner != ssid {
                Some(format!(
                    "AC instance /2/{} for {path}: owner is {}, server is {ssid}",
                    ac.instance, ac.owner
                ))
            } else {
                None
            }
        } else {
            let r = effective_rights(ac, ssid);
            (!r.contains(needed)).then(|| {
                format!(
                    "AC instance /2/{} for {path}: server {ssid} has rights {r} (no {needed}), owner is {}",
                    ac.instance, ac.owner
                )
            })
        };
        if let Some(detail) = denied {
            return Verdict::Denied { detail };
        }
    }
    Verdict::Allowed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> LwPath {
        match LwPath::parse(s) {
            Ok(p) => p,
            Err(e) => panic!("test path {s:?} should parse: {e}"),
        }
    }

    fn server(ssid: u16) -> Principal {
        match Principal::new(format!("Server{ssid}"), ssid) {
            Ok(p) => p,
            Err(e) => panic!("test principal {ssid} should be valid: {e}"),
        }
    }

    fn dev_ac() -> AccessControl {
        AccessControl::new(0, 3, 0, 123)
            .with_rights(0, Rights::from_bits(0x0F).unwrap_or_default())
            .with_rights(999, Rights::READ)
    }

    #[test]
    fn rights_bits_contains_and_union() {
        let rw = Rights::READ | Rights::WRITE;
        assert_eq!(rw.bits(), 3);
        assert!(rw.contains(Rights::READ));
        assert!(!rw.contains(Rights::EXECUTE));
        assert!(Rights::FULL.contains(rw));
        let mut r = Rights::NONE;
        r |= Rights::CREATE;
        assert_eq!(r, Rights::CREATE);
        assert_eq!(
            Rights::READ | Rights::WRITE | Rights::EXECUTE | Rights::DELETE | Rights::CREATE,
            Rights::FULL
        );
    }

    #[test]
    fn rights_from_bits_rejects_above_31() {
        assert_eq!(Rights::from_bits(31), Some(Rights::FULL));
        assert_eq!(Rights::from_bits(32), None);
        assert_eq!(Rights::from_bits(0xFF), None);
    }

    #[test]
    fn rights_display_letters() {
        assert_eq!(Rights::FULL.to_string(), "RWEDC");
        assert_eq!((Rights::READ | Rights::DELETE).to_string(), "RD");
        assert_eq!(Rights::NONE.to_string(), "-");
    }

    #[test]
    fn path_parses_all_four_depths() {
        assert_eq!(path("/3").ac_key(), (3, OBJECT_LEVEL));
        assert_eq!(path("/3/0").ac_key(), (3, 0));
        let p = path("/3/0/1/2");
        assert_eq!(
            (
                p.object_id,
                p.instance_id,
                p.resource_id,
                p.resource_instance_id
            ),
            (3, Some(0), Some(1), Some(2))
        );
        assert_eq!(path("/3/0/1").resource_instance_id, None);
    }

    #[test]
    fn path_display_round_trips() {
        for s in ["/3", "/3/0", "/3/0/1", "/65534/1/2/3"] {
            assert_eq!(path(s).to_string(), s);
        }
    }

    #[test]
    fn path_rejects_malformed_input() {
        for bad in [
            "",
            "/",
            "3/0",
            "/3/",
            "//3",
            "/3//0",
            "/3/0/1/2/3",
            "/a",
            "/+3",
            "/-1",
            "/03",
            "/3/0x1",
            "/65535",
            "/3/65535",
            "/70000",
            "/3 ",
            " /3",
            "/3/0/1/99999999999999999999",
        ] {
            assert!(LwPath::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn path_error_names_the_segment() {
        assert_eq!(
            LwPath::parse("/3/x"),
            Err(PathError::NotDecimal {
                path: "/3/x".into(),
                index: 1
            })
        );
        assert_eq!(
            LwPath::parse("/65535"),
            Err(PathError::OutOfRange {
                path: "/65535".into(),
                index: 0
            })
        );
    }

    #[test]
    fn effective_rights_prefers_explicit_entry() {
        let ac = dev_ac().with_rights(123, Rights::READ);
        assert_eq!(effective_rights(&ac, 999), Rights::READ);
        assert_eq!(effective_rights(&ac, 123), Rights::READ);
    }

    #[test]
    fn effective_rights_owner_without_entry_has_full() {
        assert_eq!(effective_rights(&dev_ac(), 123), Rights::FULL);
    }

    #[test]
    fn effective_rights_falls_back_to_default_then_none() {
        assert_eq!(effective_rights(&dev_ac(), 5).bits(), 0x0F);
        let no_default = AccessControl::new(0, 3, 0, 123);
        assert_eq!(effective_rights(&no_default, 5), Rights::NONE);
    }

    #[test]
    fn effective_rights_reserved_owner_grants_nothing_extra() {
        let ac = AccessControl::new(0, 3, 0, 0);
        assert_eq!(effective_rights(&ac, 0), Rights::NONE);
    }

    #[test]
    fn owner_policy_allows_owner_only() {
        let acs = [dev_ac()];
        assert_eq!(
            lwm2m_verdict(
                Lwm2mPolicy::Owner,
                &acs,
                &path("/3/0/1"),
                Operation::Replace,
                &server(123)
            ),
            Verdict::Allowed
        );
        assert_eq!(
            lwm2m_verdict(
                Lwm2mPolicy::Owner,
                &acs,
                &path("/3/0/1"),
                Operation::Replace,
                &server(101)
            ),
            Verdict::Denied {
                detail: "AC instance /2/0 for /3/0/1: owner is 123, server is 101".into()
            }
        );
    }

    #[test]
    fn owner_policy_denies_even_with_write_bit() {
        let acs = [dev_ac().with_rights(101, Rights::FULL)];
        assert!(matches!(
            lwm2m_verdict(
                Lwm2mPolicy::Owner,
                &acs,
                &path("/3/0"),
                Operation::Replace,
                &server(101)
            ),
            Verdict::Denied { .. }
        ));
    }

    #[test]
    fn owner_policy_never_passes_reserved_owner() {
        for owner in [0, 65535] {
            let acs = [AccessControl::new(0, 3, 0, owner)];
            for ssid in [0, 65535] {
                assert!(matches!(
                    ssid_verdict(
                        Lwm2mPolicy::Owner,
                        &acs,
                        &path("/3/0"),
                        Operation::Replace,
                        ssid
                    ),
                    Verdict::Denied { .. }
                ));
            }
        }
    }

    #[test]
    fn missing_instance_is_no_acl() {
        let acs = [dev_ac()];
        for p in ["/3/1", "/3", "/4/0"] {
            for policy in [Lwm2mPolicy::Owner, Lwm2mPolicy::WriteBit] {
                assert!(matches!(
                    lwm2m_verdict(policy, &acs, &path(p), Operation::Replace, &server(123)),
                    Verdict::NoAcl { .. }
                ));
            }
        }
    }

    #[test]
    fn object_level_path_uses_65535_instance() {
        let acs = [AccessControl::new(7, 3, OBJECT_LEVEL, 101)];
        assert_eq!(
            lwm2m_verdict(
                Lwm2mPolicy::Owner,
                &acs,
                &path("/3"),
                Operation::Replace,
                &server(101)
            ),
            Verdict::Allowed
        );
    }

    #[test]
    fn write_bit_policy_uses_effective_rights() {
        let acs = [dev_ac()];
        // 999 has explicit R only.
        assert!(matches!(
            lwm2m_verdict(
                Lwm2mPolicy::WriteBit,
                &acs,
                &path("/3/0"),
                Operation::Replace,
                &server(999)
            ),
            Verdict::Denied { .. }
        ));
        // 5 falls back to default 0x0F (includes W).
        assert_eq!(
            lwm2m_verdict(
                Lwm2mPolicy::WriteBit,
                &acs,
                &path("/3/0"),
                Operation::Replace,
                &server(5)
            ),
            Verdict::Allowed
        );
        // Owner without entry has full rights.
        assert_eq!(
            lwm2m_verdict(
                Lwm2mPolicy::WriteBit,
                &acs,
                &path("/3/0"),
                Operation::Replace,
                &server(123)
            ),
            Verdict::Allowed
        );
    }

    #[test]
    fn duplicate_instances_must_all_allow() {
        let acs = [dev_ac(), AccessControl::new(1, 3, 0, 101)];
        assert!(matches!(
            lwm2m_verdict(
                Lwm2mPolicy::Owner,
                &acs,
                &path("/3/0"),
                Operation::Replace,
                &server(123)
            ),
            Verdict::Denied { .. }
        ));
    }

    #[test]
    fn policy_names_parse_and_print() {
        assert_eq!("owner".parse(), Ok(Lwm2mPolicy::Owner));
        assert_eq!("write-bit".parse(), Ok(Lwm2mPolicy::WriteBit));
        assert!("Owner".parse::<Lwm2mPolicy>().is_err());
        assert_eq!(Lwm2mPolicy::WriteBit.to_string(), "write-bit");
    }

    #[test]
    fn get_needs_the_read_bit_in_the_principals_effective_rights() {
        let acs = [dev_ac().with_rights(102, Rights::WRITE)];
        for policy in [Lwm2mPolicy::Owner, Lwm2mPolicy::WriteBit] {
            let get =
                |ssid| lwm2m_verdict(policy, &acs, &path("/3/0/1"), Operation::Get, &server(ssid));
            // 999: explicit R. 5: no entry, default 0x0F. 123: owner without entry, full.
            assert_eq!(get(999), Verdict::Allowed, "{policy}");
            assert_eq!(get(5), Verdict::Allowed, "{policy}");
            assert_eq!(get(123), Verdict::Allowed, "{policy}");
            // 102: an explicit W-only entry overrides the default's R.
            assert_eq!(
                get(102),
                Verdict::Denied {
                    detail:
                        "AC instance /2/0 for /3/0/1: server 102 has rights W (no R), owner is 123"
                            .into()
                },
                "{policy}"
            );
        }
    }

    #[test]
    fn get_without_entry_default_or_ownership_fails_closed() {
        let acs = [AccessControl::new(0, 3, 0, 123).with_rights(999, Rights::READ)];
        for policy in [Lwm2mPolicy::Owner, Lwm2mPolicy::WriteBit] {
            assert!(matches!(
                lwm2m_verdict(policy, &acs, &path("/3/0"), Operation::Get, &server(5)),
                Verdict::Denied { .. }
            ));
            assert!(matches!(
                lwm2m_verdict(policy, &acs, &path("/4/0"), Operation::Get, &server(999)),
                Verdict::NoAcl { .. }
            ));
        }
    }

    #[test]
    fn exec_delete_and_add_map_to_e_d_and_c() {
        let acs = [AccessControl::new(0, 3, 0, 123)
            .with_rights(0, Rights::READ)
            .with_rights(102, Rights::EXECUTE)
            .with_rights(103, Rights::DELETE)
            .with_rights(104, Rights::CREATE)];
        let verdict =
            |op, ssid| lwm2m_verdict(Lwm2mPolicy::Owner, &acs, &path("/3/0"), op, &server(ssid));
        for (op, allowed) in [
            (Operation::Exec, 102),
            (Operation::Delete, 103),
            (Operation::Add, 104),
        ] {
            for ssid in [102, 103, 104, 5] {
                let v = verdict(op, ssid);
                if ssid == allowed {
                    assert_eq!(v, Verdict::Allowed, "{op} by {ssid}");
                } else {
                    assert!(matches!(v, Verdict::Denied { .. }), "{op} by {ssid}: {v:?}");
                }
            }
        }
        // The owner holds every right, so every verb passes for it.
        for op in Operation::ALL {
            assert_eq!(verdict(op, 123), Verdict::Allowed, "{op}");
        }
    }

    #[test]
    fn replace_keeps_owner_vs_write_bit_semantics() {
        // 102 holds W explicitly but does not own the instance.
        let acs = [dev_ac().with_rights(102, Rights::READ | Rights::WRITE)];
        let replace = |policy, ssid| {
            lwm2m_verdict(
                policy,
                &acs,
                &path("/3/0"),
                Operation::Replace,
                &server(ssid),
            )
        };
        assert!(matches!(
            replace(Lwm2mPolicy::Owner, 102),
            Verdict::Denied { .. }
        ));
        assert_eq!(replace(Lwm2mPolicy::WriteBit, 102), Verdict::Allowed);
        assert_eq!(replace(Lwm2mPolicy::Owner, 123), Verdict::Allowed);
        assert_eq!(replace(Lwm2mPolicy::WriteBit, 123), Verdict::Allowed);
    }
}
