//! The command of a proxied request (issue 8 §2): which [`Operation`] a server asks to perform
//! on the device, from the CoAP method, the path (the Uri-Path segments after the device
//! prefix) and the device's [`Profile`].
//!
//! | method | command |
//! |---|---|
//! | GET, FETCH (Observe or not) | Get |
//! | PUT, iPATCH | Replace |
//! | DELETE | Delete |
//! | POST, `lwm2m` profile | `/o/i/r` → Exec, `/o/i` → Replace (partial write), `/o` → Add (create) |
//! | POST, `dm` profile | Add, at any depth |
//! | PATCH | refused: [`CommandError::Patch`], 4.05 |
//! | anything else | refused: [`CommandError::UnknownMethod`], 4.05 |
//!
//! Decisions taken here:
//!
//! * Observe (register or cancel) does not change the command: it is a GET or FETCH, so Get.
//! * **PATCH is refused (4.05)**, with its own variant so the diagnostic can say so: neither
//!   device profile defines what a (non-idempotent, RFC 8132) PATCH does, and mapping it to
//!   Replace would be a guess about the device; iPATCH is what LwM2M uses.
//! * **A POST on an `lwm2m` device outside depths 1–3** (the root `/`, or a resource instance
//!   `/o/i/r/ri`) is refused (4.05): LwM2M defines no operation there, so there is no command
//!   to check.
//! * **An empty path segment** (`/3//0`, `/3/0/`) is refused (4.00) for every method: a device
//!   that folds it away would act on a different node (and, for POST, at a different depth)
//!   than the one the decision was taken for.
//! * The segments are not checked to be LwM2M ids: the depth alone decides, and the device
//!   answers for a path it does not have.
//! * Composite operations (FETCH / iPATCH on `/`) check the command on `/`, the root, so only a
//!   privilege on `/` (or the device's own ACL for the root) can allow them.

use coap_lite::{RequestType, ResponseType};

use crate::acl::Operation;
use crate::config::Profile;

/// Why a proxied request has no command to check (it is answered without reaching the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// A method code CoAP does not define for requests.
    #[error("method not allowed through the proxy")]
    UnknownMethod,
    /// PATCH (RFC 8132), which no device profile defines; iPATCH is proxied.
    #[error("PATCH is not proxied (use iPATCH)")]
    Patch,
    /// A POST on an `lwm2m` device at a depth where LwM2M defines no operation.
    #[error("POST at depth {depth} has no LwM2M operation (/o create, /o/i write, /o/i/r execute)")]
    PostDepth {
        /// The number of path segments.
        depth: usize,
    },
    /// A path with an empty segment (`/3//0`, a trailing `/`).
    #[error("empty path segment at position {position}")]
    EmptySegment {
        /// The 0-based index of the empty segment.
        position: usize,
    },
}

impl CommandError {
    /// The CoAP response code the proxy answers with: 4.05 for a method, 4.00 for a path.
    pub fn code(self) -> ResponseType {
        match self {
            CommandError::UnknownMethod | CommandError::Patch | CommandError::PostDepth { .. } => {
                ResponseType::MethodNotAllowed
            }
            CommandError::EmptySegment { .. } => ResponseType::BadRequest,
        }
    }
}

/// The command a request with `method` on `path_segments` (after the device prefix) asks of a
/// device with `profile`. See the module doc for the table and the refusals.
pub fn command_of<S: AsRef<str>>(
    method: RequestType,
    path_segments: &[S],
    profile: Profile,
) -> Result<Operation, CommandError> {
    if let Some(position) = path_segments.iter().position(|s| s.as_ref().is_empty()) {
        return Err(CommandError::EmptySegment { position });
    }
    match method {
        RequestType::Get | RequestType::Fetch => Ok(Operation::Get),
        RequestType::Put | RequestType::IPatch => Ok(Operation::Replace),
        RequestType::Delete => Ok(Operation::Delete),
        RequestType::Post => match profile {
            Profile::Dm(_) => Ok(Operation::Add),
            Profile::Lwm2m(_) => match path_segments.len() {
                1 => Ok(Operation::Add),
                2 => Ok(Operation::Replace),
                3 => Ok(Operation::Exec),
                depth => Err(CommandError::PostDepth { depth }),
            },
        },
        RequestType::Patch => Err(CommandError::Patch),
        RequestType::UnKnown => Err(CommandError::UnknownMethod),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::dm::DmPolicy;
    use crate::acl::lwm2m::Lwm2mPolicy;

    const PROFILES: [Profile; 4] = [
        Profile::Dm(DmPolicy::Replace),
        Profile::Dm(DmPolicy::TndStrict),
        Profile::Lwm2m(Lwm2mPolicy::Owner),
        Profile::Lwm2m(Lwm2mPolicy::WriteBit),
    ];

    fn segs(path: &str) -> Vec<&str> {
        path.strip_prefix('/')
            .filter(|s| !s.is_empty())
            .map(|s| s.split('/').collect())
            .unwrap_or_default()
    }

    #[test]
    fn reads_are_get_on_every_profile_and_depth() {
        for profile in PROFILES {
            for path in ["/", "/3", "/3/0", "/3/0/1", "/3/0/1/2"] {
                for method in [RequestType::Get, RequestType::Fetch] {
                    assert_eq!(
                        command_of(method, &segs(path), profile),
                        Ok(Operation::Get),
                        "{method:?} {path} {profile}"
                    );
                }
            }
        }
    }

    #[test]
    fn writes_are_replace_and_delete_is_delete() {
        for profile in PROFILES {
            for path in ["/", "/3/0", "/3/0/1"] {
                assert_eq!(
                    command_of(RequestType::Put, &segs(path), profile),
                    Ok(Operation::Replace)
                );
                assert_eq!(
                    command_of(RequestType::IPatch, &segs(path), profile),
                    Ok(Operation::Replace)
                );
                assert_eq!(
                    command_of(RequestType::Delete, &segs(path), profile),
                    Ok(Operation::Delete)
                );
            }
        }
    }

    #[test]
    fn lwm2m_post_depends_on_depth() {
        for profile in [PROFILES[2], PROFILES[3]] {
            let post = |p: &str| command_of(RequestType::Post, &segs(p), profile);
            assert_eq!(post("/3303"), Ok(Operation::Add));
            assert_eq!(post("/3/0"), Ok(Operation::Replace));
            assert_eq!(post("/3/0/4"), Ok(Operation::Exec));
            assert_eq!(post("/"), Err(CommandError::PostDepth { depth: 0 }));
            assert_eq!(post("/3/0/4/1"), Err(CommandError::PostDepth { depth: 4 }));
            assert_eq!(
                CommandError::PostDepth { depth: 4 }.code(),
                ResponseType::MethodNotAllowed
            );
        }
    }

    #[test]
    fn dm_post_is_add_at_any_depth() {
        for profile in [PROFILES[0], PROFILES[1]] {
            for path in ["/", "/a", "/a/b", "/a/b/c", "/a/b/c/d"] {
                assert_eq!(
                    command_of(RequestType::Post, &segs(path), profile),
                    Ok(Operation::Add),
                    "{path}"
                );
            }
        }
    }

    #[test]
    fn patch_and_unknown_methods_are_refused_with_4_05() {
        for profile in PROFILES {
            let patch = command_of(RequestType::Patch, &segs("/3/0"), profile);
            assert_eq!(patch, Err(CommandError::Patch));
            let unknown = command_of(RequestType::UnKnown, &segs("/3/0"), profile);
            assert_eq!(unknown, Err(CommandError::UnknownMethod));
        }
        assert_eq!(CommandError::Patch.code(), ResponseType::MethodNotAllowed);
        assert_eq!(
            CommandError::UnknownMethod.code(),
            ResponseType::MethodNotAllowed
        );
        assert!(CommandError::Patch.to_string().contains("iPATCH"));
    }

    #[test]
    fn empty_segments_are_refused_with_4_00_before_the_method() {
        let lwm2m = Profile::Lwm2m(Lwm2mPolicy::Owner);
        assert_eq!(
            command_of(RequestType::Get, &["3", "", "0"], lwm2m),
            Err(CommandError::EmptySegment { position: 1 })
        );
        // A trailing '/' would turn a partial write (/3/0) into an Execute (/3/0/).
        assert_eq!(
            command_of(RequestType::Post, &["3", "0", ""], lwm2m),
            Err(CommandError::EmptySegment { position: 2 })
        );
        assert_eq!(
            command_of(RequestType::Patch, &[""], lwm2m),
            Err(CommandError::EmptySegment { position: 0 })
        );
        assert_eq!(
            CommandError::EmptySegment { position: 0 }.code(),
            ResponseType::BadRequest
        );
    }

    #[test]
    fn owned_segments_work_too() {
        let owned: Vec<String> = vec!["3".into(), "0".into(), "4".into()];
        assert_eq!(
            command_of(
                RequestType::Post,
                &owned,
                Profile::Lwm2m(Lwm2mPolicy::Owner)
            ),
            Ok(Operation::Exec)
        );
    }
}
