//! Small total helpers over `minicbor::Decoder` shared by the two CBOR formats:
//! container iteration (definite and indefinite), scalar reading, and error
//! mapping. None of them recurses, so nesting cannot exhaust the stack.

use minicbor::Decoder;
use minicbor::data::Type;

use super::{CodecError, Value};

/// Map a minicbor error to ours, keeping the position.
pub(crate) fn err(
    format: &'static str,
    payload_len: usize,
    e: minicbor::decode::Error,
) -> CodecError {
    if e.is_end_of_input() {
        CodecError::Truncated {
            format,
            offset: e.position().unwrap_or(payload_len),
        }
    } else {
        CodecError::Malformed {
            format,
            at: e
                .position()
                .map_or_else(|| "unknown position".to_owned(), |p| format!("byte {p}")),
            what: e.to_string(),
        }
    }
}

/// Map an encoding error (only possible for exotic writers) to ours.
pub(crate) fn enc_err<E: std::fmt::Display>(format: &'static str) -> impl Fn(E) -> CodecError {
    move |e| CodecError::Encode {
        format,
        what: e.to_string(),
    }
}

/// A "malformed at the decoder's position" error.
pub(crate) fn malformed(
    format: &'static str,
    d: &Decoder<'_>,
    what: impl Into<String>,
) -> CodecError {
    CodecError::Malformed {
        format,
        at: format!("byte {}", d.position()),
        what: what.into(),
    }
}

/// Remaining items of a container being iterated: `Some(n)` definite, `None` indefinite.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Items(Option<u64>);

impl Items {
    /// Read an array header. Anything else is [`CodecError::Malformed`] saying `what`.
    pub(crate) fn array(
        format: &'static str,
        d: &mut Decoder<'_>,
        what: &str,
    ) -> Result<Items, CodecError> {
        match d.datatype().map_err(|e| err(format, d.input().len(), e))? {
            Type::Array | Type::ArrayIndef => d
                .array()
                .map(Items)
                .map_err(|e| err(format, d.input().len(), e)),
            t => Err(malformed(
                format,
                d,
                format!("{what} is {t}, expected an array"),
            )),
        }
    }

    /// Read a map header. Anything else is [`CodecError::Malformed`] saying `what`.
    pub(crate) fn map(
        format: &'static str,
        d: &mut Decoder<'_>,
        what: &str,
    ) -> Result<Items, CodecError> {
        match d.datatype().map_err(|e| err(format, d.input().len(), e))? {
            Type::Map | Type::MapIndef => d
                .map()
                .map(Items)
                .map_err(|e| err(format, d.input().len(), e)),
            t => Err(malformed(
                format,
                d,
                format!("{what} is {t}, expected a map"),
            )),
        }
    }

    /// Whether another item (array element or map entry) follows; consumes the
    /// break of an indefinite container.
    pub(crate) fn next(
        &mut self,
        format: &'static str,
        d: &mut Decoder<'_>,
    ) -> Result<bool, CodecError> {
        match &mut self.0 {
            Some(0) => Ok(false),
            Some(n) => {
                *n = n.saturating_sub(1);
                Ok(true)
            }
            None => match d.datatype().map_err(|e| err(format, d.input().len(), e))? {
                Type::Break => {
                    d.set_position(d.position().saturating_add(1));
                    Ok(false)
                }
                _ => Ok(true),
            },
        }
    }
}

/// Is the next item an integer?
pub(crate) fn is_int(t: Type) -> bool {
    matches!(
        t,
        Type::U8
            | Type::U16
            | Type::U32
            | Type::U64
            | Type::I8
            | Type::I16
            | Type::I32
            | Type::I64
            | Type::Int
    )
}

/// Read an integer of any CBOR width.
pub(crate) fn int(format: &'static str, d: &mut Decoder<'_>) -> Result<i128, CodecError> {
    d.int()
        .map(i128::from)
        .map_err(|e| err(format, d.input().len(), e))
}

/// Read a text string (definite or indefinite).
pub(crate) fn text(
    format: &'static str,
    d: &mut Decoder<'_>,
    what: &str,
) -> Result<String, CodecError> {
    let len = d.input().len();
    match d.datatype().map_err(|e| err(format, len, e))? {
        Type::String => d.str().map(str::to_owned).map_err(|e| err(format, len, e)),
        Type::StringIndef => {
            let mut s = String::new();
            for chunk in d.str_iter().map_err(|e| err(format, len, e))? {
                s.push_str(chunk.map_err(|e| err(format, len, e))?);
            }
            Ok(s)
        }
        t => Err(malformed(
            format,
            d,
            format!("{what} is {t}, expected a text string"),
        )),
    }
}

/// IEEE 754 half precision to f64.
fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f64::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 if frac == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// Read a number (integer or float), or `None` (with nothing consumed) if the
/// next item is something else.
pub(crate) fn number(
    format: &'static str,
    d: &mut Decoder<'_>,
) -> Result<Option<Value>, CodecError> {
    let len = d.input().len();
    let t = d.datatype().map_err(|e| err(format, len, e))?;
    if is_int(t) {
        return int(format, d).map(|i| Some(Value::Int(i)));
    }
    match t {
        Type::F16 => {
            let p = d.position();
            let bytes = d
                .input()
                .get(p.saturating_add(1)..p.saturating_add(3))
                .and_then(|b| <[u8; 2]>::try_from(b).ok())
                .ok_or(CodecError::Truncated {
                    format,
                    offset: len,
                })?;
            d.set_position(p.saturating_add(3));
            Ok(Some(Value::Float(f16_to_f64(u16::from_be_bytes(bytes)))))
        }
        Type::F32 | Type::F64 => d
            .f64()
            .map(|f| Some(Value::Float(f)))
            .map_err(|e| err(format, len, e)),
        _ => Ok(None),
    }
}

/// Read any scalar as a [`Value`]: numbers as such, everything else skipped
/// and reported by type name. Containers are skipped too (iteratively).
/// A stray break is an error.
pub(crate) fn value(format: &'static str, d: &mut Decoder<'_>) -> Result<Value, CodecError> {
    if let Some(v) = number(format, d)? {
        return Ok(v);
    }
    let len = d.input().len();
    let name = match d.datatype().map_err(|e| err(format, len, e))? {
        Type::Bool => "a boolean",
        Type::Null | Type::Undefined => "null",
        Type::String | Type::StringIndef => "a text string",
        Type::Bytes | Type::BytesIndef => "a byte string",
        Type::Array | Type::ArrayIndef => "an array",
        Type::Map | Type::MapIndef => "a map",
        Type::Tag => "a tagged item",
        Type::Simple => "a simple value",
        Type::Break => return Err(malformed(format, d, "unexpected break")),
        t => return Err(malformed(format, d, format!("unexpected {t}"))),
    };
    skip(format, d)?;
    Ok(Value::Other(name))
}

/// Skip one item (not a break).
pub(crate) fn skip(format: &'static str, d: &mut Decoder<'_>) -> Result<(), CodecError> {
    let len = d.input().len();
    if matches!(d.datatype().map_err(|e| err(format, len, e))?, Type::Break) {
        return Err(malformed(format, d, "unexpected break"));
    }
    d.skip().map_err(|e| err(format, len, e))
}

/// Fail if anything follows the top-level item.
pub(crate) fn end(format: &'static str, d: &Decoder<'_>) -> Result<(), CodecError> {
    if d.position() < d.input().len() {
        return Err(malformed(format, d, "trailing bytes after the payload"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_handles_normal_subnormal_and_special() {
        assert_eq!(f16_to_f64(0x3c00), 1.0);
        assert_eq!(f16_to_f64(0x4b80), 15.0);
        assert_eq!(f16_to_f64(0xc000), -2.0);
        assert_eq!(f16_to_f64(0x0001), 2f64.powi(-24));
        assert_eq!(f16_to_f64(0x7c00), f64::INFINITY);
        assert!(f16_to_f64(0x7e00).is_nan());
    }

    #[test]
    fn number_reads_half_floats() {
        let mut d = Decoder::new(&[0xf9, 0x4b, 0x80]);
        assert_eq!(number("t", &mut d), Ok(Some(Value::Float(15.0))));
        assert_eq!(d.position(), 3);
    }

    #[test]
    fn indefinite_containers_end_at_break() {
        // [_ 1, 2]
        let bytes = [0x9f, 0x01, 0x02, 0xff];
        let mut d = Decoder::new(&bytes);
        let mut items = Items::array("t", &mut d, "x").unwrap_or(Items(Some(0)));
        let mut seen = Vec::new();
        while items.next("t", &mut d) == Ok(true) {
            seen.push(int("t", &mut d));
        }
        assert_eq!(seen, vec![Ok(1), Ok(2)]);
        assert_eq!(end("t", &d), Ok(()));
    }

    #[test]
    fn value_rejects_stray_break_and_names_other_types() {
        let mut d = Decoder::new(&[0xff]);
        assert!(matches!(
            value("t", &mut d),
            Err(CodecError::Malformed { .. })
        ));
        let mut d = Decoder::new(&[0x63, b'a', b'b', b'c']);
        assert_eq!(value("t", &mut d), Ok(Value::Other("a text string")));
        let mut d = Decoder::new(&[0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(value("t", &mut d), Ok(Value::Int(-(1i128 << 64))));
    }
}
