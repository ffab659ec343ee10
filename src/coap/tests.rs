//! quinn-style in-memory pairs in virtual time, no sockets, no clock:
//!
//! * UDP: one [`ClientExchange`] against one [`ServerExchanges`] + [`Block2Cache`], over two
//!   `VecDeque` links with fault knobs (drop the first N datagrams in a direction, duplicate
//!   every datagram).
//! * TCP (RFC 8323): a reliable-mode [`ClientExchange`] over a client [`StreamConnection`],
//!   a byte pipe delivered in small chunks, and a server [`StreamConnection`] +
//!   [`Block2Cache::apply_within`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::block::cache_key;
use super::*;

/// Fault knobs for one direction of the link (smoltcp `FaultInjector`, reduced).
#[derive(Debug, Default, Clone, Copy)]
struct Faults {
    /// Drop this many datagrams first.
    drop_first: usize,
    /// Deliver every datagram twice.
    duplicate: bool,
}

struct Pair {
    now: Instant,
    client: ClientExchange,
    server: ServerExchanges,
    cache: Block2Cache,
    /// client → server, server → client.
    to_server: VecDeque<Vec<u8>>,
    to_client: VecDeque<Vec<u8>>,
    up: Faults,
    down: Faults,
    /// How often the "handler" ran.
    executions: usize,
    body: Vec<u8>,
    events: Vec<ClientEvent>,
}

impl Pair {
    fn new(body_len: usize, up: Faults, down: Faults) -> Self {
        let now = Instant::now();
        let tuning = TransportTuning::unreliable();
        let mut request = Packet::new();
        request.header.code = MessageClass::Request(RequestType::Get);
        set_uri(&mut request, "/gw/acl?dev=1");
        let client = ClientExchange::new(now, tuning.clone(), request, 0x2000, vec![7, 7], 0.25);
        Self {
            now,
            client,
            server: ServerExchanges::new(tuning.clone()).with_first_mid(0x9000),
            cache: Block2Cache::new(tuning.exchange_lifetime()),
            to_server: VecDeque::new(),
            to_client: VecDeque::new(),
            up,
            down,
            executions: 0,
            body: (0..body_len).map(|i| (i * 7 % 256) as u8).collect(),
            events: Vec::new(),
        }
    }

    fn link(queue: &mut VecDeque<Vec<u8>>, faults: &mut Faults, datagram: Vec<u8>) {
        if faults.drop_first > 0 {
            faults.drop_first -= 1;
            return;
        }
        if faults.duplicate {
            queue.push_back(datagram.clone());
        }
        queue.push_back(datagram);
    }

    /// The server side's "driver": message layer, Block2 cache, one handler.
    fn serve(&mut self, datagram: &[u8]) {
        let reply = match self.server.handle_datagram(self.now, datagram) {
            Inbound::Request { request, responder } => {
                let key = cache_key(&request);
                let requested = BlockOption::block2(&request).and_then(Result::ok);
                let cached = requested.and_then(|b| self.cache.lookup(self.now, &key, b));
                let response = match cached {
                    Some(r) => r,
                    None => {
                        self.executions += 1;
                        let mut r = response_to(&request, ResponseType::Content);
                        set_content_format(&mut r, 11542);
                        r.payload = self.body.clone();
                        self.cache.apply(self.now, key, requested, r)
                    }
                };
                Some(self.server.respond(self.now, responder, response).unwrap())
            }
            Inbound::Reply(bytes) => Some(bytes),
            Inbound::Ignore => None,
        };
        if let Some(r) = reply {
            Self::link(&mut self.to_client, &mut self.down, r);
        }
    }

    /// Delivers everything in flight and flushes both sides' output; returns whether
    /// anything moved.
    fn step_io(&mut self) -> bool {
        let mut moved = false;
        while let Some(d) = self.client.poll_transmit(self.now) {
            Self::link(&mut self.to_server, &mut self.up, d);
            moved = true;
        }
        while let Some(d) = self.to_server.pop_front() {
            self.serve(&d);
            moved = true;
        }
        while let Some(d) = self.to_client.pop_front() {
            self.client.handle_datagram(self.now, &d);
            moved = true;
        }
        while let Some(e) = self.client.poll_event() {
            self.events.push(e);
        }
        moved
    }

    /// Drives until the client has an outcome; livelock is a test failure
    /// (quinn `drive_bounded`).
    fn drive(&mut self) {
        for _ in 0..100 {
            while self.step_io() {}
            if !self.events.is_empty() {
                return;
            }
            let Some(t) = self.client.poll_timeout() else {
                return;
            };
            self.now = self.now.max(t);
            self.client.handle_timeout(self.now);
        }
        panic!("no outcome after 100 steps");
    }

    /// Jumps the server's virtual clock and expires its state.
    fn advance_server(&mut self, by: Duration) {
        self.now += by;
        self.server.handle_timeout(self.now);
        self.cache.handle_timeout(self.now);
    }

    #[track_caller]
    fn response(&self) -> &Packet {
        match self.events.as_slice() {
            [ClientEvent::Response(p)] => p,
            other => panic!("expected one Response, got {other:?}"),
        }
    }
}

#[test]
fn small_response_over_a_clean_link_executes_once() {
    let mut pair = Pair::new(10, Faults::default(), Faults::default());
    pair.drive();
    assert_eq!(pair.response().payload, pair.body);
    assert_eq!(content_format(pair.response()), Some(11542));
    assert_eq!(pair.executions, 1);
}

#[test]
fn lost_request_is_retransmitted_and_executed_once() {
    let up = Faults {
        drop_first: 2,
        duplicate: false,
    };
    let mut pair = Pair::new(10, up, Faults::default());
    let t0 = pair.now;
    pair.drive();
    assert_eq!(pair.response().payload, pair.body);
    assert_eq!(pair.executions, 1);
    // Two losses: timeouts of 2.25 s and 4.5 s (2 s × (1 + 0.25 × 0.5), doubled) passed.
    assert_eq!(pair.now - t0, Duration::from_millis(6750));
}

#[test]
fn lost_response_is_replayed_from_dedup_without_second_execution() {
    let down = Faults {
        drop_first: 1,
        duplicate: false,
    };
    let mut pair = Pair::new(10, Faults::default(), down);
    pair.drive();
    assert_eq!(pair.response().payload, pair.body);
    assert_eq!(
        pair.executions, 1,
        "the retransmitted CON got the stored reply"
    );
}

#[test]
fn duplicated_datagrams_both_ways_yield_one_execution_and_one_event() {
    let dup = Faults {
        drop_first: 0,
        duplicate: true,
    };
    let mut pair = Pair::new(10, dup, dup);
    pair.drive();
    assert_eq!(pair.response().payload, pair.body);
    assert_eq!(pair.executions, 1);
}

#[test]
fn large_response_arrives_complete_via_block2_with_loss_and_duplication() {
    let up = Faults {
        drop_first: 1,
        duplicate: true,
    };
    let down = Faults {
        drop_first: 1,
        duplicate: true,
    };
    let mut pair = Pair::new(5000, up, down);
    pair.drive();
    let p = pair.response();
    assert_eq!(p.payload.len(), 5000);
    assert_eq!(p.payload, pair.body);
    assert!(p.get_option(CoapOption::Block2).is_none());
    assert_eq!(
        pair.executions, 1,
        "follow-up blocks came from the Block2 cache"
    );
    assert_eq!(pair.client.next_mid(), 0x2000 + 5, "five blocks, five MIDs");
}

#[test]
fn server_state_is_empty_after_exchange_lifetime() {
    let mut pair = Pair::new(5000, Faults::default(), Faults::default());
    pair.drive();
    assert_eq!(pair.response().payload.len(), 5000);
    assert_eq!(pair.server.len(), 5);
    assert_eq!(pair.cache.len(), 1);
    let lifetime = pair.server.tuning().exchange_lifetime();
    pair.advance_server(lifetime);
    assert_eq!(pair.server.len(), 0);
    assert_eq!(pair.server.poll_timeout(), None);
    assert!(pair.cache.is_empty());
    assert_eq!(pair.client.poll_timeout(), None);
}

#[test]
fn silent_server_makes_client_time_out_after_max_transmit_wait() {
    let up = Faults {
        drop_first: usize::MAX,
        duplicate: false,
    };
    let mut pair = Pair::new(10, up, Faults::default());
    let t0 = pair.now;
    pair.drive();
    assert!(matches!(
        pair.events.as_slice(),
        [ClientEvent::Failed(ClientError::TimedOut)]
    ));
    assert_eq!(pair.executions, 0);
    let tuning = TransportTuning::unreliable();
    assert!(pair.now - t0 <= tuning.max_transmit_wait());
    assert!(pair.now - t0 >= tuning.max_transmit_span());
}

// ---------------------------------------------------------------------------------------
// TCP (RFC 8323) pair
// ---------------------------------------------------------------------------------------

struct TcpPair {
    now: Instant,
    client: ClientExchange,
    client_conn: StreamConnection,
    server_conn: StreamConnection,
    cache: Block2Cache,
    /// Bytes in flight, client → server and server → client.
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    /// Bytes are delivered in chunks of this size (exercises stream reassembly).
    chunk: usize,
    executions: usize,
    body: Vec<u8>,
    /// Sizes of the request/response frames the server sent (its CSM excluded).
    server_frames: Vec<usize>,
    events: Vec<ClientEvent>,
}

impl TcpPair {
    /// `client_max`: the Max-Message-Size the client advertises (the server sizes its
    /// responses to it); the server advertises 1 MiB.
    fn new(body_len: usize, client_max: u32, chunk: usize) -> Self {
        let now = Instant::now();
        let mut request = Packet::new();
        request.header.code = MessageClass::Request(RequestType::Get);
        set_uri(&mut request, "/gw/acl?dev=1");
        let mut server_conn = StreamConnection::new(now, 1 << 20, true);
        // The server's CSM is not a response frame; send it before counting.
        let mut to_client = Vec::new();
        while let Some(b) = server_conn.poll_transmit() {
            to_client.extend(b);
        }
        Self {
            now,
            client: ClientExchange::new_reliable(
                now,
                request,
                vec![7, 7, 7, 7],
                Duration::from_secs(30),
            ),
            client_conn: StreamConnection::new(now, client_max, true),
            server_conn,
            cache: Block2Cache::new(Duration::from_secs(60)),
            to_server: Vec::new(),
            to_client,
            chunk,
            executions: 0,
            body: (0..body_len).map(|i| (i * 7 % 256) as u8).collect(),
            server_frames: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The server's driver: Block2 follow-ups from the cache, otherwise run the handler and
    /// size the response to the client's Max-Message-Size.
    fn serve(&mut self, request: Packet) {
        let key = cache_key(&request);
        let requested = BlockOption::block2(&request).and_then(Result::ok);
        let cached = requested.and_then(|b| self.cache.lookup(self.now, &key, b));
        let mut response = match cached {
            Some(r) => r,
            None => {
                self.executions += 1;
                let mut r = response_to(&request, ResponseType::Content);
                r.payload = self.body.clone();
                let peer_max = self.server_conn.peer_max_message_size();
                self.cache
                    .apply_within(self.now, key, requested, r, peer_max)
            }
        };
        // Cached blocks carry the first request's token; each request has its own.
        response.set_token(request.get_token().to_vec());
        self.server_conn.send(&response).unwrap();
        while let Some(b) = self.server_conn.poll_transmit() {
            self.server_frames.push(b.len());
            self.to_client.extend(b);
        }
    }

    fn deliver(conn: &mut StreamConnection, now: Instant, bytes: Vec<u8>, chunk: usize) {
        for c in bytes.chunks(chunk) {
            conn.handle_bytes(now, c);
        }
    }

    fn step_io(&mut self) -> bool {
        let mut moved = false;
        while let Some(p) = self.client.poll_request() {
            self.client_conn.send(&p).unwrap();
        }
        while let Some(b) = self.client_conn.poll_transmit() {
            self.to_server.extend(b);
        }
        if !self.to_server.is_empty() {
            let bytes = std::mem::take(&mut self.to_server);
            Self::deliver(&mut self.server_conn, self.now, bytes, self.chunk);
            moved = true;
        }
        while let Some(e) = self.server_conn.poll_event() {
            match e {
                StreamEvent::Request(r) => self.serve(r),
                other => panic!("server got {other:?}"),
            }
        }
        if !self.to_client.is_empty() {
            let bytes = std::mem::take(&mut self.to_client);
            Self::deliver(&mut self.client_conn, self.now, bytes, self.chunk);
            moved = true;
        }
        while let Some(e) = self.client_conn.poll_event() {
            match e {
                StreamEvent::Response(p) => self.client.handle_response(self.now, p),
                other => panic!("client got {other:?}"),
            }
        }
        while let Some(e) = self.client.poll_event() {
            self.events.push(e);
        }
        moved
    }

    fn drive(&mut self) {
        for _ in 0..100 {
            if !self.step_io() {
                return;
            }
        }
        panic!("livelock after 100 steps");
    }

    #[track_caller]
    fn response(&self) -> &Packet {
        match self.events.as_slice() {
            [ClientEvent::Response(p)] => p,
            other => panic!("expected one Response, got {other:?}"),
        }
    }
}

#[test]
fn tcp_5000_byte_body_arrives_via_block2_when_the_peer_allows_1152() {
    let mut pair = TcpPair::new(5000, 1152, 7);
    pair.drive();
    let p = pair.response();
    assert_eq!(p.payload, pair.body);
    assert!(p.get_option(CoapOption::Block2).is_none());
    assert_eq!(pair.executions, 1, "follow-ups came from the Block2 cache");
    assert_eq!(pair.server_frames.len(), 5, "five 1024-byte blocks");
    assert!(pair.server_frames.iter().all(|n| *n <= 1152));
    assert_eq!(
        pair.client.token(),
        [7, 7, 7, 11],
        "a fresh token per block"
    );
    assert!(pair.client_conn.peer_csm_received() && pair.server_conn.peer_csm_received());
}

#[test]
fn tcp_5000_byte_body_goes_whole_when_the_peer_allows_1_mib() {
    let mut pair = TcpPair::new(5000, 1 << 20, 7);
    pair.drive();
    let p = pair.response();
    assert_eq!(p.payload, pair.body);
    assert_eq!(pair.executions, 1);
    assert_eq!(pair.server_frames.len(), 1, "one frame, no Block2");
    assert!(pair.server_frames[0] > 5000);
    assert!(pair.cache.is_empty());
    assert_eq!(pair.client.token(), [7, 7, 7, 7]);
}

#[test]
fn tcp_small_body_over_one_byte_chunks_executes_once() {
    let mut pair = TcpPair::new(10, 1152, 1);
    pair.drive();
    assert_eq!(pair.response().payload, pair.body);
    assert_eq!(pair.executions, 1);
}
