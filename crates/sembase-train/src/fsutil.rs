//! Writing a whole directory atomically: build it beside the target, then swap it in.

use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

/// Creates a fresh temporary directory next to `target`, lets `fill` write
/// into it, and renames it over `target` only if `fill` succeeds. An existing
/// `target` is replaced; on failure it is left as it was.
pub fn write_dir_atomically(target: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&temp);
    std::fs::create_dir_all(&temp).map_err(|e| TrainError::io(&temp, e))?;
    if let Err(e) = fill(&temp) {
        let _ = std::fs::remove_dir_all(&temp);
        return Err(e);
    }
    if target.exists() {
        std::fs::rename(target, &old).map_err(|e| TrainError::io(target, e))?;
    }
    std::fs::rename(&temp, target).map_err(|e| TrainError::io(target, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Writes pretty JSON to `path`.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    }
    let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    std::fs::write(path, text).map_err(|e| TrainError::io(path, e))
}

/// Copies `name` from `from` to `to` when it exists.
pub fn copy_if_present(from: &Path, to: &Path, name: &str) -> Result<Option<PathBuf>> {
    let source = from.join(name);
    if !source.exists() {
        return Ok(None);
    }
    let dest = to.join(name);
    std::fs::copy(&source, &dest).map_err(|e| TrainError::io(&source, e))?;
    Ok(Some(dest))
}
