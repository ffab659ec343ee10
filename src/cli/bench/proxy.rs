//! `privgw bench proxy`: proxied CoAP GETs to one device over DTLS-PSK, through privgw and
//! through libcoap's forward proxy (`coap-server-openssl -P`, coap→coaps), same device, same
//! load, same run; both rates and the ratio privgw/libcoap go to the table `proxy`.
//!
//! * The device is the project's simulated LwM2M device (in this process, DTLS-PSK), so both
//!   proxies reach the very same listener and the tool can count what reached it.
//! * libcoap gets `GET` with `Proxy-Uri: coaps://<device>/<path>` on its `coap://` port; it
//!   dials the device with `-u`/`-k` (one upstream DTLS session per client endpoint).
//! * privgw (a child `privgw serve`, or in this process with `--in-process`) gets
//!   `GET /<prefix>/<path>` on its `coap://` listener from ServerB (`nosec_address`
//!   127.0.0.1), after ServerA granted ServerB Get on `<path>` of the device; it forwards over
//!   its own DTLS session to the device.
//! * The load ([`closed_loop`](super::closed_loop)): `--clients` UDP endpoints, each with
//!   `--window` CON GETs in flight, `--requests` per side per run or `--run-seconds`,
//!   whichever ends first; every endpoint is warmed first (libcoap's upstream handshakes,
//!   privgw's sessions) and the warm-up is not timed. Runs alternate libcoap, privgw, … so
//!   drift on a shared machine hits both.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;

use super::closed_loop::{Endpoint, Load, RunResult, Template, parse_code};
use super::common::{
    Medians, VERSUS_COLUMNS, describe, free_udp_port, libcoap_port, libcoap_server, versus_cells,
};
use crate::cli::CliResult;
use crate::cli::bench::gateway::Running;
use crate::cli::bench::process::clock_ticks_per_second;
use crate::cli::ctl::GatewayClient;
use crate::cli::demo::tempfile_dir;
use crate::cli::results::{Cell, Table, median};
use crate::coap::RequestType;
use crate::config::EndpointUri;
use crate::device::{AcInstance, Behaviour, DeviceSimConfig, RunningDevice};

/// The device's PSK identity and key (both proxies dial it with these).
const DEVICE_IDENTITY: &str = "gateway";
const DEVICE_KEY: &str = "proxybench-key";
/// The device's id, hence its privgw prefix.
const DEVICE_ID: &str = "dev0";

#[derive(Args, Debug, Clone)]
pub struct ProxyArgs {
    /// Client UDP endpoints per side (each its own source port).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// CON requests in flight per endpoint (closed loop).
    #[arg(long, default_value_t = 1)]
    pub window: usize,
    /// Requests per side per run.
    #[arg(long, default_value_t = 50_000)]
    pub requests: u64,
    /// Runs (libcoap then privgw in each); medians go to the table.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Time bound of one side's run, seconds.
    #[arg(long, default_value_t = 10)]
    pub run_seconds: u64,
    /// Stop starting runs after this many seconds in all.
    #[arg(long, default_value_t = 120)]
    pub max_seconds: u64,
    /// The device path read (an LwM2M object instance or below; the simulated device serves
    /// `/2/<instance>`, its Access Control object).
    #[arg(long, default_value = "/2/0")]
    pub path: String,
    /// The gateway's `nstart` (requests in flight to one device at once, 1 to 16; default:
    /// the gateway's default, 1). libcoap opens one upstream session per client endpoint.
    #[arg(long)]
    pub nstart: Option<u32>,
    /// Run the gateway inside this process instead of a child `privgw serve`.
    #[arg(long)]
    pub in_process: bool,
    /// The result table's name (`<out>/<table>.csv|json`), to keep runs with different
    /// settings apart.
    #[arg(long, default_value = "proxy")]
    pub table: String,
}

/// Object and instance of an LwM2M path (`/2/0`, `/3/0/0` → (2, 0), (3, 0)): the Access
/// Control instance the device needs so that ServerA (SSID 101) owns what it grants.
pub(crate) fn object_instance(path: &str) -> Option<(u16, u16)> {
    let mut segments = path.strip_prefix('/')?.split('/');
    let object = segments.next()?.parse().ok()?;
    let instance = segments.next()?.parse().ok()?;
    if segments.any(|s| s.parse::<u16>().is_err()) {
        return None;
    }
    Some((object, instance))
}

fn gateway_toml(
    store: &Path,
    secure: EndpointUri,
    plain: EndpointUri,
    device: EndpointUri,
    nstart: Option<u32>,
) -> String {
    let nstart = nstart
        .map(|n| format!("nstart = {n}\n"))
        .unwrap_or_default();
    format!(
        "[gateway]\nlisten = [\"{secure}\", \"{plain}\"]\nstore = {store:?}\ndevice_timeout_ms = 10000\nmax_in_flight = 256\n{nstart}\n\
         [[servers]]\nid = \"ServerA\"\nssid = 101\npsk_identity = \"serverA\"\npsk_key = \"secretA\"\n\n\
         [[servers]]\nid = \"ServerB\"\nssid = 102\nnosec_address = \"127.0.0.1\"\n\n\
         [[devices]]\nid = \"{DEVICE_ID}\"\nuri = \"{device}\"\nprofile = \"lwm2m\"\npsk_identity = \"{DEVICE_IDENTITY}\"\npsk_key = \"{DEVICE_KEY}\"\n"
    )
}

pub async fn run(args: ProxyArgs, out: &Path) -> CliResult<()> {
    if args.clients == 0 || args.clients > 250 {
        return Err("--clients must be 1 to 250 (the gateway keeps at most 256 NoSec sessions per source IP)".into());
    }
    if args.window == 0 || args.window > 64 {
        return Err("--window must be 1 to 64".into());
    }
    let Some((object, instance)) = object_instance(&args.path) else {
        return Err(format!(
            "--path {:?} is not an LwM2M path of an object instance or below (e.g. /2/0, /3/0/0)",
            args.path
        )
        .into());
    };
    let dir = tempfile_dir()?;
    let result = measure(&args, &dir, object, instance).await;
    let _ = std::fs::remove_dir_all(&dir);
    let table = result?;
    table.emit(out)?;
    Ok(())
}

async fn measure(args: &ProxyArgs, dir: &Path, object: u16, instance: u16) -> CliResult<Table> {
    let until = Instant::now() + Duration::from_secs(args.max_seconds);
    // The device: ServerA (SSID 101) owns the object instance it will grant.
    let device = RunningDevice::start(&DeviceSimConfig {
        id: DEVICE_ID.into(),
        listen: "coaps://127.0.0.1:0".into(),
        profile: "lwm2m".into(),
        psk_identity: Some(DEVICE_IDENTITY.into()),
        psk_key: Some(DEVICE_KEY.into()),
        behaviour: Behaviour::Normal,
        access_control: vec![AcInstance {
            instance: 0,
            object,
            object_instance: instance,
            owner: 101,
            acl: Default::default(),
        }],
        ..DeviceSimConfig::default()
    })
    .await?;
    let outcome = with_device(args, dir, &device, until).await;
    device.stop().await;
    outcome
}

async fn with_device(
    args: &ProxyArgs,
    dir: &Path,
    device: &RunningDevice,
    until: Instant,
) -> CliResult<Table> {
    let hz = clock_ticks_per_second();
    let device_uri = device.uri();
    // What the device itself answers, over DTLS-PSK: both proxies must give the same code.
    let mut direct = GatewayClient::connect(
        device_uri,
        Some((DEVICE_IDENTITY.into(), DEVICE_KEY.into())),
    )
    .await?;
    let reply = direct
        .request(RequestType::Get, &args.path, None, None, &[])
        .await?;
    drop(direct);
    let expect = parse_code(&reply.code)
        .ok_or_else(|| format!("the device answered an unreadable code {}", reply.code))?;

    // libcoap's forward proxy: coap:// in, coaps:// (PSK) out.
    let port = libcoap_port()?;
    let log = dir.join("libcoap-proxy.log");
    let libcoap = libcoap_server(
        port,
        &[
            "-P",
            ",libcoap-proxy",
            "-u",
            DEVICE_IDENTITY,
            "-k",
            DEVICE_KEY,
        ],
        &log,
    )?;
    let libcoap_addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let proxy_uri = format!("coaps://127.0.0.1:{}{}", device_uri.addr.port(), args.path);

    // privgw: ServerA grants ServerB Get on the path of the device, ServerB loads over NoSec.
    let secure: EndpointUri = format!("coaps://127.0.0.1:{}", free_udp_port()?).parse()?;
    let plain: EndpointUri = format!("coap://127.0.0.1:{}", free_udp_port()?).parse()?;
    let toml = gateway_toml(
        &dir.join("proxy.redb"),
        secure,
        plain,
        device_uri,
        args.nstart,
    );
    let mut gateway = Running::start(&toml, dir, "proxy", args.in_process, secure).await?;
    let outcome = async {
        let gw = &mut gateway;
        let mut a = gw.client(Duration::from_secs(30)).await?;
        let grant = a
            .add(DEVICE_ID, "Device", &args.path, "Get=ServerB")
            .await?;
        if grant.code != "2.01" {
            return Err(format!(
                "ServerA's grant of Get on {} of {DEVICE_ID} to ServerB answered {}: {}",
                args.path,
                grant.code,
                grant.render()
            )
            .into());
        }
        eprintln!(
            "privgw bench proxy: device {DEVICE_ID} (simulated LwM2M, DTLS-PSK) at {device_uri} answers GET {} with {} ({} bytes) directly; {} client endpoints × {} in flight per side, CON GET over UDP, {} requests or {} s per side per run, {} runs alternating",
            args.path,
            reply.code,
            reply.payload.len(),
            args.clients,
            args.window,
            args.requests,
            args.run_seconds,
            args.runs
        );
        eprintln!(
            "  libcoap: coap-server-openssl -P (pid {}) on coap://{libcoap_addr}, Proxy-Uri {proxy_uri}",
            libcoap.0.id()
        );
        eprintln!(
            "  privgw:  {} on {plain}, GET /{DEVICE_ID}{} from ServerB (nosec_address 127.0.0.1), Get granted by ServerA; nstart {}",
            gw.what(),
            args.path,
            args.nstart
                .map_or_else(|| "at the gateway's default (1)".to_owned(), |n| n.to_string())
        );
        let mut sides = [
            (Load::new("libcoap proxy", Template::proxy_uri(&proxy_uri)?, expect), libcoap.0.id()),
            (
                Load::new("privgw proxy", Template::prefixed_path(DEVICE_ID, &args.path)?, expect),
                gw.pid(),
            ),
        ];
        for (k, (side, _)) in sides.iter_mut().enumerate() {
            let to = if k == 0 { libcoap_addr } else { plain.addr };
            for i in 0..args.clients {
                let seed = u16::try_from(i + k * 1000).unwrap_or(0);
                side.endpoints.push(Endpoint::udp(to, seed).await?);
            }
        }
        // Warm both (libcoap may still be starting: retry its warm-up briefly).
        sides[0].0.warm_retrying(10, Duration::from_secs(3)).await.map_err(|e| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            format!("{e}; coap-server-openssl said: {}", log.trim())
        })?;
        sides[1].0.warm(Duration::from_secs(10)).await?;
        let mut results: [Vec<RunResult>; 2] = [Vec::new(), Vec::new()];
        let mut ratios = Vec::new();
        let mut table = table(&args.table);
        for run in 0..args.runs {
            let left = until.saturating_duration_since(Instant::now());
            if run > 0 && left < Duration::from_secs(2 * args.run_seconds + 2) {
                eprintln!("  (stopped after {run} runs: --max-seconds)");
                break;
            }
            let mut line = format!("run {}:", run + 1);
            let seen_before = device.requests();
            for (k, (side, pid)) in sides.iter_mut().enumerate() {
                let r = side
                    .measure(args.window, args.requests, args.run_seconds as f64, *pid, hz)
                    .await?;
                line.push_str(&format!(" {};", describe(&side.name, &r)));
                results[k].push(r);
            }
            let seen = device.requests().saturating_sub(seen_before);
            let (l, p) = (&results[0][run], &results[1][run]);
            let ratio = p.rate / l.rate.max(1e-9);
            ratios.push(ratio);
            eprintln!("{line} ratio privgw/libcoap {ratio:.2}; the device saw {seen}");
            let mut row: Vec<Cell> = vec![
                format!("{}x{}", args.clients, args.window).into(),
                format!("{}", run + 1).into(),
            ];
            row.extend(versus_cells(
                Medians::of(std::slice::from_ref(p)),
                Medians::of(std::slice::from_ref(l)),
                Some(ratio),
            ));
            table.push(row);
        }
        let [l, p] = &results;
        let mut row: Vec<Cell> = vec![
            format!("{}x{}", args.clients, args.window).into(),
            "median".into(),
        ];
        row.extend(versus_cells(Medians::of(p), Medians::of(l), Some(median(&mut ratios))));
        table.push(row);
        Ok(table)
    }
    .await;
    gateway.stop().await;
    drop(libcoap);
    outcome
}

fn table(name: &str) -> Table {
    let mut columns = vec!["shape", "run"];
    columns.extend(VERSUS_COLUMNS);
    Table::new(name, &columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_granted_path_names_its_object_instance() {
        assert_eq!(object_instance("/2/0"), Some((2, 0)));
        assert_eq!(object_instance("/3/0/0"), Some((3, 0)));
        assert_eq!(object_instance("/3/1/2/3"), Some((3, 1)));
        assert_eq!(object_instance("/3"), None);
        assert_eq!(object_instance("3/0"), None);
        assert_eq!(object_instance("/3/x"), None);
        assert_eq!(object_instance("/3/0/a"), None);
    }

    #[test]
    fn the_proxy_table_has_the_comparison_columns() {
        let t = table("proxy");
        assert_eq!(t.columns[..2], ["shape", "run"]);
        assert!(t.columns.iter().any(|c| c == "ratio"));
        assert_eq!(t.columns.len(), 2 + VERSUS_COLUMNS.len());
    }
}
