//! The CoAP face of the Gateway Config MO (DESIGN.md §3): routes a request to a
//! [`Command`], and renders answers and errors. Pure: the gateway service executes commands
//! (store reads, verification, commits); this module only reads and writes messages.
//!
//! | path | methods |
//! |---|---|
//! | `/GwConfig/Privileges` | GET (list), POST (Add, gateway names `<x>`) |
//! | `/GwConfig/Privileges/<x>` | GET, PUT (Add/Replace; If-None-Match, If-Match), DELETE |
//! | `/GwConfig/Privileges/<x>/<leaf>` | GET; PUT on `TargetID`, `TargetType`, `URI`, `ACL` |
//! | `/GwConfig/Groups[/<id>]`, `/GwConfig/Devices[/<id>]` | GET |
//! | `/GwConfig/Reports/<id>` | GET (the requesting server only; see [`refusal`]) |
//! | `/GwConfig/Audit` | GET `?since=<seq>&limit=<n>` (see `crate::audit::query`) |
//! | `/.well-known/core` | GET |

pub mod answer;
pub mod command;
pub mod page;
pub mod refusal;

pub use answer::{Format, FrontError, render_value};
pub use command::{Command, Precondition, Write, parse_request};

/// RFC 6690 link-format description of the resources, served at `/.well-known/core`.
pub fn well_known_core() -> String {
    [
        "</GwConfig/Privileges>;ct=\"60 50\";rt=\"oma.dm.gw.privileges\"",
        "</GwConfig/Groups>;ct=\"60 50\"",
        "</GwConfig/Devices>;ct=\"60 50\"",
        "</GwConfig/Audit>;ct=\"60 50\"",
    ]
    .join(",")
}
