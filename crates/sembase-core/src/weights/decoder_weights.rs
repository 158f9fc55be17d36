//! Where a decoder's weights come from: a `VarBuilder` (memory-mapped safetensors,
//! whose bf16/f16 matrices and word table are read in place on the CPU, or a `VarMap`
//! for training) or a memory-mapped GGUF file. Names are the Hugging Face ones; the
//! GGUF source maps them (`gguf_names`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::gguf_names::gguf_name;
use super::mapped_gguf::{GgufTensor, MappedGguf};
use super::mapped_weights::MappedWeights;
use super::token_table::TokenTable;
use crate::error::{Error, Result};
use crate::layers::gguf_linear::GgufMatrix;
use crate::layers::{AdaptedLinear, DecoderLinear, Linear, LoraAdapter, LoraSpec, RmsNorm};

/// A mapped GGUF file and how its matrices are to be used.
struct GgufTensors {
    file: MappedGguf,
    dequantize: bool,
    device: Device,
}

#[derive(Clone)]
enum Source<'a> {
    /// Tensors from a `VarBuilder`; with `mapped`, half-precision matrices and tables
    /// are read in place from those files instead.
    Vars {
        vb: VarBuilder<'a>,
        mapped: Option<MappedWeights>,
    },
    Gguf(Arc<GgufTensors>),
}

/// Where a decoder's LoRA matrices come from: a `VarMap`'s builder when training (new
/// variables, A and B set by the trainer) or an adapter file's tensors. Names are
/// PEFT's: `base_model.model.<module path>.lora_A.weight` / `lora_B.weight`.
#[derive(Clone)]
pub struct LoraWeights<'a> {
    pub vb: VarBuilder<'a>,
    pub spec: LoraSpec,
}

/// The PEFT name of a LoRA matrix (`lora_A` or `lora_B`) of the module at `path`,
/// a decoder path with or without the `model.` body prefix.
pub fn lora_tensor_name(path: &str, matrix: &str) -> String {
    let module = path.strip_prefix("model.").unwrap_or(path);
    format!("base_model.model.{module}.{matrix}.weight")
}

/// Where a decoder's weights come from, positioned at a name prefix.
#[derive(Clone)]
pub struct DecoderWeights<'a> {
    source: Source<'a>,
    path: String,
    lora: Option<LoraWeights<'a>>,
}

impl<'a> DecoderWeights<'a> {
    /// Weights from a `VarBuilder`. The model body is found with or without the
    /// `model.` prefix that `*ForCausalLM` checkpoints add.
    pub fn from_var_builder(vb: VarBuilder<'a>) -> Self {
        Self::vars_with_body_found(vb, None)
    }

    /// Weights from mapped safetensors files, kept in `dtype` on `device`; on the CPU,
    /// half-precision matrices and the word table are read in place (no copy at all).
    pub fn from_mapped(mapped: MappedWeights, dtype: DType, device: &Device) -> Self {
        let vb = mapped.var_builder(dtype, device);
        Self::vars_with_body_found(vb, device.is_cpu().then_some(mapped))
    }

    /// `vb` (and `mapped`) positioned at the model body, with or without `model.`.
    fn vars_with_body_found(vb: VarBuilder<'a>, mapped: Option<MappedWeights>) -> Self {
        let body = if vb.contains_tensor("model.embed_tokens.weight") { "model" } else { "" };
        Self { source: Source::Vars { vb, mapped }, path: body.to_string(), lora: None }
    }

    /// Weights from a `VarBuilder` with the model body under `body` (`""` or
    /// `"model"`); a fresh `VarMap` has no tensors to look for, so training says where.
    pub fn from_var_builder_at(vb: VarBuilder<'a>, body: &str) -> Self {
        Self { source: Source::Vars { vb, mapped: None }, path: body.to_string(), lora: None }
    }

    /// Maps a GGUF file (matrices kept quantised unless `dequantize`) and reads its
    /// `general.architecture`.
    ///
    /// # Safety
    /// The file must not change while a model loaded from it is alive.
    pub unsafe fn from_gguf(
        path: &Path,
        device: &Device,
        dequantize: bool,
    ) -> Result<(Self, String)> {
        // SAFETY: passed on to the caller.
        let file = unsafe { MappedGguf::open(path) }?;
        let arch = file.architecture()?;
        let source =
            Source::Gguf(Arc::new(GgufTensors { file, dequantize, device: device.clone() }));
        Ok((Self { source, path: String::new(), lora: None }, arch))
    }

    /// The same weights with LoRA adapters on the projections `lora.spec` targets.
    pub fn with_lora(self, lora: LoraWeights<'a>) -> Self {
        Self { lora: Some(lora), ..self }
    }

    /// Whether the weights came from a GGUF file.
    pub fn is_gguf(&self) -> bool {
        matches!(self.source, Source::Gguf(_))
    }

    /// The weights under `name`.
    pub fn pp(&self, name: &str) -> Self {
        let path =
            if self.path.is_empty() { name.to_string() } else { format!("{}.{name}", self.path) };
        Self { source: self.source.clone(), path, lora: self.lora.clone() }
    }

    /// The same source at the checkpoint root (where `lm_head` lives).
    pub fn root(&self) -> Self {
        Self { source: self.source.clone(), path: String::new(), lora: self.lora.clone() }
    }

    fn full(&self, leaf: &str) -> String {
        self.pp(leaf).path
    }

    /// The GGUF tensor `leaf`, read in place; a missing tensor is an error.
    fn gguf_tensor(&self, g: &GgufTensors, leaf: &str) -> Result<GgufTensor> {
        let name = gguf_name(&self.full(leaf)).ok_or_else(|| self.missing(leaf))?;
        g.file.tensor(&name)?.ok_or_else(|| self.missing(leaf))
    }

    fn missing(&self, leaf: &str) -> Error {
        let name = self.full(leaf);
        let shown = match &self.source {
            Source::Gguf(_) => format!("{name} (GGUF {})", gguf_name(&name).unwrap_or_default()),
            Source::Vars { .. } => name,
        };
        Error::Unsupported(format!("weight {shown} is missing"))
    }

    /// Whether `leaf` (e.g. `weight`) exists under this prefix.
    pub fn contains(&self, leaf: &str) -> bool {
        match &self.source {
            Source::Vars { vb, .. } => vb.contains_tensor(&self.full(leaf)),
            Source::Gguf(g) => {
                gguf_name(&self.full(leaf)).is_some_and(|name| g.file.contains(&name))
            }
        }
    }

    /// A dense f32 tensor of `shape` named `leaf`; `init` is used when training from scratch.
    fn dense(&self, leaf: &str, shape: &[usize], init: candle_nn::Init) -> Result<Tensor> {
        match &self.source {
            Source::Vars { vb, .. } => Ok(vb.get_with_hints(shape, &self.full(leaf), init)?),
            Source::Gguf(g) => {
                let t = self
                    .gguf_tensor(g, leaf)?
                    .to_qtensor(&g.device)?
                    .dequantize(&g.device)?
                    .to_dtype(DType::F32)?;
                if t.dims() != shape {
                    return Err(Error::Unsupported(format!(
                        "weight {}: shape {:?}, expected {shape:?}",
                        self.full(leaf),
                        t.dims()
                    )));
                }
                Ok(t)
            }
        }
    }

    /// The tensor `leaf` of `shape` in f32, whatever its stored precision or block type
    /// (for writing a model out).
    pub fn tensor_f32(&self, leaf: &str, shape: &[usize]) -> Result<Tensor> {
        if !self.contains(leaf) {
            return Err(self.missing(leaf));
        }
        let tensor = self.dense(leaf, shape, candle_nn::Init::Const(0.0))?;
        Ok(tensor.to_dtype(DType::F32)?)
    }

    /// A `(rows, dim)` table named `weight` (embeddings); a GGUF table stays in the file.
    pub(crate) fn table(&self, rows: usize, dim: usize) -> Result<TokenTable> {
        match &self.source {
            Source::Gguf(g) => TokenTable::gguf(self.gguf_tensor(g, "weight")?, rows, dim),
            Source::Vars { mapped, .. } => {
                match mapped.as_ref().and_then(|m| m.half_matrix(&self.full("weight"), rows, dim)) {
                    Some(table) => Ok(TokenTable::Mapped(table)),
                    None => Ok(TokenTable::Dense(self.dense(
                        "weight",
                        &[rows, dim],
                        candle_nn::Init::Randn { mean: 0.0, stdev: 0.02 },
                    )?)),
                }
            }
        }
    }

    /// A norm's scale vector named `weight`, in f32 whatever the checkpoint's precision.
    pub(crate) fn scale(&self, dim: usize) -> Result<Tensor> {
        let scale = self.dense("weight", &[dim], candle_nn::Init::Const(1.0))?;
        Ok(if scale.dtype() == DType::F32 { scale } else { scale.to_dtype(DType::F32)? })
    }

    /// An RMS norm whose scale is this prefix's `weight`.
    pub(crate) fn rms_norm(&self, dim: usize, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm::new(self.scale(dim)?, eps))
    }

    /// A linear map `in_dim -> out_dim` (`weight` `(out, in)`, optional `bias`).
    pub(crate) fn linear(
        &self,
        in_dim: usize,
        out_dim: usize,
        with_bias: bool,
    ) -> Result<DecoderLinear> {
        // Read only where needed: `Linear::load` reads its own bias.
        let bias = || {
            with_bias
                .then(|| self.dense("bias", &[out_dim], candle_nn::Init::Const(0.0)))
                .transpose()
        };
        match &self.source {
            Source::Vars { vb, mapped } => match mapped
                .as_ref()
                .and_then(|m| m.half_matrix(&self.full("weight"), out_dim, in_dim))
            {
                Some(weight) => Ok(DecoderLinear::Dense(Linear::new_mapped(weight, bias()?))),
                None => Ok(DecoderLinear::Dense(Linear::load(
                    vb.pp(&self.path),
                    in_dim,
                    out_dim,
                    with_bias,
                )?)),
            },
            Source::Gguf(g) => {
                let t = self.gguf_tensor(g, "weight")?;
                if t.dims != [out_dim, in_dim] {
                    return Err(Error::Unsupported(format!(
                        "weight {}: shape {:?}, expected {:?}",
                        self.full("weight"),
                        t.dims,
                        [out_dim, in_dim]
                    )));
                }
                let bias = bias()?;
                if g.dequantize {
                    let mut tensors = HashMap::from([(
                        "weight".to_string(),
                        t.to_qtensor(&g.device)?.dequantize(&g.device)?,
                    )]);
                    if let Some(b) = bias {
                        tensors.insert("bias".to_string(), b);
                    }
                    let vb = VarBuilder::from_tensors(tensors, DType::F32, &g.device);
                    Ok(DecoderLinear::Dense(Linear::load(vb, in_dim, out_dim, with_bias)?))
                } else {
                    Ok(DecoderLinear::Quantized { matrix: GgufMatrix::new(t, &g.device)?, bias })
                }
            }
        }
    }

    /// A projection of the stack `in_dim -> out_dim`: the linear map and, when the
    /// LoRA spec targets this module, its adapter.
    pub(crate) fn projection(
        &self,
        in_dim: usize,
        out_dim: usize,
        with_bias: bool,
    ) -> Result<AdaptedLinear> {
        let base = self.linear(in_dim, out_dim, with_bias)?;
        let module = self.path.rsplit('.').next().unwrap_or_default();
        let adapter = match &self.lora {
            Some(lora) if lora.spec.targets_module(module) => {
                let zeros = candle_nn::Init::Const(0.0);
                let rank = lora.spec.rank;
                let a = lora.vb.get_with_hints(
                    (rank, in_dim),
                    &lora_tensor_name(&self.path, "lora_A"),
                    zeros,
                )?;
                let b = lora.vb.get_with_hints(
                    (out_dim, rank),
                    &lora_tensor_name(&self.path, "lora_B"),
                    zeros,
                )?;
                Some(LoraAdapter::new(a, b, &lora.spec)?)
            }
            _ => None,
        };
        Ok(AdaptedLinear { base, adapter })
    }
}
