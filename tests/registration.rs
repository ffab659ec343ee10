//! Devices that register (the gateway as their LwM2M server): the four seed sequences with
//! registered devices next to a dialled one, over DTLS-PSK and NoSec UDP; what the gateway
//! refuses at registration; queue mode; expiry; coming back after a gateway restart; two
//! accounts on one device. The devices are `privgw device` in registering mode, which
//! answers only over the session it registered on.

mod support;

use std::time::Duration;

use privgw::config::Scheme;
use support::*;

/// devA and devB register, devC is dialled; all three in G1. Server A owns /3/0 everywhere;
/// devA's /5/0 and devB's /4/0 are server B's.
fn seed_fleet(scheme: Scheme) -> FleetBuilder {
    let mut b = Fleet::builder().lwm2m_listen(&[(scheme, None)]);
    for id in ["devA", "devB"] {
        let owner_4 = if id == "devB" { SSID_B } else { SSID_A };
        let owner_5 = if id == "devA" { SSID_B } else { SSID_A };
        b = b.registering(
            id,
            vec![
                ac(0, 3, 0, SSID_A),
                ac(1, 4, 0, owner_4),
                ac(2, 5, 0, owner_5),
            ],
        );
    }
    b.lwm2m(
        "devC",
        vec![
            ac(0, 3, 0, SSID_A),
            ac(1, 4, 0, SSID_A),
            ac(2, 5, 0, SSID_A),
        ],
    )
    .group("G1", &["devA", "devB", "devC"])
}

async fn seed_sequences(scheme: Scheme) {
    let fleet = seed_fleet(scheme).start().await;
    let mut a = fleet.server_a().await;

    // Device success: devA is read over its registration.
    let before = fleet.device("devA").requests();
    let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
    assert_eq!(reply.code, "2.01", "{}", reply.render());
    assert_eq!(reply.verified_ids(), ["devA"]);
    assert!(fleet.device("devA").requests() > before, "devA was read");

    // Device failure: devA's /5/0 belongs to server B.
    let reply = add(&mut a, "devA", "Device", "/5/0", "Get=ServerB").await;
    assert_eq!(reply.code, "4.03", "{}", reply.render());
    assert_eq!(reply.failed_ids(), ["devA"]);
    assert!(reply.render().contains("denied"), "{}", reply.render());

    // Group success: two registered devices and a dialled one.
    let reply = add(&mut a, "G1", "Group", "/3/0", "Get=ServerB").await;
    assert_eq!(reply.code, "2.01", "{}", reply.render());
    assert_eq!(reply.verified_ids(), ["devA", "devB", "devC"]);

    // Group failure: devB's /4/0 is server B's; nothing is committed.
    let reply = add(&mut a, "G1", "Group", "/4/0", "Get=ServerB").await;
    assert_eq!(reply.code, "4.03", "{}", reply.render());
    assert_eq!(reply.failed_ids(), ["devB"]);
    fleet.stop().await;
}

#[tokio::test]
async fn seed_sequences_with_devices_registered_over_dtls_psk() {
    bounded(seed_sequences(Scheme::Coaps)).await;
}

#[tokio::test]
async fn seed_sequences_with_devices_registered_over_nosec_udp() {
    bounded(seed_sequences(Scheme::Coap)).await;
}
