//! A DM command on a privilege node as a change: what it was, what it becomes, and which
//! (device, URI) ACL reads must pass before it may be committed (DESIGN.md §3, §5).

use crate::acl::DmCommand;
use crate::mo::inventory::{DeviceRef, Inventory, ResolveError};
use crate::mo::{Privilege, PrivilegeName};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Add,
    Replace,
    Delete,
}

impl ChangeKind {
    /// The DM command the gateway gate checks for this change.
    pub fn command(self) -> DmCommand {
        match self {
            ChangeKind::Add => DmCommand::Add,
            ChangeKind::Replace => DmCommand::Replace,
            ChangeKind::Delete => DmCommand::Delete,
        }
    }
}

/// One privilege change. `name` is the node written (for a POST, the name it reserved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub name: Option<PrivilegeName>,
    /// The entry as stored before the change (Replace, Delete).
    pub old: Option<Privilege>,
    /// The entry after the change (Add, Replace).
    pub new: Option<Privilege>,
}

/// One ACL read the verifier needs: does the requesting server hold Replace on `uri` of `device`?
#[derive(Debug, Clone)]
pub struct Check {
    pub device: DeviceRef,
    pub uri: String,
}

impl Change {
    /// The places whose access the change alters: the new entry's, and the old one's if it moved
    /// (or is deleted). Each is a (target, URI) the requesting server must hold Replace on.
    fn places(&self) -> Vec<&Privilege> {
        match (&self.old, &self.new) {
            (None, Some(new)) => vec![new],
            (Some(old), None) => vec![old],
            (Some(old), Some(new)) if new.moves_from(old) => vec![old, new],
            (Some(_), Some(new)) => vec![new],
            (None, None) => vec![],
        }
    }

    /// Resolves the change into ACL reads, one per (device, URI), in DeviceID then URI order,
    /// without duplicates. Any unknown or empty target fails the whole change.
    pub fn checks(&self, inventory: &Inventory) -> Result<Vec<Check>, ResolveError> {
        let mut checks: Vec<Check> = Vec::new();
        for place in self.places() {
            for device in inventory.resolve(place.target_type, &place.target_id)? {
                checks.push(Check {
                    device,
                    uri: place.uri.clone(),
                });
            }
        }
        checks.sort_by(|a, b| (&a.device.id, &a.uri).cmp(&(&b.device.id, &b.uri)));
        checks.dedup_by(|a, b| a.device.id == b.device.id && a.uri == b.uri);
        Ok(checks)
    }
}
