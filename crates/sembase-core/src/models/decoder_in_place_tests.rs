//! Weights read in place from mapped files.
//!
//! GGUF block types: a random Qwen3-shaped model (widths that hold whole Q4_K
//! super-blocks of 256) is written to GGUF with its matrices in each type, loaded back
//! from the mapped file, and run two ways: with quantised matmuls, and with every matrix
//! dequantised to f32. The two must agree (the matmul kernels are right), and the
//! dequantised model must stay close to the f32 original (the names, layouts and word
//! table are read right).
//!
//! Half-precision safetensors: the same model saved in bf16 and in f16 runs with every
//! matrix and the word table read in place, and must give what the same weights copied
//! into tensors give.

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_nn::{VarBuilder, VarMap};

use super::*;
use std::collections::HashMap;
use std::path::Path;

use crate::layers::gguf_linear::GgufMatrix;
use crate::models::load_decoder;
use crate::vectors::cosine;
use crate::weights::gguf_names::gguf_name;
use crate::weights::MappedWeights;
use crate::{Mode, PackedBatch};

fn config() -> DecoderConfig {
    serde_json::from_value(serde_json::json!({
        "model_type": "qwen3", "vocab_size": 96, "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": true
    }))
    .unwrap()
}

/// A random model: every variable filled with fixed pseudo-random values (norm scales
/// around 1), so the test is the same on every run and mixed-up norms would show.
fn random_model(cfg: &DecoderConfig) -> (DecoderModel, VarMap) {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    let model =
        load_decoder(&DecoderWeights::from_var_builder_at(vb, "model"), cfg, false).unwrap();
    for (name, var) in vars.data().lock().unwrap().iter() {
        let salt = name.bytes().fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let unit = |i: usize| {
            ((i as u64 ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f32
                / (1u64 << 24) as f32
                - 0.5
        };
        let values: Vec<f32> = match var.dims() {
            [_] => (0..var.elem_count()).map(|i| 1.0 + 0.4 * unit(i)).collect(),
            [_, fan_in] => {
                (0..var.elem_count()).map(|i| unit(i) * 2.0 / (*fan_in as f32).sqrt()).collect()
            }
            other => panic!("{name}: unexpected shape {other:?}"),
        };
        var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap()).unwrap();
    }
    (model, vars)
}

/// Writes the model in `vars` to `path`: matrices in `matrices`, the word table in
/// `table`, norms in f32.
fn write_gguf(vars: &VarMap, matrices: GgmlDType, table: GgmlDType, path: &Path) {
    let vars = vars.data().lock().unwrap();
    let tensors: Vec<(String, QTensor)> = vars
        .iter()
        .map(|(name, var)| {
            let hf = name.strip_prefix("model.").unwrap_or(name);
            let dtype = match (hf, var.rank()) {
                ("embed_tokens.weight", _) => table,
                (_, 2) => matrices,
                _ => GgmlDType::F32,
            };
            (
                gguf_name(hf).unwrap_or_else(|| panic!("no GGUF name for {hf}")),
                QTensor::quantize(var.as_tensor(), dtype).unwrap(),
            )
        })
        .collect();
    let named: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let arch = gguf_file::Value::String("qwen3".into());
    gguf_file::write(
        &mut std::fs::File::create(path).unwrap(),
        &[("general.architecture", &arch)],
        &named,
    )
    .unwrap();
}

fn load_gguf(path: &Path, cfg: &DecoderConfig, dequantize: bool) -> DecoderModel {
    // SAFETY: the test's file is not changed while the model lives.
    let (weights, arch) =
        unsafe { DecoderWeights::from_gguf(path, &Device::Cpu, dequantize) }.unwrap();
    assert_eq!(arch, "qwen3");
    load_decoder(&weights, cfg, false).unwrap()
}

/// Hidden states at every real position of a right-padded batch of two.
fn states(model: &DecoderModel) -> Vec<Vec<f32>> {
    states_of_copies(model, 1)
}

/// [`states`] of a batch holding its two rows `copies` times (14 token rows each).
fn states_of_copies(model: &DecoderModel, copies: usize) -> Vec<Vec<f32>> {
    let ids: Vec<u32> = (0..14 * copies).map(|i| (i % 14 * 37 + 5) as u32 % 96).collect();
    let ids = Tensor::from_vec(ids, (2 * copies, 7), &Device::Cpu).unwrap();
    let mask: Vec<u32> =
        (0..copies).flat_map(|_| [1u32, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]).collect();
    let mask = Tensor::from_vec(mask, (2 * copies, 7), &Device::Cpu).unwrap();
    let out: Vec<Vec<Vec<f32>>> = model
        .forward(&PackedBatch::from_mask(ids.clone(), mask.clone()).unwrap(), &Mode::Inference)
        .unwrap()
        .to_vec3()
        .unwrap();
    out.chunks(2)
        .flat_map(|pair| pair[0].iter().chain(&pair[1][..4]).cloned().collect::<Vec<_>>())
        .collect()
}

fn worst_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().zip(b).map(|(x, y)| cosine(x, y)).fold(1.0, f32::min)
}

#[test]
fn every_block_type_runs_quantised_and_matches_its_dequantised_model() {
    let cfg = config();
    let (original, vars) = random_model(&cfg);
    let reference = states(&original);
    let dir = tempfile::tempdir().unwrap();
    // (matrices, word table, least cosine of the dequantised model to the f32 original)
    let cases = [
        (GgmlDType::Q8_0, GgmlDType::F16, 0.999),
        (GgmlDType::Q4_0, GgmlDType::Q8_0, 0.93),
        (GgmlDType::Q4_1, GgmlDType::Q4_0, 0.93),
        (GgmlDType::Q4K, GgmlDType::Q4_1, 0.93),
    ];
    for (matrices, table, least) in cases {
        let path = dir.path().join(format!("{matrices:?}.gguf"));
        write_gguf(&vars, matrices, table, &path);
        let quantised = load_gguf(&path, &cfg, false);
        let gate = &quantised.layers[0].gate.base;
        let kind_ok = match matrices {
            GgmlDType::Q4_1 => {
                matches!(gate, DecoderLinear::Quantized { matrix: GgufMatrix::Q4_1(_), .. })
            }
            _ => matches!(gate, DecoderLinear::Quantized { matrix: GgufMatrix::Mapped(_), .. }),
        };
        assert!(kind_ok, "{matrices:?}: the matrices were not kept quantised: {gate:?}");
        assert!(
            matches!(quantised.embed, TokenTable::Blocks(_)),
            "{table:?}: the word table was copied out"
        );
        let dequantised_model = load_gguf(&path, &cfg, true);
        let dequantised = states(&dequantised_model);
        let from_file = worst_cosine(&dequantised, &reference);
        let kernels = worst_cosine(&states(&quantised), &dequantised);
        // 140 token rows: the dequantise-and-GEMM path (from 128 rows for Q4_1, 32 for
        // the others); 14 rows multiply the blocks.
        let large_batch = worst_cosine(
            &states_of_copies(&quantised, 10),
            &states_of_copies(&dequantised_model, 10),
        );
        eprintln!("{matrices:?} matrices, {table:?} word table: dequantised/f32 {from_file:.6}, quantised/dequantised {kernels:.6}, large batch {large_batch:.6}");
        assert!(
            from_file >= least,
            "{matrices:?}/{table:?} dequantised against the f32 model: {from_file} < {least}"
        );
        assert!(
            kernels >= 0.999,
            "{matrices:?} quantised matmuls against the same weights in f32: {kernels}"
        );
        assert!(large_batch >= 0.999, "{matrices:?} quantised matmuls, 140 rows, against the same weights in f32: {large_batch}");
    }
}

#[test]
fn a_token_id_outside_a_gguf_word_table_is_an_error() {
    let cfg = config();
    let (_, vars) = random_model(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    write_gguf(&vars, GgmlDType::Q8_0, GgmlDType::Q8_0, &path);
    let model = load_gguf(&path, &cfg, false);
    let ids = Tensor::new(&[[3u32, 96]], &Device::Cpu).unwrap();
    let err = model
        .forward(
            &PackedBatch::from_mask(
                ids.clone(),
                Tensor::ones((1, 2), DType::U32, &Device::Cpu).unwrap(),
            )
            .unwrap(),
            &Mode::Inference,
        )
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTokenId { id: 96, vocab: 96, .. }), "{err}");
}

#[test]
fn half_precision_safetensors_are_read_in_place_and_match_copied_tensors() {
    let cfg = config();
    let (_, vars) = random_model(&cfg);
    let dir = tempfile::tempdir().unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let path = dir.path().join(format!("{dtype:?}.safetensors"));
        let tensors: HashMap<String, Tensor> = vars
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().to_dtype(dtype).unwrap()))
            .collect();
        candle_core::safetensors::save(&tensors, &path).unwrap();
        // SAFETY: the test's file is not changed while the models live.
        let mapped = unsafe { MappedWeights::open(std::slice::from_ref(&path)) }.unwrap();
        let in_place = load_decoder(
            &DecoderWeights::from_mapped(mapped.clone(), dtype, &Device::Cpu),
            &cfg,
            true,
        )
        .unwrap();
        assert!(
            matches!(in_place.embed, TokenTable::Mapped(_)),
            "{dtype:?}: the word table was copied"
        );
        for layer in &in_place.layers {
            for linear in [&layer.attention.q, &layer.attention.o, &layer.gate, &layer.down] {
                assert!(
                    matches!(&linear.base, DecoderLinear::Dense(l) if l.is_mapped()),
                    "{dtype:?}: a matrix was copied: {linear:?}"
                );
            }
        }
        let copied = load_decoder(
            &DecoderWeights::from_var_builder(mapped.var_builder(dtype, &Device::Cpu)),
            &cfg,
            true,
        )
        .unwrap();
        assert!(matches!(copied.embed, TokenTable::Dense(_)));
        let agreement = worst_cosine(&states(&in_place), &states(&copied));
        assert!(agreement >= 0.99999, "{dtype:?}: in place against copied: {agreement}");
        let ids = Tensor::new(&[[5u32, 17, 3]], &Device::Cpu).unwrap();
        let mask = Tensor::ones((1, 3), DType::U32, &Device::Cpu).unwrap();
        let logits =
            |m: &DecoderModel| m.next_token_logits(&ids, &mask).unwrap().to_vec2::<f32>().unwrap();
        let tied_head = worst_cosine(&logits(&in_place), &logits(&copied));
        assert!(tied_head >= 0.99999, "{dtype:?}: logits through the tied head: {tied_head}");
    }
}

/// Models loaded from one GGUF file (several LoRA adapters over one base) read one
/// mapping of it; once they are gone, the file (here rewritten) is mapped anew.
#[test]
fn models_from_one_file_share_its_mapping() {
    let cfg = config();
    let (original, vars) = random_model(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.gguf");
    write_gguf(&vars, GgmlDType::Q8_0, GgmlDType::Q8_0, &path);
    let mappings = || {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let name = path.to_str().unwrap();
        let regions: std::collections::BTreeSet<&str> = maps
            .lines()
            .filter(|l| l.ends_with(name))
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        regions.len()
    };
    let first = load_gguf(&path, &cfg, false);
    let second = load_gguf(&path, &cfg, false);
    assert_eq!(mappings(), 1, "the second model mapped the file again");
    assert_eq!(states(&first), states(&second));
    drop((first, second));
    write_gguf(&vars, GgmlDType::Q4_1, GgmlDType::Q8_0, &path);
    let rewritten = load_gguf(&path, &cfg, false);
    assert!(worst_cosine(&states(&rewritten), &states(&original)) > 0.9);
}

/// LoRA over a Q4_1 base, whose matrices are expanded in each pass of a training step
/// (`GgufMatrix::forward_in_graph`), gives the output and adapter gradients that the
/// same adapters give over the base dequantised once into f32 tensors.
#[test]
fn lora_over_a_quantised_base_trains_like_lora_over_its_f32_copy() {
    use crate::layers::{LoraSpec, LORA_TARGETS};
    use crate::weights::LoraWeights;
    let cfg = config();
    let (_, vars) = random_model(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    write_gguf(&vars, GgmlDType::Q4_1, GgmlDType::F32, &path);
    let spec =
        LoraSpec::new(4, 8.0, 0.0, LORA_TARGETS.iter().map(|t| t.to_string()).collect()).unwrap();
    let adapters = VarMap::new();
    // 28 token rows: few enough that inference would multiply the first layer's
    // matrices (whose input carries no gradient) by 8-bit activations; training must
    // still see the dequantised matrices there, as it does in every other layer.
    let ids: Vec<u32> = (0..28u32).map(|i| i * 37 % 96).collect();
    let mask: Vec<u32> = (0..28).map(|i| u32::from(i % 14 < 11)).collect();
    let batch = PackedBatch::from_mask(
        Tensor::from_vec(ids, (4, 7), &Device::Cpu).unwrap(),
        Tensor::from_vec(mask, (4, 7), &Device::Cpu).unwrap(),
    )
    .unwrap();
    let probe = Tensor::randn(0f32, 1.0, (4, 7, cfg.hidden_size), &Device::Cpu).unwrap();
    let run = |dequantize: bool| {
        // SAFETY: the test's file is not changed while the model lives.
        let (weights, _) =
            unsafe { DecoderWeights::from_gguf(&path, &Device::Cpu, dequantize) }.unwrap();
        let vb = VarBuilder::from_varmap(&adapters, DType::F32, &Device::Cpu);
        let weights = weights.with_lora(LoraWeights { vb, spec: spec.clone() });
        let model = load_decoder(&weights, &cfg, false).unwrap();
        if !dequantize {
            // B starts at zero: give every adapter matrix values so that they act.
            for (i, (_, var)) in adapters.data().lock().unwrap().iter().enumerate() {
                let values = Tensor::randn(0f32, 0.05, var.shape(), &Device::Cpu).unwrap();
                var.set(&(values + 0.001 * i as f64).unwrap()).unwrap();
            }
        }
        let out = model.forward(&batch, &Mode::training(1)).unwrap();
        let grads = (&out * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let named = adapters.data().lock().unwrap();
        let grads: HashMap<String, Vec<f32>> = named
            .iter()
            .map(|(name, var)| {
                let g =
                    grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
                (name.clone(), g.flatten_all().unwrap().to_vec1().unwrap())
            })
            .collect();
        (out.flatten_all().unwrap().to_vec1::<f32>().unwrap(), grads)
    };
    let (quantised, quantised_grads) = run(false);
    let (dense, dense_grads) = run(true);
    assert_eq!(quantised_grads.len(), 2 * 7 * cfg.num_hidden_layers);
    let worst = quantised.iter().zip(&dense).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let scale = dense.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(worst < 1e-3 * scale, "outputs differ by {worst} of {scale}");
    for (name, grad) in &quantised_grads {
        let want = &dense_grads[name];
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = grad.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(
            scale > 0.0 && worst <= 1e-3 * scale,
            "{name}: gradients differ by {worst} of {scale}"
        );
    }
}
