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

    async fn close(&mut self) {
        if let AnySession::Dtls(d) = self {
            DatagramSession::close(d).await;
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

/// Bytes for tokens and retransmission jitter on the hot path: a per-thread xorshift64*
/// generator seeded from OpenSSL's CSPRNG ([`random_bytes`]) once per thread. A proxied
/// request drew 6 bytes from `RAND_bytes` per request sent (≈ 6.5 % of the gateway's CPU
/// under proxy load). Tokens need to be unpredictable to an off-path spoofer only (RFC 7252
/// §5.3.1): an attacker who cannot see our datagrams cannot see the generator's outputs
/// either, and one on the path reads tokens off the wire anyway.
pub(crate) fn fast_random_bytes<const N: usize>() -> [u8; N] {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(u64::from_le_bytes(random_bytes::<8>()) | 1);
    }
    let mut out = [0u8; N];
    STATE.with(|state| {
        for chunk in out.chunks_mut(8) {
            let mut x = state.get();
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            state.set(x);
            let word = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    });
    out
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

/// Drives one exchange at a time over `session`.
///
/// Cancellation-safe: dropping a [`request`](Self::request) future at any await leaves the
/// client usable. Its MIDs are claimed before the first await (and each Block2 follow-up's as
/// soon as it is built), so the next request never reuses one the peer may have cached with
/// an old response (RFC 7252 §4.5). A drop in the middle of a send may leave a DTLS record
/// half-written inside OpenSSL: [`is_reusable`](Self::is_reusable) then says so, and the
/// owner opens a new session instead.
pub struct CoapClient<S: DatagramSession> {
    session: S,
    tuning: TransportTuning,
    next_mid: u16,
    max_body: usize,
    /// A send was started and did not finish (its future was dropped).
    send_interrupted: bool,
}

impl<S: DatagramSession> CoapClient<S> {
    pub fn new(session: S, tuning: TransportTuning) -> Self {
        let mid = u16::from_be_bytes(random_bytes::<2>());
        CoapClient {
            session,
            tuning,
            next_mid: mid,
            max_body: crate::coap::client::DEFAULT_MAX_BODY,
            send_interrupted: false,
        }
    }

    /// Sets the largest response body (Block2 reassembled) a request accepts; a larger one
    /// fails with `ClientError::TooLarge` without being read further.
    pub fn with_max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }

    /// The first MID the next request will use.
    pub fn next_mid(&self) -> u16 {
        self.next_mid
    }

    /// Whether the session can carry another request: false once a request future was
    /// dropped in the middle of a send.
    pub fn is_reusable(&self) -> bool {
        !self.send_interrupted
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
    /// the tuning; callers add their own overall deadline (dropping this future is safe, see
    /// the type's doc).
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
        // Claim the exchange's MIDs now: a caller's deadline may drop this future at any
        // await below, and the next exchange must not reuse them.
        self.next_mid = exchange.next_mid();
        self.drive(&mut exchange).await
    }

    async fn drive(&mut self, exchange: &mut ClientExchange) -> Result<Packet, RequestError> {
        loop {
            let now = std::time::Instant::now();
            while let Some(bytes) = exchange.poll_transmit(now) {
                self.send(&bytes).await?;
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
                    // A Block2 follow-up took the next MID.
                    self.next_mid = exchange.next_mid();
                }
                _ = tokio::time::sleep_until(wake) => {
                    exchange.handle_timeout(std::time::Instant::now());
                }
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        self.send_interrupted = true;
        let sent = self.session.send(bytes).await;
        self.send_interrupted = false;
        sent
    }
}

#[cfg(test)]
mod tests {
    //! The client over an in-memory session whose peer keeps a duplicate cache by MID, as
    //! every RFC 7252 server does (§4.5).

    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;

    #[test]
    fn fast_random_bytes_differ_from_call_to_call() {
        let draws: std::collections::HashSet<[u8; 4]> =
            (0..1000).map(|_| fast_random_bytes::<4>()).collect();
        assert_eq!(draws.len(), 1000, "no repeated token in 1000 draws");
        assert_ne!(fast_random_bytes::<8>(), fast_random_bytes::<8>());
    }
    use crate::coap::{MessageClass, MessageType, RequestType, ResponseType, decode, encode};
    use crate::transport::{Identity, TransportKind};

    /// The client's side of an in-memory datagram pipe.
    struct FakeSession {
        tx: mpsc::UnboundedSender<Vec<u8>>,
        rx: mpsc::UnboundedReceiver<Vec<u8>>,
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 5683))
    }

    impl DatagramSession for FakeSession {
        async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
            self.rx.recv().await.ok_or(TransportError::Closed {
                peer: peer(),
                cause: crate::transport::CloseCause::Shutdown,
            })
        }

        async fn send(&mut self, datagram: &[u8]) -> Result<(), TransportError> {
            let _ = self.tx.send(datagram.to_vec());
            Ok(())
        }

        fn peer(&self) -> SocketAddr {
            peer()
        }

        fn peer_info(&self) -> PeerInfo {
            PeerInfo {
                addr: peer(),
                kind: TransportKind::Udp,
                identity: Identity::Address(peer().ip()),
            }
        }
    }

    /// A peer that answers each new CON with a piggybacked 2.05, replays its cached answer
    /// for a MID it has seen, and stays silent for the first `silent` requests (their
    /// answers are "lost", but cached). Returns the client session and the MIDs seen.
    fn peer_with_dedup_cache(silent: usize) -> (FakeSession, mpsc::UnboundedReceiver<u16>) {
        let (to_peer, mut peer_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let (peer_tx, from_peer) = mpsc::unbounded_channel();
        let (mids_tx, mids) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut cache: HashMap<u16, Vec<u8>> = HashMap::new();
            let mut served = 0usize;
            while let Some(bytes) = peer_rx.recv().await {
                let Ok(req) = decode(&bytes) else { continue };
                let mid = req.header.message_id;
                let _ = mids_tx.send(mid);
                let answer = cache.entry(mid).or_insert_with(|| {
                    let mut resp = Packet::new();
                    resp.header.set_type(MessageType::Acknowledgement);
                    resp.header.message_id = mid;
                    resp.header.code = MessageClass::Response(ResponseType::Content);
                    resp.set_token(req.get_token().to_vec());
                    resp.payload = b"acl".to_vec();
                    encode(&resp).unwrap_or_default()
                });
                served += 1;
                if served > silent {
                    let _ = peer_tx.send(answer.clone());
                }
            }
        });
        let session = FakeSession {
            tx: to_peer,
            rx: from_peer,
        };
        (session, mids)
    }

    fn get() -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(RequestType::Get);
        crate::coap::set_uri(&mut p, "/2");
        p
    }

    /// Issue 6 item 9: a request cut off by the caller's deadline used to leave the MID
    /// counter behind, so the next request went out with the same MID, the peer replayed
    /// its cached answer (old token) and the client discarded it until it timed out too.
    #[tokio::test]
    async fn a_cancelled_request_does_not_leave_its_mid_to_the_next() {
        let (session, mut mids) = peer_with_dedup_cache(1);
        let tuning = TransportTuning::unreliable().with_ack_timeout(Duration::from_millis(100));
        let mut client = CoapClient::new(session, tuning);
        let first_mid = client.next_mid();
        let cut = tokio::time::timeout(Duration::from_millis(30), client.request(get())).await;
        assert!(
            cut.is_err(),
            "the first answer is lost: the deadline cuts it"
        );
        assert_ne!(client.next_mid(), first_mid, "the MID was claimed");
        assert!(client.is_reusable());
        let answer = tokio::time::timeout(Duration::from_secs(2), client.request(get()))
            .await
            .expect("the second request is answered in time")
            .expect("a response");
        assert_eq!(answer.payload, b"acl");
        assert_eq!(mids.recv().await, Some(first_mid));
        assert_ne!(mids.recv().await, Some(first_mid), "a fresh MID");
    }
}
