//! The local embedder: a model directory loaded on this machine.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device};

use crate::batching::{plan_batches, BatchLimits};
use crate::dense::Dense;
use crate::embedder::{EmbedOptions, Embedder, Embeddings, Truncation};
use crate::error::{Error, Result};
use crate::kernels::int8_linear::Int8Kernel;
use crate::mode::Mode;
use crate::model_dir::{HeadModule, ModelDir};
use crate::models::decoder_config::is_decoder;
use crate::models::{
    adapter_weights, load_decoder_dir, load_encoder, CpuInference, DecoderConfig, MappedWeights,
    TextEncoder,
};
use crate::pipeline::{PostModule, SentencePipeline};
use crate::tokenize::TextTokenizer;
use crate::vectors::truncate_dimensions;

/// Settings chosen when a model is loaded.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Overrides the directory's `max_seq_length`.
    pub max_seq_length: Option<usize>,
    /// Batch limits of one forward pass.
    pub batch: BatchLimits,
    /// Where the model computes.
    pub device: Device,
    /// GGUF weights: dequantise every matrix to f32 instead of multiplying
    /// the quantised blocks (more memory, exact to the file's values).
    pub gguf_dequantize: bool,
    /// Quantise an encoder's linear layers to int8 for CPU inference, run by this kernel
    /// (`Int8Kernel::from_env()` picks the fastest the CPU has).
    pub int8: Option<Int8Kernel>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_seq_length: None,
            batch: BatchLimits::default(),
            device: Device::Cpu,
            gguf_dequantize: false,
            int8: None,
        }
    }
}

/// A sentence-transformers model: its pipeline, prompts and batching settings.
pub struct LocalEmbedder {
    name: String,
    pipeline: SentencePipeline,
    dimension: usize,
    prompts: HashMap<String, String>,
    default_prompt_name: Option<String>,
    options: LoadOptions,
}

impl LocalEmbedder {
    /// Loads the model in `dir`, served under `name`. Weights are memory-mapped.
    pub fn load(dir: &Path, name: impl Into<String>, options: LoadOptions) -> Result<Self> {
        if crate::cross_encoder::is_cross_encoder(dir) {
            return Err(Error::Unsupported(format!(
                "{} is a cross-encoder: it scores (query, document) pairs and makes no embeddings (use it with rerank)",
                dir.display()
            )));
        }
        let model = ModelDir::open(dir)?;
        let decoder = is_decoder(&model.config.model_type);
        match options.int8 {
            Some(_) if !options.device.is_cpu() => {
                return Err(Error::Unsupported("int8 quantisation runs on the CPU only".into()))
            }
            Some(_) if decoder => {
                return Err(Error::Unsupported(
                    "int8 quantisation is for encoder models (decoders: use a quantised GGUF)"
                        .into(),
                ))
            }
            _ => {}
        }
        let encoder: Box<dyn TextEncoder> = if decoder {
            let device = &options.device;
            let lora = model.adapter.as_ref().map(|a| adapter_weights(a, device)).transpose()?;
            Box::new(load_decoder_dir(
                &DecoderConfig::of(&model)?,
                &model.weight_files,
                options.gguf_dequantize,
                lora,
                device,
                false,
            )?)
        } else {
            // SAFETY: weights are memory-mapped read-only; the files must not change while loaded.
            let weights = unsafe { MappedWeights::open(&model.weight_files)? };
            let vb = weights.var_builder(DType::F32, &options.device);
            // Embedding tables are read in place on the CPU (the other weights are copied
            // into the layouts their kernels read).
            let mapped = options.device.is_cpu().then_some(weights);
            load_encoder(vb, &model.config, &CpuInference { mapped, int8: options.int8 })?
        };
        let modules = model
            .head
            .iter()
            .map(|module| match module {
                HeadModule::Dense(path) => {
                    Ok(PostModule::Dense(Dense::load_dir(path, &options.device)?))
                }
                HeadModule::Normalize => Ok(PostModule::Normalize),
            })
            .collect::<Result<Vec<_>>>()?;
        Self::assemble(model, encoder, modules, name.into(), options)
    }

    /// Builds an embedder from loaded parts: `model` supplies the tokenizer, pooling,
    /// token limit and prompts (training uses this for in-memory weights).
    pub fn assemble(
        model: ModelDir,
        encoder: Box<dyn TextEncoder>,
        modules: Vec<PostModule>,
        name: String,
        options: LoadOptions,
    ) -> Result<Self> {
        let max_tokens =
            options.max_seq_length.or(model.max_seq_length).unwrap_or(encoder.max_tokens());
        let pad_id = model.config.pad_token_id.unwrap_or(0);
        let pipeline = SentencePipeline::new(
            &model.tokenizer_file,
            max_tokens,
            encoder,
            model.pooling,
            modules,
            pad_id,
            options.device.clone(),
        )?;
        Ok(Self {
            name,
            dimension: pipeline.dimension(),
            pipeline,
            prompts: model.prompts,
            default_prompt_name: model.default_prompt_name,
            options,
        })
    }

    /// Where the model computes.
    pub fn device(&self) -> &Device {
        &self.options.device
    }

    /// The tokenizer, set to this model's token limit.
    pub fn tokenizer(&self) -> &TextTokenizer {
        self.pipeline.tokenizer()
    }

    /// Named prompts from `config_sentence_transformers.json`.
    pub fn prompts(&self) -> &HashMap<String, String> {
        &self.prompts
    }

    /// The prompt used when a caller names none, if the model sets one.
    pub fn default_prompt(&self) -> Option<&str> {
        self.default_prompt_name.as_deref().and_then(|n| self.prompts.get(n)).map(String::as_str)
    }

    /// Embeds token sequences in length-sorted batches; results in input order.
    fn embed_sequences(
        &self,
        sequences: &[Vec<u32>],
        options: &EmbedOptions,
    ) -> Result<Embeddings> {
        if let Some(dims) = options.dimensions {
            if dims == 0 || dims > self.dimension {
                return Err(Error::InvalidDimensions { requested: dims, max: self.dimension });
            }
        }
        let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
        let mut vectors = vec![Vec::new(); sequences.len()];
        for batch in plan_batches(&lengths, self.options.batch) {
            let rows: Vec<&[u32]> = batch.iter().map(|&i| sequences[i].as_slice()).collect();
            // Run on a thread of the compute pool: the CPU kernels' parallel loops then
            // start there, instead of each op being handed into the pool and back from
            // outside it (two thread switches per op, much of a short text's time).
            let pooled = rayon::scope(|_| {
                self.pipeline.forward(&self.pipeline.pack(&rows)?, &Mode::Inference)
            })?;
            for (&i, vector) in batch.iter().zip(pooled.to_dtype(DType::F32)?.to_vec2::<f32>()?) {
                vectors[i] = vector;
            }
        }
        if let Some(dims) = options.dimensions {
            vectors.iter_mut().for_each(|v| truncate_dimensions(v, dims));
        }
        Ok(Embeddings { vectors, token_counts: lengths })
    }
}

impl Embedder for LocalEmbedder {
    fn name(&self) -> &str {
        &self.name
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn max_tokens(&self) -> usize {
        self.pipeline.tokenizer().max_tokens()
    }

    fn embed(&self, texts: &[&str], options: &EmbedOptions) -> Result<Embeddings> {
        let prefixed: Vec<String>;
        let inputs: Vec<&str> = match &options.prefix {
            Some(prefix) => {
                prefixed = texts.iter().map(|t| format!("{prefix}{t}")).collect();
                prefixed.iter().map(String::as_str).collect()
            }
            None => texts.to_vec(),
        };
        let sequences = self.pipeline.tokenizer().encode_batch(&inputs, options.truncate)?;
        self.embed_sequences(&sequences, options)
    }

    fn embed_tokens(&self, inputs: &[Vec<u32>], options: &EmbedOptions) -> Result<Embeddings> {
        let vocab = self.pipeline.encoder().vocab_size();
        let limit = self.max_tokens();
        let mut sequences = Vec::with_capacity(inputs.len());
        for (index, ids) in inputs.iter().enumerate() {
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::InvalidTokenId { index, id, vocab });
            }
            if ids.len() > limit && options.truncate == Truncation::Refuse {
                return Err(Error::InputTooLong { index, tokens: ids.len(), limit });
            }
            sequences.push(ids[..ids.len().min(limit)].to_vec());
        }
        self.embed_sequences(&sequences, options)
    }

    fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.pipeline.tokenizer().encode_full(text)
    }

    fn encode(&self, text: &str, truncate: Truncation) -> Result<Vec<u32>> {
        let mut ids = self.pipeline.tokenizer().encode_batch(&[text], truncate)?;
        Ok(ids.pop().unwrap_or_default())
    }
}
