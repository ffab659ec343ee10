//! A client channel to one CoAP endpoint over any of the four transports, so the north
//! client (`privgw ctl`, the tests) and the south links (gateway → devices) open and use
//! connections the same way: `coap://` and `coaps://` run token → message layer over a
//! datagram session, `coap+tcp://` and `coaps+tcp://` run token → RFC 8323 framing over a
//! stream.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::coap::{Packet, TransportTuning};
use crate::config::{EndpointUri, Scheme};
use crate::runtime::{AnySession, CoapClient, Io, RequestError, StreamClient, StreamRequestError};
use crate::transport::dtls::DtlsClient;
use crate::transport::mux::DatagramMux;
use crate::transport::tls::TlsClient;
use crate::transport::{DatagramSession, PeerInfo, TransportError, tcp};

/// The credentials a channel opens with: the security layer matching the URI's scheme.
#[derive(Clone)]
pub enum ChannelSecurity {
    /// `coap://`, `coap+tcp://`.
    None,
    /// `coaps://`: a DTLS client (PSK or X.509).
    Dtls(Arc<DtlsClient>),
    /// `coaps+tcp://`: a TLS client (X.509).
    Tls(Arc<TlsClient>),
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}:// needs credentials of another kind")]
    WrongSecurity(&'static str),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Datagram(#[from] RequestError),
    #[error(transparent)]
    Stream(#[from] StreamRequestError),
}

/// Timing of a channel.
#[derive(Debug, Clone)]
pub struct ChannelTuning {
    /// RFC 7252 retransmission parameters for datagram transports.
    pub datagram: TransportTuning,
    /// TCP connect bound (TLS handshakes have their own, in the TLS client).
    pub connect_timeout: Duration,
    /// How long a stream exchange waits for its response.
    pub stream_response_timeout: Duration,
    /// The Max-Message-Size we advertise on streams.
    pub stream_max_message_size: u32,
    /// The largest response body a request accepts (Block2 reassembled), on any transport.
    pub max_body: usize,
}

pub enum Channel {
    Datagram(CoapClient<AnySession>),
    Stream(StreamClient<Box<dyn Io>>),
}

impl Channel {
    /// Opens a channel to `uri`; datagram transports go through `mux` (one socket for many
    /// peers). Returns the peer as its channel proved it.
    pub async fn open(
        uri: EndpointUri,
        mux: &Arc<DatagramMux>,
        security: &ChannelSecurity,
        tuning: &ChannelTuning,
    ) -> Result<(Channel, PeerInfo), OpenError> {
        let addr = uri.addr;
        let stream: Box<dyn Io> = match (uri.scheme, security) {
            (Scheme::Coap, ChannelSecurity::None) => {
                let pipe = mux.connect(addr);
                let info = pipe.peer_info();
                let client = CoapClient::new(AnySession::Plain(pipe), tuning.datagram.clone())
                    .with_max_body(tuning.max_body);
                return Ok((Channel::Datagram(client), info));
            }
            (Scheme::Coaps, ChannelSecurity::Dtls(dtls)) => {
                let session = dtls.connect(mux.connect(addr)).await?;
                let info = session.peer_info();
                let client = CoapClient::new(AnySession::Dtls(session), tuning.datagram.clone())
                    .with_max_body(tuning.max_body);
                return Ok((Channel::Datagram(client), info));
            }
            (Scheme::CoapTcp, ChannelSecurity::None) => {
                Box::new(tcp::connect(addr, tuning.connect_timeout).await?)
            }
            (Scheme::CoapsTcp, ChannelSecurity::Tls(tls)) => {
                let name = ServerName::IpAddress(addr.ip().into());
                let (stream, info) = tls.connect(addr, name).await?;
                let client = StreamClient::new(
                    Box::new(stream) as Box<dyn Io>,
                    tuning.stream_max_message_size,
                    tuning.stream_response_timeout,
                )
                .with_max_body(tuning.max_body);
                return Ok((Channel::Stream(client), info));
            }
            (scheme, _) => return Err(OpenError::WrongSecurity(scheme.as_str())),
        };
        let info = tcp::nosec_peer_info(addr);
        let client = StreamClient::new(
            stream,
            tuning.stream_max_message_size,
            tuning.stream_response_timeout,
        )
        .with_max_body(tuning.max_body);
        Ok((Channel::Stream(client), info))
    }

    /// One request/response exchange. Dropping the future is safe (see
    /// [`is_reusable`](Self::is_reusable)).
    pub async fn request(&mut self, request: Packet) -> Result<Packet, ChannelError> {
        Ok(match self {
            Channel::Datagram(client) => client.request(request).await?,
            Channel::Stream(client) => client.request(request).await?,
        })
    }

    /// Whether the channel can carry another request. False once a request future was
    /// dropped in the middle of a send (a half-written DTLS record or stream frame) or the
    /// stream was closed: open a new channel instead.
    pub fn is_reusable(&self) -> bool {
        match self {
            Channel::Datagram(client) => client.is_reusable(),
            Channel::Stream(client) => client.is_reusable(),
        }
    }

    /// Ends the channel politely: a DTLS close_notify, so a peer that keeps one session per
    /// address does not ignore our next handshake from the same port (RFC 6347 §4.2.8);
    /// streams just close.
    pub async fn close(self, budget: Duration) {
        if let Channel::Datagram(client) = self {
            if let AnySession::Dtls(mut session) = client.into_session() {
                let _ = tokio::time::timeout(budget, session.close()).await;
            }
        }
    }
}
