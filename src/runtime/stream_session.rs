//! One connection on a reliable transport (TCP or TLS, RFC 8323), served by the one serve
//! loop of [`crate::runtime::session`]: bytes in → [`StreamEndpoint`] (framing, CSM,
//! Ping/Pong, Release/Abort, tokens both ways) → the shared [`Pipeline`](crate::runtime::pipeline::Pipeline)
//! → frames out, and our own requests from the connection's [`PeerLink`]. No MIDs and no
//! dedup: the transport is reliable. A bad frame closes this connection only (after an
//! Abort); a silent connection is pinged, then closed; our shutdown sends a Release.
//!
//! Owns: the stream side of that loop — [`StreamEndpoint`] as a [`SessionCore`] (the peer's
//! Max-Message-Size is the pipeline's budget, its CSM authenticates a pre-auth connection,
//! finishing sends the Release, the peer may observe our resources) and a byte stream as a
//! [`Wire`] (reads of up to 16 KiB, a
//! flush after each batch of frames, a write shutdown at the end) — and the connection's
//! settings ([`OUR_MAX_MESSAGE_SIZE`], [`KEEPALIVE`], [`RESPONSE_TIMEOUT`]).
//!
//! Until the peer's CSM arrives the connection is pre-auth ([`PreAuth`]): it is closed,
//! without a word, when its deadline passes or the listener evicts it for a newer one.

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::coap::{
    CoapError, EndpointEvent, NotifyError, Packet, RequestId, Responder, StreamConnection,
    StreamEndpoint,
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
    fn has_room(&self) -> bool {
        StreamEndpoint::has_room(self)
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
    fn is_observed(&self, token: &[u8]) -> bool {
        StreamEndpoint::is_observed(self, token)
    }
    fn is_registering(&self, token: &[u8]) -> bool {
        StreamEndpoint::is_registering(self, token)
    }
    fn notify(
        &mut self,
        now: StdInstant,
        token: &[u8],
        response: Packet,
        confirmable: bool,
    ) -> Result<(), NotifyError> {
        StreamEndpoint::notify(self, now, token, response, confirmable)
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

#[cfg(test)]
mod tests {
    //! The serve loop over an in-memory byte stream in paused tokio time; the test plays the
    //! peer with its own [`StreamEndpoint`].

    use std::net::SocketAddr;

    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
    use tokio::sync::watch;

    use super::*;
    use crate::coap::observe::{observe_value, set_observe};
    use crate::coap::{ClientError, MessageClass, RequestType, ResponseType, response_to};
    use crate::transport::{Identity, TransportKind};

    fn info() -> PeerInfo {
        let addr = SocketAddr::from(([127, 0, 0, 1], 5683));
        PeerInfo {
            addr,
            kind: TransportKind::Tcp,
            identity: Identity::Address(addr.ip()),
        }
    }

    fn get(path: &str) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(RequestType::Get);
        crate::coap::set_uri(&mut p, path);
        p
    }

    /// `/slow` answers after 5 s; `/observed` answers with an Observe option and notifies
    /// through its observer handle a second later.
    struct Handlers;

    impl Handler for Handlers {
        async fn handle(&self, _peer: &PeerInfo, request: Packet) -> Packet {
            response_to(&request, ResponseType::NotFound)
        }

        async fn handle_on_link(
            &self,
            _peer: &PeerInfo,
            link: &PeerLink,
            request: Packet,
            _max_payload: usize,
        ) -> Packet {
            let mut answer = response_to(&request, ResponseType::Content);
            match crate::coap::uri_path(&request)
                .unwrap_or_default()
                .as_slice()
            {
                [p] if p == "slow" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    answer.payload = b"slow".to_vec();
                }
                [p] if p == "observed" => {
                    let mut change = response_to(&request, ResponseType::Content);
                    change.payload = b"1".to_vec();
                    let observer = link.observer(&request);
                    // A second later, once the answer has been read: the notification.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        observer.notify(change).await
                    });
                    set_observe(&mut answer, 7);
                    answer.payload = b"first".to_vec();
                }
                _ => return response_to(&request, ResponseType::NotFound),
            }
            answer
        }
    }

    /// The test's side of the connection.
    struct Peer {
        endpoint: StreamEndpoint,
        reader: ReadHalf<DuplexStream>,
        writer: WriteHalf<DuplexStream>,
    }

    impl Peer {
        fn new(stream: DuplexStream) -> Peer {
            let now = StdInstant::now();
            let (reader, writer) = tokio::io::split(stream);
            Peer {
                endpoint: StreamEndpoint::new(
                    StreamConnection::new(now, 1 << 20, true),
                    RESPONSE_TIMEOUT,
                ),
                reader,
                writer,
            }
        }

        /// Writes what the peer owes.
        async fn flush(&mut self) {
            while let Some(bytes) = self.endpoint.poll_transmit() {
                self.writer.write_all(&bytes).await.unwrap();
            }
        }

        /// Writes what the peer owes, then reads once; `false` at EOF.
        async fn step(&mut self) -> bool {
            self.flush().await;
            let mut buf = vec![0u8; 4096];
            let n = self.reader.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return false;
            }
            self.endpoint
                .handle_bytes(StdInstant::now(), buf.get(..n).unwrap_or_default());
            true
        }

        /// The next frame, read raw (the peer's endpoint plays client only and would drop a
        /// notification): for frames that follow an event the endpoint has already read.
        async fn raw_frame(&mut self) -> Packet {
            let mut pending = Vec::new();
            loop {
                if let Some((packet, _)) = crate::coap::decode_frame(&pending, 1 << 20).unwrap() {
                    return packet;
                }
                let mut buf = vec![0u8; 4096];
                let n = self.reader.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection ended before the frame");
                pending.extend_from_slice(buf.get(..n).unwrap_or_default());
            }
        }

        /// Steps until an event comes.
        async fn event(&mut self) -> EndpointEvent {
            loop {
                if let Some(e) = self.endpoint.poll_event() {
                    return e;
                }
                assert!(self.step().await, "connection ended before the event");
            }
        }
    }

    fn serve_ours(
        stream: DuplexStream,
        shutdown: Shutdown,
    ) -> (PeerLink, tokio::task::JoinHandle<()>) {
        let (link, inbox) = PeerLink::new(LINK_CAPACITY);
        let task = tokio::spawn(serve_stream_linked(
            stream,
            info(),
            Arc::new(Handlers),
            shutdown,
            None,
            inbox,
        ));
        (link, task)
    }

    /// On shutdown, a request still in the handler is answered first, then the connection is
    /// released and closed; our link then fails Closed.
    #[tokio::test(start_paused = true)]
    async fn shutdown_answers_the_request_in_the_handler_then_releases() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (stop, shutdown) = watch::channel(false);
        let (link, task) = serve_ours(ours, shutdown);
        let mut peer = Peer::new(theirs);
        let id = peer
            .endpoint
            .start_request(StdInstant::now(), get("/slow"), vec![1]);
        while !peer.endpoint.peer_csm_received() {
            assert!(peer.step().await);
        }
        // The request went out once the gateway's CSM came: write it.
        peer.flush().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.send(true).unwrap();
        match peer.event().await {
            EndpointEvent::Response { id: got, result } => {
                assert_eq!(got, id);
                assert_eq!(result.unwrap().payload, b"slow");
            }
            other => panic!("{other:?}"),
        }
        while peer.step().await {}
        assert!(peer.endpoint.is_closed(), "released by the gateway");
        task.await.unwrap();
        assert_eq!(
            link.request(get("/x")).await,
            Err(crate::runtime::LinkError::Closed)
        );
    }

    /// A peer's GET with Observe = 0 registers it (RFC 8323 §7): the answer carries the
    /// observer's first sequence number, the handler's later notification comes as a frame
    /// with the same token and the next one. Our own observation over the link is refused at
    /// once with ObserveUnsupported while a plain request works.
    #[tokio::test(start_paused = true)]
    async fn a_peer_observes_us_on_a_stream_but_we_do_not_observe_it() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (_stop, shutdown) = watch::channel(false);
        let (link, _task) = serve_ours(ours, shutdown);
        let mut peer = Peer::new(theirs);
        let mut register = get("/observed");
        set_observe(&mut register, 0);
        let id = peer
            .endpoint
            .start_request(StdInstant::now(), register, vec![2]);
        match peer.event().await {
            EndpointEvent::Response { id: got, result } => {
                assert_eq!(got, id);
                let answer = result.unwrap();
                assert_eq!(answer.payload, b"first");
                assert_eq!(observe_value(&answer), Some(0), "registered");
            }
            other => panic!("{other:?}"),
        }
        let note = peer.raw_frame().await;
        assert_eq!(note.get_token(), [2]);
        assert_eq!(observe_value(&note), Some(1));
        assert_eq!(note.payload, b"1");
        assert_eq!(
            link.observe(get("/3/0")).await.err(),
            Some(crate::runtime::LinkError::Coap(
                ClientError::ObserveUnsupported
            ))
        );
        let asking = {
            let link = link.clone();
            tokio::spawn(async move { link.request(get("/3/0")).await })
        };
        let (request, responder) = match peer.event().await {
            EndpointEvent::Request { request, responder } => (request, responder),
            other => panic!("{other:?}"),
        };
        let mut answer = response_to(&request, ResponseType::Content);
        answer.payload = b"device".to_vec();
        peer.endpoint
            .respond(StdInstant::now(), responder, answer)
            .unwrap();
        peer.flush().await;
        assert_eq!(asking.await.unwrap().unwrap().payload, b"device");
    }
}
