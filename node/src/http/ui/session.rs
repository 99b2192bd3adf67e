//! Sign-in with a Quiver token: the token is kept in an HttpOnly, SameSite=Strict cookie and
//! authenticated on every request exactly as a bearer token is (`Node::authorize`), so a
//! revoked or expired token is refused at once. Every POST but the sign-in itself carries the
//! session's CSRF token (a keyed hash of the session's token: nothing to store), and any POST
//! whose browser names another origin is refused.

use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use quiver_transfer::quic::ChunkPeers;
use quiver_transfer::ChunkSource;
use serde::Deserialize;

use super::{view, Ui, UiError, UiResult, UiState};
use crate::access::{parse_bearer, Credential, Target};
use crate::auth::Role;
use crate::domain::Actor;

/// The cookie that holds a session's token.
pub const SESSION_COOKIE: &str = "quiver_session";
/// How long a browser keeps the cookie (the token's own expiry still applies).
pub const SESSION_MAX_AGE_SECS: u64 = 12 * 3600;
/// Longest token text read from a form or a cookie (a token is 54 bytes).
pub const TOKEN_TEXT_BYTES_MAX: usize = 256;

/// A signed-in request: who, and the CSRF token its forms carry.
pub struct Session {
    pub actor: Actor,
    pub csrf: String,
}

impl Session {
    /// The session of a request, authenticated (no cookie: [`UiError::SignIn`]).
    pub async fn of<S: ChunkSource + Clone, P: ChunkPeers>(
        ui: &Ui<S, P>,
        headers: &HeaderMap,
    ) -> UiResult<Session> {
        Self::authenticated(ui, headers, None)
            .await
            .map_err(|e| for_htmx(headers, e))
    }

    /// [`Session::of`], checked for `role` on `target` as the API checks the same read.
    pub async fn with<S: ChunkSource + Clone, P: ChunkPeers>(
        ui: &Ui<S, P>,
        headers: &HeaderMap,
        role: Role,
        target: Target<'_>,
        action: &str,
    ) -> UiResult<Session> {
        Self::authenticated(ui, headers, Some((role, target, action)))
            .await
            .map_err(|e| for_htmx(headers, e))
    }

    async fn authenticated<S: ChunkSource + Clone, P: ChunkPeers>(
        ui: &Ui<S, P>,
        headers: &HeaderMap,
        need: Option<(Role, Target<'_>, &str)>,
    ) -> UiResult<Session> {
        let Some(text) = session_token(headers) else {
            return Err(UiError::SignIn);
        };
        let credential = credential_of(text)?;
        let actor = match need {
            None => ui.node.authenticate(&credential).await?,
            Some((role, target, action)) => {
                ui.node.authorize(&credential, role, target, action).await?
            }
        };
        Ok(Session {
            csrf: csrf_token(&ui.csrf_key, text),
            actor,
        })
    }

    /// Refuses an action (a POST) whose CSRF token is not this session's, or whose browser says
    /// it comes from another origin.
    pub fn check_action(&self, headers: &HeaderMap, csrf: &str) -> UiResult<()> {
        same_origin(headers)?;
        if !constant_time_eq(self.csrf.as_bytes(), csrf.as_bytes()) {
            return Err(UiError::Forbidden(
                "this form is stale or was not sent from this UI (its CSRF token does not match \
                 the session): reload the page and try again"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// A request from htmx (the catalog as one types, the audit verification) is not sent to the
/// sign-in page in place of its fragment: the whole page goes there.
fn for_htmx(headers: &HeaderMap, e: UiError) -> UiError {
    let from_htmx = headers.get("hx-request").is_some_and(|v| v == "true");
    match e {
        UiError::SignIn | UiError::Refused(_) if from_htmx => UiError::SignInWhole,
        e => e,
    }
}

fn credential_of(text: &str) -> UiResult<Credential> {
    Ok(Credential {
        token: Some(parse_bearer(text)?),
        certificate: None,
    })
}

/// The session cookie's value, if the request carries one (the first, if several).
fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// The CSRF token of a session: 128 bits of a keyed blake3 of its token.
pub fn csrf_token(key: &[u8; 32], token: &str) -> String {
    let hash = blake3::keyed_hash(key, token.as_bytes());
    hex::encode(&hash.as_bytes()[..16])
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses a request whose browser names an origin other than the host it was sent to
/// (`Origin`), or says it is cross-site (`Sec-Fetch-Site`). Browsers send at least one of them
/// on every POST; a client that sends neither is not a browser another site can drive.
pub fn same_origin(headers: &HeaderMap) -> UiResult<()> {
    let refused = || {
        UiError::Forbidden(
            "this action was sent from another site: open the UI and act from its pages".into(),
        )
    };
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().map_err(|_| refused())?;
        if !matches!(site, "same-origin" | "none") {
            return Err(refused());
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().map_err(|_| refused())?;
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(refused)?;
        let expected = [format!("http://{host}"), format!("https://{host}")];
        if !expected.iter().any(|e| e == origin) {
            return Err(refused());
        }
    }
    Ok(())
}

/// The `Set-Cookie` value that starts a session holding `token`.
fn session_cookie(token: &str) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={SESSION_MAX_AGE_SECS}"
    )
}

/// The `Set-Cookie` value that ends a session.
pub fn clear_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The sign-in page; `problem` says why the last attempt (or the session) was refused.
pub fn signin_markup(problem: Option<&str>) -> Markup {
    view::bare_page(
        "Sign in",
        html! {
            main.signin {
                h1 { "Sign in to Quiver" }
                @if let Some(problem) = problem {
                    p.problem role="alert" { (problem) }
                }
                form method="post" action="/ui/signin" {
                    label for="token" { "Token" }
                    input #token type="password" name="token" autocomplete="off" required
                        placeholder="qvr_…" maxlength=(TOKEN_TEXT_BYTES_MAX);
                    button type="submit" { "Sign in" }
                }
                p.hint {
                    "A token is what " code { "quiver token create" }
                    " printed. A local cluster keeps its admin's in " code { ".quiver/admin.token" } "."
                }
            }
        },
    )
}

pub async fn signin_page<S: ChunkSource + Clone, P: ChunkPeers>(
    State(_ui): UiState<S, P>,
) -> Response {
    view::html_response(signin_markup(None)).into_response()
}

#[derive(Deserialize)]
pub struct SigninForm {
    #[serde(default)]
    token: String,
}

/// Checks the token as the API would (unknown, malformed, revoked, expired: refused, and no
/// cookie is set) and starts a session holding it.
pub async fn signin<S: ChunkSource + Clone, P: ChunkPeers>(
    State(ui): UiState<S, P>,
    headers: HeaderMap,
    Form(form): Form<SigninForm>,
) -> UiResult<Response> {
    same_origin(&headers)?;
    let token = form.token.trim();
    if token.is_empty() {
        return Err(UiError::Refused("enter a token".into()));
    }
    if token.len() > TOKEN_TEXT_BYTES_MAX {
        return Err(UiError::Refused(format!(
            "a token is 54 characters; this is {} bytes",
            token.len()
        )));
    }
    let credential = credential_of(token)?;
    ui.node.authenticate(&credential).await?;
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, session_cookie(token)),
            (header::LOCATION, "/ui/models".to_string()),
        ],
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
}

/// Ends the session (the browser forgets the token; the token itself stays valid).
pub async fn signout<S: ChunkSource + Clone, P: ChunkPeers>(
    State(ui): UiState<S, P>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> UiResult<Response> {
    let session = Session::of(&ui, &headers).await?;
    session.check_action(&headers, &form.csrf)?;
    Ok((
        [(header::SET_COOKIE, clear_cookie())],
        Redirect::to("/ui/signin"),
    )
        .into_response())
}
