//! The Hugging Face `config.json` of a decoder-only model (LLaMA, Mistral,
//! Qwen2, Qwen3). Kept apart from the encoder-shaped [`super::TransformerConfig`].

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::files::read_json;
use crate::model_dir::ModelDir;

/// `rope_scaling` of config.json. Older configs name the kind `type`, newer ones `rope_type`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RopeScaling {
    #[serde(default)]
    pub rope_type: Option<String>,
    /// The older spelling of `rope_type` (some configs carry both).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    /// Set inside transformers 5's `rope_parameters`, which replaces `rope_theta` + `rope_scaling`.
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

/// The fields of `config.json` that the decoders read.
#[derive(Debug, Clone, Deserialize)]
pub struct DecoderConfig {
    /// `llama`, `mistral`, `qwen2`, `qwen3`.
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention; absent means one key/value head per query head.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Width of one head; absent means `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub max_position_embeddings: usize,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// transformers 5 writes theta and scaling here instead.
    #[serde(default)]
    pub rope_parameters: Option<RopeScaling>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// LLaMA's optional bias on q/k/v/o (Qwen2 always has a q/k/v bias).
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// `false` for a decoder made bidirectional (LLM2Vec): no causal mask.
    #[serde(default = "default_causal")]
    pub is_causal: bool,
}

fn default_causal() -> bool {
    true
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_act() -> String {
    "silu".into()
}

/// The `model_type`s the decoder stack implements.
pub const DECODER_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

/// Whether `model_type` names a decoder-only architecture sembase implements.
pub fn is_decoder(model_type: &str) -> bool {
    DECODER_TYPES.contains(&model_type)
}

impl DecoderConfig {
    /// Reads `config.json` from a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        read_json(&dir.join("config.json"))
    }

    /// The configuration `model` runs with (see [`ModelDir::config_json`]).
    pub fn of(model: &ModelDir) -> Result<Self> {
        serde_json::from_value(model.config_json.clone()).map_err(|e| Error::Config {
            path: model.path.join("config.json"),
            message: e.to_string(),
        })
    }

    /// Key/value heads (equal to the query heads without GQA).
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_width(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Checks the head arithmetic and the activation.
    pub fn validate(&self) -> Result<()> {
        let (heads, kv) = (self.num_attention_heads, self.kv_heads());
        if heads == 0 || kv == 0 || !heads.is_multiple_of(kv) {
            return Err(Error::Unsupported(format!(
                "{heads} attention heads cannot share {kv} key/value heads"
            )));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(heads) {
            return Err(Error::Unsupported(format!(
                "hidden_size {} is not a multiple of {heads} heads",
                self.hidden_size
            )));
        }
        if !self.head_width().is_multiple_of(2) {
            return Err(Error::Unsupported(format!(
                "head width {} is odd; RoPE needs pairs",
                self.head_width()
            )));
        }
        if !matches!(self.hidden_act.as_str(), "silu" | "swish") {
            return Err(Error::Unsupported(format!(
                "decoder hidden_act {:?} (only silu/SwiGLU)",
                self.hidden_act
            )));
        }
        Ok(())
    }

    /// The rotary inverse frequencies, `head_width / 2` of them, after `rope_scaling`.
    pub fn rope_inv_freq(&self) -> Result<Vec<f64>> {
        let d = self.head_width();
        let theta =
            self.rope_parameters.as_ref().and_then(|p| p.rope_theta).unwrap_or(self.rope_theta);
        let base: Vec<f64> =
            (0..d / 2).map(|i| 1.0 / theta.powf(2.0 * i as f64 / d as f64)).collect();
        let Some(scaling) = self.rope_scaling.as_ref().or(self.rope_parameters.as_ref()) else {
            return Ok(base);
        };
        let kind = scaling.rope_type.as_deref().or(scaling.kind.as_deref()).unwrap_or("default");
        let factor = || {
            scaling
                .factor
                .ok_or_else(|| Error::Unsupported(format!("rope_scaling {kind:?} without factor")))
        };
        match kind {
            "default" => Ok(base),
            "linear" => {
                let f = factor()?;
                Ok(base.into_iter().map(|x| x / f).collect())
            }
            "llama3" => {
                let f = factor()?;
                let low = scaling.low_freq_factor.unwrap_or(1.0);
                let high = scaling.high_freq_factor.unwrap_or(4.0);
                let old = scaling.original_max_position_embeddings.unwrap_or(8192) as f64;
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                Ok(base
                    .into_iter()
                    .map(|freq| {
                        let wavelen = 2.0 * std::f64::consts::PI / freq;
                        if wavelen < high_wavelen {
                            freq
                        } else if wavelen > low_wavelen {
                            freq / f
                        } else {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * freq / f + smooth * freq
                        }
                    })
                    .collect())
            }
            other => Err(Error::Unsupported(format!(
                "rope_scaling type {other:?} (supported: default, linear, llama3)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(scaling: &str) -> DecoderConfig {
        let text = format!(
            r#"{{"model_type":"llama","vocab_size":8,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,
               "num_attention_heads":2,"max_position_embeddings":64,"rope_theta":10000.0,"rope_scaling":{scaling}}}"#
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn rope_scaling_kinds() {
        let plain = config("null").rope_inv_freq().unwrap();
        assert_eq!(plain.len(), 4);
        assert!((plain[1] - 10000f64.powf(-0.25)).abs() < 1e-12);
        let linear = config(r#"{"type":"linear","factor":4.0}"#).rope_inv_freq().unwrap();
        assert!((linear[1] * 4.0 - plain[1]).abs() < 1e-12);
        // llama3: the highest frequency is kept, the lowest divided by the factor.
        let l3 = config(
            r#"{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
                             "original_max_position_embeddings":64}"#,
        )
        .rope_inv_freq()
        .unwrap();
        assert_eq!(l3[0], plain[0]);
        assert!((l3[3] * 8.0 - plain[3]).abs() < 1e-12);
        assert!(config(r#"{"type":"yarn","factor":2.0}"#).rope_inv_freq().is_err());
        // transformers 5: theta and scaling in `rope_parameters`.
        let mut v5 = config("null");
        v5.rope_parameters =
            serde_json::from_str(r#"{"rope_type":"linear","factor":4.0,"rope_theta":100.0}"#)
                .unwrap();
        let v5 = v5.rope_inv_freq().unwrap();
        assert!((v5[1] * 4.0 - 100f64.powf(-0.25)).abs() < 1e-12);
    }
}
