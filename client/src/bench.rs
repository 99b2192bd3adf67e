//! `quiver bench`: figures measured against a live node, each printed with
//! the baseline it should be read against, measured in the same run on the
//! same machine (raw disk write, single-thread blake3). A figure alone says
//! little; the ratio says how much of the machine the registry uses.
//!
//! Benchmarks are commands, not timed tests: CI runs them at toy sizes for
//! correctness, so every phase works at a few MiB and a one-second duration.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::proto::{
    CreateModelRequest, ModelVersion, ReadConsistency, RiskTier, Signature, TensorSpec,
    UploadHeader, VersionMetadata,
};
use crate::sdk::{Client, ClientError, UploadFile};

/// Most files one ingest run splits its data over.
pub const BENCH_FILES_MAX: u32 = 1024;
/// Most concurrent clients in the registry benchmark.
pub const BENCH_CLIENTS_MAX: u32 = 1024;
/// Longest registry benchmark phase.
pub const BENCH_DURATION_SECS_MAX: u64 = 3_600;
/// Size of the in-memory buffer the blake3 baseline hashes over and over.
pub const HASH_BUFFER_BYTES: usize = 64 * 1024 * 1024;
/// Size of each write in the raw-disk baseline.
const WRITE_PIECE_BYTES: usize = 1024 * 1024;
/// Size of each file registered by the registry benchmark.
pub const TINY_FILE_BYTES: u64 = 1024;
/// Alias the registry benchmark reads.
pub const BENCH_ALIAS: &str = "bench";

const MEGABYTE: f64 = 1_000_000.0;

// ------------------------------------------------------------ data source

/// Seeded pseudo-random bytes (xorshift64): incompressible, fast to make,
/// and the same for the same seed whatever sizes they are read in.
#[derive(Clone, Debug)]
pub struct SeededBytes {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl SeededBytes {
    pub fn new(seed: u64) -> SeededBytes {
        // splitmix64 spreads nearby seeds apart; xorshift must not start at 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        SeededBytes {
            state: z | 1,
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x.to_le_bytes()
    }

    pub fn fill(&mut self, mut buf: &mut [u8]) {
        while !buf.is_empty() {
            if self.used == 8 && buf.len() >= 8 {
                let (head, rest) = buf.split_at_mut(8);
                head.copy_from_slice(&self.next_word());
                buf = rest;
                continue;
            }
            if self.used == 8 {
                self.word = self.next_word();
                self.used = 0;
            }
            let take = (8 - self.used).min(buf.len());
            let (head, rest) = buf.split_at_mut(take);
            head.copy_from_slice(&self.word[self.used..self.used + take]);
            self.used += take;
            buf = rest;
        }
    }
}

/// A reader of exactly `size_bytes` seeded bytes.
pub struct SeededReader {
    bytes: SeededBytes,
    remaining_bytes: u64,
}

impl SeededReader {
    pub fn new(seed: u64, size_bytes: u64) -> SeededReader {
        SeededReader {
            bytes: SeededBytes::new(seed),
            remaining_bytes: size_bytes,
        }
    }
}

impl Read for SeededReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining_bytes) as usize;
        self.bytes.fill(&mut buf[..n]);
        self.remaining_bytes -= n as u64;
        Ok(n)
    }
}

// ----------------------------------------------------------------- ingest

#[derive(Clone, Debug)]
pub struct IngestOptions {
    pub size_bytes: u64,
    pub files: u32,
    /// Where the raw-write baseline and the download write their files.
    pub scratch_dir: PathBuf,
    pub seed: u64,
}

/// Throughputs in MB/s (10^6 bytes per second).
#[derive(Clone, Debug, Serialize)]
pub struct IngestReport {
    pub size_bytes: u64,
    pub files: u32,
    pub seed: u64,
    pub version: String,
    pub manifest_root: String,
    pub raw_write_mb_per_s: f64,
    pub blake3_mb_per_s: f64,
    pub upload_mb_per_s: f64,
    pub download_mb_per_s: f64,
    pub download_verify_only_mb_per_s: f64,
    pub upload_to_raw_write_ratio: f64,
    pub download_to_raw_write_ratio: f64,
    pub download_verify_only_to_blake3_ratio: f64,
}

impl IngestReport {
    /// Table rows: figure, value, baseline, ratio.
    pub fn rows(&self) -> Vec<[String; 4]> {
        let raw = format!("raw write {}", mb_per_s(self.raw_write_mb_per_s));
        let hash = format!("blake3 {}", mb_per_s(self.blake3_mb_per_s));
        vec![
            row("raw write + fsync", self.raw_write_mb_per_s, None),
            row("blake3, 1 thread", self.blake3_mb_per_s, None),
            row(
                "upload (register)",
                self.upload_mb_per_s,
                Some((raw.clone(), self.upload_to_raw_write_ratio)),
            ),
            row(
                "download (verify, write, fsync)",
                self.download_mb_per_s,
                Some((raw, self.download_to_raw_write_ratio)),
            ),
            row(
                "download (verify only)",
                self.download_verify_only_mb_per_s,
                Some((hash, self.download_verify_only_to_blake3_ratio)),
            ),
        ]
    }
}

fn row(figure: &str, value: f64, baseline: Option<(String, f64)>) -> [String; 4] {
    let (baseline, ratio) = match baseline {
        Some((name, ratio)) => (name, format!("{ratio:.2}")),
        None => ("-".into(), "-".into()),
    };
    [figure.into(), mb_per_s(value), baseline, ratio]
}

fn mb_per_s(value: f64) -> String {
    format!("{value:.1} MB/s")
}

/// Megabytes per second, 0 for an instant that measured nothing.
pub fn throughput_mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return 0.0;
    }
    bytes as f64 / MEGABYTE / seconds
}

fn ratio(value: f64, baseline: f64) -> f64 {
    if baseline > 0.0 {
        value / baseline
    } else {
        0.0
    }
}

/// Sizes of `files` files that add up to `size_bytes`, the first ones one
/// byte larger when it does not divide evenly.
pub fn split_sizes(size_bytes: u64, files: u32) -> Vec<u64> {
    let files = u64::from(files.max(1));
    (0..files)
        .map(|index| size_bytes / files + u64::from(index < size_bytes % files))
        .collect()
}

/// Runs the ingest benchmark. `log` receives one line per phase.
pub async fn ingest(
    client: &Client,
    options: &IngestOptions,
    log: &dyn Fn(&str),
) -> Result<IngestReport, ClientError> {
    check_ingest(options)?;
    let size_bytes = options.size_bytes;

    log("measuring raw disk write + fsync");
    let scratch = options.scratch_dir.clone();
    let seed = options.seed;
    let raw_write = blocking(move || raw_write(&scratch, size_bytes, seed)).await?;

    log("measuring single-thread blake3");
    let hashed = blocking(move || Ok(hash_rate(size_bytes, seed))).await?;

    let model = format!("bench-ingest-{}-{}", std::process::id(), unix_ms());
    log(&format!("uploading to model {model}"));
    client.create_model(bench_model(&model, "ingest")).await?;
    let files = split_sizes(size_bytes, options.files)
        .into_iter()
        .enumerate()
        .map(|(index, file_bytes)| UploadFile {
            path: format!("part-{index:04}.bin"),
            mode: 0o644,
            size_bytes: file_bytes,
            reader: Box::new(SeededReader::new(
                seed ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407),
                file_bytes,
            )),
        })
        .collect();
    let started = Instant::now();
    let version = client.register_stream(bench_header(&model), files).await?;
    let upload = started.elapsed();
    let reference = format!("{}/{}", version.model, version.version);

    log(&format!(
        "downloading {reference} into the scratch directory"
    ));
    let out_dir = options
        .scratch_dir
        .join(format!("quiver-bench-download-{}", std::process::id()));
    let started = Instant::now();
    let downloaded = client
        .download_version(&reference, &out_dir, &|_, _| {})
        .await;
    let download = started.elapsed();
    let removed = fs::remove_dir_all(&out_dir);
    downloaded?;
    removed.map_err(|e| ClientError::io(format!("remove '{}'", out_dir.display()), e))?;

    log(&format!("downloading {reference} without writing"));
    let started = Instant::now();
    let mut sunk_bytes: u64 = 0;
    client
        .download_to_sink(&reference, |_, data| sunk_bytes += data.len() as u64)
        .await?;
    let verify_only = started.elapsed();
    if sunk_bytes != size_bytes {
        return Err(ClientError::Verify(format!(
            "downloaded {sunk_bytes} bytes of {reference}, uploaded {size_bytes}"
        )));
    }

    let raw_write_mb_per_s = throughput_mb_per_s(size_bytes, raw_write);
    let blake3_mb_per_s = throughput_mb_per_s(hashed.0, hashed.1);
    let upload_mb_per_s = throughput_mb_per_s(size_bytes, upload);
    let download_mb_per_s = throughput_mb_per_s(size_bytes, download);
    let download_verify_only_mb_per_s = throughput_mb_per_s(size_bytes, verify_only);
    Ok(IngestReport {
        size_bytes,
        files: options.files,
        seed,
        version: reference,
        manifest_root: version.manifest_root,
        raw_write_mb_per_s,
        blake3_mb_per_s,
        upload_mb_per_s,
        download_mb_per_s,
        download_verify_only_mb_per_s,
        upload_to_raw_write_ratio: ratio(upload_mb_per_s, raw_write_mb_per_s),
        download_to_raw_write_ratio: ratio(download_mb_per_s, raw_write_mb_per_s),
        download_verify_only_to_blake3_ratio: ratio(download_verify_only_mb_per_s, blake3_mb_per_s),
    })
}

fn check_ingest(options: &IngestOptions) -> Result<(), ClientError> {
    if options.files == 0 || options.files > BENCH_FILES_MAX {
        return Err(ClientError::InvalidInput(format!(
            "--files {} is out of range: use 1 to {BENCH_FILES_MAX}",
            options.files
        )));
    }
    if options.size_bytes < u64::from(options.files) {
        return Err(ClientError::InvalidInput(format!(
            "--size {} bytes is smaller than --files {}: every file needs at least one byte",
            options.size_bytes, options.files
        )));
    }
    if !options.scratch_dir.is_dir() {
        return Err(ClientError::InvalidInput(format!(
            "--scratch-dir '{}' is not a directory; create it or pick another",
            options.scratch_dir.display()
        )));
    }
    Ok(())
}

/// Writes `size_bytes` to a new file in `scratch_dir`, syncs it, deletes it.
pub fn raw_write(scratch_dir: &Path, size_bytes: u64, seed: u64) -> Result<Duration, ClientError> {
    let path = scratch_dir.join(format!("quiver-bench-raw-{}.tmp", std::process::id()));
    let mut piece = vec![0u8; WRITE_PIECE_BYTES];
    SeededBytes::new(seed).fill(&mut piece);
    let context = || format!("write baseline file '{}'", path.display());
    let started = Instant::now();
    let written = (|| {
        let mut file = File::create(&path)?;
        let mut remaining = size_bytes;
        while remaining > 0 {
            let n = remaining.min(WRITE_PIECE_BYTES as u64) as usize;
            file.write_all(&piece[..n])?;
            remaining -= n as u64;
        }
        file.sync_all()
    })();
    let elapsed = started.elapsed();
    let removed = fs::remove_file(&path);
    written.map_err(|e| ClientError::io(context(), e))?;
    removed.map_err(|e| ClientError::io(context(), e))?;
    Ok(elapsed)
}

/// Hashes an in-memory buffer repeatedly until at least `size_bytes` went
/// through one blake3 hasher; returns the bytes hashed and the time taken.
fn hash_rate(size_bytes: u64, seed: u64) -> (u64, Duration) {
    let buffer_bytes = (size_bytes.clamp(1, HASH_BUFFER_BYTES as u64)) as usize;
    let mut buffer = vec![0u8; buffer_bytes];
    SeededBytes::new(seed).fill(&mut buffer);
    let mut hasher = blake3::Hasher::new();
    let mut hashed: u64 = 0;
    let started = Instant::now();
    while hashed < size_bytes {
        hasher.update(&buffer);
        hashed += buffer_bytes as u64;
    }
    std::hint::black_box(hasher.finalize());
    (hashed, started.elapsed())
}

// --------------------------------------------------------------- registry

#[derive(Clone, Debug)]
pub struct RegistryOptions {
    pub clients: u32,
    /// Length of each phase.
    pub duration: Duration,
    /// Model to register into; a fresh one when `None`.
    pub model: Option<String>,
    /// Stop after the registration phase (no read phases).
    pub register_only: bool,
}

/// One operation's figures over one phase.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OperationFigure {
    pub operation: String,
    /// "linearizable", "stale", or "-" for writes.
    pub consistency: String,
    pub count: u64,
    pub per_s: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RegistryReport {
    pub clients: u32,
    pub duration_s: f64,
    pub model: String,
    pub figures: Vec<OperationFigure>,
}

impl RegistryReport {
    /// Table rows: operation, consistency, count, per second, p50, p99.
    pub fn rows(&self) -> Vec<[String; 6]> {
        self.figures
            .iter()
            .map(|f| {
                [
                    f.operation.clone(),
                    f.consistency.clone(),
                    f.count.to_string(),
                    format!("{:.1}/s", f.per_s),
                    format!("{:.2} ms", f.latency_ms_p50),
                    format!("{:.2} ms", f.latency_ms_p99),
                ]
            })
            .collect()
    }
}

/// The `p`-th percentile (0 < p <= 100) of `latencies` in milliseconds,
/// nearest-rank; 0 for no samples.
pub fn percentile_ms(latencies: &mut [Duration], p: f64) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    latencies.sort_unstable();
    let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
    latencies[rank.clamp(1, latencies.len()) - 1].as_secs_f64() * 1000.0
}

fn figure(
    operation: &str,
    consistency: &str,
    mut latencies: Vec<Duration>,
    elapsed: Duration,
) -> OperationFigure {
    OperationFigure {
        operation: operation.into(),
        consistency: consistency.into(),
        count: latencies.len() as u64,
        per_s: latencies.len() as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
        latency_ms_p50: percentile_ms(&mut latencies, 50.0),
        latency_ms_p99: percentile_ms(&mut latencies, 99.0),
    }
}

/// Runs the registry benchmark: `clients` connections register tiny
/// versions for one phase, then read an alias and a version, linearizable
/// and stale, for one phase each.
pub async fn registry(
    client: &Client,
    options: &RegistryOptions,
    log: &dyn Fn(&str),
) -> Result<RegistryReport, ClientError> {
    if options.clients == 0 || options.clients > BENCH_CLIENTS_MAX {
        return Err(ClientError::InvalidInput(format!(
            "--clients {} is out of range: use 1 to {BENCH_CLIENTS_MAX}",
            options.clients
        )));
    }
    if options.duration.is_zero() || options.duration.as_secs() > BENCH_DURATION_SECS_MAX {
        return Err(ClientError::InvalidInput(format!(
            "--duration must be 1 to {BENCH_DURATION_SECS_MAX} seconds"
        )));
    }
    let model = match &options.model {
        Some(model) => model.clone(),
        None => format!("bench-registry-{}-{}", std::process::id(), unix_ms()),
    };
    match client.create_model(bench_model(&model, "registry")).await {
        Ok(_) => {}
        Err(error) if error.code() == Some(tonic::Code::AlreadyExists) => {}
        Err(error) => return Err(error),
    }
    // One connection per client, as separate processes would have.
    let mut clients = Vec::with_capacity(options.clients as usize);
    for _ in 0..options.clients {
        clients.push(client.reconnect().await?);
    }

    log(&format!(
        "registering 1 KiB versions of {model} from {} clients",
        options.clients
    ));
    let nonce = unix_ms();
    let (latencies, elapsed, last) = run_phase(&clients, options.duration, {
        let model = model.clone();
        move |client, client_index, iteration| {
            let model = model.clone();
            async move {
                let seed = nonce ^ (u64::from(client_index) << 48) ^ iteration;
                let file = UploadFile {
                    path: "tiny.bin".into(),
                    mode: 0o644,
                    size_bytes: TINY_FILE_BYTES,
                    reader: Box::new(SeededReader::new(seed, TINY_FILE_BYTES)),
                };
                let version = client
                    .register_stream(bench_header(&model), vec![file])
                    .await?;
                Ok(version.version)
            }
        }
    })
    .await?;
    let mut figures = vec![figure("register (1 KiB)", "-", latencies, elapsed)];
    let Some(version) = last else {
        return Err(ClientError::Verify(
            "no registration completed within --duration".into(),
        ));
    };
    if options.register_only {
        return Ok(RegistryReport {
            clients: options.clients,
            duration_s: options.duration.as_secs_f64(),
            model,
            figures,
        });
    }

    client.set_alias(&model, BENCH_ALIAS, version).await?;
    let version_ref = format!("{model}/{version}");
    for consistency in [ReadConsistency::Linearizable, ReadConsistency::Stale] {
        let name = consistency_name(consistency);
        log(&format!("reading alias {model}@{BENCH_ALIAS} ({name})"));
        let (latencies, elapsed, _) = run_phase(&clients, options.duration, {
            let model = model.clone();
            move |client, _, _| {
                let model = model.clone();
                async move {
                    let alias = client.get_alias(&model, BENCH_ALIAS, consistency).await?;
                    Ok(alias.version)
                }
            }
        })
        .await?;
        figures.push(figure("get alias", name, latencies, elapsed));

        log(&format!("reading version {version_ref} ({name})"));
        let (latencies, elapsed, _) = run_phase(&clients, options.duration, {
            let version_ref = version_ref.clone();
            move |client, _, _| {
                let version_ref = version_ref.clone();
                async move {
                    let found: ModelVersion = client.get_version(&version_ref, consistency).await?;
                    Ok(found.version)
                }
            }
        })
        .await?;
        figures.push(figure("get version", name, latencies, elapsed));
    }
    Ok(RegistryReport {
        clients: options.clients,
        duration_s: options.duration.as_secs_f64(),
        model,
        figures,
    })
}

// -------------------------------------------------------------- promotion

#[derive(Clone, Debug, Serialize)]
pub struct PromotionReport {
    pub promotions: u32,
    /// Through three gates (required metadata, a metric threshold, an evaluation within
    /// bounds) and one approval by another principal: the stage change that opens the review
    /// plus the approval that completes the gates and moves the version.
    pub gated_ms_p50: f64,
    pub gated_ms_p99: f64,
    /// The approval alone (gates evaluated, version moved, in one replicated command).
    pub approval_ms_p50: f64,
    pub approval_ms_p99: f64,
    /// The baseline: a stage change to Production of a model without a policy.
    pub plain_ms_p50: f64,
    pub plain_ms_p99: f64,
    pub p50_ratio: f64,
}

/// The policy the gated model promotes through: three gates and one approval.
const PROMOTION_POLICY: &str = r#"{"production": [
  {"kind": "required_metadata", "fields": ["data_snapshot", "code_commit", "run_id"]},
  {"kind": "metric", "metric": "synthetic", "op": ">=", "value": 0.5},
  {"kind": "evaluation", "eval_kind": "fairness", "bounds": [{"metric": "dp_gap", "op": "<=", "value": 0.05}]},
  {"kind": "approvals", "count": 1, "role": "approver"}]}"#;

/// Promotes `promotions` versions to Production through gates and an approval, alternating
/// with as many plain promotions of a model without a policy. `client` must be an admin's: it
/// creates the models, the policy, and a reviewer (principal `bench-reviewer`, approver in the
/// bench namespace, with a token that expires in an hour).
pub async fn promotion(
    client: &Client,
    promotions: u32,
    log: &dyn Fn(&str),
) -> Result<PromotionReport, ClientError> {
    use crate::proto::{PolicyScope, RecordEvaluationRequest, Stage};
    if promotions == 0 || promotions > 100_000 {
        return Err(ClientError::InvalidInput(format!(
            "--promotions {promotions} is out of range: use 1 to 100000"
        )));
    }
    let stamp = format!("{}-{}", std::process::id(), unix_ms());
    let gated = format!("bench-promotion-{stamp}");
    let plain = format!("bench-plain-{stamp}");
    for model in [&gated, &plain] {
        client.create_model(bench_model(model, "promotion")).await?;
    }
    client
        .set_policy(
            PolicyScope {
                model: gated.clone(),
                ..Default::default()
            },
            Some(PROMOTION_POLICY.to_string()),
        )
        .await?;
    client
        .grant_role("bench-reviewer", "bench", "approver")
        .await?;
    let token = client
        .create_token("bench-reviewer", "quiver bench promotion", Some(3600))
        .await?
        .secret_token;
    let reviewer = client.reconnect().await?.with_token(Some(token));
    log(&format!(
        "promoting {promotions} versions of {gated} (3 gates + 1 approval) and of {plain} (no policy)"
    ));
    let (mut gated_ms, mut approval_ms, mut plain_ms) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..promotions {
        let v = register_tiny(client, &gated, i).await?;
        let reference = format!("{gated}/{v}");
        client
            .record_evaluation(RecordEvaluationRequest {
                reference: reference.clone(),
                kind: "fairness".into(),
                metrics: [("dp_gap".to_string(), 0.01)].into(),
                summary: String::new(),
            })
            .await?;
        let begun = Instant::now();
        let waiting = client
            .set_stage(&reference, Stage::Production, "bench")
            .await?;
        let Some(review) = waiting.pending_review else {
            return Err(ClientError::Verify(format!(
                "{reference} did not wait for an approval: the policy's gates were not applied"
            )));
        };
        let approved = Instant::now();
        let decided = reviewer.decide_review(review.id, true, "bench").await?;
        approval_ms.push(approved.elapsed());
        gated_ms.push(begun.elapsed());
        let moved = decided.version.map(|v| v.stage);
        if moved != Some(Stage::Production as i32) {
            return Err(ClientError::Verify(format!(
                "the approval of {reference} left it in stage {moved:?}, not production"
            )));
        }

        let v = register_tiny(client, &plain, i).await?;
        let begun = Instant::now();
        client
            .set_stage(&format!("{plain}/{v}"), Stage::Production, "bench")
            .await?;
        plain_ms.push(begun.elapsed());
    }
    let gated_ms_p50 = percentile_ms(&mut gated_ms, 50.0);
    let plain_ms_p50 = percentile_ms(&mut plain_ms, 50.0);
    Ok(PromotionReport {
        promotions,
        gated_ms_p50,
        gated_ms_p99: percentile_ms(&mut gated_ms, 99.0),
        approval_ms_p50: percentile_ms(&mut approval_ms, 50.0),
        approval_ms_p99: percentile_ms(&mut approval_ms, 99.0),
        plain_ms_p50,
        plain_ms_p99: percentile_ms(&mut plain_ms, 99.0),
        p50_ratio: gated_ms_p50 / plain_ms_p50.max(1e-9),
    })
}

// -------------------------------------------------------------- rollback

#[derive(Clone, Debug, Serialize)]
pub struct RollbackReport {
    pub agents: u32,
    pub rollbacks: u32,
    /// From `Rollback` returning to the last agent routing by the endpoint's new generation
    /// (0 when every agent did before the call returned).
    pub rollback_ms_p50: f64,
    pub rollback_ms_p99: f64,
    /// The same for the first step of a rollout (5% to the new version).
    pub step_ms_p50: f64,
    pub step_ms_p99: f64,
    /// The baseline: the `Rollback` call itself (a replicated write), call to return.
    pub call_ms_p50: f64,
    pub call_ms_p99: f64,
}

/// Starts and rolls back `rollbacks` rollouts of an endpoint served by `agents` real serving
/// agents in this process (each with its own directory and HTTP listener, reaching the
/// registry through `members` round robin, as a fleet would); reports how long after each call
/// returned the last agent routed by the change. `client` must be an admin's (it creates the
/// model, its versions and the endpoint, and the agents report with its token).
pub async fn rollback(
    client: &Client,
    members: &[Client],
    agents: u32,
    rollbacks: u32,
    log: &dyn Fn(&str),
) -> Result<RollbackReport, ClientError> {
    use crate::agent::{builtin_runtimes, Agent};
    use crate::proto::{RolloutStep, Stage};
    if agents == 0 || agents > 200 || rollbacks == 0 || rollbacks > 10_000 {
        return Err(ClientError::InvalidInput(format!(
            "--agents {agents} --rollbacks {rollbacks} is out of range: use 1 to 200 agents and 1 \
             to 10000 rollbacks"
        )));
    }
    let stamp = format!("{}-{}", std::process::id(), unix_ms());
    let model = format!("bench-rollback-{stamp}");
    let endpoint = format!("bench-ep-{}", unix_ms() % 1_000_000_000);
    client.create_model(bench_model(&model, "rollback")).await?;
    let stable = register_onnx(client, &model, &[1.0, 0.0, 0.0]).await?;
    let canary = register_onnx(client, &model, &[0.0, 1.0, 0.0]).await?;
    client
        .set_stage(&format!("{model}/{stable}"), Stage::Production, "bench")
        .await?;
    client
        .set_stage(&format!("{model}/{canary}"), Stage::Staging, "bench")
        .await?;
    let created = client
        .create_deployment(&endpoint, &format!("{model}/{stable}"), "bench")
        .await?;
    let dir = tempfile_dir("quiver-bench-agents")?;
    let fleet = members.len().max(1);
    let mut running = Vec::new();
    for a in 0..agents {
        let node = members.get(a as usize % fleet).unwrap_or(client);
        let config = bench_agent(
            &format!("bench-agent-{a}"),
            &endpoint,
            &dir.join(format!("agent-{a}")),
            node,
        );
        let agent = Agent::start(config, builtin_runtimes())
            .await
            .map_err(|e| ClientError::Verify(format!("starting agent {a}: {e:#}")))?;
        running.push(agent);
    }
    let ready = futures::future::join_all(
        running
            .iter()
            .map(|a| a.wait_ready(created.generation, Duration::from_secs(60))),
    )
    .await;
    if ready.iter().any(|r| !r) {
        return Err(ClientError::Verify(
            "an agent was not serving the endpoint within 60 s".into(),
        ));
    }
    log(&format!(
        "{rollbacks} rollouts and rollbacks of {endpoint}, served by {agents} agents over {fleet} \
         node(s)"
    ));
    // When the last agent routed by `generation`, waiting 30 s at most.
    let last_routed = |generation: u64| {
        let waits = running.iter().map(move |a| async move {
            a.wait_generation(generation, Duration::from_secs(30)).await
        });
        async move {
            let mut last = None;
            for at in futures::future::join_all(waits).await {
                let at = at.ok_or_else(|| {
                    ClientError::Verify(format!(
                        "an agent did not route by generation {generation} within 30 s"
                    ))
                })?;
                last = Some(last.map_or(at, |l: Instant| l.max(at)));
            }
            last.ok_or_else(|| ClientError::Verify("no agents".into()))
        }
    };
    let (mut rollback_ms, mut step_ms, mut call_ms) = (Vec::new(), Vec::new(), Vec::new());
    let after = |returned: Instant, last: Instant| last.saturating_duration_since(returned);
    for _ in 0..rollbacks {
        let plan = vec![
            RolloutStep {
                percent: 5,
                duration_ms: 3_600_000,
            },
            RolloutStep {
                percent: 100,
                duration_ms: 0,
            },
        ];
        let started = client
            .start_rollout(&endpoint, &format!("{model}/{canary}"), plan, None, "bench")
            .await?;
        let returned = Instant::now();
        let last = last_routed(started.generation).await?;
        step_ms.push(after(returned, last));
        let call = Instant::now();
        let back = client.rollback(&endpoint, "bench").await?;
        let returned = Instant::now();
        call_ms.push(returned - call);
        let last = last_routed(back.generation).await?;
        rollback_ms.push(after(returned, last));
        // A rollback needs nothing loaded: the stable version answers on every agent.
        if let Some(a) = running.iter().find(|a| !a.serves_all_of_split()) {
            return Err(ClientError::Verify(format!(
                "after a rollback an agent cannot serve its whole split: {:?}",
                a.status()
            )));
        }
    }
    for agent in running {
        agent.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(RollbackReport {
        agents,
        rollbacks,
        rollback_ms_p50: percentile_ms(&mut rollback_ms, 50.0),
        rollback_ms_p99: percentile_ms(&mut rollback_ms, 99.0),
        step_ms_p50: percentile_ms(&mut step_ms, 50.0),
        step_ms_p99: percentile_ms(&mut step_ms, 99.0),
        call_ms_p50: percentile_ms(&mut call_ms, 50.0),
        call_ms_p99: percentile_ms(&mut call_ms, 99.0),
    })
}

/// A benchmark's agent of `endpoint`: files in `dir`, reaching the registry through `node`
/// with its credentials, reporting every second.
fn bench_agent(
    name: &str,
    endpoint: &str,
    dir: &std::path::Path,
    node: &Client,
) -> crate::agent::AgentConfig {
    crate::agent::AgentConfig {
        name: name.to_string(),
        endpoint: endpoint.to_string(),
        dir: dir.to_path_buf(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        region: String::new(),
        zone: String::new(),
        report_every: Duration::from_secs(1),
        registry: crate::agent::Registry {
            endpoints: vec![node.endpoint().to_string()],
            tls: node.tls().clone(),
            token: node.token().map(str::to_string),
        },
        faults: crate::agent::Faults::default(),
    }
}

/// A fresh directory under the system's temporary directory.
fn tempfile_dir(prefix: &str) -> Result<std::path::PathBuf, ClientError> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{}", std::process::id(), unix_ms()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| ClientError::Verify(format!("creating {}: {e}", dir.display())))?;
    Ok(dir)
}

/// Registers an example ONNX linear model (`quiver example-model`'s) with its signature.
async fn register_onnx(client: &Client, model: &str, weights: &[f32]) -> Result<u64, ClientError> {
    use crate::agent::onnx::example;
    let bytes = example::linear_model(weights, 0.0);
    let signature = crate::signature::SignatureJson::parse(&example::signature_json(weights.len()))
        .map_err(|e| ClientError::Verify(e.to_string()))?;
    let mut header = bench_header(model);
    header.signature = Some(signature.to_proto());
    let file = UploadFile {
        path: "model.onnx".into(),
        mode: 0o644,
        size_bytes: bytes.len() as u64,
        reader: Box::new(std::io::Cursor::new(bytes)),
    };
    Ok(client.register_stream(header, vec![file]).await?.version)
}

// ---------------------------------------------------------- model load

#[derive(Clone, Debug, Serialize)]
pub struct ModelLoadReport {
    pub size_bytes: u64,
    /// The agent's `model_load_time_ms` for the version: from the watch event that made it
    /// wanted (all traffic moved to it) to ready to serve (pulled from a node, every chunk
    /// verified, written, synced, loaded).
    pub load_ms: f64,
    /// Baseline 1: writing and syncing as many bytes to a file in the agent's directory.
    pub raw_write_fsync_ms: f64,
    /// Baseline 2: the runtime loading the version's model from local disk.
    pub runtime_load_ms: f64,
    /// `load_ms / (raw_write_fsync_ms + runtime_load_ms)`; the target is at most 1.5.
    pub ratio: f64,
}

/// Registers a version of `size_bytes` (the example ONNX model plus a weights file of
/// seeded bytes), moves an endpoint's traffic to it, and times the agent's pull and load
/// beside writing the same bytes raw and loading the model alone. `client` must be an
/// admin's.
pub async fn model_load(
    client: &Client,
    size_bytes: u64,
    log: &dyn Fn(&str),
) -> Result<ModelLoadReport, ClientError> {
    use crate::agent::runtime::Runtime;
    use crate::agent::{builtin_runtimes, Agent, VersionState};
    use crate::proto::Stage;
    use std::io::Write;
    if size_bytes == 0 || size_bytes > 64 << 30 {
        return Err(ClientError::InvalidInput(format!(
            "--size-mib {}: use 1 to 65536",
            size_bytes >> 20
        )));
    }
    let dir = tempfile_dir("quiver-bench-load")?;
    let io = |what: &str, e: std::io::Error| ClientError::Verify(format!("{what}: {e}"));

    // Baseline 1: the same bytes written and synced where the agent keeps versions.
    let begun = Instant::now();
    {
        let path = dir.join("raw.bin");
        let mut file = std::fs::File::create(&path).map_err(|e| io("raw file", e))?;
        let mut reader = SeededReader::new(7, size_bytes);
        std::io::copy(&mut reader, &mut file).map_err(|e| io("raw write", e))?;
        file.flush().map_err(|e| io("raw flush", e))?;
        file.sync_all().map_err(|e| io("raw fsync", e))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("raw dir fsync", e))?;
        let _ = std::fs::remove_file(&path);
    }
    let raw_write_fsync_ms = begun.elapsed().as_secs_f64() * 1000.0;

    // Baseline 2: the runtime loading the model from local disk.
    let weights = [0.5f32, 0.25, 0.125];
    let onnx = crate::agent::onnx::example::linear_model(&weights, 0.0);
    let schema = crate::signature::SignatureJson::parse(
        &crate::agent::onnx::example::signature_json(weights.len()),
    )
    .and_then(|s| s.to_schema())
    .map_err(|e| ClientError::Verify(e.to_string()))?;
    let alone = dir.join("runtime-alone");
    std::fs::create_dir_all(&alone).map_err(|e| io("runtime dir", e))?;
    std::fs::write(alone.join("model.onnx"), &onnx).map_err(|e| io("model.onnx", e))?;
    let begun = Instant::now();
    crate::agent::onnx::OnnxRuntime
        .load(&alone, Some(&schema))
        .map_err(|e| ClientError::Verify(e.to_string()))?;
    let runtime_load_ms = begun.elapsed().as_secs_f64() * 1000.0;

    // The version: the model and `size_bytes` of weights.
    let stamp = format!("{}-{}", std::process::id(), unix_ms());
    let model = format!("bench-load-{stamp}");
    let endpoint = format!("bench-load-{}", unix_ms() % 1_000_000_000);
    client.create_model(bench_model(&model, "load")).await?;
    let small = register_onnx(client, &model, &weights).await?;
    client
        .set_stage(&format!("{model}/{small}"), Stage::Production, "bench")
        .await?;
    client
        .create_deployment(&endpoint, &format!("{model}/{small}"), "bench")
        .await?;
    log(&format!(
        "registering a version of {} MiB",
        size_bytes >> 20
    ));
    let mut header = bench_header(&model);
    header.signature = crate::signature::SignatureJson::parse(
        &crate::agent::onnx::example::signature_json(weights.len()),
    )
    .ok()
    .map(|s| s.to_proto());
    let files = vec![
        UploadFile {
            path: "model.onnx".into(),
            mode: 0o644,
            size_bytes: onnx.len() as u64,
            reader: Box::new(std::io::Cursor::new(onnx.clone())),
        },
        UploadFile {
            path: "weights.bin".into(),
            mode: 0o644,
            size_bytes,
            reader: Box::new(SeededReader::new(unix_ms(), size_bytes)),
        },
    ];
    let big = client.register_stream(header, files).await?.version;
    client
        .set_stage(&format!("{model}/{big}"), Stage::Production, "bench")
        .await?;

    let agent = Agent::start(
        bench_agent("bench-load", &endpoint, &dir.join("agent"), client),
        builtin_runtimes(),
    )
    .await
    .map_err(|e| ClientError::Verify(format!("starting the agent: {e:#}")))?;
    let first = agent.wait_ready(1, Duration::from_secs(60)).await;
    log(&format!(
        "moving {endpoint}'s traffic to the {} MiB version",
        size_bytes >> 20
    ));
    let moved = client
        .set_traffic(&endpoint, &[(big, 100)], &[], "bench")
        .await?;
    let ready = first
        && agent
            .wait_ready(moved.generation, Duration::from_secs(600))
            .await;
    let load_ms = match agent.status().versions.get(&big) {
        Some(VersionState::Ready { load_ms, .. }) if ready => *load_ms as f64,
        other => {
            agent.stop().await;
            let _ = std::fs::remove_dir_all(&dir);
            return Err(ClientError::Verify(format!(
                "the agent did not load the version within 10 minutes: {other:?}"
            )));
        }
    };
    agent.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ModelLoadReport {
        size_bytes,
        load_ms,
        raw_write_fsync_ms,
        runtime_load_ms,
        ratio: load_ms / (raw_write_fsync_ms + runtime_load_ms).max(1e-9),
    })
}

// ---------------------------------------------------------- agent overhead

#[derive(Clone, Debug, Serialize)]
pub struct AgentOverheadReport {
    pub requests: u32,
    /// Parsing the JSON body alone: what any server does with a request (the baseline).
    pub parse_us_p50: f64,
    pub parse_us_p99: f64,
    /// Parsing, validating against the version's signature (one float32 input of 128) and
    /// routing by the request key: the agent's own work per prediction, without the model.
    pub agent_us_p50: f64,
    pub agent_us_p99: f64,
    pub p99_ratio: f64,
}

/// Times, per request, the agent's own work on a prediction (parse, validate against the
/// signature, route) beside parsing alone, alternating, in this process (no node).
pub fn agent_overhead(requests: u32) -> Result<AgentOverheadReport, ClientError> {
    use crate::agent::Routing;
    use crate::proto::{Deployment, TrafficShare};
    use quiver_api::schema::{validate_request, Dtype, Field, Schema};
    if requests == 0 || requests > 10_000_000 {
        return Err(ClientError::InvalidInput(format!(
            "--requests {requests} is out of range: use 1 to 10000000"
        )));
    }
    let schema = Schema {
        inputs: vec![Field {
            name: "features".into(),
            dtype: Dtype::Float32,
            shape: vec![-1, 128],
            optional: false,
        }],
        outputs: Vec::new(),
    };
    let routing = Routing::from_deployment(&Deployment {
        endpoint: "bench".into(),
        split: vec![
            TrafficShare {
                version: 14,
                percent: 95,
            },
            TrafficShare {
                version: 15,
                percent: 5,
            },
        ],
        ..Default::default()
    })
    .map_err(|e| ClientError::Verify(e.to_string()))?;
    let mut bytes = SeededBytes::new(7);
    let bodies: Vec<Vec<u8>> = (0..64)
        .map(|_| {
            let mut raw = [0u8; 128];
            bytes.fill(&mut raw);
            let row: Vec<f32> = raw.iter().map(|b| f32::from(*b) / 255.0).collect();
            serde_json::to_vec(&serde_json::json!({"inputs": {"features": [row]}}))
                .unwrap_or_default()
        })
        .collect();
    let (mut parse, mut agent) = (Vec::new(), Vec::new());
    let mut routed = 0u64;
    for i in 0..requests as usize {
        let body = &bodies[i % bodies.len()];
        let begun = Instant::now();
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| ClientError::Verify(format!("bench body: {e}")))?;
        parse.push(begun.elapsed());
        std::hint::black_box(&value);
        let begun = Instant::now();
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| ClientError::Verify(format!("bench body: {e}")))?;
        let violations = validate_request(&schema, &value);
        let version = routing.route(&(i as u64).to_le_bytes());
        agent.push(begun.elapsed());
        if !violations.is_empty() {
            return Err(ClientError::Verify(format!(
                "a well-formed bench request was refused: {}",
                violations[0].message
            )));
        }
        routed += version;
    }
    std::hint::black_box(routed);
    let us = |d: &mut Vec<Duration>, p| percentile_ms(d, p) * 1000.0;
    let parse_us_p99 = us(&mut parse, 99.0);
    let agent_us_p99 = us(&mut agent, 99.0);
    Ok(AgentOverheadReport {
        requests,
        parse_us_p50: us(&mut parse, 50.0),
        parse_us_p99,
        agent_us_p50: us(&mut agent, 50.0),
        agent_us_p99,
        p99_ratio: agent_us_p99 / parse_us_p99.max(1e-9),
    })
}

async fn register_tiny(client: &Client, model: &str, seed: u32) -> Result<u64, ClientError> {
    let file = UploadFile {
        path: "tiny.bin".into(),
        mode: 0o644,
        size_bytes: TINY_FILE_BYTES,
        reader: Box::new(SeededReader::new(
            unix_ms() ^ u64::from(seed) << 32,
            TINY_FILE_BYTES,
        )),
    };
    let mut header = bench_header(model);
    if let Some(m) = header.metadata.as_mut() {
        m.metrics.insert("synthetic".into(), 0.9);
    }
    Ok(client.register_stream(header, vec![file]).await?.version)
}

/// Runs `operation` in a loop on every client until `duration` has passed.
/// Returns every latency, the phase's wall time, and the largest value an
/// operation returned. The first error ends the benchmark: a registry that
/// fails under load has no figure worth printing.
async fn run_phase<F, Fut>(
    clients: &[Client],
    duration: Duration,
    operation: F,
) -> Result<(Vec<Duration>, Duration, Option<u64>), ClientError>
where
    F: Fn(Client, u32, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<u64, ClientError>> + Send,
{
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    let mut tasks = Vec::with_capacity(clients.len());
    for (index, client) in clients.iter().enumerate() {
        let (client, operation) = (client.clone(), operation.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut largest = None;
            let mut iteration = 0u64;
            while tokio::time::Instant::now() < deadline {
                let begun = Instant::now();
                let value = operation(client.clone(), index as u32, iteration).await?;
                latencies.push(begun.elapsed());
                largest = largest.max(Some(value));
                iteration += 1;
            }
            Ok::<_, ClientError>((latencies, largest))
        }));
    }
    let mut latencies = Vec::new();
    let mut largest = None;
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok((mine, value))) => {
                latencies.extend(mine);
                largest = largest.max(value);
            }
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok((latencies, started.elapsed(), largest)),
    }
}

fn consistency_name(consistency: ReadConsistency) -> &'static str {
    match consistency {
        ReadConsistency::Linearizable => "linearizable",
        ReadConsistency::Stale => "stale",
    }
}

// ---------------------------------------------------------------- helpers

fn bench_model(name: &str, kind: &str) -> CreateModelRequest {
    CreateModelRequest {
        name: name.to_string(),
        namespace: "bench".into(),
        description: format!("created by `quiver bench {kind}`; safe to delete"),
        risk_tier: RiskTier::Low.into(),
        tags: [("quiver-bench".to_string(), kind.to_string())]
            .into_iter()
            .collect(),
    }
}

/// A header with every metadata field filled, so a node that requires
/// provenance accepts benchmark versions.
fn bench_header(model: &str) -> UploadHeader {
    let tensor = |name: &str, shape: Vec<i64>| TensorSpec {
        name: name.into(),
        dtype: "float32".into(),
        shape,
        optional: false,
    };
    UploadHeader {
        model: model.to_string(),
        signature: Some(Signature {
            inputs: vec![tensor("x", vec![-1, 1])],
            outputs: vec![tensor("y", vec![-1])],
        }),
        metadata: Some(VersionMetadata {
            data_snapshot_id: "bench-synthetic".into(),
            code_commit: "0000000".into(),
            pipeline_run_id: format!("bench-{}", std::process::id()),
            hyperparameters: [("generator".to_string(), "xorshift64".to_string())]
                .into_iter()
                .collect(),
            metrics: [("synthetic".to_string(), 1.0)].into_iter().collect(),
        }),
        tags: [("quiver-bench".to_string(), "true".to_string())]
            .into_iter()
            .collect(),
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ClientError> + Send + 'static,
) -> Result<T, ClientError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_bytes_do_not_depend_on_read_sizes() {
        let mut whole = vec![0u8; 1000];
        SeededBytes::new(7).fill(&mut whole);
        let mut pieces = vec![0u8; 1000];
        let mut bytes = SeededBytes::new(7);
        for range in [0..3, 3..4, 4..17, 17..512, 512..1000] {
            bytes.fill(&mut pieces[range]);
        }
        assert_eq!(whole, pieces);
        let mut other = vec![0u8; 1000];
        SeededBytes::new(8).fill(&mut other);
        assert_ne!(whole, other);
        // Not trivially compressible: many distinct byte values.
        let distinct: std::collections::BTreeSet<u8> = whole.iter().copied().collect();
        assert!(distinct.len() > 200, "{}", distinct.len());
    }

    #[test]
    fn seeded_reader_yields_exactly_its_size() {
        let mut out = Vec::new();
        SeededReader::new(1, 3_000_001)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len(), 3_000_001);
    }

    #[test]
    fn sizes_split_evenly_and_add_up() {
        assert_eq!(split_sizes(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(split_sizes(8, 1), vec![8]);
        assert_eq!(split_sizes(1 << 30, 4).iter().sum::<u64>(), 1 << 30);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&mut samples, 50.0), 50.0);
        assert_eq!(percentile_ms(&mut samples, 99.0), 99.0);
        assert_eq!(percentile_ms(&mut samples, 100.0), 100.0);
        assert_eq!(percentile_ms(&mut [Duration::from_millis(3)], 99.0), 3.0);
        assert_eq!(percentile_ms(&mut [], 50.0), 0.0);
    }

    #[test]
    fn throughput_is_megabytes_per_second() {
        assert_eq!(throughput_mb_per_s(5_000_000, Duration::from_secs(2)), 2.5);
        assert_eq!(throughput_mb_per_s(5, Duration::ZERO), 0.0);
    }

    #[test]
    fn baselines_run_at_toy_size_and_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let elapsed = raw_write(dir.path(), 3 * 1024 * 1024 + 5, 1).unwrap();
        assert!(elapsed > Duration::ZERO);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let (hashed, _) = hash_rate(1_000_000, 1);
        assert!(hashed >= 1_000_000);
    }

    #[test]
    fn ingest_options_are_checked() {
        let options = |size_bytes, files, scratch_dir: &Path| IngestOptions {
            size_bytes,
            files,
            scratch_dir: scratch_dir.to_path_buf(),
            seed: 0,
        };
        let dir = tempfile::tempdir().unwrap();
        assert!(check_ingest(&options(8, 4, dir.path())).is_ok());
        let error = check_ingest(&options(3, 4, dir.path())).unwrap_err();
        assert!(
            error.to_string().contains("smaller than --files 4"),
            "{error}"
        );
        assert!(check_ingest(&options(8, 0, dir.path())).is_err());
        let error = check_ingest(&options(8, 1, &dir.path().join("no"))).unwrap_err();
        assert!(error.to_string().contains("--scratch-dir"), "{error}");
    }

    #[test]
    fn ingest_rows_pair_each_figure_with_its_baseline() {
        let report = IngestReport {
            size_bytes: 1,
            files: 1,
            seed: 0,
            version: "m/1".into(),
            manifest_root: String::new(),
            raw_write_mb_per_s: 100.0,
            blake3_mb_per_s: 1000.0,
            upload_mb_per_s: 50.0,
            download_mb_per_s: 80.0,
            download_verify_only_mb_per_s: 500.0,
            upload_to_raw_write_ratio: 0.5,
            download_to_raw_write_ratio: 0.8,
            download_verify_only_to_blake3_ratio: 0.5,
        };
        let rows = report.rows();
        assert_eq!(
            rows[2],
            [
                "upload (register)".to_string(),
                "50.0 MB/s".into(),
                "raw write 100.0 MB/s".into(),
                "0.50".into()
            ]
        );
        assert_eq!(rows[0][3], "-");
    }
}
