//! OMA DM TND ACL strings: strict parsing, canonical printing, and the
//! `replace` / `tnd-strict` policies that turn an ACL chain into a [`Verdict`]
//! on whether a [`Principal`] may perform an [`Operation`].
//!
//! # Format
//!
//! ```text
//! acl   := "" | entry ('&' entry)*
//! entry := cmd '=' id ('+' id)*
//! cmd   := "Add" | "Delete" | "Exec" | "Get" | "Replace"
//! id    := '*' | 1*(printable ASCII except '=' '&' '*' '+' and whitespace)
//! ```
//!
//! The empty string is the valid empty ACL: the node inherits its parent's.
//! A command may appear in several entries; its grants are then the union.
//! Entry and id order is preserved, so `parse(print(x)) == x`.
//!
//! This module owns only the string model and its evaluation. Reading the
//! chain of ACLs from a device (node first, then ancestors) is `south`'s job.

use std::fmt;
use std::str::FromStr;

use super::{DmCommand, Operation, Principal, Verdict, snippet, truncate};

/// Who an ACL entry names (the server asking is a [`Principal`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Grantee {
    /// `*`: every server.
    Any,
    /// One DM ServerID.
    Server(String),
}

impl fmt::Display for Grantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grantee::Any => f.write_str("*"),
            Grantee::Server(id) => f.write_str(id),
        }
    }
}

/// One `cmd=id+id…` entry of a DM ACL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DmAclEntry {
    command: DmCommand,
    grantees: Vec<Grantee>,
}

impl DmAclEntry {
    /// The command this entry grants.
    pub fn command(&self) -> DmCommand {
        self.command
    }

    /// Who the entry grants its command to, in the order written (never empty).
    pub fn grantees(&self) -> &[Grantee] {
        &self.grantees
    }
}

/// A parsed DM ACL: its entries in order. Empty means "inherit from the parent".
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct DmAcl {
    entries: Vec<DmAclEntry>,
}

/// A DM ACL string that does not follow the grammar. Positions are byte offsets
/// into the string that was parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DmAclError {
    /// `&&`, a leading or trailing `&`, or `&` alone.
    #[error("empty ACL entry at byte {pos}")]
    EmptyEntry {
        /// Where the empty entry starts.
        pos: usize,
    },
    /// An entry without `=`.
    #[error("ACL entry {entry:?} at byte {pos} has no '='")]
    MissingEquals {
        /// Where the entry starts.
        pos: usize,
        /// The entry (truncated).
        entry: String,
    },
    /// The part before `=` is not one of the five commands (case-sensitive).
    #[error("unknown command {found:?} at byte {pos} (expected Add, Delete, Exec, Get or Replace)")]
    UnknownCommand {
        /// Where the command starts.
        pos: usize,
        /// What was found (truncated).
        found: String,
    },
    /// `Get=`, `Get=A+`, `Get=+A`, `Get=A++B`.
    #[error("empty server id at byte {pos}")]
    EmptyId {
        /// Where the id should have been.
        pos: usize,
    },
    /// `*` inside a longer id, e.g. `Get=A*`.
    #[error("'*' must stand alone as an id, at byte {pos}")]
    MisplacedWildcard {
        /// Where the `*` is.
        pos: usize,
    },
    /// Whitespace, control, non-ASCII or a stray `=` inside an id.
    #[error("invalid character {found:?} in server id at byte {pos}")]
    InvalidChar {
        /// Where the character is.
        pos: usize,
        /// The character.
        found: char,
    },
}

impl DmAcl {
    /// Parse an ACL string strictly (see the module's `# Format`).
    pub fn parse(s: &str) -> Result<DmAcl, DmAclError> {
        let mut entries = Vec::new();
        if s.is_empty() {
            return Ok(DmAcl { entries });
        }
        let mut pos = 0usize;
        for raw in s.split('&') {
            entries.push(parse_entry(raw, pos)?);
            pos = pos.saturating_add(raw.len()).saturating_add(1);
        }
        Ok(DmAcl { entries })
    }

    /// An ACL from already-validated entries, e.g. to build one in code.
    /// Each id is checked as [`DmAcl::parse`] would; `grantees` must not be empty.
    pub fn from_entries<I>(entries: I) -> Result<DmAcl, DmAclError>
    where
        I: IntoIterator<Item = (DmCommand, Vec<Grantee>)>,
    {
        let mut out = Vec::new();
        for (command, grantees) in entries {
            if grantees.is_empty() {
                return Err(DmAclError::EmptyId { pos: 0 });
            }
            for p in &grantees {
                if let Grantee::Server(id) = p {
                    check_id(id, 0)?;
                }
            }
            out.push(DmAclEntry { command, grantees });
        }
        Ok(DmAcl { entries: out })
    }

    /// Whether this is the empty ACL ("inherit from the parent").
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, in order.
    pub fn entries(&self) -> &[DmAclEntry] {
        &self.entries
    }

    /// Whether any entry for `cmd` names `server_id` or `*`.
    pub fn grants(&self, cmd: DmCommand, server_id: &str) -> bool {
        self.entries
            .iter()
            .filter(|e| e.command == cmd)
            .flat_map(|e| e.grantees.iter())
            .any(|p| match p {
                Grantee::Any => true,
                Grantee::Server(id) => id == server_id,
            })
    }

    /// Every explicit server id (not `*`), in order of appearance; an id named
    /// in several entries is yielded each time. For "unknown ServerID" checks.
    pub fn named_servers(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .flat_map(|e| e.grantees.iter())
            .filter_map(|p| match p {
                Grantee::Any => None,
                Grantee::Server(id) => Some(id.as_str()),
            })
    }
}

fn parse_entry(raw: &str, pos: usize) -> Result<DmAclEntry, DmAclError> {
    if raw.is_empty() {
        return Err(DmAclError::EmptyEntry { pos });
    }
    let Some((cmd, ids)) = raw.split_once('=') else {
        return Err(DmAclError::MissingEquals {
            pos,
            entry: snippet(raw),
        });
    };
    let command = cmd
        .parse::<DmCommand>()
        .map_err(|_| DmAclError::UnknownCommand {
            pos,
            found: snippet(cmd),
        })?;
    let mut id_pos = pos.saturating_add(cmd.len()).saturating_add(1);
    let mut grantees = Vec::new();
    for id in ids.split('+') {
        if id == "*" {
            grantees.push(Grantee::Any);
        } else {
            check_id(id, id_pos)?;
            grantees.push(Grantee::Server(id.to_owned()));
        }
        id_pos = id_pos.saturating_add(id.len()).saturating_add(1);
    }
    Ok(DmAclEntry { command, grantees })
}

/// Check a non-wildcard server id; `pos` is where it starts.
pub(crate) fn check_id(id: &str, pos: usize) -> Result<(), DmAclError> {
    if id.is_empty() {
        return Err(DmAclError::EmptyId { pos });
    }
    for (i, ch) in id.char_indices() {
        let at = pos.saturating_add(i);
        match ch {
            '*' => return Err(DmAclError::MisplacedWildcard { pos: at }),
            '=' | '&' | '+' => return Err(DmAclError::InvalidChar { pos: at, found: ch }),
            c if c.is_ascii_graphic() => {}
            c => return Err(DmAclError::InvalidChar { pos: at, found: c }),
        }
    }
    Ok(())
}

impl fmt::Display for DmAcl {
    /// Canonical form: entries joined by `&`, ids by `+`, in parsed order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str("&")?;
            }
            write!(f, "{}=", e.command)?;
            for (j, p) in e.grantees.iter().enumerate() {
                if j > 0 {
                    f.write_str("+")?;
                }
                write!(f, "{p}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for DmAcl {
    type Err = DmAclError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DmAcl::parse(s)
    }
}

/// How a `dm`-profile device's ACL decides whether a server may change a grant
/// ([`Operation::Replace`]); every other operation reads the node's effective ACL under either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DmPolicy {
    /// The CR read literally: the effective ACL of the URI must grant Replace.
    #[default]
    Replace,
    /// The TND rule: interior node → its own Replace; leaf → Replace on the parent.
    TndStrict,
}

/// A policy name other than `replace` or `tnd-strict`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown DM policy {found:?} (expected \"replace\" or \"tnd-strict\")")]
pub struct UnknownDmPolicy {
    /// What was found (truncated).
    pub found: String,
}

impl FromStr for DmPolicy {
    type Err = UnknownDmPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "replace" => Ok(DmPolicy::Replace),
            "tnd-strict" => Ok(DmPolicy::TndStrict),
            _ => Err(UnknownDmPolicy { found: snippet(s) }),
        }
    }
}

impl fmt::Display for DmPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DmPolicy::Replace => "replace",
            DmPolicy::TndStrict => "tnd-strict",
        })
    }
}

/// Decide whether `principal` may perform `operation` on a node.
///
/// `chain`: the node's own ACL first, then its parent's, … up to the root, as
/// read from the device (the reader may stop after the first non-empty one).
/// `is_interior`: whether the node at the URI is an interior node.
///
/// `Get`, `Add`, `Delete`, `Exec`: allowed iff the effective ACL (first
/// non-empty in `chain`) has an entry for that command naming the principal's
/// ServerID (or `*`), under either policy.
///
/// `Replace` — the granting question — follows the policy:
///
/// * [`DmPolicy::Replace`]: allowed iff the effective ACL grants Replace to the
///   principal's ServerID (or `*`).
/// * [`DmPolicy::TndStrict`]: interior node → as above; leaf → the same rule on
///   the parent's effective ACL (`chain[1..]`; the leaf's own ACL is ignored, so
///   for a leaf the reader must read past a non-empty leaf ACL to the parent).
///
/// No non-empty ACL where one is looked for → [`Verdict::NoAcl`]. Not granted →
/// [`Verdict::Denied`] whose detail names the ACL checked and where it was found.
pub fn dm_verdict(
    policy: DmPolicy,
    chain: &[DmAcl],
    is_interior: bool,
    operation: Operation,
    principal: &Principal,
) -> Verdict {
    let (start, what) = match (operation, policy) {
        (Operation::Replace, DmPolicy::TndStrict) if !is_interior => (1usize, "the leaf's parent"),
        (Operation::Replace, DmPolicy::TndStrict) => (0, "the interior node"),
        _ => (0, "the node"),
    };
    let searched = chain.get(start..).unwrap_or(&[]);
    let found = searched.iter().enumerate().find(|(_, acl)| !acl.is_empty());
    let Some((i, acl)) = found else {
        return Verdict::NoAcl {
            detail: format!(
                "no non-empty ACL on {what} or its ancestors ({} ACLs read, policy {policy})",
                searched.len()
            ),
        };
    };
    let command = operation.dm_command();
    let server_id = principal.server_id();
    if acl.grants(command, server_id) {
        return Verdict::Allowed;
    }
    let level = i.saturating_add(start);
    let place = match level {
        0 => "the node itself".to_owned(),
        1 => "the parent".to_owned(),
        n => format!("the ancestor {n} levels up"),
    };
    Verdict::Denied {
        detail: format!(
            "ACL \"{}\" (on {place}, policy {policy}) does not grant {command} to {server_id:?}",
            truncate(&acl.to_string(), 256)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(server_id: &str) -> Principal {
        match Principal::new(server_id, 101) {
            Ok(p) => p,
            Err(e) => panic!("test principal {server_id:?} should be valid: {e}"),
        }
    }

    fn acl(s: &str) -> DmAcl {
        match DmAcl::parse(s) {
            Ok(a) => a,
            Err(e) => panic!("test ACL {s:?} should parse: {e}"),
        }
    }

    #[test]
    fn empty_string_is_the_empty_acl() {
        let a = acl("");
        assert!(a.is_empty());
        assert_eq!(a.to_string(), "");
        assert!(!a.grants(DmCommand::Get, "A"));
    }

    #[test]
    fn parses_entries_and_principals_in_order() {
        let a = acl("Get=A+B&Replace=*");
        assert_eq!(a.entries().len(), 2);
        assert_eq!(a.entries()[0].command(), DmCommand::Get);
        assert_eq!(
            a.entries()[0].grantees(),
            &[Grantee::Server("A".into()), Grantee::Server("B".into())]
        );
        assert_eq!(a.entries()[1].grantees(), &[Grantee::Any]);
    }

    #[test]
    fn print_then_parse_is_identity() {
        for s in [
            "",
            "Get=A",
            "Add=*&Delete=*&Get=*&Replace=*",
            "Replace=ServerA+ServerB&Get=ServerB&Exec=x.y-z_1",
            "Get=A&Get=B",
            "Get=*+A",
        ] {
            let a = acl(s);
            assert_eq!(a.to_string(), s);
            assert_eq!(DmAcl::parse(&a.to_string()), Ok(a));
        }
    }

    #[test]
    fn grants_named_server_and_wildcard_only_for_that_command() {
        let a = acl("Get=A+B&Replace=A&Exec=*");
        assert!(a.grants(DmCommand::Get, "B"));
        assert!(a.grants(DmCommand::Replace, "A"));
        assert!(!a.grants(DmCommand::Replace, "B"));
        assert!(a.grants(DmCommand::Exec, "anyone"));
        assert!(!a.grants(DmCommand::Delete, "A"));
        assert!(!a.grants(DmCommand::Get, "a"), "ids are case-sensitive");
    }

    #[test]
    fn duplicate_command_entries_are_a_union() {
        let a = acl("Get=A&Get=B");
        assert!(a.grants(DmCommand::Get, "A"));
        assert!(a.grants(DmCommand::Get, "B"));
    }

    #[test]
    fn named_servers_lists_explicit_ids_but_not_wildcard() {
        let a = acl("Get=A+*&Replace=B&Exec=A");
        assert_eq!(a.named_servers().collect::<Vec<_>>(), ["A", "B", "A"]);
    }

    #[test]
    fn rejects_empty_entries_with_position() {
        assert_eq!(DmAcl::parse("&"), Err(DmAclError::EmptyEntry { pos: 0 }));
        assert_eq!(
            DmAcl::parse("Get=A&&Replace=B"),
            Err(DmAclError::EmptyEntry { pos: 6 })
        );
        assert_eq!(
            DmAcl::parse("Get=A&"),
            Err(DmAclError::EmptyEntry { pos: 6 })
        );
    }

    #[test]
    fn rejects_unknown_or_miscased_command() {
        assert!(matches!(
            DmAcl::parse("Get=A&get=B"),
            Err(DmAclError::UnknownCommand { pos: 6, .. })
        ));
        assert!(matches!(
            DmAcl::parse("Copy=A"),
            Err(DmAclError::UnknownCommand { pos: 0, .. })
        ));
    }

    #[test]
    fn rejects_entry_without_equals() {
        assert!(matches!(
            DmAcl::parse("Get"),
            Err(DmAclError::MissingEquals { pos: 0, .. })
        ));
    }

    #[test]
    fn rejects_empty_ids_with_position() {
        assert_eq!(DmAcl::parse("Get="), Err(DmAclError::EmptyId { pos: 4 }));
        assert_eq!(DmAcl::parse("Get=A+"), Err(DmAclError::EmptyId { pos: 6 }));
        assert_eq!(DmAcl::parse("Get=+A"), Err(DmAclError::EmptyId { pos: 4 }));
        assert_eq!(
            DmAcl::parse("Get=A++B"),
            Err(DmAclError::EmptyId { pos: 6 })
        );
    }

    #[test]
    fn rejects_whitespace_and_forbidden_chars() {
        assert_eq!(
            DmAcl::parse("Get=A B"),
            Err(DmAclError::InvalidChar { pos: 5, found: ' ' })
        );
        assert_eq!(
            DmAcl::parse(" Get=A"),
            Err(DmAclError::UnknownCommand {
                pos: 0,
                found: " Get".into()
            })
        );
        assert_eq!(
            DmAcl::parse("Get=A=B"),
            Err(DmAclError::InvalidChar { pos: 5, found: '=' })
        );
        assert_eq!(
            DmAcl::parse("Get=A\n"),
            Err(DmAclError::InvalidChar {
                pos: 5,
                found: '\n'
            })
        );
        assert_eq!(
            DmAcl::parse("Get=Ä"),
            Err(DmAclError::InvalidChar {
                pos: 4, found: 'Ä'
            })
        );
        assert_eq!(
            DmAcl::parse("Get=A*"),
            Err(DmAclError::MisplacedWildcard { pos: 5 })
        );
        assert_eq!(
            DmAcl::parse("Get=**"),
            Err(DmAclError::MisplacedWildcard { pos: 4 })
        );
    }

    #[test]
    fn error_messages_say_what_and_where() {
        let e = DmAcl::parse("Get=A&Bogus=B").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some(
                "unknown command \"Bogus\" at byte 6 (expected Add, Delete, Exec, Get or Replace)"
            )
        );
    }

    #[test]
    fn from_entries_validates_ids() {
        let ok = DmAcl::from_entries([(DmCommand::Get, vec![Grantee::Server("B".into())])]);
        assert_eq!(ok.map(|a| a.to_string()), Ok("Get=B".to_owned()));
        assert!(
            DmAcl::from_entries([(DmCommand::Get, vec![Grantee::Server("a b".into())])]).is_err()
        );
        assert!(DmAcl::from_entries([(DmCommand::Get, vec![])]).is_err());
    }

    #[test]
    fn never_panics_on_arbitrary_strings() {
        let samples = [
            "=",
            "==",
            "&&&",
            "+",
            "Get=+",
            "Get=&",
            "Replace=*&",
            "\u{0}",
            "Get=\u{7f}",
            "Get=é",
            "Get=A+*+B",
            "Get=A&Replace",
            "ÄÖÜ=ß",
        ];
        for s in samples {
            let _ = DmAcl::parse(s);
            for (i, _) in s.char_indices() {
                if let Some(prefix) = s.get(..i) {
                    let _ = DmAcl::parse(prefix);
                }
            }
        }
    }

    #[test]
    fn policy_names_parse_and_print() {
        assert_eq!("replace".parse(), Ok(DmPolicy::Replace));
        assert_eq!("tnd-strict".parse(), Ok(DmPolicy::TndStrict));
        assert!("Replace".parse::<DmPolicy>().is_err());
        assert_eq!(DmPolicy::TndStrict.to_string(), "tnd-strict");
        assert_eq!(DmPolicy::default(), DmPolicy::Replace);
    }

    #[test]
    fn replace_policy_uses_first_non_empty_acl_in_chain() {
        let chain = [acl(""), acl("Replace=A"), acl("Replace=B")];
        assert_eq!(
            dm_verdict(
                DmPolicy::Replace,
                &chain,
                false,
                Operation::Replace,
                &who("A")
            ),
            Verdict::Allowed
        );
        assert!(matches!(
            dm_verdict(
                DmPolicy::Replace,
                &chain,
                false,
                Operation::Replace,
                &who("B")
            ),
            Verdict::Denied { .. }
        ));
    }

    #[test]
    fn replace_policy_honours_wildcard() {
        let chain = [acl("Get=A&Replace=*")];
        assert_eq!(
            dm_verdict(
                DmPolicy::Replace,
                &chain,
                true,
                Operation::Replace,
                &who("Z")
            ),
            Verdict::Allowed
        );
    }

    #[test]
    fn replace_policy_denies_get_only_and_names_the_acl() {
        let chain = [acl(""), acl("Get=A")];
        let v = dm_verdict(
            DmPolicy::Replace,
            &chain,
            false,
            Operation::Replace,
            &who("A"),
        );
        let Verdict::Denied { detail } = v else {
            panic!("expected Denied, got {v:?}");
        };
        assert!(detail.contains("Get=A"), "{detail}");
        assert!(detail.contains("parent"), "{detail}");
    }

    #[test]
    fn no_non_empty_acl_is_no_acl() {
        assert!(matches!(
            dm_verdict(DmPolicy::Replace, &[], false, Operation::Replace, &who("A")),
            Verdict::NoAcl { .. }
        ));
        assert!(matches!(
            dm_verdict(
                DmPolicy::Replace,
                &[acl(""), acl("")],
                true,
                Operation::Replace,
                &who("A")
            ),
            Verdict::NoAcl { .. }
        ));
    }

    #[test]
    fn tnd_strict_leaf_checks_parent_not_own_acl() {
        let chain = [acl("Replace=A"), acl("Replace=B")];
        assert!(matches!(
            dm_verdict(
                DmPolicy::TndStrict,
                &chain,
                false,
                Operation::Replace,
                &who("A")
            ),
            Verdict::Denied { .. }
        ));
        assert_eq!(
            dm_verdict(
                DmPolicy::TndStrict,
                &chain,
                false,
                Operation::Replace,
                &who("B")
            ),
            Verdict::Allowed
        );
    }

    #[test]
    fn tnd_strict_leaf_without_parent_is_no_acl() {
        assert!(matches!(
            dm_verdict(
                DmPolicy::TndStrict,
                &[acl("Replace=A")],
                false,
                Operation::Replace,
                &who("A")
            ),
            Verdict::NoAcl { .. }
        ));
    }

    #[test]
    fn tnd_strict_interior_checks_its_own_effective_acl() {
        let chain = [acl("Replace=A"), acl("Replace=B")];
        assert_eq!(
            dm_verdict(
                DmPolicy::TndStrict,
                &chain,
                true,
                Operation::Replace,
                &who("A")
            ),
            Verdict::Allowed
        );
        assert!(matches!(
            dm_verdict(
                DmPolicy::TndStrict,
                &chain,
                true,
                Operation::Replace,
                &who("B")
            ),
            Verdict::Denied { .. }
        ));
    }

    #[test]
    fn get_is_allowed_by_a_get_entry_for_the_principal_or_wildcard() {
        let chain = [acl(""), acl("Get=ServerB&Replace=ServerA")];
        assert_eq!(
            dm_verdict(
                DmPolicy::Replace,
                &chain,
                false,
                Operation::Get,
                &who("ServerB")
            ),
            Verdict::Allowed
        );
        let chain = [acl("Get=*")];
        assert_eq!(
            dm_verdict(
                DmPolicy::Replace,
                &chain,
                true,
                Operation::Get,
                &who("ServerZ")
            ),
            Verdict::Allowed
        );
    }

    #[test]
    fn get_is_denied_without_a_get_entry_even_with_replace() {
        let chain = [acl("Replace=ServerB&Get=ServerA")];
        let v = dm_verdict(
            DmPolicy::Replace,
            &chain,
            true,
            Operation::Get,
            &who("ServerB"),
        );
        let Verdict::Denied { detail } = v else {
            panic!("expected Denied, got {v:?}");
        };
        assert!(
            detail.contains("does not grant Get to \"ServerB\""),
            "{detail}"
        );
    }

    #[test]
    fn get_uses_the_effective_acl_under_tnd_strict_too() {
        // A leaf's own non-empty ACL decides a Get; only Replace looks at the parent.
        let chain = [acl("Get=ServerB"), acl("Replace=ServerA")];
        assert_eq!(
            dm_verdict(
                DmPolicy::TndStrict,
                &chain,
                false,
                Operation::Get,
                &who("ServerB")
            ),
            Verdict::Allowed
        );
        assert!(matches!(
            dm_verdict(
                DmPolicy::TndStrict,
                &chain,
                false,
                Operation::Get,
                &who("ServerA")
            ),
            Verdict::Denied { .. }
        ));
        assert_eq!(
            dm_verdict(
                DmPolicy::TndStrict,
                &chain,
                false,
                Operation::Replace,
                &who("ServerA")
            ),
            Verdict::Allowed
        );
    }

    #[test]
    fn exec_add_and_delete_check_their_own_entries() {
        let chain = [acl("Exec=ServerB&Delete=ServerC&Add=ServerD")];
        let verdict = |op, id| dm_verdict(DmPolicy::Replace, &chain, true, op, &who(id));
        assert_eq!(verdict(Operation::Exec, "ServerB"), Verdict::Allowed);
        assert_eq!(verdict(Operation::Delete, "ServerC"), Verdict::Allowed);
        assert_eq!(verdict(Operation::Add, "ServerD"), Verdict::Allowed);
        for (op, id) in [
            (Operation::Exec, "ServerC"),
            (Operation::Delete, "ServerB"),
            (Operation::Add, "ServerB"),
            (Operation::Get, "ServerB"),
            (Operation::Replace, "ServerB"),
        ] {
            assert!(
                matches!(verdict(op, id), Verdict::Denied { .. }),
                "{op} by {id}"
            );
        }
    }

    #[test]
    fn a_principal_named_nowhere_fails_closed_for_every_operation() {
        let chain = [acl("Add=A&Delete=A&Exec=A&Get=A+B&Replace=A")];
        for op in Operation::ALL {
            for policy in [DmPolicy::Replace, DmPolicy::TndStrict] {
                assert!(
                    matches!(
                        dm_verdict(policy, &chain, true, op, &who("ServerX")),
                        Verdict::Denied { .. }
                    ),
                    "{op} under {policy}"
                );
            }
            assert!(matches!(
                dm_verdict(DmPolicy::Replace, &[acl("")], true, op, &who("ServerX")),
                Verdict::NoAcl { .. }
            ));
        }
    }
}
