//! The SenML data model shared by [`super::senml_json`] and
//! [`super::senml_cbor`]: one record's fields, base-field resolution (RFC 8428
//! §4.5), and mapping resolved names onto the Access Control object.
//!
//! Resolution: `bn` and `bv` are sticky — they apply to the record that carries
//! them and every later one until replaced. The full name is `bn + n`; the
//! value is `bv + v`. A record with neither `n` nor any value only sets base
//! fields. Fields we do not know are ignored unless their label ends in `_`
//! (RFC 8428 "must understand"), which is an error.

use super::{Assembler, CodecError, Value};
use crate::acl::lwm2m::{AccessControl, LwPath};
use crate::acl::snippet;

/// One SenML record as read from the wire, before resolution.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct RawRecord {
    pub(crate) base_name: Option<String>,
    pub(crate) base_value: Option<Value>,
    pub(crate) name: Option<String>,
    /// `v`, or another value field (`vs`, `vb`, `vd`, `vlo`, `s`) as [`Value::Other`].
    pub(crate) value: Option<Value>,
}

/// Resolves a sequence of records and feeds them to an [`Assembler`].
pub(crate) struct Resolver {
    format: &'static str,
    base_name: String,
    base_value: Option<Value>,
    asm: Assembler,
    index: usize,
}

impl Resolver {
    pub(crate) fn new(format: &'static str) -> Self {
        Resolver {
            format,
            base_name: String::new(),
            base_value: None,
            asm: Assembler::new(format),
            index: 0,
        }
    }

    fn malformed(&self, what: impl Into<String>) -> CodecError {
        CodecError::Malformed {
            format: self.format,
            at: format!("record {}", self.index),
            what: what.into(),
        }
    }

    /// Resolve one record and record its value.
    pub(crate) fn record(&mut self, r: RawRecord) -> Result<(), CodecError> {
        if let Some(bn) = r.base_name {
            self.base_name = bn;
        }
        if let Some(bv) = r.base_value {
            self.base_value = Some(bv);
        }
        let result = self.apply(r.name, r.value);
        self.index = self.index.saturating_add(1);
        result
    }

    fn apply(&mut self, name: Option<String>, value: Option<Value>) -> Result<(), CodecError> {
        if name.is_none() && value.is_none() {
            return Ok(()); // Only base fields.
        }
        let mut full = self.base_name.clone();
        full.push_str(name.as_deref().unwrap_or(""));
        let Some(value) = value else {
            return Err(self.malformed(format!("record for {:?} has no value", snippet(&full))));
        };
        let value = match (self.base_value, value) {
            (None, v) | (Some(_), v @ Value::Other(_)) => v,
            (Some(Value::Int(b)), Value::Int(v)) => match b.checked_add(v) {
                Some(s) => Value::Int(s),
                None => Value::Float(b as f64 + v as f64),
            },
            (Some(Value::Int(b)), Value::Float(v)) => Value::Float(b as f64 + v),
            (Some(Value::Float(b)), Value::Int(v)) => Value::Float(b + v as f64),
            (Some(Value::Float(b)), Value::Float(v)) => Value::Float(b + v),
            (Some(Value::Other(t)), _) => {
                return Err(self.malformed(format!("base value is {t}, not a number")));
            }
        };
        let not_ac = || CodecError::NotAccessControl {
            format: self.format,
            name: snippet(&full),
        };
        let path = LwPath::parse(&full).map_err(|_| not_ac())?;
        let (Some(instance), Some(resource)) = (path.instance_id, path.resource_id) else {
            return Err(not_ac());
        };
        if path.object_id != super::ACCESS_CONTROL_OBJECT {
            return Err(not_ac());
        }
        self.asm
            .value(instance, resource, path.resource_instance_id, value)
    }

    pub(crate) fn finish(self) -> Result<Vec<AccessControl>, CodecError> {
        self.asm.finish()
    }
}

/// The (name, value) pairs a SenML encoder emits for `instances`, with base
/// name `/2/`: e.g. `("0/2/999", 1)`.
pub(crate) fn flatten(instances: &[AccessControl]) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for ac in instances {
        let i = ac.instance;
        out.push((format!("{i}/0"), i64::from(ac.object_id)));
        out.push((format!("{i}/1"), i64::from(ac.object_instance_id)));
        for (ssid, rights) in &ac.acl {
            out.push((format!("{i}/2/{ssid}"), i64::from(rights.bits())));
        }
        out.push((format!("{i}/3"), i64::from(ac.owner)));
    }
    out
}

/// The base name every encoder here uses.
pub(crate) const BASE_NAME: &str = "/2/";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lwm2m::testdata::*;

    fn rec(bn: Option<&str>, n: Option<&str>, v: Option<Value>) -> RawRecord {
        RawRecord {
            base_name: bn.map(str::to_owned),
            base_value: None,
            name: n.map(str::to_owned),
            value: v,
        }
    }

    #[test]
    fn base_name_is_sticky_and_prefixes_names() {
        let mut r = Resolver::new("test");
        let recs = [
            rec(Some("/2/0/"), Some("0"), Some(Value::Int(3))),
            rec(None, Some("1"), Some(Value::Int(0))),
            rec(None, Some("2/0"), Some(Value::Int(15))),
            rec(None, Some("2/999"), Some(Value::Int(1))),
            rec(None, Some("3"), Some(Value::Int(123))),
        ];
        for x in recs {
            assert_eq!(r.record(x), Ok(()));
        }
        assert_eq!(r.finish(), Ok(vec![real_instance()]));
    }

    #[test]
    fn base_value_is_added_to_values() {
        let mut r = Resolver::new("test");
        let mut first = rec(Some("/2/0/"), Some("0"), Some(Value::Int(1)));
        first.base_value = Some(Value::Int(2));
        assert_eq!(r.record(first), Ok(()));
        assert_eq!(r.record(rec(None, Some("1"), Some(Value::Int(-2)))), Ok(()));
        assert_eq!(
            r.record(rec(None, Some("3"), Some(Value::Float(121.0)))),
            Ok(())
        );
        let got = r.finish();
        assert_eq!(
            got.map(|v| v
                .iter()
                .map(|a| (a.object_id, a.object_instance_id, a.owner))
                .collect::<Vec<_>>()),
            Ok(vec![(3, 0, 123)])
        );
    }

    #[test]
    fn base_only_record_is_accepted_but_named_record_needs_value() {
        let mut r = Resolver::new("test");
        assert_eq!(r.record(rec(Some("/2/0/"), None, None)), Ok(()));
        assert!(matches!(
            r.record(rec(None, Some("3"), None)),
            Err(CodecError::Malformed { .. })
        ));
    }

    #[test]
    fn names_outside_the_ac_object_are_rejected() {
        for name in ["/3/0/0", "/2/0", "/2", "2/0/0", "/2/0/x", ""] {
            let mut r = Resolver::new("test");
            assert!(
                matches!(
                    r.record(rec(None, Some(name), Some(Value::Int(1)))),
                    Err(CodecError::NotAccessControl { .. })
                ),
                "{name:?}"
            );
        }
    }

    #[test]
    fn flatten_lists_every_resource_under_base_name() {
        let f = flatten(&[real_instance()]);
        assert_eq!(
            f,
            vec![
                ("0/0".to_owned(), 3),
                ("0/1".to_owned(), 0),
                ("0/2/0".to_owned(), 15),
                ("0/2/999".to_owned(), 1),
                ("0/3".to_owned(), 123),
            ]
        );
    }
}
