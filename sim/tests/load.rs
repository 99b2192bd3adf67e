//! The `load` scenario at toy size (a debug build, well under a second per run): every replica
//! loads and verifies every chunk, Quiver's pull path keeps bytes inside regions and is faster
//! than the one-node baseline, and the same seed gives the same figures and trace.

use quiver_sim::load::{self, LoadConfig};
use quiver_sim::loadreport::LoadReport;

/// 12 replicas in 3 regions pull 200 MB (48 chunks) from 6 nodes.
fn toy(seed: u64) -> LoadConfig {
    let mut cfg = LoadConfig::new(seed);
    cfg.replicas = 12;
    cfg.model_bytes = 200_000_000;
    cfg
}

fn run_ok(cfg: &LoadConfig) -> LoadReport {
    match load::run(cfg) {
        Ok(report) => report,
        Err(e) => panic!("{} could not run: {e:#}", cfg.replay_command()),
    }
}

#[test]
fn every_replica_loads_and_verifies_every_chunk_and_p2p_beats_the_baseline() {
    let report = run_ok(&toy(1));
    let table = report.table();
    assert!(report.passed(), "{table}");
    let chunks = report.setup.chunks;
    assert_eq!(chunks, 48, "200 MB in 4 MiB chunks");
    for strategy in [&report.quiver, &report.baseline] {
        assert_eq!(strategy.replicas.len(), 12, "{table}");
        for r in &strategy.replicas {
            assert!(
                r.complete,
                "{} c{} incomplete: {table}",
                strategy.name, r.replica
            );
            assert_eq!(
                r.chunks_verified, chunks,
                "{} c{}",
                strategy.name, r.replica
            );
            assert!(r.model_load_time_ms > 0);
        }
        assert_eq!(strategy.by_region.len(), 3);
    }
    // Every replica of the baseline pulls from the origin; Quiver's from their own region.
    assert!(report
        .baseline
        .replicas
        .iter()
        .all(|r| r.sources == vec![1]));
    assert!(report.quiver.replicas.iter().all(|r| r.sources.len() == 2));
    // Every replica's bytes were delivered: at least 12 models' worth per strategy.
    let model = report.setup.model_bytes;
    for strategy in [&report.quiver, &report.baseline] {
        assert!(strategy.bytes.total_bytes() >= 12 * model, "{table}");
    }
    // Two thirds of the baseline's replicas are in other regions than the origin.
    assert!(
        report.baseline.bytes.cross_region_bytes >= 8 * model,
        "{table}"
    );
    assert!(
        report.quiver.bytes.cross_region_bytes < report.baseline.bytes.cross_region_bytes,
        "{table}"
    );
    assert!(
        report.quiver.overall.p50_ms < report.baseline.overall.p50_ms,
        "{table}"
    );
    assert!(report.ratio_p50 > 1.0, "{table}");
    // Repair brought the version to one holder per region (6 nodes > 5: should_hold's rule).
    assert_eq!(report.registration.holders.len(), 3, "{table}");
    assert!(report.registration.repaired_at_ms.is_some(), "{table}");
    assert_eq!(report.version_count, 1);
    assert!(table.contains("model_load_time_ms") && table.contains("trace: "));
    assert!(report.json().contains("\"p99_ms\""));
    let svg = report.svg();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("<polyline").count(),
        6,
        "3 regions x 2 strategies"
    );
}

#[test]
fn the_same_seed_gives_the_same_figures_and_trace() {
    let first = run_ok(&toy(7));
    let again = run_ok(&toy(7));
    assert!(first.trace_events > 1_000, "transfers are traced");
    assert_eq!(first.trace_hash, again.trace_hash);
    assert_eq!(first.figures(), again.figures());
    let other = run_ok(&toy(8));
    assert_ne!(
        first.trace_hash, other.trace_hash,
        "the seed shapes the run"
    );
}
