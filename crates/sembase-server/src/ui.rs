//! The page at `GET /`: compare texts, search an index, classify with the heads, read
//! evaluation reports, in a browser, through the server's own API.
//!
//! The files under `ui/` are compiled into the binary, so the page needs no build step
//! and no files beside the binary, and it loads nothing from anywhere else (the
//! Content-Security-Policy below holds it to that). The page and its assets are open;
//! what it asks of the API carries the key the user typed in, like any other client.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const STYLE_CSS: &str = include_str!("../ui/style.css");
const ICON_SVG: &str = include_str!("../ui/icon.svg");

/// Everything from this server and nothing else. Inline styles are allowed only because
/// an opened report (its own HTML, with an inline `<style>`) is shown in a sandboxed
/// `srcdoc` frame, which takes the page's policy; scripts stay limited to `app.js`.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; frame-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's routes, for a router whose state is `S`.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/ui/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }))
        .route("/ui/icon.svg", get(|| async { asset("image/svg+xml", ICON_SVG) }))
}

/// One embedded file with the page's security headers. `no-cache` makes a browser
/// check again after the server is upgraded, so the page and its script match.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP)),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every control the browser tests and DESIGN.md name is in the page or its script.
    #[test]
    fn the_page_carries_the_stable_test_ids() {
        for id in [
            "compare-input",
            "compare-run",
            "similarity",
            "search-query",
            "search-run",
            "search-hit",
            "search-rerank",
            "hit-before-rank",
            "classify-input",
            "classify-run",
            "classify-label",
            "error",
        ] {
            let in_html = INDEX_HTML.contains(&format!("data-testid=\"{id}\""));
            let in_js = APP_JS.contains(&format!("testid: '{id}'"));
            assert!(in_html || in_js, "data-testid {id} is missing");
        }
    }

    /// Nothing points outside the server.
    #[test]
    fn no_external_resources() {
        for (name, text) in
            [("index.html", INDEX_HTML), ("app.js", APP_JS), ("style.css", STYLE_CSS)]
        {
            for scheme in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(scheme), "{name} contains {scheme}");
            }
        }
    }
}
