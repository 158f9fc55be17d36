//! LoRA training of a decoder end to end on the tiny random LLaMA: the loss falls, only
//! the adapters change and are exported (PEFT layout, or folded into the base with
//! `merge`; a bidirectional model says so in its config), the export embeds as the live
//! model does, an interrupted run resumes
//! exactly, and wrong combinations are refused.

mod common;
use common::{assert_cached_negatives_match, assert_resumes_exactly, Quiet};

use std::path::{Path, PathBuf};

use sembase_core::layers::{LoraSpec, LORA_TARGETS};
use sembase_core::pooling::PoolingMode;
use sembase_core::vectors::cosine;
use sembase_core::{EmbedOptions, Embedder, LoadOptions, LocalEmbedder};
use sembase_train::{
    load_examples, BiEncoderConfig, BiEncoderTraining, DecoderTraining, Finish, LoopConfig,
    ModelCard, Objective, TrainableModel, Trainer,
};

const PAIRS: &str = "sentence1\tsentence2\tlabel\n\
the cat sat on a mat\ta cat sat on the mat\t1\n\
a big dog ran far away\tthe big dog ran away\t1\n\
the bird flew over the tree\ta bird flew over a green tree\t1\n\
the sky is blue\tblue is the sky\t1\n\
a small red cat ran home\tthe small red cat ran fast home\t1\n\
a dog was fast\tthe fast dog ran\t1\n\
the bird is small\ta small bird\t1\n";

/// The tiny LLaMA of sembase-core's decoder tests with a word-level tokenizer
/// (`tools/make_lora_fixtures.py`).
fn tiny_decoder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama")
}

fn lora(dropout: f32, bidirectional: bool) -> DecoderTraining {
    let targets = LORA_TARGETS.iter().map(|t| t.to_string()).collect();
    DecoderTraining {
        lora: LoraSpec::new(4, 8.0, dropout, targets).unwrap(),
        bidirectional,
        pooling: Some(if bidirectional { PoolingMode::Mean } else { PoolingMode::LastToken }),
        seed: 7,
        merge: false,
    }
}

fn pairs_file(tmp: &Path) -> PathBuf {
    let path = tmp.join("pairs.tsv");
    std::fs::write(&path, PAIRS).unwrap();
    path
}

fn config() -> LoopConfig {
    LoopConfig { batch_size: 4, lr: 1e-2, epochs: 4, ..LoopConfig::default() }
}

fn embed(embedder: &LocalEmbedder, texts: &[&str]) -> Vec<Vec<f32>> {
    embedder.embed(texts, &EmbedOptions::default()).unwrap().vectors
}

#[test]
fn lora_trains_and_exports_a_peft_adapter_that_embeds_like_the_live_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_decoder();
    let examples = load_examples(Objective::Pairs, &pairs_file(tmp.path())).unwrap();
    for (bidirectional, merge) in [(false, false), (true, false), (true, true)] {
        let training = DecoderTraining { merge, ..lora(0.0, bidirectional) };
        let model = TrainableModel::load_with(&dir, 16, None, Some(&training)).unwrap();
        let vars = model.named_vars();
        assert_eq!(vars.len(), 2 * 7 * 2, "A and B for 7 projections in each of 2 layers");
        assert!(vars.iter().all(|(name, _)| name.contains(".lora_")), "only adapters train");
        let card = ModelCard { query_prompt: Some("q: ".into()), ..ModelCard::default() };
        let bi = BiEncoderConfig::new(Objective::Pairs);
        let pairs = BiEncoderTraining::new(&model, bi, examples.clone(), card).unwrap();
        let out = tmp.path().join(format!("out-{bidirectional}-{merge}"));
        let mut trainer = Trainer::new(&pairs, config(), &out).unwrap();
        assert_eq!(trainer.run(&Quiet).unwrap(), Finish::Completed);
        let losses: Vec<f32> = trainer.state.loss.iter().map(|(_, l)| *l).collect();
        let (first, last) =
            (losses[..2].iter().sum::<f32>(), losses[losses.len() - 2..].iter().sum::<f32>());
        assert!(last < first, "bidirectional {bidirectional}: loss did not fall: {losses:?}");

        if merge {
            assert!(!out.join("adapter_config.json").exists(), "a merged model has no adapter");
            assert!(out.join("model.safetensors").exists(), "the merged weights are missing");
        } else {
            assert!(!out.join("model.safetensors").exists(), "the base was copied");
            let adapter: serde_json::Value =
                serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap())
                    .unwrap();
            let scale = (adapter["r"].as_u64(), adapter["lora_alpha"].as_f64());
            assert_eq!(scale, (Some(4), Some(8.0)));
        }
        // The mask is recorded where sentence-transformers passes it to AutoConfig, and,
        // for a merged model, in its own config.json too; an adapter has no config.json.
        let read = |file: &str| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(out.join(file)).unwrap()).unwrap()
        };
        let want = if bidirectional { Some(false) } else { None };
        let sbert = read("sentence_bert_config.json");
        assert_eq!(sbert["config_kwargs"]["is_causal"].as_bool(), want, "{sbert}");
        assert_eq!(out.join("config.json").exists(), merge, "config.json only when merged");
        if merge {
            assert_eq!(read("config.json")["is_causal"].as_bool(), want);
        }
        let prompts: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join("config_sentence_transformers.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(prompts["prompts"]["query"], "q: ");

        let texts = ["the cat sat on a mat", "blue is the sky"];
        let exported = LocalEmbedder::load(&out, "out", LoadOptions::default()).unwrap();
        let live = model.snapshot("live").unwrap();
        for (a, b) in embed(&exported, &texts).iter().zip(&embed(&live, &texts)) {
            assert!(cosine(a, b) > 0.99999, "the export embeds differently from the live model");
        }
        let untrained = TrainableModel::load_with(&dir, 16, None, Some(&lora(0.0, bidirectional)))
            .unwrap()
            .snapshot("base")
            .unwrap();
        let moved = embed(&exported, &texts)
            .iter()
            .zip(&embed(&untrained, &texts))
            .any(|(a, b)| cosine(a, b) < 0.9999);
        assert!(moved, "the adapter changed nothing");
    }
}

#[test]
fn an_interrupted_lora_run_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let examples = load_examples(Objective::Pairs, &pairs_file(tmp.path())).unwrap();
    let training = lora(0.1, true);
    let load = || TrainableModel::load_with(&tiny_decoder(), 16, None, Some(&training)).unwrap();
    assert_resumes_exactly(tmp.path(), load, &examples, config());
}

#[test]
fn decoders_need_lora_and_encoders_refuse_it() {
    let dir = tiny_decoder();
    let err = TrainableModel::load(&dir, 16, None).err().unwrap().to_string();
    assert!(err.contains("--lora"), "{err}");
    let encoder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert");
    let err = TrainableModel::load_with(&encoder, 16, None, Some(&lora(0.0, false)))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("decoder models"), "{err}");
    assert!(LoraSpec::new(4, 8.0, 0.0, vec!["lm_head".into()]).is_err());
    assert!(LoraSpec::new(0, 8.0, 0.0, vec!["q_proj".into()]).is_err());
}

#[test]
fn cached_negatives_give_the_same_lora_update_as_one_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let examples = load_examples(Objective::Pairs, &pairs_file(tmp.path())).unwrap();
    let load = || TrainableModel::load_with(&tiny_decoder(), 16, None, Some(&lora(0.0, false)));
    assert_cached_negatives_match(tmp.path(), || load().unwrap(), &examples, config());
}
