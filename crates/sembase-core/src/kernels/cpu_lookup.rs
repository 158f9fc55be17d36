//! Summed embedding lookups for CPU inference: `out[i] = sum over tables t of
//! t[ids_t[i]]`, token rows in parallel, in one pass and one output buffer (candle's
//! `index_select` then `add` copies on one thread and allocates per table).

use rayon::prelude::*;

use crate::error::{Error, Result};

/// Tokens per parallel task.
const ROWS_PER_TASK: usize = 64;

/// The sum of each table's rows at its ids. Every table is a row-major `(rows, width)`
/// f32 matrix given as its values, every id list equally long. An id past its table's
/// end is an error.
pub(crate) fn sum_of_rows(width: usize, lookups: &[(&[f32], &[u32])]) -> Result<Vec<f32>> {
    let Some(((first_values, first_ids), rest)) = lookups.split_first() else {
        return Ok(Vec::new());
    };
    let tokens = first_ids.len();
    if width == 0 {
        return Err(mismatch("embedding lookup: tables have no columns".into()));
    }
    for (values, ids) in lookups {
        let rows = values.len() / width;
        if values.len() % width != 0 || ids.len() != tokens {
            return Err(mismatch(format!(
                "embedding lookup: a table of {} values or {} ids do not fit width {width}",
                values.len(),
                ids.len()
            )));
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= rows) {
            return Err(mismatch(format!(
                "token id {id} is outside the embedding table's {rows} rows"
            )));
        }
    }
    let mut out = Vec::with_capacity(tokens * width);
    out.spare_capacity_mut().par_chunks_mut(ROWS_PER_TASK * width).enumerate().for_each(
        |(task, chunk)| {
            for (r, row) in chunk.chunks_mut(width).enumerate() {
                let token = task * ROWS_PER_TASK + r;
                let source = &first_values[first_ids[token] as usize * width..][..width];
                row.iter_mut().zip(source).for_each(|(o, &v)| {
                    o.write(v);
                });
                for (values, ids) in rest {
                    let source = &values[ids[token] as usize * width..][..width];
                    // SAFETY: every element of `row` was written by the first table's pass.
                    row.iter_mut()
                        .zip(source)
                        .for_each(|(o, &v)| unsafe { *o.assume_init_mut() += v });
                }
            }
        },
    );
    // SAFETY: the tasks above wrote all `tokens * width` elements.
    unsafe { out.set_len(tokens * width) };
    Ok(out)
}

fn mismatch(message: String) -> Error {
    Error::tensor(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_rows_of_every_table_and_refuses_ids_past_the_end() {
        let words = [1f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let positions = [10f32, 20.0, 30.0, 40.0];
        let ids = [2u32, 0, 1];
        let sum = sum_of_rows(2, &[(&words, &ids), (&positions, &[0, 1, 0])]).unwrap();
        assert_eq!(sum, vec![15.0, 26.0, 31.0, 42.0, 13.0, 24.0]);
        let err = sum_of_rows(2, &[(&words, &[3])]).unwrap_err();
        assert!(err.to_string().contains("token id 3 is outside"), "{err}");
    }
}
