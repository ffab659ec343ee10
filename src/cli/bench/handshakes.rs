//! `privgw bench handshakes`: DTLS-PSK full handshakes, each from a fresh socket with the
//! project's DTLS client, then one CON GET of `/.well-known/core` over the new session and a
//! close_notify; `--clients` handshakers in a closed loop for `--seconds`, against privgw
//! (`privgw serve` as a child, ServerA's PSK) and against `coap-server-openssl -k`, same run,
//! alternating. The table `handshakes` has handshakes/s of each, the ratio, and each server
//! process's CPU per handshake.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use tokio::task::JoinSet;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::net::UdpSocket;

use super::closed_loop::{Endpoint, Incoming, Template, classify, psk_client};
use super::common::{free_udp_port, libcoap_port, libcoap_server};
use super::psk_handshake::{PskHandshake, Step};
use crate::cli::CliResult;
use crate::cli::bench::gateway::Running;
use crate::cli::bench::process::{ProcStats, clock_ticks_per_second};
use crate::cli::demo::tempfile_dir;
use crate::cli::results::{Cell, Table, median};
use crate::config::EndpointUri;
use crate::transport::dtls::DtlsClient;
use crate::transport::record_layer::{ContentType, Inbound, RecordLayer};

const LIBCOAP_KEY: &str = "handshake-key";

#[derive(Args, Debug, Clone)]
pub struct HandshakeArgs {
    /// Concurrent handshakers (each: fresh socket, handshake, GET, close, again).
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Length of one side's run, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Runs per side (alternating); the last row has the medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The handshaking client (the same one against both servers).
    #[arg(long, value_enum, default_value_t = ClientKind::Lean)]
    pub client: ClientKind,
}

/// What one side did in one run.
#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    ok: u64,
    failed: u64,
    elapsed: Duration,
    cpu_us_per_handshake: f64,
    /// The load generator's own CPU (this process) per handshake.
    client_cpu_us_per_handshake: f64,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Which client does the handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    /// [`super::psk_handshake`]: only what a PSK handshake needs, a fraction of a server's
    /// cost per handshake, so the servers are what is measured.
    Lean,
    /// The project's OpenSSL DTLS client, as a device would dial: about as costly per
    /// handshake as either server.
    Openssl,
}

/// One side's client: who we are to the server, and with which implementation.
#[derive(Clone)]
pub(crate) enum Dialer {
    Lean { identity: Arc<[u8]>, psk: Arc<[u8]> },
    OpenSsl(Arc<DtlsClient>),
}

impl Dialer {
    pub(crate) fn new(kind: ClientKind, identity: &str, key: &str) -> CliResult<Dialer> {
        Ok(match kind {
            ClientKind::Lean => Dialer::Lean {
                identity: identity.as_bytes().into(),
                psk: key.as_bytes().into(),
            },
            ClientKind::Openssl => Dialer::OpenSsl(Arc::new(psk_client(
                identity,
                key,
                Duration::from_secs(10),
            )?)),
        })
    }

    /// One round: a fresh socket, a full handshake, one GET answered 2.05, a close_notify.
    async fn round(&self, server: SocketAddr, template: &Template, seed: u16) -> CliResult<bool> {
        match self {
            Dialer::Lean { identity, psk } => {
                lean_round(server, identity, psk, template, seed).await
            }
            Dialer::OpenSsl(client) => {
                let mut ep = Endpoint::dtls_psk(client, server, seed).await?;
                let budget = AtomicI64::new(1);
                let deadline = Instant::now() + Duration::from_secs(5);
                let tally = ep.run(template, 0x45, 1, &budget, deadline).await?;
                ep.close().await;
                Ok(tally.ok == 1)
            }
        }
    }
}

/// How long the lean client waits for a flight before resending its own, and how often.
const LEAN_RETRANSMIT: Duration = Duration::from_secs(1);
const LEAN_RESENDS: usize = 3;

/// A [`Dialer::Lean`] round over a connected socket.
async fn lean_round(
    server: SocketAddr,
    identity: &[u8],
    psk: &[u8],
    template: &Template,
    seed: u16,
) -> CliResult<bool> {
    let socket = UdpSocket::bind(("127.0.0.1", 0)).await?;
    socket.connect(server).await?;
    let mut random = [0u8; 32];
    SystemRandom::new()
        .fill(&mut random)
        .map_err(|_| "no system randomness")?;
    let (mut hs, hello) = PskHandshake::start(identity, psk, random);
    socket.send(&hello).await?;
    let mut buf = vec![0u8; 2048];
    let mut resends = 0;
    loop {
        match tokio::time::timeout(LEAN_RETRANSMIT, socket.recv(&mut buf)).await {
            Ok(received) => match hs.on_datagram(&buf[..received?])? {
                Step::Send(flight) => drop(socket.send(&flight).await?),
                Step::Wait => {}
                Step::Established => break,
            },
            Err(_elapsed) if resends < LEAN_RESENDS => {
                resends += 1;
                if let Some(flight) = hs.resend() {
                    socket.send(&flight).await?;
                }
            }
            Err(_elapsed) => return Err("handshake timed out".into()),
        }
    }
    let mut records = hs.into_records().ok_or("handshake not established")?;
    let mut request = Vec::with_capacity(32);
    template.write(seed, u32::from(seed), &mut request);
    // A CON: resent (sealed afresh: a record sent twice is a replay) until answered.
    let mut answered = None;
    for _ in 0..=LEAN_RESENDS {
        socket
            .send(&records.seal(ContentType::ApplicationData, &request)?)
            .await?;
        answered = lean_response(&socket, &mut records, &mut buf, u32::from(seed)).await?;
        if answered.is_some() {
            break;
        }
    }
    socket
        .send(&records.seal(ContentType::Alert, &[1, 0])?)
        .await?;
    answered.ok_or_else(|| "no response to the GET".into())
}

/// Whether the response to `token` came and was a 2.05; `None` if nothing came within
/// [`LEAN_RETRANSMIT`].
async fn lean_response(
    socket: &UdpSocket,
    records: &mut RecordLayer,
    buf: &mut [u8],
    token: u32,
) -> CliResult<Option<bool>> {
    let deadline = tokio::time::Instant::now() + LEAN_RETRANSMIT;
    loop {
        let Ok(received) = tokio::time::timeout_at(deadline, socket.recv(buf)).await else {
            return Ok(None);
        };
        let mut datagram = &buf[..received?];
        while let Some(record) = records.open_next(&mut datagram) {
            if let Inbound::Data(message) = record
                && let Incoming::Response { token: t, code, .. } = classify(&message)
                && t == Some(token)
            {
                return Ok(Some(code == 0x45));
            }
        }
    }
}

/// Handshakes completed and failed so far, shared by the handshakers and whoever reads them
/// while they run (`bench soak` samples them).
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

impl Counts {
    /// (completed, failed).
    pub(crate) fn read(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// One handshaker: rounds until `until`, each counted in `counts`.
async fn handshaker(
    dialer: Dialer,
    server: SocketAddr,
    seed: u16,
    until: Instant,
    counts: Arc<Counts>,
) {
    let template = Template::get("/.well-known/core").expect("a static template encodes");
    let mut round = 0u16;
    while Instant::now() < until {
        round = round.wrapping_add(1);
        let attempt = dialer.round(server, &template, seed.wrapping_mul(31).wrapping_add(round));
        let counter = match tokio::time::timeout(Duration::from_secs(15), attempt).await {
            Ok(Ok(true)) => &counts.ok,
            _ => &counts.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// `clients` handshakers on one thread of their own until `until`: a load generator spread
/// over a multi-threaded runtime spent a third of its CPU waking its own workers.
pub(crate) fn handshakers(
    dialer: Dialer,
    server: SocketAddr,
    clients: usize,
    until: Instant,
    counts: Arc<Counts>,
) -> CliResult<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut set = JoinSet::new();
        for i in 0..clients {
            let seed = u16::try_from(i).unwrap_or(0);
            set.spawn(handshaker(
                dialer.clone(),
                server,
                seed,
                until,
                counts.clone(),
            ));
        }
        while let Some(joined) = set.join_next().await {
            joined?;
        }
        Ok(())
    })
}

async fn side(
    client: &Dialer,
    server: SocketAddr,
    clients: usize,
    seconds: f64,
    pid: u32,
    hz: f64,
) -> CliResult<Outcome> {
    let cpu_before = ProcStats::of(pid).cpu_ticks;
    let client_before = ProcStats::of(std::process::id()).cpu_ticks;
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(seconds);
    let dialer = client.clone();
    let counts = Arc::new(Counts::default());
    let shared = counts.clone();
    tokio::task::spawn_blocking(move || handshakers(dialer, server, clients, until, shared))
        .await??;
    let (ok, failed) = counts.read();
    let mut o = Outcome {
        ok,
        failed,
        ..Outcome::default()
    };
    o.elapsed = t0.elapsed();
    let cpu = ProcStats::of(pid).cpu_ticks.saturating_sub(cpu_before) as f64 / hz;
    let client = ProcStats::of(std::process::id())
        .cpu_ticks
        .saturating_sub(client_before) as f64
        / hz;
    o.cpu_us_per_handshake = 1e6 * cpu / (o.ok.max(1) as f64);
    o.client_cpu_us_per_handshake = 1e6 * client / (o.ok.max(1) as f64);
    Ok(o)
}

pub fn table() -> Table {
    Table::new(
        "handshakes",
        &[
            "clients",
            "run",
            "privgw_hs_per_s",
            "libcoap_hs_per_s",
            "ratio",
            "privgw_cpu_us_per_hs",
            "libcoap_cpu_us_per_hs",
            "client",
            "client_cpu_us_per_hs",
            "privgw_failed",
            "libcoap_failed",
        ],
    )
}

/// The load generator's CPU per handshake over both sides of a run.
fn client_cpu(p: Outcome, l: Outcome) -> f64 {
    let total =
        p.client_cpu_us_per_handshake * p.ok as f64 + l.client_cpu_us_per_handshake * l.ok as f64;
    total / ((p.ok + l.ok).max(1) as f64)
}

fn row(clients: usize, run: &str, client: ClientKind, p: Outcome, l: Outcome) -> Vec<Cell> {
    vec![
        clients.into(),
        run.into(),
        p.rate().into(),
        l.rate().into(),
        (p.rate() / l.rate().max(1e-9)).into(),
        p.cpu_us_per_handshake.into(),
        l.cpu_us_per_handshake.into(),
        format!("{client:?}").to_lowercase().into(),
        client_cpu(p, l).into(),
        p.failed.into(),
        l.failed.into(),
    ]
}

pub async fn run(args: HandshakeArgs, out: &Path) -> CliResult<()> {
    if args.clients == 0 || args.clients > 256 {
        return Err("--clients must be 1 to 256".into());
    }
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    let dir = tempfile_dir()?;
    let result = measure(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result?.emit(out)?;
    Ok(())
}

async fn measure(args: &HandshakeArgs, dir: &Path) -> CliResult<Table> {
    let port = libcoap_port()?;
    let libcoap = libcoap_server(port, &["-k", LIBCOAP_KEY], &dir.join("libcoap.log"))?;
    let libcoap_dtls: SocketAddr = ([127, 0, 0, 1], port + 1).into();
    let secure: EndpointUri = format!("coaps://127.0.0.1:{}", free_udp_port()?).parse()?;
    let toml = format!(
        "[gateway]\nlisten = [\"{secure}\"]\nstore = {:?}\n\n\
         [[servers]]\nid = \"ServerA\"\nssid = 101\npsk_identity = \"serverA\"\npsk_key = \"secretA\"\n",
        dir.join("hs.redb")
    );
    let mut gateway = Running::start(&toml, dir, "handshakes", false, secure).await?;
    let outcome = async {
        drop(gateway.client(Duration::from_secs(30)).await?);
        let hz = clock_ticks_per_second();
        let privgw = Dialer::new(args.client, "serverA", "secretA")?;
        let theirs = Dialer::new(args.client, "hsbench", LIBCOAP_KEY)?;
        // libcoap may still be starting: one handshake must work before timing.
        let mut ready = false;
        for _ in 0..25 {
            if side(&theirs, libcoap_dtls, 1, 0.01, libcoap.0.id(), hz).await?.ok > 0 {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !ready {
            return Err(format!("coap-server-openssl -k on {libcoap_dtls} completed no handshake").into());
        }
        eprintln!(
            "privgw bench handshakes: {} concurrent handshakers, {} s per side per run, privgw ({}) on {secure} vs coap-server-openssl (pid {}) on coaps://{libcoap_dtls}",
            args.clients,
            args.seconds,
            gateway.what(),
            libcoap.0.id()
        );
        let mut table = table();
        let (mut pr, mut lr, mut pc, mut lc) = (vec![], vec![], vec![], vec![]);
        let mut cc = vec![];
        let (mut pf, mut lf) = (0, 0);
        for run in 0..args.runs {
            let mut sides = [Outcome::default(); 2];
            let order = if run % 2 == 0 { [1, 0] } else { [0, 1] };
            for k in order {
                sides[k] = if k == 0 {
                    side(&privgw, secure.addr, args.clients, args.seconds, gateway.pid(), hz).await?
                } else {
                    side(&theirs, libcoap_dtls, args.clients, args.seconds, libcoap.0.id(), hz).await?
                };
            }
            let [p, l] = sides;
            eprintln!(
                "  run {}: privgw {:.0}/s ({} ok, {} failed, {:.0} µs CPU each); libcoap {:.0}/s ({} ok, {} failed, {:.0} µs CPU each); ratio {:.2}; client {:.0} µs CPU each",
                run + 1,
                p.rate(),
                p.ok,
                p.failed,
                p.cpu_us_per_handshake,
                l.rate(),
                l.ok,
                l.failed,
                l.cpu_us_per_handshake,
                p.rate() / l.rate().max(1e-9),
                client_cpu(p, l)
            );
            table.push(row(args.clients, &(run + 1).to_string(), args.client, p, l));
            cc.push(client_cpu(p, l));
            pr.push(p.rate());
            lr.push(l.rate());
            pc.push(p.cpu_us_per_handshake);
            lc.push(l.cpu_us_per_handshake);
            pf += p.failed;
            lf += l.failed;
        }
        // The median row: rates as medians, so ok/elapsed is rebuilt from the median rate.
        let client = median(&mut cc);
        let med = |rate: f64, cpu: f64, failed: u64| Outcome {
            ok: (rate * 1000.0).round() as u64,
            failed,
            elapsed: Duration::from_secs(1000),
            cpu_us_per_handshake: cpu,
            client_cpu_us_per_handshake: client,
        };
        table.push(row(
            args.clients,
            "median",
            args.client,
            med(median(&mut pr), median(&mut pc), pf),
            med(median(&mut lr), median(&mut lc), lf),
        ));
        Ok(table)
    }
    .await;
    gateway.stop().await;
    drop(libcoap);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handshake_row_carries_both_rates_and_their_ratio() {
        let o = |ok, secs| Outcome {
            ok,
            failed: 0,
            elapsed: Duration::from_secs(secs),
            cpu_us_per_handshake: 100.0,
            client_cpu_us_per_handshake: 30.0,
        };
        let r = row(4, "1", ClientKind::Lean, o(300, 1), o(200, 2));
        assert_eq!(r[2], Cell::Float(300.0));
        assert_eq!(r[3], Cell::Float(100.0));
        assert_eq!(r[4], Cell::Float(3.0));
        assert_eq!(r[8], Cell::Float(30.0));
        assert_eq!(r.len(), table().columns.len());
    }
}
