//! One peer session on the server side: datagrams in → [`ServerExchanges`] (dedup, ping,
//! bad options) → the handler, concurrently → [`Block2Cache`] → back out. A retransmitted
//! request is answered from the cache and never executed twice; a Block2 follow-up is served
//! from the stored body without re-running the handler.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::coap::block::cache_key;
use crate::coap::{
    Block2Cache, BlockOption, Inbound, Packet, Responder, ResponseType, ServerExchanges,
    TransportTuning,
};
use crate::runtime::{Handler, Shutdown, stopped};
use crate::transport::{DatagramSession, PeerInfo};

/// Requests one peer may have in the handler at once; more are answered 5.03 at once.
pub const MAX_REQUESTS_IN_HANDLER: usize = 64;
/// On shutdown, how long a session waits for requests still in the handler.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// A session with no traffic for this long ends (its peer slot is freed).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

struct Finished {
    responder: Responder,
    key: Vec<u8>,
    block2: Option<BlockOption>,
    response: Packet,
}

/// Serves one peer until it goes quiet, its transport closes, or `shutdown`.
pub async fn serve_session<S: DatagramSession, H: Handler>(
    mut session: S,
    peer: PeerInfo,
    handler: Arc<H>,
    tuning: TransportTuning,
    mut shutdown: Shutdown,
) {
    let peer = Arc::new(peer);
    let mut exchanges = ServerExchanges::new(tuning.clone());
    let mut blocks = Block2Cache::new(tuning.exchange_lifetime());
    let (done_tx, mut done_rx) = mpsc::channel::<Finished>(MAX_REQUESTS_IN_HANDLER);
    let mut in_handler = 0usize;
    let mut last_heard = Instant::now();

    loop {
        let now = Instant::now();
        let wake = [exchanges.poll_timeout(), blocks.poll_timeout()]
            .into_iter()
            .flatten()
            .map(Instant::from_std)
            .min()
            .unwrap_or(now + IDLE_TIMEOUT)
            .min(last_heard + IDLE_TIMEOUT);
        tokio::select! {
            received = session.recv() => {
                let bytes = match received {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::debug!("session ends: {e}");
                        break;
                    }
                };
                last_heard = Instant::now();
                let now = last_heard.into_std();
                match exchanges.handle_datagram(now, &bytes) {
                    Inbound::Request { request, responder } => {
                        let key = cache_key(&request);
                        let block2 = match BlockOption::block2(&request) {
                            Some(Ok(b)) => Some(b),
                            Some(Err(e)) => {
                                let mut answer = crate::coap::response_to(&request, ResponseType::BadOption);
                                answer.payload = format!("Block2: {e}").into_bytes();
                                send_answer(&mut session, &mut exchanges, now, responder, answer).await;
                                continue;
                            }
                            None => None,
                        };
                        if let Some(b) = block2 {
                            if let Some(cached) = blocks.lookup(now, &key, b) {
                                send_answer(&mut session, &mut exchanges, now, responder, cached).await;
                                continue;
                            }
                        }
                        if in_handler >= MAX_REQUESTS_IN_HANDLER {
                            let mut answer = crate::coap::response_to(&request, ResponseType::ServiceUnavailable);
                            answer.add_option(crate::coap::CoapOption::MaxAge, vec![1]);
                            send_answer(&mut session, &mut exchanges, now, responder, answer).await;
                            continue;
                        }
                        in_handler += 1;
                        let handler = handler.clone();
                        let peer = peer.clone();
                        let done = done_tx.clone();
                        let span = tracing::Span::current();
                        tokio::spawn(async move {
                            let response = handler.handle(&peer, request).await;
                            // The session may be gone (shutdown); then nobody waits for it.
                            let _ = done.send(Finished { responder, key, block2, response }).await;
                        }.instrument(span));
                    }
                    Inbound::Reply(bytes) => {
                        if let Err(e) = session.send(&bytes).await {
                            tracing::debug!("send failed: {e}");
                        }
                    }
                    Inbound::Ignore => {}
                }
            }
            Some(done) = done_rx.recv() => {
                in_handler = in_handler.saturating_sub(1);
                let now = std::time::Instant::now();
                let response = blocks.apply(now, done.key, done.block2, done.response);
                send_answer(&mut session, &mut exchanges, now, done.responder, response).await;
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if now >= last_heard + IDLE_TIMEOUT && in_handler == 0 {
                    tracing::debug!("session idle, closing");
                    break;
                }
                exchanges.handle_timeout(now.into_std());
                blocks.handle_timeout(now.into_std());
            }
            _ = stopped(&mut shutdown) => break,
        }
    }
    // Requests already in the handler are finished and answered (each is bounded by the
    // device deadline); no new ones are taken.
    let drain_until = Instant::now() + DRAIN_LIMIT;
    while in_handler > 0 {
        let done = tokio::select! {
            done = done_rx.recv() => done,
            _ = tokio::time::sleep_until(drain_until) => {
                tracing::warn!(in_handler, "shutdown: abandoning requests still running");
                break;
            }
        };
        let Some(done) = done else { break };
        in_handler -= 1;
        let now = std::time::Instant::now();
        let response = blocks.apply(now, done.key, done.block2, done.response);
        send_answer(&mut session, &mut exchanges, now, done.responder, response).await;
    }
}

async fn send_answer<S: DatagramSession>(
    session: &mut S,
    exchanges: &mut ServerExchanges,
    now: std::time::Instant,
    responder: Responder,
    response: Packet,
) {
    match exchanges.respond(now, responder, response) {
        Ok(bytes) => {
            if let Err(e) = session.send(&bytes).await {
                tracing::debug!("send failed: {e}");
            }
        }
        Err(e) => tracing::error!("cannot encode our response: {e}"),
    }
}
