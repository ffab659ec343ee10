//! A CoAP client over one datagram session: drives [`ClientExchange`]s with tokio time.
//! Used south (the gateway reading device ACLs) and north (`privgw ctl`). One exchange at a
//! time per session (NSTART = 1, RFC 7252 §4.7); MIDs continue across exchanges.

use tokio::time::Instant;

use crate::coap::{ClientError, ClientEvent, ClientExchange, Packet, TransportTuning};
use crate::transport::dtls::DtlsSession;
use crate::transport::mux::Pipe;
use crate::transport::{DatagramSession, PeerInfo, TransportError};

/// A plain or DTLS session, so one client type serves both.
pub enum AnySession {
    Plain(Pipe),
    Dtls(DtlsSession),
}

impl DatagramSession for AnySession {
    async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
        match self {
            AnySession::Plain(p) => p.recv().await,
            AnySession::Dtls(d) => d.recv().await,
        }
    }

    async fn send(&mut self, datagram: &[u8]) -> Result<(), TransportError> {
        match self {
            AnySession::Plain(p) => p.send(datagram).await,
            AnySession::Dtls(d) => d.send(datagram).await,
        }
    }

    fn peer(&self) -> std::net::SocketAddr {
        match self {
            AnySession::Plain(p) => p.peer(),
            AnySession::Dtls(d) => d.peer(),
        }
    }

    fn peer_info(&self) -> PeerInfo {
        match self {
            AnySession::Plain(p) => p.peer_info(),
            AnySession::Dtls(d) => d.peer_info(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Coap(#[from] ClientError),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // OpenSSL's CSPRNG; on the (practically impossible) failure, fall back to the clock so
    // tokens still differ between exchanges.
    if openssl::rand::rand_bytes(&mut buf).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            .to_le_bytes();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = nanos[i % 4] ^ (i as u8);
        }
    }
    buf
}

pub struct CoapClient<S: DatagramSession> {
    session: S,
    tuning: TransportTuning,
    next_mid: u16,
    max_body: usize,
}

impl<S: DatagramSession> CoapClient<S> {
    pub fn new(session: S, tuning: TransportTuning) -> Self {
        let mid = u16::from_be_bytes(random_bytes::<2>());
        CoapClient {
            session,
            tuning,
            next_mid: mid,
            max_body: crate::coap::client::DEFAULT_MAX_BODY,
        }
    }

    /// Sets the largest response body (Block2 reassembled) a request accepts; a larger one
    /// fails with `ClientError::TooLarge` without being read further.
    pub fn with_max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }

    /// Gives the session back (to close it).
    pub fn into_session(self) -> S {
        self.session
    }

    pub fn session(&self) -> &S {
        &self.session
    }

    /// Sends `request` (code, options, payload; CON unless its type says NON) and waits for
    /// the complete response, Block2 reassembled. Retransmission and its give-up time follow
    /// the tuning; callers add their own overall deadline.
    pub async fn request(&mut self, request: Packet) -> Result<Packet, RequestError> {
        let token = random_bytes::<4>().to_vec();
        let fraction = f64::from(u16::from_be_bytes(random_bytes::<2>())) / 65536.0;
        let mut exchange = ClientExchange::new(
            std::time::Instant::now(),
            self.tuning.clone(),
            request,
            self.next_mid,
            token,
            fraction,
        )
        .with_max_body(self.max_body);
        let result = self.drive(&mut exchange).await;
        self.next_mid = exchange.next_mid();
        result
    }

    async fn drive(&mut self, exchange: &mut ClientExchange) -> Result<Packet, RequestError> {
        loop {
            let now = std::time::Instant::now();
            while let Some(bytes) = exchange.poll_transmit(now) {
                self.session.send(&bytes).await?;
            }
            if let Some(event) = exchange.poll_event() {
                return match event {
                    ClientEvent::Response(p) => Ok(p),
                    ClientEvent::Failed(e) => Err(e.into()),
                };
            }
            let wake = exchange
                .poll_timeout()
                .map(Instant::from_std)
                .unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(1));
            tokio::select! {
                received = self.session.recv() => {
                    let bytes = received?;
                    exchange.handle_datagram(std::time::Instant::now(), &bytes);
                }
                _ = tokio::time::sleep_until(wake) => {
                    exchange.handle_timeout(std::time::Instant::now());
                }
            }
        }
    }
}
