//! The LwM2M Client Registration Interface (LwM2M Core 1.1 §6.2), with the gateway as the
//! LwM2M server of its registered devices: Register, Update and De-register on `/rd`, the
//! registrations' lifetimes and queue-mode awake windows, and the formats to read `/2` in.
//!
//! # Layering
//!
//! Everything here is sans-IO: it never touches a socket, never reads the clock and never
//! draws randomness. Time is an [`Instant`](std::time::Instant) argument that must never go
//! backwards; location ids come from a counter; the session a registration came over is an
//! opaque caller value `P`.
//!
//! ```text
//! runtime (LwM2M listener, one per account) ── Packet ──▶ request::RegistrationRequest::parse
//!        │                                                      │ typed request / RequestError
//!        │  authenticated endpoint, account, session key P      ▼
//!        └────────────────────────────────────────────▶ table::Registry<P>
//!                                                          │ poll_event / poll_timeout
//! south (reads /2 over lookup/route's P) ◀── formats ──────┘
//! ```
//!
//! The listener's driver parses each request to `/rd`, checks the endpoint name against the
//! session's identity, applies it to the [`Registry`], answers with the code
//! (built by [`answer`]: [`RequestError::coap_code`], [`RegistryError::coap_code`], or 2.01
//! with the location's Location-Path / 2.04 / 2.02), drains [`Registry::poll_event`] and re-arms one timer from
//! [`Registry::poll_timeout`] that calls [`Registry::handle_timeout`].
//!
//! * [`link_format`] — strict RFC 6690 parser and the typed [`ObjectList`].
//! * [`params`] — [`Version`], [`Binding`], [`RegisterParams`], [`UpdateParams`].
//! * [`request`] — CoAP request → [`RegistrationRequest`], and the refusal codes.
//! * [`table`] — [`Registry`]: registrations per (endpoint, [`Account`]), lifetimes, events.
//! * [`answer`] — the responses: 2.01 with Location-Path, 2.04, 2.02, refusals.
//! * [`formats`] — Accept order for reading `/2`, and [`FormatMemory`].
//! * [`block1`] — Block1 reassembly of a Register or Update sent in blocks.

pub mod answer;
pub mod block1;
pub mod formats;
pub mod link_format;
pub mod params;
pub mod request;
pub mod table;

pub use formats::{FormatMemory, read_formats};
pub use link_format::{LinkFormatError, ObjectLink, ObjectList, ObjectVersion};
pub use params::{Binding, DEFAULT_LIFETIME_S, RegisterParams, UpdateParams, Version};
pub use request::{RegistrationRequest, RequestError, targets_registry};
pub use table::{
    Account, EventKind, Lookup, Registered, Registration, Registry, RegistryConfig, RegistryError,
    RegistryEvent,
};
