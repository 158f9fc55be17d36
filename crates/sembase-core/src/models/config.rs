//! The Hugging Face `config.json` of an encoder.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::files::read_json;
use crate::layers::Activation;

/// The fields of `config.json` that the encoders read.
#[derive(Debug, Clone, Deserialize)]
pub struct TransformerConfig {
    /// `bert`, `xlm-roberta`, `mpnet`, ...
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f32,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f32,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// MPNet's relative position buckets.
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f32 {
    0.1
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_buckets() -> usize {
    32
}

impl TransformerConfig {
    /// Reads `config.json` from a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        read_json(&dir.join("config.json"))
    }

    /// The feed-forward activation, or an error naming the unknown one.
    pub fn activation(&self) -> Result<Activation> {
        Activation::from_config(&self.hidden_act)
            .ok_or_else(|| Error::Unsupported(format!("hidden_act {:?}", self.hidden_act)))
    }
}
