//! TEMP STUB
use super::*;
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DmAcl(String);
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad")]
pub struct DmAclError;
impl DmAcl { pub fn parse(s: &str) -> Result<DmAcl, DmAclError> { Ok(DmAcl(s.into())) } pub fn is_empty(&self) -> bool { self.0.is_empty() } pub fn grants(&self, _c: DmCommand, s: &str) -> bool { self.0.contains(s) } pub fn named_servers(&self) -> impl Iterator<Item=&str> { std::iter::empty() } }
impl std::fmt::Display for DmAcl { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(&self.0) } }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmPolicy { Replace, TndStrict }
impl std::str::FromStr for DmPolicy { type Err = (); fn from_str(s: &str) -> Result<Self, ()> { match s { "replace" => Ok(Self::Replace), "tnd-strict" => Ok(Self::TndStrict), _ => Err(()) } } }
pub fn dm_verdict(_p: DmPolicy, chain: &[DmAcl], _i: bool, s: &str) -> Verdict { if chain.iter().any(|c| c.0.contains(&format!("Replace={s}"))) { Verdict::Allowed } else { Verdict::Denied { detail: String::new() } } }
