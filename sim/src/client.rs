//! Simulated clients: each pipeline submits its ops one at a time through a random node.
//!
//! A registration first uploads its artifact through a random up node (the real `ChunkSink`,
//! see [`crate::chunks`]), trying another after a failure, and proposes the version only once
//! the upload succeeded; its acknowledgement is checked for W intact copies.
//!
//! The simulator plays the part of the registry's API front end over real `Node`s: the first up
//! node a client reaches stamps its command (`Node::stamp`: that node's clock, a request id),
//! and each attempt hands it to a node's `Node::propose_command`, which forwards it to the
//! leader over the simulated network when that node is a follower (the production forwarding,
//! retrying across leader changes); retries keep the stamp, as a client's retry would. A down node, a
//! node without a leader, or a write that did not commit in time sends it to another random node
//! after a short pause. Only an `Ok` (committed and applied on the leader) is an
//! acknowledgement — except with the planted bug
//! [`Plant::AckBeforeCommit`], which acknowledges as soon as a self-declared leader has taken
//! the command, and [`Plant::FollowerAppliesStageChange`], where a follower applies a stage
//! change to its own state machine (`RaftNode::apply_without_consensus`) and acknowledges it.
//!
//! Between ops (`Mix::read_pct` of its turns) a pipeline reads, at a random node and with a linearizable barrier as the API's
//! default reads do (a follower asks the leader for its read index over the simulated network),
//! whether a model exists, a version's stage or an alias, among the keys any client's
//! acknowledged ops named. Every op and read goes into the history ([`Clients::history`]) that
//! [`crate::linear`] checks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::BTreeSet;

use openraft::ServerState;
use quiver_node::command::{Command, Op, Response};
use quiver_node::domain::{Actor, DomainError, VersionRef, VersionSelector};
use quiver_node::node::Consistency;
use quiver_node::state::AppError;
use quiver_node::NodeError;
use tokio::time::Instant;

use crate::check::{Ack, Expect, Violation};
use crate::chunks::{root_label, Chunks};
use crate::chunkstore::Corpus;
use crate::cluster::Cluster;
use crate::config::Plant;
use crate::linear::{Event, LinOp, LinOut, Verdict};
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
    /// Linearizable reads answered (and checked), and reads that got no answer.
    pub reads: u64,
    pub reads_failed: u64,
    /// Ops and reads in the history checked by [`crate::linear`], the models they touched, and
    /// the models whose history the search could not settle within its bound.
    pub history_ops: u64,
    pub history_models: u64,
    pub history_unchecked: u64,
    /// Hostile requests sent ([`crate::hostile`]), rejected as they must be, and accepted
    /// (each a violation).
    pub hostile: u64,
    pub hostile_rejected: u64,
    pub hostile_accepted: u64,
    /// Catalog searches sent, most with hostile fields ([`crate::hostile::hostile_search`]).
    pub searches: u64,
    /// Hostile watch starts sent ([`crate::hostile::hostile_watch`]) and refused, as each must be.
    pub watches_hostile: u64,
    pub watches_hostile_refused: u64,
    /// Watches the watchers started ([`crate::watchers`]: the first and each resume) and the
    /// events they received.
    pub watch_starts: u64,
    pub watch_events: u64,
    /// Deployment commands the deployers sent ([`crate::deployers`]), those acknowledged, and
    /// their hostile ones (each refused, or a violation).
    pub deploys: u64,
    pub deploys_acked: u64,
    pub deploys_hostile: u64,
}

/// What a read asks.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ReadKey {
    Model(String),
    Stage(String, u64),
    Alias(String, String),
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
    /// Every op and read with its send and answer times, for [`crate::linear`].
    history: Mutex<Vec<Event>>,
    /// What acknowledged ops named, for reads to ask about.
    keys: Mutex<BTreeSet<ReadKey>>,
}

/// What a client was told of one command.
pub(crate) enum Outcome {
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
            history: Mutex::new(Vec::new()),
            keys: Mutex::new(BTreeSet::new()),
        })
    }

    /// The history of every op and read so far.
    pub fn history(&self) -> Vec<Event> {
        self.history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Check the history for linearizability ([`crate::linear`]); a violation per model whose
    /// answers no order explains. Counts what was checked in the stats.
    pub fn check_history(&self) -> Vec<Violation> {
        let history = self.history();
        let models: BTreeSet<&str> = history.iter().map(|e| e.model.as_str()).collect();
        let mut violations = Vec::new();
        let mut unchecked = 0;
        for (model, verdict) in crate::linear::check(&history) {
            match verdict {
                Verdict::Violation(m) => violations.push(Violation::new(
                    "not-linearizable",
                    format!("model '{model}': {m}"),
                )),
                Verdict::Unchecked => {
                    unchecked += 1;
                    self.trace.record(format!(
                        "linearizability of model {model}: unchecked, search bound reached"
                    ));
                }
                Verdict::Linearizable => {}
            }
        }
        self.count(|s| {
            s.history_ops = history.len() as u64;
            s.history_models = models.len() as u64;
            s.history_unchecked = unchecked;
        });
        violations
    }

    fn now_us(&self) -> u64 {
        self.trace.elapsed().as_micros() as u64
    }

    fn remember(&self, event: Event) {
        self.history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(event);
    }

    fn learn_key(&self, key: ReadKey) {
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(key);
    }

    /// Pipelines finish the op in hand and stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether the pipelines (and watchers) were told to stop.
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Note a violation the clients saw.
    pub(crate) fn violation(&self, v: Violation) {
        self.violations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(v);
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

    pub(crate) fn count(&self, f: impl FnOnce(&mut ClientStats)) {
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
            if p.hostile_now() {
                self.hostile(&mut p).await;
                tokio::time::sleep(Duration::from_millis(p.think_ms())).await;
                continue;
            }
            if p.reads_now() {
                self.read(&mut p).await;
                tokio::time::sleep(Duration::from_millis(p.think_ms())).await;
                continue;
            }
            let (seq, op) = p.next_op();
            let what = describe(&op);
            // The first up node the client reaches stamps the command (`Node::stamp`: its own,
            // maybe skewed, clock and a request id); its retries through any node keep both.
            let actor = Actor {
                // A review decision names who decides (the reviewer, or the registrant trying).
                name: p.take_actor().unwrap_or_else(|| p.actor.clone()),
                authenticated: true,
            };
            let (first, cmd) = loop {
                let ids = self.cluster.ids();
                let id = ids[p.pick(ids.len())];
                if let Some(node) = self.cluster.node(id) {
                    break (id, node.stamp(actor, op));
                }
                self.pause(&mut p).await;
            };
            self.count(|s| s.submitted += 1);
            self.trace.record(format!("c{} #{seq} submit {what}", p.id));
            let mut call_us = self.now_us();
            let outcome = match p.take_artifact() {
                Some(corpus) => match self.upload(&mut p, &corpus, first).await {
                    Ok(node) => {
                        self.trace.record(format!(
                            "c{} #{seq} uploaded {} chunks via n{node}",
                            p.id,
                            corpus.chunks().len()
                        ));
                        call_us = self.now_us();
                        self.submit(&mut p, &cmd, first).await
                    }
                    Err(e) => Outcome::Failed(format!("upload: {e}")),
                },
                None => self.submit(&mut p, &cmd, first).await,
            };
            self.record_op(p.id, p.gated, first, &cmd.op, &outcome, call_us);
            if let Outcome::Acked {
                response: Some(response),
                ..
            } = &outcome
            {
                p.learn_response(&cmd.op, response);
            }
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
                            let reference = number.map(|n| VersionRef {
                                model: model.clone(),
                                selector: VersionSelector::Number(n),
                            });
                            match &cmd.op {
                                Op::CreateVersion {
                                    manifest,
                                    inline_chunks,
                                    ..
                                } if !inline_chunks.is_empty() => {
                                    self.chunks.on_inline_version_acked(
                                        label,
                                        reference,
                                        manifest,
                                        inline_chunks,
                                    )
                                }
                                _ => self.chunks.on_version_acked(label, reference, root),
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
            match self.cluster.node(node) {
                None => last = format!("n{node} is down"),
                Some(n) => match self.chunks.upload(&n, corpus).await {
                    Ok(()) => return Ok(node),
                    Err(e) => last = format!("n{node}: {}", first_line(&e)),
                },
            }
            node = ids[p.pick(ids.len())];
            self.pause(p).await;
        }
        Err(last)
    }

    /// Hand one command to node `first`, then to random others after a failure (see the module
    /// docs).
    pub(crate) async fn submit(&self, p: &mut impl Pick, cmd: &Command, first: NodeId) -> Outcome {
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
            let Some(node) = self.cluster.node(target) else {
                last = format!("n{target} is down");
                target = ids[p.pick(ids.len())];
                self.pause(p).await;
                continue;
            };
            let proposed_at_ms = self.trace.elapsed_ms();
            if self.plant == Some(Plant::AckBeforeCommit)
                && node.raft.metrics().state == ServerState::Leader
            {
                // PLANTED BUG: hand the command over and call it done without waiting for it
                // to be committed.
                match node.raft.raft().client_write_ff(vec![cmd.clone()]).await {
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
                && node.raft.metrics().state == ServerState::Follower
            {
                // PLANTED BUG: the follower applies the stage change itself, skipping the
                // leader and the log, and answers as if it had been committed.
                let applied = node.raft.apply_without_consensus(cmd);
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
            let reply = tokio::time::timeout(remaining, node.propose_command(cmd.clone())).await;
            tokio::time::sleep(router.client_latency()).await;
            match reply {
                Err(_) => {
                    last = format!("n{target} did not answer within the client's deadline");
                    break;
                }
                Ok(Err(NodeError::Rejected(e))) => return Outcome::Rejected(e),
                Ok(Ok(response)) => {
                    return Outcome::Acked {
                        response: Some(response),
                        proposed_at_ms,
                        node: target,
                    }
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

    /// Put a write op and what the client was told into the history; remember what an
    /// acknowledged one named, for reads.
    /// Records `op` in the history the linearizability check reads. A gated client's stage
    /// changes are left out (and its versions' stages never read): a stage change there may
    /// wait for a review, and a review decision moves a version, which that model does not
    /// know; `check::check_approvals` judges them instead.
    fn record_op(
        &self,
        client: usize,
        gated: bool,
        node: NodeId,
        op: &Op,
        outcome: &Outcome,
        call_us: u64,
    ) {
        let (out, ret_us) = match outcome {
            Outcome::Acked { .. } => (LinOut::Ok, Some(self.now_us())),
            Outcome::Rejected(_) => (LinOut::Rejected, Some(self.now_us())),
            Outcome::Failed(_) => (LinOut::Unknown, None),
        };
        let acked = matches!(outcome, Outcome::Acked { .. });
        let (model, op) = match op {
            Op::CreateModel { name, .. } => {
                if acked {
                    self.learn_key(ReadKey::Model(name.clone()));
                }
                (name.clone(), LinOp::CreateModel)
            }
            Op::CreateVersion { model, .. } => match outcome {
                // Only a version whose number the client was told can be read or referred to.
                Outcome::Acked {
                    response: Some(Response::Version(v)),
                    ..
                } => {
                    if !gated {
                        self.learn_key(ReadKey::Stage(model.clone(), v.number));
                    }
                    (model.clone(), LinOp::CreateVersion { number: v.number })
                }
                _ => return,
            },
            Op::SetStage { .. } if gated => return,
            Op::SetStage {
                model,
                number,
                stage,
                ..
            } => (
                model.clone(),
                LinOp::SetStage {
                    number: *number,
                    stage: *stage,
                },
            ),
            Op::SetAlias {
                model,
                alias,
                number,
            } => {
                if acked {
                    self.learn_key(ReadKey::Alias(model.clone(), alias.clone()));
                }
                (
                    model.clone(),
                    LinOp::SetAlias {
                        alias: alias.clone(),
                        number: *number,
                    },
                )
            }
            _ => return,
        };
        self.remember(Event {
            client,
            node,
            model,
            op,
            out,
            call_us,
            ret_us,
        });
    }

    /// One linearizable read at a random node of a key some acknowledged op named (see the
    /// module docs). A read without an answer is counted, not checked.
    async fn read(&self, p: &mut Pipeline) {
        let key = {
            let keys = self
                .keys
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if keys.is_empty() {
                return;
            }
            keys.iter().nth(p.pick(keys.len())).cloned()
        };
        let Some(key) = key else { return };
        let ids = self.cluster.ids();
        let target = ids[p.pick(ids.len())];
        let router = self.cluster.router().clone();
        let call_us = self.now_us();
        tokio::time::sleep(router.client_latency()).await;
        let answer = match self.cluster.node(target) {
            None => Err(format!("n{target} is down")),
            Some(node) => {
                let asked = async {
                    node.read(Consistency::Linearizable, |app, txn| {
                        read_key(app, txn, &key)
                    })
                    .await
                    .map_err(|e| first_line(&e.to_string()))
                };
                tokio::time::timeout(CLIENT_OP_TIMEOUT, asked)
                    .await
                    .unwrap_or_else(|_| Err("no answer within the client's deadline".into()))
            }
        };
        tokio::time::sleep(router.client_latency()).await;
        let (model, op) = match &key {
            ReadKey::Model(m) => (m.clone(), LinOp::ReadModel),
            ReadKey::Stage(m, number) => (m.clone(), LinOp::ReadStage { number: *number }),
            ReadKey::Alias(m, alias) => (
                m.clone(),
                LinOp::ReadAlias {
                    alias: alias.clone(),
                },
            ),
        };
        match answer {
            Ok(out) => {
                self.count(|s| s.reads += 1);
                self.trace.record(format!(
                    "c{} read {op:?} of {model} via n{target}: {out:?}",
                    p.id
                ));
                self.remember(Event {
                    client: p.id,
                    node: target,
                    model,
                    op,
                    out,
                    call_us,
                    ret_us: Some(self.now_us()),
                });
            }
            Err(e) => {
                self.count(|s| s.reads_failed += 1);
                self.trace.record(format!(
                    "c{} read {op:?} of {model} via n{target} failed: {e}",
                    p.id
                ));
            }
        }
    }

    /// A catalog search with hostile fields ([`crate::hostile::hostile_search`]) on a random
    /// node: refused naming a field, or answered with a page; anything else is a violation.
    async fn hostile_search(&self, p: &mut Pipeline) {
        let (label, request) = p.hostile_search();
        let ids = self.cluster.ids();
        let target = ids[p.pick(ids.len())];
        let Some(node) = self.cluster.node(target) else {
            return;
        };
        self.count(|s| s.searches += 1);
        let filter = match quiver_node::service::convert::search_filter_from_proto(&request) {
            Ok(filter) => filter,
            Err(e) => {
                self.trace.record(format!(
                    "c{} {label} via n{target}: refused: {}",
                    p.id,
                    first_line(&e.to_string())
                ));
                return;
            }
        };
        let page_size = request.page_size as usize;
        let token = request.page_token.clone();
        let answer = tokio::time::timeout(
            CLIENT_OP_TIMEOUT,
            node.read(Consistency::Stale, move |app, txn| {
                app.search_models(txn, &filter, &|_| true, page_size, &token)
            }),
        )
        .await;
        match answer {
            Ok(Ok((hits, _))) => self.trace.record(format!(
                "c{} {label} via n{target}: {} hits",
                p.id,
                hits.len()
            )),
            Ok(Err(NodeError::Rejected(e))) => self.trace.record(format!(
                "c{} {label} via n{target}: refused: {}",
                p.id,
                first_line(&e.to_string())
            )),
            Ok(Err(e)) => self
                .violations
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(Violation::new(
                    "search-failed",
                    format!(
                        "{label} via n{target} failed: {}",
                        first_line(&e.to_string())
                    ),
                )),
            Err(_) => self.trace.record(format!(
                "c{} {label} via n{target}: no answer in time",
                p.id
            )),
        }
    }

    /// A hostile request ([`crate::hostile`]) through a random node's command path; it must be
    /// rejected. Not retried, and not part of the history: a rejection changes nothing.
    async fn hostile(&self, p: &mut Pipeline) {
        if p.searches_now() {
            return self.hostile_search(p).await;
        }
        let (label, op, intruder) = p.hostile_op();
        let ids = self.cluster.ids();
        let target = ids[p.pick(ids.len())];
        let Some(node) = self.cluster.node(target) else {
            return;
        };
        self.count(|s| s.hostile += 1);
        let actor = Actor {
            name: if intruder {
                Pipeline::intruder(p.id)
            } else {
                p.actor.clone()
            },
            authenticated: true,
        };
        let router = self.cluster.router().clone();
        tokio::time::sleep(router.client_latency()).await;
        let answer = tokio::time::timeout(CLIENT_OP_TIMEOUT, node.propose(actor, op)).await;
        tokio::time::sleep(router.client_latency()).await;
        match answer {
            Ok(Err(NodeError::PermissionDenied(e))) if intruder => {
                self.count(|s| s.hostile_rejected += 1);
                self.trace.record(format!(
                    "c{} hostile {label} via n{target}: denied: {}",
                    p.id,
                    first_line(&e)
                ));
            }
            Ok(Ok(response)) if intruder => {
                self.count(|s| s.hostile_accepted += 1);
                self.trace
                    .record(format!("c{} hostile {label} via n{target}: accepted", p.id));
                self.violations
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(Violation::new(
                        "unauthorized-write",
                        format!(
                            "{label} via n{target}, by a reader, was applied ({}) instead of \
                             denied",
                            first_line(&format!("{response:?}"))
                        ),
                    ));
            }
            Ok(Err(NodeError::Rejected(e))) => {
                self.count(|s| s.hostile_rejected += 1);
                self.trace.record(format!(
                    "c{} hostile {label} via n{target}: rejected: {}",
                    p.id,
                    first_line(&e.to_string())
                ));
            }
            Ok(Ok(response)) => {
                self.count(|s| s.hostile_accepted += 1);
                self.trace
                    .record(format!("c{} hostile {label} via n{target}: accepted", p.id));
                self.violations
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(Violation::new(
                        "hostile-accepted",
                        format!(
                            "{label} via n{target} was applied ({}) instead of rejected",
                            first_line(&format!("{response:?}"))
                        ),
                    ));
            }
            Ok(Err(e)) => self.trace.record(format!(
                "c{} hostile {label} via n{target}: no answer: {}",
                p.id,
                first_line(&e.to_string())
            )),
            Err(_) => self.trace.record(format!(
                "c{} hostile {label} via n{target}: no answer in time",
                p.id
            )),
        }
    }

    pub(crate) async fn pause(&self, p: &mut impl Pick) {
        let span = (CLIENT_RETRY_PAUSE_MS.1 - CLIENT_RETRY_PAUSE_MS.0) as usize;
        let ms = CLIENT_RETRY_PAUSE_MS.0 + p.pick(span + 1) as u64;
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// A client's own choice of node and pause, from its own RNG (a pipeline's or a deployer's).
pub(crate) trait Pick {
    /// A number in `0..n`.
    fn pick(&mut self, n: usize) -> usize;
}

impl Pick for Pipeline {
    fn pick(&mut self, n: usize) -> usize {
        Pipeline::pick(self, n)
    }
}

/// What the applied state answers to a read of `key`.
fn read_key(
    app: &quiver_node::state::RegistryApp,
    txn: &quiver_raft::heed::RoTxn<'_>,
    key: &ReadKey,
) -> Result<LinOut, AppError> {
    let missing = |e: &AppError| {
        matches!(
            e,
            AppError::Domain(
                DomainError::ModelNotFound { .. }
                    | DomainError::VersionNotFound { .. }
                    | DomainError::AliasNotFound { .. }
            )
        )
    };
    Ok(match key {
        ReadKey::Model(model) => match app.get_model(txn, model) {
            Ok(_) => LinOut::Model(true),
            Err(e) if missing(&e) => LinOut::Model(false),
            Err(e) => return Err(e),
        },
        ReadKey::Stage(model, number) => match app.get_version(txn, model, *number) {
            Ok(v) => LinOut::Stage(Some(v.stage)),
            Err(e) if missing(&e) => LinOut::Stage(None),
            Err(e) => return Err(e),
        },
        ReadKey::Alias(model, alias) => match app.get_alias(txn, model, alias) {
            Ok(a) => LinOut::Alias(Some(a.version)),
            Err(e) if missing(&e) => LinOut::Alias(None),
            Err(e) => return Err(e),
        },
    })
}

/// The first line of an error, at most 160 characters, for the trace.
pub(crate) fn first_line(s: &str) -> String {
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
