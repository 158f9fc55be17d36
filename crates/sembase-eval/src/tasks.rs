//! Task specifications (`KIND:PATH`) and loaders for the tab-separated formats of
//! `data/README.md`: sts, pairs, triplets, classify. Retrieval (BEIR layout) is in
//! [`crate::beir`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::beir::{load_retrieval, RetrievalSet};
use crate::error::{EvalError, Result};
use crate::tsv::{parse_number, read_tsv, Header};

/// The kinds of evaluation task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskKind {
    /// Sentence pairs with a graded similarity score.
    Sts,
    /// Sentence pairs labelled 1 (same meaning) or 0.
    Pairs,
    /// Queries, a corpus and relevance judgments (BEIR layout).
    Retrieval,
}

impl TaskKind {
    /// The lower-case name used in `KIND:PATH` and in results.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Sts => "sts",
            TaskKind::Pairs => "pairs",
            TaskKind::Retrieval => "retrieval",
        }
    }

    /// Parses a lower-case kind name.
    pub fn parse(name: &str) -> Option<TaskKind> {
        match name {
            "sts" => Some(TaskKind::Sts),
            "pairs" => Some(TaskKind::Pairs),
            "retrieval" => Some(TaskKind::Retrieval),
            _ => None,
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task as named on the command line: `sts:FILE.tsv`, `pairs:FILE.tsv` or
/// `retrieval:DIR` (a BEIR folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    pub kind: TaskKind,
    pub path: PathBuf,
    /// The spec as given (`KIND:PATH`), used as the task's name in results.
    pub name: String,
}

impl FromStr for TaskSpec {
    type Err = EvalError;

    fn from_str(spec: &str) -> Result<TaskSpec> {
        let fail = |message: &str| EvalError::Task {
            spec: spec.to_string(),
            message: message.to_string(),
        };
        let (kind, path) = spec
            .split_once(':')
            .ok_or_else(|| fail("expected KIND:PATH with KIND one of sts, pairs, retrieval"))?;
        let kind = TaskKind::parse(kind).ok_or_else(|| {
            fail(&format!("unknown kind {kind:?} (expected sts, pairs or retrieval)"))
        })?;
        if path.is_empty() {
            return Err(fail("the path is empty"));
        }
        Ok(TaskSpec { kind, path: PathBuf::from(path), name: spec.to_string() })
    }
}

/// A sentence pair with a graded similarity score.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredPair {
    pub sentence1: String,
    pub sentence2: String,
    pub score: f64,
}

/// A sentence pair labelled same meaning (`true`) or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabeledPair {
    pub sentence1: String,
    pub sentence2: String,
    pub label: bool,
}

/// An anchor, a positive and a hard negative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Triplet {
    pub anchor: String,
    pub positive: String,
    pub negative: String,
}

/// A text with a class label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabeledText {
    pub text: String,
    pub label: String,
}

/// A task's data, loaded.
#[derive(Debug, Clone)]
pub enum TaskData {
    Sts(Vec<ScoredPair>),
    Pairs(Vec<LabeledPair>),
    Retrieval(RetrievalSet),
}

/// A loaded task with its spec.
#[derive(Debug, Clone)]
pub struct Task {
    pub spec: TaskSpec,
    pub data: TaskData,
}

impl Task {
    /// Loads the data a spec names.
    pub fn load(spec: &TaskSpec) -> Result<Task> {
        let data = match spec.kind {
            TaskKind::Sts => TaskData::Sts(load_sts(&spec.path)?),
            TaskKind::Pairs => TaskData::Pairs(load_pairs(&spec.path)?),
            TaskKind::Retrieval => TaskData::Retrieval(load_retrieval(&spec.path)?),
        };
        let empty = match &data {
            TaskData::Sts(rows) => rows.is_empty(),
            TaskData::Pairs(rows) => rows.is_empty(),
            TaskData::Retrieval(set) => set.judged.is_empty(),
        };
        if empty {
            return Err(EvalError::Task {
                spec: spec.name.clone(),
                message: "has no rows to evaluate".into(),
            });
        }
        Ok(Task { spec: spec.clone(), data })
    }

    /// Lines worth telling the user about the data (unknown ids, unjudged queries).
    pub fn notes(&self) -> Vec<String> {
        match &self.data {
            TaskData::Retrieval(set) => set.notes(),
            _ => Vec::new(),
        }
    }
}

/// Reads an sts file: `sentence1 sentence2 score`, header line.
pub fn load_sts(path: &Path) -> Result<Vec<ScoredPair>> {
    let mut rows = Vec::new();
    read_tsv(path, 3, Header::UnlessNumeric(2), |_, f| {
        let score = parse_number(f[2], "score")?;
        rows.push(ScoredPair { sentence1: f[0].to_string(), sentence2: f[1].to_string(), score });
        Ok(())
    })?;
    Ok(rows)
}

/// Reads a pairs file: `sentence1 sentence2 label` with label 0 or 1, header line.
pub fn load_pairs(path: &Path) -> Result<Vec<LabeledPair>> {
    let mut rows = Vec::new();
    read_tsv(path, 3, Header::UnlessNumeric(2), |_, f| {
        let value = parse_number(f[2], "label")?;
        if value != 0.0 && value != 1.0 {
            return Err(format!("label {:?} is not 0 or 1", f[2]));
        }
        let label = value == 1.0;
        rows.push(LabeledPair { sentence1: f[0].to_string(), sentence2: f[1].to_string(), label });
        Ok(())
    })?;
    Ok(rows)
}

/// Reads a triplets file: `anchor positive negative`, header line.
pub fn load_triplets(path: &Path) -> Result<Vec<Triplet>> {
    let mut rows = Vec::new();
    read_tsv(path, 3, Header::Always, |_, f| {
        if f.iter().any(|s| s.trim().is_empty()) {
            return Err("a field is empty".into());
        }
        rows.push(Triplet {
            anchor: f[0].to_string(),
            positive: f[1].to_string(),
            negative: f[2].to_string(),
        });
        Ok(())
    })?;
    Ok(rows)
}

/// Reads a classify file: `text label`, header line; labels are strings.
pub fn load_classify(path: &Path) -> Result<Vec<LabeledText>> {
    let mut rows = Vec::new();
    read_tsv(path, 2, Header::Always, |_, f| {
        let label = f[1].trim();
        if label.is_empty() {
            return Err("the label is empty".into());
        }
        rows.push(LabeledText { text: f[0].to_string(), label: label.to_string() });
        Ok(())
    })?;
    Ok(rows)
}
