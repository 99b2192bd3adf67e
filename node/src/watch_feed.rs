//! A watch as a node serves it (decision 0024): where it starts, and each next batch of events,
//! read from this node's applied state and woken by its applies. The gRPC service and the
//! simulator call these same two entry points.

use std::time::Duration;

use quiver_transfer::{ChunkPeers, ChunkSource};

use crate::domain::DomainError;
use crate::error::NodeError;
use crate::node::{Consistency, Node};
use crate::watch::{ahead_message, WatchFilter, WatchRead};

impl<S: ChunkSource + Clone, P: ChunkPeers> Node<S, P> {
    /// Where a watch with `filter` starts: after `after`, or after the latest revision when
    /// none is given. Confirmed with the leader first (a linearizable read), so that a watcher
    /// moving to a node behind the one it left is refused nothing it saw, and a revision beyond
    /// the cluster's is refused naming the field.
    pub async fn watch_start(
        &self,
        filter: &WatchFilter,
        after: Option<u64>,
    ) -> Result<u64, NodeError> {
        filter.check()?;
        let latest = self
            .read(Consistency::Linearizable, |app, txn| {
                if let Some(model) = filter.model() {
                    app.get_model(txn, model)?;
                }
                if let WatchFilter::Endpoint(endpoint) = filter {
                    app.get_deployment(txn, endpoint)?;
                }
                app.watch_revision(txn)
            })
            .await?;
        match after {
            None => Ok(latest),
            Some(after) if after > latest => Err(NodeError::Rejected(DomainError::invalid(
                "after_revision",
                ahead_message(after, latest),
            ))),
            // PLANTED BUG (test-only, see `PlantedNodeBugs`): the resumed watch starts one late.
            Some(after) if self.core.planted_node.watch_resume_skips_one => {
                Ok(after.saturating_add(1))
            }
            Some(after) => Ok(after),
        }
    }

    /// The next events after revision `after` that `filter` asks for, as soon as there are
    /// some; with none after `wait`, an empty batch whose `through` says how far this node has
    /// looked (a watcher resumes after it). `Behind` when the events it needs are no longer
    /// kept.
    pub async fn watch_next(
        &self,
        filter: &WatchFilter,
        mut after: u64,
        wait: Duration,
    ) -> Result<WatchRead, NodeError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut metrics = self.raft.raft().metrics();
        loop {
            let applied = metrics.borrow_and_update().last_applied;
            let read = self
                .read(Consistency::Stale, |app, txn| {
                    app.watch_read(txn, filter, after)
                })
                .await?;
            match read {
                WatchRead::Events { events, through } if events.is_empty() => {
                    if through > after {
                        // A scan cut short at its limit: read on without waiting.
                        after = through;
                        continue;
                    }
                }
                read => return Ok(read),
            }
            // Nothing new: wait until this node applies something, or the deadline.
            loop {
                match tokio::time::timeout_at(deadline, metrics.changed()).await {
                    Err(_) => {
                        return Ok(WatchRead::Events {
                            events: Vec::new(),
                            through: after,
                        })
                    }
                    Ok(Err(_)) => {
                        return Err(NodeError::Fatal(format!(
                            "node {}: consensus stopped while a watch waited",
                            self.node_id()
                        )))
                    }
                    Ok(Ok(())) if metrics.borrow_and_update().last_applied != applied => break,
                    Ok(Ok(())) => {}
                }
            }
        }
    }
}
