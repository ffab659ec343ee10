//! `privgw bench handshakes`: DTLS-PSK full handshakes, each from a fresh socket with the
//! project's DTLS client, then one CON GET of `/.well-known/core` over the new session and a
//! close_notify; `--clients` handshakers in a closed loop for `--seconds`, against privgw
//! (`privgw serve` as a child, ServerA's PSK) and against `coap-server-openssl -k`, same run,
//! alternating. The table `handshakes` has handshakes/s of each, the ratio, and each server
//! process's CPU per handshake.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::task::JoinSet;

use super::closed_loop::{Endpoint, Template, psk_client};
use super::common::{free_udp_port, libcoap_port, libcoap_server};
use crate::cli::CliResult;
use crate::cli::bench::gateway::Running;
use crate::cli::bench::process::{ProcStats, clock_ticks_per_second};
use crate::cli::demo::tempfile_dir;
use crate::cli::results::{Cell, Table, median};
use crate::config::EndpointUri;
use crate::transport::dtls::DtlsClient;

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
}

/// What one side did in one run.
#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    ok: u64,
    failed: u64,
    elapsed: Duration,
    cpu_us_per_handshake: f64,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One handshaker: handshake, GET, close, until `until`. Returns (completed, failed).
async fn handshaker(
    client: Arc<DtlsClient>,
    server: SocketAddr,
    seed: u16,
    until: Instant,
) -> (u64, u64) {
    let template = Template::get("/.well-known/core").expect("a static template encodes");
    let (mut ok, mut failed) = (0, 0);
    let mut round = 0u16;
    while Instant::now() < until {
        round = round.wrapping_add(1);
        let attempt = async {
            let mut ep =
                Endpoint::dtls_psk(&client, server, seed.wrapping_mul(31).wrapping_add(round))
                    .await?;
            let budget = AtomicI64::new(1);
            let tally = ep
                .run(
                    &template,
                    0x45,
                    1,
                    &budget,
                    Instant::now() + Duration::from_secs(5),
                )
                .await?;
            ep.close().await;
            CliResult::Ok(tally.ok == 1)
        };
        match tokio::time::timeout(Duration::from_secs(15), attempt).await {
            Ok(Ok(true)) => ok += 1,
            _ => failed += 1,
        }
    }
    (ok, failed)
}

async fn side(
    client: &Arc<DtlsClient>,
    server: SocketAddr,
    clients: usize,
    seconds: f64,
    pid: u32,
    hz: f64,
) -> CliResult<Outcome> {
    let cpu_before = ProcStats::of(pid).cpu_ticks;
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(seconds);
    let mut set = JoinSet::new();
    for i in 0..clients {
        set.spawn(handshaker(
            client.clone(),
            server,
            u16::try_from(i).unwrap_or(0),
            until,
        ));
    }
    let mut o = Outcome::default();
    while let Some(joined) = set.join_next().await {
        let (ok, failed) = joined?;
        o.ok += ok;
        o.failed += failed;
    }
    o.elapsed = t0.elapsed();
    let cpu = ProcStats::of(pid).cpu_ticks.saturating_sub(cpu_before) as f64 / hz;
    o.cpu_us_per_handshake = 1e6 * cpu / (o.ok.max(1) as f64);
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
            "privgw_failed",
            "libcoap_failed",
        ],
    )
}

fn row(clients: usize, run: &str, p: Outcome, l: Outcome) -> Vec<Cell> {
    vec![
        clients.into(),
        run.into(),
        p.rate().into(),
        l.rate().into(),
        (p.rate() / l.rate().max(1e-9)).into(),
        p.cpu_us_per_handshake.into(),
        l.cpu_us_per_handshake.into(),
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
        let privgw = Arc::new(psk_client("serverA", "secretA", Duration::from_secs(10))?);
        let theirs = Arc::new(psk_client("hsbench", LIBCOAP_KEY, Duration::from_secs(10))?);
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
                "  run {}: privgw {:.0}/s ({} ok, {} failed, {:.0} µs CPU each); libcoap {:.0}/s ({} ok, {} failed, {:.0} µs CPU each); ratio {:.2}",
                run + 1,
                p.rate(),
                p.ok,
                p.failed,
                p.cpu_us_per_handshake,
                l.rate(),
                l.ok,
                l.failed,
                l.cpu_us_per_handshake,
                p.rate() / l.rate().max(1e-9)
            );
            table.push(row(args.clients, &(run + 1).to_string(), p, l));
            pr.push(p.rate());
            lr.push(l.rate());
            pc.push(p.cpu_us_per_handshake);
            lc.push(l.cpu_us_per_handshake);
            pf += p.failed;
            lf += l.failed;
        }
        // The median row: rates as medians, so ok/elapsed is rebuilt from the median rate.
        let med = |rate: f64, cpu: f64, failed: u64| Outcome {
            ok: (rate * 1000.0).round() as u64,
            failed,
            elapsed: Duration::from_secs(1000),
            cpu_us_per_handshake: cpu,
        };
        table.push(row(
            args.clients,
            "median",
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
        };
        let r = row(4, "1", o(300, 1), o(200, 2));
        assert_eq!(r[2], Cell::Float(300.0));
        assert_eq!(r[3], Cell::Float(100.0));
        assert_eq!(r[4], Cell::Float(3.0));
        assert_eq!(r.len(), table().columns.len());
    }
}
