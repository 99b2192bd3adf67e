//! Deployment commands (issue 15): create an endpoint, set its traffic, start, advance, pause
//! and resume a rollout, roll back. Each checks the endpoint's state and the stages of the
//! versions it routes to (`crate::deploy`), then writes the endpoint, a history record, a
//! lineage edge from each version newly receiving traffic, and a watch event.

use std::collections::BTreeSet;

use super::{Applied, Write};
use crate::command::Response;
use crate::deploy::{
    self, AgentReport, Bounds, ChangeKind, Deployment, DeploymentRecord, Rollout, Split, Step,
    VersionStats, AGENTS_PER_ENDPOINT_MAX, DEPLOYMENTS_MAX, DEPLOYMENT_HISTORY_KEPT,
};
use crate::domain::DomainError;
use crate::state::tables::{encode, key2};
use crate::state::AppResult;
use crate::watch::Change;

fn state_error(endpoint: &str, message: impl Into<String>) -> DomainError {
    DomainError::DeploymentState {
        endpoint: endpoint.into(),
        message: message.into(),
    }
}

/// The endpoint, which must serve `model`.
fn endpoint_of(w: &mut Write<'_, '_>, endpoint: &str, model: &str) -> AppResult<Deployment> {
    let d = w.app.get_deployment(w.wtxn, endpoint)?;
    if d.model != model {
        return Err(DomainError::invalid(
            "model",
            format!("endpoint {endpoint} serves model {}, not {model}", d.model),
        )
        .into());
    }
    Ok(d)
}

/// Refuses a split or shadow naming a version that does not exist or whose stage may not
/// receive its share. The endpoint's stable version (`serving`) keeps its traffic whatever its
/// stage: promoting its successor archives it while it still serves.
fn check_stages(
    w: &mut Write<'_, '_>,
    model: &str,
    split: &Split,
    shadows: &BTreeSet<u64>,
    serving: Option<u64>,
) -> AppResult<()> {
    let shares = split.iter().map(|(v, p)| (*v, *p));
    for (number, share) in shares.chain(shadows.iter().map(|v| (*v, 0))) {
        let v = w.app.get_version(w.wtxn, model, number)?;
        if Some(number) == serving {
            continue;
        }
        deploy::traffic_allowed(model, number, v.stage, share)?;
    }
    Ok(())
}

/// [`write_change`], answered with the endpoint.
fn commit(
    w: &mut Write<'_, '_>,
    d: Deployment,
    before: BTreeSet<u64>,
    kind: ChangeKind,
    reason: &str,
) -> AppResult<Applied> {
    let (d, subject) = write_change(w, d, before, kind, reason)?;
    Ok((Response::Deployment(Box::new(d)), subject))
}

/// Writes `d` (its generation moved on by one) with a history record of `kind`, the lineage
/// edges of versions newly receiving traffic, and the watch event; returns it and the audit
/// subject.
fn write_change(
    w: &mut Write<'_, '_>,
    mut d: Deployment,
    before: BTreeSet<u64>,
    kind: ChangeKind,
    reason: &str,
) -> AppResult<(Deployment, String)> {
    d.generation += 1;
    d.updated_by = w.actor.name.clone();
    d.updated_at_ms = w.at_ms;
    let tables = &w.app.tables;
    tables
        .deployments
        .put(w.wtxn, d.endpoint.as_bytes(), &encode(&d)?)?;
    let record = DeploymentRecord {
        generation: d.generation,
        kind,
        principal: w.actor.name.clone(),
        at_ms: w.at_ms,
        reason: reason.into(),
        split: d.split.clone(),
        shadows: d.shadows.clone(),
    };
    let history = &w.app.tables.deployment_history;
    history.put(
        w.wtxn,
        &key2(&d.endpoint, &d.generation.to_be_bytes()),
        &encode(&record)?,
    )?;
    if d.generation > DEPLOYMENT_HISTORY_KEPT {
        let dropped = d.generation - DEPLOYMENT_HISTORY_KEPT;
        history.delete(w.wtxn, &key2(&d.endpoint, &dropped.to_be_bytes()))?;
    }
    for number in d.versions().difference(&before) {
        super::lineage::record_deployment_edge(w, &d.model, *number, &d.endpoint)?;
    }
    w.changed(Change::Deployment {
        endpoint: d.endpoint.clone(),
        model: d.model.clone(),
        generation: d.generation,
    });
    let subject = format!("endpoint {}", d.endpoint);
    Ok((d, subject))
}

pub(super) fn create(
    w: &mut Write<'_, '_>,
    endpoint: &str,
    model: &str,
    version: u64,
    reason: &str,
) -> AppResult<Applied> {
    if let Some(existing) = w.app.find_deployment(w.wtxn, endpoint)? {
        return Err(DomainError::invalid(
            "endpoint",
            format!(
                "endpoint {endpoint} exists already (serving {}); change it with `quiver deploy \
                 set` or `quiver deploy rollout`",
                existing.describe_traffic()
            ),
        )
        .into());
    }
    if w.app.tables.deployments.len(w.wtxn)? >= DEPLOYMENTS_MAX {
        return Err(DomainError::invalid(
            "endpoint",
            format!("the registry has {DEPLOYMENTS_MAX} endpoints, the limit"),
        )
        .into());
    }
    let m = w.app.get_model(w.wtxn, model)?;
    let split = Split::from([(version, 100)]);
    check_stages(w, model, &split, &BTreeSet::new(), None)?;
    let d = Deployment {
        endpoint: endpoint.into(),
        model: model.into(),
        namespace: m.namespace,
        split,
        shadows: BTreeSet::new(),
        stable: version,
        previous: None,
        rollout: None,
        generation: 0,
        created_by: w.actor.name.clone(),
        created_at_ms: w.at_ms,
        updated_by: String::new(),
        updated_at_ms: 0,
    };
    commit(w, d, BTreeSet::new(), ChangeKind::Create, reason)
}

pub(super) fn set_traffic(
    w: &mut Write<'_, '_>,
    endpoint: &str,
    model: &str,
    split: &[(u64, u32)],
    shadows: &[u64],
    reason: &str,
) -> AppResult<Applied> {
    let mut d = endpoint_of(w, endpoint, model)?;
    if let Some(r) = &d.rollout {
        return Err(state_error(
            endpoint,
            format!(
                "a rollout of {model}/{} is in progress; roll it back (`quiver deploy rollback \
                 {endpoint}`) before setting traffic by hand",
                r.target
            ),
        )
        .into());
    }
    // check_fields bounded every share to 1..=100.
    let split: Split = split.iter().map(|(v, p)| (*v, *p as u8)).collect();
    let shadows: BTreeSet<u64> = shadows.iter().copied().collect();
    check_stages(w, model, &split, &shadows, Some(d.stable))?;
    let before = d.versions();
    if let Some((&only, _)) = split.iter().find(|(_, p)| **p == 100) {
        if only != d.stable {
            d.make_stable(only);
        }
    }
    d.split = split;
    d.shadows = shadows;
    commit(w, d, before, ChangeKind::Set, reason)
}

pub(super) fn start_rollout(
    w: &mut Write<'_, '_>,
    endpoint: &str,
    model: &str,
    version: u64,
    (plan, bounds): (&[Step], &Bounds),
    reason: &str,
) -> AppResult<Applied> {
    let mut d = endpoint_of(w, endpoint, model)?;
    if let Some(r) = &d.rollout {
        return Err(state_error(
            endpoint,
            format!(
                "a rollout of {model}/{} is in progress already (step {} of {})",
                r.target,
                r.step + 1,
                r.plan.len()
            ),
        )
        .into());
    }
    if d.split != Split::from([(d.stable, 100)]) {
        return Err(state_error(
            endpoint,
            format!(
                "its traffic is split ({}); a rollout starts from one version holding all of \
                 it: set that first with `quiver deploy set {endpoint} --split N=100`",
                d.describe_traffic()
            ),
        )
        .into());
    }
    if version == d.stable {
        return Err(state_error(
            endpoint,
            format!("{model}/{version} serves all its traffic already"),
        )
        .into());
    }
    let (split, shadows) = plan[0].traffic(d.stable, version);
    check_stages(w, model, &split, &shadows, Some(d.stable))?;
    let before = d.versions();
    d.split = split;
    d.shadows = shadows;
    if plan.len() == 1 {
        // A one-step plan is a switch.
        d.make_stable(version);
        return commit(w, d, before, ChangeKind::RolloutComplete, reason);
    }
    d.rollout = Some(Rollout {
        target: version,
        plan: plan.to_vec(),
        step: 0,
        step_started_ms: w.at_ms,
        paused: false,
        bounds: *bounds,
    });
    commit(w, d, before, ChangeKind::RolloutStart, reason)
}

pub(super) fn advance(
    w: &mut Write<'_, '_>,
    endpoint: &str,
    model: &str,
    from_step: u32,
) -> AppResult<Applied> {
    let mut d = endpoint_of(w, endpoint, model)?;
    let Some(mut r) = d.rollout.clone() else {
        return Err(state_error(endpoint, "no rollout is in progress").into());
    };
    if r.step != from_step as usize {
        return Err(state_error(
            endpoint,
            format!(
                "step {} is in force, not step {}: the rollout moved already",
                r.step + 1,
                from_step as u64 + 1
            ),
        )
        .into());
    }
    if r.paused {
        return Err(state_error(
            endpoint,
            format!("the rollout is paused; resume it with `quiver deploy resume {endpoint}`"),
        )
        .into());
    }
    // The controller (a node's principal) waits for the step's duration and requests; an
    // approver who advances by hand decides that the step has seen enough.
    let by_controller = crate::auth::is_system_principal(&w.actor.name);
    let held = w.at_ms.saturating_sub(r.step_started_ms).max(0) as u64;
    let step = r.plan[r.step];
    if by_controller && held < step.duration_ms {
        return Err(state_error(
            endpoint,
            format!(
                "step {} ({step}) has held {} of its {}",
                r.step + 1,
                deploy::duration_text(held),
                deploy::duration_text(step.duration_ms)
            ),
        )
        .into());
    }
    if by_controller && r.bounds.min_requests > 0 {
        let reports = w.app.serving_reports(w.wtxn, endpoint)?;
        let (requests, _, _) = deploy::aggregate(&reports, d.generation, r.target);
        if requests < r.bounds.min_requests {
            return Err(state_error(
                endpoint,
                format!(
                    "step {} ({step}) has seen {requests} of the {} requests it needs",
                    r.step + 1,
                    r.bounds.min_requests
                ),
            )
            .into());
        }
    }
    if by_controller && w.app.controller_skips_step() && r.step + 2 < r.plan.len() {
        // PLANTED BUG `controller-skips-step` (test-only, see `PlantedNodeBugs`): the step
        // after next, never holding the one in between.
        r.step += 1;
    }
    let next = r.plan[r.step + 1];
    let (split, shadows) = next.traffic(d.stable, r.target);
    check_stages(w, model, &split, &shadows, Some(d.stable))?;
    let before = d.versions();
    d.split = split;
    d.shadows = shadows;
    let reason = format!("step {} of {}: {next}", r.step + 2, r.plan.len());
    if r.step + 2 == r.plan.len() {
        d.make_stable(r.target);
        d.rollout = None;
        return commit(w, d, before, ChangeKind::RolloutComplete, &reason);
    }
    r.step += 1;
    r.step_started_ms = w.at_ms;
    d.rollout = Some(r);
    commit(w, d, before, ChangeKind::RolloutStep, &reason)
}

pub(super) fn pause(
    w: &mut Write<'_, '_>,
    endpoint: &str,
    model: &str,
    pause: bool,
    reason: &str,
) -> AppResult<Applied> {
    let mut d = endpoint_of(w, endpoint, model)?;
    let Some(r) = d.rollout.as_mut() else {
        return Err(state_error(endpoint, "no rollout is in progress").into());
    };
    if r.paused == pause {
        let state = if pause { "paused" } else { "running" };
        return Err(state_error(endpoint, format!("the rollout is {state} already")).into());
    }
    r.paused = pause;
    if !pause {
        // What happened while paused does not count toward the step.
        r.step_started_ms = w.at_ms;
    }
    let before = d.versions();
    let kind = if pause {
        ChangeKind::Pause
    } else {
        ChangeKind::Resume
    };
    commit(w, d, before, kind, reason)
}

pub(super) fn rollback(
    w: &mut Write<'_, '_>,
    endpoint: &str,
    model: &str,
    reason: &str,
) -> AppResult<Applied> {
    let mut d = endpoint_of(w, endpoint, model)?;
    let before = d.versions();
    // During a rollout (or a split by hand) the stable version takes all traffic back; when it
    // holds all of it already, the version before it does.
    let settled =
        d.rollout.is_none() && d.split == Split::from([(d.stable, 100)]) && d.shadows.is_empty();
    if settled {
        let Some(previous) = d.previous else {
            return Err(state_error(
                endpoint,
                format!(
                    "{model}/{} holds all traffic and no version served before it: there is \
                 nothing to roll back to",
                    d.stable
                ),
            )
            .into());
        };
        d.make_stable(previous);
    }
    d.route_all_to_stable();
    commit(w, d, before, ChangeKind::Rollback, reason)
}

pub(super) fn report(
    w: &mut Write<'_, '_>,
    endpoint: &str,
    model: &str,
    agent: &str,
    generation: u64,
    stats: &[VersionStats],
) -> AppResult<Applied> {
    let d = endpoint_of(w, endpoint, model)?;
    if generation > d.generation {
        return Err(DomainError::invalid(
            "generation",
            format!(
                "endpoint {endpoint} is at generation {}, not {generation}",
                d.generation
            ),
        )
        .into());
    }
    let key = key2(endpoint, agent.as_bytes());
    let known = w.app.tables.serving_reports.get(w.wtxn, &key)?.is_some();
    if !known && w.app.serving_reports(w.wtxn, endpoint)?.len() as u64 >= AGENTS_PER_ENDPOINT_MAX {
        return Err(DomainError::invalid(
            "agent",
            format!(
                "endpoint {endpoint} keeps reports of {AGENTS_PER_ENDPOINT_MAX} agents, the limit"
            ),
        )
        .into());
    }
    let report = AgentReport {
        agent: agent.into(),
        generation,
        at_ms: w.at_ms,
        stats: stats.to_vec(),
    };
    w.app
        .tables
        .serving_reports
        .put(w.wtxn, &key, &encode(&report)?)?;
    let subject = format!("endpoint {endpoint}");
    // During a rollout, the step's reports together decide whether the target stays.
    let breach = match &d.rollout {
        Some(r) if generation == d.generation => {
            let all = w.app.serving_reports(w.wtxn, endpoint)?;
            let (requests, errors, p99) = deploy::aggregate(&all, d.generation, r.target);
            deploy::breach(r, requests, errors, p99).map(|why| {
                format!(
                    "automatic: {model}/{} at step {} of {} ({}): {why}",
                    r.target,
                    r.step + 1,
                    r.plan.len(),
                    r.plan[r.step]
                )
            })
        }
        _ => None,
    };
    match breach {
        Some(reason) => {
            let mut d = d;
            let before = d.versions();
            d.route_all_to_stable();
            let (d, subject) = write_change(w, d, before, ChangeKind::Rollback, &reason)?;
            Ok((Response::ServingReport(Box::new((d, true))), subject))
        }
        None => Ok((Response::ServingReport(Box::new((d, false))), subject)),
    }
}
