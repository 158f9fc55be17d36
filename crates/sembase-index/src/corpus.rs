//! Corpus input: JSONL (`_id` or `id`, `text`, optional `title`, optional
//! `metadata` object) or a plain text file (one document per line, the
//! 1-based line number as id; blank lines are skipped).

use std::collections::HashSet;
use std::path::Path;

use serde_json::Value;

use crate::error::{IndexError, Result};
use crate::store::{Document, Metadata};

/// Bad rows listed in an error before the rest are counted.
const LISTED_ROWS: usize = 5;

/// A document before it is embedded.
#[derive(Debug, Clone, PartialEq)]
pub struct CorpusDoc {
    pub id: String,
    /// Empty when the document has none.
    pub title: String,
    pub text: String,
    pub metadata: Metadata,
}

impl CorpusDoc {
    /// Reads one JSON object: `_id` or `id` (string or integer), `text`,
    /// optional `title` (string) and `metadata` (object).
    pub fn from_json(
        object: &serde_json::Map<String, Value>,
    ) -> std::result::Result<CorpusDoc, String> {
        let id = match object.get("_id").or_else(|| object.get("id")) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            Some(_) => return Err("\"_id\"/\"id\" must be a non-empty string or an integer".into()),
            None => return Err("missing \"_id\" or \"id\"".into()),
        };
        let text = match object.get("text") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err("\"text\" must be a string".into()),
            None => return Err("missing \"text\"".into()),
        };
        let title = match object.get("title") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err("\"title\" must be a string".into()),
        };
        let metadata = match object.get("metadata") {
            None | Some(Value::Null) => Metadata::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err("\"metadata\" must be an object".into()),
        };
        Ok(CorpusDoc { id, title, text, metadata })
    }

    /// The text that is embedded (before the document prefix): `title + " " +
    /// text` when there is a title, as BEIR does.
    pub fn embed_text(&self) -> String {
        if self.title.is_empty() {
            self.text.clone()
        } else {
            format!("{} {}", self.title, self.text)
        }
    }

    /// The stored document: the text without the title; a title is kept in
    /// the metadata under `title` unless the metadata already has that key.
    pub fn into_document(self, vector: Vec<f32>) -> Document {
        let mut metadata = self.metadata;
        if !self.title.is_empty() && !metadata.contains_key("title") {
            metadata.insert("title".into(), Value::String(self.title));
        }
        Document { id: self.id, vector, text: self.text, metadata }
    }
}

/// Whether `path` is read as JSONL (by its extension).
pub fn is_jsonl(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("jsonl" | "ndjson"))
}

/// Reads a corpus file; every bad row is reported with its line number.
pub fn read_corpus(path: &Path) -> Result<Vec<CorpusDoc>> {
    let text = std::fs::read_to_string(path).map_err(|e| IndexError::io(path, e))?;
    let jsonl = is_jsonl(path);
    let mut docs = Vec::new();
    let mut seen = HashSet::new();
    let mut bad: Vec<String> = Vec::new();
    let mut bad_total = 0;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let doc = if jsonl {
            serde_json::from_str::<Value>(line).map_err(|e| e.to_string()).and_then(|v| {
                v.as_object()
                    .ok_or_else(|| "not a JSON object".to_string())
                    .and_then(CorpusDoc::from_json)
            })
        } else {
            Ok(CorpusDoc {
                id: line_no.to_string(),
                title: String::new(),
                text: line.to_string(),
                metadata: Metadata::new(),
            })
        };
        match doc {
            Ok(doc) if !seen.insert(doc.id.clone()) => {
                bad_total += 1;
                bad.push(format!("line {line_no}: duplicate id {:?}", doc.id));
            }
            Ok(doc) => docs.push(doc),
            Err(message) => {
                bad_total += 1;
                bad.push(format!("line {line_no}: {message}"));
            }
        }
    }
    if bad_total > 0 {
        bad.truncate(LISTED_ROWS);
        let more = if bad_total > LISTED_ROWS {
            format!(" (and {} more)", bad_total - LISTED_ROWS)
        } else {
            String::new()
        };
        return Err(IndexError::Invalid(format!("{}: {}{more}", path.display(), bad.join("; "))));
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, body: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sembase-corpus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path
    }

    #[test]
    fn jsonl_takes_either_id_key_titles_and_metadata() {
        let path = write(
            "a.jsonl",
            "{\"_id\": \"d1\", \"title\": \"T\", \"text\": \"body\"}\n\n{\"id\": 7, \"text\": \"x\", \"metadata\": {\"lang\": \"en\"}}\n",
        );
        let docs = read_corpus(&path).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].embed_text(), "T body");
        assert_eq!(docs[1].id, "7");
        assert_eq!(docs[1].embed_text(), "x");
        let stored = docs[0].clone().into_document(vec![1.0]);
        assert_eq!((stored.text.as_str(), stored.metadata["title"].as_str()), ("body", Some("T")));
    }

    #[test]
    fn bad_rows_are_reported_by_line() {
        let path = write("b.jsonl", "{\"_id\": \"a\", \"text\": \"x\"}\n{\"text\": \"no id\"}\n{\"_id\": \"a\", \"text\": \"again\"}\nnot json\n");
        let message = read_corpus(&path).unwrap_err().to_string();
        for part in ["line 2: missing", "line 3: duplicate id \"a\"", "line 4:"] {
            assert!(message.contains(part), "{message}");
        }
    }

    #[test]
    fn text_files_use_line_numbers_as_ids() {
        let path = write("c.txt", "first\n\nthird\n");
        let docs = read_corpus(&path).unwrap();
        let ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["1", "3"]);
    }
}
