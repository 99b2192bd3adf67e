//! The Admin service: what a node knows about itself and its cluster.

use std::sync::Arc;

use quiver_client::proto::{self, admin_server::Admin};
use tonic::{Request, Response, Status};

use crate::node::Node;

pub struct AdminService {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn node_status(
        &self,
        _request: Request<proto::NodeStatusRequest>,
    ) -> Result<Response<proto::NodeStatusResponse>, Status> {
        let m = self.node.raft.metrics();
        let chunks = self.node.chunks.clone();
        let chunk_count = tokio::task::spawn_blocking(move || chunks.list().map(|l| l.len()))
            .await
            .map_err(|e| Status::internal(format!("count chunks: {e}")))?
            .map_err(|e| Status::internal(format!("count chunks: {e}")))?;
        Ok(Response::new(proto::NodeStatusResponse {
            node_id: m.id,
            leader_id: m.current_leader,
            term: m.current_term,
            last_applied_index: m.last_applied.map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            state: format!("{:?}", m.state),
            chunk_count: chunk_count as u64,
            data_dir: self.node.config.data_dir.display().to_string(),
        }))
    }
}
