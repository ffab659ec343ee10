//! One UDP socket, many peers: demultiplexing datagrams by source address.
//!
//! [`DatagramMux`] owns one bound [`UdpSocket`] and one background receive task. The task
//! routes every datagram by its source address to that peer's [`Pipe`] through a bounded
//! queue. It never blocks: a full queue drops the datagram (as a congested network would) and
//! counts it. In the server role (`accept = true`) a datagram from an unknown address creates a
//! new [`Pipe`], handed out through a bounded accept queue; the number of live pipes is capped
//! so a flood of spoofed source addresses cannot exhaust memory.
//!
//! # Admission: no state for unknown peers
//!
//! A server mux may have a [`Gate`]: a stateless function asked about every datagram from an
//! address without a pipe (and about every ClientHello on an established one). It answers
//! [`Verdict::Admit`] (create the pipe), [`Verdict::Reply`] (send these bytes from the socket,
//! keep nothing: a DTLS HelloVerifyRequest, a NoSec 4.01) or [`Verdict::Drop`]. Admitted
//! peers are further capped: live pipes in total and per source IP, and — on a handshake
//! mux ([`MuxConfig::handshakes`]) — pipes whose handshake is still in progress, in total and
//! per source IP (with [`MuxConfig::evict_per_ip`] a full IP's least recently heard pipe
//! makes room instead; with the handshake total reached, the oldest pending handshake makes
//! room once it has stalled for [`MuxConfig::stalled_handshake_after`]). Refusals are
//! counted and summarised in one log line per second at most, so a flood never writes a
//! line per datagram.
//!
//! This module owns addresses and queues only. It does not own DTLS (see
//! [`super::dtls`]), CoAP, or any notion of a session beyond "datagrams from this address" —
//! with one exception, RFC 6347 §4.2.8: once the DTLS server marks a pipe established, a new
//! ClientHello from the same address opens a *candidate* pipe (handed out like a new peer)
//! that receives the handshake records (content types 20, 22) while the old pipe keeps the
//! rest; when the candidate's handshake completes it takes the address over. Only the record
//! header's content type, epoch and handshake type are read to decide this.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::datagram_queue::{self, QueueRx, QueueTx, Refused};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::tcp::admission::source_key;
use super::{CloseCause, DatagramSession, Identity, PeerInfo, TransportError, TransportKind};

/// Largest UDP payload we accept (IPv4/IPv6 datagram limit).
const MAX_DATAGRAM: usize = 65_535;

/// Tuning for a [`DatagramMux`].
#[derive(Debug, Clone)]
pub struct MuxConfig {
    /// Whether datagrams from unknown peers create new pipes (server role). Default `false`.
    pub accept: bool,
    /// Most live pipes at once. A datagram from a new peer beyond this is dropped.
    /// Default 65 536. Danger: each pipe may hold up to `queue_len` datagrams.
    pub max_sessions: usize,
    /// Per-peer queue length, in datagrams. When full, further datagrams from that peer are
    /// dropped and counted in [`DatagramMux::dropped`]. Default 64.
    pub queue_len: usize,
    /// Accept queue length, in new pipes waiting for the server to take them. When full, the
    /// new peer's datagram is dropped (the peer will retransmit). Default 1024.
    pub accept_backlog: usize,
    /// Requested kernel receive buffer (SO_RCVBUF), in bytes. One socket takes every peer's
    /// answers, so a burst from a large group must fit; the kernel caps it at
    /// `net.core.rmem_max`. Default 4 MiB.
    pub recv_buffer: usize,
    /// Decides statelessly about datagrams from addresses without a pipe. `None` admits
    /// every new peer (subject to the caps). Default `None`.
    pub gate: Option<Gate>,
    /// Most live pipes from one source IP (all ports). Default 256. Like every per-IP cap
    /// here it counts per source: an IPv4 address, an IPv6 /64 (one host owns a whole /64),
    /// an IPv4-mapped address as its IPv4 address ([`source_key`]).
    pub max_sessions_per_ip: usize,
    /// Whether pipes carry a handshake (DTLS): a pipe counts as *pending* from its creation
    /// until [`DatagramMux::mark_established`], and pending pipes have their own caps.
    /// Default `false`.
    pub handshakes: bool,
    /// Most pending handshakes at once (with `handshakes`). Default 256.
    pub max_pending: usize,
    /// Most pending handshakes from one source IP (with `handshakes`). Default 8.
    pub max_pending_per_ip: usize,
    /// With the handshake cap reached, a new peer replaces the oldest pending handshake if
    /// that one has been pending this long: sources that passed the cookie and then stall
    /// (a handshake gives up only after its own timeout) cannot keep real clients out.
    /// A burst of handshakes younger than this is refused as before. Default 1 s.
    pub stalled_handshake_after: Duration,
    /// When a source IP is at `max_sessions_per_ip`, a new peer from it replaces that IP's
    /// least recently heard pipe instead of being refused, so a burst of spoofed ports
    /// cannot lock the IP's real client out until the idle timeout. Meant for NoSec, where
    /// a peer costs no handshake. Default `false`.
    pub evict_per_ip: bool,
}

/// What to do with a datagram from a peer the mux keeps no state for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Create a pipe for the peer (if the caps allow) and deliver the datagram to it.
    Admit,
    /// Send these bytes back to the source from the socket; keep nothing.
    Reply(Vec<u8>),
    /// Drop the datagram; keep nothing.
    Drop,
}

/// The decision function inside a [`Gate`].
type Decide = dyn Fn(Instant, SocketAddr, &[u8]) -> Verdict + Send + Sync;

/// A stateless admission decision over `(now, source, datagram)`; see the module doc.
#[derive(Clone)]
pub struct Gate(Arc<Decide>);

impl Gate {
    /// Wraps a decision function.
    pub fn new(f: impl Fn(Instant, SocketAddr, &[u8]) -> Verdict + Send + Sync + 'static) -> Self {
        Gate(Arc::new(f))
    }

    fn decide(&self, now: Instant, from: SocketAddr, datagram: &[u8]) -> Verdict {
        (self.0)(now, from, datagram)
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

impl Default for MuxConfig {
    fn default() -> Self {
        let caps = DatagramLimits::default();
        MuxConfig {
            accept: false,
            max_sessions: caps.max_sessions,
            queue_len: 64,
            accept_backlog: 1024,
            recv_buffer: 4 << 20,
            gate: None,
            max_sessions_per_ip: caps.max_sessions_per_ip,
            handshakes: false,
            max_pending: caps.max_pending,
            max_pending_per_ip: caps.max_pending_per_ip,
            stalled_handshake_after: Duration::from_secs(1),
            evict_per_ip: false,
        }
    }
}

/// The peer caps of a server mux, as configured (`[limits]` `udp_max_sessions`,
/// `udp_max_sessions_per_ip`, `dtls_max_handshakes`, `dtls_max_handshakes_per_ip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramLimits {
    /// [`MuxConfig::max_sessions`]. Default 65 536.
    pub max_sessions: usize,
    /// [`MuxConfig::max_sessions_per_ip`]. Default 256.
    pub max_sessions_per_ip: usize,
    /// [`MuxConfig::max_pending`]. Default 256.
    pub max_pending: usize,
    /// [`MuxConfig::max_pending_per_ip`]. Default 8.
    pub max_pending_per_ip: usize,
}

impl Default for DatagramLimits {
    fn default() -> Self {
        DatagramLimits {
            max_sessions: 65_536,
            max_sessions_per_ip: 256,
            max_pending: 256,
            max_pending_per_ip: 8,
        }
    }
}

impl MuxConfig {
    /// These settings with the caps of `limits`.
    pub fn with_limits(self, limits: DatagramLimits) -> MuxConfig {
        MuxConfig {
            max_sessions: limits.max_sessions,
            max_sessions_per_ip: limits.max_sessions_per_ip,
            max_pending: limits.max_pending,
            max_pending_per_ip: limits.max_pending_per_ip,
            ..self
        }
    }
}

/// Binds a non-blocking UDP socket with a larger receive buffer (best effort: a kernel that
/// refuses the size keeps its default).
fn bind_socket(addr: SocketAddr, recv_buffer: usize) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(recv_buffer) {
        tracing::debug!("SO_RCVBUF {recv_buffer}: {e}");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// One UDP socket shared by many peers. Always held in an [`Arc`]; every [`Pipe`] keeps it
/// alive. Dropping the last reference (or calling [`shutdown`](Self::shutdown)) stops the
/// receive task.
#[derive(Debug)]
pub struct DatagramMux {
    shared: Arc<Shared>,
    recv_task: AbortHandle,
}

/// The part the receive task holds: everything but the task itself.
#[derive(Debug)]
struct Shared {
    socket: UdpSocket,
    local: SocketAddr,
    config: MuxConfig,
    peers: Mutex<Peers>,
    next_id: AtomicU64,
    dropped: AtomicU64,
    replied: AtomicU64,
    refused: AtomicU64,
    evicted: AtomicU64,
}

#[derive(Debug)]
struct PeerSlot {
    /// Distinguishes a replaced pipe from its successor, so the old one's `Drop` leaves the
    /// new slot alone.
    id: u64,
    tx: QueueTx,
    /// Set once a DTLS server session is established on this pipe: a new ClientHello from
    /// the same address then starts a candidate session instead of reaching the old one.
    established: bool,
    /// A handshake in progress from the same address (RFC 6347 §4.2.8). It receives the
    /// handshake records (content types 20 and 22); the old session keeps the rest until the
    /// candidate completes and is promoted, so a spoofed ClientHello cannot end a session.
    candidate: Option<(u64, QueueTx)>,
    /// The [`Peers::clock`] value when this peer was last heard (for per-IP eviction).
    heard: u64,
    /// When the pipe was made (for the eviction of stalled handshakes).
    since: Instant,
}

impl PeerSlot {
    fn new(id: u64, tx: QueueTx, since: Instant) -> Self {
        PeerSlot {
            id,
            tx,
            established: false,
            candidate: None,
            heard: 0,
            since,
        }
    }

    /// The candidate's queue, if one is pending and still open.
    fn live_candidate(&self) -> Option<&QueueTx> {
        self.candidate
            .as_ref()
            .map(|(_, tx)| tx)
            .filter(|tx| !tx.is_closed())
    }
}

/// What one source IP holds: live pipes and, of those (plus candidates), pending handshakes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Load {
    sessions: usize,
    pending: usize,
}

/// The peer map with the counts the caps need, kept consistent by [`Peers::update`].
#[derive(Debug)]
struct Peers {
    map: HashMap<SocketAddr, PeerSlot>,
    /// Keyed by [`source_key`] (IPv6 per /64), as is `addrs`.
    per_ip: HashMap<IpAddr, Load>,
    /// The addresses (ports) of each source IP, for per-IP eviction.
    addrs: HashMap<IpAddr, Vec<SocketAddr>>,
    pending: usize,
    /// The pipes whose own handshake is pending (candidates aside), by id: oldest first.
    pending_order: BTreeMap<u64, SocketAddr>,
    handshakes: bool,
    /// Counts deliveries: a logical clock for "least recently heard".
    clock: u64,
}

/// The refusal of [`Peers::refusal`] that per-IP eviction can lift.
const PER_IP_SESSION_CAP: &str = "per-IP session cap";
/// The refusal of [`Peers::refusal`] that evicting a stalled handshake can lift.
const HANDSHAKE_CAP: &str = "handshake cap";

impl Peers {
    fn new(handshakes: bool) -> Self {
        Peers {
            map: HashMap::new(),
            per_ip: HashMap::new(),
            addrs: HashMap::new(),
            pending: 0,
            pending_order: BTreeMap::new(),
            handshakes,
            clock: 0,
        }
    }

    /// The id of `slot` if its own handshake is pending.
    fn pending_id(&self, slot: Option<&PeerSlot>) -> Option<u64> {
        slot.filter(|s| self.handshakes && !s.established)
            .map(|s| s.id)
    }

    fn load_of(&self, slot: Option<&PeerSlot>) -> Load {
        let Some(slot) = slot else {
            return Load::default();
        };
        let pending = if self.handshakes {
            usize::from(!slot.established) + usize::from(slot.candidate.is_some())
        } else {
            0
        };
        Load {
            sessions: 1,
            pending,
        }
    }

    /// The only way to change, insert or remove a slot: the counts follow.
    fn update<R>(&mut self, addr: SocketAddr, f: impl FnOnce(&mut Option<PeerSlot>) -> R) -> R {
        let mut slot = self.map.remove(&addr);
        let before = self.load_of(slot.as_ref());
        let pending_before = self.pending_id(slot.as_ref());
        let result = f(&mut slot);
        let after = self.load_of(slot.as_ref());
        if let Some(id) = pending_before {
            self.pending_order.remove(&id);
        }
        if let Some(id) = self.pending_id(slot.as_ref()) {
            self.pending_order.insert(id, addr);
        }
        if let Some(mut slot) = slot {
            if before.sessions == 0 {
                self.clock += 1;
                slot.heard = self.clock;
                self.addrs
                    .entry(source_key(addr.ip()))
                    .or_default()
                    .push(addr);
            }
            self.map.insert(addr, slot);
        } else if before.sessions == 1 {
            self.forget_addr(addr);
        }
        self.pending = (self.pending + after.pending).saturating_sub(before.pending);
        let source = source_key(addr.ip());
        let ip = self.per_ip.entry(source).or_default();
        ip.sessions = (ip.sessions + after.sessions).saturating_sub(before.sessions);
        ip.pending = (ip.pending + after.pending).saturating_sub(before.pending);
        if *ip == Load::default() {
            self.per_ip.remove(&source);
        }
        result
    }

    fn forget_addr(&mut self, addr: SocketAddr) {
        let source = source_key(addr.ip());
        if let Some(list) = self.addrs.get_mut(&source) {
            list.retain(|a| *a != addr);
            if list.is_empty() {
                self.addrs.remove(&source);
            }
        }
    }

    /// Marks `addr` as just heard (as [`deliver_known`] does on its one lookup).
    #[cfg(test)]
    fn heard(&mut self, addr: SocketAddr) {
        self.clock += 1;
        if let Some(slot) = self.map.get_mut(&addr) {
            slot.heard = self.clock;
        }
    }

    /// The least recently heard address of `ip`'s source (see [`source_key`]).
    fn least_recent(&self, ip: IpAddr) -> Option<SocketAddr> {
        self.addrs
            .get(&source_key(ip))?
            .iter()
            .filter_map(|a| self.map.get(a).map(|slot| (slot.heard, *a)))
            .min()
            .map(|(_, a)| a)
    }

    fn clear(&mut self) {
        self.map.clear();
        self.per_ip.clear();
        self.addrs.clear();
        self.pending = 0;
        self.pending_order.clear();
    }

    /// The oldest pending handshake, if it has been pending since before `stalled_since`.
    fn stalled(&self, stalled_since: Instant) -> Option<SocketAddr> {
        let (_, addr) = self.pending_order.first_key_value()?;
        let slot = self.map.get(addr)?;
        (slot.since <= stalled_since).then_some(*addr)
    }

    /// Which cap, if any, refuses one more pipe (`candidate`: a second handshake on an
    /// existing address, which adds a pending handshake but no pipe slot).
    fn refusal(&self, config: &MuxConfig, ip: IpAddr, candidate: bool) -> Option<&'static str> {
        let load = self
            .per_ip
            .get(&source_key(ip))
            .copied()
            .unwrap_or_default();
        if !candidate && self.map.len() >= config.max_sessions {
            return Some("session cap");
        }
        if !candidate && load.sessions >= config.max_sessions_per_ip {
            return Some(PER_IP_SESSION_CAP);
        }
        if self.handshakes && self.pending >= config.max_pending {
            return Some(HANDSHAKE_CAP);
        }
        if self.handshakes && load.pending >= config.max_pending_per_ip {
            return Some("per-IP handshake cap");
        }
        None
    }
}

/// DTLS record content types that belong to a handshake (ChangeCipherSpec, Handshake).
fn is_handshake_record(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(20 | 22))
}

/// An epoch-0 DTLS ClientHello: the start of a new association.
fn is_client_hello(datagram: &[u8]) -> bool {
    datagram.first() == Some(&22)
        && datagram.get(1) == Some(&0xFE)
        && datagram.get(3..5) == Some(&[0, 0][..])
        && datagram.get(13) == Some(&1)
}

impl Shared {
    /// The peer map. A poisoned lock only means another thread panicked while holding it;
    /// the map itself is always consistent (single inserts/removes), so keep going.
    fn peers(&self) -> MutexGuard<'_, Peers> {
        self.peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

impl DatagramMux {
    /// Bind one UDP socket (IPv4 or IPv6 literal addresses both work).
    ///
    /// `accept`: whether unknown peers create new sessions (server role). In that case the
    /// second value is the receiver of new [`Pipe`]s; otherwise it is `None`.
    pub async fn bind(
        addr: SocketAddr,
        accept: bool,
    ) -> Result<(Arc<DatagramMux>, Option<mpsc::Receiver<Pipe>>), TransportError> {
        Self::bind_with(
            addr,
            MuxConfig {
                accept,
                ..MuxConfig::default()
            },
        )
        .await
    }

    /// Like [`bind`](Self::bind), with explicit tuning.
    pub async fn bind_with(
        addr: SocketAddr,
        config: MuxConfig,
    ) -> Result<(Arc<DatagramMux>, Option<mpsc::Receiver<Pipe>>), TransportError> {
        if config.queue_len == 0 || config.accept_backlog == 0 {
            return Err(TransportError::InvalidConfig {
                reason: "mux queue_len and accept_backlog must be at least 1",
            });
        }
        let socket = bind_socket(addr, config.recv_buffer)
            .map_err(|source| TransportError::Bind { addr, source })?;
        let local = socket
            .local_addr()
            .map_err(|source| TransportError::Bind { addr, source })?;
        let (accept_tx, accept_rx) = if config.accept {
            let (tx, rx) = mpsc::channel(config.accept_backlog);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let shared = Arc::new(Shared {
            socket,
            local,
            peers: Mutex::new(Peers::new(config.handshakes)),
            config,
            next_id: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            replied: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        });
        let mux = Arc::new_cyclic(|weak: &Weak<DatagramMux>| {
            let task = tokio::spawn(receive_loop(shared.clone(), weak.clone(), accept_tx));
            DatagramMux {
                shared,
                recv_task: task.abort_handle(),
            }
        });
        tracing::debug!(local = %local, accept = mux.shared.config.accept, "mux bound");
        Ok((mux, accept_rx))
    }

    /// The bound local address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// Client role: a pipe to `peer`. Replaces any previous pipe for that peer (whose
    /// [`recv`](DatagramSession::recv) then ends with [`CloseCause::Shutdown`]).
    ///
    /// Pipes created here count toward `max_sessions` but are never refused: the cap guards
    /// against remote floods, not against our own callers.
    pub fn connect(self: &Arc<Self>, peer: SocketAddr) -> Pipe {
        let (tx, rx) = datagram_queue::queue(self.shared.config.queue_len);
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared.peers().update(peer, |slot| {
            let mut fresh = PeerSlot::new(id, tx, Instant::now());
            // Our own outgoing association: nothing pending to cap.
            fresh.established = true;
            *slot = Some(fresh);
        });
        Pipe {
            mux: self.clone(),
            peer,
            id,
            rx,
            received: 0,
            packer: None,
            sent_epoch1: None,
        }
    }

    /// Marks `pipe`'s peer as having an established DTLS server session: from now on a new
    /// ClientHello from that address starts a candidate session (RFC 6347 §4.2.8).
    pub(crate) fn mark_established(&self, pipe: &Pipe) {
        self.shared.peers().update(pipe.peer, |slot| {
            let Some(current) = slot.as_mut() else {
                return;
            };
            if current.id == pipe.id {
                current.established = true;
            } else if current
                .candidate
                .as_ref()
                .is_some_and(|(id, _)| *id == pipe.id)
            {
                // The candidate completed its handshake: it becomes the peer's session and
                // the old one's queue closes (its session ends).
                if let Some((id, tx)) = current.candidate.take() {
                    let mut promoted = PeerSlot::new(id, tx, Instant::now());
                    promoted.established = true;
                    *current = promoted;
                    tracing::info!(peer = %pipe.peer, "new DTLS session replaces the old one");
                }
            }
        });
    }

    /// Number of live pipes.
    pub fn sessions(&self) -> usize {
        self.shared.peers().map.len()
    }

    /// Handshakes in progress (pipes not yet marked established, and candidates). Always 0
    /// unless [`MuxConfig::handshakes`].
    pub fn pending(&self) -> usize {
        self.shared.peers().pending
    }

    /// Stateless replies sent so far ([`Verdict::Reply`]: HelloVerifyRequests, NoSec 4.01s).
    pub fn replied(&self) -> u64 {
        self.shared.replied.load(Ordering::Relaxed)
    }

    /// Pipes closed to make room for a new peer from the same source IP
    /// ([`MuxConfig::evict_per_ip`]).
    pub fn evicted(&self) -> u64 {
        self.shared.evicted.load(Ordering::Relaxed)
    }

    /// Datagrams from peers without state that were refused: the gate dropped them, or a
    /// cap refused a new pipe.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Datagrams dropped so far: full per-peer or accept queues, unknown peers when not
    /// accepting, and everything counted in [`refused`](Self::refused).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Stop receiving: ends the receive task and closes every pipe's queue, so their
    /// [`recv`](DatagramSession::recv) returns [`CloseCause::Shutdown`] once drained. Sending
    /// still works until the mux is dropped.
    pub fn shutdown(&self) {
        self.recv_task.abort();
        self.shared.peers().clear();
    }
}

impl Drop for DatagramMux {
    fn drop(&mut self) {
        self.recv_task.abort();
    }
}

/// Refusals of unknown-peer traffic are summarised in the log at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// The one receive task of a mux. Holds the socket, never the mux itself (only a [`Weak`] to
/// hand new pipes a strong reference), so dropping the mux ends it.
async fn receive_loop(
    shared: Arc<Shared>,
    mux: Weak<DatagramMux>,
    accept_tx: Option<mpsc::Sender<Pipe>>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut report = Report::new(&shared, Instant::now());
    let mut ticker = tokio::time::interval(REPORT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // `recv_from` is cancel-safe: a tick loses no datagram.
        let received = tokio::select! {
            received = shared.socket.recv_from(&mut buf) => received,
            _ = ticker.tick() => {
                report.tick(&shared, Instant::now());
                continue;
            }
        };
        let (len, from) = match received {
            Ok(received) => received,
            Err(err) => {
                // Unconnected UDP sockets can report ICMP errors of earlier sends here
                // (Windows, or Linux with IP_RECVERR). They concern one peer, not the socket.
                tracing::debug!(local = %shared.local, error = %err, "recv_from failed");
                tokio::task::yield_now().await;
                continue;
            }
        };
        let datagram = buf.get(..len).unwrap_or_default();
        route(&shared, &mux, accept_tx.as_ref(), from, datagram);
    }
}

/// The counters a [`Report`] summarises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    replied: u64,
    refused: u64,
    evicted: u64,
    dropped: u64,
}

impl Counts {
    fn of(shared: &Shared) -> Self {
        Counts {
            replied: shared.replied.load(Ordering::Relaxed),
            refused: shared.refused.load(Ordering::Relaxed),
            evicted: shared.evicted.load(Ordering::Relaxed),
            dropped: shared.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Rate-limited logging: one line per [`REPORT_EVERY`] with what changed, never one per
/// datagram.
struct Report {
    last: Counts,
    at: Instant,
}

impl Report {
    fn new(shared: &Shared, now: Instant) -> Self {
        Report {
            last: Counts::of(shared),
            at: now,
        }
    }

    fn tick(&mut self, shared: &Shared, now: Instant) {
        if now.saturating_duration_since(self.at) < REPORT_EVERY {
            return;
        }
        let counts = Counts::of(shared);
        if counts != self.last {
            tracing::info!(
                local = %shared.local,
                stateless_replies = counts.replied - self.last.replied,
                refused = counts.refused - self.last.refused,
                evicted = counts.evicted - self.last.evicted,
                dropped = counts.dropped - self.last.dropped,
                sessions = shared.peers().map.len(),
                "datagrams from peers without state in the last {:?}",
                now.saturating_duration_since(self.at),
            );
        }
        self.last = counts;
        self.at = now;
    }
}

/// Where a datagram went on the first, locked look at the peer map.
enum Known {
    /// Delivered to (or dropped at) a known pipe.
    Done,
    /// A ClientHello from an address with an established session: ask the gate.
    ClientHello,
    /// No state for this address.
    Unknown,
}

/// Deliver one datagram: known peer → its queue; otherwise the gate decides (admit, reply or
/// drop) and admitted peers are subject to the caps. Never blocks.
fn route(
    shared: &Shared,
    mux: &Weak<DatagramMux>,
    accept_tx: Option<&mpsc::Sender<Pipe>>,
    from: SocketAddr,
    datagram: &[u8],
) {
    let candidate = match deliver_known(shared, &mut shared.peers(), from, datagram) {
        Known::Done => return,
        Known::ClientHello => true,
        Known::Unknown => false,
    };
    let Some(accept_tx) = accept_tx else {
        shared.drop_one();
        tracing::debug!(peer = %from, "datagram from unknown peer dropped (not accepting)");
        return;
    };
    // The gate runs without the lock: it may compute a MAC.
    let verdict = match &shared.config.gate {
        Some(gate) => gate.decide(Instant::now(), from, datagram),
        None => Verdict::Admit,
    };
    match verdict {
        Verdict::Admit => admit(shared, mux, accept_tx, from, datagram, candidate),
        Verdict::Reply(bytes) => reply(shared, from, &bytes),
        Verdict::Drop => refuse(shared, from, "gate"),
    }
}

fn deliver_known(shared: &Shared, peers: &mut Peers, from: SocketAddr, datagram: &[u8]) -> Known {
    // One lookup per datagram: this runs for every datagram of every peer.
    let Some(slot) = peers.map.get_mut(&from) else {
        return Known::Unknown;
    };
    peers.clock += 1;
    slot.heard = peers.clock;
    let slot = &*slot;
    if slot.established && is_handshake_record(datagram) {
        if is_client_hello(datagram) {
            return Known::ClientHello;
        }
        // The rest of a candidate's handshake; without one, a retransmitted last flight of
        // the established session's own handshake.
        if let Some(tx) = slot.live_candidate() {
            deliver(shared, tx, from, datagram);
            return Known::Done;
        }
    }
    deliver(shared, &slot.tx, from, datagram);
    Known::Done
}

fn deliver(shared: &Shared, tx: &QueueTx, from: SocketAddr, datagram: &[u8]) {
    match tx.try_send(datagram.to_vec()) {
        Ok(()) => {}
        Err(Refused::Full) => {
            shared.drop_one();
            tracing::debug!(peer = %from, "peer queue full, datagram dropped");
        }
        // The pipe is being dropped; its Drop removes the slot.
        Err(Refused::Closed) => shared.drop_one(),
    }
}

fn reply(shared: &Shared, to: SocketAddr, bytes: &[u8]) {
    match shared.socket.try_send_to(bytes, to) {
        Ok(_) => {
            shared.replied.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            shared.drop_one();
            tracing::debug!(peer = %to, error = %e, "stateless reply not sent");
        }
    }
}

fn refuse(shared: &Shared, from: SocketAddr, why: &'static str) {
    shared.refused.fetch_add(1, Ordering::Relaxed);
    shared.drop_one();
    tracing::debug!(peer = %from, why, "datagram from a peer without state refused");
}

/// The gate admitted `from`: a new pipe (or, for an established address, a candidate pipe
/// per RFC 6347 §4.2.8) unless a cap refuses it.
fn admit(
    shared: &Shared,
    mux: &Weak<DatagramMux>,
    accept_tx: &mpsc::Sender<Pipe>,
    from: SocketAddr,
    datagram: &[u8],
    candidate: bool,
) {
    let mut peers = shared.peers();
    let candidate = match peers.map.get(&from) {
        // A retransmitted ClientHello of a candidate already under way.
        Some(slot) if candidate && slot.live_candidate().is_some() => {
            if let Some(tx) = slot.live_candidate() {
                deliver(shared, tx, from, datagram);
            }
            return;
        }
        Some(slot) if !slot.established => {
            deliver(shared, &slot.tx, from, datagram);
            return;
        }
        Some(_) => true,
        None => false,
    };
    let now = Instant::now();
    let mut refusal = peers.refusal(&shared.config, from.ip(), candidate);
    if refusal == Some(HANDSHAKE_CAP)
        && let Some(victim) = now
            .checked_sub(shared.config.stalled_handshake_after)
            .and_then(|since| peers.stalled(since))
    {
        peers.update(victim, |slot| *slot = None);
        shared.evicted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = %victim, "stalled handshake evicted for a new peer");
        refusal = peers.refusal(&shared.config, from.ip(), candidate);
    }
    if refusal == Some(PER_IP_SESSION_CAP) && shared.config.evict_per_ip {
        if let Some(victim) = peers.least_recent(from.ip()) {
            // Its queue closes, so its session ends (as on a mux shutdown).
            peers.update(victim, |slot| *slot = None);
            shared.evicted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %victim, "least recently heard pipe of its IP evicted");
            refusal = peers.refusal(&shared.config, from.ip(), candidate);
        }
    }
    if let Some(why) = refusal {
        drop(peers);
        refuse(shared, from, why);
        return;
    }
    let Some(mux) = mux.upgrade() else {
        // The mux is going away; its Drop aborts this task.
        return;
    };
    let Ok(permit) = accept_tx.try_reserve() else {
        drop(peers);
        refuse(shared, from, "accept queue full");
        return;
    };
    let (tx, rx) = datagram_queue::queue(shared.config.queue_len);
    // Cannot fail: a fresh channel with capacity >= 1.
    let _ = tx.try_send(datagram.to_vec());
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    peers.update(from, |slot| match slot {
        Some(existing) if candidate => existing.candidate = Some((id, tx)),
        _ => *slot = Some(PeerSlot::new(id, tx, now)),
    });
    drop(peers);
    if candidate {
        tracing::debug!(peer = %from, "ClientHello on an established session: candidate session");
    } else {
        tracing::debug!(peer = %from, "new peer");
    }
    permit.send(Pipe {
        mux,
        peer: from,
        id,
        rx,
        received: 0,
        packer: None,
        sent_epoch1: None,
    });
}

/// The datagrams of one peer on a shared [`DatagramMux`] socket.
///
/// Receives through a bounded queue fed by the mux's receive task; sends with `send_to` on the
/// shared socket. Removes itself from the mux on drop.
///
/// Besides [`DatagramSession`], it implements [`AsyncRead`]/[`AsyncWrite`] with datagram
/// semantics so OpenSSL can run DTLS over it: each `poll_read` yields exactly one datagram
/// (truncated to the buffer), each `poll_write` sends exactly one datagram. End of stream
/// (a read of 0 bytes) means the mux stopped feeding this pipe.
#[derive(Debug)]
pub struct Pipe {
    mux: Arc<DatagramMux>,
    peer: SocketAddr,
    id: u64,
    rx: QueueRx,
    /// Datagrams delivered so far (tells a silent peer from one that answered).
    received: u64,
    /// Handshake records held to go out together ([`Pipe::set_packing`]); `None` = every
    /// write is one datagram.
    packer: Option<Packer>,
    /// The highest epoch-1 record sequence number OpenSSL wrote through this pipe (tracked
    /// while packing is on, i.e. under DTLS): where a compact session's own records start.
    sent_epoch1: Option<u64>,
}

/// Packs DTLS handshake records (ChangeCipherSpec, Handshake) into as few datagrams as the
/// MTU allows (RFC 6347 §4.1.1: several records may share a datagram). OpenSSL packs a
/// flight's first transmission itself, but it writes a *retransmitted* flight one record
/// per datagram, so at 20 % loss a three-record flight came through whole only half the
/// time. Here writes of handshake records are held and sent as one datagram when the
/// next would overflow the MTU, when OpenSSL next reads (a flight is complete once it waits
/// for the peer), before any other record (application data, alert), and at
/// [`Pipe::send_pending`] (the handshake's last flight is followed by no read). Application
/// data stays one record per datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Packer {
    mtu: usize,
    pending: Vec<u8>,
}

/// What [`Packer::plan`] says about one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Send the pending datagram before anything else.
    pub(crate) send_pending_first: bool,
    /// Append the write to the pending datagram (else send it on its own).
    pub(crate) hold: bool,
}

impl Packer {
    pub(crate) fn new(mtu: usize) -> Self {
        Packer {
            mtu,
            pending: Vec::new(),
        }
    }

    /// Where a write of `records` goes: handshake records are held (after sending what is
    /// pending if together they would exceed the MTU); anything else goes alone, after
    /// what is pending.
    pub(crate) fn plan(&self, records: &[u8]) -> Plan {
        let hold = is_handshake_record(records);
        let fits = self.pending.len() + records.len() <= self.mtu;
        Plan {
            send_pending_first: !self.pending.is_empty() && (!hold || !fits),
            hold,
        }
    }

    pub(crate) fn hold(&mut self, records: &[u8]) {
        self.pending.extend_from_slice(records);
    }

    /// The datagram waiting to be sent, if any.
    pub(crate) fn pending(&self) -> Option<&[u8]> {
        (!self.pending.is_empty()).then_some(self.pending.as_slice())
    }

    /// The pending datagram was sent (or failed): start a new one.
    pub(crate) fn sent(&mut self) {
        self.pending.clear();
    }
}

impl Pipe {
    /// Packs DTLS handshake records written through [`AsyncWrite`] into datagrams of at
    /// most `mtu` bytes (see [`Packer`]); `None` turns packing off (after sending what is
    /// pending with [`send_pending`](Self::send_pending)). Off by default.
    pub(crate) fn set_packing(&mut self, mtu: Option<usize>) {
        self.packer = mtu.map(Packer::new);
    }

    /// Sends the datagram packing holds, if any.
    pub(crate) fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(packer) = self.packer.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let Some(datagram) = packer.pending() else {
            return Poll::Ready(Ok(()));
        };
        let sent = std::task::ready!(self.mux.shared.socket.poll_send_to(cx, datagram, self.peer));
        packer.sent();
        Poll::Ready(sent.map(|_| ()))
    }

    /// The datagram packing holds, if any.
    pub(crate) fn packed(&self) -> Option<&[u8]> {
        self.packer.as_ref().and_then(Packer::pending)
    }

    /// Sends the datagram packing holds, if any (the handshake's last flight).
    pub(crate) async fn send_pending(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_send_pending(cx)).await
    }

    /// The highest epoch-1 sequence number written through [`AsyncWrite`] while packing
    /// was on.
    pub(crate) fn highest_sent_sequence(&self) -> Option<u64> {
        self.sent_epoch1
    }

    /// This pipe, leaving in its place an inert one that receives nothing and that the mux
    /// does not know (OpenSSL's BIO owns the place; the session takes the pipe back).
    pub(crate) fn take(&mut self) -> Pipe {
        let (_, rx) = super::datagram_queue::queue(1);
        let inert = Pipe {
            mux: self.mux.clone(),
            peer: self.peer,
            id: INERT_PIPE,
            rx,
            received: 0,
            packer: None,
            sent_epoch1: None,
        };
        std::mem::replace(self, inert)
    }

    /// Datagrams this pipe has delivered from its peer.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The mux this pipe belongs to.
    pub fn mux(&self) -> &Arc<DatagramMux> {
        &self.mux
    }

    /// Whether the mux stopped feeding this pipe (shut down, dropped, or pipe replaced).
    pub(crate) fn source_ended(&self) -> bool {
        self.rx.is_closed()
    }

    fn closed(&self) -> TransportError {
        TransportError::Closed {
            peer: self.peer,
            cause: CloseCause::Shutdown,
        }
    }
}

/// The id of a pipe [`Pipe::take`] left behind: no mux slot is ever registered under it.
const INERT_PIPE: u64 = u64::MAX;

impl Drop for Pipe {
    fn drop(&mut self) {
        let id = self.id;
        if id == INERT_PIPE {
            return;
        }
        self.mux.shared.peers().update(self.peer, |slot| {
            let Some(current) = slot.as_mut() else {
                return;
            };
            if current.id == id {
                // A pending candidate takes over the address (its handshake may still
                // complete).
                *slot = current
                    .candidate
                    .take()
                    .map(|(id, tx)| PeerSlot::new(id, tx, Instant::now()));
            } else if current.candidate.as_ref().is_some_and(|(c, _)| *c == id) {
                current.candidate = None;
            }
        });
    }
}

impl DatagramSession for Pipe {
    async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
        match self.rx.recv().await {
            Some(datagram) => {
                self.received += 1;
                Ok(datagram)
            }
            None => Err(self.closed()),
        }
    }

    async fn send(&mut self, datagram: &[u8]) -> Result<(), TransportError> {
        let sent = self
            .mux
            .shared
            .socket
            .send_to(datagram, self.peer)
            .await
            .map_err(|source| TransportError::Io {
                peer: self.peer,
                source,
            })?;
        if sent != datagram.len() {
            return Err(TransportError::ShortSend {
                peer: self.peer,
                len: datagram.len(),
                sent,
            });
        }
        Ok(())
    }

    fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn peer_info(&self) -> PeerInfo {
        PeerInfo {
            addr: self.peer,
            kind: TransportKind::Udp,
            identity: Identity::Address(self.peer.ip()),
        }
    }
}

impl AsyncRead for Pipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // OpenSSL reads once a flight is written: send it.
        std::task::ready!(self.poll_send_pending(cx))?;
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(datagram)) => {
                self.received += 1;
                let n = datagram.len().min(buf.remaining());
                buf.put_slice(datagram.get(..n).unwrap_or_default());
                Poll::Ready(Ok(()))
            }
            // End of stream: nothing written into `buf`.
            Poll::Ready(None) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(plan) = self.packer.as_ref().map(|p| p.plan(buf)) {
            if let Some(seq) =
                super::record_layer::highest_sequence(buf, super::record_layer::EPOCH)
            {
                self.sent_epoch1 = self.sent_epoch1.max(Some(seq));
            }
            if plan.send_pending_first {
                std::task::ready!(self.poll_send_pending(cx))?;
            }
            if let Some(packer) = self.packer.as_mut().filter(|_| plan.hold) {
                packer.hold(buf);
                return Poll::Ready(Ok(buf.len()));
            }
        }
        self.mux.shared.socket.poll_send_to(cx, buf, self.peer)
    }

    /// Sends nothing that packing holds: OpenSSL flushes after every message of a
    /// retransmitted flight, which would unpack it. The next read, a non-handshake record or
    /// `Pipe::send_pending` sends it.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod packer_tests {
    use super::*;

    /// What a pipe sends for a sequence of writes (`Some`) and reads (`None`), as
    /// `poll_write` / `poll_read` apply [`Packer::plan`].
    fn datagrams(mtu: usize, events: &[Option<Vec<u8>>]) -> Vec<Vec<u8>> {
        let mut packer = Packer::new(mtu);
        let mut out = Vec::new();
        let send_pending = |packer: &mut Packer, out: &mut Vec<Vec<u8>>| {
            if let Some(d) = packer.pending() {
                out.push(d.to_vec());
            }
            packer.sent();
        };
        for event in events {
            match event {
                Some(write) => {
                    let plan = packer.plan(write);
                    if plan.send_pending_first {
                        send_pending(&mut packer, &mut out);
                    }
                    if plan.hold {
                        packer.hold(write);
                    } else {
                        out.push(write.clone());
                    }
                }
                None => send_pending(&mut packer, &mut out),
            }
        }
        out
    }

    /// A record of content type `ty`, `len` bytes in all.
    fn record(ty: u8, len: usize) -> Option<Vec<u8>> {
        let mut r = vec![0u8; len];
        r[0] = ty;
        Some(r)
    }

    fn lens(datagrams: &[Vec<u8>]) -> Vec<usize> {
        datagrams.iter().map(Vec::len).collect()
    }

    #[test]
    fn a_flight_goes_out_in_one_datagram_when_the_next_read_comes() {
        // ClientKeyExchange, ChangeCipherSpec, Finished, then a read.
        let out = datagrams(
            1232,
            &[record(22, 30), record(20, 14), record(22, 53), None],
        );
        assert_eq!(lens(&out), [97]);
        assert_eq!((out[0][0], out[0][30], out[0][44]), (22, 20, 22));
        // Nothing pending: a read sends nothing.
        assert!(datagrams(1232, &[None, None]).is_empty());
    }

    #[test]
    fn a_flight_larger_than_the_mtu_is_split_at_record_boundaries() {
        let out = datagrams(
            1000,
            &[
                record(22, 600),
                record(22, 300),
                record(22, 200),
                record(22, 900),
                None,
            ],
        );
        assert_eq!(lens(&out), [900, 200, 900]);
        // A single record above the MTU still goes (alone).
        assert_eq!(lens(&datagrams(100, &[record(22, 150), None])), [150]);
        assert_eq!(
            lens(&datagrams(100, &[record(22, 50), record(22, 50), None])),
            [100]
        );
    }

    #[test]
    fn application_data_and_alerts_go_alone_after_what_is_pending() {
        let out = datagrams(
            1232,
            &[
                record(20, 14),
                record(22, 53),
                record(23, 40),
                record(23, 41),
                record(21, 31),
            ],
        );
        assert_eq!(lens(&out), [67, 40, 41, 31]);
        assert_eq!(
            out.iter().map(|d| d[0]).collect::<Vec<_>>(),
            [20, 23, 23, 21]
        );
    }

    #[test]
    fn held_records_wait_for_a_read_or_the_explicit_send() {
        let mut packer = Packer::new(1232);
        assert_eq!(
            packer.plan(&[22, 1]),
            Plan {
                send_pending_first: false,
                hold: true
            }
        );
        packer.hold(&[22, 1]);
        assert_eq!(
            packer.plan(&[20, 1]),
            Plan {
                send_pending_first: false,
                hold: true
            }
        );
        assert_eq!(
            packer.plan(&[23, 1]),
            Plan {
                send_pending_first: true,
                hold: false
            }
        );
        assert_eq!(packer.pending(), Some(&[22, 1][..]));
        packer.sent();
        assert_eq!(packer.pending(), None);
        assert_eq!(
            packer.plan(&[23, 1]),
            Plan {
                send_pending_first: false,
                hold: false
            }
        );
        assert!(!packer.plan(&[]).hold);
    }
}

#[cfg(test)]
mod peers_tests {
    use super::*;

    fn slot(id: u64) -> (PeerSlot, QueueRx) {
        let (tx, rx) = datagram_queue::queue(1);
        (PeerSlot::new(id, tx, Instant::now()), rx)
    }

    #[test]
    fn counts_follow_every_change_and_return_to_zero() {
        let config = MuxConfig {
            handshakes: true,
            max_pending_per_ip: 2,
            max_sessions_per_ip: 3,
            ..MuxConfig::default()
        };
        let mut peers = Peers::new(true);
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:2".parse().unwrap();
        let (sa, _ra) = slot(1);
        let (sb, _rb) = slot(2);
        peers.update(a, |s| *s = Some(sa));
        assert_eq!(peers.refusal(&config, a.ip(), false), None);
        peers.update(b, |s| *s = Some(sb));
        assert_eq!(peers.pending, 2);
        assert_eq!(
            peers.refusal(&config, a.ip(), false),
            Some("per-IP handshake cap")
        );
        assert_eq!(
            peers.refusal(&config, "10.0.0.2".parse().unwrap(), false),
            None
        );
        peers.update(a, |s| s.as_mut().unwrap().established = true);
        assert_eq!(peers.pending, 1);
        let (candidate_tx, _rc) = datagram_queue::queue(1);
        peers.update(a, |s| {
            s.as_mut().unwrap().candidate = Some((3, candidate_tx))
        });
        assert_eq!(peers.pending, 2, "a candidate is a pending handshake");
        assert_eq!(
            peers.per_ip[&a.ip()],
            Load {
                sessions: 2,
                pending: 2
            }
        );
        peers.update(a, |s| *s = None);
        peers.update(b, |s| *s = None);
        assert_eq!(peers.pending, 0);
        assert!(peers.per_ip.is_empty() && peers.map.is_empty() && peers.addrs.is_empty());
    }

    #[test]
    fn without_handshakes_nothing_is_pending_and_sessions_are_capped_per_ip() {
        let config = MuxConfig {
            max_sessions_per_ip: 1,
            ..MuxConfig::default()
        };
        let mut peers = Peers::new(false);
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let (sa, _ra) = slot(1);
        peers.update(a, |s| *s = Some(sa));
        assert_eq!(peers.pending, 0);
        assert_eq!(
            peers.refusal(&config, a.ip(), false),
            Some("per-IP session cap")
        );
    }

    #[test]
    fn ipv6_addresses_of_one_slash_64_share_the_per_ip_caps() {
        // One host owns a whole /64: without this, it passes the cookie exchange from as
        // many addresses as it likes and fills the total handshake cap on its own.
        let config = MuxConfig {
            handshakes: true,
            max_pending_per_ip: 2,
            ..MuxConfig::default()
        };
        let mut peers = Peers::new(true);
        let mut keep = Vec::new();
        for (i, ip) in ["2001:db8:0:1::1", "2001:db8:0:1::2"].iter().enumerate() {
            let (s, rx) = slot(i as u64);
            keep.push(rx);
            peers.update(SocketAddr::new(ip.parse().unwrap(), 5684), |slot| {
                *slot = Some(s)
            });
        }
        let same_64: IpAddr = "2001:db8:0:1:ffff::9".parse().unwrap();
        assert_eq!(
            peers.refusal(&config, same_64, false),
            Some("per-IP handshake cap")
        );
        let other_64: IpAddr = "2001:db8:0:2::1".parse().unwrap();
        assert_eq!(peers.refusal(&config, other_64, false), None);
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:1".parse().unwrap();
        let (s, rx) = slot(9);
        keep.push(rx);
        peers.update(mapped, |slot| *slot = Some(s));
        assert_eq!(
            peers.per_ip[&"10.0.0.1".parse::<IpAddr>().unwrap()].pending,
            1,
            "an IPv4-mapped address counts as its IPv4 address"
        );
        for addr in [
            SocketAddr::new("2001:db8:0:1::1".parse().unwrap(), 5684),
            SocketAddr::new("2001:db8:0:1::2".parse().unwrap(), 5684),
            mapped,
        ] {
            peers.update(addr, |slot| *slot = None);
        }
        assert!(peers.per_ip.is_empty() && peers.addrs.is_empty());
        assert_eq!(peers.pending, 0);
    }

    #[test]
    fn least_recently_heard_address_of_an_ip() {
        let mut peers = Peers::new(false);
        let addrs: Vec<SocketAddr> = (1..=3)
            .map(|port| SocketAddr::from(([10, 0, 0, 1], port)))
            .collect();
        let mut keep = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let (s, rx) = slot(i as u64);
            keep.push(rx);
            peers.update(*addr, |slot| *slot = Some(s));
        }
        assert_eq!(peers.least_recent(addrs[0].ip()), Some(addrs[0]));
        peers.heard(addrs[0]);
        assert_eq!(peers.least_recent(addrs[0].ip()), Some(addrs[1]));
        peers.update(addrs[1], |slot| *slot = None);
        assert_eq!(peers.least_recent(addrs[0].ip()), Some(addrs[2]));
        assert_eq!(peers.least_recent("10.0.0.9".parse().unwrap()), None);
    }
}
