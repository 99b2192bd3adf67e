//! Simulated clients: each pipeline submits its ops one at a time through a random node.
//!
//! A registration first uploads its artifact through a random up node (the real `ChunkSink`,
//! see [`crate::chunks`]), trying another after a failure, and proposes the version only once
//! the upload succeeded; its acknowledgement is checked for W intact copies.
//!
//! The simulator plays the part of the registry's API front end: it fixes the actor and the
//! time in the `Command` (as `Node::propose` does) and routes it. Nodes are started without
//! forwarding, so a follower answers `NotLeader` naming the leader, and the client retries
//! there; a down node, a node without a leader, or a write that did not commit in time sends it
//! to another random node after a short pause. Only an `Ok` from the leader (committed and
//! applied there) is an acknowledgement — except with the planted bug
//! [`Plant::AckBeforeCommit`], which acknowledges as soon as a self-declared leader has taken
//! the command, and [`Plant::FollowerAppliesStageChange`], where a follower applies a stage
//! change to its own state machine (`RaftNode::apply_without_consensus`) and acknowledges it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use quiver_node::command::{Command, Op, RequestId, Response};
use quiver_node::domain::{Actor, DomainError};
use quiver_raft::WriteError;
use tokio::time::Instant;

use crate::check::{Ack, Expect, Violation};
use crate::chunks::{root_label, Chunks};
use crate::chunkstore::Corpus;
use crate::cluster::Cluster;
use crate::config::Plant;
use crate::schedule::NodeId;
use crate::trace::SharedTrace;
use crate::workload::Pipeline;

/// Virtual wall-clock time of the run's start, as stamped into commands (2023-11-14T22:13:20Z).
pub const EPOCH_MS: i64 = 1_700_000_000_000;
/// How long a client keeps trying one op before giving up.
pub const CLIENT_OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Most attempts (nodes tried) for one op.
pub const CLIENT_ATTEMPTS_MAX: u32 = 32;
/// Pause before trying another node after a failure, drawn from this range (ms).
pub const CLIENT_RETRY_PAUSE_MS: (u64, u64) = (20, 120);

/// Counters of what the clients did (and, as `ops`, the report's JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientStats {
    pub submitted: u64,
    pub acked: u64,
    pub rejected: u64,
    pub failed: u64,
    /// Acknowledged ops by kind, in kind order.
    pub acked_by_kind: std::collections::BTreeMap<&'static str, u64>,
}

/// What the clients share: the cluster, the trace, the planted bug, the stop flag, and the
/// log of acknowledgements.
pub struct Clients {
    pub cluster: Arc<Cluster>,
    pub chunks: Arc<Chunks>,
    pub trace: SharedTrace,
    pub plant: Option<Plant>,
    stop: AtomicBool,
    acks: Mutex<Vec<Ack>>,
    stats: Mutex<ClientStats>,
    violations: Mutex<Vec<Violation>>,
}

enum Outcome {
    Acked {
        response: Option<Response>,
        proposed_at_ms: u64,
        node: NodeId,
    },
    Rejected(DomainError),
    Failed(String),
}

impl Clients {
    pub fn new(
        cluster: Arc<Cluster>,
        chunks: Arc<Chunks>,
        trace: SharedTrace,
        plant: Option<Plant>,
    ) -> Arc<Self> {
        Arc::new(Clients {
            cluster,
            chunks,
            trace,
            plant,
            stop: AtomicBool::new(false),
            acks: Mutex::new(Vec::new()),
            stats: Mutex::new(ClientStats::default()),
            violations: Mutex::new(Vec::new()),
        })
    }

    /// Pipelines finish the op in hand and stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.acks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// What the clients saw that no correct cluster answers (false rejections); drains them.
    pub fn take_violations(&self) -> Vec<Violation> {
        std::mem::take(
            &mut *self
                .violations
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    pub fn stats(&self) -> ClientStats {
        self.stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn count(&self, f: impl FnOnce(&mut ClientStats)) {
        f(&mut self
            .stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()));
    }

    /// One pipeline's loop: next op, submit, learn, think; until stopped.
    pub async fn run_pipeline(self: Arc<Self>, mut p: Pipeline) {
        let think = p.think_ms();
        tokio::time::sleep(Duration::from_millis(think)).await;
        while !self.stop.load(Ordering::SeqCst) {
            let (seq, op) = p.next_op();
            let what = describe(&op);
            // The node the client talks to first stamps the time, by its own (maybe skewed)
            // clock, as `Node::propose` does; the stamp stays when the command is retried.
            let ids = self.cluster.ids();
            let first = ids[p.pick(ids.len())];
            let cmd = Command {
                actor: Actor {
                    name: p.actor.clone(),
                    authenticated: false,
                },
                at_ms: self
                    .cluster
                    .node_clock_ms(first, EPOCH_MS + self.trace.elapsed_ms() as i64),
                // One id per op, kept across retries, as `Node::propose` does (deterministic
                // here: the trace must not depend on entropy).
                request_id: (self.plant != Some(Plant::RetryWithoutRequestId))
                    .then(|| RequestId(format!("c{}-{seq}", p.id))),
                op,
            };
            self.count(|s| s.submitted += 1);
            self.trace.record(format!("c{} #{seq} submit {what}", p.id));
            let outcome = match p.take_artifact() {
                Some(corpus) => match self.upload(&mut p, &corpus, first).await {
                    Ok(node) => {
                        self.trace.record(format!(
                            "c{} #{seq} uploaded {} chunks via n{node}",
                            p.id,
                            corpus.chunks().len()
                        ));
                        self.submit(&mut p, &cmd, first).await
                    }
                    Err(e) => Outcome::Failed(format!("upload: {e}")),
                },
                None => self.submit(&mut p, &cmd, first).await,
            };
            match outcome {
                Outcome::Acked {
                    response,
                    proposed_at_ms,
                    node,
                } => match Pipeline::expect(&cmd.op, response.as_ref()) {
                    Some(expect) => {
                        p.learn(&expect);
                        if let Expect::Version {
                            model,
                            number,
                            root,
                        } = &expect
                        {
                            let label = root_label(model, *number, root);
                            match &cmd.op {
                                Op::CreateVersion {
                                    manifest,
                                    inline_chunks,
                                    ..
                                } if !inline_chunks.is_empty() => self
                                    .chunks
                                    .on_inline_version_acked(label, manifest, inline_chunks),
                                _ => self.chunks.on_version_acked(label, root),
                            }
                        }
                        self.trace
                            .record(format!("c{} #{seq} ack {expect} via n{node}", p.id));
                        self.count(|s| {
                            s.acked += 1;
                            *s.acked_by_kind.entry(expect.kind()).or_default() += 1;
                        });
                        self.acks
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .push(Ack {
                                client: p.id,
                                seq,
                                actor: cmd.actor.name.clone(),
                                at_ms: cmd.at_ms,
                                proposed_at_ms,
                                acked_at_ms: self.trace.elapsed_ms(),
                                expect,
                            });
                    }
                    None => {
                        self.trace
                            .record(format!("c{} #{seq} applied without effect", p.id));
                    }
                },
                Outcome::Rejected(e) => {
                    self.count(|s| s.rejected += 1);
                    self.trace.record(format!("c{} #{seq} rejected: {e}", p.id));
                    // The workload names every model and labels every artifact uniquely, so
                    // only the request itself can have created what it is rejected for.
                    if matches!(
                        e,
                        DomainError::ModelExists { .. } | DomainError::DuplicateBundle { .. }
                    ) {
                        self.violations
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .push(Violation::new(
                                "false-rejection",
                                format!(
                                    "client {} op #{seq} ({what}) was rejected by a copy of itself applied earlier: {e}",
                                    p.id
                                ),
                            ));
                    }
                }
                Outcome::Failed(e) => {
                    self.count(|s| s.failed += 1);
                    self.trace.record(format!("c{} #{seq} failed: {e}", p.id));
                }
            }
            tokio::time::sleep(Duration::from_millis(p.think_ms())).await;
        }
    }

    /// Upload `corpus` through node `first`, then random others after a failure (see the module
    /// docs), until [`CLIENT_OP_TIMEOUT`]; the node that took it.
    async fn upload(
        &self,
        p: &mut Pipeline,
        corpus: &Corpus,
        first: NodeId,
    ) -> Result<NodeId, String> {
        let ids = self.cluster.ids().to_vec();
        let deadline = Instant::now() + CLIENT_OP_TIMEOUT;
        let router = self.cluster.router().clone();
        let mut last = String::from("no attempt");
        let mut node = first;
        for _ in 0..CLIENT_ATTEMPTS_MAX {
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(router.client_latency()).await;
            if self.cluster.handle(node).is_none() {
                last = format!("n{node} is down");
            } else {
                match self.chunks.upload(node, corpus).await {
                    Ok(()) => return Ok(node),
                    Err(e) => last = format!("n{node}: {}", first_line(&e)),
                }
            }
            node = ids[p.pick(ids.len())];
            self.pause(p).await;
        }
        Err(last)
    }

    /// Route one command to the leader, starting at node `first` (see the module docs).
    async fn submit(&self, p: &mut Pipeline, cmd: &Command, first: NodeId) -> Outcome {
        let ids = self.cluster.ids().to_vec();
        let deadline = Instant::now() + CLIENT_OP_TIMEOUT;
        let mut target = first;
        let mut last = String::from("no attempt");
        let router = self.cluster.router().clone();
        for _ in 0..CLIENT_ATTEMPTS_MAX {
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(router.client_latency()).await;
            let Some(node) = self.cluster.handle(target) else {
                last = format!("n{target} is down");
                target = ids[p.pick(ids.len())];
                self.pause(p).await;
                continue;
            };
            let proposed_at_ms = self.trace.elapsed_ms();
            if self.plant == Some(Plant::AckBeforeCommit)
                && node.metrics().state == ServerState::Leader
            {
                // PLANTED BUG: hand the command over and call it done without waiting for it
                // to be committed.
                match node.raft().client_write_ff(vec![cmd.clone()]).await {
                    Ok(_ignored_reply) => {
                        return Outcome::Acked {
                            response: None,
                            proposed_at_ms,
                            node: target,
                        }
                    }
                    Err(e) => {
                        last = format!("n{target}: {e}");
                        target = ids[p.pick(ids.len())];
                        self.pause(p).await;
                        continue;
                    }
                }
            }
            if self.plant == Some(Plant::FollowerAppliesStageChange)
                && matches!(cmd.op, Op::SetStage { .. })
                && node.metrics().state == ServerState::Follower
            {
                // PLANTED BUG: the follower applies the stage change itself, skipping the
                // leader and the log, and answers as if it had been committed.
                let applied = node.apply_without_consensus(cmd);
                tokio::time::sleep(router.client_latency()).await;
                match applied {
                    Ok(Response::Rejected(e)) => return Outcome::Rejected(e),
                    Ok(response) => {
                        return Outcome::Acked {
                            response: Some(response),
                            proposed_at_ms,
                            node: target,
                        }
                    }
                    Err(e) => {
                        last = format!("n{target}: {}", first_line(&format!("{e:#}")));
                        target = ids[p.pick(ids.len())];
                        self.pause(p).await;
                        continue;
                    }
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let reply = tokio::time::timeout(remaining, node.write(cmd.clone())).await;
            tokio::time::sleep(router.client_latency()).await;
            match reply {
                Err(_) => {
                    last = format!("n{target} did not answer within the client's deadline");
                    break;
                }
                Ok(Ok(Response::Rejected(e))) => return Outcome::Rejected(e),
                Ok(Ok(response)) => {
                    return Outcome::Acked {
                        response: Some(response),
                        proposed_at_ms,
                        node: target,
                    }
                }
                Ok(Err(WriteError::NotLeader {
                    leader_id: Some(leader),
                    ..
                })) if leader != target => {
                    last = format!("n{target}: not the leader, n{leader} is");
                    target = leader;
                }
                Ok(Err(e)) => {
                    last = format!("n{target}: {}", first_line(&e.to_string()));
                    target = ids[p.pick(ids.len())];
                    self.pause(p).await;
                }
            }
        }
        Outcome::Failed(last)
    }

    async fn pause(&self, p: &mut Pipeline) {
        let span = (CLIENT_RETRY_PAUSE_MS.1 - CLIENT_RETRY_PAUSE_MS.0) as usize;
        let ms = CLIENT_RETRY_PAUSE_MS.0 + p.pick(span + 1) as u64;
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// The first line of an error, at most 160 characters, for the trace.
fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(160).collect()
}

/// A short description of an op for the trace.
pub fn describe(op: &Op) -> String {
    match op {
        Op::CreateModel { name, .. } => format!("create_model {name}"),
        Op::CreateVersion {
            model,
            manifest_root,
            ..
        } => format!(
            "create_version {model} root {}",
            crate::check::short(manifest_root)
        ),
        Op::SetStage {
            model,
            number,
            stage,
            ..
        } => format!("set_stage {model}/{number} -> {stage:?}"),
        Op::SetAlias {
            model,
            alias,
            number,
        } => format!("set_alias {model}@{alias} -> {number}"),
        other => other.kind().to_string(),
    }
}
