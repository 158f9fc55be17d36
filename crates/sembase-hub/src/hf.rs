//! Hugging Face sources: repo ids, the local HF cache layout and the Hub's HTTP API.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{HubError, Result};
use crate::fsutil;
use crate::http::{encode_path, encode_segment, Http};
use crate::ProgressEvent;
use recorded::recorded;
use sembase_embed::durable;

mod recorded;

/// Top-level files of a sentence-transformers / HF directory that an install takes
/// when the repo has them (`config.json` and `tokenizer.json` are required).
const TOP_FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
];

/// Weight formats and export folders sembase does not read.
const SKIP_EXTENSIONS: &[&str] = &[
    ".bin",
    ".onnx",
    ".onnx_data",
    ".h5",
    ".msgpack",
    ".ot",
    ".pt",
    ".pth",
    ".gguf",
    ".ckpt",
    ".pb",
    ".tflite",
];
const SKIP_DIRS: &[&str] = &["onnx", "openvino", "coreml", ".git"];

/// A Hugging Face repo id with an optional revision: `org/name[@revision]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RepoId {
    /// `org/name`.
    pub repo: String,
    /// The revision given after `@`, if any.
    pub revision: Option<String>,
}

impl RepoId {
    /// Parses `org/name[@revision]`; `None` when `spec` has another shape.
    pub(crate) fn parse(spec: &str) -> Option<RepoId> {
        let (repo, revision) = match spec.split_once('@') {
            Some((r, rev)) if !rev.is_empty() && !rev.contains(char::is_whitespace) => {
                (r, Some(rev.to_string()))
            }
            Some(_) => return None,
            None => (spec, None),
        };
        let (org, name) = repo.split_once('/')?;
        let part_ok = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        (part_ok(org) && part_ok(name)).then(|| RepoId { repo: repo.to_string(), revision })
    }

    /// The revision to use: the one given or `main`.
    pub(crate) fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// The store name: `org--name`, plus `--revision` (made file-name safe) when one was given.
    pub(crate) fn store_name(&self) -> String {
        let base = self.repo.replace('/', "--");
        match &self.revision {
            None => base,
            Some(rev) => format!("{base}--{}", fsutil::safe_name(rev)),
        }
    }
}

/// Picks the files an install needs from a repo's file list: the top-level
/// sentence-transformers files, `model.safetensors` (or the sharded index and
/// its shards) and every file under the folders that `modules.json` names,
/// except weight formats sembase does not read. `read_json` reads one of the
/// repo's files (`modules.json`, the shard index) as JSON.
pub(crate) fn select_files(
    what: &str,
    files: &[String],
    read_json: &mut dyn FnMut(&str) -> Result<Value>,
) -> Result<Vec<String>> {
    let has = |f: &str| files.iter().any(|x| x == f);
    let missing = |file: &str, why: &str| HubError::invalid(what, format!("has no {file}{why}"));
    let mut chosen: BTreeSet<String> =
        TOP_FILES.iter().filter(|f| has(f)).map(|f| f.to_string()).collect();
    for required in ["config.json", "tokenizer.json"] {
        if !has(required) {
            return Err(missing(required, ""));
        }
    }
    if has("model.safetensors") {
        chosen.insert("model.safetensors".into());
    } else if has("model.safetensors.index.json") {
        chosen.insert("model.safetensors.index.json".into());
        let index = read_json("model.safetensors.index.json")?;
        let map = index.get("weight_map").and_then(Value::as_object).ok_or_else(|| {
            HubError::invalid(format!("{what}: model.safetensors.index.json"), "no weight_map")
        })?;
        for shard in map.values().filter_map(Value::as_str) {
            if !has(shard) {
                return Err(missing(shard, " (named in model.safetensors.index.json)"));
            }
            chosen.insert(shard.to_string());
        }
    } else {
        return Err(missing("model.safetensors", " (sembase reads safetensors weights only)"));
    }
    if has("modules.json") {
        let modules = read_json("modules.json")?;
        let list = modules
            .as_array()
            .ok_or_else(|| HubError::invalid(format!("{what}: modules.json"), "not a list"))?;
        for path in list.iter().filter_map(|m| m.get("path").and_then(Value::as_str)) {
            let path = path.trim_matches('/');
            if path.is_empty() {
                continue;
            }
            let prefix = format!("{path}/");
            chosen.extend(files.iter().filter(|f| f.starts_with(&prefix) && !skipped(f)).cloned());
        }
    }
    Ok(chosen.into_iter().collect())
}

/// True for files an install leaves out (other weight formats, export folders).
fn skipped(path: &str) -> bool {
    SKIP_EXTENSIONS.iter().any(|ext| path.ends_with(ext))
        || path.split('/').any(|seg| SKIP_DIRS.contains(&seg))
}

/// A snapshot found in the local Hugging Face cache.
pub(crate) struct CacheHit {
    /// The snapshot directory.
    pub snapshot: PathBuf,
    /// The commit it belongs to.
    pub commit: String,
}

/// Looks up `id` in a Hugging Face cache directory (`<cache>/models--org--name/`):
/// `refs/<revision>` names the commit, `snapshots/<commit>/` holds the files
/// (symlinks into `blobs/`). A 40-hex revision may name a snapshot directly.
/// `Ok(None)` when the cache has no snapshot for it.
pub(crate) fn find_in_cache(cache: &Path, id: &RepoId) -> Result<Option<CacheHit>> {
    let repo_dir = cache.join(format!("models--{}", id.repo.replace('/', "--")));
    let rev = id.revision();
    let is_commit = rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit());
    let commit = if is_commit && repo_dir.join("snapshots").join(rev).is_dir() {
        rev.to_string()
    } else {
        match fs::read_to_string(repo_dir.join("refs").join(rev)) {
            Ok(s) => s.trim().to_string(),
            Err(_) => return Ok(None),
        }
    };
    if commit.is_empty() || commit.contains(['/', '\\']) || commit.starts_with('.') {
        return Err(HubError::invalid(
            repo_dir.join("refs").join(rev).display().to_string(),
            "not a commit id",
        ));
    }
    let snapshot = repo_dir.join("snapshots").join(&commit);
    Ok(snapshot.is_dir().then_some(CacheHit { snapshot, commit }))
}

/// Copies what an install needs from a cache snapshot into `staging`; returns the
/// source record.
pub(crate) fn install_from_cache(
    cache: &Path,
    id: &RepoId,
    hit: &CacheHit,
    staging: &Path,
) -> Result<Value> {
    let files = fsutil::list_files(&hit.snapshot, &[])?;
    let what = format!("Hugging Face cache snapshot {}", hit.snapshot.display());
    let chosen = select_files(&what, &files, &mut |f| fsutil::read_json(&hit.snapshot.join(f)))?;
    fsutil::copy_files(&hit.snapshot, staging, &chosen)?;
    Ok(json!({
        "source": "hf-cache",
        "description": format!("Hugging Face cache: {}@{}", id.repo, short(&hit.commit)),
        "repo": id.repo,
        "revision": id.revision(),
        "commit": hit.commit,
        "cache": cache,
    }))
}

/// The first 12 characters of a commit id.
fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// Downloads what an install needs from the Hub into `staging`; returns the
/// source record.
///
/// `GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true` gives the
/// commit (`sha`) and the file list (`siblings[].rfilename`) with what the Hub
/// records of each file ([`recorded`]); each file then comes from
/// `GET {endpoint}/{repo}/resolve/{commit}/{file}` into `downloads` (kept
/// there between attempts for resuming), is checked against that record, and
/// is moved into `staging` at the end.
pub(crate) fn download_repo(
    http: &Http,
    endpoint: &str,
    id: &RepoId,
    downloads: &Path,
    staging: &Path,
    progress: &dyn Fn(ProgressEvent),
) -> Result<Value> {
    let endpoint = endpoint.trim_end_matches('/');
    let api = format!(
        "{endpoint}/api/models/{}/revision/{}?blobs=true",
        id.repo,
        encode_segment(id.revision())
    );
    let (_, body) = http.get_bytes(&api, &[]).map_err(|e| match e {
        HubError::HttpStatus { status, .. } if matches!(status, 401 | 403 | 404) => {
            HubError::RepoNotFound {
                repo: id.repo.clone(),
                revision: id.revision().to_string(),
                endpoint: endpoint.to_string(),
                status,
                hint: if status == 404 {
                    String::new()
                } else {
                    "; set HF_TOKEN for gated or private repos".into()
                },
            }
        }
        other => other,
    })?;
    let info: Value = serde_json::from_slice(&body).map_err(|e| HubError::invalid(&api, e))?;
    let commit = info
        .get("sha")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()))
        .ok_or_else(|| HubError::invalid(&api, "no commit sha in the answer"))?
        .to_string();
    let siblings = info.get("siblings").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let recorded = recorded(siblings);
    let files: Vec<String> = recorded.keys().cloned().collect();
    if let Some(bad) =
        files.iter().find(|f| f.starts_with('/') || f.split('/').any(|s| s == ".." || s.is_empty()))
    {
        return Err(HubError::invalid(&api, format!("unsafe file name {bad:?}")));
    }

    let keep = downloads.join(format!("{}--{commit}", id.repo.replace('/', "--")));
    let result = (|| -> Result<()> {
        let fetch = |file: &str| -> Result<PathBuf> {
            let dest = keep.join(file);
            if let Some(parent) = dest.parent() {
                fsutil::create_dir_all(parent)?;
            }
            let url = format!("{endpoint}/{}/resolve/{commit}/{}", id.repo, encode_path(file));
            let expect = recorded.get(file).cloned().unwrap_or_default();
            http.download(&url, &dest, file, &expect, progress)?;
            Ok(dest)
        };
        let what = format!("Hugging Face repo {}@{}", id.repo, short(&commit));
        let chosen = select_files(&what, &files, &mut |f| fsutil::read_json(&fetch(f)?))?;
        for file in &chosen {
            fetch(file)?;
        }
        for file in &chosen {
            let dest = staging.join(file);
            if let Some(parent) = dest.parent() {
                fsutil::create_dir_all(parent)?;
            }
            durable::rename(&keep.join(file), &dest)?;
        }
        Ok(())
    })();
    match &result {
        Err(e) if e.is_transient() => {}
        _ => fsutil::remove_quietly(&keep),
    }
    result?;
    Ok(json!({
        "source": "huggingface",
        "description": format!("Hugging Face Hub: {}@{} ({endpoint})", id.repo, short(&commit)),
        "repo": id.repo,
        "revision": id.revision(),
        "commit": commit,
        "endpoint": endpoint,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        let id = RepoId::parse("sentence-transformers/all-MiniLM-L6-v2").unwrap();
        assert_eq!(
            (id.repo.as_str(), id.revision()),
            ("sentence-transformers/all-MiniLM-L6-v2", "main")
        );
        assert_eq!(id.store_name(), "sentence-transformers--all-MiniLM-L6-v2");
        let id = RepoId::parse("org/m@refs/pr/1").unwrap();
        assert_eq!(id.revision(), "refs/pr/1");
        assert_eq!(id.store_name(), "org--m--refs-pr-1");
        for bad in ["plain", "a/b/c", "/abs", "org/", "../x", "o/n@", "o/n@a b", "o r/n"] {
            assert_eq!(RepoId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn file_selection() {
        let files: Vec<String> = [
            "config.json",
            "tokenizer.json",
            "modules.json",
            "1_Pooling/config.json",
            "2_Dense/config.json",
            "2_Dense/model.safetensors",
            "2_Dense/pytorch_model.bin",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "pytorch_model.bin",
            "onnx/model.onnx",
            "README.md",
        ]
        .map(String::from)
        .to_vec();
        let mut read = |f: &str| -> Result<Value> {
            Ok(match f {
                "modules.json" => {
                    json!([{"path": ""}, {"path": "1_Pooling"}, {"path": "2_Dense"}, {"path": "3_Normalize"}])
                }
                _ => {
                    json!({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
                }
            })
        };
        let chosen = select_files("repo", &files, &mut read).unwrap();
        assert_eq!(
            chosen,
            [
                "1_Pooling/config.json",
                "2_Dense/config.json",
                "2_Dense/model.safetensors",
                "config.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json",
                "modules.json",
                "tokenizer.json",
            ]
        );
        let only_bin: Vec<String> =
            ["config.json", "tokenizer.json", "pytorch_model.bin"].map(String::from).to_vec();
        let err = select_files("repo", &only_bin, &mut read).unwrap_err();
        assert_eq!(
            err.to_string(),
            "repo: has no model.safetensors (sembase reads safetensors weights only)"
        );
    }
}
