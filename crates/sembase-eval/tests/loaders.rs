//! Loaders: malformed rows are reported by file and line; qrels naming unknown
//! ids are counted and reported.

use std::path::{Path, PathBuf};

use sembase_eval::beir::load_retrieval;
use sembase_eval::tasks::{
    load_classify, load_pairs, load_sts, load_triplets, Task, TaskKind, TaskSpec,
};
use sembase_eval::EvalError;

/// A fresh directory for one test.
fn scratch(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("sembase-eval-loaders-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn sts_rows_load_with_header_and_crlf() {
    let dir = scratch("sts-ok");
    let file = dir.join("sts.tsv");
    write(&file, "sentence1\tsentence2\tscore\r\nA man.\tA person.\t4.2\r\n\r\nB\tC\t0\r\n");
    let rows = load_sts(&file).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].sentence2.as_str(), rows[0].score), ("A person.", 4.2));
    // Without a header the first row is data (its score column is a number).
    write(&file, "A\tB\t1.5\nC\tD\t2\n");
    assert_eq!(load_sts(&file).unwrap().len(), 2);
}

#[test]
fn malformed_sts_rows_name_file_and_line() {
    let dir = scratch("sts-bad");
    let file = dir.join("bad.tsv");
    write(&file, "sentence1\tsentence2\tscore\nok\tok\t1\nonly two\tfields\nx\ty\tnot-a-number\nfine\tfine\t2\n");
    let err = load_sts(&file).unwrap_err();
    let message = err.to_string();
    let shown = file.display().to_string();
    assert!(
        message.contains(&format!("{shown}:3: expected 3 tab-separated fields, found 2")),
        "{message}"
    );
    assert!(
        message.contains(&format!("{shown}:4: score \"not-a-number\" is not a number")),
        "{message}"
    );
    match err {
        EvalError::Malformed { rows, total, .. } => {
            assert_eq!(total, 2);
            assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![3, 4]);
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn pair_labels_must_be_zero_or_one() {
    let dir = scratch("pairs");
    let file = dir.join("pairs.tsv");
    write(&file, "sentence1\tsentence2\tlabel\na\tb\t1\nc\td\t0\ne\tf\t2\n");
    let message = load_pairs(&file).unwrap_err().to_string();
    assert!(
        message.contains(&format!("{}:4: label \"2\" is not 0 or 1", file.display())),
        "{message}"
    );
    write(&file, "sentence1\tsentence2\tlabel\na\tb\t1\nc\td\t0\n");
    let rows = load_pairs(&file).unwrap();
    assert_eq!(rows.iter().map(|r| r.label).collect::<Vec<_>>(), vec![true, false]);
}

#[test]
fn triplets_and_classify_load_and_report_bad_rows() {
    let dir = scratch("tc");
    let t = dir.join("t.tsv");
    write(&t, "anchor\tpositive\tnegative\na\tb\tc\nd\te\n");
    let message = load_triplets(&t).unwrap_err().to_string();
    assert!(message.contains(&format!("{}:3:", t.display())), "{message}");
    write(&t, "anchor\tpositive\tnegative\na\tb\tc\n");
    assert_eq!(load_triplets(&t).unwrap()[0].negative, "c");
    let c = dir.join("c.tsv");
    write(&c, "text\tlabel\ngood film\tpos\nbad film\t\n");
    let message = load_classify(&c).unwrap_err().to_string();
    assert!(message.contains(&format!("{}:3: the label is empty", c.display())), "{message}");
    write(&c, "text\tlabel\ngood film\tpos\nbad film\tneg\n");
    assert_eq!(load_classify(&c).unwrap()[1].label, "neg");
}

#[test]
fn invalid_utf8_is_reported_by_line() {
    let dir = scratch("utf8");
    let file = dir.join("x.tsv");
    std::fs::write(&file, b"sentence1\tsentence2\tscore\na\tb\t1\n\xff\tb\t1\n").unwrap();
    let message = load_sts(&file).unwrap_err().to_string();
    assert!(message.contains(&format!("{}:3: not valid UTF-8", file.display())), "{message}");
}

fn beir(dir: &Path, qrels: &str) {
    write(
        &dir.join("corpus.jsonl"),
        "{\"_id\": \"d1\", \"title\": \"Title\", \"text\": \"body one\"}\n{\"_id\": \"d2\", \"title\": \"\", \"text\": \"body two\"}\n{\"_id\": 3, \"text\": \"numeric id\"}\n",
    );
    write(&dir.join("queries.jsonl"), "{\"_id\": \"q1\", \"text\": \"first\"}\n{\"_id\": \"q2\", \"text\": \"second\"}\n{\"_id\": \"q3\", \"text\": \"unjudged\"}\n");
    write(&dir.join("qrels").join("test.tsv"), qrels);
}

#[test]
fn qrels_with_unknown_ids_are_counted_and_reported() {
    let dir = scratch("beir");
    beir(
        &dir,
        "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\tnope\t1\nq1\tgone\t1\nq2\td2\t1\nqX\td1\t1\nq2\t3\t0\nq2\td2\t3\n",
    );
    let set = load_retrieval(&dir).unwrap();
    assert_eq!(set.corpus.len(), 3);
    assert_eq!(set.corpus[0].full_text(), "Title body one");
    assert_eq!(set.corpus[1].full_text(), "body two");
    assert_eq!(set.corpus[2].id, "3");
    let r = &set.report;
    assert_eq!(r.rows, 7);
    assert_eq!(r.unknown_doc_rows, 2);
    assert_eq!(r.first_unknown_doc, Some(("nope".to_string(), 3)));
    assert_eq!(r.unknown_query_rows, 1);
    assert_eq!(r.first_unknown_query, Some(("qX".to_string(), 6)));
    assert_eq!(r.duplicate_rows, 1);
    assert_eq!(r.unjudged_queries, 1);
    // Unknown corpus ids stay in the judgments (relevant, never retrievable).
    assert_eq!(set.judged.len(), 2);
    assert_eq!(set.judged[0].grades.len(), 3);
    assert_eq!(set.judged[1].grades["d2"], 3, "the last grade of a repeated pair is kept");
    let notes = set.notes().join("\n");
    assert!(
        notes.contains(
            "2 rows name corpus ids that are not in corpus.jsonl (first: \"nope\" at line 3)"
        ),
        "{notes}"
    );
    assert!(
        notes.contains(
            "1 rows name query ids that are not in queries.jsonl (first: \"qX\" at line 6)"
        ),
        "{notes}"
    );
    assert!(notes.contains("1 of 3 queries have no qrels"), "{notes}");
}

#[test]
fn qrels_without_header_and_bad_grades() {
    let dir = scratch("beir-bad");
    beir(&dir, "q1\td1\t1\nq2\td2\t1\n");
    assert_eq!(load_retrieval(&dir).unwrap().report.rows, 2);
    beir(&dir, "query-id\tcorpus-id\tscore\nq1\td1\t1.5\nq2\td2\n");
    let message = load_retrieval(&dir).unwrap_err().to_string();
    let qrels = dir.join("qrels").join("test.tsv").display().to_string();
    assert!(
        message.contains(&format!("{qrels}:2: score \"1.5\" is not an integer grade")),
        "{message}"
    );
    assert!(
        message.contains(&format!("{qrels}:3: expected 3 tab-separated fields, found 2")),
        "{message}"
    );
}

#[test]
fn malformed_jsonl_names_file_and_line() {
    let dir = scratch("jsonl");
    beir(&dir, "q1\td1\t1\n");
    write(
        &dir.join("corpus.jsonl"),
        "{\"_id\": \"d1\", \"text\": \"x\"}\n{\"_id\": \"d1\", \"text\": \"again\"}\nnot json\n{\"_id\": \"d3\"}\n[1]\n",
    );
    let message = load_retrieval(&dir).unwrap_err().to_string();
    let corpus = dir.join("corpus.jsonl").display().to_string();
    for expected in [
        format!("{corpus}:2: duplicate \"_id\" \"d1\""),
        format!("{corpus}:3: not valid JSON"),
        format!("{corpus}:4: missing \"text\""),
        format!("{corpus}:5: not a JSON object"),
    ] {
        assert!(message.contains(&expected), "{expected} not in {message}");
    }
}

#[test]
fn task_specs_parse_and_empty_tasks_are_refused() {
    let spec: TaskSpec = "retrieval:../data/x".parse().unwrap();
    assert_eq!((spec.kind, spec.path.to_str().unwrap()), (TaskKind::Retrieval, "../data/x"));
    assert!("nli:foo"
        .parse::<TaskSpec>()
        .unwrap_err()
        .to_string()
        .contains("unknown kind \"nli\""));
    assert!("foo".parse::<TaskSpec>().is_err());
    assert!("sts:".parse::<TaskSpec>().is_err());
    let dir = scratch("empty");
    let file = dir.join("empty.tsv");
    write(&file, "sentence1\tsentence2\tscore\n");
    let spec: TaskSpec = format!("sts:{}", file.display()).parse().unwrap();
    assert!(Task::load(&spec).unwrap_err().to_string().contains("has no rows"));
    let missing: TaskSpec = format!("pairs:{}", dir.join("missing.tsv").display()).parse().unwrap();
    assert!(Task::load(&missing).unwrap_err().to_string().contains("missing.tsv"));
}
