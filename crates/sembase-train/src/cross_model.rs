//! A cross-encoder whose weights are variables: core's `CrossEncoder` assembled over
//! a `VarMap` named as transformers names a `*ForSequenceClassification` checkpoint
//! (`bert.embeddings...`, `bert.pooler.dense.*`, `classifier.*`), so the map is saved
//! as the exported `model.safetensors` without renaming.

use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use sembase_core::cross_encoder::tokenizer_gives_segments;
use sembase_core::models::score_head::HeadNames;
use sembase_core::models::{encoder_prefix, load_encoder, CpuInference};
use sembase_core::{is_cross_encoder, CrossEncoder, CrossEncoderDir, LoadOptions, Mode, ModelDir};
use sembase_embed::ScoreActivation;
use serde_json::Value;

use crate::error::{Result, TrainError};

/// The model being trained and where it came from.
pub struct TrainableCrossEncoder {
    /// The base directory, read as a cross-encoder (its tokenizer, config and names).
    pub source: CrossEncoderDir,
    /// Whether the base already had a head (training continues) or one was made.
    pub continued: bool,
    vars: VarMap,
    model: CrossEncoder,
}

impl TrainableCrossEncoder {
    /// Loads `dir` for training on pairs of at most `max_length` tokens (`None`: the
    /// base's own limit). A cross-encoder continues with its head; a sentence embedding
    /// model gets a new head, as transformers' `from_pretrained` makes one: BERT's
    /// pooler from the checkpoint when it has one, the rest drawn from `seed`.
    pub fn load(dir: &Path, max_length: Option<usize>, seed: u64) -> Result<Self> {
        let continued = is_cross_encoder(dir);
        let raw_config = read_config(dir)?;
        let source = if continued {
            CrossEncoderDir::open(dir)?
        } else {
            new_head_dir(&ModelDir::open(dir)?, &raw_config)?
        };
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        let encoder =
            load_encoder(vb.pp(source.names.encoder), &source.config, &CpuInference::default())?;
        let limit = encoder.max_tokens();
        if let Some(n) = max_length.filter(|&n| n == 0 || n > limit) {
            return Err(TrainError::Config(format!("--max-length {n} is outside 1..={limit}")));
        }
        let options = LoadOptions { max_seq_length: max_length, ..LoadOptions::default() };
        let model = CrossEncoder::assemble(&source, encoder, &vb, "training".into(), &options)?;
        let new = fill_vars(&vars, &source)?;
        // transformers draws new weights with the config's `initializer_range`.
        let std = raw_config.get("initializer_range").and_then(Value::as_f64).unwrap_or(0.02);
        init_new_head(&vars, &new, std, seed)?;
        Ok(Self { source, continued, vars, model })
    }

    /// Every variable under its checkpoint name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out: Vec<(String, Var)> = self
            .vars
            .data()
            .lock()
            .expect("var map lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The variables, as saved into `model.safetensors`.
    pub fn vars(&self) -> &VarMap {
        &self.vars
    }

    /// The token limit of a pair, special tokens included.
    pub fn max_length(&self) -> usize {
        self.model.tokenizer().max_tokens()
    }

    /// `(pairs,)` logits of (query, document) pairs cut at the limit, with gradients;
    /// dropout is on in [`Mode::Training`].
    pub fn score(&self, pairs: &[(&str, &str)], mode: &Mode) -> Result<Tensor> {
        Ok(self.model.score_texts(pairs, mode)?)
    }

    /// An inference copy of the current weights (the fast CPU kernels, no gradients),
    /// built by the same code that loads an exported directory.
    pub fn snapshot(&self, name: &str) -> Result<CrossEncoder> {
        let frozen: std::collections::HashMap<String, Tensor> = self
            .vars
            .data()
            .lock()
            .expect("var map lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        let vb = VarBuilder::from_tensors(frozen, DType::F32, &Device::Cpu);
        let encoder = load_encoder(vb.clone(), &self.source.config, &CpuInference::default())?;
        let options =
            LoadOptions { max_seq_length: Some(self.max_length()), ..LoadOptions::default() };
        Ok(CrossEncoder::assemble(&self.source, encoder, &vb, name.into(), &options)?)
    }
}

/// Sets every variable from the base's weight files: encoder variables (`bert.X`) from
/// `X` under the prefix the checkpoint keeps its encoder at, head variables by their own
/// name (a cross-encoder's) or, under the encoder's name, from the encoder's (BERT's
/// pooler in a sentence embedding model). Returns the head variables the base lacks;
/// a missing encoder weight is an error.
fn fill_vars(vars: &VarMap, source: &CrossEncoderDir) -> Result<Vec<String>> {
    // SAFETY: read-only memory maps of files that are not modified while training starts.
    let st = unsafe { MmapedSafetensors::multi(&source.weight_files)? };
    let prefix = encoder_prefix(|name| st.get(name).is_ok());
    let encoder = format!("{}.", source.names.encoder);
    let is_head = |name: &str| {
        [source.names.dense, source.names.out].iter().any(|h| name.starts_with(&format!("{h}.")))
    };
    let mut missing = Vec::new();
    for (name, var) in vars.data().lock().expect("var map lock").iter() {
        let key = match name.strip_prefix(&encoder) {
            Some(rest) => format!("{prefix}{rest}"),
            None => name.clone(),
        };
        match st.load(&key, &Device::Cpu) {
            Ok(tensor) => var.set(&tensor.to_dtype(DType::F32)?)?,
            Err(_) if is_head(name) => missing.push(name.clone()),
            Err(_) => {
                return Err(TrainError::MissingWeight {
                    path: source.weight_files[0].clone(),
                    name: key,
                })
            }
        }
    }
    missing.sort();
    Ok(missing)
}

/// `config.json` of `dir` as JSON, for the fields the encoder's config does not keep.
fn read_config(dir: &Path) -> Result<Value> {
    let path = dir.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))
}

/// A sentence embedding model read as the start of a cross-encoder, as transformers'
/// `*ForSequenceClassification.from_pretrained` reads it: the same encoder and tokenizer
/// (segment ids where the tokenizer gives them), a head still to be made with the
/// config's `classifier_dropout` (else the hidden dropout), sigmoid scores, and the
/// embedding model's token limit.
fn new_head_dir(model: &ModelDir, raw_config: &Value) -> Result<CrossEncoderDir> {
    let config = &model.config;
    let classifier_dropout = raw_config.get("classifier_dropout").and_then(Value::as_f64);
    Ok(CrossEncoderDir {
        names: HeadNames::for_model_type(&config.model_type)?,
        activation: ScoreActivation::Sigmoid,
        head_dropout: classifier_dropout.map_or(config.hidden_dropout_prob, |p| p as f32),
        max_length: model.max_seq_length,
        segments: config.type_vocab_size >= 2 && tokenizer_gives_segments(&model.path)?,
        path: model.path.clone(),
        config: config.clone(),
        weight_files: model.weight_files.clone(),
        tokenizer_file: model.tokenizer_file.clone(),
    })
}

/// Draws the new head variables as transformers initialises a new head (weights normal
/// with deviation `std`, biases zero), from `seed`, so a run from the same seed replays.
fn init_new_head(vars: &VarMap, names: &[String], std: f64, seed: u64) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data = vars.data().lock().expect("var map lock");
    for name in names {
        let var = &data[name];
        let shape = var.as_tensor().shape().clone();
        let values: Vec<f32> = if name.ends_with(".bias") {
            vec![0.0; shape.elem_count()]
        } else {
            (0..shape.elem_count()).map(|_| (std * standard_normal(&mut rng)) as f32).collect()
        };
        var.set(&Tensor::from_vec(values, shape, &Device::Cpu)?)?;
    }
    Ok(())
}

/// One draw of N(0, 1) (Box-Muller).
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u: f64 = 1.0 - rng.random::<f64>(); // in (0, 1]: the log is finite
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}
