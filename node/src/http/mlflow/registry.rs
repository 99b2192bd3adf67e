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

use std::collections::BTreeMap;

use quiver_transfer::{FileEntry, Manifest};
use serde_json::{json, Value};

use super::filter::{Filter, Subject};
use super::{model_name, pairs_json, ApiError, Call};
use crate::access::Target;
use crate::auth::{allows, Need, Role};
use crate::command::{Op, Response};
use crate::domain::{
    limits, Actor, Alias, DomainError, Model, RiskTier, Signature, Stage, Version, VersionMetadata,
    VersionRef, VersionSelector, VersionStatus, REGISTERED_VIA_MLFLOW, REGISTERED_VIA_TAG,
};
use crate::logged_model::LoggedModelStatus;
use crate::node::Consistency;
use crate::state::{AppResult, RegistryApp};

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
    let updated = v
        .stage_history
        .iter()
        .map(|t| t.at_ms)
        .max()
        .unwrap_or(v.created_at_ms)
        .max(v.created_at_ms);
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
async fn version_reply(call: &Call, model: &str, number: u64) -> Result<Value, ApiError> {
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

async fn propose(call: &Call, actor: Actor, op: Op) -> Result<Response, ApiError> {
    Ok(call.node.propose(actor, op).await?)
}

fn unexpected(applied: &Response) -> ApiError {
    ApiError::from(crate::error::NodeError::Storage(format!(
        "unexpected apply result {applied:?}"
    )))
}

/// `max_results`: refused when not positive or over `max`, cut to a page.
fn page_size(call: &Call, default: i64, max: i64) -> Result<usize, ApiError> {
    let n = call.fields.int("max_results")?.unwrap_or(default);
    if n <= 0 || n > max {
        return Err(ApiError::invalid(
            "max_results",
            format!("{n} is out of range: ask for 1 to {max}"),
        ));
    }
    Ok((n as usize).min(limits::PAGE_SIZE_MAX))
}

// ----------------------------------------------------------------------- registered models

pub async fn create_model(call: Call) -> Result<Value, ApiError> {
    let name = call.fields.required("name")?;
    model_name("name", &name)?;
    let tags = call.fields.pairs("tags")?;
    let description = call.fields.text("description")?;
    let actor = call.actor().await?;
    let op = Op::CreateModel {
        name,
        namespace: NAMESPACE.into(),
        description,
        risk_tier: RiskTier::Low,
        tags,
    };
    match propose(&call, actor, op).await? {
        Response::Model(m) => Ok(json!({"registered_model": model_json(&m, &[])})),
        other => Err(unexpected(&other)),
    }
}

async fn model_reply(call: &Call, name: String) -> Result<Value, ApiError> {
    let (m, aliases, latest) = call
        .node
        .read(Consistency::Linearizable, move |app, txn| {
            Ok((
                app.get_model(txn, &name)?,
                app.aliases_of_model(txn, &name)?,
                latest_in(app, txn, &name, &ALL_STAGES)?,
            ))
        })
        .await?;
    let mut reply = model_json(&m, &aliases);
    reply["latest_versions"] = latest.iter().map(|v| version_json(v, &aliases)).collect();
    Ok(json!({"registered_model": reply}))
}

pub async fn get_model(call: Call) -> Result<Value, ApiError> {
    let name = call.fields.required("name")?;
    model_name("name", &name)?;
    call.reader_of(&name).await?;
    model_reply(&call, name).await
}

pub async fn rename_model(call: Call) -> Result<Value, ApiError> {
    let name = call.fields.required("name")?;
    model_name("name", &name)?;
    let new_name = call.fields.required("new_name")?;
    call.reader_of(&name).await?;
    let shown = name.clone();
    call.node
        .read(Consistency::Linearizable, move |app, txn| {
            app.get_model(txn, &shown)
        })
        .await?;
    Err(ApiError::invalid(
        "new_name",
        format!(
            "Quiver cannot rename registered model '{name}' to {}: a model's name is part of \
             every version's identity and audit record. Create the new model and register the \
             versions under it",
            crate::domain::shown(&new_name)
        ),
    ))
}

pub async fn update_model(call: Call) -> Result<Value, ApiError> {
    let name = call.fields.required("name")?;
    model_name("name", &name)?;
    let description = call.fields.string("description")?;
    let actor = call.actor().await?;
    let op = Op::UpdateModel {
        name,
        description,
        set_tags: BTreeMap::new(),
        remove_tags: Vec::new(),
    };
    match propose(&call, actor, op).await? {
        Response::Model(m) => Ok(json!({"registered_model": model_json(&m, &[])})),
        other => Err(unexpected(&other)),
    }
}

/// MLflow's delete: every version of the model that is not archived is archived (Quiver keeps
/// models and versions, immutable and audited; they stay readable, in stage Archived).
pub async fn delete_model(call: Call) -> Result<Value, ApiError> {
    let name = call.fields.required("name")?;
    model_name("name", &name)?;
    let actor = call.actor().await?;
    let model = name.clone();
    let mut token = String::new();
    loop {
        let (model, after) = (model.clone(), token.clone());
        let (versions, next) = call
            .node
            .read(Consistency::Linearizable, move |app, txn| {
                app.list_versions(txn, &model, None, "", limits::PAGE_SIZE_MAX, &after)
            })
            .await?;
        for v in versions.iter().filter(|v| v.stage != Stage::Archived) {
            archive(
                &call,
                &actor,
                &v.model,
                v.number,
                "deleted through the MLflow API",
            )
            .await?;
        }
        if next.is_empty() {
            break;
        }
        token = next;
    }
    Ok(json!({}))
}

async fn archive(
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

pub async fn search_models(call: Call) -> Result<Value, ApiError> {
    let filter = Filter::parse(&call.fields.text("filter")?, false)?;
    let size = page_size(&call, 100, SEARCH_MODELS_PAGE_MAX)?;
    call.fields.strings("order_by")?;
    let token = decode_token(&call.fields.text("page_token")?)?;
    if !token.is_empty() {
        crate::domain::validate_name("page_token", &token).map_err(|_| bad_token())?;
    }
    let actor = call.actor().await?;
    let (found, next) = call
        .node
        .read(Consistency::Linearizable, move |app, txn| {
            let grants = app.grants_of(txn, &actor.name)?;
            let visible = |namespace: &str| {
                !actor.authenticated || allows(&grants, &Need::namespace(Role::Reader, namespace))
            };
            scan_models(app, txn, &filter, &visible, token, size)
        })
        .await?;
    let models: Vec<Value> = found.iter().map(|(m, a)| model_json(m, a)).collect();
    Ok(json!({"registered_models": models, "next_page_token": encode_token(&next)}))
}

type ModelsPage = (Vec<(Model, Vec<Alias>)>, String);

/// Models after `after` in name order that `filter` matches and the caller may read, at most
/// `size`, reading at most [`SEARCH_SCAN_ROWS_MAX`] models; the token goes on after the last
/// model read.
fn scan_models(
    app: &RegistryApp,
    txn: &heed::RoTxn<'_>,
    filter: &Filter,
    visible: &dyn Fn(&str) -> bool,
    mut after: String,
    size: usize,
) -> AppResult<ModelsPage> {
    let Some(prefix) = filter.name_prefix() else {
        return Ok((Vec::new(), String::new()));
    };
    let mut out = Vec::new();
    let mut read = 0;
    loop {
        let (models, next) = app.list_models(txn, prefix, "", limits::PAGE_SIZE_MAX, &after)?;
        for m in models {
            read += 1;
            after = m.name.clone();
            let run_id = "";
            let subject = Subject {
                name: &m.name,
                run_id,
                tags: &m.tags,
            };
            if visible(&m.namespace) && filter.matches(&subject) {
                let aliases = app.aliases_of_model(txn, &m.name)?;
                out.push((m, aliases));
                if out.len() == size {
                    return Ok((out, after));
                }
            }
            if read >= SEARCH_SCAN_ROWS_MAX {
                return Ok((out, after));
            }
        }
        if next.is_empty() {
            return Ok((out, String::new()));
        }
    }
}

pub async fn latest_versions(call: Call) -> Result<Value, ApiError> {
    let name = call.fields.required("name")?;
    model_name("name", &name)?;
    let stages = match call.fields.strings("stages")? {
        s if s.is_empty() => ALL_STAGES.to_vec(),
        s => s
            .iter()
            .map(|t| parse_stage("stages", t))
            .collect::<Result<_, _>>()?,
    };
    call.reader_of(&name).await?;
    let (versions, aliases) = call
        .node
        .read(Consistency::Linearizable, move |app, txn| {
            Ok((
                latest_in(app, txn, &name, &stages)?,
                app.aliases_of_model(txn, &name)?,
            ))
        })
        .await?;
    let list: Vec<Value> = versions.iter().map(|v| version_json(v, &aliases)).collect();
    Ok(json!({"model_versions": list}))
}

/// The newest version in each of `stages` (MLflow's "latest versions").
fn latest_in(
    app: &RegistryApp,
    txn: &heed::RoTxn<'_>,
    model: &str,
    stages: &[Stage],
) -> AppResult<Vec<Version>> {
    let mut out: Vec<Version> = Vec::new();
    for stage in stages {
        let reference = VersionRef {
            model: model.to_string(),
            selector: VersionSelector::Stage(*stage),
        };
        match app.resolve(txn, &reference) {
            Ok(v) if !out.iter().any(|o| o.number == v.number) => out.push(v),
            Ok(_) => {}
            Err(crate::state::AppError::Domain(DomainError::StageEmpty { .. })) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

const ALL_STAGES: [Stage; 4] = [
    Stage::Experimental,
    Stage::Staging,
    Stage::Production,
    Stage::Archived,
];

async fn update_model_tags(
    call: &Call,
    name: String,
    set_tags: BTreeMap<String, String>,
    remove_tags: Vec<String>,
) -> Result<Value, ApiError> {
    let actor = call.actor().await?;
    let op = Op::UpdateModel {
        name,
        description: None,
        set_tags,
        remove_tags,
    };
    propose(call, actor, op).await?;
    Ok(json!({}))
}

pub async fn set_model_tag(call: Call) -> Result<Value, ApiError> {
    let name = call.fields.required("name")?;
    model_name("name", &name)?;
    let key = call.fields.required("key")?;
    let value = call.fields.text("value")?;
    update_model_tags(&call, name, [(key, value)].into(), Vec::new()).await
}

pub async fn delete_model_tag(call: Call) -> Result<Value, ApiError> {
    let name = call.fields.required("name")?;
    model_name("name", &name)?;
    let key = call.fields.required("key")?;
    update_model_tags(&call, name, BTreeMap::new(), vec![key]).await
}

pub async fn set_alias(call: Call) -> Result<Value, ApiError> {
    let name = call.fields.required("name")?;
    model_name("name", &name)?;
    let alias = call.fields.required("alias")?;
    let number = call.fields.version("version")?;
    let actor = call.actor().await?;
    let op = Op::SetAlias {
        model: name,
        alias,
        number,
    };
    propose(&call, actor, op).await?;
    Ok(json!({}))
}

pub async fn get_alias(call: Call) -> Result<Value, ApiError> {
    let name = call.fields.required("name")?;
    model_name("name", &name)?;
    let alias = call.fields.required("alias")?;
    crate::domain::validate_name("alias", &alias)?;
    call.reader_of(&name).await?;
    let (v, aliases) = call
        .node
        .read(Consistency::Linearizable, move |app, txn| {
            let a = app.get_alias(txn, &name, &alias)?;
            Ok((
                app.get_version(txn, &name, a.version)?,
                app.aliases_of_model(txn, &name)?,
            ))
        })
        .await?;
    Ok(json!({"model_version": version_json(&v, &aliases)}))
}

pub async fn delete_alias(call: Call) -> Result<Value, ApiError> {
    let name = call.fields.required("name")?;
    model_name("name", &name)?;
    let alias = call.fields.required("alias")?;
    let actor = call.actor().await?;
    propose(&call, actor, Op::DeleteAlias { model: name, alias }).await?;
    Ok(json!({}))
}

// ----------------------------------------------------------------------- model versions

/// What a version's `source` names.
enum Source {
    /// A logged model of this registry: the version holds its files.
    Logged(String),
    /// Anywhere else: a pointer version holding no bytes.
    Outside,
}

/// `models:/m-…` or `mlflow-artifacts:/0/models/m-…/artifacts` name a logged model; an
/// explicit `model_id` decides when both are given.
fn source_of(source: &str, model_id: &str) -> Result<Source, ApiError> {
    if !model_id.is_empty() {
        crate::logged_model::validate_id("model_id", model_id)?;
        return Ok(Source::Logged(model_id.to_string()));
    }
    let logged = source
        .strip_prefix("models:/")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|rest| rest.starts_with("m-"))
        .or_else(|| {
            source
                .strip_prefix("mlflow-artifacts:/0/models/")
                .map(|rest| rest.split('/').next().unwrap_or(""))
        });
    match logged {
        Some(id) => {
            crate::logged_model::validate_id("source", id)?;
            Ok(Source::Logged(id.to_string()))
        }
        None if source.contains(':') => Ok(Source::Outside),
        None => Err(ApiError::invalid(
            "source",
            format!(
                "{} is not a location: register a logged model (models:/m-…) or a URI such as \
                 s3://bucket/path",
                crate::domain::shown(source)
            ),
        )),
    }
}

pub async fn create_version(call: Call) -> Result<Value, ApiError> {
    let name = call.fields.required("name")?;
    model_name("name", &name)?;
    let source = call.fields.required("source")?;
    let run_id = call.fields.text("run_id")?;
    let mut tags = call.fields.pairs("tags")?;
    if let Some(hidden) = tags.keys().find(|k| k.starts_with(HIDDEN_TAG_PREFIX)) {
        return Err(ApiError::invalid(
            "tags",
            format!("{hidden:?}: keys under {HIDDEN_TAG_PREFIX} are Quiver's own"),
        ));
    }
    let run_link = call.fields.text("run_link")?;
    let description = call.fields.text("description")?;
    let model_id = call.fields.text("model_id")?;
    let kind = source_of(&source, &model_id)?;
    let action = format!("register a version of model {name}");
    let actor = call
        .authorize(Role::Registrant, Target::Model(&name), &action)
        .await?;
    let mut metadata = VersionMetadata {
        pipeline_run_id: run_id,
        code_commit: tags.get(GIT_COMMIT_TAG).cloned().unwrap_or_default(),
        data_snapshot_id: tags.get(DATA_SNAPSHOT_TAG).cloned().unwrap_or_default(),
        ..VersionMetadata::default()
    };
    let manifest = match &kind {
        Source::Logged(id) => {
            let id = id.clone();
            let logged = call
                .node
                .read(Consistency::Linearizable, move |app, txn| {
                    app.get_logged_model(txn, &id)
                })
                .await?;
            if logged.status == LoggedModelStatus::UploadFailed {
                return Err(ApiError::invalid(
                    "source",
                    format!(
                        "logged model {} failed its upload: log the model again",
                        logged.id
                    ),
                ));
            }
            if metadata.pipeline_run_id.is_empty() {
                metadata.pipeline_run_id = logged.source_run_id.clone();
            }
            metadata.hyperparameters = logged.params.clone();
            tags.insert(MODEL_ID_TAG.into(), logged.id.clone());
            Manifest {
                files: logged.files,
            }
        }
        Source::Outside => {
            tags.insert(POINTER_TAG.into(), "true".into());
            // One empty file named by a fresh nonce: the version holds no bytes, and two
            // pointers to the same place are two versions, as in MLflow.
            Manifest {
                files: vec![FileEntry {
                    path: format!("quiver-pointer-{:032x}", rand::random::<u128>()),
                    size_bytes: 0,
                    mode: 0o644,
                    chunks: Vec::new(),
                }],
            }
        }
    };
    tags.insert(SOURCE_TAG.into(), source);
    tags.insert(REGISTERED_VIA_TAG.into(), REGISTERED_VIA_MLFLOW.into());
    for (key, value) in [(RUN_LINK_TAG, run_link), (DESCRIPTION_TAG, description)] {
        if !value.is_empty() {
            tags.insert(key.into(), value);
        }
    }
    let manifest_root = manifest.root().to_hex();
    let op = Op::CreateVersion {
        model: name,
        manifest,
        manifest_root,
        signature: Signature::default(),
        metadata,
        tags,
        status: VersionStatus::Ready,
        inline_chunks: Vec::new(),
    };
    match propose(&call, actor, op).await? {
        Response::Version(v) => Ok(json!({"model_version": version_json(&v, &[])})),
        other => Err(unexpected(&other)),
    }
}

fn name_and_version(call: &Call) -> Result<(String, u64), ApiError> {
    let name = call.fields.required("name")?;
    model_name("name", &name)?;
    Ok((name, call.fields.version("version")?))
}

pub async fn get_version(call: Call) -> Result<Value, ApiError> {
    let (name, number) = name_and_version(&call)?;
    call.reader_of(&name).await?;
    Ok(json!({"model_version": version_reply(&call, &name, number).await?}))
}

async fn set_version_tags(
    call: &Call,
    (name, number): (String, u64),
    set_tags: BTreeMap<String, String>,
    remove_tags: Vec<String>,
) -> Result<Version, ApiError> {
    for key in set_tags.keys().chain(&remove_tags) {
        if key.starts_with(HIDDEN_TAG_PREFIX) && key != DESCRIPTION_TAG {
            return Err(ApiError::invalid(
                "key",
                format!("{key:?}: keys under {HIDDEN_TAG_PREFIX} are Quiver's own"),
            ));
        }
    }
    let actor = call.actor().await?;
    let op = Op::SetVersionTags {
        model: name,
        number,
        set_tags,
        remove_tags,
    };
    match propose(call, actor, op).await? {
        Response::Version(v) => Ok(*v),
        other => Err(unexpected(&other)),
    }
}

pub async fn update_version(call: Call) -> Result<Value, ApiError> {
    let target = name_and_version(&call)?;
    let description = call.fields.text("description")?;
    let v = set_version_tags(
        &call,
        target,
        [(DESCRIPTION_TAG.to_string(), description)].into(),
        Vec::new(),
    )
    .await?;
    Ok(json!({"model_version": version_reply(&call, &v.model, v.number).await?}))
}

pub async fn set_version_tag(call: Call) -> Result<Value, ApiError> {
    let target = name_and_version(&call)?;
    let key = call.fields.required("key")?;
    let value = call.fields.text("value")?;
    set_version_tags(&call, target, [(key, value)].into(), Vec::new()).await?;
    Ok(json!({}))
}

pub async fn delete_version_tag(call: Call) -> Result<Value, ApiError> {
    let target = name_and_version(&call)?;
    let key = call.fields.required("key")?;
    set_version_tags(&call, target, BTreeMap::new(), vec![key]).await?;
    Ok(json!({}))
}

/// MLflow's delete of a version: it is archived (versions are immutable and audited).
pub async fn delete_version(call: Call) -> Result<Value, ApiError> {
    let (name, number) = name_and_version(&call)?;
    let actor = call.actor().await?;
    archive(
        &call,
        &actor,
        &name,
        number,
        "deleted through the MLflow API",
    )
    .await?;
    Ok(json!({}))
}

pub async fn transition_stage(call: Call) -> Result<Value, ApiError> {
    let (name, number) = name_and_version(&call)?;
    let stage = parse_stage("stage", &call.fields.required("stage")?)?;
    let archive_existing = call.fields.flag("archive_existing_versions")?;
    let actor = call.actor().await?;
    let op = Op::SetStage {
        model: name.clone(),
        number,
        stage,
        reason: "transition-stage through the MLflow API".into(),
        override_signature: false,
    };
    call.node
        .propose(actor.clone(), op)
        .await
        .inspect_err(|e| {
            if let crate::error::NodeError::Rejected(DomainError::GatesFailed { stage, .. }) = e {
                call.node.metrics.gate_failure(stage);
            }
        })?;
    if archive_existing && matches!(stage, Stage::Staging | Stage::Production) {
        let model = name.clone();
        let (others, _) = call
            .node
            .read(Consistency::Linearizable, move |app, txn| {
                app.list_versions(txn, &model, Some(stage), "", limits::PAGE_SIZE_MAX, "")
            })
            .await?;
        for v in others.iter().filter(|v| v.number != number) {
            archive(&call, &actor, &name, v.number, "archive_existing_versions").await?;
        }
    }
    Ok(json!({"model_version": version_reply(&call, &name, number).await?}))
}

pub async fn download_uri(call: Call) -> Result<Value, ApiError> {
    let (name, number) = name_and_version(&call)?;
    call.reader_of(&name).await?;
    let v = call
        .node
        .read(Consistency::Linearizable, move |app, txn| {
            app.get_version(txn, &name, number)
        })
        .await?;
    Ok(json!({"artifact_uri": download_location(&v)}))
}

pub async fn search_versions(call: Call) -> Result<Value, ApiError> {
    let filter = Filter::parse(&call.fields.text("filter")?, true)?;
    let size = page_size(&call, 10_000, SEARCH_VERSIONS_RESULTS_MAX)?;
    call.fields.strings("order_by")?;
    let token = decode_token(&call.fields.text("page_token")?)?;
    let after = match token.as_str() {
        "" => None,
        t => Some(parse_version_token(t)?),
    };
    let actor = match filter.exact_name() {
        Some(name) => {
            model_name("filter", name)?;
            call.reader_of(name).await?
        }
        None => call.actor().await?,
    };
    let (found, next) = call
        .node
        .read(Consistency::Linearizable, move |app, txn| {
            let grants = app.grants_of(txn, &actor.name)?;
            let visible = |namespace: &str| {
                !actor.authenticated || allows(&grants, &Need::namespace(Role::Reader, namespace))
            };
            scan_versions(app, txn, &filter, &visible, after, size)
        })
        .await?;
    let list: Vec<Value> = found.iter().map(|(v, a)| version_json(v, a)).collect();
    Ok(json!({"model_versions": list, "next_page_token": encode_token(&next)}))
}

fn bad_token() -> ApiError {
    ApiError::invalid(
        "page_token",
        "not a token this API issued: send the next_page_token of the previous page, or none",
    )
}

/// A page token as sent: where the search goes on, and a check of it (so that a token the API
/// did not issue is refused, not read as a place).
fn encode_token(after: &str) -> String {
    if after.is_empty() {
        return String::new();
    }
    let check = blake3::hash(after.as_bytes()).to_hex();
    format!("{after}~{}", &check[..8])
}

fn decode_token(token: &str) -> Result<String, ApiError> {
    if token.is_empty() {
        return Ok(String::new());
    }
    let (after, _check) = token.rsplit_once('~').ok_or_else(bad_token)?;
    if after.is_empty() || encode_token(after) != token {
        return Err(bad_token());
    }
    Ok(after.to_string())
}

/// A version search's token: `model/number`, the last version read.
fn parse_version_token(token: &str) -> Result<(String, u64), ApiError> {
    let bad = bad_token;
    let (model, number) = token.rsplit_once('/').ok_or_else(bad)?;
    crate::domain::validate_name("page_token", model).map_err(|_| bad())?;
    let number = number.parse::<u64>().map_err(|_| bad())?;
    Ok((model.to_string(), number))
}

type VersionsPage = (Vec<(Version, Vec<Alias>)>, String);

/// Versions after `after` in (model, number) order that `filter` matches and the caller may
/// read, at most `size`, reading at most [`SEARCH_SCAN_ROWS_MAX`] versions.
fn scan_versions(
    app: &RegistryApp,
    txn: &heed::RoTxn<'_>,
    filter: &Filter,
    visible: &dyn Fn(&str) -> bool,
    after: Option<(String, u64)>,
    size: usize,
) -> AppResult<VersionsPage> {
    let mut scan = VersionScan {
        out: Vec::new(),
        read: 0,
        size,
    };
    let mut model_after = String::new();
    if let Some((model, number)) = after {
        if let Some(token) = scan.model(app, txn, filter, visible, &model, number)? {
            return Ok((scan.out, token));
        }
        model_after = model;
    }
    if let Some(name) = filter.exact_name() {
        if model_after.is_empty() {
            if let Some(token) = scan.model(app, txn, filter, visible, name, 0)? {
                return Ok((scan.out, token));
            }
        }
        return Ok((scan.out, String::new()));
    }
    let Some(prefix) = filter.name_prefix() else {
        return Ok((scan.out, String::new()));
    };
    loop {
        let (models, next) =
            app.list_models(txn, prefix, "", limits::PAGE_SIZE_MAX, &model_after)?;
        for m in models {
            if let Some(token) = scan.model(app, txn, filter, visible, &m.name, 0)? {
                return Ok((scan.out, token));
            }
            model_after = m.name;
        }
        if next.is_empty() {
            return Ok((scan.out, String::new()));
        }
    }
}

struct VersionScan {
    out: Vec<(Version, Vec<Alias>)>,
    read: usize,
    size: usize,
}

impl VersionScan {
    /// Scans `model`'s versions after `after`; a token when the page is full or the scan's
    /// budget spent.
    fn model(
        &mut self,
        app: &RegistryApp,
        txn: &heed::RoTxn<'_>,
        filter: &Filter,
        visible: &dyn Fn(&str) -> bool,
        model: &str,
        after: u64,
    ) -> AppResult<Option<String>> {
        let m = match app.get_model(txn, model) {
            Ok(m) => m,
            Err(crate::state::AppError::Domain(DomainError::ModelNotFound { .. })) => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        if !visible(&m.namespace) {
            return Ok(None);
        }
        let aliases = app.aliases_of_model(txn, model)?;
        let mut token = if after == 0 {
            String::new()
        } else {
            after.to_string()
        };
        loop {
            let (versions, next) =
                app.list_versions(txn, model, None, "", limits::PAGE_SIZE_MAX, &token)?;
            for v in versions {
                self.read += 1;
                token = v.number.to_string();
                let subject = Subject {
                    name: &v.model,
                    run_id: &v.metadata.pipeline_run_id,
                    tags: &v.tags,
                };
                if filter.matches(&subject) {
                    self.out.push((v, aliases.clone()));
                }
                if self.out.len() == self.size || self.read >= SEARCH_SCAN_ROWS_MAX {
                    return Ok(Some(format!("{model}/{token}")));
                }
            }
            if next.is_empty() {
                return Ok(None);
            }
        }
    }
}
