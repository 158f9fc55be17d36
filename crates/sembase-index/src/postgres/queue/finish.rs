//! The end of a build: once every chunk is done, one worker builds the HNSW
//! index over the new table and swaps it in for the live one, in one
//! transaction.

use std::time::Duration;

use super::{build_of, sql, Queue};
use crate::error::Result;
use crate::postgres::register;
use crate::postgres::table::{lock_registry_sql, Layout};

/// Where a build stands after [`Queue::finish`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Finish {
    /// The new index is live.
    Done,
    /// Chunks are still held by other workers (`until`: when the first of their
    /// leases runs out, if one is live), or another worker is finishing.
    Pending { chunks: usize, until: Option<Duration> },
}

impl Queue {
    /// Finishes the build if every chunk is done: builds the HNSW index over
    /// the new table, drops the live table when the build replaces it, renames
    /// the new one (and its indexes) to the live names, records the new
    /// settings and drops the staged corpus, all in one transaction, so readers
    /// see the old index or the new one, and a worker dying here leaves the
    /// build to the next one to try. The build's row stays locked meanwhile:
    /// other workers see it as pending.
    pub fn finish(&self) -> Result<Finish> {
        let names = &self.names;
        let name = names.live.name();
        let mut session = self.pool.get()?;
        let mut tx = session.client().transaction()?;
        let Some(row) = tx.query_opt(&sql::build_sql(true), &[&name])? else {
            return Ok(Finish::Pending { chunks: 0, until: None });
        };
        let build = build_of(&row)?;
        if build.finished {
            return Ok(Finish::Done);
        }
        let pending = tx.query_one(&names.pending_sql(), &[])?;
        let chunks = pending.get::<_, i64>(0) as usize;
        if chunks > 0 {
            let until =
                pending.get::<_, Option<f64>>(1).map(|s| Duration::from_secs_f64(s.max(0.0)));
            return Ok(Finish::Pending { chunks, until });
        }
        let layout = Layout { precision: build.precision, dimensions: build.settings.dimensions };
        let rows: i64 = tx.query_one(&names.next.count_sql(), &[])?.get(0);
        tx.batch_execute(&names.next.build_hnsw_sql(layout, rows as usize))?;
        tx.batch_execute(&lock_registry_sql())?;
        tx.batch_execute(&names.swap_sql(build.replace))?;
        register(&mut tx, &names.live, &build.settings, build.precision, build.replace)?;
        tx.execute(&sql::finished_sql(), &[&name])?;
        tx.commit()?;
        Ok(Finish::Done)
    }
}
