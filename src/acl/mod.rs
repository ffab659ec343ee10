//! TEMP STUB (replaced by the acl branch)
pub mod dm;
pub mod lwm2m;
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DmCommand { Add, Delete, Exec, Get, Replace }
impl DmCommand { pub fn as_str(self) -> &'static str { "Get" } }
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict { Allowed, Denied { detail: String }, NoAcl { detail: String } }
