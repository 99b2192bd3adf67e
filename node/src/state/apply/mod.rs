//! `apply`'s dispatcher: one handler per command. The fields are checked first
//! (`Op::check_fields`); each handler then checks what needs state, then writes, so a rejected
//! command writes nothing; it returns the response and the audit subject.

mod access;
mod alias;
mod catalog;
mod create_version;
mod deploy;
mod governance;
mod lineage;
mod logged_model;
mod model;
mod node;
mod review;
mod stage;
mod version;
mod watch;

use std::collections::BTreeMap;

use heed::RwTxn;

use super::{AppResult, RegistryApp};
use crate::command::{Command, Op, Response};
use crate::domain::{self, Actor};

/// What an accepted command produced: its response and its audit subject.
type Applied = (Response, String);

/// An accepted command's result, its audit subject and the changes watchers hear of.
pub(super) type Executed = (Response, String, Vec<crate::watch::Change>);

/// What every handler works with: the state, the write transaction, and who applies the command
/// and when (fixed by the proposer).
struct Write<'a, 'e> {
    app: &'a RegistryApp,
    wtxn: &'a mut RwTxn<'e>,
    actor: &'a Actor,
    at_ms: i64,
    /// What watchers are told of, in order (`crate::watch`): written with revisions only if
    /// the command is accepted.
    changes: Vec<crate::watch::Change>,
}

impl RegistryApp {
    /// Validates fully, then writes: a rejected command writes nothing.
    /// Returns the response, the audit subject and the changes for watchers.
    pub(super) fn execute(&self, wtxn: &mut RwTxn<'_>, cmd: &Command) -> AppResult<Executed> {
        let w = &mut Write {
            app: self,
            wtxn,
            actor: &cmd.actor,
            at_ms: cmd.at_ms,
            changes: Vec::new(),
        };
        let (response, subject) = Self::dispatch(w, cmd)?;
        Ok((response, subject, std::mem::take(&mut w.changes)))
    }

    fn dispatch(w: &mut Write<'_, '_>, cmd: &Command) -> AppResult<Applied> {
        let this = w.app;
        // A model name is the first key every handler builds; LMDB refuses an empty or over-long
        // key with an error that would stop Raft on every node, so a bad one is a rejection here,
        // as is every other field over its limit (the proposing node checked them too; a command
        // in the log is checked again all the same). The handlers check only what needs state.
        if !this.names_on_trust() {
            cmd.op.check_fields()?;
        }
        match &cmd.op {
            Op::CreateModel {
                name,
                namespace,
                description,
                risk_tier,
                tags,
            } => model::create_model(w, name, namespace, description, *risk_tier, tags),
            Op::UpdateModel {
                name,
                description,
                set_tags,
                remove_tags,
            } => model::update_model(w, name, description.as_deref(), set_tags, remove_tags),
            Op::CreateVersion {
                model,
                manifest,
                manifest_root,
                signature,
                metadata,
                tags,
                status,
                inline_chunks,
            } => create_version::create_version(
                w,
                &create_version::NewVersion {
                    model,
                    manifest,
                    manifest_root,
                    signature,
                    metadata,
                    tags,
                    status: *status,
                    inline_chunks,
                },
            ),
            Op::SetVersionStatus {
                model,
                number,
                status,
            } => version::set_version_status(w, model, *number, *status),
            Op::SetVersionTags {
                model,
                number,
                set_tags,
                remove_tags,
            } => version::set_version_tags(w, model, *number, set_tags, remove_tags),
            Op::SetStage {
                model,
                number,
                stage,
                reason,
                override_signature,
            } => stage::set_stage(w, model, *number, *stage, reason, *override_signature),
            Op::SetAlias {
                model,
                alias,
                number,
            } => alias::set_alias(w, model, alias, *number),
            Op::DeleteAlias { model, alias } => alias::delete_alias(w, model, alias),
            Op::UpsertNode(info) => node::upsert_node(w, info),
            Op::RemoveNode { node_id } => node::remove_node(w, *node_id),
            Op::CreateToken {
                id,
                principal,
                description,
                secret_hash,
                expires_at_ms,
            } => access::create_token(
                w,
                &access::NewToken {
                    id,
                    principal,
                    description,
                    secret_hash,
                    expires_at_ms: *expires_at_ms,
                },
            ),
            Op::RevokeToken { id } => access::revoke_token(w, id),
            Op::GrantRole {
                principal,
                scope,
                role,
            } => access::grant_role(w, principal, scope, *role),
            Op::RevokeRole { principal, scope } => access::revoke_role(w, principal, scope),
            Op::Bootstrap {
                id,
                principal,
                secret_hash,
            } => access::bootstrap(w, id, principal, secret_hash),
            Op::SetPolicy { scope, policy } => governance::set_policy(w, scope, policy.as_ref()),
            Op::RecordEvaluation {
                model,
                number,
                kind,
                metrics,
                summary,
            } => governance::record_evaluation(
                w,
                &governance::NewEvaluation {
                    model,
                    number: *number,
                    kind,
                    metrics,
                    summary,
                },
            ),
            Op::DecideReview {
                model,
                id,
                approve,
                comment,
            } => review::decide(w, model, *id, *approve, comment),
            Op::AddLineageEdge { from, to } => lineage::add_edge(w, from, to),
            Op::Quarantine { entity, reason } => lineage::quarantine(w, entity, reason),
            Op::LiftQuarantine { entity, reason } => lineage::lift_quarantine(w, entity, reason),
            Op::CreateDeployment {
                endpoint,
                model,
                version,
                reason,
            } => deploy::create(w, endpoint, model, *version, reason),
            Op::SetTraffic {
                endpoint,
                model,
                split,
                shadows,
                reason,
            } => deploy::set_traffic(w, endpoint, model, split, shadows, reason),
            Op::StartRollout {
                endpoint,
                model,
                version,
                plan,
                bounds,
                reason,
            } => deploy::start_rollout(w, endpoint, model, *version, (plan, bounds), reason),
            Op::AdvanceRollout {
                endpoint,
                model,
                from_step,
            } => deploy::advance(w, endpoint, model, *from_step),
            Op::PauseRollout {
                endpoint,
                model,
                pause,
                reason,
            } => deploy::pause(w, endpoint, model, *pause, reason),
            Op::Rollback {
                endpoint,
                model,
                reason,
            } => deploy::rollback(w, endpoint, model, reason),
            Op::ReportServing {
                endpoint,
                model,
                agent,
                generation,
                stats,
            } => deploy::report(w, endpoint, model, agent, *generation, stats),
            Op::CreateLoggedModel {
                id,
                experiment_id,
                name,
                model_type,
                source_run_id,
                params,
                tags,
            } => logged_model::create(
                w,
                crate::logged_model::LoggedModel {
                    id: id.clone(),
                    experiment_id: experiment_id.clone(),
                    name: name.clone(),
                    model_type: model_type.clone(),
                    source_run_id: source_run_id.clone(),
                    status: crate::logged_model::LoggedModelStatus::Pending,
                    params: params.clone(),
                    tags: tags.clone(),
                    created_by: cmd.actor.clone(),
                    created_at_ms: cmd.at_ms,
                    updated_at_ms: cmd.at_ms,
                    files: Vec::new(),
                },
            ),
            Op::UpdateLoggedModel {
                id,
                status,
                set_params,
                set_tags,
                remove_tags,
            } => logged_model::update(w, id, *status, set_params, (set_tags, remove_tags)),
            Op::PutLoggedModelFile { id, file } => logged_model::put_file(w, id, file),
        }
    }
}

/// `tags` with `remove_tags` removed and `set_tags` set, if the result is valid.
fn apply_tag_changes(
    tags: &mut BTreeMap<String, String>,
    set_tags: &BTreeMap<String, String>,
    remove_tags: &[String],
) -> AppResult<()> {
    let mut next = tags.clone();
    for key in remove_tags {
        next.remove(key);
    }
    next.extend(set_tags.iter().map(|(k, v)| (k.clone(), v.clone())));
    domain::validate_tags("tags", &next)?;
    *tags = next;
    Ok(())
}
