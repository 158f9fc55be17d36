//! sembase-train: adapt an encoder to a domain. Unsupervised SimCSE, positive
//! pairs and triplets with in-batch negatives, CoSENT on scored pairs,
//! Matryoshka widths and learned projections; AdamW with warm-up and decay,
//! cached in-batch negatives for large batches, checkpoints with exact resume,
//! and export in sentence-transformers layout.

pub mod checkpoint;
pub mod data;
pub mod error;
pub mod export;
pub mod losses;
pub mod optim;
pub mod trainable;
pub mod trainer;

pub use data::{load_examples, Example, Objective};
pub use error::{Result, TrainError};
pub use export::{export_model, ModelCard};
pub use trainable::TrainableModel;
pub use trainer::{Finish, TrainConfig, TrainObserver, TrainState, Trainer};
