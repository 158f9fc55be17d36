//! Labelled data: `text<TAB>label` TSV with a header line.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{io, Error, Result};

/// Texts with class indices into `classes` (sorted label names).
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub texts: Vec<String>,
    /// Class index of each text.
    pub labels: Vec<usize>,
    /// Label names, sorted; `labels` index into this.
    pub classes: Vec<String>,
    /// 1-based file line of each row (the header is line 1).
    pub lines: Vec<usize>,
}

impl Dataset {
    /// Examples per class, in `classes` order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &y in &self.labels {
            counts[y] += 1;
        }
        counts
    }

    /// Checks that the data can be cross validated with `folds` folds: at least
    /// two classes, and every class with at least `folds` examples.
    pub fn check_trainable(&self, path: &Path, folds: usize) -> Result<()> {
        if self.classes.len() < 2 {
            let label = self.classes.first().map(String::as_str).unwrap_or("");
            return Err(Error::Data {
                path: path.into(),
                line: self.lines.first().copied().unwrap_or(1),
                message: format!(
                    "only one class ({label:?}) in the file; a classifier needs at least two"
                ),
            });
        }
        for (class, &count) in self.class_counts().iter().enumerate() {
            if count < folds {
                let first = self
                    .labels
                    .iter()
                    .position(|&y| y == class)
                    .map(|i| self.lines[i])
                    .unwrap_or(1);
                return Err(Error::Data {
                    path: path.into(),
                    line: first,
                    message: format!(
                        "class {:?} (first seen here) has {count} example(s), fewer than the {folds} folds",
                        self.classes[class]
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Reads a `text<TAB>label` file. Every row must have exactly two fields, a
/// non-empty text and a non-empty label; errors name the line.
pub fn load_tsv(path: &Path) -> Result<Dataset> {
    let raw = std::fs::read(path).map_err(io(path))?;
    let content = String::from_utf8(raw).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        Error::Data { path: path.into(), line, message: "not valid UTF-8".into() }
    })?;
    parse_tsv(&content, path)
}

/// [`load_tsv`] on text already in memory; `path` only names the source in errors.
pub fn parse_tsv(content: &str, path: &Path) -> Result<Dataset> {
    let err = |line: usize, message: String| Error::Data { path: path.into(), line, message };
    let mut lines =
        content.lines().enumerate().map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)));
    match lines.next() {
        None => return Err(err(1, "empty file: expected a header line `text<TAB>label`".into())),
        Some((n, header)) => {
            if header.split('\t').count() != 2 {
                return Err(err(
                    n,
                    format!(
                        "header has {} tab-separated fields, expected 2 (`text<TAB>label`)",
                        header.split('\t').count()
                    ),
                ));
            }
        }
    }
    let mut texts = Vec::new();
    let mut names = Vec::new();
    let mut line_nos = Vec::new();
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != 2 {
            return Err(err(
                n,
                format!("{} tab-separated fields, expected 2 (`text<TAB>label`; tabs are not allowed inside a text or label)", fields.len()),
            ));
        }
        let (text, label) = (fields[0], fields[1].trim());
        if text.trim().is_empty() {
            return Err(err(n, "empty text".into()));
        }
        if label.is_empty() {
            return Err(err(n, "empty label".into()));
        }
        texts.push(text.to_string());
        names.push(label.to_string());
        line_nos.push(n);
    }
    if texts.is_empty() {
        return Err(err(1, "no data rows after the header".into()));
    }
    let mut classes: Vec<String> = names.clone();
    classes.sort();
    classes.dedup();
    let index: HashMap<&str, usize> =
        classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let labels = names.iter().map(|n| index[n.as_str()]).collect();
    Ok(Dataset { texts, labels, classes, lines: line_nos })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Dataset> {
        parse_tsv(s, Path::new("x.tsv"))
    }

    #[test]
    fn parses_and_sorts_classes() {
        let d = parse("text\tlabel\nhello\tb\nworld\ta\r\n\nagain\tb\n").unwrap();
        assert_eq!(d.classes, vec!["a", "b"]);
        assert_eq!(d.labels, vec![1, 0, 1]);
        assert_eq!(d.lines, vec![2, 3, 5]);
        assert_eq!(d.class_counts(), vec![1, 2]);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("text\tlabel\nok\ta\nbad\tla\tbel\n").unwrap_err().to_string();
        assert!(e.starts_with("x.tsv:3: 3 tab-separated fields"), "{e}");
        let e = parse("text\tlabel\nok\ta\n  \tb\n").unwrap_err().to_string();
        assert_eq!(e, "x.tsv:3: empty text");
        let e = parse("text\tlabel\nok\ta\nno label here\n").unwrap_err().to_string();
        assert!(e.starts_with("x.tsv:3: 1 tab-separated fields"), "{e}");
        let e = parse("text\tlabel\nok\t\n").unwrap_err().to_string();
        assert_eq!(e, "x.tsv:2: empty label");
        assert!(parse("").unwrap_err().to_string().starts_with("x.tsv:1: empty file"));
        assert!(parse("text\tlabel\n").unwrap_err().to_string().contains("no data rows"));
    }

    #[test]
    fn trainability_checks() {
        let p = Path::new("x.tsv");
        let one = parse("text\tlabel\na\tx\nb\tx\n").unwrap();
        let e = one.check_trainable(p, 2).unwrap_err().to_string();
        assert!(e.starts_with("x.tsv:2: only one class"), "{e}");
        let few = parse("text\tlabel\na\tx\nb\tx\nc\tx\nd\ty\ne\ty\n").unwrap();
        let e = few.check_trainable(p, 3).unwrap_err().to_string();
        assert!(e.starts_with("x.tsv:5: class \"y\""), "{e}");
        assert!(e.contains("2 example(s), fewer than the 3 folds"), "{e}");
        few.check_trainable(p, 2).unwrap();
    }
}
