//! The encoders are trainable: built on a `VarMap`, a loss reaches every
//! parameter with a finite, non-zero gradient, and dropout is on only in training.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sembase_core::models::{load_encoder, CpuInference, TextEncoder, TransformerConfig};
use sembase_core::pooling::{Pooling, PoolingMode};
use sembase_core::{Mode, PackedBatch};

fn tiny_config(model_type: &str) -> TransformerConfig {
    serde_json::from_value(serde_json::json!({
        "model_type": model_type,
        "vocab_size": 50,
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 32,
        "max_position_embeddings": 40,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 1,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "relative_attention_num_buckets": 32
    }))
    .unwrap()
}

/// Two right-padded rows of ids and their mask.
fn batch() -> (Tensor, Tensor) {
    let ids = Tensor::new(&[[0u32, 5, 9, 13, 2], [0, 7, 2, 1, 1]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1], [1, 1, 1, 0, 0]], &Device::Cpu).unwrap();
    (ids, mask)
}

/// Mean-pooled vectors of `ids` under `mask`, from an inference pass.
fn mean_pooled(encoder: &dyn TextEncoder, ids: &Tensor, mask: &Tensor) -> Vec<Vec<f32>> {
    let batch = PackedBatch::from_mask(ids.clone(), mask.clone()).unwrap();
    let states = encoder.forward(&batch, &Mode::Inference).unwrap();
    Pooling::new(PoolingMode::Mean).forward(&states, mask).unwrap().to_vec2().unwrap()
}

fn check_every_parameter_gets_a_gradient(model_type: &str) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let encoder = load_encoder(vb, &tiny_config(model_type), &CpuInference::default()).unwrap();
    let (ids, mask) = batch();
    let states = encoder
        .forward(&PackedBatch::from_mask(ids.clone(), mask.clone()).unwrap(), &Mode::training(0))
        .unwrap();
    let pooled = Pooling::new(PoolingMode::Mean).forward(&states, &mask).unwrap();
    // A loss that depends on every output coordinate non-trivially.
    let target = Tensor::randn(0f32, 1.0, pooled.shape(), &Device::Cpu).unwrap();
    let loss = (pooled - target).unwrap().sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    assert!(data.len() > 20, "{model_type}: only {} parameters were created", data.len());
    for (name, var) in data.iter() {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{model_type}: no gradient for {name}"));
        let values: Vec<f32> = grad.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            values.iter().all(|v| v.is_finite()),
            "{model_type}: non-finite gradient for {name}"
        );
        let norm: f32 = values.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(norm > 0.0, "{model_type}: zero gradient for {name}");
    }
}

#[test]
fn bert_parameters_all_receive_gradients() {
    check_every_parameter_gets_a_gradient("bert");
}

#[test]
fn xlm_roberta_parameters_all_receive_gradients() {
    check_every_parameter_gets_a_gradient("xlm-roberta");
}

#[test]
fn mpnet_parameters_all_receive_gradients() {
    check_every_parameter_gets_a_gradient("mpnet");
}

#[test]
fn dropout_is_active_only_in_training() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let encoder = load_encoder(vb, &tiny_config("bert"), &CpuInference::default()).unwrap();
    let (ids, mask) = batch();
    let batch = PackedBatch::from_mask(ids, mask).unwrap();
    let run = |mode: &Mode| -> Vec<f32> {
        encoder.forward(&batch, mode).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    };
    let training = Mode::training(0);
    let (a, b) = (run(&training), run(&training));
    assert_ne!(a, b, "two training passes gave identical outputs: dropout is off");
    assert_eq!(run(&Mode::Inference), run(&Mode::Inference), "inference is not deterministic");
}

#[test]
fn padding_does_not_change_the_real_tokens() {
    // The same row alone and padded inside a wider batch gives the same pooled vector.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let encoder = load_encoder(vb, &tiny_config("mpnet"), &CpuInference::default()).unwrap();
    let (ids, mask) = batch();
    let padded = mean_pooled(encoder.as_ref(), &ids, &mask);
    let alone_ids = Tensor::new(&[[0u32, 7, 2]], &Device::Cpu).unwrap();
    let alone_mask = Tensor::new(&[[1u32, 1, 1]], &Device::Cpu).unwrap();
    let alone = mean_pooled(encoder.as_ref(), &alone_ids, &alone_mask);
    for (x, y) in padded[1].iter().zip(&alone[0]) {
        assert!((x - y).abs() < 1e-5, "padded {x} vs alone {y}");
    }
}

#[test]
fn inference_kernel_matches_the_differentiable_path() {
    // The same weights as plain tensors take the CPU attention kernel; as
    // variables they take the composed ops. Pooled outputs must agree.
    for model_type in ["bert", "mpnet"] {
        let varmap = VarMap::new();
        let cfg = tiny_config(model_type);
        let trainable = load_encoder(
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            &cfg,
            &CpuInference::default(),
        )
        .unwrap();
        let frozen: std::collections::HashMap<String, Tensor> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        let inference = load_encoder(
            VarBuilder::from_tensors(frozen, DType::F32, &Device::Cpu),
            &cfg,
            &CpuInference::default(),
        )
        .unwrap();
        let (ids, mask) = batch();
        let a = mean_pooled(trainable.as_ref(), &ids, &mask);
        let b = mean_pooled(inference.as_ref(), &ids, &mask);
        for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
            assert!((x - y).abs() < 1e-5, "{model_type}: ops path {x} vs kernel {y}");
        }
    }
}

#[test]
fn seeded_dropout_replays_exactly() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let encoder = load_encoder(vb, &tiny_config("bert"), &CpuInference::default()).unwrap();
    let (ids, mask) = batch();
    let batch = PackedBatch::from_mask(ids, mask).unwrap();
    let run = |mode: &Mode| -> Vec<f32> {
        encoder.forward(&batch, mode).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    };
    let seeded = Mode::training(7);
    let first = run(&seeded);
    let next = run(&seeded);
    assert_eq!(run(&Mode::training(7)), first, "the same seed must give the same masks");
    assert_ne!(first, next, "consecutive passes must draw new masks");
}
