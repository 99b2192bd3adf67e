//! Deployments through apply (issue 15): an endpoint is created serving a Production version;
//! a rollout moves its traffic step by step, each step only after the one before held its
//! duration and only from the step in force; a rollback routes everything back, during a rollout
//! or after it; only versions whose stage allows it receive traffic; every change is in the
//! history, the lineage and the watch log; a refused command changes nothing.

use super::*;
use crate::deploy::{Bounds, ChangeKind, Deployment, Split, Step};
use crate::lineage::{Direction, Entity};
use crate::watch::{Change, WatchFilter, WatchRead};

fn stage(model: &str, number: u64, stage: Stage) -> Op {
    Op::SetStage {
        model: model.into(),
        number,
        stage,
        reason: "test".into(),
        override_signature: false,
    }
}

fn deployment(r: Response) -> Deployment {
    match r {
        Response::Deployment(d) => *d,
        other => panic!("expected a deployment, got {other:?}"),
    }
}

fn step(percent: u8, duration_ms: u64) -> Step {
    Step {
        percent,
        duration_ms,
    }
}

fn rollout(version: u64, plan: Vec<Step>) -> Op {
    Op::StartRollout {
        endpoint: "reco-prod".into(),
        model: "reco".into(),
        version,
        plan,
        bounds: Bounds::default(),
        reason: "canary".into(),
    }
}

fn advance(from_step: u32) -> Op {
    Op::AdvanceRollout {
        endpoint: "reco-prod".into(),
        model: "reco".into(),
        from_step,
    }
}

fn rollback() -> Op {
    Op::Rollback {
        endpoint: "reco-prod".into(),
        model: "reco".into(),
        reason: "errors".into(),
    }
}

/// reco with v1 in Production serving endpoint reco-prod, v2 in Staging.
fn serving() -> Fixture {
    let mut f = fixture();
    f.apply(create_model("reco"));
    f.apply(create_version("reco", b"one"));
    f.apply(create_version("reco", b"two"));
    f.apply(stage("reco", 1, Stage::Production));
    f.apply(stage("reco", 2, Stage::Staging));
    deployment(f.apply(Op::CreateDeployment {
        endpoint: "reco-prod".into(),
        model: "reco".into(),
        version: 1,
        reason: "launch".into(),
    }));
    f
}

fn get(f: &Fixture) -> Deployment {
    f.read(|app, txn| app.get_deployment(txn, "reco-prod").unwrap())
}

#[test]
fn a_rollout_moves_traffic_one_held_step_at_a_time_and_completes_on_production() {
    let mut f = serving();
    let d = deployment(f.apply(rollout(
        2,
        vec![step(0, 0), step(5, 0), step(25, 10_000), step(100, 0)],
    )));
    assert_eq!(d.split, Split::from([(1, 100)]));
    assert_eq!(d.shadows, [2].into());
    let d = deployment(f.apply(advance(0)));
    assert_eq!(d.split, Split::from([(1, 95), (2, 5)]));
    // The same step asked again (a repeat, a stale leader's copy) moves nothing.
    let e = rejected(f.apply(advance(0)));
    assert!(e.to_string().contains("step 2 is in force"), "{e}");
    let d = deployment(f.apply(advance(1)));
    assert_eq!(d.split, Split::from([(1, 75), (2, 25)]));
    // The controller (a node's principal) waits for step 3 to hold 10 s first.
    let e = rejected(f.apply_as("node:1", advance(2)));
    assert!(e.to_string().contains("has held"), "{e}");
    // 100% needs Production: v2 is in Staging.
    let mut wtxn = f.env.write_txn().unwrap();
    let later = Command {
        actor: actor("node:1"),
        at_ms: 1_000_000,
        request_id: None,
        op: advance(2),
    };
    let r = f.app.apply(&mut wtxn, 100, &later).unwrap();
    wtxn.commit().unwrap();
    let e = rejected(r);
    assert!(
        e.to_string().contains("only a version in Production"),
        "{e}"
    );
    assert_eq!(get(&f).split, Split::from([(1, 75), (2, 25)]));
    f.apply(stage("reco", 2, Stage::Production));
    let mut wtxn = f.env.write_txn().unwrap();
    let d = deployment(f.app.apply(&mut wtxn, 101, &later).unwrap());
    wtxn.commit().unwrap();
    assert_eq!(d.split, Split::from([(2, 100)]));
    assert_eq!((d.stable, d.previous, d.rollout), (2, Some(1), None));
    // After completion a rollback returns to v1, which is Archived now: it served before.
    let d = deployment(f.apply(rollback()));
    assert_eq!(d.split, Split::from([(1, 100)]));
    assert_eq!((d.stable, d.previous), (1, Some(2)));
    let history = f.read(|app, txn| app.deployment_history(txn, "reco-prod", 0, 100).unwrap());
    let kinds: Vec<ChangeKind> = history.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            ChangeKind::Rollback,
            ChangeKind::RolloutComplete,
            ChangeKind::RolloutStep,
            ChangeKind::RolloutStep,
            ChangeKind::RolloutStart,
            ChangeKind::Create
        ]
    );
    assert_eq!(history[0].reason, "errors");
    assert_eq!(history[0].principal, "alice");
    assert_eq!(history[1].principal, "node:1");
    // Each version that received traffic has its lineage edge to the deployment.
    let impact = f.read(|app, txn| {
        app.lineage_walk(txn, &Entity::version("reco", 2), Direction::Downstream, 100)
            .unwrap()
    });
    assert!(
        impact
            .nodes
            .iter()
            .any(|(e, _)| e.to_string() == "deployment:reco-prod"),
        "{impact:?}"
    );
    // Every change is a watch event of the endpoint.
    let read = f.read(|app, txn| {
        app.watch_read(txn, &WatchFilter::Endpoint("reco-prod".into()), 0)
            .unwrap()
    });
    let WatchRead::Events { events, .. } = read else {
        panic!("{read:?}")
    };
    assert_eq!(events.len(), 6);
    let generations: Vec<u64> = events
        .iter()
        .map(|e| match &e.change {
            Change::Deployment {
                endpoint,
                model,
                generation,
            } if endpoint == "reco-prod" && model == "reco" => *generation,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(generations, [1, 2, 3, 4, 5, 6]);
}

#[test]
fn a_rollback_during_a_rollout_routes_everything_to_the_stable_version() {
    let mut f = serving();
    f.apply(rollout(2, vec![step(10, 0), step(100, 0)]));
    let d = deployment(f.apply(rollback()));
    assert_eq!(d.split, Split::from([(1, 100)]));
    assert!(d.shadows.is_empty() && d.rollout.is_none());
    assert_eq!((d.stable, d.previous), (1, None));
    let e = rejected(f.apply(rollback()));
    assert!(e.to_string().contains("nothing to roll back to"), "{e}");
    let e = rejected(f.apply(advance(0)));
    assert!(e.to_string().contains("no rollout"), "{e}");
}

#[test]
fn a_paused_rollout_does_not_advance_and_resumes_with_its_step_clock_restarted() {
    let mut f = serving();
    f.apply(rollout(2, vec![step(10, 0), step(100, 0)]));
    let pause = |pause| Op::PauseRollout {
        endpoint: "reco-prod".into(),
        model: "reco".into(),
        pause,
        reason: "look".into(),
    };
    assert!(get(&f).rollout.is_some());
    deployment(f.apply(pause(true)));
    let e = rejected(f.apply(advance(0)));
    assert!(e.to_string().contains("paused"), "{e}");
    rejected(f.apply(pause(true)));
    let d = deployment(f.apply(pause(false)));
    assert!(!d.rollout.as_ref().unwrap().paused);
    rejected(f.apply(Op::SetTraffic {
        endpoint: "reco-prod".into(),
        model: "reco".into(),
        split: vec![(1, 100)],
        shadows: vec![],
        reason: "by hand".into(),
    }));
}

#[test]
fn only_versions_whose_stage_allows_it_receive_traffic_and_refusals_change_nothing() {
    let mut f = serving();
    f.apply(create_version("reco", b"three"));
    let digest = f.digest();
    let bad = [
        // Experimental v3 may not take any traffic, nor a shadow's copies.
        Op::SetTraffic {
            endpoint: "reco-prod".into(),
            model: "reco".into(),
            split: vec![(1, 90), (3, 10)],
            shadows: vec![],
            reason: "x".into(),
        },
        Op::SetTraffic {
            endpoint: "reco-prod".into(),
            model: "reco".into(),
            split: vec![(1, 100)],
            shadows: vec![3],
            reason: "x".into(),
        },
        // Staging v2 may not take all of it.
        Op::SetTraffic {
            endpoint: "reco-prod".into(),
            model: "reco".into(),
            split: vec![(2, 100)],
            shadows: vec![],
            reason: "x".into(),
        },
        rollout(3, vec![step(0, 0), step(100, 0)]),
        rollout(1, vec![step(5, 0), step(100, 0)]),
        rollout(9, vec![step(5, 0), step(100, 0)]),
        Op::CreateDeployment {
            endpoint: "reco-prod".into(),
            model: "reco".into(),
            version: 1,
            reason: "again".into(),
        },
        Op::CreateDeployment {
            endpoint: "reco-new".into(),
            model: "reco".into(),
            version: 2,
            reason: "staging".into(),
        },
        Op::CreateDeployment {
            endpoint: "reco-new".into(),
            model: "nobody".into(),
            version: 1,
            reason: "x".into(),
        },
        // The endpoint serves reco, not another model.
        Op::Rollback {
            endpoint: "reco-prod".into(),
            model: "other".into(),
            reason: "x".into(),
        },
        Op::Rollback {
            endpoint: "nowhere".into(),
            model: "reco".into(),
            reason: "x".into(),
        },
        // Fields over their limits, caught before any key is built.
        Op::CreateDeployment {
            endpoint: String::new(),
            model: "reco".into(),
            version: 1,
            reason: "x".into(),
        },
        Op::CreateDeployment {
            endpoint: "a\0b".into(),
            model: "reco".into(),
            version: 0,
            reason: "x".into(),
        },
        Op::CreateDeployment {
            endpoint: "x".repeat(300),
            model: "reco".into(),
            version: 1,
            reason: "x".into(),
        },
        Op::SetTraffic {
            endpoint: "reco-prod".into(),
            model: "reco".into(),
            split: vec![(1, u32::MAX), (2, 1)],
            shadows: vec![],
            reason: "x".into(),
        },
        Op::StartRollout {
            endpoint: "reco-prod".into(),
            model: "reco".into(),
            version: 2,
            plan: vec![step(5, 0), step(100, 0)],
            bounds: Bounds {
                error_rate_pct_max: f64::NAN,
                p99_ms_max: 1.0,
                min_requests: 0,
            },
            reason: "x".into(),
        },
        Op::AdvanceRollout {
            endpoint: "../../etc".into(),
            model: "reco".into(),
            from_step: u32::MAX,
        },
    ];
    for op in bad {
        let e = rejected(f.apply(op.clone()));
        assert!(!e.to_string().is_empty(), "{op:?}");
        assert_eq!(f.digest(), digest, "{op:?} changed the state: {e}");
    }
    // A Staging version may take a canary share and a shadow.
    let d = deployment(f.apply(Op::SetTraffic {
        endpoint: "reco-prod".into(),
        model: "reco".into(),
        split: vec![(1, 90), (2, 10)],
        shadows: vec![],
        reason: "canary by hand".into(),
    }));
    assert_eq!(d.split, Split::from([(1, 90), (2, 10)]));
    let (page, next) = f.read(|app, txn| app.list_deployments(txn, None, "", 0).unwrap());
    assert_eq!((page.len(), next), (1, None));
}

fn report(agent: &str, generation: u64, stats: Vec<(u64, u64, u64, f64)>) -> Op {
    Op::ReportServing {
        endpoint: "reco-prod".into(),
        model: "reco".into(),
        agent: agent.into(),
        generation,
        stats: stats
            .into_iter()
            .map(
                |(version, requests, errors, p99_ms)| crate::deploy::VersionStats {
                    version,
                    requests,
                    errors,
                    p99_ms,
                },
            )
            .collect(),
    }
}

fn taken(r: Response) -> (Deployment, bool) {
    match r {
        Response::ServingReport(t) => *t,
        other => panic!("expected a serving report, got {other:?}"),
    }
}

#[test]
fn reports_that_together_breach_the_bounds_roll_the_rollout_back_in_the_same_step() {
    let mut f = serving();
    let d = deployment(f.apply(rollout(2, vec![step(5, 60_000), step(100, 0)])));
    let g = d.generation;
    // Within bounds: 1 error in 200 for the target (0.5% ≤ 1%), the stable version's errors
    // do not count.
    let (d, rolled) = taken(f.apply(report(
        "agent-1",
        g,
        vec![(1, 1000, 50, 10.0), (2, 200, 1, 20.0)],
    )));
    assert!(!rolled && d.rollout.is_some());
    // A report of an older generation counts for nothing.
    let (_, rolled) = taken(f.apply(report("agent-2", g - 1, vec![(2, 100, 100, 1.0)])));
    assert!(!rolled);
    // Another agent's errors bring the sum over: 1 + 4 of 200 + 100 = 1.67% > 1%.
    let (d, rolled) = taken(f.apply(report("agent-2", g, vec![(2, 100, 4, 30.0)])));
    assert!(rolled);
    assert_eq!(d.split, Split::from([(1, 100)]));
    assert!(d.rollout.is_none());
    let history = f.read(|app, txn| app.deployment_history(txn, "reco-prod", 0, 1).unwrap());
    assert_eq!(history[0].kind, ChangeKind::Rollback);
    assert_eq!(history[0].principal, "alice");
    assert!(
        history[0]
            .reason
            .starts_with("automatic: reco/2 at step 1 of 2 (5% 1m): error rate 1.67%"),
        "{}",
        history[0].reason
    );
    // Latency alone breaches too.
    let d = deployment(f.apply(rollout(2, vec![step(5, 60_000), step(100, 0)])));
    let (_, rolled) = taken(f.apply(report("agent-1", d.generation, vec![(2, 10, 0, 900.0)])));
    assert!(rolled, "p99 900 ms > 500 ms");
}

#[test]
fn a_step_asking_for_requests_moves_on_only_once_the_reports_show_them() {
    let mut f = serving();
    let mut plan_op = rollout(2, vec![step(5, 0), step(100, 0)]);
    if let Op::StartRollout { bounds, .. } = &mut plan_op {
        bounds.min_requests = 100;
    }
    let d = deployment(f.apply(plan_op));
    let e = rejected(f.apply_as("node:1", advance(0)));
    assert!(
        e.to_string().contains("has seen 0 of the 100 requests"),
        "{e}"
    );
    taken(f.apply(report("agent-1", d.generation, vec![(2, 60, 0, 1.0)])));
    rejected(f.apply_as("node:1", advance(0)));
    taken(f.apply(report("agent-2", d.generation, vec![(2, 40, 0, 1.0)])));
    f.apply(stage("reco", 2, Stage::Production));
    let d = deployment(f.apply_as("node:1", advance(0)));
    assert_eq!(d.split, Split::from([(2, 100)]));
    // An approver advancing by hand decides the step has seen enough.
    let mut plan_op = rollout(1, vec![step(5, 3_600_000), step(100, 0)]);
    if let Op::StartRollout { bounds, .. } = &mut plan_op {
        bounds.min_requests = 1_000_000;
    }
    f.apply(stage("reco", 1, Stage::Staging));
    deployment(f.apply(plan_op));
    f.apply(stage("reco", 1, Stage::Production));
    let d = deployment(f.apply(advance(0)));
    assert_eq!(d.split, Split::from([(1, 100)]));
}

#[test]
fn hostile_reports_are_refused_and_change_nothing() {
    let mut f = serving();
    let g = get(&f).generation;
    let digest = f.digest();
    let many: Vec<_> = (1..=17).map(|v| (v, 1, 0, 1.0)).collect();
    for op in [
        report("agent-1", 0, vec![]),
        report("agent-1", g + 1, vec![]),
        report("agent-1", u64::MAX, vec![]),
        report("", g, vec![]),
        report("a\0b", g, vec![]),
        report(&"a".repeat(65), g, vec![]),
        report("../x", g, vec![]),
        report("agent-1", g, vec![(1, 1, 2, 1.0)]),
        report("agent-1", g, vec![(0, 1, 0, 1.0)]),
        report("agent-1", g, vec![(1, 1, 0, 1.0), (1, 1, 0, 1.0)]),
        report("agent-1", g, vec![(1, 1, 0, f64::NAN)]),
        report("agent-1", g, vec![(1, 1, 0, f64::INFINITY)]),
        report("agent-1", g, vec![(1, 1, 0, -1.0)]),
        report("agent-1", g, many),
        Op::ReportServing {
            endpoint: "nowhere".into(),
            model: "reco".into(),
            agent: "agent-1".into(),
            generation: 1,
            stats: vec![],
        },
    ] {
        let e = rejected(f.apply(op.clone()));
        assert_eq!(f.digest(), digest, "{op:?} changed the state: {e}");
    }
    // u64::MAX counts sum without overflow.
    taken(f.apply(report("agent-1", g, vec![(1, u64::MAX, u64::MAX, 1.0)])));
    taken(f.apply(report("agent-2", g, vec![(1, u64::MAX, 0, 1.0)])));
}
