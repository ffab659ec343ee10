//! The in-memory view of the committed privileges: what GETs of `/GwConfig/Privileges` (and
//! the reads inside a write) are answered from, without a store transaction or a blocking
//! task per request.
//!
//! Owns: a name-ordered copy of the privilege table. It is filled when the store opens and
//! changed only by [`ChangeFeed::commit`](crate::store::ChangeFeed::commit), under the
//! feed's lock, after the transaction commits and before the commit returns — so a server
//! reads its own write, and the view is never ahead of the disk.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use crate::mo::{Privilege, PrivilegeName};

/// A read-mostly copy of the privilege table; entries are shared, not copied, per read.
#[derive(Debug, Default)]
pub struct PrivilegeView {
    entries: RwLock<BTreeMap<PrivilegeName, Arc<Privilege>>>,
}

impl PrivilegeView {
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<PrivilegeName, Arc<Privilege>>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the whole view (the store's table as opened).
    pub(crate) fn fill(&self, entries: impl IntoIterator<Item = (PrivilegeName, Privilege)>) {
        let map = entries.into_iter().map(|(n, p)| (n, Arc::new(p))).collect();
        *self.entries.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    /// Applies one committed change: `None` deletes.
    pub(crate) fn apply(&self, name: &PrivilegeName, entry: Option<&Privilege>) {
        let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
        match entry {
            Some(p) => {
                map.insert(name.clone(), Arc::new(p.clone()));
            }
            None => {
                map.remove(name);
            }
        }
    }

    pub fn get(&self, name: &PrivilegeName) -> Option<Arc<Privilege>> {
        self.read().get(name).cloned()
    }

    /// Up to `limit` entries whose names sort after `after` (exclusive), in name order, and
    /// whether more follow.
    pub fn page(
        &self,
        after: Option<&PrivilegeName>,
        limit: usize,
    ) -> (Vec<(PrivilegeName, Arc<Privilege>)>, bool) {
        let map = self.read();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut rest = map.range((start, Bound::Unbounded));
        let page: Vec<_> = rest
            .by_ref()
            .take(limit)
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
        (page, rest.next().is_some())
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(acl: &str) -> Privilege {
        Privilege::from_leaves([
            ("TargetID", "G1"),
            ("TargetType", "Group"),
            ("URI", "/3/0"),
            ("ACL", acl),
        ])
        .unwrap()
    }

    fn name(s: &str) -> PrivilegeName {
        PrivilegeName::new(s).unwrap()
    }

    #[test]
    fn pages_follow_name_order_and_say_whether_more_follow() {
        let view = PrivilegeView::default();
        view.fill(["b", "a", "c"].map(|n| (name(n), entry("Get=ServerB"))));
        let (first, more) = view.page(None, 2);
        assert_eq!(
            first.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(more);
        let (rest, more) = view.page(Some(&name("b")), 2);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].0.as_str(), "c");
        assert!(!more);
        let (none, more) = view.page(Some(&name("c")), 2);
        assert!(none.is_empty() && !more);
    }

    #[test]
    fn changes_replace_and_delete() {
        let view = PrivilegeView::default();
        view.apply(&name("a"), Some(&entry("Get=ServerB")));
        view.apply(&name("a"), Some(&entry("Get=ServerC")));
        assert_eq!(view.get(&name("a")).unwrap().acl, entry("Get=ServerC").acl);
        view.apply(&name("a"), None);
        assert!(view.get(&name("a")).is_none() && view.is_empty());
    }
}
