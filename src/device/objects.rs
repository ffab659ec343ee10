//! The simulated LwM2M device's objects besides `/2`: resources as text values, so requests
//! proxied through the gateway have something real to read, write, execute, create and
//! delete. Defaults: the Device object `/3/0` (0 Manufacturer, 1 Model Number, 2 Serial
//! Number, 3 Firmware Version); config `resources` adds or overrides any `/o/i/r`.
//!
//! | request | answer |
//! |---|---|
//! | GET `/o/i/r` | 2.05 text/plain (Accept 0 or none; else 4.06) |
//! | GET `/o/i`, `/o` | 2.05 SenML-JSON (110) of the resources under it (Accept 110 or none) |
//! | PUT `/o/i/r` | 2.04, the payload becomes the value |
//! | POST `/o/i/r` | 2.04 (Execute; nothing changes) |
//! | POST `/o/i` | 2.04 (partial write of resource 0 with the payload) |
//! | POST `/o` | 2.01 with Location-Path `/o/<new instance>`, resource 0 = the payload |
//! | DELETE `/o/i` | 2.02, every resource of the instance removed |
//! | anything missing | 4.04; other shapes 4.05 |

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::coap::{self, CoapOption, MessageClass, Packet, RequestType, ResponseType};
use crate::lwm2m::content_format;

/// `/o/i/r` → value.
type Tree = BTreeMap<(u16, u16, u16), String>;

/// The object tree of one simulated device.
pub struct Objects {
    tree: Mutex<Tree>,
}

impl Objects {
    /// The Device object defaults for `id`, then `resources` (path → value) on top.
    /// A key that is no `/o/i/r` path is an error naming it.
    pub fn new(id: &str, resources: &BTreeMap<String, String>) -> Result<Objects, String> {
        let mut tree = Tree::new();
        for (r, value) in [(0, "privgw"), (1, "privgw-sim"), (2, id), (3, "1.0")] {
            tree.insert((3, 0, r), value.to_owned());
        }
        for (path, value) in resources {
            let ids = ids(path).filter(|ids| ids.len() == 3);
            let Some(ids) = ids else {
                return Err(format!("resource '{path}' is not an /o/i/r path"));
            };
            tree.insert((ids[0], ids[1], ids[2]), value.clone());
        }
        Ok(Objects {
            tree: Mutex::new(tree),
        })
    }

    /// The `</o/i>` links of the instances, for a Register's object list.
    pub fn instances(&self) -> Vec<(u16, u16)> {
        let tree = self.lock();
        let mut out: Vec<(u16, u16)> = tree.keys().map(|&(o, i, _)| (o, i)).collect();
        out.dedup();
        out
    }

    /// The answer to `request` on `path` (not `/2`, which the AC model answers).
    pub fn answer(&self, request: &Packet, path: &[String]) -> Packet {
        let Some(ids) = ids_of(path) else {
            return coap::response_to(request, ResponseType::NotFound);
        };
        let method = match request.header.code {
            MessageClass::Request(m) => m,
            _ => return coap::response_to(request, ResponseType::BadRequest),
        };
        let mut tree = self.lock();
        match (method, ids.as_slice()) {
            (RequestType::Get, _) => read(request, &tree, &ids),
            (RequestType::Put, &[o, i, r]) => match tree.get_mut(&(o, i, r)) {
                Some(v) => {
                    *v = String::from_utf8_lossy(&request.payload).into_owned();
                    coap::response_to(request, ResponseType::Changed)
                }
                None => coap::response_to(request, ResponseType::NotFound),
            },
            (RequestType::Post, &[o, i, r]) if tree.contains_key(&(o, i, r)) => {
                coap::response_to(request, ResponseType::Changed)
            }
            (RequestType::Post, &[o, i]) if has_instance(&tree, o, i) => {
                let value = String::from_utf8_lossy(&request.payload).into_owned();
                tree.insert((o, i, 0), value);
                coap::response_to(request, ResponseType::Changed)
            }
            (RequestType::Post, &[o]) => {
                let next = tree
                    .keys()
                    .filter(|k| k.0 == o)
                    .map(|k| k.1 + 1)
                    .max()
                    .unwrap_or(0);
                let value = String::from_utf8_lossy(&request.payload).into_owned();
                tree.insert((o, next, 0), value);
                let mut response = coap::response_to(request, ResponseType::Created);
                response.add_option(CoapOption::LocationPath, o.to_string().into_bytes());
                response.add_option(CoapOption::LocationPath, next.to_string().into_bytes());
                response
            }
            (RequestType::Delete, &[o, i]) if has_instance(&tree, o, i) => {
                tree.retain(|k, _| (k.0, k.1) != (o, i));
                coap::response_to(request, ResponseType::Deleted)
            }
            (RequestType::Post | RequestType::Delete, _) => {
                coap::response_to(request, ResponseType::NotFound)
            }
            _ => coap::response_to(request, ResponseType::MethodNotAllowed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tree> {
        self.tree.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn has_instance(tree: &Tree, o: u16, i: u16) -> bool {
    tree.range((o, i, 0)..=(o, i, u16::MAX)).next().is_some()
}

/// `/o[/i[/r]]` from a textual path.
fn ids(path: &str) -> Option<Vec<u16>> {
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(String::from)
        .collect();
    ids_of(&segments)
}

fn ids_of(path: &[String]) -> Option<Vec<u16>> {
    if path.is_empty() || path.len() > 3 {
        return None;
    }
    path.iter().map(|s| s.parse::<u16>().ok()).collect()
}

fn read(request: &Packet, tree: &Tree, ids: &[u16]) -> Packet {
    let accept = coap::accept(request);
    if let &[o, i, r] = ids {
        let Some(value) = tree.get(&(o, i, r)) else {
            return coap::response_to(request, ResponseType::NotFound);
        };
        if !matches!(accept, None | Some(content_format::TEXT)) {
            return coap::response_to(request, ResponseType::NotAcceptable);
        }
        let mut response = coap::response_to(request, ResponseType::Content);
        coap::set_content_format(&mut response, content_format::TEXT);
        response.payload = value.clone().into_bytes();
        return response;
    }
    if !matches!(accept, None | Some(content_format::SENML_JSON)) {
        return coap::response_to(request, ResponseType::NotAcceptable);
    }
    let under: Vec<serde_json::Value> = tree
        .iter()
        .filter(|(k, _)| k.0 == ids[0] && ids.get(1).is_none_or(|i| k.1 == *i))
        .map(|(k, v)| serde_json::json!({"n": format!("/{}/{}/{}", k.0, k.1, k.2), "vs": v}))
        .collect();
    if under.is_empty() {
        return coap::response_to(request, ResponseType::NotFound);
    }
    let mut response = coap::response_to(request, ResponseType::Content);
    coap::set_content_format(&mut response, content_format::SENML_JSON);
    response.payload = serde_json::to_vec(&under).unwrap_or_default();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: RequestType, path: &str, payload: &[u8]) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(method);
        coap::set_uri(&mut p, path);
        p.payload = payload.to_vec();
        p
    }

    fn ask(objects: &Objects, method: RequestType, path: &str, payload: &[u8]) -> Packet {
        let p = request(method, path, payload);
        let segments = coap::uri_path(&p).unwrap();
        objects.answer(&p, &segments)
    }

    fn code(p: &Packet) -> String {
        coap::code_string(p.header.code)
    }

    #[test]
    fn read_write_execute_create_delete() {
        let extra = BTreeMap::from([("/3303/0/5700".to_owned(), "21.5".to_owned())]);
        let o = Objects::new("dev1", &extra).unwrap();
        let r = ask(&o, RequestType::Get, "/3/0/2", b"");
        assert_eq!(
            (code(&r).as_str(), r.payload.as_slice()),
            ("2.05", &b"dev1"[..])
        );
        let r = ask(&o, RequestType::Get, "/3/0", b"");
        let doc: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(doc.as_array().unwrap().len(), 4);
        assert_eq!(
            code(&ask(&o, RequestType::Put, "/3303/0/5700", b"22")),
            "2.04"
        );
        let r = ask(&o, RequestType::Get, "/3303/0/5700", b"");
        assert_eq!(r.payload, b"22");
        assert_eq!(code(&ask(&o, RequestType::Post, "/3/0/4", b"")), "4.04");
        assert_eq!(code(&ask(&o, RequestType::Post, "/3/0/0", b"")), "2.04");
        let r = ask(&o, RequestType::Post, "/3303", b"x");
        assert_eq!(code(&r), "2.01");
        let location: Vec<_> = r
            .get_option(CoapOption::LocationPath)
            .unwrap()
            .iter()
            .cloned()
            .collect();
        assert_eq!(location, [b"3303".to_vec(), b"1".to_vec()]);
        assert_eq!(code(&ask(&o, RequestType::Delete, "/3303/1", b"")), "2.02");
        assert_eq!(code(&ask(&o, RequestType::Get, "/3303/1/0", b"")), "4.04");
        assert_eq!(code(&ask(&o, RequestType::Delete, "/3303/1", b"")), "4.04");
        assert!(Objects::new("d", &BTreeMap::from([("/3/x".into(), "v".into())])).is_err());
    }
}
