//! The Observe relay at run time (issue 8 §5): drives the sans-IO [`Relay`] with real
//! observations. One upstream observation per (device, path, Accept) on the device's session
//! ([`South::observe`]); every allowed server observing that key gets each notification on
//! its own session, numbered by that session (RFC 7641 §4.4).
//!
//! * **A new observer** waits for its first value (the cached one, or the upstream's first
//!   answer) up to the proxy deadline; that value is the answer to its GET, with Observe.
//! * **Notifications** go to each observer through a one-slot mailbox (a `watch`): a
//!   slow observer gets the latest state, never a stale one after a fresh one (§3.4: a
//!   client only needs the newest).
//! * **Observers leave** when their session reports them gone (RST, timeout, Observe 1);
//!   the last one of a key cancels the upstream.
//! * **Revocation**: after each privilege change the relay asks, per observer, whether Get
//!   is still allowed; a refused observer gets a final 4.03 and is removed at once.
//! * **A lost upstream** (the device's session ended, it re-registered) is re-established
//!   with backoff while observers remain; they keep their observation meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::DeviceConfig;
use crate::proxy::forward::refusal;
use crate::proxy::{NotificationBody, ObserverId, Relay, RelayAction, RelayLimits, UpstreamKey};
use crate::registry::Account;
use crate::runtime::{ObserverHandle, PeerLink};
use crate::south::South;

/// Observers the relay holds in total, and per server.
pub const RELAY_LIMITS: RelayLimits = RelayLimits {
    max_observers: 10_000,
    max_per_server: 2_000,
};
/// The longest wait between attempts to re-establish a lost upstream observation.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What a new observer's GET is answered with.
enum First {
    /// The current value: answered 2.xx with Observe.
    Value(Arc<NotificationBody>),
    /// The resource is not observable: a plain answer.
    Plain(Arc<NotificationBody>),
    /// Refused or failed: a final answer with this code.
    End(ResponseType, String),
}

impl First {
    /// The message for it (the session sets type, MID, token and the Observe value): a value
    /// carries an Observe option, a plain or final answer none.
    fn into_packet(self) -> Packet {
        match self {
            First::Value(body) => {
                let mut p = packet(&body);
                p.add_option(CoapOption::Observe, vec![0]);
                p
            }
            First::Plain(body) => packet(&body),
            First::End(code, diagnostic) => refusal(code, diagnostic),
        }
    }
}

/// One observer's side of the relay.
struct ObserverSlot {
    server: String,
    /// Admitted by a stored privilege (rather than by the device's own ACL).
    by_privilege: bool,
    /// The account the upstream for its key goes over, if it starts it.
    account: Account,
    device: Arc<DeviceConfig>,
    /// Until its first value is given.
    first: Option<oneshot::Sender<First>>,
    /// After: its mailbox, read by its delivery task (which starts once the first answer
    /// is out; what is posted before waits there, newest only).
    mailbox: watch::Sender<Option<Packet>>,
}

struct UpstreamSlot {
    task: JoinHandle<()>,
    refresh: mpsc::UnboundedSender<()>,
}

struct Inner {
    relay: Relay,
    observers: HashMap<ObserverId, ObserverSlot>,
    upstreams: HashMap<UpstreamKey, UpstreamSlot>,
}

/// The relay: observers of proxied resources and the upstream observations they share.
pub struct ObserveRelay {
    inner: Mutex<Inner>,
    south: Arc<South>,
    deadline: Duration,
}

/// Who asks to observe, and on what grounds.
pub struct ObserveRequest<'a> {
    pub server: &'a str,
    pub device: &'a Arc<DeviceConfig>,
    pub path: &'a str,
    pub request: &'a Packet,
    pub link: &'a PeerLink,
    pub account: Account,
    pub by_privilege: bool,
}

impl ObserveRelay {
    pub fn new(south: Arc<South>, deadline: Duration) -> Arc<ObserveRelay> {
        Arc::new(ObserveRelay {
            inner: Mutex::new(Inner {
                relay: Relay::new(RELAY_LIMITS, Instant::now()),
                observers: HashMap::new(),
                upstreams: HashMap::new(),
            }),
            south,
            deadline,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Observers and upstream observations held now.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.relay.observers(), inner.relay.upstreams())
    }

    /// Adds an observer (an allowed GET with Observe = 0) and answers its GET with the
    /// current value. `None`: the relay is full; serve it as a plain GET (RFC 7641 §4.1).
    pub async fn observe(self: &Arc<Self>, ask: ObserveRequest<'_>) -> Option<Packet> {
        let key = UpstreamKey::new(
            ask.device.id.clone(),
            ask.path,
            crate::coap::accept(ask.request),
        );
        // A registered device sees the account; a dialled one has one channel for all.
        let key = match &ask.device.reach {
            crate::config::Reach::Registers(_) => key.over(ask.account.as_str()),
            _ => key,
        };
        let (tx, rx) = oneshot::channel();
        let (mail, mailbox) = watch::channel(None);
        let handle = ask.link.observer(ask.request);
        let id = {
            let mut inner = self.lock();
            let (id, actions) =
                match inner
                    .relay
                    .add_observer(key, ask.server.into(), Instant::now())
                {
                    Ok(added) => added,
                    Err(e) => {
                        tracing::info!("observe refused, answering once: {e}");
                        return None;
                    }
                };
            inner.observers.insert(
                id,
                ObserverSlot {
                    server: ask.server.to_owned(),
                    by_privilege: ask.by_privilege,
                    account: ask.account,
                    device: ask.device.clone(),
                    first: Some(tx),
                    mailbox: mail,
                },
            );
            self.run(&mut inner, actions);
            id
        };
        tracing::debug!(%id, "observer added");
        let first = match tokio::time::timeout(self.deadline, rx).await {
            Ok(Ok(first)) => first,
            _ => {
                let mut inner = self.lock();
                let actions = inner.relay.remove_observer(id);
                inner.observers.remove(&id);
                self.run(&mut inner, actions);
                First::End(
                    ResponseType::GatewayTimeout,
                    format!("no first notification within {:?}", self.deadline),
                )
            }
        };
        if matches!(first, First::Value(_)) {
            // Observing from now on: later values come through its mailbox.
            tokio::spawn(self.clone().deliver(id, handle, mailbox));
        }
        Some(first.into_packet())
    }

    /// After a privilege change: every observer `allowed(server, key, by_privilege)` no
    /// longer admits gets a final 4.03 and is removed.
    pub fn revalidate(self: &Arc<Self>, mut allowed: impl FnMut(&str, &UpstreamKey, bool) -> bool) {
        let mut inner = self.lock();
        let Inner {
            relay, observers, ..
        } = &mut *inner;
        // Which (server, device) pairs some observer holds by a privilege: one pass, so the
        // revalidation stays linear in the observers.
        let by_privilege: std::collections::HashSet<(&str, &str)> = observers
            .values()
            .filter(|o| o.by_privilege)
            .map(|o| (o.server.as_str(), o.device.id.as_str()))
            .collect();
        let actions = relay.revalidate(|server, key| {
            let held = by_privilege.contains(&(server, key.device.as_str()));
            allowed(server, key, held)
        });
        if !actions.is_empty() {
            tracing::info!(
                ended = actions.len(),
                "privilege change: observers revalidated"
            );
        }
        self.run(&mut inner, actions);
    }

    /// Sends what is posted to the observer's mailbox, newest first, until it is gone or a
    /// final answer went out.
    async fn deliver(
        self: Arc<Self>,
        id: ObserverId,
        handle: ObserverHandle,
        mut mailbox: watch::Receiver<Option<Packet>>,
    ) {
        while mailbox.changed().await.is_ok() {
            let Some(p) = mailbox.borrow_and_update().clone() else {
                continue;
            };
            let last = p.get_first_option(CoapOption::Observe).is_none();
            if handle.notify(p).await.is_err() {
                tracing::debug!(%id, "observer gone");
                let mut inner = self.lock();
                let actions = inner.relay.remove_observer(id);
                inner.observers.remove(&id);
                self.run(&mut inner, actions);
                return;
            }
            if last {
                return;
            }
        }
    }

    /// Carries out the relay's actions (with the state locked; nothing here waits).
    fn run(self: &Arc<Self>, inner: &mut Inner, actions: Vec<RelayAction>) {
        for action in actions {
            match action {
                RelayAction::StartUpstream(key) => self.start_upstream(inner, key),
                RelayAction::CancelUpstream(key) => {
                    if let Some(up) = inner.upstreams.remove(&key) {
                        tracing::debug!(device = %key.device, path = %key.path, "upstream cancelled");
                        up.task.abort();
                    }
                }
                RelayAction::RefreshUpstream(key) => {
                    if let Some(up) = inner.upstreams.get(&key) {
                        let _ = up.refresh.send(());
                    }
                }
                RelayAction::Notify { observer, body, .. } => {
                    post(inner, observer, First::Value(body), false);
                }
                RelayAction::Final { observer, body } => {
                    post(inner, observer, First::Plain(body), true);
                }
                RelayAction::End {
                    observer,
                    code,
                    diagnostic,
                } => post(inner, observer, First::End(code, diagnostic), true),
            }
        }
    }

    fn start_upstream(self: &Arc<Self>, inner: &mut Inner, key: UpstreamKey) {
        let Some(first) = inner
            .relay
            .observers_of(&key)
            .next()
            .and_then(|id| inner.observers.get(&id))
        else {
            return;
        };
        let (device, account) = (first.device.clone(), first.account.clone());
        if let Some(old) = inner.upstreams.remove(&key) {
            old.task.abort();
        }
        let (refresh, refreshes) = mpsc::unbounded_channel();
        let task = tokio::spawn(
            self.clone()
                .upstream(key.clone(), device, account, refreshes),
        );
        inner.upstreams.insert(key, UpstreamSlot { task, refresh });
    }

    /// One upstream observation, re-established with backoff when lost, until cancelled
    /// (the task is aborted) or ended by the device.
    async fn upstream(
        self: Arc<Self>,
        key: UpstreamKey,
        device: Arc<DeviceConfig>,
        account: Account,
        mut refreshes: mpsc::UnboundedReceiver<()>,
    ) {
        let mut backoff = Duration::from_secs(1);
        let mut established = false;
        loop {
            let request = observe_request(&key);
            match self
                .south
                .observe(&device, &account, request, self.deadline)
                .await
            {
                Ok(mut observation) => {
                    established = true;
                    backoff = Duration::from_secs(1);
                    let first = observation.first().clone();
                    let observable = first.get_first_option(CoapOption::Observe).is_some();
                    let body = body_of(&first);
                    if !observable {
                        self.feed(|r| {
                            if body.is_success() {
                                r.upstream_not_observable(&key, body)
                            } else {
                                r.upstream_notification(&key, body, Instant::now())
                            }
                        });
                        return;
                    }
                    self.feed(|r| r.upstream_notification(&key, body, Instant::now()));
                    loop {
                        tokio::select! {
                            next = observation.next() => match next {
                                Some(p) => {
                                    let body = body_of(&p);
                                    let ended = !body.is_success();
                                    self.feed(|r| r.upstream_notification(&key, body, Instant::now()));
                                    if ended {
                                        return;
                                    }
                                }
                                None => break,
                            },
                            Some(()) = refreshes.recv() => {
                                let _ = observation.reregister();
                            }
                        }
                    }
                    tracing::debug!(device = %key.device, path = %key.path, "upstream lost; re-establishing");
                    if !self.lock().relay.upstream_lost(&key) {
                        return;
                    }
                }
                Err(failure) if !established => {
                    let code = match failure {
                        crate::verifier::ReadFailure::Unreachable(_) => {
                            ResponseType::GatewayTimeout
                        }
                        _ => ResponseType::BadGateway,
                    };
                    let diagnostic = failure.to_string();
                    self.feed(|r| r.upstream_failed(&key, code, &diagnostic));
                    return;
                }
                Err(failure) => {
                    tracing::debug!(device = %key.device, "re-establishing failed: {failure}");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Applies one upstream event to the relay and carries out what follows.
    fn feed(self: &Arc<Self>, event: impl FnOnce(&mut Relay) -> Vec<RelayAction>) {
        let mut inner = self.lock();
        let actions = event(&mut inner.relay);
        self.run(&mut inner, actions);
    }
}

/// Gives `what` to the observer: as the answer to its GET if that is still owed, else into
/// its mailbox. A `last` one removes the observer (the relay has already).
fn post(inner: &mut Inner, id: ObserverId, what: First, last: bool) {
    let Some(slot) = inner.observers.get_mut(&id) else {
        return;
    };
    if let Some(first) = slot.first.take() {
        let _ = first.send(what);
    } else {
        let _ = slot.mailbox.send(Some(what.into_packet()));
    }
    if last {
        // Its mailbox task sends the final answer and ends; the slot goes now.
        inner.observers.remove(&id);
    }
}

/// GET `key.path` with Observe = 0 and the key's Accept.
fn observe_request(key: &UpstreamKey) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Request(RequestType::Get);
    crate::coap::set_uri(&mut p, &key.path);
    if let Some(accept) = key.accept {
        crate::coap::set_accept(&mut p, accept);
    }
    p.add_option(CoapOption::Observe, vec![]);
    p
}

fn body_of(p: &Packet) -> NotificationBody {
    let code = match p.header.code {
        MessageClass::Response(code) => code,
        _ => ResponseType::BadGateway,
    };
    NotificationBody {
        code,
        content_format: crate::coap::content_format(p),
        payload: p.payload.clone(),
        max_age: p
            .get_first_option(CoapOption::MaxAge)
            .and_then(|v| crate::coap::decode_uint(v)),
        etag: p.get_first_option(CoapOption::ETag).cloned(),
    }
}

/// The message for a notification body (the session sets type, MID, token and Observe).
fn packet(body: &NotificationBody) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Response(body.code);
    if let Some(cf) = body.content_format {
        crate::coap::set_content_format(&mut p, cf);
    }
    if let Some(max_age) = body.max_age {
        p.add_option(CoapOption::MaxAge, crate::coap::encode_uint(max_age));
    }
    if let Some(etag) = &body.etag {
        p.add_option(CoapOption::ETag, etag.clone());
    }
    p.payload = body.payload.clone();
    p
}
