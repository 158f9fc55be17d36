//! Tokenization with the model's `tokenizer.json`, overriding whatever padding
//! and truncation the file carries: sembase pads per batch itself and truncates
//! at the model's `max_seq_length`.

use std::path::Path;

use rayon::prelude::*;
use tokenizers::{Encoding, PostProcessor, Tokenizer, TruncationDirection};

use crate::embedder::Truncation;
use crate::error::{Error, Result};

/// A tokenizer that yields token ids, special tokens included.
///
/// One tokenizer serves both cut and whole texts: truncation is applied here the way
/// the tokenizers library applies its own (the text's tokens cut to leave room for the
/// special tokens, which are added after), so no second copy of a large vocabulary
/// (XLM-R's 250k-piece Unigram takes about 200 MB) is ever made.
#[derive(Clone)]
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    /// Special tokens the post-processor adds to a single text.
    added: usize,
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
        let mut tokenizer = Tokenizer::from_file(path).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let added = tokenizer.get_post_processor().map_or(0, |p| p.added_tokens(false));
        Ok(Self { tokenizer, added, max_tokens })
    }

    /// The token limit.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Number of entries in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Ids of one text without truncation.
    pub fn encode_full(&self, text: &str) -> Result<Vec<u32>> {
        let text_tokens = self.text_tokens(text)?;
        self.with_special_tokens(text_tokens)
    }

    /// Ids of each text, cut at the limit or refused when over it.
    pub fn encode_batch(&self, texts: &[&str], truncation: Truncation) -> Result<Vec<Vec<u32>>> {
        let room = self.max_tokens.saturating_sub(self.added);
        texts
            .par_iter()
            .enumerate()
            .map(|(index, text)| {
                let mut text_tokens = self.text_tokens(text)?;
                if text_tokens.len() > room {
                    if truncation == Truncation::Refuse {
                        return Err(Error::InputTooLong { index, tokens: text_tokens.len() + self.added, limit: self.max_tokens });
                    }
                    text_tokens.truncate(room, 0, TruncationDirection::Right);
                }
                self.with_special_tokens(text_tokens)
            })
            .collect()
    }

    /// The text's own tokens, before special tokens are added.
    fn text_tokens(&self, text: &str) -> Result<Encoding> {
        self.tokenizer.encode_fast(text, false).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Ids of `text_tokens` with the model's special tokens added.
    fn with_special_tokens(&self, text_tokens: Encoding) -> Result<Vec<u32>> {
        let encoding = self.tokenizer.post_process(text_tokens, None, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }
}
