//! Links that survive loss (issue 6 item 9): the gateway reads devices through our own
//! loopback relay ([`support::relay`]) that drops, delays, duplicates and reorders
//! datagrams or cuts one direction off for a while.
//!
//! * The relay's decision model, deterministic under a seed.
//! * After an outage of a device's replies (requests still arrive) the next verification
//!   succeeds: each new CON on a link has a fresh MID, so the device does not answer it from
//!   its duplicate cache with the old response.
//! * Duplication and reordering both ways change nothing.
//! * 20 % loss both ways and 50 ms delay, `ack_timeout_ms = 500`, a 12 s deadline, 10 DTLS
//!   devices: group writes succeed, and no device fails two rounds in a row. The full 20
//!   rounds run with `cargo test --test lossy -- --ignored --nocapture` and print the rate.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use privgw::cli::ctl::{GatewayClient, Reply};
use privgw::mo::Value;
use support::relay::{Delivery, Dir, Direction, LinkConfig, LinkModel};
use support::{Fleet, SSID_A, ac, add, failures};

fn model(direction: Direction, seed: u64) -> LinkModel {
    LinkModel::new(LinkConfig::symmetric(direction, seed))
}

/// Offers `n` numbered datagrams one direction, returns what was delivered (in offer order).
fn run(m: &mut LinkModel, dir: Dir, n: u32, at: impl Fn(u32) -> Duration) -> Vec<Delivery> {
    (0..n)
        .flat_map(|i| {
            m.offer(at(i), dir, i.to_be_bytes().to_vec())
                .deliveries
                .into_iter()
        })
        .collect()
}

#[test]
fn model_is_deterministic_per_seed_and_loses_about_the_configured_share() {
    let lossy = Direction::lossy(0.2, Duration::from_millis(50));
    let a = run(&mut model(lossy.clone(), 7), Dir::ToDevice, 10_000, |_| {
        Duration::ZERO
    });
    let b = run(&mut model(lossy.clone(), 7), Dir::ToDevice, 10_000, |_| {
        Duration::ZERO
    });
    let c = run(&mut model(lossy, 8), Dir::ToDevice, 10_000, |_| {
        Duration::ZERO
    });
    assert_eq!(a, b, "same seed, same fate");
    assert_ne!(a, c, "another seed, another pattern");
    let delivered = a.len() as f64 / 10_000.0;
    assert!((0.78..0.82).contains(&delivered), "{delivered}");
    assert!(a.iter().all(|d| d.after == Duration::from_millis(50)));
}

#[test]
fn model_directions_are_independent() {
    let mut m = LinkModel::new(LinkConfig {
        to_device: Direction::lossy(1.0, Duration::ZERO),
        to_gateway: Direction::default(),
        seed: 1,
    });
    assert!(run(&mut m, Dir::ToDevice, 100, |_| Duration::ZERO).is_empty());
    assert_eq!(
        run(&mut m, Dir::ToGateway, 100, |_| Duration::ZERO).len(),
        100
    );
    assert_eq!(m.stats(Dir::ToDevice).lost, 100);
    assert_eq!(m.stats(Dir::ToGateway).seen, 100);
}

#[test]
fn model_outage_drops_everything_inside_the_window_only() {
    let mut m = model(Direction::default(), 3);
    m.set_outage(
        Dir::ToGateway,
        Duration::from_secs(1),
        Duration::from_secs(2),
    );
    let ms = |i: u32| Duration::from_millis(u64::from(i) * 100);
    let got = run(&mut m, Dir::ToGateway, 30, ms);
    let kept: Vec<u32> = got
        .iter()
        .map(|d| u32::from_be_bytes(d.datagram.clone().try_into().unwrap()))
        .collect();
    let expected: Vec<u32> = (0..10).chain(20..30).collect();
    assert_eq!(kept, expected);
    assert_eq!(m.stats(Dir::ToGateway).outage, 10);
    assert_eq!(
        run(&mut m, Dir::ToDevice, 30, ms).len(),
        30,
        "other way open"
    );
}

#[test]
fn model_reorder_lets_the_next_datagram_overtake_and_expires_a_lone_one() {
    let reorder = Direction {
        reorder: 1.0,
        delay: Duration::from_millis(10),
        ..Direction::default()
    };
    let mut m = model(reorder, 4);
    let first = m.offer(Duration::ZERO, Dir::ToDevice, vec![1]);
    assert!(first.deliveries.is_empty());
    let seq = first.held.expect("held");
    let second = m.offer(Duration::ZERO, Dir::ToDevice, vec![2]);
    let order: Vec<(u8, Duration)> = second
        .deliveries
        .iter()
        .map(|d| (d.datagram[0], d.after))
        .collect();
    assert_eq!(order.len(), 2);
    assert_eq!(order[0].0, 2, "the newer one first");
    assert_eq!(order[1].0, 1);
    assert!(order[1].1 > order[0].1, "and it arrives later: {order:?}");
    assert!(m.expire(Dir::ToDevice, seq).is_empty(), "already released");
    let lone = m.offer(Duration::ZERO, Dir::ToDevice, vec![3]);
    let released = m.expire(Dir::ToDevice, lone.held.expect("held"));
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].datagram, [3]);
}

#[test]
fn model_duplicates_and_jitters_within_bounds() {
    let noisy = Direction {
        duplicate: 0.5,
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(30),
        ..Direction::default()
    };
    let mut m = model(noisy, 5);
    let got = run(&mut m, Dir::ToGateway, 1000, |_| Duration::ZERO);
    let dups = m.stats(Dir::ToGateway).duplicated;
    assert_eq!(got.len() as u64, 1000 + dups);
    assert!((400..600).contains(&dups), "{dups}");
    let lo = Duration::from_millis(20);
    let hi = Duration::from_millis(50);
    assert!(got.iter().all(|d| d.after >= lo && d.after < hi));
    assert!(got.iter().any(|d| d.after > Duration::from_millis(40)));
}

/// Over real sockets: a datagram through the relay arrives at the device after the delay,
/// and the device's answer comes back to the sender.
#[tokio::test]
async fn relay_forwards_both_ways_with_its_delay() {
    let device = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let link = LinkConfig::symmetric(Direction::lossy(0.0, Duration::from_millis(50)), 1);
    let relay = support::relay::Relay::start(device.local_addr().unwrap(), link)
        .await
        .unwrap();
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let t0 = Instant::now();
    client.send_to(b"ping", relay.addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), device.recv_from(&mut buf))
        .await
        .expect("forwarded")
        .unwrap();
    assert_eq!(&buf[..n], b"ping");
    assert!(t0.elapsed() >= Duration::from_millis(50));
    device.send_to(b"pong", from).await.unwrap();
    let (n, back) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
        .await
        .expect("returned")
        .unwrap();
    assert_eq!(&buf[..n], b"pong");
    assert_eq!(back, relay.addr());
    assert!(t0.elapsed() >= Duration::from_millis(100));
    assert_eq!(relay.stats(Dir::ToDevice).seen, 1);
    assert_eq!(relay.stats(Dir::ToGateway).seen, 1);
}

/// Fails the test instead of hanging it.
async fn within<F: std::future::Future>(bound: Duration, f: F) -> F::Output {
    tokio::time::timeout(bound, f)
        .await
        .unwrap_or_else(|_| panic!("did not finish within {bound:?}"))
}

/// devA (A's /3/0) behind one relay doing `link`, with a `device_timeout_ms` deadline and an
/// `ack_timeout_ms` ACK_TIMEOUT.
async fn relayed_dev_a(link: LinkConfig, device_timeout_ms: u64, ack_timeout_ms: u64) -> Fleet {
    Fleet::builder()
        .lwm2m("devA", vec![ac(0, 3, 0, SSID_A)])
        .relay("devA", link)
        .device_timeout_ms(device_timeout_ms)
        .ack_timeout_ms(ack_timeout_ms)
        .start()
        .await
}

/// An Add on devA /3/0 is 5.04 with devA `unreachable`.
async fn add_is_unreachable(a: &mut GatewayClient) {
    let cut = add(a, "devA", "Device", "/3/0", "Get=ServerB").await;
    assert_eq!(cut.code, "5.04", "{}", cut.render());
    assert_eq!(failures(&cut)[0].1, "unreachable");
}

/// The first scenario, with a 3 s deadline to keep the test short: devA's replies
/// are lost for longer than one verification while its requests still arrive. That
/// verification fails `unreachable`; once the link is back the next one succeeds. Before the
/// fix the link kept the cut-off request's MID, devA answered every later request from its
/// duplicate cache with the old token, and it stayed `unreachable` until a restart.
#[tokio::test]
async fn after_an_outage_of_replies_the_next_verification_succeeds() {
    within(Duration::from_secs(45), async {
        let fleet = relayed_dev_a(LinkConfig::default(), 3000, 500).await;
        let mut a = fleet.server_a().await;
        let ok = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(ok.code, "2.01", "{}", ok.render());
        let outage = Duration::from_secs(4);
        let relay = fleet.relay("devA");
        relay.outage(Dir::ToGateway, Duration::ZERO, outage);
        let t0 = Instant::now();
        add_is_unreachable(&mut a).await;
        let asked = fleet.device("devA").requests();
        assert!(asked >= 2, "the requests still arrived: {asked}");
        tokio::time::sleep(outage.saturating_sub(t0.elapsed()) + Duration::from_millis(200)).await;
        for round in 0..3 {
            let back = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
            assert_eq!(back.code, "2.01", "round {round}: {}", back.render());
        }
        assert!(relay.stats(Dir::ToGateway).outage >= 1);
        fleet.stop().await;
    })
    .await;
}

/// An outage both ways before the first handshake: `unreachable` (no answer), and once the
/// link is back the device is Verified.
#[tokio::test]
async fn an_outage_during_the_handshake_is_unreachable_then_recovers() {
    within(Duration::from_secs(45), async {
        let fleet = relayed_dev_a(LinkConfig::default(), 2000, 500).await;
        let relay = fleet.relay("devA");
        let outage = Duration::from_secs(3);
        relay.outage(Dir::ToGateway, Duration::ZERO, outage);
        relay.outage(Dir::ToDevice, Duration::ZERO, outage);
        let t0 = Instant::now();
        let mut a = fleet.server_a().await;
        add_is_unreachable(&mut a).await;
        tokio::time::sleep(outage.saturating_sub(t0.elapsed()) + Duration::from_millis(200)).await;
        let back = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(back.code, "2.01", "{}", back.render());
        fleet.stop().await;
    })
    .await;
}

/// A handshake whose flights are lost past one read's deadline goes on in the background:
/// the next read finds the session ready instead of starting over (250 ms each way, so a
/// fresh handshake would cost three round trips, 1.5 s, on top of the read's 0.5 s).
#[tokio::test]
async fn a_slow_handshake_finishes_in_the_background_for_the_next_read() {
    within(Duration::from_secs(45), async {
        let slow = Direction::lossy(0.0, Duration::from_millis(250));
        let fleet = relayed_dev_a(LinkConfig::symmetric(slow, 1), 3000, 1000).await;
        let relay = fleet.relay("devA");
        relay.outage(Dir::ToGateway, Duration::ZERO, Duration::from_millis(2500));
        let t0 = Instant::now();
        let mut a = fleet.server_a().await;
        add_is_unreachable(&mut a).await;
        // OpenSSL resends the ClientHello at 1 s and 3 s; the second gets through and the
        // handshake ends near 4.5 s.
        tokio::time::sleep(Duration::from_millis(6000).saturating_sub(t0.elapsed())).await;
        let before = relay.stats(Dir::ToDevice).seen;
        let back = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(back.code, "2.01", "{}", back.render());
        // One GET (a retransmission at most), not ClientHello, ClientHello with cookie and
        // the final flight (one datagram since flights are packed) before the GET.
        let sent = relay.stats(Dir::ToDevice).seen - before;
        assert!(
            sent <= 2,
            "a new handshake ran: {sent} datagrams to the device"
        );
        fleet.stop().await;
    })
    .await;
}

fn device_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("dev{i:02}")).collect()
}

/// A group G1 of `n` DTLS-PSK LwM2M devices, each behind its own relay doing `link` (seeded
/// `seed + i`), with the timing: ACK_TIMEOUT 500 ms, a 12 s deadline.
async fn lossy_fleet(n: usize, link: Direction, seed: u64) -> Fleet {
    let ids = device_ids(n);
    let mut b = Fleet::builder()
        .device_timeout_ms(12_000)
        .ack_timeout_ms(500);
    for (i, id) in ids.iter().enumerate() {
        b = b.lwm2m(id, vec![ac(0, 3, 0, SSID_A)]).relay(
            id,
            LinkConfig::symmetric(link.clone(), seed.wrapping_add(i as u64)),
        );
    }
    let members: Vec<&str> = ids.iter().map(String::as_str).collect();
    b.group("G1", &members).start().await
}

/// What `rounds` group writes gave: per round, the DeviceIDs that failed (and why).
struct Rounds {
    failed: Vec<BTreeMap<String, String>>,
    took: Duration,
}

impl Rounds {
    fn succeeded(&self) -> usize {
        self.failed.iter().filter(|f| f.is_empty()).count()
    }

    /// Devices that failed in two consecutive rounds.
    fn failed_twice_in_a_row(&self) -> Vec<String> {
        let mut twice: Vec<String> = self
            .failed
            .windows(2)
            .flat_map(|w| w[0].keys().filter(|id| w[1].contains_key(*id)).cloned())
            .collect();
        twice.sort();
        twice.dedup();
        twice
    }

    fn assert_no_device_failed_twice_in_a_row(&self) {
        assert!(
            self.failed_twice_in_a_row().is_empty(),
            "{}",
            self.summary()
        );
    }

    fn failed_reads(&self) -> usize {
        self.failed.iter().map(BTreeMap::len).sum()
    }

    fn summary(&self) -> String {
        let lines: Vec<String> = self
            .failed
            .iter()
            .enumerate()
            .map(|(i, f)| format!("round {i}: {f:?}"))
            .collect();
        format!(
            "{} of {} group writes succeeded, {} failed reads, in {:?}\n{}",
            self.succeeded(),
            self.failed.len(),
            self.failed_reads(),
            self.took,
            lines.join("\n")
        )
    }
}

/// DeviceID → "reason: detail" of each failed member.
fn failed_with_detail(reply: &Reply) -> BTreeMap<String, String> {
    let list = reply
        .document
        .as_ref()
        .and_then(|d| d.get("Failed"))
        .and_then(Value::as_array)
        .unwrap_or_default();
    list.iter()
        .map(|f| {
            let field = |k| f.get(k).and_then(Value::as_str).unwrap_or("?");
            let detail = f.get("Detail").and_then(Value::as_str).unwrap_or("");
            (
                field("DeviceID").to_owned(),
                format!("{}: {detail}", field("Reason")),
            )
        })
        .collect()
}

async fn group_rounds(fleet: &Fleet, rounds: usize) -> Rounds {
    let mut a = fleet.server_a().await;
    let t0 = Instant::now();
    let mut failed = Vec::new();
    for _ in 0..rounds {
        let reply = add(&mut a, "G1", "Group", "/3/0", "Get=ServerB").await;
        let f = failed_with_detail(&reply);
        assert_eq!(reply.code == "2.01", f.is_empty(), "{}", reply.render());
        failed.push(f);
    }
    Rounds {
        failed,
        took: t0.elapsed(),
    }
}

/// Duplication and reordering both ways (30 % each, 20 ms ± 20 ms): every write succeeds.
#[tokio::test]
async fn duplicated_and_reordered_datagrams_change_nothing() {
    within(Duration::from_secs(60), async {
        let noisy = Direction {
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(20),
            duplicate: 0.3,
            reorder: 0.3,
            hold_max: Duration::from_millis(100),
            ..Direction::default()
        };
        let fleet = lossy_fleet(4, noisy, 11).await;
        let rounds = group_rounds(&fleet, 3).await;
        eprintln!("{}", rounds.summary());
        assert_eq!(rounds.succeeded(), 3, "{}", rounds.summary());
        let dups: u64 = device_ids(4)
            .iter()
            .map(|id| fleet.relay(id).stats(Dir::ToGateway).duplicated)
            .sum();
        assert!(dups > 0, "the relay did duplicate");
        fleet.stop().await;
    })
    .await;
}

/// 20 % loss both ways, 50 ms delay, 10 devices, 6 rounds. Independent loss predicts a read
/// fails with 0.36^5 ≈ 0.6 % (five CON attempts fit the 12 s deadline), so a write of 10
/// fails with ≈ 6 %; before the fix a device cut off once stayed unreachable, so the set of
/// failing devices only grew. Margins: at most 2 of 6 writes may fail, and no device twice
/// in a row.
#[tokio::test]
async fn lossy_group_writes_succeed_and_no_device_fails_twice_in_a_row() {
    within(Duration::from_secs(120), async {
        let fleet = lossy_fleet(10, Direction::lossy(0.2, Duration::from_millis(50)), 20).await;
        let rounds = group_rounds(&fleet, 6).await;
        eprintln!("{}", rounds.summary());
        assert!(rounds.succeeded() >= 4, "{}", rounds.summary());
        rounds.assert_no_device_failed_twice_in_a_row();
        fleet.stop().await;
    })
    .await;
}

/// The full target, 20 rounds (a minute or more): ≥ 90 % succeed, no device fails
/// two rounds in a row. `LOSSY_SEED` picks the relays' seed (default 1). Prints the
/// measured rate next to the prediction.
#[tokio::test]
#[ignore = "long: run with --ignored --nocapture"]
async fn lossy_twenty_rounds_report() {
    let seed = std::env::var("LOSSY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let n: usize = std::env::var("LOSSY_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    within(Duration::from_secs(600), async {
        let fleet = lossy_fleet(10, Direction::lossy(0.2, Duration::from_millis(50)), seed).await;
        let rounds = group_rounds(&fleet, n).await;
        let reads = n * 10;
        let p_read = 0.36f64.powi(5);
        let p_write = 1.0 - (1.0 - p_read).powi(10);
        println!("seed {seed}: {}", rounds.summary());
        for id in device_ids(10) {
            let r = fleet.relay(&id);
            println!(
                "{id}: to device {:?}, to gateway {:?}",
                r.stats(Dir::ToDevice),
                r.stats(Dir::ToGateway)
            );
        }
        println!(
            "measured: {:.1} % of writes failed, {:.2} % of reads; predicted (independent \
             loss, 5 attempts): {:.1} % of writes, {:.2} % of reads (handshakes not counted)",
            100.0 * (n - rounds.succeeded()) as f64 / n as f64,
            100.0 * rounds.failed_reads() as f64 / reads as f64,
            100.0 * p_write,
            100.0 * p_read
        );
        assert!(rounds.succeeded() * 10 >= n * 9, "{}", rounds.summary());
        rounds.assert_no_device_failed_twice_in_a_row();
        fleet.stop().await;
    })
    .await;
}
