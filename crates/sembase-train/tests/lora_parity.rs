//! LoRA parity with PyTorch + PEFT on tiny random LLaMA and Qwen3 decoders: pooled
//! vectors, the in-batch negatives loss and every adapter gradient, causal and
//! bidirectional, right and left padded. The reference comes from
//! `tools/make_lora_fixtures.py` (PEFT's saved adapter, transformers' models).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sembase_core::adapter_dir::AdapterDir;
use sembase_core::models::{
    adapter_weights, load_decoder_dir, DecoderConfig, DecoderModel, LoraWeights, TextEncoder,
};
use sembase_core::pooling::{Pooling, PoolingMode};
use sembase_core::{Mode, PackedBatch};
use sembase_train::losses::in_batch_negatives;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    scale: f64,
    anchors: Vec<usize>,
    positives: Vec<usize>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    attention: String,
    padding: String,
    pooling: String,
    ids: Vec<Vec<u32>>,
    mask: Vec<Vec<u32>>,
    pooled: Vec<Vec<f32>>,
    loss: f32,
    grads: HashMap<String, Vec<f32>>,
}

impl Case {
    fn name(&self, model: &str) -> String {
        format!("{model} {} {}-padded {}", self.attention, self.padding, self.pooling)
    }

    fn batch(&self) -> PackedBatch {
        let ids = Tensor::new(self.ids.clone(), &Device::Cpu).unwrap();
        let mask = Tensor::new(self.mask.clone(), &Device::Cpu).unwrap();
        PackedBatch::from_mask(ids, mask).unwrap()
    }

    fn pooling(&self) -> Pooling {
        Pooling::new(match self.pooling.as_str() {
            "last" => PoolingMode::LastToken,
            _ => PoolingMode::Mean,
        })
    }
}

const MODELS: [&str; 2] = ["llama_tiny", "qwen3_tiny"];

fn fixture(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora").join(model)
}

fn reference(model: &str) -> Reference {
    let text = std::fs::read_to_string(fixture(model).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The base's config with the case's attention.
fn config(adapter: &AdapterDir, case: &Case) -> DecoderConfig {
    let mut config = DecoderConfig::from_dir(&adapter.base).unwrap();
    config.is_causal = case.attention == "causal";
    config
}

fn base_files(adapter: &AdapterDir) -> Vec<PathBuf> {
    vec![adapter.base.join("model.safetensors")]
}

/// Largest absolute difference between two equally long lists.
fn largest_gap(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn pooled(model: &DecoderModel, case: &Case, mode: &Mode) -> Tensor {
    let batch = case.batch();
    let states = model.forward(&batch, mode).unwrap();
    case.pooling().forward(&states, batch.mask()).unwrap()
}

/// The adapter read from PEFT's files for inference: the pooled vectors equal PyTorch's.
#[test]
fn adapters_read_from_peft_files_give_pytorchs_vectors() {
    for model_name in MODELS {
        let adapter = AdapterDir::open(&fixture(model_name)).unwrap();
        for case in reference(model_name).cases {
            let model = load_decoder_dir(
                &config(&adapter, &case),
                &base_files(&adapter),
                false,
                Some(adapter_weights(&adapter, &Device::Cpu).unwrap()),
                &Device::Cpu,
                false,
            )
            .unwrap();
            let got = pooled(&model, &case, &Mode::Inference)
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let want: Vec<f32> = case.pooled.concat();
            let gap = largest_gap(&got, &want);
            assert!(gap < 1e-4, "{}: pooled vectors differ by {gap}", case.name(model_name));
            eprintln!("{}: pooled vectors within {gap:.1e}", case.name(model_name));
        }
    }
}

/// Training: frozen base, adapter variables set to PEFT's values; loss and every
/// adapter gradient equal PyTorch's, in training mode (the CPU training kernels: packed
/// attention, RoPE, norms and the fused LoRA map; the fixture's dropout is 0).
#[test]
fn loss_and_adapter_gradients_match_peft() {
    for model_name in MODELS {
        let adapter = AdapterDir::open(&fixture(model_name)).unwrap();
        let values = adapter.tensors(&Device::Cpu).unwrap();
        let reference = reference(model_name);
        for case in &reference.cases {
            let vars = VarMap::new();
            let lora = LoraWeights {
                vb: VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
                spec: adapter.spec.clone(),
            };
            let model = load_decoder_dir(
                &config(&adapter, case),
                &base_files(&adapter),
                false,
                Some(lora),
                &Device::Cpu,
                false,
            )
            .unwrap();
            let data = vars.data().lock().unwrap();
            assert_eq!(data.len(), values.len(), "every adapter matrix is a variable");
            for (name, var) in data.iter() {
                var.set(&values[name]).unwrap();
            }
            let name = case.name(model_name);
            assert_eq!(adapter.spec.dropout, 0.0, "{name}: the fixture must not drop out");
            let vectors = pooled(&model, case, &Mode::training(1));
            let pick = |rows: &[usize]| {
                let rows =
                    Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), &Device::Cpu);
                vectors.index_select(&rows.unwrap(), 0).unwrap()
            };
            let loss = in_batch_negatives(
                &pick(&reference.anchors),
                &pick(&reference.positives),
                reference.scale,
                false,
            )
            .unwrap();
            let got = loss.to_scalar::<f32>().unwrap();
            assert!((got - case.loss).abs() < 1e-4, "{name}: loss {got} vs PyTorch {}", case.loss);
            let grads = loss.backward().unwrap();
            let mut worst = 0f32;
            for (tensor, want) in &case.grads {
                let var =
                    data.get(tensor).unwrap_or_else(|| panic!("{name}: no variable {tensor}"));
                let got = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{name}: no gradient for {tensor}"));
                let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let gap = largest_gap(&got, want);
                assert!(gap < 1e-4, "{name}: gradient of {tensor} differs by {gap}");
                worst = worst.max(gap);
            }
            eprintln!(
                "{name}: loss within {:.1e}, gradients within {worst:.1e}",
                (got - case.loss).abs()
            );
        }
    }
}
