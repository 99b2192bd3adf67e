//! Simulated watchers and hostile watch starts (decision 0024, issue 15), through the two entry
//! points the gRPC Watch service calls: `Node::watch_start` and `Node::watch_next`.
//!
//! A watcher follows a filter through a node drawn from its own seeded RNG: it starts a watch
//! there, then takes batch after batch (each waits at most [`WATCH_WAIT`] of virtual time). On an
//! error (the node crashed, was cut off, shut down) or once its stay on that node is over (drawn
//! from [`WATCH_STAY_MS`]) it moves to another node and resumes after the last revision a batch
//! told it it had read through, as the SDK's `Watcher` does. What it received is recorded
//! ([`WatcherLog`]) for [`crate::check_watch`]. Watchers stop with the pipelines.
//!
//! Before one start in [`HOSTILE_WATCH_ONE_IN`] a watcher first sends that node a hostile watch
//! start ([`crate::hostile::hostile_watch`], drawn from its own RNG, so the pipelines' draws are
//! unchanged): it must be refused (`Rejected`, `Invalid`), never accepted nor failed as storage
//! or consensus failing, and must not move the node's watch revision (`watch-failed`
//! otherwise).

use std::sync::Arc;
use std::time::Duration;

use quiver_node::watch::{WatchFilter, WatchRead};
use quiver_node::NodeError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::check::{Expect, Violation};
use crate::check_watch::WatcherLog;
use crate::client::{first_line, Clients, CLIENT_OP_TIMEOUT};
use crate::cluster::SimNode;
use crate::net::LINK_LATENCY_US;
use crate::schedule::NodeId;

/// Watchers in a chaos run: one of everything, one of a pipeline's first model.
pub const WATCHERS: usize = 2;
/// How long one `watch_next` waits for a matching event before an empty batch.
pub const WATCH_WAIT: Duration = Duration::from_millis(1_500);
/// How long a watcher stays on one node before it moves on (absent an error), drawn from this
/// range (virtual ms).
pub const WATCH_STAY_MS: (u64, u64) = (500, 5_000);
/// Pause before another attempt after a failed start, or while a watcher's model is unknown.
pub const WATCH_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// A watcher about to start a watch on a node first sends it a hostile watch start one time in
/// this many.
pub const HOSTILE_WATCH_ONE_IN: u32 = 3;

/// What watcher `index` follows: everything (the first), or the first model a pipeline drawn
/// from `rng` creates.
enum Follow {
    All,
    FirstModelOf(usize),
}

impl Clients {
    /// Watcher `index`'s loop (see the module docs) with its own `seed`, until the pipelines
    /// stop; what it received.
    pub async fn run_watcher(
        self: Arc<Self>,
        index: usize,
        pipelines: usize,
        seed: u64,
    ) -> WatcherLog {
        let mut rng = StdRng::seed_from_u64(seed);
        let follow = match index {
            0 => Follow::All,
            _ => Follow::FirstModelOf(rng.gen_range(0..pipelines.max(1))),
        };
        let name = format!("w{index}");
        let mut log: Option<WatcherLog> = None;
        let ids = self.cluster.ids().to_vec();
        'watch: while !self.stopped() {
            let w = match &mut log {
                Some(w) => w,
                None => match self.filter_of(&follow) {
                    Some(filter) => log.insert(WatcherLog::new(name.clone(), filter)),
                    None => {
                        tokio::time::sleep(WATCH_RETRY_PAUSE).await;
                        continue;
                    }
                },
            };
            let id = ids[rng.gen_range(0..ids.len())];
            let Some(node) = self.cluster.node(id) else {
                tokio::time::sleep(WATCH_RETRY_PAUSE).await;
                continue;
            };
            if rng.gen_ratio(1, HOSTILE_WATCH_ONE_IN) {
                self.hostile_watch(&name, &mut rng, id, &node).await;
            }
            let resume = w.started.map(|_| w.through);
            tokio::time::sleep(latency(&mut rng)).await;
            let start =
                tokio::time::timeout(CLIENT_OP_TIMEOUT, node.watch_start(&w.filter, resume)).await;
            tokio::time::sleep(latency(&mut rng)).await;
            let mut after = match start {
                Ok(Ok(after)) => after,
                Ok(Err(e @ (NodeError::Rejected(_) | NodeError::Invalid(_)))) => {
                    // Its filter names a model that exists and its revision came from a watch:
                    // a refusal is a bug, unless the node went down while it asked.
                    if self.still_up(id, &node) {
                        self.violation(Violation::new(
                            "watch-refused",
                            format!(
                                "{name} ({:?}) resuming after {resume:?} via n{id} was refused: {}",
                                w.filter,
                                first_line(&e.to_string())
                            ),
                        ));
                    }
                    tokio::time::sleep(WATCH_RETRY_PAUSE).await;
                    continue;
                }
                Ok(Err(e)) => {
                    self.trace.record(format!(
                        "{name} start via n{id} failed: {}",
                        first_line(&e.to_string())
                    ));
                    tokio::time::sleep(WATCH_RETRY_PAUSE).await;
                    continue;
                }
                Err(_) => {
                    self.trace
                        .record(format!("{name} start via n{id}: no answer in time"));
                    continue;
                }
            };
            // The service's first batch says where the watch starts: the watcher resumes from it.
            w.started.get_or_insert(after);
            w.through = after;
            self.count(|s| s.watch_starts += 1);
            self.trace
                .record(format!("{name} watches via n{id} after revision {after}"));
            let stay = Duration::from_millis(rng.gen_range(WATCH_STAY_MS.0..=WATCH_STAY_MS.1));
            let leave_at = tokio::time::Instant::now() + stay;
            while tokio::time::Instant::now() < leave_at {
                if self.stopped() {
                    break 'watch;
                }
                let next = tokio::time::timeout(
                    WATCH_WAIT + CLIENT_OP_TIMEOUT,
                    node.watch_next(&w.filter, after, WATCH_WAIT),
                )
                .await;
                tokio::time::sleep(latency(&mut rng)).await;
                match next {
                    Ok(Ok(WatchRead::Events { events, through })) => {
                        if !events.is_empty() {
                            self.trace.record(format!(
                                "{name} via n{id}: revisions {}..={} ({} events), through {through}",
                                events[0].revision,
                                events[events.len() - 1].revision,
                                events.len()
                            ));
                        }
                        self.count(|s| s.watch_events += events.len() as u64);
                        w.events.extend(events.into_iter().map(|e| (id, e)));
                        after = through;
                        w.through = through;
                    }
                    Ok(Ok(WatchRead::Behind {
                        oldest_kept,
                        latest,
                    })) => {
                        // Re-reading the state is not simulated: the watcher stops here.
                        self.trace.record(format!(
                            "{name} via n{id}: behind (oldest kept {oldest_kept}, latest {latest})"
                        ));
                        w.behind.push((id, oldest_kept, latest));
                        break 'watch;
                    }
                    Ok(Err(e)) => {
                        self.trace.record(format!(
                            "{name} via n{id} failed: {}",
                            first_line(&e.to_string())
                        ));
                        break;
                    }
                    Err(_) => {
                        self.trace
                            .record(format!("{name} via n{id}: no batch in time"));
                        break;
                    }
                }
            }
        }
        log.unwrap_or_else(|| WatcherLog::new(name, WatchFilter::All))
    }

    /// The filter `follow` asks for, once it is known.
    fn filter_of(&self, follow: &Follow) -> Option<WatchFilter> {
        match follow {
            Follow::All => Some(WatchFilter::All),
            Follow::FirstModelOf(pipeline) => {
                self.acks().into_iter().find_map(|a| match a.expect {
                    Expect::Model { name } if a.client == *pipeline => {
                        Some(WatchFilter::Model(name))
                    }
                    _ => None,
                })
            }
        }
    }

    /// The models acknowledged as created so far.
    fn known_models(&self) -> Vec<String> {
        self.acks()
            .into_iter()
            .filter_map(|a| match a.expect {
                Expect::Model { name } => Some(name),
                _ => None,
            })
            .collect()
    }

    /// Whether `node` is still node `id`'s running incarnation (not crashed since).
    fn still_up(&self, id: NodeId, node: &Arc<SimNode>) -> bool {
        self.cluster
            .node(id)
            .is_some_and(|now| Arc::ptr_eq(&now, node))
    }

    /// A hostile watch start ([`crate::hostile::hostile_watch`]) by watcher `name` on node `id`:
    /// refused, and the node's watch revision unmoved by it (see the module docs).
    async fn hostile_watch(&self, name: &str, rng: &mut StdRng, id: NodeId, node: &Arc<SimNode>) {
        // The node's applied index and watch revision, in one read.
        let revision = |node: &SimNode| {
            node.raft
                .read_applied(|app, txn| {
                    app.watch_revision(txn).map_err(|e| anyhow::anyhow!("{e}"))
                })
                .ok()
        };
        let before = revision(node);
        let models = self.known_models();
        let latest = before.map_or(0, |(_, r)| r);
        let (label, filter, after) = crate::hostile::hostile_watch(rng, &models, latest);
        self.count(|s| s.watches_hostile += 1);
        tokio::time::sleep(latency(rng)).await;
        let answer =
            tokio::time::timeout(CLIENT_OP_TIMEOUT, node.watch_start(&filter, after)).await;
        let moved = match (before, revision(node)) {
            // Nothing applied meanwhile, yet the revision moved: the start changed the state.
            (Some((index, r0)), Some((index_after, r1))) if index == index_after && r0 != r1 => {
                Some((r0, r1))
            }
            _ => None,
        };
        tokio::time::sleep(latency(rng)).await;
        let failed = |detail: String| {
            self.violation(Violation::new(
                "watch-failed",
                format!("{name}'s {label} via n{id}: {detail}"),
            ))
        };
        if let Some((r0, r1)) = moved {
            failed(format!(
                "the watch revision moved from {r0} to {r1} with nothing applied"
            ));
        }
        match answer {
            Ok(Err(NodeError::Rejected(e))) => {
                self.count(|s| s.watches_hostile_refused += 1);
                self.trace.record(format!(
                    "{name} {label} via n{id}: refused: {}",
                    first_line(&e.to_string())
                ));
            }
            Ok(Err(NodeError::Invalid(e))) => {
                self.count(|s| s.watches_hostile_refused += 1);
                self.trace.record(format!(
                    "{name} {label} via n{id}: refused: {}",
                    first_line(&e)
                ));
            }
            Ok(Ok(start)) => failed(format!("accepted, to start after revision {start}")),
            Ok(Err(e @ (NodeError::Storage(_) | NodeError::Fatal(_))))
                if self.still_up(id, node) =>
            {
                failed(format!("failed: {}", first_line(&e.to_string())))
            }
            Ok(Err(e)) => self.trace.record(format!(
                "{name} {label} via n{id}: no answer: {}",
                first_line(&e.to_string())
            )),
            Err(_) => self
                .trace
                .record(format!("{name} {label} via n{id}: no answer in time")),
        }
    }
}

/// A client ↔ node hop, drawn from the watcher's own RNG (one region's link latency).
fn latency(rng: &mut StdRng) -> Duration {
    Duration::from_micros(rng.gen_range(LINK_LATENCY_US.0..=LINK_LATENCY_US.1))
}
