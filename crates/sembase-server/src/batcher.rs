//! The batching queue: one worker thread per model merges queued requests into
//! batches bounded by a token budget, so that many small requests share forward passes.
//!
//! Requests arrive already tokenized (see `handlers`), so a job's cost in tokens is
//! exact. The worker takes the oldest waiting job and every later one with the same
//! `dimensions` while the batch stays within `max_batch_tokens` (a job larger than
//! the budget runs alone), then calls the model once per kind of input in the batch.
//! Jobs whose client went away (their reply channel is closed) are dropped unrun.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use sembase_core::{EmbedOptions, Embedder, Embeddings, Truncation};
use tokio::sync::oneshot;

use crate::metrics::ModelMetrics;

/// One input of a job.
#[derive(Debug, Clone)]
pub(crate) enum Piece {
    /// Token ids ready for the encoder (special tokens included); cut at the limit if longer.
    Ids(Vec<u32>),
    /// A text over the model's limit, prompt already prepended: the model truncates it
    /// (keeping its closing special token, as `embed` does).
    LongText(String),
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JobError {
    /// Something in this request's inputs (the message names the input's index).
    BadInput(String),
    /// The model failed; not the request's fault.
    Internal(String),
}

/// One request's work.
pub(crate) struct Job {
    pub pieces: Vec<Piece>,
    pub dimensions: Option<usize>,
    /// Tokens the job will feed the model (its cost against the batch budget).
    pub tokens: usize,
    pub reply: oneshot::Sender<Result<Embeddings, JobError>>,
    pub enqueued: Instant,
}

/// The sending side of a model's queue.
pub(crate) struct Batcher {
    sender: mpsc::Sender<Job>,
    metrics: Arc<ModelMetrics>,
}

impl Batcher {
    /// Starts the worker thread of `model`.
    pub fn start(model: Arc<dyn Embedder>, max_batch_tokens: usize, metrics: Arc<ModelMetrics>) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel();
        let worker_metrics = metrics.clone();
        std::thread::Builder::new()
            .name(format!("sembase-model-{}", model.name()))
            .spawn(move || worker(model, receiver, max_batch_tokens.max(1), worker_metrics))?;
        Ok(Self { sender, metrics })
    }

    /// Queues a job; gives it back if the worker is gone.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        let tokens = job.tokens;
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        self.metrics.queue_tokens.fetch_add(tokens, Ordering::Relaxed);
        self.sender.send(job).map_err(|mpsc::SendError(job)| {
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            self.metrics.queue_tokens.fetch_sub(tokens, Ordering::Relaxed);
            job
        })
    }
}

fn worker(model: Arc<dyn Embedder>, receiver: mpsc::Receiver<Job>, max_batch_tokens: usize, metrics: Arc<ModelMetrics>) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match receiver.recv() {
                Ok(job) => pending.push_back(job),
                // Every sender is gone and nothing is left to do: the server has stopped.
                Err(mpsc::RecvError) => return,
            }
        }
        while let Ok(job) = receiver.try_recv() {
            pending.push_back(job);
        }
        let batch = take_batch(&mut pending, max_batch_tokens, &metrics);
        if !batch.is_empty() {
            run_batch(model.as_ref(), batch, max_batch_tokens, &metrics);
        }
    }
}

/// Removes abandoned jobs, then takes the next batch: the oldest job and the later ones
/// with the same options, within the token budget.
fn take_batch(pending: &mut VecDeque<Job>, max_batch_tokens: usize, metrics: &ModelMetrics) -> Vec<Job> {
    let dequeued = |job: &Job| {
        metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        metrics.queue_tokens.fetch_sub(job.tokens, Ordering::Relaxed);
    };
    pending.retain(|job| {
        let abandoned = job.reply.is_closed();
        if abandoned {
            dequeued(job);
            metrics.record_dropped();
        }
        !abandoned
    });
    let Some(key) = pending.front().map(|job| job.dimensions) else {
        return Vec::new();
    };
    let mut batch = Vec::new();
    let mut tokens = 0usize;
    let mut i = 0;
    while i < pending.len() && tokens < max_batch_tokens {
        let job = &pending[i];
        if job.dimensions == key && (batch.is_empty() || tokens + job.tokens <= max_batch_tokens) {
            let job = pending.remove(i).expect("index checked");
            dequeued(&job);
            tokens += job.tokens;
            batch.push(job);
        } else {
            i += 1;
        }
    }
    batch
}

/// How a merged batch failed.
enum Failure {
    /// One job's input is at fault: answer it, run the others again.
    Input { job: usize, message: String },
    /// The model failed as a whole.
    All(String),
}

fn run_batch(model: &dyn Embedder, mut jobs: Vec<Job>, max_batch_tokens: usize, metrics: &ModelMetrics) {
    let started = Instant::now();
    for job in &jobs {
        metrics.record_wait(started.duration_since(job.enqueued).as_secs_f64());
    }
    let options = EmbedOptions { prefix: None, dimensions: jobs[0].dimensions, truncate: Truncation::Truncate };
    loop {
        match compute(model, &jobs, &options, max_batch_tokens) {
            Ok(results) => {
                let sequences = results.iter().map(|e| e.vectors.len()).sum();
                let tokens = results.iter().map(Embeddings::total_tokens).sum();
                metrics.record_batch(jobs.len(), sequences, tokens, started.elapsed().as_secs_f64());
                for (job, embeddings) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(embeddings));
                }
                return;
            }
            Err(Failure::Input { job, message }) => {
                let bad = jobs.remove(job);
                let _ = bad.reply.send(Err(JobError::BadInput(message)));
                if jobs.is_empty() {
                    return;
                }
            }
            Err(Failure::All(message)) => {
                for job in jobs {
                    let _ = job.reply.send(Err(JobError::Internal(message.clone())));
                }
                return;
            }
        }
    }
}

/// Runs every job of the batch through the model: `embed_tokens` calls for the token
/// inputs, grouped by length, and one `embed` call for over-long texts. Results in job order.
fn compute(model: &dyn Embedder, jobs: &[Job], options: &EmbedOptions, max_call_tokens: usize) -> Result<Vec<Embeddings>, Failure> {
    let mut ids: Vec<Vec<u32>> = Vec::new();
    let mut id_owners: Vec<(usize, usize)> = Vec::new();
    let mut texts: Vec<&str> = Vec::new();
    let mut text_owners: Vec<(usize, usize)> = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        for (p, piece) in job.pieces.iter().enumerate() {
            match piece {
                Piece::Ids(v) => {
                    ids.push(v.clone());
                    id_owners.push((j, p));
                }
                Piece::LongText(t) => {
                    texts.push(t);
                    text_owners.push((j, p));
                }
            }
        }
    }
    let mut results: Vec<Embeddings> = jobs
        .iter()
        .map(|job| Embeddings { vectors: vec![Vec::new(); job.pieces.len()], token_counts: vec![0; job.pieces.len()] })
        .collect();
    // Token inputs go in groups of similar length (see `plan_calls`), each one call.
    let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
    let mut ids: Vec<Option<Vec<u32>>> = ids.into_iter().map(Some).collect();
    for group in plan_calls(&lengths, max_call_tokens, MAX_CALL_ROWS, CALL_OVERHEAD_TOKENS) {
        let rows: Vec<Vec<u32>> = group.iter().map(|&i| ids[i].take().unwrap_or_default()).collect();
        let owners: Vec<(usize, usize)> = group.iter().map(|&i| id_owners[i]).collect();
        let out = guarded(|| model.embed_tokens(&rows, options), &owners)?;
        scatter(&mut results, out, &owners);
    }
    if !texts.is_empty() {
        let out = guarded(|| model.embed(&texts, options), &text_owners)?;
        scatter(&mut results, out, &text_owners);
    }
    Ok(results)
}

/// Calls the model, turning a panic into a failure and an error naming an input
/// into a failure of that input's job.
fn guarded(call: impl FnOnce() -> sembase_core::Result<Embeddings>, owners: &[(usize, usize)]) -> Result<Embeddings, Failure> {
    let out = match catch_unwind(AssertUnwindSafe(call)) {
        Ok(out) => out,
        Err(_) => return Err(Failure::All("the model failed unexpectedly".into())),
    };
    let out = out.map_err(|error| {
        let located = match &error {
            sembase_core::Error::InvalidTokenId { index, id, vocab } => owners.get(*index).map(|&(job, input)| {
                (job, format!("input {input} has token id {id}, outside the model's vocabulary of {vocab} entries"))
            }),
            sembase_core::Error::InputTooLong { index, tokens, limit } => owners.get(*index).map(|&(job, input)| {
                (job, format!("input {input} has {tokens} tokens, more than the model's limit of {limit}"))
            }),
            _ => None,
        };
        match located {
            Some((job, message)) => Failure::Input { job, message },
            None => Failure::All(format!("model error: {error}")),
        }
    })?;
    if out.vectors.len() != owners.len() || out.token_counts.len() != owners.len() {
        return Err(Failure::All("the model returned the wrong number of vectors".into()));
    }
    Ok(out)
}

fn scatter(results: &mut [Embeddings], out: Embeddings, owners: &[(usize, usize)]) {
    for ((vector, tokens), &(job, input)) in out.vectors.into_iter().zip(out.token_counts).zip(owners) {
        results[job].vectors[input] = vector;
        results[job].token_counts[input] = tokens;
    }
}

/// Rows per model call.
const MAX_CALL_ROWS: usize = 512;
/// The fixed cost of one model call, in padded tokens' worth of compute (measured on
/// all-minilm-l6-v2 on CPU: a call costs about this much more than its tokens).
const CALL_OVERHEAD_TOKENS: usize = 64;

/// Splits inputs of the given lengths into model calls, minimising the estimated cost
/// `calls * overhead + sum(rows * longest row)`: a merged batch of short and long
/// inputs would otherwise pad every short one to the longest. Each call holds at most
/// `max_rows` rows and `max_tokens` padded tokens (one over-long input goes alone).
/// Returns indices into `lengths`, longest first.
pub(crate) fn plan_calls(lengths: &[usize], max_tokens: usize, max_rows: usize, overhead: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let n = order.len();
    // best[j]: least cost of the first j inputs (in `order`); cut[j]: where its last call starts.
    let mut best = vec![0usize; n + 1];
    let mut cut = vec![0usize; n + 1];
    for j in 1..=n {
        best[j] = usize::MAX;
        for i in (j.saturating_sub(max_rows.max(1))..j).rev() {
            let rows = j - i;
            let padded = rows * lengths[order[i]].max(1);
            if rows > 1 && padded > max_tokens {
                // `i` only moves to longer rows from here: nothing further fits.
                break;
            }
            let cost = best[i] + overhead + padded;
            if cost < best[j] {
                best[j] = cost;
                cut[j] = i;
            }
        }
    }
    let mut calls = Vec::new();
    let mut j = n;
    while j > 0 {
        calls.push(order[cut[j]..j].to_vec());
        j = cut[j];
    }
    calls.reverse();
    calls
}

#[cfg(test)]
mod tests {
    use super::plan_calls;

    fn check(lengths: &[usize], max_tokens: usize, max_rows: usize) -> Vec<Vec<usize>> {
        let calls = plan_calls(lengths, max_tokens, max_rows, 64);
        let mut seen: Vec<usize> = calls.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>(), "every input exactly once");
        for call in &calls {
            let width = call.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(call.len() == 1 || call.len() * width <= max_tokens, "over the budget");
            assert!(call.len() <= max_rows);
        }
        calls
    }

    #[test]
    fn similar_lengths_share_one_call() {
        assert_eq!(check(&[10, 12, 11, 12], 16384, 512).len(), 1);
    }

    #[test]
    fn short_inputs_are_not_padded_to_a_long_one() {
        let mut lengths = vec![12; 60];
        lengths.push(200);
        let calls = check(&lengths, 16384, 512);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0], vec![60]);
    }

    #[test]
    fn budget_and_rows_bound_each_call() {
        let lengths: Vec<usize> = (0..3000).map(|i| 1 + (i * 37) % 300).collect();
        check(&lengths, 4096, 64);
        let calls = check(&[5000, 3, 3], 100, 8);
        assert_eq!(calls[0], vec![0]);
        assert!(check(&[], 100, 8).is_empty());
    }
}
