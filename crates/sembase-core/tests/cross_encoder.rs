//! Cross-encoder parity: tiny random BERT and XLM-RoBERTa sequence classifiers made by
//! `tools/make_cross_encoder_fixture.py` and saved by sentence-transformers 6.2, whose
//! `reference.json` holds the pairs' token ids, logits and `CrossEncoder.predict` scores.

use std::path::{Path, PathBuf};

use sembase_core::{is_cross_encoder, CrossEncoder, LoadOptions, LocalEmbedder, Truncation};
use sembase_embed::Reranker;
use serde::Deserialize;

const TOLERANCE: f32 = 1e-4;

#[derive(Deserialize)]
struct Reference {
    max_length: usize,
    pairs: Vec<(String, String)>,
    input_ids: Vec<Vec<u32>>,
    input_ids_full: Vec<Vec<u32>>,
    token_type_ids: Option<Vec<Vec<u32>>>,
    logits: Vec<f32>,
    scores: Vec<f32>,
    logits_max16: Vec<f32>,
    scores_max16: Vec<f32>,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn reference(dir: &Path) -> Reference {
    serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap()
}

fn assert_close(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: count");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= TOLERANCE, "{what} {i}: sembase {a}, reference {e}");
    }
}

fn load(dir: &Path, max_length: Option<usize>) -> CrossEncoder {
    let options = LoadOptions { max_seq_length: max_length, ..LoadOptions::default() };
    CrossEncoder::load(dir, "tiny", options).unwrap()
}

/// Token ids (and BERT's segment ids), raw logits and sigmoid scores equal
/// sentence-transformers', at the model's length and cut to 16 tokens.
fn check_against_sentence_transformers(name: &str) {
    let dir = fixture(name);
    let reference = reference(&dir);
    assert!(is_cross_encoder(&dir));
    let pairs: Vec<(&str, &str)> =
        reference.pairs.iter().map(|(q, d)| (q.as_str(), d.as_str())).collect();
    for (max_length, ids, logits, scores) in [
        (None, &reference.input_ids_full, &reference.logits, &reference.scores),
        (
            Some(reference.max_length),
            &reference.input_ids,
            &reference.logits_max16,
            &reference.scores_max16,
        ),
    ] {
        let model = load(&dir, max_length);
        let encoded: Vec<_> = pairs
            .iter()
            .map(|(q, d)| model.encode_pair(q, d, Truncation::Truncate).unwrap())
            .collect();
        let got_ids: Vec<Vec<u32>> = encoded.iter().map(|p| p.ids.clone()).collect();
        assert_eq!(&got_ids, ids, "{name} at {max_length:?}: token ids");
        if let (Some(types), Some(_)) = (&reference.token_type_ids, max_length) {
            let got: Vec<Vec<u32>> = encoded.iter().map(|p| p.segments.clone()).collect();
            assert_eq!(&got, types, "{name}: segment ids");
        }
        let got_logits = model.score_pairs(&encoded).unwrap();
        assert_close(&got_logits, logits, &format!("{name} at {max_length:?}: logits"));
        let queries: Vec<&str> = pairs.iter().map(|p| p.0).collect();
        // One query against every document through the trait's `rerank`.
        for (i, query) in queries.iter().enumerate() {
            let documents = [pairs[i].1];
            let got = model.rerank(query, &documents, Truncation::Truncate).unwrap();
            assert_close(&got, &scores[i..=i], &format!("{name} at {max_length:?}: score"));
        }
    }
}

#[test]
fn bert_cross_encoder_matches_sentence_transformers() {
    check_against_sentence_transformers("tiny-bert-cross-encoder");
}

#[test]
fn xlm_roberta_cross_encoder_matches_sentence_transformers() {
    check_against_sentence_transformers("tiny-roberta-cross-encoder");
}

#[test]
fn over_long_pairs_are_refused_when_truncation_is_off() {
    let dir = fixture("tiny-bert-cross-encoder");
    let reference = reference(&dir);
    let model = load(&dir, Some(reference.max_length));
    let (query, document) = reference
        .pairs
        .iter()
        .zip(&reference.input_ids_full)
        .find(|(_, ids)| ids.len() > reference.max_length)
        .map(|(pair, _)| pair)
        .expect("the fixture has a pair over 16 tokens");
    let refused = model.encode_pair(query, document, Truncation::Refuse);
    assert!(matches!(refused, Err(sembase_core::Error::InputTooLong { .. })), "{refused:?}");
}

#[test]
fn a_cross_encoder_is_not_loaded_as_an_embedder_nor_the_reverse() {
    let embedder =
        LocalEmbedder::load(&fixture("tiny-bert-cross-encoder"), "x", LoadOptions::default());
    let message = embedder.err().expect("refused").to_string();
    assert!(message.contains("cross-encoder"), "{message}");
    let bi_encoder =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../sembase-train/tests/fixtures/tiny-bert");
    assert!(!is_cross_encoder(&bi_encoder));
    let reranker = CrossEncoder::load(&bi_encoder, "x", LoadOptions::default());
    let message = reranker.err().expect("refused").to_string();
    assert!(message.contains("not a cross-encoder"), "{message}");
}
