//! What the bench shapes share: ports for libcoap, libcoap's server as a child process, and
//! the one place a comparison row's cells are made.

use std::path::Path;

use crate::cli::CliResult;
use crate::cli::bench::gateway::Child;
use crate::cli::results::{Cell, median};

use super::closed_loop::RunResult;

/// A UDP port `p` with `p` and `p + 1` free over UDP and TCP (libcoap's server binds all four
/// when it has a PSK: coap and coap+tcp on `p`, coaps and coaps+tcp on `p + 1`).
pub(crate) fn libcoap_port() -> CliResult<u16> {
    for _ in 0..20 {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let p = probe.local_addr()?.port();
        if p == u16::MAX {
            continue;
        }
        let free = std::net::UdpSocket::bind(("127.0.0.1", p + 1)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok();
        if free {
            return Ok(p);
        }
    }
    Err("no free port pair for coap-server-openssl".into())
}

pub(crate) fn free_udp_port() -> CliResult<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `coap-server-openssl -A 127.0.0.1 -p <port> <extra…>` as a child (killed on drop), its
/// stdout in `log`.
pub(crate) fn libcoap_server(port: u16, extra: &[&str], log: &Path) -> CliResult<Child> {
    let child = std::process::Command::new("coap-server-openssl")
        .args(["-A", "127.0.0.1", "-p", &port.to_string()])
        .args(extra)
        .stdout(std::fs::File::create(log)?)
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("cannot start coap-server-openssl (apt-get install libcoap3-bin): {e}")
        })?;
    Ok(Child(child))
}

/// The medians of several runs of one side.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Medians {
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu_us: f64,
}

impl Medians {
    pub(crate) fn of(runs: &[RunResult]) -> Medians {
        let pick =
            |f: &dyn Fn(&RunResult) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
        Medians {
            rate: pick(&|r| r.rate),
            p50_ms: pick(&|r| r.p50_p99_ms().0),
            p99_ms: pick(&|r| r.p50_p99_ms().1),
            cpu_us: pick(&|r| r.cpu_us_per_request),
        }
    }
}

/// The comparison columns every same-run table ends with.
pub(crate) const VERSUS_COLUMNS: [&str; 9] = [
    "privgw_rps",
    "libcoap_rps",
    "ratio",
    "privgw_p50_ms",
    "privgw_p99_ms",
    "libcoap_p50_ms",
    "libcoap_p99_ms",
    "privgw_cpu_us_per_req",
    "libcoap_cpu_us_per_req",
];

/// The cells of [`VERSUS_COLUMNS`]; `ratio` is the median of the per-run ratios when given,
/// else privgw's median rate over libcoap's.
pub(crate) fn versus_cells(privgw: Medians, libcoap: Medians, ratio: Option<f64>) -> Vec<Cell> {
    let ratio = ratio.unwrap_or(privgw.rate / libcoap.rate.max(1e-9));
    vec![
        privgw.rate.into(),
        libcoap.rate.into(),
        ratio.into(),
        privgw.p50_ms.into(),
        privgw.p99_ms.into(),
        libcoap.p50_ms.into(),
        libcoap.p99_ms.into(),
        privgw.cpu_us.into(),
        libcoap.cpu_us.into(),
    ]
}

/// One run of one side, for the log on stderr.
pub(crate) fn describe(name: &str, r: &RunResult) -> String {
    let (p50, p99) = r.p50_p99_ms();
    let mut s = format!(
        "{name} {:.0} req/s ({} in {:.2} s; p50 {p50:.2} ms, p99 {p99:.2} ms; server CPU {:.1} µs/req)",
        r.rate,
        r.tally.ok,
        r.elapsed.as_secs_f64(),
        r.cpu_us_per_request,
    );
    let troubles = r.tally.troubles();
    if !troubles.is_empty() {
        s.push_str(&format!(" [{troubles}]"));
    }
    if r.tally.separate > 0 {
        s.push_str(&format!(" [{} separate responses]", r.tally.separate));
    }
    s
}
