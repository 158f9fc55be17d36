//! The `Embedder` trait: what every consumer (CLI, server, eval, index) calls.

use crate::error::Result;

/// Per-call settings for turning texts into vectors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbedOptions {
    /// Text prepended to every input (e.g. `query: ` for e5 models).
    pub prefix: Option<String>,
    /// Keep only the first N dimensions (Matryoshka) and re-normalise.
    pub dimensions: Option<usize>,
    /// Truncate inputs longer than the model's limit (default). When false,
    /// an over-long input is an error naming its index.
    pub truncate: Truncation,
}

/// What to do with an input longer than the model's token limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Truncation {
    /// Cut it at the limit, as sentence-transformers does.
    #[default]
    Truncate,
    /// Refuse it with [`crate::Error::InputTooLong`].
    Refuse,
}

/// The vectors for a batch of inputs, in input order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embeddings {
    /// One vector per input.
    pub vectors: Vec<Vec<f32>>,
    /// Real (non-padding) tokens per input, special tokens included, after truncation.
    pub token_counts: Vec<usize>,
}

impl Embeddings {
    /// Sum of real tokens over all inputs (the `usage.prompt_tokens` of the API).
    pub fn total_tokens(&self) -> usize {
        self.token_counts.iter().sum()
    }
}

/// Anything that turns text into vectors: the local model, or a remote endpoint.
pub trait Embedder: Send + Sync {
    /// The name clients use for this model.
    fn name(&self) -> &str;
    /// Width of the vectors it returns when no `dimensions` is asked for.
    fn dimension(&self) -> usize;
    /// Token limit per input, special tokens included.
    fn max_tokens(&self) -> usize;
    /// Embed texts; the result has one vector per text, in order.
    fn embed(&self, texts: &[&str], options: &EmbedOptions) -> Result<Embeddings>;
    /// Embed inputs that are already token ids (the API accepts them); special
    /// tokens are not added.
    fn embed_tokens(&self, inputs: &[Vec<u32>], options: &EmbedOptions) -> Result<Embeddings>;
    /// Token ids the model would see for `text` (special tokens included, not truncated).
    fn tokenize(&self, text: &str) -> Result<Vec<u32>>;
    /// Token ids the model runs for `text`, special tokens included: cut at the token
    /// limit the way [`embed`](Self::embed) cuts it, or refused with
    /// [`crate::Error::InputTooLong`] under [`Truncation::Refuse`]. A server tokenizes
    /// once with this and sends the ids. The default is for models whose tokenizer is
    /// not at hand (a remote endpoint).
    fn encode(&self, text: &str, truncate: Truncation) -> Result<Vec<u32>> {
        let _ = (text, truncate);
        Err(crate::Error::Unsupported(format!(
            "{}: the tokenizer is not available here",
            self.name()
        )))
    }
}
