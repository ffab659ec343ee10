//! `privgw bench front`: the front end under closed-loop CON GETs, privgw (`privgw serve` as a
//! child) vs libcoap (`coap-server-openssl`), same client, same run, alternating.
//!
//! * Targets: `/.well-known/core` on both; **data**: privgw `GET /GwConfig/Privileges` (the
//!   empty list) vs libcoap's `/data`, a dynamic resource (`-d`) that the tool first PUTs with
//!   the very bytes privgw answers, so both bodies are the same size.
//! * UDP: privgw's NoSec `coap://` listener (the client is ServerB by `nosec_address`
//!   127.0.0.1) vs libcoap's `coap://` port, one row per `--shapes` entry (N endpoints × W in
//!   flight). DTLS: one DTLS-PSK session per side (privgw's `coaps://` listener as ServerA,
//!   libcoap's `-k` port), `--dtls-window` in flight.
//! * Each row warms both sides (3 requests per endpoint), then `--runs` runs of each side,
//!   `--requests` or `--run-seconds` per run, the order swapped every run; medians go to the
//!   table `front` with the CPU of each server process per request (`/proc/<pid>/stat`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;

use super::closed_loop::{Endpoint, Load, RunResult, Shape, Template, parse_shapes, psk_client};
use super::common::{
    Medians, VERSUS_COLUMNS, describe, free_udp_port, libcoap_port, libcoap_server, versus_cells,
};
use crate::cli::CliResult;
use crate::cli::bench::gateway::Running;
use crate::cli::bench::process::clock_ticks_per_second;
use crate::cli::ctl::GatewayClient;
use crate::cli::demo::tempfile_dir;
use crate::cli::results::{Cell, Progress, Table};
use crate::coap::RequestType;
use crate::config::EndpointUri;

const LIBCOAP_KEY: &str = "frontbench-key";
pub(crate) const DATA_PRIVGW: &str = "/GwConfig/Privileges";
const DATA_LIBCOAP: &str = "/data";
const WKC: &str = "/.well-known/core";

#[derive(Args, Debug, Clone)]
pub struct FrontArgs {
    /// UDP load shapes, `NxW` (client endpoints × requests in flight each), comma-separated.
    #[arg(long, default_value = "1x1,16x1,64x4")]
    pub shapes: String,
    /// Runs per side per row (alternating); the table has the medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Requests per side per run.
    #[arg(long, default_value_t = 50_000)]
    pub requests: u64,
    /// Time bound of one side's run, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub run_seconds: f64,
    /// Requests in flight over the one DTLS-PSK session.
    #[arg(long, default_value_t = 1)]
    pub dtls_window: usize,
    /// Skip the DTLS rows.
    #[arg(long)]
    pub no_dtls: bool,
    /// Stop starting rows after this many seconds in all.
    #[arg(long, default_value_t = 600)]
    pub max_seconds: u64,
}

/// One row of the table: what is read, over which transport, in what shape.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Row {
    data: bool,
    dtls: bool,
    shape: Shape,
}

fn rows(shapes: &[Shape], dtls_window: usize, dtls: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    for data in [false, true] {
        for &shape in shapes {
            rows.push(Row {
                data,
                dtls: false,
                shape,
            });
        }
    }
    if dtls {
        for data in [false, true] {
            rows.push(Row {
                data,
                dtls: true,
                shape: Shape {
                    clients: 1,
                    window: dtls_window,
                },
            });
        }
    }
    rows
}

pub(crate) fn gateway_toml(store: &Path, secure: EndpointUri, plain: EndpointUri) -> String {
    format!(
        "[gateway]\nlisten = [\"{secure}\", \"{plain}\"]\nstore = {store:?}\nmax_in_flight = 256\n\n\
         [[servers]]\nid = \"ServerA\"\nssid = 101\npsk_identity = \"serverA\"\npsk_key = \"secretA\"\n\n\
         [[servers]]\nid = \"ServerB\"\nssid = 102\nnosec_address = \"127.0.0.1\"\n"
    )
}

pub fn table() -> Table {
    let mut columns = vec![
        "target",
        "transport",
        "shape",
        "privgw_bytes",
        "libcoap_bytes",
    ];
    columns.extend(VERSUS_COLUMNS);
    Table::new("front", &columns)
}

pub async fn run(args: FrontArgs, out: &Path) -> CliResult<()> {
    let shapes = parse_shapes(&args.shapes)?;
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    if args.dtls_window == 0 || args.dtls_window > 64 {
        return Err("--dtls-window must be 1 to 64".into());
    }
    let dir = tempfile_dir()?;
    let result = measure(&args, &shapes, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result?.emit(out)?;
    Ok(())
}

/// The two servers, their addresses and what the data GET answers on each.
struct Servers {
    privgw_pid: u32,
    libcoap_pid: u32,
    privgw_udp: SocketAddr,
    privgw_dtls: SocketAddr,
    libcoap_udp: SocketAddr,
    libcoap_dtls: SocketAddr,
    /// Body sizes: (privgw, libcoap) for `/.well-known/core` and for data.
    wkc_bytes: (usize, usize),
    data_bytes: (usize, usize),
}

async fn measure(args: &FrontArgs, shapes: &[Shape], dir: &Path) -> CliResult<Table> {
    let started = Instant::now();
    let port = libcoap_port()?;
    let log = dir.join("libcoap.log");
    let libcoap = libcoap_server(port, &["-d", "4", "-k", LIBCOAP_KEY], &log)?;
    let secure: EndpointUri = format!("coaps://127.0.0.1:{}", free_udp_port()?).parse()?;
    let plain: EndpointUri = format!("coap://127.0.0.1:{}", free_udp_port()?).parse()?;
    let toml = gateway_toml(&dir.join("front.redb"), secure, plain);
    let mut gateway = Running::start(&toml, dir, "front", false, secure).await?;
    let outcome = async {
        let mut a = gateway.client(Duration::from_secs(30)).await?;
        let data = a
            .request(RequestType::Get, DATA_PRIVGW, None, None, &[])
            .await?;
        if data.code != "2.05" {
            return Err(format!("privgw answered GET {DATA_PRIVGW} with {}", data.code).into());
        }
        let wkc = a.request(RequestType::Get, WKC, None, None, &[]).await?;
        drop(a);
        let libcoap_udp: SocketAddr = ([127, 0, 0, 1], port).into();
        let (libcoap_wkc, libcoap_data) = libcoap_data(libcoap_udp, &data).await.map_err(|e| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            format!("{e}; coap-server-openssl said: {}", log.trim())
        })?;
        let servers = Servers {
            privgw_pid: gateway.pid(),
            libcoap_pid: libcoap.0.id(),
            privgw_udp: plain.addr,
            privgw_dtls: secure.addr,
            libcoap_udp,
            libcoap_dtls: ([127, 0, 0, 1], port + 1).into(),
            wkc_bytes: (wkc.payload.len(), libcoap_wkc),
            data_bytes: (data.payload.len(), libcoap_data),
        };
        eprintln!(
            "privgw bench front: privgw ({}) on {plain} and {secure}; libcoap coap-server-openssl (pid {}) on coap://{libcoap_udp} and coaps://{}; data: privgw GET {DATA_PRIVGW} ({} bytes) vs libcoap GET {DATA_LIBCOAP} ({} bytes)",
            gateway.what(),
            servers.libcoap_pid,
            servers.libcoap_dtls,
            servers.data_bytes.0,
            servers.data_bytes.1
        );
        rows_measured(args, shapes, &servers, started).await
    }
    .await;
    gateway.stop().await;
    drop(libcoap);
    outcome
}

/// Creates libcoap's `/data` with privgw's data body (PUT, `-d`), and checks both GETs.
/// Returns the body sizes of libcoap's `/.well-known/core` and `/data`.
async fn libcoap_data(
    addr: SocketAddr,
    privgw_data: &crate::cli::ctl::Reply,
) -> CliResult<(usize, usize)> {
    let uri: EndpointUri = format!("coap://{addr}").parse()?;
    let mut last = String::new();
    for _ in 0..25 {
        let attempt = async {
            let mut c = GatewayClient::connect(uri, None).await?;
            let body = (
                privgw_data.content_format.unwrap_or(0),
                privgw_data.payload.clone(),
            );
            let put = c
                .request(RequestType::Put, DATA_LIBCOAP, Some(body), None, &[])
                .await?;
            if !put.code.starts_with("2.") {
                return Err(
                    format!("libcoap answered PUT {DATA_LIBCOAP} with {}", put.code).into(),
                );
            }
            let got = c
                .request(RequestType::Get, DATA_LIBCOAP, None, None, &[])
                .await?;
            let wkc = c.request(RequestType::Get, WKC, None, None, &[]).await?;
            if got.payload != privgw_data.payload || wkc.code != "2.05" {
                return Err(format!(
                    "libcoap's {DATA_LIBCOAP} answered {} {:?}",
                    got.code,
                    String::from_utf8_lossy(&got.payload)
                )
                .into());
            }
            CliResult::Ok((wkc.payload.len(), got.payload.len()))
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(sizes)) => return Ok(sizes),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no answer within 2 s".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("libcoap at {addr} not ready: {last}").into())
}

/// The endpoints of one side, reused across rows (a server keeps per-endpoint state, and
/// privgw at most 256 NoSec sessions per source IP).
struct Pool {
    udp: Vec<Endpoint>,
    dtls: Option<Endpoint>,
}

async fn rows_measured(
    args: &FrontArgs,
    shapes: &[Shape],
    s: &Servers,
    started: Instant,
) -> CliResult<Table> {
    let hz = clock_ticks_per_second();
    let max_clients = shapes.iter().map(|s| s.clients).max().unwrap_or(1);
    let mut pools = [
        Pool {
            udp: Vec::new(),
            dtls: None,
        },
        Pool {
            udp: Vec::new(),
            dtls: None,
        },
    ];
    for i in 0..max_clients {
        let seed = u16::try_from(i).unwrap_or(0);
        pools[0].udp.push(Endpoint::udp(s.privgw_udp, seed).await?);
        pools[1]
            .udp
            .push(Endpoint::udp(s.libcoap_udp, seed.wrapping_add(1000)).await?);
    }
    if !args.no_dtls {
        let privgw = psk_client("serverA", "secretA", Duration::from_secs(10))?;
        let libcoap = psk_client("frontbench", LIBCOAP_KEY, Duration::from_secs(10))?;
        pools[0].dtls = Some(Endpoint::dtls_psk(&privgw, s.privgw_dtls, 2000).await?);
        pools[1].dtls = Some(Endpoint::dtls_psk(&libcoap, s.libcoap_dtls, 3000).await?);
    }
    let all = rows(shapes, args.dtls_window, !args.no_dtls);
    let mut table = table();
    let mut progress = Progress::new("bench front rows", all.len() as u64);
    for (done, row) in all.iter().enumerate() {
        if started.elapsed() > Duration::from_secs(args.max_seconds) {
            eprintln!("  (stopped after {done} rows: --max-seconds)");
            break;
        }
        progress.tick(done as u64);
        let (privgw_path, libcoap_path, bytes) = if row.data {
            (DATA_PRIVGW, DATA_LIBCOAP, s.data_bytes)
        } else {
            (WKC, WKC, s.wkc_bytes)
        };
        let mut loads = [
            Load::new("privgw", Template::get(privgw_path)?, 0x45),
            Load::new("libcoap", Template::get(libcoap_path)?, 0x45),
        ];
        for (load, pool) in loads.iter_mut().zip(&mut pools) {
            load.endpoints = if row.dtls {
                pool.dtls.take().into_iter().collect()
            } else {
                pool.udp.drain(..row.shape.clients).collect()
            };
        }
        let measured = measure_row(args, row, &mut loads, [s.privgw_pid, s.libcoap_pid], hz).await;
        for (load, pool) in loads.iter_mut().zip(&mut pools) {
            let eps = std::mem::take(&mut load.endpoints);
            if row.dtls {
                pool.dtls = eps.into_iter().next();
            } else {
                pool.udp.splice(0..0, eps);
            }
        }
        let [p, l] = measured?;
        let mut cells: Vec<Cell> = vec![
            if row.data {
                format!("data ({DATA_PRIVGW} vs {DATA_LIBCOAP})")
            } else {
                WKC.to_owned()
            }
            .into(),
            if row.dtls {
                "dtls-psk, one session"
            } else {
                "udp"
            }
            .into(),
            row.shape.to_string().into(),
            bytes.0.into(),
            bytes.1.into(),
        ];
        cells.extend(versus_cells(p, l, None));
        table.push(cells);
    }
    for pool in pools {
        if let Some(ep) = pool.dtls {
            ep.close().await;
        }
    }
    Ok(table)
}

/// Warms both sides, then runs them alternately (order swapped every run).
async fn measure_row(
    args: &FrontArgs,
    row: &Row,
    loads: &mut [Load; 2],
    pids: [u32; 2],
    hz: f64,
) -> CliResult<[Medians; 2]> {
    for load in loads.iter_mut() {
        load.warm_retrying(3, Duration::from_secs(5)).await?;
    }
    let mut results: [Vec<RunResult>; 2] = [Vec::new(), Vec::new()];
    for run in 0..args.runs {
        let order = if run % 2 == 0 { [1, 0] } else { [0, 1] };
        let mut line = format!(
            "  {} {} {} run {}:",
            if row.data { "data" } else { WKC },
            if row.dtls { "dtls" } else { "udp" },
            row.shape,
            run + 1
        );
        for k in order {
            let r = loads[k]
                .measure(
                    row.shape.window,
                    args.requests,
                    args.run_seconds,
                    pids[k],
                    hz,
                )
                .await?;
            line.push_str(&format!(" {};", describe(&loads[k].name, &r)));
            results[k].push(r);
        }
        eprintln!("{line}");
    }
    Ok([Medians::of(&results[0]), Medians::of(&results[1])])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_cover_both_targets_every_shape_and_the_dtls_session() {
        let shapes = parse_shapes("1x1,16x1").unwrap();
        let all = rows(&shapes, 1, true);
        assert_eq!(all.len(), 6);
        assert_eq!(all.iter().filter(|r| r.data).count(), 3);
        assert_eq!(all.iter().filter(|r| r.dtls).count(), 2);
        assert!(all.iter().filter(|r| r.dtls).all(|r| r.shape.clients == 1));
        assert_eq!(rows(&shapes, 1, false).len(), 4);
    }

    #[test]
    fn the_gateway_config_parses_with_serverb_on_nosec() {
        let toml = gateway_toml(
            Path::new("/tmp/x.redb"),
            "coaps://127.0.0.1:5684".parse().unwrap(),
            "coap://127.0.0.1:5683".parse().unwrap(),
        );
        let cfg = crate::config::Config::parse(&toml).unwrap();
        assert_eq!(cfg.servers.len(), 2);
    }
}
