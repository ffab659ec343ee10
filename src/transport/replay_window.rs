//! The DTLS anti-replay window (RFC 6347 §4.1.2.6): which record sequence numbers of the
//! current epoch were already accepted. Sans-IO.
//!
//! A record is checked before it is decrypted (cheap rejection of duplicates and of records
//! older than the window) and marked only after it authenticated, so a forged record cannot
//! move the window.

/// Records this far behind the newest one are still accepted once.
const WIDTH: u64 = 64;

/// A 64-record sliding window.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// The highest sequence number accepted, if any.
    top: Option<u64>,
    /// Bit `i` set = `top - i` was accepted.
    seen: u64,
}

impl ReplayWindow {
    /// Whether `seq` is new: above the window, or inside it and not yet accepted.
    pub fn is_fresh(&self, seq: u64) -> bool {
        let Some(top) = self.top else {
            return true;
        };
        if seq > top {
            return true;
        }
        let behind = top - seq;
        behind < WIDTH && self.seen & (1 << behind) == 0
    }

    /// Records that `seq` authenticated and was accepted.
    pub fn accept(&mut self, seq: u64) {
        match self.top {
            Some(top) if seq <= top => {
                let behind = top - seq;
                if behind < WIDTH {
                    self.seen |= 1 << behind;
                }
            }
            Some(top) => {
                let ahead = seq - top;
                self.seen = if ahead < WIDTH {
                    (self.seen << ahead) | 1
                } else {
                    1
                };
                self.top = Some(seq);
            }
            None => {
                self.top = Some(seq);
                self.seen = 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_number_is_accepted_once() {
        let mut w = ReplayWindow::default();
        assert!(w.is_fresh(5));
        w.accept(5);
        assert!(!w.is_fresh(5));
        assert!(w.is_fresh(6));
    }

    #[test]
    fn reordered_records_inside_the_window_are_accepted_once_each() {
        let mut w = ReplayWindow::default();
        w.accept(100);
        for seq in [99, 37, 98] {
            assert!(w.is_fresh(seq), "{seq}");
            w.accept(seq);
            assert!(!w.is_fresh(seq), "{seq}");
        }
        assert!(w.is_fresh(97));
    }

    #[test]
    fn records_older_than_the_window_are_refused() {
        let mut w = ReplayWindow::default();
        w.accept(200);
        assert!(!w.is_fresh(200 - 64));
        assert!(w.is_fresh(200 - 63));
    }

    #[test]
    fn a_jump_ahead_slides_the_window() {
        let mut w = ReplayWindow::default();
        w.accept(1);
        w.accept(3);
        assert!(w.is_fresh(2));
        assert!(!w.is_fresh(1));
        w.accept(1_000);
        assert!(!w.is_fresh(3));
        assert!(w.is_fresh(999));
        w.accept(1_010);
        assert!(w.is_fresh(999));
        assert!(!w.is_fresh(1_000));
    }

    #[test]
    fn the_last_sequence_number_of_an_epoch_does_not_overflow() {
        let mut w = ReplayWindow::default();
        let last = (1u64 << 48) - 1;
        w.accept(last);
        assert!(!w.is_fresh(last));
        assert!(w.is_fresh(last - 1));
    }
}
