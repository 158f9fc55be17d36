//! Every metric against independent Python references (scipy, scikit-learn,
//! pytrec_eval, sentence-transformers) on the committed fixture built by
//! `tools/make_eval_fixture.py`: equal within 1e-6.

use std::collections::HashMap;

use sembase_eval::beir::{Document, Judged, QrelsReport, Query, RetrievalSet};
use sembase_eval::evaluate::{pair_metrics, retrieval_metrics, sts_metrics};
use sembase_eval::metrics::{
    average_precision, best_accuracy, best_f1, pearson, spearman, QueryScores, RECALL_AT,
};
use sembase_eval::search::id_ranks;
use serde_json::Value;

const TOLERANCE: f64 = 1e-6;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/metrics.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture present"))
        .expect("fixture is JSON")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

fn close(what: &str, got: f64, want: f64) {
    assert!((got - want).abs() <= TOLERANCE, "{what}: got {got}, reference {want}");
}

#[test]
fn correlations_match_scipy() {
    let f = fixture();
    let cases = f["correlation"].as_array().unwrap();
    assert!(cases.len() >= 3);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (x, y) = (floats(&case["x"]), floats(&case["y"]));
        close(&format!("{name} spearman"), spearman(&x, &y), case["spearman"].as_f64().unwrap());
        close(&format!("{name} pearson"), pearson(&x, &y), case["pearson"].as_f64().unwrap());
        // And through the sts task's metric set (percentages).
        let m = sts_metrics(&x, &y);
        close(
            &format!("{name} sts spearman"),
            m.get("spearman").unwrap() / 100.0,
            case["spearman"].as_f64().unwrap(),
        );
        close(
            &format!("{name} sts pearson"),
            m.get("pearson").unwrap() / 100.0,
            case["pearson"].as_f64().unwrap(),
        );
    }
}

#[test]
fn pair_metrics_match_sentence_transformers_and_sklearn() {
    let f = fixture();
    let cases = f["pairs"].as_array().unwrap();
    assert!(cases.len() >= 3);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let scores = floats(&case["scores"]);
        let labels: Vec<bool> =
            case["labels"].as_array().unwrap().iter().map(|l| l.as_i64() == Some(1)).collect();
        let want = |k: &str| case[k].as_f64().unwrap();
        let (accuracy, threshold) = best_accuracy(&scores, &labels);
        close(&format!("{name} accuracy"), accuracy, want("accuracy"));
        close(&format!("{name} accuracy threshold"), threshold, want("accuracy_threshold"));
        let f1 = best_f1(&scores, &labels);
        close(&format!("{name} f1"), f1.f1, want("f1"));
        close(&format!("{name} precision"), f1.precision, want("precision"));
        close(&format!("{name} recall"), f1.recall, want("recall"));
        close(&format!("{name} f1 threshold"), f1.threshold, want("f1_threshold"));
        close(&format!("{name} ap"), average_precision(&scores, &labels), want("ap"));
        let m = pair_metrics(&scores, &labels);
        close(
            &format!("{name} pairs spearman"),
            m.get("spearman").unwrap() / 100.0,
            want("spearman"),
        );
        close(
            &format!("{name} pairs accuracy"),
            m.get("accuracy").unwrap() / 100.0,
            want("accuracy"),
        );
        close(&format!("{name} pairs f1"), m.get("f1").unwrap() / 100.0, want("f1"));
        close(&format!("{name} pairs ap"), m.get("ap").unwrap() / 100.0, want("ap"));
    }
}

/// Each query's documents ranked by score, ties broken as the search does.
fn rankings(scores: &[Vec<f64>], doc_ids: &[String]) -> Vec<Vec<usize>> {
    let tie = id_ranks(doc_ids);
    scores
        .iter()
        .map(|row| {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(tie[b].cmp(&tie[a])));
            order.truncate(100);
            order
        })
        .collect()
}

#[test]
fn retrieval_metrics_match_pytrec_eval_and_sentence_transformers() {
    let f = fixture();
    let cases = f["retrieval"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let doc_ids: Vec<String> = case["doc_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let query_ids: Vec<String> = case["query_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let scores: Vec<Vec<f64>> = case["scores"].as_array().unwrap().iter().map(floats).collect();
        let qrels = case["qrels"].as_object().unwrap();
        let ranked = rankings(&scores, &doc_ids);

        let set = RetrievalSet {
            corpus: doc_ids
                .iter()
                .map(|id| Document { id: id.clone(), title: String::new(), text: String::new() })
                .collect(),
            queries: query_ids
                .iter()
                .map(|id| Query { id: id.clone(), text: String::new() })
                .collect(),
            judged: query_ids
                .iter()
                .enumerate()
                .map(|(query, qid)| Judged {
                    query,
                    grades: qrels[qid]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(d, g)| (d.clone(), g.as_i64().unwrap() as i32))
                        .collect::<HashMap<_, _>>(),
                })
                .collect(),
            report: QrelsReport::default(),
        };

        for (qi, qid) in query_ids.iter().enumerate() {
            let ids: Vec<&str> = ranked[qi].iter().map(|&d| doc_ids[d].as_str()).collect();
            let got = QueryScores::compute(&ids, &set.judged[qi].grades);
            let want = &case["per_query"][qid];
            for (slot, k) in RECALL_AT.iter().enumerate() {
                close(
                    &format!("{name} {qid} recall@{k}"),
                    got.recall[slot],
                    want[format!("recall@{k}")].as_f64().unwrap(),
                );
            }
            close(&format!("{name} {qid} mrr@10"), got.mrr, want["mrr@10"].as_f64().unwrap());
            close(&format!("{name} {qid} ndcg@10"), got.ndcg, want["ndcg@10"].as_f64().unwrap());
            close(&format!("{name} {qid} map@100"), got.map, want["map@100"].as_f64().unwrap());
        }

        let metrics = retrieval_metrics(&ranked, &set);
        let names =
            ["recall@1", "recall@5", "recall@10", "recall@100", "mrr@10", "ndcg@10", "map@100"];
        assert_eq!(metrics.0.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), names);
        for reference in ["mean", "sentence_transformers_mean"] {
            if case[reference].is_null() {
                continue;
            }
            for n in names {
                close(
                    &format!("{name} {reference} {n}"),
                    metrics.get(n).unwrap() / 100.0,
                    case[reference][n].as_f64().unwrap(),
                );
            }
        }
    }
}
