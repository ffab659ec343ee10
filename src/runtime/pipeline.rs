//! The request pipeline every server session shares, whatever the transport: Block2
//! follow-ups served from the cache, a cap on requests in the handler, the handler run
//! concurrently, and the finished response sliced for the peer. The session supplies a
//! context `C` that it needs to answer (a UDP `Responder`, or a TCP token) and gets it back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::coap::block::cache_key;
use crate::coap::{Block2Cache, BlockOption, CoapOption, Packet, ResponseType, response_to};
use crate::runtime::Handler;
use crate::transport::PeerInfo;

/// Requests one peer may have in the handler at once; more are answered 5.03 at once.
pub const MAX_REQUESTS_IN_HANDLER: usize = 64;
/// On shutdown, how long a session waits for requests still in the handler.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// What to do with a request just received.
pub enum Start<C> {
    /// Answer now (from the Block2 cache, or an error); nothing was executed.
    Answer(C, Packet),
    /// The handler runs; its response comes out of [`Pipeline::finished`].
    Running,
}

/// A handler's response, ready for [`Pipeline::complete`].
pub struct Finished<C> {
    context: C,
    key: Vec<u8>,
    block2: Option<BlockOption>,
    response: Packet,
}

pub struct Pipeline<H, C> {
    handler: Arc<H>,
    peer: Arc<PeerInfo>,
    blocks: Block2Cache,
    done_tx: mpsc::Sender<Finished<C>>,
    done_rx: mpsc::Receiver<Finished<C>>,
    in_handler: usize,
}

impl<H: Handler, C: Send + 'static> Pipeline<H, C> {
    /// `lifetime`: how long a sliced body stays cached for its follow-up blocks.
    pub fn new(handler: Arc<H>, peer: PeerInfo, lifetime: Duration) -> Self {
        let (done_tx, done_rx) = mpsc::channel(MAX_REQUESTS_IN_HANDLER);
        let blocks =
            Block2Cache::new(lifetime).with_account(handler.cache_limits().block2_account());
        Pipeline {
            handler,
            peer: Arc::new(peer),
            blocks,
            done_tx,
            done_rx,
            in_handler: 0,
        }
    }

    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    pub fn in_handler(&self) -> usize {
        self.in_handler
    }

    /// Takes a request: answers it from the cache or with an error, or starts the handler.
    pub fn start(&mut self, now: Instant, request: Packet, context: C) -> Start<C> {
        let key = cache_key(&request);
        let block2 = match BlockOption::block2(&request) {
            Some(Ok(b)) => Some(b),
            Some(Err(e)) => {
                let mut answer = response_to(&request, ResponseType::BadOption);
                answer.payload = format!("Block2: {e}").into_bytes();
                return Start::Answer(context, answer);
            }
            None => None,
        };
        if let Some(b) = block2 {
            if let Some(mut cached) = self.blocks.lookup(now, &key, b) {
                cached.set_token(request.get_token().to_vec());
                return Start::Answer(context, cached);
            }
        }
        if self.in_handler >= MAX_REQUESTS_IN_HANDLER {
            let mut answer = response_to(&request, ResponseType::ServiceUnavailable);
            answer.add_option(CoapOption::MaxAge, vec![1]);
            return Start::Answer(context, answer);
        }
        self.in_handler += 1;
        let handler = self.handler.clone();
        let peer = self.peer.clone();
        let done = self.done_tx.clone();
        let token = request.get_token().to_vec();
        tokio::spawn(
            async move {
                let mut response = handler.handle(&peer, request).await;
                response.set_token(token);
                // The session may be gone (shutdown); then nobody waits for the answer.
                let _ = done
                    .send(Finished {
                        context,
                        key,
                        block2,
                        response,
                    })
                    .await;
            }
            .instrument(tracing::Span::current()),
        );
        Start::Running
    }

    /// The next response the handler finished. Cancel-safe.
    pub async fn finished(&mut self) -> Option<Finished<C>> {
        let done = self.done_rx.recv().await?;
        self.in_handler = self.in_handler.saturating_sub(1);
        Some(done)
    }

    /// On shutdown: the next response still owed, until `deadline`; `None` once nothing is
    /// in the handler or the deadline passed (the rest is abandoned, with a warning).
    pub async fn drain_next(&mut self, deadline: tokio::time::Instant) -> Option<Finished<C>> {
        if self.in_handler == 0 {
            return None;
        }
        tokio::select! {
            done = self.finished() => done,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(in_handler = self.in_handler, "shutdown: abandoning requests still running");
                None
            }
        }
    }

    /// Slices a finished response for the peer: `max_message_size` for RFC 8323 peers (whole
    /// if it fits), `None` for UDP (1024-byte blocks).
    pub fn complete(
        &mut self,
        now: Instant,
        done: Finished<C>,
        max_message_size: Option<usize>,
    ) -> (C, Packet) {
        let response = match max_message_size {
            Some(max) => self
                .blocks
                .apply_within(now, done.key, done.block2, done.response, max),
            None => self.blocks.apply(now, done.key, done.block2, done.response),
        };
        (done.context, response)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.blocks.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.blocks.handle_timeout(now);
    }
}
