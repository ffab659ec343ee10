//! The closed-loop CoAP load engine every `privgw bench` shape drives: N client endpoints,
//! each with W CON GETs in flight (a request leaves when one is answered), bounded by a
//! request count and a deadline, against any `coap://` target (one UDP socket per endpoint,
//! connected) or over one DTLS-PSK session per endpoint (the project's own DTLS client).
//!
//! * A request is a [`Template`] (one CON GET encoded once) with its MID and 4-byte token
//!   patched in; answers are matched by token, so piggybacked and separate responses both
//!   count (an empty ACK extends the wait to [`SEPARATE_PATIENCE`], a CON response is ACKed).
//! * Unacknowledged CONs are retransmitted after [`ACK_TIMEOUT`] doubling, [`MAX_RETRANSMIT`]
//!   times (RFC 7252, no random factor); then the request counts as lost.
//! * Endpoints keep their MID/token counters across runs, so a server's per-endpoint state
//!   stays warm between the warm-up and the measured runs.
//!
//! API: [`Endpoint::udp`] / [`Endpoint::dtls_psk`] make endpoints, a [`Load`] holds them with
//! the template and the expected response code; [`Load::warm`] checks every endpoint gets
//! that code, [`Load::measure`] runs once and gives a [`RunResult`] (rate, latency
//! percentiles, CPU per request of a server process).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use crate::cli::CliResult;
use crate::cli::bench::process::ProcStats;
use crate::cli::results::percentile_sorted;
use crate::coap::{self, CoapOption, MessageClass, MessageType, Packet, RequestType};
use crate::transport::DatagramSession;
use crate::transport::dtls::{DtlsClient, DtlsSession, PskClientConfig};
use crate::transport::mux::DatagramMux;

/// Requests each endpoint completes in a warm-up (not timed).
pub(crate) const WARM_REQUESTS: i64 = 3;
/// RFC 7252 ACK_TIMEOUT (no random factor: a bench wants repeatable timing) and
/// MAX_RETRANSMIT; a request unanswered after that counts as lost.
pub(crate) const ACK_TIMEOUT: Duration = Duration::from_secs(2);
pub(crate) const MAX_RETRANSMIT: u8 = 4;
/// How long a request whose CON was acknowledged empty may wait for its separate response.
pub(crate) const SEPARATE_PATIENCE: Duration = Duration::from_secs(10);
/// After a run's deadline, how long outstanding requests are still waited for.
const DRAIN: Duration = Duration::from_secs(3);
const TOKEN_LEN: usize = 4;

/// `N x W`: client endpoints × requests in flight per endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub clients: usize,
    pub window: usize,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.clients, self.window)
    }
}

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Shape, String> {
        let (c, w) = s
            .trim()
            .split_once(['x', 'X', '*'])
            .ok_or_else(|| format!("{s:?} is not a shape NxW (e.g. 16x1)"))?;
        let n = |v: &str, what: &str, max: usize| -> Result<usize, String> {
            match v.trim().parse::<usize>() {
                Ok(k) if (1..=max).contains(&k) => Ok(k),
                _ => Err(format!("{s:?}: {what} must be 1 to {max}")),
            }
        };
        Ok(Shape {
            clients: n(c, "clients", 250)?,
            window: n(w, "window", 64)?,
        })
    }
}

/// `1x1,16x1,64x4` → shapes.
pub fn parse_shapes(list: &str) -> Result<Vec<Shape>, String> {
    let shapes: Vec<Shape> = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    if shapes.is_empty() {
        return Err("no shapes given".into());
    }
    Ok(shapes)
}

/// One request form on the wire: a CON GET with a 4-byte token, encoded once; each request
/// is the template with its MID and token patched in.
#[derive(Debug, Clone)]
pub struct Template {
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

    /// `GET <path>` (Uri-Path segments; a `?query` becomes Uri-Query).
    pub fn get(path: &str) -> CliResult<Template> {
        Template::encode(&[], Some(path))
    }

    /// A forward proxy's form: no Uri-Path, `Proxy-Uri: <uri>` (an absolute URI).
    pub fn proxy_uri(uri: &str) -> CliResult<Template> {
        Template::encode(&[(CoapOption::ProxyUri, uri.as_bytes().to_vec())], None)
    }

    /// privgw's proxy form: `Uri-Path` `<prefix>` then the device path's segments.
    pub fn prefixed_path(prefix: &str, path: &str) -> CliResult<Template> {
        Template::get(&format!("/{prefix}{path}"))
    }

    /// The request with `mid` and `token` (bytes 2–3 and 4–7 of the header).
    pub fn write(&self, mid: u16, token: u32, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.bytes);
        out[2..4].copy_from_slice(&mid.to_be_bytes());
        out[4..4 + TOKEN_LEN].copy_from_slice(&token.to_be_bytes());
    }
}

/// What a datagram from the server is, as far as the load loop cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// An empty ACK: the server will answer in a separate response.
    EmptyAck { mid: u16 },
    /// A Reset: the server refused the message.
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
pub fn code_text(code: u8) -> String {
    format!("{}.{:02}", code >> 5, code & 0x1f)
}

/// `"2.05"` → `0x45`.
pub fn parse_code(text: &str) -> Option<u8> {
    let (class, detail) = text.split_once('.')?;
    let class: u8 = class.parse().ok()?;
    let detail: u8 = detail.parse().ok()?;
    (class < 8 && detail < 32).then_some((class << 5) | detail)
}

/// The empty ACK of a CON with `mid`.
fn empty_ack(mid: u16) -> [u8; 4] {
    let [m0, m1] = mid.to_be_bytes();
    [0x60, 0, m0, m1]
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

/// What the endpoints saw in one run.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    /// Answers with another code than expected, and the first such code.
    pub wrong: u64,
    pub first_wrong: Option<u8>,
    /// The payload of that first wrong answer (a server's diagnostic).
    pub wrong_body: Option<String>,
    pub lost: u64,
    pub retransmissions: u64,
    pub resets: u64,
    pub separate: u64,
    pub latencies_us: Vec<u32>,
    pub last_answer: Option<Instant>,
}

impl Tally {
    pub fn merge(&mut self, other: Tally) {
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

    /// Latency percentiles `ps` (0..=1) in milliseconds.
    pub fn latency_ms(&self, ps: &[f64]) -> Vec<f64> {
        let mut lat: Vec<f64> = self.latencies_us.iter().map(|&u| f64::from(u)).collect();
        lat.sort_by(f64::total_cmp);
        ps.iter()
            .map(|&p| percentile_sorted(&lat, p) / 1e3)
            .collect()
    }

    /// What went wrong, if anything (`""` when every request got the expected code).
    pub fn troubles(&self) -> String {
        let mut s = String::new();
        if self.wrong + self.lost + self.resets + self.retransmissions > 0 {
            s = format!(
                "wrong code {}{}, lost {}, resets {}, retransmissions {}",
                self.wrong,
                self.first_wrong
                    .map(|c| format!(" (first {})", code_text(c)))
                    .unwrap_or_default(),
                self.lost,
                self.resets,
                self.retransmissions
            );
        }
        s
    }
}

/// How an endpoint reaches its server: a connected UDP socket, or a DTLS session.
pub enum Link {
    Udp(UdpSocket),
    Dtls(Box<DtlsSession>),
}

impl Link {
    async fn send(&mut self, d: &[u8]) -> std::io::Result<()> {
        match self {
            Link::Udp(s) => s.send(d).await.map(|_| ()),
            Link::Dtls(s) => s
                .send(d)
                .await
                .map_err(|e| std::io::Error::other(e.to_string())),
        }
    }

    async fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Link::Udp(s) => s.recv(buf).await,
            Link::Dtls(s) => {
                let d = s
                    .recv()
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
        }
    }
}

/// One DTLS-PSK session to `server` from a fresh socket, with the project's DTLS client
/// (`client` is shared: one OpenSSL context for every handshake).
pub async fn psk_session(client: &DtlsClient, server: SocketAddr) -> CliResult<DtlsSession> {
    let local: SocketAddr = if server.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let (mux, _) = DatagramMux::bind(local, false).await?;
    Ok(client.connect(mux.connect(server)).await?)
}

/// The project's DTLS client with a PSK (handshakes bounded by `timeout`).
pub fn psk_client(identity: &str, key: &str, timeout: Duration) -> CliResult<DtlsClient> {
    let mut cfg = PskClientConfig::new(identity.as_bytes(), key.as_bytes());
    cfg.handshake_timeout = timeout;
    Ok(DtlsClient::new(cfg)?)
}

/// One client endpoint: its link and its MID/token counters, kept across runs.
pub struct Endpoint {
    link: Link,
    next_mid: u16,
    next_token: u32,
}

impl Endpoint {
    fn new(link: Link, seed: u16) -> Endpoint {
        Endpoint {
            link,
            next_mid: seed.wrapping_mul(7919),
            next_token: u32::from(seed) << 16,
        }
    }

    /// A UDP socket on 127.0.0.1 connected to `server`.
    pub async fn udp(server: SocketAddr, seed: u16) -> CliResult<Endpoint> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect(server).await?;
        Ok(Endpoint::new(Link::Udp(socket), seed))
    }

    /// One DTLS-PSK session to `server` (handshake done here).
    pub async fn dtls_psk(
        client: &DtlsClient,
        server: SocketAddr,
        seed: u16,
    ) -> CliResult<Endpoint> {
        let session = psk_session(client, server).await?;
        Ok(Endpoint::new(Link::Dtls(Box::new(session)), seed))
    }

    /// Ends a DTLS session politely (close_notify); nothing for UDP.
    pub async fn close(self) {
        if let Link::Dtls(mut s) = self.link {
            let _ = s.close().await;
        }
    }

    /// Closed loop: keeps `window` requests in flight while `budget` lasts and `until` has
    /// not passed, then waits (at most [`DRAIN`]) for what is outstanding.
    pub async fn run(
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
                self.link.send(&out).await?;
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
            match tokio::time::timeout_at(next.into(), self.link.recv(&mut buf)).await {
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
                    self.link.send(&empty_ack(mid)).await?;
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
            self.link.send(out).await?;
            i += 1;
        }
        Ok(())
    }
}

/// What one run did.
#[derive(Debug)]
pub struct RunResult {
    pub rate: f64,
    pub tally: Tally,
    pub elapsed: Duration,
    /// CPU (user + system) of the measured server process per answered request.
    pub cpu_us_per_request: f64,
}

impl RunResult {
    /// `(p50, p99)` latency, ms.
    pub fn p50_p99_ms(&self) -> (f64, f64) {
        let v = self.tally.latency_ms(&[0.5, 0.99]);
        (v[0], v[1])
    }
}

/// The endpoints of one side of a comparison and the request form its server understands.
pub struct Load {
    pub name: String,
    pub template: Arc<Template>,
    /// The code a correct answer carries (0x45 = 2.05).
    pub expect: u8,
    pub endpoints: Vec<Endpoint>,
}

impl Load {
    pub fn new(name: &str, template: Template, expect: u8) -> Load {
        Load {
            name: name.to_owned(),
            template: Arc::new(template),
            expect,
            endpoints: Vec::new(),
        }
    }

    /// Runs every endpoint at once: with `total` one shared budget, else `per_endpoint`
    /// requests each (warm-up). The elapsed time ends at the last answer.
    pub async fn drive(
        &mut self,
        window: usize,
        total: Option<i64>,
        per_endpoint: i64,
        until: Instant,
    ) -> CliResult<(Tally, Duration)> {
        let shared = Arc::new(AtomicI64::new(total.unwrap_or(0)));
        let mut set = JoinSet::new();
        let t0 = Instant::now();
        let expect = self.expect;
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
            return Err(format!("{}: a load endpoint failed: {e}", self.name).into());
        }
        let elapsed = all
            .last_answer
            .map_or_else(|| t0.elapsed(), |t| t.duration_since(t0));
        Ok((all, elapsed))
    }

    /// Every endpoint completes [`WARM_REQUESTS`] with the expected code, or the failure says
    /// what the server answered instead.
    pub async fn warm(&mut self, within: Duration) -> CliResult<()> {
        let n = self.endpoints.len() as u64;
        let want = n * WARM_REQUESTS as u64;
        let (tally, took) = self
            .drive(1, None, WARM_REQUESTS, Instant::now() + within)
            .await?;
        if let Some(code) = tally.first_wrong {
            return Err(format!(
                "{}: warm-up answered {} {:?} where {} was expected ({} of {want} requests)",
                self.name,
                code_text(code),
                tally.wrong_body.as_deref().unwrap_or(""),
                code_text(self.expect),
                tally.wrong,
            )
            .into());
        }
        if tally.ok < want {
            return Err(format!(
                "{}: warm-up got {} of {want} answers in {took:.1?} ({} lost, {} resets)",
                self.name, tally.ok, tally.lost, tally.resets
            )
            .into());
        }
        Ok(())
    }

    /// Warms, retrying a few times (a server just started may not listen yet).
    pub async fn warm_retrying(&mut self, tries: usize, each: Duration) -> CliResult<()> {
        let mut last: CliResult<()> = Err("not tried".into());
        for _ in 0..tries.max(1) {
            last = self.warm(each).await;
            if last.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        last
    }

    /// One measured run: `requests` in total or `seconds`, `window` in flight per endpoint;
    /// `pid` is the server whose CPU is charged per answered request.
    pub async fn measure(
        &mut self,
        window: usize,
        requests: u64,
        seconds: f64,
        pid: u32,
        hz: f64,
    ) -> CliResult<RunResult> {
        let cpu_before = ProcStats::of(pid).cpu_ticks;
        let until = Instant::now() + Duration::from_secs_f64(seconds);
        let (tally, elapsed) = self
            .drive(
                window,
                Some(i64::try_from(requests).unwrap_or(i64::MAX)),
                0,
                until,
            )
            .await?;
        let cpu = ProcStats::of(pid).cpu_ticks.saturating_sub(cpu_before) as f64 / hz;
        Ok(RunResult {
            rate: tally.ok as f64 / elapsed.as_secs_f64().max(1e-9),
            cpu_us_per_request: 1e6 * cpu / (tally.ok.max(1) as f64),
            elapsed,
            tally,
        })
    }

    /// Closes every endpoint (DTLS: close_notify).
    pub async fn close(&mut self) {
        for ep in std::mem::take(&mut self.endpoints) {
            ep.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_reject_nonsense() {
        assert_eq!(
            parse_shapes("1x1,16x1, 64x4").unwrap(),
            [
                Shape {
                    clients: 1,
                    window: 1
                },
                Shape {
                    clients: 16,
                    window: 1
                },
                Shape {
                    clients: 64,
                    window: 4
                }
            ]
        );
        assert_eq!("2X3".parse::<Shape>().unwrap().to_string(), "2x3");
        assert!(parse_shapes("").is_err());
        assert!("16".parse::<Shape>().is_err());
        assert!("0x1".parse::<Shape>().is_err());
        assert!("1x65".parse::<Shape>().is_err());
        assert!("251x1".parse::<Shape>().is_err());
        assert!("ax1".parse::<Shape>().is_err());
    }

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

        let t = Template::get("/.well-known/core").unwrap();
        t.write(1, 2, &mut out);
        let p = coap::decode(&out).unwrap();
        assert_eq!(coap::uri_path(&p).unwrap(), [".well-known", "core"]);
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
    fn tallies_merge_counts_and_give_latency_percentiles() {
        let t0 = Instant::now();
        let mut a = Tally {
            ok: 2,
            latencies_us: vec![1000, 2000],
            last_answer: Some(t0),
            ..Tally::default()
        };
        a.merge(Tally {
            ok: 1,
            wrong: 1,
            first_wrong: Some(0x84),
            latencies_us: vec![3000],
            last_answer: Some(t0 + Duration::from_millis(5)),
            ..Tally::default()
        });
        assert_eq!((a.ok, a.wrong, a.first_wrong), (3, 1, Some(0x84)));
        assert_eq!(a.latency_ms(&[0.0, 0.5, 1.0]), [1.0, 2.0, 3.0]);
        assert_eq!(a.last_answer, Some(t0 + Duration::from_millis(5)));
        assert!(a.troubles().contains("first 4.04"));
        assert_eq!(Tally::default().troubles(), "");
    }

    /// The engine end to end against a tiny in-test UDP server answering 2.05 piggybacked.
    #[tokio::test]
    async fn a_closed_loop_run_counts_every_answer_within_the_budget() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = server.recv_from(&mut buf).await {
                let mut d = buf[..n].to_vec();
                let tkl = usize::from(d[0] & 0x0f);
                d.truncate(4 + tkl);
                d[0] = 0x60 | (d[0] & 0x0f);
                d[1] = 0x45;
                let _ = server.send_to(&d, from).await;
            }
        });
        let mut load = Load::new("test", Template::get("/x").unwrap(), 0x45);
        for i in 0..3 {
            load.endpoints.push(Endpoint::udp(addr, i).await.unwrap());
        }
        load.warm(Duration::from_secs(5)).await.unwrap();
        let r = load
            .measure(2, 500, 10.0, std::process::id(), 100.0)
            .await
            .unwrap();
        assert_eq!(r.tally.ok, 500);
        assert_eq!(r.tally.latencies_us.len(), 500);
        assert!(r.rate > 0.0);
        assert_eq!(r.tally.troubles(), "");
    }
}
