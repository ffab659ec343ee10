//! `privgw bench soak`: whether the gateway's memory stays bounded under sustained peak load.
//! A child `privgw serve` takes, for `--seconds`, closed-loop CON GETs of its data resource
//! (`/GwConfig/Privileges`, ServerB over NoSec UDP, `--shape` endpoints × in flight) and, at
//! the same time, `--handshakers` DTLS-PSK handshake churners (ServerA; fresh socket, full
//! handshake, one GET, close_notify, again: sessions made and dropped all along). Every
//! `--sample-seconds` the tool reads the gateway's VmRSS, threads and descriptors and the
//! rates of that interval: table `soak`, one row per sample. Table `soak_summary` compares
//! the mean RSS of the last third of the samples with the first third's and says `flat` or
//! `growing` ([`verdict`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use super::closed_loop::{Endpoint, Load, Shape, Template};
use super::common::free_udp_port;
use super::front::{DATA_PRIVGW, gateway_toml};
use super::handshakes::{ClientKind, Counts, Dialer, handshakers};
use crate::cli::CliResult;
use crate::cli::bench::gateway::Running;
use crate::cli::bench::process::{ProcStats, clock_ticks_per_second};
use crate::cli::demo::tempfile_dir;
use crate::cli::results::{Cell, Progress, Table};
use crate::config::EndpointUri;

#[derive(Args, Debug, Clone)]
pub struct SoakArgs {
    /// Length of the soak, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// Interval between two samples of the gateway, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub sample_seconds: f64,
    /// The GET load, `NxW` (UDP endpoints × requests in flight each).
    #[arg(long, default_value = "64x4")]
    pub shape: Shape,
    /// DTLS-PSK handshake churners beside the GETs (0: GETs only).
    #[arg(long, default_value_t = 4)]
    pub handshakers: usize,
}

/// The gateway and the load in one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Sample {
    at_s: f64,
    gateway: ProcStats,
    gets_per_s: f64,
    /// GETs unanswered, answered wrongly or reset in this interval.
    get_troubles: u64,
    handshakes_per_s: f64,
    handshakes_failed: u64,
}

/// What the RSS series says: the mean of its last third against the mean of its first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub start_kib: f64,
    pub end_kib: f64,
    pub max_kib: u64,
    /// `end_kib - start_kib`.
    pub drift_kib: f64,
    pub flat: bool,
}

/// RSS that may come and go between the thirds without calling it growth: allocator
/// arenas and socket buffers move by a few hundred KiB under load.
const SLACK_KIB: f64 = 1024.0;
const SLACK_FRACTION: f64 = 0.02;

/// `flat` when the last third's mean RSS exceeds the first third's by at most
/// max([`SLACK_KIB`], [`SLACK_FRACTION`] of it). `None` for fewer than three samples.
pub fn verdict(rss_kib: &[u64]) -> Option<Verdict> {
    if rss_kib.len() < 3 {
        return None;
    }
    let third = rss_kib.len() / 3;
    let mean = |s: &[u64]| s.iter().sum::<u64>() as f64 / s.len() as f64;
    let start_kib = mean(&rss_kib[..third]);
    let end_kib = mean(&rss_kib[rss_kib.len() - third..]);
    let drift_kib = end_kib - start_kib;
    Some(Verdict {
        start_kib,
        end_kib,
        max_kib: rss_kib.iter().copied().max().unwrap_or(0),
        drift_kib,
        flat: drift_kib <= SLACK_KIB.max(SLACK_FRACTION * start_kib),
    })
}

pub fn table() -> Table {
    Table::new(
        "soak",
        &[
            "t_s",
            "rss_kib",
            "threads",
            "fds",
            "gets_per_s",
            "get_troubles",
            "handshakes_per_s",
            "handshakes_failed",
        ],
    )
}

pub fn summary_table() -> Table {
    Table::new(
        "soak_summary",
        &[
            "seconds",
            "samples",
            "shape",
            "handshakers",
            "gets",
            "handshakes",
            "rss_first_third_kib",
            "rss_last_third_kib",
            "rss_max_kib",
            "drift_kib",
            "rss",
        ],
    )
}

fn row(s: &Sample) -> Vec<Cell> {
    vec![
        s.at_s.into(),
        s.gateway.rss_kib.into(),
        s.gateway.threads.into(),
        s.gateway.fds.into(),
        s.gets_per_s.into(),
        s.get_troubles.into(),
        s.handshakes_per_s.into(),
        s.handshakes_failed.into(),
    ]
}

pub async fn run(args: SoakArgs, out: &Path) -> CliResult<()> {
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err("--seconds must be above 0 and at most 3600".into());
    }
    if !(args.sample_seconds >= 0.1 && args.sample_seconds <= args.seconds / 3.0) {
        return Err(
            "--sample-seconds must be at least 0.1 and at most a third of --seconds".into(),
        );
    }
    if args.handshakers > 256 {
        return Err("--handshakers must be 0 to 256".into());
    }
    let dir = tempfile_dir()?;
    let result = measure(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let (samples, summary) = result?;
    samples.emit(out)?;
    summary.emit(out)?;
    Ok(())
}

async fn measure(args: &SoakArgs, dir: &Path) -> CliResult<(Table, Table)> {
    let secure: EndpointUri = format!("coaps://127.0.0.1:{}", free_udp_port()?).parse()?;
    let plain: EndpointUri = format!("coap://127.0.0.1:{}", free_udp_port()?).parse()?;
    let toml = gateway_toml(&dir.join("soak.redb"), secure, plain);
    let mut gateway = Running::start(&toml, dir, "soak", false, secure).await?;
    let outcome = async {
        drop(gateway.client(Duration::from_secs(30)).await?);
        let mut load = Load::new("privgw", Template::get(DATA_PRIVGW)?, 0x45);
        for i in 0..args.shape.clients {
            let seed = u16::try_from(i).unwrap_or(0);
            load.endpoints.push(Endpoint::udp(plain.addr, seed).await?);
        }
        load.warm_retrying(3, Duration::from_secs(5)).await?;
        eprintln!(
            "privgw bench soak: {} s, GET {DATA_PRIVGW} at {} on {plain} and {} handshake churners on {secure}, {}, sampled every {} s",
            args.seconds,
            args.shape,
            args.handshakers,
            gateway.what(),
            args.sample_seconds
        );
        soak(args, &mut load, secure.addr, gateway.pid()).await
    }
    .await;
    gateway.stop().await;
    outcome
}

/// The load and the churn for `--seconds`, sampled; the two tables.
async fn soak(
    args: &SoakArgs,
    load: &mut Load,
    handshake_to: SocketAddr,
    pid: u32,
) -> CliResult<(Table, Table)> {
    let hz = clock_ticks_per_second();
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(args.seconds);
    let counts = Arc::new(Counts::default());
    let churn = (args.handshakers > 0).then(|| {
        let dialer = Dialer::new(ClientKind::Lean, "serverA", "secretA");
        let (clients, shared) = (args.handshakers, counts.clone());
        tokio::task::spawn_blocking(move || {
            handshakers(dialer?, handshake_to, clients, until, shared)
        })
    });
    let mut samples = Vec::new();
    let (mut gets, mut last_hs) = (0u64, (0u64, 0u64));
    let total = (args.seconds / args.sample_seconds).round() as u64;
    let mut progress = Progress::new("bench soak samples", total);
    while Instant::now() + Duration::from_millis(50) < until {
        let interval = args.sample_seconds.min(
            until
                .saturating_duration_since(Instant::now())
                .as_secs_f64(),
        );
        let started = Instant::now();
        let r = load
            .measure(args.shape.window, u64::MAX, interval, pid, hz)
            .await?;
        let took = started.elapsed().as_secs_f64().max(1e-9);
        let hs = counts.read();
        gets += r.tally.ok;
        samples.push(Sample {
            at_s: t0.elapsed().as_secs_f64(),
            gateway: ProcStats::of(pid),
            gets_per_s: r.rate,
            get_troubles: r.tally.lost + r.tally.wrong + r.tally.resets,
            handshakes_per_s: (hs.0 - last_hs.0) as f64 / took,
            handshakes_failed: hs.1 - last_hs.1,
        });
        last_hs = hs;
        progress.tick(samples.len() as u64);
    }
    if let Some(churn) = churn {
        churn.await??;
    }
    let (handshakes, failed) = counts.read();
    if let Some(last) = samples.last_mut() {
        last.handshakes_failed += failed - last_hs.1;
    }
    let mut table = table();
    for s in &samples {
        table.push(row(s));
    }
    let rss: Vec<u64> = samples.iter().map(|s| s.gateway.rss_kib).collect();
    let v = verdict(&rss).ok_or("fewer than three samples: raise --seconds")?;
    eprintln!(
        "  gateway RSS {:.1} MiB (first third) → {:.1} MiB (last third), max {:.1} MiB: {}; {gets} GETs, {handshakes} handshakes ({failed} failed)",
        v.start_kib / 1024.0,
        v.end_kib / 1024.0,
        v.max_kib as f64 / 1024.0,
        if v.flat { "flat" } else { "growing" }
    );
    let mut summary = summary_table();
    summary.push(vec![
        args.seconds.into(),
        samples.len().into(),
        args.shape.to_string().into(),
        args.handshakers.into(),
        gets.into(),
        handshakes.into(),
        v.start_kib.into(),
        v.end_kib.into(),
        v.max_kib.into(),
        v.drift_kib.into(),
        if v.flat { "flat" } else { "growing" }.into(),
    ]);
    Ok((table, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_that_settles_is_flat_and_one_that_climbs_is_not() {
        let settled = [31_800, 32_000, 32_100, 32_050, 32_200, 32_100];
        let v = verdict(&settled).unwrap();
        assert!(v.flat, "{v:?}");
        assert_eq!(v.max_kib, 32_200);
        // 4 MiB per sample: a leak.
        let climbing: Vec<u64> = (0..6).map(|i| 30_000 + 4_096 * i).collect();
        let v = verdict(&climbing).unwrap();
        assert!(!v.flat, "{v:?}");
        // First third 30 000 and 34 096, last 46 384 and 50 480: 16 MiB apart.
        assert_eq!(v.drift_kib, 16_384.0);
        assert!(verdict(&[1, 2]).is_none());
    }

    #[test]
    fn the_slack_scales_with_the_size_of_the_process() {
        // 2 % of 1 GiB is 20 MiB: 10 MiB of drift is still flat there, not at 30 MiB.
        assert!(
            verdict(&[1 << 20, 1 << 20, (1 << 20) + 10_240])
                .unwrap()
                .flat
        );
        assert!(!verdict(&[30_000, 30_000, 40_240]).unwrap().flat);
    }

    #[test]
    fn a_sample_row_fills_every_column() {
        let s = Sample {
            at_s: 5.0,
            gateway: ProcStats {
                rss_kib: 32_000,
                threads: 3,
                fds: 12,
                cpu_ticks: 0,
            },
            gets_per_s: 30_000.0,
            get_troubles: 0,
            handshakes_per_s: 1_000.0,
            handshakes_failed: 0,
        };
        let r = row(&s);
        assert_eq!(r.len(), table().columns.len());
        assert_eq!(r[1], Cell::Int(32_000));
    }
}
