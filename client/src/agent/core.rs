//! The agent's decisions, pure: given the endpoint's deployments as the registry sends them
//! and what the agent's I/O reports back (a version pulled and loaded, or failed), which
//! versions to prepare and drop, which version answers each request, what to report. The
//! `quiver agent` process drives it with real time, pulls and runtimes; the simulator drives
//! the same code with virtual time.
//!
//! Rules:
//! - **What is kept:** every version of the split and the shadows, plus the rollout's stable
//!   version and the endpoint's previous one, so a rollback is a routing change with nothing
//!   to pull or load.
//! - **Who answers:** the split's version for the request key's bucket; if that version is not
//!   ready yet, the ready version of the split with the largest share. Never a version outside
//!   the split in force: with none of the split ready the request is refused (503).
//! - **Stale news is ignored:** a deployment older than the one in force (a lower generation)
//!   changes nothing, so a reconnect that replays a change cannot move traffic back.
//! - **Counts** are per generation (see [`super::stats`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::routing::{Routing, RoutingError};
use super::stats::ServingStats;
use crate::proto::Deployment;

/// After a failed pull or load, the first pause before trying again (ms); doubles up to
/// [`RETRY_MS_MAX`].
pub const RETRY_MS_FIRST: i64 = 500;
/// Longest pause between tries of a version (ms).
pub const RETRY_MS_MAX: i64 = 30_000;

/// Where a version the agent keeps stands.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum VersionState {
    /// Being pulled and loaded (the agent's I/O is on it).
    Preparing { since_ms: i64, attempt: u32 },
    /// Loaded and answering.
    Ready { since_ms: i64, load_ms: i64 },
    /// The last try failed; tried again at `retry_at_ms`.
    Failed {
        error: String,
        attempts: u32,
        retry_at_ms: i64,
    },
}

/// Something the agent's I/O must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Pull the version (unless it is on local disk already) and load it; then call
    /// [`AgentCore::prepared`] or [`AgentCore::prepare_failed`].
    Prepare { version: u64 },
    /// Unload the version and remove its files.
    Drop { version: u64 },
}

/// What a deployment changed, for metrics and logs.
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    /// Older than or the same as the one in force: nothing changed.
    Stale { generation: u64 },
    Changed {
        generation: u64,
        /// From the registry's commit of the change to this agent routing by it (ms; clocks
        /// of one machine or synchronised ones).
        propagation_ms: i64,
        /// The change sent all traffic back to an older version (a rollback, by hand or
        /// automatic).
        rollback: bool,
        actions: Vec<Action>,
    },
}

/// Which version answers a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Serve {
        version: u64,
        generation: u64,
    },
    /// No deployment yet, or none of the split's versions is loaded.
    NotReady,
}

/// The agent's view of its endpoint.
#[derive(Debug)]
pub struct AgentCore {
    endpoint: String,
    deployment: Option<Deployment>,
    routing: Option<Routing>,
    /// The split in force, by share (largest first; ties: the newer version).
    by_share: Vec<(u64, u32)>,
    versions: BTreeMap<u64, VersionState>,
    /// When each kept version was first wanted (ms): where its load time starts.
    wanted_since: BTreeMap<u64, i64>,
    stats: ServingStats,
    /// `None`: the registry answers; `Some(ms)`: unreachable since then.
    offline_since_ms: Option<i64>,
}

/// The agent's state for `quiver agent status` and `GET /v1/status`.
#[derive(Clone, Debug, Serialize)]
pub struct AgentStatus {
    pub endpoint: String,
    pub model: String,
    pub generation: u64,
    /// The split in force, for people (`reco/14 95%, reco/15 5%`).
    pub traffic: String,
    pub split: Vec<(u64, u32)>,
    pub shadows: Vec<u64>,
    pub versions: BTreeMap<u64, VersionState>,
    pub registry_reachable: bool,
    pub offline_since_ms: Option<i64>,
}

impl AgentCore {
    pub fn new(endpoint: &str) -> AgentCore {
        AgentCore {
            endpoint: endpoint.to_string(),
            deployment: None,
            routing: None,
            by_share: Vec::new(),
            versions: BTreeMap::new(),
            wanted_since: BTreeMap::new(),
            stats: ServingStats::default(),
            offline_since_ms: None,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The deployment in force.
    pub fn deployment(&self) -> Option<&Deployment> {
        self.deployment.as_ref()
    }

    /// The generation routed by (0: none yet).
    pub fn generation(&self) -> u64 {
        self.routing.as_ref().map_or(0, |r| r.generation)
    }

    /// Takes `d` as the endpoint's deployment if it is newer than the one in force. A
    /// deployment of another endpoint, or one whose split cannot be trusted, is refused and
    /// changes nothing.
    pub fn on_deployment(&mut self, d: Deployment, now_ms: i64) -> Result<Applied, RoutingError> {
        if d.endpoint != self.endpoint {
            return Err(RoutingError::Endpoint {
                expected: self.endpoint.clone(),
                got: d.endpoint,
            });
        }
        if d.generation <= self.generation() {
            return Ok(Applied::Stale {
                generation: d.generation,
            });
        }
        let routing = Routing::from_deployment(&d)?;
        let rollback = self
            .routing
            .as_ref()
            .is_some_and(|old| is_rollback(old, &routing));
        let propagation_ms = now_ms.saturating_sub(d.updated_at_ms).max(0);
        let generation = d.generation;
        self.by_share = routing.split();
        self.by_share
            .sort_unstable_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
        self.stats.restart(generation);
        let wanted = wanted(&d, &routing);
        self.routing = Some(routing);
        self.deployment = Some(d);
        let mut actions = Vec::new();
        for &version in &wanted {
            self.wanted_since.entry(version).or_insert(now_ms);
            if let std::collections::btree_map::Entry::Vacant(e) = self.versions.entry(version) {
                e.insert(VersionState::Preparing {
                    since_ms: now_ms,
                    attempt: 1,
                });
                actions.push(Action::Prepare { version });
            }
        }
        let unwanted: Vec<u64> = self
            .versions
            .keys()
            .filter(|v| !wanted.contains(v))
            .copied()
            .collect();
        for version in unwanted {
            self.versions.remove(&version);
            self.wanted_since.remove(&version);
            actions.push(Action::Drop { version });
        }
        Ok(Applied::Changed {
            generation,
            propagation_ms,
            rollback,
            actions,
        })
    }

    /// `version` is pulled and loaded: it answers from now on. Returns its load time (ms),
    /// from when it was first wanted; `None` if it is no longer wanted (then drop it).
    pub fn prepared(&mut self, version: u64, now_ms: i64) -> Option<i64> {
        let since = *self.wanted_since.get(&version)?;
        let state = self.versions.get_mut(&version)?;
        let load_ms = now_ms.saturating_sub(since).max(0);
        *state = VersionState::Ready {
            since_ms: now_ms,
            load_ms,
        };
        Some(load_ms)
    }

    /// Pulling or loading `version` failed; it is tried again after a pause that doubles with
    /// each failure.
    pub fn prepare_failed(&mut self, version: u64, error: &str, now_ms: i64) {
        let Some(state) = self.versions.get_mut(&version) else {
            return;
        };
        let attempts = match state {
            VersionState::Preparing { attempt, .. } => *attempt,
            VersionState::Failed { attempts, .. } => *attempts,
            VersionState::Ready { .. } => return,
        };
        let pause = RETRY_MS_FIRST
            .saturating_mul(1i64 << attempts.saturating_sub(1).min(16))
            .min(RETRY_MS_MAX);
        *state = VersionState::Failed {
            error: error.to_string(),
            attempts,
            retry_at_ms: now_ms.saturating_add(pause),
        };
    }

    /// The failed versions whose pause is over, now being prepared again.
    pub fn due_retries(&mut self, now_ms: i64) -> Vec<Action> {
        let mut actions = Vec::new();
        for (&version, state) in &mut self.versions {
            if let VersionState::Failed {
                attempts,
                retry_at_ms,
                ..
            } = state
            {
                if *retry_at_ms <= now_ms {
                    *state = VersionState::Preparing {
                        since_ms: now_ms,
                        attempt: attempts.saturating_add(1),
                    };
                    actions.push(Action::Prepare { version });
                }
            }
        }
        actions
    }

    /// When the next failed version is due to be tried (ms).
    pub fn next_retry_ms(&self) -> Option<i64> {
        self.versions
            .values()
            .filter_map(|s| match s {
                VersionState::Failed { retry_at_ms, .. } => Some(*retry_at_ms),
                _ => None,
            })
            .min()
    }

    pub fn is_ready(&self, version: u64) -> bool {
        matches!(
            self.versions.get(&version),
            Some(VersionState::Ready { .. })
        )
    }

    /// Whether a deployment is in force and every version of its split is loaded.
    pub fn serves_whole_split(&self) -> bool {
        !self.by_share.is_empty() && self.by_share.iter().all(|(v, _)| self.is_ready(*v))
    }

    /// The versions loaded and answering.
    pub fn ready_versions(&self) -> Vec<u64> {
        self.versions
            .iter()
            .filter(|(_, s)| matches!(s, VersionState::Ready { .. }))
            .map(|(v, _)| *v)
            .collect()
    }

    /// Which version answers the request with `key`.
    pub fn route(&self, key: &[u8]) -> Route {
        let Some(routing) = &self.routing else {
            return Route::NotReady;
        };
        let generation = routing.generation;
        let first = routing.route(key);
        if self.is_ready(first) {
            return Route::Serve {
                version: first,
                generation,
            };
        }
        match self.by_share.iter().find(|(v, _)| self.is_ready(*v)) {
            Some(&(version, _)) => Route::Serve {
                version,
                generation,
            },
            None => Route::NotReady,
        }
    }

    /// The shadow versions ready to receive copies.
    pub fn shadows(&self) -> Vec<u64> {
        self.routing.as_ref().map_or_else(Vec::new, |r| {
            r.shadows
                .iter()
                .copied()
                .filter(|v| self.is_ready(*v))
                .collect()
        })
    }

    /// Counts an answer (or a shadow copy) of `version` for a request routed under
    /// `generation`.
    pub fn record(&mut self, generation: u64, version: u64, error: bool, latency_us: u64) {
        self.stats.record(generation, version, error, latency_us);
    }

    pub fn stats(&self) -> &ServingStats {
        &self.stats
    }

    /// The report to send, if anything changed since the last one.
    pub fn take_report(&mut self) -> Option<(u64, Vec<crate::proto::VersionServingStats>)> {
        self.stats.take_report()
    }

    /// The last report did not reach the registry: send the counts again next time.
    pub fn report_failed(&mut self) {
        self.stats.unreported();
    }

    /// Whether the registry answered the agent's last call.
    pub fn registry_reachable(&mut self, reachable: bool, now_ms: i64) {
        match (reachable, self.offline_since_ms) {
            (true, _) => self.offline_since_ms = None,
            (false, None) => self.offline_since_ms = Some(now_ms),
            (false, Some(_)) => {}
        }
    }

    /// `Some(since)` while the registry is unreachable: the agent serves what it has.
    pub fn offline_since_ms(&self) -> Option<i64> {
        self.offline_since_ms
    }

    pub fn status(&self) -> AgentStatus {
        let d = self.deployment.clone().unwrap_or_default();
        let mut split = self.by_share.clone();
        split.sort_unstable();
        AgentStatus {
            endpoint: self.endpoint.clone(),
            model: d.model,
            generation: d.generation,
            traffic: d.traffic,
            split,
            shadows: d.shadows,
            versions: self.versions.clone(),
            registry_reachable: self.offline_since_ms.is_none(),
            offline_since_ms: self.offline_since_ms,
        }
    }
}

/// The versions an agent keeps for `d`: its split and shadows, the rollout's stable version
/// and the endpoint's previous one.
pub fn wanted(d: &Deployment, routing: &Routing) -> BTreeSet<u64> {
    let mut all: BTreeSet<u64> = routing.versions().into_iter().collect();
    if d.stable != 0 {
        all.insert(d.stable);
    }
    if let Some(previous) = d.previous.filter(|v| *v != 0) {
        all.insert(previous);
    }
    all
}

/// A change that sends all traffic to one version older than a version the old split routed
/// to: a rollback (by hand, automatic, or a `deploy set` back).
fn is_rollback(old: &Routing, new: &Routing) -> bool {
    match new.split().as_slice() {
        [(version, 100)] => old.split().iter().any(|(v, _)| v > version),
        _ => false,
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
