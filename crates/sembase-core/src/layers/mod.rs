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

/// Whether every tensor is f32 on the CPU (what the training kernels take).
fn on_cpu_in_f32(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}
