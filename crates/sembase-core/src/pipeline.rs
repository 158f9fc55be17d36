//! The one sentence pipeline every caller runs, inference and each training objective
//! alike: tokenize -> pack -> forward -> pool -> dense -> normalise.

use candle_core::{Device, Tensor};

use crate::dense::Dense;
use crate::embedder::Truncation;
use crate::error::{Error, Result};
use crate::mode::Mode;
use crate::models::TextEncoder;
use crate::packed::PackedBatch;
use crate::pooling::Pooling;
use crate::tokenize::TextTokenizer;

/// A module after pooling, ready to run.
#[derive(Debug, Clone)]
pub enum PostModule {
    Dense(Dense),
    Normalize,
}

/// A transformer with its tokenizer, pooling and the modules after pooling.
pub struct SentencePipeline {
    tokenizer: TextTokenizer,
    encoder: Box<dyn TextEncoder>,
    pooling: Pooling,
    modules: Vec<PostModule>,
    pad_id: u32,
    device: Device,
}

impl SentencePipeline {
    /// Puts the parts together; the tokenizer cuts (or refuses) inputs at `max_tokens`,
    /// which must fit the encoder's position table.
    pub fn new(
        tokenizer_file: &std::path::Path,
        max_tokens: usize,
        encoder: Box<dyn TextEncoder>,
        pooling: Pooling,
        modules: Vec<PostModule>,
        pad_id: u32,
        device: Device,
    ) -> Result<Self> {
        let limit = encoder.max_tokens();
        if max_tokens == 0 || max_tokens > limit {
            return Err(Error::Unsupported(format!(
                "max_seq_length {max_tokens} is outside 1..={limit}, the model's position limit"
            )));
        }
        let tokenizer = TextTokenizer::load(tokenizer_file, max_tokens)?;
        Ok(Self { tokenizer, encoder, pooling, modules, pad_id, device })
    }

    /// The tokenizer, set to the pipeline's token limit.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The transformer.
    pub fn encoder(&self) -> &dyn TextEncoder {
        self.encoder.as_ref()
    }

    /// The pooling applied to the token states.
    pub fn pooling(&self) -> &Pooling {
        &self.pooling
    }

    /// Width of the vectors the pipeline returns.
    pub fn dimension(&self) -> usize {
        self.modules.iter().fold(self.pooling.output_dim(self.encoder.hidden_size()), |width, m| {
            match m {
                PostModule::Dense(dense) => dense.out_dim(),
                PostModule::Normalize => width,
            }
        })
    }

    /// Right-pads `sequences` into one batch on the pipeline's device.
    pub fn pack(&self, sequences: &[&[u32]]) -> Result<PackedBatch> {
        PackedBatch::right_padded(sequences, self.pad_id, &self.device)
    }

    /// Sentence vectors `(batch, dimension)` of a packed batch.
    pub fn forward(&self, batch: &PackedBatch, mode: &Mode) -> Result<Tensor> {
        let states = self.encoder.forward(batch, mode)?;
        let mut pooled = self.pooling.forward(&states, batch.mask())?;
        for module in &self.modules {
            pooled = match module {
                PostModule::Dense(dense) => dense.forward(&pooled)?,
                PostModule::Normalize => {
                    let norms = pooled.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
                    pooled.broadcast_div(&norms)?
                }
            };
        }
        Ok(pooled)
    }

    /// Sentence vectors of `texts`, each cut at the token limit: tokenize, pack, forward.
    pub fn embed_texts(&self, texts: &[&str], mode: &Mode) -> Result<Tensor> {
        let sequences = self.tokenizer.encode_batch(texts, Truncation::Truncate)?;
        let rows: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
        self.forward(&self.pack(&rows)?, mode)
    }
}
