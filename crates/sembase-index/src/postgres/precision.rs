//! How a PostgreSQL index keeps its vectors, and the SQL each choice needs.
//!
//! - `f32`: a `vector(N)` column (4 bytes a component), HNSW on cosine distance.
//! - `f16`: a `halfvec(N)` column (2 bytes a component, table and graph both
//!   half the size), HNSW on cosine distance between half vectors.
//! - `bit`: the full `vector(N)` column stays in the table for re-ranking, and the
//!   HNSW graph is built over `binary_quantize(embedding)` (1 bit a component,
//!   Hamming distance): the part a search walks, and that must stay in memory to be
//!   fast, is 32 times smaller; the closest candidates by Hamming distance are then
//!   re-ranked by exact cosine on their full vectors, so scores stay exact.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};

/// Candidates fetched by Hamming distance per hit asked for (or `hnsw.ef_search`
/// if more), before re-ranking on the full vectors: on MiniLM vectors of 139k
/// sentences recall@10 against exact search is 0.965 with the default ef_search
/// of 100 (180 candidates for a top 10 and its tie slack) and 0.987 at 400
/// (bench/index_bench.py).
pub const BIT_CANDIDATES_PER_HIT: usize = 10;

/// The stored form of a PostgreSQL index's vectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PgPrecision {
    #[default]
    F32,
    F16,
    Bit,
}

impl PgPrecision {
    const ALL: [PgPrecision; 3] = [PgPrecision::F32, PgPrecision::F16, PgPrecision::Bit];

    /// The name on the command line and in the registry.
    pub fn name(self) -> &'static str {
        match self {
            PgPrecision::F32 => "f32",
            PgPrecision::F16 => "f16",
            PgPrecision::Bit => "bit",
        }
    }

    /// Bytes of one vector as the HNSW graph keeps it.
    pub(crate) fn indexed_bytes(self, dimensions: usize) -> usize {
        match self {
            PgPrecision::F32 => 4 * dimensions,
            PgPrecision::F16 => 2 * dimensions,
            PgPrecision::Bit => dimensions.div_ceil(8),
        }
    }

    /// The embedding column's type.
    pub(crate) fn column_type(self, dimensions: usize) -> String {
        match self {
            PgPrecision::F32 | PgPrecision::Bit => format!("vector({dimensions})"),
            PgPrecision::F16 => format!("halfvec({dimensions})"),
        }
    }

    /// What the HNSW index is built over, with its operator class.
    pub(crate) fn hnsw_key(self, dimensions: usize) -> String {
        match self {
            PgPrecision::F32 => "embedding vector_cosine_ops".into(),
            PgPrecision::F16 => "embedding halfvec_cosine_ops".into(),
            PgPrecision::Bit => {
                format!("(binary_quantize(embedding)::bit({dimensions})) bit_hamming_ops")
            }
        }
    }

    /// The query vector `$1` (sent as `vector`) in the column's type.
    pub(crate) fn query(self) -> &'static str {
        match self {
            PgPrecision::F32 | PgPrecision::Bit => "$1::vector",
            PgPrecision::F16 => "$1::vector::halfvec",
        }
    }

    /// The expression the HNSW index orders by, matching [`PgPrecision::hnsw_key`]
    /// exactly (otherwise the planner cannot use the index).
    pub(crate) fn index_order(self, dimensions: usize) -> String {
        match self {
            PgPrecision::F32 | PgPrecision::F16 => format!("embedding <=> {}", self.query()),
            PgPrecision::Bit => format!(
                "binary_quantize(embedding)::bit({dimensions}) <~> binary_quantize($1::vector)"
            ),
        }
    }
}

impl fmt::Display for PgPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PgPrecision {
    type Err = IndexError;

    fn from_str(s: &str) -> Result<Self> {
        PgPrecision::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            IndexError::Invalid(format!(
                "unknown precision {s:?} for a postgres store: use f32 (vector), f16 (halfvec) \
                 or bit (binary_quantize, re-ranked on the full vectors)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_int8_is_refused() {
        for p in PgPrecision::ALL {
            assert_eq!(p.name().parse::<PgPrecision>().unwrap(), p);
        }
        assert!("int8".parse::<PgPrecision>().is_err());
    }

    #[test]
    fn the_bit_order_matches_its_index_expression() {
        let key = PgPrecision::Bit.hnsw_key(384);
        let expression = key.trim_end_matches(" bit_hamming_ops");
        assert!(PgPrecision::Bit
            .index_order(384)
            .starts_with(&expression[1..expression.len() - 1]));
    }
}
