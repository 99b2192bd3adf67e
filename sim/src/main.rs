//! `quiver-sim`: run one seed or sweep many.
//!
//! Exit status: 0 when every run kept every invariant, 1 when a violation was found, 2 when a
//! run could not be carried out.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use quiver_sim::report::sweep_summary;
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
    /// chaos or failover.
    #[arg(long)]
    scenario: Scenario,
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Simulated seconds of the scenario (healing and convergence come after).
    #[arg(long)]
    duration_s: Option<u64>,
    /// Concurrent client pipelines.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Plant a known bug to show a checker notices it (test only): ack-before-commit,
    /// ack-before-w-copies or skip-chunk-verify.
    #[arg(long)]
    plant: Option<Plant>,
    /// Directory for the nodes' data dirs (default: /dev/shm if present, else the temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl Common {
    fn config(&self, seed: u64) -> Result<SimConfig, String> {
        let mut cfg = SimConfig::new(seed, self.scenario);
        cfg.nodes = self.nodes;
        if let Some(d) = self.duration_s {
            cfg.duration_s = d;
        }
        cfg.clients = self.clients;
        cfg.plant = self.plant;
        cfg.data_root = self.data_dir.clone();
        cfg.validate()?;
        Ok(cfg)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            seed,
            common,
            dump_trace,
        } => {
            let mut cfg = match common.config(seed) {
                Ok(cfg) => cfg,
                Err(e) => return usage_error(&e),
            };
            cfg.keep_trace = dump_trace;
            match quiver_sim::run(&cfg) {
                Ok(report) => {
                    let mut out = std::io::stdout().lock();
                    for line in &report.trace_lines {
                        let _ = writeln!(out, "{line}");
                    }
                    let _ = writeln!(out, "{}", report.summary());
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
            let base = match common.config(seeds.start) {
                Ok(cfg) => cfg,
                Err(e) => return usage_error(&e),
            };
            let started = std::time::Instant::now();
            let outcomes = quiver_sim::sweep(&base, seeds, threads, |o| {
                let line = match &o.result {
                    Ok(r) => r.line(),
                    Err(e) => format!("seed {:>5} ERROR {e}", o.seed),
                };
                println!("{line}");
            });
            println!("{}", sweep_summary(&base, &outcomes, started.elapsed()));
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

fn usage_error(e: &str) -> ExitCode {
    eprintln!("quiver-sim: {e}");
    ExitCode::from(2)
}
