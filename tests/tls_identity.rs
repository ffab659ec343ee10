//! Certificate identities on CoAP over TLS, ETSI-style negatives: every refused peer gets no
//! access, the gateway keeps serving, and no request reaches any device. North: unknown CA,
//! expired, unmapped, missing or pinned-away client certificates. South: a device whose
//! certificate does not match its rule, expired, or from a foreign CA fails with
//! `secure-channel`. Config: a missing certificate file fails at start naming the path.
//!
//! Certificates that the committed PKI (`certs/`) does not hold are minted per test with
//! `privgw::pki`.

mod support;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use privgw::cli::ctl::{ClientCredentials, GatewayClient};
use privgw::coap::RequestType;
use privgw::config::Config;
use privgw::pki::Profile;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Gateway on `coaps+tcp://` with the committed gateway certificate; server A known by
/// `san-dns:serverA.example` plus `extra` lines; one TLS device devA (committed cert) and
/// one TCP device devB, both giving A Replace on /3/0, in group G1.
fn fleet(extra_a: &[&str]) -> FleetBuilder {
    let mut b = Fleet::builder()
        .listen(&["coaps+tcp://127.0.0.1:0"])
        .gateway_certs(CertPaths::committed("gateway"))
        .server_toml("ServerA", r#"cert_match = "san-dns:serverA.example""#);
    for line in extra_a {
        b = b.server_toml("ServerA", line);
    }
    b.device_listen("coaps+tcp://127.0.0.1:0")
        .device_certs(Some(CertPaths::committed("devA")))
        .lwm2m("devA", vec![ac(0, 3, 0, SSID_A)])
        .device_certs(None)
        .device_listen("coap+tcp://127.0.0.1:0")
        .lwm2m("devB", vec![ac(0, 3, 0, SSID_A)])
        .group("G1", &["devA", "devB"])
}

/// Connects with `creds` and tries a GET and a group Add; returns why it failed. Panics if
/// the gateway answered anything.
async fn refused(fleet: &Fleet, creds: ClientCredentials) -> String {
    let mut client = match GatewayClient::connect_with(fleet.coaps_tcp(), creds).await {
        Err(e) => return format!("connect: {e}"),
        // TLS 1.3: the client finishes before the server has judged its certificate; the
        // refusal arrives with the first read.
        Ok(c) => c,
    };
    let attempt = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(RequestType::Get, "/GwConfig/Privileges", None, None, &[]),
    )
    .await
    .expect("a refused client must not hang");
    match attempt {
        Err(e) => format!("first request: {e}"),
        Ok(reply) => panic!("a refused certificate was answered: {}", reply.render()),
    }
}

/// After a refusal: no device was asked, and a legitimate server A is still served.
async fn gateway_unharmed(fleet: &Fleet) {
    assert_eq!(
        fleet.requests(),
        [("devA".into(), 0), ("devB".into(), 0)].into()
    );
    let mut a = fleet.tls_client(&CertPaths::committed("serverA")).await;
    let reply = get(&mut a, "/GwConfig/Privileges").await;
    assert_eq!(reply.code, "2.05", "{}", reply.render());
}

#[tokio::test]
async fn the_committed_server_certificate_is_server_a() {
    bounded(async {
        let fleet = fleet(&[]).start().await;
        let mut a = fleet.tls_client(&CertPaths::committed("serverA")).await;
        let reply = add(&mut a, "G1", "Group", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        assert_eq!(reply.verified_ids(), ["devA", "devB"]);
        let doc = reply.document.as_ref().expect("body");
        assert_eq!(text(doc, "Grantor"), Some("ServerA"));
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_client_certificate_from_an_unknown_ca_is_refused() {
    bounded(async {
        let fleet = fleet(&[]).start().await;
        let dir = tempfile::tempdir().unwrap();
        for (ca_name, creds) in server_a_from_unknown_cas(dir.path()) {
            let why = refused(&fleet, creds).await;
            eprintln!("{ca_name}: refused: {why}");
        }
        gateway_unharmed(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    bounded(async {
        let fleet = fleet(&[]).start().await;
        let dir = tempfile::tempdir().unwrap();
        let why = refused(&fleet, expired_server_a(dir.path())).await;
        eprintln!("refused: {why}");
        gateway_unharmed(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_valid_certificate_of_no_configured_server_is_closed_after_its_handshake() {
    bounded(async {
        let fleet = fleet(&[]).start().await;
        let why = unconfigured_server_is_closed(&fleet, CertTransport::Tls).await;
        eprintln!("closed: {why}");
        gateway_unharmed(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_certificate_two_servers_claim_is_trusted_by_neither() {
    bounded(async {
        let fleet = fleet(&[])
            .server_toml("ServerB", r#"cert_match = "cn:serverA""#)
            .start()
            .await;
        let server_a_certs = CertPaths::committed("serverA").credentials();
        fleet
            .closed_after_handshake(CertTransport::Tls, &server_a_certs)
            .await;
        assert_eq!(fleet.total_requests(), 0);
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    bounded(async {
        let fleet = fleet(&[]).start().await;
        // ctl will not even try.
        let e = GatewayClient::connect_with(fleet.coaps_tcp(), ClientCredentials::None)
            .await
            .err()
            .expect("coaps+tcp without certificates must not connect");
        eprintln!("ctl: {e}");

        // A raw rustls client that trusts the gateway but presents no certificate.
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(certs_dir().join("ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"coap".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(fleet.coaps_tcp().addr)
            .await
            .unwrap();
        let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        match connector.connect(name, tcp).await {
            Err(e) => eprintln!("handshake refused: {e}"),
            Ok(mut tls) => {
                // CSM, then GET /GwConfig/Privileges.
                let mut get = privgw::coap::Packet::new();
                get.header.code = privgw::coap::MessageClass::Request(RequestType::Get);
                get.set_token(vec![1]);
                privgw::coap::set_uri(&mut get, "/GwConfig/Privileges");
                let mut frame = vec![0x00, 0xE1];
                frame.extend(privgw::coap::encode_frame(&get).unwrap());
                let _ = tls.write_all(&frame).await;
                let _ = tls.flush().await;
                let mut buf = [0u8; 512];
                let read = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
                    .await
                    .expect("the gateway must not leave a certificate-less client hanging");
                match read {
                    Ok(0) => eprintln!("closed"),
                    Err(e) => eprintln!("refused after the handshake: {e}"),
                    Ok(n) => panic!(
                        "the gateway sent {n} bytes to a client without a certificate: {:02x?}",
                        &buf[..n]
                    ),
                }
            }
        }
        gateway_unharmed(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_spki_pin_admits_the_pinned_key_and_refuses_another_under_the_same_name() {
    bounded(async {
        let pin = spki_of(&certs_dir().join("serverA.pem"));
        let fleet = fleet(&[&format!("spki_sha256 = \"{pin}\"")]).start().await;
        let dir = tempfile::tempdir().unwrap();
        // Same CA, same names, a different key.
        let paths = rekeyed_server_a(dir.path(), "serverA-rekeyed", &pin);
        fleet
            .closed_after_handshake(CertTransport::Tls, &paths.credentials())
            .await;
        gateway_unharmed(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_server_cert_entry_pins_that_certificates_key() {
    bounded(async {
        let cert = certs_dir().join("serverA.pem");
        let fleet = Fleet::builder()
            .listen(&["coaps+tcp://127.0.0.1:0"])
            .gateway_certs(CertPaths::committed("gateway"))
            .server_toml("ServerA", &format!("cert = {cert:?}"))
            .device_listen("coap+tcp://127.0.0.1:0")
            .lwm2m("devB", vec![ac(0, 3, 0, SSID_A)])
            .start()
            .await;
        let mut a = fleet.tls_client(&CertPaths::committed("serverA")).await;
        let reply = get(&mut a, "/GwConfig/Privileges").await;
        assert_eq!(reply.code, "2.05", "{}", reply.render());
        let dir = tempfile::tempdir().unwrap();
        let other_key = committed_pki()
            .issue("serverA", &["serverA.example"], &[], &[], Profile::Both, 30)
            .unwrap();
        let rekeyed = mint(dir.path(), "rekeyed", &other_key);
        fleet
            .closed_after_handshake(CertTransport::Tls, &rekeyed.credentials())
            .await;
        assert_eq!(fleet.total_requests(), 0);
        fleet.stop().await;
    })
    .await;
}

/// Issue 6 item 1: ServerB's own CA issues a certificate named `serverA.example`. It chains
/// to an anchor the gateway trusts, but not to one trusted *for ServerA* (the gateway's
/// `ca` or ServerA's own), so it is nobody: closed after its handshake, no device asked. The same CA still
/// vouches for ServerB, and the gateway's CA for ServerA.
#[tokio::test]
async fn a_servers_own_ca_vouches_for_that_server_only() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let fleet =
            own_ca_vouches_for_its_server_only(fleet(&[]), CertTransport::Tls, dir.path()).await;
        gateway_unharmed(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// South: devices over TLS
// ---------------------------------------------------------------------------------------

/// One TLS device `devT` presenting `certs`, with extra lines in its gateway entry, and a
/// healthy TCP device devB; both give A Replace on /3/0; group G1.
async fn tls_device_fleet(certs: CertPaths, lines: &[&str]) -> Fleet {
    let mut b = Fleet::builder()
        .listen(&["coaps+tcp://127.0.0.1:0"])
        .gateway_certs(CertPaths::committed("gateway"))
        .server_toml("ServerA", r#"cert_match = "san-dns:serverA.example""#)
        .device_listen("coaps+tcp://127.0.0.1:0")
        .device_certs(Some(certs))
        .lwm2m("devT", vec![ac(0, 3, 0, SSID_A)])
        .device_certs(None)
        .device_listen("coap+tcp://127.0.0.1:0")
        .lwm2m("devB", vec![ac(0, 3, 0, SSID_A)])
        .group("G1", &["devT", "devB"]);
    for line in lines {
        b = b.device_toml("devT", line);
    }
    b.start().await
}

/// The device fails with `secure-channel` for server A over TLS (see the shared check).
async fn tls_device_is_secure_channel_failure(fleet: &Fleet) {
    let mut a = fleet.tls_client(&CertPaths::committed("serverA")).await;
    device_is_secure_channel_failure(fleet, &mut a).await;
}

#[tokio::test]
async fn a_tls_device_with_a_matching_rule_is_verified() {
    bounded(async {
        let pin = spki_of(&certs_dir().join("devA.pem"));
        let fleet = tls_device_fleet(
            CertPaths::committed("devA"),
            &[
                r#"cert_match = "cn:devA""#,
                &format!("spki_sha256 = \"{pin}\""),
            ],
        )
        .await;
        let mut a = fleet.tls_client(&CertPaths::committed("serverA")).await;
        group_add_verifies_dev_b_and_dev_t(&mut a).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_device_certificate_not_matching_its_cert_match_is_secure_channel() {
    bounded(async {
        // devA's certificate where devB.example is expected.
        let fleet = tls_device_fleet(
            CertPaths::committed("devA"),
            &[r#"cert_match = "san-dns:devB.example""#],
        )
        .await;
        tls_device_is_secure_channel_failure(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_device_key_not_matching_its_pin_is_secure_channel() {
    bounded(async {
        let pin = spki_of(&certs_dir().join("devB.pem"));
        let fleet = tls_device_fleet(
            CertPaths::committed("devA"),
            &[
                r#"cert_match = "san-dns:devA.example""#,
                &format!("spki_sha256 = \"{pin}\""),
            ],
        )
        .await;
        tls_device_is_secure_channel_failure(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_device_with_an_expired_certificate_is_secure_channel() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let fleet = tls_device_fleet(expired_dev_t(dir.path()), &[]).await;
        tls_device_is_secure_channel_failure(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_device_from_a_foreign_ca_is_secure_channel() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        // The device trusts the gateway (certs/ca.pem); the gateway does not trust it.
        let fleet = tls_device_fleet(dev_t_from_a_foreign_ca(dir.path()), &[]).await;
        tls_device_is_secure_channel_failure(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------

#[test]
fn a_missing_certificate_file_fails_at_start_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope").join("gateway.pem");
    let certs = certs_dir();
    let gateway = format!(
        "[gateway]\nlisten = [\"coaps+tcp://127.0.0.1:0\"]\nstore = {:?}\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
        dir.path().join("s.redb"),
        missing,
        certs.join("gateway.key"),
        certs.join("ca.pem"),
    );
    let server =
        "\n[[servers]]\nid = \"ServerA\"\nssid = 101\ncert_match = \"san-dns:serverA.example\"\n";
    let err =
        Config::parse(&format!("{gateway}{server}")).expect_err("a missing gateway.cert must fail");
    let msg = err.to_string();
    assert!(msg.contains("gateway.cert"), "{msg}");
    assert!(msg.contains(&missing.display().to_string()), "{msg}");

    // A device's own key file, relative to the config folder.
    let ok_gateway = gateway.replace(
        &format!("{missing:?}"),
        &format!("{:?}", certs.join("gateway.pem")),
    );
    let device = format!(
        "\n[[devices]]\nid = \"devA\"\nuri = \"coaps+tcp://127.0.0.1:5684\"\ncert = {:?}\nkey = \"devA-missing.key\"\nca = {:?}\n",
        certs.join("devA.pem"),
        certs.join("ca.pem"),
    );
    let err = Config::parse_in(&format!("{ok_gateway}{server}{device}"), Some(dir.path()))
        .expect_err("a missing device key must fail");
    let msg = err.to_string();
    assert!(msg.contains("devices[0].key"), "{msg}");
    assert!(
        msg.contains(&dir.path().join("devA-missing.key").display().to_string()),
        "{msg}"
    );

    // And the valid config does start-parse.
    Config::parse(&format!("{ok_gateway}{server}")).expect("the fixed config is valid");
}

#[tokio::test]
async fn a_certificate_file_removed_after_parsing_fails_the_gateway_start_naming_it() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let certs = certs_dir();
        let cert = dir.path().join("gateway.pem");
        std::fs::copy(certs.join("gateway.pem"), &cert).unwrap();
        let text = format!(
            "[gateway]\nlisten = [\"coaps+tcp://127.0.0.1:0\"]\nstore = {:?}\ncert = {:?}\nkey = {:?}\nca = {:?}\n\n[[servers]]\nid = \"ServerA\"\nssid = 101\ncert_match = \"cn:serverA\"\n",
            dir.path().join("s.redb"),
            cert,
            certs.join("gateway.key"),
            certs.join("ca.pem"),
        );
        let config = Config::parse(&text).expect("valid");
        std::fs::remove_file(&cert).unwrap();
        let err = privgw::gateway::Gateway::start(config)
            .await
            .err()
            .expect("the gateway cannot start without its certificate");
        let msg = err.to_string();
        assert!(msg.contains(&cert.display().to_string()), "{msg}");
    })
    .await;
}
