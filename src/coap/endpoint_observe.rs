//! Observe (RFC 7641) on the [`Endpoint`], both roles: the application commands
//! ([`start_observe`](Endpoint::start_observe), [`reregister`](Endpoint::reregister),
//! [`cancel_observation`](Endpoint::cancel_observation),
//! [`forget_observation`](Endpoint::forget_observation), [`notify`](Endpoint::notify)) and
//! the hooks the endpoint's routing calls. The state lives in [`super::super::observe`].
//!
//! # Client role
//!
//! An observation is a GET with Observe = 0 run as an ordinary request of ours (NSTART, MIDs,
//! retransmission). Its response is the first [`EndpointEvent::Notification`]; a CON or NON
//! response that matches no exchange but the token of an observation is a notification:
//! CON ones are ACKed (and re-ACKed when retransmitted, without a second event), and only
//! the newer ones by the §3.4 rule are delivered. A 2.xx without Observe or a non-2.xx ends
//! the observation ([`ObserveEnd::Final`]). A forgotten observation's next CON notification
//! gets the RST of any unknown CON response; a NON one is ignored.
//!
//! # Server role
//!
//! A GET with Observe = 0 is noted while in the handler; if the answer is a 2.xx carrying
//! Observe, the peer becomes an observer of that token (its Observe value is ours to set:
//! the observer's sequence number). With the table full the answer goes out without
//! Observe, which RFC 7641 §3.2 reads as "not added". A GET on the token without Observe or
//! with Observe = 1 removes the observer, and so does an RST to a notification, a CON
//! notification never ACKed, or a non-2.xx notification.

use std::time::Instant;

use super::super::observe::{
    ConInFlight, DEREGISTER, NotifyError, Purpose, REGISTER, is_success, observe_value, set_observe,
};
use super::*;
use crate::coap::{CoapOption, MessageClass, RequestType, encode, without_option};

impl Endpoint {
    /// Sets how many of the peer's observations of our resources this session keeps
    /// (default [`DEFAULT_MAX_OBSERVERS`]); a registration beyond it is answered without
    /// Observe.
    pub fn with_max_observers(mut self, cap: usize) -> Self {
        self.observers.set_cap(cap);
        self
    }

    /// Our observations of the peer's resources still running.
    pub fn observations(&self) -> usize {
        self.observations.len()
    }

    /// The peer's observations of our resources.
    pub fn observers(&self) -> usize {
        self.observers.len()
    }

    /// Whether the peer observes one of our resources with `token`.
    pub fn is_observed(&self, token: &[u8]) -> bool {
        self.observers.contains(token)
    }

    /// Whether a GET with Observe = 0 on `token` is in the handler (a notification for it
    /// can follow once answered).
    pub fn is_registering(&self, token: &[u8]) -> bool {
        self.registering.values().any(|t| t == token)
    }

    /// Starts observing: `request` is a GET (Observe is set to 0 here), `token` at most 8
    /// bytes and unique on the session, `rng_fraction` as for
    /// [`start_request`](Self::start_request). Events with the returned id follow: a
    /// [`EndpointEvent::Notification`] per fresh notification (the first is the response),
    /// and one [`EndpointEvent::ObservationEnded`] at the end.
    pub fn start_observe(
        &mut self,
        now: Instant,
        request: Packet,
        token: Vec<u8>,
        rng_fraction: f64,
    ) -> ObservationId {
        let taken = self.observations.by_token(&token).is_some();
        let id = self.observations.insert(token, request);
        if taken {
            let e = ClientError::InvalidRequest("token already observing".into());
            self.end_observation(id, ObserveEnd::Failed(e));
            return id;
        }
        self.send_for_observation(now, id, Purpose::Register, rng_fraction);
        id
    }

    /// Re-registers (RFC 7641 §3.3.1): sends the GET with Observe = 0 again, same token, e.g.
    /// when Max-Age ran out without a notification. Its response is a notification like any
    /// other. `false` if the observation is unknown or has a request in flight.
    pub fn reregister(&mut self, now: Instant, id: ObservationId, rng_fraction: f64) -> bool {
        self.command(now, id, Purpose::Register, rng_fraction)
    }

    /// Cancels proactively (RFC 7641 §3.6): a GET with Observe = 1 on the token. Fresh
    /// notifications meanwhile are ACKed but not delivered; when that exchange ends (however)
    /// comes [`ObserveEnd::Cancelled`]. `false` if the observation is unknown or has a
    /// request in flight.
    pub fn cancel_observation(
        &mut self,
        now: Instant,
        id: ObservationId,
        rng_fraction: f64,
    ) -> bool {
        self.command(now, id, Purpose::Cancel, rng_fraction)
    }

    /// Forgets an observation at once (RFC 7641 §3.6, reactive): no event follows, and the
    /// peer's next CON notification gets an RST, which removes us on its side. `false` if
    /// unknown. A request of the observation still in flight runs to its end, unreported.
    pub fn forget_observation(&mut self, id: ObservationId) -> bool {
        self.observations.remove(id).is_some()
    }

    /// Sends a notification to the peer's observation with `token` (server role): `response`
    /// carries code, options and payload (type, MID, token and Observe are set here, the
    /// sequence number one more than the last, 24-bit). NON unless `confirmable`, or 24 h
    /// passed since the last CON (RFC 7641 §4.5), or a CON is still awaiting its ACK (the
    /// new one replaces it and keeps its retransmission count). A non-2.xx response is the
    /// final one and removes the observer. It must fit one message.
    pub fn notify(
        &mut self,
        now: Instant,
        token: &[u8],
        response: Packet,
        confirmable: bool,
    ) -> Result<(), NotifyError> {
        self.observers.check_notification(token, &response)?;
        if !is_success(&response) {
            return self.notify_final(now, token, response, confirmable);
        }
        self.notify_success(now, token, response, confirmable)
    }

    /// A 2.xx notification: next sequence number, CON or NON.
    fn notify_success(
        &mut self,
        now: Instant,
        token: &[u8],
        mut response: Packet,
        confirmable: bool,
    ) -> Result<(), NotifyError> {
        let mid = self.next_mid;
        let initial = self.tuning.initial_timeout(self.rng_fraction);
        let Some(observer) = self.observers.get_mut(token) else {
            return Err(NotifyError::NotObserved);
        };
        let con = confirmable || observer.con_due(now) || observer.in_flight.is_some();
        let t = if con {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        };
        let bytes = notification_bytes(&mut response, t, mid, token, Some(observer.next_seq()))?;
        if con {
            let con = match observer.in_flight.take() {
                Some(old) => ConInFlight {
                    mid,
                    bytes: bytes.clone(),
                    ..old
                },
                None => ConInFlight {
                    mid,
                    bytes: bytes.clone(),
                    retransmits: 0,
                    timeout: initial,
                    deadline: deadline(now, initial),
                },
            };
            observer.sent_con(now, con);
        } else {
            observer.sent_non(mid);
        }
        self.next_mid = mid.wrapping_add(1);
        self.outbox.push_back(bytes);
        Ok(())
    }

    /// A non-2.xx notification: sent without Observe, the observer removed; a CON one is
    /// retransmitted like a separate response.
    fn notify_final(
        &mut self,
        now: Instant,
        token: &[u8],
        mut response: Packet,
        confirmable: bool,
    ) -> Result<(), NotifyError> {
        let mid = self.next_mid;
        let t = if confirmable {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        };
        let bytes = notification_bytes(&mut response, t, mid, token, None)?;
        self.next_mid = mid.wrapping_add(1);
        if confirmable {
            let timeout = self.tuning.initial_timeout(self.rng_fraction);
            self.separate.push(SeparateResponse {
                mid,
                bytes: bytes.clone(),
                retransmits: 0,
                timeout,
                deadline: deadline(now, timeout),
            });
        }
        self.outbox.push_back(bytes);
        self.remove_observer(token, ObserverRemoval::Ended);
        Ok(())
    }

    fn remove_observer(&mut self, token: &[u8], reason: ObserverRemoval) {
        if self.observers.remove(token) {
            tracing::debug!(?reason, "observer removed");
            self.events.push_back(EndpointEvent::ObserverRemoved {
                token: token.to_vec(),
                reason,
            });
        }
    }

    fn command(
        &mut self,
        now: Instant,
        id: ObservationId,
        purpose: Purpose,
        rng_fraction: f64,
    ) -> bool {
        match self.observations.get_mut(id) {
            Some(o) if o.pending.is_none() => {}
            _ => return false,
        }
        self.send_for_observation(now, id, purpose, rng_fraction);
        true
    }

    /// Sends the observation's GET with Observe = 0 (register) or 1 (cancel).
    fn send_for_observation(
        &mut self,
        now: Instant,
        id: ObservationId,
        purpose: Purpose,
        rng_fraction: f64,
    ) {
        let request_id = self.requests.peek_id();
        let Some(o) = self.observations.get_mut(id) else {
            return;
        };
        o.pending = Some((request_id, purpose));
        let mut request = o.request.clone();
        request.header.code = MessageClass::Request(RequestType::Get);
        let value = match purpose {
            Purpose::Register => REGISTER,
            Purpose::Cancel => DEREGISTER,
        };
        set_observe(&mut request, value);
        let token = o.token.clone();
        let started = self.start_request(now, request, token, rng_fraction);
        debug_assert_eq!(started, request_id);
    }

    fn end_observation(&mut self, id: ObservationId, reason: ObserveEnd) {
        self.observations.remove(id);
        self.events
            .push_back(EndpointEvent::ObservationEnded { id, reason });
    }

    /// Routes the outcome of request `request`: to its observation (returns `None`), or back
    /// to the caller if it belongs to none.
    pub(super) fn observation_outcome(
        &mut self,
        now: Instant,
        request: RequestId,
        result: Result<Packet, ClientError>,
    ) -> Option<Result<Packet, ClientError>> {
        let Some((id, purpose)) = self.observations.by_request(request) else {
            return Some(result);
        };
        if let Some(o) = self.observations.get_mut(id) {
            o.pending = None;
        }
        match (purpose, result) {
            (Purpose::Cancel, _) => self.end_observation(id, ObserveEnd::Cancelled),
            (Purpose::Register, Err(e)) => self.end_observation(id, ObserveEnd::Failed(e)),
            (Purpose::Register, Ok(response)) => self.deliver(now, id, response),
        }
        None
    }

    /// A response or notification of observation `id`: delivered if fresh, or the end.
    fn deliver(&mut self, now: Instant, id: ObservationId, response: Packet) {
        let seq = observe_value(&response).filter(|_| is_success(&response));
        let Some(seq) = seq else {
            self.end_observation(id, ObserveEnd::Final(response));
            return;
        };
        let Some(o) = self.observations.get_mut(id) else {
            return;
        };
        if o.freshness.accept(seq, now) {
            self.events
                .push_back(EndpointEvent::Notification { id, response });
        } else {
            tracing::debug!(seq, "stale or duplicate notification dropped");
        }
    }

    /// A CON or NON response that matched no exchange of ours: a notification if its token
    /// is an observation's (CON ones are ACKed); `false` if not.
    pub(super) fn handle_notification(
        &mut self,
        now: Instant,
        mtype: MessageType,
        mid: u16,
        packet: Packet,
    ) -> bool {
        let Some(id) = self.observations.by_token(packet.get_token()) else {
            return false;
        };
        if mtype == MessageType::Confirmable {
            self.outbox
                .push_back(empty_message(MessageType::Acknowledgement, mid));
            self.remember_acked(now, mid);
        }
        let cancelling = self
            .observations
            .get_mut(id)
            .is_some_and(|o| matches!(o.pending, Some((_, Purpose::Cancel))));
        if cancelling {
            tracing::debug!(mid, "notification while cancelling, not delivered");
            return true;
        }
        self.deliver(now, id, packet);
        true
    }

    /// An empty ACK or RST for one of our notifications: the ACK ends its retransmission,
    /// the RST removes the observer. `false` if the MID is no notification's.
    pub(super) fn observer_ack_or_rst(&mut self, mtype: MessageType, mid: u16) -> bool {
        let Some(token) = self.observers.by_mid(mid) else {
            return false;
        };
        if mtype == MessageType::Reset {
            tracing::info!(mid, "peer reset a notification");
            self.remove_observer(&token, ObserverRemoval::Reset);
        } else if let Some(o) = self.observers.get_mut(&token)
            && o.in_flight.as_ref().is_some_and(|c| c.mid == mid)
        {
            o.in_flight = None;
        }
        true
    }

    /// Notes a GET from the peer: Observe = 0 registers once answered; without Observe (or
    /// with 1) it removes an observer of that token.
    pub(super) fn observe_request(&mut self, request: &Packet, mid: u16) {
        if request.header.code != MessageClass::Request(RequestType::Get) {
            return;
        }
        let token = request.get_token().to_vec();
        if observe_value(request) == Some(REGISTER) {
            self.registering.insert(mid, token);
        } else {
            self.remove_observer(&token, ObserverRemoval::Deregistered);
        }
    }

    /// Our answer to the peer's request: for a registration, a 2.xx with Observe adds (or
    /// keeps) the observer and gets its sequence number, or loses Observe when the table is
    /// full; any other answer to a registration removes an observer of that token.
    pub(super) fn observe_response(
        &mut self,
        now: Instant,
        responder: &Responder,
        response: Packet,
    ) -> Packet {
        let Some(token) = self.registering.remove(&responder.request_mid()) else {
            return response;
        };
        let (response, removal) = self.observers.answer_registration(now, &token, response);
        if let Some(reason) = removal {
            tracing::debug!(?reason, "observer removed");
            self.events
                .push_back(EndpointEvent::ObserverRemoved { token, reason });
        }
        response
    }

    /// Retransmits due CON notifications; removes observers that never ACKed.
    pub(super) fn observers_timeout(&mut self, now: Instant) {
        let max_retransmit = self.tuning.max_retransmit;
        let gone = self
            .observers
            .handle_timeout(now, max_retransmit, &mut self.outbox);
        for token in gone {
            tracing::info!("CON notification never ACKed, observer removed");
            self.events.push_back(EndpointEvent::ObserverRemoved {
                token,
                reason: ObserverRemoval::TimedOut,
            });
        }
    }
}

/// Sets type, MID, token and Observe (`None`: removed) on a notification and encodes it.
fn notification_bytes(
    response: &mut Packet,
    t: MessageType,
    mid: u16,
    token: &[u8],
    seq: Option<u32>,
) -> Result<Vec<u8>, CoapError> {
    response.header.set_version(1);
    response.header.set_type(t);
    response.header.message_id = mid;
    response.set_token(token.to_vec());
    match seq {
        Some(seq) => set_observe(response, seq),
        None => *response = without_option(response, CoapOption::Observe.into()),
    }
    encode(response)
}
