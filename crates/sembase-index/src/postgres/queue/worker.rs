//! A worker: claims chunks, embeds them (renewing its lease meanwhile), applies
//! them, and once nothing is left to claim waits out the other workers' leases
//! until the build is finished.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use sembase_embed::Embedder;

use super::{Build, Claim, Finish, Queue};
use crate::corpus::CorpusDoc;
use crate::error::Result;
use crate::index::embed;
use crate::store::Document;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkOptions {
    /// Recorded with each claim (host and process, say), for people reading the queue.
    pub worker: String,
    /// How long a claim lasts without renewal; renewed every third of it while
    /// the worker embeds, so it runs out only when the worker is gone or stuck.
    pub lease: Duration,
    /// Stop after applying this many chunks.
    pub max_chunks: Option<usize>,
    /// The longest wait between looks at the queue when others hold every chunk left.
    pub poll: Duration,
}

/// What a worker does, for its log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    Claimed(Claim),
    /// The chunk's vectors are in, after this long embedding and applying them.
    Applied(Claim, Duration),
    /// Another claim finished the chunk first (this one's lease had run out).
    Lost(Claim),
    /// Others hold the chunks left.
    Waiting {
        chunks: usize,
    },
    /// The build is finished and the new index is live.
    Finished,
}

/// What a worker did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub chunks: usize,
    pub rows: usize,
    /// Whether the build is finished (false when `max_chunks` stopped the worker first).
    pub finished: bool,
}

/// Works on `build` of `queue` with `model` (the build's model) until the build
/// is finished or `max_chunks` are applied, reporting each step to `log`.
pub fn work(
    queue: &Queue,
    build: &Build,
    model: &dyn Embedder,
    options: &WorkOptions,
    log: &mut dyn FnMut(Event),
) -> Result<Summary> {
    let mut summary = Summary::default();
    loop {
        if options.max_chunks.is_some_and(|max| summary.chunks >= max) {
            return Ok(summary);
        }
        if let Some(claim) = queue.claim(&options.worker, options.lease)? {
            log(Event::Claimed(claim));
            let started = Instant::now();
            let docs = queue.chunk_docs(&claim)?;
            let docs =
                with_lease(queue, &claim, options.lease, || embed_chunk(model, build, docs))?;
            if queue.complete(&claim, &docs?)? {
                summary.chunks += 1;
                summary.rows += claim.rows;
                log(Event::Applied(claim, started.elapsed()));
            } else {
                log(Event::Lost(claim));
            }
            continue;
        }
        match queue.finish()? {
            Finish::Done => {
                summary.finished = true;
                log(Event::Finished);
                return Ok(summary);
            }
            Finish::Pending { chunks, until } => {
                log(Event::Waiting { chunks });
                std::thread::sleep(until.map_or(options.poll, |u| u.min(options.poll)));
            }
        }
    }
}

/// The chunk's documents with their vectors, made as the build's settings say.
fn embed_chunk(model: &dyn Embedder, build: &Build, docs: Vec<CorpusDoc>) -> Result<Vec<Document>> {
    let texts: Vec<String> = docs.iter().map(CorpusDoc::embed_text).collect();
    let settings = &build.settings;
    let vectors = embed(model, settings, &texts, settings.document_prefix.as_deref())?;
    Ok(docs.into_iter().zip(vectors).map(|(d, v)| d.into_document(v)).collect())
}

/// Runs `work` while a second thread renews `claim`'s lease every third of
/// `lease`. Renewal stops once the claim is lost (applying will then be refused);
/// a database error while renewing is returned after `work` ends.
fn with_lease<T>(
    queue: &Queue,
    claim: &Claim,
    lease: Duration,
    work: impl FnOnce() -> T,
) -> Result<T> {
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let renewer = scope.spawn(move || -> Result<()> {
            while stopped.recv_timeout(lease / 3) == Err(RecvTimeoutError::Timeout) {
                if !queue.renew(claim, lease)? {
                    break;
                }
            }
            Ok(())
        });
        let value = work();
        drop(stop);
        renewer.join().expect("the lease renewer does not panic")?;
        Ok(value)
    })
}
