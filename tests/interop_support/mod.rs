//! Helpers for the libcoap interop tests: child-process guards, free loopback ports,
//! `coap-server-openssl` instances standing in for devices, `coap-client-openssl` runs with
//! their printed PDUs parsed, and a gateway fixture.
//!
//! libcoap 4.3.1 behaviours this module accounts for:
//! * `coap-client` exits 0 on 4.xx/5.xx and on a failed handshake, so every assertion is on
//!   what it prints. With `-v 6` it prints every PDU it sends and receives as
//!   `v:1 t:ACK c:2.05 i:.. {token} [ options ] :: ...`; a binary payload follows on the next
//!   line as `<<hex>>`, a text one inline as `:: '...'`.
//! * `-o file` only receives the body of a 2.xx answer; a 4.xx/5.xx body goes to stderr with
//!   unprintable bytes replaced by `.`, so error bodies are taken from the `-v 6` hex dump.
//! * `coap-server -p P` listens on UDP+TCP P and, with `-k`, DTLS+TLS on P+1. `-k` alone
//!   accepts any PSK identity with that key, so the devices get a decoy `-k` and an `-i` file
//!   mapping only identity "gateway" to the real key. A PSK mismatch (wrong key or wrong
//!   identity) is answered with silence, not an alert.
//! * It ignores Accept: GET on a dynamic resource returns what was PUT with the
//!   Content-Format it was PUT with, whatever Accept says (no 4.06).
//! * `coap-client` prints raw response payloads to stdout, so its output is read lossily.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use privgw::config::{Config, EndpointUri, Scheme};
use privgw::gateway::Gateway;
use privgw::mo::Value;

pub mod dtls_pki;
pub mod proxy;
pub mod stream;

pub const CLIENT: &str = "coap-client-openssl";
/// The PSK identity the gateway presents to devices.
pub const DEVICE_IDENTITY: &str = "gateway";
pub const SERVER: &str = "coap-server-openssl";

/// How long one `coap-client` run may take before it is killed (its own `-B` is shorter).
const CLIENT_HARD_LIMIT: Duration = Duration::from_secs(20);
/// `-B` given to every `coap-client` run unless the caller passes its own.
pub const CLIENT_WAIT_SECS: &str = "8";
/// How long a `coap-server` gets to answer its first GET /.well-known/core.
const SERVER_READY_LIMIT: Duration = Duration::from_secs(10);

/// Fails the test (never skips) when a libcoap binary is missing.
pub fn require_tool(name: &str) {
    match Command::new(name)
        .arg("-h")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) => panic!(
            "interop test needs `{name}` (libcoap 4.3.1, Debian package libcoap3-bin: \
             apt-get install libcoap3-bin), but it cannot be run: {e}"
        ),
    }
}

pub fn require_libcoap() {
    require_tool(CLIENT);
    require_tool(SERVER);
}

/// Kills and reaps a child process when dropped.
pub struct ChildGuard {
    name: String,
    child: Child,
}

impl ChildGuard {
    pub fn new(name: impl Into<String>, child: Child) -> ChildGuard {
        ChildGuard {
            name: name.into(),
            child,
        }
    }

    /// `Some(status)` once the child has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits (blocking, polling every 20 ms) for the child to exit until `deadline`; `None`
    /// if it is still running then (the guard kills it when dropped).
    pub fn wait_until(&mut self, deadline: Instant) -> Option<std::process::ExitStatus> {
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.exited().is_none() {
            if let Err(e) = self.child.kill() {
                eprintln!(
                    "could not kill {} (pid {}): {e}",
                    self.name,
                    self.child.id()
                );
            }
        }
        let _ = self.child.wait();
    }
}

/// A per-test scratch folder with unique file names in it.
pub struct Scratch {
    dir: tempfile::TempDir,
    counter: AtomicUsize,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("privgw-interop-")
                .tempdir()
                .expect("create a temp dir"),
            counter: AtomicUsize::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh file name `NNN-stem` in the folder (not created).
    pub fn file(&self, stem: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join(format!("{n:03}-{stem}"))
    }

    /// Writes `bytes` to a fresh file and returns its path.
    pub fn write(&self, stem: &str, bytes: &[u8]) -> PathBuf {
        let path = self.file(stem);
        std::fs::write(&path, bytes).expect("write temp file");
        path
    }
}

/// A UDP port P on 127.0.0.1 such that P and P+1 were free (UDP and TCP) a moment ago.
/// Callers retry on a bind race.
pub fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let Ok(probe) = std::net::UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(port) = probe.local_addr().map(|a| a.port()) else {
            continue;
        };
        drop(probe);
        if port >= 65_000 {
            continue;
        }
        let free = [port, port + 1].iter().all(|&p| {
            std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
        });
        if free {
            return port;
        }
    }
    panic!("no free UDP/TCP port pair on 127.0.0.1");
}

/// One PDU as `coap-client -v 6` printed it.
#[derive(Debug, Clone)]
pub struct PrintedPdu {
    /// `CON`, `NON`, `ACK` or `RST`.
    pub kind: String,
    /// The message ID, as printed (`i:86c3`).
    pub mid: String,
    /// `GET`, `POST`, … for requests; `2.05`, `4.03`, … for responses; `0.00` for an empty
    /// message.
    pub code: String,
    /// The text between `[` and `]`: the options.
    pub options: String,
    pub payload: Option<Vec<u8>>,
}

impl PrintedPdu {
    pub fn is_response(&self) -> bool {
        self.code.len() == 4 && self.code.as_bytes()[1] == b'.'
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses the PDU lines of a `-v 6` transcript.
pub fn parse_pdus(transcript: &str) -> Vec<PrintedPdu> {
    let lines: Vec<&str> = transcript.lines().collect();
    let mut pdus = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(start) = line.find("v:1 t:") else {
            continue;
        };
        let line = &line[start..];
        let field = |prefix: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(prefix))
                .map(str::to_owned)
        };
        let Some(code) = field("c:") else {
            continue;
        };
        let kind = field("t:").unwrap_or_default();
        let mid = field("i:").unwrap_or_default();
        let options = match (line.find('['), line.rfind(']')) {
            (Some(a), Some(b)) if a < b => line[a + 1..b].trim().to_owned(),
            _ => String::new(),
        };
        let payload = if line.contains(":: binary data length") {
            lines
                .get(i + 1)
                .and_then(|next| next.trim().strip_prefix("<<"))
                .and_then(|h| h.strip_suffix(">>"))
                .and_then(decode_hex)
        } else if let Some(pos) = line.find(":: '") {
            line[pos + 4..]
                .strip_suffix('\'')
                .map(|t| t.as_bytes().to_vec())
        } else {
            None
        };
        pdus.push(PrintedPdu {
            kind,
            mid,
            code,
            options,
            payload,
        });
    }
    pdus
}

/// What one `coap-client-openssl` run printed and wrote.
#[derive(Debug)]
pub struct ClientRun {
    pub args: Vec<String>,
    pub stdout: String,
    pub stderr: String,
    /// The `-o` file's content, if `-o` was used and the file was written.
    pub output_file: Option<Vec<u8>>,
    pub status: Option<std::process::ExitStatus>,
    pub timed_out: bool,
}

impl ClientRun {
    pub fn transcript(&self) -> String {
        format!(
            "$ {CLIENT} {}\n(exit: {:?}, timed out: {})\n--- stdout ---\n{}--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.timed_out,
            self.stdout,
            self.stderr
        )
    }

    pub fn pdus(&self) -> Vec<PrintedPdu> {
        parse_pdus(&format!("{}\n{}", self.stdout, self.stderr))
    }

    pub fn responses(&self) -> Vec<PrintedPdu> {
        self.pdus()
            .into_iter()
            .filter(PrintedPdu::is_response)
            .collect()
    }

    /// The last response printed; panics with the transcript when there is none.
    pub fn response(&self) -> PrintedPdu {
        self.responses()
            .pop()
            .unwrap_or_else(|| panic!("no CoAP response printed\n{}", self.transcript()))
    }

    /// Asserts the last response has `code` and returns it.
    /// The gateway closed the channel without answering (a certificate that names no
    /// configured server): coap-client ended, printed no response, and logged the gateway's
    /// close_notify (DTLS or TLS).
    pub fn expect_closed_unanswered(&self) {
        assert!(!self.timed_out, "coap-client hung\n{}", self.transcript());
        assert!(
            self.responses().is_empty(),
            "no response expected\n{}",
            self.transcript()
        );
        assert!(
            format!("{}{}", self.stdout, self.stderr).contains("alert read:warning:close notify"),
            "coap-client logged no close_notify from the gateway\n{}",
            self.transcript()
        );
    }

    pub fn expect_code(&self, code: &str) -> PrintedPdu {
        assert!(!self.timed_out, "coap-client hung\n{}", self.transcript());
        let r = self.response();
        assert_eq!(r.code, code, "response code\n{}", self.transcript());
        r
    }

    /// What coap-client printed on stdout besides its `-v` log: the response body (it prints
    /// a 2.xx body there when there is no `-o`, block by block, then one newline at exit).
    /// PDU lines, their hex dumps and libcoap's timestamped log records are taken out; they
    /// follow body bytes on the same line, as a block ends without a newline.
    pub fn printed_data(&self) -> String {
        let mut out = String::new();
        let mut after_binary = false;
        for line in self.stdout.split_inclusive('\n') {
            let hex_dump = after_binary && line.trim().starts_with("<<");
            after_binary = false;
            // A PDU line may follow body bytes that ended without a newline.
            if let Some(at) = line.find("v:1 t:") {
                out.push_str(&line[..at]);
                after_binary = line.contains(":: binary data length");
                continue;
            }
            if hex_dump {
                continue;
            }
            match log_record_start(line) {
                Some(at) => out.push_str(&line[..at]),
                None => out.push_str(line),
            }
        }
        // coap-client ends its output with a newline of its own.
        if out.ends_with('\n') {
            out.pop();
        }
        out
    }

    /// The body of the last response decoded as CBOR (from the hex dump).
    pub fn cbor_body(&self) -> Value {
        let r = self.response();
        let bytes = r
            .payload
            .unwrap_or_else(|| panic!("response has no payload\n{}", self.transcript()));
        Value::from_cbor(&bytes)
            .unwrap_or_else(|e| panic!("body is not CBOR ({e:?})\n{}", self.transcript()))
    }

    /// The `-o` file decoded as CBOR.
    pub fn output_cbor(&self) -> Value {
        let bytes = self
            .output_file
            .as_ref()
            .unwrap_or_else(|| panic!("-o file was not written\n{}", self.transcript()));
        Value::from_cbor(bytes)
            .unwrap_or_else(|e| panic!("-o file is not CBOR ({e:?})\n{}", self.transcript()))
    }
}

/// Where a libcoap log record (`Dec 02 01:43:16.411 INFO ...`) starts in `line`.
fn log_record_start(line: &str) -> Option<usize> {
    let b = line.as_bytes();
    // "Mmm dd hh:mm:ss.mmm " is 20 bytes.
    let shape = |s: &[u8]| {
        s.len() >= 20
            && s[0].is_ascii_uppercase()
            && s[1].is_ascii_lowercase()
            && s[2].is_ascii_lowercase()
            && s[3] == b' '
            && [4, 5, 7, 8, 10, 11, 13, 14, 16, 17, 18]
                .iter()
                .all(|&i| s[i].is_ascii_digit())
            && s[6] == b' '
            && s[9] == b':'
            && s[12] == b':'
            && s[15] == b'.'
            && s[19] == b' '
    };
    (0..b.len()).find(|&i| line.is_char_boundary(i) && shape(&b[i..]))
}

/// A file's text, binary bytes replaced (coap-client prints raw payloads to stdout).
fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Runs `coap-client-openssl -v 6 -B <wait> <args>` to completion (bounded), blocking.
/// `-o FILE` among `args` is read back into [`ClientRun::output_file`].
pub fn run_client_blocking(scratch: &Scratch, args: &[String]) -> ClientRun {
    let mut full: Vec<String> = vec!["-v".into(), "6".into()];
    if !args.iter().any(|a| a == "-B") {
        full.extend(["-B".into(), CLIENT_WAIT_SECS.into()]);
    }
    full.extend(args.iter().cloned());
    let out_path = scratch.file("client.stdout");
    let err_path = scratch.file("client.stderr");
    let child = Command::new(CLIENT)
        .args(&full)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CLIENT}: {e} (install libcoap3-bin)"));
    let mut guard = ChildGuard::new(CLIENT, child);
    let status = guard.wait_until(Instant::now() + CLIENT_HARD_LIMIT);
    let timed_out = status.is_none();
    drop(guard);
    let output_file = full
        .iter()
        .position(|a| a == "-o")
        .and_then(|i| full.get(i + 1))
        .and_then(|p| std::fs::read(p).ok());
    ClientRun {
        args: full,
        stdout: read_lossy(&out_path),
        stderr: read_lossy(&err_path),
        output_file,
        status,
        timed_out,
    }
}

/// [`run_client_blocking`] off the async runtime, so the in-process gateway keeps serving.
pub async fn run_client(scratch: &std::sync::Arc<Scratch>, args: &[&str]) -> ClientRun {
    let scratch = scratch.clone();
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || run_client_blocking(&scratch, &args))
        .await
        .expect("coap-client runner panicked")
}

/// A `coap-server-openssl` standing in for a device: UDP on `port`, DTLS on `port + 1`
/// when it has a key, dynamic resources on PUT (`-d 50`).
pub struct LibcoapServer {
    pub name: String,
    pub port: u16,
    pub key: Option<String>,
    log: PathBuf,
    guard: ChildGuard,
}

impl LibcoapServer {
    /// Starts one and waits until it answers GET /.well-known/core (over DTLS too, when it
    /// has a key). Retries on fresh ports if it dies or never answers.
    pub fn start_blocking(scratch: &Scratch, name: &str, key: Option<&str>) -> LibcoapServer {
        let args = |port: u16| {
            let mut args = vec![
                "-A".to_owned(),
                "127.0.0.1".to_owned(),
                "-p".to_owned(),
                port.to_string(),
                "-d".to_owned(),
                "50".to_owned(),
                // 7 logs every PDU it receives and sends.
                "-v".to_owned(),
                "7".to_owned(),
            ];
            if let Some(k) = key {
                // `-k` alone accepts any identity. Give it a key nobody has and map only
                // identity "gateway" (under libcoap's default hint "CoAP") to the device key,
                // so a wrong identity fails the handshake like a wrong key does.
                let ids = scratch.write(
                    &format!("{name}-identities.txt"),
                    format!("CoAP,{DEVICE_IDENTITY},{k}\n").as_bytes(),
                );
                args.extend([
                    "-h".to_owned(),
                    "CoAP".to_owned(),
                    "-k".to_owned(),
                    format!("{k}-is-not-for-strangers"),
                    "-i".to_owned(),
                    ids.to_string_lossy().into_owned(),
                ]);
            }
            args
        };
        LibcoapServer::spawn_until_ready(
            scratch,
            (name, &format!("{SERVER} ({name})")),
            &format!("{name}-server.log"),
            key,
            args,
            LibcoapServer::wait_ready,
        )
    }

    /// Starts [`SERVER`] with `args(port)` on a fresh port pair, logging to `log_name` in
    /// the scratch folder, until `ready` accepts it; up to 5 attempts, then panics with
    /// every attempt's reason and server log. `label` names the server in messages.
    pub(crate) fn spawn_until_ready(
        scratch: &Scratch,
        (name, label): (&str, &str),
        log_name: &str,
        key: Option<&str>,
        args: impl Fn(u16) -> Vec<String>,
        ready: impl Fn(&mut LibcoapServer, &Scratch) -> Result<(), String>,
    ) -> LibcoapServer {
        let mut failures = Vec::new();
        for attempt in 0..5 {
            let port = free_port_pair();
            let log = scratch.file(log_name);
            let args = args(port);
            let logfile = File::create(&log).expect("server log file");
            let child = Command::new(SERVER)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(logfile.try_clone().expect("dup log file"))
                .stderr(logfile)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {SERVER}: {e} (install libcoap3-bin)"));
            let mut server = LibcoapServer {
                name: name.to_owned(),
                port,
                key: key.map(str::to_owned),
                log,
                guard: ChildGuard::new(label.to_owned(), child),
            };
            match ready(&mut server, scratch) {
                Ok(()) => return server,
                Err(why) => failures.push(format!(
                    "attempt {attempt} on port {port}: {why}\nserver log:\n{}",
                    server.log()
                )),
            }
        }
        panic!("{label} never became ready:\n{}", failures.join("\n"));
    }

    pub async fn start(
        scratch: &std::sync::Arc<Scratch>,
        name: &str,
        key: Option<&str>,
    ) -> LibcoapServer {
        let scratch = scratch.clone();
        let name = name.to_owned();
        let key = key.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            LibcoapServer::start_blocking(&scratch, &name, key.as_deref())
        })
        .await
        .expect("server starter panicked")
    }

    fn wait_ready(&mut self, scratch: &Scratch) -> Result<(), String> {
        let mut uris = vec![format!("{}/.well-known/core", self.coap_uri())];
        if self.key.is_some() {
            uris.push(format!("{}/.well-known/core", self.coaps_uri()));
        }
        let probes = uris
            .into_iter()
            .map(|uri| {
                let mut args = Vec::new();
                if let Some(k) = &self.key {
                    args.extend([
                        "-u".to_owned(),
                        DEVICE_IDENTITY.to_owned(),
                        "-k".to_owned(),
                        k.clone(),
                    ]);
                }
                args.push(uri);
                args
            })
            .collect();
        self.wait_for_probes(scratch, SERVER_READY_LIMIT, "1", probes)
    }

    /// Runs each probe (`coap-client` arguments after `-B block`) until it is answered 2.05
    /// with a link-format body, within `limit` for all of them; then checks the server is
    /// still ours (not a stranger that happened to hold the port).
    pub(crate) fn wait_for_probes(
        &mut self,
        scratch: &Scratch,
        limit: Duration,
        block: &str,
        probes: Vec<Vec<String>>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        for probe in probes {
            loop {
                if let Some(status) = self.guard.exited() {
                    return Err(format!("exited with {status}"));
                }
                if Instant::now() >= deadline {
                    return Err(format!("no answer to {probe:?}; last try:\n{last}"));
                }
                let mut args: Vec<String> = vec!["-B".into(), block.into()];
                args.extend(probe.iter().cloned());
                let run = run_client_blocking(scratch, &args);
                let ok = run
                    .responses()
                    .last()
                    .is_some_and(|r| r.code == "2.05" && r.options.contains("link-format"));
                if ok {
                    break;
                }
                last = run.transcript();
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // Still ours (not a stranger that happened to hold the port)?
        match self.guard.exited() {
            Some(status) => Err(format!("exited with {status} after answering")),
            None => Ok(()),
        }
    }

    /// `coap://127.0.0.1:P`
    pub fn coap_uri(&self) -> String {
        format!("coap://127.0.0.1:{}", self.port)
    }

    /// `coaps://127.0.0.1:P+1`
    pub fn coaps_uri(&self) -> String {
        format!("coaps://127.0.0.1:{}", self.port + 1)
    }

    /// The URI the gateway should use for this device: DTLS when it has a key.
    pub fn device_uri(&self) -> String {
        if self.key.is_some() {
            self.coaps_uri()
        } else {
            self.coap_uri()
        }
    }

    /// `coap-client` arguments to reach `path` on this server the way the gateway does.
    pub fn client_args(&self, path: &str) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(k) = &self.key {
            args.extend([
                "-u".to_owned(),
                "gateway".to_owned(),
                "-k".to_owned(),
                k.clone(),
            ]);
        }
        args.push(format!("{}{path}", self.device_uri()));
        args
    }

    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// The requests this server logged that came from privgw rather than from coap-client
    /// (coap-client adds Uri-Port for a non-default port; privgw does not).
    pub fn gateway_requests(&self) -> Vec<PrintedPdu> {
        parse_pdus(&self.log())
            .into_iter()
            .filter(|p| !p.is_response() && !p.options.contains("Uri-Port"))
            .collect()
    }

    /// The PSK identities clients presented, as libcoap logged them (`-v 6`).
    pub fn identities_seen(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once("Identity '")?.1.split_once("' requested"))
            .map(|(id, _)| id.to_owned())
            .collect()
    }
}

/// A device entry of the gateway config.
pub struct DeviceEntry {
    pub id: String,
    pub uri: String,
    /// PSK identity and key the gateway presents (`coaps://` only).
    pub psk: Option<(String, String)>,
}

pub const SSID_A: u16 = 101;
pub const SSID_B: u16 = 102;

/// Gateway config: servers A (serverA/secretA, 101), B (serverB/secretB, 102), Lab (NoSec from
/// 127.0.0.1, 103); the given lwm2m devices; group G1 of all of them.
pub fn gateway_toml(store: &Path, listen: &[&str], devices: &[DeviceEntry]) -> String {
    let listen: Vec<String> = listen.iter().map(|l| format!("{l:?}")).collect();
    let mut toml = format!(
        r#"[gateway]
listen = [{}]
store = {store:?}
device_timeout_ms = 5000

[[servers]]
id = "ServerA"
ssid = {SSID_A}
psk_identity = "serverA"
psk_key = "secretA"

[[servers]]
id = "ServerB"
ssid = {SSID_B}
psk_identity = "serverB"
psk_key = "secretB"

[[servers]]
id = "ServerLab"
ssid = 103
nosec_address = "127.0.0.1"
"#,
        listen.join(", ")
    );
    for d in devices {
        let psk = d
            .psk
            .iter()
            .map(|(identity, key)| format!("psk_identity = {identity:?}\npsk_key = {key:?}"));
        push_lwm2m_device(&mut toml, &d.id, &d.uri, &psk.collect::<Vec<_>>());
    }
    push_group_g1(&mut toml, devices.iter().map(|d| d.id.as_str()));
    toml
}

/// Appends a `[[devices]]` entry for lwm2m device `id` at `uri`, followed by `lines`
/// (extra TOML, one a line).
pub fn push_lwm2m_device(toml: &mut String, id: &str, uri: &str, lines: &[String]) {
    toml.push_str(&format!(
        "\n[[devices]]\nid = \"{id}\"\nuri = \"{uri}\"\nprofile = \"lwm2m\"\n"
    ));
    for line in lines {
        toml.push_str(line);
        toml.push('\n');
    }
}

/// Appends group G1 of `members`.
pub fn push_group_g1<'a>(toml: &mut String, members: impl Iterator<Item = &'a str>) {
    let members: Vec<String> = members.map(|id| format!("{id:?}")).collect();
    toml.push_str(&format!(
        "\n[[groups]]\nid = \"G1\"\nmembers = [{}]\n",
        members.join(", ")
    ));
}

/// The in-process gateway with a DTLS, a NoSec and a NoSec `coap+tcp://` listener on
/// ephemeral loopback ports.
pub struct GatewayFixture {
    pub gateway: Gateway,
    pub coaps: EndpointUri,
    pub coap: EndpointUri,
    pub coap_tcp: EndpointUri,
}

impl GatewayFixture {
    pub async fn start(scratch: &Scratch, devices: &[DeviceEntry]) -> GatewayFixture {
        GatewayFixture::start_with(scratch, devices, "").await
    }

    /// [`start`](Self::start) with `extra` TOML appended to the config (more `[[devices]]`,
    /// `[[lwm2m.listen]]`, a `[proxy]` table…).
    pub async fn start_with(
        scratch: &Scratch,
        devices: &[DeviceEntry],
        extra: &str,
    ) -> GatewayFixture {
        let store = scratch.path().join("privgw.redb");
        let mut toml = gateway_toml(
            &store,
            &[
                "coaps://127.0.0.1:0",
                "coap://127.0.0.1:0",
                "coap+tcp://127.0.0.1:0",
            ],
            devices,
        );
        toml.push_str(extra);
        let config =
            Config::parse(&toml).unwrap_or_else(|e| panic!("gateway config rejected: {e}\n{toml}"));
        let gateway = Gateway::start(config).await.expect("start the gateway");
        let find = |scheme: Scheme| {
            *gateway
                .listeners()
                .iter()
                .find(|l| l.scheme == scheme)
                .expect("listener bound")
        };
        let coaps = find(Scheme::Coaps);
        let coap = find(Scheme::Coap);
        let coap_tcp = find(Scheme::CoapTcp);
        GatewayFixture {
            gateway,
            coaps,
            coap,
            coap_tcp,
        }
    }

    /// `coaps://127.0.0.1:PORT<path>`
    pub fn coaps_url(&self, path: &str) -> String {
        format!("coaps://{}{path}", self.coaps.addr)
    }

    /// `coap://127.0.0.1:PORT<path>`
    pub fn coap_url(&self, path: &str) -> String {
        format!("coap://{}{path}", self.coap.addr)
    }

    /// `coap+tcp://127.0.0.1:PORT<path>`
    pub fn coap_tcp_url(&self, path: &str) -> String {
        format!("coap+tcp://{}{path}", self.coap_tcp.addr)
    }

    pub async fn stop(self) {
        self.gateway.stop().await;
    }
}

/// The `DeviceID`s of a `Failed` list.
pub fn failed_ids(doc: &Value) -> Vec<String> {
    doc.get("Failed")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no Failed list in {doc:?}"))
        .iter()
        .map(|f| {
            f.get("DeviceID")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("Failed entry without DeviceID: {f:?}"))
                .to_owned()
        })
        .collect()
}

/// The reasons of a `Failed` list.
pub fn failed_reasons(doc: &Value) -> Vec<String> {
    doc.get("Failed")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.get("Reason").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The `Verified` DeviceIDs.
pub fn verified_ids(doc: &Value) -> Vec<String> {
    doc.get("Verified")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no Verified list in {doc:?}"))
        .iter()
        .map(|v| v.as_str().expect("DeviceID text").to_owned())
        .collect()
}
