//! The Admin service: what a node knows about itself and its cluster, and
//! the operator's membership actions.

use std::sync::Arc;

use quiver_api::proto::{self, admin_server::Admin};
use tonic::{Request, Response, Status};

use super::caller_with;
use crate::access::Target;
use crate::auth::Role;
use crate::error::NodeError;
use crate::node::{Consistency, Node};

pub struct AdminService {
    pub node: Arc<Node>,
}

impl AdminService {
    async fn cluster(&self) -> Result<proto::ClusterStatusResponse, Status> {
        let status = self
            .node
            .raft
            .cluster_status()
            .await
            .map_err(NodeError::from)?;
        let nodes = self
            .node
            .read(Consistency::Stale, |app, txn| app.nodes(txn))
            .await?;
        let members = status
            .members
            .iter()
            .map(|m| {
                let info = nodes.iter().find(|n| n.node_id == m.node_id);
                let role = if status.leader_id == Some(m.node_id) {
                    "leader"
                } else if m.voter {
                    "follower"
                } else {
                    "learner"
                };
                proto::ClusterMember {
                    node_id: m.node_id,
                    role: role.into(),
                    voter: m.voter,
                    api_addr: info.map(|n| n.api_addr.clone()).unwrap_or_default(),
                    peer_addr: m.addr.clone(),
                    quic_addr: info.map(|n| n.quic_addr.clone()).unwrap_or_default(),
                    region: info.map(|n| n.region.clone()).unwrap_or_default(),
                    zone: info.map(|n| n.zone.clone()).unwrap_or_default(),
                    matched_index: m.matched_index,
                    lag: m.lag,
                }
            })
            .collect();
        Ok(proto::ClusterStatusResponse {
            node_id: status.node_id,
            leader_id: status.leader_id,
            term: status.term,
            committed_index: status.committed_index,
            applied_index: status.applied_index,
            last_log_index: status.last_log_index,
            members,
        })
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn node_status(
        &self,
        request: Request<proto::NodeStatusRequest>,
    ) -> Result<Response<proto::NodeStatusResponse>, Status> {
        caller_with(
            &self.node,
            &request,
            Role::Reader,
            Target::Anyone,
            "read node status",
        )
        .await?;
        let m = self.node.raft.metrics();
        let chunks = self.node.chunks.clone();
        let chunk_count = tokio::task::spawn_blocking(move || chunks.list().map(|l| l.len()))
            .await
            .map_err(|e| Status::internal(format!("count chunks: {e}")))?
            .map_err(|e| Status::internal(format!("count chunks: {e}")))?;
        let (state_digest, inline_bytes) = self
            .node
            .read(Consistency::Stale, |app, txn| {
                Ok((app.digest(txn)?, app.inline_bytes(txn)?))
            })
            .await?;
        Ok(Response::new(proto::NodeStatusResponse {
            node_id: m.id,
            leader_id: m.current_leader,
            term: m.current_term,
            last_applied_index: m.last_applied.map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            state: format!("{:?}", m.state),
            chunk_count: chunk_count as u64,
            data_dir: self.node.core.data_dir.display().to_string(),
            state_digest,
            region: self.node.core.info.region.clone(),
            zone: self.node.core.info.zone.clone(),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            inline_bytes,
        }))
    }

    async fn cluster_status(
        &self,
        request: Request<proto::ClusterStatusRequest>,
    ) -> Result<Response<proto::ClusterStatusResponse>, Status> {
        caller_with(
            &self.node,
            &request,
            Role::Reader,
            Target::Anyone,
            "read cluster status",
        )
        .await?;
        Ok(Response::new(self.cluster().await?))
    }

    async fn remove_node(
        &self,
        request: Request<proto::RemoveNodeRequest>,
    ) -> Result<Response<proto::ClusterStatusResponse>, Status> {
        let node_id = request.get_ref().node_id;
        let action = format!("remove node {node_id}");
        let actor =
            caller_with(&self.node, &request, Role::Admin, Target::Cluster, &action).await?;
        self.node.remove_member(actor, node_id).await?;
        Ok(Response::new(self.cluster().await?))
    }

    async fn step_down(
        &self,
        request: Request<proto::StepDownRequest>,
    ) -> Result<Response<proto::StepDownResponse>, Status> {
        caller_with(
            &self.node,
            &request,
            Role::Admin,
            Target::Cluster,
            "step the leader down",
        )
        .await?;
        let previous = self.node.raft.metrics().current_leader;
        self.node.step_down().await.map_err(|e| match e {
            NodeError::Membership(m) => NodeError::Membership(format!("step down: {m}")),
            e => e,
        })?;
        Ok(Response::new(proto::StepDownResponse {
            previous_leader_id: previous,
        }))
    }

    async fn crash(
        &self,
        request: Request<proto::CrashRequest>,
    ) -> Result<Response<proto::CrashResponse>, Status> {
        let actor = caller_with(
            &self.node,
            &request,
            Role::Admin,
            Target::Cluster,
            "crash a node",
        )
        .await?;
        if !self.node.core.crash_drills {
            return Err(Status::failed_precondition(
                "crash drills are disabled on this node: start it with --enable-crash-drills",
            ));
        }
        tracing::warn!(actor = %actor.name, "crash drill: aborting the process now");
        std::process::abort();
    }
}
