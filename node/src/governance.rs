//! Governance rules, pure: a model's policy lists the gates a version must pass to enter
//! Staging and Production, and [`evaluate`] decides them from replicated state alone (the
//! version, the model's Production version, the version's evaluation records), so every node
//! and the simulator give the same answer. The report that allowed a transition is stored with
//! it; one that refused is the refusal's text, naming each failed gate and what would satisfy it.
//!
//! Which policy applies ([`PolicyScope`]): the model's own, else its namespace's for its risk
//! tier, else its namespace's for every tier, else none (no gates).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::domain::{validate_name, DomainError, RiskTier, Stage, Version};

/// Most gates one stage of a policy may list.
pub const GATES_PER_STAGE_MAX: usize = 32;
/// Most bounds one evaluation gate may list, and metrics one evaluation record may carry.
pub const METRICS_PER_RECORD_MAX: usize = 64;
/// Longest metric or evaluation kind name (bytes).
pub const METRIC_NAME_BYTES_MAX: usize = 128;
/// Longest summary an evaluation record carries (bytes).
pub const EVAL_SUMMARY_BYTES_MAX: usize = 4096;
/// Most evaluation records one version may hold.
pub const EVALUATIONS_PER_VERSION_MAX: u64 = 1024;
/// Most approvals one approvals gate may ask for.
pub const APPROVALS_MAX: u32 = 10;
/// Longest comment on a review decision (bytes).
pub const REVIEW_COMMENT_BYTES_MAX: usize = 4096;

/// The gates of one model's versions. Serialized as the `--file` of `quiver policy set`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Gates for entering Staging.
    #[serde(default)]
    pub staging: Vec<Gate>,
    /// Gates for entering Production.
    #[serde(default)]
    pub production: Vec<Gate>,
    /// Promote a version to Staging in the same step that records an evaluation making its
    /// Staging gates pass (an Experimental version only).
    #[serde(default)]
    pub auto_promote: bool,
}

/// One condition of a policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Gate {
    /// Lineage metadata the version must carry.
    RequiredMetadata { fields: Vec<MetadataField> },
    /// A metric (the newest evaluation's value, else the registration's) compared with a fixed
    /// value or with the Production version's value plus `production_delta`; `tolerance`
    /// loosens the comparison by that much.
    Metric {
        metric: String,
        op: Comparison,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        production_delta: Option<f64>,
        #[serde(default)]
        tolerance: f64,
    },
    /// An evaluation of this kind must be recorded, and its newest record within `bounds`.
    Evaluation {
        eval_kind: String,
        #[serde(default)]
        bounds: Vec<Bound>,
    },
    /// `count` approvals of the version's review, each by a different principal holding `role`
    /// (approver by default) in the model's namespace, none by the version's registrant (four
    /// eyes). A stage change that waits only for these becomes a review request.
    Approvals {
        count: u32,
        #[serde(default = "approver", with = "role_text")]
        role: Role,
    },
    /// The version's signature must not break callers of the Production version's (a removed,
    /// renamed, retyped or reshaped input, a new required input, any output change), unless an
    /// approver overrides it on the stage change (`--override-signature`), which the report and
    /// the audit log name.
    SignatureCompatible {},
}

fn approver() -> Role {
    Role::Approver
}

/// A role in a policy file as users write it: `approver`, `admin`.
mod role_text {
    use super::Role;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(role: &Role, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(role.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let text = String::deserialize(d)?;
        Role::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A lineage field a [`Gate::RequiredMetadata`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetadataField {
    DataSnapshot,
    CodeCommit,
    RunId,
    Signature,
    /// The version's `feature_set` tag (name and version, e.g. `user-features@12`).
    FeatureSet,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "<")]
    Lt,
}

/// A bound on one metric of an evaluation record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bound {
    pub metric: String,
    pub op: Comparison,
    pub value: f64,
}

/// Where a policy is set: one model, or a namespace for one risk tier or for all (`tier`
/// `None`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyScope {
    Model(String),
    Namespace {
        namespace: String,
        tier: Option<RiskTier>,
    },
}

/// An evaluation pipeline's result for a version: never changes the registration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub seq: u64,
    pub kind: String,
    pub metrics: BTreeMap<String, f64>,
    /// What the pipeline says about it, or a report's digest and name.
    pub summary: String,
    pub recorded_by: String,
    pub at_ms: i64,
}

/// The outcome of one gate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateResult {
    /// The gate, as a user reads it (`metric auc >= 0.8`).
    pub gate: String,
    pub passed: bool,
    /// What was found, and for a failure what would satisfy the gate.
    pub detail: String,
}

/// Every gate of one stage of a policy, decided for one version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateReport {
    pub stage: Stage,
    pub results: Vec<GateResult>,
}

impl GateReport {
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.passed)
    }

    /// Every gate in one line, as the audit log records it: `gates for production: pass metric
    /// auc >= 0.8 (auc = 0.9); FAIL 1 approval(s) by approver (0 of 1 …)`.
    pub fn summary(&self) -> String {
        let gates: Vec<String> = self
            .results
            .iter()
            .map(|r| {
                format!(
                    "{} {} ({})",
                    if r.passed { "pass" } else { "FAIL" },
                    r.gate,
                    r.detail
                )
            })
            .collect();
        format!(
            "gates for {}: {}",
            crate::domain::stage_label(self.stage),
            gates.join("; ")
        )
    }
}

impl fmt::Display for GateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed: Vec<&GateResult> = self.results.iter().filter(|r| !r.passed).collect();
        write!(
            f,
            "{} of {} gate(s) failed",
            failed.len(),
            self.results.len()
        )?;
        for r in failed {
            write!(f, "; {}: {}", r.gate, r.detail)?;
        }
        Ok(())
    }
}

impl fmt::Display for PolicyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyScope::Model(model) => write!(f, "policy of model {model}"),
            PolicyScope::Namespace {
                namespace,
                tier: Some(tier),
            } => write!(f, "policy of namespace {namespace}, {tier:?} risk"),
            PolicyScope::Namespace {
                namespace,
                tier: None,
            } => write!(f, "policy of namespace {namespace}"),
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Comparison::Ge => ">=",
            Comparison::Gt => ">",
            Comparison::Le => "<=",
            Comparison::Lt => "<",
        })
    }
}

impl Comparison {
    /// Whether `value op threshold` holds, loosened by `tolerance` (>= 0).
    fn holds(self, value: f64, threshold: f64, tolerance: f64) -> bool {
        match self {
            Comparison::Ge => value >= threshold - tolerance,
            Comparison::Gt => value > threshold - tolerance,
            Comparison::Le => value <= threshold + tolerance,
            Comparison::Lt => value < threshold + tolerance,
        }
    }
}

impl MetadataField {
    fn label(self) -> &'static str {
        match self {
            MetadataField::DataSnapshot => "data snapshot",
            MetadataField::CodeCommit => "code commit",
            MetadataField::RunId => "run id",
            MetadataField::Signature => "signature",
            MetadataField::FeatureSet => "feature set",
        }
    }

    fn present(self, v: &Version) -> bool {
        match self {
            MetadataField::DataSnapshot => !v.metadata.data_snapshot_id.is_empty(),
            MetadataField::CodeCommit => !v.metadata.code_commit.is_empty(),
            MetadataField::RunId => !v.metadata.pipeline_run_id.is_empty(),
            MetadataField::Signature => {
                !v.signature.inputs.is_empty() || !v.signature.outputs.is_empty()
            }
            MetadataField::FeatureSet => v.tags.get("feature_set").is_some_and(|s| !s.is_empty()),
        }
    }
}

/// What the gates are decided from.
pub struct GateInput<'a> {
    pub version: &'a Version,
    pub evaluations: &'a [Evaluation],
    /// The model's Production version (other than `version`) and its evaluations.
    pub production: Option<(&'a Version, &'a [Evaluation])>,
    /// The approvals of the version's open review for the stage decided (none without one).
    pub approvals: &'a [Approval],
    /// An approver's acceptance of a breaking signature change, if one was given.
    pub signature_override: Option<&'a SignatureOverride>,
}

/// An approver accepts a signature change that breaks the Production version's callers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureOverride {
    pub principal: String,
    pub reason: String,
}

/// A stored signature as the compatibility rules read it; `None` if a dtype is unknown.
fn schema_of(s: &crate::domain::Signature) -> Option<quiver_api::schema::Schema> {
    let fields = |specs: &[crate::domain::TensorSpec]| {
        specs
            .iter()
            .map(|t| {
                Some(quiver_api::schema::Field {
                    name: t.name.clone(),
                    dtype: quiver_api::schema::Dtype::parse(&t.dtype)?,
                    shape: t.shape.clone(),
                    optional: t.optional,
                })
            })
            .collect::<Option<Vec<_>>>()
    };
    Some(quiver_api::schema::Schema {
        inputs: fields(&s.inputs)?,
        outputs: fields(&s.outputs)?,
    })
}

/// One approval of a review: who, holding which role in the model's namespace when it was
/// given, when, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub principal: String,
    pub role: Role,
    pub at_ms: i64,
    pub comment: String,
}

/// Where a review request stands. Only an open one takes decisions; a rejection is final for
/// that request (a new stage change opens a new one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewState {
    Open,
    /// Its approvals completed the gates and the version moved.
    Promoted,
    Rejected,
    /// Closed without a decision: the version moved another way, or another review replaced it.
    Closed,
}

impl ReviewState {
    pub fn label(self) -> &'static str {
        match self {
            ReviewState::Open => "open",
            ReviewState::Promoted => "promoted",
            ReviewState::Rejected => "rejected",
            ReviewState::Closed => "closed",
        }
    }
}

/// Approvals that no longer count, and why (the version or the policy changed mid-review).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoidedApprovals {
    pub approvals: Vec<Approval>,
    pub reason: String,
    pub at_ms: i64,
}

/// A stage change that waits for approvals (four eyes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub id: u64,
    pub model: String,
    pub number: u64,
    pub stage: Stage,
    pub requested_by: String,
    pub requested_at_ms: i64,
    pub reason: String,
    pub state: ReviewState,
    /// The approvals that count now.
    pub approvals: Vec<Approval>,
    /// Approvals given and since voided.
    pub voided: Vec<VoidedApprovals>,
    /// Who decided it (rejected it, or gave the approval that promoted it), when, and why.
    pub closed_by: Option<String>,
    pub closed_at_ms: Option<i64>,
    pub closing_comment: String,
    /// The gates as they stood when it was last decided or opened.
    pub report: GateReport,
    /// A breaking signature change accepted by the approver who asked for the stage change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_override: Option<SignatureOverride>,
}

/// Whether every gate of `report` that failed is an approvals gate of `policy` for `stage`
/// (the results are in the policy's gate order), and at least one failed: the stage change
/// waits for reviewers rather than for the version.
pub fn waits_only_for_approvals(policy: &Policy, report: &GateReport) -> bool {
    let gates: &[Gate] = match report.stage {
        Stage::Staging => &policy.staging,
        Stage::Production => &policy.production,
        Stage::Experimental | Stage::Archived => &[],
    };
    gates.len() == report.results.len()
        && !report.passed()
        && gates
            .iter()
            .zip(&report.results)
            .all(|(g, r)| r.passed || matches!(g, Gate::Approvals { .. }))
}

/// Whether `principal`, who holds `held` in the namespace, may approve `review` of a version
/// registered by `registrant`: an open review, not the registrant, not twice, and a role that
/// at least one approvals gate of `gates` counts. The refusal names who and why.
pub fn may_approve(
    review: &Review,
    registrant: &str,
    principal: &str,
    held: Option<Role>,
    gates: &[Gate],
) -> Result<(), DomainError> {
    if review.state != ReviewState::Open {
        return Err(DomainError::ReviewClosed {
            id: review.id,
            state: review.state.label().into(),
        });
    }
    let refuse = |why: String| DomainError::NotAllowed {
        principal: principal.into(),
        action: format!("approve review #{}", review.id),
        why,
    };
    if principal == registrant {
        return Err(refuse(format!(
            "they registered {}/{} and the registrant never approves their own version (four \
             eyes): another approver must",
            review.model, review.number
        )));
    }
    if review.approvals.iter().any(|a| a.principal == principal) {
        return Err(refuse(
            "they already approved it: each approval must come from a different principal".into(),
        ));
    }
    let needed = gates
        .iter()
        .filter_map(|g| match g {
            Gate::Approvals { role, .. } => Some(*role),
            _ => None,
        })
        .min();
    match (needed, held) {
        (None, _) => Err(refuse(format!(
            "the policy of {} no longer asks for approvals to enter {}: run `quiver stage set` \
             again",
            review.model,
            crate::domain::stage_label(review.stage)
        ))),
        (Some(role), Some(h)) if h >= role => Ok(()),
        (Some(role), h) => Err(refuse(format!(
            "they hold {} in the namespace of {}, and the approvals gate counts {role}",
            h.map_or("no role".to_string(), |h| h.to_string()),
            review.model
        ))),
    }
}

/// A version's metrics as gates see them: the registration's, overridden by each evaluation
/// record in the order recorded.
pub fn effective_metrics(version: &Version, evaluations: &[Evaluation]) -> BTreeMap<String, f64> {
    let mut metrics = version.metadata.metrics.clone();
    for e in evaluations {
        metrics.extend(e.metrics.iter().map(|(k, v)| (k.clone(), *v)));
    }
    metrics
}

/// Decides every gate of `policy` for entering `stage` (Staging or Production; any other stage
/// has none).
pub fn evaluate(policy: &Policy, stage: Stage, input: &GateInput<'_>) -> GateReport {
    let gates: &[Gate] = match stage {
        Stage::Staging => &policy.staging,
        Stage::Production => &policy.production,
        Stage::Experimental | Stage::Archived => &[],
    };
    let metrics = effective_metrics(input.version, input.evaluations);
    let production = input
        .production
        .map(|(v, evals)| (v.number, effective_metrics(v, evals)));
    let results = gates
        .iter()
        .map(|gate| decide(gate, input, &metrics, production.as_ref()))
        .collect();
    GateReport { stage, results }
}

fn decide(
    gate: &Gate,
    input: &GateInput<'_>,
    metrics: &BTreeMap<String, f64>,
    production: Option<&(u64, BTreeMap<String, f64>)>,
) -> GateResult {
    match gate {
        Gate::RequiredMetadata { fields } => {
            let missing: Vec<&str> = fields
                .iter()
                .filter(|f| !f.present(input.version))
                .map(|f| f.label())
                .collect();
            let labels: Vec<&str> = fields.iter().map(|f| f.label()).collect();
            GateResult {
                gate: format!("required metadata: {}", labels.join(", ")),
                passed: missing.is_empty(),
                detail: match missing.is_empty() {
                    true => "all present".into(),
                    false => format!(
                        "missing {}: register a version that carries it (the feature set is \
                         the `feature_set` tag)",
                        missing.join(", ")
                    ),
                },
            }
        }
        Gate::Metric {
            metric,
            op,
            value,
            production_delta,
            tolerance,
        } => {
            let (threshold, against) = match (value, production_delta, production) {
                (Some(v), _, _) => (Some(*v), format!("{v}")),
                (None, Some(delta), Some((number, prod))) => match prod.get(metric) {
                    Some(p) => (
                        Some(p + delta),
                        format!("production (v{number}) {p} + {delta}"),
                    ),
                    None => (None, format!("production (v{number}) has no {metric}")),
                },
                (None, Some(_), None) => (None, "no production version".into()),
                (None, None, _) => (None, "no threshold".into()),
            };
            let gate_text = match (value, production_delta) {
                (Some(v), _) => format!("metric {metric} {op} {v}"),
                (None, Some(d)) => format!("metric {metric} {op} production.{metric} + {d}"),
                (None, None) => format!("metric {metric}"),
            };
            let gate_text = match *tolerance > 0.0 {
                true => format!("{gate_text} (tolerance {tolerance})"),
                false => gate_text,
            };
            let Some(threshold) = threshold else {
                // Nothing to compare with (no Production version yet, or it lacks the metric):
                // a relative gate has nothing to beat.
                return GateResult {
                    gate: gate_text,
                    passed: true,
                    detail: format!("{against}: nothing to compare with"),
                };
            };
            match metrics.get(metric) {
                None => GateResult {
                    gate: gate_text,
                    passed: false,
                    detail: format!(
                        "{metric} is not recorded: post it with `quiver version eval REF --kind \
                         KIND --metric {metric}=VALUE`"
                    ),
                },
                Some(&found) => {
                    let passed = op.holds(found, threshold, *tolerance);
                    GateResult {
                        gate: gate_text,
                        passed,
                        detail: match passed {
                            true => format!("{metric} = {found}"),
                            false => format!(
                                "{metric} = {found}, needs {op} {threshold} ({against}, \
                                 tolerance {tolerance})"
                            ),
                        },
                    }
                }
            }
        }
        Gate::Evaluation { eval_kind, bounds } => {
            let gate_text = match bounds.is_empty() {
                true => format!("evaluation {eval_kind}"),
                false => {
                    let b: Vec<String> = bounds
                        .iter()
                        .map(|b| format!("{} {} {}", b.metric, b.op, b.value))
                        .collect();
                    format!("evaluation {eval_kind} with {}", b.join(", "))
                }
            };
            let Some(newest) = input
                .evaluations
                .iter()
                .rev()
                .find(|e| &e.kind == eval_kind)
            else {
                return GateResult {
                    gate: gate_text,
                    passed: false,
                    detail: format!(
                        "no {eval_kind} evaluation recorded: post one with `quiver version eval \
                         REF --kind {eval_kind} --metric NAME=VALUE`"
                    ),
                };
            };
            let failures: Vec<String> = bounds
                .iter()
                .filter_map(|b| match newest.metrics.get(&b.metric) {
                    None => Some(format!("{} is missing", b.metric)),
                    Some(&v) if !b.op.holds(v, b.value, 0.0) => {
                        Some(format!("{} = {v}, needs {} {}", b.metric, b.op, b.value))
                    }
                    Some(_) => None,
                })
                .collect();
            GateResult {
                gate: gate_text,
                passed: failures.is_empty(),
                detail: match failures.is_empty() {
                    true => format!("evaluation #{} within bounds", newest.seq),
                    false => format!(
                        "evaluation #{}: {}; post a new {eval_kind} evaluation within bounds",
                        newest.seq,
                        failures.join(", ")
                    ),
                },
            }
        }
        Gate::SignatureCompatible {} => {
            let gate = "signature compatible with production".to_string();
            let Some((prod, _)) = input.production else {
                return GateResult {
                    gate,
                    passed: true,
                    detail: "no production version: nothing to compare with".into(),
                };
            };
            let (Some(old), Some(new)) = (
                schema_of(&prod.signature),
                schema_of(&input.version.signature),
            ) else {
                return GateResult {
                    gate,
                    passed: false,
                    detail: format!(
                        "v{} or this version has a signature with an unknown dtype: it cannot be \
                         compared",
                        prod.number
                    ),
                };
            };
            let compat = quiver_api::schema::compatibility(&old, &new);
            let breaking: Vec<String> = compat.breaking().map(|c| c.detail.clone()).collect();
            match (breaking.is_empty(), input.signature_override) {
                (true, _) => GateResult {
                    gate,
                    passed: true,
                    detail: format!("compatible with v{}", prod.number),
                },
                (false, Some(o)) => GateResult {
                    gate,
                    passed: true,
                    detail: format!(
                        "breaks callers of v{} ({}), overridden by {}: {}",
                        prod.number,
                        breaking.join("; "),
                        o.principal,
                        o.reason
                    ),
                },
                (false, None) => GateResult {
                    gate,
                    passed: false,
                    detail: format!(
                        "breaks callers of v{}: {}; register a compatible version, or an \
                         approver accepts it with `quiver stage set REF STAGE --override-signature \
                         --reason …`",
                        prod.number,
                        breaking.join("; ")
                    ),
                },
            }
        }
        Gate::Approvals { count, role } => {
            let counted: Vec<&str> = input
                .approvals
                .iter()
                .filter(|a| a.role >= *role && a.principal != input.version.created_by.name)
                .map(|a| a.principal.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let have = counted.len() as u32;
            GateResult {
                gate: format!("{count} approval(s) by {role}"),
                passed: have >= *count,
                detail: match have >= *count {
                    true => format!("approved by {}", counted.join(", ")),
                    false => format!(
                        "{have} of {count} approval(s){}: a principal holding {role} other than \
                         the registrant {} approves with `quiver review approve ID`",
                        match counted.is_empty() {
                            true => String::new(),
                            false => format!(" ({})", counted.join(", ")),
                        },
                        input.version.created_by.name
                    ),
                },
            }
        }
    }
}

/// The policy that applies to a model of `namespace` and `tier`, from the policies set at each
/// scope (looked up by `find`).
pub fn applicable(
    model: &str,
    namespace: &str,
    tier: RiskTier,
    mut find: impl FnMut(&PolicyScope) -> Option<Policy>,
) -> (Option<PolicyScope>, Policy) {
    let scopes = [
        PolicyScope::Model(model.to_string()),
        PolicyScope::Namespace {
            namespace: namespace.to_string(),
            tier: Some(tier),
        },
        PolicyScope::Namespace {
            namespace: namespace.to_string(),
            tier: None,
        },
    ];
    for scope in scopes {
        if let Some(policy) = find(&scope) {
            return (Some(scope), policy);
        }
    }
    (None, Policy::default())
}

fn invalid(field: &str, detail: String) -> DomainError {
    DomainError::invalid(field, detail)
}

/// A metric's or an evaluation kind's name: 1 to [`METRIC_NAME_BYTES_MAX`] bytes of printable
/// ASCII without spaces (`ndcg@10`, `auc`, `dp_gap`).
pub fn validate_metric_name(field: &str, name: &str) -> Result<(), DomainError> {
    let ok = !name.is_empty()
        && name.len() <= METRIC_NAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_graphic());
    match ok {
        true => Ok(()),
        false => Err(invalid(
            field,
            format!(
                "{} is not a valid name: use 1-{METRIC_NAME_BYTES_MAX} printable ASCII \
                 characters without spaces",
                crate::domain::shown(name)
            ),
        )),
    }
}

fn validate_number(field: &str, value: f64) -> Result<(), DomainError> {
    match value.is_finite() {
        true => Ok(()),
        false => Err(invalid(field, format!("{value} is not a finite number"))),
    }
}

/// Checks a policy's every field and bound (no state needed).
pub fn validate_policy(policy: &Policy) -> Result<(), DomainError> {
    for (stage, gates) in [
        ("staging", &policy.staging),
        ("production", &policy.production),
    ] {
        if gates.len() > GATES_PER_STAGE_MAX {
            return Err(invalid(
                stage,
                format!(
                    "{} gates is over the limit of {GATES_PER_STAGE_MAX}",
                    gates.len()
                ),
            ));
        }
        for gate in gates {
            match gate {
                Gate::RequiredMetadata { fields } => {
                    if fields.is_empty() || fields.len() > 5 {
                        return Err(invalid(
                            "required_metadata.fields",
                            "list 1 to 5 of data_snapshot, code_commit, run_id, signature, \
                             feature_set"
                                .into(),
                        ));
                    }
                }
                Gate::Metric {
                    metric,
                    value,
                    production_delta,
                    tolerance,
                    ..
                } => {
                    validate_metric_name("metric.metric", metric)?;
                    match (value, production_delta) {
                        (Some(v), None) => validate_number("metric.value", *v)?,
                        (None, Some(d)) => validate_number("metric.production_delta", *d)?,
                        _ => {
                            return Err(invalid(
                                "metric",
                                format!(
                                    "the gate on {metric} needs exactly one of `value` (a fixed \
                                     threshold) and `production_delta` (relative to Production)"
                                ),
                            ))
                        }
                    }
                    validate_number("metric.tolerance", *tolerance)?;
                    if *tolerance < 0.0 {
                        return Err(invalid(
                            "metric.tolerance",
                            format!("{tolerance} is negative"),
                        ));
                    }
                }
                Gate::SignatureCompatible {} => {}
                Gate::Approvals { count, role } => {
                    if *count == 0 || *count > APPROVALS_MAX {
                        return Err(invalid(
                            "approvals.count",
                            format!("{count} is not between 1 and {APPROVALS_MAX}"),
                        ));
                    }
                    if *role < Role::Approver {
                        return Err(invalid(
                            "approvals.role",
                            format!("{role} cannot approve: use approver or admin"),
                        ));
                    }
                }
                Gate::Evaluation { eval_kind, bounds } => {
                    validate_metric_name("evaluation.eval_kind", eval_kind)?;
                    if bounds.len() > METRICS_PER_RECORD_MAX {
                        return Err(invalid(
                            "evaluation.bounds",
                            format!("over the limit of {METRICS_PER_RECORD_MAX}"),
                        ));
                    }
                    for b in bounds {
                        validate_metric_name("evaluation.bounds.metric", &b.metric)?;
                        validate_number("evaluation.bounds.value", b.value)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Checks a policy scope's names.
pub fn validate_scope(scope: &PolicyScope) -> Result<(), DomainError> {
    match scope {
        PolicyScope::Model(name) => validate_name("model", name),
        PolicyScope::Namespace { namespace, .. } => validate_name("namespace", namespace),
    }
}

/// Checks a review decision's comment.
pub fn validate_comment(comment: &str) -> Result<(), DomainError> {
    if comment.len() > REVIEW_COMMENT_BYTES_MAX || comment.contains('\0') {
        return Err(invalid(
            "comment",
            format!("at most {REVIEW_COMMENT_BYTES_MAX} bytes of text without NUL"),
        ));
    }
    Ok(())
}

/// Checks an evaluation record's fields.
pub fn validate_evaluation(
    kind: &str,
    metrics: &BTreeMap<String, f64>,
    summary: &str,
) -> Result<(), DomainError> {
    validate_metric_name("kind", kind)?;
    if metrics.len() > METRICS_PER_RECORD_MAX {
        return Err(invalid(
            "metrics",
            format!(
                "{} metrics is over the limit of {METRICS_PER_RECORD_MAX}",
                metrics.len()
            ),
        ));
    }
    for (name, value) in metrics {
        validate_metric_name("metrics", name)?;
        validate_number(&format!("metrics.{name}"), *value)?;
    }
    if summary.len() > EVAL_SUMMARY_BYTES_MAX || summary.contains('\0') {
        return Err(invalid(
            "summary",
            format!("at most {EVAL_SUMMARY_BYTES_MAX} bytes of text without NUL"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
