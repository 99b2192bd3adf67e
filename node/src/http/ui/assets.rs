//! The UI's static files, embedded in the binary and served under names that carry a hash of
//! their content (`htmx-<hash>.js`), with a year-long immutable cache header: a changed file is
//! a new URL, so a browser never runs a stale copy. See `assets/README.md` for versions and
//! licences.

use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use quiver_transfer::quic::ChunkPeers;
use quiver_transfer::ChunkSource;

use super::{UiError, UiState};

/// htmx 2.0.11, unchanged from its npm package (0BSD).
const HTMX_JS: &[u8] = include_bytes!("assets/htmx-2.0.11.min.js");
/// The UI's hand-written stylesheet.
const UI_CSS: &[u8] = include_bytes!("assets/ui.css");
/// How long a browser may keep an asset (its URL changes with its content).
const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// One embedded file: the name it is served under, its type, its bytes.
pub struct Asset {
    pub name: String,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

impl Asset {
    fn hashed(stem: &str, ext: &str, content_type: &'static str, bytes: &'static [u8]) -> Asset {
        let hash = blake3::hash(bytes).to_hex();
        Asset {
            name: format!("{stem}-{}.{ext}", &hash[..16]),
            content_type,
            bytes,
        }
    }

    pub fn url(&self) -> String {
        format!("/ui/assets/{}", self.name)
    }
}

/// Every embedded file.
pub struct Assets {
    pub htmx: Asset,
    pub css: Asset,
}

static ASSETS: LazyLock<Assets> = LazyLock::new(|| Assets {
    htmx: Asset::hashed("htmx", "js", "text/javascript; charset=utf-8", HTMX_JS),
    css: Asset::hashed("ui", "css", "text/css; charset=utf-8", UI_CSS),
});

impl Assets {
    pub fn embedded() -> &'static Assets {
        &ASSETS
    }

    fn by_name(&self, name: &str) -> Option<&Asset> {
        [&self.htmx, &self.css].into_iter().find(|a| a.name == name)
    }
}

pub fn htmx_url() -> String {
    ASSETS.htmx.url()
}

pub fn css_url() -> String {
    ASSETS.css.url()
}

/// `GET /ui/assets/{name}`: an embedded file by its hashed name (no session needed: nothing
/// in them is private).
pub async fn serve<S: ChunkSource + Clone, P: ChunkPeers>(
    State(ui): UiState<S, P>,
    Path(name): Path<String>,
) -> Response {
    match ui.assets.by_name(&name) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, CACHE_CONTROL),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            asset.bytes,
        )
            .into_response(),
        None => UiError::NotFound(format!(
            "there is no asset {}: pages name them with the hash of their content",
            super::view::shown(&name)
        ))
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_names_carry_their_content_hash() {
        let assets = Assets::embedded();
        assert!(assets.htmx.name.starts_with("htmx-") && assets.htmx.name.ends_with(".js"));
        let hash = &blake3::hash(HTMX_JS).to_hex()[..16];
        assert!(assets.htmx.name.contains(hash), "{}", assets.htmx.name);
        assert!(assets.by_name(&assets.css.name).is_some());
        assert!(assets.by_name("htmx.js").is_none());
        // The vendored file is htmx 2.0.11 as its package shipped it.
        assert!(std::str::from_utf8(HTMX_JS)
            .expect("text")
            .contains("version:\"2.0.11\""));
    }
}
