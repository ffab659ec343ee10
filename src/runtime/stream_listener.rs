//! A listener for CoAP over TCP or TLS (RFC 8323): one TCP endpoint for one `coap+tcp://`
//! or `coaps+tcp://` URI, every connection served by its own task. A TLS handshake runs in
//! the connection's own task under a deadline, so a silent or half-open peer never blocks
//! anyone else; the endpoint caps open connections.
//!
//! Before a connection gets a task, the listener's [`Gate`] admits it or closes it at once
//! (too many connections from its source). An admitted connection must authenticate (TLS
//! handshake and first CSM) within [`StreamLimits::auth_timeout`] or is closed; refusals are
//! logged within a budget and summarised every few seconds.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::{EndpointUri, Scheme};
use crate::runtime::listener::{AddressFilter, ListenError};
use crate::runtime::{Handler, Shutdown, serve_stream, stopped};
use crate::transport::tcp::admission::Refusal;
use crate::transport::tcp::{Gate, PreAuth, StreamLimits, TcpEndpoint, nosec_peer_info};
use crate::transport::tls::TlsServer;

/// How long a refused peer's close_notify may take to go out.
const CLOSE_NOTIFY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How a stream listener authenticates peers.
#[derive(Clone)]
pub enum StreamSecurity {
    /// `coap+tcp://`: no channel security; the peer is known by its source address.
    NoSec,
    /// `coap+tcp://` for known peers: a source IP the filter does not admit is served (its
    /// requests get the handler's 4.01) but never counts as authenticated, so it is closed
    /// at the pre-auth deadline (or evicted) instead of holding a slot with a CSM.
    NoSecKnown(AddressFilter),
    /// `coaps+tcp://`: TLS with mutual X.509.
    Tls(Arc<TlsServer>),
}

pub struct StreamListener {
    uri: EndpointUri,
    endpoint: TcpEndpoint,
    security: StreamSecurity,
    gate: Gate,
}

impl StreamListener {
    /// Binds with the default [`StreamLimits`].
    pub async fn bind(
        uri: EndpointUri,
        security: StreamSecurity,
    ) -> Result<StreamListener, ListenError> {
        StreamListener::bind_with_limits(uri, security, StreamLimits::default()).await
    }

    /// Binds with these caps and pre-authentication deadline.
    pub async fn bind_with_limits(
        uri: EndpointUri,
        security: StreamSecurity,
        limits: StreamLimits,
    ) -> Result<StreamListener, ListenError> {
        let matches = matches!(
            (uri.scheme, &security),
            (
                Scheme::CoapTcp,
                StreamSecurity::NoSec | StreamSecurity::NoSecKnown(_)
            ) | (Scheme::CoapsTcp, StreamSecurity::Tls(_))
        );
        if !matches {
            return Err(ListenError::Mismatch(uri.to_string()));
        }
        let endpoint = TcpEndpoint::bind_with_limit(uri.addr, limits.max_connections)
            .await
            .map_err(|source| ListenError::Bind {
                uri: uri.to_string(),
                source,
            })?;
        Ok(StreamListener {
            uri,
            endpoint,
            security,
            gate: Gate::new(&limits),
        })
    }

    /// The bound URI (with the actual port).
    pub fn uri(&self) -> EndpointUri {
        EndpointUri {
            scheme: self.uri.scheme,
            addr: self.endpoint.local_addr(),
        }
    }

    /// Accepts connections until `shutdown`, then waits for every connection to drain.
    pub async fn run<H: Handler>(self, handler: Arc<H>, mut shutdown: Shutdown) {
        let uri = self.uri();
        tracing::info!(%uri, "listening");
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.endpoint.accept() => {
                    let (tcp, addr, slot) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::error!(%uri, "accept failed: {e}");
                            break;
                        }
                    };
                    let Some(pre_auth) = self.gate.admit(addr) else {
                        // Over its source's cap: closed now, before any handshake.
                        drop((tcp, slot));
                        continue;
                    };
                    let span = tracing::info_span!("peer", %addr, via = uri.scheme.as_str());
                    let (security, handler) = (self.security.clone(), handler.clone());
                    let conn = serve(tcp, addr, pre_auth, security, handler, shutdown.clone());
                    connections.spawn(async move {
                        let _slot = slot;
                        conn.await;
                    }.instrument(span));
                }
                _ = tokio::time::sleep_until(self.gate.next_summary()) => {
                    if let Some(summary) = self.gate.summary() {
                        let (pre_auth, live) = self.gate.counts();
                        tracing::warn!(%uri, pre_auth, live, "refused connections {summary}");
                    }
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                _ = stopped(&mut shutdown) => break,
            }
        }
        while connections.join_next().await.is_some() {}
    }
}

/// Serves one admitted connection: the TLS handshake (if any) and the session, both under
/// the pre-auth deadline until the peer's first CSM.
async fn serve<H: Handler>(
    tcp: tokio::net::TcpStream,
    addr: std::net::SocketAddr,
    mut pre_auth: PreAuth,
    security: StreamSecurity,
    handler: Arc<H>,
    mut shutdown: Shutdown,
) {
    let server = match security {
        StreamSecurity::NoSec => {
            serve_stream(tcp, nosec_peer_info(addr), handler, shutdown, pre_auth).await;
            return;
        }
        StreamSecurity::NoSecKnown(allow) => {
            let pre_auth = if allow(addr.ip()) {
                pre_auth
            } else {
                pre_auth.never_authenticates()
            };
            serve_stream(tcp, nosec_peer_info(addr), handler, shutdown, pre_auth).await;
            return;
        }
        StreamSecurity::Tls(server) => server,
    };
    let accepted = tokio::select! {
        accepted = server.accept(tcp) => accepted,
        why = pre_auth.cut_off() => {
            pre_auth.refused(why, &"during the TLS handshake");
            return;
        }
        _ = stopped(&mut shutdown) => return,
    };
    match accepted {
        Ok((mut stream, info)) if !handler.admits(&info) => {
            let why = format!("{} is no configured peer", info.identity);
            pre_auth.refused(Refusal::Handshake, &why);
            // close_notify, briefly: a peer that does not read gets the TCP close anyway.
            let _ = tokio::time::timeout(CLOSE_NOTIFY_WAIT, stream.shutdown()).await;
        }
        Ok((stream, info)) => {
            tracing::debug!(identity = %info.identity, "TLS session up");
            serve_stream(stream, info, handler, shutdown, pre_auth).await;
        }
        Err(e) => pre_auth.refused(Refusal::Handshake, &e),
    }
}

/// A bound listener of either shape, so endpoints can hold a list of them.
pub enum AnyListener {
    Datagram(crate::runtime::Listener),
    Stream(StreamListener),
}

impl AnyListener {
    pub fn uri(&self) -> EndpointUri {
        match self {
            AnyListener::Datagram(l) => l.uri(),
            AnyListener::Stream(l) => l.uri(),
        }
    }

    /// Serves until `shutdown`; datagram listeners use `tuning` for their message layer.
    pub async fn run<H: Handler>(
        self,
        handler: Arc<H>,
        tuning: crate::coap::TransportTuning,
        shutdown: Shutdown,
    ) {
        match self {
            AnyListener::Datagram(l) => l.run(handler, tuning, shutdown).await,
            AnyListener::Stream(l) => l.run(handler, shutdown).await,
        }
    }
}
