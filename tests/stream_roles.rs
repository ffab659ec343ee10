//! One serve loop for streams too, both roles, over real sockets: a client dials a
//! [`StreamListener`] (plain TCP, then TLS with mutual certificates) and serves on the same
//! connection with the same loop ([`serve_stream_linked`]); the listener's handler, asked a
//! question, uses the [`PeerLink`] of that accepted connection to ask the client back and
//! answers with what it heard — request, back-request and both responses on one
//! connection. Observe over a stream link is refused at once with a typed error.

#[path = "support/roles.rs"]
mod roles;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use privgw::coap::{ClientError, Packet, RequestType};
use privgw::config::{EndpointUri, Scheme};
use privgw::runtime::peer_link::LINK_CAPACITY;
use privgw::runtime::{
    Handler, LinkError, PeerLink, StreamListener, StreamSecurity, serve_stream_linked,
};
use privgw::transport::PeerInfo;
use privgw::transport::tcp::nosec_peer_info;
use privgw::transport::tls::{TlsClient, TlsCredentials, TlsServer};
use roles::{Gateway, ask_gateway, device_answer, four_reads_at_once, read_acme, req, stop_client};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Every wait in this file is bounded by this (the machine is loaded).
const WAIT: Duration = Duration::from_secs(20);

/// The dialing side's handler (the "device"): answers `/3/0/0` with its manufacturer.
struct Device;

impl Handler for Device {
    async fn handle(&self, _peer: &PeerInfo, request: Packet) -> Packet {
        device_answer(&request)
    }
}

async fn listen(
    scheme: Scheme,
    security: StreamSecurity,
    gateway: Arc<Gateway>,
) -> (SocketAddr, watch::Sender<bool>) {
    let uri = EndpointUri {
        scheme,
        addr: "127.0.0.1:0".parse().unwrap(),
    };
    let listener = StreamListener::bind(uri, security).await.unwrap();
    let addr = listener.uri().addr;
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(listener.run(gateway, shutdown));
    (addr, stop)
}

/// Serves a dialed connection with the device handler; returns its link and the task.
fn dial_side<S>(
    stream: S,
    info: PeerInfo,
    shutdown: watch::Receiver<bool>,
) -> (PeerLink, JoinHandle<()>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (link, inbox) = PeerLink::new(LINK_CAPACITY);
    let task = tokio::spawn(serve_stream_linked(
        stream,
        info,
        Arc::new(Device),
        shutdown,
        None,
        inbox,
    ));
    (link, task)
}

/// Asks `/ask` over `link` and checks the answer carries the device's own answer and our
/// identity as the gateway saw it (`identity` is a part of it).
async fn ask(link: &PeerLink, identity: &str) {
    let answer = ask_gateway(link).await;
    assert!(
        answer.starts_with("ACME via ") && answer.contains(identity),
        "{answer}"
    );
}

/// The whole scenario over one dialed connection: ask twice, use the gateway's kept link
/// directly (also four reads at once through its NSTART queue), see Observe refused both
/// ways, then stop the client and see both links close.
async fn scenario<S>(stream: S, info: PeerInfo, gateway: Arc<Gateway>, identity: &str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client_stop, client_shutdown) = watch::channel(false);
    let (link, task) = dial_side(stream, info, client_shutdown);
    ask(&link, identity).await;
    ask(&link, identity).await;

    let kept = gateway.links.lock().unwrap()[0].clone();
    assert!(!kept.is_closed());
    read_acme(&kept).await;
    four_reads_at_once(&kept).await;

    // Observe is not offered on streams: refused at once, in either direction.
    let observe = tokio::time::timeout(WAIT, kept.observe(req(RequestType::Get, "/3/0/0", b"")))
        .await
        .expect("refused at once");
    assert!(
        matches!(
            observe,
            Err(LinkError::Coap(ClientError::ObserveUnsupported))
        ),
        "{observe:?}"
    );

    stop_client(&client_stop, task, &link).await;
    // The gateway's side sees the Release and ends too.
    tokio::time::timeout(WAIT, async {
        while !kept.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the gateway's connection closed after our Release");
    assert_eq!(
        kept.request(req(RequestType::Get, "/3/0/0", b"")).await,
        Err(LinkError::Closed)
    );
}

/// Plain TCP: the gateway asks the dialing client back over the accepted connection.
#[tokio::test]
async fn tcp_gateway_asks_the_dialing_client_back_over_the_same_connection() {
    let gateway = Arc::new(Gateway::default());
    let (addr, _stop) = listen(Scheme::CoapTcp, StreamSecurity::NoSec, gateway.clone()).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let identity = format!("address:{}", tcp.local_addr().unwrap().ip());
    scenario(tcp, nosec_peer_info(addr), gateway, &identity).await;
}

fn creds(name: &str) -> TlsCredentials {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    TlsCredentials::from_pem_files(
        &dir.join(format!("{name}.pem")),
        &dir.join(format!("{name}.key")),
        &dir.join("ca.pem"),
    )
    .unwrap()
}

/// TLS with mutual certificates: the same, the gateway's answer naming the client's
/// certificate identity.
#[tokio::test]
async fn tls_gateway_asks_the_dialing_client_back_over_the_same_connection() {
    let gateway = Arc::new(Gateway::default());
    let server = Arc::new(TlsServer::new(creds("gateway"), WAIT).unwrap());
    let (addr, _stop) = listen(
        Scheme::CoapsTcp,
        StreamSecurity::Tls(server),
        gateway.clone(),
    )
    .await;
    let client = TlsClient::new(creds("devA"), WAIT).unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let (stream, info) = client.connect(addr, name).await.unwrap();
    scenario(stream, info, gateway.clone(), "devA").await;
}
