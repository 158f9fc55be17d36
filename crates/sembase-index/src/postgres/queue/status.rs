//! Where a queued build is: chunks done, claimed and waiting, rows, rate and
//! the time left, counted by the database (so any machine can ask).

use serde::Serialize;

use super::Queue;
use crate::error::Result;

/// A build's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No chunk claimed yet.
    Queued,
    /// Workers are embedding chunks.
    Running,
    /// Every chunk is done; a worker is building the HNSW index and swapping it in.
    Indexing,
    /// The new index is live.
    Done,
}

/// Chunk counts. A chunk whose lease ran out counts as waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChunkCounts {
    pub done: u64,
    pub claimed: u64,
    pub waiting: u64,
}

/// What `sembase index status` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub index: String,
    /// The model the new vectors are made with.
    pub model: String,
    pub precision: String,
    pub state: State,
    /// Rows embedded and applied so far.
    pub rows: u64,
    pub total_rows: u64,
    pub chunks: ChunkCounts,
    /// Workers holding a live lease.
    pub workers: u64,
    /// Claims of chunks whose earlier lease ran out (a worker died or stalled).
    pub reclaimed: u64,
    /// Seconds from the first claim to the last completion (to now while running).
    pub seconds: f64,
    /// Rows applied per second over those seconds.
    pub rows_per_second: Option<f64>,
    /// Rows left over that rate, while running.
    pub eta_seconds: Option<f64>,
}

impl Queue {
    /// The build's status.
    pub fn status(&self) -> Result<Status> {
        let build = self.current()?;
        let mut session = self.pool.get()?;
        let row = session.client().query_one(&self.names.status_sql(), &[])?;
        let count = |i: usize| row.get::<_, i64>(i).max(0) as u64;
        let chunks = ChunkCounts { done: count(0), claimed: count(1), waiting: count(2) };
        let (rows, total_rows) = (count(3), count(4));
        let since_first_claim: Option<f64> = row.get(7);
        let since_last_done: Option<f64> = row.get(8);
        let all_done = chunks.claimed + chunks.waiting == 0;
        let state = match (build.finished, all_done, since_first_claim) {
            (true, _, _) => State::Done,
            (false, true, _) => State::Indexing,
            (false, false, None) => State::Queued,
            (false, false, Some(_)) => State::Running,
        };
        let seconds = match (since_first_claim, since_last_done) {
            (Some(first), Some(last)) if all_done => first - last,
            (Some(first), _) => first,
            _ => 0.0,
        };
        let rows_per_second = (seconds > 0.0 && rows > 0).then(|| rows as f64 / seconds);
        let eta_seconds =
            rows_per_second.filter(|_| !all_done).map(|rate| (total_rows - rows) as f64 / rate);
        Ok(Status {
            index: self.table().to_string(),
            model: build.settings.model.name,
            precision: build.precision.name().to_string(),
            state,
            rows,
            total_rows,
            chunks,
            workers: count(5),
            reclaimed: count(6),
            seconds,
            rows_per_second,
            eta_seconds,
        })
    }
}
