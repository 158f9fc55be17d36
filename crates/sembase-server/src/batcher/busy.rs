//! When the worker's current batch started, so that `/ready` can tell a worker stuck in
//! the model (alive, but on one batch for far longer than any request may take) from an
//! idle or progressing one. The worker writes it twice per batch; probes read it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The start of the batch in progress, if any.
pub(crate) struct BusySince {
    origin: Instant,
    /// Microseconds from `origin` to the batch's start, plus one; 0 while idle.
    started: AtomicU64,
}

impl BusySince {
    pub(crate) fn new() -> Self {
        Self { origin: Instant::now(), started: AtomicU64::new(0) }
    }

    /// Marks a batch as started until the returned guard is dropped (however the batch ends).
    pub(crate) fn enter(&self) -> Busy<'_> {
        let since = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        self.started.store(since + 1, Ordering::Release);
        Busy(self)
    }

    /// How long the batch in progress has run; none while idle.
    pub(crate) fn busy_for(&self) -> Option<Duration> {
        let started = self.started.load(Ordering::Acquire).checked_sub(1)?;
        Some(self.origin.elapsed().saturating_sub(Duration::from_micros(started)))
    }
}

/// A batch in progress; idle again when dropped.
pub(crate) struct Busy<'a>(&'a BusySince);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.started.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_only_while_a_batch_runs() {
        let busy = BusySince::new();
        assert_eq!(busy.busy_for(), None);
        let batch = busy.enter();
        std::thread::sleep(Duration::from_millis(20));
        assert!(busy.busy_for().is_some_and(|d| d >= Duration::from_millis(20)));
        drop(batch);
        assert_eq!(busy.busy_for(), None);
    }
}
