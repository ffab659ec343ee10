//! CoAP over reliable transports (RFC 8323 §3.2, §5): message framing and signaling messages.
//!
//! Owns: the byte format of one frame (Len/TKL, extended length, code, token, options and
//! payload — no version, type or MID) and the typed form of the 7.xx signaling messages
//! ([`Signal`]).
//! Does not own: buffering a byte stream or reacting to signals (that is
//! [`super::stream::StreamConnection`]), tokens, or block-wise transfer.
//!
//! # Format
//!
//! ```text
//!  0 1 2 3 4 5 6 7
//! +-------+-------+---------------+--------+---------+--------------------+
//! |  Len  |  TKL  | Extended Len  |  Code  |  Token  | Options + Payload  |
//! +-------+-------+---------------+--------+---------+--------------------+
//! ```
//!
//! `Len` counts the options and payload only. Len 0..=12 is the length itself; 13 adds one
//! byte holding `len − 13`; 14 adds two bytes (`len − 269`); 15 adds four (`len − 65805`).
//!
//! # Message size
//!
//! The *message size* compared against a Max-Message-Size is the whole frame, header
//! included. [`decode_frame`] rejects a frame that is too large as soon as its header is
//! readable, before the body arrives, so a peer cannot make us buffer more than the limit.

use super::{CoapError, CoapOption, MAX_TOKEN_LEN, MessageClass, Packet, decode, decode_uint};

/// Why a frame or signal is unacceptable. Every variant is the peer's fault; each one closes
/// the connection it arrived on (after an Abort), never others.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// TKL 9..=15 (reserved).
    #[error("token length {0} (at most 8)")]
    InvalidTokenLength(u8),
    /// The frame exceeds the Max-Message-Size we advertised.
    #[error("frame of {size} bytes exceeds the Max-Message-Size of {max}")]
    TooLarge {
        /// The frame size announced by its header (saturated to `usize::MAX`).
        size: usize,
        /// Our limit.
        max: usize,
    },
    /// The options or payload are malformed.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A signaling message carries an unknown critical option, or a known option with a
    /// malformed value (RFC 8323 §5.3: answered with Abort, Bad-CSM-Option for a CSM).
    #[error("bad option {option} in signal 7.{detail:02}")]
    BadSignalOption {
        /// The signal code detail (1 = CSM …).
        detail: u8,
        /// The option number.
        option: u16,
    },
    /// A 7.xx code this stack does not know (7.00, 7.06..=7.31).
    #[error("unknown signaling code 7.{0:02}")]
    UnknownSignal(u8),
}

/// Code of a CSM, 7.01.
pub const CODE_CSM: u8 = 0xE1;
/// Code of a Ping, 7.02.
pub const CODE_PING: u8 = 0xE2;
/// Code of a Pong, 7.03.
pub const CODE_PONG: u8 = 0xE3;
/// Code of a Release, 7.04.
pub const CODE_RELEASE: u8 = 0xE4;
/// Code of an Abort, 7.05.
pub const CODE_ABORT: u8 = 0xE5;

/// The Max-Message-Size a peer is assumed to accept until its CSM says otherwise
/// (RFC 8323 §5.3.1).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1152;

/// Largest option value length the RFC 7252 option encoding can express.
const MAX_OPTION_LEN: usize = 65535 + 269;

/// Encodes one frame. Version, type and MID of `packet` are ignored.
///
/// Fails (our fault) for a token longer than 8 bytes, an option value longer than
/// 65804 bytes, an Empty (0.00) message with a payload, or a body whose length does not fit
/// the 4-byte extended length.
pub fn encode_frame(packet: &Packet) -> Result<Vec<u8>, CoapError> {
    let token = packet.get_token();
    let tkl = u8::try_from(token.len())
        .ok()
        .filter(|t| usize::from(*t) <= MAX_TOKEN_LEN)
        .ok_or_else(|| CoapError::Encode(format!("token of {} bytes", token.len())))?;
    if packet
        .options()
        .any(|(_, values)| values.iter().any(|v| v.len() > MAX_OPTION_LEN))
    {
        return Err(CoapError::Encode("option value too long".into()));
    }
    if packet.header.code == MessageClass::Empty && !packet.payload.is_empty() {
        return Err(CoapError::Encode("Empty message with payload".into()));
    }
    let udp = packet
        .to_bytes_unlimited()
        .map_err(|e| CoapError::Encode(e.to_string()))?;
    let body = udp
        .get(4 + usize::from(tkl)..)
        .ok_or_else(|| CoapError::Encode("short encoding".into()))?;
    let len = body.len();
    let mut out = Vec::with_capacity(len + 6 + token.len());
    match len {
        0..=12 => out.push(((len as u8) << 4) | tkl),
        13..=268 => {
            out.push((13 << 4) | tkl);
            out.push((len - 13) as u8);
        }
        269..=65804 => {
            out.push((14 << 4) | tkl);
            out.extend_from_slice(&((len - 269) as u16).to_be_bytes());
        }
        _ => {
            let ext = u32::try_from(len - 65805)
                .map_err(|_| CoapError::Encode(format!("body of {len} bytes")))?;
            out.push((15 << 4) | tkl);
            out.extend_from_slice(&ext.to_be_bytes());
        }
    }
    out.push(u8::from(packet.header.code));
    out.extend_from_slice(token);
    out.extend_from_slice(body);
    Ok(out)
}

/// The header of a frame: `(header bytes before the code, options+payload length, TKL)`,
/// `None` if not all of it has arrived.
fn frame_header(buf: &[u8]) -> Result<Option<(usize, usize, u8)>, FrameError> {
    let Some(&b0) = buf.first() else {
        return Ok(None);
    };
    let tkl = b0 & 0x0f;
    if usize::from(tkl) > MAX_TOKEN_LEN {
        return Err(FrameError::InvalidTokenLength(tkl));
    }
    let nibble = b0 >> 4;
    let ext_len = match nibble {
        13 => 1,
        14 => 2,
        15 => 4,
        _ => 0,
    };
    let Some(ext) = buf.get(1..1 + ext_len) else {
        return Ok(None);
    };
    let ext_value = ext
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    let len = match nibble {
        13 => ext_value + 13,
        14 => ext_value + 269,
        15 => ext_value.saturating_add(65805),
        n => usize::from(n),
    };
    Ok(Some((1 + ext_len, len, tkl)))
}

/// Decodes the first frame in `buf`.
///
/// * `Ok(None)`: the frame is incomplete (not an error; read more bytes and call again).
/// * `Ok(Some((packet, consumed)))`: one frame; drop `consumed` bytes from the buffer. The
///   packet's type and MID are meaningless over TCP.
/// * `Err`: TKL above 8, a frame larger than `max_message_size` (detected from the header,
///   before the body arrives), or malformed options. The connection must be closed.
///
/// An Empty message (code 0.00) decodes to an Empty packet whatever its body holds: RFC 8323
/// §3.4 says it must be ignored. Never panics.
pub fn decode_frame(
    buf: &[u8],
    max_message_size: usize,
) -> Result<Option<(Packet, usize)>, FrameError> {
    let Some((head, len, tkl)) = frame_header(buf)? else {
        return Ok(None);
    };
    let total = head
        .saturating_add(1)
        .saturating_add(usize::from(tkl))
        .saturating_add(len);
    if total > max_message_size {
        return Err(FrameError::TooLarge {
            size: total,
            max: max_message_size,
        });
    }
    let Some(frame) = buf.get(head..total) else {
        return Ok(None);
    };
    let [code, rest @ ..] = frame else {
        return Ok(None);
    };
    let (token, body) = rest
        .split_at_checked(usize::from(tkl))
        .unwrap_or((rest, &[]));
    if *code == 0 {
        let mut p = Packet::new();
        p.header.code = MessageClass::Empty;
        p.set_token(token.to_vec());
        return Ok(Some((p, total)));
    }
    let mut udp = Vec::with_capacity(4 + frame.len());
    udp.extend_from_slice(&[0x40 | tkl, *code, 0, 0]);
    udp.extend_from_slice(token);
    udp.extend_from_slice(body);
    let packet = decode(&udp).map_err(|e| FrameError::Malformed(e.to_string()))?;
    Ok(Some((packet, total)))
}

/// A signaling message (RFC 8323 §5), code class 7.
///
/// coap-lite reports class 7 as `MessageClass::Reserved(code)` and names option 4 `ETag`;
/// this type interprets options by number, per signal code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// 7.01 Capabilities and Settings Message.
    Csm {
        /// Option 2, Max-Message-Size (uint): the largest message the sender accepts.
        max_message_size: Option<u32>,
        /// Option 4, Block-Wise-Transfer (empty): the sender supports block-wise transfer.
        block_wise: bool,
    },
    /// 7.02 Ping.
    Ping {
        /// Option 2, Custody: answer only after all outstanding messages are processed.
        custody: bool,
    },
    /// 7.03 Pong (its token echoes the Ping's).
    Pong {
        /// Option 2, Custody: all outstanding messages have been processed.
        custody: bool,
    },
    /// 7.04 Release: the sender wants the connection closed gracefully.
    Release {
        /// Option 2, Alternative-Address (string), the first one if several.
        alternative_address: Option<String>,
        /// Option 4, Hold-Off (uint, seconds).
        hold_off: Option<u32>,
        /// Diagnostic payload (UTF-8, lossy).
        diagnostic: String,
    },
    /// 7.05 Abort: the sender closes the connection because of an error.
    Abort {
        /// Option 2, Bad-CSM-Option (uint): the CSM option that caused the abort.
        bad_option: Option<u16>,
        /// Diagnostic payload (UTF-8, lossy).
        diagnostic: String,
    },
}

/// Option numbers of signals.
const OPT_2: u16 = 2;
const OPT_4: u16 = 4;

impl Signal {
    /// Interprets `packet` as a signal: `None` if its code is not of class 7, `Some(Err)` for
    /// an unknown 7.xx code, an unknown critical (odd) option, or a malformed value of a
    /// known option. Unknown elective (even) options are ignored (RFC 8323 §5.2).
    pub fn from_packet(packet: &Packet) -> Option<Result<Signal, FrameError>> {
        let code = u8::from(packet.header.code);
        if code >> 5 != 7 {
            return None;
        }
        Some(Self::parse(code, packet))
    }

    fn parse(code: u8, p: &Packet) -> Result<Signal, FrameError> {
        let detail = code & 0x1f;
        let known: &[u16] = match code {
            CODE_CSM | CODE_RELEASE => &[OPT_2, OPT_4],
            CODE_PING | CODE_PONG | CODE_ABORT => &[OPT_2],
            _ => return Err(FrameError::UnknownSignal(detail)),
        };
        for (n, values) in p.options() {
            if n % 2 == 1 && !known.contains(n) && !values.is_empty() {
                return Err(FrameError::BadSignalOption { detail, option: *n });
            }
        }
        let bad = |option| FrameError::BadSignalOption { detail, option };
        let first = |n: u16| p.get_first_option(CoapOption::from(n));
        let uint = |n: u16| match first(n) {
            None => Ok(None),
            Some(v) => decode_uint(v).map(Some).ok_or(bad(n)),
        };
        let flag = |n: u16| match first(n) {
            None => Ok(false),
            Some(v) if v.is_empty() => Ok(true),
            Some(_) => Err(bad(n)),
        };
        let diagnostic = String::from_utf8_lossy(&p.payload).into_owned();
        Ok(match code {
            CODE_CSM => Signal::Csm {
                max_message_size: uint(OPT_2)?,
                block_wise: flag(OPT_4)?,
            },
            CODE_PING => Signal::Ping {
                custody: flag(OPT_2)?,
            },
            CODE_PONG => Signal::Pong {
                custody: flag(OPT_2)?,
            },
            CODE_RELEASE => Signal::Release {
                alternative_address: first(OPT_2)
                    .map(|v| String::from_utf8(v.clone()).map_err(|_| bad(OPT_2)))
                    .transpose()?,
                hold_off: uint(OPT_4)?,
                diagnostic,
            },
            _ => Signal::Abort {
                bad_option: uint(OPT_2)?
                    .map(|v| u16::try_from(v).map_err(|_| bad(OPT_2)))
                    .transpose()?,
                diagnostic,
            },
        })
    }

    /// The signal as a packet with an empty token (a Pong takes the Ping's token: set it
    /// with `set_token`). Type and MID are left at their defaults; they are not sent.
    pub fn to_packet(&self) -> Packet {
        let mut p = Packet::new();
        let mut add = |n: u16, v: Vec<u8>| p.add_option(CoapOption::from(n), v);
        let (code, payload) = match self {
            Signal::Csm {
                max_message_size,
                block_wise,
            } => {
                if let Some(m) = max_message_size {
                    add(OPT_2, super::encode_uint(*m));
                }
                if *block_wise {
                    add(OPT_4, Vec::new());
                }
                (CODE_CSM, "")
            }
            Signal::Ping { custody } | Signal::Pong { custody } => {
                if *custody {
                    add(OPT_2, Vec::new());
                }
                let code = if matches!(self, Signal::Ping { .. }) {
                    CODE_PING
                } else {
                    CODE_PONG
                };
                (code, "")
            }
            Signal::Release {
                alternative_address,
                hold_off,
                diagnostic,
            } => {
                if let Some(a) = alternative_address {
                    add(OPT_2, a.as_bytes().to_vec());
                }
                if let Some(h) = hold_off {
                    add(OPT_4, super::encode_uint(*h));
                }
                (CODE_RELEASE, diagnostic.as_str())
            }
            Signal::Abort {
                bad_option,
                diagnostic,
            } => {
                if let Some(o) = bad_option {
                    add(OPT_2, super::encode_uint(u32::from(*o)));
                }
                (CODE_ABORT, diagnostic.as_str())
            }
        };
        p.header.code = MessageClass::from(code);
        p.payload = payload.as_bytes().to_vec();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::{RequestType, ResponseType, set_uri};

    fn response_with_body(n: usize) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Response(ResponseType::Content);
        p.set_token(vec![0xaa, 0xbb]);
        p.payload = (0..n).map(|i| (i % 253) as u8).collect();
        p
    }

    /// Same code, token, options and payload (type and MID do not exist over TCP).
    #[track_caller]
    fn assert_same_message(a: &Packet, b: &Packet) {
        assert_eq!(a.header.code, b.header.code);
        assert_eq!(a.get_token(), b.get_token());
        let present = |p: &Packet| {
            p.options()
                .filter(|(_, v)| !v.is_empty())
                .map(|(n, v)| (*n, v.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(present(a), present(b));
        assert_eq!(a.payload, b.payload);
    }

    #[test]
    fn round_trips_at_every_length_boundary_with_the_right_len_nibble() {
        // Body length = options + payload = 1 (marker) + payload for a payload > 0.
        for (body, nibble, ext) in [
            (0usize, 0u8, 0usize),
            (12, 12, 0),
            (13, 13, 1),
            (268, 13, 1),
            (269, 14, 2),
            (65804, 14, 2),
            (65805, 15, 4),
        ] {
            let p = response_with_body(body.saturating_sub(1));
            let frame = encode_frame(&p).unwrap();
            assert_eq!(frame[0] >> 4, nibble, "Len nibble for body {body}");
            assert_eq!(frame[0] & 0x0f, 2, "TKL");
            assert_eq!(frame.len(), 1 + ext + 1 + 2 + body, "size for body {body}");
            let (q, used) = decode_frame(&frame, 1 << 20).unwrap().unwrap();
            assert_eq!(used, frame.len());
            assert_same_message(&p, &q);
        }
    }

    #[test]
    fn extended_length_values_follow_rfc8323() {
        let f = encode_frame(&response_with_body(12)).unwrap(); // body 13
        assert_eq!(f[1], 0);
        let f = encode_frame(&response_with_body(268)).unwrap(); // body 269
        assert_eq!(f[1..3], [0, 0]);
        let f = encode_frame(&response_with_body(65804)).unwrap(); // body 65805
        assert_eq!(f[1..5], [0, 0, 0, 0]);
    }

    #[test]
    fn request_with_options_round_trips() {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(RequestType::Post);
        p.set_token(vec![1, 2, 3, 4, 5, 6, 7, 8]);
        set_uri(&mut p, "/gw/priv/3?ep=dev1");
        p.payload = b"hello".to_vec();
        let frame = encode_frame(&p).unwrap();
        let (q, used) = decode_frame(&frame, 1152).unwrap().unwrap();
        assert_eq!(used, frame.len());
        assert_same_message(&p, &q);
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete() {
        for body in [0, 12, 13, 300, 70_000] {
            let frame = encode_frame(&response_with_body(body)).unwrap();
            for n in 0..frame.len() {
                assert_eq!(
                    decode_frame(&frame[..n], 1 << 20),
                    Ok(None),
                    "prefix {n} of {}",
                    frame.len()
                );
            }
        }
    }

    #[test]
    fn two_frames_in_one_buffer_decode_one_after_the_other() {
        let a = response_with_body(5);
        let mut b = Packet::new();
        b.header.code = MessageClass::Request(RequestType::Get);
        set_uri(&mut b, "/x");
        let mut buf = encode_frame(&a).unwrap();
        let a_len = buf.len();
        buf.extend(encode_frame(&b).unwrap());
        let (p, used) = decode_frame(&buf, 1152).unwrap().unwrap();
        assert_eq!(used, a_len);
        assert_same_message(&a, &p);
        let (q, used2) = decode_frame(&buf[used..], 1152).unwrap().unwrap();
        assert_eq!(used + used2, buf.len());
        assert_same_message(&b, &q);
    }

    #[test]
    fn tkl_9_to_15_is_an_error() {
        for tkl in 9..=15u8 {
            assert_eq!(
                decode_frame(&[tkl], 1152),
                Err(FrameError::InvalidTokenLength(tkl))
            );
        }
    }

    #[test]
    fn oversize_frame_is_rejected_from_its_header_before_the_body_arrives() {
        let frame = encode_frame(&response_with_body(2000)).unwrap();
        // Only Len/TKL and the 2 extended-length bytes have arrived.
        let err = decode_frame(&frame[..3], 1152).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { max: 1152, .. }),
            "{err:?}"
        );
        // A 4-byte extended length claiming ~4 GiB.
        let err = decode_frame(&[0xf0, 0xff, 0xff, 0xff, 0xff], 1 << 20).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        // Exactly at the limit is fine.
        let f = encode_frame(&response_with_body(100)).unwrap();
        assert!(decode_frame(&f, f.len()).unwrap().is_some());
        assert!(decode_frame(&f, f.len() - 1).is_err());
    }

    #[test]
    fn malformed_options_and_marker_without_payload_are_errors() {
        // Len 1, code 2.05, body: 0xff marker with nothing after it.
        assert!(matches!(
            decode_frame(&[0x10, 0x45, 0xff], 1152),
            Err(FrameError::Malformed(_))
        ));
        // Option delta 15 (reserved).
        assert!(matches!(
            decode_frame(&[0x10, 0x45, 0xf0], 1152),
            Err(FrameError::Malformed(_))
        ));
        // Option claims 5 bytes of value, 1 present.
        assert!(matches!(
            decode_frame(&[0x20, 0x45, 0xb5, b'a'], 1152),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn empty_message_with_content_decodes_as_empty() {
        let (p, used) = decode_frame(&[0x21, 0x00, 9, 0xff, 1], 1152)
            .unwrap()
            .unwrap();
        assert_eq!(used, 5);
        assert_eq!(p.header.code, MessageClass::Empty);
    }

    #[test]
    fn encode_refuses_long_token() {
        let mut p = response_with_body(1);
        p.set_token(vec![0; 9]);
        assert!(encode_frame(&p).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = 0x243f_6a88_85a3_08d3u64;
        let mut next = || {
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let seed = {
            let mut p = response_with_body(40);
            set_uri(&mut p, "/a/b?c");
            encode_frame(&p).unwrap()
        };
        for i in 0..20_000u32 {
            let buf: Vec<u8> = if i % 2 == 0 {
                let len = (next() % 64) as usize;
                (0..len).map(|_| next() as u8).collect()
            } else {
                let mut b = seed.clone();
                for _ in 0..1 + next() % 3 {
                    let pos = (next() as usize) % b.len();
                    b[pos] = next() as u8;
                }
                b
            };
            if let Ok(Some((p, used))) = decode_frame(&buf, 1152) {
                assert!(used <= buf.len());
                let _ = Signal::from_packet(&p);
            }
        }
    }

    #[test]
    fn signals_round_trip_through_frames() {
        let signals = [
            Signal::Csm {
                max_message_size: Some(1 << 20),
                block_wise: true,
            },
            Signal::Csm {
                max_message_size: None,
                block_wise: false,
            },
            Signal::Ping { custody: true },
            Signal::Pong { custody: false },
            Signal::Release {
                alternative_address: Some("coap+tcp://[::1]".into()),
                hold_off: Some(30),
                diagnostic: "maintenance".into(),
            },
            Signal::Abort {
                bad_option: Some(9),
                diagnostic: "bad CSM".into(),
            },
        ];
        for s in signals {
            let frame = encode_frame(&s.to_packet()).unwrap();
            let (p, _) = decode_frame(&frame, 1152).unwrap().unwrap();
            assert_eq!(Signal::from_packet(&p), Some(Ok(s)));
        }
    }

    #[test]
    fn csm_code_and_options_are_interpreted_by_number() {
        let p = Signal::Csm {
            max_message_size: Some(1152),
            block_wise: true,
        }
        .to_packet();
        assert_eq!(u8::from(p.header.code), 0xE1);
        assert_eq!(p.header.code, MessageClass::Reserved(0xE1));
        // Option 4 is what coap-lite calls ETag.
        assert_eq!(p.get_first_option(CoapOption::ETag), Some(&Vec::new()));
        assert_eq!(
            p.get_first_option(CoapOption::from(2)),
            Some(&vec![0x04, 0x80])
        );
    }

    #[test]
    fn unknown_critical_signal_option_is_an_error_and_elective_is_ignored() {
        let mut p = Signal::Csm {
            max_message_size: None,
            block_wise: false,
        }
        .to_packet();
        p.add_option(CoapOption::from(6), vec![1]);
        assert!(matches!(
            Signal::from_packet(&p),
            Some(Ok(Signal::Csm { .. }))
        ));
        p.add_option(CoapOption::from(9), vec![]);
        assert_eq!(
            Signal::from_packet(&p),
            Some(Err(FrameError::BadSignalOption {
                detail: 1,
                option: 9
            }))
        );
    }

    #[test]
    fn non_signals_are_none_and_unknown_signal_codes_are_errors() {
        assert_eq!(Signal::from_packet(&response_with_body(1)), None);
        let mut p = Packet::new();
        p.header.code = MessageClass::from(0xE9);
        assert_eq!(
            Signal::from_packet(&p),
            Some(Err(FrameError::UnknownSignal(9)))
        );
        // A malformed Max-Message-Size (5 bytes).
        let mut p = Packet::new();
        p.header.code = MessageClass::from(CODE_CSM);
        p.add_option(CoapOption::from(2), vec![1; 5]);
        assert!(matches!(
            Signal::from_packet(&p),
            Some(Err(FrameError::BadSignalOption { option: 2, .. }))
        ));
    }
}
