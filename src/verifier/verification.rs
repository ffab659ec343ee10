//! One verification as a state machine: it hands out ACL reads ([`Verification::poll_query`]),
//! takes the replies in any order ([`Verification::handle_reply`]) and, once every read has
//! an outcome, gives the decision ([`Verification::poll_decision`]). The driver decides how
//! many reads run at once and how long each may take; the verifier only counts and judges.
//!
//! Work is linear in the number of checks: no step looks at more than one reply.

use std::sync::Arc;

use crate::config::ServerConfig;
use crate::mo::{Check, DeviceRef};
use crate::verifier::decision::truncate_detail;
use crate::verifier::{
    AclReading, Decision, Failure, Outcome, ReadFailure, Reason, RejectKind, evaluate,
};

/// One ACL read to perform: `index` identifies it in [`Verification::handle_reply`].
#[derive(Debug, Clone)]
pub struct Query {
    pub index: usize,
    pub device: DeviceRef,
    pub uri: String,
}

#[derive(Debug)]
pub struct Verification {
    server: Arc<ServerConfig>,
    checks: Vec<Check>,
    outcomes: Vec<Option<Outcome>>,
    next_query: usize,
    answered: usize,
}

impl Verification {
    /// `checks` as produced by [`crate::mo::Change::checks`]: sorted by DeviceID, then URI.
    pub fn new(server: Arc<ServerConfig>, checks: Vec<Check>) -> Verification {
        let outcomes = vec![None; checks.len()];
        Verification {
            server,
            checks,
            outcomes,
            next_query: 0,
            answered: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.checks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// The next read to start, each exactly once.
    #[must_use]
    pub fn poll_query(&mut self) -> Option<Query> {
        let check = self.checks.get(self.next_query)?;
        let query = Query {
            index: self.next_query,
            device: check.device.clone(),
            uri: check.uri.clone(),
        };
        self.next_query += 1;
        Some(query)
    }

    /// Records what a read came to. A second reply for the same read, or one for a read that
    /// was never handed out, is ignored: the first word counts.
    pub fn handle_reply(
        &mut self,
        index: usize,
        reply: Result<AclReading, ReadFailure>,
    ) -> Option<&Outcome> {
        if index >= self.next_query {
            return None;
        }
        let check = self.checks.get(index)?;
        let slot = self.outcomes.get_mut(index)?;
        if slot.is_some() {
            return None;
        }
        let outcome = match evaluate(check.device.profile, &check.uri, &self.server, reply) {
            Outcome::Failed { reason, detail } => Outcome::Failed {
                reason,
                detail: truncate_detail(&detail),
            },
            allowed => allowed,
        };
        self.answered += 1;
        Some(slot.insert(outcome))
    }

    /// Reads still without an outcome.
    pub fn pending(&self) -> usize {
        self.checks.len() - self.answered
    }

    /// The decision, once every read has an outcome; `None` before.
    #[must_use]
    pub fn poll_decision(&self) -> Option<Decision> {
        if self.pending() > 0 {
            return None;
        }
        self.conclude()
    }

    /// The decision now, whatever is still pending: a read without an outcome counts as
    /// `unreachable` (fails closed), so only a verification where every read was allowed
    /// commits. `None` only without any check (nothing to decide on, never a commit).
    #[must_use]
    pub fn conclude(&self) -> Option<Decision> {
        if self.checks.is_empty() {
            return None;
        }
        let mut verified: Vec<String> = Vec::new();
        let mut failed: Vec<Failure> = Vec::new();
        let no_reply = Outcome::Failed {
            reason: Reason::Unreachable,
            detail: "no reply by decision time".into(),
        };
        // Checks are sorted by device, so a device's checks are adjacent. A device is
        // verified only if none of its checks failed.
        for (check, outcome) in self.checks.iter().zip(&self.outcomes) {
            let id = &check.device.id;
            match outcome.as_ref().unwrap_or(&no_reply) {
                Outcome::Allowed => {
                    if verified.last() != Some(id) {
                        verified.push(id.clone());
                    }
                }
                Outcome::Failed { reason, detail } => {
                    if failed.last().map(|f| &f.device_id) != Some(id) {
                        failed.push(Failure {
                            device_id: id.clone(),
                            reason: *reason,
                            detail: truncate_detail(&format!("{}: {detail}", check.uri)),
                        });
                    }
                }
            }
        }
        if failed.is_empty() {
            return Some(Decision::Commit { verified });
        }
        Some(Decision::Reject {
            kind: RejectKind::of(&failed),
            failed,
        })
    }

    /// Each read with its outcome so far, for logs and the demo's figures.
    pub fn outcomes(&self) -> impl Iterator<Item = (&str, &str, Option<&Outcome>)> {
        self.checks
            .iter()
            .zip(&self.outcomes)
            .map(|(c, o)| (c.device.id.as_str(), c.uri.as_str(), o.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::dm::DmPolicy;
    use crate::config::{DeviceConfig, EndpointUri, Profile};
    use crate::verifier::Reason;

    fn server() -> Arc<ServerConfig> {
        Arc::new(ServerConfig {
            id: "ServerA".into(),
            ssid: 101,
            psk: None,
            nosec_address: None,
            cert_rule: None,
            ca: None,
        })
    }

    fn device(id: &str) -> DeviceRef {
        Arc::new(DeviceConfig {
            id: id.into(),
            reach: crate::config::Reach::Dialed(
                "coap://127.0.0.1:1".parse::<EndpointUri>().unwrap(),
            ),
            profile: Profile::Dm(DmPolicy::Replace),
            psk: None,
            certs: None,
            cert_rule: None,
        })
    }

    fn checks(ids: &[&str]) -> Vec<Check> {
        ids.iter()
            .map(|id| Check {
                device: device(id),
                uri: "/3/0".into(),
            })
            .collect()
    }

    fn dm(acl: &str) -> Result<AclReading, ReadFailure> {
        Ok(AclReading::Dm {
            chain: vec![acl.into()],
            is_interior: true,
        })
    }

    fn run(ids: &[&str], replies: Vec<Result<AclReading, ReadFailure>>) -> Decision {
        let mut v = Verification::new(server(), checks(ids));
        let queries: Vec<Query> = std::iter::from_fn(|| v.poll_query()).collect();
        assert_eq!(queries.len(), ids.len());
        // Replies arrive in reverse order: order must not matter.
        for (q, r) in queries.iter().zip(replies).rev() {
            assert!(v.poll_decision().is_none());
            v.handle_reply(q.index, r);
        }
        v.poll_decision().expect("all replied")
    }

    #[test]
    fn device_success_commits() {
        let d = run(&["devA"], vec![dm("Replace=ServerA")]);
        assert_eq!(
            d,
            Decision::Commit {
                verified: vec!["devA".into()]
            }
        );
    }

    #[test]
    fn group_failure_lists_exactly_the_failing_devices_sorted() {
        let d = run(
            &["devA", "devB", "devC"],
            vec![dm("Replace=ServerA"), dm("Get=ServerA"), dm("Replace=*")],
        );
        match d {
            Decision::Reject { kind, failed } => {
                assert_eq!(kind, RejectKind::Forbidden);
                assert_eq!(failed.len(), 1);
                assert_eq!(failed[0].device_id, "devB");
                assert_eq!(failed[0].reason, Reason::Denied);
            }
            other => panic!("expected reject, got {other:?}"),
        }
    }

    #[test]
    fn transport_failures_are_classified() {
        let d = run(
            &["a", "b", "c"],
            vec![
                Err(ReadFailure::Unreachable("timeout".into())),
                Err(ReadFailure::SecureChannel("bad psk".into())),
                dm("Replace=ServerA&Get"),
            ],
        );
        match d {
            Decision::Reject { kind, failed } => {
                assert_eq!(kind, RejectKind::BadGateway);
                let reasons: Vec<_> = failed
                    .iter()
                    .map(|f| (f.device_id.as_str(), f.reason))
                    .collect();
                assert_eq!(
                    reasons,
                    vec![
                        ("a", Reason::Unreachable),
                        ("b", Reason::SecureChannel),
                        ("c", Reason::BadAcl)
                    ]
                );
            }
            other => panic!("expected reject, got {other:?}"),
        }
    }

    /// A read with no reply when the decision is taken fails closed: before, the decision
    /// loop counted a missing outcome as verified.
    #[test]
    fn a_missing_outcome_fails_closed() {
        let mut v = Verification::new(server(), checks(&["a", "b", "c"]));
        let queries: Vec<Query> = std::iter::from_fn(|| v.poll_query()).collect();
        v.handle_reply(queries[0].index, dm("Replace=ServerA"));
        v.handle_reply(queries[2].index, dm("Replace=ServerA"));
        assert!(v.poll_decision().is_none(), "b is still pending");
        match v.conclude() {
            Some(Decision::Reject { kind, failed }) => {
                assert_eq!(kind, RejectKind::Timeout);
                assert_eq!(failed.len(), 1);
                assert_eq!(failed[0].device_id, "b");
                assert_eq!(failed[0].reason, Reason::Unreachable);
            }
            other => panic!("must not commit: {other:?}"),
        }
        // Nothing asked at all: no decision (and never a commit).
        let v = Verification::new(server(), checks(&["a"]));
        assert!(matches!(v.conclude(), Some(Decision::Reject { .. })));
        assert!(Verification::new(server(), Vec::new()).conclude().is_none());
    }

    /// A device's 300 KB malformed ACL becomes a `Detail` of at most 200 characters (it was
    /// copied whole into the answer and the log line).
    #[test]
    fn long_details_are_truncated() {
        let acl = "Get=".to_owned() + &"é".repeat(150_000);
        let mut v = Verification::new(server(), checks(&["a"]));
        let q = v.poll_query().unwrap();
        match v.handle_reply(q.index, dm(&acl)) {
            Some(Outcome::Failed { reason, detail }) => {
                assert_eq!(*reason, Reason::BadAcl);
                assert!(detail.chars().count() <= 200, "{} chars", detail.len());
            }
            other => panic!("{other:?}"),
        }
        match v.poll_decision() {
            Some(Decision::Reject { failed, .. }) => {
                let detail = &failed[0].detail;
                assert_eq!(detail.chars().count(), 200);
                assert!(detail.starts_with("/3/0: ACL 'Get=éé"), "{detail}");
                assert!(detail.ends_with('…'));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn duplicate_and_unknown_replies_are_ignored() {
        let mut v = Verification::new(server(), checks(&["a", "b"]));
        let q = v.poll_query().unwrap();
        assert!(
            v.handle_reply(1, dm("Replace=ServerA")).is_none(),
            "not handed out yet"
        );
        assert!(v.handle_reply(q.index, dm("Get=ServerA")).is_some());
        assert!(
            v.handle_reply(q.index, dm("Replace=ServerA")).is_none(),
            "first word counts"
        );
        let q2 = v.poll_query().unwrap();
        v.handle_reply(q2.index, dm("Replace=ServerA"));
        assert!(matches!(v.poll_decision(), Some(Decision::Reject { .. })));
    }

    /// Commit ⇔ every check allowed, over every combination of 4 devices × 4 kinds of reply.
    #[test]
    fn commit_iff_every_member_allowed() {
        let kinds = |k: usize| match k {
            0 => dm("Replace=ServerA"),
            1 => dm("Replace=ServerB"),
            2 => Err(ReadFailure::Unreachable("t".into())),
            _ => dm("Replace="),
        };
        for combo in 0..(4usize.pow(4)) {
            let ks: Vec<usize> = (0..4).map(|i| (combo / 4usize.pow(i)) % 4).collect();
            let d = run(
                &["a", "b", "c", "d"],
                ks.iter().map(|k| kinds(*k)).collect(),
            );
            let all_ok = ks.iter().all(|k| *k == 0);
            match d {
                Decision::Commit { verified } => {
                    assert!(all_ok, "{ks:?}");
                    assert_eq!(verified.len(), 4);
                }
                Decision::Reject { failed, .. } => {
                    assert!(!all_ok, "{ks:?}");
                    assert_eq!(failed.len(), ks.iter().filter(|k| **k != 0).count());
                    assert!(failed.windows(2).all(|w| w[0].device_id < w[1].device_id));
                }
            }
        }
    }
}
