//! sembase-train: adapt an encoder to a domain. Bi-encoders: unsupervised SimCSE,
//! positive pairs and triplets with in-batch negatives, CoSENT or AnglE on scored pairs
//! (optionally with in-batch negatives), several datasets in one run,
//! Matryoshka widths and learned projections. Cross-encoders (rerankers): binary
//! cross-entropy on pairs and listwise softmax over a query's group, and their
//! distillation into a bi-encoder (MarginMSE, in-batch KL). One loop trains
//! both: AdamW with warm-up and decay, cached in-batch negatives for large batches,
//! checkpoints with exact resume, and export in sentence-transformers layout.

pub mod bi_encoder;
pub mod checkpoint;
pub mod cross_export;
pub mod cross_model;
pub mod cross_training;
pub mod data;
pub mod distill;
pub mod error;
pub mod export;
pub mod losses;
pub mod mine;
pub mod optim;
pub mod sampler;
pub mod trainable;
pub mod trainer;

pub use bi_encoder::{BiEncoderConfig, BiEncoderTraining, StsLoss};
pub use cross_export::export_cross_encoder;
pub use cross_model::TrainableCrossEncoder;
pub use cross_training::CrossEncoderTraining;
pub use data::{
    load_cross_examples, load_examples, CrossObjective, DataSpec, Dataset, Example, Objective,
};
pub use error::{Result, TrainError};
pub use export::{export_model, ModelCard};
pub use sampler::{Mixture, Sampling};
pub use trainable::{DecoderTraining, TrainableModel};
pub use trainer::{Evaluation, Finish, LoopConfig, TrainObserver, TrainState, Trainee, Trainer};
