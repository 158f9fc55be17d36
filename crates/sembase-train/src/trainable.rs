//! A sentence-transformers model with its weights in variables: the encoder,
//! pooling and any Dense modules, plus an optional new projection.

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use sembase_core::dense::{Dense, DenseConfig};
use sembase_core::model_dir::{HeadModule, ModelDir};
use sembase_core::models::{load_encoder, CpuInference, TextEncoder};
use sembase_core::pooling::Pooling;
use sembase_core::tokenize::TextTokenizer;
use sembase_core::local::PostModule;
use sembase_core::{LoadOptions, LocalEmbedder, Truncation};

use crate::error::{Result, TrainError};

/// Where checkpoints keep the prefix-free encoder names (`embeddings.…`).
const ENCODER_PREFIXES: [&str; 6] = ["", "bert.", "roberta.", "xlm_roberta.", "mpnet.", "model."];

/// A Dense module whose weights are variables.
pub struct TrainableDense {
    pub config: DenseConfig,
    pub vars: VarMap,
    pub module: Dense,
}

/// The model being trained.
pub struct TrainableModel {
    /// The directory it was loaded from (config, tokenizer, prompts).
    pub source: ModelDir,
    encoder_vars: VarMap,
    encoder: Box<dyn TextEncoder>,
    pooling: Pooling,
    dense: Vec<TrainableDense>,
    normalize: bool,
    tokenizer: TextTokenizer,
    pad_id: u32,
}

impl TrainableModel {
    /// Loads the model in `dir` for training on inputs of at most `max_length`
    /// tokens; `project` appends a new Dense projection to that many dimensions.
    pub fn load(dir: &Path, max_length: usize, project: Option<usize>) -> Result<Self> {
        let source = ModelDir::open(dir)?;
        let encoder_vars = VarMap::new();
        let encoder = load_encoder(VarBuilder::from_varmap(&encoder_vars, DType::F32, &Device::Cpu), &source.config, &CpuInference::default())?;
        fill_vars(&encoder_vars, &source.weight_files, &ENCODER_PREFIXES)?;
        let limit = encoder.max_tokens().min(source.max_seq_length.unwrap_or(usize::MAX));
        if max_length == 0 || max_length > limit {
            return Err(TrainError::Config(format!("--max-length {max_length} is outside 1..={limit}")));
        }
        let tokenizer = TextTokenizer::load(&source.tokenizer_file, max_length)?;
        let mut head = source.head.iter();
        let Some(HeadModule::Pooling(pooling)) = head.next() else {
            return Err(TrainError::Config("the first module after the transformer must be Pooling".into()));
        };
        let mut width = pooling.output_dim(encoder.hidden_size());
        let (mut dense, mut normalize) = (Vec::new(), false);
        for module in head {
            match module {
                HeadModule::Dense(path) => {
                    let d = load_dense(path)?;
                    width = d.config.out_features;
                    dense.push(d);
                }
                HeadModule::Normalize => normalize = true,
                HeadModule::Pooling(_) => return Err(TrainError::Config("a second Pooling module".into())),
            }
        }
        if let Some(out) = project {
            dense.push(new_projection(width, out)?);
        }
        Ok(Self {
            pad_id: source.config.pad_token_id.unwrap_or(0),
            pooling: pooling.clone(),
            source,
            encoder_vars,
            encoder,
            dense,
            normalize,
            tokenizer,
        })
    }

    /// Width of the embeddings.
    pub fn dimension(&self) -> usize {
        self.dense.last().map(|d| d.config.out_features).unwrap_or_else(|| self.pooling.output_dim(self.encoder.hidden_size()))
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
        &self.pooling
    }

    /// Width of the encoder's token states.
    pub fn hidden_size(&self) -> usize {
        self.encoder.hidden_size()
    }

    /// Whether the model ends with a Normalize module.
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// Every trainable variable with a unique name (`encoder.…`, `dense{i}.…`).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out: Vec<(String, Var)> = Vec::new();
        let prefixed = |prefix: &str, map: &VarMap| -> Vec<(String, Var)> {
            map.data().lock().expect("var map lock").iter().map(|(k, v)| (format!("{prefix}.{k}"), v.clone())).collect()
        };
        out.extend(prefixed("encoder", &self.encoder_vars));
        for (i, d) in self.dense.iter().enumerate() {
            out.extend(prefixed(&format!("dense{i}"), &d.vars));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Sentence vectors `(batch, dimension)` (not normalised) for right-padded ids.
    pub fn forward_ids(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let states = self.encoder.forward(ids, mask, train)?;
        let mut pooled = self.pooling.forward(&states, mask)?;
        for d in &self.dense {
            pooled = d.module.forward(&pooled)?;
        }
        Ok(pooled)
    }

    /// Tokenizes `texts` (cut at the training length) into padded ids and a mask.
    pub fn batch(&self, texts: &[&str]) -> Result<(Tensor, Tensor)> {
        let sequences = self.tokenizer.encode_batch(texts, Truncation::Truncate)?;
        let width = sequences.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let (mut ids, mut mask) = (Vec::with_capacity(texts.len() * width), Vec::with_capacity(texts.len() * width));
        for seq in &sequences {
            ids.extend(seq.iter().copied().chain(std::iter::repeat_n(self.pad_id, width - seq.len())));
            mask.extend(std::iter::repeat_n(1u32, seq.len()).chain(std::iter::repeat_n(0, width - seq.len())));
        }
        Ok((Tensor::from_vec(ids, (texts.len(), width), &Device::Cpu)?, Tensor::from_vec(mask, (texts.len(), width), &Device::Cpu)?))
    }

    /// Sentence vectors of `texts` in training mode (dropout on), with gradients.
    pub fn embed_train(&self, texts: &[&str]) -> Result<Tensor> {
        let (ids, mask) = self.batch(texts)?;
        self.forward_ids(&ids, &mask, true)
    }

    /// An inference copy of the current weights (the fast CPU kernels, no gradients).
    pub fn snapshot(&self, name: &str) -> Result<LocalEmbedder> {
        let frozen = |map: &VarMap| -> std::collections::HashMap<String, Tensor> {
            map.data().lock().expect("var map lock").iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect()
        };
        let encoder = load_encoder(VarBuilder::from_tensors(frozen(&self.encoder_vars), DType::F32, &Device::Cpu), &self.source.config, &CpuInference::default())?;
        let mut modules = self
            .dense
            .iter()
            .map(|d| Ok(PostModule::Dense(Dense::load(VarBuilder::from_tensors(frozen(&d.vars), DType::F32, &Device::Cpu), &d.config)?)))
            .collect::<Result<Vec<_>>>()?;
        if self.normalize {
            modules.push(PostModule::Normalize);
        }
        Ok(LocalEmbedder::assemble(self.source.clone(), encoder, self.pooling.clone(), modules, name.to_string(), LoadOptions::default())?)
    }
}

/// Loads a Dense module directory into fresh variables.
fn load_dense(dir: &Path) -> Result<TrainableDense> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| TrainError::io(&config_path, e))?;
    let config: DenseConfig = serde_json::from_str(&text).map_err(|e| TrainError::Config(format!("{}: {e}", config_path.display())))?;
    let vars = VarMap::new();
    let module = Dense::load(VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu).pp("linear"), &config)?;
    let weights = dir.join("model.safetensors");
    if !weights.exists() {
        return Err(TrainError::Config(format!("{}: Dense weights must be in model.safetensors", dir.display())));
    }
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
    let module = Dense::load(VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu).pp("linear"), &config)?;
    Ok(TrainableDense { config, vars, module })
}

/// Sets every variable of `vars` from the weight files, finding the prefix
/// (among `prefixes`) under which the checkpoint stores them.
fn fill_vars(vars: &VarMap, files: &[PathBuf], prefixes: &[&str]) -> Result<()> {
    // SAFETY: read-only memory maps of files that are not modified while training starts.
    let st = unsafe { MmapedSafetensors::multi(files)? };
    let probe = "embeddings.word_embeddings.weight";
    let prefix = prefixes.iter().find(|p| st.get(&format!("{p}{probe}")).is_ok()).copied().unwrap_or("");
    fill_from(vars, &st, files, prefix)
}

fn fill_from(vars: &VarMap, st: &MmapedSafetensors, files: &[PathBuf], prefix: &str) -> Result<()> {
    let data = vars.data().lock().expect("var map lock");
    for (name, var) in data.iter() {
        let full = format!("{prefix}{name}");
        let tensor = st
            .load(&full, &Device::Cpu)
            .map_err(|_| TrainError::MissingWeight { path: files[0].clone(), name: full.clone() })?;
        var.set(&tensor.to_dtype(DType::F32)?)?;
    }
    Ok(())
}
