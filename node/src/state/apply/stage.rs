//! `SetStage`: moves a version to a stage. At most one version per model is in Production:
//! promoting another archives it in the same command.

use super::{Applied, Write};
use crate::command::Response;
use crate::domain::{
    stage_label, status_label, Actor, DomainError, Stage, StageTransition, Version, VersionStatus,
};
use crate::state::tables::{encode, version_key};
use crate::state::AppResult;

pub(super) fn set_stage(
    w: &mut Write<'_, '_>,
    model: &str,
    number: u64,
    stage: Stage,
    reason: &str,
) -> AppResult<Applied> {
    let mut m = w.app.get_model(w.wtxn, model)?;
    let mut v = w.app.get_version(w.wtxn, model, number)?;
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
    let tables = &w.app.tables;
    // One Production version per model: the one it replaces is
    // archived in the same command, so `model:production` always
    // resolves to exactly one version.
    if stage == Stage::Production {
        if let Some(previous) = m.production_version.filter(|p| *p != number) {
            let mut old = w.app.get_version(w.wtxn, model, previous)?;
            transition(
                &mut old,
                Stage::Archived,
                w.actor,
                w.at_ms,
                format!("superseded by {model}/{number}"),
            );
            tables
                .versions
                .put(w.wtxn, &version_key(model, previous), &encode(&old)?)?;
        }
        m.production_version = Some(number);
    } else if m.production_version == Some(number) {
        m.production_version = None;
    }
    transition(&mut v, stage, w.actor, w.at_ms, reason.into());
    tables.models.put(w.wtxn, model.as_bytes(), &encode(&m)?)?;
    tables
        .versions
        .put(w.wtxn, &version_key(model, number), &encode(&v)?)?;
    Ok((Response::Version(Box::new(v)), format!("{model}/{number}")))
}

fn transition(v: &mut Version, to: Stage, actor: &Actor, at_ms: i64, reason: String) {
    v.stage_history.push(StageTransition {
        from: Some(v.stage),
        to,
        actor: actor.clone(),
        at_ms,
        reason,
    });
    v.stage = to;
}
