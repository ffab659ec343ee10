//! SenML-CBOR (Content-Format 112; RFC 8428 §6, LwM2M 1.1 §7.4.5) for the
//! Access Control object.
//!
//! # Format
//!
//! The SenML-JSON data model with integer labels: `bver` -1, `bn` -2, `bt` -3,
//! `bu` -4, `bv` -5, `bs` -6, `n` 0, `u` 1, `v` 2, `vs` 3, `vb` 4, `s` 5, `t` 6,
//! `ut` 7, `vd` 8; LwM2M adds the text label `"vlo"`.
//!
//! ```text
//! [{-2: "/2/", 0: "0/0", 2: 3}, {0: "0/1", 2: 0}, {0: "0/2/0", 2: 15},
//!  {0: "0/2/999", 2: 1}, {0: "0/3", 2: 123}]
//! ```
//!
//! Definite and indefinite arrays, maps and text strings are accepted, and
//! numbers of any CBOR width including half floats. Unknown integer labels and
//! text labels are skipped, except text labels ending in `_` (must-understand).
//! Trailing bytes after the array are an error.

use minicbor::{Decoder, Encoder};

use super::cbor::{self, Items};
use super::senml::{BASE_NAME, RawRecord, Resolver, flatten};
use super::{CodecError, Value};
use crate::acl::lwm2m::AccessControl;

/// Format name used in errors.
pub const FORMAT: &str = "SenML-CBOR";

/// SenML-CBOR labels (RFC 8428 Table 6).
pub mod label {
    /// Base version.
    pub const BVER: i64 = -1;
    /// Base name.
    pub const BN: i64 = -2;
    /// Base time.
    pub const BT: i64 = -3;
    /// Base unit.
    pub const BU: i64 = -4;
    /// Base value.
    pub const BV: i64 = -5;
    /// Base sum.
    pub const BS: i64 = -6;
    /// Name.
    pub const N: i64 = 0;
    /// Unit.
    pub const U: i64 = 1;
    /// Numeric value.
    pub const V: i64 = 2;
    /// String value.
    pub const VS: i64 = 3;
    /// Boolean value.
    pub const VB: i64 = 4;
    /// Sum.
    pub const S: i64 = 5;
    /// Time.
    pub const T: i64 = 6;
    /// Update time.
    pub const UT: i64 = 7;
    /// Data value.
    pub const VD: i64 = 8;
}

fn set_value(d: &Decoder<'_>, r: &mut RawRecord, v: Value) -> Result<(), CodecError> {
    if r.value.replace(v).is_some() {
        return Err(cbor::malformed(FORMAT, d, "record has more than one value"));
    }
    Ok(())
}

fn number(d: &mut Decoder<'_>, what: &str) -> Result<Value, CodecError> {
    cbor::number(FORMAT, d)?
        .ok_or_else(|| cbor::malformed(FORMAT, d, format!("{what} is not a number")))
}

fn record(d: &mut Decoder<'_>) -> Result<RawRecord, CodecError> {
    let mut r = RawRecord::default();
    let mut fields = Items::map(FORMAT, d, "record")?;
    while fields.next(FORMAT, d)? {
        let len = d.input().len();
        let key_type = d.datatype().map_err(|e| cbor::err(FORMAT, len, e))?;
        if cbor::is_int(key_type) {
            match i64::try_from(cbor::int(FORMAT, d)?).unwrap_or(i64::MIN) {
                label::BN => r.base_name = Some(cbor::text(FORMAT, d, "bn")?),
                label::N => r.name = Some(cbor::text(FORMAT, d, "n")?),
                label::BV => r.base_value = Some(number(d, "bv")?),
                label::V => {
                    let v = number(d, "v")?;
                    set_value(d, &mut r, v)?;
                }
                l @ (label::VS | label::VB | label::VD | label::S) => {
                    cbor::skip(FORMAT, d)?;
                    let name = match l {
                        label::VS => "a string (vs)",
                        label::VB => "a boolean (vb)",
                        label::VD => "data (vd)",
                        _ => "a sum (s)",
                    };
                    set_value(d, &mut r, Value::Other(name))?;
                }
                _ => cbor::skip(FORMAT, d)?, // bver, bt, bu, bs, u, t, ut, extensions.
            }
        } else if matches!(
            key_type,
            minicbor::data::Type::String | minicbor::data::Type::StringIndef
        ) {
            let key = cbor::text(FORMAT, d, "label")?;
            if key == "vlo" {
                cbor::skip(FORMAT, d)?;
                set_value(d, &mut r, Value::Other("an object link (vlo)"))?;
            } else if key.ends_with('_') {
                return Err(cbor::malformed(
                    FORMAT,
                    d,
                    format!(
                        "unsupported must-understand label {:?}",
                        crate::acl::snippet(&key)
                    ),
                ));
            } else {
                cbor::skip(FORMAT, d)?;
            }
        } else {
            return Err(cbor::malformed(
                FORMAT,
                d,
                format!("record label is {key_type}, expected an integer or text"),
            ));
        }
    }
    Ok(r)
}

/// Decode a SenML-CBOR `/2` payload.
pub fn decode(payload: &[u8]) -> Result<Vec<AccessControl>, CodecError> {
    let mut d = Decoder::new(payload);
    let mut records = Items::array(FORMAT, &mut d, "pack")?;
    let mut res = Resolver::new(FORMAT);
    while records.next(FORMAT, &mut d)? {
        let r = record(&mut d)?;
        res.record(r)?;
    }
    cbor::end(FORMAT, &d)?;
    res.finish()
}

/// Encode the whole object `/2` with base name `/2/`.
pub fn encode(instances: &[AccessControl]) -> Result<Vec<u8>, CodecError> {
    let flat = flatten(instances);
    let mut e = Encoder::new(Vec::new());
    let fail = cbor::enc_err(FORMAT);
    e.array(flat.len() as u64).map_err(&fail)?;
    for (i, (n, v)) in flat.iter().enumerate() {
        if i == 0 {
            e.map(3)
                .and_then(|e| e.i64(label::BN))
                .and_then(|e| e.str(BASE_NAME))
                .map_err(&fail)?;
        } else {
            e.map(2).map_err(&fail)?;
        }
        e.i64(label::N)
            .and_then(|e| e.str(n))
            .and_then(|e| e.i64(label::V))
            .and_then(|e| e.i64(*v))
            .map_err(&fail)?;
    }
    Ok(e.into_writer())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lwm2m::testdata::*;

    fn real_bytes() -> Vec<u8> {
        encode(&[real_instance()]).unwrap_or_default()
    }

    #[test]
    fn encodes_the_expected_bytes() {
        let mut want = vec![
            0x85, 0xa3, 0x21, 0x63, b'/', b'2', b'/', 0x00, 0x63, b'0', b'/', b'0', 0x02, 0x03,
        ];
        want.extend_from_slice(&[0xa2, 0x00, 0x63, b'0', b'/', b'1', 0x02, 0x00]);
        want.extend_from_slice(&[0xa2, 0x00, 0x65, b'0', b'/', b'2', b'/', b'0', 0x02, 0x0f]);
        want.extend_from_slice(&[
            0xa2, 0x00, 0x67, b'0', b'/', b'2', b'/', b'9', b'9', b'9', 0x02, 0x01,
        ]);
        want.extend_from_slice(&[0xa2, 0x00, 0x63, b'0', b'/', b'3', 0x02, 0x18, 0x7b]);
        assert_eq!(real_bytes(), want);
    }

    #[test]
    fn decodes_the_real_instance() {
        assert_eq!(decode(&real_bytes()), Ok(vec![real_instance()]));
    }

    #[test]
    fn round_trips_varied_object() {
        assert_eq!(encode(&varied()).and_then(|b| decode(&b)), Ok(varied()));
    }

    #[test]
    fn decodes_indefinite_lengths_half_floats_and_ignored_labels() {
        // [_ {_ -2: "/2/0/", 0: "0", 2: 3, 6: 0}, {0: "1", 2: 0.0 (f16)}, {"x": 1, 0: "3", 2: 123}]
        let bytes = [
            0x9f, 0xbf, 0x21, 0x65, b'/', b'2', b'/', b'0', b'/', 0x00, 0x61, b'0', 0x02, 0x03,
            0x06, 0x00, 0xff, 0xa2, 0x00, 0x61, b'1', 0x02, 0xf9, 0x00, 0x00, 0xa3, 0x61, b'x',
            0x01, 0x00, 0x61, b'3', 0x02, 0x18, 0x7b, 0xff,
        ];
        let got = decode(&bytes);
        assert_eq!(got, Ok(vec![AccessControl::new(0, 3, 0, 123)]));
    }

    #[test]
    fn every_prefix_errors_without_panic() {
        let b = real_bytes();
        for n in 0..b.len() {
            assert!(decode(b.get(..n).unwrap_or(&[])).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        for seed in 0..2000u64 {
            let len = usize::try_from(seed % 48).unwrap_or(0);
            let _ = decode(&pseudo_random_bytes(seed, len));
        }
        // Random mutations of a valid payload.
        let b = real_bytes();
        for seed in 0..2000u64 {
            let mut m = b.clone();
            let noise = pseudo_random_bytes(seed, 2);
            let at = usize::from(noise.first().copied().unwrap_or(0)) % m.len().max(1);
            if let Some(x) = m.get_mut(at) {
                *x = noise.get(1).copied().unwrap_or(0);
            }
            let _ = decode(&m);
        }
    }

    #[test]
    fn rejects_bad_shapes_and_types() {
        // Not an array.
        assert!(matches!(decode(&[0xa0]), Err(CodecError::Malformed { .. })));
        // Record not a map.
        assert!(matches!(
            decode(&[0x81, 0x01]),
            Err(CodecError::Malformed { .. })
        ));
        // v is a string.
        assert!(matches!(
            decode(&[
                0x81, 0xa2, 0x00, 0x66, b'/', b'2', b'/', b'0', b'/', b'3', 0x02, 0x61, b'1'
            ]),
            Err(CodecError::Malformed { .. })
        ));
        // vs on an AC resource.
        assert!(matches!(
            decode(&[
                0x81, 0xa2, 0x00, 0x66, b'/', b'2', b'/', b'0', b'/', b'3', 0x03, 0x61, b'1'
            ]),
            Err(CodecError::BadType { .. })
        ));
        // Trailing bytes.
        let mut t = real_bytes();
        t.push(0x00);
        assert!(matches!(decode(&t), Err(CodecError::Malformed { .. })));
        // Huge declared length with no content.
        assert!(matches!(
            decode(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(CodecError::Truncated { .. })
        ));
    }

    #[test]
    fn deep_nesting_in_ignored_fields_does_not_overflow() {
        // [{0: "/2/0/3", 2: 1, 9: [[[[...]]]]}]
        let mut b = vec![
            0x81, 0xa3, 0x00, 0x66, b'/', b'2', b'/', b'0', b'/', b'3', 0x02, 0x01, 0x09,
        ];
        b.extend(std::iter::repeat_n(0x81, 100_000));
        b.push(0x00);
        assert!(matches!(
            decode(&b),
            Err(CodecError::MissingResource { .. })
        ));
    }
}
