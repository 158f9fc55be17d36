//! `index build`: a whole corpus into a new index directory, embedded in
//! batches and committed as one write (so an ANN graph is built once, over
//! everything); the index appears at its final path only when complete.

use std::path::{Path, PathBuf};

use sembase_embed::Embedder;

use crate::corpus::CorpusDoc;
use crate::error::{IndexError, Result};
use crate::index::{embed, publish, Index, StoreSpec, INDEX_FILE};
use crate::postgres::PostgresStore;
use crate::store::{check_widths, Document, IndexSettings};

/// Documents embedded per call to the model (progress is reported per batch).
const EMBED_BATCH: usize = 1024;

/// Where the vectors of a build come from.
pub enum BuildVectors<'a> {
    /// Embed each document's text with this model and the recorded document prefix.
    Embed(&'a dyn Embedder),
    /// Vectors made beforehand (e.g. by `sembase embed`), one per document in
    /// order, already made with the recorded settings; normalised here.
    Given(Vec<Vec<f32>>),
}

/// Builds an index of `docs` at `dir` (which must not exist or be empty),
/// calling `progress` with the number of documents done so far.
pub fn build_index(
    dir: &Path,
    settings: IndexSettings,
    spec: StoreSpec,
    docs: Vec<CorpusDoc>,
    vectors: BuildVectors,
    progress: &dyn Fn(usize),
) -> Result<Index> {
    if let BuildVectors::Given(given) = &vectors {
        if given.len() != docs.len() {
            return Err(IndexError::Invalid(format!(
                "{} vectors for {} documents",
                given.len(),
                docs.len()
            )));
        }
        check_widths(given.iter().map(Vec::as_slice), settings.dimensions)?;
    }
    let scratch = scratch_dir(dir);
    let result =
        fill(&scratch, settings, spec.clone(), docs, vectors, progress).and_then(|index| {
            drop(index);
            publish(&scratch, dir)
        });
    if let Err(e) = result {
        discard(&scratch, &spec);
        return Err(e);
    }
    Index::open(dir, crate::segments::Access::Read)
}

/// Removes what a failed build made: the scratch directory and, once the index
/// was created there (its `index.json` exists), its PostgreSQL table, which
/// would otherwise block the next build under the same name.
fn discard(scratch: &Path, spec: &StoreSpec) {
    if let StoreSpec::Postgres { url, table, .. } = spec {
        if scratch.join(INDEX_FILE).exists() {
            let _ = PostgresStore::remove(url, table);
        }
    }
    let _ = std::fs::remove_dir_all(scratch);
}

/// A hidden sibling of `dir` to build in.
fn scratch_dir(dir: &Path) -> PathBuf {
    let name =
        dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "index".into());
    dir.with_file_name(format!(".{name}.building-{}", std::process::id()))
}

fn fill(
    scratch: &Path,
    settings: IndexSettings,
    spec: StoreSpec,
    docs: Vec<CorpusDoc>,
    vectors: BuildVectors,
    progress: &dyn Fn(usize),
) -> Result<Index> {
    let mut index = Index::create(scratch, settings.clone(), spec)?;
    let mut done = 0;
    let mut all: Vec<Document> = Vec::with_capacity(docs.len());
    let mut docs = docs.into_iter().peekable();
    while docs.peek().is_some() {
        let batch: Vec<CorpusDoc> = docs.by_ref().take(EMBED_BATCH).collect();
        let batch_vectors = match &vectors {
            BuildVectors::Embed(model) => {
                let texts: Vec<String> = batch.iter().map(CorpusDoc::embed_text).collect();
                embed(*model, &settings, &texts, settings.document_prefix.as_deref())?
            }
            BuildVectors::Given(all) => {
                all[done..done + batch.len()].iter().map(|v| unit(v.clone())).collect()
            }
        };
        done += batch.len();
        all.extend(batch.into_iter().zip(batch_vectors).map(|(d, v)| d.into_document(v)));
        progress(done);
    }
    index.store_mut().upsert(&all)?;
    Ok(index)
}

/// `v` scaled to unit length.
fn unit(mut v: Vec<f32>) -> Vec<f32> {
    sembase_embed::vectors::normalize(&mut v);
    v
}
