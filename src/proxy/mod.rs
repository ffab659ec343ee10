//! The secure proxy (DESIGN.md §6, issue 8): servers reach end devices through the gateway,
//! limited to what was granted.
//!
//! This module owns the sans-IO, pure parts:
//!
//! * [`command`] — the DM command ([`Operation`](crate::acl::Operation)) a proxied CoAP
//!   request asks for, from its method, its path and the device's profile
//!   ([`command_of`]).
//! * [`index`] — the [`PrivilegeIndex`]: for (server, device, path, command), the longest
//!   segment-wise covering privilege URI among the entries whose target covers the device,
//!   and whether its ACL grants the command ([`Decision`]). Updated in place
//!   ([`PrivilegeIndex::upsert`], [`PrivilegeIndex::remove`]) so a change takes effect for
//!   the next decision.
//! * [`gateway_object`] — discovery: the LwM2M Gateway object `/25` v2.0 (Device ID, Prefix,
//!   IoT Device Objects) in TLV and SenML-JSON ([`gateway_object::read`]), and the device
//!   prefix links of `/.well-known/core` ([`gateway_object::well_known_core`]).
//! * [`relay`] — the Observe relay state machine ([`Relay`]): one upstream observation per
//!   (device, path, Accept), fan-out with per-observer Observe numbers, the cached latest
//!   value, restart on re-registration, 4.03 on revocation, bounded observers; events in,
//!   [`RelayAction`]s out.
//!
//! * [`route`] — prefix routing: which part of the gateway a request's first path segment
//!   names ([`Prefixes::route`]).
//! * [`forward`] — faithful forwarding: the device's request from the server's, the
//!   server's response from the device's (which options pass, which are refused).
//! * [`feed`] — keeps a shared [`PrivilegeIndex`] equal to the store, driven by the store's
//!   change feed ([`spawn_index_feed`], [`load_index`] at start-up).
//!
//! Apart from [`feed`] (a task and a lock), nothing here touches a socket, a clock or a
//! lock; the runtime that drives these is [`crate::gateway::proxy`].

pub mod command;
pub mod feed;
pub mod forward;
pub mod gateway_object;
pub mod index;
pub mod relay;
pub mod route;

pub use command::{CommandError, command_of};
pub use feed::{load_index, spawn_index_feed};
pub use gateway_object::{GatewayDevice, GatewayObjectError};
pub use index::{Decision, Membership, PrivilegeGrant, PrivilegeIndex};
pub use relay::{
    NotificationBody, ObserverId, Relay, RelayAction, RelayError, RelayLimits, UpstreamKey,
};
pub use route::{Destination, Prefixes};
