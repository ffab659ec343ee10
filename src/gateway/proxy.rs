//! The secure proxy at run time (issue 8, DESIGN.md §6): a server's `METHOD /<prefix>/<path>`
//! is decided before anything reaches the device, then forwarded over the device's secured
//! channel and the answer handed back.
//!
//! One request, in order:
//! 1. **Command** of the request ([`command_of`]); none → 4.05/4.00, no device traffic.
//! 2. **Options** ([`forward::outbound`]): an unknown critical option → 4.02, Proxy-Uri → 5.05.
//! 3. **Decision**: the [`PrivilegeIndex`] (longest covering URI); no privilege covers the
//!    path → the device's own ACL for the server, read and judged by the verifier's code,
//!    reused for `device_acl_ttl_ms`. Denied → 4.03 with a diagnostic, no device traffic.
//! 4. **Delegation**: allowed by a privilege → over the grantor's account registration (the
//!    device sees the server that holds the right), else the gateway's own; allowed by the
//!    device's ACL → over the server's own account if the device has one.
//! 5. **Forwarding** under the proxy deadline: no answer by then → 5.04, a failed channel →
//!    5.02; the device's answer goes back with [`forward::inbound`]. The server-side pipeline
//!    turns a slow answer into a separate response and slices a long one into Block2 blocks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tracing::Instrument;

use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};

use crate::acl::{Operation, Principal};
use crate::audit::{AuditLog, ProxiedDecision};
use crate::config::{Config, DeviceConfig, Profile, Reach, ServerConfig};
use crate::gateway::observe_relay::{ObserveRelay, ObserveRequest};
use crate::gateway::registrations::Registrations;
use crate::proxy::UpstreamKey;
use crate::proxy::forward::{self, refusal};
use crate::proxy::{Decision, Prefixes, PrivilegeIndex, command_of};
use crate::proxy::{GatewayDevice, gateway_object};
use crate::registry::Account;
use crate::runtime::PeerLink;
use crate::south::South;
use crate::south::fanout::AclReader;
use crate::verifier::{AclReading, Outcome, ReadFailure, Reason, evaluate};

/// Device ACL readings kept for fallback decisions, at most.
const ACL_CACHE_ENTRIES: usize = 4096;

/// Why the proxy let a request through: what the audit trail and the log say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grounds {
    /// A stored privilege, made by `grantor`.
    Privilege { name: String, grantor: String },
    /// The device's own ACL grants the server the command.
    DeviceAcl,
}

/// What the proxy did with one request: the answer, and what the audit trail records.
struct Handled {
    answer: Packet,
    command: Option<Operation>,
    allowed: bool,
    reason: String,
    grantor: Option<String>,
}

impl Handled {
    /// Answered by the gateway: nothing reached the device.
    fn refused(
        command: Option<Operation>,
        code: ResponseType,
        reason: impl Into<String>,
    ) -> Handled {
        let reason = reason.into();
        Handled {
            answer: refusal(code, reason.clone()),
            command,
            allowed: false,
            reason,
            grantor: None,
        }
    }
}

/// The proxy: the privilege index, the devices by prefix, and South to reach them.
pub struct Proxy {
    devices: HashMap<String, Arc<DeviceConfig>>,
    prefixes: Prefixes,
    index: Arc<RwLock<PrivilegeIndex>>,
    south: Arc<South>,
    acl_cache: Mutex<AclCache>,
    deadline: Duration,
    /// Where registered devices' object lists come from (for `/25`).
    registrations: Arc<Registrations>,
    /// Every account devices register on, the gateway's own first.
    accounts: Vec<Account>,
    audit: AuditLog,
    relay: Arc<ObserveRelay>,
    /// Each server's principal by ServerID (for revalidating observers).
    principals: HashMap<String, Principal>,
}

impl Proxy {
    pub fn new(
        config: &Config,
        index: Arc<RwLock<PrivilegeIndex>>,
        south: Arc<South>,
        registrations: Arc<Registrations>,
        audit: AuditLog,
    ) -> Proxy {
        let south_for_relay = south.clone();
        let mut accounts = vec![registrations.own_account().clone()];
        for listen in &config.lwm2m.listen {
            let account = Account::new(listen.account.name());
            if !accounts.contains(&account) {
                accounts.push(account);
            }
        }
        let devices = config
            .devices
            .iter()
            .map(|d| (d.id.clone(), Arc::new(d.clone())))
            .collect();
        Proxy {
            devices,
            prefixes: Prefixes::new(
                config
                    .devices
                    .iter()
                    .map(|d| (d.prefix.clone(), d.id.clone())),
            ),
            index,
            south,
            acl_cache: Mutex::new(AclCache::new(config.proxy.device_acl_ttl)),
            deadline: config.proxy.deadline,
            registrations,
            accounts,
            audit,
            relay: ObserveRelay::new(south_for_relay, config.proxy.deadline),
            principals: config
                .servers
                .iter()
                .filter_map(|s| Some((s.id.clone(), Principal::new(s.id.clone(), s.ssid).ok()?)))
                .collect(),
        }
    }

    /// `GET /25[/<i>[/<r>]]`: the LwM2M Gateway object, one instance per device in config
    /// order, its IoT Device Objects from its live registration (empty for a dialled device
    /// or one not registered now).
    pub fn gateway_object(&self, config: &Config, rest: &[String], request: &Packet) -> Packet {
        if request.header.code != MessageClass::Request(RequestType::Get) {
            return refusal(ResponseType::MethodNotAllowed, "/25 is read-only");
        }
        let devices: Vec<GatewayDevice> = config
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| GatewayDevice {
                instance: u16::try_from(i).unwrap_or(u16::MAX),
                device_id: d.id.clone(),
                prefix: d.prefix.clone(),
                objects: self.objects_of(d),
            })
            .collect();
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        match gateway_object::read(&devices, &rest, crate::coap::accept(request)) {
            Ok((content_format, payload)) => {
                let mut out = refusal(ResponseType::Content, "");
                crate::coap::set_content_format(&mut out, content_format);
                out.payload = payload;
                out
            }
            Err(e) => refusal(e.code(), e.to_string()),
        }
    }

    fn objects_of(&self, device: &DeviceConfig) -> String {
        let Reach::Registers(r) = &device.reach else {
            return String::new();
        };
        self.registrations
            .views(&r.endpoint, &self.accounts)
            .into_iter()
            .map(|v| v.objects)
            .find(|o| !o.is_empty())
            .unwrap_or_default()
    }

    /// The device prefixes (routing).
    pub fn prefixes(&self) -> &Prefixes {
        &self.prefixes
    }

    /// The privilege index the decisions use.
    pub fn index(&self) -> &Arc<RwLock<PrivilegeIndex>> {
        &self.index
    }

    /// The Observe relay.
    pub fn relay(&self) -> &Arc<ObserveRelay> {
        &self.relay
    }

    /// Revalidates the relay's observers after every change the index takes, until
    /// `shutdown` (a revoked or narrowed privilege ends its observers with 4.03 at once).
    pub async fn follow_index(
        self: Arc<Self>,
        mut applied: tokio::sync::watch::Receiver<u64>,
        mut shutdown: crate::runtime::Shutdown,
    ) {
        loop {
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return },
                () = crate::runtime::stopped(&mut shutdown) => return,
            }
            self.relay.revalidate(|server, key, by_privilege| {
                self.may_still_observe(server, key, by_privilege)
            });
        }
    }

    /// Whether `server` may still Get `key.path` on `key.device`, by the index, or by the
    /// device's ACL when no privilege covers it: unchanged if the device's ACL admitted the
    /// observer, else judged from a fresh cached reading (none: no).
    fn may_still_observe(&self, server: &str, key: &UpstreamKey, by_privilege: bool) -> bool {
        let Some(principal) = self.principals.get(server) else {
            return false;
        };
        let decision = self.index.read().unwrap_or_else(|p| p.into_inner()).decide(
            principal,
            &key.device,
            &key.path,
            Operation::Get,
        );
        match decision {
            Decision::Allowed { .. } => true,
            Decision::Denied { .. } => false,
            Decision::NoPrivilege if !by_privilege => true,
            Decision::NoPrivilege => {
                let Some(device) = self.devices.get(&key.device) else {
                    return false;
                };
                let cached = self
                    .cache()
                    .get(&acl_key(principal, device, &key.path), Instant::now());
                cached.is_some_and(|reading| {
                    let outcome = evaluate(
                        device.profile,
                        Operation::Get,
                        &key.path,
                        principal,
                        Ok(reading),
                    );
                    outcome == Outcome::Allowed
                })
            }
        }
    }

    /// Answers `server`'s `request` for `path` on device `device_id` (routed by prefix), and
    /// records the decision in the audit trail. `link` is the server's session, which its
    /// Observe notifications go over (every transport; a closed link, as for a request with
    /// no session, ends an observation at its first notification).
    pub async fn handle(
        &self,
        server: &ServerConfig,
        device_id: &str,
        path: &[String],
        request: &Packet,
        link: &PeerLink,
    ) -> Packet {
        let Some(device) = self.devices.get(device_id) else {
            return refusal(ResponseType::NotFound, format!("no device '{device_id}'"));
        };
        let started = Instant::now();
        let device_path = format!("/{}", path.join("/"));
        let span = tracing::debug_span!("proxy", device = %device.id, path = %device_path);
        let handled = self
            .answer(server, device, path, &device_path, request, link)
            .instrument(span)
            .await;
        let latency = started.elapsed();
        // A refusal is a decision worth a line at info; the allowed requests of a busy proxy
        // are at debug (each is in the audit trail either way).
        let latency_us = latency.as_micros() as u64;
        let code = handled.answer.header.code;
        if handled.allowed {
            tracing::debug!(device = %device.id, path = %device_path, %code, reason = %handled.reason, latency_us, "proxied");
        } else {
            tracing::info!(device = %device.id, path = %device_path, %code, reason = %handled.reason, latency_us, "refused");
        }
        self.audit.proxied(ProxiedDecision {
            server: server.id.clone(),
            device: device.id.clone(),
            method: crate::gateway::method_name(request.header.code),
            path: device_path,
            command: handled.command,
            allowed: handled.allowed,
            reason: handled.reason,
            grantor: handled.grantor,
            latency,
        });
        handled.answer
    }

    async fn answer(
        &self,
        server: &ServerConfig,
        device: &Arc<DeviceConfig>,
        path: &[String],
        device_path: &str,
        request: &Packet,
        link: &PeerLink,
    ) -> Handled {
        let method = match request.header.code {
            MessageClass::Request(m) => m,
            _ => return Handled::refused(None, ResponseType::BadRequest, "not a request"),
        };
        let command = match command_of(method, path, device.profile) {
            Ok(c) => c,
            Err(e) => return Handled::refused(None, e.code(), e.to_string()),
        };
        let outbound = match forward::outbound(request, path) {
            Ok(p) => p,
            Err(e) => return Handled::refused(Some(command), e.code(), e.to_string()),
        };
        // Observe = 0 registers with the relay; Observe = 1 (deregistration, which the
        // server's session has applied) and anything else is a plain GET here (`outbound`
        // never carries the server's Observe: the relay observes upstream itself).
        let observe = method == RequestType::Get
            && request
                .get_first_option(CoapOption::Observe)
                .is_some_and(|v| crate::coap::decode_uint(v) == Some(0));
        let Some(principal) = self.principals.get(&server.id) else {
            let code = ResponseType::InternalServerError;
            return Handled::refused(Some(command), code, "server has no valid SSID");
        };
        let work = async {
            let grounds = match self.decide(principal, device, device_path, command).await {
                Ok(g) => g,
                Err((code, reason)) => return Handled::refused(Some(command), code, reason),
            };
            let (account, reason, grantor) = match grounds {
                Grounds::Privilege { name, grantor } => (
                    Account::new(grantor.clone()),
                    format!("privilege {name}"),
                    Some(grantor),
                ),
                Grounds::DeviceAcl => (
                    Account::new(server.id.clone()),
                    "device ACL".to_owned(),
                    None,
                ),
            };
            tracing::debug!(%reason, %account, %command, "allowed");
            if observe {
                let ask = ObserveRequest {
                    server: &server.id,
                    device,
                    path: device_path,
                    request,
                    link,
                    account: account.clone(),
                    by_privilege: grantor.is_some(),
                };
                if let Some(answer) = self.relay.observe(ask).await {
                    return Handled {
                        answer,
                        command: Some(command),
                        allowed: true,
                        reason: format!("{reason} (observe)"),
                        grantor,
                    };
                }
            }
            let forwarded = self
                .south
                .forward(device, &account, outbound, self.deadline)
                .await;
            let answer = match forwarded {
                Ok(response) => forward::inbound(&response, &device.prefix),
                Err(failure) => channel_failure(&failure),
            };
            Handled {
                answer,
                command: Some(command),
                allowed: true,
                reason,
                grantor,
            }
        };
        match tokio::time::timeout(self.deadline, work).await {
            Ok(handled) => handled,
            Err(_) => Handled {
                answer: refusal(
                    ResponseType::GatewayTimeout,
                    format!("no answer from {} within {:?}", device.id, self.deadline),
                ),
                command: Some(command),
                allowed: true,
                reason: "deadline passed".into(),
                grantor: None,
            },
        }
    }

    /// May `principal` perform `command` on `path` of `device`? The privileges first, then
    /// the device's own ACL. `Err` is the refusal's code and diagnostic.
    async fn decide(
        &self,
        principal: &Principal,
        device: &Arc<DeviceConfig>,
        path: &str,
        command: Operation,
    ) -> Result<Grounds, (ResponseType, String)> {
        let decision = self
            .index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .decide(principal, &device.id, path, command);
        match decision {
            Decision::Allowed { by } => {
                return Ok(Grounds::Privilege {
                    name: by.name.as_str().to_owned(),
                    grantor: by.grantor,
                });
            }
            Decision::Denied { by, uri } => {
                return Err((
                    ResponseType::Forbidden,
                    format!(
                        "privilege {by} on {uri} does not grant {command} to {}",
                        principal.server_id()
                    ),
                ));
            }
            Decision::NoPrivilege => {}
        }
        let reading = self.device_acl(principal, device, path).await;
        match evaluate(device.profile, command, path, principal, reading) {
            Outcome::Allowed => Ok(Grounds::DeviceAcl),
            Outcome::Failed { reason, detail } => {
                let code = match reason {
                    Reason::Unreachable => ResponseType::GatewayTimeout,
                    Reason::SecureChannel => ResponseType::BadGateway,
                    _ => ResponseType::Forbidden,
                };
                Err((
                    code,
                    format!(
                        "no privilege grants {command} on {path}, and the device's ACL: {reason}: {detail}",
                    ),
                ))
            }
        }
    }

    /// The device's own ACL governing `path`, read on `principal`'s behalf, from the cache
    /// while fresh.
    async fn device_acl(
        &self,
        principal: &Principal,
        device: &Arc<DeviceConfig>,
        path: &str,
    ) -> Result<AclReading, ReadFailure> {
        let key = acl_key(principal, device, path);
        let now = Instant::now();
        if let Some(hit) = self.cache().get(&key, now) {
            return Ok(hit);
        }
        let reading = self.south.read_acl(device, principal, path).await?;
        self.cache().put(key, reading.clone(), Instant::now());
        Ok(reading)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, AclCache> {
        self.acl_cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where the device ACL reading for `principal` on `path` is cached.
fn acl_key(principal: &Principal, device: &DeviceConfig, path: &str) -> AclKey {
    AclKey {
        device: device.id.clone(),
        server: principal.server_id().to_owned(),
        // An LwM2M device's whole /2 governs every path; a DM ACL chain is per node.
        path: match device.profile {
            Profile::Lwm2m(_) => String::new(),
            Profile::Dm(_) => path.to_owned(),
        },
    }
}

/// The answer for a forward that failed on the device's channel.
fn channel_failure(failure: &ReadFailure) -> Packet {
    let code = match failure {
        ReadFailure::Unreachable(_) => ResponseType::GatewayTimeout,
        _ => ResponseType::BadGateway,
    };
    refusal(code, failure.to_string())
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AclKey {
    device: String,
    server: String,
    path: String,
}

/// Device ACL readings by (device, server, path), each reused until `ttl` old.
struct AclCache {
    ttl: Duration,
    entries: HashMap<AclKey, (Instant, AclReading)>,
}

impl AclCache {
    fn new(ttl: Duration) -> AclCache {
        AclCache {
            ttl,
            entries: HashMap::new(),
        }
    }

    fn get(&self, key: &AclKey, now: Instant) -> Option<AclReading> {
        let (at, reading) = self.entries.get(key)?;
        (now.saturating_duration_since(*at) < self.ttl).then(|| reading.clone())
    }

    fn put(&mut self, key: AclKey, reading: AclReading, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        if self.entries.len() >= ACL_CACHE_ENTRIES && !self.entries.contains_key(&key) {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
            if self.entries.len() >= ACL_CACHE_ENTRIES {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(key, (now, reading));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(device: &str) -> AclKey {
        AclKey {
            device: device.into(),
            server: "ServerB".into(),
            path: String::new(),
        }
    }

    fn reading() -> AclReading {
        AclReading::Lwm2m {
            content_format: 11542,
            payload: vec![1],
        }
    }

    #[test]
    fn a_reading_is_reused_until_its_ttl_and_zero_ttl_keeps_nothing() {
        let t0 = Instant::now();
        let mut cache = AclCache::new(Duration::from_secs(10));
        cache.put(key("d"), reading(), t0);
        assert!(cache.get(&key("d"), t0 + Duration::from_secs(9)).is_some());
        assert!(cache.get(&key("d"), t0 + Duration::from_secs(10)).is_none());
        let mut none = AclCache::new(Duration::ZERO);
        none.put(key("d"), reading(), t0);
        assert!(none.get(&key("d"), t0).is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        let t0 = Instant::now();
        let mut cache = AclCache::new(Duration::from_secs(10));
        for i in 0..ACL_CACHE_ENTRIES + 10 {
            cache.put(
                key(&i.to_string()),
                reading(),
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(cache.entries.len(), ACL_CACHE_ENTRIES);
        assert!(cache.get(&key("0"), t0).is_none(), "the oldest went first");
    }
}
