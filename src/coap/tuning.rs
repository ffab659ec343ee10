//! RFC 7252 §4.8 transmission parameters, and the times derived from them (§4.8.2).
//!
//! Owns: the numbers only. It never reads a clock and holds no state; the message layer
//! ([`super::server`], [`super::client`]) reads these values to schedule retransmissions and
//! expiry. It does not own the MID or token spaces.

use std::time::{Duration, Instant};

/// Transmission parameters of one CoAP-over-UDP (or DTLS) stack.
///
/// Build with [`TransportTuning::unreliable`] (the RFC 7252 defaults) and adjust with the
/// `with_*` methods. Derived times ([`exchange_lifetime`](Self::exchange_lifetime) etc.) are
/// computed on demand, so changing a field changes them too.
///
/// All arithmetic saturates: a nonsensical value (a NaN random factor, a huge
/// `max_retransmit`) yields very long times, never a panic.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportTuning {
    /// ACK_TIMEOUT: the initial retransmission timeout of a CON. Default 2 s.
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR: the initial timeout is drawn from
    /// `[ack_timeout, ack_timeout * ack_random_factor]`. Default 1.5; values below 1 act as 1.
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT: retransmissions of a CON before giving up. Default 4.
    pub max_retransmit: u32,
    /// NSTART: outstanding interactions per peer. Default 1. Informational here: each
    /// [`super::ClientExchange`] is one interaction, and the driver enforces NSTART.
    pub nstart: u32,
    /// DEFAULT_LEISURE (multicast responses). Default 5 s. Unused: privgw does no multicast.
    pub default_leisure: Duration,
    /// PROBING_RATE in bytes per second. Default 1. Unused by the core for now.
    pub probing_rate: u32,
    /// MAX_LATENCY: the longest a datagram is assumed to be in flight. Default 100 s.
    pub max_latency: Duration,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self::unreliable()
    }
}

impl TransportTuning {
    /// The RFC 7252 §4.8 defaults for unreliable transports (UDP, DTLS): ACK_TIMEOUT 2 s,
    /// ACK_RANDOM_FACTOR 1.5, MAX_RETRANSMIT 4, NSTART 1, DEFAULT_LEISURE 5 s,
    /// PROBING_RATE 1 B/s, MAX_LATENCY 100 s.
    pub fn unreliable() -> Self {
        Self {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            nstart: 1,
            default_leisure: Duration::from_secs(5),
            probing_rate: 1,
            max_latency: Duration::from_secs(100),
        }
    }

    /// Sets ACK_TIMEOUT (default 2 s, RFC 7252 §4.8).
    ///
    /// Shorter values make tests and the demo fast. **Danger:** on a real network, an
    /// ACK_TIMEOUT shorter than the round-trip time makes every CON be sent several times,
    /// and shrinking it violates the congestion-control assumptions of RFC 7252 §4.7. Keep the
    /// default for anything that talks to real devices.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use privgw::coap::TransportTuning;
    /// let fast = TransportTuning::unreliable().with_ack_timeout(Duration::from_millis(50));
    /// assert_eq!(fast.max_transmit_span(), Duration::from_millis(1125));
    /// ```
    pub fn with_ack_timeout(mut self, ack_timeout: Duration) -> Self {
        self.ack_timeout = ack_timeout;
        self
    }

    /// Sets NSTART, our exchanges in flight to one peer at once (default 1; 0 acts as 1).
    pub fn with_nstart(mut self, nstart: u32) -> Self {
        self.nstart = nstart.max(1);
        self
    }

    /// Sets MAX_LATENCY (default 100 s). It dominates EXCHANGE_LIFETIME, so tests that want
    /// dedup entries to expire quickly shorten it. **Danger:** a value below the real worst
    /// case lets a late duplicate CON be executed a second time.
    pub fn with_max_latency(mut self, max_latency: Duration) -> Self {
        self.max_latency = max_latency;
        self
    }

    /// Sets MAX_RETRANSMIT (default 4). Fewer retransmissions fail faster on loss.
    pub fn with_max_retransmit(mut self, max_retransmit: u32) -> Self {
        self.max_retransmit = max_retransmit;
        self
    }

    /// PROCESSING_DELAY: RFC 7252 sets it to ACK_TIMEOUT.
    pub fn processing_delay(&self) -> Duration {
        self.ack_timeout
    }

    /// `ack_timeout * ack_random_factor`, the largest initial timeout.
    fn random_factor(&self) -> f64 {
        if self.ack_random_factor.is_finite() && self.ack_random_factor >= 1.0 {
            self.ack_random_factor
        } else if self.ack_random_factor.is_nan() || self.ack_random_factor < 1.0 {
            1.0
        } else {
            f64::MAX
        }
    }

    /// ACK_TIMEOUT multiplied by `factor` and ACK_RANDOM_FACTOR, saturating.
    fn scaled(&self, factor: f64) -> Duration {
        Duration::try_from_secs_f64(self.ack_timeout.as_secs_f64() * factor * self.random_factor())
            .unwrap_or(Duration::MAX)
    }

    /// `2^n - 1` as f64, saturating at a huge value.
    fn pow2_minus_one(n: u32) -> f64 {
        2f64.powi(i32::try_from(n).unwrap_or(i32::MAX)) - 1.0
    }

    /// MAX_TRANSMIT_SPAN = ACK_TIMEOUT × (2^MAX_RETRANSMIT − 1) × ACK_RANDOM_FACTOR
    /// (45 s with the defaults): the longest time from the first to the last transmission of a CON.
    pub fn max_transmit_span(&self) -> Duration {
        self.scaled(Self::pow2_minus_one(self.max_retransmit))
    }

    /// MAX_TRANSMIT_WAIT = ACK_TIMEOUT × (2^(MAX_RETRANSMIT+1) − 1) × ACK_RANDOM_FACTOR
    /// (93 s with the defaults): the longest a sender waits for an ACK or RST.
    pub fn max_transmit_wait(&self) -> Duration {
        self.scaled(Self::pow2_minus_one(self.max_retransmit.saturating_add(1)))
    }

    /// EXCHANGE_LIFETIME = MAX_TRANSMIT_SPAN + 2 × MAX_LATENCY + PROCESSING_DELAY
    /// (247 s with the defaults): how long a MID stays in the dedup table.
    pub fn exchange_lifetime(&self) -> Duration {
        self.max_transmit_span()
            .saturating_add(self.max_latency.saturating_mul(2))
            .saturating_add(self.processing_delay())
    }

    /// NON_LIFETIME = MAX_TRANSMIT_SPAN + MAX_LATENCY (145 s with the defaults).
    pub fn non_lifetime(&self) -> Duration {
        self.max_transmit_span().saturating_add(self.max_latency)
    }

    /// The initial retransmission timeout for a CON, given `rng_fraction` in `[0, 1)`:
    /// `ack_timeout × (1 + rng_fraction × (ack_random_factor − 1))`. Out-of-range fractions
    /// are clamped.
    pub fn initial_timeout(&self, rng_fraction: f64) -> Duration {
        let f = if rng_fraction.is_finite() {
            rng_fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let factor = 1.0 + f * (self.random_factor() - 1.0);
        Duration::try_from_secs_f64(self.ack_timeout.as_secs_f64() * factor)
            .unwrap_or(Duration::MAX)
    }
}

/// `now + d`, saturating at roughly a century ahead instead of panicking on overflow (a
/// nonsensical tuning must not crash the gateway).
pub(crate) fn deadline(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(d.min(FAR))
        .or_else(|| now.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreliable_derived_times_match_rfc7252() {
        let t = TransportTuning::unreliable();
        assert_eq!(t.max_transmit_span(), Duration::from_secs(45));
        assert_eq!(t.max_transmit_wait(), Duration::from_secs(93));
        assert_eq!(t.exchange_lifetime(), Duration::from_secs(247));
        assert_eq!(t.non_lifetime(), Duration::from_secs(145));
    }

    #[test]
    fn initial_timeout_lies_between_ack_timeout_and_random_factor_bound() {
        let t = TransportTuning::unreliable();
        assert_eq!(t.initial_timeout(0.0), Duration::from_secs(2));
        assert_eq!(t.initial_timeout(0.5), Duration::from_millis(2500));
        assert!(t.initial_timeout(0.999) < Duration::from_secs(3));
        assert_eq!(t.initial_timeout(7.0), Duration::from_secs(3));
    }

    #[test]
    fn with_ack_timeout_shortens_derived_times() {
        let t = TransportTuning::unreliable().with_ack_timeout(Duration::from_millis(100));
        assert_eq!(t.max_transmit_span(), Duration::from_millis(2250));
        let t = t.with_max_latency(Duration::from_millis(10));
        assert_eq!(
            t.exchange_lifetime(),
            Duration::from_millis(2250 + 20 + 100)
        );
    }

    #[test]
    fn nonsense_parameters_saturate_instead_of_panicking() {
        let mut t = TransportTuning::unreliable();
        t.ack_random_factor = f64::NAN;
        t.max_retransmit = u32::MAX;
        t.ack_timeout = Duration::MAX;
        assert_eq!(t.exchange_lifetime(), Duration::MAX);
        assert_eq!(t.initial_timeout(f64::NAN), Duration::MAX);
        let t0 = Instant::now();
        assert!(deadline(t0, Duration::MAX) > t0 + Duration::from_secs(1 << 30));
    }
}
