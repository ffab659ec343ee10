//! The Gateway Config MO (DESIGN.md §3) as plain values: privilege entries, the device and
//! group inventory, and the changes a DM command makes to them. No I/O here: `front` turns
//! CoAP requests into [`Change`]s, the verifier checks them, `store` commits them.

pub mod change;
pub mod inventory;
pub mod privilege;
pub mod repr;

pub use change::{Change, ChangeKind, Check};
pub use inventory::{DeviceRef, Inventory, ResolveError};
pub use privilege::{Privilege, PrivilegeError, PrivilegeName, TargetType};
pub use repr::{ReprError, Value};
