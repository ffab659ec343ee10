//! LwM2M-CBOR (Content-Format 11544, LwM2M 1.2 §7.4.7) for the Access Control
//! object.
//!
//! # Format
//!
//! Nested maps keyed by path ids, leaves are the values:
//!
//! ```text
//! {2: {0: {0: 3, 1: 0, 2: {0: 15, 999: 1}, 3: 123}}}
//! ```
//!
//! What we accept:
//! * a key is an unsigned integer (one path level) or a non-empty array of
//!   unsigned integers (several levels at once, e.g. `{[2, 0]: {0: 3, …}}`);
//! * [`decode`] expects the outermost map keyed from the root (object id 2 at
//!   the first level), which is what the spec produces for any request;
//!   [`decode_at`] takes the request path as a base for payloads rooted lower
//!   (e.g. base `[2, 0]` for `{0: 3, 1: 0, 2: {…}, 3: 123}`);
//! * definite and indefinite maps; integer leaves of any width or integral floats.
//!
//! Paths deeper than 4 levels, paths outside `/2` and non-integer leaves on
//! AC resources are errors. Depth is bounded (≤ 4 map levels), so recursion is safe.

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

use super::cbor::{self, Items};
use super::{ACCESS_CONTROL_OBJECT, Assembler, CodecError};
use crate::acl::lwm2m::AccessControl;

/// Format name used in errors.
pub const FORMAT: &str = "LwM2M-CBOR";

/// The deepest LwM2M path: object / instance / resource / resource instance.
const MAX_DEPTH: usize = 4;

fn path_string(path: &[u16]) -> String {
    path.iter().map(|id| format!("/{id}")).collect()
}

fn id(d: &mut Decoder<'_>) -> Result<u16, CodecError> {
    let i = cbor::int(FORMAT, d)?;
    u16::try_from(i)
        .map_err(|_| cbor::malformed(FORMAT, d, format!("path id {i} is out of range 0..=65535")))
}

/// Read a map key into `path`.
fn key(d: &mut Decoder<'_>, path: &mut Vec<u16>) -> Result<(), CodecError> {
    let len = d.input().len();
    let t = d.datatype().map_err(|e| cbor::err(FORMAT, len, e))?;
    let too_deep = |d: &Decoder<'_>, path: &[u16]| {
        cbor::malformed(
            FORMAT,
            d,
            format!("path {} is deeper than 4 levels", path_string(path)),
        )
    };
    if cbor::is_int(t) {
        let v = id(d)?;
        if path.len() >= MAX_DEPTH {
            return Err(too_deep(d, path));
        }
        path.push(v);
        return Ok(());
    }
    let mut items = Items::array(FORMAT, d, "map key")?;
    let before = path.len();
    while items.next(FORMAT, d)? {
        let t = d.datatype().map_err(|e| cbor::err(FORMAT, len, e))?;
        if !cbor::is_int(t) {
            return Err(cbor::malformed(
                FORMAT,
                d,
                format!("path fragment element is {t}, expected an integer"),
            ));
        }
        let v = id(d)?;
        if path.len() >= MAX_DEPTH {
            return Err(too_deep(d, path));
        }
        path.push(v);
    }
    if path.len() == before {
        return Err(cbor::malformed(FORMAT, d, "empty path fragment key"));
    }
    Ok(())
}

fn not_ac(path: &[u16]) -> CodecError {
    CodecError::NotAccessControl {
        format: FORMAT,
        name: path_string(path),
    }
}

/// Walk one map whose keys extend `path`.
fn walk(d: &mut Decoder<'_>, path: &mut Vec<u16>, asm: &mut Assembler) -> Result<(), CodecError> {
    let mut entries = Items::map(FORMAT, d, "node")?;
    while entries.next(FORMAT, d)? {
        let depth = path.len();
        key(d, path)?;
        if path.first().is_some_and(|o| *o != ACCESS_CONTROL_OBJECT) {
            return Err(not_ac(path));
        }
        if let Some(&instance) = path.get(1) {
            asm.touch_instance(instance)?;
        }
        let len = d.input().len();
        if matches!(
            d.datatype().map_err(|e| cbor::err(FORMAT, len, e))?,
            Type::Map | Type::MapIndef
        ) {
            walk(d, path, asm)?;
        } else {
            let value = cbor::value(FORMAT, d)?;
            match path.as_slice() {
                [_, instance, resource] => asm.value(*instance, *resource, None, value)?,
                [_, instance, resource, ri] => asm.value(*instance, *resource, Some(*ri), value)?,
                _ => return Err(not_ac(path)),
            }
        }
        path.truncate(depth);
    }
    Ok(())
}

/// Decode an LwM2M-CBOR payload rooted at the root path.
pub fn decode(payload: &[u8]) -> Result<Vec<AccessControl>, CodecError> {
    decode_at(payload, &[])
}

/// Decode an LwM2M-CBOR payload whose outermost map is rooted at `base`
/// (the request path, e.g. `[2]` or `[2, 0]`; at most 4 ids).
pub fn decode_at(payload: &[u8], base: &[u16]) -> Result<Vec<AccessControl>, CodecError> {
    if base.len() > MAX_DEPTH {
        return Err(not_ac(base));
    }
    if base.first().is_some_and(|o| *o != ACCESS_CONTROL_OBJECT) {
        return Err(not_ac(base));
    }
    let mut d = Decoder::new(payload);
    let mut asm = Assembler::new(FORMAT);
    let mut path = base.to_vec();
    walk(&mut d, &mut path, &mut asm)?;
    cbor::end(FORMAT, &d)?;
    asm.finish()
}

/// Encode the whole object `/2` as `{2: {inst: {0: …, 1: …, 2: {ssid: rights}, 3: …}}}`
/// (resource 2 omitted when the ACL is empty).
pub fn encode(instances: &[AccessControl]) -> Result<Vec<u8>, CodecError> {
    let fail = cbor::enc_err(FORMAT);
    let mut e = Encoder::new(Vec::new());
    e.map(1)
        .and_then(|e| e.u16(ACCESS_CONTROL_OBJECT))
        .and_then(|e| e.map(instances.len() as u64))
        .map_err(&fail)?;
    for ac in instances {
        let n = if ac.acl.is_empty() { 3 } else { 4 };
        e.u16(ac.instance)
            .and_then(|e| e.map(n))
            .and_then(|e| e.u16(0))
            .and_then(|e| e.u16(ac.object_id))
            .and_then(|e| e.u16(1))
            .and_then(|e| e.u16(ac.object_instance_id))
            .map_err(&fail)?;
        if !ac.acl.is_empty() {
            e.u16(2)
                .and_then(|e| e.map(ac.acl.len() as u64))
                .map_err(&fail)?;
            for (ssid, rights) in &ac.acl {
                e.u16(*ssid)
                    .and_then(|e| e.u8(rights.bits()))
                    .map_err(&fail)?;
            }
        }
        e.u16(3).and_then(|e| e.u16(ac.owner)).map_err(&fail)?;
    }
    Ok(e.into_writer())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lwm2m::testdata::*;

    /// `{2: {0: {0: 3, 1: 0, 2: {0: 15, 999: 1}, 3: 123}}}`
    const REAL: [u8; 20] = [
        0xa1, 0x02, 0xa1, 0x00, 0xa4, 0x00, 0x03, 0x01, 0x00, 0x02, 0xa2, 0x00, 0x0f, 0x19, 0x03,
        0xe7, 0x01, 0x03, 0x18, 0x7b,
    ];

    fn real() -> &'static [u8] {
        &REAL
    }

    #[test]
    fn encodes_and_decodes_the_real_instance() {
        assert_eq!(encode(&[real_instance()]).as_deref(), Ok(real()));
        assert_eq!(decode(real()), Ok(vec![real_instance()]));
    }

    #[test]
    fn round_trips_varied_object() {
        assert_eq!(encode(&varied()).and_then(|b| decode(&b)), Ok(varied()));
    }

    #[test]
    fn accepts_path_fragment_keys() {
        // {[2, 0]: {0: 3, 1: 0, [2, 999]: 1, 2: {0: 15}, 3: 123}}
        let b = [
            0xa1, 0x82, 0x02, 0x00, 0xa5, 0x00, 0x03, 0x01, 0x00, 0x82, 0x02, 0x19, 0x03, 0xe7,
            0x01, 0x02, 0xa1, 0x00, 0x0f, 0x03, 0x18, 0x7b,
        ];
        assert_eq!(decode(&b), Ok(vec![real_instance()]));
    }

    #[test]
    fn decode_at_accepts_payload_rooted_at_instance() {
        // {0: 3, 1: 0, 2: {0: 15, 999: 1}, 3: 123} at /2/0
        let b = real().get(4..).unwrap_or(&[]);
        assert_eq!(decode_at(b, &[2, 0]), Ok(vec![real_instance()]));
        assert!(decode_at(b, &[3, 0]).is_err());
    }

    #[test]
    fn rejects_other_objects_and_too_deep_paths() {
        // {3: {0: {0: 1}}}
        assert!(matches!(
            decode(&[0xa1, 0x03, 0xa1, 0x00, 0xa1, 0x00, 0x01]),
            Err(CodecError::NotAccessControl { .. })
        ));
        // {[2, 0, 2, 1, 1]: 1}
        assert!(matches!(
            decode(&[0xa1, 0x85, 0x02, 0x00, 0x02, 0x01, 0x01, 0x01]),
            Err(CodecError::Malformed { .. })
        ));
        // {2: {0: 1}} — a value at instance level.
        assert!(matches!(
            decode(&[0xa1, 0x02, 0xa1, 0x00, 0x01]),
            Err(CodecError::NotAccessControl { .. })
        ));
        // {[]: 1}
        assert!(matches!(
            decode(&[0xa1, 0x80, 0x01]),
            Err(CodecError::Malformed { .. })
        ));
        // {-1: 1}
        assert!(matches!(
            decode(&[0xa1, 0x20, 0x01]),
            Err(CodecError::Malformed { .. })
        ));
    }

    #[test]
    fn rejects_bad_values() {
        // owner "x"
        let mut b = real().to_vec();
        b.truncate(18);
        b.extend_from_slice(&[0x61, b'x']);
        assert!(matches!(decode(&b), Err(CodecError::BadType { .. })));
        // rights 32
        let mut b = real().to_vec();
        if let Some(x) = b.get_mut(12) {
            *x = 0x18;
        }
        b.insert(13, 0x20);
        assert!(matches!(decode(&b), Err(CodecError::OutOfRange { .. })));
    }

    #[test]
    fn every_prefix_errors_without_panic() {
        for n in 0..real().len() {
            assert!(
                decode(real().get(..n).unwrap_or(&[])).is_err(),
                "prefix {n}"
            );
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        for seed in 0..2000u64 {
            let len = usize::try_from(seed % 48).unwrap_or(0);
            let _ = decode(&pseudo_random_bytes(seed, len));
        }
        let b = real();
        for seed in 0..2000u64 {
            let mut m = b.to_vec();
            let noise = pseudo_random_bytes(seed, 2);
            let at = usize::from(noise.first().copied().unwrap_or(0)) % m.len();
            if let Some(x) = m.get_mut(at) {
                *x = noise.get(1).copied().unwrap_or(0);
            }
            let _ = decode(&m);
        }
    }
}
