//! Lineage rules, pure (issue 14): the entities a model version comes from and goes into, the
//! edges between them, quarantines, and the bounded graph walk that both queries (upstream of a
//! version, impact of an entity) and the promotion check use. The state stores edges and
//! quarantines (`state/apply/lineage.rs`, `state/query/lineage.rs`); nothing here does I/O.
//!
//! An entity is written `KIND:ID` everywhere (CLI, API, audit log):
//! - `data:47` a data snapshot, `code:abc123` a code commit, `run:r-9` a training run: the ids a
//!   version's registration metadata carries;
//! - `features:user-features@12` a feature set, name and version (a version's `feature_set`
//!   tag);
//! - `version:reco/14` a model version (canonical: the number without leading zeros);
//! - `deployment:NAME` a deployment, reserved for serving (accepted in edges already).
//!
//! An id is 1 to [`ENTITY_ID_BYTES_MAX`] bytes, not blank, without control characters; a
//! version's model is a model name and its number at least 1. Registration records an edge from
//! each of the version's data snapshot, code commit, run and feature set to the version.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::{limits, shown, validate_name, DomainError, VersionMetadata};
use crate::governance::GateResult;

/// Longest entity id (bytes): the longest id a version's metadata may carry.
pub const ENTITY_ID_BYTES_MAX: usize = limits::ID_BYTES_MAX;
/// Most entities one walk visits (the start included); a walk that stops here says so
/// (`truncated`). A promotion whose upstream walk is truncated is refused: it cannot be shown
/// that nothing upstream is quarantined.
pub const WALK_NODES_MAX: usize = 10_000;
/// Most edges one walk reports (every edge between visited entities, up to this many): with
/// ids at their longest, a walk's answer stays well inside one API message.
pub const WALK_EDGES_MAX: usize = 20_000;
/// Most quarantines in force at once.
pub const QUARANTINES_MAX: usize = 4096;
/// The tag that names a version's feature set (`name@version`).
pub const FEATURE_SET_TAG: &str = "feature_set";

/// What an entity is. New kinds go at the end (their names are stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    Data,
    Features,
    Code,
    Run,
    Version,
    /// Reserved for serving: an endpoint a version is deployed to.
    Deployment,
}

impl EntityKind {
    pub const ALL: [EntityKind; 6] = [
        EntityKind::Data,
        EntityKind::Features,
        EntityKind::Code,
        EntityKind::Run,
        EntityKind::Version,
        EntityKind::Deployment,
    ];

    /// The prefix before the `:` of an entity reference.
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Data => "data",
            EntityKind::Features => "features",
            EntityKind::Code => "code",
            EntityKind::Run => "run",
            EntityKind::Version => "version",
            EntityKind::Deployment => "deployment",
        }
    }
}

/// One node of the lineage graph. Stored as its kind and id; written `kind:id`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Entity {
    pub kind: EntityKind,
    pub id: String,
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.id)
    }
}

impl Entity {
    pub fn new(kind: EntityKind, id: impl Into<String>) -> Entity {
        Entity {
            kind,
            id: id.into(),
        }
    }

    /// Version `number` of `model`.
    pub fn version(model: &str, number: u64) -> Entity {
        Entity::new(EntityKind::Version, format!("{model}/{number}"))
    }

    /// Parses `kind:id`, canonicalizing a version's number; `field` names the input in errors.
    pub fn parse(field: &str, text: &str) -> Result<Entity, DomainError> {
        let kinds = || {
            EntityKind::ALL
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some((prefix, id)) = text.split_once(':') else {
            return Err(DomainError::invalid(
                field,
                format!(
                    "{} is not an entity: write KIND:ID with KIND one of {} (data:47, \
                     version:reco/14)",
                    shown(text),
                    kinds()
                ),
            ));
        };
        let Some(kind) = EntityKind::ALL.into_iter().find(|k| k.as_str() == prefix) else {
            return Err(DomainError::invalid(
                field,
                format!(
                    "{} is not an entity kind: use one of {}",
                    shown(prefix),
                    kinds()
                ),
            ));
        };
        let entity = match kind {
            EntityKind::Version => {
                let (model, number) = parse_version_id(field, id)?;
                Entity::version(model, number)
            }
            _ => Entity::new(kind, id),
        };
        entity.check(field)?;
        Ok(entity)
    }

    /// Checks the id's rules for its kind (no state needed).
    pub fn check(&self, field: &str) -> Result<(), DomainError> {
        let id = &self.id;
        let bad = |why: &str| {
            Err(DomainError::invalid(
                field,
                format!("{}:{} {why}", self.kind.as_str(), shown(id)),
            ))
        };
        if id.trim().is_empty() {
            return bad("has an empty id");
        }
        if id.len() > ENTITY_ID_BYTES_MAX {
            return bad(&format!(
                "has an id of {} bytes, over the limit of {ENTITY_ID_BYTES_MAX}",
                id.len()
            ));
        }
        if id.chars().any(char::is_control) {
            return bad("has control characters in its id");
        }
        match self.kind {
            EntityKind::Version => {
                let (model, number) = parse_version_id(field, id)?;
                if *id != format!("{model}/{number}") {
                    return bad("is not canonical: write version:MODEL/NUMBER");
                }
                Ok(())
            }
            EntityKind::Deployment => validate_name(field, id),
            _ => Ok(()),
        }
    }

    /// The model and number of a version entity.
    pub fn as_version(&self) -> Option<(&str, u64)> {
        if self.kind != EntityKind::Version {
            return None;
        }
        let (model, number) = self.id.rsplit_once('/')?;
        Some((model, number.parse().ok()?))
    }

    /// The model a version entity belongs to, even if its number is malformed.
    pub fn model(&self) -> Option<&str> {
        match self.kind {
            EntityKind::Version => Some(self.id.rsplit_once('/').map_or(&self.id[..], |(m, _)| m)),
            _ => None,
        }
    }

    /// The entity's storage key: its text, `kind:id` (no NUL: ids have no control characters).
    pub fn key(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

/// `MODEL/NUMBER` of a version entity: a model name and a number >= 1 of at most 20 digits.
fn parse_version_id<'a>(field: &str, id: &'a str) -> Result<(&'a str, u64), DomainError> {
    let invalid = || {
        DomainError::invalid(
            field,
            format!(
                "version:{} is not a version: write version:MODEL/NUMBER (version:reco/14)",
                shown(id)
            ),
        )
    };
    let (model, number) = id.rsplit_once('/').ok_or_else(invalid)?;
    validate_name(field, model)?;
    if number.is_empty() || number.len() > 20 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    match number.parse::<u64>() {
        Ok(n) if n >= 1 => Ok((model, n)),
        _ => Err(invalid()),
    }
}

/// How an edge came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeSource {
    /// From a version's registration metadata.
    Registration,
    /// Added by `quiver lineage add`.
    Explicit,
    /// A version began receiving an endpoint's traffic (`quiver deploy`).
    Deployment,
}

impl EdgeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeSource::Registration => "registration",
            EdgeSource::Explicit => "explicit",
            EdgeSource::Deployment => "deployment",
        }
    }
}

/// `from` went into `to` (data into a version, a version into a deployment).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub from: Entity,
    pub to: Entity,
    pub source: EdgeSource,
    pub by: String,
    pub at_ms: i64,
}

/// An entity taken out of use: nothing downstream of it may enter Staging or Production.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    pub entity: Entity,
    pub reason: String,
    pub by: String,
    pub at_ms: i64,
}

/// Checks an explicit edge's endpoints.
pub fn check_edge(from: &Entity, to: &Entity) -> Result<(), DomainError> {
    from.check("from")?;
    to.check("to")?;
    if from == to {
        return Err(DomainError::invalid(
            "to",
            format!("{to} is the edge's own start: an entity does not come from itself"),
        ));
    }
    Ok(())
}

/// Checks a quarantine's or a lift's reason: required, [`limits::REASON_BYTES_MAX`] at most.
pub fn check_reason(reason: &str) -> Result<(), DomainError> {
    crate::domain::validate_reason(reason)?;
    if reason.trim().is_empty() {
        return Err(DomainError::invalid(
            "reason",
            "is required: say why (it is kept in the audit log)",
        ));
    }
    Ok(())
}

/// The entities a version's registration names, each with the field it came from: its data
/// snapshot, code commit and run (the metadata), and its feature set (the `feature_set` tag).
pub fn registration_sources<'a>(
    metadata: &'a VersionMetadata,
    tags: &'a BTreeMap<String, String>,
) -> Vec<(&'static str, Entity)> {
    let mut out = Vec::with_capacity(4);
    for (field, kind, id) in [
        (
            "metadata.data_snapshot_id",
            EntityKind::Data,
            &metadata.data_snapshot_id,
        ),
        (
            "metadata.code_commit",
            EntityKind::Code,
            &metadata.code_commit,
        ),
        (
            "metadata.pipeline_run_id",
            EntityKind::Run,
            &metadata.pipeline_run_id,
        ),
    ] {
        if !id.is_empty() {
            out.push((field, Entity::new(kind, id.clone())));
        }
    }
    if let Some(features) = tags.get(FEATURE_SET_TAG).filter(|f| !f.is_empty()) {
        out.push((
            "tags.feature_set",
            Entity::new(EntityKind::Features, features.clone()),
        ));
    }
    out
}

/// Checks that every entity a registration names is a valid entity (no control characters; a
/// feature set of at most [`ENTITY_ID_BYTES_MAX`] bytes), naming the field.
pub fn check_registration(
    metadata: &VersionMetadata,
    tags: &BTreeMap<String, String>,
) -> Result<(), DomainError> {
    registration_sources(metadata, tags)
        .iter()
        .try_for_each(|(field, entity)| entity.check(field))
}

/// Which way a walk follows edges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Towards what an entity came from.
    Upstream,
    /// Towards what came from it (impact).
    Downstream,
}

/// What a walk found: every entity reached with its distance from the start (the start at 0),
/// in the order reached, and the edges between them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    pub nodes: Vec<(Entity, u32)>,
    pub edges: Vec<Edge>,
    /// The walk stopped at [`WALK_NODES_MAX`] entities or [`WALK_EDGES_MAX`] edges with more to
    /// go: the graph beyond is not in it.
    pub truncated: bool,
}

/// Breadth-first from `start`, following `edges_of` (an entity's edges in `direction`: those
/// leaving it downstream, those arriving upstream), visiting each entity once (the graph may
/// have cycles) and at most `nodes_max` of them.
pub fn walk<E>(
    start: &Entity,
    direction: Direction,
    nodes_max: usize,
    mut edges_of: impl FnMut(&Entity) -> Result<Vec<Edge>, E>,
) -> Result<Walk, E> {
    assert!(nodes_max >= 1, "a walk visits at least its start");
    let mut out = Walk::default();
    let mut seen = BTreeSet::from([start.clone()]);
    let mut queue = VecDeque::from([(start.clone(), 0u32)]);
    while let Some((entity, depth)) = queue.pop_front() {
        out.nodes.push((entity.clone(), depth));
        for edge in edges_of(&entity)? {
            let next = match direction {
                Direction::Downstream => &edge.to,
                Direction::Upstream => &edge.from,
            };
            if !seen.contains(next) {
                if seen.len() >= nodes_max {
                    out.truncated = true;
                    continue;
                }
                seen.insert(next.clone());
                queue.push_back((next.clone(), depth + 1));
            }
            if out.edges.len() < WALK_EDGES_MAX {
                out.edges.push(edge);
            } else {
                out.truncated = true;
            }
        }
    }
    debug_assert!(out.nodes.len() <= nodes_max);
    Ok(out)
}

/// The always-on lineage gate of Staging and Production: a failing result when something
/// upstream of the version is quarantined (or the walk could not show that nothing is), none
/// when all is clear, so that reports of policies without gates stay as they were.
pub fn quarantine_gate(found: &[Quarantine], walk_truncated: bool) -> Option<GateResult> {
    const GATE: &str = "lineage: nothing upstream quarantined";
    if let Some(first) = found.first() {
        let names: Vec<String> = found
            .iter()
            .map(|q| format!("{} (by {}: {})", q.entity, q.by, q.reason))
            .collect();
        return Some(GateResult {
            gate: GATE.into(),
            passed: false,
            detail: format!(
                "quarantined upstream: {}; lift it with `quiver lineage lift {} --reason …` or \
                 register a version not trained on it",
                names.join(", "),
                first.entity
            ),
        });
    }
    walk_truncated.then(|| GateResult {
        gate: GATE.into(),
        passed: false,
        detail: format!(
            "the version's upstream lineage has more than {WALK_NODES_MAX} entities, too many \
             to show that none is quarantined: register a version with a smaller lineage"
        ),
    })
}

#[cfg(test)]
mod tests;
