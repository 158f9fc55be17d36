//! The architectures, one file each, with their configs, written on candle from the
//! blocks in [`crate::layers`]. The same code serves inference (memory-mapped
//! weights) and training (a `VarMap`).

pub mod bert;
pub mod config;
pub mod decoder;
pub mod decoder_config;
pub mod decoder_merge;
pub mod encoder;
pub mod llama;
pub mod mpnet;
pub mod qwen2;
pub mod qwen3;
pub mod score_head;
pub mod xlm_roberta;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::TransformerConfig;
pub use decoder::{DecoderModel, DecoderOptions};
pub use decoder_config::DecoderConfig;

use crate::adapter_dir::AdapterDir;
use crate::error::{Error, Result};
use crate::kernels::int8_linear;
use crate::mode::Mode;
use crate::packed::PackedBatch;
pub use crate::weights::{DecoderWeights, LoraWeights, MappedWeights};

/// A model that maps token ids to contextual token states.
pub trait TextEncoder: Send + Sync {
    /// The batch's `(batch, seq)` ids -> `(batch, seq, hidden)` token states; dropout
    /// is on in [`Mode::Training`].
    fn forward(&self, batch: &PackedBatch, mode: &Mode) -> Result<Tensor>;
    /// Width of the token states.
    fn hidden_size(&self) -> usize;
    /// Longest input (special tokens included) the position table allows.
    fn max_tokens(&self) -> usize;
    /// Rows of the word embedding table.
    fn vocab_size(&self) -> usize;
}

/// How an encoder's weights are prepared for inference on the CPU; the default loads
/// plain tensors (what training and other devices need).
#[derive(Debug, Clone, Default)]
pub struct CpuInference {
    /// Read the embedding tables in place from these mapped weights files.
    pub mapped: Option<MappedWeights>,
    /// Quantise the linear layers to int8 for this kernel as each layer loads.
    pub int8: Option<int8_linear::Int8Kernel>,
}

/// Builds the encoder named by `cfg.model_type` from `vb`. Checkpoints saved
/// with a task head keep the encoder under a prefix (`bert.`, `roberta.`, ...);
/// it is found by looking for the word embeddings. `cpu` says what to prepare for CPU
/// inference.
pub fn load_encoder(
    vb: VarBuilder,
    cfg: &TransformerConfig,
    cpu: &CpuInference,
) -> Result<Box<dyn TextEncoder>> {
    let prefix = encoder_prefix(|name| vb.contains_tensor(name));
    let vb = if prefix.is_empty() { vb } else { vb.pp(prefix.trim_end_matches('.')) };
    Ok(match cfg.model_type.as_str() {
        "bert" => Box::new(bert::BertModel::load(vb, cfg, cpu)?),
        "xlm-roberta" | "roberta" | "camembert" => Box::new(xlm_roberta::load(vb, cfg, cpu)?),
        "mpnet" => Box::new(mpnet::MpnetModel::load(vb, cfg, cpu)?),
        other => {
            return Err(Error::Unsupported(format!(
                "model_type {other:?} (supported: bert, xlm-roberta, roberta, mpnet)"
            )))
        }
    })
}

/// The prefix (`""`, `"bert."`, `"roberta."`, ...) under which a checkpoint keeps its
/// encoder, found by asking `has` for the word embeddings under each; `""` when none has.
pub fn encoder_prefix(has: impl Fn(&str) -> bool) -> &'static str {
    const PREFIXES: [&str; 6] = ["", "bert.", "roberta.", "xlm_roberta.", "mpnet.", "model."];
    PREFIXES
        .into_iter()
        .find(|p| has(&format!("{p}embeddings.word_embeddings.weight")))
        .unwrap_or("")
}

/// What distinguishes the decoder named by `cfg.model_type` (`llama`, `mistral`,
/// `qwen2`, `qwen3`) in the shared stack.
pub fn decoder_options(cfg: &DecoderConfig) -> Result<DecoderOptions> {
    match cfg.model_type.as_str() {
        "llama" | "mistral" => Ok(llama::options(cfg)),
        "qwen2" => Ok(qwen2::options(cfg)),
        "qwen3" => Ok(qwen3::options(cfg)),
        other => Err(Error::Unsupported(format!(
            "decoder model_type {other:?} (supported: llama, mistral, qwen2, qwen3)"
        ))),
    }
}

/// Builds the decoder named by `cfg.model_type` from `w`; the language-model head only
/// when `with_lm_head`.
pub fn load_decoder(
    w: &DecoderWeights,
    cfg: &DecoderConfig,
    with_lm_head: bool,
) -> Result<DecoderModel> {
    DecoderModel::load(w, cfg, decoder_options(cfg)?, with_lm_head)
}

/// Loads a decoder with configuration `cfg` from its weight files, with the LoRA adapters
/// of `lora` when given. Safetensors are memory-mapped: f32 kept as f32, bf16/f16 read in
/// place and converted one matrix at a time as each matmul runs. A GGUF file's matrices
/// are multiplied quantised, or dequantised to f32 when `dequantize`. The same weights
/// serve LoRA training: frozen, they pass gradients to the adapters (see
/// `kernels::frozen_linear`) without being copied to f32 as a whole.
pub fn load_decoder_dir<'a>(
    cfg: &DecoderConfig,
    weight_files: &[PathBuf],
    dequantize: bool,
    lora: Option<LoraWeights<'a>>,
    device: &Device,
    with_lm_head: bool,
) -> Result<DecoderModel> {
    let adapted = |w: DecoderWeights<'a>| match lora.clone() {
        Some(lora) => w.with_lora(lora),
        None => w,
    };
    match weight_files {
        [gguf] if gguf.extension().is_some_and(|e| e == "gguf") => {
            // SAFETY: the GGUF file is memory-mapped read-only; it must not change while loaded.
            let (w, _arch) = unsafe { DecoderWeights::from_gguf(gguf, device, dequantize) }?;
            load_decoder(&adapted(w), cfg, with_lm_head)
        }
        files => {
            // SAFETY: weights are memory-mapped read-only; the files must not change while loaded.
            let mapped = unsafe { MappedWeights::open(files)? };
            let w = DecoderWeights::from_mapped(mapped, stored_float_dtype(files)?, device);
            load_decoder(&adapted(w), cfg, with_lm_head)
        }
    }
}

/// The LoRA adapters of an adapter directory, read for `device`.
pub fn adapter_weights(adapter: &AdapterDir, device: &Device) -> Result<LoraWeights<'static>> {
    let vb = VarBuilder::from_tensors(adapter.tensors(device)?, DType::F32, device);
    Ok(LoraWeights { vb, spec: adapter.spec.clone() })
}

/// The precision the weights are kept in: that of the checkpoint's matrices when it is
/// bf16 or f16 (half the memory of f32), otherwise f32.
fn stored_float_dtype(files: &[PathBuf]) -> Result<DType> {
    // SAFETY: as above, read-only mappings of files that must not change while loaded.
    let tensors = unsafe { candle_core::safetensors::MmapedSafetensors::multi(files)? };
    let matrices: Vec<DType> = tensors
        .tensors()
        .iter()
        .filter(|(_, view)| view.shape().len() == 2)
        .filter_map(|(_, view)| DType::try_from(view.dtype()).ok())
        .collect();
    Ok(match matrices.first() {
        Some(&half @ (DType::BF16 | DType::F16)) if matrices.iter().all(|&d| d == half) => half,
        _ => DType::F32,
    })
}
