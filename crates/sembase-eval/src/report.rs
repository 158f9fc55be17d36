//! The HTML report: one self-contained page (inline CSS and SVG, no scripts, no
//! network) with a summary table, per-task bars by model, recall@k curves,
//! score-vs-dimensions curves when several widths were measured, every figure,
//! notes about the data and the definitions used.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::Result;
use crate::metrics::RECALL_AT;
use crate::results::{format_value, short_task, EvalResult, EvalResults, Row};
use crate::svg::{bar_chart, escape, line_chart, Bars, Line};
use sembase_embed::durable;

/// The metrics shown in the summary and bar charts, per kind.
pub fn headline_metrics(kind: &str) -> &'static [&'static str] {
    match kind {
        "sts" => &["spearman"],
        "pairs" => &["spearman", "ap"],
        "retrieval" => &["ndcg@10", "recall@10"],
        _ => &[],
    }
}

const KINDS: [&str; 3] = ["sts", "pairs", "retrieval"];

pub(crate) const STYLE: &str = r#"
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans","Noto Sans CJK SC",sans-serif;margin:2em auto;max-width:1200px;padding:0 1.5em;color:#1d2330;background:#fff;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #dde2ea;padding-bottom:.25em}h3{font-size:1.05em;margin:1.2em 0 .4em}
.meta{color:#5b6577;margin-top:0}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
th,td{padding:.3em .7em;border-bottom:1px solid #e6e9ef;text-align:right;white-space:nowrap}
th{background:#f4f6f9;font-weight:600}th:first-child,td:first-child,td.text,th.text{text-align:left}
td.best{font-weight:700;background:#eaf4ec}
.charts{display:flex;flex-wrap:wrap;gap:1.2em 2em;align-items:flex-start}
.chart{border:1px solid #e6e9ef;border-radius:6px;padding:.4em .6em;background:#fcfdfe}
svg text{font-family:inherit;fill:#1d2330}svg .title{font-size:13px;font-weight:600}svg .tick{font-size:11px;fill:#4a5365}
svg .value{font-size:10px;fill:#333}svg .axis{font-size:11px;fill:#4a5365}svg .legend{font-size:11px}
svg .grid{stroke:#e6e9ef;stroke-width:1}svg .axisline{stroke:#8a93a3;stroke-width:1}
ul.notes li{margin:.2em 0}code{background:#f4f6f9;padding:0 .25em;border-radius:3px}
dl dt{font-weight:600;margin-top:.5em}dl dd{margin-left:1.2em;color:#333}
"#;

/// Writes the report for `results` (with `notes` about the data) to `path`, atomically.
pub fn write_report(path: &Path, results: &EvalResults, notes: &[String]) -> Result<()> {
    let html = render(results, notes);
    Ok(durable::write_bytes(path, html.as_bytes())?)
}

/// A row label: the short task, with the width when it is a truncated one.
fn row_label(row: &Row) -> String {
    match row.width {
        Some(w) => format!("{} @{w}", short_task(row.task)),
        None => short_task(row.task),
    }
}

/// A chart label: the row label without the kind (the chart title says it) and
/// without a `.tsv` ending.
fn chart_label(row: &Row) -> String {
    let label = row_label(row);
    let label = label.split_once(':').map_or(label.as_str(), |(_, rest)| rest).to_string();
    label.replace(".tsv", "")
}

/// The report as a string. A reranked result shows as two models, the bi-encoder
/// alone and `MODEL + CROSS_ENCODER (top K)` (see [`EvalResults::with_stages`]).
pub fn render(results: &EvalResults, notes: &[String]) -> String {
    let results = &results.with_stages();
    let models = results.models();
    let rows = results.rows();
    let tasks: Vec<&str> = {
        let mut t: Vec<&str> = Vec::new();
        for r in &rows {
            if !t.contains(&r.task) {
                t.push(r.task);
            }
        }
        t
    };

    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>sembase evaluation</title>\n");
    let _ = writeln!(h, "<style>{STYLE}</style>\n</head>\n<body>");
    h.push_str("<h1>sembase evaluation</h1>\n");
    let _ = writeln!(
        h,
        "<p class=\"meta\">{} model{}, {} task{}, {} result{} &middot; generated {} UTC &middot; metric values are percentages</p>",
        models.len(),
        plural(models.len()),
        tasks.len(),
        plural(tasks.len()),
        results.results.len(),
        plural(results.results.len()),
        utc_now()
    );

    // Summary: headline metrics, models side by side, best per row in bold.
    h.push_str("<h2>Summary</h2>\n<table>\n<tr><th>task</th><th class=\"text\">metric</th>");
    for m in &models {
        let _ = write!(h, "<th>{}</th>", escape(m));
    }
    h.push_str("</tr>\n");
    for row in &rows {
        for metric in headline_metrics(row.kind) {
            let values: Vec<Option<f64>> = models
                .iter()
                .map(|m| {
                    results
                        .find(m, row)
                        .and_then(|r| r.metrics.get(metric))
                        .filter(|v| v.is_finite())
                })
                .collect();
            let best = values.iter().flatten().copied().fold(f64::NEG_INFINITY, f64::max);
            // Bold only where there is something to compare with.
            let compared = values.iter().flatten().count() > 1;
            let _ = write!(
                h,
                "<tr><td title=\"{}\">{}</td><td class=\"text\">{metric}</td>",
                escape(row.task),
                escape(&row_label(row))
            );
            for v in &values {
                match v {
                    Some(v) if compared && *v == best => {
                        let _ = write!(h, "<td class=\"best\">{}</td>", format_value(*v));
                    }
                    Some(v) => {
                        let _ = write!(h, "<td>{}</td>", format_value(*v));
                    }
                    None => h.push_str("<td>-</td>"),
                }
            }
            h.push_str("</tr>\n");
        }
    }
    h.push_str("</table>\n");

    // Bars per kind and headline metric.
    h.push_str("<h2>Per task, by model</h2>\n<div class=\"charts\">\n");
    for kind in KINDS {
        let kind_rows: Vec<&Row> = rows.iter().filter(|r| r.kind == kind).collect();
        if kind_rows.is_empty() {
            continue;
        }
        let categories: Vec<String> = kind_rows.iter().map(|r| chart_label(r)).collect();
        for metric in headline_metrics(kind) {
            let series: Vec<Bars> = models
                .iter()
                .map(|m| Bars {
                    name: m.to_string(),
                    values: kind_rows
                        .iter()
                        .map(|r| results.find(m, r).and_then(|x| x.metrics.get(metric)))
                        .collect(),
                })
                .collect();
            let _ = writeln!(
                h,
                "<div class=\"chart\">{}</div>",
                bar_chart(&format!("{kind}: {metric}"), metric, &categories, &series)
            );
        }
    }
    h.push_str("</div>\n");

    // Recall@k curves per retrieval task and width.
    let retrieval_rows: Vec<&Row> = rows.iter().filter(|r| r.kind == "retrieval").collect();
    if !retrieval_rows.is_empty() {
        h.push_str("<h2>Recall@k</h2>\n<div class=\"charts\">\n");
        let ks: Vec<f64> = RECALL_AT.iter().map(|&k| k as f64).collect();
        for r in retrieval_rows {
            let lines: Vec<Line> = models
                .iter()
                .filter_map(|m| results.find(m, r))
                .map(|res| Line {
                    name: res.model.clone(),
                    colour: models.iter().position(|m| *m == res.model).unwrap_or(0),
                    points: RECALL_AT
                        .iter()
                        .filter_map(|&k| {
                            res.metrics.get(&format!("recall@{k}")).map(|v| (k as f64, v))
                        })
                        .collect(),
                })
                .collect();
            let title = format!("recall@k: {}", chart_label(r));
            let _ = writeln!(
                h,
                "<div class=\"chart\">{}</div>",
                line_chart(&title, "k (log scale)", "recall@k", &lines, true, &ks)
            );
        }
        h.push_str("</div>\n");
    }

    // Score against width, for tasks measured at several widths.
    let mut dims_charts = String::new();
    for &task in &tasks {
        let task_results: Vec<&EvalResult> =
            results.results.iter().filter(|r| r.task == task).collect();
        // Only models measured at several widths make a curve.
        let widths_of = |m: &str| {
            let mut w: Vec<usize> =
                task_results.iter().filter(|r| r.model == m).map(|r| r.dimensions).collect();
            w.sort_unstable();
            w.dedup();
            w
        };
        let curved: Vec<&str> = models.iter().copied().filter(|m| widths_of(m).len() > 1).collect();
        if curved.is_empty() {
            continue;
        }
        let mut widths: Vec<usize> = curved.iter().flat_map(|m| widths_of(m)).collect();
        widths.sort_unstable();
        widths.dedup();
        let kind = task_results[0].kind.as_str();
        for metric in headline_metrics(kind) {
            let lines: Vec<Line> = curved
                .iter()
                .map(|m| {
                    let mut points: Vec<(f64, f64)> = task_results
                        .iter()
                        .filter(|r| r.model == *m)
                        .filter_map(|r| r.metrics.get(metric).map(|v| (r.dimensions as f64, v)))
                        .collect();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Line {
                        name: m.to_string(),
                        colour: models.iter().position(|x| x == m).unwrap_or(0),
                        points,
                    }
                })
                .filter(|l| !l.points.is_empty())
                .collect();
            let ticks: Vec<f64> = widths.iter().map(|&w| w as f64).collect();
            let title = format!(
                "{metric} vs dimensions: {}",
                chart_label(&Row { kind, task, width: None })
            );
            let _ = writeln!(
                dims_charts,
                "<div class=\"chart\">{}</div>",
                line_chart(&title, "dimensions (log scale)", metric, &lines, true, &ticks)
            );
        }
    }
    if !dims_charts.is_empty() {
        h.push_str("<h2>Score vs dimensions</h2>\n<div class=\"charts\">\n");
        h.push_str(&dims_charts);
        h.push_str("</div>\n");
    }

    // Every figure, per kind.
    h.push_str("<h2>All figures</h2>\n");
    for kind in KINDS {
        let kind_results: Vec<&EvalResult> =
            results.results.iter().filter(|r| r.kind == kind).collect();
        if kind_results.is_empty() {
            continue;
        }
        let mut names: Vec<&str> = Vec::new();
        for r in &kind_results {
            for (n, _) in &r.metrics.0 {
                if !names.contains(&n.as_str()) {
                    names.push(n);
                }
            }
        }
        let _ = writeln!(h, "<h3>{kind}</h3>\n<table>");
        h.push_str("<tr><th>task</th><th class=\"text\">model</th><th>dims</th>");
        for n in &names {
            let _ = write!(h, "<th>{n}</th>");
        }
        h.push_str("<th>seconds</th></tr>\n");
        for r in kind_results {
            let _ = write!(
                h,
                "<tr><td title=\"{}\">{}</td><td class=\"text\">{}</td><td>{}</td>",
                escape(&r.task),
                escape(&short_task(&r.task)),
                escape(&r.model),
                r.dimensions
            );
            for n in &names {
                let _ = write!(h, "<td>{}</td>", r.metrics.get(n).map_or("-".into(), format_value));
            }
            let _ = writeln!(h, "<td>{:.1}</td></tr>", r.seconds);
        }
        h.push_str("</table>\n");
    }

    if !notes.is_empty() {
        h.push_str("<h2>Notes on the data</h2>\n<ul class=\"notes\">\n");
        for n in notes {
            let _ = writeln!(h, "<li>{}</li>", escape(n));
        }
        h.push_str("</ul>\n");
    }

    h.push_str(DEFINITIONS);
    h.push_str("</body>\n</html>\n");
    h
}

const DEFINITIONS: &str = r#"<h2>Definitions</h2>
<dl>
<dt>sts: spearman, pearson</dt><dd>Rank (average ranks for ties) and linear correlation of cosine similarity with the gold scores, x100.</dd>
<dt>pairs: spearman, accuracy, f1, ap</dt><dd>Spearman of cosine against the 0/1 labels; the best accuracy and the best F1 over all cosine thresholds; average precision of cosine as a ranking of the positive pairs (sentence-transformers' BinaryClassificationEvaluator).</dd>
<dt>retrieval: recall@k, mrr@10, ndcg@10, map@100</dt><dd>Exact cosine search over the whole corpus; pytrec_eval definitions with graded relevance (a document is relevant when its qrels grade is at least 1, nDCG gain is the grade). Averages are over the queries that have qrels.</dd>
<dt>MODEL + CROSS_ENCODER (top K)</dt><dd>The model's top K documents of each query reordered by the cross-encoder's relevance score (query without the model's prefix, document as title + text); documents below K keep the model's order after them. Seconds include the model's retrieval.</dd>
<dt>seconds</dt><dd>Wall time of one model on one task, embedding included; vectors found in the embedding cache are not recomputed.</dd>
</dl>
"#;

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The current time as `YYYY-MM-DD HH:MM`, UTC.
pub(crate) fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", rest / 3600, rest % 3600 / 60)
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Metrics;

    fn result(
        model: &str,
        task: &str,
        kind: &str,
        dims: usize,
        metrics: &[(&str, f64)],
    ) -> EvalResult {
        EvalResult {
            model: model.into(),
            task: task.into(),
            kind: kind.into(),
            dimensions: dims,
            metrics: Metrics(metrics.iter().map(|(n, v)| (n.to_string(), *v)).collect()),
            seconds: 1.0,
            before: None,
            rerank: None,
        }
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn a_reranked_result_shows_before_and_after() {
        let mut reranked = result("bi", "retrieval:x/r", "retrieval", 384, &[("ndcg@10", 60.0)]);
        reranked.before = Some(Metrics(vec![("ndcg@10".into(), 40.0)]));
        reranked.rerank = Some(crate::results::RerankInfo {
            model: "ce".into(),
            depth: 100,
            pairs: 1000,
            seconds: 0.5,
        });
        let html = render(&EvalResults { results: vec![reranked] }, &[]);
        assert!(html.contains("<th>bi</th><th>bi + ce (top 100)</th>"), "{html}");
        assert!(html.contains("<td>40.00</td><td class=\"best\">60.00</td>"), "{html}");
    }

    #[test]
    fn page_is_self_contained_and_has_every_chart_kind() {
        let results = EvalResults {
            results: vec![
                result(
                    "a<b>",
                    "sts:x/stsb/test.tsv",
                    "sts",
                    384,
                    &[("spearman", 80.0), ("pearson", 79.0)],
                ),
                result(
                    "c",
                    "sts:x/stsb/test.tsv",
                    "sts",
                    384,
                    &[("spearman", 85.0), ("pearson", 84.0)],
                ),
                result(
                    "c",
                    "sts:x/stsb/test.tsv",
                    "sts",
                    128,
                    &[("spearman", 83.0), ("pearson", 82.0)],
                ),
                result(
                    "c",
                    "retrieval:x/r",
                    "retrieval",
                    384,
                    &[
                        ("recall@1", 10.0),
                        ("recall@5", 30.0),
                        ("recall@10", 40.0),
                        ("recall@100", 80.0),
                        ("ndcg@10", 35.0),
                    ],
                ),
            ],
        };
        let html = render(&results, &["7 of 50 queries have no qrels".into()]);
        assert!(html.contains("a&lt;b&gt;") && !html.contains("a<b>"));
        assert!(!html.contains("http://") || !html.contains("src=\"http"));
        assert!(!html.contains("<script"));
        assert!(
            html.contains("Recall@k")
                && html.contains("Score vs dimensions")
                && html.contains("Notes on the data")
        );
        assert!(html.contains("<td class=\"best\">85.00</td>"));
        assert_eq!(
            html.matches("<svg").count(),
            1 + 2 + 1 + 1,
            "sts bars, retrieval bars x2, recall curve, dims curve"
        );

        // Models of different full widths share rows; no width curve without a model at several widths.
        let results = EvalResults {
            results: vec![
                result("small", "sts:x/stsb/test.tsv", "sts", 384, &[("spearman", 80.0)]),
                result("base", "sts:x/stsb/test.tsv", "sts", 768, &[("spearman", 83.0)]),
            ],
        };
        assert_eq!(results.rows().len(), 1);
        let html = render(&results, &[]);
        assert!(
            !html.contains("Score vs dimensions")
                && !html.contains("@768")
                && !html.contains("@384")
        );
        assert!(html.contains("<td>80.00</td><td class=\"best\">83.00</td>"), "{html}");
    }
}
