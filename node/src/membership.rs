//! Membership changes as the admin API and the simulator make them: through whichever node
//! received the request (the Raft layer forwards to the leader over the peer seam), with the
//! node table kept in step with the Raft membership.

use quiver_transfer::{ChunkPeers, ChunkSource};

use crate::command::Op;
use crate::domain::Actor;
use crate::error::NodeError;
use crate::node::{Consistency, Node};

impl<S: ChunkSource + Clone, P: ChunkPeers> Node<S, P> {
    /// Removes member `node_id` from the cluster (through the leader), then, as `actor`, forgets
    /// its addresses in the node table so that placement and uploads stop counting it; that
    /// `RemoveNode` also makes its peers refuse its certificate (decision 0017). A removal cut
    /// short between the two steps is finished by asking again: a node no longer a member but
    /// still in the table is removed from the table.
    pub async fn remove_member(&self, actor: Actor, node_id: u64) -> Result<(), NodeError> {
        let removed = match self.raft.remove_member(node_id).await {
            Err(quiver_raft::MembershipError::NotMember(_)) => false,
            other => {
                other?;
                true
            }
        };
        let known = self
            .read(Consistency::Stale, |app, txn| app.nodes(txn))
            .await?;
        if known.iter().any(|n| n.node_id == node_id) {
            self.propose(actor, Op::RemoveNode { node_id }).await?;
        } else if !removed {
            return Err(NodeError::NotMember(node_id));
        }
        Ok(())
    }

    /// Hands leadership from the current leader (wherever it is) to the most up-to-date other
    /// voter; returns the new leader's id.
    pub async fn step_down(&self) -> Result<u64, NodeError> {
        Ok(self.raft.step_down().await?)
    }

    /// Asks the member at peer address `via` to add this node (removed earlier) back as a
    /// voter, then records this node's addresses in the node table again (`announce`).
    pub async fn rejoin(&self, via: &str) -> Result<(), NodeError> {
        self.raft
            .join(via)
            .await
            .map_err(|e| NodeError::Membership(format!("{e:#}")))?;
        self.announce().await
    }
}
