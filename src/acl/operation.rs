//! The operation a principal asks to perform on a device URI — the verb of the verifier's
//! question "may server B **Get** `/3/0/1` on dev1?" — and how each one maps onto the two
//! ACL models (DESIGN.md §4).
//!
//! | [`Operation`] | DM ACL entry checked | LwM2M right checked |
//! |---|---|---|
//! | `Get`     | `Get`     | R (1)  in the effective rights |
//! | `Add`     | `Add`     | C (16) in the effective rights |
//! | `Delete`  | `Delete`  | D (8)  in the effective rights |
//! | `Exec`    | `Exec`    | E (4)  in the effective rights |
//! | `Replace` | `Replace`, under the device's DM policy | W (2), under the device's LwM2M policy |
//!
//! `Get`, `Add`, `Delete` and `Exec` read the URI's effective ACL the same way under every
//! policy: DM — the first non-empty ACL from the node up to the root
//! ([`super::dm::dm_verdict`]); LwM2M — the server's explicit entry, else full rights for the
//! instance's owner, else the default entry (key 0), else none
//! ([`super::lwm2m::effective_rights`]).
//!
//! `Replace` is the question a privilege write asks ([`Operation::GRANT`]) and keeps the
//! policy semantics the gateway has always applied to it:
//!
//! * DM `replace`: the effective ACL grants Replace. DM `tnd-strict`: interior node → its own
//!   effective Replace; leaf → Replace on the parent.
//! * LwM2M `owner` (the spec: only the owner manages an AC instance): the server owns the
//!   AC instance, whatever its W bit. LwM2M `write-bit`: the effective rights include W.
//!
//! Under `tnd-strict` and `owner` a `Replace` is thus stricter than a plain write of the
//! resource would be on the device; it never grants more.

use std::fmt;
use std::str::FromStr;

use super::lwm2m::Rights;
use super::{DmCommand, UnknownCommand};

/// What a principal asks to do on a device URI (the OMA DM command set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// Create a node / object instance: DM `Add`, LwM2M C.
    Add,
    /// Remove a node / object instance: DM `Delete`, LwM2M D.
    Delete,
    /// Execute a node / resource: DM `Exec`, LwM2M E.
    Exec,
    /// Read a node / resource: DM `Get`, LwM2M R.
    Get,
    /// Replace a node, and so change who may do what on it: DM `Replace`, LwM2M W, each under
    /// the device's policy (see the module doc).
    Replace,
}

impl Operation {
    /// Every operation, in canonical (alphabetical) order.
    pub const ALL: [Operation; 5] = [
        Operation::Add,
        Operation::Delete,
        Operation::Exec,
        Operation::Get,
        Operation::Replace,
    ];

    /// The question a privilege write (Add, Replace or Delete of a privilege entry) asks of
    /// every target device: may the grantor replace the ACL of the URI?
    pub const GRANT: Operation = Operation::Replace;

    /// The DM ACL command whose entry decides this operation.
    pub fn dm_command(self) -> DmCommand {
        match self {
            Operation::Add => DmCommand::Add,
            Operation::Delete => DmCommand::Delete,
            Operation::Exec => DmCommand::Exec,
            Operation::Get => DmCommand::Get,
            Operation::Replace => DmCommand::Replace,
        }
    }

    /// The LwM2M access right this operation needs: Get→R, Replace→W, Exec→E, Delete→D,
    /// Add→C.
    pub fn lwm2m_right(self) -> Rights {
        self.dm_command().lwm2m_right()
    }

    /// The operation's name, as in DM ACL strings (`"Get"`).
    pub fn as_str(self) -> &'static str {
        self.dm_command().as_str()
    }
}

impl From<DmCommand> for Operation {
    fn from(command: DmCommand) -> Operation {
        match command {
            DmCommand::Add => Operation::Add,
            DmCommand::Delete => Operation::Delete,
            DmCommand::Exec => Operation::Exec,
            DmCommand::Get => Operation::Get,
            DmCommand::Replace => Operation::Replace,
        }
    }
}

impl From<Operation> for DmCommand {
    fn from(operation: Operation) -> DmCommand {
        operation.dm_command()
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Operation {
    type Err = UnknownCommand;

    /// The DM command names, case-sensitive (`"Get"`, not `"get"`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<DmCommand>().map(Operation::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_map_to_dm_commands_and_back() {
        for op in Operation::ALL {
            assert_eq!(Operation::from(op.dm_command()), op);
            assert_eq!(DmCommand::from(op), op.dm_command());
            assert_eq!(op.as_str(), op.dm_command().as_str());
        }
        let commands: Vec<DmCommand> = Operation::ALL.iter().map(|o| o.dm_command()).collect();
        assert_eq!(commands, DmCommand::ALL);
    }

    #[test]
    fn operations_map_to_lwm2m_bits() {
        assert_eq!(Operation::Get.lwm2m_right(), Rights::READ);
        assert_eq!(Operation::Replace.lwm2m_right(), Rights::WRITE);
        assert_eq!(Operation::Exec.lwm2m_right(), Rights::EXECUTE);
        assert_eq!(Operation::Delete.lwm2m_right(), Rights::DELETE);
        assert_eq!(Operation::Add.lwm2m_right(), Rights::CREATE);
    }

    #[test]
    fn granting_is_replace() {
        assert_eq!(Operation::GRANT, Operation::Replace);
    }

    #[test]
    fn operation_names_parse_case_sensitively() {
        for op in Operation::ALL {
            assert_eq!(op.to_string().parse::<Operation>(), Ok(op));
        }
        assert!("get".parse::<Operation>().is_err());
        assert!("Read".parse::<Operation>().is_err());
    }
}
