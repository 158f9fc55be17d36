//! Loading sentence-transformers directories end to end on a tiny random BERT
//! written by the test: weight dtypes, sharded weights, Dense and Normalize
//! modules, a baked-in padding setting that must be ignored, and input checks.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sembase_core::models::{load_encoder, CpuInference, TransformerConfig};
use sembase_core::vectors::cosine;
use sembase_core::{EmbedOptions, Embedder, Error, LoadOptions, LocalEmbedder, Truncation};

const WORDS: [&str; 12] =
    ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away", "big", "red"];

fn config_json() -> serde_json::Value {
    serde_json::json!({
        "model_type": "bert", "vocab_size": 16, "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 32, "max_position_embeddings": 32,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0
    })
}

/// A WordLevel tokenizer adding [CLS]/[SEP], with padding to 24 baked in as the
/// packaged MiniLM tokenizer does (sembase must override it).
fn tokenizer_json() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    for (i, w) in ["[PAD]", "[UNK]", "[CLS]", "[SEP]"].iter().chain(WORDS.iter()).enumerate() {
        vocab.insert(w.to_string(), i.into());
    }
    serde_json::json!({
        "version": "1.0", "truncation": {"direction": "Right", "max_length": 24, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 24}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
}

fn write_json(path: &Path, value: &serde_json::Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
}

/// Random weights for the tiny BERT, as plain tensors.
fn random_weights() -> HashMap<String, Tensor> {
    let varmap = VarMap::new();
    let cfg: TransformerConfig = serde_json::from_value(config_json()).unwrap();
    load_encoder(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        &cfg,
        &CpuInference::default(),
    )
    .unwrap();
    let data = varmap.data().lock().unwrap();
    data.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect()
}

/// Writes a model directory; `shards` > 1 splits the weights under an index file.
fn write_model(
    dir: &Path,
    weights: &HashMap<String, Tensor>,
    dtype: DType,
    shards: usize,
    dense: bool,
) {
    write_json(&dir.join("config.json"), &config_json());
    write_json(&dir.join("tokenizer.json"), &tokenizer_json());
    write_json(&dir.join("sentence_bert_config.json"), &serde_json::json!({"max_seq_length": 8}));
    write_json(
        &dir.join("1_Pooling/config.json"),
        &serde_json::json!({"word_embedding_dimension": 16, "pooling_mode_mean_tokens": true}),
    );
    let mut modules = vec![
        serde_json::json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
        serde_json::json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
    ];
    if dense {
        modules.push(serde_json::json!({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}));
        write_json(
            &dir.join("2_Dense/config.json"),
            &serde_json::json!({"in_features": 16, "out_features": 6, "bias": true, "activation_function": "torch.nn.modules.activation.Tanh"}),
        );
        let dense_weights = HashMap::from([
            ("linear.weight".to_string(), Tensor::randn(0f32, 0.5, (6, 16), &Device::Cpu).unwrap()),
            ("linear.bias".to_string(), Tensor::randn(0f32, 0.5, 6, &Device::Cpu).unwrap()),
        ]);
        candle_core::safetensors::save(&dense_weights, dir.join("2_Dense/model.safetensors"))
            .unwrap();
    }
    modules.push(serde_json::json!({"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}));
    write_json(&dir.join("modules.json"), &serde_json::Value::Array(modules));
    let cast: Vec<(String, Tensor)> =
        weights.iter().map(|(k, v)| (k.clone(), v.to_dtype(dtype).unwrap())).collect();
    if shards <= 1 {
        candle_core::safetensors::save(&cast.into_iter().collect(), dir.join("model.safetensors"))
            .unwrap();
        return;
    }
    let mut weight_map = serde_json::Map::new();
    for shard in 0..shards {
        let file = format!("model-{:05}-of-{shards:05}.safetensors", shard + 1);
        let part: HashMap<String, Tensor> = cast
            .iter()
            .enumerate()
            .filter(|(i, _)| i % shards == shard)
            .map(|(_, kv)| kv.clone())
            .collect();
        part.keys().for_each(|k| {
            weight_map.insert(k.clone(), file.clone().into());
        });
        candle_core::safetensors::save(&part, dir.join(file)).unwrap();
    }
    write_json(
        &dir.join("model.safetensors.index.json"),
        &serde_json::json!({"metadata": {}, "weight_map": weight_map}),
    );
}

fn load(dir: &Path) -> LocalEmbedder {
    LocalEmbedder::load(dir, "tiny", LoadOptions::default()).unwrap()
}

const TEXTS: [&str; 3] = ["the cat sat on the mat", "a big red dog ran far away", "cat"];

#[test]
fn f16_bf16_and_sharded_weights_load_and_agree_with_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let weights = random_weights();
    let variants =
        [("f32", DType::F32, 1), ("f16", DType::F16, 1), ("bf16-sharded", DType::BF16, 3)];
    let mut outputs = Vec::new();
    for (name, dtype, shards) in variants {
        let dir = tmp.join(name);
        write_model(&dir, &weights, dtype, shards, false);
        outputs.push(load(&dir).embed(&TEXTS, &EmbedOptions::default()).unwrap());
    }
    for out in &outputs[1..] {
        for (a, b) in outputs[0].vectors.iter().zip(&out.vectors) {
            assert!(
                cosine(a, b) > 0.999,
                "half-precision weights drifted: cosine {}",
                cosine(a, b)
            );
        }
    }
}

#[test]
fn dense_and_normalize_modules_shape_the_output() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    write_model(tmp, &random_weights(), DType::F32, 1, true);
    let model = load(tmp);
    assert_eq!(model.dimension(), 6);
    let out = model.embed(&TEXTS, &EmbedOptions::default()).unwrap();
    for v in &out.vectors {
        assert_eq!(v.len(), 6);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "not normalised: {norm}");
    }
}

#[test]
fn baked_in_padding_is_overridden_and_truncation_follows_max_seq_length() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    write_model(tmp, &random_weights(), DType::F32, 1, false);
    let model = load(tmp);
    assert_eq!(model.max_tokens(), 8);
    let long = "the cat sat on the mat a big red dog ran far away";
    let out = model.embed(&["cat", long], &EmbedOptions::default()).unwrap();
    assert_eq!(out.token_counts, vec![3, 8], "[CLS] cat [SEP] unpadded; the long text cut at 8");
    let refused = model.embed(
        &["cat", long],
        &EmbedOptions { truncate: Truncation::Refuse, ..Default::default() },
    );
    assert!(
        matches!(refused, Err(Error::InputTooLong { index: 1, tokens: 15, limit: 8 })),
        "{refused:?}"
    );
}

#[test]
fn results_do_not_depend_on_batching_or_order() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    write_model(tmp, &random_weights(), DType::F32, 1, false);
    let together = load(tmp).embed(&TEXTS, &EmbedOptions::default()).unwrap();
    let tiny_batches = LocalEmbedder::load(
        tmp,
        "tiny",
        LoadOptions {
            batch: sembase_core::BatchLimits { max_tokens: 4, max_sequences: 1 },
            ..Default::default()
        },
    )
    .unwrap();
    for (i, text) in TEXTS.iter().enumerate() {
        let alone = tiny_batches.embed(&[text], &EmbedOptions::default()).unwrap();
        assert!(
            cosine(&alone.vectors[0], &together.vectors[i]) > 0.99999,
            "text {i} differs when embedded alone"
        );
    }
}

#[test]
fn dimensions_and_token_ids_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    write_model(tmp, &random_weights(), DType::F32, 1, false);
    let model = load(tmp);
    let bad = model.embed(&["cat"], &EmbedOptions { dimensions: Some(17), ..Default::default() });
    assert!(matches!(bad, Err(Error::InvalidDimensions { requested: 17, max: 16 })), "{bad:?}");
    let zero = model.embed(&["cat"], &EmbedOptions { dimensions: Some(0), ..Default::default() });
    assert!(matches!(zero, Err(Error::InvalidDimensions { .. })));
    let short =
        model.embed(&["cat"], &EmbedOptions { dimensions: Some(4), ..Default::default() }).unwrap();
    assert_eq!(short.vectors[0].len(), 4);
    let ids = model.embed_tokens(&[vec![2, 5, 3], vec![2, 99, 3]], &EmbedOptions::default());
    assert!(matches!(ids, Err(Error::InvalidTokenId { index: 1, id: 99, vocab: 16 })), "{ids:?}");
    let from_ids =
        model.embed_tokens(&[model.tokenize("cat").unwrap()], &EmbedOptions::default()).unwrap();
    let from_text = model.embed(&["cat"], &EmbedOptions::default()).unwrap();
    assert_eq!(from_ids.vectors, from_text.vectors);
}

#[test]
fn a_directory_without_weights_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    write_json(&tmp.join("config.json"), &config_json());
    write_json(&tmp.join("tokenizer.json"), &tokenizer_json());
    let err = LocalEmbedder::load(tmp, "x", LoadOptions::default()).err().expect("must fail");
    assert!(err.to_string().contains("no model.safetensors"), "{err}");
}
