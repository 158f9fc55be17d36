//! A sentence-transformers model with its weights in variables: the encoder,
//! pooling and any Dense modules, plus an optional new projection. A decoder base
//! trains LoRA adapters instead: its weights stay frozen and only the adapters are
//! variables.

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use sembase_core::dense::{Dense, DenseConfig};
use sembase_core::layers::LoraSpec;
use sembase_core::model_dir::{HeadModule, ModelDir};
use sembase_core::models::decoder_config::is_decoder;
use sembase_core::models::{
    encoder_prefix, load_decoder_dir, load_encoder, CpuInference, DecoderConfig, DecoderModel,
    LoraWeights, TextEncoder,
};
use sembase_core::pooling::{Pooling, PoolingMode};
use sembase_core::{LoadOptions, LocalEmbedder, Mode, PackedBatch, PostModule, SentencePipeline};

use crate::error::{Result, TrainError};

/// A Dense module whose weights are variables.
pub struct TrainableDense {
    pub config: DenseConfig,
    pub vars: VarMap,
    module: Dense,
}

/// How a decoder base trains: LoRA adapters over its frozen weights.
#[derive(Debug, Clone)]
pub struct DecoderTraining {
    pub lora: LoraSpec,
    /// Attention without the causal mask (LLM2Vec's conversion).
    pub bidirectional: bool,
    /// The pooling to train with, instead of the directory's.
    pub pooling: Option<PoolingMode>,
    /// Seeds the adapters' initial down-projections.
    pub seed: u64,
    /// Export the base with the adapters folded in instead of the adapters alone.
    pub merge: bool,
}

/// What the transformer of a model in training is.
enum Body {
    /// An encoder whose every weight is a variable.
    Encoder,
    /// A frozen decoder carrying LoRA variables (boxed: the model is large).
    Decoder(Box<DecoderBody>),
}

/// A decoder in training: the model (base and adapters), its config and settings.
struct DecoderBody {
    model: DecoderModel,
    config: DecoderConfig,
    training: DecoderTraining,
}

/// The model being trained: core's sentence pipeline over variables.
pub struct TrainableModel {
    /// The directory it was loaded from (config, tokenizer, prompts).
    pub source: ModelDir,
    /// The encoder's variables, or a decoder's LoRA adapters (named as PEFT names them).
    encoder_vars: VarMap,
    body: Body,
    /// Tokenizer, encoder, pooling and the Dense modules; the final Normalize, if any, is
    /// left to the losses (they compare directions) and to the exported model.
    pipeline: SentencePipeline,
    dense: Vec<TrainableDense>,
    normalize: bool,
}

impl TrainableModel {
    /// Loads the encoder model in `dir` for training on inputs of at most `max_length`
    /// tokens; `project` appends a new Dense projection to that many dimensions.
    pub fn load(dir: &Path, max_length: usize, project: Option<usize>) -> Result<Self> {
        Self::load_with(dir, max_length, project, None)
    }

    /// As [`Self::load`]; a decoder needs `decoder` (it trains LoRA adapters), an
    /// encoder must not have it.
    pub fn load_with(
        dir: &Path,
        max_length: usize,
        project: Option<usize>,
        decoder: Option<&DecoderTraining>,
    ) -> Result<Self> {
        let mut source = ModelDir::open(dir)?;
        let encoder_vars = VarMap::new();
        let (encoder, body): (Box<dyn TextEncoder>, Body) =
            match (is_decoder(&source.config.model_type), decoder) {
                (true, Some(training)) => {
                    let model = load_lora_decoder(&source, &encoder_vars, training)?;
                    if let Some(mode) = training.pooling {
                        source.pooling = Pooling::new(mode);
                    }
                    let config = decoder_config(&source, training)?;
                    let body = Body::Decoder(Box::new(DecoderBody {
                        model: model.clone(),
                        config,
                        training: training.clone(),
                    }));
                    (Box::new(model), body)
                }
                (true, None) => {
                    return Err(TrainError::Config(format!(
                        "{} is a decoder ({}): it trains LoRA adapters, add --lora RANK",
                        dir.display(),
                        source.config.model_type
                    )))
                }
                (false, Some(_)) => {
                    return Err(TrainError::Config(format!(
                        "--lora, --bidirectional and --pooling are for decoder models; {} is a {} encoder, trained in full",
                        dir.display(),
                        source.config.model_type
                    )))
                }
                (false, None) => {
                    let encoder = load_encoder(
                        VarBuilder::from_varmap(&encoder_vars, DType::F32, &Device::Cpu),
                        &source.config,
                        &CpuInference::default(),
                    )?;
                    fill_vars(&encoder_vars, &source.weight_files)?;
                    (encoder, Body::Encoder)
                }
            };
        let limit = encoder.max_tokens().min(source.max_seq_length.unwrap_or(usize::MAX));
        if max_length == 0 || max_length > limit {
            return Err(TrainError::Config(format!(
                "--max-length {max_length} is outside 1..={limit}"
            )));
        }
        let mut width = source.pooling.output_dim(encoder.hidden_size());
        let (mut dense, mut normalize) = (Vec::new(), false);
        for module in &source.head {
            match module {
                HeadModule::Dense(path) => {
                    let d = load_dense(path)?;
                    width = d.config.out_features;
                    dense.push(d);
                }
                HeadModule::Normalize => normalize = true,
            }
        }
        if let Some(out) = project {
            dense.push(new_projection(width, out)?);
        }
        let modules = dense.iter().map(|d| PostModule::Dense(d.module.clone())).collect();
        let pad_id = source.config.pad_token_id.unwrap_or(0);
        let pipeline = SentencePipeline::new(
            &source.tokenizer_file,
            max_length,
            encoder,
            source.pooling.clone(),
            modules,
            pad_id,
            Device::Cpu,
        )?;
        Ok(Self { source, encoder_vars, body, pipeline, dense, normalize })
    }

    /// The decoder settings this model trains with, if it is a decoder.
    pub fn decoder(&self) -> Option<(&DecoderConfig, &DecoderTraining)> {
        match &self.body {
            Body::Decoder(d) => Some((&d.config, &d.training)),
            Body::Encoder => None,
        }
    }

    /// Width of the embeddings.
    pub fn dimension(&self) -> usize {
        self.pipeline.dimension()
    }

    /// The encoder's variables, named as in `model.safetensors`.
    pub fn encoder_vars(&self) -> &VarMap {
        &self.encoder_vars
    }

    /// The Dense modules (loaded and new), in pipeline order.
    pub fn dense_modules(&self) -> &[TrainableDense] {
        &self.dense
    }

    /// The pooling applied to the token states.
    pub fn pooling(&self) -> &Pooling {
        self.pipeline.pooling()
    }

    /// Width of the encoder's token states.
    pub fn hidden_size(&self) -> usize {
        self.pipeline.encoder().hidden_size()
    }

    /// The longest input the transformer's positions allow.
    pub fn max_tokens(&self) -> usize {
        self.pipeline.encoder().max_tokens()
    }

    /// Whether the model ends with a Normalize module.
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// Every trainable variable with a unique name (`encoder.…`, `dense{i}.…`).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out: Vec<(String, Var)> = Vec::new();
        let prefixed = |prefix: &str, map: &VarMap| -> Vec<(String, Var)> {
            map.data()
                .lock()
                .expect("var map lock")
                .iter()
                .map(|(k, v)| (format!("{prefix}.{k}"), v.clone()))
                .collect()
        };
        out.extend(prefixed("encoder", &self.encoder_vars));
        for (i, d) in self.dense.iter().enumerate() {
            out.extend(prefixed(&format!("dense{i}"), &d.vars));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Sentence vectors `(batch, dimension)` (not normalised) of a packed batch.
    pub fn forward(&self, batch: &PackedBatch, mode: &Mode) -> Result<Tensor> {
        Ok(self.pipeline.forward(batch, mode)?)
    }

    /// Sentence vectors of `texts`, cut at the training length, with gradients; dropout
    /// is on in [`Mode::Training`].
    pub fn embed(&self, texts: &[&str], mode: &Mode) -> Result<Tensor> {
        Ok(self.pipeline.embed_texts(texts, mode)?)
    }

    /// An inference copy of the current weights (the fast CPU kernels, no gradients).
    pub fn snapshot(&self, name: &str) -> Result<LocalEmbedder> {
        let frozen = |map: &VarMap| -> std::collections::HashMap<String, Tensor> {
            map.data()
                .lock()
                .expect("var map lock")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
                .collect()
        };
        let encoder = match &self.body {
            Body::Decoder(d) => Box::new(d.model.detached()),
            Body::Encoder => load_encoder(
                VarBuilder::from_tensors(frozen(&self.encoder_vars), DType::F32, &Device::Cpu),
                &self.source.config,
                &CpuInference::default(),
            )?,
        };
        let mut modules = self
            .dense
            .iter()
            .map(|d| {
                Ok(PostModule::Dense(Dense::load(
                    VarBuilder::from_tensors(frozen(&d.vars), DType::F32, &Device::Cpu),
                    &d.config,
                )?))
            })
            .collect::<Result<Vec<_>>>()?;
        if self.normalize {
            modules.push(PostModule::Normalize);
        }
        Ok(LocalEmbedder::assemble(
            self.source.clone(),
            encoder,
            modules,
            name.to_string(),
            LoadOptions::default(),
        )?)
    }
}

/// The decoder of `source` with frozen f32 weights and new LoRA variables in `vars`,
/// initialised as PEFT does: B zero (the model starts as the base), A uniform in
/// `±1/sqrt(in)` (Kaiming-uniform with a = sqrt(5)), here from `training.seed`.
fn load_lora_decoder(
    source: &ModelDir,
    vars: &VarMap,
    training: &DecoderTraining,
) -> Result<DecoderModel> {
    if source.adapter.is_some() {
        return Err(TrainError::Config(format!(
            "{} is a LoRA adapter: train from its base model instead",
            source.path.display()
        )));
    }
    let config = decoder_config(source, training)?;
    let lora = LoraWeights {
        vb: VarBuilder::from_varmap(vars, DType::F32, &Device::Cpu),
        spec: training.lora.clone(),
    };
    let model =
        load_decoder_dir(&config, &source.weight_files, false, Some(lora), &Device::Cpu, false)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(training.seed);
    let data = vars.data().lock().expect("var map lock");
    let mut down: Vec<(&String, &Var)> =
        data.iter().filter(|(name, _)| name.ends_with("lora_A.weight")).collect();
    down.sort_by(|a, b| a.0.cmp(b.0));
    for (_, var) in down {
        let (rank, in_dim) = var.dims2()?;
        let bound = 1.0 / (in_dim as f32).sqrt();
        let values: Vec<f32> =
            (0..rank * in_dim).map(|_| rng.random_range(-bound..bound)).collect();
        var.set(&Tensor::from_vec(values, (rank, in_dim), &Device::Cpu)?)?;
    }
    Ok(model)
}

/// The decoder's configuration as trained: the directory's, causal unless bidirectional.
fn decoder_config(source: &ModelDir, training: &DecoderTraining) -> Result<DecoderConfig> {
    let mut config = DecoderConfig::of(source)?;
    if training.bidirectional {
        config.is_causal = false;
    }
    Ok(config)
}

/// Loads a Dense module directory into fresh variables.
fn load_dense(dir: &Path) -> Result<TrainableDense> {
    let (config, weights) = DenseConfig::from_dir(dir)?;
    let vars = VarMap::new();
    let module = Dense::load(
        VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu).pp("linear"),
        &config,
    )?;
    // SAFETY: a read-only memory map of a file not modified while training starts.
    let st = unsafe { MmapedSafetensors::multi(std::slice::from_ref(&weights))? };
    fill_from(&vars, &st, &[weights], "")?;
    Ok(TrainableDense { config, vars, module })
}

/// A new linear projection (identity activation), randomly initialised.
fn new_projection(in_features: usize, out_features: usize) -> Result<TrainableDense> {
    if out_features == 0 {
        return Err(TrainError::Config("--project must be at least 1".into()));
    }
    let config: DenseConfig = serde_json::from_value(serde_json::json!({
        "in_features": in_features, "out_features": out_features, "bias": true,
        "activation_function": "torch.nn.modules.linear.Identity"
    }))
    .expect("a valid Dense config");
    let vars = VarMap::new();
    let module = Dense::load(
        VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu).pp("linear"),
        &config,
    )?;
    Ok(TrainableDense { config, vars, module })
}

/// Sets every variable of `vars` from the weight files, under the prefix where the
/// checkpoint keeps its encoder.
fn fill_vars(vars: &VarMap, files: &[PathBuf]) -> Result<()> {
    // SAFETY: read-only memory maps of files that are not modified while training starts.
    let st = unsafe { MmapedSafetensors::multi(files)? };
    let prefix = encoder_prefix(|name| st.get(name).is_ok());
    fill_from(vars, &st, files, prefix)
}

fn fill_from(vars: &VarMap, st: &MmapedSafetensors, files: &[PathBuf], prefix: &str) -> Result<()> {
    let data = vars.data().lock().expect("var map lock");
    for (name, var) in data.iter() {
        let full = format!("{prefix}{name}");
        let tensor = st.load(&full, &Device::Cpu).map_err(|_| TrainError::MissingWeight {
            path: files[0].clone(),
            name: full.clone(),
        })?;
        var.set(&tensor.to_dtype(DType::F32)?)?;
    }
    Ok(())
}
