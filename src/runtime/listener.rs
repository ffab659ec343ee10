//! A listener: one UDP socket for one `coap://` or `coaps://` URI, every peer demultiplexed
//! onto its own session task. A DTLS handshake runs in the peer's own task under a deadline,
//! so a silent or failing handshake never delays anyone else.
//!
//! No peer gets a task or a session before it is worth one: on `coaps://` the mux answers
//! cookieless ClientHellos statelessly ([`DtlsServer::gate`]); on `coap://` with
//! [`Security::NoSecKnown`] only configured servers' addresses get a session and any other
//! source is answered 4.01 by [`unauthorized_reply`] without state.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use coap_lite::{MessageClass, MessageType, Packet, ResponseType};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::coap::{self, TransportTuning};
use crate::config::{EndpointUri, Scheme};
use crate::runtime::{Handler, Shutdown, serve_session, stopped};
use crate::transport::dtls::DtlsServer;
use crate::transport::mux::{DatagramLimits, DatagramMux, Gate, MuxConfig, Pipe, Verdict};
use crate::transport::tcp::admission::{LogBudget, Refusal};
use crate::transport::{DatagramSession, Identity, PeerInfo, TransportError, TransportKind};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {uri}: {source}")]
    Bind { uri: String, source: TransportError },
    #[error("{0}: the security mode does not match the scheme")]
    Mismatch(String),
}

/// Which source IPs may hold a NoSec session (a configured server's `nosec_address`).
pub type AddressFilter = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// How a listener authenticates peers.
#[derive(Clone)]
pub enum Security {
    /// `coap://`: no channel security; every peer gets a session, known by its source
    /// address (a simulated device's port, where the gateway is the only client).
    NoSec,
    /// `coap://` for known peers: only a source IP the filter admits gets a session. Any
    /// other source is answered 4.01 Unauthorized (piggybacked on the ACK of a CON, NON for
    /// a NON) and leaves nothing behind.
    NoSecKnown(AddressFilter),
    /// `coaps://`: DTLS 1.2.
    Dtls(Arc<DtlsServer>),
}

/// A bound listener, ready to [`run`](Listener::run).
pub struct Listener {
    uri: EndpointUri,
    mux: Arc<DatagramMux>,
    accepted: mpsc::Receiver<Pipe>,
    security: Security,
}

impl Listener {
    /// Binds the socket now, so the caller knows the address (port 0 picks one), with the
    /// default [`DatagramLimits`].
    pub async fn bind(uri: EndpointUri, security: Security) -> Result<Listener, ListenError> {
        Listener::bind_with_limits(uri, security, DatagramLimits::default()).await
    }

    /// Like [`bind`](Self::bind), with these caps on sessions and handshakes in progress.
    pub async fn bind_with_limits(
        uri: EndpointUri,
        security: Security,
        limits: DatagramLimits,
    ) -> Result<Listener, ListenError> {
        if matches!(
            (uri.scheme, &security),
            (Scheme::Coaps, Security::NoSec | Security::NoSecKnown(_))
                | (Scheme::Coap, Security::Dtls(_))
        ) {
            return Err(ListenError::Mismatch(uri.to_string()));
        }
        let (mux, accepted) = DatagramMux::bind_with(uri.addr, mux_config(&security, limits))
            .await
            .map_err(|source| ListenError::Bind {
                uri: uri.to_string(),
                source,
            })?;
        let accepted = accepted.ok_or_else(|| ListenError::Mismatch(uri.to_string()))?;
        Ok(Listener {
            uri,
            mux,
            accepted,
            security,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.mux.local_addr()
    }

    /// The listener's mux, to watch its counters (sessions, pending handshakes, stateless
    /// replies, refusals).
    pub fn mux(&self) -> Arc<DatagramMux> {
        self.mux.clone()
    }

    /// The bound URI (with the actual port).
    pub fn uri(&self) -> EndpointUri {
        EndpointUri {
            scheme: self.uri.scheme,
            addr: self.local_addr(),
        }
    }

    /// Accepts peers until `shutdown`, then waits for every peer's session to drain (each
    /// finishes the requests it is executing and answers them).
    pub async fn run<H: Handler>(
        mut self,
        handler: Arc<H>,
        tuning: TransportTuning,
        mut shutdown: Shutdown,
    ) {
        let uri = self.uri();
        tracing::info!(%uri, "listening");
        let mut peers = JoinSet::new();
        // Tokio's clock (virtual under a paused test runtime), as the sleep below uses.
        let failures = Arc::new(Mutex::new(LogBudget::new(
            tokio::time::Instant::now().into_std(),
        )));
        loop {
            let summary_due = tokio::time::Instant::from_std(lock(&failures).next_summary());
            tokio::select! {
                pipe = self.accepted.recv() => {
                    let Some(pipe) = pipe else { break };
                    let addr = pipe.peer();
                    let span = tracing::info_span!("peer", %addr, via = uri.scheme.as_str());
                    let security = self.security.clone();
                    let handler = handler.clone();
                    let tuning = tuning.clone();
                    let mut shutdown = shutdown.clone();
                    let failures = failures.clone();
                    peers.spawn(async move {
                        match security {
                            Security::NoSec | Security::NoSecKnown(_) => {
                                let info = PeerInfo { addr, kind: TransportKind::Udp, identity: Identity::Address(addr.ip()) };
                                serve_session(pipe, info, handler, tuning, shutdown).await;
                            }
                            Security::Dtls(server) => {
                                let accepted = tokio::select! {
                                    accepted = server.accept(pipe) => accepted,
                                    _ = stopped(&mut shutdown) => return,
                                };
                                match accepted {
                                    Ok(mut session) => {
                                        let info = session.peer_info();
                                        if !handler.admits(&info) {
                                            if lock(&failures).note(Refusal::Handshake) {
                                                tracing::warn!(identity = %info.identity, "DTLS peer is no configured peer: closed");
                                            }
                                            let _ = session.close().await;
                                            return;
                                        }
                                        tracing::debug!(identity = %info.identity, "DTLS session up");
                                        serve_session(session, info, handler, tuning, shutdown).await;
                                    }
                                    Err(e) => {
                                        if note_failed_handshake(&failures, &e) {
                                            tracing::warn!("DTLS handshake failed: {e}");
                                        }
                                    }
                                }
                            }
                        }
                    }.instrument(span));
                }
                _ = tokio::time::sleep_until(summary_due) => {
                    if let Some(summary) = lock(&failures).summary(tokio::time::Instant::now().into_std()) {
                        tracing::warn!(%uri, "failed DTLS handshakes {summary}");
                    }
                }
                // Reap finished peers so the set does not grow with every peer ever seen.
                Some(_) = peers.join_next(), if !peers.is_empty() => {}
                _ = stopped(&mut shutdown) => break,
            }
        }
        while peers.join_next().await.is_some() {}
        self.mux.shutdown();
    }
}

fn lock(budget: &Mutex<LogBudget>) -> std::sync::MutexGuard<'_, LogBudget> {
    budget
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Counts a failed DTLS handshake; true if it may be logged on its own line. Any host that
/// passes the cookie exchange can fail handshakes as fast as it can send (a wrong PSK
/// identity fails in one round trip), so only a few lines per period are written and the
/// rest go into the periodic summary.
fn note_failed_handshake(budget: &Mutex<LogBudget>, error: &TransportError) -> bool {
    let kind = match error {
        TransportError::HandshakeTimeout { .. } => Refusal::Deadline,
        _ => Refusal::Handshake,
    };
    lock(budget).note(kind)
}

/// The mux settings for `security`: who gets state, and who is answered without it.
fn mux_config(security: &Security, limits: DatagramLimits) -> MuxConfig {
    let base = MuxConfig {
        accept: true,
        ..MuxConfig::default()
    }
    .with_limits(limits);
    // NoSec peers cost no handshake: a new port of a full IP replaces its quietest one.
    let nosec = MuxConfig {
        evict_per_ip: true,
        ..base.clone()
    };
    match security {
        Security::NoSec => nosec,
        Security::NoSecKnown(allow) => {
            let allow = allow.clone();
            MuxConfig {
                gate: Some(Gate::new(move |_now, from, datagram| {
                    if allow(from.ip()) {
                        Verdict::Admit
                    } else {
                        unauthorized_reply(datagram).map_or(Verdict::Drop, Verdict::Reply)
                    }
                })),
                ..nosec
            }
        }
        Security::Dtls(server) => MuxConfig {
            gate: Some(server.gate()),
            handshakes: true,
            ..base
        },
    }
}

/// The stateless answer to a datagram from a NoSec source that is not a configured server: a
/// request gets 4.01 Unauthorized with its token (an ACK with its Message ID for a CON, a NON
/// otherwise), a CoAP ping (Empty CON) gets a Reset. Anything else, malformed bytes
/// included, gets nothing. Sans-IO.
pub fn unauthorized_reply(datagram: &[u8]) -> Option<Vec<u8>> {
    let request = coap::decode(datagram).ok()?;
    let kind = request.header.get_type();
    match request.header.code {
        MessageClass::Empty if kind == MessageType::Confirmable => {
            let mut reset = Packet::new();
            reset.header.set_type(MessageType::Reset);
            reset.header.message_id = request.header.message_id;
            coap::encode(&reset).ok()
        }
        MessageClass::Request(_)
            if kind != MessageType::Acknowledgement && kind != MessageType::Reset =>
        {
            let mut answer = coap::response_to(&request, ResponseType::Unauthorized);
            // A NON answer needs a Message ID of its own; the request's is as good as any
            // for a source we keep no state for.
            answer.header.message_id = request.header.message_id;
            coap::encode(&answer).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: MessageType, mid: u16, token: &[u8]) -> Vec<u8> {
        let mut p = Packet::new();
        p.header.set_type(kind);
        p.header.code = MessageClass::Request(coap_lite::RequestType::Get);
        p.header.message_id = mid;
        p.set_token(token.to_vec());
        coap::set_uri(&mut p, "/GwConfig");
        coap::encode(&p).unwrap()
    }

    #[test]
    fn a_flood_of_failed_handshakes_logs_a_few_lines_not_one_each() {
        use crate::transport::tcp::admission::DETAILED_PER_PERIOD;
        let budget = Mutex::new(LogBudget::new(std::time::Instant::now()));
        let peer: SocketAddr = "127.0.0.1:5684".parse().unwrap();
        let timeout = TransportError::HandshakeTimeout {
            peer,
            after: std::time::Duration::from_secs(10),
            peer_answered: true,
        };
        let rejected = TransportError::CookieRejected { peer };
        let logged = (0..10_000)
            .filter(|i| {
                note_failed_handshake(&budget, if i % 2 == 0 { &timeout } else { &rejected })
            })
            .count();
        assert_eq!(logged, DETAILED_PER_PERIOD as usize);
        let summary = lock(&budget)
            .summary(std::time::Instant::now() + crate::transport::tcp::admission::SUMMARY_PERIOD)
            .expect("one summary for the period");
        assert_eq!(
            summary.counts,
            vec![(Refusal::Deadline, 5_000), (Refusal::Handshake, 5_000)]
        );
    }

    #[test]
    fn con_request_gets_a_piggybacked_4_01() {
        let reply = unauthorized_reply(&request(MessageType::Confirmable, 0x1234, b"tok")).unwrap();
        let p = coap::decode(&reply).unwrap();
        assert_eq!(p.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(p.header.message_id, 0x1234);
        assert_eq!(p.get_token(), b"tok");
        assert_eq!(
            p.header.code,
            MessageClass::Response(ResponseType::Unauthorized)
        );
    }

    #[test]
    fn non_request_gets_a_non_4_01() {
        let reply = unauthorized_reply(&request(MessageType::NonConfirmable, 7, b"t")).unwrap();
        let p = coap::decode(&reply).unwrap();
        assert_eq!(p.header.get_type(), MessageType::NonConfirmable);
        assert_eq!(p.get_token(), b"t");
        assert_eq!(
            p.header.code,
            MessageClass::Response(ResponseType::Unauthorized)
        );
    }

    #[test]
    fn ping_gets_reset_and_junk_nothing() {
        let reply = unauthorized_reply(&[0x40, 0, 0x12, 0x34]).unwrap();
        let p = coap::decode(&reply).unwrap();
        assert_eq!(p.header.get_type(), MessageType::Reset);
        assert_eq!(p.header.message_id, 0x1234);
        assert_eq!(unauthorized_reply(&[0x60, 0, 0, 1]), None, "an ACK");
        assert_eq!(unauthorized_reply(&[1]), None);
        assert_eq!(unauthorized_reply(&[0xFF; 20]), None);
        let mut response = request(MessageType::Confirmable, 1, b"");
        response[1] = 0x45; // 2.05
        assert_eq!(unauthorized_reply(&response), None, "a response");
    }
}
