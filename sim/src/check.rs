//! Invariant checkers, over plain data.
//!
//! The simulator's I/O shell collects what happened (the acknowledgements clients received,
//! samples of every node's state taken during the run, every node's final state) into the plain
//! types below; the checkers are pure functions of them. That keeps each checker testable with
//! hand-built histories (including the broken ones it must flag), and keeps the run itself
//! free of assertions that would panic half-way through a sweep: a broken invariant is a
//! [`Violation`], reported with the seed that produced it.
//!
//! What is checked:
//! - no acknowledged command is lost ([`check_acks`]): each acked CreateModel, CreateVersion,
//!   SetStage and SetAlias is visible in the final state;
//! - a version's identity is the same everywhere: one manifest root per (model, number) across
//!   every node's final state ([`RootBook`]), and the root an ack reported;
//! - state digests agree across nodes at equal applied index, during the run ([`DigestBook`])
//!   and at the end;
//! - a node's vote never goes back ([`VoteBook`], what Raft's election safety rests on: a vote
//!   that a crash takes back lets a node vote twice in one election). openraft 0.9's leader ids
//!   are `(term, node)`, so two nodes may both lead one term (a follower may vote for the higher
//!   node id in the same term; every log id carries its leader's node id, so that is safe) and a
//!   restarted leader resumes its leadership; "one leader per term" is therefore not checked,
//!   only counted ([`LeaderBook`]);
//! - each version's stage history is one linear chain ending in its stage, numbering has no
//!   gaps, at most one version of a model is in Production and the model points at it
//!   ([`check_versions`]);
//! - aliases point to existing versions ([`check_aliases`]);
//! - the audit log is an unbroken hash chain ([`check_audit_chain`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use quiver_node::domain::{Alias, Model, Stage, Version};
use quiver_node::state::AuditEntry;

use crate::schedule::NodeId;

/// A broken invariant: which one, and the evidence.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    pub kind: &'static str,
    pub detail: String,
}

impl Violation {
    pub fn new(kind: &'static str, detail: impl Into<String>) -> Self {
        Violation {
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// What an acknowledged command must have left in the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    Model {
        name: String,
    },
    /// `number` is what the ack said, if it said (a planted early ack does not know it).
    Version {
        model: String,
        number: Option<u64>,
        root: String,
    },
    Stage {
        model: String,
        number: u64,
        stage: Stage,
        reason: String,
    },
    Alias {
        model: String,
        alias: String,
        number: u64,
    },
}

impl Expect {
    pub fn kind(&self) -> &'static str {
        match self {
            Expect::Model { .. } => "create_model",
            Expect::Version { .. } => "create_version",
            Expect::Stage { .. } => "set_stage",
            Expect::Alias { .. } => "set_alias",
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Model { name } => write!(f, "create_model {name}"),
            Expect::Version {
                model,
                number: Some(n),
                root,
            } => write!(f, "create_version {model}/{n} root {}", short(root)),
            Expect::Version {
                model,
                number: None,
                root,
            } => write!(f, "create_version {model}/? root {}", short(root)),
            Expect::Stage {
                model,
                number,
                stage,
                ..
            } => write!(f, "set_stage {model}/{number} -> {stage:?}"),
            Expect::Alias {
                model,
                alias,
                number,
            } => write!(f, "set_alias {model}@{alias} -> {number}"),
        }
    }
}

pub fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

/// One acknowledgement a client received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub client: usize,
    pub seq: u64,
    /// The command's actor and time, as the client fixed them.
    pub actor: String,
    pub at_ms: i64,
    /// Virtual ms since the run began: when the attempt that was acked was handed to a node,
    /// and when the ack arrived.
    pub proposed_at_ms: u64,
    pub acked_at_ms: u64,
    pub expect: Expect,
}

/// A node's whole registry state, read in one transaction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FinalState {
    pub models: BTreeMap<String, Model>,
    pub versions: BTreeMap<(String, u64), Version>,
    pub aliases: Vec<Alias>,
    pub audit: Vec<AuditEntry>,
    /// Every review request, by id.
    pub reviews: BTreeMap<u64, quiver_node::governance::Review>,
    /// Per model, whether the policy that applies to it asks for approvals to enter Production.
    pub gated: BTreeMap<String, bool>,
    /// Every version's evaluations, in the order they were recorded.
    pub evaluations: BTreeMap<(String, u64), Vec<quiver_node::governance::Evaluation>>,
    /// Every model's catalog entry.
    pub catalog: BTreeMap<String, quiver_node::catalog::CatalogEntry>,
    /// Models a catalog search by their namespace and the words of their name did not find.
    pub unsearchable: Vec<String>,
    /// The latest watch revision, and every kept watch event in the order `watch_read` gave
    /// them ([`crate::check_watch`]).
    pub watch_revision: u64,
    pub watch: Vec<quiver_node::watch::WatchEvent>,
    /// Every deployment endpoint, and its kept history oldest first
    /// ([`crate::check_deploy`]).
    pub deployments: BTreeMap<String, quiver_node::deploy::Deployment>,
    pub deploy_history: BTreeMap<String, Vec<quiver_node::deploy::DeploymentRecord>>,
}

/// The catalog agrees with the models and versions it is derived from, whatever faults the run
/// had (restarts, snapshot installs): an entry per model with its namespace, newest and
/// Production version and versions per stage; and a search by namespace and name finds it.
pub fn check_catalog(state: &FinalState) -> Vec<Violation> {
    let mut out = Vec::new();
    for (name, m) in &state.models {
        let Some(entry) = state.catalog.get(name) else {
            out.push(Violation::new(
                "catalog",
                format!("model {name} has no catalog entry"),
            ));
            continue;
        };
        let mut stages: BTreeMap<Stage, u64> = BTreeMap::new();
        for ((model, _), v) in &state.versions {
            if model == name {
                *stages.entry(v.stage).or_default() += 1;
            }
        }
        let expected = (&m.namespace, m.version_count, m.production_version, &stages);
        let found = (
            &entry.namespace,
            entry.latest_version,
            entry.production_version,
            &entry.stages,
        );
        if expected != found {
            out.push(Violation::new(
                "catalog",
                format!(
                    "the catalog entry of {name} says (namespace, newest, production, stages) \
                     {found:?}, the state {expected:?}"
                ),
            ));
        }
    }
    for name in &state.unsearchable {
        out.push(Violation::new(
            "catalog",
            format!("a search by its namespace and name does not find model {name}"),
        ));
    }
    out
}

/// Every acknowledged command is visible in `state`.
pub fn check_acks(acks: &[Ack], state: &FinalState) -> Vec<Violation> {
    let mut out = Vec::new();
    for ack in acks {
        let lost = |why: String| {
            Violation::new(
                "lost-ack",
                format!(
                    "client {} op #{} ({}) acked at {} ms is not in the final state: {why}",
                    ack.client, ack.seq, ack.expect, ack.acked_at_ms
                ),
            )
        };
        match &ack.expect {
            Expect::Model { name } => match state.models.get(name) {
                None => out.push(lost("no such model".into())),
                Some(m) if m.created_by.name != ack.actor || m.created_at_ms != ack.at_ms => out
                    .push(lost(format!(
                        "the model was created by {} at {} ms instead",
                        m.created_by.name, m.created_at_ms
                    ))),
                Some(_) => {}
            },
            Expect::Version {
                model,
                number,
                root,
            } => {
                let found = state
                    .versions
                    .range((model.clone(), 0)..=(model.clone(), u64::MAX))
                    .find(|(_, v)| &v.manifest_root == root);
                match (found, number) {
                    (None, _) => out.push(lost("no version of the model has this root".into())),
                    (Some(((_, n), _)), Some(acked)) if n != acked => out.push(lost(format!(
                        "the root is version {n}, the ack said {acked}"
                    ))),
                    _ => {}
                }
            }
            Expect::Stage {
                model,
                number,
                stage,
                reason,
            } => match state.versions.get(&(model.clone(), *number)) {
                None => out.push(lost("no such version".into())),
                Some(v) => {
                    let present = v.stage_history.iter().any(|t| {
                        t.to == *stage
                            && &t.reason == reason
                            && t.at_ms == ack.at_ms
                            && t.actor.name == ack.actor
                    });
                    if !present {
                        out.push(lost(format!(
                            "no transition to {stage:?} with reason {reason:?} in its history"
                        )));
                    }
                }
            },
            Expect::Alias { model, alias, .. } => {
                let subject = format!("{model}@{alias}");
                let present = state.audit.iter().any(|e| {
                    e.kind == "set_alias"
                        && e.subject == subject
                        && e.at_ms == ack.at_ms
                        && e.principal == ack.actor
                });
                if !present {
                    out.push(lost("no such alias change in the audit log".into()));
                }
            }
        }
    }
    out
}

/// Numbering, stage histories and the one-Production rule.
pub fn check_versions(state: &FinalState) -> Vec<Violation> {
    let mut out = Vec::new();
    for (name, model) in &state.models {
        let versions: Vec<&Version> = state
            .versions
            .range((name.clone(), 0)..=(name.clone(), u64::MAX))
            .map(|(_, v)| v)
            .collect();
        let numbers: Vec<u64> = versions.iter().map(|v| v.number).collect();
        let expected: Vec<u64> = (1..=model.version_count).collect();
        if numbers != expected {
            out.push(Violation::new(
                "version-numbering",
                format!(
                    "model {name} has version_count {} but versions {numbers:?}",
                    model.version_count
                ),
            ));
        }
        let production: Vec<u64> = versions
            .iter()
            .filter(|v| v.stage == Stage::Production)
            .map(|v| v.number)
            .collect();
        if production.len() > 1 {
            out.push(Violation::new(
                "two-in-production",
                format!("model {name} has versions {production:?} in Production"),
            ));
        }
        if production.first().copied() != model.production_version {
            out.push(Violation::new(
                "production-pointer",
                format!(
                    "model {name} says production_version {:?}, versions in Production: \
                     {production:?}",
                    model.production_version
                ),
            ));
        }
        for v in versions {
            if let Some(problem) = stage_history_problem(v) {
                out.push(Violation::new(
                    "stage-history",
                    format!("{}/{}: {problem}", v.model, v.number),
                ));
            }
        }
    }
    for (model, number) in state.versions.keys() {
        if !state.models.contains_key(model) {
            out.push(Violation::new(
                "orphan-version",
                format!("{model}/{number} exists but model {model} does not"),
            ));
        }
    }
    out
}

/// Why a version's stage history is not one linear chain from registration to its stage.
fn stage_history_problem(v: &Version) -> Option<String> {
    let Some(first) = v.stage_history.first() else {
        return Some("empty stage history".into());
    };
    if first.from.is_some() || first.to != Stage::Experimental {
        return Some(format!(
            "starts with {:?} -> {:?}, not registration as Experimental",
            first.from, first.to
        ));
    }
    for (i, pair) in v.stage_history.windows(2).enumerate() {
        let (prev, next) = (&pair[0], &pair[1]);
        if next.from != Some(prev.to) {
            return Some(format!(
                "transition {} goes {:?} -> {:?} but the version was {:?}",
                i + 1,
                next.from,
                next.to,
                prev.to
            ));
        }
        if next.from == Some(next.to) {
            return Some(format!("transition {} goes nowhere ({:?})", i + 1, next.to));
        }
    }
    let last = v.stage_history.last().map(|t| t.to);
    if last != Some(v.stage) {
        return Some(format!(
            "history ends in {last:?} but the stage is {:?}",
            v.stage
        ));
    }
    None
}

/// Aliases point to existing versions of their model.
pub fn check_aliases(state: &FinalState) -> Vec<Violation> {
    state
        .aliases
        .iter()
        .filter(|a| !state.versions.contains_key(&(a.model.clone(), a.version)))
        .map(|a| {
            Violation::new(
                "dangling-alias",
                format!(
                    "{}@{} points to missing version {}",
                    a.model, a.alias, a.version
                ),
            )
        })
        .collect()
}

/// The audit log is numbered 1.. without gaps, each record hashes to its hash and names its
/// predecessor's (`quiver_audit::verify_chain`).
pub fn check_audit_chain(audit: &[AuditEntry]) -> Vec<Violation> {
    match quiver_audit::verify_chain(audit) {
        Ok(_) => Vec::new(),
        Err(e) => vec![Violation::new("audit-chain", e.to_string())],
    }
}

/// Everything about one final state that does not need the history.
pub fn check_state(state: &FinalState) -> Vec<Violation> {
    let mut out = check_versions(state);
    out.extend(check_aliases(state));
    out.extend(check_audit_chain(&state.audit));
    out.extend(check_intruders(state));
    out.extend(check_approvals(state));
    out.extend(check_catalog(state));
    out
}

/// Four eyes held: no version of a model whose policy asks for approvals entered Production
/// without a passing gate report, and every review that promoted one was approved only by
/// principals other than the version's registrant, each once.
pub fn check_approvals(state: &FinalState) -> Vec<Violation> {
    let mut out = Vec::new();
    for ((model, number), v) in &state.versions {
        if !state.gated.get(model).copied().unwrap_or(false) {
            continue;
        }
        for t in v
            .stage_history
            .iter()
            .filter(|t| t.to == quiver_node::domain::Stage::Production)
        {
            if !t.gate_report.as_ref().is_some_and(|r| r.passed()) {
                out.push(Violation::new(
                    "ungated-production",
                    format!(
                        "{model}/{number} entered Production at {} ms by {} without a passing \
                         gate report",
                        t.at_ms, t.actor.name
                    ),
                ));
            }
            // The gates again, from the state rather than from the report the transition kept
            // (`workload::Pipeline::policy`): the registration's auc (no evaluation carries
            // one), and a fairness evaluation within bounds (the newest one when it moved; some
            // one, at least).
            let auc = v.metadata.metrics.get("auc").copied().unwrap_or(f64::NAN);
            let fair = state
                .evaluations
                .get(&(model.clone(), *number))
                .is_some_and(|es| {
                    es.iter().any(|e| {
                        e.kind == crate::workload::FAIRNESS
                            && e.metrics
                                .get("dp_gap")
                                .is_some_and(|g| *g <= crate::workload::DP_GAP_MAX)
                    })
                });
            if auc.is_nan() || auc < crate::workload::AUC_MIN || !fair {
                out.push(Violation::new(
                    "gate-bypassed",
                    format!(
                        "{model}/{number} entered Production at {} ms by {} although its gates \
                         fail: auc {auc} (at least {} needed), a fairness evaluation within \
                         bounds: {fair}",
                        t.at_ms,
                        t.actor.name,
                        crate::workload::AUC_MIN
                    ),
                ));
            }
        }
    }
    for review in state.reviews.values() {
        if review.state != quiver_node::governance::ReviewState::Promoted {
            continue;
        }
        let Some(v) = state.versions.get(&(review.model.clone(), review.number)) else {
            continue;
        };
        let registrant = &v.created_by.name;
        let mut seen = std::collections::BTreeSet::new();
        for a in &review.approvals {
            if &a.principal == registrant {
                out.push(Violation::new(
                    "registrant-approval",
                    format!(
                        "review #{} promoted {}/{} with an approval by its registrant {}",
                        review.id, review.model, review.number, registrant
                    ),
                ));
            }
            if !seen.insert(a.principal.clone()) {
                out.push(Violation::new(
                    "double-approval",
                    format!(
                        "review #{} counts two approvals by {}",
                        review.id, a.principal
                    ),
                ));
            }
        }
        if review.approvals.is_empty() {
            out.push(Violation::new(
                "unapproved-production",
                format!(
                    "review #{} promoted {}/{} without an approval",
                    review.id, review.model, review.number
                ),
            ));
        }
    }
    out
}

/// Nothing an intruder (a reader, `crate::hostile::intruder_op`) sent changed the state: no
/// model of theirs, no description of theirs, no audit entry naming them.
pub fn check_intruders(state: &FinalState) -> Vec<Violation> {
    let intruder = |name: &str| name.starts_with(crate::hostile::INTRUDER_PREFIX);
    let mut out = Vec::new();
    for model in state.models.values() {
        if intruder(&model.created_by.name)
            || model.description == crate::hostile::INTRUDER_DESCRIPTION
        {
            out.push(Violation::new(
                "unauthorized-write",
                format!(
                    "model {} was written by a principal without the role (created by {})",
                    model.name, model.created_by.name
                ),
            ));
        }
    }
    for entry in state.audit.iter().filter(|e| intruder(&e.principal)) {
        out.push(Violation::new(
            "unauthorized-write",
            format!(
                "the audit log records {} by {}",
                entry.kind, entry.principal
            ),
        ));
    }
    out
}

/// Digests seen per applied index: two nodes at the same index must agree.
#[derive(Debug, Default)]
pub struct DigestBook {
    seen: BTreeMap<u64, (NodeId, String)>,
    compared: u64,
}

impl DigestBook {
    pub fn observe(&mut self, node: NodeId, index: u64, digest: &str) -> Option<Violation> {
        let Some((first, d)) = self.seen.get(&index) else {
            self.seen.insert(index, (node, digest.to_string()));
            return None;
        };
        self.compared += 1;
        match (first, d) {
            (first, d) if d != digest => Some(Violation::new(
                "digest-divergence",
                format!(
                    "at applied index {index} n{first} has digest {} but n{node} has {}",
                    short(d),
                    short(digest)
                ),
            )),
            _ => None,
        }
    }

    pub fn indexes(&self) -> usize {
        self.seen.len()
    }

    /// Observations that met an earlier one at the same index (each a real comparison).
    pub fn compared(&self) -> u64 {
        self.compared
    }
}

/// Leaders seen per term (see the module docs: several per term are legal, so this counts).
#[derive(Debug, Default)]
pub struct LeaderBook {
    leaders: BTreeSet<(u64, NodeId)>,
}

impl LeaderBook {
    /// Node `leader` is leader in `term`.
    pub fn observe(&mut self, term: u64, leader: NodeId) {
        self.leaders.insert((term, leader));
    }

    /// Terms that had a leader.
    pub fn terms(&self) -> usize {
        let mut terms: Vec<u64> = self.leaders.iter().map(|(term, _)| *term).collect();
        terms.dedup();
        terms.len()
    }

    /// Terms in which more than one node led.
    pub fn shared_terms(&self) -> usize {
        let terms: Vec<u64> = self.leaders.iter().map(|(term, _)| *term).collect();
        terms.windows(2).filter(|w| w[0] == w[1]).count()
    }
}

/// The highest vote seen on each node, as openraft orders votes: `(term, voted-for node)`, then
/// committed (granted by a quorum) over not. A node's vote only moves forward, across restarts
/// too: a vote that goes back was lost.
#[derive(Debug, Default)]
pub struct VoteBook {
    votes: BTreeMap<NodeId, (u64, NodeId, bool)>,
}

impl VoteBook {
    /// Node `node` holds a vote for `voted_for` in `term` (`committed` once a quorum granted it).
    pub fn observe(
        &mut self,
        node: NodeId,
        term: u64,
        voted_for: NodeId,
        committed: bool,
    ) -> Option<Violation> {
        let vote = (term, voted_for, committed);
        match self.votes.get(&node) {
            Some(&seen) if vote < seen => Some(Violation::new(
                "vote-regressed",
                format!(
                    "n{node} voted for n{} in term {} (committed {}) and later holds a vote for \
                     n{voted_for} in term {term} (committed {committed})",
                    seen.1, seen.0, seen.2
                ),
            )),
            _ => {
                self.votes.insert(node, vote);
                None
            }
        }
    }
}

/// The manifest root seen for each (model, number), on any node at any time.
#[derive(Debug, Default)]
pub struct RootBook {
    roots: BTreeMap<(String, u64), String>,
}

impl RootBook {
    pub fn observe(
        &mut self,
        node: NodeId,
        model: &str,
        number: u64,
        root: &str,
    ) -> Option<Violation> {
        let key = (model.to_string(), number);
        match self.roots.get(&key) {
            None => {
                self.roots.insert(key, root.to_string());
                None
            }
            Some(r) if r != root => Some(Violation::new(
                "version-changed",
                format!(
                    "{model}/{number} had root {} but n{node} shows {}",
                    short(r),
                    short(root)
                ),
            )),
            Some(_) => None,
        }
    }
}

/// Failover times: for each leader kill, the time to the first acknowledgement of a command
/// that was handed to a node after the kill (an ack of a command proposed before the kill says
/// nothing about the new leader). `None` where no such ack came before the next kill or the end.
pub fn failover_times_ms(kills_ms: &[u64], acks: &[Ack], end_ms: u64) -> Vec<Option<u64>> {
    kills_ms
        .iter()
        .enumerate()
        .map(|(i, &kill)| {
            let until = kills_ms.get(i + 1).copied().unwrap_or(end_ms);
            acks.iter()
                .filter(|a| a.proposed_at_ms >= kill && a.acked_at_ms <= until)
                .map(|a| a.acked_at_ms - kill)
                .min()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_node::domain::{
        Actor, RiskTier, Signature, StageTransition, VersionMetadata, VersionStatus,
    };
    use quiver_node::state::AuditEntry;

    fn actor(name: &str) -> Actor {
        Actor {
            name: name.into(),
            authenticated: false,
        }
    }

    fn model(name: &str, count: u64, production: Option<u64>) -> Model {
        Model {
            name: name.into(),
            namespace: "team".into(),
            description: String::new(),
            risk_tier: RiskTier::Low,
            tags: Default::default(),
            created_by: actor("p0"),
            created_at_ms: 10,
            version_count: count,
            production_version: production,
        }
    }

    fn transition(from: Option<Stage>, to: Stage, at_ms: i64, reason: &str) -> StageTransition {
        StageTransition {
            from,
            to,
            actor: actor("p0"),
            at_ms,
            reason: reason.into(),
            gate_report: None,
        }
    }

    fn version(model: &str, number: u64, root: &str, stages: &[Stage]) -> Version {
        let mut history = vec![transition(None, Stage::Experimental, 20, "registered")];
        for (i, s) in stages.iter().enumerate() {
            let from = history.last().map(|t| t.to);
            history.push(transition(from, *s, 30 + i as i64, &format!("r{i}")));
        }
        Version {
            model: model.into(),
            number,
            manifest_root: root.into(),
            files: vec![],
            total_size_bytes: 0,
            signature: Signature::default(),
            metadata: VersionMetadata::default(),
            created_by: actor("p0"),
            created_at_ms: 20,
            tags: Default::default(),
            stage: history.last().map(|t| t.to).unwrap_or(Stage::Experimental),
            status: VersionStatus::Ready,
            stage_history: history,
        }
    }

    fn state() -> FinalState {
        let mut s = FinalState::default();
        s.models.insert("m".into(), model("m", 2, Some(2)));
        s.versions
            .insert(("m".into(), 1), version("m", 1, "aa", &[Stage::Staging]));
        s.versions.insert(
            ("m".into(), 2),
            version("m", 2, "bb", &[Stage::Staging, Stage::Production]),
        );
        s.aliases.push(Alias {
            model: "m".into(),
            alias: "champion".into(),
            version: 2,
            updated_by: actor("p0"),
            updated_at_ms: 40,
        });
        s.audit = vec![audit(1, "", "set_alias", "m@champion", 40)];
        s.catalog.insert("m".into(), catalog_of(&s, "m"));
        s
    }

    /// Model `name`'s catalog entry as apply would keep it for `s`.
    fn catalog_of(s: &FinalState, name: &str) -> quiver_node::catalog::CatalogEntry {
        let mut entry = quiver_node::catalog::CatalogEntry::default();
        for ((model, _), v) in &s.versions {
            if model == name {
                entry.count(v.stage, true);
            }
        }
        entry.describe(&s.models[name]);
        entry
    }

    #[test]
    fn the_catalog_must_agree_with_the_models_and_versions_and_find_them() {
        assert_eq!(check_catalog(&state()), vec![]);
        let mut stale = state();
        stale
            .catalog
            .get_mut("m")
            .unwrap()
            .count(Stage::Production, false);
        assert_eq!(check_catalog(&stale)[0].kind, "catalog");
        let mut missing = state();
        missing.catalog.clear();
        assert_eq!(check_catalog(&missing)[0].kind, "catalog");
        let mut unfound = state();
        unfound.unsearchable.push("m".into());
        assert_eq!(check_catalog(&unfound)[0].kind, "catalog");
    }

    /// Record `seq` of a chain whose predecessor hashes to `prev` (sealed: its hash is real).
    fn audit(seq: u64, prev: &str, kind: &str, subject: &str, at: i64) -> AuditEntry {
        AuditEntry {
            seq,
            log_index: seq + 2,
            at_ms: at,
            principal: "p0".into(),
            authenticated: true,
            kind: kind.into(),
            model: "m".into(),
            subject: subject.into(),
            reason: String::new(),
            detail: String::new(),
            prev_hash: prev.into(),
            hash: String::new(),
        }
        .sealed()
    }

    fn ack(at_ms: i64, expect: Expect) -> Ack {
        Ack {
            client: 0,
            seq: 1,
            actor: "p0".into(),
            at_ms,
            proposed_at_ms: 0,
            acked_at_ms: 5,
            expect,
        }
    }

    /// A gated model's Production version: its gates are checked again from the state, not
    /// only from the report its transition kept.
    #[test]
    fn a_gated_production_version_needs_its_gates_to_hold_in_the_state() {
        use quiver_node::governance::{Evaluation, GateReport, GateResult};
        let gated = || {
            let mut s = state();
            s.gated.insert("m".into(), true);
            let v = s.versions.get_mut(&("m".into(), 2)).unwrap();
            v.metadata.metrics.insert("auc".into(), 0.9);
            v.stage_history.last_mut().unwrap().gate_report = Some(GateReport {
                stage: Stage::Production,
                results: vec![GateResult {
                    gate: "metric auc >= 0.6".into(),
                    passed: true,
                    detail: String::new(),
                }],
            });
            s.evaluations.insert(
                ("m".into(), 2),
                vec![Evaluation {
                    seq: 1,
                    kind: crate::workload::FAIRNESS.into(),
                    metrics: [("dp_gap".to_string(), 0.01)].into(),
                    summary: String::new(),
                    recorded_by: "p0".into(),
                    at_ms: 25,
                }],
            );
            s
        };
        let kinds = |s: &FinalState| -> Vec<&'static str> {
            check_approvals(s).iter().map(|v| v.kind).collect()
        };
        assert_eq!(kinds(&gated()), Vec::<&str>::new());
        let mut low = gated();
        low.versions
            .get_mut(&("m".into(), 2))
            .unwrap()
            .metadata
            .metrics
            .insert("auc".into(), 0.55);
        assert_eq!(kinds(&low), ["gate-bypassed"]);
        let mut unfair = gated();
        unfair.evaluations.get_mut(&("m".into(), 2)).unwrap()[0]
            .metrics
            .insert("dp_gap".into(), 0.2);
        assert_eq!(kinds(&unfair), ["gate-bypassed"]);
        let mut unevaluated = gated();
        unevaluated.evaluations.clear();
        assert_eq!(kinds(&unevaluated), ["gate-bypassed"]);
        let mut unreported = gated();
        unreported
            .versions
            .get_mut(&("m".into(), 2))
            .unwrap()
            .stage_history
            .last_mut()
            .unwrap()
            .gate_report = None;
        assert_eq!(kinds(&unreported), ["ungated-production"]);
    }

    #[test]
    fn a_consistent_state_passes_every_check() {
        let s = state();
        assert_eq!(check_state(&s), vec![]);
        let acks = vec![
            ack(10, Expect::Model { name: "m".into() }),
            ack(
                20,
                Expect::Version {
                    model: "m".into(),
                    number: Some(2),
                    root: "bb".into(),
                },
            ),
            ack(
                31,
                Expect::Stage {
                    model: "m".into(),
                    number: 2,
                    stage: Stage::Production,
                    reason: "r1".into(),
                },
            ),
            ack(
                40,
                Expect::Alias {
                    model: "m".into(),
                    alias: "champion".into(),
                    number: 2,
                },
            ),
        ];
        assert_eq!(check_acks(&acks, &s), vec![]);
    }

    #[test]
    fn lost_acknowledgements_are_flagged_one_by_one() {
        let s = state();
        let acks = vec![
            ack(
                10,
                Expect::Model {
                    name: "gone".into(),
                },
            ),
            ack(11, Expect::Model { name: "m".into() }),
            ack(
                20,
                Expect::Version {
                    model: "m".into(),
                    number: None,
                    root: "cc".into(),
                },
            ),
            ack(
                20,
                Expect::Version {
                    model: "m".into(),
                    number: Some(1),
                    root: "bb".into(),
                },
            ),
            ack(
                99,
                Expect::Stage {
                    model: "m".into(),
                    number: 2,
                    stage: Stage::Production,
                    reason: "r1".into(),
                },
            ),
            ack(
                41,
                Expect::Alias {
                    model: "m".into(),
                    alias: "champion".into(),
                    number: 2,
                },
            ),
        ];
        let v = check_acks(&acks, &s);
        assert_eq!(v.len(), acks.len(), "{v:#?}");
        assert!(v.iter().all(|v| v.kind == "lost-ack"));
        assert!(v[1].detail.contains("created by p0 at 10"), "{}", v[1]);
        assert!(v[3].detail.contains("the root is version 2"), "{}", v[3]);
    }

    #[test]
    fn two_production_versions_and_a_stale_pointer_are_flagged() {
        let mut s = state();
        s.versions
            .insert(("m".into(), 1), version("m", 1, "aa", &[Stage::Production]));
        let kinds: Vec<_> = check_versions(&s).iter().map(|v| v.kind).collect();
        assert_eq!(kinds, vec!["two-in-production", "production-pointer"]);
    }

    #[test]
    fn a_broken_stage_history_is_flagged() {
        let mut s = state();
        let v = s.versions.get_mut(&("m".to_string(), 1)).expect("m/1");
        v.stage_history.push(transition(
            Some(Stage::Production),
            Stage::Archived,
            50,
            "x",
        ));
        v.stage = Stage::Archived;
        let found = check_versions(&s);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, "stage-history");
        assert!(found[0].detail.contains("the version was Staging"));
    }

    #[test]
    fn gaps_in_numbering_and_dangling_aliases_are_flagged() {
        let mut s = state();
        s.versions.remove(&("m".to_string(), 1));
        s.aliases[0].version = 1;
        // The catalog as apply would have kept it for the state left (it is not what is tested).
        s.catalog.insert("m".into(), catalog_of(&s, "m"));
        let kinds: Vec<_> = check_state(&s).iter().map(|v| v.kind).collect();
        assert_eq!(kinds, vec!["version-numbering", "dangling-alias"]);
    }

    #[test]
    fn a_broken_audit_chain_is_flagged() {
        let first = audit(1, "", "create_model", "m", 1);
        let good = vec![
            first.clone(),
            audit(2, &first.hash, "create_version", "m/1", 2),
        ];
        assert_eq!(check_audit_chain(&good), vec![]);
        let mut bad = good.clone();
        bad[1].prev_hash = "hX".into();
        bad[1] = bad[1].clone().sealed();
        assert_eq!(check_audit_chain(&bad)[0].kind, "audit-chain");
        let mut altered = good.clone();
        altered[0].subject = "n".into();
        assert_eq!(check_audit_chain(&altered).len(), 1);
        let mut gap = good;
        gap[1].seq = 3;
        assert_eq!(check_audit_chain(&gap).len(), 1);
    }

    #[test]
    fn books_flag_disagreement_and_accept_repetition() {
        let mut d = DigestBook::default();
        assert_eq!(d.observe(1, 10, "aa"), None);
        assert_eq!(d.observe(2, 10, "aa"), None);
        assert_eq!(d.observe(3, 11, "bb"), None);
        assert_eq!(
            d.observe(3, 10, "cc").map(|v| v.kind),
            Some("digest-divergence")
        );
        assert_eq!(d.indexes(), 2);
        assert_eq!(d.compared(), 2);

        let mut l = LeaderBook::default();
        l.observe(3, 1);
        l.observe(3, 1);
        l.observe(3, 2);
        l.observe(4, 2);
        assert_eq!(l.terms(), 2);
        assert_eq!(l.shared_terms(), 1, "two nodes led term 3");

        let mut votes = VoteBook::default();
        assert_eq!(votes.observe(1, 3, 2, false), None);
        assert_eq!(votes.observe(1, 3, 2, true), None, "committed is forward");
        assert_eq!(
            votes.observe(1, 3, 4, false),
            None,
            "a higher node id in one term"
        );
        assert_eq!(votes.observe(2, 1, 1, false), None, "another node's vote");
        assert_eq!(
            votes.observe(1, 3, 2, true).map(|v| v.kind),
            Some("vote-regressed")
        );
        assert_eq!(
            votes.observe(1, 2, 5, true).map(|v| v.kind),
            Some("vote-regressed")
        );
        assert_eq!(votes.observe(1, 4, 1, false), None);

        let mut r = RootBook::default();
        assert_eq!(r.observe(1, "m", 1, "aa"), None);
        assert_eq!(r.observe(2, "m", 1, "aa"), None);
        assert_eq!(
            r.observe(2, "m", 1, "bb").map(|v| v.kind),
            Some("version-changed")
        );
    }

    #[test]
    fn failover_time_counts_only_commands_proposed_after_the_kill() {
        let mk = |proposed, acked| Ack {
            proposed_at_ms: proposed,
            acked_at_ms: acked,
            ..ack(0, Expect::Model { name: "m".into() })
        };
        // Proposed before the kill at 100 and acked after it: not evidence of a new leader.
        let acks = vec![mk(90, 101), mk(150, 420), mk(300, 380), mk(900, 950)];
        assert_eq!(
            failover_times_ms(&[100, 500, 2_000], &acks, 3_000),
            vec![Some(280), Some(450), None]
        );
    }
}
