//! Decoder-only models (LLaMA, Qwen2, Qwen3) against transformers.
//!
//! Tiny random models (`tools/make_decoder_fixtures.py`, committed under
//! `tests/decoder/<name>/`): last hidden states of every position of a
//! right-padded batch, last-token pooled vectors and next-token logits must reach
//! cosine >= 0.9999, for inference (memory-mapped weights) and for the training
//! path (a `VarMap`, differentiable ops), where every weight must get a gradient.
//!
//! SmolLM2-135M (the store's `smollm2-135m`, a Q4_1 GGUF) against transformers'
//! LlamaModel on the dequantised weights: cosine >= 0.999 with quantised matmuls,
//! >= 0.9999 dequantised to f32, same token ids, and a greedy " Paris".

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sembase_core::models::{
    load_decoder, load_decoder_dir, DecoderConfig, DecoderModel, DecoderWeights, TextEncoder,
};
use sembase_core::pooling::{Pooling, PoolingMode};
use sembase_core::vectors::cosine;
use sembase_core::{Mode, PackedBatch};
use serde::Deserialize;

const MIN_COSINE: f32 = 0.9999;

/// The device under test: `SEMBASE_DEVICE` (the CPU unless set; bench/gpu_check.sh
/// runs these tests on CUDA).
fn test_device() -> Device {
    sembase_core::device::from_env().expect("SEMBASE_DEVICE names a usable device")
}

#[derive(Deserialize)]
struct Expected {
    ids: Vec<Vec<u32>>,
    mask: Vec<Vec<u32>>,
    states: Vec<Vec<Vec<f32>>>,
    pooled: Vec<Vec<f32>>,
    logits: Vec<Vec<f32>>,
}

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/decoder").join(name)
}

fn read_expected(dir: &Path) -> Expected {
    serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap()
}

fn batch(e: &Expected) -> (Tensor, Tensor) {
    let ids = Tensor::new(e.ids.clone(), &test_device()).unwrap();
    let mask = Tensor::new(e.mask.clone(), &test_device()).unwrap();
    (ids, mask)
}

fn assert_close(what: &str, ours: &[f32], reference: &[f32], min: f32) {
    assert_eq!(ours.len(), reference.len(), "{what}: width");
    let c = cosine(ours, reference);
    assert!(c >= min, "{what}: cosine {c} < {min}");
}

/// Compares states (every position, padding included), pooled vectors and logits.
fn check(name: &str, model: &DecoderModel, e: &Expected) {
    let (ids, mask) = batch(e);
    let states = model
        .forward(&PackedBatch::from_mask(ids.clone(), mask.clone()).unwrap(), &Mode::Inference)
        .unwrap();
    let ours: Vec<Vec<Vec<f32>>> = states.to_vec3().unwrap();
    for (r, (row, want)) in ours.iter().zip(&e.states).enumerate() {
        for (t, (v, w)) in row.iter().zip(want).enumerate() {
            assert_close(&format!("{name} row {r} position {t}"), v, w, MIN_COSINE);
        }
    }
    let pooled: Vec<Vec<f32>> =
        Pooling::new(PoolingMode::LastToken).forward(&states, &mask).unwrap().to_vec2().unwrap();
    for (r, (v, w)) in pooled.iter().zip(&e.pooled).enumerate() {
        assert_close(&format!("{name} pooled row {r}"), v, w, MIN_COSINE);
    }
    let logits: Vec<Vec<f32>> = model.next_token_logits(&ids, &mask).unwrap().to_vec2().unwrap();
    for (r, (v, w)) in logits.iter().zip(&e.logits).enumerate() {
        assert_close(&format!("{name} logits row {r}"), v, w, MIN_COSINE);
    }
}

/// The decoder in `dir` (its config) from `files`, held for inference.
fn load_inference(dir: &Path, files: &[PathBuf], with_lm_head: bool) -> DecoderModel {
    let cfg = DecoderConfig::from_dir(dir).unwrap();
    load_decoder_dir(&cfg, files, false, None, &test_device(), with_lm_head).unwrap()
}

fn inference(name: &str) {
    let dir = fixture_dir(name);
    let model = load_inference(&dir, &[dir.join("model.safetensors")], true);
    check(name, &model, &read_expected(&dir));
}

/// The model on the training path: fresh `Var`s filled from the checkpoint (names under
/// `model.`; a tied lm_head shares the embedding variable), and the `VarMap` holding them.
fn load_trainable(dir: &Path) -> (DecoderModel, VarMap) {
    let cfg = DecoderConfig::from_dir(dir).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &test_device());
    let model =
        load_decoder(&DecoderWeights::from_var_builder_at(vb, "model"), &cfg, true).unwrap();
    let mut filled = varmap.clone();
    filled.load(dir.join("model.safetensors")).unwrap();
    (model, varmap)
}

/// The training path: weights as `Var`s (every op differentiable), same numbers,
/// and a gradient reaches every weight.
fn training(name: &str) {
    let dir = fixture_dir(name);
    let (model, varmap) = load_trainable(&dir);
    let e = read_expected(&dir);
    check(&format!("{name} (training path)"), &model, &e);
    let (ids, mask) = batch(&e);
    let loss = model.next_token_logits(&ids, &mask).unwrap().sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let vars = varmap.data().lock().unwrap();
    assert!(!vars.is_empty());
    for (var_name, var) in vars.iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for {var_name}"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{name}: gradient of {var_name} is {norm}");
    }
}

#[test]
fn llama_tiny_matches_transformers() {
    inference("llama_tiny");
}

#[test]
fn qwen2_tiny_matches_transformers() {
    inference("qwen2_tiny");
}

#[test]
fn qwen3_tiny_matches_transformers() {
    inference("qwen3_tiny");
}

#[test]
fn llama_tiny_training_path() {
    training("llama_tiny");
}

#[test]
fn qwen3_tiny_training_path() {
    training("qwen3_tiny");
}

/// A bf16 checkpoint stays bf16 in memory (half of f32) and still matches the f32
/// reference: each matmul converts its matrix as it runs. Random tiny weights rounded
/// to bf16 move the numbers slightly, hence the looser bound.
#[test]
fn bf16_weights_are_kept_in_bf16() {
    for name in ["llama_tiny", "qwen2_tiny", "qwen3_tiny"] {
        let dir = fixture_dir(name);
        let half_dir = tempfile::tempdir().unwrap();
        std::fs::copy(dir.join("config.json"), half_dir.path().join("config.json")).unwrap();
        let tensors =
            candle_core::safetensors::load(dir.join("model.safetensors"), &test_device()).unwrap();
        let half: std::collections::HashMap<String, Tensor> =
            tensors.into_iter().map(|(k, v)| (k, v.to_dtype(DType::BF16).unwrap())).collect();
        let file = half_dir.path().join("model.safetensors");
        candle_core::safetensors::save(&half, &file).unwrap();
        let model = load_inference(half_dir.path(), &[file], true);
        assert_eq!(model.weight_dtype(), DType::BF16, "{name}");
        let e = read_expected(&dir);
        let (ids, mask) = batch(&e);
        let states = model
            .forward(&PackedBatch::from_mask(ids.clone(), mask.clone()).unwrap(), &Mode::Inference)
            .unwrap();
        let pooled: Vec<Vec<f32>> = Pooling::new(PoolingMode::LastToken)
            .forward(&states, &mask)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (r, (v, w)) in pooled.iter().zip(&e.pooled).enumerate() {
            assert_close(&format!("{name} bf16 pooled row {r}"), v, w, 0.999);
        }
        let logits: Vec<Vec<f32>> =
            model.next_token_logits(&ids, &mask).unwrap().to_vec2().unwrap();
        for (r, (v, w)) in logits.iter().zip(&e.logits).enumerate() {
            assert_close(&format!("{name} bf16 logits row {r}"), v, w, 0.999);
        }
    }
}

/// Left padding (as Qwen3-Embedding's tokenizer asks for) gives the same real-token
/// states and last-token vectors as the reference's right-padded batch: positions
/// count real tokens only, and pooling finds the last real token wherever it is.
fn left_padded(name: &str, training_path: bool) {
    let dir = fixture_dir(name);
    let model = if training_path {
        load_trainable(&dir).0
    } else {
        load_inference(&dir, &[dir.join("model.safetensors")], true)
    };
    let e = read_expected(&dir);
    let width = e.ids[0].len();
    let lengths: Vec<usize> =
        e.mask.iter().map(|row| row.iter().filter(|&&m| m == 1).count()).collect();
    assert!(lengths.iter().any(|&n| n < width), "{name}: the fixture has no padding to move");
    let shift = |row: &[u32], n: usize, fill: u32| -> Vec<u32> {
        std::iter::repeat_n(fill, width - n).chain(row[..n].iter().copied()).collect()
    };
    let ids: Vec<Vec<u32>> =
        e.ids.iter().zip(&lengths).map(|(row, &n)| shift(row, n, row[n.min(width - 1)])).collect();
    let mask: Vec<Vec<u32>> = lengths.iter().map(|&n| shift(&vec![1; width], n, 0)).collect();
    let (ids, mask) =
        (Tensor::new(ids, &test_device()).unwrap(), Tensor::new(mask, &test_device()).unwrap());
    let states: Vec<Vec<Vec<f32>>> = model
        .forward(&PackedBatch::from_mask(ids.clone(), mask.clone()).unwrap(), &Mode::Inference)
        .unwrap()
        .to_vec3()
        .unwrap();
    for (r, &n) in lengths.iter().enumerate() {
        for t in 0..n {
            assert_close(
                &format!("{name} left-padded row {r} position {t}"),
                &states[r][width - n + t],
                &e.states[r][t],
                MIN_COSINE,
            );
        }
    }
    let states = model
        .forward(&PackedBatch::from_mask(ids.clone(), mask.clone()).unwrap(), &Mode::Inference)
        .unwrap();
    let pooled: Vec<Vec<f32>> =
        Pooling::new(PoolingMode::LastToken).forward(&states, &mask).unwrap().to_vec2().unwrap();
    for (r, (v, w)) in pooled.iter().zip(&e.pooled).enumerate() {
        assert_close(&format!("{name} left-padded pooled row {r}"), v, w, MIN_COSINE);
    }
}

#[test]
fn left_padding_matches_transformers() {
    left_padded("llama_tiny", false);
    left_padded("qwen3_tiny", false);
    left_padded("qwen3_tiny", true);
}

/// The numbers really depend on the mask: marking a padded position as real changes them.
#[test]
fn padding_mask_is_honoured() {
    let dir = fixture_dir("llama_tiny");
    let model = load_inference(&dir, &[dir.join("model.safetensors")], false);
    let e = read_expected(&dir);
    let (ids, mask) = batch(&e);
    let states: Vec<Vec<Vec<f32>>> = model
        .forward(&PackedBatch::from_mask(ids.clone(), mask.clone()).unwrap(), &Mode::Inference)
        .unwrap()
        .to_vec3()
        .unwrap();
    // Row 1 alone (no padding) gives the same states for its real positions.
    let n = e.mask[1].iter().filter(|&&m| m == 1).count();
    let alone_ids = Tensor::new(vec![e.ids[1][..n].to_vec()], &test_device()).unwrap();
    let alone_mask = Tensor::new(vec![vec![1u32; n]], &test_device()).unwrap();
    let alone: Vec<Vec<Vec<f32>>> = model
        .forward(
            &PackedBatch::from_mask(alone_ids.clone(), alone_mask.clone()).unwrap(),
            &Mode::Inference,
        )
        .unwrap()
        .to_vec3()
        .unwrap();
    for t in 0..n {
        assert_close(
            &format!("row 1 alone, position {t}"),
            &alone[0][t],
            &states[1][t],
            MIN_COSINE,
        );
    }
}

#[derive(Deserialize)]
struct SmolReference {
    sentences: Vec<SmolSentence>,
    greedy: Greedy,
}

#[derive(Deserialize)]
struct SmolSentence {
    text: String,
    ids: Vec<u32>,
    last: Vec<f32>,
}

#[derive(Deserialize)]
struct Greedy {
    prompt: String,
    ids: Vec<u32>,
    next_id: u32,
    next_text: String,
}

fn smollm2() -> (PathBuf, SmolReference) {
    let store =
        sembase_hub::Store::from_env().expect("set SEMBASE_HOME (or HOME) for the model store");
    let dir = store
        .resolve("smollm2-135m")
        .unwrap_or_else(|e| panic!("{e}\n(run `sembase model pull smollm2-135m`)"));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/decoder/smollm2_reference.json");
    let reference = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    (dir, reference)
}

/// Our tokenizer (rebuilt from the GGUF at pull time) and last-token embeddings
/// against transformers on the dequantised weights.
fn smollm2_embeddings(dequantize: bool, min: f32) {
    use sembase_core::{EmbedOptions, Embedder, LoadOptions, LocalEmbedder};
    let (dir, reference) = smollm2();
    let options = LoadOptions { gguf_dequantize: dequantize, ..LoadOptions::default() };
    let model = LocalEmbedder::load(&dir, "smollm2-135m", options).unwrap();
    let texts: Vec<&str> = reference.sentences.iter().map(|s| s.text.as_str()).collect();
    for s in &reference.sentences {
        assert_eq!(model.tokenize(&s.text).unwrap(), s.ids, "token ids of {:?}", s.text);
    }
    // One padded batch of all the sentences (right padding must not matter; Q4_1 runs
    // the dequantise-and-GEMM path at this size), then each sentence alone (Q4_1's
    // integer kernel).
    let batched = model.embed(&texts, &EmbedOptions::default()).unwrap().vectors;
    let alone: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| model.embed(&[*t], &EmbedOptions::default()).unwrap().vectors.remove(0))
        .collect();
    for (how, vectors) in [("batched", batched), ("alone", alone)] {
        let mut worst = 1f32;
        for (v, s) in vectors.iter().zip(&reference.sentences) {
            let c = cosine(v, &s.last);
            worst = worst.min(c);
            assert!(c >= min, "{:?} {how}: cosine {c} < {min} (dequantize: {dequantize})", s.text);
        }
        eprintln!("smollm2-135m dequantize={dequantize}, {how}: worst cosine {worst:.6} over {} sentences", vectors.len());
    }
}

#[test]
fn smollm2_quantised_matmuls_match_transformers() {
    smollm2_embeddings(false, 0.999);
}

#[test]
fn smollm2_dequantised_matches_transformers() {
    smollm2_embeddings(true, MIN_COSINE);
}

/// A working language model: greedy next token through the tied lm_head.
#[test]
fn smollm2_knows_the_capital_of_france() {
    let (dir, reference) = smollm2();
    let g = &reference.greedy;
    assert_eq!(g.next_text, " Paris", "the reference itself");
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let ids = tokenizer.encode(g.prompt.as_str(), true).unwrap().get_ids().to_vec();
    assert_eq!(ids, g.ids);
    for dequantize in [false, true] {
        let model = load_decoder_dir(
            &DecoderConfig::from_dir(&dir).unwrap(),
            &[dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")],
            dequantize,
            None,
            &test_device(),
            true,
        )
        .unwrap();
        let ids_t = Tensor::new(vec![ids.clone()], &test_device()).unwrap();
        let mask = ids_t.ones_like().unwrap();
        let logits = model.next_token_logits(&ids_t, &mask).unwrap();
        let next = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap()[0];
        assert_eq!(next, g.next_id, "dequantize: {dequantize}");
        assert_eq!(tokenizer.decode(&[next], false).unwrap(), " Paris");
    }
}
