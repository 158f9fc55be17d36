//! `POST /v1/classify`: task heads (classifiers trained with sembase-heads) over the
//! served models.
//!
//! Heads that read the same model with the same prefix share one forward pass per
//! text: the texts go once through the model's batching queue at full width, then
//! each head cuts the vector to the width it was trained on and re-normalises it
//! (when it was trained with `dimensions`, exactly as the model would have) and
//! applies its classifier.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use sembase_core::vectors::truncate_dimensions;
use sembase_heads::{Head, Prediction};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::{EmbeddingInput, SchemaStatus, Usage};
use crate::budget::TokenBudget;
use crate::error::{ApiError, ServerError};
use crate::handlers::{
    check_inputs, cpu, json, prepare, read_json, tokenize_off_runtime, AppResult,
};
use crate::{AppState, ModelSpec};

/// A head to serve under a name (what `--head NAME=DIR` gives).
pub struct HeadSpec {
    /// The name requests use in `heads`.
    pub name: String,
    pub head: Head,
}

impl HeadSpec {
    pub fn new(name: impl Into<String>, head: Head) -> Self {
        Self { name: name.into(), head }
    }
}

/// A head bound to the served model it reads.
pub(crate) struct ServedHead {
    name: String,
    head: Head,
    /// Index of its base model among the served models.
    model: usize,
}

impl ServedHead {
    /// Classifies full-width vectors of the head's base model.
    fn predict(&self, vectors: &[Vec<f32>]) -> AppResult<Vec<Prediction>> {
        let predictions = match self.head.base_model().requested_dimensions {
            None => self.head.predict(vectors),
            Some(dims) => {
                let cut: Vec<Vec<f32>> = vectors
                    .iter()
                    .map(|v| {
                        let mut v = v.clone();
                        truncate_dimensions(&mut v, dims);
                        v
                    })
                    .collect();
                self.head.predict(&cut)
            }
        };
        predictions.map_err(|e| ApiError::internal(format!("head `{}`: {e}", self.name)))
    }

    fn output(&self, prediction: Prediction) -> HeadOutput {
        let probabilities =
            self.head.labels().iter().cloned().zip(prediction.probabilities).collect();
        HeadOutput { label: prediction.label, probabilities }
    }
}

/// The served heads.
#[derive(Default)]
pub(crate) struct Heads {
    list: Vec<ServedHead>,
    by_name: HashMap<String, usize>,
}

impl Heads {
    /// Binds every head to its base model among `models` (matched by the model's
    /// name, or its directory's name), refusing a head whose model is not served or
    /// whose input width does not fit the model, and repeated names.
    pub(crate) fn bind(specs: Vec<HeadSpec>, models: &[ModelSpec]) -> Result<Self, ServerError> {
        let mut heads = Heads::default();
        for spec in specs {
            let invalid = |message: String| ServerError::Head { head: spec.name.clone(), message };
            if spec.name.is_empty() {
                return Err(invalid("a head needs a non-empty name".into()));
            }
            if heads.by_name.contains_key(&spec.name) {
                return Err(invalid("two heads have this name; names must be unique".into()));
            }
            let base = spec.head.base_model();
            let model = models
                .iter()
                .position(|m| m.embedder.name() == base.name)
                .or_else(|| models.iter().position(|m| m.embedder.name() == base.dir_name))
                .ok_or_else(|| ServerError::HeadModelNotServed {
                    head: spec.name.clone(),
                    model: base.name.clone(),
                    served: models.iter().map(|m| m.embedder.name()).collect::<Vec<_>>().join(", "),
                })?;
            let width = models[model].embedder.dimension();
            let reads = base.requested_dimensions.unwrap_or(width);
            if reads > width || reads != spec.head.dimensions() {
                return Err(invalid(format!(
                    "it reads {}-dimensional vectors made with dimensions {:?}, which model `{}` ({width} dimensions) cannot give",
                    spec.head.dimensions(),
                    base.requested_dimensions,
                    models[model].embedder.name()
                )));
            }
            heads.by_name.insert(spec.name.clone(), heads.list.len());
            heads.list.push(ServedHead { name: spec.name, head: spec.head, model });
        }
        Ok(heads)
    }

    fn names(&self) -> String {
        let mut names: Vec<&str> = self.list.iter().map(|h| h.name.as_str()).collect();
        names.sort_unstable();
        if names.is_empty() {
            "none (start the server with --head NAME=DIR)".into()
        } else {
            names.join(", ")
        }
    }

    /// The heads a request names (each once, in request order); all of them when it names none.
    fn select(&self, names: Option<Strings>) -> AppResult<Vec<&ServedHead>> {
        let Some(names) = names else {
            if self.list.is_empty() {
                return Err(ApiError::not_found(
                    "this server serves no heads (start it with --head NAME=DIR)",
                )
                .param("heads")
                .code("head_not_found"));
            }
            return Ok(self.list.iter().collect());
        };
        let names = names.into_vec();
        if names.is_empty() {
            return Err(ApiError::bad_request(format!(
                "'heads' is empty; name at least one of: {}",
                self.names()
            ))
            .param("heads"));
        }
        let mut selected: Vec<&ServedHead> = Vec::with_capacity(names.len());
        for name in names {
            let head = self.by_name.get(&name).map(|&i| &self.list[i]).ok_or_else(|| {
                ApiError::not_found(format!(
                    "The head `{name}` does not exist on this server; it serves: {}",
                    self.names()
                ))
                .param("heads")
                .code("head_not_found")
            })?;
            if !selected.iter().any(|h| h.name == head.name) {
                selected.push(head);
            }
        }
        Ok(selected)
    }
}

/// `POST /v1/classify` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ClassifyRequest {
    /// The text or texts to classify (non-empty strings).
    pub input: Strings,
    /// Which heads to apply: one name or several; every served head when omitted.
    #[serde(default)]
    pub heads: Option<Strings>,
}

/// A string or an array of strings.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Strings {
    One(String),
    Many(Vec<String>),
}

impl Strings {
    fn into_vec(self) -> Vec<String> {
        match self {
            Strings::One(s) => vec![s],
            Strings::Many(v) => v,
        }
    }
}

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StringsVisitor;
        impl<'de> Visitor<'de> for StringsVisitor {
            type Value = Strings;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Strings, E> {
                Ok(Strings::One(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Strings, E> {
                Ok(Strings::One(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strings, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(Strings::Many(items))
            }
        }
        deserializer.deserialize_any(StringsVisitor)
    }
}

/// `POST /v1/classify` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClassifyResponse {
    /// Always `list`.
    pub object: &'static str,
    /// One entry per input, in input order.
    pub data: Vec<Classification>,
    /// Tokens embedded: each input counts once per model (and prefix) its heads read.
    pub usage: Usage,
}

/// What the heads say about one input.
#[derive(Debug, Serialize, ToSchema)]
pub struct Classification {
    /// Always `classification`.
    pub object: &'static str,
    /// Position of the input in the request.
    pub index: usize,
    /// Head name -> its answer.
    pub heads: BTreeMap<String, HeadOutput>,
}

/// One head's answer for one input.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeadOutput {
    /// The most probable label.
    pub label: String,
    /// Every label of the head -> its probability (they sum to 1).
    pub probabilities: BTreeMap<String, f32>,
}

/// Classify texts with one or several task heads.
#[utoipa::path(
    post,
    path = "/v1/classify",
    request_body = ClassifyRequest,
    responses(
        (status = 200, description = "Each head's label and probabilities per input, in input order", body = ClassifyResponse),
        (status = 400, description = "Malformed or invalid request (empty input or `heads`, wrong types, too many inputs)", body = crate::error::ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = crate::error::ErrorResponse),
        (status = 404, description = "Unknown head (`head_not_found`)", body = crate::error::ErrorResponse),
        (status = 413, description = "Body over the size limit", body = crate::error::ErrorResponse),
        (status = 429, description = "Too many concurrent requests; see Retry-After", body = crate::error::ErrorResponse),
        (status = 503, description = "Models still loading", body = crate::error::ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn classify(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> AppResult<Response> {
    let (request, models): (ClassifyRequest, _) =
        read_json(&state, request, SchemaStatus::BadRequest).await?;
    let input = match request.input {
        Strings::One(text) => EmbeddingInput::Text(text),
        Strings::Many(texts) => EmbeddingInput::Texts(texts),
    };
    check_inputs(&input, state.config.max_inputs, "input")?;
    let heads = models.heads.select(request.heads)?;
    let large = tokenize_off_runtime(&input);
    // One forward pass per (model, prefix); every head on it reads the same vectors.
    let mut passes: BTreeMap<(usize, Option<&str>), Vec<&ServedHead>> = BTreeMap::new();
    for head in heads {
        passes
            .entry((head.model, head.head.base_model().prefix.as_deref()))
            .or_default()
            .push(head);
    }
    let mut data: Vec<Classification> = (0..input.len())
        .map(|index| Classification { object: "classification", index, heads: BTreeMap::new() })
        .collect();
    let mut tokens = 0;
    let mut budget = TokenBudget::new(state.config.max_request_tokens);
    for ((model, prefix), heads) in passes {
        let model = &models.list[model];
        let (embedder, input, prefix, truncate) = (
            model.embedder.clone(),
            input.clone(),
            prefix.map(str::to_string),
            state.config.truncate,
        );
        let (pieces, cost) = cpu(large, move || {
            prepare(embedder.as_ref(), input, prefix.as_deref(), truncate, "input")
        })
        .await??;
        let embeddings = model.run(pieces, cost, None, &mut budget, "input").await?;
        tokens += embeddings.total_tokens();
        for head in heads {
            for (item, prediction) in data.iter_mut().zip(head.predict(&embeddings.vectors)?) {
                item.heads.insert(head.name.clone(), head.output(prediction));
            }
        }
    }
    Ok(json(&ClassifyResponse {
        object: "list",
        data,
        usage: Usage { prompt_tokens: tokens, total_tokens: tokens },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse_json;

    fn parse(body: &str) -> Result<ClassifyRequest, ApiError> {
        parse_json(body.as_bytes(), SchemaStatus::BadRequest)
    }

    #[test]
    fn input_and_heads_take_one_string_or_several() {
        let r = parse(r#"{"input":"a","heads":"h"}"#).unwrap();
        assert_eq!((r.input, r.heads), (Strings::One("a".into()), Some(Strings::One("h".into()))));
        let r = parse(r#"{"input":["a","b"],"heads":["h","g"]}"#).unwrap();
        assert_eq!(r.input, Strings::Many(vec!["a".into(), "b".into()]));
        assert_eq!(r.heads, Some(Strings::Many(vec!["h".into(), "g".into()])));
        assert_eq!(parse(r#"{"input":"a"}"#).unwrap().heads, None);
    }

    #[test]
    fn wrong_types_name_the_field() {
        for (body, field) in [
            (r#"{"input":[1,2],"heads":"h"}"#, "input"),
            (r#"{"input":{"a":1}}"#, "input"),
            (r#"{"input":"a","heads":3}"#, "heads"),
            (r#"{"input":"a","heads":[["h"]]}"#, "heads"),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.body.param.as_deref(), Some(field), "{body}: {}", e.body.message);
        }
        let e = parse(r#"{"input":3}"#).unwrap_err();
        assert!(e.body.message.contains("a string or an array of strings"), "{}", e.body.message);
    }
}
