//! The web UI: server-rendered pages (maud, escaped by construction) over the same node-level
//! reads and commands as the gRPC services, with the same role checks. No JavaScript build step:
//! htmx (vendored, `ui/assets/`) narrows the catalog as one types; every page works without it.
//!
//! - **Sign-in** (`session`): a Quiver token, posted once, kept in an HttpOnly, SameSite=Strict
//!   cookie; every request authenticates it as the API authenticates a bearer token (a revoked
//!   or expired token is refused on the next request). Actions are POSTs that carry the
//!   session's CSRF token and, when the browser sends one, a same-origin `Origin`.
//! - **Pages** (`pages`): catalog, model, version (with the lineage graph, `graph`), review
//!   queue, deployments, cluster, audit log. Every listing is one bounded page of a paged query.
//! - **Assets** (`assets`): embedded in the binary, served under content-hashed names with a
//!   year-long immutable cache header.

mod assets;
mod graph;
mod pages;
mod session;
mod view;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use quiver_transfer::quic::ChunkPeers;
use quiver_transfer::ChunkSource;

use crate::domain::DomainError;
use crate::error::NodeError;
use crate::node::Node;

/// Where the UI lives on the node's HTTP listener.
pub const UI_ROOT: &str = "/ui";
/// Largest request body a UI form may send (a token, a comment): larger ones are refused
/// before they are read.
pub const FORM_BYTES_MAX: usize = 16 * 1024;

/// What every UI handler shares.
pub struct Ui<S, P> {
    pub node: Arc<Node<S, P>>,
    /// Keys the CSRF token of a session (`session::csrf_token`); new at each start, so a
    /// restarted node asks forms to be reloaded, never to sign in again.
    csrf_key: [u8; 32],
    assets: &'static assets::Assets,
}

type UiState<S, P> = axum::extract::State<Arc<Ui<S, P>>>;

/// The UI's routes.
pub fn router<S: ChunkSource + Clone, P: ChunkPeers>(node: Arc<Node<S, P>>) -> axum::Router {
    let ui = Arc::new(Ui {
        node,
        csrf_key: rand::random(),
        assets: assets::Assets::embedded(),
    });
    axum::Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/models") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/models") }))
        .route(
            "/ui/signin",
            get(session::signin_page::<S, P>).post(session::signin::<S, P>),
        )
        .route("/ui/signout", post(session::signout::<S, P>))
        .route("/ui/assets/{name}", get(assets::serve::<S, P>))
        .route("/ui/models", get(pages::catalog::<S, P>))
        .route("/ui/models/{model}", get(pages::model::<S, P>))
        .route(
            "/ui/models/{model}/versions/{number}",
            get(pages::version::<S, P>),
        )
        .route("/ui/lineage", get(pages::entity::<S, P>))
        .route("/ui/reviews", get(pages::reviews::<S, P>))
        .route("/ui/reviews/{id}/decide", post(pages::decide::<S, P>))
        .route("/ui/deployments", get(pages::deployments::<S, P>))
        .route("/ui/cluster", get(pages::cluster::<S, P>))
        .route("/ui/audit", get(pages::audit::<S, P>))
        .route("/ui/audit/verify", get(pages::verify_audit::<S, P>))
        // Not a fallback: the node's router merges others beside this one.
        .route(
            "/ui/{*rest}",
            axum::routing::any(|uri: axum::http::Uri| async move {
                UiError::NotFound(format!("there is no page at {}", view::shown(uri.path())))
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(FORM_BYTES_MAX))
        .with_state(ui)
}

/// Why a UI request was not answered with its page.
#[derive(Debug)]
pub enum UiError {
    /// No session: the sign-in page, then back.
    SignIn,
    /// No session, or a refused one, on a request from htmx: it sends the whole page to the
    /// sign-in page (`HX-Redirect`) rather than swap that page into a fragment.
    SignInWhole,
    /// The session's token is refused (unknown, revoked, expired): sign in again.
    Refused(String),
    BadRequest(String),
    /// A form over [`FORM_BYTES_MAX`].
    TooLarge(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    Unavailable(String),
    Internal(String),
}

impl From<NodeError> for UiError {
    fn from(e: NodeError) -> Self {
        let message = crate::service::bounded(e.to_string());
        match e {
            NodeError::Rejected(d) => match d {
                DomainError::ModelNotFound { .. }
                | DomainError::VersionNotFound { .. }
                | DomainError::AliasNotFound { .. }
                | DomainError::StageEmpty { .. }
                | DomainError::ReviewNotFound { .. }
                | DomainError::DeploymentNotFound { .. } => UiError::NotFound(message),
                DomainError::NotAllowed { .. } => UiError::Forbidden(message),
                DomainError::Invalid { .. } => UiError::BadRequest(message),
                _ => UiError::Conflict(message),
            },
            NodeError::Invalid(_) => UiError::BadRequest(message),
            NodeError::Unauthenticated(_) => UiError::Refused(message),
            NodeError::PermissionDenied(_) => UiError::Forbidden(message),
            NodeError::NotMember(_) => UiError::NotFound(message),
            NodeError::NotLeader { .. }
            | NodeError::NoQuorum(_)
            | NodeError::Unreachable(_)
            | NodeError::TooFewCopies(_)
            | NodeError::DiskFull(_)
            | NodeError::Busy(_) => UiError::Unavailable(message),
            NodeError::Membership(_) => UiError::Conflict(message),
            NodeError::Aborted(_)
            | NodeError::DataLoss(_)
            | NodeError::Storage(_)
            | NodeError::Fatal(_) => UiError::Internal(message),
        }
    }
}

impl From<DomainError> for UiError {
    fn from(e: DomainError) -> Self {
        UiError::from(NodeError::Rejected(e))
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            UiError::SignIn => return Redirect::to("/ui/signin").into_response(),
            UiError::SignInWhole => {
                return (
                    StatusCode::UNAUTHORIZED,
                    [
                        (header::SET_COOKIE, session::clear_cookie()),
                        (
                            header::HeaderName::from_static("hx-redirect"),
                            "/ui/signin".into(),
                        ),
                    ],
                )
                    .into_response()
            }
            UiError::Refused(m) => {
                let page = session::signin_markup(Some(&m));
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::SET_COOKIE, session::clear_cookie())],
                    view::html_response(page),
                )
                    .into_response();
            }
            UiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m),
            UiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "Too large", m),
            UiError::Forbidden(m) => (StatusCode::FORBIDDEN, "Not allowed", m),
            UiError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            UiError::Conflict(m) => (StatusCode::CONFLICT, "Refused", m),
            UiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable", m),
            UiError::Internal(m) => {
                tracing::error!("web UI: {m}");
                (StatusCode::INTERNAL_SERVER_ERROR, "Internal error", m)
            }
        };
        (
            status,
            view::html_response(view::error_page(title, &message)),
        )
            .into_response()
    }
}

/// What a UI handler answers.
pub type UiResult<T> = Result<T, UiError>;
