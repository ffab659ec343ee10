//! The secure proxy over real sockets (issue 8): server B reaches what it was granted through
//! the gateway and nothing else, with no device traffic for what it is refused.

mod support;

use std::time::Duration;

use privgw::cli::ctl::{GatewayClient, Reply};
use privgw::coap::{self, BlockOption, CoapOption, MessageType, Packet, RequestType};
use privgw::config::Scheme;
use support::*;

/// devA and devB: /3/0 (readable by all) and /4/0 (A only) owned by ServerA, so A may grant
/// them; /3303/0 owned by B, who may read it; in group G1.
fn two_devices() -> FleetBuilder {
    let acs = || {
        vec![
            ac(0, 3, 0, SSID_A),
            ac_with(1, 4, 0, SSID_A, &[(SSID_A, 31)]),
            ac_with(2, 3303, 0, SSID_B, &[(SSID_B, 0x01)]),
        ]
    };
    let temperature = |c: &mut privgw::device::DeviceSimConfig| {
        c.resources.insert("/3303/0/5700".into(), "21.5".into());
    };
    Fleet::builder()
        .lwm2m_adjusted("devA", acs(), temperature)
        .lwm2m_adjusted("devB", acs(), temperature)
        .group("G1", &["devA", "devB"])
}

/// What each device logged since the last call, without the ACL reads.
fn proxied_lines(fleet: &Fleet, id: &str) -> Vec<String> {
    fleet
        .device(id)
        .take_log()
        .into_iter()
        .filter(|l| !l.contains(" /2 ") && !l.contains("/2 ("))
        .collect()
}

#[tokio::test]
async fn b_granted_get_on_g1_reads_every_member_and_is_refused_the_rest_without_device_traffic() {
    bounded(async {
        let fleet = two_devices().start().await;
        let mut a = fleet.server_a().await;
        let reply = add(&mut a, "G1", "Group", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        let mut b = fleet.server_b().await;
        for id in ["devA", "devB"] {
            let reply = get(&mut b, &format!("/{id}/3/0/2")).await;
            assert_eq!(reply.code, "2.05", "{}", reply.render());
            assert_eq!(
                reply.payload,
                id.as_bytes(),
                "the serial number is the device's"
            );
            assert_eq!(reply.content_format, Some(0));
        }
        fleet.device("devA").take_log();
        let before = fleet.total_requests();
        // Get is granted, Replace is not: the privilege decides (no device ACL read).
        let reply = b
            .request(
                RequestType::Put,
                "/devA/3/0/0",
                Some((0, b"x".to_vec())),
                None,
                &[],
            )
            .await
            .unwrap();
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        assert!(
            reply.render().contains("does not grant Replace"),
            "{}",
            reply.render()
        );
        // A path no privilege covers falls back to the device's ACL: /4/0 gives B nothing.
        let reply = get(&mut b, "/devA/4/0").await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        assert_eq!(
            proxied_lines(&fleet, "devA"),
            Vec::<String>::new(),
            "/4/0 never asked"
        );
        let acl_reads = fleet.total_requests() - before;
        assert_eq!(
            acl_reads, 1,
            "one /2 read for the fallback, nothing for the PUT"
        );
        // Within device_acl_ttl_ms the device's ACL is not read again: zero device traffic.
        let reply = get(&mut b, "/devA/4/0/0").await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        assert_eq!(
            fleet.total_requests() - before,
            1,
            "cached ACL, no device traffic"
        );
        // /3303/0 is B's own on the device: its ACL allows B, the request goes through.
        let reply = get(&mut b, "/devB/3303/0/5700").await;
        assert_eq!(
            (reply.code.as_str(), reply.payload.as_slice()),
            ("2.05", &b"21.5"[..])
        );
        // Server A was granted nothing by the privilege but owns /4/0 on the device.
        let reply = get(&mut a, "/devA/3/0/0").await;
        assert_eq!(
            reply.code,
            "4.03",
            "the privilege on /3/0 names only B: {}",
            reply.render()
        );
        let reply = get(&mut a, "/devA/4/0/0").await;
        assert_eq!(
            reply.code, "4.04",
            "allowed by the device ACL; the device has no /4/0/0"
        );
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn routing_discovery_and_refused_options() {
    bounded(async {
        let fleet = two_devices()
            .device_toml("devB", "prefix = \"b\"")
            .start()
            .await;
        let mut b = fleet.server_b().await;
        let reply = get(&mut b, "/nobody/3/0").await;
        assert_eq!(reply.code, "4.04", "{}", reply.render());
        let reply = get(&mut b, "/devB/3/0").await;
        assert_eq!(reply.code, "4.04", "devB is known by its prefix b only");
        let reply = get(&mut b, "/.well-known/core").await;
        let links = String::from_utf8(reply.payload.clone()).unwrap();
        assert!(
            links.contains("</devA>") && links.contains("</b>"),
            "{links}"
        );
        assert!(
            links.contains("</25>") && links.contains("</GwConfig/Privileges>"),
            "{links}"
        );
        let reply = b
            .request(RequestType::Get, "/25", None, Some(110), &[])
            .await
            .unwrap();
        assert_eq!(reply.code, "2.05", "{}", reply.render());
        let senml: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        let text = senml.to_string();
        assert!(
            text.contains("\"devB\"") && text.contains("\"b\""),
            "{text}"
        );
        let before = fleet.total_requests();
        let reply = b
            .request(
                RequestType::Get,
                "/devA/3/0/0",
                None,
                None,
                &[(CoapOption::Unknown(2049), vec![1])],
            )
            .await
            .unwrap();
        assert_eq!(
            reply.code,
            "4.02",
            "unknown critical option: {}",
            reply.render()
        );
        let reply = b
            .request(
                RequestType::Patch,
                "/devA/3/0/0",
                Some((0, vec![1])),
                None,
                &[],
            )
            .await
            .unwrap();
        assert_eq!(reply.code, "4.05", "{}", reply.render());
        assert_eq!(fleet.total_requests(), before, "nothing reached a device");
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn writes_creates_and_deletes_pass_through_with_the_prefix_in_the_location() {
    bounded(async {
        let fleet = two_devices().start().await;
        let mut a = fleet.server_a().await;
        let reply = add(
            &mut a,
            "devA",
            "Device",
            "/3303",
            "Get=ServerB&Replace=ServerB&Add=ServerB&Delete=ServerB",
        )
        .await;
        // /3303/0 belongs to B on the device, so A may not grant it.
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        let reply = add(
            &mut a,
            "devA",
            "Device",
            "/3/0",
            "Get=ServerB&Replace=ServerB",
        )
        .await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        let mut b = fleet.server_b().await;
        let reply = b
            .request(
                RequestType::Put,
                "/devA/3/0/3",
                Some((0, b"2.0".to_vec())),
                None,
                &[],
            )
            .await
            .unwrap();
        assert_eq!(reply.code, "2.04", "{}", reply.render());
        let reply = get(&mut b, "/devA/3/0/3").await;
        assert_eq!(reply.payload, b"2.0", "the write reached the device");
        // B's own object on devB: create and delete by the device's ACL for B... B holds
        // only Read there (0x01), so Create is refused by the device's ACL.
        let reply = b
            .request(
                RequestType::Post,
                "/devB/3303",
                Some((0, b"x".to_vec())),
                None,
                &[],
            )
            .await
            .unwrap();
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        // ServerB owns /3303/0 on devB (owner 102), so the device ACL lets it write there.
        let reply = b
            .request(
                RequestType::Post,
                "/devB/3303/0",
                Some((0, b"y".to_vec())),
                None,
                &[],
            )
            .await
            .unwrap();
        assert_eq!(reply.code, "2.04", "{}", reply.render());
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_long_resource_is_served_at_the_servers_block_size_and_a_long_write_is_reassembled() {
    bounded(async {
        let long: String = (0..3000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let acs = vec![ac(0, 3, 0, SSID_A)];
        let value = long.clone();
        let fleet = Fleet::builder()
            .listen(&["coaps://127.0.0.1:0", "coap://127.0.0.1:0"])
            .nosec("ServerB", "127.0.0.1")
            .lwm2m_adjusted("devA", acs, move |c| {
                c.resources.insert("/3/0/9".into(), value);
            })
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let reply = add(
            &mut a,
            "devA",
            "Device",
            "/3/0",
            "Get=ServerB&Replace=ServerB",
        )
        .await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        let socket = raw_socket(fleet.uri(Scheme::Coap).addr).await;
        // Block2 at 64 bytes, as a constrained server would ask.
        let mut body = Vec::new();
        for num in 0.. {
            let mut p = request_packet(
                MessageType::Confirmable,
                RequestType::Get,
                100 + num,
                &[7],
                "/devA/3/0/9",
            );
            let block = BlockOption {
                num: u32::from(num),
                more: false,
                szx: 2,
            };
            p.add_option(CoapOption::Block2, block.encode().unwrap());
            let reply = exchange(&socket, &p).await;
            assert_eq!(coap::code_string(reply.header.code), "2.05");
            let got = BlockOption::block2(&reply).unwrap().unwrap();
            assert_eq!(got.size(), 64);
            assert!(reply.payload.len() <= 64);
            body.extend_from_slice(&reply.payload);
            if !got.more {
                break;
            }
        }
        assert_eq!(
            body,
            long.as_bytes(),
            "reassembled from the device, re-sliced at 64"
        );
        // Block1 from B at 32 bytes: reassembled, then written to the device — in Block1
        // blocks of 1024 itself, as the body is longer than one message.
        let new: Vec<u8> = b"0123456789".repeat(250);
        let chunks: Vec<&[u8]> = new.chunks(32).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut p = request_packet(
                MessageType::Confirmable,
                RequestType::Put,
                200 + i as u16,
                &[8],
                "/devA/3/0/9",
            );
            let more = i + 1 < chunks.len();
            let block = BlockOption {
                num: i as u32,
                more,
                szx: 1,
            };
            p.add_option(CoapOption::Block1, block.encode().unwrap());
            coap::set_content_format(&mut p, 0);
            p.payload = chunk.to_vec();
            let reply = exchange(&socket, &p).await;
            let want = if more { "2.31" } else { "2.04" };
            assert_eq!(coap::code_string(reply.header.code), want, "block {i}");
        }
        let mut b = fleet.server_b().await;
        let reply = get(&mut b, "/devA/3/0/9").await;
        assert_eq!(reply.payload, new, "the device got the whole body");
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_slow_device_gets_a_separate_response_and_a_silent_one_a_5_04() {
    bounded(async {
        let acs = || vec![ac(0, 3, 0, SSID_A)];
        let fleet = Fleet::builder()
            .listen(&["coaps://127.0.0.1:0", "coap://127.0.0.1:0"])
            .nosec("ServerB", "127.0.0.1")
            .proxy_toml("deadline_ms = 2500")
            .lwm2m_adjusted("slow", acs(), |c| c.slow_ms = Some(1500))
            .lwm2m_adjusted("slower", acs(), |c| c.slow_ms = Some(4000))
            .group("both", &["slow", "slower"])
            .device_timeout_ms(8000)
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let reply = add(&mut a, "both", "Group", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        let socket = raw_socket(fleet.uri(Scheme::Coap).addr).await;
        // Granted by the privilege: only the GET itself goes to the device, 1.5 s late.
        let p = request_packet(
            MessageType::Confirmable,
            RequestType::Get,
            300,
            &[9],
            "/slow/3/0/0",
        );
        let first = exchange(&socket, &p).await;
        assert_eq!(first.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(
            coap::code_string(first.header.code),
            "0.00",
            "an empty ACK first"
        );
        let later = coap::decode(&recv_datagram(&socket).await).unwrap();
        assert_eq!(later.header.get_type(), MessageType::Confirmable);
        assert_eq!(later.get_token(), [9]);
        assert_eq!(coap::code_string(later.header.code), "2.05");
        assert_eq!(later.payload, b"privgw");
        let mut ack = Packet::new();
        ack.header.set_type(MessageType::Acknowledgement);
        ack.header.message_id = later.header.message_id;
        socket.send(&coap::encode(&ack).unwrap()).await.unwrap();
        let mut b = fleet.server_b().await;
        let started = std::time::Instant::now();
        let reply = get(&mut b, "/slower/3/0/0").await;
        assert_eq!(reply.code, "5.04", "{}", reply.render());
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "answered at the deadline"
        );
        fleet.stop().await;
    })
    .await;
}

/// The audit trail as JSON text, once it holds `needle` (the batch writer lags ≤ 1 s).
async fn audit_with(client: &mut GatewayClient, needle: &str) -> String {
    for _ in 0..40 {
        let reply = client
            .request(
                RequestType::Get,
                "/GwConfig/Audit?limit=1000",
                None,
                Some(50),
                &[],
            )
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&reply.payload).into_owned();
        if text.contains(needle) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the audit trail never held {needle}");
}

#[tokio::test]
async fn a_deleted_privilege_refuses_the_next_request_and_every_decision_is_audited() {
    bounded(async {
        let fleet = two_devices().start().await;
        let mut a = fleet.server_a().await;
        let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        let name = privilege_name(&reply);
        let mut b = fleet.server_b().await;
        assert_eq!(get(&mut b, "/devA/3/0/0").await.code, "2.05");
        assert_eq!(delete(&mut a, &name).await.code, "2.02");
        let before = fleet.total_requests();
        // At once: the very next request. /3/0 is readable by all on the device (key 0), so
        // without the privilege the device's own ACL decides — and allows reading.
        let reply = get(&mut b, "/devA/3/0/0").await;
        assert_eq!(reply.code, "2.05", "{}", reply.render());
        assert_eq!(
            fleet.total_requests() - before,
            2,
            "an ACL read, then the GET"
        );
        // A privilege that narrows: Get for ServerA only. The longest URI decides, at once.
        let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerA").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        let before = fleet.total_requests();
        let reply = get(&mut b, "/devA/3/0/0").await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        assert_eq!(
            fleet.total_requests(),
            before,
            "refused with no device traffic"
        );
        let audit = audit_with(&mut a, "does not grant Get to ServerB").await;
        assert!(audit.contains(&format!("privilege {name}")), "{audit}");
        assert!(audit.contains("\"Grantor\":\"ServerA\""), "{audit}");
        assert!(audit.contains("\"Reason\":\"device ACL\""), "{audit}");
        assert!(audit.contains("\"Kind\":\"privilege\""), "{audit}");
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_registered_device_is_reached_over_the_grantors_account() {
    bounded(async {
        let acs = vec![
            ac(0, 3, 0, SSID_A),
            ac_with(1, 4, 0, SSID_B, &[(SSID_B, 31)]),
        ];
        let fleet = Fleet::builder()
            .lwm2m_listen(&[(Scheme::Coaps, None), (Scheme::Coaps, Some("ServerA"))])
            .registering_with("devR", &[0, 1], acs, |_| {})
            .start()
            .await;
        let device = fleet.device("devR");
        assert!(device.wait_registered(Duration::from_secs(5)).await);
        let own = fleet.lwm2m_uri(0).addr;
        let server_a = fleet.lwm2m_uri(1).addr;
        let mut a = fleet.server_a().await;
        let reply = add(&mut a, "devR", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        let (own_before, a_before) = (device.requests_from(own), device.requests_from(server_a));
        let mut b = fleet.server_b().await;
        let reply = get(&mut b, "/devR/3/0/2").await;
        assert_eq!(
            (reply.code.as_str(), reply.payload.as_slice()),
            ("2.05", &b"devR"[..])
        );
        assert_eq!(
            device.requests_from(server_a) - a_before,
            1,
            "over ServerA's account"
        );
        assert_eq!(
            device.requests_from(own),
            own_before,
            "not over the gateway's"
        );
        // Allowed by the device's own ACL for B (who has no account there): the gateway's.
        let reply = get(&mut b, "/devR/4/0").await;
        assert_eq!(
            reply.code,
            "4.04",
            "allowed, and the device has no /4/0: {}",
            reply.render()
        );
        assert_eq!(
            device.requests_from(own) - own_before,
            2,
            "ACL read and GET"
        );
        assert_eq!(device.requests_from(server_a) - a_before, 1);
        let reply = get(&mut b, "/25/0").await;
        assert_eq!(reply.code, "2.05", "{}", reply.render());
        fleet.stop().await;
    })
    .await;
}

/// The next datagram on `socket` decoded, ACKing it if it is a CON.
async fn next_notification(socket: &tokio::net::UdpSocket) -> Packet {
    let p = coap::decode(&recv_datagram(socket).await).unwrap();
    if p.header.get_type() == MessageType::Confirmable {
        let mut ack = Packet::new();
        ack.header.set_type(MessageType::Acknowledgement);
        ack.header.message_id = p.header.message_id;
        socket.send(&coap::encode(&ack).unwrap()).await.unwrap();
    }
    p
}

fn observe_get(mid: u16, token: u8, path: &str) -> Packet {
    let mut p = request_packet(
        MessageType::Confirmable,
        RequestType::Get,
        mid,
        &[token],
        path,
    );
    p.add_option(CoapOption::Observe, vec![]);
    p
}

/// The name of the privilege an Add answered with (the last segment of its Location).
fn privilege_name(reply: &Reply) -> String {
    let location = reply
        .location
        .clone()
        .expect("an Add answers with its Location");
    location.rsplit('/').next().unwrap_or_default().to_owned()
}

/// ServerA writes `v2` to devA's `/3/0/0` through the proxy (it holds Replace there).
async fn put_v2_through_the_proxy(a: &mut GatewayClient) {
    let reply = a
        .request(
            RequestType::Put,
            "/devA/3/0/0",
            Some((0, b"v2".to_vec())),
            None,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(reply.code, "2.04", "{}", reply.render());
}

/// Within 1 s the relay holds no observer and no upstream observation.
async fn relay_emptied(fleet: &Fleet) {
    let relay = fleet.gateway().proxy().relay().clone();
    for _ in 0..50 {
        if relay.counts() == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        relay.counts(),
        (0, 0),
        "observers removed and the upstream cancelled"
    );
}

#[tokio::test]
async fn observers_share_one_upstream_get_each_change_and_are_ended_with_4_03_on_revocation() {
    bounded(async {
        let fleet = Fleet::builder()
            .listen(&["coaps://127.0.0.1:0", "coap://127.0.0.1:0"])
            .nosec("ServerB", "127.0.0.1")
            .lwm2m("devA", vec![ac(0, 3, 0, SSID_A)])
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let reply = add(
            &mut a,
            "devA",
            "Device",
            "/3/0",
            "Get=ServerB&Replace=ServerA",
        )
        .await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        let name = privilege_name(&reply);
        let gateway = fleet.uri(Scheme::Coap).addr;
        let (b1, b2) = (raw_socket(gateway).await, raw_socket(gateway).await);
        let before = fleet.total_requests();
        for (socket, token) in [(&b1, 1u8), (&b2, 2u8)] {
            let first = exchange(
                socket,
                &observe_get(400 + u16::from(token), token, "/devA/3/0/0"),
            )
            .await;
            assert_eq!(coap::code_string(first.header.code), "2.05");
            assert!(
                first.get_first_option(CoapOption::Observe).is_some(),
                "observing"
            );
            assert_eq!(first.payload, b"privgw");
        }
        let relay = fleet.gateway().proxy().relay().clone();
        assert_eq!(
            relay.counts(),
            (2, 1),
            "two observers, one upstream observation"
        );
        assert_eq!(
            fleet.total_requests() - before,
            1,
            "the device was asked once"
        );
        put_v2_through_the_proxy(&mut a).await;
        for socket in [&b1, &b2] {
            let n = next_notification(socket).await;
            assert_eq!(coap::code_string(n.header.code), "2.05");
            assert!(n.get_first_option(CoapOption::Observe).is_some());
            assert_eq!(n.payload, b"v2", "the change reached every observer");
        }
        assert_eq!(delete(&mut a, &name).await.code, "2.02");
        for socket in [&b1, &b2] {
            let end = next_notification(socket).await;
            assert_eq!(
                coap::code_string(end.header.code),
                "4.03",
                "revoked at once"
            );
            assert!(
                end.get_first_option(CoapOption::Observe).is_none(),
                "a final answer"
            );
        }
        relay_emptied(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

/// A raw RFC 8323 observer on `coap+tcp://`: privgw's own framing (`StreamConnection`), no
/// endpoint, so every response frame on the connection is seen, notifications included.
struct TcpObserver {
    conn: privgw::coap::StreamConnection,
    stream: tokio::net::TcpStream,
}

impl TcpObserver {
    async fn connect(addr: std::net::SocketAddr) -> TcpObserver {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let conn = privgw::coap::StreamConnection::new(std::time::Instant::now(), 1 << 16, true);
        TcpObserver { conn, stream }
    }

    async fn send(&mut self, p: &Packet) {
        use tokio::io::AsyncWriteExt;
        self.conn.send(p).unwrap();
        while let Some(bytes) = self.conn.poll_transmit() {
            self.stream.write_all(&bytes).await.unwrap();
        }
    }

    /// The next response frame (signals are skipped), within 10 s.
    async fn next(&mut self) -> Packet {
        use tokio::io::AsyncReadExt;
        let read = async {
            loop {
                while let Some(event) = self.conn.poll_event() {
                    if let privgw::coap::StreamEvent::Response(p) = event {
                        return p;
                    }
                }
                let mut buf = [0u8; 4096];
                let n = self.stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the gateway closed the connection");
                self.conn
                    .handle_bytes(std::time::Instant::now(), buf.get(..n).unwrap_or_default());
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("a response frame within 10 s")
    }
}

/// RFC 8323 §7 through the relay: server B observes over `coap+tcp://`; the first answer
/// and a change come as frames on its token with increasing Observe values, and revoking
/// the privilege ends the observation with a final 4.03 without Observe.
#[tokio::test]
async fn a_coap_tcp_observer_gets_changes_and_a_final_4_03_on_revocation() {
    bounded(async {
        let fleet = Fleet::builder()
            .listen(&["coaps://127.0.0.1:0", "coap+tcp://127.0.0.1:0"])
            .nosec("ServerB", "127.0.0.1")
            .lwm2m("devA", vec![ac(0, 3, 0, SSID_A)])
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let acl = "Get=ServerB&Replace=ServerA";
        let reply = add(&mut a, "devA", "Device", "/3/0", acl).await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        let name = privilege_name(&reply);
        let mut b = TcpObserver::connect(fleet.uri(Scheme::CoapTcp).addr).await;
        b.send(&observe_get(0, 7, "/devA/3/0/0")).await;
        let first = b.next().await;
        assert_eq!(coap::code_string(first.header.code), "2.05");
        assert_eq!(
            (first.get_token(), first.payload.as_slice()),
            (&[7][..], &b"privgw"[..])
        );
        let seq = |p: &Packet| {
            p.get_first_option(CoapOption::Observe)
                .and_then(|v| coap::decode_uint(v))
        };
        let first_seq = seq(&first).expect("observing");
        put_v2_through_the_proxy(&mut a).await;
        let change = b.next().await;
        assert_eq!(
            (change.get_token(), change.payload.as_slice()),
            (&[7][..], &b"v2"[..])
        );
        assert!(seq(&change).expect("a notification") > first_seq);
        assert_eq!(delete(&mut a, &name).await.code, "2.02");
        let end = b.next().await;
        assert_eq!(
            coap::code_string(end.header.code),
            "4.03",
            "revoked at once"
        );
        assert_eq!(end.get_token(), [7]);
        assert!(seq(&end).is_none(), "a final answer");
        relay_emptied(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

/// Until the queue-mode device `id` has gone to sleep (its session closed).
async fn asleep(fleet: &Fleet, id: &str) {
    for _ in 0..60 {
        if fleet.device(id).locations()[0].is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{id} never slept");
}

#[tokio::test]
async fn a_sleeping_queue_mode_device_is_reached_when_it_wakes_within_the_deadline() {
    bounded(async {
        let fleet = Fleet::builder()
            .lwm2m_toml("queue_awake_s = 1")
            .registering_with("devQ", &[0], vec![ac(0, 3, 0, SSID_A)], |c| {
                c.queue = true;
                c.queue_awake_s = Some(1);
                c.lifetime_s = Some(6); // a fresh Register every 3 s
            })
            .start()
            .await;
        let mut a = fleet.server_a().await;
        asleep(&fleet, "devQ").await;
        let reply = add(&mut a, "devQ", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        asleep(&fleet, "devQ").await;
        let mut b = fleet.server_b().await;
        let started = std::time::Instant::now();
        let reply = get(&mut b, "/devQ/3/0/2").await;
        assert_eq!(
            (reply.code.as_str(), reply.payload.as_slice()),
            ("2.05", &b"devQ"[..])
        );
        assert!(
            started.elapsed() > Duration::from_millis(200),
            "it was asleep"
        );
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_observation_comes_back_when_the_device_reboots_and_registers_again() {
    bounded(async {
        let mut fleet = Fleet::builder()
            .listen(&["coaps://127.0.0.1:0", "coap://127.0.0.1:0"])
            .nosec("ServerB", "127.0.0.1")
            .registering("devR", vec![ac(0, 3, 0, SSID_A)])
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let reply = add(
            &mut a,
            "devR",
            "Device",
            "/3/0",
            "Get=ServerB&Replace=ServerA",
        )
        .await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        let b = raw_socket(fleet.uri(Scheme::Coap).addr).await;
        let first = exchange(&b, &observe_get(500, 5, "/devR/3/0/0")).await;
        assert_eq!(coap::code_string(first.header.code), "2.05");
        assert!(first.get_first_option(CoapOption::Observe).is_some());
        fleet.reboot_registering_device("devR").await;
        // The relay re-observes over the new registration (backoff from 1 s); a write then
        // reaches the observer again.
        let mut notified = None;
        for round in 0..10u8 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let value = format!("after-reboot-{round}");
            let reply = a
                .request(
                    RequestType::Put,
                    "/devR/3/0/0",
                    Some((0, value.clone().into_bytes())),
                    None,
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(reply.code, "2.04", "{}", reply.render());
            let got = tokio::time::timeout(Duration::from_millis(500), next_notification(&b)).await;
            if let Ok(n) = got {
                notified = Some((n, value));
                break;
            }
        }
        let (n, value) = notified.expect("no notification after the device came back");
        assert_eq!(coap::code_string(n.header.code), "2.05");
        assert_eq!(n.payload, value.as_bytes());
        assert_eq!(fleet.gateway().proxy().relay().counts(), (1, 1));
        fleet.stop().await;
    })
    .await;
}
