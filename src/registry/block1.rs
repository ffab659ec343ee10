//! Block1 reassembly (RFC 7959 §2.3, §2.5) of registration-interface requests: a client
//! whose object list does not fit one message (Wakaama with `-S 16`, any client with a long
//! object list) sends its Register or Update in blocks, each answered 2.31 Continue, and only
//! the last one carries the request the registry sees, with the whole payload.
//!
//! One body per key (the caller's session), bounded in size ([`MAX_PAYLOAD`] of the object
//! list), in count (the oldest partial body goes first) and in age. Blocks must come in
//! order from 0; a block that does not continue the body, or a different request in the middle
//! of one, is 4.08 Request Entity Incomplete (the body is dropped and the client starts over).
//! Pure: time is an argument.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, Packet, ResponseType};

use super::link_format::MAX_PAYLOAD;
use crate::coap::BlockOption;

/// How long a partial body waits for its next block.
pub const BLOCK1_LIFETIME: Duration = Duration::from_secs(90);
/// Partial bodies kept at a time (one per session that is sending one).
pub const MAX_PARTIAL: usize = 256;

/// What to do with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The whole request (as sent, or reassembled without its Block1 option): handle it;
    /// `Some(block)` is the last block's option, to echo in the final response.
    Complete(Packet, Option<BlockOption>),
    /// A block stored: answer 2.31 Continue with this Block1 option.
    Continue(BlockOption),
    /// Refused with this code (the partial body, if any, is dropped).
    Refuse(ResponseType, &'static str),
}

struct Partial {
    /// Code, Uri-Path and Uri-Query of the first block: every block must repeat them.
    request_id: Vec<u8>,
    body: Vec<u8>,
    expires: Instant,
}

/// Partial Block1 bodies by session key.
pub struct Block1Assembler<K> {
    partial: HashMap<K, Partial>,
    /// The largest body reassembled; a longer one is 4.13.
    max_body: usize,
}

impl<K: Hash + Eq + Clone> Default for Block1Assembler<K> {
    fn default() -> Self {
        Block1Assembler {
            partial: HashMap::new(),
            max_body: MAX_PAYLOAD,
        }
    }
}

impl<K: Hash + Eq + Clone> Block1Assembler<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// An assembler of bodies up to `max_body` bytes (the default is an object list's
    /// [`MAX_PAYLOAD`]); the proxy reassembles what servers send to devices with it.
    pub fn with_max_body(max_body: usize) -> Self {
        Block1Assembler {
            partial: HashMap::new(),
            max_body,
        }
    }

    /// Partial bodies held now.
    pub fn len(&self) -> usize {
        self.partial.len()
    }

    pub fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }

    /// [`offer`](Self::offer) then [`Step::into_whole`], for a handler that answers blocks
    /// itself: the request whole (as it came if it has no Block1), or the answer to give
    /// `request` now (2.31 Continue, or the refusal with its reason).
    pub fn whole(
        &mut self,
        now: Instant,
        key: K,
        request: Packet,
    ) -> Result<(Packet, Option<BlockOption>), Packet> {
        if request.get_first_option(CoapOption::Block1).is_none() {
            return Ok((request, None));
        }
        self.offer(now, key, request.clone()).into_whole(&request)
    }

    /// Takes one request from session `key` at `now`.
    pub fn offer(&mut self, now: Instant, key: K, mut request: Packet) -> Step {
        self.partial.retain(|_, p| p.expires > now);
        let block = match BlockOption::block1(&request) {
            None => return Step::Complete(request, None),
            Some(Ok(block)) => block,
            Some(Err(_)) => {
                self.partial.remove(&key);
                return Step::Refuse(ResponseType::BadOption, "malformed Block1");
            }
        };
        let payload = std::mem::take(&mut request.payload);
        if block.more && payload.len() != block.size() {
            self.partial.remove(&key);
            return Step::Refuse(
                ResponseType::BadRequest,
                "a Block1 block before the last one must be the block size",
            );
        }
        let id = request_id(&request);
        let offset = usize::try_from(block.num)
            .unwrap_or(usize::MAX)
            .saturating_mul(block.size());
        let mut body = if block.num == 0 {
            Vec::new()
        } else {
            match self.partial.remove(&key) {
                Some(p) if p.request_id == id && p.body.len() == offset => p.body,
                _ => {
                    return Step::Refuse(
                        ResponseType::RequestEntityIncomplete,
                        "Block1 block out of order, or of another request",
                    );
                }
            }
        };
        if body.len() + payload.len() > self.max_body {
            self.partial.remove(&key);
            return Step::Refuse(ResponseType::RequestEntityTooLarge, "body too long");
        }
        body.extend_from_slice(&payload);
        if block.more {
            if !self.partial.contains_key(&key) && self.partial.len() >= MAX_PARTIAL {
                self.evict_oldest();
            }
            self.partial.insert(
                key,
                Partial {
                    request_id: id,
                    body,
                    expires: now + BLOCK1_LIFETIME,
                },
            );
            return Step::Continue(block);
        }
        self.partial.remove(&key);
        request.clear_option(CoapOption::Block1);
        request.clear_option(CoapOption::Size1);
        request.payload = body;
        Step::Complete(request, Some(block))
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .partial
            .iter()
            .min_by_key(|(_, p)| p.expires)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.partial.remove(&k);
        }
    }
}

/// The request's code, Uri-Path and Uri-Query, length-prefixed.
fn request_id(p: &Packet) -> Vec<u8> {
    let mut id = vec![u8::from(p.header.code)];
    for option in [CoapOption::UriPath, CoapOption::UriQuery] {
        for value in p.get_option(option).into_iter().flatten() {
            id.extend_from_slice(&u32::try_from(value.len()).unwrap_or(0).to_be_bytes());
            id.extend_from_slice(value);
        }
        id.push(0xff);
    }
    id
}

impl Step {
    /// The whole request to handle (with the last block's option, to echo in its answer),
    /// or the answer to give `request` at once: 2.31 Continue with its Block1, or the
    /// refusal with its reason as diagnostic payload.
    pub fn into_whole(self, request: &Packet) -> Result<(Packet, Option<BlockOption>), Packet> {
        match self {
            Step::Complete(whole, last) => Ok((whole, last)),
            Step::Continue(block) => {
                let mut response = crate::coap::response_to(request, ResponseType::Continue);
                echo_block1(&mut response, block);
                Err(response)
            }
            Step::Refuse(code, why) => {
                let mut response = crate::coap::response_to(request, code);
                response.payload = why.as_bytes().to_vec();
                Err(response)
            }
        }
    }
}

/// Adds `block` as the Block1 option of `response` (2.31 Continue, or the final answer).
pub fn echo_block1(response: &mut Packet, block: BlockOption) {
    if let Ok(value) = block.encode() {
        response.clear_option(CoapOption::Block1);
        response.add_option(CoapOption::Block1, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::decode;

    /// Wakaama `lwm2mclient -S 16`: the first block of its Register as captured on the wire
    /// (CON POST /rd?lwm2m=1.1&ep=dev1&b=U&lt=300, Block1 0x08 = NUM 0, M, SZX 0 (16 bytes),
    /// 16 bytes of the object list); before this module the gateway answered it 4.02.
    const WAKAAMA_BLOCK0: &str = "4402f0d1d1f0b850b272641128396c776d326d3d312e310765703d6465763103623d55066c743d333030c108ff3c2f3e3b72743d226f6d612e6c776d32";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The blocks of `whole`'s payload at 16 bytes, as Wakaama sends them.
    fn blocks(first: &Packet, whole: &[u8]) -> Vec<Packet> {
        let chunks: Vec<&[u8]> = whole.chunks(16).collect();
        chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| {
                let mut p = first.clone();
                p.header.message_id = first.header.message_id.wrapping_add(i as u16);
                let block = BlockOption {
                    num: i as u32,
                    more: i + 1 < chunks.len(),
                    szx: 0,
                };
                p.clear_option(CoapOption::Block1);
                p.add_option(CoapOption::Block1, block.encode().unwrap());
                p.payload = chunk.to_vec();
                p
            })
            .collect()
    }

    const OBJECTS: &[u8] = br#"</>;rt="oma.lwm2m";ct=110,</1>;ver=1.1,</1/0>,</2/0>,</3/0>,</4/0>,</5/0>,</6/0>,</7/0>,</31024>;ver=1.0,</31024/10>,</31024/11>,</31024/12>"#;

    #[test]
    fn wakaamas_block1_register_is_reassembled() {
        let first = decode(&hex(WAKAAMA_BLOCK0)).unwrap();
        assert_eq!(first.payload, &OBJECTS[..16]);
        let t0 = Instant::now();
        let mut a: Block1Assembler<u8> = Block1Assembler::new();
        let sent = blocks(&first, OBJECTS);
        assert_eq!(sent.len(), 9);
        for (i, p) in sent.iter().enumerate() {
            match a.offer(t0, 1, p.clone()) {
                Step::Continue(b) => {
                    assert!(i + 1 < sent.len());
                    assert_eq!((b.num, b.more, b.szx), (i as u32, true, 0));
                }
                Step::Complete(whole, Some(b)) => {
                    assert_eq!(i + 1, sent.len());
                    assert_eq!((b.num, b.more), (8, false));
                    assert_eq!(whole.payload, OBJECTS);
                    assert!(whole.get_first_option(CoapOption::Block1).is_none());
                    let parsed = crate::registry::RegistrationRequest::parse(&whole).unwrap();
                    assert!(matches!(
                        parsed,
                        crate::registry::RegistrationRequest::Register { ref endpoint, .. }
                            if endpoint == "dev1"
                    ));
                }
                other => panic!("block {i}: {other:?}"),
            }
        }
        assert!(a.is_empty());
    }

    #[test]
    fn out_of_order_foreign_oversized_and_stale_blocks_are_refused() {
        let first = decode(&hex(WAKAAMA_BLOCK0)).unwrap();
        let sent = blocks(&first, OBJECTS);
        let t0 = Instant::now();
        let mut a: Block1Assembler<u8> = Block1Assembler::new();
        // A block that does not follow on.
        assert!(matches!(a.offer(t0, 1, sent[0].clone()), Step::Continue(_)));
        assert!(matches!(
            a.offer(t0, 1, sent[2].clone()),
            Step::Refuse(ResponseType::RequestEntityIncomplete, _)
        ));
        // Another session's body is its own.
        assert!(matches!(a.offer(t0, 1, sent[0].clone()), Step::Continue(_)));
        assert!(matches!(
            a.offer(t0, 2, sent[1].clone()),
            Step::Refuse(ResponseType::RequestEntityIncomplete, _)
        ));
        // Another request in the middle of a body.
        let mut other = sent[1].clone();
        crate::coap::set_uri(&mut other, "/rd?ep=dev2&lt=300");
        assert!(matches!(
            a.offer(t0, 1, other),
            Step::Refuse(ResponseType::RequestEntityIncomplete, _)
        ));
        // A short block that claims more follow.
        let mut short = sent[0].clone();
        short.payload.truncate(5);
        assert!(matches!(
            a.offer(t0, 1, short),
            Step::Refuse(ResponseType::BadRequest, _)
        ));
        // A body that outgrows the object list bound.
        let big = vec![b'x'; MAX_PAYLOAD + 1024];
        let mut refused = false;
        for p in blocks(&first, &big) {
            match a.offer(t0, 3, p) {
                Step::Continue(_) => {}
                Step::Refuse(ResponseType::RequestEntityTooLarge, _) => {
                    refused = true;
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(refused && a.is_empty());
        // A partial body expires.
        assert!(matches!(a.offer(t0, 1, sent[0].clone()), Step::Continue(_)));
        let later = t0 + BLOCK1_LIFETIME;
        assert!(matches!(
            a.offer(later, 1, sent[1].clone()),
            Step::Refuse(ResponseType::RequestEntityIncomplete, _)
        ));
        // Without Block1 a request passes unchanged.
        let mut plain = first.clone();
        plain.clear_option(CoapOption::Block1);
        assert_eq!(a.offer(t0, 1, plain.clone()), Step::Complete(plain, None));
    }

    #[test]
    fn partial_bodies_are_bounded_in_count() {
        let first = decode(&hex(WAKAAMA_BLOCK0)).unwrap();
        let t0 = Instant::now();
        let mut a: Block1Assembler<usize> = Block1Assembler::new();
        for k in 0..MAX_PARTIAL + 10 {
            let now = t0 + Duration::from_millis(k as u64);
            assert!(matches!(a.offer(now, k, first.clone()), Step::Continue(_)));
        }
        assert_eq!(a.len(), MAX_PARTIAL);
    }
}
