//! Block-wise transfer (RFC 7959), server side of Block2: the [`BlockOption`] value codec and
//! the [`Block2Cache`] that slices large response bodies and serves follow-up blocks without
//! re-running the handler.
//!
//! Owns: the Block2 body cache of one peer session, keyed by a caller-supplied cache key.
//! Does not own: MIDs, types or tokens (the message layer, [`super::server`], sets those on
//! whatever this module returns), nor Block1 (the pipeline answers it 4.02 unless the
//! handler reassembles it: only the LwM2M registration listeners do, `registry::block1`).
//!
//! # Key
//!
//! One cache lives per peer session, like [`super::ServerExchanges`], so the key need not
//! contain the peer identity. It must identify the *resource representation*: request code,
//! Uri-Path, Uri-Query, Accept and a payload hash, but not Block2/Size2/Observe.
//! [`cache_key`] builds such a key.
//!
//! # Out-of-range block numbers
//!
//! A request for a block that starts at or past the end of the body is answered with
//! **4.02 Bad Option** (the request's Block2 option cannot be satisfied), and the body stays
//! cached. RFC 7959 leaves the code open; 4.02 is what libcoap and aiocoap send.
//!
//! # Memory
//!
//! The cache is bounded in bodies and bytes per session and, through a shared
//! [`super::budget::SharedBudget`], across all sessions ([`Block2Cache::with_account`]). To
//! make room the oldest bodies (by expiry) of this session go first; a body larger than the
//! session's byte budget, or one that finds the shared budget full with nothing of this
//! session left to evict, is sent (block 0) but not kept. A follow-up for a body that is not
//! (or no longer) cached misses [`Block2Cache::lookup`]: the request is executed again and
//! the requested block is cut from the fresh representation (RFC 7959 §2.4: the server may
//! re-generate it; the ETag lets the client notice if it changed and start over) — but only
//! for GET and FETCH, which are safe to repeat. A follow-up of any other method (the answer
//! to a POST, PUT or DELETE that went block-wise) whose body is gone is answered
//! **4.08 Request Entity Incomplete** by [`follow_up_miss`], never executed again: repeating
//! it would repeat the write.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::budget::{Account, BudgetError, CacheLimits};
use super::tuning::deadline;
use super::{CoapOption, MessageClass, Packet, ResponseType, decode_uint, set_single};

/// The SZX of 1024-byte blocks, the largest block for CoAP over UDP.
pub const MAX_SZX: u8 = 6;

/// Errors decoding or encoding a block option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockError {
    /// The option value is longer than 3 bytes.
    #[error("block option value of {0} bytes (at most 3)")]
    TooLong(usize),
    /// SZX 7 is reserved for BERT (RFC 8323), which needs a reliable transport.
    #[error("block size exponent 7 (BERT) is not allowed over UDP")]
    Bert,
    /// The block number does not fit in 20 bits.
    #[error("block number {0} exceeds 20 bits")]
    NumTooLarge(u32),
}

/// A Block1/Block2 option value: block number, more flag and size exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockOption {
    /// Block number (20 bits).
    pub num: u32,
    /// More blocks follow.
    pub more: bool,
    /// Size exponent: the block size is `2^(szx + 4)`, 16..=1024 bytes.
    pub szx: u8,
}

impl BlockOption {
    /// Decodes an option value (0–3 bytes). SZX 7 (BERT) is rejected.
    pub fn decode(value: &[u8]) -> Result<Self, BlockError> {
        if value.len() > 3 {
            return Err(BlockError::TooLong(value.len()));
        }
        let v = decode_uint(value).ok_or(BlockError::TooLong(value.len()))?;
        let szx = u8::try_from(v & 0x7).unwrap_or(0);
        if szx == 7 {
            return Err(BlockError::Bert);
        }
        Ok(Self {
            num: v >> 4,
            more: v & 0x8 != 0,
            szx,
        })
    }

    /// Encodes to a minimal option value.
    pub fn encode(&self) -> Result<Vec<u8>, BlockError> {
        if self.num >= 1 << 20 {
            return Err(BlockError::NumTooLarge(self.num));
        }
        if self.szx > MAX_SZX {
            return Err(BlockError::Bert);
        }
        let v = (self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx);
        Ok(super::encode_uint(v))
    }

    /// The block size in bytes, `1 << (szx + 4)` (an SZX above 6 counts as 6).
    pub fn size(&self) -> usize {
        1usize << (self.szx.min(MAX_SZX) + 4)
    }

    /// Reads the Block2 option of `p`: `None` if absent, `Some(Err)` if malformed.
    pub fn block2(p: &Packet) -> Option<Result<Self, BlockError>> {
        p.get_first_option(CoapOption::Block2)
            .map(|v| Self::decode(v))
    }

    /// Reads the Block1 option of `p`: `None` if absent, `Some(Err)` if malformed.
    pub fn block1(p: &Packet) -> Option<Result<Self, BlockError>> {
        p.get_first_option(CoapOption::Block1)
            .map(|v| Self::decode(v))
    }
}

/// What to answer a follow-up block request (`requested.num > 0`) that missed the cache:
/// `None` for GET and FETCH (execute again and slice the fresh body), else a 4.08 Request
/// Entity Incomplete saying the body is gone, so an unsafe request is never repeated.
pub fn follow_up_miss(request: &Packet, requested: BlockOption) -> Option<Packet> {
    use super::RequestType;
    let safe = matches!(
        request.header.code,
        MessageClass::Request(RequestType::Get | RequestType::Fetch)
    );
    if safe || requested.num == 0 {
        return None;
    }
    let mut p = super::response_to(request, ResponseType::RequestEntityIncomplete);
    p.payload = b"the rest of this response is no longer cached; it is not executed again".to_vec();
    Some(p)
}

/// A cache key for a request: code, then every option except Block1, Block2, Size1, Size2
/// and Observe (number, length, value), then the payload. Deterministic and collision-free
/// (length-prefixed), so it can be compared directly.
pub fn cache_key(request: &Packet) -> Vec<u8> {
    const SKIP: [u16; 5] = [23, 27, 60, 28, 6];
    // Sized once: this runs for every request a server takes.
    let options: usize = request
        .options()
        .filter(|(n, _)| !SKIP.contains(n))
        .flat_map(|(_, values)| values.iter().map(|v| 6 + v.len()))
        .sum();
    let mut key = Vec::with_capacity(2 + options + request.payload.len());
    key.push(u8::from(request.header.code));
    for (n, values) in request.options() {
        if SKIP.contains(n) {
            continue;
        }
        for v in values {
            key.extend_from_slice(&n.to_be_bytes());
            key.extend_from_slice(&u32::try_from(v.len()).unwrap_or(u32::MAX).to_be_bytes());
            key.extend_from_slice(v);
        }
    }
    key.push(0xff);
    key.extend_from_slice(&request.payload);
    key
}

#[derive(Debug)]
struct CachedBody {
    /// The response without payload and without Block2/Size2 options.
    template: Packet,
    body: Vec<u8>,
    expires: Instant,
}

impl CachedBody {
    /// What the entry is charged: body, key, and a fixed overhead for the template and the
    /// map slot.
    fn cost(&self, key: &[u8]) -> usize {
        const OVERHEAD: usize = 256;
        self.body
            .len()
            .saturating_add(key.len())
            .saturating_add(OVERHEAD)
    }
}

/// Full response bodies of one peer session, sliced into Block2 blocks on demand.
///
/// Entries expire `lifetime` after their last use (see [`Block2Cache::new`]); the cache is
/// bounded in bodies and bytes (see the module doc, "Memory"), the oldest evicted first, so
/// a peer cannot grow it without bound.
#[derive(Debug)]
pub struct Block2Cache {
    entries: HashMap<Vec<u8>, CachedBody>,
    lifetime: Duration,
    max_szx: u8,
    account: Account,
}

impl Block2Cache {
    /// A cache whose entries live `lifetime` after their last use. aiocoap uses
    /// MAX_TRANSMIT_WAIT; [`TransportTuning::exchange_lifetime`](super::TransportTuning::exchange_lifetime)
    /// is also reasonable. Blocks default to 1024 bytes (SZX 6); the bounds are
    /// [`CacheLimits::process_default`] (16 bodies and 1 MiB per session, 64 MiB shared).
    pub fn new(lifetime: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            lifetime,
            max_szx: MAX_SZX,
            account: CacheLimits::process_default().block2_account(),
        }
    }

    /// Sets the bounds: this session's share of a shared budget
    /// ([`CacheLimits::block2_account`]).
    pub fn with_account(mut self, account: Account) -> Self {
        self.clear();
        self.account = account;
        self
    }

    /// Bytes charged for the bodies held (for tests and leak checks).
    pub fn bytes(&self) -> usize {
        self.account.bytes()
    }

    /// Sets the largest block size this server sends (default SZX 6, 1024 bytes; clamped
    /// to 0..=6). Smaller blocks suit constrained links.
    pub fn with_max_szx(mut self, szx: u8) -> Self {
        self.max_szx = szx.min(MAX_SZX);
        self
    }

    /// Sets how many bodies are kept at most (default 16, minimum 1), keeping the current
    /// byte bounds and shared budget.
    pub fn with_max_entries(self, n: usize) -> Self {
        let (shared, bytes) = (self.account.shared(), self.account.max_bytes());
        self.with_account(Account::new(shared, n.max(1), bytes))
    }

    /// Live cached bodies (for leak tests).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No cached bodies.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Turns a handler's full `response` into what to send for the request's Block2 option
    /// `requested`.
    ///
    /// If the body fits in one block (of the smaller of our maximum and the client's
    /// requested size), `response` is returned unchanged. Otherwise the requested block (0 if
    /// none was requested) is sliced out, Block2 `{num, more, szx}` is set, Size2 (the total
    /// length) is set on block 0, an ETag (a hash of the body) is added if the handler set
    /// none, and the full body is stored under `key` for [`lookup`](Self::lookup).
    /// A block past the end yields 4.02 Bad Option.
    pub fn apply(
        &mut self,
        now: Instant,
        key: Vec<u8>,
        requested: Option<BlockOption>,
        response: Packet,
    ) -> Packet {
        let szx = requested.map_or(self.max_szx, |b| b.szx.min(self.max_szx));
        let size = 1usize << (szx + 4);
        if response.payload.len() <= size && requested.is_none_or(|b| b.num == 0) {
            return response;
        }
        let mut template = super::without_option(&response, CoapOption::Block2.into());
        template = super::without_option(&template, CoapOption::Size2.into());
        let body = std::mem::take(&mut template.payload);
        if template.get_first_option(CoapOption::ETag).is_none() {
            set_single(&mut template, CoapOption::ETag, fnv1a64(&body).to_vec());
        }
        let entry = CachedBody {
            template,
            body,
            expires: deadline(now, self.lifetime),
        };
        let out = slice(&entry, requested, self.max_szx);
        self.insert_bounded(key, entry);
        out
    }

    /// [`apply`](Self::apply) for a reliable transport (RFC 8323), sized to the peer's
    /// Max-Message-Size ([`StreamConnection::peer_max_message_size`](super::StreamConnection::peer_max_message_size)).
    ///
    /// A server over TCP/TLS uses it like this for each request: a follow-up (Block2
    /// `num > 0`) is served by [`lookup`](Self::lookup) if cached; otherwise the handler runs
    /// and its full response goes through `apply_within`, whose result (with the request's
    /// token) is handed to [`StreamConnection::send`](super::StreamConnection::send).
    ///
    /// * No Block2 in the request and the whole response frame fits `max_message_size`: the
    ///   response is returned unchanged (a 5000-byte body goes whole to a peer that allows
    ///   1 MiB).
    /// * Otherwise the body is sliced as by `apply`, with the largest block size (at most
    ///   SZX 6, 1024 bytes, and at most what the client asked for) whose frame, with the
    ///   Block2, Size2 and ETag options, fits `max_message_size` — SZX 6 for the default
    ///   1152. BERT (SZX 7) is not used.
    pub fn apply_within(
        &mut self,
        now: Instant,
        key: Vec<u8>,
        requested: Option<BlockOption>,
        response: Packet,
        max_message_size: usize,
    ) -> Packet {
        if requested.is_none()
            && super::tcp::encode_frame(&response).is_ok_and(|f| f.len() <= max_message_size)
        {
            return response;
        }
        let mut head = super::without_option(&response, CoapOption::Block2.into());
        head = super::without_option(&head, CoapOption::Size2.into());
        head.payload.clear();
        // Block2 (≤ 4 bytes), Size2 (≤ 5), ETag (≤ 9), the payload marker, and slack.
        const BLOCK_OPTIONS_OVERHEAD: usize = 4 + 5 + 9 + 1 + 5;
        let overhead = super::tcp::encode_frame(&head)
            .map_or(usize::MAX, |f| f.len())
            .saturating_add(BLOCK_OPTIONS_OVERHEAD);
        let fitting = (0..=MAX_SZX)
            .rev()
            .find(|szx| (16usize << szx).saturating_add(overhead) <= max_message_size)
            .unwrap_or(0);
        let block = requested.map_or(
            BlockOption {
                num: 0,
                more: false,
                szx: fitting,
            },
            |b| BlockOption {
                szx: b.szx.min(fitting),
                ..b
            },
        );
        // A smaller szx than the client asked for: serve the block at the client's offset.
        let block = match requested {
            Some(r) if r.szx > block.szx => BlockOption {
                num: r.num.saturating_mul(1 << (r.szx.min(MAX_SZX) - block.szx)),
                ..block
            },
            _ => block,
        };
        self.apply(now, key, Some(block), response)
    }

    /// Serves a follow-up request (Block2 `num > 0`) from the cache without re-executing the
    /// handler, refreshing the entry's lifetime. `None` if `requested.num == 0` (the client
    /// starts over and deserves a fresh representation) or nothing live is cached under
    /// `key`; the caller then executes the request and calls [`apply`](Self::apply).
    ///
    /// The returned packet carries code, options and payload; the message layer sets type,
    /// MID and token.
    pub fn lookup(&mut self, now: Instant, key: &[u8], requested: BlockOption) -> Option<Packet> {
        if requested.num == 0 {
            return None;
        }
        let entry = self.entries.get_mut(key)?;
        if entry.expires <= now {
            self.remove(key);
            return None;
        }
        entry.expires = deadline(now, self.lifetime);
        Some(slice(entry, Some(requested), self.max_szx))
    }

    /// The earliest expiry, for the driver's single timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.entries.values().map(|e| e.expires).min()
    }

    /// Drops bodies whose lifetime has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<Vec<u8>> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            self.remove(&k);
        }
    }

    /// Stores `entry` under `key` if the budgets allow, evicting this session's oldest
    /// bodies as needed; otherwise keeps nothing (follow-ups re-render).
    fn insert_bounded(&mut self, key: Vec<u8>, entry: CachedBody) {
        self.remove(&key);
        let cost = entry.cost(&key);
        loop {
            match self.account.reserve(1, cost) {
                Ok(()) => {
                    self.entries.insert(key, entry);
                    return;
                }
                Err(BudgetError::TooLarge) => break,
                Err(_) => {
                    if !self.evict_oldest() {
                        break;
                    }
                }
            }
        }
        tracing::debug!(
            bytes = cost,
            "Block2 body not cached (budget); follow-ups re-render"
        );
    }

    /// Evicts the body closest to expiry; `false` if there was none.
    fn evict_oldest(&mut self) -> bool {
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.expires)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => {
                self.remove(&k);
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(e) = self.entries.remove(key) {
            self.account.release(1, e.cost(key));
        }
    }

    fn clear(&mut self) {
        let keys: Vec<Vec<u8>> = self.entries.keys().cloned().collect();
        for k in keys {
            self.remove(&k);
        }
    }
}

/// Cuts the requested block out of a cached body. A client asking with a larger SZX than
/// ours gets the block of our size that starts at its byte offset (RFC 7959 §2.4 late
/// negotiation).
fn slice(entry: &CachedBody, requested: Option<BlockOption>, max_szx: u8) -> Packet {
    let req = requested.unwrap_or(BlockOption {
        num: 0,
        more: false,
        szx: max_szx,
    });
    let szx = req.szx.min(max_szx);
    let size = 1usize << (szx + 4);
    let offset = usize::try_from(req.num)
        .ok()
        .and_then(|n| n.checked_mul(req.size()));
    let mut p = entry.template.clone();
    let Some(offset) = offset.filter(|o| *o < entry.body.len()) else {
        p.header.code = MessageClass::Response(ResponseType::BadOption);
        p.clear_all_options();
        p.payload = b"block out of range".to_vec();
        return p;
    };
    let end = offset.saturating_add(size).min(entry.body.len());
    let num = u32::try_from(offset / size).unwrap_or(u32::MAX);
    let block = BlockOption {
        num,
        more: end < entry.body.len(),
        szx,
    };
    match block.encode() {
        Ok(v) => set_single(&mut p, CoapOption::Block2, v),
        Err(_) => {
            p.header.code = MessageClass::Response(ResponseType::BadOption);
            p.clear_all_options();
            p.payload = b"block out of range".to_vec();
            return p;
        }
    }
    if num == 0 {
        let total = u32::try_from(entry.body.len()).unwrap_or(u32::MAX);
        set_single(&mut p, CoapOption::Size2, super::encode_uint(total));
    }
    p.payload = entry.body.get(offset..end).unwrap_or_default().to_vec();
    p
}

/// FNV-1a, 64 bit: a cheap, deterministic ETag for a body (not a security property).
fn fnv1a64(data: &[u8]) -> [u8; 8] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::budget::SharedBudget;
    use crate::coap::{RequestType, decode_uint, response_to};
    use std::sync::Arc;

    fn body(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    fn big_response(n: usize) -> Packet {
        let mut req = Packet::new();
        req.header.code = MessageClass::Request(RequestType::Get);
        let mut r = response_to(&req, ResponseType::Content);
        r.payload = body(n);
        r
    }

    fn block2_of(p: &Packet) -> BlockOption {
        BlockOption::block2(p).unwrap().unwrap()
    }

    #[test]
    fn block_option_round_trips_and_is_minimal() {
        let b = BlockOption {
            num: 0,
            more: false,
            szx: 0,
        };
        assert_eq!(b.encode().unwrap(), Vec::<u8>::new());
        let b = BlockOption {
            num: 5,
            more: true,
            szx: 6,
        };
        assert_eq!(b.encode().unwrap(), vec![0x5e]);
        assert_eq!(BlockOption::decode(&[0x5e]).unwrap(), b);
        let b = BlockOption {
            num: (1 << 20) - 1,
            more: true,
            szx: 2,
        };
        assert_eq!(BlockOption::decode(&b.encode().unwrap()).unwrap(), b);
        assert_eq!(b.size(), 64);
    }

    #[test]
    fn block_option_rejects_bert_long_values_and_huge_num() {
        assert_eq!(BlockOption::decode(&[0x0f]), Err(BlockError::Bert));
        assert_eq!(
            BlockOption::decode(&[1, 2, 3, 4]),
            Err(BlockError::TooLong(4))
        );
        let b = BlockOption {
            num: 1 << 20,
            more: false,
            szx: 0,
        };
        assert_eq!(b.encode(), Err(BlockError::NumTooLarge(1 << 20)));
    }

    #[test]
    fn apply_returns_small_body_unchanged() {
        let mut c = Block2Cache::new(Duration::from_secs(10));
        let r = big_response(1024);
        assert_eq!(c.apply(Instant::now(), b"k".to_vec(), None, r.clone()), r);
        assert!(c.is_empty());
    }

    #[test]
    fn apply_slices_first_block_with_size2_etag_and_more() {
        let mut c = Block2Cache::new(Duration::from_secs(10));
        let p = c.apply(Instant::now(), b"k".to_vec(), None, big_response(5000));
        assert_eq!(
            block2_of(&p),
            BlockOption {
                num: 0,
                more: true,
                szx: 6
            }
        );
        assert_eq!(p.payload, body(5000)[..1024]);
        let size2 = p.get_first_option(CoapOption::Size2).unwrap();
        assert_eq!(decode_uint(size2), Some(5000));
        assert_eq!(p.get_first_option(CoapOption::ETag).unwrap().len(), 8);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn apply_honours_a_smaller_client_szx() {
        let mut c = Block2Cache::new(Duration::from_secs(10));
        let req = BlockOption {
            num: 0,
            more: false,
            szx: 2,
        };
        let p = c.apply(Instant::now(), b"k".to_vec(), Some(req), big_response(100));
        assert_eq!(
            block2_of(&p),
            BlockOption {
                num: 0,
                more: true,
                szx: 2
            }
        );
        assert_eq!(p.payload.len(), 64);
    }

    #[test]
    fn lookup_serves_follow_up_blocks_and_last_block_has_more_false() {
        let t0 = Instant::now();
        let mut c = Block2Cache::new(Duration::from_secs(10));
        let first = c.apply(t0, b"k".to_vec(), None, big_response(5000));
        let etag = first.get_first_option(CoapOption::ETag).cloned();
        let req = |num| BlockOption {
            num,
            more: false,
            szx: 6,
        };
        let p = c.lookup(t0, b"k", req(1)).unwrap();
        assert_eq!(block2_of(&p).num, 1);
        assert!(block2_of(&p).more);
        assert!(p.get_first_option(CoapOption::Size2).is_none());
        assert_eq!(p.get_first_option(CoapOption::ETag).cloned(), etag);
        let last = c.lookup(t0, b"k", req(4)).unwrap();
        assert!(!block2_of(&last).more);
        assert_eq!(last.payload, body(5000)[4096..]);
    }

    #[test]
    fn lookup_returns_none_for_block_zero_and_unknown_key() {
        let t0 = Instant::now();
        let mut c = Block2Cache::new(Duration::from_secs(10));
        c.apply(t0, b"k".to_vec(), None, big_response(5000));
        let zero = BlockOption {
            num: 0,
            more: false,
            szx: 6,
        };
        assert!(c.lookup(t0, b"k", zero).is_none());
        let one = BlockOption { num: 1, ..zero };
        assert!(c.lookup(t0, b"other", one).is_none());
    }

    #[test]
    fn out_of_range_block_yields_bad_option() {
        let t0 = Instant::now();
        let mut c = Block2Cache::new(Duration::from_secs(10));
        c.apply(t0, b"k".to_vec(), None, big_response(5000));
        let req = BlockOption {
            num: 5,
            more: false,
            szx: 6,
        };
        let p = c.lookup(t0, b"k", req).unwrap();
        assert_eq!(
            p.header.code,
            MessageClass::Response(ResponseType::BadOption)
        );
        let p = c.apply(t0, b"j".to_vec(), Some(req), big_response(100));
        assert_eq!(
            p.header.code,
            MessageClass::Response(ResponseType::BadOption)
        );
    }

    #[test]
    fn larger_client_szx_is_mapped_to_our_block_at_the_same_offset() {
        let t0 = Instant::now();
        let mut c = Block2Cache::new(Duration::from_secs(10)).with_max_szx(4);
        c.apply(t0, b"k".to_vec(), None, big_response(1000));
        // Client asks for block 1 of 512 bytes; we serve 256-byte block 2 at offset 512.
        let req = BlockOption {
            num: 1,
            more: false,
            szx: 5,
        };
        let p = c.lookup(t0, b"k", req).unwrap();
        assert_eq!(
            block2_of(&p),
            BlockOption {
                num: 2,
                more: true,
                szx: 4
            }
        );
        assert_eq!(p.payload, body(1000)[512..768]);
    }

    #[test]
    fn entries_expire_after_lifetime() {
        let t0 = Instant::now();
        let mut c = Block2Cache::new(Duration::from_secs(10));
        c.apply(t0, b"k".to_vec(), None, big_response(5000));
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        c.handle_timeout(t0 + Duration::from_secs(9));
        assert_eq!(c.len(), 1);
        c.handle_timeout(t0 + Duration::from_secs(10));
        assert!(c.is_empty());
    }

    #[test]
    fn cache_is_bounded_by_max_entries() {
        let t0 = Instant::now();
        let mut c = Block2Cache::new(Duration::from_secs(10)).with_max_entries(2);
        for (i, k) in [b"a", b"b", b"c"].iter().enumerate() {
            let now = t0 + Duration::from_secs(i as u64);
            c.apply(now, k.to_vec(), None, big_response(2000));
        }
        assert_eq!(c.len(), 2);
        let one = BlockOption {
            num: 1,
            more: false,
            szx: 6,
        };
        assert!(c.lookup(t0, b"a", one).is_none(), "oldest evicted");
    }

    #[test]
    fn apply_within_sends_whole_body_when_it_fits_the_peer() {
        let mut c = Block2Cache::new(Duration::from_secs(10));
        let r = big_response(5000);
        assert_eq!(
            c.apply_within(Instant::now(), b"k".to_vec(), None, r.clone(), 1 << 20),
            r
        );
        assert!(c.is_empty());
    }

    #[test]
    fn apply_within_uses_szx_6_for_the_default_1152() {
        let mut c = Block2Cache::new(Duration::from_secs(10));
        let p = c.apply_within(
            Instant::now(),
            b"k".to_vec(),
            None,
            big_response(5000),
            1152,
        );
        assert_eq!(
            block2_of(&p),
            BlockOption {
                num: 0,
                more: true,
                szx: 6
            }
        );
        assert!(crate::coap::tcp::encode_frame(&p).unwrap().len() <= 1152);
    }

    #[test]
    fn apply_within_shrinks_blocks_for_a_small_peer_limit() {
        let mut c = Block2Cache::new(Duration::from_secs(10));
        let p = c.apply_within(Instant::now(), b"k".to_vec(), None, big_response(5000), 500);
        assert_eq!(block2_of(&p).szx, 4, "256-byte blocks fit 500, 512 do not");
        assert!(crate::coap::tcp::encode_frame(&p).unwrap().len() <= 500);
        // A follow-up for 1024-byte block 1 maps to 256-byte block 4 (same offset).
        let req = BlockOption {
            num: 1,
            more: false,
            szx: 6,
        };
        let p = c.apply_within(
            Instant::now(),
            b"k".to_vec(),
            Some(req),
            big_response(5000),
            500,
        );
        assert_eq!(block2_of(&p).num, 4);
        assert_eq!(p.payload, body(5000)[1024..1280]);
    }

    fn budgeted(
        session_entries: usize,
        session_bytes: usize,
        shared: &Arc<SharedBudget>,
    ) -> Block2Cache {
        Block2Cache::new(Duration::from_secs(10)).with_account(Account::new(
            shared.clone(),
            session_entries,
            session_bytes,
        ))
    }

    const ONE: BlockOption = BlockOption {
        num: 1,
        more: false,
        szx: 6,
    };

    #[test]
    fn cache_is_bounded_in_bytes_per_session_oldest_evicted() {
        let t0 = Instant::now();
        let shared = SharedBudget::unlimited();
        // Room for two 5000-byte bodies, not three.
        let mut c = budgeted(16, 12_000, &shared);
        for (i, k) in [b"a", b"b", b"c"].iter().enumerate() {
            let now = t0 + Duration::from_secs(i as u64);
            c.apply(now, k.to_vec(), None, big_response(5000));
        }
        assert_eq!(c.len(), 2);
        assert!(c.bytes() <= 12_000);
        assert!(c.lookup(t0, b"a", ONE).is_none(), "oldest evicted");
        assert!(c.lookup(t0, b"c", ONE).is_some());
        assert_eq!(shared.used_bytes(), c.bytes());
    }

    #[test]
    fn body_larger_than_the_session_budget_is_served_but_not_kept() {
        let t0 = Instant::now();
        let shared = SharedBudget::unlimited();
        let mut c = budgeted(16, 4000, &shared);
        c.apply(t0, b"small".to_vec(), None, big_response(2000));
        let first = c.apply(t0, b"big".to_vec(), None, big_response(5000));
        assert_eq!(first.payload, body(5000)[..1024], "block 0 still goes out");
        assert!(
            c.lookup(t0, b"big", ONE).is_none(),
            "not kept: a follow-up re-renders"
        );
        assert!(
            c.lookup(t0, b"small", ONE).is_some(),
            "nothing else evicted for it"
        );
        // The re-rendered follow-up is sliced from the fresh body, with the same ETag.
        let again = c.apply(t0, b"big".to_vec(), Some(ONE), big_response(5000));
        assert_eq!(again.payload, body(5000)[1024..2048]);
        assert_eq!(
            again.get_first_option(CoapOption::ETag),
            first.get_first_option(CoapOption::ETag)
        );
    }

    #[test]
    fn shared_budget_bounds_all_sessions_and_is_returned_on_drop() {
        let t0 = Instant::now();
        let shared = SharedBudget::new(100, 12_000);
        let mut a = budgeted(16, 1 << 20, &shared);
        let mut b = budgeted(16, 1 << 20, &shared);
        a.apply(t0, b"a1".to_vec(), None, big_response(5000));
        let t1 = t0 + Duration::from_secs(1);
        a.apply(t1, b"a2".to_vec(), None, big_response(5000));
        // b has nothing to evict and the shared budget is full: b keeps nothing.
        b.apply(t0, b"b1".to_vec(), None, big_response(5000));
        assert!(b.is_empty());
        assert!(shared.used_bytes() <= 12_000);
        // a evicts its own oldest to make room for its new body.
        a.apply(
            t0 + Duration::from_secs(2),
            b"a3".to_vec(),
            None,
            big_response(5000),
        );
        assert_eq!(a.len(), 2);
        assert!(a.lookup(t0, b"a1", ONE).is_none());
        drop(a);
        assert_eq!(
            shared.used_bytes(),
            0,
            "a session's share comes back when it ends"
        );
        b.apply(t0, b"b1".to_vec(), None, big_response(5000));
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn expiry_returns_bytes_to_the_shared_budget() {
        let t0 = Instant::now();
        let shared = SharedBudget::unlimited();
        let mut c = budgeted(16, 1 << 20, &shared);
        c.apply(t0, b"k".to_vec(), None, big_response(5000));
        assert!(shared.used_bytes() > 5000);
        c.handle_timeout(t0 + Duration::from_secs(10));
        assert_eq!((c.len(), c.bytes(), shared.used_bytes()), (0, 0, 0));
    }

    /// Issue 6 item 6: 16 listings of 200 KB per session used to stay cached whole (3.2 MB per
    /// session). With the default bounds a session keeps at most 1 MiB.
    #[test]
    fn default_bounds_keep_at_most_one_mib_per_session() {
        let t0 = Instant::now();
        let mut c = Block2Cache::new(Duration::from_secs(10));
        for i in 0..16u64 {
            let now = t0 + Duration::from_millis(i);
            c.apply(now, i.to_be_bytes().to_vec(), None, big_response(200_000));
        }
        assert!(c.len() <= 5, "{} bodies of 200 KB kept", c.len());
        assert!(!c.is_empty(), "recent bodies are still kept");
    }

    #[test]
    fn follow_up_miss_reexecutes_only_safe_methods() {
        let mut get = Packet::new();
        get.header.code = MessageClass::Request(RequestType::Get);
        assert!(follow_up_miss(&get, ONE).is_none(), "GET: re-render");
        let mut post = get.clone();
        post.header.code = MessageClass::Request(RequestType::Post);
        let zero = BlockOption { num: 0, ..ONE };
        assert!(
            follow_up_miss(&post, zero).is_none(),
            "block 0 is a new request"
        );
        let answer = follow_up_miss(&post, ONE).expect("POST follow-up is refused");
        assert_eq!(
            answer.header.code,
            MessageClass::Response(ResponseType::RequestEntityIncomplete)
        );
    }

    #[test]
    fn cache_key_ignores_block2_but_not_path() {
        let mut a = Packet::new();
        crate::coap::set_uri(&mut a, "/x");
        let mut b = a.clone();
        b.add_option(CoapOption::Block2, vec![0x16]);
        assert_eq!(cache_key(&a), cache_key(&b));
        crate::coap::set_uri(&mut b, "/y");
        assert_ne!(cache_key(&a), cache_key(&b));
    }
}
