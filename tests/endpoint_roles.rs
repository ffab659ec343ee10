//! One CoAP endpoint per datagram session, both roles, over real sockets: a client dials a
//! listener (plain UDP, then DTLS-PSK) and serves on the same session with the same loop;
//! the listener's handler, asked a question, uses the [`PeerLink`] of that session to ask
//! the client back, and answers with what it heard — request, back-request and both
//! responses all on one socket pair and one DTLS session.

#[path = "support/relay.rs"]
#[allow(dead_code)]
mod relay;

#[path = "support/roles.rs"]
mod roles;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use privgw::coap::{
    self, MessageClass, MessageType, Packet, RequestType, ResponseType, TransportTuning,
};
use privgw::config::{EndpointUri, Scheme};
use privgw::runtime::{Handler, Listener, PeerLink, Security, spawn_session};
use privgw::transport::dtls::{DtlsClient, DtlsServer, PskClientConfig, PskServerConfig};
use privgw::transport::mux::DatagramMux;
use privgw::transport::{DatagramSession, PeerInfo, TransportError};
use roles::{Gateway, ask_gateway, device_answer, four_reads_at_once, read_acme, req, stop_client};
use tokio::sync::watch;

/// Every wait in this file is bounded by this (the machine is loaded).
const WAIT: Duration = Duration::from_secs(20);

/// One message seen on the client's session: sent by us (`true`) or received, its type and
/// whether it is an Empty message, a request or a response.
type Seen = (bool, MessageType, MessageClass);

/// A session that records every CoAP message through it.
struct Recorder<S> {
    inner: S,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl<S> Recorder<S> {
    fn note(&self, sent: bool, bytes: &[u8]) {
        if let Ok(p) = coap::decode(bytes) {
            let class = match p.header.code {
                MessageClass::Request(_) => MessageClass::Request(RequestType::Get),
                MessageClass::Response(_) => MessageClass::Response(ResponseType::Content),
                other => other,
            };
            self.seen
                .lock()
                .unwrap()
                .push((sent, p.header.get_type(), class));
        }
    }
}

impl<S: DatagramSession> DatagramSession for Recorder<S> {
    async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
        let bytes = self.inner.recv().await?;
        self.note(false, &bytes);
        Ok(bytes)
    }

    async fn send(&mut self, datagram: &[u8]) -> Result<(), TransportError> {
        self.note(true, datagram);
        self.inner.send(datagram).await
    }

    fn peer(&self) -> SocketAddr {
        self.inner.peer()
    }

    fn peer_info(&self) -> PeerInfo {
        self.inner.peer_info()
    }
}

const CON: MessageType = MessageType::Confirmable;
const ACK: MessageType = MessageType::Acknowledgement;
const EMPTY: MessageClass = MessageClass::Empty;
const RESPONSE: MessageClass = MessageClass::Response(ResponseType::Content);

/// The dialing side's handler (the "device"): answers `/3/0/0` with its manufacturer after
/// `delay`, counting executions.
#[derive(Default)]
struct Device {
    delay: Duration,
    executed: AtomicUsize,
}

impl Handler for Device {
    async fn handle(&self, _peer: &PeerInfo, request: Packet) -> Packet {
        self.executed.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        device_answer(&request)
    }
}

async fn listen(
    scheme: Scheme,
    security: Security,
    gateway: Arc<Gateway>,
    tuning: TransportTuning,
) -> (SocketAddr, watch::Sender<bool>) {
    let uri = EndpointUri {
        scheme,
        addr: "127.0.0.1:0".parse().unwrap(),
    };
    let listener = Listener::bind(uri, security).await.unwrap();
    let addr = listener.local_addr();
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(listener.run(gateway, tuning, shutdown));
    (addr, stop)
}

async fn client_mux() -> Arc<DatagramMux> {
    DatagramMux::bind("127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap()
        .0
}

/// Asks `/ask` over `link` and checks the answer carries the device's own answer.
async fn ask(link: &PeerLink, identity: &str) {
    assert_eq!(ask_gateway(link).await, format!("ACME via {identity}"));
}

/// Runs the whole scenario over `session`: ask, then use the gateway's kept link directly,
/// then end the client's session and see both links close. Returns what went over the
/// client's session during the first `/ask`.
async fn scenario<S: DatagramSession + 'static>(
    session: S,
    gateway: Arc<Gateway>,
    tuning: TransportTuning,
    device_delay: Duration,
    identity: &str,
) -> Vec<Seen> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let session = Recorder {
        inner: session,
        seen: seen.clone(),
    };
    let info = session.peer_info();
    let (client_stop, client_shutdown) = watch::channel(false);
    let device = Arc::new(Device {
        delay: device_delay,
        ..Device::default()
    });
    let (link, task) = spawn_session(session, info, device, tuning, client_shutdown);
    ask(&link, identity).await;
    let first_ask = seen.lock().unwrap().clone();
    // Twice: MIDs and tokens move on, the second exchange on the same session works too.
    ask(&link, identity).await;

    // The gateway keeps the device's link and reads it later, outside any request.
    let kept = gateway.links.lock().unwrap()[0].clone();
    assert!(!kept.is_closed());
    read_acme(&kept).await;
    let missing = kept
        .request(req(RequestType::Get, "/5/0", b""))
        .await
        .unwrap();
    assert_eq!(
        missing.header.code,
        MessageClass::Response(ResponseType::NotFound)
    );

    // Four reads at once: NSTART = 1 queues them in the gateway's endpoint, all complete.
    four_reads_at_once(&kept).await;

    // The client's serve loop stops: its link is closed.
    stop_client(&client_stop, task, &link).await;
    first_ask
}

/// The first `/ask` with a device quicker than the separate-response threshold: four
/// piggybacked messages, no empty ACKs.
fn assert_piggybacked(seen: &[Seen]) {
    let con_request = (CON, MessageClass::Request(RequestType::Get));
    assert_eq!(
        seen,
        [
            (true, con_request.0, con_request.1),
            (false, con_request.0, con_request.1),
            (true, ACK, RESPONSE),
            (false, ACK, RESPONSE),
        ],
        "our /ask, the gateway's back-request, our answer, the gateway's answer"
    );
}

/// The first `/ask` with a device slower than the threshold: each request is ACKed empty
/// and answered with a CON response, which is ACKed.
fn assert_separate(seen: &[Seen]) {
    let count = |m: Seen| seen.iter().filter(|s| **s == m).count();
    assert_eq!(
        count((true, ACK, EMPTY)),
        2,
        "we ACK the back-request and the gateway's CON answer: {seen:?}"
    );
    assert_eq!(
        count((false, ACK, EMPTY)),
        2,
        "the gateway ACKs /ask and our CON answer: {seen:?}"
    );
    assert_eq!(
        count((true, CON, RESPONSE)),
        1,
        "our separate answer: {seen:?}"
    );
    assert_eq!(
        count((false, CON, RESPONSE)),
        1,
        "the gateway's separate answer: {seen:?}"
    );
    assert_eq!(
        count((true, ACK, RESPONSE)) + count((false, ACK, RESPONSE)),
        0
    );
}

/// ACK_TIMEOUT 1 s: separate responses after 500 ms, well apart from loopback delays.
fn fast() -> TransportTuning {
    TransportTuning::unreliable().with_ack_timeout(Duration::from_secs(1))
}

/// A device slower than the separate-response threshold of [`fast`].
const SLOW_DEVICE: Duration = Duration::from_millis(1200);

/// Plain UDP, default tuning (separate responses only after 1 s): piggybacked answers both
/// ways on one socket pair.
#[tokio::test]
async fn udp_gateway_asks_the_dialing_client_back_over_the_same_session() {
    let gateway = Arc::new(Gateway::default());
    let tuning = TransportTuning::unreliable();
    let (addr, _stop) = listen(
        Scheme::Coap,
        Security::NoSec,
        gateway.clone(),
        tuning.clone(),
    )
    .await;
    let mux = client_mux().await;
    let session = mux.connect(addr);
    let identity = format!("address:{}", mux.local_addr().ip());
    let seen = scenario(session, gateway, tuning, Duration::ZERO, &identity).await;
    assert_piggybacked(&seen);
}

/// Plain UDP with a device slower than the separate-response threshold (ACK_TIMEOUT / 2 =
/// 500 ms): the device's answer to the back-request and the gateway's answer to `/ask` both
/// go out as empty ACK + CON separate response.
#[tokio::test]
async fn udp_separate_responses_both_ways_on_one_session() {
    let gateway = Arc::new(Gateway::default());
    let (addr, _stop) = listen(Scheme::Coap, Security::NoSec, gateway.clone(), fast()).await;
    let mux = client_mux().await;
    let session = mux.connect(addr);
    let identity = format!("address:{}", mux.local_addr().ip());
    let seen = scenario(session, gateway, fast(), SLOW_DEVICE, &identity).await;
    assert_separate(&seen);
}

/// DTLS-PSK: the handshake once, then every message of both roles in that one DTLS session.
#[tokio::test]
async fn dtls_gateway_asks_the_dialing_client_back_over_the_same_session() {
    let keys = Arc::new(|id: &[u8]| (id == b"device-1").then(|| b"secret-1".to_vec()));
    let server = Arc::new(DtlsServer::new(PskServerConfig::new(keys)).unwrap());
    let gateway = Arc::new(Gateway::default());
    let (addr, _stop) = listen(
        Scheme::Coaps,
        Security::Dtls(server),
        gateway.clone(),
        fast(),
    )
    .await;
    let mux = client_mux().await;
    let client = DtlsClient::new(PskClientConfig::new("device-1", "secret-1")).unwrap();
    let session = tokio::time::timeout(WAIT, client.connect(mux.connect(addr)))
        .await
        .expect("handshake in time")
        .expect("handshake succeeds");
    // The gateway names the peer by its PSK identity.
    let seen = scenario(session, gateway, fast(), SLOW_DEVICE, "psk:device-1").await;
    assert_separate(&seen);
}

/// Plain UDP through a lossy relay (10 % loss each way, seeded): every `/ask` gets the right
/// answer, and despite retransmissions each `/ask` and each back-request ran exactly once
/// (the endpoints' dedup on both sides). Lost back-requests delay the gateway past the
/// separate-response threshold, so separate responses get lost and retransmitted too.
#[tokio::test]
async fn udp_both_roles_survive_a_lossy_link_exactly_once() {
    let tuning = TransportTuning::unreliable().with_ack_timeout(Duration::from_millis(200));
    let gateway = Arc::new(Gateway::default());
    let (addr, _stop) = listen(
        Scheme::Coap,
        Security::NoSec,
        gateway.clone(),
        tuning.clone(),
    )
    .await;
    let link =
        relay::LinkConfig::symmetric(relay::Direction::lossy(0.1, Duration::from_millis(2)), 7);
    let relay = relay::Relay::start(addr, link).await.unwrap();
    let mux = client_mux().await;
    let session = mux.connect(relay.addr());
    let info = session.peer_info();
    let (_client_stop, client_shutdown) = watch::channel(false);
    let device = Arc::new(Device::default());
    let (link, _task) = spawn_session(session, info, device.clone(), tuning, client_shutdown);
    const ASKS: usize = 8;
    for _ in 0..ASKS {
        let answer = tokio::time::timeout(WAIT, link.request(req(RequestType::Post, "/ask", b"?")))
            .await
            .expect("answered in time")
            .expect("a response despite the loss");
        assert!(
            answer.payload.starts_with(b"ACME via "),
            "{:?}",
            answer.payload
        );
    }
    assert_eq!(
        gateway.links.lock().unwrap().len(),
        ASKS,
        "each /ask ran once"
    );
    assert_eq!(
        device.executed.load(Ordering::SeqCst),
        ASKS,
        "each back-request ran once"
    );
    let lost = relay.stats(relay::Dir::ToDevice).lost + relay.stats(relay::Dir::ToGateway).lost;
    assert!(lost > 0, "the link lost something");
}
