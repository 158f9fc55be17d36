//! The worker of one model's queue: gathers jobs, cuts the next batch, runs it, and
//! answers each job once all of its inputs have run.

use std::collections::VecDeque;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::busy::BusySince;
use super::{Finished, Job, JobError, Linger, QueueSettings, Queued};
use crate::metrics::ModelMetrics;

/// A job inside the worker: how far it has run.
struct Progress<M: Queued> {
    job: Job<M>,
    /// Inputs `0..next` have run (or are in the batch being cut).
    next: usize,
    outputs: Vec<M::Output>,
    /// Tokens of the inputs not yet taken into a batch.
    tokens_left: usize,
    /// When its first batch started.
    started: Option<Instant>,
    computed: Duration,
}

impl<M: Queued> Progress<M> {
    fn new(job: Job<M>) -> Self {
        let tokens_left = job.tokens;
        let outputs = Vec::with_capacity(job.inputs.len());
        Self { job, next: 0, outputs, tokens_left, started: None, computed: Duration::ZERO }
    }

    fn done(&self) -> bool {
        self.next >= self.job.inputs.len()
    }

    /// Sends the answer; the queue's count no longer holds the job.
    fn answer(self, result: Result<(), JobError>) {
        let result = result.map(|()| Finished {
            waited: self
                .started
                .map_or(Duration::ZERO, |started| started.duration_since(self.job.enqueued)),
            computed: self.computed,
            outputs: self.outputs,
        });
        let _ = self.job.reply.send(result);
    }
}

/// A slice of one job in the batch being run.
struct Chunk<M: Queued> {
    progress: Progress<M>,
    inputs: Range<usize>,
}

pub(super) fn worker<M: Queued>(
    model: M,
    receiver: mpsc::Receiver<Job<M>>,
    settings: QueueSettings,
    metrics: Arc<ModelMetrics>,
    busy: &BusySince,
) {
    let mut pending: VecDeque<Progress<M>> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match receiver.recv() {
                Ok(job) => pending.push_back(Progress::new(job)),
                // Every sender is gone and nothing is left to do: the server has stopped.
                Err(mpsc::RecvError) => return,
            }
        }
        drain(&receiver, &mut pending);
        gather(&receiver, &mut pending, settings.max_batch_tokens, settings.linger);
        expire(&mut pending, settings.queue_timeout, &metrics);
        let batch = take_batch(&mut pending, settings.max_batch_tokens, &metrics);
        if batch.is_empty() {
            continue;
        }
        let unfinished = {
            let _busy = busy.enter();
            run_batch(&model, batch, &metrics)
        };
        // Jobs that arrived while the batch ran go ahead of the rest of a large job.
        drain(&receiver, &mut pending);
        pending.extend(unfinished);
    }
}

/// Moves every job already sent into `pending`.
fn drain<M: Queued>(receiver: &mpsc::Receiver<Job<M>>, pending: &mut VecDeque<Progress<M>>) {
    while let Ok(job) = receiver.try_recv() {
        pending.push_back(Progress::new(job));
    }
}

/// Waits for more jobs while they keep arriving (at most `linger.gap` apart, for
/// `linger.max` in all) and the queue holds less than one batch's worth of tokens.
fn gather<M: Queued>(
    receiver: &mpsc::Receiver<Job<M>>,
    pending: &mut VecDeque<Progress<M>>,
    max_batch_tokens: usize,
    linger: Linger,
) {
    if linger.max.is_zero() {
        return;
    }
    let deadline = Instant::now() + linger.max;
    let mut queued: usize = pending.iter().map(|p| p.tokens_left).sum();
    while queued < max_batch_tokens {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match receiver.recv_timeout(left.min(linger.gap)) {
            Ok(job) => {
                queued += job.tokens;
                pending.push_back(Progress::new(job));
            }
            Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Takes a job out of the queue's counts (its tokens not yet run, and its place).
fn dequeue<M: Queued>(progress: &Progress<M>, metrics: &ModelMetrics) {
    metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
    metrics.queue_tokens.fetch_sub(progress.tokens_left, Ordering::Relaxed);
}

/// Answers the jobs that have waited past `timeout` without starting, and drops
/// those whose client went away.
fn expire<M: Queued>(
    pending: &mut VecDeque<Progress<M>>,
    timeout: Duration,
    metrics: &ModelMetrics,
) {
    let now = Instant::now();
    let mut kept = VecDeque::with_capacity(pending.len());
    for progress in pending.drain(..) {
        if progress.job.reply.is_closed() {
            dequeue(&progress, metrics);
            metrics.record_dropped();
            continue;
        }
        let waited = now.duration_since(progress.job.enqueued);
        if progress.started.is_none() && waited > timeout {
            dequeue(&progress, metrics);
            metrics.record_queue_timeout();
            progress.answer(Err(JobError::QueueTimeout(waited)));
            continue;
        }
        kept.push_back(progress);
    }
    *pending = kept;
}

/// Cuts the next batch: from the oldest job on (jobs not yet started before those already
/// running), the inputs of jobs with the same options as the first, within the token budget. A job whose inputs do not all fit gives as
/// many as fit (at least one, when the batch would otherwise be empty) and is handed
/// back unfinished.
fn take_batch<M: Queued>(
    pending: &mut VecDeque<Progress<M>>,
    max_batch_tokens: usize,
    metrics: &ModelMetrics,
) -> Vec<Chunk<M>> {
    // Jobs that have not started go first: a large job already running waits for them,
    // so a small request never shares (and waits for) a chunk of a large one.
    let fresh_first = pending.iter().any(|p| p.started.is_none());
    let eligible = |p: &Progress<M>| !fresh_first || p.started.is_none();
    let Some(key) = pending.iter().find(|p| eligible(p)).map(|p| p.job.options) else {
        return Vec::new();
    };
    let mut batch = Vec::new();
    let mut tokens = 0usize;
    let mut i = 0;
    while i < pending.len() && tokens < max_batch_tokens {
        let progress = &pending[i];
        if progress.job.options != key || !eligible(progress) {
            i += 1;
            continue;
        }
        let start = progress.next;
        if progress.done() {
            // A job of no inputs: answered with the batch, at no cost.
            let progress = pending.remove(i).expect("index checked");
            metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            batch.push(Chunk { progress, inputs: start..start });
            continue;
        }
        let mut end = start;
        let mut taken = 0usize;
        for input in &progress.job.inputs[start..] {
            let cost = M::cost(input);
            let first = batch.is_empty() && end == start;
            if !first && tokens + taken + cost > max_batch_tokens {
                break;
            }
            taken += cost;
            end += 1;
        }
        if end == start {
            // Not one more input fits: the batch is full.
            break;
        }
        let mut progress = pending.remove(i).expect("index checked");
        progress.next = end;
        metrics.queue_tokens.fetch_sub(taken.min(progress.tokens_left), Ordering::Relaxed);
        progress.tokens_left = progress.tokens_left.saturating_sub(taken);
        if progress.done() {
            metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        }
        tokens += taken;
        batch.push(Chunk { progress, inputs: start..end });
    }
    batch
}

/// How a merged batch failed.
enum Failure {
    /// One chunk's input is at fault: answer its job, run the others again.
    Input { chunk: usize, message: String },
    /// The model failed as a whole.
    All(String),
}

/// Runs the batch and answers the jobs it finishes; gives back the jobs with inputs left.
fn run_batch<M: Queued>(
    model: &M,
    mut chunks: Vec<Chunk<M>>,
    metrics: &ModelMetrics,
) -> Vec<Progress<M>> {
    let started = Instant::now();
    for chunk in &mut chunks {
        if chunk.progress.started.is_none() {
            chunk.progress.started = Some(started);
            metrics.record_wait(started.duration_since(chunk.progress.job.enqueued).as_secs_f64());
        }
    }
    loop {
        match compute(model, &chunks) {
            Ok(results) => {
                let elapsed = started.elapsed();
                let inputs = chunks.iter().map(|c| c.inputs.len()).sum();
                let tokens = chunks
                    .iter()
                    .map(|c| {
                        c.progress.job.inputs[c.inputs.clone()].iter().map(M::cost).sum::<usize>()
                    })
                    .sum();
                metrics.record_batch(chunks.len(), inputs, tokens, elapsed.as_secs_f64());
                let mut unfinished = Vec::new();
                for (chunk, outputs) in chunks.into_iter().zip(results) {
                    let mut progress = chunk.progress;
                    progress.outputs.extend(outputs);
                    progress.computed += elapsed;
                    if progress.done() {
                        progress.answer(Ok(()));
                    } else {
                        unfinished.push(progress);
                    }
                }
                return unfinished;
            }
            Err(Failure::Input { chunk, message }) => {
                let bad = chunks.remove(chunk).progress;
                if !bad.done() {
                    dequeue(&bad, metrics);
                }
                bad.answer(Err(JobError::BadInput(message)));
                if chunks.is_empty() {
                    return Vec::new();
                }
            }
            Err(Failure::All(message)) => {
                for chunk in chunks {
                    if !chunk.progress.done() {
                        dequeue(&chunk.progress, metrics);
                    }
                    chunk.progress.answer(Err(JobError::Internal(message.clone())));
                }
                return Vec::new();
            }
        }
    }
}

/// Runs every input of the batch through the model in one call (the model sorts the
/// inputs by length into passes within its own token budget, and packs away padding on
/// the CPU). Outputs per chunk, in chunk order.
fn compute<M: Queued>(model: &M, chunks: &[Chunk<M>]) -> Result<Vec<Vec<M::Output>>, Failure> {
    let inputs: Vec<M::Input> = chunks
        .iter()
        .flat_map(|c| c.progress.job.inputs[c.inputs.clone()].iter().cloned())
        .collect();
    let owners: Vec<(usize, usize)> = chunks
        .iter()
        .enumerate()
        .flat_map(|(j, c)| c.inputs.clone().map(move |i| (j, i)))
        .collect();
    let mut outputs = if inputs.is_empty() {
        Vec::new()
    } else {
        guarded::<M>(|| model.run(&inputs, chunks[0].progress.job.options), &owners)?
    }
    .into_iter();
    Ok(chunks.iter().map(|c| outputs.by_ref().take(c.inputs.len()).collect()).collect())
}

/// Calls the model, turning a panic into a failure and an error naming an input
/// into a failure of that input's job (`owners` gives, per input of the call, its chunk
/// and its index in its request).
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
            sembase_core::Error::InvalidTokenId { index, id, vocab } => owners.get(*index).map(|&(chunk, input)| {
                (chunk, format!("{noun}[{input}] has token id {id}, outside the model's vocabulary of {vocab} entries"))
            }),
            sembase_core::Error::InputTooLong { index, tokens, limit } => owners.get(*index).map(|&(chunk, input)| {
                (chunk, format!("{noun}[{input}] has {tokens} tokens, more than the model's limit of {limit}"))
            }),
            _ => None,
        };
        match located {
            Some((chunk, message)) => Failure::Input { chunk, message },
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
    use super::super::Embedding;
    use super::*;
    use tokio::sync::oneshot;

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
        let mut pending: VecDeque<Progress<Embedding>> = VecDeque::new();
        let linger = Linger { max: Duration::from_secs(5), gap: Duration::from_millis(500) };
        gather(&receiver, &mut pending, 1000, linger);
        feeder.join().unwrap();
        assert_eq!(pending.len(), 5);
    }

    #[test]
    fn a_gap_in_arrivals_ends_the_wait() {
        let (receiver, feeder) = trickle(2, 10, Duration::from_millis(300));
        let mut pending: VecDeque<Progress<Embedding>> = VecDeque::new();
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
        let mut pending: VecDeque<_> = [Progress::new(job(1000))].into();
        let started = Instant::now();
        gather(
            &receiver,
            &mut pending,
            1000,
            Linger { max: Duration::from_secs(5), gap: Duration::from_secs(5) },
        );
        let mut waiting: VecDeque<_> = [Progress::new(job(1))].into();
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

    type Answer = oneshot::Receiver<Result<Finished<(Vec<f32>, usize)>, JobError>>;

    /// A job of inputs of these token counts (ids all 1), and the receiving end of its reply.
    fn job_of(lengths: &[usize]) -> (TestJob, Answer) {
        let (reply, answer) = oneshot::channel();
        let inputs: Vec<Vec<u32>> = lengths.iter().map(|&n| vec![1; n]).collect();
        let tokens = lengths.iter().sum();
        (Job { inputs, options: None, tokens, reply, enqueued: Instant::now() }, answer)
    }

    /// The queue as the worker holds it, with the counts `submit` would have made.
    fn queued(jobs: Vec<TestJob>, metrics: &ModelMetrics) -> VecDeque<Progress<Embedding>> {
        for job in &jobs {
            metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
            metrics.queue_tokens.fetch_add(job.tokens, Ordering::Relaxed);
        }
        jobs.into_iter().map(Progress::new).collect()
    }

    fn ranges(batch: &[Chunk<Embedding>]) -> Vec<Range<usize>> {
        batch.iter().map(|c| c.inputs.clone()).collect()
    }

    #[test]
    fn a_job_over_the_budget_is_cut_into_chunks_and_small_jobs_run_between_them() {
        let metrics = ModelMetrics::default();
        let (large, _large_answer) = job_of(&[10; 10]);
        let (small, _small_answer) = job_of(&[3]);
        let mut pending = queued(vec![large], &metrics);
        let first = take_batch(&mut pending, 25, &metrics);
        assert_eq!(ranges(&first), vec![0..2], "two inputs of 10 fit a budget of 25");
        assert_eq!(metrics.queue_tokens.load(Ordering::Relaxed), 80);
        // The small job arrives while the first chunk runs: it goes ahead of the rest.
        pending.extend(queued(vec![small], &metrics));
        pending.extend(
            first.into_iter().map(|c| Progress { started: Some(Instant::now()), ..c.progress }),
        );
        let second = take_batch(&mut pending, 25, &metrics);
        assert_eq!(
            ranges(&second),
            vec![0..1],
            "the small job alone, before the large one goes on"
        );
        assert_eq!(second[0].progress.job.tokens, 3);
        assert_eq!(
            metrics.queue_depth.load(Ordering::Relaxed),
            1,
            "only the large job still waits"
        );
        assert_eq!(metrics.queue_tokens.load(Ordering::Relaxed), 80);
        let third = take_batch(&mut pending, 25, &metrics);
        assert_eq!(ranges(&third), vec![2..4], "then the large one's next inputs");
        assert_eq!(metrics.queue_tokens.load(Ordering::Relaxed), 60);
    }

    #[test]
    fn an_input_over_the_budget_runs_alone() {
        let metrics = ModelMetrics::default();
        let (huge, _a) = job_of(&[40, 2]);
        let (next, _b) = job_of(&[2]);
        let mut pending = queued(vec![huge, next], &metrics);
        let batch = take_batch(&mut pending, 25, &metrics);
        assert_eq!(ranges(&batch), vec![0..1]);
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn a_job_that_waited_past_the_timeout_is_answered_without_running() {
        let metrics = ModelMetrics::default();
        let (old, mut old_answer) = job_of(&[3]);
        let (mut fresh, _fresh_answer) = job_of(&[3]);
        let old = Job { enqueued: Instant::now() - Duration::from_secs(10), ..old };
        fresh.enqueued = Instant::now();
        let mut pending = queued(vec![old, fresh], &metrics);
        expire(&mut pending, Duration::from_secs(5), &metrics);
        assert_eq!(pending.len(), 1);
        match old_answer.try_recv() {
            Ok(Err(JobError::QueueTimeout(waited))) => assert!(waited >= Duration::from_secs(10)),
            _ => panic!("the old job was not answered with a queue timeout"),
        }
        assert_eq!(metrics.queue_depth.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.queue_tokens.load(Ordering::Relaxed), 3);
    }
}
