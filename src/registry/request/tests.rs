//! Requests built the way an LwM2M client builds them (Uri-Path and Uri-Query options via
//! `set_uri`, Content-Format 40), one test per refusal with its CoAP code.

use super::*;
use crate::coap::{set_content_format, set_uri};
use crate::registry::link_format::ObjectLink;

const WAKAAMA: &[u8] =
    br#"</>;rt="oma.lwm2m";ct=110,</1>;ver=1.1,</1/0>,</2/0>,</3/0>,</31024>;ver=1.0,</31024/10>"#;
const ANJAY: &[u8] = b"</1/1>,</2>,</3/0>,</10>;ver=1.1,</10/0>";

fn request(method: RequestType, uri: &str, payload: &[u8]) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Request(method);
    set_uri(&mut p, uri);
    if !payload.is_empty() {
        set_content_format(&mut p, LINK_FORMAT);
        p.payload = payload.to_vec();
    }
    p
}

fn post(uri: &str, payload: &[u8]) -> Packet {
    request(RequestType::Post, uri, payload)
}

#[track_caller]
fn register(uri: &str) -> (String, RegisterParams) {
    match RegistrationRequest::parse(&post(uri, ANJAY)).unwrap() {
        RegistrationRequest::Register { endpoint, params } => (endpoint, params),
        other => panic!("not a Register: {other:?}"),
    }
}

#[track_caller]
fn refused(p: &Packet, code: ResponseType) -> RequestError {
    let e = RegistrationRequest::parse(p).expect_err("refused");
    assert_eq!(e.coap_code(), code, "{e}");
    e
}

#[track_caller]
fn refused_register(uri: &str, code: ResponseType) -> RequestError {
    refused(&post(uri, ANJAY), code)
}

/// Wakaama's Register (PEERS.md).
#[test]
fn wakaama_register() {
    let r = RegistrationRequest::parse(&post("/rd?lwm2m=1.1&ep=wakaama&b=U&lt=300", WAKAAMA));
    let RegistrationRequest::Register { endpoint, params } = r.unwrap() else {
        panic!("not a Register");
    };
    assert_eq!(endpoint, "wakaama");
    assert_eq!(params.lifetime_s, 300);
    assert_eq!(params.version, Version::V1_1);
    assert_eq!(params.binding, Binding::U);
    assert!(!params.queue_mode());
    assert_eq!(params.objects.content_formats, vec![110]);
    assert_eq!(params.objects.objects.len(), 6);
}

/// Anjay's Register (PEERS.md): no `b`, a bare `Q` in queue mode.
#[test]
fn anjay_register_in_queue_mode() {
    let (endpoint, params) = register("/rd?lwm2m=1.2&ep=anjay&lt=86400&Q");
    assert_eq!(endpoint, "anjay");
    assert_eq!(params.version, Version::V1_2);
    assert_eq!(params.binding, Binding::U);
    assert!(params.queue_flag && params.queue_mode());
    assert_eq!(
        params.objects.objects[0],
        ObjectLink {
            object: 1,
            instance: Some(1),
            version: None
        }
    );
}

#[test]
fn register_defaults() {
    let (_, params) = register("/rd?ep=old");
    assert_eq!(params.lifetime_s, DEFAULT_LIFETIME_S);
    assert_eq!(params.version, Version::V1_0);
    assert_eq!(params.binding, Binding::U);
    assert!(!params.queue_mode());
}

#[test]
fn register_tolerates_sms_sn_and_unknown_arguments() {
    let (_, params) = register("/rd?ep=e&sms=%2B123&sn=1&future=x&b=UQ");
    assert_eq!(params.binding, Binding::UQ);
    assert!(params.queue_mode() && !params.queue_flag);
}

#[test]
fn register_without_content_format_is_accepted() {
    let mut p = post("/rd?ep=e", ANJAY);
    p = crate::coap::without_option(&p, CoapOption::ContentFormat.into());
    assert!(matches!(
        RegistrationRequest::parse(&p),
        Ok(RegistrationRequest::Register { .. })
    ));
}

fn with_query(mut p: Packet, arg: &[u8]) -> Packet {
    p.add_option(CoapOption::UriQuery, arg.to_vec());
    p
}

#[test]
fn register_endpoint_refusals() {
    use ResponseType::BadRequest;
    assert_eq!(
        refused_register("/rd?lt=60", BadRequest),
        RequestError::MissingEndpoint
    );
    assert_eq!(
        refused_register("/rd?ep=", BadRequest),
        RequestError::BadEndpoint
    );
    assert_eq!(
        refused_register("/rd?ep", BadRequest),
        RequestError::BadEndpoint
    );
    let control = with_query(post("/rd", ANJAY), b"ep=a\nb");
    assert_eq!(refused(&control, BadRequest), RequestError::BadEndpoint);
    let long = format!("/rd?ep={}", "e".repeat(MAX_ENDPOINT_LEN + 1));
    assert_eq!(
        refused_register(&long, BadRequest),
        RequestError::BadEndpoint
    );
    let max = format!("/rd?ep={}", "e".repeat(MAX_ENDPOINT_LEN));
    assert!(RegistrationRequest::parse(&post(&max, ANJAY)).is_ok());
    assert_eq!(
        refused_register("/rd?ep=e&ep=f", BadRequest),
        RequestError::DuplicateQuery { name: "ep" }
    );
}

#[test]
fn register_lifetime_refusals() {
    for lt in ["0", "", "-1", "+5", "1.5", "4294967296", "abc", " 60"] {
        let e = refused_register(&format!("/rd?ep=e&lt={lt}"), ResponseType::BadRequest);
        assert_eq!(e, RequestError::BadLifetime { value: lt.into() }, "{lt}");
    }
    let (_, p) = register("/rd?ep=e&lt=4294967295");
    assert_eq!(p.lifetime_s, u32::MAX);
    assert_eq!(
        refused_register("/rd?ep=e&lt=5&lt=6", ResponseType::BadRequest),
        RequestError::DuplicateQuery { name: "lt" }
    );
}

#[test]
fn register_binding_refusals() {
    for b in ["S", "T", "UQS", "u", "", "N"] {
        let e = refused_register(&format!("/rd?ep=e&b={b}"), ResponseType::BadRequest);
        assert_eq!(e, RequestError::BadBinding { value: b.into() }, "{b}");
    }
    assert_eq!(
        refused_register("/rd?ep=e&Q=1", ResponseType::BadRequest),
        RequestError::BadQueueFlag
    );
    assert_eq!(
        refused_register("/rd?ep=e&Q&Q", ResponseType::BadRequest),
        RequestError::DuplicateQuery { name: "Q" }
    );
}

#[test]
fn unsupported_version_is_4_12_and_garbage_is_4_00() {
    for v in ["1.3", "2.0", "0.9", "1.10"] {
        let e = refused_register(
            &format!("/rd?ep=e&lwm2m={v}"),
            ResponseType::PreconditionFailed,
        );
        assert_eq!(e, RequestError::UnsupportedVersion { value: v.into() });
    }
    for v in ["", "1", "v1.1", "1.1.1", "1.x", "1234.0"] {
        let e = refused_register(&format!("/rd?ep=e&lwm2m={v}"), ResponseType::BadRequest);
        assert_eq!(e, RequestError::BadVersion { value: v.into() }, "{v}");
    }
}

#[test]
fn register_payload_refusals() {
    use ResponseType::*;
    assert_eq!(
        refused(&post("/rd?ep=e", b""), BadRequest),
        RequestError::MissingObjectList
    );
    assert!(matches!(
        refused(&post("/rd?ep=e", b"</1"), BadRequest),
        RequestError::LinkFormat(LinkFormatError::Unterminated { index: 0 })
    ));
    let mut json = post("/rd?ep=e", ANJAY);
    set_content_format(&mut json, 50);
    assert_eq!(
        refused(&json, UnsupportedContentFormat),
        RequestError::UnsupportedContentFormat { content_format: 50 }
    );
    let mut bad_cf = post("/rd?ep=e", ANJAY);
    crate::coap::set_single(&mut bad_cf, CoapOption::ContentFormat, vec![1, 2, 3]);
    assert!(matches!(
        refused(&bad_cf, BadRequest),
        RequestError::BadOption { .. }
    ));
}

#[test]
fn query_bounds_and_encoding() {
    use ResponseType::BadRequest;
    let many = format!("/rd?ep=e{}", "&x".repeat(MAX_QUERY_ARGS));
    assert_eq!(
        refused_register(&many, BadRequest),
        RequestError::TooManyQueryArgs {
            max: MAX_QUERY_ARGS
        }
    );
    let long = format!("/rd?ep=e&sms={}", "1".repeat(MAX_QUERY_ARG_LEN));
    assert_eq!(
        refused_register(&long, BadRequest),
        RequestError::QueryArgTooLong {
            max: MAX_QUERY_ARG_LEN
        }
    );
    let not_utf8 = with_query(post("/rd", ANJAY), b"ep=\xff");
    assert_eq!(
        refused(&not_utf8, BadRequest),
        RequestError::BadOption { option: 15 }
    );
}

#[test]
fn update_with_nothing_changes_nothing() {
    // What Wakaama and Anjay send: no query, empty payload.
    let r = RegistrationRequest::parse(&post("/rd/7", b"")).unwrap();
    assert_eq!(
        r,
        RegistrationRequest::Update {
            location: "rd/7".into(),
            params: UpdateParams::default()
        }
    );
}

#[test]
fn update_with_lifetime_binding_and_objects() {
    let r = RegistrationRequest::parse(&post("/rd/7?lt=60&b=UQ&sms=1", ANJAY)).unwrap();
    let RegistrationRequest::Update { location, params } = r else {
        panic!("not an Update");
    };
    assert_eq!(location, "rd/7");
    assert_eq!(params.lifetime_s, Some(60));
    assert_eq!(params.binding, Some(Binding::UQ));
    assert_eq!(params.objects.unwrap().objects.len(), 5);
}

#[test]
fn update_ignores_q_sms_and_unknown_arguments() {
    let r = RegistrationRequest::parse(&post("/rd/7?Q&sms=1&sn=2&x", b"")).unwrap();
    assert!(matches!(r, RegistrationRequest::Update { .. }));
}

#[test]
fn update_refusals() {
    use ResponseType::*;
    for (arg, name) in [("ep=e", "ep"), ("lwm2m=1.1", "lwm2m")] {
        let e = refused(&post(&format!("/rd/7?{arg}"), b""), BadRequest);
        assert_eq!(e, RequestError::NotAllowedInUpdate { name });
    }
    assert!(matches!(
        refused(&post("/rd/7?lt=0", b""), BadRequest),
        RequestError::BadLifetime { .. }
    ));
    assert!(matches!(
        refused(&post("/rd/7?b=T", b""), BadRequest),
        RequestError::BadBinding { .. }
    ));
    assert!(matches!(
        refused(&post("/rd/7", b"</3/0>,,"), BadRequest),
        RequestError::LinkFormat(LinkFormatError::EmptyEntry { index: 1 })
    ));
}

#[test]
fn deregister() {
    let p = request(RequestType::Delete, "/rd/abc", b"");
    assert_eq!(
        RegistrationRequest::parse(&p).unwrap(),
        RegistrationRequest::Deregister {
            location: "rd/abc".into()
        }
    );
}

#[test]
fn wrong_methods_are_4_05() {
    use RequestType::*;
    for (method, uri) in [
        (Get, "/rd"),
        (Put, "/rd"),
        (Delete, "/rd"),
        (Get, "/rd/7"),
        (Put, "/rd/7"),
        (Fetch, "/rd/7"),
    ] {
        let e = refused(&request(method, uri, b""), ResponseType::MethodNotAllowed);
        assert!(matches!(e, RequestError::MethodNotAllowed { .. }), "{uri}");
    }
}

#[test]
fn other_paths_are_4_04() {
    use ResponseType::NotFound;
    assert_eq!(
        refused(&post("/rd/7/1", b""), NotFound),
        RequestError::UnknownPath
    );
    assert_eq!(
        refused(&post("/rd//", b""), NotFound),
        RequestError::UnknownPath
    );
    let long = format!("/rd/{}", "1".repeat(MAX_LOCATION_ID_LEN + 1));
    assert_eq!(
        refused(&post(&long, b""), NotFound),
        RequestError::UnknownPath
    );
    assert_eq!(
        refused(&post("/bs?ep=e", b""), NotFound),
        RequestError::NotRegistrationPath
    );
    assert_eq!(
        refused(&post("/", b""), NotFound),
        RequestError::NotRegistrationPath
    );
}

#[test]
fn targets_registry_looks_at_the_first_segment() {
    assert!(targets_registry(&post("/rd", b"")));
    assert!(targets_registry(&post("/rd/3", b"")));
    assert!(!targets_registry(&post("/rdx", b"")));
    assert!(!targets_registry(&post("/GwConfig/rd", b"")));
    assert!(!targets_registry(&post("/", b"")));
}
