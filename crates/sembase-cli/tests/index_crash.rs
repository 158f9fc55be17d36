//! Crash safety of index writes with the real binary: `sembase index add|delete`
//! on an ann index (small delta limit, so graph files are rewritten too) is killed
//! with SIGKILL at random moments, again and again; after every kill the index
//! must open and hold exactly one of the states its writes committed. A second
//! writer is refused with a clear message. Needs all-minilm-l6-v2 in the store
//! (`sembase model pull all-minilm-l6-v2`, done by scripts/test.sh).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sembase_index::segments::{Access, Loc, Segments};
use sembase_index::{Index, Precision};

const SEMBASE: &str = env!("CARGO_BIN_EXE_sembase");
const MODEL: &str = "all-minilm-l6-v2";
const WORDS: [&str; 12] = [
    "river", "market", "guitar", "winter", "engine", "garden", "letter", "bridge", "forest",
    "doctor", "planet", "coffee",
];

/// id -> text: the contents of an index.
type State = BTreeMap<String, String>;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("sembase-index-crash-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(rng: &mut Rng, round: usize, id: &str) -> String {
    let words: Vec<&str> = (0..6).map(|_| WORDS[rng.below(WORDS.len() as u64) as usize]).collect();
    format!("{} (round {round}, document {id})", words.join(" "))
}

fn write_corpus(path: &Path, docs: &[(String, String)]) {
    let mut file = std::fs::File::create(path).unwrap();
    for (id, text) in docs {
        writeln!(
            file,
            "{}",
            serde_json::json!({"_id": id, "text": text, "metadata": {"n": id.len()}})
        )
        .unwrap();
    }
}

fn sembase(args: &[&str]) -> std::process::Output {
    Command::new(SEMBASE).args(args).output().unwrap()
}

/// Opens the index as a reader would, checks that search finds stored documents,
/// and returns its contents.
fn read_state(dir: &Path) -> State {
    let index = Index::open(dir, Access::Read)
        .unwrap_or_else(|e| panic!("index does not open after a kill: {e}"));
    let segments = Segments::open(dir, 384, Precision::F32, Access::Read).unwrap();
    let mut state = State::new();
    let mut locs = Vec::new();
    for (seg_no, (seg, live)) in segments.segments().iter().zip(segments.live()).enumerate() {
        for row in (0..seg.rows()).filter(|&r| live[r]) {
            assert!(
                state.insert(seg.id(row).to_string(), seg.text(row).unwrap().to_string()).is_none(),
                "an id is live twice"
            );
            locs.push(Loc { seg: seg_no as u32, row: row as u32 });
        }
    }
    assert_eq!(index.store().count().unwrap(), state.len());
    for loc in locs.iter().step_by(7) {
        let hits = index.store().search(&[segments.vector(*loc)], 1, None).unwrap();
        assert_eq!(
            hits[0][0].id,
            segments.id(*loc),
            "a stored document is its own nearest neighbour"
        );
    }
    state
}

/// A channel that gets a message per "committed" line the writer prints.
fn watch_commits(stderr: std::process::ChildStderr) -> std::sync::mpsc::Receiver<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("committed") || line.starts_with("removed") {
                let _ = tx.send(());
            }
        }
    });
    rx
}

/// The states a sequence of upsert batches passes through, first to last.
fn add_states(start: &State, docs: &[(String, String)], batch: usize) -> Vec<State> {
    let mut states = vec![start.clone()];
    for chunk in docs.chunks(batch) {
        let mut next = states.last().unwrap().clone();
        next.extend(chunk.iter().cloned());
        states.push(next);
    }
    states
}

#[test]
fn killed_writers_leave_a_committed_state() {
    let dir = temp_dir("kills");
    let index = dir.join("index");
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64;
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);

    let initial: Vec<(String, String)> = (0..20)
        .map(|i| format!("d{i:03}"))
        .map(|id| (id.clone(), text(&mut rng, 0, &id)))
        .collect();
    let corpus = dir.join("initial.jsonl");
    write_corpus(&corpus, &initial);
    let out = sembase(&[
        "index",
        "build",
        "--model",
        MODEL,
        "--corpus",
        corpus.to_str().unwrap(),
        "--output",
        index.to_str().unwrap(),
        "--store",
        "ann",
        "--delta-limit",
        "4",
    ]);
    assert!(
        out.status.success(),
        "index build failed (is {MODEL} in the store? `sembase model pull {MODEL}`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut state = read_state(&index);
    assert_eq!(state, initial.iter().cloned().collect::<State>());

    // An uninterrupted add: how long start-up and one commit take.
    let batch = 2;
    let docs: Vec<(String, String)> = (20..32)
        .map(|i| format!("d{i:03}"))
        .map(|id| (id.clone(), text(&mut rng, 1, &id)))
        .collect();
    let file = dir.join("round.jsonl");
    write_corpus(&file, &docs);
    let started = Instant::now();
    let mut child = Command::new(SEMBASE)
        .args([
            "index",
            "add",
            "--index",
            index.to_str().unwrap(),
            "--corpus",
            file.to_str().unwrap(),
            "--batch",
            &batch.to_string(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_commit = None;
    for line in BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok) {
        if line.starts_with("committed") && first_commit.is_none() {
            first_commit = Some(started.elapsed());
        }
    }
    let first_commit = first_commit.expect("index add reports its commits");
    assert!(child.wait().unwrap().success());
    let whole = started.elapsed();
    state = add_states(&state, &docs, batch).pop().unwrap();
    assert_eq!(read_state(&index), state);
    // The time one commit takes, to spread kills between commit lines.
    let per_commit = (whole - first_commit).div_f64((docs.len() / batch) as f64);

    let mut interrupted = 0;
    let mut partial = 0;
    for round in 2..30 {
        let deleting = rng.below(4) == 0 && state.len() > 5;
        let (args, candidates): (Vec<String>, Vec<State>) = if deleting {
            let ids: Vec<String> =
                state.keys().filter(|_| rng.below(3) == 0).take(6).cloned().collect();
            let mut after = state.clone();
            ids.iter().for_each(|id| {
                after.remove(id);
            });
            let mut args: Vec<String> = vec![
                "index".into(),
                "delete".into(),
                "--index".into(),
                index.display().to_string(),
            ];
            args.extend(ids.iter().flat_map(|id| ["--id".to_string(), id.clone()]));
            (args, vec![state.clone(), after])
        } else {
            // New ids and replacements of existing ones.
            let docs: Vec<(String, String)> = (0..12)
                .map(|_| format!("d{:03}", rng.below(60)))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .map(|id| (id.clone(), text(&mut rng, round, &id)))
                .collect();
            write_corpus(&file, &docs);
            let args = [
                "index",
                "add",
                "--index",
                index.to_str().unwrap(),
                "--corpus",
                file.to_str().unwrap(),
                "--batch",
                &batch.to_string(),
            ];
            (args.iter().map(|s| s.to_string()).collect(), add_states(&state, &docs, batch))
        };
        let mut child = Command::new(SEMBASE).args(&args).stderr(Stdio::piped()).spawn().unwrap();
        // Kill after a random number of commits (0: during start-up or the
        // first write) plus a random part of one commit's time.
        let commits = watch_commits(child.stderr.take().unwrap());
        let wait_for = rng.below(candidates.len() as u64) as usize;
        let extra = if wait_for == 0 { first_commit } else { per_commit }
            .mul_f64(rng.below(1000) as f64 / 1000.0);
        let deadline = Instant::now() + Duration::from_secs(60);
        for _ in 0..wait_for {
            if commits.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_err() {
                break;
            }
        }
        std::thread::sleep(extra);
        let finished = child.try_wait().unwrap().is_some();
        child.kill().unwrap_or(());
        let status = child.wait().unwrap();
        if !finished {
            interrupted += 1;
        }
        let now = read_state(&index);
        let at = candidates.iter().position(|c| *c == now).unwrap_or_else(|| {
            panic!("round {round} (seed {seed}): the index holds {} documents, none of the {} committed states", now.len(), candidates.len())
        });
        if status.success() {
            assert_eq!(
                at,
                candidates.len() - 1,
                "a writer that finished must leave its last state"
            );
        }
        if at > 0 && at < candidates.len() - 1 {
            partial += 1;
        }
        state = now;
    }
    eprintln!("{interrupted} writers killed while running, {partial} left between their first and last commit");
    assert!(
        interrupted >= 10,
        "only {interrupted} of 28 kills interrupted a writer: the kill window is off"
    );
    assert!(partial >= 3, "only {partial} kills fell between commits");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_writer_is_refused_with_a_clear_message() {
    let dir = temp_dir("second");
    let corpus = dir.join("c.txt");
    std::fs::write(&corpus, "one document\nanother one\n").unwrap();
    let index = dir.join("index");
    let out = sembase(&[
        "index",
        "build",
        "--model",
        MODEL,
        "--corpus",
        corpus.to_str().unwrap(),
        "--output",
        index.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "index build failed (is {MODEL} in the store?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let writer = Index::open(&index, Access::Write).unwrap();
    let out = sembase(&["index", "delete", "--index", index.to_str().unwrap(), "--id", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("locked by another writer"), "{stderr}");
    drop(writer);
    let out = sembase(&["index", "delete", "--index", index.to_str().unwrap(), "--id", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read_state(&index).into_keys().collect::<Vec<_>>(), ["2"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
