//! A decoder's word table: a dense tensor (safetensors, training), or a GGUF file's
//! blocks read in place, of which only the rows a batch looks up are dequantised. An
//! 8B model's 128k-150k rows would cost 2-2.5 GB as f32; in place they cost the pages
//! of the rows used.

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::{DType, Device, Tensor};

use super::mapped_gguf::GgufTensor;
use crate::error::{Error, Result};

/// Token ids to vectors.
#[derive(Debug, Clone)]
pub enum TokenTable {
    /// Every row held as a tensor, in the checkpoint's precision.
    Dense(Tensor),
    /// GGUF rows, dequantised to f32 as they are looked up.
    Blocks(BlockRows),
}

/// A `(rows, width)` GGUF table whose rows each start on a block boundary.
#[derive(Debug, Clone)]
pub struct BlockRows {
    tensor: GgufTensor,
    rows: usize,
    width: usize,
    row_bytes: usize,
}

impl TokenTable {
    /// The GGUF table `tensor`, which must be `(rows, width)` with whole blocks per row.
    pub fn gguf(tensor: GgufTensor, rows: usize, width: usize) -> Result<Self> {
        let block = tensor.dtype.block_size();
        if tensor.dims != [rows, width] || !width.is_multiple_of(block) {
            return Err(Error::Unsupported(format!(
                "word table: shape {:?} in blocks of {block}, expected [{rows}, {width}] with whole blocks per row",
                tensor.dims
            )));
        }
        let row_bytes = width / block * tensor.dtype.type_size();
        Ok(Self::Blocks(BlockRows { tensor, rows, width, row_bytes }))
    }

    /// The precision rows come out in before the model converts them to f32.
    pub fn dtype(&self) -> DType {
        match self {
            Self::Dense(table) => table.dtype(),
            Self::Blocks(_) => DType::F32,
        }
    }

    /// The f32 rows `(batch, seq, width)` of the ids `(batch, seq)`, on the ids' device.
    pub fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        let (batch, seq) = ids.dims2()?;
        match self {
            Self::Dense(table) => {
                let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
                let width = table.dim(1)?;
                Ok(table.index_select(&flat, 0)?.to_dtype(DType::F32)?.reshape((batch, seq, width))?)
            }
            Self::Blocks(blocks) => {
                let device = ids.device().clone();
                let ids = ids.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
                let mut values = Vec::with_capacity(ids.len() * blocks.width);
                for (position, &id) in ids.iter().enumerate() {
                    values.extend(blocks.row(id, position / seq.max(1))?);
                }
                Ok(Tensor::from_vec(values, (batch, seq, blocks.width), &Device::Cpu)?.to_device(&device)?)
            }
        }
    }
}

impl BlockRows {
    /// Row `id` in f32; `input` names the text it belongs to in an error.
    fn row(&self, id: u32, input: usize) -> Result<Vec<f32>> {
        let index = id as usize;
        if index >= self.rows {
            return Err(Error::InvalidTokenId { index: input, id, vocab: self.rows });
        }
        let bytes = &self.tensor.bytes[index * self.row_bytes..][..self.row_bytes];
        let row = qtensor_from_ggml(self.tensor.dtype, bytes, vec![self.width], &Device::Cpu)?;
        Ok(row.dequantize(&Device::Cpu)?.to_vec1::<f32>()?)
    }
}
