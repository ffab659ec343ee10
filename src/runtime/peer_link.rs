//! [`PeerLink`]: a cheap, cloneable handle for sending *our* requests to the peer of one
//! datagram session, over that very session (same socket, same DTLS session) — how the
//! gateway, as LwM2M server, reads a device that registered with it, and how a device that
//! dialed the gateway registers while serving it on the same socket.
//!
//! Owns: the bounded request channel into one session's serve loop
//! ([`crate::runtime::session`]) and the typed outcome ([`LinkError`]).
//! Does not own: the exchange itself (the session's [`crate::coap::Endpoint`] retransmits,
//! applies NSTART and reassembles Block2), tokens or MIDs (the serve loop draws them).
//!
//! # Getting one
//!
//! * On a session accepted by a listener: the handler's
//!   [`Handler::handle_on_link`](crate::runtime::Handler::handle_on_link) is given the link
//!   of the session each request came on (keep a clone to use it later).
//! * On a session we dialed: [`PeerLink::new`] gives the link and its [`LinkInbox`]; pass the
//!   inbox to [`serve_session_linked`](crate::runtime::session::serve_session_linked), or
//!   let [`spawn_session`](crate::runtime::session::spawn_session) do both.
//!
//! A link outlives its session harmlessly: once the serve loop has ended,
//! [`is_closed`](PeerLink::is_closed) is true and every request fails with
//! [`LinkError::Closed`].

use tokio::sync::{mpsc, oneshot};

use crate::coap::{ClientError, Packet};

/// Requests that may wait in a link's channel for the serve loop to take them; one more is
/// refused with [`LinkError::Busy`]. (The endpoint's NSTART queue is behind it.)
pub const LINK_CAPACITY: usize = 16;

/// Why a request over a [`PeerLink`] did not get a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The session has ended (or ended before answering); open or wait for a new one.
    #[error("the peer session has ended")]
    Closed,
    /// Too many requests already wait for this peer (the link's channel or the endpoint's
    /// NSTART queue is full); nothing was sent.
    #[error("too many requests waiting for this peer")]
    Busy,
    /// The exchange failed: timed out, reset by the peer, response too large or malformed.
    #[error(transparent)]
    Coap(ClientError),
}

impl From<ClientError> for LinkError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Busy => LinkError::Busy,
            other => LinkError::Coap(other),
        }
    }
}

/// One request handed to the serve loop, with where its outcome goes.
pub(crate) type LinkRequest = (Packet, oneshot::Sender<Result<Packet, LinkError>>);

/// A handle for sending requests to the peer of one session (see the module doc). Clones
/// share the session.
#[derive(Debug, Clone)]
pub struct PeerLink {
    tx: mpsc::Sender<LinkRequest>,
}

/// The serve loop's end of a [`PeerLink`]: give it to
/// [`serve_session_linked`](crate::runtime::session::serve_session_linked).
#[derive(Debug)]
pub struct LinkInbox {
    pub(crate) rx: mpsc::Receiver<LinkRequest>,
    pub(crate) link: PeerLink,
}

impl PeerLink {
    /// A link and its inbox, with room for `capacity` waiting requests (at least 1; the
    /// runtime uses [`LINK_CAPACITY`]).
    pub fn new(capacity: usize) -> (PeerLink, LinkInbox) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let link = PeerLink { tx };
        let inbox = LinkInbox {
            rx,
            link: link.clone(),
        };
        (link, inbox)
    }

    /// A link to nowhere: every request fails with [`LinkError::Closed`] (what handlers on
    /// transports without a link yet, e.g. TCP, are given).
    pub fn closed() -> PeerLink {
        PeerLink::new(1).0
    }

    /// Sends `request` (code, options, payload; CON unless its type says NON) to the peer
    /// over the session and waits for the complete response, Block2 reassembled.
    ///
    /// Cancellation-safe: dropping the future only drops the wait; the session may still
    /// finish the exchange (the peer sees an ordinary request). Retransmission and its
    /// give-up time follow the session's tuning; add an overall deadline as needed.
    pub async fn request(&self, request: Packet) -> Result<Packet, LinkError> {
        let (reply, answer) = oneshot::channel();
        self.tx.try_send((request, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => LinkError::Busy,
            mpsc::error::TrySendError::Closed(_) => LinkError::Closed,
        })?;
        answer.await.unwrap_or(Err(LinkError::Closed))
    }

    /// How many handles to this session exist (this one included): the serve loop keeps an
    /// idle session open while anyone besides itself holds one (a registration does).
    pub fn holders(&self) -> usize {
        self.tx.strong_count()
    }

    /// Whether `other` is a handle to the same session.
    pub fn same_session(&self, other: &PeerLink) -> bool {
        self.tx.same_channel(&other.tx)
    }

    /// The session's serve loop has ended: requests fail with [`LinkError::Closed`].
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl LinkInbox {
    /// The link this inbox serves.
    pub fn link(&self) -> &PeerLink {
        &self.link
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_link_fails_closed_and_a_full_one_busy() {
        let link = PeerLink::closed();
        assert!(link.is_closed());
        assert_eq!(link.request(Packet::new()).await, Err(LinkError::Closed));

        let (link, inbox) = PeerLink::new(1);
        assert!(!link.is_closed());
        let waiting = link.clone();
        let first = tokio::spawn(async move { waiting.request(Packet::new()).await });
        tokio::task::yield_now().await;
        while inbox.rx.is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(link.request(Packet::new()).await, Err(LinkError::Busy));
        drop(inbox);
        assert_eq!(first.await.unwrap(), Err(LinkError::Closed));
        assert!(link.is_closed());
    }

    #[test]
    fn busy_client_error_maps_to_busy() {
        assert_eq!(LinkError::from(ClientError::Busy), LinkError::Busy);
        assert_eq!(
            LinkError::from(ClientError::Reset),
            LinkError::Coap(ClientError::Reset)
        );
    }
}
