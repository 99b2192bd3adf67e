//! The Lineage service (decision 0021): record edges, walk upstream of a version and downstream
//! of any entity (impact), quarantine an entity and lift it. Entities arrive as text
//! (`data:47`) and are parsed here, at the edge; a malformed one is `INVALID_ARGUMENT` naming
//! the field.
//!
//! Roles: reading a version's upstream needs the reader role on its namespace; an impact and
//! the list of quarantines span namespaces (a data snapshot belongs to none) and need the
//! reader role cluster-wide. Writes are checked where every command is (`access::need_of`).

use std::sync::Arc;

use quiver_api::proto::{self, lineage_server::Lineage};
use tonic::{Request, Response, Status};

use super::convert::stage_to_proto;
use super::{caller, caller_with, consistency, invalid, parse_reference};
use crate::access::Target;
use crate::auth::Role;
use crate::command::{Op, Response as Applied};
use crate::domain::VersionStatus;
use crate::lineage::{Edge, Entity, Quarantine, WALK_NODES_MAX};
use crate::node::{Consistency, Node};
use crate::state::LineageGraph;

pub struct LineageService {
    pub node: Arc<Node>,
}

pub fn edge_to_proto(e: &Edge) -> proto::LineageEdge {
    proto::LineageEdge {
        from: e.from.to_string(),
        to: e.to.to_string(),
        source: e.source.as_str().into(),
        by: e.by.clone(),
        at_ms: e.at_ms,
    }
}

pub fn quarantine_to_proto(q: &Quarantine) -> proto::QuarantineRecord {
    proto::QuarantineRecord {
        entity: q.entity.to_string(),
        reason: q.reason.clone(),
        by: q.by.clone(),
        at_ms: q.at_ms,
    }
}

fn status_to_proto(status: VersionStatus) -> proto::VersionStatus {
    match status {
        VersionStatus::Pending => proto::VersionStatus::Pending,
        VersionStatus::Ready => proto::VersionStatus::Ready,
        VersionStatus::Failed => proto::VersionStatus::Failed,
    }
}

fn graph_to_proto(root: &Entity, g: &LineageGraph) -> proto::LineageGraph {
    let quarantine = |e: &Entity| {
        g.quarantined
            .iter()
            .find(|q| q.entity == *e)
            .map(quarantine_to_proto)
    };
    proto::LineageGraph {
        root: root.to_string(),
        nodes: g
            .walk
            .nodes
            .iter()
            .map(|(e, depth)| proto::LineageNode {
                entity: e.to_string(),
                depth: *depth,
                quarantine: quarantine(e),
            })
            .collect(),
        edges: g.walk.edges.iter().map(edge_to_proto).collect(),
        versions: g
            .versions
            .iter()
            .map(|v| proto::LineageVersion {
                model: v.model.clone(),
                version: v.number,
                stage: stage_to_proto(v.stage) as i32,
                status: status_to_proto(v.status) as i32,
                depth: v.depth,
            })
            .collect(),
        truncated: g.walk.truncated,
        nodes_max: WALK_NODES_MAX as u32,
    }
}

fn parse_entity(field: &str, text: &str) -> Result<Entity, Status> {
    Entity::parse(field, text).map_err(invalid)
}

fn unexpected(applied: Applied) -> Status {
    Status::internal(format!("unexpected apply result {applied:?}"))
}

/// Sets `versions`' quarantine flags (what is quarantined upstream of each) from one read.
pub async fn flag_quarantined(
    node: &Node,
    versions: &mut [proto::ModelVersion],
    consistency: Consistency,
) -> Result<(), Status> {
    let keys: Vec<(String, u64)> = versions
        .iter()
        .map(|v| (v.model.clone(), v.version))
        .collect();
    let flags = node
        .read(consistency, move |app, txn| {
            keys.iter()
                .map(|(model, number)| Ok(app.quarantined_upstream(txn, model, *number)?.0))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    for (v, found) in versions.iter_mut().zip(flags) {
        v.quarantined_by = found.iter().map(quarantine_to_proto).collect();
    }
    Ok(())
}

#[tonic::async_trait]
impl Lineage for LineageService {
    async fn add_lineage_edge(
        &self,
        request: Request<proto::AddLineageEdgeRequest>,
    ) -> Result<Response<proto::LineageEdge>, Status> {
        let actor = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let op = Op::AddLineageEdge {
            from: parse_entity("from", &r.from)?,
            to: parse_entity("to", &r.to)?,
        };
        match self.node.propose(actor, op).await? {
            Applied::LineageEdge(e) => Ok(Response::new(edge_to_proto(&e))),
            other => Err(unexpected(other)),
        }
    }

    async fn upstream(
        &self,
        request: Request<proto::LineageUpstreamRequest>,
    ) -> Result<Response<proto::LineageGraph>, Status> {
        let reference = parse_reference(&request.get_ref().reference)?;
        let action = format!("read the lineage of model {}", reference.model);
        caller_with(
            &self.node,
            &request,
            Role::Reader,
            Target::Model(&reference.model),
            &action,
        )
        .await?;
        let c = consistency(request.get_ref().consistency);
        let (root, graph) = self
            .node
            .read(c, move |app, txn| {
                let v = app.resolve(txn, &reference)?;
                let graph = app.lineage_upstream(txn, &v.model, v.number)?;
                Ok((Entity::version(&v.model, v.number), graph))
            })
            .await?;
        Ok(Response::new(graph_to_proto(&root, &graph)))
    }

    async fn impact(
        &self,
        request: Request<proto::LineageImpactRequest>,
    ) -> Result<Response<proto::LineageGraph>, Status> {
        let entity = parse_entity("entity", &request.get_ref().entity)?;
        let action = format!("read the impact of {entity}");
        caller_with(&self.node, &request, Role::Reader, Target::Cluster, &action).await?;
        let c = consistency(request.get_ref().consistency);
        let root = entity.clone();
        let graph = self
            .node
            .read(c, move |app, txn| app.lineage_impact(txn, &entity))
            .await?;
        Ok(Response::new(graph_to_proto(&root, &graph)))
    }

    async fn quarantine(
        &self,
        request: Request<proto::QuarantineRequest>,
    ) -> Result<Response<proto::QuarantineRecord>, Status> {
        let actor = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let op = Op::Quarantine {
            entity: parse_entity("entity", &r.entity)?,
            reason: r.reason,
        };
        match self.node.propose(actor, op).await? {
            Applied::Quarantine(q) => Ok(Response::new(quarantine_to_proto(&q))),
            other => Err(unexpected(other)),
        }
    }

    async fn lift_quarantine(
        &self,
        request: Request<proto::LiftQuarantineRequest>,
    ) -> Result<Response<proto::QuarantineRecord>, Status> {
        let actor = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let op = Op::LiftQuarantine {
            entity: parse_entity("entity", &r.entity)?,
            reason: r.reason,
        };
        match self.node.propose(actor, op).await? {
            Applied::Quarantine(q) => Ok(Response::new(quarantine_to_proto(&q))),
            other => Err(unexpected(other)),
        }
    }

    async fn list_quarantines(
        &self,
        request: Request<proto::ListQuarantinesRequest>,
    ) -> Result<Response<proto::ListQuarantinesResponse>, Status> {
        caller_with(
            &self.node,
            &request,
            Role::Reader,
            Target::Cluster,
            "read the quarantines",
        )
        .await?;
        let c = consistency(request.get_ref().consistency);
        let found = self.node.read(c, |app, txn| app.quarantines(txn)).await?;
        Ok(Response::new(proto::ListQuarantinesResponse {
            quarantines: found.iter().map(quarantine_to_proto).collect(),
        }))
    }
}
