//! Policies, gates and evaluation records through apply: a failing gate rejects a stage change
//! and changes nothing; the report that allowed one is stored with it; an evaluation that makes
//! the Staging gates pass promotes in the same command when the policy says so.

use std::collections::BTreeMap;

use super::*;
use crate::governance::{Comparison, Gate, Policy, PolicyScope};

fn set_stage(number: u64, stage: Stage) -> Op {
    Op::SetStage {
        model: "reco".into(),
        number,
        stage,
        reason: "test".into(),
        override_signature: false,
    }
}

fn eval(number: u64, kind: &str, metrics: &[(&str, f64)]) -> Op {
    Op::RecordEvaluation {
        model: "reco".into(),
        number,
        kind: kind.into(),
        metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        summary: String::new(),
    }
}

fn relative_policy() -> Policy {
    Policy {
        staging: vec![Gate::Metric {
            metric: "ndcg@10".into(),
            op: Comparison::Ge,
            value: None,
            production_delta: Some(0.005),
            tolerance: 0.0,
        }],
        production: vec![Gate::Evaluation {
            eval_kind: "fairness".into(),
            bounds: Vec::new(),
        }],
        auto_promote: true,
    }
}

#[test]
fn gates_refuse_with_their_report_and_an_evaluation_auto_promotes() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    f.apply(create_version("reco", b"v1"));
    f.apply(create_version("reco", b"v2"));
    // No policy: stage changes are free, and leave no report.
    let Response::Version(v1) = f.apply(set_stage(1, Stage::Production)) else {
        panic!("v1 promoted")
    };
    assert_eq!(v1.stage_history.last().unwrap().gate_report, None);
    f.apply(eval(1, "offline", &[("ndcg@10", 0.40)]));
    let policy = Op::SetPolicy {
        scope: PolicyScope::Namespace {
            namespace: "team".into(),
            tier: None,
        },
        policy: Some(relative_policy()),
    };
    assert!(matches!(f.apply(policy), Response::Policy(_)));

    // v2 has no ndcg@10 yet: refused, naming the gate and how to satisfy it; nothing changes.
    let before = f.digest();
    let error = rejected(f.apply(set_stage(2, Stage::Staging)));
    let text = error.to_string();
    assert!(matches!(error, DomainError::GatesFailed { .. }), "{text}");
    assert!(
        text.contains("ndcg@10") && text.contains("quiver version eval"),
        "{text}"
    );
    assert_eq!(f.digest(), before);

    // Not good enough: recorded, not promoted.
    let Response::Evaluation(outcome) = f.apply(eval(2, "offline", &[("ndcg@10", 0.402)])) else {
        panic!("recorded")
    };
    assert_eq!(outcome.1.stage, Stage::Experimental);
    // Good enough: promoted to Staging in the same command, with the report.
    let Response::Evaluation(outcome) = f.apply(eval(2, "offline", &[("ndcg@10", 0.42)])) else {
        panic!("recorded")
    };
    assert_eq!(outcome.0.seq, 2);
    let v2 = outcome.1;
    assert_eq!(v2.stage, Stage::Staging);
    let last = v2.stage_history.last().unwrap();
    assert!(last.reason.contains("auto-promoted"), "{}", last.reason);
    assert!(last.gate_report.as_ref().is_some_and(|r| r.passed()));
    // The registration itself is untouched.
    assert!(v2.metadata.metrics.is_empty());

    // Production needs a fairness evaluation.
    let text = rejected(f.apply(set_stage(2, Stage::Production))).to_string();
    assert!(text.contains("no fairness evaluation"), "{text}");
    f.apply(eval(2, "fairness", &[("dp_gap", 0.01)]));
    let Response::Version(v2) = f.apply(set_stage(2, Stage::Production)) else {
        panic!("v2 promoted")
    };
    assert_eq!(v2.stage, Stage::Production);
    let v1 = f.read(|app, txn| app.get_version(txn, "reco", 1).unwrap());
    assert_eq!(v1.stage, Stage::Archived);
    let evals = f.read(|app, txn| app.evaluations(txn, "reco", 2).unwrap());
    assert_eq!(evals.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
}

#[test]
fn a_model_policy_overrides_the_namespace_and_clearing_what_is_not_set_is_refused() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    f.apply(create_version("reco", b"v1"));
    let namespace = PolicyScope::Namespace {
        namespace: "team".into(),
        tier: None,
    };
    f.apply(Op::SetPolicy {
        scope: namespace.clone(),
        policy: Some(relative_policy()),
    });
    // The model's own (empty) policy wins: no gates.
    f.apply(Op::SetPolicy {
        scope: PolicyScope::Model("reco".into()),
        policy: Some(Policy::default()),
    });
    assert!(matches!(
        f.apply(set_stage(1, Stage::Production)),
        Response::Version(_)
    ));
    let before = f.digest();
    for scope in [
        PolicyScope::Model("nope".into()),
        PolicyScope::Model("".into()),
        PolicyScope::Model("a\0b".into()),
        PolicyScope::Namespace {
            namespace: "../etc".into(),
            tier: None,
        },
    ] {
        rejected(f.apply(Op::SetPolicy {
            scope,
            policy: Some(Policy::default()),
        }));
    }
    rejected(f.apply(Op::SetPolicy {
        scope: PolicyScope::Namespace {
            namespace: "other".into(),
            tier: Some(RiskTier::High),
        },
        policy: None,
    }));
    // Hostile evaluations: an unknown version, NaN, a bad kind.
    rejected(f.apply(eval(9, "offline", &[("auc", 0.9)])));
    rejected(f.apply(eval(1, "offline", &[("auc", f64::NAN)])));
    rejected(f.apply(eval(1, "", &[])));
    rejected(f.apply(eval(1, "a b", &[])));
    let mut many = BTreeMap::new();
    for i in 0..100 {
        many.insert(format!("m{i}"), 1.0);
    }
    rejected(f.apply(Op::RecordEvaluation {
        model: "reco".into(),
        number: 1,
        kind: "offline".into(),
        metrics: many,
        summary: String::new(),
    }));
    assert_eq!(f.digest(), before);
    let listed = f.read(|app, txn| app.policies(txn).unwrap());
    assert_eq!(listed.len(), 2);
}

fn with_signature(mut op: Op, inputs: &[(&str, &str)]) -> Op {
    if let Op::CreateVersion { signature, .. } = &mut op {
        signature.inputs = inputs
            .iter()
            .map(|(name, dtype)| TensorSpec {
                name: name.to_string(),
                dtype: dtype.to_string(),
                shape: vec![-1, 4],
                optional: false,
            })
            .collect();
        signature.outputs = vec![TensorSpec {
            name: "score".into(),
            dtype: "float32".into(),
            shape: vec![-1],
            optional: false,
        }];
    }
    op
}

#[test]
fn a_breaking_signature_is_refused_at_promotion_and_accepted_with_an_audited_override() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    let v1 = with_signature(create_version("reco", b"v1"), &[("features", "float32")]);
    f.apply(v1);
    // v2 renames the input (breaking), v3 adds nothing (compatible).
    f.apply(with_signature(
        create_version("reco", b"v2"),
        &[("feats", "float32")],
    ));
    f.apply(with_signature(
        create_version("reco", b"v3"),
        &[("features", "float32")],
    ));
    f.apply(Op::SetPolicy {
        scope: PolicyScope::Model("reco".into()),
        policy: Some(Policy {
            production: vec![Gate::SignatureCompatible {}],
            ..Policy::default()
        }),
    });
    // No Production version yet: nothing to break.
    let Response::Version(v) = f.apply(set_stage(1, Stage::Production)) else {
        panic!("v1 promoted")
    };
    let report = v.stage_history.last().unwrap().gate_report.clone().unwrap();
    assert!(report.results[0].detail.contains("nothing to compare"));

    let before = f.digest();
    let error = rejected(f.apply(set_stage(2, Stage::Production)));
    let text = error.to_string();
    assert!(
        text.contains("breaks callers of v1")
            && text.contains("features")
            && text.contains("--override-signature"),
        "{text}"
    );
    assert_eq!(f.digest(), before, "a refusal changes nothing");

    // With the override: promoted, the report names who accepted it and why, and so does the
    // audit record.
    let Response::Version(v) = f.apply(Op::SetStage {
        model: "reco".into(),
        number: 2,
        stage: Stage::Production,
        reason: "clients migrated to feats".into(),
        override_signature: true,
    }) else {
        panic!("v2 promoted with the override")
    };
    assert_eq!(v.stage, Stage::Production);
    let gate = &v
        .stage_history
        .last()
        .unwrap()
        .gate_report
        .as_ref()
        .unwrap()
        .results[0];
    assert!(gate.passed);
    assert!(
        gate.detail
            .contains("overridden by alice: clients migrated to feats"),
        "{}",
        gate.detail
    );
    let audit = f.read(|app, txn| app.audit_log(txn).unwrap());
    let last = audit.last().unwrap();
    assert_eq!(last.kind, "set_stage");
    assert_eq!(last.reason, "clients migrated to feats");
    assert!(
        last.detail.contains("overridden by alice"),
        "{}",
        last.detail
    );

    // v3 has v1's signature, which breaks callers of v2 now in Production; compatible with
    // itself when v2's shape comes back is what a compatible change is.
    let error = rejected(f.apply(set_stage(3, Stage::Production)));
    assert!(
        error.to_string().contains("breaks callers of v2"),
        "{error}"
    );
}
