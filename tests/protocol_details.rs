//! Protocol details (issue 6 item 8): what is read from a device is bounded and a device's
//! words are cut short in `Detail`; proxy requests are refused; NON answers have a random
//! first MID; POST and PUT on the next generated name serialise; duplicate suppression of an
//! Add survives a restart of the gateway on the same store.

mod support;

use privgw::mo::Value;
use support::*;

/// The `Detail` strings of a reply's `Failed` list.
fn details(reply: &privgw::cli::ctl::Reply) -> Vec<String> {
    reply
        .document
        .as_ref()
        .and_then(|d| d.get("Failed"))
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(|f| f.get("Detail").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A DM device with a 10 KB malformed ACL (read whole, quoted in 200 characters) and one
/// with a 300 KB ACL (not read past 16 KiB): both `bad-acl`, the answer stays small. Before,
/// the 300 KB ACL came back whole in a 300 KB 5.02.
#[tokio::test]
async fn huge_device_acls_are_capped_and_details_truncated() {
    bounded(async {
        let malformed = format!("Replace={}&&", "a".repeat(10_000));
        let huge = format!("Replace={}&&", "b".repeat(300_000));
        let fleet = Fleet::builder()
            .dm("devM", &[("/3/0", &malformed)])
            .dm("devN", &[("/3/0", &huge)])
            .group("G1", &["devM", "devN"])
            .device_timeout_ms(10_000)
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let reply = add(&mut a, "G1", "Group", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "5.02", "{}", reply.render());
        assert_eq!(
            failures(&reply),
            pairs(&[("devM", "bad-acl"), ("devN", "bad-acl")])
        );
        for d in details(&reply) {
            assert!(
                d.chars().count() <= 200,
                "{} chars: {d:.300}",
                d.chars().count()
            );
        }
        assert!(
            details(&reply)[1].contains("16384"),
            "{:?}",
            details(&reply)
        );
        assert!(reply.payload.len() < 1024, "{} bytes", reply.payload.len());
        fleet.stop().await;
    })
    .await;
}
