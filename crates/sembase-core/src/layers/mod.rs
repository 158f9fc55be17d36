//! Building blocks shared by the architectures: linear maps, norms, activations,
//! dropout and embedding look-ups, each usable for inference and training.
//!
//! Training needs a backward pass through every op. candle's fused layer norm and
//! last-dim softmax have none, so when a tensor takes part in a gradient graph
//! (`track_op`), these blocks switch to differentiable ops: the training kernels of
//! [`crate::kernels`] on the CPU, compositions of candle ops elsewhere.

mod activation;
mod dropout;
mod embedding;
pub(crate) mod gguf_linear;
mod linear;
mod lora;
mod norm;

use candle_core::{DType, Tensor};

pub use activation::{softmax_last_dim, Activation};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use gguf_linear::DecoderLinear;
pub use linear::{Linear, LinearWeights};
pub use lora::{AdaptedLinear, LoraAdapter, LoraSpec, LORA_TARGETS};
pub use norm::{LayerNorm, RmsNorm};

/// `map` applied to `x` with its leading dimensions flattened into rows `(rows, in)`,
/// the result `(rows, out_dim)` given `x`'s leading dimensions back.
fn over_last_dim(
    x: &Tensor,
    out_dim: usize,
    map: impl FnOnce(&Tensor) -> crate::error::Result<Tensor>,
) -> crate::error::Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let in_dim = *dims.last().unwrap_or(&1);
    let y = map(&x.reshape((x.elem_count() / in_dim.max(1), in_dim))?)?;
    *dims.last_mut().ok_or_else(|| candle_core::Error::Msg("a map over a scalar".into()))? =
        out_dim;
    Ok(y.reshape(dims)?)
}

/// Whether every tensor is f32 on the CPU (what the training kernels take).
fn on_cpu_in_f32(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}
