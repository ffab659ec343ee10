//! TCP for CoAP over TCP (RFC 8323): a listening endpoint with a connection cap and accept
//! backoff, and a bounded connect.
//!
//! This module owns sockets only. It moves no CoAP (the RFC 8323 length framing lives in
//! `coap`), proves no identity beyond the source address (NoSec, DESIGN §2) and runs no TLS
//! (see [`super::tls`], which runs its handshake over a stream accepted here).
//!
//! # Shape (mini-redis `server.rs`)
//!
//! The caller's accept loop calls [`TcpEndpoint::accept`] and hands each connection to its own
//! task together with its [`ConnectionSlot`]. The endpoint takes a slot of a semaphore
//! ([`MAX_CONNECTIONS`] by default) *before* accepting, so at the cap it stops accepting and
//! lets the kernel backlog absorb the rest instead of growing without bound. An accept error
//! (EMFILE, ENFILE, ENOBUFS…) is retried after 1, 2, 4 … 64 s; only after the 64 s wait fails
//! too does [`TcpEndpoint::accept`] give up, so a flood or an exhausted descriptor table never
//! spins. Errors that concern one aborted connection only are retried at once.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Identity, PeerInfo, TransportError, TransportKind};

/// Default cap on concurrently open connections per endpoint (mini-redis uses the same).
pub const MAX_CONNECTIONS: usize = 250;

/// The first wait after a failed accept; it doubles on each further failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The last wait: a failure after waiting this long is returned to the caller.
const MAX_BACKOFF: Duration = Duration::from_secs(64);

/// One listening TCP socket with a cap on open connections.
#[derive(Debug)]
pub struct TcpEndpoint {
    listener: TcpListener,
    local: SocketAddr,
    slots: Arc<Semaphore>,
}

/// Holds one of the endpoint's connection slots; dropping it frees the slot.
///
/// Move it into the task that serves the connection and let it drop with the connection.
#[derive(Debug)]
#[must_use = "dropping the slot frees it while the connection may still be open"]
pub struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
}

impl TcpEndpoint {
    /// Binds `addr` (IPv4 or IPv6) with the default cap of [`MAX_CONNECTIONS`].
    pub async fn bind(addr: SocketAddr) -> Result<TcpEndpoint, TransportError> {
        TcpEndpoint::bind_with_limit(addr, MAX_CONNECTIONS).await
    }

    /// Binds `addr` allowing at most `max_connections` open connections (at least one).
    pub async fn bind_with_limit(
        addr: SocketAddr,
        max_connections: usize,
    ) -> Result<TcpEndpoint, TransportError> {
        let bind_err = |source| TransportError::TcpBind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        Ok(TcpEndpoint {
            listener,
            local,
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
        })
    }

    /// The address actually bound (with the OS-chosen port for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Connection slots currently free.
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// The next connection, with `TCP_NODELAY` set, and the slot it occupies.
    ///
    /// Waits while all slots are taken. Accept errors are retried with backoff (module doc);
    /// the error is returned only when the 64 s backoff is exhausted. Cancel-safe: dropping the
    /// future loses no connection (a slot taken but not used is returned).
    pub async fn accept(&self) -> Result<(TcpStream, SocketAddr, ConnectionSlot), TransportError> {
        let permit = Arc::clone(&self.slots).acquire_owned().await.map_err(|_| {
            TransportError::TcpAccept {
                addr: self.local,
                source: io::Error::other("connection semaphore closed"),
            }
        })?;
        let (stream, peer) = accept_with_backoff(|| self.listener.accept())
            .await
            .map_err(|source| TransportError::TcpAccept {
                addr: self.local,
                source,
            })?;
        if let Err(e) = stream.set_nodelay(true) {
            // Not fatal: the connection works, only with Nagle's delay.
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        Ok((stream, peer, ConnectionSlot { _permit: permit }))
    }
}

/// Runs `accept` until it succeeds; waits 1, 2, … 64 s after resource errors and gives up
/// with the error that follows the 64 s wait.
pub(crate) async fn accept_with_backoff<T, F, Fut>(mut accept: F) -> io::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        match accept().await {
            Ok(accepted) => return Ok(accepted),
            Err(e) if concerns_one_connection(&e) => {
                tracing::debug!(error = %e, "a connection was aborted before accept");
            }
            Err(e) => {
                if backoff > MAX_BACKOFF {
                    return Err(e);
                }
                tracing::error!(error = %e, retry_in = ?backoff, "TCP accept failed");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
    }
}

/// Errors that end one pending connection and say nothing about the listener.
fn concerns_one_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Connects to `peer` within `timeout` and sets `TCP_NODELAY`.
pub async fn connect(peer: SocketAddr, timeout: Duration) -> Result<TcpStream, TransportError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(peer)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(TransportError::TcpConnect { peer, source }),
        Err(_) => {
            return Err(TransportError::ConnectTimeout {
                peer,
                after: timeout,
            });
        }
    };
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    Ok(stream)
}

/// The [`PeerInfo`] of a NoSec TCP connection: its source address is all we know.
pub fn nosec_peer_info(peer: SocketAddr) -> PeerInfo {
    PeerInfo {
        addr: peer,
        kind: TransportKind::Tcp,
        identity: Identity::Address(peer.ip()),
    }
}
