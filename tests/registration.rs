//! Devices that register (the gateway as their LwM2M server): the four seed sequences with
//! registered devices next to a dialled one, over DTLS-PSK and NoSec UDP; what the gateway
//! refuses at registration; queue mode; expiry; coming back after a gateway restart; two
//! accounts on one device. The devices are `privgw device` in registering mode, which
//! answers only over the session it registered on.

mod support;

use std::time::Duration;

use privgw::cli::ctl::{GatewayClient, Reply};
use privgw::coap::RequestType;
use privgw::config::Scheme;
use support::*;

/// devA and devB register, devC is dialled; all three in G1. Server A owns /3/0 everywhere;
/// devA's /5/0 and devB's /4/0 are server B's.
fn seed_fleet(scheme: Scheme) -> FleetBuilder {
    let mut b = Fleet::builder().lwm2m_listen(&[(scheme, None)]);
    for id in ["devA", "devB"] {
        let owner_4 = if id == "devB" { SSID_B } else { SSID_A };
        let owner_5 = if id == "devA" { SSID_B } else { SSID_A };
        b = b.registering(
            id,
            vec![
                ac(0, 3, 0, SSID_A),
                ac(1, 4, 0, owner_4),
                ac(2, 5, 0, owner_5),
            ],
        );
    }
    b.lwm2m(
        "devC",
        vec![
            ac(0, 3, 0, SSID_A),
            ac(1, 4, 0, SSID_A),
            ac(2, 5, 0, SSID_A),
        ],
    )
    .group("G1", &["devA", "devB", "devC"])
}

async fn seed_sequences(scheme: Scheme) {
    let fleet = seed_fleet(scheme).start().await;
    let mut a = fleet.server_a().await;

    // Device success: devA is read over its registration.
    let before = fleet.device("devA").requests();
    let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
    assert_eq!(reply.code, "2.01", "{}", reply.render());
    assert_eq!(reply.verified_ids(), ["devA"]);
    assert!(fleet.device("devA").requests() > before, "devA was read");

    // Device failure: devA's /5/0 belongs to server B.
    let reply = add(&mut a, "devA", "Device", "/5/0", "Get=ServerB").await;
    assert_eq!(reply.code, "4.03", "{}", reply.render());
    assert_eq!(reply.failed_ids(), ["devA"]);
    assert!(reply.render().contains("denied"), "{}", reply.render());

    // Group success: two registered devices and a dialled one.
    let reply = add(&mut a, "G1", "Group", "/3/0", "Get=ServerB").await;
    assert_eq!(reply.code, "2.01", "{}", reply.render());
    assert_eq!(reply.verified_ids(), ["devA", "devB", "devC"]);

    // Group failure: devB's /4/0 is server B's; nothing is committed.
    let reply = add(&mut a, "G1", "Group", "/4/0", "Get=ServerB").await;
    assert_eq!(reply.code, "4.03", "{}", reply.render());
    assert_eq!(reply.failed_ids(), ["devB"]);
    fleet.stop().await;
}

#[tokio::test]
async fn seed_sequences_with_devices_registered_over_dtls_psk() {
    bounded(seed_sequences(Scheme::Coaps)).await;
}

#[tokio::test]
async fn seed_sequences_with_devices_registered_over_nosec_udp() {
    bounded(seed_sequences(Scheme::Coap)).await;
}

/// A client at a registration listener with `identity`'s PSK (as a device would be).
async fn at_listener(fleet: &Fleet, identity: &str) -> GatewayClient {
    connect(fleet.lwm2m_uri(0), identity, &format!("devkey-{identity}")).await
}

async fn post(client: &mut GatewayClient, path: &str, payload: &[u8]) -> Reply {
    client
        .request(
            RequestType::Post,
            path,
            Some((40, payload.to_vec())),
            None,
            &[],
        )
        .await
        .expect("answered")
}

#[tokio::test]
async fn registration_refusals_and_the_registration_lifecycle_on_the_wire() {
    bounded(async {
        let fleet = Fleet::builder()
            .registering("devA", vec![ac(0, 3, 0, SSID_A)])
            .registering_with("devB", &[], vec![], |_| {})
            .start()
            .await;
        let mut dev = at_listener(&fleet, "devA").await;
        let objects = b"</1/0>,</2/0>,</3/0>";
        let cases: [(&str, &[u8], &str); 6] = [
            ("/rd?lt=60&lwm2m=1.1", objects, "4.00"),         // no ep
            ("/rd?ep=devB&lt=60&lwm2m=1.1", objects, "4.03"), // another device's endpoint
            ("/rd?ep=stranger&lt=60&lwm2m=1.1", objects, "4.03"), // not configured
            ("/rd?ep=devA&lt=60&lwm2m=2.0", objects, "4.12"), // unsupported version
            ("/rd?ep=devA&lt=60&lwm2m=1.1", b"<3/0", "4.00"), // bad link-format
            ("/rd/nowhere", b"", "4.04"),                     // unknown location
        ];
        for (path, payload, code) in cases {
            let reply = post(&mut dev, path, payload).await;
            assert_eq!(reply.code, code, "POST {path}: {}", reply.render());
        }
        let reply = post(&mut dev, "/rd?ep=devA&lt=60&lwm2m=1.1", objects).await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        let location = reply.location.expect("Location-Path");
        assert!(location.starts_with("/rd/"), "{location}");
        assert_eq!(post(&mut dev, &location, b"").await.code, "2.04");
        let reply = dev
            .request(RequestType::Delete, &location, None, None, &[])
            .await
            .expect("answered");
        assert_eq!(reply.code, "2.02");
        assert_eq!(post(&mut dev, &location, b"").await.code, "4.04");

        // devB's own channel may not touch devA's registration either.
        let mut b = at_listener(&fleet, "devB").await;
        let reply = post(&mut b, "/rd?ep=devA&lt=60&lwm2m=1.1", objects).await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        fleet.stop().await;
    })
    .await;
}

/// A Register whose object list comes in 16-byte Block1 blocks (Wakaama `-S 16`): each
/// block but the last is 2.31 Continue, the last one registers the whole list.
#[tokio::test]
async fn a_register_sent_in_block1_blocks_is_reassembled() {
    bounded(async {
        let fleet = Fleet::builder()
            .registering_with("devA", &[], vec![ac(0, 3, 0, SSID_A)], |_| {})
            .start()
            .await;
        let mut dev = at_listener(&fleet, "devA").await;
        let objects: &[u8] = br#"</>;rt="oma.lwm2m";ct=110,</1>;ver=1.1,</1/0>,</2/0>,</3/0>,</31024>;ver=1.0,</31024/10>"#;
        let chunks: Vec<&[u8]> = objects.chunks(16).collect();
        let mut last = None;
        for (i, chunk) in chunks.iter().enumerate() {
            let more = i + 1 < chunks.len();
            let block1 = vec![((i as u8) << 4) | if more { 0x08 } else { 0 }];
            let reply = dev
                .request(
                    RequestType::Post,
                    "/rd?lwm2m=1.1&ep=devA&b=U&lt=300",
                    Some((40, chunk.to_vec())),
                    None,
                    &[(privgw::coap::CoapOption::Block1, block1)],
                )
                .await
                .expect("answered");
            let want = if more { "2.31" } else { "2.01" };
            assert_eq!(reply.code, want, "block {i}: {}", reply.render());
            last = Some(reply);
        }
        let location = last.and_then(|r| r.location).expect("Location-Path");
        assert!(location.starts_with("/rd/"), "{location}");
        let mut a = fleet.server_a().await;
        let reply = get(&mut a, "/GwConfig/Devices/devA").await;
        let body = reply.render();
        assert!(body.contains("</31024/10>"), "{body}");
        // The north listener reassembles Block1 too (issue 8: proxied writes may be long).
        let reply = a
            .request(
                RequestType::Post,
                "/GwConfig/Privileges",
                Some((60, vec![0xa0; 16])),
                None,
                &[(privgw::coap::CoapOption::Block1, vec![0x08])],
            )
            .await
            .expect("answered");
        assert_eq!(reply.code, "2.31", "{}", reply.render());
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn identities_are_never_mixed_between_north_and_registration_listeners() {
    bounded(async {
        let fleet = Fleet::builder()
            .registering("devA", vec![ac(0, 3, 0, SSID_A)])
            .start()
            .await;
        // A device identity on the north listener completes its handshake and is no server:
        // the gateway closes the session at once, so a GET gets no answer at all.
        let mut dev = connect(fleet.coaps(), "devA", "devkey-devA").await;
        let refused = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            dev.request(RequestType::Get, "/GwConfig/Privileges", None, None, &[]),
        )
        .await
        .expect("closed, not left hanging");
        let why = refused.expect_err("a device identity got an answer on the north listener");
        assert!(why.to_string().contains("closed"), "{why}");
        // A server identity on a registration listener is refused at the handshake.
        let refused = GatewayClient::connect(
            fleet.lwm2m_uri(0),
            Some((b"serverA".to_vec(), b"secretA".to_vec())),
        )
        .await;
        assert!(
            refused.is_err(),
            "serverA's PSK opened a registration session"
        );
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_device_that_has_not_registered_is_unreachable_not_registered() {
    bounded(async {
        let fleet = Fleet::builder()
            .registering_with("devA", &[], vec![ac(0, 3, 0, SSID_A)], |_| {})
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "5.04", "{}", reply.render());
        let body = reply.render();
        assert!(
            body.contains("unreachable") && body.contains("not registered"),
            "{body}"
        );
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_expired_registration_ends_and_the_device_is_unreachable() {
    bounded(async {
        let fleet = Fleet::builder()
            .registering_with("devA", &[0], vec![ac(0, 3, 0, SSID_A)], |c| {
                c.lifetime_s = Some(2)
            })
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        // Stopped without a De-register (as real clients on SIGTERM): the lifetime ends it.
        let mut fleet = fleet;
        fleet.stop_device("devA").await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerA").await;
        assert_eq!(reply.code, "5.04", "{}", reply.render());
        assert!(
            reply.render().contains("not registered"),
            "{}",
            reply.render()
        );
        fleet.stop().await;
    })
    .await;
}

/// After a restart the gateway knows no registration: over UDP the device's next Update gets
/// 4.04; over DTLS it is dropped (the new gateway has no session) until it times out. Either
/// way the device registers again and is read as before.
async fn register_again_after_restart(scheme: Scheme) {
    let mut fleet = Fleet::builder()
        .lwm2m_listen(&[(scheme, None)])
        .registering_with("devA", &[0], vec![ac(0, 3, 0, SSID_A)], |c| {
            c.lifetime_s = Some(4);
            c.ack_timeout_ms = Some(100);
        })
        .start()
        .await;
    let before = fleet.device("devA").locations();
    fleet.restart_gateway().await;
    let mut registered_again = false;
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = fleet.device("devA").locations();
        if now[0].is_some() && now != before {
            registered_again = true;
            break;
        }
    }
    assert!(registered_again, "devA did not register again: {before:?}");
    let mut a = fleet.server_a().await;
    let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
    assert_eq!(reply.code, "2.01", "{}", reply.render());
    fleet.stop().await;
}

#[tokio::test]
async fn devices_register_again_after_a_gateway_restart_over_udp() {
    bounded(register_again_after_restart(Scheme::Coap)).await;
}

#[tokio::test]
async fn devices_register_again_after_a_gateway_restart_over_dtls() {
    bounded(register_again_after_restart(Scheme::Coaps)).await;
}

#[tokio::test]
async fn a_read_for_a_sleeping_queue_mode_device_waits_for_its_next_register() {
    bounded(async {
        let fleet = Fleet::builder()
            .lwm2m_toml("queue_awake_s = 1")
            .registering_with("devA", &[0], vec![ac(0, 3, 0, SSID_A)], |c| {
                c.queue = true;
                c.queue_awake_s = Some(1);
                c.lifetime_s = Some(6); // an Update (here: a fresh Register) every 3 s
            })
            .start()
            .await;
        // Wait until it sleeps (its session closed).
        for _ in 0..40 {
            if fleet.device("devA").locations()[0].is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            fleet.device("devA").locations()[0].is_none(),
            "devA never slept"
        );
        let mut a = fleet.server_a().await;
        let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        // Its one registration (the gateway's own account) is what it was read over.
        let dev = fleet.device("devA");
        assert!(
            dev.requests_from(fleet.lwm2m_uri(0).addr) >= 1,
            "not read over its registration"
        );
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_queue_mode_device_asleep_past_the_deadline_is_unreachable_asleep() {
    bounded(async {
        let fleet = Fleet::builder()
            .device_timeout_ms(1000)
            .lwm2m_toml("queue_awake_s = 1")
            .registering_with("devA", &[0], vec![ac(0, 3, 0, SSID_A)], |c| {
                c.queue = true;
                c.queue_awake_s = Some(1);
                c.lifetime_s = Some(60)
            })
            .start()
            .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut a = fleet.server_a().await;
        let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "5.04", "{}", reply.render());
        assert!(
            reply.render().contains("queue mode: asleep"),
            "{}",
            reply.render()
        );
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_device_with_two_accounts_holds_two_registrations() {
    bounded(async {
        let fleet = Fleet::builder()
            .lwm2m_listen(&[(Scheme::Coaps, None), (Scheme::Coaps, Some("ServerA"))])
            .registering_with("devA", &[0, 1], vec![ac(0, 3, 0, SSID_A)], |_| {})
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let reply = get(&mut a, "/GwConfig/Devices/devA").await;
        assert_eq!(reply.code, "2.05", "{}", reply.render());
        let body = reply.render();
        for needle in [
            "Account: \"gateway\"",
            "Account: \"ServerA\"",
            "LwM2M: \"1.1\"",
            "Transport: \"Dtls\"",
            "</3/0>",
        ] {
            assert!(body.contains(needle), "{needle} missing: {body}");
        }
        let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        // Server A's question went over A's account, so the device judged it as A.
        let dev = fleet.device("devA");
        assert!(
            dev.requests_from(fleet.lwm2m_uri(1).addr) >= 1,
            "not read over A's account"
        );
        assert_eq!(
            dev.requests_from(fleet.lwm2m_uri(0).addr),
            0,
            "read over the gateway's own"
        );
        fleet.stop().await;
    })
    .await;
}

/// A device registering over DTLS-X.509: its certificate (verified to the gateway's `ca`)
/// must match its `cert_match`; devB's certificate claiming devA's endpoint is refused.
#[tokio::test]
async fn devices_register_over_dtls_x509_and_a_certificate_of_another_device_is_refused() {
    bounded(async {
        let with_cert = |name: &str| {
            let certs = CertPaths::committed(name);
            move |c: &mut privgw::device::DeviceSimConfig| {
                c.psk_identity = None;
                c.psk_key = None;
                c.cert = Some(certs.cert.clone());
                c.key = Some(certs.key.clone());
                c.ca = Some(certs.ca.clone());
            }
        };
        let fleet = Fleet::builder()
            .gateway_certs(CertPaths::committed("gateway"))
            .registering_with("devA", &[0], vec![ac(0, 3, 0, SSID_A)], with_cert("devA"))
            .device_toml("devA", r#"cert_match = "cn:devA""#)
            .registering_with("devB", &[], vec![], |_| {})
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        let reply = get(&mut a, "/GwConfig/Devices/devA").await;
        assert!(
            reply.render().contains("Transport: \"Dtls\""),
            "{}",
            reply.render()
        );

        // devB's certificate (same CA) registering as devA: the channel proves devB.
        let impostor = privgw::device::DeviceSimConfig {
            id: "devA".into(),
            register: vec![fleet.lwm2m_uri(0).to_string()],
            profile: "lwm2m".into(),
            lifetime_s: Some(60),
            ..Default::default()
        };
        let mut impostor = impostor;
        with_cert("devB")(&mut impostor);
        let dev = privgw::device::RunningDevice::start(&impostor)
            .await
            .unwrap();
        assert!(
            !dev.wait_registered(Duration::from_secs(2)).await,
            "devB's certificate registered as devA"
        );
        dev.stop().await;
        fleet.stop().await;
    })
    .await;
}

/// A registered LwM2M 1.1 device without TLV and SenML-CBOR (4.06 to those): the gateway
/// walks on to SenML-JSON, and remembers it, so the next read asks once.
#[tokio::test]
async fn the_gateway_falls_back_to_a_format_the_device_has_and_remembers_it() {
    bounded(async {
        let fleet = Fleet::builder()
            .registering_with("devA", &[0], vec![ac(0, 3, 0, SSID_A)], |c| {
                c.formats = vec![110]; // SenML-JSON only
            })
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let before = fleet.device("devA").requests();
        let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        let first = fleet.device("devA").requests() - before;
        assert_eq!(first, 3, "TLV (4.06), SenML-CBOR (4.06), SenML-JSON (2.05)");
        let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerA").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        let second = fleet.device("devA").requests() - before - first;
        assert_eq!(second, 1, "SenML-JSON first this time");
        fleet.stop().await;
    })
    .await;
}

/// A device that registered as LwM2M 1.0 is read in TLV only: a 4.06 to TLV is its answer.
#[tokio::test]
async fn an_lwm2m_1_0_device_is_asked_for_tlv_only() {
    bounded(async {
        let fleet = Fleet::builder()
            .registering_with("devA", &[0], vec![ac(0, 3, 0, SSID_A)], |c| {
                c.lwm2m_version = Some("1.0".into());
                c.formats = vec![110];
            })
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let before = fleet.device("devA").requests();
        let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "5.02", "{}", reply.render());
        assert!(
            reply.render().contains("device answered 4.06"),
            "{}",
            reply.render()
        );
        assert_eq!(fleet.device("devA").requests() - before, 1);
        fleet.stop().await;
    })
    .await;
}
