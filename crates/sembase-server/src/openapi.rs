//! The OpenAPI document, generated from the handler and body types.

use std::sync::OnceLock;

use serde_json::{json, Value};

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::{
    EmbeddingInput, EmbeddingObject, EmbeddingValue, EmbeddingsRequest, EmbeddingsResponse,
    EncodingFormat, Health, ModelKind, ModelList, ModelObject, TokenizeInputs, TokenizeRequest,
    Usage,
};
use crate::classify::{
    self, Classification, ClassifyRequest, ClassifyResponse, HeadOutput, Strings,
};
use crate::error::{ErrorBody, ErrorResponse};
use crate::handlers;
use crate::reports::{self, ReportList, ReportObject};
use crate::rerank::routes::{
    self as rerank, DocumentText, Rank, RerankDocument, RerankRequest, RerankResponse,
    RerankResult, TeiRerankRequest,
};
use crate::search::{
    self, DeleteRequest, IndexList, IndexObject, QueryHits, RerankStage, SearchHit, SearchRequest,
    SearchResponse, UpsertRequest, WriteResponse,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sembase",
        description = "Self-hosted text embeddings with OpenAI's /v1/embeddings contract, cross-encoder reranking (/v1/rerank, TEI's /rerank), task heads (classifiers) and corpus search on top."
    ),
    paths(
        handlers::embeddings,
        rerank::rerank,
        rerank::tei_rerank,
        classify::classify,
        search::search,
        search::list_indexes,
        search::upsert_documents,
        search::delete_documents,
        handlers::list_models,
        handlers::get_model,
        reports::list_reports,
        reports::report,
        handlers::tokenize,
        handlers::health,
        handlers::ready,
        handlers::metrics,
        handlers::openapi,
    ),
    components(schemas(
        EmbeddingsRequest,
        EmbeddingInput,
        EncodingFormat,
        EmbeddingsResponse,
        EmbeddingObject,
        EmbeddingValue,
        Usage,
        RerankRequest,
        RerankDocument,
        DocumentText,
        RerankResponse,
        RerankResult,
        TeiRerankRequest,
        Rank,
        ClassifyRequest,
        Strings,
        ClassifyResponse,
        Classification,
        HeadOutput,
        SearchRequest,
        RerankStage,
        SearchResponse,
        QueryHits,
        SearchHit,
        UpsertRequest,
        DeleteRequest,
        WriteResponse,
        IndexList,
        IndexObject,
        ReportList,
        ReportObject,
        ModelList,
        ModelObject,
        ModelKind,
        TokenizeRequest,
        TokenizeInputs,
        Health,
        ErrorResponse,
        ErrorBody,
    )),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document as JSON text (built once): the generated document, made to say
/// what the handlers really accept and answer (see [`conformance`]).
pub fn openapi_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        serde_json::to_value(ApiDoc::openapi())
            .map(conformance)
            .and_then(|doc| serde_json::to_string_pretty(&doc))
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    })
}

/// Operations behind the concurrency limit (429) whose work needs the models (503).
const WORK_ROUTES: [(&str, &str); 8] = [
    ("/v1/embeddings", "post"),
    ("/v1/rerank", "post"),
    ("/rerank", "post"),
    ("/v1/classify", "post"),
    ("/v1/search", "post"),
    ("/v1/indexes/{name}/documents", "post"),
    ("/v1/indexes/{name}/documents", "delete"),
    ("/tokenize", "post"),
];

/// What the derive cannot say, found by a schemathesis run (tests/python/test_conformance.py)
/// against the handlers: the statuses every route of a kind can answer (401 behind the key,
/// 400/413 for any JSON body, 429/503 behind the concurrency limit), and the constraints the
/// handlers check (no empty strings or arrays, `top_k` in 1..=1000, one of `query`/`queries`,
/// report names). Only adds what is missing, so annotations on the handlers take precedence.
fn conformance(mut doc: Value) -> Value {
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else { continue };
            for (method, operation) in item.iter_mut() {
                let secured = operation.get("security").is_some();
                let has_body = operation.get("requestBody").is_some();
                let work = WORK_ROUTES.contains(&(path.as_str(), method.as_str()));
                let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut)
                else {
                    continue;
                };
                let mut add = |status: &str, description: &str| {
                    responses.entry(status).or_insert_with(|| error_response(description));
                };
                if secured {
                    add("401", "Missing or wrong API key");
                }
                if has_body {
                    add("400", "Body is not valid JSON, or not a valid request");
                    add("413", "Body over the size limit");
                }
                if work {
                    add("429", "Too many concurrent requests; see Retry-After");
                    add("503", "Models still loading");
                }
            }
        }
    }
    let non_empty_string = json!({"minLength": 1});
    let non_empty_array = json!({"minItems": 1});
    let schemas = "/components/schemas";
    // `input`: no empty string, array, or token-id array.
    let input = format!("{schemas}/EmbeddingInput/oneOf");
    constrain(&mut doc, &format!("{input}/0"), &non_empty_string);
    constrain(&mut doc, &format!("{input}/1"), &non_empty_array);
    constrain(&mut doc, &format!("{input}/1/items"), &non_empty_string);
    constrain(&mut doc, &format!("{input}/2"), &non_empty_array);
    constrain(&mut doc, &format!("{input}/3"), &non_empty_array);
    constrain(&mut doc, &format!("{input}/3/items"), &non_empty_array);
    // One text or several, none empty (tokenize inputs, classify input and heads).
    for name in ["TokenizeInputs", "Strings"] {
        constrain(&mut doc, &format!("{schemas}/{name}/oneOf/0"), &non_empty_string);
        constrain(&mut doc, &format!("{schemas}/{name}/oneOf/1"), &non_empty_array);
        constrain(&mut doc, &format!("{schemas}/{name}/oneOf/1/items"), &non_empty_string);
    }
    // Rerank: a non-empty query over at least one non-empty document.
    for name in ["RerankRequest", "TeiRerankRequest"] {
        constrain(&mut doc, &format!("{schemas}/{name}/properties/query"), &non_empty_string);
    }
    constrain(&mut doc, &format!("{schemas}/RerankRequest/properties/documents"), &non_empty_array);
    constrain(&mut doc, &format!("{schemas}/RerankDocument/oneOf/0"), &non_empty_string);
    constrain(&mut doc, &format!("{schemas}/DocumentText/properties/text"), &non_empty_string);
    let texts = format!("{schemas}/TeiRerankRequest/properties/texts");
    constrain(&mut doc, &texts, &non_empty_array);
    constrain(&mut doc, &format!("{texts}/items"), &non_empty_string);
    // Search: `query` or `queries` (one of them, non-null, no empty text), `top_k` within 1..=1000.
    let search = format!("{schemas}/SearchRequest");
    constrain(&mut doc, &format!("{search}/properties/queries"), &non_empty_array);
    constrain(&mut doc, &format!("{search}/properties/queries/items"), &non_empty_string);
    constrain(&mut doc, &format!("{search}/properties/query"), &non_empty_string);
    // A filter value is a scalar (`Filter::new` refuses arrays and objects).
    constrain(
        &mut doc,
        &format!("{search}/properties/filter"),
        &json!({"additionalProperties": {"type": ["string", "number", "boolean", "null"]}}),
    );
    // The rerank stage's depth: top_k..=1000 (the lower bound depends on the request).
    constrain(
        &mut doc,
        &format!("{schemas}/RerankStage/properties/depth"),
        &json!({"maximum": 1000}),
    );
    constrain(
        &mut doc,
        &format!("{search}/properties/top_k"),
        &json!({"minimum": 1, "maximum": 1000}),
    );
    constrain(
        &mut doc,
        &search,
        &json!({"oneOf": [
            {"required": ["query"], "properties": {"query": {"type": "string"}}},
            {"required": ["queries"], "properties": {"queries": {"type": "array"}}}
        ]}),
    );
    // Writes: at least one document, each as a corpus line (`CorpusDoc::from_json`): `_id`
    // (else `id`) a non-empty string or a 64-bit integer, `text` a string, `title` and
    // `metadata` optional; an empty text is refused.
    let documents = format!("{schemas}/UpsertRequest/properties/documents");
    constrain(&mut doc, &documents, &non_empty_array);
    let id = json!({"oneOf": [
        {"type": "string", "minLength": 1},
        {"type": "integer", "minimum": i64::MIN, "maximum": u64::MAX}
    ]});
    constrain(
        &mut doc,
        &format!("{documents}/items"),
        &json!({
            "required": ["text"],
            "properties": {
                "text": {"type": "string", "minLength": 1},
                "title": {"type": ["string", "null"]},
                "metadata": {"type": ["object", "null"]}
            },
            // `_id` wins: `id` is read (and checked) only without it.
            "oneOf": [
                {"required": ["_id"], "properties": {"_id": id}},
                {"required": ["id"], "properties": {"id": id}, "not": {"required": ["_id"]}}
            ]
        }),
    );
    // A report is a plain `*.html` file name: letters, digits, ` +_.-`, not starting with a
    // dot, no `..`, at most 255 bytes (`reports::is_report_name`).
    if let Some(parameters) =
        doc.pointer_mut("/paths/~1reports~1{name}/get/parameters").and_then(Value::as_array_mut)
    {
        for parameter in parameters.iter_mut().filter(|p| p["name"] == "name") {
            constrain(
                parameter,
                "/schema",
                &json!({"pattern": r"^(?!\.)(?!.*\.\.)[\w +.-]{1,250}\.html$"}),
            );
        }
    }
    doc
}

/// An error answer of the API, for the responses of an operation.
fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    })
}

/// Adds `keywords` to the schema object at `pointer` (nothing if there is none).
fn constrain(doc: &mut Value, pointer: &str, keywords: &Value) {
    if let (Some(target), Some(keywords)) =
        (doc.pointer_mut(pointer).and_then(Value::as_object_mut), keywords.as_object())
    {
        for (key, value) in keywords {
            target.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        serde_json::from_str(openapi_json()).expect("the document is JSON")
    }

    #[test]
    fn every_secured_operation_documents_401_and_every_body_400_and_413() {
        let doc = doc();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let responses = &operation["responses"];
                if operation.get("security").is_some() {
                    assert!(responses["401"].is_object(), "{method} {path}: no 401");
                }
                if operation.get("requestBody").is_some() {
                    for status in ["400", "413"] {
                        assert!(responses[status].is_object(), "{method} {path}: no {status}");
                    }
                }
            }
        }
        for (path, method) in WORK_ROUTES {
            let responses = &doc["paths"][path][method]["responses"];
            assert!(
                responses["429"].is_object() && responses["503"].is_object(),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn the_checked_constraints_are_in_the_schemas() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        let input = &schemas["EmbeddingInput"]["oneOf"];
        assert_eq!(input[0]["minLength"], 1);
        assert_eq!(input[1]["items"]["minLength"], 1);
        assert_eq!(input[3]["items"]["minItems"], 1);
        assert_eq!(schemas["RerankRequest"]["properties"]["query"]["minLength"], 1);
        assert_eq!(schemas["TeiRerankRequest"]["properties"]["texts"]["minItems"], 1);
        assert_eq!(schemas["SearchRequest"]["properties"]["top_k"]["maximum"], 1000);
        assert_eq!(schemas["SearchRequest"]["oneOf"].as_array().map(Vec::len), Some(2));
        let item = &schemas["UpsertRequest"]["properties"]["documents"]["items"];
        assert_eq!(item["required"], json!(["text"]));
        let name = &doc["paths"]["/reports/{name}"]["get"]["parameters"][0]["schema"];
        assert!(name["pattern"].as_str().unwrap().ends_with(r"\.html$"));
    }
}
