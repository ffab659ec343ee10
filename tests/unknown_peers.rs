//! Issue 6 items 3 and 4: peers without state cost nothing until they prove their address.
//!
//! DTLS: a cookieless ClientHello gets a HelloVerifyRequest and no state; junk and forged
//! cookies are dropped; a real client still connects; pending handshakes are capped in total
//! and per source IP. NoSec: an unknown source gets 4.01 and leaves no session; sessions per
//! IP are capped. The caps configured in `[limits]` reach the gateway's own listeners.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coap_lite::{MessageClass, MessageType, Packet, RequestType, ResponseType};
use privgw::coap::{self, TransportTuning};
use privgw::config::{Config, EndpointUri, Scheme};
use privgw::gateway::Gateway;
use privgw::runtime::{Handler, Listener, Security};
use privgw::transport::dtls::{DtlsClient, DtlsServer, PskClientConfig, PskServerConfig};
use privgw::transport::mux::{DatagramMux, Gate, MuxConfig, Pipe, Verdict};
use privgw::transport::{DatagramSession, PeerInfo};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

/// Every wait in this file is bounded by this (the machine is loaded).
const WAIT: Duration = Duration::from_secs(10);

struct Hello;

impl Handler for Hello {
    async fn handle(&self, _peer: &PeerInfo, request: Packet) -> Packet {
        let mut p = coap::response_to(&request, ResponseType::Content);
        p.payload = b"hi".to_vec();
        p
    }
}

fn dtls_server() -> Arc<DtlsServer> {
    let keys = Arc::new(|id: &[u8]| (id == b"client").then(|| b"secret".to_vec()));
    Arc::new(DtlsServer::new(PskServerConfig::new(keys)).unwrap())
}

/// Binds and runs a listener on loopback; returns its address, mux and the stop switch.
async fn listener(
    scheme: Scheme,
    security: Security,
) -> (SocketAddr, Arc<DatagramMux>, watch::Sender<bool>) {
    let uri = EndpointUri {
        scheme,
        addr: "127.0.0.1:0".parse().unwrap(),
    };
    let listener = Listener::bind(uri, security).await.unwrap();
    let (addr, mux) = (listener.local_addr(), listener.mux());
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(listener.run(Arc::new(Hello), TransportTuning::unreliable(), shutdown));
    (addr, mux, stop)
}

/// A DTLS 1.2 ClientHello record: record sequence `seq`, `random`, `cookie`.
fn client_hello(seq: u8, message_seq: u16, random: [u8; 32], cookie: &[u8]) -> Vec<u8> {
    let mut body = vec![0xFE, 0xFD];
    body.extend_from_slice(&random);
    body.push(0);
    body.push(u8::try_from(cookie.len()).unwrap());
    body.extend_from_slice(cookie);
    body.extend_from_slice(&[0, 2, 0xC0, 0xA8, 1, 0]);
    let len = u32::try_from(body.len()).unwrap().to_be_bytes();
    let mut hs = vec![1, len[1], len[2], len[3]];
    hs.extend_from_slice(&message_seq.to_be_bytes());
    hs.extend_from_slice(&[0, 0, 0, len[1], len[2], len[3]]);
    hs.extend_from_slice(&body);
    let mut record = vec![22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, seq];
    record.extend_from_slice(&u16::try_from(hs.len()).unwrap().to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

async fn recv_within(socket: &UdpSocket, within: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(within, socket.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

/// The cookie of a HelloVerifyRequest, after checking its layout against the ClientHello's
/// record sequence number.
fn hvr_cookie(hvr: &[u8], seq: u8) -> Vec<u8> {
    assert_eq!(
        &hvr[..5],
        &[22, 0xFE, 0xFF, 0, 0],
        "handshake record, DTLS 1.0, epoch 0"
    );
    assert_eq!(hvr[10], seq, "record sequence echoed");
    assert_eq!(hvr[13], 3, "hello_verify_request");
    assert_eq!(&hvr[17..19], &[0, 0], "message_seq 0");
    let len = usize::from(hvr[27]);
    hvr[28..28 + len].to_vec()
}

/// One full cookie exchange from `socket`; leaves a pending handshake on the server.
async fn cookie_exchange(socket: &UdpSocket, random: [u8; 32]) -> Vec<u8> {
    socket.send(&client_hello(0, 0, random, b"")).await.unwrap();
    let hvr = recv_within(socket, WAIT)
        .await
        .expect("a HelloVerifyRequest");
    let cookie = hvr_cookie(&hvr, 0);
    socket
        .send(&client_hello(1, 1, random, &cookie))
        .await
        .unwrap();
    cookie
}

async fn connected_socket(local: &str, to: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind(local).await.unwrap();
    socket.connect(to).await.unwrap();
    socket
}

/// Polls `cond` every 20 ms until it holds or `WAIT` passes.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < until {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

#[tokio::test]
async fn cookieless_client_hellos_get_a_hello_verify_request_and_leave_no_state() {
    let (addr, mux, _stop) = listener(Scheme::Coaps, Security::Dtls(dtls_server())).await;
    for port in 0..5u8 {
        let socket = connected_socket("127.0.0.1:0", addr).await;
        for i in 0..20u8 {
            socket
                .send(&client_hello(i, 0, [port ^ i; 32], b""))
                .await
                .unwrap();
            let hvr = recv_within(&socket, WAIT)
                .await
                .expect("a HelloVerifyRequest");
            assert_eq!(hvr_cookie(&hvr, i).len(), 32);
        }
    }
    assert_eq!(mux.sessions(), 0, "no pipe before a valid cookie");
    assert_eq!(mux.pending(), 0);
    assert_eq!(mux.replied(), 100);
}

#[tokio::test]
async fn junk_and_forged_cookies_from_unknown_peers_are_dropped_without_state() {
    let (addr, mux, _stop) = listener(Scheme::Coaps, Security::Dtls(dtls_server())).await;
    let socket = connected_socket("127.0.0.1:0", addr).await;
    let mut application = vec![23, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 1, 0, 4];
    application.extend_from_slice(&[1, 2, 3, 4]);
    let junk: [&[u8]; 4] = [&[0], &[22; 13], &application, &[0x44, 1, 0, 1]];
    for datagram in junk {
        socket.send(datagram).await.unwrap();
    }
    socket
        .send(&client_hello(1, 1, [9; 32], &[0xAA; 32]))
        .await
        .unwrap();
    assert!(
        eventually(|| mux.refused() == 5).await,
        "refused {}",
        mux.refused()
    );
    assert_eq!(
        recv_within(&socket, Duration::from_millis(300)).await,
        None,
        "no answer"
    );
    assert_eq!(mux.sessions(), 0);
    assert_eq!(mux.replied(), 0);
}

#[tokio::test]
async fn a_real_dtls_client_still_connects_and_is_served() {
    let (addr, mux, _stop) = listener(Scheme::Coaps, Security::Dtls(dtls_server())).await;
    let (client_mux, _) = DatagramMux::bind("127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    let client = DtlsClient::new(PskClientConfig::new("client", "secret")).unwrap();
    let mut session = tokio::time::timeout(WAIT, client.connect(client_mux.connect(addr)))
        .await
        .expect("handshake in time")
        .expect("handshake succeeds through the stateless cookie exchange");
    let mut get = Packet::new();
    get.header.set_type(MessageType::Confirmable);
    get.header.code = MessageClass::Request(RequestType::Get);
    get.header.message_id = 7;
    get.set_token(b"tk".to_vec());
    session.send(&coap::encode(&get).unwrap()).await.unwrap();
    let answer = tokio::time::timeout(WAIT, session.recv())
        .await
        .unwrap()
        .unwrap();
    let answer = coap::decode(&answer).unwrap();
    assert_eq!(answer.payload, b"hi");
    assert_eq!(answer.get_token(), b"tk");
    assert_eq!(mux.sessions(), 1);
    assert!(
        eventually(|| mux.pending() == 0).await,
        "established, not pending"
    );
    assert_eq!(mux.replied(), 1, "one HelloVerifyRequest, sent statelessly");

    // RFC 6347 §4.2.8 behind the gate: a cookieless ClientHello from the established
    // address is answered statelessly too, and opens no candidate session.
    let mut raw = client_mux.connect(addr);
    raw.send(&client_hello(5, 0, [3; 32], b"")).await.unwrap();
    let hvr = tokio::time::timeout(WAIT, raw.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hvr_cookie(&hvr, 5).len(), 32);
    assert_eq!((mux.sessions(), mux.pending()), (1, 0));
}

/// A handshake mux with the DTLS gate and small caps; the accept queue is held, not served,
/// so admitted pipes stay pending.
async fn capped_mux(per_ip: usize, total: usize) -> (Arc<DatagramMux>, mpsc::Receiver<Pipe>) {
    capped_mux_stalling_after(per_ip, total, Duration::from_secs(1)).await
}

async fn capped_mux_stalling_after(
    per_ip: usize,
    total: usize,
    stalled: Duration,
) -> (Arc<DatagramMux>, mpsc::Receiver<Pipe>) {
    let config = MuxConfig {
        accept: true,
        gate: Some(dtls_server().gate()),
        handshakes: true,
        max_pending: total,
        max_pending_per_ip: per_ip,
        stalled_handshake_after: stalled,
        ..MuxConfig::default()
    };
    let (mux, accepted) = DatagramMux::bind_with("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    (mux, accepted.unwrap())
}

#[tokio::test]
async fn pending_handshakes_are_capped_per_source_ip_and_in_total() {
    let (mux, mut accepted) = capped_mux(3, 5).await;
    let addr = mux.local_addr();
    let mut sockets = Vec::new();
    for i in 0..6u8 {
        let socket = connected_socket("127.0.0.1:0", addr).await;
        cookie_exchange(&socket, [i; 32]).await;
        sockets.push(socket);
    }
    assert!(
        eventually(|| mux.refused() == 3).await,
        "refused {}",
        mux.refused()
    );
    assert_eq!(mux.sessions(), 3, "per-IP handshake cap");
    for (i, ip) in ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        .into_iter()
        .enumerate()
    {
        let socket = connected_socket(&format!("{ip}:0"), addr).await;
        cookie_exchange(&socket, [100 + u8::try_from(i).unwrap(); 32]).await;
        sockets.push(socket);
    }
    assert!(
        eventually(|| mux.refused() == 4).await,
        "refused {}",
        mux.refused()
    );
    assert_eq!(mux.sessions(), 5, "total handshake cap");
    assert_eq!(mux.pending(), 5);
    // Abandoned handshakes free their slots.
    let mut pipes = Vec::new();
    while let Ok(pipe) = accepted.try_recv() {
        pipes.push(pipe);
    }
    assert_eq!(pipes.len(), 5);
    drop(pipes);
    assert_eq!((mux.sessions(), mux.pending()), (0, 0));
    let socket = connected_socket("127.0.0.1:0", addr).await;
    cookie_exchange(&socket, [42; 32]).await;
    assert!(eventually(|| mux.sessions() == 1).await);
}

/// Finding C of the review: sources that pass the cookie and then stall their handshakes
/// fill the total cap; once the oldest has stalled for `stalled_handshake_after`, a new
/// client replaces it (its queue ends) instead of being refused, while younger ones are not
/// touched.
#[tokio::test]
async fn a_stalled_handshake_makes_room_for_a_new_client_once_old_enough() {
    let stalled = Duration::from_millis(300);
    let (mux, mut accepted) = capped_mux_stalling_after(8, 3, stalled).await;
    let addr = mux.local_addr();
    let mut sockets = Vec::new();
    for (i, ip) in ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        .into_iter()
        .enumerate()
    {
        let socket = connected_socket(&format!("{ip}:0"), addr).await;
        cookie_exchange(&socket, [10 + u8::try_from(i).unwrap(); 32]).await;
        sockets.push(socket);
    }
    assert!(eventually(|| mux.pending() == 3).await);
    let mut stalling = Vec::new();
    while stalling.len() < 3 {
        stalling.push(
            tokio::time::timeout(WAIT, accepted.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // Too young to be called stalled: refused.
    let early = connected_socket("127.0.0.5:0", addr).await;
    cookie_exchange(&early, [20; 32]).await;
    assert!(eventually(|| mux.refused() == 1).await);
    assert_eq!((mux.sessions(), mux.evicted()), (3, 0));

    tokio::time::sleep(stalled + Duration::from_millis(100)).await;
    let late = connected_socket("127.0.0.6:0", addr).await;
    cookie_exchange(&late, [21; 32]).await;
    assert!(
        eventually(|| mux.evicted() == 1).await,
        "the oldest evicted"
    );
    assert_eq!((mux.sessions(), mux.pending(), mux.refused()), (3, 3, 1));
    let newcomer = tokio::time::timeout(WAIT, accepted.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(newcomer.peer().ip().to_string(), "127.0.0.6");
    let oldest = stalling.first_mut().unwrap();
    assert_eq!(oldest.peer().ip().to_string(), "127.0.0.2");
    // Its ClientHello is still queued; then its queue ends.
    let hello = tokio::time::timeout(WAIT, oldest.recv()).await.unwrap();
    assert_eq!(hello.unwrap().first(), Some(&22), "the queued ClientHello");
    let ended = tokio::time::timeout(WAIT, oldest.recv()).await.unwrap();
    assert!(ended.is_err(), "the evicted pipe's queue ended: {ended:?}");
}

fn get(kind: MessageType, mid: u16, token: &[u8]) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(kind);
    p.header.code = MessageClass::Request(RequestType::Get);
    p.header.message_id = mid;
    p.set_token(token.to_vec());
    coap::encode(&p).unwrap()
}

#[tokio::test]
async fn nosec_unknown_source_gets_4_01_and_leaves_no_session() {
    let known = Arc::new(|ip: std::net::IpAddr| ip.to_string() == "127.0.0.2");
    let (addr, mux, _stop) = listener(Scheme::Coap, Security::NoSecKnown(known)).await;
    let stranger = connected_socket("127.0.0.1:0", addr).await;
    stranger
        .send(&get(MessageType::Confirmable, 0x4242, b"abc"))
        .await
        .unwrap();
    let answer = coap::decode(&recv_within(&stranger, WAIT).await.unwrap()).unwrap();
    assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(answer.header.message_id, 0x4242);
    assert_eq!(answer.get_token(), b"abc");
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::Unauthorized)
    );
    stranger
        .send(&get(MessageType::NonConfirmable, 9, b"n"))
        .await
        .unwrap();
    let answer = coap::decode(&recv_within(&stranger, WAIT).await.unwrap()).unwrap();
    assert_eq!(answer.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(answer.get_token(), b"n");
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::Unauthorized)
    );
    assert_eq!(mux.sessions(), 0, "no session for an unknown source");

    let server = connected_socket("127.0.0.2:0", addr).await;
    server
        .send(&get(MessageType::Confirmable, 1, b"s"))
        .await
        .unwrap();
    let answer = coap::decode(&recv_within(&server, WAIT).await.unwrap()).unwrap();
    assert_eq!(answer.payload, b"hi", "a configured server is served");
    assert_eq!(mux.sessions(), 1);
}

#[tokio::test]
async fn nosec_sessions_per_source_ip_are_capped() {
    let config = MuxConfig {
        accept: true,
        gate: Some(Gate::new(|_, _, _| Verdict::Admit)),
        max_sessions_per_ip: 3,
        ..MuxConfig::default()
    };
    let (mux, accepted) = DatagramMux::bind_with("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let _accepted = accepted.unwrap();
    let mut sockets = Vec::new();
    for i in 0..5u16 {
        let socket = connected_socket("127.0.0.1:0", mux.local_addr()).await;
        socket
            .send(&get(MessageType::Confirmable, i, b""))
            .await
            .unwrap();
        sockets.push(socket);
    }
    let other = connected_socket("127.0.0.2:0", mux.local_addr()).await;
    other
        .send(&get(MessageType::Confirmable, 9, b""))
        .await
        .unwrap();
    assert!(
        eventually(|| mux.refused() == 2 && mux.sessions() == 4).await,
        "refused {} sessions {}",
        mux.refused(),
        mux.sessions()
    );
}

#[tokio::test]
async fn nosec_a_full_ip_makes_room_by_evicting_its_least_recently_heard_port() {
    let config = MuxConfig {
        accept: true,
        gate: Some(Gate::new(|_, _, _| Verdict::Admit)),
        max_sessions_per_ip: 3,
        evict_per_ip: true,
        ..MuxConfig::default()
    };
    let (mux, accepted) = DatagramMux::bind_with("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let mut accepted = accepted.unwrap();
    let mut sockets = Vec::new();
    let mut pipes = Vec::new();
    for i in 0..3u16 {
        let socket = connected_socket("127.0.0.1:0", mux.local_addr()).await;
        socket
            .send(&get(MessageType::Confirmable, i, b""))
            .await
            .unwrap();
        pipes.push(
            tokio::time::timeout(WAIT, accepted.recv())
                .await
                .unwrap()
                .unwrap(),
        );
        sockets.push(socket);
    }
    // The first port speaks again: the second is now the least recently heard.
    sockets[0]
        .send(&get(MessageType::Confirmable, 10, b""))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(WAIT, pipes[0].recv())
            .await
            .unwrap()
            .is_ok()
    );
    assert!(
        tokio::time::timeout(WAIT, pipes[0].recv())
            .await
            .unwrap()
            .is_ok()
    );
    let newcomer = connected_socket("127.0.0.1:0", mux.local_addr()).await;
    newcomer
        .send(&get(MessageType::Confirmable, 20, b""))
        .await
        .unwrap();
    let _new = tokio::time::timeout(WAIT, accepted.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((mux.sessions(), mux.evicted(), mux.refused()), (3, 1, 0));
    // The evicted pipe drains its datagram, then ends; the others stay open.
    let evicted = &mut pipes[1];
    assert!(evicted.recv().await.is_ok());
    assert!(
        tokio::time::timeout(WAIT, evicted.recv())
            .await
            .unwrap()
            .is_err()
    );
    let still_open = tokio::time::timeout(Duration::from_millis(200), pipes[0].recv()).await;
    assert!(
        still_open.is_err(),
        "the recently heard port keeps its pipe (no datagram, no end)"
    );
}

/// `[limits]` reaches the gateway's own `coaps://` and `coap://` listeners: with
/// `dtls_max_handshakes_per_ip = 1` a second cookie-verified handshake from one IP is refused
/// (the default, 8, admits it), and with `udp_max_sessions_per_ip = 2` a third NoSec port of
/// a configured server's IP evicts its least recently heard session (the default, 256, keeps
/// all three).
#[tokio::test]
async fn configured_datagram_limits_reach_the_gateways_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"[gateway]
listen = ["coaps://127.0.0.1:0", "coap://127.0.0.1:0"]
store = {:?}

[[servers]]
id = "ServerA"
ssid = 101
psk_identity = "serverA"
psk_key = "secretA"
nosec_address = "127.0.0.1"

[limits]
udp_max_sessions_per_ip = 2
dtls_max_handshakes_per_ip = 1
"#,
        dir.path().join("gw.redb")
    );
    let gateway = Gateway::start(Config::parse(&text).unwrap()).await.unwrap();
    let uri = |scheme| {
        *gateway
            .listeners()
            .iter()
            .find(|l| l.scheme == scheme)
            .unwrap()
    };
    let (coaps, coap) = (uri(Scheme::Coaps), uri(Scheme::Coap));
    let dtls = gateway.mux(&coaps).expect("the coaps:// listener's mux");
    let nosec = gateway.mux(&coap).expect("the coap:// listener's mux");

    let mut sockets = Vec::new();
    for i in 0..2u8 {
        let socket = connected_socket("127.0.0.1:0", coaps.addr).await;
        cookie_exchange(&socket, [i; 32]).await;
        sockets.push(socket);
    }
    assert!(
        eventually(|| dtls.refused() == 1).await,
        "refused {}",
        dtls.refused()
    );
    assert_eq!(
        (dtls.sessions(), dtls.pending()),
        (1, 1),
        "one handshake in progress from 127.0.0.1"
    );

    for i in 0..3u16 {
        let socket = connected_socket("127.0.0.1:0", coap.addr).await;
        socket
            .send(&get(MessageType::Confirmable, i, b"g"))
            .await
            .unwrap();
        let answer = recv_within(&socket, WAIT).await.expect("an answer");
        assert_eq!(coap::decode(&answer).unwrap().get_token(), b"g");
        sockets.push(socket);
    }
    assert!(
        eventually(|| nosec.evicted() == 1).await,
        "evicted {}",
        nosec.evicted()
    );
    assert_eq!(nosec.sessions(), 2, "two sessions from 127.0.0.1");
    gateway.stop().await;
}
