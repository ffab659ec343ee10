//! Observe (RFC 7641) on [`Endpoint`] in virtual time: the client role fed hand-made
//! notifications (reordering, duplicates, CON ACK and re-ACK, cancel, forget,
//! re-registration), the server role fed hand-made registrations, ACKs and RSTs (sequence
//! numbers, the 24 h CON rule, removals, the cap), and a lossy [`Pair`] where one side
//! observes the other.

use super::*;
use crate::coap::observe::{CON_INTERVAL, observe_value, set_observe};
use crate::coap::{CoapOption, NotifyError};

/// A notification (or response) from the peer with Observe `seq` (`None`: no Observe).
fn notification(t: MessageType, mid: u16, token: &[u8], seq: Option<u32>, body: &[u8]) -> Vec<u8> {
    let mut p = decode(&peer_response(t, mid, token, body)).unwrap();
    if let Some(seq) = seq {
        set_observe(&mut p, seq);
    }
    encode(&p).unwrap()
}

/// A GET from the peer on `token` with Observe `observe` (`None`: none), encoded.
fn peer_get(mid: u16, token: &[u8], observe: Option<u32>) -> Vec<u8> {
    let mut p = decode(&peer_request(
        MessageType::Confirmable,
        mid,
        token,
        "/3/0/0",
    ))
    .unwrap();
    if let Some(v) = observe {
        set_observe(&mut p, v);
    }
    encode(&p).unwrap()
}

#[track_caller]
fn expect_notification(e: &mut Endpoint) -> (ObservationId, Packet) {
    match e.poll_event() {
        Some(EndpointEvent::Notification { id, response }) => (id, response),
        other => panic!("expected a notification, got {other:?}"),
    }
}

#[track_caller]
fn expect_ended(e: &mut Endpoint) -> (ObservationId, ObserveEnd) {
    match e.poll_event() {
        Some(EndpointEvent::ObservationEnded { id, reason }) => (id, reason),
        other => panic!("expected the end of an observation, got {other:?}"),
    }
}

#[track_caller]
fn expect_removed(e: &mut Endpoint) -> (Vec<u8>, ObserverRemoval) {
    match e.poll_event() {
        Some(EndpointEvent::ObserverRemoved { token, reason }) => (token, reason),
        other => panic!("expected an observer removal, got {other:?}"),
    }
}

/// An endpoint observing `/3/0/0` with token `[0x0b]`, the registration answered with
/// Observe 5 (piggybacked).
fn observing(t0: Instant) -> (Endpoint, ObservationId) {
    let mut e = Endpoint::new(tuning(), 0x100);
    let id = e.start_observe(t0, get("/3/0/0"), vec![0x0b], 0.0);
    let reg = sent(&mut e);
    assert_eq!(observe_value(&reg), Some(0), "GET with Observe = 0");
    assert_eq!(reg.get_token(), [0x0b]);
    let ack = notification(
        MessageType::Acknowledgement,
        reg.header.message_id,
        &[0x0b],
        Some(5),
        b"5",
    );
    e.handle_datagram(t0, &ack);
    let (got, first) = expect_notification(&mut e);
    assert_eq!((got, &first.payload[..]), (id, &b"5"[..]));
    (e, id)
}

fn payloads(e: &mut Endpoint) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(ev) = e.poll_event() {
        match ev {
            EndpointEvent::Notification { response, .. } => {
                out.push(String::from_utf8(response.payload).unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

// ---- Client role ------------------------------------------------------------------------

#[test]
fn notifications_are_delivered_in_order_and_stale_or_duplicate_ones_dropped() {
    let t0 = Instant::now();
    let (mut e, _) = observing(t0);
    let non = MessageType::NonConfirmable;
    for (mid, seq) in [(1, 7), (2, 6), (3, 8), (4, 8), (5, 4), (6, 9)] {
        let body = seq.to_string();
        e.handle_datagram(
            t0,
            &notification(non, mid, &[0x0b], Some(seq), body.as_bytes()),
        );
    }
    assert_eq!(payloads(&mut e), ["7", "8", "9"]);
    nothing_sent(&mut e);
    // 128 s after the last one, even an old number is newer (§3.4).
    let later = t0 + Duration::from_secs(129);
    e.handle_datagram(later, &notification(non, 7, &[0x0b], Some(2), b"2"));
    assert_eq!(payloads(&mut e), ["2"]);
    // Wrap-around: 2^24 - 1 is older than 2.
    e.handle_datagram(
        later,
        &notification(non, 8, &[0x0b], Some((1 << 24) - 1), b"w"),
    );
    assert!(e.poll_event().is_none());
}

#[test]
fn con_notification_is_acked_and_its_retransmission_re_acked_without_a_second_event() {
    let t0 = Instant::now();
    let (mut e, id) = observing(t0);
    let con = notification(MessageType::Confirmable, 0x4444, &[0x0b], Some(6), b"6");
    e.handle_datagram(t0, &con);
    assert!(is_empty(
        &sent(&mut e),
        MessageType::Acknowledgement,
        0x4444
    ));
    assert_eq!(expect_notification(&mut e).0, id);
    // Our ACK was lost: the peer retransmits the same CON.
    e.handle_datagram(t0 + Duration::from_secs(2), &con);
    assert!(is_empty(
        &sent(&mut e),
        MessageType::Acknowledgement,
        0x4444
    ));
    assert!(e.poll_event().is_none(), "no second event");
    // A stale CON notification is ACKed too, but not delivered.
    e.handle_datagram(
        t0,
        &notification(MessageType::Confirmable, 0x4445, &[0x0b], Some(3), b""),
    );
    assert!(is_empty(
        &sent(&mut e),
        MessageType::Acknowledgement,
        0x4445
    ));
    assert!(e.poll_event().is_none());
}

#[test]
fn cancel_sends_observe_1_on_the_same_token_and_ends_cancelled() {
    let t0 = Instant::now();
    let (mut e, id) = observing(t0);
    assert!(e.cancel_observation(t0, id, 0.0));
    assert!(!e.cancel_observation(t0, id, 0.0), "one request at a time");
    let cancel = sent(&mut e);
    assert_eq!(observe_value(&cancel), Some(1));
    assert_eq!(cancel.get_token(), [0x0b]);
    assert_eq!(cancel.header.code, MessageClass::Request(RequestType::Get));
    // The answer has no Observe; the observation ends as cancelled, not as Final.
    let ack = notification(
        MessageType::Acknowledgement,
        cancel.header.message_id,
        &[0x0b],
        None,
        b"x",
    );
    e.handle_datagram(t0, &ack);
    assert_eq!(expect_ended(&mut e), (id, ObserveEnd::Cancelled));
    assert!(e.poll_event().is_none());
    assert_eq!(e.observations(), 0);
    assert!(e.is_idle());
    // A late notification now matches nothing: RST.
    e.handle_datagram(
        t0,
        &notification(MessageType::Confirmable, 9, &[0x0b], Some(9), b""),
    );
    assert!(is_empty(&sent(&mut e), MessageType::Reset, 9));
}

#[test]
fn a_forgotten_observation_answers_con_notifications_with_rst_and_ignores_non() {
    let t0 = Instant::now();
    let (mut e, id) = observing(t0);
    assert!(e.forget_observation(id));
    assert!(
        e.poll_event().is_none(),
        "no event for a forgotten observation"
    );
    e.handle_datagram(
        t0,
        &notification(MessageType::NonConfirmable, 20, &[0x0b], Some(6), b""),
    );
    nothing_sent(&mut e);
    e.handle_datagram(
        t0,
        &notification(MessageType::Confirmable, 21, &[0x0b], Some(7), b""),
    );
    assert!(is_empty(&sent(&mut e), MessageType::Reset, 21));
    assert!(e.poll_event().is_none());
}

#[test]
fn reregistration_keeps_the_token_and_its_response_is_a_notification() {
    let t0 = Instant::now();
    let (mut e, id) = observing(t0);
    let t1 = t0 + Duration::from_secs(70); // Max-Age (60 s) ran out
    assert!(e.reregister(t1, id, 0.0));
    let again = sent(&mut e);
    assert_eq!(observe_value(&again), Some(0));
    assert_eq!(again.get_token(), [0x0b], "same token");
    assert_ne!(again.header.message_id, 0x100, "a fresh MID");
    let ack = notification(
        MessageType::Acknowledgement,
        again.header.message_id,
        &[0x0b],
        Some(6),
        b"6",
    );
    e.handle_datagram(t1, &ack);
    assert_eq!(expect_notification(&mut e), (id, decode(&ack).unwrap()));
    assert!(e.poll_event().is_none(), "no Response event for it");
    // Later notifications on the token still arrive.
    e.handle_datagram(
        t1,
        &notification(MessageType::NonConfirmable, 30, &[0x0b], Some(7), b"7"),
    );
    assert_eq!(payloads(&mut e), ["7"]);
}

#[test]
fn a_final_response_ends_the_observation() {
    let t0 = Instant::now();
    // Registration answered without Observe: not added.
    let mut e = Endpoint::new(tuning(), 0x100);
    let id = e.start_observe(t0, get("/3/0/0"), vec![1], 0.0);
    let reg = sent(&mut e);
    e.handle_datagram(
        t0,
        &notification(
            MessageType::Acknowledgement,
            reg.header.message_id,
            &[1],
            None,
            b"x",
        ),
    );
    assert!(
        matches!(expect_ended(&mut e), (i, ObserveEnd::Final(p)) if i == id && p.payload == b"x")
    );
    assert!(e.is_idle());
    // A non-2.xx notification ends an established one.
    let (mut e, id) = observing(t0);
    let mut gone = decode(&notification(
        MessageType::Confirmable,
        50,
        &[0x0b],
        None,
        b"",
    ))
    .unwrap();
    gone.header.code = MessageClass::Response(ResponseType::NotFound);
    e.handle_datagram(t0, &encode(&gone).unwrap());
    assert!(is_empty(&sent(&mut e), MessageType::Acknowledgement, 50));
    assert!(matches!(expect_ended(&mut e), (i, ObserveEnd::Final(_)) if i == id));
}

#[test]
fn a_registration_that_times_out_ends_failed() {
    let t0 = Instant::now();
    let mut e = Endpoint::new(tuning(), 0x100);
    let id = e.start_observe(t0, get("/3/0/0"), vec![1], 0.0);
    while let Some(t) = e.poll_timeout() {
        while e.poll_transmit().is_some() {}
        e.handle_timeout(t);
    }
    assert_eq!(
        expect_ended(&mut e),
        (id, ObserveEnd::Failed(ClientError::TimedOut))
    );
    assert_eq!(e.observations(), 0);
}

// ---- Server role ------------------------------------------------------------------------

/// A server endpoint whose peer registered on token `[0x0c]` (request MID 7), answered with
/// Observe; returns the endpoint and the Observe value of the answer.
fn observed(t0: Instant) -> (Endpoint, u32) {
    let mut e = Endpoint::new(tuning(), 0x500).with_separate_after(None);
    e.handle_datagram(t0, &peer_get(7, &[0x0c], Some(0)));
    let (req, responder) = expect_request(&mut e);
    assert!(e.is_registering(&[0x0c]));
    let mut answer = content(&req, b"0");
    set_observe(&mut answer, 12345); // the handler's value is replaced by ours
    e.respond(t0, responder, answer).unwrap();
    let ack = sent(&mut e);
    assert_eq!(ack.header.get_type(), MessageType::Acknowledgement);
    assert!(e.is_observed(&[0x0c]));
    assert!(!e.is_registering(&[0x0c]));
    (e, observe_value(&ack).expect("Observe in the answer"))
}

fn changed(body: &[u8]) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Response(ResponseType::Content);
    p.payload = body.to_vec();
    p
}

#[test]
fn notifications_carry_increasing_sequence_numbers_as_non_from_the_one_mid_space() {
    let t0 = Instant::now();
    let (mut e, first) = observed(t0);
    let mut seqs = vec![first];
    for i in 0..3u16 {
        e.notify(t0, &[0x0c], changed(b"n"), false).unwrap();
        let n = sent(&mut e);
        assert_eq!(n.header.get_type(), MessageType::NonConfirmable);
        assert_eq!(
            n.header.message_id,
            0x500 + i,
            "MIDs from the endpoint's one space"
        );
        assert_eq!(n.get_token(), [0x0c]);
        seqs.push(observe_value(&n).unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(e.is_idle(), "NON notifications leave nothing outstanding");
    assert_eq!(
        e.notify(t0, &[0x99], changed(b""), false),
        Err(NotifyError::NotObserved)
    );
}

#[test]
fn a_con_goes_out_at_least_every_24_hours_and_when_asked() {
    let t0 = Instant::now();
    let (mut e, _) = observed(t0);
    let t_of = |h: u64| t0 + Duration::from_secs(h * 3600);
    let mut types = Vec::new();
    for (h, con) in [
        (1, false),
        (23, false),
        (24, false),
        (25, false),
        (26, true),
    ] {
        e.notify(t_of(h), &[0x0c], changed(b""), con).unwrap();
        let n = sent(&mut e);
        types.push(n.header.get_type());
        if n.header.get_type() == MessageType::Confirmable {
            e.handle_datagram(
                t_of(h),
                &[
                    0x60,
                    0,
                    (n.header.message_id >> 8) as u8,
                    n.header.message_id as u8,
                ],
            );
            assert!(e.is_idle(), "ACKed");
        }
    }
    use MessageType::{Confirmable as C, NonConfirmable as N};
    assert_eq!(
        types,
        [N, N, C, N, C],
        "24 h after the registration, then when asked"
    );
    assert!(t_of(24) >= t0 + CON_INTERVAL);
}

#[test]
fn an_rst_to_a_notification_removes_the_observer() {
    let t0 = Instant::now();
    let (mut e, _) = observed(t0);
    e.notify(t0, &[0x0c], changed(b""), false).unwrap();
    let n = sent(&mut e);
    let mid = n.header.message_id.to_be_bytes();
    e.handle_datagram(t0, &[0x70, 0, mid[0], mid[1]]);
    assert_eq!(expect_removed(&mut e), (vec![0x0c], ObserverRemoval::Reset));
    assert_eq!(e.observers(), 0);
    assert_eq!(
        e.notify(t0, &[0x0c], changed(b""), false),
        Err(NotifyError::NotObserved)
    );
}

#[test]
fn a_con_notification_never_acked_removes_the_observer_after_max_retransmit() {
    let t0 = Instant::now();
    let (mut e, _) = observed(t0);
    e.notify(t0, &[0x0c], changed(b"c"), true).unwrap();
    let first = sent(&mut e);
    let mut sends = 1;
    while let Some(t) = e.poll_timeout() {
        e.handle_timeout(t);
        while let Some(b) = e.poll_transmit() {
            assert_eq!(decode(&b).unwrap(), first, "the same CON, same MID");
            sends += 1;
        }
        if e.observers() == 0 {
            break;
        }
    }
    assert_eq!(
        sends, 5,
        "the original and MAX_RETRANSMIT = 4 retransmissions"
    );
    assert_eq!(
        expect_removed(&mut e),
        (vec![0x0c], ObserverRemoval::TimedOut)
    );
    assert!(e.is_idle());
}

#[test]
fn a_newer_notification_replaces_the_con_in_flight() {
    let t0 = Instant::now();
    let (mut e, _) = observed(t0);
    e.notify(t0, &[0x0c], changed(b"old"), true).unwrap();
    let old = sent(&mut e);
    e.notify(t0, &[0x0c], changed(b"new"), false).unwrap();
    let new = sent(&mut e);
    assert_eq!(
        new.header.get_type(),
        MessageType::Confirmable,
        "CON while one is in flight"
    );
    assert_ne!(new.header.message_id, old.header.message_id);
    e.handle_timeout(e.poll_timeout().unwrap());
    assert_eq!(
        sent(&mut e).payload,
        b"new",
        "the newest state is retransmitted"
    );
}

#[test]
fn a_get_without_observe_or_with_observe_1_removes_the_observer() {
    for observe in [None, Some(1)] {
        let t0 = Instant::now();
        let (mut e, _) = observed(t0);
        e.handle_datagram(t0, &peer_get(8, &[0x0c], observe));
        assert_eq!(
            expect_removed(&mut e),
            (vec![0x0c], ObserverRemoval::Deregistered)
        );
        let (req, responder) = expect_request(&mut e);
        e.respond(t0, responder, content(&req, b"plain")).unwrap();
        assert_eq!(observe_value(&sent(&mut e)), None);
        assert_eq!(e.observers(), 0, "{observe:?}");
    }
}

#[test]
fn a_non_2xx_notification_is_final_and_removes_the_observer() {
    let t0 = Instant::now();
    let (mut e, _) = observed(t0);
    let mut gone = changed(b"");
    gone.header.code = MessageClass::Response(ResponseType::NotFound);
    e.notify(t0, &[0x0c], gone, false).unwrap();
    let n = sent(&mut e);
    assert_eq!(
        observe_value(&n),
        None,
        "a final response carries no Observe"
    );
    assert_eq!(expect_removed(&mut e), (vec![0x0c], ObserverRemoval::Ended));
}

#[test]
fn registrations_beyond_the_cap_are_answered_without_observe() {
    let t0 = Instant::now();
    let mut e = Endpoint::new(tuning(), 0).with_max_observers(2);
    let mut observes = Vec::new();
    for (mid, token) in [(1u16, 1u8), (2, 2), (3, 3)] {
        e.handle_datagram(t0, &peer_get(mid, &[token], Some(0)));
        let (req, responder) = expect_request(&mut e);
        let mut answer = content(&req, b"");
        set_observe(&mut answer, 0);
        e.respond(t0, responder, answer).unwrap();
        observes.push(sent(&mut e).get_first_option(CoapOption::Observe).is_some());
    }
    assert_eq!(observes, [true, true, false], "the third is not added");
    assert_eq!(expect_removed(&mut e), (vec![3], ObserverRemoval::Refused));
    assert_eq!(e.observers(), 2);
    // A re-registration of a known token is not a new observer: accepted.
    e.handle_datagram(t0, &peer_get(4, &[1], Some(0)));
    let (req, responder) = expect_request(&mut e);
    let mut answer = content(&req, b"");
    set_observe(&mut answer, 0);
    e.respond(t0, responder, answer).unwrap();
    assert_eq!(
        observe_value(&sent(&mut e)),
        Some(1),
        "the sequence goes on"
    );
}

// ---- Two endpoints on one lossy session -------------------------------------------------

/// A observes B's resource over a link that drops every third datagram. B notifies 12
/// times as CON (each once the previous was ACKed) with a NON between each: A gets the
/// first response and every CON notification exactly once, in order, and no NON out of
/// order.
#[test]
fn lossy_pair_delivers_every_con_notification_exactly_once_in_order() {
    let mut pair = Pair::new(Duration::ZERO, Duration::ZERO, |n| n % 3 == 0);
    let now = pair.now;
    let token = vec![0x0b, 0x5e];
    let id = pair
        .a
        .ep
        .start_observe(now, get("/res"), token.clone(), 0.1);
    pair.transmit();
    while !pair.b.ep.is_observed(&token) || pair.a.notifications.is_empty() {
        assert!(pair.step(), "registration completes");
    }
    for i in 1..=12u32 {
        let now = pair.now;
        let con = format!("con{i}").into_bytes();
        pair.b.ep.notify(now, &token, changed(&con), true).unwrap();
        pair.transmit();
        while !pair.b.ep.is_idle() {
            assert!(pair.step(), "CON {i} ACKed");
        }
        let now = pair.now;
        let non = format!("non{i}").into_bytes();
        pair.b.ep.notify(now, &token, changed(&non), false).unwrap();
        pair.transmit();
        for _ in 0..3 {
            pair.step();
        }
    }
    pair.drive();
    let got: Vec<String> = pair
        .a
        .notifications
        .iter()
        .map(|(i, p)| {
            assert_eq!(*i, id);
            String::from_utf8(p.payload.clone()).unwrap()
        })
        .collect();
    assert_eq!(got[0], "b:res", "the registration's response first");
    let cons: Vec<&String> = got.iter().filter(|s| s.starts_with("con")).collect();
    let expected: Vec<String> = (1..=12).map(|i| format!("con{i}")).collect();
    assert_eq!(
        cons,
        expected.iter().collect::<Vec<_>>(),
        "every CON once, in order: {got:?}"
    );
    let order: Vec<u32> = got[1..]
        .iter()
        .map(|s| {
            s.trim_start_matches("con")
                .trim_start_matches("non")
                .parse::<u32>()
                .unwrap()
                * 2
                - u32::from(s.starts_with("con"))
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    assert!(got.len() < 1 + 24, "the link lost some NONs: {got:?}");
    assert!(pair.b.removed.is_empty() && pair.a.ended.is_empty());
}
