//! `quiver-sim`: run one seed or sweep many.
//!
//! Exit status: 0 when every run kept every invariant, 1 when a violation was found, 2 when a
//! run could not be carried out.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use quiver_sim::load::{self, LoadConfig};
use quiver_sim::report::{run_json, sweep_json, sweep_summary, OutputFormat};
use quiver_sim::{Plant, Scenario, SeedRange, SimConfig};

#[derive(Parser)]
#[command(
    name = "quiver-sim",
    about = "Deterministic Quiver cluster simulator: real Raft and registry code, virtual time, injected faults"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one seed and print its report and trace hash.
    Run {
        #[arg(long)]
        seed: u64,
        #[command(flatten)]
        common: Common,
        /// Print every trace event before the report.
        #[arg(long)]
        dump_trace: bool,
        /// Write an SVG chart of the load-time distribution here (the load scenario).
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Run a range of seeds on several threads; print a line per seed and a summary.
    Sweep {
        /// A..B (B excluded) or A..=B.
        #[arg(long)]
        seeds: SeedRange,
        #[command(flatten)]
        common: Common,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

#[derive(Args)]
struct Common {
    /// chaos, failover, load or rollout.
    #[arg(long)]
    scenario: Scenario,
    /// Cluster nodes (default: 5; 6 for load).
    #[arg(long)]
    nodes: Option<usize>,
    /// Regions the nodes (and, for load and rollout, the replicas or agents) are spread over;
    /// links across regions are slow (default: 1; 3 for load and rollout).
    #[arg(long)]
    regions: Option<usize>,
    /// Serving agents following the endpoint (rollout; default 100).
    #[arg(long)]
    agents: Option<usize>,
    /// Serving replicas that pull the model (load; default 100).
    #[arg(long)]
    replicas: Option<usize>,
    /// The model's size in bytes (load; default 2.3 GB).
    #[arg(long)]
    model_bytes: Option<u64>,
    /// Each node's clock is off by up to this many ms either way (default: 500 for chaos, 0
    /// for failover and rollout).
    #[arg(long)]
    clock_skew_ms: Option<u64>,
    /// Simulated seconds of the scenario (healing and convergence come after).
    #[arg(long)]
    duration_s: Option<u64>,
    /// Concurrent client pipelines (chaos and failover).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Plant a known bug to show a checker notices it (test only): ack-before-commit,
    /// ack-before-w-copies, skip-chunk-verify, drop-log-fsync, follower-applies-stage-change,
    /// retry-without-request-id, stale-follower-reads, repair-skips-after-restart,
    /// apply-skips-name-validation, keep-unsynced-chunk, follower-skips-role-check,
    /// registrant-approval-counts, watch-resume-skips-one, controller-skips-step or
    /// agent-ignores-rollback (rollout).
    #[arg(long)]
    plant: Option<Plant>,
    /// Directory for the nodes' data dirs (default: /dev/shm if present, else the temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// table (default) or json: one JSON document on stdout (for a sweep, after all seeds).
    #[arg(long, default_value = "table")]
    output: OutputFormat,
}

impl Common {
    fn config(&self, seed: u64) -> Result<SimConfig, String> {
        let mut cfg = SimConfig::new(seed, self.scenario);
        if let Some(nodes) = self.nodes {
            cfg.nodes = nodes;
        }
        if let Some(regions) = self.regions {
            cfg.regions = regions;
        }
        if let Some(skew) = self.clock_skew_ms {
            cfg.clock_skew_ms = skew;
        }
        if let Some(d) = self.duration_s {
            cfg.duration_s = d;
        }
        if let Some(agents) = self.agents {
            cfg.agents = agents;
        }
        cfg.clients = self.clients;
        cfg.plant = self.plant;
        cfg.data_root = self.data_dir.clone();
        cfg.validate()?;
        Ok(cfg)
    }

    fn load_config(&self, seed: u64) -> Result<LoadConfig, String> {
        let mut cfg = LoadConfig::new(seed);
        if let Some(nodes) = self.nodes {
            cfg.base.nodes = nodes;
        }
        if let Some(regions) = self.regions {
            cfg.regions = regions;
        }
        if let Some(replicas) = self.replicas {
            cfg.replicas = replicas;
        }
        if let Some(bytes) = self.model_bytes {
            cfg.model_bytes = bytes;
        }
        cfg.base.data_root = self.data_dir.clone();
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `quiver-sim run --scenario load`: the load report as a table or JSON, and the SVG chart.
fn run_load(
    common: &Common,
    seed: u64,
    dump_trace: bool,
    svg: Option<&std::path::Path>,
) -> ExitCode {
    let mut cfg = match common.load_config(seed) {
        Ok(cfg) => cfg,
        Err(e) => return usage_error(&e),
    };
    cfg.base.keep_trace = dump_trace;
    let report = match load::run(&cfg) {
        Ok(report) => report,
        Err(e) => {
            eprintln!(
                "seed {seed} could not run: {e:#}\nreplay: {}",
                cfg.replay_command()
            );
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    for line in &report.trace_lines {
        let _ = writeln!(out, "{line}");
    }
    let text = match common.output {
        OutputFormat::Table => report.table(),
        OutputFormat::Json => report.json(),
    };
    let _ = writeln!(out, "{text}");
    if let Some(path) = svg {
        if let Err(e) = std::fs::write(path, report.svg()) {
            eprintln!("write the SVG chart to {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        eprintln!("replay: {}", cfg.replay_command());
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            seed,
            common,
            dump_trace,
            svg,
        } => {
            if common.scenario == Scenario::Load {
                return run_load(&common, seed, dump_trace, svg.as_deref());
            }
            if svg.is_some() {
                return usage_error("--svg (the load-time chart) is for --scenario load");
            }
            if common.replicas.is_some() || common.model_bytes.is_some() {
                return usage_error("--replicas and --model-bytes are for --scenario load");
            }
            if common.agents.is_some() && common.scenario != Scenario::Rollout {
                return usage_error("--agents is for --scenario rollout");
            }
            let mut cfg = match common.config(seed) {
                Ok(cfg) => cfg,
                Err(e) => return usage_error(&e),
            };
            cfg.keep_trace = dump_trace;
            match quiver_sim::run(&cfg) {
                Ok(report) => {
                    let mut out = std::io::stdout().lock();
                    match common.output {
                        OutputFormat::Table => {
                            for line in &report.trace_lines {
                                let _ = writeln!(out, "{line}");
                            }
                            let _ = writeln!(out, "{}", report.summary());
                        }
                        OutputFormat::Json => {
                            if let Err(e) = print_json(&mut out, &run_json(&report)) {
                                eprintln!("quiver-sim: write the JSON report: {e}");
                                return ExitCode::from(2);
                            }
                        }
                    }
                    if report.passed() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!(
                        "seed {seed} could not run: {e:#}\nreplay: {}",
                        cfg.replay_command()
                    );
                    ExitCode::from(2)
                }
            }
        }
        Command::Sweep {
            seeds,
            common,
            threads,
        } => {
            if common.scenario == Scenario::Load {
                return usage_error(
                    "the load scenario runs one seed at a time: quiver-sim run --seed S --scenario load",
                );
            }
            let base = match common.config(seeds.start) {
                Ok(cfg) => cfg,
                Err(e) => return usage_error(&e),
            };
            let started = std::time::Instant::now();
            let table = common.output == OutputFormat::Table;
            let outcomes = quiver_sim::sweep(&base, seeds, threads, |o| {
                if table {
                    let line = match &o.result {
                        Ok(r) => r.line(),
                        Err(e) => format!("seed {:>5} ERROR {e}", o.seed),
                    };
                    println!("{line}");
                }
            });
            if table {
                println!("{}", sweep_summary(&base, &outcomes, started.elapsed()));
            } else {
                let json = sweep_json(&base, &outcomes, started.elapsed());
                if let Err(e) = print_json(&mut std::io::stdout().lock(), &json) {
                    eprintln!("quiver-sim: write the JSON report: {e}");
                    return ExitCode::from(2);
                }
            }
            let errors = outcomes.iter().any(|o| o.result.is_err());
            let failed = outcomes
                .iter()
                .any(|o| o.result.as_ref().is_ok_and(|r| !r.passed()));
            if errors {
                ExitCode::from(2)
            } else if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

fn print_json(out: &mut impl std::io::Write, value: &impl serde::Serialize) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

fn usage_error(e: &str) -> ExitCode {
    eprintln!("quiver-sim: {e}");
    ExitCode::from(2)
}
