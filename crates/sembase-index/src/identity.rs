//! A model's identity for an index: its name and a fingerprint of its files,
//! so queries embedded by another model (or changed weights) are refused.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{IndexError, Result};
use crate::store::{IndexSettings, ModelIdentity};

/// Files up to this size are hashed whole; larger ones by size and their
/// first and last this-many bytes (weights differ everywhere when they change).
const SAMPLE: u64 = 1 << 20;
/// Files that do not change the vectors: documentation and the store's
/// install record (which carries a time stamp). Hidden files are skipped too.
const IGNORED: [&str; 2] = ["README.md", "sembase-source.json"];

impl ModelIdentity {
    /// The identity of the model directory `dir`, known as `name`. Hashes the
    /// relative path and contents of every file in the directory and its
    /// immediate subdirectories (1_Pooling/, 2_Dense/, ...) except [`IGNORED`]
    /// and hidden ones.
    pub fn of_dir(name: &str, dir: &Path) -> Result<ModelIdentity> {
        let mut files = Vec::new();
        collect_files(dir, dir, 1, &mut files)?;
        files.sort();
        let mut hash = Sha256::new();
        for rel in &files {
            hash.update(rel.as_bytes());
            hash.update([0]);
            hash_file(&dir.join(rel), &mut hash)?;
        }
        let fingerprint = hash.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect();
        Ok(ModelIdentity { name: name.to_string(), fingerprint })
    }
}

/// Relative paths of regular files under `dir`, descending `depth` more levels.
fn collect_files(root: &Path, dir: &Path, depth: usize, out: &mut Vec<String>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| IndexError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| IndexError::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || IGNORED.contains(&name.as_str()) {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(|e| IndexError::io(&path, e))?;
        if meta.is_dir() && depth > 0 {
            collect_files(root, &path, depth - 1, out)?;
        } else if meta.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

/// Feeds a file's size and (sampled) contents to `hash`.
fn hash_file(path: &Path, hash: &mut Sha256) -> Result<()> {
    let io = |e| IndexError::io(path, e);
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    hash.update(len.to_le_bytes());
    let mut buf = Vec::new();
    if len <= 2 * SAMPLE {
        file.read_to_end(&mut buf).map_err(io)?;
        hash.update(&buf);
    } else {
        buf.resize(SAMPLE as usize, 0);
        file.read_exact(&mut buf).map_err(io)?;
        hash.update(&buf);
        file.seek(SeekFrom::End(-(SAMPLE as i64))).map_err(io)?;
        file.read_exact(&mut buf).map_err(io)?;
        hash.update(&buf);
    }
    Ok(())
}

impl IndexSettings {
    /// Refuses a model that is not the one the index was built with.
    pub fn check_model(&self, model: &ModelIdentity) -> Result<()> {
        if model.fingerprint == self.model.fingerprint {
            return Ok(());
        }
        Err(IndexError::ModelMismatch(format!(
            "the index was built with model {:?} (fingerprint {}), not {:?} (fingerprint {}): queries must be embedded by the same model",
            self.model.name, self.model.fingerprint, model.name, model.fingerprint
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_changes_the_fingerprint() {
        let dir = std::env::temp_dir().join(format!("sembase-identity-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        std::fs::write(dir.join("sembase-source.json"), "installed now").unwrap();
        std::fs::write(dir.join("1_Pooling/config.json"), "{\"mean\": true}").unwrap();
        let a = ModelIdentity::of_dir("m", &dir).unwrap();
        std::fs::write(dir.join("sembase-source.json"), "installed later").unwrap();
        assert_eq!(a, ModelIdentity::of_dir("m", &dir).unwrap());
        std::fs::write(dir.join("1_Pooling/config.json"), "{\"mean\": false}").unwrap();
        let b = ModelIdentity::of_dir("other-name", &dir).unwrap();
        assert_ne!(a.fingerprint, b.fingerprint);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
