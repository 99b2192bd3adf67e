//! Model versions over Quiver's versions (see `registry` for the mapping).

use std::collections::BTreeMap;

use quiver_transfer::{FileEntry, Manifest};
use serde_json::{json, Value};

use super::filter::{Filter, Subject};
use super::order::{parse_offset, Order, SortRow};
use super::registry::*;
use super::{model_name, ApiError, Call};
use crate::access::Target;
use crate::auth::{reads_namespace, Role};
use crate::command::{Op, Response};
use crate::domain::{
    limits, Alias, DomainError, Signature, Stage, Version, VersionMetadata, VersionStatus,
    REGISTERED_VIA_MLFLOW, REGISTERED_VIA_TAG,
};
use crate::logged_model::LoggedModelStatus;
use crate::node::Consistency;
use crate::state::{AppResult, RegistryApp};

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
    let asked = call.fields.strings("order_by")?;
    let order = Order::versions(&asked)?;
    let token = decode_token(&call.fields.text("page_token")?)?;
    let offset = parse_offset(&token).transpose()?;
    // Key order pages by key; any other order sorts every match, and MLflow's default order
    // gives way to key order for a search too large to sort.
    let after = match (token.as_str(), offset) {
        ("", _) | (_, Some(_)) => None,
        (t, None) if order.is_key_order() || asked.is_empty() => Some(parse_version_token(t)?),
        _ => return Err(bad_token()),
    };
    if order.is_key_order() && offset.is_some() {
        return Err(bad_token());
    }
    let actor = match filter.exact_name() {
        Some(name) => {
            model_name("filter", name)?;
            call.reader_of(name).await?
        }
        None => call.actor().await?,
    };
    let sorted = !order.is_key_order() && after.is_none();
    let (mut found, mut next, by_key) = call
        .node
        .read(Consistency::Linearizable, move |app, txn| {
            let grants = app.grants_of(txn, &actor.name)?;
            let visible = |namespace: &str| reads_namespace(&actor, &grants, namespace);
            if sorted {
                let (all, rest) = scan_versions(app, txn, &filter, &visible, None, usize::MAX)?;
                if rest.is_empty() || !asked.is_empty() || offset.is_some() {
                    return Ok((all, rest, false));
                }
            }
            let (page, next) = scan_versions(app, txn, &filter, &visible, after, size)?;
            Ok((page, next, true))
        })
        .await?;
    if !by_key {
        if !next.is_empty() {
            return Err(too_many_to_sort());
        }
        found.sort_by(|(a, _), (b, _)| {
            order.compare(&SortRow::of_version(a), &SortRow::of_version(b))
        });
        next = page_of(&mut found, offset.unwrap_or(0), size);
    }
    let list: Vec<Value> = found.iter().map(|(v, a)| version_json(v, a)).collect();
    Ok(json!({"model_versions": list, "next_page_token": encode_token(&next)}))
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
