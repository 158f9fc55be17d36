//! The OpenAPI document, generated from the handler and body types.

use std::sync::OnceLock;

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

/// The OpenAPI document as JSON text (built once).
pub fn openapi_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    })
}
