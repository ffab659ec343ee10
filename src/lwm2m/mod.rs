//! LwM2M content formats for the Access Control object (`/2`): decode what a
//! device answers to GET `/2` or `/2/<n>`, encode what a simulated device sends.
//!
//! Formats: [`tlv`] (11542), [`senml_json`] (110), [`senml_cbor`] (112) and
//! [`lwm2m_cbor`] (11544), all decoded and encoded. Every decoder is total: any
//! byte string yields `Ok` or a typed [`CodecError`], never a panic, and work
//! is bounded by the payload length.
//!
//! Each decoder feeds the same assembler, which turns (instance, resource,
//! resource instance, value) triples into [`AccessControl`] values and checks
//! them: Object ID, Object Instance ID and Owner are mandatory and must fit in
//! a `u16`; ACL entries (resource 2, resource instance = Short Server ID) must be
//! 0..=31; nothing may be given twice. Resources other than 0..=3 are ignored
//! (forward compatibility, as LwM2M clients do). Instances come out sorted by
//! AC instance id.
//!
//! This module owns only the payload bytes ↔ values mapping; the ACL model
//! and policies are in [`crate::acl::lwm2m`], CoAP is elsewhere.

pub mod lwm2m_cbor;
pub mod senml_cbor;
pub mod senml_json;
pub mod tlv;

pub(crate) mod cbor;
mod senml;

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;

use crate::acl::lwm2m::{AccessControl, Rights};

/// CoAP Content-Format numbers used by the gateway.
pub mod content_format {
    /// text/plain; charset=utf-8
    pub const TEXT: u16 = 0;
    /// application/link-format
    pub const LINK_FORMAT: u16 = 40;
    /// application/json
    pub const JSON: u16 = 50;
    /// application/cbor
    pub const CBOR: u16 = 60;
    /// application/senml+json
    pub const SENML_JSON: u16 = 110;
    /// application/senml+cbor
    pub const SENML_CBOR: u16 = 112;
    /// application/vnd.oma.lwm2m+tlv
    pub const TLV: u16 = 11542;
    /// application/vnd.oma.lwm2m+cbor
    pub const LWM2M_CBOR: u16 = 11544;
}

/// The Access Control object's ID.
pub const ACCESS_CONTROL_OBJECT: u16 = 2;

/// Resource ids of the Access Control object.
pub mod resource {
    /// Object ID (single, integer).
    pub const OBJECT_ID: u16 = 0;
    /// Object Instance ID (single, integer).
    pub const OBJECT_INSTANCE_ID: u16 = 1;
    /// ACL (multiple, integer; resource instance id = Short Server ID).
    pub const ACL: u16 = 2;
    /// Access Control Owner (single, integer).
    pub const OWNER: u16 = 3;
}

/// A `/2` payload that cannot be decoded, or instances that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// We do not decode (or encode) this Content-Format for `/2`.
    #[error("unsupported content format {content_format} for the Access Control object")]
    UnsupportedContentFormat {
        /// The CoAP Content-Format number.
        content_format: u16,
    },
    /// The payload ends in the middle of an item.
    #[error("{format}: payload truncated at byte {offset}")]
    Truncated {
        /// Format name, e.g. `"TLV"`.
        format: &'static str,
        /// Byte offset where more input was needed.
        offset: usize,
    },
    /// The bytes do not follow the format (structure, nesting, header).
    #[error("{format}: {what} at {at}")]
    Malformed {
        /// Format name.
        format: &'static str,
        /// Where, e.g. `"byte 12"` or `"record 3"`.
        at: String,
        /// What is wrong.
        what: String,
    },
    /// A name or key that is not a resource (instance) of `/2`.
    #[error("{format}: {name:?} is not a resource of the Access Control object")]
    NotAccessControl {
        /// Format name.
        format: &'static str,
        /// The offending name or path (truncated).
        name: String,
    },
    /// A value of the wrong type (the AC object's resources are all integers).
    #[error("{format}: {path} must be an integer, found {found}")]
    BadType {
        /// Format name.
        format: &'static str,
        /// Resource path, e.g. `/2/0/3`.
        path: String,
        /// What was found instead.
        found: &'static str,
    },
    /// An integer outside the resource's range.
    #[error("{format}: {path} = {value} is out of range {range}")]
    OutOfRange {
        /// Format name.
        format: &'static str,
        /// Resource path.
        path: String,
        /// The value found.
        value: String,
        /// The allowed range.
        range: &'static str,
    },
    /// A resource, resource instance or instance given twice.
    #[error("{format}: {path} appears more than once")]
    Duplicate {
        /// Format name.
        format: &'static str,
        /// The repeated path.
        path: String,
    },
    /// A mandatory resource is absent from an instance.
    #[error("{format}: AC instance /2/{instance} lacks resource {resource} ({name})")]
    MissingResource {
        /// Format name.
        format: &'static str,
        /// AC instance id.
        instance: u16,
        /// Missing resource id.
        resource: u16,
        /// Its name.
        name: &'static str,
    },
    /// Something too big to encode in the format (e.g. a TLV over 16 MiB).
    #[error("{format}: cannot encode: {what}")]
    Encode {
        /// Format name.
        format: &'static str,
        /// What failed.
        what: String,
    },
}

/// Decode a GET `/2` (whole object) or `/2/<n>` (one instance) payload into AC
/// instances, sorted by instance id.
///
/// Formats accepted: TLV, SenML-JSON, SenML-CBOR and LwM2M-CBOR. For a TLV
/// payload that holds bare resources (no Object Instance wrapper, as some
/// clients answer `/2/<n>`) the instance id is unknown and taken as 0; use
/// [`tlv::decode_with_default_instance`] to supply `<n>` instead.
pub fn decode_access_control(
    content_format: u16,
    payload: &[u8],
) -> Result<Vec<AccessControl>, CodecError> {
    match content_format {
        content_format::TLV => tlv::decode(payload),
        content_format::SENML_JSON => senml_json::decode(payload),
        content_format::SENML_CBOR => senml_cbor::decode(payload),
        content_format::LWM2M_CBOR => lwm2m_cbor::decode(payload),
        other => Err(CodecError::UnsupportedContentFormat {
            content_format: other,
        }),
    }
}

/// Encode AC instances as the whole object `/2` in any of the four formats.
/// Instance ids must be distinct (else [`CodecError::Duplicate`]).
pub fn encode_access_control(
    content_format: u16,
    instances: &[AccessControl],
) -> Result<Vec<u8>, CodecError> {
    let format = format_name(content_format)
        .ok_or(CodecError::UnsupportedContentFormat { content_format })?;
    let mut seen = std::collections::BTreeSet::new();
    for ac in instances {
        if !seen.insert(ac.instance) {
            return Err(CodecError::Duplicate {
                format,
                path: format!("/2/{}", ac.instance),
            });
        }
    }
    match content_format {
        content_format::TLV => tlv::encode(instances),
        content_format::SENML_JSON => senml_json::encode(instances),
        content_format::SENML_CBOR => senml_cbor::encode(instances),
        content_format::LWM2M_CBOR => lwm2m_cbor::encode(instances),
        other => Err(CodecError::UnsupportedContentFormat {
            content_format: other,
        }),
    }
}

/// The short name of a supported `/2` format, for messages.
pub fn format_name(content_format: u16) -> Option<&'static str> {
    match content_format {
        content_format::TLV => Some(tlv::FORMAT),
        content_format::SENML_JSON => Some(senml_json::FORMAT),
        content_format::SENML_CBOR => Some(senml_cbor::FORMAT),
        content_format::LWM2M_CBOR => Some(lwm2m_cbor::FORMAT),
        _ => None,
    }
}

/// A decoded scalar, before it is checked against the resource's type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value {
    /// An integer (wide enough for any CBOR or JSON integer).
    Int(i128),
    /// A floating-point number (SenML may carry integers as floats).
    Float(f64),
    /// Anything else; the name of its type, for messages.
    Other(&'static str),
}

impl Value {
    /// The value as an integer, if it is one (floats only when integral).
    fn as_int(self) -> Result<i128, &'static str> {
        match self {
            Value::Int(i) => Ok(i),
            Value::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e30 => {
                // |f| < 1e30 < i128::MAX, and it is integral: the cast is exact.
                Ok(f as i128)
            }
            Value::Float(_) => Err("a non-integral or huge number"),
            Value::Other(t) => Err(t),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Other(t) => f.write_str(t),
        }
    }
}

/// Instance under construction.
#[derive(Debug, Default)]
struct Partial {
    object_id: Option<u16>,
    object_instance_id: Option<u16>,
    acl: BTreeMap<u16, Rights>,
    owner: Option<u16>,
}

/// Collects resource values from any decoder and checks them into
/// [`AccessControl`] values.
#[derive(Debug)]
pub(crate) struct Assembler {
    format: &'static str,
    instances: BTreeMap<u16, Partial>,
}

fn res_path(instance: u16, resource: u16, resource_instance: Option<u16>) -> String {
    match resource_instance {
        Some(ri) => format!("/2/{instance}/{resource}/{ri}"),
        None => format!("/2/{instance}/{resource}"),
    }
}

/// LwM2M ids are 0..=65534: 65535 is reserved (it never names an instance, and
/// it is no Short Server ID, so no ACL key). Every format is held to it here, so
/// what one decoder accepts, every encoder can express and every decoder accepts.
fn check_id(
    format: &'static str,
    path: impl FnOnce() -> String,
    id: u16,
) -> Result<(), CodecError> {
    if id == u16::MAX {
        return Err(CodecError::OutOfRange {
            format,
            path: path(),
            value: id.to_string(),
            range: "ids 0..=65534",
        });
    }
    Ok(())
}

impl Assembler {
    pub(crate) fn new(format: &'static str) -> Self {
        Assembler {
            format,
            instances: BTreeMap::new(),
        }
    }

    /// Declare an instance (so that an instance with no resources is reported
    /// as missing them). Declaring the same instance twice is an error.
    pub(crate) fn declare_instance(&mut self, instance: u16) -> Result<(), CodecError> {
        check_id(self.format, || format!("/2/{instance}"), instance)?;
        match self.instances.entry(instance) {
            Entry::Occupied(_) => Err(CodecError::Duplicate {
                format: self.format,
                path: format!("/2/{instance}"),
            }),
            Entry::Vacant(v) => {
                v.insert(Partial::default());
                Ok(())
            }
        }
    }

    /// Declare that an instance has the (multiple) ACL resource, possibly empty.
    pub(crate) fn touch_instance(&mut self, instance: u16) -> Result<(), CodecError> {
        check_id(self.format, || format!("/2/{instance}"), instance)?;
        self.instances.entry(instance).or_default();
        Ok(())
    }

    /// Record one resource (instance) value.
    pub(crate) fn value(
        &mut self,
        instance: u16,
        resource: u16,
        resource_instance: Option<u16>,
        value: Value,
    ) -> Result<(), CodecError> {
        let format = self.format;
        let path = || res_path(instance, resource, resource_instance);
        check_id(format, path, instance)?;
        if let Some(ri) = resource_instance {
            check_id(format, path, ri)?;
        }
        if resource > resource::OWNER {
            return Ok(()); // Not part of the AC object as we know it: ignore.
        }
        let int = value.as_int().map_err(|found| CodecError::BadType {
            format,
            path: path(),
            found,
        })?;
        let p = self.instances.entry(instance).or_default();
        if resource == resource::ACL {
            let Some(ssid) = resource_instance else {
                return Err(CodecError::Malformed {
                    format,
                    at: path(),
                    what: "the ACL is a multiple resource, but a single value was given".into(),
                });
            };
            let rights = u8::try_from(int)
                .ok()
                .and_then(Rights::from_bits)
                .ok_or_else(|| CodecError::OutOfRange {
                    format,
                    path: path(),
                    value: int.to_string(),
                    range: "0..=31",
                })?;
            return match p.acl.entry(ssid) {
                Entry::Occupied(_) => Err(CodecError::Duplicate {
                    format,
                    path: path(),
                }),
                Entry::Vacant(v) => {
                    v.insert(rights);
                    Ok(())
                }
            };
        }
        if resource_instance.is_some() {
            return Err(CodecError::Malformed {
                format,
                at: path(),
                what: "a single resource was given a resource instance".into(),
            });
        }
        let v = u16::try_from(int).map_err(|_| CodecError::OutOfRange {
            format,
            path: path(),
            value: int.to_string(),
            range: "0..=65535",
        })?;
        let slot = match resource {
            resource::OBJECT_ID => &mut p.object_id,
            resource::OBJECT_INSTANCE_ID => &mut p.object_instance_id,
            _ => &mut p.owner,
        };
        if slot.is_some() {
            return Err(CodecError::Duplicate {
                format,
                path: path(),
            });
        }
        *slot = Some(v);
        Ok(())
    }

    /// Check every instance is complete and return them sorted by id.
    pub(crate) fn finish(self) -> Result<Vec<AccessControl>, CodecError> {
        let format = self.format;
        let missing = |instance, resource, name| CodecError::MissingResource {
            format,
            instance,
            resource,
            name,
        };
        self.instances
            .into_iter()
            .map(|(instance, p)| {
                Ok(AccessControl {
                    instance,
                    object_id: p
                        .object_id
                        .ok_or_else(|| missing(instance, resource::OBJECT_ID, "Object ID"))?,
                    object_instance_id: p.object_instance_id.ok_or_else(|| {
                        missing(instance, resource::OBJECT_INSTANCE_ID, "Object Instance ID")
                    })?,
                    acl: p.acl,
                    owner: p.owner.ok_or_else(|| {
                        missing(instance, resource::OWNER, "Access Control Owner")
                    })?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod testdata {
    //! Shared fixtures for the codec tests.
    use crate::acl::lwm2m::{AccessControl, OBJECT_LEVEL, Rights};

    /// `/2/0` = {ObjID 3, InstID 0, ACL {0: 0x0F, 999: 0x01}, owner 123}.
    pub(crate) fn real_instance() -> AccessControl {
        AccessControl::new(0, 3, 0, 123)
            .with_rights(
                0,
                Rights::READ | Rights::WRITE | Rights::EXECUTE | Rights::DELETE,
            )
            .with_rights(999, Rights::READ)
    }

    /// A varied object: the real instance, an object-level one with an empty
    /// ACL, and one with wide ids.
    pub(crate) fn varied() -> Vec<AccessControl> {
        vec![
            real_instance(),
            AccessControl::new(1, 3, OBJECT_LEVEL, 101),
            AccessControl::new(300, 65534, 65534, 65535)
                .with_rights(1, Rights::FULL)
                .with_rights(65534, Rights::CREATE),
        ]
    }

    /// Tiny deterministic PRNG (xorshift64*), so garbage tests need no dependency.
    pub(crate) fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testdata::*;
    use super::*;

    /// Found by the `lwm2m_ac` fuzz target: TLV took ACL key 65535 (a reserved id), which
    /// SenML names cannot carry, so the SenML-JSON re-encoding did not decode.
    #[test]
    fn reserved_id_65535_is_refused_by_every_decoder() {
        let tlv_fuzz_case = [
            193, 0, 3, 193, 1, 0, 135, 2, 65, 93, 15, 97, 255, 255, 1, 193, 3, 115,
        ];
        assert!(matches!(
            tlv::decode_with_default_instance(&tlv_fuzz_case, 128),
            Err(CodecError::OutOfRange { .. })
        ));
        let acl_key = [AccessControl::new(1, 3, 0, 101).with_rights(65534, Rights::READ)];
        let instance = [AccessControl::new(65534, 3, 0, 101)];
        for format in [
            content_format::TLV,
            content_format::SENML_JSON,
            content_format::SENML_CBOR,
            content_format::LWM2M_CBOR,
        ] {
            for (good, needle, patch) in [(&acl_key, 65534u16, 65535u16), (&instance, 65534, 65535)]
            {
                let bytes = encode_access_control(format, good).unwrap();
                assert_eq!(
                    decode_access_control(format, &bytes).unwrap(),
                    good.to_vec()
                );
                let bad = replace_id(format, &bytes, needle, patch);
                assert!(
                    decode_access_control(format, &bad).is_err(),
                    "{format}: id {patch} accepted"
                );
            }
        }
    }

    /// `bytes` with the id `from` replaced by `to`, in the format's own spelling of ids.
    fn replace_id(format: u16, bytes: &[u8], from: u16, to: u16) -> Vec<u8> {
        let (from, to): (Vec<u8>, Vec<u8>) = match format {
            content_format::SENML_JSON | content_format::SENML_CBOR => {
                (from.to_string().into(), to.to_string().into())
            }
            _ => (from.to_be_bytes().to_vec(), to.to_be_bytes().to_vec()),
        };
        let at = bytes
            .windows(from.len())
            .position(|w| w == from.as_slice())
            .unwrap_or_else(|| panic!("{format}: id not found in {bytes:?}"));
        [&bytes[..at], &to, &bytes[at + from.len()..]].concat()
    }

    #[test]
    fn unsupported_content_format_is_an_error_both_ways() {
        assert_eq!(
            decode_access_control(content_format::TEXT, b""),
            Err(CodecError::UnsupportedContentFormat { content_format: 0 })
        );
        assert_eq!(
            encode_access_control(content_format::JSON, &[]),
            Err(CodecError::UnsupportedContentFormat { content_format: 50 })
        );
    }

    #[test]
    fn every_format_round_trips_the_varied_object() {
        for cf in [
            content_format::TLV,
            content_format::SENML_JSON,
            content_format::SENML_CBOR,
            content_format::LWM2M_CBOR,
        ] {
            let bytes = encode_access_control(cf, &varied());
            let back = bytes.and_then(|b| decode_access_control(cf, &b));
            assert_eq!(back, Ok(varied()), "content format {cf}");
        }
    }

    #[test]
    fn encoding_rejects_duplicate_instance_ids() {
        let dup = [real_instance(), real_instance()];
        assert!(matches!(
            encode_access_control(content_format::TLV, &dup),
            Err(CodecError::Duplicate { .. })
        ));
    }

    #[test]
    fn garbage_never_panics_in_any_decoder() {
        for cf in [
            content_format::TLV,
            content_format::SENML_JSON,
            content_format::SENML_CBOR,
            content_format::LWM2M_CBOR,
        ] {
            for seed in 0..300u64 {
                let len = usize::try_from(seed % 64).unwrap_or(0);
                let _ = decode_access_control(cf, &pseudo_random_bytes(seed, len));
            }
        }
    }

    #[test]
    fn assembler_reports_missing_mandatory_resources() {
        let mut a = Assembler::new("test");
        assert_eq!(a.declare_instance(4), Ok(()));
        assert_eq!(a.value(4, 0, None, Value::Int(3)), Ok(()));
        assert_eq!(a.value(4, 1, None, Value::Int(0)), Ok(()));
        assert!(matches!(
            a.finish(),
            Err(CodecError::MissingResource {
                instance: 4,
                resource: 3,
                ..
            })
        ));
    }

    #[test]
    fn assembler_checks_ranges_types_and_duplicates() {
        let mut a = Assembler::new("test");
        assert!(matches!(
            a.value(0, 2, Some(1), Value::Int(32)),
            Err(CodecError::OutOfRange { .. })
        ));
        assert!(matches!(
            a.value(0, 3, None, Value::Int(-1)),
            Err(CodecError::OutOfRange { .. })
        ));
        assert!(matches!(
            a.value(0, 3, None, Value::Int(65536)),
            Err(CodecError::OutOfRange { .. })
        ));
        assert!(matches!(
            a.value(0, 3, None, Value::Other("a string")),
            Err(CodecError::BadType { .. })
        ));
        assert!(matches!(
            a.value(0, 3, None, Value::Float(1.5)),
            Err(CodecError::BadType { .. })
        ));
        assert_eq!(a.value(0, 3, None, Value::Float(123.0)), Ok(()));
        assert!(matches!(
            a.value(0, 3, None, Value::Int(1)),
            Err(CodecError::Duplicate { .. })
        ));
        assert!(matches!(
            a.value(0, 2, None, Value::Int(1)),
            Err(CodecError::Malformed { .. })
        ));
        assert!(matches!(
            a.value(0, 0, Some(1), Value::Int(1)),
            Err(CodecError::Malformed { .. })
        ));
        assert_eq!(a.value(0, 7, None, Value::Other("a string")), Ok(()));
    }
}
