//! Answers: errors by blame mapped to CoAP codes in one place, and documents rendered in the
//! content format the client accepts (CBOR by default, JSON on Accept 50, text on leaves).

use coap_lite::ResponseType;

use crate::lwm2m::content_format;
use crate::mo::Value;

/// How a document is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Cbor,
    Json,
}

impl Format {
    /// From the request's Accept option; `None` for a format we cannot produce.
    pub fn from_accept(accept: Option<u16>) -> Option<Format> {
        match accept {
            None | Some(content_format::CBOR) => Some(Format::Cbor),
            Some(content_format::JSON) => Some(Format::Json),
            Some(_) => None,
        }
    }

    pub fn content_format(self) -> u16 {
        match self {
            Format::Cbor => content_format::CBOR,
            Format::Json => content_format::JSON,
        }
    }
}

/// Renders a document: (content format, payload).
pub fn render_value(value: &Value, format: Format) -> (u16, Vec<u8>) {
    match format {
        Format::Cbor => (content_format::CBOR, value.to_cbor()),
        Format::Json => (content_format::JSON, value.to_json()),
    }
}

/// A request the gateway will not carry out, by whose fault. Each maps to one CoAP code; the
/// message goes back as a diagnostic payload (text/plain, RFC 7252 §5.5.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrontError {
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown server identity")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("method not allowed on {0}")]
    MethodNotAllowed(String),
    #[error("cannot answer in content format {0}")]
    NotAcceptable(u16),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("content format {0} is not accepted here")]
    UnsupportedContentFormat(String),
    #[error("payload too large ({0} bytes)")]
    TooLarge(usize),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
    /// A `[limits]` cap on stored privileges is reached (4.03: refused by policy, and
    /// retrying will not help until entries are deleted; the diagnostic names the cap).
    #[error("{0}")]
    LimitReached(String),
    /// Proxy-Uri or Proxy-Scheme: the forward proxy does not exist (yet).
    #[error("proxying is not supported")]
    ProxyingNotSupported,
}

impl FrontError {
    pub fn code(&self) -> ResponseType {
        match self {
            FrontError::BadRequest(_) => ResponseType::BadRequest,
            FrontError::Unauthorized => ResponseType::Unauthorized,
            FrontError::Forbidden(_) => ResponseType::Forbidden,
            FrontError::NotFound(_) => ResponseType::NotFound,
            FrontError::MethodNotAllowed(_) => ResponseType::MethodNotAllowed,
            FrontError::NotAcceptable(_) => ResponseType::NotAcceptable,
            FrontError::PreconditionFailed(_) => ResponseType::PreconditionFailed,
            FrontError::UnsupportedContentFormat(_) => ResponseType::UnsupportedContentFormat,
            FrontError::TooLarge(_) => ResponseType::RequestEntityTooLarge,
            FrontError::Internal(_) => ResponseType::InternalServerError,
            FrontError::Unavailable(_) => ResponseType::ServiceUnavailable,
            FrontError::LimitReached(_) => ResponseType::Forbidden,
            FrontError::ProxyingNotSupported => ResponseType::ProxyingNotSupported,
        }
    }
}
