//! MO nodes as documents: a small value tree with CBOR (Content-Format 60) and JSON (50)
//! encodings, used for request bodies, answers and the stored form of a privilege.
//!
//! Decoding is bounded (depth, sizes) and total: any byte string gives a value or an error.

use std::fmt::Write as _;

/// A document value: text, integer, boolean, array or text-keyed map (the shapes the MO
/// uses; booleans only in answers, e.g. `Truncated`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Int(i64),
    Bool(bool),
    Array(Vec<Value>),
    Map(Vec<(String, Value)>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReprError {
    #[error("malformed CBOR: {0}")]
    Cbor(String),
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("unsupported value: {0}")]
    Unsupported(&'static str),
    #[error("trailing bytes after the document")]
    Trailing,
    /// A map names one key twice: readers that take the first and the last would disagree.
    #[error("duplicate map key '{0}'")]
    DuplicateKey(String),
}

const MAX_DEPTH: usize = 8;
const MAX_ITEMS: u64 = 100_000;

impl Value {
    pub fn text(s: impl Into<String>) -> Value {
        Value::Text(s.into())
    }

    pub fn map(entries: impl IntoIterator<Item = (&'static str, Value)>) -> Value {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn to_cbor(&self) -> Vec<u8> {
        let mut enc = minicbor::Encoder::new(Vec::new());
        // Writing into a Vec cannot fail.
        let _ = encode_cbor(self, &mut enc);
        enc.into_writer()
    }

    pub fn from_cbor(bytes: &[u8]) -> Result<Value, ReprError> {
        let mut dec = minicbor::Decoder::new(bytes);
        let v = decode_cbor(&mut dec, 0)?;
        if dec.position() != bytes.len() {
            return Err(ReprError::Trailing);
        }
        Ok(v)
    }

    pub fn to_json_value(&self) -> serde_json::Value {
        match self {
            Value::Text(s) => serde_json::Value::String(s.clone()),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Array(a) => {
                serde_json::Value::Array(a.iter().map(Value::to_json_value).collect())
            }
            Value::Map(m) => serde_json::Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), v.to_json_value()))
                    .collect(),
            ),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        self.to_json_value().to_string().into_bytes()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Value, ReprError> {
        // serde_json's own `Value` keeps the last of two equal keys; read the objects
        // ourselves so a duplicate is an error.
        let v: JsonTree =
            serde_json::from_slice(bytes).map_err(|e| ReprError::Json(e.to_string()))?;
        from_json_tree(v, 0)
    }

    /// A readable one-line rendering (for the CLI and the demo).
    pub fn to_display(&self) -> String {
        let mut out = String::new();
        display(self, &mut out);
        out
    }
}

fn display(v: &Value, out: &mut String) {
    match v {
        Value::Text(s) => {
            let _ = write!(out, "{s:?}");
        }
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                display(x, out);
            }
            out.push(']');
        }
        Value::Map(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let _ = write!(out, "{k}: ");
                display(x, out);
            }
            out.push('}');
        }
    }
}

fn encode_cbor(
    v: &Value,
    enc: &mut minicbor::Encoder<Vec<u8>>,
) -> Result<(), minicbor::encode::Error<std::convert::Infallible>> {
    match v {
        Value::Text(s) => {
            enc.str(s)?;
        }
        Value::Int(i) => {
            enc.i64(*i)?;
        }
        Value::Bool(b) => {
            enc.bool(*b)?;
        }
        Value::Array(a) => {
            enc.array(a.len() as u64)?;
            for x in a {
                encode_cbor(x, enc)?;
            }
        }
        Value::Map(m) => {
            enc.map(m.len() as u64)?;
            for (k, x) in m {
                enc.str(k)?;
                encode_cbor(x, enc)?;
            }
        }
    }
    Ok(())
}

fn cbor_err(e: minicbor::decode::Error) -> ReprError {
    ReprError::Cbor(e.to_string())
}

fn decode_cbor(dec: &mut minicbor::Decoder<'_>, depth: usize) -> Result<Value, ReprError> {
    use minicbor::data::Type;
    if depth > MAX_DEPTH {
        return Err(ReprError::TooDeep);
    }
    match dec.datatype().map_err(cbor_err)? {
        Type::String => Ok(Value::Text(dec.str().map_err(cbor_err)?.to_owned())),
        Type::StringIndef => {
            let mut s = String::new();
            for part in dec.str_iter().map_err(cbor_err)? {
                s.push_str(part.map_err(cbor_err)?);
            }
            Ok(Value::Text(s))
        }
        t if crate::lwm2m::cbor::is_int(t) => {
            let i = dec.int().map_err(cbor_err)?;
            i64::try_from(i)
                .map(Value::Int)
                .map_err(|_| ReprError::Unsupported("integer out of range"))
        }
        Type::Bool => Ok(Value::Bool(dec.bool().map_err(cbor_err)?)),
        Type::Array | Type::ArrayIndef => {
            let len = dec.array().map_err(cbor_err)?;
            let mut items = Vec::new();
            match len {
                Some(n) => {
                    if n > MAX_ITEMS {
                        return Err(ReprError::Unsupported("array too long"));
                    }
                    for _ in 0..n {
                        items.push(decode_cbor(dec, depth + 1)?);
                    }
                }
                None => loop {
                    if dec.datatype().map_err(cbor_err)? == Type::Break {
                        dec.skip().map_err(cbor_err)?;
                        break;
                    }
                    if items.len() as u64 >= MAX_ITEMS {
                        return Err(ReprError::Unsupported("array too long"));
                    }
                    items.push(decode_cbor(dec, depth + 1)?);
                },
            }
            Ok(Value::Array(items))
        }
        Type::Map | Type::MapIndef => {
            let len = dec.map().map_err(cbor_err)?;
            let mut entries = Vec::new();
            let mut keys = std::collections::HashSet::new();
            let mut entry = |dec: &mut minicbor::Decoder<'_>| -> Result<(), ReprError> {
                if dec.datatype().map_err(cbor_err)? != Type::String {
                    return Err(ReprError::Unsupported("map keys must be text"));
                }
                let k = dec.str().map_err(cbor_err)?.to_owned();
                if !keys.insert(k.clone()) {
                    return Err(ReprError::DuplicateKey(k));
                }
                let v = decode_cbor(dec, depth + 1)?;
                entries.push((k, v));
                Ok(())
            };
            match len {
                Some(n) => {
                    if n > MAX_ITEMS {
                        return Err(ReprError::Unsupported("map too long"));
                    }
                    for _ in 0..n {
                        entry(dec)?;
                    }
                }
                None => loop {
                    if dec.datatype().map_err(cbor_err)? == Type::Break {
                        dec.skip().map_err(cbor_err)?;
                        break;
                    }
                    entry(dec)?;
                },
            }
            Ok(Value::Map(entries))
        }
        _ => Err(ReprError::Unsupported(
            "only text, integers, booleans, arrays and maps",
        )),
    }
}

/// A JSON document as parsed, objects in source order with every key (duplicates too).
enum JsonTree {
    Text(String),
    Int(i64),
    Bool(bool),
    Unsupported(&'static str),
    Array(Vec<JsonTree>),
    Object(Vec<(String, JsonTree)>),
}

impl<'de> serde::Deserialize<'de> for JsonTree {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonTreeVisitor)
    }
}

struct JsonTreeVisitor;

impl<'de> serde::de::Visitor<'de> for JsonTreeVisitor {
    type Value = JsonTree;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<JsonTree, E> {
        Ok(JsonTree::Text(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<JsonTree, E> {
        Ok(JsonTree::Text(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<JsonTree, E> {
        Ok(JsonTree::Int(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<JsonTree, E> {
        Ok(i64::try_from(v)
            .map(JsonTree::Int)
            .unwrap_or(JsonTree::Unsupported("integer out of range")))
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<JsonTree, E> {
        Ok(JsonTree::Unsupported("only integer numbers"))
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<JsonTree, E> {
        Ok(JsonTree::Bool(v))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<JsonTree, E> {
        Ok(JsonTree::Unsupported(
            "only text, integers, booleans, arrays and maps",
        ))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<JsonTree, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            if items.len() as u64 >= MAX_ITEMS {
                return Err(serde::de::Error::custom("array too long"));
            }
            items.push(item);
        }
        Ok(JsonTree::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JsonTree, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, JsonTree>()? {
            if entries.len() as u64 >= MAX_ITEMS {
                return Err(serde::de::Error::custom("map too long"));
            }
            entries.push((k, v));
        }
        Ok(JsonTree::Object(entries))
    }
}

fn from_json_tree(v: JsonTree, depth: usize) -> Result<Value, ReprError> {
    if depth > MAX_DEPTH {
        return Err(ReprError::TooDeep);
    }
    match v {
        JsonTree::Text(s) => Ok(Value::Text(s)),
        JsonTree::Int(i) => Ok(Value::Int(i)),
        JsonTree::Bool(b) => Ok(Value::Bool(b)),
        JsonTree::Unsupported(why) => Err(ReprError::Unsupported(why)),
        JsonTree::Array(a) => Ok(Value::Array(
            a.into_iter()
                .map(|x| from_json_tree(x, depth + 1))
                .collect::<Result<_, _>>()?,
        )),
        JsonTree::Object(o) => {
            let mut keys = std::collections::HashSet::new();
            let mut entries = Vec::with_capacity(o.len());
            for (k, x) in o {
                if !keys.insert(k.clone()) {
                    return Err(ReprError::DuplicateKey(k));
                }
                entries.push((k, from_json_tree(x, depth + 1)?));
            }
            // Same key order as before (serde_json's map is sorted by key).
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(Value::Map(entries))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        Value::map([
            ("Status", Value::Int(425)),
            (
                "Failed",
                Value::Array(vec![Value::map([
                    ("DeviceID", Value::text("devB")),
                    ("Reason", Value::text("denied")),
                ])]),
            ),
        ])
    }

    #[test]
    fn cbor_round_trip() {
        let v = sample();
        assert_eq!(Value::from_cbor(&v.to_cbor()).unwrap(), v);
    }

    #[test]
    fn cbor_bytes_are_canonical_definite_lengths() {
        let v = Value::map([("ACL", Value::text("Get=B"))]);
        assert_eq!(v.to_cbor(), b"\xa1\x63ACL\x65Get=B".to_vec());
    }

    #[test]
    fn json_round_trip() {
        // JSON objects are unordered; serde_json hands keys back sorted.
        let v = sample();
        let back = Value::from_json(&v.to_json()).unwrap();
        assert_eq!(back.get("Status"), v.get("Status"));
        assert_eq!(back.get("Failed"), v.get("Failed"));
    }

    #[test]
    fn booleans_round_trip_in_cbor_and_json() {
        let v = Value::map([("Truncated", Value::Bool(true))]);
        assert_eq!(v.to_cbor(), b"\xa1\x69Truncated\xf5".to_vec());
        assert_eq!(Value::from_cbor(&v.to_cbor()).unwrap(), v);
        assert_eq!(v.to_json(), br#"{"Truncated":true}"#.to_vec());
        assert_eq!(Value::from_json(&v.to_json()).unwrap(), v);
    }

    #[test]
    fn garbage_never_panics() {
        for bytes in [
            &b"\xff"[..],
            b"\xa1",
            b"\xa1\x01\x02",
            b"\x9f\x9f\x9f",
            b"\xbf\x61a",
        ] {
            assert!(Value::from_cbor(bytes).is_err(), "{bytes:?}");
        }
        let deep = [0x81u8; 64];
        assert!(Value::from_cbor(&deep).is_err());
        assert!(Value::from_cbor(b"\xa0\x00").is_err(), "trailing bytes");
        assert!(Value::from_json(b"{\"a\": 1.5}").is_err());
        assert!(Value::from_json(b"{\"a\": null}").is_err());
        assert!(Value::from_json(b"{\"a\": 18446744073709551615}").is_err());
        let deep = "[".repeat(64) + &"]".repeat(64);
        assert!(Value::from_json(deep.as_bytes()).is_err());
    }

    /// A key given twice is a 4.00, in both formats: a reader taking the first and one taking
    /// the last would see different grants (before, the last one silently won).
    #[test]
    fn duplicate_keys_are_refused_in_cbor_and_json() {
        // {"ACL": "Get=B", "ACL": "Get=*"}
        let cbor = b"\xa2\x63ACL\x65Get=B\x63ACL\x65Get=*";
        assert_eq!(
            Value::from_cbor(cbor),
            Err(ReprError::DuplicateKey("ACL".into()))
        );
        // The same in an indefinite-length map, nested one level down.
        let nested = b"\xa1\x61x\xbf\x61a\x01\x61a\x02\xff";
        assert_eq!(
            Value::from_cbor(nested),
            Err(ReprError::DuplicateKey("a".into()))
        );
        let json = br#"{"ACL":"Get=B","URI":"/3/0","ACL":"Get=*"}"#;
        assert_eq!(
            Value::from_json(json),
            Err(ReprError::DuplicateKey("ACL".into()))
        );
        let nested = br#"{"x":[{"a":1,"a":1}]}"#;
        assert!(matches!(
            Value::from_json(nested),
            Err(ReprError::DuplicateKey(_))
        ));
        // Distinct keys still decode.
        assert!(Value::from_json(br#"{"a":1,"b":{"a":2}}"#).is_ok());
    }
}
