//! Request and response bodies of the HTTP API, and turning raw bytes into requests
//! with OpenAI-style errors that name the field at fault.

use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::integral;

/// `POST /v1/embeddings` body (OpenAI's contract; `prompt_name` is a sembase extension).
#[derive(Debug, Deserialize, ToSchema)]
pub struct EmbeddingsRequest {
    /// The text or tokens to embed.
    pub input: EmbeddingInput,
    /// Which served model; the first one when omitted.
    #[serde(default)]
    pub model: Option<String>,
    /// `float` (default) or `base64` (little-endian f32 bytes).
    #[serde(default)]
    pub encoding_format: Option<EncodingFormat>,
    /// Keep the first N dimensions and re-normalise (1 to the model's width).
    #[serde(default, deserialize_with = "integral::option")]
    #[schema(minimum = 1)]
    pub dimensions: Option<u64>,
    /// An end-user id; accepted and ignored.
    #[serde(default)]
    pub user: Option<String>,
    /// A prompt named in the model's config (e.g. `query`), put before every text input.
    /// Without it the model's default prompt, if it has one, is used.
    #[serde(default)]
    pub prompt_name: Option<String>,
}

/// `input`: a string, an array of strings, an array of token ids, or an array of
/// token-id arrays. Empty strings and empty arrays are refused.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenArrays(Vec<Vec<u32>>),
}

/// How vectors are written in the response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

impl TryFrom<String> for EncodingFormat {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        match value.as_str() {
            "float" => Ok(Self::Float),
            "base64" => Ok(Self::Base64),
            other => {
                Err(format!("unknown encoding format {other:?}; expected \"float\" or \"base64\""))
            }
        }
    }
}

/// `POST /v1/embeddings` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingsResponse {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<EmbeddingObject>,
    /// The model that answered.
    pub model: String,
    pub usage: Usage,
}

/// One input's vector.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingObject {
    /// Always `embedding`.
    pub object: &'static str,
    /// Position of the input in the request.
    pub index: usize,
    pub embedding: EmbeddingValue,
}

/// A vector: floats, or base64 of its little-endian f32 bytes.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingValue {
    Float(Vec<f32>),
    Base64(String),
}

/// Tokens the request used (after truncation, special tokens included).
#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// `GET /v1/models` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

/// A served model, as OpenAI describes one (the fields after `owned_by` are sembase's;
/// OpenAI clients ignore them).
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelObject {
    /// The name to put in `model`.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix time the server started.
    pub created: u64,
    /// Always `sembase`.
    pub owned_by: &'static str,
    /// What the model does, so that a client can tell which routes take it.
    pub kind: ModelKind,
    /// Vector width; embedding models only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimension: Option<usize>,
    /// Token limit per input (for a reranker: per query and document together).
    pub max_tokens: usize,
}

/// `embedding`: a model for `/v1/embeddings` (and search, heads); `reranker`: a
/// cross-encoder for `/v1/rerank`, `/rerank` and search's rerank stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Embedding,
    Reranker,
}

/// `POST /tokenize` body (TEI's shape; `model` and `prompt_name` are extensions).
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenizeRequest {
    pub inputs: TokenizeInputs,
    /// Which served model; the first one when omitted.
    #[serde(default)]
    pub model: Option<String>,
    /// A prompt named in the model's config, put before every input.
    #[serde(default)]
    pub prompt_name: Option<String>,
}

/// One text or several.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TokenizeInputs {
    One(String),
    Many(Vec<String>),
}

/// `GET /health` and `GET /ready` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
    /// The served models.
    pub models: Vec<String>,
    /// The served indexes (`GET /ready`, which checked that each one's store answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indexes: Option<Vec<String>>,
}

/// One element of an `input` array, before the array's kind is known.
enum Item {
    Text(String),
    Token(u32),
    Tokens(Vec<u32>),
}

impl Item {
    fn kind(&self) -> &'static str {
        match self {
            Item::Text(_) => "a string",
            Item::Token(_) => "a token id",
            Item::Tokens(_) => "an array of token ids",
        }
    }
}

const ITEM_EXPECTED: &str =
    "a string, a token id (an integer from 0 to 4294967295) or an array of token ids";

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemVisitor;
        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = Item;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(ITEM_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Item, E> {
                Ok(Item::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Item, E> {
                Ok(Item::Text(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Item, E> {
                u32::try_from(v)
                    .map(Item::Token)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Item, E> {
                u32::try_from(v)
                    .map(Item::Token)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item, A::Error> {
                let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(id) = seq.next_element::<u32>()? {
                    ids.push(id);
                }
                Ok(Item::Tokens(ids))
            }
        }
        deserializer.deserialize_any(ItemVisitor)
    }
}

impl<'de> Deserialize<'de> for EmbeddingInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InputVisitor;
        impl<'de> Visitor<'de> for InputVisitor {
            type Value = EmbeddingInput;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, an array of strings, an array of token ids or an array of token-id arrays")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EmbeddingInput, E> {
                Ok(EmbeddingInput::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<EmbeddingInput, E> {
                Ok(EmbeddingInput::Text(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EmbeddingInput, A::Error> {
                // Elements go straight into a typed vector once the first one fixes the
                // kind, so a large array of ids costs 4 bytes per id.
                let mut out: Option<EmbeddingInput> = None;
                let mut first_kind = "";
                let mut index = 0usize;
                while let Some(item) = seq.next_element::<Item>()? {
                    let kind = item.kind();
                    match (&mut out, item) {
                        (None, Item::Text(t)) => out = Some(EmbeddingInput::Texts(vec![t])),
                        (None, Item::Token(id)) => out = Some(EmbeddingInput::Tokens(vec![id])),
                        (None, Item::Tokens(ids)) => out = Some(EmbeddingInput::TokenArrays(vec![ids])),
                        (Some(EmbeddingInput::Texts(v)), Item::Text(t)) => v.push(t),
                        (Some(EmbeddingInput::Tokens(v)), Item::Token(id)) => v.push(id),
                        (Some(EmbeddingInput::TokenArrays(v)), Item::Tokens(ids)) => v.push(ids),
                        _ => {
                            return Err(de::Error::custom(format!(
                                "input[{index}] is {kind} but input[0] is {first_kind}; an array must hold \
                                 only strings, only token ids or only arrays of token ids"
                            )))
                        }
                    }
                    if index == 0 {
                        first_kind = kind;
                    }
                    index += 1;
                }
                Ok(out.unwrap_or(EmbeddingInput::Texts(Vec::new())))
            }
        }
        deserializer.deserialize_any(InputVisitor)
    }
}

impl EmbeddingInput {
    /// Number of inputs (an array of token ids is one input).
    pub fn len(&self) -> usize {
        match self {
            EmbeddingInput::Text(_) | EmbeddingInput::Tokens(_) => 1,
            EmbeddingInput::Texts(v) => v.len(),
            EmbeddingInput::TokenArrays(v) => v.len(),
        }
    }

    /// True when there is nothing to embed: an empty array.
    pub fn is_empty(&self) -> bool {
        match self {
            EmbeddingInput::Text(_) => false,
            EmbeddingInput::Tokens(v) => v.is_empty(),
            EmbeddingInput::Texts(v) => v.is_empty(),
            EmbeddingInput::TokenArrays(v) => v.is_empty(),
        }
    }
}

/// Which status a request that does not fit the schema gets: OpenAI's routes answer
/// 400, the TEI-style ones 422 (as axum's `Json` and TEI do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaStatus {
    BadRequest,
    Unprocessable,
}

impl SchemaStatus {
    /// An invalid request, with this status.
    pub fn error(self, message: impl Into<String>) -> ApiError {
        match self {
            SchemaStatus::BadRequest => ApiError::bad_request(message),
            SchemaStatus::Unprocessable => ApiError::unprocessable(message),
        }
    }
}

/// Parses a JSON body; syntax errors are 400, schema errors name the top-level field.
pub fn parse_json<T: DeserializeOwned>(
    body: &[u8],
    schema_status: SchemaStatus,
) -> Result<T, ApiError> {
    let invalid_json = |inner: &serde_json::Error| {
        ApiError::bad_request(format!(
            "could not parse the JSON body of the request ({inner}); send valid UTF-8 JSON"
        ))
        .code("invalid_json")
    };
    // serde would also read a struct from an array of its fields in order; only an
    // object is a request.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match serde_json::from_slice::<de::IgnoredAny>(body) {
            Err(e) => invalid_json(&e),
            Ok(_) => ApiError::bad_request("the request body must be a JSON object"),
        });
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.classify() != serde_json::error::Category::Data {
            return invalid_json(&inner);
        }
        let message = if path.is_empty() || path == "." {
            format!("invalid request body: {inner}")
        } else {
            format!("invalid '{path}': {inner}")
        };
        let error = schema_status.error(message);
        match top_level_field(&path) {
            Some(field) => error.param(&field),
            None => error,
        }
    })?;
    deserializer.end().map_err(|e| invalid_json(&e))?;
    Ok(value)
}

/// `input[3]` -> `input`; `.` -> none.
fn top_level_field(path: &str) -> Option<String> {
    let end = path.find(['.', '[']).unwrap_or(path.len());
    let field = &path[..end];
    (!field.is_empty()).then(|| field.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<EmbeddingsRequest, ApiError> {
        parse_json(body.as_bytes(), SchemaStatus::BadRequest)
    }

    #[test]
    fn every_input_shape_parses_to_its_kind() {
        assert_eq!(parse(r#"{"input":"a"}"#).unwrap().input, EmbeddingInput::Text("a".into()));
        assert_eq!(
            parse(r#"{"input":["a","b"]}"#).unwrap().input,
            EmbeddingInput::Texts(vec!["a".into(), "b".into()])
        );
        assert_eq!(parse(r#"{"input":[1,2]}"#).unwrap().input, EmbeddingInput::Tokens(vec![1, 2]));
        assert_eq!(
            parse(r#"{"input":[[1],[2,3]]}"#).unwrap().input,
            EmbeddingInput::TokenArrays(vec![vec![1], vec![2, 3]])
        );
        assert_eq!(parse(r#"{"input":[]}"#).unwrap().input, EmbeddingInput::Texts(vec![]));
    }

    #[test]
    fn mixed_arrays_name_the_first_odd_element() {
        let e = parse(r#"{"input":["a",1]}"#).unwrap_err();
        assert_eq!(e.body.param.as_deref(), Some("input"));
        assert!(
            e.body.message.contains("input[1] is a token id but input[0] is a string"),
            "{}",
            e.body.message
        );
        let e = parse(r#"{"input":[[1],["x"]]}"#).unwrap_err();
        assert_eq!(e.body.param.as_deref(), Some("input"));
    }

    #[test]
    fn out_of_range_ids_and_wrong_types_are_schema_errors() {
        for body in [
            r#"{"input":[-1]}"#,
            r#"{"input":[4294967296]}"#,
            r#"{"input":[1.5]}"#,
            r#"{"input":{"a":1}}"#,
            r#"{"input":null}"#,
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.body.param.as_deref(), Some("input"), "{body}: {}", e.body.message);
        }
        let e = parse(r#"{"input":"a","dimensions":-3}"#).unwrap_err();
        assert_eq!(e.body.param.as_deref(), Some("dimensions"));
        let e = parse(r#"{"input":"a","encoding_format":"hex"}"#).unwrap_err();
        assert_eq!(e.body.param.as_deref(), Some("encoding_format"));
        for body in [r#"["a", "m"]"#, "null", "3"] {
            let e = parse(body).unwrap_err();
            assert_eq!((e.status.as_u16(), e.body.code.as_deref()), (400, None), "{body}");
        }
        let e = parse(r#"{"model":"m"}"#).unwrap_err();
        assert!(e.body.message.contains("missing field `input`"), "{}", e.body.message);
    }

    #[test]
    fn syntax_errors_and_trailing_garbage_are_invalid_json() {
        for body in ["{", "{\"input\": \"a\"} x", "", "{\"input\": \"\u{0}"] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.body.code.as_deref(), Some("invalid_json"), "{body:?}");
        }
        let e = parse_json::<EmbeddingsRequest>(b"{\"input\": \"\xff\"}", SchemaStatus::BadRequest)
            .unwrap_err();
        assert_eq!(e.status, 400);
    }
}
