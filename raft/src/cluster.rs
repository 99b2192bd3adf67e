//! Cluster membership and status: joining, adding and removing members, leadership transfer,
//! and the status report.
//!
//! Every membership change runs on the leader, one at a time (`Inner::membership_lock`); a
//! member that is not the leader forwards it over the peer RPC, retrying across leader changes
//! like a write does. Adding a node is three steps, so a voter is never added before it can
//! vote usefully:
//! 1. check it: the id is not taken by another address, the address is not taken by another
//!    id, and the node at that address answers (over mutual TLS) with the expected id;
//! 2. add it as a learner and wait until its log has caught up with the leader's (openraft
//!    sends a snapshot when the entries it needs were purged);
//! 3. promote it to voter (a joint-consensus change, committed by both configurations).
//!
//! If step 2 does not finish in time the learner is removed again, so a failed join leaves the
//! membership as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::metrics::WaitError;
use openraft::{BasicNode, ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::node::{
    forward_budget, Attempt, Outcome, RaftNode, ELECTION_TIMEOUT_MAX_MS, LEADER_RETRY_PAUSE_MAX,
};
use crate::rpc::{
    AddMemberRequest, RemoveMemberRequest, StatusRequest, TransferLeaderRequest, WriteError,
};
use crate::transport::{decode_reply, Body, CallError, Method};
use crate::{App, NodeId};

/// Bound on one membership change made through [`RaftNode::add_member`] or
/// [`RaftNode::remove_member`], forwarding and the new member's catch-up included.
pub const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on joining a cluster at start: the membership change plus forwarding margin.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(65);
/// How long a joined node waits to see itself as a voter after the leader said it is one.
pub const JOIN_SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on asking the leader for its view in [`RaftNode::cluster_status`], and on checking a
/// node that is about to be added.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on [`RaftNode::transfer_leadership`].
pub const LEADER_TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of one `Elect` RPC during a leadership transfer.
const ELECT_RPC_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a removal of a learner that failed to catch up may take.
const LEARNER_CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a membership change was refused or failed.
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
pub enum MembershipError {
    #[error("node id {node_id} is already a member at {existing_addr}; pick another --node-id")]
    DuplicateId {
        node_id: NodeId,
        existing_addr: String,
    },
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    #[error("refusing to remove node {0}: it is the last voter, the cluster would have no one to decide")]
    LastVoter(NodeId),
    #[error("{0}")]
    Write(#[from] WriteError),
    #[error("membership change failed: {0}")]
    Other(String),
}

/// One member as seen by a node. `matched_index` and `lag` are the leader's replication
/// progress; `None` when that is not known (no leader, or it could not be asked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node_id: NodeId,
    pub addr: String,
    pub voter: bool,
    /// Highest log index known to be replicated on this member.
    pub matched_index: Option<u64>,
    /// The leader's last log index minus `matched_index`.
    pub lag: Option<u64>,
}

/// A node's view of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    /// openraft's server state: `Leader`, `Follower`, `Candidate`, `Learner` or `Shutdown`.
    pub state: String,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    /// In node id order.
    pub members: Vec<MemberStatus>,
}

fn membership_attempt(e: MembershipError) -> Attempt<MembershipError> {
    match e {
        MembershipError::Write(WriteError::NotLeader { .. }) => Attempt::Retry(e.to_string()),
        MembershipError::Write(WriteError::NoQuorum(m)) => Attempt::Retry(m),
        e => Attempt::Final(e),
    }
}

/// Whether `node_id` is a voter of the configuration `membership` is heading to: during a joint
/// change (old + new voter sets) a node that only the old set has is on its way out.
pub(crate) fn is_settled_voter(
    membership: &openraft::Membership<NodeId, BasicNode>,
    node_id: NodeId,
) -> bool {
    membership
        .get_joint_config()
        .last()
        .is_some_and(|voters| voters.contains(&node_id))
}

fn remote_membership_attempt<T>(
    reply: Result<Result<T, MembershipError>, CallError>,
    leader_id: NodeId,
    addr: &str,
) -> Result<T, Attempt<MembershipError>> {
    match reply {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e @ MembershipError::Write(WriteError::NotLeader { .. })))
        | Ok(Err(e @ MembershipError::Write(WriteError::Fatal(_)))) => Err(Attempt::Retry(
            format!("leader node {leader_id} at {addr}: {e}"),
        )),
        Ok(Err(e)) => Err(Attempt::Final(e)),
        Err(CallError::Failed(detail)) => {
            Err(Attempt::Final(MembershipError::Write(WriteError::Fatal(
                format!("leader node {leader_id} at {addr} refused the request: {detail}"),
            ))))
        }
        Err(e) => Err(Attempt::Retry(format!(
            "cannot reach leader node {leader_id} at {addr}: {}",
            e.detail()
        ))),
    }
}

impl<A: App> RaftNode<A> {
    /// Ask the member at `via` to add this node; then wait to see ourselves as a voter. Run at
    /// the first start with a join address, and by a removed node that is to serve again.
    pub async fn join(&self, via: &str) -> anyhow::Result<()> {
        let node_id = self.node_id();
        anyhow::ensure!(
            via != self.addr(),
            "node {node_id} cannot join the cluster through its own address {via}"
        );
        let fresh = !self
            .inner
            .raft
            .is_initialized()
            .await
            .context("query raft initialisation")?;
        tracing::info!(node_id, via, fresh, "joining the cluster");
        let req = AddMemberRequest {
            node_id,
            addr: self.addr().to_string(),
            forwarded: false,
            fresh,
            timeout_ms: MEMBERSHIP_CHANGE_TIMEOUT.as_millis() as u64,
        };
        let reply: Result<Result<(), MembershipError>, CallError> = self
            .inner
            .peers
            .call(via, Method::AddMember, &req, JOIN_TIMEOUT)
            .await;
        match reply {
            Err(e) => anyhow::bail!("node {node_id} cannot join the cluster through {via}: {e}"),
            Ok(Err(e)) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "node {node_id} cannot join the cluster through {via}"
                )))
            }
            Ok(Ok(())) => {}
        }
        self.inner
            .raft
            .wait(Some(JOIN_SETTLE_TIMEOUT))
            .metrics(
                |m| is_settled_voter(m.membership_config.membership(), node_id),
                "this node sees itself as a voter",
            )
            .await
            .with_context(|| {
                format!("node {node_id} was added through {via} but does not see itself as a voter")
            })?;
        tracing::info!(node_id, via, "joined the cluster as a voter");
        Ok(())
    }

    /// Add node `node_id`, reachable at `addr`, as a voter: through the leader, as a learner
    /// first, promoted once it has caught up. Idempotent for the same id and address; an id
    /// already used at another address is [`MembershipError::DuplicateId`]. Bounded by
    /// [`MEMBERSHIP_CHANGE_TIMEOUT`].
    pub async fn add_member(&self, node_id: NodeId, addr: String) -> Result<(), MembershipError> {
        self.add_member_until(
            node_id,
            addr,
            false,
            Instant::now() + MEMBERSHIP_CHANGE_TIMEOUT,
        )
        .await
    }

    pub(crate) async fn add_member_until(
        &self,
        node_id: NodeId,
        addr: String,
        fresh: bool,
        deadline: Instant,
    ) -> Result<(), MembershipError> {
        self.membership_via_leader(
            "add member",
            deadline,
            |deadline| self.add_member_here(node_id, addr.clone(), fresh, deadline),
            Method::AddMember,
            |timeout_ms| AddMemberRequest {
                node_id,
                addr: addr.clone(),
                forwarded: true,
                fresh,
                timeout_ms,
            },
        )
        .await
    }

    /// Runs a membership operation here when this node leads, otherwise sends `make_req`'s
    /// request (given the leader's share of the remaining time, in ms) to the leader as
    /// `method`; retried across leader changes until `deadline`.
    async fn membership_via_leader<T, Req, L, LF>(
        &self,
        what: &str,
        deadline: Instant,
        mut local: L,
        method: Method,
        make_req: impl Fn(u64) -> Req,
    ) -> Result<T, MembershipError>
    where
        T: serde::de::DeserializeOwned,
        Req: Serialize,
        L: FnMut(Instant) -> LF,
        LF: std::future::Future<Output = Result<T, MembershipError>>,
    {
        let started = Instant::now();
        let make_req = &make_req;
        self.via_leader(
            deadline,
            |deadline| {
                let attempt = local(deadline);
                async move { attempt.await.map_err(membership_attempt) }
            },
            |leader_id, leader_addr, deadline| async move {
                let (leader_budget, rpc_timeout) = forward_budget(deadline);
                let req = make_req(leader_budget.as_millis() as u64);
                let reply = self
                    .inner
                    .peers
                    .call(&leader_addr, method, &req, rpc_timeout)
                    .await;
                remote_membership_attempt(reply, leader_id, &leader_addr)
            },
        )
        .await
        .map_err(|o| self.settle_membership_outcome(what, started, o))
    }

    fn settle_membership_outcome(
        &self,
        what: &str,
        started: Instant,
        outcome: Outcome<MembershipError>,
    ) -> MembershipError {
        match outcome {
            Outcome::Final(e) => e,
            Outcome::Fatal(m) => MembershipError::Write(WriteError::Fatal(m)),
            Outcome::GaveUp(p) => MembershipError::Write(WriteError::NoQuorum(
                self.no_quorum_message(what, started.elapsed(), &p),
            )),
        }
    }

    fn not_leader_error(&self) -> MembershipError {
        let (leader_id, leader_addr) = match self.leader_addr() {
            Some((id, addr)) => (Some(id), Some(addr)),
            None => (self.metrics().current_leader, None),
        };
        MembershipError::Write(WriteError::NotLeader {
            leader_id,
            leader_addr,
        })
    }

    /// Whether this node believes it is the leader (it may have been deposed without knowing).
    /// Its state must say so too: after a restart the metrics name the leader of the node's
    /// last committed vote, which may be this node, while it is a follower or learner.
    pub fn is_leader(&self) -> bool {
        let m = self.metrics();
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id())
    }

    /// Confirms with a quorum that this node still leads, before it answers from its own view
    /// of the membership (a deposed leader's view may be stale).
    async fn confirm_leader(&self, deadline: Instant) -> Result<(), MembershipError> {
        if !self.is_leader() {
            return Err(self.not_leader_error());
        }
        self.read_index_here(deadline).await?;
        Ok(())
    }

    async fn lock_membership(
        &self,
        deadline: Instant,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, MembershipError> {
        tokio::time::timeout_at(deadline, self.inner.membership_lock.lock())
            .await
            .map_err(|_| {
                MembershipError::Other(
                    "another membership change on the leader did not finish in time".to_string(),
                )
            })
    }

    /// Add a member; this node must be the leader.
    pub(crate) async fn add_member_here(
        &self,
        node_id: NodeId,
        addr: String,
        fresh: bool,
        deadline: Instant,
    ) -> Result<(), MembershipError> {
        let _guard = self.lock_membership(deadline).await?;
        self.confirm_leader(deadline).await?;
        let config = self.metrics().membership_config.clone();
        let membership = config.membership();
        if let Some(existing) = membership.get_node(&node_id) {
            if existing.addr != addr {
                return Err(MembershipError::DuplicateId {
                    node_id,
                    existing_addr: existing.addr.clone(),
                });
            }
        }
        if let Some((other, _)) = membership
            .nodes()
            .find(|(id, n)| **id != node_id && n.addr == addr)
        {
            return Err(MembershipError::Other(format!(
                "address {addr} already belongs to node {other}; remove node {other} first"
            )));
        }
        if is_settled_voter(membership, node_id) {
            if fresh {
                // Its log and vote are gone: counting it as a voter again could let a majority
                // form without the entries it had acknowledged.
                return Err(MembershipError::Other(format!(
                    "node {node_id} is already a voter at {addr} but started with empty \
                     storage (its data dir was lost or replaced); remove node {node_id} first, \
                     then join again"
                )));
            }
            tracing::info!(node_id, addr, "already a voter at this address");
            return Ok(());
        }
        let added_now = membership.get_node(&node_id).is_none();
        if added_now {
            self.probe(node_id, &addr, deadline).await?;
            tracing::info!(node_id, addr, "adding learner");
            self.change_membership_here(
                ChangeMembers::AddNodes(BTreeMap::from([(node_id, BasicNode::new(&addr))])),
                true,
                deadline,
            )
            .await?;
        }
        if let Err(e) = self.await_caught_up(node_id, &addr, deadline).await {
            if added_now {
                let cleanup = Instant::now() + LEARNER_CLEANUP_TIMEOUT;
                let removed = self
                    .change_membership_here(
                        ChangeMembers::RemoveNodes(BTreeSet::from([node_id])),
                        false,
                        cleanup,
                    )
                    .await;
                if let Err(re) = removed {
                    tracing::warn!(node_id, error = %re, "could not remove the learner that failed to catch up");
                }
            }
            return Err(e);
        }
        tracing::info!(node_id, addr, "promoting learner to voter");
        self.change_membership_here(
            ChangeMembers::AddVoterIds(BTreeSet::from([node_id])),
            false,
            deadline,
        )
        .await?;
        tracing::info!(node_id, addr, "added voter");
        Ok(())
    }

    /// Check that the node at `addr` answers and is `node_id`.
    async fn probe(
        &self,
        node_id: NodeId,
        addr: &str,
        deadline: Instant,
    ) -> Result<(), MembershipError> {
        let timeout = STATUS_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
        let reply: Result<Result<ClusterStatus, WriteError>, CallError> = self
            .inner
            .peers
            .call(addr, Method::Status, &StatusRequest {}, timeout)
            .await;
        match reply {
            Ok(Ok(status)) if status.node_id == node_id => Ok(()),
            Ok(Ok(status)) => Err(MembershipError::Other(format!(
                "the node at {addr} is node {}, not node {node_id}",
                status.node_id
            ))),
            Ok(Err(e)) => Err(MembershipError::Other(format!(
                "node {node_id} at {addr} cannot report its status: {e}"
            ))),
            Err(e) => Err(MembershipError::Write(WriteError::Unreachable {
                node_id,
                addr: addr.to_string(),
                detail: e.detail().to_string(),
            })),
        }
    }

    /// Wait until the leader (this node) has replicated its current log to `node_id`.
    async fn await_caught_up(
        &self,
        node_id: NodeId,
        addr: &str,
        deadline: Instant,
    ) -> Result<(), MembershipError> {
        let me = self.node_id();
        let target = self.metrics().last_log_index.unwrap_or(0);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let matched_of = |m: &openraft::RaftMetrics<NodeId, BasicNode>| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&node_id))
                .map(|l| l.map(|l| l.index).unwrap_or(0))
        };
        let waited = self
            .inner
            .raft
            .wait(Some(remaining))
            .metrics(
                |m| m.current_leader != Some(me) || matched_of(m).is_some_and(|i| i >= target),
                "new member caught up",
            )
            .await;
        match waited {
            Ok(m) if m.current_leader == Some(me) => Ok(()),
            Ok(_) => Err(self.not_leader_error()),
            Err(WaitError::Timeout(..)) => Err(MembershipError::Other(format!(
                "node {node_id} at {addr} did not catch up within {:.1}s: it has log \
                 index {:?} of {target}",
                remaining.as_secs_f64(),
                matched_of(&self.metrics())
            ))),
            Err(WaitError::ShuttingDown) => Err(MembershipError::Write(WriteError::Fatal(
                format!("raft node {me} is shutting down"),
            ))),
        }
    }

    /// Propose a membership change on this node (the leader) and wait until it is committed;
    /// waits out a change still in progress.
    async fn change_membership_here(
        &self,
        changes: ChangeMembers<NodeId, BasicNode>,
        retain: bool,
        deadline: Instant,
    ) -> Result<(), MembershipError> {
        let raft = &self.inner.raft;
        loop {
            let waited = deadline.saturating_duration_since(Instant::now());
            let result =
                tokio::time::timeout_at(deadline, raft.change_membership(changes.clone(), retain))
                    .await;
            match result {
                Err(_) => {
                    return Err(MembershipError::Write(WriteError::NoQuorum(format!(
                        "membership change not committed within {:.1}s",
                        waited.as_secs_f64()
                    ))))
                }
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    return Err(MembershipError::Write(WriteError::not_leader(f)))
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(p),
                )))) => {
                    if Instant::now() + LEADER_RETRY_PAUSE_MAX >= deadline {
                        return Err(MembershipError::Other(p.to_string()));
                    }
                    // The previous change commits within a heartbeat or two.
                    tokio::time::sleep(LEADER_RETRY_PAUSE_MAX).await;
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                    return Err(MembershipError::Other(e.to_string()))
                }
                Ok(Err(RaftError::Fatal(f))) => {
                    return Err(MembershipError::Write(WriteError::Fatal(f.to_string())))
                }
            }
        }
    }

    /// Remove node `node_id` from the cluster (voter or learner), through the leader. Refuses to
    /// remove the last voter. Removing the leader itself works: it commits the new
    /// configuration and then steps down. The removed node keeps running until shut down.
    pub async fn remove_member(&self, node_id: NodeId) -> Result<(), MembershipError> {
        self.remove_member_until(node_id, Instant::now() + MEMBERSHIP_CHANGE_TIMEOUT)
            .await
    }

    async fn remove_member_until(
        &self,
        node_id: NodeId,
        deadline: Instant,
    ) -> Result<(), MembershipError> {
        self.membership_via_leader(
            "remove member",
            deadline,
            |deadline| self.remove_member_here(node_id, deadline),
            Method::RemoveMember,
            |timeout_ms| RemoveMemberRequest {
                node_id,
                timeout_ms,
            },
        )
        .await
    }

    /// Remove a member; this node must be the leader.
    pub(crate) async fn remove_member_here(
        &self,
        node_id: NodeId,
        deadline: Instant,
    ) -> Result<(), MembershipError> {
        let _guard = self.lock_membership(deadline).await?;
        self.confirm_leader(deadline).await?;
        let config = self.metrics().membership_config.clone();
        let membership = config.membership();
        if membership.get_node(&node_id).is_none() {
            return Err(MembershipError::NotMember(node_id));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let changes = if voters.contains(&node_id) {
            if voters.len() == 1 {
                return Err(MembershipError::LastVoter(node_id));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))
        };
        tracing::info!(node_id, "removing member");
        self.change_membership_here(changes, false, deadline)
            .await?;
        tracing::info!(node_id, "removed member");
        Ok(())
    }

    /// This node's view of the cluster. Members' `matched_index`/`lag` come from the leader's
    /// replication progress: this node's own when it leads, otherwise asked of the leader over
    /// the peer RPC ([`WriteError::Unreachable`] if it cannot be asked). With no leader known
    /// (or on a node without a peer server) they are `None`.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, WriteError> {
        let mut status = self.status_here().await?;
        let Some(leader_id) = status.leader_id else {
            return Ok(status);
        };
        if leader_id == status.node_id {
            return Ok(status);
        }
        let Some((_, addr)) = self.leader_addr() else {
            return Ok(status);
        };
        let reply: Result<Result<ClusterStatus, WriteError>, CallError> = self
            .inner
            .peers
            .call(&addr, Method::Status, &StatusRequest {}, STATUS_TIMEOUT)
            .await;
        match reply {
            Ok(Ok(leader_view)) => {
                if leader_view.leader_id == Some(leader_id) {
                    status.members = leader_view.members;
                }
                Ok(status)
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(WriteError::Unreachable {
                node_id: leader_id,
                addr,
                detail: e.detail().to_string(),
            }),
        }
    }

    /// This node's own view (the leader's includes replication progress).
    pub(crate) async fn status_here(&self) -> Result<ClusterStatus, WriteError> {
        let committed = self
            .inner
            .raft
            .with_raft_state(|st| st.committed.map(|l| l.index))
            .await
            .map_err(|f| WriteError::Fatal(f.to_string()))?;
        let m = self.metrics();
        let last = m.last_log_index.unwrap_or(0);
        let leading = m.state == ServerState::Leader;
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched_index = if leading {
                    match m.replication.as_ref().and_then(|r| r.get(id)) {
                        Some(l) => Some(l.map(|l| l.index).unwrap_or(0)),
                        None if *id == self.node_id() => Some(last),
                        None => None,
                    }
                } else {
                    None
                };
                MemberStatus {
                    node_id: *id,
                    addr: node.addr.clone(),
                    voter: voters.contains(id),
                    matched_index,
                    lag: matched_index.map(|i| last.saturating_sub(i)),
                }
            })
            .collect();
        Ok(ClusterStatus {
            node_id: self.node_id(),
            leader_id: m.current_leader,
            term: m.current_term,
            state: format!("{:?}", m.state),
            last_log_index: last,
            committed_index: committed.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            members,
        })
    }

    /// The current leader as this node knows it, with its advertised address.
    pub fn leader_addr(&self) -> Option<(NodeId, String)> {
        let m = self.metrics();
        let leader = m.current_leader?;
        let node = m.membership_config.membership().get_node(&leader)?;
        Some((leader, node.addr.clone()))
    }

    /// Move leadership to voter `to` (or, with `None`, to the most up-to-date other voter);
    /// returns the new leader's id, which may differ from `to` if another voter won the
    /// election. openraft 0.9 has no leadership-transfer API, so this is built from what it
    /// has: the leader stops sending heartbeats and stops standing for election, and asks the
    /// target to stand for election now (`trigger().elect()`), until someone else leads or
    /// [`LEADER_TRANSFER_TIMEOUT`] passes; then the old leader's timers are restored. Writes may
    /// stall for up to about an election timeout meanwhile.
    pub async fn transfer_leadership(&self, to: Option<NodeId>) -> Result<NodeId, MembershipError> {
        self.membership_via_leader(
            "leadership transfer",
            Instant::now() + LEADER_TRANSFER_TIMEOUT,
            |deadline| self.transfer_leadership_here(to, deadline),
            Method::TransferLeader,
            |timeout_ms| TransferLeaderRequest { to, timeout_ms },
        )
        .await
    }

    /// Ask the leader to step down: leadership moves to the most up-to-date other voter
    /// ([`RaftNode::transfer_leadership`] with no target). May be called on any member; returns
    /// the new leader's id. A single-voter cluster has no one to hand over to
    /// ([`MembershipError::Other`]).
    pub async fn step_down(&self) -> Result<NodeId, MembershipError> {
        self.transfer_leadership(None).await
    }

    /// Hand leadership over; this node must be the leader.
    pub(crate) async fn transfer_leadership_here(
        &self,
        to: Option<NodeId>,
        deadline: Instant,
    ) -> Result<NodeId, MembershipError> {
        let me = self.node_id();
        if !self.is_leader() {
            return Err(self.not_leader_error());
        }
        let _guard = self.lock_membership(deadline).await?;
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let target = match to {
            Some(t) if t == me => return Ok(me),
            Some(t) if voters.contains(&t) => t,
            Some(t) if membership.get_node(&t).is_some() => {
                return Err(MembershipError::Other(format!(
                    "node {t} is a learner, not a voter: it cannot lead"
                )))
            }
            Some(t) => return Err(MembershipError::NotMember(t)),
            None => {
                let matched = |id: &NodeId| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map(|l| l.index)
                };
                voters
                    .iter()
                    .filter(|v| **v != me)
                    .max_by_key(|v| (matched(v), std::cmp::Reverse(**v)))
                    .copied()
                    .ok_or_else(|| {
                        MembershipError::Other("no other voter to hand leadership to".to_string())
                    })?
            }
        };
        let addr = membership
            .get_node(&target)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        tracing::info!(from = me, to = target, "transferring leadership");

        let raft = &self.inner.raft;
        raft.runtime_config().heartbeat(false);
        raft.runtime_config().elect(false);
        let result = self.await_new_leader(target, &addr, deadline).await;
        raft.runtime_config().heartbeat(true);
        raft.runtime_config().elect(true);
        result
    }

    async fn await_new_leader(
        &self,
        target: NodeId,
        addr: &str,
        deadline: Instant,
    ) -> Result<NodeId, MembershipError> {
        let me = self.node_id();
        let mut problem = String::from("no election happened");
        let round = Duration::from_millis(2 * ELECTION_TIMEOUT_MAX_MS);
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(MembershipError::Other(format!(
                    "leadership did not move to node {target} in time: {problem}"
                )));
            }
            let body = Body::Raft {
                target,
                json: b"null".to_vec(),
            };
            let rpc = self
                .inner
                .peers
                .unary(addr, Method::Elect, body, ELECT_RPC_TIMEOUT)
                .await
                .and_then(|reply| decode_reply::<Result<(), String>>(addr, Method::Elect, &reply));
            match rpc {
                Ok(Ok(())) => {}
                Ok(Err(e)) => problem = format!("node {target}: {e}"),
                Err(e) => problem = format!("node {target} at {addr}: {e}"),
            }
            let wait = round.min(deadline.saturating_duration_since(Instant::now()));
            let waited = self
                .inner
                .raft
                .wait(Some(wait))
                .metrics(
                    |m| m.current_leader.is_some_and(|l| l != me),
                    "leadership moved",
                )
                .await;
            match waited {
                Ok(m) => {
                    let leader = m.current_leader.unwrap_or(target);
                    tracing::info!(from = me, to = leader, "leadership transferred");
                    return Ok(leader);
                }
                Err(WaitError::Timeout(..)) => continue,
                Err(WaitError::ShuttingDown) => {
                    return Err(MembershipError::Write(WriteError::Fatal(format!(
                        "raft node {me} is shutting down"
                    ))))
                }
            }
        }
    }

    /// Stand for election now (the target's half of a leadership transfer).
    pub(crate) async fn elect_here(&self) -> Result<(), String> {
        let m = self.metrics();
        if m.state == ServerState::Leader {
            return Ok(());
        }
        if !self.is_voter_here() {
            return Err(format!("node {} is not a voter", self.node_id()));
        }
        self.inner
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::Membership;

    fn nodes(ids: &[NodeId]) -> BTreeMap<NodeId, BasicNode> {
        ids.iter()
            .map(|&id| (id, BasicNode::new(format!("10.0.0.{id}:7000"))))
            .collect()
    }

    #[test]
    fn a_node_only_the_old_voter_set_of_a_joint_change_has_is_not_a_settled_voter() {
        let joint = Membership::new(
            vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([1, 2])],
            nodes(&[1, 2, 3]),
        );
        assert!(
            joint.voter_ids().any(|v| v == 3),
            "openraft counts both sets"
        );
        assert!(!is_settled_voter(&joint, 3), "on its way out");
        assert!(is_settled_voter(&joint, 1));
        let joining = Membership::new(
            vec![BTreeSet::from([1, 2]), BTreeSet::from([1, 2, 3])],
            nodes(&[1, 2, 3]),
        );
        assert!(is_settled_voter(&joining, 3), "on its way in");
        let uniform = Membership::new(vec![BTreeSet::from([1, 2])], nodes(&[1, 2, 3]));
        assert!(!is_settled_voter(&uniform, 3), "a learner");
        assert!(!is_settled_voter(&uniform, 9), "not a member");
    }
}
