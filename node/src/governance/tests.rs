use super::*;
use crate::domain::{Actor, Signature, TensorSpec, VersionMetadata, VersionStatus};

fn version(number: u64, metrics: &[(&str, f64)]) -> Version {
    Version {
        model: "reco".into(),
        number,
        manifest_root: "00".into(),
        files: Vec::new(),
        total_size_bytes: 0,
        signature: Signature::default(),
        metadata: VersionMetadata {
            data_snapshot_id: "snap-47".into(),
            code_commit: "abc".into(),
            pipeline_run_id: "run-1".into(),
            hyperparameters: BTreeMap::new(),
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        },
        created_by: Actor {
            name: "ci".into(),
            authenticated: true,
        },
        created_at_ms: 0,
        tags: BTreeMap::new(),
        stage: Stage::Experimental,
        status: VersionStatus::Ready,
        stage_history: Vec::new(),
    }
}

fn eval(seq: u64, kind: &str, metrics: &[(&str, f64)]) -> Evaluation {
    Evaluation {
        seq,
        kind: kind.into(),
        metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        summary: String::new(),
        recorded_by: "eval-bot".into(),
        at_ms: 0,
    }
}

fn relative_ndcg() -> Policy {
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
            bounds: vec![Bound {
                metric: "dp_gap".into(),
                op: Comparison::Le,
                value: 0.05,
            }],
        }],
        auto_promote: true,
    }
}

#[test]
fn a_relative_metric_gate_compares_with_the_production_version() {
    let v13 = version(13, &[("ndcg@10", 0.40)]);
    let v14 = version(14, &[]);
    let policy = relative_ndcg();
    let none: [Evaluation; 0] = [];
    // Before its evaluation, v14 has no ndcg@10: the gate fails and says how to post it.
    let report = evaluate(
        &policy,
        Stage::Staging,
        &GateInput {
            approvals: &[],
            signature_override: None,
            version: &v14,
            evaluations: &none,
            production: Some((&v13, &none)),
        },
    );
    assert!(!report.passed());
    assert!(
        report.to_string().contains("quiver version eval"),
        "{report}"
    );
    // 0.42 >= 0.40 + 0.005.
    let evals = [eval(1, "offline", &[("ndcg@10", 0.42)])];
    let input = GateInput {
        approvals: &[],
        signature_override: None,
        version: &v14,
        evaluations: &evals,
        production: Some((&v13, &none)),
    };
    assert!(evaluate(&policy, Stage::Staging, &input).passed());
    // 0.403 is not enough, but within a tolerance of 0.002 it is.
    let close = [eval(1, "offline", &[("ndcg@10", 0.403)])];
    let input = GateInput {
        approvals: &[],
        signature_override: None,
        version: &v14,
        evaluations: &close,
        production: Some((&v13, &none)),
    };
    let report = evaluate(&policy, Stage::Staging, &input);
    assert!(!report.passed());
    assert!(report.to_string().contains("needs >= 0.405"), "{report}");
    let mut tolerant = policy.clone();
    if let Gate::Metric { tolerance, .. } = &mut tolerant.staging[0] {
        *tolerance = 0.002;
    }
    assert!(evaluate(&tolerant, Stage::Staging, &input).passed());
    // With no Production version, a relative gate has nothing to beat.
    let input = GateInput {
        approvals: &[],
        signature_override: None,
        version: &v14,
        evaluations: &close,
        production: None,
    };
    assert!(evaluate(&policy, Stage::Staging, &input).passed());
}

#[test]
fn an_evaluation_gate_needs_the_newest_record_of_its_kind_within_bounds() {
    let v = version(2, &[]);
    let policy = relative_ndcg();
    let check = |evals: &[Evaluation]| {
        evaluate(
            &policy,
            Stage::Production,
            &GateInput {
                approvals: &[],
                signature_override: None,
                version: &v,
                evaluations: evals,
                production: None,
            },
        )
    };
    let report = check(&[]);
    assert!(!report.passed() && report.to_string().contains("no fairness evaluation"));
    let report = check(&[eval(1, "fairness", &[("dp_gap", 0.09)])]);
    assert!(!report.passed() && report.to_string().contains("dp_gap = 0.09, needs <= 0.05"));
    let report = check(&[eval(1, "fairness", &[("other", 0.0)])]);
    assert!(report.to_string().contains("dp_gap is missing"), "{report}");
    // The newest record decides.
    let report = check(&[
        eval(1, "fairness", &[("dp_gap", 0.09)]),
        eval(2, "fairness", &[("dp_gap", 0.01)]),
    ]);
    assert!(report.passed(), "{report}");
    // Another kind does not count.
    assert!(!check(&[eval(1, "calibration", &[("dp_gap", 0.0)])]).passed());
}

#[test]
fn required_metadata_names_what_is_missing() {
    let policy = Policy {
        staging: vec![Gate::RequiredMetadata {
            fields: vec![
                MetadataField::DataSnapshot,
                MetadataField::Signature,
                MetadataField::FeatureSet,
            ],
        }],
        ..Policy::default()
    };
    let mut v = version(1, &[]);
    let input = |v: &Version| {
        evaluate(
            &policy,
            Stage::Staging,
            &GateInput {
                approvals: &[],
                signature_override: None,
                version: v,
                evaluations: &[],
                production: None,
            },
        )
    };
    let report = input(&v);
    assert!(!report.passed());
    let text = report.to_string();
    assert!(text.contains("signature, feature set"), "{text}");
    assert!(!text.contains("missing data snapshot"), "{text}");
    v.signature.inputs.push(TensorSpec {
        name: "x".into(),
        dtype: "float32".into(),
        shape: vec![-1],
        optional: false,
    });
    v.tags.insert("feature_set".into(), "user@12".into());
    assert!(input(&v).passed());
    // Experimental and Archived have no gates.
    let none = evaluate(
        &policy,
        Stage::Archived,
        &GateInput {
            approvals: &[],
            signature_override: None,
            version: &version(1, &[]),
            evaluations: &[],
            production: None,
        },
    );
    assert!(none.passed() && none.results.is_empty());
}

#[test]
fn the_most_specific_policy_applies() {
    let model_policy = Policy {
        auto_promote: true,
        ..Policy::default()
    };
    let tier_policy = relative_ndcg();
    let find = |scope: &PolicyScope| match scope {
        PolicyScope::Model(m) if m == "special" => Some(model_policy.clone()),
        PolicyScope::Namespace {
            namespace,
            tier: Some(RiskTier::High),
        } if namespace == "search" => Some(tier_policy.clone()),
        _ => None,
    };
    assert_eq!(
        applicable("special", "search", RiskTier::High, find).1,
        model_policy
    );
    assert_eq!(
        applicable("reco", "search", RiskTier::High, find).1,
        tier_policy
    );
    assert_eq!(
        applicable("reco", "search", RiskTier::Low, find),
        (None, Policy::default())
    );
}

#[test]
fn hostile_policies_and_evaluations_are_refused_naming_the_field() {
    let long = "m".repeat(METRIC_NAME_BYTES_MAX + 1);
    for bad in ["", "a b", "a\0b", "é", long.as_str()] {
        let policy = Policy {
            staging: vec![Gate::Metric {
                metric: bad.into(),
                op: Comparison::Ge,
                value: Some(1.0),
                production_delta: None,
                tolerance: 0.0,
            }],
            ..Policy::default()
        };
        assert!(validate_policy(&policy).is_err(), "{bad:?}");
        let metrics = BTreeMap::from([(bad.to_string(), 1.0)]);
        assert!(
            validate_evaluation("offline", &metrics, "").is_err(),
            "{bad:?}"
        );
        assert!(
            validate_evaluation(bad, &BTreeMap::new(), "").is_err(),
            "{bad:?}"
        );
    }
    for number in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let metrics = BTreeMap::from([("auc".to_string(), number)]);
        let error = validate_evaluation("offline", &metrics, "").unwrap_err();
        assert!(error.to_string().contains("metrics.auc"), "{error}");
    }
    let both = Policy {
        production: vec![Gate::Metric {
            metric: "auc".into(),
            op: Comparison::Ge,
            value: Some(0.8),
            production_delta: Some(0.0),
            tolerance: 0.0,
        }],
        ..Policy::default()
    };
    assert!(validate_policy(&both)
        .unwrap_err()
        .to_string()
        .contains("exactly one"));
    let negative = Policy {
        production: vec![Gate::Metric {
            metric: "auc".into(),
            op: Comparison::Ge,
            value: Some(0.8),
            production_delta: None,
            tolerance: -1.0,
        }],
        ..Policy::default()
    };
    assert!(validate_policy(&negative).is_err());
    let many = Policy {
        staging: vec![
            Gate::Evaluation {
                eval_kind: "x".into(),
                bounds: Vec::new()
            };
            GATES_PER_STAGE_MAX + 1
        ],
        ..Policy::default()
    };
    assert!(validate_policy(&many).is_err());
    assert!(validate_evaluation("offline", &BTreeMap::new(), "a\0b").is_err());
    assert!(validate_evaluation("offline", &BTreeMap::new(), &"s".repeat(5000)).is_err());
    // A policy file with an unknown field is refused by its parser, not half-read.
    assert!(serde_json::from_str::<Policy>(r#"{"stagin": []}"#).is_err());
    assert!(serde_json::from_str::<Policy>(
        r#"{"staging": [{"kind": "metric", "metric": "auc", "op": "=>", "value": 1}]}"#
    )
    .is_err());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 256,
        failure_persistence: None,
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6741_5445),
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// A report passes exactly when each of its gates does, a fixed-threshold metric gate
    /// agrees with the comparison itself, and deciding twice gives the same report.
    #[test]
    fn a_report_is_the_conjunction_of_its_gates_and_deterministic(
        value in -1.0e6f64..1.0e6,
        threshold in -1.0e6f64..1.0e6,
        tolerance in 0.0f64..10.0,
        op in 0usize..4,
        recorded in proptest::bool::ANY,
    ) {
        let op = [Comparison::Ge, Comparison::Gt, Comparison::Le, Comparison::Lt][op];
        let policy = Policy {
            production: vec![
                Gate::Metric {
                    metric: "m".into(),
                    op,
                    value: Some(threshold),
                    production_delta: None,
                    tolerance,
                },
                Gate::RequiredMetadata { fields: vec![MetadataField::RunId] },
            ],
            ..Policy::default()
        };
        let v = version(1, &[]);
        let evals = match recorded {
            true => vec![eval(1, "k", &[("m", value)])],
            false => Vec::new(),
        };
        let input = GateInput {
            approvals: &[],
            signature_override: None, version: &v, evaluations: &evals, production: None };
        let report = evaluate(&policy, Stage::Production, &input);
        proptest::prop_assert_eq!(report.passed(), report.results.iter().all(|r| r.passed));
        proptest::prop_assert_eq!(report.results[0].passed, recorded && op.holds(value, threshold, tolerance));
        proptest::prop_assert_eq!(&report, &evaluate(&policy, Stage::Production, &input));
    }
}
