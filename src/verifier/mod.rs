//! The one verifier (DESIGN.md §5): plan → replies → decision, for a device or a group (a
//! device is a group of one). Pure: the south driver feeds it ACL readings and asks it what
//! to read next; it never touches a socket or a clock.

pub mod decision;
pub mod evaluate;
pub mod verification;

pub use decision::{Decision, Failure, Outcome, Reason, RejectKind};
pub use evaluate::{AclReading, ReadFailure, evaluate};
pub use verification::{Query, Verification};
