//! Lineage through apply: registration records edges, explicit edges join them, upstream and
//! impact walk both ways; a quarantine blocks promotion (SetStage and auto-promotion alike) of
//! everything downstream, is flagged on versions already in Production, and a lift is audited;
//! every refused lineage command changes nothing.

use super::*;
use crate::governance::{Comparison, Gate, Policy, PolicyScope};
use crate::lineage::{Direction, Entity, EntityKind, QUARANTINES_MAX, WALK_NODES_MAX};

fn e(text: &str) -> Entity {
    Entity::parse("entity", text).unwrap()
}

/// A version of `model` trained on data snapshot `data`, with `content` and a feature set.
fn trained_on(model: &str, content: &[u8], data: &str, features: Option<&str>) -> Op {
    let mut op = create_version(model, content);
    if let Op::CreateVersion { metadata, tags, .. } = &mut op {
        metadata.data_snapshot_id = data.into();
        if let Some(f) = features {
            tags.insert("feature_set".into(), f.into());
        }
    }
    op
}

fn set_stage(model: &str, number: u64, stage: Stage) -> Op {
    Op::SetStage {
        model: model.into(),
        number,
        stage,
        reason: "test".into(),
        override_signature: false,
    }
}

fn quarantine(entity: &str, reason: &str) -> Op {
    Op::Quarantine {
        entity: e(entity),
        reason: reason.into(),
    }
}

fn lift(entity: &str, reason: &str) -> Op {
    Op::LiftQuarantine {
        entity: e(entity),
        reason: reason.into(),
    }
}

fn add(from: &str, to: &str) -> Op {
    Op::AddLineageEdge {
        from: e(from),
        to: e(to),
    }
}

fn names(nodes: &[(Entity, u32)]) -> Vec<String> {
    let mut out: Vec<String> = nodes.iter().map(|(n, _)| n.to_string()).collect();
    out.sort();
    out
}

#[test]
fn registration_records_edges_and_both_walks_follow_them() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    f.apply(trained_on("reco", b"v1", "47", Some("user@12")));
    // An explicit edge: the feature set was computed from snapshot 46.
    assert!(matches!(
        f.apply(add("data:46", "features:user@12")),
        Response::LineageEdge(_)
    ));
    let up = f.read(|app, txn| app.lineage_upstream(txn, "reco", 1).unwrap());
    assert_eq!(
        names(&up.walk.nodes),
        [
            "code:c0ffee",
            "data:46",
            "data:47",
            "features:user@12",
            "run:run-1",
            "version:reco/1"
        ]
    );
    assert_eq!(up.walk.edges.len(), 5);
    assert!(!up.walk.truncated);
    let impact = f.read(|app, txn| app.lineage_impact(txn, &e("data:46")).unwrap());
    assert_eq!(
        names(&impact.walk.nodes),
        ["data:46", "features:user@12", "version:reco/1"]
    );
    assert_eq!(impact.versions.len(), 1);
    assert_eq!(
        (impact.versions[0].number, impact.versions[0].depth),
        (1, 2)
    );
    // An entity nothing names has no impact; a version that does not exist is not found.
    let none = f.read(|app, txn| app.lineage_impact(txn, &e("data:999")).unwrap());
    assert_eq!(names(&none.walk.nodes), ["data:999"]);
    let missing = f.read(|app, txn| app.lineage_impact(txn, &e("version:reco/9")).unwrap_err());
    assert!(missing.to_string().contains("not found"), "{missing}");
    // The reverse index holds the same edges.
    let down = f.read(|app, txn| {
        app.lineage_edges(txn, &e("data:47"), Direction::Downstream)
            .unwrap()
    });
    let up = f.read(|app, txn| {
        app.lineage_edges(txn, &e("version:reco/1"), Direction::Upstream)
            .unwrap()
    });
    assert_eq!(down.len(), 1);
    assert!(up.contains(&down[0]));
}

/// Must-show 2 at the state's level (the end-to-end test does it on three nodes): quarantining
/// data snapshot 47 blocks the promotion of a version trained on it, flags the Production
/// version trained on it, and the impact query lists both.
#[test]
fn the_airbnb_case_quarantine_blocks_flags_and_impact_lists_both() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    f.apply(trained_on("reco", b"v1", "47", None));
    f.apply(trained_on("reco", b"v2", "47", None));
    f.apply(trained_on("reco", b"v3", "48", None));
    assert!(matches!(
        f.apply(set_stage("reco", 1, Stage::Production)),
        Response::Version(_)
    ));
    let Response::Quarantine(q) = f.apply(quarantine("data:47", "label leak found in 47")) else {
        panic!("quarantined")
    };
    assert_eq!((q.by.as_str(), q.entity.kind), ("alice", EntityKind::Data));

    let before = f.digest();
    for stage in [Stage::Staging, Stage::Production] {
        let error = rejected(f.apply(set_stage("reco", 2, stage)));
        let text = error.to_string();
        assert!(matches!(error, DomainError::GatesFailed { .. }), "{text}");
        assert!(
            text.contains("data:47 (by alice: label leak found in 47)")
                && text.contains("quiver lineage lift data:47"),
            "{text}"
        );
    }
    assert_eq!(f.digest(), before, "a refused promotion changes nothing");
    // Not downstream: v3 is free; demotion of the quarantined v1 is too.
    assert!(matches!(
        f.apply(set_stage("reco", 3, Stage::Staging)),
        Response::Version(_)
    ));

    let (flags, truncated) = f.read(|app, txn| app.quarantined_upstream(txn, "reco", 1).unwrap());
    assert_eq!(flags.len(), 1);
    assert_eq!(flags[0].entity, e("data:47"));
    assert!(!truncated);
    let clean = f.read(|app, txn| app.quarantined_upstream(txn, "reco", 3).unwrap());
    assert!(clean.0.is_empty());

    let impact = f.read(|app, txn| app.lineage_impact(txn, &e("data:47")).unwrap());
    let listed: Vec<(u64, Stage)> = impact
        .versions
        .iter()
        .map(|v| (v.number, v.stage))
        .collect();
    assert_eq!(listed, [(1, Stage::Production), (2, Stage::Experimental)]);
    assert_eq!(impact.quarantined.len(), 1);

    // Lifting is audited with its reason, and the promotion then passes.
    assert!(matches!(
        f.apply(lift("data:47", "relabelled, leak fixed")),
        Response::Quarantine(_)
    ));
    let audit = f.read(|app, txn| app.audit_log(txn).unwrap());
    let last = audit.last().unwrap();
    assert_eq!(last.kind, "lift_quarantine");
    assert_eq!(last.reason, "relabelled, leak fixed");
    assert!(last.subject.contains("data:47"), "{}", last.subject);
    let quarantined = audit.iter().find(|r| r.kind == "quarantine").unwrap();
    assert_eq!(quarantined.reason, "label leak found in 47");
    assert!(matches!(
        f.apply(set_stage("reco", 2, Stage::Production)),
        Response::Version(_)
    ));
}

#[test]
fn a_quarantine_reaches_through_explicit_edges_and_stops_auto_promotion() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    f.apply(trained_on("reco", b"v1", "50", Some("user@12")));
    f.apply(add("data:47", "features:user@12"));
    f.apply(Op::SetPolicy {
        scope: PolicyScope::Model("reco".into()),
        policy: Some(Policy {
            staging: vec![Gate::Metric {
                metric: "auc".into(),
                op: Comparison::Ge,
                value: Some(0.8),
                production_delta: None,
                tolerance: 0.0,
            }],
            production: Vec::new(),
            auto_promote: true,
        }),
    });
    f.apply(quarantine("data:47", "leak"));
    let Response::Evaluation(outcome) = f.apply(Op::RecordEvaluation {
        model: "reco".into(),
        number: 1,
        kind: "offline".into(),
        metrics: [("auc".to_string(), 0.9)].into(),
        summary: String::new(),
    }) else {
        panic!("recorded")
    };
    assert_eq!(
        outcome.1.stage,
        Stage::Experimental,
        "auto-promotion must be blocked"
    );
    let report = f.read(|app, txn| {
        let m = app.get_model(txn, "reco").unwrap();
        let v = app.get_version(txn, "reco", 1).unwrap();
        app.gate_report(txn, &m, &v, Stage::Staging).unwrap()
    });
    assert!(!report.passed());
    assert_eq!(report.results.len(), 2, "{report}");
    f.apply(lift("data:47", "fixed"));
    // With nothing quarantined the report is the policy's alone.
    let report = f.read(|app, txn| {
        let m = app.get_model(txn, "reco").unwrap();
        let v = app.get_version(txn, "reco", 1).unwrap();
        app.gate_report(txn, &m, &v, Stage::Staging).unwrap()
    });
    assert!(report.passed());
    assert_eq!(report.results.len(), 1);
    // Quarantining the version itself blocks it too.
    f.apply(quarantine("version:reco/1", "bad weights"));
    let text = rejected(f.apply(set_stage("reco", 1, Stage::Staging))).to_string();
    assert!(
        text.contains("version:reco/1 (by alice: bad weights)"),
        "{text}"
    );
}

#[test]
fn refused_lineage_commands_change_nothing() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    f.apply(trained_on("reco", b"v1", "47", None));
    f.apply(add("data:46", "data:47"));
    f.apply(quarantine("data:45", "old"));
    let before = f.digest();
    let forged = |kind, id: &str| Entity::new(kind, id);
    let hostile_ids = [
        String::new(),
        " ".into(),
        "a\0b".into(),
        "tab\t".into(),
        "x".repeat(crate::lineage::ENTITY_ID_BYTES_MAX + 1),
        "x".repeat(600),
    ];
    let mut ops = vec![
        // Versions that do not exist, of a model that does not exist.
        add("data:47", "version:reco/2"),
        add("version:reco/9", "deployment:prod"),
        add("data:1", "version:nope/1"),
        // Twice, and into itself.
        add("data:46", "data:47"),
        Op::AddLineageEdge {
            from: e("data:9"),
            to: e("data:9"),
        },
        // A forged, non-canonical version.
        Op::AddLineageEdge {
            from: e("data:9"),
            to: forged(EntityKind::Version, "reco/01"),
        },
        quarantine("data:45", "again"),
        quarantine("version:reco/7", "no such version"),
        lift("data:47", "not quarantined"),
        Op::Quarantine {
            entity: e("data:1"),
            reason: String::new(),
        },
        Op::Quarantine {
            entity: e("data:1"),
            reason: "x".repeat(limits::REASON_BYTES_MAX + 1),
        },
        Op::LiftQuarantine {
            entity: e("data:45"),
            reason: "nul\0".into(),
        },
    ];
    for id in &hostile_ids {
        for kind in crate::lineage::EntityKind::ALL {
            ops.push(Op::AddLineageEdge {
                from: forged(kind, id),
                to: e("data:47"),
            });
            ops.push(Op::Quarantine {
                entity: forged(kind, id),
                reason: "r".into(),
            });
            ops.push(Op::LiftQuarantine {
                entity: forged(kind, id),
                reason: "r".into(),
            });
        }
    }
    // Registrations whose lineage ids could not be entities.
    for id in ["a\tb", "line\nbreak"] {
        ops.push(trained_on("reco", b"v9", id, None));
    }
    ops.push(trained_on("reco", b"v9", "47", Some(&"f".repeat(300))));
    for op in ops {
        let shown = format!("{op:?}");
        let error = rejected(f.apply(op));
        assert!(!error.to_string().is_empty(), "{shown}");
        assert_eq!(f.digest(), before, "{shown} changed the state");
    }
}

#[test]
fn quarantines_are_bounded_and_a_walk_past_its_cap_refuses_promotion() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    f.apply(trained_on("reco", b"v1", "47", None));
    // Many commands in one transaction, as a Raft batch applies them.
    let apply_all = |f: &mut Fixture, ops: Vec<Op>| {
        let mut wtxn = f.env.write_txn().unwrap();
        for op in ops {
            f.index += 1;
            let cmd = Command {
                actor: actor("alice"),
                at_ms: 2_000,
                request_id: None,
                op,
            };
            let r = f.app.apply(&mut wtxn, f.index, &cmd).unwrap();
            assert!(!matches!(r, Response::Rejected(_)), "{r:?}");
        }
        wtxn.commit().unwrap();
    };
    apply_all(
        &mut f,
        (0..QUARANTINES_MAX)
            .map(|i| quarantine(&format!("data:q{i}"), "bulk"))
            .collect(),
    );
    let before = f.digest();
    let text = rejected(f.apply(quarantine("data:one-more", "x"))).to_string();
    assert!(text.contains("4096 quarantines are in force"), "{text}");
    assert_eq!(f.digest(), before);

    // A chain of more upstream entities than a walk visits: the gate cannot clear it.
    let chain: Vec<Op> = (0..WALK_NODES_MAX)
        .map(|i| add(&format!("run:c{}", i + 1), &format!("run:c{i}")))
        .chain([add("run:c0", "version:reco/1")])
        .collect();
    apply_all(&mut f, chain);
    let up = f.read(|app, txn| app.lineage_upstream(txn, "reco", 1).unwrap());
    assert_eq!(up.walk.nodes.len(), WALK_NODES_MAX);
    assert!(up.walk.truncated);
    let text = rejected(f.apply(set_stage("reco", 1, Stage::Staging))).to_string();
    assert!(text.contains("more than 10000"), "{text}");
}
