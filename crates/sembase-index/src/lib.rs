//! sembase-index: a corpus index next to the model.
//!
//! - [`store`]: the [`VectorStore`] trait every backend implements, with the
//!   documents, hits, metadata filters and recorded model settings it uses.
//! - [`index`]: an index directory (`index.json` + the store's files), opened
//!   as an [`Index`]; [`build`] fills a new one from a corpus ([`corpus`]).
//! - Stores: [`flat`] (exact, f32/f16/int8, [`exact`] kernels) and [`ann`]
//!   (a usearch HNSW [`graph`]; see there why usearch), both over immutable
//!   [`segment`] files committed through a [`manifest`] swapped atomically
//!   ([`segments`]), with one writer at a time ([`lock`]).
//! - [`postgres`]: PostgreSQL + pgvector (f32, f16 or bit vectors), shared by
//!   any number of processes, and filled by many workers through a [`Queue`].
//! - [`identity`] fingerprints a model directory so that queries embedded by
//!   another model are refused; [`npy`] reads precomputed vectors.

#[cfg(not(target_endian = "little"))]
compile_error!("segment files are read in place and are little-endian");

pub mod ann;
pub mod build;
pub mod corpus;
pub mod error;
pub mod exact;
pub mod flat;
pub mod graph;
pub mod identity;
pub mod index;
pub mod lock;
pub mod manifest;
pub mod npy;
pub mod postgres;
pub mod segment;
pub mod segments;
pub mod store;
pub mod vectors;

pub use self::postgres::queue::Queue;
pub use self::postgres::{PgPrecision, PostgresStore};
pub use build::{build_index, BuildVectors};
pub use corpus::{read_corpus, CorpusDoc};
pub use error::{IndexError, Result};
pub use graph::AnnParams;
pub use index::{Index, StoreSpec};
pub use segments::Access;
pub use store::{
    Document, Filter, Hit, IndexSettings, Metadata, Metric, ModelIdentity, VectorStore,
};
pub use vectors::Precision;
