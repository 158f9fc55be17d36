//! A saved head: a directory with `weights.safetensors`, `labels.json` and
//! `head.json` (kind, sizes, the base model's identity and embedding settings,
//! training figures). Written whole or not at all.

use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use sembase_embed::{durable, EmbedOptions, Embedder};

use crate::classifier::{ClassWeight, Classifier, Kind};
use crate::error::{io, Error, Result};
use crate::metrics::argmax;

pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const LABELS_FILE: &str = "labels.json";
pub const META_FILE: &str = "head.json";
const FORMAT: u32 = 1;

/// Which base model a head was trained on, and how its embeddings were made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseModel {
    /// The name the model was loaded by (store name, or directory name).
    pub name: String,
    /// The model directory's last component.
    pub dir_name: String,
    /// Hash of the model's configuration files (config.json, modules.json,
    /// sentence_bert_config.json, 1_Pooling/config.json), first 16 hex digits.
    pub config_hash: String,
    /// Width of the vectors the head reads.
    pub dimensions: usize,
    /// `dimensions` as asked for at training (None: the model's full width).
    pub requested_dimensions: Option<usize>,
    /// Text put before every input.
    pub prefix: Option<String>,
    /// Whether the training vectors were unit length.
    pub normalized: bool,
}

impl BaseModel {
    /// Describes a model directory; `normalized` is what the embeddings showed.
    pub fn describe(
        name: &str,
        dir: &Path,
        dimensions: usize,
        requested_dimensions: Option<usize>,
        prefix: Option<String>,
        normalized: bool,
    ) -> BaseModel {
        BaseModel {
            name: name.to_string(),
            dir_name: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            config_hash: config_hash(dir),
            dimensions,
            requested_dimensions,
            prefix,
            normalized,
        }
    }

    /// The options to embed inputs with, so they match the training vectors.
    pub fn embed_options(&self) -> EmbedOptions {
        EmbedOptions {
            prefix: self.prefix.clone(),
            dimensions: self.requested_dimensions,
            ..EmbedOptions::default()
        }
    }

    /// A key for the embedding settings: heads with equal keys can share one forward pass.
    pub fn embedding_key(&self) -> String {
        format!(
            "{}\u{1f}{}\u{1f}{:?}\u{1f}{:?}",
            self.name, self.config_hash, self.prefix, self.requested_dimensions
        )
    }
}

/// Hash of a model directory's configuration files (missing files are skipped).
pub fn config_hash(dir: &Path) -> String {
    let mut h = Sha256::new();
    for file in
        ["config.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json"]
    {
        if let Ok(bytes) = std::fs::read(dir.join(file)) {
            h.update(file.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Training figures kept with the head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingInfo {
    pub rows: usize,
    pub folds: usize,
    pub seed: u64,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub data: Option<String>,
}

/// Contents of `head.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadMeta {
    pub format: u32,
    #[serde(flatten)]
    pub kind: Kind,
    pub classes: usize,
    /// The chosen inverse L2 strength.
    pub c: f64,
    pub class_weight: ClassWeight,
    pub base_model: BaseModel,
    pub training: Option<TrainingInfo>,
}

/// One input's classification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub label: String,
    /// Index of `label` in [`Head::labels`].
    pub index: usize,
    /// Probability of every label, in [`Head::labels`] order; sums to 1.
    pub probabilities: Vec<f32>,
}

/// A trained classifier with its labels and base-model identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub meta: HeadMeta,
    pub labels: Vec<String>,
    pub classifier: Classifier,
}

impl Head {
    pub fn new(
        classifier: Classifier,
        labels: Vec<String>,
        c: f64,
        class_weight: ClassWeight,
        base_model: BaseModel,
        training: Option<TrainingInfo>,
    ) -> Head {
        let meta = HeadMeta {
            format: FORMAT,
            kind: classifier.kind,
            classes: classifier.classes,
            c,
            class_weight,
            base_model,
            training,
        };
        Head { meta, labels, classifier }
    }

    pub fn base_model(&self) -> &BaseModel {
        &self.meta.base_model
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Width of the vectors [`predict`](Self::predict) takes.
    pub fn dimensions(&self) -> usize {
        self.classifier.dim
    }

    /// Options for embedding inputs of this head (prefix, dimensions).
    pub fn embed_options(&self) -> EmbedOptions {
        self.meta.base_model.embed_options()
    }

    /// Refuses an embedder that is not the head's base model (by name) or
    /// whose vectors are narrower than the head's input.
    pub fn check_embedder(&self, embedder: &dyn Embedder) -> Result<()> {
        let base = &self.meta.base_model;
        if embedder.name() != base.name && embedder.name() != base.dir_name {
            return Err(Error::Invalid(format!(
                "head was trained on model {:?}, not {:?}",
                base.name,
                embedder.name()
            )));
        }
        if embedder.dimension() < self.dimensions() {
            return Err(Error::Invalid(format!(
                "head reads {}-dimensional vectors; model {:?} gives {}",
                self.dimensions(),
                embedder.name(),
                embedder.dimension()
            )));
        }
        Ok(())
    }

    /// Classifies vectors made with [`embed_options`](Self::embed_options).
    pub fn predict(&self, vectors: &[Vec<f32>]) -> Result<Vec<Prediction>> {
        vectors
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if v.len() != self.dimensions() {
                    return Err(Error::Invalid(format!(
                        "vector {i} has {} dimensions, the head reads {}",
                        v.len(),
                        self.dimensions()
                    )));
                }
                let probabilities = self.classifier.predict_proba(v);
                let index = argmax(&probabilities);
                Ok(Prediction { label: self.labels[index].clone(), index, probabilities })
            })
            .collect()
    }

    /// Embeds `texts` with `embedder` (checked first) and classifies them.
    pub fn predict_texts(
        &self,
        embedder: &dyn Embedder,
        texts: &[&str],
    ) -> Result<Vec<Prediction>> {
        self.check_embedder(embedder)?;
        let embeddings = embedder.embed(texts, &self.embed_options())?;
        self.predict(&embeddings.vectors)
    }

    /// Writes the head to `dir` atomically: into a temporary sibling directory,
    /// then renamed into place. An existing head at `dir` is replaced; any other
    /// non-empty directory is refused.
    pub fn save(&self, dir: &Path) -> Result<()> {
        if dir.file_name().is_none() {
            return Err(Error::Invalid(format!("{}: not a directory name", dir.display())));
        }
        if dir.exists() {
            let is_head = dir.join(META_FILE).is_file();
            let is_empty = std::fs::read_dir(dir).map_err(io(dir))?.next().is_none();
            if !is_head && !is_empty {
                return Err(Error::Invalid(format!(
                    "{} exists and is not a head directory; refusing to replace it",
                    dir.display()
                )));
            }
        }
        durable::replace_dir(dir, |temp| self.write_files(temp))
    }

    fn write_files(&self, dir: &Path) -> Result<()> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .classifier
            .tensors
            .iter()
            .map(|(name, shape, data)| {
                (name.clone(), shape.clone(), data.iter().flat_map(|v| v.to_le_bytes()).collect())
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(name, shape, data)| {
                TensorView::new(Dtype::F32, shape.clone(), data).map(|v| (name.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Format { path: dir.join(WEIGHTS_FILE), message: e.to_string() })?;
        let weights = safetensors::serialize(views, None)
            .map_err(|e| Error::Format { path: dir.join(WEIGHTS_FILE), message: e.to_string() })?;
        durable::write_bytes(&dir.join(WEIGHTS_FILE), &weights)?;
        durable::write_json(&dir.join(LABELS_FILE), &self.labels)?;
        durable::write_json(&dir.join(META_FILE), &self.meta)?;
        Ok(())
    }

    /// Reads a head written by [`save`](Self::save), checking shapes and labels.
    pub fn load(dir: &Path) -> Result<Head> {
        let read = |file: &str| -> Result<Vec<u8>> {
            let path = dir.join(file);
            std::fs::read(&path).map_err(io(path))
        };
        let format_err =
            |file: &str, message: String| Error::Format { path: dir.join(file), message };
        let meta: HeadMeta = serde_json::from_slice(&read(META_FILE)?)
            .map_err(|e| format_err(META_FILE, e.to_string()))?;
        if meta.format != FORMAT {
            return Err(format_err(
                META_FILE,
                format!("head format {} is not supported (expected {FORMAT})", meta.format),
            ));
        }
        let labels: Vec<String> = serde_json::from_slice(&read(LABELS_FILE)?)
            .map_err(|e| format_err(LABELS_FILE, e.to_string()))?;
        if labels.len() != meta.classes {
            return Err(format_err(
                LABELS_FILE,
                format!("{} labels for {} classes", labels.len(), meta.classes),
            ));
        }
        let bytes = read(WEIGHTS_FILE)?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| format_err(WEIGHTS_FILE, e.to_string()))?;
        let mut tensors = Vec::new();
        for name in st.names() {
            let t = st.tensor(name).map_err(|e| format_err(WEIGHTS_FILE, e.to_string()))?;
            if t.dtype() != Dtype::F32 {
                return Err(format_err(
                    WEIGHTS_FILE,
                    format!("tensor {name} is {:?}, expected F32", t.dtype()),
                ));
            }
            let data = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.push((name.to_string(), t.shape().to_vec(), data));
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let dim = meta.base_model.dimensions;
        let classifier = Classifier { kind: meta.kind, dim, classes: meta.classes, tensors };
        classifier.validate().map_err(|m| format_err(WEIGHTS_FILE, m))?;
        Ok(Head { meta, labels, classifier })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: Kind) -> Head {
        let flat: Vec<f64> = match kind {
            Kind::Logistic => (0..3 * 5).map(|i| i as f64 * 0.1 - 0.7).collect(),
            Kind::Mlp { hidden } => {
                (0..hidden * 5 + 3 * (hidden + 1)).map(|i| (i as f64 * 0.37).sin()).collect()
            }
        };
        let clf = Classifier::from_flat(kind, 4, 3, &flat);
        let base = BaseModel {
            name: "all-minilm-l6-v2".into(),
            dir_name: "all-minilm-l6-v2".into(),
            config_hash: "0123456789abcdef".into(),
            dimensions: 4,
            requested_dimensions: Some(4),
            prefix: Some("query: ".into()),
            normalized: true,
        };
        let training = TrainingInfo {
            rows: 10,
            folds: 5,
            seed: 3,
            accuracy: 90.0,
            macro_f1: 88.5,
            data: Some("x.tsv".into()),
        };
        Head::new(
            clf,
            vec!["neg".into(), "neu".into(), "pos".into()],
            10.0,
            ClassWeight::Balanced,
            base,
            Some(training),
        )
    }

    #[test]
    fn save_load_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        for kind in [Kind::Logistic, Kind::Mlp { hidden: 2 }] {
            let head = sample(kind);
            let dir = tmp.path().join(format!("head-{}", kind.name()));
            head.save(&dir).unwrap();
            let back = Head::load(&dir).unwrap();
            assert_eq!(back, head);
            let v = vec![vec![0.1, -0.2, 0.3, 0.5]];
            assert_eq!(back.predict(&v).unwrap(), head.predict(&v).unwrap());
            let p = &head.predict(&v).unwrap()[0];
            assert!((p.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            assert_eq!(p.label, head.labels[p.index]);
            // Saving again replaces the head in place.
            head.save(&dir).unwrap();
            let names: Vec<String> = std::fs::read_dir(tmp.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(names.iter().all(|n| !n.starts_with('.')), "leftovers: {names:?}");
        }
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tmp.path().join("head-mlp/head.json")).unwrap())
                .unwrap();
        assert_eq!(meta["kind"], "mlp");
        assert_eq!(meta["hidden"], 2);
        assert_eq!(meta["base_model"]["prefix"], "query: ");
    }

    #[test]
    fn refuses_foreign_dirs_and_wrong_widths() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("busy");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        let head = sample(Kind::Logistic);
        let e = head.save(&dir).unwrap_err().to_string();
        assert!(e.contains("not a head directory"), "{e}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        assert!(head.predict(&[vec![0.0; 3]]).unwrap_err().to_string().contains("3 dimensions"));
    }

    #[test]
    fn failed_save_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut head = sample(Kind::Logistic);
        // A tensor whose data does not fit its shape makes serialisation fail midway.
        head.classifier.tensors[0].1 = vec![99, 99];
        let dir = tmp.path().join("out");
        assert!(head.save(&dir).is_err());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "no output or temp dir left");
    }

    #[test]
    fn load_rejects_mismatched_labels() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("h");
        sample(Kind::Logistic).save(&dir).unwrap();
        std::fs::write(dir.join(LABELS_FILE), "[\"a\"]").unwrap();
        let e = Head::load(&dir).unwrap_err().to_string();
        assert!(e.contains("1 labels for 3 classes"), "{e}");
    }
}
