//! The paged listing of `/GwConfig/Privileges`: the `?after=<name>&limit=<n>` query and the
//! shape of a page. Pure: the service reads the store and calls [`Listing::decide`].
//!
//! # Format
//!
//! | request | answer (2.05, CBOR or JSON) |
//! |---|---|
//! | `GET /GwConfig/Privileges`, at most `list_max_limit` entries | `{<name>: entry, …}` (the unpaged shape) |
//! | `GET /GwConfig/Privileges`, more entries | a page of `list_default_limit` |
//! | `GET /GwConfig/Privileges?limit=<n>&after=<name>` | a page |
//!
//! A page is `{"Privileges": {<name>: entry, …}, "Next": <name>}`: up to `limit` entries
//! (default `list_default_limit`, at most `list_max_limit`; a larger limit is clamped) whose
//! names sort after `after` (bytewise, the store's order; exclusive), and `Next` — the name to
//! pass as `after` for the following page — present only when more entries follow. Pages
//! are read from the store at request time, so entries added or deleted meanwhile appear or
//! vanish; none is listed twice in one walk. A body larger than one block still goes out with
//! Block2. Unknown query keys, a repeated key, `limit=0`, a non-number or a name that is not
//! a privilege name are 4.00.

use crate::front::FrontError;
use crate::mo::{PrivilegeName, Value};

/// A listing request's query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// List names strictly after this one.
    pub after: Option<PrivilegeName>,
    /// Page size asked for (clamped by the caller).
    pub limit: Option<usize>,
}

impl ListQuery {
    /// Reads `after` and `limit` from the Uri-Query segments.
    pub fn parse(query: &[String]) -> Result<ListQuery, FrontError> {
        let mut q = ListQuery::default();
        for arg in query {
            let bad = |why: &str| FrontError::BadRequest(format!("query '{arg}': {why}"));
            let (key, value) = arg
                .split_once('=')
                .ok_or_else(|| bad("expected key=value"))?;
            match key {
                "after" if q.after.is_none() => {
                    q.after =
                        Some(PrivilegeName::new(value).map_err(|_| bad("not a privilege name"))?);
                }
                "limit" if q.limit.is_none() => {
                    let n: usize = value.parse().map_err(|_| bad("not a number"))?;
                    if n == 0 {
                        return Err(bad("limit must be at least 1"));
                    }
                    q.limit = Some(n);
                }
                "after" | "limit" => return Err(bad("given twice")),
                _ => return Err(bad("unknown key (after, limit)")),
            }
        }
        Ok(q)
    }

    /// Whether the client asked for a page.
    pub fn is_paged(&self) -> bool {
        self.after.is_some() || self.limit.is_some()
    }
}

/// What the service reads from the store for one listing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Entries after this name.
    pub after: Option<PrivilegeName>,
    /// How many entries to read.
    pub limit: usize,
    /// Answer in the unpaged shape if nothing follows these entries.
    pub unpaged_if_complete: bool,
    /// Page size if the unpaged listing turns out too long.
    pub fallback_page: usize,
}

impl Listing {
    /// Plans a listing for `query` under the `default` and `max` page sizes.
    pub fn decide(query: ListQuery, default: usize, max: usize) -> Listing {
        if query.is_paged() {
            Listing {
                after: query.after,
                limit: query.limit.unwrap_or(default).min(max),
                unpaged_if_complete: false,
                fallback_page: 0,
            }
        } else {
            Listing {
                after: None,
                limit: max,
                unpaged_if_complete: true,
                fallback_page: default.min(max),
            }
        }
    }

    /// The answer document for `entries` (name order, at most `limit`) read under this plan;
    /// `more`: whether the store holds entries after the last one.
    pub fn document(&self, mut entries: Vec<(PrivilegeName, Value)>, more: bool) -> Value {
        if self.unpaged_if_complete && !more {
            return Value::Map(
                entries
                    .into_iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v))
                    .collect(),
            );
        }
        let mut more = more;
        if self.unpaged_if_complete && entries.len() > self.fallback_page {
            entries.truncate(self.fallback_page);
            more = true;
        }
        let next = if more {
            entries.last().map(|(n, _)| n.as_str().to_owned())
        } else {
            None
        };
        let map = Value::Map(
            entries
                .into_iter()
                .map(|(n, v)| (n.as_str().to_owned(), v))
                .collect(),
        );
        let mut fields = vec![("Privileges".to_owned(), map)];
        if let Some(n) = next {
            fields.push(("Next".to_owned(), Value::text(n)));
        }
        Value::Map(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(args: &[&str]) -> Result<ListQuery, FrontError> {
        ListQuery::parse(&args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    fn entries(names: &[&str]) -> Vec<(PrivilegeName, Value)> {
        names
            .iter()
            .map(|n| (PrivilegeName::new(n).unwrap(), Value::Int(1)))
            .collect()
    }

    #[test]
    fn query_parses_strictly() {
        assert_eq!(q(&[]).unwrap(), ListQuery::default());
        let p = q(&["after=p7", "limit=20"]).unwrap();
        assert_eq!(p.after.unwrap().as_str(), "p7");
        assert_eq!(p.limit, Some(20));
        for bad in [
            &["limit=0"][..],
            &["limit=-1"],
            &["after="],
            &["after=a.b"],
            &["x=1"],
            &["limit"],
            &["limit=1", "limit=2"],
        ] {
            assert!(matches!(q(bad), Err(FrontError::BadRequest(_))), "{bad:?}");
        }
    }

    #[test]
    fn pages_clamp_the_limit_and_name_the_next_entry() {
        let plan = Listing::decide(q(&["limit=5000"]).unwrap(), 100, 1000);
        assert_eq!((plan.limit, plan.unpaged_if_complete), (1000, false));
        let doc = plan.document(entries(&["a", "b"]), true);
        assert_eq!(doc.get("Next").and_then(Value::as_str), Some("b"));
        let last = plan.document(entries(&["c"]), false);
        assert!(last.get("Next").is_none());
        assert!(matches!(last.get("Privileges"), Some(Value::Map(m)) if m.len() == 1));
    }

    #[test]
    fn unpaged_keeps_the_old_shape_when_complete_and_pages_otherwise() {
        let plan = Listing::decide(ListQuery::default(), 2, 3);
        assert_eq!(plan.limit, 3);
        let doc = plan.document(entries(&["a", "b", "c"]), false);
        assert!(matches!(&doc, Value::Map(m) if m.len() == 3 && m[0].0 == "a"));
        let doc = plan.document(entries(&["a", "b", "c"]), true);
        assert_eq!(doc.get("Next").and_then(Value::as_str), Some("b"));
        assert!(matches!(doc.get("Privileges"), Some(Value::Map(m)) if m.len() == 2));
    }
}
