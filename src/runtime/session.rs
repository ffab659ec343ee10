//! One peer session on a datagram transport (UDP or DTLS): datagrams in →
//! [`ServerExchanges`] (dedup, ping, bad options) → the shared [`Pipeline`] → back out. A
//! retransmitted request is answered from the dedup cache and never executed twice.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::coap::{Inbound, Packet, Responder, ServerExchanges, TransportTuning};
use crate::runtime::pipeline::{DRAIN_LIMIT, Pipeline, Start};
use crate::runtime::{Handler, Shutdown, stopped};
use crate::transport::{DatagramSession, PeerInfo};

/// A session with no traffic for this long ends (its peer slot is freed).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Serves one peer until it goes quiet, its transport closes, or `shutdown`.
pub async fn serve_session<S: DatagramSession, H: Handler>(
    mut session: S,
    peer: PeerInfo,
    handler: Arc<H>,
    tuning: TransportTuning,
    mut shutdown: Shutdown,
) {
    // RFC 7252 §4.4: our NON responses' MIDs start at a random value in every session.
    let first_mid = u16::from_be_bytes(crate::runtime::client::random_bytes::<2>());
    let mut exchanges = ServerExchanges::new(tuning.clone())
        .with_first_mid(first_mid)
        .with_account(handler.cache_limits().dedup_account());
    let mut pipeline: Pipeline<H, Responder> =
        Pipeline::new(handler, peer, tuning.exchange_lifetime());
    let mut last_heard = Instant::now();

    loop {
        let now = Instant::now();
        let wake = [exchanges.poll_timeout(), pipeline.poll_timeout()]
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
                        if let Start::Answer(responder, answer) = pipeline.start(now, request, responder) {
                            send_answer(&mut session, &mut exchanges, now, responder, answer).await;
                        }
                    }
                    Inbound::Reply(bytes) => {
                        if let Err(e) = session.send(&bytes).await {
                            tracing::debug!("send failed: {e}");
                        }
                    }
                    Inbound::Ignore => {}
                }
            }
            Some(done) = pipeline.finished() => {
                let now = std::time::Instant::now();
                let (responder, response) = pipeline.complete(now, done, None);
                send_answer(&mut session, &mut exchanges, now, responder, response).await;
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if now >= last_heard + IDLE_TIMEOUT && pipeline.in_handler() == 0 {
                    tracing::debug!("session idle, closing");
                    break;
                }
                exchanges.handle_timeout(now.into_std());
                pipeline.handle_timeout(now.into_std());
            }
            _ = stopped(&mut shutdown) => break,
        }
    }
    // Requests already in the handler are finished and answered (each is bounded by the
    // device deadline); no new ones are taken.
    let drain_until = Instant::now() + DRAIN_LIMIT;
    while let Some(done) = pipeline.drain_next(drain_until).await {
        let now = std::time::Instant::now();
        let (responder, response) = pipeline.complete(now, done, None);
        send_answer(&mut session, &mut exchanges, now, responder, response).await;
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
