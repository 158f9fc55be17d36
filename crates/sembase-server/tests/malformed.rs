//! A corpus of malformed and hostile requests: each gets its exact status and the
//! OpenAI error shape, and the server is healthy afterwards.

mod common;

use common::*;
use sembase_server::ServerConfig;

const KEY: &str = "test-key";

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    auth: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

fn case(
    name: &'static str,
    body: impl Into<Vec<u8>>,
    status: u16,
    param: Option<&'static str>,
    code: Option<&'static str>,
) -> Case {
    Case {
        name,
        method: "POST",
        path: "/v1/embeddings",
        auth: Some(KEY),
        body: body.into(),
        status,
        kind: "invalid_request_error",
        param,
        code,
    }
}

fn corpus(max_body: usize) -> Vec<Case> {
    let input = Some("input");
    let json = Some("invalid_json");
    let cases = vec![
        case("empty body", "", 400, None, json),
        case("truncated JSON", r#"{"input": "abc"#, 400, None, json),
        case("not JSON at all", "input=hello", 400, None, json),
        case("trailing garbage", r#"{"input": "a"} {"input": "b"}"#, 400, None, json),
        case("single quotes", "{'input': 'a'}", 400, None, json),
        case("non-UTF-8 bytes in a string", b"{\"input\": \"caf\xe9\"}".to_vec(), 400, None, json),
        case(
            "non-UTF-8 bytes outside strings",
            b"\xff\xfe{\"input\": \"a\"}".to_vec(),
            400,
            None,
            json,
        ),
        case("lone surrogate escape", r#"{"input": "\ud800"}"#, 400, None, json),
        case(
            "deep nesting, unclosed",
            format!("{{\"x\": {}, \"input\": \"a\"}}", "[".repeat(10_000)),
            400,
            None,
            json,
        ),
        case(
            "deep nesting in input",
            format!("{{\"input\": {}{}}}", "[".repeat(5000), "]".repeat(5000)),
            400,
            input,
            None,
        ),
        case("body is an array", r#"["a", "b"]"#, 400, None, None),
        case("body is a string", r#""hello""#, 400, None, None),
        case("body is null", "null", 400, None, None),
        case("input missing", r#"{"model": "fake"}"#, 400, None, None),
        case("input null", r#"{"input": null}"#, 400, input, None),
        case("input a number", r#"{"input": 42}"#, 400, input, None),
        case("input a bool", r#"{"input": true}"#, 400, input, None),
        case("input an object", r#"{"input": {"text": "a"}}"#, 400, input, None),
        case("input empty string", r#"{"input": ""}"#, 400, input, None),
        case("input empty array", r#"{"input": []}"#, 400, input, None),
        case("empty string in array", r#"{"input": ["a", ""]}"#, 400, input, None),
        case("empty token array in array", r#"{"input": [[1, 2], []]}"#, 400, input, None),
        case("strings mixed with ids", r#"{"input": ["a", 1]}"#, 400, input, None),
        case("ids mixed with strings", r#"{"input": [1, "a"]}"#, 400, input, None),
        case("ids mixed with arrays", r#"{"input": [1, [2]]}"#, 400, input, None),
        case("arrays mixed with strings", r#"{"input": [[1], "a"]}"#, 400, input, None),
        case("string inside a token array", r#"{"input": [[1, "a"]]}"#, 400, input, None),
        case("triple nesting", r#"{"input": [[[1]]]}"#, 400, input, None),
        case("null in array", r#"{"input": ["a", null]}"#, 400, input, None),
        case("negative token id", r#"{"input": [-1]}"#, 400, input, None),
        case("token id over u32", r#"{"input": [4294967296]}"#, 400, input, None),
        case("fractional token id", r#"{"input": [1.5]}"#, 400, input, None),
        case("token id outside the vocabulary", r#"{"input": [[1], [99999]]}"#, 400, input, None),
        case(
            "2049 inputs",
            format!("{{\"input\": [{}]}}", vec!["\"a\""; 2049].join(",")),
            400,
            input,
            None,
        ),
        case(
            "2049 token arrays",
            format!("{{\"input\": [{}]}}", vec!["[1]"; 2049].join(",")),
            400,
            input,
            None,
        ),
        case(
            "dimensions zero",
            r#"{"input": "a", "dimensions": 0}"#,
            400,
            Some("dimensions"),
            None,
        ),
        case(
            "dimensions over the width",
            r#"{"input": "a", "dimensions": 9}"#,
            400,
            Some("dimensions"),
            None,
        ),
        case(
            "dimensions negative",
            r#"{"input": "a", "dimensions": -4}"#,
            400,
            Some("dimensions"),
            None,
        ),
        case(
            "dimensions fractional",
            r#"{"input": "a", "dimensions": 2.5}"#,
            400,
            Some("dimensions"),
            None,
        ),
        case(
            "dimensions a string",
            r#"{"input": "a", "dimensions": "4"}"#,
            400,
            Some("dimensions"),
            None,
        ),
        case(
            "dimensions huge",
            r#"{"input": "a", "dimensions": 1e300}"#,
            400,
            Some("dimensions"),
            None,
        ),
        case(
            "unknown encoding_format",
            r#"{"input": "a", "encoding_format": "hex"}"#,
            400,
            Some("encoding_format"),
            None,
        ),
        case(
            "encoding_format a number",
            r#"{"input": "a", "encoding_format": 1}"#,
            400,
            Some("encoding_format"),
            None,
        ),
        case("model a number", r#"{"input": "a", "model": 7}"#, 400, Some("model"), None),
        case("user an object", r#"{"input": "a", "user": {}}"#, 400, Some("user"), None),
        case("duplicate field", r#"{"input": "a", "input": "b"}"#, 400, None, None),
        case(
            "unknown model",
            r#"{"input": "a", "model": "gpt-4"}"#,
            404,
            Some("model"),
            Some("model_not_found"),
        ),
        case(
            "empty model name",
            r#"{"input": "a", "model": ""}"#,
            404,
            Some("model"),
            Some("model_not_found"),
        ),
        case(
            "body over the limit",
            format!("{{\"input\": \"{}\"}}", "a ".repeat(max_body)),
            413,
            None,
            Some("request_too_large"),
        ),
        Case {
            auth: None,
            ..case("no API key", r#"{"input": "a"}"#, 401, None, Some("invalid_api_key"))
        },
        Case {
            auth: Some("wrong"),
            ..case("wrong API key", r#"{"input": "a"}"#, 401, None, Some("invalid_api_key"))
        },
        Case {
            auth: Some(""),
            ..case("empty bearer", r#"{"input": "a"}"#, 401, None, Some("invalid_api_key"))
        },
        Case {
            method: "GET",
            ..case("GET on the POST route", "", 405, None, Some("method_not_allowed"))
        },
        Case {
            path: "/v1/embedding",
            ..case("unknown route", r#"{"input": "a"}"#, 404, None, Some("not_found"))
        },
        Case { path: "/tokenize", ..case("tokenize: bad JSON", "{", 400, None, json) },
        Case {
            path: "/tokenize",
            ..case("tokenize: wrong type", r#"{"inputs": [1]}"#, 422, Some("inputs"), None)
        },
        Case { path: "/tokenize", ..case("tokenize: missing inputs", r#"{}"#, 422, None, None) },
        Case {
            path: "/tokenize",
            ..case("tokenize: empty string", r#"{"inputs": ""}"#, 422, Some("inputs"), None)
        },
    ];
    cases
}

#[test]
fn every_malformed_request_gets_its_status_and_error_shape_and_the_server_stays_healthy() {
    let max_body = 64 << 10;
    let model = FakeModel::new("fake", 8, 16);
    let config = ServerConfig {
        api_key: Some(KEY.into()),
        max_body_bytes: max_body,
        ..ServerConfig::default()
    };
    let server = TestServer::fake(config, &model);
    for c in corpus(max_body) {
        let bearer = c.auth.map(|k| format!("Bearer {k}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(b) = &bearer {
            headers.push(("Authorization", b.as_str()));
        }
        let reply = request(server.addr, c.method, c.path, &headers, &c.body);
        reply.assert_error(c.status, c.kind, c.param, c.code, c.name);
        if c.status == 401 {
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{}", c.name);
        }
    }
    let health = server.get("/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    // and it still embeds
    let ok = request(
        server.addr,
        "POST",
        "/v1/embeddings",
        &[("Authorization", "Bearer test-key")],
        br#"{"input": ["still", "working"]}"#,
    );
    assert_eq!(vectors(&ok).len(), 2);
    // nothing above was the server's fault
    let metrics = server.server.metrics_text();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("sembase_http_requests_total") && l.contains("status=\"5")),
        "{metrics}"
    );
}

#[test]
fn an_oversized_body_without_content_length_is_cut_off_at_the_limit() {
    let max_body = 4 << 10;
    let model = FakeModel::new("fake", 8, 16);
    let server = TestServer::fake(
        ServerConfig { max_body_bytes: max_body, ..ServerConfig::default() },
        &model,
    );
    // chunked transfer encoding: the size is only known while reading
    let payload = format!("{{\"input\": \"{}\"}}", "a ".repeat(max_body));
    let mut raw = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        payload.len()
    )
    .into_bytes();
    raw.extend_from_slice(payload.as_bytes());
    raw.extend_from_slice(b"\r\n0\r\n\r\n");
    send_raw(server.addr, &raw).assert_error(
        413,
        "invalid_request_error",
        None,
        Some("request_too_large"),
        "chunked",
    );
    // just under the limit is fine
    let body = format!("{{\"input\": \"{}\"}}", "a ".repeat(max_body / 2 - 20));
    assert!(body.len() < max_body);
    let reply = request(server.addr, "POST", "/v1/embeddings", &[], body.as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn max_inputs_is_configurable() {
    let model = FakeModel::new("fake", 8, 16);
    let server =
        TestServer::fake(ServerConfig { max_inputs: 3, ..ServerConfig::default() }, &model);
    let ok = request(server.addr, "POST", "/v1/embeddings", &[], br#"{"input": ["a", "b", "c"]}"#);
    assert_eq!(ok.status, 200);
    let over =
        request(server.addr, "POST", "/v1/embeddings", &[], br#"{"input": ["a", "b", "c", "d"]}"#);
    over.assert_error(400, "invalid_request_error", Some("input"), None, "4 inputs");
    assert!(over.json()["error"]["message"].as_str().unwrap().contains("limit of 3"));
}
