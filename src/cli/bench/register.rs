//! `privgw bench register`: a `privgw serve` child with an LwM2M listener, then a `privgw
//! fleet --mode register` child whose N LwM2M clients register with it (each from its own
//! source IP, at most `--in-flight` Registers at once); the registration rate, the gateway's
//! RSS and CPU per registration, then group writes over the registrations. Table `register`.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;

use crate::cli::CliResult;
use crate::cli::bench::core_split::CoreSplit;
use crate::cli::bench::group::{Expect, group_writes, ms, north, warm_stats};
use crate::cli::bench::process::{ChildProcess, clock_ticks_per_second, free_udp_port, run_privgw};
use crate::cli::results::{Cell, Table};
use crate::fleet::{Fractions, Plan, Security};

#[derive(Args, Debug, Clone)]
pub struct RegisterArgs {
    /// Registering devices.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Registers (DTLS handshakes included) in flight at once; at most the gateway's default
    /// `dtls_max_handshakes` (256).
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    #[arg(long, value_enum, default_value_t = Security::Psk)]
    pub security: Security,
    /// Warm group Add rounds over the registrations after the cold one.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Fraction of devices that deny (the group write must answer 4.03 naming them).
    #[arg(long, default_value_t = 0.0)]
    pub deny: f64,
    /// The whole run's time bound, seconds.
    #[arg(long, default_value_t = 600)]
    pub max_seconds: u64,
    #[command(flatten)]
    pub cores: CoreSplit,
}

/// Table `register`'s columns.
pub const COLUMNS: &[&str] = &[
    "devices",
    "in_flight",
    "security",
    "register_s",
    "registrations_per_s",
    "rss_before_kib",
    "rss_after_kib",
    "rss_per_registration_kib",
    "cpu_us_per_registration",
    "cold_ms",
    "warm_median_ms",
    "warm_p90_ms",
];

/// The gateway's default `[limits] dtls_max_handshakes`, which pacing stays within.
const GATEWAY_MAX_HANDSHAKES: usize = 256;

pub async fn run(args: RegisterArgs, out: &Path) -> CliResult<()> {
    if args.devices == 0 {
        return Err("--devices must be at least 1".into());
    }
    if args.in_flight == 0 || args.in_flight > GATEWAY_MAX_HANDSHAKES {
        return Err(format!("--in-flight must be 1 to {GATEWAY_MAX_HANDSHAKES}").into());
    }
    let dir = crate::cli::demo::tempfile_dir()?;
    let row = measure(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let mut table = Table::new("register", COLUMNS);
    table.push(row?);
    let path = table.emit(out)?;
    eprintln!("bench register: wrote {}", path.display());
    Ok(())
}

async fn measure(args: &RegisterArgs, dir: &Path) -> CliResult<Vec<Cell>> {
    let until = Instant::now() + Duration::from_secs(args.max_seconds);
    let n = args.devices;
    let plan = Plan::new(
        n,
        Fractions {
            deny: args.deny,
            ..Fractions::default()
        },
    )?;
    let expect = Expect::from_plan(&plan);
    let hz = clock_ticks_per_second();
    let north = north()?;
    let rd = format!(
        "{}://127.0.0.1:{}",
        args.security.scheme(),
        free_udp_port()?
    );
    let config = dir.join("gateway.toml");
    let common: Vec<String> = vec![
        "--count".into(),
        n.to_string(),
        "--mode".into(),
        "register".into(),
        "--security".into(),
        args.security.as_str().into(),
        "--deny".into(),
        args.deny.to_string(),
        "--gateway".into(),
        rd.clone(),
        "--gateway-listen".into(),
        north.to_string(),
        "--write-config".into(),
        config.display().to_string(),
    ];
    // The config first (it does not depend on the devices' addresses), then the gateway, so
    // the Registers are timed against a gateway that is up.
    let mut only = vec!["fleet".to_owned()];
    only.extend(common.iter().cloned());
    only.push("--config-only".into());
    run_privgw(&only, Duration::from_secs(60))?;
    eprintln!("bench register: {}", args.cores.describe());
    let mut gateway = ChildProcess::serve(&config, Some(args.cores.gateway()))?;
    let mut client = gateway.server_a(north, Duration::from_secs(30)).await?;
    let before = gateway.stats();
    let remaining = until.saturating_duration_since(Instant::now());
    let mut fleet_args = common;
    fleet_args.extend([
        "--in-flight".into(),
        args.in_flight.to_string(),
        "--max-seconds".into(),
        remaining.as_secs().max(1).to_string(),
    ]);
    let t = Instant::now();
    let mut fleet = ChildProcess::fleet(
        &fleet_args,
        &dir.join("fleet.log"),
        Some(args.cores.fleet()),
    )?;
    let ready = fleet.wait_line("fleet ready:", remaining).await?;
    let took = t.elapsed();
    let registered = gateway.stats();
    eprintln!("bench register: {ready}");
    let w = group_writes(&mut client, &gateway, &fleet, &expect, args.rounds, until).await?;
    fleet.check_alive()?;
    gateway.check_alive()?;
    let (warm_median, warm_p90) = warm_stats(&w.adds);
    let cpu_s = registered.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / hz;
    Ok(vec![
        n.into(),
        args.in_flight.into(),
        args.security.as_str().into(),
        took.as_secs_f64().into(),
        (n as f64 / took.as_secs_f64()).into(),
        before.rss_kib.into(),
        registered.rss_kib.into(),
        (registered.rss_kib.saturating_sub(before.rss_kib) as f64 / n as f64).into(),
        (1e6 * cpu_s / n as f64).into(),
        ms(w.cold).into(),
        warm_median.into(),
        warm_p90.into(),
    ])
}
