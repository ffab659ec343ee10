//! NSTART admission of our requests (RFC 7252 §4.7), shared by the datagram
//! [`Endpoint`](super::Endpoint) and the [`StreamEndpoint`](super::StreamEndpoint).
//!
//! Owns: the [`RequestId`] counter, the exchanges in flight (each a [`ClientExchange`], at
//! most NSTART of them), the bounded queue of requests waiting for a slot (a full queue
//! refuses with [`ClientError::Busy`]), withdrawing a queued request, giving up one queued or
//! in flight, handing out the next queued request when a slot is free, and collecting the
//! outcomes of the exchanges while retiring finished ones.
//! Does not own: creating exchanges (MIDs, reliable or not), when a queued request may go
//! (the stream waits for the peer's CSM), moving the exchanges' output to the wire, or
//! reporting outcomes: those stay with each endpoint. Sans-IO, no clock.

use std::collections::VecDeque;

use super::endpoint::RequestId;
use super::{ClientError, ClientEvent, ClientExchange, Packet};

/// Default bound on requests waiting for an NSTART slot.
pub const DEFAULT_QUEUE_LIMIT: usize = 32;

/// The outcome of one exchange: the response, or why not.
pub(super) type Outcome = (RequestId, Result<Packet, ClientError>);

/// Our requests: in flight (at most NSTART) and waiting, in order; `T` is what an endpoint
/// needs to launch a waiting one.
#[derive(Debug)]
pub(super) struct Nstart<T> {
    nstart: usize,
    queue_limit: usize,
    next_id: u64,
    /// Our exchanges in flight (at most `nstart`), in id order. A `Vec` sized to what is in
    /// flight and freed when empty: an emptied `BTreeMap` kept its 11-slot leaf (6.7 KB of
    /// 600-byte exchanges) for the life of every idle device session.
    active: Vec<(RequestId, ClientExchange)>,
    /// Our requests waiting for a slot, in order.
    queued: VecDeque<(RequestId, T)>,
}

impl<T> Nstart<T> {
    /// NSTART `nstart` (0 acts as 1), a queue of [`DEFAULT_QUEUE_LIMIT`].
    pub(super) fn new(nstart: usize) -> Self {
        Self {
            nstart: nstart.max(1),
            queue_limit: DEFAULT_QUEUE_LIMIT,
            next_id: 0,
            active: Vec::new(),
            queued: VecDeque::new(),
        }
    }

    /// Sets NSTART (0 acts as 1).
    pub(super) fn set_nstart(&mut self, nstart: usize) {
        self.nstart = nstart.max(1);
    }

    /// Sets how many requests may wait for a slot.
    pub(super) fn set_queue_limit(&mut self, limit: usize) {
        self.queue_limit = limit;
    }

    /// The id the next [`new_id`](Self::new_id) returns.
    pub(super) fn peek_id(&self) -> RequestId {
        RequestId(self.next_id)
    }

    /// A fresh id for a new request.
    pub(super) fn new_id(&mut self) -> RequestId {
        let id = self.peek_id();
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// Exchanges in flight.
    pub(super) fn in_flight(&self) -> usize {
        self.active.len()
    }

    /// Requests waiting for a slot.
    pub(super) fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Nothing in flight or waiting.
    pub(super) fn is_empty(&self) -> bool {
        self.active.is_empty() && self.queued.is_empty()
    }

    /// Another request may be queued (or launched) without [`ClientError::Busy`].
    pub(super) fn has_room(&self) -> bool {
        self.queued.len() < self.queue_limit
    }

    /// A slot is free and nobody waits for it: a new request may go at once.
    pub(super) fn may_launch_now(&self) -> bool {
        self.active.len() < self.nstart && self.queued.is_empty()
    }

    /// Queues a request; [`ClientError::Busy`] (nothing queued) if the queue is full.
    pub(super) fn enqueue(&mut self, id: RequestId, item: T) -> Result<(), ClientError> {
        if self.queued.len() >= self.queue_limit {
            tracing::info!(queued = self.queued.len(), "request queue full, refusing");
            return Err(ClientError::Busy);
        }
        self.queued.push_back((id, item));
        Ok(())
    }

    /// The next waiting request, if a slot is free for it.
    pub(super) fn next_to_launch(&mut self) -> Option<(RequestId, T)> {
        if self.active.len() < self.nstart {
            self.queued.pop_front()
        } else {
            None
        }
    }

    /// Puts a launched exchange in flight.
    pub(super) fn insert(&mut self, id: RequestId, exchange: ClientExchange) {
        if self.active.capacity() == 0 {
            // One at a time is the common case (NSTART 1): no room for four.
            self.active.reserve_exact(1);
        }
        let at = self.active.partition_point(|(other, _)| *other < id);
        self.active.insert(at, (id, exchange));
    }

    /// Takes an exchange out of flight; `false` if it was not in flight.
    fn retire(&mut self, id: RequestId) -> bool {
        let Some(at) = self.active.iter().position(|(other, _)| *other == id) else {
            return false;
        };
        self.active.remove(at);
        self.free_if_idle();
        true
    }

    fn free_if_idle(&mut self) {
        if self.active.is_empty() {
            self.active = Vec::new();
        }
    }

    /// Withdraws a waiting request; `false` if it is not waiting.
    pub(super) fn cancel(&mut self, id: RequestId) -> bool {
        let before = self.queued.len();
        self.queued.retain(|(q, _)| *q != id);
        self.queued.len() != before
    }

    /// Drops a request, waiting or in flight; `false` if it is unknown.
    pub(super) fn give_up(&mut self, id: RequestId) -> bool {
        self.cancel(id) || self.retire(id)
    }

    /// Drops everything; the ids of those in flight, then of those waiting.
    pub(super) fn clear(&mut self) -> Vec<RequestId> {
        let ids = self
            .active
            .iter()
            .map(|(id, _)| *id)
            .chain(self.queued.iter().map(|(id, _)| *id))
            .collect();
        self.active = Vec::new();
        self.queued.clear();
        ids
    }

    /// An exchange in flight uses `token`.
    pub(super) fn token_in_use(&self, token: &[u8]) -> bool {
        self.active.iter().any(|(_, e)| e.token() == token)
    }

    /// The unfinished exchange in flight with `token`.
    pub(super) fn live_by_token(&self, token: &[u8]) -> Option<RequestId> {
        self.active
            .iter()
            .find(|(_, e)| !e.is_done() && e.token() == token)
            .map(|(id, _)| *id)
    }

    /// The exchanges in flight.
    pub(super) fn active(&self) -> impl Iterator<Item = (&RequestId, &ClientExchange)> {
        self.active.iter().map(|(id, exchange)| (id, exchange))
    }

    /// The exchanges in flight, to feed or time out.
    pub(super) fn active_mut(&mut self) -> impl Iterator<Item = &mut ClientExchange> {
        self.active.iter_mut().map(|(_, exchange)| exchange)
    }

    /// One exchange in flight.
    pub(super) fn get_mut(&mut self, id: RequestId) -> Option<&mut ClientExchange> {
        self.active
            .iter_mut()
            .find(|(other, _)| *other == id)
            .map(|(_, exchange)| exchange)
    }

    /// Lets `send` move each exchange's output out (a failure it returns ends that exchange),
    /// then takes each exchange's outcome and retires the finished ones. At most one outcome
    /// per exchange, in id order: a send failure wins over the exchange's own event.
    pub(super) fn collect(
        &mut self,
        mut send: impl FnMut(&mut ClientExchange) -> Option<ClientError>,
    ) -> Vec<Outcome> {
        let mut finished = Vec::new();
        let mut outcomes = Vec::new();
        for (id, exchange) in self.active.iter_mut() {
            let failure = send(exchange);
            let event = exchange.poll_event();
            if let Some(failure) = failure {
                outcomes.push((*id, Err(failure)));
                finished.push(*id);
            } else if let Some(event) = event {
                let result = match event {
                    ClientEvent::Response(p) => Ok(p),
                    ClientEvent::Failed(e) => Err(e),
                };
                outcomes.push((*id, result));
            }
            if exchange.is_done() {
                finished.push(*id);
            }
        }
        if !finished.is_empty() {
            self.active.retain(|(id, _)| !finished.contains(id));
            self.free_if_idle();
        }
        outcomes
    }
}
