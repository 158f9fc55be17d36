//! A queued build: a corpus embedded by any number of workers, with PostgreSQL
//! as the coordinator (no service of sembase's own to run or lose).
//!
//! - [`enqueue`] stages the corpus in chunks and records the build, in one
//!   transaction: a build is queued whole or not at all.
//! - Workers [`Queue::claim`] a chunk with `FOR UPDATE SKIP LOCKED` and a lease
//!   (renewed while they embed); a dead worker's lease runs out and the chunk is
//!   claimed again. [`Queue::complete`] upserts a chunk's vectors and marks it done
//!   in one transaction, fenced by the claim's attempt number, so a chunk is
//!   applied exactly once however many workers embedded it.
//! - When no chunk is left, one worker [`Queue::finish`]es: it builds the HNSW
//!   index over the new table and renames it over the live one in one
//!   transaction, so readers see the old index or the new, never a mix, and an
//!   interrupted build resumes from the chunks already done.
//! - [`worker::work`] is that loop; [`Queue::status`] counts the chunks.

mod chunk;
mod enqueue;
mod finish;
mod sql;
mod status;
pub mod worker;

use postgres::types::Json;
use postgres::Transaction;

use super::pool::Pool;
use super::precision::PgPrecision;
use super::table::Table;
use super::EF_SEARCH;
use crate::error::{IndexError, Result};
use crate::store::IndexSettings;

pub use chunk::Claim;
pub use enqueue::{enqueue, Queued};
pub use finish::Finish;
pub(super) use sql::create_builds_sql;
use sql::Names;
pub use status::{ChunkCounts, State, Status};

/// A queued build of one index, recorded in the database.
#[derive(Debug, Clone, PartialEq)]
pub struct Build {
    /// What the new vectors are made with (the model workers must load).
    pub settings: IndexSettings,
    pub precision: PgPrecision,
    /// Whether it replaces a live index when complete.
    pub replace: bool,
    pub finished: bool,
    /// When it was queued, in seconds since the Unix epoch (tells one build from the next).
    pub queued_at: f64,
}

/// The queue of one index's build, in the database at a URL.
pub struct Queue {
    names: Names,
    pool: Pool,
}

impl Queue {
    /// Connects to the queue of the index `table` at `url`.
    pub fn open(url: &str, table: &str) -> Result<Queue> {
        Ok(Queue { names: Names::new(Table::new(table)?), pool: Pool::connect(url, EF_SEARCH)? })
    }

    /// The index's table name.
    pub fn table(&self) -> &str {
        self.names.live.name()
    }

    /// The index's latest queued build, finished or not; `None` when it has none.
    pub fn build(&self) -> Result<Option<Build>> {
        let mut session = self.pool.get()?;
        let row = session.client().query_opt(&sql::build_sql(false), &[&self.table()]);
        match row {
            Ok(row) => row.map(|row| build_of(&row)).transpose(),
            // No build was ever queued in this database.
            Err(e) if e.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// [`Queue::build`], an error when there is none.
    pub fn current(&self) -> Result<Build> {
        self.build()?.ok_or_else(|| {
            IndexError::Invalid(format!(
                "the database holds no queued build of {:?} (queue one with \
                 `sembase index build --queue`)",
                self.table()
            ))
        })
    }
}

/// A build from a row of [`sql::build_sql`].
fn build_of(row: &postgres::Row) -> Result<Build> {
    let Json(settings): Json<IndexSettings> = row.get(0);
    Ok(Build {
        settings,
        precision: row.get::<_, String>(1).parse()?,
        replace: row.get(2),
        finished: row.get(3),
        queued_at: row.get(4),
    })
}

/// Whether `table` has a queued build that has not finished (in a transaction
/// that made sure the builds table exists).
pub(super) fn building(tx: &mut Transaction<'_>, table: &Table) -> Result<bool> {
    Ok(tx.query_one(&sql::building_sql(), &[&table.name()])?.get(0))
}

/// Drops `table`'s queued build and its tables, if any.
pub(super) fn forget(tx: &mut Transaction<'_>, table: &Table) -> Result<()> {
    let names = Names::new(table.clone());
    tx.batch_execute(&names.drop_sql())?;
    tx.execute(&sql::forget_build_sql(), &[&table.name()])?;
    Ok(())
}
