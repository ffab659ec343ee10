//! One UDP socket, many peers: demultiplexing datagrams by source address.
//!
//! [`DatagramMux`] owns one bound [`UdpSocket`] and one background receive task. The task
//! routes every datagram by its source address to that peer's [`Pipe`] through a bounded
//! queue. It never blocks: a full queue drops the datagram (as a congested network would) and
//! counts it. In the server role (`accept = true`) a datagram from an unknown address creates a
//! new [`Pipe`], handed out through a bounded accept queue; the number of live pipes is capped
//! so a flood of spoofed source addresses cannot exhaust memory.
//!
//! This module owns addresses and queues only. It does not own DTLS (see
//! [`super::dtls`]), CoAP, or any notion of a session beyond "datagrams from this address" —
//! with one exception, RFC 6347 §4.2.8: once the DTLS server marks a pipe established, a new
//! ClientHello from the same address opens a *candidate* pipe (handed out like a new peer)
//! that receives the handshake records (content types 20, 22) while the old pipe keeps the
//! rest; when the candidate's handshake completes it takes the address over. Only the record
//! header's content type, epoch and handshake type are read to decide this.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::AbortHandle;

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
}

impl Default for MuxConfig {
    fn default() -> Self {
        MuxConfig {
            accept: false,
            max_sessions: 65_536,
            queue_len: 64,
            accept_backlog: 1024,
            recv_buffer: 4 << 20,
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
    peers: Mutex<HashMap<SocketAddr, PeerSlot>>,
    next_id: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Debug)]
struct PeerSlot {
    /// Distinguishes a replaced pipe from its successor, so the old one's `Drop` leaves the
    /// new slot alone.
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
    /// Set once a DTLS server session is established on this pipe: a new ClientHello from
    /// the same address then starts a candidate session instead of reaching the old one.
    established: bool,
    /// A handshake in progress from the same address (RFC 6347 §4.2.8). It receives the
    /// handshake records (content types 20 and 22); the old session keeps the rest until the
    /// candidate completes and is promoted, so a spoofed ClientHello cannot end a session.
    candidate: Option<(u64, mpsc::Sender<Vec<u8>>)>,
}

impl PeerSlot {
    fn new(id: u64, tx: mpsc::Sender<Vec<u8>>) -> Self {
        PeerSlot {
            id,
            tx,
            established: false,
            candidate: None,
        }
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
    fn peers(&self) -> MutexGuard<'_, HashMap<SocketAddr, PeerSlot>> {
        self.peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
            config,
            peers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
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
        let (tx, rx) = mpsc::channel(self.shared.config.queue_len);
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared.peers().insert(peer, PeerSlot::new(id, tx));
        Pipe {
            mux: self.clone(),
            peer,
            id,
            rx,
            received: 0,
        }
    }

    /// Marks `pipe`'s peer as having an established DTLS server session: from now on a new
    /// ClientHello from that address starts a candidate session (RFC 6347 §4.2.8).
    pub(crate) fn mark_established(&self, pipe: &Pipe) {
        let mut peers = self.shared.peers();
        if let Some(slot) = peers.get_mut(&pipe.peer) {
            if slot.id == pipe.id {
                slot.established = true;
            } else if slot
                .candidate
                .as_ref()
                .is_some_and(|(id, _)| *id == pipe.id)
            {
                // The candidate completed its handshake: it becomes the peer's session and
                // the old one's queue closes (its session ends).
                if let Some((id, tx)) = slot.candidate.take() {
                    *slot = PeerSlot::new(id, tx);
                    slot.established = true;
                    tracing::info!(peer = %pipe.peer, "new DTLS session replaces the old one");
                }
            }
        }
    }

    /// Number of live pipes.
    pub fn sessions(&self) -> usize {
        self.shared.peers().len()
    }

    /// Datagrams dropped so far: full per-peer or accept queues, the session cap, unknown
    /// peers when not accepting.
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

/// The one receive task of a mux. Holds the socket, never the mux itself (only a [`Weak`] to
/// hand new pipes a strong reference), so dropping the mux ends it.
async fn receive_loop(
    shared: Arc<Shared>,
    mux: Weak<DatagramMux>,
    accept_tx: Option<mpsc::Sender<Pipe>>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, from) = match shared.socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                // Unconnected UDP sockets can report ICMP errors of earlier sends here
                // (Windows, or Linux with IP_RECVERR). They concern one peer, not the socket.
                tracing::debug!(local = %shared.local, error = %err, "recv_from failed");
                tokio::task::yield_now().await;
                continue;
            }
        };
        let datagram = buf.get(..len).unwrap_or_default().to_vec();
        route(&shared, &mux, accept_tx.as_ref(), from, datagram);
    }
}

/// Deliver one datagram: known peer → its queue; unknown → a new pipe if accepting and under
/// the cap; otherwise drop. Never blocks.
fn route(
    shared: &Shared,
    mux: &Weak<DatagramMux>,
    accept_tx: Option<&mpsc::Sender<Pipe>>,
    from: SocketAddr,
    datagram: Vec<u8>,
) {
    let mut peers = shared.peers();
    if let Some(slot) = peers.get_mut(&from) {
        let datagram = if slot.established && is_handshake_record(&datagram) {
            match route_to_candidate(shared, mux, accept_tx, from, slot, datagram) {
                Some(datagram) => datagram,
                None => return,
            }
        } else {
            datagram
        };
        match slot.tx.try_send(datagram) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %from, "peer queue full, datagram dropped");
            }
            Err(TrySendError::Closed(_)) => {
                // The pipe is being dropped; its Drop removes the slot.
                shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        return;
    }
    let Some(accept_tx) = accept_tx else {
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = %from, "datagram from unknown peer dropped (not accepting)");
        return;
    };
    if peers.len() >= shared.config.max_sessions {
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::info!(peer = %from, cap = shared.config.max_sessions, "session cap reached, new peer dropped");
        return;
    }
    let Some(mux) = mux.upgrade() else {
        // The mux is going away; its Drop aborts this task.
        return;
    };
    let permit = match accept_tx.try_reserve() {
        Ok(permit) => permit,
        Err(_) => {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::info!(peer = %from, "accept queue full or closed, new peer dropped");
            return;
        }
    };
    let (tx, rx) = mpsc::channel(shared.config.queue_len);
    // Cannot fail: a fresh channel with capacity >= 1.
    let _ = tx.try_send(datagram);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    peers.insert(from, PeerSlot::new(id, tx));
    drop(peers);
    tracing::debug!(peer = %from, "new peer");
    permit.send(Pipe {
        mux,
        peer: from,
        id,
        rx,
        received: 0,
    });
}

/// A handshake record from a peer that has an established session: it feeds the candidate
/// session if one is pending, or a ClientHello starts one (handed to the server like a new
/// peer). Anything else goes back to the caller for the established session (a
/// retransmitted last flight of its own handshake).
fn route_to_candidate(
    shared: &Shared,
    mux: &Weak<DatagramMux>,
    accept_tx: Option<&mpsc::Sender<Pipe>>,
    from: SocketAddr,
    slot: &mut PeerSlot,
    datagram: Vec<u8>,
) -> Option<Vec<u8>> {
    if let Some((_, tx)) = &slot.candidate {
        if !tx.is_closed() {
            if tx.try_send(datagram).is_err() {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return None;
        }
        slot.candidate = None;
    }
    if !is_client_hello(&datagram) {
        return Some(datagram);
    }
    let (Some(accept_tx), Some(mux)) = (accept_tx, mux.upgrade()) else {
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let Ok(permit) = accept_tx.try_reserve() else {
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let (tx, rx) = mpsc::channel(shared.config.queue_len);
    let _ = tx.try_send(datagram);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    slot.candidate = Some((id, tx));
    tracing::debug!(peer = %from, "ClientHello on an established session: candidate session");
    permit.send(Pipe {
        mux,
        peer: from,
        id,
        rx,
        received: 0,
    });
    None
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
    rx: mpsc::Receiver<Vec<u8>>,
    /// Datagrams delivered so far (tells a silent peer from one that answered).
    received: u64,
}

impl Pipe {
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

impl Drop for Pipe {
    fn drop(&mut self) {
        let mut peers = self.mux.shared.peers();
        let Some(slot) = peers.get_mut(&self.peer) else {
            return;
        };
        if slot.id == self.id {
            // A pending candidate takes over the address (its handshake may still complete).
            match slot.candidate.take() {
                Some((id, tx)) => *slot = PeerSlot::new(id, tx),
                None => {
                    peers.remove(&self.peer);
                }
            }
        } else if slot
            .candidate
            .as_ref()
            .is_some_and(|(id, _)| *id == self.id)
        {
            slot.candidate = None;
        }
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
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.mux.shared.socket.poll_send_to(cx, buf, self.peer)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
