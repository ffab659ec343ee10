//! SenML-JSON (Content-Format 110; RFC 8428, LwM2M 1.1 §7.4.4) for the Access
//! Control object.
//!
//! # Format
//!
//! ```text
//! [{"bn":"/2/","n":"0/0","v":3},{"n":"0/1","v":0},{"n":"0/2/0","v":15},
//!  {"n":"0/2/999","v":1},{"n":"0/3","v":123}]
//! ```
//!
//! Decoding accepts any base-name split (`bn` `/2/0/` + `n` `2/999`, or a full
//! `n` with no `bn`), `bv`, integral floats, and ignores `bt`, `t`, `bu`, `u`,
//! `ut`, `bver` and unknown labels (except labels ending in `_`). Resolution is in
//! `super::senml`. JSON nesting depth is bounded by `serde_json`'s recursion
//! limit, so hostile input cannot overflow the stack.

use serde_json::{Map, Value as Json};

use super::senml::{BASE_NAME, RawRecord, Resolver, flatten};
use super::{CodecError, Value};
use crate::acl::lwm2m::AccessControl;

/// Format name used in errors.
pub const FORMAT: &str = "SenML-JSON";

fn malformed(at: String, what: impl Into<String>) -> CodecError {
    CodecError::Malformed {
        format: FORMAT,
        at,
        what: what.into(),
    }
}

fn number(v: &Json) -> Option<Value> {
    let n = v.as_number()?;
    if let Some(i) = n.as_i64() {
        Some(Value::Int(i128::from(i)))
    } else if let Some(u) = n.as_u64() {
        Some(Value::Int(i128::from(u)))
    } else {
        n.as_f64().map(Value::Float)
    }
}

fn text(v: &Json, label: &str, at: &str) -> Result<String, CodecError> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| malformed(at.to_owned(), format!("\"{label}\" is not a string")))
}

fn record(obj: &Map<String, Json>, at: &str) -> Result<RawRecord, CodecError> {
    let mut r = RawRecord::default();
    let set_value = |r: &mut RawRecord, v: Value| {
        if r.value.replace(v).is_some() {
            Err(malformed(at.to_owned(), "record has more than one value"))
        } else {
            Ok(())
        }
    };
    for (label, v) in obj {
        match label.as_str() {
            "bn" => r.base_name = Some(text(v, label, at)?),
            "n" => r.name = Some(text(v, label, at)?),
            "bv" => {
                r.base_value = Some(
                    number(v).ok_or_else(|| malformed(at.to_owned(), "\"bv\" is not a number"))?,
                );
            }
            "v" => {
                let n =
                    number(v).ok_or_else(|| malformed(at.to_owned(), "\"v\" is not a number"))?;
                set_value(&mut r, n)?;
            }
            "vs" => set_value(&mut r, Value::Other("a string (vs)"))?,
            "vb" => set_value(&mut r, Value::Other("a boolean (vb)"))?,
            "vd" => set_value(&mut r, Value::Other("data (vd)"))?,
            "vlo" => set_value(&mut r, Value::Other("an object link (vlo)"))?,
            "s" => set_value(&mut r, Value::Other("a sum (s)"))?,
            l if l.ends_with('_') => {
                return Err(malformed(
                    at.to_owned(),
                    format!(
                        "unsupported must-understand label {:?}",
                        crate::acl::snippet(l)
                    ),
                ));
            }
            _ => {} // bt, t, bu, u, ut, bver, extensions.
        }
    }
    Ok(r)
}

/// Decode a SenML-JSON `/2` payload.
pub fn decode(payload: &[u8]) -> Result<Vec<AccessControl>, CodecError> {
    let doc: Json = serde_json::from_slice(payload).map_err(|e| {
        if e.is_eof() {
            CodecError::Truncated {
                format: FORMAT,
                offset: payload.len(),
            }
        } else {
            malformed(
                format!("line {} column {}", e.line(), e.column()),
                e.to_string(),
            )
        }
    })?;
    let Json::Array(records) = doc else {
        return Err(malformed("top level".into(), "not an array of records"));
    };
    let mut res = Resolver::new(FORMAT);
    for (i, rec) in records.iter().enumerate() {
        let at = format!("record {i}");
        let Json::Object(obj) = rec else {
            return Err(malformed(at, "record is not an object"));
        };
        res.record(record(obj, &at)?)?;
    }
    res.finish()
}

/// Encode the whole object `/2` with base name `/2/`.
pub fn encode(instances: &[AccessControl]) -> Result<Vec<u8>, CodecError> {
    let records: Vec<Json> = flatten(instances)
        .into_iter()
        .enumerate()
        .map(|(i, (n, v))| {
            let mut m = Map::new();
            if i == 0 {
                m.insert("bn".into(), Json::from(BASE_NAME));
            }
            m.insert("n".into(), Json::from(n));
            m.insert("v".into(), Json::from(v));
            Json::Object(m)
        })
        .collect();
    serde_json::to_vec(&records).map_err(|e| CodecError::Encode {
        format: FORMAT,
        what: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lwm2m::testdata::*;

    #[test]
    fn decodes_leshan_style_object() {
        let p = br#"[{"bn":"/2/","n":"0/0","v":3},{"n":"0/1","v":0},{"n":"0/2/0","v":15},
            {"n":"0/2/999","v":1},{"n":"0/3","v":123}]"#;
        assert_eq!(decode(p), Ok(vec![real_instance()]));
    }

    #[test]
    fn decodes_instance_base_name_and_full_names() {
        let split = br#"[{"bn":"/2/0/","n":"0","v":3},{"n":"1","v":0},{"n":"2/0","v":15},
            {"n":"2/999","v":1},{"n":"3","v":123.0}]"#;
        assert_eq!(decode(split), Ok(vec![real_instance()]));
        let full = br#"[{"n":"/2/0/0","v":3},{"n":"/2/0/1","v":0},{"n":"/2/0/2/0","v":15},
            {"n":"/2/0/2/999","v":1},{"n":"/2/0/3","v":123,"t":0,"u":"x"}]"#;
        assert_eq!(decode(full), Ok(vec![real_instance()]));
        let whole_name_in_bn = br#"[{"bn":"/2/0/0","v":3},{"bn":"/2/0/1","v":0},
            {"bn":"/2/0/2/","n":"0","v":15},{"n":"999","v":1},{"bn":"/2/0/3","v":123}]"#;
        assert_eq!(decode(whole_name_in_bn), Ok(vec![real_instance()]));
    }

    #[test]
    fn round_trips_varied_object() {
        assert_eq!(encode(&varied()).and_then(|b| decode(&b)), Ok(varied()));
    }

    #[test]
    fn encodes_base_name_once() {
        let b = encode(&[real_instance()]).unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&b),
            r#"[{"bn":"/2/","n":"0/0","v":3},{"n":"0/1","v":0},{"n":"0/2/0","v":15},{"n":"0/2/999","v":1},{"n":"0/3","v":123}]"#
        );
    }

    #[test]
    fn rejects_wrong_types_and_shapes() {
        assert!(matches!(
            decode(br#"{"n":"/2/0/3","v":1}"#),
            Err(CodecError::Malformed { .. })
        ));
        assert!(matches!(
            decode(br#"[1]"#),
            Err(CodecError::Malformed { .. })
        ));
        assert!(matches!(
            decode(br#"[{"n":"/2/0/3","vs":"123"}]"#),
            Err(CodecError::BadType { .. })
        ));
        assert!(matches!(
            decode(br#"[{"n":"/2/0/3","v":"123"}]"#),
            Err(CodecError::Malformed { .. })
        ));
        assert!(matches!(
            decode(br#"[{"n":"/2/0/3","v":1,"vb":true}]"#),
            Err(CodecError::Malformed { .. })
        ));
        assert!(matches!(
            decode(br#"[{"n":"/2/0/3","v":1,"x_":1}]"#),
            Err(CodecError::Malformed { .. })
        ));
        assert!(matches!(
            decode(br#"[{"n":"/2/0/3","v":1e300}]"#),
            Err(CodecError::BadType { .. })
        ));
        assert!(matches!(
            decode(br#"[{"n":"/2/0/3","v":18446744073709551615}]"#),
            Err(CodecError::OutOfRange { .. })
        ));
    }

    #[test]
    fn every_prefix_errors_without_panic() {
        let b = encode(&[real_instance()]).unwrap_or_default();
        for n in 0..b.len() {
            assert!(decode(b.get(..n).unwrap_or(&[])).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert!(decode(deep.as_bytes()).is_err());
    }
}
