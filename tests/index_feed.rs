//! The proxy's privilege index follows the store's change feed over real sockets: a
//! committed grant lets server B through on the next request, its delete stops B on the
//! next one (DESIGN.md §6: "a privilege change or delete takes effect for the next request
//! at once").

mod support;

use std::time::{Duration, Instant};

use privgw::cli::ctl::{GatewayClient, Reply};
use support::*;

/// Waits (bounded) until B's GET of `path` answers `code`; returns that reply.
async fn until_code(b: &mut GatewayClient, path: &str, code: &str) -> Reply {
    let start = Instant::now();
    loop {
        let reply = get(b, path).await;
        if reply.code == code {
            return reply;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{path}: still {} after 2 s: {}",
            reply.code,
            reply.render()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_grant_and_its_delete_decide_the_next_proxied_request() {
    bounded(async {
        // devA: only A may do anything on /3/0 (no Read for others): B needs a privilege.
        let fleet = Fleet::builder()
            .lwm2m("devA", vec![ac_with(0, 3, 0, SSID_A, &[(SSID_A, 31)])])
            .start()
            .await;
        let mut a = fleet.server_a().await;
        let mut b = fleet.server_b().await;
        let reply = get(&mut b, "/devA/3/0/0").await;
        assert_eq!(reply.code, "4.03", "{}", reply.render());

        let reply = add(&mut a, "devA", "Device", "/3/0", "Get=ServerB").await;
        assert_eq!(reply.code, "2.01", "{}", reply.render());
        // The feed is asynchronous but prompt: allowed within a short, bounded wait.
        until_code(&mut b, "/devA/3/0/0", "2.05").await;

        let reply = delete(&mut a, "p1").await;
        assert_eq!(reply.code, "2.02", "{}", reply.render());
        until_code(&mut b, "/devA/3/0/0", "4.03").await;
        fleet.stop().await;
    })
    .await;
}
