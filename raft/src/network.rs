//! The transport seam: a Raft network that reaches nobody.
//!
//! A single-member cluster never sends an RPC, so today the node needs no transport at all.
//! Openraft still requires a `RaftNetworkFactory`; this one answers every RPC with `Unreachable`,
//! which openraft treats like a peer that is down (it backs off and retries), never as a reply.
//! A real transport replaces it through `RaftNode::start_with_network`, with no change to the
//! storage or the node handle.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, RaftNetwork, RaftNetworkFactory};

use crate::{App, NodeId, TypeConfig};

/// Network factory whose clients cannot reach any peer.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnreachableNetwork;

/// Client for one peer, returned by [`UnreachableNetwork`]; every call fails with `Unreachable`.
#[derive(Clone, Debug)]
pub struct UnreachableClient {
    target: NodeId,
}

impl UnreachableClient {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&AnyError::error(format!(
            "node {} is unreachable: this node has no Raft transport",
            self.target
        ))))
    }
}

impl<A: App> RaftNetworkFactory<TypeConfig<A>> for UnreachableNetwork {
    type Network = UnreachableClient;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Self::Network {
        UnreachableClient { target }
    }
}

impl<A: App> RaftNetwork<TypeConfig<A>> for UnreachableClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig<A>>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig<A>>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
