//! The four sequences of the change request (device/group × success/failure), end to end over
//! DTLS-PSK, with both device profiles: `lwm2m` (policy `owner`) and `dm` (policy `replace`).
//! Plus DM ACL inheritance and the LwM2M `write-bit` policy.

mod support;

use support::*;

#[derive(Debug, Clone, Copy)]
enum Profile {
    Lwm2m,
    Dm,
}

/// The seed fleet: devA, devB, devC in group G1. Server A holds Replace on /3/0 everywhere;
/// devA's /5/0 and devB's /4/0 are not A's (the device and the group failure).
fn seed_fleet(profile: Profile) -> FleetBuilder {
    let mut b = Fleet::builder();
    for id in ["devA", "devB", "devC"] {
        b = match profile {
            Profile::Lwm2m => {
                let owner_4 = if id == "devB" { SSID_B } else { SSID_A };
                let owner_5 = if id == "devA" { SSID_B } else { SSID_A };
                b.lwm2m(
                    id,
                    vec![
                        ac(0, 3, 0, SSID_A),
                        ac(1, 4, 0, owner_4),
                        ac(2, 5, 0, owner_5),
                    ],
                )
            }
            Profile::Dm => {
                let acl_4 = if id == "devB" {
                    "Get=ServerA"
                } else {
                    "Get=ServerA&Replace=ServerA"
                };
                let acl_5 = if id == "devA" {
                    "Get=ServerA"
                } else {
                    "Replace=ServerA"
                };
                b.dm(
                    id,
                    &[
                        ("/3/0", "Get=*&Replace=ServerA"),
                        ("/4/0", acl_4),
                        ("/5/0", acl_5),
                    ],
                )
            }
        };
    }
    b.group("G1", &["devA", "devB", "devC"])
}

async fn device_success(profile: Profile) {
    let fleet = seed_fleet(profile).start().await;
    let mut a = fleet.server_a().await;
    let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
    assert_eq!(reply.code, "2.01", "{}", reply.render());
    let location = reply.location.clone().expect("Location-Path");
    assert!(
        location.starts_with("/GwConfig/Privileges/") && location.len() > 21,
        "{location}"
    );
    assert_eq!(reply.verified_ids(), ["devA"]);
    assert!(reply.failed_ids().is_empty());
    let doc = reply.document.as_ref().expect("CBOR body");
    assert_eq!(text(doc, "TargetID"), Some("devA"));
    assert_eq!(text(doc, "TargetType"), Some("Device"));
    assert_eq!(text(doc, "URI"), Some("/3/0"));
    assert_eq!(text(doc, "ACL"), Some("Get=ServerB"));
    assert_eq!(text(doc, "Grantor"), Some("ServerA"));
    // Only the target device was asked.
    assert!(fleet.device("devA").requests() >= 1);
    assert_eq!(fleet.device("devB").requests(), 0);
    assert_eq!(fleet.device("devC").requests(), 0);
    // The Location-Path names the committed entry.
    let stored = get(&mut a, &location).await;
    assert_eq!(stored.code, "2.05", "{}", stored.render());
    let stored = stored.document.expect("entry");
    assert_eq!(text(&stored, "ACL"), Some("Get=ServerB"));
    assert_eq!(privilege_names(&mut a).await.len(), 1);
    fleet.stop().await;
}

async fn device_failure(profile: Profile) {
    let fleet = seed_fleet(profile).start().await;
    let mut a = fleet.server_a().await;
    let reply = add(&mut a, "devA", "Device", "/5/0", "Get=ServerB").await;
    assert_eq!(reply.code, "4.03", "{}", reply.render());
    assert_eq!(status(&reply), Some(425));
    assert_eq!(failures(&reply), pairs(&[("devA", "denied")]));
    assert!(reply.location.is_none());
    assert!(fleet.device("devA").requests() >= 1);
    assert!(privilege_names(&mut a).await.is_empty());
    fleet.stop().await;
}

async fn group_success(profile: Profile) {
    let fleet = seed_fleet(profile).start().await;
    let mut a = fleet.server_a().await;
    let reply = add(&mut a, "G1", "Group", "/3/0", "Get=ServerB&Replace=ServerB").await;
    assert_eq!(reply.code, "2.01", "{}", reply.render());
    assert!(reply.location.is_some());
    assert_eq!(reply.verified_ids(), ["devA", "devB", "devC"]);
    for (id, n) in fleet.requests() {
        assert!(n >= 1, "{id} was not asked");
    }
    assert_eq!(privilege_names(&mut a).await.len(), 1);
    fleet.stop().await;
}

async fn group_failure(profile: Profile) {
    let fleet = seed_fleet(profile).start().await;
    let mut a = fleet.server_a().await;
    let reply = add(&mut a, "G1", "Group", "/4/0", "Get=ServerB").await;
    assert_eq!(reply.code, "4.03", "{}", reply.render());
    assert_eq!(status(&reply), Some(425));
    assert_eq!(failures(&reply), pairs(&[("devB", "denied")]));
    // Every member was asked, not just until the first failure.
    for (id, n) in fleet.requests() {
        assert!(n >= 1, "{id} was not asked");
    }
    assert!(privilege_names(&mut a).await.is_empty());
    fleet.stop().await;
}

#[tokio::test]
async fn lwm2m_device_success_is_2_01_with_location_and_verified() {
    bounded(device_success(Profile::Lwm2m)).await;
}

#[tokio::test]
async fn lwm2m_device_failure_is_4_03_status_425_failed_device_denied() {
    bounded(device_failure(Profile::Lwm2m)).await;
}

#[tokio::test]
async fn lwm2m_group_success_is_2_01_verified_all_members() {
    bounded(group_success(Profile::Lwm2m)).await;
}

#[tokio::test]
async fn lwm2m_group_failure_is_4_03_listing_only_the_odd_device() {
    bounded(group_failure(Profile::Lwm2m)).await;
}

#[tokio::test]
async fn dm_device_success_is_2_01_with_location_and_verified() {
    bounded(device_success(Profile::Dm)).await;
}

#[tokio::test]
async fn dm_device_failure_is_4_03_status_425_failed_device_denied() {
    bounded(device_failure(Profile::Dm)).await;
}

#[tokio::test]
async fn dm_group_success_is_2_01_verified_all_members() {
    bounded(group_success(Profile::Dm)).await;
}

#[tokio::test]
async fn dm_group_failure_is_4_03_listing_only_the_odd_device() {
    bounded(group_failure(Profile::Dm)).await;
}

#[tokio::test]
async fn dm_empty_acl_inherits_replace_from_the_parent() {
    bounded(async {
        let fleet = Fleet::builder()
            .dm(
                "devI",
                &[("/3", "Replace=ServerA"), ("/3/0", ""), ("/3/0/0", "")],
            )
            .dm("devJ", &[("/3", "Get=ServerA"), ("/3/0", "")])
            .start()
            .await;
        let mut a = fleet.server_a().await;

        let reply = add(&mut a, "devI", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        assert_eq!(reply.verified_ids(), ["devI"]);
        // The node's own (empty) ACL, then its parent's.
        assert_eq!(fleet.device("devI").requests(), 2);

        // Inheritance also denies: the parent grants A only Get.
        let reply = add(&mut a, "devJ", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        assert_eq!(failures(&reply), pairs(&[("devJ", "denied")]));
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn lwm2m_write_bit_policy_allows_a_non_owner_holding_w() {
    bounded(async {
        // /3/0 is owned by server B, but server A holds R|W on it.
        let shared = || vec![ac_with(0, 3, 0, SSID_B, &[(SSID_B, 31), (SSID_A, 3)])];
        let fleet = Fleet::builder()
            .lwm2m_with(
                "devW",
                Some("write-bit"),
                privgw::device::Behaviour::Normal,
                shared(),
            )
            .lwm2m_with(
                "devR",
                Some("write-bit"),
                privgw::device::Behaviour::Normal,
                vec![ac_with(0, 3, 0, SSID_B, &[(SSID_B, 31), (SSID_A, 1)])],
            )
            .lwm2m("devO", shared())
            .start()
            .await;
        let mut a = fleet.server_a().await;

        let reply = add(&mut a, "devW", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "write-bit with W: {}", reply.render());

        let reply = add(&mut a, "devR", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(
            reply.code,
            "4.03",
            "write-bit with R only: {}",
            reply.render()
        );
        assert_eq!(failures(&reply), pairs(&[("devR", "denied")]));

        // The same AC instance under the owner policy: A is not the owner.
        let reply = add(&mut a, "devO", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "4.03", "owner policy: {}", reply.render());
        assert_eq!(failures(&reply), pairs(&[("devO", "denied")]));
        fleet.stop().await;
    })
    .await;
}
