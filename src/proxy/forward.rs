//! Faithful forwarding (issue 8 §4), sans-IO: the request the gateway sends to a device for a
//! server's proxied request, and the response the server gets back for the device's answer.
//!
//! # Options, by number (RFC 7252 §5.10, RFC 7641, RFC 7959, RFC 8132)
//!
//! | towards the device | options |
//! |---|---|
//! | copied | If-Match 1, ETag 4, If-None-Match 5, Content-Format 12, Uri-Query 15, Accept 17, Size1 60 |
//! | rebuilt | Uri-Path 11 (the path after the prefix) |
//! | consumed by the gateway | Uri-Host 3, Uri-Port 7 (they name the gateway), Observe 6 (the relay), Block2 23 and Block1 27 (the gateway reassembles, then serves at the server's block size), Size2 28, No-Response 258 |
//! | refused | Proxy-Uri 35, Proxy-Scheme 39 → 5.05 (the gateway routes by prefix, it is no forward proxy) |
//! | unknown | elective (even number) dropped; critical (odd) → 4.02 Bad Option |
//!
//! | towards the server | options |
//! |---|---|
//! | copied | ETag 4, Content-Format 12, Max-Age 14, Location-Query 20 |
//! | rebuilt | Location-Path 8 (the device prefix put back in front) |
//! | dropped | Block1/Block2/Size1/Size2 (the body is whole; the server-side pipeline slices and sizes it), Observe (the relay numbers notifications per observer), anything else |
//!
//! The response code and payload pass unchanged.

use coap_lite::{CoapOption, MessageClass, Packet, ResponseType};

/// Options copied from the server's request to the device's.
const REQUEST_COPIED: [u16; 7] = [1, 4, 5, 12, 15, 17, 60];
/// Options of the server's request the gateway acts on itself (not forwarded, not refused).
const REQUEST_CONSUMED: [u16; 8] = [3, 6, 7, 11, 23, 27, 28, 258];
/// Proxy-Uri and Proxy-Scheme.
const PROXY_OPTIONS: [u16; 2] = [35, 39];
/// Options copied from the device's response to the server's.
const RESPONSE_COPIED: [u16; 4] = [4, 12, 14, 20];
/// Location-Path.
const LOCATION_PATH: u16 = 8;

/// Why a request is answered by the gateway instead of being forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// A critical option the gateway does not know (RFC 7252 §5.4.1).
    #[error("unknown critical option {0}")]
    UnknownCritical(u16),
    /// Proxy-Uri or Proxy-Scheme: the gateway is reached by prefix, not as a forward proxy.
    #[error("Proxy-Uri/Proxy-Scheme not supported: address the device as /<prefix>/<path>")]
    ProxyUri,
}

impl ForwardError {
    /// The code the server gets.
    pub fn code(&self) -> ResponseType {
        match self {
            ForwardError::UnknownCritical(_) => ResponseType::BadOption,
            ForwardError::ProxyUri => ResponseType::ProxyingNotSupported,
        }
    }
}

fn is_critical(number: u16) -> bool {
    number & 1 == 1
}

/// The request to send to the device for `request` (a server's, already reassembled if it
/// came in Block1 blocks), addressed to `device_path` (the segments after the prefix). Code
/// and payload are the server's; type, MID and token are the device link's business.
pub fn outbound<S: AsRef<str>>(
    request: &Packet,
    device_path: &[S],
) -> Result<Packet, ForwardError> {
    let mut out = Packet::new();
    out.header.code = request.header.code;
    for (&number, values) in request.options() {
        if PROXY_OPTIONS.contains(&number) {
            return Err(ForwardError::ProxyUri);
        }
        if REQUEST_COPIED.contains(&number) {
            out.set_option(CoapOption::from(number), values.clone());
        } else if !REQUEST_CONSUMED.contains(&number) && is_critical(number) {
            return Err(ForwardError::UnknownCritical(number));
        }
    }
    let path = device_path
        .iter()
        .map(|s| s.as_ref().as_bytes().to_vec())
        .collect();
    out.set_option(CoapOption::UriPath, path);
    out.payload = request.payload.clone();
    Ok(out)
}

/// The response the server gets for the device's `response`: code, payload and the copied
/// options; a Location-Path gets `prefix` back in front, so the server can address what the
/// device created through the gateway.
pub fn inbound(response: &Packet, prefix: &str) -> Packet {
    let mut out = Packet::new();
    out.header.code = response.header.code;
    for (&number, values) in response.options() {
        if RESPONSE_COPIED.contains(&number) {
            out.set_option(CoapOption::from(number), values.clone());
        }
    }
    if let Some(location) = response.get_option(CoapOption::LocationPath) {
        let mut path = std::collections::LinkedList::new();
        path.push_back(prefix.as_bytes().to_vec());
        path.extend(location.iter().cloned());
        out.set_option(CoapOption::from(LOCATION_PATH), path);
    }
    out.payload = response.payload.clone();
    out
}

/// An answer the gateway gives itself: `code` and a diagnostic payload (RFC 7252 §5.5.2).
pub fn refusal(code: ResponseType, diagnostic: impl Into<String>) -> Packet {
    let mut out = Packet::new();
    out.header.code = MessageClass::Response(code);
    out.payload = diagnostic.into().into_bytes();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_lite::RequestType;

    fn get(path: &str) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(RequestType::Get);
        crate::coap::set_uri(&mut p, path);
        p
    }

    fn numbers(p: &Packet) -> Vec<u16> {
        p.options()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, _)| *n)
            .collect()
    }

    #[test]
    fn the_path_after_the_prefix_and_the_copied_options_reach_the_device() {
        let mut request = get("/dev1/3/0/1?x=1");
        request.header.code = MessageClass::Request(RequestType::Put);
        crate::coap::set_accept(&mut request, 110);
        crate::coap::set_content_format(&mut request, 0);
        request.add_option(CoapOption::IfMatch, vec![1, 2]);
        request.add_option(CoapOption::ETag, vec![9]);
        request.add_option(CoapOption::UriHost, b"gw.example".to_vec());
        request.add_option(CoapOption::Block2, vec![0x02]);
        request.add_option(CoapOption::Unknown(2048), vec![7]); // elective, unknown
        request.payload = b"hello".to_vec();
        let out = outbound(&request, &["3", "0", "1"]).unwrap();
        assert_eq!(out.header.code, request.header.code);
        assert_eq!(crate::coap::uri_path(&out).unwrap(), ["3", "0", "1"]);
        assert_eq!(crate::coap::uri_query(&out).unwrap(), ["x=1"]);
        assert_eq!(crate::coap::accept(&out), Some(110));
        assert_eq!(crate::coap::content_format(&out), Some(0));
        assert_eq!(numbers(&out), [1, 4, 11, 12, 15, 17]);
        assert_eq!(out.payload, b"hello");
    }

    #[test]
    fn an_unknown_critical_option_is_4_02_and_proxy_uri_is_5_05() {
        let mut request = get("/dev1/3");
        request.add_option(CoapOption::Unknown(2049), vec![]);
        let e = outbound(&request, &["3"]).unwrap_err();
        assert_eq!(e, ForwardError::UnknownCritical(2049));
        assert_eq!(e.code(), ResponseType::BadOption);
        let mut request = get("/dev1/3");
        request.add_option(CoapOption::ProxyUri, b"coap://x/3".to_vec());
        assert_eq!(
            outbound(&request, &["3"]).unwrap_err().code(),
            ResponseType::ProxyingNotSupported
        );
    }

    #[test]
    fn the_server_gets_the_code_payload_and_location_with_the_prefix() {
        let mut response = Packet::new();
        response.header.code = MessageClass::Response(ResponseType::Created);
        response.add_option(CoapOption::LocationPath, b"3303".to_vec());
        response.add_option(CoapOption::LocationPath, b"1".to_vec());
        response.add_option(CoapOption::MaxAge, vec![60]);
        response.add_option(CoapOption::ETag, vec![5]);
        response.add_option(CoapOption::Block2, vec![0x08]);
        response.add_option(CoapOption::Observe, vec![3]);
        crate::coap::set_content_format(&mut response, 11542);
        response.payload = vec![1, 2, 3];
        let out = inbound(&response, "d1");
        assert_eq!(out.header.code, response.header.code);
        let location: Vec<_> = out
            .get_option(CoapOption::LocationPath)
            .unwrap()
            .iter()
            .map(|v| String::from_utf8(v.clone()).unwrap())
            .collect();
        assert_eq!(location, ["d1", "3303", "1"]);
        assert_eq!(numbers(&out), [4, 8, 12, 14]);
        assert_eq!(out.payload, [1, 2, 3]);
    }
}
