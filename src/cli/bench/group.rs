//! `privgw bench group`: for each fleet size N, a dialled `privgw fleet` and a `privgw serve`
//! on its config, each its own process; as ServerA the first group Add over `ALL` (cold:
//! every device's handshake), then warm Add/Delete rounds. One row per N in table `group`:
//! cold and warm latency, the gateway's RSS before and after the writes and per device
//! session, its CPU per device read. Every answer is checked against the fleet's plan (a
//! fleet with failing devices must answer 4.03 naming exactly those).

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;

use crate::cli::CliResult;
use crate::cli::bench::core_split::CoreSplit;
use crate::cli::bench::process::{ChildProcess, ProcStats, clock_ticks_per_second, free_udp_port};
use crate::cli::ctl::{GatewayClient, Reply};
use crate::cli::results::{Cell, Progress, Table, median, percentile_sorted};
use crate::coap::RequestType;
use crate::config::EndpointUri;
use crate::fleet::{Fractions, Plan, Profile, Security};
use crate::mo::Value;

#[derive(Args, Debug, Clone)]
pub struct GroupArgs {
    /// Fleet sizes, one row each.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    pub devices: Vec<usize>,
    /// Warm rounds (each a group Add and, when it commits, its Delete) after the cold Add.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    #[arg(long, value_enum, default_value_t = Security::Psk)]
    pub security: Security,
    #[arg(long, value_enum, default_value_t = Profile::Lwm2m)]
    pub profile: Profile,
    /// Fraction of devices that deny (the write must answer 4.03 naming them).
    #[arg(long, default_value_t = 0.0)]
    pub deny: f64,
    /// Fraction of devices that never answer.
    #[arg(long, default_value_t = 0.0)]
    pub timeout: f64,
    /// Fraction of devices that answer garbage.
    #[arg(long, default_value_t = 0.0)]
    pub garbage: f64,
    /// The gateway's deadline per device read (what a timeout device costs a write).
    #[arg(long, default_value_t = 3000)]
    pub device_timeout_ms: u64,
    /// The whole run's time bound, seconds.
    #[arg(long, default_value_t = 600)]
    pub max_seconds: u64,
    #[command(flatten)]
    pub cores: CoreSplit,
}

impl GroupArgs {
    fn fractions(&self) -> Fractions {
        Fractions {
            deny: self.deny,
            timeout: self.timeout,
            garbage: self.garbage,
        }
    }
}

/// Table `group`'s columns.
pub const COLUMNS: &[&str] = &[
    "devices",
    "security",
    "failing",
    "cold_ms",
    "warm_median_ms",
    "warm_p90_ms",
    "warm_writes",
    "rss_before_kib",
    "rss_after_kib",
    "rss_per_device_kib",
    "cpu_us_per_read",
    "fleet_cpu_us_per_read",
];

/// What every group write must answer.
#[derive(Debug, Clone)]
pub struct Expect {
    pub n: usize,
    /// The devices it must name as failed, sorted (empty: it must commit).
    pub failing: Vec<String>,
}

impl Expect {
    pub fn from_plan(plan: &Plan) -> Expect {
        let mut failing = plan.failing_ids();
        failing.sort();
        Expect {
            n: plan.len(),
            failing,
        }
    }

    /// Checks an Add's answer (reading the full `Failed` list from its `Report` when the
    /// answer was truncated); returns the Location to delete when it committed.
    pub async fn check_add(
        &self,
        client: &mut GatewayClient,
        reply: &Reply,
    ) -> CliResult<Option<String>> {
        let shown = || reply.render().chars().take(1500).collect::<String>();
        if self.failing.is_empty() {
            if reply.code != "2.01" || reply.verified_ids().len() != self.n {
                return Err(format!(
                    "group Add: expected 2.01 with {} verified, got {} ({} verified): {}",
                    self.n,
                    reply.code,
                    reply.verified_ids().len(),
                    shown()
                )
                .into());
            }
            return Ok(Some(
                reply.location.clone().ok_or("2.01 without a Location")?,
            ));
        }
        let mut failed = if reply.code == "4.03" {
            failed_ids(client, reply).await?
        } else {
            Vec::new()
        };
        failed.sort();
        if reply.code != "4.03" || failed != self.failing {
            return Err(format!(
                "group Add: expected 4.03 naming {} devices {:?}, got {} naming {}: {}",
                self.failing.len(),
                self.failing.iter().take(10).collect::<Vec<_>>(),
                reply.code,
                failed.len(),
                shown()
            )
            .into());
        }
        Ok(None)
    }
}

/// Every device a refused write names: its `Failed` list, or the whole list from
/// `/GwConfig/Reports/<id>` when the answer says `Truncated` and gives the `Report`.
pub async fn failed_ids(client: &mut GatewayClient, reply: &Reply) -> CliResult<Vec<String>> {
    let report = reply
        .document
        .as_ref()
        .and_then(|d| d.get("Report"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let Some(path) = report else {
        return Ok(reply.failed_ids());
    };
    let full = client
        .request(RequestType::Get, &path, None, None, &[])
        .await?;
    if full.code != "2.05" {
        return Err(format!("GET {path} answered {}", full.code).into());
    }
    Ok(full.failed_ids())
}

/// The group writes of one measurement.
#[derive(Debug, Default)]
pub struct Writes {
    pub cold: Duration,
    /// Warm Adds.
    pub adds: Vec<Duration>,
    /// Verified writes after the cold Add (Adds and Deletes), for CPU per read.
    pub warm_writes: usize,
    /// The gateway's stats right after the cold Add (and its Delete).
    pub after_cold: ProcStats,
    /// The fleet's, at the same moment: on a machine whose cores the two share, the
    /// fleet's CPU per read is what the gateway's warm latency cannot get below.
    pub fleet_after_cold: ProcStats,
}

/// The cold Add (and its Delete), then `rounds` warm rounds within `until`.
pub async fn group_writes(
    client: &mut GatewayClient,
    gateway: &ChildProcess,
    fleet: &ChildProcess,
    expect: &Expect,
    rounds: usize,
    until: Instant,
) -> CliResult<Writes> {
    let mut w = Writes::default();
    let mut progress = Progress::new(&format!("group writes, N={}", expect.n), rounds as u64);
    for round in 0..=rounds {
        if round > 0 && Instant::now() > until {
            break;
        }
        let t = Instant::now();
        let reply = client.add("ALL", "Group", "/3/0", "Get=ServerB").await?;
        let took = t.elapsed();
        let location = expect.check_add(client, &reply).await?;
        if round > 0 {
            w.adds.push(took);
            w.warm_writes += 1;
        } else {
            w.cold = took;
        }
        if let Some(location) = location {
            let reply = client
                .request(RequestType::Delete, &location, None, None, &[])
                .await?;
            if reply.code != "2.02" {
                return Err(format!("group Delete answered {}", reply.code).into());
            }
            if round > 0 {
                w.warm_writes += 1;
            }
        }
        if round == 0 {
            w.after_cold = gateway.stats();
            w.fleet_after_cold = fleet.stats();
        }
        progress.tick(round as u64);
    }
    Ok(w)
}

/// CPU seconds over the warm writes as µs per device read (0 without a warm write).
fn per_read(cpu_s: f64, warm_writes: usize, reads: f64) -> f64 {
    if warm_writes == 0 {
        0.0
    } else {
        1e6 * cpu_s / reads
    }
}

/// Milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median and p90 of the warm Adds, ms.
pub fn warm_stats(adds: &[Duration]) -> (f64, f64) {
    let mut v: Vec<f64> = adds.iter().copied().map(ms).collect();
    let med = median(&mut v);
    (med, percentile_sorted(&v, 0.9))
}

/// The gateway's north listener for a run: DTLS-PSK (ServerA) on a free loopback port.
pub fn north() -> CliResult<EndpointUri> {
    Ok(format!("coaps://127.0.0.1:{}", free_udp_port()?).parse()?)
}

pub async fn run(args: GroupArgs, out: &Path) -> CliResult<()> {
    let until = Instant::now() + Duration::from_secs(args.max_seconds);
    if args.devices.is_empty() || args.devices.contains(&0) {
        return Err("--devices: fleet sizes of at least 1".into());
    }
    let hz = clock_ticks_per_second();
    let mut table = Table::new("group", COLUMNS);
    for &n in &args.devices {
        if Instant::now() >= until {
            eprintln!("bench group: time bound reached, N={n} and larger skipped");
            break;
        }
        let dir = crate::cli::demo::tempfile_dir()?;
        let row = one_size(&args, n, &dir, until, hz).await;
        let _ = std::fs::remove_dir_all(&dir);
        table.push(row?);
    }
    let path = table.emit(out)?;
    eprintln!("bench group: wrote {}", path.display());
    Ok(())
}

async fn one_size(
    args: &GroupArgs,
    n: usize,
    dir: &Path,
    until: Instant,
    hz: f64,
) -> CliResult<Vec<Cell>> {
    let plan = Plan::new(n, args.fractions())?;
    let expect = Expect::from_plan(&plan);
    let north = north()?;
    let config = dir.join("gateway.toml");
    let remaining = until.saturating_duration_since(Instant::now());
    let fleet_args: Vec<String> = vec![
        "--count".into(),
        n.to_string(),
        "--mode".into(),
        "dialed".into(),
        "--security".into(),
        args.security.as_str().into(),
        "--profile".into(),
        args.profile.as_str().into(),
        "--deny".into(),
        args.deny.to_string(),
        "--timeout".into(),
        args.timeout.to_string(),
        "--garbage".into(),
        args.garbage.to_string(),
        "--device-timeout-ms".into(),
        args.device_timeout_ms.to_string(),
        "--write-config".into(),
        config.display().to_string(),
        "--gateway-listen".into(),
        north.to_string(),
        "--max-seconds".into(),
        remaining.as_secs().max(1).to_string(),
    ];
    let mut fleet = ChildProcess::fleet(
        &fleet_args,
        &dir.join("fleet.log"),
        Some(args.cores.fleet()),
    )?;
    let ready = fleet.wait_line("fleet ready:", remaining).await?;
    eprintln!("bench group: {ready}; {}", args.cores.describe());
    let mut gateway = ChildProcess::serve(&config, Some(args.cores.gateway()))?;
    let mut client = gateway.server_a(north, Duration::from_secs(30)).await?;
    let before = gateway.stats();
    let w = group_writes(&mut client, &gateway, &fleet, &expect, args.rounds, until).await?;
    let after = gateway.stats();
    let fleet_after = fleet.stats();
    fleet.check_alive()?;
    let (warm_median, warm_p90) = warm_stats(&w.adds);
    let reads = (w.warm_writes * n).max(1) as f64;
    let cpu_s = after.cpu_ticks.saturating_sub(w.after_cold.cpu_ticks) as f64 / hz;
    let fleet_cpu_s = fleet_after
        .cpu_ticks
        .saturating_sub(w.fleet_after_cold.cpu_ticks) as f64
        / hz;
    let per_device = after.rss_kib.saturating_sub(before.rss_kib) as f64 / n as f64;
    Ok(vec![
        n.into(),
        args.security.as_str().into(),
        expect.failing.len().into(),
        ms(w.cold).into(),
        warm_median.into(),
        warm_p90.into(),
        w.warm_writes.into(),
        before.rss_kib.into(),
        after.rss_kib.into(),
        per_device.into(),
        per_read(cpu_s, w.warm_writes, reads).into(),
        per_read(fleet_cpu_s, w.warm_writes, reads).into(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Fractions;

    #[test]
    fn the_expected_failures_come_from_the_plan() {
        let plan = Plan::new(
            10,
            Fractions {
                deny: 0.2,
                ..Fractions::default()
            },
        )
        .unwrap();
        let e = Expect::from_plan(&plan);
        assert_eq!(e.n, 10);
        assert_eq!(
            e.failing,
            vec!["dev00004".to_owned(), "dev00009".to_owned()]
        );
    }

    #[test]
    fn warm_stats_are_median_and_p90() {
        let adds: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        let (m, p90) = warm_stats(&adds);
        assert_eq!(m, 5.5);
        assert_eq!(p90, 9.0);
    }
}
