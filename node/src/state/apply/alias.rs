//! `SetAlias` and `DeleteAlias`: names that point at one existing version of a model.

use super::{Applied, Write};
use crate::command::Response;
use crate::domain::{limits, Alias, DomainError};
use crate::state::tables::{encode, key2};
use crate::state::AppResult;
use crate::watch::Change;

pub(super) fn set_alias(
    w: &mut Write<'_, '_>,
    model: &str,
    alias: &str,
    number: u64,
) -> AppResult<Applied> {
    w.app.get_version(w.wtxn, model, number)?;
    let aliases = &w.app.tables.aliases;
    let key = key2(model, alias.as_bytes());
    if aliases.get(w.wtxn, &key)?.is_none()
        && w.app.alias_count(w.wtxn, model)? >= limits::ALIASES_PER_MODEL_MAX
    {
        return Err(DomainError::invalid(
            "alias",
            format!(
                "model '{model}' already has {} aliases, the limit; delete one first",
                limits::ALIASES_PER_MODEL_MAX
            ),
        )
        .into());
    }
    let a = Alias {
        model: model.into(),
        alias: alias.into(),
        version: number,
        updated_by: w.actor.clone(),
        updated_at_ms: w.at_ms,
    };
    aliases.put(w.wtxn, &key, &encode(&a)?)?;
    w.changed(Change::AliasSet {
        model: model.into(),
        alias: alias.into(),
        number,
    });
    Ok((Response::Alias(a), format!("{model}@{alias}")))
}

pub(super) fn delete_alias(w: &mut Write<'_, '_>, model: &str, alias: &str) -> AppResult<Applied> {
    let a = w.app.get_alias(w.wtxn, model, alias)?;
    w.app
        .tables
        .aliases
        .delete(w.wtxn, &key2(model, alias.as_bytes()))?;
    w.changed(Change::AliasDeleted {
        model: model.into(),
        alias: alias.into(),
        number: a.version,
    });
    Ok((Response::Alias(a), format!("{model}@{alias}")))
}
