//! A cross-encoder: a query and a document read together by one encoder, the first
//! token's state scored by a head. Loads any sentence-transformers `CrossEncoder`
//! directory (a transformers `*ForSequenceClassification` checkpoint with one label);
//! the same code scores pairs for inference and, over variables, trains.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::batching::{plan_batches, BatchLimits};
use crate::embedder::Truncation;
use crate::error::{Error, Result};
use crate::files::{read_json, read_json_if_present};
use crate::local::LoadOptions;
use crate::mode::Mode;
use crate::model_dir::weight_files;
use crate::models::score_head::{HeadNames, ScoreHead};
use crate::models::{load_encoder, CpuInference, MappedWeights, TextEncoder, TransformerConfig};
use crate::packed::PackedBatch;
use crate::tokenize::TextTokenizer;
use sembase_embed::{PairTokens, Reranker, ScoreActivation};

/// The fields of `config.json` that only a cross-encoder has.
#[derive(Debug, Clone, Default, Deserialize)]
struct ClassifierFields {
    architectures: Option<Vec<String>>,
    num_labels: Option<usize>,
    id2label: Option<std::collections::BTreeMap<String, String>>,
    classifier_dropout: Option<f32>,
    /// Where sentence-transformers 4-5 saved the activation function.
    sentence_transformers: Option<ActivationField>,
    /// Where sentence-transformers before 4 saved it.
    sbert_ce_default_activation_function: Option<String>,
}

impl ClassifierFields {
    /// Whether an architecture named is a `*ForSequenceClassification`.
    fn classifies_sequences(&self) -> bool {
        self.architectures.iter().flatten().any(|a| a.ends_with("ForSequenceClassification"))
    }
}

/// `{"activation_fn": "torch.nn.modules.activation.Sigmoid"}`, in
/// `config_sentence_transformers.json` (sentence-transformers 6) or under `config.json`'s
/// `sentence_transformers` key.
#[derive(Debug, Clone, Default, Deserialize)]
struct ActivationField {
    activation_fn: Option<String>,
    model_type: Option<String>,
}

/// The parts of `tokenizer_config.json` that decide what the model is given.
#[derive(Debug, Clone, Default, Deserialize)]
struct TokenizerFields {
    tokenizer_class: Option<String>,
    model_input_names: Option<Vec<String>>,
    model_max_length: Option<f64>,
}

/// Whether `dir` holds a sequence-classification checkpoint (a cross-encoder) rather
/// than a sentence embedding model.
pub fn is_cross_encoder(dir: &Path) -> bool {
    let classifies = read_json::<ClassifierFields>(&dir.join("config.json"))
        .is_ok_and(|f| f.classifies_sequences());
    classifies
        || saved_by_sentence_transformers(dir)
            .is_some_and(|f| f.model_type.as_deref() == Some("CrossEncoder"))
}

/// `config_sentence_transformers.json`, when present and readable.
fn saved_by_sentence_transformers(dir: &Path) -> Option<ActivationField> {
    read_json_if_present(&dir.join("config_sentence_transformers.json")).ok().flatten()
}

/// Everything sembase reads from a cross-encoder directory, parsed and checked.
#[derive(Debug, Clone)]
pub struct CrossEncoderDir {
    pub path: PathBuf,
    pub config: TransformerConfig,
    pub weight_files: Vec<PathBuf>,
    pub tokenizer_file: PathBuf,
    /// The names of the encoder and the head in the checkpoint.
    pub names: HeadNames,
    /// How logits become relevance scores.
    pub activation: ScoreActivation,
    /// Dropout of the head in training.
    pub head_dropout: f32,
    /// The tokenizer's `model_max_length`, when it sets a usable one.
    pub max_length: Option<usize>,
    /// Whether the tokenizer gives the model segment ids (BERT's do; RoBERTa's,
    /// XLM-R's and MPNet's do not, so their models see segment 0 everywhere).
    pub segments: bool,
}

impl CrossEncoderDir {
    /// Reads and checks a cross-encoder directory.
    pub fn open(path: &Path) -> Result<Self> {
        let config_path = path.join("config.json");
        let config = TransformerConfig::from_dir(path)?;
        let fields: ClassifierFields = read_json(&config_path)?;
        if !fields.classifies_sequences() {
            return Err(Error::Unsupported(format!(
                "{} is not a cross-encoder: its config.json names no *ForSequenceClassification architecture (it is a sentence embedding model; use it with embed, not rerank)",
                path.display()
            )));
        }
        let labels = fields.num_labels.or(fields.id2label.as_ref().map(|m| m.len())).unwrap_or(1);
        if labels != 1 {
            return Err(Error::Unsupported(format!(
                "{}: a cross-encoder with {labels} labels; reranking needs one relevance score (num_labels 1)",
                path.display()
            )));
        }
        // The order sentence-transformers reads them in; one label defaults to sigmoid.
        let activation_fn = saved_by_sentence_transformers(path)
            .and_then(|f| f.activation_fn)
            .or(fields.sentence_transformers.and_then(|f| f.activation_fn))
            .or(fields.sbert_ce_default_activation_function);
        let activation = match activation_fn {
            None => ScoreActivation::Sigmoid,
            Some(name) if name.ends_with("Sigmoid") => ScoreActivation::Sigmoid,
            Some(name) if name.ends_with("Identity") => ScoreActivation::Identity,
            Some(name) => {
                return Err(Error::Config {
                    path: config_path,
                    message: format!(
                        "activation_fn {name:?} is not supported (Sigmoid or Identity)"
                    ),
                })
            }
        };
        let tokenizer_file = path.join("tokenizer.json");
        if !tokenizer_file.exists() {
            return Err(Error::Unsupported(format!(
                "{}: no tokenizer.json (only fast tokenizers are read)",
                path.display()
            )));
        }
        let tokenizer = TokenizerFields::read(path)?;
        let segments = config.type_vocab_size >= 2 && tokenizer.gives_segments();
        // Tokenizers without a limit of their own store a huge placeholder.
        let max_length =
            tokenizer.model_max_length.filter(|n| (1.0..=1e6).contains(n)).map(|n| n as usize);
        Ok(Self {
            names: HeadNames::for_model_type(&config.model_type)?,
            head_dropout: fields.classifier_dropout.unwrap_or(config.hidden_dropout_prob),
            weight_files: weight_files(path)?,
            path: path.to_path_buf(),
            config,
            tokenizer_file,
            activation,
            max_length,
            segments,
        })
    }
}

impl TokenizerFields {
    /// `tokenizer_config.json` of `dir`, empty when there is none.
    fn read(dir: &Path) -> Result<Self> {
        Ok(read_json_if_present(&dir.join("tokenizer_config.json"))?.unwrap_or_default())
    }

    /// Whether transformers' tokenizer of this class returns `token_type_ids`.
    fn gives_segments(&self) -> bool {
        if let Some(names) = &self.model_input_names {
            return names.iter().any(|n| n == "token_type_ids");
        }
        let class = self.tokenizer_class.as_deref().unwrap_or("BertTokenizer");
        !["Roberta", "MPNet", "Camembert", "DistilBert"].iter().any(|family| class.contains(family))
    }
}

/// Whether the tokenizer in `dir` gives its model segment (token type) ids for pairs,
/// as transformers' tokenizer of that class does.
pub fn tokenizer_gives_segments(dir: &Path) -> Result<bool> {
    Ok(TokenizerFields::read(dir)?.gives_segments())
}

/// A loaded cross-encoder.
pub struct CrossEncoder {
    name: String,
    tokenizer: TextTokenizer,
    encoder: Box<dyn TextEncoder>,
    head: ScoreHead,
    segments: bool,
    activation: ScoreActivation,
    pad_id: u32,
    device: Device,
    batch: BatchLimits,
}

impl CrossEncoder {
    /// Loads the cross-encoder in `dir`, served under `name`. Weights are memory-mapped.
    pub fn load(dir: &Path, name: impl Into<String>, options: LoadOptions) -> Result<Self> {
        let model = CrossEncoderDir::open(dir)?;
        // SAFETY: weights are memory-mapped read-only; the files must not change while loaded.
        let weights = unsafe { MappedWeights::open(&model.weight_files)? };
        let vb = weights.var_builder(DType::F32, &options.device);
        let mapped = options.device.is_cpu().then(|| weights.clone());
        let encoder =
            load_encoder(vb.clone(), &model.config, &CpuInference { mapped, int8: options.int8 })?;
        Self::assemble(&model, encoder, &vb, name.into(), &options)
    }

    /// Builds a cross-encoder from an encoder and the head found under `head_vb` (the
    /// checkpoint's root; training passes its variables).
    pub fn assemble(
        model: &CrossEncoderDir,
        encoder: Box<dyn TextEncoder>,
        head_vb: &VarBuilder,
        name: String,
        options: &LoadOptions,
    ) -> Result<Self> {
        let limit = encoder.max_tokens();
        let max_tokens = options.max_seq_length.or(model.max_length.filter(|&n| n <= limit));
        let max_tokens = max_tokens.unwrap_or(limit);
        if max_tokens == 0 || max_tokens > limit {
            return Err(Error::Unsupported(format!(
                "max length {max_tokens} is outside 1..={limit}, the model's position limit"
            )));
        }
        let head =
            ScoreHead::load(head_vb, &model.names, encoder.hidden_size(), 1, model.head_dropout)?;
        Ok(Self {
            name,
            tokenizer: TextTokenizer::load(&model.tokenizer_file, max_tokens)?,
            encoder,
            head,
            segments: model.segments,
            activation: model.activation,
            pad_id: model.config.pad_token_id.unwrap_or(0),
            device: options.device.clone(),
            batch: options.batch,
        })
    }

    /// The tokenizer, set to the pair limit.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The encoder.
    pub fn encoder(&self) -> &dyn TextEncoder {
        self.encoder.as_ref()
    }

    /// Right-pads encoded pairs into one batch (with segment ids where the model reads them).
    pub fn pack(&self, pairs: &[&PairTokens]) -> Result<PackedBatch> {
        let ids: Vec<&[u32]> = pairs.iter().map(|p| p.ids.as_slice()).collect();
        let batch = PackedBatch::right_padded(&ids, self.pad_id, &self.device)?;
        if !self.segments {
            return Ok(batch);
        }
        let segments: Vec<&[u32]> = pairs.iter().map(|p| p.segments.as_slice()).collect();
        batch.with_segments(&segments)
    }

    /// `(batch,)` logits of a packed batch of pairs; dropout is on in training.
    pub fn forward(&self, batch: &PackedBatch, mode: &Mode) -> Result<Tensor> {
        let states = self.encoder.forward(batch, mode)?;
        Ok(self.head.forward(&states, mode)?.squeeze(1)?)
    }

    /// Logits of (query, document) pairs cut at the limit, with gradients in training.
    pub fn score_texts(&self, pairs: &[(&str, &str)], mode: &Mode) -> Result<Tensor> {
        let encoded = self.tokenizer.encode_pairs(pairs, Truncation::Truncate)?;
        let rows: Vec<&PairTokens> = encoded.iter().collect();
        self.forward(&self.pack(&rows)?, mode)
    }
}

impl Reranker for CrossEncoder {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_tokens(&self) -> usize {
        self.tokenizer.max_tokens()
    }

    fn activation(&self) -> ScoreActivation {
        self.activation
    }

    fn encode_pair(&self, query: &str, document: &str, truncate: Truncation) -> Result<PairTokens> {
        let mut pairs = self.tokenizer.encode_pairs(&[(query, document)], truncate)?;
        Ok(pairs.pop().unwrap_or_default())
    }

    /// Pairs run in length-sorted batches under the token budget, as embeddings do.
    fn score_pairs(&self, pairs: &[PairTokens]) -> Result<Vec<f32>> {
        let vocab = self.encoder.vocab_size();
        for (index, pair) in pairs.iter().enumerate() {
            if let Some(&id) = pair.ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::InvalidTokenId { index, id, vocab });
            }
            if pair.segments.len() != pair.ids.len() {
                return Err(Error::tensor(format!(
                    "pair {index}: segment ids do not match its ids"
                )));
            }
        }
        let lengths: Vec<usize> = pairs.iter().map(PairTokens::len).collect();
        let mut scores = vec![0.0; pairs.len()];
        for batch in plan_batches(&lengths, self.batch) {
            let rows: Vec<&PairTokens> = batch.iter().map(|&i| &pairs[i]).collect();
            // On a thread of the compute pool, as the embedder does (see `LocalEmbedder`).
            let logits = rayon::scope(|_| self.forward(&self.pack(&rows)?, &Mode::Inference))?;
            for (&i, logit) in batch.iter().zip(logits.to_dtype(DType::F32)?.to_vec1::<f32>()?) {
                scores[i] = logit;
            }
        }
        Ok(scores)
    }
}
