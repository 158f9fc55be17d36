//! sembase-heads: light classifiers ("task heads") trained on frozen embeddings
//! from one base model, so a single encoder serves many classification needs.
//!
//! - [`data`]: `text<TAB>label` TSV loading with line-numbered errors.
//! - [`split`]: seeded, stratified k-fold assignment.
//! - [`classifier`]: multinomial logistic regression and a one-hidden-layer MLP,
//!   both fitted full-batch with [`lbfgs`].
//! - [`train`]: cross validation over an L2 grid, metrics ([`metrics`]), the final fit.
//! - [`head`]: a saved head (safetensors + labels.json + head.json), loading and prediction.
//! - [`cache`]: an on-disk embedding cache so retraining skips the encoder.

pub mod cache;
pub mod classifier;
pub mod data;
pub mod error;
pub mod head;
pub mod lbfgs;
pub mod metrics;
pub mod split;
pub mod train;

pub use cache::{embed_cached, EmbeddingCache};
pub use classifier::{ClassWeight, Classifier, Kind};
pub use data::{load_tsv, parse_tsv, Dataset};
pub use error::{Error, Result};
pub use head::{BaseModel, Head, HeadMeta, Prediction};
pub use metrics::{ClassMetrics, Metrics};
pub use split::stratified_folds;
pub use train::{cross_validate, train_head, CvReport, TrainConfig};
