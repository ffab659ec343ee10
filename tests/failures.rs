//! Devices that do not say yes: unreachable (DTLS and plain), garbage, 5.00, mixed groups, and
//! large groups whose `Failed` list needs Block2. A failed verification commits nothing.

mod support;

use std::time::{Duration, Instant};

use privgw::cli::ctl::GatewayClient;
use privgw::config::Scheme;
use privgw::device::Behaviour;
use support::*;

const DEVICE_TIMEOUT_MS: u64 = 800;
/// Scheduling and handshake slack on top of the device deadline.
const SLACK: Duration = Duration::from_millis(1200);

/// The device deadline (DEVICE_TIMEOUT_MS) and a short CoAP ACK timeout, for fleets with
/// unreachable devices.
fn short_deadlines(b: FleetBuilder) -> FleetBuilder {
    b.device_timeout_ms(DEVICE_TIMEOUT_MS).ack_timeout_ms(200)
}

/// Server A's Add of `uri` on `target` (a `kind`, "Get=ServerB") is answered `code` with
/// Status `status_code` and exactly the `failed` (DeviceID, reason) pairs.
async fn add_fails(
    a: &mut GatewayClient,
    (target, kind, uri): (&str, &str, &str),
    code: &str,
    status_code: i64,
    failed: &[(&str, &str)],
) {
    let reply = add(a, target, kind, uri, "Get=ServerB").await;
    assert_eq!(reply.code, code, "{}", reply.render());
    assert_eq!(status(&reply), Some(status_code));
    assert_eq!(failures(&reply), pairs(failed));
}

async fn unreachable_device(scheme: Scheme) {
    let fleet = short_deadlines(Fleet::builder().dead("devX", scheme))
        .start()
        .await;
    assert_eq!(fleet.device_uri("devX").scheme, scheme);
    let mut a = fleet.server_a().await;
    let started = Instant::now();
    let reply = add(&mut a, "devX", "Device", "/3/0", "Get=ServerB").await;
    let elapsed = started.elapsed();
    assert_eq!(reply.code, "5.04", "{}", reply.render());
    assert_eq!(status(&reply), Some(504));
    assert_eq!(failures(&reply), pairs(&[("devX", "unreachable")]));
    assert!(
        elapsed <= Duration::from_millis(DEVICE_TIMEOUT_MS) + SLACK,
        "answered after {elapsed:?}"
    );
    assert!(privilege_names(&mut a).await.is_empty());
    fleet.stop().await;
}

#[tokio::test]
async fn unreachable_coaps_device_is_5_04_unreachable_within_deadline() {
    bounded(unreachable_device(Scheme::Coaps)).await;
}

#[tokio::test]
async fn unreachable_plain_coap_device_is_5_04_unreachable_within_deadline() {
    bounded(unreachable_device(Scheme::Coap)).await;
}

#[tokio::test]
async fn garbage_lwm2m_device_is_5_02_bad_acl() {
    bounded(async {
        let fleet = Fleet::builder()
            .lwm2m_with("devG", None, Behaviour::Garbage, vec![ac(0, 3, 0, SSID_A)])
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let target = ("devG", "Device", "/3/0");
        add_fails(&mut a, target, "5.02", 500, &[("devG", "bad-acl")]).await;
        assert!(privilege_names(&mut a).await.is_empty());
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn garbage_dm_device_is_5_02_bad_acl() {
    bounded(async {
        let fleet = Fleet::builder()
            .dm_with(
                "devG",
                None,
                Behaviour::Garbage,
                &[("/3/0", "Replace=ServerA")],
            )
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let target = ("devG", "Device", "/3/0");
        add_fails(&mut a, target, "5.02", 500, &[("devG", "bad-acl")]).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn server_error_device_is_5_02_device_error() {
    bounded(async {
        let fleet = Fleet::builder()
            .lwm2m_with(
                "devE",
                None,
                Behaviour::ServerError,
                vec![ac(0, 3, 0, SSID_A)],
            )
            .dm_with(
                "devF",
                None,
                Behaviour::ServerError,
                &[("/3/0", "Replace=ServerA")],
            )
            .group("G", &["devE", "devF"])
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let target = ("devE", "Device", "/3/0");
        add_fails(&mut a, target, "5.02", 500, &[("devE", "device-error")]).await;
        let reply = add(&mut a, "G", "Group", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "5.02", "{}", reply.render());
        assert_eq!(
            failures(&reply),
            pairs(&[("devE", "device-error"), ("devF", "device-error")])
        );
        assert!(privilege_names(&mut a).await.is_empty());
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn mixed_group_denied_and_unreachable_is_4_03_listing_both_sorted() {
    bounded(async {
        // Members listed out of order: the answer must sort by DeviceID.
        let fleet = short_deadlines(
            Fleet::builder()
                .lwm2m("devZ", vec![ac(0, 3, 0, SSID_B)])
                .lwm2m("devM", vec![ac(0, 3, 0, SSID_A)])
                .dead("devA", Scheme::Coaps)
                .group("G", &["devZ", "devM", "devA"]),
        )
        .start()
        .await;
        let mut a = fleet.server_a().await;
        let failed = [("devA", "unreachable"), ("devZ", "denied")];
        add_fails(&mut a, ("G", "Group", "/3/0"), "4.03", 425, &failed).await;
        assert!(privilege_names(&mut a).await.is_empty());
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn failed_verification_commits_nothing() {
    bounded(async {
        let fleet = Fleet::builder()
            .lwm2m("devA", vec![ac(0, 3, 0, SSID_A)])
            .lwm2m("devB", vec![ac(0, 3, 0, SSID_B)])
            .group("G", &["devA", "devB"])
            .start()
            .await;
        let mut a = fleet.server_a().await;
        // POST (gateway-named) and PUT (client-named) both fail on devB.
        let reply = add(&mut a, "G", "Group", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        let body = privgw::cli::ctl::privilege_body("G", "Group", "/3/0", "Get=ServerB");
        let reply = put(&mut a, "mine", &body, &[]).await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        assert_eq!(failures(&reply), pairs(&[("devB", "denied")]));

        let list = get(&mut a, "/GwConfig/Privileges").await;
        assert_eq!(list.code, "2.05");
        assert_eq!(list.document, Some(privgw::mo::Value::Map(Vec::new())));
        let named = get(&mut a, "/GwConfig/Privileges/mine").await;
        assert_eq!(named.code, "4.04", "{}", named.render());
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn forty_denied_devices_are_all_listed_sorted_across_block2() {
    bounded(async {
        const N: usize = 40;
        let ids: Vec<String> = (0..N).map(|i| format!("dev{i:02}")).collect();
        let mut b = Fleet::builder();
        for id in &ids {
            b = b.lwm2m(id, vec![ac(0, 3, 0, SSID_B)]);
        }
        // Members in a scrambled order (7 is coprime with 40).
        let members: Vec<&str> = (0..N).map(|i| ids[(i * 7) % N].as_str()).collect();
        let fleet = b.group("G", &members).start().await;
        let mut a = fleet.server_a().await;
        let reply = add(&mut a, "G", "Group", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        assert_eq!(status(&reply), Some(425));
        // Larger than any one datagram the gateway sends (MAX_MESSAGE_SIZE): the client
        // reassembled a server-side Block2 transfer.
        assert!(
            reply.payload.len() > privgw::coap::MAX_MESSAGE_SIZE,
            "body is only {} bytes",
            reply.payload.len()
        );
        let failed = failures(&reply);
        assert_eq!(failed.len(), N);
        let expected: Vec<(String, String)> = ids
            .iter()
            .map(|id| (id.clone(), "denied".to_owned()))
            .collect();
        assert_eq!(failed, expected);
        for (id, n) in fleet.requests() {
            assert!(n >= 1, "{id} was not asked");
        }
        assert!(privilege_names(&mut a).await.is_empty());
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn missing_ac_instance_is_4_03_no_acl() {
    bounded(async {
        let fleet = Fleet::builder()
            .lwm2m("devA", vec![ac(0, 3, 0, SSID_A)])
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let target = ("devA", "Device", "/6/0");
        add_fails(&mut a, target, "4.03", 425, &[("devA", "no-acl")]).await;
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn unreachable_and_bad_acl_together_are_5_02_status_500() {
    bounded(async {
        let fleet = short_deadlines(
            Fleet::builder()
                .dead("devX", Scheme::Coaps)
                .lwm2m_with("devG", None, Behaviour::Garbage, vec![ac(0, 3, 0, SSID_A)])
                .group("G", &["devX", "devG"]),
        )
        .start()
        .await;
        let mut a = fleet.server_a().await;
        let failed = [("devG", "bad-acl"), ("devX", "unreachable")];
        add_fails(&mut a, ("G", "Group", "/3/0"), "5.02", 500, &failed).await;
        fleet.stop().await;
    })
    .await;
}
