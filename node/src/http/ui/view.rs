//! The page shell and the small formatting helpers every page shares.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::assets;
use super::session::Session;
use crate::domain::{stage_label, Stage};

/// What a page's `<head>` allows: scripts and styles from this node only (htmx is told not to
/// inject its own styles and not to evaluate code from attributes).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// A page as an HTTP answer: HTML, never cached, never framed.
pub fn html_response(page: Markup) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::HeaderName::from_static("content-security-policy"),
                CONTENT_SECURITY_POLICY,
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "same-origin"),
            (header::VARY, "HX-Request, Cookie"),
        ],
        page.into_string(),
    )
        .into_response()
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false}"#;
            title { (title) " · Quiver" }
            // No icon to fetch (a browser asks for /favicon.ico otherwise, and logs its 404).
            link rel="icon" href="data:,";
            link rel="stylesheet" href=(assets::css_url());
            script src=(assets::htmx_url()) defer {}
        }
    }
}

/// A page without the navigation (sign-in, errors).
pub fn bare_page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { (body) }
        }
    }
}

/// The pages in the navigation bar: (path, label).
const NAV: [(&str, &str); 5] = [
    ("/ui/models", "Catalog"),
    ("/ui/reviews", "Reviews"),
    ("/ui/deployments", "Deployments"),
    ("/ui/cluster", "Cluster"),
    ("/ui/audit", "Audit log"),
];

/// A signed-in page: the navigation (`current` marked), who is signed in, and `body`.
pub fn page(session: &Session, current: &str, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    a.brand href="/ui/models" { "Quiver" }
                    nav {
                        @for (path, label) in NAV {
                            @if path == current {
                                a.current href=(path) aria-current="page" { (label) }
                            } @else {
                                a href=(path) { (label) }
                            }
                        }
                    }
                    form.signout method="post" action="/ui/signout" {
                        span.who { "signed in as " strong { (session.actor.name) } }
                        input type="hidden" name="csrf" value=(session.csrf);
                        button type="submit" { "Sign out" }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The page a refusal or a missing object answers with.
pub fn error_page(title: &str, message: &str) -> Markup {
    bare_page(
        title,
        html! {
            main.error {
                h1 { (title) }
                p.problem role="alert" { (message) }
                p { a href="/ui/models" { "Back to the catalog" } }
            }
        },
    )
}

/// `value` for a message: whole if short, else its start and its length (never echoed whole).
pub fn shown(value: &str) -> String {
    crate::domain::shown(value)
}

/// A time as UTC text.
pub fn time(ms: i64) -> String {
    crate::auth::utc_text(ms)
}

/// A size in bytes as people read it (binary units).
pub fn bytes(size: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = size as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{size} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// A stage as a badge.
pub fn stage(stage: Stage) -> Markup {
    let label = stage_label(stage);
    html! { span class={ "stage stage-" (label) } { (label) } }
}

/// The link to a model's page (names are `[a-z0-9._-]`, safe in a path).
pub fn model_url(model: &str) -> String {
    format!("/ui/models/{model}")
}

/// The link to a version's page.
pub fn version_url(model: &str, number: u64) -> String {
    format!("/ui/models/{model}/versions/{number}")
}

/// `text` percent-encoded for a query string.
pub fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The "next page" link of a listing, when there is a next page.
pub fn next_link(next: Option<String>) -> Markup {
    html! {
        @if let Some(href) = next {
            nav.pager { a.next rel="next" href=(href) { "Next page →" } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_shown_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(u64::MAX), "16777216.0 TiB");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("a b&c=<d>"), "a%20b%26c%3D%3Cd%3E");
        assert_eq!(query_value("é"), "%C3%A9");
        assert_eq!(query_value("reco-model_1.2~"), "reco-model_1.2~");
    }
}
