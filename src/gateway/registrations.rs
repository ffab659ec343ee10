//! The gateway's LwM2M registrations at run time: the sans-IO [`Registry`] behind a lock
//! that is never held across an await, the task that expires registrations on time, one
//! info line per Register / Update / De-register / expiry, and the wake-ups that let a read
//! for a sleeping queue-mode device wait for its next Register or Update.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::registry::{Account, EventKind, Registry, RegistryConfig, RegistryEvent, Version};
use crate::runtime::{PeerLink, Shutdown, stopped};
use crate::transport::TransportKind;

/// The session a registration came over: requests to the device go back over its link.
#[derive(Debug, Clone)]
pub struct DeviceSession {
    pub link: PeerLink,
    /// The address of the latest Register or Update.
    pub addr: SocketAddr,
    pub transport: TransportKind,
}

/// A registration to send a request over, found by [`Registrations::wait_route`].
#[derive(Debug, Clone)]
pub struct Route {
    pub session: DeviceSession,
    pub account: Account,
    pub version: Version,
}

/// Why a device cannot be reached through a registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("not registered")]
    NotRegistered,
    #[error("queue mode: asleep")]
    Asleep,
}

/// Every registration of the gateway's LwM2M listeners (all accounts).
pub struct Registrations {
    registry: Mutex<Registry<DeviceSession>>,
    /// The gateway's own account (the default route to a device).
    own: Account,
    /// Rung after every change: the expiry task re-arms its timer.
    rearm: Notify,
    /// Rung after every Register / Update: reads waiting on a sleeping device look again.
    woken: Notify,
}

impl Registrations {
    pub fn new(max_registrations: usize, awake_window: Duration) -> Registrations {
        let mut config = RegistryConfig::new(max_registrations);
        config.awake_window = awake_window;
        // Locations differ from one run to the next, so an Update to a location from before a
        // restart meets no other device's registration (it is 4.04 either way).
        let seed = u32::from_be_bytes(crate::runtime::client::random_bytes::<4>());
        config.first_location_id = u64::from(seed >> 8) + 1;
        Registrations {
            registry: Mutex::new(Registry::new(config)),
            own: Account::new(crate::config::Account::Gateway.name()),
            rearm: Notify::new(),
            woken: Notify::new(),
        }
    }

    /// The gateway's own account.
    pub fn own_account(&self) -> &Account {
        &self.own
    }

    /// Runs `f` on the registry at the current time, then logs what changed and wakes whoever
    /// waits for a change.
    pub fn with<R>(
        &self,
        f: impl FnOnce(&mut Registry<DeviceSession>, std::time::Instant) -> R,
    ) -> R {
        let (result, events) = {
            let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            let result = f(&mut registry, now());
            let events: Vec<RegistryEvent> = std::iter::from_fn(|| registry.poll_event()).collect();
            (result, events)
        };
        if !events.is_empty() {
            for event in &events {
                log_event(event);
            }
            self.rearm.notify_one();
            self.woken.notify_waiters();
        }
        result
    }

    /// Expires registrations whose lifetime ran out, until `shutdown`.
    pub async fn run_expiry(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            let next = self.with(|r, _| r.poll_timeout());
            let sleep = match next {
                Some(at) => tokio::time::sleep_until(Instant::from_std(at)),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                _ = sleep => self.with(|r, now| r.handle_timeout(now)),
                _ = self.rearm.notified() => {}
                _ = stopped(&mut shutdown) => return,
            }
        }
    }

    /// The registration to reach `endpoint` by on behalf of `preferred` (a server's account,
    /// else the gateway's own). A queue-mode device that is asleep is waited for, up to
    /// `patience`, until it registers or updates again.
    pub async fn wait_route(
        &self,
        endpoint: &str,
        preferred: &Account,
        patience: Duration,
    ) -> Result<Route, RouteError> {
        // An awake device (every one not in queue mode) is routed at once, without joining
        // the waiters of `woken`, whose list every read of a group write would otherwise
        // lock twice.
        match self.find_route(endpoint, preferred) {
            None => return Err(RouteError::NotRegistered),
            Some((route, true)) => return Ok(route),
            Some((_, false)) => {}
        }
        let give_up = Instant::now() + patience;
        loop {
            let woken = self.woken.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.find_route(endpoint, preferred) {
                None => return Err(RouteError::NotRegistered),
                Some((route, true)) => return Ok(route),
                Some((_, false)) => {
                    tracing::debug!(endpoint, "queue mode: waiting for the device to wake");
                    if tokio::time::timeout_at(give_up, woken).await.is_err() {
                        return Err(RouteError::Asleep);
                    }
                }
            }
        }
    }
}

impl Registrations {
    /// The route to `endpoint` for `preferred`, and whether the device is awake.
    fn find_route(&self, endpoint: &str, preferred: &Account) -> Option<(Route, bool)> {
        self.with(|r, now| {
            r.route(endpoint, preferred, &self.own, now).map(|l| {
                let route = Route {
                    session: l.peer.clone(),
                    account: l.registration.account().clone(),
                    version: l.registration.version(),
                };
                (route, l.awake)
            })
        })
    }
}

/// Registry time follows tokio's clock, so tests under paused time see lifetimes run out.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

fn log_event(event: &RegistryEvent) {
    let (endpoint, account, location) = (&event.endpoint, &event.account, &event.location);
    match event.kind {
        EventKind::Registered { replaced } => {
            tracing::info!(%endpoint, %account, %location, replaced, "registered")
        }
        EventKind::Updated => {
            tracing::info!(%endpoint, %account, %location, "registration updated")
        }
        EventKind::Deregistered => tracing::info!(%endpoint, %account, %location, "de-registered"),
        EventKind::Expired => {
            tracing::info!(%endpoint, %account, %location, "registration expired")
        }
    }
}

/// One registration as `/GwConfig/Devices/<id>` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationView {
    pub account: String,
    pub endpoint: String,
    pub location: String,
    pub version: String,
    pub binding: String,
    pub queue_mode: bool,
    pub lifetime_s: u64,
    /// Unix seconds.
    pub registered_at: u64,
    pub updated_at: u64,
    pub transport: String,
    pub address: String,
    /// `</3/0>,</2/1>,…` as registered.
    pub objects: String,
}

impl Registrations {
    /// The live registrations of `endpoint`, on each of `accounts`.
    pub fn views(&self, endpoint: &str, accounts: &[Account]) -> Vec<RegistrationView> {
        let wall = std::time::SystemTime::now();
        self.with(|r, now| {
            accounts
                .iter()
                .filter_map(|a| r.lookup(endpoint, a, now))
                .map(|l| view(l.registration, &l.peer, now, wall))
                .collect()
        })
    }
}

fn view(
    r: &crate::registry::Registration,
    session: &DeviceSession,
    now: std::time::Instant,
    wall: std::time::SystemTime,
) -> RegistrationView {
    let unix = |t: std::time::Instant| {
        wall.checked_sub(now.saturating_duration_since(t))
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    };
    let objects = r
        .objects()
        .objects
        .iter()
        .map(|o| match o.instance {
            Some(i) => format!("</{}/{i}>", o.object),
            None => format!("</{}>", o.object),
        })
        .collect::<Vec<_>>()
        .join(",");
    RegistrationView {
        account: r.account().to_string(),
        endpoint: r.endpoint().to_owned(),
        location: r.location().to_owned(),
        version: r.version().to_string(),
        binding: r.binding().to_string(),
        queue_mode: r.queue_mode(),
        lifetime_s: r.lifetime().as_secs(),
        registered_at: unix(r.registered_at()),
        updated_at: unix(r.updated_at()),
        transport: format!("{:?}", session.transport),
        address: session.addr.to_string(),
        objects,
    }
}
