//! The gateway service: executes one request from an identified server. GETs are answered
//! from the store; writes go gate → validate → verify on the devices → commit → answer
//! (DESIGN.md §3, §5). Protocol details stay in `front`, decisions in `verifier`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use coap_lite::{CoapOption, Packet, ResponseType};
use tokio::sync::Semaphore;

use crate::acl::DmCommand;
use crate::acl::lwm2m::LwPath;
use crate::audit::{AuditLog, AuditQuery, PrivilegeChange, Verdict};
use crate::config::{Config, Profile, ServerConfig};
use crate::front::{
    Command, Format, FrontError, Precondition, Write, parse_request, refusal, render_value,
};
use crate::gateway::registrations::{RegistrationView, Registrations};
use crate::gateway::reports::{REPORTS_PATH, ReportStore, new_report_id};
use crate::lwm2m::content_format;
use crate::mo::privilege::rfc3339;
use crate::mo::{Change, ChangeKind, Inventory, Privilege, PrivilegeName, Value};
use crate::registry::Account as RegistryAccount;
use crate::south::fanout::{self, AclReader};
use crate::store::dedup::unix_ms;
use crate::store::{
    Commit, CommitExtras, DedupRecord, Fingerprint, PrivilegeStore, Recorded, StoreError,
};
use crate::verifier::{Decision, Failure, Member, Operation, Principal, RejectKind, Verification};

use super::quota::{Quota, QuotaError};
use crate::front::page::{ListQuery, Listing};

/// The payload one message carries on UDP/DTLS without Block2 (SZX 6); what an answer may
/// use when the transport does not say otherwise.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024;

/// An answer before it becomes a CoAP response.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub code: ResponseType,
    pub content_format: Option<u16>,
    pub payload: Vec<u8>,
    pub location_path: Vec<String>,
}

impl Answer {
    fn document(code: ResponseType, value: &Value, format: Format) -> Answer {
        let (cf, payload) = render_value(value, format);
        Answer {
            code,
            content_format: Some(cf),
            payload,
            location_path: Vec::new(),
        }
    }

    fn text(code: ResponseType, text: String) -> Answer {
        Answer {
            code,
            content_format: Some(content_format::TEXT),
            payload: text.into_bytes(),
            location_path: Vec::new(),
        }
    }

    fn error(e: &FrontError) -> Answer {
        // Diagnostic payload: no Content-Format (RFC 7252 §5.5.2).
        Answer {
            code: e.code(),
            content_format: None,
            payload: e.to_string().into_bytes(),
            location_path: Vec::new(),
        }
    }

    /// The answer as a dedup record made at `now`.
    fn record(&self, now: SystemTime) -> Recorded {
        Recorded {
            at_ms: unix_ms(now),
            code: u8::from(coap_lite::MessageClass::Response(self.code)),
            content_format: self.content_format,
            location_path: self.location_path.clone(),
            payload: self.payload.clone(),
        }
    }

    /// The answer a dedup record holds; `None` if its code is not a response code.
    fn recorded(r: Recorded) -> Option<Answer> {
        match coap_lite::MessageClass::from(r.code) {
            coap_lite::MessageClass::Response(code) => Some(Answer {
                code,
                content_format: r.content_format,
                payload: r.payload,
                location_path: r.location_path,
            }),
            _ => None,
        }
    }

    /// Writes code, options and payload into a response packet (type, MID and token are the
    /// message layer's).
    pub fn into_packet(self) -> Packet {
        let mut p = Packet::new();
        p.header.code = coap_lite::MessageClass::Response(self.code);
        for seg in self.location_path {
            p.add_option(CoapOption::LocationPath, seg.into_bytes());
        }
        if let Some(cf) = self.content_format {
            crate::coap::set_content_format(&mut p, cf);
        }
        p.payload = self.payload;
        p
    }
}

/// Per-node write locks: concurrent writes to the same privilege are serialised, writes to
/// different ones are not. Entries are dropped when nobody holds them.
#[derive(Default)]
struct NodeLocks {
    map: Mutex<HashMap<PrivilegeName, Arc<tokio::sync::Mutex<()>>>>,
}

impl NodeLocks {
    async fn lock(&self, name: &PrivilegeName) -> NodeGuard<'_> {
        let lock = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(name.clone()).or_default().clone()
        };
        let guard = lock.clone().lock_owned().await;
        NodeGuard {
            locks: self,
            name: name.clone(),
            _guard: guard,
            lock,
        }
    }
}

struct NodeGuard<'a> {
    locks: &'a NodeLocks,
    name: PrivilegeName,
    _guard: tokio::sync::OwnedMutexGuard<()>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for NodeGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.locks.map.lock().unwrap_or_else(|p| p.into_inner());
        // Ours, the map's and the guard's: nobody else waits for this node.
        if Arc::strong_count(&self.lock) <= 3 {
            map.remove(&self.name);
        }
    }
}

/// Names handed to POSTs in progress: a generated name is reserved before its node lock is
/// taken, so a concurrent PUT on the same name is serialised with the POST (one of them runs
/// first, as in some serial order) instead of racing it to the commit.
#[derive(Default)]
struct Reservations {
    names: Arc<Mutex<HashSet<PrivilegeName>>>,
}

/// Releases a reserved name when the POST is over (committed or not).
struct Reservation {
    names: Arc<Mutex<HashSet<PrivilegeName>>>,
    name: PrivilegeName,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names.remove(&self.name);
    }
}

/// How often a POST picks a new name because a PUT took the reserved one first.
const MAX_NAME_ATTEMPTS: usize = 8;

/// How long a committed write's answer is replayed to a retransmission, restarts included
/// (RFC 7252 EXCHANGE_LIFETIME with the default parameters: 247 s).
/// The first few failed devices and why, for the one info line of a rejected write: a
/// 10 000-member group that fails everywhere still logs a short line (the refusal's payload
/// and the audit trail carry the full list).
struct FirstIds<'a>(&'a [Failure]);

impl FirstIds<'_> {
    const SHOWN: usize = 8;
}

impl std::fmt::Display for FirstIds<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, failed) in self.0.iter().take(Self::SHOWN).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} {}", failed.device_id, failed.reason)?;
        }
        if let Some(more) = self.0.len().checked_sub(Self::SHOWN).filter(|&n| n > 0) {
            write!(f, " (+{more} more)")?;
        }
        Ok(())
    }
}

fn dedup_lifetime() -> Duration {
    crate::coap::TransportTuning::unreliable().exchange_lifetime()
}

pub struct Service<R: AclReader> {
    config: Arc<Config>,
    inventory: Inventory,
    store: Arc<dyn PrivilegeStore>,
    reader: Arc<R>,
    in_flight: Arc<Semaphore>,
    locks: NodeLocks,
    quota: Quota,
    /// Complete failure lists of refused writes whose answer was truncated.
    reports: Mutex<ReportStore>,
    reservations: Reservations,
    /// The registrations of devices that register, and the accounts they may be on.
    registrations: Option<(Arc<Registrations>, Vec<RegistryAccount>)>,
    /// Where write decisions are recorded (disabled unless [`Service::with_audit`]).
    audit: AuditLog,
    /// The `/.well-known/core` body: the configuration does not change while running.
    well_known_core: Vec<u8>,
}

impl<R: AclReader> Service<R> {
    /// Records every privilege write decision in `audit` (a commit's record in the commit's
    /// own transaction).
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = audit;
        self
    }

    /// The audit log write decisions go to.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Shows each registering device's registrations in `/GwConfig/Devices`.
    pub fn with_registrations(mut self, registrations: Arc<Registrations>) -> Self {
        let mut accounts = vec![registrations.own_account().clone()];
        for listen in &self.config.lwm2m.listen {
            let account = RegistryAccount::new(listen.account.name());
            if !accounts.contains(&account) {
                accounts.push(account);
            }
        }
        self.registrations = Some((registrations, accounts));
        self
    }

    fn device_value(&self, d: &crate::config::DeviceConfig) -> Value {
        let mut fields = vec![
            ("DeviceID".to_owned(), Value::text(&d.id)),
            ("URI".to_owned(), Value::text(d.reach.to_string())),
            ("Profile".to_owned(), Value::text(d.profile.to_string())),
        ];
        if let (crate::config::Reach::Registers(r), Some((registrations, accounts))) =
            (&d.reach, &self.registrations)
        {
            fields.push(("Endpoint".to_owned(), Value::text(&r.endpoint)));
            let views = registrations.views(&r.endpoint, accounts);
            fields.push((
                "Registrations".to_owned(),
                Value::Array(views.iter().map(registration_value).collect()),
            ));
        }
        Value::Map(fields)
    }

    pub fn new(config: Arc<Config>, store: Arc<dyn PrivilegeStore>, reader: Arc<R>) -> Self {
        let inventory = Inventory::from_config(&config);
        let in_flight = Arc::new(Semaphore::new(config.gateway.max_in_flight));
        let quota = Quota::new(&config.limits, initial_counts(store.as_ref()));
        let reports = Mutex::new(ReportStore::new(config.limits.report_limits()));
        let well_known_core = format!(
            "{},{}",
            crate::front::well_known_core(),
            crate::proxy::gateway_object::well_known_core(
                config.devices.iter().map(|d| d.prefix.as_str())
            )
        )
        .into_bytes();
        Service {
            config,
            inventory,
            store,
            reader,
            in_flight,
            locks: NodeLocks::default(),
            quota,
            reports,
            reservations: Reservations::default(),
            registrations: None,
            audit: AuditLog::disabled(),
            well_known_core,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Answers one request from `server`, for a message of [`DEFAULT_MAX_PAYLOAD`] bytes.
    pub async fn handle(&self, server: &Arc<ServerConfig>, request: &Packet) -> Answer {
        self.handle_exchange(server, request, None, DEFAULT_MAX_PAYLOAD)
            .await
    }

    /// Answers one request from `server`; `fingerprint` (datagram transports only, where a
    /// client retransmits with the same MID) is recorded with a committed write, and a write
    /// whose fingerprint is on record gets the recorded answer instead of running again.
    /// `max_payload` is what one message to this client carries: an error answer (which is
    /// never sliced into blocks) stays within it.
    pub async fn handle_exchange(
        &self,
        server: &Arc<ServerConfig>,
        request: &Packet,
        fingerprint: Option<Fingerprint>,
        max_payload: usize,
    ) -> Answer {
        match self
            .execute(server, request, fingerprint, max_payload)
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                tracing::info!(server = %server.id, code = %code_str(e.code()), "refused: {e}");
                Answer::error(&e)
            }
        }
    }

    async fn execute(
        &self,
        server: &Arc<ServerConfig>,
        request: &Packet,
        fingerprint: Option<Fingerprint>,
        max_payload: usize,
    ) -> Result<Answer, FrontError> {
        let command = parse_request(request)?;
        let accept = crate::coap::accept(request);
        let format =
            || Format::from_accept(accept).ok_or(FrontError::NotAcceptable(accept.unwrap_or(0)));
        match command {
            Command::WellKnownCore => {
                if !matches!(accept, None | Some(content_format::LINK_FORMAT)) {
                    return Err(FrontError::NotAcceptable(accept.unwrap_or(0)));
                }
                Ok(Answer {
                    code: ResponseType::Content,
                    content_format: Some(content_format::LINK_FORMAT),
                    payload: self.well_known_core.clone(),
                    location_path: Vec::new(),
                })
            }
            Command::ListPrivileges => {
                let format = format()?;
                self.gate(server, DmCommand::Get)?;
                let value = self.list_privileges(request)?;
                Ok(Answer::document(ResponseType::Content, &value, format))
            }
            Command::GetPrivilege(name) => {
                let format = format()?;
                self.gate(server, DmCommand::Get)?;
                let entry = self.load(&name).ok_or_else(|| not_found(&name))?;
                Ok(Answer::document(
                    ResponseType::Content,
                    &entry.to_value(),
                    format,
                ))
            }
            Command::GetLeaf(name, leaf) => {
                if !matches!(accept, None | Some(content_format::TEXT)) {
                    return Err(FrontError::NotAcceptable(accept.unwrap_or(0)));
                }
                self.gate(server, DmCommand::Get)?;
                let entry = self.load(&name).ok_or_else(|| not_found(&name))?;
                let value = entry.leaf(&leaf).ok_or_else(|| {
                    FrontError::NotFound(format!("/GwConfig/Privileges/{name}/{leaf}"))
                })?;
                Ok(Answer::text(ResponseType::Content, value))
            }
            Command::ListGroups => {
                let format = format()?;
                let value = Value::Map(
                    self.inventory
                        .groups()
                        .map(|(g, members)| (g.to_owned(), member_ids(members)))
                        .collect(),
                );
                Ok(Answer::document(ResponseType::Content, &value, format))
            }
            Command::GetGroup(id) => {
                let format = format()?;
                let members = self
                    .inventory
                    .group(&id)
                    .ok_or_else(|| FrontError::NotFound(format!("group '{id}'")))?;
                let value = Value::map([
                    ("GroupID", Value::text(id)),
                    ("Members", member_ids(members)),
                ]);
                Ok(Answer::document(ResponseType::Content, &value, format))
            }
            Command::ListDevices => {
                let format = format()?;
                let value = Value::Array(
                    self.inventory
                        .devices()
                        .map(|d| self.device_value(d))
                        .collect(),
                );
                Ok(Answer::document(ResponseType::Content, &value, format))
            }
            Command::GetDevice(id) => {
                let format = format()?;
                let device = self
                    .inventory
                    .device(&id)
                    .ok_or_else(|| FrontError::NotFound(format!("device '{id}'")))?;
                Ok(Answer::document(
                    ResponseType::Content,
                    &self.device_value(device),
                    format,
                ))
            }
            Command::GetReport(id) => {
                let format = format()?;
                let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
                let body = reports
                    .get(Instant::now(), &id, &server.id)
                    .ok_or_else(|| FrontError::NotFound(format!("{REPORTS_PATH}/{id}")))?;
                Ok(Answer::document(ResponseType::Content, body, format))
            }
            Command::GetAudit => {
                let format = format()?;
                self.gate(server, DmCommand::Get)?;
                let query = crate::coap::uri_query(request)
                    .map_err(|e| FrontError::BadRequest(e.to_string()))?;
                let query = AuditQuery::parse(&query)?;
                let (records, more) = self
                    .blocking_store(move |s| s.audit_page(query.since, query.limit))
                    .await?;
                Ok(Answer::document(
                    ResponseType::Content,
                    &query.document(&records, more),
                    format,
                ))
            }
            Command::Write(write) => {
                let format = format()?;
                self.write(server, write, format, fingerprint, max_payload)
                    .await
            }
        }
    }

    /// The listing, paged by `?after=&limit=` (`front::page`), one page at a time from the
    /// store's in-memory view.
    fn list_privileges(&self, request: &Packet) -> Result<Value, FrontError> {
        let query =
            crate::coap::uri_query(request).map_err(|e| FrontError::BadRequest(e.to_string()))?;
        let limits = &self.config.limits;
        let plan = Listing::decide(
            ListQuery::parse(&query)?,
            limits.list_default_limit,
            limits.list_max_limit,
        );
        let (entries, more) = self.store.view().page(plan.after.as_ref(), plan.limit);
        let entries = entries
            .into_iter()
            .map(|(n, p)| (n, p.to_value()))
            .collect();
        Ok(plan.document(entries, more))
    }

    /// The gateway gate: the Privileges node's own ACL, checked before anything else.
    fn gate(&self, server: &ServerConfig, command: DmCommand) -> Result<(), FrontError> {
        self.gate_any(server, &[command])
    }

    /// The gate for a request that may turn out to be any of `commands` (a plain PUT is an
    /// Add or a Replace): passes if the server holds one of them. Checked before the store
    /// is read, so a server without rights learns nothing about which names exist.
    fn gate_any(&self, server: &ServerConfig, commands: &[DmCommand]) -> Result<(), FrontError> {
        let acl = &self.config.gateway.privileges_acl;
        if commands.iter().any(|c| acl.grants(*c, &server.id)) {
            return Ok(());
        }
        let names: Vec<&str> = commands.iter().map(|c| c.as_str()).collect();
        Err(FrontError::Forbidden(format!(
            "{} may not {} on /GwConfig/Privileges",
            server.id,
            names.join(" or ")
        )))
    }

    async fn blocking_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn PrivilegeStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, FrontError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| FrontError::Internal(e.to_string()))?
            .map_err(|e| match e {
                StoreError::Exists(n) => {
                    FrontError::PreconditionFailed(format!("privilege '{n}' exists already"))
                }
                StoreError::Missing(n) => not_found(&n),
                other => FrontError::Internal(other.to_string()),
            })
    }

    /// The recorded answer of a committed write with this fingerprint, if still fresh.
    async fn recall(&self, fingerprint: Option<Fingerprint>) -> Result<Option<Answer>, FrontError> {
        let Some(fp) = fingerprint else {
            return Ok(None);
        };
        let recorded = self
            .blocking_store(move |s| s.recall(&fp, SystemTime::now(), dedup_lifetime()))
            .await?;
        Ok(recorded.and_then(Answer::recorded))
    }

    /// The committed entry `name`, from the store's in-memory view (no transaction).
    fn load(&self, name: &PrivilegeName) -> Option<Arc<Privilege>> {
        self.store.view().get(name)
    }

    /// Checks an entry before any device is asked: known servers in the ACL, a resolvable
    /// target, a URI every target device's profile can read.
    fn validate(&self, entry: &Privilege) -> Result<(), FrontError> {
        for name in entry.acl.named_servers() {
            if self.config.server_by_id(name).is_none() {
                return Err(FrontError::BadRequest(format!(
                    "ACL names '{name}', which is not a server this gateway knows"
                )));
            }
        }
        let devices = self
            .inventory
            .resolve(entry.target_type, &entry.target_id)
            .map_err(|e| FrontError::NotFound(e.to_string()))?;
        if devices
            .iter()
            .any(|d| matches!(d.profile, Profile::Lwm2m(_)))
        {
            LwPath::parse(&entry.uri).map_err(|e| {
                FrontError::BadRequest(format!("URI '{}' is not an LwM2M path: {e}", entry.uri))
            })?;
        }
        Ok(())
    }

    /// Reserves the next generated name and takes its node lock; tries another name if a
    /// PUT created the reserved one before the lock was ours.
    async fn reserve_name(
        &self,
    ) -> Result<(PrivilegeName, Reservation, NodeGuard<'_>), FrontError> {
        for _ in 0..MAX_NAME_ATTEMPTS {
            let names = self.reservations.names.clone();
            let name = self
                .blocking_store(move |s| {
                    let mut reserved = names.lock().unwrap_or_else(|p| p.into_inner());
                    let name = s.next_name(&|n| reserved.contains(n))?;
                    reserved.insert(name.clone());
                    Ok(name)
                })
                .await?;
            let reservation = Reservation {
                names: self.reservations.names.clone(),
                name: name.clone(),
            };
            let guard = self.locks.lock(&name).await;
            if self.load(&name).is_none() {
                return Ok((name, reservation, guard));
            }
        }
        Err(FrontError::Unavailable(
            "no free privilege name: concurrent writes took every one tried".into(),
        ))
    }

    /// Runs a verified write: gate, validate, verify on every target device, commit, answer.
    /// A refusal's answer fits `max_payload` (truncated, with a report, if need be). The
    /// decision is audited: a commit in its own transaction, a refusal by the gate, a cap or
    /// the devices in a small write of its own before the answer.
    pub async fn write(
        &self,
        server: &Arc<ServerConfig>,
        write: Write,
        format: Format,
        fingerprint: Option<Fingerprint>,
        max_payload: usize,
    ) -> Result<Answer, FrontError> {
        let mut note = WriteNote::of(&write);
        let result = self
            .write_verified(server, write, format, fingerprint, max_payload, &mut note)
            .await;
        let refused = match &result {
            Ok(answer) => note
                .devices_refused
                .then(|| (answer.code, note.reason.clone())),
            Err(e @ (FrontError::Forbidden(_) | FrontError::LimitReached(_))) => {
                Some((e.code(), Some(e.to_string())))
            }
            Err(_) => None,
        };
        if let Some((code, reason)) = refused {
            let change = note.change(&server.id, Verdict::Refused, code, 0, reason);
            if let Some(batch) = self.audit.change_batch(change) {
                if let Err(e) = self.blocking_store(move |s| s.append_audit(batch)).await {
                    tracing::error!(server = %server.id, "refusal not audited: {e}");
                }
            }
        }
        result
    }

    async fn write_verified(
        &self,
        server: &Arc<ServerConfig>,
        write: Write,
        format: Format,
        fingerprint: Option<Fingerprint>,
        max_payload: usize,
        note: &mut WriteNote,
    ) -> Result<Answer, FrontError> {
        // Gate first: existence (4.04) and preconditions (4.12) only for a server with rights.
        self.gate_any(server, write_commands(&write))?;
        if let Some(answer) = self.recall(fingerprint).await? {
            tracing::info!(server = %server.id, "retransmission of a committed write: recorded answer");
            return Ok(answer);
        }
        // Held until the commit: a verification and its commit are one unit per node. A POST
        // reserves its generated name first and then locks that node like a PUT would.
        let (name, _reservation, _guard) = match &write {
            Write::Post { .. } => {
                let (name, reservation, guard) = self.reserve_name().await?;
                (name, Some(reservation), guard)
            }
            Write::Put { name, .. } | Write::PutLeaf { name, .. } | Write::Delete { name } => {
                (name.clone(), None, self.locks.lock(name).await)
            }
        };
        let old = match &write {
            Write::Post { .. } => None,
            _ => self.load(&name).map(Arc::unwrap_or_clone),
        };
        let change = match (write, old) {
            (Write::Post { entry }, _) => Change {
                kind: ChangeKind::Add,
                name: Some(name),
                old: None,
                new: Some(entry),
            },
            (
                Write::Put {
                    precondition: Precondition::IfMatch,
                    name,
                    ..
                },
                None,
            ) => {
                return Err(FrontError::PreconditionFailed(format!(
                    "privilege '{name}' does not exist (If-Match)"
                )));
            }
            (
                Write::Put {
                    precondition: Precondition::IfNoneMatch,
                    name,
                    ..
                },
                Some(_),
            ) => {
                return Err(FrontError::PreconditionFailed(format!(
                    "privilege '{name}' exists (If-None-Match)"
                )));
            }
            (Write::Put { name, entry, .. }, None) => Change {
                kind: ChangeKind::Add,
                name: Some(name),
                old: None,
                new: Some(entry),
            },
            (Write::Put { name, entry, .. }, Some(old)) => Change {
                kind: ChangeKind::Replace,
                name: Some(name),
                old: Some(old),
                new: Some(entry),
            },
            (Write::PutLeaf { name, .. }, None) | (Write::Delete { name }, None) => {
                return Err(not_found(&name));
            }
            (Write::PutLeaf { name, leaf, value }, Some(old)) => {
                let mut new = old.clone();
                new.set_leaf(&leaf, &value).map_err(|e| match e {
                    crate::mo::PrivilegeError::ReadOnly(_) => FrontError::MethodNotAllowed(
                        format!("/GwConfig/Privileges/{name}/{leaf} (read-only)"),
                    ),
                    crate::mo::PrivilegeError::UnknownNode(_) => {
                        FrontError::NotFound(format!("/GwConfig/Privileges/{name}/{leaf}"))
                    }
                    other => FrontError::BadRequest(other.to_string()),
                })?;
                Change {
                    kind: ChangeKind::Replace,
                    name: Some(name),
                    old: Some(old),
                    new: Some(new),
                }
            }
            (Write::Delete { name }, Some(old)) => Change {
                kind: ChangeKind::Delete,
                name: Some(name),
                old: Some(old),
                new: None,
            },
        };

        note.known(&change);
        self.gate(server, change.kind.command())?;
        if let Some(new) = &change.new {
            self.validate(new)?;
        }
        // The caps, before any device traffic; the slot is given back unless committed.
        let quota_slot = self.quota.reserve(
            &server.id,
            change.kind,
            change.old.as_ref().map(|o| o.grantor.as_str()),
        )?;
        let checks = change
            .checks(&self.inventory)
            .map_err(|e| FrontError::NotFound(e.to_string()))?;
        let place = change.new.as_ref().or(change.old.as_ref());
        let (target, uri) = place
            .map(|p| {
                (
                    format!("{}:{}", p.target_type.as_str(), p.target_id),
                    p.uri.clone(),
                )
            })
            .unwrap_or_default();

        // The verifier sees the server only as the device ACLs name it, without credentials.
        let principal = Principal::new(server.id.clone(), server.ssid)
            .map_err(|e| FrontError::Internal(format!("server '{}': {e}", server.id)))?;
        let mut verification = Verification::with_uris(
            Operation::GRANT,
            principal,
            checks.into_iter().map(|check| {
                let member = Member {
                    id: check.device.id.clone(),
                    profile: check.device.profile,
                    device: check.device,
                };
                (member, check.uri)
            }),
        );
        fanout::run(
            self.reader.clone(),
            &mut verification,
            self.in_flight.clone(),
            self.config.gateway.device_timeout,
        )
        .await;
        // Fails closed: a read still without an outcome counts as unreachable.
        let decision = verification
            .conclude()
            .ok_or_else(|| FrontError::Internal("nothing to verify".into()))?;
        let answer = match decision {
            Decision::Reject { kind, failed } => {
                tracing::info!(
                    server = %server.id, %target, %uri, verdict = "rejected",
                    status = kind.status(), failed = failed.len(),
                    first_failed = %FirstIds(&failed),
                    "{:?} not committed", change.kind
                );
                note.devices_refused = true;
                note.failed = failed.len();
                note.reason = Some(format!(
                    "not verified: Status {}, {} device(s) failed",
                    kind.status(),
                    failed.len()
                ));
                self.refusal(server, kind, &failed, format, max_payload)?
            }
            Decision::Commit { verified } => {
                let stamp = |mut p: Privilege| {
                    p.grantor = server.id.clone();
                    p.verified_at = rfc3339(SystemTime::now());
                    p
                };
                let commit = match (change.kind, change.name.clone(), change.new.clone()) {
                    (ChangeKind::Add, Some(name), Some(entry)) => Commit::Add {
                        name: Some(name),
                        entry: stamp(entry),
                    },
                    (ChangeKind::Replace, Some(name), Some(entry)) => Commit::Replace {
                        name,
                        entry: stamp(entry),
                    },
                    (ChangeKind::Delete, Some(name), _) => Commit::Delete { name },
                    _ => return Err(FrontError::Internal("inconsistent change".into())),
                };
                let name = change
                    .name
                    .clone()
                    .ok_or_else(|| FrontError::Internal("unnamed change".into()))?;
                let answer = committed_answer(&commit, &name, &verified, format)?;
                let now = SystemTime::now();
                let record = fingerprint.map(|fingerprint| DedupRecord {
                    fingerprint,
                    answer: answer.record(now),
                    max_age: dedup_lifetime(),
                });
                let audit = self.audit.change_batch(note.change(
                    &server.id,
                    Verdict::Committed,
                    answer.code,
                    verified.len(),
                    None,
                ));
                let extras = CommitExtras {
                    dedup: record,
                    audit,
                };
                self.blocking_store(move |s| s.commit_with(commit, extras))
                    .await?;
                quota_slot.commit();
                tracing::info!(
                    server = %server.id, %target, %uri, verdict = "committed",
                    privilege = %name, verified = verified.len(),
                    "{:?} committed", change.kind
                );
                answer
            }
        };
        Ok(answer)
    }
}

/// What an audit record of a write says about it, filled in as the write learns more.
struct WriteNote {
    command: String,
    name: Option<String>,
    leaves: Vec<(String, String)>,
    /// The devices refused it (the answer is a refusal document, not an error).
    devices_refused: bool,
    failed: usize,
    reason: Option<String>,
}

impl WriteNote {
    /// What the request itself says (a plain PUT may still be an Add or a Replace).
    fn of(write: &Write) -> WriteNote {
        let names: Vec<&str> = write_commands(write).iter().map(|c| c.as_str()).collect();
        let (name, leaves) = match write {
            Write::Post { entry } => (None, PrivilegeChange::leaves_of(entry)),
            Write::Put { name, entry, .. } => {
                (Some(name.to_string()), PrivilegeChange::leaves_of(entry))
            }
            Write::PutLeaf { name, leaf, value } => {
                (Some(name.to_string()), vec![(leaf.clone(), value.clone())])
            }
            Write::Delete { name } => (Some(name.to_string()), Vec::new()),
        };
        WriteNote {
            command: names.join("|"),
            name,
            leaves,
            devices_refused: false,
            failed: 0,
            reason: None,
        }
    }

    /// The change is known: its command, its node and the entry it writes (or deletes).
    fn known(&mut self, change: &Change) {
        self.command = change.kind.command().as_str().to_owned();
        self.name = change.name.as_ref().map(|n| n.to_string());
        if let Some(entry) = change.new.as_ref().or(change.old.as_ref()) {
            self.leaves = PrivilegeChange::leaves_of(entry);
        }
    }

    fn change(
        &self,
        server: &str,
        verdict: Verdict,
        code: ResponseType,
        verified: usize,
        reason: Option<String>,
    ) -> PrivilegeChange {
        PrivilegeChange {
            server: server.to_owned(),
            command: self.command.clone(),
            name: self.name.clone(),
            leaves: self.leaves.clone(),
            verdict,
            code: code_str(code),
            verified,
            failed: self.failed,
            reason,
        }
    }
}

/// What the store holds per Grantor at start. A store that cannot be listed counts as
/// empty (logged): its entries cannot be served either, and the caps still bound new ones.
fn initial_counts(store: &dyn PrivilegeStore) -> HashMap<String, usize> {
    store.grantor_counts().unwrap_or_else(|e| {
        tracing::error!("cannot count stored privileges for the caps: {e}");
        HashMap::new()
    })
}

impl From<QuotaError> for FrontError {
    fn from(e: QuotaError) -> Self {
        FrontError::LimitReached(e.to_string())
    }
}

impl<R: AclReader> Service<R> {
    /// The answer to a refused write, within `max_payload`: whole if it fits, else truncated
    /// with the complete list kept as a report only `server` may read (DESIGN.md §5).
    fn refusal(
        &self,
        server: &ServerConfig,
        kind: RejectKind,
        failed: &[Failure],
        format: Format,
        max_payload: usize,
    ) -> Result<Answer, FrontError> {
        let fitted = match refusal::whole(kind, failed, format, max_payload) {
            Some(whole) => whole,
            None => {
                let id = new_report_id()
                    .map_err(|e| FrontError::Internal(format!("no report id: {e}")))?;
                let path = format!("{REPORTS_PATH}/{id}");
                let body = refusal::report_body(kind, failed);
                self.reports
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(Instant::now(), id, &server.id, body);
                let fitted = refusal::truncated(kind, failed, format, max_payload, &path);
                tracing::info!(
                    server = %server.id, report = %path, failed = failed.len(),
                    kept = fitted.kept, "failure list truncated to {max_payload} bytes"
                );
                fitted
            }
        };
        Ok(Answer {
            code: refusal::code(kind),
            content_format: Some(format.content_format()),
            payload: fitted.payload,
            location_path: Vec::new(),
        })
    }
}

/// The answer to a committed write: the entry and `Verified` (2.01 with Location-Path for an
/// Add, 2.04 for a Replace), or `Verified` alone (2.02 for a Delete).
fn committed_answer(
    commit: &Commit,
    name: &PrivilegeName,
    verified: &[String],
    format: Format,
) -> Result<Answer, FrontError> {
    let verified_value = Value::Array(verified.iter().map(Value::text).collect());
    let (code, entry) = match commit {
        Commit::Add { entry, .. } => (ResponseType::Created, entry),
        Commit::Replace { entry, .. } => (ResponseType::Changed, entry),
        Commit::Delete { .. } => {
            return Ok(Answer::document(
                ResponseType::Deleted,
                &Value::map([("Verified", verified_value)]),
                format,
            ));
        }
    };
    let Value::Map(mut fields) = entry.to_value() else {
        return Err(FrontError::Internal("entry is not a map".into()));
    };
    fields.push(("Verified".into(), verified_value));
    let mut answer = Answer::document(code, &Value::Map(fields), format);
    if code == ResponseType::Created {
        answer.location_path = vec![
            "GwConfig".to_owned(),
            "Privileges".to_owned(),
            name.as_str().to_owned(),
        ];
    }
    Ok(answer)
}

/// The DM commands a write can turn out to be, before the store says whether its node exists.
fn write_commands(write: &Write) -> &'static [DmCommand] {
    match write {
        Write::Post { .. } => &[DmCommand::Add],
        Write::Put { precondition, .. } => match precondition {
            Precondition::None => &[DmCommand::Add, DmCommand::Replace],
            Precondition::IfNoneMatch => &[DmCommand::Add],
            Precondition::IfMatch => &[DmCommand::Replace],
        },
        Write::PutLeaf { .. } => &[DmCommand::Replace],
        Write::Delete { .. } => &[DmCommand::Delete],
    }
}

fn not_found(name: &PrivilegeName) -> FrontError {
    FrontError::NotFound(format!("/GwConfig/Privileges/{name}"))
}

fn member_ids(members: &[crate::mo::DeviceRef]) -> Value {
    Value::Array(members.iter().map(|d| Value::text(&d.id)).collect())
}

fn registration_value(v: &RegistrationView) -> Value {
    let int = |n: u64| Value::Int(i64::try_from(n).unwrap_or(i64::MAX));
    Value::map([
        ("Account", Value::text(&v.account)),
        ("Location", Value::text(&v.location)),
        ("LwM2M", Value::text(&v.version)),
        ("Binding", Value::text(&v.binding)),
        ("QueueMode", Value::Bool(v.queue_mode)),
        ("Lifetime", int(v.lifetime_s)),
        ("RegisteredAt", int(v.registered_at)),
        ("UpdatedAt", int(v.updated_at)),
        ("Transport", Value::text(&v.transport)),
        ("Address", Value::text(&v.address)),
        ("Objects", Value::text(&v.objects)),
    ])
}

/// "2.05"-style rendering of a response code.
pub fn code_str(code: ResponseType) -> String {
    let byte = u8::from(coap_lite::MessageClass::Response(code));
    format!("{}.{:02}", byte >> 5, byte & 0x1f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verifier::Reason;

    fn failures(n: usize) -> Vec<Failure> {
        (0..n)
            .map(|i| Failure {
                device_id: format!("d{i}"),
                reason: Reason::Denied,
                detail: String::new(),
            })
            .collect()
    }

    #[test]
    fn a_rejected_write_logs_at_most_eight_failed_devices_and_counts_the_rest() {
        assert_eq!(FirstIds(&failures(0)).to_string(), "");
        assert_eq!(FirstIds(&failures(2)).to_string(), "d0 denied, d1 denied");
        let eight = FirstIds(&failures(8)).to_string();
        assert!(eight.ends_with("d7 denied"), "{eight}");
        let many = FirstIds(&failures(10_000)).to_string();
        assert!(many.starts_with("d0 denied, "), "{many}");
        assert!(many.ends_with("d7 denied (+9992 more)"), "{many}");
        assert!(many.len() < 200, "{many}");
    }
}
