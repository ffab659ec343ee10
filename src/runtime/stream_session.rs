//! One connection on a reliable transport (TCP or TLS, RFC 8323): bytes in →
//! [`StreamConnection`] (framing, CSM, Ping/Pong, Release/Abort) → the shared [`Pipeline`] →
//! frames out. No MIDs and no dedup: the transport is reliable. A bad frame closes this
//! connection only (after an Abort); a silent connection is pinged, then closed.
//!
//! Until the peer's CSM arrives the connection is pre-auth ([`PreAuth`]): it is closed,
//! without a word, when its deadline passes or the listener evicts it for a newer one.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::coap::{Packet, StreamConnection, StreamEvent};
use crate::runtime::pipeline::{DRAIN_LIMIT, Pipeline, Start};
use crate::runtime::{Handler, Shutdown, stopped};
use crate::transport::PeerInfo;
use crate::transport::tcp::PreAuth;

/// The largest message we accept (advertised in our CSM). Requests are small; answers to
/// us are device ACLs.
pub const OUR_MAX_MESSAGE_SIZE: u32 = 64 * 1024;
/// A connection with no traffic for this long is pinged; silent for as long again, closed.
pub const KEEPALIVE: Duration = Duration::from_secs(120);
/// How long a sliced answer stays cached for its follow-up blocks.
const BLOCK_LIFETIME: Duration = Duration::from_secs(120);

/// Serves one connection until it closes, fails, is cut off before its first CSM (see
/// `pre_auth`), or `shutdown`.
pub async fn serve_stream<S, H>(
    stream: S,
    peer: PeerInfo,
    handler: Arc<H>,
    mut shutdown: Shutdown,
    mut pre_auth: PreAuth,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let now = std::time::Instant::now();
    let mut conn =
        StreamConnection::new(now, OUR_MAX_MESSAGE_SIZE, true).with_keepalive(now, KEEPALIVE);
    let mut pipeline: Pipeline<H, ()> = Pipeline::new(handler, peer, BLOCK_LIFETIME);
    let mut buf = vec![0u8; 16 * 1024];

    loop {
        if flush(&mut conn, &mut writer).await.is_err() {
            return;
        }
        if conn.is_closed() {
            break;
        }
        let now = Instant::now();
        let wake = [conn.poll_timeout(), pipeline.poll_timeout()]
            .into_iter()
            .flatten()
            .map(Instant::from_std)
            .min()
            .unwrap_or(now + KEEPALIVE);
        tokio::select! {
            read = reader.read(&mut buf) => {
                let n = match read {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!("connection ends: {e}");
                        break;
                    }
                };
                let now = std::time::Instant::now();
                conn.handle_bytes(now, buf.get(..n).unwrap_or_default());
                if conn.peer_csm_received() {
                    pre_auth.authenticated();
                }
                while let Some(event) = conn.poll_event() {
                    match event {
                        StreamEvent::Request(request) => {
                            let max = Some(conn.peer_max_message_size());
                            if let Start::Answer((), answer) = pipeline.start_for(now, request, (), max) {
                                send(&mut conn, answer);
                            }
                        }
                        StreamEvent::Response(_) => {
                            tracing::debug!("ignoring a response on a server connection");
                        }
                        StreamEvent::Closed { reason } => {
                            tracing::info!(%reason, "connection closed");
                        }
                    }
                }
            }
            Some(done) = pipeline.finished() => {
                let now = std::time::Instant::now();
                let ((), response) = pipeline.complete(now, done, Some(conn.peer_max_message_size()));
                send(&mut conn, response);
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = std::time::Instant::now();
                conn.handle_timeout(now);
                pipeline.handle_timeout(now);
            }
            why = pre_auth.cut_off(), if pre_auth.is_pending() => {
                pre_auth.refused(why, &"no CSM");
                return;
            }
            _ = stopped(&mut shutdown) => break,
        }
    }
    let drain_until = Instant::now() + DRAIN_LIMIT;
    while let Some(done) = pipeline.drain_next(drain_until).await {
        let now = std::time::Instant::now();
        let ((), response) = pipeline.complete(now, done, Some(conn.peer_max_message_size()));
        send(&mut conn, response);
        if flush(&mut conn, &mut writer).await.is_err() {
            return;
        }
    }
    if !conn.is_closed() {
        conn.release("shutting down");
    }
    let _ = flush(&mut conn, &mut writer).await;
    let _ = writer.shutdown().await;
}

fn send(conn: &mut StreamConnection, response: Packet) {
    if let Err(e) = conn.send(&response) {
        tracing::error!("cannot send our response: {e}");
    }
}

async fn flush<W: AsyncWrite + Unpin>(
    conn: &mut StreamConnection,
    writer: &mut W,
) -> std::io::Result<()> {
    while let Some(bytes) = conn.poll_transmit() {
        writer.write_all(&bytes).await?;
    }
    writer.flush().await
}
