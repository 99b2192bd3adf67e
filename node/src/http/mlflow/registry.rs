//! Registered models and model versions, as MLflow names them, over Quiver's models and
//! versions. Mapping:
//! - a registered model is a model in the `default` namespace (risk tier low); MLflow's
//!   `rename` is refused (a name is part of every version's identity and audit record) and
//!   `delete` archives every version: Quiver keeps versions immutable and audited, so the model
//!   and its versions stay readable.
//! - a model version is a version; its MLflow-only fields (source, model id, description, run
//!   link) are kept as tags under `quiver.mlflow.`, which replies do not list as tags. `delete`
//!   archives it. Stages map None ↔ Experimental, Staging, Production, Archived, and a
//!   transition goes through the governance gates: a refusal names every failed gate.
//! - a version registered from a logged model (`source: models:/m-…`) holds the logged model's
//!   files; one whose source is outside Quiver (`s3://…`) is a pointer version, tagged
//!   `quiver.pointer`, that holds no bytes. Lineage comes from `run_id` and the tags
//!   `mlflow.source.git.commit` and `quiver.data_snapshot_id`; a version without it is accepted
//!   and the required-metadata gate holds it back.
//!
//! This file holds the mapping's names, the replies and what `registered` (the registered-model
//! routes) and `versions` (the model-version routes) share.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{pairs_json, ApiError, Call};
use crate::command::{Op, Response};
use crate::domain::{limits, Actor, Alias, DomainError, Model, Stage, Version, VersionStatus};
use crate::node::Consistency;

/// The namespace registered models are created in.
pub const NAMESPACE: &str = "default";
/// Tags under this prefix hold MLflow fields Quiver has no field for; replies do not list them.
pub const HIDDEN_TAG_PREFIX: &str = "quiver.mlflow.";
pub const SOURCE_TAG: &str = "quiver.mlflow.source";
pub const MODEL_ID_TAG: &str = "quiver.mlflow.model_id";
pub const DESCRIPTION_TAG: &str = "quiver.mlflow.description";
pub const RUN_LINK_TAG: &str = "quiver.mlflow.run_link";
/// A pointer version's mark: its source is outside Quiver and it holds no bytes.
pub const POINTER_TAG: &str = "quiver.pointer";
/// MLflow's conventional tag for a run's code commit.
pub const GIT_COMMIT_TAG: &str = "mlflow.source.git.commit";
/// The tag naming a version's data snapshot (MLflow has no field for it).
pub const DATA_SNAPSHOT_TAG: &str = "quiver.data_snapshot_id";
/// Most results in one search page (MLflow refuses more than 1000 registered models a page).
pub const SEARCH_MODELS_PAGE_MAX: i64 = 1000;
/// MLflow's own ceiling on a model-version search's `max_results`; pages are cut at
/// `limits::PAGE_SIZE_MAX` all the same (the client follows `next_page_token`).
pub const SEARCH_VERSIONS_RESULTS_MAX: i64 = 200_000;
/// Rows a search reads before it answers with what it found and a token to go on.
pub const SEARCH_SCAN_ROWS_MAX: usize = 20_000;

// ----------------------------------------------------------------------- replies

pub fn mlflow_stage(stage: Stage) -> &'static str {
    match stage {
        Stage::Experimental => "None",
        Stage::Staging => "Staging",
        Stage::Production => "Production",
        Stage::Archived => "Archived",
    }
}

pub fn parse_stage(field: &str, text: &str) -> Result<Stage, ApiError> {
    match text.to_ascii_lowercase().as_str() {
        "none" | "experimental" => Ok(Stage::Experimental),
        "staging" => Ok(Stage::Staging),
        "production" => Ok(Stage::Production),
        "archived" => Ok(Stage::Archived),
        _ => Err(ApiError::invalid(
            field,
            format!(
                "{} is not a stage: use None, Staging, Production or Archived",
                crate::domain::shown(text)
            ),
        )),
    }
}

fn aliases_json(aliases: &[Alias]) -> Value {
    Value::Array(
        aliases
            .iter()
            .map(|a| json!({"alias": a.alias, "version": a.version.to_string()}))
            .collect(),
    )
}

pub fn model_json(m: &Model, aliases: &[Alias]) -> Value {
    json!({
        "name": m.name,
        "creation_timestamp": m.created_at_ms,
        "last_updated_timestamp": m.created_at_ms,
        "description": m.description,
        "user_id": m.created_by.name,
        "tags": pairs_json(&m.tags),
        "aliases": aliases_json(aliases),
    })
}

/// Where a version's bytes are: its source when it is a pointer, else through this node.
pub fn download_location(v: &Version) -> String {
    match (v.tags.get(POINTER_TAG), v.tags.get(SOURCE_TAG)) {
        (Some(_), Some(source)) => source.clone(),
        _ => format!("mlflow-artifacts:/registry/{}/{}", v.model, v.number),
    }
}

pub fn version_json(v: &Version, aliases: &[Alias]) -> Value {
    let tag = |key: &str| v.tags.get(key).cloned().unwrap_or_default();
    let visible: BTreeMap<String, String> = v
        .tags
        .iter()
        .filter(|(k, _)| !k.starts_with(HIDDEN_TAG_PREFIX))
        .map(|(k, val)| (k.clone(), val.clone()))
        .collect();
    let updated = super::order::updated_ms(v);
    let status = match v.status {
        VersionStatus::Ready => "READY",
        VersionStatus::Pending => "PENDING_REGISTRATION",
        VersionStatus::Failed => "FAILED_REGISTRATION",
    };
    let source = match v.tags.get(SOURCE_TAG) {
        Some(source) => source.clone(),
        None => download_location(v),
    };
    let names: Vec<&str> = aliases
        .iter()
        .filter(|a| a.version == v.number)
        .map(|a| a.alias.as_str())
        .collect();
    let mut reply = json!({
        "name": v.model,
        "version": v.number.to_string(),
        "creation_timestamp": v.created_at_ms,
        "last_updated_timestamp": updated,
        "current_stage": mlflow_stage(v.stage),
        "description": tag(DESCRIPTION_TAG),
        "user_id": v.created_by.name,
        "source": source,
        "run_id": v.metadata.pipeline_run_id,
        "run_link": tag(RUN_LINK_TAG),
        "status": status,
        "tags": pairs_json(&visible),
        "aliases": names,
        "model_id": tag(MODEL_ID_TAG),
    });
    // Optional fields MLflow leaves out when unset (its client reads "" as a value).
    if let Some(fields) = reply.as_object_mut() {
        fields.retain(|key, value| {
            !(matches!(
                key.as_str(),
                "description" | "run_id" | "run_link" | "model_id"
            ) && value.as_str() == Some(""))
        });
    }
    reply
}

/// A version with its model's aliases, read linearizably.
pub(super) async fn version_reply(
    call: &Call,
    model: &str,
    number: u64,
) -> Result<Value, ApiError> {
    let model = model.to_string();
    let (v, aliases) = call
        .node
        .read(Consistency::Linearizable, move |app, txn| {
            Ok((
                app.get_version(txn, &model, number)?,
                app.aliases_of_model(txn, &model)?,
            ))
        })
        .await?;
    Ok(version_json(&v, &aliases))
}

pub(super) async fn propose(call: &Call, actor: Actor, op: Op) -> Result<Response, ApiError> {
    Ok(call.node.propose(actor, op).await?)
}

pub(super) fn unexpected(applied: &Response) -> ApiError {
    ApiError::from(crate::error::NodeError::Storage(format!(
        "unexpected apply result {applied:?}"
    )))
}

/// `max_results`: refused when not positive or over `max`, cut to a page.
pub(super) fn page_size(call: &Call, default: i64, max: i64) -> Result<usize, ApiError> {
    let n = call.fields.int("max_results")?.unwrap_or(default);
    if n <= 0 || n > max {
        return Err(ApiError::invalid(
            "max_results",
            format!("{n} is out of range: ask for 1 to {max}"),
        ));
    }
    Ok((n as usize).min(limits::PAGE_SIZE_MAX))
}

pub(super) async fn archive(
    call: &Call,
    actor: &Actor,
    model: &str,
    number: u64,
    reason: &str,
) -> Result<(), ApiError> {
    let op = Op::SetStage {
        model: model.into(),
        number,
        stage: Stage::Archived,
        reason: reason.into(),
        override_signature: false,
    };
    match call.node.propose(actor.clone(), op).await {
        Ok(_) | Err(crate::error::NodeError::Rejected(DomainError::SameStage { .. })) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn bad_token() -> ApiError {
    ApiError::invalid(
        "page_token",
        "not a token this API issued: send the next_page_token of the previous page, or none",
    )
}

/// A sorted search whose filter matches more than a sort may hold.
pub(super) fn too_many_to_sort() -> ApiError {
    ApiError::invalid(
        "order_by",
        format!(
            "sorting needs every match at once, and this search reads more than \
             {SEARCH_SCAN_ROWS_MAX}: narrow the filter (e.g. name = '…') or leave order_by out \
             to page in name order"
        ),
    )
}

/// Keeps the page of sorted `rows` that starts at `offset`; the token of the next page, or ""
/// after the last.
pub(super) fn page_of<T>(rows: &mut Vec<T>, offset: usize, size: usize) -> String {
    let end = offset.saturating_add(size).min(rows.len());
    let next = if end < rows.len() {
        super::order::offset_token(end)
    } else {
        String::new()
    };
    rows.truncate(end);
    rows.drain(..offset.min(end));
    next
}

/// A page token as sent: where the search goes on, and a check of it (so that a token the API
/// did not issue is refused, not read as a place).
pub(super) fn encode_token(after: &str) -> String {
    if after.is_empty() {
        return String::new();
    }
    let check = blake3::hash(after.as_bytes()).to_hex();
    format!("{after}~{}", &check[..8])
}

pub(super) fn decode_token(token: &str) -> Result<String, ApiError> {
    if token.is_empty() {
        return Ok(String::new());
    }
    let (after, _check) = token.rsplit_once('~').ok_or_else(bad_token)?;
    if after.is_empty() || encode_token(after) != token {
        return Err(bad_token());
    }
    Ok(after.to_string())
}
