//! `quiver policy …`, `quiver review …`, `quiver version eval|evaluations` and `quiver stage
//! check`: the governance commands. A policy is a JSON document (see `quiver policy set --help`);
//! gate reports name each gate, whether it passed, and what would satisfy it.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::args::{parse_metric, Output, UsageError};
use super::commands::{print_one, Node};
use super::view::{fields, indent, or_dash, stage_text, table, time_text, VersionView};
use super::{OutputArgs, ReadArgs};
use crate::proto::{
    self, GateReport, ListReviewsRequest, PolicyScope, RecordEvaluationRequest, Review, Stage,
};

/// Longest evaluation report file `--report` hashes (it is never sent, only its digest).
const REPORT_FILE_NAME_MAX: usize = 256;

const POLICY_HELP: &str = "\
A policy is JSON: {\"staging\": [GATE…], \"production\": [GATE…], \"auto_promote\": BOOL}.
Gates:
  {\"kind\": \"required_metadata\", \"fields\": [\"data_snapshot\", \"code_commit\", \"run_id\", \"signature\", \"feature_set\"]}
  {\"kind\": \"metric\", \"metric\": \"auc\", \"op\": \">=\", \"value\": 0.8}
  {\"kind\": \"metric\", \"metric\": \"ndcg@10\", \"op\": \">=\", \"production_delta\": 0.005, \"tolerance\": 0.001}
  {\"kind\": \"evaluation\", \"eval_kind\": \"fairness\", \"bounds\": [{\"metric\": \"dp_gap\", \"op\": \"<=\", \"value\": 0.05}]}
  {\"kind\": \"approvals\", \"count\": 1, \"role\": \"approver\"}
  {\"kind\": \"signature_compatible\"}   (an approver may accept a break: stage set --override-signature)
With auto_promote, a version enters Staging as soon as an evaluation makes its Staging gates pass.
A stage change whose only failing gates are approvals opens a review (`quiver review`).";

/// Where a policy is set: a model, or a namespace (for one risk tier or all).
#[derive(Debug, Args)]
pub struct ScopeArgs {
    /// The model's own policy (overrides its namespace's).
    #[arg(
        long,
        conflicts_with = "namespace",
        required_unless_present = "namespace"
    )]
    pub model: Option<String>,
    /// The policy of a namespace's models.
    #[arg(long)]
    pub namespace: Option<String>,
    /// With --namespace: only for models of this risk tier (low, medium, high).
    #[arg(long, requires = "namespace")]
    pub tier: Option<String>,
}

impl ScopeArgs {
    fn scope(&self) -> PolicyScope {
        PolicyScope {
            model: self.model.clone().unwrap_or_default(),
            namespace: self.namespace.clone().unwrap_or_default(),
            tier: self.tier.clone().unwrap_or_default(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Set the policy of a model or a namespace from a JSON file (admins).
    #[command(after_help = POLICY_HELP)]
    Set {
        #[command(flatten)]
        scope: ScopeArgs,
        /// The policy document (JSON); `-` reads standard input.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show the policy set at a scope; with --effective and --model, the one that applies.
    Show {
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(long, requires = "model")]
        effective: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Remove the policy set at a scope (admins).
    Clear {
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Every policy set, in the namespaces you may read.
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// Review requests: open ones by default.
    List {
        #[arg(long)]
        model: Option<String>,
        /// Closed ones too (promoted, rejected, closed).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// One review: its version, the gates, approvals given and voided.
    Show {
        id: u64,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Approve a review (approvers; never the version's registrant, never twice). The approval
    /// that completes the gates moves the version.
    Approve {
        id: u64,
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Reject a review: final for this request.
    Reject {
        id: u64,
        /// Why (required).
        #[arg(long)]
        comment: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `quiver version eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// MODEL/N, MODEL@ALIAS or MODEL:STAGE.
    pub reference: String,
    /// What was evaluated: offline, fairness, calibration, ab-test, …
    #[arg(long)]
    pub kind: String,
    /// A result; the value must be a number. Repeatable.
    #[arg(long = "metric", value_name = "KEY=NUMBER", value_parser = parse_metric)]
    pub metrics: Vec<(String, f64)>,
    /// A note on the evaluation.
    #[arg(long, default_value = "")]
    pub summary: String,
    /// A report file: its name and blake3 digest are recorded (the file stays with you).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

// ------------------------------------------------------------------ views

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GateView {
    pub gate: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GateReportView {
    pub stage: String,
    pub passed: bool,
    pub gates: Vec<GateView>,
}

impl From<&GateReport> for GateReportView {
    fn from(r: &GateReport) -> Self {
        GateReportView {
            stage: stage_text(r.stage),
            passed: r.passed,
            gates: r
                .results
                .iter()
                .map(|g| GateView {
                    gate: g.gate.clone(),
                    passed: g.passed,
                    detail: g.detail.clone(),
                })
                .collect(),
        }
    }
}

impl GateReportView {
    pub fn text(&self) -> String {
        if self.gates.is_empty() {
            return format!("no gates for entering {}\n", self.stage);
        }
        let rows: Vec<Vec<String>> = self
            .gates
            .iter()
            .map(|g| {
                vec![
                    if g.passed { "pass" } else { "FAIL" }.to_string(),
                    g.gate.clone(),
                    g.detail.clone(),
                ]
            })
            .collect();
        let failed = self.gates.iter().filter(|g| !g.passed).count();
        format!(
            "{} for entering {}: {} of {} gate(s) pass\n{}",
            if self.passed { "allowed" } else { "refused" },
            self.stage,
            self.gates.len() - failed,
            self.gates.len(),
            table(&["", "GATE", "DETAIL"], &rows)
        )
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ApprovalView {
    pub principal: String,
    pub role: String,
    pub at_ms: i64,
    pub comment: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct VoidedView {
    pub approvals: Vec<ApprovalView>,
    pub reason: String,
    pub at_ms: i64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ReviewView {
    pub id: u64,
    pub reference: String,
    pub stage: String,
    pub state: String,
    pub requested_by: String,
    pub requested_at_ms: i64,
    pub reason: String,
    pub approvals: Vec<ApprovalView>,
    pub voided: Vec<VoidedView>,
    pub closed_by: Option<String>,
    pub closed_at_ms: Option<i64>,
    pub closing_comment: String,
    pub report: Option<GateReportView>,
}

fn approval(a: &proto::Approval) -> ApprovalView {
    ApprovalView {
        principal: a.principal.clone(),
        role: a.role.clone(),
        at_ms: a.at_ms,
        comment: a.comment.clone(),
    }
}

impl From<&Review> for ReviewView {
    fn from(r: &Review) -> Self {
        ReviewView {
            id: r.id,
            reference: format!("{}/{}", r.model, r.version),
            stage: stage_text(r.stage),
            state: r.state.clone(),
            requested_by: r.requested_by.clone(),
            requested_at_ms: r.requested_at_ms,
            reason: r.reason.clone(),
            approvals: r.approvals.iter().map(approval).collect(),
            voided: r
                .voided
                .iter()
                .map(|v| VoidedView {
                    approvals: v.approvals.iter().map(approval).collect(),
                    reason: v.reason.clone(),
                    at_ms: v.at_ms,
                })
                .collect(),
            closed_by: (!r.closed_by.is_empty()).then(|| r.closed_by.clone()),
            closed_at_ms: (!r.closed_by.is_empty()).then_some(r.closed_at_ms),
            closing_comment: r.closing_comment.clone(),
            report: r.report.as_ref().map(Into::into),
        }
    }
}

impl ReviewView {
    pub fn detail(&self) -> String {
        let approvals = match self.approvals.is_empty() {
            true => "-".to_string(),
            false => self
                .approvals
                .iter()
                .map(|a| format!("{} ({}, {})", a.principal, a.role, time_text(a.at_ms)))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let mut pairs = vec![
            ("review", format!("#{}", self.id)),
            ("version", self.reference.clone()),
            ("to stage", self.stage.clone()),
            ("state", self.state.clone()),
            (
                "requested",
                format!(
                    "by {} at {}: {}",
                    self.requested_by,
                    time_text(self.requested_at_ms),
                    or_dash(&self.reason)
                ),
            ),
            ("approvals", approvals),
        ];
        for v in &self.voided {
            let who: Vec<&str> = v.approvals.iter().map(|a| a.principal.as_str()).collect();
            pairs.push((
                "voided",
                format!("{} at {}: {}", who.join(", "), time_text(v.at_ms), v.reason),
            ));
        }
        if let (Some(by), Some(at)) = (&self.closed_by, self.closed_at_ms) {
            pairs.push((
                "closed",
                format!(
                    "by {by} at {}: {}",
                    time_text(at),
                    or_dash(&self.closing_comment)
                ),
            ));
        }
        let mut out = fields(&pairs);
        if let Some(report) = &self.report {
            out.push_str("\ngates:\n");
            out.push_str(&indent(&report.text()));
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out
    }
}

fn reviews_table(reviews: &[ReviewView]) -> String {
    let rows: Vec<Vec<String>> = reviews
        .iter()
        .map(|r| {
            let waiting = r
                .report
                .as_ref()
                .map(|rep| rep.gates.iter().filter(|g| !g.passed).count())
                .unwrap_or(0);
            vec![
                r.id.to_string(),
                r.reference.clone(),
                r.stage.clone(),
                r.state.clone(),
                r.requested_by.clone(),
                r.approvals.len().to_string(),
                waiting.to_string(),
                time_text(r.requested_at_ms),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "VERSION",
            "STAGE",
            "STATE",
            "REQUESTED BY",
            "APPROVALS",
            "GATES FAILING",
            "REQUESTED AT",
        ],
        &rows,
    )
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PolicyView {
    pub scope: String,
    pub set: bool,
    pub policy: serde_json::Value,
}

impl From<&proto::PolicyView> for PolicyView {
    fn from(p: &proto::PolicyView) -> Self {
        PolicyView {
            scope: p.scope_label.clone(),
            set: p.set,
            policy: serde_json::from_str(&p.policy_json).unwrap_or(serde_json::Value::Null),
        }
    }
}

impl PolicyView {
    fn text(&self) -> String {
        format!(
            "{}{}\n{}\n",
            self.scope,
            if self.set { "" } else { " (not set)" },
            serde_json::to_string_pretty(&self.policy).unwrap_or_default()
        )
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EvaluationView {
    pub seq: u64,
    pub kind: String,
    pub metrics: std::collections::BTreeMap<String, f64>,
    pub summary: String,
    pub recorded_by: String,
    pub at_ms: i64,
}

impl From<&proto::Evaluation> for EvaluationView {
    fn from(e: &proto::Evaluation) -> Self {
        EvaluationView {
            seq: e.seq,
            kind: e.kind.clone(),
            metrics: e.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            summary: e.summary.clone(),
            recorded_by: e.recorded_by.clone(),
            at_ms: e.at_ms,
        }
    }
}

fn evaluations_table(evals: &[EvaluationView]) -> String {
    let rows: Vec<Vec<String>> = evals
        .iter()
        .map(|e| {
            let metrics: Vec<String> = e.metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                e.seq.to_string(),
                e.kind.clone(),
                metrics.join(" "),
                e.recorded_by.clone(),
                time_text(e.at_ms),
                or_dash(&e.summary),
            ]
        })
        .collect();
    table(&["SEQ", "KIND", "METRICS", "BY", "AT", "SUMMARY"], &rows)
}

// ------------------------------------------------------------------ handlers

fn read_policy_file(path: &PathBuf) -> anyhow::Result<String> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("read the policy from standard input")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("read the policy file {}", path.display()))?
    };
    // Checked here too, so a typo is named before anything is sent.
    serde_json::from_str::<serde_json::Value>(&text).map_err(|e| {
        UsageError(format!(
            "{} is not JSON: {e} (see `quiver policy set --help`)",
            path.display()
        ))
    })?;
    Ok(text)
}

pub async fn policy(node: &Node, command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Set {
            scope,
            file,
            output,
        } => {
            let text = read_policy_file(&file)?;
            let view = node
                .client()
                .await?
                .set_policy(scope.scope(), Some(text))
                .await?;
            print_one(output.output, &PolicyView::from(&view), |v| v.text())
        }
        PolicyCommand::Show {
            scope,
            effective,
            output,
        } => {
            let view = node
                .client()
                .await?
                .get_policy(scope.scope(), effective)
                .await?;
            print_one(output.output, &PolicyView::from(&view), |v| v.text())
        }
        PolicyCommand::Clear { scope } => {
            let view = node.client().await?.set_policy(scope.scope(), None).await?;
            outln!("cleared the {}", view.scope_label);
            Ok(())
        }
        PolicyCommand::List { output } => {
            let list = node.client().await?.list_policies().await?;
            let views: Vec<PolicyView> = list.policies.iter().map(Into::into).collect();
            print_one(output.output, &views, |views| {
                views
                    .iter()
                    .map(|v| v.text())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
    }
}

pub async fn review(node: &Node, command: ReviewCommand) -> anyhow::Result<()> {
    match command {
        ReviewCommand::List { model, all, read } => {
            let client = node.client().await?;
            let mut reviews = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_reviews(ListReviewsRequest {
                        model: model.clone().unwrap_or_default(),
                        all,
                        page_size: 0,
                        page_token,
                        consistency: 0,
                    })
                    .await?;
                reviews.extend(page.reviews.iter().map(ReviewView::from));
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            print_one(read.output, &reviews, |r| reviews_table(r))
        }
        ReviewCommand::Show { id, output } => {
            let review = node.client().await?.get_review(id).await?;
            print_one(output.output, &ReviewView::from(&review), |r| r.detail())
        }
        ReviewCommand::Approve {
            id,
            comment,
            output,
        } => decide(node, id, true, &comment, output.output).await,
        ReviewCommand::Reject {
            id,
            comment,
            output,
        } => {
            if comment.trim().is_empty() {
                return Err(UsageError("--comment is empty: say why it is rejected".into()).into());
            }
            decide(node, id, false, &comment, output.output).await
        }
    }
}

async fn decide(
    node: &Node,
    id: u64,
    approve: bool,
    comment: &str,
    output: Output,
) -> anyhow::Result<()> {
    let decision = node
        .client()
        .await?
        .decide_review(id, approve, comment)
        .await?;
    let review = decision
        .review
        .as_ref()
        .map(ReviewView::from)
        .context("the node sent no review")?;
    let version = decision.version.as_ref().map(VersionView::from);
    #[derive(Serialize)]
    struct Decision {
        review: ReviewView,
        version: Option<VersionView>,
    }
    let view = Decision { review, version };
    print_one(output, &view, |d| {
        let r = &d.review;
        match r.state.as_str() {
            "promoted" => format!(
                "review #{} approved: {} is now {}\n",
                r.id, r.reference, r.stage
            ),
            "rejected" => format!(
                "review #{} rejected: {} stays where it is\n",
                r.id, r.reference
            ),
            _ => format!(
                "review #{} approved ({} approval(s)); still waiting:\n{}",
                r.id,
                r.approvals.len(),
                r.report.as_ref().map(|rep| rep.text()).unwrap_or_default()
            ),
        }
    })
}

/// `quiver version eval`.
pub async fn eval(node: &Node, args: EvalArgs) -> anyhow::Result<()> {
    let mut summary = args.summary.clone();
    if let Some(path) = &args.report {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if name.is_empty() || name.len() > REPORT_FILE_NAME_MAX {
            return Err(UsageError(format!(
                "--report {}: name a file (at most {REPORT_FILE_NAME_MAX} bytes of name)",
                path.display()
            ))
            .into());
        }
        let mut hasher = blake3::Hasher::new();
        hasher
            .update_reader(
                std::fs::File::open(path)
                    .with_context(|| format!("open the report {}", path.display()))?,
            )
            .with_context(|| format!("read the report {}", path.display()))?;
        let digest = hasher.finalize().to_hex();
        let note = format!("report {name} blake3:{digest}");
        summary = match summary.is_empty() {
            true => note,
            false => format!("{summary}; {note}"),
        };
    }
    let response = node
        .client()
        .await?
        .record_evaluation(RecordEvaluationRequest {
            reference: args.reference.clone(),
            kind: args.kind.clone(),
            metrics: args.metrics.iter().cloned().collect(),
            summary,
        })
        .await?;
    #[derive(Serialize)]
    struct Recorded {
        evaluation: Option<EvaluationView>,
        version: Option<VersionView>,
        promoted: bool,
    }
    let view = Recorded {
        evaluation: response.evaluation.as_ref().map(Into::into),
        version: response.version.as_ref().map(VersionView::from),
        promoted: response.promoted,
    };
    print_one(args.output.output, &view, |v| {
        let reference = v
            .version
            .as_ref()
            .map(|v| v.reference.clone())
            .unwrap_or_default();
        let seq = v.evaluation.as_ref().map(|e| e.seq).unwrap_or_default();
        match v.promoted {
            true => format!(
                "recorded evaluation #{seq} of {reference}; its Staging gates pass: promoted to \
                 staging\n"
            ),
            false => format!("recorded evaluation #{seq} of {reference}\n"),
        }
    })
}

/// `quiver version evaluations`.
pub async fn evaluations(node: &Node, reference: &str, read: ReadArgs) -> anyhow::Result<()> {
    let list = node.client().await?.list_evaluations(reference).await?;
    let views: Vec<EvaluationView> = list.evaluations.iter().map(Into::into).collect();
    print_one(read.output, &views, |v| evaluations_table(v))
}

/// `quiver stage check`.
pub async fn check(
    node: &Node,
    reference: &str,
    stage: Stage,
    output: OutputArgs,
) -> anyhow::Result<()> {
    let report = node.client().await?.check_gates(reference, stage).await?;
    print_one(output.output, &GateReportView::from(&report), |r| r.text())
}
