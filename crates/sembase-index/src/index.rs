//! An index directory: `index.json` (the model settings and which store holds
//! the vectors, written once when the index is created) next to the store's
//! own files, and the embedding of documents and queries with the recorded
//! settings.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use sembase_embed::{EmbedOptions, Embedder};

use crate::ann::AnnStore;
use crate::corpus::CorpusDoc;
use crate::error::{IndexError, Result};
use crate::flat::FlatStore;
use crate::graph::AnnParams;
use crate::postgres::queue::{enqueue, Queued};
use crate::postgres::{PgPrecision, PostgresStore};
use crate::segments::{Access, Segments};
use crate::store::{Document, Filter, Hit, IndexSettings, Metric, VectorStore};
use crate::vectors::Precision;
use sembase_embed::durable;

/// The settings file's name inside an index directory.
pub const INDEX_FILE: &str = "index.json";
/// Version of the directory layout.
const FORMAT: u32 = 1;

/// Which store keeps the vectors, with its settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StoreSpec {
    /// Exact search over segment files.
    Flat { precision: Precision },
    /// A usearch HNSW graph over segment files.
    Ann {
        precision: Precision,
        #[serde(flatten)]
        params: AnnParams,
    },
    /// A PostgreSQL table with a pgvector HNSW index. The precision is what the
    /// index was created with; the database's registry is what readers go by
    /// (a re-embedded index may have another).
    Postgres {
        url: String,
        table: String,
        #[serde(default)]
        precision: PgPrecision,
    },
}

impl StoreSpec {
    /// The store of a `--store` argument: `flat`, `ann` or a `postgres://` URL
    /// (`table` names its table), with its `--precision` (f32, f16 or int8 for the
    /// file stores; f32, f16 or bit for postgres).
    pub fn parse(
        store: &str,
        precision: &str,
        params: AnnParams,
        table: &str,
    ) -> Result<StoreSpec> {
        match store {
            "flat" => Ok(StoreSpec::Flat { precision: precision.parse()? }),
            "ann" => Ok(StoreSpec::Ann { precision: precision.parse()?, params }),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(StoreSpec::Postgres {
                    url: url.to_string(),
                    table: table.to_string(),
                    precision: precision.parse()?,
                })
            }
            other => Err(IndexError::Invalid(format!(
                "unknown store {other:?}: use flat, ann or a postgres:// URL"
            ))),
        }
    }

    /// The store's kind: `flat`, `ann` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreSpec::Flat { .. } => "flat",
            StoreSpec::Ann { .. } => "ann",
            StoreSpec::Postgres { .. } => "postgres",
        }
    }
}

/// The contents of `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexFile {
    format: u32,
    settings: IndexSettings,
    store: StoreSpec,
}

/// An opened index: its settings and its store.
pub struct Index {
    dir: PathBuf,
    spec: StoreSpec,
    store: Box<dyn VectorStore>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("dir", &self.dir)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Index {
    /// Creates an empty index in `dir`, which must not exist or be empty, and
    /// opens it for writing.
    pub fn create(dir: &Path, settings: IndexSettings, spec: StoreSpec) -> Result<Index> {
        check_empty(dir)?;
        match &spec {
            StoreSpec::Flat { .. } | StoreSpec::Ann { .. } => Segments::create(dir)?,
            StoreSpec::Postgres { url, table, precision } => {
                drop(PostgresStore::create(url, table, &settings, *precision)?)
            }
        }
        write_index_file(dir, settings, spec)?;
        Index::open(dir, Access::Write)
    }

    /// Queues a build of `docs` into the PostgreSQL store of `spec` for
    /// `sembase index work` ([`queue`](crate::postgres::queue)), in chunks of
    /// `chunk_size`, and writes `dir` (which must not exist or be empty), the
    /// directory workers and readers open. With `replace`, the build re-embeds the
    /// existing index of that table and is swapped in for it when complete.
    pub fn queue(
        dir: &Path,
        settings: IndexSettings,
        spec: StoreSpec,
        docs: &[CorpusDoc],
        chunk_size: usize,
        replace: bool,
    ) -> Result<Queued> {
        let StoreSpec::Postgres { url, table, precision } = &spec else {
            return Err(IndexError::Invalid(format!(
                "a queued build needs a postgres store, not {}: the file stores are built by                  one process (`sembase index build` without --queue)",
                spec.kind()
            )));
        };
        check_empty(dir)?;
        let queued = enqueue(url, table, &settings, *precision, docs, chunk_size, replace)?;
        write_index_file(dir, settings, spec)?;
        Ok(queued)
    }

    /// Opens the index in `dir`; `Access::Write` takes its write lock.
    pub fn open(dir: &Path, access: Access) -> Result<Index> {
        Index::open_tuned(dir, access, None)
    }

    /// [`Index::open`], searching an ANN or PostgreSQL store with `expansion_search` candidates
    /// instead of the recorded number (more: better recall, slower).
    pub fn open_tuned(
        dir: &Path,
        access: Access,
        expansion_search: Option<usize>,
    ) -> Result<Index> {
        let file = read_index_file(dir)?;
        let settings = file.settings;
        let store: Box<dyn VectorStore> = match &file.store {
            StoreSpec::Flat { precision } => {
                Box::new(FlatStore::open(dir, settings, *precision, access)?)
            }
            StoreSpec::Ann { precision, params } => {
                let params = AnnParams {
                    expansion_search: expansion_search.unwrap_or(params.expansion_search),
                    ..*params
                };
                Box::new(AnnStore::open(dir, settings, *precision, params, access)?)
            }
            StoreSpec::Postgres { url, table, .. } => {
                Box::new(PostgresStore::open_tuned(url, table, expansion_search)?)
            }
        };
        Ok(Index { dir: dir.to_path_buf(), spec: file.store, store })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The recorded model settings.
    pub fn settings(&self) -> &IndexSettings {
        self.store.settings()
    }

    /// Which store holds the vectors.
    pub fn spec(&self) -> &StoreSpec {
        &self.spec
    }

    /// The store.
    pub fn store(&self) -> &dyn VectorStore {
        self.store.as_ref()
    }

    /// The store, for writes.
    pub fn store_mut(&mut self) -> &mut dyn VectorStore {
        self.store.as_mut()
    }

    /// Embeds `docs` with the recorded document prefix and upserts them as one write.
    pub fn upsert_docs(&mut self, embedder: &dyn Embedder, docs: Vec<CorpusDoc>) -> Result<()> {
        let texts: Vec<String> = docs.iter().map(CorpusDoc::embed_text).collect();
        let vectors =
            embed(embedder, self.settings(), &texts, self.settings().document_prefix.as_deref())?;
        let docs: Vec<Document> =
            docs.into_iter().zip(vectors).map(|(d, v)| d.into_document(v)).collect();
        self.store.upsert(&docs)
    }

    /// Embeds query texts with the recorded query prefix and searches them.
    pub fn search_texts(
        &self,
        embedder: &dyn Embedder,
        queries: &[String],
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<Vec<Hit>>> {
        let vectors = embed_queries(embedder, self.settings(), queries)?;
        self.store.search(&vectors, k, filter)
    }
}

/// Which store an index directory names, without opening it (the table of a
/// queued build does not exist before the build is done).
pub fn read_spec(dir: &Path) -> Result<StoreSpec> {
    Ok(read_index_file(dir)?.store)
}

/// Reads and checks `index.json`.
fn read_index_file(dir: &Path) -> Result<IndexFile> {
    let path = dir.join(INDEX_FILE);
    let bytes = std::fs::read(&path).map_err(|e| IndexError::io(&path, e))?;
    let file: IndexFile = serde_json::from_slice(&bytes)
        .map_err(|e| IndexError::Corrupt { path: path.clone(), message: e.to_string() })?;
    if file.format != FORMAT {
        return Err(IndexError::Corrupt {
            path,
            message: format!("layout version {} (this build reads {FORMAT})", file.format),
        });
    }
    Ok(file)
}

/// Writes `index.json` into `dir`, readable by its owner only: a postgres
/// store's URL may carry the database password.
fn write_index_file(dir: &Path, settings: IndexSettings, store: StoreSpec) -> Result<()> {
    let file = IndexFile { format: FORMAT, settings, store };
    let json = serde_json::to_vec_pretty(&file).expect("settings serialise");
    Ok(durable::write_private(&dir.join(INDEX_FILE), &json)?)
}

/// Creates `dir` unless it exists; refuses one that is not empty.
fn check_empty(dir: &Path) -> Result<()> {
    if dir.exists() && std::fs::read_dir(dir).map_err(|e| IndexError::io(dir, e))?.next().is_some()
    {
        return Err(IndexError::Invalid(format!(
            "{} already exists and is not empty",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))
}

/// Settings for an index built by `embedder` (known by `model`), with the
/// given width (default: the model's) and prefixes.
pub fn settings_for(
    embedder: &dyn Embedder,
    model: crate::store::ModelIdentity,
    dimensions: Option<usize>,
    query_prefix: Option<String>,
    document_prefix: Option<String>,
) -> Result<IndexSettings> {
    let full = embedder.dimension();
    let dimensions = dimensions.unwrap_or(full);
    if dimensions == 0 || dimensions > full {
        return Err(IndexError::Invalid(format!(
            "dimensions {dimensions} is outside 1..={full}, the model's width"
        )));
    }
    Ok(IndexSettings { model, dimensions, query_prefix, document_prefix, metric: Metric::Cosine })
}

/// Embeds query texts as the index's settings say.
pub fn embed_queries(
    embedder: &dyn Embedder,
    settings: &IndexSettings,
    queries: &[String],
) -> Result<Vec<Vec<f32>>> {
    embed(embedder, settings, queries, settings.query_prefix.as_deref())
}

/// Embeds `texts` with `prefix` at the index's width, unit length.
pub(crate) fn embed(
    embedder: &dyn Embedder,
    settings: &IndexSettings,
    texts: &[String],
    prefix: Option<&str>,
) -> Result<Vec<Vec<f32>>> {
    let full = embedder.dimension();
    if settings.dimensions > full {
        return Err(IndexError::ModelMismatch(format!(
            "the index holds {}-wide vectors; model {:?} gives {full}",
            settings.dimensions,
            embedder.name()
        )));
    }
    let options = EmbedOptions {
        prefix: prefix.map(str::to_string),
        dimensions: (settings.dimensions < full).then_some(settings.dimensions),
        ..EmbedOptions::default()
    };
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut vectors = embedder.embed(&refs, &options)?.vectors;
    for v in &mut vectors {
        sembase_embed::vectors::normalize(v);
    }
    Ok(vectors)
}

/// Moves a fully built index from `from` (a scratch directory) to `to`, which
/// must not exist (or be empty), so that an interrupted build leaves nothing at `to`.
pub fn publish(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir(to).map_err(|_| {
            IndexError::Invalid(format!("{} already exists and is not empty", to.display()))
        })?;
    }
    Ok(durable::rename(from, to)?)
}
