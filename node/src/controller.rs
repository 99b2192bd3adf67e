//! The rollout controller (issue 15): on the leader only, every [`CONTROLLER_INTERVAL`], it
//! moves each unpaused rollout whose step has held its duration (and seen the requests its
//! bounds ask for) to the next step, as a replicated `AdvanceRollout` naming the step it saw.
//! Apply takes a step only from the step in force, so a leader change neither skips nor
//! repeats one: the old leader's late copy is refused. Rolling back on a breach is not the
//! controller's: the serving report that puts the target out of bounds does it in apply.

use std::sync::Weak;
use std::time::Duration;

use quiver_transfer::{ChunkPeers, ChunkSource};
use tokio::sync::watch;

use crate::command::Op;
use crate::deploy;
use crate::domain::Actor;
use crate::error::NodeError;
use crate::node::{Consistency, Node};

/// How often the leader looks for steps that have held.
pub const CONTROLLER_INTERVAL: Duration = Duration::from_millis(500);

/// A rollout step that has held: (endpoint, model, step in force).
pub type Due = (String, String, u32);

impl<S: ChunkSource + Clone, P: ChunkPeers> Node<S, P> {
    /// One pass of the controller: on the leader, every step due moves on. Returns how many did.
    pub async fn control_once(&self) -> Result<usize, NodeError> {
        if self.raft.metrics().current_leader != Some(self.node_id()) {
            return Ok(0);
        }
        let now = self.clock.now_ms();
        let due = self
            .read(Consistency::Stale, move |app, txn| {
                let mut due = Vec::new();
                let mut after = String::new();
                loop {
                    let (page, next) = app.list_deployments(txn, None, &after, 0)?;
                    for d in page {
                        let Some(r) = &d.rollout else { continue };
                        if r.paused {
                            continue;
                        }
                        let held = now.saturating_sub(r.step_started_ms).max(0) as u64;
                        if held < r.plan[r.step].duration_ms {
                            continue;
                        }
                        // A next share the target's stage does not allow waits (for a
                        // promotion) rather than fill the log with refusals.
                        if let Some(next) = r.plan.get(r.step + 1) {
                            let stage = app.get_version(txn, &d.model, r.target)?.stage;
                            let allowed =
                                deploy::traffic_allowed(&d.model, r.target, stage, next.percent);
                            if allowed.is_err() {
                                continue;
                            }
                        }
                        if r.bounds.min_requests > 0 {
                            let reports = app.serving_reports(txn, &d.endpoint)?;
                            let (requests, _, _) =
                                deploy::aggregate(&reports, d.generation, r.target);
                            if requests < r.bounds.min_requests {
                                continue;
                            }
                        }
                        due.push((d.endpoint.clone(), d.model.clone(), r.step as u32));
                    }
                    match next {
                        Some(n) => after = n,
                        None => return Ok(due),
                    }
                }
            })
            .await?;
        let actor = Actor {
            name: crate::auth::node_principal(self.node_id()),
            authenticated: true,
        };
        let mut moved = 0;
        for (endpoint, model, from_step) in due {
            let op = Op::AdvanceRollout {
                endpoint,
                model,
                from_step,
            };
            match self.propose(actor.clone(), op).await {
                Ok(_) => moved += 1,
                // Moved meanwhile, paused, rolled back, or a stage that does not allow the
                // next share yet: the next pass looks again.
                Err(NodeError::Rejected(e)) => tracing::debug!("rollout not moved: {e}"),
                Err(e) => return Err(e),
            }
        }
        Ok(moved)
    }
}

/// Runs [`Node::control_once`] every [`CONTROLLER_INTERVAL`] until `stop`.
pub(crate) async fn controller_loop<S: ChunkSource + Clone, P: ChunkPeers>(
    node: Weak<Node<S, P>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CONTROLLER_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        let Some(node) = node.upgrade() else { return };
        if *stop.borrow() {
            return;
        }
        if let Err(e) = node.control_once().await {
            tracing::debug!("controller pass failed: {e}");
        }
    }
}
