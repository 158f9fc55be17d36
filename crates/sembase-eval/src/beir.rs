//! Retrieval tasks in BEIR layout: `corpus.jsonl` ({"_id","title","text"}),
//! `queries.jsonl` ({"_id","text"}) and `qrels/test.tsv` (`query-id corpus-id
//! score`, header line optional, integer grades).
//!
//! Qrels rows naming ids that are not in the corpus or the queries are counted
//! and reported ([`RetrievalSet::notes`]), never dropped silently: an unknown
//! corpus id stays in the judgments (a relevant document no run can retrieve, as
//! pytrec_eval would count it), an unknown query id cannot be run and its rows
//! are skipped.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{EvalError, Problems, Result};
use crate::tsv::{read_lines, read_tsv, Header};

/// A corpus document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub id: String,
    pub title: String,
    pub text: String,
}

impl Document {
    /// The text that is embedded: `title + " " + text` when there is a title, as BEIR does.
    pub fn full_text(&self) -> String {
        if self.title.is_empty() {
            self.text.clone()
        } else {
            format!("{} {}", self.title, self.text)
        }
    }
}

/// A query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: String,
    pub text: String,
}

/// The judgments of one query: corpus id -> grade (relevant when >= 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// Index into [`RetrievalSet::queries`].
    pub query: usize,
    pub grades: HashMap<String, i32>,
}

/// Where and how often qrels did not fit the corpus and queries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QrelsReport {
    /// The qrels file read.
    pub path: PathBuf,
    /// Rows read (header excluded).
    pub rows: usize,
    /// Rows naming a corpus id not in `corpus.jsonl`, and the first one (id, line).
    pub unknown_doc_rows: usize,
    pub first_unknown_doc: Option<(String, usize)>,
    /// Rows naming a query id not in `queries.jsonl`, and the first one (id, line).
    pub unknown_query_rows: usize,
    pub first_unknown_query: Option<(String, usize)>,
    /// Rows repeating a (query, document) pair already seen; the last grade is kept.
    pub duplicate_rows: usize,
    /// Queries in `queries.jsonl` without any qrels row (not evaluated).
    pub unjudged_queries: usize,
}

/// A loaded retrieval task.
#[derive(Debug, Clone)]
pub struct RetrievalSet {
    pub corpus: Vec<Document>,
    pub queries: Vec<Query>,
    /// The evaluated queries, in `queries.jsonl` order.
    pub judged: Vec<Judged>,
    pub report: QrelsReport,
}

impl RetrievalSet {
    /// One line per thing worth knowing about the qrels.
    pub fn notes(&self) -> Vec<String> {
        let r = &self.report;
        let path = r.path.display();
        let mut notes = Vec::new();
        if let Some((id, line)) = &r.first_unknown_doc {
            notes.push(format!(
                "{path}: {} rows name corpus ids that are not in corpus.jsonl (first: {id:?} at line {line}); \
                 they stay in the judgments as relevant documents no model can retrieve",
                r.unknown_doc_rows
            ));
        }
        if let Some((id, line)) = &r.first_unknown_query {
            notes.push(format!(
                "{path}: {} rows name query ids that are not in queries.jsonl (first: {id:?} at line {line}); they are skipped",
                r.unknown_query_rows
            ));
        }
        if r.duplicate_rows > 0 {
            notes.push(format!(
                "{path}: {} rows repeat a (query, document) pair; the last grade is kept",
                r.duplicate_rows
            ));
        }
        if r.unjudged_queries > 0 {
            notes.push(format!(
                "{} of {} queries have no qrels and are not evaluated",
                r.unjudged_queries,
                self.queries.len()
            ));
        }
        notes
    }
}

/// Loads a BEIR folder with the `test` qrels split.
pub fn load_retrieval(dir: &Path) -> Result<RetrievalSet> {
    if !dir.is_dir() {
        return Err(EvalError::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not a directory (expected a BEIR folder)",
            ),
        ));
    }
    let corpus = load_corpus(&dir.join("corpus.jsonl"))?;
    let queries = load_queries(&dir.join("queries.jsonl"))?;
    let (judged, report) = load_qrels(&dir.join("qrels").join("test.tsv"), &corpus, &queries)?;
    Ok(RetrievalSet { corpus, queries, judged, report })
}

/// Reads `corpus.jsonl`.
pub fn load_corpus(path: &Path) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    read_jsonl(path, |object| {
        let id = id_field(object)?;
        let text = string_field(object, "text")?.ok_or("missing \"text\"")?;
        let title = string_field(object, "title")?.unwrap_or_default();
        docs.push(Document { id: id.clone(), title, text });
        Ok(id)
    })?;
    Ok(docs)
}

/// Reads `queries.jsonl`.
pub fn load_queries(path: &Path) -> Result<Vec<Query>> {
    let mut queries = Vec::new();
    read_jsonl(path, |object| {
        let id = id_field(object)?;
        let text = string_field(object, "text")?.ok_or("missing \"text\"")?;
        queries.push(Query { id: id.clone(), text });
        Ok(id)
    })?;
    Ok(queries)
}

/// Reads JSON objects one per line; `row` returns the object's id (duplicates are
/// malformed) or a message.
fn read_jsonl(
    path: &Path,
    mut row: impl FnMut(&serde_json::Map<String, Value>) -> std::result::Result<String, String>,
) -> Result<()> {
    let mut problems = Problems::new(path);
    let mut seen = HashSet::new();
    for (line, text) in read_lines(path)? {
        if text.trim().is_empty() {
            continue;
        }
        let value: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                problems.add(line, format!("not valid JSON ({e})"));
                continue;
            }
        };
        let Some(object) = value.as_object() else {
            problems.add(line, "not a JSON object");
            continue;
        };
        match row(object) {
            Ok(id) => {
                if !seen.insert(id.clone()) {
                    problems.add(line, format!("duplicate \"_id\" {id:?}"));
                }
            }
            Err(message) => problems.add(line, message),
        }
    }
    problems.finish()
}

/// `_id` as a string (numbers are accepted and written in decimal).
fn id_field(object: &serde_json::Map<String, Value>) -> std::result::Result<String, String> {
    match object.get("_id") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(_) => Err("\"_id\" must be a non-empty string".into()),
        None => Err("missing \"_id\"".into()),
    }
}

/// An optional string field (`null` counts as absent).
fn string_field(
    object: &serde_json::Map<String, Value>,
    name: &str,
) -> std::result::Result<Option<String>, String> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{name:?} must be a string")),
    }
}

/// Reads qrels and resolves them against the corpus and queries.
pub fn load_qrels(
    path: &Path,
    corpus: &[Document],
    queries: &[Query],
) -> Result<(Vec<Judged>, QrelsReport)> {
    let doc_ids: HashSet<&str> = corpus.iter().map(|d| d.id.as_str()).collect();
    let query_index: HashMap<&str, usize> =
        queries.iter().enumerate().map(|(i, q)| (q.id.as_str(), i)).collect();
    let mut report = QrelsReport { path: path.to_path_buf(), ..QrelsReport::default() };
    let mut grades: Vec<Option<HashMap<String, i32>>> = vec![None; queries.len()];
    read_tsv(path, 3, Header::UnlessNumeric(2), |line, f| {
        let (qid, did) = (f[0].trim(), f[1].trim());
        if qid.is_empty() || did.is_empty() {
            return Err("empty query-id or corpus-id".into());
        }
        let grade = match f[2].trim().parse::<i32>() {
            Ok(g) => g,
            Err(_) => match f[2].trim().parse::<f64>() {
                Ok(v) if v.fract() == 0.0 && v.abs() < i32::MAX as f64 => v as i32,
                _ => return Err(format!("score {:?} is not an integer grade", f[2])),
            },
        };
        report.rows += 1;
        if !doc_ids.contains(did) {
            report.unknown_doc_rows += 1;
            report.first_unknown_doc.get_or_insert_with(|| (did.to_string(), line));
        }
        let Some(&q) = query_index.get(qid) else {
            report.unknown_query_rows += 1;
            report.first_unknown_query.get_or_insert_with(|| (qid.to_string(), line));
            return Ok(());
        };
        if grades[q].get_or_insert_with(HashMap::new).insert(did.to_string(), grade).is_some() {
            report.duplicate_rows += 1;
        }
        Ok(())
    })?;
    let judged: Vec<Judged> = grades
        .into_iter()
        .enumerate()
        .filter_map(|(query, g)| g.map(|grades| Judged { query, grades }))
        .collect();
    report.unjudged_queries = queries.len() - judged.len();
    Ok((judged, report))
}
