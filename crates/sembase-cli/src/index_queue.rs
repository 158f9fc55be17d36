//! `sembase index work|status`: the worker and the progress report of a queued
//! build (`index build --queue`) in a PostgreSQL store.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sembase_core::LocalEmbedder;
use sembase_index::index::read_spec;
use sembase_index::postgres::queue::worker::{self, Event, WorkOptions};
use sembase_index::postgres::queue::{State, Status};
use sembase_index::{ModelIdentity, Queue, StoreSpec};

use crate::index_model::IndexModelArgs;

/// How often an idle worker looks at the queue, and `status --watch` refreshes.
const POLL: Duration = Duration::from_secs(1);
/// Seconds between plain status lines of `--watch` when stderr is not a terminal.
const WATCH_LINE_EVERY: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct WorkArgs {
    /// The index directory written by `index build --queue` (copy it to each machine).
    #[arg(long)]
    index: PathBuf,
    /// Seconds a claimed chunk stays this worker's without renewal; renewed every
    /// third of it while embedding, so only a dead or stuck worker loses its chunk.
    #[arg(long, default_value_t = 300)]
    lease_seconds: u64,
    /// Exit after applying this many chunks.
    #[arg(long)]
    max_chunks: Option<usize>,
    /// After the build finishes, keep waiting for the next build of this index.
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    model: IndexModelArgs,
}

#[derive(Args)]
pub struct StatusArgs {
    /// The index directory written by `index build --queue`.
    #[arg(long)]
    index: PathBuf,
    /// Print one JSON object: {"rows", "chunks": {"done", "claimed", "waiting"}, ...}.
    #[arg(long)]
    json: bool,
    /// Follow the build until it is finished (a progress bar on a terminal).
    #[arg(long)]
    watch: bool,
}

pub fn work(args: WorkArgs) -> Result<()> {
    args.model.apply_threads();
    if args.lease_seconds < 3 {
        bail!("--lease-seconds must be at least 3 (the lease is renewed every third of it)");
    }
    let queue = open_queue(&args.index)?;
    let options = WorkOptions {
        worker: worker_name(),
        lease: Duration::from_secs(args.lease_seconds),
        max_chunks: args.max_chunks,
        poll: POLL,
    };
    if !args.follow {
        // No build at all is an error, unless waiting for one.
        queue.current()?;
    }
    let mut loaded: Option<(ModelIdentity, LocalEmbedder)> = None;
    loop {
        let build = match queue.build()? {
            Some(build) if !build.finished => build,
            _ if args.follow => {
                std::thread::sleep(POLL);
                continue;
            }
            _ => {
                eprintln!("the build of {} is finished: nothing to do", queue.table());
                return Ok(());
            }
        };
        let model = match loaded.take() {
            Some((identity, model)) if identity == build.settings.model => model,
            _ => {
                eprintln!("loading {}", build.settings.model.name);
                args.model.load(&build.settings)?
            }
        };
        let mut waiting = None;
        let summary =
            worker::work(&queue, &build, &model, &options, &mut |event| log(event, &mut waiting))?;
        eprintln!("{} chunks ({} rows) applied by this worker", summary.chunks, summary.rows);
        loaded = Some((build.settings.model.clone(), model));
        if !summary.finished || !args.follow {
            return Ok(());
        }
    }
}

/// One stderr line per event; "waiting" only when the count changes.
fn log(event: Event, waiting: &mut Option<usize>) {
    match event {
        Event::Claimed(c) => {
            eprintln!("claimed chunk {} (attempt {}, {} rows)", c.chunk, c.attempt, c.rows)
        }
        Event::Applied(c, took) => {
            eprintln!("applied chunk {}: {} rows in {:.2}s", c.chunk, c.rows, took.as_secs_f64())
        }
        Event::Lost(c) => eprintln!("chunk {} was applied by another worker first", c.chunk),
        Event::Waiting { chunks } if *waiting != Some(chunks) => {
            *waiting = Some(chunks);
            match chunks {
                0 => eprintln!("waiting: another worker is building the index"),
                n => eprintln!("waiting: {n} chunks are held by other workers"),
            }
        }
        Event::Waiting { .. } => {}
        Event::Finished => eprintln!("finished: the new index is live"),
    }
}

pub fn status(args: StatusArgs) -> Result<()> {
    let queue = open_queue(&args.index)?;
    let mut status = queue.status()?;
    if args.watch {
        let bar = progress(status.total_rows);
        let mut last_line = Instant::now();
        while status.state != State::Done {
            bar.set_position(status.rows);
            bar.set_message(summary(&status));
            if bar.is_hidden() && last_line.elapsed() >= WATCH_LINE_EVERY {
                eprintln!("{}", summary(&status));
                last_line = Instant::now();
            }
            std::thread::sleep(POLL);
            status = queue.status()?;
        }
        bar.finish_and_clear();
    }
    if args.json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        println!("{} ({}, {}): {}", status.index, status.model, status.precision, summary(&status));
    }
    Ok(())
}

/// One line: state, chunks, rows, workers, rate and time left.
fn summary(s: &Status) -> String {
    let c = s.chunks;
    let mut line = format!(
        "{:?}; chunks {} done, {} claimed, {} waiting; rows {} of {}; {} workers",
        s.state, c.done, c.claimed, c.waiting, s.rows, s.total_rows, s.workers
    )
    .to_lowercase();
    if s.reclaimed > 0 {
        line += &format!(", {} chunks claimed again after a lease ran out", s.reclaimed);
    }
    if let Some(rate) = s.rows_per_second {
        line += &format!("; {rate:.1} rows/s over {:.0}s", s.seconds);
    }
    if let Some(eta) = s.eta_seconds {
        line += &format!(", about {eta:.0}s left");
    }
    line
}

/// A progress bar of rows on a terminal; hidden when stderr is piped.
fn progress(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(ProgressStyle::with_template("{bar:40} {msg}").expect("valid template"));
    bar
}

/// The queue of the postgres index in `dir`.
fn open_queue(dir: &Path) -> Result<Queue> {
    match read_spec(dir)? {
        StoreSpec::Postgres { url, table, .. } => Ok(Queue::open(&url, &table)?),
        other => bail!(
            "{} is a {} index: queued builds and workers are for postgres stores only",
            dir.display(),
            other.kind()
        ),
    }
}

/// `host:pid`, recorded with each claim.
fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("{host}:{}", std::process::id())
}
