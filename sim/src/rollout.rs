//! The `rollout` scenario (issue 15): a fleet of serving agents ([`crate::agents`], the client
//! crate's `AgentCore` under virtual time) in several regions follows one endpoint while an
//! operator rolls new versions out round after round, the real rollout controller of every
//! node moves the steps, apply rolls back a canary the agents' reports find failing, and nodes
//! crash and are cut off (`schedule::rollout_schedule`, one fault at a time) and agents lose
//! the registry ([`cut_off_schedule`]).
//!
//! Setup, before any fault: the operator (`rollout-operator`, an admin) creates the model,
//! registers version 1 (a small inline artifact; its size for the agents' pulls is drawn from
//! [`VERSION_BYTES`]), promotes it to Production and creates the endpoint on it. Then the
//! agents start, and the operator's rounds ([`Operator::run`]): register the next version, move
//! it to Staging, start a rollout by [`PLAN`] within [`BOUNDS`], and then, by the round's kind
//! drawn from its seed ([`RoundKind`]):
//! - **clean**: promote the target to Production at the step before 100% so the controller can
//!   complete it; now and then roll it back by hand once complete;
//! - **faulty canary**: from a drawn step on, the target fails [`crate::agents::CANARY_ERROR_PCT`]
//!   % of its requests; the agents' reports then put it over the bounds and apply rolls it back;
//! - **hand rollback**: the operator rolls it back at a drawn step.
//!
//! A round whose rollout is still in progress after [`ROUND_TIMEOUT`] is rolled back by hand.
//! Commands go through the clients' command path (`Clients::submit`), reads are linearizable
//! through a random node.
//!
//! Every [`OBSERVE_INTERVAL`] an observer reads each up node's applied endpoint and notes when
//! each generation was first applied anywhere: its commit time, for the checker
//! ([`crate::check_rollout`]).
//!
//! After the scenario's time the operator stops, faults heal, and the agents run
//! [`AGENT_SETTLE`] more (so every change reaches them) before they stop and their logs are
//! checked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use quiver_node::command::{Op, Response};
use quiver_node::deploy::{Bounds, Deployment, Step};
use quiver_node::domain::{Actor, RiskTier, Signature, Stage, VersionMetadata, VersionStatus};
use quiver_node::node::Consistency;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::agents::{Agent, Fleet};
use crate::check::Violation;
use crate::check_rollout::{AgentLog, PROPAGATION_BOUND_MS};
use crate::client::{first_line, Clients, Outcome, Pick};
use crate::cluster::Cluster;
use crate::config::{sub_seed, Plant, SimConfig};
use crate::deployers::DeployLog;
use crate::schedule::NodeId;
use crate::trace::SharedTrace;

/// The scenario's model and endpoint.
pub const ROLLOUT_MODEL: &str = "roll-m";
pub const ROLLOUT_ENDPOINT: &str = "roll-ep";
/// The operator's principal (granted the admin role at boot).
pub const OPERATOR: &str = "rollout-operator";
/// Every round's plan: shadow 1 s → 5% 1.5 s → 25% 1.5 s → 100%.
pub const PLAN: &[Step] = &[
    Step {
        percent: 0,
        duration_ms: 1_000,
    },
    Step {
        percent: 5,
        duration_ms: 1_500,
    },
    Step {
        percent: 25,
        duration_ms: 1_500,
    },
    Step {
        percent: 100,
        duration_ms: 0,
    },
];
/// Every round's bounds: over 5 % errors or 300 ms p99 rolls back; a step moves on after 20
/// requests of the target (or copies, in the shadow step).
pub const BOUNDS: Bounds = Bounds {
    error_rate_pct_max: 5.0,
    p99_ms_max: 300.0,
    min_requests: 20,
};
/// Size of each version for the agents' pulls, drawn from this range (bytes).
pub const VERSION_BYTES: (u64, u64) = (16 << 20, 96 << 20);
/// How often the observer reads every node's endpoint.
pub const OBSERVE_INTERVAL: Duration = Duration::from_millis(20);
/// How often the operator reads its endpoint during a round, drawn from this range (ms).
pub const OPERATOR_POLL_MS: (u64, u64) = (200, 400);
/// Deadline of the operator's reads.
pub const OPERATOR_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// A round still in progress after this long is rolled back by hand.
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between rounds, drawn from this range (ms).
pub const ROUND_GAP_MS: (u64, u64) = (500, 1_500);
/// How long the agents run after the faults heal, before they stop: longer than the
/// propagation bound, so every change committed before the healing is judged.
pub const AGENT_SETTLE: Duration = Duration::from_millis(PROPAGATION_BOUND_MS + 2_000);
/// First spell of agents cut off from the registry.
pub const CUT_OFF_FIRST_MS: u64 = 4_000;
/// Pause between the starts of two spells, drawn from this range (ms).
pub const CUT_OFF_GAP_MS: (u64, u64) = (2_000, 6_000);
/// How long a spell lasts, drawn from this range (ms).
pub const CUT_OFF_MS: (u64, u64) = (1_000, 4_000);
/// A spell that is not a whole region's cuts this share of the agents off, in percent.
pub const CUT_OFF_SHARE_PCT: usize = 10;

/// What the operator does with one round's rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundKind {
    /// Promote the target before the last step; roll back by hand once complete if asked.
    Clean { then_rollback: bool },
    /// The target fails requests from this step on: apply rolls it back.
    Faulty { from_step: usize },
    /// Roll back by hand at this step.
    Hand { at_step: usize },
}

impl RoundKind {
    /// One round's kind: 40 % faulty, 25 % rolled back by hand, the rest clean (a third of
    /// those rolled back once complete). A fault or a hand rollback comes in the shadow step
    /// one time in five, else once the target takes traffic.
    pub fn draw(rng: &mut impl Rng) -> RoundKind {
        let last = PLAN.len() - 2;
        let roll = rng.gen_range(0..100u32);
        let step = match rng.gen_ratio(1, 5) {
            true => 0,
            false => rng.gen_range(1..=last),
        };
        match roll {
            0..=39 => RoundKind::Faulty { from_step: step },
            40..=64 => RoundKind::Hand { at_step: step },
            roll => RoundKind::Clean {
                then_rollback: roll >= 88,
            },
        }
    }
}

/// A spell of agents cut off from every node: from, to, which agents, and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutOff {
    pub at_ms: u64,
    pub until_ms: u64,
    pub agents: Vec<usize>,
    pub what: String,
}

/// Spells of agents cut off from the registry during a run of `duration_ms` (pure): a whole
/// region's agents, or [`CUT_OFF_SHARE_PCT`] % of them drawn at random; one at a time, all
/// over before the end.
pub fn cut_off_schedule(seed: u64, agents: usize, regions: usize, duration_ms: u64) -> Vec<CutOff> {
    let mut rng = StdRng::seed_from_u64(seed);
    let regions = regions.max(1);
    let mut out = Vec::new();
    let mut t = CUT_OFF_FIRST_MS;
    while t < duration_ms {
        let until = (t + rng.gen_range(CUT_OFF_MS.0..=CUT_OFF_MS.1)).min(duration_ms);
        let (what, chosen) = if rng.gen_ratio(1, 3) {
            let region = rng.gen_range(0..regions);
            (
                format!("region {region}'s agents cut off"),
                (0..agents).filter(|i| i % regions == region).collect(),
            )
        } else {
            let n = (agents * CUT_OFF_SHARE_PCT).div_ceil(100);
            let mut set = BTreeSet::new();
            while set.len() < n.min(agents) {
                set.insert(rng.gen_range(0..agents));
            }
            (format!("{n} agents cut off"), set.into_iter().collect())
        };
        out.push(CutOff {
            at_ms: t,
            until_ms: until,
            agents: chosen,
            what,
        });
        t = until + rng.gen_range(CUT_OFF_GAP_MS.0..=CUT_OFF_GAP_MS.1);
    }
    out
}

/// A running scenario: the agents and the tasks around them.
pub struct RolloutRun {
    fleet: Arc<Fleet>,
    agents: Vec<Arc<Agent>>,
    operator: JoinHandle<DeployLog>,
    observer: JoinHandle<Observed>,
    observer_stop: Arc<AtomicBool>,
    cut_offs: JoinHandle<()>,
    trace: SharedTrace,
}

/// What a finished scenario hands the checkers.
pub struct RolloutOutcome {
    pub deploy_log: DeployLog,
    pub committed_ms: BTreeMap<u64, u64>,
    /// Spells in which no leader could serve ([`serving_leader`]).
    pub unavailable_ms: Vec<(u64, u64)>,
    pub agents: Vec<AgentLog>,
    pub agents_stopped_ms: u64,
    pub violations: Vec<Violation>,
}

/// Set the endpoint up, then start the agents, the operator, the observer and the agents'
/// faults (see the module docs). `Err` if the setup fails (no fault has been injected yet).
pub async fn start(
    cfg: &SimConfig,
    cluster: &Arc<Cluster>,
    clients: &Arc<Clients>,
    trace: &SharedTrace,
) -> anyhow::Result<RolloutRun> {
    let fleet = Fleet::new(
        cluster.clone(),
        trace.clone(),
        ROLLOUT_ENDPOINT,
        ROLLOUT_MODEL,
        cfg.regions,
        cfg.plant == Some(Plant::AgentIgnoresRollback),
    );
    let mut op = Operator {
        clients: clients.clone(),
        fleet: fleet.clone(),
        rng: StdRng::seed_from_u64(sub_seed(cfg.seed, "operator")),
    };
    op.setup().await.context("set up the rollout's endpoint")?;
    let agents = fleet.start(cfg.agents, sub_seed(cfg.seed, "agents"));
    let observer_stop = Arc::new(AtomicBool::new(false));
    let observer = tokio::spawn(observe(
        cluster.clone(),
        trace.clone(),
        observer_stop.clone(),
    ));
    let operator = tokio::spawn(op.run());
    let schedule = cut_off_schedule(
        sub_seed(cfg.seed, "agent-cut-offs"),
        cfg.agents,
        cfg.regions,
        cfg.duration_ms(),
    );
    let cut_offs = tokio::spawn(drive_cut_offs(
        fleet.clone(),
        agents.clone(),
        schedule,
        trace.clone(),
        cfg.duration_ms(),
    ));
    Ok(RolloutRun {
        fleet,
        agents,
        operator,
        observer,
        observer_stop,
        cut_offs,
        trace: trace.clone(),
    })
}

impl RolloutRun {
    /// After the scenario's time (the clients told to stop, faults healed): let the agents run
    /// [`AGENT_SETTLE`] more, stop them and collect what the checkers need.
    pub async fn finish(self) -> anyhow::Result<RolloutOutcome> {
        let deploy_log = self.operator.await.context("rollout operator task")?;
        self.cut_offs.await.context("agent cut-off task")?;
        tokio::time::sleep(AGENT_SETTLE).await;
        self.fleet.stop();
        let agents_stopped_ms = self.trace.elapsed_ms();
        let agents = self.fleet.logs(&self.agents);
        self.observer_stop.store(true, Ordering::SeqCst);
        let observed = self.observer.await.context("commit observer task")?;
        Ok(RolloutOutcome {
            deploy_log,
            committed_ms: observed.committed_ms,
            unavailable_ms: observed.unavailable_ms,
            agents,
            agents_stopped_ms,
            violations: self.fleet.take_violations(),
        })
    }
}

/// Apply the agents' cut-offs at their times, and heal all at the scenario's end.
async fn drive_cut_offs(
    fleet: Arc<Fleet>,
    agents: Vec<Arc<Agent>>,
    schedule: Vec<CutOff>,
    trace: SharedTrace,
    duration_ms: u64,
) {
    let start = trace.start();
    // (time, start?, spell index), in time order; ends before starts at equal times.
    let mut events: Vec<(u64, bool, usize)> = schedule
        .iter()
        .enumerate()
        .flat_map(|(i, c)| [(c.at_ms, true, i), (c.until_ms, false, i)])
        .collect();
    events.sort();
    for (at, begins, i) in events {
        tokio::time::sleep_until(start + Duration::from_millis(at)).await;
        let spell = &schedule[i];
        trace.record(format!(
            "{} {}",
            if begins { "fault" } else { "heal" },
            spell.what
        ));
        fleet.cut_off(&agents, &spell.agents, begins);
    }
    tokio::time::sleep_until(start + Duration::from_millis(duration_ms)).await;
    let all: Vec<usize> = (0..agents.len()).collect();
    fleet.cut_off(&agents, &all, false);
}

/// What the observer saw: when each generation was first applied somewhere, and the spells in
/// which the registry could not serve.
#[derive(Default)]
struct Observed {
    committed_ms: BTreeMap<u64, u64>,
    unavailable_ms: Vec<(u64, u64)>,
}

/// The leader that can serve now, if one can: a node that is leader and that a majority of
/// the `voters` (itself included) follow in its term over links not cut either way. `nodes`
/// holds each up node's (id, is leader, term, leader it follows).
pub fn serving_leader(
    nodes: &[(NodeId, bool, u64, Option<NodeId>)],
    voters: usize,
    cut: impl Fn(NodeId, NodeId) -> bool,
) -> Option<NodeId> {
    nodes
        .iter()
        .filter(|(_, leads, _, _)| *leads)
        .find(|&&(leader, _, term, _)| {
            let following = nodes
                .iter()
                .filter(|&&(id, _, t, follows)| {
                    id == leader
                        || (t == term
                            && follows == Some(leader)
                            && !cut(leader, id)
                            && !cut(id, leader))
                })
                .count();
            following > voters / 2
        })
        .map(|(id, _, _, _)| *id)
}

/// Every [`OBSERVE_INTERVAL`] until `stop`: each up node's applied endpoint (generation →
/// when some node first had it, virtual ms), and whether a leader can serve
/// ([`serving_leader`]).
async fn observe(cluster: Arc<Cluster>, trace: SharedTrace, stop: Arc<AtomicBool>) -> Observed {
    let mut seen = Observed::default();
    let mut down_since: Option<u64> = None;
    let voters = cluster.ids().len();
    while !stop.load(Ordering::SeqCst) {
        let now = trace.elapsed_ms();
        for id in cluster.up_ids() {
            let Some(node) = cluster.handle(id) else {
                continue;
            };
            let read = node.read_applied(|app, txn| {
                app.find_deployment(txn, ROLLOUT_ENDPOINT)
                    .map_err(|e| anyhow::anyhow!("{e}"))
            });
            let Ok((_, Some(d))) = read else { continue };
            let from = seen.committed_ms.keys().next_back().map_or(1, |g| g + 1);
            for g in from..=d.generation {
                seen.committed_ms.insert(g, now);
                trace.record(format!("observer: generation {g} applied on n{id}"));
            }
        }
        let nodes: Vec<(NodeId, bool, u64, Option<NodeId>)> = cluster
            .metrics()
            .iter()
            .map(|(id, m)| {
                (
                    *id,
                    m.state == openraft::ServerState::Leader,
                    m.current_term,
                    m.current_leader,
                )
            })
            .collect();
        let serving = cluster
            .router()
            .with_links(|l| serving_leader(&nodes, voters, |a, b| l.is_cut(a, b)));
        match (serving, down_since) {
            (None, None) => down_since = Some(now),
            (Some(_), Some(since)) => {
                seen.unavailable_ms.push((since, now));
                trace.record(format!("observer: no leader could serve from {since} ms"));
                down_since = None;
            }
            _ => {}
        }
        tokio::time::sleep(OBSERVE_INTERVAL).await;
    }
    if let Some(since) = down_since {
        seen.unavailable_ms.push((since, trace.elapsed_ms()));
    }
    seen
}

/// The operator: sets the endpoint up, then rolls versions out (see the module docs).
struct Operator {
    clients: Arc<Clients>,
    fleet: Arc<Fleet>,
    rng: StdRng,
}

impl Pick for Operator {
    fn pick(&mut self, n: usize) -> usize {
        self.rng.gen_range(0..n.max(1))
    }
}

impl Operator {
    fn trace(&self, what: String) {
        self.clients.trace.record(format!("operator {what}"));
    }

    /// Stamp `op` at the first up node reached and submit it as a client's op is.
    async fn send(&mut self, what: &str, op: Op) -> Outcome {
        let actor = Actor {
            name: OPERATOR.into(),
            authenticated: true,
        };
        let clients = self.clients.clone();
        let (first, cmd) = loop {
            let ids = clients.cluster.ids();
            let id = ids[self.pick(ids.len())];
            if let Some(node) = clients.cluster.node(id) {
                break (id, node.stamp(actor, op));
            }
            clients.pause(self).await;
        };
        let outcome = clients.submit(self, &cmd, first).await;
        let told = match &outcome {
            Outcome::Acked { node, .. } => format!("ack via n{node}"),
            Outcome::Rejected(e) => format!("rejected: {}", first_line(&e.to_string())),
            Outcome::Failed(e) => format!("failed: {e}"),
        };
        self.trace(format!("{what}: {told}"));
        outcome
    }

    /// `send`, which must be acknowledged (the setup, before faults).
    async fn must(&mut self, what: &str, op: Op) -> anyhow::Result<Option<Response>> {
        match self.send(what, op).await {
            Outcome::Acked { response, .. } => Ok(response),
            Outcome::Rejected(e) => anyhow::bail!("{what}: rejected: {e}"),
            Outcome::Failed(e) => anyhow::bail!("{what}: {e}"),
        }
    }

    /// A new small inline version of the model; its number.
    fn create_version(&mut self, seq: u64) -> Op {
        let (manifest, inline_chunks) = crate::workload::small_artifact(&mut self.rng);
        Op::CreateVersion {
            model: ROLLOUT_MODEL.into(),
            manifest_root: manifest.root().to_hex(),
            manifest,
            signature: Signature::default(),
            metadata: VersionMetadata {
                data_snapshot_id: format!("roll-snap-{seq}"),
                code_commit: format!("rollc{seq}"),
                pipeline_run_id: format!("roll-run-{seq}"),
                ..VersionMetadata::default()
            },
            tags: BTreeMap::new(),
            status: VersionStatus::Ready,
            inline_chunks,
        }
    }

    fn set_stage(number: u64, stage: Stage) -> Op {
        Op::SetStage {
            model: ROLLOUT_MODEL.into(),
            number,
            stage,
            reason: "rollout operator".into(),
            override_signature: false,
        }
    }

    /// Model, version 1 in Production, the endpoint on it.
    async fn setup(&mut self) -> anyhow::Result<()> {
        self.must(
            "create the model",
            Op::CreateModel {
                name: ROLLOUT_MODEL.into(),
                namespace: "rollout".into(),
                description: String::new(),
                risk_tier: RiskTier::Low,
                tags: BTreeMap::new(),
            },
        )
        .await?;
        let op = self.create_version(0);
        let number = match self.must("register version 1", op).await? {
            Some(Response::Version(v)) => v.number,
            other => anyhow::bail!("register version 1: answered {other:?}"),
        };
        self.size(number);
        self.must(
            "promote version 1",
            Self::set_stage(number, Stage::Production),
        )
        .await?;
        self.must(
            "create the endpoint",
            Op::CreateDeployment {
                endpoint: ROLLOUT_ENDPOINT.into(),
                model: ROLLOUT_MODEL.into(),
                version: number,
                reason: "rollout operator".into(),
            },
        )
        .await?;
        Ok(())
    }

    /// Draw `number`'s size for the agents' pulls.
    fn size(&mut self, number: u64) {
        let bytes = self.rng.gen_range(VERSION_BYTES.0..=VERSION_BYTES.1);
        self.fleet.set_size(number, bytes);
    }

    /// The endpoint, read linearizably through a random node.
    async fn read(&mut self) -> Option<Deployment> {
        let ids = self.clients.cluster.ids().to_vec();
        let id = ids[self.pick(ids.len())];
        let node = self.clients.cluster.node(id)?;
        let read = node.read(Consistency::Linearizable, |app, txn| {
            app.find_deployment(txn, ROLLOUT_ENDPOINT)
        });
        match tokio::time::timeout(OPERATOR_READ_TIMEOUT, read).await {
            Ok(Ok(d)) => d,
            _ => None,
        }
    }

    async fn poll_pause(&mut self) {
        let ms = self.rng.gen_range(OPERATOR_POLL_MS.0..=OPERATOR_POLL_MS.1);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Roll back by hand; the reason is logged if acknowledged.
    async fn rollback(&mut self, reason: String, log: &mut DeployLog) {
        let op = Op::Rollback {
            endpoint: ROLLOUT_ENDPOINT.into(),
            model: ROLLOUT_MODEL.into(),
            reason: reason.clone(),
        };
        if let Outcome::Acked { .. } = self.send(&format!("roll back ({reason})"), op).await {
            log.rollbacks_acked.push(reason);
        }
    }

    /// Rounds until the clients stop; what the deployment checker needs.
    async fn run(mut self) -> DeployLog {
        let mut log = DeployLog {
            endpoint: ROLLOUT_ENDPOINT.into(),
            ..DeployLog::default()
        };
        let mut round = 0u64;
        while !self.clients.stopped() {
            round += 1;
            self.round(round, &mut log).await;
            let gap = self.rng.gen_range(ROUND_GAP_MS.0..=ROUND_GAP_MS.1);
            tokio::time::sleep(Duration::from_millis(gap)).await;
        }
        log
    }

    /// One round (see the module docs).
    async fn round(&mut self, round: u64, log: &mut DeployLog) {
        let kind = RoundKind::draw(&mut self.rng);
        // Register the round's version and move it to Staging; an unknown outcome is tried
        // again (a registration twice leaves a version unused).
        let version = loop {
            if self.clients.stopped() {
                return;
            }
            let op = self.create_version(round);
            match self
                .send(&format!("round {round}: register a version"), op)
                .await
            {
                Outcome::Acked {
                    response: Some(Response::Version(v)),
                    ..
                } => break v.number,
                _ => self.poll_pause().await,
            }
        };
        self.size(version);
        loop {
            if self.clients.stopped() {
                return;
            }
            let op = Self::set_stage(version, Stage::Staging);
            match self
                .send(&format!("round {round}: {version} to Staging"), op)
                .await
            {
                Outcome::Acked { .. } | Outcome::Rejected(_) => break,
                Outcome::Failed(_) => self.poll_pause().await,
            }
        }
        let reason = format!("rollout round {round}");
        log.rollouts
            .insert(reason.clone(), (version, PLAN.to_vec()));
        let text: Vec<String> = PLAN.iter().map(Step::to_string).collect();
        self.trace(format!(
            "round {round}: {kind:?}, version {version}, plan {}",
            text.join(", ")
        ));
        let start = Op::StartRollout {
            endpoint: ROLLOUT_ENDPOINT.into(),
            model: ROLLOUT_MODEL.into(),
            version,
            plan: PLAN.to_vec(),
            bounds: BOUNDS,
            reason,
        };
        if let Outcome::Rejected(e) = self.send(&format!("round {round}: start"), start).await {
            self.trace(format!("round {round}: not started: {e}"));
            return;
        }
        let began = Instant::now();
        let (mut acted, mut timed_out) = (false, false);
        let completed = loop {
            self.poll_pause().await;
            if self.clients.stopped() {
                return;
            }
            let Some(d) = self.read().await else { continue };
            let Some(r) = d.rollout.as_ref().filter(|r| r.target == version) else {
                break d.stable == version;
            };
            match kind {
                RoundKind::Faulty { from_step } if r.step >= from_step && !acted => {
                    acted = true;
                    self.trace(format!("round {round}: version {version} turns faulty"));
                    self.fleet.set_faulty(version);
                }
                RoundKind::Hand { at_step } if r.step >= at_step && !acted => {
                    acted = true;
                    self.rollback(format!("hand rollback round {round}"), log)
                        .await;
                }
                RoundKind::Clean { .. } if r.step + 2 == PLAN.len() && !acted => {
                    let op = Self::set_stage(version, Stage::Production);
                    let what = format!("round {round}: promote {version}");
                    if let Outcome::Acked { .. } | Outcome::Rejected(_) = self.send(&what, op).await
                    {
                        acted = true;
                    }
                }
                _ => {}
            }
            if began.elapsed() > ROUND_TIMEOUT && !timed_out {
                timed_out = true;
                self.rollback(format!("round {round} timed out"), log).await;
            }
        };
        if completed
            && kind
                == (RoundKind::Clean {
                    then_rollback: true,
                })
        {
            self.poll_pause().await;
            self.rollback(format!("hand rollback after round {round}"), log)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_offs_come_one_at_a_time_within_the_run_and_take_a_region_or_a_share() {
        let (mut regions, mut shares) = (0, 0);
        for seed in 0..50 {
            let s = cut_off_schedule(seed, 100, 3, 30_000);
            assert_eq!(s, cut_off_schedule(seed, 100, 3, 30_000));
            assert!(!s.is_empty());
            for w in s.windows(2) {
                assert!(w[0].until_ms < w[1].at_ms, "{w:?}");
            }
            for c in &s {
                assert!(c.at_ms < c.until_ms && c.until_ms <= 30_000, "{c:?}");
                let distinct: BTreeSet<usize> = c.agents.iter().copied().collect();
                assert_eq!(distinct.len(), c.agents.len());
                assert!(c.agents.iter().all(|&a| a < 100));
                match c.agents.len() {
                    10 => shares += 1,
                    33 | 34 => {
                        regions += 1;
                        let r = c.agents[0] % 3;
                        assert!(c.agents.iter().all(|a| a % 3 == r));
                    }
                    n => panic!("{n} agents in {c:?}"),
                }
            }
        }
        assert!(regions > 20 && shares > 40, "{regions} {shares}");
    }

    #[test]
    fn round_kinds_cover_every_way_a_rollout_ends() {
        let mut rng = StdRng::seed_from_u64(1);
        let kinds: Vec<RoundKind> = (0..400).map(|_| RoundKind::draw(&mut rng)).collect();
        for step in 0..PLAN.len() - 1 {
            assert!(kinds.contains(&RoundKind::Faulty { from_step: step }));
            assert!(kinds.contains(&RoundKind::Hand { at_step: step }));
        }
        for then_rollback in [false, true] {
            assert!(kinds.contains(&RoundKind::Clean { then_rollback }));
        }
    }

    #[test]
    fn a_leader_serves_only_with_a_majority_following_it_over_uncut_links() {
        let cut_none = |_, _| false;
        // n1 leads term 3, n2 and n3 follow it: a majority of 5 with n1.
        let mut nodes = vec![
            (1, true, 3, Some(1)),
            (2, false, 3, Some(1)),
            (3, false, 3, Some(1)),
            (4, false, 2, Some(5)),
        ];
        assert_eq!(serving_leader(&nodes, 5, cut_none), Some(1));
        // n3 cannot hear n1: two of five.
        assert_eq!(serving_leader(&nodes, 5, |a, b| (a, b) == (1, 3)), None);
        // n3 follows n1 in an older term: two of five.
        nodes[2].2 = 2;
        assert_eq!(serving_leader(&nodes, 5, cut_none), None);
        // No leader at all.
        nodes[0].1 = false;
        assert_eq!(serving_leader(&nodes, 5, cut_none), None);
        // A leader alone in a one-node view of a three-node cluster.
        assert_eq!(serving_leader(&[(2, true, 7, Some(2))], 3, cut_none), None);
    }

    #[test]
    fn the_plan_and_bounds_are_valid() {
        quiver_node::deploy::check_plan(PLAN, &BOUNDS).unwrap();
        assert!(BOUNDS.error_rate_pct_max < f64::from(crate::agents::CANARY_ERROR_PCT));
    }
}
