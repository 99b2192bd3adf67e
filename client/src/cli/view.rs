//! What read commands print. The proto types are converted to view structs
//! here, at the edge, so `--output json` is a stable shape of our choosing:
//! enums as lowercase names, maps sorted, hashes hex, times as integer
//! milliseconds since the Unix epoch (`*_at_ms`). Tables show the same data
//! with times as RFC 3339 UTC.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::governance::{GateReportView, ReviewView};
use crate::proto::{
    Alias, Model, ModelVersion, NodeStatusResponse, RiskTier, Stage, StageTransition, VersionStatus,
};
use crate::reference::stage_name;
use crate::signature::SignatureJson;
use indicatif::HumanBytes;
use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ModelView {
    pub name: String,
    pub namespace: String,
    pub description: String,
    pub risk_tier: String,
    pub tags: BTreeMap<String, String>,
    pub created_by: String,
    pub created_by_authenticated: bool,
    pub created_at_ms: i64,
    pub version_count: u64,
    pub latest_version: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FileView {
    pub path: String,
    pub size_bytes: u64,
    pub mode: u32,
    pub chunk_count: u32,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MetadataView {
    pub data_snapshot_id: String,
    pub code_commit: String,
    pub pipeline_run_id: String,
    pub hyperparameters: BTreeMap<String, String>,
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TransitionView {
    pub from: String,
    pub to: String,
    pub actor: String,
    pub actor_authenticated: bool,
    pub at_ms: i64,
    pub reason: String,
    /// The gates that allowed it, when its stage had any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate_report: Option<GateReportView>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct VersionView {
    /// `model/number`, usable wherever a reference is expected.
    pub reference: String,
    pub model: String,
    pub version: u64,
    pub status: String,
    pub stage: String,
    pub manifest_root: String,
    pub total_size_bytes: u64,
    pub files: Vec<FileView>,
    pub signature: Option<SignatureJson>,
    pub metadata: MetadataView,
    pub tags: BTreeMap<String, String>,
    pub aliases: Vec<String>,
    pub created_by: String,
    pub created_by_authenticated: bool,
    pub created_at_ms: i64,
    pub stage_history: Vec<TransitionView>,
    /// The open review request of a stage change waiting for approvals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_review: Option<ReviewView>,
    /// The quarantines in force upstream of the version (`quiver lineage quarantine`), as
    /// `ENTITY (by WHO: REASON)`; absent when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quarantined_by: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AliasView {
    pub model: String,
    pub alias: String,
    pub version: u64,
    pub reference: String,
    pub updated_by: String,
    pub updated_by_authenticated: bool,
    pub updated_at_ms: i64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StatusView {
    pub node_id: u64,
    pub leader_id: Option<u64>,
    pub state: String,
    pub term: u64,
    pub last_applied_index: u64,
    pub last_log_index: u64,
    pub chunk_count: u64,
    /// Bytes of small versions kept in the replicated state (not in `chunk_count`).
    pub inline_bytes: u64,
    pub data_dir: String,
    pub state_digest: String,
    pub region: String,
    pub zone: String,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// Versions in Production downstream of a quarantine (`quiver lineage quarantine`), as
    /// `MODEL/N (ENTITY)`, when the caller may read the quarantines; absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quarantined_in_production: Vec<String>,
}

// ------------------------------------------------------------ conversions

/// A proto enum's lowercase name; a value this client does not know (a
/// newer node) prints as `unknown(N)` rather than failing.
fn enum_name<E: TryFrom<i32>>(value: i32, name: impl Fn(E) -> &'static str) -> String {
    E::try_from(value)
        .map(|known| name(known).to_string())
        .unwrap_or_else(|_| format!("unknown({value})"))
}

pub fn stage_text(value: i32) -> String {
    enum_name::<Stage>(value, stage_name)
}

pub fn risk_tier_text(value: i32) -> String {
    enum_name::<RiskTier>(value, |tier| match tier {
        RiskTier::Unspecified => "unspecified",
        RiskTier::Low => "low",
        RiskTier::Medium => "medium",
        RiskTier::High => "high",
    })
}

pub fn status_text(value: i32) -> String {
    enum_name::<VersionStatus>(value, |status| match status {
        VersionStatus::Unspecified => "unspecified",
        VersionStatus::Pending => "pending",
        VersionStatus::Ready => "ready",
        VersionStatus::Failed => "failed",
    })
}

fn sorted<V: Clone>(map: &std::collections::HashMap<String, V>) -> BTreeMap<String, V> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl From<&Model> for ModelView {
    fn from(model: &Model) -> Self {
        ModelView {
            name: model.name.clone(),
            namespace: model.namespace.clone(),
            description: model.description.clone(),
            risk_tier: risk_tier_text(model.risk_tier),
            tags: sorted(&model.tags),
            created_by: model.created_by.clone(),
            created_by_authenticated: model.created_by_authenticated,
            created_at_ms: model.created_at_ms,
            version_count: model.version_count,
            latest_version: model.latest_version,
        }
    }
}

/// A model a catalog search found.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CatalogHitView {
    #[serde(flatten)]
    pub model: ModelView,
    /// Versions per stage; stages without versions are absent.
    pub stage_counts: BTreeMap<String, u64>,
    pub production_version: Option<u64>,
    /// The Production version's metrics when searching by `--stage production`, else the
    /// newest version's.
    pub metrics: BTreeMap<String, f64>,
    pub quarantined: bool,
}

impl From<&crate::proto::CatalogHit> for CatalogHitView {
    fn from(hit: &crate::proto::CatalogHit) -> Self {
        CatalogHitView {
            model: ModelView::from(&hit.model.clone().unwrap_or_default()),
            stage_counts: sorted(&hit.stage_counts),
            production_version: (hit.production_version > 0).then_some(hit.production_version),
            metrics: sorted(&hit.metrics),
            quarantined: hit.quarantined,
        }
    }
}

impl CatalogHitView {
    pub fn table(hits: &[CatalogHitView]) -> String {
        let rows: Vec<Vec<String>> = hits
            .iter()
            .map(|h| {
                let stages: Vec<String> = ["production", "staging", "experimental", "archived"]
                    .iter()
                    .filter_map(|s| h.stage_counts.get(*s).map(|n| format!("{s}:{n}")))
                    .collect();
                let metrics: Vec<String> =
                    h.metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
                vec![
                    h.model.name.clone(),
                    or_dash(&h.model.namespace),
                    h.model.risk_tier.clone(),
                    or_dash(&stages.join(" ")),
                    h.production_version
                        .map_or("-".into(), |n| format!("{}/{n}", h.model.name)),
                    or_dash(&metrics.join(" ")),
                    if h.quarantined { "QUARANTINED" } else { "-" }.into(),
                    or_dash(&h.model.description),
                ]
            })
            .collect();
        table(
            &[
                "NAME",
                "NAMESPACE",
                "RISK",
                "STAGES",
                "PRODUCTION",
                "METRICS",
                "LINEAGE",
                "DESCRIPTION",
            ],
            &rows,
        )
    }
}

impl From<&StageTransition> for TransitionView {
    fn from(transition: &StageTransition) -> Self {
        TransitionView {
            from: stage_text(transition.from),
            to: stage_text(transition.to),
            actor: transition.actor.clone(),
            actor_authenticated: transition.actor_authenticated,
            at_ms: transition.at_ms,
            reason: transition.reason.clone(),
            gate_report: transition.gate_report.as_ref().map(Into::into),
        }
    }
}

impl From<&ModelVersion> for VersionView {
    fn from(version: &ModelVersion) -> Self {
        let metadata = version.metadata.clone().unwrap_or_default();
        let mut aliases = version.aliases.clone();
        aliases.sort();
        VersionView {
            reference: format!("{}/{}", version.model, version.version),
            model: version.model.clone(),
            version: version.version,
            status: status_text(version.status),
            stage: stage_text(version.stage),
            manifest_root: version.manifest_root.clone(),
            total_size_bytes: version.total_size_bytes,
            files: version
                .files
                .iter()
                .map(|file| FileView {
                    path: file.path.clone(),
                    size_bytes: file.size_bytes,
                    mode: file.mode,
                    chunk_count: file.chunk_count,
                })
                .collect(),
            signature: version.signature.as_ref().map(SignatureJson::from_proto),
            metadata: MetadataView {
                data_snapshot_id: metadata.data_snapshot_id,
                code_commit: metadata.code_commit,
                pipeline_run_id: metadata.pipeline_run_id,
                hyperparameters: sorted(&metadata.hyperparameters),
                metrics: sorted(&metadata.metrics),
            },
            tags: sorted(&version.tags),
            aliases,
            created_by: version.created_by.clone(),
            created_by_authenticated: version.created_by_authenticated,
            created_at_ms: version.created_at_ms,
            stage_history: version.stage_history.iter().map(Into::into).collect(),
            pending_review: version.pending_review.as_ref().map(Into::into),
            quarantined_by: version
                .quarantined_by
                .iter()
                .map(|q| format!("{} (by {}: {})", q.entity, q.by, q.reason))
                .collect(),
        }
    }
}

impl From<&Alias> for AliasView {
    fn from(alias: &Alias) -> Self {
        AliasView {
            model: alias.model.clone(),
            alias: alias.alias.clone(),
            version: alias.version,
            reference: format!("{}/{}", alias.model, alias.version),
            updated_by: alias.updated_by.clone(),
            updated_by_authenticated: alias.updated_by_authenticated,
            updated_at_ms: alias.updated_at_ms,
        }
    }
}

impl From<&NodeStatusResponse> for StatusView {
    fn from(status: &NodeStatusResponse) -> Self {
        StatusView {
            node_id: status.node_id,
            leader_id: status.leader_id,
            state: status.state.clone(),
            term: status.term,
            last_applied_index: status.last_applied_index,
            last_log_index: status.last_log_index,
            chunk_count: status.chunk_count,
            inline_bytes: status.inline_bytes,
            data_dir: status.data_dir.clone(),
            state_digest: status.state_digest.clone(),
            region: status.region.clone(),
            zone: status.zone.clone(),
            snapshot_index: status.snapshot_index,
            purged_index: status.purged_index,
            quarantined_in_production: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------- tables

/// Columns aligned to their widest cell; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            if index + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[index].saturating_sub(cell.chars().count());
                let _ = write!(line, "{cell}{}  ", " ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `label: value` lines with the values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(label, _)| label.len())
        .max()
        .unwrap_or(0)
        + 1;
    let mut out = String::new();
    for (label, value) in pairs {
        let _ = writeln!(out, "{:<width$} {value}", format!("{label}:"));
    }
    out
}

fn map_text<V: std::fmt::Display>(map: &BTreeMap<String, V>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_string()
    }
}

fn actor_text(actor: &str, authenticated: bool) -> String {
    if actor.is_empty() {
        "-".into()
    } else if authenticated {
        actor.to_string()
    } else {
        format!("{actor} (unauthenticated)")
    }
}

/// RFC 3339 UTC to the second; `-` for an unset (zero or negative) time.
pub fn time_text(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let seconds = ms.div_euclid(1000);
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl ModelView {
    pub fn table(models: &[ModelView]) -> String {
        let rows: Vec<Vec<String>> = models
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    or_dash(&m.namespace),
                    m.risk_tier.clone(),
                    m.version_count.to_string(),
                    time_text(m.created_at_ms),
                    or_dash(&m.description),
                ]
            })
            .collect();
        table(
            &[
                "NAME",
                "NAMESPACE",
                "RISK",
                "VERSIONS",
                "CREATED",
                "DESCRIPTION",
            ],
            &rows,
        )
    }

    pub fn detail(&self) -> String {
        fields(&[
            ("name", self.name.clone()),
            ("namespace", or_dash(&self.namespace)),
            ("description", or_dash(&self.description)),
            ("risk tier", self.risk_tier.clone()),
            ("tags", map_text(&self.tags)),
            ("versions", self.version_count.to_string()),
            ("latest version", self.latest_version.to_string()),
            (
                "created by",
                actor_text(&self.created_by, self.created_by_authenticated),
            ),
            ("created at", time_text(self.created_at_ms)),
        ])
    }
}

impl VersionView {
    pub fn table(versions: &[VersionView]) -> String {
        let rows: Vec<Vec<String>> = versions
            .iter()
            .map(|v| {
                vec![
                    v.reference.clone(),
                    match v.quarantined_by.is_empty() {
                        true => v.stage.clone(),
                        false => format!("{} QUARANTINED", v.stage),
                    },
                    v.status.clone(),
                    HumanBytes(v.total_size_bytes).to_string(),
                    v.files.len().to_string(),
                    if v.aliases.is_empty() {
                        "-".into()
                    } else {
                        v.aliases.join(",")
                    },
                    time_text(v.created_at_ms),
                ]
            })
            .collect();
        table(
            &[
                "VERSION", "STAGE", "STATUS", "SIZE", "FILES", "ALIASES", "CREATED",
            ],
            &rows,
        )
    }

    pub fn detail(&self) -> String {
        let aliases = if self.aliases.is_empty() {
            "-".to_string()
        } else {
            self.aliases.join(", ")
        };
        let mut out = fields(&[
            ("version", self.reference.clone()),
            ("stage", self.stage.clone()),
            ("status", self.status.clone()),
            ("manifest root", self.manifest_root.clone()),
            (
                "size",
                format!(
                    "{} ({} bytes)",
                    HumanBytes(self.total_size_bytes),
                    self.total_size_bytes
                ),
            ),
            ("aliases", aliases),
            ("tags", map_text(&self.tags)),
            ("data snapshot", or_dash(&self.metadata.data_snapshot_id)),
            ("code commit", or_dash(&self.metadata.code_commit)),
            ("run id", or_dash(&self.metadata.pipeline_run_id)),
            ("params", map_text(&self.metadata.hyperparameters)),
            ("metrics", map_text(&self.metadata.metrics)),
            (
                "created by",
                actor_text(&self.created_by, self.created_by_authenticated),
            ),
            ("created at", time_text(self.created_at_ms)),
        ]);
        if !self.quarantined_by.is_empty() {
            out.push_str(&format!(
                "\nQUARANTINED upstream: {}\n  it may not enter staging or production; if it \
                 serves, demote it (`quiver stage set {} archived --reason …`)\n",
                self.quarantined_by.join("; "),
                self.reference
            ));
        }
        out.push_str("\nfiles:\n");
        let rows: Vec<Vec<String>> = self
            .files
            .iter()
            .map(|f| {
                vec![
                    f.path.clone(),
                    f.size_bytes.to_string(),
                    format!("{:o}", f.mode),
                    f.chunk_count.to_string(),
                ]
            })
            .collect();
        out.push_str(&indent(&table(&["PATH", "BYTES", "MODE", "CHUNKS"], &rows)));
        if let Some(signature) = &self.signature {
            out.push_str("\nsignature:\n");
            let rows: Vec<Vec<String>> =
                [("input", &signature.inputs), ("output", &signature.outputs)]
                    .into_iter()
                    .flat_map(|(side, tensors)| {
                        tensors.iter().map(move |t| {
                            vec![
                                side.to_string(),
                                t.name.clone(),
                                t.dtype.clone(),
                                format!("{:?}", t.shape),
                                if t.optional { "optional" } else { "required" }.to_string(),
                            ]
                        })
                    })
                    .collect();
            out.push_str(&indent(&table(
                &["SIDE", "NAME", "DTYPE", "SHAPE", ""],
                &rows,
            )));
        }
        if !self.stage_history.is_empty() {
            out.push_str("\nstage history:\n");
            let rows: Vec<Vec<String>> = self
                .stage_history
                .iter()
                .map(|t| {
                    vec![
                        time_text(t.at_ms),
                        format!("{} -> {}", t.from, t.to),
                        actor_text(&t.actor, t.actor_authenticated),
                        or_dash(&t.reason),
                    ]
                })
                .collect();
            out.push_str(&indent(&table(
                &["AT", "TRANSITION", "BY", "REASON"],
                &rows,
            )));
            if let Some(report) = self
                .stage_history
                .last()
                .and_then(|t| t.gate_report.as_ref())
            {
                out.push_str(
                    "
gates of the last transition:
",
                );
                out.push_str(&indent(&report.text()));
            }
        }
        if let Some(review) = &self.pending_review {
            out.push_str(&format!(
                "
pending review #{} (to {}, {} approval(s)): `quiver review show {}`\n",
                review.id,
                review.stage,
                review.approvals.len(),
                review.id
            ));
        }
        out
    }
}

impl AliasView {
    pub fn detail(&self) -> String {
        fields(&[
            ("alias", format!("{}@{}", self.model, self.alias)),
            ("version", self.reference.clone()),
            (
                "updated by",
                actor_text(&self.updated_by, self.updated_by_authenticated),
            ),
            ("updated at", time_text(self.updated_at_ms)),
        ])
    }
}

impl StatusView {
    pub fn detail(&self) -> String {
        let mut out = fields(&[
            ("node", self.node_id.to_string()),
            ("state", or_dash(&self.state)),
            (
                "leader",
                self.leader_id
                    .map(|id| id.to_string())
                    .unwrap_or_else(|| "none known".into()),
            ),
            ("term", self.term.to_string()),
            ("last applied", self.last_applied_index.to_string()),
            ("last log index", self.last_log_index.to_string()),
            ("chunks", self.chunk_count.to_string()),
            (
                "small versions",
                format!(
                    "{} in the state, not in chunks",
                    HumanBytes(self.inline_bytes)
                ),
            ),
            ("data dir", or_dash(&self.data_dir)),
            (
                "region/zone",
                format!("{}/{}", or_dash(&self.region), or_dash(&self.zone)),
            ),
            ("state digest", or_dash(&self.state_digest)),
        ]);
        if !self.quarantined_in_production.is_empty() {
            out.push_str(&format!(
                "QUARANTINED in production: {} (see `quiver lineage quarantines`)\n",
                self.quarantined_in_production.join(", ")
            ));
        }
        out
    }
}

pub fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{FileInfo, Signature, TensorSpec, VersionMetadata};

    fn version() -> ModelVersion {
        ModelVersion {
            model: "reco".into(),
            version: 3,
            manifest_root: "ab".repeat(32),
            files: vec![FileInfo {
                path: "w.bin".into(),
                size_bytes: 10,
                mode: 0o644,
                chunk_count: 1,
            }],
            total_size_bytes: 10,
            signature: Some(Signature {
                inputs: vec![TensorSpec {
                    name: "x".into(),
                    dtype: "float32".into(),
                    shape: vec![-1, 2],
                    optional: false,
                }],
                outputs: vec![],
            }),
            metadata: Some(VersionMetadata {
                data_snapshot_id: "snap-47".into(),
                metrics: [("auc".to_string(), 0.9)].into_iter().collect(),
                ..Default::default()
            }),
            tags: [
                ("b".to_string(), "2".to_string()),
                ("a".to_string(), "1".to_string()),
            ]
            .into_iter()
            .collect(),
            stage: Stage::Production.into(),
            status: VersionStatus::Ready.into(),
            aliases: vec!["champion".into()],
            created_by: "alice".into(),
            created_at_ms: 1_700_000_000_123,
            stage_history: vec![StageTransition {
                from: Stage::Staging.into(),
                to: Stage::Production.into(),
                actor: "bob".into(),
                at_ms: 1_700_000_500_000,
                reason: "ab test won".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn version_json_has_a_stable_shape() {
        let json = serde_json::to_value(VersionView::from(&version())).unwrap();
        let expected = serde_json::json!({
            "reference": "reco/3",
            "model": "reco",
            "version": 3,
            "status": "ready",
            "stage": "production",
            "manifest_root": "ab".repeat(32),
            "total_size_bytes": 10,
            "files": [{"path": "w.bin", "size_bytes": 10, "mode": 420, "chunk_count": 1}],
            "signature": {
                "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 2], "optional": false}],
                "outputs": []
            },
            "metadata": {
                "data_snapshot_id": "snap-47",
                "code_commit": "",
                "pipeline_run_id": "",
                "hyperparameters": {},
                "metrics": {"auc": 0.9}
            },
            "tags": {"a": "1", "b": "2"},
            "aliases": ["champion"],
            "created_by": "alice",
            "created_by_authenticated": false,
            "created_at_ms": 1_700_000_000_123i64,
            "stage_history": [{
                "from": "staging", "to": "production", "actor": "bob",
                "actor_authenticated": false, "at_ms": 1_700_000_500_000i64,
                "reason": "ab test won"
            }]
        });
        assert_eq!(json, expected);
        // Tags print in key order, whatever the HashMap's order was.
        let text = serde_json::to_string(&VersionView::from(&version())).unwrap();
        assert!(text.contains(r#""tags":{"a":"1","b":"2"}"#), "{text}");
    }

    #[test]
    fn unknown_enum_values_print_instead_of_failing() {
        assert_eq!(stage_text(42), "unknown(42)");
        assert_eq!(risk_tier_text(RiskTier::High.into()), "high");
        assert_eq!(status_text(VersionStatus::Pending.into()), "pending");
    }

    #[test]
    fn times_print_as_rfc3339_utc() {
        assert_eq!(time_text(0), "-");
        assert_eq!(time_text(1_000), "1970-01-01T00:00:01Z");
        assert_eq!(time_text(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(time_text(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["NAME", "N"],
            &[
                vec!["a".into(), "1".into()],
                vec!["longer".into(), "22".into()],
            ],
        );
        assert_eq!(text, "NAME    N\na       1\nlonger  22\n");
    }

    #[test]
    fn version_detail_shows_files_signature_and_history() {
        let text = VersionView::from(&version()).detail();
        assert!(text.contains("version:"), "{text}");
        assert!(text.contains("reco/3"), "{text}");
        assert!(text.contains("w.bin"), "{text}");
        assert!(text.contains("644"), "{text}");
        assert!(text.contains("float32"), "{text}");
        assert!(text.contains("staging -> production"), "{text}");
        assert!(text.contains("bob (unauthenticated)"), "{text}");
    }
}
