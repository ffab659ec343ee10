//! `privgw load`: the project's own load tool. Starts N simulated LwM2M devices, a gateway and
//! server A in one process over loopback, then measures (bounded in count and time):
//!
//! * group verification: Add on a group of all N devices (every device read over its own
//!   DTLS-PSK or UDP session), then Delete of it (verified again) — latency per write;
//! * GET throughput of `/GwConfig/Privileges` from one client (one exchange at a time).
//!
//! Proxied GETs against libcoap's forward proxy moved to `privgw bench proxy`, the front end
//! against libcoap's server to `privgw bench front` (`src/cli/bench/`).
//!
//! Medians and percentiles are printed; nothing is judged here.

use std::time::{Duration, Instant};

use clap::Args;

use crate::cli::CliResult;
use crate::cli::ctl::GatewayClient;
use crate::cli::demo::tempfile_dir;
use crate::coap::RequestType;
use crate::config::Config;
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
    /// Registering mode: the devices register with the gateway (its `[[lwm2m.listen]]`
    /// listener, `coaps://` or with `--nosec` `coap://`, on loopback), each from its own
    /// source IP in 127.1.0.0/16, and the group is read over their registrations; then the
    /// same N as dialled devices, same run, for the ratio. The gateway runs as a child
    /// `privgw serve` so its RSS, CPU, threads and sockets are its own.
    #[arg(long)]
    register: bool,
    /// Registering mode: Registers (DTLS handshakes included) in flight at once; at most the
    /// gateway's default `dtls_max_handshakes` (256).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Registering mode: run the gateway inside this process instead (its RSS then includes
    /// the simulated devices).
    #[arg(long)]
    in_process: bool,
    /// Registering mode: skip the dialled comparison.
    #[arg(long)]
    no_dialed: bool,
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
    if args.register {
        return registered::run(&args).await;
    }
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
    Ok(())
}

/// Kills the peer process when the measurement ends, however it ends.
pub(crate) struct Child(pub(crate) std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `privgw load --register`: N simulated LwM2M clients register with the gateway over
/// DTLS-PSK (or NoSec UDP) from N source addresses; the gateway's RSS is read before and
/// after, then group writes over the registrations are timed, and the same N dialled
/// devices after that for the ratio. Every wait is bounded by `--max-seconds`.
pub(crate) mod registered {
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tokio::sync::Semaphore;
    use tokio::task::JoinSet;

    use super::{Child, LoadArgs, percentile, summary};
    use crate::cli::CliResult;
    pub(super) use crate::cli::bench::process::{ProcStats, clock_ticks_per_second};
    use crate::cli::ctl::GatewayClient;
    use crate::cli::demo::tempfile_dir;
    use crate::coap::RequestType;
    use crate::config::{Config, EndpointUri, Scheme};
    use crate::device::{AcInstance, Behaviour, DeviceSimConfig, RunningDevice, registering};
    use crate::gateway::Gateway;

    /// The gateway's default `[limits] dtls_max_handshakes`, which pacing stays within.
    const GATEWAY_MAX_HANDSHAKES: usize = 256;
    /// How long one device may take from its start to its 2.01 (it retries meanwhile).
    const REGISTER_PATIENCE: Duration = Duration::from_secs(60);

    /// Device `i`'s source address: 127.1.(i / 200).(i % 200 + 1), so at most one device per
    /// IP up to 51 200 devices (the gateway's per-IP caps are then never what limits).
    pub(super) fn source_ip(i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(
            127,
            1,
            u8::try_from(i / 200).unwrap_or(u8::MAX),
            u8::try_from(i % 200 + 1).unwrap_or(1),
        ))
    }

    fn ac() -> Vec<AcInstance> {
        vec![AcInstance {
            instance: 0,
            object: 3,
            object_instance: 0,
            owner: 101,
            acl: Default::default(),
        }]
    }

    /// Two free loopback UDP ports (held together while probing, so they differ).
    fn free_ports() -> CliResult<(u16, u16)> {
        let a = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let b = std::net::UdpSocket::bind("127.0.0.1:0")?;
        Ok((a.local_addr()?.port(), b.local_addr()?.port()))
    }

    fn header(store: &Path, north: EndpointUri) -> String {
        format!(
            "[gateway]\nlisten = [\"{north}\"]\nstore = {store:?}\ndevice_timeout_ms = 10000\nmax_in_flight = 256\n\n\
             [[servers]]\nid = \"ServerA\"\nssid = 101\npsk_identity = \"serverA\"\npsk_key = \"secretA\"\n\n\
             [[servers]]\nid = \"ServerB\"\nssid = 102\npsk_identity = \"serverB\"\npsk_key = \"secretB\"\n"
        )
    }

    fn group(toml: &mut String, ids: impl Iterator<Item = String>) {
        let members: Vec<String> = ids.map(|id| format!("\"{id}\"")).collect();
        toml.push_str(&format!(
            "\n[[groups]]\nid = \"ALL\"\nmembers = [{}]\n",
            members.join(", ")
        ));
    }

    fn mib(kib: u64) -> f64 {
        kib as f64 / 1024.0
    }

    fn open_files_limit() -> String {
        std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
            })
            .unwrap_or_else(|| "?".into())
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

        pub(crate) fn stats(&self) -> ProcStats {
            ProcStats::of(self.pid())
        }

        pub(crate) fn what(&self) -> String {
            match &self.gw {
                Gw::Child(_) => format!("gateway in a child process (pid {})", self.pid()),
                Gw::InProcess(_) => "gateway in this process".into(),
            }
        }

        fn rss_label(&self) -> &'static str {
            match &self.gw {
                Gw::Child(_) => "gateway RSS",
                Gw::InProcess(_) => "process RSS (gateway + simulated devices)",
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

    /// Group writes on `ALL` (Add verified on every device, then Delete): the first Add apart,
    /// then the rest. Bounded by `rounds` and `until`.
    /// Also returns the gateway's and this process's stats right after the first Add, so CPU
    /// per write can leave out the first Add (a dialled fleet's handshakes).
    async fn group_writes(
        client: &mut GatewayClient,
        gateway: &Running,
        n: usize,
        rounds: usize,
        until: Instant,
    ) -> CliResult<Writes> {
        let mut first = Duration::ZERO;
        let mut after_first = (ProcStats::default(), ProcStats::default());
        let mut adds = Vec::new();
        let mut deletes = Vec::new();
        for round in 0..rounds.max(1) {
            if round > 0 && Instant::now() > until {
                break;
            }
            let t = Instant::now();
            let reply = client.add("ALL", "Group", "/3/0", "Get=ServerB").await?;
            let took = t.elapsed();
            if reply.code != "2.01" || reply.verified_ids().len() != n {
                return Err(format!(
                    "round {round}: Add answered {} ({} of {n} verified): {}",
                    reply.code,
                    reply.verified_ids().len(),
                    reply.render().chars().take(2000).collect::<String>()
                )
                .into());
            }
            if round == 0 {
                first = took;
                after_first = (gateway.stats(), ProcStats::of(std::process::id()));
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
        Ok(Writes {
            first,
            adds,
            deletes,
            after_first,
        })
    }

    struct Writes {
        first: Duration,
        adds: Vec<Duration>,
        deletes: Vec<Duration>,
        after_first: (ProcStats, ProcStats),
    }

    /// CPU per group write: the gateway's (per device read too) and the load tool's.
    fn cpu_per_write(
        label: &str,
        gateway: &Running,
        (gw_before, tool_before): (ProcStats, ProcStats),
        writes: usize,
        n: usize,
        hz: f64,
    ) {
        let gw = gateway
            .stats()
            .cpu_ticks
            .saturating_sub(gw_before.cpu_ticks) as f64
            / hz;
        let tool = ProcStats::of(std::process::id())
            .cpu_ticks
            .saturating_sub(tool_before.cpu_ticks) as f64
            / hz;
        let writes = writes.max(1) as f64;
        if matches!(gateway.gw, Gw::Child(_)) {
            println!(
                "{label}: CPU per group write (Add or Delete, {writes:.0} writes after the first Add): gateway {:.1} ms = {:.1} µs per device read, load tool (the devices) {:.1} ms",
                1e3 * gw / writes,
                1e6 * gw / writes / n as f64,
                1e3 * tool / writes,
            );
        } else {
            println!(
                "{label}: CPU per group write (Add or Delete, {writes:.0} writes after the first Add), gateway and devices together: {:.1} ms",
                1e3 * tool / writes
            );
        }
    }

    /// Times the group writes of one phase and prints them (CPU per write, the first Add,
    /// Add and Delete summaries); returns the median group Add (ms) and the gateway's stats
    /// right after the writes.
    async fn timed_writes(
        label: &str,
        first_add: &str,
        client: &mut GatewayClient,
        gateway: &Running,
        args: &LoadArgs,
        until: Instant,
        hz: f64,
    ) -> CliResult<(f64, ProcStats)> {
        let n = args.devices;
        let Writes {
            first,
            adds,
            deletes,
            after_first,
        } = group_writes(client, gateway, n, args.rounds, until).await?;
        let writes = adds.len() + deletes.len();
        cpu_per_write(label, gateway, after_first, writes, n, hz);
        let stats = gateway.stats();
        println!("{label}: {first_add}: {:.2} ms", first.as_secs_f64() * 1e3);
        let median = median_ms(adds.clone());
        summary(&format!("{label}: group Add, N={n}"), adds);
        summary(&format!("{label}: group Delete, N={n}"), deletes);
        Ok((median, stats))
    }

    fn median_ms(mut samples: Vec<Duration>) -> f64 {
        samples.sort();
        percentile(&samples, 0.5).as_secs_f64() * 1e3
    }

    pub(super) async fn run(args: &LoadArgs) -> CliResult<()> {
        let started = Instant::now();
        let until = started + Duration::from_secs(args.max_seconds);
        let n = args.devices;
        if n == 0 {
            return Err("--devices must be at least 1".into());
        }
        if args.in_flight == 0 || args.in_flight > GATEWAY_MAX_HANDSHAKES {
            return Err(format!(
                "--in-flight must be 1 to {GATEWAY_MAX_HANDSHAKES} (the gateway's default dtls_max_handshakes; its caps are not raised here)"
            )
            .into());
        }
        if n > 200 * 256 {
            return Err("at most 51200 devices (one source IP each in 127.1.0.0/16)".into());
        }
        let dir = tempfile_dir()?;
        let result = measure(args, &dir, until).await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    async fn measure(args: &LoadArgs, dir: &Path, until: Instant) -> CliResult<()> {
        let n = args.devices;
        let hz = clock_ticks_per_second();
        let registered_median = registered_phase(args, dir, until, hz).await?;
        if args.no_dialed {
            return Ok(());
        }
        let dialed_median = dialed_phase(args, dir, until, hz).await?;
        println!(
            "ratio registered/dialed (group Add median, sessions reused, N={n}): {:.2} ({registered_median:.2} ms / {dialed_median:.2} ms)",
            registered_median / dialed_median
        );
        Ok(())
    }

    /// Registers N devices, reads the gateway's RSS around it, times the group writes.
    /// Returns the median group Add (sessions reused), ms.
    async fn registered_phase(
        args: &LoadArgs,
        dir: &Path,
        until: Instant,
        hz: f64,
    ) -> CliResult<f64> {
        let n = args.devices;
        let (north_port, rd_port) = free_ports()?;
        let north: EndpointUri = format!("coaps://127.0.0.1:{north_port}").parse()?;
        let scheme = if args.nosec {
            Scheme::Coap
        } else {
            Scheme::Coaps
        };
        let rd: EndpointUri = format!("{}://127.0.0.1:{rd_port}", scheme.as_str()).parse()?;
        let mut toml = header(&dir.join("registered.redb"), north);
        toml.push_str(&format!("\n[[lwm2m.listen]]\nuri = \"{rd}\"\n"));
        for i in 0..n {
            toml.push_str(&format!(
                "\n[[devices]]\nid = \"rdev{i:05}\"\nregisters = true\nprofile = \"lwm2m\"\n"
            ));
            if args.nosec {
                toml.push_str("nosec = true\n");
            } else {
                toml.push_str(&format!(
                    "psk_identity = \"rdev{i:05}\"\npsk_key = \"rkey{i}\"\n"
                ));
            }
        }
        group(&mut toml, (0..n).map(|i| format!("rdev{i:05}")));
        let mut gateway = Running::start(&toml, dir, "registered", args.in_process, north).await?;
        let mut client = gateway.client(Duration::from_secs(30)).await?;
        println!(
            "privgw load --register: {n} {} devices register with {rd}, {}; source IPs {}..{} (one each); {} Registers in flight; gateway [limits] at defaults (dtls_max_handshakes 256, dtls_max_handshakes_per_ip 8, udp_max_sessions_per_ip 256); open files limit {} (this process holds one socket per device)",
            if args.nosec { "NoSec UDP" } else { "DTLS-PSK" },
            gateway.what(),
            source_ip(0),
            source_ip(n - 1),
            args.in_flight,
            open_files_limit(),
        );
        let before = gateway.stats();
        let tool_before = ProcStats::of(std::process::id());

        let t_all = Instant::now();
        let slots = Arc::new(Semaphore::new(args.in_flight));
        let mut starting = JoinSet::new();
        let mut launched = 0usize;
        for i in 0..n {
            let remaining = until.saturating_duration_since(Instant::now());
            let Ok(Ok(slot)) = tokio::time::timeout(remaining, slots.clone().acquire_owned()).await
            else {
                break;
            };
            let cfg = DeviceSimConfig {
                id: format!("rdev{i:05}"),
                register: vec![rd.to_string()],
                profile: "lwm2m".into(),
                psk_identity: (!args.nosec).then(|| format!("rdev{i:05}")),
                psk_key: (!args.nosec).then(|| format!("rkey{i}")),
                // No Update falls into the measurement (the first is due after 3 507 s).
                lifetime_s: Some(3600),
                behaviour: Behaviour::Normal,
                access_control: ac(),
                ..DeviceSimConfig::default()
            };
            let patience = REGISTER_PATIENCE.min(remaining);
            starting.spawn(async move {
                let t = Instant::now();
                let device =
                    registering::with_local_ip(source_ip(i), RunningDevice::start(&cfg)).await;
                let device = match device {
                    Ok(d) => d,
                    Err(e) => return (None, Err(e.to_string())),
                };
                let registered = device.wait_registered(patience).await;
                drop(slot);
                let took = t.elapsed();
                (
                    Some(device),
                    if registered {
                        Ok(took)
                    } else {
                        Err(format!("not registered after {took:?}"))
                    },
                )
            });
            launched += 1;
            if launched % (n / 10).max(1) == 0 {
                eprintln!(
                    "  … {launched} of {n} devices launched, {:.1} s",
                    t_all.elapsed().as_secs_f64()
                );
            }
        }
        let mut devices = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        let mut failures = Vec::new();
        while let Some(joined) = starting.join_next().await {
            let (device, outcome) = joined?;
            devices.extend(device);
            match outcome {
                Ok(t) => times.push(t),
                Err(e) => failures.push(e),
            }
        }
        let all = t_all.elapsed();
        let after = gateway.stats();
        let tool_after = ProcStats::of(std::process::id());
        times.sort();
        println!(
            "registered: {}/{n} in {:.2} s = {:.0} registrations/s; per registration (device start → 2.01, {} in flight): median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            times.len(),
            all.as_secs_f64(),
            times.len() as f64 / all.as_secs_f64(),
            args.in_flight,
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3,
            times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
        let grown = after.rss_kib.saturating_sub(before.rss_kib) * 1024;
        println!(
            "{}: before the devices {:.1} MiB, after all registered {:.1} MiB → {:.0} bytes per registration; gateway threads {} → {}, open fds {} → {}",
            gateway.rss_label(),
            mib(before.rss_kib),
            mib(after.rss_kib),
            grown as f64 / times.len().max(1) as f64,
            before.threads,
            after.threads,
            before.fds,
            after.fds,
        );
        let gw_cpu = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / hz;
        let tool_cpu = tool_after.cpu_ticks.saturating_sub(tool_before.cpu_ticks) as f64 / hz;
        if matches!(gateway.gw, Gw::Child(_)) {
            println!(
                "CPU while registering ({:.1} s wall, 2 cores shared): gateway {gw_cpu:.1} s, load tool (the simulated clients) {tool_cpu:.1} s → the tool used {:.0} % of the CPU the two took",
                all.as_secs_f64(),
                100.0 * tool_cpu / (gw_cpu + tool_cpu).max(1e-9)
            );
        } else {
            println!(
                "CPU while registering ({:.1} s wall): gateway and simulated clients together {tool_cpu:.1} s",
                all.as_secs_f64()
            );
        }
        if !failures.is_empty() {
            let shown: Vec<&String> = failures.iter().take(5).collect();
            for d in devices {
                d.stop().await;
            }
            gateway.stop().await;
            return Err(format!(
                "{} of {n} devices did not register (bounded by --max-seconds and {REGISTER_PATIENCE:?} each); first: {shown:?}",
                failures.len()
            )
            .into());
        }

        let first_add = "first group Add (every device read over its registration once)";
        let (median, written) = timed_writes(
            "registered",
            first_add,
            &mut client,
            &gateway,
            args,
            until,
            hz,
        )
        .await?;
        println!(
            "{} after the group writes: {:.1} MiB",
            gateway.rss_label(),
            mib(written.rss_kib)
        );
        let t = Instant::now();
        for d in devices {
            d.stop().await;
        }
        gateway.stop().await;
        tracing::debug!("stopped {n} registering devices in {:?}", t.elapsed());
        Ok(median)
    }

    /// The same N as dialled devices (the gateway is their DTLS client). Returns the median
    /// group Add (sessions reused), ms.
    async fn dialed_phase(args: &LoadArgs, dir: &Path, until: Instant, hz: f64) -> CliResult<f64> {
        let n = args.devices;
        let scheme = if args.nosec { "coap" } else { "coaps" };
        let mut devices = Vec::with_capacity(n);
        for i in 0..n {
            let cfg = DeviceSimConfig {
                id: format!("dev{i:05}"),
                listen: format!("{scheme}://127.0.0.1:0"),
                profile: "lwm2m".into(),
                psk_identity: (!args.nosec).then(|| "gateway".to_owned()),
                psk_key: (!args.nosec).then(|| format!("key{i}")),
                behaviour: Behaviour::Normal,
                access_control: ac(),
                ..DeviceSimConfig::default()
            };
            devices.push(RunningDevice::start(&cfg).await?);
        }
        let (north_port, _) = free_ports()?;
        let north: EndpointUri = format!("coaps://127.0.0.1:{north_port}").parse()?;
        let mut toml = header(&dir.join("dialed.redb"), north);
        for (i, d) in devices.iter().enumerate() {
            toml.push_str(&format!(
                "\n[[devices]]\nid = \"dev{i:05}\"\nuri = \"{}\"\nprofile = \"lwm2m\"\n",
                d.uri()
            ));
            if !args.nosec {
                toml.push_str(&format!(
                    "psk_identity = \"gateway\"\npsk_key = \"key{i}\"\n"
                ));
            }
        }
        group(&mut toml, (0..n).map(|i| format!("dev{i:05}")));
        let mut gateway = Running::start(&toml, dir, "dialed", args.in_process, north).await?;
        let mut client = gateway.client(Duration::from_secs(30)).await?;
        println!(
            "dialed: {n} {} devices on 127.0.0.1 dialled by the gateway, {}",
            if args.nosec { "UDP" } else { "DTLS-PSK" },
            gateway.what()
        );
        let before = gateway.stats();
        let first_add = format!("first group Add (includes {n} handshakes)");
        let (median, after) =
            timed_writes("dialed", &first_add, &mut client, &gateway, args, until, hz).await?;
        println!(
            "dialed: {} before the first group Add {:.1} MiB, after the group writes {:.1} MiB → {:.0} bytes per dialled device; threads {} → {}, open fds {} → {}",
            gateway.rss_label(),
            mib(before.rss_kib),
            mib(after.rss_kib),
            (after.rss_kib.saturating_sub(before.rss_kib) * 1024) as f64 / n as f64,
            before.threads,
            after.threads,
            before.fds,
            after.fds,
        );
        gateway.stop().await;
        for d in devices {
            d.stop().await;
        }
        Ok(median)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn every_device_gets_its_own_loopback_source_ip() {
            assert_eq!(source_ip(0).to_string(), "127.1.0.1");
            assert_eq!(source_ip(199).to_string(), "127.1.0.200");
            assert_eq!(source_ip(200).to_string(), "127.1.1.1");
            assert_eq!(source_ip(9_999).to_string(), "127.1.49.200");
            let ips: std::collections::BTreeSet<IpAddr> = (0..10_000).map(source_ip).collect();
            assert_eq!(ips.len(), 10_000);
            assert!(ips.iter().all(IpAddr::is_loopback));
        }
    }
}
