//! Client-side Block1 slicing (RFC 7959 §2.3, §2.5): which part of a request body goes out
//! next, and how a server's 2.31 Continue moves the transfer on.
//!
//! Owns: the body, the offset of the block in flight and the block size (SZX), which only
//! ever shrinks — a 2.31 whose Block1 SZX is smaller than ours is the server's "late
//! negotiation", and the next block continues at the same byte offset with its NUM
//! recomputed at the new size (RFC 7959 §2.3: "the second request starts with a block number
//! larger than one"). Does not own: messages, MIDs, tokens or timers
//! ([`ClientExchange`](super::ClientExchange) wraps each block in a request).

use super::block::{BlockOption, MAX_SZX};

/// What a 2.31 Continue did to a [`Block1Sender`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continued {
    /// It acknowledged the block in flight: the next block is now current.
    Next,
    /// It names another block (a late duplicate of an earlier 2.31): nothing changed.
    Stale,
    /// It acknowledged the final block, which must get a final response instead.
    AfterLast,
}

/// The slicing state of one Block1 request body.
#[derive(Debug, Clone)]
pub struct Block1Sender {
    body: Vec<u8>,
    /// Start of the block in flight (always a multiple of the current block size).
    offset: usize,
    szx: u8,
}

impl Block1Sender {
    /// Slices `body` into blocks of `2^(szx + 4)` bytes (an SZX above 6 counts as 6).
    pub fn new(body: Vec<u8>, szx: u8) -> Self {
        Self {
            body,
            offset: 0,
            szx: szx.min(MAX_SZX),
        }
    }

    /// The whole body length (the Size1 of the first block).
    pub fn total(&self) -> usize {
        self.body.len()
    }

    /// The block in flight is NUM 0 (the one that carries Size1).
    pub fn is_first(&self) -> bool {
        self.offset == 0
    }

    /// The block in flight is the last one (its Block1 has M clear).
    pub fn is_last(&self) -> bool {
        self.offset.saturating_add(self.size()) >= self.body.len()
    }

    /// The Block1 option and payload of the block in flight.
    pub fn current(&self) -> (BlockOption, &[u8]) {
        let size = self.size();
        let end = self.offset.saturating_add(size).min(self.body.len());
        let num = u32::try_from(self.offset / size).unwrap_or(u32::MAX);
        let block = BlockOption {
            num,
            more: end < self.body.len(),
            szx: self.szx,
        };
        (block, &self.body[self.offset.min(end)..end])
    }

    /// Applies the Block1 option of a 2.31 Continue. Its NUM must name the block in flight
    /// (counted in our current size); a smaller SZX is adopted for the following blocks.
    pub fn continue_with(&mut self, ack: BlockOption) -> Continued {
        let (current, _) = self.current();
        if ack.num != current.num {
            return Continued::Stale;
        }
        if !current.more {
            return Continued::AfterLast;
        }
        self.offset = self.offset.saturating_add(self.size());
        if ack.szx < self.szx {
            // The offset is a multiple of the old size, hence of every smaller power of two.
            self.szx = ack.szx;
        }
        Continued::Next
    }

    fn size(&self) -> usize {
        1usize << (self.szx + 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(num: u32, more: bool, szx: u8) -> BlockOption {
        BlockOption { num, more, szx }
    }

    #[test]
    fn slices_in_order_with_more_on_all_but_the_last() {
        let body: Vec<u8> = (0..40u8).collect();
        let mut s = Block1Sender::new(body.clone(), 0); // 16-byte blocks
        assert_eq!(s.total(), 40);
        let mut got = Vec::new();
        let mut nums = Vec::new();
        loop {
            let (b, part) = s.current();
            nums.push((b.num, b.more));
            got.extend_from_slice(part);
            if !b.more {
                assert!(s.is_last());
                break;
            }
            assert_eq!(s.continue_with(block(b.num, true, 0)), Continued::Next);
        }
        assert_eq!(nums, [(0, true), (1, true), (2, false)]);
        assert_eq!(got, body);
    }

    #[test]
    fn smaller_szx_continues_at_the_same_offset_with_recomputed_num() {
        let body = vec![7u8; 300];
        let mut s = Block1Sender::new(body, 3); // 128-byte blocks
        assert!(s.is_first());
        assert_eq!(s.continue_with(block(0, true, 1)), Continued::Next); // 32-byte blocks
        let (b, part) = s.current();
        assert_eq!(b, block(4, true, 1), "128 bytes sent = 4 blocks of 32");
        assert_eq!(part.len(), 32);
        assert!(!s.is_first());
        // A larger SZX than ours is not adopted.
        assert_eq!(s.continue_with(block(4, true, 5)), Continued::Next);
        assert_eq!(s.current().0, block(5, true, 1));
    }

    #[test]
    fn stale_and_after_last_change_nothing() {
        let mut s = Block1Sender::new(vec![0; 20], 0);
        assert_eq!(s.continue_with(block(3, true, 0)), Continued::Stale);
        assert_eq!(s.continue_with(block(0, true, 0)), Continued::Next);
        assert_eq!(s.continue_with(block(0, true, 0)), Continued::Stale);
        let (b, part) = s.current();
        assert_eq!((b, part.len()), (block(1, false, 0), 4));
        assert_eq!(s.continue_with(block(1, false, 0)), Continued::AfterLast);
        assert_eq!(s.current().0, block(1, false, 0));
    }

    #[test]
    fn szx_above_six_counts_as_six() {
        let s = Block1Sender::new(vec![0; 2048], 7);
        assert_eq!(s.current().0, block(0, true, 6));
        assert_eq!(s.current().1.len(), 1024);
    }
}
