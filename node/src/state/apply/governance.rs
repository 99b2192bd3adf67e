//! `SetPolicy` and `RecordEvaluation`. A policy set on a model needs the model; clearing one
//! that is not set is a rejection, so a typo does not pass for a change. An evaluation record
//! never touches the version's registration; with auto-promotion on, an Experimental version
//! whose Staging gates pass after it enters Staging in the same command, with the report.

use super::stage::{transition_to, Transition};
use super::{Applied, Write};
use crate::command::Response;
use crate::domain::{DomainError, Stage};
use crate::governance::{Evaluation, Policy, PolicyScope, EVALUATIONS_PER_VERSION_MAX};
use crate::state::query::StoredPolicy;
use crate::state::tables::{encode, policy_key, version_key};
use crate::state::AppResult;
use std::collections::BTreeMap;

pub(super) fn set_policy(
    w: &mut Write<'_, '_>,
    scope: &PolicyScope,
    policy: Option<&Policy>,
) -> AppResult<Applied> {
    if let PolicyScope::Model(model) = scope {
        w.app.get_model(w.wtxn, model)?;
    }
    let key = policy_key(scope);
    let subject = scope_label(scope);
    let reviews = super::review::under_scope(w, scope)?;
    match policy {
        Some(policy) => {
            let row = StoredPolicy {
                scope: scope.clone(),
                policy: policy.clone(),
            };
            w.app.tables.policies.put(w.wtxn, &key, &encode(&row)?)?;
        }
        None => {
            if !w.app.tables.policies.delete(w.wtxn, &key)? {
                return Err(DomainError::invalid(
                    "scope",
                    format!("{subject} has no policy to clear"),
                )
                .into());
            }
        }
    }
    // Approvals given under the old policy do not carry over to the new one.
    super::review::void_changed(w, reviews)?;
    Ok((
        Response::Policy(Box::new((scope.clone(), policy.cloned()))),
        subject,
    ))
}

/// A scope as the audit log and messages name it.
pub(crate) fn scope_label(scope: &PolicyScope) -> String {
    scope.to_string()
}

pub(super) struct NewEvaluation<'a> {
    pub model: &'a str,
    pub number: u64,
    pub kind: &'a str,
    pub metrics: &'a BTreeMap<String, f64>,
    pub summary: &'a str,
}

pub(super) fn record_evaluation(
    w: &mut Write<'_, '_>,
    new: &NewEvaluation<'_>,
) -> AppResult<Applied> {
    let m = w.app.get_model(w.wtxn, new.model)?;
    let v = w.app.get_version(w.wtxn, new.model, new.number)?;
    let seq = w.app.evaluations(w.wtxn, new.model, new.number)?.len() as u64 + 1;
    if seq > EVALUATIONS_PER_VERSION_MAX {
        return Err(DomainError::invalid(
            "evaluation",
            format!(
                "{}/{} already holds {EVALUATIONS_PER_VERSION_MAX} evaluation records, the most \
                 a version may hold",
                new.model, new.number
            ),
        )
        .into());
    }
    let evaluation = Evaluation {
        seq,
        kind: new.kind.to_string(),
        metrics: new.metrics.clone(),
        summary: new.summary.to_string(),
        recorded_by: w.actor.name.clone(),
        at_ms: w.at_ms,
    };
    let mut key = version_key(new.model, new.number);
    key.extend_from_slice(&seq.to_be_bytes());
    w.app
        .tables
        .evaluations
        .put(w.wtxn, &key, &encode(&evaluation)?)?;
    let subject = format!(
        "{}/{} evaluation #{seq} ({})",
        new.model, new.number, new.kind
    );
    let (_, policy) = w.app.applicable_policy(w.wtxn, &m)?;
    if policy.auto_promote
        && v.stage == Stage::Experimental
        && v.status == crate::domain::VersionStatus::Ready
    {
        let report = w.app.gate_report(w.wtxn, &m, &v, Stage::Staging)?;
        if report.passed() {
            let reason = format!("auto-promoted: its Staging gates passed with evaluation #{seq}");
            let promoted = transition_to(
                w,
                m,
                v,
                Transition {
                    stage: Stage::Staging,
                    reason,
                    report: Some(report),
                },
            )?;
            return Ok((
                Response::Evaluation(Box::new((evaluation, promoted))),
                format!("{subject}, promoted to staging"),
            ));
        }
    }
    Ok((Response::Evaluation(Box::new((evaluation, v))), subject))
}
