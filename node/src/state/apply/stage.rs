//! `SetStage`: moves a version to a stage. At most one version per model is in Production:
//! promoting another archives it in the same command. Entering Staging or Production needs the
//! gates of the model's policy to pass (`crate::governance`); the report is stored with the
//! transition, and a failing one is the rejection's text.

use super::catalog::Event;
use super::{Applied, Write};
use crate::command::Response;
use crate::domain::{
    stage_label, status_label, Actor, DomainError, Model, Stage, StageTransition, Version,
    VersionStatus,
};
use crate::governance::{waits_only_for_approvals, GateReport, SignatureOverride};
use crate::state::tables::{encode, version_key};
use crate::state::{AppResult, Decided};
use crate::watch::Change;

pub(super) fn set_stage(
    w: &mut Write<'_, '_>,
    model: &str,
    number: u64,
    stage: Stage,
    reason: &str,
    override_signature: bool,
) -> AppResult<Applied> {
    let m = w.app.get_model(w.wtxn, model)?;
    let v = w.app.get_version(w.wtxn, model, number)?;
    if v.stage == stage {
        return Err(DomainError::SameStage {
            model: model.into(),
            number,
            stage: stage_label(stage).into(),
        }
        .into());
    }
    if stage == Stage::Production && v.status != VersionStatus::Ready {
        return Err(DomainError::NotReady {
            model: model.into(),
            number,
            status: status_label(v.status).into(),
        }
        .into());
    }
    let report = match stage {
        Stage::Staging | Stage::Production => {
            let (_, policy) = w.app.applicable_policy(w.wtxn, &m)?;
            let open = w.app.open_review(w.wtxn, model, number)?;
            let signature_override = override_signature.then(|| SignatureOverride {
                principal: w.actor.name.clone(),
                reason: reason.to_string(),
            });
            let decided = match &open {
                Some(r) if r.stage == stage => Decided {
                    approvals: r.approvals.clone(),
                    signature_override: signature_override
                        .clone()
                        .or_else(|| r.signature_override.clone()),
                },
                _ => Decided {
                    approvals: Vec::new(),
                    signature_override: signature_override.clone(),
                },
            };
            let report = w
                .app
                .gate_report_with(w.wtxn, &m, &v, stage, &policy, &decided)?;
            if waits_only_for_approvals(&policy, &report) {
                return super::review::request(
                    w,
                    v,
                    stage,
                    reason,
                    report,
                    open,
                    signature_override,
                );
            }
            if !report.passed() {
                return Err(DomainError::GatesFailed {
                    model: model.into(),
                    number,
                    stage: stage_label(stage).into(),
                    report: report.to_string(),
                }
                .into());
            }
            // A policy without gates for this stage leaves no report behind.
            (!report.results.is_empty()).then_some(report)
        }
        Stage::Experimental | Stage::Archived => None,
    };
    let v = transition_to(
        w,
        m,
        v,
        Transition {
            stage,
            reason: reason.into(),
            report,
        },
    )?;
    Ok((Response::Version(Box::new(v)), format!("{model}/{number}")))
}

/// A stage change that was decided (checks and gates done).
pub(super) struct Transition {
    pub stage: Stage,
    pub reason: String,
    pub report: Option<GateReport>,
}

/// Writes version `v` of model `m` into `t.stage`, archiving the Production version it
/// replaces; returns the version as written.
pub(super) fn transition_to(
    w: &mut Write<'_, '_>,
    mut m: Model,
    mut v: Version,
    t: Transition,
) -> AppResult<Version> {
    let (model, number) = (m.name.clone(), v.number);
    let tables = &w.app.tables;
    // One Production version per model: the one it replaces is
    // archived in the same command, so `model:production` always
    // resolves to exactly one version.
    if t.stage == Stage::Production {
        if let Some(previous) = m.production_version.filter(|p| *p != number) {
            let mut old = w.app.get_version(w.wtxn, &model, previous)?;
            let from = old.stage;
            record(
                &mut old,
                Stage::Archived,
                w.actor,
                w.at_ms,
                format!("superseded by {model}/{number}"),
                None,
            );
            tables
                .versions
                .put(w.wtxn, &version_key(&model, previous), &encode(&old)?)?;
            super::catalog::update(w, &m, Event::Moved { from, v: &old })?;
            w.changed(Change::Stage {
                model: model.clone(),
                number: previous,
                from,
                to: Stage::Archived,
            });
        }
        m.production_version = Some(number);
    } else if m.production_version == Some(number) {
        m.production_version = None;
    }
    let from = v.stage;
    record(&mut v, t.stage, w.actor, w.at_ms, t.reason, t.report);
    // A review of this version is settled by its move, whichever way it came.
    super::review::settle(w, &v, t.stage)?;
    let tables = &w.app.tables;
    tables.models.put(w.wtxn, model.as_bytes(), &encode(&m)?)?;
    tables
        .versions
        .put(w.wtxn, &version_key(&model, number), &encode(&v)?)?;
    super::catalog::update(w, &m, Event::Moved { from, v: &v })?;
    w.changed(Change::Stage {
        model,
        number,
        from,
        to: t.stage,
    });
    Ok(v)
}

fn record(
    v: &mut Version,
    to: Stage,
    actor: &Actor,
    at_ms: i64,
    reason: String,
    gate_report: Option<GateReport>,
) {
    v.stage_history.push(StageTransition {
        from: Some(v.stage),
        to,
        actor: actor.clone(),
        at_ms,
        reason,
        gate_report,
    });
    v.stage = to;
}
