//! The agent process around [`AgentCore`]: it learns its endpoint's deployments from the
//! registry (a watch, through the nearest member first, resumed on another when a node goes),
//! pulls the versions the core asks for from the nearest node (every chunk verified), loads
//! them with a [`Runtime`], serves predictions over HTTP (see [`super::http`]), and reports its
//! counts. The deployment in force and the pulled versions are kept under `--dir`, so an agent
//! restarted while the registry is unreachable serves what it had; it says so in its status
//! and metrics.
//!
//! Layout of `--dir`: `deployment.pb` (the deployment in force, protobuf), `<model>/<version>/`
//! (a version's files, renamed into place only once every chunk checked out) beside
//! `<model>/<version>.signature.json`, and `pulling/<version>/` (a download in progress: one cut
//! short, by a node going away or the agent stopping, resumes there with the chunks it lacks).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use prost::Message;
use quiver_api::schema::Schema;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::core::{Action, AgentCore, AgentStatus, Applied};
use super::metrics::{AgentMetrics, Snapshot};
use super::runtime::{LoadedModel, Runtime};
use crate::proto::{Deployment, ReadConsistency, WatchRequest};
use crate::sdk::{ClientTls, WatchItem, Watcher};
use crate::signature::SignatureJson;
use crate::{Client, ClientError};

/// The first pause before reconnecting to a registry that did not answer; doubles to
/// [`RECONNECT_PAUSE_MAX`].
const RECONNECT_PAUSE_MIN: Duration = Duration::from_millis(200);
const RECONNECT_PAUSE_MAX: Duration = Duration::from_secs(5);
/// A registry call the agent makes in the background gives up after this long.
const REGISTRY_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a pull waits for the agent to reach its first member before it fails (and is
/// tried again after the core's pause).
const MEMBERS_WAIT: Duration = Duration::from_secs(10);

/// How to reach the registry.
#[derive(Clone, Debug)]
pub struct Registry {
    /// Node API addresses (`https://127.0.0.1:7400`), tried in order to find the cluster.
    pub endpoints: Vec<String>,
    pub tls: ClientTls,
    /// A token with the approver role on the model's namespace (serving reports can roll a
    /// rollout back).
    pub token: Option<String>,
}

/// Switches that make the agent misbehave on purpose, for tests and drills.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Every prediction of these versions fails inside the "model" (a 500, counted as an
    /// error of the version).
    pub fail_versions: BTreeSet<u64>,
}

/// How an agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Its name in serving reports (unique per endpoint).
    pub name: String,
    /// The deployment endpoint it serves.
    pub endpoint: String,
    /// Where it keeps the deployment in force and its versions.
    pub dir: PathBuf,
    /// Its HTTP address.
    pub listen: SocketAddr,
    /// Its region and zone: it pulls from and watches through the nearest member.
    pub region: String,
    pub zone: String,
    /// How often it reports its counts (and checks that the registry answers).
    pub report_every: Duration,
    pub registry: Registry,
    pub faults: Faults,
}

/// A loaded version.
pub(super) struct Loaded {
    pub model: Arc<dyn LoadedModel>,
    pub schema: Option<Schema>,
}

/// What the agent's tasks share.
pub(super) struct Shared {
    pub config: AgentConfig,
    pub core: Mutex<AgentCore>,
    pub models: RwLock<BTreeMap<u64, Arc<Loaded>>>,
    pub runtimes: Vec<Arc<dyn Runtime>>,
    pub metrics: Arc<AgentMetrics>,
    /// The fault switches in force (from the config; [`Agent::set_faults`] changes them).
    pub faults: RwLock<Faults>,
    actions: mpsc::UnboundedSender<Action>,
    /// The clients of the cluster's members, nearest first (empty: not connected).
    members: tokio::sync::RwLock<Vec<Client>>,
    /// Wakes pulls waiting for the first members (an agent restarted with a kept deployment
    /// pulls what it lacks as soon as it reaches the registry).
    members_known: tokio::sync::Notify,
    /// Tells waiters (tests, `wait_generation`) that the routing or a version changed.
    pub changed: watch::Sender<u64>,
}

/// Wall-clock milliseconds: the registry stamps its changes with its own, so propagation is
/// measured against the same kind of clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Shared {
    pub fn lock_core(&self) -> std::sync::MutexGuard<'_, AgentCore> {
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn loaded(&self, version: u64) -> Option<Arc<Loaded>> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        models.get(&version).cloned()
    }

    pub fn snapshot(&self) -> Snapshot {
        let core = self.lock_core();
        let stats = core.stats();
        let error_rate_pct = stats
            .stats()
            .iter()
            .map(|s| {
                let rate = stats.version(s.version).map_or(0.0, |c| c.error_rate_pct());
                (s.version, rate)
            })
            .collect();
        Snapshot {
            generation: core.generation(),
            versions_loaded: core.ready_versions().len() as u64,
            registry_reachable: core.offline_since_ms().is_none(),
            error_rate_pct,
        }
    }

    /// Takes `d` if it is newer than the deployment in force; keeps it on disk. `kept`: read
    /// back from disk at start (its propagation is not measured).
    fn apply(&self, d: Deployment, kept: bool) {
        let encoded = d.encode_to_vec();
        let applied = self.lock_core().on_deployment(d, now_ms());
        match applied {
            Ok(Applied::Changed {
                generation,
                propagation_ms,
                rollback,
                actions,
            }) => {
                if !kept {
                    self.metrics.change_applied(propagation_ms, rollback);
                }
                tracing::info!(
                    endpoint = %self.config.endpoint, generation, propagation_ms, rollback,
                    "routing by a new deployment"
                );
                if let Err(e) = write_atomic(&self.config.dir, "deployment.pb", &encoded) {
                    tracing::warn!("could not keep the deployment on disk: {e:#}");
                }
                for action in actions {
                    let _ = self.actions.send(action);
                }
                self.changed.send_modify(|n| *n += 1);
            }
            Ok(Applied::Stale { .. }) => {}
            Err(e) => tracing::warn!("deployment refused: {e}"),
        }
    }

    fn model_name(&self) -> String {
        self.lock_core()
            .deployment()
            .map(|d| d.model.clone())
            .unwrap_or_default()
    }
}

/// A running agent.
pub struct Agent {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Starts an agent: its HTTP server on `config.listen`, then the work in the background.
    /// The deployment kept in `config.dir` (if any) is served at once, registry or not.
    pub async fn start(
        config: AgentConfig,
        runtimes: Vec<Arc<dyn Runtime>>,
    ) -> anyhow::Result<Agent> {
        if config.endpoint.is_empty() {
            anyhow::bail!("the agent needs an endpoint to serve (quiver agent ENDPOINT)");
        }
        if config.registry.endpoints.is_empty() {
            anyhow::bail!("the agent needs at least one node to reach the registry (--endpoint)");
        }
        std::fs::create_dir_all(&config.dir)
            .with_context(|| format!("creating the agent's directory {}", config.dir.display()))?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let (actions, action_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            core: Mutex::new(AgentCore::new(&config.endpoint)),
            models: RwLock::new(BTreeMap::new()),
            runtimes,
            metrics: AgentMetrics::new(&config.endpoint),
            faults: RwLock::new(config.faults.clone()),
            actions,
            members: tokio::sync::RwLock::new(Vec::new()),
            members_known: tokio::sync::Notify::new(),
            changed: watch::channel(0).0,
            config,
        });
        // Unreachable until the registry first answers: a status never claims a contact
        // that has not happened.
        shared.lock_core().registry_reachable(false, now_ms());
        let (stop, stopped) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(super::http::serve(
            Arc::clone(&shared),
            listener,
            stopped.clone(),
        ))];
        tasks.push(tokio::spawn(prepare_loop(Arc::clone(&shared), action_rx)));
        if let Some(kept) = read_kept_deployment(&shared.config.dir) {
            shared.apply(kept, true);
        }
        tasks.push(tokio::spawn(registry_loop(
            Arc::clone(&shared),
            stopped.clone(),
        )));
        tasks.push(tokio::spawn(report_loop(Arc::clone(&shared), stopped)));
        Ok(Agent {
            shared,
            addr,
            stop,
            tasks,
        })
    }

    /// The HTTP address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn status(&self) -> AgentStatus {
        self.shared.lock_core().status()
    }

    /// Waits until the agent routes by `generation` or later with every version of the split
    /// loaded, or `timeout` passes; returns whether it does.
    pub async fn wait_ready(&self, generation: u64, timeout: Duration) -> bool {
        let mut changed = self.shared.changed.subscribe();
        let ready = || {
            let core = self.shared.lock_core();
            core.generation() >= generation && core.serves_whole_split()
        };
        tokio::time::timeout(timeout, async {
            while !ready() {
                if changed.changed().await.is_err() {
                    return false;
                }
            }
            true
        })
        .await
        .unwrap_or(false)
    }

    /// Waits until the agent routes by `generation` or later, or `timeout` passes; returns
    /// when it saw it (`None`: it did not).
    pub async fn wait_generation(
        &self,
        generation: u64,
        timeout: Duration,
    ) -> Option<std::time::Instant> {
        let mut changed = self.shared.changed.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                if self.shared.lock_core().generation() >= generation {
                    return Some(std::time::Instant::now());
                }
                changed.changed().await.ok()?;
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Whether every version of the split in force is loaded.
    pub fn serves_all_of_split(&self) -> bool {
        self.shared.lock_core().serves_whole_split()
    }

    /// Changes the fault switches (drills and tests).
    pub fn set_faults(&self, faults: Faults) {
        *self
            .shared
            .faults
            .write()
            .unwrap_or_else(|p| p.into_inner()) = faults;
    }

    /// The agent's metrics as a scrape would show them.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render(&self.shared.snapshot())
    }

    /// Stops serving and every background task.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }

    /// Runs until Ctrl-C (the `quiver agent` command).
    pub async fn run_until_interrupted(self) -> anyhow::Result<()> {
        tokio::signal::ctrl_c().await?;
        self.stop().await;
        Ok(())
    }
}

/// The deployment kept in `dir`, if one is there and decodes.
fn read_kept_deployment(dir: &Path) -> Option<Deployment> {
    let bytes = std::fs::read(dir.join("deployment.pb")).ok()?;
    match Deployment::decode(bytes.as_slice()) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!("ignoring the kept deployment: {e}");
            None
        }
    }
}

/// Writes `name` in `dir` through a temporary file, synced and renamed.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Connects to the cluster: the members' clients, nearest first.
async fn connect(
    registry: &Registry,
    region: &str,
    zone: &str,
) -> Result<Vec<Client>, ClientError> {
    let mut last = None;
    for endpoint in &registry.endpoints {
        let seed = match Client::connect_with(endpoint, registry.tls.clone()).await {
            Ok(c) => c.with_token(registry.token.clone()),
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let (nearest, candidates) = seed.nearest(region, zone).await?;
        let mut members = vec![nearest.clone()];
        let mut ordered = candidates;
        ordered.sort_by_key(|c| (c.rtt.is_none(), c.region != region, c.rtt));
        for c in ordered.iter().filter(|c| c.rtt.is_some()) {
            if members.iter().any(|m| m.endpoint().ends_with(&c.api_addr)) {
                continue;
            }
            if let Ok(client) = nearest.connect_to(&c.api_addr).await {
                members.push(client);
            }
        }
        return Ok(members);
    }
    Err(last.unwrap_or_else(|| ClientError::InvalidInput("no registry endpoint".into())))
}

/// Reads the endpoint's deployment from the first member that answers.
async fn read_deployment(members: &[Client], endpoint: &str) -> Result<Deployment, ClientError> {
    let mut last = None;
    for client in members {
        match tokio::time::timeout(
            REGISTRY_CALL_TIMEOUT,
            client.get_deployment(endpoint, ReadConsistency::Linearizable),
        )
        .await
        {
            Ok(Ok(d)) => return Ok(d),
            Ok(Err(e)) if e.code() == Some(tonic::Code::NotFound) => return Err(e),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(ClientError::Verify(format!(
                    "{} did not answer",
                    client.endpoint()
                )))
            }
        }
    }
    Err(last.unwrap_or_else(|| ClientError::InvalidInput("no member to read from".into())))
}

/// Finds the cluster, reads the deployment, and follows it by watch; starts over whenever
/// that fails.
async fn registry_loop(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let config = &shared.config;
    let mut pause = RECONNECT_PAUSE_MIN;
    loop {
        let attempt = async {
            let members = connect(&config.registry, &config.region, &config.zone).await?;
            *shared.members.write().await = members.clone();
            shared.members_known.notify_waiters();
            let mut watcher = Watcher::new(
                members.clone(),
                WatchRequest {
                    endpoint: config.endpoint.clone(),
                    ..Default::default()
                },
            )?;
            // The first batch says where the watch starts; reading after it misses nothing.
            watcher.next().await?;
            shared.apply(read_deployment(&members, &config.endpoint).await?, false);
            shared.lock_core().registry_reachable(true, now_ms());
            loop {
                let reread = match watcher.next().await? {
                    WatchItem::Batch(batch) => {
                        let generation = shared.lock_core().generation();
                        batch
                            .events
                            .iter()
                            .any(|e| e.kind == "deployment" && e.generation > generation)
                    }
                    WatchItem::Behind(_) | WatchItem::Resumed { .. } => true,
                };
                if reread {
                    shared.apply(read_deployment(&members, &config.endpoint).await?, false);
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), ClientError>(())
        };
        tokio::select! {
            result = attempt => {
                if let Err(e) = result {
                    tracing::warn!(endpoint = %config.endpoint, "registry: {e}; trying again in {pause:?}");
                    if e.code() != Some(tonic::Code::NotFound) {
                        shared.lock_core().registry_reachable(false, now_ms());
                    }
                }
            }
            _ = stopped.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopped.changed() => return,
        }
        pause = (pause * 2).min(RECONNECT_PAUSE_MAX);
    }
}

/// Reports the counts every `report_every` (or, with nothing new, checks that the registry
/// answers), and starts the retries that are due.
async fn report_loop(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(shared.config.report_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        for action in shared.lock_core().due_retries(now_ms()) {
            let _ = shared.actions.send(action);
        }
        let members = shared.members.read().await.clone();
        let Some(first) = members.first() else {
            continue;
        };
        let report = shared.lock_core().take_report();
        let answered = match report {
            Some((generation, stats)) => {
                let sent = tokio::time::timeout(
                    REGISTRY_CALL_TIMEOUT,
                    first.report_serving(
                        &shared.config.endpoint,
                        &shared.config.name,
                        generation,
                        stats,
                    ),
                )
                .await;
                match sent {
                    Ok(Ok(response)) => {
                        if let Some(d) = response.deployment {
                            shared.apply(d, false);
                        }
                        true
                    }
                    Ok(Err(e)) => {
                        tracing::warn!("serving report refused: {e}");
                        shared.lock_core().report_failed();
                        // A refusal is an answer; a node that is down is not.
                        e.code().is_some_and(|c| c != tonic::Code::Unavailable)
                    }
                    Err(_) => {
                        shared.lock_core().report_failed();
                        false
                    }
                }
            }
            None => matches!(
                tokio::time::timeout(REGISTRY_CALL_TIMEOUT, first.node_status()).await,
                Ok(Ok(_))
            ),
        };
        shared.lock_core().registry_reachable(answered, now_ms());
    }
}

/// Carries out the core's actions: pulls and loads (a few at a time), drops.
async fn prepare_loop(shared: Arc<Shared>, mut actions: mpsc::UnboundedReceiver<Action>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(2));
    while let Some(action) = actions.recv().await {
        match action {
            Action::Prepare { version } => {
                let shared = Arc::clone(&shared);
                let limit = Arc::clone(&limit);
                tokio::spawn(async move {
                    let _permit = limit.acquire().await;
                    let model = shared.model_name();
                    match prepare(&shared, &model, version).await {
                        Ok(loaded) => {
                            let load_ms = shared.lock_core().prepared(version, now_ms());
                            match load_ms {
                                Some(ms) => {
                                    shared
                                        .models
                                        .write()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .insert(version, Arc::new(loaded));
                                    shared.metrics.model_loaded(ms);
                                    tracing::info!(%model, version, load_ms = ms, "version ready");
                                }
                                None => remove_version(&shared, &model, version),
                            }
                        }
                        Err(e) => {
                            tracing::warn!(%model, version, "preparing the version failed: {e:#}");
                            shared
                                .lock_core()
                                .prepare_failed(version, &format!("{e:#}"), now_ms());
                        }
                    }
                    shared.changed.send_modify(|n| *n += 1);
                });
            }
            Action::Drop { version } => {
                shared
                    .models
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&version);
                let model = shared.model_name();
                remove_version(&shared, &model, version);
            }
        }
    }
}

/// Where `model/version` lives under `dir`. A model name is one path component there only
/// when it is plainly one (letters, digits, `.`, `_`, `-`, not `.` or `..`); any other name is
/// replaced by its hash, so no name can reach outside `dir`.
fn version_dir(dir: &Path, model: &str, version: u64) -> PathBuf {
    let plain = !model.is_empty()
        && model != "."
        && model != ".."
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    let component = match plain {
        true => model.to_string(),
        false => format!("model-{}", &blake3::hash(model.as_bytes()).to_hex()[..16]),
    };
    dir.join(component).join(version.to_string())
}

fn remove_version(shared: &Shared, model: &str, version: u64) {
    let dir = version_dir(&shared.config.dir, model, version);
    let _ = std::fs::remove_dir_all(&dir);
    let pulling = shared.config.dir.join("pulling").join(version.to_string());
    let _ = std::fs::remove_dir_all(&pulling);
    let _ = std::fs::remove_file(dir.with_extension("signature.json"));
}

/// Pulls `model/version` (unless it is on disk already) and loads it.
async fn prepare(shared: &Shared, model: &str, version: u64) -> anyhow::Result<Loaded> {
    if model.is_empty() {
        anyhow::bail!("no deployment names the model");
    }
    let dir = version_dir(&shared.config.dir, model, version);
    let signature_path = dir.with_extension("signature.json");
    if !dir.is_dir() {
        pull(shared, model, version, &dir, &signature_path).await?;
    }
    let schema = match std::fs::read_to_string(&signature_path) {
        Ok(text) => {
            let signature: SignatureJson = serde_json::from_str(&text)
                .with_context(|| format!("reading {}", signature_path.display()))?;
            Some(signature.to_schema()?)
        }
        Err(_) => None,
    };
    let runtime = shared
        .runtimes
        .iter()
        .find(|r| r.accepts(&dir))
        .cloned()
        .with_context(|| {
            let names: Vec<&str> = shared.runtimes.iter().map(|r| r.name()).collect();
            format!(
                "no runtime of this agent ({}) accepts {model}/{version}'s files (an ONNX \
                 version holds model.onnx at its top)",
                names.join(", ")
            )
        })?;
    let loaded = tokio::task::spawn_blocking({
        let schema = schema.clone();
        move || runtime.load(&dir, schema.as_ref())
    })
    .await??;
    Ok(Loaded {
        model: loaded,
        schema,
    })
}

/// Downloads `model/version` from the nearest member that has it into `pulling/`, then moves
/// it into place.
async fn pull(
    shared: &Shared,
    model: &str,
    version: u64,
    dir: &Path,
    signature_path: &Path,
) -> anyhow::Result<()> {
    let members = loop {
        let known = shared.members_known.notified();
        tokio::pin!(known);
        known.as_mut().enable();
        let members = shared.members.read().await.clone();
        if !members.is_empty() {
            break members;
        }
        if tokio::time::timeout(MEMBERS_WAIT, known).await.is_err() {
            anyhow::bail!(
                "no member of the registry answered within {}s and {model}/{version} is not on \
                 local disk: it is pulled once the agent reaches one",
                MEMBERS_WAIT.as_secs()
            );
        }
    };
    let pulling = shared.config.dir.join("pulling").join(version.to_string());
    let reference = format!("{model}/{version}");
    let mut last = None;
    for client in &members {
        // What an earlier attempt (through any member: the version is the same) verified
        // stays, and the download resumes after it.
        std::fs::create_dir_all(&pulling)?;
        // The first progress report says what an earlier attempt left verified.
        let held = OnceLock::new();
        let pulled = client
            .download_version(&reference, &pulling, &|done, total| {
                if held.set(done).is_ok() && done > 0 {
                    tracing::info!(
                        %reference,
                        node = client.endpoint(),
                        held_bytes = done,
                        total_bytes = total,
                        "resuming an interrupted pull: only the chunks not yet here are fetched"
                    );
                }
            })
            .await;
        match pulled {
            Ok(summary) => {
                let held = held
                    .get()
                    .copied()
                    .unwrap_or(0)
                    .min(summary.total_size_bytes);
                shared.metrics.pulled(summary.total_size_bytes - held);
                if let Some(signature) = summary.version.signature.as_ref() {
                    let json = serde_json::to_vec(&SignatureJson::from_proto(signature))?;
                    let parent = signature_path.parent().unwrap_or(Path::new("."));
                    std::fs::create_dir_all(parent)?;
                    let name = signature_path
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy();
                    write_atomic(parent, &name, &json)?;
                }
                std::fs::rename(&pulling, dir)
                    .with_context(|| format!("moving {reference} into {}", dir.display()))?;
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(%reference, node = client.endpoint(), "pull failed: {e}");
                last = Some(e);
            }
        }
    }
    Err(last.map_or_else(
        || anyhow::anyhow!("no member to pull from"),
        anyhow::Error::from,
    ))
}
