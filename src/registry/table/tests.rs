//! Registry lifecycles in virtual time: `T0` plus seconds, a `u32` as the session key.

use std::sync::LazyLock;

use super::*;
use crate::registry::link_format;

static T0: LazyLock<Instant> = LazyLock::new(Instant::now);

fn at(s: u64) -> Instant {
    *T0 + Duration::from_secs(s)
}

fn own() -> Account {
    Account::new("gateway")
}

fn server_a() -> Account {
    Account::new("ServerA")
}

fn params(lifetime_s: u32) -> RegisterParams {
    RegisterParams {
        lifetime_s,
        version: Version::V1_1,
        binding: Binding::U,
        queue_flag: false,
        objects: link_format::parse(b"</1/0>,</2>,</3/0>").unwrap(),
    }
}

fn queue_params(lifetime_s: u32) -> RegisterParams {
    RegisterParams {
        queue_flag: true,
        ..params(lifetime_s)
    }
}

fn registry(cap: usize) -> Registry<u32> {
    Registry::new(RegistryConfig::new(cap))
}

fn events(r: &mut Registry<u32>) -> Vec<(EventKind, String, String)> {
    std::iter::from_fn(|| r.poll_event())
        .map(|e| (e.kind, e.endpoint, e.account.to_string()))
        .collect()
}

fn ev(kind: EventKind, endpoint: &str, account: &Account) -> (EventKind, String, String) {
    (kind, endpoint.to_string(), account.to_string())
}

const REGISTERED: EventKind = EventKind::Registered { replaced: false };

/// Register → Update → De-register, with the events in that order.
#[test]
fn register_update_deregister() {
    let mut r = registry(10);
    let reg = r.register(at(0), &own(), "dev1", params(300), 1).unwrap();
    assert_eq!(
        reg,
        Registered {
            location: "rd/1".into(),
            replaced: false
        }
    );
    let up = UpdateParams {
        lifetime_s: Some(60),
        objects: Some(link_format::parse(b"</3/0>").unwrap()),
        ..UpdateParams::default()
    };
    r.update(at(100), &own(), "dev1", &reg.location, 2, up)
        .unwrap();
    let found = r.lookup("dev1", &own(), at(101)).unwrap();
    assert_eq!(
        found.peer, 2,
        "the Update's session replaces the Register's"
    );
    let g = found.registration;
    assert_eq!(g.lifetime(), Duration::from_secs(60));
    assert_eq!(g.registered_at(), at(0));
    assert_eq!(g.updated_at(), at(100));
    assert_eq!(g.expires_at(), at(160));
    assert_eq!(g.objects().objects.len(), 1);
    assert_eq!(r.poll_timeout(), Some(at(160)));
    r.deregister(at(120), &own(), "dev1", &reg.location)
        .unwrap();
    assert!(r.is_empty());
    assert_eq!(r.poll_timeout(), None);
    assert_eq!(
        events(&mut r),
        vec![
            ev(REGISTERED, "dev1", &own()),
            ev(EventKind::Updated, "dev1", &own()),
            ev(EventKind::Deregistered, "dev1", &own()),
        ]
    );
    let again = r
        .deregister(at(121), &own(), "dev1", &reg.location)
        .unwrap_err();
    assert_eq!(again.coap_code(), ResponseType::NotFound);
}

/// The Registration exposes what the inventory shows.
#[test]
fn registration_exposes_the_inventory_fields() {
    let mut r = registry(10);
    let p = RegisterParams {
        version: Version::V1_0,
        binding: Binding::UQ,
        ..params(300)
    };
    let reg = r.register(at(5), &server_a(), "dev1", p, 1).unwrap();
    let g = r.get(&reg.location).unwrap();
    assert_eq!(g.endpoint(), "dev1");
    assert_eq!(g.account(), &server_a());
    assert_eq!(g.location(), "rd/1");
    assert_eq!(g.version(), Version::V1_0);
    assert_eq!(g.binding(), Binding::UQ);
    assert!(g.queue_mode());
    assert_eq!(g.registered_at(), at(5));
    assert_eq!(r.registrations().count(), 1);
}

#[test]
fn update_without_lifetime_restarts_the_same_lifetime() {
    let mut r = registry(10);
    let reg = r.register(at(0), &own(), "dev1", params(20), 1).unwrap();
    r.update(
        at(10),
        &own(),
        "dev1",
        &reg.location,
        1,
        UpdateParams::default(),
    )
    .unwrap();
    assert_eq!(r.poll_timeout(), Some(at(30)));
    r.handle_timeout(at(29));
    assert_eq!(r.len(), 1);
    r.handle_timeout(at(30));
    assert!(r.is_empty());
}

/// An Update at or after expiry is 4.04, even before `handle_timeout` ran; the registration is
/// swept as Expired.
#[test]
fn update_after_expiry_is_4_04() {
    let mut r = registry(10);
    let reg = r.register(at(0), &own(), "dev1", params(20), 1).unwrap();
    let e = r
        .update(
            at(20),
            &own(),
            "dev1",
            &reg.location,
            1,
            UpdateParams::default(),
        )
        .unwrap_err();
    assert_eq!(
        e,
        RegistryError::UnknownLocation {
            location: "rd/1".into()
        }
    );
    assert_eq!(e.coap_code(), ResponseType::NotFound);
    assert!(r.is_empty());
    assert!(r.lookup("dev1", &own(), at(20)).is_none());
    assert_eq!(
        events(&mut r),
        vec![
            ev(REGISTERED, "dev1", &own()),
            ev(EventKind::Expired, "dev1", &own())
        ]
    );
}

#[test]
fn expired_registrations_are_invisible_before_the_sweep() {
    let mut r = registry(10);
    r.register(at(0), &own(), "dev1", params(20), 1).unwrap();
    assert!(r.lookup("dev1", &own(), at(19)).is_some());
    assert!(r.lookup("dev1", &own(), at(20)).is_none());
    assert!(r.route("dev1", &server_a(), &own(), at(20)).is_none());
    assert_eq!(r.len(), 1, "held until handle_timeout");
}

/// `handle_timeout` removes every expired registration, earliest first, and leaves the rest.
#[test]
fn handle_timeout_expires_in_order() {
    let mut r = registry(10);
    r.register(at(0), &own(), "late", params(50), 1).unwrap();
    r.register(at(0), &own(), "early", params(10), 2).unwrap();
    r.register(at(0), &own(), "mid", params(30), 3).unwrap();
    events(&mut r);
    assert_eq!(r.poll_timeout(), Some(at(10)));
    r.handle_timeout(at(35));
    assert_eq!(
        events(&mut r),
        vec![
            ev(EventKind::Expired, "early", &own()),
            ev(EventKind::Expired, "mid", &own())
        ]
    );
    assert_eq!(r.poll_timeout(), Some(at(50)));
    assert_eq!(r.len(), 1);
}

/// A second Register of the same (endpoint, account) replaces the first: a new location,
/// the old one unknown, the new session used.
#[test]
fn re_register_replaces() {
    let mut r = registry(10);
    let first = r.register(at(0), &own(), "dev1", params(300), 1).unwrap();
    let second = r.register(at(50), &own(), "dev1", params(300), 2).unwrap();
    assert!(second.replaced);
    assert_ne!(first.location, second.location);
    assert_eq!(r.len(), 1);
    assert!(r.get(&first.location).is_none());
    let e = r
        .update(
            at(60),
            &own(),
            "dev1",
            &first.location,
            2,
            UpdateParams::default(),
        )
        .unwrap_err();
    assert_eq!(e.coap_code(), ResponseType::NotFound);
    assert_eq!(r.lookup("dev1", &own(), at(60)).unwrap().peer, 2);
    assert_eq!(r.poll_timeout(), Some(at(350)), "the old expiry is gone");
    assert_eq!(
        events(&mut r),
        vec![
            ev(REGISTERED, "dev1", &own()),
            ev(EventKind::Registered { replaced: true }, "dev1", &own()),
        ]
    );
}

#[test]
fn two_accounts_for_one_endpoint_are_two_registrations() {
    let mut r = registry(10);
    let mine = r.register(at(0), &own(), "dev1", params(300), 1).unwrap();
    let theirs = r
        .register(at(0), &server_a(), "dev1", params(100), 2)
        .unwrap();
    assert!(!theirs.replaced);
    assert_ne!(mine.location, theirs.location);
    assert_eq!(r.len(), 2);
    assert_eq!(r.lookup("dev1", &own(), at(1)).unwrap().peer, 1);
    assert_eq!(r.lookup("dev1", &server_a(), at(1)).unwrap().peer, 2);
    r.handle_timeout(at(100));
    assert!(r.lookup("dev1", &server_a(), at(100)).is_none());
    assert!(r.lookup("dev1", &own(), at(100)).is_some());
}

/// Another endpoint, or the same endpoint on another account, may not touch a location:
/// NotOwner, answered 4.04 like an unknown location; the registration is untouched.
#[test]
fn foreign_update_or_deregister_is_refused_as_4_04() {
    let mut r = registry(10);
    let reg = r.register(at(0), &own(), "dev1", params(300), 1).unwrap();
    events(&mut r);
    let e = r
        .update(
            at(10),
            &own(),
            "dev2",
            &reg.location,
            9,
            UpdateParams::default(),
        )
        .unwrap_err();
    assert!(matches!(e, RegistryError::NotOwner { .. }));
    assert_eq!(e.coap_code(), ResponseType::NotFound);
    let e = r
        .deregister(at(10), &server_a(), "dev1", &reg.location)
        .unwrap_err();
    assert!(matches!(e, RegistryError::NotOwner { .. }));
    assert_eq!(e.coap_code(), ResponseType::NotFound);
    let found = r.lookup("dev1", &own(), at(10)).unwrap();
    assert_eq!((found.peer, found.registration.updated_at()), (1, at(0)));
    assert!(events(&mut r).is_empty());
}

#[test]
fn unknown_location_is_4_04() {
    let mut r = registry(10);
    let e = r
        .update(at(0), &own(), "dev1", "rd/99", 1, UpdateParams::default())
        .unwrap_err();
    assert_eq!(e.coap_code(), ResponseType::NotFound);
    let e = r.deregister(at(0), &own(), "dev1", "rd/99").unwrap_err();
    assert_eq!(
        e,
        RegistryError::UnknownLocation {
            location: "rd/99".into()
        }
    );
}

/// A queue-mode client is awake for the awake window after its Register and each Update; a
/// non-queue client is always awake.
#[test]
fn queue_mode_awake_window() {
    let mut r = registry(10);
    let reg = r
        .register(at(0), &own(), "q", queue_params(3600), 1)
        .unwrap();
    r.register(at(0), &own(), "u", params(3600), 2).unwrap();
    assert!(r.lookup("q", &own(), at(92)).unwrap().awake);
    assert!(!r.lookup("q", &own(), at(93)).unwrap().awake);
    assert!(r.lookup("u", &own(), at(93)).unwrap().awake);
    r.update(
        at(500),
        &own(),
        "q",
        &reg.location,
        1,
        UpdateParams::default(),
    )
    .unwrap();
    assert!(r.lookup("q", &own(), at(592)).unwrap().awake);
    assert!(!r.lookup("q", &own(), at(593)).unwrap().awake);
}

/// Anjay in queue mode wakes up with a full Register on a new socket (PEERS.md): awake again,
/// over the new session.
#[test]
fn queue_mode_wake_up_by_register() {
    let mut r = registry(10);
    r.register(at(0), &own(), "anjay", queue_params(86_400), 1)
        .unwrap();
    assert!(!r.lookup("anjay", &own(), at(200)).unwrap().awake);
    let again = r
        .register(at(300), &own(), "anjay", queue_params(86_400), 2)
        .unwrap();
    assert!(again.replaced);
    let found = r.lookup("anjay", &own(), at(301)).unwrap();
    assert!(found.awake);
    assert_eq!(found.peer, 2);
    assert_eq!(found.registration.registered_at(), at(300));
}

#[test]
fn awake_window_is_configurable_and_binding_uq_means_queue() {
    let config = RegistryConfig {
        awake_window: Duration::from_secs(10),
        ..RegistryConfig::new(10)
    };
    let mut r: Registry<u32> = Registry::new(config);
    let uq = RegisterParams {
        binding: Binding::UQ,
        ..params(3600)
    };
    let reg = r.register(at(0), &own(), "q", uq, 1).unwrap();
    assert!(r.lookup("q", &own(), at(9)).unwrap().awake);
    assert!(!r.lookup("q", &own(), at(10)).unwrap().awake);
    // An Update to b=U leaves queue mode.
    let to_u = UpdateParams {
        binding: Some(Binding::U),
        ..UpdateParams::default()
    };
    r.update(at(20), &own(), "q", &reg.location, 1, to_u)
        .unwrap();
    assert!(r.lookup("q", &own(), at(2000)).unwrap().awake);
}

/// The cap counts registrations over all accounts; a re-Register always fits; a freed slot
/// can be reused.
#[test]
fn cap_refuses_with_5_03() {
    let mut r = registry(2);
    r.register(at(0), &own(), "a", params(300), 1).unwrap();
    let b = r.register(at(0), &server_a(), "a", params(300), 2).unwrap();
    let e = r.register(at(0), &own(), "c", params(300), 3).unwrap_err();
    assert_eq!(e, RegistryError::Full { max: 2 });
    assert_eq!(e.coap_code(), ResponseType::ServiceUnavailable);
    assert!(
        r.register(at(1), &own(), "a", params(300), 4)
            .unwrap()
            .replaced
    );
    r.deregister(at(2), &server_a(), "a", &b.location).unwrap();
    assert!(r.register(at(3), &own(), "c", params(300), 3).is_ok());
    assert_eq!(r.len(), 2);
}

/// `route` prefers the requesting server's account and falls back to the gateway's own.
#[test]
fn route_prefers_the_servers_account() {
    let mut r = registry(10);
    r.register(at(0), &own(), "dev1", params(300), 1).unwrap();
    let via_own = r.route("dev1", &server_a(), &own(), at(1)).unwrap();
    assert_eq!(via_own.registration.account(), &own());
    r.register(at(0), &server_a(), "dev1", params(100), 2)
        .unwrap();
    let via_a = r.route("dev1", &server_a(), &own(), at(1)).unwrap();
    assert_eq!((via_a.peer, via_a.registration.account()), (2, &server_a()));
    // Once A's registration expires, the gateway's own is used again.
    assert_eq!(
        r.route("dev1", &server_a(), &own(), at(100)).unwrap().peer,
        1
    );
    assert!(r.route("dev2", &server_a(), &own(), at(1)).is_none());
}

#[test]
fn locations_count_from_the_configured_first_id() {
    let config = RegistryConfig {
        first_location_id: 7000,
        ..RegistryConfig::new(10)
    };
    let mut r: Registry<u32> = Registry::new(config);
    assert_eq!(
        r.register(at(0), &own(), "a", params(1), 1)
            .unwrap()
            .location,
        "rd/7000"
    );
    assert_eq!(
        r.register(at(0), &own(), "b", params(1), 1)
            .unwrap()
            .location,
        "rd/7001"
    );
}

#[test]
fn huge_lifetime_does_not_overflow() {
    let mut r = registry(10);
    r.register(at(0), &own(), "a", params(u32::MAX), 1).unwrap();
    assert!(r.poll_timeout().unwrap() > at(u64::from(u32::MAX) - 1));
    assert!(r.lookup("a", &own(), at(1_000_000)).is_some());
}

/// Events are bounded: the oldest are dropped and counted when nobody polls.
#[test]
fn event_queue_is_bounded() {
    let mut r = registry(10);
    for i in 0..MAX_EVENTS + 5 {
        r.register(at(i as u64), &own(), "a", params(300), 1)
            .unwrap();
    }
    assert_eq!(r.dropped_events(), 5);
    assert_eq!(events(&mut r).len(), MAX_EVENTS);
}

#[test]
fn account_displays_its_name() {
    assert_eq!(server_a().to_string(), "ServerA");
    assert_eq!(server_a().as_str(), "ServerA");
}
