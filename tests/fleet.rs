//! `privgw fleet` and `privgw bench group|register` as a user runs them: the real binary,
//! small fleets, every process on loopback and bounded in time. What is asserted is what
//! the tools promise: the ready line, the written config a gateway accepts, the group write
//! answered 4.03 naming exactly the denying device, result tables whose columns hold
//! plausible numbers.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use privgw::cli::ctl::GatewayClient;
use privgw::cli::results::Table;
use privgw::coap::RequestType;
use privgw::config::EndpointUri;

const BIN: &str = env!("CARGO_BIN_EXE_privgw");

/// Kills the child when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `privgw <args>` with stdout read line by line.
fn spawn(args: &[&str], log: &Path) -> (Killed, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Killed(child), rx)
}

/// The `THP_enabled` line of a process's `/proc/<pid>/status` (Linux 5.0 and later).
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .unwrap_or_else(|| panic!("no THP_enabled in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

fn ready_line(rx: &mpsc::Receiver<String>, log: &Path) -> String {
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.starts_with("fleet ready:") => return line,
            Ok(_) => continue,
            Err(e) => panic!(
                "no ready line ({e}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
    }
}

async fn server_a(north: EndpointUri) -> GatewayClient {
    for _ in 0..100 {
        let psk = Some((b"serverA".to_vec(), b"secretA".to_vec()));
        if let Ok(Ok(mut c)) =
            tokio::time::timeout(Duration::from_secs(2), GatewayClient::connect(north, psk)).await
        {
            let asked = c
                .request(RequestType::Get, "/GwConfig/Privileges", None, None, &[])
                .await;
            if asked.is_ok_and(|r| r.code == "2.05") {
                return c;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the gateway at {north} never answered");
}

/// Runs `privgw <args>` to its end (bounded by the tool's own --max-seconds) and returns
/// its stdout, asserting success.
fn run_ok(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "privgw {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn number(table: &Table, column: &str) -> f64 {
    table.column(column)[0].unwrap_or_else(|| panic!("{column} is no number: {table:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_write_over_a_fleet_with_one_denying_device_names_exactly_that_device() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    let north: EndpointUri = format!("coaps://127.0.0.1:{}", free_port())
        .parse()
        .unwrap();
    let fleet_log = dir.path().join("fleet.log");
    let (fleet, lines) = spawn(
        &[
            "fleet",
            "--count",
            "5",
            "--deny",
            "0.2",
            "--write-config",
            config.to_str().unwrap(),
            "--gateway-listen",
            &north.to_string(),
            "--max-seconds",
            "120",
        ],
        &fleet_log,
    );
    let ready = ready_line(&lines, &fleet_log);
    assert!(
        ready.starts_with("fleet ready: 5 devices (dialed, psk, lwm2m; 4 normal, 1 deny;"),
        "{ready}"
    );
    let toml = std::fs::read_to_string(&config).unwrap();
    assert_eq!(toml.matches("[[devices]]").count(), 5, "{toml}");
    assert!(toml.contains(&format!("listen = [\"{north}\"]")), "{toml}");
    assert!(
        toml.contains(
            "members = [\"dev00000\", \"dev00001\", \"dev00002\", \"dev00003\", \"dev00004\"]"
        ),
        "{toml}"
    );

    let (gateway, _) = spawn(
        &["serve", "--config", config.to_str().unwrap()],
        &dir.path().join("gateway.log"),
    );
    let mut client = server_a(north).await;
    let reply = client
        .add("ALL", "Group", "/3/0", "Get=ServerB")
        .await
        .unwrap();
    assert_eq!(reply.code, "4.03", "{}", reply.render());
    assert_eq!(reply.failed_ids(), vec!["dev00004".to_owned()]);
    // Both processes run without transparent huge pages (src/main.rs), and their DTLS
    // sessions (OpenSSL allocating with mimalloc) just carried the write.
    for (name, process) in [("fleet", &fleet), ("gateway", &gateway)] {
        assert_eq!(thp_enabled(process.0.id()), "0", "{name}");
    }
    assert!(reply.render().contains("denied"), "{}", reply.render());
    // Nothing was committed: the privilege list is still empty.
    let list = client
        .request(RequestType::Get, "/GwConfig/Privileges", None, None, &[])
        .await
        .unwrap();
    assert_eq!(list.code, "2.05");
    assert!(!list.render().contains("ALL"), "{}", list.render());

    // SIGTERM (what `kill`, systemd and container runtimes send) stops the gateway as
    // Ctrl-C does: sessions closed politely, exit status 0 (not killed by the signal).
    let mut gateway = gateway;
    let killed = Command::new("kill")
        .args(["-TERM", &gateway.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = gateway.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "gateway after SIGTERM: {status}");
}

#[test]
fn bench_group_writes_a_group_table_with_one_plausible_row() {
    let out = tempfile::tempdir().unwrap();
    let stdout = run_ok(&[
        "bench",
        "group",
        "--devices",
        "3",
        "--rounds",
        "2",
        "--max-seconds",
        "120",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(stdout.contains("== group"), "{stdout}");
    assert!(out.path().join("group.csv").exists());
    let t = Table::load(out.path(), "group").unwrap();
    assert_eq!(t.rows.len(), 1, "{t:?}");
    assert_eq!(number(&t, "devices"), 3.0);
    assert_eq!(number(&t, "failing"), 0.0);
    // Two warm rounds, each a verified Add and its verified Delete.
    assert_eq!(number(&t, "warm_writes"), 4.0);
    let cold = number(&t, "cold_ms");
    let warm = number(&t, "warm_median_ms");
    assert!(cold > 0.0 && cold < 30_000.0, "{t:?}");
    assert!(warm > 0.0 && warm < 30_000.0, "{t:?}");
    assert!(number(&t, "warm_p90_ms") >= warm, "{t:?}");
    let before = number(&t, "rss_before_kib");
    let after = number(&t, "rss_after_kib");
    assert!(before > 1024.0 && before < 1024.0 * 1024.0, "{t:?}");
    assert!(after >= before, "{t:?}");
    assert!(
        (number(&t, "rss_per_device_kib") - (after - before) / 3.0).abs() < 0.01,
        "{t:?}"
    );
    assert!(number(&t, "cpu_us_per_read") >= 0.0, "{t:?}");
    // The fleet did the devices' side of 4 × 3 reads: some CPU, and a bounded amount.
    let fleet = number(&t, "fleet_cpu_us_per_read");
    assert!((0.0..1e6).contains(&fleet), "{t:?}");
}

#[test]
fn bench_group_checks_that_denying_garbage_and_silent_devices_make_the_write_fail() {
    let out = tempfile::tempdir().unwrap();
    run_ok(&[
        "bench",
        "group",
        "--devices",
        "5",
        "--rounds",
        "1",
        "--deny",
        "0.2",
        "--garbage",
        "0.2",
        "--timeout",
        "0.2",
        "--device-timeout-ms",
        "500",
        "--max-seconds",
        "120",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let t = Table::load(out.path(), "group").unwrap();
    // The tool itself asserted the 4.03 named exactly these three devices (one that denies,
    // one that answers garbage, one that never answers: the write waits its deadline).
    assert_eq!(number(&t, "failing"), 3.0, "{t:?}");
    assert!(number(&t, "cold_ms") >= 500.0, "{t:?}");
    // No commit, so no Delete: one warm write.
    assert_eq!(number(&t, "warm_writes"), 1.0, "{t:?}");
}

#[test]
fn bench_register_registers_a_small_fleet_and_writes_the_group_over_it() {
    let out = tempfile::tempdir().unwrap();
    run_ok(&[
        "bench",
        "register",
        "--devices",
        "3",
        "--in-flight",
        "2",
        "--rounds",
        "1",
        "--max-seconds",
        "120",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let t = Table::load(out.path(), "register").unwrap();
    assert_eq!(t.rows.len(), 1, "{t:?}");
    assert_eq!(number(&t, "devices"), 3.0);
    assert_eq!(number(&t, "in_flight"), 2.0);
    let secs = number(&t, "register_s");
    assert!(secs > 0.0 && secs < 120.0, "{t:?}");
    assert!((number(&t, "registrations_per_s") - 3.0 / secs).abs() < 0.01 * 3.0 / secs);
    assert!(
        number(&t, "rss_after_kib") >= number(&t, "rss_before_kib"),
        "{t:?}"
    );
    assert!(number(&t, "cold_ms") > 0.0, "{t:?}");
}

#[test]
fn fleet_refuses_fractions_that_exceed_the_fleet_and_register_mode_without_a_gateway() {
    for (args, says) in [
        (
            &[
                "fleet",
                "--count",
                "10",
                "--deny",
                "0.6",
                "--timeout",
                "0.5",
            ][..],
            "add up to 11 of 10",
        ),
        (
            &["fleet", "--count", "3", "--mode", "register"][..],
            "--gateway",
        ),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn bench_group_reads_the_whole_failed_list_from_the_report_when_the_answer_is_truncated() {
    // 30 denying devices: more than one 4.03 answer lists (about 27 fit), so the answer is
    // truncated and the tool must read the report to find exactly the 30 it expects.
    let out = tempfile::tempdir().unwrap();
    run_ok(&[
        "bench",
        "group",
        "--devices",
        "60",
        "--rounds",
        "1",
        "--deny",
        "0.5",
        "--security",
        "nosec",
        "--max-seconds",
        "120",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let t = Table::load(out.path(), "group").unwrap();
    assert_eq!(number(&t, "failing"), 30.0, "{t:?}");
}

#[test]
fn bench_group_over_x509_devices_verifies_every_one() {
    let out = tempfile::tempdir().unwrap();
    run_ok(&[
        "bench",
        "group",
        "--devices",
        "2",
        "--rounds",
        "1",
        "--security",
        "x509",
        "--max-seconds",
        "120",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let t = Table::load(out.path(), "group").unwrap();
    assert_eq!(
        t.rows[0][1],
        privgw::cli::results::Cell::Text("x509".into())
    );
    assert_eq!(number(&t, "failing"), 0.0, "{t:?}");
    assert_eq!(number(&t, "warm_writes"), 2.0, "{t:?}");
}
