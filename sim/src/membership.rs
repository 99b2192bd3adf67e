//! The chaos schedule's membership changes, made as an admin and a returning node make them:
//! through a node's own entry points (`Node::step_down`, `Node::remove_member`,
//! `Node::rejoin`), which reach the leader over the simulated peer network with its faults.
//!
//! Each change runs on a task of its own (a change may wait on an election or a quorum for
//! many seconds) and ends with what it did in the trace. A step-down or removal that fails under
//! faults is an outcome, not a violation; a removed node that cannot get back in once every
//! fault has healed is ([`REJOIN_TIMEOUT`]).

use std::sync::Arc;
use std::time::Duration;

use quiver_node::domain::Actor;
use quiver_node::NodeError;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::check::Violation;
use crate::cluster::Cluster;
use crate::net::peer_addr;
use crate::schedule::NodeId;
use crate::trace::SharedTrace;

/// How long a removed node keeps asking to rejoin (it waits while it is down, and every
/// attempt is bounded by the Raft layer's own join timeout).
pub const REJOIN_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest wait for one rejoin attempt: a request or reply lost on the way would otherwise hold
/// the attempt for the Raft layer's whole join timeout (65 s), past the healing of the faults.
const REJOIN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between two rejoin attempts, or two looks at whether the node is up.
const REJOIN_RETRY: Duration = Duration::from_millis(200);

/// A membership change in flight: what it found wrong when it is done, if anything.
pub type Change = JoinHandle<Option<Violation>>;

fn admin() -> Actor {
    crate::cluster::sim_admin()
}

/// Node `via` is asked to have the leader step down.
pub fn step_down(cluster: &Arc<Cluster>, trace: &SharedTrace, via: NodeId) -> Option<Change> {
    let node = cluster.node(via)?;
    Some(traced(trace, format!("step-down via n{via}"), async move {
        node.step_down()
            .await
            .map(|leader| format!("n{leader} leads"))
    }))
}

/// Node `via` is asked to remove `victim` from the cluster.
pub fn remove(
    cluster: &Arc<Cluster>,
    trace: &SharedTrace,
    via: NodeId,
    victim: NodeId,
) -> Option<Change> {
    let node = cluster.node(via)?;
    Some(traced(
        trace,
        format!("remove n{victim} via n{via}"),
        async move {
            node.remove_member(admin(), victim)
                .await
                .map(|()| "done".to_string())
        },
    ))
}

/// Runs `change` on a task of its own and traces how it ended; its failure under faults is an
/// outcome, not a violation.
fn traced(
    trace: &SharedTrace,
    what: String,
    change: impl std::future::Future<Output = Result<String, NodeError>> + Send + 'static,
) -> Change {
    let trace = trace.clone();
    tokio::spawn(async move {
        match change.await {
            Ok(outcome) => trace.record(format!("{what}: {outcome}")),
            Err(e) => trace.record(format!("{what} failed: {e}")),
        }
        None
    })
}

/// Once `removal` is over, node `id` asks the other nodes in turn to add it back, waiting while
/// it is down, until it is a voter again or [`REJOIN_TIMEOUT`] passes.
pub fn rejoin(
    cluster: &Arc<Cluster>,
    trace: &SharedTrace,
    id: NodeId,
    removal: Option<Change>,
) -> Change {
    let (cluster, trace) = (cluster.clone(), trace.clone());
    tokio::spawn(async move {
        if let Some(removal) = removal {
            let _ = removal.await;
        }
        let deadline = Instant::now() + REJOIN_TIMEOUT;
        let others: Vec<NodeId> = cluster.ids().iter().copied().filter(|&o| o != id).collect();
        let mut last = String::from("it was never up");
        for attempt in 0usize.. {
            if Instant::now() >= deadline {
                break;
            }
            if let Some(node) = cluster.node(id) {
                let via = others[attempt % others.len()];
                let attempt =
                    tokio::time::timeout(REJOIN_ATTEMPT_TIMEOUT, node.rejoin(&peer_addr(via)))
                        .await
                        .unwrap_or_else(|_| {
                            Err(NodeError::Unreachable(format!(
                                "no answer within {} s",
                                REJOIN_ATTEMPT_TIMEOUT.as_secs()
                            )))
                        });
                match attempt {
                    Ok(()) => {
                        trace.record(format!("rejoin n{id} via n{via}: a voter again"));
                        return None;
                    }
                    Err(e) => {
                        last = e.to_string();
                        trace.record(format!("rejoin n{id} via n{via} failed: {e}"));
                    }
                }
            }
            tokio::time::sleep(REJOIN_RETRY).await;
        }
        Some(Violation::new(
            "membership",
            format!(
                "n{id} was removed and could not rejoin within {} s: {last}",
                REJOIN_TIMEOUT.as_secs()
            ),
        ))
    })
}
