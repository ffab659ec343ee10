//! The gateway under measurement for the same-run comparisons (`front`, `handshakes`,
//! `proxy`): a child `privgw serve` on a config written to the run's folder (its log beside
//! it, at `PRIVGW_BENCH_GATEWAY_LOG`, default `warn`), or a gateway in this process; and
//! [`Child`], a peer process killed when the measurement ends.

use std::path::Path;
use std::time::Duration;

use crate::cli::CliResult;
use crate::cli::bench::process::{ChildProcess, connect_server_a};
use crate::cli::ctl::GatewayClient;
use crate::config::{Config, EndpointUri};
use crate::gateway::Gateway;

/// Kills the peer process when the measurement ends, however it ends.
pub(crate) struct Child(pub(crate) std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The gateway under measurement: a child `privgw serve`, or in this process.
enum Gw {
    Child(ChildProcess),
    InProcess(Gateway),
}

pub(crate) struct Running {
    gw: Gw,
    north: EndpointUri,
}

impl Running {
    pub(crate) async fn start(
        toml: &str,
        dir: &Path,
        name: &str,
        in_process: bool,
        north: EndpointUri,
    ) -> CliResult<Running> {
        if in_process {
            let gateway = Gateway::start(Config::parse(toml)?).await?;
            return Ok(Running {
                gw: Gw::InProcess(gateway),
                north,
            });
        }
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml)?;
        Ok(Running {
            gw: Gw::Child(ChildProcess::serve(&config, None)?),
            north,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        match &self.gw {
            Gw::Child(c) => c.pid(),
            Gw::InProcess(_) => std::process::id(),
        }
    }

    pub(crate) fn what(&self) -> String {
        match &self.gw {
            Gw::Child(_) => format!("gateway in a child process (pid {})", self.pid()),
            Gw::InProcess(_) => "gateway in this process".into(),
        }
    }

    /// Server A's client, once the gateway answers (bounded).
    pub(crate) async fn client(&mut self, within: Duration) -> CliResult<GatewayClient> {
        match &mut self.gw {
            Gw::Child(c) => c.server_a(self.north, within).await,
            Gw::InProcess(_) => connect_server_a(self.north, within, || Ok(())).await,
        }
    }

    pub(crate) async fn stop(self) {
        match self.gw {
            Gw::Child(c) => drop(c),
            Gw::InProcess(g) => g.stop().await,
        }
    }
}
