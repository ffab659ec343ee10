//! Interop over CoAP over TCP and TLS (RFC 8323): a gateway fixture with `coaps+tcp://` and
//! `coap+tcp://` listeners and the committed test PKI (`certs/`), `coap-server-openssl`
//! devices over TLS, and `aiocoap-client` runs.
//!
//! Peer behaviours accounted for:
//! * libcoap 4.3.1 prints TCP/TLS PDUs like UDP ones (`v:1 t:CON c:2.05 i:0000 ...`), plus its
//!   CSMs as `c:CSM`; `coap-server -p P` with `-c/-j/-C` serves TLS on P+1 and verifies the
//!   client's certificate against `-C`; it adds `Uri-Port` to its own client requests, the
//!   gateway does not.
//! * aiocoap 0.4.17 (`aiocoap-client`) prints a 2.xx body on stdout (JSON with
//!   `--accept 50`) and a new resource's Location-Path on stderr; on 4.xx it exits 1 and
//!   prints `4.03 Forbidden` and then the body on stderr, nothing on stdout; a failed TLS
//!   handshake is `Network error: ...` on stderr.
//!   Its credentials format has no client certificate: `tlscert` takes only `certfile`, used
//!   as the CA that verifies the *server*; `keyfile` is rejected when the file is loaded. So
//!   mutual TLS with aiocoap runs through [`AIOCOAP_MTLS_SHIM`], which teaches `tlscert` a
//!   `keyfile` and loads the pair with `SSLContext.load_cert_chain`, then runs aiocoap's own
//!   `aiocoap-client` main. The server certificate is checked by Python's default context,
//!   which trusts `SSL_CERT_FILE`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use privgw::config::{Config, EndpointUri, Scheme};
use privgw::gateway::Gateway;

use super::{
    ChildGuard, LibcoapServer, SERVER, SSID_A, SSID_B, Scratch, push_group_g1, push_lwm2m_device,
    read_lossy,
};

/// The committed test PKI.
pub fn certs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("certs")
}

/// `certs/<name>.pem` as a string.
pub fn cert(name: &str) -> String {
    certs_dir()
        .join(format!("{name}.pem"))
        .to_string_lossy()
        .into_owned()
}

/// `certs/<name>.key` as a string.
pub fn key(name: &str) -> String {
    certs_dir()
        .join(format!("{name}.key"))
        .to_string_lossy()
        .into_owned()
}

/// `coap-client` arguments presenting `certs/<name>` and trusting `certs/ca.pem`.
pub fn libcoap_pki_args(name: &str) -> Vec<String> {
    vec![
        "-c".into(),
        cert(name),
        "-j".into(),
        key(name),
        "-C".into(),
        cert("ca"),
    ]
}

/// A device entry of the gateway config, with extra TOML lines (`cert_match = ...`, PSK).
pub struct StreamDevice {
    pub id: String,
    pub uri: String,
    pub lines: Vec<String>,
}

/// Appends the `[[devices]]` entries of `devices` (with their extra lines) and group G1 of
/// them all.
pub fn push_stream_devices(toml: &mut String, devices: &[StreamDevice]) {
    for d in devices {
        push_lwm2m_device(toml, &d.id, &d.uri, &d.lines);
    }
    push_group_g1(toml, devices.iter().map(|d| d.id.as_str()));
}

/// Gateway config: the committed gateway certificate; server A known by
/// `san-dns:serverA.example` on TLS and by `127.0.0.1` on NoSec listeners; server B by PSK;
/// the given lwm2m devices in group G1.
pub fn stream_gateway_toml(store: &Path, devices: &[StreamDevice]) -> String {
    let mut toml = format!(
        r#"[gateway]
listen = ["coaps+tcp://127.0.0.1:0", "coap+tcp://127.0.0.1:0"]
store = {store:?}
device_timeout_ms = 5000
cert = {:?}
key = {:?}
ca = {:?}

[[servers]]
id = "ServerA"
ssid = {SSID_A}
cert_match = "san-dns:serverA.example"
nosec_address = "127.0.0.1"

[[servers]]
id = "ServerB"
ssid = {SSID_B}
psk_identity = "serverB"
psk_key = "secretB"
"#,
        cert("gateway"),
        key("gateway"),
        cert("ca"),
    );
    push_stream_devices(&mut toml, devices);
    toml
}

/// The in-process gateway on `coaps+tcp://` and `coap+tcp://` (ephemeral loopback ports).
pub struct StreamGateway {
    pub gateway: Gateway,
    pub tls: EndpointUri,
    pub tcp: EndpointUri,
}

impl StreamGateway {
    pub async fn start(scratch: &Scratch, devices: &[StreamDevice]) -> StreamGateway {
        let toml = stream_gateway_toml(&scratch.path().join("privgw.redb"), devices);
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
        let tls = find(Scheme::CoapsTcp);
        let tcp = find(Scheme::CoapTcp);
        StreamGateway { gateway, tls, tcp }
    }

    /// `coaps+tcp://127.0.0.1:PORT<path>`
    pub fn tls_url(&self, path: &str) -> String {
        format!("coaps+tcp://{}{path}", self.tls.addr)
    }

    /// `coap+tcp://127.0.0.1:PORT<path>`
    pub fn tcp_url(&self, path: &str) -> String {
        format!("coap+tcp://{}{path}", self.tcp.addr)
    }

    pub async fn stop(self) {
        self.gateway.stop().await;
    }
}

impl LibcoapServer {
    /// A `coap-server-openssl` device presenting `certs/<cert_name>` over TLS on P+1 (and
    /// DTLS), verifying clients against `certs/ca.pem`; TCP and UDP on P. Waits until it
    /// answers GET /.well-known/core over TCP and over TLS (as the gateway's certificate).
    pub fn start_tls_blocking(scratch: &Scratch, name: &str, cert_name: &str) -> LibcoapServer {
        let args = |port: u16| -> Vec<String> {
            vec![
                "-A".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-d".into(),
                "50".into(),
                "-v".into(),
                "7".into(),
                "-c".into(),
                cert(cert_name),
                "-j".into(),
                key(cert_name),
                "-C".into(),
                cert("ca"),
            ]
        };
        LibcoapServer::spawn_until_ready(
            scratch,
            (name, &format!("{SERVER} ({name}, TLS)")),
            &format!("{name}-tls-server.log"),
            None,
            args,
            LibcoapServer::wait_ready_tls,
        )
    }

    pub async fn start_tls(
        scratch: &std::sync::Arc<Scratch>,
        name: &str,
        cert_name: &str,
    ) -> LibcoapServer {
        let scratch = scratch.clone();
        let name = name.to_owned();
        let cert_name = cert_name.to_owned();
        tokio::task::spawn_blocking(move || {
            LibcoapServer::start_tls_blocking(&scratch, &name, &cert_name)
        })
        .await
        .expect("server starter panicked")
    }

    fn wait_ready_tls(&mut self, scratch: &Scratch) -> Result<(), String> {
        let probes = vec![
            vec![format!("{}/.well-known/core", self.coap_tcp_uri())],
            [
                libcoap_pki_args("gateway"),
                vec![format!("{}/.well-known/core", self.coaps_tcp_uri())],
            ]
            .concat(),
        ];
        self.wait_for_probes(scratch, Duration::from_secs(10), "2", probes)
    }

    /// `coap+tcp://127.0.0.1:P`
    pub fn coap_tcp_uri(&self) -> String {
        format!("coap+tcp://127.0.0.1:{}", self.port)
    }

    /// `coaps+tcp://127.0.0.1:P+1`
    pub fn coaps_tcp_uri(&self) -> String {
        format!("coaps+tcp://127.0.0.1:{}", self.port + 1)
    }

    /// GET requests this server logged without `Uri-Port` (privgw's, not coap-client's).
    pub fn gateway_gets(&self) -> Vec<super::PrintedPdu> {
        self.gateway_requests()
            .into_iter()
            .filter(|p| p.code == "GET")
            .collect()
    }

    /// The certificate subjects libcoap logged for its TLS clients (`CN '...' presented by
    /// client`).
    pub fn client_cns_seen(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once("CN '")?.1.split_once("' presented by client"))
            .map(|(cn, _)| cn.to_owned())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// aiocoap
// ---------------------------------------------------------------------------------------

pub const AIOCOAP_CLIENT: &str = "aiocoap-client";
const PYTHON: &str = "python3";
const AIOCOAP_HARD_LIMIT: Duration = Duration::from_secs(30);

/// Fails the test (never skips) when aiocoap is missing.
pub fn require_aiocoap() {
    let ok = Command::new(AIOCOAP_CLIENT)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "interop test needs `{AIOCOAP_CLIENT}` (aiocoap, `pip install aiocoap`), but it cannot be run"
    );
    let ok = Command::new(PYTHON)
        .args(["-c", "import aiocoap.cli.client, aiocoap.credentials"])
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "interop test needs the aiocoap Python package importable by `{PYTHON}` (`pip install aiocoap`)"
    );
}

/// Runs aiocoap-client's own main after teaching its `tlscert` credential a `keyfile`, so it
/// presents a client certificate (aiocoap 0.4.17 cannot). Arguments are aiocoap-client's.
pub const AIOCOAP_MTLS_SHIM: &str = r#"
import ssl
import sys

import aiocoap.credentials as credentials


class TLSCert(credentials._Objectish):
    def __init__(self, certfile: str, keyfile: str):
        self.certfile = certfile
        self.keyfile = keyfile


def ssl_client_context(self, scheme, hostinfo):
    cert = self.get("%s://%s/*" % (scheme, hostinfo), None)
    if not isinstance(cert, TLSCert):
        return None
    context = ssl.create_default_context()  # trusts SSL_CERT_FILE
    context.load_cert_chain(cert.certfile, cert.keyfile)
    return context


credentials.TLSCert = TLSCert
credentials.CredentialsMap.ssl_client_context = ssl_client_context

from aiocoap.cli.client import sync_main  # noqa: E402

sys.argv[0] = "aiocoap-client"
sync_main()
"#;

/// How aiocoap is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aiocoap {
    /// The `aiocoap-client` command as installed.
    Client,
    /// `python3 -c AIOCOAP_MTLS_SHIM` (aiocoap-client's main with client certificates).
    MtlsShim,
}

/// What one aiocoap run printed.
#[derive(Debug)]
pub struct AiocoapRun {
    pub command: String,
    pub stdout: String,
    pub stderr: String,
    pub status: Option<std::process::ExitStatus>,
    pub timed_out: bool,
}

impl AiocoapRun {
    pub fn transcript(&self) -> String {
        format!(
            "$ {}\n(exit: {:?}, timed out: {})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.status, self.timed_out, self.stdout, self.stderr
        )
    }

    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The body of a 4.xx/5.xx answer: stderr after the line holding `code`, as JSON.
    pub fn error_json(&self, code: &str) -> serde_json::Value {
        let (_, after) = self
            .stderr
            .split_once(code)
            .unwrap_or_else(|| panic!("no {code} on stderr\n{}", self.transcript()));
        let body = after.split_once('\n').map(|(_, b)| b).unwrap_or_default();
        serde_json::from_str(body.trim())
            .unwrap_or_else(|e| panic!("error body is not JSON ({e})\n{}", self.transcript()))
    }

    /// stdout parsed as JSON (`--accept 50`); panics with the transcript otherwise.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.transcript()))
    }
}

/// Runs aiocoap with `args` and `SSL_CERT_FILE=ssl_cert_file` (when given), bounded.
pub fn run_aiocoap_blocking(
    scratch: &Scratch,
    how: Aiocoap,
    ssl_cert_file: Option<&Path>,
    args: &[String],
) -> AiocoapRun {
    let out_path = scratch.file("aiocoap.stdout");
    let err_path = scratch.file("aiocoap.stderr");
    let mut command = match how {
        Aiocoap::Client => Command::new(AIOCOAP_CLIENT),
        Aiocoap::MtlsShim => {
            let mut c = Command::new(PYTHON);
            c.args(["-c", AIOCOAP_MTLS_SHIM]);
            c
        }
    };
    command.args(args);
    match ssl_cert_file {
        Some(f) => command.env("SSL_CERT_FILE", f),
        None => command.env_remove("SSL_CERT_FILE"),
    };
    let child = command
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start aiocoap ({how:?}): {e} (pip install aiocoap)"));
    let mut guard = ChildGuard::new(AIOCOAP_CLIENT, child);
    let status = guard.wait_until(Instant::now() + AIOCOAP_HARD_LIMIT);
    let timed_out = status.is_none();
    drop(guard);
    let program = match how {
        Aiocoap::Client => AIOCOAP_CLIENT.to_owned(),
        Aiocoap::MtlsShim => format!("{PYTHON} -c <mTLS shim>"),
    };
    AiocoapRun {
        command: format!(
            "{}{program} {}",
            ssl_cert_file
                .map(|f| format!("SSL_CERT_FILE={} ", f.display()))
                .unwrap_or_default(),
            args.join(" ")
        ),
        stdout: read_lossy(&out_path),
        stderr: read_lossy(&err_path),
        status,
        timed_out,
    }
}

/// [`run_aiocoap_blocking`] off the async runtime.
pub async fn run_aiocoap(
    scratch: &std::sync::Arc<Scratch>,
    how: Aiocoap,
    ssl_cert_file: Option<&Path>,
    args: &[&str],
) -> AiocoapRun {
    let scratch = scratch.clone();
    let file = ssl_cert_file.map(Path::to_owned);
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || run_aiocoap_blocking(&scratch, how, file.as_deref(), &args))
        .await
        .expect("aiocoap runner panicked")
}

/// Writes an aiocoap credentials file mapping `coaps+tcp://HOST:PORT/*` to `tlscert`.
pub fn aiocoap_credentials(
    scratch: &Scratch,
    hostinfo: &str,
    tlscert: serde_json::Value,
) -> String {
    let creds = serde_json::json!({ format!("coaps+tcp://{hostinfo}/*"): { "tlscert": tlscert } });
    scratch
        .write("creds.json", creds.to_string().as_bytes())
        .to_string_lossy()
        .into_owned()
}
