//! Bounded state for authorised clients (issue 6, item 6): the `[limits]` caps on stored
//! privileges (in total and per Grantor, checked before any device traffic, kept across a
//! restart) and the paged listing `GET /GwConfig/Privileges?after=&limit=`.

mod support;

use privgw::mo::Value;
use support::*;

/// devA: ServerA owns /3/0 and /4/0, ServerB owns /6/0.
fn fleet() -> FleetBuilder {
    Fleet::builder().lwm2m(
        "devA",
        vec![
            ac(0, 3, 0, SSID_A),
            ac(1, 4, 0, SSID_A),
            ac(2, 6, 0, SSID_B),
        ],
    )
}

#[tokio::test]
async fn privilege_caps_per_server_and_in_total_refuse_with_4_03_before_any_device_read() {
    bounded(async {
        let mut fleet = fleet()
            .limits_toml("max_privileges = 3")
            .limits_toml("max_privileges_per_server = 2")
            .start()
            .await;
        let mut a = fleet.server_a().await;
        for uri in ["/3/0", "/4/0"] {
            let r = add(&mut a, "devA", "Device", uri, "Get=ServerB").await;
            assert_eq!(r.code, "2.01", "{}", r.render());
        }
        let reads = fleet.total_requests();
        let r = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(r.code, "4.03", "{}", r.render());
        let diagnostic = String::from_utf8_lossy(&r.payload).into_owned();
        assert!(
            diagnostic.contains("limits.max_privileges_per_server")
                && diagnostic.contains("ServerA"),
            "{diagnostic}"
        );
        assert!(r.document.is_none(), "a diagnostic, not a Failed list");
        assert_eq!(
            fleet.total_requests(),
            reads,
            "no device traffic for a refused Add"
        );

        let mut b = fleet.server_b().await;
        let r = add(&mut b, "devA", "Device", "/6/0", "Get=ServerA").await;
        assert_eq!(r.code, "2.01", "ServerB has its own share: {}", r.render());
        let reads = fleet.total_requests();
        let r = add(&mut b, "devA", "Device", "/6/0", "Get=ServerA").await;
        assert_eq!(r.code, "4.03", "{}", r.render());
        let diagnostic = String::from_utf8_lossy(&r.payload).into_owned();
        assert!(
            diagnostic.contains("limits.max_privileges)"),
            "{diagnostic}"
        );
        assert_eq!(fleet.total_requests(), reads);

        // The counts come from the store after a restart; a Delete frees a slot.
        drop((a, b));
        fleet.restart_gateway().await;
        let mut a = fleet.server_a().await;
        let r = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(r.code, "4.03", "still full after a restart: {}", r.render());
        let names = privilege_names(&mut a).await;
        assert_eq!(delete(&mut a, &names[0]).await.code, "2.02");
        let r = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(r.code, "2.01", "{}", r.render());
        fleet.stop().await;
    })
    .await;
}

/// `Privileges` and `Next` of a paged listing.
fn page_of(doc: &Value) -> (Vec<String>, Option<String>) {
    let names = match doc.get("Privileges") {
        Some(Value::Map(m)) => m.iter().map(|(k, _)| k.clone()).collect(),
        other => panic!("no Privileges map: {other:?}"),
    };
    (
        names,
        doc.get("Next").and_then(Value::as_str).map(str::to_owned),
    )
}

#[tokio::test]
async fn paged_listing_walks_every_entry_once_and_small_lists_keep_their_shape() {
    bounded(async {
        let fleet = fleet()
            .limits_toml("list_default_limit = 2")
            .limits_toml("list_max_limit = 3")
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let mut created = Vec::new();
        for i in 0..3 {
            let uri = if i % 2 == 0 { "/3/0" } else { "/4/0" };
            let r = add(&mut a, "devA", "Device", uri, "Get=ServerB").await;
            assert_eq!(r.code, "2.01", "{}", r.render());
            created.push(r.location.unwrap().rsplit('/').next().unwrap().to_owned());
        }
        created.sort();
        // Three entries, max page 3: the unpaged listing is today's map of name → entry.
        let small = privilege_names(&mut a).await;
        assert_eq!(small, created);

        let r = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        created.push(r.location.unwrap().rsplit('/').next().unwrap().to_owned());
        created.sort();

        // Walk with the default page size (2): every entry once, in name order.
        let mut seen = Vec::new();
        let mut query = "/GwConfig/Privileges?limit=2".to_owned();
        for _ in 0..10 {
            let reply = get(&mut a, &query).await;
            assert_eq!(reply.code, "2.05", "{}", reply.render());
            let (names, next) = page_of(reply.document.as_ref().unwrap());
            assert!(names.len() <= 2);
            seen.extend(names);
            match next {
                Some(n) => query = format!("/GwConfig/Privileges?after={n}"),
                None => break,
            }
        }
        assert_eq!(seen, created);

        // Four entries, more than the max page: the unpaged listing is paged too.
        let reply = get(&mut a, "/GwConfig/Privileges").await;
        let (names, next) = page_of(reply.document.as_ref().unwrap());
        assert_eq!(names, created[..2]);
        assert_eq!(next.as_deref(), Some(created[1].as_str()));
        // A limit above the max is clamped; bad queries are 4.00.
        let reply = get(&mut a, "/GwConfig/Privileges?limit=500").await;
        assert_eq!(page_of(reply.document.as_ref().unwrap()).0.len(), 3);
        for bad in [
            "limit=0",
            "limit=x",
            "after=",
            "after=a/b",
            "sort=name",
            "limit=1&limit=2",
        ] {
            let reply = get(&mut a, &format!("/GwConfig/Privileges?{bad}")).await;
            assert_eq!(reply.code, "4.00", "{bad}: {}", reply.render());
        }
        fleet.stop().await;
    })
    .await;
}

#[tokio::test]
async fn paged_listing_with_the_default_limits() {
    bounded(async {
        let fleet = fleet().start().await;
        let mut a = fleet.server_a().await;
        for uri in ["/3/0", "/4/0", "/3/0"] {
            let r = add(&mut a, "devA", "Device", uri, "Get=ServerB").await;
            assert_eq!(r.code, "2.01", "{}", r.render());
        }
        let first = get(&mut a, "/GwConfig/Privileges?limit=2").await;
        assert_eq!(first.code, "2.05", "{}", first.render());
        let (names, next) = page_of(first.document.as_ref().unwrap());
        assert_eq!(names.len(), 2);
        let next = next.expect("Next on a page that is not the last");
        let rest = get(&mut a, &format!("/GwConfig/Privileges?after={next}")).await;
        let (more, end) = page_of(rest.document.as_ref().unwrap());
        assert_eq!(more.len(), 1);
        assert!(end.is_none());
        assert!(!names.contains(&more[0]));
        fleet.stop().await;
    })
    .await;
}

/// A POST whose answer goes block-wise, from a raw NoSec socket, asking block `num` of
/// 16 bytes.
fn post_block(mid: u16, num: u32) -> privgw::coap::Packet {
    use privgw::coap::{BlockOption, CoapOption, MessageType};
    let mut p = add_packet(
        MessageType::Confirmable,
        mid,
        &mid.to_be_bytes(),
        ("devA", "Device", "/3/0"),
        "Get=ServerB",
    );
    let block = BlockOption {
        num,
        more: false,
        szx: 0,
    };
    p.add_option(CoapOption::Block2, block.encode().unwrap());
    p
}

/// With a Block2 budget too small to keep any body, the next block of an Add's answer is
/// 4.08 — the Add is not executed a second time to re-render it (a GET would be).
#[tokio::test]
async fn a_write_answer_whose_body_is_gone_is_not_executed_again() {
    use privgw::coap::{self, BlockOption};
    bounded(async {
        let fleet = fleet()
            .listen(&["coaps://127.0.0.1:0", "coap://127.0.0.1:0"])
            .nosec("ServerA", "127.0.0.1")
            .limits_toml("block_cache_session_bytes = 1")
            .start()
            .await;
        let socket = raw_socket(fleet.uri(privgw::config::Scheme::Coap).addr).await;
        let first = exchange(&socket, &post_block(1, 0)).await;
        assert_eq!(coap::code_string(first.header.code), "2.01");
        assert!(BlockOption::block2(&first).unwrap().unwrap().more);
        let next = exchange(&socket, &post_block(2, 1)).await;
        assert_eq!(coap::code_string(next.header.code), "4.08");

        let mut a = fleet.server_a().await;
        assert_eq!(privilege_names(&mut a).await.len(), 1, "one Add, not two");
        assert_eq!(fleet.device("devA").requests(), 1);
        fleet.stop().await;
    })
    .await;
}
