//! The rollout scenario, sized for `cargo test --workspace` in a debug build: 100 serving
//! agents (the client crate's `AgentCore`) in three regions follow an endpoint through
//! rollouts, automatic and hand rollbacks while nodes crash and are cut off and agents lose the
//! registry; every answer is in a split in force (or just superseded) and every rollback
//! reaches every agent. With the agent planted to ignore rollbacks, the rollout checker says so.

use quiver_sim::report::SeedOutcome;
use quiver_sim::{sweep, Plant, RunReport, Scenario, SeedRange, SimConfig};

/// Seeds whose 20 s hold an automatic rollback (a canary failing under traffic) and a hand
/// rollback between them, under crashes, cuts and agents cut off.
const SEEDS: SeedRange = SeedRange { start: 2, end: 4 };

fn config(duration_s: u64) -> SimConfig {
    let mut cfg = SimConfig::new(0, Scenario::Rollout);
    cfg.duration_s = duration_s;
    cfg
}

fn reports(outcomes: Vec<SeedOutcome>) -> Vec<RunReport> {
    outcomes
        .into_iter()
        .map(|o| match o.result {
            Ok(r) => r,
            Err(e) => panic!("seed {} could not run: {e}", o.seed),
        })
        .collect()
}

#[test]
fn agents_follow_rollouts_and_rollbacks_under_faults_within_the_propagation_bound() {
    let runs = reports(sweep(&config(20), SEEDS, 2, |_| {}));
    let (mut automatic, mut hand) = (0, 0);
    for r in &runs {
        assert!(r.passed(), "{}", r.summary());
        let f = r.rollout.as_ref().expect("the rollout's figures");
        assert_eq!(f.agents, 100);
        assert!(
            r.faults.crashes + r.faults.cuts >= 3 && f.cut_off_spells > 0,
            "nodes and agents were cut off or crashed: {}",
            r.summary()
        );
        assert!(f.answers > 20_000 && f.reports > 500, "{}", r.summary());
        assert!(f.rollouts_started >= 2, "{}", r.summary());
        assert_eq!(f.regions.len(), 3);
        for region in &f.regions {
            assert!(
                region.agents >= 33 && region.model_load_time_ms.n >= region.agents,
                "every agent loaded the first version: {}",
                r.summary()
            );
        }
        assert!(
            f.stale_answer_ms_max <= f.propagation_bound_ms,
            "{}",
            r.summary()
        );
        for b in f.rollbacks.iter().filter(|b| b.judged) {
            assert!(b.last_agent_ms.is_some(), "{}", r.summary());
        }
        automatic += f.rollbacks_automatic;
        hand += f.rollbacks_manual;
        let json = serde_json::to_value(quiver_sim::report::run_json(r)).expect("encode");
        assert_eq!(json["rollout"]["regions"][0]["region"], 0);
        assert!(json["rollout"]["regions"][2]["model_load_time_ms"]["p99"].is_u64());
    }
    assert!(
        automatic >= 1 && hand >= 1,
        "both kinds of rollback: {automatic} automatic, {hand} by hand"
    );
    assert!(
        runs.iter()
            .flat_map(|r| r.rollout.iter())
            .any(|f| f.rollback_time_ms.n > 0),
        "rollback times were measured"
    );
}

/// The simulated agent drops a deployment that rolls its split back: it keeps answering with
/// the canary after the rollback, and the checker names it.
#[test]
fn the_rollout_checker_finds_an_agent_ignoring_rollbacks() {
    let mut cfg = config(20);
    cfg.plant = Some(Plant::AgentIgnoresRollback);
    let runs = reports(sweep(&cfg, SEEDS, 2, |_| {}));
    let caught: Vec<&RunReport> = runs
        .iter()
        .filter(|r| {
            r.violations.iter().any(|v| {
                matches!(
                    v.kind,
                    "served-stale" | "rollback-incomplete" | "rollback-slow"
                )
            })
        })
        .collect();
    assert_eq!(
        caught.len(),
        runs.len(),
        "every seed with a rollback catches it:\n{}",
        runs.iter()
            .map(|r| r.summary())
            .collect::<Vec<_>>()
            .join("\n")
    );
    for r in caught {
        let f = r.rollout.as_ref().expect("figures");
        assert!(f.rollbacks_ignored > 0, "{}", r.summary());
        assert!(r.summary().contains("--plant agent-ignores-rollback"));
    }
}

/// Same seed, same run: the agents' draws, the pulls and the faults are all seeded.
#[test]
fn a_rollout_run_is_a_function_of_its_seed() {
    let cfg = config(6);
    let seeds = SeedRange { start: 5, end: 7 };
    let runs = reports(sweep(&cfg, seeds, 2, |_| {}));
    let again = reports(sweep(&cfg, SeedRange { start: 5, end: 6 }, 1, |_| {}));
    assert_eq!(runs[0].trace_hash, again[0].trace_hash);
    assert_eq!(runs[0].rollout, again[0].rollout);
    assert_ne!(runs[0].trace_hash, runs[1].trace_hash);
}
