//! The batching queue: one worker thread per model merges queued requests into
//! batches bounded by a token budget, so that many small requests share forward passes.
//!
//! Requests arrive already tokenized (see `handlers` and `rerank`), so a job's cost in
//! tokens is exact. The worker takes the oldest waiting job and every later one with the
//! same options (an embedding's `dimensions`) while the batch stays within
//! `max_batch_tokens`, then calls the model once for the whole batch. Jobs whose client
//! went away (their reply channel is closed) are dropped unrun.
//!
//! A job larger than the budget is run a budget's worth of inputs at a time, and after
//! each such chunk it goes to the back of the queue, behind the jobs that arrived
//! meanwhile: a request of two thousand long inputs then delays a small one by one batch,
//! not by its whole run (see [`schedule`]).
//!
//! The queue is bounded (in tokens, [`QueueSettings::max_queue_tokens`]) and a job that
//! waits longer than [`QueueSettings::queue_timeout`] before its first chunk runs is
//! answered [`JobError::QueueTimeout`]: an overloaded server tells clients to come back
//! instead of holding their connections open.
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

mod busy;
mod schedule;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sembase_core::{EmbedOptions, Embedder, Truncation};
use sembase_embed::{PairTokens, Reranker};
use tokio::sync::oneshot;

use crate::metrics::ModelMetrics;
use busy::BusySince;

/// Why a job failed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JobError {
    /// Something in this request's inputs (the message names the input's index).
    BadInput(String),
    /// The model failed; not the request's fault.
    Internal(String),
    /// The job waited this long without starting, past the queue's timeout.
    QueueTimeout(Duration),
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
    /// What an input is called in an error message (`input[3] has ...`).
    const INPUT: &'static str;

    fn name(&self) -> &str;
    /// The tokens one input feeds the model (its share of the batch budget).
    fn cost(input: &Self::Input) -> usize;
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

    fn cost(ids: &Vec<u32>) -> usize {
        ids.len()
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

    fn cost(pair: &PairTokens) -> usize {
        pair.ids.len()
    }

    fn run(&self, pairs: &[PairTokens], (): ()) -> sembase_core::Result<Vec<f32>> {
        self.0.score_pairs(pairs)
    }
}

/// What a finished job gets back.
pub(crate) struct Finished<O> {
    /// One output per input, in order.
    pub outputs: Vec<O>,
    /// From queueing to the start of its first batch.
    pub waited: Duration,
    /// In the model, summed over the batches it was part of.
    pub computed: Duration,
}

/// One request's work.
pub(crate) struct Job<M: Queued> {
    pub inputs: Vec<M::Input>,
    pub options: M::Options,
    /// Tokens the job will feed the model (its cost against the batch budget).
    pub tokens: usize,
    pub reply: oneshot::Sender<Result<Finished<M::Output>, JobError>>,
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

/// How a model's queue batches and when it refuses work.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueSettings {
    /// Tokens per merged batch (and per chunk of a larger job).
    pub max_batch_tokens: usize,
    pub linger: Linger,
    /// Tokens the queue may hold; a job that would go past it is refused (unless the
    /// queue is empty, so that one request within its own budget always runs).
    pub max_queue_tokens: usize,
    /// The longest a job may wait before its first batch starts.
    pub queue_timeout: Duration,
}

/// Why a job was not queued.
pub(crate) enum Refused<M: Queued> {
    /// The queue holds its limit of tokens already.
    Full(Job<M>),
    /// The worker has stopped.
    Stopped(Job<M>),
}

/// The sending side of a model's queue.
pub(crate) struct Batcher<M: Queued> {
    name: String,
    sender: mpsc::Sender<Job<M>>,
    metrics: Arc<ModelMetrics>,
    settings: QueueSettings,
    alive: Arc<AtomicBool>,
    busy: Arc<BusySince>,
}

/// Marks the worker dead when its thread ends, however it ends (a panic included).
struct AliveWhileHeld(Arc<AtomicBool>);

impl Drop for AliveWhileHeld {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl<M: Queued> Batcher<M> {
    /// Starts the worker thread of `model`.
    pub fn start(
        model: M,
        settings: QueueSettings,
        metrics: Arc<ModelMetrics>,
    ) -> std::io::Result<Self> {
        let name = model.name().to_string();
        let (sender, receiver) = mpsc::channel();
        let worker_metrics = metrics.clone();
        let alive = Arc::new(AtomicBool::new(true));
        let guard = AliveWhileHeld(alive.clone());
        let busy = Arc::new(BusySince::new());
        let worker_busy = busy.clone();
        let settings =
            QueueSettings { max_batch_tokens: settings.max_batch_tokens.max(1), ..settings };
        std::thread::Builder::new().name(format!("sembase-model-{}", model.name())).spawn(
            move || {
                let _guard = guard;
                schedule::worker(model, receiver, settings, worker_metrics, &worker_busy)
            },
        )?;
        Ok(Self { name, sender, metrics, settings, alive, busy })
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the worker thread is still running.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// How long the worker has been on the batch it is running; none while it waits for work.
    pub fn busy_for(&self) -> Option<Duration> {
        self.busy.busy_for()
    }

    /// Queues a job, or gives it back when the queue is full or the worker is gone.
    pub fn submit(&self, job: Job<M>) -> Result<(), Refused<M>> {
        let tokens = job.tokens;
        if !reserve(&self.metrics.queue_tokens, tokens, self.settings.max_queue_tokens) {
            self.metrics.record_queue_full();
            return Err(Refused::Full(job));
        }
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        self.sender.send(job).map_err(|mpsc::SendError(job)| {
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            self.metrics.queue_tokens.fetch_sub(tokens, Ordering::Relaxed);
            Refused::Stopped(job)
        })
    }
}

/// Adds `tokens` to the queue's count unless that would pass `limit` (an empty queue
/// takes any job).
fn reserve(queued: &AtomicUsize, tokens: usize, limit: usize) -> bool {
    queued
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            (now == 0 || now.saturating_add(tokens) <= limit).then_some(now + tokens)
        })
        .is_ok()
}
