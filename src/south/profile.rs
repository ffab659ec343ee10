//! Reading the ACL that governs a URI, per device profile (DESIGN.md §4):
//!
//! * `dm`: `GET <uri>?prop=ACL` (text/plain); an empty ACL inherits, so walk up to the root
//!   until one is not empty. Policy `tnd-strict` also asks `?prop=Format` to know whether the
//!   node is interior (`node`).
//! * `lwm2m`: `GET /2` with Accept TLV (11542) from a dialled device, in the formats of its
//!   LwM2M version from a registered one ([`South::read_ac_object`]); the payload goes to the
//!   verifier as is.

use crate::acl::dm::DmPolicy;
use crate::coap::{self, MessageClass, Packet, RequestType, ResponseType};
use crate::config::{DeviceConfig, Profile};
use crate::lwm2m::content_format;
use crate::registry::Account;
use crate::south::South;
use crate::verifier::{AclReading, ReadFailure};

/// How far up a DM tree we follow inheritance (a tree is at most this deep).
const MAX_DM_DEPTH: usize = 16;

fn get(uri: &str) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Request(RequestType::Get);
    coap::set_uri(&mut p, uri);
    p
}

/// Checks a 2.05 and returns it, or classifies the device's answer.
fn content(response: Packet) -> Result<Packet, ReadFailure> {
    if response.payload.len() > super::MAX_DEVICE_BODY {
        return Err(ReadFailure::BadAnswer(format!(
            "answer larger than {} bytes",
            super::MAX_DEVICE_BODY
        )));
    }
    match response.header.code {
        MessageClass::Response(ResponseType::Content) => Ok(response),
        other => Err(ReadFailure::DeviceError {
            code: coap::code_string(other),
        }),
    }
}

fn text(response: &Packet) -> Result<String, ReadFailure> {
    match coap::content_format(response) {
        None | Some(content_format::TEXT) => {}
        Some(cf) => {
            return Err(ReadFailure::BadAnswer(format!(
                "expected text/plain, got content format {cf}"
            )));
        }
    }
    String::from_utf8(response.payload.clone())
        .map_err(|_| ReadFailure::BadAnswer("ACL is not UTF-8".into()))
}

/// The parent of a DM path: `/a/b` → `/a`, `/a` → `/`.
fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => path.get(..i),
        None => None,
    }
}

/// The reading in a device's answer to `GET /2`.
pub fn lwm2m_reading(response: Packet) -> Result<AclReading, ReadFailure> {
    let response = content(response)?;
    let cf = coap::content_format(&response).unwrap_or(content_format::TLV);
    tracing::debug!(
        content_format = cf,
        bytes = response.payload.len(),
        "device sent /2"
    );
    Ok(AclReading::Lwm2m {
        content_format: cf,
        payload: response.payload,
    })
}

pub async fn read_acl(
    south: &South,
    device: &DeviceConfig,
    on_behalf: &Account,
    uri: &str,
) -> Result<AclReading, ReadFailure> {
    match device.profile {
        Profile::Lwm2m(_) => lwm2m_reading(south.read_ac_object(device, on_behalf).await?),
        Profile::Dm(policy) => {
            let is_interior = match policy {
                DmPolicy::Replace => true,
                DmPolicy::TndStrict => {
                    let response = content(
                        south
                            .request(device, on_behalf, get(&format!("{uri}?prop=Format")))
                            .await?,
                    )?;
                    text(&response)? == "node"
                }
            };
            // tnd-strict judges a leaf by its parent's ACL, so read at least one level up.
            let min_len = if is_interior { 1 } else { 2 };
            let mut chain = Vec::new();
            let mut path = uri;
            loop {
                let response = content(
                    south
                        .request(device, on_behalf, get(&format!("{path}?prop=ACL")))
                        .await?,
                )?;
                let acl = text(&response)?;
                tracing::debug!(%path, %acl, "device sent ACL");
                let done = !acl.is_empty() && chain.len() + 1 >= min_len;
                chain.push(acl);
                if done || chain.len() >= MAX_DM_DEPTH {
                    break;
                }
                match parent(path) {
                    Some(p) => path = p,
                    None => break,
                }
            }
            Ok(AclReading::Dm { chain, is_interior })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parent;

    #[test]
    fn parents_walk_to_the_root() {
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
    }
}
