//! The secure proxy's pure path for a request a server sends: the datagram decoder, prefix
//! routing, the command of the request for both profiles, the privilege decision over a
//! small index (longest covering URI, device vs group), and the forwarded request and
//! response. Nothing here may panic on any input; a forwarded request keeps the code and
//! payload, and a Location-Path put back starts with the prefix.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use privgw::acl::{Operation, Principal};
use privgw::coap::{self, CoapOption, MessageClass};
use privgw::config::Profile;
use privgw::mo::{Privilege, PrivilegeName};
use privgw::proxy::{Destination, Membership, Prefixes, PrivilegeIndex, command_of, forward};

fn fixtures() -> &'static (Prefixes, PrivilegeIndex, Principal) {
    static F: OnceLock<(Prefixes, PrivilegeIndex, Principal)> = OnceLock::new();
    F.get_or_init(|| {
        let entry = |target: &str, kind: &str, uri: &str, acl: &str| {
            let mut p = Privilege::from_leaves([
                ("TargetID", target),
                ("TargetType", kind),
                ("URI", uri),
                ("ACL", acl),
            ])
            .expect("fixture privilege");
            p.grantor = "ServerA".into();
            p
        };
        let privileges = [
            ("p1", entry("dev1", "Device", "/3/0", "Get=ServerB")),
            ("p2", entry("G1", "Group", "/3", "Get=*&Replace=ServerB")),
            ("p3", entry("G1", "Group", "/3/0", "Delete=ServerB")),
            ("p4", entry("dev2", "Device", "/5", "Exec=ServerB")),
        ]
        .map(|(n, p)| (PrivilegeName::new(n).expect("name"), p));
        let membership = Membership::from_groups([("G1", ["dev1", "dev2"])]);
        (
            Prefixes::new([("d1", "dev1"), ("dev2", "dev2")]),
            PrivilegeIndex::new(privileges, membership),
            Principal::new("ServerB", 102).expect("principal"),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(request) = coap::decode(data) else {
        return;
    };
    let (prefixes, index, principal) = fixtures();
    let segments = coap::uri_path(&request).unwrap_or_default();
    let Destination::Device { device, path } = prefixes.route(&segments) else {
        return;
    };
    if let MessageClass::Request(method) = request.header.code {
        for profile in [
            Profile::Lwm2m(Default::default()),
            Profile::Dm(Default::default()),
        ] {
            if let Ok(command) = command_of(method, path, profile) {
                let text = format!("/{}", path.join("/"));
                let _ = index.decide(principal, device, &text, command);
            }
        }
        let _ = index.decide(principal, device, "/", Operation::Get);
    }
    if let Ok(out) = forward::outbound(&request, path) {
        assert_eq!(out.header.code, request.header.code);
        assert_eq!(out.payload, request.payload);
        assert_eq!(coap::uri_path(&out).ok().as_deref(), Some(path));
    }
    let back = forward::inbound(&request, "d1");
    if let Some(location) = back.get_option(CoapOption::LocationPath) {
        assert_eq!(location.front().map(Vec::as_slice), Some(&b"d1"[..]));
    }
});
