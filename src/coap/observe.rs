//! Observe (RFC 7641) state for one peer session, both roles, without the message layer:
//! the 24-bit sequence-number arithmetic and the §3.4 reorder rule, the table of *our*
//! observations of the peer's resources (client role), and the table of the peer's
//! observations of ours (server role) with the retransmission state of a CON notification.
//!
//! Owns: sequence numbers (per observer, 24-bit, wrapping), the freshness memory of each of
//! our observations, the observer cap, the "a CON at least every 24 h" clock of each observer
//! (§4.5), and the MIDs of the notifications each observer may answer with an RST.
//! Does not own: MIDs or tokens (the [`super::Endpoint`] lends its one MID space, the caller
//! picks tokens), encoding, routing datagrams, or a timer of its own (the endpoint folds the
//! retransmission deadlines of CON notifications into its one timer table). Block-wise
//! notifications are not handled: a notification must fit one message.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::tuning::deadline;
use super::{CoapOption, MessageClass, Packet, RequestId, decode_uint, encode_uint, set_single};

/// Observe sequence numbers are 24-bit (RFC 7641 §3.4, §4.4).
pub const SEQ_MODULUS: u32 = 1 << 24;
/// Half the sequence space: the §3.4 rule compares distances against 2^23.
const SEQ_HALF: u32 = 1 << 23;
/// A notification arriving this long after the last one is newer whatever its number
/// (RFC 7641 §3.4: 128 s).
pub const FRESHNESS_WINDOW: Duration = Duration::from_secs(128);
/// A server sends a notification as CON at least this often (RFC 7641 §4.5: 24 h).
pub const CON_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);
/// Default bound on the peer's observations of our resources on one session.
pub const DEFAULT_MAX_OBSERVERS: usize = 16;
/// NON notifications per observer whose RST still removes the observer.
const NON_MIDS_REMEMBERED: usize = 8;

/// Observe option value 0: register (RFC 7641 §2).
pub const REGISTER: u32 = 0;
/// Observe option value 1: deregister (RFC 7641 §2).
pub const DEREGISTER: u32 = 1;

/// RFC 7641 §3.4: whether a notification `(v2, t2)` is newer than the last one delivered,
/// `(v1, t1)`. Values are taken modulo 2^24.
pub fn is_newer(v1: u32, t1: Instant, v2: u32, t2: Instant) -> bool {
    let (v1, v2) = (v1 % SEQ_MODULUS, v2 % SEQ_MODULUS);
    (v1 < v2 && v2 - v1 < SEQ_HALF)
        || (v1 > v2 && v1 - v2 > SEQ_HALF)
        || t2 > deadline(t1, FRESHNESS_WINDOW)
}

/// The Observe option of a message, if present and at most 3 bytes.
pub fn observe_value(p: &Packet) -> Option<u32> {
    let v = p.get_first_option(CoapOption::Observe)?;
    (v.len() <= 3).then(|| decode_uint(v)).flatten()
}

/// Sets the Observe option to `value` modulo 2^24.
pub fn set_observe(p: &mut Packet, value: u32) {
    set_single(p, CoapOption::Observe, encode_uint(value % SEQ_MODULUS));
}

/// `p` without any Observe option.
pub(crate) fn without_observe(p: Packet) -> Packet {
    if p.get_option(CoapOption::Observe).is_some() {
        super::without_option(&p, CoapOption::Observe.into())
    } else {
        p
    }
}

/// A 2.xx response code.
pub(crate) fn is_success(p: &Packet) -> bool {
    matches!(p.header.code, MessageClass::Response(_)) && u8::from(p.header.code) >> 5 == 2
}

/// Names one of our observations, from [`super::Endpoint::start_observe`]; its
/// notifications come as [`super::EndpointEvent::Notification`] and its end as
/// [`super::EndpointEvent::ObservationEnded`], both with this id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObservationId(pub(crate) u64);

/// Why one of our observations ended (client role).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ObserveEnd {
    /// We cancelled it with a GET carrying Observe = 1, and that exchange finished.
    Cancelled,
    /// The peer ended it (or never started it) with this final response: a non-2.xx code,
    /// or a 2.xx without the Observe option ("not added", RFC 7641 §3.2).
    Final(Packet),
    /// The registration or re-registration request failed (timed out, reset, …).
    Failed(super::ClientError),
}

/// Why the peer's observation of one of our resources ended (server role).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ObserverRemoval {
    /// The peer answered a notification with an RST.
    Reset,
    /// A CON notification was never ACKed (MAX_RETRANSMIT retransmissions).
    TimedOut,
    /// The peer sent a GET on the token without Observe, or with Observe = 1.
    Deregistered,
    /// We notified a non-2.xx response (the final notification).
    Ended,
    /// The observer table was full: the answer went out without Observe ("not added").
    Refused,
}

/// Why [`super::Endpoint::notify`] sent nothing (our fault, or a race with a removal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// No observer with this token on the session (never registered, or removed).
    #[error("no observer with this token")]
    NotObserved,
    /// The notification cannot be sent (not a response code, too large to encode).
    #[error(transparent)]
    Coap(#[from] super::CoapError),
}

/// The §3.4 memory of one observation: the last sequence number delivered and when.
#[derive(Debug, Clone, Default)]
pub struct Freshness {
    last: Option<(u32, Instant)>,
}

impl Freshness {
    /// Whether a notification with Observe `seq` received at `now` is to be delivered; if so
    /// it becomes the last one. Older ones and duplicates are not delivered.
    pub fn accept(&mut self, seq: u32, now: Instant) -> bool {
        let newer = self.last.is_none_or(|(v1, t1)| is_newer(v1, t1, seq, now));
        if newer {
            self.last = Some((seq % SEQ_MODULUS, now));
        }
        newer
    }

    /// When the last notification was delivered.
    pub fn last_at(&self) -> Option<Instant> {
        self.last.map(|(_, t)| t)
    }
}

/// What the exchange an observation has in flight is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// GET with Observe = 0: registration or re-registration.
    Register,
    /// GET with Observe = 1.
    Cancel,
}

/// One of our observations of a resource on the peer (client role).
#[derive(Debug)]
pub(crate) struct ClientObservation {
    pub(crate) token: Vec<u8>,
    /// The GET as given (Observe is set per purpose when sent).
    pub(crate) request: Packet,
    pub(crate) freshness: Freshness,
    /// The exchange in flight for this observation, if any.
    pub(crate) pending: Option<(RequestId, Purpose)>,
}

/// Our observations by id (client role).
#[derive(Debug, Default)]
pub(crate) struct ClientObservations {
    next_id: u64,
    map: BTreeMap<ObservationId, ClientObservation>,
}

impl ClientObservations {
    pub(crate) fn insert(&mut self, token: Vec<u8>, request: Packet) -> ObservationId {
        let id = ObservationId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        let observation = ClientObservation {
            token,
            request,
            freshness: Freshness::default(),
            pending: None,
        };
        self.map.insert(id, observation);
        id
    }

    pub(crate) fn get_mut(&mut self, id: ObservationId) -> Option<&mut ClientObservation> {
        self.map.get_mut(&id)
    }

    pub(crate) fn remove(&mut self, id: ObservationId) -> Option<ClientObservation> {
        self.map.remove(&id)
    }

    pub(crate) fn by_token(&self, token: &[u8]) -> Option<ObservationId> {
        self.map
            .iter()
            .find(|(_, o)| o.token == token)
            .map(|(id, _)| *id)
    }

    pub(crate) fn by_request(&self, request: RequestId) -> Option<(ObservationId, Purpose)> {
        self.map.iter().find_map(|(id, o)| match o.pending {
            Some((r, purpose)) if r == request => Some((*id, purpose)),
            _ => None,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// A CON notification awaiting its ACK.
#[derive(Debug)]
pub(crate) struct ConInFlight {
    pub(crate) mid: u16,
    pub(crate) bytes: Vec<u8>,
    pub(crate) retransmits: u32,
    pub(crate) timeout: Duration,
    pub(crate) deadline: Instant,
}

/// The peer's observation of one of our resources (server role), named by its token.
#[derive(Debug)]
pub(crate) struct Observer {
    /// The sequence number of the last notification (or registration response).
    seq: u32,
    /// When the last CON notification went out (registration counts as one).
    last_con: Instant,
    pub(crate) in_flight: Option<ConInFlight>,
    /// MIDs of the latest NON notifications, whose RST removes the observer.
    non_mids: VecDeque<u16>,
}

impl Observer {
    /// The next sequence number (24-bit, wrapping).
    pub(crate) fn next_seq(&mut self) -> u32 {
        self.seq = (self.seq + 1) % SEQ_MODULUS;
        self.seq
    }

    /// Whether the next notification must be a CON: 24 h since the last CON (§4.5).
    pub(crate) fn con_due(&self, now: Instant) -> bool {
        now >= deadline(self.last_con, CON_INTERVAL)
    }

    pub(crate) fn sent_con(&mut self, now: Instant, con: ConInFlight) {
        self.last_con = now;
        self.in_flight = Some(con);
    }

    pub(crate) fn sent_non(&mut self, mid: u16) {
        if self.non_mids.len() >= NON_MIDS_REMEMBERED {
            self.non_mids.pop_front();
        }
        self.non_mids.push_back(mid);
    }

    fn owns_mid(&self, mid: u16) -> bool {
        self.in_flight.as_ref().is_some_and(|c| c.mid == mid) || self.non_mids.contains(&mid)
    }
}

/// The peer's observations of our resources, by token, with a cap (server role).
#[derive(Debug)]
pub(crate) struct Observers {
    cap: usize,
    map: BTreeMap<Vec<u8>, Observer>,
}

impl Observers {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            map: BTreeMap::new(),
        }
    }

    pub(crate) fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn contains(&self, token: &[u8]) -> bool {
        self.map.contains_key(token)
    }

    pub(crate) fn get_mut(&mut self, token: &[u8]) -> Option<&mut Observer> {
        self.map.get_mut(token)
    }

    /// Registers (or re-registers) `token`; returns the sequence number for the response,
    /// or `None` when the table is full (refusal).
    pub(crate) fn register(&mut self, now: Instant, token: &[u8]) -> Option<u32> {
        if let Some(o) = self.map.get_mut(token) {
            return Some(o.next_seq());
        }
        if self.map.len() >= self.cap {
            return None;
        }
        let observer = Observer {
            seq: 0,
            last_con: now,
            in_flight: None,
            non_mids: VecDeque::new(),
        };
        self.map.insert(token.to_vec(), observer);
        Some(0)
    }

    pub(crate) fn remove(&mut self, token: &[u8]) -> bool {
        self.map.remove(token).is_some()
    }

    /// Our answer to the peer's registration on `token` (a GET with Observe = 0), for both
    /// transports: a 2.xx carrying Observe adds (or keeps) the observer and gets its sequence
    /// number; with the table full it loses Observe ("not added", RFC 7641 §3.2); any other
    /// answer loses Observe and removes an observer of that token. Returns the answer to
    /// send and the removal to report, if any.
    pub(crate) fn answer_registration(
        &mut self,
        now: Instant,
        token: &[u8],
        mut response: Packet,
    ) -> (Packet, Option<ObserverRemoval>) {
        if !is_success(&response) || observe_value(&response).is_none() {
            let removed = self.remove(token).then_some(ObserverRemoval::Ended);
            return (without_observe(response), removed);
        }
        match self.register(now, token) {
            Some(seq) => {
                set_observe(&mut response, seq);
                (response, None)
            }
            None => {
                tracing::info!(cap = self.len(), "observer table full, refusing");
                (without_observe(response), Some(ObserverRemoval::Refused))
            }
        }
    }

    /// Whether `response` may go as a notification on `token`, on either transport: the
    /// peer observes with that token, and it is a response.
    pub(crate) fn check_notification(
        &self,
        token: &[u8],
        response: &Packet,
    ) -> Result<(), NotifyError> {
        if !self.contains(token) {
            return Err(NotifyError::NotObserved);
        }
        if !matches!(response.header.code, MessageClass::Response(_)) {
            let code = response.header.code.to_string();
            return Err(super::CoapError::NotAResponse(code).into());
        }
        Ok(())
    }

    /// Removes every observer; returns their tokens.
    pub(crate) fn clear(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.map).into_keys().collect()
    }

    /// The observer one of whose notifications had MID `mid`.
    pub(crate) fn by_mid(&self, mid: u16) -> Option<Vec<u8>> {
        self.map
            .iter()
            .find(|(_, o)| o.owns_mid(mid))
            .map(|(t, _)| t.clone())
    }

    /// Any CON notification awaiting its ACK.
    pub(crate) fn con_in_flight(&self) -> bool {
        self.map.values().any(|o| o.in_flight.is_some())
    }

    /// The earliest retransmission deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.map
            .values()
            .filter_map(|o| o.in_flight.as_ref().map(|c| c.deadline))
            .min()
    }

    /// Retransmits due CON notifications into `outbox`; returns the tokens of observers
    /// whose CON went unACKed MAX_RETRANSMIT times (removed from the table).
    pub(crate) fn handle_timeout(
        &mut self,
        now: Instant,
        max_retransmit: u32,
        outbox: &mut VecDeque<Vec<u8>>,
    ) -> Vec<Vec<u8>> {
        let mut gone = Vec::new();
        for (token, o) in self.map.iter_mut() {
            let Some(c) = o.in_flight.as_mut() else {
                continue;
            };
            if c.deadline > now {
                continue;
            }
            if c.retransmits >= max_retransmit {
                gone.push(token.clone());
                continue;
            }
            c.retransmits += 1;
            c.timeout = c.timeout.saturating_mul(2);
            c.deadline = deadline(now, c.timeout);
            tracing::info!(
                mid = c.mid,
                n = c.retransmits,
                "retransmitting notification"
            );
            outbox.push_back(c.bytes.clone());
        }
        for token in &gone {
            self.map.remove(token);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn larger_numbers_within_half_the_space_are_newer() {
        let t0 = Instant::now();
        assert!(is_newer(5, t0, 6, t0));
        assert!(!is_newer(6, t0, 5, t0), "older");
        assert!(!is_newer(6, t0, 6, t0), "duplicate");
        assert!(is_newer(0, t0, SEQ_HALF - 1, t0));
        assert!(
            !is_newer(0, t0, SEQ_HALF, t0),
            "exactly 2^23 apart is not newer"
        );
    }

    #[test]
    fn the_rule_wraps_around_at_2_pow_24() {
        let t0 = Instant::now();
        assert!(is_newer(SEQ_MODULUS - 1, t0, 0, t0), "0 follows 2^24 - 1");
        assert!(is_newer(SEQ_MODULUS - 10, t0, 5, t0));
        assert!(!is_newer(5, t0, SEQ_MODULUS - 10, t0));
        assert!(
            is_newer(SEQ_MODULUS - 1, t0, SEQ_MODULUS, t0),
            "values are mod 2^24"
        );
    }

    #[test]
    fn after_128_s_anything_is_newer_and_not_before() {
        let t0 = Instant::now();
        assert!(!is_newer(100, t0, 50, at(t0, 128)), "at 128 s: still older");
        assert!(is_newer(100, t0, 50, at(t0, 129)));
        assert!(is_newer(100, t0, 100, at(t0, 129)), "even the same number");
    }

    #[test]
    fn freshness_delivers_in_order_and_drops_duplicates_and_stale_ones() {
        let t0 = Instant::now();
        let mut f = Freshness::default();
        let delivered: Vec<u32> = [3, 5, 4, 5, 7, 6, 8]
            .into_iter()
            .filter(|s| f.accept(*s, t0))
            .collect();
        assert_eq!(delivered, [3, 5, 7, 8]);
        assert_eq!(f.last_at(), Some(t0));
        assert!(f.accept(2, at(t0, 200)), "stale number, but 128 s later");
    }

    #[test]
    fn observe_option_is_24_bit_and_round_trips() {
        let mut p = Packet::new();
        set_observe(&mut p, SEQ_MODULUS + 7);
        assert_eq!(observe_value(&p), Some(7));
        set_observe(&mut p, 0);
        assert_eq!(p.get_first_option(CoapOption::Observe).unwrap().len(), 0);
        assert_eq!(observe_value(&p), Some(0));
        set_single(&mut p, CoapOption::Observe, vec![1, 2, 3, 4]);
        assert_eq!(observe_value(&p), None, "4 bytes is not an Observe value");
    }

    #[test]
    fn observers_are_capped_and_sequence_numbers_wrap() {
        let t0 = Instant::now();
        let mut obs = Observers::new(2);
        assert_eq!(obs.register(t0, b"a"), Some(0));
        assert_eq!(obs.register(t0, b"b"), Some(0));
        assert_eq!(obs.register(t0, b"c"), None, "full");
        assert_eq!(
            obs.register(t0, b"a"),
            Some(1),
            "re-registration keeps counting"
        );
        let a = obs.get_mut(b"a").unwrap();
        a.seq = SEQ_MODULUS - 1;
        assert_eq!(a.next_seq(), 0);
        assert!(!a.con_due(at(t0, 3600)));
        assert!(a.con_due(t0 + CON_INTERVAL));
    }
}
