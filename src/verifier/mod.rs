//! The one verifier (DESIGN.md §5): may this [`Principal`] perform this [`Operation`] on this
//! URI of these devices? Plan → replies → decision, for a device or a group (a device is a
//! group of one). Pure: the south driver feeds it ACL readings and asks it what to read next;
//! it never touches a socket or a clock, and holds no credential — the principal is a plain
//! value and each device an opaque handle of the driver's.

pub mod decision;
pub mod evaluate;
pub mod verification;

pub use crate::acl::{Operation, Principal};
pub use decision::{Decision, Failure, Outcome, Reason, RejectKind};
pub use evaluate::{AclReading, ReadFailure, evaluate};
pub use verification::{Member, Query, Verification};
