//! [`Registry`]: the LwM2M registrations the gateway holds as its devices' LwM2M server, keyed
//! by (endpoint name, [`Account`]), with their locations, lifetimes, queue-mode awake windows
//! and the session (`P`) each came over.
//!
//! Sans-IO in quinn's shape: inputs are `register`/`update`/`deregister` and
//! [`Registry::handle_timeout`]; outputs are [`Registry::poll_timeout`] (the next expiry) and
//! [`Registry::poll_event`] (what happened, for logs and the inventory). Time is always an
//! argument and must never go backwards.
//!
//! # Decisions where the specification leaves room
//!
//! * **Locations** are `rd/<n>` with `n` from a counter that starts at
//!   [`RegistryConfig::first_location_id`] (a driver may seed it per start, so a stale
//!   Update from before a restart is unlikely to hit a new registration; the owner check
//!   below refuses it anyway). A re-Register gets a new location and the old one is gone.
//! * **Ownership:** an Update or De-register must come from the endpoint and account that own
//!   the location. A mismatch is [`RegistryError::NotOwner`] and answers **4.04**, exactly
//!   like an unknown location: 4.03 would tell a device that some other device's location
//!   exists (locations come from a counter, so they are guessable), and 4.04 is what makes a
//!   confused but honest client re-register (LwM2M Core 1.1 §6.2.2).
//! * **Expiry** is at last Register/Update + lifetime, and a registration is gone *at* that
//!   instant: an Update, lookup or route at or after it sees nothing, even before
//!   [`Registry::handle_timeout`] runs.
//! * **Awake:** a client not in queue mode is always awake; a queue-mode client is awake for
//!   [`RegistryConfig::awake_window`] after its latest Register or Update.
//! * **Cap:** a Register that would exceed [`RegistryConfig::max_registrations`] is
//!   [`RegistryError::Full`], **5.03** Service Unavailable: it is the gateway's temporary
//!   condition, not the request's size (4.13), and LwM2M clients retry a failed Register
//!   with back-off. A re-Register of an existing (endpoint, account) always fits.
//! * **Events** queue up to [`MAX_EVENTS`]; beyond that the oldest is dropped and counted
//!   ([`Registry::dropped_events`]), so a driver that never polls cannot grow memory.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use coap_lite::ResponseType;

use super::link_format::ObjectList;
use super::params::{Binding, RegisterParams, UpdateParams, Version};
use super::request::RD;

/// The default awake window of a queue-mode client: MAX_TRANSMIT_WAIT (RFC 7252 §4.8.2).
pub const DEFAULT_AWAKE_WINDOW: Duration = Duration::from_secs(93);
/// Most events kept for [`Registry::poll_event`].
pub const MAX_EVENTS: usize = 1024;

/// The LwM2M server account a registration was made on: the name of the LwM2M listener's
/// account (the gateway's own, or a server name such as `"ServerA"`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Account(String);

impl Account {
    /// An account by name.
    pub fn new(name: impl Into<String>) -> Account {
        Account(name.into())
    }

    /// The account's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bounds and timing of a [`Registry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Most registrations held at once, over all accounts.
    pub max_registrations: usize,
    /// How long a queue-mode client counts as awake after a Register or Update (default
    /// [`DEFAULT_AWAKE_WINDOW`]).
    pub awake_window: Duration,
    /// The number of the first location, `rd/<first_location_id>` (default 1).
    pub first_location_id: u64,
}

impl RegistryConfig {
    /// Defaults with a cap of `max_registrations`.
    pub fn new(max_registrations: usize) -> RegistryConfig {
        RegistryConfig {
            max_registrations,
            awake_window: DEFAULT_AWAKE_WINDOW,
            first_location_id: 1,
        }
    }
}

/// Why a registration operation is refused. [`RegistryError::coap_code`] gives the code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// No live registration at this location (never was, replaced, de-registered or
    /// expired): 4.04.
    #[error("unknown registration location {location}")]
    UnknownLocation {
        /// The location as asked for.
        location: String,
    },
    /// The location belongs to another endpoint or account: 4.04 (see the module doc).
    #[error("location {location} is not owned by {endpoint} on account {account}")]
    NotOwner {
        /// The location as asked for.
        location: String,
        /// The endpoint that asked.
        endpoint: String,
        /// The account it asked on.
        account: Account,
    },
    /// The registration cap is reached: 5.03.
    #[error("registration table full ({max} registrations)")]
    Full {
        /// The cap.
        max: usize,
    },
}

impl RegistryError {
    /// The CoAP response code for this refusal.
    pub fn coap_code(&self) -> ResponseType {
        match self {
            RegistryError::UnknownLocation { .. } | RegistryError::NotOwner { .. } => {
                ResponseType::NotFound
            }
            RegistryError::Full { .. } => ResponseType::ServiceUnavailable,
        }
    }
}

/// One registration, as `/GwConfig/Devices/<id>` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    endpoint: String,
    account: Account,
    location: String,
    version: Version,
    binding: Binding,
    queue_flag: bool,
    lifetime: Duration,
    registered_at: Instant,
    updated_at: Instant,
    objects: ObjectList,
}

impl Registration {
    /// The endpoint client name.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
    /// The account it was made on.
    pub fn account(&self) -> &Account {
        &self.account
    }
    /// `rd/<id>`.
    pub fn location(&self) -> &str {
        &self.location
    }
    /// The LwM2M version it registered with.
    pub fn version(&self) -> Version {
        self.version
    }
    /// The current binding.
    pub fn binding(&self) -> Binding {
        self.binding
    }
    /// Whether the client is in queue mode (`Q` at Register, or binding `UQ`).
    pub fn queue_mode(&self) -> bool {
        self.queue_flag || self.binding.is_queue()
    }
    /// The current lifetime.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }
    /// When the Register arrived.
    pub fn registered_at(&self) -> Instant {
        self.registered_at
    }
    /// When the latest Register or Update arrived.
    pub fn updated_at(&self) -> Instant {
        self.updated_at
    }
    /// When it expires unless updated: `updated_at + lifetime` (saturating far in the future).
    pub fn expires_at(&self) -> Instant {
        far_add(self.updated_at, self.lifetime)
    }
    /// The object list of the Register or the latest Update that carried one.
    pub fn objects(&self) -> &ObjectList {
        &self.objects
    }
}

/// `t + d`, or about a century after `t` when that does not fit an `Instant`.
fn far_add(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(t)
}

/// The answer to a successful Register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// `rd/<id>`: the Location-Path of the 2.01 Created.
    pub location: String,
    /// Whether it replaced an earlier registration of the same (endpoint, account).
    pub replaced: bool,
}

/// A live registration found by [`Registry::lookup`] or [`Registry::route`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup<'a, P> {
    /// The session requests to the device must go back over.
    pub peer: P,
    /// Whether the device can be expected to answer now (see the module doc).
    pub awake: bool,
    /// The registration.
    pub registration: &'a Registration,
}

/// What happened to a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A Register; `replaced` if it replaced an earlier one of the same (endpoint, account).
    Registered {
        /// Whether an earlier registration was replaced.
        replaced: bool,
    },
    /// An Update.
    Updated,
    /// A De-register.
    Deregistered,
    /// The lifetime ran out.
    Expired,
}

/// One event, for logging and the device inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEvent {
    /// What happened.
    pub kind: EventKind,
    /// The endpoint client name.
    pub endpoint: String,
    /// The account.
    pub account: Account,
    /// The location concerned.
    pub location: String,
}

#[derive(Debug)]
struct Entry<P> {
    registration: Registration,
    peer: P,
}

/// The registrations of every LwM2M listener of the gateway. `P` is the caller's opaque key
/// of the session a registration came over.
///
/// # Method classes
///
/// Getters ([`lookup`](Self::lookup), [`route`](Self::route), [`get`](Self::get),
/// [`registrations`](Self::registrations)), inputs ([`register`](Self::register),
/// [`update`](Self::update), [`deregister`](Self::deregister),
/// [`handle_timeout`](Self::handle_timeout)) and outputs ([`poll_timeout`](Self::poll_timeout),
/// [`poll_event`](Self::poll_event)). After each input, the driver drains `poll_event` and
/// re-arms one timer from `poll_timeout`.
#[derive(Debug)]
pub struct Registry<P: Clone> {
    config: RegistryConfig,
    next_id: u64,
    by_location: BTreeMap<String, Entry<P>>,
    by_key: BTreeMap<(String, Account), String>,
    expiries: BTreeSet<(Instant, String)>,
    events: VecDeque<RegistryEvent>,
    dropped_events: u64,
}

impl<P: Clone> Registry<P> {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> Registry<P> {
        Registry {
            next_id: config.first_location_id,
            config,
            by_location: BTreeMap::new(),
            by_key: BTreeMap::new(),
            expiries: BTreeSet::new(),
            events: VecDeque::new(),
            dropped_events: 0,
        }
    }

    /// How many registrations are held (expired ones count until [`Self::handle_timeout`]).
    pub fn len(&self) -> usize {
        self.by_location.len()
    }

    /// Whether no registration is held.
    pub fn is_empty(&self) -> bool {
        self.by_location.is_empty()
    }

    /// Events dropped because nobody polled (see [`MAX_EVENTS`]).
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// Registers `endpoint` on `account` over session `peer`, replacing any registration of
    /// the same (endpoint, account).
    pub fn register(
        &mut self,
        now: Instant,
        account: &Account,
        endpoint: &str,
        params: RegisterParams,
        peer: P,
    ) -> Result<Registered, RegistryError> {
        let key = (endpoint.to_string(), account.clone());
        let old = self.by_key.get(&key).cloned();
        if old.is_none() && self.by_location.len() >= self.config.max_registrations {
            return Err(RegistryError::Full {
                max: self.config.max_registrations,
            });
        }
        if let Some(old) = &old {
            self.remove(old);
        }
        let location = self.next_location();
        let registration = Registration {
            endpoint: endpoint.to_string(),
            account: account.clone(),
            location: location.clone(),
            version: params.version,
            binding: params.binding,
            queue_flag: params.queue_flag,
            lifetime: Duration::from_secs(params.lifetime_s.into()),
            registered_at: now,
            updated_at: now,
            objects: params.objects,
        };
        let replaced = old.is_some();
        self.insert(Entry { registration, peer });
        self.push_event(EventKind::Registered { replaced }, &location);
        Ok(Registered { location, replaced })
    }

    /// Applies an Update from `endpoint` on `account` over session `peer` (which becomes the
    /// session to reach the device by).
    pub fn update(
        &mut self,
        now: Instant,
        account: &Account,
        endpoint: &str,
        location: &str,
        peer: P,
        params: UpdateParams,
    ) -> Result<(), RegistryError> {
        self.owned(now, account, endpoint, location)?;
        let mut entry = self
            .remove(location)
            .ok_or_else(|| RegistryError::UnknownLocation {
                location: location.to_string(),
            })?;
        let r = &mut entry.registration;
        r.updated_at = now;
        if let Some(lt) = params.lifetime_s {
            r.lifetime = Duration::from_secs(lt.into());
        }
        if let Some(b) = params.binding {
            r.binding = b;
        }
        if let Some(objects) = params.objects {
            r.objects = objects;
        }
        entry.peer = peer;
        self.insert(entry);
        self.push_event(EventKind::Updated, location);
        Ok(())
    }

    /// Applies a De-register from `endpoint` on `account`.
    pub fn deregister(
        &mut self,
        now: Instant,
        account: &Account,
        endpoint: &str,
        location: &str,
    ) -> Result<(), RegistryError> {
        self.owned(now, account, endpoint, location)?;
        self.push_event(EventKind::Deregistered, location);
        self.remove(location);
        Ok(())
    }

    /// The live registration of `endpoint` on `account`, with its session and awake state.
    pub fn lookup(&self, endpoint: &str, account: &Account, now: Instant) -> Option<Lookup<'_, P>> {
        let location = self.by_key.get(&(endpoint.to_string(), account.clone()))?;
        let entry = self.by_location.get(location)?;
        let r = &entry.registration;
        if now >= r.expires_at() {
            return None;
        }
        let awake = !r.queue_mode() || now < far_add(r.updated_at, self.config.awake_window);
        Some(Lookup {
            peer: entry.peer.clone(),
            awake,
            registration: r,
        })
    }

    /// The registration to reach `endpoint` by for a request on behalf of a server: the one
    /// on `preferred` (that server's account) if live, else the one on `own` (the gateway's).
    pub fn route(
        &self,
        endpoint: &str,
        preferred: &Account,
        own: &Account,
        now: Instant,
    ) -> Option<Lookup<'_, P>> {
        self.lookup(endpoint, preferred, now)
            .or_else(|| self.lookup(endpoint, own, now))
    }

    /// The registration at `location`, live or not yet swept.
    pub fn get(&self, location: &str) -> Option<&Registration> {
        self.by_location.get(location).map(|e| &e.registration)
    }

    /// Every registration held, by location.
    pub fn registrations(&self) -> impl Iterator<Item = &Registration> {
        self.by_location.values().map(|e| &e.registration)
    }

    /// Removes every registration whose lifetime ran out by `now`, queueing `Expired` events.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, location)) = self.expiries.first().cloned() {
            if at > now {
                break;
            }
            self.expire(&location);
        }
    }

    /// The next expiry, if any registration is held.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiries.first().map(|(at, _)| *at)
    }

    /// The oldest unread event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<RegistryEvent> {
        self.events.pop_front()
    }

    /// Checks that `location` is live and owned by (endpoint, account); an expired one is
    /// swept on the way.
    fn owned(
        &mut self,
        now: Instant,
        account: &Account,
        endpoint: &str,
        location: &str,
    ) -> Result<(), RegistryError> {
        let unknown = || RegistryError::UnknownLocation {
            location: location.to_string(),
        };
        let r = self.get(location).ok_or_else(unknown)?;
        if now >= r.expires_at() {
            self.expire(location);
            return Err(unknown());
        }
        if r.endpoint != endpoint || r.account != *account {
            return Err(RegistryError::NotOwner {
                location: location.to_string(),
                endpoint: endpoint.to_string(),
                account: account.clone(),
            });
        }
        Ok(())
    }

    fn next_location(&mut self) -> String {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        format!("{RD}/{id}")
    }

    fn expire(&mut self, location: &str) {
        self.push_event(EventKind::Expired, location);
        self.remove(location);
    }

    fn insert(&mut self, entry: Entry<P>) {
        let r = &entry.registration;
        let location = r.location.clone();
        self.by_key
            .insert((r.endpoint.clone(), r.account.clone()), location.clone());
        self.expiries.insert((r.expires_at(), location.clone()));
        self.by_location.insert(location, entry);
    }

    fn remove(&mut self, location: &str) -> Option<Entry<P>> {
        let entry = self.by_location.remove(location)?;
        let r = &entry.registration;
        self.by_key.remove(&(r.endpoint.clone(), r.account.clone()));
        self.expiries
            .remove(&(r.expires_at(), location.to_string()));
        Some(entry)
    }

    /// Queues an event for the registration at `location` (which must still be held).
    fn push_event(&mut self, kind: EventKind, location: &str) {
        let Some(r) = self.get(location) else {
            return;
        };
        let event = RegistryEvent {
            kind,
            endpoint: r.endpoint.clone(),
            account: r.account.clone(),
            location: location.to_string(),
        };
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
            self.dropped_events += 1;
        }
        self.events.push_back(event);
    }
}

#[cfg(test)]
mod tests;
