//! The LwM2M Gateway object (Object ID 25, v2.0) and the link-format discovery of the devices
//! behind the gateway (issue 8 §1): what `GET /25`, `/25/<i>`, `/25/<i>/<r>` and the proxy's
//! part of `GET /.well-known/core` answer, so an LwM2M-style server can find the devices and
//! their prefixes. Pure: plain values in, payload bytes out.
//!
//! It owns only the object's resources and their encodings. Where the device list comes from
//! (configuration, registrations) and the routing of `/<prefix>/…` belong to the proxy runtime.
//!
//! # The object (OMA registry `25-2_0.xml`, LwM2M 1.1)
//!
//! | id | resource | type | content here |
//! |---|---|---|---|
//! | 0 | Device ID | String, R, single, mandatory | [`GatewayDevice::device_id`] |
//! | 1 | Prefix | String, R, single, mandatory | [`GatewayDevice::prefix`] |
//! | 3 | IoT Device Objects | Corelnk, R, single, mandatory | [`GatewayDevice::objects`], e.g. `</3/0>,</4/0>` |
//!
//! Resource 2 (Routing Table Entry) existed only in v1.0 and was dropped in v2.0, so it is a
//! 4.04 here like any other id. The registry and the issue agree on 0, 1 and 3.
//!
//! # Rules
//!
//! * **Content formats.** TLV (11542) and SenML-JSON (110). No Accept → TLV, as an LwM2M 1.0
//!   client answers; any other Accept → [`GatewayObjectError::NotAcceptable`] (4.06).
//! * **Paths** are the Uri-Path segments after `25`: `[]` the object, `[i]` one instance,
//!   `[i, r]` one resource. An unknown or non-numeric instance or resource, or a deeper path
//!   (every resource is single, so there are no resource instances) → 4.04; an empty segment
//!   (`/25//0`, `/25/0/`) → 4.00, as the proxy's command mapping does.
//! * **TLV shapes** (LwM2M Core §7.4.3): the object is one Object Instance TLV per instance;
//!   an instance is its resource TLVs, unwrapped (as a client answers `/2/<n>`, see
//!   [`crate::lwm2m::tlv`]); a resource is one Resource TLV. Strings and the Corelnk are their
//!   UTF-8 bytes. The writer is [`tlv::write_tlv`], which is
//!   general (kind, id, bytes); only the `/2` encoders around it are object-specific.
//! * **SenML-JSON shapes** (LwM2M Core §7.4.4): one record per resource with `vs` (String and
//!   Corelnk both map to `vs`). The base name is the requested path, ending in `/` for the
//!   object and an instance (`"bn":"/25/","n":"0/1"`; `"bn":"/25/0/","n":"1"`); a single
//!   resource is one record whose `bn` is its whole path (`"bn":"/25/0/1"`). `serde_json`
//!   builds the records: the project's SenML encoder ([`crate::lwm2m::senml_json::encode`])
//!   writes only the integers of `/2`, and a JSON array of three labels needs no second one.
//! * **Order.** Instances come out by ascending instance id, resources by id. The instance
//!   ids must be unique and not 65535 (reserved in every LwM2M format); otherwise the answer
//!   is [`GatewayObjectError::BadInstances`] (5.00): a gateway fault, never the server's.
//!
//! # Discovery ([`well_known_core`])
//!
//! One link per device prefix, `</dev1>;rt="privgw.device"`, then the object itself,
//! `</25>;ct="11542 110";ver=2.0`; the caller appends the `/GwConfig` links.
//!
//! * **`rt="privgw.device"`** ([`DEVICE_RT`]): the link is the root of a device's tree reached
//!   through the proxy. `rt="oma.lwm2m"` is not used: in LwM2M it marks a client's own object
//!   root (the alternate path of a registration), so a server would read several of them as
//!   the gateway's own roots; and the devices behind the gateway are not all LwM2M (`dm`
//!   profile). An `oma.`-prefixed name would claim a registration OMA never made, so the
//!   value is in the project's own namespace. `/25` says which prefix is which device.
//! * **`ver=2.0`** on `</25>`: without it an LwM2M server assumes object version 1.0 (Core
//!   §5.1.2 / §6.2.1), whose resource 2 we do not have and whose resource 3 it would not know.
//! * **Prefixes are percent-encoded** outside RFC 3986 unreserved characters (`A-Z a-z 0-9 -
//!   . _ ~`), so a configured prefix with `>`, `,`, `;`, `"` or a space cannot break the
//!   link-format; an empty prefix is skipped (it would name the gateway's own root).

use std::fmt::Write as _;

use coap_lite::ResponseType;
use serde_json::{Map, Value as Json};

use crate::lwm2m::CodecError;
use crate::lwm2m::content_format;
use crate::lwm2m::tlv::{self, Kind};

/// The LwM2M Gateway object's ID.
pub const OBJECT_ID: u16 = 25;

/// The Resource Type of a device prefix link in `/.well-known/core` (see the module doc).
pub const DEVICE_RT: &str = "privgw.device";

/// Resource ids of the LwM2M Gateway object v2.0.
pub mod resource {
    /// Device ID (String).
    pub const DEVICE_ID: u16 = 0;
    /// Prefix (String).
    pub const PREFIX: u16 = 1;
    /// IoT Device Objects (Corelnk).
    pub const IOT_DEVICE_OBJECTS: u16 = 3;
}

/// The resources in the order they are written.
const RESOURCES: [u16; 3] = [
    resource::DEVICE_ID,
    resource::PREFIX,
    resource::IOT_DEVICE_OBJECTS,
];

/// One device behind the gateway: one instance of `/25`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayDevice {
    /// The Object Instance ID (unique, not 65535).
    pub instance: u16,
    /// Resource 0: the device's identifier (the DeviceID of the configuration).
    pub device_id: String,
    /// Resource 1: the prefix a server puts in front of the device's paths.
    pub prefix: String,
    /// Resource 3: the device's objects and instances as link-format, e.g. `</3/0>,</4/0>`,
    /// from its registration or the configuration. Written as given.
    pub objects: String,
}

impl GatewayDevice {
    fn value(&self, resource: u16) -> Option<&str> {
        match resource {
            resource::DEVICE_ID => Some(&self.device_id),
            resource::PREFIX => Some(&self.prefix),
            resource::IOT_DEVICE_OBJECTS => Some(&self.objects),
            _ => None,
        }
    }
}

/// Why a read of `/25…` has no 2.05 answer. [`GatewayObjectError::code`] is the one map to
/// CoAP codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayObjectError {
    /// No such instance or resource (or a path deeper than a resource).
    #[error("no {path} in the LwM2M Gateway object")]
    NotFound {
        /// The requested path, e.g. `/25/7/1`.
        path: String,
    },
    /// A path with an empty segment.
    #[error("empty path segment at position {position} after /25")]
    EmptySegment {
        /// The 0-based index of the empty segment after `25`.
        position: usize,
    },
    /// The Accept names a format `/25` is not served in.
    #[error("content format {accept} not served for /25 (11542 TLV or 110 SenML-JSON)")]
    NotAcceptable {
        /// The requested Content-Format.
        accept: u16,
    },
    /// The device list given is not a valid object (a gateway fault).
    #[error("device list is not a valid /25: instance {instance} {why}")]
    BadInstances {
        /// The offending instance id.
        instance: u16,
        /// `"given twice"` or `"is reserved (65535)"`.
        why: &'static str,
    },
    /// The encoder refused a value (a string over the TLV's 24-bit length, or JSON failure).
    #[error(transparent)]
    Encode(#[from] CodecError),
}

impl GatewayObjectError {
    /// The CoAP response code: 4.04, 4.00, 4.06, or 5.00 for the gateway's own faults.
    pub fn code(&self) -> ResponseType {
        match self {
            GatewayObjectError::NotFound { .. } => ResponseType::NotFound,
            GatewayObjectError::EmptySegment { .. } => ResponseType::BadRequest,
            GatewayObjectError::NotAcceptable { .. } => ResponseType::NotAcceptable,
            GatewayObjectError::BadInstances { .. } | GatewayObjectError::Encode(_) => {
                ResponseType::InternalServerError
            }
        }
    }
}

/// What a read selects.
enum Target<'a> {
    Object(Vec<&'a GatewayDevice>),
    Instance(&'a GatewayDevice),
    Resource(&'a GatewayDevice, u16),
}

fn not_found(segments: &[&str]) -> GatewayObjectError {
    let mut path = String::from("/25");
    for s in segments {
        path.push('/');
        path.push_str(&crate::acl::snippet(s));
    }
    GatewayObjectError::NotFound { path }
}

/// The devices sorted by instance, checked unique and not reserved.
fn sorted(devices: &[GatewayDevice]) -> Result<Vec<&GatewayDevice>, GatewayObjectError> {
    let mut all: Vec<&GatewayDevice> = devices.iter().collect();
    all.sort_by_key(|d| d.instance);
    let twice = all.windows(2).find_map(|pair| match pair {
        [a, b] if a.instance == b.instance => Some(a.instance),
        _ => None,
    });
    if let Some(instance) = twice {
        return Err(GatewayObjectError::BadInstances {
            instance,
            why: "given twice",
        });
    }
    if all.last().is_some_and(|d| d.instance == u16::MAX) {
        return Err(GatewayObjectError::BadInstances {
            instance: u16::MAX,
            why: "is reserved (65535)",
        });
    }
    Ok(all)
}

fn select<'a>(
    devices: &'a [GatewayDevice],
    segments: &[&str],
) -> Result<Target<'a>, GatewayObjectError> {
    if let Some(position) = segments.iter().position(|s| s.is_empty()) {
        return Err(GatewayObjectError::EmptySegment { position });
    }
    let all = sorted(devices)?;
    let id = |s: &str| s.parse::<u16>().ok();
    match segments {
        [] => Ok(Target::Object(all)),
        [i, rest @ ..] => {
            let device = id(i)
                .and_then(|i| all.iter().copied().find(|d| d.instance == i))
                .ok_or_else(|| not_found(segments))?;
            match rest {
                [] => Ok(Target::Instance(device)),
                [r] => id(r)
                    .filter(|r| RESOURCES.contains(r))
                    .map(|r| Target::Resource(device, r))
                    .ok_or_else(|| not_found(segments)),
                _ => Err(not_found(segments)),
            }
        }
    }
}

/// The resource TLVs of one instance, unwrapped.
fn tlv_resources(out: &mut Vec<u8>, device: &GatewayDevice) -> Result<(), CodecError> {
    for r in RESOURCES {
        let v = device.value(r).unwrap_or_default();
        tlv::write_tlv(out, Kind::Resource, r, v.as_bytes())?;
    }
    Ok(())
}

fn encode_tlv(target: &Target<'_>) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    match target {
        Target::Object(all) => {
            for device in all {
                let mut inner = Vec::new();
                tlv_resources(&mut inner, device)?;
                tlv::write_tlv(&mut out, Kind::ObjectInstance, device.instance, &inner)?;
            }
        }
        Target::Instance(device) => tlv_resources(&mut out, device)?,
        Target::Resource(device, r) => {
            let v = device.value(*r).unwrap_or_default();
            tlv::write_tlv(&mut out, Kind::Resource, *r, v.as_bytes())?;
        }
    }
    Ok(out)
}

fn record(base_name: Option<String>, name: Option<String>, value: &str) -> Json {
    let mut m = Map::new();
    if let Some(bn) = base_name {
        m.insert("bn".into(), Json::from(bn));
    }
    if let Some(n) = name {
        m.insert("n".into(), Json::from(n));
    }
    m.insert("vs".into(), Json::from(value));
    Json::Object(m)
}

fn encode_senml_json(target: &Target<'_>) -> Result<Vec<u8>, CodecError> {
    let mut records = Vec::new();
    match target {
        Target::Object(all) => {
            for device in all {
                for r in RESOURCES {
                    let bn = records.is_empty().then(|| "/25/".to_owned());
                    let n = format!("{}/{r}", device.instance);
                    records.push(record(bn, Some(n), device.value(r).unwrap_or_default()));
                }
            }
        }
        Target::Instance(device) => {
            for r in RESOURCES {
                let bn = records
                    .is_empty()
                    .then(|| format!("/25/{}/", device.instance));
                records.push(record(
                    bn,
                    Some(r.to_string()),
                    device.value(r).unwrap_or_default(),
                ));
            }
        }
        Target::Resource(device, r) => {
            let bn = format!("/25/{}/{r}", device.instance);
            records.push(record(Some(bn), None, device.value(*r).unwrap_or_default()));
        }
    }
    serde_json::to_vec(&records).map_err(|e| CodecError::Encode {
        format: crate::lwm2m::senml_json::FORMAT,
        what: e.to_string(),
    })
}

/// Answer a read of `/25/<path_segments_after_25…>` with `accept`: the Content-Format of the
/// payload and the payload (a 2.05), or why not (see [`GatewayObjectError::code`]).
///
/// The path is checked before the Accept, so an unknown instance is a 4.04 whatever the
/// Accept (the resource does not exist in any format).
pub fn read(
    devices: &[GatewayDevice],
    path_segments_after_25: &[&str],
    accept: Option<u16>,
) -> Result<(u16, Vec<u8>), GatewayObjectError> {
    let target = select(devices, path_segments_after_25)?;
    match accept {
        None | Some(content_format::TLV) => Ok((content_format::TLV, encode_tlv(&target)?)),
        Some(content_format::SENML_JSON) => {
            Ok((content_format::SENML_JSON, encode_senml_json(&target)?))
        }
        Some(accept) => Err(GatewayObjectError::NotAcceptable { accept }),
    }
}

fn percent_encode_segment(out: &mut String, segment: &str) {
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The proxy's entries of `/.well-known/core` (RFC 6690 link-format): one link per device
/// prefix, in the order given, then `/25`. The caller appends the `/GwConfig` links after a
/// `,`. See the module doc for the attributes and the encoding of prefixes.
pub fn well_known_core<'a>(prefixes: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for prefix in prefixes.into_iter().filter(|p| !p.is_empty()) {
        out.push_str("</");
        percent_encode_segment(&mut out, prefix);
        out.push_str(">;rt=\"");
        out.push_str(DEVICE_RT);
        out.push_str("\",");
    }
    let _ = write!(
        out,
        "</{OBJECT_ID}>;ct=\"{} {}\";ver=2.0",
        content_format::TLV,
        content_format::SENML_JSON
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices() -> Vec<GatewayDevice> {
        // Given out of order: the answer is sorted by instance.
        vec![
            GatewayDevice {
                instance: 1,
                device_id: "dev-b".into(),
                prefix: "b".into(),
                objects: "</3/0>".into(),
            },
            GatewayDevice {
                instance: 0,
                device_id: "dev1".into(),
                prefix: "dev1".into(),
                objects: "</3/0>,</4/0>".into(),
            },
        ]
    }

    /// A SenML-JSON payload parsed with serde_json and resolved by hand (bn sticky, name =
    /// bn + n): (full name, string value) pairs.
    fn resolve(payload: &[u8]) -> Vec<(String, String)> {
        let doc: Json = serde_json::from_slice(payload).unwrap_or(Json::Null);
        let mut bn = String::new();
        let mut out = Vec::new();
        for rec in doc.as_array().cloned().unwrap_or_default() {
            if let Some(b) = rec.get("bn").and_then(Json::as_str) {
                bn = b.to_owned();
            }
            let n = rec.get("n").and_then(Json::as_str).unwrap_or("");
            let vs = rec.get("vs").and_then(Json::as_str).unwrap_or("<no vs>");
            out.push((format!("{bn}{n}"), vs.to_owned()));
        }
        out
    }

    /// The whole object in TLV, against bytes written out by hand from Core §7.4.3.
    #[test]
    fn object_in_tlv_is_one_object_instance_per_device() {
        #[rustfmt::skip]
        let want: Vec<u8> = [
            // Object Instance 0: 00 (instance) 0 (8-bit id) 01 (8-bit length) → 0x08, id 0,
            // length 2+4 + 2+4 + 3+13 = 28.
            &[0x08, 0x00, 28][..],
            &[0xc4, 0x00], b"dev1",                  // Resource 0, length 4 in the type byte.
            &[0xc4, 0x01], b"dev1",                  // Resource 1.
            &[0xc8, 0x03, 13], b"</3/0>,</4/0>",     // Resource 3, 8-bit length field (13 > 7).
            // Object Instance 1, length 2+5 + 2+1 + 2+6 = 18.
            &[0x08, 0x01, 18],
            &[0xc5, 0x00], b"dev-b",
            &[0xc1, 0x01], b"b",
            &[0xc6, 0x03], b"</3/0>",
        ]
        .concat();
        assert_eq!(read(&devices(), &[], None), Ok((11542, want.clone())));
        assert_eq!(read(&devices(), &[], Some(11542)), Ok((11542, want)));
    }

    #[test]
    fn instance_in_tlv_is_its_resources_unwrapped() {
        let want: Vec<u8> = [
            &[0xc5, 0x00][..],
            b"dev-b",
            &[0xc1, 0x01],
            b"b",
            &[0xc6, 0x03],
            b"</3/0>",
        ]
        .concat();
        assert_eq!(read(&devices(), &["1"], None), Ok((11542, want)));
    }

    #[test]
    fn resource_in_tlv_is_one_resource_tlv() {
        let want: Vec<u8> = [&[0xc8, 0x03, 13][..], b"</3/0>,</4/0>"].concat();
        assert_eq!(read(&devices(), &["0", "3"], None), Ok((11542, want)));
        let prefix: Vec<u8> = [&[0xc1, 0x01][..], b"b"].concat();
        assert_eq!(
            read(&devices(), &["1", "1"], Some(11542)),
            Ok((11542, prefix))
        );
    }

    /// A long Corelnk takes the 16-bit length field.
    #[test]
    fn long_objects_link_uses_a_wider_length_field() {
        let objects = "</3303/0>,".repeat(30);
        let d = vec![GatewayDevice {
            instance: 7,
            device_id: "d".into(),
            prefix: "p".into(),
            objects: objects.clone(),
        }];
        let want: Vec<u8> = [&[0xd0, 0x03, 0x01, 0x2c][..], objects.as_bytes()].concat();
        assert_eq!(objects.len(), 300);
        assert_eq!(read(&d, &["7", "3"], None), Ok((11542, want)));
    }

    #[test]
    fn object_in_senml_json_names_every_resource() {
        let (cf, payload) = read(&devices(), &[], Some(110)).unwrap_or_default();
        assert_eq!(cf, 110);
        let doc: Json = serde_json::from_slice(&payload).unwrap_or(Json::Null);
        assert_eq!(doc.pointer("/0/bn"), Some(&Json::from("/25/")));
        assert_eq!(doc.pointer("/1/bn"), None, "bn only once");
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect()
        };
        assert_eq!(
            resolve(&payload),
            pairs(&[
                ("/25/0/0", "dev1"),
                ("/25/0/1", "dev1"),
                ("/25/0/3", "</3/0>,</4/0>"),
                ("/25/1/0", "dev-b"),
                ("/25/1/1", "b"),
                ("/25/1/3", "</3/0>"),
            ])
        );
    }

    #[test]
    fn instance_and_resource_in_senml_json() {
        let (_, inst) = read(&devices(), &["1"], Some(110)).unwrap_or_default();
        let doc: Json = serde_json::from_slice(&inst).unwrap_or(Json::Null);
        assert_eq!(doc.pointer("/0/bn"), Some(&Json::from("/25/1/")));
        assert_eq!(
            resolve(&inst),
            vec![
                ("/25/1/0".to_owned(), "dev-b".to_owned()),
                ("/25/1/1".to_owned(), "b".to_owned()),
                ("/25/1/3".to_owned(), "</3/0>".to_owned()),
            ]
        );
        let (_, res) = read(&devices(), &["0", "1"], Some(110)).unwrap_or_default();
        let doc: Json = serde_json::from_slice(&res).unwrap_or(Json::Null);
        assert_eq!(doc, serde_json::json!([{"bn": "/25/0/1", "vs": "dev1"}]));
    }

    #[test]
    fn empty_object_is_an_empty_payload_or_array() {
        assert_eq!(read(&[], &[], None), Ok((11542, vec![])));
        assert_eq!(read(&[], &[], Some(110)), Ok((110, b"[]".to_vec())));
    }

    #[test]
    fn unknown_instance_or_resource_is_4_04() {
        for path in [
            &["2"][..],
            &["x"],
            &["65536"],
            &["-1"],
            &["0", "2"], // Routing Table Entry: v1.0 only.
            &["0", "4"],
            &["0", "x"],
            &["0", "0", "0"], // Single resources have no instances.
            &["0", "3", "0", "0"],
        ] {
            let r = read(&devices(), path, Some(110));
            assert!(
                matches!(r, Err(GatewayObjectError::NotFound { .. })),
                "{path:?}: {r:?}"
            );
            assert_eq!(r.map_err(|e| e.code()), Err(ResponseType::NotFound));
        }
        assert_eq!(
            read(&devices(), &["9", "1"], None),
            Err(GatewayObjectError::NotFound {
                path: "/25/9/1".into()
            })
        );
    }

    #[test]
    fn other_accept_is_4_06_and_path_errors_come_first() {
        for accept in [0u16, 40, 50, 60, 112, 1542, 11543, 11544] {
            let r = read(&devices(), &["0"], Some(accept));
            assert_eq!(r, Err(GatewayObjectError::NotAcceptable { accept }));
            assert_eq!(r.map_err(|e| e.code()), Err(ResponseType::NotAcceptable));
        }
        assert_eq!(
            read(&devices(), &["5"], Some(112)).map_err(|e| e.code()),
            Err(ResponseType::NotFound)
        );
    }

    #[test]
    fn empty_segment_is_4_00() {
        let r = read(&devices(), &["0", ""], None);
        assert_eq!(r, Err(GatewayObjectError::EmptySegment { position: 1 }));
        assert_eq!(r.map_err(|e| e.code()), Err(ResponseType::BadRequest));
    }

    #[test]
    fn duplicate_or_reserved_instances_are_a_gateway_fault() {
        let mut twice = devices();
        twice.push(devices().remove(0));
        let r = read(&twice, &[], None);
        assert!(matches!(
            r,
            Err(GatewayObjectError::BadInstances { instance: 1, .. })
        ));
        assert_eq!(
            r.map_err(|e| e.code()),
            Err(ResponseType::InternalServerError)
        );
        let mut reserved = devices();
        reserved.push(GatewayDevice {
            instance: u16::MAX,
            device_id: "x".into(),
            prefix: "x".into(),
            objects: String::new(),
        });
        assert!(matches!(
            read(&reserved, &["0"], None),
            Err(GatewayObjectError::BadInstances {
                instance: u16::MAX,
                ..
            })
        ));
    }

    #[test]
    fn well_known_core_lists_prefixes_then_the_object() {
        assert_eq!(
            well_known_core(["dev1", "b"]),
            "</dev1>;rt=\"privgw.device\",</b>;rt=\"privgw.device\",</25>;ct=\"11542 110\";ver=2.0"
        );
        assert_eq!(
            well_known_core(std::iter::empty()),
            "</25>;ct=\"11542 110\";ver=2.0"
        );
        let prefixes = devices();
        let from_devices = well_known_core(prefixes.iter().map(|d| d.prefix.as_str()));
        assert!(from_devices.starts_with("</b>;"), "{from_devices}");
    }

    #[test]
    fn well_known_core_escapes_prefixes_and_skips_empty_ones() {
        assert_eq!(
            well_known_core(["a b>,c;\"d", "", "é~_.-"]),
            "</a%20b%3E%2Cc%3B%22d>;rt=\"privgw.device\",\
             </%C3%A9~_.->;rt=\"privgw.device\",</25>;ct=\"11542 110\";ver=2.0"
        );
    }
}
