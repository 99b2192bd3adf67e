//! Reads of lineage: an entity's edges, the bounded walks upstream of a version and downstream
//! of any entity (impact) with the versions reached and their stages, quarantines, and what is
//! quarantined upstream of a version (the promotion gate and the listings' flag).

use heed::RoTxn;

use crate::domain::{Stage, VersionStatus};
use crate::lineage::{self, Direction, Edge, Entity, Quarantine, Walk, WALK_NODES_MAX};
use crate::state::tables::{decode, lineage_key, lineage_prefix, version_key};
use crate::state::{AppResult, RegistryApp};

/// A version reached by a walk, as it is now.
#[derive(Clone, Debug, PartialEq)]
pub struct LineageVersion {
    pub model: String,
    pub number: u64,
    pub stage: Stage,
    pub status: VersionStatus,
    /// Edges from the walk's start.
    pub depth: u32,
}

/// The fields of a stored version an impact shows: decoding only these (serde skips the rest)
/// keeps an impact over thousands of versions cheap.
#[derive(serde::Deserialize)]
struct StageOnly {
    stage: Stage,
    status: VersionStatus,
}

/// A walk with what the state says about its entities.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LineageGraph {
    pub walk: Walk,
    /// The versions among the walk's entities (the start included), by model and number.
    pub versions: Vec<LineageVersion>,
    /// The quarantines of the walk's entities.
    pub quarantined: Vec<Quarantine>,
}

impl RegistryApp {
    /// `entity`'s edges: those leaving it (downstream) or arriving at it (upstream), in key
    /// order.
    pub fn lineage_edges(
        &self,
        rtxn: &RoTxn<'_>,
        entity: &Entity,
        direction: Direction,
    ) -> AppResult<Vec<Edge>> {
        let table = match direction {
            Direction::Downstream => &self.tables.lineage_down,
            Direction::Upstream => &self.tables.lineage_up,
        };
        let mut out = Vec::new();
        for row in table.prefix_iter(rtxn, &lineage_prefix(entity))? {
            let (_, v) = row?;
            out.push(decode("lineage edge", v)?);
        }
        Ok(out)
    }

    /// The edge `from` -> `to`, if recorded.
    pub fn lineage_edge(
        &self,
        rtxn: &RoTxn<'_>,
        from: &Entity,
        to: &Entity,
    ) -> AppResult<Option<Edge>> {
        let probe = Edge {
            from: from.clone(),
            to: to.clone(),
            source: lineage::EdgeSource::Explicit,
            by: String::new(),
            at_ms: 0,
        };
        self.tables
            .lineage_down
            .get(rtxn, &lineage_key(&probe, false))?
            .map(|v| decode("lineage edge", v))
            .transpose()
    }

    /// The bounded walk from `start` (see `lineage::walk`).
    pub fn lineage_walk(
        &self,
        rtxn: &RoTxn<'_>,
        start: &Entity,
        direction: Direction,
        nodes_max: usize,
    ) -> AppResult<Walk> {
        lineage::walk(start, direction, nodes_max, |e| {
            self.lineage_edges(rtxn, e, direction)
        })
    }

    /// [`RegistryApp::lineage_walk`] reading at most `edges_per_entity_max` edges of each
    /// entity it visits, so that its cost is bounded whatever an entity's fan-out (a snapshot
    /// that 100,000 versions came from); a walk cut there says so (`truncated`). For views that
    /// show a neighbourhood (the web UI's graph), never for a check that must see everything.
    pub fn lineage_walk_bounded(
        &self,
        rtxn: &RoTxn<'_>,
        start: &Entity,
        direction: Direction,
        nodes_max: usize,
        edges_per_entity_max: usize,
    ) -> AppResult<Walk> {
        let table = match direction {
            Direction::Downstream => &self.tables.lineage_down,
            Direction::Upstream => &self.tables.lineage_up,
        };
        let mut cut = false;
        let mut walk = lineage::walk(start, direction, nodes_max, |e| {
            let mut out = Vec::new();
            for row in table.prefix_iter(rtxn, &lineage_prefix(e))? {
                if out.len() == edges_per_entity_max {
                    cut = true;
                    break;
                }
                let (_, v) = row?;
                out.push(decode("lineage edge", v)?);
            }
            AppResult::Ok(out)
        })?;
        walk.truncated |= cut;
        Ok(walk)
    }

    /// Everything version `model`/`number` came from, transitively (the version must exist).
    pub fn lineage_upstream(
        &self,
        rtxn: &RoTxn<'_>,
        model: &str,
        number: u64,
    ) -> AppResult<LineageGraph> {
        self.get_version(rtxn, model, number)?;
        let walk = self.lineage_walk(
            rtxn,
            &Entity::version(model, number),
            Direction::Upstream,
            WALK_NODES_MAX,
        )?;
        self.described(rtxn, walk)
    }

    /// Everything that came from `entity`, transitively: which versions, in which stages. A
    /// version entity must exist; other entities need not (an entity nothing names has no
    /// impact).
    pub fn lineage_impact(&self, rtxn: &RoTxn<'_>, entity: &Entity) -> AppResult<LineageGraph> {
        if let Some((model, number)) = entity.as_version() {
            self.get_version(rtxn, model, number)?;
        }
        let walk = self.lineage_walk(rtxn, entity, Direction::Downstream, WALK_NODES_MAX)?;
        self.described(rtxn, walk)
    }

    /// `walk` with its versions' stages and its entities' quarantines.
    fn described(&self, rtxn: &RoTxn<'_>, walk: Walk) -> AppResult<LineageGraph> {
        let any_quarantine = !self.tables.quarantines.is_empty(rtxn)?;
        let mut versions = Vec::new();
        let mut quarantined = Vec::new();
        for (entity, depth) in &walk.nodes {
            if let Some((model, number)) = entity.as_version() {
                let Some(bytes) = self
                    .tables
                    .versions
                    .get(rtxn, &version_key(model, number))?
                else {
                    // Edges name only versions that exist, and versions are never deleted.
                    return Err(
                        anyhow::anyhow!("lineage names {entity}, which the state lacks").into(),
                    );
                };
                let v: StageOnly = decode("version", bytes)?;
                versions.push(LineageVersion {
                    model: model.to_string(),
                    number,
                    stage: v.stage,
                    status: v.status,
                    depth: *depth,
                });
            }
            if any_quarantine {
                quarantined.extend(self.quarantine_of(rtxn, entity)?);
            }
        }
        versions.sort_by(|a, b| (&a.model, a.number).cmp(&(&b.model, b.number)));
        Ok(LineageGraph {
            walk,
            versions,
            quarantined,
        })
    }

    /// `entity`'s quarantine, if it is quarantined.
    pub fn quarantine_of(
        &self,
        rtxn: &RoTxn<'_>,
        entity: &Entity,
    ) -> AppResult<Option<Quarantine>> {
        self.tables
            .quarantines
            .get(rtxn, &entity.key())?
            .map(|v| decode("quarantine", v))
            .transpose()
    }

    /// Every quarantine in force, in entity order (at most `lineage::QUARANTINES_MAX`).
    pub fn quarantines(&self, rtxn: &RoTxn<'_>) -> AppResult<Vec<Quarantine>> {
        let mut out = Vec::new();
        for row in self.tables.quarantines.iter(rtxn)? {
            let (_, v) = row?;
            out.push(decode("quarantine", v)?);
        }
        Ok(out)
    }

    /// The quarantines upstream of version `model`/`number` (itself included), and whether the
    /// walk was cut short before it could see everything. With no quarantine in force it walks
    /// nothing.
    pub fn quarantined_upstream(
        &self,
        rtxn: &RoTxn<'_>,
        model: &str,
        number: u64,
    ) -> AppResult<(Vec<Quarantine>, bool)> {
        if self.tables.quarantines.is_empty(rtxn)? {
            return Ok((Vec::new(), false));
        }
        let walk = self.lineage_walk(
            rtxn,
            &Entity::version(model, number),
            Direction::Upstream,
            WALK_NODES_MAX,
        )?;
        let mut found = Vec::new();
        for (entity, _) in &walk.nodes {
            found.extend(self.quarantine_of(rtxn, entity)?);
        }
        Ok((found, walk.truncated))
    }

    /// The lineage gate's result for promoting `model`/`number` (see `lineage::quarantine_gate`).
    pub fn quarantine_gate(
        &self,
        rtxn: &RoTxn<'_>,
        model: &str,
        number: u64,
    ) -> AppResult<Option<crate::governance::GateResult>> {
        let (found, truncated) = self.quarantined_upstream(rtxn, model, number)?;
        Ok(lineage::quarantine_gate(&found, truncated))
    }
}
