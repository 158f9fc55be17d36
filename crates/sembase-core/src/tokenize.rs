//! Tokenization with the model's `tokenizer.json`, overriding whatever padding
//! and truncation the file carries: sembase pads per batch itself and truncates
//! at the model's `max_seq_length`. Unigram vocabularies use sembase's compact model
//! (the `unigram` module); every other kind the tokenizers library's own.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use rayon::prelude::*;
use sembase_embed::PairTokens;
use serde::Deserialize;
use tokenizers::utils::truncation::{truncate_encodings, TruncationParams, TruncationStrategy};
use tokenizers::{
    Decoder, DecoderWrapper, Encoding, Model, ModelWrapper, Normalizer, NormalizerWrapper,
    PostProcessor, PostProcessorWrapper, PreTokenizer, PreTokenizerWrapper, TokenizerImpl,
    TruncationDirection,
};

use crate::embedder::Truncation;
use crate::error::{Error, Result};
use crate::unigram::CompactUnigram;

/// A tokenizer that yields token ids, special tokens included.
///
/// One tokenizer serves both cut and whole texts: truncation is applied here the way
/// the tokenizers library applies its own (the text's tokens cut to leave room for the
/// special tokens, which are added after), so no second copy of a large vocabulary
/// is ever made; clones share the one loaded.
#[derive(Clone)]
pub struct TextTokenizer {
    pipeline: Arc<dyn Pipeline>,
    /// Special tokens the post-processor adds to a single text.
    added: usize,
    /// Special tokens the post-processor adds to a pair.
    added_to_pair: usize,
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
        let failed =
            |e: &dyn std::fmt::Display| Error::Tokenizer(format!("{}: {e}", path.display()));
        let json = std::fs::read_to_string(path).map_err(|e| failed(&e))?;
        let head: FileHead = serde_json::from_str(&json).map_err(|e| failed(&e))?;
        let pipeline: Arc<dyn Pipeline> = match head.model.kind.as_deref() {
            Some("Unigram") => prepared::<CompactUnigram>(&json),
            _ => prepared::<ModelWrapper>(&json),
        }
        .map_err(|e| failed(&*e))?;
        let (added, added_to_pair) = (pipeline.added_tokens(false), pipeline.added_tokens(true));
        Ok(Self { pipeline, added, added_to_pair, max_tokens })
    }

    /// The token limit.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Number of entries in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.pipeline.vocab_size()
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
                        return Err(Error::InputTooLong {
                            index,
                            tokens: text_tokens.len() + self.added,
                            limit: self.max_tokens,
                        });
                    }
                    text_tokens.truncate(room, 0, TruncationDirection::Right);
                }
                self.with_special_tokens(text_tokens)
            })
            .collect()
    }

    /// Ids and segment ids of each (query, document) pair read together, as a
    /// cross-encoder takes them. Over the limit, the longer text is cut first (the
    /// `longest_first` truncation sentence-transformers asks of the tokenizers
    /// library), or the pair is refused.
    pub fn encode_pairs(
        &self,
        pairs: &[(&str, &str)],
        truncation: Truncation,
    ) -> Result<Vec<PairTokens>> {
        let room = self.max_tokens.saturating_sub(self.added_to_pair);
        pairs
            .par_iter()
            .enumerate()
            .map(|(index, (query, document))| {
                let (mut first, mut second) =
                    (self.text_tokens(query)?, self.text_tokens(document)?);
                let tokens = first.len() + second.len();
                if tokens > room {
                    if truncation == Truncation::Refuse {
                        return Err(Error::InputTooLong {
                            index,
                            tokens: tokens + self.added_to_pair,
                            limit: self.max_tokens,
                        });
                    }
                    let params = TruncationParams {
                        max_length: room,
                        strategy: TruncationStrategy::LongestFirst,
                        ..TruncationParams::default()
                    };
                    let (cut_first, cut_second) = truncate_encodings(first, Some(second), &params)
                        .map_err(|e| Error::Tokenizer(e.to_string()))?;
                    first = cut_first;
                    second = cut_second.expect("a pair stays a pair");
                }
                let encoding = self
                    .pipeline
                    .with_pair_special_tokens(first, second)
                    .map_err(|e| Error::Tokenizer(e.to_string()))?;
                Ok(PairTokens {
                    ids: encoding.get_ids().to_vec(),
                    segments: encoding.get_type_ids().to_vec(),
                })
            })
            .collect()
    }

    /// The text's own tokens, before special tokens are added.
    fn text_tokens(&self, text: &str) -> Result<Encoding> {
        self.pipeline.text_tokens(text).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Ids of `text_tokens` with the model's special tokens added.
    fn with_special_tokens(&self, text_tokens: Encoding) -> Result<Vec<u32>> {
        let encoding = self
            .pipeline
            .with_special_tokens(text_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }
}

/// Just enough of a `tokenizer.json` to tell its model's kind (the rest is skipped).
#[derive(Deserialize)]
struct FileHead {
    model: ModelHead,
}

#[derive(Deserialize)]
struct ModelHead {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// The library's tokenizer pipeline around the model `M`, read from `json`, with its
/// padding and truncation turned off.
fn prepared<M>(json: &str) -> tokenizers::Result<Arc<dyn Pipeline>>
where
    M: Model + for<'de> Deserialize<'de> + Send + Sync + 'static,
{
    let mut tokenizer = TokenizerImpl::<
        M,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::from_str(json)?;
    tokenizer.with_padding(None);
    tokenizer.with_truncation(None)?;
    Ok(Arc::new(tokenizer))
}

/// What [`TextTokenizer`] asks of a loaded pipeline, whatever its model.
trait Pipeline: Send + Sync {
    /// The text's own tokens, without special tokens.
    fn text_tokens(&self, text: &str) -> tokenizers::Result<Encoding>;
    /// `text_tokens` with the special tokens of a single text added.
    fn with_special_tokens(&self, text_tokens: Encoding) -> tokenizers::Result<Encoding>;
    /// `first` and `second` joined with the special tokens of a pair.
    fn with_pair_special_tokens(
        &self,
        first: Encoding,
        second: Encoding,
    ) -> tokenizers::Result<Encoding>;
    /// Number of special tokens added to a single text, or to a pair.
    fn added_tokens(&self, pair: bool) -> usize;
    /// Vocabulary entries, added tokens included.
    fn vocab_size(&self) -> usize;
}

impl<M, N, PT, PP, D> Pipeline for TokenizerImpl<M, N, PT, PP, D>
where
    M: Model + Send + Sync,
    N: Normalizer + Send + Sync,
    PT: PreTokenizer + Send + Sync,
    PP: PostProcessor + Send + Sync,
    D: Decoder + Send + Sync,
{
    fn text_tokens(&self, text: &str) -> tokenizers::Result<Encoding> {
        self.encode_fast(text, false)
    }

    fn with_special_tokens(&self, text_tokens: Encoding) -> tokenizers::Result<Encoding> {
        self.post_process(text_tokens, None, true)
    }

    fn with_pair_special_tokens(
        &self,
        first: Encoding,
        second: Encoding,
    ) -> tokenizers::Result<Encoding> {
        self.post_process(first, Some(second), true)
    }

    fn added_tokens(&self, pair: bool) -> usize {
        self.get_post_processor().map_or(0, |p| p.added_tokens(pair))
    }

    fn vocab_size(&self) -> usize {
        self.get_vocab_size(true)
    }
}
