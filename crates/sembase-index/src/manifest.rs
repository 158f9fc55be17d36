//! The manifest: which immutable files make up the committed state of a
//! file-backed index. It is replaced as a whole (temp file, fsync, rename), so
//! the index is always at exactly one committed generation.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};
use sembase_embed::durable;

/// The manifest's name inside an index directory.
pub const MANIFEST_FILE: &str = "MANIFEST.json";

/// The committed state of a file-backed index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Increases by one with every commit; names new files.
    pub generation: u64,
    /// The slot number the next stored document version gets.
    pub next_slot: u64,
    /// Segment files, oldest first; later ones override earlier ones.
    pub segments: Vec<String>,
    /// The ANN graph file, for ANN stores.
    pub graph: Option<GraphRef>,
}

/// An ANN graph file and what it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphRef {
    pub file: String,
    /// The graph holds every document version with a slot below this that was
    /// live when it was built (keys are slots).
    pub slot_limit: u64,
}

impl Manifest {
    /// Reads the manifest of `dir`.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(|e| IndexError::io(&path, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| IndexError::Corrupt { path, message: e.to_string() })
    }

    /// Makes this the committed state of `dir`.
    pub fn commit(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("manifest serialises");
        Ok(durable::write_bytes(&dir.join(MANIFEST_FILE), &json)?)
    }

    /// Every file the manifest refers to.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().map(String::as_str).chain(self.graph.as_ref().map(|g| g.file.as_str()))
    }
}
