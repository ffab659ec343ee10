//! The link to a device the gateway dials. Over UDP and DTLS it is a session that runs the
//! same two-role serve loop as every listener session ([`crate::runtime::session`]): the
//! gateway's reads go over its [`PeerLink`], several at once up to NSTART, with no lock held
//! across an exchange, and a device's own requests on it are answered 4.04. Over TCP and TLS
//! it is a stream [`Channel`], one exchange at a time.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::coap::{MessageClass, Packet, ResponseType, TransportTuning};
use crate::config::{EndpointUri, Scheme};
use crate::runtime::{
    AnySession, Channel, ChannelSecurity, ChannelTuning, Handler, OpenError, PeerLink,
    spawn_session,
};
use crate::transport::mux::DatagramMux;
use crate::transport::{DatagramSession, PeerInfo};

/// An open link to a dialled device.
pub enum OpenLink {
    /// UDP or DTLS: a session with its own serve loop.
    Datagram(SessionLink),
    /// TCP or TLS (boxed: a channel is large).
    Stream(Box<Channel>),
}

impl OpenLink {
    /// Opens a link to `uri`; datagram transports go through `mux` (one socket for many
    /// devices). Returns the peer as its channel proved it.
    pub async fn open(
        uri: EndpointUri,
        mux: &Arc<DatagramMux>,
        security: &ChannelSecurity,
        tuning: &ChannelTuning,
    ) -> Result<(OpenLink, PeerInfo), OpenError> {
        let session = match (uri.scheme, security) {
            (Scheme::Coap, ChannelSecurity::None) => AnySession::Plain(mux.connect(uri.addr)),
            (Scheme::Coaps, ChannelSecurity::Dtls(dtls)) => {
                AnySession::Dtls(dtls.connect(mux.connect(uri.addr)).await?)
            }
            _ => {
                let (channel, peer) = Channel::open(uri, mux, security, tuning).await?;
                return Ok((OpenLink::Stream(Box::new(channel)), peer));
            }
        };
        let peer = session.peer_info();
        let link = SessionLink::start(session, peer.clone(), tuning);
        Ok((OpenLink::Datagram(link), peer))
    }

    /// Whether the link can carry another request: its session has not ended (datagram), or
    /// no request was cut off mid-frame and the stream is open.
    pub fn is_usable(&self) -> bool {
        match self {
            OpenLink::Datagram(s) => !s.link.is_closed(),
            OpenLink::Stream(c) => c.is_reusable(),
        }
    }

    /// Ends the link politely (a DTLS close_notify), within `budget`.
    pub async fn close(self, budget: Duration) {
        match self {
            OpenLink::Datagram(s) => s.close(budget).await,
            OpenLink::Stream(c) => (*c).close(budget).await,
        }
    }
}

/// A dialled datagram session running its serve loop.
pub struct SessionLink {
    pub link: PeerLink,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl SessionLink {
    fn start(session: AnySession, peer: PeerInfo, tuning: &ChannelTuning) -> SessionLink {
        let (stop, shutdown) = watch::channel(false);
        let handler = Arc::new(NoResources {
            max_body: tuning.max_body,
        });
        let datagram: TransportTuning = tuning.datagram.clone();
        let (link, task) = spawn_session(session, peer, handler, datagram, shutdown);
        SessionLink { link, stop, task }
    }

    /// Stops the serve loop, which sends close_notify on its way out.
    async fn close(self, budget: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(budget * 2, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// What a dialled device may ask the gateway: nothing (4.04), with its answers to our reads
/// bounded by the south's body limit.
struct NoResources {
    max_body: usize,
}

impl Handler for NoResources {
    async fn handle(&self, _peer: &PeerInfo, _request: Packet) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Response(ResponseType::NotFound);
        p
    }

    fn max_response_body(&self) -> usize {
        self.max_body
    }
}
