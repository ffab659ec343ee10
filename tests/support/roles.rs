//! The two-role test handler shared by `endpoint_roles.rs` (datagram sessions) and
//! `stream_roles.rs` (stream connections): the request builder [`req`], the listener's
//! [`Gateway`], which asks the peer back over the session's [`PeerLink`], and the dialing
//! side's answer ([`device_answer`]), and the steps both scenarios take on the links. Included with `#[path]`; the transport specifics and
//! the dialing side's handlers (delays, counters) stay in each test.

use std::sync::Mutex;
use std::time::Duration;

use privgw::coap::{self, MessageClass, Packet, RequestType, ResponseType};
use privgw::runtime::{Handler, LinkError, PeerLink};
use privgw::transport::PeerInfo;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Every wait of these helpers is bounded by this (the machine is loaded).
const WAIT: Duration = Duration::from_secs(20);

/// A request with `code`, the Uri-Path of `path` and `payload`.
pub fn req(code: RequestType, path: &str, payload: &[u8]) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Request(code);
    coap::set_uri(&mut p, path);
    p.payload = payload.to_vec();
    p
}

/// The listener's handler (the "gateway"): on `/ask`, reads `/3/0/0` from the peer over the
/// session's link and answers `"<peer answer> via <identity>"`; it keeps the links it
/// was given so the test can use them afterwards.
#[derive(Default)]
pub struct Gateway {
    pub links: Mutex<Vec<PeerLink>>,
}

impl Handler for Gateway {
    async fn handle(&self, _peer: &PeerInfo, request: Packet) -> Packet {
        coap::response_to(&request, ResponseType::NotFound)
    }

    async fn handle_on_link(
        &self,
        peer: &PeerInfo,
        link: &PeerLink,
        request: Packet,
        _max_payload: usize,
    ) -> Packet {
        self.links.lock().unwrap().push(link.clone());
        if coap::uri_path(&request).unwrap_or_default() != ["ask"] {
            return coap::response_to(&request, ResponseType::NotFound);
        }
        let back = link.request(req(RequestType::Get, "/3/0/0", b"")).await;
        let mut answer = coap::response_to(&request, ResponseType::Content);
        answer.payload = match back {
            Ok(p) => {
                let mut body = p.payload;
                body.extend_from_slice(format!(" via {}", peer.identity).as_bytes());
                body
            }
            Err(e) => format!("back-request failed: {e}").into_bytes(),
        };
        answer
    }
}

/// The dialing side's answer (the "device"): `/3/0/0` is its manufacturer, anything else
/// 4.04.
pub fn device_answer(request: &Packet) -> Packet {
    if coap::uri_path(request).unwrap_or_default() != ["3", "0", "0"] {
        return coap::response_to(request, ResponseType::NotFound);
    }
    let mut answer = coap::response_to(request, ResponseType::Content);
    answer.payload = b"ACME".to_vec();
    answer
}

/// Reads `/3/0/0` over `link` and expects the device's manufacturer.
pub async fn read_acme(link: &PeerLink) {
    let read = tokio::time::timeout(WAIT, link.request(req(RequestType::Get, "/3/0/0", b"")))
        .await
        .expect("answered in time")
        .expect("a response");
    assert_eq!(read.payload, b"ACME");
}

/// Four reads of `/3/0/0` at once over `link`: NSTART = 1 queues them, all complete.
pub async fn four_reads_at_once(link: &PeerLink) {
    let reads: Vec<_> = (0..4)
        .map(|_| {
            let link = link.clone();
            tokio::spawn(async move { link.request(req(RequestType::Get, "/3/0/0", b"")).await })
        })
        .collect();
    for read in reads {
        let answer = tokio::time::timeout(WAIT, read).await.unwrap().unwrap();
        assert_eq!(answer.expect("a response").payload, b"ACME");
    }
}

/// Stops the dialing side's serve loop `task` and sees its `link` closed.
pub async fn stop_client(stop: &watch::Sender<bool>, task: JoinHandle<()>, link: &PeerLink) {
    stop.send(true).unwrap();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    assert!(link.is_closed());
    assert_eq!(
        link.request(req(RequestType::Get, "/", b"")).await,
        Err(LinkError::Closed)
    );
}

/// Asks `/ask` over `link`: a 2.05 Content, whose payload (the gateway's answer) is returned.
pub async fn ask_gateway(link: &PeerLink) -> String {
    let answer = tokio::time::timeout(WAIT, link.request(req(RequestType::Post, "/ask", b"?")))
        .await
        .expect("answered in time")
        .expect("a response");
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::Content)
    );
    String::from_utf8(answer.payload).unwrap()
}
