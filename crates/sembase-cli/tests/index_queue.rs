//! Queued builds with the real binary, a real PostgreSQL + pgvector server
//! (`SEMBASE_TEST_PG_URL`, from `scripts/postgres.sh start`) and all-minilm-l6-v2:
//! three workers build one index, one is killed with SIGKILL in the middle of a
//! chunk, its lease runs out and another worker finishes the chunk; every id is
//! then present once, with the vector a single-process build gives.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sembase_index::PostgresStore;
use serde_json::Value;

const SEMBASE: &str = env!("CARGO_BIN_EXE_sembase");
const MODEL: &str = "all-minilm-l6-v2";
/// Sentences in the corpus, and per chunk.
const TEXTS: usize = 3000;
const CHUNK: usize = 100;
/// Short, so that the killed worker's chunk is claimed again within seconds.
const LEASE_SECONDS: &str = "3";

fn url() -> String {
    std::env::var("SEMBASE_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "SEMBASE_TEST_PG_URL is not set: start a server with `scripts/postgres.sh start` and \
             `export SEMBASE_TEST_PG_URL=$(scripts/postgres.sh url)` (scripts/test.sh does both)"
        )
    })
}

/// The test's tables, removed before and after it.
struct Tables {
    url: String,
    names: [String; 2],
}

impl Tables {
    fn new(names: [String; 2]) -> Tables {
        let tables = Tables { url: url(), names };
        tables.remove();
        tables
    }

    fn remove(&self) {
        for name in &self.names {
            PostgresStore::remove(&self.url, name).expect("remove a test table");
        }
    }
}

impl Drop for Tables {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = PostgresStore::remove(&self.url, name);
        }
    }
}

fn write_corpus(path: &Path) {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/en/corpus/sentences.txt");
    let text = std::fs::read_to_string(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    let mut file = std::fs::File::create(path).unwrap();
    for (i, line) in text.lines().take(TEXTS).enumerate() {
        writeln!(file, "{}", serde_json::json!({"_id": format!("s{i:05}"), "text": line})).unwrap();
    }
}

fn sembase(args: &[&str]) -> String {
    let out = Command::new(SEMBASE).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "sembase {args:?} failed (is {MODEL} in the store? `sembase model pull {MODEL}`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn status(index: &str) -> Value {
    serde_json::from_str(&sembase(&["index", "status", "--index", index, "--json"])).unwrap()
}

/// A worker whose stderr lines arrive on `lines` tagged with `n`.
fn spawn_worker(index: &str, n: usize, lines: &mpsc::Sender<(usize, String)>) -> Child {
    let mut child = Command::new(SEMBASE)
        .args(["index", "work", "--index", index, "--lease-seconds", LEASE_SECONDS])
        .args(["--threads", "1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send((n, line));
        }
    });
    child
}

/// The chunk number of a "claimed chunk N (...)" line.
fn claimed_chunk(line: &str) -> Option<i32> {
    line.strip_prefix("claimed chunk ")?.split(' ').next()?.parse().ok()
}

#[test]
fn a_worker_killed_mid_chunk_loses_nothing_and_applies_nothing_twice() {
    let pid = std::process::id();
    let tables = Tables::new([format!("test_queue_kill_{pid}"), format!("test_queue_ref_{pid}")]);
    let dir = std::env::temp_dir().join(format!("sembase-index-queue-{pid}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let corpus = dir.join("corpus.jsonl");
    write_corpus(&corpus);
    let queued = dir.join("queued").display().to_string();
    let started = Instant::now();
    sembase(&[
        "index",
        "build",
        "--queue",
        "--chunk-size",
        &CHUNK.to_string(),
        "--model",
        MODEL,
        "--corpus",
        corpus.to_str().unwrap(),
        "--output",
        &queued,
        "--store",
        &tables.url,
        "--table",
        &tables.names[0],
    ]);
    let chunks = (TEXTS / CHUNK) as u64;
    let before = status(&queued);
    assert_eq!(
        (before["state"].as_str(), &before["chunks"]["waiting"]),
        (Some("queued"), &chunks.into())
    );

    // An interrupted build resumes: a worker that stops after two chunks leaves them done.
    sembase(&["index", "work", "--index", &queued, "--max-chunks", "2", "--threads", "1"]);
    let resumed = status(&queued);
    assert_eq!((&resumed["chunks"]["done"], &resumed["rows"]), (&2.into(), &(2 * CHUNK).into()));

    let (send, lines) = mpsc::channel();
    let mut workers: Vec<Child> = (0..3).map(|n| spawn_worker(&queued, n, &send)).collect();
    // Kill worker 0 just after it claims a chunk, once it has applied one: it is
    // then embedding (a chunk takes seconds), with the chunk under its lease.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut applied_one = false;
    let killed_chunk = loop {
        let (n, line) = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("worker 0 claims a second chunk");
        applied_one |= n == 0 && line.starts_with("applied chunk");
        if let (0, true, Some(chunk)) = (n, applied_one, claimed_chunk(&line)) {
            std::thread::sleep(Duration::from_millis(300));
            workers[0].kill().unwrap();
            break chunk;
        }
    };
    let killed = workers.remove(0);
    let killed_pid = killed.id();
    let mut killed = killed;
    assert!(!killed.wait().unwrap().success());
    for mut worker in workers {
        assert!(worker.wait().unwrap().success(), "a surviving worker failed");
    }
    let mut log = Vec::new();
    while let Ok(entry) = lines.try_recv() {
        log.push(entry);
    }
    let applied_by_killed = format!("applied chunk {killed_chunk}:");
    assert!(
        !log.iter().any(|(n, line)| *n == 0 && line.starts_with(&applied_by_killed)),
        "the worker was killed after applying its chunk, not in the middle of it"
    );
    eprintln!("queued build with a kill: {:.1}s", started.elapsed().as_secs_f64());

    let done = status(&queued);
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!((&done["rows"], &done["chunks"]["done"]), (&TEXTS.into(), &chunks.into()));
    assert!(done["reclaimed"].as_u64().unwrap() >= 1, "{done}");

    let mut client = postgres::Client::connect(&tables.url, postgres::NoTls).unwrap();
    let row = client
        .query_one(
            &format!("SELECT attempts, worker FROM \"{}_queue\" WHERE chunk = $1", tables.names[0]),
            &[&killed_chunk],
        )
        .unwrap();
    let (attempts, worker): (i32, String) = (row.get(0), row.get(1));
    assert!(attempts >= 2, "the killed worker's chunk was claimed {attempts} times");
    assert!(!worker.ends_with(&format!(":{killed_pid}")), "{worker} finished the chunk");

    // The same corpus built by one process, for reference.
    let reference = dir.join("reference").display().to_string();
    sembase(&[
        "index",
        "build",
        "--model",
        MODEL,
        "--corpus",
        corpus.to_str().unwrap(),
        "--output",
        &reference,
        "--store",
        &tables.url,
        "--table",
        &tables.names[1],
    ]);
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), count(q.id), count(r.id), min(1 - (q.embedding <=> r.embedding)) \
                 FROM \"{}\" q FULL JOIN \"{}\" r USING (id)",
                tables.names[0], tables.names[1]
            ),
            &[],
        )
        .unwrap();
    let (all, queued_rows, reference_rows): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((all, queued_rows, reference_rows), (TEXTS as i64, TEXTS as i64, TEXTS as i64));
    let worst: f64 = row.get(3);
    eprintln!("lowest cosine between the queued and the single-process vectors: {worst:.6}");
    assert!(worst >= 0.9999, "a vector differs from the single-process build's: cosine {worst}");

    let hits = sembase(&[
        "search",
        "--index",
        &queued,
        "--query",
        "the dvd player does not play disney movies",
    ]);
    assert!(!hits.trim().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
