//! Review requests through apply: a stage change that waits only for approvals opens a review;
//! the registrant, a principal approving twice and one without the counted role are refused and
//! change nothing; the approval that completes the gates promotes in the same command; a
//! rejection is final; a policy or tag change voids the approvals given.

use super::*;
use crate::auth::{Role, Scope};
use crate::governance::{Gate, MetadataField, Policy, PolicyScope, Review, ReviewState};

fn grant(principal: &str, role: Role) -> Op {
    Op::GrantRole {
        principal: principal.into(),
        scope: Scope::Namespace("team".into()),
        role,
    }
}

fn policy(approvals: u32, extra: Vec<Gate>) -> Op {
    let mut production = vec![Gate::Approvals {
        count: approvals,
        role: Role::Approver,
    }];
    production.extend(extra);
    Op::SetPolicy {
        scope: PolicyScope::Model("reco".into()),
        policy: Some(Policy {
            staging: Vec::new(),
            production,
            auto_promote: false,
        }),
    }
}

fn to_production(number: u64) -> Op {
    Op::SetStage {
        model: "reco".into(),
        number,
        stage: Stage::Production,
        reason: "ship it".into(),
        override_signature: false,
    }
}

fn decide(id: u64, approve: bool) -> Op {
    Op::DecideReview {
        model: "reco".into(),
        id,
        approve,
        comment: "looked at the evaluation".into(),
    }
}

fn review(r: Response) -> (Review, Version) {
    match r {
        Response::Review(b) => *b,
        other => panic!("expected a review, got {other:?}"),
    }
}

/// `reco` in `team`, v1 registered by alice (who also holds approver: four eyes must still
/// refuse her), approvers bob and carol, reader dave; production needs two approvals.
fn reviewed() -> Fixture {
    let mut f = fixture();
    f.apply(create_model("reco"));
    f.apply(create_version("reco", b"v1"));
    f.apply(create_version("reco", b"v2"));
    for (who, role) in [
        ("alice", Role::Approver),
        ("bob", Role::Approver),
        ("carol", Role::Approver),
        ("erin", Role::Admin),
        ("dave", Role::Reader),
    ] {
        assert!(matches!(f.apply(grant(who, role)), Response::Grant(_)));
    }
    assert!(matches!(
        f.apply(policy(2, Vec::new())),
        Response::Policy(_)
    ));
    f
}

#[test]
fn approvals_open_a_review_refuse_four_eyes_violations_and_promote_when_complete() {
    let mut f = reviewed();
    let (opened, v) = review(f.apply_as("bob", to_production(1)));
    assert_eq!((opened.id, opened.state), (1, ReviewState::Open));
    assert_eq!(opened.requested_by, "bob");
    assert_eq!(v.stage, Stage::Experimental, "a review moves nothing yet");
    assert!(!opened.report.passed());
    // Asking again keeps the same review.
    let (again, _) = review(f.apply_as("carol", to_production(1)));
    assert_eq!(again.id, 1);

    let before = f.digest();
    for (who, expect) in [
        ("alice", "four eyes"),
        ("dave", "hold reader"),
        ("mallory", "hold no role"),
    ] {
        let e = rejected(f.apply_as(who, decide(1, true)));
        assert!(
            matches!(e, DomainError::NotAllowed { .. }) && e.to_string().contains(expect),
            "{who}: {e}"
        );
    }
    assert_eq!(f.digest(), before, "refused approvals change nothing");

    let (one, v) = review(f.apply_as("bob", decide(1, true)));
    assert_eq!(one.approvals.len(), 1);
    assert_eq!(v.stage, Stage::Experimental);
    let before = f.digest();
    let e = rejected(f.apply_as("bob", decide(1, true)));
    assert!(e.to_string().contains("already approved"), "{e}");
    assert_eq!(f.digest(), before);

    // The admin holds more than approver: counted.
    let (done, v) = review(f.apply_as("erin", decide(1, true)));
    assert_eq!(done.state, ReviewState::Promoted);
    assert_eq!(done.closed_by.as_deref(), Some("erin"));
    assert_eq!(v.stage, Stage::Production);
    let last = v.stage_history.last().unwrap();
    let report = last
        .gate_report
        .as_ref()
        .expect("the report that allowed it");
    assert!(report.passed());
    assert!(report.results[0].detail.contains("bob, erin"), "{report:?}");
    assert_eq!(f.read(|a, t| a.open_review(t, "reco", 1).unwrap()), None);
    let e = rejected(f.apply_as("carol", decide(1, true)));
    assert!(matches!(e, DomainError::ReviewClosed { .. }), "{e}");
}

#[test]
fn a_rejection_is_final_and_a_new_request_opens_a_new_review() {
    let mut f = reviewed();
    review(f.apply_as("bob", to_production(2)));
    review(f.apply_as("bob", decide(1, true)));
    let (rejected_review, v) = review(f.apply_as("carol", decide(1, false)));
    assert_eq!(rejected_review.state, ReviewState::Rejected);
    assert_eq!(rejected_review.closing_comment, "looked at the evaluation");
    assert_eq!(v.stage, Stage::Experimental);
    let before = f.digest();
    let e = rejected(f.apply_as("erin", decide(1, true)));
    assert!(matches!(e, DomainError::ReviewClosed { .. }), "{e}");
    assert_eq!(f.digest(), before);
    let (fresh, _) = review(f.apply_as("bob", to_production(2)));
    assert_eq!((fresh.id, fresh.approvals.len()), (2, 0));
}

#[test]
fn a_policy_or_tag_change_mid_review_voids_the_approvals_given() {
    let mut f = reviewed();
    review(f.apply_as("bob", to_production(1)));
    review(f.apply_as("bob", decide(1, true)));
    // The same policy set again is no change: the approval stands.
    f.apply(policy(2, Vec::new()));
    let open = f.read(|a, t| a.review(t, 1).unwrap().unwrap());
    assert_eq!(open.approvals.len(), 1);

    f.apply(policy(
        2,
        vec![Gate::RequiredMetadata {
            fields: vec![MetadataField::CodeCommit],
        }],
    ));
    let voided = f.read(|a, t| a.review(t, 1).unwrap().unwrap());
    assert!(voided.approvals.is_empty(), "{voided:?}");
    assert_eq!(voided.voided.len(), 1);
    assert!(voided.voided[0].reason.contains("policy changed"));
    assert_eq!(voided.voided[0].approvals[0].principal, "bob");
    assert_eq!(voided.state, ReviewState::Open);

    // Bob may approve again; a tag change voids that too.
    review(f.apply_as("bob", decide(1, true)));
    f.apply(Op::SetVersionTags {
        model: "reco".into(),
        number: 1,
        set_tags: [("note".to_string(), "retrained".to_string())].into(),
        remove_tags: Vec::new(),
    });
    let voided = f.read(|a, t| a.review(t, 1).unwrap().unwrap());
    assert!(voided.approvals.is_empty());
    assert_eq!(voided.voided.len(), 2);
    review(f.apply_as("bob", decide(1, true)));
    let (done, v) = review(f.apply_as("carol", decide(1, true)));
    assert_eq!(
        (done.state, v.stage),
        (ReviewState::Promoted, Stage::Production)
    );
}

#[test]
fn a_failing_gate_beside_approvals_refuses_rather_than_opening_a_review() {
    let mut f = reviewed();
    f.apply(policy(
        1,
        vec![Gate::Evaluation {
            eval_kind: "fairness".into(),
            bounds: Vec::new(),
        }],
    ));
    let before = f.digest();
    let e = rejected(f.apply_as("bob", to_production(1)));
    assert!(
        matches!(e, DomainError::GatesFailed { .. }) && e.to_string().contains("fairness"),
        "{e}"
    );
    assert_eq!(f.digest(), before, "no review opened");
    assert_eq!(f.read(|a, t| a.open_review(t, "reco", 1).unwrap()), None);
}

#[test]
fn decisions_on_unknown_or_mismatched_reviews_are_rejected_cleanly() {
    let mut f = reviewed();
    review(f.apply_as("bob", to_production(1)));
    let before = f.digest();
    for (id, model) in [(0, "reco"), (2, "reco"), (u64::MAX, "reco"), (1, "other")] {
        let e = rejected(f.apply_as(
            "bob",
            Op::DecideReview {
                model: model.into(),
                id,
                approve: true,
                comment: String::new(),
            },
        ));
        assert!(
            matches!(
                e,
                DomainError::ReviewNotFound { .. }
                    | DomainError::Invalid { .. }
                    | DomainError::ModelNotFound { .. }
            ),
            "{id} {model}: {e}"
        );
    }
    let e = rejected(f.apply_as(
        "bob",
        Op::DecideReview {
            model: "reco".into(),
            id: 1,
            approve: true,
            comment: "x\0y".into(),
        },
    ));
    assert!(matches!(e, DomainError::Invalid { .. }), "{e}");
    assert_eq!(f.digest(), before);
}
