//! `privgw load`: the project's own load tool. Starts N simulated LwM2M devices, a gateway and
//! server A in one process over loopback, then measures (bounded in count and time):
//!
//! * group verification: Add on a group of all N devices (every device read over its own
//!   DTLS-PSK or UDP session), then Delete of it (verified again) — latency per write;
//! * GET throughput of `/GwConfig/Privileges` from one client (one exchange at a time).
//!
//! Medians and percentiles are printed; nothing is judged here.

use std::time::{Duration, Instant};

use clap::Args;

use crate::cli::CliResult;
use crate::cli::ctl::GatewayClient;
use crate::cli::demo::tempfile_dir;
use crate::coap::RequestType;
use crate::config::{Config, EndpointUri};
use crate::device::{AcInstance, Behaviour, DeviceSimConfig, RunningDevice};
use crate::gateway::Gateway;

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Devices in the group.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Devices speak plain UDP instead of DTLS-PSK.
    #[arg(long)]
    nosec: bool,
    /// Group writes to measure (each an Add and a Delete).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// GET requests for the throughput figure.
    #[arg(long, default_value_t = 2000)]
    gets: usize,
    /// Stop measuring after this many seconds, whatever the counts.
    #[arg(long, default_value_t = 60)]
    max_seconds: u64,
    /// Also measure GET /.well-known/core over UDP against libcoap's coap-server-openssl and
    /// our own CoAP server in the same run, and print the ratio.
    #[arg(long)]
    vs_libcoap: bool,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn summary(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{label}: n={} median={:.2} ms p90={:.2} ms max={:.2} ms",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.9).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}

pub async fn run(args: LoadArgs) -> CliResult<()> {
    let started = Instant::now();
    let budget = Duration::from_secs(args.max_seconds);
    let scheme = if args.nosec { "coap" } else { "coaps" };
    let mut devices = Vec::with_capacity(args.devices);
    for i in 0..args.devices {
        let cfg = DeviceSimConfig {
            id: format!("dev{i:05}"),
            listen: format!("{scheme}://127.0.0.1:0"),
            profile: "lwm2m".into(),
            psk_identity: (!args.nosec).then(|| "gateway".to_owned()),
            psk_key: (!args.nosec).then(|| format!("key{i}")),
            psk_key_hex: None,
            cert: None,
            key: None,
            ca: None,
            behaviour: Behaviour::Normal,
            access_control: vec![AcInstance {
                instance: 0,
                object: 3,
                object_instance: 0,
                owner: 101,
                acl: Default::default(),
            }],
            acls: Default::default(),
            ..DeviceSimConfig::default()
        };
        devices.push(RunningDevice::start(&cfg).await?);
    }
    let dir = tempfile_dir()?;
    let mut toml = format!(
        "[gateway]\nlisten = [\"coaps://127.0.0.1:0\"]\nstore = {:?}\ndevice_timeout_ms = 10000\nmax_in_flight = 256\n\n\
         [[servers]]\nid = \"ServerA\"\nssid = 101\npsk_identity = \"serverA\"\npsk_key = \"secretA\"\n\n\
         [[servers]]\nid = \"ServerB\"\nssid = 102\npsk_identity = \"serverB\"\npsk_key = \"secretB\"\n",
        dir.join("load.redb")
    );
    let mut members = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let id = format!("dev{i:05}");
        toml.push_str(&format!(
            "\n[[devices]]\nid = \"{id}\"\nuri = \"{}\"\nprofile = \"lwm2m\"\n",
            d.uri()
        ));
        if !args.nosec {
            toml.push_str(&format!(
                "psk_identity = \"gateway\"\npsk_key = \"key{i}\"\n"
            ));
        }
        members.push(format!("\"{id}\""));
    }
    toml.push_str(&format!(
        "\n[[groups]]\nid = \"ALL\"\nmembers = [{}]\n",
        members.join(", ")
    ));
    let gateway = Gateway::start(Config::parse(&toml)?).await?;
    let uri = gateway.listeners()[0];
    let mut client =
        GatewayClient::connect(uri, Some((b"serverA".to_vec(), b"secretA".to_vec()))).await?;
    println!(
        "privgw load: {} {} devices in one group, gateway {uri}",
        args.devices,
        if args.nosec { "UDP" } else { "DTLS-PSK" }
    );

    let mut adds = Vec::new();
    let mut deletes = Vec::new();
    let mut first = None;
    for round in 0..args.rounds {
        if started.elapsed() > budget {
            break;
        }
        let t = Instant::now();
        let reply = client.add("ALL", "Group", "/3/0", "Get=ServerB").await?;
        let took = t.elapsed();
        if reply.code != "2.01" || reply.verified_ids().len() != args.devices {
            return Err(format!(
                "round {round}: Add answered {} ({} verified)",
                reply.code,
                reply.verified_ids().len()
            )
            .into());
        }
        // The first round includes every device's DTLS handshake; report it apart.
        if round == 0 {
            first = Some(took);
        } else {
            adds.push(took);
        }
        let location = reply.location.clone().unwrap_or_default();
        let t = Instant::now();
        let reply = client
            .request(RequestType::Delete, &location, None, None, &[])
            .await?;
        deletes.push(t.elapsed());
        if reply.code != "2.02" {
            return Err(format!("round {round}: Delete answered {}", reply.code).into());
        }
    }
    if let Some(f) = first {
        println!(
            "first group Add (includes {} handshakes): {:.2} ms",
            args.devices,
            f.as_secs_f64() * 1e3
        );
    }
    summary("group Add (sessions reused)", adds);
    summary("group Delete", deletes);

    let t = Instant::now();
    let mut done = 0usize;
    for _ in 0..args.gets {
        if started.elapsed() > budget {
            break;
        }
        let reply = client
            .request(RequestType::Get, "/GwConfig/Privileges", None, None, &[])
            .await?;
        if reply.code != "2.05" {
            return Err(format!("GET answered {}", reply.code).into());
        }
        done += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "GET /GwConfig/Privileges over DTLS, one at a time: {done} in {secs:.2} s = {:.0} req/s",
        done as f64 / secs
    );

    gateway.stop().await;
    for d in devices {
        d.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    if args.vs_libcoap {
        versus_libcoap(args.gets, budget.saturating_sub(started.elapsed())).await?;
    }
    Ok(())
}

/// GETs of `/.well-known/core`, one at a time, from one client: `n` or until `budget`.
async fn get_rate(uri: EndpointUri, n: usize, budget: Duration) -> CliResult<f64> {
    let mut client = GatewayClient::connect(uri, None).await?;
    // Warm up (first exchange, ARP-free loopback, allocator).
    client
        .request(RequestType::Get, "/.well-known/core", None, None, &[])
        .await?;
    let t = Instant::now();
    let mut done = 0usize;
    while done < n && t.elapsed() < budget {
        let reply = client
            .request(RequestType::Get, "/.well-known/core", None, None, &[])
            .await?;
        if reply.code != "2.05" {
            return Err(format!("{uri}: GET answered {}", reply.code).into());
        }
        done += 1;
    }
    Ok(done as f64 / t.elapsed().as_secs_f64())
}

/// Kills the peer process when the measurement ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Same client, same request, same machine, same run: libcoap's server against ours.
async fn versus_libcoap(n: usize, budget: Duration) -> CliResult<()> {
    let port = {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0")?;
        probe.local_addr()?.port()
    };
    let peer = std::process::Command::new("coap-server-openssl")
        .args(["-A", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("cannot start coap-server-openssl (apt-get install libcoap3-bin): {e}")
        })?;
    let _peer = Child(peer);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ours = RunningDevice::start(&DeviceSimConfig {
        id: "bench".into(),
        listen: "coap://127.0.0.1:0".into(),
        profile: "lwm2m".into(),
        ..DeviceSimConfig::default()
    })
    .await?;
    let libcoap_uri: EndpointUri = format!("coap://127.0.0.1:{port}").parse()?;
    let half = budget / 2;
    let theirs = get_rate(libcoap_uri, n, half).await?;
    let mine = get_rate(ours.uri(), n, half).await?;
    ours.stop().await;
    println!(
        "GET /.well-known/core over UDP, one client, one at a time: libcoap {theirs:.0} req/s, privgw {mine:.0} req/s, ratio privgw/libcoap {:.2}",
        mine / theirs
    );
    Ok(())
}
