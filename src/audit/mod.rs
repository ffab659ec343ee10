//! The audit trail (DESIGN.md §6, issue 8 item 6): every privilege write decision and every
//! proxied decision, kept in the store's `audit` table under a sequence number that survives
//! restarts, bounded by count (`[audit] max_records`), readable at `GET /GwConfig/Audit`.
//!
//! * [`record`] — what one record holds and its CBOR/JSON form ([`AuditRecord`],
//!   [`PrivilegeChange`], [`ProxiedDecision`]).
//! * [`log`] — the [`AuditLog`]: a non-blocking, bounded queue of proxied decisions with its
//!   batch writer, and the encoding of privilege changes the service commits in the change's
//!   own transaction (a committed change and its record are one redb write).
//! * [`query`] — `?since=<seq>&limit=<n>` and the page document ([`AuditQuery`]).

pub mod log;
pub mod query;
pub mod record;

pub use log::{AuditLog, AuditWriter};
pub use query::AuditQuery;
pub use record::{AuditEvent, AuditRecord, PrivilegeChange, ProxiedDecision, Verdict};
