//! Socket tests for the transport edge: the mux and DTLS PSK over loopback, plus interop with
//! libcoap's `coap-server-openssl` / `coap-client-openssl` as real peers.
//!
//! Every test binds `127.0.0.1:0` or `[::1]:0` and is bounded in time.

use std::future::Future;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::dtls::{
    DEFAULT_PSK_CIPHERS, DtlsClient, DtlsServer, DtlsServerConfig, DtlsSession, PskClientConfig,
    PskServerConfig, ServerHandshakes,
};
use super::mux::{DatagramMux, MuxConfig, Pipe};
use super::{CloseCause, DatagramSession, Identity, TransportError, TransportKind};

pub(crate) const LOCAL4: &str = "127.0.0.1:0";
pub(crate) const LOCAL6: &str = "[::1]:0";
pub(crate) const STEP: Duration = Duration::from_secs(5);

pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address literal")
}

/// Await `fut` or fail the test after `limit`.
pub(crate) async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(value) => value,
        Err(_) => panic!("a test step did not finish within {limit:?}"),
    }
}

pub(crate) async fn accepting_mux(local: &str) -> (Arc<DatagramMux>, mpsc::Receiver<Pipe>) {
    let (mux, accept) = DatagramMux::bind(addr(local), true).await.expect("bind");
    (mux, accept.expect("accepting mux yields a receiver"))
}

fn server_keys(identity: &'static [u8], key: &'static [u8]) -> PskServerConfig {
    PskServerConfig::new(Arc::new(move |id: &[u8]| {
        (id == identity).then(|| key.to_vec())
    }))
}

// ---------------------------------------------------------------------------------------
// mux
// ---------------------------------------------------------------------------------------

/// Two peers talking to one accepting mux at the same time each get their own pipe, and
/// replies go back to the right peer.
#[tokio::test]
async fn mux_two_peers_get_their_own_pipes() {
    let (server, mut accept) = accepting_mux(LOCAL4).await;
    let a = UdpSocket::bind(LOCAL4).await.expect("bind a");
    let b = UdpSocket::bind(LOCAL4).await.expect("bind b");
    let (sa, sb) = tokio::join!(
        a.send_to(b"from a", server.local_addr()),
        b.send_to(b"from b", server.local_addr())
    );
    sa.expect("send a");
    sb.expect("send b");

    let mut pipes = Vec::new();
    for _ in 0..2 {
        pipes.push(within(STEP, accept.recv()).await.expect("a new pipe"));
    }
    assert_eq!(server.sessions(), 2);
    let a_addr = a.local_addr().expect("a addr");
    let b_addr = b.local_addr().expect("b addr");
    for pipe in &mut pipes {
        let first = within(STEP, pipe.recv()).await.expect("first datagram");
        let expected: &[u8] = if pipe.peer() == a_addr {
            b"from a"
        } else {
            assert_eq!(pipe.peer(), b_addr);
            b"from b"
        };
        assert_eq!(first, expected);
        let info = pipe.peer_info();
        assert_eq!(info.kind, TransportKind::Udp);
        assert_eq!(info.identity, Identity::Address(pipe.peer().ip()));
        let mut reply = b"echo ".to_vec();
        reply.extend_from_slice(&first);
        pipe.send(&reply).await.expect("reply");
    }
    let mut buf = [0u8; 64];
    let (n, _) = within(STEP, a.recv_from(&mut buf)).await.expect("a reply");
    assert_eq!(&buf[..n], b"echo from a");
    let (n, _) = within(STEP, b.recv_from(&mut buf)).await.expect("b reply");
    assert_eq!(&buf[..n], b"echo from b");

    // A second datagram from a known peer goes to the existing pipe, not a new one.
    a.send_to(b"again", server.local_addr())
        .await
        .expect("send");
    let pipe_a = pipes
        .iter_mut()
        .find(|p| p.peer() == a_addr)
        .expect("pipe for a");
    assert_eq!(within(STEP, pipe_a.recv()).await.expect("again"), b"again");
    assert!(accept.try_recv().is_err(), "no extra pipe for a known peer");

    // Dropping a pipe removes the peer from the mux.
    pipes.clear();
    assert_eq!(server.sessions(), 0);
}

/// IPv6 loopback works in both roles, with `connect` on the client side.
#[tokio::test]
async fn mux_ipv6_client_and_server() {
    let (server, mut accept) = accepting_mux(LOCAL6).await;
    let (client, none) = DatagramMux::bind(addr(LOCAL6), false).await.expect("bind");
    assert!(none.is_none());
    assert!(server.local_addr().is_ipv6());
    let mut to_server = client.connect(server.local_addr());
    to_server.send(b"ping6").await.expect("send");
    let mut at_server = within(STEP, accept.recv()).await.expect("pipe");
    assert_eq!(at_server.peer(), client.local_addr());
    assert_eq!(
        within(STEP, at_server.recv()).await.expect("recv"),
        b"ping6"
    );
    at_server.send(b"pong6").await.expect("send back");
    assert_eq!(
        within(STEP, to_server.recv()).await.expect("recv"),
        b"pong6"
    );
}

/// A peer whose queue is full loses datagrams (counted) instead of blocking the receive loop:
/// another peer is still served.
#[tokio::test]
async fn mux_full_queue_drops_not_blocks() {
    let config = MuxConfig {
        accept: true,
        queue_len: 2,
        ..MuxConfig::default()
    };
    let (server, accept) = DatagramMux::bind_with(addr(LOCAL4), config)
        .await
        .expect("bind");
    let mut accept = accept.expect("receiver");
    let noisy = UdpSocket::bind(LOCAL4).await.expect("bind");
    for i in 0..10u8 {
        noisy
            .send_to(&[i], server.local_addr())
            .await
            .expect("send");
    }
    let mut noisy_pipe = within(STEP, accept.recv()).await.expect("pipe");

    // The loop is not stuck: a second peer still gets through.
    let quiet = UdpSocket::bind(LOCAL4).await.expect("bind");
    quiet
        .send_to(b"hi", server.local_addr())
        .await
        .expect("send");
    let mut quiet_pipe = within(STEP, accept.recv()).await.expect("second pipe");
    assert_eq!(within(STEP, quiet_pipe.recv()).await.expect("recv"), b"hi");

    // Loopback does not lose datagrams, so exactly queue_len were kept and the rest dropped.
    assert_eq!(within(STEP, noisy_pipe.recv()).await.expect("first"), [0]);
    assert_eq!(within(STEP, noisy_pipe.recv()).await.expect("second"), [1]);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), noisy_pipe.recv())
            .await
            .is_err(),
        "nothing beyond the queue length was kept"
    );
    assert_eq!(server.dropped(), 8);
}

/// A non-accepting mux drops datagrams from unknown peers; an accepting one stops creating
/// pipes at the session cap.
#[tokio::test]
async fn mux_unknown_peers_and_session_cap() {
    let (closed, _) = DatagramMux::bind(addr(LOCAL4), false).await.expect("bind");
    let stranger = UdpSocket::bind(LOCAL4).await.expect("bind");
    stranger
        .send_to(b"x", closed.local_addr())
        .await
        .expect("send");
    within(STEP, async {
        while closed.dropped() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(closed.sessions(), 0);

    let config = MuxConfig {
        accept: true,
        max_sessions: 1,
        ..MuxConfig::default()
    };
    let (capped, accept) = DatagramMux::bind_with(addr(LOCAL4), config)
        .await
        .expect("bind");
    let mut accept = accept.expect("receiver");
    let first = UdpSocket::bind(LOCAL4).await.expect("bind");
    let second = UdpSocket::bind(LOCAL4).await.expect("bind");
    first
        .send_to(b"1", capped.local_addr())
        .await
        .expect("send");
    let _pipe = within(STEP, accept.recv()).await.expect("pipe");
    second
        .send_to(b"2", capped.local_addr())
        .await
        .expect("send");
    within(STEP, async {
        while capped.dropped() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(capped.sessions(), 1);
    assert!(accept.try_recv().is_err());
}

/// `shutdown` ends every pipe's `recv` with `Closed(Shutdown)`; `connect` replaces an older
/// pipe for the same peer, which then ends the same way.
#[tokio::test]
async fn mux_shutdown_and_replace_close_pipes() {
    let (mux, _) = DatagramMux::bind(addr(LOCAL4), false).await.expect("bind");
    let peer = addr("127.0.0.1:9");
    let mut old = mux.connect(peer);
    let mut new = mux.connect(peer);
    assert_eq!(mux.sessions(), 1);
    match within(STEP, old.recv()).await {
        Err(TransportError::Closed {
            cause: CloseCause::Shutdown,
            ..
        }) => {}
        other => panic!("replaced pipe should be closed, got {other:?}"),
    }
    drop(old);
    assert_eq!(
        mux.sessions(),
        1,
        "dropping the old pipe keeps the new slot"
    );
    mux.shutdown();
    assert!(matches!(
        within(STEP, new.recv()).await,
        Err(TransportError::Closed {
            cause: CloseCause::Shutdown,
            ..
        })
    ));
}

// ---------------------------------------------------------------------------------------
// DTLS PSK
// ---------------------------------------------------------------------------------------

/// A server mux + DtlsServer accepting every pipe in its own task, reporting each result.
pub(crate) struct TestServer {
    pub(crate) mux: Arc<DatagramMux>,
    pub(crate) results: mpsc::UnboundedReceiver<Result<DtlsSession, TransportError>>,
}

impl TestServer {
    /// The next handshake result, within [`STEP`].
    pub(crate) async fn next(&mut self) -> Result<DtlsSession, TransportError> {
        within(STEP, self.results.recv())
            .await
            .expect("the accept loop reports every handshake")
    }
}

pub(crate) async fn spawn_dtls_server(local: &str, cfg: impl Into<DtlsServerConfig>) -> TestServer {
    let (mux, mut accept) = accepting_mux(local).await;
    let server = Arc::new(DtlsServer::new(cfg).expect("server config"));
    let (tx, results) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(pipe) = accept.recv().await {
            let server = server.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(server.accept(pipe).await);
            });
        }
    });
    TestServer { mux, results }
}

async fn client_to(
    server: SocketAddr,
    cfg: PskClientConfig,
) -> Result<DtlsSession, TransportError> {
    let local = if server.is_ipv6() { LOCAL6 } else { LOCAL4 };
    let (mux, _) = DatagramMux::bind(addr(local), false).await.expect("bind");
    let client = DtlsClient::new(cfg).expect("client config");
    client.connect(mux.connect(server)).await
}

fn short(mut cfg: PskClientConfig) -> PskClientConfig {
    cfg.handshake_timeout = Duration::from_secs(3);
    cfg
}

/// Handshake, echo both ways, the server sees the client's identity; the default suite list
/// negotiates PSK-AES128-CCM8 first; close_notify ends the peer's `recv`.
#[tokio::test]
async fn dtls_psk_handshake_and_echo() {
    let mut server = spawn_dtls_server(LOCAL4, server_keys(b"dev-1", b"secret-1")).await;
    let mut client = within(
        STEP,
        client_to(
            server.mux.local_addr(),
            short(PskClientConfig::new("dev-1", "secret-1")),
        ),
    )
    .await
    .expect("client handshake");
    let mut at_server = within(STEP, server.results.recv())
        .await
        .expect("a result")
        .expect("server handshake");

    assert_eq!(at_server.psk_identity(), Some(&b"dev-1"[..]));
    let info = at_server.peer_info();
    assert_eq!(info.kind, TransportKind::Dtls);
    assert_eq!(info.identity, Identity::Psk(b"dev-1".to_vec()));
    assert_eq!(client.cipher_name(), Some("PSK-AES128-CCM8"));
    assert_eq!(at_server.cipher_name(), Some("PSK-AES128-CCM8"));
    assert!(
        client.is_compact() && at_server.is_compact(),
        "OpenSSL's state freed"
    );

    for i in 0..3u8 {
        let msg = [i; 100];
        client.send(&msg).await.expect("client send");
        let got = within(STEP, at_server.recv()).await.expect("server recv");
        assert_eq!(got, msg, "one record per recv");
        at_server.send(&got[..50]).await.expect("server send");
        let back = within(STEP, client.recv()).await.expect("client recv");
        assert_eq!(back, &msg[..50]);
    }
    // A record bigger than the MTU still goes (IP fragments it; DTLS does not split records).
    let big = vec![7u8; 3000];
    client.send(&big).await.expect("big send");
    assert_eq!(within(STEP, at_server.recv()).await.expect("big"), big);

    client.close().await.expect("close_notify");
    match within(STEP, at_server.recv()).await {
        Err(TransportError::Closed {
            cause: CloseCause::PeerClosed,
            ..
        }) => {}
        other => panic!("expected PeerClosed, got {other:?}"),
    }
}

/// Every suite in the default list negotiates when the client offers only that one, including
/// the CoAP-mandatory PSK-AES128-CCM8 (not blocked by Debian's security level); over IPv6 too.
#[tokio::test]
async fn dtls_each_suite_negotiates_when_forced() {
    let mut server = spawn_dtls_server(LOCAL6, server_keys(b"id", b"k")).await;
    for suite in [
        "PSK-AES128-CCM8",
        "PSK-AES128-CCM",
        "PSK-AES128-GCM-SHA256",
        "PSK-AES128-CBC-SHA256",
    ] {
        let mut cfg = short(PskClientConfig::new("id", "k"));
        cfg.ciphers = suite.to_owned();
        let mut client = within(STEP, client_to(server.mux.local_addr(), cfg))
            .await
            .unwrap_or_else(|e| panic!("{suite}: client handshake failed: {e}"));
        let mut at_server = within(STEP, server.results.recv())
            .await
            .expect("result")
            .unwrap_or_else(|e| panic!("{suite}: server handshake failed: {e}"));
        assert_eq!(client.cipher_name(), Some(suite));
        // The AEAD suites leave OpenSSL after the handshake; CBC stays with it.
        let compact = !suite.contains("CBC");
        assert_eq!(client.is_compact(), compact, "{suite}");
        assert_eq!(at_server.is_compact(), compact, "{suite}");
        client.send(suite.as_bytes()).await.expect("send");
        assert_eq!(
            within(STEP, at_server.recv()).await.expect("recv"),
            suite.as_bytes()
        );
        at_server.send(b"back").await.expect("send back");
        assert_eq!(
            within(STEP, client.recv()).await.expect("recv back"),
            b"back"
        );
    }
}

/// Both ends of a PSK session (identity "id", key "k") that a client opens to `server`
/// through `relay`.
async fn sessions_via(relay: SocketAddr, server: &mut TestServer) -> (DtlsSession, DtlsSession) {
    let client = within(
        STEP,
        client_to(relay, short(PskClientConfig::new("id", "k"))),
    )
    .await
    .expect("client handshake");
    let at_server = within(STEP, server.results.recv())
        .await
        .expect("result")
        .expect("server handshake");
    (client, at_server)
}

/// A relay on the path that sends every datagram twice, and flips a byte of a third copy:
/// each record still arrives once and in order (the replay window drops the duplicates,
/// the tag check the tampered copies), both ways.
#[tokio::test]
async fn dtls_duplicated_and_tampered_records_are_delivered_once() {
    let mut server = spawn_dtls_server(LOCAL4, server_keys(b"id", b"k")).await;
    let server_addr = server.mux.local_addr();
    let relay = Arc::new(UdpSocket::bind(LOCAL4).await.expect("bind relay"));
    let relay_addr = relay.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = relay.recv_from(&mut buf).await {
            let to = if from == server_addr {
                match client {
                    Some(c) => c,
                    None => continue,
                }
            } else {
                client = Some(from);
                server_addr
            };
            let datagram = buf[..n].to_vec();
            let application_data = datagram.first() == Some(&23);
            let _ = relay.send_to(&datagram, to).await;
            if application_data {
                let _ = relay.send_to(&datagram, to).await;
                let mut tampered = datagram;
                if let Some(last) = tampered.last_mut() {
                    *last ^= 0x40;
                }
                let _ = relay.send_to(&tampered, to).await;
            }
        }
    });
    let (mut client, mut at_server) = sessions_via(relay_addr, &mut server).await;
    for i in 0..3u8 {
        client.send(&[i; 20]).await.expect("send");
    }
    for i in 0..3u8 {
        assert_eq!(within(STEP, at_server.recv()).await.expect("recv"), [i; 20]);
    }
    at_server.send(b"down").await.expect("send down");
    assert_eq!(within(STEP, client.recv()).await.expect("recv"), b"down");
    let extra = tokio::time::timeout(Duration::from_millis(300), at_server.recv()).await;
    assert!(extra.is_err(), "a copy was delivered: {extra:?}");
    let extra = tokio::time::timeout(Duration::from_millis(100), client.recv()).await;
    assert!(extra.is_err(), "a copy was delivered: {extra:?}");
}

/// A wrong key yields no session on either side (DTLS drops the undecryptable Finished, so
/// both handshakes end in error, by alert or by timeout).
#[tokio::test]
async fn dtls_wrong_key_fails_both_sides() {
    let mut cfg = server_keys(b"dev", b"right key");
    cfg.handshake_timeout = Duration::from_secs(2);
    let mut server = spawn_dtls_server(LOCAL4, cfg).await;
    let mut ccfg = PskClientConfig::new("dev", "wrong key");
    ccfg.handshake_timeout = Duration::from_secs(2);
    let client = within(STEP, client_to(server.mux.local_addr(), ccfg)).await;
    assert!(
        matches!(
            client,
            Err(TransportError::Handshake { .. } | TransportError::HandshakeTimeout { .. })
        ),
        "client: {client:?}"
    );
    let at_server = within(STEP, server.results.recv()).await.expect("result");
    eprintln!("wrong key: client {client:?}; server {at_server:?}");
    assert!(at_server.is_err(), "server: {at_server:?}");
}

/// PSK clients share one OpenSSL context per cipher list, yet each session presents its own
/// identity and key: two devices with different keys both connect, interleaved, and each
/// server sees its own identity.
#[tokio::test]
async fn dtls_psk_clients_sharing_a_context_present_their_own_keys() {
    let mut one = spawn_dtls_server(LOCAL4, server_keys(b"dev-one", b"key-one")).await;
    let mut two = spawn_dtls_server(LOCAL4, server_keys(b"dev-two", b"key-two")).await;
    let (mux, _) = DatagramMux::bind(addr(LOCAL4), false).await.expect("bind");
    let a = DtlsClient::new(short(PskClientConfig::new("dev-one", "key-one"))).unwrap();
    let b = DtlsClient::new(short(PskClientConfig::new("dev-two", "key-two"))).unwrap();
    let (ra, rb) = tokio::join!(
        a.connect(mux.connect(one.mux.local_addr())),
        b.connect(mux.connect(two.mux.local_addr()))
    );
    ra.expect("device one");
    rb.expect("device two");
    assert_eq!(
        one.next().await.unwrap().psk_identity(),
        Some(&b"dev-one"[..])
    );
    assert_eq!(
        two.next().await.unwrap().psk_identity(),
        Some(&b"dev-two"[..])
    );
    // And the other's key does not open the other's server.
    let mut crossed = short(PskClientConfig::new("dev-one", "key-two"));
    crossed.handshake_timeout = Duration::from_secs(2);
    assert!(client_to(one.mux.local_addr(), crossed).await.is_err());
}

/// An identity the server does not know fails the handshake promptly, with an alert.
#[tokio::test]
async fn dtls_unknown_identity_fails() {
    let mut server = spawn_dtls_server(LOCAL4, server_keys(b"known", b"k")).await;
    let started = Instant::now();
    let client = within(
        STEP,
        client_to(
            server.mux.local_addr(),
            short(PskClientConfig::new("stranger", "k")),
        ),
    )
    .await;
    assert!(
        matches!(client, Err(TransportError::Handshake { .. })),
        "{client:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "failed by alert, not timeout"
    );
    let at_server = within(STEP, server.results.recv()).await.expect("result");
    assert!(
        matches!(at_server, Err(TransportError::Handshake { .. })),
        "{at_server:?}"
    );
}

/// Silent and bogus peers hold only their own handshakes: a real client completes while they
/// hang, and they later fail with a timeout.
#[tokio::test]
async fn dtls_silent_peer_does_not_block_others() {
    let mut cfg = server_keys(b"id", b"k");
    cfg.handshake_timeout = Duration::from_secs(3);
    let mut server = spawn_dtls_server(LOCAL4, cfg).await;
    let target = server.mux.local_addr();

    // Garbage, then a truncated DTLS ClientHello header, then silence.
    let junk = UdpSocket::bind(LOCAL4).await.expect("bind");
    junk.send_to(b"not dtls at all", target)
        .await
        .expect("send");
    let fake_hello = UdpSocket::bind(LOCAL4).await.expect("bind");
    let record = [
        0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x10, 0x01, 0, 0, 0x40, 0, 0,
    ];
    fake_hello.send_to(&record, target).await.expect("send");
    tokio::time::sleep(Duration::from_millis(50)).await;

    let started = Instant::now();
    let client = within(
        STEP,
        client_to(target, short(PskClientConfig::new("id", "k"))),
    )
    .await;
    assert!(client.is_ok(), "{client:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "real client was delayed: {:?}",
        started.elapsed()
    );

    let mut ok = 0;
    let mut timed_out = 0;
    for _ in 0..3 {
        match within(STEP, server.results.recv()).await.expect("result") {
            Ok(_) => ok += 1,
            Err(TransportError::HandshakeTimeout { .. }) => timed_out += 1,
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert_eq!((ok, timed_out), (1, 2));
}

/// A client whose peer never answers gives up after `handshake_timeout`.
#[tokio::test]
async fn dtls_handshake_timeout_fires() {
    let sink = UdpSocket::bind(LOCAL4).await.expect("bind");
    let mut cfg = PskClientConfig::new("id", "k");
    cfg.handshake_timeout = Duration::from_millis(700);
    let started = Instant::now();
    let result = within(STEP, client_to(sink.local_addr().expect("addr"), cfg)).await;
    assert!(
        matches!(result, Err(TransportError::HandshakeTimeout { after, .. }) if after == Duration::from_millis(700)),
        "{result:?}"
    );
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(700) && elapsed < Duration::from_secs(2));
    // It retransmitted meanwhile? At least the first ClientHello arrived.
    let mut buf = [0u8; 2048];
    let (n, _) = within(STEP, sink.recv_from(&mut buf)).await.expect("hello");
    assert!(n > 13 && buf[0] == 0x16, "a DTLS handshake record");
}

/// A lost flight is retransmitted: a relay drops the client's first ClientHello and the
/// server's first reply, and the handshake still completes.
#[tokio::test]
async fn dtls_lost_flights_are_retransmitted() {
    let mut server = spawn_dtls_server(LOCAL4, server_keys(b"id", b"k")).await;
    let server_addr = server.mux.local_addr();
    let relay = Arc::new(UdpSocket::bind(LOCAL4).await.expect("bind relay"));
    let relay_addr = relay.local_addr().expect("addr");
    let relay_task = tokio::spawn({
        let relay = relay.clone();
        async move {
            let mut client: Option<SocketAddr> = None;
            let (mut from_client, mut from_server) = (0u32, 0u32);
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((n, from)) = relay.recv_from(&mut buf).await else {
                    return (from_client, from_server);
                };
                if from == server_addr {
                    from_server += 1;
                    if from_server == 1 {
                        continue; // drop the HelloVerifyRequest
                    }
                    if let Some(c) = client {
                        let _ = relay.send_to(&buf[..n], c).await;
                    }
                } else {
                    client = Some(from);
                    from_client += 1;
                    if from_client == 1 {
                        continue; // drop the first ClientHello
                    }
                    let _ = relay.send_to(&buf[..n], server_addr).await;
                }
            }
        }
    });
    let started = Instant::now();
    let mut cfg = PskClientConfig::new("id", "k");
    cfg.handshake_timeout = Duration::from_secs(8);
    let mut client = within(Duration::from_secs(10), client_to(relay_addr, cfg))
        .await
        .expect("handshake despite loss");
    // Two losses, each recovered by the client's timer (1 s, then 2 s).
    assert!(started.elapsed() >= Duration::from_millis(900));
    let mut at_server = within(STEP, server.results.recv())
        .await
        .expect("result")
        .expect("server handshake");
    client.send(b"after loss").await.expect("send");
    assert_eq!(
        within(STEP, at_server.recv()).await.expect("recv"),
        b"after loss"
    );
    relay_task.abort();
}

/// The DTLS records in one datagram: (content type, length) of each, by their headers.
fn records_of(datagram: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= 13 {
        let len = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        out.push((rest[0], len));
        rest = rest.get(13 + len..).unwrap_or_default();
    }
    out
}

/// A PSK handshake through a relay that counts each datagram's records and drops the
/// datagrams numbered (from one) in `drop_up` (client → server) and `drop_down` (server →
/// client). The server echoes one record. Returns the client's session (after the echo of one
/// `ping`) and what was seen each way (dropped datagrams included).
async fn counted_handshake(
    drop_up: &'static [usize],
    drop_down: &'static [usize],
) -> (
    DtlsSession,
    mpsc::UnboundedReceiver<(bool, Vec<(u8, usize)>)>,
) {
    let mut server = spawn_dtls_server(LOCAL4, server_keys(b"id", b"k")).await;
    let server_addr = server.mux.local_addr();
    let relay = Arc::new(UdpSocket::bind(LOCAL4).await.expect("bind relay"));
    let relay_addr = relay.local_addr().expect("addr");
    let (seen_tx, seen) = mpsc::unbounded_channel::<(bool, Vec<(u8, usize)>)>();
    tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let (mut up, mut down) = (0, 0);
        let mut buf = vec![0u8; 65_535];
        loop {
            let Ok((n, from)) = relay.recv_from(&mut buf).await else {
                return;
            };
            let to_server = from != server_addr;
            if seen_tx.send((to_server, records_of(&buf[..n]))).is_err() {
                return;
            }
            if to_server {
                up += 1;
                client = Some(from);
                if !drop_up.contains(&up) {
                    let _ = relay.send_to(&buf[..n], server_addr).await;
                }
            } else if let Some(c) = client {
                down += 1;
                if !drop_down.contains(&down) {
                    let _ = relay.send_to(&buf[..n], c).await;
                }
            }
        }
    });
    let mut cfg = PskClientConfig::new("id", "k");
    cfg.handshake_timeout = Duration::from_secs(8);
    // The server's session reads, so it can resend its last flight if the client asks.
    let echo = tokio::spawn(async move {
        let mut at_server = server.results.recv().await?.ok()?;
        let ping = at_server.recv().await.ok()?;
        at_server.send(&ping).await.ok()?;
        Some(at_server)
    });
    let mut client = within(Duration::from_secs(10), client_to(relay_addr, cfg))
        .await
        .expect("handshake");
    client.send(b"ping").await.expect("send");
    assert_eq!(within(STEP, client.recv()).await.expect("echo"), b"ping");
    assert!(within(STEP, echo).await.expect("echo task").is_some());
    (client, seen)
}

/// The content types of each datagram seen, split by direction (to the server first).
fn drain(
    seen: &mut mpsc::UnboundedReceiver<(bool, Vec<(u8, usize)>)>,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut up, mut down) = (Vec::new(), Vec::new());
    while let Ok((to_server, records)) = seen.try_recv() {
        let types = records.iter().map(|(t, _)| *t).collect();
        if to_server {
            up.push(types)
        } else {
            down.push(types)
        }
    }
    (up, down)
}

/// Each flight of a PSK handshake travels packed in one datagram (RFC 6347 §4.1.1 allows
/// several records per datagram): a lossless relay counts ClientHello, ClientHello with
/// cookie and ClientKeyExchange + ChangeCipherSpec + Finished one way, and
/// HelloVerifyRequest, ServerHello + ServerHelloDone and ChangeCipherSpec + Finished the
/// other. Application data stays one record per datagram.
#[tokio::test]
async fn dtls_handshake_flights_arrive_packed() {
    let (_client, mut seen) = counted_handshake(&[], &[]).await;
    let (up, down) = drain(&mut seen);
    eprintln!("to server: {up:?}\nto client: {down:?}");
    assert_eq!(up, [vec![22], vec![22], vec![22, 20, 22], vec![23]]);
    assert_eq!(down, [vec![22], vec![22, 22], vec![20, 22], vec![23]]);
}

/// The server's last flight, lost, is resent from the established session (its handshake
/// is over) when the client resends its own: still one datagram.
#[tokio::test]
async fn dtls_last_flight_resent_after_the_handshake_is_packed() {
    let (_client, mut seen) = counted_handshake(&[], &[3]).await;
    let (up, down) = drain(&mut seen);
    eprintln!("to server: {up:?}\nto client: {down:?}");
    assert_eq!(up[..3], [vec![22], vec![22], vec![22, 20, 22]], "{up:?}");
    assert_eq!(up.last(), Some(&vec![23]), "{up:?}");
    assert!(up.len() >= 5, "the client resent its flight: {up:?}");
    assert_eq!(
        down[..3],
        [vec![22], vec![22, 22], vec![20, 22]],
        "{down:?}"
    );
    assert!(down.len() >= 5, "{down:?}");
    assert!(
        down[3..down.len() - 1].iter().all(|d| *d == [20, 22]),
        "{down:?}"
    );
}

/// After the handshake, only an authenticated retransmission of the client's Finished makes
/// the server resend its last flight, once per fresh record: ten spoofed epoch-0 records get
/// nothing back, ten replays of the client's whole last flight get one resend after an
/// OpenSSL handshake (its Finished authenticates once in the fresh record layer, then the
/// replay window refuses it) and none after a lean one (the window saw that Finished during
/// the handshake; a real retransmission has a fresh record number), and the session carries
/// on.
#[tokio::test]
async fn dtls_server_resends_its_last_flight_only_for_an_authentic_fresh_finished() {
    last_flight_resends(ServerHandshakes::OpenSsl, 1).await;
    last_flight_resends(ServerHandshakes::Lean, 0).await;
}

async fn last_flight_resends(handshakes: ServerHandshakes, resends_for_replays: usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut cfg = DtlsServerConfig::from(server_keys(b"id", b"k"));
    cfg.handshakes = handshakes;
    let mut server = spawn_dtls_server(LOCAL4, cfg).await;
    let server_addr = server.mux.local_addr();
    let relay = Arc::new(UdpSocket::bind(LOCAL4).await.expect("bind relay"));
    let relay_addr = relay.local_addr().expect("addr");
    let down = Arc::new(AtomicUsize::new(0));
    let (flight_tx, mut last_flight) = mpsc::unbounded_channel::<Vec<u8>>();
    let (inject, mut injected) = mpsc::unbounded_channel::<Vec<u8>>();
    {
        let (relay, down) = (relay.clone(), down.clone());
        tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut buf = vec![0u8; 65_535];
            loop {
                tokio::select! {
                    received = relay.recv_from(&mut buf) => {
                        let Ok((n, from)) = received else { return };
                        let datagram = buf[..n].to_vec();
                        if from == server_addr {
                            down.fetch_add(1, Ordering::SeqCst);
                            if let Some(c) = client {
                                let _ = relay.send_to(&datagram, c).await;
                            }
                        } else {
                            client = Some(from);
                            let types: Vec<u8> = records_of(&datagram).iter().map(|r| r.0).collect();
                            if types == [22, 20, 22] {
                                let _ = flight_tx.send(datagram.clone());
                            }
                            let _ = relay.send_to(&datagram, server_addr).await;
                        }
                    }
                    Some(datagram) = injected.recv() => {
                        let _ = relay.send_to(&datagram, server_addr).await;
                    }
                }
            }
        });
    }
    let (mut client, mut at_server) = sessions_via(relay_addr, &mut server).await;
    assert!(at_server.is_compact());
    let flight = within(STEP, last_flight.recv())
        .await
        .expect("the client's last flight");
    // The server's session reads (and so may resend) while the test injects.
    let reader = tokio::spawn(async move {
        let got = at_server.recv().await;
        (at_server, got)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let before = down.load(Ordering::SeqCst);
    // ChangeCipherSpec records in epoch 0, as anyone could forge them.
    let spoofed = [20, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 9, 0, 1, 1];
    for _ in 0..10 {
        inject.send(spoofed.to_vec()).expect("inject");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        down.load(Ordering::SeqCst),
        before,
        "answered a spoofed record"
    );
    for _ in 0..10 {
        inject.send(flight.clone()).expect("inject");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        down.load(Ordering::SeqCst),
        before + resends_for_replays,
        "{handshakes:?}: resends for replays of one Finished"
    );

    client.send(b"still up").await.expect("send");
    let (_at_server, got) = within(STEP, reader).await.expect("reader");
    assert_eq!(got.expect("recv"), b"still up");
}

/// Whichever single datagram of a handshake is lost — each of the client's (ClientHello,
/// ClientHello with cookie, its last flight) and each of the server's (HelloVerifyRequest,
/// ServerHello flight, ChangeCipherSpec + Finished) — the handshake completes and the session
/// carries data, with the lean server (the default) retransmitting its side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtls_handshake_completes_whichever_datagram_is_lost() {
    const UP: [&[usize]; 3] = [&[1], &[2], &[3]];
    const DOWN: [&[usize]; 3] = [&[1], &[2], &[3]];
    let mut cases = tokio::task::JoinSet::new();
    for up in UP {
        cases.spawn(async move { drop(counted_handshake(up, &[]).await) });
    }
    for down in DOWN {
        cases.spawn(async move { drop(counted_handshake(&[], down).await) });
    }
    while let Some(case) = cases.join_next().await {
        case.expect("a handshake with one datagram lost completes");
    }
}

/// Retransmitted flights are packed too: the client's last flight and then the server's
/// are lost once; each comes again as one datagram.
#[tokio::test]
async fn dtls_retransmitted_flights_arrive_packed() {
    let (_client, mut seen) = counted_handshake(&[3], &[3]).await;
    let (mut up, mut down) = drain(&mut seen);
    assert_eq!(up.pop(), Some(vec![23]));
    assert_eq!(down.pop(), Some(vec![23]));
    eprintln!("to server: {up:?}\nto client: {down:?}");
    // ClientHello twice (the second with the cookie), then the last flight, sent twice or
    // more (it was lost), each time as one datagram.
    assert_eq!(up[..2], [vec![22], vec![22]], "{up:?}");
    assert!(up.len() >= 4, "the lost flight was resent: {up:?}");
    assert!(up[2..].iter().all(|d| *d == [22, 20, 22]), "{up:?}");
    // The HelloVerifyRequest, then ServerHello + ServerHelloDone (resent after the loss)
    // and ChangeCipherSpec + Finished, each as one datagram.
    assert_eq!(down[0], [22], "{down:?}");
    assert!(down.len() >= 4, "{down:?}");
    assert!(
        down[1..].iter().all(|d| *d == [22, 22] || *d == [20, 22]),
        "{down:?}"
    );
}

/// With `initial_retransmit`, an unanswered ClientHello is resent after that long and then
/// doubling, instead of OpenSSL's 1 s, 2 s, ...
#[tokio::test]
async fn dtls_client_initial_retransmit_follows_the_configuration() {
    let silent = UdpSocket::bind(LOCAL4).await.expect("bind");
    let mut cfg = PskClientConfig::new("id", "k");
    cfg.handshake_timeout = Duration::from_millis(1_700);
    cfg.initial_retransmit = Some(Duration::from_millis(250));
    let target = silent.local_addr().expect("addr");
    let client = tokio::spawn(client_to(target, cfg));
    let mut arrivals = Vec::new();
    let mut buf = vec![0u8; 2048];
    while let Ok(Ok((_, _))) =
        tokio::time::timeout(Duration::from_secs(3), silent.recv_from(&mut buf)).await
    {
        arrivals.push(Instant::now());
        if arrivals.len() == 4 {
            break;
        }
    }
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("gaps between ClientHellos: {gaps:?}");
    // 250 ms, 500 ms, 1 s (plus up to a 100 ms poll tick each); OpenSSL's default would
    // not have resent before 1 s.
    assert!(gaps.len() >= 2, "{gaps:?}");
    assert!(
        gaps[0] >= Duration::from_millis(200) && gaps[0] < Duration::from_millis(800),
        "{gaps:?}"
    );
    assert!(gaps[1] >= Duration::from_millis(450), "doubling: {gaps:?}");
    assert!(matches!(
        within(STEP, client).await.expect("task"),
        Err(TransportError::HandshakeTimeout { .. })
    ));
}

/// Configuration mistakes are refused before any traffic.
#[test]
fn dtls_config_is_validated() {
    assert!(matches!(
        DtlsClient::new(PskClientConfig::new(b"a\0b".to_vec(), "k")),
        Err(TransportError::InvalidConfig { .. })
    ));
    assert!(matches!(
        DtlsClient::new(PskClientConfig::new("a", "")),
        Err(TransportError::InvalidConfig { .. })
    ));
    let mut cfg = PskClientConfig::new("a", "k");
    cfg.ciphers = "NO-SUCH-CIPHER".into();
    assert!(matches!(
        DtlsClient::new(cfg),
        Err(TransportError::Config { .. })
    ));
    let mut cfg = server_keys(b"a", b"k");
    cfg.mtu = 10;
    assert!(matches!(
        DtlsServer::new(cfg),
        Err(TransportError::InvalidConfig { .. })
    ));
}

// ---------------------------------------------------------------------------------------
// Interop with libcoap (Debian's libcoap3-bin)
// ---------------------------------------------------------------------------------------

/// Kills and reaps the child when dropped, so a failing test leaves no server behind.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn require_tool(name: &str) {
    let found = Command::new(name)
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "`{name}` not found: install libcoap3-bin (apt-get install libcoap3-bin) to run the interop tests"
    );
}

/// `coap-server-openssl` on 127.0.0.1:`port` (DTLS and TLS on `port`+1) presenting
/// `dir/server.pem` + `dir/server.key` and verifying clients against `dir/ca.pem`.
pub(crate) fn spawn_libcoap_pki_server(dir: &std::path::Path, port: u16) -> KillOnDrop {
    let path = |f: &str| dir.join(f).display().to_string();
    KillOnDrop(
        Command::new("coap-server-openssl")
            .args(["-A", "127.0.0.1", "-p", &port.to_string()])
            .args(["-c", &path("server.pem"), "-j", &path("server.key")])
            .args(["-C", &path("ca.pem")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn coap-server-openssl"),
    )
}

/// A UDP port P on 127.0.0.1 with P+1 also free (libcoap listens DTLS on P+1).
pub(crate) fn free_port_pair() -> u16 {
    let lo = std::net::Ipv4Addr::LOCALHOST;
    for _ in 0..50 {
        let Ok(probe) = std::net::TcpListener::bind((lo, 0)) else {
            continue;
        };
        let Ok(port) = probe.local_addr().map(|a| a.port()) else {
            continue;
        };
        drop(probe);
        if port >= 65_000 {
            continue;
        }
        // libcoap binds UDP and TCP on P (coap, coap+tcp) and on P+1 (coaps, coaps+tcp).
        let free = [port, port + 1].iter().all(|&p| {
            std::net::TcpListener::bind((lo, p)).is_ok()
                && std::net::UdpSocket::bind((lo, p)).is_ok()
        });
        if free {
            return port;
        }
    }
    panic!("no free port pair on 127.0.0.1");
}

/// Our DtlsClient against `coap-server-openssl`: PSK handshake (any identity with plain `-k`),
/// then a hand-encoded CON GET /.well-known/core answered 2.05 Content.
#[tokio::test]
async fn libcoap_server_accepts_our_client() {
    libcoap_server_accepts_our_client_with("coap-server-openssl", "PSK-AES128-CCM8").await;
}

/// The same against libcoap on GnuTLS, a DTLS stack that shares no code with OpenSSL: our
/// own record layer carries the session after the handshake.
#[tokio::test]
async fn libcoap_gnutls_server_accepts_our_client() {
    libcoap_server_accepts_our_client_with("coap-server-gnutls", DEFAULT_PSK_CIPHERS).await;
}

async fn libcoap_server_accepts_our_client_with(server: &str, ciphers: &str) {
    require_tool(server);
    let port = free_port_pair();
    let _server = KillOnDrop(
        Command::new(server)
            .args([
                "-A",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-k",
                "secretKey",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {server}: {e}")),
    );
    let dtls_port = SocketAddr::from(([127, 0, 0, 1], port + 1));
    let mut cfg = PskClientConfig::new("anything", "secretKey");
    cfg.handshake_timeout = Duration::from_secs(2);
    cfg.ciphers = ciphers.into();
    // The server may still be starting: retry the handshake a few times.
    let mut session = None;
    for _ in 0..5 {
        match client_to(dtls_port, cfg.clone()).await {
            Ok(s) => {
                session = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let mut session = session.unwrap_or_else(|| panic!("handshake with {server}"));
    eprintln!("{server}: cipher {:?}", session.cipher_name());
    if !ciphers.contains(':') {
        assert_eq!(session.cipher_name(), Some(ciphers));
    }
    assert!(session.is_compact(), "our record layer carries the session");

    for mid in [0x1234u16, 0x1235] {
        assert_well_known_core(&mut session, mid).await;
    }
}

/// A hand-encoded CON GET /.well-known/core with message ID `mid` over `session`, answered
/// with a piggybacked 2.05 Content in link format.
pub(crate) async fn assert_well_known_core(session: &mut DtlsSession, mid: u16) {
    let mut get = vec![0x40, 0x01];
    get.extend_from_slice(&mid.to_be_bytes());
    get.push(0xbb);
    get.extend_from_slice(b".well-known");
    get.push(0x04);
    get.extend_from_slice(b"core");
    session.send(&get).await.expect("send GET");
    let reply = within(STEP, session.recv()).await.expect("reply");
    assert!(reply.len() >= 4, "short reply {reply:02x?}");
    assert_eq!(reply[0] >> 6, 1, "version 1");
    assert_eq!((reply[0] >> 4) & 0x3, 2, "piggybacked ACK");
    assert_eq!(reply[1], 0x45, "2.05 Content, got {reply:02x?}");
    assert_eq!(reply[2..4], mid.to_be_bytes(), "same message ID");
    assert!(
        String::from_utf8_lossy(&reply).contains("</"),
        "link-format payload"
    );
}

/// `coap-client-openssl` against our DtlsServer: it completes the handshake with its identity,
/// we answer a hand-built 4.04, and the client prints it.
#[tokio::test]
async fn libcoap_client_reaches_our_server() {
    libcoap_client_reaches_our_server_with("coap-client-openssl").await;
}

/// The same with libcoap's GnuTLS client.
#[tokio::test]
async fn libcoap_gnutls_client_reaches_our_server() {
    libcoap_client_reaches_our_server_with("coap-client-gnutls").await;
}

async fn libcoap_client_reaches_our_server_with(tool: &'static str) {
    require_tool(tool);
    let mut server = spawn_dtls_server(LOCAL4, server_keys(b"libcoap-id", b"libcoap-key")).await;
    let port = server.mux.local_addr().port();
    let handler = tokio::spawn(async move {
        let mut session = within(Duration::from_secs(10), server.results.recv())
            .await
            .expect("result")
            .unwrap_or_else(|e| panic!("handshake with {tool}: {e}"));
        let identity = session.psk_identity().map(<[u8]>::to_vec);
        let cipher = session.cipher_name();
        assert!(session.is_compact(), "our record layer carries the session");
        let request = within(STEP, session.recv()).await.expect("request");
        assert!(request.len() >= 4, "request too short: {request:02x?}");
        let tkl = usize::from(request[0] & 0x0f);
        let token = request.get(4..4 + tkl).expect("token").to_vec();
        // ACK (if CON) or NON, 4.04, same MID, same token.
        let mtype: u8 = if (request[0] >> 4) & 0x3 == 0 { 2 } else { 1 };
        let mut reply = vec![0x40 | (mtype << 4) | (request[0] & 0x0f), 0x84];
        reply.extend_from_slice(&request[2..4]);
        reply.extend_from_slice(&token);
        session.send(&reply).await.expect("send 4.04");
        // Give the client a moment to read it before the session drops.
        tokio::time::sleep(Duration::from_millis(300)).await;
        (identity, cipher, request[1])
    });

    let uri = format!("coaps://127.0.0.1:{port}/x");
    let child = Command::new(tool)
        .args([
            "-m",
            "get",
            "-u",
            "libcoap-id",
            "-k",
            "libcoap-key",
            "-B",
            "5",
            &uri,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {tool}: {e}"));
    let mut guard = KillOnDrop(child);
    let output = within(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || {
            let mut out = String::new();
            let mut err = String::new();
            if let Some(mut s) = guard.0.stdout.take() {
                let _ = std::io::Read::read_to_string(&mut s, &mut out);
            }
            if let Some(mut s) = guard.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut s, &mut err);
            }
            let _ = guard.0.wait();
            (out, err)
        }),
    )
    .await
    .expect("join");
    let (identity, cipher, code) = within(STEP, handler).await.expect("handler");
    assert_eq!(identity.as_deref(), Some(&b"libcoap-id"[..]));
    assert_eq!(code, 0x01, "GET");
    assert!(cipher.is_some());
    let printed = format!("{}{}", output.0, output.1);
    eprintln!("{tool} printed: {printed:?}; cipher {cipher:?}");
    assert!(printed.contains("4.04"), "{tool} printed: {printed:?}");
}

// ---------------------------------------------------------------------------------------
// RFC 6347 §4.2.8: a new ClientHello from an address with an established session
// ---------------------------------------------------------------------------------------

/// A DTLS 1.2 record header + handshake header of an epoch-0 ClientHello (body irrelevant).
fn client_hello_record() -> Vec<u8> {
    let mut d = vec![22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 1, 0, 12];
    d.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    d
}

async fn next_datagram(pipe: &mut Pipe) -> Vec<u8> {
    within(STEP, pipe.recv()).await.expect("datagram")
}

async fn nothing_for(pipe: &mut Pipe) {
    let got = tokio::time::timeout(Duration::from_millis(150), pipe.recv()).await;
    assert!(got.is_err(), "unexpected datagram: {got:?}");
}

/// The mux half of §4.2.8, without DTLS: a ClientHello on an established pipe opens a
/// candidate; handshake records go to the candidate and the rest to the old pipe; an
/// abandoned candidate (a spoofed ClientHello) leaves the old pipe untouched; a candidate
/// marked established takes the address over and the old pipe's queue closes.
#[tokio::test]
async fn client_hello_on_an_established_pipe_opens_a_candidate_that_replaces_it_only_when_established()
 {
    let (mux, mut accept) = accepting_mux(LOCAL4).await;
    let client = UdpSocket::bind(LOCAL4).await.expect("client socket");
    let server = mux.local_addr();
    let app = |n: u8| vec![23, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, n, 0, 1, n];

    client.send_to(&app(1), server).await.expect("send");
    let mut old = within(STEP, accept.recv()).await.expect("first pipe");
    assert_eq!(next_datagram(&mut old).await, app(1));
    mux.mark_established(&old);

    // A ClientHello: a candidate pipe, nothing for the old one.
    client
        .send_to(&client_hello_record(), server)
        .await
        .expect("send");
    let mut candidate = within(STEP, accept.recv()).await.expect("candidate pipe");
    assert_eq!(next_datagram(&mut candidate).await, client_hello_record());
    nothing_for(&mut old).await;

    // Application data still reaches the old session; handshake records the candidate.
    client.send_to(&app(2), server).await.expect("send");
    assert_eq!(next_datagram(&mut old).await, app(2));
    let finished = vec![22, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 20];
    client.send_to(&finished, server).await.expect("send");
    assert_eq!(next_datagram(&mut candidate).await, finished);

    // The candidate never completes (a spoofed ClientHello): the old session is unharmed.
    drop(candidate);
    client.send_to(&app(3), server).await.expect("send");
    assert_eq!(next_datagram(&mut old).await, app(3));

    // A real restart: the new candidate completes and takes the address over.
    client
        .send_to(&client_hello_record(), server)
        .await
        .expect("send");
    let mut renewed = within(STEP, accept.recv()).await.expect("second candidate");
    assert_eq!(next_datagram(&mut renewed).await, client_hello_record());
    mux.mark_established(&renewed);
    client.send_to(&app(4), server).await.expect("send");
    assert_eq!(next_datagram(&mut renewed).await, app(4));
    let ended = within(STEP, old.recv()).await;
    assert!(
        matches!(
            ended,
            Err(TransportError::Closed {
                cause: CloseCause::Shutdown,
                ..
            })
        ),
        "the replaced session's queue closes: {ended:?}"
    );
}
