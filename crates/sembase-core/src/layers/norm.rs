//! Normalisations over the last dimension: layer norm (encoders) and RMS norm (decoders).

use std::sync::OnceLock;

use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;

use super::on_cpu_in_f32;
use crate::error::Result;
use crate::kernels::cpu_norm::{self, LayerNormKernel};
use crate::kernels::train_norm;

/// Layer normalisation over the last dimension, with learned scale and shift.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    /// Scale and shift as host values for the CPU inference kernel, read on first use.
    kernel_params: OnceLock<(Vec<f32>, Vec<f32>)>,
}

impl LayerNorm {
    /// Loads `weight` and `bias` (older checkpoints: `gamma` and `beta`).
    pub fn load(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let (w, b) =
            if vb.contains_tensor("gamma") { ("gamma", "beta") } else { ("weight", "bias") };
        let weight = vb.get_with_hints(dim, w, candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, b, candle_nn::Init::Const(0.0))?;
        Ok(Self { weight, bias, eps, kernel_params: OnceLock::new() })
    }

    /// Normalises `x + residual` over the last dimension: one CPU kernel for f32
    /// inference, composed ops otherwise.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        match self.kernel_params(&[x, residual])? {
            Some((weight, bias)) => {
                let op = LayerNormKernel { weight, bias, eps: self.eps as f32 };
                Ok(cpu_norm::residual_layer_norm(&x.contiguous()?, &residual.contiguous()?, op)?)
            }
            None => self.forward(&(x + residual)?),
        }
    }

    /// Normalises `x` over its last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.track_op() || self.weight.track_op() {
            return self.forward_differentiable(x);
        }
        match self.kernel_params(&[x])? {
            Some((weight, bias)) => Ok(cpu_norm::layer_norm(
                &x.contiguous()?,
                LayerNormKernel { weight, bias, eps: self.eps as f32 },
            )?),
            None => Ok(candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32)?),
        }
    }

    /// Scale and shift as host values when `inputs` can take the CPU inference kernel
    /// (f32 on the CPU, outside any gradient graph).
    fn kernel_params(&self, inputs: &[&Tensor]) -> Result<Option<(&[f32], &[f32])>> {
        let tracked =
            inputs.iter().any(|t| t.track_op()) || self.weight.track_op() || self.bias.track_op();
        let f32s =
            inputs.iter().chain([&&self.weight, &&self.bias]).all(|t| t.dtype() == DType::F32);
        if tracked || !f32s || !inputs.iter().all(|t| t.device().is_cpu()) {
            return Ok(None);
        }
        let (weight, bias) = match self.kernel_params.get() {
            Some(params) => params,
            None => {
                let params = (self.weight.to_vec1::<f32>()?, self.bias.to_vec1::<f32>()?);
                self.kernel_params.get_or_init(|| params)
            }
        };
        Ok(Some((weight, bias)))
    }

    fn forward_differentiable(&self, x: &Tensor) -> Result<Tensor> {
        if on_cpu_in_f32(&[x, &self.weight, &self.bias]) {
            return Ok(train_norm::layer_norm(x, &self.weight, &self.bias, self.eps as f32)?);
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(variance + self.eps)?.sqrt()?)?;
        Ok(normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

/// Root-mean-square normalisation over the last dimension with a learned scale.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// The norm with scale `weight` `(dim)`.
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps }
    }

    /// Normalises `x`; in a gradient graph through the training kernel on the CPU in
    /// f32, composed of differentiable ops elsewhere.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !x.track_op() && !self.weight.track_op() {
            Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)?)
        } else if on_cpu_in_f32(&[x, &self.weight]) {
            Ok(train_norm::rms_norm(x, &self.weight, self.eps as f32)?)
        } else {
            let inv_rms = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
            Ok(x.broadcast_mul(&inv_rms)?.broadcast_mul(&self.weight)?)
        }
    }
}
