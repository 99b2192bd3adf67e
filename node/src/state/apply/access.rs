//! Tokens and roles: `CreateToken`, `RevokeToken`, `GrantRole`, `RevokeRole` and the founding
//! node's `Bootstrap`. Who may propose them is checked where the request arrives
//! (`Node::check_access`); here, what needs state.

use super::{Applied, Write};
use crate::auth::{is_system_principal, Grant, Role, Scope, TokenRecord};
use crate::command::Response;
use crate::domain::DomainError;
use crate::state::tables::{encode, key2};
use crate::state::AppResult;

pub(super) struct NewToken<'a> {
    pub id: &'a str,
    pub principal: &'a str,
    pub description: &'a str,
    pub secret_hash: &'a str,
    pub expires_at_ms: Option<i64>,
}

pub(super) fn create_token(w: &mut Write<'_, '_>, token: &NewToken<'_>) -> AppResult<Applied> {
    if is_system_principal(token.principal) {
        return Err(
            DomainError::invalid("principal", "names with ':' belong to the cluster").into(),
        );
    }
    if w.app
        .tables
        .tokens
        .get(w.wtxn, token.id.as_bytes())?
        .is_some()
    {
        return Err(DomainError::invalid(
            "token id",
            format!("token {} already exists; create another", token.id),
        )
        .into());
    }
    let record = TokenRecord {
        id: token.id.to_string(),
        principal: token.principal.to_string(),
        description: token.description.to_string(),
        secret_hash: token.secret_hash.to_string(),
        created_by: w.actor.name.clone(),
        created_at_ms: w.at_ms,
        expires_at_ms: token.expires_at_ms,
        revoked_by: None,
        revoked_at_ms: None,
    };
    w.app
        .tables
        .tokens
        .put(w.wtxn, token.id.as_bytes(), &encode(&record)?)?;
    Ok((
        Response::Token(Box::new(record)),
        format!("token {} of {}", token.id, token.principal),
    ))
}

pub(super) fn revoke_token(w: &mut Write<'_, '_>, id: &str) -> AppResult<Applied> {
    let mut record = w.app.token(w.wtxn, id)?.ok_or_else(|| {
        DomainError::invalid(
            "token id",
            format!("token {id} not found: `quiver token list` shows the tokens"),
        )
    })?;
    if record.revoked_at_ms.is_none() {
        record.revoked_by = Some(w.actor.name.clone());
        record.revoked_at_ms = Some(w.at_ms);
        w.app
            .tables
            .tokens
            .put(w.wtxn, id.as_bytes(), &encode(&record)?)?;
    }
    let subject = format!("token {id} of {}", record.principal);
    Ok((Response::Token(Box::new(record)), subject))
}

pub(super) fn grant_role(
    w: &mut Write<'_, '_>,
    principal: &str,
    scope: &Scope,
    role: Role,
) -> AppResult<Applied> {
    if is_system_principal(principal) {
        return Err(
            DomainError::invalid("principal", "names with ':' belong to the cluster").into(),
        );
    }
    let grant = Grant {
        principal: principal.to_string(),
        scope: scope.clone(),
        role,
        granted_by: w.actor.name.clone(),
        granted_at_ms: w.at_ms,
    };
    w.app.tables.grants.put(
        w.wtxn,
        &key2(principal, scope.as_key().as_bytes()),
        &encode(&grant)?,
    )?;
    let subject = format!("{role} for {principal} in {scope}");
    Ok((Response::Grant(grant), subject))
}

pub(super) fn revoke_role(
    w: &mut Write<'_, '_>,
    principal: &str,
    scope: &Scope,
) -> AppResult<Applied> {
    let key = key2(principal, scope.as_key().as_bytes());
    let Some(grant) = w.app.grant(w.wtxn, principal, scope)? else {
        return Err(DomainError::invalid(
            "principal",
            format!("{principal} holds no role in {scope}: `quiver role list` shows the roles"),
        )
        .into());
    };
    if grant.scope == Scope::Cluster
        && grant.role == Role::Admin
        && w.app.cluster_admins(w.wtxn)? <= 1
    {
        return Err(DomainError::invalid(
            "principal",
            format!(
                "{principal} is the last cluster-wide admin: grant admin to another principal first"
            ),
        )
        .into());
    }
    w.app.tables.grants.delete(w.wtxn, &key)?;
    let subject = format!("{} for {principal} in {scope}", grant.role);
    Ok((Response::Grant(grant), subject))
}

pub(super) fn bootstrap(
    w: &mut Write<'_, '_>,
    id: &str,
    principal: &str,
    secret_hash: &str,
) -> AppResult<Applied> {
    if !is_system_principal(&w.actor.name) {
        return Err(
            DomainError::invalid("actor", "only the founding node bootstraps access").into(),
        );
    }
    if !w.app.tables.grants.is_empty(w.wtxn)? {
        return Err(DomainError::invalid(
            "bootstrap",
            "roles are already granted: the cluster's first admin exists",
        )
        .into());
    }
    create_token(
        w,
        &NewToken {
            id,
            principal,
            description: "the cluster's first admin (created by the founding node)",
            secret_hash,
            expires_at_ms: None,
        },
    )?;
    grant_role(w, principal, &Scope::Cluster, Role::Admin)
}
