//! Tokenization with the model's `tokenizer.json`, overriding whatever padding
//! and truncation the file carries: sembase pads per batch itself and truncates
//! at the model's `max_seq_length`.

use std::path::Path;
use std::sync::OnceLock;

use tokenizers::{Tokenizer, TruncationParams};

use crate::embedder::Truncation;
use crate::error::{Error, Result};

/// A tokenizer that yields token ids, special tokens included.
#[derive(Clone)]
pub struct TextTokenizer {
    truncating: Tokenizer,
    /// The same tokenizer without truncation, made on first use: cloning a large
    /// vocabulary (XLM-R's 250k-piece Unigram) costs about as much as loading it.
    full: OnceLock<Tokenizer>,
    max_tokens: usize,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").field("max_tokens", &self.max_tokens).finish()
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json`; inputs are cut at `max_tokens` (special tokens included).
    pub fn load(path: &Path, max_tokens: usize) -> Result<Self> {
        let mut truncating = Tokenizer::from_file(path).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        truncating.with_padding(None);
        truncating
            .with_truncation(Some(TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Self { truncating, full: OnceLock::new(), max_tokens })
    }

    /// The tokenizer without truncation.
    fn full(&self) -> &Tokenizer {
        self.full.get_or_init(|| {
            let mut full = self.truncating.clone();
            // Switching truncation off cannot fail (only a stride check can).
            let _ = full.with_truncation(None);
            full
        })
    }

    /// The token limit.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Number of entries in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.truncating.get_vocab_size(true)
    }

    /// Ids of one text without truncation (the first call clones the tokenizer to
    /// switch truncation off, which takes a moment for a large vocabulary).
    pub fn encode_full(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.full().encode(text, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Ids of each text, cut at the limit or refused when over it.
    pub fn encode_batch(&self, texts: &[&str], truncation: Truncation) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .truncating
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        encodings
            .into_iter()
            .enumerate()
            .map(|(index, encoding)| {
                if truncation == Truncation::Refuse && !encoding.get_overflowing().is_empty() {
                    let tokens = self.encode_full(texts[index])?.len();
                    return Err(Error::InputTooLong { index, tokens, limit: self.max_tokens });
                }
                Ok(encoding.get_ids().to_vec())
            })
            .collect()
    }
}
