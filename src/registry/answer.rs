//! The responses of the registration interface, built from a request and an outcome: 2.01
//! Created with the location as Location-Path for a Register, 2.04 Changed for an Update,
//! 2.02 Deleted for a De-register, and an empty response with the refusal's code otherwise.
//!
//! Only message shapes: the type and MID are [`crate::coap::ServerExchanges::respond`]'s to
//! set, the codes of refusals are chosen by [`super::RequestError::coap_code`] and
//! [`super::RegistryError::coap_code`].

use coap_lite::{CoapOption, Packet, ResponseType};

use super::table::Registered;
use crate::coap::response_to;

/// 2.01 Created with `Location-Path: rd, <id>` (LwM2M Core 1.1 §6.2.1).
pub fn created(request: &Packet, registered: &Registered) -> Packet {
    let mut r = response_to(request, ResponseType::Created);
    for segment in registered.location.split('/') {
        r.add_option(CoapOption::LocationPath, segment.as_bytes().to_vec());
    }
    r
}

/// 2.04 Changed, the answer to an Update.
pub fn changed(request: &Packet) -> Packet {
    response_to(request, ResponseType::Changed)
}

/// 2.02 Deleted, the answer to a De-register.
pub fn deleted(request: &Packet) -> Packet {
    response_to(request, ResponseType::Deleted)
}

/// An empty response with `code` (a refusal).
pub fn refused(request: &Packet, code: ResponseType) -> Packet {
    response_to(request, code)
}

#[cfg(test)]
mod tests {
    //! Whole exchanges as a client sees them: request → parse → registry → response.

    use std::time::{Duration, Instant};

    use coap_lite::{MessageClass, MessageType, RequestType};

    use super::*;
    use crate::coap::{set_content_format, set_uri};
    use crate::lwm2m::content_format::LINK_FORMAT;
    use crate::registry::{Account, RegistrationRequest, Registry, RegistryConfig};

    fn request(method: RequestType, uri: &str, payload: &[u8]) -> Packet {
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.message_id = 0x1234;
        p.set_token(vec![1, 2, 3, 4]);
        p.header.code = MessageClass::Request(method);
        set_uri(&mut p, uri);
        if !payload.is_empty() {
            set_content_format(&mut p, LINK_FORMAT);
            p.payload = payload.to_vec();
        }
        p
    }

    /// Plays the server role for one request from `endpoint` (its authenticated name) on
    /// `account` over session `peer`.
    fn serve(
        r: &mut Registry<u8>,
        now: Instant,
        account: &Account,
        endpoint: &str,
        peer: u8,
        p: &Packet,
    ) -> Packet {
        let outcome = match RegistrationRequest::parse(p) {
            Err(e) => return refused(p, e.coap_code()),
            Ok(RegistrationRequest::Register { endpoint, params }) => r
                .register(now, account, &endpoint, params, peer)
                .map(|reg| created(p, &reg)),
            Ok(RegistrationRequest::Update { location, params }) => r
                .update(now, account, endpoint, &location, peer, params)
                .map(|()| changed(p)),
            Ok(RegistrationRequest::Deregister { location }) => r
                .deregister(now, account, endpoint, &location)
                .map(|()| deleted(p)),
        };
        outcome.unwrap_or_else(|e| refused(p, e.coap_code()))
    }

    fn location(p: &Packet) -> String {
        let segments = p.get_option(CoapOption::LocationPath).unwrap();
        let texts: Vec<_> = segments
            .iter()
            .map(|s| String::from_utf8(s.clone()).unwrap())
            .collect();
        texts.join("/")
    }

    fn code(p: &Packet) -> MessageClass {
        p.header.code
    }

    /// Wakaama's whole life (PEERS.md): Register with its payload, follow the Location-Path
    /// for an empty Update, then De-register; a later Update gets 4.04.
    #[test]
    fn wakaama_register_update_deregister() {
        let t0 = Instant::now();
        let own = Account::new("gateway");
        let mut r: Registry<u8> = Registry::new(RegistryConfig::new(8));
        let payload = br#"</>;rt="oma.lwm2m";ct=110,</1>;ver=1.1,</1/0>,</2/0>,</3/0>,</31024>;ver=1.0,</31024/10>"#;
        let reg = request(
            RequestType::Post,
            "/rd?lwm2m=1.1&ep=wakaama&b=U&lt=20",
            payload,
        );
        let answer = serve(&mut r, t0, &own, "wakaama", 1, &reg);
        assert_eq!(code(&answer), MessageClass::Response(ResponseType::Created));
        assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(answer.get_token(), &[1, 2, 3, 4]);
        let loc = location(&answer);
        assert_eq!(loc, "rd/1");

        let update = request(RequestType::Post, &format!("/{loc}"), b"");
        let t10 = t0 + Duration::from_secs(10);
        let answer = serve(&mut r, t10, &own, "wakaama", 1, &update);
        assert_eq!(code(&answer), MessageClass::Response(ResponseType::Changed));
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(30)));

        let bye = request(RequestType::Delete, &format!("/{loc}"), b"");
        let answer = serve(&mut r, t10, &own, "wakaama", 1, &bye);
        assert_eq!(code(&answer), MessageClass::Response(ResponseType::Deleted));
        let answer = serve(&mut r, t10, &own, "wakaama", 1, &update);
        assert_eq!(
            code(&answer),
            MessageClass::Response(ResponseType::NotFound)
        );
    }

    /// Anjay registering as 1.3 is told 4.12, and nothing is registered.
    #[test]
    fn unsupported_version_answers_4_12() {
        let mut r: Registry<u8> = Registry::new(RegistryConfig::new(8));
        let reg = request(RequestType::Post, "/rd?lwm2m=1.3&ep=anjay", b"</3/0>");
        let answer = serve(&mut r, Instant::now(), &Account::new("g"), "anjay", 1, &reg);
        assert_eq!(
            code(&answer),
            MessageClass::Response(ResponseType::PreconditionFailed)
        );
        assert!(r.is_empty());
    }
}
