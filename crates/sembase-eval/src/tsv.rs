//! Reading tab-separated files line by line, with 1-based line numbers and every
//! bad row collected rather than the first one aborting the read.

use std::path::Path;

use crate::error::{EvalError, Problems, Result};

/// Whether the first line is a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// The first non-empty line is always a header.
    Always,
    /// The first non-empty line is a header unless column `n` parses as a number
    /// (for files whose last column is a score or label).
    UnlessNumeric(usize),
}

/// Reads `path` as UTF-8 lines; a file that is not UTF-8 is reported by line.
pub(crate) fn read_lines(path: &Path) -> Result<Vec<(usize, String)>> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
    let mut problems = Problems::new(path);
    let mut lines = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        match std::str::from_utf8(raw) {
            Ok(s) => lines.push((i + 1, s.to_string())),
            Err(e) => problems.add(i + 1, format!("not valid UTF-8 ({e})")),
        }
    }
    problems.finish()?;
    // A final newline leaves one empty piece behind; it is not a row.
    if lines.last().is_some_and(|(_, s)| s.is_empty()) {
        lines.pop();
    }
    Ok(lines)
}

/// Reads a TSV with exactly `columns` fields per row, calling `row` for each data
/// row (line number, fields). `row` returns a message for a row it cannot use;
/// every bad row is collected and the read fails listing them by file and line.
/// Blank lines are skipped.
pub(crate) fn read_tsv(
    path: &Path,
    columns: usize,
    header: Header,
    mut row: impl FnMut(usize, &[&str]) -> std::result::Result<(), String>,
) -> Result<()> {
    let lines = read_lines(path)?;
    let mut problems = Problems::new(path);
    let mut first = true;
    for (line, text) in &lines {
        if text.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = text.split('\t').collect();
        if first {
            first = false;
            let is_header = match header {
                Header::Always => true,
                Header::UnlessNumeric(n) => {
                    fields.get(n).is_none_or(|f| f.trim().parse::<f64>().is_err())
                }
            };
            if is_header {
                if fields.len() != columns {
                    problems.add(
                        *line,
                        format!(
                            "header has {} tab-separated fields, expected {columns}",
                            fields.len()
                        ),
                    );
                }
                continue;
            }
        }
        if fields.len() != columns {
            problems.add(
                *line,
                format!("expected {columns} tab-separated fields, found {}", fields.len()),
            );
            continue;
        }
        if let Err(message) = row(*line, &fields) {
            problems.add(*line, message);
        }
    }
    problems.finish()
}

/// Parses a finite number, with a message naming the column.
pub(crate) fn parse_number(field: &str, column: &str) -> std::result::Result<f64, String> {
    match field.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("{column} {field:?} is not a number")),
    }
}
