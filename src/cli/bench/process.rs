//! Child processes of the bench tools: `privgw serve` and `privgw fleet` started from this
//! very executable, killed when their handle drops, their stdout lines readable with a
//! deadline, their RSS and CPU read from `/proc/<pid>/status` and `/proc/<pid>/stat`.

use std::ffi::OsStr;
use std::io::BufRead as _;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cli::CliResult;
use crate::cli::ctl::GatewayClient;
use crate::coap::RequestType;
use crate::config::EndpointUri;

/// What `/proc/<pid>` says about a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcStats {
    /// VmRSS, KiB.
    pub rss_kib: u64,
    pub threads: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// utime + stime, clock ticks.
    pub cpu_ticks: u64,
}

impl ProcStats {
    /// Zeros for a process that is gone.
    pub fn of(pid: u32) -> ProcStats {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let mut stats = ProcStats::parse(&status, &stat);
        stats.fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
        stats
    }

    /// From the texts of `/proc/<pid>/status` and `/proc/<pid>/stat` (fds left 0).
    pub fn parse(status: &str, stat: &str) -> ProcStats {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        // Fields after the command name `(…)`, which may hold spaces: state is field 3,
        // utime 14, stime 15 — indices 11 and 12 after it.
        let after: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let tick = |i: usize| {
            after
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        ProcStats {
            rss_kib: field("VmRSS:"),
            threads: field("Threads:"),
            fds: 0,
            cpu_ticks: tick(11) + tick(12),
        }
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 if unknown).
pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A free loopback UDP port below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), probed from a varying start: free when
/// returned, not reserved — but never one that the fleet's thousands of sockets bound to
/// port 0 can take before the gateway binds it.
pub fn free_udp_port() -> CliResult<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    let low = 10_000u16;
    if ephemeral_low <= low + 100 {
        return Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port());
    }
    let span = u32::from(ephemeral_low - low);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for k in 0..span {
        let port =
            low + u16::try_from((seed.wrapping_add(k.wrapping_mul(7919))) % span).unwrap_or(0);
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free loopback UDP port below the ephemeral range".into())
}

/// Runs this executable with `args` to its end (killed after `within`); an error with its
/// stderr unless it exits 0.
pub fn run_privgw(args: &[String], within: Duration) -> CliResult<()> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let give_up = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= give_up {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("privgw {} did not end within {within:?}", args.join(" ")).into());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
    }
    Err(format!("privgw {} exited ({status}): {err}", args.join(" ")).into())
}

/// `--workers N` for a child's runtime, or nothing (one worker per core).
fn workers_args(workers: Option<NonZeroUsize>) -> Vec<std::ffi::OsString> {
    workers.map_or_else(Vec::new, |n| vec!["--workers".into(), n.to_string().into()])
}

/// A child `privgw …` process, killed (SIGKILL) and reaped when dropped. Its stdout lines are
/// collected by a thread; its stderr goes to a log file.
pub struct ChildProcess {
    child: std::process::Child,
    name: String,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl ChildProcess {
    /// Runs this executable with `args`, stderr to `log`, `RUST_LOG` from `log_env` (or
    /// `warn`).
    pub fn spawn<I, S>(name: &str, args: I, log: &Path, log_env: &str) -> CliResult<ChildProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var(log_env).unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()?;
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(ChildProcess {
            child,
            name: name.to_owned(),
            lines,
            log: log.to_owned(),
        })
    }

    /// `privgw [--workers N] serve --config <config>`, stderr to `<config>.log`.
    pub fn serve(config: &Path, workers: Option<NonZeroUsize>) -> CliResult<ChildProcess> {
        let mut all = workers_args(workers);
        all.extend([
            "serve".into(),
            "--config".into(),
            config.as_os_str().to_owned(),
        ]);
        ChildProcess::spawn(
            "gateway",
            all,
            &config.with_extension("log"),
            "PRIVGW_BENCH_GATEWAY_LOG",
        )
    }

    /// `privgw [--workers N] fleet <args>`, stderr to `log`.
    pub fn fleet<I, S>(
        args: I,
        log: &Path,
        workers: Option<NonZeroUsize>,
    ) -> CliResult<ChildProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all = workers_args(workers);
        all.push("fleet".into());
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        ChildProcess::spawn("fleet", all, log, "PRIVGW_BENCH_FLEET_LOG")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stats(&self) -> ProcStats {
        ProcStats::of(self.pid())
    }

    /// The last part of its stderr log (for error messages).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = log.len().saturating_sub(2000);
        let start = (start..log.len())
            .find(|i| log.is_char_boundary(*i))
            .unwrap_or(log.len());
        log[start..].to_owned()
    }

    /// An error if it has exited.
    pub fn check_alive(&mut self) -> CliResult<()> {
        match self.child.try_wait()? {
            Some(status) => {
                Err(format!("the {} exited ({status}): {}", self.name, self.log_tail()).into())
            }
            None => Ok(()),
        }
    }

    /// Waits (without blocking the runtime's other tasks for long) for a stdout line that
    /// starts with `prefix`, within `within`; returns it.
    pub async fn wait_line(&mut self, prefix: &str, within: Duration) -> CliResult<String> {
        let give_up = Instant::now() + within;
        loop {
            match self.lines.try_recv() {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => continue,
                Err(mpsc::TryRecvError::Disconnected) => {
                    // Stdout closed: it exited (or closed it); say how.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    self.check_alive()?;
                    return Err(format!("the {} closed its stdout", self.name).into());
                }
                Err(mpsc::TryRecvError::Empty) => {}
            }
            self.check_alive()?;
            if Instant::now() >= give_up {
                return Err(format!(
                    "the {} printed no '{prefix}' line within {within:?}: {}",
                    self.name,
                    self.log_tail()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Server A's client of the gateway at `north` once it answers `GET
    /// /GwConfig/Privileges` (bounded by `within`; fails at once if this child exits).
    pub async fn server_a(
        &mut self,
        north: EndpointUri,
        within: Duration,
    ) -> CliResult<GatewayClient> {
        match connect_server_a(north, within, || self.check_alive()).await {
            Ok(client) => Ok(client),
            Err(e) => Err(format!("{e}: {}", self.log_tail()).into()),
        }
    }
}

/// Server A's client of the gateway at `north` once it answers `GET /GwConfig/Privileges`,
/// retried within `within`; `alive` fails the wait at once (the gateway process exited).
pub async fn connect_server_a(
    north: EndpointUri,
    within: Duration,
    mut alive: impl FnMut() -> CliResult<()>,
) -> CliResult<GatewayClient> {
    let (identity, key) = crate::fleet::config::SERVER_A_PSK;
    let give_up = Instant::now() + within;
    loop {
        alive()?;
        let psk = Some((identity.as_bytes().to_vec(), key.as_bytes().to_vec()));
        let attempt =
            tokio::time::timeout(Duration::from_secs(3), GatewayClient::connect(north, psk));
        if let Ok(Ok(mut client)) = attempt.await {
            let asked = client
                .request(RequestType::Get, "/GwConfig/Privileges", None, None, &[])
                .await;
            if asked.is_ok_and(|r| r.code == "2.05") {
                return Ok(client);
            }
        }
        if Instant::now() >= give_up {
            return Err(format!("the gateway at {north} did not answer within {within:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long a child gets to end on SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);

impl Drop for ChildProcess {
    /// SIGTERM first, so the child ends as in production (close_notify to its peers) and a
    /// profiler wrapping it (`valgrind --trace-children=yes`) writes its counts; SIGKILL
    /// after [`GRACE`].
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) with a pid we spawned and have not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let give_up = Instant::now() + GRACE;
            while Instant::now() < give_up {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stats_read_rss_threads_and_cpu_ticks() {
        let status = "Name:\tprivgw\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        let stat = "4242 (priv gw) S 1 4242 4242 0 -1 4194560 100 0 0 0 70 30 0 0 20 0 4 0";
        let s = ProcStats::parse(status, stat);
        assert_eq!(s.rss_kib, 12345);
        assert_eq!(s.threads, 4);
        assert_eq!(s.cpu_ticks, 100);
    }

    #[test]
    fn free_ports_are_below_the_ephemeral_range_and_bindable() {
        let port = free_udp_port().unwrap();
        assert!(port >= 10_000, "{port}");
        std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
    }

    #[test]
    fn this_process_has_stats() {
        let s = ProcStats::of(std::process::id());
        assert!(s.rss_kib > 0 && s.threads >= 1 && s.fds >= 1, "{s:?}");
        assert_eq!(ProcStats::of(u32::MAX), ProcStats::default());
    }
}
