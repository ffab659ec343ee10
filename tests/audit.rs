//! The audit trail over real sockets: committed and refused privilege writes appear in
//! `GET /GwConfig/Audit` with their fields, in `Seq` order, paged by `since`/`limit`,
//! bounded by `[audit] max_records`, kept across a restart (a commit's record is written with
//! the commit), and readable only by servers with Get on Privileges.

mod support;

use std::time::{Duration, Instant};

use privgw::acl::Operation;
use privgw::audit::ProxiedDecision;
use privgw::cli::ctl::{GatewayClient, Reply};
use privgw::coap::RequestType;
use privgw::mo::Value;
use support::*;

/// devA: server A owns /3/0, so A's grants verify and B's are refused by the device. The
/// gateway lets anyone Add and Replace, only A Get and Delete.
fn fleet() -> FleetBuilder {
    Fleet::builder()
        .lwm2m("devA", vec![ac(0, 3, 0, SSID_A)])
        .privileges_acl("Add=*&Delete=ServerA&Get=ServerA&Replace=*")
}

async fn audit(client: &mut GatewayClient, query: &str) -> Reply {
    get(client, &format!("/GwConfig/Audit{query}")).await
}

/// The records of one page, and its `Next` and `More`.
fn page(reply: &Reply) -> (Vec<Value>, i64, bool) {
    assert_eq!(reply.code, "2.05", "{}", reply.render());
    let doc = reply.document.as_ref().expect("a CBOR or JSON document");
    let records = doc
        .get("Records")
        .and_then(Value::as_array)
        .expect("Records")
        .to_vec();
    let next = doc.get("Next").and_then(Value::as_int).expect("Next");
    let more = doc.get("More").and_then(Value::as_bool).expect("More");
    (records, next, more)
}

fn seqs(records: &[Value]) -> Vec<i64> {
    records
        .iter()
        .map(|r| r.get("Seq").and_then(Value::as_int).expect("Seq"))
        .collect()
}

fn field<'a>(record: &'a Value, key: &str) -> Option<&'a str> {
    record.get(key).and_then(Value::as_str)
}

fn int(record: &Value, key: &str) -> Option<i64> {
    record.get(key).and_then(Value::as_int)
}

#[tokio::test]
async fn committed_and_refused_writes_are_recorded_paged_kept_and_gated() {
    bounded(async {
        let mut fleet = fleet().start().await;
        let mut a = fleet.server_a().await;
        let mut b = fleet.server_b().await;
        let (records, next, more) = page(&audit(&mut a, "").await);
        assert!(
            records.is_empty() && next == 0 && !more,
            "a new store has no trail"
        );

        // 1: A's grant is verified on devA and committed.
        let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        // 2: B's is refused by devA (owner is A).
        let reply = add(&mut b, "devA", "Device", "/3/0", "Get=*").await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        // 3: B may not Delete at all (the gateway's gate), whatever exists.
        let reply = delete(&mut b, "p1").await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());

        let (records, next, more) = page(&audit(&mut a, "").await);
        assert_eq!(seqs(&records), [1, 2, 3], "{records:?}");
        assert_eq!((next, more), (3, false));
        let committed = &records[0];
        assert_eq!(field(committed, "Kind"), Some("privilege"));
        assert_eq!(field(committed, "Server"), Some("ServerA"));
        assert_eq!(field(committed, "Command"), Some("Add"));
        assert_eq!(field(committed, "Name"), Some("p1"));
        assert_eq!(field(committed, "Verdict"), Some("committed"));
        assert_eq!(field(committed, "Code"), Some("2.01"));
        assert_eq!(int(committed, "Verified"), Some(1));
        assert_eq!(int(committed, "FailedCount"), Some(0));
        let entry = committed.get("Entry").expect("the leaves");
        assert_eq!(field(entry, "TargetID"), Some("devA"));
        assert_eq!(field(entry, "TargetType"), Some("Device"));
        assert_eq!(field(entry, "URI"), Some("/3/0"));
        assert_eq!(field(entry, "ACL"), Some("Get=ServerB"));
        assert!(field(committed, "Time").is_some_and(|t| t.ends_with('Z')));

        let refused = &records[1];
        assert_eq!(field(refused, "Server"), Some("ServerB"));
        assert_eq!(field(refused, "Command"), Some("Add"));
        assert_eq!(field(refused, "Verdict"), Some("refused"));
        assert_eq!(field(refused, "Code"), Some("4.03"));
        assert_eq!(int(refused, "FailedCount"), Some(1));
        assert_eq!(
            field(refused.get("Entry").unwrap(), "ACL"),
            Some("Get=*"),
            "{refused:?}"
        );
        assert!(
            field(refused, "Reason").is_some_and(|r| r.contains("425")),
            "{refused:?}"
        );

        let gated = &records[2];
        assert_eq!(field(gated, "Server"), Some("ServerB"));
        assert_eq!(field(gated, "Command"), Some("Delete"));
        assert_eq!(field(gated, "Name"), Some("p1"));
        assert_eq!(field(gated, "Verdict"), Some("refused"));
        assert_eq!(int(gated, "FailedCount"), Some(0));
        assert!(
            field(gated, "Reason").is_some_and(|r| r.contains("may not Delete")),
            "{gated:?}"
        );

        // B has no Get on Privileges: no trail either.
        let reply = audit(&mut b, "").await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());

        // 4, 5: a Replace of a leaf and a Delete by A, both committed.
        let reply = b
            .request(
                RequestType::Put,
                "/GwConfig/Privileges/p1/ACL",
                Some((0, b"Get=ServerA".to_vec())),
                None,
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            reply.code,
            "4.03",
            "B cannot Replace on devA: {}",
            reply.render()
        );
        let reply = a
            .request(
                RequestType::Put,
                "/GwConfig/Privileges/p1/ACL",
                Some((0, b"Get=ServerB&Replace=ServerB".to_vec())),
                None,
                &[],
            )
            .await
            .unwrap();
        assert_eq!(reply.code, "2.04", "{}", reply.render());
        let reply = delete(&mut a, "p1").await;
        assert_eq!(reply.code, "2.02", "{}", reply.render());

        // Paging: since is exclusive, Next is the last Seq, More says whether to go on.
        let (records, next, more) = page(&audit(&mut a, "?since=0&limit=2").await);
        assert_eq!((seqs(&records), next, more), (vec![1, 2], 2, true));
        let (records, next, more) = page(&audit(&mut a, "?since=2&limit=2").await);
        assert_eq!((seqs(&records), next, more), (vec![3, 4], 4, true));
        assert_eq!(field(&records[1], "Server"), Some("ServerB"));
        assert_eq!(field(&records[1], "Command"), Some("Replace"));
        let (records, next, more) = page(&audit(&mut a, "?since=4&limit=2").await);
        assert_eq!((seqs(&records), next, more), (vec![5, 6], 6, false));
        assert_eq!(field(&records[0], "Verdict"), Some("committed"));
        assert_eq!(
            field(records[0].get("Entry").unwrap(), "ACL"),
            Some("Get=ServerB&Replace=ServerB"),
            "the Replace records the new leaves"
        );
        assert_eq!(field(&records[1], "Command"), Some("Delete"));
        assert_eq!(field(&records[1], "Code"), Some("2.02"));
        assert_eq!(
            field(records[1].get("Entry").unwrap(), "ACL"),
            Some("Get=ServerB&Replace=ServerB"),
            "a Delete records the entry it deleted"
        );
        let (records, next, more) = page(&audit(&mut a, "?since=6").await);
        assert!(records.is_empty() && next == 6 && !more);
        for bad in ["?limit=0", "?since=x", "?since=1&since=2", "?after=p1"] {
            let reply = audit(&mut a, bad).await;
            assert_eq!(reply.code, "4.00", "{bad}: {}", reply.render());
        }

        // JSON on Accept 50, several blocks long (Block2 by the usual machinery).
        let reply = a
            .request(RequestType::Get, "/GwConfig/Audit", None, Some(50), &[])
            .await
            .unwrap();
        assert_eq!(reply.content_format, Some(50));
        assert!(reply.payload.len() > 1024, "{} bytes", reply.payload.len());
        assert_eq!(seqs(&page(&reply).0), [1, 2, 3, 4, 5, 6]);

        // The trail is in the store: a restarted gateway shows it and counts on.
        drop((a, b));
        fleet.restart_gateway().await;
        let mut a = fleet.server_a().await;
        let (records, _, _) = page(&audit(&mut a, "").await);
        assert_eq!(seqs(&records), [1, 2, 3, 4, 5, 6]);
        assert_eq!(field(&records[0], "Verdict"), Some("committed"));
        assert_eq!(field(&records[0], "Name"), Some("p1"));
        let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        let (records, _, _) = page(&audit(&mut a, "?since=6").await);
        assert_eq!(seqs(&records), [7]);
        assert_eq!(field(&records[0], "Name"), Some("p2"));
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn retention_keeps_the_newest_records() {
    bounded(async {
        let fleet = fleet().audit_toml("max_records = 3").start().await;
        let mut a = fleet.server_a().await;
        for i in 0..5 {
            let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
            assert_eq!(reply.code, "2.01", "add {i}: {}", reply.render());
        }
        let (records, next, more) = page(&audit(&mut a, "").await);
        assert_eq!((seqs(&records), next, more), (vec![3, 4, 5], 5, false));
        assert_eq!(field(&records[2], "Name"), Some("p5"));
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn disabled_audit_records_nothing() {
    bounded(async {
        let fleet = fleet().audit_toml("enabled = false").start().await;
        let mut a = fleet.server_a().await;
        let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        let (records, _, _) = page(&audit(&mut a, "").await);
        assert!(records.is_empty(), "{records:?}");
        fleet.stop().await;
    })
    .await;
}

fn decision(n: u32) -> ProxiedDecision {
    ProxiedDecision {
        server: "ServerB".into(),
        device: "devA".into(),
        method: "GET",
        path: format!("/3/0/{n}"),
        command: Some(Operation::Get),
        allowed: n != 2,
        reason: if n == 2 {
            "no privilege and device ACL denies: R".into()
        } else {
            "privilege p1".into()
        },
        grantor: (n != 2).then(|| "ServerA".into()),
        latency: Duration::from_micros(250),
    }
}

/// Proxied decisions reach the trail within about a second, and those still queued at
/// shutdown are written before the gateway stops.
#[tokio::test]
async fn proxied_decisions_are_written_in_batches_and_flushed_at_stop() {
    bounded(async {
        let mut fleet = fleet().start().await;
        let mut a = fleet.server_a().await;
        fleet.gateway().audit().proxied(decision(1));
        fleet.gateway().audit().proxied(decision(2));
        let start = Instant::now();
        let records = loop {
            let (records, _, _) = page(&audit(&mut a, "").await);
            if records.len() == 2 {
                break records;
            }
            assert!(start.elapsed() < Duration::from_secs(2), "{records:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let allowed = &records[0];
        assert_eq!(field(allowed, "Kind"), Some("proxied"));
        assert_eq!(field(allowed, "Server"), Some("ServerB"));
        assert_eq!(field(allowed, "Device"), Some("devA"));
        assert_eq!(field(allowed, "Method"), Some("GET"));
        assert_eq!(field(allowed, "Path"), Some("/3/0/1"));
        assert_eq!(field(allowed, "Command"), Some("Get"));
        assert_eq!(field(allowed, "Verdict"), Some("allowed"));
        assert_eq!(field(allowed, "Reason"), Some("privilege p1"));
        assert_eq!(field(allowed, "Grantor"), Some("ServerA"));
        assert_eq!(int(allowed, "LatencyUs"), Some(250));
        assert_eq!(field(&records[1], "Verdict"), Some("denied"));
        assert!(records[1].get("Grantor").is_none());

        // Queued, then the gateway stops at once: the writer flushes before it ends.
        for n in 3..103 {
            fleet.gateway().audit().proxied(decision(n));
        }
        assert_eq!(fleet.gateway().audit().dropped(), 0);
        drop(a);
        fleet.restart_gateway().await;
        let mut a = fleet.server_a().await;
        let (records, _, _) = page(&audit(&mut a, "?limit=1000").await);
        assert_eq!(records.len(), 102, "every queued decision was written");
        assert_eq!(field(&records[101], "Path"), Some("/3/0/102"));
        fleet.stop().await;
    })
    .await;
}

/// End to end: B's proxied requests, refused and then allowed by A's grant, land in the
/// trail between (and after) the grant's own record, in the order they happened.
#[tokio::test]
async fn proxied_requests_through_the_gateway_are_in_the_trail() {
    bounded(async {
        let fleet = Fleet::builder()
            .lwm2m("devA", vec![ac_with(0, 3, 0, SSID_A, &[(SSID_A, 31)])])
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let mut b = fleet.server_b().await;
        let reply = get(&mut b, "/devA/3/0/0").await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());
        // Written within about a second: the denial comes before the grant.
        let start = Instant::now();
        while page(&audit(&mut a, "").await).0.is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "no record of the denial"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        let start = Instant::now();
        let reply = loop {
            let reply = get(&mut b, "/devA/3/0/0").await;
            if reply.code == "2.05" || start.elapsed() > Duration::from_secs(2) {
                break reply;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(reply.code, "2.05", "{}", reply.render());
        let start = Instant::now();
        let records = loop {
            let (records, _, _) = page(&audit(&mut a, "").await);
            let allowed = records
                .iter()
                .any(|r| field(r, "Verdict") == Some("allowed"));
            if allowed {
                break records;
            }
            assert!(start.elapsed() < Duration::from_secs(3), "{records:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let denied = &records[0];
        assert_eq!(field(denied, "Kind"), Some("proxied"), "{records:?}");
        assert_eq!(field(denied, "Server"), Some("ServerB"));
        assert_eq!(field(denied, "Device"), Some("devA"));
        assert_eq!(field(denied, "Method"), Some("GET"));
        assert_eq!(field(denied, "Path"), Some("/3/0/0"));
        assert_eq!(field(denied, "Command"), Some("Get"));
        assert_eq!(field(denied, "Verdict"), Some("denied"));
        assert!(denied.get("Grantor").is_none());
        assert_eq!(field(&records[1], "Kind"), Some("privilege"));
        assert_eq!(field(&records[1], "Verdict"), Some("committed"));
        let allowed = records
            .iter()
            .find(|r| field(r, "Verdict") == Some("allowed"))
            .unwrap();
        assert_eq!(field(allowed, "Grantor"), Some("ServerA"), "{allowed:?}");
        assert!(
            field(allowed, "Reason").is_some_and(|r| r.contains("p1")),
            "{allowed:?}"
        );
        assert!(int(allowed, "LatencyUs").is_some());
        fleet.stop().await;
    })
    .await;
}
