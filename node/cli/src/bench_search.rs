//! `quiver-node bench search`: catalog searches (`quiver model search`) over a seeded catalog,
//! beside a point read of one model from the same state in the same run.
//!
//! The state is seeded directly (no cluster, no Raft), as `bench lineage` seeds its graph: real
//! commands applied by `RegistryApp::apply` in batches. Each model gets a namespace (of 50), a
//! risk tier, an owner (of 20), a description of four words drawn from a vocabulary of 1,000
//! (so a word is in about 0.4% of the models), a team tag, and one version with an `auc`; one
//! model in ten has its version in Production, one in ten in Staging. A few data snapshots are
//! quarantined. The queries cycle through the shapes users ask (`Shape`), the slow ones
//! included: a word no model has, which scans every entry.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use quiver_client::bench::percentile_ms;
use quiver_node::catalog::{Comparison, MetricRange, SearchFilter};
use quiver_node::command::Op;
use quiver_node::domain::{RiskTier, Signature, Stage, VersionMetadata, VersionStatus};
use quiver_node::lineage::{Entity, EntityKind};
use serde::Serialize;

use crate::bench_lineage::{in_scratch, open_state, timed, tiny_manifest, Rng, Seeder};

const NAMESPACES: u64 = 50;
const OWNERS: u64 = 20;
const VOCABULARY: u64 = 1_000;
const SNAPSHOTS: u64 = 1_000;
const QUARANTINED_SNAPSHOTS: u64 = 3;
/// Hits per page, as the CLI asks by default.
const PAGE_SIZE: usize = 50;

#[derive(Clone, Debug)]
pub struct SearchOptions {
    pub models: u64,
    pub queries: usize,
    pub seed: u64,
}

#[derive(Debug, Serialize)]
pub struct SearchReport {
    pub models: u64,
    pub seed_s: f64,
    pub queries: usize,
    pub search_ms_p50: f64,
    pub search_ms_p99: f64,
    pub search_ms_max: f64,
    /// The slowest shape of query, by its p99.
    pub slowest_shape: String,
    pub slowest_shape_ms_p99: f64,
    /// Every shape's p50 and p99 (ms).
    pub shapes: Vec<ShapeFigures>,
    /// Mean hits per query (at most a page).
    pub hits_mean: f64,
    /// The baseline: one model read by name.
    pub point_read_ms_p50: f64,
    pub point_read_ms_p99: f64,
    pub p99_ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct ShapeFigures {
    pub shape: String,
    pub ms_p50: f64,
    pub ms_p99: f64,
}

fn word(i: u64) -> String {
    format!("w{i:03}")
}

fn create_model(i: u64, rng: &mut Rng) -> Op {
    let words: Vec<String> = (0..4).map(|_| word(rng.below(VOCABULARY))).collect();
    Op::CreateModel {
        name: format!("model-{i:06}"),
        namespace: format!("ns{}", i % NAMESPACES),
        description: format!("Ranks {}", words.join(" ")),
        risk_tier: match rng.below(3) {
            0 => RiskTier::Low,
            1 => RiskTier::Medium,
            _ => RiskTier::High,
        },
        tags: [("team".to_string(), format!("team{}", rng.below(100)))].into(),
    }
}

fn create_version(i: u64, rng: &mut Rng) -> Op {
    let manifest = tiny_manifest(i);
    Op::CreateVersion {
        model: format!("model-{i:06}"),
        manifest_root: manifest.root().to_hex(),
        manifest,
        signature: Signature::default(),
        metadata: VersionMetadata {
            data_snapshot_id: format!("snap-{}", rng.below(SNAPSHOTS)),
            code_commit: format!("c{}", rng.below(1000)),
            pipeline_run_id: format!("run-{i}"),
            metrics: [("auc".to_string(), rng.below(1000) as f64 / 1000.0)].into(),
            ..Default::default()
        },
        tags: Default::default(),
        status: VersionStatus::Ready,
        inline_chunks: Vec::new(),
    }
}

/// The shapes of query the benchmark cycles through.
const SHAPES: [&str; 8] = [
    "one common word",
    "two words",
    "a word no model has (scans all)",
    "namespace + production",
    "production + auc range",
    "owner + tier",
    "quarantined",
    "no filter",
];

fn query(shape: usize, rng: &mut Rng) -> SearchFilter {
    let w = || word(0);
    let mut f = SearchFilter::default();
    match shape {
        0 => f.words = vec![w()],
        1 => f.words = vec!["ranks".into(), word(rng.below(VOCABULARY))],
        2 => f.words = vec!["absent-word".into()],
        3 => {
            f.namespace = Some(format!("ns{}", rng.below(NAMESPACES)));
            f.stage = Some(Stage::Production);
        }
        4 => {
            f.stage = Some(Stage::Production);
            f.metrics = vec![MetricRange {
                metric: "auc".into(),
                comparison: Comparison::AtLeast,
                value: 0.99,
            }];
        }
        5 => {
            f.owner = Some(format!("owner{}", rng.below(OWNERS)));
            f.risk_tier = Some(RiskTier::High);
        }
        6 => f.quarantined = Some(true),
        _ => {}
    }
    f
}

pub fn search(scratch: &Path, options: &SearchOptions) -> anyhow::Result<SearchReport> {
    if options.models == 0 || options.queries == 0 {
        bail!("--models and --queries must be at least 1");
    }
    in_scratch(scratch, "search", |dir| seed_and_measure(dir, options))
}

fn seed_and_measure(dir: &Path, options: &SearchOptions) -> anyhow::Result<SearchReport> {
    let SearchOptions {
        models,
        queries,
        seed,
    } = options.clone();
    let (env, app) = open_state(dir)?;
    let mut rng = Rng(seed);
    let mut seeder = Seeder {
        env: &env,
        app: &app,
        index: 0,
    };
    let started = Instant::now();
    eprintln!("bench: seeding {models} models");
    // Owners: each model is created by one of OWNERS principals.
    for owner in 0..OWNERS {
        let ops: Vec<Op> = (0..models)
            .filter(|i| i % OWNERS == owner)
            .map(|i| create_model(i, &mut rng))
            .collect();
        seeder.apply_as(&format!("owner{owner}"), ops)?;
    }
    let created = seeder.apply((0..models).map(|i| create_version(i, &mut rng)).collect())?;
    if created != models {
        bail!("seeding registered {created} of {models} versions");
    }
    let moves = (0..models)
        .filter_map(|i| {
            let stage = match i % 10 {
                0 => Stage::Production,
                1 => Stage::Staging,
                _ => return None,
            };
            Some(Op::SetStage {
                model: format!("model-{i:06}"),
                number: 1,
                stage,
                reason: "bench".into(),
                override_signature: false,
            })
        })
        .collect();
    seeder.apply(moves)?;
    let quarantines = (0..QUARANTINED_SNAPSHOTS)
        .map(|s| Op::Quarantine {
            entity: Entity::new(EntityKind::Data, format!("snap-{s}")),
            reason: "bench".into(),
        })
        .collect();
    seeder.apply(quarantines)?;
    let seed_s = started.elapsed().as_secs_f64();

    eprintln!("bench: {queries} searches and {queries} point reads");
    let mut all = Vec::with_capacity(queries);
    let mut by_shape: Vec<Vec<Duration>> = vec![Vec::new(); SHAPES.len()];
    let mut hits_total = 0usize;
    for q in 0..queries {
        let shape = q % SHAPES.len();
        let filter = query(shape, &mut rng);
        let ((hits, _), took) = timed(&env, |rtxn| {
            app.search_models(rtxn, &filter, &|_| true, PAGE_SIZE, "")
                .map_err(|e| anyhow::anyhow!("search {}: {e}", filter.describe()))
        })?;
        all.push(took);
        by_shape[shape].push(took);
        hits_total += hits.len();
    }
    let mut point = Vec::with_capacity(queries);
    for _ in 0..queries {
        let name = format!("model-{:06}", rng.below(models));
        let (m, took) = timed(&env, |rtxn| {
            app.get_model(rtxn, &name)
                .map_err(|e| anyhow::anyhow!("read {name}: {e}"))
        })?;
        point.push(took);
        assert_eq!(m.name, name);
    }
    let shapes: Vec<ShapeFigures> = by_shape
        .iter_mut()
        .enumerate()
        .filter(|(_, d)| !d.is_empty())
        .map(|(i, d)| ShapeFigures {
            shape: SHAPES[i].to_string(),
            ms_p50: percentile_ms(d, 50.0),
            ms_p99: percentile_ms(d, 99.0),
        })
        .collect();
    let (slowest_shape, slowest_shape_ms_p99) = shapes
        .iter()
        .max_by(|a, b| a.ms_p99.total_cmp(&b.ms_p99))
        .map(|s| (s.shape.clone(), s.ms_p99))
        .unwrap_or_default();
    let search_ms_p99 = percentile_ms(&mut all, 99.0);
    let point_read_ms_p99 = percentile_ms(&mut point, 99.0);
    Ok(SearchReport {
        models,
        seed_s,
        queries,
        search_ms_p50: percentile_ms(&mut all, 50.0),
        search_ms_p99,
        search_ms_max: percentile_ms(&mut all, 100.0),
        slowest_shape,
        slowest_shape_ms_p99,
        shapes,
        hits_mean: hits_total as f64 / queries as f64,
        point_read_ms_p50: percentile_ms(&mut point, 50.0),
        point_read_ms_p99,
        p99_ratio: search_ms_p99 / point_read_ms_p99.max(1e-9),
    })
}
