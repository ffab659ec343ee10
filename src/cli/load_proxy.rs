//! `privgw load --proxy`: proxied CoAP GETs to one device over DTLS-PSK, through privgw and
//! through libcoap's forward proxy (`coap-server-openssl -P`, coap→coaps), same device, same
//! load, same run; both rates and the ratio privgw/libcoap are printed.
//!
//! * The device is the project's simulated LwM2M device (in this process, DTLS-PSK), so both
//!   proxies reach the very same listener and the tool can count what reached it.
//! * libcoap gets `GET` with `Proxy-Uri: coaps://<device>/<path>` on its `coap://` port; it
//!   dials the device with `-u`/`-k` (one upstream DTLS session per client endpoint).
//! * privgw (a child `privgw serve`, or in this process with `--in-process`) gets
//!   `GET /<prefix>/<path>` on its `coap://` listener from ServerB (`nosec_address`
//!   127.0.0.1), after ServerA granted ServerB Get on `<path>` of the device; it forwards over
//!   its own DTLS session to the device.
//! * The load: `--clients` UDP endpoints, each with `--window` CON GETs in flight, closed
//!   loop (a request leaves when one is answered), `--requests` per side per run or
//!   `--run-seconds`, whichever ends first; every endpoint is warmed first (libcoap's
//!   upstream handshakes, privgw's sessions) and the warm-up is not timed. Runs alternate
//!   libcoap, privgw, libcoap, … so drift on a shared machine hits both.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use super::registered::{ProcStats, Running, clock_ticks_per_second};
use super::{Child, LoadArgs};
use crate::cli::CliResult;
use crate::cli::ctl::GatewayClient;
use crate::cli::demo::tempfile_dir;
use crate::coap::{self, CoapOption, MessageClass, MessageType, Packet, RequestType};
use crate::config::EndpointUri;
use crate::device::{AcInstance, Behaviour, DeviceSimConfig, RunningDevice};

/// The device's PSK identity and key (both proxies dial it with these).
const DEVICE_IDENTITY: &str = "gateway";
const DEVICE_KEY: &str = "proxybench-key";
/// The device's id, hence its privgw prefix.
const DEVICE_ID: &str = "dev0";
/// Requests each endpoint completes before the measured runs (not timed).
const WARM_REQUESTS: i64 = 3;
/// RFC 7252 ACK_TIMEOUT (no random factor: a bench wants repeatable timing) and
/// MAX_RETRANSMIT; a request unanswered after that counts as lost.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_RETRANSMIT: u8 = 4;
/// How long a request whose CON was acknowledged empty may wait for its separate response.
const SEPARATE_PATIENCE: Duration = Duration::from_secs(10);
/// After a run's deadline, how long outstanding requests are still waited for.
const DRAIN: Duration = Duration::from_secs(3);
const TOKEN_LEN: usize = 4;

/// One request form on the wire: a CON GET with a 4-byte token, encoded once; each request
/// is the template with its MID and token patched in.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    bytes: Vec<u8>,
}

impl Template {
    fn encode(options: &[(CoapOption, Vec<u8>)], path: Option<&str>) -> CliResult<Template> {
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(RequestType::Get);
        p.header.message_id = 0;
        p.set_token(vec![0; TOKEN_LEN]);
        if let Some(path) = path {
            coap::set_uri(&mut p, path);
        }
        for (o, v) in options {
            p.add_option(*o, v.clone());
        }
        let bytes = coap::encode(&p)?;
        Ok(Template { bytes })
    }

    /// libcoap's form: no Uri-Path, `Proxy-Uri: <uri>` (an absolute `coaps://` URI).
    pub(crate) fn proxy_uri(uri: &str) -> CliResult<Template> {
        Template::encode(&[(CoapOption::ProxyUri, uri.as_bytes().to_vec())], None)
    }

    /// privgw's form: `Uri-Path` `<prefix>` then the device path's segments.
    pub(crate) fn prefixed_path(prefix: &str, path: &str) -> CliResult<Template> {
        Template::encode(&[], Some(&format!("/{prefix}{path}")))
    }

    /// The request with `mid` and `token` (bytes 2–3 and 4–7 of the header).
    pub(crate) fn write(&self, mid: u16, token: u32, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.bytes);
        out[2..4].copy_from_slice(&mid.to_be_bytes());
        out[4..4 + TOKEN_LEN].copy_from_slice(&token.to_be_bytes());
    }
}

/// What a datagram from the proxy is, as far as the load loop cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// An empty ACK: the proxy will answer in a separate response.
    EmptyAck { mid: u16 },
    /// A Reset: the proxy refused the message.
    Reset { mid: u16 },
    /// A response (piggybacked in an ACK, or a CON/NON separate one). `token` is `None` when
    /// it is not a 4-byte token, so not one of ours.
    Response {
        confirmable: bool,
        mid: u16,
        token: Option<u32>,
        code: u8,
    },
    /// Not CoAP, a request, or a message we never asked for.
    Other,
}

pub(crate) fn classify(d: &[u8]) -> Incoming {
    let [b0, code, m0, m1, rest @ ..] = d else {
        return Incoming::Other;
    };
    if b0 >> 6 != 1 {
        return Incoming::Other;
    }
    let mid = u16::from_be_bytes([*m0, *m1]);
    let tkl = usize::from(b0 & 0x0f);
    let kind = (b0 >> 4) & 0x3;
    if *code == 0 {
        return match kind {
            2 if d.len() == 4 => Incoming::EmptyAck { mid },
            3 => Incoming::Reset { mid },
            _ => Incoming::Other,
        };
    }
    // Responses are classes 2 to 5; class 0 is a request, 7 signaling.
    if !(2..=5).contains(&(code >> 5)) || rest.len() < tkl {
        return Incoming::Other;
    }
    let token = (tkl == TOKEN_LEN).then(|| {
        let mut t = [0u8; TOKEN_LEN];
        t.copy_from_slice(&rest[..TOKEN_LEN]);
        u32::from_be_bytes(t)
    });
    Incoming::Response {
        confirmable: kind == 0,
        mid,
        token,
        code: *code,
    }
}

/// `0x45` → `"2.05"`.
pub(crate) fn code_text(code: u8) -> String {
    format!("{}.{:02}", code >> 5, code & 0x1f)
}

/// The empty ACK of a CON with `mid`.
fn empty_ack(mid: u16) -> [u8; 4] {
    let [m0, m1] = mid.to_be_bytes();
    [0x60, 0, m0, m1]
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

/// The median of `values` (mean of the middle two for an even count); 0 when empty.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// One request of one endpoint still waiting for its answer.
#[derive(Debug, Clone, Copy)]
struct Pending {
    token: u32,
    mid: u16,
    sent: Instant,
    /// Next retransmission (CON not yet acknowledged) or the give-up time.
    deadline: Instant,
    tries: u8,
    acked: bool,
}

/// What one endpoint saw in one run.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    ok: u64,
    /// Answers with another code than expected, and the first such code.
    wrong: u64,
    first_wrong: Option<u8>,
    /// The payload of that first wrong answer (a proxy's diagnostic).
    wrong_body: Option<String>,
    lost: u64,
    retransmissions: u64,
    resets: u64,
    separate: u64,
    latencies_us: Vec<u32>,
    last_answer: Option<Instant>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.wrong += other.wrong;
        self.first_wrong = self.first_wrong.or(other.first_wrong);
        self.wrong_body = self.wrong_body.take().or(other.wrong_body);
        self.lost += other.lost;
        self.retransmissions += other.retransmissions;
        self.resets += other.resets;
        self.separate += other.separate;
        self.latencies_us.extend(other.latencies_us);
        self.last_answer = match (self.last_answer, other.last_answer) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// One client endpoint: its socket (connected to the proxy) and its MID/token counters, kept
/// across runs so the proxy's per-endpoint state stays warm.
struct Endpoint {
    socket: UdpSocket,
    next_mid: u16,
    next_token: u32,
}

impl Endpoint {
    async fn bind(proxy: std::net::SocketAddr, seed: u16) -> CliResult<Endpoint> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect(proxy).await?;
        Ok(Endpoint {
            socket,
            next_mid: seed.wrapping_mul(7919),
            next_token: u32::from(seed) << 16,
        })
    }

    /// Closed loop: keeps `window` requests in flight while `budget` lasts and `until` has
    /// not passed, then waits (at most [`DRAIN`]) for what is outstanding.
    async fn run(
        &mut self,
        template: &Template,
        expect: u8,
        window: usize,
        budget: &AtomicI64,
        until: Instant,
    ) -> std::io::Result<Tally> {
        let mut tally = Tally::default();
        let mut pending: Vec<Pending> = Vec::with_capacity(window);
        let mut out = Vec::with_capacity(template.bytes.len());
        let mut buf = vec![0u8; 2048];
        let give_up = until + DRAIN;
        loop {
            let now = Instant::now();
            while pending.len() < window
                && now < until
                && budget.fetch_sub(1, Ordering::Relaxed) > 0
            {
                let (mid, token) = (self.next_mid, self.next_token);
                self.next_mid = self.next_mid.wrapping_add(1);
                self.next_token = self.next_token.wrapping_add(1);
                template.write(mid, token, &mut out);
                self.socket.send(&out).await?;
                pending.push(Pending {
                    token,
                    mid,
                    sent: now,
                    deadline: now + ACK_TIMEOUT,
                    tries: 0,
                    acked: false,
                });
            }
            if pending.is_empty() {
                return Ok(tally);
            }
            let next = pending
                .iter()
                .map(|p| p.deadline)
                .min()
                .unwrap_or(now)
                .min(give_up);
            match tokio::time::timeout_at(next.into(), self.socket.recv(&mut buf)).await {
                Ok(received) => {
                    let n = received?;
                    self.incoming(&buf[..n], expect, &mut pending, &mut tally)
                        .await?;
                }
                Err(_) => {
                    let now = Instant::now();
                    if now >= give_up {
                        tally.lost += pending.len() as u64;
                        return Ok(tally);
                    }
                    self.expire(template, now, &mut pending, &mut tally, &mut out)
                        .await?;
                }
            }
        }
    }

    async fn incoming(
        &mut self,
        d: &[u8],
        expect: u8,
        pending: &mut Vec<Pending>,
        tally: &mut Tally,
    ) -> std::io::Result<()> {
        match classify(d) {
            Incoming::EmptyAck { mid } => {
                if let Some(p) = pending.iter_mut().find(|p| p.mid == mid && !p.acked) {
                    p.acked = true;
                    p.deadline = p.sent + SEPARATE_PATIENCE;
                    tally.separate += 1;
                }
            }
            Incoming::Reset { mid } => {
                if let Some(i) = pending.iter().position(|p| p.mid == mid) {
                    pending.swap_remove(i);
                    tally.resets += 1;
                }
            }
            Incoming::Response {
                confirmable,
                mid,
                token,
                code,
            } => {
                if confirmable {
                    // Acknowledge every CON, duplicates included (our ACK may have been lost).
                    self.socket.send(&empty_ack(mid)).await?;
                }
                let Some(token) = token else { return Ok(()) };
                let Some(i) = pending.iter().position(|p| p.token == token) else {
                    return Ok(());
                };
                let p = pending.swap_remove(i);
                let now = Instant::now();
                if code == expect {
                    tally.ok += 1;
                    let us = now.duration_since(p.sent).as_micros();
                    tally
                        .latencies_us
                        .push(u32::try_from(us).unwrap_or(u32::MAX));
                } else {
                    tally.wrong += 1;
                    if tally.first_wrong.is_none() {
                        tally.first_wrong = Some(code);
                        tally.wrong_body = coap::decode(d)
                            .ok()
                            .map(|p| String::from_utf8_lossy(&p.payload).into_owned());
                    }
                }
                tally.last_answer = Some(now);
            }
            Incoming::Other => {}
        }
        Ok(())
    }

    /// Retransmits every unacknowledged CON whose timer fired; drops what ran out of tries
    /// or of patience.
    async fn expire(
        &mut self,
        template: &Template,
        now: Instant,
        pending: &mut Vec<Pending>,
        tally: &mut Tally,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let mut i = 0;
        while i < pending.len() {
            let p = &mut pending[i];
            if p.deadline > now {
                i += 1;
                continue;
            }
            if p.acked || p.tries >= MAX_RETRANSMIT {
                pending.swap_remove(i);
                tally.lost += 1;
                continue;
            }
            p.tries += 1;
            p.deadline = now + ACK_TIMEOUT * (1 << p.tries);
            template.write(p.mid, p.token, out);
            tally.retransmissions += 1;
            self.socket.send(out).await?;
            i += 1;
        }
        Ok(())
    }
}

/// The endpoints of one side and the request form it understands.
struct Side {
    name: &'static str,
    template: Arc<Template>,
    endpoints: Vec<Endpoint>,
    pid: u32,
}

/// What one side did in one run.
struct RunResult {
    rate: f64,
    tally: Tally,
    elapsed: Duration,
    cpu_us_per_request: f64,
    device_requests: u64,
}

impl Side {
    /// Runs every endpoint at once: with `per_endpoint` a budget each (warm-up), else one
    /// shared budget of `total`.
    async fn drive(
        &mut self,
        expect: u8,
        window: usize,
        total: Option<i64>,
        per_endpoint: i64,
        until: Instant,
    ) -> CliResult<(Tally, Duration)> {
        let shared = Arc::new(AtomicI64::new(total.unwrap_or(0)));
        let mut set = JoinSet::new();
        let t0 = Instant::now();
        for (i, mut ep) in std::mem::take(&mut self.endpoints).into_iter().enumerate() {
            let template = self.template.clone();
            let budget = match total {
                Some(_) => shared.clone(),
                None => Arc::new(AtomicI64::new(per_endpoint)),
            };
            set.spawn(async move {
                let tally = ep.run(&template, expect, window, &budget, until).await;
                (i, ep, tally)
            });
        }
        let mut back: Vec<(usize, Endpoint)> = Vec::new();
        let mut all = Tally::default();
        let mut failure = None;
        while let Some(joined) = set.join_next().await {
            let (i, ep, tally) = joined?;
            back.push((i, ep));
            match tally {
                Ok(t) => all.merge(t),
                Err(e) => failure = Some(e),
            }
        }
        back.sort_by_key(|(i, _)| *i);
        self.endpoints = back.into_iter().map(|(_, ep)| ep).collect();
        if let Some(e) = failure {
            return Err(format!("{} proxy: a load endpoint failed: {e}", self.name).into());
        }
        let elapsed = all
            .last_answer
            .map_or_else(|| t0.elapsed(), |t| t.duration_since(t0));
        Ok((all, elapsed))
    }

    /// Every endpoint completes [`WARM_REQUESTS`] with the expected code, or the failure says
    /// what the proxy answered instead.
    async fn warm(&mut self, expect: u8, within: Duration) -> CliResult<()> {
        let n = self.endpoints.len() as u64;
        let (tally, took) = self
            .drive(expect, 1, None, WARM_REQUESTS, Instant::now() + within)
            .await?;
        if let Some(code) = tally.first_wrong {
            return Err(format!(
                "{} proxy: warm-up answered {} {:?} where the device itself answers {} ({} of {} requests)",
                self.name,
                code_text(code),
                tally.wrong_body.as_deref().unwrap_or(""),
                code_text(expect),
                tally.wrong,
                n * WARM_REQUESTS as u64
            )
            .into());
        }
        if tally.ok < n * WARM_REQUESTS as u64 {
            return Err(format!(
                "{} proxy: warm-up got {} of {} answers in {took:.1?} ({} lost, {} resets)",
                self.name,
                tally.ok,
                n * WARM_REQUESTS as u64,
                tally.lost,
                tally.resets
            )
            .into());
        }
        Ok(())
    }

    async fn measure(
        &mut self,
        args: &LoadArgs,
        expect: u8,
        device: &RunningDevice,
        hz: f64,
    ) -> CliResult<RunResult> {
        let cpu_before = ProcStats::of(self.pid).cpu_ticks;
        let seen_before = device.requests();
        let until = Instant::now() + Duration::from_secs(args.run_seconds);
        let (tally, elapsed) = self
            .drive(
                expect,
                args.window,
                Some(i64::try_from(args.requests).unwrap_or(i64::MAX)),
                0,
                until,
            )
            .await?;
        let cpu = ProcStats::of(self.pid).cpu_ticks.saturating_sub(cpu_before) as f64 / hz;
        let rate = tally.ok as f64 / elapsed.as_secs_f64().max(1e-9);
        Ok(RunResult {
            rate,
            cpu_us_per_request: 1e6 * cpu / (tally.ok.max(1) as f64),
            device_requests: device.requests().saturating_sub(seen_before),
            elapsed,
            tally,
        })
    }
}

fn describe(name: &str, r: &RunResult) -> String {
    let mut lat = r.tally.latencies_us.clone();
    lat.sort_unstable();
    let pick = |p: f64| {
        lat.get(((lat.len().saturating_sub(1)) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1e3
    };
    let mut s = format!(
        "{name} {:.0} req/s ({} in {:.2} s; latency p50 {:.2} ms, p99 {:.2} ms; proxy CPU {:.1} µs/req; device saw {})",
        r.rate,
        r.tally.ok,
        r.elapsed.as_secs_f64(),
        pick(0.5),
        pick(0.99),
        r.cpu_us_per_request,
        r.device_requests,
    );
    let t = &r.tally;
    if t.wrong + t.lost + t.resets + t.retransmissions > 0 {
        s.push_str(&format!(
            " [wrong code {}{}, lost {}, resets {}, retransmissions {}]",
            t.wrong,
            t.first_wrong
                .map(|c| format!(" (first {})", code_text(c)))
                .unwrap_or_default(),
            t.lost,
            t.resets,
            t.retransmissions
        ));
    }
    if t.separate > 0 {
        s.push_str(&format!(" [{} separate responses]", t.separate));
    }
    s
}

/// A UDP port `p` with `p` and `p + 1` free over UDP and TCP (libcoap's server binds all four
/// when it has a PSK: coap and coap+tcp on `p`, coaps and coaps+tcp on `p + 1`).
fn libcoap_port() -> CliResult<u16> {
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

fn free_udp_port() -> CliResult<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn gateway_toml(
    store: &std::path::Path,
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

pub async fn run(args: &LoadArgs) -> CliResult<()> {
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
    let result = measure(args, &dir, object, instance).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(
    args: &LoadArgs,
    dir: &std::path::Path,
    object: u16,
    instance: u16,
) -> CliResult<()> {
    let started = Instant::now();
    let until = started + Duration::from_secs(args.max_seconds);
    let hz = clock_ticks_per_second();

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
    let outcome = with_device(args, dir, &device, until, hz).await;
    device.stop().await;
    outcome
}

async fn with_device(
    args: &LoadArgs,
    dir: &std::path::Path,
    device: &RunningDevice,
    until: Instant,
    hz: f64,
) -> CliResult<()> {
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
    let libcoap = std::process::Command::new("coap-server-openssl")
        .args(["-A", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-P",
            ",libcoap-proxy",
            "-u",
            DEVICE_IDENTITY,
            "-k",
            DEVICE_KEY,
        ])
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("cannot start coap-server-openssl (apt-get install libcoap3-bin): {e}")
        })?;
    let libcoap = Child(libcoap);
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
        println!(
            "privgw load --proxy: device {DEVICE_ID} (simulated LwM2M, DTLS-PSK) at {device_uri} answers GET {} with {} ({} bytes) directly; {} client endpoints × {} in flight per side, CON GET over UDP, {} requests or {} s per side per run, {} runs alternating",
            args.path,
            reply.code,
            reply.payload.len(),
            args.clients,
            args.window,
            args.requests,
            args.run_seconds,
            args.runs
        );
        println!(
            "  libcoap: coap-server-openssl -P (pid {}) on coap://{libcoap_addr}, Proxy-Uri {proxy_uri}",
            libcoap.0.id()
        );
        println!(
            "  privgw:  {} on {plain}, GET /{DEVICE_ID}{} from ServerB (nosec_address 127.0.0.1), Get on {} granted by ServerA; one DTLS session to the device, nstart {}",
            gw.what(),
            args.path,
            args.path,
            args.nstart
                .map_or_else(|| "at the gateway's default (1)".to_owned(), |n| n.to_string())
        );
        let mut sides = [
            Side {
                name: "libcoap",
                template: Arc::new(Template::proxy_uri(&proxy_uri)?),
                endpoints: Vec::new(),
                pid: libcoap.0.id(),
            },
            Side {
                name: "privgw",
                template: Arc::new(Template::prefixed_path(DEVICE_ID, &args.path)?),
                endpoints: Vec::new(),
                pid: gw.pid(),
            },
        ];
        for (k, side) in sides.iter_mut().enumerate() {
            let to = if k == 0 { libcoap_addr } else { plain.addr };
            for i in 0..args.clients {
                let seed = u16::try_from(i + k * 1000).unwrap_or(0);
                side.endpoints.push(Endpoint::bind(to, seed).await?);
            }
        }
        // Warm both (libcoap may still be starting: retry its warm-up briefly).
        let mut warmed: CliResult<()> = Err("not tried".into());
        for _ in 0..10 {
            warmed = sides[0].warm(expect, Duration::from_secs(3)).await;
            if warmed.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        warmed.map_err(|e| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            format!("{e}; coap-server-openssl said: {}", log.trim())
        })?;
        let privgw_ok = sides[1].warm(expect, Duration::from_secs(10)).await;
        if let Err(e) = &privgw_ok {
            println!("  privgw not measured: {e}");
        }
        let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut ratios = Vec::new();
        for run in 0..args.runs {
            let left = until.saturating_duration_since(Instant::now());
            if run > 0 && left < Duration::from_secs(2 * args.run_seconds + 2) {
                println!("  (stopped after {run} runs: --max-seconds)");
                break;
            }
            let mut line = format!("run {}:", run + 1);
            let mut this = [None, None];
            for (k, side) in sides.iter_mut().enumerate() {
                if k == 1 && privgw_ok.is_err() {
                    continue;
                }
                let r = side.measure(args, expect, device, hz).await?;
                line.push_str(&format!(" {};", describe(side.name, &r)));
                rates[k].push(r.rate);
                this[k] = Some(r.rate);
            }
            if let [Some(l), Some(p)] = this {
                ratios.push(p / l);
                line.push_str(&format!(" ratio privgw/libcoap {:.2}", p / l));
            }
            println!("{line}");
        }
        if privgw_ok.is_ok() {
            println!(
                "median of {} runs: libcoap {:.0} req/s, privgw {:.0} req/s, ratio privgw/libcoap {:.2} (median of the per-run ratios; ratio of the medians {:.2})",
                ratios.len(),
                median(&rates[0]),
                median(&rates[1]),
                median(&ratios),
                median(&rates[1]) / median(&rates[0]).max(1e-9),
            );
        } else {
            println!(
                "median of {} runs: libcoap {:.0} req/s; privgw not measured",
                rates[0].len(),
                median(&rates[0])
            );
        }
        privgw_ok
    }
    .await;
    gateway.stop().await;
    drop(libcoap);
    outcome
}

/// `"2.05"` → `0x45`.
pub(crate) fn parse_code(text: &str) -> Option<u8> {
    let (class, detail) = text.split_once('.')?;
    let class: u8 = class.parse().ok()?;
    let detail: u8 = detail.parse().ok()?;
    (class < 8 && detail < 32).then_some((class << 5) | detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_patch_mid_and_token_into_what_coap_lite_reads() {
        let t = Template::proxy_uri("coaps://127.0.0.1:5684/2/0").unwrap();
        let mut out = Vec::new();
        t.write(0xbeef, 0x0102_0304, &mut out);
        let p = coap::decode(&out).unwrap();
        assert_eq!(p.header.message_id, 0xbeef);
        assert_eq!(p.get_token(), &[1, 2, 3, 4]);
        assert_eq!(p.header.get_type(), MessageType::Confirmable);
        assert_eq!(p.header.code, MessageClass::Request(RequestType::Get));
        assert_eq!(
            p.get_first_option(CoapOption::ProxyUri).unwrap(),
            b"coaps://127.0.0.1:5684/2/0"
        );
        assert!(coap::uri_path(&p).unwrap().is_empty());

        let t = Template::prefixed_path("dev0", "/3/0/0").unwrap();
        t.write(7, 9, &mut out);
        let p = coap::decode(&out).unwrap();
        assert_eq!(coap::uri_path(&p).unwrap(), ["dev0", "3", "0", "0"]);
        assert_eq!(p.get_token(), &9u32.to_be_bytes());
        assert!(p.get_first_option(CoapOption::ProxyUri).is_none());
    }

    fn response(kind: MessageType, mid: u16, token: &[u8], code: coap::ResponseType) -> Vec<u8> {
        let mut p = Packet::new();
        p.header.set_type(kind);
        p.header.message_id = mid;
        p.header.code = MessageClass::Response(code);
        p.set_token(token.to_vec());
        p.payload = b"x".to_vec();
        coap::encode(&p).unwrap()
    }

    #[test]
    fn classify_tells_piggybacked_separate_empty_and_foreign_messages_apart() {
        use coap::ResponseType::{Content, NotFound};
        assert_eq!(
            classify(&response(
                MessageType::Acknowledgement,
                5,
                &[0, 0, 0, 9],
                Content
            )),
            Incoming::Response {
                confirmable: false,
                mid: 5,
                token: Some(9),
                code: 0x45
            }
        );
        assert_eq!(
            classify(&response(
                MessageType::Confirmable,
                6,
                &[0, 0, 1, 0],
                NotFound
            )),
            Incoming::Response {
                confirmable: true,
                mid: 6,
                token: Some(256),
                code: 0x84
            }
        );
        // Not our token length: a response, but nobody's request.
        assert!(matches!(
            classify(&response(MessageType::NonConfirmable, 1, &[1], Content)),
            Incoming::Response {
                token: None,
                confirmable: false,
                ..
            }
        ));
        assert_eq!(
            classify(&[0x60, 0, 0x12, 0x34]),
            Incoming::EmptyAck { mid: 0x1234 }
        );
        assert_eq!(classify(&[0x70, 0, 0, 3]), Incoming::Reset { mid: 3 });
        // A request, a wrong version, a truncated token, too short.
        assert_eq!(classify(&[0x44, 0x01, 0, 1, 1, 2, 3, 4]), Incoming::Other);
        assert_eq!(classify(&[0x84, 0x45, 0, 1, 1, 2, 3, 4]), Incoming::Other);
        assert_eq!(classify(&[0x64, 0x45, 0, 1, 1, 2]), Incoming::Other);
        assert_eq!(classify(&[0x60, 0]), Incoming::Other);
        // An empty CON is a ping, not an answer.
        assert_eq!(classify(&[0x40, 0, 0, 1]), Incoming::Other);
    }

    #[test]
    fn empty_ack_echoes_the_mid() {
        assert_eq!(
            classify(&empty_ack(0xabcd)),
            Incoming::EmptyAck { mid: 0xabcd }
        );
    }

    #[test]
    fn codes_round_trip_as_text() {
        assert_eq!(code_text(0x45), "2.05");
        assert_eq!(code_text(0x84), "4.04");
        assert_eq!(parse_code("2.05"), Some(0x45));
        assert_eq!(parse_code("5.04"), Some(0xa4));
        assert_eq!(parse_code("2.5x"), None);
        assert_eq!(parse_code("9.00"), None);
    }

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
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
    }

    #[test]
    fn tallies_merge_counts_and_keep_the_last_answer() {
        let t0 = Instant::now();
        let mut a = Tally {
            ok: 2,
            latencies_us: vec![1, 2],
            last_answer: Some(t0),
            ..Tally::default()
        };
        a.merge(Tally {
            ok: 1,
            wrong: 1,
            first_wrong: Some(0x84),
            latencies_us: vec![3],
            last_answer: Some(t0 + Duration::from_millis(5)),
            ..Tally::default()
        });
        assert_eq!((a.ok, a.wrong, a.first_wrong), (3, 1, Some(0x84)));
        assert_eq!(a.latencies_us, [1, 2, 3]);
        assert_eq!(a.last_answer, Some(t0 + Duration::from_millis(5)));
    }
}
