//! One chunk's way through a worker: claimed under a lease, its documents
//! read, the lease renewed while they are embedded, and their vectors applied
//! exactly once.

use std::time::Duration;

use postgres::types::Json;

use super::Queue;
use crate::corpus::CorpusDoc;
use crate::error::Result;
use crate::postgres::upsert_rows;
use crate::store::{check_ids, Document, Metadata};

/// A chunk a worker holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub chunk: i32,
    /// How many times the chunk has been claimed, this claim included: the
    /// fencing token that [`Queue::complete`] checks.
    pub attempt: i32,
    pub rows: usize,
}

impl Queue {
    /// Claims the lowest waiting chunk for `worker` for `lease`; `None` when every
    /// chunk is done or held under a live lease.
    pub fn claim(&self, worker: &str, lease: Duration) -> Result<Option<Claim>> {
        let mut session = self.pool.get()?;
        let row = session
            .client()
            .query_opt(&self.names.claim_sql(), &[&worker, &lease.as_secs_f64()])?;
        Ok(row.map(|row| Claim {
            chunk: row.get(0),
            attempt: row.get(1),
            rows: row.get::<_, i32>(2) as usize,
        }))
    }

    /// Extends `claim`'s lease by `lease` from now; false once the chunk was
    /// claimed again (the lease had run out) or is done.
    pub fn renew(&self, claim: &Claim, lease: Duration) -> Result<bool> {
        let mut session = self.pool.get()?;
        let touched = session.client().execute(
            &self.names.renew_sql(),
            &[&claim.chunk, &claim.attempt, &lease.as_secs_f64()],
        )?;
        Ok(touched == 1)
    }

    /// The documents of `claim`'s chunk, by id.
    pub fn chunk_docs(&self, claim: &Claim) -> Result<Vec<CorpusDoc>> {
        let mut session = self.pool.get()?;
        let rows = session.client().query(&self.names.chunk_docs_sql(), &[&claim.chunk])?;
        Ok(rows
            .iter()
            .map(|row| {
                let Json(metadata): Json<Metadata> = row.get(3);
                CorpusDoc { id: row.get(0), title: row.get(1), text: row.get(2), metadata }
            })
            .collect())
    }

    /// Applies `docs` (the chunk's documents with their vectors, sorted by id) and
    /// marks `claim`'s chunk done, in one transaction; false, with nothing
    /// applied, when another claim of the chunk holds it or finished it first.
    pub fn complete(&self, claim: &Claim, docs: &[Document]) -> Result<bool> {
        check_ids(docs.iter().map(|d| d.id.as_str()))?;
        let sorted: Vec<&Document> = docs.iter().collect();
        let mut session = self.pool.get()?;
        let mut tx = session.client().transaction()?;
        if tx.execute(&self.names.complete_sql(), &[&claim.chunk, &claim.attempt])? == 0 {
            return Ok(false);
        }
        upsert_rows(&mut tx, &self.names.next, &sorted)?;
        tx.commit()?;
        Ok(true)
    }
}
