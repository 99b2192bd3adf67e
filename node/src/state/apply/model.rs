//! `CreateModel` and `UpdateModel`.

use std::collections::BTreeMap;

use super::catalog::Event;
use super::{apply_tag_changes, Applied, Write};
use crate::command::Response;
use crate::domain::{DomainError, Model, RiskTier};
use crate::state::tables::encode;
use crate::state::AppResult;
use crate::watch::Change;

pub(super) fn create_model(
    w: &mut Write<'_, '_>,
    name: &str,
    namespace: &str,
    description: &str,
    risk_tier: RiskTier,
    tags: &BTreeMap<String, String>,
) -> AppResult<Applied> {
    let models = &w.app.tables.models;
    if models.get(w.wtxn, name.as_bytes())?.is_some() {
        return Err(DomainError::ModelExists { name: name.into() }.into());
    }
    let model = Model {
        name: name.into(),
        namespace: namespace.into(),
        description: description.into(),
        risk_tier,
        tags: tags.clone(),
        created_by: w.actor.clone(),
        created_at_ms: w.at_ms,
        version_count: 0,
        production_version: None,
    };
    models.put(w.wtxn, name.as_bytes(), &encode(&model)?)?;
    super::catalog::update(w, &model, Event::Described)?;
    w.changed(Change::Model { model: name.into() });
    Ok((Response::Model(Box::new(model)), name.into()))
}

pub(super) fn update_model(
    w: &mut Write<'_, '_>,
    name: &str,
    description: Option<&str>,
    set_tags: &BTreeMap<String, String>,
    remove_tags: &[String],
) -> AppResult<Applied> {
    let mut model = w.app.get_model(w.wtxn, name)?;
    if let Some(d) = description {
        model.description = d.into();
    }
    apply_tag_changes(&mut model.tags, set_tags, remove_tags)?;
    w.app
        .tables
        .models
        .put(w.wtxn, name.as_bytes(), &encode(&model)?)?;
    super::catalog::update(w, &model, Event::Described)?;
    w.changed(Change::Model { model: name.into() });
    Ok((Response::Model(Box::new(model)), name.into()))
}
