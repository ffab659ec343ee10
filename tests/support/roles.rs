//! The two-role test handler shared by `endpoint_roles.rs` (datagram sessions) and
//! `stream_roles.rs` (stream connections): the request builder [`req`], the listener's
//! [`Gateway`], which asks the peer back over the session's [`PeerLink`], and the dialing
//! side's answer ([`device_answer`]). Included with `#[path]`; the transport specifics and
//! the dialing side's handlers (delays, counters) stay in each test.

use std::sync::Mutex;

use privgw::coap::{self, MessageClass, Packet, RequestType, ResponseType};
use privgw::runtime::{Handler, PeerLink};
use privgw::transport::PeerInfo;

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
