//! Results: the `--json` layout of DESIGN.md, and terminal / markdown tables.
//!
//! ```text
//! {"results": [{"model": "...", "task": "KIND:PATH", "kind": "sts|pairs|retrieval",
//!   "dimensions": 384, "metrics": {"spearman": 82.03, ...}, "seconds": 12.3}]}
//! ```
//! Metric values are percentages; names are lower case. A reranked retrieval
//! result also has `"before"` (the bi-encoder's metrics) and `"rerank": {"model",
//! "depth", "pairs", "seconds"}`; its `"metrics"` are the reranked figures.

use std::fmt::Write as _;
use std::path::Path;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{EvalError, Result};
use crate::tasks::TaskKind;
use sembase_embed::durable;

/// Named metric values (percentages) in a fixed, meaningful order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics(pub Vec<(String, f64)>);

impl Metrics {
    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// Adds a value given as a fraction, stored x100.
    pub fn push_fraction(&mut self, name: &str, fraction: f64) {
        self.0.push((name.to_string(), fraction * 100.0));
    }
}

impl Serialize for Metrics {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            // NaN (e.g. a correlation with constant scores) has no JSON form: null.
            map.serialize_entry(name, &value.is_finite().then_some(*value))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Metrics {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct OrderedVisitor;
        impl<'de> Visitor<'de> for OrderedVisitor {
            type Value = Metrics;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of metric values")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Metrics, A::Error> {
                let mut out = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, Option<f64>>()? {
                    out.push((name, value.unwrap_or(f64::NAN)));
                }
                Ok(Metrics(out))
            }
        }
        deserializer.deserialize_map(OrderedVisitor)
    }
}

/// One (model, task, dimensions) result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub model: String,
    /// `KIND:PATH` as given.
    pub task: String,
    /// `sts`, `pairs` or `retrieval`.
    pub kind: String,
    pub dimensions: usize,
    pub metrics: Metrics,
    /// Wall time of this result (embedding included; cached vectors are fast).
    pub seconds: f64,
    /// With reranking: the bi-encoder's metrics, before the cross-encoder reordered its top.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Metrics>,
    /// With reranking: which cross-encoder, how deep, and what it cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerank: Option<RerankInfo>,
}

/// The reranking stage of a result; a benchmark reads pairs/s from `pairs` and `seconds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankInfo {
    /// The cross-encoder.
    pub model: String,
    /// Documents reranked at the top of each query's ranking.
    pub depth: usize,
    /// (query, document) pairs scored.
    pub pairs: usize,
    /// Wall time of reranking (tokenizing and scoring), part of the result's `seconds`.
    pub seconds: f64,
}

impl EvalResult {
    /// The result as rows of a table: itself, or for a reranked result the
    /// bi-encoder alone (its metrics `before`, its seconds without reranking) and
    /// then the two stages under `MODEL + CROSS_ENCODER (top K)`.
    pub fn stages(&self) -> Vec<EvalResult> {
        let (Some(before), Some(info)) = (&self.before, &self.rerank) else {
            return vec![self.clone()];
        };
        let plain = EvalResult { before: None, rerank: None, ..self.clone() };
        vec![
            EvalResult {
                metrics: before.clone(),
                seconds: (self.seconds - info.seconds).max(0.0),
                ..plain.clone()
            },
            EvalResult {
                model: format!("{} + {} (top {})", self.model, info.model, info.depth),
                ..plain
            },
        ]
    }
}

/// A row of side-by-side tables: a task at every model's full width
/// (`width: None`) or at one truncated width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row<'a> {
    pub kind: &'a str,
    pub task: &'a str,
    pub width: Option<usize>,
}

/// The `--json` document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalResults {
    pub results: Vec<EvalResult>,
}

impl EvalResults {
    /// Reads a document written by [`EvalResults::write_json`].
    pub fn read_json(path: &Path) -> Result<EvalResults> {
        let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| EvalError::Malformed {
            path: path.to_path_buf(),
            rows: vec![crate::error::BadRow {
                line: e.line(),
                message: format!("not an eval results document ({e})"),
            }],
            total: 1,
        })
    }

    /// Writes the document atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        Ok(durable::write_json(path, self)?)
    }

    /// Every result as its [`EvalResult::stages`], so that tables and reports put
    /// a bi-encoder and its reranked figures side by side as two models.
    pub fn with_stages(&self) -> EvalResults {
        EvalResults { results: self.results.iter().flat_map(EvalResult::stages).collect() }
    }

    /// Models in first-seen order.
    pub fn models(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in &self.results {
            if !out.contains(&r.model.as_str()) {
                out.push(&r.model);
            }
        }
        out
    }

    /// A model's full width: the largest `dimensions` among its results.
    pub fn full_width(&self, model: &str) -> Option<usize> {
        self.results.iter().filter(|r| r.model == model).map(|r| r.dimensions).max()
    }

    /// The row a result belongs to when models are put side by side: results at
    /// their model's full width share one row per task, whatever that width is;
    /// truncated widths get rows of their own.
    pub fn row_of<'a>(&self, r: &'a EvalResult) -> Row<'a> {
        let width = (Some(r.dimensions) != self.full_width(&r.model)).then_some(r.dimensions);
        Row { kind: &r.kind, task: &r.task, width }
    }

    /// Distinct rows in first-seen order (see [`EvalResults::row_of`]).
    pub fn rows(&self) -> Vec<Row<'_>> {
        let mut out: Vec<Row> = Vec::new();
        for r in &self.results {
            let row = self.row_of(r);
            if !out.contains(&row) {
                out.push(row);
            }
        }
        out
    }

    /// The result of `model` in `row`.
    pub fn find(&self, model: &str, row: &Row) -> Option<&EvalResult> {
        let width = row.width.or_else(|| self.full_width(model))?;
        self.results
            .iter()
            .find(|r| r.model == model && r.task == row.task && r.dimensions == width)
    }

    /// Results grouped by kind (in sts, pairs, retrieval order) with each group's
    /// metric names and cells: task, model, dims, one per metric, seconds. A
    /// reranked result is two rows, before and after (see [`EvalResult::stages`]).
    fn tables(&self) -> Vec<(TaskKind, Vec<String>, Vec<Vec<String>>)> {
        let staged = self.with_stages();
        let mut out = Vec::new();
        for kind in [TaskKind::Sts, TaskKind::Pairs, TaskKind::Retrieval] {
            let rows: Vec<&EvalResult> =
                staged.results.iter().filter(|r| r.kind == kind.as_str()).collect();
            if rows.is_empty() {
                continue;
            }
            let names = metric_names(&rows);
            let body = rows
                .iter()
                .map(|r| {
                    let mut cells =
                        vec![short_task(&r.task), r.model.clone(), r.dimensions.to_string()];
                    cells.extend(
                        names.iter().map(|n| r.metrics.get(n).map_or("-".into(), format_value)),
                    );
                    cells.push(format!("{:.1}", r.seconds));
                    cells
                })
                .collect();
            let mut header = vec!["task".to_string(), "model".into(), "dims".into()];
            header.extend(names);
            header.push("seconds".into());
            out.push((kind, header, body));
        }
        out
    }

    /// A plain-text table per kind, every metric as a column.
    pub fn terminal_table(&self) -> String {
        let mut out = String::new();
        for (kind, header, body) in self.tables() {
            let _ = writeln!(out, "{}", kind.as_str().to_uppercase());
            out.push_str(&aligned(&header, &body));
            out.push('\n');
        }
        out
    }

    /// A markdown table per kind (for a README's results section).
    pub fn markdown_table(&self) -> String {
        let mut out = String::new();
        for (kind, header, body) in self.tables() {
            let _ = writeln!(out, "**{kind}**\n");
            let _ = writeln!(out, "| {} |", header.join(" | "));
            let _ = writeln!(out, "|---|---|{}", "---:|".repeat(header.len() - 2));
            for row in body {
                let _ = writeln!(out, "| {} |", row.join(" | "));
            }
            out.push('\n');
        }
        out
    }
}

/// Metric names over `rows`, in first-seen order.
fn metric_names(rows: &[&EvalResult]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in rows {
        for (n, _) in &r.metrics.0 {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    names
}

/// Two decimals, or `n/a` for a value that is not a number.
pub fn format_value(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "n/a".into()
    }
}

/// A task's path without the leading data directories: `KIND:.../a/b/c` -> `KIND:a/b/c`
/// keeps the last three components (enough to tell `en/stsb/test.tsv` apart).
pub fn short_task(task: &str) -> String {
    let Some((kind, path)) = task.split_once(':') else {
        return task.to_string();
    };
    let parts: Vec<&str> =
        path.trim_end_matches('/').split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    let keep = parts.len().saturating_sub(3);
    format!("{kind}:{}", parts[keep..].join("/"))
}

/// Left-aligned text columns, numbers right-aligned.
fn aligned(header: &[String], body: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            body.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let numeric = |c: usize| c >= 2;
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(c, s)| {
                let pad = widths[c] - s.chars().count();
                if numeric(c) {
                    format!("{}{s}", " ".repeat(pad))
                } else {
                    format!("{s}{}", " ".repeat(pad))
                }
            })
            .collect();
        parts.join("  ").trim_end().to_string()
    };
    let mut out = line(header);
    out.push('\n');
    out.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
    out.push('\n');
    for row in body {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EvalResults {
        EvalResults {
            results: vec![EvalResult {
                model: "m".into(),
                task: "sts:../shared/data/en/stsb/test.tsv".into(),
                kind: "sts".into(),
                dimensions: 384,
                metrics: Metrics(vec![("spearman".into(), 82.0312), ("pearson".into(), f64::NAN)]),
                seconds: 1.25,
                before: None,
                rerank: None,
            }],
        }
    }

    #[test]
    fn json_keeps_metric_order_and_writes_nan_as_null() {
        let json = serde_json::to_string(&sample()).unwrap();
        assert!(json.contains(r#""metrics":{"spearman":82.0312,"pearson":null}"#), "{json}");
        let back: EvalResults = serde_json::from_str(&json).unwrap();
        assert_eq!(back.results[0].metrics.0[0], ("spearman".to_string(), 82.0312));
        assert!(back.results[0].metrics.0[1].1.is_nan());
    }

    #[test]
    fn a_reranked_result_is_two_rows_and_keeps_both_in_json() {
        let metrics = |v: f64| Metrics(vec![("ndcg@10".into(), v)]);
        let results = EvalResults {
            results: vec![EvalResult {
                model: "bi".into(),
                task: "retrieval:data/x".into(),
                kind: "retrieval".into(),
                dimensions: 384,
                metrics: metrics(60.0),
                seconds: 5.0,
                before: Some(metrics(40.0)),
                rerank: Some(RerankInfo {
                    model: "ce".into(),
                    depth: 50,
                    pairs: 500,
                    seconds: 2.0,
                }),
            }],
        };
        let rows = results.with_stages().results;
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].model.as_str(), rows[0].seconds), ("bi", 3.0));
        assert_eq!(rows[0].metrics, metrics(40.0));
        assert_eq!((rows[1].model.as_str(), rows[1].seconds), ("bi + ce (top 50)", 5.0));
        assert_eq!(rows[1].metrics, metrics(60.0));
        assert!(rows.iter().all(|r| r.before.is_none() && r.rerank.is_none()));
        let table = results.terminal_table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[3].contains("bi ") && lines[3].contains("40.00"), "{table}");
        assert!(lines[4].contains("bi + ce (top 50)") && lines[4].contains("60.00"), "{table}");

        let json = serde_json::to_value(&results).unwrap();
        let r = &json["results"][0];
        assert_eq!(r["metrics"]["ndcg@10"], 60.0);
        assert_eq!(r["before"]["ndcg@10"], 40.0);
        assert_eq!(
            r["rerank"],
            serde_json::json!({"model": "ce", "depth": 50, "pairs": 500, "seconds": 2.0})
        );
        let back: EvalResults = serde_json::from_value(json).unwrap();
        assert_eq!(back, results);
        // Results without reranking write neither key.
        let plain = serde_json::to_string(&sample()).unwrap();
        assert!(!plain.contains("before") && !plain.contains("rerank"), "{plain}");
    }

    #[test]
    fn tables_show_short_task_names() {
        let t = sample().terminal_table();
        assert!(t.contains("sts:en/stsb/test.tsv"), "{t}");
        assert!(t.contains("82.03"), "{t}");
        let md = sample().markdown_table();
        assert!(md.starts_with("**sts**\n\n| task | model | dims | spearman | pearson | seconds |\n|---|---|---:|---:|---:|---:|\n"), "{md}");
    }
}
