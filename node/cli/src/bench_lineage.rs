//! `quiver-node bench lineage`: impact queries over a seeded lineage graph, beside a point read
//! of one version from the same state in the same run.
//!
//! The state is seeded directly (no cluster, no Raft): real commands (`CreateModel`,
//! `CreateVersion`, `AddLineageEdge`) applied by `RegistryApp::apply` in batches of
//! `SEED_BATCH_COMMANDS` per write transaction, as a Raft batch applies them, to a state env in
//! the scratch directory. Each version's registration records 4 edges (its data snapshot, code
//! commit, run, feature set); explicit edges make up the rest: a run's extra inputs (data
//! snapshots, feature sets, code), fine-tunes within a model, runs continuing runs (always
//! forward), feature sets computed from snapshots, derived snapshots, deployments
//! (`Shape::explicit_edge` has the weights). Randomness is seeded (`--seed`), so a run is
//! reproducible.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use quiver_client::bench::percentile_ms;
use quiver_node::command::{Command, Op, Response};
use quiver_node::domain::{Actor, RiskTier, Signature, VersionMetadata, VersionStatus};
use quiver_node::lineage::{Entity, EntityKind};
use quiver_node::state::RegistryApp;
use quiver_raft::App;
use quiver_transfer::{ChunkRef, FileEntry, Hash, Manifest};
use serde::Serialize;

/// Commands applied per write transaction while seeding.
const SEED_BATCH_COMMANDS: usize = 20_000;
/// Versions per model.
const VERSIONS_PER_MODEL: u64 = 100;

/// The size of the seeded graph and of the measurement.
#[derive(Clone, Debug)]
pub struct LineageOptions {
    pub versions: u64,
    pub edges: u64,
    pub queries: usize,
    pub seed: u64,
}

#[derive(Debug, Serialize)]
pub struct LineageReport {
    pub versions: u64,
    pub edges: u64,
    pub seed_s: f64,
    pub queries: usize,
    pub impact_ms_p50: f64,
    pub impact_ms_p99: f64,
    pub impact_ms_max: f64,
    /// Entities an impact query visited: mean and most.
    pub impact_nodes_mean: f64,
    pub impact_nodes_max: usize,
    /// Versions an impact query listed: mean and most.
    pub impact_versions_mean: f64,
    pub impact_versions_max: usize,
    /// Queries whose walk stopped at `WALK_NODES_MAX`.
    pub impact_truncated: usize,
    /// The baseline: one version read by model and number.
    pub point_read_ms_p50: f64,
    pub point_read_ms_p99: f64,
    pub p99_ratio: f64,
}

/// splitmix64: a small seeded generator (the bench needs reproducible picks, not quality).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// How many entities of each kind the graph has, from its number of versions.
struct Shape {
    versions: u64,
    models: u64,
    data: u64,
    features: u64,
    code: u64,
}

impl Shape {
    fn of(versions: u64) -> Shape {
        Shape {
            versions,
            models: versions.div_ceil(VERSIONS_PER_MODEL),
            data: (versions / 10).max(1),
            features: (versions / 50).max(1),
            code: (versions / 5).max(1),
        }
    }

    /// Version `i` (0-based) as (model, number).
    fn version(&self, i: u64) -> (String, u64) {
        (
            format!("m{}", i / VERSIONS_PER_MODEL),
            i % VERSIONS_PER_MODEL + 1,
        )
    }

    fn data(&self, rng: &mut Rng) -> Entity {
        Entity::new(EntityKind::Data, format!("d{}", rng.below(self.data)))
    }

    fn features(&self, rng: &mut Rng) -> Entity {
        Entity::new(
            EntityKind::Features,
            format!("f{}@1", rng.below(self.features)),
        )
    }

    fn code(&self, rng: &mut Rng) -> Entity {
        Entity::new(EntityKind::Code, format!("c{}", rng.below(self.code)))
    }

    fn run(i: u64) -> Entity {
        Entity::new(EntityKind::Run, format!("r{i}"))
    }

    /// One explicit edge of a kind drawn by weight, per mille of the explicit edges (at the
    /// default size, 6 per version): a run's other data snapshots (473, ~2.8 per run), its
    /// feature sets (167, ~1 per run) and code (250, ~1.5 per run); fine-tunes (67, ~0.4 per
    /// version); runs continuing runs (17); feature sets from snapshots (10, ~3 per feature
    /// set); derived snapshots (8, ~0.5 per snapshot); deployments (8). Every kind that chains
    /// (fine-tunes, runs, snapshots) branches less than once per entity, as real lineage does:
    /// an impact reaches hundreds of entities, not the whole graph.
    fn explicit_edge(&self, rng: &mut Rng) -> (Entity, Entity) {
        let run = |rng: &mut Rng| Shape::run(rng.below(self.versions));
        match rng.below(1000) {
            0..473 => (self.data(rng), run(rng)),
            473..640 => (self.features(rng), run(rng)),
            640..890 => (self.code(rng), run(rng)),
            890..957 => {
                // A fine-tune: a later version of the same model from an earlier one.
                let i = rng.below(self.versions);
                let model_start = i - i % VERSIONS_PER_MODEL;
                let j = model_start + rng.below(i - model_start + 1);
                let (m, a) = self.version(j);
                let (_, b) = self.version(i);
                (Entity::version(&m, a), Entity::version(&m, b))
            }
            957..974 => {
                let b = rng.below(self.versions);
                (Shape::run(rng.below(b + 1)), Shape::run(b))
            }
            974..984 => (self.data(rng), self.features(rng)),
            984..992 => {
                let b = rng.below(self.data);
                (
                    Entity::new(EntityKind::Data, format!("d{}", rng.below(b + 1))),
                    Entity::new(EntityKind::Data, format!("d{b}")),
                )
            }
            _ => {
                let (m, n) = self.version(rng.below(self.versions));
                (
                    Entity::version(&m, n),
                    Entity::new(EntityKind::Deployment, format!("{m}-prod")),
                )
            }
        }
    }

    /// An entity to ask the impact of: a data snapshot mostly, else any kind.
    fn query(&self, rng: &mut Rng) -> Entity {
        match rng.below(100) {
            0..40 => self.data(rng),
            40..55 => self.features(rng),
            55..70 => self.code(rng),
            70..85 => Shape::run(rng.below(self.versions)),
            _ => {
                let (m, n) = self.version(rng.below(self.versions));
                Entity::version(&m, n)
            }
        }
    }
}

/// The manifest of one file, `model.bin`, holding the bytes of `i` (a bench version's
/// content: distinct per version, never uploaded).
pub(crate) fn tiny_manifest(i: u64) -> Manifest {
    let content = i.to_le_bytes();
    Manifest {
        files: vec![FileEntry {
            path: "model.bin".into(),
            size_bytes: content.len() as u64,
            mode: 0o644,
            chunks: vec![ChunkRef {
                hash: Hash::of(&content),
                size_bytes: content.len() as u32,
            }],
        }],
    }
}

/// `read` in a read transaction of its own, and how long opening it and reading took.
pub(crate) fn timed<T>(
    env: &heed::Env,
    read: impl FnOnce(&heed::RoTxn<'_>) -> anyhow::Result<T>,
) -> anyhow::Result<(T, Duration)> {
    let started = Instant::now();
    let rtxn = env.read_txn()?;
    let out = read(&rtxn)?;
    drop(rtxn);
    Ok((out, started.elapsed()))
}

/// A one-row table of a figure beside a point read, as `bench lineage` and `bench search`
/// print it: label, p50, p99, the baseline's p50 and p99, and the p99 ratio.
pub(crate) fn point_read_table(label: String, figures: [f64; 5]) -> String {
    let ms = |v: f64| format!("{v:.3} ms");
    quiver_client::cli::table(
        &[
            "FIGURE",
            "P50",
            "P99",
            "BASELINE: POINT READ P50",
            "P99",
            "RATIO (P99)",
        ],
        &[vec![
            label,
            ms(figures[0]),
            ms(figures[1]),
            ms(figures[2]),
            ms(figures[3]),
            format!("{:.1}", figures[4]),
        ]],
    )
}

fn create_version(shape: &Shape, i: u64, rng: &mut Rng) -> Op {
    let (model, _) = shape.version(i);
    let manifest = tiny_manifest(i);
    Op::CreateVersion {
        model,
        manifest_root: manifest.root().to_hex(),
        manifest,
        signature: Signature::default(),
        metadata: VersionMetadata {
            data_snapshot_id: shape.data(rng).id,
            code_commit: shape.code(rng).id,
            pipeline_run_id: Shape::run(i).id,
            ..Default::default()
        },
        tags: [("feature_set".to_string(), shape.features(rng).id)].into(),
        status: VersionStatus::Ready,
        inline_chunks: Vec::new(),
    }
}

/// Applies `ops` in batches; returns how many were accepted.
pub(crate) struct Seeder<'a> {
    pub(crate) env: &'a heed::Env,
    pub(crate) app: &'a RegistryApp,
    pub(crate) index: u64,
}

impl Seeder<'_> {
    pub(crate) fn apply(&mut self, ops: Vec<Op>) -> anyhow::Result<u64> {
        self.apply_as("bench", ops)
    }

    /// [`Seeder::apply`], with `principal` as the commands' actor.
    pub(crate) fn apply_as(&mut self, principal: &str, ops: Vec<Op>) -> anyhow::Result<u64> {
        let mut accepted = 0;
        for batch in ops.chunks(SEED_BATCH_COMMANDS) {
            let mut wtxn = self.env.write_txn()?;
            for op in batch {
                self.index += 1;
                let cmd = Command {
                    actor: Actor {
                        name: principal.into(),
                        authenticated: true,
                    },
                    at_ms: 1_700_000_000_000,
                    request_id: None,
                    op: op.clone(),
                };
                match self.app.apply(&mut wtxn, self.index, &cmd)? {
                    Response::Rejected(_) => {}
                    _ => accepted += 1,
                }
            }
            wtxn.commit()?;
        }
        Ok(accepted)
    }
}

/// A fresh state env in `dir` (without fsync: a benchmark's state is thrown away), and the
/// registry opened on it.
pub(crate) fn open_state(dir: &Path) -> anyhow::Result<(heed::Env, RegistryApp)> {
    // SAFETY: the env is this process's alone, in a directory it just created.
    let env = unsafe {
        heed::EnvOpenOptions::new()
            .map_size(64 << 30)
            .max_dbs(RegistryApp::MAX_DBS)
            .flags(heed::EnvFlags::NO_SYNC | heed::EnvFlags::NO_META_SYNC)
            .open(dir)
    }
    .with_context(|| format!("open a state env in {}", dir.display()))?;
    let mut wtxn = env.write_txn()?;
    let app = RegistryApp::open(&env, &mut wtxn)?;
    wtxn.commit()?;
    Ok((env, app))
}

pub fn lineage(scratch: &Path, options: &LineageOptions) -> anyhow::Result<LineageReport> {
    let LineageOptions {
        versions,
        edges,
        queries,
        seed,
    } = options.clone();
    if versions == 0 || queries == 0 {
        bail!("--versions and --queries must be at least 1");
    }
    let registration_edges = 4 * versions;
    let Some(explicit) = edges.checked_sub(registration_edges) else {
        bail!(
            "--edges {edges} is fewer than the {registration_edges} the registrations record (4 \
             per version)"
        );
    };
    in_scratch(scratch, "lineage", |dir| {
        seed_and_measure(dir, versions, explicit, queries, seed)
    })
}

/// Runs `f` in a fresh directory under `scratch`, removed afterwards whatever `f` returned.
pub(crate) fn in_scratch<T>(
    scratch: &Path,
    label: &str,
    f: impl FnOnce(&Path) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let dir = scratch.join(format!("quiver-bench-{label}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let result = f(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn seed_and_measure(
    dir: &Path,
    versions: u64,
    explicit: u64,
    queries: usize,
    seed: u64,
) -> anyhow::Result<LineageReport> {
    let (env, app) = open_state(dir)?;
    let shape = Shape::of(versions);
    let mut rng = Rng(seed);
    let mut seeder = Seeder {
        env: &env,
        app: &app,
        index: 0,
    };

    let started = Instant::now();
    eprintln!("bench: seeding {versions} versions");
    let models = (0..shape.models)
        .map(|m| Op::CreateModel {
            name: format!("m{m}"),
            namespace: "bench".into(),
            description: String::new(),
            risk_tier: RiskTier::Low,
            tags: Default::default(),
        })
        .collect();
    seeder.apply(models)?;
    let ops = (0..versions)
        .map(|i| create_version(&shape, i, &mut rng))
        .collect();
    let created = seeder.apply(ops)?;
    if created != versions {
        bail!("seeding registered {created} of {versions} versions");
    }
    eprintln!("bench: seeding {explicit} explicit edges");
    let mut added = 0u64;
    while added < explicit {
        let want = (explicit - added).min(SEED_BATCH_COMMANDS as u64 * 10);
        let ops = (0..want)
            .map(|_| {
                let (from, to) = shape.explicit_edge(&mut rng);
                Op::AddLineageEdge { from, to }
            })
            .collect();
        // Duplicates and self-edges are refused and drawn again.
        added += seeder.apply(ops)?;
    }
    let seed_s = started.elapsed().as_secs_f64();
    let edges = 4 * versions + added;

    eprintln!("bench: {queries} impact queries and {queries} point reads");
    let mut impact = Vec::with_capacity(queries);
    let (mut nodes_total, mut nodes_max, mut versions_total, mut versions_max, mut truncated) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    for _ in 0..queries {
        let entity = shape.query(&mut rng);
        let (graph, took) = timed(&env, |rtxn| {
            app.lineage_impact(rtxn, &entity)
                .map_err(|e| anyhow::anyhow!("impact of {entity}: {e}"))
        })?;
        impact.push(took);
        nodes_total += graph.walk.nodes.len();
        nodes_max = nodes_max.max(graph.walk.nodes.len());
        versions_total += graph.versions.len();
        versions_max = versions_max.max(graph.versions.len());
        truncated += usize::from(graph.walk.truncated);
    }
    let mut point = Vec::with_capacity(queries);
    for _ in 0..queries {
        let (model, number) = shape.version(rng.below(versions));
        let (v, took) = timed(&env, |rtxn| {
            app.get_version(rtxn, &model, number)
                .map_err(|e| anyhow::anyhow!("read {model}/{number}: {e}"))
        })?;
        point.push(took);
        assert_eq!(v.number, number);
    }
    let ms = |d: &mut Vec<Duration>, p: f64| percentile_ms(d, p);
    let impact_ms_p99 = ms(&mut impact, 99.0);
    let point_read_ms_p99 = ms(&mut point, 99.0);
    Ok(LineageReport {
        versions,
        edges,
        seed_s,
        queries,
        impact_ms_p50: ms(&mut impact, 50.0),
        impact_ms_p99,
        impact_ms_max: ms(&mut impact, 100.0),
        impact_nodes_mean: nodes_total as f64 / queries as f64,
        impact_nodes_max: nodes_max,
        impact_versions_mean: versions_total as f64 / queries as f64,
        impact_versions_max: versions_max,
        impact_truncated: truncated,
        point_read_ms_p50: ms(&mut point, 50.0),
        point_read_ms_p99,
        p99_ratio: impact_ms_p99 / point_read_ms_p99.max(1e-9),
    })
}
