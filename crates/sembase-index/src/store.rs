//! The [`VectorStore`] trait: what every index backend (flat, ANN, PostgreSQL)
//! implements, and the values it takes and returns.
//!
//! Contract shared by all backends:
//! - vectors given to [`VectorStore::upsert`] and [`VectorStore::search`] are
//!   [`IndexSettings::dimensions`] wide and already unit length (the index layer
//!   normalises them), so a hit's score is the cosine similarity (inner product);
//! - one `upsert` or `delete` call is one committed write: after it returns, the
//!   change survives a crash; if the process dies inside it, the store reopens
//!   in the state before the call;
//! - ids are unique: upserting an existing id replaces its vector, text and metadata;
//! - hits come best first; equal scores are ordered by id, larger id first (as
//!   trec_eval ranks), so every backend returns the same list for the same data.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{IndexError, Result};

/// A document's metadata: a JSON object.
pub type Metadata = serde_json::Map<String, Value>;

/// One document as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Unique id within the index.
    pub id: String,
    /// Its embedding, [`IndexSettings::dimensions`] wide, unit length.
    pub vector: Vec<f32>,
    /// The text returned with hits (the corpus text, without title or prefix).
    pub text: String,
    /// Metadata returned with hits and matched by [`Filter`].
    pub metadata: Metadata,
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub id: String,
    /// Cosine similarity to the query.
    pub score: f32,
    pub text: String,
    pub metadata: Metadata,
}

/// A metadata filter: every key must be present in a document's metadata with
/// an equal scalar value (numbers compare by value, so `1` equals `1.0`). This is
/// JSON containment (`metadata @> filter` in PostgreSQL) restricted to scalars.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    fields: Metadata,
}

impl Filter {
    /// A filter from a JSON object of key -> string, number, boolean or null.
    pub fn new(fields: Metadata) -> Result<Self> {
        for (key, value) in &fields {
            if value.is_array() || value.is_object() {
                return Err(IndexError::Invalid(format!(
                    "filter value for {key:?} must be a string, number, boolean or null, not {value}"
                )));
            }
        }
        Ok(Self { fields })
    }

    /// The keys and values every match must carry.
    pub fn fields(&self) -> &Metadata {
        &self.fields
    }

    /// Whether `metadata` carries every key of the filter with an equal value.
    pub fn matches(&self, metadata: &Metadata) -> bool {
        self.fields
            .iter()
            .all(|(key, want)| metadata.get(key).is_some_and(|have| scalar_eq(have, want)))
    }
}

/// JSON equality with numbers compared by value.
fn scalar_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Which model made an index's vectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// The name the model was given by (store name, or a directory path).
    pub name: String,
    /// A digest of the model's files that changes when its configuration or weights do.
    pub fingerprint: String,
}

/// How scores are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Vectors are L2-normalised before they are stored or searched; the score
    /// is their inner product.
    Cosine,
}

/// The model and embedding settings an index was built with; queries must be
/// embedded the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSettings {
    pub model: ModelIdentity,
    /// Width of every vector.
    pub dimensions: usize,
    /// Text put before every query (e5: `query: `).
    pub query_prefix: Option<String>,
    /// Text put before every document (e5: `passage: `).
    pub document_prefix: Option<String>,
    pub metric: Metric,
}

/// A place that keeps documents with their vectors and finds the nearest ones.
///
/// Reads take `&self` and may run concurrently; writes take `&mut self`.
pub trait VectorStore: Send + Sync {
    /// The settings the index was created with.
    fn settings(&self) -> &IndexSettings;

    /// Adds documents, replacing any with the same id; one committed write.
    /// Ids within one batch must be unique.
    fn upsert(&mut self, docs: &[Document]) -> Result<()>;

    /// Removes the documents with these ids (unknown ids are ignored); one
    /// committed write. Returns how many were removed.
    fn delete(&mut self, ids: &[String]) -> Result<usize>;

    /// The `k` best hits of each query (in query order), optionally only among
    /// documents whose metadata matches `filter`.
    fn search(
        &self,
        queries: &[Vec<f32>],
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<Vec<Hit>>>;

    /// How many documents the index holds.
    fn count(&self) -> Result<usize>;

    /// Fails when the store cannot answer now (its database is unreachable); stores in
    /// local files always can.
    fn ping(&self) -> Result<()> {
        Ok(())
    }
}

/// Checks that every vector is `dimensions` wide (for backends' input checks).
pub fn check_widths<'a>(
    vectors: impl IntoIterator<Item = &'a [f32]>,
    dimensions: usize,
) -> Result<()> {
    for (i, v) in vectors.into_iter().enumerate() {
        if v.len() != dimensions {
            return Err(IndexError::Invalid(format!(
                "vector {i} has {} dimensions, the index has {dimensions}",
                v.len()
            )));
        }
    }
    Ok(())
}

/// Checks that no id appears twice in one batch and none is empty.
pub fn check_ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        if id.is_empty() {
            return Err(IndexError::Invalid("a document id is empty".into()));
        }
        if !seen.insert(id) {
            return Err(IndexError::Invalid(format!(
                "document id {id:?} appears twice in one batch"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> Metadata {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn filter_matches_every_key_with_numbers_by_value() {
        let filter = Filter::new(object(json!({"lang": "en", "year": 2020}))).unwrap();
        assert!(filter.matches(&object(json!({"lang": "en", "year": 2020.0, "other": 1}))));
        assert!(!filter.matches(&object(json!({"lang": "en"}))));
        assert!(!filter.matches(&object(json!({"lang": "zh", "year": 2020}))));
    }

    #[test]
    fn filter_refuses_nested_values() {
        assert!(Filter::new(object(json!({"tags": ["a"]}))).is_err());
    }

    #[test]
    fn duplicate_and_empty_ids_are_refused() {
        assert!(check_ids(["a", "b", "a"]).is_err());
        assert!(check_ids(["a", ""]).is_err());
        assert!(check_ids(["a", "b"]).is_ok());
    }
}
