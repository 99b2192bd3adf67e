//! Domain types of the registry and the validation of everything a client
//! may send. These are stored (serde JSON inside LMDB) and replicated, so
//! maps are `BTreeMap`: nothing hashed or replicated depends on `HashMap`
//! iteration order. Protobuf types are converted to these at the API edge
//! (`service::convert`); the domain knows nothing of the wire format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Limits on every field a client controls. Each is tested at its edge.
pub mod limits {
    pub const NAME_BYTES_MAX: usize = 64;
    pub const DESCRIPTION_BYTES_MAX: usize = 4096;
    pub const TAGS_MAX: usize = 64;
    pub const TAG_KEY_BYTES_MAX: usize = 128;
    pub const TAG_VALUE_BYTES_MAX: usize = 1024;
    pub const PARAMS_MAX: usize = 256;
    pub const PARAM_VALUE_BYTES_MAX: usize = 1024;
    pub const METRICS_MAX: usize = 256;
    pub const ID_BYTES_MAX: usize = 256;
    pub const SIGNATURE_TENSORS_MAX: usize = 256;
    pub const TENSOR_RANK_MAX: usize = 16;
    pub const REASON_BYTES_MAX: usize = 1024;
    pub const ALIASES_PER_MODEL_MAX: usize = 64;
    pub const PAGE_SIZE_DEFAULT: usize = 100;
    pub const PAGE_SIZE_MAX: usize = 1000;
    /// A version whose chunks total at most this many bytes travels inside its registration
    /// command instead of through the chunk stores (decision 0010). Bounds a command's size:
    /// a Raft entry of `WRITE_BATCH_MAX` (256) such commands is about 5.5 MiB of base64.
    pub const INLINE_VERSION_BYTES_MAX: usize = 16 * 1024;
    /// Past this many bytes of small versions kept in the state, nodes stop inlining (later
    /// small versions go through the chunk stores): the state's snapshot, where these bytes
    /// appear as hex, must stay well below its 2 GiB frame limit.
    pub const INLINE_STATE_BYTES_MAX: u64 = 256 << 20;
}

use limits::*;

/// Who did something. Until access control lands the name is whatever the
/// client declared, and `authenticated` is false.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub name: String,
    pub authenticated: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RiskTier {
    Low,
    Medium,
    High,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Stage {
    Experimental,
    Staging,
    Production,
    Archived,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionStatus {
    Pending,
    Ready,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    pub name: String,
    pub namespace: String,
    pub description: String,
    pub risk_tier: RiskTier,
    pub tags: BTreeMap<String, String>,
    pub created_by: Actor,
    pub created_at_ms: i64,
    /// Number of versions registered so far; the next version is this + 1.
    pub version_count: u64,
    /// The version now in Production, if any: at most one per model.
    pub production_version: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<i64>,
    pub optional: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// Registration metadata. Metrics are kept as their exact f64 bit pattern
/// so that state digests compare bit for bit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionMetadata {
    pub data_snapshot_id: String,
    pub code_commit: String,
    pub pipeline_run_id: String,
    pub hyperparameters: BTreeMap<String, String>,
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub path: String,
    pub size_bytes: u64,
    pub mode: u32,
    pub chunk_count: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTransition {
    pub from: Option<Stage>,
    pub to: Stage,
    pub actor: Actor,
    pub at_ms: i64,
    pub reason: String,
    /// The gates that allowed it, when its stage had any (Staging, Production).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_report: Option<crate::governance::GateReport>,
}

/// An immutable model version: `manifest_root`, `files`, `signature` and
/// `metadata` never change after creation. Stage, status and tags live
/// beside them and are the only fields a later command may touch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub model: String,
    pub number: u64,
    pub manifest_root: String,
    pub files: Vec<FileInfo>,
    pub total_size_bytes: u64,
    pub signature: Signature,
    pub metadata: VersionMetadata,
    pub created_by: Actor,
    pub created_at_ms: i64,
    pub tags: BTreeMap<String, String>,
    pub stage: Stage,
    pub status: VersionStatus,
    pub stage_history: Vec<StageTransition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    pub model: String,
    pub alias: String,
    pub version: u64,
    pub updated_by: Actor,
    pub updated_at_ms: i64,
}

/// A reference to one version of a model (`name/3`, `name@alias`, `name:stage`), as the state
/// resolves it. Parsed from the client's syntax at the API edge (`service::convert`); neither
/// stored nor replicated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRef {
    pub model: String,
    pub selector: VersionSelector,
}

/// What a [`VersionRef`] selects within its model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionSelector {
    Number(u64),
    Alias(String),
    /// The version in this stage; the newest one if several are (Production holds one).
    Stage(Stage),
}

/// A cluster member as the registry knows it: where clients, peers and
/// chunk transfers reach it, and where it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: u64,
    pub api_addr: String,
    pub peer_addr: String,
    pub quic_addr: String,
    pub region: String,
    pub zone: String,
}

/// A rejected request. Each variant names the object or field and, where
/// there is one, the fix. Produced both at the API edge and inside `apply`
/// (which re-checks everything, so a bad command can never change state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum DomainError {
    #[error("model '{name}' not found: create it with `quiver model create {name}`")]
    ModelNotFound { name: String },
    #[error("model '{name}' already exists")]
    ModelExists { name: String },
    #[error("version {model}/{number} not found (model '{model}' has {count} version(s))")]
    VersionNotFound {
        model: String,
        number: u64,
        count: u64,
    },
    #[error("alias '{alias}' not found on model '{model}': set it with `quiver alias set {model} {alias} VERSION`")]
    AliasNotFound { model: String, alias: String },
    #[error("model '{model}' has no version in stage {stage}")]
    StageEmpty { model: String, stage: String },
    #[error("this bundle (manifest root {root}) is already registered as {model}/{number}")]
    DuplicateBundle {
        model: String,
        number: u64,
        root: String,
    },
    #[error("version {model}/{number} is already in stage {stage}")]
    SameStage {
        model: String,
        number: u64,
        stage: String,
    },
    #[error("version {model}/{number} is {status}, not READY")]
    NotReady {
        model: String,
        number: u64,
        status: String,
    },
    #[error(
        "version {model}/{number} may not enter {stage}: {report}. See them all with `quiver \
         stage check {model}/{number} {stage}`"
    )]
    GatesFailed {
        model: String,
        number: u64,
        stage: String,
        report: String,
    },
    #[error("review #{id} not found: list them with `quiver review list`")]
    ReviewNotFound { id: u64 },
    #[error("review #{id} is {state}: only an open review takes decisions")]
    ReviewClosed { id: u64, state: String },
    /// Refused by a governance rule about who (four eyes, the role an approvals gate counts).
    #[error("{principal} may not {action}: {why}")]
    NotAllowed {
        principal: String,
        action: String,
        why: String,
    },
    #[error("endpoint {endpoint} not found: list them with `quiver deploy list`")]
    DeploymentNotFound { endpoint: String },
    #[error("logged model {id} not found: log it again (logged-models/create)")]
    LoggedModelNotFound { id: String },
    /// A deployment would route traffic to a version its stage does not allow (`crate::deploy`).
    #[error(
        "{model}/{number} is in {stage} and may not receive {what}: only a version in {needs} \
         may (promote it with `quiver stage set {model}/{number} …`)"
    )]
    NotServable {
        model: String,
        number: u64,
        stage: String,
        what: String,
        needs: String,
    },
    /// A deployment command that does not fit the endpoint's state (a rollout in progress, none
    /// to advance, a step already taken): the message says what to do instead.
    #[error("endpoint {endpoint}: {message}")]
    DeploymentState { endpoint: String, message: String },
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
}

impl DomainError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        DomainError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub type DomainResult<T> = Result<T, DomainError>;

pub fn stage_label(stage: Stage) -> &'static str {
    match stage {
        Stage::Experimental => "experimental",
        Stage::Staging => "staging",
        Stage::Production => "production",
        Stage::Archived => "archived",
    }
}

pub fn status_label(status: VersionStatus) -> &'static str {
    match status {
        VersionStatus::Pending => "PENDING",
        VersionStatus::Ready => "READY",
        VersionStatus::Failed => "FAILED",
    }
}

// ------------------------------------------------------------ validation

/// Names of models, namespaces and aliases: 1–64 bytes of `a-z 0-9 - _ .`,
/// starting with a letter or digit. The reference delimiters `/ @ :` can
/// never appear, so every reference parses one way.
pub fn validate_name(field: &str, value: &str) -> DomainResult<()> {
    let ok_start = value
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_chars = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    if value.is_empty() || value.len() > NAME_BYTES_MAX || !ok_start || !ok_chars {
        return Err(DomainError::invalid(
            field,
            format!(
                "{} is not a valid name: use 1-{NAME_BYTES_MAX} characters of a-z, 0-9, '-', '_', '.', \
                 starting with a letter or digit",
                shown(value)
            ),
        ));
    }
    Ok(())
}

/// `value` quoted for an error message: whole if short, else its start and its length.
pub fn shown(value: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 80;
    if value.chars().count() <= SHOWN_CHARS_MAX {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(SHOWN_CHARS_MAX).collect();
        format!("{head:?}… ({} bytes)", value.len())
    }
}

pub(crate) fn validate_text(field: &str, value: &str, bytes_max: usize) -> DomainResult<()> {
    if value.len() > bytes_max {
        return Err(DomainError::invalid(
            field,
            format!("{} bytes is over the limit of {bytes_max}", value.len()),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(DomainError::invalid(field, "contains control characters"));
    }
    Ok(())
}

pub(crate) fn validate_key(field: &str, key: &str, bytes_max: usize) -> DomainResult<()> {
    if key.is_empty() || key.len() > bytes_max || key.chars().any(|c| c.is_control() || c == '=') {
        return Err(DomainError::invalid(
            field,
            format!("key {key:?} must be 1-{bytes_max} bytes with no '=' or control characters"),
        ));
    }
    Ok(())
}

pub fn validate_tags(field: &str, tags: &BTreeMap<String, String>) -> DomainResult<()> {
    if tags.len() > TAGS_MAX {
        return Err(DomainError::invalid(
            field,
            format!("{} tags is over the limit of {TAGS_MAX}", tags.len()),
        ));
    }
    for (key, value) in tags {
        validate_key(field, key, TAG_KEY_BYTES_MAX)?;
        validate_text(&format!("{field}.{key}"), value, TAG_VALUE_BYTES_MAX)?;
    }
    Ok(())
}

/// Tag keys a change asks to remove: at most [`TAGS_MAX`] (no model or version holds more),
/// each a key a tag could have.
pub fn validate_tag_removals(field: &str, keys: &[String]) -> DomainResult<()> {
    if keys.len() > TAGS_MAX {
        return Err(DomainError::invalid(
            field,
            format!(
                "{} keys to remove is over the limit of {TAGS_MAX}",
                keys.len()
            ),
        ));
    }
    keys.iter()
        .try_for_each(|key| validate_key(field, key, TAG_KEY_BYTES_MAX))
}

pub fn validate_description(value: &str) -> DomainResult<()> {
    validate_text("description", value, DESCRIPTION_BYTES_MAX)
}

pub fn validate_reason(value: &str) -> DomainResult<()> {
    validate_text("reason", value, REASON_BYTES_MAX)
}

/// Mandatory lineage fields: a version that cannot be traced to its data,
/// code and run is not accepted.
pub fn validate_metadata(meta: &VersionMetadata) -> DomainResult<()> {
    validate_metadata_with(meta, true)
}

/// The tag a version registered through the MLflow-compatible API carries (value
/// [`REGISTERED_VIA_MLFLOW`]). MLflow has no fields for a version's lineage, so such a version
/// may be registered without it; a policy's required-metadata gate then holds it out of Staging
/// and Production until a version with it is registered.
pub const REGISTERED_VIA_TAG: &str = "quiver.registered_via";
pub const REGISTERED_VIA_MLFLOW: &str = "mlflow";

/// [`validate_metadata`], with the lineage fields optional for a version registered through the
/// MLflow API (tagged [`REGISTERED_VIA_TAG`]).
pub fn validate_version_metadata(
    meta: &VersionMetadata,
    tags: &BTreeMap<String, String>,
) -> DomainResult<()> {
    let via_mlflow =
        tags.get(REGISTERED_VIA_TAG).map(String::as_str) == Some(REGISTERED_VIA_MLFLOW);
    validate_metadata_with(meta, !via_mlflow)
}

fn validate_metadata_with(meta: &VersionMetadata, lineage_required: bool) -> DomainResult<()> {
    for (field, value, flag) in [
        (
            "metadata.data_snapshot_id",
            &meta.data_snapshot_id,
            "--data-snapshot ID",
        ),
        (
            "metadata.code_commit",
            &meta.code_commit,
            "--code-commit SHA",
        ),
        (
            "metadata.pipeline_run_id",
            &meta.pipeline_run_id,
            "--run-id ID",
        ),
    ] {
        if value.trim().is_empty() {
            if !lineage_required && value.is_empty() {
                continue;
            }
            return Err(DomainError::invalid(
                field,
                format!("is required (pass {flag}) so the version can be traced to its origin"),
            ));
        }
        validate_text(field, value, ID_BYTES_MAX)?;
    }
    if meta.hyperparameters.len() > PARAMS_MAX {
        return Err(DomainError::invalid(
            "metadata.hyperparameters",
            format!(
                "{} parameters is over the limit of {PARAMS_MAX}",
                meta.hyperparameters.len()
            ),
        ));
    }
    for (key, value) in &meta.hyperparameters {
        validate_key("metadata.hyperparameters", key, TAG_KEY_BYTES_MAX)?;
        validate_text(
            &format!("metadata.hyperparameters.{key}"),
            value,
            PARAM_VALUE_BYTES_MAX,
        )?;
    }
    if meta.metrics.len() > METRICS_MAX {
        return Err(DomainError::invalid(
            "metadata.metrics",
            format!(
                "{} metrics is over the limit of {METRICS_MAX}",
                meta.metrics.len()
            ),
        ));
    }
    for (key, value) in &meta.metrics {
        validate_key("metadata.metrics", key, TAG_KEY_BYTES_MAX)?;
        if !value.is_finite() {
            return Err(DomainError::invalid(
                format!("metadata.metrics.{key}"),
                format!("{value} is not a finite number"),
            ));
        }
    }
    Ok(())
}

const DTYPES: &[&str] = &[
    "float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
    "uint16", "uint32", "uint64", "bool", "string", "bytes",
];

pub fn validate_signature(sig: &Signature) -> DomainResult<()> {
    for (side, tensors) in [("inputs", &sig.inputs), ("outputs", &sig.outputs)] {
        let field = format!("signature.{side}");
        if tensors.len() > SIGNATURE_TENSORS_MAX {
            return Err(DomainError::invalid(
                field,
                format!(
                    "{} tensors is over the limit of {SIGNATURE_TENSORS_MAX}",
                    tensors.len()
                ),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, t) in tensors.iter().enumerate() {
            let field = format!("signature.{side}[{i}]");
            validate_key(&format!("{field}.name"), &t.name, TAG_KEY_BYTES_MAX)?;
            if !seen.insert(t.name.as_str()) {
                return Err(DomainError::invalid(
                    format!("{field}.name"),
                    format!("tensor name {:?} appears twice", t.name),
                ));
            }
            if !DTYPES.contains(&t.dtype.as_str()) {
                return Err(DomainError::invalid(
                    format!("{field}.dtype"),
                    format!(
                        "unknown dtype {:?}; expected one of {}",
                        t.dtype,
                        DTYPES.join(", ")
                    ),
                ));
            }
            if t.shape.len() > TENSOR_RANK_MAX {
                return Err(DomainError::invalid(
                    format!("{field}.shape"),
                    format!(
                        "rank {} is over the limit of {TENSOR_RANK_MAX}",
                        t.shape.len()
                    ),
                ));
            }
            if let Some(d) = t.shape.iter().find(|&&d| d < -1) {
                return Err(DomainError::invalid(
                    format!("{field}.shape"),
                    format!("dimension {d} is invalid: use a size >= 0, or -1 for any size"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> VersionMetadata {
        VersionMetadata {
            data_snapshot_id: "snap-1".into(),
            code_commit: "abc".into(),
            pipeline_run_id: "run-1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn names_follow_the_charset_and_length_limit() {
        for ok in ["a", "reco-model", "m.v2_x", &"a".repeat(NAME_BYTES_MAX)] {
            validate_name("name", ok).unwrap();
        }
        for bad in [
            "",
            "Reco",
            "-x",
            "a/b",
            "a@b",
            "a:b",
            "a b",
            &"a".repeat(NAME_BYTES_MAX + 1),
        ] {
            let err = validate_name("name", bad).unwrap_err();
            assert!(err.to_string().starts_with("invalid name: "), "{err}");
        }
    }

    #[test]
    fn tags_over_the_limits_are_rejected_naming_the_field() {
        let mut tags: BTreeMap<String, String> = (0..TAGS_MAX)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        validate_tags("tags", &tags).unwrap();
        tags.insert("one-more".into(), "v".into());
        assert_eq!(
            validate_tags("tags", &tags).unwrap_err().to_string(),
            "invalid tags: 65 tags is over the limit of 64"
        );
        let long: BTreeMap<_, _> = [("k".to_string(), "v".repeat(TAG_VALUE_BYTES_MAX + 1))].into();
        assert_eq!(
            validate_tags("tags", &long).unwrap_err().to_string(),
            "invalid tags.k: 1025 bytes is over the limit of 1024"
        );
    }

    #[test]
    fn metadata_requires_lineage_and_bounds_params_and_metrics() {
        validate_metadata(&meta()).unwrap();
        let mut m = meta();
        m.code_commit.clear();
        assert!(validate_metadata(&m)
            .unwrap_err()
            .to_string()
            .starts_with("invalid metadata.code_commit: is required (pass --code-commit SHA)"));
        let mut m = meta();
        m.metrics = (0..=METRICS_MAX).map(|i| (format!("m{i}"), 1.0)).collect();
        assert_eq!(
            validate_metadata(&m).unwrap_err().to_string(),
            "invalid metadata.metrics: 257 metrics is over the limit of 256"
        );
        let mut m = meta();
        m.hyperparameters = (0..=PARAMS_MAX)
            .map(|i| (format!("p{i}"), "1".into()))
            .collect();
        assert_eq!(
            validate_metadata(&m).unwrap_err().to_string(),
            "invalid metadata.hyperparameters: 257 parameters is over the limit of 256"
        );
        let mut m = meta();
        m.metrics.insert("auc".into(), f64::NAN);
        assert_eq!(
            validate_metadata(&m).unwrap_err().to_string(),
            "invalid metadata.metrics.auc: NaN is not a finite number"
        );
    }

    #[test]
    fn signature_checks_dtype_shape_and_duplicates() {
        let t = |name: &str, dtype: &str, shape: Vec<i64>| TensorSpec {
            name: name.into(),
            dtype: dtype.into(),
            shape,
            optional: false,
        };
        let ok = Signature {
            inputs: vec![t("x", "float32", vec![-1, 128])],
            outputs: vec![t("y", "float32", vec![-1])],
        };
        validate_signature(&ok).unwrap();
        let bad = Signature {
            inputs: vec![t("x", "float33", vec![1])],
            outputs: vec![],
        };
        assert!(validate_signature(&bad)
            .unwrap_err()
            .to_string()
            .starts_with("invalid signature.inputs[0].dtype: unknown dtype \"float33\""));
        let bad = Signature {
            inputs: vec![t("x", "int8", vec![-2])],
            outputs: vec![],
        };
        assert!(validate_signature(&bad)
            .unwrap_err()
            .to_string()
            .starts_with("invalid signature.inputs[0].shape: dimension -2 is invalid"));
        let bad = Signature {
            inputs: vec![t("x", "int8", vec![]), t("x", "int8", vec![])],
            outputs: vec![],
        };
        assert!(validate_signature(&bad)
            .unwrap_err()
            .to_string()
            .contains("appears twice"));
    }
}
