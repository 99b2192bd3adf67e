//! openraft's `RaftNetworkFactory`: `PeerNetwork`. Each Raft RPC is one unary call through the
//! node's [`crate::PeerTransport`] (`transport.rs`; gRPC in production, the simulated network in
//! the simulator), its payload serde_json of openraft's message; snapshot chunks travel as raw
//! bytes beside a JSON header. A peer that cannot be connected to is reported `Unreachable`
//! (openraft backs off, see `PeerConnection::backoff`); any other transport failure is a
//! `NetworkError`; an error openraft raised on the peer comes back as a `RemoteError`.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, RaftNetwork, RaftNetworkFactory, SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::transport::{decode_reply, Body, CallError, Method, Peers};
use crate::{App, NodeId, TypeConfig};

/// First pause after a peer was found unreachable; doubles up to [`PEER_BACKOFF_MAX`].
pub const PEER_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between attempts to reach an unreachable peer.
pub const PEER_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Most bytes of entries one AppendEntries carries (a single larger entry goes alone).
/// openraft 0.9 gives every AppendEntries one heartbeat to be answered, so a batch must be
/// encoded, sent, decoded and made durable on the follower well within it: a new leader that
/// sent a backlog of large entries in one message would time out on every retry and never
/// replicate again.
pub const APPEND_ENTRIES_BYTES_MAX: usize = 512 << 10;

// A batch of commands fits one AppendEntries, and a command alone in an entry, with the
// AppendEntries envelope around it, fits one peer message.
const _: () = assert!(crate::batch::BATCH_BYTES_MAX <= APPEND_ENTRIES_BYTES_MAX);
const _: () =
    assert!(crate::batch::COMMAND_BYTES_MAX + (1 << 20) <= crate::PEER_MESSAGE_SIZE_MAX_BYTES);

/// A snapshot chunk's metadata; the chunk's bytes travel beside it, not in the JSON.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotChunkHeader {
    pub(crate) vote: Vote<NodeId>,
    pub(crate) meta: SnapshotMeta<NodeId, BasicNode>,
    pub(crate) offset: u64,
    pub(crate) done: bool,
}

/// The Raft network over the node's peer transport. Cheap to clone.
#[derive(Clone)]
pub(crate) struct PeerNetwork {
    clients: Arc<Peers>,
}

impl PeerNetwork {
    pub(crate) fn new(clients: Arc<Peers>) -> Self {
        PeerNetwork { clients }
    }
}

/// openraft's client for one peer: its id and advertised address.
pub(crate) struct PeerConnection {
    target: NodeId,
    node: BasicNode,
    clients: Arc<Peers>,
}

impl<A: App> RaftNetworkFactory<TypeConfig<A>> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerConnection {
            target,
            node: node.clone(),
            clients: self.clients.clone(),
        }
    }
}

impl PeerConnection {
    /// Send one Raft RPC and decode the JSON `Result` it answers with.
    async fn send<T, E>(
        &self,
        method: Method,
        body: Body,
        timeout: Duration,
    ) -> Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let addr = &self.node.addr;
        let reply = self
            .clients
            .unary(addr, method, body, timeout)
            .await
            .map_err(|e| self.rpc_error(e))?;
        let result: Result<T, RaftError<NodeId, E>> =
            decode_reply(addr, method, &reply).map_err(|e| self.rpc_error(e))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }

    fn rpc_error<E: std::error::Error>(&self, e: CallError) -> RPCError<NodeId, BasicNode, E> {
        let any = AnyError::error(format!("node {}: {e}", self.target));
        match e {
            CallError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&any)),
            CallError::Timeout(_) | CallError::Failed(_) => {
                RPCError::Network(NetworkError::new(&any))
            }
        }
    }

    fn encode<T: Serialize, E: std::error::Error>(
        &self,
        what: &str,
        value: &T,
    ) -> Result<Vec<u8>, RPCError<NodeId, BasicNode, E>> {
        serde_json::to_vec(value).map_err(|e| {
            RPCError::Network(NetworkError::new(
                &AnyError::new(&e)
                    .add_context(|| format!("encode {what} for node {}", self.target)),
            ))
        })
    }
}

impl<A: App> RaftNetwork<TypeConfig<A>> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig<A>>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let json = self.encode("AppendEntries", &rpc)?;
        if json.len() > APPEND_ENTRIES_BYTES_MAX && rpc.entries.len() > 1 {
            // Let openraft send fewer entries per RPC for a while: as many as fit, by their
            // average size (at least one).
            let fit = rpc.entries.len() * APPEND_ENTRIES_BYTES_MAX / json.len();
            let hint = fit.clamp(1, rpc.entries.len() - 1) as u64;
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        let body = Body::Raft {
            target: self.target,
            json,
        };
        self.send(Method::AppendEntries, body, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig<A>>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let InstallSnapshotRequest {
            vote,
            meta,
            offset,
            data,
            done,
        } = rpc;
        let header = SnapshotChunkHeader {
            vote,
            meta,
            offset,
            done,
        };
        let header_json = self.encode("InstallSnapshot header", &header)?;
        let body = Body::Snapshot {
            target: self.target,
            header_json,
            data,
        };
        self.send(Method::InstallSnapshot, body, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let json = self.encode("Vote", &rpc)?;
        let body = Body::Raft {
            target: self.target,
            json,
        };
        self.send(Method::Vote, body, option.hard_ttl()).await
    }

    /// Exponential from [`PEER_BACKOFF_MIN`] to [`PEER_BACKOFF_MAX`]: a restarted peer is found
    /// again quickly, a dead one costs at most one attempt a second.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::successors(Some(PEER_BACKOFF_MIN), |d| {
            Some((*d * 2).min(PEER_BACKOFF_MAX))
        }))
    }
}
