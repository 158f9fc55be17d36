//! sembase-index: a corpus index next to the model.
//!
//! - [`store`] is the [`VectorStore`] trait every backend implements, with the
//!   documents, hits, metadata filters and the recorded model settings it uses.
//! - [`error`] holds the typed errors.

pub mod error;
pub mod store;

pub use error::{IndexError, Result};
pub use store::{Document, Filter, Hit, IndexSettings, Metadata, Metric, ModelIdentity, VectorStore};
