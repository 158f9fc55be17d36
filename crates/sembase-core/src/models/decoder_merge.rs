//! Folding LoRA adapters into a decoder's weights (`train --merge`): every tensor of the
//! base in f32 under its Hugging Face name, each adapted projection as `W + scale B A`.
//! The result is a plain checkpoint that any runtime loads without knowing of adapters.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use super::decoder_config::DecoderConfig;
use super::{decoder_options, MappedWeights};
use crate::error::{Error, Result};
use crate::layers::LoraSpec;
use crate::weights::{lora_tensor_name, DecoderWeights};

/// The base in `weight_files` with the adapters `lora` (named as [`lora_tensor_name`]
/// names them) folded in, keyed as a `*ForCausalLM` checkpoint keys its tensors.
pub fn merged_decoder(
    cfg: &DecoderConfig,
    weight_files: &[PathBuf],
    lora: &HashMap<String, Tensor>,
    spec: &LoraSpec,
) -> Result<HashMap<String, Tensor>> {
    let device = Device::Cpu;
    let base = match weight_files {
        [gguf] if gguf.extension().is_some_and(|e| e == "gguf") => {
            // SAFETY: the file is mapped read-only and must not change while merging.
            unsafe { DecoderWeights::from_gguf(gguf, &device, true) }?.0
        }
        files => {
            // SAFETY: as above.
            let mapped = unsafe { MappedWeights::open(files)? };
            DecoderWeights::from_var_builder(mapped.var_builder(DType::F32, &device))
        }
    };
    let opts = decoder_options(cfg)?;
    let (h, ff, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_width());
    let (q, kv) = (cfg.num_attention_heads * d, cfg.kv_heads() * d);
    let mut out = HashMap::new();
    let mut used = 0;
    let mut copy = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let (module, leaf) = name.rsplit_once('.').unwrap_or(("", name));
        let tensor = base.pp(module).tensor_f32(leaf, shape)?;
        out.insert(format!("model.{name}"), tensor.clone());
        Ok(tensor)
    };
    let mut updates = Vec::new();
    copy("embed_tokens.weight", &[cfg.vocab_size, h])?;
    copy("norm.weight", &[h])?;
    for i in 0..cfg.num_hidden_layers {
        let layer = format!("layers.{i}");
        copy(&format!("{layer}.input_layernorm.weight"), &[h])?;
        copy(&format!("{layer}.post_attention_layernorm.weight"), &[h])?;
        if opts.qk_norm {
            copy(&format!("{layer}.self_attn.q_norm.weight"), &[d])?;
            copy(&format!("{layer}.self_attn.k_norm.weight"), &[d])?;
        }
        let projections = [
            ("self_attn.q_proj", h, q, opts.qkv_bias),
            ("self_attn.k_proj", h, kv, opts.qkv_bias),
            ("self_attn.v_proj", h, kv, opts.qkv_bias),
            ("self_attn.o_proj", q, h, opts.output_bias),
            ("mlp.gate_proj", h, ff, false),
            ("mlp.up_proj", h, ff, false),
            ("mlp.down_proj", ff, h, false),
        ];
        for (module, in_dim, out_dim, bias) in projections {
            let path = format!("{layer}.{module}");
            let weight = copy(&format!("{path}.weight"), &[out_dim, in_dim])?;
            if bias {
                copy(&format!("{path}.bias"), &[out_dim])?;
            }
            let leaf = module.rsplit('.').next().unwrap_or(module);
            if !spec.targets_module(leaf) {
                continue;
            }
            let matrix = |m: &str| {
                let name = lora_tensor_name(&path, m);
                lora.get(&name).ok_or_else(|| Error::Unsupported(format!("adapter lacks {name}")))
            };
            let update = (matrix("lora_B")?.matmul(matrix("lora_A")?)? * spec.scale())?;
            updates.push((format!("model.{path}.weight"), (weight + update)?));
            used += 2;
        }
    }
    out.extend(updates);
    if used != lora.len() {
        return Err(Error::Unsupported(format!(
            "{} adapter matrices, {used} of them on the model's projections",
            lora.len()
        )));
    }
    let head = base.root().pp("lm_head");
    if !cfg.tie_word_embeddings && head.contains("weight") {
        out.insert("lm_head.weight".into(), head.tensor_f32("weight", &[cfg.vocab_size, h])?);
    }
    Ok(out)
}
