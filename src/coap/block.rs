//! Block-wise transfer (RFC 7959), server side of Block2: the [`BlockOption`] value codec and
//! the [`Block2Cache`] that slices large response bodies and serves follow-up blocks without
//! re-running the handler.
//!
//! Owns: the Block2 body cache of one peer session, keyed by a caller-supplied cache key.
//! Does not own: MIDs, types or tokens (the message layer, [`super::server`], sets those on
//! whatever this module returns), nor Block1 (no Block1 spool yet: the message layer
//! rejects Block1 requests with 4.02).
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

use std::collections::HashMap;
use std::time::{Duration, Instant};

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

/// A cache key for a request: code, then every option except Block1, Block2, Size1, Size2
/// and Observe (number, length, value), then the payload. Deterministic and collision-free
/// (length-prefixed), so it can be compared directly.
pub fn cache_key(request: &Packet) -> Vec<u8> {
    const SKIP: [u16; 5] = [23, 27, 60, 28, 6];
    let mut key = vec![u8::from(request.header.code)];
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

/// Full response bodies of one peer session, sliced into Block2 blocks on demand.
///
/// Entries expire `lifetime` after their last use (see [`Block2Cache::new`]); at most
/// `max_entries` bodies are kept, the oldest evicted first, so a peer cannot grow it without
/// bound.
#[derive(Debug)]
pub struct Block2Cache {
    entries: HashMap<Vec<u8>, CachedBody>,
    lifetime: Duration,
    max_szx: u8,
    max_entries: usize,
}

impl Block2Cache {
    /// A cache whose entries live `lifetime` after their last use. aiocoap uses
    /// MAX_TRANSMIT_WAIT; [`TransportTuning::exchange_lifetime`](super::TransportTuning::exchange_lifetime)
    /// is also reasonable. Blocks default to 1024 bytes (SZX 6), 16 bodies at most.
    pub fn new(lifetime: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            lifetime,
            max_szx: MAX_SZX,
            max_entries: 16,
        }
    }

    /// Sets the largest block size this server sends (default SZX 6, 1024 bytes; clamped
    /// to 0..=6). Smaller blocks suit constrained links.
    pub fn with_max_szx(mut self, szx: u8) -> Self {
        self.max_szx = szx.min(MAX_SZX);
        self
    }

    /// Sets how many bodies are kept at most (default 16, minimum 1). Each may be as large
    /// as a handler's response, so memory is `max_entries × largest body`.
    pub fn with_max_entries(mut self, n: usize) -> Self {
        self.max_entries = n.max(1);
        self
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
        self.evict_for_insert(&key);
        self.entries.insert(key, entry);
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
            self.entries.remove(key);
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
        self.entries.retain(|_, e| e.expires > now);
    }

    fn evict_for_insert(&mut self, key: &[u8]) {
        if self.entries.contains_key(key) {
            return;
        }
        while self.entries.len() >= self.max_entries {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.entries.remove(&k);
                }
                None => break,
            }
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
    use crate::coap::{RequestType, decode_uint, response_to};

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
