//! The batching queue: one worker thread per model merges queued requests into
//! batches bounded by a token budget, so that many small requests share forward passes.
//!
//! Requests arrive already tokenized (see `handlers`), so a job's cost in tokens is
//! exact. The worker takes the oldest waiting job and every later one with the same
//! `dimensions` while the batch stays within `max_batch_tokens` (a job larger than
//! the budget runs alone), then calls the model once per kind of input in the batch.
//! Jobs whose client went away (their reply channel is closed) are dropped unrun.
//!
//! Before running a batch that is below the budget, the worker lingers briefly while
//! jobs keep arriving (see [`Linger`]): when many clients wait on one batch, their next
//! requests arrive together just after it, and running the first arrival alone would
//! split them into small, slow passes.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sembase_core::{EmbedOptions, Embedder, Embeddings, Truncation};
use tokio::sync::oneshot;

use crate::metrics::ModelMetrics;

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
    /// Each input's token ids, ready for the encoder (special tokens included, within
    /// the model's limit).
    pub pieces: Vec<Vec<u32>>,
    pub dimensions: Option<usize>,
    /// Tokens the job will feed the model (its cost against the batch budget).
    pub tokens: usize,
    pub reply: oneshot::Sender<Result<Embeddings, JobError>>,
    pub enqueued: Instant,
}

/// How long the worker waits for more jobs to join a batch below the budget.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Linger {
    /// The longest wait in all (zero: run what is queued at once).
    pub max: Duration,
    /// Stop waiting as soon as this passes with no new job.
    pub gap: Duration,
}

/// The sending side of a model's queue.
pub(crate) struct Batcher {
    sender: mpsc::Sender<Job>,
    metrics: Arc<ModelMetrics>,
}

impl Batcher {
    /// Starts the worker thread of `model`.
    pub fn start(
        model: Arc<dyn Embedder>,
        max_batch_tokens: usize,
        linger: Linger,
        metrics: Arc<ModelMetrics>,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel();
        let worker_metrics = metrics.clone();
        std::thread::Builder::new().name(format!("sembase-model-{}", model.name())).spawn(
            move || worker(model, receiver, max_batch_tokens.max(1), linger, worker_metrics),
        )?;
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

fn worker(
    model: Arc<dyn Embedder>,
    receiver: mpsc::Receiver<Job>,
    max_batch_tokens: usize,
    linger: Linger,
    metrics: Arc<ModelMetrics>,
) {
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
        gather(&receiver, &mut pending, max_batch_tokens, linger);
        let batch = take_batch(&mut pending, max_batch_tokens, &metrics);
        if !batch.is_empty() {
            run_batch(model.as_ref(), batch, &metrics);
        }
    }
}

/// Waits for more jobs while they keep arriving (at most `linger.gap` apart, for
/// `linger.max` in all) and the queue holds less than one batch's worth of tokens.
fn gather(
    receiver: &mpsc::Receiver<Job>,
    pending: &mut VecDeque<Job>,
    max_batch_tokens: usize,
    linger: Linger,
) {
    if linger.max.is_zero() {
        return;
    }
    let deadline = Instant::now() + linger.max;
    let mut queued: usize = pending.iter().map(|job| job.tokens).sum();
    while queued < max_batch_tokens {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match receiver.recv_timeout(left.min(linger.gap)) {
            Ok(job) => {
                queued += job.tokens;
                pending.push_back(job);
            }
            Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Removes abandoned jobs, then takes the next batch: the oldest job and the later ones
/// with the same options, within the token budget.
fn take_batch(
    pending: &mut VecDeque<Job>,
    max_batch_tokens: usize,
    metrics: &ModelMetrics,
) -> Vec<Job> {
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

fn run_batch(model: &dyn Embedder, mut jobs: Vec<Job>, metrics: &ModelMetrics) {
    let started = Instant::now();
    for job in &jobs {
        metrics.record_wait(started.duration_since(job.enqueued).as_secs_f64());
    }
    let options = EmbedOptions {
        prefix: None,
        dimensions: jobs[0].dimensions,
        truncate: Truncation::Truncate,
    };
    loop {
        match compute(model, &jobs, &options) {
            Ok(results) => {
                let sequences = results.iter().map(|e| e.vectors.len()).sum();
                let tokens = results.iter().map(Embeddings::total_tokens).sum();
                metrics.record_batch(
                    jobs.len(),
                    sequences,
                    tokens,
                    started.elapsed().as_secs_f64(),
                );
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

/// Runs every job of the batch through the model in one `embed_tokens` call (the model
/// sorts the inputs by length into passes within its own token budget, and packs away
/// padding on the CPU). Results in job order.
fn compute(
    model: &dyn Embedder,
    jobs: &[Job],
    options: &EmbedOptions,
) -> Result<Vec<Embeddings>, Failure> {
    let mut ids: Vec<Vec<u32>> = Vec::new();
    let mut owners: Vec<(usize, usize)> = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        for (p, piece) in job.pieces.iter().enumerate() {
            ids.push(piece.clone());
            owners.push((j, p));
        }
    }
    let mut results: Vec<Embeddings> = jobs
        .iter()
        .map(|job| Embeddings {
            vectors: vec![Vec::new(); job.pieces.len()],
            token_counts: vec![0; job.pieces.len()],
        })
        .collect();
    if !ids.is_empty() {
        let out = guarded(|| model.embed_tokens(&ids, options), &owners)?;
        scatter(&mut results, out, &owners);
    }
    Ok(results)
}

/// Calls the model, turning a panic into a failure and an error naming an input
/// into a failure of that input's job.
fn guarded(
    call: impl FnOnce() -> sembase_core::Result<Embeddings>,
    owners: &[(usize, usize)],
) -> Result<Embeddings, Failure> {
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
    for ((vector, tokens), &(job, input)) in
        out.vectors.into_iter().zip(out.token_counts).zip(owners)
    {
        results[job].vectors[input] = vector;
        results[job].token_counts[input] = tokens;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(tokens: usize) -> Job {
        let (reply, _) = oneshot::channel();
        Job { pieces: Vec::new(), dimensions: None, tokens, reply, enqueued: Instant::now() }
    }

    /// Sends `count` jobs of `tokens` each, `every` apart, from another thread.
    fn trickle(
        count: usize,
        tokens: usize,
        every: Duration,
    ) -> (mpsc::Receiver<Job>, std::thread::JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel();
        let feeder = std::thread::spawn(move || {
            for _ in 0..count {
                std::thread::sleep(every);
                if sender.send(job(tokens)).is_err() {
                    return;
                }
            }
        });
        (receiver, feeder)
    }

    #[test]
    fn jobs_arriving_close_together_join_one_batch() {
        let (receiver, feeder) = trickle(5, 10, Duration::from_millis(5));
        let mut pending = VecDeque::new();
        let linger = Linger { max: Duration::from_secs(5), gap: Duration::from_millis(500) };
        gather(&receiver, &mut pending, 1000, linger);
        feeder.join().unwrap();
        assert_eq!(pending.len(), 5);
    }

    #[test]
    fn a_gap_in_arrivals_ends_the_wait() {
        let (receiver, feeder) = trickle(2, 10, Duration::from_millis(300));
        let mut pending = VecDeque::new();
        let started = Instant::now();
        gather(
            &receiver,
            &mut pending,
            1000,
            Linger { max: Duration::from_secs(5), gap: Duration::from_millis(20) },
        );
        assert!(pending.is_empty(), "nothing arrived within the gap");
        assert!(started.elapsed() < Duration::from_secs(2), "waited past the gap");
        drop(receiver);
        feeder.join().unwrap();
    }

    #[test]
    fn a_full_budget_or_no_linger_runs_at_once() {
        let (receiver, feeder) = trickle(3, 10, Duration::from_millis(200));
        let mut pending: VecDeque<Job> = [job(1000)].into();
        let started = Instant::now();
        gather(
            &receiver,
            &mut pending,
            1000,
            Linger { max: Duration::from_secs(5), gap: Duration::from_secs(5) },
        );
        let mut waiting: VecDeque<Job> = [job(1)].into();
        gather(
            &receiver,
            &mut waiting,
            1000,
            Linger { max: Duration::ZERO, gap: Duration::from_secs(5) },
        );
        assert!(
            started.elapsed() < Duration::from_millis(150),
            "waited although the batch was full or lingering was off"
        );
        assert_eq!((pending.len(), waiting.len()), (1, 1));
        drop(receiver);
        feeder.join().unwrap();
    }
}
