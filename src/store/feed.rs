//! The store's change feed: every committed [`Commit`](crate::store::Commit) is published,
//! after its transaction commits, as a [`StoreChange`] on a `tokio::sync::broadcast` channel
//! the store owns. The proxy's privilege index follows it (`proxy::feed`), so a future
//! shared store can drive the index the same way.
//!
//! Owns: the channel and the sequence numbers. Commits and their publication are serialised
//! by one lock ([`ChangeFeed::commit`]), so `seq` order is commit order and a subscriber that
//! applies changes in `seq` order ends where the store is. A subscriber that falls more than
//! the channel's capacity behind gets `RecvError::Lagged` and must reload the whole list.

use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::mo::{Privilege, PrivilegeName};
use crate::store::StoreError;
use crate::store::view::PrivilegeView;

/// How many changes a subscriber may fall behind before it lags (and reloads).
pub const FEED_CAPACITY: usize = 1024;

/// One committed change: `entry` is the entry as stored, `None` when it was deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreChange {
    /// 1, 2, … per store instance, in commit order (not persisted: a restarted store
    /// starts again at 1, and its subscribers start from a fresh list).
    pub seq: u64,
    pub name: PrivilegeName,
    pub entry: Option<Privilege>,
}

/// The sending side of the feed, held by a store.
#[derive(Debug)]
pub struct ChangeFeed {
    tx: broadcast::Sender<StoreChange>,
    /// The last published `seq`; held across a commit and its publication.
    seq: Mutex<u64>,
    /// The committed entries, changed under `seq`'s lock with each publication.
    view: PrivilegeView,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        ChangeFeed::with_capacity(FEED_CAPACITY)
    }
}

impl ChangeFeed {
    /// A feed whose subscribers lag after `capacity` unread changes (at least 1).
    pub fn with_capacity(capacity: usize) -> ChangeFeed {
        let (tx, _) = broadcast::channel(capacity.max(1));
        ChangeFeed {
            tx,
            seq: Mutex::new(0),
            view: PrivilegeView::default(),
        }
    }

    /// A receiver of every change published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreChange> {
        self.tx.subscribe()
    }

    /// The committed entries.
    pub fn view(&self) -> &PrivilegeView {
        &self.view
    }

    /// Runs `commit` (which applies and commits one transaction, returning the name and the
    /// entry as stored) and publishes its change if it succeeded, both under the feed's
    /// lock so publication order is commit order; the view has the change before this
    /// returns.
    pub fn commit(
        &self,
        commit: impl FnOnce() -> Result<(PrivilegeName, Option<Privilege>), StoreError>,
    ) -> Result<PrivilegeName, StoreError> {
        let mut seq = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        let (name, entry) = commit()?;
        *seq += 1;
        self.view.apply(&name, entry.as_ref());
        // No subscriber is not an error: nobody follows the store (yet).
        let _ = self.tx.send(StoreChange {
            seq: *seq,
            name: name.clone(),
            entry,
        });
        Ok(name)
    }
}
