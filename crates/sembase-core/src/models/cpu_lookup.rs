//! Summed embedding lookups for CPU inference: `out[i] = sum over tables t of
//! t[ids_t[i]]`, token rows in parallel, in one pass and one output buffer (candle's
//! `index_select` then `add` copies on one thread and allocates per table).

use candle_core::Tensor;
use rayon::prelude::*;

use super::kernel_io::HostF32;
use crate::error::{Error, Result};

/// Tokens per parallel task.
const ROWS_PER_TASK: usize = 64;

/// The sum of each table's rows at its ids; every table is `(rows, width)` f32 on the
/// CPU, every id list equally long. An id past its table's end is an error.
pub(super) fn sum_of_rows(lookups: &[(&Tensor, &[u32])]) -> Result<Vec<f32>> {
    let tables = lookups.iter().map(|(table, _)| HostF32::of(table)).collect::<candle_core::Result<Vec<_>>>()?;
    let width = lookups.first().map_or(0, |(table, _)| table.dims().last().copied().unwrap_or(0));
    let tokens = lookups.first().map_or(0, |(_, ids)| ids.len());
    for ((table, ids), values) in lookups.iter().zip(&tables) {
        let rows = values.len() / width.max(1);
        if table.dims() != [rows, width] || ids.len() != tokens {
            return Err(mismatch(format!("embedding lookup: table {:?} or {} ids do not fit", table.dims(), ids.len())));
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= rows) {
            return Err(mismatch(format!("token id {id} is outside the embedding table's {rows} rows")));
        }
    }
    let mut out = vec![0f32; tokens * width];
    out.par_chunks_mut(ROWS_PER_TASK * width.max(1)).enumerate().for_each(|(task, chunk)| {
        for (r, row) in chunk.chunks_mut(width.max(1)).enumerate() {
            let token = task * ROWS_PER_TASK + r;
            for ((_, ids), values) in lookups.iter().zip(&tables) {
                let source = &values[ids[token] as usize * width..][..width];
                row.iter_mut().zip(source).for_each(|(o, &v)| *o += v);
            }
        }
    });
    Ok(out)
}

fn mismatch(message: String) -> Error {
    Error::Tensor(candle_core::Error::Msg(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sums_rows_of_every_table_and_refuses_ids_past_the_end() {
        let words = Tensor::new(&[[1f32, 2.0], [3.0, 4.0], [5.0, 6.0]], &Device::Cpu).unwrap();
        let positions = Tensor::new(&[[10f32, 20.0], [30.0, 40.0]], &Device::Cpu).unwrap();
        let ids = [2u32, 0, 1];
        let sum = sum_of_rows(&[(&words, &ids), (&positions, &[0, 1, 0])]).unwrap();
        assert_eq!(sum, vec![15.0, 26.0, 31.0, 42.0, 13.0, 24.0]);
        let err = sum_of_rows(&[(&words, &[3])]).unwrap_err();
        assert!(err.to_string().contains("token id 3 is outside"), "{err}");
    }
}
