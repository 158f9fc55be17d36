//! Fuzzing the dataset loaders (see sembase-fuzz): the TSV formats (pairs, scored
//! pairs, triplets, labelled texts) and sentence files the trainers read, and BEIR's
//! corpus/queries JSONL and qrels TSV the evaluator reads. Every loader is given every
//! input; each answers rows or an error, never a panic, a hang or an allocation
//! sized by an unchecked field.

use sembase_eval::beir::{load_corpus, load_qrels, load_queries, Document, Query};
use sembase_eval::tasks::{load_classify, load_pairs, load_sts, load_triplets};
use sembase_train::data::tsv_format;
use sembase_train::{load_cross_examples, load_examples, Objective};

#[global_allocator]
static ALLOC: sembase_fuzz::BoundedAlloc = sembase_fuzz::BoundedAlloc;

#[test]
fn dataset_files() {
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz_corpus/datasets");
    let dir = sembase_fuzz::scratch_dir();
    let path = dir.path().join("data.tsv");
    // Qrels are resolved against these (the seeds' ids).
    let docs = [("d1", "first doc"), ("2", "second")].map(|(id, text)| Document {
        id: id.into(),
        title: String::new(),
        text: text.into(),
    });
    let queries = [("q1", "which doc?"), ("q2", "another")]
        .map(|(id, text)| Query { id: id.into(), text: text.into() });
    let tokens: &[&[u8]] = &[
        b"\t",
        b"\n",
        b"\r\n",
        b"\"",
        b"{",
        b"}",
        b"\"_id\"",
        b"\"text\"",
        b"anchor",
        b"label",
        b"score",
        b"NaN",
        b"-1e999",
        b"\xff",
    ];
    sembase_fuzz::Target::new("datasets", corpus).tokens(tokens).run(|bytes| {
        std::fs::write(&path, bytes).unwrap();
        let _ = (load_corpus(&path), load_queries(&path), load_qrels(&path, &docs, &queries));
        let _ = (load_pairs(&path), load_sts(&path), load_triplets(&path), load_classify(&path));
        for objective in [Objective::SimCse, Objective::Pairs, Objective::Triplets, Objective::Sts]
        {
            if let Ok(examples) = load_examples(objective, &path) {
                assert!(examples.len() >= 2);
            }
        }
        let _ = tsv_format(&path);
        if let Ok((_, examples)) = load_cross_examples(&path) {
            assert!(
                examples.iter().all(|e| e.texts.len() >= 2),
                "a cross-encoder row needs a pair"
            );
        }
    });
}
