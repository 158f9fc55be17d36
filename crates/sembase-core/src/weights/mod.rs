//! Where weights are read from: memory-mapped safetensors (tables and half-precision
//! matrices read in place), memory-mapped GGUF files and their word tables, and the
//! decoders' weight naming across both.

pub mod decoder_weights;
pub(crate) mod gguf_names;
pub mod mapped_gguf;
pub mod mapped_weights;
pub(crate) mod token_table;

pub use decoder_weights::{lora_tensor_name, DecoderWeights, LoraWeights};
pub use mapped_weights::MappedWeights;
