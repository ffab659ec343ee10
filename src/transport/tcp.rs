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
//!
//! # Before authentication ([`Gate`])
//!
//! A slot alone would let one host hold every slot with idle sockets. The [`Gate`] runs the
//! sans-IO [`admission`] policy on each accepted connection: one over its source's cap is
//! closed at once (no TLS handshake, no state); an admitted one gets a [`PreAuth`] with a
//! deadline ([`StreamLimits::auth_timeout`], 2 s by default) by which it must have
//! authenticated (TLS handshake done and first CSM received), or be closed; and a full
//! pre-auth table evicts its oldest entry. Refusals are logged a few at a time plus a
//! periodic summary ([`admission::LogBudget`]), never one line per connection of a flood.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

use super::{Identity, PeerInfo, TransportError, TransportKind};

pub mod admission;

use admission::{Admission, AdmissionLimits, Admit, ConnId, LogBudget, Refusal, Summary};

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

/// The caps of one stream listener: total connections, and what unauthenticated peers get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Open connections, pre-auth and live together (the [`TcpEndpoint`]'s slots).
    pub max_connections: usize,
    /// Per-source and pre-auth caps.
    pub admission: AdmissionLimits,
    /// From accept to authenticated (TLS handshake and first CSM).
    pub auth_timeout: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_connections: MAX_CONNECTIONS,
            admission: AdmissionLimits::default(),
            auth_timeout: admission::DEFAULT_AUTH_TIMEOUT,
        }
    }
}

/// The admission state of one listener, shared with its connections' [`PreAuth`]s.
#[derive(Debug, Clone)]
pub struct Gate {
    state: Arc<Mutex<GateState>>,
    auth_timeout: Duration,
}

#[derive(Debug)]
struct GateState {
    admission: Admission,
    /// How to tell each pre-auth connection that it was evicted.
    evictors: HashMap<ConnId, oneshot::Sender<()>>,
    log: LogBudget,
}

impl Gate {
    pub fn new(limits: &StreamLimits) -> Gate {
        Gate {
            state: Arc::new(Mutex::new(GateState {
                admission: Admission::new(limits.admission),
                evictors: HashMap::new(),
                log: LogBudget::new(Instant::now().into_std()),
            })),
            auth_timeout: limits.auth_timeout,
        }
    }

    /// Admits a connection just accepted from `peer`, or `None`: then close it at once.
    /// Evicts the oldest pre-auth connection if the pre-auth table is full.
    pub fn admit(&self, peer: SocketAddr) -> Option<PreAuth> {
        let mut state = lock(&self.state);
        let id = match state.admission.admit(peer.ip()) {
            Admit::Yes { id, evict } => {
                if let Some(old) = evict.and_then(|old| state.evictors.remove(&old)) {
                    let _ = old.send(());
                }
                id
            }
            Admit::No(why) => {
                if state.log.note(why) {
                    tracing::info!(%peer, "connection refused: {why}");
                }
                return None;
            }
        };
        let (tx, evicted) = oneshot::channel();
        state.evictors.insert(id, tx);
        Some(PreAuth {
            state: Arc::clone(&self.state),
            id,
            deadline: Instant::now() + self.auth_timeout,
            evicted: Some(evicted),
            may_authenticate: true,
        })
    }

    /// When [`Gate::summary`] is next due.
    pub fn next_summary(&self) -> Instant {
        Instant::from_std(lock(&self.state).log.next_summary())
    }

    /// The refusal counts of the period just ended, if there were any.
    pub fn summary(&self) -> Option<Summary> {
        lock(&self.state).log.summary(Instant::now().into_std())
    }

    /// (pre-auth, live) connections now.
    pub fn counts(&self) -> (usize, usize) {
        let state = lock(&self.state);
        (state.admission.pre_auth(), state.admission.live())
    }
}

/// Our own short critical sections cannot leave the state inconsistent: ignore poisoning.
fn lock(state: &Mutex<GateState>) -> MutexGuard<'_, GateState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One admitted connection's place at the [`Gate`]: a deadline to authenticate by, and
/// notice of eviction. Dropping it frees the connection's place.
#[derive(Debug)]
#[must_use = "dropping it frees the connection's place while it may still be open"]
pub struct PreAuth {
    state: Arc<Mutex<GateState>>,
    id: ConnId,
    deadline: Instant,
    /// `None` once authenticated.
    evicted: Option<oneshot::Receiver<()>>,
    /// False for a connection that can never authenticate (see
    /// [`never_authenticates`](Self::never_authenticates)).
    may_authenticate: bool,
}

impl PreAuth {
    /// This connection can never authenticate, whatever it sends: [`authenticated`]
    /// (Self::authenticated) does nothing, so its deadline and eviction keep applying. For a
    /// `coap+tcp://` source that is not a configured server: it is answered 4.01, and cannot
    /// hold a slot past the pre-auth deadline by sending a CSM.
    pub fn never_authenticates(mut self) -> Self {
        self.may_authenticate = false;
        self
    }

    /// The connection authenticated: no deadline, no eviction from now on. Idempotent.
    pub fn authenticated(&mut self) {
        if !self.may_authenticate || self.evicted.take().is_none() {
            return;
        }
        let mut state = lock(&self.state);
        state.evictors.remove(&self.id);
        state.admission.authenticated(self.id);
    }

    /// Still unauthenticated.
    pub fn is_pending(&self) -> bool {
        self.evicted.is_some()
    }

    /// Resolves when the connection must be closed unauthenticated: its deadline passed
    /// ([`Refusal::Deadline`]) or it was evicted ([`Refusal::Evicted`]). Never resolves once
    /// authenticated. Cancel-safe.
    pub async fn cut_off(&mut self) -> Refusal {
        let Some(evicted) = self.evicted.as_mut() else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(self.deadline) => Refusal::Deadline,
            _ = evicted => Refusal::Evicted,
        }
    }

    /// Counts a refusal of this connection and logs it, within the log budget.
    pub fn refused(&self, why: Refusal, detail: &dyn fmt::Display) {
        if lock(&self.state).log.note(why) {
            tracing::info!("connection closed: {why}: {detail}");
        }
    }
}

impl Drop for PreAuth {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        state.evictors.remove(&self.id);
        state.admission.closed(self.id);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn peer(last: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), port)
    }

    fn gate(per_source: usize, pre_auth: usize) -> Gate {
        Gate::new(&StreamLimits {
            max_connections: 250,
            admission: AdmissionLimits {
                max_per_source: per_source,
                max_pre_auth: pre_auth,
            },
            auth_timeout: Duration::from_secs(2),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_pre_auth_connection_is_cut_off_at_its_deadline_unless_authenticated() {
        let gate = gate(4, 4);
        let start = Instant::now();
        let mut idle = gate.admit(peer(2, 1)).expect("admitted");
        let mut talker = gate.admit(peer(2, 2)).expect("admitted");
        assert_eq!(idle.cut_off().await, Refusal::Deadline);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        talker.authenticated();
        assert!(!talker.is_pending());
        let later = tokio::time::timeout(Duration::from_secs(60), talker.cut_off()).await;
        assert!(
            later.is_err(),
            "an authenticated connection has no deadline"
        );
        assert_eq!(gate.counts(), (1, 1));
        drop(idle);
        drop(talker);
        assert_eq!(gate.counts(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_authenticates_is_cut_off_even_after_a_csm() {
        let gate = gate(4, 4);
        let start = Instant::now();
        let mut stranger = gate
            .admit(peer(2, 1))
            .expect("admitted")
            .never_authenticates();
        stranger.authenticated();
        assert!(stranger.is_pending(), "still pre-auth");
        assert_eq!(gate.counts(), (1, 0));
        assert_eq!(stranger.cut_off().await, Refusal::Deadline);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_pre_auth_table_cuts_off_its_oldest_entry_and_the_source_cap_refuses() {
        let gate = gate(2, 2);
        let mut first = gate.admit(peer(2, 1)).expect("admitted");
        let _second = gate.admit(peer(2, 2)).expect("admitted");
        assert!(gate.admit(peer(2, 3)).is_none(), "over the source cap");
        let _third = gate.admit(peer(3, 1)).expect("another source");
        let why = tokio::time::timeout(Duration::from_millis(1), first.cut_off()).await;
        assert_eq!(why, Ok(Refusal::Evicted));
        drop(first);
        let _again = gate.admit(peer(2, 4)).expect("a freed place");
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_summarised_once_per_period() {
        let gate = gate(1, 10);
        let _held = gate.admit(peer(2, 1)).expect("admitted");
        for port in 2..1002 {
            assert!(gate.admit(peer(2, port)).is_none());
        }
        assert_eq!(gate.summary(), None, "not before the period ends");
        tokio::time::sleep_until(gate.next_summary()).await;
        let s = gate.summary().expect("a summary");
        assert_eq!(s.counts, vec![(Refusal::PerSource, 1000)]);
        assert_eq!(gate.summary(), None);
    }
}
