//! Invariant checkers for deployments and the rollout controller (issue 15), over plain data:
//! every node's endpoints and their histories ([`FinalState::deployments`],
//! [`FinalState::deploy_history`], read after convergence), its watch log, and what the
//! deployers sent ([`DeployLog`], recorded by [`crate::deployers`]).
//!
//! What is checked:
//! - every node has the same endpoints and the same history of each (`deploy-history-diverged`);
//!   an endpoint's history holds generations `1..=generation`, one record each, the newest the
//!   endpoint's (`deploy-history-gap`);
//! - each rollout (from its `rollout_start` record, whose reason names the plan the deployer
//!   sent, to its `rollout_complete` or `rollback`) moves through the plan's steps in order, each
//!   exactly once: every record's split and shadows are `Step::traffic` of the next step
//!   (`rollout-step-skipped`, `rollout-step-repeated`, `rollout-wrong-split`); no `set`,
//!   `create` or second start interrupts it (`rollout-interrupted`); a pause or resume keeps the
//!   step's split; the endpoint's rollout at the end is the one the history leaves in progress
//!   (`rollout-state-mismatch`);
//! - a rollback routes all traffic to one version, with no shadows, during a rollout its stable
//!   one (`rollback-not-clean`), and every hand rollback acknowledged to a deployer is in the
//!   history (`rollback-missing`);
//! - the watch log has one `Deployment` event per generation, in order, naming the endpoint's
//!   model (`deploy-watch-mismatch`);
//! - no version took traffic its stage did not allow when it did, its stage followed through
//!   the watch log in revision order: all of it (`create`, `rollout_complete`) only in
//!   Production, a rollout's target's share or shadow only in Staging or Production
//!   (`traffic-not-allowed`).

use std::collections::{BTreeMap, BTreeSet};

use quiver_node::deploy::{ChangeKind, DeploymentRecord, Step, DEPLOYMENT_HISTORY_KEPT};
use quiver_node::domain::Stage;
use quiver_node::watch::Change;

use crate::check::{FinalState, Violation};
use crate::deployers::DeployLog;
use crate::schedule::NodeId;

/// Check every node's deployments against each other, the deployers' logs and the watch log
/// (see the module docs).
pub fn check_deploy(nodes: &[(NodeId, &FinalState)], logs: &[DeployLog]) -> Vec<Violation> {
    let mut out = Vec::new();
    let Some(&(first, reference)) = nodes.first() else {
        return out;
    };
    for &(id, state) in &nodes[1..] {
        out.extend(compare_histories(first, reference, id, state));
    }
    let plans: BTreeMap<&str, (u64, &[Step])> = logs
        .iter()
        .flat_map(|l| l.rollouts.iter())
        .map(|(reason, (target, plan))| (reason.as_str(), (*target, plan.as_slice())))
        .collect();
    for (endpoint, d) in &reference.deployments {
        let history = reference
            .deploy_history
            .get(endpoint)
            .map(Vec::as_slice)
            .unwrap_or_default();
        out.extend(check_generations(endpoint, d.generation, history));
        out.extend(check_rollouts(
            endpoint,
            history,
            &plans,
            d.rollout.as_ref(),
        ));
    }
    for log in logs {
        let history = reference
            .deploy_history
            .get(&log.endpoint)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let done: BTreeSet<&str> = history
            .iter()
            .filter(|r| r.kind == ChangeKind::Rollback)
            .map(|r| r.reason.as_str())
            .collect();
        for reason in &log.rollbacks_acked {
            if !done.contains(reason.as_str()) {
                out.push(Violation::new(
                    "rollback-missing",
                    format!(
                        "the rollback of {} acknowledged as '{reason}' is not in its history",
                        log.endpoint
                    ),
                ));
            }
        }
    }
    out.extend(check_watch_events(reference));
    out.extend(check_stages(reference, &plans));
    out
}

/// Node `id` has the reference's endpoints and histories.
fn compare_histories(
    first: NodeId,
    reference: &FinalState,
    id: NodeId,
    state: &FinalState,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let endpoints: BTreeSet<&String> = reference
        .deploy_history
        .keys()
        .chain(state.deploy_history.keys())
        .collect();
    for endpoint in endpoints {
        let (a, b) = (
            reference.deploy_history.get(endpoint),
            state.deploy_history.get(endpoint),
        );
        if a == b {
            continue;
        }
        let (a, b) = (a.map(Vec::as_slice), b.map(Vec::as_slice));
        let at = match (a, b) {
            (Some(a), Some(b)) => a
                .iter()
                .zip(b)
                .find(|(x, y)| x != y)
                .map(|(x, _)| format!("differ at generation {}", x.generation))
                .unwrap_or_else(|| format!("hold {} and {} records", a.len(), b.len())),
            (Some(_), None) => format!("n{id} has no such endpoint"),
            _ => format!("n{first} has no such endpoint"),
        };
        out.push(Violation::new(
            "deploy-history-diverged",
            format!("the histories of {endpoint} on n{first} and n{id} {at}"),
        ));
    }
    out
}

/// The history holds generations `1..=generation` (the newest `DEPLOYMENT_HISTORY_KEPT`), each
/// once and in order.
fn check_generations(
    endpoint: &str,
    generation: u64,
    history: &[DeploymentRecord],
) -> Vec<Violation> {
    let first = generation.saturating_sub(DEPLOYMENT_HISTORY_KEPT) + 1;
    let found: Vec<u64> = history.iter().map(|r| r.generation).collect();
    let expected: Vec<u64> = (first..=generation).collect();
    if found == expected {
        return Vec::new();
    }
    let shown: Vec<String> = found.iter().take(12).map(u64::to_string).collect();
    vec![Violation::new(
        "deploy-history-gap",
        format!(
            "{endpoint} is at generation {generation} but its history holds generations [{}{}]",
            shown.join(", "),
            if found.len() > 12 { ", …" } else { "" }
        ),
    )]
}

/// A rollout being walked: where it started from, where it goes, and the step in force.
struct Walk<'a> {
    reason: &'a str,
    stable: u64,
    target: u64,
    plan: &'a [Step],
    step: usize,
}

impl Walk<'_> {
    /// The plan step whose traffic `r` has, if any.
    fn step_of(&self, r: &DeploymentRecord) -> Option<usize> {
        self.plan.iter().position(|s| {
            let (split, shadows) = s.traffic(self.stable, self.target);
            split == r.split && shadows == r.shadows
        })
    }
}

/// The one version holding all traffic in `r`, if one does and nothing is shadowed.
fn all_on(r: &DeploymentRecord) -> Option<u64> {
    match (r.split.iter().next(), r.split.len(), r.shadows.is_empty()) {
        (Some((v, 100)), 1, true) => Some(*v),
        _ => None,
    }
}

/// Every rollout in `history` follows its plan step by step (see the module docs).
pub fn check_rollouts(
    endpoint: &str,
    history: &[DeploymentRecord],
    plans: &BTreeMap<&str, (u64, &[Step])>,
    in_progress: Option<&quiver_node::deploy::Rollout>,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut walk: Option<Walk<'_>> = None;
    let mut stable: Option<u64> = None;
    let mut v = |kind: &'static str, r: &DeploymentRecord, what: String| {
        out.push(Violation::new(
            kind,
            format!(
                "{endpoint} generation {} ({}, '{}'): {what}",
                r.generation,
                r.kind.as_str(),
                r.reason
            ),
        ))
    };
    for r in history {
        match r.kind {
            ChangeKind::RolloutStart => {
                if let Some(w) = &walk {
                    v(
                        "rollout-interrupted",
                        r,
                        format!("'{}' is still in progress", w.reason),
                    );
                }
                walk = None;
                let Some(&(target, plan)) = plans.get(r.reason.as_str()) else {
                    v(
                        "rollout-wrong-split",
                        r,
                        "no deployer sent this rollout".into(),
                    );
                    stable = None;
                    continue;
                };
                // The first record kept may be mid-rollout: its start's stable is unknown.
                let Some(from) = stable else { continue };
                let w = Walk {
                    reason: &r.reason,
                    stable: from,
                    target,
                    plan,
                    step: 0,
                };
                match w.step_of(r) {
                    Some(0) => walk = Some(w),
                    Some(j) => v(
                        "rollout-step-skipped",
                        r,
                        format!("starts at step {} of {}, not 1", j + 1, plan.len()),
                    ),
                    None => v("rollout-wrong-split", r, "no step of its plan".into()),
                }
            }
            ChangeKind::RolloutStep | ChangeKind::RolloutComplete => {
                let Some(w) = &mut walk else {
                    if stable.is_some() {
                        v("rollout-wrong-split", r, "no rollout is in progress".into());
                    }
                    stable = all_on(r);
                    continue;
                };
                let expected = w.step + 1;
                match w.step_of(r) {
                    Some(j) if j > expected => v(
                        "rollout-step-skipped",
                        r,
                        format!(
                            "moved from step {} to step {} of {}",
                            w.step + 1,
                            j + 1,
                            w.plan.len()
                        ),
                    ),
                    Some(j) if j < expected => v(
                        "rollout-step-repeated",
                        r,
                        format!(
                            "step {} of {} again, after step {}",
                            j + 1,
                            w.plan.len(),
                            w.step + 1
                        ),
                    ),
                    Some(_) => {}
                    None => v("rollout-wrong-split", r, "no step of its plan".into()),
                }
                let last = w.plan.len() - 1;
                let complete = r.kind == ChangeKind::RolloutComplete;
                if complete != (w.step_of(r) == Some(last)) {
                    v(
                        "rollout-wrong-split",
                        r,
                        format!("its kind does not match step {:?}", w.step_of(r)),
                    );
                }
                if let Some(j) = w.step_of(r) {
                    w.step = j;
                }
                if complete {
                    stable = Some(w.target);
                    walk = None;
                }
            }
            ChangeKind::Pause | ChangeKind::Resume => {
                if let Some(w) = &walk {
                    if w.step_of(r) != Some(w.step) {
                        v(
                            "rollout-wrong-split",
                            r,
                            format!("the traffic moved off step {}", w.step + 1),
                        );
                    }
                }
            }
            ChangeKind::Rollback => {
                let to = all_on(r);
                match (&walk, to) {
                    (_, None) => v(
                        "rollback-not-clean",
                        r,
                        format!("traffic {:?} shadows {:?}", r.split, r.shadows),
                    ),
                    (Some(w), Some(to)) if to != w.stable => v(
                        "rollback-not-clean",
                        r,
                        format!("all traffic to {to}, not the stable {}", w.stable),
                    ),
                    _ => {}
                }
                walk = None;
                stable = to;
            }
            ChangeKind::Create | ChangeKind::Set => {
                if let Some(w) = &walk {
                    v(
                        "rollout-interrupted",
                        r,
                        format!("'{}' is still in progress", w.reason),
                    );
                }
                walk = None;
                stable = all_on(r).or(stable);
            }
        }
    }
    let walked = walk.map(|w| (w.target, w.step));
    let current = in_progress.map(|r| (r.target, r.step));
    if walked.is_some() && walked != current {
        out.push(Violation::new(
            "rollout-state-mismatch",
            format!(
                "{endpoint}: its history leaves (target, step) {walked:?} in progress, the \
                 endpoint says {current:?}"
            ),
        ));
    }
    out
}

/// One watch event per generation of each endpoint, in order, naming its model.
fn check_watch_events(state: &FinalState) -> Vec<Violation> {
    let mut seen: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut out = Vec::new();
    for e in &state.watch {
        if let Change::Deployment {
            endpoint,
            model,
            generation,
        } = &e.change
        {
            if state.deployments.get(endpoint).map(|d| &d.model) != Some(model) {
                out.push(Violation::new(
                    "deploy-watch-mismatch",
                    format!(
                        "revision {}: endpoint {endpoint} does not serve {model}",
                        e.revision
                    ),
                ));
            }
            seen.entry(endpoint.as_str()).or_default().push(*generation);
        }
    }
    let whole = state.watch.first().is_none_or(|e| e.revision == 1);
    for (endpoint, d) in &state.deployments {
        let found = seen.remove(endpoint.as_str()).unwrap_or_default();
        let from = match found.first() {
            Some(&g) if !whole => g,
            _ => 1,
        };
        let expected: Vec<u64> = (from..=d.generation).collect();
        if found != expected {
            let shown: Vec<String> = found.iter().take(12).map(u64::to_string).collect();
            out.push(Violation::new(
                "deploy-watch-mismatch",
                format!(
                    "{endpoint} is at generation {}, its watch events name generations [{}{}]",
                    d.generation,
                    shown.join(", "),
                    if found.len() > 12 { ", …" } else { "" }
                ),
            ));
        }
    }
    for endpoint in seen.keys() {
        out.push(Violation::new(
            "deploy-watch-mismatch",
            format!("the watch log names endpoint {endpoint}, which does not exist"),
        ));
    }
    out
}

/// Each change's traffic was allowed by the stages of its versions at that point of the watch
/// log (see the module docs). A version whose creation the kept log does not hold is skipped.
fn check_stages(state: &FinalState, plans: &BTreeMap<&str, (u64, &[Step])>) -> Vec<Violation> {
    let mut stages: BTreeMap<(&str, u64), Stage> = BTreeMap::new();
    let mut targets: BTreeMap<&str, u64> = BTreeMap::new();
    let mut out = Vec::new();
    for e in &state.watch {
        match &e.change {
            Change::VersionCreated { model, number, .. } => {
                stages.insert((model.as_str(), *number), Stage::Experimental);
            }
            Change::Stage {
                model, number, to, ..
            } => {
                stages.insert((model.as_str(), *number), *to);
            }
            Change::Deployment {
                endpoint,
                model,
                generation,
            } => {
                let Some(r) = state
                    .deploy_history
                    .get(endpoint)
                    .and_then(|h| h.iter().find(|r| r.generation == *generation))
                else {
                    continue;
                };
                let (version, allowed): (Option<u64>, &[Stage]) = match r.kind {
                    ChangeKind::Create | ChangeKind::RolloutComplete => {
                        targets.remove(endpoint.as_str());
                        (all_on(r), &[Stage::Production])
                    }
                    ChangeKind::RolloutStart => {
                        let target = plans.get(r.reason.as_str()).map(|(t, _)| *t);
                        if let Some(t) = target {
                            targets.insert(endpoint.as_str(), t);
                        }
                        (target, &[Stage::Staging, Stage::Production])
                    }
                    ChangeKind::RolloutStep => (
                        targets.get(endpoint.as_str()).copied(),
                        &[Stage::Staging, Stage::Production],
                    ),
                    ChangeKind::Rollback => {
                        targets.remove(endpoint.as_str());
                        (None, &[])
                    }
                    ChangeKind::Set | ChangeKind::Pause | ChangeKind::Resume => (None, &[]),
                };
                let Some(version) = version else { continue };
                let Some(stage) = stages.get(&(model.as_str(), version)) else {
                    continue;
                };
                if !allowed.contains(stage) {
                    out.push(Violation::new(
                        "traffic-not-allowed",
                        format!(
                            "{endpoint} generation {generation} ({}) routes to {model}/{version}, \
                             in {stage:?} at revision {}",
                            r.kind.as_str(),
                            e.revision
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_node::deploy::{Deployment, Rollout, Split};
    use quiver_node::watch::WatchEvent;

    /// The deployers' first plan: shadow, 10%, 50%, 100%.
    const PLAN: &[Step] = crate::deployers::PLANS[0];

    fn record(
        generation: u64,
        kind: ChangeKind,
        reason: &str,
        step: Option<usize>,
    ) -> DeploymentRecord {
        let (split, shadows) = match step {
            Some(i) => PLAN[i].traffic(1, 2),
            None => (Split::from([(1, 100)]), BTreeSet::new()),
        };
        DeploymentRecord {
            generation,
            kind,
            principal: "deployer-0".into(),
            at_ms: generation as i64,
            reason: reason.into(),
            split,
            shadows,
        }
    }

    /// create v1; roll out v2 by PLAN (each step once); roll out again, rolled back by hand.
    fn clean_history() -> Vec<DeploymentRecord> {
        use ChangeKind::*;
        vec![
            record(1, Create, "create", None),
            record(2, RolloutStart, "r1", Some(0)),
            record(3, RolloutStep, "step 2 of 4", Some(1)),
            record(4, Pause, "pause", Some(1)),
            record(5, Resume, "resume", Some(1)),
            record(6, RolloutStep, "step 3 of 4", Some(2)),
            record(7, RolloutComplete, "step 4 of 4", Some(3)),
            // From v2 back to v1 by hand (no rollout in progress).
            record(8, Rollback, "dep0 rollback #9", None),
            record(9, RolloutStart, "r2", Some(0)),
            record(10, RolloutStep, "step 2 of 4", Some(1)),
            record(11, Rollback, "automatic: error rate", None),
        ]
    }

    fn state_of(history: Vec<DeploymentRecord>) -> FinalState {
        let last = history.last().expect("a history").clone();
        let mut state = FinalState::default();
        let mut revision = 0;
        let mut event = |change| {
            revision += 1;
            WatchEvent {
                revision,
                at_ms: 0,
                principal: "p".into(),
                change,
            }
        };
        let m = |number, to| Change::Stage {
            model: "dep0-m".into(),
            number,
            from: Stage::Experimental,
            to,
        };
        for number in [1, 2] {
            state.watch.push(event(Change::VersionCreated {
                model: "dep0-m".into(),
                number,
                status: quiver_node::domain::VersionStatus::Ready,
            }));
        }
        state.watch.push(event(m(1, Stage::Production)));
        state.watch.push(event(m(2, Stage::Staging)));
        for r in &history {
            if r.generation == 6 {
                state.watch.push(event(m(2, Stage::Production)));
            }
            state.watch.push(event(Change::Deployment {
                endpoint: "dep0-ep".into(),
                model: "dep0-m".into(),
                generation: r.generation,
            }));
        }
        state.deployments.insert(
            "dep0-ep".into(),
            Deployment {
                endpoint: "dep0-ep".into(),
                model: "dep0-m".into(),
                namespace: "deploy-0".into(),
                split: last.split.clone(),
                shadows: last.shadows.clone(),
                stable: 1,
                previous: Some(2),
                rollout: None,
                generation: last.generation,
                created_by: "deployer-0".into(),
                created_at_ms: 0,
                updated_by: "deployer-0".into(),
                updated_at_ms: 0,
            },
        );
        state.deploy_history.insert("dep0-ep".into(), history);
        state
    }

    fn log() -> DeployLog {
        DeployLog {
            endpoint: "dep0-ep".into(),
            rollouts: ["r1", "r2"]
                .into_iter()
                .map(|r| (r.to_string(), (2, PLAN.to_vec())))
                .collect(),
            rollbacks_acked: vec!["dep0 rollback #9".into()],
        }
    }

    fn kinds(states: &[FinalState], log: &DeployLog) -> Vec<&'static str> {
        let nodes: Vec<(NodeId, &FinalState)> = states
            .iter()
            .enumerate()
            .map(|(i, s)| (i as NodeId + 1, s))
            .collect();
        check_deploy(&nodes, std::slice::from_ref(log))
            .into_iter()
            .map(|v| v.kind)
            .collect()
    }

    #[test]
    fn a_clean_history_on_every_node_passes() {
        let s = state_of(clean_history());
        let found = kinds(&[s.clone(), s.clone(), s], &log());
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_skipped_step_is_reported() {
        use ChangeKind::*;
        // Step 2 (10%) never held: straight from the shadow step to 50%.
        let h = vec![
            record(1, Create, "create", None),
            record(2, RolloutStart, "r1", Some(0)),
            record(3, RolloutStep, "step 3 of 4", Some(2)),
            record(4, RolloutComplete, "step 4 of 4", Some(3)),
        ];
        let found = kinds(&[state_of(h)], &log());
        assert!(found.contains(&"rollout-step-skipped"), "{found:?}");
    }

    #[test]
    fn a_repeated_step_is_reported() {
        let mut h = clean_history();
        // Step 2 applied a second time (a stale leader's copy taken).
        h.insert(
            3,
            record(4, ChangeKind::RolloutStep, "step 2 of 4", Some(1)),
        );
        h.iter_mut()
            .enumerate()
            .for_each(|(i, r)| r.generation = i as u64 + 1);
        let found = kinds(&[state_of(h)], &log());
        assert_eq!(found, ["rollout-step-repeated"], "{found:?}");
    }

    #[test]
    fn a_diverged_node_is_reported() {
        let a = state_of(clean_history());
        let mut b = a.clone();
        b.deploy_history.get_mut("dep0-ep").unwrap()[5].reason = "other".into();
        let found = kinds(&[a, b], &log());
        assert_eq!(found, ["deploy-history-diverged"], "{found:?}");
    }

    #[test]
    fn a_missing_rollback_and_a_dirty_one_are_reported() {
        let mut l = log();
        l.rollbacks_acked.push("dep0 rollback #20".into());
        let mut h = clean_history();
        h[10].shadows = BTreeSet::from([2]);
        let found = kinds(&[state_of(h)], &l);
        assert!(found.contains(&"rollback-missing"), "{found:?}");
        assert!(found.contains(&"rollback-not-clean"), "{found:?}");
    }

    #[test]
    fn a_gap_a_missing_watch_event_and_a_staging_version_taking_all_traffic_are_reported() {
        let mut s = state_of(clean_history());
        s.deploy_history.get_mut("dep0-ep").unwrap().remove(4);
        s.watch.retain(|e| {
            !matches!(e.change, Change::Deployment { generation: 3, .. })
                && !matches!(
                    e.change,
                    Change::Stage {
                        number: 2,
                        to: Stage::Production,
                        ..
                    }
                )
        });
        let found = kinds(&[s], &log());
        for kind in [
            "deploy-history-gap",
            "deploy-watch-mismatch",
            "traffic-not-allowed",
        ] {
            assert!(found.contains(&kind), "{kind}: {found:?}");
        }
    }

    #[test]
    fn a_rollout_the_history_leaves_in_progress_must_be_the_endpoints() {
        let mut h = clean_history();
        h.truncate(10);
        let mut s = state_of(h);
        let found = kinds(&[s.clone()], &log());
        assert_eq!(found, ["rollout-state-mismatch"], "{found:?}");
        s.deployments.get_mut("dep0-ep").unwrap().rollout = Some(Rollout {
            target: 2,
            plan: PLAN.to_vec(),
            step: 1,
            step_started_ms: 0,
            paused: false,
            bounds: Default::default(),
        });
        assert!(kinds(&[s], &log()).is_empty());
    }
}
