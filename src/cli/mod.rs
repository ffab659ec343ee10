//! The command line: `serve`, `device`, `ctl`, `demo`, `certs`, `fleet`, `bench`. Errors are reported plainly on
//! stderr with a non-zero exit; this is the only place that uses `Box<dyn Error>`.

pub mod bench;
pub mod ctl;
pub mod demo;
pub mod fleet;
pub mod results;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::device::{DeviceSimConfig, RunningDevice};
use crate::gateway::Gateway;

pub type CliResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser)]
#[command(
    name = "privgw",
    version,
    about = "Secure privilege gateway for CoAP/LwM2M devices"
)]
struct Cli {
    /// Tokio worker threads of this process (default: one per core, or `TOKIO_WORKER_THREADS`).
    #[arg(long, global = true, value_name = "N")]
    workers: Option<std::num::NonZeroUsize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The gateway's TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a simulated end device serving a dm or lwm2m ACL set (listening, or registering
    /// with an LwM2M server when its config has `register`).
    Device {
        /// The device's TOML config (see examples/devA.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Talk to a gateway as a DM server (add, replace, get, list, delete).
    Ctl(Box<ctl::CtlArgs>),
    /// Run the four sequences of the change request end to end, then server B through the
    /// secure proxy, in one process, over real loopback sockets and DTLS.
    Demo,
    /// Write a test PKI (CA, gateway, servers A-C, devices A-C; EC P-256) into a folder.
    Certs {
        /// Where to write the PEM files.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
    /// Serve N simulated devices (dialled or registering) in this process, apart from the
    /// gateway, and write the matching gateway config.
    Fleet(Box<fleet::FleetArgs>),
    /// Benchmarks: group and registration against a gateway and a fleet in child processes;
    /// front end, handshakes and proxy against libcoap in the same run; tables under `--out`,
    /// and their plots.
    Bench(bench::BenchArgs),
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn runtime(workers: Option<std::num::NonZeroUsize>) -> CliResult<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n.get());
    }
    Ok(builder.enable_all().build()?)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what `kill`, systemd and container runtimes
/// send to stop a service), so either ends sessions politely (close_notify, CoAP over TCP
/// Release) before the process exits.
async fn ctrl_c() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No signal handling available: run until killed.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate() => {}
    }
}

#[cfg(unix)]
async fn terminate() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending::<()>().await;
}

async fn serve(config: PathBuf) -> CliResult<()> {
    let config = Config::load(&config)?;
    let gateway = Gateway::start(config).await?;
    for uri in gateway.listeners() {
        eprintln!("privgw listening on {uri}");
    }
    for uri in gateway.lwm2m_listeners() {
        eprintln!("privgw taking LwM2M registrations on {uri}");
    }
    gateway.run_until(ctrl_c()).await;
    Ok(())
}

async fn device(config: PathBuf) -> CliResult<()> {
    let config = DeviceSimConfig::load(&config)?;
    let device = RunningDevice::start(&config).await?;
    if config.register.is_empty() {
        eprintln!(
            "device {} ({}) listening on {}",
            config.id,
            config.profile,
            device.uri()
        );
    } else {
        eprintln!(
            "device {} ({}) registering from {} with {}",
            config.id,
            config.profile,
            device.addr(),
            config.register.join(", ")
        );
    }
    ctrl_c().await;
    device.stop().await;
    Ok(())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let workers = cli.workers;
    let result = match cli.command {
        Command::Serve { config } => {
            init_logging("info");
            runtime(workers).and_then(|rt| rt.block_on(serve(config)))
        }
        Command::Device { config } => {
            init_logging("info");
            runtime(workers).and_then(|rt| rt.block_on(device(config)))
        }
        Command::Ctl(args) => {
            init_logging("warn");
            runtime(workers).and_then(|rt| rt.block_on(ctl::run(*args)))
        }
        Command::Demo => {
            init_logging("warn");
            runtime(workers).and_then(|rt| rt.block_on(demo::run()))
        }
        Command::Certs { out } => match crate::pki::write_test_pki(&out) {
            Ok(names) => {
                println!(
                    "wrote {} certificates and keys to {}: {}",
                    names.len(),
                    out.display(),
                    names.join(", ")
                );
                Ok(())
            }
            Err(e) => Err(e.into()),
        },
        Command::Fleet(args) => {
            init_logging("warn");
            runtime(workers).and_then(|rt| rt.block_on(fleet::run(*args)))
        }
        Command::Bench(args) => {
            init_logging("warn");
            runtime(workers).and_then(|rt| rt.block_on(bench::run(args)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("privgw: {e}");
            ExitCode::FAILURE
        }
    }
}
