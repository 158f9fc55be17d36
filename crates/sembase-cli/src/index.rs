//! `sembase index build|add|delete`: make an index of a corpus and change it by
//! id; `work` and `status` for queued builds are in [`crate::index_queue`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use sembase_core::Embedder;
use sembase_index::index::{read_spec, settings_for};
use sembase_index::npy::read_npy_f32;
use sembase_index::postgres::DiskUsage;
use sembase_index::{
    build_index, read_corpus, Access, AnnParams, BuildVectors, Index, PostgresStore, StoreSpec,
};

use crate::embed::progress_bar;
use crate::index_model::{default_prefixes, model_identity, IndexModelArgs};
use crate::index_queue::{StatusArgs, WorkArgs};
use crate::models::{load_local, ComputeArgs};
use sembase_embed::durable::AtomicFile;

#[derive(Subcommand)]
pub enum IndexCommand {
    /// Embed a corpus into a new index directory.
    Build(Box<BuildArgs>),
    /// Add or replace documents (by id) in an index.
    Add(AddArgs),
    /// Remove documents by id from an index.
    Delete(DeleteArgs),
    /// Remove a whole index: its directory and, for postgres, its table, settings and queue.
    Drop(DropArgs),
    /// Embed the chunks of a queued build (postgres store); run on any number of machines.
    Work(WorkArgs),
    /// Where a queued build is: chunks done / claimed / waiting, rows, rate, time left.
    Status(StatusArgs),
}

#[derive(Args)]
pub struct BuildArgs {
    /// A store name or a model directory.
    #[arg(long)]
    model: String,
    /// `.jsonl` (`_id`/`id`, `text`, optional `title`, `metadata`) or a text file (line number as id).
    #[arg(long)]
    corpus: PathBuf,
    /// The new index directory (must not exist or be empty).
    #[arg(long)]
    output: PathBuf,
    /// `flat` (exact), `ann` (HNSW graph) or a `postgres://` URL; the URL may set
    /// `pool_max_conns` (16), `connect_timeout` (10 s) and `statement_timeout` (60s).
    #[arg(long, default_value = "flat")]
    store: String,
    /// Stored vector precision: f32, f16 or int8 (flat and ann); f32 (vector), f16
    /// (halfvec) or bit (binary_quantize, re-ranked on the full vectors) for postgres.
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Keep the first N dimensions (Matryoshka); default: the model's width.
    #[arg(long)]
    dimensions: Option<usize>,
    /// Put before every query; default: the model's "query" prompt (e5: "query: ").
    #[arg(long)]
    query_prefix: Option<String>,
    /// Put before every document; default: the model's "passage" prompt (e5: "passage: ").
    #[arg(long)]
    document_prefix: Option<String>,
    /// Vectors made beforehand (`sembase embed --output X.npy` of the documents'
    /// texts with the document prefix), one row per corpus document.
    #[arg(long, value_name = "FILE.npy")]
    vectors: Option<PathBuf>,
    /// ann: links per node (HNSW M).
    #[arg(long, default_value_t = AnnParams::default().connectivity)]
    connectivity: usize,
    /// ann: candidate list while inserting (efConstruction).
    #[arg(long, default_value_t = AnnParams::default().expansion_add)]
    expansion_add: usize,
    /// ann: candidate list while searching (ef).
    #[arg(long, default_value_t = AnnParams::default().expansion_search)]
    expansion_search: usize,
    /// ann: newly written documents searched exactly before they join the graph.
    #[arg(long, default_value_t = AnnParams::default().delta_limit)]
    delta_limit: usize,
    /// postgres: the table name (default: the output directory's name).
    #[arg(long)]
    table: Option<String>,
    /// postgres: stage the corpus in the database and return; `sembase index work`
    /// processes embed it, chunk by chunk, on any number of machines.
    #[arg(long)]
    queue: bool,
    /// With --queue: documents per chunk (the unit of work, and of work redone
    /// when a worker dies).
    #[arg(long, default_value_t = 1000, requires = "queue")]
    chunk_size: usize,
    /// With --queue: re-embed the existing index of --table (e.g. with a new
    /// model); it keeps serving until the new one is swapped in, complete.
    #[arg(long, requires = "queue")]
    replace: bool,
    /// Write {"documents", "seconds", "bytes"} as JSON.
    #[arg(long, value_name = "OUT")]
    json: Option<PathBuf>,
    #[command(flatten)]
    compute: ComputeArgs,
}

#[derive(Args)]
pub struct AddArgs {
    /// The index directory.
    #[arg(long)]
    index: PathBuf,
    /// Documents to add or replace, in the corpus formats of `index build`.
    #[arg(long)]
    corpus: PathBuf,
    /// Documents per committed write (each is crash-safe on its own).
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    #[command(flatten)]
    model: IndexModelArgs,
}

#[derive(Args)]
pub struct DropArgs {
    /// The index directory.
    #[arg(long)]
    index: PathBuf,
}

#[derive(Args)]
pub struct DeleteArgs {
    /// The index directory.
    #[arg(long)]
    index: PathBuf,
    /// Ids to remove. Repeatable.
    #[arg(long = "id")]
    ids: Vec<String>,
    /// A file of ids to remove, one per line.
    #[arg(long)]
    ids_file: Option<PathBuf>,
}

pub fn run(cmd: IndexCommand) -> Result<()> {
    match cmd {
        IndexCommand::Build(args) => build(*args),
        IndexCommand::Add(args) => add(args),
        IndexCommand::Delete(args) => delete(args),
        IndexCommand::Drop(args) => drop_index(args),
        IndexCommand::Work(args) => crate::index_queue::work(args),
        IndexCommand::Status(args) => crate::index_queue::status(args),
    }
}

fn build(args: BuildArgs) -> Result<()> {
    args.compute.apply_threads();
    let started = Instant::now();
    let docs = read_corpus(&args.corpus)?;
    if docs.is_empty() {
        bail!("{} holds no documents", args.corpus.display());
    }
    let (_, identity) = model_identity(&args.model)?;
    let model = load_local(&args.model, None, args.compute.batch_tokens, None)?;
    let (query, document) = default_prefixes(&model);
    let settings = settings_for(
        &model,
        identity,
        args.dimensions,
        args.query_prefix.or(query),
        args.document_prefix.or(document),
    )?;
    let params = AnnParams {
        connectivity: args.connectivity,
        expansion_add: args.expansion_add,
        expansion_search: args.expansion_search,
        delta_limit: args.delta_limit,
    };
    let table = args.table.unwrap_or_else(|| table_name(&args.output));
    let spec = StoreSpec::parse(&args.store, &args.precision, params, &table)?;
    if args.queue {
        if args.vectors.is_some() {
            bail!("--vectors cannot be used with --queue: the workers embed the corpus");
        }
        let queued =
            Index::queue(&args.output, settings, spec, &docs, args.chunk_size, args.replace)?;
        let dir = args.output.display();
        eprintln!(
            "queued {} documents in {} chunks for table {table}: run `sembase index work --index \
             {dir}` on any number of machines (`sembase index status --index {dir}` shows progress)",
            queued.rows, queued.chunks
        );
        let seconds = started.elapsed().as_secs_f64();
        let report = serde_json::json!({"documents": queued.rows, "chunks": queued.chunks,
            "queued": true, "seconds": seconds, "store": "postgres"});
        return write_report(args.json.as_deref(), &report);
    }
    eprintln!(
        "building a {} index of {} documents with {} ({} dimensions, query prefix {:?}, document prefix {:?})",
        spec.kind(),
        docs.len(),
        model.name(),
        settings.dimensions,
        settings.query_prefix.as_deref().unwrap_or(""),
        settings.document_prefix.as_deref().unwrap_or("")
    );
    let vectors = match &args.vectors {
        Some(path) => BuildVectors::Given(read_npy_f32(path)?),
        None => BuildVectors::Embed(&model),
    };
    let total = docs.len();
    let bar = progress_bar(total);
    let index = build_index(&args.output, settings, spec, docs, vectors, &|done| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let database = database_usage(index.spec())?;
    let bytes = dir_bytes(index.dir())? + database.map_or(0, |d| d.total);
    eprintln!(
        "{total} documents in {seconds:.1}s, {bytes} bytes on disk: {}",
        index.dir().display()
    );
    let mut report = serde_json::json!({"documents": total, "seconds": seconds, "bytes": bytes, "store": index.spec().kind()});
    if let Some(usage) = database {
        report["table_bytes"] = usage.table.into();
        report["vector_index_bytes"] = usage.vector_index.into();
    }
    write_report(args.json.as_deref(), &report)
}

/// Writes `report` as one line of JSON to `path`, when given.
fn write_report(path: Option<&Path>, report: &serde_json::Value) -> Result<()> {
    if let Some(path) = path {
        let mut file = AtomicFile::create(path)?;
        writeln!(file, "{report}")?;
        file.commit()?;
    }
    Ok(())
}

fn add(args: AddArgs) -> Result<()> {
    args.model.apply_threads();
    let docs = read_corpus(&args.corpus)?;
    let mut index = Index::open(&args.index, Access::Write)
        .with_context(|| format!("opening {}", args.index.display()))?;
    let model = args.model.load(index.settings())?;
    let total = docs.len();
    let mut docs = docs.into_iter().peekable();
    let mut done = 0;
    while docs.peek().is_some() {
        let batch: Vec<_> = docs.by_ref().take(args.batch.max(1)).collect();
        done += batch.len();
        index.upsert_docs(&model, batch)?;
        eprintln!("committed {done}/{total} documents");
    }
    eprintln!("{} documents in {}", index.store().count()?, args.index.display());
    Ok(())
}

fn delete(args: DeleteArgs) -> Result<()> {
    let mut ids = args.ids;
    if let Some(path) = &args.ids_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        ids.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string));
    }
    if ids.is_empty() {
        bail!("give --id ID (repeatable) or --ids-file FILE");
    }
    let mut index = Index::open(&args.index, Access::Write)
        .with_context(|| format!("opening {}", args.index.display()))?;
    let removed = index.store_mut().delete(&ids)?;
    eprintln!(
        "removed {removed} of {} ids; {} documents in {}",
        ids.len(),
        index.store().count()?,
        args.index.display()
    );
    Ok(())
}

/// Removes the database's part of the index first: a directory left behind
/// after that can be removed by hand, a table left behind could not be found again.
fn drop_index(args: DropArgs) -> Result<()> {
    let dir = &args.index;
    if let StoreSpec::Postgres { url, table, .. } = read_spec(dir)? {
        PostgresStore::remove(&url, &table)?;
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    eprintln!("dropped {}", dir.display());
    Ok(())
}

/// A PostgreSQL table name from a directory name: lower-case letters, digits
/// and underscores, starting with a letter.
fn table_name(dir: &Path) -> String {
    let raw = dir.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let clean: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("sembase_{clean}")
}

/// Bytes a store keeps in a database (a PostgreSQL table's rows, TOAST data and
/// indexes); `None` for the file stores.
fn database_usage(spec: &StoreSpec) -> Result<Option<DiskUsage>> {
    Ok(match spec {
        StoreSpec::Postgres { url, table, .. } => {
            Some(PostgresStore::open(url, table)?.disk_usage()?)
        }
        StoreSpec::Flat { .. } | StoreSpec::Ann { .. } => None,
    })
}

/// Total size of the files in a directory.
fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}
