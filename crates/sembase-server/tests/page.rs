//! The page at `/` and the reports directory: served without a key, with a
//! Content-Security-Policy, off with `ui: false`; report names cannot leave the directory.

mod common;

use std::path::PathBuf;

use common::{request, FakeModel, TestServer};
use sembase_server::ServerConfig;

const KEY: &str = "page-key";

fn keyed(reports: Option<PathBuf>) -> ServerConfig {
    ServerConfig { api_key: Some(KEY.into()), reports, ..ServerConfig::default() }
}

/// A fresh temporary directory holding a report and a few files that must
/// never be served.
fn reports_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sembase-page-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("b-report.html"), "<html><body><h1>Report B</h1></body></html>")
        .unwrap();
    std::fs::write(dir.join("a-report.html"), "<html><body><h1>Report A</h1></body></html>")
        .unwrap();
    std::fs::write(dir.join("notes.txt"), "not a report").unwrap();
    std::fs::write(dir.join(".hidden.html"), "HIDDEN-CONTENT").unwrap();
    std::fs::write(dir.join("sub").join("deep.html"), "DEEP-CONTENT").unwrap();
    std::fs::write(
        dir.parent().unwrap().join(format!("x-{}.html", std::process::id())),
        "OUTSIDE-CONTENT",
    )
    .unwrap();
    dir
}

fn get_keyed(server: &TestServer, path: &str) -> common::Reply {
    request(server.addr, "GET", path, &[("Authorization", &format!("Bearer {KEY}"))], b"")
}

#[test]
fn the_page_loads_without_a_key_and_names_its_controls() {
    let model = FakeModel::new("fake", 8, 16);
    let server = TestServer::fake(keyed(None), &model);
    let page = server.get("/");
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    let csp = page.header("content-security-policy").expect("a CSP header");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("script-src 'self' 'unsafe"),
        "{csp}"
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let html = page.text();
    for id in
        ["compare-run", "search-query", "search-run", "classify-input", "classify-run", "error"]
    {
        assert!(html.contains(&format!("data-testid=\"{id}\"")), "page lacks {id}");
    }
    assert!(!html.contains("http://") && !html.contains("https://"), "external reference");
    // The results' ids are made by the script.
    let script = server.get("/ui/app.js");
    assert_eq!(script.status, 200);
    assert!(script.header("content-type").unwrap().starts_with("text/javascript"));
    assert!(script.header("content-security-policy").is_some());
    for id in ["compare-input", "similarity", "search-hit", "classify-label"] {
        assert!(script.text().contains(&format!("testid: '{id}'")), "app.js lacks {id}");
    }
    for asset in ["/ui/style.css", "/ui/icon.svg"] {
        assert_eq!(server.get(asset).status, 200, "{asset}");
    }
    // The API itself still wants the key.
    server.get("/v1/models").assert_error(
        401,
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
        "models without a key",
    );
    assert_eq!(get_keyed(&server, "/v1/models").status, 200);
}

#[test]
fn no_ui_answers_404_at_the_root() {
    let model = FakeModel::new("fake", 8, 16);
    let server = TestServer::fake(ServerConfig { ui: false, ..ServerConfig::default() }, &model);
    for path in ["/", "/ui/app.js", "/ui/style.css"] {
        server.get(path).assert_error(404, "invalid_request_error", None, Some("not_found"), path);
    }
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn reports_are_listed_and_served_from_the_directory_only() {
    let dir = reports_dir("serve");
    let model = FakeModel::new("fake", 8, 16);
    let server = TestServer::fake(keyed(Some(dir.clone())), &model);

    let list = get_keyed(&server, "/v1/reports");
    assert_eq!(list.status, 200, "{}", list.text());
    let list = list.json();
    assert_eq!(list["enabled"], true);
    let names: Vec<&str> =
        list["data"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a-report.html", "b-report.html"]);
    assert!(list["data"][0]["bytes"].as_u64().unwrap() > 0);

    let report = get_keyed(&server, "/reports/a-report.html");
    assert_eq!(report.status, 200, "{}", report.text());
    assert!(report.text().contains("Report A"));
    assert!(report.header("content-type").unwrap().starts_with("text/html"));
    let csp = report.header("content-security-policy").expect("a CSP header on reports");
    assert!(csp.contains("default-src 'none'") && csp.contains("sandbox"), "{csp}");

    // Reports are data: they need the key like the API.
    assert_eq!(server.get("/reports/a-report.html").status, 401);
    assert_eq!(server.get("/v1/reports").status, 401);

    let outside = format!("x-{}.html", std::process::id());
    for (path, status) in [
        ("/reports/..%2Fx.html".to_string(), 400),
        (format!("/reports/..%2F{outside}"), 400),
        ("/reports/..".to_string(), 400),
        ("/reports/%2Fetc%2Fpasswd".to_string(), 400),
        ("/reports/notes.txt".to_string(), 400),
        ("/reports/.hidden.html".to_string(), 400),
        ("/reports/sub%2Fdeep.html".to_string(), 400),
        ("/reports/sub%5Cdeep.html".to_string(), 400),
        ("/reports/sub/deep.html".to_string(), 404),
        ("/reports/missing.html".to_string(), 404),
        (format!("/reports/{outside}"), 404),
    ] {
        let reply = get_keyed(&server, &path);
        assert_eq!(reply.status, status, "{path}: {}", reply.text());
        assert!(
            !reply.text().contains("OUTSIDE-CONTENT") && !reply.text().contains("DEEP-CONTENT"),
            "{path}"
        );
        assert!(reply.json()["error"]["message"].is_string(), "{path}");
    }
    let _ = std::fs::remove_file(dir.parent().unwrap().join(outside));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_reports_directory_the_list_is_empty_and_off() {
    let model = FakeModel::new("fake", 8, 16);
    let server = TestServer::fake(keyed(None), &model);
    let list = get_keyed(&server, "/v1/reports").json();
    assert_eq!(list["enabled"], false);
    assert_eq!(list["data"], serde_json::json!([]));
    let reply = get_keyed(&server, "/reports/a.html");
    reply.assert_error(404, "invalid_request_error", None, Some("report_not_found"), "no dir");
}

#[test]
fn a_missing_reports_directory_is_refused_at_start() {
    let config = ServerConfig {
        reports: Some(std::env::temp_dir().join("sembase-no-such-reports-dir")),
        ..ServerConfig::default()
    };
    let error = sembase_server::Server::new(config).err().expect("refused");
    assert!(error.to_string().contains("not a directory"), "{error}");
}

#[test]
fn indexes_are_listed() {
    let model = FakeModel::new("fake", 8, 16);
    let server = TestServer::fake(keyed(None), &model);
    let list = get_keyed(&server, "/v1/indexes");
    assert_eq!(list.status, 200, "{}", list.text());
    assert_eq!(list.json(), serde_json::json!({"object": "list", "data": []}));
    assert_eq!(server.get("/v1/indexes").status, 401);
}

#[test]
fn openapi_describes_the_new_routes() {
    let model = FakeModel::new("fake", 8, 16);
    let server = TestServer::fake(ServerConfig::default(), &model);
    let doc = server.get("/openapi.json").json();
    for (path, method) in
        [("/v1/indexes", "get"), ("/v1/reports", "get"), ("/reports/{name}", "get")]
    {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} missing");
    }
    for schema in ["IndexList", "IndexObject", "ReportList", "ReportObject"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
}
