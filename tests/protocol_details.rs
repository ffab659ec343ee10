//! Protocol details (issue 6 item 8): what is read from a device is bounded and a device's
//! words are cut short in `Detail`; proxy requests are refused; NON answers have a random
//! first MID; POST and PUT on the next generated name serialise; duplicate suppression of an
//! Add survives a restart of the gateway on the same store.

mod support;

use privgw::coap::{self, CoapOption, MessageType, Packet, RequestType};
use privgw::config::Scheme;
use privgw::mo::Value;
use support::*;

/// A NoSec gateway (server A known by 127.0.0.1) over two LwM2M devices in G1.
async fn nosec_fleet() -> Fleet {
    Fleet::builder()
        .lwm2m("devA", vec![ac(0, 3, 0, SSID_A), ac(1, 4, 0, SSID_A)])
        .lwm2m("devB", vec![ac(0, 3, 0, SSID_A), ac(1, 4, 0, SSID_A)])
        .group("G1", &["devA", "devB"])
        .listen(&["coaps://127.0.0.1:0", "coap://127.0.0.1:0"])
        .nosec("ServerA", "127.0.0.1")
        .start()
        .await
}

/// The `Detail` strings of a reply's `Failed` list.
fn details(reply: &privgw::cli::ctl::Reply) -> Vec<String> {
    reply
        .document
        .as_ref()
        .and_then(|d| d.get("Failed"))
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(|f| f.get("Detail").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A DM device with a 10 KB malformed ACL (read whole, quoted in 200 characters) and one
/// with a 300 KB ACL (not read past the device links' body limit, here 16 KiB — the larger
/// of 16 KiB and `[proxy] max_body_bytes`): both `bad-acl`, the answer stays small. Before,
/// the 300 KB ACL came back whole in a 300 KB 5.02.
#[tokio::test]
async fn huge_device_acls_are_capped_and_details_truncated() {
    bounded(async {
        let malformed = format!("Replace={}&&", "a".repeat(10_000));
        let huge = format!("Replace={}&&", "b".repeat(300_000));
        let fleet = Fleet::builder()
            .dm("devM", &[("/3/0", &malformed)])
            .dm("devN", &[("/3/0", &huge)])
            .group("G1", &["devM", "devN"])
            .device_timeout_ms(10_000)
            .proxy_toml("max_body_bytes = 16384")
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let reply = add(&mut a, "G1", "Group", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "5.02", "{}", reply.render());
        assert_eq!(
            failures(&reply),
            pairs(&[("devM", "bad-acl"), ("devN", "bad-acl")])
        );
        for d in details(&reply) {
            assert!(
                d.chars().count() <= 200,
                "{} chars: {d:.300}",
                d.chars().count()
            );
        }
        assert!(
            details(&reply)[1].contains("16384"),
            "{:?}",
            details(&reply)
        );
        assert!(reply.payload.len() < 1024, "{} bytes", reply.payload.len());
        fleet.stop().await;
    })
    .await;
}

/// Proxy-Uri and Proxy-Scheme get 5.05 Proxying Not Supported, token and MID echoed, even
/// with a path the gateway serves (a Proxy-Scheme GET on the collection was served 2.05).
#[tokio::test]
async fn proxy_options_are_answered_5_05() {
    bounded(async {
        let fleet = nosec_fleet().await;
        let socket = raw_socket(fleet.uri(Scheme::Coap).addr).await;
        let mut by_uri = request_packet(
            MessageType::Confirmable,
            RequestType::Get,
            0x0505,
            &[5],
            "/",
        );
        by_uri.clear_option(CoapOption::UriPath);
        by_uri.add_option(CoapOption::ProxyUri, b"coap://192.0.2.1/3/0".to_vec());
        let answer = exchange(&socket, &by_uri).await;
        assert_eq!(coap::code_string(answer.header.code), "5.05");
        assert_eq!(answer.header.message_id, 0x0505);
        assert_eq!(answer.get_token(), [5]);

        let mut by_scheme = request_packet(
            MessageType::Confirmable,
            RequestType::Get,
            0x0506,
            &[6],
            "/GwConfig/Privileges",
        );
        by_scheme.add_option(CoapOption::ProxyScheme, b"coap".to_vec());
        let answer = exchange(&socket, &by_scheme).await;
        assert_eq!(coap::code_string(answer.header.code), "5.05");
        assert_eq!(fleet.total_requests(), 0);
        fleet.stop().await;
    })
    .await;
}

/// Each session numbers its NON responses from its own random MID (RFC 7252 §4.4): three
/// sessions do not all start at the same MID (they all started at 0).
#[tokio::test]
async fn non_response_mids_start_at_a_random_value_per_session() {
    bounded(async {
        let fleet = nosec_fleet().await;
        let mut firsts = Vec::new();
        for i in 0..3u8 {
            let socket = raw_socket(fleet.uri(Scheme::Coap).addr).await;
            let get = request_packet(
                MessageType::NonConfirmable,
                RequestType::Get,
                0x1000 + u16::from(i),
                &[i],
                "/GwConfig/Privileges",
            );
            let answer = exchange(&socket, &get).await;
            assert_eq!(answer.header.get_type(), MessageType::NonConfirmable);
            assert_eq!(coap::code_string(answer.header.code), "2.05");
            // The next NON answer on the same session counts up from there.
            let mut again = get.clone();
            again.header.message_id += 16;
            let second = exchange(&socket, &again).await;
            assert_eq!(
                second.header.message_id,
                answer.header.message_id.wrapping_add(1)
            );
            firsts.push(answer.header.message_id);
        }
        assert!(
            firsts.windows(2).any(|w| w[0] != w[1]),
            "every session started at MID {}",
            firsts[0]
        );
        fleet.stop().await;
    })
    .await;
}

/// The Location-Path of a raw answer, joined.
fn location_of(p: &Packet) -> String {
    p.get_option(CoapOption::LocationPath)
        .map(|segs| {
            segs.iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_default()
}

/// A POST and a plain PUT on the name the POST will be given run concurrently. Every
/// outcome must be one some serial order explains: POST first (POST 2.01 at that name, PUT
/// 2.04 replacing it) or PUT first (PUT 2.01 there, POST 2.01 at the next name). Before,
/// the PUT got a 4.12 (it saw no entry, and the POST committed that name meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_post_and_put_on_the_next_generated_name_serialise() {
    bounded(async {
        let fleet = Fleet::builder()
            .lwm2m("devA", vec![ac(0, 3, 0, SSID_A), ac(1, 4, 0, SSID_A)])
            .lwm2m("devB", vec![ac(0, 3, 0, SSID_A), ac(1, 4, 0, SSID_A)])
            .group("G1", &["devA", "devB"])
            .start()
            .await;
        let mut poster = fleet.server_a().await;
        let mut putter = fleet.server_a().await;
        let mut next = 1u32;
        for round in 0..20 {
            let name = format!("p{next}");
            let body = privgw::cli::ctl::privilege_body("G1", "Group", "/4/0", "Get=ServerB");
            let (posted, put_reply) = tokio::join!(
                add(&mut poster, "G1", "Group", "/3/0", "Get=ServerB"),
                put(&mut putter, &name, &body, &[]),
            );
            assert_eq!(posted.code, "2.01", "round {round}: {}", posted.render());
            let posted_at = posted.location.clone().unwrap_or_default();
            let post_first = posted_at == format!("/GwConfig/Privileges/{name}");
            if post_first {
                assert_eq!(
                    put_reply.code,
                    "2.04",
                    "round {round}: {}",
                    put_reply.render()
                );
                next += 1;
            } else {
                assert_eq!(
                    put_reply.code,
                    "2.01",
                    "round {round}: {}",
                    put_reply.render()
                );
                assert_eq!(
                    posted_at,
                    format!("/GwConfig/Privileges/p{}", next + 1),
                    "round {round}"
                );
                next += 2;
            }
        }
        fleet.stop().await;
    })
    .await;
}

/// Duplicate suppression survives a restart: a CON POST committed before the gateway went
/// down, retransmitted (same MID, token and payload) to the gateway restarted on the same
/// store, gets the same 2.01 and Location-Path and creates no second entry. Before, the
/// retransmission was executed again (a second entry, p2).
#[tokio::test]
async fn a_retransmitted_add_after_a_restart_is_answered_from_the_store() {
    bounded(async {
        let mut fleet = nosec_fleet().await;
        let socket = raw_socket(fleet.uri(Scheme::Coap).addr).await;
        let post = add_packet(
            MessageType::Confirmable,
            0x7777,
            &[7, 7, 7, 7],
            ("devA", "Device", "/3/0"),
            "Get=ServerB",
        );
        let first = exchange(&socket, &post).await;
        assert_eq!(coap::code_string(first.header.code), "2.01");
        assert_eq!(location_of(&first), "GwConfig/Privileges/p1");
        let asked = fleet.total_requests();

        fleet.restart_gateway().await;
        // The same client socket, retransmitting to the restarted gateway.
        socket.connect(fleet.uri(Scheme::Coap).addr).await.unwrap();
        let again = exchange(&socket, &post).await;
        assert_eq!(coap::code_string(again.header.code), "2.01");
        assert_eq!(location_of(&again), "GwConfig/Privileges/p1");
        assert_eq!(again.header.message_id, 0x7777);
        assert_eq!(again.get_token(), [7, 7, 7, 7]);
        assert_eq!(again.payload, first.payload, "the recorded answer");
        assert_eq!(fleet.total_requests(), asked, "not verified again");

        // A new request (new MID) with the same body is a new Add.
        let mut fresh = post.clone();
        fresh.header.message_id = 0x7778;
        let answer = exchange(&socket, &fresh).await;
        assert_eq!(coap::code_string(answer.header.code), "2.01");
        assert_eq!(location_of(&answer), "GwConfig/Privileges/p2");
        let mut a = fleet.server_a().await;
        assert_eq!(privilege_names(&mut a).await, ["p1", "p2"]);
        fleet.stop().await;
    })
    .await;
}
