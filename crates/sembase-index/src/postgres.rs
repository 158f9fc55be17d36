//! PostgreSQL + pgvector: an index kept as one table (`id text` primary key,
//! `text`, `metadata jsonb`, `embedding vector(N)` or `halfvec(N)`) with an HNSW
//! index ([`precision`] says which), its settings recorded in the
//! `sembase_indexes` table. [`queue`] fills one from many workers.
//!
//! Several processes (say, `sembase serve` replicas) may open one index at once:
//! every write is one transaction, readers see committed rows only, and writers
//! lock rows in id order so that overlapping batches do not deadlock (a conflict
//! the server still reports is retried).

pub mod limits;
mod pool;
pub mod precision;
pub mod queue;
mod table;

use postgres::error::SqlState;
use postgres::types::Json;
use postgres::Transaction;

use crate::error::{IndexError, Result};
use crate::store::{
    check_ids, check_widths, Document, Filter, Hit, IndexSettings, Metadata, VectorStore,
};

use pool::Pool;
pub use pool::EF_SEARCH;
pub use precision::PgPrecision;
use table::{Layout, Table};

/// Rows sent per INSERT statement inside one upsert transaction.
const UPSERT_CHUNK: usize = 1000;
/// Extra rows fetched past `k` so that hits tied in score at the cut are
/// ordered by id, as in the other stores.
const TIE_SLACK: usize = 8;
/// Attempts of a write that the server aborts for a deadlock or serialisation conflict.
const WRITE_ATTEMPTS: usize = 5;

/// An index in a PostgreSQL database with the pgvector extension.
pub struct PostgresStore {
    settings: IndexSettings,
    layout: Layout,
    table: Table,
    pool: Pool,
}

/// Where an index's bytes are in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// The table's rows with their TOAST data.
    pub table: u64,
    /// The HNSW index: what a search walks, best kept in memory.
    pub vector_index: u64,
    /// Everything: rows, TOAST and every index (the primary key's too).
    pub total: u64,
}

impl PostgresStore {
    /// Creates the index `table` in the database at `url` for vectors made with
    /// `settings`, kept at `precision`; fails if an index or table of that name
    /// exists. Installs the `vector` extension when it is missing (which needs the
    /// right to).
    pub fn create(
        url: &str,
        table: &str,
        settings: &IndexSettings,
        precision: PgPrecision,
    ) -> Result<Self> {
        let table = Table::new(table)?;
        let pool = Pool::connect(url, EF_SEARCH)?;
        let layout = Layout { precision, dimensions: settings.dimensions };
        registry_write(&pool, |tx| {
            if queue::building(tx, &table)? {
                return Err(IndexError::Invalid(format!(
                    "a queued build of {:?} is in progress (sembase index status)",
                    table.name()
                )));
            }
            register(tx, &table, settings, precision, false)?;
            Ok(tx.batch_execute(&format!(
                "{}; {}",
                table.create_sql(layout),
                table.create_hnsw_sql(layout)
            ))?)
        })?;
        Ok(Self { settings: settings.clone(), layout, table, pool })
    }

    /// Removes the index `table` (its table, recorded settings and any queued
    /// build with its tables) from the database at `url`, if it is there.
    pub fn remove(url: &str, table: &str) -> Result<()> {
        let table = Table::new(table)?;
        registry_write(&Pool::connect(url, EF_SEARCH)?, |tx| {
            queue::forget(tx, &table)?;
            tx.batch_execute(&table.drop_sql())?;
            tx.execute(&table::unregister_sql(), &[&table.name()])?;
            Ok(())
        })
    }

    /// Opens the index `table` in the database at `url` with the settings recorded
    /// when it was created.
    pub fn open(url: &str, table: &str) -> Result<Self> {
        PostgresStore::open_tuned(url, table, None)
    }

    /// [`PostgresStore::open`], searching with `ef_search` HNSW candidates
    /// (1 to 1000) instead of [`EF_SEARCH`]: more is better recall, slower.
    pub fn open_tuned(url: &str, table: &str, ef_search: Option<usize>) -> Result<Self> {
        let table = Table::new(table)?;
        let pool = Pool::connect(url, ef_search.unwrap_or(EF_SEARCH))?;
        let row =
            pool.get()?.client().query_opt(&table::settings_sql(), &[&table.name()]).map_err(
                |e| {
                    if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
                        no_index(&table)
                    } else {
                        e.into()
                    }
                },
            )?;
        let row = row.ok_or_else(|| no_index(&table))?;
        let Json(settings): Json<IndexSettings> = row.get(0);
        let precision: PgPrecision = row.get::<_, String>(1).parse()?;
        let layout = Layout { precision, dimensions: settings.dimensions };
        Ok(Self { settings, layout, table, pool })
    }

    /// How the vectors are kept.
    pub fn precision(&self) -> PgPrecision {
        self.layout.precision
    }

    /// The index's size on disk, in bytes.
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let mut session = self.pool.get()?;
        let row = session.client().query_one(&self.table.size_sql(), &[])?;
        let bytes = |i: usize| row.get::<_, i64>(i).max(0) as u64;
        Ok(DiskUsage { table: bytes(0), vector_index: bytes(1), total: bytes(2) })
    }

    /// Runs `write` in a transaction and commits it, again from the start when the
    /// server aborts it for a deadlock or a serialisation conflict.
    fn write<T>(
        &self,
        write: impl Fn(&mut Transaction<'_>, &Table) -> Result<T, postgres::Error>,
    ) -> Result<T> {
        let mut session = self.pool.get()?;
        let mut attempt = 1;
        loop {
            let outcome = session.client().transaction().and_then(|mut tx| {
                let value = write(&mut tx, &self.table)?;
                tx.commit()?;
                Ok(value)
            });
            match outcome {
                Err(e) if attempt < WRITE_ATTEMPTS && is_conflict(&e) => attempt += 1,
                outcome => return Ok(outcome?),
            }
        }
    }
}

impl VectorStore for PostgresStore {
    fn settings(&self) -> &IndexSettings {
        &self.settings
    }

    fn upsert(&mut self, docs: &[Document]) -> Result<()> {
        check_ids(docs.iter().map(|d| d.id.as_str()))?;
        check_widths(docs.iter().map(|d| d.vector.as_slice()), self.settings.dimensions)?;
        let mut sorted: Vec<&Document> = docs.iter().collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        let layout = self.layout;
        self.write(|tx, table| {
            // Into an empty table, building the graph once after loading is several
            // times faster than inserting row by row into it.
            let bulk: bool = tx.query_one(&table.is_empty_sql(), &[])?.get(0);
            if bulk {
                tx.batch_execute(&table.drop_hnsw_sql())?;
            }
            upsert_rows(tx, table, &sorted)?;
            if bulk {
                tx.batch_execute(&table.build_hnsw_sql(layout, sorted.len()))?;
            }
            Ok(())
        })
    }

    fn delete(&mut self, ids: &[String]) -> Result<usize> {
        let mut sorted: Vec<&str> = ids.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let removed = self.write(|tx, table| tx.execute(&table.delete_sql(), &[&sorted]))?;
        Ok(removed as usize)
    }

    fn search(
        &self,
        queries: &[Vec<f32>],
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<Vec<Hit>>> {
        check_widths(queries.iter().map(Vec::as_slice), self.settings.dimensions)?;
        if k == 0 {
            return Ok(vec![Vec::new(); queries.len()]);
        }
        let mut session = self.pool.get()?;
        let statement = session.statement(&self.table.search_sql(self.layout, filter.is_some()))?;
        let limit = (k + TIE_SLACK) as i64;
        let filter = filter.map(|f| Json(f.fields()));
        let client = session.client();
        queries
            .iter()
            .map(|query| {
                let vector = pgvector::Vector::from(query.clone());
                let rows = match &filter {
                    Some(filter) => client.query(&statement, &[&vector, &limit, filter])?,
                    None => client.query(&statement, &[&vector, &limit])?,
                };
                let mut hits: Vec<Hit> = rows
                    .into_iter()
                    .map(|row| {
                        let Json(metadata): Json<Metadata> = row.get(2);
                        Hit { id: row.get(0), text: row.get(1), metadata, score: row.get(3) }
                    })
                    .collect();
                hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| b.id.cmp(&a.id)));
                hits.truncate(k);
                Ok(hits)
            })
            .collect()
    }

    fn count(&self) -> Result<usize> {
        let mut session = self.pool.get()?;
        let rows: i64 = session.client().query_one(&self.table.count_sql(), &[])?.get(0);
        Ok(rows.max(0) as usize)
    }

    fn ping(&self) -> Result<()> {
        self.pool.get()?.client().simple_query("SELECT 1")?;
        Ok(())
    }
}

impl From<postgres::Error> for IndexError {
    fn from(e: postgres::Error) -> Self {
        IndexError::Database(db_message(&e))
    }
}

/// Runs `write` in one transaction that holds the registry's lock, after making
/// sure the `vector` extension and the registry exist (concurrent `IF NOT EXISTS`
/// creations can collide, hence the lock).
fn registry_write(
    pool: &Pool,
    write: impl FnOnce(&mut Transaction<'_>) -> Result<()>,
) -> Result<()> {
    let mut session = pool.get()?;
    let mut tx = session.client().transaction()?;
    tx.batch_execute(&table::lock_registry_sql())?;
    tx.batch_execute("CREATE EXTENSION IF NOT EXISTS vector").map_err(|e| {
        IndexError::Database(format!(
            "the pgvector extension is missing and could not be installed ({}): \
             ask the database owner to run CREATE EXTENSION vector",
            db_message(&e)
        ))
    })?;
    tx.batch_execute(&table::create_registry_sql())?;
    tx.batch_execute(&queue::create_builds_sql())?;
    write(&mut tx)?;
    Ok(tx.commit()?)
}

/// Upserts `docs` into `table`, in their order (sorted by id, so that
/// concurrent writers lock rows in one order), a statement per [`UPSERT_CHUNK`].
fn upsert_rows(
    tx: &mut Transaction<'_>,
    table: &Table,
    docs: &[&Document],
) -> Result<(), postgres::Error> {
    let statement = tx.prepare(&table.upsert_sql())?;
    for chunk in docs.chunks(UPSERT_CHUNK) {
        let ids: Vec<&str> = chunk.iter().map(|d| d.id.as_str()).collect();
        let texts: Vec<&str> = chunk.iter().map(|d| d.text.as_str()).collect();
        let metadata: Vec<Json<&Metadata>> = chunk.iter().map(|d| Json(&d.metadata)).collect();
        let vectors: Vec<pgvector::Vector> =
            chunk.iter().map(|d| pgvector::Vector::from(d.vector.clone())).collect();
        tx.execute(&statement, &[&ids, &texts, &metadata, &vectors])?;
    }
    Ok(())
}

/// Records `settings` and `precision` for `table` in the registry (whose lock
/// the transaction holds); `replace` overwrites what is recorded under the name.
fn register(
    tx: &mut Transaction<'_>,
    table: &Table,
    settings: &IndexSettings,
    precision: PgPrecision,
    replace: bool,
) -> Result<()> {
    let recorded =
        serde_json::to_value(settings).map_err(|e| IndexError::Invalid(e.to_string()))?;
    tx.execute(
        &table::register_sql(replace),
        &[&table.name(), &Json(&recorded), &precision.name()],
    )
    .map_err(|e| {
        if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            IndexError::Invalid(format!(
                "the database already holds an index named {:?}",
                table.name()
            ))
        } else {
            e.into()
        }
    })?;
    Ok(())
}

/// The server's message when there is one (the error's own text says only "db error").
fn db_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) if *db.code() == SqlState::QUERY_CANCELED => format!(
            "{}: {} (a statement running past statement_timeout is cancelled: \
             set a longer one with statement_timeout= in the database URL, default {})",
            db.severity(),
            db.message(),
            limits::DEFAULT_STATEMENT_TIMEOUT
        ),
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

/// Whether the server aborted a transaction that would succeed if run again.
fn is_conflict(e: &postgres::Error) -> bool {
    matches!(e.code(), Some(code) if *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE)
}

fn no_index(table: &Table) -> IndexError {
    IndexError::Invalid(format!(
        "the database holds no index named {:?} (none recorded in {})",
        table.name(),
        table::REGISTRY
    ))
}
