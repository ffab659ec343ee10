//! A listener for CoAP over TCP or TLS (RFC 8323): one TCP endpoint for one `coap+tcp://`
//! or `coaps+tcp://` URI, every connection served by its own task. A TLS handshake runs in
//! the connection's own task under a deadline, so a silent or half-open peer never blocks
//! anyone else; the endpoint caps open connections.

use std::sync::Arc;

use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::{EndpointUri, Scheme};
use crate::runtime::listener::ListenError;
use crate::runtime::{Handler, Shutdown, serve_stream, stopped};
use crate::transport::tcp::{TcpEndpoint, nosec_peer_info};
use crate::transport::tls::TlsServer;

/// How a stream listener authenticates peers.
#[derive(Clone)]
pub enum StreamSecurity {
    /// `coap+tcp://`: no channel security; the peer is known by its source address.
    NoSec,
    /// `coaps+tcp://`: TLS with mutual X.509.
    Tls(Arc<TlsServer>),
}

pub struct StreamListener {
    uri: EndpointUri,
    endpoint: TcpEndpoint,
    security: StreamSecurity,
}

impl StreamListener {
    pub async fn bind(
        uri: EndpointUri,
        security: StreamSecurity,
    ) -> Result<StreamListener, ListenError> {
        let matches = matches!(
            (uri.scheme, &security),
            (Scheme::CoapTcp, StreamSecurity::NoSec) | (Scheme::CoapsTcp, StreamSecurity::Tls(_))
        );
        if !matches {
            return Err(ListenError::Mismatch(uri.to_string()));
        }
        let endpoint = TcpEndpoint::bind(uri.addr)
            .await
            .map_err(|source| ListenError::Bind {
                uri: uri.to_string(),
                source,
            })?;
        Ok(StreamListener {
            uri,
            endpoint,
            security,
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
                    let span = tracing::info_span!("peer", %addr, via = uri.scheme.as_str());
                    let security = self.security.clone();
                    let handler = handler.clone();
                    let mut shutdown = shutdown.clone();
                    connections.spawn(async move {
                        let _slot = slot;
                        match security {
                            StreamSecurity::NoSec => {
                                serve_stream(tcp, nosec_peer_info(addr), handler, shutdown).await;
                            }
                            StreamSecurity::Tls(server) => {
                                let accepted = tokio::select! {
                                    accepted = server.accept(tcp) => accepted,
                                    _ = stopped(&mut shutdown) => return,
                                };
                                match accepted {
                                    Ok((stream, info)) => {
                                        tracing::debug!(identity = %info.identity, "TLS session up");
                                        serve_stream(stream, info, handler, shutdown).await;
                                    }
                                    Err(e) => tracing::warn!("TLS handshake failed: {e}"),
                                }
                            }
                        }
                    }.instrument(span));
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                _ = stopped(&mut shutdown) => break,
            }
        }
        while connections.join_next().await.is_some() {}
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
