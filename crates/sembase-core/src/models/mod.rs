//! Encoder architectures, one file each, written on candle. The same code
//! serves inference (memory-mapped weights) and training (a `VarMap`).

pub mod bert;
pub mod config;
mod cpu_attention;
mod cpu_linear;
pub mod encoder;
mod fast_math;
pub mod layers;
pub mod mpnet;
pub mod xlm_roberta;

use candle_core::Tensor;
use candle_nn::VarBuilder;

pub use config::TransformerConfig;

use crate::error::{Error, Result};

/// A model that maps token ids to contextual token states.
pub trait TextEncoder: Send + Sync {
    /// `(batch, seq)` right-padded ids and their mask (1 real, 0 padding) ->
    /// `(batch, seq, hidden)` token states. `train` turns dropout on.
    fn forward(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor>;
    /// Width of the token states.
    fn hidden_size(&self) -> usize;
    /// Longest input (special tokens included) the position table allows.
    fn max_tokens(&self) -> usize;
    /// Rows of the word embedding table.
    fn vocab_size(&self) -> usize;
}

/// Builds the encoder named by `cfg.model_type` from `vb`. Checkpoints saved
/// with a task head keep the encoder under a prefix (`bert.`, `roberta.`, ...);
/// it is found by looking for the word embeddings.
pub fn load_encoder(vb: VarBuilder, cfg: &TransformerConfig) -> Result<Box<dyn TextEncoder>> {
    let prefixes = ["", "bert", "roberta", "xlm_roberta", "mpnet", "model"];
    let vb = prefixes
        .iter()
        .map(|p| if p.is_empty() { vb.clone() } else { vb.pp(*p) })
        .find(|v| v.contains_tensor("embeddings.word_embeddings.weight"))
        .unwrap_or(vb);
    Ok(match cfg.model_type.as_str() {
        "bert" => Box::new(bert::BertModel::load(vb, cfg)?),
        "xlm-roberta" | "roberta" | "camembert" => Box::new(xlm_roberta::load(vb, cfg)?),
        "mpnet" => Box::new(mpnet::MpnetModel::load(vb, cfg)?),
        other => return Err(Error::Unsupported(format!("model_type {other:?} (supported: bert, xlm-roberta, roberta, mpnet)"))),
    })
}
