//! The secure proxy (DESIGN.md §6, issue 8): servers reach end devices through the gateway,
//! limited to what was granted.
//!
//! So far this module owns only the **enforcement decision**, sans-IO and pure:
//!
//! * [`command`] — the DM command ([`Operation`](crate::acl::Operation)) a proxied CoAP
//!   request asks for, from its method, its path and the device's profile
//!   ([`command_of`]).
//! * [`index`] — the [`PrivilegeIndex`]: for (server, device, path, command), the longest
//!   segment-wise covering privilege URI among the entries whose target covers the device,
//!   and whether its ACL grants the command ([`Decision`]). Updated in place
//!   ([`PrivilegeIndex::upsert`], [`PrivilegeIndex::remove`]) so a change takes effect for
//!   the next decision.
//!
//! Still to come (later sessions): prefix routing (`/<prefix>/<path>`, `/25`,
//! `/.well-known/core`), the fallback to the device's own ACL on
//! [`Decision::NoPrivilege`] (through the verifier, cached), delegation over the grantor's
//! account, faithful forwarding (options, block-wise, separate responses), the Observe relay
//! and the audit trail. Nothing here touches a socket, a clock or a lock.

pub mod command;
pub mod forward;
pub mod index;
pub mod route;

pub use command::{CommandError, command_of};
pub use index::{Decision, Membership, PrivilegeGrant, PrivilegeIndex};
pub use route::{Destination, Prefixes};
