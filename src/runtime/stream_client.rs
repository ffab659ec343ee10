//! A CoAP client over one reliable connection (TCP or TLS, RFC 8323): our CSM first, then
//! one exchange at a time, matched by token, Block2 reassembled by the shared
//! [`ClientExchange`] logic.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

use crate::coap::{
    ClientError, ClientEvent, ClientExchange, CoapError, Packet, StreamConnection, StreamEvent,
};
use crate::runtime::client::random_bytes;

/// Any byte stream a client can run over (TCP, TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug, thiserror::Error)]
pub enum StreamRequestError {
    #[error(transparent)]
    Coap(#[from] ClientError),
    #[error("cannot send: {0}")]
    Send(#[from] CoapError),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed: {0}")]
    Closed(String),
}

/// Drives one exchange at a time over a stream.
///
/// Dropping a [`request`](Self::request) future is safe: a late response carries the old
/// token and is ignored. A drop in the middle of a write may leave half a frame on the wire,
/// after which the stream is out of step: [`is_reusable`](Self::is_reusable) then says so.
pub struct StreamClient<S> {
    reader: ReadHalf<S>,
    writer: WriteHalf<S>,
    conn: StreamConnection,
    response_timeout: Duration,
    buf: Vec<u8>,
    max_body: usize,
    /// A write was started and did not finish (its future was dropped).
    write_interrupted: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> StreamClient<S> {
    /// Wraps a connected stream; our CSM goes out with the first request.
    pub fn new(stream: S, our_max_message_size: u32, response_timeout: Duration) -> Self {
        let (reader, writer) = tokio::io::split(stream);
        StreamClient {
            reader,
            writer,
            conn: StreamConnection::new(std::time::Instant::now(), our_max_message_size, true),
            response_timeout,
            buf: vec![0u8; 16 * 1024],
            max_body: crate::coap::client::DEFAULT_MAX_BODY,
            write_interrupted: false,
        }
    }

    /// Sets the largest response body (Block2 reassembled) a request accepts.
    pub fn with_max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }

    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Whether the connection can carry another request: open, and no write cut short.
    pub fn is_reusable(&self) -> bool {
        !self.write_interrupted && !self.conn.is_closed()
    }

    /// Sends `request` and waits for its complete response (Block2 reassembled).
    pub async fn request(&mut self, request: Packet) -> Result<Packet, StreamRequestError> {
        let mut exchange = ClientExchange::new_reliable(
            std::time::Instant::now(),
            request,
            random_bytes::<4>().to_vec(),
            self.response_timeout,
        )
        .with_max_body(self.max_body);
        loop {
            while let Some(p) = exchange.poll_request() {
                self.conn.send(&p)?;
            }
            self.write_interrupted = true;
            while let Some(bytes) = self.conn.poll_transmit() {
                self.writer.write_all(&bytes).await?;
            }
            self.writer.flush().await?;
            self.write_interrupted = false;
            if let Some(event) = exchange.poll_event() {
                return match event {
                    ClientEvent::Response(p) => Ok(p),
                    ClientEvent::Failed(e) => Err(e.into()),
                };
            }
            let wake = [exchange.poll_timeout(), self.conn.poll_timeout()]
                .into_iter()
                .flatten()
                .map(Instant::from_std)
                .min()
                .unwrap_or_else(|| Instant::now() + self.response_timeout);
            tokio::select! {
                read = self.reader.read(&mut self.buf) => {
                    let n = read?;
                    if n == 0 {
                        return Err(StreamRequestError::Closed("peer closed the connection".into()));
                    }
                    let now = std::time::Instant::now();
                    self.conn.handle_bytes(now, self.buf.get(..n).unwrap_or_default());
                    while let Some(event) = self.conn.poll_event() {
                        match event {
                            StreamEvent::Response(p) => exchange.handle_response(now, p),
                            StreamEvent::Request(_) => tracing::debug!("ignoring a request on a client connection"),
                            StreamEvent::Closed { reason } => {
                                // Flush the Abort/Release we may owe, then report.
                                while let Some(bytes) = self.conn.poll_transmit() {
                                    let _ = self.writer.write_all(&bytes).await;
                                }
                                return Err(StreamRequestError::Closed(reason));
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    let now = std::time::Instant::now();
                    exchange.handle_timeout(now);
                    self.conn.handle_timeout(now);
                }
            }
        }
    }
}
