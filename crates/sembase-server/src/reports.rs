//! Evaluation reports (the HTML files `sembase eval --report` writes) from the
//! directory the server was given (`--reports DIR`): listed at `GET /v1/reports`,
//! served one by one at `GET /reports/{name}`.
//!
//! Only plain `*.html` file names directly inside the directory are ever opened, so a
//! request cannot reach anything else on the disk; symbolic links are skipped for the
//! same reason. A report is served under a Content-Security-Policy that lets it style
//! itself and nothing more: no scripts, no requests, no forms.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::handlers::{json, AppResult};
use crate::AppState;

/// What a report page may do: use its own inline styles and data-URL images. The
/// `sandbox` directive gives it a unique origin with scripts off, even if one were
/// written into a report.
const REPORT_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'self'; sandbox";

/// `GET /v1/reports` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportList {
    /// Always `list`.
    pub object: &'static str,
    /// Whether the server was given a reports directory (`--reports DIR`).
    pub enabled: bool,
    /// The `*.html` files in it, by name.
    pub data: Vec<ReportObject>,
}

/// One report file.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportObject {
    /// File name; open it at `/reports/{name}`.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Last change, Unix seconds.
    pub modified: u64,
}

/// A name that can only mean a file directly inside the reports directory: no path
/// separators, no `..`, no hidden files, no control characters, ending in `.html`.
pub(crate) fn is_report_name(name: &str) -> bool {
    name.len() <= 255
        && name.len() > ".html".len()
        && name.ends_with(".html")
        && !name.starts_with('.')
        && !name.contains("..")
        && name.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ' | '+'))
}

/// The reports directory, or 404 when the server has none.
fn directory(state: &AppState) -> AppResult<&FsPath> {
    state.config.reports.as_deref().ok_or_else(|| {
        ApiError::not_found("this server has no reports directory (start it with --reports DIR)")
            .code("report_not_found")
    })
}

/// The reports in the directory, by name.
#[utoipa::path(
    get,
    path = "/v1/reports",
    responses(
        (status = 200, description = "The reports; `enabled` is false when the server has no reports directory", body = ReportList),
        (status = 401, description = "Missing or wrong API key", body = crate::error::ErrorResponse),
        (status = 500, description = "The directory could not be read", body = crate::error::ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_reports(State(state): State<Arc<AppState>>) -> AppResult<Response> {
    let Some(dir) = state.config.reports.clone() else {
        return Ok(json(&ReportList { object: "list", enabled: false, data: Vec::new() }));
    };
    let data = tokio::task::spawn_blocking(move || scan(&dir))
        .await
        .map_err(|_| ApiError::internal("a worker task failed"))??;
    Ok(json(&ReportList { object: "list", enabled: true, data }))
}

/// Reads the directory: regular `*.html` files with acceptable names, sorted by name.
fn scan(dir: &FsPath) -> AppResult<Vec<ReportObject>> {
    let unreadable = |e: std::io::Error| {
        ApiError::internal(format!("could not read the reports directory: {e}"))
    };
    let mut reports = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        // `DirEntry::metadata` does not follow symbolic links, so links are skipped.
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() || !is_report_name(&name) {
            continue;
        }
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        reports.push(ReportObject { name, bytes: meta.len(), modified });
    }
    reports.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(reports)
}

/// One report, as HTML under a restrictive Content-Security-Policy.
#[utoipa::path(
    get,
    path = "/reports/{name}",
    params(("name" = String, Path, description = "A file name from `GET /v1/reports`")),
    responses(
        (status = 200, description = "The report", body = String, content_type = "text/html"),
        (status = 400, description = "Not a plain `*.html` file name", body = crate::error::ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = crate::error::ErrorResponse),
        (status = 404, description = "No such report, or no reports directory (`report_not_found`)", body = crate::error::ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn report(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
) -> AppResult<Response> {
    let dir = directory(&state)?;
    let name = match name {
        Ok(Path(name)) if is_report_name(&name) => name,
        _ => {
            return Err(ApiError::bad_request(
                "a report is named by a plain file name ending in .html, without `/` or `..`",
            )
            .param("name"))
        }
    };
    let path: PathBuf = dir.join(&name);
    let missing = || {
        ApiError::not_found(format!("there is no report named {name:?}")).code("report_not_found")
    };
    // `symlink_metadata`: a link is not a plain file, so it is refused like a missing one.
    let body = tokio::task::spawn_blocking(move || match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_file() => std::fs::read(&path).ok(),
        _ => None,
    })
    .await
    .map_err(|_| ApiError::internal("a worker task failed"))?
    .ok_or_else(missing)?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(REPORT_CSP)),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::is_report_name;

    #[test]
    fn only_plain_html_names_pass() {
        for good in ["report.html", "eval 2024-05-01.html", "评测.html", "a.b.html", "x+y.html"] {
            assert!(is_report_name(good), "{good}");
        }
        for bad in [
            "",
            ".html",
            ".hidden.html",
            "../x.html",
            "..html",
            "a/b.html",
            "a\\b.html",
            "report.htm",
            "report.html.txt",
            "report",
            "a\0.html",
            "a\n.html",
            "/etc/passwd",
        ] {
            assert!(!is_report_name(bad), "{bad:?}");
        }
    }
}
