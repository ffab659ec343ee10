//! TEMP STUB
use super::*;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lwm2mPolicy { Owner, WriteBit }
impl std::str::FromStr for Lwm2mPolicy { type Err = (); fn from_str(s: &str) -> Result<Self, ()> { match s { "owner" => Ok(Self::Owner), "write-bit" => Ok(Self::WriteBit), _ => Err(()) } } }
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessControl { pub instance: u16, pub object_id: u16, pub object_instance_id: u16, pub acl: std::collections::BTreeMap<u16, u8>, pub owner: u16 }
pub struct LwPath { pub object_id: u16 }
impl LwPath { pub fn parse(_s: &str) -> Result<LwPath, String> { Ok(LwPath { object_id: 3 }) } }
pub fn lwm2m_verdict(_p: Lwm2mPolicy, _i: &[AccessControl], _path: &LwPath, _ssid: u16) -> Verdict { Verdict::Allowed }
