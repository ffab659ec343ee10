//! Memory budgets for the per-peer caches (the duplicate-response table of
//! [`super::ServerExchanges`] and the [`super::Block2Cache`]): a bound per cache and a bound
//! shared by every cache of one kind in the process.
//!
//! Owns: counting. A [`SharedBudget`] counts entries and bytes across sessions; an
//! [`Account`] is one cache's share of it, with its own per-cache bounds, and gives back
//! whatever it still holds when dropped (a session that ends frees its share). An account
//! may also draw from a *group* budget shared by the sessions of one peer identity
//! ([`IdentityBudgets`]), so one client with many sessions cannot take the whole shared
//! budget from the others.
//! Does not own: choosing what to evict. The caches evict their oldest entries until
//! [`Account::reserve`] succeeds, or keep nothing.
//!
//! Bytes are an estimate of what an entry really occupies: the stored payload plus a fixed
//! per-entry overhead (map slot, key, template) given by the cache.
//!
//! No clock, no I/O: a `std::sync::Mutex` around two counters, never held for more than a
//! comparison.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Entries and bytes held by every cache of one kind (e.g. all Block2 caches of a gateway).
#[derive(Debug)]
pub struct SharedBudget {
    max_entries: usize,
    max_bytes: usize,
    used: Mutex<Usage>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Usage {
    entries: usize,
    bytes: usize,
}

impl SharedBudget {
    /// A budget of at most `max_entries` entries and `max_bytes` bytes in total.
    pub fn new(max_entries: usize, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            max_entries,
            max_bytes,
            used: Mutex::new(Usage::default()),
        })
    }

    /// A budget that never refuses (for tests and tools).
    pub fn unlimited() -> Arc<Self> {
        Self::new(usize::MAX, usize::MAX)
    }

    /// Entries currently held by all accounts.
    pub fn used_entries(&self) -> usize {
        self.lock().entries
    }

    /// Bytes currently held by all accounts.
    pub fn used_bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> MutexGuard<'_, Usage> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn try_take(&self, entries: usize, bytes: usize) -> bool {
        let mut used = self.lock();
        let e = used.entries.saturating_add(entries);
        let b = used.bytes.saturating_add(bytes);
        if e > self.max_entries || b > self.max_bytes {
            return false;
        }
        *used = Usage {
            entries: e,
            bytes: b,
        };
        true
    }

    /// Takes `entries` and `bytes` even past the bounds (see [`Account::with_floor`]).
    fn force_take(&self, entries: usize, bytes: usize) {
        let mut used = self.lock();
        used.entries = used.entries.saturating_add(entries);
        used.bytes = used.bytes.saturating_add(bytes);
    }

    fn give_back(&self, entries: usize, bytes: usize) {
        let mut used = self.lock();
        used.entries = used.entries.saturating_sub(entries);
        used.bytes = used.bytes.saturating_sub(bytes);
    }
}

/// Why [`Account::reserve`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BudgetError {
    /// More than this cache may ever hold: evicting its other entries would not help.
    #[error("larger than the per-cache budget")]
    TooLarge,
    /// This cache is full: evict one of its entries and retry.
    #[error("per-cache budget exhausted")]
    CacheFull,
    /// The shared budget is full: evict one of this cache's entries and retry, or give up
    /// once the cache is empty.
    #[error("shared budget exhausted")]
    SharedFull,
}

/// One cache's share of a [`SharedBudget`], with its own bounds. Dropping it returns
/// everything it holds to the shared budget.
#[derive(Debug)]
pub struct Account {
    shared: Arc<SharedBudget>,
    max_entries: usize,
    max_bytes: usize,
    used: Usage,
    /// What this cache may hold even when the shared budget is full.
    floor: Usage,
    /// The budget of every cache of this peer identity, drawn from besides `shared`.
    group: Option<Arc<SharedBudget>>,
}

impl Account {
    /// At most `max_entries` entries and `max_bytes` bytes in this cache, and whatever
    /// `shared` still has.
    pub fn new(shared: Arc<SharedBudget>, max_entries: usize, max_bytes: usize) -> Self {
        Self {
            shared,
            max_entries,
            max_bytes,
            used: Usage::default(),
            floor: Usage::default(),
            group: None,
        }
    }

    /// Also draws from `group`, the budget all caches of one peer identity share: a reserve
    /// must fit both (a full group is [`BudgetError::SharedFull`] too).
    pub fn with_group(mut self, group: Arc<SharedBudget>) -> Self {
        self.group = Some(group);
        self
    }

    /// Lets this cache hold up to `entries` entries and `bytes` bytes even when the shared
    /// budget is exhausted (still within its own bounds). The duplicate table needs this:
    /// without a floor, a peer whose table is empty while others fill the shared budget
    /// would run its CON requests without an entry, and a retransmitted POST would run
    /// twice. The shared budget may then be exceeded by at most the floor per cache.
    pub fn with_floor(mut self, entries: usize, bytes: usize) -> Self {
        self.floor = Usage { entries, bytes };
        self
    }

    /// Entries this cache holds.
    pub fn entries(&self) -> usize {
        self.used.entries
    }

    /// Bytes this cache holds.
    pub fn bytes(&self) -> usize {
        self.used.bytes
    }

    /// The per-cache byte bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// The shared budget this account draws from.
    pub fn shared(&self) -> Arc<SharedBudget> {
        self.shared.clone()
    }

    /// Takes `entries` entries and `bytes` bytes (both per cache and shared), or says why
    /// not; nothing is taken on error.
    pub fn reserve(&mut self, entries: usize, bytes: usize) -> Result<(), BudgetError> {
        if entries > self.max_entries || bytes > self.max_bytes {
            return Err(BudgetError::TooLarge);
        }
        let e = self.used.entries.saturating_add(entries);
        let b = self.used.bytes.saturating_add(bytes);
        if e > self.max_entries || b > self.max_bytes {
            return Err(BudgetError::CacheFull);
        }
        let within_floor = e <= self.floor.entries && b <= self.floor.bytes;
        if within_floor {
            self.shared.force_take(entries, bytes);
            if let Some(group) = &self.group {
                group.force_take(entries, bytes);
            }
        } else {
            if let Some(group) = &self.group
                && !group.try_take(entries, bytes)
            {
                return Err(BudgetError::SharedFull);
            }
            if !self.shared.try_take(entries, bytes) {
                if let Some(group) = &self.group {
                    group.give_back(entries, bytes);
                }
                return Err(BudgetError::SharedFull);
            }
        }
        self.used = Usage {
            entries: e,
            bytes: b,
        };
        Ok(())
    }

    /// Gives back what an evicted or expired entry held.
    pub fn release(&mut self, entries: usize, bytes: usize) {
        let entries = entries.min(self.used.entries);
        let bytes = bytes.min(self.used.bytes);
        self.used.entries -= entries;
        self.used.bytes -= bytes;
        self.give_back(entries, bytes);
    }

    fn give_back(&self, entries: usize, bytes: usize) {
        self.shared.give_back(entries, bytes);
        if let Some(group) = &self.group {
            group.give_back(entries, bytes);
        }
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        self.give_back(self.used.entries, self.used.bytes);
    }
}

/// One group budget per peer identity (a PSK identity, a certificate, a NoSec address),
/// shared by that identity's sessions and made on its first session. Entries for identities
/// without a live session are dropped as the map grows, so it holds about as many entries as
/// there are identities with a session.
#[derive(Debug)]
pub struct IdentityBudgets {
    max_entries: usize,
    max_bytes: usize,
    groups: Mutex<HashMap<String, Weak<SharedBudget>>>,
}

impl IdentityBudgets {
    /// Each identity's caches hold at most `max_entries` entries and `max_bytes` bytes.
    pub fn new(max_entries: usize, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            max_entries,
            max_bytes,
            groups: Mutex::new(HashMap::new()),
        })
    }

    /// The group budget of `identity`: the one its live sessions use, or a new one.
    pub fn of(&self, identity: &str) -> Arc<SharedBudget> {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = groups.get(identity).and_then(Weak::upgrade) {
            return live;
        }
        if groups.len() >= 64 && groups.len().is_power_of_two() {
            groups.retain(|_, g| g.strong_count() > 0);
        }
        let group = SharedBudget::new(self.max_entries, self.max_bytes);
        groups.insert(identity.to_owned(), Arc::downgrade(&group));
        group
    }

    /// Identities the map holds (live or not yet pruned).
    pub fn len(&self) -> usize {
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The bounds of both per-peer caches, as the runtime hands them to each session.
///
/// Cloning shares the global budgets: every session built from clones of one `CacheLimits`
/// draws from the same [`SharedBudget`]s.
#[derive(Debug, Clone)]
pub struct CacheLimits {
    /// Bodies one session's Block2 cache keeps at most. Default 16.
    pub block2_session_entries: usize,
    /// Bytes one session's Block2 cache keeps at most. Default 1 MiB.
    pub block2_session_bytes: usize,
    /// All Block2 caches together. Default 64 MiB (and 65 536 bodies).
    pub block2: Arc<SharedBudget>,
    /// The Block2 caches of one peer identity together: a quarter of `block2`
    /// ([`BLOCK2_IDENTITY_SHARE`]), so one client with many sessions leaves the rest to
    /// the others (their multi-block answers are not cut off with 4.08).
    pub block2_per_identity: Arc<IdentityBudgets>,
    /// Stored responses one peer's duplicate table keeps at most. Default 512.
    pub dedup_peer_entries: usize,
    /// Bytes one peer's duplicate table keeps at most. Default 128 KiB.
    pub dedup_peer_bytes: usize,
    /// All duplicate tables together. Default 65 536 entries, 16 MiB.
    pub dedup: Arc<SharedBudget>,
}

/// Default: bodies per session in the Block2 cache.
pub const DEFAULT_BLOCK2_SESSION_ENTRIES: usize = 16;
/// Default: bytes per session in the Block2 cache.
pub const DEFAULT_BLOCK2_SESSION_BYTES: usize = 1 << 20;
/// Default: bytes of all Block2 caches.
pub const DEFAULT_BLOCK2_TOTAL_BYTES: usize = 64 << 20;
/// Default: bodies of all Block2 caches.
pub const DEFAULT_BLOCK2_TOTAL_ENTRIES: usize = 65_536;
/// One identity's Block2 caches hold at most 1 / this of the shared Block2 budget.
pub const BLOCK2_IDENTITY_SHARE: usize = 4;
/// Default: stored responses per peer in the duplicate table.
pub const DEFAULT_DEDUP_PEER_ENTRIES: usize = 512;
/// Default: bytes per peer in the duplicate table.
pub const DEFAULT_DEDUP_PEER_BYTES: usize = 128 << 10;
/// Default: entries of all duplicate tables.
pub const DEFAULT_DEDUP_TOTAL_ENTRIES: usize = 65_536;
/// Default: bytes of all duplicate tables.
pub const DEFAULT_DEDUP_TOTAL_BYTES: usize = 16 << 20;

/// Entries every peer's duplicate table may hold whatever other peers use: RFC 7252 §4.7
/// has a client keep one exchange in flight (NSTART 1), so a few cover its pending request
/// and the responses it may still retransmit for.
pub const DEDUP_FLOOR_ENTRIES: usize = 4;
/// Bytes of that floor: room for a few piggybacked answers of one message each.
pub const DEDUP_FLOOR_BYTES: usize = 8 << 10;

impl CacheLimits {
    /// The defaults with fresh shared budgets of the default sizes.
    pub fn new_default() -> Self {
        Self {
            block2_session_entries: DEFAULT_BLOCK2_SESSION_ENTRIES,
            block2_session_bytes: DEFAULT_BLOCK2_SESSION_BYTES,
            block2: SharedBudget::new(DEFAULT_BLOCK2_TOTAL_ENTRIES, DEFAULT_BLOCK2_TOTAL_BYTES),
            block2_per_identity: Self::identity_share(
                DEFAULT_BLOCK2_TOTAL_ENTRIES,
                DEFAULT_BLOCK2_TOTAL_BYTES,
            ),
            dedup_peer_entries: DEFAULT_DEDUP_PEER_ENTRIES,
            dedup_peer_bytes: DEFAULT_DEDUP_PEER_BYTES,
            dedup: SharedBudget::new(DEFAULT_DEDUP_TOTAL_ENTRIES, DEFAULT_DEDUP_TOTAL_BYTES),
        }
    }

    /// One shared set of default budgets for the whole process: what sessions get when
    /// their handler configures nothing (the simulated devices, tools).
    pub fn process_default() -> Self {
        static DEFAULT: std::sync::OnceLock<CacheLimits> = std::sync::OnceLock::new();
        DEFAULT.get_or_init(Self::new_default).clone()
    }

    /// The per-identity Block2 budgets for a shared budget of `entries` and `bytes`.
    pub fn identity_share(entries: usize, bytes: usize) -> Arc<IdentityBudgets> {
        IdentityBudgets::new(
            (entries / BLOCK2_IDENTITY_SHARE).max(1),
            (bytes / BLOCK2_IDENTITY_SHARE).max(1),
        )
    }

    /// A Block2 cache account for one session, in no identity's group.
    pub fn block2_account(&self) -> Account {
        Account::new(
            self.block2.clone(),
            self.block2_session_entries,
            self.block2_session_bytes,
        )
    }

    /// A Block2 cache account for one session of the peer `identity` (its `Identity::key`): also
    /// bounded by that identity's group budget.
    pub fn block2_account_for(&self, identity: &str) -> Account {
        self.block2_account()
            .with_group(self.block2_per_identity.of(identity))
    }

    /// A duplicate-table account for one peer, with a floor of
    /// [`DEDUP_FLOOR_ENTRIES`] / [`DEDUP_FLOOR_BYTES`] that other peers cannot take away.
    pub fn dedup_account(&self) -> Account {
        Account::new(
            self.dedup.clone(),
            self.dedup_peer_entries,
            self.dedup_peer_bytes,
        )
        .with_floor(DEDUP_FLOOR_ENTRIES, DEDUP_FLOOR_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer with an empty table still gets its floor when other peers have taken the
    /// whole shared budget (before, it got nothing and its requests ran without an entry).
    #[test]
    fn a_floor_is_kept_when_others_fill_the_shared_budget() {
        let shared = SharedBudget::new(2, 100);
        let mut greedy = Account::new(shared.clone(), 10, 1000);
        greedy.reserve(2, 100).unwrap();
        let mut plain = Account::new(shared.clone(), 10, 1000);
        assert_eq!(plain.reserve(1, 10), Err(BudgetError::SharedFull));
        let mut floored = Account::new(shared.clone(), 10, 1000).with_floor(2, 50);
        floored.reserve(1, 20).unwrap();
        floored.reserve(1, 20).unwrap();
        assert_eq!(
            floored.reserve(1, 5),
            Err(BudgetError::SharedFull),
            "past the floor"
        );
        assert_eq!((shared.used_entries(), shared.used_bytes()), (4, 140));
        drop(floored);
        assert_eq!((shared.used_entries(), shared.used_bytes()), (2, 100));
    }

    /// Review finding B: one identity's sessions together stop at its quarter of the shared
    /// Block2 budget, so another identity still finds room; a session that ends gives its
    /// share back to both budgets.
    #[test]
    fn one_identitys_sessions_leave_the_rest_of_the_shared_budget_to_others() {
        let limits = CacheLimits {
            block2_session_bytes: 100,
            block2: SharedBudget::new(100, 400),
            block2_per_identity: CacheLimits::identity_share(100, 400),
            ..CacheLimits::new_default()
        };
        let mut hog: Vec<Account> = (0..4)
            .map(|_| limits.block2_account_for("psk:hog"))
            .collect();
        let mut taken = 0;
        for a in &mut hog {
            if a.reserve(1, 60).is_ok() {
                taken += 60;
            }
        }
        assert_eq!(taken, 60, "the hog's quarter is 100 bytes: one body of 60");
        assert_eq!(hog[1].reserve(1, 40), Ok(()), "the rest of its quarter");
        assert_eq!(hog[2].reserve(1, 1), Err(BudgetError::SharedFull));
        let mut other = limits.block2_account_for("psk:other");
        assert_eq!(
            other.reserve(1, 100),
            Ok(()),
            "another identity is unaffected"
        );
        assert_eq!(limits.block2.used_bytes(), 200);
        hog.clear();
        assert_eq!(limits.block2.used_bytes(), 100, "given back on drop");
        let mut again = limits.block2_account_for("psk:hog");
        assert_eq!(
            again.reserve(1, 100),
            Ok(()),
            "its group was given back too"
        );
        assert!(limits.block2_per_identity.len() <= 2);
    }

    #[test]
    fn account_enforces_its_own_bounds_and_the_shared_one() {
        let shared = SharedBudget::new(3, 100);
        let mut a = Account::new(shared.clone(), 2, 60);
        let mut b = Account::new(shared.clone(), 2, 60);
        assert_eq!(a.reserve(1, 61), Err(BudgetError::TooLarge));
        assert_eq!(a.reserve(1, 50), Ok(()));
        assert_eq!(a.reserve(1, 20), Err(BudgetError::CacheFull));
        assert_eq!(b.reserve(1, 50), Ok(()));
        assert_eq!(
            b.reserve(1, 1),
            Err(BudgetError::SharedFull),
            "100 bytes in all"
        );
        assert_eq!((shared.used_entries(), shared.used_bytes()), (2, 100));
        a.release(1, 50);
        assert_eq!(b.reserve(1, 1), Ok(()));
        assert_eq!((a.entries(), a.bytes()), (0, 0));
    }

    #[test]
    fn dropping_an_account_returns_its_share() {
        let shared = SharedBudget::new(10, 1000);
        {
            let mut a = Account::new(shared.clone(), 10, 1000);
            a.reserve(3, 300).unwrap();
            assert_eq!(shared.used_bytes(), 300);
        }
        assert_eq!((shared.used_entries(), shared.used_bytes()), (0, 0));
    }

    #[test]
    fn release_never_underflows() {
        let shared = SharedBudget::new(10, 1000);
        let mut a = Account::new(shared.clone(), 10, 1000);
        a.reserve(1, 10).unwrap();
        a.release(5, 500);
        assert_eq!((a.entries(), a.bytes()), (0, 0));
        assert_eq!(shared.used_bytes(), 0);
    }
}
