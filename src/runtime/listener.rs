//! A listener: one UDP socket for one `coap://` or `coaps://` URI, every peer demultiplexed
//! onto its own session task. A DTLS handshake runs in the peer's own task under a deadline,
//! so a silent or failing handshake never delays anyone else.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::coap::TransportTuning;
use crate::config::{EndpointUri, Scheme};
use crate::runtime::{Handler, Shutdown, serve_session, stopped};
use crate::transport::dtls::DtlsServer;
use crate::transport::mux::{DatagramMux, Pipe};
use crate::transport::{DatagramSession, Identity, PeerInfo, TransportError, TransportKind};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {uri}: {source}")]
    Bind { uri: String, source: TransportError },
    #[error("{0}: the security mode does not match the scheme")]
    Mismatch(String),
}

/// How a listener authenticates peers.
#[derive(Clone)]
pub enum Security {
    /// `coap://`: no channel security; the peer is known by its source address.
    NoSec,
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
    /// Binds the socket now, so the caller knows the address (port 0 picks one).
    pub async fn bind(uri: EndpointUri, security: Security) -> Result<Listener, ListenError> {
        if matches!(
            (uri.scheme, &security),
            (Scheme::Coaps, Security::NoSec) | (Scheme::Coap, Security::Dtls(_))
        ) {
            return Err(ListenError::Mismatch(uri.to_string()));
        }
        let (mux, accepted) =
            DatagramMux::bind(uri.addr, true)
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
        loop {
            tokio::select! {
                pipe = self.accepted.recv() => {
                    let Some(pipe) = pipe else { break };
                    let addr = pipe.peer();
                    let span = tracing::info_span!("peer", %addr, via = uri.scheme.as_str());
                    let security = self.security.clone();
                    let handler = handler.clone();
                    let tuning = tuning.clone();
                    let mut shutdown = shutdown.clone();
                    peers.spawn(async move {
                        match security {
                            Security::NoSec => {
                                let info = PeerInfo { addr, kind: TransportKind::Udp, identity: Identity::Address(addr.ip()) };
                                serve_session(pipe, info, handler, tuning, shutdown).await;
                            }
                            Security::Dtls(server) => {
                                let accepted = tokio::select! {
                                    accepted = server.accept(pipe) => accepted,
                                    _ = stopped(&mut shutdown) => return,
                                };
                                match accepted {
                                    Ok(session) => {
                                        let info = session.peer_info();
                                        tracing::debug!(identity = %info.identity, "DTLS session up");
                                        serve_session(session, info, handler, tuning, shutdown).await;
                                    }
                                    Err(e) => tracing::warn!("DTLS handshake failed: {e}"),
                                }
                            }
                        }
                    }.instrument(span));
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
