//! Simulated deployers (issue 15): in the chaos scenario each deployer (`deployer-N`, granted
//! the approver role at boot) owns one model and one endpoint and drives them through the
//! deployment commands, on a seeded RNG of its own, so the pipelines' draws are unchanged.
//!
//! Each turn it reads its model's versions and its endpoint linearizably through a random node,
//! then sends what that state calls for through the clients' command path
//! (`Clients::submit`: stamped at the first node reached, retried through others keeping the
//! stamp): create the model, register small inline versions, promote one to Production, create
//! the endpoint, move the next version to Staging, start a rollout with a short plan
//! ([`PLANS`]), and while it runs report serving counts (mostly healthy, some over the bounds,
//! which roll it back in apply), promote the target to Production so the rollout can complete,
//! pause and resume, or roll back by hand. The rollout controller (every node's, acting on the
//! leader) moves the steps. An op whose outcome is unknown is simply read back next turn.
//!
//! One turn in [`HOSTILE_DEPLOY_ONE_IN`] is a hostile deployment command instead
//! ([`crate::hostile::hostile_deploy_op`]) through `Node::propose`: it must be refused
//! (`hostile-accepted` otherwise).
//!
//! What the checker ([`crate::check_deploy`]) needs is logged ([`DeployLog`]): every rollout
//! sent, by the unique reason it carries (the history record keeps the reason, not the plan),
//! and the hand rollbacks acknowledged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use quiver_node::command::Op;
use quiver_node::deploy::{Bounds, Deployment, Step, VersionStats};
use quiver_node::domain::{Actor, RiskTier, Signature, Stage, VersionMetadata, VersionStatus};
use quiver_node::node::Consistency;
use quiver_node::NodeError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::check::Violation;
use crate::client::{first_line, Clients, Outcome, Pick, CLIENT_OP_TIMEOUT};
use crate::schedule::NodeId;

/// Deployers in a chaos run.
pub const DEPLOYERS: usize = 2;
/// A deployer's pause between turns, drawn from this range (virtual ms).
pub const DEPLOYER_THINK_MS: (u64, u64) = (100, 500);
/// One turn in this many is a hostile deployment command.
pub const HOSTILE_DEPLOY_ONE_IN: u32 = 8;
/// Most versions a deployer registers.
pub const DEPLOY_VERSIONS_MAX: usize = 6;
/// Serving agents per deployer (each report is one agent's latest).
pub const AGENTS_PER_DEPLOYER: u32 = 3;

/// The plans a deployer starts rollouts with (step durations in virtual ms).
pub const PLANS: [&[Step]; 4] = [
    &[
        Step {
            percent: 0,
            duration_ms: 1_000,
        },
        Step {
            percent: 10,
            duration_ms: 2_000,
        },
        Step {
            percent: 50,
            duration_ms: 2_000,
        },
        Step {
            percent: 100,
            duration_ms: 0,
        },
    ],
    &[
        Step {
            percent: 10,
            duration_ms: 1_000,
        },
        Step {
            percent: 50,
            duration_ms: 1_000,
        },
        Step {
            percent: 100,
            duration_ms: 0,
        },
    ],
    &[
        Step {
            percent: 0,
            duration_ms: 2_000,
        },
        Step {
            percent: 25,
            duration_ms: 1_000,
        },
        Step {
            percent: 100,
            duration_ms: 0,
        },
    ],
    &[
        Step {
            percent: 5,
            duration_ms: 1_000,
        },
        Step {
            percent: 20,
            duration_ms: 1_000,
        },
        Step {
            percent: 60,
            duration_ms: 1_000,
        },
        Step {
            percent: 100,
            duration_ms: 0,
        },
    ],
];

/// The bounds of every rollout: a report over 5 % errors or 300 ms p99 rolls it back.
pub const BOUNDS: Bounds = Bounds {
    error_rate_pct_max: 5.0,
    p99_ms_max: 300.0,
    min_requests: 0,
};

/// Deployer `id`'s principal (granted the approver role at boot, chaos only).
pub fn deployer(id: usize) -> String {
    format!("deployer-{id}")
}

/// Deployer `id`'s model.
pub fn deploy_model(id: usize) -> String {
    format!("dep{id}-m")
}

/// Deployer `id`'s endpoint.
pub fn deploy_endpoint(id: usize) -> String {
    format!("dep{id}-ep")
}

/// What a deployer sent that the checker needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeployLog {
    pub endpoint: String,
    /// Every rollout sent (acknowledged or not), by the unique reason it carried: its target
    /// and plan.
    pub rollouts: BTreeMap<String, (u64, Vec<Step>)>,
    /// The reasons of the hand rollbacks that were acknowledged.
    pub rollbacks_acked: Vec<String>,
}

struct Deployer {
    id: usize,
    rng: StdRng,
    seq: u64,
}

impl Pick for Deployer {
    fn pick(&mut self, n: usize) -> usize {
        self.rng.gen_range(0..n.max(1))
    }
}

/// What a deployer reads each turn: its model's versions (number, stage) and its endpoint.
struct View {
    model: bool,
    versions: Vec<(u64, Stage)>,
    deployment: Option<Deployment>,
}

impl Clients {
    /// Deployer `id`'s loop (see the module docs) with its own `seed`, until the pipelines
    /// stop; what it logged.
    pub async fn run_deployer(self: Arc<Self>, id: usize, seed: u64) -> DeployLog {
        let mut d = Deployer {
            id,
            rng: StdRng::seed_from_u64(seed),
            seq: 0,
        };
        let mut log = DeployLog {
            endpoint: deploy_endpoint(id),
            ..DeployLog::default()
        };
        while !self.stopped() {
            let think = d.rng.gen_range(DEPLOYER_THINK_MS.0..=DEPLOYER_THINK_MS.1);
            tokio::time::sleep(Duration::from_millis(think)).await;
            if d.rng.gen_ratio(1, HOSTILE_DEPLOY_ONE_IN) {
                self.hostile_deploy(&mut d).await;
                continue;
            }
            let Some(view) = self.deploy_view(&mut d).await else {
                continue;
            };
            let Some((what, op)) = next_deploy_op(&mut d, &view, &mut log) else {
                continue;
            };
            self.deploy_submit(&mut d, what, op, &mut log).await;
        }
        log
    }

    /// The deployer's model and endpoint, read linearizably through a random node.
    async fn deploy_view(&self, d: &mut Deployer) -> Option<View> {
        let ids = self.cluster.ids().to_vec();
        let id = ids[d.pick(ids.len())];
        let node = self.cluster.node(id)?;
        let (model, endpoint) = (deploy_model(d.id), deploy_endpoint(d.id));
        let read = node.read(Consistency::Linearizable, move |app, txn| {
            if app.find_model(txn, &model)?.is_none() {
                return Ok(View {
                    model: false,
                    versions: Vec::new(),
                    deployment: None,
                });
            }
            let (versions, _) = app.list_versions(txn, &model, None, "", 100, "")?;
            Ok(View {
                model: true,
                versions: versions.iter().map(|v| (v.number, v.stage)).collect(),
                deployment: app.find_deployment(txn, &endpoint)?,
            })
        });
        match tokio::time::timeout(CLIENT_OP_TIMEOUT, read).await {
            Ok(Ok(view)) => Some(view),
            Ok(Err(e)) => {
                self.trace.record(format!(
                    "dep{} read via n{id} failed: {}",
                    d.id,
                    first_line(&e.to_string())
                ));
                None
            }
            Err(_) => None,
        }
    }

    /// Stamp `op` at the first up node reached and submit it (retried as a client's op is).
    async fn deploy_submit(&self, d: &mut Deployer, what: String, op: Op, log: &mut DeployLog) {
        let actor = Actor {
            name: deployer(d.id),
            authenticated: true,
        };
        let (first, cmd) = loop {
            let ids = self.cluster.ids();
            let id = ids[d.pick(ids.len())];
            if let Some(node) = self.cluster.node(id) {
                break (id, node.stamp(actor, op));
            }
            self.pause(d).await;
        };
        self.count(|s| s.deploys += 1);
        let outcome = self.submit(d, &cmd, first).await;
        let told = match outcome {
            Outcome::Acked { node, .. } => {
                self.count(|s| s.deploys_acked += 1);
                if let Op::Rollback { reason, .. } = &cmd.op {
                    log.rollbacks_acked.push(reason.clone());
                }
                format!("ack via n{node}")
            }
            Outcome::Rejected(e) => format!("rejected: {}", first_line(&e.to_string())),
            Outcome::Failed(e) => format!("failed: {e}"),
        };
        self.trace.record(format!("dep{} {what}: {told}", d.id));
    }

    /// A hostile deployment command ([`crate::hostile::hostile_deploy_op`]) through a random
    /// node's command path: it must be refused.
    async fn hostile_deploy(&self, d: &mut Deployer) {
        let other = deploy_model((d.id + 1) % DEPLOYERS);
        let (label, op) = crate::hostile::hostile_deploy_op(
            &mut d.rng,
            &deploy_endpoint(d.id),
            &deploy_model(d.id),
            &other,
        );
        let ids = self.cluster.ids().to_vec();
        let target: NodeId = ids[d.pick(ids.len())];
        let Some(node) = self.cluster.node(target) else {
            return;
        };
        self.count(|s| s.deploys_hostile += 1);
        let actor = Actor {
            name: deployer(d.id),
            authenticated: true,
        };
        let router = self.cluster.router().clone();
        tokio::time::sleep(router.client_latency()).await;
        let answer = tokio::time::timeout(CLIENT_OP_TIMEOUT, node.propose(actor, op)).await;
        tokio::time::sleep(router.client_latency()).await;
        let said = match answer {
            Ok(Ok(response)) => {
                self.violation(Violation::new(
                    "hostile-accepted",
                    format!(
                        "dep{} {label} via n{target} was applied ({}) instead of rejected",
                        d.id,
                        first_line(&format!("{response:?}"))
                    ),
                ));
                "accepted".to_string()
            }
            Ok(Err(
                e @ (NodeError::Rejected(_)
                | NodeError::Invalid(_)
                | NodeError::PermissionDenied(_)),
            )) => format!("refused: {}", first_line(&e.to_string())),
            Ok(Err(e)) => format!("no answer: {}", first_line(&e.to_string())),
            Err(_) => "no answer in time".to_string(),
        };
        self.trace
            .record(format!("dep{} hostile {label} via n{target}: {said}", d.id));
    }
}

/// What the deployer sends next, given what it read (see the module docs); `None`: nothing this
/// turn (the controller moves the rollout).
fn next_deploy_op(d: &mut Deployer, view: &View, log: &mut DeployLog) -> Option<(String, Op)> {
    d.seq += 1;
    let (model, endpoint) = (deploy_model(d.id), deploy_endpoint(d.id));
    if !view.model {
        return Some((
            format!("create model {model}"),
            Op::CreateModel {
                name: model,
                namespace: format!("deploy-{}", d.id),
                description: String::new(),
                risk_tier: RiskTier::Low,
                tags: BTreeMap::new(),
            },
        ));
    }
    if view.versions.len() < 2 {
        return Some(create_version(d, model));
    }
    let stage_of = |n: u64| view.versions.iter().find(|(v, _)| *v == n).map(|(_, s)| *s);
    let set_stage = |number: u64, stage: Stage| {
        (
            format!("set stage {model}/{number} -> {stage:?}"),
            Op::SetStage {
                model: model.clone(),
                number,
                stage,
                reason: "deployer".into(),
                override_signature: false,
            },
        )
    };
    let Some(dep) = &view.deployment else {
        let production = view
            .versions
            .iter()
            .find(|(_, s)| *s == Stage::Production)
            .map(|(v, _)| *v);
        return Some(match production {
            None => set_stage(view.versions[0].0, Stage::Production),
            Some(version) => (
                format!("create endpoint {endpoint} on {model}/{version}"),
                Op::CreateDeployment {
                    endpoint,
                    model,
                    version,
                    reason: "deployer".into(),
                },
            ),
        });
    };
    let id = d.id;
    let rollback = |seq: u64| {
        (
            format!("rollback {endpoint} #{seq}"),
            Op::Rollback {
                endpoint: endpoint.clone(),
                model: model.clone(),
                reason: format!("dep{id} rollback #{seq}"),
            },
        )
    };
    let roll = d.rng.gen_range(0..100u32);
    if let Some(r) = &dep.rollout {
        return match roll {
            0..=44 => Some(report(d, dep, r.target, false)),
            45..=50 => Some(report(d, dep, r.target, true)),
            51..=62 if stage_of(r.target) == Some(Stage::Staging) => {
                Some(set_stage(r.target, Stage::Production))
            }
            63..=70 => Some((
                format!("pause={} {endpoint}", !r.paused),
                Op::PauseRollout {
                    endpoint: endpoint.clone(),
                    model: model.clone(),
                    pause: !r.paused,
                    reason: "deployer".into(),
                },
            )),
            71..=73 => Some(rollback(d.seq)),
            _ => None,
        };
    }
    let candidate = view
        .versions
        .iter()
        .rev()
        .find(|(v, _)| *v != dep.stable)
        .copied();
    if roll < 8 && dep.previous.is_some() {
        return Some(rollback(d.seq));
    }
    let all_stable = dep.split.len() == 1 && dep.shadows.is_empty();
    match candidate {
        Some((v, Stage::Experimental)) => Some(set_stage(v, Stage::Staging)),
        Some((v, Stage::Staging | Stage::Production)) if all_stable && roll < 16 => Some((
            format!("set {endpoint} to a 10% canary of {model}/{v}"),
            Op::SetTraffic {
                endpoint: endpoint.clone(),
                model: model.clone(),
                split: vec![(dep.stable, 90), (v, 10)],
                shadows: Vec::new(),
                reason: "deployer".into(),
            },
        )),
        Some((v, Stage::Staging | Stage::Production)) if all_stable => {
            let plan = PLANS[d.rng.gen_range(0..PLANS.len())].to_vec();
            let reason = format!("dep{} rollout #{}", d.id, d.seq);
            log.rollouts.insert(reason.clone(), (v, plan.clone()));
            let text: Vec<String> = plan.iter().map(Step::to_string).collect();
            Some((
                format!("roll out {model}/{v} on {endpoint}: {}", text.join(", ")),
                Op::StartRollout {
                    endpoint,
                    model,
                    version: v,
                    plan,
                    bounds: BOUNDS,
                    reason,
                },
            ))
        }
        Some((_, Stage::Staging | Stage::Production)) => Some((
            format!("set {endpoint} back to {model}/{}", dep.stable),
            Op::SetTraffic {
                endpoint,
                model,
                split: vec![(dep.stable, 100)],
                shadows: Vec::new(),
                reason: "deployer".into(),
            },
        )),
        _ if view.versions.len() < DEPLOY_VERSIONS_MAX => Some(create_version(d, model)),
        _ => None,
    }
}

/// A small inline version of `model`.
fn create_version(d: &mut Deployer, model: String) -> (String, Op) {
    let (manifest, inline_chunks) = crate::workload::small_artifact(&mut d.rng);
    (
        format!("register a version of {model}"),
        Op::CreateVersion {
            model,
            manifest_root: manifest.root().to_hex(),
            manifest,
            signature: Signature::default(),
            metadata: VersionMetadata {
                data_snapshot_id: format!("dep{}-snap", d.id),
                code_commit: format!("dep{}c{}", d.id, d.seq),
                pipeline_run_id: format!("dep{}-run-{}", d.id, d.seq),
                ..VersionMetadata::default()
            },
            tags: BTreeMap::new(),
            status: VersionStatus::Ready,
            inline_chunks,
        },
    )
}

/// One agent's counts since the endpoint's generation: the stable version's and the target's,
/// healthy or (`breach`) with a fifth of the target's requests failing.
fn report(d: &mut Deployer, dep: &Deployment, target: u64, breach: bool) -> (String, Op) {
    let agent = format!("agent-{}-{}", d.id, d.rng.gen_range(0..AGENTS_PER_DEPLOYER));
    let requests = d.rng.gen_range(50..200u64);
    let errors = if breach {
        requests / 5
    } else {
        d.rng.gen_range(0..=requests / 100)
    };
    let p99_ms = d.rng.gen_range(10.0..100.0);
    let mut stats = vec![VersionStats {
        version: target,
        requests,
        errors,
        p99_ms,
    }];
    if dep.stable != target {
        stats.push(VersionStats {
            version: dep.stable,
            requests: requests * 4,
            errors: 0,
            p99_ms,
        });
    }
    (
        format!(
            "report {agent} gen {} {}/{requests} errors",
            dep.generation, errors
        ),
        Op::ReportServing {
            endpoint: dep.endpoint.clone(),
            model: dep.model.clone(),
            agent,
            generation: dep.generation,
            stats,
        },
    )
}
