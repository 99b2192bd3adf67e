//! What a run and a sweep report: operational figures, violations, the trace hash.
//!
//! Plain data and formatting only; `run.rs` fills a [`RunReport`]. Two formats: the table
//! (`summary`, `line`, [`sweep_summary`]; the default) and JSON ([`run_json`], [`sweep_json`]),
//! whose shapes ([`RunJson`], [`SweepJson`]) are defined here, at the edge, so the report types
//! themselves derive no wire format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::check::{short, Violation};
use crate::check_rollout::RolloutFigures;
use crate::chunks::ChunkStats;
use crate::client::ClientStats;
use crate::config::SimConfig;

/// Most violations a report keeps (all are counted).
pub const VIOLATIONS_KEPT_MAX: usize = 100;

/// Faults the driver applied (also the `faults` object of the JSON report).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FaultStats {
    pub crashes: u64,
    pub leader_kills: u64,
    pub restarts: u64,
    pub cuts: u64,
    pub lossy: u64,
    pub duplicating: u64,
    pub reordering: u64,
    /// Bit-rot faults, and the chunks they rotted.
    pub corruptions: u64,
    pub chunks_rotted: u64,
    /// Chunk-disk faults: full disks, spells of failing syncs, and torn writes armed for a
    /// node's next chunk write (the chunk-side figures they caused are in `artifacts`).
    pub disks_full: u64,
    pub syncs_failing: u64,
    pub torn_writes_armed: u64,
    /// Leadership step-downs, removals and rejoins asked for (each may fail under faults).
    pub step_downs: u64,
    pub removals: u64,
    pub rejoins: u64,
    /// Faults that found no target (no leader at that moment, the node already down, no room
    /// for one more node out).
    pub skipped: u64,
}

#[derive(Clone, Debug)]
pub struct RunReport {
    pub config: SimConfig,
    pub trace_hash: String,
    pub trace_events: u64,
    /// Only with `keep_trace`.
    pub trace_lines: Vec<String>,
    /// Virtual time of the whole run: the scenario, healing and convergence.
    pub sim_ms: u64,
    /// From healing all faults to every node applying the same index.
    pub converge_ms: Option<u64>,
    pub wall: Duration,
    pub clients: ClientStats,
    /// Uploads, downloads, repair and rot on the chunk side.
    pub chunks: ChunkStats,
    pub faults: FaultStats,
    /// Per leader kill: time to the next acknowledged write proposed after it.
    pub failover_ms: Vec<Option<u64>>,
    pub terms_with_leader: usize,
    /// Terms in which more than one node led (legal with openraft's `(term, node)` leader ids).
    pub terms_shared: usize,
    pub digest_samples: u64,
    /// Samples (and final reads) that met another node's at the same applied index.
    pub digest_comparisons: u64,
    pub final_applied: Option<u64>,
    pub final_digest: String,
    pub models: usize,
    pub version_count: u64,
    /// Unsynced Raft log writes that crashes took back (0 unless a bug skips fsyncs).
    pub log_writes_lost: u64,
    pub violations: Vec<Violation>,
    pub violations_total: usize,
    /// The rollout scenario's figures (`None` for the others, or when the run did not
    /// converge).
    pub rollout: Option<RolloutFigures>,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.violations_total == 0
    }

    /// Simulated seconds per wall-clock second.
    pub fn speed(&self) -> f64 {
        self.sim_ms as f64 / 1_000.0 / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn failover_recovered_ms(&self) -> Vec<u64> {
        self.failover_ms.iter().flatten().copied().collect()
    }

    /// The multi-line summary `quiver-sim run` prints (trace line last).
    pub fn summary(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        let plant = c.plant.map(|p| p.name()).unwrap_or("none");
        let actors = match c.scenario {
            crate::config::Scenario::Rollout => {
                format!("regions {} agents {}", c.regions, c.agents)
            }
            _ => format!("clients {}", c.clients),
        };
        let _ = writeln!(
            s,
            "seed {} scenario {} nodes {} {actors} duration {} s plant {plant}",
            c.seed, c.scenario, c.nodes, c.duration_s
        );
        let _ = writeln!(
            s,
            "simulated {:.1} s (converged {} after healing) in {:.2} s wall: {:.0} simulated s per wall s",
            self.sim_ms as f64 / 1_000.0,
            self.converge_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "never".into()),
            self.wall.as_secs_f64(),
            self.speed()
        );
        if c.scenario != crate::config::Scenario::Rollout {
            self.client_lines(&mut s);
        }
        let f = &self.faults;
        let _ = writeln!(
            s,
            "faults: {} crashes ({} of the leader), {} restarts, {} cuts, {} lossy, {} duplicating, \
             {} reordering spells, {} rot ({} chunks), {} full disks, {} failing-sync spells, \
             {} torn writes armed, {} step-downs, {} removals, {} rejoins, {} skipped; {} \
             unsynced log writes lost",
            f.crashes,
            f.leader_kills,
            f.restarts,
            f.cuts,
            f.lossy,
            f.duplicating,
            f.reordering,
            f.corruptions,
            f.chunks_rotted,
            f.disks_full,
            f.syncs_failing,
            f.torn_writes_armed,
            f.step_downs,
            f.removals,
            f.rejoins,
            f.skipped,
            self.log_writes_lost
        );
        match &self.rollout {
            Some(r) => rollout_lines(&mut s, r),
            None => {
                let recovered = self.failover_recovered_ms();
                let _ = writeln!(
                    s,
                    "failover_ms: {} kills, p50 {}, p99 {}, max {}, {} without an ack before the next kill",
                    self.failover_ms.len(),
                    fmt_opt(percentile(&recovered, 50.0)),
                    fmt_opt(percentile(&recovered, 99.0)),
                    fmt_opt(recovered.iter().max().copied()),
                    self.failover_ms.len() - recovered.len()
                );
            }
        }
        let _ = writeln!(
            s,
            "version_count {} in {} models; leaders in {} terms ({} shared by two nodes); {} digest \
             samples, {} compared at equal applied index",
            self.version_count,
            self.models,
            self.terms_with_leader,
            self.terms_shared,
            self.digest_samples,
            self.digest_comparisons
        );
        let _ = writeln!(
            s,
            "final: applied index {} on all {} nodes, digest {}",
            fmt_opt(self.final_applied),
            c.nodes,
            short(&self.final_digest)
        );
        if self.passed() {
            let _ = writeln!(s, "invariants: ok");
        } else {
            for v in &self.violations {
                let _ = writeln!(s, "VIOLATION {v}");
            }
            if self.violations_total > self.violations.len() {
                let _ = writeln!(
                    s,
                    "... {} more violations",
                    self.violations_total - self.violations.len()
                );
            }
            let _ = writeln!(
                s,
                "FAILED seed {}: {} violations; replay: {}",
                c.seed,
                self.violations_total,
                c.replay_command()
            );
        }
        let _ = write!(s, "trace: {}", self.trace_hash);
        s
    }

    /// The lines about the pipelines' ops, reads, watches and artifacts.
    fn client_lines(&self, s: &mut String) {
        let kinds: Vec<String> = self
            .clients
            .acked_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "ops: {} submitted, {} acked ({}), {} rejected, {} failed",
            self.clients.submitted,
            self.clients.acked,
            kinds.join(", "),
            self.clients.rejected,
            self.clients.failed
        );
        let _ = writeln!(
            s,
            "hostile requests: {} sent, {} rejected, {} without an answer (none may be accepted); \
             {} catalog searches, most with hostile fields; {} hostile watch starts, {} refused",
            self.clients.hostile,
            self.clients.hostile_rejected,
            self.clients.hostile - self.clients.hostile_rejected - self.clients.hostile_accepted,
            self.clients.searches,
            self.clients.watches_hostile,
            self.clients.watches_hostile_refused
        );
        let _ = writeln!(
            s,
            "watches: {} started (a first start or a resume on another node), {} events received",
            self.clients.watch_starts, self.clients.watch_events
        );
        let _ = writeln!(
            s,
            "linearizable reads: {} answered ({} without an answer); history of {} ops on {} \
             models checked for linearizability, {} left unchecked (search bound)",
            self.clients.reads,
            self.clients.reads_failed,
            self.clients.history_ops,
            self.clients.history_models,
            self.clients.history_unchecked
        );
        let k = &self.chunks;
        let _ = writeln!(
            s,
            "artifacts: {} uploads ({} failed), {} downloads checked ({} of small versions, {} \
             failed, {} skipped), {} chunks repaired, {} rotten copies found by the scrub, \
             replicated {} after Raft converged",
            k.uploads,
            k.uploads_failed,
            k.downloads,
            k.downloads_inline,
            k.downloads_failed,
            k.downloads_skipped,
            k.chunks_repaired,
            k.chunks_scrubbed_bad,
            k.replicated_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "never".into())
        );
        let d = &k.disk;
        let _ = writeln!(
            s,
            "chunk disks: {} uploads refused under the reserve, {} puts refused (full), {} failed \
             syncs, {} torn copies, {} bad copies rewritten by a put, {} unsynced copies lost, \
             {} unreferenced chunks collected",
            k.uploads_refused_disk_full,
            d.full_puts,
            d.failed_syncs,
            d.torn_copies,
            d.replaced_bad_copies,
            d.unsynced_lost,
            d.collected
        );
    }

    /// One line for a sweep.
    pub fn line(&self) -> String {
        if let Some(r) = &self.rollout {
            return format!(
                "seed {:>5} {} rollbacks {:>2} ({} automatic) rollback_time_ms p99 {:>5} load p99 \
                 {:>5} ms stalest {:>5} ms {:>4.0} sim-s/s trace: {}{}",
                self.config.seed,
                if self.passed() { "ok  " } else { "FAIL" },
                r.rollbacks.len(),
                r.rollbacks_automatic,
                fmt_opt(r.rollback_time_ms.p99),
                fmt_opt(r.model_load_time_ms.p99),
                r.stale_answer_ms_max,
                self.speed(),
                self.trace_hash,
                self.violations
                    .first()
                    .map(|v| format!("  {v}"))
                    .unwrap_or_default()
            );
        }
        let recovered = self.failover_recovered_ms();
        format!(
            "seed {:>5} {} acked {:>4} versions {:>4} failover p50 {:>5} ms {:>4.0} sim-s/s trace: {}{}",
            self.config.seed,
            if self.passed() { "ok  " } else { "FAIL" },
            self.clients.acked,
            self.version_count,
            fmt_opt(percentile(&recovered, 50.0)),
            self.speed(),
            self.trace_hash,
            self.violations
                .first()
                .map(|v| format!("  {v}"))
                .unwrap_or_default()
        )
    }
}

/// The rollout scenario's lines: what the agents and the operator did, then per region the
/// figures the issue asks for.
fn rollout_lines(s: &mut String, r: &RolloutFigures) {
    let _ = writeln!(
        s,
        "rollout: {} agents; {} generations: {} rollouts started, {} completed, {} automatic and \
         {} hand rollbacks; {} answers ({} refused before a version was loaded), {} reports ({} \
         failed), {} watch starts tried, {} failed pulls, {} agent spells cut off",
        r.agents,
        r.generations,
        r.rollouts_started,
        r.rollouts_completed,
        r.rollbacks_automatic,
        r.rollbacks_manual,
        r.answers,
        r.not_ready,
        r.reports,
        r.reports_failed,
        r.moves,
        r.pulls_failed,
        r.cut_off_spells
    );
    let _ = writeln!(
        s,
        "propagation_ms (commit to an agent routing by it): {}; stalest answer {} ms after its \
         generation was superseded (bound {} ms, from the agent's and the registry's return); \
         {} spells with no leader able to serve, {} ms in all",
        r.propagation_ms.text(),
        r.stale_answer_ms_max,
        r.propagation_bound_ms,
        r.registry_unavailable_spells,
        r.registry_unavailable_ms
    );
    for g in &r.regions {
        let _ = writeln!(
            s,
            "region {} ({} agents): rollback_time_ms {}; model_load_time_ms {}",
            g.region,
            g.agents,
            g.rollback_time_ms.text(),
            g.model_load_time_ms.text()
        );
    }
    let _ = writeln!(
        s,
        "all regions: rollback_time_ms {}; model_load_time_ms {}",
        r.rollback_time_ms.text(),
        r.model_load_time_ms.text()
    );
    let each: Vec<String> = r
        .rollbacks
        .iter()
        .map(|b| {
            format!(
                "g{} {} to v{} at {} ms: {}",
                b.generation,
                if b.automatic { "automatic" } else { "hand" },
                b.version,
                fmt_opt(b.committed_ms),
                match (b.judged, b.last_agent_ms) {
                    (false, _) => "not judged (too late)".to_string(),
                    (true, Some(ms)) => format!(
                        "last agent after {ms} ms{}",
                        match b.agents_cut_off {
                            0 => String::new(),
                            n => format!(" ({n} cut off left out)"),
                        }
                    ),
                    (true, None) => "no agent".to_string(),
                }
            )
        })
        .collect();
    if !each.is_empty() {
        let _ = writeln!(s, "rollbacks: {}", each.join("; "));
    }
}

fn fmt_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// Nearest-rank percentile (`pct` in 0..=100) of `values`; `None` when empty.
pub fn percentile(values: &[u64], pct: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = (pct / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A sweep's outcome for one seed: its report, or why the run itself could not be carried out.
pub struct SeedOutcome {
    pub seed: u64,
    pub result: Result<RunReport, String>,
}

/// The summary `quiver-sim sweep` prints after the per-seed lines.
/// What a sweep's table and its JSON both count, over the seeds' outcomes.
struct SweepTally<'a> {
    reports: Vec<&'a RunReport>,
    failed: Vec<&'a RunReport>,
    /// Seeds whose run could not be carried out, and why.
    errors: Vec<(u64, &'a String)>,
    /// Every leader kill's recovery, over all runs.
    failover: Vec<u64>,
    /// Violations of the failed runs, by kind.
    kinds: BTreeMap<&'static str, usize>,
}

impl<'a> SweepTally<'a> {
    fn of(outcomes: &'a [SeedOutcome]) -> Self {
        let reports: Vec<&RunReport> = outcomes
            .iter()
            .filter_map(|o| o.result.as_ref().ok())
            .collect();
        let failed: Vec<&RunReport> = reports.iter().copied().filter(|r| !r.passed()).collect();
        let errors = outcomes
            .iter()
            .filter_map(|o| o.result.as_ref().err().map(|e| (o.seed, e)))
            .collect();
        let failover = reports
            .iter()
            .flat_map(|r| r.failover_recovered_ms())
            .collect();
        let mut kinds = BTreeMap::new();
        for r in &failed {
            for v in &r.violations {
                *kinds.entry(v.kind).or_default() += 1;
            }
        }
        SweepTally {
            reports,
            failed,
            errors,
            failover,
            kinds,
        }
    }

    /// Failed seeds, then seeds that could not run.
    fn failing_seeds(&self) -> Vec<u64> {
        self.failed
            .iter()
            .map(|r| r.config.seed)
            .chain(self.errors.iter().map(|(seed, _)| *seed))
            .collect()
    }
}

pub fn sweep_summary(base: &SimConfig, outcomes: &[SeedOutcome], wall: Duration) -> String {
    let mut s = String::new();
    let tally = SweepTally::of(outcomes);
    let seeds: Vec<String> = tally.failing_seeds().iter().map(u64::to_string).collect();
    let SweepTally {
        reports,
        failed,
        errors,
        failover,
        kinds,
    } = tally;
    let sim_ms: u64 = reports.iter().map(|r| r.sim_ms).sum();
    let _ = writeln!(
        s,
        "sweep: {} seeds of {} ({} nodes, {} s, plant {}): {} passed, {} failed, {} errors",
        outcomes.len(),
        base.scenario,
        base.nodes,
        base.duration_s,
        base.plant.map(|p| p.name()).unwrap_or("none"),
        reports.len() - failed.len(),
        failed.len(),
        errors.len()
    );
    let _ = writeln!(
        s,
        "simulated {:.0} s in {:.1} s wall ({:.0} simulated s per wall s over all threads)",
        sim_ms as f64 / 1_000.0,
        wall.as_secs_f64(),
        sim_ms as f64 / 1_000.0 / wall.as_secs_f64().max(1e-9)
    );
    let _ = writeln!(
        s,
        "failover_ms over all kills: n {} p50 {} p99 {}; acked ops {}; version_count mean {:.0}",
        failover.len(),
        fmt_opt(percentile(&failover, 50.0)),
        fmt_opt(percentile(&failover, 99.0)),
        reports.iter().map(|r| r.clients.acked).sum::<u64>(),
        reports.iter().map(|r| r.version_count).sum::<u64>() as f64 / reports.len().max(1) as f64
    );
    let rollouts: Vec<&RolloutFigures> =
        reports.iter().filter_map(|r| r.rollout.as_ref()).collect();
    if !rollouts.is_empty() {
        let worst =
            |f: fn(&RolloutFigures) -> Option<u64>| rollouts.iter().filter_map(|r| f(r)).max();
        let _ = writeln!(
            s,
            "rollout over all runs: {} rollbacks ({} automatic), {} rollouts completed; worst run's \
             rollback_time_ms p50 {} p99 {} max {}; model_load_time_ms p99 {} max {}; stalest \
             answer {} ms (bound {} ms)",
            rollouts.iter().map(|r| r.rollbacks.len()).sum::<usize>(),
            rollouts.iter().map(|r| r.rollbacks_automatic).sum::<u64>(),
            rollouts.iter().map(|r| r.rollouts_completed).sum::<u64>(),
            fmt_opt(worst(|r| r.rollback_time_ms.p50)),
            fmt_opt(worst(|r| r.rollback_time_ms.p99)),
            fmt_opt(worst(|r| r.rollback_time_ms.max)),
            fmt_opt(worst(|r| r.model_load_time_ms.p99)),
            fmt_opt(worst(|r| r.model_load_time_ms.max)),
            rollouts.iter().map(|r| r.stale_answer_ms_max).max().unwrap_or(0),
            crate::check_rollout::PROPAGATION_BOUND_MS
        );
    }
    if !kinds.is_empty() {
        let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(s, "violations by kind: {}", list.join(", "));
    }
    let _ = writeln!(
        s,
        "failing seeds: {}",
        if seeds.is_empty() {
            "none".to_string()
        } else {
            seeds.join(" ")
        }
    );
    for r in &failed {
        let _ = writeln!(s, "  replay: {}", r.config.replay_command());
    }
    for (seed, e) in &errors {
        let _ = writeln!(s, "  seed {seed} could not run: {e}");
    }
    s
}

/// How `quiver-sim run` and `sweep` print their reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

impl FromStr for OutputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" => Ok(OutputFormat::Table),
            "json" => Ok(OutputFormat::Json),
            other => Err(format!(
                "unknown output format {other:?}: use table or json"
            )),
        }
    }
}

/// One run as JSON (see [`run_json`]).
#[derive(Debug, Serialize)]
pub struct RunJson {
    pub seed: u64,
    pub scenario: &'static str,
    pub nodes: usize,
    pub regions: usize,
    /// Serving agents (the rollout scenario).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agents: Option<usize>,
    pub clock_skew_ms: u64,
    pub clients: usize,
    pub duration_s: u64,
    pub plant: Option<&'static str>,
    pub passed: bool,
    pub sim_ms: u64,
    pub wall_ms: u64,
    pub sim_s_per_wall_s: f64,
    pub converge_ms: Option<u64>,
    pub ops: ClientStats,
    pub artifacts: ChunkStats,
    pub faults: FaultStats,
    /// Per leader kill: ms to the next acknowledged write proposed after it (`null`: none
    /// before the next kill).
    pub failover_ms: Vec<Option<u64>>,
    pub failover_ms_p50: Option<u64>,
    pub failover_ms_p99: Option<u64>,
    pub version_count: u64,
    pub models: usize,
    pub terms_with_leader: usize,
    pub terms_shared: usize,
    pub digest_samples: u64,
    pub digest_comparisons: u64,
    pub final_applied: Option<u64>,
    pub final_digest: String,
    pub log_writes_lost: u64,
    /// The rollout scenario's figures, per region and per rollback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutFigures>,
    pub violations: Vec<Violation>,
    pub violations_total: usize,
    pub trace_hash: String,
    pub trace_events: u64,
    /// Only with `--dump-trace`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<String>,
    pub replay: String,
}

/// A run report as JSON data.
pub fn run_json(r: &RunReport) -> RunJson {
    let c = &r.config;
    let recovered = r.failover_recovered_ms();
    let f = &r.faults;
    RunJson {
        seed: c.seed,
        scenario: c.scenario.name(),
        nodes: c.nodes,
        regions: c.regions,
        agents: (c.scenario == crate::config::Scenario::Rollout).then_some(c.agents),
        clock_skew_ms: c.clock_skew_ms,
        clients: c.clients,
        duration_s: c.duration_s,
        plant: c.plant.map(|p| p.name()),
        passed: r.passed(),
        sim_ms: r.sim_ms,
        wall_ms: r.wall.as_millis() as u64,
        sim_s_per_wall_s: r.speed(),
        converge_ms: r.converge_ms,
        ops: r.clients.clone(),
        artifacts: r.chunks.clone(),
        faults: f.clone(),
        failover_ms: r.failover_ms.clone(),
        failover_ms_p50: percentile(&recovered, 50.0),
        failover_ms_p99: percentile(&recovered, 99.0),
        version_count: r.version_count,
        models: r.models,
        terms_with_leader: r.terms_with_leader,
        terms_shared: r.terms_shared,
        digest_samples: r.digest_samples,
        digest_comparisons: r.digest_comparisons,
        final_applied: r.final_applied,
        final_digest: r.final_digest.clone(),
        log_writes_lost: r.log_writes_lost,
        rollout: r.rollout.clone(),
        violations: r.violations.clone(),
        violations_total: r.violations_total,
        trace_hash: r.trace_hash.clone(),
        trace_events: r.trace_events,
        trace: r.trace_lines.clone(),
        replay: c.replay_command(),
    }
}

/// A sweep as JSON (see [`sweep_json`]).
#[derive(Debug, Serialize)]
pub struct SweepJson {
    pub scenario: &'static str,
    pub nodes: usize,
    pub regions: usize,
    pub duration_s: u64,
    pub plant: Option<&'static str>,
    pub seeds: u64,
    pub passed: usize,
    pub failed: usize,
    pub errors: usize,
    pub failing_seeds: Vec<u64>,
    pub wall_ms: u64,
    pub failover_ms_p50: Option<u64>,
    pub failover_ms_p99: Option<u64>,
    pub violations_by_kind: BTreeMap<&'static str, usize>,
    /// Every seed's run, in seed order.
    pub runs: Vec<RunJson>,
    /// Seeds whose run could not be carried out, and why.
    pub run_errors: Vec<SeedErrorJson>,
}

#[derive(Debug, Serialize)]
pub struct SeedErrorJson {
    pub seed: u64,
    pub error: String,
}

/// A sweep's outcomes as JSON data.
pub fn sweep_json(base: &SimConfig, outcomes: &[SeedOutcome], wall: Duration) -> SweepJson {
    let tally = SweepTally::of(outcomes);
    let mut failing_seeds = tally.failing_seeds();
    failing_seeds.sort_unstable();
    let SweepTally {
        reports,
        failed,
        errors,
        failover,
        kinds: violations_by_kind,
    } = tally;
    let run_errors: Vec<SeedErrorJson> = errors
        .into_iter()
        .map(|(seed, e)| SeedErrorJson {
            seed,
            error: e.clone(),
        })
        .collect();
    SweepJson {
        scenario: base.scenario.name(),
        nodes: base.nodes,
        regions: base.regions,
        duration_s: base.duration_s,
        plant: base.plant.map(|p| p.name()),
        seeds: outcomes.len() as u64,
        passed: reports.len() - failed.len(),
        failed: failed.len(),
        errors: run_errors.len(),
        failing_seeds,
        wall_ms: wall.as_millis() as u64,
        failover_ms_p50: percentile(&failover, 50.0),
        failover_ms_p99: percentile(&failover, 99.0),
        violations_by_kind,
        runs: reports.iter().map(|r| run_json(r)).collect(),
        run_errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_formats_parse_and_refuse_others() {
        assert_eq!("table".parse(), Ok(OutputFormat::Table));
        assert_eq!("json".parse(), Ok(OutputFormat::Json));
        assert!("yaml"
            .parse::<OutputFormat>()
            .unwrap_err()
            .contains("table or json"));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 99.0), Some(7));
        let v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[10, 20, 30, 40], 50.0), Some(20));
    }
}
