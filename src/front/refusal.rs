//! The answer to a refused write (DESIGN.md §5): its CoAP code, and a body that always fits
//! one message. Pure: the caller says how many payload bytes one message may carry and, when
//! the list is too long, where the complete report is kept.
//!
//! An error response never carries Block2 or ETag: libcoap's `coap-client` does not fetch
//! further blocks of an error and Californium refuses block-wise errors (an error has no
//! entity to reassemble). So:
//!
//! * **whole** — `{Status, Failed}` with every entry and its `Detail`, as before, when that
//!   fits the budget ([`whole`]);
//! * **truncated** — otherwise `{Status, FailedCount, Failed, Truncated: true, Report}`:
//!   first every entry without `Detail`, else the longest prefix (the list is sorted by
//!   DeviceID) that fits, possibly none; `Report` is the path of `/GwConfig/Reports/<id>`,
//!   whose 2.05 ([`report_body`]) holds the complete list with details.
//!
//! The truncated body is never larger than the budget, unless even the one without any entry
//! is (a client asking for 16-byte blocks): then that minimal body is sent.

use coap_lite::ResponseType;

use crate::front::{Format, render_value};
use crate::mo::Value;
use crate::verifier::{Failure, RejectKind};

/// The CoAP code of a refusal (DESIGN.md §5 answers table).
pub fn code(kind: RejectKind) -> ResponseType {
    match kind {
        RejectKind::Forbidden => ResponseType::Forbidden,
        RejectKind::Timeout => ResponseType::GatewayTimeout,
        RejectKind::BadGateway => ResponseType::BadGateway,
    }
}

/// How a refusal's body came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fitted {
    /// The rendered body.
    pub payload: Vec<u8>,
    /// How many `Failed` entries it lists.
    pub kept: usize,
    /// Whether the entries carry their `Detail`.
    pub details: bool,
    /// Whether it is the truncated shape (with `Truncated` and `Report`).
    pub truncated: bool,
}

/// The whole body, `{Status, Failed}` with details, if it fits `max_payload`; `None` when the
/// caller must keep a report and call [`truncated`].
pub fn whole(
    kind: RejectKind,
    failed: &[Failure],
    format: Format,
    max_payload: usize,
) -> Option<Fitted> {
    let body = Value::map([("Status", status(kind)), ("Failed", entries(failed, true))]);
    let (_, payload) = render_value(&body, format);
    (payload.len() <= max_payload).then_some(Fitted {
        payload,
        kept: failed.len(),
        details: true,
        truncated: false,
    })
}

/// The truncated body naming `report` (the path of the complete report): every entry without
/// `Detail` if that fits `max_payload`, else the longest prefix of entries that does.
pub fn truncated(
    kind: RejectKind,
    failed: &[Failure],
    format: Format,
    max_payload: usize,
    report: &str,
) -> Fitted {
    let render = |kept: usize| {
        let body = Value::map([
            ("Status", status(kind)),
            ("FailedCount", count(failed.len())),
            (
                "Failed",
                entries(failed.get(..kept).unwrap_or_default(), false),
            ),
            ("Truncated", Value::Bool(true)),
            ("Report", Value::text(report)),
        ]);
        render_value(&body, format).1
    };
    let fits = |kept: usize| render(kept).len() <= max_payload;
    // The size grows with every entry kept: binary search for the longest prefix that fits.
    let (mut lo, mut hi) = (0usize, failed.len());
    if fits(hi) {
        lo = hi;
    }
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) { lo = mid } else { hi = mid - 1 }
    }
    Fitted {
        payload: render(lo),
        kept: lo,
        details: false,
        truncated: true,
    }
}

/// The 2.05 body of `/GwConfig/Reports/<id>`: `{Status, FailedCount, Failed}`, every entry
/// with its `Detail`.
pub fn report_body(kind: RejectKind, failed: &[Failure]) -> Value {
    Value::map([
        ("Status", status(kind)),
        ("FailedCount", count(failed.len())),
        ("Failed", entries(failed, true)),
    ])
}

fn status(kind: RejectKind) -> Value {
    Value::Int(i64::from(kind.status()))
}

fn count(n: usize) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

fn entries(failed: &[Failure], details: bool) -> Value {
    Value::Array(
        failed
            .iter()
            .map(|f| {
                let mut entry = vec![
                    ("DeviceID".to_owned(), Value::text(&f.device_id)),
                    ("Reason".to_owned(), Value::text(f.reason.as_str())),
                ];
                if details {
                    entry.push(("Detail".to_owned(), Value::text(&f.detail)));
                }
                Value::Map(entry)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verifier::Reason;

    const REPORT: &str = "/GwConfig/Reports/00112233445566778899aabbccddeeff";

    fn failures(n: usize) -> Vec<Failure> {
        (0..n)
            .map(|i| Failure {
                device_id: format!("dev{i:02}"),
                reason: Reason::Denied,
                detail: format!("owner of /3/0 is SSID 102, not 101 (instance {i})"),
            })
            .collect()
    }

    fn doc(f: &Fitted, format: Format) -> Value {
        match format {
            Format::Cbor => Value::from_cbor(&f.payload).unwrap(),
            Format::Json => Value::from_json(&f.payload).unwrap(),
        }
    }

    fn ids(doc: &Value) -> Vec<String> {
        doc.get("Failed")
            .and_then(Value::as_array)
            .unwrap()
            .iter()
            .map(|e| {
                e.get("DeviceID")
                    .and_then(Value::as_str)
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn codes_follow_the_answers_table() {
        assert_eq!(code(RejectKind::Forbidden), ResponseType::Forbidden);
        assert_eq!(code(RejectKind::Timeout), ResponseType::GatewayTimeout);
        assert_eq!(code(RejectKind::BadGateway), ResponseType::BadGateway);
    }

    #[test]
    fn a_short_list_is_whole_in_todays_shape() {
        for format in [Format::Cbor, Format::Json] {
            let f = whole(RejectKind::Forbidden, &failures(2), format, 1024).unwrap();
            assert_eq!((f.kept, f.details, f.truncated), (2, true, false));
            let d = doc(&f, format);
            assert_eq!(d.get("Status"), Some(&Value::Int(425)));
            assert!(d.get("FailedCount").is_none() && d.get("Truncated").is_none());
            let first = &d.get("Failed").unwrap().as_array().unwrap()[0];
            assert!(first.get("Detail").is_some());
        }
    }

    #[test]
    fn a_list_one_byte_too_long_is_not_whole() {
        let failed = failures(3);
        let size = whole(RejectKind::Forbidden, &failed, Format::Cbor, usize::MAX)
            .unwrap()
            .payload
            .len();
        assert!(whole(RejectKind::Forbidden, &failed, Format::Cbor, size).is_some());
        assert!(whole(RejectKind::Forbidden, &failed, Format::Cbor, size - 1).is_none());
    }

    #[test]
    fn details_are_dropped_before_entries() {
        // 10 entries: too long with details, short enough without.
        let failed = failures(10);
        assert!(whole(RejectKind::Forbidden, &failed, Format::Cbor, 512).is_none());
        let f = truncated(RejectKind::Forbidden, &failed, Format::Cbor, 512, REPORT);
        assert_eq!((f.kept, f.details, f.truncated), (10, false, true));
        let d = doc(&f, Format::Cbor);
        assert_eq!(d.get("FailedCount"), Some(&Value::Int(10)));
        assert_eq!(d.get("Truncated"), Some(&Value::Bool(true)));
        assert_eq!(d.get("Report").and_then(Value::as_str), Some(REPORT));
        let first = &d.get("Failed").unwrap().as_array().unwrap()[0];
        assert!(first.get("Detail").is_none());
    }

    #[test]
    fn then_the_longest_sorted_prefix_that_fits_is_kept() {
        let failed = failures(40);
        for format in [Format::Cbor, Format::Json] {
            for budget in [1024usize, 700, 300, 200] {
                let f = truncated(RejectKind::Timeout, &failed, format, budget, REPORT);
                assert!(f.payload.len() <= budget, "{format:?} {budget}");
                assert!(f.kept < 40);
                let d = doc(&f, format);
                assert_eq!(d.get("Status"), Some(&Value::Int(504)));
                assert_eq!(d.get("FailedCount"), Some(&Value::Int(40)));
                let expected: Vec<String> = failed[..f.kept]
                    .iter()
                    .map(|x| x.device_id.clone())
                    .collect();
                assert_eq!(ids(&d), expected);
                // One more entry would not have fitted.
                let more = truncated(
                    RejectKind::Timeout,
                    &failed[..=f.kept],
                    format,
                    usize::MAX,
                    REPORT,
                );
                assert!(
                    more.payload.len() > budget,
                    "{format:?} {budget}: not the longest"
                );
            }
        }
    }

    #[test]
    fn a_budget_below_the_minimal_body_keeps_no_entry() {
        let f = truncated(
            RejectKind::BadGateway,
            &failures(5),
            Format::Cbor,
            16,
            REPORT,
        );
        assert_eq!(f.kept, 0);
        let d = doc(&f, Format::Cbor);
        assert_eq!(d.get("Failed"), Some(&Value::Array(Vec::new())));
        assert_eq!(d.get("Report").and_then(Value::as_str), Some(REPORT));
    }

    #[test]
    fn the_report_lists_everything_with_details() {
        let failed = failures(40);
        let d = report_body(RejectKind::Forbidden, &failed);
        assert_eq!(d.get("FailedCount"), Some(&Value::Int(40)));
        assert_eq!(ids(&d).len(), 40);
        let last = &d.get("Failed").unwrap().as_array().unwrap()[39];
        assert_eq!(
            last.get("Detail").and_then(Value::as_str),
            Some(failed[39].detail.as_str())
        );
    }
}
