//! Embedding tables: row look-ups from a tensor or in place from mapped weights.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::on_cpu_in_f32;
use crate::error::Result;
use crate::kernels::cpu_lookup;
use crate::kernels::kernel_io::HostF32;
use crate::weights::mapped_weights::{MappedMatrix, MappedWeights};

/// A lookup table of row vectors.
#[derive(Debug, Clone)]
pub struct Embedding {
    table: Table,
}

/// Where a table's values live.
#[derive(Debug, Clone)]
enum Table {
    /// A tensor (copied from the weights file, or a training variable).
    Tensor(Tensor),
    /// In place in the memory-mapped weights file (CPU inference).
    Mapped(MappedMatrix),
}

impl Embedding {
    /// Loads a `(rows, dim)` table named `weight`.
    pub fn load(vb: VarBuilder, rows: usize, dim: usize) -> Result<Self> {
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        Ok(Self { table: Table::Tensor(vb.get_with_hints((rows, dim), "weight", init)?) })
    }

    /// Like [`Embedding::load`], but reads the table in place from `mapped` when it is
    /// stored there as f32 (copying it otherwise).
    pub fn load_mapped(
        vb: VarBuilder,
        rows: usize,
        dim: usize,
        mapped: Option<&MappedWeights>,
    ) -> Result<Self> {
        let name = format!("{}.weight", vb.prefix());
        match mapped.and_then(|m| m.matrix::<f32>(&name, rows, dim)) {
            Some(matrix) => Ok(Self { table: Table::Mapped(matrix) }),
            None => Self::load(vb, rows, dim),
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        match &self.table {
            Table::Tensor(t) => t.dims()[0],
            Table::Mapped(m) => m.rows(),
        }
    }

    /// Width of a row.
    fn dim(&self) -> usize {
        match &self.table {
            Table::Tensor(t) => t.dims()[1],
            Table::Mapped(m) => m.cols(),
        }
    }

    /// Looks up `ids` (any shape, u32) and appends the vector dimension.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match &self.table {
            Table::Tensor(table) => {
                let mut dims = ids.dims().to_vec();
                dims.push(self.dim());
                let rows = table.index_select(&ids.flatten_all()?.to_dtype(DType::U32)?, 0)?;
                Ok(rows.reshape(dims)?)
            }
            Table::Mapped(_) => Self::sum_of_lookups(&[(self, ids)]),
        }
    }

    /// The sum of several tables' lookups, each with its own ids of one shape (word,
    /// position and segment embeddings): one parallel pass over the tokens for
    /// inference on the CPU, composed ops otherwise (so training gets gradients).
    pub fn sum_of_lookups(lookups: &[(&Embedding, &Tensor)]) -> Result<Tensor> {
        let Some(&(first, first_ids)) = lookups.first() else {
            return Err(candle_core::Error::Msg("no embedding tables to look up".into()).into());
        };
        let host_tables = lookups
            .iter()
            .map(|(e, _)| e.host_values())
            .collect::<candle_core::Result<Option<Vec<_>>>>()?;
        let Some(host_tables) = host_tables else {
            return lookups[1..].iter().try_fold(first.forward(first_ids)?, |sum, (e, ids)| {
                Ok(sum.add(&e.forward(ids)?)?)
            });
        };
        let ids = lookups
            .iter()
            .map(|(_, ids)| ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pairs: Vec<(&[f32], &[u32])> =
            host_tables.iter().zip(&ids).map(|(values, ids)| (&**values, ids.as_slice())).collect();
        let mut dims = first_ids.dims().to_vec();
        dims.push(first.dim());
        if lookups.iter().any(|(e, _)| e.dim() != first.dim()) {
            return Err(
                candle_core::Error::Msg("embedding tables to sum differ in width".into()).into()
            );
        }
        Ok(Tensor::from_vec(
            cpu_lookup::sum_of_rows(first.dim(), &pairs)?,
            dims,
            first_ids.device(),
        )?)
    }

    /// The table's values as host f32, when inference on the CPU can read them (mapped,
    /// or an f32 CPU tensor outside any gradient graph); `None` otherwise.
    fn host_values(&self) -> candle_core::Result<Option<TableValues<'_>>> {
        Ok(match &self.table {
            Table::Mapped(m) => Some(TableValues::Mapped(m.values())),
            Table::Tensor(t) if on_cpu_in_f32(&[t]) && !t.track_op() => {
                Some(TableValues::Host(HostF32::of(t)?))
            }
            Table::Tensor(_) => None,
        })
    }
}

/// A table's f32 values as the CPU lookup reads them.
enum TableValues<'a> {
    Mapped(&'a [f32]),
    Host(HostF32<'a>),
}

impl std::ops::Deref for TableValues<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            Self::Mapped(values) => values,
            Self::Host(values) => values,
        }
    }
}
