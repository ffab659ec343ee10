//! Keeps the proxy's [`PrivilegeIndex`] equal to the store, driven by the store's own change
//! feed ([`PrivilegeStore::subscribe`]), so a future shared store can drive it the same way.
//!
//! [`spawn_index_feed`] subscribes **first**, then loads the whole list into the index, then
//! applies every change (`upsert` / `remove`) as it comes: a change committed between the
//! subscription and the load is both in the list and on the channel, and applying it again
//! is harmless (an upsert of the same entry, a remove of an absent one). A subscriber that
//! lags (more than the feed's capacity unread) reloads the whole list. [`load_index`] is the
//! synchronous load for start-up, so the index is complete before the first request.
//!
//! The index is behind a `std::sync::RwLock` held only for an in-memory update; store reads
//! run on the blocking pool.

use std::sync::{Arc, RwLock};

use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::proxy::PrivilegeIndex;
use crate::runtime::{Shutdown, stopped};
use crate::store::{PrivilegeStore, StoreChange, StoreError};

/// Replaces the index's entries with the store's whole list (membership unchanged), for
/// start-up: call it before serving so the first request sees every privilege. A store
/// that cannot be listed leaves the index as it was (logged); [`try_load_index`] says why.
pub fn load_index(store: &dyn PrivilegeStore, index: &RwLock<PrivilegeIndex>) {
    match try_load_index(store, index) {
        Ok(count) => tracing::debug!(entries = count, "privilege index loaded"),
        Err(e) => tracing::error!("privilege index: cannot load the store: {e}"),
    }
}

/// [`load_index`], returning how many entries were loaded or why none were.
pub fn try_load_index(
    store: &dyn PrivilegeStore,
    index: &RwLock<PrivilegeIndex>,
) -> Result<usize, StoreError> {
    let entries = store.list()?;
    let count = entries.len();
    index
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .replace_all(entries);
    Ok(count)
}

/// Applies one change to the index.
pub fn apply_change(index: &RwLock<PrivilegeIndex>, change: StoreChange) {
    let mut index = index.write().unwrap_or_else(|p| p.into_inner());
    match change.entry {
        Some(entry) => {
            index.upsert(change.name, entry);
        }
        None => {
            index.remove(&change.name);
        }
    }
}

/// Follows the store's change feed into `index` until `shutdown`: subscribe, load the whole
/// list, apply each change; reload on lag. A failed load is retried after a second (logged).
/// `applied` counts the changes applied (and reloads), so whoever acts on the index's
/// decisions (the Observe relay revalidating its observers) knows when to look again.
pub fn spawn_index_feed(
    store: Arc<dyn PrivilegeStore>,
    index: Arc<RwLock<PrivilegeIndex>>,
    mut shutdown: Shutdown,
    applied: tokio::sync::watch::Sender<u64>,
) -> JoinHandle<()> {
    let bump = move || applied.send_modify(|n| *n = n.wrapping_add(1));
    let mut changes = store.subscribe();
    tokio::spawn(async move {
        if !reload(&store, &index, &mut shutdown).await {
            return;
        }
        loop {
            let received = tokio::select! {
                r = changes.recv() => r,
                () = stopped(&mut shutdown) => return,
            };
            match received {
                Ok(change) => {
                    apply_change(&index, change);
                    bump();
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "privilege index fell behind the store: reloading");
                    if !reload(&store, &index, &mut shutdown).await {
                        return;
                    }
                    bump();
                }
                Err(RecvError::Closed) => return,
            }
        }
    })
}

/// Loads the whole list into `index`, retrying a failed load every second; `false` once
/// `shutdown` came first. A load that has begun is waited for, not abandoned: a detached
/// load would hold the store open past the gateway's stop (and a restart on the same file
/// would find it locked).
async fn reload(
    store: &Arc<dyn PrivilegeStore>,
    index: &Arc<RwLock<PrivilegeIndex>>,
    shutdown: &mut Shutdown,
) -> bool {
    loop {
        let (s, i) = (store.clone(), index.clone());
        match tokio::task::spawn_blocking(move || try_load_index(s.as_ref(), &i)).await {
            Ok(Ok(count)) => {
                tracing::debug!(entries = count, "privilege index loaded from the store");
                return true;
            }
            Ok(Err(e)) => tracing::error!("privilege index: cannot load the store: {e}"),
            Err(e) => tracing::error!("privilege index: load failed: {e}"),
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            () = stopped(shutdown) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mo::{Privilege, PrivilegeName};
    use crate::proxy::Membership;
    use crate::store::{Commit, MemoryStore};
    use std::time::{Duration, Instant};

    fn entry(acl: &str) -> Privilege {
        let mut p = Privilege::from_leaves([
            ("TargetID", "devA"),
            ("TargetType", "Device"),
            ("URI", "/3/0"),
            ("ACL", acl),
        ])
        .unwrap();
        p.grantor = "ServerA".into();
        p
    }

    fn name(s: &str) -> PrivilegeName {
        PrivilegeName::new(s).unwrap()
    }

    fn add(store: &dyn PrivilegeStore, n: &str, acl: &str) {
        store
            .commit(Commit::Add {
                name: Some(name(n)),
                entry: entry(acl),
            })
            .unwrap();
    }

    /// Waits (bounded) until `check` holds on the index.
    async fn eventually(index: &RwLock<PrivilegeIndex>, check: impl Fn(&PrivilegeIndex) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if check(&index.read().unwrap()) {
                return;
            }
            assert!(Instant::now() < deadline, "index did not follow within 2 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn acl_of(index: &PrivilegeIndex, n: &str) -> Option<String> {
        index.get(&name(n)).map(|p| p.acl.to_string())
    }

    #[tokio::test]
    async fn the_index_follows_commits_replaces_and_deletes() {
        let store = Arc::new(MemoryStore::default());
        add(store.as_ref(), "before", "Get=ServerB");
        // A stale entry the store does not hold: the load replaces everything.
        let index = Arc::new(RwLock::new(PrivilegeIndex::new(
            [(name("stale"), entry("Get=*"))],
            Membership::default(),
        )));
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let task = spawn_index_feed(
            store.clone(),
            index.clone(),
            shutdown,
            tokio::sync::watch::channel(0).0,
        );
        eventually(&index, |i| i.len() == 1 && i.get(&name("before")).is_some()).await;

        add(store.as_ref(), "p1", "Get=ServerB");
        eventually(&index, |i| {
            acl_of(i, "p1").as_deref() == Some("Get=ServerB")
        })
        .await;
        store
            .commit(Commit::Replace {
                name: name("p1"),
                entry: entry("Replace=ServerB"),
            })
            .unwrap();
        eventually(&index, |i| {
            acl_of(i, "p1").as_deref() == Some("Replace=ServerB")
        })
        .await;
        store.commit(Commit::Delete { name: name("p1") }).unwrap();
        eventually(&index, |i| i.get(&name("p1")).is_none() && i.len() == 1).await;

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("the feed task stops")
            .unwrap();
    }

    #[tokio::test]
    async fn a_lagging_index_reloads_the_whole_list() {
        // Capacity 2: five commits while the task cannot run make it lag.
        let store = Arc::new(MemoryStore::with_feed_capacity(2));
        // A stale entry: once it is gone, the initial load is done and the task waits on
        // the feed.
        let index = Arc::new(RwLock::new(PrivilegeIndex::new(
            [(name("stale"), entry("Get=*"))],
            Membership::default(),
        )));
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let task = spawn_index_feed(
            store.clone(),
            index.clone(),
            shutdown,
            tokio::sync::watch::channel(0).0,
        );
        eventually(&index, PrivilegeIndex::is_empty).await;
        tokio::task::yield_now().await;
        // Current-thread runtime: the feed task does not run until we yield.
        for n in 0..5 {
            add(store.as_ref(), &format!("n{n}"), "Get=ServerB");
        }
        store.commit(Commit::Delete { name: name("n0") }).unwrap();
        eventually(&index, |i| {
            i.len() == 4 && (1..5).all(|n| i.get(&name(&format!("n{n}"))).is_some())
        })
        .await;
        task.abort();
    }

    #[test]
    fn load_index_is_synchronous_and_complete() {
        let store = MemoryStore::default();
        add(&store, "a", "Get=ServerB");
        add(&store, "b", "Get=ServerC");
        let index = RwLock::new(PrivilegeIndex::default());
        assert_eq!(try_load_index(&store, &index).unwrap(), 2);
        add(&store, "c", "Get=ServerC");
        load_index(&store, &index);
        assert_eq!(index.read().unwrap().len(), 3);
    }
}
