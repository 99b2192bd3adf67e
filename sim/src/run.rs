//! One simulated run, from seed to report.
//!
//! The run owns a fresh `current_thread` tokio runtime with paused (virtual) time and a
//! scheduler RNG seeded from the run's seed, and seeds openraft's per-thread RNG the same way;
//! the nodes, the network, the clients, the fault driver and the monitor all run as tasks on it.
//! Virtual time jumps to the next timer whenever every task waits, so a run costs only the CPU
//! it needs, and the same seed gives the same interleaving, the same faults at the same moments
//! and the same trace.
//!
//! Shape of a run: boot and initialise the cluster; start the pipelines, the watchers (chaos),
//! the fault driver (the scenario's schedule) and the monitor (leaders per term, digest and
//! version samples); at the end of the scenario stop the clients, heal every fault and restart
//! every node; wait until one leader is known to all and every node has applied the same index
//! (liveness); then read every node's final state and run the checkers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use openraft::ServerState;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::check::{
    check_acks, check_state, failover_times_ms, DigestBook, FinalState, LeaderBook, RootBook,
    Violation, VoteBook,
};
use crate::check_deploy::check_deploy;
use crate::check_rollout::{check_rollout, RolloutRecord};
use crate::check_watch::check_watch;
use crate::chunks::{Chunks, DOWNLOADERS};
use crate::client::Clients;
use crate::cluster::{read_state, Cluster};
use crate::config::{sub_seed, Plant, Scenario, SimConfig};
use crate::deployers::{deployer, DEPLOYERS};
use crate::disk::DISK_WRITEBACK_INTERVAL_MS;
use crate::membership;
use crate::net::{Router, CROSS_REGION_LATENCY_US, LINK_JITTER_PCT};
use crate::report::{FaultStats, RunReport, VIOLATIONS_KEPT_MAX};
use crate::schedule::{
    chaos_schedule, corruption_schedule, disk_fault_schedule, failover_schedule, max_down,
    membership_schedule, merge, node_ids, rollout_schedule, Fault, FaultEvent, NodeId, Target,
};
use crate::trace::SharedTrace;
use crate::watchers::WATCHERS;
use crate::workload::{Mix, Pipeline};

/// The Raft heartbeat a deployment over `regions` regions should use, as an operator would set
/// `--heartbeat-ms`: the default inside one region; across regions at least the largest round
/// trip the network can show (twice the longest one-way latency, plus its jitter).
pub fn heartbeat_ms_for(regions: usize) -> u64 {
    if regions <= 1 {
        return quiver_raft::HEARTBEAT_INTERVAL_MS;
    }
    let one_way_max_us = CROSS_REGION_LATENCY_US.1 * (100 + LINK_JITTER_PCT) / 100;
    (2 * one_way_max_us)
        .div_ceil(1000)
        .max(quiver_raft::HEARTBEAT_INTERVAL_MS)
}

/// How often the monitor looks at every node's Raft metrics.
pub const MONITOR_INTERVAL: Duration = Duration::from_millis(100);
/// Every this many monitor ticks it also samples the digest of every node whose applied index
/// moved since its last sample. A sample costs O(state) per node (a digest over every table),
/// so it is the run's main expense after Raft itself.
pub const SAMPLE_EVERY_TICKS: u64 = 20;
/// After healing, how long the cluster has to elect a leader and converge.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often convergence is polled.
const CONVERGE_POLL: Duration = Duration::from_millis(50);

/// Where violations and samples accumulate during a run.
#[derive(Default)]
struct Books {
    leaders: LeaderBook,
    votes: VoteBook,
    digests: DigestBook,
    roots: RootBook,
    violations: Vec<Violation>,
    violations_total: usize,
    digest_samples: u64,
    fatal_reported: BTreeSet<NodeId>,
}

impl Books {
    fn add(&mut self, v: Violation) {
        self.violations_total += 1;
        if self.violations.len() < VIOLATIONS_KEPT_MAX {
            self.violations.push(v);
        }
    }

    fn add_all(&mut self, vs: impl IntoIterator<Item = Violation>) {
        for v in vs {
            self.add(v);
        }
    }
}

type SharedBooks = Arc<Mutex<Books>>;

fn lock(books: &SharedBooks) -> std::sync::MutexGuard<'_, Books> {
    books
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The directory under which a run's data dir is made (see [`SimConfig::data_root`]).
pub fn data_root(cfg: &SimConfig) -> PathBuf {
    if let Some(root) = &cfg.data_root {
        return root.clone();
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(probe) = tempfile::Builder::new()
            .prefix("quiver-sim-probe-")
            .tempdir_in(shm)
        {
            drop(probe);
            return shm.to_path_buf();
        }
    }
    std::env::temp_dir()
}

/// Run one seed on this thread (see the module docs). `Err` only when the run could not be
/// carried out at all (no data dir, a node that cannot even boot); broken invariants are in the
/// report.
pub fn run(cfg: &SimConfig) -> anyhow::Result<RunReport> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    if cfg.scenario == Scenario::Load {
        anyhow::bail!("the load scenario has its own run and report: quiver_sim::load::run (quiver-sim run --seed S --scenario load)");
    }
    let root = data_root(cfg);
    let dir = tempfile::Builder::new()
        .prefix("quiver-sim-")
        .tempdir_in(&root)
        .with_context(|| format!("create a data dir under {}", root.display()))?;
    quiver_raft::seed_thread_rng(sub_seed(cfg.seed, "openraft"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(
            &sub_seed(cfg.seed, "tokio").to_le_bytes(),
        ))
        .build()
        .context("build the simulation runtime")?;
    let wall_start = std::time::Instant::now();
    crate::panics::capture();
    let result = runtime.block_on(simulate(cfg, dir.path()));
    let wall = wall_start.elapsed();
    // Drop whatever tasks are left (and their storage handles) before the data dir goes.
    drop(runtime);
    crate::panics::release();
    let mut report = result?;
    report.wall = wall;
    Ok(report)
}

async fn simulate(cfg: &SimConfig, dir: &Path) -> anyhow::Result<RunReport> {
    let trace = SharedTrace::new(cfg.keep_trace);
    let start = trace.start();
    trace.record(format!(
        "run seed {} scenario {} nodes {} regions {} clock skew {} ms clients {} duration {} s \
         plant {}",
        cfg.seed,
        cfg.scenario,
        cfg.nodes,
        cfg.regions,
        cfg.clock_skew_ms,
        cfg.clients,
        cfg.duration_s,
        cfg.plant.map(|p| p.name()).unwrap_or("none")
    ));
    let ids = node_ids(cfg.nodes);
    let router = Router::new(
        &ids,
        cfg.regions,
        sub_seed(cfg.seed, "net"),
        trace.clone(),
        true,
    );
    let skip_fsync = cfg.plant == Some(Plant::DropLogFsync);
    let chunks = Chunks::new(
        &ids,
        sub_seed(cfg.seed, "chunknet"),
        trace.clone(),
        Plant::planted_bugs(cfg.plant),
        Plant::planted_store_bugs(cfg.plant),
    );
    let cluster = Arc::new(
        Cluster::new(
            ids.clone(),
            dir,
            router,
            chunks.clone(),
            trace.clone(),
            skip_fsync,
        )
        .with_clock_skew(sub_seed(cfg.seed, "clocks"), cfg.clock_skew_ms)
        .with_heartbeat_ms(heartbeat_ms_for(cfg.regions))
        .with_planted(
            Plant::planted_raft_bugs(cfg.plant),
            Plant::planted_bugs(cfg.plant),
            Plant::planted_node_bugs(cfg.plant),
        ),
    );
    // Each pipeline writes as an admin, its intruder (hostile requests) holds only the reader
    // role, and its reviewer the approver role. In the chaos scenario, every other pipeline's
    // namespace has a policy asking one approval to enter Production: its promotions go
    // through reviews, which its reviewer approves and it (the registrant) tries to approve.
    // In the chaos scenario each deployer drives its own endpoint as an approver.
    let deployers = match cfg.scenario {
        Scenario::Chaos => DEPLOYERS,
        _ => 0,
    };
    // The rollout scenario's actors are its operator and its agents, not pipelines.
    let pipelines = match cfg.scenario {
        Scenario::Rollout => 0,
        _ => cfg.clients,
    };
    let rollout_grants = match cfg.scenario {
        Scenario::Rollout => vec![
            (
                crate::rollout::OPERATOR.to_string(),
                quiver_node::auth::Role::Admin,
            ),
            (
                crate::agents::AGENT_PRINCIPAL.to_string(),
                quiver_node::auth::Role::Approver,
            ),
        ],
        _ => Vec::new(),
    };
    let grants: Vec<(String, quiver_node::auth::Role)> = (0..pipelines)
        .flat_map(|id| {
            [
                (Pipeline::principal(id), quiver_node::auth::Role::Admin),
                (Pipeline::intruder(id), quiver_node::auth::Role::Reader),
                (Pipeline::reviewer(id), quiver_node::auth::Role::Approver),
            ]
        })
        .chain((0..deployers).map(|id| (deployer(id), quiver_node::auth::Role::Approver)))
        .chain(rollout_grants)
        .collect();
    let policies: Vec<quiver_node::command::Op> = match cfg.scenario {
        Scenario::Chaos => (0..cfg.clients)
            .filter(|id| Pipeline::gated(*id))
            .map(Pipeline::policy)
            .collect(),
        _ => Vec::new(),
    };
    cluster
        .boot(&grants, &policies)
        .await
        .context("boot the cluster")?;
    if skip_fsync {
        // A writeback with nothing dirty does nothing: only a run whose log skips fsyncs needs
        // the simulated kernel's flusher.
        spawn_writeback(&cluster, sub_seed(cfg.seed, "disk"));
    }

    let books: SharedBooks = Arc::default();
    let monitor_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = tokio::spawn(monitor(
        cluster.clone(),
        books.clone(),
        trace.clone(),
        monitor_stop.clone(),
    ));

    let clients = Clients::new(cluster.clone(), chunks.clone(), trace.clone(), cfg.plant);
    let downloads_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let downloaders: Vec<_> = (0..DOWNLOADERS)
        .filter(|_| cfg.scenario != Scenario::Rollout)
        .map(|c| {
            tokio::spawn(chunks.clone().download_loop(
                cluster.clone(),
                c,
                sub_seed(cfg.seed, &format!("downloader-{c}")),
                downloads_stop.clone(),
            ))
        })
        .collect();
    let mix = match cfg.scenario {
        Scenario::Chaos | Scenario::Rollout => Mix::Chaos,
        Scenario::Failover => Mix::Failover,
        Scenario::Load => {
            anyhow::bail!("the load scenario has its own run and report: quiver_sim::load::run (quiver-sim run --seed S --scenario load)")
        }
    };
    let pipelines: Vec<_> = (0..pipelines)
        .map(|i| {
            let p = Pipeline::new(i, sub_seed(cfg.seed, &format!("client-{i}")), mix);
            tokio::spawn(clients.clone().run_pipeline(p))
        })
        .collect();
    // Watchers follow the registry's changes through any node (chaos only: failover's figures
    // measure its steady load).
    let watchers: Vec<_> = match cfg.scenario {
        Scenario::Chaos => (0..WATCHERS)
            .map(|i| {
                let seed = sub_seed(cfg.seed, &format!("watcher-{i}"));
                tokio::spawn(clients.clone().run_watcher(i, cfg.clients, seed))
            })
            .collect(),
        _ => Vec::new(),
    };

    let deploying: Vec<_> = (0..deployers)
        .map(|i| {
            let seed = sub_seed(cfg.seed, &format!("deployer-{i}"));
            tokio::spawn(clients.clone().run_deployer(i, seed))
        })
        .collect();

    // The rollout scenario sets its endpoint up (before any fault), then starts its agents,
    // its operator and its observer.
    let rollout = match cfg.scenario {
        Scenario::Rollout => Some(crate::rollout::start(cfg, &cluster, &clients, &trace).await?),
        _ => None,
    };

    let duration_ms = cfg.duration_ms();
    let schedule = match cfg.scenario {
        Scenario::Chaos => merge(
            merge(
                merge(
                    chaos_schedule(sub_seed(cfg.seed, "faults"), cfg.nodes, duration_ms),
                    corruption_schedule(sub_seed(cfg.seed, "corruption"), cfg.nodes, duration_ms),
                ),
                membership_schedule(sub_seed(cfg.seed, "membership"), cfg.nodes, duration_ms),
            ),
            disk_fault_schedule(sub_seed(cfg.seed, "disk-faults"), cfg.nodes, duration_ms),
        ),
        Scenario::Failover => failover_schedule(sub_seed(cfg.seed, "faults"), duration_ms),
        Scenario::Rollout => rollout_schedule(
            sub_seed(cfg.seed, "faults"),
            cfg.nodes,
            cfg.regions,
            duration_ms,
        ),
        Scenario::Load => Vec::new(),
    };
    let driver = tokio::spawn(drive_faults(
        cluster.clone(),
        chunks.clone(),
        schedule,
        start,
        duration_ms,
        trace.clone(),
        books.clone(),
    ));

    tokio::time::sleep_until(start + Duration::from_millis(duration_ms)).await;
    clients.stop();
    downloads_stop.store(true, std::sync::atomic::Ordering::SeqCst);
    trace.record("scenario over: clients finish their op in hand");
    let Driven {
        stats: faults,
        kills_ms,
        changes,
    } = driver.await.context("fault driver task")?;
    let scenario_end_ms = trace.elapsed_ms();

    // Heal everything and bring every node back; ops still in flight may complete now.
    cluster.router().with_links(|l| l.heal_all());
    chunks.net().heal_all();
    chunks.heal_disks();
    for id in cluster.down_ids() {
        if let Err(e) = cluster.start(id).await {
            lock(&books).add(Violation::new("restart", format!("{e:#}")));
        }
    }
    trace.record("healed: all links up, all nodes started");
    // The agents run on past the healing until every change has reached them; convergence is
    // timed from their stop (their reports are writes).
    let rolled = match rollout {
        Some(r) => Some(r.finish().await?),
        None => None,
    };
    let healed = trace.elapsed();
    for change in changes {
        if let Some(v) = change.await.context("membership change task")? {
            lock(&books).add(v);
        }
    }
    for p in pipelines {
        p.await.context("client task")?;
    }
    let mut deployed = Vec::new();
    for d in deploying {
        deployed.push(d.await.context("deployer task")?);
    }
    if let Some(r) = &rolled {
        deployed.push(r.deploy_log.clone());
    }
    let mut watched = Vec::new();
    for w in watchers {
        watched.push(w.await.context("watcher task")?);
    }
    for d in downloaders {
        d.await.context("downloader task")?;
    }
    let converged = converge(&cluster, &trace).await;
    let converge_ms = converged
        .is_ok()
        .then(|| (trace.elapsed() - healed).as_millis() as u64);

    monitor_stop.store(true, std::sync::atomic::Ordering::SeqCst);
    monitor.await.context("monitor task")?;

    let acks = clients.acks();
    let mut final_applied = None;
    let mut final_digest = String::new();
    let mut final_state = FinalState::default();
    let mut rollout_figures = None;
    match converged {
        Err(v) => lock(&books).add(v),
        Ok(states) => {
            // Liveness of replication: repair keeps running until every node holds every
            // READY version intact, or the bound passes.
            let replication = match ready_manifests(&cluster) {
                Ok(versions) => chunks.await_replication(&versions).await,
                Err(v) => vec![v],
            };
            // Writes resume once space returns and syncs work again: every node takes a
            // fresh upload (W copies, through its own reserve check and chunk sink).
            let stuck = if cfg.scenario == Scenario::Chaos {
                chunks
                    .probe_writes(&cluster, sub_seed(cfg.seed, "probe"))
                    .await
            } else {
                Vec::new()
            };
            // What the probes (and failed uploads) left is collected while the nodes run.
            let kept = if cfg.scenario == Scenario::Chaos && stuck.is_empty() {
                chunks.await_collection(&cluster).await
            } else {
                Vec::new()
            };
            let mut b = lock(&books);
            b.add_all(replication);
            b.add_all(stuck);
            b.add_all(kept);
            for (id, index, digest, state) in &states {
                if let Some(v) = b.digests.observe(*id, *index, digest) {
                    b.add(v);
                }
                for ((model, number), v) in &state.versions {
                    if let Some(v) = b.roots.observe(*id, model, *number, &v.manifest_root) {
                        b.add(v);
                    }
                }
            }
            let nodes: Vec<(NodeId, &FinalState)> =
                states.iter().map(|(id, _, _, s)| (*id, s)).collect();
            b.add_all(check_watch(&nodes, &watched));
            b.add_all(check_deploy(&nodes, &deployed));
            if let (Some(r), Some((_, _, _, state))) = (&rolled, states.first()) {
                let history = state
                    .deploy_history
                    .get(crate::rollout::ROLLOUT_ENDPOINT)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let (violations, figures) = check_rollout(&RolloutRecord {
                    history,
                    committed_ms: &r.committed_ms,
                    agents: &r.agents,
                    unavailable_ms: &r.unavailable_ms,
                    regions: cfg.regions,
                    agents_stopped_ms: r.agents_stopped_ms,
                });
                b.add_all(violations);
                rollout_figures = Some(figures);
            }
            if let Some((_, index, digest, state)) = states.into_iter().next() {
                b.add_all(check_state(&state));
                b.add_all(check_acks(&acks, &state));
                final_applied = Some(index);
                final_digest = digest;
                final_state = state;
            }
        }
    }

    if let Some(r) = rolled {
        lock(&books).add_all(r.violations);
    }
    lock(&books).add_all(chunks.take_violations());
    lock(&books).add_all(clients.take_violations());
    lock(&books).add_all(clients.check_history());
    for id in cluster.up_ids() {
        if let Err(e) = cluster.crash(id).await {
            lock(&books).add(Violation::new("shutdown", format!("{e:#}")));
        }
    }

    let (panics, panics_total) = crate::panics::drain();
    {
        let mut b = lock(&books);
        for p in panics {
            b.add(Violation::new("panic", p));
        }
        // Counted even when their messages were not kept.
        b.violations_total += panics_total.saturating_sub(crate::panics::PANICS_KEPT_MAX);
    }

    let failover_ms = failover_times_ms(&kills_ms, &acks, scenario_end_ms);
    let sim_ms = trace.elapsed_ms();
    let b = std::mem::take(&mut *lock(&books));
    for v in &b.violations {
        trace.record(format!("violation {v}"));
    }
    let mut t = trace.lock();
    Ok(RunReport {
        config: cfg.clone(),
        trace_hash: t.hash_hex(),
        trace_events: t.events(),
        trace_lines: t.take_lines(),
        sim_ms,
        converge_ms,
        wall: Duration::ZERO,
        clients: clients.stats(),
        chunks: {
            let mut k = chunks.stats();
            (k.chunks_repaired, k.chunks_scrubbed_bad) = cluster.repair_totals();
            k
        },
        faults,
        failover_ms,
        terms_with_leader: b.leaders.terms(),
        terms_shared: b.leaders.shared_terms(),
        digest_samples: b.digest_samples,
        digest_comparisons: b.digests.compared(),
        final_applied,
        final_digest,
        models: final_state.models.len(),
        version_count: final_state.models.values().map(|m| m.version_count).sum(),
        log_writes_lost: cluster.log_writes_lost(),
        violations: b.violations,
        violations_total: b.violations_total,
        rollout: rollout_figures,
    })
}

/// One flusher per node: every [`DISK_WRITEBACK_INTERVAL_MS`], from a phase drawn from `seed`,
/// the node's dirty log pages become durable (whether the node is up or not: a down node has
/// nothing dirty).
fn spawn_writeback(cluster: &Arc<Cluster>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for &id in cluster.ids() {
        let phase_ms = rng.gen_range(0..DISK_WRITEBACK_INTERVAL_MS);
        let cluster = cluster.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(phase_ms)).await;
            loop {
                cluster.writeback(id);
                tokio::time::sleep(Duration::from_millis(DISK_WRITEBACK_INTERVAL_MS)).await;
            }
        });
    }
}

/// What the fault driver did: counts, when (virtual ms) each leader kill happened, and the
/// membership changes still in flight when the scenario ended.
struct Driven {
    stats: FaultStats,
    kills_ms: Vec<u64>,
    changes: Vec<membership::Change>,
}

/// Apply the schedule's faults at their times until the scenario ends.
async fn drive_faults(
    cluster: Arc<Cluster>,
    chunks: Arc<Chunks>,
    schedule: Vec<FaultEvent>,
    start: Instant,
    duration_ms: u64,
    trace: SharedTrace,
    books: SharedBooks,
) -> Driven {
    let mut stats = FaultStats::default();
    let mut kills_ms = Vec::new();
    let mut crashed: BTreeMap<u32, NodeId> = BTreeMap::new();
    // Removals by slot: the node, and the removal's task until its rejoin takes it.
    let mut removed: BTreeMap<u32, (NodeId, Option<membership::Change>)> = BTreeMap::new();
    let mut changes: Vec<membership::Change> = Vec::new();
    // Indexes in `changes` of the rejoins: a node whose rejoin has not finished is still a voter
    // fewer, as much as one not yet asked back.
    let mut rejoins: Vec<usize> = Vec::new();
    let nodes = cluster.ids().len();
    for event in schedule {
        let rejoining = rejoins
            .iter()
            .filter(|&&i| !changes[i].is_finished())
            .count();
        if event.at_ms >= duration_ms {
            break;
        }
        tokio::time::sleep_until(start + Duration::from_millis(event.at_ms)).await;
        match &event.fault {
            Fault::Crash { slot, target } => {
                let victim = match target {
                    Target::Node(n) => cluster.handle(*n).map(|_| *n),
                    Target::Leader => cluster.leader(),
                };
                // A removed node is a voter fewer (until its rejoin is done): it counts against the
                // minority that may fail.
                let room = cluster.down_ids().len() + removed.len() + rejoining < max_down(nodes);
                let Some(victim) = victim.filter(|_| room) else {
                    stats.skipped += 1;
                    trace.record(format!("fault {}: skipped, no target", event.fault));
                    continue;
                };
                trace.record(format!("fault {} -> n{victim}", event.fault));
                if *target == Target::Leader {
                    kills_ms.push(trace.elapsed_ms());
                    stats.leader_kills += 1;
                }
                stats.crashes += 1;
                crashed.insert(*slot, victim);
                if let Err(e) = cluster.crash(victim).await {
                    lock(&books).add(Violation::new("crash", format!("{e:#}")));
                }
            }
            Fault::Restart { slot } => {
                let Some(node) = crashed.remove(slot) else {
                    continue;
                };
                trace.record(format!("fault {} -> n{node}", event.fault));
                stats.restarts += 1;
                if let Err(e) = cluster.start(node).await {
                    lock(&books).add(Violation::new(
                        "restart",
                        format!("n{node} did not restart from its data dir: {e:#}"),
                    ));
                }
            }
            Fault::Cut { id, links, .. } => {
                trace.record(format!("fault {}", event.fault));
                stats.cuts += 1;
                cluster.router().with_links(|l| l.cut(*id, links.clone()));
            }
            Fault::Lossy {
                id,
                links,
                loss_pct,
                ..
            } => {
                trace.record(format!("fault {}", event.fault));
                stats.lossy += 1;
                cluster
                    .router()
                    .with_links(|l| l.lossy(*id, links.clone(), *loss_pct));
            }
            Fault::Duplicate {
                id, links, dup_pct, ..
            } => {
                trace.record(format!("fault {}", event.fault));
                stats.duplicating += 1;
                cluster
                    .router()
                    .with_links(|l| l.duplicating(*id, links.clone(), *dup_pct));
            }
            Fault::Reorder {
                id,
                links,
                reorder_pct,
                ..
            } => {
                trace.record(format!("fault {}", event.fault));
                stats.reordering += 1;
                cluster
                    .router()
                    .with_links(|l| l.reordering(*id, links.clone(), *reorder_pct));
            }
            Fault::Heal { id } => {
                trace.record(format!("fault {}", event.fault));
                cluster.router().with_links(|l| l.heal(*id));
            }
            Fault::Corrupt {
                node,
                chunks: count,
                salt,
            } => {
                trace.record(format!("fault {}", event.fault));
                stats.corruptions += 1;
                stats.chunks_rotted += chunks.corrupt(*node, *count, *salt) as u64;
            }
            Fault::DiskFull { node, slack_bytes } => {
                trace.record(format!("fault {}", event.fault));
                stats.disks_full += 1;
                chunks.store(*node).fill(*slack_bytes);
            }
            Fault::DiskFreed { node } => {
                trace.record(format!("fault {}", event.fault));
                chunks.store(*node).free();
            }
            Fault::SyncFailing { node } => {
                trace.record(format!("fault {}", event.fault));
                stats.syncs_failing += 1;
                chunks.store(*node).set_sync_failing(true);
            }
            Fault::SyncRecovered { node } => {
                trace.record(format!("fault {}", event.fault));
                chunks.store(*node).set_sync_failing(false);
            }
            Fault::TornWrite { node } => {
                trace.record(format!("fault {}", event.fault));
                stats.torn_writes_armed += 1;
                chunks.store(*node).arm_tear();
            }
            Fault::StepDown { via } => match membership::step_down(&cluster, &trace, *via) {
                Some(change) => {
                    trace.record(format!("fault {}", event.fault));
                    stats.step_downs += 1;
                    changes.push(change);
                }
                None => {
                    stats.skipped += 1;
                    trace.record(format!("fault {}: skipped, n{via} is down", event.fault));
                }
            },
            Fault::Remove { slot, target, via } => {
                let victim = match target {
                    Target::Node(n) => Some(*n),
                    Target::Leader => cluster.leader(),
                };
                let room = cluster.down_ids().len() + removed.len() + rejoining < max_down(nodes);
                let change = victim
                    .filter(|_| room)
                    .and_then(|v| Some((v, membership::remove(&cluster, &trace, *via, v)?)));
                let Some((victim, change)) = change else {
                    stats.skipped += 1;
                    trace.record(format!("fault {}: skipped, no target", event.fault));
                    continue;
                };
                trace.record(format!("fault {} -> n{victim}", event.fault));
                stats.removals += 1;
                removed.insert(*slot, (victim, Some(change)));
            }
            Fault::Rejoin { slot } => {
                let Some((node, removal)) = removed.remove(slot) else {
                    continue;
                };
                trace.record(format!("fault {} -> n{node}", event.fault));
                stats.rejoins += 1;
                rejoins.push(changes.len());
                changes.push(membership::rejoin(&cluster, &trace, node, removal));
            }
        }
    }
    // The schedule rejoins every removal before the end; one whose rejoin was not reached
    // rejoins now.
    for (node, removal) in removed.into_values() {
        changes.push(membership::rejoin(&cluster, &trace, node, removal));
    }
    Driven {
        stats,
        kills_ms,
        changes,
    }
}

/// Watch every node: leader per term, fatal errors, and (every [`SAMPLE_EVERY_TICKS`]) digests
/// at the node's exact applied index.
async fn monitor(
    cluster: Arc<Cluster>,
    books: SharedBooks,
    trace: SharedTrace,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut seen: BTreeMap<NodeId, (ServerState, u64, Option<NodeId>)> = BTreeMap::new();
    let mut configs: BTreeMap<NodeId, String> = BTreeMap::new();
    let mut tick = 0u64;
    let mut sampled_at: BTreeMap<NodeId, u64> = BTreeMap::new();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        for (id, m) in cluster.metrics() {
            let now = (m.state, m.current_term, m.current_leader);
            if seen.get(&id) != Some(&now) {
                trace.record(format!(
                    "n{id} {:?} term {} leader {}",
                    m.state,
                    m.current_term,
                    m.current_leader
                        .map(|l| format!("n{l}"))
                        .unwrap_or_else(|| "-".into())
                ));
                seen.insert(id, now);
            }
            let config = membership_text(&m);
            if configs.get(&id) != Some(&config) {
                trace.record(format!("n{id} membership {config}"));
                configs.insert(id, config);
            }
            let mut b = lock(&books);
            if m.state == ServerState::Leader {
                b.leaders.observe(m.current_term, id);
            }
            let voted = m.vote.leader_id();
            if let Some(v) = b
                .votes
                .observe(id, voted.term, voted.node_id, m.vote.is_committed())
            {
                b.add(v);
            }
            if let Err(e) = &m.running_state {
                if b.fatal_reported.insert(id) {
                    b.add(Violation::new(
                        "node-fatal",
                        format!("n{id} stopped with a fatal error: {e}"),
                    ));
                }
            }
        }
        for id in cluster.stopped_cores() {
            let mut b = lock(&books);
            if b.fatal_reported.insert(id) {
                b.add(Violation::new(
                    "node-fatal",
                    format!(
                        "n{id} is up but its Raft core task has ended (a panic or a fatal error)"
                    ),
                ));
            }
        }
        if tick.is_multiple_of(SAMPLE_EVERY_TICKS) {
            sample(&cluster, &books, &mut sampled_at);
        }
        tick += 1;
        tokio::time::sleep(MONITOR_INTERVAL).await;
    }
}

/// A node's view of the membership: its log id, voter sets (two during a joint change) and
/// learners.
fn membership_text(m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>) -> String {
    let config = &m.membership_config;
    let membership = config.membership();
    let ids = |set: &BTreeSet<NodeId>| {
        set.iter()
            .map(|id| format!("n{id}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let voters: Vec<String> = membership
        .get_joint_config()
        .iter()
        .map(|set| format!("{{{}}}", ids(set)))
        .collect();
    let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
    format!(
        "at {} voters {} learners {{{}}}",
        config
            .log_id()
            .map(|l| l.index.to_string())
            .unwrap_or_else(|| "-".into()),
        voters.join("+"),
        ids(&learners)
    )
}

/// The digest of every up node at its exact applied index (one read transaction); a node whose
/// applied index has not moved since its last sample (`sampled_at`) is skipped. (Version roots
/// are compared across all nodes at the end, not here: decoding every version each time would
/// cost more than the rest of the run.)
fn sample(cluster: &Cluster, books: &SharedBooks, sampled_at: &mut BTreeMap<NodeId, u64>) {
    for id in cluster.up_ids() {
        let Some(node) = cluster.handle(id) else {
            continue;
        };
        let last = node.metrics().last_applied.map(|l| l.index);
        if last.is_some() && last == sampled_at.get(&id).copied() {
            continue;
        }
        let read =
            node.read_applied(|app, rtxn| app.digest(rtxn).map_err(|e| anyhow::anyhow!("{e}")));
        let mut b = lock(books);
        match read {
            Ok((Some(index), digest)) => {
                sampled_at.insert(id, index);
                b.digest_samples += 1;
                if let Some(v) = b.digests.observe(id, index, &digest) {
                    b.add(v);
                }
            }
            Ok((None, _)) => {}
            Err(e) => b.add(Violation::new(
                "state-read",
                format!("n{id}: reading applied state failed: {e:#}"),
            )),
        }
    }
}

/// Every READY version's label and manifest, from the applied state of the first up node
/// (after convergence every node has the same).
fn ready_manifests(
    cluster: &Cluster,
) -> Result<Vec<(String, quiver_transfer::Manifest)>, Violation> {
    let read = cluster
        .up_ids()
        .first()
        .and_then(|&id| cluster.handle(id))
        .map(|node| {
            node.read_applied(|app, rtxn| {
                let err = |e: quiver_node::state::AppError| anyhow::anyhow!("{e}");
                let mut out = Vec::new();
                for (model, number, root) in app.ready_manifest_roots(rtxn).map_err(err)? {
                    out.push((
                        format!("{model}/{number}"),
                        app.manifest(rtxn, &root).map_err(err)?,
                    ));
                }
                Ok(out)
            })
        });
    match read {
        Some(Ok((_, versions))) => Ok(versions),
        Some(Err(e)) => Err(Violation::new(
            "state-read",
            format!("reading READY manifests: {e:#}"),
        )),
        None => Err(Violation::new("liveness", "no node is up after healing")),
    }
}

type NodeState = (NodeId, u64, String, FinalState);

/// Wait until one leader is known to every node and every node has applied the leader's last
/// log entry; then read every node's state. A violation (liveness) if that does not happen
/// within [`CONVERGE_TIMEOUT`].
async fn converge(cluster: &Cluster, trace: &SharedTrace) -> Result<Vec<NodeState>, Violation> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let n = cluster.ids().len();
    loop {
        let metrics = cluster.metrics();
        let leader = metrics
            .iter()
            .find(|(_, m)| m.state == ServerState::Leader)
            .map(|(id, m)| (*id, m.current_term, m.last_log_index));
        if let (Some((leader, term, Some(last))), true) = (leader, metrics.len() == n) {
            let agree = metrics
                .iter()
                .all(|(_, m)| m.current_leader == Some(leader) && m.current_term == term);
            let applied: Vec<Option<u64>> = cluster
                .ids()
                .iter()
                .map(|&id| {
                    cluster
                        .handle(id)
                        .and_then(|node| node.read_applied(|_, _| Ok(())).ok())
                        .and_then(|(index, ())| index)
                })
                .collect();
            if agree && applied.iter().all(|a| *a == Some(last)) {
                let mut states = Vec::new();
                for &id in cluster.ids() {
                    let node = cluster.handle(id).ok_or_else(|| {
                        Violation::new("liveness", format!("n{id} went down while converging"))
                    })?;
                    let (index, digest, state) = read_state(&node).map_err(|e| {
                        Violation::new("state-read", format!("n{id}: final state: {e:#}"))
                    })?;
                    states.push((id, index.unwrap_or(0), digest, state));
                }
                trace.record(format!(
                    "converged: leader n{leader} term {term}, all applied {last}"
                ));
                return Ok(states);
            }
        }
        let stopped = cluster.stopped_cores();
        if !stopped.is_empty() {
            // A node whose Raft core has ended never catches up: waiting out the deadline would
            // only cost time.
            let ids: Vec<String> = stopped.iter().map(|id| format!("n{id}")).collect();
            return Err(Violation::new(
                "liveness",
                format!(
                    "no convergence after healing: the Raft core of {} has ended",
                    ids.join(", ")
                ),
            ));
        }
        if Instant::now() >= deadline {
            let nodes: Vec<String> = metrics
                .iter()
                .map(|(id, m)| {
                    format!(
                        "n{id} {:?} term {} leader {:?} last_log {:?} applied {:?}",
                        m.state,
                        m.current_term,
                        m.current_leader,
                        m.last_log_index,
                        m.last_applied.map(|l| l.index)
                    )
                })
                .collect();
            return Err(Violation::new(
                "liveness",
                format!(
                    "no convergence {} s after healing: {}",
                    CONVERGE_TIMEOUT.as_secs(),
                    nodes.join("; ")
                ),
            ));
        }
        tokio::time::sleep(CONVERGE_POLL).await;
    }
}
