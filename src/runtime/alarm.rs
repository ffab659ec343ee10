//! The serve loop's one timer: a single tokio `Sleep`, moved when the deadline changes.
//!
//! A new `sleep_until` per loop turn registered a timer-wheel entry and removed it again at
//! every datagram, command and response (with the shutdown watch re-armed alongside, ~5 % of
//! a busy gateway's CPU). The alarm is reset only to a new deadline. With no deadline it
//! keeps one still ahead (a stale deadline costs one spurious, harmless check of the timers)
//! and otherwise wakes after the fallback period.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep, sleep_until};

/// One re-armable deadline.
#[derive(Debug)]
pub struct Alarm {
    sleep: Pin<Box<Sleep>>,
}

impl Alarm {
    /// An alarm at `at`.
    pub fn new(at: Instant) -> Self {
        Alarm {
            sleep: Box::pin(sleep_until(at)),
        }
    }

    /// Sets the alarm to `wake`; without one, to `now + fallback` unless it is already set
    /// ahead of `now`.
    pub fn set(&mut self, wake: Option<Instant>, now: Instant, fallback: Duration) {
        let current = self.sleep.deadline();
        let target = match wake {
            Some(at) => at,
            None if current > now => return,
            None => now + fallback,
        };
        if target != current {
            self.sleep.as_mut().reset(target);
        }
    }

    /// The current deadline.
    #[cfg(test)]
    pub fn deadline(&self) -> Instant {
        self.sleep.deadline()
    }

    /// Resolves at the deadline (at once if it has passed, until the alarm is set again).
    pub async fn rung(&mut self) {
        self.sleep.as_mut().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FALLBACK: Duration = Duration::from_secs(300);

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moves_the_alarm_and_rings_it() {
        let now = Instant::now();
        let mut alarm = Alarm::new(now + FALLBACK);
        alarm.set(Some(now + Duration::from_millis(50)), now, FALLBACK);
        assert_eq!(alarm.deadline(), now + Duration::from_millis(50));
        alarm.rung().await;
        assert_eq!(Instant::now(), now + Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_deadline_a_pending_one_is_kept_and_a_passed_one_falls_back() {
        let now = Instant::now();
        let mut alarm = Alarm::new(now + Duration::from_secs(2));
        alarm.set(None, now, FALLBACK);
        assert_eq!(alarm.deadline(), now + Duration::from_secs(2));
        alarm.rung().await;
        let later = Instant::now();
        alarm.set(None, later, FALLBACK);
        assert_eq!(alarm.deadline(), later + FALLBACK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rung_alarm_rings_again_until_it_is_set() {
        let now = Instant::now();
        let mut alarm = Alarm::new(now);
        alarm.rung().await;
        tokio::time::timeout(Duration::from_millis(1), alarm.rung())
            .await
            .expect("still ringing");
    }
}
