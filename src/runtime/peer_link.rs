//! [`PeerLink`]: a cheap, cloneable handle for sending *our* requests to the peer of one
//! session, over that very session (same socket and DTLS session, or same TCP/TLS
//! connection) — how the gateway, as LwM2M server, reads a device that registered with it,
//! and how a device that dialed the gateway registers while serving it on the same socket.
//!
//! Owns: the bounded request channel into one session's serve loop
//! ([`crate::runtime::session`]) and the typed outcome ([`LinkError`]).
//! Does not own: the exchange itself (the session's [`crate::coap::Endpoint`] or
//! [`crate::coap::StreamEndpoint`] retransmits where needed, applies NSTART and reassembles
//! Block2), tokens or MIDs (the serve loop draws them).
//!
//! # Getting one
//!
//! * On a session accepted by a listener: the handler's
//!   [`Handler::handle_on_link`](crate::runtime::Handler::handle_on_link) is given the link
//!   of the session each request came on (keep a clone to use it later).
//! * On a session we dialed: [`PeerLink::new`] gives the link and its [`LinkInbox`]; pass the
//!   inbox to [`serve_session_linked`](crate::runtime::session::serve_session_linked) (or
//!   [`serve_stream_linked`](crate::runtime::stream_session::serve_stream_linked) for a
//!   TCP/TLS connection), or let [`spawn_session`](crate::runtime::session::spawn_session)
//!   do both.
//!
//! On TCP/TLS we serve Observe but do not observe: [`PeerLink::observe`] fails at once with
//! `LinkError::Coap(ClientError::ObserveUnsupported)`, while an [`ObserverHandle`] notifies
//! the peer's observation as on datagrams (RFC 8323 §7: one frame per notification).
//!
//! # Observe (RFC 7641)
//!
//! * Client role: [`PeerLink::observe`] registers with a GET carrying Observe = 0 and gives
//!   an [`Observation`]: the first response, then the fresh notifications in §3.4 order.
//!   Dropping it (or [`Observation::cancel`]) cancels with a GET carrying Observe = 1.
//! * Server role: a handler answering a GET with Observe = 0 takes an [`ObserverHandle`]
//!   from its link ([`PeerLink::observer`]) and answers 2.xx with an Observe option (any
//!   value: the session sets the sequence numbers); the handle then sends notifications
//!   until the peer goes away ([`ObserverError::NotObserved`]). The handle keeps the link
//!   held, so the session stays open while it is kept.
//!
//! A link outlives its session harmlessly: once the serve loop has ended,
//! [`is_closed`](PeerLink::is_closed) is true and every request fails with
//! [`LinkError::Closed`].

use tokio::sync::{mpsc, oneshot};

use crate::coap::{ClientError, CoapError, NotifyError, ObservationId, Packet};

/// Notifications that may wait in an [`Observation`] for its owner; more are dropped (with
/// a warning) until the owner catches up.
pub const OBSERVATION_CAPACITY: usize = 16;

/// Requests that may wait in a link's channel for the serve loop to take them; more callers
/// wait for room. (The endpoint's NSTART queue is behind it; the serve loop takes from the
/// channel only while that queue has room.)
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
            ClientError::ConnectionClosed => LinkError::Closed,
            other => LinkError::Coap(other),
        }
    }
}

/// Why a notification through an [`ObserverHandle`] was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ObserverError {
    /// The session has ended.
    #[error("the peer session has ended")]
    Closed,
    /// The peer does not (or no longer) observe with this token: never registered, refused
    /// for the observer cap, reset a notification, did not ACK one, or deregistered.
    #[error("the peer does not observe this resource")]
    NotObserved,
    /// The notification cannot be sent (not a response code, too large for one message).
    #[error(transparent)]
    Coap(CoapError),
}

impl From<NotifyError> for ObserverError {
    fn from(e: NotifyError) -> Self {
        match e {
            NotifyError::Coap(e) => ObserverError::Coap(e),
            _ => ObserverError::NotObserved,
        }
    }
}

/// The first response of an observation and its id, or why there is none.
pub(crate) type ObserveReply = oneshot::Sender<Result<(ObservationId, Packet), LinkError>>;

/// A request's outcome with the tag its caller gave it ([`PeerLink::try_request_tagged`]).
pub type Tagged = (usize, Result<Packet, LinkError>);

/// Where the outcome of one of our requests goes.
#[derive(Debug)]
pub(crate) enum Reply {
    /// To the one caller waiting for it ([`PeerLink::request`]).
    Caller(oneshot::Sender<Result<Packet, LinkError>>),
    /// Into a queue shared by many requests ([`PeerLink::try_request_tagged`]).
    Tagged(TaggedReply),
}

impl Reply {
    /// The caller no longer waits: a tagged queue's receiver is gone.
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Reply::Caller(tx) => tx.is_closed(),
            Reply::Tagged(t) => t.to.is_closed(),
        }
    }

    pub(crate) fn send(self, outcome: Result<Packet, LinkError>) {
        match self {
            Reply::Caller(tx) => {
                let _ = tx.send(outcome);
            }
            Reply::Tagged(mut t) => t.send(outcome),
        }
    }
}

/// A tagged reply that answers [`LinkError::Closed`] if it is dropped unsent (its command
/// still queued when the session ended, or the session's waits cleared), as a dropped
/// oneshot does for [`PeerLink::request`]: a caller with many requests in one queue learns
/// of each, rather than waiting for its deadline.
#[derive(Debug)]
pub(crate) struct TaggedReply {
    to: mpsc::UnboundedSender<Tagged>,
    tag: usize,
    sent: bool,
}

impl TaggedReply {
    fn send(&mut self, outcome: Result<Packet, LinkError>) {
        self.sent = true;
        let _ = self.to.send((self.tag, outcome));
    }
}

impl Drop for TaggedReply {
    fn drop(&mut self) {
        if !self.sent {
            self.send(Err(LinkError::Closed));
        }
    }
}

/// What a link asks of the serve loop. It travels boxed: a tokio channel allocates a 32-slot
/// block when it is made, and every session has a link (unboxed, 32 × 120 bytes: 3.8 KB per link).
pub(crate) enum LinkCommand {
    /// One request; its outcome goes to `reply`.
    Request { request: Packet, reply: Reply },
    /// Start observing: the first response to `reply`, the later notifications to
    /// `notifications`.
    Observe {
        request: Packet,
        reply: ObserveReply,
        notifications: mpsc::Sender<Packet>,
    },
    /// Cancel an observation (GET with Observe = 1).
    StopObserving { id: ObservationId },
    /// Re-register an observation (GET with Observe = 0, same token).
    Reregister { id: ObservationId },
    /// Notify the peer's observation with `token`.
    Notify {
        token: Vec<u8>,
        response: Packet,
        confirmable: bool,
        reply: oneshot::Sender<Result<(), ObserverError>>,
    },
}

/// A handle for sending requests to the peer of one session (see the module doc). Clones
/// share the session.
#[derive(Debug, Clone)]
pub struct PeerLink {
    tx: mpsc::Sender<Box<LinkCommand>>,
}

/// The serve loop's end of a [`PeerLink`]: give it to
/// [`serve_session_linked`](crate::runtime::session::serve_session_linked) or
/// [`serve_stream_linked`](crate::runtime::stream_session::serve_stream_linked).
#[derive(Debug)]
pub struct LinkInbox {
    pub(crate) rx: mpsc::Receiver<Box<LinkCommand>>,
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

    /// A link to nowhere: every request fails with [`LinkError::Closed`] (what a handler
    /// called outside any serve loop is given).
    pub fn closed() -> PeerLink {
        PeerLink::new(1).0
    }

    /// Sends `request` (code, options, payload; CON unless its type says NON) to the peer
    /// over the session and waits for the complete response, Block2 reassembled.
    ///
    /// Cancellation-safe: dropping the future only drops the wait; the session may still
    /// finish the exchange (the peer sees an ordinary request). Retransmission and its
    /// give-up time follow the session's tuning; add an overall deadline as needed.
    ///
    /// A burst beyond what the session takes at once (its channel, then its NSTART queue)
    /// waits here for room, in order, rather than failing: bound the wait with the deadline.
    pub async fn request(&self, request: Packet) -> Result<Packet, LinkError> {
        let (reply, answer) = oneshot::channel();
        self.command_waiting(Box::new(LinkCommand::Request {
            request,
            reply: Reply::Caller(reply),
        }))
        .await?;
        answer.await.unwrap_or(Err(LinkError::Closed))
    }

    /// Sends `request` as [`request`](Self::request) does, if the session's channel has
    /// room now, without waiting: its outcome then arrives on `to` as `(tag, outcome)`
    /// (always exactly once: [`LinkError::Closed`] if the session ends first). `false`: no
    /// room or no session, nothing sent. How one task collects a whole group's answers
    /// without a task, a channel or a future per device.
    pub fn try_request_tagged(
        &self,
        request: Packet,
        to: &mpsc::UnboundedSender<Tagged>,
        tag: usize,
    ) -> bool {
        let reply = Reply::Tagged(TaggedReply {
            to: to.clone(),
            tag,
            sent: false,
        });
        match self
            .tx
            .try_send(Box::new(LinkCommand::Request { request, reply }))
        {
            Ok(()) => true,
            Err(refused) => {
                // Not sent: its reply must not answer Closed for a request never made.
                if let LinkCommand::Request {
                    reply: Reply::Tagged(mut t),
                    ..
                } = *refused.into_inner()
                {
                    t.sent = true;
                }
                false
            }
        }
    }

    /// Observes a resource of the peer (RFC 7641): sends `request` as a GET with Observe = 0
    /// and waits for the first response. The [`Observation`] then yields the fresh
    /// notifications in order. If the first response carries no Observe option (or is not
    /// 2.xx), the peer did not add us and the observation yields nothing more. Errors as for
    /// [`request`](Self::request).
    pub async fn observe(&self, request: Packet) -> Result<Observation, LinkError> {
        let (reply, answer) = oneshot::channel();
        let (notifications, rx) = mpsc::channel(OBSERVATION_CAPACITY);
        self.command_waiting(Box::new(LinkCommand::Observe {
            request,
            reply,
            notifications,
        }))
        .await?;
        let (id, first) = answer.await.unwrap_or(Err(LinkError::Closed))?;
        Ok(Observation {
            id,
            first,
            rx,
            link: self.tx.clone(),
        })
    }

    /// A handle for notifying the peer's observation that `request` (a GET with Observe = 0
    /// the handler is answering) registers. The registration takes effect when the handler's
    /// 2.xx answer with an Observe option goes out; notifications sent before that wait for
    /// it.
    pub fn observer(&self, request: &Packet) -> ObserverHandle {
        ObserverHandle {
            token: request.get_token().to_vec(),
            link: self.tx.clone(),
        }
    }

    /// Hands `command` to the serve loop, waiting for room in its channel. It comes boxed
    /// already, so a request's future holds a pointer while it waits, not the command.
    async fn command_waiting(&self, command: Box<LinkCommand>) -> Result<(), LinkError> {
        self.tx.send(command).await.map_err(|_| LinkError::Closed)
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

/// Our observation of a resource on the peer (client role), from [`PeerLink::observe`].
/// Dropping it cancels the observation (a GET with Observe = 1, or an RST to the next
/// notification if the session is too busy to take the cancellation).
#[derive(Debug)]
pub struct Observation {
    id: ObservationId,
    first: Packet,
    rx: mpsc::Receiver<Packet>,
    link: mpsc::Sender<Box<LinkCommand>>,
}

impl Observation {
    /// The response to the registration (the first notification, or a refusal without
    /// Observe).
    pub fn first(&self) -> &Packet {
        &self.first
    }

    /// The next fresh notification; `None` once the observation has ended (cancelled by the
    /// peer with a final response, which is the last item, re-registration failed, or the
    /// session closed).
    pub async fn next(&mut self) -> Option<Packet> {
        self.rx.recv().await
    }

    /// Re-registers (RFC 7641 §3.3.1): sends the GET with Observe = 0 again on the same
    /// token, e.g. when the last notification's Max-Age ran out; its response arrives as a
    /// notification (if fresh). Ignored while a request of the observation is in flight;
    /// [`LinkError::Busy`] or [`LinkError::Closed`] if the session cannot take it.
    pub fn reregister(&self) -> Result<(), LinkError> {
        self.link
            .try_send(Box::new(LinkCommand::Reregister { id: self.id }))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => LinkError::Busy,
                mpsc::error::TrySendError::Closed(_) => LinkError::Closed,
            })
    }

    /// Cancels the observation (the same as dropping it).
    pub fn cancel(self) {}
}

impl Drop for Observation {
    fn drop(&mut self) {
        let _ = self
            .link
            .try_send(Box::new(LinkCommand::StopObserving { id: self.id }));
    }
}

/// The server-role handle of the peer's observation of one of our resources, named by its
/// token on this session (from [`PeerLink::observer`]). Clones notify the same observation.
#[derive(Debug, Clone)]
pub struct ObserverHandle {
    token: Vec<u8>,
    link: mpsc::Sender<Box<LinkCommand>>,
}

impl ObserverHandle {
    /// The observation's token.
    pub fn token(&self) -> &[u8] {
        &self.token
    }

    /// Sends a notification: `response` carries code, options and payload (the session sets
    /// type, MID, token and Observe). NON, except a CON at least every 24 h (RFC 7641 §4.5);
    /// a non-2.xx response is the final one. Returns once it went out (not once ACKed).
    pub async fn notify(&self, response: Packet) -> Result<(), ObserverError> {
        self.send(response, false).await
    }

    /// [`notify`](Self::notify) as a CON, retransmitted until ACKed; an observer that never
    /// ACKs is removed.
    pub async fn notify_confirmable(&self, response: Packet) -> Result<(), ObserverError> {
        self.send(response, true).await
    }

    async fn send(&self, response: Packet, confirmable: bool) -> Result<(), ObserverError> {
        let (reply, answer) = oneshot::channel();
        let command = LinkCommand::Notify {
            token: self.token.clone(),
            response,
            confirmable,
            reply,
        };
        if self.link.send(Box::new(command)).await.is_err() {
            return Err(ObserverError::Closed);
        }
        answer.await.unwrap_or(Err(ObserverError::Closed))
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

    /// A tagged request answers exactly once: with its outcome when the session sends one,
    /// with `Closed` when the session drops it unanswered; one refused for lack of room
    /// answers nothing.
    #[tokio::test]
    async fn a_tagged_request_answers_once_and_a_refused_one_never() {
        let (to, mut answers) = mpsc::unbounded_channel();
        let (link, mut inbox) = PeerLink::new(2);
        assert!(link.try_request_tagged(Packet::new(), &to, 7));
        assert!(link.try_request_tagged(Packet::new(), &to, 8));
        assert!(
            !link.try_request_tagged(Packet::new(), &to, 9),
            "channel full"
        );
        let Some(first) = inbox.rx.recv().await else {
            panic!("no command")
        };
        let LinkCommand::Request { reply, .. } = *first else {
            panic!("not a request")
        };
        assert!(!reply.is_closed());
        let mut answer = Packet::new();
        answer.payload = b"acl".to_vec();
        reply.send(Ok(answer));
        assert_eq!(
            answers
                .recv()
                .await
                .map(|(tag, r)| (tag, r.map(|p| p.payload))),
            Some((7, Ok(b"acl".to_vec())))
        );
        drop(inbox); // the session ends with tag 8 still queued
        assert_eq!(answers.recv().await, Some((8, Err(LinkError::Closed))));
        drop(to);
        assert_eq!(answers.recv().await, None, "nothing for the refused tag 9");
    }

    #[tokio::test]
    async fn a_closed_link_fails_closed_and_a_full_one_waits_for_room() {
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
        let second = link.clone();
        let second = tokio::spawn(async move { second.request(Packet::new()).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !second.is_finished(),
            "a full link makes the caller wait, not fail"
        );
        drop(inbox);
        assert_eq!(first.await.unwrap(), Err(LinkError::Closed));
        assert_eq!(second.await.unwrap(), Err(LinkError::Closed));
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
