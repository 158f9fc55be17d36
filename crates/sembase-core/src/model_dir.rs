//! A sentence-transformers / Hugging Face model directory: which files hold
//! what, and the module pipeline after the transformer.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::adapter_dir::{is_adapter_dir, AdapterDir};
use crate::error::{Error, Result};
use crate::files::{read_json, read_json_if_present};
use crate::models::TransformerConfig;
use crate::pooling::{Pooling, PoolingConfig, PoolingMode};

/// One entry of `modules.json`.
#[derive(Debug, Clone, Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// `sentence_bert_config.json`.
#[derive(Debug, Clone, Default, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
    /// Values set over `config.json` when the model loads (sentence-transformers passes
    /// them to `AutoConfig`), e.g. `is_causal: false` for a bidirectional adapter.
    #[serde(default)]
    config_kwargs: serde_json::Map<String, serde_json::Value>,
}

/// `config_sentence_transformers.json`.
#[derive(Debug, Clone, Default, Deserialize)]
struct SentenceTransformersConfig {
    #[serde(default)]
    prompts: HashMap<String, String>,
    default_prompt_name: Option<String>,
}

/// `model.safetensors.index.json` (sharded weights).
#[derive(Debug, Clone, Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

/// A module that runs on the pooled output of the transformer.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadModule {
    /// A Dense module stored in this sub-directory.
    Dense(PathBuf),
    Normalize,
}

/// Everything sembase reads from a model directory, parsed and checked.
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// The directory itself.
    pub path: PathBuf,
    /// `config.json`.
    pub config: TransformerConfig,
    /// `config.json` as the model runs: the directory's own (an adapter directory's base's
    /// when it has none, as PEFT saves them), with `sentence_bert_config.json`'s
    /// `config_kwargs` set over it.
    pub config_json: serde_json::Value,
    /// The transformer's weights: one file or the shards of an index (the base's, for
    /// an adapter directory).
    pub weight_files: Vec<PathBuf>,
    /// The LoRA adapter this directory holds over a decoder base, if it is one.
    pub adapter: Option<AdapterDir>,
    /// `tokenizer.json`.
    pub tokenizer_file: PathBuf,
    /// Token limit from `sentence_bert_config.json`, if given.
    pub max_seq_length: Option<usize>,
    /// How token states become one vector (the first module after the transformer).
    pub pooling: Pooling,
    /// The modules after pooling, in order.
    pub head: Vec<HeadModule>,
    /// Named prompts (e.g. `query` -> `query: `).
    pub prompts: HashMap<String, String>,
    /// The prompt applied when none is named.
    pub default_prompt_name: Option<String>,
}

impl ModelDir {
    /// Reads and checks a model directory.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_dir() {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a model directory"),
            });
        }
        let adapter = is_adapter_dir(path).then(|| AdapterDir::open(path)).transpose()?;
        let weights_dir = adapter.as_ref().map_or(path, |a| a.base.as_path());
        let tokenizer_file = path.join("tokenizer.json");
        if !tokenizer_file.exists() {
            return Err(Error::Unsupported(format!(
                "{}: no tokenizer.json (only fast tokenizers are read)",
                path.display()
            )));
        }
        let sbert: SentenceBertConfig =
            read_json_if_present(&path.join("sentence_bert_config.json"))?.unwrap_or_default();
        let st: SentenceTransformersConfig =
            read_json_if_present(&path.join("config_sentence_transformers.json"))?
                .unwrap_or_default();
        let (pooling, head) = head_modules(path)?;
        let config_file = match path.join("config.json") {
            own if own.exists() || adapter.is_none() => own,
            _ => weights_dir.join("config.json"),
        };
        let mut config_json: serde_json::Value = read_json(&config_file)?;
        if let Some(fields) = config_json.as_object_mut() {
            fields.extend(sbert.config_kwargs);
        }
        let config = serde_json::from_value(config_json.clone())
            .map_err(|e| Error::Config { path: config_file, message: e.to_string() })?;
        Ok(Self {
            weight_files: weight_files(weights_dir)?,
            adapter,
            pooling,
            head,
            path: path.to_path_buf(),
            config,
            config_json,
            tokenizer_file,
            max_seq_length: sbert.max_seq_length,
            prompts: st.prompts,
            default_prompt_name: st.default_prompt_name,
        })
    }
}

/// `model.safetensors`, the shard files named by `model.safetensors.index.json`,
/// or a single `*.gguf` file (decoder models).
pub(crate) fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::Io { path: dir.to_path_buf(), source: e })?;
    let mut ggufs: Vec<PathBuf> = entries
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    if ggufs.len() == 1 && !dir.join("model.safetensors.index.json").exists() {
        return Ok(ggufs.split_off(0));
    }
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.exists() {
        let index: ShardIndex = read_json(&index_path)?;
        let shards: BTreeSet<&String> = index.weight_map.values().collect();
        return Ok(shards.into_iter().map(|s| dir.join(s)).collect());
    }
    Err(Error::Unsupported(format!(
        "{}: no model.safetensors, model.safetensors.index.json or single *.gguf (pytorch_model.bin is not read)",
        dir.display()
    )))
}

/// The pooling and the modules after it. Without `modules.json` the directory is a
/// plain Hugging Face model, pooled by mean as sentence-transformers does.
fn head_modules(dir: &Path) -> Result<(Pooling, Vec<HeadModule>)> {
    let modules_path = dir.join("modules.json");
    let Some(entries) = read_json_if_present::<Vec<ModuleEntry>>(&modules_path)? else {
        return Ok((Pooling::new(PoolingMode::Mean), Vec::new()));
    };
    let config_error =
        |message: &str| Error::Config { path: modules_path.clone(), message: message.into() };
    let (mut pooling, mut head) = (None, Vec::new());
    for entry in entries {
        let kind = entry.kind.rsplit('.').next().unwrap_or_default();
        match kind {
            "Transformer" => {}
            "Pooling" if pooling.is_some() => {
                return Err(config_error("a second Pooling module is not supported"))
            }
            "Pooling" if !head.is_empty() => {
                return Err(config_error("the first module after the Transformer must be Pooling"))
            }
            "Pooling" => {
                let cfg: PoolingConfig = read_json(&dir.join(&entry.path).join("config.json"))?;
                pooling = Some(Pooling::from_config(&cfg)?);
            }
            "Dense" => head.push(HeadModule::Dense(dir.join(&entry.path))),
            "Normalize" => head.push(HeadModule::Normalize),
            _ => {
                return Err(Error::Config {
                    path: modules_path,
                    message: format!("module type {:?} is not supported", entry.kind),
                })
            }
        }
    }
    let pooling = pooling
        .ok_or_else(|| config_error("the first module after the Transformer must be Pooling"))?;
    Ok((pooling, head))
}
