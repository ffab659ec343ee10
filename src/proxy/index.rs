//! The privilege index the proxy decides with (issue 8 §2): for (server S, device D, path P,
//! command C), the **longest** privilege URI that is a **segment-wise** prefix of P among the
//! entries whose target covers D, and whether its ACL grants C to S.
//!
//! # Rules
//!
//! * **Coverage.** An entry covers D if it is `Device` with TargetID D, or `Group` with a
//!   TargetID D is a member of ([`Membership`]).
//! * **Segment-wise prefixes.** `/3/0` covers `/3/0` and `/3/0/1`, not `/3/01`; `/` covers
//!   every path. One leading and one trailing `/` are ignored on both sides (`/3/0/` is
//!   `/3/0`); other segments compare literally (the proxy refuses empty segments before it
//!   asks, see [`super::command`]).
//! * **The longest URI decides**, even when a shorter one would allow: its entries grant C to S
//!   ([`DmAcl::grants`]: an entry for C naming `*` or S's ServerID) → [`Decision::Allowed`],
//!   else [`Decision::Denied`].
//! * **Ties at the longest URI: the device-specific entries win.** If a `Device` entry for D
//!   sits at that URI, only the `Device` entries there decide, and group entries at the same
//!   URI are not consulted (a primary can narrow a group's grant for one device, as a longer
//!   URI narrows a shorter one). Among equally specific entries (several groups of D, or
//!   several entries on one target) any one granting allows — they are a union. The entry
//!   reported is the one with the smallest name, so decisions are deterministic.
//! * **No covering entry** → [`Decision::NoPrivilege`]: the caller falls back to the
//!   device's own ACL.
//!
//! # Cost
//!
//! Entries are indexed by target (device id, group id), then by canonical URI. A decision
//! walks the path's prefixes from longest to shortest (at most segments + 1 of them) and, for
//! each, does one hash lookup for D and one per group of D: no scan of the stored privileges.
//! [`PrivilegeIndex::upsert`] and [`PrivilegeIndex::remove`] change the maps in place, so a
//! change is seen by the next decision.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::acl::{Operation, Principal};
use crate::mo::inventory::Inventory;
use crate::mo::{Privilege, PrivilegeName, TargetType};

/// The privilege that allowed a request: who gets to act for it (the grantor, for
/// delegation) and what to write in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivilegeGrant {
    /// The entry's node name `<x>`.
    pub name: PrivilegeName,
    /// The entry's URI, as stored.
    pub uri: String,
    /// The ServerID of the server whose verified write made the entry.
    pub grantor: String,
}

/// The outcome of [`PrivilegeIndex::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The longest covering entry grants the command to the server.
    Allowed {
        /// The entry that grants it.
        by: PrivilegeGrant,
    },
    /// The longest covering entries exist and none grants the command to the server (a
    /// shorter URI is not consulted).
    Denied {
        /// The deciding entry (the smallest name among those at the longest URI).
        by: PrivilegeName,
        /// Its URI, as stored.
        uri: String,
    },
    /// No entry covers the device and the path: ask the device's own ACL.
    NoPrivilege,
}

impl Decision {
    /// Whether the request may go to the device on the privilege's authority.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
}

/// Group membership as the index needs it: device id → the groups it is in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    groups_of: HashMap<String, Vec<String>>,
}

impl Membership {
    /// From (group id, member device ids) pairs; a device may be in any number of groups.
    pub fn from_groups<G, M, D>(groups: impl IntoIterator<Item = (G, M)>) -> Membership
    where
        G: Into<String>,
        M: IntoIterator<Item = D>,
        D: Into<String>,
    {
        let mut groups_of: HashMap<String, Vec<String>> = HashMap::new();
        for (group, members) in groups {
            let group = group.into();
            for device in members {
                let list = groups_of.entry(device.into()).or_default();
                if !list.contains(&group) {
                    list.push(group.clone());
                }
            }
        }
        for list in groups_of.values_mut() {
            list.sort();
        }
        Membership { groups_of }
    }

    /// The groups of the gateway's inventory.
    pub fn from_inventory(inventory: &Inventory) -> Membership {
        Membership::from_groups(
            inventory
                .groups()
                .map(|(g, members)| (g, members.iter().map(|d| d.id.clone()))),
        )
    }

    /// The groups `device` is in, sorted (empty if none or unknown).
    pub fn groups_of(&self, device: &str) -> &[String] {
        self.groups_of.get(device).map_or(&[], Vec::as_slice)
    }
}

/// The entries of one target at one canonical URI, by name.
type AtUri = BTreeMap<PrivilegeName, Arc<Privilege>>;
/// One target's entries by canonical URI.
type ByUri = HashMap<String, AtUri>;

/// The stored privileges, indexed for [`PrivilegeIndex::decide`].
#[derive(Debug, Clone, Default)]
pub struct PrivilegeIndex {
    by_name: HashMap<PrivilegeName, Arc<Privilege>>,
    devices: HashMap<String, ByUri>,
    groups: HashMap<String, ByUri>,
    membership: Membership,
}

/// The URI as the index compares it: one leading and one trailing `/` removed (`/` → ``).
fn canonical(uri: &str) -> &str {
    let s = uri.strip_prefix('/').unwrap_or(uri);
    s.strip_suffix('/').unwrap_or(s)
}

/// The canonical segment-wise prefixes of a canonical path, longest first, root (``) last.
fn prefixes(path: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(path);
    std::iter::from_fn(move || {
        let current = next?;
        next = if current.is_empty() {
            None
        } else {
            Some(current.rfind('/').map_or("", |i| &current[..i]))
        };
        Some(current)
    })
}

impl PrivilegeIndex {
    /// An index of `privileges` with `membership` deciding group coverage.
    pub fn new(
        privileges: impl IntoIterator<Item = (PrivilegeName, Privilege)>,
        membership: Membership,
    ) -> PrivilegeIndex {
        let mut index = PrivilegeIndex {
            membership,
            ..PrivilegeIndex::default()
        };
        for (name, privilege) in privileges {
            index.upsert(name, privilege);
        }
        index
    }

    /// Adds or replaces the entry `name` (a move of target or URI included); returns the old
    /// one. The next decision sees it.
    pub fn upsert(&mut self, name: PrivilegeName, privilege: Privilege) -> Option<Privilege> {
        let old = self.remove(&name);
        let privilege = Arc::new(privilege);
        self.targets_mut(privilege.target_type)
            .entry(privilege.target_id.clone())
            .or_default()
            .entry(canonical(&privilege.uri).to_owned())
            .or_default()
            .insert(name.clone(), privilege.clone());
        self.by_name.insert(name, privilege);
        old
    }

    /// Removes the entry `name`; returns it. The next decision no longer sees it.
    pub fn remove(&mut self, name: &PrivilegeName) -> Option<Privilege> {
        let old = self.by_name.remove(name)?;
        let targets = self.targets_mut(old.target_type);
        if let Some(by_uri) = targets.get_mut(&old.target_id) {
            let key = canonical(&old.uri);
            if let Some(at_uri) = by_uri.get_mut(key) {
                at_uri.remove(name);
                if at_uri.is_empty() {
                    by_uri.remove(key);
                }
            }
            if by_uri.is_empty() {
                targets.remove(&old.target_id);
            }
        }
        Some(Arc::unwrap_or_clone(old))
    }

    /// Replaces every entry with `privileges` (the store's whole list); the membership
    /// stays.
    pub fn replace_all(
        &mut self,
        privileges: impl IntoIterator<Item = (PrivilegeName, Privilege)>,
    ) {
        self.by_name.clear();
        self.devices.clear();
        self.groups.clear();
        for (name, privilege) in privileges {
            self.upsert(name, privilege);
        }
    }

    /// Replaces the group membership (the entries stay; coverage follows the new groups).
    pub fn set_membership(&mut self, membership: Membership) {
        self.membership = membership;
    }

    /// The entry `name`, if stored.
    pub fn get(&self, name: &PrivilegeName) -> Option<&Privilege> {
        self.by_name.get(name).map(Arc::as_ref)
    }

    /// How many entries are stored.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    fn targets_mut(&mut self, target_type: TargetType) -> &mut HashMap<String, ByUri> {
        match target_type {
            TargetType::Device => &mut self.devices,
            TargetType::Group => &mut self.groups,
        }
    }

    /// May `server` perform `command` on `path` of `device`, by the stored privileges? See the
    /// module doc for the rules.
    pub fn decide(
        &self,
        server: &Principal,
        device: &str,
        path: &str,
        command: Operation,
    ) -> Decision {
        let own = self.devices.get(device);
        let groups = self.membership.groups_of(device);
        // Most devices are in few groups and few groups hold entries: look them up once.
        let mut group_maps: Vec<&ByUri> = Vec::new();
        for g in groups {
            if let Some(m) = self.groups.get(g.as_str()) {
                group_maps.push(m);
            }
        }
        if own.is_none() && group_maps.is_empty() {
            return Decision::NoPrivilege;
        }
        for key in prefixes(canonical(path)) {
            if let Some(at_uri) = own.and_then(|m| m.get(key)) {
                return judge([at_uri], server, command);
            }
            let tied = group_maps.iter().filter_map(|m| m.get(key));
            if tied.clone().next().is_some() {
                return judge(tied, server, command);
            }
        }
        Decision::NoPrivilege
    }
}

/// The verdict of equally specific entries (non-empty): allowed by the smallest name that
/// grants, else denied by the smallest name.
fn judge<'a>(
    tied: impl IntoIterator<Item = &'a AtUri>,
    server: &Principal,
    command: Operation,
) -> Decision {
    let mut granting: Option<(&PrivilegeName, &Privilege)> = None;
    let mut first: Option<(&PrivilegeName, &Privilege)> = None;
    for at_uri in tied {
        for (name, p) in at_uri {
            if first.is_none_or(|(n, _)| name < n) {
                first = Some((name, p));
            }
            if granting.is_none_or(|(n, _)| name < n)
                && p.acl.grants(command.dm_command(), server.server_id())
            {
                granting = Some((name, p));
            }
        }
    }
    match (granting, first) {
        (Some((name, p)), _) => Decision::Allowed {
            by: PrivilegeGrant {
                name: name.clone(),
                uri: p.uri.clone(),
                grantor: p.grantor.clone(),
            },
        },
        (None, Some((name, p))) => Decision::Denied {
            by: name.clone(),
            uri: p.uri.clone(),
        },
        (None, None) => Decision::NoPrivilege,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::dm::DmAcl;

    fn name(s: &str) -> PrivilegeName {
        PrivilegeName::new(s).expect("name")
    }

    fn entry(target_type: TargetType, target: &str, uri: &str, acl: &str) -> Privilege {
        Privilege {
            target_id: target.into(),
            target_type,
            uri: uri.into(),
            acl: DmAcl::parse(acl).expect("acl"),
            grantor: "ServerA".into(),
            verified_at: "2026-12-02T00:00:00Z".into(),
        }
    }

    fn dev(target: &str, uri: &str, acl: &str) -> Privilege {
        entry(TargetType::Device, target, uri, acl)
    }

    fn grp(target: &str, uri: &str, acl: &str) -> Privilege {
        entry(TargetType::Group, target, uri, acl)
    }

    fn b() -> Principal {
        Principal::new("ServerB", 102).expect("principal")
    }

    fn c() -> Principal {
        Principal::new("ServerC", 103).expect("principal")
    }

    /// dev1 in G1 and G2, dev2 in G1, dev3 in no group.
    fn membership() -> Membership {
        Membership::from_groups([("G1", vec!["dev1", "dev2"]), ("G2", vec!["dev1"])])
    }

    fn index(entries: &[(&str, Privilege)]) -> PrivilegeIndex {
        PrivilegeIndex::new(
            entries.iter().map(|(n, p)| (name(n), p.clone())),
            membership(),
        )
    }

    fn allowed_by(d: &Decision) -> Option<&str> {
        match d {
            Decision::Allowed { by } => Some(by.name.as_str()),
            _ => None,
        }
    }

    fn denied_by(d: &Decision) -> Option<&str> {
        match d {
            Decision::Denied { by, .. } => Some(by.as_str()),
            _ => None,
        }
    }

    #[test]
    fn an_allowed_decision_names_the_entry_uri_and_grantor() {
        let ix = index(&[("p1", dev("dev1", "/3/0", "Get=ServerB"))]);
        assert_eq!(
            ix.decide(&b(), "dev1", "/3/0/1", Operation::Get),
            Decision::Allowed {
                by: PrivilegeGrant {
                    name: name("p1"),
                    uri: "/3/0".into(),
                    grantor: "ServerA".into(),
                }
            }
        );
        assert!(ix.decide(&b(), "dev1", "/3/0", Operation::Get).is_allowed());
    }

    #[test]
    fn the_longest_prefix_denies_even_if_a_shorter_one_allows() {
        let ix = index(&[
            ("short", dev("dev1", "/3", "Get=ServerB")),
            ("long", dev("dev1", "/3/0", "Replace=ServerB")),
        ]);
        let d = ix.decide(&b(), "dev1", "/3/0/1", Operation::Get);
        assert_eq!(
            d,
            Decision::Denied {
                by: name("long"),
                uri: "/3/0".into()
            }
        );
        // Outside the longer URI the shorter one still decides.
        assert_eq!(
            allowed_by(&ix.decide(&b(), "dev1", "/3/1", Operation::Get)),
            Some("short")
        );
        assert_eq!(
            allowed_by(&ix.decide(&b(), "dev1", "/3/0/1", Operation::Replace)),
            Some("long")
        );
    }

    #[test]
    fn the_longest_prefix_allows_even_if_a_shorter_one_denies() {
        let ix = index(&[
            ("root", dev("dev1", "/", "Get=ServerC")),
            ("obj", dev("dev1", "/3", "Get=ServerC")),
            ("res", dev("dev1", "/3/0/1", "Get=ServerB")),
        ]);
        assert_eq!(
            allowed_by(&ix.decide(&b(), "dev1", "/3/0/1", Operation::Get)),
            Some("res")
        );
        assert_eq!(
            denied_by(&ix.decide(&b(), "dev1", "/3/0/2", Operation::Get)),
            Some("obj")
        );
        assert_eq!(
            denied_by(&ix.decide(&b(), "dev1", "/4/0", Operation::Get)),
            Some("root")
        );
    }

    #[test]
    fn prefixes_stop_at_segment_boundaries() {
        let ix = index(&[("p", dev("dev1", "/3/0", "Get=ServerB"))]);
        for covered in ["/3/0", "/3/0/1", "/3/0/1/2"] {
            assert!(
                ix.decide(&b(), "dev1", covered, Operation::Get)
                    .is_allowed(),
                "{covered}"
            );
        }
        for outside in ["/3/01", "/3/00/1", "/3", "/30/0", "/", "/4/0"] {
            assert_eq!(
                ix.decide(&b(), "dev1", outside, Operation::Get),
                Decision::NoPrivilege,
                "{outside}"
            );
        }
    }

    #[test]
    fn trailing_and_leading_slashes_are_one_form() {
        // A stored URI with a trailing '/' (not writable through the MO, but the index
        // must not depend on that) and request paths with and without slashes.
        let ix = index(&[
            ("a", dev("dev1", "/3/0/", "Get=ServerB")),
            ("b", dev("dev1", "/5", "Get=ServerB")),
        ]);
        for path in ["/3/0", "/3/0/", "3/0", "/3/0/1", "/3/0/1/", "/5/", "/5/0/"] {
            assert!(
                ix.decide(&b(), "dev1", path, Operation::Get).is_allowed(),
                "{path}"
            );
        }
        for path in ["/3/01/", "/3/", "/", "", "/50"] {
            assert_eq!(
                ix.decide(&b(), "dev1", path, Operation::Get),
                Decision::NoPrivilege,
                "{path}"
            );
        }
    }

    #[test]
    fn the_root_covers_every_path() {
        let ix = index(&[("all", dev("dev1", "/", "Get=ServerB"))]);
        for path in ["/", "", "/3", "/3/0/1", "/GwConfig/x"] {
            assert_eq!(
                allowed_by(&ix.decide(&b(), "dev1", path, Operation::Get)),
                Some("all"),
                "{path}"
            );
        }
        assert_eq!(
            denied_by(&ix.decide(&b(), "dev1", "/3/0", Operation::Replace)),
            Some("all")
        );
        assert_eq!(
            ix.decide(&b(), "dev2", "/3/0", Operation::Get),
            Decision::NoPrivilege
        );
    }

    #[test]
    fn group_entries_cover_their_members_only() {
        let ix = index(&[("g1", grp("G1", "/3/0", "Get=ServerB"))]);
        assert_eq!(
            allowed_by(&ix.decide(&b(), "dev1", "/3/0/0", Operation::Get)),
            Some("g1")
        );
        assert_eq!(
            allowed_by(&ix.decide(&b(), "dev2", "/3/0/0", Operation::Get)),
            Some("g1")
        );
        assert_eq!(
            ix.decide(&b(), "dev3", "/3/0/0", Operation::Get),
            Decision::NoPrivilege
        );
        assert_eq!(
            ix.decide(&b(), "unknown", "/3/0/0", Operation::Get),
            Decision::NoPrivilege
        );
        // A device entry whose id is a group's id covers no member.
        let ix = index(&[("d", dev("G1", "/3/0", "Get=ServerB"))]);
        assert_eq!(
            ix.decide(&b(), "dev1", "/3/0", Operation::Get),
            Decision::NoPrivilege
        );
    }

    #[test]
    fn a_device_in_two_groups_gets_the_union_at_equal_length() {
        let ix = index(&[
            ("g1", grp("G1", "/3/0", "Get=ServerB")),
            ("g2", grp("G2", "/3/0", "Replace=ServerB")),
        ]);
        // dev1 is in both: either entry may allow.
        assert_eq!(
            allowed_by(&ix.decide(&b(), "dev1", "/3/0/1", Operation::Get)),
            Some("g1")
        );
        assert_eq!(
            allowed_by(&ix.decide(&b(), "dev1", "/3/0/1", Operation::Replace)),
            Some("g2")
        );
        // dev2 is only in G1.
        assert_eq!(
            denied_by(&ix.decide(&b(), "dev2", "/3/0/1", Operation::Replace)),
            Some("g1")
        );
        // Neither grants Exec: denied by the smallest name.
        assert_eq!(
            denied_by(&ix.decide(&b(), "dev1", "/3/0/1", Operation::Exec)),
            Some("g1")
        );
    }

    #[test]
    fn a_longer_group_uri_beats_a_shorter_device_uri() {
        let ix = index(&[
            ("d", dev("dev1", "/3", "Get=ServerB")),
            ("g", grp("G2", "/3/0", "Get=ServerC")),
        ]);
        assert_eq!(
            denied_by(&ix.decide(&b(), "dev1", "/3/0/1", Operation::Get)),
            Some("g")
        );
        assert_eq!(
            allowed_by(&ix.decide(&b(), "dev1", "/3/1", Operation::Get)),
            Some("d")
        );
    }

    #[test]
    fn at_the_same_uri_the_device_entry_wins_over_the_group_entry() {
        // The group allows B, the device-specific entry does not: denied.
        let ix = index(&[
            ("a-group", grp("G1", "/3/0", "Get=ServerB")),
            ("z-device", dev("dev1", "/3/0", "Get=ServerC")),
        ]);
        assert_eq!(
            denied_by(&ix.decide(&b(), "dev1", "/3/0/1", Operation::Get)),
            Some("z-device")
        );
        assert_eq!(
            allowed_by(&ix.decide(&c(), "dev1", "/3/0/1", Operation::Get)),
            Some("z-device")
        );
        // dev2 has no device entry: the group decides.
        assert_eq!(
            allowed_by(&ix.decide(&b(), "dev2", "/3/0/1", Operation::Get)),
            Some("a-group")
        );
        // And the other way round: the device entry allows what the group does not.
        let ix = index(&[
            ("a-group", grp("G1", "/3/0", "Get=ServerC")),
            ("z-device", dev("dev1", "/3/0", "Get=ServerB")),
        ]);
        assert_eq!(
            allowed_by(&ix.decide(&b(), "dev1", "/3/0", Operation::Get)),
            Some("z-device")
        );
        assert_eq!(
            denied_by(&ix.decide(&c(), "dev1", "/3/0", Operation::Get)),
            Some("z-device")
        );
    }

    #[test]
    fn entries_on_one_target_and_uri_are_a_union() {
        let ix = index(&[
            ("p2", dev("dev1", "/3/0", "Get=ServerB")),
            ("p1", dev("dev1", "/3/0", "Replace=ServerB")),
        ]);
        assert_eq!(
            allowed_by(&ix.decide(&b(), "dev1", "/3/0", Operation::Get)),
            Some("p2")
        );
        assert_eq!(
            allowed_by(&ix.decide(&b(), "dev1", "/3/0", Operation::Replace)),
            Some("p1")
        );
        assert_eq!(
            denied_by(&ix.decide(&b(), "dev1", "/3/0", Operation::Delete)),
            Some("p1")
        );
    }

    #[test]
    fn wildcard_grants_every_server_and_a_named_id_only_that_one() {
        let ix = index(&[
            ("any", dev("dev1", "/3/0", "Get=*&Replace=ServerB")),
            ("named", dev("dev2", "/3/0", "Get=ServerB")),
        ]);
        for server in [b(), c()] {
            assert!(
                ix.decide(&server, "dev1", "/3/0/1", Operation::Get)
                    .is_allowed()
            );
        }
        assert!(
            ix.decide(&b(), "dev1", "/3/0/1", Operation::Replace)
                .is_allowed()
        );
        assert_eq!(
            denied_by(&ix.decide(&c(), "dev1", "/3/0/1", Operation::Replace)),
            Some("any")
        );
        assert!(ix.decide(&b(), "dev2", "/3/0", Operation::Get).is_allowed());
        assert_eq!(
            denied_by(&ix.decide(&c(), "dev2", "/3/0", Operation::Get)),
            Some("named")
        );
    }

    #[test]
    fn each_command_is_checked_against_its_own_acl_entry() {
        let ix = index(&[(
            "p",
            dev(
                "dev1",
                "/3",
                "Add=ServerB&Delete=ServerB&Exec=ServerB&Get=ServerC&Replace=ServerC",
            ),
        )]);
        for op in [Operation::Add, Operation::Delete, Operation::Exec] {
            assert!(ix.decide(&b(), "dev1", "/3/0", op).is_allowed(), "{op}");
            assert_eq!(denied_by(&ix.decide(&c(), "dev1", "/3/0", op)), Some("p"));
        }
        for op in [Operation::Get, Operation::Replace] {
            assert!(ix.decide(&c(), "dev1", "/3/0", op).is_allowed(), "{op}");
            assert_eq!(denied_by(&ix.decide(&b(), "dev1", "/3/0", op)), Some("p"));
        }
    }

    #[test]
    fn removal_takes_effect_at_once() {
        let mut ix = index(&[
            ("short", grp("G1", "/3", "Get=ServerB")),
            ("long", dev("dev1", "/3/0", "Get=ServerB")),
        ]);
        assert_eq!(
            allowed_by(&ix.decide(&b(), "dev1", "/3/0/0", Operation::Get)),
            Some("long")
        );
        let gone = ix.remove(&name("long")).expect("stored");
        assert_eq!(gone.uri, "/3/0");
        assert_eq!(
            allowed_by(&ix.decide(&b(), "dev1", "/3/0/0", Operation::Get)),
            Some("short")
        );
        ix.remove(&name("short"));
        assert_eq!(
            ix.decide(&b(), "dev1", "/3/0/0", Operation::Get),
            Decision::NoPrivilege
        );
        assert!(ix.is_empty());
        assert_eq!(ix.remove(&name("short")), None);
    }

    #[test]
    fn an_upsert_that_narrows_the_uri_or_the_acl_takes_effect_at_once() {
        let mut ix = index(&[("p", grp("G1", "/3", "Get=ServerB"))]);
        assert!(ix.decide(&b(), "dev2", "/3/1", Operation::Get).is_allowed());
        let old = ix.upsert(name("p"), grp("G1", "/3/0", "Get=ServerB"));
        assert_eq!(old.map(|p| p.uri), Some("/3".to_owned()));
        assert_eq!(ix.len(), 1);
        assert_eq!(
            ix.decide(&b(), "dev2", "/3/1", Operation::Get),
            Decision::NoPrivilege
        );
        assert!(
            ix.decide(&b(), "dev2", "/3/0/1", Operation::Get)
                .is_allowed()
        );
        // Narrow the ACL: same place, B no longer named.
        ix.upsert(name("p"), grp("G1", "/3/0", "Get=ServerC"));
        assert_eq!(
            denied_by(&ix.decide(&b(), "dev2", "/3/0/1", Operation::Get)),
            Some("p")
        );
        // Move it to another target: the old target loses it.
        ix.upsert(name("p"), dev("dev3", "/3/0", "Get=ServerB"));
        assert_eq!(
            ix.decide(&b(), "dev2", "/3/0/1", Operation::Get),
            Decision::NoPrivilege
        );
        assert!(
            ix.decide(&b(), "dev3", "/3/0/1", Operation::Get)
                .is_allowed()
        );
        assert_eq!(
            ix.get(&name("p")).map(|p| p.target_id.as_str()),
            Some("dev3")
        );
    }

    #[test]
    fn membership_changes_coverage() {
        let mut ix = index(&[("g", grp("G1", "/3/0", "Get=ServerB"))]);
        assert!(ix.decide(&b(), "dev2", "/3/0", Operation::Get).is_allowed());
        ix.set_membership(Membership::from_groups([("G1", ["dev3"])]));
        assert_eq!(
            ix.decide(&b(), "dev2", "/3/0", Operation::Get),
            Decision::NoPrivilege
        );
        assert!(ix.decide(&b(), "dev3", "/3/0", Operation::Get).is_allowed());
    }

    #[test]
    fn membership_lists_each_group_once_sorted() {
        let m = Membership::from_groups([("G2", vec!["dev1", "dev1"]), ("G1", vec!["dev1"])]);
        assert_eq!(m.groups_of("dev1"), ["G1".to_owned(), "G2".to_owned()]);
        assert!(m.groups_of("nobody").is_empty());
    }

    #[test]
    fn membership_comes_from_the_inventory() {
        let config = crate::config::Config::parse(
            r#"
[gateway]
listen = ["coap://127.0.0.1:5683"]
store = "privgw.redb"

[[devices]]
id = "dev1"
uri = "coap://127.0.0.1:15683"
profile = "dm"

[[devices]]
id = "dev2"
uri = "coap://127.0.0.1:15684"
profile = "dm"

[[groups]]
id = "G1"
members = ["dev1"]
"#,
        )
        .expect("config");
        let m = Membership::from_inventory(&Inventory::from_config(&config));
        assert_eq!(m.groups_of("dev1"), ["G1".to_owned()]);
        assert!(m.groups_of("dev2").is_empty());
    }

    #[test]
    fn prefixes_walk_longest_first_down_to_the_root() {
        assert_eq!(
            prefixes("3/0/1").collect::<Vec<_>>(),
            ["3/0/1", "3/0", "3", ""]
        );
        assert_eq!(prefixes("").collect::<Vec<_>>(), [""]);
        assert_eq!(canonical("/"), "");
        assert_eq!(canonical("/3/0/"), "3/0");
    }

    #[test]
    fn ten_thousand_privileges_find_the_right_entry() {
        let (ix, device) = large_index();
        assert_eq!(ix.len(), 10_000);
        assert_eq!(
            allowed_by(&ix.decide(&b(), &device, "/3/0/1", Operation::Get)),
            Some("d07777-res")
        );
        assert_eq!(
            denied_by(&ix.decide(&b(), &device, "/3/0/2", Operation::Get)),
            Some("d07777-inst")
        );
        assert_eq!(
            allowed_by(&ix.decide(&b(), &device, "/4/0", Operation::Get)),
            Some("g077-obj4")
        );
        assert_eq!(
            allowed_by(&ix.decide(&b(), &device, "/13/0", Operation::Get)),
            Some("g077-obj13")
        );
        assert_eq!(
            ix.decide(&b(), &device, "/14/0", Operation::Get),
            Decision::NoPrivilege
        );
        // A member of another group without device entries sees only its group's.
        assert_eq!(
            allowed_by(&ix.decide(&b(), "dev05077", "/4/0", Operation::Get)),
            Some("g050-obj4")
        );
        assert_eq!(
            ix.decide(&b(), "dev05077", "/3/0", Operation::Get),
            Decision::NoPrivilege
        );
    }

    /// 10 000 entries: three per device (`/3`, `/3/0`, `/3/0/1`) for 3 000 devices and 1 000
    /// on 100 groups of 30 devices (`/4` … `/13` each). `dev07777` (in `G077`) gets the three
    /// device entries of `dev00000` instead.
    fn large_index() -> (PrivilegeIndex, String) {
        let mut entries = Vec::new();
        for i in 0..3_000 {
            let d = format!("dev{i:05}");
            entries.push((format!("d{i:05}-obj"), dev(&d, "/3", "Get=ServerB")));
            entries.push((format!("d{i:05}-inst"), dev(&d, "/3/0", "Get=ServerC")));
            entries.push((format!("d{i:05}-res"), dev(&d, "/3/0/1", "Get=ServerB")));
        }
        for g in 0..100 {
            for o in 4..14 {
                entries.push((
                    format!("g{g:03}-obj{o}"),
                    grp(&format!("G{g:03}"), &format!("/{o}"), "Get=ServerB"),
                ));
            }
        }
        let groups: Vec<(String, Vec<String>)> = (0..100)
            .map(|g| {
                let members = (0..30)
                    .map(|k| format!("dev{:05}", g * 100 + k + 77))
                    .collect();
                (format!("G{g:03}"), members)
            })
            .collect();
        let mut ix = PrivilegeIndex::new(
            entries.into_iter().map(|(n, p)| (name(&n), p)),
            Membership::from_groups(groups),
        );
        let device = "dev07777".to_owned();
        ix.remove(&name("d00000-obj"));
        ix.remove(&name("d00000-inst"));
        ix.remove(&name("d00000-res"));
        ix.upsert(name("d07777-obj"), dev(&device, "/3", "Get=ServerB"));
        ix.upsert(name("d07777-inst"), dev(&device, "/3/0", "Get=ServerC"));
        ix.upsert(name("d07777-res"), dev(&device, "/3/0/1", "Get=ServerB"));
        (ix, device)
    }
}
