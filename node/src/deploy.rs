//! Deployment rules, pure (issue 15): an endpoint's traffic split between versions of one model,
//! its shadow versions, and the rollout plan that moves traffic to a new version step by step.
//! The state stores deployments and their history (`state/apply/deploy.rs`,
//! `state/query/deploy.rs`); nothing here does I/O.
//!
//! - A split gives each version a whole percentage; the shares sum to 100. Shadows receive
//!   copies of requests whose answers are logged and compared, never returned.
//! - Which versions may receive traffic (`traffic_allowed`): a version taking all of it must be
//!   in Production; a canary share or a shadow may be Staging or Production. A rollback is
//!   exempt: it returns traffic to the version that served before.
//! - A rollout plan (`shadow 10m → 5% 30m → 25% 30m → 100%`) starts from the endpoint's stable
//!   version (which holds all traffic) and moves one step at a time; each step's split follows
//!   from the stable version, the target and the step alone (`Step::traffic`), so a step applied
//!   twice or by a new leader gives the same split.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::{stage_label, DomainError, Stage};

/// Most versions one split names.
pub const SPLIT_VERSIONS_MAX: usize = 8;
/// Most shadow versions of one endpoint.
pub const SHADOWS_MAX: usize = 4;
/// Most steps of one rollout plan.
pub const PLAN_STEPS_MAX: usize = 16;
/// Longest step (30 days).
pub const STEP_DURATION_MS_MAX: u64 = 30 * 24 * 3600 * 1000;
/// Highest latency bound a plan may give (one hour).
pub const P99_BOUND_MS_MAX: f64 = 3_600_000.0;
/// Most deployment endpoints in a registry.
pub const DEPLOYMENTS_MAX: u64 = 4096;
/// History records kept per endpoint; the oldest go first.
pub const DEPLOYMENT_HISTORY_KEPT: u64 = 1000;

/// A version's share of an endpoint's traffic, in whole percent.
pub type Split = BTreeMap<u64, u8>;

/// One step of a rollout plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// 0: shadow (the target receives copies only); 1..=100: the target's share.
    pub percent: u8,
    /// How long the step must hold within bounds before the next (0 for the last).
    pub duration_ms: u64,
}

impl Step {
    /// The split and shadows of this step, from the stable version to `target`.
    pub fn traffic(&self, stable: u64, target: u64) -> (Split, BTreeSet<u64>) {
        match self.percent {
            0 => (Split::from([(stable, 100)]), BTreeSet::from([target])),
            100 => (Split::from([(target, 100)]), BTreeSet::new()),
            p => (
                Split::from([(stable, 100 - p), (target, p)]),
                BTreeSet::new(),
            ),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.percent {
            0 => write!(f, "shadow")?,
            p => write!(f, "{p}%")?,
        }
        if self.duration_ms > 0 {
            write!(f, " {}", duration_text(self.duration_ms))?;
        }
        Ok(())
    }
}

/// `90s`, `10m`, `2h`: the largest whole unit.
pub fn duration_text(ms: u64) -> String {
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// What a rollout watches while a step holds: beyond either, the step's reports roll it back.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// Highest error rate of the target's requests, in percent.
    pub error_rate_pct_max: f64,
    /// Highest p99 latency of the target's requests, in milliseconds.
    pub p99_ms_max: f64,
    /// Requests the target must have answered (or, in a shadow step, received copies of) in
    /// the step before the controller moves on; 0: the step's duration alone.
    #[serde(default)]
    pub min_requests: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            error_rate_pct_max: 1.0,
            p99_ms_max: 500.0,
            min_requests: 0,
        }
    }
}

/// Most versions one serving report covers.
pub const REPORT_VERSIONS_MAX: usize = 16;
/// Most agents whose latest report an endpoint keeps.
pub const AGENTS_PER_ENDPOINT_MAX: u64 = 1024;

/// What an agent served of one version since the endpoint's generation began.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionStats {
    pub version: u64,
    /// Requests answered (or, for a shadow, copies received).
    pub requests: u64,
    /// Of those, the ones that failed.
    pub errors: u64,
    /// p99 latency of those requests (ms).
    pub p99_ms: f64,
}

/// An agent's latest report for an endpoint: its counts since the generation it routes by.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    pub agent: String,
    /// The endpoint's generation the agent routes by (counts restart when it changes).
    pub generation: u64,
    pub at_ms: i64,
    pub stats: Vec<VersionStats>,
}

/// Checks a report's fields: at most `REPORT_VERSIONS_MAX` versions, each once and ≥ 1,
/// errors ≤ requests, a finite p99 ≥ 0.
pub fn check_report(generation: u64, stats: &[VersionStats]) -> Result<(), DomainError> {
    let invalid = |m: String| Err(DomainError::invalid("stats", m));
    if generation == 0 {
        return Err(DomainError::invalid(
            "generation",
            "is 0; an endpoint's generations start at 1 (its status shows the current one)",
        ));
    }
    if stats.len() > REPORT_VERSIONS_MAX {
        return invalid(format!(
            "names {} versions; at most {REPORT_VERSIONS_MAX}",
            stats.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for s in stats {
        if s.version == 0 || !seen.insert(s.version) {
            return invalid(format!("version {} is 0 or named twice", s.version));
        }
        if s.errors > s.requests {
            return invalid(format!(
                "version {} has {} errors in {} requests",
                s.version, s.errors, s.requests
            ));
        }
        if !s.p99_ms.is_finite() || s.p99_ms < 0.0 {
            return invalid(format!(
                "version {} has p99 {} ms; a latency is a finite number ≥ 0",
                s.version, s.p99_ms
            ));
        }
    }
    Ok(())
}

/// What the agents reporting `generation` saw of `version`, together: (requests, errors, the
/// largest p99).
pub fn aggregate<'a>(
    reports: impl IntoIterator<Item = &'a AgentReport>,
    generation: u64,
    version: u64,
) -> (u64, u64, f64) {
    let mut total = (0u64, 0u64, 0f64);
    for r in reports.into_iter().filter(|r| r.generation == generation) {
        for s in r.stats.iter().filter(|s| s.version == version) {
            total.0 = total.0.saturating_add(s.requests);
            total.1 = total.1.saturating_add(s.errors);
            total.2 = total.2.max(s.p99_ms);
        }
    }
    total
}

/// Why the rollout's target is out of its bounds, if it is: its error rate or its p99 over
/// the step's reports.
pub fn breach(rollout: &Rollout, requests: u64, errors: u64, p99_ms: f64) -> Option<String> {
    let b = &rollout.bounds;
    if requests > 0 {
        let rate = errors as f64 * 100.0 / requests as f64;
        if rate > b.error_rate_pct_max {
            return Some(format!(
                "error rate {rate:.2}% > {}% ({errors} of {requests} requests)",
                b.error_rate_pct_max
            ));
        }
        if p99_ms > b.p99_ms_max {
            return Some(format!("p99 {p99_ms:.1} ms > {} ms", b.p99_ms_max));
        }
    }
    None
}

/// A rollout in progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub target: u64,
    pub plan: Vec<Step>,
    /// The step in force (an index into `plan`).
    pub step: usize,
    /// When the step in force began (ms).
    pub step_started_ms: i64,
    pub paused: bool,
    pub bounds: Bounds,
}

/// An endpoint: where a model's versions serve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub endpoint: String,
    pub model: String,
    /// The model's namespace (whose roles govern the endpoint).
    pub namespace: String,
    pub split: Split,
    pub shadows: BTreeSet<u64>,
    /// The version a rollback routes all traffic to: the one that held all of it before the
    /// rollout in progress, or the last one to take all of it.
    pub stable: u64,
    /// The version that held all traffic before `stable` did: where a rollback goes when no
    /// rollout is in progress.
    pub previous: Option<u64>,
    pub rollout: Option<Rollout>,
    /// 1 at creation, one more per change.
    pub generation: u64,
    pub created_by: String,
    pub created_at_ms: i64,
    pub updated_by: String,
    pub updated_at_ms: i64,
}

impl Deployment {
    /// Every version receiving requests (split or shadow).
    pub fn versions(&self) -> BTreeSet<u64> {
        self.split.keys().chain(&self.shadows).copied().collect()
    }

    /// `version` becomes the stable version; the one it replaces is where a later rollback goes.
    pub fn make_stable(&mut self, version: u64) {
        self.previous = Some(self.stable);
        self.stable = version;
    }

    /// All traffic to the stable version, no shadows, no rollout: what a rollback leaves.
    pub fn route_all_to_stable(&mut self) {
        self.rollout = None;
        self.split = Split::from([(self.stable, 100)]);
        self.shadows = BTreeSet::new();
    }

    /// `reco/14 95%, reco/15 5%; shadow reco/16`.
    pub fn describe_traffic(&self) -> String {
        describe_traffic(&self.model, &self.split, &self.shadows)
    }
}

pub fn describe_traffic(model: &str, split: &Split, shadows: &BTreeSet<u64>) -> String {
    let mut text: Vec<String> = split
        .iter()
        .map(|(v, p)| format!("{model}/{v} {p}%"))
        .collect();
    if !shadows.is_empty() {
        let s: Vec<String> = shadows.iter().map(|v| format!("{model}/{v}")).collect();
        text.push(format!("shadow {}", s.join(", ")));
    }
    text.join(", ")
}

/// What a change to an endpoint was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Create,
    Set,
    RolloutStart,
    RolloutStep,
    RolloutComplete,
    Pause,
    Resume,
    Rollback,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Create => "create",
            ChangeKind::Set => "set",
            ChangeKind::RolloutStart => "rollout_start",
            ChangeKind::RolloutStep => "rollout_step",
            ChangeKind::RolloutComplete => "rollout_complete",
            ChangeKind::Pause => "pause",
            ChangeKind::Resume => "resume",
            ChangeKind::Rollback => "rollback",
        }
    }
}

/// One change in an endpoint's history: who, why, when, and the traffic after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// 1, 2, 3, … per endpoint (its generation after the change).
    pub generation: u64,
    pub kind: ChangeKind,
    pub principal: String,
    pub at_ms: i64,
    pub reason: String,
    pub split: Split,
    pub shadows: BTreeSet<u64>,
}

/// Checks a split and shadows: 1 to `SPLIT_VERSIONS_MAX` versions, each ≥ 1, shares 1..=100
/// summing to 100; at most `SHADOWS_MAX` shadows, none also in the split.
pub fn check_traffic(split: &[(u64, u32)], shadows: &[u64]) -> Result<(), DomainError> {
    let invalid = |field: &str, m: String| Err(DomainError::invalid(field, m));
    if split.is_empty() {
        return invalid(
            "split",
            "is empty: give each version its share, e.g. 14=95,15=5".into(),
        );
    }
    if split.len() > SPLIT_VERSIONS_MAX {
        return invalid(
            "split",
            format!(
                "names {} versions; at most {SPLIT_VERSIONS_MAX}",
                split.len()
            ),
        );
    }
    let mut seen = BTreeSet::new();
    let mut total = 0u64;
    for &(version, share) in split {
        if version == 0 {
            return invalid(
                "split",
                "version 0 does not exist; versions start at 1".into(),
            );
        }
        if !(1..=100).contains(&share) {
            return invalid(
                "split",
                format!("version {version} has share {share}; a share is 1 to 100 percent"),
            );
        }
        if !seen.insert(version) {
            return invalid("split", format!("version {version} is named twice"));
        }
        total += u64::from(share);
    }
    if total != 100 {
        return invalid(
            "split",
            format!("the shares sum to {total}; they must sum to 100"),
        );
    }
    if shadows.len() > SHADOWS_MAX {
        return invalid(
            "shadows",
            format!("names {} versions; at most {SHADOWS_MAX}", shadows.len()),
        );
    }
    let mut shadowed = BTreeSet::new();
    for &version in shadows {
        if version == 0 {
            return invalid(
                "shadows",
                "version 0 does not exist; versions start at 1".into(),
            );
        }
        if seen.contains(&version) {
            return invalid(
                "shadows",
                format!("version {version} is in the split already; a shadow receives copies"),
            );
        }
        if !shadowed.insert(version) {
            return invalid("shadows", format!("version {version} is named twice"));
        }
    }
    Ok(())
}

/// Checks a rollout plan: 1 to `PLAN_STEPS_MAX` steps; a shadow step only first; shares
/// increasing; the last step 100% (its duration ignored); every other step's duration at most
/// `STEP_DURATION_MS_MAX`. And its bounds: finite, an error rate 0..=100 %, a p99 above 0 and
/// at most `P99_BOUND_MS_MAX`.
pub fn check_plan(plan: &[Step], bounds: &Bounds) -> Result<(), DomainError> {
    let invalid = |m: String| Err(DomainError::invalid("plan", m));
    if plan.is_empty() {
        return invalid("is empty: e.g. shadow:10m,5%:30m,25%:30m,100%".into());
    }
    if plan.len() > PLAN_STEPS_MAX {
        return invalid(format!(
            "has {} steps; at most {PLAN_STEPS_MAX}",
            plan.len()
        ));
    }
    let mut last_percent = None::<u8>;
    for (i, step) in plan.iter().enumerate() {
        if step.percent > 100 {
            return invalid(format!(
                "step {} gives {}%; at most 100",
                i + 1,
                step.percent
            ));
        }
        if step.percent == 0 && i > 0 {
            return invalid(format!(
                "step {} is a shadow step; only the first step may be",
                i + 1
            ));
        }
        if let Some(last) = last_percent {
            if step.percent <= last {
                return invalid(format!(
                    "step {} gives {}%, not more than the step before ({last}%)",
                    i + 1,
                    step.percent
                ));
            }
        }
        last_percent = Some(step.percent);
        let is_last = i + 1 == plan.len();
        if !is_last && step.duration_ms > STEP_DURATION_MS_MAX {
            return invalid(format!(
                "step {} lasts {}; at most {}",
                i + 1,
                duration_text(step.duration_ms),
                duration_text(STEP_DURATION_MS_MAX)
            ));
        }
        if is_last && step.percent != 100 {
            return invalid(format!(
                "ends at {}; the last step must be 100%",
                if step.percent == 0 {
                    "shadow".to_string()
                } else {
                    format!("{}%", step.percent)
                }
            ));
        }
    }
    let b = bounds;
    if !b.error_rate_pct_max.is_finite() || !(0.0..=100.0).contains(&b.error_rate_pct_max) {
        return Err(DomainError::invalid(
            "bounds.error_rate_pct_max",
            format!(
                "is {}; an error rate bound is 0 to 100 percent",
                b.error_rate_pct_max
            ),
        ));
    }
    if !b.p99_ms_max.is_finite() || b.p99_ms_max <= 0.0 || b.p99_ms_max > P99_BOUND_MS_MAX {
        return Err(DomainError::invalid(
            "bounds.p99_ms_max",
            format!(
                "is {}; a latency bound is above 0 and at most {P99_BOUND_MS_MAX} ms",
                b.p99_ms_max
            ),
        ));
    }
    Ok(())
}

/// Whether a version in `stage` may receive `share` percent of traffic (0: a shadow): all of
/// it only in Production; a canary share or a shadow in Staging or Production.
pub fn traffic_allowed(
    model: &str,
    number: u64,
    stage: Stage,
    share: u8,
) -> Result<(), DomainError> {
    let allowed = match stage {
        Stage::Production => true,
        Stage::Staging => share < 100,
        Stage::Experimental | Stage::Archived => false,
    };
    if allowed {
        return Ok(());
    }
    let what = match share {
        0 => "a shadow's copies".to_string(),
        100 => "all traffic".to_string(),
        p => format!("{p}% of traffic"),
    };
    let needs = if share == 100 {
        "Production"
    } else {
        "Staging or Production"
    };
    Err(DomainError::NotServable {
        model: model.into(),
        number,
        stage: stage_label(stage).into(),
        what,
        needs: needs.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(percent: u8, minutes: u64) -> Step {
        Step {
            percent,
            duration_ms: minutes * 60_000,
        }
    }

    #[test]
    fn each_step_of_a_plan_gives_its_split_from_the_stable_version_to_the_target() {
        assert_eq!(
            step(0, 10).traffic(14, 15),
            (Split::from([(14, 100)]), BTreeSet::from([15]))
        );
        assert_eq!(
            step(5, 30).traffic(14, 15),
            (Split::from([(14, 95), (15, 5)]), BTreeSet::new())
        );
        assert_eq!(
            step(100, 0).traffic(14, 15),
            (Split::from([(15, 100)]), BTreeSet::new())
        );
        let plan = [step(0, 10), step(5, 30), step(25, 30), step(100, 0)];
        let text: Vec<String> = plan.iter().map(Step::to_string).collect();
        assert_eq!(text, ["shadow 10m", "5% 30m", "25% 30m", "100%"]);
        check_plan(&plan, &Bounds::default()).unwrap();
    }

    #[test]
    fn bad_splits_are_refused_naming_the_field_and_the_fix() {
        for (split, shadows, words) in [
            (vec![], vec![], "split: is empty"),
            (vec![(1, 50)], vec![], "sum to 50"),
            (vec![(1, 60), (2, 60)], vec![], "sum to 120"),
            (vec![(1, 0), (2, 100)], vec![], "share 0"),
            (vec![(1, 101)], vec![], "share 101"),
            (vec![(1, u32::MAX)], vec![], "share 4294967295"),
            (vec![(0, 100)], vec![], "version 0"),
            (vec![(1, 50), (1, 50)], vec![], "named twice"),
            (vec![(1, 100)], vec![1], "in the split already"),
            (vec![(1, 100)], vec![2, 2], "named twice"),
            (vec![(1, 100)], vec![2, 3, 4, 5, 6], "at most 4"),
            (
                (1..=9).map(|v| (v, if v == 1 { 92 } else { 1 })).collect(),
                vec![],
                "at most 8",
            ),
        ] {
            let e = check_traffic(&split, &shadows).unwrap_err().to_string();
            assert!(e.contains(words), "{split:?} {shadows:?}: {e}");
        }
        check_traffic(&[(14, 95), (15, 5)], &[16]).unwrap();
    }

    #[test]
    fn bad_plans_and_bounds_are_refused_naming_the_field() {
        let ok = Bounds::default();
        for (plan, words) in [
            (vec![], "is empty"),
            (vec![step(5, 1), step(5, 1), step(100, 0)], "not more than"),
            (
                vec![step(50, 1), step(10, 1), step(100, 0)],
                "not more than",
            ),
            (vec![step(5, 1), step(0, 1), step(100, 0)], "shadow step"),
            (vec![step(0, 1)], "the last step must be 100%"),
            (vec![step(5, 1), step(50, 0)], "ends at 50%"),
            (vec![step(5, 60 * 24 * 31), step(100, 0)], "at most 720h"),
            (vec![step(101, 1)], "at most 100"),
            ((1..=17).map(|p| step(p * 5, 1)).collect(), "at most 16"),
        ] {
            let e = check_plan(&plan, &ok).unwrap_err().to_string();
            assert!(e.contains("plan") && e.contains(words), "{plan:?}: {e}");
        }
        let plan = [step(5, 1), step(100, 0)];
        for bad in [f64::NAN, f64::INFINITY, -1.0, 100.5] {
            let b = Bounds {
                error_rate_pct_max: bad,
                ..ok
            };
            let e = check_plan(&plan, &b).unwrap_err().to_string();
            assert!(e.contains("error_rate_pct_max"), "{e}");
        }
        for bad in [f64::NAN, f64::NEG_INFINITY, 0.0, -5.0, 1e12] {
            let b = Bounds {
                p99_ms_max: bad,
                ..ok
            };
            let e = check_plan(&plan, &b).unwrap_err().to_string();
            assert!(e.contains("p99_ms_max"), "{e}");
        }
    }

    #[test]
    fn only_production_takes_all_traffic_and_staging_a_canary_or_shadow() {
        traffic_allowed("reco", 1, Stage::Production, 100).unwrap();
        traffic_allowed("reco", 1, Stage::Staging, 5).unwrap();
        traffic_allowed("reco", 1, Stage::Staging, 0).unwrap();
        let e = traffic_allowed("reco", 1, Stage::Staging, 100).unwrap_err();
        assert!(
            e.to_string().contains("only a version in Production"),
            "{e}"
        );
        for stage in [Stage::Experimental, Stage::Archived] {
            for share in [0, 5, 100] {
                let e = traffic_allowed("reco", 2, stage, share).unwrap_err();
                assert!(e.to_string().contains("reco/2"), "{e}");
            }
        }
    }
}
