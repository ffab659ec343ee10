//! X.509 certificates over DTLS 1.2 (`coaps://`) end to end.
//!
//! * The four seed sequences with server A on `coaps://` identified by its certificate
//!   (`cert_match = "san-dns:serverA.example"`) and group G1 spread over a DTLS-X.509 device
//!   (devA: no PSK keys at all, `cert_match`), a DTLS-PSK device (devB) and a `coaps+tcp://`
//!   TLS device (devC); the odd device of the failures is the DTLS-X.509 one first.
//! * Server A over PSK and over its certificate on one listener is one ServerID (Grantor).
//! * ETSI-style negatives on the `coaps://` listener: a known PSK identity with a wrong key,
//!   a client certificate from an unknown CA, an expired one, a valid one that maps to no
//!   server, one whose key is not the pinned one (those two: closed right after the
//!   handshake, never a session). Each time: no access, no
//!   device is asked, and legitimate clients (certificate and PSK) are still served.
//!   A client that offers only certificate suites but has no certificate is not tested
//!   here: `X509Credentials` (the public API `X509ClientConfig` is built from) refuses an
//!   empty chain, so such a client cannot be built through privgw's API; the transport unit
//!   tests (`src/transport/dtls_x509_tests.rs`) cover it on a raw OpenSSL context.
//! * South: devices over DTLS-X.509 whose certificate does not match `cert_match`, is
//!   expired, comes from a foreign CA, or carries another key than the pin fail with
//!   `secure-channel` (5.02) and see no request; `cn` + pin matching is Verified.
//!
//! Certificates the committed PKI (`certs/`) does not hold are minted per test with
//! `privgw::pki`.

mod support;

use std::time::Duration;

use privgw::cli::ctl::{ClientCredentials, GatewayClient};
use privgw::coap::RequestType;
use privgw::config::Scheme;
use privgw::pki::{Pki, Profile};
use privgw::transport::DatagramSession;
use privgw::transport::dtls::{DtlsClient, PskClientConfig};
use privgw::transport::mux::DatagramMux;
use support::*;

/// How long a refused DTLS handshake may take before the test calls it hung. Certificate
/// refusals come by alert, well within this.
const REFUSAL_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The mixed fleet: devA over DTLS-X.509, devB over DTLS-PSK, devC over TLS
// ---------------------------------------------------------------------------------------

/// The gateway on `coaps://` with the committed gateway certificate (so it offers
/// certificates next to PSK); server A known by its certificate name (and, as every fleet
/// server, by PSK identity serverA). Every device: /3/0 is A's; /4/0 is B's on devA (the
/// DTLS-X.509 one), /5/0 on devB (DTLS-PSK), /6/0 on devC (TLS).
fn mixed_fleet() -> FleetBuilder {
    let acs = |id: &str| one_odd_device_per_object(id, ["devA", "devB", "devC"]);
    Fleet::builder()
        .gateway_certs(CertPaths::committed("gateway"))
        .server_toml("ServerA", r#"cert_match = "san-dns:serverA.example""#)
        // devA: DTLS with certificates only (no PSK keys on either side).
        .device_listen("coaps://127.0.0.1:0")
        .device_certs(Some(CertPaths::committed("devA")))
        .device_psk(false)
        .lwm2m("devA", acs("devA"))
        .device_toml("devA", r#"cert_match = "san-dns:devA.example""#)
        // devB: DTLS-PSK only.
        .device_certs(None)
        .device_psk(true)
        .lwm2m("devB", acs("devB"))
        // devC: CoAP over TLS.
        .device_listen("coaps+tcp://127.0.0.1:0")
        .device_certs(Some(CertPaths::committed("devC")))
        .lwm2m("devC", acs("devC"))
        .device_toml("devC", r#"cert_match = "san-dns:devC.example""#)
        .device_certs(None)
        .group("G1", &["devA", "devB", "devC"])
}

async fn server_a_x509(fleet: &Fleet) -> GatewayClient {
    fleet.dtls_client(&CertPaths::committed("serverA")).await
}

/// The `[[devices]]` entry of `id` in the gateway config.
fn device_entry<'a>(config: &'a str, id: &str) -> &'a str {
    let start = config
        .find(&format!("id = \"{id}\"\nuri"))
        .unwrap_or_else(|| panic!("no entry for {id}\n{config}"));
    let rest = &config[start..];
    let end = rest.find("\n[[").unwrap_or(rest.len());
    &rest[..end]
}

#[tokio::test]
async fn mixed_fleet_really_uses_dtls_x509_dtls_psk_and_tls() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        assert_eq!(fleet.device_uri("devA").scheme, Scheme::Coaps);
        assert_eq!(fleet.device_uri("devB").scheme, Scheme::Coaps);
        assert_eq!(fleet.device_uri("devC").scheme, Scheme::CoapsTcp);
        let config = fleet.config_text();
        // devA has no PSK keys in the gateway (nor in the simulated device), so a read of
        // it can only run over DTLS-X.509; devB has them.
        let dev_a = device_entry(config, "devA");
        assert!(!dev_a.contains("psk_"), "{dev_a}");
        assert!(dev_a.contains("cert_match"), "{dev_a}");
        assert!(device_entry(config, "devB").contains("psk_identity"));
        assert_eq!(fleet.gateway().listeners().len(), 1);
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn x509_device_success_on_each_transport_is_2_01_verified_only_that_device() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        let mut a = server_a_x509(&fleet).await;
        each_device_add_is_2_01_verified_only_that_device(
            &fleet,
            &mut a,
            &["devA", "devB", "devC"],
        )
        .await;
        assert_eq!(privilege_names(&mut a).await.len(), 3);
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn x509_device_failure_is_4_03_with_the_dtls_x509_device_denied() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        let mut a = server_a_x509(&fleet).await;
        device_add_is_4_03_denied(&fleet, &mut a, "devA", "/4/0").await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn x509_group_success_over_dtls_x509_dtls_psk_and_tls_verifies_all_three() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        let mut a = server_a_x509(&fleet).await;
        let reply = group_add_verifies_all_three(&fleet, &mut a).await;
        let doc = reply.document.as_ref().expect("CBOR body");
        assert_eq!(text(doc, "Grantor"), Some("ServerA"));
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn x509_group_failure_names_exactly_the_odd_device_whatever_its_channel() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        let mut a = server_a_x509(&fleet).await;
        for (uri, odd) in [("/4/0", "devA"), ("/5/0", "devB"), ("/6/0", "devC")] {
            let reply = group_add_is_4_03_naming_only(&fleet, &mut a, uri, odd).await;
            assert!(reply.location.is_none());
        }
        assert!(privilege_names(&mut a).await.is_empty());
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn server_a_over_psk_and_over_x509_on_one_listener_is_one_server_id() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        let mut psk = fleet.server_a().await;
        let mut x509 = server_a_x509(&fleet).await;

        let by_psk = add(&mut psk, "devB", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(by_psk.code, "2.01", "{}", by_psk.render());
        let by_cert = add(&mut x509, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(by_cert.code, "2.01", "{}", by_cert.render());
        for reply in [&by_psk, &by_cert] {
            let doc = reply.document.as_ref().expect("body");
            assert_eq!(text(doc, "Grantor"), Some("ServerA"), "{}", reply.render());
        }

        // Each channel reads the other's entry, Grantor leaf included.
        let psk_loc = by_psk.location.clone().expect("Location-Path");
        let cert_loc = by_cert.location.clone().expect("Location-Path");
        for (client, location) in [(&mut x509, &psk_loc), (&mut psk, &cert_loc)] {
            let grantor = get(client, &format!("{location}/Grantor")).await;
            assert_eq!(grantor.code, "2.05", "{}", grantor.render());
            assert_eq!(std::str::from_utf8(&grantor.payload).ok(), Some("ServerA"));
        }
        let mut names_psk = privilege_names(&mut psk).await;
        let mut names_cert = privilege_names(&mut x509).await;
        names_psk.sort();
        names_cert.sort();
        assert_eq!(names_psk.len(), 2);
        assert_eq!(names_psk, names_cert);

        // A Replace over the certificate of what was added over PSK keeps the Grantor:
        // both channels are the same server.
        let acl = x509
            .request(
                RequestType::Put,
                &format!("{psk_loc}/ACL"),
                Some((0, b"Get=ServerB&Replace=ServerB".to_vec())),
                None,
                &[],
            )
            .await
            .expect("PUT answered");
        assert_eq!(acl.code, "2.04", "{}", acl.render());
        let grantor = get(&mut psk, &format!("{psk_loc}/Grantor")).await;
        assert_eq!(std::str::from_utf8(&grantor.payload).ok(), Some("ServerA"));

        // And server B over PSK on the same listener is someone else.
        let mut b = fleet.server_b().await;
        let reply = add(&mut b, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        fleet.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// North negatives on the coaps:// listener
// ---------------------------------------------------------------------------------------

/// A DTLS-X.509 handshake with `creds` must fail (DTLS 1.2: the client waits for the
/// server's Finished, so a refused certificate fails the client's handshake); returns why.
async fn dtls_refused(fleet: &Fleet, creds: ClientCredentials) -> String {
    let attempt = tokio::time::timeout(
        REFUSAL_WAIT,
        GatewayClient::connect_with(fleet.coaps(), creds),
    )
    .await
    .expect("a refused certificate must be refused by alert, not left hanging");
    match attempt {
        Err(e) => e.to_string(),
        Ok(mut client) => {
            let reply = tokio::time::timeout(
                Duration::from_secs(5),
                client.request(RequestType::Get, "/GwConfig/Privileges", None, None, &[]),
            )
            .await;
            panic!("a refused certificate got a DTLS session; GET gave {reply:?}")
        }
    }
}

/// After a refusal: no device was asked, and legitimate server A is still served over its
/// certificate and over PSK.
async fn gateway_unharmed(fleet: &Fleet) {
    assert_eq!(
        fleet.requests(),
        [("devA".into(), 0), ("devB".into(), 0), ("devC".into(), 0)].into()
    );
    let mut a = server_a_x509(fleet).await;
    let reply = get(&mut a, "/GwConfig/Privileges").await;
    assert_eq!(reply.code, "2.05", "{}", reply.render());
    let mut a = fleet.server_a().await;
    let reply = get(&mut a, "/GwConfig/Privileges").await;
    assert_eq!(reply.code, "2.05", "{}", reply.render());
}

#[tokio::test]
async fn dtls_wrong_psk_key_for_a_known_identity_gets_no_session() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        // DTLS drops records it cannot authenticate: no alert, the handshake times out.
        let mut cfg = PskClientConfig::new(b"serverA".to_vec(), b"not-secretA".to_vec());
        cfg.handshake_timeout = Duration::from_millis(1500);
        let client = DtlsClient::new(cfg).expect("PSK client config");
        let (mux, _) = DatagramMux::bind("127.0.0.1:0".parse().unwrap(), false)
            .await
            .expect("bind");
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            client.connect(mux.connect(fleet.coaps().addr)),
        )
        .await
        .expect("the client's own handshake timeout ends it");
        let e = result.expect_err("a wrong key must not yield a session");
        eprintln!("wrong key: {e}");
        gateway_unharmed(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn dtls_client_certificate_from_an_unknown_ca_is_refused() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        let dir = tempfile::tempdir().unwrap();
        for (ca_name, creds) in server_a_from_unknown_cas(dir.path()) {
            let why = dtls_refused(&fleet, creds).await;
            eprintln!("{ca_name}: refused: {why}");
        }
        gateway_unharmed(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn dtls_expired_client_certificate_is_refused() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        let dir = tempfile::tempdir().unwrap();
        let why = dtls_refused(&fleet, expired_server_a(dir.path())).await;
        eprintln!("refused: {why}");
        assert!(why.contains("expired"), "{why}");
        gateway_unharmed(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn dtls_valid_certificate_of_no_configured_server_is_closed_after_its_handshake() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        let why = unconfigured_server_is_closed(&fleet, CertTransport::Dtls).await;
        eprintln!("closed: {why}");
        assert_eq!(fleet.total_requests(), 0);
        gateway_unharmed(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn dtls_pinned_server_with_another_key_under_the_same_name_is_closed() {
    bounded(async {
        let pin = spki_of(&certs_dir().join("serverA.pem"));
        let fleet = mixed_fleet()
            .server_toml("ServerA", &format!("spki_sha256 = \"{pin}\""))
            .start()
            .await;
        let dir = tempfile::tempdir().unwrap();
        // Same CA, same names, a different key.
        let paths = rekeyed_server_a(dir.path(), "serverA-rekeyed", &pin);
        fleet
            .closed_after_handshake(CertTransport::Dtls, &paths.credentials())
            .await;
        // The pinned key itself is server A.
        gateway_unharmed(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

/// Issue 6 item 1 over DTLS: a certificate from ServerB's own CA named `serverA.example`
/// is not ServerA (closed after its handshake, no device asked); that CA still vouches for ServerB, and the
/// gateway's CA for ServerA (PSK too).
#[tokio::test]
async fn dtls_a_servers_own_ca_vouches_for_that_server_only() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let fleet =
            own_ca_vouches_for_its_server_only(mixed_fleet(), CertTransport::Dtls, dir.path())
                .await;
        gateway_unharmed(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// South: devices over DTLS-X.509
// ---------------------------------------------------------------------------------------

/// One DTLS-X.509 device `devT` (no PSK keys) presenting `certs`, with extra lines in its
/// gateway entry, and a healthy DTLS-PSK device devB; both give A Replace on /3/0; group G1.
/// Server A comes in over PSK.
async fn x509_device_fleet(certs: CertPaths, lines: &[&str]) -> Fleet {
    let mut b = Fleet::builder()
        .gateway_certs(CertPaths::committed("gateway"))
        .device_listen("coaps://127.0.0.1:0")
        .device_certs(Some(certs))
        .device_psk(false)
        .lwm2m("devT", vec![ac(0, 3, 0, SSID_A)])
        .device_certs(None)
        .device_psk(true)
        .lwm2m("devB", vec![ac(0, 3, 0, SSID_A)])
        .group("G1", &["devT", "devB"]);
    for line in lines {
        b = b.device_toml("devT", line);
    }
    let fleet = b.start().await;
    assert!(!device_entry(fleet.config_text(), "devT").contains("psk_"));
    fleet
}

/// devT fails with `secure-channel` for server A over PSK (see the shared check), and the
/// group answer verifies no device.
async fn x509_device_is_secure_channel_failure(fleet: &Fleet) {
    let mut a = fleet.server_a().await;
    let reply = device_is_secure_channel_failure(fleet, &mut a).await;
    assert!(reply.verified_ids().is_empty(), "{}", reply.render());
}

#[tokio::test]
async fn dtls_x509_device_with_a_matching_cn_and_pin_is_verified() {
    bounded(async {
        let pin = spki_of(&certs_dir().join("devA.pem"));
        let fleet = x509_device_fleet(
            CertPaths::committed("devA"),
            &[
                r#"cert_match = "cn:devA""#,
                &format!("spki_sha256 = \"{pin}\""),
            ],
        )
        .await;
        let mut a = fleet.server_a().await;
        group_add_verifies_dev_b_and_dev_t(&mut a).await;
        assert!(fleet.device("devT").requests() >= 1);
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn dtls_x509_device_not_matching_its_cert_match_is_secure_channel() {
    bounded(async {
        // devA's certificate where devB.example is expected.
        let fleet = x509_device_fleet(
            CertPaths::committed("devA"),
            &[r#"cert_match = "san-dns:devB.example""#],
        )
        .await;
        x509_device_is_secure_channel_failure(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn dtls_x509_device_key_not_matching_its_pin_is_secure_channel() {
    bounded(async {
        let pin = spki_of(&certs_dir().join("devB.pem"));
        let fleet = x509_device_fleet(
            CertPaths::committed("devA"),
            &[
                r#"cert_match = "san-dns:devA.example""#,
                &format!("spki_sha256 = \"{pin}\""),
            ],
        )
        .await;
        x509_device_is_secure_channel_failure(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn dtls_x509_device_with_an_expired_certificate_is_secure_channel() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let fleet = x509_device_fleet(
            expired_dev_t(dir.path()),
            &[r#"cert_match = "san-dns:devT.example""#],
        )
        .await;
        x509_device_is_secure_channel_failure(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn dtls_x509_device_from_a_foreign_ca_is_secure_channel() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        // The device trusts the gateway (certs/ca.pem); the gateway does not trust it.
        let fleet = x509_device_fleet(
            dev_t_from_a_foreign_ca(dir.path()),
            &[r#"cert_match = "san-dns:devT.example""#],
        )
        .await;
        x509_device_is_secure_channel_failure(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

/// 127.0.0.2: the address of "another device" on loopback.
const OTHER_DEVICE: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// Issue 6 item 2: without `cert_match`, a device certificate from the trusted CA that is
/// valid only for another device's address (IP SAN 127.0.0.2) is refused at devT's
/// address (127.0.0.1) over DTLS, as TLS refuses it: `secure-channel`, no request, and the
/// detail says why.
#[tokio::test]
async fn dtls_x509_device_certificate_for_another_address_is_secure_channel() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = committed_pki()
            .issue(
                "devB",
                &["devB.example"],
                &[],
                &[OTHER_DEVICE],
                Profile::Both,
                30,
            )
            .unwrap();
        let fleet = x509_device_fleet(mint(dir.path(), "devB-elsewhere", &elsewhere), &[]).await;
        let mut a = fleet.server_a().await;
        let reply = device_is_secure_channel_failure(&fleet, &mut a).await;
        let shown = reply.render();
        assert!(shown.contains("IP address mismatch"), "{shown}");
        assert!(shown.contains("127.0.0.1"), "{shown}");
        fleet.stop().await;
    })
    .await;
}

/// The same device at the other device's address: its certificate (IP SAN 127.0.0.1 only,
/// the committed devA) is not valid for 127.0.0.2.
#[tokio::test]
async fn dtls_x509_device_at_an_address_its_certificate_does_not_name_is_secure_channel() {
    bounded(async {
        let fleet = Fleet::builder()
            .gateway_certs(CertPaths::committed("gateway"))
            .device_listen("coaps://127.0.0.2:0")
            .device_certs(Some(CertPaths::committed("devA")))
            .device_psk(false)
            .lwm2m("devT", vec![ac(0, 3, 0, SSID_A)])
            .device_listen("coaps://127.0.0.1:0")
            .device_certs(None)
            .device_psk(true)
            .lwm2m("devB", vec![ac(0, 3, 0, SSID_A)])
            .group("G1", &["devT", "devB"])
            .start()
            .await;
        assert_eq!(fleet.device_uri("devT").addr.ip(), OTHER_DEVICE);
        x509_device_is_secure_channel_failure(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

/// Control: with no `cert_match`, a certificate valid for the device's address is enough.
#[tokio::test]
async fn dtls_x509_device_certificate_for_its_own_address_is_verified() {
    bounded(async {
        let fleet = x509_device_fleet(CertPaths::committed("devA"), &[]).await;
        let mut a = fleet.server_a().await;
        group_add_verifies_dev_b_and_dev_t(&mut a).await;
        fleet.stop().await;
    })
    .await;
}

/// A device entry may give `ca` alone: its own trust anchor, with the gateway's cert and
/// key. A device certified by another CA is then verified (over DTLS-X.509), and the
/// gateway's CA no longer vouches for that device.
#[tokio::test]
async fn dtls_x509_device_with_its_own_ca_alone_is_verified_against_that_ca_only() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let own = Pki::new_ca("devT's own CA").unwrap();
        let own_ca = dir.path().join("devT-ca.pem");
        std::fs::write(&own_ca, own.ca.cert_pem().unwrap()).unwrap();
        let ca_line = format!("ca = {own_ca:?}");
        let cert = own
            .issue("devT", &["devT.example"], &[], &LOOPBACK, Profile::Both, 30)
            .unwrap();
        let fleet = x509_device_fleet(mint(dir.path(), "devT", &cert), &[&ca_line]).await;
        let mut a = fleet.server_a().await;
        group_add_verifies_dev_b_and_dev_t(&mut a).await;
        fleet.stop().await;

        // The committed devA certificate (the gateway's CA) where devT's own CA is expected.
        let fleet = x509_device_fleet(CertPaths::committed("devA"), &[&ca_line]).await;
        x509_device_is_secure_channel_failure(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// A client that lost its session and comes back from the same port
// ---------------------------------------------------------------------------------------

/// Server A handshakes with its certificate from a fixed port, ends that session (with a
/// close_notify if `notify`, else silently: crash, reboot, a NAT that keeps the port), and
/// handshakes again from the same port. Returns the second handshake's outcome.
async fn handshake_twice_from_one_port(fleet: &Fleet, notify: bool) -> Result<(), String> {
    let creds = privgw::transport::dtls::X509Credentials::from_pem_files(
        &certs_dir().join("serverA.pem"),
        &certs_dir().join("serverA.key"),
        &certs_dir().join("ca.pem"),
    )
    .expect("serverA credentials");
    let mut cfg = privgw::transport::dtls::X509ClientConfig::new(creds);
    cfg.handshake_timeout = Duration::from_secs(3);
    let client = DtlsClient::new(cfg).expect("X.509 client config");
    let (mux, _) = DatagramMux::bind("127.0.0.1:0".parse().unwrap(), false)
        .await
        .expect("bind");
    let local = mux.local_addr();
    let mut first = client
        .connect(mux.connect(fleet.coaps().addr))
        .await
        .expect("first handshake");
    if notify {
        first.close().await.expect("close_notify sent");
        // Let the gateway's session see it and free the address.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(first);
    drop(mux);
    // The old socket closes once the mux's receive task has ended.
    let mut rebound = None;
    for _ in 0..100 {
        if let Ok((mux, _)) = DatagramMux::bind(local, false).await {
            rebound = Some(mux);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mux = rebound.expect("rebind the same port");
    let mut second = client
        .connect(mux.connect(fleet.coaps().addr))
        .await
        .map_err(|e| format!("a new handshake from {local} was not answered: {e}"))?;
    // The new session carries CoAP: a CON GET /.well-known/core (retransmitted once, as a
    // CoAP client would, in case it raced the gateway's switch to the new session).
    let get = b"\x40\x01\x12\x34\xbb.well-known\x04core";
    for _ in 0..3 {
        second.send(get).await.map_err(|e| format!("send: {e}"))?;
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(2), second.recv()).await {
            return if reply.get(1) == Some(&0x45) {
                Ok(())
            } else {
                Err(format!("GET over the new session answered {reply:02x?}"))
            };
        }
    }
    Err("no CoAP answer over the new session".into())
}

/// RFC 6347 §4.2.8: a ClientHello (epoch 0) from an address that still has a session is a
/// new association: the gateway runs it as a candidate session and, once its handshake
/// completes, the new session replaces the old one and carries CoAP.
#[tokio::test]
async fn dtls_client_that_lost_its_session_can_handshake_again_from_the_same_port() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        handshake_twice_from_one_port(&fleet, false)
            .await
            .expect("second handshake");
        fleet.stop().await;
    })
    .await;
}

/// Control for the previous test: after a close_notify the same port handshakes again.
#[tokio::test]
async fn dtls_client_that_closed_its_session_can_handshake_again_from_the_same_port() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        handshake_twice_from_one_port(&fleet, true)
            .await
            .expect("second handshake");
        fleet.stop().await;
    })
    .await;
}
