//! TEMP STUB
use crate::acl::lwm2m::AccessControl;
pub mod content_format { pub const TEXT: u16 = 0; pub const LINK_FORMAT: u16 = 40; pub const JSON: u16 = 50; pub const CBOR: u16 = 60; pub const SENML_JSON: u16 = 110; pub const SENML_CBOR: u16 = 112; pub const TLV: u16 = 11542; pub const LWM2M_CBOR: u16 = 11544; }
#[derive(Debug, thiserror::Error)] #[error("x")] pub struct CodecError;
pub fn decode_access_control(_cf: u16, _p: &[u8]) -> Result<Vec<AccessControl>, CodecError> { Ok(vec![]) }
pub fn encode_access_control(_cf: u16, _i: &[AccessControl]) -> Result<Vec<u8>, CodecError> { Ok(vec![]) }
