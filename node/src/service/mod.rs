//! gRPC services (tonic) over a `Node`. Each request is validated and
//! converted to a domain command at this edge; errors reach the client as a
//! gRPC status whose message names the field or object and the fix.

pub mod access;
pub mod admin;
pub mod audit;
pub mod convert;
pub mod deploy;
pub mod governance;
pub mod lifecycle;
pub mod lineage;
pub mod models;
pub mod versions;
pub mod watch;

use quiver_api::proto;
use quiver_api::Reference;
use tonic::{Request, Status};

use crate::access::{parse_bearer, Credential, Target};
use crate::auth::Role;
use crate::domain::{Actor, DomainError, VersionRef};
use crate::error::NodeError;
use crate::node::{Consistency, Node};

/// The request metadata key that carries a client's credentials: `Bearer <token>`.
pub const AUTHORIZATION_HEADER: &str = "authorization";

/// The token a request presents in its `authorization: Bearer …` header, if any (as sent: see
/// [`credential`]).
pub fn bearer<T>(request: &Request<T>) -> Result<Option<&str>, Status> {
    let Some(value) = request.metadata().get(AUTHORIZATION_HEADER) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        Status::unauthenticated("the authorization header is not valid text: send `Bearer <token>`")
    })?;
    match text.strip_prefix("Bearer ") {
        Some(token) => Ok(Some(token.trim())),
        None => Err(Status::unauthenticated(
            "the authorization header must be `Bearer <token>`",
        )),
    }
}

/// What `request` presents: its bearer token, parsed (a malformed one is refused here), and
/// else its connection's client certificate (a token, when there is one, decides). A handler
/// that checks its caller more than once takes this once and passes it on.
pub fn credential<T>(request: &Request<T>) -> Result<Credential, Status> {
    let token = match bearer(request)? {
        Some(text) => Some(parse_bearer(text)?),
        None => None,
    };
    let certificate = match token {
        Some(_) => None,
        None => request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| c.to_vec())),
    };
    Ok(Credential { token, certificate })
}

/// Who sent `request`, authenticated by its credential on `node` (see `crate::access`).
pub async fn caller<T>(node: &Node, request: &Request<T>) -> Result<Actor, Status> {
    Ok(node.authenticate(&credential(request)?).await?)
}

/// [`caller`], checked for `role` on `target` (a read needs [`Role::Reader`]).
pub async fn caller_with<T>(
    node: &Node,
    request: &Request<T>,
    role: Role,
    target: Target<'_>,
    action: &str,
) -> Result<Actor, Status> {
    Ok(node
        .authorize(&credential(request)?, role, target, action)
        .await?)
}

/// [`caller_with`] for a read of one model's records (the reader role on its namespace) or,
/// with `model` empty, of every model's (the reader role cluster-wide): `all` and `one` name
/// the action in a refusal.
pub async fn caller_reading<T>(
    node: &Node,
    request: &Request<T>,
    model: &str,
    all: &str,
    one: &str,
) -> Result<Actor, Status> {
    if model.is_empty() {
        return caller_with(node, request, Role::Reader, Target::Cluster, all).await;
    }
    crate::domain::validate_name("model", model).map_err(invalid)?;
    let action = format!("{one} {model}");
    caller_with(node, request, Role::Reader, Target::Model(model), &action).await
}

/// Longest status message sent: a bad value is named, not echoed whole (a long message also
/// travels in a response header, where it can break the client's connection).
pub const STATUS_MESSAGE_BYTES_MAX: usize = 1024;

/// `message`, cut at a character boundary to [`STATUS_MESSAGE_BYTES_MAX`] bytes.
pub fn bounded(message: String) -> String {
    if message.len() <= STATUS_MESSAGE_BYTES_MAX {
        return message;
    }
    let mut end = STATUS_MESSAGE_BYTES_MAX - 16;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut)", &message[..end])
}

pub fn status_from_domain(e: &DomainError) -> Status {
    let message = bounded(e.to_string());
    match e {
        DomainError::ModelNotFound { .. }
        | DomainError::VersionNotFound { .. }
        | DomainError::AliasNotFound { .. }
        | DomainError::StageEmpty { .. }
        | DomainError::ReviewNotFound { .. }
        | DomainError::DeploymentNotFound { .. }
        | DomainError::LoggedModelNotFound { .. } => Status::not_found(message),
        DomainError::ModelExists { .. } | DomainError::DuplicateBundle { .. } => {
            Status::already_exists(message)
        }
        DomainError::SameStage { .. }
        | DomainError::NotReady { .. }
        | DomainError::GatesFailed { .. }
        | DomainError::ReviewClosed { .. }
        | DomainError::NotServable { .. }
        | DomainError::DeploymentState { .. } => Status::failed_precondition(message),
        DomainError::NotAllowed { .. } => Status::permission_denied(message),
        DomainError::Invalid { .. } => Status::invalid_argument(message),
    }
}

/// The one place a core error becomes a gRPC status.
pub fn status_from_node(e: &NodeError) -> Status {
    let message = bounded(e.to_string());
    match e {
        NodeError::Rejected(d) => status_from_domain(d),
        NodeError::Invalid(_) => Status::invalid_argument(message),
        NodeError::Aborted(_) => Status::aborted(message),
        NodeError::DataLoss(_) => Status::data_loss(message),
        NodeError::NotLeader { .. }
        | NodeError::NoQuorum(_)
        | NodeError::Unreachable(_)
        | NodeError::TooFewCopies(_) => Status::unavailable(message),
        NodeError::Storage(_) | NodeError::Fatal(_) => Status::internal(message),
        NodeError::NotMember(_) => Status::not_found(message),
        NodeError::DiskFull(_) | NodeError::Busy(_) => Status::resource_exhausted(message),
        NodeError::Membership(_) => Status::failed_precondition(message),
        NodeError::Unauthenticated(_) => Status::unauthenticated(message),
        NodeError::PermissionDenied(_) => Status::permission_denied(message),
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        status_from_node(&e)
    }
}

pub fn consistency(raw: i32) -> Consistency {
    if raw == proto::ReadConsistency::Stale as i32 {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

/// Resolves `name/3`, `name@alias` or `name:stage` to (model, number) on current state (a
/// linearizable read).
pub async fn resolve_version(node: &Node, reference: &str) -> Result<(String, u64), Status> {
    let reference = parse_reference(reference)?;
    let v = node
        .read(Consistency::Linearizable, |app, txn| {
            app.resolve(txn, &reference)
        })
        .await?;
    Ok((v.model, v.number))
}

/// Parses `name/3`, `name@alias` or `name:stage` into the reference the state resolves.
pub fn parse_reference(text: &str) -> Result<VersionRef, Status> {
    let reference = text
        .parse::<Reference>()
        .map_err(|e| Status::invalid_argument(bounded(e.to_string())))?;
    convert::reference_from_client(reference).map_err(invalid)
}

pub fn invalid(e: DomainError) -> Status {
    status_from_domain(&e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary_and_short_ones_kept() {
        assert_eq!(bounded("short".into()), "short");
        let long = "é".repeat(STATUS_MESSAGE_BYTES_MAX);
        let cut = bounded(long);
        assert!(cut.len() <= STATUS_MESSAGE_BYTES_MAX, "{}", cut.len());
        assert!(cut.ends_with("… (cut)"));
        let status = status_from_domain(&DomainError::invalid("model", "x".repeat(100_000)));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().len() <= STATUS_MESSAGE_BYTES_MAX);
    }

    #[test]
    fn a_bad_name_is_shown_by_its_start_and_length_not_whole() {
        let e = crate::domain::validate_name("model", &"a".repeat(100_000)).unwrap_err();
        let text = e.to_string();
        assert!(
            text.len() < 400 && text.contains("(100000 bytes)"),
            "{text}"
        );
    }
}
