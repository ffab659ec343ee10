//! The gateway under measurement for the same-run comparisons (`front`, `handshakes`,
//! `proxy`): a child `privgw serve` on a config written to the run's folder (its log there
//! too, at `PRIVGW_LOAD_GATEWAY_LOG`, default `warn`), or a gateway in this process; and
//! [`Child`], a peer process killed when the measurement ends.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cli::CliResult;
use crate::cli::ctl::GatewayClient;
use crate::coap::RequestType;
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
    Child(Child),
    InProcess(Gateway),
}

pub(crate) struct Running {
    gw: Gw,
    north: EndpointUri,
    log: Option<PathBuf>,
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
                log: None,
            });
        }
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml)?;
        let log = dir.join(format!("{name}.log"));
        let child = std::process::Command::new(std::env::current_exe()?)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("PRIVGW_LOAD_GATEWAY_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Running {
            gw: Gw::Child(Child(child)),
            north,
            log: Some(log),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        match &self.gw {
            Gw::Child(c) => c.0.id(),
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
        let give_up = Instant::now() + within;
        loop {
            if let Gw::Child(c) = &mut self.gw {
                if let Some(status) = c.0.try_wait()? {
                    let log = self
                        .log
                        .as_ref()
                        .and_then(|l| std::fs::read_to_string(l).ok())
                        .unwrap_or_default();
                    return Err(format!("the gateway exited ({status}): {log}").into());
                }
            }
            let psk = Some((b"serverA".to_vec(), b"secretA".to_vec()));
            let attempt = tokio::time::timeout(
                Duration::from_secs(3),
                GatewayClient::connect(self.north, psk),
            );
            if let Ok(Ok(mut client)) = attempt.await {
                let asked = client
                    .request(RequestType::Get, "/GwConfig/Privileges", None, None, &[])
                    .await;
                if asked.is_ok_and(|r| r.code == "2.05") {
                    return Ok(client);
                }
            }
            if Instant::now() >= give_up {
                return Err(format!(
                    "the gateway at {} did not answer within {within:?}",
                    self.north
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(crate) async fn stop(self) {
        match self.gw {
            Gw::Child(c) => drop(c),
            Gw::InProcess(g) => g.stop().await,
        }
    }
}
