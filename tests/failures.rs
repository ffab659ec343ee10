//! Devices that do not say yes: unreachable (DTLS and plain), garbage, 5.00, mixed groups, and
//! large groups whose `Failed` list does not fit one message: the error answer is truncated
//! (never Block2, never ETag) and names a report only the requester may read. A failed
//! verification commits nothing.

mod support;

use std::time::{Duration, Instant};

use privgw::cli::ctl::GatewayClient;
use privgw::coap::{self, CoapOption, MessageClass, MessageType, Packet, RequestType};
use privgw::config::Scheme;
use privgw::device::Behaviour;
use privgw::mo::Value;
use support::*;

const DEVICE_TIMEOUT_MS: u64 = 800;
/// Scheduling and handshake slack on top of the device deadline.
const SLACK: Duration = Duration::from_millis(1200);

/// The device deadline (DEVICE_TIMEOUT_MS) and a short CoAP ACK timeout, for fleets with
/// unreachable devices.
fn short_deadlines(b: FleetBuilder) -> FleetBuilder {
    b.device_timeout_ms(DEVICE_TIMEOUT_MS).ack_timeout_ms(200)
}

/// Server A's Add of `uri` on `target` (a `kind`, "Get=ServerB") is answered `code` with
/// Status `status_code` and exactly the `failed` (DeviceID, reason) pairs.
async fn add_fails(
    a: &mut GatewayClient,
    (target, kind, uri): (&str, &str, &str),
    code: &str,
    status_code: i64,
    failed: &[(&str, &str)],
) {
    let reply = add(a, target, kind, uri, "Get=ServerB").await;
    assert_eq!(reply.code, code, "{}", reply.render());
    assert_eq!(status(&reply), Some(status_code));
    assert_eq!(failures(&reply), pairs(failed));
}

async fn unreachable_device(scheme: Scheme) {
    let fleet = short_deadlines(Fleet::builder().dead("devX", scheme))
        .start()
        .await;
    assert_eq!(fleet.device_uri("devX").scheme, scheme);
    let mut a = fleet.server_a().await;
    let started = Instant::now();
    let reply = add(&mut a, "devX", "Device", "/3/0", "Get=ServerB").await;
    let elapsed = started.elapsed();
    assert_eq!(reply.code, "5.04", "{}", reply.render());
    assert_eq!(status(&reply), Some(504));
    assert_eq!(failures(&reply), pairs(&[("devX", "unreachable")]));
    assert!(
        elapsed <= Duration::from_millis(DEVICE_TIMEOUT_MS) + SLACK,
        "answered after {elapsed:?}"
    );
    assert!(privilege_names(&mut a).await.is_empty());
    fleet.stop().await;
}

#[tokio::test]
async fn unreachable_coaps_device_is_5_04_unreachable_within_deadline() {
    bounded(unreachable_device(Scheme::Coaps)).await;
}

#[tokio::test]
async fn unreachable_plain_coap_device_is_5_04_unreachable_within_deadline() {
    bounded(unreachable_device(Scheme::Coap)).await;
}

#[tokio::test]
async fn garbage_lwm2m_device_is_5_02_bad_acl() {
    bounded(async {
        let fleet = Fleet::builder()
            .lwm2m_with("devG", None, Behaviour::Garbage, vec![ac(0, 3, 0, SSID_A)])
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let target = ("devG", "Device", "/3/0");
        add_fails(&mut a, target, "5.02", 500, &[("devG", "bad-acl")]).await;
        assert!(privilege_names(&mut a).await.is_empty());
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn garbage_dm_device_is_5_02_bad_acl() {
    bounded(async {
        let fleet = Fleet::builder()
            .dm_with(
                "devG",
                None,
                Behaviour::Garbage,
                &[("/3/0", "Replace=ServerA")],
            )
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let target = ("devG", "Device", "/3/0");
        add_fails(&mut a, target, "5.02", 500, &[("devG", "bad-acl")]).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn server_error_device_is_5_02_device_error() {
    bounded(async {
        let fleet = Fleet::builder()
            .lwm2m_with(
                "devE",
                None,
                Behaviour::ServerError,
                vec![ac(0, 3, 0, SSID_A)],
            )
            .dm_with(
                "devF",
                None,
                Behaviour::ServerError,
                &[("/3/0", "Replace=ServerA")],
            )
            .group("G", &["devE", "devF"])
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let target = ("devE", "Device", "/3/0");
        add_fails(&mut a, target, "5.02", 500, &[("devE", "device-error")]).await;
        let reply = add(&mut a, "G", "Group", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "5.02", "{}", reply.render());
        assert_eq!(
            failures(&reply),
            pairs(&[("devE", "device-error"), ("devF", "device-error")])
        );
        assert!(privilege_names(&mut a).await.is_empty());
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn mixed_group_denied_and_unreachable_is_4_03_listing_both_sorted() {
    bounded(async {
        // Members listed out of order: the answer must sort by DeviceID.
        let fleet = short_deadlines(
            Fleet::builder()
                .lwm2m("devZ", vec![ac(0, 3, 0, SSID_B)])
                .lwm2m("devM", vec![ac(0, 3, 0, SSID_A)])
                .dead("devA", Scheme::Coaps)
                .group("G", &["devZ", "devM", "devA"]),
        )
        .start()
        .await;
        let mut a = fleet.server_a().await;
        let failed = [("devA", "unreachable"), ("devZ", "denied")];
        add_fails(&mut a, ("G", "Group", "/3/0"), "4.03", 425, &failed).await;
        assert!(privilege_names(&mut a).await.is_empty());
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn failed_verification_commits_nothing() {
    bounded(async {
        let fleet = Fleet::builder()
            .lwm2m("devA", vec![ac(0, 3, 0, SSID_A)])
            .lwm2m("devB", vec![ac(0, 3, 0, SSID_B)])
            .group("G", &["devA", "devB"])
            .start()
            .await;
        let mut a = fleet.server_a().await;
        // POST (gateway-named) and PUT (client-named) both fail on devB.
        let reply = add(&mut a, "G", "Group", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        let body = privgw::cli::ctl::privilege_body("G", "Group", "/3/0", "Get=ServerB");
        let reply = put(&mut a, "mine", &body, &[]).await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        assert_eq!(failures(&reply), pairs(&[("devB", "denied")]));

        let list = get(&mut a, "/GwConfig/Privileges").await;
        assert_eq!(list.code, "2.05");
        assert_eq!(list.document, Some(privgw::mo::Value::Map(Vec::new())));
        let named = get(&mut a, "/GwConfig/Privileges/mine").await;
        assert_eq!(named.code, "4.04", "{}", named.render());
        fleet.stop().await;
    })
    .await;
}

const N: usize = 40;

/// The DeviceIDs `dev00`..`dev39`.
fn forty_ids() -> Vec<String> {
    (0..N).map(|i| format!("dev{i:02}")).collect()
}

/// 40 devices that deny server A, in group G (members in a scrambled order: 7 is coprime
/// with 40), with a NoSec listener for server A at 127.0.0.1 next to `coaps://`.
async fn forty_denying_devices() -> Fleet {
    let ids = forty_ids();
    let mut b = Fleet::builder()
        .listen(&["coaps://127.0.0.1:0", "coap://127.0.0.1:0"])
        .nosec("ServerA", "127.0.0.1");
    for id in &ids {
        b = b.lwm2m(id, vec![ac(0, 3, 0, SSID_B)]);
    }
    let members: Vec<&str> = (0..N).map(|i| ids[(i * 7) % N].as_str()).collect();
    b.group("G", &members).start().await
}

/// The 40 denying devices in group G in id order, with a NoSec listener for server A at
/// 127.0.0.1 on `coap+tcp://` next to `coaps://`.
async fn forty_denying_devices_over_tcp() -> Fleet {
    let ids = forty_ids();
    let mut b = Fleet::builder()
        .listen(&["coaps://127.0.0.1:0", "coap+tcp://127.0.0.1:0"])
        .nosec("ServerA", "127.0.0.1");
    for id in &ids {
        b = b.lwm2m(id, vec![ac(0, 3, 0, SSID_B)]);
    }
    b.group("G", &ids.iter().map(String::as_str).collect::<Vec<_>>())
        .start()
        .await
}

/// The `Report` path of a truncated failure answer, after checking its shape: FailedCount
/// `N`, `Truncated: true`, and a sorted prefix of the DeviceIDs without `Detail`.
fn truncated_report(reply: &privgw::cli::ctl::Reply) -> String {
    let doc = reply.document.as_ref().expect("a CBOR or JSON body");
    assert_eq!(status(reply), Some(425));
    assert_eq!(
        doc.get("FailedCount").and_then(Value::as_int),
        Some(N as i64)
    );
    assert_eq!(doc.get("Truncated").and_then(Value::as_bool), Some(true));
    let kept = reply.failed_ids();
    assert!(!kept.is_empty() && kept.len() < N, "kept {}", kept.len());
    assert_eq!(kept, forty_ids()[..kept.len()], "a sorted prefix");
    let entries = doc.get("Failed").and_then(Value::as_array).unwrap();
    assert!(
        entries.iter().all(|e| e.get("Detail").is_none()),
        "Detail dropped first"
    );
    let report = text(doc, "Report").expect("a Report path").to_owned();
    let id = report
        .strip_prefix("/GwConfig/Reports/")
        .unwrap_or_else(|| panic!("Report {report}"));
    assert!(
        id.len() >= 32 && id.bytes().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    report
}

/// The complete report: 2.05, FailedCount N and every device, sorted, each with a Detail.
fn assert_complete_report(reply: &privgw::cli::ctl::Reply) {
    assert_eq!(reply.code, "2.05", "{}", reply.render());
    let doc = reply.document.as_ref().expect("a document");
    assert_eq!(status(reply), Some(425));
    assert_eq!(
        doc.get("FailedCount").and_then(Value::as_int),
        Some(N as i64)
    );
    assert_eq!(reply.failed_ids(), forty_ids());
    let entries = doc.get("Failed").and_then(Value::as_array).unwrap();
    assert!(
        entries
            .iter()
            .all(|e| text(e, "Detail").is_some_and(|d| !d.is_empty()))
    );
    assert!(doc.get("Truncated").is_none());
}

#[tokio::test]
async fn forty_denied_devices_get_a_truncated_answer_and_a_private_report() {
    bounded(async {
        let fleet = forty_denying_devices().await;
        let mut a = fleet.server_a().await;
        let reply = add(&mut a, "G", "Group", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        // One 1024-byte block: the client did not reassemble a Block2 transfer.
        assert!(reply.payload.len() <= 1024, "{} bytes", reply.payload.len());
        let report = truncated_report(&reply);
        for (id, n) in fleet.requests() {
            assert!(n >= 1, "{id} was not asked");
        }
        assert!(privilege_names(&mut a).await.is_empty());

        // The report is larger than one message: 2.05 with Block2, reassembled here.
        let full = get(&mut a, &report).await;
        assert!(full.payload.len() > 1024, "{} bytes", full.payload.len());
        assert_complete_report(&full);
        let json = a
            .request(RequestType::Get, &report, None, Some(50), &[])
            .await
            .expect("GET answered");
        assert_eq!(json.content_format, Some(50));
        assert_complete_report(&json);

        // Another server cannot read it, nor tell it from an unknown id.
        let mut b = fleet.server_b().await;
        let refused = get(&mut b, &report).await;
        assert_eq!(refused.code, "4.04", "{}", refused.render());
        let unknown = get(&mut b, "/GwConfig/Reports/00000000000000000000000000000000").await;
        assert_eq!(unknown.code, "4.04", "{}", unknown.render());
        assert_eq!(refused.payload.len(), unknown.payload.len());
        fleet.stop().await;
    })
    .await;
}

/// The answer on the wire (NoSec, a raw socket): a NON POST of the Add, optionally with a
/// Block2 option (client block size) and an Accept.
async fn raw_add(fleet: &Fleet, block2: Option<u8>, accept: Option<u16>) -> Packet {
    let socket = raw_socket(fleet.uri(Scheme::Coap).addr).await;
    let mut p = add_packet(
        MessageType::NonConfirmable,
        0x7001,
        &[7, 0, 0, 1],
        ("G", "Group", "/3/0"),
        "Get=ServerB",
    );
    if let Some(a) = accept {
        coap::set_accept(&mut p, a);
    }
    if let Some(szx) = block2 {
        p.add_option(CoapOption::Block2, vec![szx]);
    }
    socket.send(&coap::encode(&p).unwrap()).await.unwrap();
    let mut buf = vec![0u8; 2048];
    // Bounded: a handful of datagrams at most (an empty ACK would be skipped).
    for _ in 0..8 {
        let n = tokio::time::timeout(Duration::from_secs(20), socket.recv(&mut buf))
            .await
            .expect("an answer within 20 s")
            .unwrap();
        let answer = coap::decode(&buf[..n]).expect("a CoAP message");
        if answer.header.code != MessageClass::Empty {
            return answer;
        }
    }
    panic!("no answer with a code");
}

fn raw_document(p: &Packet) -> Value {
    match coap::content_format(p) {
        Some(60) => Value::from_cbor(&p.payload).unwrap(),
        Some(50) => Value::from_json(&p.payload).unwrap(),
        other => panic!("content format {other:?}"),
    }
}

/// A raw answer (`case` names it) is a 4.03 in one message, with no Block2 and no ETag, and
/// its document is truncated: `Truncated: true`, FailedCount `N`, and a `Report`.
fn assert_truncated_in_one_message(answer: &Packet, case: &str) {
    assert_eq!(
        answer.header.code,
        MessageClass::Response(coap::ResponseType::Forbidden),
        "{case}"
    );
    assert!(
        answer.get_first_option(CoapOption::Block2).is_none(),
        "{case}"
    );
    assert!(
        answer.get_first_option(CoapOption::ETag).is_none(),
        "{case}"
    );
    let doc = raw_document(answer);
    assert_eq!(
        doc.get("Truncated").and_then(Value::as_bool),
        Some(true),
        "{case}"
    );
    assert_eq!(
        doc.get("FailedCount").and_then(Value::as_int),
        Some(N as i64),
        "{case}"
    );
    assert!(text(&doc, "Report").is_some(), "{case}");
}

#[tokio::test]
async fn truncated_failure_answers_carry_no_block2_and_no_etag_on_the_wire() {
    bounded(async {
        let fleet = forty_denying_devices().await;
        // (client block size as SZX, Accept, payload budget)
        for (block2, accept, budget) in [
            (None, None, 1024),
            (None, Some(50), 1024),
            (Some(4u8), None, 256),
            (Some(3u8), Some(50), 128),
        ] {
            let answer = raw_add(&fleet, block2, accept).await;
            let case = format!("Block2 SZX {block2:?}, Accept {accept:?}");
            assert_truncated_in_one_message(&answer, &case);
            assert!(
                answer.get_first_option(CoapOption::Size2).is_none(),
                "{case}"
            );
            assert!(
                answer.payload.len() <= budget,
                "{case}: {}",
                answer.payload.len()
            );
        }
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_failure_list_that_fits_the_peers_message_size_goes_whole_over_tcp() {
    bounded(async {
        let fleet = forty_denying_devices_over_tcp().await;
        // GatewayClient's CSM allows 1 MiB: today's shape, whole, with every Detail.
        let mut tcp = fleet.tcp_client().await;
        let reply = add(&mut tcp, "G", "Group", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        assert!(reply.payload.len() > 1024, "{} bytes", reply.payload.len());
        assert_eq!(reply.failed_ids(), forty_ids());
        let doc = reply.document.as_ref().unwrap();
        assert!(doc.get("Truncated").is_none() && doc.get("Report").is_none());
        fleet.stop().await;
    })
    .await;
}

/// One request over `coap+tcp://` from a raw RFC 8323 connection whose CSM advertises
/// `max_message_size`; the answer and its frame size.
async fn raw_tcp_add(addr: std::net::SocketAddr, max_message_size: u32) -> (Packet, usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut conn = coap::StreamConnection::new(Instant::now(), max_message_size, true);
    let mut p = Packet::new();
    p.header.code = MessageClass::Request(RequestType::Post);
    p.set_token(vec![7, 0, 0, 2]);
    coap::set_uri(&mut p, "/GwConfig/Privileges");
    coap::set_content_format(&mut p, 60);
    p.payload = privgw::cli::ctl::privilege_body("G", "Group", "/3/0", "Get=ServerB").to_cbor();
    conn.send(&p).expect("encode the request");
    let mut buf = vec![0u8; 64 * 1024];
    // Bounded: the CSM, the answer, and a few reads of them.
    for _ in 0..64 {
        while let Some(bytes) = conn.poll_transmit() {
            tcp.write_all(&bytes).await.expect("write");
        }
        while let Some(event) = conn.poll_event() {
            if let coap::StreamEvent::Response(answer) = event {
                let size = coap::encode_frame(&answer).expect("re-encode").len();
                return (answer, size);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf))
            .await
            .expect("bytes within 20 s")
            .expect("read");
        assert!(n > 0, "the gateway closed the connection");
        conn.handle_bytes(Instant::now(), &buf[..n]);
    }
    panic!("no answer");
}

#[tokio::test]
async fn over_tcp_a_failure_list_is_fitted_to_the_peers_max_message_size() {
    bounded(async {
        let fleet = forty_denying_devices_over_tcp().await;
        for max in [600u32, 1152] {
            let (answer, size) = raw_tcp_add(fleet.coap_tcp().addr, max).await;
            assert_truncated_in_one_message(&answer, &format!("Max-Message-Size {max}"));
            assert!(
                size <= max as usize,
                "a {size}-byte frame for Max-Message-Size {max}"
            );
        }
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn missing_ac_instance_is_4_03_no_acl() {
    bounded(async {
        let fleet = Fleet::builder()
            .lwm2m("devA", vec![ac(0, 3, 0, SSID_A)])
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let target = ("devA", "Device", "/6/0");
        add_fails(&mut a, target, "4.03", 425, &[("devA", "no-acl")]).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn unreachable_and_bad_acl_together_are_5_02_status_500() {
    bounded(async {
        let fleet = short_deadlines(
            Fleet::builder()
                .dead("devX", Scheme::Coaps)
                .lwm2m_with("devG", None, Behaviour::Garbage, vec![ac(0, 3, 0, SSID_A)])
                .group("G", &["devX", "devG"]),
        )
        .start()
        .await;
        let mut a = fleet.server_a().await;
        let failed = [("devG", "bad-acl"), ("devX", "unreachable")];
        add_fails(&mut a, ("G", "Group", "/3/0"), "5.02", 500, &failed).await;
        fleet.stop().await;
    })
    .await;
}
