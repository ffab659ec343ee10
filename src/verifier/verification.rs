//! One verification as a state machine: it asks one question — may this [`Principal`]
//! perform this [`Operation`] on these URIs of these devices? — hands out the ACL reads
//! ([`Verification::poll_query`]), takes the replies in any order
//! ([`Verification::handle_reply`]) and, once every read has an outcome, gives the decision
//! ([`Verification::poll_decision`]). The driver decides how many reads run at once and how
//! long each may take; the verifier only counts and judges.
//!
//! A device is a [`Member`]: its DeviceID and profile, plus an opaque handle of the driver's
//! (how to reach it) that the verifier hands back in each [`Query`] and never looks into —
//! device credentials stay with the driver.
//!
//! Planning sorts the reads once; after that no step looks at more than one reply.

use crate::acl::{Operation, Principal};
use crate::config::Profile;
use crate::verifier::decision::truncate_detail;
use crate::verifier::{
    AclReading, Decision, Failure, Outcome, ReadFailure, Reason, RejectKind, evaluate,
};

/// One device to verify: what the verifier needs of it, and the driver's handle `device`.
#[derive(Debug, Clone)]
pub struct Member<D> {
    /// The DeviceID, as it appears in the answer's `Verified` and `Failed` lists.
    pub id: String,
    /// How the device's ACL is read and judged.
    pub profile: Profile,
    /// The driver's handle for reading the device, handed back in [`Query::device`].
    pub device: D,
}

/// One ACL read to perform: `index` identifies it in [`Verification::handle_reply`].
#[derive(Debug, Clone)]
pub struct Query<D> {
    pub index: usize,
    /// The handle given in the device's [`Member`].
    pub device: D,
    pub uri: String,
}

/// One planned read: a device and a URI on it.
#[derive(Debug)]
struct Check<D> {
    member: Member<D>,
    uri: String,
}

#[derive(Debug)]
pub struct Verification<D> {
    operation: Operation,
    principal: Principal,
    checks: Vec<Check<D>>,
    outcomes: Vec<Option<Outcome>>,
    next_query: usize,
    answered: usize,
}

impl<D> Verification<D> {
    /// May `principal` perform `operation` on `uri` of every one of `devices`? A device
    /// target is a group of one.
    pub fn new(
        operation: Operation,
        principal: Principal,
        uri: impl Into<String>,
        devices: impl IntoIterator<Item = Member<D>>,
    ) -> Verification<D> {
        let uri = uri.into();
        Verification::with_uris(
            operation,
            principal,
            devices.into_iter().map(|member| (member, uri.clone())),
        )
    }

    /// As [`Verification::new`], with a URI per read: a Replace that moves a grant is
    /// verified on the old and the new (device, URI) places at once. The same (DeviceID,
    /// URI) twice is read once.
    pub fn with_uris(
        operation: Operation,
        principal: Principal,
        checks: impl IntoIterator<Item = (Member<D>, String)>,
    ) -> Verification<D> {
        let mut checks: Vec<Check<D>> = checks
            .into_iter()
            .map(|(member, uri)| Check { member, uri })
            .collect();
        // Sorted by DeviceID, then URI: a device's reads are adjacent, and the answer's
        // lists come out sorted.
        checks.sort_by(|a, b| (&a.member.id, &a.uri).cmp(&(&b.member.id, &b.uri)));
        checks.dedup_by(|a, b| a.member.id == b.member.id && a.uri == b.uri);
        let outcomes = std::iter::repeat_with(|| None).take(checks.len()).collect();
        Verification {
            operation,
            principal,
            checks,
            outcomes,
            next_query: 0,
            answered: 0,
        }
    }

    /// The operation asked about.
    pub fn operation(&self) -> Operation {
        self.operation
    }

    /// Who asks.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    pub fn len(&self) -> usize {
        self.checks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// The next read to start, each exactly once.
    #[must_use]
    pub fn poll_query(&mut self) -> Option<Query<D>>
    where
        D: Clone,
    {
        let check = self.checks.get(self.next_query)?;
        let query = Query {
            index: self.next_query,
            device: check.member.device.clone(),
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
        let outcome = match evaluate(
            check.member.profile,
            self.operation,
            &check.uri,
            &self.principal,
            reply,
        ) {
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
            let id = &check.member.id;
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
            .map(|(c, o)| (c.member.id.as_str(), c.uri.as_str(), o.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::dm::DmPolicy;
    use crate::verifier::Reason;

    fn principal() -> Principal {
        Principal::new("ServerA", 101).expect("valid principal")
    }

    fn member(id: &str) -> Member<()> {
        Member {
            id: id.into(),
            profile: Profile::Dm(DmPolicy::Replace),
            device: (),
        }
    }

    /// The grant question on `/3/0` of each of `ids`.
    fn plan(ids: &[&str]) -> Verification<()> {
        Verification::new(
            Operation::GRANT,
            principal(),
            "/3/0",
            ids.iter().map(|id| member(id)),
        )
    }

    fn dm(acl: &str) -> Result<AclReading, ReadFailure> {
        Ok(AclReading::Dm {
            chain: vec![acl.into()],
            is_interior: true,
        })
    }

    fn run(ids: &[&str], replies: Vec<Result<AclReading, ReadFailure>>) -> Decision {
        let mut v = plan(ids);
        let queries: Vec<Query<()>> = std::iter::from_fn(|| v.poll_query()).collect();
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
        let mut v = plan(&["a", "b", "c"]);
        let queries: Vec<Query<()>> = std::iter::from_fn(|| v.poll_query()).collect();
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
        let v = plan(&["a"]);
        assert!(matches!(v.conclude(), Some(Decision::Reject { .. })));
        assert!(plan(&[]).conclude().is_none());
    }

    /// A device's 300 KB malformed ACL becomes a `Detail` of at most 200 characters (it was
    /// copied whole into the answer and the log line).
    #[test]
    fn long_details_are_truncated() {
        let acl = "Get=".to_owned() + &"é".repeat(150_000);
        let mut v = plan(&["a"]);
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
        let mut v = plan(&["a", "b"]);
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

    /// The proxy's question: may ServerB Get /3/0/1? The verification judges the operation
    /// and principal it was planned with, not the grant question.
    #[test]
    fn a_get_verification_judges_its_own_operation_and_principal() {
        let b = Principal::new("ServerB", 102).expect("valid principal");
        let mut v = Verification::new(
            Operation::Get,
            b.clone(),
            "/3/0/1",
            ["dev1", "dev2"].iter().map(|id| member(id)),
        );
        assert_eq!(v.operation(), Operation::Get);
        assert_eq!(v.principal(), &b);
        let q1 = v.poll_query().expect("dev1");
        let q2 = v.poll_query().expect("dev2");
        assert_eq!(q1.uri, "/3/0/1");
        assert_eq!(
            v.handle_reply(q1.index, dm("Get=ServerB")),
            Some(&Outcome::Allowed)
        );
        v.handle_reply(q2.index, dm("Replace=ServerB&Get=ServerA"));
        match v.poll_decision() {
            Some(Decision::Reject { kind, failed }) => {
                assert_eq!(kind, RejectKind::Forbidden);
                assert_eq!(failed.len(), 1);
                assert_eq!(failed[0].device_id, "dev2");
                assert_eq!(failed[0].reason, Reason::Denied);
                assert!(
                    failed[0].detail.contains("Get to \"ServerB\""),
                    "{}",
                    failed[0].detail
                );
            }
            other => panic!("expected reject, got {other:?}"),
        }
    }

    /// Reads are planned sorted by DeviceID then URI, each (device, URI) once, whatever
    /// order the caller gives them in.
    #[test]
    fn reads_are_sorted_and_deduplicated() {
        let mut v = Verification::with_uris(
            Operation::GRANT,
            principal(),
            [
                (member("b"), "/3/0".to_owned()),
                (member("a"), "/4/0".to_owned()),
                (member("a"), "/3/0".to_owned()),
                (member("b"), "/3/0".to_owned()),
            ],
        );
        assert_eq!(v.len(), 3);
        let planned: Vec<(usize, String)> = std::iter::from_fn(|| v.poll_query())
            .map(|q| (q.index, q.uri))
            .collect();
        let expected = [(0, "/3/0"), (1, "/4/0"), (2, "/3/0")].map(|(i, u)| (i, u.to_owned()));
        assert_eq!(planned, expected);
        let ids: Vec<&str> = v.outcomes().map(|(id, _, _)| id).collect();
        assert_eq!(ids, ["a", "a", "b"]);
    }
}
