//! What is refused before any device is asked: the gateway's own ACL on Privileges, unknown
//! or unproven identities (DTLS and NoSec), invalid ACLs, unknown targets and bad URIs.

mod support;

use std::time::Duration;

use privgw::cli::ctl::GatewayClient;
use privgw::coap::{self, MessageType, Packet, RequestType};
use privgw::config::Scheme;
use support::*;

/// A small fleet: two LwM2M devices where A owns /3/0, in group G1.
fn fleet() -> FleetBuilder {
    Fleet::builder()
        .lwm2m("devA", vec![ac(0, 3, 0, SSID_A)])
        .lwm2m("devB", vec![ac(0, 3, 0, SSID_A)])
        .group("G1", &["devA", "devB"])
}

#[tokio::test]
async fn gate_refuses_server_b_add_with_4_03_and_no_device_traffic() {
    bounded(async {
        let fleet = fleet()
            .privileges_acl("Get=*&Add=ServerA&Replace=ServerA&Delete=ServerA")
            .start()
            .await;
        let mut b = fleet.server_b().await;
        let reply = add(&mut b, "G1", "Group", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        assert_eq!(fleet.total_requests(), 0, "{:?}", fleet.requests());
        // Get=* still lets B read.
        assert!(privilege_names(&mut b).await.is_empty());

        // A may add; B may then neither replace nor delete it, and no device hears of it.
        let mut a = fleet.server_a().await;
        let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        let name = reply
            .location
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
        let before = fleet.requests();
        let body = privgw::cli::ctl::privilege_body("devA", "Device", "/3/0", "Get=ServerA");
        let reply = put(&mut b, &name, &body, &[]).await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        let reply = delete(&mut b, &name).await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        assert_eq!(fleet.requests(), before);
        assert_eq!(privilege_names(&mut b).await, [name]);
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn unknown_psk_identity_gets_no_session_and_no_device_is_asked() {
    bounded(async {
        let fleet = fleet().start().await;
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            GatewayClient::connect(
                fleet.coaps(),
                Some((b"mallory".to_vec(), b"secretA".to_vec())),
            ),
        )
        .await;
        assert!(
            matches!(result, Ok(Err(_))),
            "an unknown identity must fail the handshake at once"
        );
        assert_eq!(fleet.total_requests(), 0);
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn wrong_psk_key_gets_no_session_and_no_device_is_asked() {
    bounded(async {
        let fleet = fleet().start().await;
        // A wrong key produces no alert (DTLS drops what it cannot authenticate), so the
        // client's handshake can only fail by timing out (10 s by default); 1.5 s without a
        // session is enough to show there is none.
        let result = tokio::time::timeout(
            Duration::from_millis(1500),
            GatewayClient::connect(
                fleet.coaps(),
                Some((b"serverA".to_vec(), b"not-secretA".to_vec())),
            ),
        )
        .await;
        assert!(
            !matches!(result, Ok(Ok(_))),
            "a wrong key must not yield a session"
        );
        assert_eq!(fleet.total_requests(), 0);
        fleet.stop().await;
    })
    .await;
}

/// One raw NoSec request from `from` to the gateway, and its decoded answer.
async fn raw_request(from: &str, to: std::net::SocketAddr, request: &Packet) -> Packet {
    let socket = tokio::net::UdpSocket::bind(from).await.expect("bind");
    socket
        .send_to(&coap::encode(request).unwrap(), to)
        .await
        .unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    coap::decode(&buf[..n]).expect("a CoAP message")
}

#[tokio::test]
async fn nosec_request_from_unconfigured_address_is_4_01() {
    bounded(async {
        let fleet = fleet()
            .listen(&["coaps://127.0.0.1:0", "coap://127.0.0.1:0"])
            .nosec("ServerA", "127.0.0.1")
            .start()
            .await;
        let gw = fleet.uri(Scheme::Coap).addr;

        // 127.0.0.2 is loopback too, but no server is configured for it.
        let p = add_packet(
            MessageType::Confirmable,
            0x1234,
            &[7, 7],
            ("devA", "Device", "/3/0"),
            "Get=ServerB",
        );
        let answer = raw_request("127.0.0.2:0", gw, &p).await;
        assert_eq!(coap::code_string(answer.header.code), "4.01");
        assert_eq!(answer.get_token(), [7, 7]);
        assert_eq!(fleet.total_requests(), 0);

        // The configured address is server A.
        let mut a = GatewayClient::connect(fleet.uri(Scheme::Coap), None)
            .await
            .unwrap();
        let reply = get(&mut a, "/GwConfig/Privileges").await;
        assert_eq!(reply.code, "2.05", "{}", reply.render());
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn acl_naming_an_unknown_server_is_4_00_with_no_device_traffic() {
    bounded(async {
        let fleet = fleet().start().await;
        let mut a = fleet.server_a().await;
        let reply = add(&mut a, "G1", "Group", "/3/0", "Get=ServerB&Replace=ServerZ").await;
        assert_eq!(reply.code, "4.00", "{}", reply.render());
        let diagnostic = String::from_utf8_lossy(&reply.payload);
        assert!(diagnostic.contains("ServerZ"), "{diagnostic}");
        assert_eq!(fleet.total_requests(), 0);
        assert!(privilege_names(&mut a).await.is_empty());
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn unknown_group_or_device_is_4_04_with_no_device_traffic() {
    bounded(async {
        let fleet = fleet().start().await;
        let mut a = fleet.server_a().await;
        let reply = add(&mut a, "G9", "Group", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "4.04", "{}", reply.render());
        let reply = add(&mut a, "devQ", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "4.04", "{}", reply.render());
        // A group id is not a device id.
        let reply = add(&mut a, "G1", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "4.04", "{}", reply.render());
        assert_eq!(fleet.total_requests(), 0);
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn non_lwm2m_uri_on_an_lwm2m_device_is_4_00_with_no_device_traffic() {
    bounded(async {
        let fleet = fleet().start().await;
        let mut a = fleet.server_a().await;
        for uri in ["/DevInfo/Mod", "/3/x", "/3/00", "/3/65535", "/3/0/1/2/3"] {
            let reply = add(&mut a, "devA", "Device", uri, "Get=ServerB").await;
            assert_eq!(reply.code, "4.00", "{uri}: {}", reply.render());
            let reply = add(&mut a, "G1", "Group", uri, "Get=ServerB").await;
            assert_eq!(reply.code, "4.00", "{uri}: {}", reply.render());
        }
        assert_eq!(fleet.total_requests(), 0);
        assert!(privilege_names(&mut a).await.is_empty());
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn empty_group_is_4_04_with_no_device_traffic() {
    bounded(async {
        let fleet = fleet().group("G0", &[]).start().await;
        let mut a = fleet.server_a().await;
        let reply = add(&mut a, "G0", "Group", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "4.04", "{}", reply.render());
        assert_eq!(fleet.total_requests(), 0);
        assert!(privilege_names(&mut a).await.is_empty());
        fleet.stop().await;
    })
    .await;
}

/// The gate comes before the store: a server without write rights gets 4.03 for an existing
/// and a missing name alike, with and without If-Match / If-None-Match, on leaves and on
/// DELETE, so it cannot tell which privilege names exist (it got 4.12 / 4.04 before).
#[tokio::test]
async fn gate_answers_4_03_before_existence_and_preconditions() {
    bounded(async {
        let fleet = fleet()
            .privileges_acl("Get=ServerA&Add=ServerA&Replace=ServerA&Delete=ServerA")
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let body = privgw::cli::ctl::privilege_body("devA", "Device", "/3/0", "Get=ServerB");
        let if_match = (coap::CoapOption::IfMatch, Vec::new());
        let if_none_match = (coap::CoapOption::IfNoneMatch, Vec::new());
        let reply = put(
            &mut a,
            "exists",
            &body,
            std::slice::from_ref(&if_none_match),
        )
        .await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        let before = fleet.requests();

        let mut b = fleet.server_b().await;
        for name in ["exists", "missing"] {
            for options in [vec![], vec![if_match.clone()], vec![if_none_match.clone()]] {
                let reply = put(&mut b, name, &body, &options).await;
                assert_eq!(
                    reply.code,
                    "4.03",
                    "PUT {name} {options:?}: {}",
                    reply.render()
                );
            }
            let path = format!("/GwConfig/Privileges/{name}");
            let reply = delete(&mut b, name).await;
            assert_eq!(reply.code, "4.03", "DELETE {name}: {}", reply.render());
            for leaf in ["ACL", "Grantor"] {
                let reply = b
                    .request(
                        RequestType::Put,
                        &format!("{path}/{leaf}"),
                        Some((0, b"Get=ServerB".to_vec())),
                        None,
                        &[],
                    )
                    .await
                    .unwrap();
                assert_eq!(reply.code, "4.03", "PUT {name}/{leaf}: {}", reply.render());
            }
            let reply = get(&mut b, &path).await;
            assert_eq!(reply.code, "4.03", "GET {name}: {}", reply.render());
        }
        assert_eq!(fleet.requests(), before, "no device traffic");
        fleet.stop().await;
    })
    .await;
}
