//! Socket tests for the stream transports: TCP (cap, backoff, NoSec identity) and TLS 1.2/1.3
//! with mutual X.509 over loopback, plus interop with libcoap's `coap-server-openssl` /
//! `coap-client-openssl` over `coaps+tcp`.
//!
//! Certificates are minted at test time with [`crate::pki`]. Every test binds `127.0.0.1:0`
//! or `[::1]:0` and is bounded in time.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{CertificateError, ProtocolVersion, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::tcp::{self, TcpEndpoint};
use super::tests::{KillOnDrop, free_port_pair, require_tool, spawn_libcoap_pki_server, within};
use super::tls::{
    ALPN_COAP, CredentialPart, CredentialProblem, TlsClient, TlsCredentials, TlsFailure, TlsServer,
};
use super::{Identity, PeerInfo, TransportError, TransportKind};
use crate::pki::{Issued, Pki, Profile};

const STEP: Duration = Duration::from_secs(5);
const HANDSHAKE: Duration = Duration::from_secs(5);
const LOOP4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LOOP6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

/// A CA with a server certificate (localhost, 127.0.0.1, ::1) and a client certificate.
struct Certs {
    pki: Pki,
    server: Issued,
    client: Issued,
}

impl Certs {
    fn new(ca_name: &str) -> Certs {
        let pki = Pki::new_ca(ca_name).expect("CA");
        let server = pki
            .issue(
                "gw-server",
                &["localhost"],
                &[],
                &[LOOP4, LOOP6],
                Profile::Server,
                30,
            )
            .expect("server cert");
        let client = client_cert(&pki, "serverA", 30);
        Certs {
            pki,
            server,
            client,
        }
    }

    fn server_creds(&self) -> TlsCredentials {
        creds(&self.pki, &self.server)
    }

    fn client_creds(&self) -> TlsCredentials {
        creds(&self.pki, &self.client)
    }
}

fn client_cert(pki: &Pki, cn: &str, days: i64) -> Issued {
    pki.issue(
        cn,
        &[&format!("{cn}.example")],
        &[&format!("coap://{cn}")],
        &[],
        Profile::Client,
        days,
    )
    .expect("client cert")
}

/// `issued` as our credentials, trusting `pki`'s CA.
fn creds(pki: &Pki, issued: &Issued) -> TlsCredentials {
    TlsCredentials::from_pem(
        &issued.cert_pem().expect("cert pem"),
        &issued.key_pem().expect("key pem"),
        &pki.ca.cert_pem().expect("ca pem"),
    )
    .expect("credentials")
}

fn ip_name(ip: IpAddr) -> ServerName<'static> {
    ServerName::IpAddress(ip.into())
}

#[track_caller]
fn cert_identity(info: &PeerInfo) -> &super::cert::CertIdentity {
    assert_eq!(info.kind, TransportKind::Tls);
    match &info.identity {
        Identity::Certificate(id) => id,
        other => panic!("expected a certificate identity, got {other:?}"),
    }
}

/// rustls' verdict inside a handshake error, or a test failure that shows the error.
#[track_caller]
fn rustls_error(err: &TransportError) -> &rustls::Error {
    match err {
        TransportError::TlsHandshake {
            source: TlsFailure::Tls(e),
            ..
        } => e,
        other => panic!("expected a TLS handshake error from rustls, got: {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// A TLS listener as a gateway would run it: one task per connection
// ---------------------------------------------------------------------------------------

type Accepted = Result<(tokio_rustls::server::TlsStream<TcpStream>, PeerInfo), TransportError>;

/// An accept loop on `127.0.0.1:0` that hands each connection to its own task, which runs
/// the handshake and reports the outcome. Aborted on drop.
struct Listener {
    addr: SocketAddr,
    results: mpsc::Receiver<Accepted>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn listen(server: TlsServer) -> Listener {
    let endpoint = TcpEndpoint::bind(SocketAddr::new(LOOP4, 0))
        .await
        .expect("bind");
    let addr = endpoint.local_addr();
    let (tx, results) = mpsc::channel(16);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _peer, slot)) = endpoint.accept().await else {
                return;
            };
            let server = server.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let _ = tx.send(server.accept(tcp).await).await;
            });
        }
    });
    Listener {
        addr,
        results,
        task,
    }
}

impl Listener {
    async fn next(&mut self) -> Accepted {
        within(STEP, self.results.recv())
            .await
            .expect("listener result")
    }
}

// ---------------------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------------------

/// Binds on IPv4 and IPv6 loopback; accepted and connected streams have TCP_NODELAY; the
/// NoSec identity is the peer's address.
#[tokio::test]
async fn tcp_accepts_on_v4_and_v6_with_nodelay() {
    for ip in [LOOP4, LOOP6] {
        let endpoint = TcpEndpoint::bind(SocketAddr::new(ip, 0))
            .await
            .expect("bind");
        let addr = endpoint.local_addr();
        assert_eq!(addr.ip(), ip);
        assert_ne!(addr.port(), 0);
        let (client, accepted) = within(
            STEP,
            futures_join(tcp::connect(addr, STEP), endpoint.accept()),
        )
        .await;
        let mut client = client.expect("connect");
        let (mut server, peer, _slot) = accepted.expect("accept");
        assert!(client.nodelay().expect("nodelay"));
        assert!(server.nodelay().expect("nodelay"));
        assert_eq!(peer, client.local_addr().expect("local addr"));

        client.write_all(b"ping").await.expect("write");
        let mut buf = [0; 4];
        within(STEP, server.read_exact(&mut buf))
            .await
            .expect("read");
        assert_eq!(&buf, b"ping");

        let info = tcp::nosec_peer_info(peer);
        assert_eq!(info.kind, TransportKind::Tcp);
        assert_eq!(info.identity, Identity::Address(ip));
    }
}

/// Runs two futures concurrently on this task.
async fn futures_join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    tokio::join!(a, b)
}

/// At the connection cap the endpoint stops accepting; dropping a slot lets the next
/// connection in.
#[tokio::test]
async fn tcp_connection_cap_holds_until_a_slot_is_freed() {
    let endpoint = TcpEndpoint::bind_with_limit(SocketAddr::new(LOOP4, 0), 1)
        .await
        .expect("bind");
    let addr = endpoint.local_addr();
    let _c1 = tcp::connect(addr, STEP).await.expect("connect 1");
    let (_s1, _, slot1) = within(STEP, endpoint.accept()).await.expect("accept 1");
    assert_eq!(endpoint.free_slots(), 0);

    // The kernel completes the second connect (backlog), but we do not accept it.
    let _c2 = tcp::connect(addr, STEP).await.expect("connect 2");
    let blocked = tokio::time::timeout(Duration::from_millis(300), endpoint.accept()).await;
    assert!(blocked.is_err(), "accepted beyond the cap");

    drop(slot1);
    let (_s2, _, _slot2) = within(STEP, endpoint.accept()).await.expect("accept 2");
}

/// Accept errors back off 1, 2, 4 s (virtual time) and then succeed; an aborted connection
/// is retried at once.
#[tokio::test(start_paused = true)]
async fn tcp_accept_backs_off_on_resource_errors() {
    let mut failures = vec![
        io_error(io::ErrorKind::ConnectionAborted),
        io::Error::from_raw_os_error(24), // EMFILE
        io::Error::from_raw_os_error(24),
        io::Error::from_raw_os_error(23), // ENFILE
    ];
    failures.reverse();
    let start = tokio::time::Instant::now();
    let got = tcp::accept_with_backoff(|| {
        let next = failures.pop();
        async move {
            match next {
                Some(e) => Err(e),
                None => Ok(7),
            }
        }
    })
    .await
    .expect("eventually accepts");
    assert_eq!(got, 7);
    assert_eq!(start.elapsed(), Duration::from_secs(1 + 2 + 4));
}

/// A listener that never recovers gives up after the 64 s wait (1 + 2 + … + 64 = 127 s).
#[tokio::test(start_paused = true)]
async fn tcp_accept_gives_up_after_64s_backoff() {
    let start = tokio::time::Instant::now();
    let mut calls = 0;
    let err = tcp::accept_with_backoff(|| {
        calls += 1;
        async { Err::<(), _>(io::Error::from_raw_os_error(24)) }
    })
    .await
    .expect_err("gives up");
    assert_eq!(err.raw_os_error(), Some(24));
    assert_eq!(calls, 8);
    assert_eq!(start.elapsed(), Duration::from_secs(127));
}

fn io_error(kind: io::ErrorKind) -> io::Error {
    io::Error::new(kind, "test")
}

/// A refused connect is an error naming the peer.
#[tokio::test]
async fn tcp_connect_refused_names_the_peer() {
    let probe = std::net::TcpListener::bind((LOOP4, 0)).expect("probe");
    let addr = probe.local_addr().expect("addr");
    drop(probe);
    let err = tcp::connect(addr, STEP).await.expect_err("refused");
    assert!(matches!(err, TransportError::TcpConnect { peer, .. } if peer == addr));
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

// ---------------------------------------------------------------------------------------
// TLS: successful mutual handshakes
// ---------------------------------------------------------------------------------------

/// Mutual TLS with the given versions on both sides: echo both ways, identities, ALPN.
async fn mutual_handshake(versions: &[&'static SupportedProtocolVersion], expect: ProtocolVersion) {
    let certs = Certs::new("Test CA");
    let server = TlsServer::with_protocol_versions(certs.server_creds(), HANDSHAKE, versions)
        .expect("server");
    let client = TlsClient::with_protocol_versions(certs.client_creds(), HANDSHAKE, versions)
        .expect("client");
    let mut listener = listen(server).await;

    let (mut stream, server_info) = within(STEP, client.connect(listener.addr, ip_name(LOOP4)))
        .await
        .expect("client handshake");
    let (mut served, client_info) = listener.next().await.expect("server handshake");

    // The server sees the client's certificate identity.
    let id = cert_identity(&client_info);
    assert_eq!(id.subject_cn.as_deref(), Some("serverA"));
    assert_eq!(id.san_dns, vec!["serverA.example"]);
    assert_eq!(id.san_uri, vec!["coap://serverA"]);
    assert_eq!(
        client_info.addr,
        stream.get_ref().0.local_addr().expect("addr")
    );
    // The client sees the server's.
    let sid = cert_identity(&server_info);
    assert_eq!(sid.subject_cn.as_deref(), Some("gw-server"));
    assert_eq!(sid.san_dns, vec!["localhost"]);
    assert_eq!(server_info.addr, listener.addr);

    // Version and ALPN, on both sides.
    assert_eq!(stream.get_ref().1.protocol_version(), Some(expect));
    assert_eq!(served.get_ref().1.protocol_version(), Some(expect));
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(ALPN_COAP));
    assert_eq!(served.get_ref().1.alpn_protocol(), Some(ALPN_COAP));

    // Echo both ways.
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let n = served.read(&mut buf).await.expect("server read");
        served.write_all(&buf[..n]).await.expect("server write");
        served
            .write_all(b"|from-server")
            .await
            .expect("server write");
        served.flush().await.expect("flush");
        served
    });
    stream.write_all(b"hello").await.expect("client write");
    stream.flush().await.expect("flush");
    let mut buf = [0u8; 17];
    within(STEP, stream.read_exact(&mut buf))
        .await
        .expect("client read");
    assert_eq!(&buf, b"hello|from-server");
    let _served = within(STEP, echo).await.expect("echo task");
}

#[tokio::test]
async fn mutual_tls13_handshake_echo_and_identities() {
    mutual_handshake(&[&rustls::version::TLS13], ProtocolVersion::TLSv1_3).await;
}

#[tokio::test]
async fn mutual_tls12_handshake_echo_and_identities() {
    mutual_handshake(&[&rustls::version::TLS12], ProtocolVersion::TLSv1_2).await;
}

/// With default versions on both sides, TLS 1.3 is chosen; a TLS 1.2-only client still
/// gets in against a default server.
#[tokio::test]
async fn default_versions_negotiate_13_and_accept_12() {
    let certs = Certs::new("Test CA");
    let server = TlsServer::new(certs.server_creds(), HANDSHAKE).expect("server");
    let mut listener = listen(server).await;

    let client = TlsClient::new(certs.client_creds(), HANDSHAKE).expect("client");
    let (stream, _) = within(STEP, client.connect(listener.addr, ip_name(LOOP4)))
        .await
        .expect("handshake");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    listener.next().await.expect("server side");

    let client12 = TlsClient::with_protocol_versions(
        certs.client_creds(),
        HANDSHAKE,
        &[&rustls::version::TLS12],
    )
    .expect("client");
    let dns = ServerName::try_from("localhost").expect("dns name");
    let (stream, _) = within(STEP, client12.connect(listener.addr, dns))
        .await
        .expect("handshake by DNS name");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    listener.next().await.expect("server side");
}

// ---------------------------------------------------------------------------------------
// TLS: refusals
// ---------------------------------------------------------------------------------------

/// The client did not get a working session: either its handshake failed, or (TLS 1.3,
/// refused by the server after the client's last flight) its first read fails or sees EOF.
async fn assert_no_session(
    result: Result<(tokio_rustls::client::TlsStream<TcpStream>, PeerInfo), TransportError>,
) -> String {
    match result {
        Err(e) => e.to_string(),
        Ok((mut stream, _)) => {
            let mut buf = [0u8; 16];
            match within(STEP, stream.read(&mut buf)).await {
                Err(e) => e.to_string(),
                Ok(0) => "EOF".to_owned(),
                Ok(n) => panic!("refused client read {n} bytes of application data"),
            }
        }
    }
}

/// Runs `client` against a default server with `certs`' server credentials, for both TLS
/// versions, and returns the server's error for each.
async fn refused_by_server(
    certs: &Certs,
    client_creds: impl Fn() -> TlsCredentials,
) -> Vec<TransportError> {
    let mut errors = Vec::new();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let server = TlsServer::new(certs.server_creds(), HANDSHAKE).expect("server");
        let mut listener = listen(server).await;
        let client = TlsClient::with_protocol_versions(client_creds(), HANDSHAKE, &[version])
            .expect("client");
        let outcome = within(STEP, client.connect(listener.addr, ip_name(LOOP4))).await;
        let server_err = listener.next().await.expect_err("server must refuse");
        let client_saw = assert_no_session(outcome).await;
        eprintln!("{version:?}: server: {server_err}; client: {client_saw}");
        errors.push(server_err);
    }
    errors
}

/// A client certificate from a foreign CA is refused: unknown issuer.
#[tokio::test]
async fn client_cert_from_foreign_ca_is_refused() {
    let certs = Certs::new("Test CA");
    let foreign = Pki::new_ca("Foreign CA").expect("foreign CA");
    let intruder = client_cert(&foreign, "serverA", 30);
    for err in refused_by_server(&certs, || creds(&certs.pki, &intruder)).await {
        assert!(
            matches!(
                rustls_error(&err),
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            ),
            "{err}"
        );
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    }
}

/// An expired client certificate is refused: expired.
#[tokio::test]
async fn expired_client_cert_is_refused() {
    let certs = Certs::new("Test CA");
    let expired = client_cert(&certs.pki, "serverA", -1);
    for err in refused_by_server(&certs, || creds(&certs.pki, &expired)).await {
        assert!(
            matches!(
                rustls_error(&err),
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. }
                )
            ),
            "{err}"
        );
        assert!(err.to_string().contains("expired"), "{err}");
    }
}

/// A client that presents no certificate is refused: no certificates presented.
#[tokio::test]
async fn client_without_certificate_is_refused() {
    let certs = Certs::new("Test CA");
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let server = TlsServer::new(certs.server_creds(), HANDSHAKE).expect("server");
        let mut listener = listen(server).await;

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(certs.pki.ca.cert.to_der().expect("der").into())
            .expect("root");
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = tcp::connect(listener.addr, STEP).await.expect("tcp");
        let client = within(STEP, connector.connect(ip_name(LOOP4), tcp)).await;

        let err = listener.next().await.expect_err("server must refuse");
        assert!(
            matches!(rustls_error(&err), rustls::Error::NoCertificatesPresented),
            "{err}"
        );
        assert!(err.to_string().contains("no certificates"), "{err}");
        if let Ok(mut stream) = client {
            let mut buf = [0u8; 8];
            let read = within(STEP, stream.read(&mut buf)).await;
            assert!(
                matches!(read, Err(_) | Ok(0)),
                "refused client got data: {read:?}"
            );
        }
    }
}

/// A server certificate issued for another name is refused by the client.
#[tokio::test]
async fn server_cert_for_another_name_is_refused() {
    let certs = Certs::new("Test CA");
    let other = certs
        .pki
        .issue("other", &["other.example"], &[], &[], Profile::Server, 30)
        .expect("cert");
    let server = TlsServer::new(creds(&certs.pki, &other), HANDSHAKE).expect("server");
    let mut listener = listen(server).await;
    let client = TlsClient::new(certs.client_creds(), HANDSHAKE).expect("client");
    for name in [
        ip_name(LOOP4),
        ServerName::try_from("localhost").expect("name"),
    ] {
        let err = within(STEP, client.connect(listener.addr, name))
            .await
            .expect_err("client must refuse");
        assert!(
            matches!(
                rustls_error(&err),
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{err}"
        );
        assert!(err.to_string().contains("not valid for name"), "{err}");
        // The server hears the client's alert.
        let server_err = listener.next().await.expect_err("server side fails too");
        assert!(
            matches!(server_err, TransportError::TlsHandshake { .. }),
            "{server_err}"
        );
    }
}

/// A server with an expired certificate is refused by the client.
#[tokio::test]
async fn expired_server_cert_is_refused() {
    let certs = Certs::new("Test CA");
    let expired = certs
        .pki
        .issue(
            "gw-server",
            &["localhost"],
            &[],
            &[LOOP4],
            Profile::Server,
            -1,
        )
        .expect("cert");
    let server = TlsServer::new(creds(&certs.pki, &expired), HANDSHAKE).expect("server");
    let listener = listen(server).await;
    let client = TlsClient::new(certs.client_creds(), HANDSHAKE).expect("client");
    let err = within(STEP, client.connect(listener.addr, ip_name(LOOP4)))
        .await
        .expect_err("client must refuse");
    assert!(
        matches!(
            rustls_error(&err),
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(&listener.addr.to_string()),
        "{err}"
    );
}

/// A server whose CA the client does not trust is refused: unknown issuer.
#[tokio::test]
async fn server_from_foreign_ca_is_refused() {
    let certs = Certs::new("Test CA");
    let foreign = Certs::new("Foreign CA");
    let server = TlsServer::new(foreign.server_creds(), HANDSHAKE).expect("server");
    let listener = listen(server).await;
    let client = TlsClient::new(certs.client_creds(), HANDSHAKE).expect("client");
    let err = within(STEP, client.connect(listener.addr, ip_name(LOOP4)))
        .await
        .expect_err("client must refuse");
    assert!(
        matches!(
            rustls_error(&err),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// TLS: bounded handshakes
// ---------------------------------------------------------------------------------------

/// A TCP peer that connects and says nothing neither blocks a second client's handshake
/// (each connection has its own task) nor lives past its own handshake timeout.
#[tokio::test]
async fn silent_peer_does_not_block_others_and_times_out() {
    let certs = Certs::new("Test CA");
    let timeout = Duration::from_secs(2);
    let server = TlsServer::new(certs.server_creds(), timeout).expect("server");
    let mut listener = listen(server).await;

    let silent = tcp::connect(listener.addr, STEP)
        .await
        .expect("silent connect");
    let silent_addr = silent.local_addr().expect("addr");

    let started = Instant::now();
    let client = TlsClient::new(certs.client_creds(), HANDSHAKE).expect("client");
    let (_stream, _) = within(STEP, client.connect(listener.addr, ip_name(LOOP4)))
        .await
        .expect("second client's handshake");
    let first = listener
        .next()
        .await
        .expect("the talking client is served first");
    assert!(
        started.elapsed() < timeout,
        "second handshake waited {:?} (blocked by the silent peer?)",
        started.elapsed()
    );
    assert_eq!(
        cert_identity(&first.1).subject_cn.as_deref(),
        Some("serverA")
    );

    let err = listener.next().await.expect_err("silent peer times out");
    match err {
        TransportError::TlsHandshakeTimeout { peer, after } => {
            assert_eq!(peer, silent_addr);
            assert_eq!(after, timeout);
        }
        other => panic!("expected a handshake timeout, got {other}"),
    }
    assert!(started.elapsed() < timeout + Duration::from_secs(2));
    drop(silent);
}

/// A client whose server never answers gives up after its handshake timeout.
#[tokio::test]
async fn client_handshake_times_out_against_a_silent_server() {
    let certs = Certs::new("Test CA");
    let endpoint = TcpEndpoint::bind(SocketAddr::new(LOOP4, 0))
        .await
        .expect("bind");
    let addr = endpoint.local_addr();
    let hold = tokio::spawn(async move {
        let accepted = endpoint.accept().await;
        tokio::time::sleep(STEP).await;
        drop(accepted);
    });
    let timeout = Duration::from_millis(500);
    let client = TlsClient::new(certs.client_creds(), timeout).expect("client");
    let err = within(STEP, client.connect(addr, ip_name(LOOP4)))
        .await
        .expect_err("times out");
    assert!(
        matches!(err, TransportError::TlsHandshakeTimeout { peer, after } if peer == addr && after == timeout),
        "{err}"
    );
    hold.abort();
}

// ---------------------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------------------

/// `from_pem_files` reads good files and names the path and the problem otherwise.
#[test]
fn credential_files_errors_name_the_path() {
    let certs = Certs::new("Test CA");
    let dir = tempfile::tempdir().expect("tempdir");
    certs
        .client
        .write(dir.path(), "client")
        .expect("write client");
    certs.pki.ca.write(dir.path(), "ca").expect("write ca");
    let cert = dir.path().join("client.pem");
    let key = dir.path().join("client.key");
    let ca = dir.path().join("ca.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, b"").expect("write empty");
    let missing = dir.path().join("missing.pem");

    let good = TlsCredentials::from_pem_files(&cert, &key, &ca).expect("good files");
    assert_eq!(good.cert_chain.len(), 1);
    assert_eq!(good.ca.len(), 1);
    assert!(
        !format!("{good:?}").contains("BEGIN"),
        "key redacted in Debug"
    );

    let check = |result: Result<TlsCredentials, TransportError>,
                 path: &std::path::Path,
                 part: CredentialPart,
                 why: &str| {
        let err = result.expect_err("must fail");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains(why), "{text}");
        match err {
            TransportError::Credentials { part: p, .. } => assert_eq!(p, part, "{text}"),
            other => panic!("expected a credentials error, got {other}"),
        }
    };
    check(
        TlsCredentials::from_pem_files(&missing, &key, &ca),
        &missing,
        CredentialPart::Certificate,
        "cannot read the file",
    );
    check(
        TlsCredentials::from_pem_files(&key, &key, &ca),
        &key,
        CredentialPart::Certificate,
        "no PEM CERTIFICATE",
    );
    check(
        TlsCredentials::from_pem_files(&cert, &cert, &ca),
        &cert,
        CredentialPart::PrivateKey,
        "no PEM private key",
    );
    check(
        TlsCredentials::from_pem_files(&cert, &key, &empty),
        &empty,
        CredentialPart::Ca,
        "no PEM CERTIFICATE",
    );
    check(
        TlsCredentials::from_pem_files(&cert, &missing, &ca),
        &missing,
        CredentialPart::PrivateKey,
        "cannot read the file",
    );
    let err = TlsCredentials::from_pem(b"junk", b"junk", b"junk").expect_err("junk");
    assert!(matches!(
        err,
        TransportError::Credentials {
            problem: CredentialProblem::NoCertificate,
            ..
        }
    ));
}

/// A key that does not belong to the certificate is refused when building the config.
#[test]
fn mismatched_key_is_a_config_error() {
    let certs = Certs::new("Test CA");
    let mut creds = certs.server_creds();
    creds.key = certs.client_creds().key;
    let err = TlsServer::new(creds, HANDSHAKE).expect_err("mismatch");
    assert!(matches!(err, TransportError::TlsConfig { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------
// Interop with libcoap (Debian's libcoap3-bin) over coaps+tcp
// ---------------------------------------------------------------------------------------

/// Writes `name.pem` / `name.key` and `ca.pem` into `dir`.
fn write_pems(dir: &std::path::Path, pki: &Pki, issued: &Issued, name: &str) {
    issued.write(dir, name).expect("write cert and key");
    pki.ca.write(dir, "ca").expect("write ca");
}

/// Our TlsClient against `coap-server-openssl` (TLS on P+1, client certificate checked
/// against the common CA): the handshake completes, the server's identity is the one we
/// minted, and a hand-made RFC 8323 CSM is answered by the server's CSM.
#[tokio::test]
async fn libcoap_tls_server_accepts_our_client() {
    require_tool("coap-server-openssl");
    let certs = Certs::new("Interop CA");
    let dir = tempfile::tempdir().expect("tempdir");
    write_pems(dir.path(), &certs.pki, &certs.server, "server");
    let port = free_port_pair();
    let _server = spawn_libcoap_pki_server(dir.path(), port);
    let tls_addr = SocketAddr::new(LOOP4, port + 1);
    let client = TlsClient::new(certs.client_creds(), Duration::from_secs(3)).expect("client");
    // The server may still be starting: retry a few times.
    let mut last_err = None;
    let mut session = None;
    for _ in 0..20 {
        match client.connect(tls_addr, ip_name(LOOP4)).await {
            Ok(s) => {
                session = Some(s);
                break;
            }
            Err(e) => {
                last_err = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
    }
    let (mut stream, info) = session.unwrap_or_else(|| {
        panic!("no TLS handshake with coap-server-openssl on {tls_addr}: {last_err:?}")
    });
    let id = cert_identity(&info);
    assert_eq!(id.subject_cn.as_deref(), Some("gw-server"));
    assert_eq!(id.san_dns, vec!["localhost"]);
    assert_eq!(info.addr, tls_addr);

    // RFC 8323 CSM: Len 0, TKL 0, code 7.01.
    stream.write_all(&[0x00, 0xE1]).await.expect("send CSM");
    stream.flush().await.expect("flush");
    let mut head = [0u8; 2];
    within(STEP, stream.read_exact(&mut head))
        .await
        .expect("server's CSM");
    assert!(head[0] >> 4 < 13, "short length nibble, got {head:02x?}");
    assert_eq!(head[1], 0xE1, "7.01 CSM, got {head:02x?}");
}

/// `coap-client-openssl` over `coaps+tcp` against our TlsServer: the handshake completes and
/// we see the client's certificate identity.
#[tokio::test]
async fn libcoap_tls_client_reaches_our_server() {
    require_tool("coap-client-openssl");
    let certs = Certs::new("Interop CA");
    let dir = tempfile::tempdir().expect("tempdir");
    write_pems(dir.path(), &certs.pki, &certs.client, "client");
    let server = TlsServer::new(certs.server_creds(), HANDSHAKE).expect("server");
    let mut listener = listen(server).await;
    let path = |f: &str| dir.path().join(f).display().to_string();
    let uri = format!("coaps+tcp://127.0.0.1:{}/x", listener.addr.port());
    let _client = KillOnDrop(
        Command::new("coap-client-openssl")
            .args(["-B", "5"])
            .args(["-c", &path("client.pem"), "-j", &path("client.key")])
            .args(["-C", &path("ca.pem")])
            .arg(&uri)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn coap-client-openssl"),
    );
    let (mut stream, info) = within(Duration::from_secs(10), listener.next())
        .await
        .expect("handshake with coap-client-openssl");
    let id = cert_identity(&info);
    assert_eq!(id.subject_cn.as_deref(), Some("serverA"));
    assert_eq!(id.san_dns, vec!["serverA.example"]);
    assert_eq!(info.addr.ip(), LOOP4);
    eprintln!(
        "libcoap client: {:?}, ALPN {:?}",
        stream.get_ref().1.protocol_version(),
        stream
            .get_ref()
            .1
            .alpn_protocol()
            .map(String::from_utf8_lossy)
    );
    // Its first bytes are an RFC 8323 CSM (code 7.01) after the length/TKL byte and any
    // extended length.
    let mut first = [0u8; 1];
    within(STEP, stream.read_exact(&mut first))
        .await
        .expect("client's first frame");
    let ext = match first[0] >> 4 {
        13 => 1,
        14 => 2,
        15 => 4,
        _ => 0,
    };
    let mut rest = vec![0u8; ext + 1];
    within(STEP, stream.read_exact(&mut rest))
        .await
        .expect("code byte");
    assert_eq!(rest[ext], 0xE1, "libcoap opens with a CSM");
    let _ = stream.shutdown().await;
}
