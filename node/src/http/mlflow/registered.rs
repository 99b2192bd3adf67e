//! Registered models over Quiver's models (see `registry` for the mapping).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::filter::{Filter, Subject};
use super::order::{parse_offset, Order, SortRow};
use super::registry::*;
use super::{model_name, ApiError, Call};
use crate::auth::reads_namespace;
use crate::command::{Op, Response};
use crate::domain::{
    limits, Alias, DomainError, Model, RiskTier, Stage, Version, VersionRef, VersionSelector,
};
use crate::node::Consistency;
use crate::state::{AppResult, RegistryApp};

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

pub async fn search_models(call: Call) -> Result<Value, ApiError> {
    let filter = Filter::parse(&call.fields.text("filter")?, false)?;
    let size = page_size(&call, 100, SEARCH_MODELS_PAGE_MAX)?;
    let order = Order::models(&call.fields.strings("order_by")?)?;
    let token = decode_token(&call.fields.text("page_token")?)?;
    let offset = parse_offset(&token).transpose()?;
    match (&order, offset) {
        (None, Some(_)) | (Some(_), None) if !token.is_empty() => return Err(bad_token()),
        (None, _) if !token.is_empty() => {
            crate::domain::validate_name("page_token", &token).map_err(|_| bad_token())?;
        }
        _ => {}
    }
    let actor = call.actor().await?;
    let sorted = order.is_some();
    let (mut found, next) = call
        .node
        .read(Consistency::Linearizable, move |app, txn| {
            let grants = app.grants_of(txn, &actor.name)?;
            let visible = |namespace: &str| reads_namespace(&actor, &grants, namespace);
            match sorted {
                false => scan_models(app, txn, &filter, &visible, token, size),
                true => scan_models(app, txn, &filter, &visible, String::new(), usize::MAX),
            }
        })
        .await?;
    let next = match order {
        None => next,
        Some(_) if !next.is_empty() => return Err(too_many_to_sort()),
        Some(order) => {
            found.sort_by(|(a, _), (b, _)| order.compare(&model_row(a), &model_row(b)));
            page_of(&mut found, offset.unwrap_or(0), size)
        }
    };
    let models: Vec<Value> = found.iter().map(|(m, a)| model_json(m, a)).collect();
    Ok(json!({"registered_models": models, "next_page_token": encode_token(&next)}))
}

/// A model's place in a sorted search (a model's last update is its creation).
fn model_row(m: &Model) -> SortRow<'_> {
    SortRow {
        name: &m.name,
        number: 0,
        created_ms: m.created_at_ms,
        updated_ms: m.created_at_ms,
    }
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
