//! Typed errors of the evaluation crate.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// One row of an input file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// 1-based line number in the file.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// How many malformed rows an error lists before summarising the rest.
const LISTED_ROWS: usize = 5;

/// Everything that can go wrong while loading tasks, embedding or writing results.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read or written. The reason is in the message, not a
    /// `source`, so `{:#}` does not print it twice.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    /// A data file has rows that do not fit its format.
    #[error("{}", MalformedDisplay { path, rows, total: *total })]
    Malformed {
        path: PathBuf,
        /// The first few bad rows, in file order.
        rows: Vec<BadRow>,
        /// How many rows were bad in all.
        total: usize,
    },
    /// A `--task KIND:PATH` that cannot be used as given.
    #[error("task {spec:?}: {message}")]
    Task { spec: String, message: String },
    /// The model failed.
    #[error(transparent)]
    Embed(#[from] sembase_embed::Error),
    /// A remote endpoint failed or answered something unusable.
    #[error("{url}: {message}")]
    Remote { url: String, message: String },
    /// Exact or ANN search failed.
    #[error(transparent)]
    Index(#[from] sembase_index::IndexError),
    /// Settings that do not fit together (e.g. dimensions over the model's width).
    #[error("{0}")]
    Invalid(String),
}

/// Result with [`EvalError`].
pub type Result<T, E = EvalError> = std::result::Result<T, E>;

impl From<sembase_embed::durable::FileError> for EvalError {
    fn from(e: sembase_embed::durable::FileError) -> Self {
        EvalError::Io { path: e.path, error: e.source }
    }
}

impl EvalError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        EvalError::Io { path: path.into(), error: source }
    }
}

struct MalformedDisplay<'a> {
    path: &'a PathBuf,
    rows: &'a [BadRow],
    total: usize,
}

impl fmt::Display for MalformedDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match self.rows.first() {
            None => write!(f, "{path}: malformed"),
            Some(first) => {
                write!(f, "{path}:{}: {}", first.line, first.message)?;
                for row in self.rows.iter().skip(1) {
                    write!(f, "; {path}:{}: {}", row.line, row.message)?;
                }
                if self.total > self.rows.len() {
                    write!(f, " (and {} more malformed rows)", self.total - self.rows.len())?;
                }
                Ok(())
            }
        }
    }
}

/// Collects the bad rows of one file while it is read.
#[derive(Debug)]
pub(crate) struct Problems {
    path: PathBuf,
    rows: Vec<BadRow>,
    total: usize,
}

impl Problems {
    pub(crate) fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), rows: Vec::new(), total: 0 }
    }

    /// Records a bad row.
    pub(crate) fn add(&mut self, line: usize, message: impl Into<String>) {
        self.total += 1;
        if self.rows.len() < LISTED_ROWS {
            self.rows.push(BadRow { line, message: message.into() });
        }
    }

    /// `Ok` when no row was bad, else the [`EvalError::Malformed`] listing them.
    pub(crate) fn finish(self) -> Result<()> {
        if self.total == 0 {
            Ok(())
        } else {
            Err(EvalError::Malformed { path: self.path, rows: self.rows, total: self.total })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lists_the_first_rows_and_counts_the_rest() {
        let mut p = Problems::new("data/x.tsv");
        for line in 2..10 {
            p.add(line, "expected 3 tab-separated fields, found 2");
        }
        let message = p.finish().unwrap_err().to_string();
        assert!(message.starts_with("data/x.tsv:2: expected 3"), "{message}");
        assert!(message.contains("data/x.tsv:6:"), "{message}");
        assert!(!message.contains("data/x.tsv:7:"), "{message}");
        assert!(message.ends_with("(and 3 more malformed rows)"), "{message}");
    }
}
