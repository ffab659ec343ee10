//! A CoAP request read as a DM command on the MO.
//!
//! # Format
//!
//! | method | path | payload | command |
//! |---|---|---|---|
//! | GET | `/GwConfig/Privileges` | – | list |
//! | POST | `/GwConfig/Privileges` | CBOR/JSON map of the four leaves | Add, gateway names `<x>` |
//! | GET | `/GwConfig/Privileges/<x>` | – | Get the node |
//! | PUT | `/GwConfig/Privileges/<x>` | CBOR/JSON map | Add if absent, Replace if present |
//! | DELETE | `/GwConfig/Privileges/<x>` | – | Delete |
//! | GET/PUT | `/GwConfig/Privileges/<x>/<leaf>` | text/plain | Get / Replace one leaf |
//! | GET | `/GwConfig/Reports/<id>` | – | the complete failure report of a refused write |
//! | GET | `/GwConfig/Audit?since=&limit=` | – | a page of the audit trail |

use crate::coap::{self, CoapOption, MessageClass, Packet, RequestType};

use crate::front::FrontError;
use crate::lwm2m::content_format;
use crate::mo::{Privilege, PrivilegeName, Value};

/// The largest request body we read (a privilege is four short strings).
pub const MAX_REQUEST_BODY: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Plain PUT: Add if absent, Replace if present.
    None,
    /// `If-None-Match`: Add only.
    IfNoneMatch,
    /// `If-Match` (empty): Replace only.
    IfMatch,
}

/// A write on the Privileges subtree; every one is verified before it is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Post {
        entry: Privilege,
    },
    Put {
        name: PrivilegeName,
        entry: Privilege,
        precondition: Precondition,
    },
    PutLeaf {
        name: PrivilegeName,
        leaf: String,
        value: String,
    },
    Delete {
        name: PrivilegeName,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    WellKnownCore,
    ListPrivileges,
    GetPrivilege(PrivilegeName),
    GetLeaf(PrivilegeName, String),
    ListGroups,
    GetGroup(String),
    ListDevices,
    GetDevice(String),
    /// The failure report `<id>` of a refused write (only its requester may read it).
    GetReport(String),
    /// A page of the audit trail (the query is read by the service).
    GetAudit,
    Write(Write),
}

fn path_of(request: &Packet) -> Result<Vec<String>, FrontError> {
    coap::uri_path(request).map_err(|e| FrontError::BadRequest(e.to_string()))
}

fn body_document(request: &Packet) -> Result<Value, FrontError> {
    if request.payload.len() > MAX_REQUEST_BODY {
        return Err(FrontError::TooLarge(request.payload.len()));
    }
    match coap::content_format(request) {
        None | Some(content_format::CBOR) => Value::from_cbor(&request.payload),
        Some(content_format::JSON) => Value::from_json(&request.payload),
        Some(other) => {
            return Err(FrontError::UnsupportedContentFormat(other.to_string()));
        }
    }
    .map_err(|e| FrontError::BadRequest(e.to_string()))
}

fn body_text(request: &Packet) -> Result<String, FrontError> {
    if request.payload.len() > MAX_REQUEST_BODY {
        return Err(FrontError::TooLarge(request.payload.len()));
    }
    match coap::content_format(request) {
        None | Some(content_format::TEXT) => String::from_utf8(request.payload.clone())
            .map_err(|_| FrontError::BadRequest("leaf value is not UTF-8".into())),
        Some(other) => Err(FrontError::UnsupportedContentFormat(other.to_string())),
    }
}

fn name(s: &str) -> Result<PrivilegeName, FrontError> {
    PrivilegeName::new(s).map_err(|e| FrontError::NotFound(e.to_string()))
}

/// Reads a request as a command. Nothing is executed here.
pub fn parse_request(request: &Packet) -> Result<Command, FrontError> {
    let method = match request.header.code {
        MessageClass::Request(m) => m,
        _ => return Err(FrontError::BadRequest("not a request".into())),
    };
    // RFC 7252 §5.10.2: a request for a proxy we are not is answered 5.05, whatever its path.
    if request.get_option(CoapOption::ProxyUri).is_some()
        || request.get_option(CoapOption::ProxyScheme).is_some()
    {
        return Err(FrontError::ProxyingNotSupported);
    }
    let path = path_of(request)?;
    let segments: Vec<&str> = path.iter().map(String::as_str).collect();
    let display = format!("/{}", segments.join("/"));
    let not_allowed = || Err(FrontError::MethodNotAllowed(display.clone()));
    use RequestType::{Delete, Get, Post, Put};
    match (segments.as_slice(), method) {
        ([".well-known", "core"], Get) => Ok(Command::WellKnownCore),
        ([".well-known", "core"], _) => not_allowed(),
        (["GwConfig", "Privileges"], Get) => Ok(Command::ListPrivileges),
        (["GwConfig", "Privileges"], Post) => Ok(Command::Write(Write::Post {
            entry: Privilege::from_request(&body_document(request)?)
                .map_err(|e| FrontError::BadRequest(e.to_string()))?,
        })),
        (["GwConfig", "Privileges"], _) => not_allowed(),
        (["GwConfig", "Privileges", x], Get) => Ok(Command::GetPrivilege(name(x)?)),
        (["GwConfig", "Privileges", x], Put) => {
            let if_match = request.get_option(CoapOption::IfMatch).is_some();
            let if_none_match = request.get_option(CoapOption::IfNoneMatch).is_some();
            let precondition = match (if_match, if_none_match) {
                (false, false) => Precondition::None,
                (false, true) => Precondition::IfNoneMatch,
                (true, false) => Precondition::IfMatch,
                (true, true) => {
                    return Err(FrontError::BadRequest(
                        "If-Match and If-None-Match together".into(),
                    ));
                }
            };
            Ok(Command::Write(Write::Put {
                name: name(x)?,
                entry: Privilege::from_request(&body_document(request)?)
                    .map_err(|e| FrontError::BadRequest(e.to_string()))?,
                precondition,
            }))
        }
        (["GwConfig", "Privileges", x], Delete) => {
            Ok(Command::Write(Write::Delete { name: name(x)? }))
        }
        (["GwConfig", "Privileges", _], _) => not_allowed(),
        (["GwConfig", "Privileges", x, leaf], Get) => {
            Ok(Command::GetLeaf(name(x)?, (*leaf).to_owned()))
        }
        (["GwConfig", "Privileges", x, leaf], Put) => Ok(Command::Write(Write::PutLeaf {
            name: name(x)?,
            leaf: (*leaf).to_owned(),
            value: body_text(request)?,
        })),
        (["GwConfig", "Privileges", _, _], _) => not_allowed(),
        (["GwConfig", "Groups"], Get) => Ok(Command::ListGroups),
        (["GwConfig", "Groups", g], Get) => Ok(Command::GetGroup((*g).to_owned())),
        (["GwConfig", "Devices"], Get) => Ok(Command::ListDevices),
        (["GwConfig", "Devices", d], Get) => Ok(Command::GetDevice((*d).to_owned())),
        (["GwConfig", "Groups" | "Devices", ..], _) if segments.len() <= 3 => not_allowed(),
        (["GwConfig", "Reports", id], Get) => Ok(Command::GetReport((*id).to_owned())),
        (["GwConfig", "Reports", _], _) => not_allowed(),
        (["GwConfig", "Audit"], Get) => Ok(Command::GetAudit),
        (["GwConfig", "Audit"], _) => not_allowed(),
        _ => Err(FrontError::NotFound(display)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: RequestType, path: &str) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(method);
        for seg in path.trim_start_matches('/').split('/') {
            p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
        }
        p
    }

    fn body() -> Vec<u8> {
        Value::map([
            ("TargetID", Value::text("G1")),
            ("TargetType", Value::text("Group")),
            ("URI", Value::text("/3/0")),
            ("ACL", Value::text("Get=ServerB")),
        ])
        .to_cbor()
    }

    #[test]
    fn post_on_collection_is_add() {
        let mut r = request(RequestType::Post, "/GwConfig/Privileges");
        r.payload = body();
        match parse_request(&r).unwrap() {
            Command::Write(Write::Post { entry }) => assert_eq!(entry.target_id, "G1"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn put_preconditions_are_read() {
        let mut r = request(RequestType::Put, "/GwConfig/Privileges/p7");
        r.payload = body();
        r.add_option(CoapOption::IfNoneMatch, vec![]);
        assert!(matches!(
            parse_request(&r).unwrap(),
            Command::Write(Write::Put {
                precondition: Precondition::IfNoneMatch,
                ..
            })
        ));
    }

    #[test]
    fn json_body_is_accepted() {
        let mut r = request(RequestType::Post, "/GwConfig/Privileges");
        r.payload =
            br#"{"TargetID":"devA","TargetType":"Device","URI":"/3/0","ACL":"Get=ServerB"}"#
                .to_vec();
        r.add_option(CoapOption::ContentFormat, vec![50]);
        assert!(matches!(
            parse_request(&r).unwrap(),
            Command::Write(Write::Post { .. })
        ));
    }

    #[test]
    fn wrong_content_format_is_4_15() {
        let mut r = request(RequestType::Post, "/GwConfig/Privileges");
        r.payload = body();
        r.add_option(CoapOption::ContentFormat, vec![0]);
        assert!(matches!(
            parse_request(&r),
            Err(FrontError::UnsupportedContentFormat(_))
        ));
    }

    #[test]
    fn malformed_body_is_4_00() {
        let mut r = request(RequestType::Post, "/GwConfig/Privileges");
        r.payload = vec![0xa1, 0xff];
        assert!(matches!(parse_request(&r), Err(FrontError::BadRequest(_))));
        r.payload = vec![0; MAX_REQUEST_BODY + 1];
        assert!(matches!(parse_request(&r), Err(FrontError::TooLarge(_))));
    }

    /// `{"TargetID":…, "ACL": "Get=ServerB", "ACL": "Get=*"}` in either format is a 4.00.
    #[test]
    fn duplicate_keys_in_the_body_are_4_00() {
        let mut r = request(RequestType::Post, "/GwConfig/Privileges");
        let mut cbor = body();
        cbor[0] += 1; // one more map entry …
        cbor.extend_from_slice(b"\x63ACL\x65Get=*"); // … naming ACL again
        r.payload = cbor;
        assert!(
            matches!(parse_request(&r), Err(FrontError::BadRequest(ref m)) if m.contains("duplicate")),
            "{:?}",
            parse_request(&r)
        );
        let mut r = request(RequestType::Put, "/GwConfig/Privileges/p1");
        r.payload = br#"{"TargetID":"devA","TargetType":"Device","URI":"/3/0","ACL":"Get=ServerB","ACL":"Get=*"}"#.to_vec();
        r.add_option(CoapOption::ContentFormat, vec![50]);
        assert!(
            matches!(parse_request(&r), Err(FrontError::BadRequest(ref m)) if m.contains("duplicate")),
            "{:?}",
            parse_request(&r)
        );
    }

    /// Proxy-Uri or Proxy-Scheme is 5.05, even next to a path we serve (it was served as if
    /// the option were not there).
    #[test]
    fn proxy_requests_are_5_05() {
        let mut r = request(RequestType::Get, "/GwConfig/Privileges");
        r.add_option(CoapOption::ProxyScheme, b"coap".to_vec());
        let e = parse_request(&r).unwrap_err();
        assert_eq!(e, FrontError::ProxyingNotSupported);
        assert_eq!(e.code(), coap_lite::ResponseType::ProxyingNotSupported);
        let mut r = Packet::new();
        r.header.code = MessageClass::Request(RequestType::Get);
        r.add_option(CoapOption::ProxyUri, b"coap://10.0.0.1/3/0".to_vec());
        assert_eq!(parse_request(&r), Err(FrontError::ProxyingNotSupported));
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert!(matches!(
            parse_request(&request(RequestType::Get, "/nope")),
            Err(FrontError::NotFound(_))
        ));
        assert!(matches!(
            parse_request(&request(RequestType::Delete, "/GwConfig/Privileges")),
            Err(FrontError::MethodNotAllowed(_))
        ));
        assert!(matches!(
            parse_request(&request(RequestType::Put, "/GwConfig/Groups/G1")),
            Err(FrontError::MethodNotAllowed(_))
        ));
    }

    #[test]
    fn reports_are_read_only_and_not_listed() {
        assert_eq!(
            parse_request(&request(RequestType::Get, "/GwConfig/Reports/ab12")).unwrap(),
            Command::GetReport("ab12".into())
        );
        assert!(matches!(
            parse_request(&request(RequestType::Delete, "/GwConfig/Reports/ab12")),
            Err(FrontError::MethodNotAllowed(_))
        ));
        assert!(matches!(
            parse_request(&request(RequestType::Get, "/GwConfig/Reports")),
            Err(FrontError::NotFound(_))
        ));
    }

    #[test]
    fn audit_is_read_only() {
        assert_eq!(
            parse_request(&request(RequestType::Get, "/GwConfig/Audit")).unwrap(),
            Command::GetAudit
        );
        for method in [RequestType::Post, RequestType::Put, RequestType::Delete] {
            assert!(matches!(
                parse_request(&request(method, "/GwConfig/Audit")),
                Err(FrontError::MethodNotAllowed(_))
            ));
        }
        assert!(matches!(
            parse_request(&request(RequestType::Get, "/GwConfig/Audit/1")),
            Err(FrontError::NotFound(_))
        ));
    }

    #[test]
    fn leaf_put_takes_text() {
        let mut r = request(RequestType::Put, "/GwConfig/Privileges/p1/ACL");
        r.payload = b"Get=ServerC".to_vec();
        assert!(matches!(
            parse_request(&r).unwrap(),
            Command::Write(Write::PutLeaf { ref leaf, ref value, .. }) if leaf == "ACL" && value == "Get=ServerC"
        ));
    }
}
