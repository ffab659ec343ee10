//! `GET /GwConfig/Audit?since=<seq>&limit=<n>`: the query and the shape of a page. Pure: the
//! service reads the store and calls [`AuditQuery::document`].
//!
//! A page is `{"Records": [record, …], "Next": <seq>, "More": bool}`: up to `limit` records
//! (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]; larger limits are clamped) whose `Seq`
//! is greater than `since` (default 0: from the oldest kept), in `Seq` order, each the map of
//! [`crate::audit::record`] with its `Seq` first. `Next` is the `since` of the following
//! page (the last `Seq` returned, or `since` itself when none was), `More` whether records
//! after this page exist now. Records deleted by retention are simply no longer there: a
//! reader that falls behind sees a jump in `Seq`. Unknown keys, a repeated key, `limit=0`
//! and non-numbers are 4.00.

use crate::audit::record::AuditRecord;
use crate::front::FrontError;
use crate::mo::Value;

/// Records per page without `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest page.
pub const MAX_LIMIT: usize = 1000;

/// A parsed audit query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditQuery {
    /// Records with a greater `Seq`.
    pub since: u64,
    /// Page size, clamped to [`MAX_LIMIT`].
    pub limit: usize,
}

impl AuditQuery {
    /// Reads `since` and `limit` from the Uri-Query segments.
    pub fn parse(query: &[String]) -> Result<AuditQuery, FrontError> {
        let (mut since, mut limit) = (None, None);
        for arg in query {
            let bad = |why: &str| FrontError::BadRequest(format!("query '{arg}': {why}"));
            let (key, value) = arg
                .split_once('=')
                .ok_or_else(|| bad("expected key=value"))?;
            let number = || -> Result<u64, FrontError> {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("not a number"));
                }
                value.parse().map_err(|_| bad("not a number"))
            };
            match key {
                "since" if since.is_none() => since = Some(number()?),
                "limit" if limit.is_none() => {
                    let n = number()?;
                    if n == 0 {
                        return Err(bad("limit must be at least 1"));
                    }
                    limit = Some(usize::try_from(n).unwrap_or(usize::MAX));
                }
                "since" | "limit" => return Err(bad("given twice")),
                _ => return Err(bad("unknown key (since, limit)")),
            }
        }
        Ok(AuditQuery {
            since: since.unwrap_or(0),
            limit: limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT),
        })
    }

    /// The page document for `records` (`(seq, stored CBOR)` in `seq` order) read for this
    /// query; `more`: whether the store holds records after them. A stored record that
    /// cannot be read is shown as `{"Seq": n, "Kind": "unreadable"}`.
    pub fn document(&self, records: &[(u64, Vec<u8>)], more: bool) -> Value {
        let int = |n: u64| Value::Int(i64::try_from(n).unwrap_or(i64::MAX));
        let next = records.last().map_or(self.since, |(seq, _)| *seq);
        let items = records
            .iter()
            .map(|(seq, bytes)| {
                let mut fields = vec![("Seq".to_owned(), int(*seq))];
                match AuditRecord::decode(bytes) {
                    Ok(record) => match record.to_value() {
                        Value::Map(m) => fields.extend(m),
                        other => fields.push(("Record".to_owned(), other)),
                    },
                    Err(e) => {
                        tracing::warn!(seq, "{e}");
                        fields.push(("Kind".to_owned(), Value::text("unreadable")));
                    }
                }
                Value::Map(fields)
            })
            .collect();
        Value::map([
            ("Records", Value::Array(items)),
            ("Next", int(next)),
            ("More", Value::Bool(more)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{AuditEvent, ProxiedDecision};

    fn q(args: &[&str]) -> Result<AuditQuery, FrontError> {
        AuditQuery::parse(&args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn query_defaults_clamps_and_refuses_strictly() {
        assert_eq!(
            q(&[]).unwrap(),
            AuditQuery {
                since: 0,
                limit: DEFAULT_LIMIT
            }
        );
        assert_eq!(
            q(&["since=42", "limit=5000"]).unwrap(),
            AuditQuery {
                since: 42,
                limit: MAX_LIMIT
            }
        );
        for bad in [
            &["limit=0"][..],
            &["since=-1"],
            &["since=+1"],
            &["since="],
            &["since=1", "since=2"],
            &["after=1"],
            &["limit"],
            &["since=99999999999999999999999"],
        ] {
            assert!(matches!(q(bad), Err(FrontError::BadRequest(_))), "{bad:?}");
        }
    }

    #[test]
    fn pages_name_the_next_since_and_show_seq_first() {
        let record = AuditRecord {
            at_ms: 1,
            event: AuditEvent::Proxied(ProxiedDecision {
                server: "ServerB".into(),
                device: "devA".into(),
                method: "GET",
                path: "/3/0".into(),
                command: None,
                allowed: false,
                reason: "r".into(),
                grantor: None,
                latency: std::time::Duration::ZERO,
            }),
        };
        let query = q(&["since=6", "limit=2"]).unwrap();
        let doc = query.document(&[(7, record.encode()), (9, vec![0xff])], true);
        assert_eq!(doc.get("Next").and_then(Value::as_int), Some(9));
        assert_eq!(doc.get("More").and_then(Value::as_bool), Some(true));
        let items = doc.get("Records").and_then(Value::as_array).unwrap();
        assert!(matches!(&items[0], Value::Map(m) if m[0].0 == "Seq"));
        assert_eq!(items[0].get("Device").and_then(Value::as_str), Some("devA"));
        assert_eq!(
            items[1].get("Kind").and_then(Value::as_str),
            Some("unreadable")
        );
        let empty = query.document(&[], false);
        assert_eq!(empty.get("Next").and_then(Value::as_int), Some(6));
        assert_eq!(empty.get("More").and_then(Value::as_bool), Some(false));
    }
}
