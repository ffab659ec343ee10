//! Tests of [`StreamEndpoint`] in virtual time, no sockets: a quinn-style pair of two
//! endpoints (the side that dialed and the side that accepted) whose bytes are carried by
//! hand between them, and single endpoints fed hand-made frames.

use std::time::{Duration, Instant};

use super::*;
use crate::coap::observe::{observe_value, set_observe};
use crate::coap::tcp::{Signal, decode_frame, encode_frame};
use crate::coap::{
    MessageClass, NotifyError, ObserverRemoval, RequestType, ResponseType, response_to, set_uri,
    uri_path,
};

const MIB: u32 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(30);

fn get(path: &str) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Request(RequestType::Get);
    set_uri(&mut p, path);
    p
}

fn endpoint(t0: Instant) -> StreamEndpoint {
    StreamEndpoint::new(StreamConnection::new(t0, MIB, true), TIMEOUT)
}

/// Every frame `e` has to send, decoded.
fn frames(e: &mut StreamEndpoint) -> Vec<Packet> {
    let mut out = Vec::new();
    while let Some(bytes) = e.poll_transmit() {
        let (p, used) = decode_frame(&bytes, usize::MAX).unwrap().unwrap();
        assert_eq!(used, bytes.len(), "one frame per transmit");
        out.push(p);
    }
    out
}

fn is_signal(p: &Packet) -> bool {
    Signal::from_packet(p).is_some()
}

/// Moves every pending byte from `from` to `to` at `now`.
fn transfer(now: Instant, from: &mut StreamEndpoint, to: &mut StreamEndpoint) -> usize {
    let mut n = 0;
    while let Some(bytes) = from.poll_transmit() {
        to.handle_bytes(now, &bytes);
        n += 1;
    }
    n
}

/// Both directions until neither has anything to send.
fn settle(now: Instant, a: &mut StreamEndpoint, b: &mut StreamEndpoint) {
    while transfer(now, a, b) + transfer(now, b, a) > 0 {}
}

fn pair(t0: Instant) -> (StreamEndpoint, StreamEndpoint) {
    let mut dialer = endpoint(t0);
    let mut acceptor = endpoint(t0);
    settle(t0, &mut dialer, &mut acceptor);
    assert!(dialer.peer_csm_received() && acceptor.peer_csm_received());
    (dialer, acceptor)
}

#[track_caller]
fn expect_request(e: &mut StreamEndpoint) -> (Packet, Responder) {
    match e.poll_event() {
        Some(EndpointEvent::Request { request, responder }) => (request, responder),
        other => panic!("expected a request, got {other:?}"),
    }
}

#[track_caller]
fn expect_response(e: &mut StreamEndpoint) -> (RequestId, Result<Packet, ClientError>) {
    match e.poll_event() {
        Some(EndpointEvent::Response { id, result }) => (id, result),
        other => panic!("expected a response, got {other:?}"),
    }
}

fn content(request: &Packet, body: &[u8]) -> Packet {
    let mut r = response_to(request, ResponseType::Content);
    r.payload = body.to_vec();
    r
}

/// Both roles interleaved on one connection: the dialer asks, the acceptor asks back before
/// answering, each side answers the other's request by token, and both outcomes arrive.
#[test]
fn both_roles_interleave_on_one_connection() {
    let t0 = Instant::now();
    let (mut dialer, mut acceptor) = pair(t0);
    let ask = dialer.start_request(t0, get("/ask"), vec![1]);
    settle(t0, &mut dialer, &mut acceptor);
    let (asked, ask_responder) = expect_request(&mut acceptor);
    assert_eq!(uri_path(&asked).unwrap(), ["ask"]);
    // The acceptor's own request on the same token value: tokens are per direction.
    let back = acceptor.start_request(t0, get("/3/0/0"), vec![1]);
    settle(t0, &mut dialer, &mut acceptor);
    let (read, read_responder) = expect_request(&mut dialer);
    assert_eq!(uri_path(&read).unwrap(), ["3", "0", "0"]);
    dialer
        .respond(t0, read_responder, content(&read, b"ACME"))
        .unwrap();
    settle(t0, &mut dialer, &mut acceptor);
    let (id, result) = expect_response(&mut acceptor);
    assert_eq!((id, result.unwrap().payload), (back, b"ACME".to_vec()));
    acceptor
        .respond(t0, ask_responder, content(&asked, b"ACME via tcp"))
        .unwrap();
    settle(t0, &mut dialer, &mut acceptor);
    let (id, result) = expect_response(&mut dialer);
    assert_eq!(id, ask);
    assert_eq!(result.unwrap().payload, b"ACME via tcp");
    assert!(dialer.is_idle() && acceptor.is_idle());
    assert!(dialer.poll_event().is_none() && acceptor.poll_event().is_none());
    assert_eq!(
        dialer.poll_timeout(),
        None,
        "no timers left without keepalive"
    );
}

/// NSTART = 1: the second request waits until the first is answered, then goes out; a
/// full queue refuses at once with Busy; a queued request can be cancelled.
#[test]
fn nstart_queue_holds_refuses_and_cancels() {
    let t0 = Instant::now();
    let (dialer, mut acceptor) = pair(t0);
    let mut dialer = dialer.with_queue_limit(2);
    let first = dialer.start_request(t0, get("/a"), vec![1]);
    let second = dialer.start_request(t0, get("/b"), vec![2]);
    let third = dialer.start_request(t0, get("/c"), vec![3]);
    let busy = dialer.start_request(t0, get("/d"), vec![4]);
    assert_eq!(expect_response(&mut dialer), (busy, Err(ClientError::Busy)));
    assert_eq!((dialer.in_flight(), dialer.queued()), (1, 2));
    assert!(dialer.cancel(third));
    assert!(!dialer.cancel(first), "in flight: runs to its end");
    let sent = frames(&mut dialer);
    assert_eq!(sent.len(), 1);
    assert_eq!(uri_path(&sent[0]).unwrap(), ["a"]);
    acceptor.handle_bytes(t0, &encode_frame(&sent[0]).unwrap());
    let (req, responder) = expect_request(&mut acceptor);
    acceptor
        .respond(t0, responder, content(&req, b"A"))
        .unwrap();
    transfer(t0, &mut acceptor, &mut dialer);
    assert_eq!(expect_response(&mut dialer).0, first);
    let sent = frames(&mut dialer);
    assert_eq!(sent.len(), 1, "the next queued one, not the cancelled one");
    assert_eq!(uri_path(&sent[0]).unwrap(), ["b"]);
    assert_eq!(sent[0].get_token(), [2]);
    let _ = second;
}

/// Giving up a request in flight frees its slot for the next one; no event comes for it, and
/// its late response is ignored.
#[test]
fn give_up_frees_the_slot_and_ignores_the_late_answer() {
    let t0 = Instant::now();
    let (mut dialer, mut acceptor) = pair(t0);
    let first = dialer.start_request(t0, get("/slow"), vec![1]);
    let second = dialer.start_request(t0, get("/next"), vec![2]);
    transfer(t0, &mut dialer, &mut acceptor);
    let (slow, slow_responder) = expect_request(&mut acceptor);
    assert!(dialer.give_up(t0, first));
    assert!(!dialer.give_up(t0, first), "already gone");
    transfer(t0, &mut dialer, &mut acceptor);
    let (next, next_responder) = expect_request(&mut acceptor);
    assert_eq!(uri_path(&next).unwrap(), ["next"]);
    acceptor
        .respond(t0, slow_responder, content(&slow, b"late"))
        .unwrap();
    acceptor
        .respond(t0, next_responder, content(&next, b"ok"))
        .unwrap();
    transfer(t0, &mut acceptor, &mut dialer);
    let (id, result) = expect_response(&mut dialer);
    assert_eq!((id, result.unwrap().payload), (second, b"ok".to_vec()));
    assert!(
        dialer.poll_event().is_none(),
        "nothing for the given-up one"
    );
    assert!(dialer.is_idle());
}

/// Our CSM is the first frame, before any request of ours; and our requests wait for the
/// peer's CSM, going out the moment it arrives.
#[test]
fn our_csm_goes_first_and_our_requests_wait_for_the_peers_csm() {
    let t0 = Instant::now();
    let mut e = endpoint(t0);
    let id = e.start_request(t0, get("/3/0"), vec![9]);
    let sent = frames(&mut e);
    assert_eq!(sent.len(), 1);
    assert!(matches!(
        Signal::from_packet(&sent[0]),
        Some(Ok(Signal::Csm { .. }))
    ));
    assert_eq!(
        (e.in_flight(), e.queued()),
        (0, 1),
        "waiting for the peer's CSM"
    );
    let csm = Signal::Csm {
        max_message_size: Some(4096),
        block_wise: true,
    }
    .to_packet();
    e.handle_bytes(t0, &encode_frame(&csm).unwrap());
    assert_eq!(e.peer_max_message_size(), 4096);
    let sent = frames(&mut e);
    assert_eq!(sent.len(), 1);
    assert!(!is_signal(&sent[0]));
    assert_eq!(sent[0].get_token(), [9]);
    let mut answer = content(&sent[0], b"x");
    answer.set_token(vec![9]);
    e.handle_bytes(t0, &encode_frame(&answer).unwrap());
    assert_eq!(expect_response(&mut e).0, id);
}

/// A peer's request before its CSM is delivered and answered; if its CSM never comes, the
/// connection aborts at the CSM timeout and our waiting request fails ConnectionClosed.
#[test]
fn a_request_before_the_peers_csm_is_served_but_a_missing_csm_closes() {
    let t0 = Instant::now();
    let mut e = endpoint(t0);
    let _ = frames(&mut e);
    let mut early = get("/early");
    early.set_token(vec![7, 7]);
    e.handle_bytes(t0, &encode_frame(&early).unwrap());
    let (request, responder) = expect_request(&mut e);
    e.respond(t0, responder, content(&request, b"served"))
        .unwrap();
    let sent = frames(&mut e);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].get_token(), &sent[0].payload[..]),
        (&[7, 7][..], &b"served"[..])
    );
    let ours = e.start_request(t0, get("/ours"), vec![1]);
    assert!(frames(&mut e).is_empty(), "ours waits for the CSM");
    let due = e.poll_timeout().expect("the CSM wait");
    e.handle_timeout(due);
    assert!(e.is_closed());
    assert_eq!(
        expect_response(&mut e),
        (ours, Err(ClientError::ConnectionClosed))
    );
    assert!(matches!(
        Signal::from_packet(&frames(&mut e)[0]),
        Some(Ok(Signal::Abort { .. }))
    ));
    let after = e.start_request(t0, get("/after"), vec![2]);
    assert_eq!(
        expect_response(&mut e),
        (after, Err(ClientError::ConnectionClosed)),
        "a closed connection refuses at once"
    );
}

/// An unanswered request fails TimedOut at its response deadline; the timer table shows it.
#[test]
fn an_unanswered_request_times_out() {
    let t0 = Instant::now();
    let (mut dialer, mut acceptor) = pair(t0);
    let id = dialer.start_request(t0, get("/never"), vec![1]);
    transfer(t0, &mut dialer, &mut acceptor);
    let _unanswered = expect_request(&mut acceptor);
    assert_eq!(dialer.poll_timeout(), Some(t0 + TIMEOUT));
    dialer.handle_timeout(t0 + TIMEOUT);
    assert_eq!(
        expect_response(&mut dialer),
        (id, Err(ClientError::TimedOut))
    );
    assert!(dialer.is_idle());
}

/// The peer's GET with Observe is answered without registering: the answer carries no
/// Observe option even if the handler put one in.
/// The acceptor's side of a registration on `token` for `/3/0`, answered 2.05 `v` with an
/// Observe option: the answer as the dialer got it.
fn register(
    t0: Instant,
    dialer: &mut StreamEndpoint,
    acceptor: &mut StreamEndpoint,
    token: u8,
) -> Packet {
    let mut register = get("/3/0");
    set_observe(&mut register, 0);
    dialer.start_request(t0, register, vec![token]);
    transfer(t0, dialer, acceptor);
    let (request, responder) = expect_request(acceptor);
    assert_eq!(observe_value(&request), Some(0));
    assert!(acceptor.is_registering(&[token]));
    let mut answer = content(&request, b"v");
    set_observe(&mut answer, 3);
    acceptor.respond(t0, responder, answer).unwrap();
    let bytes = acceptor.poll_transmit().expect("the answer");
    assert!(acceptor.poll_transmit().is_none());
    // The dialer takes it too, which frees its NSTART slot for the next registration.
    dialer.handle_bytes(t0, &bytes);
    let _ = expect_response(dialer);
    decode_frame(&bytes, usize::MAX).unwrap().unwrap().0
}

#[track_caller]
fn expect_removed(e: &mut StreamEndpoint, token: u8, reason: ObserverRemoval) {
    match e.poll_event() {
        Some(EndpointEvent::ObserverRemoved {
            token: t,
            reason: r,
        }) => {
            assert_eq!((t, r), (vec![token], reason));
        }
        other => panic!("expected the observer's removal, got {other:?}"),
    }
}

/// RFC 8323 §7: a GET with Observe = 0 answered 2.xx with Observe registers the peer; the
/// answer carries sequence number 0 (ours, not the handler's 3) and every notification is a
/// frame on the same token with the next number; a non-2.xx one is final, goes without
/// Observe, and ends it.
#[test]
fn a_peer_registers_gets_numbered_notifications_and_a_final_one() {
    let t0 = Instant::now();
    let (mut dialer, mut acceptor) = pair(t0);
    let answer = register(t0, &mut dialer, &mut acceptor, 5);
    assert_eq!(answer.get_token(), [5]);
    assert_eq!(observe_value(&answer), Some(0));
    assert!(acceptor.is_observed(&[5]) && !acceptor.is_registering(&[5]));
    for (seq, body) in [(1, b"w"), (2, b"x")] {
        let mut change = Packet::new();
        change.header.code = MessageClass::Response(ResponseType::Content);
        change.payload = body.to_vec();
        acceptor.notify(t0, &[5], change, true).unwrap();
        let note = frames(&mut acceptor).remove(0);
        assert_eq!(
            (note.get_token(), observe_value(&note)),
            (&[5][..], Some(seq))
        );
        assert_eq!(note.payload, body);
    }
    let mut gone = Packet::new();
    gone.header.code = MessageClass::Response(ResponseType::Forbidden);
    set_observe(&mut gone, 9);
    acceptor.notify(t0, &[5], gone, false).unwrap();
    let last = frames(&mut acceptor).remove(0);
    assert_eq!(
        observe_value(&last),
        None,
        "the final notification has no Observe"
    );
    expect_removed(&mut acceptor, 5, ObserverRemoval::Ended);
    let mut late = Packet::new();
    late.header.code = MessageClass::Response(ResponseType::Content);
    assert_eq!(
        acceptor.notify(t0, &[5], late, false),
        Err(NotifyError::NotObserved)
    );
    assert!(frames(&mut acceptor).is_empty());
}

/// A GET on the token without Observe deregisters; an answer without Observe (or a 4.xx)
/// to a registration adds nothing; a request that is not a response cannot be notified.
#[test]
fn deregistration_and_answers_that_do_not_register() {
    let t0 = Instant::now();
    let (mut dialer, mut acceptor) = pair(t0);
    register(t0, &mut dialer, &mut acceptor, 5);
    assert_eq!(
        acceptor.notify(t0, &[5], get("/x"), false),
        Err(NotifyError::Coap(CoapError::NotAResponse("0.01".into())))
    );
    dialer.start_request(t0, get("/3/0"), vec![5]);
    transfer(t0, &mut dialer, &mut acceptor);
    expect_removed(&mut acceptor, 5, ObserverRemoval::Deregistered);
    let (request, responder) = expect_request(&mut acceptor);
    assert!(!acceptor.is_observed(&[5]));
    acceptor
        .respond(t0, responder, content(&request, b"once"))
        .unwrap();
    transfer(t0, &mut acceptor, &mut dialer);
    let _ = expect_response(&mut dialer);

    let mut register = get("/3/0");
    set_observe(&mut register, 0);
    dialer.start_request(t0, register, vec![6]);
    transfer(t0, &mut dialer, &mut acceptor);
    let (request, responder) = expect_request(&mut acceptor);
    acceptor
        .respond(t0, responder, content(&request, b"plain"))
        .unwrap();
    let answer = frames(&mut acceptor).remove(0);
    assert_eq!(observe_value(&answer), None);
    assert!(!acceptor.is_observed(&[6]) && !acceptor.is_registering(&[6]));
}

/// Observers are capped per connection (the datagram default, 16): one more is answered
/// without Observe ("not added") and reported Refused; an abandoned registration is no
/// longer pending; the connection's end removes every observer.
#[test]
fn the_cap_refuses_and_the_connection_end_removes_every_observer() {
    let t0 = Instant::now();
    let (mut dialer, mut acceptor) = pair(t0);
    for token in 0..16 {
        let answer = register(t0, &mut dialer, &mut acceptor, token);
        assert_eq!(observe_value(&answer), Some(0));
    }
    assert_eq!(acceptor.observers(), 16);
    let refused = register(t0, &mut dialer, &mut acceptor, 16);
    assert_eq!(observe_value(&refused), None, "not added");
    expect_removed(&mut acceptor, 16, ObserverRemoval::Refused);

    let mut register = get("/3/0");
    set_observe(&mut register, 0);
    dialer.start_request(t0, register, vec![17]);
    transfer(t0, &mut dialer, &mut acceptor);
    let (_, responder) = expect_request(&mut acceptor);
    acceptor.abandon(responder);
    assert!(!acceptor.is_registering(&[17]));

    dialer.release(t0, "bye");
    transfer(t0, &mut dialer, &mut acceptor);
    assert!(acceptor.is_closed());
    let mut removed = 0;
    while let Some(event) = acceptor.poll_event() {
        if let EndpointEvent::ObserverRemoved { reason, .. } = event {
            assert_eq!(reason, ObserverRemoval::Ended);
            removed += 1;
        }
    }
    assert_eq!(removed, 16);
    assert_eq!(acceptor.observers(), 0);
    let mut late = Packet::new();
    late.header.code = MessageClass::Response(ResponseType::Content);
    assert_eq!(
        acceptor.notify(t0, &[0], late, false),
        Err(NotifyError::NotObserved)
    );
}

/// The peer's Release closes the connection and fails our request in flight, once; our own
/// release does the same and answers then fail Closed.
#[test]
fn release_fails_outstanding_requests_once() {
    let t0 = Instant::now();
    let (mut dialer, mut acceptor) = pair(t0);
    let id = dialer.start_request(t0, get("/x"), vec![1]);
    transfer(t0, &mut dialer, &mut acceptor);
    let (request, responder) = expect_request(&mut acceptor);
    acceptor.release(t0, "bye");
    assert_eq!(
        acceptor.respond(t0, responder, content(&request, b"")),
        Err(CoapError::Closed)
    );
    transfer(t0, &mut acceptor, &mut dialer);
    assert!(dialer.is_closed());
    assert_eq!(
        expect_response(&mut dialer),
        (id, Err(ClientError::ConnectionClosed))
    );
    assert!(dialer.poll_event().is_none());
    assert!(dialer.is_idle());
}

/// A Block2 answer is reassembled across follow-ups on fresh tokens while a request of the
/// peer is served in between.
#[test]
fn block2_follow_ups_interleave_with_a_peer_request() {
    let t0 = Instant::now();
    let (mut dialer, mut acceptor) = pair(t0);
    let id = dialer.start_request(t0, get("/big"), vec![0, 1]);
    transfer(t0, &mut dialer, &mut acceptor);
    let (big, responder) = expect_request(&mut acceptor);
    let mut cache = crate::coap::Block2Cache::new(TIMEOUT);
    let mut body = content(&big, &[]);
    body.payload = vec![b'z'; 3000];
    let key = crate::coap::block::cache_key(&big);
    let first = cache.apply_within(t0, key.clone(), None, body, 1152);
    acceptor.respond(t0, responder, first).unwrap();
    // Meanwhile the acceptor's own request.
    acceptor.start_request(t0, get("/3/0/0"), vec![0, 1]);
    transfer(t0, &mut acceptor, &mut dialer);
    let (read, read_responder) = expect_request(&mut dialer);
    let follow = frames(&mut dialer);
    assert_eq!(follow.len(), 1);
    assert_eq!(follow[0].get_token(), [0, 2], "a fresh token for block 1");
    dialer
        .respond(t0, read_responder, content(&read, b"r"))
        .unwrap();
    let mut pending = follow;
    let mut done = None;
    for _ in 0..8 {
        for p in pending.drain(..) {
            acceptor.handle_bytes(t0, &encode_frame(&p).unwrap());
        }
        while let Some(ev) = acceptor.poll_event() {
            match ev {
                EndpointEvent::Request { request, responder } => {
                    let b = crate::coap::BlockOption::block2(&request).unwrap().ok();
                    let mut next = cache.lookup(t0, &key, b.unwrap()).unwrap();
                    next.set_token(request.get_token().to_vec());
                    acceptor.respond(t0, responder, next).unwrap();
                }
                EndpointEvent::Response { result, .. } => assert_eq!(result.unwrap().payload, b"r"),
                other => panic!("{other:?}"),
            }
        }
        transfer(t0, &mut acceptor, &mut dialer);
        if let Some(EndpointEvent::Response { id: got, result }) = dialer.poll_event() {
            done = Some((got, result));
            break;
        }
        pending = frames(&mut dialer);
    }
    let (got, result) = done.expect("reassembled");
    assert_eq!(got, id);
    assert_eq!(result.unwrap().payload, vec![b'z'; 3000]);
}
