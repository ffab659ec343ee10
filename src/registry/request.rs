//! Classifies and parses a CoAP request addressed to the registration interface (LwM2M Core
//! 1.1 §6.2, "Client Registration Interface") into a typed [`RegistrationRequest`]:
//!
//! | request | meaning |
//! |---|---|
//! | `POST /rd?ep=…&lt=…&lwm2m=…&b=…&Q` + object list | Register |
//! | `POST /rd/<id>?lt=…&b=…` + optional object list | Update |
//! | `DELETE /rd/<id>` | De-register |
//!
//! Anything else under `/rd` is a [`RequestError`]; [`RequestError::coap_code`] is the one
//! place its CoAP response code is chosen. This file owns no registration state: whether a
//! location exists or whom it belongs to is [`super::table`]'s business.
//!
//! # Decisions where the specification leaves room
//!
//! * `lwm2m` absent means 1.0 (LwM2M 1.0 §5.3.1 makes it optional with that default). A
//!   well-formed `major.minor` the gateway does not speak is 4.12 Precondition Failed (LwM2M
//!   1.1 §6.2.1); anything else in `lwm2m` is 4.00.
//! * `b` is `U` or `UQ` (absent: `U`); other bindings (S, T, N, …) are 4.00 because the
//!   listeners serve UDP/DTLS only. `Q` takes no value. `Q` is honoured for every version.
//! * `sms`, `sn` and unknown arguments are ignored (forward compatibility); a known argument
//!   given twice is 4.00. An Update must not carry `ep` or `lwm2m` (identity and version are
//!   fixed by the Register): 4.00. `Q` in an Update is ignored (queue mode is fixed by the
//!   Register too, but a client repeating it is harmless).
//! * A Register must carry an object list (LwM2M 1.0/1.1: mandatory); an Update's empty
//!   payload means "objects unchanged". The payload is Content-Format 40 or has none;
//!   another format is 4.15.
//! * `lt` is decimal, 1..=`u32::MAX` seconds; 0 is 4.00.

use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};

use super::link_format::{self, LinkFormatError};
use super::params::{Binding, DEFAULT_LIFETIME_S, RegisterParams, UpdateParams, Version};
use crate::coap::{code_string, content_format, uri_path, uri_query};
use crate::lwm2m::content_format::LINK_FORMAT;

/// The registration interface's root path segment.
pub const RD: &str = "rd";
/// Longest endpoint client name accepted, in bytes.
pub const MAX_ENDPOINT_LEN: usize = 255;
/// Most Uri-Query arguments one request may carry.
pub const MAX_QUERY_ARGS: usize = 16;
/// Longest single Uri-Query argument (`name=value`), in bytes.
pub const MAX_QUERY_ARG_LEN: usize = 300;
/// Longest location id (`<id>` in `/rd/<id>`) accepted, in bytes; ours are shorter.
pub const MAX_LOCATION_ID_LEN: usize = 32;

/// A parsed registration interface request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationRequest {
    /// `POST /rd`.
    Register {
        /// `ep`: the endpoint client name as the client sent it.
        endpoint: String,
        /// Everything else.
        params: RegisterParams,
    },
    /// `POST /rd/<id>`.
    Update {
        /// `rd/<id>`, the form [`super::Registered::location`] has.
        location: String,
        /// What changes.
        params: UpdateParams,
    },
    /// `DELETE /rd/<id>`.
    Deregister {
        /// `rd/<id>`.
        location: String,
    },
}

/// Why a request to `/rd` is refused. [`RequestError::coap_code`] gives the response code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The path does not start with `rd` (the router should not have sent it here): 4.04.
    #[error("not a registration interface path")]
    NotRegistrationPath,
    /// A path under `/rd` that is neither `/rd` nor `/rd/<id>`: 4.04.
    #[error("no such registration interface resource")]
    UnknownPath,
    /// A method the resource does not take (GET, PUT, DELETE /rd, …): 4.05.
    #[error("method {method} not allowed here")]
    MethodNotAllowed {
        /// The request code, e.g. `"0.01"`.
        method: String,
    },
    /// Uri-Path or Uri-Query is not UTF-8, or Content-Format is not a uint: 4.00.
    #[error("malformed option {option}")]
    BadOption {
        /// The option number.
        option: u16,
    },
    /// More than [`MAX_QUERY_ARGS`] query arguments: 4.00.
    #[error("more than {max} query arguments")]
    TooManyQueryArgs {
        /// The bound.
        max: usize,
    },
    /// A query argument longer than [`MAX_QUERY_ARG_LEN`]: 4.00.
    #[error("query argument longer than {max} bytes")]
    QueryArgTooLong {
        /// The bound.
        max: usize,
    },
    /// A known query argument given twice: 4.00.
    #[error("query argument {name} given twice")]
    DuplicateQuery {
        /// The argument name.
        name: &'static str,
    },
    /// A Register without `ep`: 4.00.
    #[error("Register without an endpoint name (ep)")]
    MissingEndpoint,
    /// `ep` empty, longer than [`MAX_ENDPOINT_LEN`] or with control characters: 4.00.
    #[error("invalid endpoint name")]
    BadEndpoint,
    /// `lt` not a decimal number of seconds ≥ 1: 4.00.
    #[error("invalid lifetime {value:?}")]
    BadLifetime {
        /// The value as sent.
        value: String,
    },
    /// `b` not `U` or `UQ`: 4.00.
    #[error("unsupported binding {value:?}")]
    BadBinding {
        /// The value as sent.
        value: String,
    },
    /// `lwm2m` not of the form `major.minor`: 4.00.
    #[error("malformed LwM2M version {value:?}")]
    BadVersion {
        /// The value as sent.
        value: String,
    },
    /// `lwm2m` a version the gateway does not support: 4.12.
    #[error("unsupported LwM2M version {value}")]
    UnsupportedVersion {
        /// The value as sent.
        value: String,
    },
    /// `Q` with a value: 4.00.
    #[error("queue mode flag Q takes no value")]
    BadQueueFlag,
    /// `ep` or `lwm2m` in an Update: 4.00.
    #[error("{name} is not allowed in an Update")]
    NotAllowedInUpdate {
        /// The argument name.
        name: &'static str,
    },
    /// A payload Content-Format other than 40: 4.15.
    #[error("unsupported content format {content_format}")]
    UnsupportedContentFormat {
        /// The Content-Format number.
        content_format: u16,
    },
    /// A Register with an empty payload: 4.00.
    #[error("Register without an object list")]
    MissingObjectList,
    /// The object list is not valid link-format: 4.00.
    #[error("bad object list: {0}")]
    LinkFormat(#[from] LinkFormatError),
}

impl RequestError {
    /// The CoAP response code for this refusal.
    pub fn coap_code(&self) -> ResponseType {
        match self {
            RequestError::NotRegistrationPath | RequestError::UnknownPath => ResponseType::NotFound,
            RequestError::MethodNotAllowed { .. } => ResponseType::MethodNotAllowed,
            RequestError::UnsupportedVersion { .. } => ResponseType::PreconditionFailed,
            RequestError::UnsupportedContentFormat { .. } => ResponseType::UnsupportedContentFormat,
            _ => ResponseType::BadRequest,
        }
    }
}

/// Whether `p`'s Uri-Path starts with `rd`, i.e. the request is for this interface.
pub fn targets_registry(p: &Packet) -> bool {
    p.get_first_option(CoapOption::UriPath)
        .is_some_and(|s| s.as_slice() == RD.as_bytes())
}

impl RegistrationRequest {
    /// Classifies and parses `p`.
    pub fn parse(p: &Packet) -> Result<RegistrationRequest, RequestError> {
        let path = uri_path(p).map_err(|_| bad_option(CoapOption::UriPath))?;
        let method = match p.header.code {
            MessageClass::Request(m) => Some(m),
            _ => None,
        };
        match (path.as_slice(), method) {
            ([rd, ..], _) if rd != RD => Err(RequestError::NotRegistrationPath),
            ([], _) => Err(RequestError::NotRegistrationPath),
            ([_], Some(RequestType::Post)) => register(p),
            ([_], _) => Err(not_allowed(p)),
            ([_, id], _) if id.is_empty() || id.len() > MAX_LOCATION_ID_LEN => {
                Err(RequestError::UnknownPath)
            }
            ([_, id], Some(RequestType::Post)) => update(p, location(id)),
            ([_, id], Some(RequestType::Delete)) => Ok(RegistrationRequest::Deregister {
                location: location(id),
            }),
            ([_, _], _) => Err(not_allowed(p)),
            _ => Err(RequestError::UnknownPath),
        }
    }
}

fn location(id: &str) -> String {
    format!("{RD}/{id}")
}

fn bad_option(option: CoapOption) -> RequestError {
    RequestError::BadOption {
        option: option.into(),
    }
}

fn not_allowed(p: &Packet) -> RequestError {
    RequestError::MethodNotAllowed {
        method: code_string(p.header.code),
    }
}

fn register(p: &Packet) -> Result<RegistrationRequest, RequestError> {
    let q = Query::of(p)?;
    let endpoint = endpoint(q.get("ep")?.ok_or(RequestError::MissingEndpoint)?)?;
    let payload = object_payload(p)?.ok_or(RequestError::MissingObjectList)?;
    let params = RegisterParams {
        lifetime_s: q
            .get("lt")?
            .map(lifetime)
            .transpose()?
            .unwrap_or(DEFAULT_LIFETIME_S),
        version: q
            .get("lwm2m")?
            .map(version)
            .transpose()?
            .unwrap_or(Version::V1_0),
        binding: q.get("b")?.map(binding).transpose()?.unwrap_or_default(),
        queue_flag: queue_flag(&q)?,
        objects: link_format::parse(payload)?,
    };
    Ok(RegistrationRequest::Register { endpoint, params })
}

fn update(p: &Packet, location: String) -> Result<RegistrationRequest, RequestError> {
    let q = Query::of(p)?;
    for name in ["ep", "lwm2m"] {
        if q.has(name) {
            return Err(RequestError::NotAllowedInUpdate { name });
        }
    }
    let params = UpdateParams {
        lifetime_s: q.get("lt")?.map(lifetime).transpose()?,
        binding: q.get("b")?.map(binding).transpose()?,
        objects: object_payload(p)?.map(link_format::parse).transpose()?,
    };
    Ok(RegistrationRequest::Update { location, params })
}

/// The payload if non-empty, after checking its Content-Format is 40 or absent.
fn object_payload(p: &Packet) -> Result<Option<&[u8]>, RequestError> {
    if p.get_first_option(CoapOption::ContentFormat).is_some() {
        let cf = content_format(p).ok_or(bad_option(CoapOption::ContentFormat))?;
        if cf != LINK_FORMAT {
            return Err(RequestError::UnsupportedContentFormat { content_format: cf });
        }
    }
    Ok((!p.payload.is_empty()).then_some(p.payload.as_slice()))
}

/// The Uri-Query arguments split at the first `=`, bounded.
struct Query {
    args: Vec<(String, Option<String>)>,
}

impl Query {
    fn of(p: &Packet) -> Result<Query, RequestError> {
        let raw = uri_query(p).map_err(|_| bad_option(CoapOption::UriQuery))?;
        if raw.len() > MAX_QUERY_ARGS {
            return Err(RequestError::TooManyQueryArgs {
                max: MAX_QUERY_ARGS,
            });
        }
        if raw.iter().any(|a| a.len() > MAX_QUERY_ARG_LEN) {
            return Err(RequestError::QueryArgTooLong {
                max: MAX_QUERY_ARG_LEN,
            });
        }
        let args = raw
            .into_iter()
            .map(|a| match a.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (a, None),
            })
            .collect();
        Ok(Query { args })
    }

    fn has(&self, name: &str) -> bool {
        self.args.iter().any(|(n, _)| n == name)
    }

    /// The value of `name` (`Some("")` for a bare `name`), refusing duplicates.
    fn get(&self, name: &'static str) -> Result<Option<&str>, RequestError> {
        let mut found = self.args.iter().filter(|(n, _)| n == name);
        let first = found.next();
        if found.next().is_some() {
            return Err(RequestError::DuplicateQuery { name });
        }
        Ok(first.map(|(_, v)| v.as_deref().unwrap_or("")))
    }
}

fn endpoint(value: &str) -> Result<String, RequestError> {
    if value.is_empty() || value.len() > MAX_ENDPOINT_LEN || value.chars().any(char::is_control) {
        return Err(RequestError::BadEndpoint);
    }
    Ok(value.to_string())
}

fn lifetime(value: &str) -> Result<u32, RequestError> {
    let bad = || RequestError::BadLifetime {
        value: value.to_string(),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().ok().filter(|&lt| lt > 0).ok_or_else(bad)
}

fn binding(value: &str) -> Result<Binding, RequestError> {
    Binding::from_query(value).ok_or_else(|| RequestError::BadBinding {
        value: value.to_string(),
    })
}

fn version(value: &str) -> Result<Version, RequestError> {
    if let Some(v) = Version::from_query(value) {
        return Ok(v);
    }
    let number = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    let well_formed = value
        .split_once('.')
        .is_some_and(|(major, minor)| number(major) && number(minor));
    let value = value.to_string();
    Err(if well_formed {
        RequestError::UnsupportedVersion { value }
    } else {
        RequestError::BadVersion { value }
    })
}

fn queue_flag(q: &Query) -> Result<bool, RequestError> {
    if q.args.iter().any(|(n, v)| n == "Q" && v.is_some()) {
        return Err(RequestError::BadQueueFlag);
    }
    Ok(q.get("Q")?.is_some())
}

#[cfg(test)]
mod tests;
