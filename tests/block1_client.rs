//! Our client side sends Block1 (RFC 7959 §2.3) over a real socket: a [`PeerLink::request`]
//! with a 5000-byte PUT over plain UDP goes out as five 1024-byte-or-less blocks, each
//! answered 2.31 Continue by a listener whose handler reassembles them with the registry's
//! [`Block1Assembler`], and the body arrives whole; a listener that wants 256-byte blocks
//! (late negotiation in its first 2.31) gets the rest in its size; over a stream (sans-IO
//! [`StreamEndpoint`](privgw::coap::StreamEndpoint) pair) blocks are used only above the
//! peer's Max-Message-Size, each on a fresh token.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use privgw::coap::TransportTuning;
use privgw::coap::{
    self, BlockOption, CoapOption, MessageClass, Packet, RequestType, ResponseType,
};
use privgw::config::{EndpointUri, Scheme};
use privgw::registry::block1::{Block1Assembler, echo_block1};
use privgw::runtime::{Handler, Listener, Security, spawn_session};
use privgw::transport::mux::DatagramMux;
use privgw::transport::{DatagramSession, PeerInfo};
use tokio::sync::watch;

/// Every wait in this file is bounded by this (the machine is loaded).
const WAIT: Duration = Duration::from_secs(20);

/// The listener's handler: reassembles Block1 requests and records each block's option
/// and each whole body; its 2.31 asks for blocks of `2^(szx + 4)` bytes.
struct Sink {
    assembler: Mutex<Block1Assembler<std::net::SocketAddr>>,
    blocks: Mutex<Vec<(BlockOption, Option<u32>, usize)>>,
    bodies: Mutex<Vec<Vec<u8>>>,
    szx: u8,
}

impl Sink {
    fn new(szx: u8) -> Self {
        Sink {
            assembler: Mutex::new(Block1Assembler::with_max_body(64 * 1024)),
            blocks: Mutex::new(Vec::new()),
            bodies: Mutex::new(Vec::new()),
            szx,
        }
    }
}

impl Handler for Sink {
    fn accepts_block1(&self) -> bool {
        true
    }

    async fn handle(&self, peer: &PeerInfo, request: Packet) -> Packet {
        if let Some(Ok(b)) = BlockOption::block1(&request) {
            let size1 = request
                .get_first_option(CoapOption::Size1)
                .and_then(|v| coap::decode_uint(v));
            self.blocks
                .lock()
                .unwrap()
                .push((b, size1, request.payload.len()));
        }
        let step = self
            .assembler
            .lock()
            .unwrap()
            .offer(Instant::now(), peer.addr, request.clone());
        match step.into_whole(&request) {
            Ok((whole, last)) => {
                self.bodies.lock().unwrap().push(whole.payload);
                let mut answer = coap::response_to(&request, ResponseType::Changed);
                if let Some(b) = last {
                    echo_block1(&mut answer, b);
                }
                answer
            }
            Err(mut answer) => {
                if let Some(Ok(mut b)) = BlockOption::block1(&answer) {
                    b.szx = b.szx.min(self.szx);
                    echo_block1(&mut answer, b);
                }
                answer
            }
        }
    }
}

/// A 5000-byte PUT from a dialing client to a listener with `sink`; returns the answer code.
async fn put_5000(sink: Arc<Sink>) -> (MessageClass, Vec<u8>) {
    let tuning = TransportTuning::unreliable();
    let uri = EndpointUri {
        scheme: Scheme::Coap,
        addr: "127.0.0.1:0".parse().unwrap(),
    };
    let listener = Listener::bind(uri, Security::NoSec).await.unwrap();
    let addr = listener.local_addr();
    let (_stop, shutdown) = watch::channel(false);
    tokio::spawn(listener.run(sink, tuning.clone(), shutdown));

    let mux = DatagramMux::bind("127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap()
        .0;
    let session = mux.connect(addr);
    let info = session.peer_info();
    let (_client_stop, client_shutdown) = watch::channel(false);
    let device = Arc::new(Sink::new(6));
    let (link, _task) = spawn_session(session, info, device, tuning, client_shutdown);

    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let mut put = Packet::new();
    put.header.code = MessageClass::Request(RequestType::Put);
    coap::set_uri(&mut put, "/19/0/0");
    put.payload = body.clone();
    let answer = tokio::time::timeout(WAIT, link.request(put))
        .await
        .expect("the PUT completes in time")
        .expect("the PUT succeeds");
    assert!(
        answer.get_option(CoapOption::Block1).is_none(),
        "the Block1 echo is ours, not the caller's"
    );
    (answer.header.code, body)
}

#[tokio::test]
async fn a_5000_byte_put_goes_in_1024_byte_blocks_and_arrives_whole() {
    let sink = Arc::new(Sink::new(6));
    let (code, body) = put_5000(sink.clone()).await;
    assert_eq!(code, MessageClass::Response(ResponseType::Changed));
    assert_eq!(*sink.bodies.lock().unwrap(), [body]);
    let blocks: Vec<_> = sink
        .blocks
        .lock()
        .unwrap()
        .iter()
        .map(|(b, size1, len)| (b.num, b.more, b.szx, *size1, *len))
        .collect();
    assert_eq!(
        blocks,
        [
            (0, true, 6, Some(5000), 1024),
            (1, true, 6, None, 1024),
            (2, true, 6, None, 1024),
            (3, true, 6, None, 1024),
            (4, false, 6, None, 904),
        ]
    );
}

#[tokio::test]
async fn a_server_asking_for_smaller_blocks_gets_the_rest_in_its_size() {
    let sink = Arc::new(Sink::new(4));
    let (code, body) = put_5000(sink.clone()).await;
    assert_eq!(code, MessageClass::Response(ResponseType::Changed));
    assert_eq!(*sink.bodies.lock().unwrap(), [body]);
    let blocks = sink.blocks.lock().unwrap().clone();
    assert_eq!(blocks.len(), 1 + (5000usize - 1024).div_ceil(256));
    assert_eq!(blocks[0].0.szx, 6);
    assert_eq!(
        blocks[1].0,
        BlockOption {
            num: 4,
            more: true,
            szx: 4
        },
        "1024 bytes = four 256-byte blocks already sent"
    );
    assert!(
        blocks[1..]
            .iter()
            .all(|(b, size1, _)| b.szx == 4 && size1.is_none())
    );
}

/// Reliable transport, sans-IO pair of [`StreamEndpoint`]s: the accepting side advertises
/// a Max-Message-Size of 1152 bytes (the RFC 8323 default), so our 3000-byte PUT goes in
/// 1024-byte Block1 blocks, each on a fresh token; a 100-byte PUT goes whole.
#[test]
fn over_a_stream_block1_is_used_only_above_the_peers_max_message_size() {
    use privgw::coap::{EndpointEvent, StreamConnection, StreamEndpoint};

    let t0 = Instant::now();
    let timeout = Duration::from_secs(30);
    let mut dialer = StreamEndpoint::new(StreamConnection::new(t0, 1 << 20, true), timeout);
    let mut acceptor = StreamEndpoint::new(StreamConnection::new(t0, 1152, true), timeout);
    let transfer = |from: &mut StreamEndpoint, to: &mut StreamEndpoint| {
        let mut n = 0;
        while let Some(bytes) = from.poll_transmit() {
            to.handle_bytes(t0, &bytes);
            n += 1;
        }
        n
    };
    while transfer(&mut dialer, &mut acceptor) + transfer(&mut acceptor, &mut dialer) > 0 {}
    assert_eq!(dialer.peer_max_message_size(), 1152);

    let body: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let mut put = Packet::new();
    put.header.code = MessageClass::Request(RequestType::Put);
    coap::set_uri(&mut put, "/19/0/0");
    put.payload = body.clone();
    let id = dialer.start_request(t0, put, vec![7, 0]);
    let mut assembler = Block1Assembler::<u8>::with_max_body(64 * 1024);
    let mut seen = Vec::new();
    let result = loop {
        while transfer(&mut dialer, &mut acceptor) + transfer(&mut acceptor, &mut dialer) > 0 {}
        if let Some(EndpointEvent::Response { id: got, result }) = dialer.poll_event() {
            assert_eq!(got, id);
            break result;
        }
        let Some(EndpointEvent::Request { request, responder }) = acceptor.poll_event() else {
            panic!("neither a request nor a response");
        };
        let b = BlockOption::block1(&request).unwrap().unwrap();
        seen.push((
            b.num,
            b.more,
            request.get_token().to_vec(),
            request.payload.len(),
        ));
        let answer = match assembler.offer(t0, 0, request.clone()).into_whole(&request) {
            Ok((whole, last)) => {
                assert_eq!(whole.payload, body);
                let mut a = coap::response_to(&request, ResponseType::Changed);
                echo_block1(&mut a, last.unwrap());
                a
            }
            Err(continue_or_refusal) => continue_or_refusal,
        };
        acceptor.respond(t0, responder, answer).unwrap();
    };
    assert_eq!(
        result.unwrap().header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    assert_eq!(
        seen,
        [
            (0, true, vec![7, 0], 1024),
            (1, true, vec![7, 1], 1024),
            (2, false, vec![7, 2], 952),
        ]
    );

    // A body that fits the peer's Max-Message-Size goes whole.
    let mut small = Packet::new();
    small.header.code = MessageClass::Request(RequestType::Put);
    coap::set_uri(&mut small, "/19/0/0");
    small.payload = vec![1; 100];
    let _ = dialer.start_request(t0, small, vec![8]);
    while transfer(&mut dialer, &mut acceptor) + transfer(&mut acceptor, &mut dialer) > 0 {}
    let Some(EndpointEvent::Request { request, .. }) = acceptor.poll_event() else {
        panic!("the small PUT arrives");
    };
    assert_eq!(request.payload.len(), 100);
    assert!(request.get_option(CoapOption::Block1).is_none());
}
