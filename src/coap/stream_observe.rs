//! Observe (RFC 7641) on the [`StreamEndpoint`], server role only, as RFC 8323 §7 adapts it
//! to a reliable connection: the peer observes one of our resources over TCP/TLS, and the
//! gateway relays a device's notifications to it.
//!
//! Owns: noting the peer's registrations while they are in the handler, turning the answer
//! into an observer (the shared [`Observers`](super::observe) table and its cap, the same as
//! on datagrams), [`notify`](StreamEndpoint::notify), and the ways an observer ends.
//! Does not own: framing (the [`StreamConnection`](super::StreamConnection)), or the client
//! role (the runtime refuses our own observations over a stream link).
//!
//! # On a reliable connection
//!
//! * A notification is one frame with the observer's token and an increasing 24-bit Observe
//!   value (§7.1 allows either that or 0; ordering comes from the stream). There are no CON,
//!   NON, ACK or RST (§7.2): `confirmable` is ignored, and an observer cannot be reset.
//! * A GET on the token without Observe, or with Observe = 1, removes the observer; so does a
//!   non-2.xx notification (the final one, sent without Observe), and the connection's end
//!   (every observer goes at once: later notifications fail [`NotifyError::NotObserved`]).

use std::time::Instant;

use super::observe::{REGISTER, is_success, observe_value, set_observe, without_observe};
use super::{
    EndpointEvent, MessageClass, NotifyError, ObserverRemoval, Packet, RequestType, Responder,
    StreamEndpoint,
};

impl StreamEndpoint {
    /// Whether the peer observes one of our resources with `token`.
    pub fn is_observed(&self, token: &[u8]) -> bool {
        self.observers.contains(token)
    }

    /// Whether a GET with Observe = 0 on `token` is in the handler (a notification for it
    /// can follow once answered).
    pub fn is_registering(&self, token: &[u8]) -> bool {
        self.registering.contains(token)
    }

    /// The peer's observations of our resources.
    pub fn observers(&self) -> usize {
        self.observers.len()
    }

    /// Sends a notification to the peer's observation with `token`: `response` carries code,
    /// options and payload (token and Observe are set here, the sequence number one more
    /// than the last). A non-2.xx response is the final one, goes without Observe and
    /// removes the observer. It must fit the peer's Max-Message-Size.
    pub fn notify(
        &mut self,
        now: Instant,
        token: &[u8],
        mut response: Packet,
        confirmable: bool,
    ) -> Result<(), NotifyError> {
        let _ = (now, confirmable);
        if self.conn.is_closed() {
            return Err(NotifyError::NotObserved);
        }
        self.observers.check_notification(token, &response)?;
        response.set_token(token.to_vec());
        if is_success(&response) {
            let seq = self.observers.get_mut(token).map_or(0, |o| o.next_seq());
            set_observe(&mut response, seq);
            return Ok(self.conn.send(&response)?);
        }
        let sent = self.conn.send(&without_observe(response));
        self.remove_observer(token, ObserverRemoval::Ended);
        Ok(sent?)
    }

    /// Notes a request from the peer: a GET with Observe = 0 registers once answered; any
    /// other GET on the token removes its observer.
    pub(super) fn observe_request(&mut self, request: &Packet) {
        if request.header.code != MessageClass::Request(RequestType::Get) {
            return;
        }
        let token = request.get_token();
        if observe_value(request) == Some(REGISTER) {
            self.registering.insert(token.to_vec());
        } else {
            self.remove_observer(token, ObserverRemoval::Deregistered);
        }
    }

    /// Our answer to the peer's request: a registration's per the shared rule
    /// ([`Observers::answer_registration`](super::observe)), any other answer without Observe.
    pub(super) fn observe_response(
        &mut self,
        now: Instant,
        responder: &Responder,
        response: Packet,
    ) -> Packet {
        let token = responder.token();
        if !self.registering.remove(token) {
            return without_observe(response);
        }
        let (response, removal) = self.observers.answer_registration(now, token, response);
        if let Some(reason) = removal {
            self.observer_event(token.to_vec(), reason);
        }
        response
    }

    /// The handler of a registration gave up: it is no longer pending.
    pub(super) fn observe_abandoned(&mut self, responder: &Responder) {
        self.registering.remove(responder.token());
    }

    /// The connection ended: every observer goes, each reported once.
    pub(super) fn observers_closed(&mut self) {
        self.registering.clear();
        for token in self.observers.clear() {
            self.observer_event(token, ObserverRemoval::Ended);
        }
    }

    fn remove_observer(&mut self, token: &[u8], reason: ObserverRemoval) {
        if self.observers.remove(token) {
            self.observer_event(token.to_vec(), reason);
        }
    }

    fn observer_event(&mut self, token: Vec<u8>, reason: ObserverRemoval) {
        tracing::debug!(?reason, "observer removed");
        self.events
            .push_back(EndpointEvent::ObserverRemoved { token, reason });
    }
}
