//! `quiver bench …`: runs the benchmarks in `crate::bench` and
//! prints their tables. Phase notes go to stderr so `--output json` stays
//! clean on stdout.

use std::time::Duration;

use crate::bench::{self, IngestOptions, RegistryOptions};
use crate::Client;

use super::args::Output;
use super::view::table;
use super::BenchCommand;

pub async fn run(client: &Client, command: BenchCommand) -> anyhow::Result<()> {
    let log = |line: &str| eprintln!("bench: {line}");
    match command {
        BenchCommand::Ingest {
            size,
            files,
            scratch_dir,
            seed,
            output,
        } => {
            let options = IngestOptions {
                size_bytes: size,
                files,
                scratch_dir,
                seed: seed.unwrap_or_else(rand::random),
            };
            let report = bench::ingest(client, &options, &log).await?;
            match output.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => {
                    let rows: Vec<Vec<String>> = report.rows().into_iter().map(Vec::from).collect();
                    outln!(
                        "ingest of {} bytes in {} files as {} (seed {})",
                        report.size_bytes,
                        report.files,
                        report.version,
                        report.seed
                    );
                    out!(
                        "{}",
                        table(&["FIGURE", "VALUE", "BASELINE", "RATIO"], &rows)
                    );
                }
            }
        }
        BenchCommand::ModelLoad { size_mib, output } => {
            let r = bench::model_load(client, size_mib.saturating_mul(1 << 20), &log).await?;
            match output.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&r)?),
                Output::Table => {
                    let ms = |v: f64| format!("{v:.0} ms");
                    outln!(
                        "model load of {} MiB: {} (agent: watch event → ready)\n\
                         baseline: write + fsync {} + runtime load {}\n\
                         ratio {:.2} (target ≤ 1.5)",
                        r.size_bytes >> 20,
                        ms(r.load_ms),
                        ms(r.raw_write_fsync_ms),
                        ms(r.runtime_load_ms),
                        r.ratio
                    );
                }
            }
        }
        BenchCommand::Rollback {
            agents,
            rollbacks,
            output,
        } => {
            let mut members = vec![client.clone()];
            let status = client.cluster_status().await?;
            for m in status.members {
                if m.node_id != status.node_id && !m.api_addr.is_empty() {
                    members.push(client.connect_to(&m.api_addr).await?);
                }
            }
            let r = bench::rollback(client, &members, agents, rollbacks, &log).await?;
            match output.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&r)?),
                Output::Table => {
                    let ms = |v: f64| format!("{v:.2} ms");
                    let rows = vec![
                        vec![
                            "rollback: call returned → last agent routes by it".into(),
                            ms(r.rollback_ms_p50),
                            ms(r.rollback_ms_p99),
                        ],
                        vec![
                            "rollout step: call returned → last agent routes by it".into(),
                            ms(r.step_ms_p50),
                            ms(r.step_ms_p99),
                        ],
                        vec![
                            "baseline: the rollback call itself".into(),
                            ms(r.call_ms_p50),
                            ms(r.call_ms_p99),
                        ],
                    ];
                    outln!(
                        "{} rollouts and rollbacks, {} agents over {} node(s)",
                        r.rollbacks,
                        r.agents,
                        members.len()
                    );
                    out!("{}", table(&["", "P50", "P99"], &rows));
                }
            }
        }
        BenchCommand::Promotion { promotions, output } => {
            let r = bench::promotion(client, promotions, &log).await?;
            match output.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&r)?),
                Output::Table => {
                    let ms = |v: f64| format!("{v:.2} ms");
                    let rows = vec![
                        vec![
                            "3 gates + 1 approval (stage set + approve)".into(),
                            ms(r.gated_ms_p50),
                            ms(r.gated_ms_p99),
                            ms(r.plain_ms_p50),
                            ms(r.plain_ms_p99),
                            format!("{:.2}", r.p50_ratio),
                        ],
                        vec![
                            "  the approval alone".into(),
                            ms(r.approval_ms_p50),
                            ms(r.approval_ms_p99),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                        ],
                    ];
                    outln!("{} promotions of each kind", r.promotions);
                    out!(
                        "{}",
                        table(
                            &[
                                "FIGURE",
                                "P50",
                                "P99",
                                "BASELINE: PLAIN STAGE SET P50",
                                "P99",
                                "RATIO (P50)"
                            ],
                            &rows
                        )
                    );
                }
            }
        }
        BenchCommand::Registry {
            clients,
            duration,
            model,
            output,
        } => {
            let options = RegistryOptions {
                clients,
                duration: Duration::from_secs(duration),
                model,
                register_only: false,
            };
            let report = bench::registry(client, &options, &log).await?;
            match output.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => {
                    let rows: Vec<Vec<String>> = report.rows().into_iter().map(Vec::from).collect();
                    outln!(
                        "registry with {} clients, {} s per phase, model {}",
                        report.clients,
                        report.duration_s,
                        report.model
                    );
                    out!(
                        "{}",
                        table(
                            &["OPERATION", "CONSISTENCY", "COUNT", "RATE", "P50", "P99"],
                            &rows
                        )
                    );
                }
            }
        }
        BenchCommand::Transport { .. } | BenchCommand::AgentOverhead { .. } => {
            unreachable!("the transport and agent-overhead benchmarks need no node")
        }
    }
    Ok(())
}

/// `quiver bench agent-overhead`: the agent's work per prediction beside parsing alone.
pub fn agent_overhead(requests: u32, output: Output) -> anyhow::Result<()> {
    let r = bench::agent_overhead(requests)?;
    match output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(&r)?),
        Output::Table => {
            let us = |v: f64| format!("{v:.1} µs");
            let rows = vec![
                vec![
                    "agent: parse + validate + route".into(),
                    us(r.agent_us_p50),
                    us(r.agent_us_p99),
                ],
                vec![
                    "baseline: parse the body alone".into(),
                    us(r.parse_us_p50),
                    us(r.parse_us_p99),
                ],
            ];
            outln!(
                "{} requests (one float32 input of 128 values), p99 ratio {:.2}",
                r.requests,
                r.p99_ratio
            );
            out!("{}", table(&["PER PREDICTION", "P50", "P99"], &rows));
        }
    }
    Ok(())
}

/// `quiver bench transport`: the chunk protocol against a bare quinn stream
/// and loopback TCP, all measured in this run.
pub async fn transport(size: u64, streams: usize, output: Output) -> anyhow::Result<()> {
    let r = quiver_transfer::bench_transport(size, streams).await?;
    match output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(&r)?),
        Output::Table => {
            let mb = |v: f64| format!("{v:.0} MB/s");
            let rows = vec![
                vec!["loopback TCP".into(), mb(r.tcp_mb_per_s), "-".into()],
                vec![
                    "quinn stream (tuned)".into(),
                    mb(r.quic_stream_mb_per_s),
                    "-".into(),
                ],
                vec![
                    "quinn stream (quinn defaults)".into(),
                    mb(r.quic_stream_default_mb_per_s),
                    "-".into(),
                ],
                vec![
                    format!(
                        "chunk protocol ({} in flight, {} connections, verified)",
                        r.streams, r.connections
                    ),
                    mb(r.chunk_protocol_mb_per_s),
                    format!("{:.2} of the tuned stream", r.chunk_to_stream_ratio),
                ],
            ];
            out!("{}", table(&["PATH", "THROUGHPUT", "RATIO"], &rows));
        }
    }
    Ok(())
}
