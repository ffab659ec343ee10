//! Protocol details (issue 6 item 8): what is read from a device is bounded and a device's
//! words are cut short in `Detail`; proxy requests are refused; NON answers have a random
//! first MID; POST and PUT on the next generated name serialise; duplicate suppression of an
//! Add survives a restart of the gateway on the same store.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use privgw::coap::{self, CoapOption, MessageClass, MessageType, Packet, RequestType};
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

fn request(t: MessageType, code: RequestType, mid: u16, token: &[u8], path: &str) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(t);
    p.header.code = MessageClass::Request(code);
    p.header.message_id = mid;
    p.set_token(token.to_vec());
    coap::set_uri(&mut p, path);
    p
}

async fn raw_socket(gateway: SocketAddr) -> tokio::net::UdpSocket {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(gateway).await.unwrap();
    socket
}

/// Sends `p` and decodes the answer (within 5 s).
async fn exchange(socket: &tokio::net::UdpSocket, p: &Packet) -> Packet {
    socket.send(&coap::encode(p).unwrap()).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    coap::decode(&buf[..n]).unwrap()
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
/// with a 300 KB ACL (not read past 16 KiB): both `bad-acl`, the answer stays small. Before,
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
        let mut by_uri = request(
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

        let mut by_scheme = request(
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
            let get = request(
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
