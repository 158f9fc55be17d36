//! The batching queue: one worker thread per model merges queued requests into
//! batches bounded by a token budget, so that many small requests share forward passes.
//!
//! Requests arrive already tokenized (see `handlers` and `rerank`), so a job's cost in
//! tokens is exact. The worker takes the oldest waiting job and every later one with the
//! same options (an embedding's `dimensions`) while the batch stays within
//! `max_batch_tokens` (a job larger than the budget runs alone), then calls the model
//! once for the whole batch. Jobs whose client went away (their reply channel is closed)
//! are dropped unrun.
//!
//! The scheduler does not care what the model computes: embedders (token ids in,
//! vectors out) and rerankers ((query, document) pairs in, logits out) share it
//! through [`Queued`], so both kinds of request get the same budget, lingering,
//! isolation of bad inputs and metrics.
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

use sembase_core::{EmbedOptions, Embedder, Truncation};
use sembase_embed::{PairTokens, Reranker};
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

/// A model a queue can feed: what one input of a job is, what the model gives back
/// for it, and how a merged batch runs.
pub(crate) trait Queued: Send + Sync + 'static {
    /// One input, tokenized and within the model's limit.
    type Input: Clone + Send + 'static;
    /// The model's answer for one input.
    type Output: Send + 'static;
    /// Settings every job of a batch must share.
    type Options: Copy + PartialEq + Send + 'static;
    /// What an input is called in an error message (`input 3 has ...`).
    const INPUT: &'static str;

    fn name(&self) -> &str;
    /// One output per input, in order (the worker refuses a batch answered otherwise).
    fn run(
        &self,
        inputs: &[Self::Input],
        options: Self::Options,
    ) -> sembase_core::Result<Vec<Self::Output>>;
}

/// An embedding model, as its queue runs it: token ids in, a vector and its token count
/// out; batches share `dimensions`. (A named type rather than `dyn Embedder`, whose
/// lifetime the compiler cannot prove `Send` futures over.)
pub(crate) struct Embedding(pub Arc<dyn Embedder>);

impl Queued for Embedding {
    type Input = Vec<u32>;
    type Output = (Vec<f32>, usize);
    type Options = Option<usize>;
    const INPUT: &'static str = "input";

    fn name(&self) -> &str {
        self.0.name()
    }

    fn run(
        &self,
        inputs: &[Vec<u32>],
        dimensions: Option<usize>,
    ) -> sembase_core::Result<Vec<Self::Output>> {
        let options = EmbedOptions { prefix: None, dimensions, truncate: Truncation::Truncate };
        let out = self.0.embed_tokens(inputs, &options)?;
        // A count that differs from the inputs' is caught by the worker (see `guarded`).
        Ok(out.vectors.into_iter().zip(out.token_counts).collect())
    }
}

/// A reranker, as its queue runs it: encoded pairs in, raw scores (logits) out; any
/// jobs may merge.
pub(crate) struct Reranking(pub Arc<dyn Reranker>);

impl Queued for Reranking {
    type Input = PairTokens;
    type Output = f32;
    type Options = ();
    const INPUT: &'static str = "pair";

    fn name(&self) -> &str {
        self.0.name()
    }

    fn run(&self, pairs: &[PairTokens], (): ()) -> sembase_core::Result<Vec<f32>> {
        self.0.score_pairs(pairs)
    }
}

/// One request's work.
pub(crate) struct Job<M: Queued> {
    pub inputs: Vec<M::Input>,
    pub options: M::Options,
    /// Tokens the job will feed the model (its cost against the batch budget).
    pub tokens: usize,
    /// One output per input, in order.
    pub reply: oneshot::Sender<Result<Vec<M::Output>, JobError>>,
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
pub(crate) struct Batcher<M: Queued> {
    sender: mpsc::Sender<Job<M>>,
    metrics: Arc<ModelMetrics>,
}

impl<M: Queued> Batcher<M> {
    /// Starts the worker thread of `model`.
    pub fn start(
        model: M,
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
    pub fn submit(&self, job: Job<M>) -> Result<(), Job<M>> {
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

fn worker<M: Queued>(
    model: M,
    receiver: mpsc::Receiver<Job<M>>,
    max_batch_tokens: usize,
    linger: Linger,
    metrics: Arc<ModelMetrics>,
) {
    let mut pending: VecDeque<Job<M>> = VecDeque::new();
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
            run_batch(&model, batch, &metrics);
        }
    }
}

/// Waits for more jobs while they keep arriving (at most `linger.gap` apart, for
/// `linger.max` in all) and the queue holds less than one batch's worth of tokens.
fn gather<M: Queued>(
    receiver: &mpsc::Receiver<Job<M>>,
    pending: &mut VecDeque<Job<M>>,
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
fn take_batch<M: Queued>(
    pending: &mut VecDeque<Job<M>>,
    max_batch_tokens: usize,
    metrics: &ModelMetrics,
) -> Vec<Job<M>> {
    let dequeued = |job: &Job<M>| {
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
    let Some(key) = pending.front().map(|job| job.options) else {
        return Vec::new();
    };
    let mut batch = Vec::new();
    let mut tokens = 0usize;
    let mut i = 0;
    while i < pending.len() && tokens < max_batch_tokens {
        let job = &pending[i];
        if job.options == key && (batch.is_empty() || tokens + job.tokens <= max_batch_tokens) {
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

fn run_batch<M: Queued>(model: &M, mut jobs: Vec<Job<M>>, metrics: &ModelMetrics) {
    let started = Instant::now();
    for job in &jobs {
        metrics.record_wait(started.duration_since(job.enqueued).as_secs_f64());
    }
    loop {
        match compute(model, &jobs) {
            Ok(results) => {
                let inputs = jobs.iter().map(|job| job.inputs.len()).sum();
                let tokens = jobs.iter().map(|job| job.tokens).sum();
                metrics.record_batch(jobs.len(), inputs, tokens, started.elapsed().as_secs_f64());
                for (job, outputs) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(outputs));
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

/// Runs every input of the batch through the model in one call (the model sorts the
/// inputs by length into passes within its own token budget, and packs away padding on
/// the CPU). Outputs per job, in job order.
fn compute<M: Queued>(model: &M, jobs: &[Job<M>]) -> Result<Vec<Vec<M::Output>>, Failure> {
    let inputs: Vec<M::Input> = jobs.iter().flat_map(|job| job.inputs.iter().cloned()).collect();
    let owners: Vec<(usize, usize)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, job)| (0..job.inputs.len()).map(move |i| (j, i)))
        .collect();
    let mut outputs = if inputs.is_empty() {
        Vec::new()
    } else {
        guarded::<M>(|| model.run(&inputs, jobs[0].options), &owners)?
    }
    .into_iter();
    Ok(jobs.iter().map(|job| outputs.by_ref().take(job.inputs.len()).collect()).collect())
}

/// Calls the model, turning a panic into a failure and an error naming an input
/// into a failure of that input's job.
fn guarded<M: Queued>(
    call: impl FnOnce() -> sembase_core::Result<Vec<M::Output>>,
    owners: &[(usize, usize)],
) -> Result<Vec<M::Output>, Failure> {
    let out = match catch_unwind(AssertUnwindSafe(call)) {
        Ok(out) => out,
        Err(_) => return Err(Failure::All("the model failed unexpectedly".into())),
    };
    let noun = M::INPUT;
    let out = out.map_err(|error| {
        let located = match &error {
            sembase_core::Error::InvalidTokenId { index, id, vocab } => owners.get(*index).map(|&(job, input)| {
                (job, format!("{noun} {input} has token id {id}, outside the model's vocabulary of {vocab} entries"))
            }),
            sembase_core::Error::InputTooLong { index, tokens, limit } => owners.get(*index).map(|&(job, input)| {
                (job, format!("{noun} {input} has {tokens} tokens, more than the model's limit of {limit}"))
            }),
            _ => None,
        };
        match located {
            Some((job, message)) => Failure::Input { job, message },
            None => Failure::All(format!("model error: {error}")),
        }
    })?;
    if out.len() != owners.len() {
        return Err(Failure::All(format!(
            "the model answered {} of {} {noun}s",
            out.len(),
            owners.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestJob = Job<Embedding>;

    fn job(tokens: usize) -> TestJob {
        let (reply, _) = oneshot::channel();
        Job { inputs: Vec::new(), options: None, tokens, reply, enqueued: Instant::now() }
    }

    /// Sends `count` jobs of `tokens` each, `every` apart, from another thread.
    fn trickle(
        count: usize,
        tokens: usize,
        every: Duration,
    ) -> (mpsc::Receiver<TestJob>, std::thread::JoinHandle<()>) {
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
        let mut pending: VecDeque<TestJob> = [job(1000)].into();
        let started = Instant::now();
        gather(
            &receiver,
            &mut pending,
            1000,
            Linger { max: Duration::from_secs(5), gap: Duration::from_secs(5) },
        );
        let mut waiting: VecDeque<TestJob> = [job(1)].into();
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
