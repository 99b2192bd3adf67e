//! `AddLineageEdge`, `Quarantine`, `LiftQuarantine`, and the edges a registration records
//! (`CreateVersion` calls [`record_registration_edges`]). An edge naming a version needs the
//! version; an edge recorded already, a second quarantine of an entity and the lift of one not
//! quarantined are rejections, so a retry or a typo does not pass for a change.

use std::collections::BTreeMap;

use super::{Applied, Write};
use crate::command::Response;
use crate::domain::{DomainError, VersionMetadata};
use crate::lineage::{self, Edge, EdgeSource, Entity, Quarantine, QUARANTINES_MAX};
use crate::state::tables::{encode, lineage_key};
use crate::state::AppResult;

/// Writes `edge` into both indexes.
fn put_edge(w: &mut Write<'_, '_>, edge: &Edge) -> AppResult<()> {
    let value = encode(edge)?;
    let tables = &w.app.tables;
    tables
        .lineage_down
        .put(w.wtxn, &lineage_key(edge, false), &value)?;
    tables
        .lineage_up
        .put(w.wtxn, &lineage_key(edge, true), &value)?;
    Ok(())
}

/// Refuses an entity that names a version that does not exist.
fn require_version(w: &mut Write<'_, '_>, entity: &Entity) -> AppResult<()> {
    if let Some((model, number)) = entity.as_version() {
        w.app.get_version(w.wtxn, model, number)?;
    }
    Ok(())
}

/// The edges from each entity version `model`/`number`'s registration names to the version.
/// The fields were checked (`lineage::check_registration`, in `Op::check_fields`); the version
/// is new, so none of these edges exists yet.
pub(super) fn record_registration_edges(
    w: &mut Write<'_, '_>,
    model: &str,
    number: u64,
    metadata: &VersionMetadata,
    tags: &BTreeMap<String, String>,
) -> AppResult<()> {
    let version = Entity::version(model, number);
    for (_, from) in lineage::registration_sources(metadata, tags) {
        let edge = Edge {
            from,
            to: version.clone(),
            source: EdgeSource::Registration,
            by: w.actor.name.clone(),
            at_ms: w.at_ms,
        };
        put_edge(w, &edge)?;
    }
    Ok(())
}

/// The edge from version `model`/`number` to the deployment `endpoint` it now serves in,
/// unless recorded before.
pub(super) fn record_deployment_edge(
    w: &mut Write<'_, '_>,
    model: &str,
    number: u64,
    endpoint: &str,
) -> AppResult<()> {
    let from = Entity::version(model, number);
    let to = Entity::new(lineage::EntityKind::Deployment, endpoint);
    if w.app.lineage_edge(w.wtxn, &from, &to)?.is_some() {
        return Ok(());
    }
    let edge = Edge {
        from,
        to,
        source: EdgeSource::Deployment,
        by: w.actor.name.clone(),
        at_ms: w.at_ms,
    };
    put_edge(w, &edge)
}

pub(super) fn add_edge(w: &mut Write<'_, '_>, from: &Entity, to: &Entity) -> AppResult<Applied> {
    require_version(w, from)?;
    require_version(w, to)?;
    let edge = Edge {
        from: from.clone(),
        to: to.clone(),
        source: EdgeSource::Explicit,
        by: w.actor.name.clone(),
        at_ms: w.at_ms,
    };
    if let Some(existing) = w.app.lineage_edge(w.wtxn, from, to)? {
        return Err(DomainError::invalid(
            "to",
            format!(
                "the edge {from} -> {to} is recorded already ({}, by {})",
                existing.source.as_str(),
                existing.by
            ),
        )
        .into());
    }
    put_edge(w, &edge)?;
    Ok((
        Response::LineageEdge(Box::new(edge)),
        format!("lineage edge {from} -> {to}"),
    ))
}

pub(super) fn quarantine(
    w: &mut Write<'_, '_>,
    entity: &Entity,
    reason: &str,
) -> AppResult<Applied> {
    require_version(w, entity)?;
    if let Some(q) = w.app.quarantine_of(w.wtxn, entity)? {
        return Err(DomainError::invalid(
            "entity",
            format!(
                "{entity} is quarantined already (by {}: {}); lift it first to change the reason",
                q.by, q.reason
            ),
        )
        .into());
    }
    let count = w.app.tables.quarantines.len(w.wtxn)? as usize;
    if count >= QUARANTINES_MAX {
        return Err(DomainError::invalid(
            "entity",
            format!(
                "{count} quarantines are in force, the most there may be: lift those no longer \
                 needed (`quiver lineage quarantines` lists them)"
            ),
        )
        .into());
    }
    let q = Quarantine {
        entity: entity.clone(),
        reason: reason.to_string(),
        by: w.actor.name.clone(),
        at_ms: w.at_ms,
    };
    w.app
        .tables
        .quarantines
        .put(w.wtxn, &entity.key(), &encode(&q)?)?;
    Ok((
        Response::Quarantine(Box::new(q)),
        format!("quarantine {entity}"),
    ))
}

pub(super) fn lift_quarantine(
    w: &mut Write<'_, '_>,
    entity: &Entity,
    _reason: &str,
) -> AppResult<Applied> {
    let Some(q) = w.app.quarantine_of(w.wtxn, entity)? else {
        return Err(DomainError::invalid(
            "entity",
            format!(
                "{entity} is not quarantined (`quiver lineage quarantines` lists those that are)"
            ),
        )
        .into());
    };
    w.app.tables.quarantines.delete(w.wtxn, &entity.key())?;
    let subject = format!(
        "lift quarantine of {entity} (quarantined by {}: {})",
        q.by, q.reason
    );
    Ok((Response::Quarantine(Box::new(q)), subject))
}
