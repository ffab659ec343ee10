//! The Observe relay (issue 8 §5, RFC 7641 §5 intermediaries), sans-IO: which upstream
//! observations the gateway keeps on the devices, and what each server observing through the
//! proxy is sent. A [`Relay`] takes events as method calls and returns [`RelayAction`]s; it
//! never touches a socket, a token, a clock or a lock. Time is an [`Instant`] argument and
//! must never go back.
//!
//! It owns the observer table and the upstream table. It does **not** own the enforcement
//! decision (the caller lets an Observe through only as Get, [`super::command`], and re-asks
//! the [`super::PrivilegeIndex`] in [`Relay::revalidate`]), the tokens on either side, the
//! CoAP messages, or the timers (the caller turns a silent upstream or an unanswered CON
//! notification into [`Relay::upstream_lost`] / [`Relay::remove_observer`]).
//!
//! # Rules
//!
//! * **One upstream per key.** An [`UpstreamKey`] is (device, path, Accept): two servers
//!   observing `/3/0` of one device with the same Accept share one observation on the device;
//!   another Accept is another key. The first observer of a key yields
//!   [`RelayAction::StartUpstream`]; the last one leaving yields [`RelayAction::CancelUpstream`].
//!   The account the upstream runs over (delegation, issue 8 §3) is the caller's choice at
//!   `StartUpstream` and not part of the key: observers let in by different grantors share
//!   the first one's upstream (each was allowed Get on the path; the device sees one account).
//! * **Fan-out with per-observer sequence numbers.** Each 2.xx upstream notification becomes
//!   one [`RelayAction::Notify`] per observer of the key, each with that observer's own Observe
//!   value (24-bit, RFC 7641 §3.4/§4.4), in registration order, all sharing one
//!   [`Arc`]'d body. Values come from the clock: the millisecond since the relay's epoch, or
//!   the observer's previous value + 1 if that is larger (more than one notification per ms),
//!   modulo 2²⁴. So each observer's values increase by at least 1 per notification, and a step
//!   larger than 2²³ happens only after more than 2²³ ms (> 128 s) of time, where RFC 7641's
//!   time rule takes over. A new observer starts above every value the relay has issued, so a
//!   server that drops an observation and registers again never sees an older number.
//! * **The latest value is cached** and a new observer of a live key gets it at once, its
//!   Max-Age reduced by the time since it arrived (RFC 7252 §5.6.1, §5.7.1; 60 s when
//!   absent, §5.10.5). If the cached value is stale and the upstream is established,
//!   [`RelayAction::RefreshUpstream`] asks the caller to re-register upstream (same token,
//!   RFC 7641 §3.3.1) so the device sends a current notification, which then goes to every
//!   observer (once per staleness: not again while that refresh is outstanding). While the
//!   upstream is still being established, or is lost, the new observer waits for its first
//!   notification.
//! * **An upstream error ends the key.** A non-2.xx notification (the device's 4.04, 4.01…),
//!   or [`Relay::upstream_failed`] (the caller's 5.02 / 5.04), ends every observer of the key
//!   with that code ([`RelayAction::End`]) and removes the key with a
//!   [`RelayAction::CancelUpstream`]; after a non-2.xx the device has already ended its
//!   observation (RFC 7641 §3.2), so the caller only forgets the token.
//! * **A 2.03 upstream** (a re-registration validated by ETag) stands for the cached value
//!   with the new Max-Age when its ETag is the cached one, and goes out as that 2.05; a 2.03
//!   naming another ETag is ignored (the gateway registers upstream without ETags).
//! * **Not observable.** When the device answers the registration without an Observe option
//!   ([`Relay::upstream_not_observable`]), each observer gets that answer as a plain response
//!   ([`RelayAction::Final`]) and is removed, as RFC 7641 §3.1 has a client learn it.
//! * **Lost and back.** [`Relay::upstream_lost`] / [`Relay::device_lost`] keep the observers
//!   and mark the key lost (the device is gone, or re-registration is pending).
//!   [`Relay::device_reregistered`] yields one [`RelayAction::StartUpstream`] for **every**
//!   live key of the device, lost or not: a new LwM2M Register means the device forgot its
//!   observations.
//! * **Revocation.** After a privilege change, [`Relay::revalidate`] asks the caller's
//!   predicate for each observer; each one no longer allowed gets
//!   [`RelayAction::End`] with 4.03 and is removed at once, and a key left with no observer is
//!   cancelled upstream. Other observers of the same key are untouched.
//! * **Bounded memory.** At most [`RelayLimits::max_observers`] observers in total and
//!   [`RelayLimits::max_per_server`] per server: beyond them [`Relay::add_observer`] returns a
//!   [`RelayError`] and changes nothing. Upstreams are at most the observers; empty keys and
//!   per-server counters are removed, ids are never reused.
//!
//! # Method classes (as in quinn-proto's `Connection`)
//!
//! * getters: [`Relay::latest`], [`Relay::observer`], [`Relay::observers_of`],
//!   [`Relay::observers`], [`Relay::upstreams`];
//! * downstream input: [`Relay::add_observer`], [`Relay::reregister_observer`],
//!   [`Relay::remove_observer`];
//! * upstream input: [`Relay::upstream_notification`], [`Relay::upstream_not_observable`],
//!   [`Relay::upstream_failed`], [`Relay::upstream_lost`], [`Relay::device_lost`],
//!   [`Relay::device_reregistered`];
//! * policy input: [`Relay::revalidate`].
//!
//! Every action list must be carried out in order (an `End` before the `CancelUpstream` it
//! causes). A notification for a key the relay does not know (a late one after a cancel)
//! yields nothing: the caller answers it with RST (RFC 7641 §3.6).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use coap_lite::ResponseType;

/// Observe values are 24-bit (RFC 7641 §2).
pub const SEQ_MODULUS: u32 = 1 << 24;

/// Max-Age when a notification carries none (RFC 7252 §5.10.5).
pub const DEFAULT_MAX_AGE: u32 = 60;

/// The diagnostic of an observer ended by [`Relay::revalidate`].
pub const REVOKED_DIAGNOSTIC: &str =
    "observation ended: the privilege that allowed it was revoked or narrowed";

/// At most this many characters of a device's diagnostic are passed on.
const DIAGNOSTIC_MAX_CHARS: usize = 128;

/// One server's observation through the relay. Allocated by [`Relay::add_observer`], never
/// reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObserverId(u64);

impl ObserverId {
    /// The number, for logs and the caller's maps.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ObserverId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "observer#{}", self.0)
    }
}

/// What one upstream observation is on: a device, a path on it, the Accept asked for, and
/// the account (registration) it goes over. Ordered by device first, so one device's keys
/// are adjacent.
///
/// The account is part of the key because a device that enforces its own access control
/// sees the account as the observer: observers allowed by a privilege of A share A's
/// upstream, observers the device's own ACL allows for themselves observe over their own
/// account, never over someone else's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamKey {
    /// The DeviceID.
    pub device: String,
    /// The path on the device (after the prefix), e.g. `/3/0`.
    pub path: String,
    /// The Accept option of the request, if any.
    pub accept: Option<u16>,
    /// The account the upstream goes over (empty: the device is dialled, one channel).
    pub account: String,
}

impl UpstreamKey {
    /// A key from its parts, over no particular account.
    pub fn new(device: impl Into<String>, path: impl Into<String>, accept: Option<u16>) -> Self {
        UpstreamKey {
            device: device.into(),
            path: path.into(),
            accept,
            account: String::new(),
        }
    }

    /// The key over `account`.
    pub fn over(self, account: impl Into<String>) -> Self {
        UpstreamKey {
            account: account.into(),
            ..self
        }
    }
}

/// A notification (or the registration's answer) as plain values: what the caller copies
/// into the CoAP message to the observer, with the Observe value of the [`RelayAction`].
/// Block-wise bodies arrive reassembled.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationBody {
    /// The response code.
    pub code: ResponseType,
    /// Content-Format, if any.
    pub content_format: Option<u16>,
    /// The whole payload.
    pub payload: Vec<u8>,
    /// Max-Age in seconds, if any (absent means 60).
    pub max_age: Option<u32>,
    /// ETag, if any.
    pub etag: Option<Vec<u8>>,
}

impl NotificationBody {
    /// A 2.05 with `payload` in `content_format`, no Max-Age, no ETag.
    pub fn content(content_format: Option<u16>, payload: Vec<u8>) -> Self {
        NotificationBody {
            code: ResponseType::Content,
            content_format,
            payload,
            max_age: None,
            etag: None,
        }
    }

    /// Whether the code is 2.xx.
    pub fn is_success(&self) -> bool {
        matches!(
            self.code,
            ResponseType::Created
                | ResponseType::Deleted
                | ResponseType::Valid
                | ResponseType::Changed
                | ResponseType::Content
                | ResponseType::Continue
        )
    }
}

/// What the caller must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayAction {
    /// Register an observation on the device for this key (GET + Observe 0, Accept as in the
    /// key, over the channel the decision chose). Any earlier upstream for the key is void.
    /// Feed its answers to [`Relay::upstream_notification`] (or
    /// [`Relay::upstream_not_observable`], [`Relay::upstream_failed`]).
    StartUpstream(UpstreamKey),
    /// The key has no observer left (or the device ended it): deregister upstream if it is
    /// still live (GET + Observe 1, or RST the next notification) and forget its token.
    CancelUpstream(UpstreamKey),
    /// The cached value is stale and an observer waits: re-register the upstream observation
    /// (same token, RFC 7641 §3.3.1) so the device sends a current notification.
    RefreshUpstream(UpstreamKey),
    /// Send `body` to the observer as a notification with Observe = `seq`.
    Notify {
        /// To whom.
        observer: ObserverId,
        /// The Observe option value (< 2²⁴).
        seq: u32,
        /// Code, Content-Format, payload, Max-Age, ETag.
        body: Arc<NotificationBody>,
    },
    /// Send `body` to the observer as a plain response (no Observe option): the resource is
    /// not observable. The observer is already removed.
    Final {
        /// To whom.
        observer: ObserverId,
        /// The device's answer.
        body: Arc<NotificationBody>,
    },
    /// Send the observer a final notification with this error code and diagnostic payload
    /// (no Observe option, RFC 7641 §3.2). The observer is already removed.
    End {
        /// To whom.
        observer: ObserverId,
        /// 4.03 on revocation; the device's error, or 5.02 / 5.04 when the upstream failed.
        code: ResponseType,
        /// Diagnostic payload (text).
        diagnostic: String,
    },
}

/// The relay's memory bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Observers in total.
    pub max_observers: usize,
    /// Observers of one server (a server observing one key twice counts twice).
    pub max_per_server: usize,
}

/// Why [`Relay::add_observer`] refused. The caller serves the request as a plain GET, with
/// no Observe option in the response: that is how RFC 7641 §4.1 has a server decline an
/// observer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The relay holds [`RelayLimits::max_observers`] observers.
    #[error("observe relay full ({limit} observers)")]
    TooManyObservers {
        /// The limit.
        limit: usize,
    },
    /// The server holds [`RelayLimits::max_per_server`] observers.
    #[error("server {server} holds {limit} observations through the proxy, the most allowed")]
    TooManyForServer {
        /// The server.
        server: String,
        /// The limit.
        limit: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// StartUpstream emitted, no 2.xx yet.
    Pending,
    /// At least one 2.xx since the last start.
    Established,
    /// The device is gone or re-registration is pending.
    Lost,
}

#[derive(Debug)]
struct Cached {
    body: Arc<NotificationBody>,
    at: Instant,
}

#[derive(Debug)]
struct Upstream {
    state: State,
    observers: BTreeSet<ObserverId>,
    latest: Option<Cached>,
    refreshing: bool,
}

#[derive(Debug)]
struct Observer {
    key: UpstreamKey,
    server: String,
    /// The last Observe value issued, unwrapped (None before the first).
    last: Option<u64>,
}

/// The Observe relay's state. See the module doc for the rules.
#[derive(Debug)]
pub struct Relay {
    limits: RelayLimits,
    epoch: Instant,
    next_id: u64,
    /// One above the largest unwrapped Observe value issued so far.
    floor: u64,
    observers: BTreeMap<ObserverId, Observer>,
    upstreams: BTreeMap<UpstreamKey, Upstream>,
    per_server: HashMap<String, usize>,
}

/// The next unwrapped Observe value for `obs` at clock `ticks` (see the module doc).
fn issue(obs: &mut Observer, ticks: u64, floor: &mut u64) -> u32 {
    let v = match obs.last {
        Some(last) => last.saturating_add(1).max(ticks),
        None => ticks.max(*floor),
    };
    obs.last = Some(v);
    *floor = (*floor).max(v.saturating_add(1));
    // The remainder is < 2^24, so it fits.
    u32::try_from(v % u64::from(SEQ_MODULUS)).unwrap_or(0)
}

/// The cached body as it may be served at `now`: Max-Age reduced by the whole seconds (rounded
/// up) since it arrived; None once that reaches 0.
fn fresh(cached: &Cached, now: Instant) -> Option<Arc<NotificationBody>> {
    let elapsed = now.saturating_duration_since(cached.at);
    let secs = elapsed
        .as_secs()
        .saturating_add(u64::from(elapsed.subsec_nanos() > 0));
    let max_age = cached.body.max_age.unwrap_or(DEFAULT_MAX_AGE);
    let remaining = u64::from(max_age).checked_sub(secs).filter(|r| *r > 0)?;
    if secs == 0 {
        return Some(Arc::clone(&cached.body));
    }
    let mut body = NotificationBody::clone(&cached.body);
    body.max_age = Some(u32::try_from(remaining).unwrap_or(max_age));
    Some(Arc::new(body))
}

fn diagnostic_of(body: &NotificationBody) -> String {
    crate::acl::truncate(
        &String::from_utf8_lossy(&body.payload),
        DIAGNOSTIC_MAX_CHARS,
    )
}

impl Relay {
    /// An empty relay whose Observe clock starts at `now`.
    pub fn new(limits: RelayLimits, now: Instant) -> Self {
        Relay {
            limits,
            epoch: now,
            next_id: 0,
            floor: 0,
            observers: BTreeMap::new(),
            upstreams: BTreeMap::new(),
            per_server: HashMap::new(),
        }
    }

    // ---- getters -------------------------------------------------------------------------

    /// The last 2.xx value received for `key`, as received (Max-Age not yet reduced).
    pub fn latest(&self, key: &UpstreamKey) -> Option<&NotificationBody> {
        self.upstreams
            .get(key)
            .and_then(|u| u.latest.as_ref())
            .map(|c| c.body.as_ref())
    }

    /// The key and the server of a live observer.
    pub fn observer(&self, id: ObserverId) -> Option<(&UpstreamKey, &str)> {
        self.observers.get(&id).map(|o| (&o.key, o.server.as_str()))
    }

    /// The observers of `key`, in registration order.
    pub fn observers_of(&self, key: &UpstreamKey) -> impl Iterator<Item = ObserverId> + '_ {
        self.upstreams
            .get(key)
            .into_iter()
            .flat_map(|u| u.observers.iter().copied())
    }

    /// Live observers in total.
    pub fn observers(&self) -> usize {
        self.observers.len()
    }

    /// Live upstream keys (observations the gateway holds, or is establishing, on devices).
    pub fn upstreams(&self) -> usize {
        self.upstreams.len()
    }

    // ---- downstream input ----------------------------------------------------------------

    /// A server's Observe registration on `key`, already allowed as Get. Returns its id and
    /// what to do: [`RelayAction::StartUpstream`] for a new key; for a live key, a
    /// [`RelayAction::Notify`] with the fresh cached value, a
    /// [`RelayAction::RefreshUpstream`] when it is stale, or nothing while the upstream is
    /// being established or lost.
    ///
    /// # Errors
    ///
    /// [`RelayError`] beyond the limits; nothing is changed then.
    #[must_use = "the actions must be carried out"]
    pub fn add_observer(
        &mut self,
        key: UpstreamKey,
        server: String,
        now: Instant,
    ) -> Result<(ObserverId, Vec<RelayAction>), RelayError> {
        if self.observers.len() >= self.limits.max_observers {
            return Err(RelayError::TooManyObservers {
                limit: self.limits.max_observers,
            });
        }
        let held = self.per_server.get(&server).copied().unwrap_or(0);
        if held >= self.limits.max_per_server {
            return Err(RelayError::TooManyForServer {
                server,
                limit: self.limits.max_per_server,
            });
        }
        let id = ObserverId(self.next_id);
        self.next_id = self.next_id.saturating_add(1);
        let count = self.per_server.entry(server.clone()).or_insert(0);
        *count = count.saturating_add(1);
        self.observers.insert(
            id,
            Observer {
                key: key.clone(),
                server,
                last: None,
            },
        );
        let actions = match self.upstreams.get_mut(&key) {
            Some(up) => {
                up.observers.insert(id);
                self.serve_current(id, &key, now)
            }
            None => {
                self.upstreams.insert(
                    key.clone(),
                    Upstream {
                        state: State::Pending,
                        observers: BTreeSet::from([id]),
                        latest: None,
                        refreshing: false,
                    },
                );
                vec![RelayAction::StartUpstream(key)]
            }
        };
        Ok((id, actions))
    }

    /// The same server registered again with the same token (RFC 7641 §3.3.1): it keeps its
    /// id and sequence, and is served the current value as in [`Relay::add_observer`].
    /// Unknown ids yield nothing.
    #[must_use = "the actions must be carried out"]
    pub fn reregister_observer(&mut self, id: ObserverId, now: Instant) -> Vec<RelayAction> {
        match self.observers.get(&id) {
            Some(o) => {
                let key = o.key.clone();
                self.serve_current(id, &key, now)
            }
            None => Vec::new(),
        }
    }

    /// The observer is gone (deregistered with Observe 1, answered a notification with RST,
    /// or its CON notification timed out): nothing is sent to it;
    /// [`RelayAction::CancelUpstream`] if it was its key's last observer. Unknown ids yield
    /// nothing.
    #[must_use = "the actions must be carried out"]
    pub fn remove_observer(&mut self, id: ObserverId) -> Vec<RelayAction> {
        self.drop_observer(id)
            .map(RelayAction::CancelUpstream)
            .into_iter()
            .collect()
    }

    // ---- upstream input ------------------------------------------------------------------

    /// A notification from the device for `key` (the registration's first answer included).
    /// 2.xx: cached, then one [`RelayAction::Notify`] per observer; non-2.xx: every observer
    /// ended with that code and the key cancelled. See the module doc for 2.03.
    #[must_use = "the actions must be carried out"]
    pub fn upstream_notification(
        &mut self,
        key: &UpstreamKey,
        body: NotificationBody,
        now: Instant,
    ) -> Vec<RelayAction> {
        if !body.is_success() {
            let diagnostic = diagnostic_of(&body);
            return self.end_all(key, body.code, diagnostic);
        }
        let ticks = self.ticks(now);
        let Some(up) = self.upstreams.get_mut(key) else {
            return Vec::new();
        };
        let body = if body.code == ResponseType::Valid {
            let cached = up
                .latest
                .as_ref()
                .filter(|c| body.etag.is_some() && c.body.etag == body.etag);
            let Some(cached) = cached else {
                return Vec::new();
            };
            let mut current = NotificationBody::clone(&cached.body);
            current.code = ResponseType::Content;
            current.max_age = body.max_age;
            current
        } else {
            body
        };
        let body = Arc::new(body);
        up.latest = Some(Cached {
            body: Arc::clone(&body),
            at: now,
        });
        up.state = State::Established;
        up.refreshing = false;
        let mut actions = Vec::with_capacity(up.observers.len());
        for id in &up.observers {
            if let Some(obs) = self.observers.get_mut(id) {
                actions.push(RelayAction::Notify {
                    observer: *id,
                    seq: issue(obs, ticks, &mut self.floor),
                    body: Arc::clone(&body),
                });
            }
        }
        actions
    }

    /// The device answered the registration for `key` without an Observe option: the
    /// resource is not observable. A 2.xx goes to every observer as a plain response
    /// ([`RelayAction::Final`]), a non-2.xx ends them as in
    /// [`Relay::upstream_notification`]; either way the key is removed with a
    /// [`RelayAction::CancelUpstream`].
    #[must_use = "the actions must be carried out"]
    pub fn upstream_not_observable(
        &mut self,
        key: &UpstreamKey,
        body: NotificationBody,
    ) -> Vec<RelayAction> {
        if !body.is_success() {
            let diagnostic = diagnostic_of(&body);
            return self.end_all(key, body.code, diagnostic);
        }
        let Some(up) = self.upstreams.remove(key) else {
            return Vec::new();
        };
        let body = Arc::new(body);
        let mut actions = Vec::with_capacity(up.observers.len().saturating_add(1));
        for id in up.observers {
            self.forget(id);
            actions.push(RelayAction::Final {
                observer: id,
                body: Arc::clone(&body),
            });
        }
        actions.push(RelayAction::CancelUpstream(key.clone()));
        actions
    }

    /// The upstream for `key` failed on the gateway's side (no answer by the deadline: 5.04;
    /// the channel failed: 5.02): every observer is ended with `code` and `diagnostic`, the
    /// key cancelled.
    #[must_use = "the actions must be carried out"]
    pub fn upstream_failed(
        &mut self,
        key: &UpstreamKey,
        code: ResponseType,
        diagnostic: &str,
    ) -> Vec<RelayAction> {
        self.end_all(key, code, diagnostic.to_owned())
    }

    /// The upstream for `key` is gone but its observers stay, waiting for
    /// [`Relay::device_reregistered`]. Returns whether the key is live.
    pub fn upstream_lost(&mut self, key: &UpstreamKey) -> bool {
        match self.upstreams.get_mut(key) {
            Some(up) => {
                up.state = State::Lost;
                up.refreshing = false;
                true
            }
            None => false,
        }
    }

    /// [`Relay::upstream_lost`] for every key of `device` (its registration expired or it
    /// deregistered). Returns how many keys it has.
    pub fn device_lost(&mut self, device: &str) -> usize {
        let mut n = 0usize;
        for (_, up) in self.device_range(device) {
            up.state = State::Lost;
            up.refreshing = false;
            n = n.saturating_add(1);
        }
        n
    }

    /// `device` registered again (a new LwM2M Register, or its channel is back): one
    /// [`RelayAction::StartUpstream`] per live key of the device, in key order, whatever
    /// their state. Cached values are kept and still served while fresh.
    #[must_use = "the actions must be carried out"]
    pub fn device_reregistered(&mut self, device: &str) -> Vec<RelayAction> {
        self.device_range(device)
            .map(|(key, up)| {
                up.state = State::Pending;
                up.refreshing = false;
                RelayAction::StartUpstream(key.clone())
            })
            .collect()
    }

    // ---- policy input --------------------------------------------------------------------

    /// After a privilege change: `still_allowed(server, key)` for every observer (Get on
    /// `key.path` of `key.device`); each one refused gets [`RelayAction::End`] with 4.03 and
    /// [`REVOKED_DIAGNOSTIC`] and is removed, followed by [`RelayAction::CancelUpstream`]
    /// when its key has no observer left. Costs one call per observer.
    #[must_use = "the actions must be carried out"]
    pub fn revalidate(
        &mut self,
        mut still_allowed: impl FnMut(&str, &UpstreamKey) -> bool,
    ) -> Vec<RelayAction> {
        let revoked: Vec<ObserverId> = self
            .observers
            .iter()
            .filter(|(_, o)| !still_allowed(&o.server, &o.key))
            .map(|(id, _)| *id)
            .collect();
        let mut actions = Vec::with_capacity(revoked.len());
        for id in revoked {
            actions.push(RelayAction::End {
                observer: id,
                code: ResponseType::Forbidden,
                diagnostic: REVOKED_DIAGNOSTIC.to_owned(),
            });
            if let Some(key) = self.drop_observer(id) {
                actions.push(RelayAction::CancelUpstream(key));
            }
        }
        actions
    }

    // ---- internals -----------------------------------------------------------------------

    /// Milliseconds since the epoch: the Observe clock.
    fn ticks(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// What a (re-)registering observer of a live key gets now.
    fn serve_current(
        &mut self,
        id: ObserverId,
        key: &UpstreamKey,
        now: Instant,
    ) -> Vec<RelayAction> {
        let ticks = self.ticks(now);
        let Some(up) = self.upstreams.get_mut(key) else {
            return Vec::new();
        };
        if let Some(body) = up.latest.as_ref().and_then(|c| fresh(c, now)) {
            return match self.observers.get_mut(&id) {
                Some(obs) => vec![RelayAction::Notify {
                    observer: id,
                    seq: issue(obs, ticks, &mut self.floor),
                    body,
                }],
                None => Vec::new(),
            };
        }
        if up.state == State::Established && !up.refreshing {
            up.refreshing = true;
            return vec![RelayAction::RefreshUpstream(key.clone())];
        }
        Vec::new()
    }

    /// The keys of `device`, adjacent in the key order.
    fn device_range<'a>(
        &'a mut self,
        device: &'a str,
    ) -> impl Iterator<Item = (&'a UpstreamKey, &'a mut Upstream)> + 'a {
        let start = UpstreamKey::new(device, String::new(), None);
        self.upstreams
            .range_mut(start..)
            .take_while(move |(k, _)| k.device == device)
    }

    /// Remove the observer from the tables and its server's count (not from its key).
    fn forget(&mut self, id: ObserverId) -> Option<Observer> {
        let obs = self.observers.remove(&id)?;
        if let Some(n) = self.per_server.get_mut(&obs.server) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_server.remove(&obs.server);
            }
        }
        Some(obs)
    }

    /// Remove the observer everywhere; the key if it emptied it.
    fn drop_observer(&mut self, id: ObserverId) -> Option<UpstreamKey> {
        let obs = self.forget(id)?;
        let up = self.upstreams.get_mut(&obs.key)?;
        up.observers.remove(&id);
        if up.observers.is_empty() {
            self.upstreams.remove(&obs.key);
            Some(obs.key)
        } else {
            None
        }
    }

    /// End every observer of `key` with `code`, then remove the key.
    fn end_all(
        &mut self,
        key: &UpstreamKey,
        code: ResponseType,
        diagnostic: String,
    ) -> Vec<RelayAction> {
        let Some(up) = self.upstreams.remove(key) else {
            return Vec::new();
        };
        let mut actions = Vec::with_capacity(up.observers.len().saturating_add(1));
        for id in up.observers {
            self.forget(id);
            actions.push(RelayAction::End {
                observer: id,
                code,
                diagnostic: diagnostic.clone(),
            });
        }
        actions.push(RelayAction::CancelUpstream(key.clone()));
        actions
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LIMITS: RelayLimits = RelayLimits {
        max_observers: 16,
        max_per_server: 8,
    };

    fn key(device: &str, path: &str, accept: Option<u16>) -> UpstreamKey {
        UpstreamKey::new(device, path, accept)
    }

    fn k30() -> UpstreamKey {
        key("dev1", "/3/0", Some(110))
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    fn value(v: &str) -> NotificationBody {
        NotificationBody::content(Some(110), v.as_bytes().to_vec())
    }

    #[track_caller]
    fn add(
        r: &mut Relay,
        k: &UpstreamKey,
        server: &str,
        now: Instant,
    ) -> (ObserverId, Vec<RelayAction>) {
        match r.add_observer(k.clone(), server.to_owned(), now) {
            Ok(x) => x,
            Err(e) => panic!("add_observer refused: {e}"),
        }
    }

    /// (observer, seq) of every Notify, in order.
    fn notified(actions: &[RelayAction]) -> Vec<(ObserverId, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                RelayAction::Notify { observer, seq, .. } => Some((*observer, *seq)),
                _ => None,
            })
            .collect()
    }

    fn seqs_of(actions: &[RelayAction], who: ObserverId) -> Vec<u32> {
        notified(actions)
            .into_iter()
            .filter(|(o, _)| *o == who)
            .map(|(_, s)| s)
            .collect()
    }

    /// RFC 7641 §3.4: V2 is newer than V1 (within 128 s).
    fn newer(v1: u32, v2: u32) -> bool {
        (v1 < v2 && v2 - v1 < 1 << 23) || (v1 > v2 && v1 - v2 > 1 << 23)
    }

    fn end(observer: ObserverId, code: ResponseType, diagnostic: &str) -> RelayAction {
        RelayAction::End {
            observer,
            code,
            diagnostic: diagnostic.to_owned(),
        }
    }

    /// Every table is empty: nothing leaks once the observers are gone.
    #[track_caller]
    fn assert_empty(r: &Relay) {
        assert_eq!((r.observers(), r.upstreams()), (0, 0));
        assert!(r.per_server.is_empty(), "{:?}", r.per_server);
    }

    // ---- one upstream per key ------------------------------------------------------------

    #[test]
    fn two_observers_of_one_key_share_one_upstream() {
        let t0 = Instant::now();
        let mut r = Relay::new(LIMITS, t0);
        let (a, first) = add(&mut r, &k30(), "A", t0);
        assert_eq!(first, vec![RelayAction::StartUpstream(k30())]);
        let (b, second) = add(&mut r, &k30(), "B", t0);
        assert_eq!(second, vec![], "pending upstream: B waits, no second start");
        assert_eq!((r.observers(), r.upstreams()), (2, 1));
        assert_eq!(r.observers_of(&k30()).collect::<Vec<_>>(), vec![a, b]);
        assert_eq!(r.observer(b), Some((&k30(), "B")));
    }

    #[test]
    fn another_accept_path_or_device_is_another_key() {
        let t0 = Instant::now();
        let mut r = Relay::new(LIMITS, t0);
        for k in [
            k30(),
            key("dev1", "/3/0", Some(11542)),
            key("dev1", "/3/0", None),
            key("dev1", "/3/0/1", Some(110)),
            key("dev2", "/3/0", Some(110)),
        ] {
            let (_, actions) = add(&mut r, &k, "A", t0);
            assert_eq!(actions, vec![RelayAction::StartUpstream(k)]);
        }
        assert_eq!(r.upstreams(), 5);
    }

    /// Observers allowed over different accounts (a grantor's, or their own) never share an
    /// upstream: each account observes the device itself.
    #[test]
    fn another_account_is_another_upstream() {
        let t0 = Instant::now();
        let mut r = Relay::new(LIMITS, t0);
        let over_a = k30().over("ServerA");
        let over_c = k30().over("ServerC");
        let (_, first) = add(&mut r, &over_a, "B", t0);
        assert_eq!(first, vec![RelayAction::StartUpstream(over_a.clone())]);
        let (_, second) = add(&mut r, &over_c, "C", t0);
        assert_eq!(second, vec![RelayAction::StartUpstream(over_c)]);
        let (_, third) = add(&mut r, &over_a, "D", t0);
        assert_eq!(
            third,
            vec![],
            "A's upstream is shared by those A's privileges allow"
        );
        assert_eq!((r.observers(), r.upstreams()), (3, 2));
    }

    #[test]
    fn last_observer_leaving_cancels_upstream() {
        let t0 = Instant::now();
        let mut r = Relay::new(LIMITS, t0);
        let (a, _) = add(&mut r, &k30(), "A", t0);
        let (b, _) = add(&mut r, &k30(), "B", t0);
        assert_eq!(r.remove_observer(a), vec![]);
        assert_eq!(r.upstreams(), 1);
        assert_eq!(
            r.remove_observer(b),
            vec![RelayAction::CancelUpstream(k30())]
        );
        assert_eq!(r.remove_observer(b), vec![], "unknown id: nothing");
        assert_empty(&r);
    }

    // ---- fan-out and sequence numbers ----------------------------------------------------

    #[test]
    fn fan_out_gives_each_observer_its_own_increasing_seq() {
        let t0 = Instant::now();
        let mut r = Relay::new(LIMITS, t0);
        let (a, _) = add(&mut r, &k30(), "A", t0);
        let (b, _) = add(&mut r, &k30(), "B", t0);
        let first = r.upstream_notification(&k30(), value("1"), ms(t0, 5));
        assert_eq!(notified(&first), vec![(a, 5), (b, 6)], "registration order");
        // Every Notify shares one body.
        if let [
            RelayAction::Notify { body: x, .. },
            RelayAction::Notify { body: y, .. },
        ] = first.as_slice()
        {
            assert!(Arc::ptr_eq(x, y));
            assert_eq!(x.payload, b"1");
        } else {
            panic!("{first:?}");
        }
        // C joins later and gets the cached value at once.
        let (c, joined) = add(&mut r, &k30(), "C", ms(t0, 100));
        assert_eq!(notified(&joined), vec![(c, 100)]);
        // Three notifications in one millisecond, then one a second later.
        let mut per = BTreeMap::<ObserverId, Vec<u32>>::new();
        for (n, at) in [(2, 200), (3, 200), (4, 200), (5, 1200)] {
            let acts = r.upstream_notification(&k30(), value(&n.to_string()), ms(t0, at));
            assert_eq!(acts.len(), 3);
            for (o, s) in notified(&acts) {
                per.entry(o).or_default().push(s);
            }
        }
        assert_eq!(per.get(&a), Some(&vec![200, 201, 202, 1200]));
        assert_eq!(per.get(&b), Some(&vec![200, 201, 202, 1200]));
        assert_eq!(per.get(&c), Some(&vec![200, 201, 202, 1200]));
        for seqs in per.values() {
            assert!(
                seqs.windows(2)
                    .all(|w| matches!(w, [x, y] if newer(*x, *y)))
            );
        }
        assert_eq!(
            r.latest(&k30()).map(|b| b.payload.clone()),
            Some(b"5".to_vec())
        );
    }

    #[test]
    fn seq_wraps_at_24_bits_and_stays_newer() {
        let t0 = Instant::now();
        let mut r = Relay::new(LIMITS, t0);
        let (a, _) = add(&mut r, &k30(), "A", t0);
        let near_wrap = ms(t0, u64::from(SEQ_MODULUS) - 2);
        let mut seqs = Vec::new();
        for _ in 0..4 {
            seqs.extend(seqs_of(
                &r.upstream_notification(&k30(), value("x"), near_wrap),
                a,
            ));
        }
        assert_eq!(seqs, vec![SEQ_MODULUS - 2, SEQ_MODULUS - 1, 0, 1]);
        assert!(
            seqs.windows(2)
                .all(|w| matches!(w, [x, y] if newer(*x, *y)))
        );
        assert!(seqs.iter().all(|s| *s < SEQ_MODULUS));
    }

    #[test]
    fn a_new_observer_starts_above_every_value_issued() {
        let t0 = Instant::now();
        let mut r = Relay::new(LIMITS, t0);
        let (a, _) = add(&mut r, &k30(), "A", t0);
        let mut last = 0;
        for _ in 0..10 {
            last = seqs_of(&r.upstream_notification(&k30(), value("x"), ms(t0, 7)), a)
                .pop()
                .unwrap_or(0);
        }
        assert_eq!(last, 16, "ran 9 ahead of the clock");
        // A drops its observation and registers again in the same millisecond.
        let _ = r.remove_observer(a);
        let (a2, _) = add(&mut r, &k30(), "A", ms(t0, 7));
        let s = seqs_of(&r.upstream_notification(&k30(), value("y"), ms(t0, 7)), a2);
        assert_eq!(s, vec![17]);
    }

    #[test]
    fn reregistration_with_the_same_token_keeps_the_sequence() {
        let t0 = Instant::now();
        let mut r = Relay::new(LIMITS, t0);
        let (a, _) = add(&mut r, &k30(), "A", t0);
        let s1 = seqs_of(&r.upstream_notification(&k30(), value("1"), ms(t0, 50)), a);
        let s2 = seqs_of(&r.reregister_observer(a, ms(t0, 50)), a);
        assert_eq!((s1, s2), (vec![50], vec![51]));
        assert_eq!(r.reregister_observer(ObserverId(99), t0), vec![]);
    }

    // ---- the cached value ----------------------------------------------------------------

    #[test]
    fn a_new_observer_gets_the_cached_value_with_max_age_reduced() {
        let t0 = Instant::now();
        let mut r = Relay::new(LIMITS, t0);
        let _ = add(&mut r, &k30(), "A", t0);
        let mut v = value("21.5");
        v.max_age = Some(30);
        v.etag = Some(vec![1, 2]);
        let _ = r.upstream_notification(&k30(), v.clone(), t0);
        let (b, got) = add(&mut r, &k30(), "B", t0 + Duration::from_millis(10_500));
        let mut want = v.clone();
        want.max_age = Some(19); // 30 − ⌈10.5⌉
        assert_eq!(
            got,
            vec![RelayAction::Notify {
                observer: b,
                seq: 10_500,
                body: Arc::new(want),
            }]
        );
        assert_eq!(r.latest(&k30()), Some(&v), "the cache keeps what arrived");
        // No Max-Age means 60 s.
        let k2 = key("dev1", "/4/0", None);
        let _ = add(&mut r, &k2, "A", t0);
        let _ = r.upstream_notification(&k2, value("x"), t0);
        let (_, got) = add(&mut r, &k2, "B", t0 + Duration::from_secs(20));
        assert!(
            matches!(got.as_slice(), [RelayAction::Notify { body, .. }] if body.max_age == Some(40)),
            "{got:?}"
        );
    }

    #[test]
    fn a_stale_cache_asks_for_one_refresh_which_reaches_everyone() {
        let t0 = Instant::now();
        let mut r = Relay::new(LIMITS, t0);
        let (a, _) = add(&mut r, &k30(), "A", t0);
        let mut v = value("1");
        v.max_age = Some(5);
        let _ = r.upstream_notification(&k30(), v, t0);
        let late = t0 + Duration::from_secs(5);
        let (b, got) = add(&mut r, &k30(), "B", late);
        assert_eq!(got, vec![RelayAction::RefreshUpstream(k30())]);
        let (_, again) = add(&mut r, &k30(), "C", late);
        assert_eq!(again, vec![], "one refresh outstanding");
        let fresh = r.upstream_notification(&k30(), value("2"), late);
        assert_eq!(fresh.len(), 3);
        assert_eq!(seqs_of(&fresh, a).len(), 1);
        assert_eq!(seqs_of(&fresh, b).len(), 1);
        // Max-Age 0 is never served from the cache.
        let mut zero = value("3");
        zero.max_age = Some(0);
        let _ = r.upstream_notification(&k30(), zero, late);
        let (_, got) = add(&mut r, &k30(), "D", late);
        assert_eq!(got, vec![RelayAction::RefreshUpstream(k30())]);
    }

    #[test]
    fn a_new_observer_of_a_pending_key_waits_for_the_first_notification() {
        let t0 = Instant::now();
        let mut r = Relay::new(LIMITS, t0);
        let (a, _) = add(&mut r, &k30(), "A", t0);
        let (b, waits) = add(&mut r, &k30(), "B", t0);
        assert_eq!(waits, vec![]);
        let first = r.upstream_notification(&k30(), value("1"), ms(t0, 1));
        assert_eq!(notified(&first), vec![(a, 1), (b, 2)]);
    }

    #[test]
    fn a_2_03_with_the_cached_etag_stands_for_the_cached_value() {
        let t0 = Instant::now();
        let mut r = Relay::new(LIMITS, t0);
        let (a, _) = add(&mut r, &k30(), "A", t0);
        let mut v = value("1");
        v.etag = Some(vec![7]);
        v.max_age = Some(10);
        let _ = r.upstream_notification(&k30(), v.clone(), t0);
        let valid = |etag: Option<Vec<u8>>| NotificationBody {
            code: ResponseType::Valid,
            content_format: None,
            payload: vec![],
            max_age: Some(99),
            etag,
        };
        let acts = r.upstream_notification(&k30(), valid(Some(vec![7])), ms(t0, 3));
        let mut want = v;
        want.max_age = Some(99);
        assert_eq!(
            acts,
            vec![RelayAction::Notify {
                observer: a,
                seq: 3,
                body: Arc::new(want.clone()),
            }]
        );
        assert_eq!(r.latest(&k30()), Some(&want));
        assert_eq!(
            r.upstream_notification(&k30(), valid(Some(vec![8])), t0),
            vec![]
        );
        assert_eq!(r.upstream_notification(&k30(), valid(None), t0), vec![]);
    }

    // ---- upstream errors -----------------------------------------------------------------

    #[test]
    fn a_non_2xx_notification_ends_every_observer_and_cancels() {
        let t0 = Instant::now();
        let mut r = Relay::new(LIMITS, t0);
        let (a, _) = add(&mut r, &k30(), "A", t0);
        let (b, _) = add(&mut r, &k30(), "B", t0);
        let other = key("dev1", "/4/0", None);
        let (c, _) = add(&mut r, &other, "A", t0);
        let _ = r.upstream_notification(&k30(), value("1"), t0);
        let gone = NotificationBody {
            code: ResponseType::NotFound,
            content_format: Some(0),
            payload: b"no such instance".to_vec(),
            max_age: None,
            etag: None,
        };
        assert_eq!(
            r.upstream_notification(&k30(), gone.clone(), ms(t0, 1)),
            vec![
                end(a, ResponseType::NotFound, "no such instance"),
                end(b, ResponseType::NotFound, "no such instance"),
                RelayAction::CancelUpstream(k30()),
            ]
        );
        assert_eq!(r.latest(&k30()), None);
        assert_eq!(r.observer(c), Some((&other, "A")), "other keys untouched");
        assert_eq!((r.observers(), r.upstreams()), (1, 1));
        // A late one for the removed key: nothing (the caller RSTs it).
        assert_eq!(r.upstream_notification(&k30(), value("2"), t0), vec![]);
        assert_eq!(r.upstream_notification(&k30(), gone, t0), vec![]);
    }

    #[test]
    fn an_error_first_answer_and_a_failed_upstream_end_with_their_code() {
        let t0 = Instant::now();
        let mut r = Relay::new(LIMITS, t0);
        let (a, _) = add(&mut r, &k30(), "A", t0);
        let unauthorized = NotificationBody {
            code: ResponseType::Unauthorized,
            content_format: None,
            payload: "é".repeat(200).into_bytes(),
            max_age: None,
            etag: None,
        };
        let acts = r.upstream_notification(&k30(), unauthorized, t0);
        let cut = format!("{}…", "é".repeat(DIAGNOSTIC_MAX_CHARS));
        assert_eq!(
            acts,
            vec![
                end(a, ResponseType::Unauthorized, &cut),
                RelayAction::CancelUpstream(k30())
            ]
        );
        let (b, _) = add(&mut r, &k30(), "B", t0);
        assert_eq!(
            r.upstream_failed(
                &k30(),
                ResponseType::GatewayTimeout,
                "device did not answer"
            ),
            vec![
                end(b, ResponseType::GatewayTimeout, "device did not answer"),
                RelayAction::CancelUpstream(k30())
            ]
        );
        assert_empty(&r);
    }

    #[test]
    fn a_resource_that_is_not_observable_gets_a_plain_answer() {
        let t0 = Instant::now();
        let mut r = Relay::new(LIMITS, t0);
        let (a, _) = add(&mut r, &k30(), "A", t0);
        let (b, _) = add(&mut r, &k30(), "B", t0);
        let body = Arc::new(value("once"));
        assert_eq!(
            r.upstream_not_observable(&k30(), value("once")),
            vec![
                RelayAction::Final {
                    observer: a,
                    body: Arc::clone(&body)
                },
                RelayAction::Final { observer: b, body },
                RelayAction::CancelUpstream(k30()),
            ]
        );
        assert_empty(&r);
    }

    // ---- lost and re-registered ----------------------------------------------------------

    #[test]
    fn reregistration_restarts_each_live_key_of_the_device_once() {
        let t0 = Instant::now();
        let mut r = Relay::new(LIMITS, t0);
        let k1 = key("dev1", "/3/0", None);
        let k2 = key("dev1", "/3303/0/5700", Some(110));
        let k10 = key("dev10", "/3/0", None); // shares a string prefix with dev1
        let k0 = key("dev0", "/3/0", None);
        for k in [&k1, &k2, &k10, &k0] {
            let _ = add(&mut r, k, "A", t0);
        }
        let _ = add(&mut r, &k1, "B", t0); // two observers of k1: still one start
        let _ = r.upstream_notification(&k1, value("1"), t0);
        assert!(r.upstream_lost(&k2));
        assert!(!r.upstream_lost(&key("dev1", "/9", None)));
        assert_eq!(
            r.device_reregistered("dev1"),
            vec![
                RelayAction::StartUpstream(k1.clone()),
                RelayAction::StartUpstream(k2.clone())
            ]
        );
        assert_eq!(r.device_reregistered("dev"), vec![]);
        assert_eq!(r.device_reregistered("nobody"), vec![]);
        assert_eq!((r.observers(), r.upstreams()), (5, 4), "nobody ended");
        // Notifications resume to both observers of k1.
        assert_eq!(
            notified(&r.upstream_notification(&k1, value("2"), ms(t0, 9))).len(),
            2
        );
    }

    #[test]
    fn a_lost_device_keeps_its_observers_until_it_is_back() {
        let t0 = Instant::now();
        let mut r = Relay::new(LIMITS, t0);
        let (a, _) = add(&mut r, &k30(), "A", t0);
        let mut v = value("1");
        v.max_age = Some(2);
        let _ = r.upstream_notification(&k30(), v, t0);
        assert_eq!(r.device_lost("dev1"), 1);
        assert_eq!(r.device_lost("dev2"), 0);
        // Fresh cache: still served; stale: no refresh asked of a lost upstream.
        let (_, fresh) = add(&mut r, &k30(), "B", ms(t0, 500));
        assert_eq!(notified(&fresh).len(), 1);
        let (_, stale) = add(&mut r, &k30(), "C", t0 + Duration::from_secs(3));
        assert_eq!(stale, vec![]);
        assert_eq!(
            r.device_reregistered("dev1"),
            vec![RelayAction::StartUpstream(k30())]
        );
        // Pending again: a stale cache asks no refresh until the first answer.
        let (_, pending) = add(&mut r, &k30(), "D", t0 + Duration::from_secs(3));
        assert_eq!(pending, vec![]);
        let back = r.upstream_notification(&k30(), value("2"), t0 + Duration::from_secs(4));
        assert_eq!(notified(&back).len(), 4);
        assert_eq!(seqs_of(&back, a).len(), 1);
    }

    // ---- revocation ----------------------------------------------------------------------

    #[test]
    fn revocation_ends_exactly_the_affected_observer_with_4_03() {
        let t0 = Instant::now();
        let mut r = Relay::new(LIMITS, t0);
        let (a, _) = add(&mut r, &k30(), "A", t0);
        let (b, _) = add(&mut r, &k30(), "B", t0);
        let k4 = key("dev1", "/4/0", None);
        let (b4, _) = add(&mut r, &k4, "B", t0);
        let _ = r.upstream_notification(&k30(), value("1"), t0);

        // B loses /3/0 only: B's /3/0 observer ends, A shares the key so no cancel.
        let mut asked = Vec::new();
        let acts = r.revalidate(|server, k| {
            asked.push((server.to_owned(), k.path.clone()));
            !(server == "B" && k.path.starts_with("/3/0"))
        });
        assert_eq!(
            acts,
            vec![end(b, ResponseType::Forbidden, REVOKED_DIAGNOSTIC)]
        );
        assert_eq!(asked.len(), 3, "one question per observer");
        assert_eq!(r.observer(b), None);
        assert_eq!(r.observers_of(&k30()).collect::<Vec<_>>(), vec![a]);
        assert_eq!(r.observer(b4), Some((&k4, "B")));
        // The remaining observer still gets notifications, B does not.
        let next = r.upstream_notification(&k30(), value("2"), ms(t0, 1));
        assert_eq!(
            notified(&next)
                .into_iter()
                .map(|(o, _)| o)
                .collect::<Vec<_>>(),
            vec![a]
        );

        // B loses everything: its /4/0 observer was the key's last, so the upstream goes too.
        let acts = r.revalidate(|server, _| server != "B");
        assert_eq!(
            acts,
            vec![
                end(b4, ResponseType::Forbidden, REVOKED_DIAGNOSTIC),
                RelayAction::CancelUpstream(k4)
            ]
        );
        assert_eq!(r.revalidate(|_, _| true), vec![]);
        let acts = r.revalidate(|_, _| false);
        assert_eq!(
            acts,
            vec![
                end(a, ResponseType::Forbidden, REVOKED_DIAGNOSTIC),
                RelayAction::CancelUpstream(k30())
            ]
        );
        assert_empty(&r);
    }

    // ---- bounded memory ------------------------------------------------------------------

    #[test]
    fn caps_refuse_without_changing_anything() {
        let t0 = Instant::now();
        let limits = RelayLimits {
            max_observers: 3,
            max_per_server: 2,
        };
        let mut r = Relay::new(limits, t0);
        let (a1, _) = add(&mut r, &k30(), "A", t0);
        let _ = add(&mut r, &key("dev2", "/3/0", None), "A", t0);
        assert_eq!(
            r.add_observer(key("dev3", "/3/0", None), "A".into(), t0),
            Err(RelayError::TooManyForServer {
                server: "A".into(),
                limit: 2
            })
        );
        assert_eq!((r.observers(), r.upstreams()), (2, 2));
        let _ = add(&mut r, &k30(), "B", t0);
        assert_eq!(
            r.add_observer(key("dev4", "/3/0", None), "C".into(), t0),
            Err(RelayError::TooManyObservers { limit: 3 })
        );
        assert_eq!((r.observers(), r.upstreams()), (3, 2));
        // Room again after a removal; ids are never reused.
        let _ = r.remove_observer(a1);
        let (c, _) = add(&mut r, &k30(), "C", t0);
        assert!(c.get() > a1.get());
        assert_eq!(r.per_server.get("A"), Some(&1));
    }
}
