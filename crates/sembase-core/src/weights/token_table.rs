//! A decoder's word table: a dense tensor (f32 safetensors, training), or read in place
//! from a mapped file (GGUF blocks, or bf16/f16 safetensors), where only the rows a
//! batch looks up are converted to f32. An 8B model's 128k-150k rows would cost 2-2.5 GB
//! as f32; in place they cost the pages of the rows used.

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::{DType, Device, Tensor};

use super::mapped_gguf::GgufTensor;
use super::mapped_weights::MappedHalf;
use crate::error::{Error, Result};

/// Token ids to vectors.
#[derive(Debug, Clone)]
pub enum TokenTable {
    /// Every row held as a tensor, in the checkpoint's precision.
    Dense(Tensor),
    /// GGUF rows, dequantised to f32 as they are looked up.
    Blocks(BlockRows),
    /// bf16/f16 rows in mapped safetensors, converted to f32 as they are looked up.
    Mapped(MappedHalf),
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
            Self::Mapped(table) => table.dtype(),
        }
    }

    /// The f32 rows `(batch, seq, width)` of the ids `(batch, seq)`, on the ids' device.
    pub fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(table) => {
                let (batch, seq) = ids.dims2()?;
                let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
                let width = table.dim(1)?;
                Ok(table
                    .index_select(&flat, 0)?
                    .to_dtype(DType::F32)?
                    .reshape((batch, seq, width))?)
            }
            Self::Blocks(blocks) => rows_of(ids, blocks.rows, blocks.width, |id, out| {
                out.extend(blocks.row(id)?);
                Ok(())
            }),
            Self::Mapped(table) => {
                let (rows, width) = table.dims();
                rows_of(ids, rows, width, |id, out| {
                    table.extend_row(id, out);
                    Ok(())
                })
            }
        }
    }
}

/// The rows `(batch, seq, width)` of the ids `(batch, seq)` in a table of `rows`, each
/// appended by `row`; an id outside the table is an error naming its text.
fn rows_of(
    ids: &Tensor,
    rows: usize,
    width: usize,
    mut row: impl FnMut(usize, &mut Vec<f32>) -> Result<()>,
) -> Result<Tensor> {
    let (batch, seq) = ids.dims2()?;
    let device = ids.device().clone();
    let ids = ids.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
    let mut values = Vec::with_capacity(ids.len() * width);
    for (position, &id) in ids.iter().enumerate() {
        if id as usize >= rows {
            return Err(Error::InvalidTokenId { index: position / seq.max(1), id, vocab: rows });
        }
        row(id as usize, &mut values)?;
    }
    Ok(Tensor::from_vec(values, (batch, seq, width), &Device::Cpu)?.to_device(&device)?)
}

impl BlockRows {
    /// Row `index` (within the table) in f32.
    fn row(&self, index: usize) -> Result<Vec<f32>> {
        let bytes = &self.tensor.bytes[index * self.row_bytes..][..self.row_bytes];
        let row = qtensor_from_ggml(self.tensor.dtype, bytes, vec![self.width], &Device::Cpu)?;
        Ok(row.dequantize(&Device::Cpu)?.to_vec1::<f32>()?)
    }
}
