//! Queueing a build: the corpus staged in chunks, the build recorded, and the
//! table it fills created, all in one transaction.

use postgres::types::Json;

use super::sql::{self, Names};
use crate::corpus::CorpusDoc;
use crate::error::{IndexError, Result};
use crate::postgres::pool::Pool;
use crate::postgres::precision::PgPrecision;
use crate::postgres::table::{self, Layout, Table};
use crate::postgres::{registry_write, EF_SEARCH};
use crate::store::{IndexSettings, Metadata};

/// What [`enqueue`] queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    pub chunks: usize,
    pub rows: usize,
}

/// Queues a build of the index `table` at `url` from `docs` (unique ids), in
/// chunks of `chunk_size`, to be embedded as `settings` say and kept at
/// `precision`. Without `replace` the name must be free; with it, an index of
/// that name must exist, and keeps serving until the new one is swapped in.
/// Refused while another build of the index is unfinished.
pub fn enqueue(
    url: &str,
    table: &str,
    settings: &IndexSettings,
    precision: PgPrecision,
    docs: &[CorpusDoc],
    chunk_size: usize,
    replace: bool,
) -> Result<Queued> {
    if chunk_size == 0 {
        return Err(IndexError::Invalid("the chunk size must be at least 1".into()));
    }
    if docs.is_empty() {
        return Err(IndexError::Invalid("a queued build needs at least one document".into()));
    }
    let names = Names::new(Table::new(table)?);
    let layout = Layout { precision, dimensions: settings.dimensions };
    let recorded =
        serde_json::to_value(settings).map_err(|e| IndexError::Invalid(e.to_string()))?;
    let name = names.live.name();
    registry_write(&Pool::connect(url, EF_SEARCH)?, |tx| {
        if super::building(tx, &names.live)? {
            return Err(IndexError::Invalid(format!(
                "a queued build of {name:?} is unfinished: run `sembase index work` to finish \
                 it (`sembase index status` shows where it is)"
            )));
        }
        let live = tx.query_opt(&table::settings_sql(), &[&name])?.is_some();
        match (live, replace) {
            (true, false) => {
                return Err(IndexError::Invalid(format!(
                    "the database already holds an index named {name:?} (--replace re-embeds it)"
                )))
            }
            (false, true) => {
                return Err(IndexError::Invalid(format!(
                    "the database holds no index named {name:?} to replace"
                )))
            }
            _ => {}
        }
        // What a finished earlier build left (its queue, for status) goes now.
        tx.batch_execute(&names.drop_sql())?;
        tx.batch_execute(&format!("{}; {}", names.next.create_sql(layout), names.create_sql()))?;
        tx.execute(
            &sql::record_build_sql(),
            &[&name, &Json(&recorded), &precision.name(), &replace],
        )?;
        let stage = tx.prepare(&names.stage_sql())?;
        let mut numbers: Vec<i32> = Vec::new();
        let mut rows: Vec<i32> = Vec::new();
        for (number, chunk) in docs.chunks(chunk_size).enumerate() {
            let number = i32::try_from(number)
                .map_err(|_| IndexError::Invalid("more than 2^31 chunks".into()))?;
            let ids: Vec<&str> = chunk.iter().map(|d| d.id.as_str()).collect();
            let titles: Vec<&str> = chunk.iter().map(|d| d.title.as_str()).collect();
            let texts: Vec<&str> = chunk.iter().map(|d| d.text.as_str()).collect();
            let metadata: Vec<Json<&Metadata>> = chunk.iter().map(|d| Json(&d.metadata)).collect();
            tx.execute(&stage, &[&number, &ids, &titles, &texts, &metadata])?;
            numbers.push(number);
            rows.push(chunk.len() as i32);
        }
        tx.execute(&names.enqueue_sql(), &[&numbers, &rows])?;
        Ok(())
    })?;
    Ok(Queued { chunks: docs.len().div_ceil(chunk_size), rows: docs.len() })
}
