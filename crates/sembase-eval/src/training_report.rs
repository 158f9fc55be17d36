//! The HTML page of a training run, in the evaluation report's style: the loss
//! curve, the in-training evaluations (a curve per metric and a table), and the
//! hyper-parameters. One self-contained file.

use std::fmt::Write as _;
use std::path::Path;

use crate::report::{utc_now, STYLE};
use crate::svg::{escape, line_chart, Line};
use crate::Result;
use sembase_embed::durable;

/// What a training run recorded.
pub struct TrainingRun<'a> {
    /// A heading, e.g. "sts on atec/train.tsv from multilingual-e5-small".
    pub title: &'a str,
    /// (step, loss) after each optimiser step.
    pub loss: &'a [(usize, f32)],
    /// (step, metric name -> value) of each evaluation.
    pub eval: &'a [(usize, serde_json::Value)],
    /// Settings shown as a table (a JSON object).
    pub hyperparameters: &'a serde_json::Value,
}

/// Writes the page for `run` to `path`, atomically.
pub fn write_training_report(path: &Path, run: &TrainingRun) -> Result<()> {
    let html = render_training(run);
    Ok(durable::write_bytes(path, html.as_bytes())?)
}

/// The metric names seen in the evaluations, in first-seen order.
fn metric_names(eval: &[(usize, serde_json::Value)]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (_, metrics) in eval {
        for name in metrics.as_object().into_iter().flat_map(|m| m.keys()) {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    names
}

/// The page for `run`.
pub fn render_training(run: &TrainingRun) -> String {
    let mut h = String::new();
    let title = escape(run.title);
    let _ = writeln!(h, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>sembase training: {title}</title>");
    let _ = writeln!(h, "<style>{STYLE}</style>\n</head>\n<body>\n<h1>sembase training</h1>");
    let _ = writeln!(
        h,
        "<p class=\"meta\">{title} &middot; {} steps &middot; generated {} UTC</p>",
        run.loss.len(),
        utc_now()
    );

    h.push_str("<div class=\"charts\">\n");
    let loss = Line {
        name: "loss".into(),
        colour: 0,
        points: run.loss.iter().map(|&(s, l)| (s as f64, f64::from(l))).collect(),
    };
    let _ = writeln!(
        h,
        "<div class=\"chart\">{}</div>",
        line_chart("Training loss", "step", "loss", &[loss], false, &[])
    );
    let names = metric_names(run.eval);
    for (i, name) in names.iter().enumerate() {
        let points = run
            .eval
            .iter()
            .filter_map(|(s, m)| m.get(name)?.as_f64().map(|v| (*s as f64, v)))
            .collect();
        let line = Line { name: name.clone(), colour: (i + 1) % 8, points };
        let _ = writeln!(
            h,
            "<div class=\"chart\">{}</div>",
            line_chart(&format!("Evaluation: {name}"), "step", name, &[line], false, &[])
        );
    }
    h.push_str("</div>\n");

    if !run.eval.is_empty() {
        h.push_str("<h2>Evaluations</h2>\n<table>\n<tr><th>step</th>");
        for name in &names {
            let _ = write!(h, "<th>{}</th>", escape(name));
        }
        h.push_str("</tr>\n");
        for (step, metrics) in run.eval {
            let _ = write!(h, "<tr><td>{step}</td>");
            for name in &names {
                let cell = metrics
                    .get(name)
                    .and_then(|v| v.as_f64())
                    .map_or(String::from("&ndash;"), |v| format!("{v:.2}"));
                let _ = write!(h, "<td>{cell}</td>");
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n");
    }

    h.push_str("<h2>Settings</h2>\n<table>\n");
    for (key, value) in run.hyperparameters.as_object().into_iter().flatten() {
        let _ = writeln!(
            h,
            "<tr><td class=\"text\">{}</td><td class=\"text\">{}</td></tr>",
            escape(key),
            escape(&value.to_string())
        );
    }
    h.push_str("</table>\n</body>\n</html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_holds_the_curves_the_evaluations_and_escaped_settings() {
        let loss = [(1, 2.5f32), (2, 1.5), (3, 0.5)];
        let eval = [
            (2, serde_json::json!({"spearman": 41.25})),
            (3, serde_json::json!({"spearman": 44.5, "pearson": 40.0})),
        ];
        let hyper = serde_json::json!({"lr": 2e-5, "prefix": "<q>"});
        let page = render_training(&TrainingRun {
            title: "sts & more",
            loss: &loss,
            eval: &eval,
            hyperparameters: &hyper,
        });
        assert!(page.contains("sts &amp; more"));
        assert!(
            page.contains("Training loss")
                && page.contains("Evaluation: spearman")
                && page.contains("Evaluation: pearson")
        );
        assert!(
            page.contains("<td>44.50</td>") && page.contains("<td>&ndash;</td>"),
            "a missing metric shows as a dash"
        );
        assert!(page.contains("&quot;&lt;q&gt;&quot;") && !page.contains("<q>"));
        assert_eq!(page.matches("<svg").count(), 3);
    }
}
