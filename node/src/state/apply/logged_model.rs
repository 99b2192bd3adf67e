//! `CreateLoggedModel`, `UpdateLoggedModel`, `PutLoggedModelFile`: MLflow's logged models
//! (`crate::logged_model`), kept in the `meta` table. Every field was checked by
//! `Op::check_fields`; what needs the state (the id taken or not, the status, the limits after
//! a merge) is checked here before anything is written.

use std::collections::BTreeMap;

use quiver_transfer::FileEntry;

use super::{apply_tag_changes, Applied, Write};
use crate::command::Response;
use crate::domain::DomainError;
use crate::logged_model::{validate_params, LoggedModel, LoggedModelStatus};
use crate::state::tables::{encode, logged_model_key};
use crate::state::AppResult;

pub(super) fn create(w: &mut Write<'_, '_>, model: LoggedModel) -> AppResult<Applied> {
    let key = logged_model_key(&model.id);
    if w.app.tables.meta.get(w.wtxn, &key)?.is_some() {
        return Err(DomainError::invalid(
            "model_id",
            format!("logged model {} already exists", model.id),
        )
        .into());
    }
    w.app.tables.meta.put(w.wtxn, &key, &encode(&model)?)?;
    let subject = format!("logged model {}", model.id);
    Ok((Response::LoggedModel(Box::new(model)), subject))
}

pub(super) fn update(
    w: &mut Write<'_, '_>,
    id: &str,
    status: Option<LoggedModelStatus>,
    set_params: &BTreeMap<String, String>,
    (set_tags, remove_tags): (&BTreeMap<String, String>, &[String]),
) -> AppResult<Applied> {
    let mut model = w.app.get_logged_model(w.wtxn, id)?;
    let mut params = model.params.clone();
    params.extend(set_params.iter().map(|(k, v)| (k.clone(), v.clone())));
    validate_params("params", &params)?;
    model.params = params;
    apply_tag_changes(&mut model.tags, set_tags, remove_tags)?;
    if let Some(status) = status {
        model.status = status;
    }
    model.updated_at_ms = w.at_ms;
    write(w, model)
}

pub(super) fn put_file(w: &mut Write<'_, '_>, id: &str, file: &FileEntry) -> AppResult<Applied> {
    let mut model = w.app.get_logged_model(w.wtxn, id)?;
    if model.status != LoggedModelStatus::Pending {
        return Err(DomainError::invalid(
            "path",
            format!(
                "logged model {id} is finalized ({:?}): its files no longer change; log a new \
                 model",
                model.status
            ),
        )
        .into());
    }
    model.put_file(file.clone())?;
    model.updated_at_ms = w.at_ms;
    write(w, model)
}

fn write(w: &mut Write<'_, '_>, model: LoggedModel) -> AppResult<Applied> {
    w.app
        .tables
        .meta
        .put(w.wtxn, &logged_model_key(&model.id), &encode(&model)?)?;
    let subject = format!("logged model {}", model.id);
    Ok((Response::LoggedModel(Box::new(model)), subject))
}
