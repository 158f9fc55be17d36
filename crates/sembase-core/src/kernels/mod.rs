//! CPU kernels, apart from the models that call them: candle custom ops for
//! inference (`cpu_*`, int8 and GGUF Q4_1 matmuls) and for training (`train_*`,
//! each with its backward pass), what they share (vectorised math, kernel I/O), and
//! which instruction sets they run in (`cpu_features`).
//! The layers in [`crate::layers`] choose between them and candle's own ops.

pub(crate) mod cpu_attention;
pub mod cpu_features;
pub(crate) mod cpu_linear;
pub(crate) mod cpu_lookup;
pub(crate) mod cpu_norm;
pub(crate) mod fast_math;
pub(crate) mod frozen_linear;
pub(crate) mod frozen_lora;
pub mod int8_linear;
pub(crate) mod kernel_io;
pub(crate) mod q4_1;
pub(crate) mod train_attention;
#[cfg(test)]
mod train_check;
pub(crate) mod train_dropout;
pub(crate) mod train_gelu;
pub(crate) mod train_linear;
pub(crate) mod train_norm;
pub(crate) mod train_rope;
