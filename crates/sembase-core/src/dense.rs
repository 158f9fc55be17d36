//! sentence-transformers' `Dense` module: a linear map with an activation,
//! applied to the pooled vector (e.g. a learned projection to fewer dimensions).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::files::read_json;
use crate::layers::Linear;

/// `N_Dense/config.json`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DenseConfig {
    pub in_features: usize,
    pub out_features: usize,
    #[serde(default = "yes")]
    pub bias: bool,
    /// A torch class path such as `torch.nn.modules.activation.Tanh`.
    #[serde(default = "identity")]
    pub activation_function: String,
}

fn yes() -> bool {
    true
}
fn identity() -> String {
    "torch.nn.modules.linear.Identity".into()
}

/// The activation after the linear map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DenseActivation {
    Identity,
    Tanh,
}

impl DenseConfig {
    /// The config of the Dense module directory `dir` and its weights file.
    pub fn from_dir(dir: &Path) -> Result<(Self, PathBuf)> {
        let cfg: DenseConfig = read_json(&dir.join("config.json"))?;
        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            return Err(Error::Unsupported(format!(
                "{}: Dense module weights must be in model.safetensors (pytorch_model.bin is not read)",
                dir.display()
            )));
        }
        Ok((cfg, weights))
    }
}

/// A loaded Dense module.
#[derive(Debug, Clone)]
pub struct Dense {
    linear: Linear,
    activation: DenseActivation,
}

impl Dense {
    /// Loads `config.json` and `model.safetensors` (weights `linear.weight`,
    /// `linear.bias`) from a module directory.
    pub fn load_dir(dir: &Path, device: &Device) -> Result<Self> {
        let (cfg, weights) = DenseConfig::from_dir(dir)?;
        // SAFETY: the file is memory-mapped read-only; it must not be modified while loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device)? };
        Self::load(vb.pp("linear"), &cfg)
    }

    /// Loads from a var builder pointing at the `linear` weights.
    pub fn load(vb: VarBuilder, cfg: &DenseConfig) -> Result<Self> {
        let activation = match cfg.activation_function.rsplit('.').next() {
            Some("Identity") => DenseActivation::Identity,
            Some("Tanh") => DenseActivation::Tanh,
            _ => {
                return Err(Error::Unsupported(format!(
                    "Dense activation {:?}",
                    cfg.activation_function
                )))
            }
        };
        Ok(Self {
            linear: Linear::load(vb, cfg.in_features, cfg.out_features, cfg.bias)?,
            activation,
        })
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.linear.out_dim()
    }

    /// `(batch, in)` -> `(batch, out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.linear.forward(x)?;
        Ok(match self.activation {
            DenseActivation::Identity => y,
            DenseActivation::Tanh => y.tanh()?,
        })
    }
}
