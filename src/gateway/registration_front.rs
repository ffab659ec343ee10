//! The handler of one `[[lwm2m.listen]]` listener: the registration interface (`/rd`) for
//! the LwM2M Server account that listener stands for. It checks that the channel's proof
//! (DTLS-PSK identity, certificate, or — lab only — a NoSec endpoint name) belongs to the
//! endpoint a request names (LwM2M Core §7.1.1: the server MUST check this), applies the
//! request to the [`Registrations`], and keeps the session's [`PeerLink`] so the gateway can
//! read the device over the session it registered on.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::coap::{Packet, ResponseType};
use crate::config::{Config, DeviceProof, Reach};
use crate::gateway::registrations::{DeviceSession, Registrations};
use crate::registry::block1::{Block1Assembler, echo_block1};
use crate::registry::{Account, RegistrationRequest, answer, targets_registry};
use crate::runtime::{Handler, PeerLink};
use crate::transport::cert::CertRule;
use crate::transport::{Identity, PeerInfo, TransportKind};

/// Which endpoint names each proof may act as (built once from the config).
#[derive(Default)]
pub struct DeviceDirectory {
    by_psk: HashMap<Vec<u8>, String>,
    /// By endpoint: a Register names its endpoint, so only that endpoint's rules are tried
    /// (a linear scan of every device's rule made each Register O(fleet)).
    by_certificate: HashMap<String, Vec<CertRule>>,
    nosec: BTreeSet<String>,
}

impl DeviceDirectory {
    pub fn from_config(config: &Config) -> DeviceDirectory {
        let mut directory = DeviceDirectory::default();
        for d in &config.devices {
            let Reach::Registers(r) = &d.reach else {
                continue;
            };
            let endpoint = r.endpoint.clone();
            match &r.proof {
                DeviceProof::Psk(psk) => {
                    directory.by_psk.insert(psk.identity.clone(), endpoint);
                }
                DeviceProof::Certificate(rule) => {
                    directory
                        .by_certificate
                        .entry(endpoint)
                        .or_default()
                        .push(rule.clone());
                }
                DeviceProof::NoSec => {
                    directory.nosec.insert(endpoint);
                }
            }
        }
        directory
    }

    /// Whether a peer that proved `peer.identity` may act as `endpoint`.
    pub fn may_act_as(&self, peer: &PeerInfo, endpoint: &str) -> bool {
        match &peer.identity {
            Identity::Psk(id) => self.by_psk.get(id).is_some_and(|e| e == endpoint),
            Identity::Certificate(cert) => self
                .by_certificate
                .get(endpoint)
                .is_some_and(|rules| rules.iter().any(|rule| rule.matches(cert))),
            Identity::Address(_) => {
                peer.kind == TransportKind::Udp && self.nosec.contains(endpoint)
            }
        }
    }
}

/// The registration interface of one listener.
pub struct RegistrationFront {
    account: Account,
    registrations: Arc<Registrations>,
    directory: Arc<DeviceDirectory>,
    /// Registers and Updates sent in Block1 blocks (a long object list), per session.
    blocks: Mutex<Block1Assembler<SocketAddr>>,
    /// The largest answer body the gateway's requests to these devices accept.
    max_response_body: usize,
}

impl RegistrationFront {
    pub fn new(
        account: Account,
        registrations: Arc<Registrations>,
        directory: Arc<DeviceDirectory>,
    ) -> RegistrationFront {
        RegistrationFront {
            account,
            registrations,
            directory,
            blocks: Mutex::new(Block1Assembler::new()),
            max_response_body: crate::south::MAX_DEVICE_BODY,
        }
    }

    /// Accept answers up to `max` bytes from the devices (the proxy forwards larger bodies
    /// than an ACL read needs).
    pub fn with_max_response_body(mut self, max: usize) -> Self {
        self.max_response_body = max.max(crate::south::MAX_DEVICE_BODY);
        self
    }

    /// [`answer`](Self::answer) once the request is whole: each Block1 block but the last is
    /// answered 2.31 Continue, the last one's answer echoes its Block1 (RFC 7959 §2.3).
    fn answer_blockwise(&self, peer: &PeerInfo, link: &PeerLink, request: Packet) -> Packet {
        let now = tokio::time::Instant::now().into_std();
        let whole = self
            .blocks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .whole(now, peer.addr, request);
        match whole {
            Ok((whole, last)) => {
                let mut response = self.answer(peer, link, &whole);
                if let Some(block) = last {
                    echo_block1(&mut response, block);
                }
                response
            }
            Err(answer_now) => {
                if answer_now.header.code
                    != coap_lite::MessageClass::Response(ResponseType::Continue)
                {
                    let why = String::from_utf8_lossy(&answer_now.payload);
                    tracing::info!(addr = %peer.addr, account = %self.account, "registration refused: {why}");
                }
                answer_now
            }
        }
    }

    fn answer(&self, peer: &PeerInfo, link: &PeerLink, request: &Packet) -> Packet {
        if !targets_registry(request) {
            return answer::refused(request, ResponseType::NotFound);
        }
        let parsed = match RegistrationRequest::parse(request) {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::info!(addr = %peer.addr, account = %self.account, "registration refused: {e}");
                return answer::refused(request, e.coap_code());
            }
        };
        let session = DeviceSession {
            link: link.clone(),
            addr: peer.addr,
            transport: peer.kind,
        };
        let account = &self.account;
        match parsed {
            RegistrationRequest::Register { endpoint, params } => {
                if !self.directory.may_act_as(peer, &endpoint) {
                    tracing::info!(
                        %endpoint, %account, addr = %peer.addr, identity = %peer.identity,
                        "register refused: not a configured endpoint, or not this channel's (4.03)"
                    );
                    return answer::refused(request, ResponseType::Forbidden);
                }
                tracing::debug!(
                    %endpoint, %account, addr = %peer.addr, version = %params.version,
                    binding = %params.binding, lifetime_s = params.lifetime_s, "register"
                );
                let registered = self
                    .registrations
                    .with(|r, now| r.register(now, account, &endpoint, params, session));
                match registered {
                    Ok(registered) => answer::created(request, &registered),
                    Err(e) => {
                        tracing::warn!(%endpoint, %account, "register refused: {e}");
                        answer::refused(request, e.coap_code())
                    }
                }
            }
            RegistrationRequest::Update { location, params } => {
                let outcome = self.registrations.with(|r, now| {
                    let endpoint = self.owner_of(r.get(&location), peer)?;
                    r.update(now, account, &endpoint, &location, session, params)
                        .ok()
                });
                match outcome {
                    Some(()) => answer::changed(request),
                    None => {
                        tracing::info!(%location, %account, addr = %peer.addr, "update of an unknown registration: 4.04");
                        answer::refused(request, ResponseType::NotFound)
                    }
                }
            }
            RegistrationRequest::Deregister { location } => {
                let outcome = self.registrations.with(|r, now| {
                    let endpoint = self.owner_of(r.get(&location), peer)?;
                    r.deregister(now, account, &endpoint, &location).ok()
                });
                match outcome {
                    Some(()) => answer::deleted(request),
                    None => answer::refused(request, ResponseType::NotFound),
                }
            }
        }
    }

    /// The endpoint of a registration this peer may change; `None` (answered 4.04, which
    /// hides other devices' locations) when there is none or it is another's.
    fn owner_of(
        &self,
        registration: Option<&crate::registry::Registration>,
        peer: &PeerInfo,
    ) -> Option<String> {
        let endpoint = registration?.endpoint();
        self.directory
            .may_act_as(peer, endpoint)
            .then(|| endpoint.to_owned())
    }
}

impl Handler for RegistrationFront {
    async fn handle(&self, peer: &PeerInfo, request: Packet) -> Packet {
        // Without the session's link a registration could not be used: only the pipeline's
        // `handle_on_link` registers.
        self.answer_blockwise(peer, &PeerLink::closed(), request)
    }

    fn accepts_block1(&self) -> bool {
        true
    }

    fn max_response_body(&self) -> usize {
        self.max_response_body
    }

    async fn handle_on_link(
        &self,
        peer: &PeerInfo,
        link: &PeerLink,
        request: Packet,
        _max_payload: usize,
    ) -> Packet {
        self.answer_blockwise(peer, link, request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::cert::{CertIdentity, CertMatch};

    fn cert(cn: &str) -> PeerInfo {
        PeerInfo {
            addr: "127.0.0.1:5684".parse().unwrap(),
            kind: TransportKind::Dtls,
            identity: Identity::Certificate(std::sync::Arc::new(CertIdentity {
                subject_cn: Some(cn.to_owned()),
                san_dns: Vec::new(),
                san_uri: Vec::new(),
                spki_sha256: [0; 32],
                trust_anchor: None,
            })),
        }
    }

    #[test]
    fn a_certificate_may_act_only_as_the_endpoint_whose_rule_it_matches() {
        let mut directory = DeviceDirectory::default();
        for i in 0..10_000 {
            directory
                .by_certificate
                .entry(format!("dev{i}"))
                .or_default()
                .push(CertRule {
                    matcher: CertMatch::Cn(format!("dev{i}.example")),
                    spki_sha256: None,
                });
        }
        assert!(directory.may_act_as(&cert("dev9999.example"), "dev9999"));
        assert!(directory.may_act_as(&cert("dev0.example"), "dev0"));
        // Another device's certificate, or a name with no rule at all.
        assert!(!directory.may_act_as(&cert("dev1.example"), "dev9999"));
        assert!(!directory.may_act_as(&cert("dev1.example"), "stranger"));
        assert!(!directory.may_act_as(&cert("nobody"), "dev1"));
    }
}
