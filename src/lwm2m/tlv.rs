//! OMA LwM2M TLV (Content-Format 11542, Core §7.4.3) for the Access Control
//! object: a bounds-checked TLV reader and writer, and `/2` decode/encode.
//!
//! # Format
//!
//! ```text
//! type byte: bits 7-6 identifier type   00 Object Instance   01 Resource Instance
//!                                       10 Multiple Resource 11 Resource with value
//!            bit 5    id length         0 = 8-bit, 1 = 16-bit
//!            bits 4-3 length type       00 = length in bits 2-0, 01/10/11 = 8/16/24-bit field
//!            bits 2-0 length (when length type is 00)
//! then: id (1 or 2 bytes), length field (0-3 bytes), value (length bytes)
//! ```
//!
//! Integers are big-endian two's complement of 1, 2, 4 or 8 bytes.
//!
//! A `/2` payload is either a sequence of Object Instance TLVs (the whole
//! object) or the resources of one instance directly (`/2/<n>`), then the
//! instance id is the caller's (see [`decode_with_default_instance`]).
//! Nesting is fixed: Object Instance ⊃ Resource | Multiple Resource ⊃
//! Resource Instance; anything else is [`CodecError::Malformed`].

use super::{Assembler, CodecError, Value};
use crate::acl::lwm2m::AccessControl;

/// Format name used in errors.
pub const FORMAT: &str = "TLV";

/// The identifier type of a TLV (bits 7-6 of the type byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 00: Object Instance, value = resource TLVs.
    ObjectInstance,
    /// 01: Resource Instance, value = the resource instance's value.
    ResourceInstance,
    /// 10: Multiple Resource, value = Resource Instance TLVs.
    MultipleResource,
    /// 11: Resource with value.
    Resource,
}

impl Kind {
    fn bits(self) -> u8 {
        match self {
            Kind::ObjectInstance => 0b00,
            Kind::ResourceInstance => 0b01,
            Kind::MultipleResource => 0b10,
            Kind::Resource => 0b11,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::ObjectInstance => "an Object Instance",
            Kind::ResourceInstance => "a Resource Instance",
            Kind::MultipleResource => "a Multiple Resource",
            Kind::Resource => "a Resource",
        }
    }
}

/// One TLV, borrowing its value from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// Identifier type.
    pub kind: Kind,
    /// Identifier.
    pub id: u16,
    /// Value bytes (nested TLVs for containers).
    pub value: &'a [u8],
    /// Offset of the value in the whole payload, for error messages.
    pub value_offset: usize,
}

/// Iterates over the TLVs in `buf`, whose first byte is at `base` in the payload.
/// Yields at most one error, then stops.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    base: usize,
    pos: usize,
    failed: bool,
}

impl<'a> Reader<'a> {
    /// A reader over a whole payload.
    pub fn new(payload: &'a [u8]) -> Self {
        Reader::at(payload, 0)
    }

    fn at(buf: &'a [u8], base: usize) -> Self {
        Reader {
            buf,
            base,
            pos: 0,
            failed: false,
        }
    }

    fn truncated(&self, at: usize) -> CodecError {
        CodecError::Truncated {
            format: FORMAT,
            offset: self.base.saturating_add(at),
        }
    }

    /// Read `n` (≤ 3) bytes as a big-endian unsigned number at `self.pos`.
    fn read_be(&mut self, n: usize) -> Result<usize, CodecError> {
        let end = self.pos.saturating_add(n);
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.truncated(self.buf.len()))?;
        self.pos = end;
        Ok(bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)))
    }

    fn read_one(&mut self) -> Result<Tlv<'a>, CodecError> {
        let Some(&t) = self.buf.get(self.pos) else {
            return Err(self.truncated(self.pos));
        };
        self.pos = self.pos.saturating_add(1);
        let kind = match t >> 6 {
            0b00 => Kind::ObjectInstance,
            0b01 => Kind::ResourceInstance,
            0b10 => Kind::MultipleResource,
            _ => Kind::Resource,
        };
        let id_len = if t & 0x20 != 0 { 2 } else { 1 };
        // At most 2 bytes: always fits in u16.
        let id = u16::try_from(self.read_be(id_len)?).unwrap_or(u16::MAX);
        let len = match (t >> 3) & 0b11 {
            0 => usize::from(t & 0b111),
            n => self.read_be(usize::from(n))?,
        };
        let start = self.pos;
        let end = start.saturating_add(len);
        let value = self
            .buf
            .get(start..end)
            .ok_or_else(|| self.truncated(self.buf.len()))?;
        self.pos = end;
        Ok(Tlv {
            kind,
            id,
            value,
            value_offset: self.base.saturating_add(start),
        })
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<Tlv<'a>, CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let r = self.read_one();
        self.failed = r.is_err();
        Some(r)
    }
}

/// Decode a TLV integer value (1, 2, 4 or 8 bytes, big-endian, signed).
pub fn decode_int(value: &[u8], offset: usize) -> Result<i64, CodecError> {
    let v = match value.len() {
        1 => <[u8; 1]>::try_from(value).map(|b| i64::from(i8::from_be_bytes(b))),
        2 => <[u8; 2]>::try_from(value).map(|b| i64::from(i16::from_be_bytes(b))),
        4 => <[u8; 4]>::try_from(value).map(|b| i64::from(i32::from_be_bytes(b))),
        8 => <[u8; 8]>::try_from(value).map(i64::from_be_bytes),
        _ => {
            return Err(CodecError::Malformed {
                format: FORMAT,
                at: format!("byte {offset}"),
                what: format!("integer of {} bytes (expected 1, 2, 4 or 8)", value.len()),
            });
        }
    };
    v.map_err(|_| CodecError::Truncated {
        format: FORMAT,
        offset,
    })
}

fn misplaced(tlv: &Tlv<'_>, inside: &str) -> CodecError {
    CodecError::Malformed {
        format: FORMAT,
        at: format!("byte {}", tlv.value_offset),
        what: format!("{} (id {}) inside {inside}", tlv.kind.name(), tlv.id),
    }
}

/// Decode a `/2` payload; bare resources are taken as instance 0.
pub fn decode(payload: &[u8]) -> Result<Vec<AccessControl>, CodecError> {
    decode_with_default_instance(payload, 0)
}

/// Decode a `/2` or `/2/<n>` payload. If it holds bare resources (no Object
/// Instance TLV), they form one instance with id `default_instance`. An empty
/// payload is the empty object.
pub fn decode_with_default_instance(
    payload: &[u8],
    default_instance: u16,
) -> Result<Vec<AccessControl>, CodecError> {
    let mut asm = Assembler::new(FORMAT);
    let mut wrapped = None;
    for tlv in Reader::new(payload) {
        let tlv = tlv?;
        let is_instance = tlv.kind == Kind::ObjectInstance;
        if *wrapped.get_or_insert(is_instance) != is_instance {
            return Err(CodecError::Malformed {
                format: FORMAT,
                at: format!("byte {}", tlv.value_offset),
                what: "Object Instance TLVs mixed with resource TLVs at top level".into(),
            });
        }
        match tlv.kind {
            Kind::ObjectInstance => {
                asm.declare_instance(tlv.id)?;
                for res in Reader::at(tlv.value, tlv.value_offset) {
                    resource(&mut asm, tlv.id, res?)?;
                }
            }
            Kind::ResourceInstance => return Err(misplaced(&tlv, "the payload's top level")),
            Kind::MultipleResource | Kind::Resource => {
                asm.touch_instance(default_instance)?;
                resource(&mut asm, default_instance, tlv)?;
            }
        }
    }
    asm.finish()
}

fn resource(asm: &mut Assembler, instance: u16, tlv: Tlv<'_>) -> Result<(), CodecError> {
    match tlv.kind {
        Kind::Resource => {
            let v = decode_int(tlv.value, tlv.value_offset)?;
            asm.value(instance, tlv.id, None, Value::Int(i128::from(v)))
        }
        Kind::MultipleResource => {
            for ri in Reader::at(tlv.value, tlv.value_offset) {
                let ri = ri?;
                if ri.kind != Kind::ResourceInstance {
                    return Err(misplaced(&ri, "a Multiple Resource"));
                }
                let v = decode_int(ri.value, ri.value_offset)?;
                asm.value(instance, tlv.id, Some(ri.id), Value::Int(i128::from(v)))?;
            }
            Ok(())
        }
        Kind::ObjectInstance | Kind::ResourceInstance => Err(misplaced(&tlv, "an Object Instance")),
    }
}

/// Append one TLV to `out`, choosing the shortest id and length encodings.
pub fn write_tlv(out: &mut Vec<u8>, kind: Kind, id: u16, value: &[u8]) -> Result<(), CodecError> {
    let len = value.len();
    let len_type: u8 = match len {
        0..=7 => 0,
        8..=0xFF => 1,
        0x100..=0xFFFF => 2,
        0x1_0000..=0xFF_FFFF => 3,
        _ => {
            return Err(CodecError::Encode {
                format: FORMAT,
                what: format!("value of {len} bytes exceeds the 24-bit length field"),
            });
        }
    };
    // len < 2^24 here, so it fits in u32; the field is its low `len_type` bytes.
    let be = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    let len_bytes = be
        .get(4usize.saturating_sub(usize::from(len_type))..)
        .unwrap_or(&[]);
    let wide_id = id > 0xFF;
    let short_len = if len_type == 0 {
        u8::try_from(len).unwrap_or(0)
    } else {
        0
    };
    out.push((kind.bits() << 6) | (u8::from(wide_id) << 5) | (len_type << 3) | short_len);
    let [id_hi, id_lo] = id.to_be_bytes();
    if wide_id {
        out.push(id_hi);
    }
    out.push(id_lo);
    out.extend_from_slice(len_bytes);
    out.extend_from_slice(value);
    Ok(())
}

/// The shortest TLV integer (1, 2, 4 or 8 bytes) holding `v`.
pub fn encode_int(v: i64) -> Vec<u8> {
    if let Ok(b) = i8::try_from(v) {
        b.to_be_bytes().to_vec()
    } else if let Ok(s) = i16::try_from(v) {
        s.to_be_bytes().to_vec()
    } else if let Ok(w) = i32::try_from(v) {
        w.to_be_bytes().to_vec()
    } else {
        v.to_be_bytes().to_vec()
    }
}

/// The resources of one AC instance, without an Object Instance wrapper
/// (what a client answers to GET `/2/<n>`).
pub fn encode_instance_resources(ac: &AccessControl) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    write_tlv(
        &mut out,
        Kind::Resource,
        0,
        &encode_int(ac.object_id.into()),
    )?;
    write_tlv(
        &mut out,
        Kind::Resource,
        1,
        &encode_int(ac.object_instance_id.into()),
    )?;
    if !ac.acl.is_empty() {
        let mut acl = Vec::new();
        for (ssid, rights) in &ac.acl {
            write_tlv(
                &mut acl,
                Kind::ResourceInstance,
                *ssid,
                &encode_int(rights.bits().into()),
            )?;
        }
        write_tlv(&mut out, Kind::MultipleResource, 2, &acl)?;
    }
    write_tlv(&mut out, Kind::Resource, 3, &encode_int(ac.owner.into()))?;
    Ok(out)
}

/// The whole object `/2`: one Object Instance TLV per instance, in the given order.
pub fn encode(instances: &[AccessControl]) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    for ac in instances {
        let inner = encode_instance_resources(ac)?;
        write_tlv(&mut out, Kind::ObjectInstance, ac.instance, &inner)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lwm2m::testdata::*;

    /// The real `/2/0` resources, as a client sends them.
    const REAL: [u8; 18] = [
        0xc1, 0x00, 0x03, // Object ID 3
        0xc1, 0x01, 0x00, // Object Instance ID 0
        0x87, 0x02, 0x41, 0x00, 0x0f, 0x61, 0x03, 0xe7, 0x01, // ACL {0: 0x0F, 999: 0x01}
        0xc1, 0x03, 0x7b, // Owner 123
    ];

    fn wrapped_real() -> Vec<u8> {
        let mut v = vec![0x08, 0x00, 0x12];
        v.extend_from_slice(&REAL);
        v
    }

    #[test]
    fn decodes_real_vector_of_bare_resources() {
        assert_eq!(decode(&REAL), Ok(vec![real_instance()]));
    }

    #[test]
    fn bare_resources_take_the_given_instance_id() {
        let mut want = real_instance();
        want.instance = 5;
        assert_eq!(decode_with_default_instance(&REAL, 5), Ok(vec![want]));
    }

    #[test]
    fn decodes_real_vector_wrapped_as_object_instance_0() {
        assert_eq!(decode(&wrapped_real()), Ok(vec![real_instance()]));
    }

    #[test]
    fn encodes_exactly_the_real_vector() {
        assert_eq!(
            encode_instance_resources(&real_instance()),
            Ok(REAL.to_vec())
        );
        assert_eq!(encode(&[real_instance()]), Ok(wrapped_real()));
    }

    #[test]
    fn round_trips_varied_object() {
        let bytes = encode(&varied());
        assert_eq!(bytes.and_then(|b| decode(&b)), Ok(varied()));
    }

    #[test]
    fn empty_payload_is_the_empty_object() {
        assert_eq!(decode(&[]), Ok(vec![]));
    }

    #[test]
    fn every_prefix_of_the_real_vector_errors_without_panic() {
        for bytes in [REAL.to_vec(), wrapped_real()] {
            for n in 1..bytes.len() {
                let prefix = bytes.get(..n).unwrap_or(&[]);
                assert!(decode(prefix).is_err(), "prefix of {n} bytes decoded");
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        for seed in 0..2000u64 {
            let len = usize::try_from(seed % 40).unwrap_or(0);
            let _ = decode(&pseudo_random_bytes(seed, len));
        }
    }

    #[test]
    fn rejects_length_past_the_end() {
        // Resource 0 claims 4 bytes but has 1.
        assert!(matches!(
            decode(&[0xc4, 0x00, 0x03]),
            Err(CodecError::Truncated { .. })
        ));
        // 8-bit length field says 200.
        assert!(matches!(
            decode(&[0xc8, 0x00, 200, 0x01]),
            Err(CodecError::Truncated { .. })
        ));
        // Object instance of 0x12 bytes with only 17 given.
        let mut w = wrapped_real();
        w.pop();
        assert!(matches!(decode(&w), Err(CodecError::Truncated { .. })));
    }

    #[test]
    fn rejects_wrong_nesting() {
        // Resource instance at top level.
        assert!(matches!(
            decode(&[0x41, 0x00, 0x0f]),
            Err(CodecError::Malformed { .. })
        ));
        // Object instance inside object instance.
        assert!(matches!(
            decode(&[0x02, 0x00, 0x00, 0x00]),
            Err(CodecError::Malformed { .. })
        ));
        // Resource inside a multiple resource.
        assert!(matches!(
            decode(&[0x83, 0x02, 0xc1, 0x00, 0x01]),
            Err(CodecError::Malformed { .. })
        ));
        // Instances mixed with bare resources.
        let mut mixed = wrapped_real();
        mixed.extend_from_slice(&[0xc1, 0x03, 0x7b]);
        assert!(matches!(decode(&mixed), Err(CodecError::Malformed { .. })));
    }

    #[test]
    fn rejects_out_of_range_values() {
        let with_owner = |owner: &[u8]| {
            let mut v = REAL.get(..15).unwrap_or(&[]).to_vec();
            let mut o = Vec::new();
            let _ = write_tlv(&mut o, Kind::Resource, 3, owner);
            v.extend_from_slice(&o);
            decode(&v)
        };
        assert!(matches!(
            with_owner(&[0xff]),
            Err(CodecError::OutOfRange { .. })
        ));
        assert!(matches!(
            with_owner(&[0x00, 0x01, 0x00, 0x00]),
            Err(CodecError::OutOfRange { .. })
        ));
        assert_eq!(
            with_owner(&[0x00, 0x00, 0xff, 0xff]).map(|v| v.first().map(|a| a.owner)),
            Ok(Some(65535))
        );
        // Rights 0x20 > 31.
        let mut bad = REAL;
        bad[10] = 0x20;
        assert!(matches!(decode(&bad), Err(CodecError::OutOfRange { .. })));
        // Rights negative.
        bad[10] = 0xff;
        assert!(matches!(decode(&bad), Err(CodecError::OutOfRange { .. })));
    }

    #[test]
    fn rejects_bad_integer_widths() {
        assert!(matches!(
            decode(&[0xc3, 0x03, 0x00, 0x00, 0x7b]),
            Err(CodecError::Malformed { .. })
        ));
        assert!(matches!(
            decode(&[0xc0, 0x03]),
            Err(CodecError::Malformed { .. })
        ));
    }

    #[test]
    fn rejects_duplicate_instances_and_resources() {
        let mut twice = wrapped_real();
        twice.extend_from_slice(&wrapped_real());
        assert!(matches!(decode(&twice), Err(CodecError::Duplicate { .. })));
        let mut owner_twice = REAL.to_vec();
        owner_twice.extend_from_slice(&[0xc1, 0x03, 0x7b]);
        assert!(matches!(
            decode(&owner_twice),
            Err(CodecError::Duplicate { .. })
        ));
    }

    #[test]
    fn rejects_instance_missing_owner() {
        let no_owner = REAL.get(..15).unwrap_or(&[]);
        assert!(matches!(
            decode(no_owner),
            Err(CodecError::MissingResource { resource: 3, .. })
        ));
    }

    #[test]
    fn write_tlv_uses_length_fields_for_long_values() {
        let mut out = Vec::new();
        assert_eq!(write_tlv(&mut out, Kind::Resource, 1, &[0u8; 300]), Ok(()));
        assert_eq!(out.get(..4), Some(&[0xd0, 0x01, 0x01, 0x2c][..]));
        let mut r = Reader::new(&out);
        let tlv = r.next();
        assert!(matches!(tlv, Some(Ok(Tlv { id: 1, .. }))));
        assert!(r.next().is_none());
    }

    #[test]
    fn integers_use_the_shortest_width_and_round_trip() {
        for (v, len) in [(0i64, 1), (-128, 1), (128, 2), (-32769, 4), (1 << 40, 8)] {
            let b = encode_int(v);
            assert_eq!(b.len(), len, "{v}");
            assert_eq!(decode_int(&b, 0), Ok(v));
        }
    }
}
