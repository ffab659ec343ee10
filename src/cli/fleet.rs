//! `privgw fleet`: the fleet simulator as its own process (see [`crate::fleet`]). It starts
//! the devices, writes the matching gateway TOML if asked, prints `fleet ready: …` on stdout
//! once every device listens (dialled) or is registered (register mode), and runs until
//! SIGINT, SIGTERM or `--max-seconds`.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;

use crate::cli::CliResult;
use crate::config::EndpointUri;
use crate::fleet::config::{GatewaySide, gateway_toml};
use crate::fleet::{Fleet, FleetSpec, Fractions, Mode, Profile, Security};

#[derive(Args, Debug, Clone)]
pub struct FleetArgs {
    /// Devices in the fleet.
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// The ACL model they serve.
    #[arg(long, value_enum, default_value_t = Profile::Lwm2m)]
    pub profile: Profile,
    /// DTLS-PSK (one key per device), DTLS with X.509 certificates from `--certs`, or plain UDP.
    #[arg(long, value_enum, default_value_t = Security::Psk)]
    pub security: Security,
    /// dialed: each device listens on its own loopback UDP port; register: each is an LwM2M
    /// client registering with `--gateway` from its own source IP in 127.1.0.0/16.
    #[arg(long, value_enum, default_value_t = Mode::Dialed)]
    pub mode: Mode,
    /// Register mode: the gateway's LwM2M listener (`coaps://…` or with nosec `coap://…`).
    #[arg(long)]
    pub gateway: Option<EndpointUri>,
    /// Register mode: Registers (DTLS handshakes included) in flight at once (the gateway's
    /// default `dtls_max_handshakes` is 256).
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Fraction of devices whose ACL denies ServerA Replace on /3/0.
    #[arg(long, default_value_t = 0.0)]
    pub deny: f64,
    /// Fraction of devices that never answer.
    #[arg(long, default_value_t = 0.0)]
    pub timeout: f64,
    /// Fraction of devices that answer 2.05 with garbage.
    #[arg(long, default_value_t = 0.0)]
    pub garbage: f64,
    /// Write the matching gateway TOML here (store `fleet.redb` beside it).
    #[arg(long)]
    pub write_config: Option<PathBuf>,
    /// The gateway's own (north) listener in the written config.
    #[arg(long, default_value = "coaps://127.0.0.1:5684")]
    pub gateway_listen: EndpointUri,
    /// `device_timeout_ms` in the written config (what a timeout device costs a write).
    #[arg(long, default_value_t = 3000)]
    pub device_timeout_ms: u64,
    /// The test PKI (X.509); written there by `privgw certs` logic if missing.
    #[arg(long, default_value = "certs")]
    pub certs: PathBuf,
    /// Register mode: write the config (the devices' addresses are not in it) and exit, so
    /// a gateway can be started on it before the devices register.
    #[arg(long)]
    pub config_only: bool,
    /// Exit after this many seconds, ready or not.
    #[arg(long, default_value_t = 3600)]
    pub max_seconds: u64,
}

impl FleetArgs {
    pub fn spec(&self) -> FleetSpec {
        FleetSpec {
            count: self.count,
            profile: self.profile,
            security: self.security,
            mode: self.mode,
            fractions: Fractions {
                deny: self.deny,
                timeout: self.timeout,
                garbage: self.garbage,
            },
            gateway: self.gateway,
            in_flight: self.in_flight,
            register_patience: Duration::from_secs(60),
            certs: self.certs.clone(),
        }
    }
}

fn write_config(args: &FleetArgs, spec: &FleetSpec, uris: &[EndpointUri]) -> CliResult<()> {
    let Some(path) = &args.write_config else {
        return Ok(());
    };
    let side = GatewaySide {
        listen: args.gateway_listen,
        store: std::path::Path::new("fleet.redb"),
        device_timeout_ms: args.device_timeout_ms,
    };
    let toml = gateway_toml(spec, &side, uris);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // Written whole then renamed, so a reader never sees half a config.
    let tmp = path.with_extension("toml.part");
    std::fs::write(&tmp, toml)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = crate::cli::ctrl_c() => {}
            }
            return;
        }
    }
    crate::cli::ctrl_c().await;
}

pub async fn run(args: FleetArgs) -> CliResult<()> {
    let started = Instant::now();
    let until = started + Duration::from_secs(args.max_seconds);
    let spec = args.spec();
    let plan = spec.check()?;
    spec.ensure_certs()?;
    if args.config_only {
        if spec.mode != Mode::Register || args.write_config.is_none() {
            return Err(
                "--config-only is for --mode register with --write-config (a dialled fleet's config holds its ports)"
                    .into(),
            );
        }
        write_config(&args, &spec, &[])?;
        return Ok(());
    }
    if spec.mode == Mode::Register {
        // The config does not depend on where the devices send from: written first.
        write_config(&args, &spec, &[])?;
    }
    let mut progress = crate::cli::results::Progress::new(
        match spec.mode {
            Mode::Dialed => "fleet: devices listening",
            Mode::Register => "fleet: devices registered",
        },
        spec.count as u64,
    );
    let mut tick = |done: usize| progress.tick(done as u64);
    let fleet = Fleet::start(&spec, plan, until, &mut tick).await?;
    if spec.mode == Mode::Dialed {
        write_config(&args, &spec, &fleet.uris())?;
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "fleet ready: {} devices ({}, {}, {}; {}; {} in {:.2} s{})",
            fleet.len(),
            spec.mode.as_str(),
            spec.security.as_str(),
            spec.profile.as_str(),
            fleet.plan().summary(),
            match spec.mode {
                Mode::Dialed => "listening",
                Mode::Register => "registered",
            },
            fleet.took.as_secs_f64(),
            args.write_config
                .as_ref()
                .map(|p| format!("; config {}", p.display()))
                .unwrap_or_default(),
        )?;
        out.flush()?;
    }
    let remaining = until.saturating_duration_since(Instant::now());
    tokio::select! {
        _ = stop_signal() => {}
        _ = tokio::time::sleep(remaining) => {}
    }
    fleet.stop().await;
    Ok(())
}
