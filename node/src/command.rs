//! The replicated commands and their results. A command carries everything
//! `apply` needs — the actor and the time are fixed by the proposer — so
//! that applying the same log gives the same state on every node.

use std::collections::BTreeMap;

use quiver_transfer::{FileEntry, Hash, Manifest};
use serde::{Deserialize, Serialize};

use crate::auth::{self, Grant, Role, Scope, TokenRecord};
use crate::domain::{
    Actor, Alias, DomainError, Model, NodeInfo, RiskTier, Signature, Stage, Version,
    VersionMetadata, VersionStatus,
};
use crate::governance::{self, Evaluation, Policy, PolicyScope, Review};
use crate::logged_model::{self, LoggedModelStatus};

/// One replicated mutation, with who asked for it and when.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Command {
    pub actor: Actor,
    pub at_ms: i64,
    /// Names one request however often it is proposed: a write retried across a leader change
    /// may reach the log twice, and the second copy must answer what the first did instead of
    /// applying again (or being rejected as a duplicate of itself). `Node::propose` draws a
    /// fresh one per request; `None` applies every copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
    pub op: Op,
}

/// One chunk of a small version, carried inside its `CreateVersion` (decision 0010).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlineChunk {
    pub hash: Hash,
    /// The chunk's bytes, as base64 in the JSON of the log and of Raft's messages.
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

/// Bytes as one base64 string (standard alphabet, padded): 4/3 of their size, and encoded an
/// order of magnitude faster than the hex crate's serde helper, which a profile of the metadata
/// benchmark showed at ~4% of all samples (a command is encoded for the leader's log, every
/// follower's message and log, and decoded on each).
mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("inline chunk bytes: {e}")))
    }
}

/// An opaque name unique per request. [`RequestId::random`] (what `Node::propose` uses) is 128
/// random bits as 32 hex digits; a caller with its own scheme (the simulator) may use another.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId(pub String);

impl RequestId {
    /// A fresh random id.
    pub fn random() -> RequestId {
        RequestId(format!("{:032x}", rand::random::<u128>()))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Op {
    CreateModel {
        name: String,
        namespace: String,
        description: String,
        risk_tier: RiskTier,
        tags: BTreeMap<String, String>,
    },
    UpdateModel {
        name: String,
        description: Option<String>,
        set_tags: BTreeMap<String, String>,
        remove_tags: Vec<String>,
    },
    /// The artifact's chunks are already durable where the proposer needs
    /// them, or travel in `inline_chunks`; the number is assigned at apply.
    CreateVersion {
        model: String,
        manifest: Manifest,
        manifest_root: String,
        signature: Signature,
        metadata: VersionMetadata,
        tags: BTreeMap<String, String>,
        status: VersionStatus,
        /// A small version's chunks, all of them, carried in the command itself (at most
        /// `limits::INLINE_VERSION_BYTES_MAX` bytes): the log makes them durable on a majority
        /// and apply keeps them in the state, so no chunk store holds them (decision 0010).
        /// Empty: the chunks are in the chunk stores.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        inline_chunks: Vec<InlineChunk>,
    },
    SetVersionStatus {
        model: String,
        number: u64,
        status: VersionStatus,
    },
    SetStage {
        model: String,
        number: u64,
        stage: Stage,
        reason: String,
        /// An approver accepts a signature that breaks callers of the Production version's
        /// (the policy's `signature_compatible` gate then passes, naming who and why).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        override_signature: bool,
    },
    SetAlias {
        model: String,
        alias: String,
        number: u64,
    },
    DeleteAlias {
        model: String,
        alias: String,
    },
    SetVersionTags {
        model: String,
        number: u64,
        set_tags: BTreeMap<String, String>,
        remove_tags: Vec<String>,
    },
    /// A node announces (or updates) how to reach it.
    UpsertNode(NodeInfo),
    RemoveNode {
        node_id: u64,
    },
    /// An admin creates an API token for `principal`. The log holds the secret's blake3 hash,
    /// never the secret, which only the caller sees, once.
    CreateToken {
        id: String,
        principal: String,
        description: String,
        secret_hash: String,
        expires_at_ms: Option<i64>,
    },
    RevokeToken {
        id: String,
    },
    GrantRole {
        principal: String,
        scope: Scope,
        role: Role,
    },
    RevokeRole {
        principal: String,
        scope: Scope,
    },
    /// The founding node's first admin: a token for `principal` and the admin role cluster-wide,
    /// accepted only while no role is granted to anyone.
    Bootstrap {
        id: String,
        principal: String,
        secret_hash: String,
    },
    /// An admin sets (or, with `None`, clears) the policy of a model or of a namespace's models.
    SetPolicy {
        scope: PolicyScope,
        policy: Option<Policy>,
    },
    /// An evaluation pipeline records a result for a version (the registration never changes);
    /// with the policy's auto-promotion on, the version enters Staging in this same step if its
    /// Staging gates now pass.
    RecordEvaluation {
        model: String,
        number: u64,
        kind: String,
        metrics: BTreeMap<String, f64>,
        summary: String,
    },
    /// A reviewer approves or rejects review `id` (of a version of `model`, which the role check
    /// where the request arrives uses). An approval that completes the gates moves the version in
    /// this same step; a rejection closes the request for good.
    DecideReview {
        model: String,
        id: u64,
        approve: bool,
        comment: String,
    },
    /// Records that `from` went into `to` (`quiver lineage add`); an end that is a version must
    /// exist.
    AddLineageEdge {
        from: crate::lineage::Entity,
        to: crate::lineage::Entity,
    },
    /// Takes an entity out of use: no version downstream of it may enter Staging or Production
    /// until the quarantine is lifted.
    Quarantine {
        entity: crate::lineage::Entity,
        reason: String,
    },
    LiftQuarantine {
        entity: crate::lineage::Entity,
        reason: String,
    },
    /// Creates endpoint `endpoint` serving all traffic from `model`/`version` (which must be in
    /// Production). Every deployment op names the endpoint's model too: the role check where
    /// the request arrives reads its namespace, and apply refuses a model that is not the
    /// endpoint's.
    CreateDeployment {
        endpoint: String,
        model: String,
        version: u64,
        reason: String,
    },
    /// Sets an endpoint's split and shadows by hand (refused while a rollout is in progress).
    SetTraffic {
        endpoint: String,
        model: String,
        split: Vec<(u64, u32)>,
        shadows: Vec<u64>,
        reason: String,
    },
    /// Starts moving the endpoint's traffic from its stable version to `version` by `plan`.
    StartRollout {
        endpoint: String,
        model: String,
        version: u64,
        plan: Vec<crate::deploy::Step>,
        bounds: crate::deploy::Bounds,
        reason: String,
    },
    /// Moves a rollout from step `from_step` to the next, once that step has held its
    /// duration; refused if another step is in force (so a repeat or a stale leader's copy
    /// moves nothing).
    AdvanceRollout {
        endpoint: String,
        model: String,
        from_step: u32,
    },
    /// Holds a rollout at its step (`pause: true`) or lets it go on (its step's clock starts
    /// again).
    PauseRollout {
        endpoint: String,
        model: String,
        pause: bool,
        reason: String,
    },
    /// Routes all traffic back: to the stable version during a rollout, else to the version
    /// that served before it. Needs no stage (the version served before).
    Rollback {
        endpoint: String,
        model: String,
        reason: String,
    },
    /// A serving agent's counts per version since generation `generation` of the endpoint.
    /// Kept as the agent's latest; during a rollout, reports whose sum puts the target out of
    /// bounds roll it back in this same step.
    ReportServing {
        endpoint: String,
        model: String,
        agent: String,
        generation: u64,
        stats: Vec<crate::deploy::VersionStats>,
    },
    /// MLflow's `logged-models/create`: a logged model with no files yet (`crate::logged_model`).
    CreateLoggedModel {
        id: String,
        experiment_id: String,
        name: String,
        model_type: String,
        source_run_id: String,
        params: BTreeMap<String, String>,
        tags: BTreeMap<String, String>,
    },
    /// Params and tags added to a logged model, and its status set (finalize).
    UpdateLoggedModel {
        id: String,
        status: Option<LoggedModelStatus>,
        set_params: BTreeMap<String, String>,
        set_tags: BTreeMap<String, String>,
        remove_tags: Vec<String>,
    },
    /// One file of a pending logged model, whose chunks are durable in W copies (the proposer
    /// wrote them), replacing a file of the same path.
    PutLoggedModelFile {
        id: String,
        file: FileEntry,
    },
}

impl Op {
    /// The model this op names, if any (the key every handler builds first).
    pub fn model_name(&self) -> Option<&str> {
        match self {
            Op::CreateModel { name, .. } | Op::UpdateModel { name, .. } => Some(name),
            Op::CreateVersion { model, .. }
            | Op::SetVersionStatus { model, .. }
            | Op::SetStage { model, .. }
            | Op::SetAlias { model, .. }
            | Op::DeleteAlias { model, .. }
            | Op::SetVersionTags { model, .. }
            | Op::RecordEvaluation { model, .. }
            | Op::DecideReview { model, .. }
            | Op::CreateDeployment { model, .. }
            | Op::SetTraffic { model, .. }
            | Op::StartRollout { model, .. }
            | Op::AdvanceRollout { model, .. }
            | Op::PauseRollout { model, .. }
            | Op::Rollback { model, .. }
            | Op::ReportServing { model, .. } => Some(model),
            Op::SetPolicy {
                scope: PolicyScope::Model(model),
                ..
            } => Some(model),
            // A lineage op names the model of its version end (the edge's end first).
            Op::AddLineageEdge { from, to } => to.model().or(from.model()),
            Op::Quarantine { entity, .. } | Op::LiftQuarantine { entity, .. } => entity.model(),
            Op::UpsertNode(_)
            | Op::RemoveNode { .. }
            | Op::CreateToken { .. }
            | Op::RevokeToken { .. }
            | Op::GrantRole { .. }
            | Op::RevokeRole { .. }
            | Op::Bootstrap { .. }
            | Op::SetPolicy { .. }
            | Op::CreateLoggedModel { .. }
            | Op::UpdateLoggedModel { .. }
            | Op::PutLoggedModelFile { .. } => None,
        }
    }

    /// The checks that need no state: every name, text, tag, signature, metadata and manifest
    /// field within its limits. A node runs them before proposing, so that a bad request never
    /// reaches the log (and a field's size bounds the entry's), and apply runs them again
    /// before any handler builds a key from a field.
    pub fn check_fields(&self) -> Result<(), DomainError> {
        use crate::domain::{
            validate_description, validate_name, validate_reason, validate_signature,
            validate_tag_removals, validate_tags,
        };
        if let Some(model) = self.model_name() {
            validate_name("model", model)?;
        }
        match self {
            Op::CreateModel {
                namespace,
                description,
                tags,
                ..
            } => {
                validate_name("namespace", namespace)?;
                validate_description(description)?;
                validate_tags("tags", tags)
            }
            Op::UpdateModel {
                description,
                set_tags,
                remove_tags,
                ..
            } => {
                description
                    .as_deref()
                    .map_or(Ok(()), validate_description)?;
                validate_tags("set_tags", set_tags)?;
                validate_tag_removals("remove_tags", remove_tags)
            }
            Op::SetVersionTags {
                set_tags,
                remove_tags,
                ..
            } => {
                validate_tags("set_tags", set_tags)?;
                validate_tag_removals("remove_tags", remove_tags)
            }
            Op::CreateVersion {
                manifest,
                signature,
                metadata,
                tags,
                ..
            } => {
                manifest
                    .validate()
                    .map_err(|e| DomainError::invalid("manifest", e.to_string()))?;
                validate_signature(signature)?;
                crate::domain::validate_version_metadata(metadata, tags)?;
                validate_tags("tags", tags)?;
                crate::lineage::check_registration(metadata, tags)
            }
            Op::SetStage { reason, .. } => validate_reason(reason),
            Op::SetAlias { alias, .. } | Op::DeleteAlias { alias, .. } => {
                validate_name("alias", alias)
            }
            Op::SetVersionStatus { .. } | Op::UpsertNode(_) | Op::RemoveNode { .. } => Ok(()),
            Op::CreateToken {
                id,
                principal,
                description,
                secret_hash,
                expires_at_ms,
            } => {
                auth::validate_token_id(id)?;
                auth::validate_principal(principal)?;
                validate_description(description)?;
                auth::validate_secret_hash(secret_hash)?;
                match expires_at_ms {
                    Some(ms) if *ms <= 0 => Err(DomainError::invalid(
                        "expires_at_ms",
                        "must be a time after the epoch, or none for a token that never expires",
                    )),
                    _ => Ok(()),
                }
            }
            Op::RevokeToken { id } => auth::validate_token_id(id),
            Op::GrantRole {
                principal, scope, ..
            }
            | Op::RevokeRole { principal, scope } => {
                auth::validate_principal(principal)?;
                scope.check()
            }
            Op::Bootstrap {
                id,
                principal,
                secret_hash,
            } => {
                auth::validate_token_id(id)?;
                auth::validate_principal(principal)?;
                auth::validate_secret_hash(secret_hash)
            }
            Op::SetPolicy { scope, policy } => {
                governance::validate_scope(scope)?;
                policy.as_ref().map_or(Ok(()), governance::validate_policy)
            }
            Op::RecordEvaluation {
                kind,
                metrics,
                summary,
                ..
            } => governance::validate_evaluation(kind, metrics, summary),
            Op::DecideReview { comment, .. } => governance::validate_comment(comment),
            Op::AddLineageEdge { from, to } => crate::lineage::check_edge(from, to),
            Op::Quarantine { entity, reason } | Op::LiftQuarantine { entity, reason } => {
                entity.check("entity")?;
                crate::lineage::check_reason(reason)
            }
            Op::CreateDeployment {
                endpoint,
                version,
                reason,
                ..
            } => {
                validate_name("endpoint", endpoint)?;
                check_version_number("version", *version)?;
                validate_reason(reason)
            }
            Op::SetTraffic {
                endpoint,
                split,
                shadows,
                reason,
                ..
            } => {
                validate_name("endpoint", endpoint)?;
                crate::deploy::check_traffic(split, shadows)?;
                validate_reason(reason)
            }
            Op::StartRollout {
                endpoint,
                version,
                plan,
                bounds,
                reason,
                ..
            } => {
                validate_name("endpoint", endpoint)?;
                check_version_number("version", *version)?;
                crate::deploy::check_plan(plan, bounds)?;
                validate_reason(reason)
            }
            Op::AdvanceRollout { endpoint, .. } => validate_name("endpoint", endpoint),
            Op::PauseRollout {
                endpoint, reason, ..
            }
            | Op::Rollback {
                endpoint, reason, ..
            } => {
                validate_name("endpoint", endpoint)?;
                validate_reason(reason)
            }
            Op::ReportServing {
                endpoint,
                agent,
                generation,
                stats,
                ..
            } => {
                validate_name("endpoint", endpoint)?;
                validate_name("agent", agent)?;
                crate::deploy::check_report(*generation, stats)
            }
            Op::CreateLoggedModel {
                id,
                experiment_id,
                name,
                model_type,
                source_run_id,
                params,
                tags,
            } => {
                logged_model::validate_id("model_id", id)?;
                logged_model::validate_new(
                    experiment_id,
                    name,
                    model_type,
                    source_run_id,
                    params,
                    tags,
                )
            }
            Op::UpdateLoggedModel {
                id,
                set_params,
                set_tags,
                remove_tags,
                ..
            } => {
                logged_model::validate_id("model_id", id)?;
                logged_model::validate_params("params", set_params)?;
                validate_tags("tags", set_tags)?;
                validate_tag_removals("remove_tags", remove_tags)
            }
            Op::PutLoggedModelFile { id, file } => {
                logged_model::validate_id("model_id", id)?;
                logged_model::validate_file(file)
            }
        }
    }

    /// The reason the command gives, if it carries one (the audit log records it).
    pub fn reason(&self) -> Option<&str> {
        match self {
            Op::DecideReview { comment, .. } => Some(comment),
            Op::SetStage { reason, .. }
            | Op::Quarantine { reason, .. }
            | Op::LiftQuarantine { reason, .. }
            | Op::CreateDeployment { reason, .. }
            | Op::SetTraffic { reason, .. }
            | Op::StartRollout { reason, .. }
            | Op::PauseRollout { reason, .. }
            | Op::Rollback { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// Short name for logs and the audit log.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::CreateModel { .. } => "create_model",
            Op::UpdateModel { .. } => "update_model",
            Op::CreateVersion { .. } => "create_version",
            Op::SetVersionStatus { .. } => "set_version_status",
            Op::SetStage { .. } => "set_stage",
            Op::SetAlias { .. } => "set_alias",
            Op::DeleteAlias { .. } => "delete_alias",
            Op::SetVersionTags { .. } => "set_version_tags",
            Op::UpsertNode(_) => "upsert_node",
            Op::RemoveNode { .. } => "remove_node",
            Op::CreateToken { .. } => "create_token",
            Op::RevokeToken { .. } => "revoke_token",
            Op::GrantRole { .. } => "grant_role",
            Op::RevokeRole { .. } => "revoke_role",
            Op::Bootstrap { .. } => "bootstrap",
            Op::SetPolicy { .. } => "set_policy",
            Op::RecordEvaluation { .. } => "record_evaluation",
            Op::DecideReview { approve: true, .. } => "approve_review",
            Op::DecideReview { approve: false, .. } => "reject_review",
            Op::AddLineageEdge { .. } => "add_lineage_edge",
            Op::Quarantine { .. } => "quarantine",
            Op::LiftQuarantine { .. } => "lift_quarantine",
            Op::CreateDeployment { .. } => "create_deployment",
            Op::SetTraffic { .. } => "set_traffic",
            Op::StartRollout { .. } => "start_rollout",
            Op::AdvanceRollout { .. } => "advance_rollout",
            Op::PauseRollout { pause: true, .. } => "pause_rollout",
            Op::PauseRollout { pause: false, .. } => "resume_rollout",
            Op::Rollback { .. } => "rollback",
            Op::ReportServing { .. } => "report_serving",
            Op::CreateLoggedModel { .. } => "create_logged_model",
            Op::UpdateLoggedModel { .. } => "update_logged_model",
            Op::PutLoggedModelFile { .. } => "put_logged_model_file",
        }
    }
}

/// What applying a command produced. Rejections are results, not errors:
/// a rejected command is in the log like any other and changes nothing.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub enum Response {
    /// Blank and membership entries.
    #[default]
    None,
    Model(Box<Model>),
    Version(Box<Version>),
    Alias(Alias),
    Node(NodeInfo),
    Token(Box<TokenRecord>),
    Grant(Grant),
    /// A policy scope and what it holds now.
    Policy(Box<(PolicyScope, Option<Policy>)>),
    /// An evaluation recorded, and the version after it (promoted, if it was).
    Evaluation(Box<(Evaluation, Version)>),
    /// A review after a decision, and its version after it (moved, if the approval completed
    /// the gates).
    Review(Box<(Review, Version)>),
    Rejected(DomainError),
    /// A lineage edge recorded.
    LineageEdge(Box<crate::lineage::Edge>),
    /// A quarantine put in force, or (for a lift) the one lifted.
    Quarantine(Box<crate::lineage::Quarantine>),
    /// A deployment endpoint after a change.
    Deployment(Box<crate::deploy::Deployment>),
    /// A serving report taken: the endpoint after it, and whether it rolled the rollout back.
    ServingReport(Box<(crate::deploy::Deployment, bool)>),
    /// A logged model after a change.
    LoggedModel(Box<crate::logged_model::LoggedModel>),
}

/// A version number in a command: 1 or more.
fn check_version_number(field: &str, number: u64) -> Result<(), DomainError> {
    if number == 0 {
        return Err(DomainError::invalid(
            field,
            "version 0 does not exist; versions start at 1",
        ));
    }
    Ok(())
}
