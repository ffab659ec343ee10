//! Tests of [`Endpoint`] in virtual time, no sockets: single endpoints fed hand-made
//! datagrams (smoltcp style), and a quinn-style [`Pair`] of two endpoints joined by
//! in-memory links with latency and a deterministic drop pattern, each side running a
//! handler that answers after a configurable delay.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::*;
use crate::coap::{
    MessageClass, RequestType, ResponseType, encode, response_to, set_uri, uri_path,
};

fn tuning() -> TransportTuning {
    TransportTuning::unreliable()
}

fn get(path: &str) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Request(RequestType::Get);
    set_uri(&mut p, path);
    p
}

/// A CON or NON request from the peer, encoded.
fn peer_request(t: MessageType, mid: u16, token: &[u8], path: &str) -> Vec<u8> {
    let mut p = get(path);
    p.header.set_type(t);
    p.header.message_id = mid;
    p.set_token(token.to_vec());
    encode(&p).unwrap()
}

/// A response from the peer, encoded.
fn peer_response(t: MessageType, mid: u16, token: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(t);
    p.header.message_id = mid;
    p.header.code = MessageClass::Response(ResponseType::Content);
    p.set_token(token.to_vec());
    p.payload = payload.to_vec();
    encode(&p).unwrap()
}

#[track_caller]
fn sent(e: &mut Endpoint) -> Packet {
    decode(&e.poll_transmit().expect("a datagram to send")).unwrap()
}

#[track_caller]
fn nothing_sent(e: &mut Endpoint) {
    if let Some(b) = e.poll_transmit() {
        panic!("unexpected datagram {:?}", decode(&b));
    }
}

#[track_caller]
fn expect_request(e: &mut Endpoint) -> (Packet, Responder) {
    match e.poll_event() {
        Some(EndpointEvent::Request { request, responder }) => (request, responder),
        other => panic!("expected a request, got {other:?}"),
    }
}

#[track_caller]
fn expect_response(e: &mut Endpoint) -> (RequestId, Result<Packet, ClientError>) {
    match e.poll_event() {
        Some(EndpointEvent::Response { id, result }) => (id, result),
        other => panic!("expected a response, got {other:?}"),
    }
}

fn content(request: &Packet, payload: &[u8]) -> Packet {
    let mut r = response_to(request, ResponseType::Content);
    r.payload = payload.to_vec();
    r
}

fn is_empty(p: &Packet, t: MessageType, mid: u16) -> bool {
    p.header.code == MessageClass::Empty && p.header.get_type() == t && p.header.message_id == mid
}

// ---- Client role on one endpoint --------------------------------------------------------

#[test]
fn our_con_is_retransmitted_with_the_same_mid_until_acked() {
    let t0 = Instant::now();
    let mut e = Endpoint::new(tuning(), 0x100);
    let id = e.start_request(t0, get("/3/0"), vec![1, 2], 0.0);
    let first = sent(&mut e);
    assert_eq!(first.header.get_type(), MessageType::Confirmable);
    assert_eq!(
        (first.header.message_id, first.get_token()),
        (0x100, &[1u8, 2][..])
    );
    assert_eq!(e.poll_timeout(), Some(t0 + Duration::from_secs(2)));
    let t1 = t0 + Duration::from_secs(2);
    e.handle_timeout(t1);
    assert_eq!(sent(&mut e).header.message_id, 0x100, "same MID");
    assert_eq!(e.poll_timeout(), Some(t1 + Duration::from_secs(4)));
    e.handle_datagram(
        t1,
        &peer_response(MessageType::Acknowledgement, 0x100, &[1, 2], b"ok"),
    );
    let (got, result) = expect_response(&mut e);
    assert_eq!(got, id);
    assert_eq!(result.unwrap().payload, b"ok");
    nothing_sent(&mut e);
    assert!(e.is_idle());
    assert_eq!(e.poll_timeout(), None);
}

#[test]
fn unanswered_con_times_out_after_max_retransmit() {
    let t0 = Instant::now();
    let mut e = Endpoint::new(tuning(), 1);
    let id = e.start_request(t0, get("/x"), vec![7], 0.0);
    let mut sends = 0;
    while let Some(t) = e.poll_timeout() {
        while e.poll_transmit().is_some() {
            sends += 1;
        }
        e.handle_timeout(t);
    }
    assert_eq!(
        sends, 5,
        "the original and MAX_RETRANSMIT = 4 retransmissions"
    );
    assert_eq!(expect_response(&mut e), (id, Err(ClientError::TimedOut)));
}

#[test]
fn rst_of_our_request_fails_it_with_reset() {
    let t0 = Instant::now();
    let mut e = Endpoint::new(tuning(), 0x200);
    let id = e.start_request(t0, get("/x"), vec![7], 0.0);
    let _ = sent(&mut e);
    e.handle_datagram(t0, &[0x70, 0x00, 0x02, 0x00]);
    assert_eq!(expect_response(&mut e), (id, Err(ClientError::Reset)));
    assert!(e.is_idle());
    // An RST for a MID of nobody's is ignored.
    e.handle_datagram(t0, &[0x70, 0x00, 0x09, 0x99]);
    assert!(e.poll_event().is_none());
    nothing_sent(&mut e);
}

#[test]
fn con_response_is_acked_and_its_retransmission_re_acked_without_a_second_event() {
    let t0 = Instant::now();
    let mut e = Endpoint::new(tuning(), 0x300);
    let id = e.start_request(t0, get("/x"), vec![9, 9], 0.0);
    let _ = sent(&mut e);
    e.handle_datagram(t0, &[0x60, 0x00, 0x03, 0x00]); // empty ACK: separate response follows
    assert!(e.poll_event().is_none());
    let t1 = t0 + Duration::from_secs(10);
    e.handle_timeout(t1);
    nothing_sent(&mut e);
    let separate = peer_response(MessageType::Confirmable, 0x7777, &[9, 9], b"late");
    e.handle_datagram(t1, &separate);
    assert!(is_empty(
        &sent(&mut e),
        MessageType::Acknowledgement,
        0x7777
    ));
    let (got, result) = expect_response(&mut e);
    assert_eq!(got, id);
    assert_eq!(result.unwrap().payload, b"late");
    // Our ACK was lost: the peer retransmits. ACK again, no event, no RST.
    e.handle_datagram(t1, &separate);
    assert!(is_empty(
        &sent(&mut e),
        MessageType::Acknowledgement,
        0x7777
    ));
    assert!(e.poll_event().is_none());
    nothing_sent(&mut e);
}

#[test]
fn response_matching_nothing_gets_rst_if_con_and_is_ignored_otherwise() {
    let t0 = Instant::now();
    let mut e = Endpoint::new(tuning(), 0x400);
    e.handle_datagram(t0, &peer_response(MessageType::Confirmable, 5, &[1], b"?"));
    assert!(is_empty(&sent(&mut e), MessageType::Reset, 5));
    e.handle_datagram(
        t0,
        &peer_response(MessageType::NonConfirmable, 6, &[1], b"?"),
    );
    e.handle_datagram(
        t0,
        &peer_response(MessageType::Acknowledgement, 7, &[1], b"?"),
    );
    e.handle_datagram(t0, &[0x60, 0x00, 0x00, 0x08]);
    nothing_sent(&mut e);
    assert!(e.poll_event().is_none());
}

#[test]
fn non_response_by_token_completes_a_non_request() {
    let t0 = Instant::now();
    let mut e = Endpoint::new(tuning(), 0x500);
    let mut req = get("/x");
    req.header.set_type(MessageType::NonConfirmable);
    let id = e.start_request(t0, req, vec![4], 0.0);
    assert_eq!(sent(&mut e).header.get_type(), MessageType::NonConfirmable);
    e.handle_datagram(
        t0,
        &peer_response(MessageType::NonConfirmable, 0x9000, &[4], b"n"),
    );
    nothing_sent(&mut e);
    assert_eq!(expect_response(&mut e).0, id);
}

#[test]
fn nstart_1_queues_in_order_and_a_full_queue_fails_busy_at_once() {
    let t0 = Instant::now();
    let mut e = Endpoint::new(tuning(), 0x600).with_queue_limit(2);
    let a = e.start_request(t0, get("/a"), vec![1], 0.0);
    let b = e.start_request(t0, get("/b"), vec![2], 0.0);
    let c = e.start_request(t0, get("/c"), vec![3], 0.0);
    let d = e.start_request(t0, get("/d"), vec![4], 0.0);
    assert_eq!(expect_response(&mut e), (d, Err(ClientError::Busy)));
    assert_eq!((e.in_flight(), e.queued()), (1, 2));
    let mut order = Vec::new();
    for (id, _) in [(a, 0), (b, 1), (c, 2)] {
        let p = sent(&mut e);
        nothing_sent(&mut e);
        order.push(uri_path(&p).unwrap().join("/"));
        e.handle_datagram(
            t0,
            &peer_response(
                MessageType::Acknowledgement,
                p.header.message_id,
                p.get_token(),
                b"",
            ),
        );
        assert_eq!(expect_response(&mut e).0, id);
    }
    assert_eq!(order, ["a", "b", "c"]);
    assert!(e.is_idle());
}

#[test]
fn a_cancelled_queued_request_is_never_sent_and_an_in_flight_one_still_completes() {
    let t0 = Instant::now();
    let mut e = Endpoint::new(tuning(), 0x700);
    let a = e.start_request(t0, get("/a"), vec![1], 0.0);
    let b = e.start_request(t0, get("/b"), vec![2], 0.0);
    let c = e.start_request(t0, get("/c"), vec![3], 0.0);
    assert!(e.cancel(b));
    assert!(!e.cancel(a), "in flight: runs to its end");
    let pa = sent(&mut e);
    e.handle_datagram(
        t0,
        &peer_response(
            MessageType::Acknowledgement,
            pa.header.message_id,
            &[1],
            b"",
        ),
    );
    assert_eq!(expect_response(&mut e).0, a);
    let pc = sent(&mut e);
    assert_eq!(uri_path(&pc).unwrap(), ["c"], "/b was withdrawn");
    assert_eq!(pc.header.message_id, 0x701, "no MID spent on /b");
    e.handle_datagram(
        t0,
        &peer_response(MessageType::Acknowledgement, 0x701, &[3], b""),
    );
    assert_eq!(expect_response(&mut e).0, c);
    assert!(e.poll_event().is_none(), "no event for /b");
}

#[test]
fn nstart_2_keeps_two_in_flight_with_distinct_mids_and_tokens_in_use_are_refused() {
    let t0 = Instant::now();
    let mut e = Endpoint::new(tuning(), 0xfffe).with_nstart(2);
    let _a = e.start_request(t0, get("/a"), vec![1], 0.0);
    let _b = e.start_request(t0, get("/b"), vec![2], 0.0);
    let (pa, pb) = (sent(&mut e), sent(&mut e));
    assert_eq!(
        (pa.header.message_id, pb.header.message_id),
        (0xfffe, 0xffff)
    );
    let dup = e.start_request(t0, get("/c"), vec![1], 0.0);
    assert_eq!(e.queued(), 1);
    // /b answered: /c's turn, but its token is /a's, still in flight.
    e.handle_datagram(
        t0,
        &peer_response(MessageType::Acknowledgement, 0xffff, &[2], b""),
    );
    let _ = expect_response(&mut e);
    assert!(matches!(
        expect_response(&mut e),
        (id, Err(ClientError::InvalidRequest(_))) if id == dup
    ));
}

#[test]
fn block2_follow_ups_take_mids_from_the_one_space() {
    let t0 = Instant::now();
    let mut e = Endpoint::new(tuning(), 10);
    let id = e.start_request(t0, get("/big"), vec![5], 0.0);
    let first = sent(&mut e);
    assert_eq!(first.header.message_id, 10);
    // Meanwhile the peer sends a NON request; our NON answer takes MID 11.
    e.handle_datagram(
        t0,
        &peer_request(MessageType::NonConfirmable, 500, &[0xee], "/p"),
    );
    let (req, responder) = expect_request(&mut e);
    e.respond(t0, responder, content(&req, b"")).unwrap();
    assert_eq!(sent(&mut e).header.message_id, 11);
    let mut block = decode(&peer_response(
        MessageType::Acknowledgement,
        10,
        &[5],
        &[1; 16],
    ))
    .unwrap();
    let b0 = crate::coap::BlockOption {
        num: 0,
        more: true,
        szx: 0,
    };
    crate::coap::set_single(
        &mut block,
        crate::coap::CoapOption::Block2,
        b0.encode().unwrap(),
    );
    e.handle_datagram(t0, &encode(&block).unwrap());
    let follow_up = sent(&mut e);
    assert_eq!(
        follow_up.header.message_id, 12,
        "after the NON response's MID"
    );
    let mut last = decode(&peer_response(
        MessageType::Acknowledgement,
        12,
        &[5],
        &[2; 3],
    ))
    .unwrap();
    let b1 = crate::coap::BlockOption {
        num: 1,
        more: false,
        szx: 0,
    };
    crate::coap::set_single(
        &mut last,
        crate::coap::CoapOption::Block2,
        b1.encode().unwrap(),
    );
    e.handle_datagram(t0, &encode(&last).unwrap());
    let (got, result) = expect_response(&mut e);
    assert_eq!(got, id);
    assert_eq!(result.unwrap().payload.len(), 19);
    assert_eq!(e.next_mid(), 13);
}

// ---- Server role on one endpoint --------------------------------------------------------

#[test]
fn duplicate_of_the_peers_con_is_replayed_and_never_executed_twice() {
    let t0 = Instant::now();
    let mut e = Endpoint::new(tuning(), 0);
    let dg = peer_request(MessageType::Confirmable, 42, &[1], "/a");
    e.handle_datagram(t0, &dg);
    let (req, responder) = expect_request(&mut e);
    e.handle_datagram(t0, &dg);
    assert!(e.poll_event().is_none(), "duplicate while in the handler");
    nothing_sent(&mut e);
    e.respond(t0, responder, content(&req, b"x")).unwrap();
    let answer = sent(&mut e);
    assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(answer.header.message_id, 42);
    e.handle_datagram(t0 + Duration::from_secs(3), &dg);
    assert_eq!(sent(&mut e), answer, "replayed");
    assert!(e.poll_event().is_none());
}

#[test]
fn slow_handler_gets_empty_ack_then_a_con_separate_response_retransmitted_until_acked() {
    let t0 = Instant::now();
    let mut e = Endpoint::new(tuning(), 0x0800);
    let dg = peer_request(MessageType::Confirmable, 42, &[1, 1], "/slow");
    e.handle_datagram(t0, &dg);
    let (req, responder) = expect_request(&mut e);
    assert_eq!(
        e.poll_timeout(),
        Some(t0 + Duration::from_secs(1)),
        "ACK_TIMEOUT / 2"
    );
    let t1 = t0 + Duration::from_secs(1);
    e.handle_timeout(t1);
    assert!(is_empty(&sent(&mut e), MessageType::Acknowledgement, 42));
    // A duplicate meanwhile replays the empty ACK and runs nothing.
    e.handle_datagram(t1, &dg);
    assert!(is_empty(&sent(&mut e), MessageType::Acknowledgement, 42));
    assert!(e.poll_event().is_none());
    let t2 = t1 + Duration::from_secs(5);
    e.respond(t2, responder, content(&req, b"done")).unwrap();
    let separate = sent(&mut e);
    assert_eq!(separate.header.get_type(), MessageType::Confirmable);
    assert_eq!(
        separate.header.message_id, 0x0800,
        "a fresh MID from the one space"
    );
    assert_eq!(
        (separate.get_token(), &separate.payload[..]),
        (&[1u8, 1][..], &b"done"[..])
    );
    assert_eq!(e.separate_in_flight(), 1);
    assert!(!e.is_idle());
    let t3 = t2 + Duration::from_secs(2);
    e.handle_timeout(t3);
    assert_eq!(sent(&mut e), separate, "retransmitted");
    // A duplicate of the request now replays the response.
    e.handle_datagram(t3, &dg);
    assert_eq!(sent(&mut e), separate);
    e.handle_datagram(t3, &[0x60, 0x00, 0x08, 0x00]);
    assert_eq!(e.separate_in_flight(), 0);
    e.handle_timeout(t3 + Duration::from_secs(60));
    nothing_sent(&mut e);
}

#[test]
fn separate_response_gives_up_after_max_retransmit_and_rst_stops_it() {
    let t0 = Instant::now();
    let mut e = Endpoint::new(tuning(), 0x0900);
    e.handle_datagram(t0, &peer_request(MessageType::Confirmable, 1, &[1], "/a"));
    let (req, responder) = expect_request(&mut e);
    e.handle_timeout(t0 + Duration::from_secs(1));
    let _ack = sent(&mut e);
    e.respond(t0 + Duration::from_secs(1), responder, content(&req, b""))
        .unwrap();
    let mut sends = 0;
    while e.separate_in_flight() > 0 {
        while e.poll_transmit().is_some() {
            sends += 1;
        }
        let t = e.poll_timeout().unwrap();
        e.handle_timeout(t);
    }
    assert_eq!(sends, 5);
    e.handle_datagram(t0, &peer_request(MessageType::Confirmable, 2, &[2], "/b"));
    let (req, responder) = expect_request(&mut e);
    e.handle_timeout(t0 + Duration::from_secs(300));
    let _ack = sent(&mut e);
    e.respond(t0 + Duration::from_secs(300), responder, content(&req, b""))
        .unwrap();
    let p = sent(&mut e);
    e.handle_datagram(t0 + Duration::from_secs(300), &[0x70, 0x00, 0x09, 0x01]);
    assert_eq!(p.header.message_id, 0x0901);
    assert_eq!(e.separate_in_flight(), 0, "RST ends it");
}

#[test]
fn no_threshold_answers_piggybacked_however_slow() {
    let t0 = Instant::now();
    let mut e = Endpoint::new(tuning(), 0).with_separate_after(None);
    e.handle_datagram(t0, &peer_request(MessageType::Confirmable, 3, &[1], "/a"));
    let (req, responder) = expect_request(&mut e);
    let t1 = t0 + Duration::from_secs(30);
    e.handle_timeout(t1);
    nothing_sent(&mut e);
    e.respond(t1, responder, content(&req, b"")).unwrap();
    assert_eq!(sent(&mut e).header.get_type(), MessageType::Acknowledgement);
}

#[test]
fn garbage_never_panics() {
    let t0 = Instant::now();
    let mut rng = 0x0123_4567_89ab_cdefu64;
    let mut next = || {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut e = Endpoint::new(tuning(), 0).with_nstart(3);
    let mut now = t0;
    for i in 0..20_000u32 {
        if i % 50 == 0 {
            let _ = e.start_request(now, get("/g"), (i as u16).to_be_bytes().to_vec(), 0.3);
        }
        if i % 500 == 0 {
            let _ = e.start_observe(now, get("/o"), vec![(i >> 8) as u8], 0.3);
            let token = [(next() % 4) as u8];
            let _ = e.notify(now, &token, content(&get("/"), b"n"), i % 1000 == 0);
        }
        let len = (next() % 40) as usize;
        let mut dg: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if let Some(b) = dg.first_mut() {
            *b = 0x40 | (*b & 0x3f);
        }
        e.handle_datagram(now, &dg);
        while e.poll_transmit().is_some() {}
        while let Some(ev) = e.poll_event() {
            if let EndpointEvent::Request { request, responder } = ev {
                let mut answer = content(&request, b"");
                crate::coap::observe::set_observe(&mut answer, 0);
                let _ = e.respond(now, responder, answer);
            }
        }
        now += Duration::from_millis(7);
        if e.poll_timeout().is_some_and(|t| t <= now) {
            e.handle_timeout(now);
        }
    }
}

// ---- Two endpoints on one lossy session -------------------------------------------------

/// One side of a [`Pair`]: an endpoint and a handler that answers `"<name>:<path>"` after
/// `delay`, counting executions by path.
struct Side {
    name: &'static str,
    ep: Endpoint,
    delay: Duration,
    /// Answers due: (time, request, responder).
    running: Vec<(Instant, Packet, Responder)>,
    executed: HashMap<String, usize>,
    responses: Vec<(RequestId, Result<Packet, ClientError>)>,
    /// Notifications of our observations, in delivery order.
    notifications: Vec<(ObservationId, Packet)>,
    /// Ends of our observations, and removals of the peer's observers.
    ended: Vec<(ObservationId, ObserveEnd)>,
    removed: Vec<(Vec<u8>, ObserverRemoval)>,
    /// MIDs of every CON/NON we sent, with the time they were first used.
    mids: Vec<(Instant, u16)>,
}

impl Side {
    fn new(name: &'static str, first_mid: u16, delay: Duration) -> Self {
        Side {
            name,
            ep: Endpoint::new(tuning(), first_mid).with_rng_fraction(0.25),
            delay,
            running: Vec::new(),
            executed: HashMap::new(),
            responses: Vec::new(),
            notifications: Vec::new(),
            ended: Vec::new(),
            removed: Vec::new(),
            mids: Vec::new(),
        }
    }

    fn events(&mut self, now: Instant) {
        while let Some(ev) = self.ep.poll_event() {
            match ev {
                EndpointEvent::Request { request, responder } => {
                    let path = uri_path(&request).unwrap().join("/");
                    *self.executed.entry(path).or_default() += 1;
                    self.running.push((now + self.delay, request, responder));
                }
                EndpointEvent::Response { id, result } => self.responses.push((id, result)),
                EndpointEvent::Notification { id, response } => {
                    self.notifications.push((id, response));
                }
                EndpointEvent::ObservationEnded { id, reason } => self.ended.push((id, reason)),
                EndpointEvent::ObserverRemoved { token, reason } => {
                    self.removed.push((token, reason));
                }
            }
        }
    }

    fn finish_handlers(&mut self, now: Instant) {
        let (due, later): (Vec<_>, Vec<_>) =
            self.running.drain(..).partition(|(t, _, _)| *t <= now);
        self.running = later;
        for (_, request, responder) in due {
            let path = uri_path(&request).unwrap().join("/");
            let body = format!("{}:{path}", self.name).into_bytes();
            let mut answer = content(&request, &body);
            // A registration is accepted: the answer carries Observe.
            if crate::coap::observe::observe_value(&request) == Some(0) {
                crate::coap::observe::set_observe(&mut answer, 0);
            }
            self.ep.respond(now, responder, answer).unwrap();
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let handlers = self.running.iter().map(|(t, _, _)| *t).min();
        [self.ep.poll_timeout(), handlers]
            .into_iter()
            .flatten()
            .min()
    }

    fn response(&self, id: RequestId) -> &Packet {
        let hits: Vec<_> = self.responses.iter().filter(|(i, _)| *i == id).collect();
        assert_eq!(
            hits.len(),
            1,
            "{}: exactly one outcome for {id:?}",
            self.name
        );
        hits[0].1.as_ref().expect("a response")
    }
}

/// Two endpoints joined by in-memory links with `latency`; `drop(n)` decides whether the
/// n-th datagram on the wire (both directions counted together) is lost.
struct Pair {
    now: Instant,
    a: Side,
    b: Side,
    to_a: VecDeque<(Instant, Vec<u8>)>,
    to_b: VecDeque<(Instant, Vec<u8>)>,
    latency: Duration,
    wire: usize,
    drop: fn(usize) -> bool,
}

impl Pair {
    fn new(a_delay: Duration, b_delay: Duration, drop: fn(usize) -> bool) -> Self {
        Pair {
            now: Instant::now(),
            a: Side::new("a", 0x1000, a_delay),
            b: Side::new("b", 0x2000, b_delay),
            to_a: VecDeque::new(),
            to_b: VecDeque::new(),
            latency: Duration::from_millis(20),
            wire: 0,
            drop,
        }
    }

    fn transmit(&mut self) {
        for (side, link) in [(&mut self.a, &mut self.to_b), (&mut self.b, &mut self.to_a)] {
            side.events(self.now);
            while let Some(bytes) = side.ep.poll_transmit() {
                if let Ok(p) = decode(&bytes)
                    && matches!(
                        p.header.get_type(),
                        MessageType::Confirmable | MessageType::NonConfirmable
                    )
                    && !side.mids.iter().any(|(_, m)| *m == p.header.message_id)
                {
                    side.mids.push((self.now, p.header.message_id));
                }
                self.wire += 1;
                if std::env::var_os("PAIR_TRACE").is_some() {
                    eprintln!(
                        "{:?} {} -> {:?}",
                        self.now,
                        side.name,
                        decode(&bytes).map(|p| (
                            p.header.get_type(),
                            p.header.code,
                            p.header.message_id,
                            p.get_token().to_vec()
                        ))
                    );
                }
                if !(self.drop)(self.wire) {
                    link.push_back((self.now + self.latency, bytes));
                }
            }
        }
    }

    /// One step: jump to the next wakeup, deliver what has arrived, run due timers and
    /// handlers, send the output. `false` once nothing at all is left to happen.
    fn step(&mut self) -> bool {
        let next = [
            self.a.next_wakeup(),
            self.b.next_wakeup(),
            self.to_a.front().map(|(t, _)| *t),
            self.to_b.front().map(|(t, _)| *t),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            return false;
        };
        self.now = self.now.max(next);
        let now = self.now;
        while self.to_a.front().is_some_and(|(t, _)| *t <= now) {
            let (_, dg) = self.to_a.pop_front().unwrap();
            self.a.ep.handle_datagram(now, &dg);
            self.transmit();
        }
        while self.to_b.front().is_some_and(|(t, _)| *t <= now) {
            let (_, dg) = self.to_b.pop_front().unwrap();
            self.b.ep.handle_datagram(now, &dg);
            self.transmit();
        }
        for side in [&mut self.a, &mut self.b] {
            if side.ep.poll_timeout().is_some_and(|t| t <= now) {
                side.ep.handle_timeout(now);
            }
            side.finish_handlers(now);
        }
        self.transmit();
        true
    }

    /// Steps until nothing is left (dedup entries expire too), failing on livelock.
    fn drive(&mut self) {
        for _ in 0..100_000 {
            if !self.step() {
                return;
            }
        }
        panic!("livelock: still busy after 100 000 steps");
    }
}

/// Both roles interleaved on one session: A asks B; while A's request is outstanding, B
/// asks A and A's answer goes out before B's answer to A arrives.
#[test]
fn both_roles_interleave_on_one_session() {
    let mut pair = Pair::new(Duration::ZERO, Duration::from_millis(300), |_| false);
    let now = pair.now;
    let t0 = now;
    let to_b = pair.a.ep.start_request(now, get("/3/0"), vec![0xa1], 0.0);
    pair.transmit();
    // B's handler holds A's request for 300 ms; B's own request reaches A meanwhile.
    while pair.b.executed.is_empty() {
        assert!(pair.step());
    }
    let to_a = pair
        .b
        .ep
        .start_request(pair.now, get("/rd"), vec![0xb1], 0.0);
    pair.transmit();
    while pair.b.responses.is_empty() {
        assert!(pair.step());
    }
    assert!(
        pair.a.responses.is_empty(),
        "B answered A too early: {:?} at {:?}",
        pair.a.responses,
        pair.now - t0
    );
    pair.drive();
    assert_eq!(pair.a.response(to_b).payload, b"b:3/0");
    assert_eq!(pair.b.response(to_a).payload, b"a:rd");
    assert_eq!(pair.a.executed["rd"], 1);
    assert_eq!(pair.b.executed["3/0"], 1);
    assert!(pair.a.ep.is_idle() && pair.b.ep.is_idle());
    assert_eq!(
        (pair.a.ep.dedup_len(), pair.b.ep.dedup_len()),
        (0, 0),
        "all expired"
    );
}

/// Separate responses both ways: each handler takes 1.5 s, past the 1 s threshold, so each
/// request is ACKed empty and answered with a CON that the other side ACKs.
#[test]
fn separate_responses_both_ways() {
    let slow = Duration::from_millis(1500);
    let mut pair = Pair::new(slow, slow, |_| false);
    let now = pair.now;
    let to_b = pair.a.ep.start_request(now, get("/b"), vec![1], 0.0);
    let to_a = pair.b.ep.start_request(now, get("/a"), vec![2], 0.0);
    pair.transmit();
    pair.drive();
    assert_eq!(pair.a.response(to_b).payload, b"b:b");
    assert_eq!(pair.b.response(to_a).payload, b"a:a");
    // Request, empty ACK, CON response, its ACK, each way: 8 datagrams, no retransmission.
    assert_eq!(pair.wire, 8);
}

/// A lossy link (every third datagram dropped, both directions), both roles busy at once,
/// some handlers slow enough for separate responses: every exchange completes exactly
/// once and no handler runs twice.
#[test]
fn lossy_pair_completes_every_exchange_exactly_once() {
    let mut pair = Pair::new(
        Duration::from_millis(1200),
        Duration::from_millis(100),
        |n| n % 3 == 0,
    );
    let mut ids_a = Vec::new();
    let mut ids_b = Vec::new();
    for i in 0..6u8 {
        let now = pair.now;
        ids_a.push((
            i,
            pair.a
                .ep
                .start_request(now, get(&format!("/a{i}")), vec![0xa0, i], 0.1),
        ));
        ids_b.push((
            i,
            pair.b
                .ep
                .start_request(now, get(&format!("/b{i}")), vec![0xb0, i], 0.2),
        ));
        pair.transmit();
        for _ in 0..3 {
            pair.step();
        }
    }
    pair.drive();
    for (i, id) in ids_a {
        assert_eq!(pair.a.response(id).payload, format!("b:a{i}").into_bytes());
        assert_eq!(pair.b.executed[&format!("a{i}")], 1, "a{i} ran once");
    }
    for (i, id) in ids_b {
        assert_eq!(pair.b.response(id).payload, format!("a:b{i}").into_bytes());
        assert_eq!(pair.a.executed[&format!("b{i}")], 1, "b{i} ran once");
    }
    assert!(pair.a.ep.is_idle() && pair.b.ep.is_idle());
    assert_eq!(pair.a.ep.poll_timeout(), None);
}

/// Our MIDs (requests, Block2-free here, NON responses and CON separate responses) come from
/// one counter: none repeats within EXCHANGE_LIFETIME, across both roles.
#[test]
fn mids_are_never_reused_within_exchange_lifetime_across_both_roles() {
    let mut pair = Pair::new(Duration::from_millis(1100), Duration::ZERO, |n| n % 5 == 0);
    let mut ids = Vec::new();
    for i in 0..40u8 {
        let now = pair.now;
        // A asks B (piggybacked answers); B asks A, half NON (NON answers), all slow enough
        // at A for separate responses.
        ids.push(pair.a.ep.start_request(now, get("/x"), vec![1, i], 0.0));
        let mut req = get("/y");
        if i % 2 == 0 {
            req.header.set_type(MessageType::NonConfirmable);
        }
        let _ = pair.b.ep.start_request(now, req, vec![2, i], 0.0);
        pair.transmit();
        for _ in 0..4 {
            pair.step();
        }
    }
    pair.drive();
    let lifetime = tuning().exchange_lifetime();
    for side in [&pair.a, &pair.b] {
        let mut seen: HashMap<u16, Instant> = HashMap::new();
        for (t, mid) in &side.mids {
            if let Some(prev) = seen.insert(*mid, *t) {
                assert!(*t - prev >= lifetime, "{}: MID {mid} reused", side.name);
            }
        }
        let distinct: HashSet<u16> = side.mids.iter().map(|(_, m)| *m).collect();
        assert_eq!(distinct.len(), side.mids.len());
    }
    let kinds_at_a = pair.a.mids.len();
    assert!(
        kinds_at_a >= 40 + 20,
        "A's requests plus its separate/NON answers: {kinds_at_a}"
    );
    for id in ids {
        let _ = pair.a.response(id);
    }
}

#[path = "observe_tests.rs"]
mod observe_tests;

/// Issue 6 item 9 again, on the endpoint: a read cut off by its deadline must not hold the
/// NSTART slot the next read needs, nor keep retransmitting.
#[test]
fn a_given_up_request_frees_its_slot_stops_retransmitting_and_its_late_answer_gets_rst() {
    let t0 = Instant::now();
    let mut e = Endpoint::new(tuning(), 0x900);
    let a = e.start_request(t0, get("/a"), vec![1], 0.0);
    let b = e.start_request(t0, get("/b"), vec![2], 0.0);
    let pa = sent(&mut e);
    nothing_sent(&mut e);
    assert!(e.give_up(t0, a));
    assert!(!e.give_up(t0, a), "already given up");
    let pb = sent(&mut e);
    assert_eq!(uri_path(&pb).unwrap().join("/"), "b");
    // a's retransmission time comes and goes: only b is retransmitted.
    let later = t0 + std::time::Duration::from_secs(10);
    e.handle_timeout(later);
    let again = sent(&mut e);
    assert_eq!(again.get_token(), &[2], "only b is retransmitted");
    // a's late CON response matches nothing: RST, and no event for a.
    e.handle_datagram(
        later,
        &peer_response(MessageType::Confirmable, 0x4242, pa.get_token(), b"late"),
    );
    let rst = sent(&mut e);
    assert_eq!(rst.header.get_type(), MessageType::Reset);
    e.handle_datagram(
        later,
        &peer_response(
            MessageType::Acknowledgement,
            pb.header.message_id,
            &[2],
            b"",
        ),
    );
    assert_eq!(expect_response(&mut e).0, b);
}
