//! A PEFT LoRA adapter directory (`adapter_config.json` + `adapter_model.safetensors`)
//! over a decoder base: what the adapter is, where its base lies, and its tensors under
//! one naming whatever module path PEFT wrapped (`base_model.model.layers...` for a
//! `*Model` base, `base_model.model.model.layers...` for a `*ForCausalLM` one).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::files::read_json;
use crate::layers::{LoraSpec, LORA_TARGETS};
use crate::weights::lora_tensor_name;

/// The file naming an adapter's settings.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The file holding an adapter's matrices.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// `target_modules`: PEFT takes a list of names, or one string (a name, a regex, or
/// `all-linear`); a regex is not read here.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TargetModules {
    Names(Vec<String>),
    One(String),
}

/// The fields of `adapter_config.json` that sembase reads; any setting it cannot honour
/// is refused rather than ignored.
#[derive(Debug, Clone, Deserialize)]
struct AdapterConfig {
    #[serde(default)]
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f32,
    target_modules: TargetModules,
    base_model_name_or_path: Option<String>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    layers_to_transform: Option<serde_json::Value>,
}

/// A LoRA adapter directory, checked.
#[derive(Debug, Clone)]
pub struct AdapterDir {
    pub spec: LoraSpec,
    /// `adapter_model.safetensors`.
    pub weights: PathBuf,
    /// The base model's directory.
    pub base: PathBuf,
}

/// Whether `dir` holds a LoRA adapter.
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file()
}

impl AdapterDir {
    /// Reads `dir`'s adapter config. The base is `base_model_name_or_path`: a directory,
    /// absolute or relative to `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join(ADAPTER_CONFIG);
        let config: AdapterConfig = read_json(&config_path)?;
        let refuse = |what: &str| {
            Err(Error::Unsupported(format!("{}: {what} is not supported", config_path.display())))
        };
        if config.peft_type.as_deref().is_some_and(|t| t != "LORA") {
            return refuse(&format!("peft_type {:?}", config.peft_type.unwrap_or_default()));
        }
        if config.use_dora {
            return refuse("use_dora");
        }
        if config.fan_in_fan_out {
            return refuse("fan_in_fan_out");
        }
        if config.bias.as_deref().is_some_and(|b| b != "none") {
            return refuse("a trained bias");
        }
        if config.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return refuse("modules_to_save");
        }
        if config.layers_to_transform.as_ref().is_some_and(|l| !l.is_null()) {
            return refuse("layers_to_transform");
        }
        let targets = match config.target_modules {
            TargetModules::Names(names) => names,
            TargetModules::One(all) if all == "all-linear" => {
                LORA_TARGETS.iter().map(|t| t.to_string()).collect()
            }
            TargetModules::One(name) if LORA_TARGETS.contains(&name.as_str()) => vec![name],
            TargetModules::One(pattern) => {
                return refuse(&format!("target_modules pattern {pattern:?} (give a list)"))
            }
        };
        let mut spec = LoraSpec::new(config.r, config.lora_alpha, config.lora_dropout, targets)?;
        spec.rank_stabilized = config.use_rslora;
        let named = config.base_model_name_or_path.ok_or_else(|| {
            Error::Unsupported(format!("{}: no base_model_name_or_path", config_path.display()))
        })?;
        let base = dir.join(&named);
        if !base.is_dir() {
            return Err(Error::Unsupported(format!(
                "{}: base model {named:?} is not a directory here (set base_model_name_or_path to the base's directory)",
                config_path.display()
            )));
        }
        Ok(Self { spec, weights: dir.join(ADAPTER_WEIGHTS), base })
    }

    /// The adapter's matrices, named as [`lora_tensor_name`] names them, in f32.
    pub fn tensors(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let loaded = candle_core::safetensors::load(&self.weights, device)
            .map_err(|e| Error::Unsupported(format!("{}: {e}", self.weights.display())))?;
        loaded
            .into_iter()
            .map(|(name, tensor)| Ok((self.canonical_name(&name)?, tensor.to_dtype(DType::F32)?)))
            .collect()
    }

    /// `name` without PEFT's wrapper prefixes, checked to be a LoRA matrix of a target.
    fn canonical_name(&self, name: &str) -> Result<String> {
        let unknown = || {
            Error::Unsupported(format!(
                "{}: tensor {name:?} is not a LoRA matrix of {}",
                self.weights.display(),
                self.spec.targets.join(", ")
            ))
        };
        let inner = name.strip_prefix("base_model.model.").unwrap_or(name);
        let (module, matrix) = inner
            .strip_suffix(".weight")
            .and_then(|m| m.rsplit_once('.'))
            .filter(|(_, matrix)| matches!(*matrix, "lora_A" | "lora_B"))
            .ok_or_else(unknown)?;
        let leaf = module.rsplit('.').next().unwrap_or_default();
        if !self.spec.targets_module(leaf) {
            return Err(unknown());
        }
        Ok(lora_tensor_name(module, matrix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(config: serde_json::Value) -> Result<AdapterDir> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("base")).unwrap();
        std::fs::write(dir.path().join(ADAPTER_CONFIG), config.to_string()).unwrap();
        AdapterDir::open(dir.path())
    }

    #[test]
    fn reads_peft_configs_and_refuses_what_it_cannot_honour() {
        let ok = serde_json::json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
            "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "base"});
        let read = adapter(ok.clone()).unwrap();
        assert_eq!((read.spec.rank, read.spec.scale()), (8, 2.0));
        let all = serde_json::json!({"r": 4, "lora_alpha": 4, "target_modules": "all-linear",
            "base_model_name_or_path": "base", "use_rslora": true});
        let read = adapter(all).unwrap();
        assert_eq!((read.spec.targets.len(), read.spec.scale()), (7, 2.0));
        for (key, value) in [
            ("use_dora", serde_json::json!(true)),
            ("modules_to_save", serde_json::json!(["score"])),
            ("target_modules", serde_json::json!(".*proj")),
            ("target_modules", serde_json::json!(["lm_head"])),
            ("base_model_name_or_path", serde_json::json!("elsewhere")),
            ("r", serde_json::json!(0)),
        ] {
            let mut bad = ok.clone();
            bad[key] = value;
            assert!(adapter(bad).is_err(), "{key} accepted");
        }
    }

    #[test]
    fn tensor_names_lose_the_wrapper_prefixes() {
        let read = adapter(serde_json::json!({"r": 2, "lora_alpha": 4,
            "target_modules": ["q_proj"], "base_model_name_or_path": "base"}))
        .unwrap();
        let want = "base_model.model.layers.3.self_attn.q_proj.lora_A.weight";
        for name in [
            "base_model.model.layers.3.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight",
            "layers.3.self_attn.q_proj.lora_A.weight",
        ] {
            assert_eq!(read.canonical_name(name).unwrap(), want);
        }
        assert!(read
            .canonical_name("base_model.model.layers.3.mlp.up_proj.lora_A.weight")
            .is_err());
        assert!(read.canonical_name("base_model.model.layers.3.self_attn.q_proj.weight").is_err());
    }
}
