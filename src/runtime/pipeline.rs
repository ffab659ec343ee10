//! The request pipeline every server session shares, whatever the transport: Block2
//! follow-ups served from the cache, a cap on requests in the handler, the handler run
//! concurrently, and the finished response sliced for the peer. The session supplies a
//! context `C` that it needs to answer (a UDP `Responder`, or a TCP token) and gets it back.
//!
//! Only successful answers are sliced: an error response never carries Block2 or ETag
//! (libcoap's `coap-client` shows only the first block of an error, Californium refuses
//! block-wise errors). The handler learns what one message carries ([`max_payload`]) and
//! keeps its error bodies within it.
//!
//! The handler is called through [`Handler::handle_on_link`] with the session's
//! [`PeerLink`] ([`Pipeline::with_link`]; a closed link by default, for pipelines driven
//! outside a serve loop).
//!
//! A handler that panics is our fault, not the peer's: the request is answered 5.00 and its
//! slot in the handler cap is released like any other.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::coap::block::MAX_SZX;
use crate::coap::block::cache_key;
use crate::coap::{
    Block2Cache, BlockOption, CoapOption, MessageClass, Packet, ResponseType, response_to,
};
use crate::runtime::{Handler, PeerLink};
use crate::transport::PeerInfo;

/// Requests one peer may have in the handler at once; more are answered 5.03 at once.
pub const MAX_REQUESTS_IN_HANDLER: usize = 64;
/// On shutdown, how long a session waits for requests still in the handler.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Frame bytes of an answer on TCP/TLS besides its payload: length (≤ 5), code, token (≤ 8),
/// Content-Format (≤ 3), payload marker, and slack.
const STREAM_ANSWER_OVERHEAD: usize = 32;

/// The payload one message to the peer carries for a request with Block2 option `block2`:
/// on UDP/DTLS (`max_message_size` `None`) a 1024-byte block, on TCP/TLS the peer's
/// Max-Message-Size less the frame overhead; at most the block size the client asked for.
pub fn max_payload(block2: Option<BlockOption>, max_message_size: Option<usize>) -> usize {
    let transport = match max_message_size {
        None => 16usize << MAX_SZX,
        Some(max) => max.saturating_sub(STREAM_ANSWER_OVERHEAD),
    };
    block2.map_or(transport, |b| transport.min(b.size()))
}

/// Whether a response is an error (4.xx, 5.xx): sent whole, never sliced.
fn is_error(response: &Packet) -> bool {
    match response.header.code {
        MessageClass::Response(code) => u8::from(MessageClass::Response(code)) >> 5 >= 4,
        _ => false,
    }
}

/// What to do with a request just received.
pub enum Start<C> {
    /// Answer now: from the Block2 cache, an error, or the handler's answer when it was
    /// ready at its first poll.
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

/// Both ends of the channel spawned handlers answer on.
type DoneChannel<C> = (mpsc::Sender<Finished<C>>, mpsc::Receiver<Finished<C>>);

pub struct Pipeline<H, C> {
    handler: Arc<H>,
    peer: Arc<PeerInfo>,
    blocks: Block2Cache,
    /// Where spawned handlers send their answers; made by the first handler that has to
    /// wait. Most sessions never have one (a device session's peer rarely sends requests),
    /// and a tokio channel allocates a 32-slot block at once (4.6 KB of `Finished`).
    done: Option<DoneChannel<C>>,
    in_handler: usize,
    link: PeerLink,
}

impl<H: Handler, C: Send + 'static> Pipeline<H, C> {
    /// `lifetime`: how long a sliced body stays cached for its follow-up blocks.
    pub fn new(handler: Arc<H>, peer: PeerInfo, lifetime: Duration) -> Self {
        let account = handler
            .cache_limits()
            .block2_account_for(&peer.identity.key());
        let blocks = Block2Cache::new(lifetime).with_account(account);
        Pipeline {
            handler,
            peer: Arc::new(peer),
            blocks,
            done: None,
            in_handler: 0,
            link: PeerLink::closed(),
        }
    }

    /// Whether a handle to this session's link is held outside the pipeline (a handler kept
    /// it, e.g. the registration of the device on the other end).
    pub fn link_held(&self) -> bool {
        !self.link.is_closed() && self.link.holders() > 1
    }

    /// Gives every handler call the link of this session (default: a closed link).
    pub fn with_link(mut self, link: PeerLink) -> Self {
        self.link = link;
        self
    }

    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    pub fn in_handler(&self) -> usize {
        self.in_handler
    }

    /// Takes a request on UDP/DTLS: [`start_for`](Self::start_for) with no Max-Message-Size.
    pub fn start(&mut self, now: Instant, request: Packet, context: C) -> Start<C> {
        self.start_for(now, request, context, None)
    }

    /// Takes a request: answers it from the cache or with an error, or starts the handler.
    /// `max_message_size` is the RFC 8323 peer's (`None` on UDP/DTLS); with the request's
    /// Block2 it fixes the handler's [`max_payload`].
    pub fn start_for(
        &mut self,
        now: Instant,
        request: Packet,
        context: C,
        max_message_size: Option<usize>,
    ) -> Start<C> {
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
        if request.get_first_option(CoapOption::Block1).is_some() && !self.handler.accepts_block1()
        {
            let mut answer = response_to(&request, ResponseType::BadOption);
            answer.payload = b"Block1 not supported here".to_vec();
            return Start::Answer(context, answer);
        }
        if let Some(b) = block2 {
            if let Some(mut cached) = self.blocks.lookup(now, &key, b) {
                cached.set_token(request.get_token().to_vec());
                return Start::Answer(context, cached);
            }
            if let Some(refusal) = crate::coap::block::follow_up_miss(&request, b) {
                return Start::Answer(context, refusal);
            }
        }
        if self.in_handler >= MAX_REQUESTS_IN_HANDLER {
            let mut answer = response_to(&request, ResponseType::ServiceUnavailable);
            answer.add_option(CoapOption::MaxAge, vec![1]);
            return Start::Answer(context, answer);
        }
        let handler = self.handler.clone();
        let peer = self.peer.clone();
        let link = self.link.clone();
        let token = request.get_token().to_vec();
        let max_payload = max_payload(block2, max_message_size);
        let mut call = CatchPanic(Box::pin(async move {
            handler
                .handle_on_link(&peer, &link, request, max_payload)
                .await
        }));
        // Polled once here first: an answer from memory (a GET of the listing, a proxy
        // refusal) is ready at once and goes out without a task, a channel and a wake-up.
        // A call that must wait moves to its own task, which polls it again with its waker.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let ready = match Pin::new(&mut call).poll(&mut cx) {
            Poll::Ready(response) => Some(response),
            Poll::Pending => None,
        };
        if let Some(response) = ready {
            let done = Finished {
                context,
                key,
                block2,
                response: answered(response, token),
            };
            let (context, response) = self.complete(now, done, max_message_size);
            return Start::Answer(context, response);
        }
        self.in_handler += 1;
        let done = self
            .done
            .get_or_insert_with(|| mpsc::channel(MAX_REQUESTS_IN_HANDLER))
            .0
            .clone();
        tokio::spawn(
            async move {
                let response = answered(call.await, token);
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

    /// The next response the handler finished; pending for as long as no handler has had to
    /// wait (there is no channel yet). Cancel-safe.
    pub async fn finished(&mut self) -> Option<Finished<C>> {
        let Some((_, done_rx)) = self.done.as_mut() else {
            return std::future::pending().await;
        };
        let done = done_rx.recv().await?;
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
    /// if it fits), `None` for UDP (1024-byte blocks). An error response goes whole.
    pub fn complete(
        &mut self,
        now: Instant,
        done: Finished<C>,
        max_message_size: Option<usize>,
    ) -> (C, Packet) {
        if is_error(&done.response) {
            return (done.context, done.response);
        }
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

/// The handler's response with the request's token, or the 5.00 of a handler that panicked.
fn answered(response: Option<Packet>, token: Vec<u8>) -> Packet {
    let mut response = response.unwrap_or_else(|| {
        tracing::error!("request handler panicked: answering 5.00");
        internal_error()
    });
    response.set_token(token);
    response
}

/// The 5.00 for a handler that panicked (diagnostic payload, no Content-Format).
fn internal_error() -> Packet {
    let mut p = Packet::new();
    p.header.code = coap_lite::MessageClass::Response(ResponseType::InternalServerError);
    p.payload = b"internal error".to_vec();
    p
}

/// Polls a future, turning a panic inside it into `None` (the future is not polled again).
struct CatchPanic<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchPanic<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.get_mut().0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Some(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::{MessageClass, RequestType};
    use crate::transport::{Identity, TransportKind};

    struct Echo;

    impl Handler for Echo {
        async fn handle(&self, _peer: &PeerInfo, _request: Packet) -> Packet {
            Packet::new()
        }
    }

    fn pipeline() -> Pipeline<Echo, ()> {
        let peer = PeerInfo {
            addr: "127.0.0.1:5683".parse().unwrap(),
            kind: crate::transport::TransportKind::Udp,
            identity: Identity::Address("127.0.0.1".parse().unwrap()),
        };
        Pipeline::new(Arc::new(Echo), peer, Duration::from_secs(60))
    }

    fn answer(code: ResponseType, len: usize) -> Finished<()> {
        let mut request = Packet::new();
        request.header.code = MessageClass::Request(RequestType::Post);
        let mut response = response_to(&request, code);
        response.payload = vec![b'x'; len];
        Finished {
            context: (),
            key: b"k".to_vec(),
            block2: None,
            response,
        }
    }

    fn has(p: &Packet, o: CoapOption) -> bool {
        p.get_first_option(o).is_some()
    }

    /// A handler that does not reassemble Block1 never sees a block of a body.
    #[tokio::test]
    async fn block1_is_4_02_unless_the_handler_reassembles_it() {
        let mut p = pipeline();
        let mut request = Packet::new();
        request.header.code = MessageClass::Request(RequestType::Post);
        request.add_option(CoapOption::Block1, vec![0x08]);
        request.payload = vec![b'x'; 16];
        match p.start(Instant::now(), request, ()) {
            Start::Answer((), answer) => assert_eq!(
                answer.header.code,
                MessageClass::Response(ResponseType::BadOption)
            ),
            Start::Running => panic!("the handler was run"),
        }
        assert_eq!(p.in_handler(), 0);
    }

    #[test]
    fn error_answers_are_never_sliced_on_any_transport() {
        let mut p = pipeline();
        let now = Instant::now();
        for code in [
            ResponseType::Forbidden,
            ResponseType::GatewayTimeout,
            ResponseType::BadGateway,
        ] {
            for max in [None, Some(1152), Some(300)] {
                let ((), out) = p.complete(now, answer(code, 3000), max);
                assert!(!has(&out, CoapOption::Block2), "{code:?} {max:?}");
                assert!(!has(&out, CoapOption::ETag), "{code:?} {max:?}");
                assert_eq!(out.payload.len(), 3000);
            }
        }
        assert_eq!(p.poll_timeout(), None, "nothing cached for errors");
    }

    #[test]
    fn success_answers_are_still_sliced() {
        let mut p = pipeline();
        let ((), out) = p.complete(Instant::now(), answer(ResponseType::Content, 3000), None);
        assert!(has(&out, CoapOption::Block2) && has(&out, CoapOption::ETag));
        assert_eq!(out.payload.len(), 1024);
    }

    #[test]
    fn max_payload_follows_the_client_block_size_and_the_peer_limit() {
        let block = |szx| {
            Some(BlockOption {
                num: 0,
                more: false,
                szx,
            })
        };
        assert_eq!(max_payload(None, None), 1024);
        assert_eq!(max_payload(block(2), None), 64);
        assert_eq!(max_payload(block(6), None), 1024);
        assert_eq!(max_payload(None, Some(1152)), 1152 - STREAM_ANSWER_OVERHEAD);
        assert_eq!(
            max_payload(None, Some(1 << 20)),
            (1 << 20) - STREAM_ANSWER_OVERHEAD
        );
        assert_eq!(max_payload(block(4), Some(1 << 20)), 256);
        assert_eq!(max_payload(None, Some(10)), 0);
    }

    /// Panics on `/boom` at once and on `/late-boom` after waiting once; answers 2.05 on
    /// `/fine` at once and on `/late-fine` after waiting once.
    struct Boom;

    impl Handler for Boom {
        async fn handle(&self, _peer: &PeerInfo, request: Packet) -> Packet {
            let path = crate::coap::uri_path(&request)
                .unwrap_or_default()
                .join("/");
            if path.starts_with("late-") {
                tokio::task::yield_now().await;
            }
            if path.ends_with("boom") {
                panic!("handler bug");
            }
            response_to(&request, ResponseType::Content)
        }
    }

    fn request(path: &str) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(RequestType::Get);
        p.set_token(vec![7]);
        crate::coap::set_uri(&mut p, path);
        p
    }

    fn boom_pipeline() -> Pipeline<Boom, u32> {
        let peer = PeerInfo {
            addr: "127.0.0.1:1".parse().unwrap(),
            kind: TransportKind::Udp,
            identity: Identity::Address("127.0.0.1".parse().unwrap()),
        };
        Pipeline::new(Arc::new(Boom), peer, Duration::from_secs(10))
    }

    /// The answer of `path`: at once when the handler is ready at its first poll (no task),
    /// else from [`Pipeline::finished`]; and whether it was at once.
    async fn answer_of(pipeline: &mut Pipeline<Boom, u32>, path: &str, i: u32) -> (Packet, bool) {
        match pipeline.start(Instant::now(), request(path), i) {
            Start::Answer(context, response) => {
                assert_eq!(context, i);
                (response, true)
            }
            Start::Running => {
                let done = tokio::time::timeout(Duration::from_secs(5), pipeline.finished())
                    .await
                    .expect("an answer, not silence")
                    .unwrap();
                let (context, response) = pipeline.complete(Instant::now(), done, None);
                assert_eq!(context, i);
                (response, false)
            }
        }
    }

    /// A panicking handler is answered 5.00 (token echoed) and leaves the handler count at
    /// zero, whether it panics at its first poll or later in its task; before, the request
    /// was never answered and its slot never released, so 64 panics locked the peer out
    /// with 5.03.
    #[tokio::test]
    async fn a_panicking_handler_is_answered_5_00_and_its_slot_released() {
        let mut pipeline = boom_pipeline();
        for i in 0..(MAX_REQUESTS_IN_HANDLER as u32 + 2) {
            let path = if i % 2 == 0 { "/boom" } else { "/late-boom" };
            let (response, at_once) = answer_of(&mut pipeline, path, i).await;
            assert_eq!(at_once, path == "/boom");
            assert_eq!(
                response.header.code,
                MessageClass::Response(ResponseType::InternalServerError)
            );
            assert_eq!(response.get_token(), [7]);
            assert_eq!(pipeline.in_handler(), 0);
        }
        for (path, at_once) in [("/fine", true), ("/late-fine", false)] {
            let (response, was_at_once) = answer_of(&mut pipeline, path, 99).await;
            assert_eq!(was_at_once, at_once, "{path}");
            assert_eq!(
                response.header.code,
                MessageClass::Response(ResponseType::Content)
            );
            assert_eq!(response.get_token(), [7]);
        }
    }
}
