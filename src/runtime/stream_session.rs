//! One connection on a reliable transport (TCP or TLS, RFC 8323), served by the one serve
//! loop of [`crate::runtime::session`]: bytes in → [`StreamEndpoint`] (framing, CSM,
//! Ping/Pong, Release/Abort, tokens both ways) → the shared [`Pipeline`](crate::runtime::pipeline::Pipeline)
//! → frames out, and our own requests from the connection's [`PeerLink`]. No MIDs and no
//! dedup: the transport is reliable. A bad frame closes this connection only (after an
//! Abort); a silent connection is pinged, then closed; our shutdown sends a Release.
//!
//! Owns: the stream side of that loop — [`StreamEndpoint`] as a [`SessionCore`] (the peer's
//! Max-Message-Size is the pipeline's budget, its CSM authenticates a pre-auth connection,
//! finishing sends the Release) and a byte stream as a [`Wire`] (reads of up to 16 KiB, a
//! flush after each batch of frames, a write shutdown at the end) — and the connection's
//! settings ([`OUR_MAX_MESSAGE_SIZE`], [`KEEPALIVE`], [`RESPONSE_TIMEOUT`]).
//!
//! Until the peer's CSM arrives the connection is pre-auth ([`PreAuth`]): it is closed,
//! without a word, when its deadline passes or the listener evicts it for a newer one.

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::coap::{
    CoapError, EndpointEvent, Packet, RequestId, Responder, StreamConnection, StreamEndpoint,
};
use crate::runtime::peer_link::{LINK_CAPACITY, LinkInbox, PeerLink};
use crate::runtime::session::{ServeOptions, SessionCore, Wire, WireGone, serve};
use crate::runtime::{Handler, Shutdown};
use crate::transport::PeerInfo;
use crate::transport::tcp::PreAuth;

/// The largest message we accept (advertised in our CSM). Requests are small; answers to
/// us are device ACLs.
pub const OUR_MAX_MESSAGE_SIZE: u32 = 64 * 1024;
/// A connection with no traffic for this long is pinged; silent for as long again, closed.
pub const KEEPALIVE: Duration = Duration::from_secs(120);
/// How long one of our requests over the connection's link may wait for its whole answer
/// (Block2 follow-ups included): RFC 7252's MAX_TRANSMIT_WAIT, as on datagrams.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(93);
/// How long a sliced answer stays cached for its follow-up blocks.
const BLOCK_LIFETIME: Duration = Duration::from_secs(120);
/// Bytes one read may return.
const READ_CHUNK: usize = 16 * 1024;

impl SessionCore for StreamEndpoint {
    fn handle_input(&mut self, now: StdInstant, bytes: &[u8]) {
        self.handle_bytes(now, bytes);
    }
    fn handle_timeout(&mut self, now: StdInstant) {
        StreamEndpoint::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        StreamEndpoint::poll_transmit(self)
    }
    fn poll_event(&mut self) -> Option<EndpointEvent> {
        StreamEndpoint::poll_event(self)
    }
    fn poll_timeout(&self) -> Option<StdInstant> {
        StreamEndpoint::poll_timeout(self)
    }
    fn start_request(
        &mut self,
        now: StdInstant,
        request: Packet,
        token: Vec<u8>,
        _rng_fraction: f64,
    ) -> RequestId {
        StreamEndpoint::start_request(self, now, request, token)
    }
    fn cancel(&mut self, id: RequestId) -> bool {
        StreamEndpoint::cancel(self, id)
    }
    fn give_up(&mut self, now: StdInstant, id: RequestId) -> bool {
        StreamEndpoint::give_up(self, now, id)
    }
    fn respond(
        &mut self,
        now: StdInstant,
        responder: Responder,
        response: Packet,
    ) -> Result<(), CoapError> {
        StreamEndpoint::respond(self, now, responder, response)
    }
    fn is_idle(&self) -> bool {
        StreamEndpoint::is_idle(self)
    }
    fn is_closed(&self) -> bool {
        StreamEndpoint::is_closed(self)
    }
    fn max_message_size(&self) -> Option<usize> {
        Some(self.peer_max_message_size())
    }
    fn peer_ready(&self) -> bool {
        self.peer_csm_received()
    }
    fn finish(&mut self, now: StdInstant) {
        self.release(now, "shutting down");
    }
}

/// A byte stream (TCP, TLS) as a [`Wire`].
pub struct StreamWire<S> {
    reader: ReadHalf<S>,
    writer: WriteHalf<S>,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite> StreamWire<S> {
    pub fn new(stream: S) -> Self {
        let (reader, writer) = tokio::io::split(stream);
        StreamWire {
            reader,
            writer,
            buf: vec![0u8; READ_CHUNK],
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Wire for StreamWire<S> {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        match self.reader.read(&mut self.buf).await {
            Ok(0) => None,
            Ok(n) => Some(self.buf.get(..n).unwrap_or_default().to_vec()),
            Err(e) => {
                tracing::debug!("connection ends: {e}");
                None
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), WireGone> {
        self.writer.write_all(bytes).await.map_err(|e| {
            tracing::debug!("write failed: {e}");
            WireGone
        })
    }

    async fn flush(&mut self) -> Result<(), WireGone> {
        self.writer.flush().await.map_err(|_| WireGone)
    }

    async fn close(&mut self, _stopped: bool) {
        let _ = self.writer.shutdown().await;
    }
}

/// Serves one accepted connection in both roles until it closes, fails, is cut off before
/// its first CSM (see `pre_auth`), or `shutdown`. Handlers get the connection's
/// [`PeerLink`] through [`Handler::handle_on_link`].
pub async fn serve_stream<S, H>(
    stream: S,
    peer: PeerInfo,
    handler: Arc<H>,
    shutdown: Shutdown,
    pre_auth: PreAuth,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    let (_link, inbox) = PeerLink::new(LINK_CAPACITY);
    serve_stream_linked(stream, peer, handler, shutdown, Some(pre_auth), inbox).await;
}

/// Serves one connection in both roles — the peer's requests to `handler`, ours from
/// `inbox`'s [`PeerLink`] — until it closes, fails, is cut off (with a `pre_auth`), or
/// `shutdown`. For a connection we dialed pass no `pre_auth`. When it returns the link is
/// closed.
pub async fn serve_stream_linked<S, H>(
    stream: S,
    peer: PeerInfo,
    handler: Arc<H>,
    shutdown: Shutdown,
    pre_auth: Option<PreAuth>,
    inbox: LinkInbox,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    let now = StdInstant::now();
    let conn =
        StreamConnection::new(now, OUR_MAX_MESSAGE_SIZE, true).with_keepalive(now, KEEPALIVE);
    let endpoint =
        StreamEndpoint::new(conn, RESPONSE_TIMEOUT).with_max_body(handler.max_response_body());
    let options = ServeOptions {
        idle_timeout: None,
        block_lifetime: BLOCK_LIFETIME,
        pre_auth,
    };
    serve(
        endpoint,
        StreamWire::new(stream),
        peer,
        handler,
        shutdown,
        inbox,
        options,
    )
    .await;
}
