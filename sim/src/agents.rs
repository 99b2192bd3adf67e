//! Simulated serving agents (issue 15): each runs the client crate's pure agent logic
//! (`quiver_client::agent::AgentCore`) against the real nodes, under virtual time, with the
//! I/O around it simulated. Agents are spread over the run's regions round-robin (agent `i` in
//! region `i % regions`, the nodes placed by `net::regions_of`).
//!
//! An agent's three tasks, each on a seeded RNG of its own:
//! - **Watch** ([`Fleet::watch_loop`]): a watch of its endpoint through `Node::watch_start` and
//!   `Node::watch_next` (the Watch service's entry points, as [`crate::watchers`] use them) on a
//!   node of its own region if one is up and has not failed it in the last
//!   [`AGENT_FAILED_NODE_MEMORY`], else such a node of another region; after each batch it
//!   reads the endpoint linearizably there (the read the deployers use; after an empty batch
//!   too, which is how it notices a node that lost the quorum) and hands the deployment,
//!   converted as the gRPC edge converts it (`deployment_to_proto`), to
//!   `AgentCore::on_deployment` with the virtual time. On an error, a failed read or a report
//!   its node failed, or once its stay (drawn from [`AGENT_STAY_MS`]) is over, it starts again
//!   on a node so chosen and resumes after the last revision it read through, as the SDK's
//!   `Watcher` does. Every call has a deadline ([`AGENT_CALL_TIMEOUT`]).
//! - **Serve** ([`Fleet::serve_loop`]): every [`SERVE_TICK`], [`REQUESTS_PER_TICK`] requests
//!   with random keys routed by `AgentCore::route` (a copy to each ready shadow), each
//!   answered after a drawn latency and failing [`CANARY_ERROR_PCT`] % of the time when its
//!   version has been made faulty ([`Fleet::set_faulty`]: how the scenario makes a canary bad
//!   so that apply rolls it back); counted with `AgentCore::record` and logged as an
//!   [`Answer`]. Failed pulls due again (`AgentCore::due_retries`) start here.
//! - **Report** ([`Fleet::report_loop`]): every [`REPORT_EVERY_MS`], `AgentCore::take_report`
//!   sent as `Op::ReportServing` through `Node::propose` on its node (what the Deployments
//!   service does with a `ReportServing` request); the answer's deployment goes to
//!   `on_deployment` as the agent process would; a failure is `report_failed`.
//!
//! `Prepare` actions are pulls ([`Fleet::pull`]): a version's size ([`Fleet::set_size`]) over
//! the serving node's egress (shared first come, first served by every agent pulling from it,
//! [`NODE_EGRESS_BYTES_PER_S`]), slower across regions ([`CROSS_REGION_PULL_BYTES_PER_S`]),
//! then loaded at [`LOAD_BYTES_PER_S`]; the pull fails if its node went down meanwhile or the
//! agent was cut off, and `prepare_failed` schedules the retry. `registry_reachable` follows
//! every call's outcome.
//!
//! Faults of the agents' own: [`Fleet::cut_off`] makes agents unable to reach any node (every
//! answer they get is lost, as a broken network would lose it) until healed; each spell is
//! logged for the checker, which judges staleness from the agent's return.
//!
//! The planted `agent-ignores-rollback` lives here, in the wrapper, not in the core: the
//! planted agent drops a deployment that rolls back the split it routes by.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quiver_client::agent::{Action, AgentCore, Applied, Route};
use quiver_client::proto;
use quiver_node::command::{Op, Response};
use quiver_node::deploy::VersionStats;
use quiver_node::domain::Actor;
use quiver_node::node::Consistency;
use quiver_node::service::convert::deployment_to_proto;
use quiver_node::watch::{WatchFilter, WatchRead};
use quiver_node::NodeError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::check::Violation;
use crate::check_rollout::{AgentLog, Answer, RoutingChange};
use crate::client::{first_line, EPOCH_MS};
use crate::cluster::{Cluster, SimNode};
use crate::config::sub_seed;
use crate::net::{CROSS_REGION_LATENCY_US, LINK_LATENCY_US};
use crate::schedule::NodeId;
use crate::trace::SharedTrace;

/// The principal every agent reports as (granted the approver role at boot, as a deployment's
/// agents would share one token); each names itself in its reports.
pub const AGENT_PRINCIPAL: &str = "serving-agents";
/// How long one `watch_next` of an agent waits for its endpoint's events.
pub const AGENT_WATCH_WAIT: Duration = Duration::from_millis(1_000);
/// Deadline of every other call of an agent to a node (a start, a read, a report).
pub const AGENT_CALL_TIMEOUT: Duration = Duration::from_millis(1_000);
/// How long an agent prefers other nodes to one that failed it.
pub const AGENT_FAILED_NODE_MEMORY: Duration = Duration::from_millis(5_000);
/// Pause before the next try after a failed call, drawn from this range (virtual ms).
pub const AGENT_RETRY_PAUSE_MS: (u64, u64) = (50, 250);
/// How long an agent stays on one node before it moves on (absent an error), drawn from this
/// range (virtual ms).
pub const AGENT_STAY_MS: (u64, u64) = (3_000, 15_000);
/// How often an agent answers a round of requests.
pub const SERVE_TICK: Duration = Duration::from_millis(100);
/// Requests an agent answers per tick (20 per second).
pub const REQUESTS_PER_TICK: u32 = 2;
/// Latency of an answer, drawn from this range (µs): well under the rollout's p99 bound.
pub const ANSWER_LATENCY_US: (u64, u64) = (2_000, 40_000);
/// Share of its requests (and shadow copies) a faulty version fails, in percent.
pub const CANARY_ERROR_PCT: u32 = 20;
/// Pause between two reports of an agent, drawn from this range (virtual ms).
pub const REPORT_EVERY_MS: (u64, u64) = (800, 1_200);
/// A node's egress to agents pulling versions: 10 Gbit/s, shared by its pulls.
pub const NODE_EGRESS_BYTES_PER_S: u64 = crate::chunknet::NODE_BYTES_PER_S;
/// The most one pull across regions moves per second (5 Gbit/s).
pub const CROSS_REGION_PULL_BYTES_PER_S: u64 = crate::chunknet::CROSS_REGION_LINK_BYTES_PER_S;
/// How fast an agent loads a pulled version into its runtime (2 GB/s).
pub const LOAD_BYTES_PER_S: u64 = 2_000_000_000;
/// Size of a version whose size was never set (bytes).
pub const VERSION_BYTES_DEFAULT: u64 = 128 << 20;

/// The agent `index`'s name.
pub fn agent_name(index: usize) -> String {
    format!("agent-{index}")
}

/// What the agents share: the cluster, the endpoint, the faults of their own, and the nodes'
/// egress queues.
pub struct Fleet {
    cluster: Arc<Cluster>,
    trace: SharedTrace,
    endpoint: String,
    model: String,
    regions: usize,
    node_regions: BTreeMap<NodeId, usize>,
    /// The planted `agent-ignores-rollback`.
    ignores_rollback: bool,
    stop: AtomicBool,
    shared: Mutex<Shared>,
    violations: Mutex<Vec<Violation>>,
}

#[derive(Default)]
struct Shared {
    /// Agents that can reach no node now.
    cut_off: BTreeSet<usize>,
    /// Versions failing [`CANARY_ERROR_PCT`] % of their requests.
    faulty: BTreeSet<u64>,
    /// When each node's egress is free again.
    egress_free_at: BTreeMap<NodeId, Instant>,
    /// Each version's size in bytes.
    sizes: BTreeMap<u64, u64>,
}

/// One agent: its core, its log, and where it is connected.
pub struct Agent {
    index: usize,
    name: String,
    region: usize,
    core: Mutex<AgentCore>,
    log: Mutex<AgentLog>,
    /// The node the agent watches through now.
    node: Mutex<Option<(NodeId, Arc<SimNode>)>>,
    /// A node a report found failing: the watch loop leaves it.
    suspect: Mutex<Option<NodeId>>,
    /// When each node last failed a call of the agent.
    failed: Mutex<BTreeMap<NodeId, Instant>>,
    /// Per version, the pull in flight (a version dropped and wanted again starts a new one;
    /// the old one's outcome is ignored).
    pulls: Mutex<BTreeMap<u64, u64>>,
    pull_seq: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Agent {
    /// Every version of the split in force is loaded (every key goes where the split says).
    fn routing_now(core: &AgentCore) -> (u64, bool) {
        let ready = core
            .deployment()
            .is_some_and(|d| d.split.iter().all(|s| core.is_ready(s.version)));
        (core.generation(), ready)
    }

    /// Log the routing if it changed.
    fn note_routing(&self, core: &AgentCore, at_ms: u64) {
        let (generation, ready) = Self::routing_now(core);
        let mut log = lock(&self.log);
        if log
            .routing
            .last()
            .is_some_and(|c| (c.generation, c.ready) == (generation, ready))
        {
            return;
        }
        log.routing.push(RoutingChange {
            at_ms,
            generation,
            ready,
        });
    }

    fn node(&self) -> Option<(NodeId, Arc<SimNode>)> {
        lock(&self.node).clone()
    }
}

impl Fleet {
    /// `agents` agents of `endpoint` (serving `model`) over `regions` regions.
    pub fn new(
        cluster: Arc<Cluster>,
        trace: SharedTrace,
        endpoint: &str,
        model: &str,
        regions: usize,
        ignores_rollback: bool,
    ) -> Arc<Fleet> {
        let node_regions = crate::net::regions_of(cluster.ids(), regions);
        Arc::new(Fleet {
            cluster,
            trace,
            endpoint: endpoint.into(),
            model: model.into(),
            regions: regions.max(1),
            node_regions,
            ignores_rollback,
            stop: AtomicBool::new(false),
            shared: Mutex::new(Shared::default()),
            violations: Mutex::new(Vec::new()),
        })
    }

    /// Start `agents` agents (three tasks each) on seeds drawn from `seed`.
    pub fn start(self: &Arc<Self>, agents: usize, seed: u64) -> Vec<Arc<Agent>> {
        let mut out = Vec::new();
        for index in 0..agents {
            let agent = Arc::new(Agent {
                index,
                name: agent_name(index),
                region: index % self.regions,
                core: Mutex::new(AgentCore::new(&self.endpoint)),
                log: Mutex::new(AgentLog {
                    agent: agent_name(index),
                    region: index % self.regions,
                    ..AgentLog::default()
                }),
                node: Mutex::new(None),
                suspect: Mutex::new(None),
                failed: Mutex::new(BTreeMap::new()),
                pulls: Mutex::new(BTreeMap::new()),
                pull_seq: Mutex::new(0),
            });
            let s = |what: &str| sub_seed(seed, &format!("agent-{index}-{what}"));
            tokio::spawn(self.clone().watch_loop(agent.clone(), s("watch")));
            tokio::spawn(self.clone().serve_loop(agent.clone(), s("serve")));
            tokio::spawn(self.clone().report_loop(agent.clone(), s("report")));
            out.push(agent);
        }
        out
    }

    /// The agents stop (each finishes the call in hand).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn now_ms(&self) -> u64 {
        self.trace.elapsed_ms()
    }

    /// The agents' clock (ms since the Unix epoch): true time.
    fn epoch_ms(&self) -> i64 {
        EPOCH_MS + self.now_ms() as i64
    }

    /// `version` is `bytes` large (before its first pull).
    pub fn set_size(&self, version: u64, bytes: u64) {
        lock(&self.shared).sizes.insert(version, bytes);
    }

    /// `version` fails [`CANARY_ERROR_PCT`] % of its requests from now on.
    pub fn set_faulty(&self, version: u64) {
        lock(&self.shared).faulty.insert(version);
    }

    fn is_faulty(&self, version: u64) -> bool {
        lock(&self.shared).faulty.contains(&version)
    }

    /// Cut `agents` off from every node (`true`) or let them reach the nodes again.
    pub fn cut_off(&self, agents: &[Arc<Agent>], which: &[usize], cut: bool) {
        let now = self.now_ms();
        let mut shared = lock(&self.shared);
        for &i in which {
            let Some(agent) = agents.get(i) else { continue };
            let mut log = lock(&agent.log);
            if cut && shared.cut_off.insert(i) {
                log.cut_off.push((now, u64::MAX));
            } else if !cut && shared.cut_off.remove(&i) {
                if let Some(spell) = log.cut_off.last_mut() {
                    spell.1 = now;
                }
            }
        }
    }

    fn is_cut_off(&self, agent: &Agent) -> bool {
        lock(&self.shared).cut_off.contains(&agent.index)
    }

    /// What the agents saw that no correct node answers; drains them.
    pub fn take_violations(&self) -> Vec<Violation> {
        std::mem::take(&mut *lock(&self.violations))
    }

    fn violation(&self, v: Violation) {
        lock(&self.violations).push(v);
    }

    /// Each agent's log, spells cut off still open closed at `now`.
    pub fn logs(&self, agents: &[Arc<Agent>]) -> Vec<AgentLog> {
        let now = self.now_ms();
        agents
            .iter()
            .map(|a| {
                let mut log = lock(&a.log).clone();
                for spell in &mut log.cut_off {
                    spell.1 = spell.1.min(now);
                }
                log
            })
            .collect()
    }

    /// A one-way hop between `agent` and node `id`, drawn from `rng`.
    fn hop(&self, rng: &mut StdRng, agent: &Agent, id: NodeId) -> Duration {
        let (lo, hi) = if self.node_regions.get(&id) == Some(&agent.region) {
            LINK_LATENCY_US
        } else {
            CROSS_REGION_LATENCY_US
        };
        Duration::from_micros(rng.gen_range(lo..=hi))
    }

    async fn pause(&self, rng: &mut StdRng) {
        let ms = rng.gen_range(AGENT_RETRY_PAUSE_MS.0..=AGENT_RETRY_PAUSE_MS.1);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// A node for `agent`: an up one of its region that has not failed it within
    /// [`AGENT_FAILED_NODE_MEMORY`] if there is one, else such a one anywhere, else the up node
    /// whose last failure is oldest (the nearest first among equals).
    fn pick_node(&self, rng: &mut StdRng, agent: &Agent) -> Option<(NodeId, Arc<SimNode>)> {
        let now = Instant::now();
        let failed = lock(&agent.failed).clone();
        let fresh = |id: &NodeId| {
            failed
                .get(id)
                .is_none_or(|at| now.saturating_duration_since(*at) >= AGENT_FAILED_NODE_MEMORY)
        };
        let up: Vec<NodeId> = self.cluster.up_ids();
        let mine: Vec<NodeId> = up
            .iter()
            .copied()
            .filter(|id| fresh(id) && self.node_regions.get(id) == Some(&agent.region))
            .collect();
        let others: Vec<NodeId> = up.iter().copied().filter(fresh).collect();
        let id = match [mine, others].into_iter().find(|p| !p.is_empty()) {
            Some(pool) => pool[rng.gen_range(0..pool.len())],
            None => *up.iter().min_by_key(|id| {
                (
                    failed.get(id).copied(),
                    self.node_regions.get(id) != Some(&agent.region),
                )
            })?,
        };
        Some((id, self.cluster.node(id)?))
    }

    /// Whether `node` is still node `id`'s running incarnation.
    fn still_up(&self, id: NodeId, node: &Arc<SimNode>) -> bool {
        self.cluster
            .node(id)
            .is_some_and(|now| Arc::ptr_eq(&now, node))
    }

    fn reachable(&self, agent: &Agent, reachable: bool) {
        lock(&agent.core).registry_reachable(reachable, self.epoch_ms());
    }

    /// The watch loop (see the module docs).
    async fn watch_loop(self: Arc<Self>, agent: Arc<Agent>, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let filter = WatchFilter::Endpoint(self.endpoint.clone());
        let mut through: Option<u64> = None;
        let name = agent.name.clone();
        while !self.stopped() {
            if self.is_cut_off(&agent) {
                *lock(&agent.node) = None;
                self.reachable(&agent, false);
                self.pause(&mut rng).await;
                continue;
            }
            let Some((id, node)) = self.pick_node(&mut rng, &agent) else {
                self.pause(&mut rng).await;
                continue;
            };
            lock(&agent.log).moves += 1;
            let hop = self.hop(&mut rng, &agent, id);
            tokio::time::sleep(hop).await;
            let start =
                tokio::time::timeout(AGENT_CALL_TIMEOUT, node.watch_start(&filter, through)).await;
            tokio::time::sleep(hop).await;
            let mut after = match start {
                Ok(Ok(after)) if !self.is_cut_off(&agent) => after,
                Ok(Err(e @ (NodeError::Rejected(_) | NodeError::Invalid(_))))
                    if self.still_up(id, &node) && !self.is_cut_off(&agent) =>
                {
                    // Its endpoint exists and its revision came from a watch: a refusal is a
                    // bug of the node.
                    self.violation(Violation::new(
                        "agent-watch-refused",
                        format!(
                            "{name} resuming after {through:?} via n{id} was refused: {}",
                            first_line(&e.to_string())
                        ),
                    ));
                    self.fail(&agent, id, &mut rng).await;
                    continue;
                }
                _ => {
                    self.fail(&agent, id, &mut rng).await;
                    continue;
                }
            };
            through = Some(after);
            self.trace
                .record(format!("{name} watches via n{id} after revision {after}"));
            *lock(&agent.node) = Some((id, node.clone()));
            *lock(&agent.suspect) = None;
            if !self.read_deployment(&agent, id, &node, &mut rng).await {
                self.fail(&agent, id, &mut rng).await;
                continue;
            }
            let stay = Duration::from_millis(rng.gen_range(AGENT_STAY_MS.0..=AGENT_STAY_MS.1));
            let leave_at = Instant::now() + stay;
            let mut failed = false;
            while Instant::now() < leave_at && !self.stopped() {
                let next = tokio::time::timeout(
                    AGENT_WATCH_WAIT + AGENT_CALL_TIMEOUT,
                    node.watch_next(&filter, after, AGENT_WATCH_WAIT),
                )
                .await;
                tokio::time::sleep(self.hop(&mut rng, &agent, id)).await;
                if self.is_cut_off(&agent) || *lock(&agent.suspect) == Some(id) {
                    failed = true;
                    break;
                }
                match next {
                    Ok(Ok(WatchRead::Events {
                        through: read_through,
                        ..
                    })) => {
                        after = read_through;
                        through = Some(read_through);
                        // Whatever the batch held, the endpoint as the node has it now; after
                        // an empty batch this also finds a node that lost the quorum.
                        if !self.read_deployment(&agent, id, &node, &mut rng).await {
                            failed = true;
                            break;
                        }
                    }
                    Ok(Ok(WatchRead::Behind { .. })) => {
                        // The events it missed are gone: start afresh (the read catches up).
                        through = None;
                        break;
                    }
                    Ok(Err(_)) | Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                self.fail(&agent, id, &mut rng).await;
            }
        }
        *lock(&agent.node) = None;
    }

    /// A call to node `id` failed: the agent leaves it.
    async fn fail(&self, agent: &Agent, id: NodeId, rng: &mut StdRng) {
        self.trace
            .record(format!("{} leaves n{id} after a failed call", agent.name));
        *lock(&agent.node) = None;
        lock(&agent.failed).insert(id, Instant::now());
        self.reachable(agent, false);
        self.pause(rng).await;
    }

    /// Read the endpoint linearizably through `node` and hand it to the core; false if the read
    /// failed.
    async fn read_deployment(
        self: &Arc<Self>,
        agent: &Arc<Agent>,
        id: NodeId,
        node: &Arc<SimNode>,
        rng: &mut StdRng,
    ) -> bool {
        let endpoint = self.endpoint.clone();
        let read = tokio::time::timeout(
            AGENT_CALL_TIMEOUT,
            node.read(Consistency::Linearizable, move |app, txn| {
                app.find_deployment(txn, &endpoint)
            }),
        )
        .await;
        tokio::time::sleep(self.hop(rng, agent, id)).await;
        if self.is_cut_off(agent) {
            return false;
        }
        match read {
            Ok(Ok(Some(d))) => {
                self.reachable(agent, true);
                self.apply(agent, deployment_to_proto(&d), rng);
                true
            }
            Ok(Ok(None)) => {
                self.violation(Violation::new(
                    "agent-endpoint-missing",
                    format!(
                        "{} read via n{id}: endpoint {} is gone",
                        agent.name, self.endpoint
                    ),
                ));
                false
            }
            Ok(Err(_)) | Err(_) => false,
        }
    }

    /// Hand `d` to the agent's core (unless the plant drops it) and start what it asks for.
    fn apply(self: &Arc<Self>, agent: &Arc<Agent>, d: proto::Deployment, rng: &mut StdRng) {
        let now = self.now_ms();
        let mut core = lock(&agent.core);
        if self.ignores_rollback && d.generation > core.generation() && rolls_back(&core, &d) {
            // PLANTED BUG: the agent keeps routing by the split it has.
            let mut log = lock(&agent.log);
            log.rollbacks_ignored += 1;
            self.trace.record(format!(
                "{} (planted) ignores generation {}",
                agent.name, d.generation
            ));
            return;
        }
        let generation = d.generation;
        match core.on_deployment(d, self.epoch_ms()) {
            Ok(Applied::Changed {
                actions, rollback, ..
            }) => {
                self.trace.record(format!(
                    "{} routes by generation {generation}{}",
                    agent.name,
                    if rollback { " (a rollback)" } else { "" }
                ));
                self.run_actions(agent, actions, rng);
                agent.note_routing(&core, now);
            }
            Ok(Applied::Stale { .. }) => {}
            Err(e) => self.violation(Violation::new(
                "agent-refused-deployment",
                format!("{} refused generation {generation}: {e}", agent.name),
            )),
        }
    }

    /// Start a pull for each `Prepare`; forget each dropped version's pull.
    fn run_actions(self: &Arc<Self>, agent: &Arc<Agent>, actions: Vec<Action>, rng: &mut StdRng) {
        for action in actions {
            match action {
                Action::Prepare { version } => {
                    let pull = {
                        let mut seq = lock(&agent.pull_seq);
                        *seq += 1;
                        *seq
                    };
                    lock(&agent.pulls).insert(version, pull);
                    tokio::spawn(self.clone().pull(agent.clone(), version, pull, rng.gen()));
                }
                Action::Drop { version } => {
                    lock(&agent.pulls).remove(&version);
                }
            }
        }
    }

    /// Pull and load `version` for `agent` (see the module docs), then tell its core.
    async fn pull(self: Arc<Self>, agent: Arc<Agent>, version: u64, pull: u64, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let source = match agent.node() {
            Some(n) if !self.is_cut_off(&agent) => Some(n),
            _ if self.is_cut_off(&agent) => None,
            _ => self.pick_node(&mut rng, &agent),
        };
        let ok = match source {
            None => {
                tokio::time::sleep(AGENT_CALL_TIMEOUT).await;
                false
            }
            Some((id, node)) => {
                let bytes = lock(&self.shared)
                    .sizes
                    .get(&version)
                    .copied()
                    .unwrap_or(VERSION_BYTES_DEFAULT);
                let hop = self.hop(&mut rng, &agent, id);
                let now = Instant::now() + hop;
                let cross = self.node_regions.get(&id) != Some(&agent.region);
                let done = {
                    let mut shared = lock(&self.shared);
                    let free = shared.egress_free_at.entry(id).or_insert(now);
                    let start = (*free).max(now);
                    *free = start + per_second(bytes, NODE_EGRESS_BYTES_PER_S);
                    let done = *free;
                    if cross {
                        done.max(now + per_second(bytes, CROSS_REGION_PULL_BYTES_PER_S))
                    } else {
                        done
                    }
                };
                tokio::time::sleep_until(done + hop).await;
                let ok = self.still_up(id, &node) && !self.is_cut_off(&agent);
                if ok {
                    tokio::time::sleep(per_second(bytes, LOAD_BYTES_PER_S)).await;
                }
                ok
            }
        };
        if lock(&agent.pulls).get(&version) != Some(&pull) {
            return;
        }
        let now = self.now_ms();
        let mut core = lock(&agent.core);
        if ok {
            lock(&agent.pulls).remove(&version);
            if let Some(load_ms) = core.prepared(version, self.epoch_ms()) {
                lock(&agent.log).load_ms.push(load_ms.max(0) as u64);
            }
        } else {
            lock(&agent.log).pulls_failed += 1;
            core.prepare_failed(
                version,
                "the node went away during the pull",
                self.epoch_ms(),
            );
        }
        agent.note_routing(&core, now);
    }

    /// The serve loop (see the module docs).
    async fn serve_loop(self: Arc<Self>, agent: Arc<Agent>, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut key = [0u8; 8];
        loop {
            tokio::time::sleep(SERVE_TICK).await;
            if self.stopped() {
                break;
            }
            let now = self.now_ms();
            let mut core = lock(&agent.core);
            let retries = core.due_retries(self.epoch_ms());
            if !retries.is_empty() {
                self.run_actions(&agent, retries, &mut rng);
            }
            let mut answers = Vec::new();
            let mut not_ready = 0;
            for _ in 0..REQUESTS_PER_TICK {
                rng.fill(&mut key);
                match core.route(&key) {
                    Route::Serve {
                        version,
                        generation,
                    } => {
                        let (error, latency) = self.answer(&mut rng, version);
                        core.record(generation, version, error, latency);
                        answers.push(Answer {
                            at_ms: now,
                            generation,
                            version,
                        });
                        for shadow in core.shadows() {
                            let (error, latency) = self.answer(&mut rng, shadow);
                            core.record(generation, shadow, error, latency);
                        }
                    }
                    Route::NotReady => not_ready += 1,
                }
            }
            drop(core);
            let mut log = lock(&agent.log);
            log.answers.extend(answers);
            log.not_ready += not_ready;
        }
    }

    /// Whether one answer of `version` fails, and its latency (µs).
    fn answer(&self, rng: &mut StdRng, version: u64) -> (bool, u64) {
        let latency = rng.gen_range(ANSWER_LATENCY_US.0..=ANSWER_LATENCY_US.1);
        let error = self.is_faulty(version) && rng.gen_ratio(CANARY_ERROR_PCT, 100);
        (error, latency)
    }

    /// The report loop (see the module docs).
    async fn report_loop(self: Arc<Self>, agent: Arc<Agent>, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let actor = Actor {
            name: AGENT_PRINCIPAL.into(),
            authenticated: true,
        };
        loop {
            let pause = rng.gen_range(REPORT_EVERY_MS.0..=REPORT_EVERY_MS.1);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            if self.stopped() {
                break;
            }
            let Some((generation, stats)) = lock(&agent.core).take_report() else {
                continue;
            };
            let node = agent.node().filter(|_| !self.is_cut_off(&agent));
            let Some((id, node)) = node else {
                lock(&agent.core).report_failed();
                continue;
            };
            let op = Op::ReportServing {
                endpoint: self.endpoint.clone(),
                model: self.model.clone(),
                agent: agent.name.clone(),
                generation,
                stats: stats
                    .iter()
                    .map(|s| VersionStats {
                        version: s.version,
                        requests: s.requests,
                        errors: s.errors,
                        p99_ms: s.p99_ms,
                    })
                    .collect(),
            };
            let hop = self.hop(&mut rng, &agent, id);
            tokio::time::sleep(hop).await;
            let answer =
                tokio::time::timeout(AGENT_CALL_TIMEOUT, node.propose(actor.clone(), op)).await;
            tokio::time::sleep(hop).await;
            if self.is_cut_off(&agent) {
                lock(&agent.core).report_failed();
                lock(&agent.log).reports_failed += 1;
                continue;
            }
            match answer {
                Ok(Ok(Response::ServingReport(taken))) => {
                    let (d, rolled_back) = *taken;
                    lock(&agent.log).reports += 1;
                    self.reachable(&agent, true);
                    if rolled_back {
                        self.trace.record(format!(
                            "{}'s report for generation {generation} rolled {} back: generation {}",
                            agent.name, self.endpoint, d.generation
                        ));
                    }
                    self.apply(&agent, deployment_to_proto(&d), &mut rng);
                }
                Ok(Ok(other)) => {
                    self.violation(Violation::new(
                        "agent-report-refused",
                        format!("{}'s report was answered {other:?}", agent.name),
                    ));
                }
                Ok(Err(
                    e @ (NodeError::Rejected(_)
                    | NodeError::Invalid(_)
                    | NodeError::PermissionDenied(_)),
                )) => {
                    lock(&agent.log).reports_failed += 1;
                    self.violation(Violation::new(
                        "agent-report-refused",
                        format!(
                            "{}'s report for generation {generation} via n{id} was refused: {}",
                            agent.name,
                            first_line(&e.to_string())
                        ),
                    ));
                }
                Ok(Err(_)) | Err(_) => {
                    lock(&agent.core).report_failed();
                    lock(&agent.log).reports_failed += 1;
                    self.reachable(&agent, false);
                    *lock(&agent.suspect) = Some(id);
                    lock(&agent.failed).insert(id, Instant::now());
                }
            }
        }
    }
}

/// How long `bytes` take at `rate` bytes per second.
fn per_second(bytes: u64, rate: u64) -> Duration {
    Duration::from_micros((bytes as u128 * 1_000_000 / u128::from(rate.max(1))) as u64)
}

/// Whether `d` sends all traffic back to a version older than one the core routes to now:
/// what `AgentCore` calls a rollback (the planted bug drops exactly these).
fn rolls_back(core: &AgentCore, d: &proto::Deployment) -> bool {
    let Some(current) = core.deployment() else {
        return false;
    };
    match d.split.as_slice() {
        [only] if only.percent == 100 => current.split.iter().any(|s| s.version > only.version),
        _ => false,
    }
}
