//! Bounded fuzzing of sembase's parsers on stable Rust.
//!
//! cargo-fuzz needs nightly, so each target is an ordinary `#[test]` driven by
//! [bolero](https://docs.rs/bolero): bolero supplies the random choices, the time
//! limit, shrinking of a failing case and a `BOLERO_RANDOM_SEED` to replay it. On
//! stable its inputs are not coverage-guided, and random bytes almost never get past
//! a magic number, so the inputs are instead made by mutating a committed seed
//! corpus (valid files and damaged variants): bit flips, boundary integers written
//! over length fields, cuts, splices and format tokens.
//!
//! Every target checks the same property: the parser answers `Ok` or `Err` for any
//! input, without panicking, hanging or asking for an absurd allocation. The last
//! two are watched by [`BoundedAlloc`] (which each fuzz test binary installs as its
//! global allocator) and by a watchdog thread; both save the input before the
//! process dies, as a panic does through the harness.
//!
//! `SEMBASE_FUZZ_SECONDS` sets the time per target (default 3, what `cargo test`
//! spends); `bench/fuzz.sh` runs longer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ops::Bound::{Excluded, Included};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bolero::generator::ValueGenerator;
use bolero::Driver;

/// Seconds per target when `SEMBASE_FUZZ_SECONDS` is unset.
const DEFAULT_SECONDS: f64 = 3.0;
/// One allocation above this while an input is parsed counts as unbounded: no
/// parser here needs that much for a file of a few kilobytes, while a length field
/// of 2^60 read before any check asks for far more.
pub const ALLOCATION_LIMIT: usize = 256 << 20;
/// One input taking longer than this counts as a hang.
const HANG_LIMIT: Duration = Duration::from_secs(20);
/// Most mutations applied to one seed.
const MAX_MUTATIONS: usize = 8;

thread_local! {
    /// True on the thread parsing an input, while it does (allocations are bounded
    /// only there and then, so a target may load a model first and other tests of
    /// the same binary are left alone).
    static ARMED: Cell<bool> = const { Cell::new(false) };
}
/// One target at a time per process: the watchdog and the saved input are global.
static RUN_LOCK: Mutex<()> = Mutex::new(());
/// When the input being parsed started, in milliseconds since the epoch (0: none).
static STARTED_MS: AtomicU64 = AtomicU64::new(0);
/// The input being parsed and the file a crash saves it to.
static CURRENT: Mutex<Option<(Vec<u8>, PathBuf)>> = Mutex::new(None);

/// The system allocator, refusing (with a null pointer, which Rust turns into an
/// abort unless the caller used `try_reserve`) any single allocation over
/// [`ALLOCATION_LIMIT`] while an input is parsed, after saving that input.
pub struct BoundedAlloc;

impl BoundedAlloc {
    fn refuses(&self, size: usize) -> bool {
        if size <= ALLOCATION_LIMIT || !ARMED.try_with(Cell::get).unwrap_or(false) {
            return false;
        }
        // Disarmed first: saving the input allocates.
        set_armed(false);
        save_current(&format!("an allocation of {size} bytes"));
        true
    }
}

// SAFETY: every call is passed on to `System` unchanged, or refused with null,
// which the `GlobalAlloc` contract allows.
unsafe impl GlobalAlloc for BoundedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.refuses(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if self.refuses(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.refuses(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Writes the input being parsed to its crash file and says why on stderr.
fn save_current(why: &str) {
    let Ok(current) = CURRENT.try_lock() else { return };
    if let Some((input, path)) = current.as_ref() {
        let saved = std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
            .and_then(|()| std::fs::write(path, input));
        match saved {
            Ok(()) => eprintln!("fuzz: {why}; the input is saved as {}", path.display()),
            Err(e) => eprintln!("fuzz: {why}; saving the input as {} failed: {e}", path.display()),
        }
    }
}

fn set_armed(armed: bool) {
    // Only fails while the thread is being torn down, when nothing is parsed.
    let _ = ARMED.try_with(|a| a.set(armed));
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Aborts the process (after saving the input) when one input runs past [`HANG_LIMIT`]:
/// a hung parser cannot be unwound.
fn start_watchdog() {
    static WATCHDOG: Once = Once::new();
    WATCHDOG.call_once(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(500));
            let started = STARTED_MS.load(Ordering::Relaxed);
            if started != 0 && now_ms().saturating_sub(started) > HANG_LIMIT.as_millis() as u64 {
                save_current(&format!("one input ran for over {} s", HANG_LIMIT.as_secs()));
                std::process::abort();
            }
        });
    });
}

/// One fuzz target: a name, its committed seed corpus and its format's tokens.
pub struct Target {
    name: String,
    corpus: PathBuf,
    tokens: Vec<Vec<u8>>,
}

impl Target {
    /// The target `name`, seeded by every file in `corpus` (which must hold some).
    pub fn new(name: &str, corpus: impl Into<PathBuf>) -> Self {
        Self { name: name.to_string(), corpus: corpus.into(), tokens: Vec::new() }
    }

    /// Byte strings that mean something in the format (delimiters, keys, magic
    /// numbers), inserted or written over the input by some mutations.
    pub fn tokens(mut self, tokens: &[&[u8]]) -> Self {
        self.tokens = tokens.iter().map(|t| t.to_vec()).collect();
        self
    }

    /// Runs `parse` on every seed, then on mutated seeds for `SEMBASE_FUZZ_SECONDS`,
    /// and prints the executions made. `parse` must panic on a wrong answer; it panics
    /// (or the process aborts) when the parser does. A failing input is saved under
    /// `target/fuzz-crashes/<name>/` (the smallest one after bolero's shrinking wins).
    pub fn run(self, parse: impl Fn(&[u8])) {
        let _one_at_a_time = RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let seeds = read_corpus(&self.corpus);
        let crash_dir = crash_dir().join(&self.name);
        let executions = AtomicU64::new(0);
        let saved_len = AtomicU64::new(u64::MAX);
        let exec = |input: &[u8]| {
            let path = crash_dir.join(format!("crash-{:016x}", fnv1a(input)));
            *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some((input.to_vec(), path));
            STARTED_MS.store(now_ms(), Ordering::Relaxed);
            set_armed(true);
            let outcome = catch_unwind(AssertUnwindSafe(|| parse(input)));
            set_armed(false);
            STARTED_MS.store(0, Ordering::Relaxed);
            executions.fetch_add(1, Ordering::Relaxed);
            if let Err(panic) = outcome {
                if (input.len() as u64) < saved_len.load(Ordering::Relaxed) {
                    saved_len.store(input.len() as u64, Ordering::Relaxed);
                    save_current("a panic");
                }
                resume_unwind(panic);
            }
        };
        start_watchdog();
        for (path, seed) in &seeds {
            let outcome = catch_unwind(AssertUnwindSafe(|| exec(seed)));
            if let Err(panic) = outcome {
                eprintln!("fuzz {}: the corpus file {} fails", self.name, path.display());
                resume_unwind(panic);
            }
        }
        let seconds = fuzz_seconds();
        let mutator =
            Mutator { seeds: seeds.into_iter().map(|(_, s)| s).collect(), tokens: self.tokens };
        let start = Instant::now();
        // The harness catches and rethrows the parser's panics itself, so whatever
        // state it shares is never observed half-updated.
        let exec = AssertUnwindSafe(&exec);
        bolero::check!()
            .with_generator(mutator)
            .with_test_time(Duration::from_secs_f64(seconds))
            .for_each(move |input: &Vec<u8>| (*exec)(input));
        let elapsed = start.elapsed().as_secs_f64();
        let n = executions.load(Ordering::Relaxed);
        println!(
            "fuzz {}: {n} executions in {elapsed:.1} s ({:.0}/s), 0 crashes",
            self.name,
            n as f64 / elapsed.max(1e-9)
        );
    }
}

/// A directory for targets whose parser takes a path: in memory (`/dev/shm`) where
/// there is one, as writing each input to a disk-backed temp dir made those targets
/// fifty times slower here.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
    dir.expect("a scratch directory for fuzz inputs")
}

/// `SEMBASE_FUZZ_SECONDS`, or the default.
fn fuzz_seconds() -> f64 {
    match std::env::var("SEMBASE_FUZZ_SECONDS") {
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("SEMBASE_FUZZ_SECONDS={s:?} is not a number")),
        Err(_) => DEFAULT_SECONDS,
    }
}

/// `SEMBASE_FUZZ_CRASHES`, else `target/fuzz-crashes` of this workspace.
fn crash_dir() -> PathBuf {
    std::env::var_os("SEMBASE_FUZZ_CRASHES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-crashes"))
}

/// The files of `dir`, sorted by name (so runs are reproducible).
fn read_corpus(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("fuzz corpus {}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> =
        entries.map(|e| e.expect("a corpus entry").path()).filter(|p| p.is_file()).collect();
    paths.sort();
    assert!(!paths.is_empty(), "fuzz corpus {} is empty", dir.display());
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// A stable name for a crashing input.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Integers that sit on the edges parsers get wrong: zero, one, sign and width
/// limits, and 2^60 (a length that must be refused before it is allocated).
const BOUNDARIES: [u64; 10] =
    [0, 1, 2, 0x7f, 0xff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 1 << 60, u64::MAX];

/// Makes inputs by mutating seeds with bolero's random choices.
struct Mutator {
    seeds: Vec<Vec<u8>>,
    tokens: Vec<Vec<u8>>,
}

impl ValueGenerator for Mutator {
    type Output = Vec<u8>;

    fn generate<D: Driver>(&self, d: &mut D) -> Option<Vec<u8>> {
        let mut input = self.seeds[d.gen_usize(Included(&0), Excluded(&self.seeds.len()))?].clone();
        for _ in 0..d.gen_usize(Included(&1), Included(&MAX_MUTATIONS))? {
            self.mutate_once(d, &mut input)?;
        }
        Some(input)
    }
}

impl Mutator {
    fn mutate_once<D: Driver>(&self, d: &mut D, input: &mut Vec<u8>) -> Option<()> {
        let len = input.len();
        let at = d.gen_usize(Included(&0), Included(&len))?;
        match d.gen_u8(Included(&0), Excluded(&8))? {
            // Flip one bit.
            0 if at < len => input[at] ^= 1 << d.gen_u8(Included(&0), Excluded(&8))?,
            // Write a random byte.
            1 if at < len => input[at] = d.gen_u8(Included(&0), Included(&u8::MAX))?,
            // Write a boundary integer (or the input's length, give or take one) over
            // 1, 2, 4 or 8 bytes.
            2 => {
                let width = 1 << d.gen_u8(Included(&0), Included(&3))?;
                let which = d.gen_usize(Included(&0), Included(&BOUNDARIES.len()))?;
                let value = match BOUNDARIES.get(which) {
                    Some(&v) => v,
                    None => (len as u64)
                        .wrapping_add(d.gen_u64(Included(&0), Included(&2))?)
                        .wrapping_sub(1),
                };
                let bytes = value.to_le_bytes();
                let end = (at + width).min(len);
                input[at..end].copy_from_slice(&bytes[..end - at]);
            }
            // Cut the input here.
            3 => input.truncate(at),
            // Remove up to 64 bytes.
            4 => {
                let end = at + d.gen_usize(Included(&0), Included(&64))?.min(len - at);
                input.drain(at..end);
            }
            // Copy up to 64 bytes from elsewhere in the input to here.
            5 if len > 0 => {
                let from = d.gen_usize(Included(&0), Excluded(&len))?;
                let n = d.gen_usize(Included(&1), Included(&64))?.min(len - from);
                let piece = input[from..from + n].to_vec();
                input.splice(at..at, piece);
            }
            // Insert a token of the format.
            6 if !self.tokens.is_empty() => {
                let token =
                    &self.tokens[d.gen_usize(Included(&0), Excluded(&self.tokens.len()))?];
                input.splice(at..at, token.iter().copied());
            }
            // Replace the tail with another seed's tail.
            _ => {
                let other = &self.seeds[d.gen_usize(Included(&0), Excluded(&self.seeds.len()))?];
                let from = d.gen_usize(Included(&0), Included(&other.len()))?;
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
        }
        Some(())
    }
}
