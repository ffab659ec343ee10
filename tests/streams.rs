//! CoAP over TCP and TLS (RFC 8323) end to end: the four seed sequences with server A on
//! `coaps+tcp://` (identified by its certificate) and the devices of one group spread over
//! `coaps+tcp://` (TLS, certificate rule), `coap+tcp://` and `coaps://` (DTLS-PSK); server A
//! over `coap+tcp://` (NoSec address); a long failure list under the peer's Max-Message-Size
//! (truncated into one frame, its report block-wise); and
//! malformed frames, Ping/Pong and silent connections on a raw `tokio::net::TcpStream`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use privgw::cli::ctl::privilege_body;
use privgw::coap::{self, BlockOption, CoapOption, MessageClass, Packet, RequestType};
use privgw::mo::Value;
use privgw::runtime::StreamClient;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a raw-socket read may wait before the test calls the gateway stuck.
const RAW_WAIT: Duration = Duration::from_secs(5);

const CSM: u8 = 0xE1;
const PING: u8 = 0xE2;
const PONG: u8 = 0xE3;
const ABORT: u8 = 0xE5;

// ---------------------------------------------------------------------------------------
// The mixed fleet: devA over TLS, devB over TCP, devC over DTLS-PSK
// ---------------------------------------------------------------------------------------

/// Server A and B known by their certificates (SAN DNS), the gateway on `coaps+tcp://` and
/// `coap+tcp://`. Every device: /3/0 is A's; /4/0 is B's on devB, /5/0 on devA, /6/0 on
/// devC (one odd device per transport).
fn mixed_fleet() -> FleetBuilder {
    let acs = |id: &str| one_odd_device_per_object(id, ["devB", "devA", "devC"]);
    Fleet::builder()
        .listen(&["coaps+tcp://127.0.0.1:0", "coap+tcp://127.0.0.1:0"])
        .gateway_certs(CertPaths::committed("gateway"))
        .server_toml("ServerA", r#"cert_match = "san-dns:serverA.example""#)
        .server_toml("ServerB", r#"cert_match = "san-dns:serverB.example""#)
        .device_listen("coaps+tcp://127.0.0.1:0")
        .device_certs(Some(CertPaths::committed("devA")))
        .lwm2m("devA", acs("devA"))
        .device_toml("devA", r#"cert_match = "san-dns:devA.example""#)
        .device_certs(None)
        .device_listen("coap+tcp://127.0.0.1:0")
        .lwm2m("devB", acs("devB"))
        .device_listen("coaps://127.0.0.1:0")
        .lwm2m("devC", acs("devC"))
        .group("G1", &["devA", "devB", "devC"])
}

async fn server_a_tls(fleet: &Fleet) -> privgw::cli::ctl::GatewayClient {
    fleet.tls_client(&CertPaths::committed("serverA")).await
}

#[tokio::test]
async fn mixed_fleet_really_uses_three_transports() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        assert_eq!(fleet.device_uri("devA").scheme.as_str(), "coaps+tcp");
        assert_eq!(fleet.device_uri("devB").scheme.as_str(), "coap+tcp");
        assert_eq!(fleet.device_uri("devC").scheme.as_str(), "coaps");
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn tls_device_success_on_each_transport_is_2_01_verified_only_that_device() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        let mut a = server_a_tls(&fleet).await;
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
async fn tls_device_failure_is_4_03_with_the_tls_device_denied() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        let mut a = server_a_tls(&fleet).await;
        device_add_is_4_03_denied(&fleet, &mut a, "devA", "/5/0").await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn tls_group_success_over_tls_tcp_and_dtls_verifies_all_three() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        let mut a = server_a_tls(&fleet).await;
        group_add_verifies_all_three(&fleet, &mut a).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn tls_group_failure_names_exactly_the_odd_device_whatever_its_transport() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        let mut a = server_a_tls(&fleet).await;
        for (uri, odd) in [("/4/0", "devB"), ("/5/0", "devA"), ("/6/0", "devC")] {
            group_add_is_4_03_naming_only(&fleet, &mut a, uri, odd).await;
        }
        assert!(privilege_names(&mut a).await.is_empty());
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn server_a_over_plain_tcp_is_known_by_its_nosec_address() {
    bounded(async {
        let fleet = mixed_fleet().nosec("ServerA", "127.0.0.1").start().await;
        let mut a = fleet.tcp_client().await;
        assert!(privilege_names(&mut a).await.is_empty());
        let reply = add(&mut a, "G1", "Group", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        assert_eq!(reply.verified_ids(), ["devA", "devB", "devC"]);
        let doc = reply.document.as_ref().expect("body");
        assert_eq!(text(doc, "Grantor"), Some("ServerA"));
        let reply = add(&mut a, "G1", "Group", "/4/0", "Get=ServerB").await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        assert_eq!(failures(&reply), pairs(&[("devB", "denied")]));
        assert_eq!(privilege_names(&mut a).await.len(), 1);
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn plain_tcp_without_a_nosec_address_is_4_01_and_asks_no_device() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        let mut anyone = fleet.tcp_client().await;
        let reply = add(&mut anyone, "G1", "Group", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "4.01", "{}", reply.render());
        assert_eq!(fleet.total_requests(), 0);
        fleet.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// A large answer over TCP
// ---------------------------------------------------------------------------------------

const MANY: usize = 40;

fn many_ids() -> Vec<String> {
    (0..MANY).map(|i| format!("dev{i:02}")).collect()
}

/// 40 devices over `coap+tcp://`, all denying A on /4/0, in group G40. Server A by
/// certificate on `coaps+tcp://` and by address on `coap+tcp://`.
async fn many_fleet() -> Fleet {
    let mut b = Fleet::builder()
        .listen(&["coaps+tcp://127.0.0.1:0", "coap+tcp://127.0.0.1:0"])
        .gateway_certs(CertPaths::committed("gateway"))
        .server_toml("ServerA", r#"cert_match = "san-dns:serverA.example""#)
        .nosec("ServerA", "127.0.0.1")
        .device_listen("coap+tcp://127.0.0.1:0");
    let ids = many_ids();
    for id in &ids {
        b = b.lwm2m(id, vec![ac(0, 3, 0, SSID_A), ac(1, 4, 0, SSID_B)]);
    }
    let members: Vec<&str> = ids.iter().map(String::as_str).collect();
    b.group("G40", &members).start().await
}

fn assert_forty_denied(reply: &privgw::cli::ctl::Reply) {
    assert_eq!(reply.code, "4.03", "{}", reply.render());
    assert_forty_denied_in(reply);
}

/// `Status` 425 and every device denied, sorted, each with its Detail (the whole 4.03, or
/// the report's 2.05).
fn assert_forty_denied_in(reply: &privgw::cli::ctl::Reply) {
    assert_eq!(status(reply), Some(425));
    let expected: Vec<(String, String)> = many_ids()
        .into_iter()
        .map(|id| (id, "denied".to_owned()))
        .collect();
    assert_eq!(failures(reply), expected, "every device, sorted, once");
    // Each entry carries its Detail.
    let list = reply
        .document
        .as_ref()
        .and_then(|d| d.get("Failed"))
        .and_then(Value::as_array)
        .expect("Failed");
    for f in list {
        let detail = f.get("Detail").and_then(Value::as_str).unwrap_or_default();
        assert!(detail.contains("/4/0"), "detail {detail:?}");
    }
}

#[tokio::test]
async fn forty_denied_devices_arrive_complete_over_tls() {
    bounded(async {
        let fleet = many_fleet().await;
        let mut a = server_a_tls(&fleet).await;
        let reply = add(&mut a, "G40", "Group", "/4/0", "Get=ServerB").await;
        assert!(
            reply.payload.len() > 1152,
            "the answer should exceed the default Max-Message-Size ({} bytes)",
            reply.payload.len()
        );
        assert_forty_denied(&reply);
        assert!(privilege_names(&mut a).await.is_empty());
        fleet.stop().await;
    })
    .await;
}

/// The `Report` path of a truncated 4.03 for the 40 devices (FailedCount 40, Truncated, a
/// sorted prefix of the entries without Detail).
fn truncated_forty(reply: &privgw::cli::ctl::Reply) -> String {
    assert_eq!(reply.code, "4.03", "{}", reply.render());
    assert_eq!(status(reply), Some(425));
    let doc = reply.document.as_ref().expect("a document");
    assert_eq!(
        doc.get("FailedCount").and_then(Value::as_int),
        Some(MANY as i64)
    );
    assert_eq!(doc.get("Truncated").and_then(Value::as_bool), Some(true));
    let kept = reply.failed_ids();
    assert_eq!(kept, many_ids()[..kept.len()], "a sorted prefix");
    text(doc, "Report").expect("a Report path").to_owned()
}

#[tokio::test]
async fn forty_denied_devices_to_a_peer_with_the_default_max_message_size_get_a_report() {
    bounded(async {
        let fleet = many_fleet().await;
        // Our own client advertising 1152 bytes: the error answer is fitted to one frame
        // (never Block2); the complete list is the report, which is sliced (Block2) and
        // reassembled as any 2.05.
        let tcp = TcpStream::connect(fleet.coap_tcp().addr).await.unwrap();
        let mut small = StreamClient::new(tcp, 1152, Duration::from_secs(20));
        let mut post = Packet::new();
        post.header.code = MessageClass::Request(RequestType::Post);
        coap::set_uri(&mut post, "/GwConfig/Privileges");
        coap::set_content_format(&mut post, 60);
        post.payload = privilege_body("G40", "Group", "/4/0", "Get=ServerB").to_cbor();
        let response = small.request(post).await.expect("answered");
        assert!(
            response.payload.len() <= 1152,
            "{} bytes",
            response.payload.len()
        );
        let report = truncated_forty(&reply_of(response));
        let mut get = Packet::new();
        get.header.code = MessageClass::Request(RequestType::Get);
        coap::set_uri(&mut get, &report);
        let full = reply_of(small.request(get).await.expect("answered"));
        assert_eq!(full.code, "2.05", "{}", full.render());
        assert!(full.payload.len() > 1152, "{} bytes", full.payload.len());
        assert_forty_denied_in(&full);
        for (id, n) in fleet.requests() {
            assert_eq!(n, 1, "{id} asked {n} times for one POST");
        }
        fleet.stop().await;
    })
    .await;
}

fn reply_of(p: Packet) -> privgw::cli::ctl::Reply {
    let cf = coap::content_format(&p);
    let document = match cf {
        Some(60) => Value::from_cbor(&p.payload).ok(),
        Some(50) => Value::from_json(&p.payload).ok(),
        _ => None,
    };
    privgw::cli::ctl::Reply {
        code: coap::code_string(p.header.code),
        location: None,
        content_format: cf,
        document,
        payload: p.payload,
    }
}

#[tokio::test]
async fn every_frame_of_a_large_answer_fits_a_raw_peer_that_advertises_nothing() {
    bounded(async {
        let fleet = many_fleet().await;
        let mut raw = Raw::connect(fleet.coap_tcp().addr).await;
        // A CSM without Max-Message-Size: the gateway must assume 1152 (RFC 8323 §5.3.1).
        raw.send(&[0x00, CSM]).await;
        // The POST of the 40-device group failure: one frame, no Block2, no ETag.
        let mut post = Packet::new();
        post.header.code = MessageClass::Request(RequestType::Post);
        post.set_token(vec![0x0f]);
        coap::set_uri(&mut post, "/GwConfig/Privileges");
        coap::set_content_format(&mut post, 60);
        post.payload = privilege_body("G40", "Group", "/4/0", "Get=ServerB").to_cbor();
        raw.send_packet(&post).await;
        let (frame, response) = next_response(&mut raw).await;
        assert!(frame.size <= 1152, "frame of {} bytes", frame.size);
        assert!(response.get_first_option(CoapOption::Block2).is_none());
        assert!(response.get_first_option(CoapOption::ETag).is_none());
        let report = truncated_forty(&reply_of(response));

        // The report, block by block, each frame within 1152 bytes.
        let mut body = Vec::new();
        let mut num = 0;
        let mut frames = 0;
        loop {
            let mut get = Packet::new();
            get.header.code = MessageClass::Request(RequestType::Get);
            get.set_token(vec![0x10, num as u8]);
            coap::set_uri(&mut get, &report);
            if num > 0 {
                let b = BlockOption {
                    num,
                    more: false,
                    szx: 6,
                };
                get.add_option(CoapOption::Block2, b.encode().unwrap());
            }
            raw.send_packet(&get).await;
            let (frame, response) = next_response(&mut raw).await;
            frames += 1;
            assert!(
                frame.size <= 1152,
                "frame of {} bytes to a 1152-byte peer",
                frame.size
            );
            assert_eq!(coap::code_string(response.header.code), "2.05");
            assert_eq!(response.get_token(), &[0x10, num as u8]);
            body.extend_from_slice(&response.payload);
            match BlockOption::block2(&response) {
                Some(Ok(b)) if b.more => num = b.num + 1,
                _ => break,
            }
            assert!(frames < 100, "too many blocks");
        }
        assert!(frames >= 2, "the report for {MANY} devices fit one frame?");
        let reply = reply_of({
            let mut p = Packet::new();
            p.header.code = MessageClass::Response(coap::ResponseType::Content);
            coap::set_content_format(&mut p, 60);
            p.payload = body;
            p
        });
        assert_forty_denied_in(&reply);
        for (id, n) in fleet.requests() {
            assert_eq!(n, 1, "{id} asked {n} times for one POST");
        }
        fleet.stop().await;
    })
    .await;
}

/// The next response frame (CSMs skipped) and its packet.
async fn next_response(raw: &mut Raw) -> (Frame, Packet) {
    loop {
        let frame = raw
            .next_frame()
            .await
            .expect("a frame")
            .expect("not closed");
        if frame.code != CSM {
            return (frame.clone(), frame.packet.expect("a response"));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Raw RFC 8323 frames
// ---------------------------------------------------------------------------------------

/// One frame read from the gateway.
#[derive(Clone)]
struct Frame {
    code: u8,
    token: Vec<u8>,
    size: usize,
    packet: Option<Packet>,
}

/// A raw TCP connection speaking bytes, reading frames.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Raw {
            tcp,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("write");
    }

    async fn send_packet(&mut self, p: &Packet) {
        let bytes = coap::encode_frame(p).expect("encode");
        self.send(&bytes).await;
    }

    /// The next frame; `Ok(None)` when the gateway closed (EOF or reset), `Err` when
    /// nothing came within [`RAW_WAIT`] or the bytes are not a frame.
    async fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(RAW_WAIT, self.tcp.read(&mut chunk)).await {
                Err(_) => return Err(format!("no frame within {RAW_WAIT:?}")),
                Ok(Ok(0)) | Ok(Err(_)) => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    return Err(format!("closed inside a frame: {:02x?}", self.buf));
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn parse(&mut self) -> Result<Option<Frame>, String> {
        let Some(&b0) = self.buf.first() else {
            return Ok(None);
        };
        let ext = match b0 >> 4 {
            13 => 1,
            14 => 2,
            15 => 4,
            _ => 0,
        };
        let tkl = usize::from(b0 & 0x0f);
        let decoded =
            coap::decode_frame(&self.buf, 1 << 20).map_err(|e| format!("bad frame: {e}"))?;
        let Some((packet, consumed)) = decoded else {
            return Ok(None);
        };
        let code = self.buf[1 + ext];
        let token = self.buf[2 + ext..2 + ext + tkl].to_vec();
        self.buf.drain(..consumed);
        Ok(Some(Frame {
            code,
            token,
            size: consumed,
            packet: (code < 0xE0).then_some(packet),
        }))
    }

    /// Reads frames until the gateway closes; the codes of the frames received. Panics if the
    /// connection stays open past [`RAW_WAIT`].
    async fn codes_until_closed(&mut self) -> Vec<u8> {
        let mut codes = Vec::new();
        loop {
            match self.next_frame().await {
                Ok(Some(f)) => codes.push(f.code),
                Ok(None) => return codes,
                Err(e) => panic!("the gateway kept the connection open ({e}); got {codes:02x?}"),
            }
        }
    }
}

/// Starts a gateway with a `coap+tcp://` listener (and one device, unused).
async fn tcp_gateway() -> Fleet {
    Fleet::builder()
        .listen(&["coap+tcp://127.0.0.1:0"])
        .nosec("ServerA", "127.0.0.1")
        .device_listen("coap+tcp://127.0.0.1:0")
        .lwm2m("devA", vec![ac(0, 3, 0, SSID_A)])
        .start()
        .await
}

/// A fresh connection still gets 2.05 on GET /.well-known/core.
async fn assert_gateway_still_serves(fleet: &Fleet) {
    let mut fresh = fleet.tcp_client().await;
    let reply = get(&mut fresh, "/.well-known/core").await;
    assert_eq!(reply.code, "2.05", "{}", reply.render());
    assert!(
        String::from_utf8_lossy(&reply.payload).contains("/GwConfig/Privileges"),
        "{}",
        reply.render()
    );
}

/// Sends a CSM, then `bad`; the gateway must Abort (7.05) and close, or just close.
async fn bad_frame_is_refused(bad: &[u8]) -> Vec<u8> {
    let fleet = tcp_gateway().await;
    let mut raw = Raw::connect(fleet.coap_tcp().addr).await;
    raw.send(&[0x00, CSM]).await;
    raw.send(bad).await;
    let codes = raw.codes_until_closed().await;
    let after_csm: Vec<u8> = codes.iter().copied().filter(|c| *c != CSM).collect();
    assert!(
        after_csm.iter().all(|c| *c == ABORT),
        "only an Abort may answer a bad frame, got {codes:02x?}"
    );
    assert_gateway_still_serves(&fleet).await;
    assert_eq!(fleet.total_requests(), 0);
    fleet.stop().await;
    codes
}

#[tokio::test]
async fn a_token_length_of_9_to_15_is_aborted_and_the_listener_lives_on() {
    bounded(async {
        for tkl in 9u8..=15 {
            // Len 0, TKL 9..15, code GET, then as many "token" bytes as the TKL claims.
            let mut bad = vec![tkl, 0x01];
            bad.extend(std::iter::repeat_n(0xAA, usize::from(tkl)));
            let codes = bad_frame_is_refused(&bad).await;
            assert!(
                codes.contains(&ABORT),
                "TKL {tkl}: expected an Abort, got {codes:02x?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_frame_beyond_our_max_message_size_is_refused_from_its_header() {
    bounded(async {
        // Len nibble 15: a 4-byte extended length; 65805 + 0x00010000 bytes > 64 KiB. Only
        // the header and the code are sent: the gateway must not wait for the body.
        let codes = bad_frame_is_refused(&[0xF0, 0x00, 0x01, 0x00, 0x00, 0x02]).await;
        assert!(
            codes.contains(&ABORT),
            "expected an Abort, got {codes:02x?}"
        );
        // Just above the limit with a 2-byte length: 3 + 1 + (0xFF00 + 269) > 65536.
        let codes = bad_frame_is_refused(&[0xE0, 0xFF, 0x00, 0x02]).await;
        assert!(
            codes.contains(&ABORT),
            "expected an Abort, got {codes:02x?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_truncated_frame_then_close_leaves_the_gateway_serving() {
    bounded(async {
        let fleet = tcp_gateway().await;
        let mut raw = Raw::connect(fleet.coap_tcp().addr).await;
        raw.send(&[0x00, CSM]).await;
        // Announces 12 bytes of options+payload and a 4-byte token; sends 3 of them.
        raw.send(&[0xC4, 0x01, 0x01, 0x02, 0x03]).await;
        raw.tcp.shutdown().await.expect("half-close");
        let codes = raw.codes_until_closed().await;
        assert!(
            codes.iter().all(|c| [CSM, ABORT, 0xE4].contains(c)),
            "{codes:02x?}"
        );
        assert_gateway_still_serves(&fleet).await;
        // And a truncated frame with the socket dropped outright.
        let mut raw = Raw::connect(fleet.coap_tcp().addr).await;
        raw.send(&[0x00, CSM, 0xD1]).await;
        drop(raw);
        assert_gateway_still_serves(&fleet).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_ping_gets_a_pong_with_its_token() {
    bounded(async {
        let fleet = tcp_gateway().await;
        let mut raw = Raw::connect(fleet.coap_tcp().addr).await;
        raw.send(&[0x00, CSM]).await;
        raw.send(&[0x02, PING, 0xAB, 0xCD]).await;
        let mut seen = Vec::new();
        let pong = loop {
            let f = raw
                .next_frame()
                .await
                .unwrap_or_else(|e| panic!("{e}; got {seen:02x?}"))
                .unwrap_or_else(|| panic!("closed; got {seen:02x?}"));
            seen.push(f.code);
            if f.code != CSM {
                break f;
            }
        };
        assert_eq!(pong.code, PONG, "{seen:02x?}");
        assert_eq!(pong.token, [0xAB, 0xCD], "RFC 8323 §5.4: same token");
        // The connection still serves requests afterwards.
        let mut get = Packet::new();
        get.header.code = MessageClass::Request(RequestType::Get);
        get.set_token(vec![7]);
        coap::set_uri(&mut get, "/.well-known/core");
        raw.send_packet(&get).await;
        let f = raw.next_frame().await.unwrap().expect("answer");
        assert_eq!(f.token, [7]);
        let p = f.packet.expect("a response");
        assert_eq!(coap::code_string(p.header.code), "2.05");
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn the_gateway_sends_its_csm_first() {
    bounded(async {
        let fleet = tcp_gateway().await;
        let mut raw = Raw::connect(fleet.coap_tcp().addr).await;
        raw.send(&[0x00, CSM]).await;
        let first = raw.next_frame().await.unwrap().expect("a frame");
        assert_eq!(first.code, CSM);
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_silent_tcp_connection_does_not_block_another_client() {
    bounded(async {
        let fleet = mixed_fleet().nosec("ServerA", "127.0.0.1").start().await;
        // Silent on both listeners: no CSM on TCP, no ClientHello on TLS; plus one stuck in
        // the middle of a frame.
        let _silent_tcp = TcpStream::connect(fleet.coap_tcp().addr).await.unwrap();
        let _silent_tls = TcpStream::connect(fleet.coaps_tcp().addr).await.unwrap();
        let mut half = TcpStream::connect(fleet.coap_tcp().addr).await.unwrap();
        half.write_all(&[0x00, CSM, 0xD4]).await.unwrap();

        let quick = Duration::from_secs(5);
        let mut tcp = tokio::time::timeout(quick, fleet.tcp_client())
            .await
            .expect("TCP client connects");
        let reply = tokio::time::timeout(quick, get(&mut tcp, "/.well-known/core"))
            .await
            .expect("TCP answer while others are silent");
        assert_eq!(reply.code, "2.05");

        let mut tls = tokio::time::timeout(quick, server_a_tls(&fleet))
            .await
            .expect("TLS handshake while others are silent");
        let reply =
            tokio::time::timeout(quick, add(&mut tls, "G1", "Group", "/3/0", "Get=ServerB"))
                .await
                .expect("TLS answer while others are silent");
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        fleet.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Connection slots before authentication (issue 6, item 5): per-source cap, pre-auth
// deadline (2 s by default), eviction of the oldest unauthenticated connection
// ---------------------------------------------------------------------------------------

/// The default caps these tests rely on (README, `tcp_*` keys).
const PER_IP: usize = 16;
const PRE_AUTH: usize = 64;
const AUTH_DEADLINE: Duration = Duration::from_secs(2);

/// 127.0.0.`last`: Linux routes all of 127/8 to loopback, so each is a distinct source.
fn loopback(last: u8) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 0, last)
}

/// A TCP connection from `source` to `to` that never sends a byte.
async fn idle_from(source: std::net::Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .expect("bind a loopback source");
    tokio::time::timeout(RAW_WAIT, socket.connect(to))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Reads until the gateway closes `s`: the bytes it sent first, or `None` if it is still
/// open after `wait`.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> Option<usize> {
    let mut got = 0;
    let mut chunk = [0u8; 1024];
    let reads = async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got += n,
            }
        }
    };
    tokio::time::timeout(wait, reads).await.ok()
}

/// Waits for the gateway's first bytes (its CSM): proof the connection was admitted.
async fn admitted(s: &mut TcpStream) {
    let mut b = [0u8; 2];
    let n = tokio::time::timeout(RAW_WAIT, s.read(&mut b))
        .await
        .expect("the gateway's CSM in time")
        .expect("read");
    assert!(n > 0, "closed instead of admitted");
}

#[tokio::test]
async fn idle_unauthenticated_connections_are_closed_after_the_deadline() {
    bounded(async {
        let fleet = mixed_fleet().nosec("ServerA", "127.0.0.1").start().await;
        let started = std::time::Instant::now();
        let mut tcp = idle_from(loopback(2), fleet.coap_tcp().addr).await;
        let mut tls = idle_from(loopback(2), fleet.coaps_tcp().addr).await;
        // A connection that sends its CSM at once is authenticated and stays.
        let mut raw = Raw::connect(fleet.coap_tcp().addr).await;
        raw.send(&[0x00, CSM]).await;

        let limit = AUTH_DEADLINE + Duration::from_secs(3);
        assert!(
            closed_within(&mut tcp, limit).await.is_some(),
            "TCP kept open"
        );
        assert!(
            closed_within(&mut tls, limit).await.is_some(),
            "TLS kept open"
        );
        let took = started.elapsed();
        assert!(
            took >= AUTH_DEADLINE - Duration::from_millis(200),
            "closed before its deadline: {took:?}"
        );

        raw.send(&[0x01, PING, 0x42]).await;
        let pong = loop {
            let f = raw.next_frame().await.unwrap().expect("still open");
            if f.code != CSM {
                break f;
            }
        };
        assert_eq!(pong.code, PONG, "the authenticated connection lives on");
        fleet.stop().await;
    })
    .await;
}

/// A CSM from a source that is no configured server's `nosec_address` does not make its
/// connection authenticated: it is closed at the pre-auth deadline like an idle one (it
/// used to hold its slot for good, so 16 such sources filled all 250 slots).
#[tokio::test]
async fn a_csm_from_an_unconfigured_nosec_source_does_not_keep_its_slot() {
    bounded(async {
        let fleet = mixed_fleet().nosec("ServerA", "127.0.0.1").start().await;
        let started = std::time::Instant::now();
        let mut stranger = idle_from(loopback(2), fleet.coap_tcp().addr).await;
        stranger.write_all(&[0x00, CSM]).await.expect("send a CSM");
        let mut server_a = Raw::connect(fleet.coap_tcp().addr).await;
        server_a.send(&[0x00, CSM]).await;

        let limit = AUTH_DEADLINE + Duration::from_secs(3);
        assert!(
            closed_within(&mut stranger, limit).await.is_some(),
            "an unconfigured source kept its slot after a CSM"
        );
        let took = started.elapsed();
        assert!(
            took >= AUTH_DEADLINE - Duration::from_millis(200),
            "closed before its deadline: {took:?}"
        );
        server_a.send(&[0x01, PING, 0x42]).await;
        let pong = loop {
            let f = server_a.next_frame().await.unwrap().expect("still open");
            if f.code != CSM {
                break f;
            }
        };
        assert_eq!(
            pong.code, PONG,
            "the configured server's connection lives on"
        );
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn connections_over_the_per_ip_cap_are_refused_at_once_while_another_ip_is_served() {
    bounded(async {
        let fleet = mixed_fleet().nosec("ServerA", "127.0.0.1").start().await;
        let to = fleet.coap_tcp().addr;
        let mut held = Vec::new();
        for _ in 0..PER_IP {
            let mut s = idle_from(loopback(2), to).await;
            admitted(&mut s).await;
            held.push(s);
        }
        let started = std::time::Instant::now();
        let mut over = idle_from(loopback(2), to).await;
        let sent = closed_within(&mut over, Duration::from_millis(1000))
            .await
            .expect("the 17th connection from one IP is closed at once");
        assert_eq!(sent, 0, "refused without a CSM (no state, no handshake)");
        assert!(started.elapsed() < Duration::from_millis(1000));

        // Another IP is admitted, and a client from a third one is served.
        let mut other = idle_from(loopback(3), to).await;
        admitted(&mut other).await;
        let mut client = tokio::time::timeout(Duration::from_secs(1), fleet.tcp_client())
            .await
            .expect("a client from 127.0.0.1 connects at once");
        let reply = get(&mut client, "/.well-known/core").await;
        assert_eq!(reply.code, "2.05");
        fleet.stop().await;
    })
    .await;
}

/// Old code: the 250 slots fill with one host's idle sockets and the client waits for the
/// 10 s handshake timeout to free one.
#[tokio::test]
async fn a_tls_client_is_served_promptly_while_one_ip_holds_its_max_idle_sockets() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        let to = fleet.coaps_tcp().addr;
        let mut idle = Vec::new();
        for _ in 0..260 {
            idle.push(idle_from(loopback(2), to).await);
        }
        let quick = Duration::from_millis(1500);
        let started = std::time::Instant::now();
        let mut tls = tokio::time::timeout(quick, server_a_tls(&fleet))
            .await
            .expect("TLS handshake while 127.0.0.2 holds idle sockets");
        let reply =
            tokio::time::timeout(quick, add(&mut tls, "G1", "Group", "/3/0", "Get=ServerB"))
                .await
                .expect("TLS answer while 127.0.0.2 holds idle sockets");
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        assert!(started.elapsed() < AUTH_DEADLINE, "{:?}", started.elapsed());
        drop(idle);
        fleet.stop().await;
    })
    .await;
}

/// Idle sockets from many sources: a full pre-auth table evicts its oldest entries, so a
/// real client still gets in before any deadline has passed.
#[tokio::test]
async fn a_flood_from_many_ips_evicts_the_oldest_unauthenticated_and_a_client_gets_in() {
    bounded(async {
        let fleet = mixed_fleet().start().await;
        let to = fleet.coaps_tcp().addr;
        let sources = 6u8;
        let started = std::time::Instant::now();
        let mut idle = Vec::new();
        for i in 0..usize::from(sources) * PER_IP {
            let source = loopback(2 + u8::try_from(i).unwrap() % sources);
            idle.push(idle_from(source, to).await);
        }
        let mut tls = tokio::time::timeout(Duration::from_millis(1500), server_a_tls(&fleet))
            .await
            .expect("TLS handshake during the flood");
        let reply = get(&mut tls, "/.well-known/core").await;
        assert_eq!(reply.code, "2.05");
        let mut closed = 0;
        for s in &mut idle {
            if closed_within(s, Duration::from_millis(2)).await.is_some() {
                closed += 1;
            }
        }
        assert!(
            started.elapsed() < AUTH_DEADLINE,
            "too slow to tell eviction from the deadline: {:?}",
            started.elapsed()
        );
        // 96 idle + our client against 64 pre-auth entries: at least 33 evicted.
        assert!(
            closed > idle.len() - PRE_AUTH,
            "{closed} of {} idle closed",
            idle.len()
        );
        fleet.stop().await;
    })
    .await;
}
