//! The tokio drivers around the sans-IO CoAP core: a listener accepts peers on one socket,
//! one serve loop ([`session::serve`]) drives one sans-IO core per peer — an
//! [`Endpoint`](crate::coap::Endpoint) per datagram session, a
//! [`StreamEndpoint`](crate::coap::StreamEndpoint) per TCP/TLS connection — in both roles: it
//! hands the peer's requests to a [`Handler`] and carries our requests to the peer from a
//! [`PeerLink`]; and a client runs request/response exchanges over a session it owns.
//!
//! The same runtime serves the gateway (north) and the simulated devices, and carries the
//! gateway's requests to devices (south) and the `ctl` client's to the gateway.

mod alarm;
pub mod channel;
pub mod client;
pub mod listener;
pub mod peer_link;
pub mod pipeline;
pub mod session;
pub mod stream_client;
pub mod stream_listener;
pub mod stream_session;

use std::future::Future;

use coap_lite::Packet;

use crate::transport::PeerInfo;

pub use channel::{Channel, ChannelError, ChannelSecurity, ChannelTuning, OpenError};
pub use client::{AnySession, CoapClient, RequestError};
pub use listener::{ListenError, Listener, Security};
pub use peer_link::{
    LinkError, LinkInbox, Observation, ObserverError, ObserverHandle, PeerLink, Tagged,
};
pub use session::{
    DatagramWire, ServeOptions, SessionCore, Wire, WireGone, serve, serve_session,
    serve_session_linked, spawn_session,
};
pub use stream_client::{Io, StreamClient, StreamRequestError};
pub use stream_listener::{AnyListener, StreamListener, StreamSecurity};
pub use stream_session::{StreamWire, serve_stream, serve_stream_linked};

/// Answers requests. `peer` carries the identity the transport proved; the returned packet
/// needs only code, options and payload (the message layer sets type, MID and token).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, peer: &PeerInfo, request: Packet) -> impl Future<Output = Packet> + Send;

    /// Whether a peer whose secure channel just came up (DTLS or TLS: its credential
    /// verified) is one this handler serves. A peer it does not (a certificate that chains to
    /// a trusted CA but names no configured server) is closed at once rather than kept as a
    /// session answered 4.01. Default: every authenticated peer.
    fn admits(&self, peer: &PeerInfo) -> bool {
        let _ = peer;
        true
    }

    /// The bounds of each session's duplicate table and Block2 cache, with the budgets
    /// shared by all sessions of this handler. Default: one process-wide set of defaults.
    fn cache_limits(&self) -> crate::coap::CacheLimits {
        crate::coap::CacheLimits::process_default()
    }

    /// The largest response body (Block2 reassembled) our requests to this handler's peers
    /// accept over a [`PeerLink`]; a larger one fails with `ClientError::TooLarge`.
    fn max_response_body(&self) -> usize {
        crate::coap::client::DEFAULT_MAX_BODY
    }

    /// Whether this handler reassembles Block1 requests itself (RFC 7959 §2.5). If not (the
    /// default), the pipeline answers a request with Block1 4.02 Bad Option, as for any
    /// critical option it does not implement.
    fn accepts_block1(&self) -> bool {
        false
    }

    /// [`handle`](Self::handle), told what one message to this peer carries: an error
    /// answer is never sliced into Block2 blocks (clients do not reassemble error bodies), so
    /// a handler with long error bodies keeps them within `max_payload` bytes. The pipeline
    /// calls this one; the default ignores the limit.
    fn handle_within(
        &self,
        peer: &PeerInfo,
        request: Packet,
        max_payload: usize,
    ) -> impl Future<Output = Packet> + Send {
        let _ = max_payload;
        self.handle(peer, request)
    }

    /// [`handle_within`](Self::handle_within), given the [`PeerLink`] of the session the
    /// request came on, so the handler can send requests back to this peer over the same
    /// session (an LwM2M server reading the device that just registered), now or later with
    /// a kept clone. The pipeline calls this one; the default ignores the link. Every
    /// session has a working link, datagram (UDP, DTLS) or stream (TCP, TLS: the peer may
    /// observe us, we do not observe it).
    fn handle_on_link(
        &self,
        peer: &PeerInfo,
        link: &PeerLink,
        request: Packet,
        max_payload: usize,
    ) -> impl Future<Output = Packet> + Send {
        let _ = link;
        self.handle_within(peer, request, max_payload)
    }
}

/// A stop signal shared by every task of an endpoint (mini-redis style: the owner flips it,
/// every loop selects on it).
pub type Shutdown = tokio::sync::watch::Receiver<bool>;

/// Resolves when `shutdown` has been signalled (or its sender dropped).
pub async fn stopped(shutdown: &mut Shutdown) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}
