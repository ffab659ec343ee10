//! A lossy loopback link for tests: a UDP relay between the gateway and one simulated
//! device that drops, delays, duplicates and reorders datagrams, and can cut one direction
//! off for a while (an outage window). This kernel has no `tc netem`, so tests bring their own.
//!
//! Two parts, as elsewhere in privgw:
//!
//! * [`LinkModel`] — sans-IO and deterministic: given the time since start, a direction and
//!   a datagram, it decides what is delivered and after how long. Its randomness is a seeded
//!   PRNG per direction, so a test replays the same loss pattern for the same datagram
//!   sequence.
//! * [`Relay`] — the tokio driver: one front socket the gateway talks to (set a device's
//!   `uri` to [`Relay::addr`]), one upstream socket per gateway source address towards the
//!   device, and a timer per delayed datagram. Dropping the relay stops it.
//!
//! Per direction ([`Direction`]): loss probability, fixed delay plus uniform jitter,
//! duplication probability, reordering (hold one datagram and release it after the next one,
//! or after [`Direction::hold_max`]), and an outage window in which everything is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Which way a datagram travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Gateway → device (requests, client handshake flights).
    ToDevice,
    /// Device → gateway (responses, server handshake flights).
    ToGateway,
}

impl Dir {
    fn index(self) -> usize {
        match self {
            Dir::ToDevice => 0,
            Dir::ToGateway => 1,
        }
    }
}

/// What one direction of the link does to datagrams.
#[derive(Debug, Clone)]
pub struct Direction {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Every delivered datagram is delayed by this much ...
    pub delay: Duration,
    /// ... plus a uniform random extra in `[0, jitter)`.
    pub jitter: Duration,
    /// Probability that a delivered datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back and released after the next one.
    pub reorder: f64,
    /// A held datagram goes out alone after this long if no other one follows.
    pub hold_max: Duration,
    /// Everything is dropped between these two offsets from the relay's start.
    pub outage: Option<(Duration, Duration)>,
}

impl Default for Direction {
    fn default() -> Self {
        Direction {
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            duplicate: 0.0,
            reorder: 0.0,
            hold_max: Duration::from_millis(200),
            outage: None,
        }
    }
}

impl Direction {
    /// Independent loss `loss` and a fixed `delay`.
    pub fn lossy(loss: f64, delay: Duration) -> Self {
        Direction {
            loss,
            delay,
            ..Direction::default()
        }
    }
}

/// Both directions of a link and the seed of its randomness.
#[derive(Debug, Clone, Default)]
pub struct LinkConfig {
    pub to_device: Direction,
    pub to_gateway: Direction,
    pub seed: u64,
}

impl LinkConfig {
    /// The same behaviour both ways.
    pub fn symmetric(direction: Direction, seed: u64) -> Self {
        LinkConfig {
            to_device: direction.clone(),
            to_gateway: direction,
            seed,
        }
    }
}

/// What happened to the datagrams of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Datagrams offered to the link.
    pub seen: u64,
    /// Dropped by random loss.
    pub lost: u64,
    /// Dropped inside an outage window.
    pub outage: u64,
    /// Delivered twice.
    pub duplicated: u64,
    /// Held back and released after a later one (or alone after `hold_max`).
    pub reordered: u64,
}

/// SplitMix64: small, seedable, good enough to draw loss decisions.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
}

/// A datagram to deliver `after` from now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub after: Duration,
    pub datagram: Vec<u8>,
}

/// One direction's state: its parameters, its PRNG, the datagram held for reordering.
#[derive(Debug)]
struct Lane {
    cfg: Direction,
    rng: Rng,
    /// A held datagram and its sequence number (to expire the right one).
    held: Option<(u64, Vec<u8>)>,
    next_seq: u64,
    stats: DirStats,
}

impl Lane {
    fn new(cfg: Direction, seed: u64) -> Self {
        Lane {
            cfg,
            rng: Rng(seed),
            held: None,
            next_seq: 0,
            stats: DirStats::default(),
        }
    }

    fn in_outage(&self, elapsed: Duration) -> bool {
        self.cfg
            .outage
            .is_some_and(|(from, to)| from <= elapsed && elapsed < to)
    }

    fn delay(&mut self) -> Duration {
        let jitter = self.cfg.jitter.mul_f64(self.rng.unit());
        self.cfg.delay + jitter
    }

    /// Delivers `datagram` (and a duplicate, maybe) into `out`.
    fn deliver(&mut self, datagram: Vec<u8>, out: &mut Vec<Delivery>) {
        if self.rng.chance(self.cfg.duplicate) {
            self.stats.duplicated += 1;
            let after = self.delay();
            out.push(Delivery {
                after,
                datagram: datagram.clone(),
            });
        }
        let after = self.delay();
        out.push(Delivery { after, datagram });
    }

    fn offer(&mut self, elapsed: Duration, datagram: Vec<u8>) -> (Vec<Delivery>, Option<u64>) {
        self.stats.seen += 1;
        let mut out = Vec::new();
        if self.in_outage(elapsed) {
            self.stats.outage += 1;
            return (out, None);
        }
        if self.rng.chance(self.cfg.loss) {
            self.stats.lost += 1;
            return (out, None);
        }
        if let Some((_, held)) = self.held.take() {
            // Swap: the newer datagram overtakes the held one.
            self.deliver(datagram, &mut out);
            self.deliver(held, &mut out);
            if let [.., a, b] = out.as_mut_slice() {
                b.after = b.after.max(a.after + Duration::from_millis(1));
            }
            return (out, None);
        }
        if self.rng.chance(self.cfg.reorder) {
            self.stats.reordered += 1;
            let seq = self.next_seq;
            self.next_seq += 1;
            self.held = Some((seq, datagram));
            return (out, Some(seq));
        }
        self.deliver(datagram, &mut out);
        (out, None)
    }

    fn expire(&mut self, seq: u64) -> Vec<Delivery> {
        let mut out = Vec::new();
        if self.held.as_ref().is_some_and(|(s, _)| *s == seq) {
            if let Some((_, held)) = self.held.take() {
                self.deliver(held, &mut out);
            }
        }
        out
    }
}

/// The sans-IO decision model of a link. Never reads the clock: the caller passes the time
/// since the link started.
#[derive(Debug)]
pub struct LinkModel {
    lanes: [Lane; 2],
}

/// The result of offering a datagram: what to deliver now, and whether one was held back
/// (then call [`LinkModel::expire`] with this number after `hold_max`).
#[derive(Debug, Default)]
pub struct Decision {
    pub deliveries: Vec<Delivery>,
    pub held: Option<u64>,
}

impl LinkModel {
    pub fn new(cfg: LinkConfig) -> Self {
        // Distinct, seed-derived streams per direction.
        let mut seeder = Rng(cfg.seed);
        let a = seeder.next_u64();
        let b = seeder.next_u64();
        LinkModel {
            lanes: [Lane::new(cfg.to_device, a), Lane::new(cfg.to_gateway, b)],
        }
    }

    /// Decides the fate of one datagram travelling `dir`, `elapsed` after the start.
    pub fn offer(&mut self, elapsed: Duration, dir: Dir, datagram: Vec<u8>) -> Decision {
        let (deliveries, held) = self.lanes[dir.index()].offer(elapsed, datagram);
        Decision { deliveries, held }
    }

    /// Releases the datagram held under `seq` if no later one has released it yet.
    pub fn expire(&mut self, dir: Dir, seq: u64) -> Vec<Delivery> {
        self.lanes[dir.index()].expire(seq)
    }

    /// How long a held datagram of `dir` waits at most.
    pub fn hold_max(&self, dir: Dir) -> Duration {
        self.lanes[dir.index()].cfg.hold_max
    }

    /// Drops everything travelling `dir` between the two offsets from the start.
    pub fn set_outage(&mut self, dir: Dir, from: Duration, to: Duration) {
        self.lanes[dir.index()].cfg.outage = Some((from, to));
    }

    pub fn stats(&self, dir: Dir) -> DirStats {
        self.lanes[dir.index()].stats
    }
}

/// A running relay in front of one device.
pub struct Relay {
    addr: SocketAddr,
    start: Instant,
    model: Arc<Mutex<LinkModel>>,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The shared state of a relay's tasks.
#[derive(Clone)]
struct Shared {
    start: Instant,
    model: Arc<Mutex<LinkModel>>,
    front: Arc<UdpSocket>,
    device: SocketAddr,
}

fn lock(model: &Mutex<LinkModel>) -> MutexGuard<'_, LinkModel> {
    model.lock().unwrap_or_else(|p| p.into_inner())
}

impl Relay {
    /// Starts a relay on `127.0.0.1:0` forwarding to `device`.
    pub async fn start(device: SocketAddr, cfg: LinkConfig) -> std::io::Result<Relay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let start = Instant::now();
        let model = Arc::new(Mutex::new(LinkModel::new(cfg)));
        let shared = Shared {
            start,
            model: model.clone(),
            front,
            device,
        };
        let task = tokio::spawn(run_front(shared));
        Ok(Relay {
            addr,
            start,
            model,
            task,
        })
    }

    /// Where the gateway should send (the device's `uri` address).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops everything travelling `dir` from `from_now` on, for `length`.
    pub fn outage(&self, dir: Dir, from_now: Duration, length: Duration) {
        let from = self.start.elapsed() + from_now;
        lock(&self.model).set_outage(dir, from, from + length);
    }

    pub fn stats(&self, dir: Dir) -> DirStats {
        lock(&self.model).stats(dir)
    }
}

/// Receives from the gateway side; one upstream socket (and reader task) per source.
async fn run_front(shared: Shared) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut readers = JoinSet::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = shared.front.recv_from(&mut buf).await else {
            continue;
        };
        let datagram = buf.get(..n).unwrap_or_default().to_vec();
        let upstream = match upstreams.get(&from) {
            Some(u) => u.clone(),
            None => {
                let Ok(sock) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                let sock = Arc::new(sock);
                upstreams.insert(from, sock.clone());
                readers.spawn(run_upstream(shared.clone(), sock.clone(), from));
                sock
            }
        };
        let out = Out {
            sock: upstream,
            to: shared.device,
        };
        offer(&shared, Dir::ToDevice, datagram, out);
    }
}

/// Receives the device's datagrams for gateway source `client`.
async fn run_upstream(shared: Shared, sock: Arc<UdpSocket>, client: SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, _)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let datagram = buf.get(..n).unwrap_or_default().to_vec();
        let out = Out {
            sock: shared.front.clone(),
            to: client,
        };
        offer(&shared, Dir::ToGateway, datagram, out);
    }
}

/// Where a direction's datagrams go: a socket and a destination.
#[derive(Clone)]
struct Out {
    sock: Arc<UdpSocket>,
    to: SocketAddr,
}

fn offer(shared: &Shared, dir: Dir, datagram: Vec<u8>, out: Out) {
    let (decision, hold_max) = {
        let mut model = lock(&shared.model);
        let d = model.offer(shared.start.elapsed(), dir, datagram);
        (d, model.hold_max(dir))
    };
    send_all(decision.deliveries, &out);
    if let Some(seq) = decision.held {
        let model = shared.model.clone();
        tokio::spawn(async move {
            tokio::time::sleep(hold_max).await;
            let released = lock(&model).expire(dir, seq);
            send_all(released, &out);
        });
    }
}

fn send_all(deliveries: Vec<Delivery>, out: &Out) {
    for d in deliveries {
        let Out { sock, to } = out.clone();
        if d.after.is_zero() {
            let _ = sock.try_send_to(&d.datagram, to);
            continue;
        }
        tokio::spawn(async move {
            tokio::time::sleep(d.after).await;
            let _ = sock.send_to(&d.datagram, to).await;
        });
    }
}
