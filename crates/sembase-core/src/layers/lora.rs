//! LoRA (Hu et al. 2021): a frozen linear map plus a trained low-rank update,
//! `y = x W^T + scale * dropout(x) A^T B^T` with `A` `(rank, in)`, `B` `(out, rank)` and
//! `scale = alpha / rank` (`alpha / sqrt(rank)` for rsLoRA), as PEFT defines it. The
//! update is kept apart from `W` so a quantised or mapped base stays as it is and
//! several adapters can share one base.

use candle_core::Tensor;

use super::{on_cpu_in_f32, over_last_dim, Activation, DecoderLinear, Dropout};
use crate::error::{Error, Result};
use crate::kernels::frozen_lora;
use crate::mode::Mode;

/// What a LoRA adapter is: its rank, scaling, dropout and the matrices it adapts.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    /// Dropout on the adapter's input, in training only.
    pub dropout: f32,
    /// Names of the adapted projections (`q_proj`, `gate_proj`, ...).
    pub targets: Vec<String>,
    /// rsLoRA scaling: `alpha / sqrt(rank)` instead of `alpha / rank`.
    pub rank_stabilized: bool,
}

/// The projections of the decoder stack an adapter may target.
pub const LORA_TARGETS: [&str; 7] =
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

impl LoraSpec {
    /// An adapter of `rank` with `alpha`, `dropout` and `targets`, checked.
    pub fn new(rank: usize, alpha: f64, dropout: f32, targets: Vec<String>) -> Result<Self> {
        let spec = Self { rank, alpha, dropout, targets, rank_stabilized: false };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the rank, scaling, dropout and target names.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::Unsupported("LoRA rank must be at least 1".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::Unsupported(format!("LoRA alpha {} must be positive", self.alpha)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Unsupported(format!(
                "LoRA dropout {} must be in [0, 1)",
                self.dropout
            )));
        }
        if self.targets.is_empty() {
            return Err(Error::Unsupported("LoRA needs at least one target matrix".into()));
        }
        if let Some(bad) = self.targets.iter().find(|t| !LORA_TARGETS.contains(&t.as_str())) {
            return Err(Error::Unsupported(format!(
                "LoRA target {bad:?} is not a decoder projection (choose from {})",
                LORA_TARGETS.join(", ")
            )));
        }
        Ok(())
    }

    /// The factor the low-rank product is multiplied by.
    pub fn scale(&self) -> f64 {
        if self.rank_stabilized {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// Whether the projection named `module` (the last part of its path) is adapted.
    pub fn targets_module(&self, module: &str) -> bool {
        self.targets.iter().any(|t| t == module)
    }
}

/// The low-rank update of one linear map.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// `(rank, in)`.
    a: Tensor,
    /// `(out, rank)`.
    b: Tensor,
    scale: f64,
    dropout: Dropout,
}

impl LoraAdapter {
    /// The update with down-projection `a` `(rank, in)` and up-projection `b` `(out, rank)`.
    pub fn new(a: Tensor, b: Tensor, spec: &LoraSpec) -> Result<Self> {
        let ((rank_a, _), (_, rank_b)) = (a.dims2()?, b.dims2()?);
        if rank_a != spec.rank || rank_b != spec.rank {
            return Err(Error::Unsupported(format!(
                "LoRA matrices of rank {rank_a}/{rank_b}, the adapter's config says {}",
                spec.rank
            )));
        }
        Ok(Self { a, b, scale: spec.scale(), dropout: Dropout::new(spec.dropout) })
    }

    /// `scale * dropout(x) A^T B^T` over the last dimension of `x`.
    pub fn forward(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        over_last_dim(x, self.b.dim(0)?, |x| {
            let low = self.dropout.forward(x, mode)?.matmul(&self.a.t()?)?;
            Ok((low.matmul(&self.b.t()?)? * self.scale)?)
        })
    }

    /// `base(x)` plus this update as one op (`frozen_lora`) when training on the CPU in
    /// f32 over a base that has a frozen f32 form; `None` otherwise.
    fn fused_with(&self, base: &DecoderLinear, x: &Tensor, mode: &Mode) -> Result<Option<Tensor>> {
        let training = x.track_op() || self.a.track_op() || self.b.track_op();
        if !training || !on_cpu_in_f32(&[x, &self.a, &self.b]) {
            return Ok(None);
        }
        let Some(map) = base.frozen_map()? else {
            return Ok(None);
        };
        let rate = self.dropout.rate(mode);
        // Drawn only when dropping, as the dropout layer does, so runs replay alike.
        let seed = if rate > 0.0 { mode.next_dropout_seed() } else { 0 };
        let update = frozen_lora::Update { scale: self.scale as f32, rate, seed };
        let y = over_last_dim(x, self.b.dim(0)?, |x| {
            Ok(frozen_lora::linear(x, &self.a, &self.b, &map, update)?)
        })?;
        Ok(Some(y))
    }

    /// A copy outside any gradient graph (for inference on trained weights).
    pub fn detached(&self) -> Self {
        Self { a: self.a.detach(), b: self.b.detach(), ..self.clone() }
    }
}

/// A projection of the decoder stack: the base map and, when adapted, its LoRA update.
#[derive(Debug, Clone)]
pub struct AdaptedLinear {
    pub base: DecoderLinear,
    pub adapter: Option<LoraAdapter>,
}

impl AdaptedLinear {
    /// Applies the map (base plus update) over the last dimension, then `activation`.
    pub fn forward_then(
        &self,
        x: &Tensor,
        activation: Option<Activation>,
        mode: &Mode,
    ) -> Result<Tensor> {
        let Some(adapter) = &self.adapter else {
            return self.base.forward_then(x, activation);
        };
        let y = match adapter.fused_with(&self.base, x, mode)? {
            Some(y) => y,
            None => (self.base.forward(x)? + adapter.forward(x, mode)?)?,
        };
        match activation {
            Some(a) => a.forward(&y),
            None => Ok(y),
        }
    }

    /// Applies the map over the last dimension.
    pub fn forward(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        self.forward_then(x, None, mode)
    }

    /// The same map with its update taken out of any gradient graph.
    pub fn detached(&self) -> Self {
        Self { base: self.base.clone(), adapter: self.adapter.as_ref().map(LoraAdapter::detached) }
    }
}
