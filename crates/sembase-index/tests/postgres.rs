//! `PostgresStore` against a real PostgreSQL + pgvector server, on real
//! all-MiniLM-L6-v2 vectors of English sentences.
//!
//! Needs the server's URL in SEMBASE_TEST_PG_URL (`scripts/test.sh` starts one
//! with `scripts/postgres.sh start` and sets it) and `sembase model pull all-minilm-l6-v2`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use serde_json::{json, Value};

use sembase_core::{EmbedOptions, Embedder, LoadOptions, LocalEmbedder};
use sembase_index::{
    build_index, Access, BuildVectors, CorpusDoc, Document, Filter, Index, IndexError,
    IndexSettings, Metadata, Metric, ModelIdentity, PgPrecision, PostgresStore, StoreSpec,
    VectorStore,
};

/// Sentences embedded once for every test of this file.
const SENTENCES: usize = 700;
/// Queries (STS-B test sentences).
const QUERIES: usize = 30;
const K: usize = 10;

fn url() -> String {
    std::env::var("SEMBASE_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "SEMBASE_TEST_PG_URL is not set: start a server with `scripts/postgres.sh start` and \
             `export SEMBASE_TEST_PG_URL=$(scripts/postgres.sh url)` (scripts/test.sh does both)"
        )
    })
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

/// Real sentences, their vectors and the model's identity.
struct Corpus {
    texts: Vec<String>,
    vectors: Vec<Vec<f32>>,
    queries: Vec<Vec<f32>>,
    model: ModelIdentity,
}

fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let store = sembase_hub::Store::from_env().expect("sembase store");
        let dir = store
            .resolve("all-minilm-l6-v2")
            .unwrap_or_else(|e| panic!("all-minilm-l6-v2 is not in the store ({e}): run `sembase model pull all-minilm-l6-v2`"));
        let model = LocalEmbedder::load(&dir, "all-minilm-l6-v2", LoadOptions::default()).expect("load all-minilm-l6-v2");
        let read = |path: PathBuf| std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let texts: Vec<String> = read(data_dir().join("en/corpus/sentences.txt")).lines().take(SENTENCES).map(String::from).collect();
        let queries: Vec<String> = read(data_dir().join("en/stsb/test.tsv"))
            .lines()
            .skip(1)
            .take(QUERIES)
            .map(|line| line.split('\t').next().unwrap().to_string())
            .collect();
        let embed = |texts: &[String]| {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            model.embed(&refs, &EmbedOptions::default()).expect("embed").vectors
        };
        Corpus {
            vectors: embed(&texts),
            queries: embed(&queries),
            texts,
            model: ModelIdentity::of_dir("all-minilm-l6-v2", &dir).expect("model identity"),
        }
    })
}

fn settings(model: &ModelIdentity) -> IndexSettings {
    IndexSettings {
        model: model.clone(),
        dimensions: 384,
        query_prefix: None,
        document_prefix: None,
        metric: Metric::Cosine,
    }
}

fn metadata(value: Value) -> Metadata {
    value.as_object().cloned().expect("an object")
}

/// A test's own table, dropped (with its registry row) before and after the test.
struct Scratch {
    url: String,
    table: String,
}

impl Scratch {
    fn new(test: &str) -> Scratch {
        let scratch = Scratch { url: url(), table: format!("test_{test}_{}", std::process::id()) };
        scratch.drop_table().expect("drop the scratch table");
        scratch
    }

    /// Creates the scratch index for the sentences' vectors, kept at `precision`.
    fn create(&self, precision: PgPrecision) -> PostgresStore {
        PostgresStore::create(&self.url, &self.table, &settings(&corpus().model), precision)
            .expect("create")
    }

    fn drop_table(&self) -> sembase_index::Result<()> {
        PostgresStore::remove(&self.url, &self.table)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Best effort: a failed test must report its own panic, not this one.
        let _ = self.drop_table();
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// What the index should hold: id -> document.
type Truth = BTreeMap<String, Document>;

/// Exact top-k of `query` among the documents that `keep`, ties by larger id first.
fn exact_top_k(
    truth: &Truth,
    query: &[f32],
    k: usize,
    keep: impl Fn(&Document) -> bool,
) -> Vec<(String, f32)> {
    let mut scored: Vec<(String, f32)> =
        truth.values().filter(|d| keep(d)).map(|d| (d.id.clone(), dot(&d.vector, query))).collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    scored.truncate(k);
    scored
}

/// Checks every query's hits against exact search and returns recall@k.
fn check_against_exact(store: &PostgresStore, truth: &Truth, filter: Option<&Filter>) -> f64 {
    check_scores_within(store, truth, filter, 1e-4)
}

/// [`check_against_exact`], with each hit's score within `tolerance` of the
/// exact cosine (half vectors score in half precision).
fn check_scores_within(
    store: &PostgresStore,
    truth: &Truth,
    filter: Option<&Filter>,
    tolerance: f32,
) -> f64 {
    let queries = &corpus().queries;
    let results = store.search(queries, K, filter).expect("search");
    assert_eq!(results.len(), queries.len());
    let mut found = 0;
    for (query, hits) in queries.iter().zip(&results) {
        let exact = exact_top_k(truth, query, K, |d| filter.is_none_or(|f| f.matches(&d.metadata)));
        assert_eq!(
            hits.len(),
            exact.len(),
            "postgres returned {} hits, exact search {}",
            hits.len(),
            exact.len()
        );
        for pair in hits.windows(2) {
            assert!(pair[0].score >= pair[1].score, "hits out of order: {pair:?}");
        }
        for hit in hits {
            let doc = truth
                .get(&hit.id)
                .unwrap_or_else(|| panic!("hit {:?} is not in the index", hit.id));
            assert_eq!(
                (&hit.text, &hit.metadata),
                (&doc.text, &doc.metadata),
                "hit {:?} carries stale data",
                hit.id
            );
            let score = dot(&doc.vector, query);
            assert!(
                (hit.score - score).abs() < tolerance,
                "hit {:?}: score {} but the exact cosine is {score}",
                hit.id,
                hit.score
            );
            found += exact.iter().any(|(id, _)| *id == hit.id) as usize;
        }
    }
    found as f64 / (queries.len() * K) as f64
}

fn document(i: usize, text: &str, vector_of: usize) -> Document {
    Document {
        id: format!("doc{i:04}"),
        vector: corpus().vectors[vector_of].clone(),
        text: text.to_string(),
        metadata: metadata(json!({"parity": i % 2, "source": "sentences"})),
    }
}

#[test]
fn upserts_deletes_and_searches_like_exact_search() {
    let corpus = corpus();
    let scratch = Scratch::new("exact");
    let mut store = scratch.create(PgPrecision::F32);
    let mut truth = Truth::new();

    // 600 documents in three writes, then 50 of them replaced by other sentences.
    let docs: Vec<Document> = (0..600).map(|i| document(i, &corpus.texts[i], i)).collect();
    for batch in docs.chunks(200) {
        store.upsert(batch).expect("upsert");
    }
    let replaced: Vec<Document> = (0..50)
        .map(|i| document(i, &format!("replaced: {}", corpus.texts[600 + i]), 600 + i))
        .collect();
    store.upsert(&replaced).expect("upsert replacements");
    truth.extend(docs.into_iter().chain(replaced).map(|d| (d.id.clone(), d)));

    let gone: Vec<String> =
        (100..150).map(|i| format!("doc{i:04}")).chain(["no-such-id".to_string()]).collect();
    assert_eq!(store.delete(&gone).expect("delete"), 50);
    gone.iter().for_each(|id| drop(truth.remove(id)));
    assert_eq!(store.count().expect("count"), 550);

    // The first write went into an empty table, so its graph was built after loading.
    let mut client = postgres::Client::connect(&scratch.url, postgres::NoTls).unwrap();
    let hnsw = client.query(
        "SELECT 1 FROM pg_indexes WHERE indexname = $1 AND indexdef LIKE '%USING hnsw%'",
        &[&format!("{}_hnsw", scratch.table)],
    );
    assert_eq!(hnsw.unwrap().len(), 1, "the HNSW index is missing");

    let recall = check_against_exact(&store, &truth, None);
    assert!(recall >= 0.98, "recall@10 against exact search is {recall}");

    let odd = Filter::new(metadata(json!({"parity": 1}))).unwrap();
    let recall = check_against_exact(&store, &truth, Some(&odd));
    assert!(recall >= 0.98, "filtered recall@10 against exact search is {recall}");
    let same = Filter::new(metadata(json!({"parity": 1.0}))).unwrap();
    assert_eq!(
        store.search(&corpus.queries, K, Some(&same)).unwrap(),
        store.search(&corpus.queries, K, Some(&odd)).unwrap()
    );
    let nothing = Filter::new(metadata(json!({"source": "elsewhere"}))).unwrap();
    assert!(store.search(&corpus.queries[..1], K, Some(&nothing)).unwrap()[0].is_empty());

    // A second process opening the index by name sees the same settings and rows.
    let reopened = PostgresStore::open(&scratch.url, &scratch.table).expect("open");
    assert_eq!(reopened.settings(), store.settings());
    assert_eq!(reopened.count().unwrap(), 550);
    assert_eq!(
        reopened.search(&corpus.queries, K, None).unwrap(),
        store.search(&corpus.queries, K, None).unwrap()
    );
    let bytes = reopened.disk_usage().unwrap();
    assert!(bytes.table > 550 * 384 * 4, "the table takes {bytes:?}, less than its raw vectors");
    assert!(bytes.total > bytes.table + bytes.vector_index, "{bytes:?}");
}

#[test]
fn the_recorded_model_refuses_another() {
    let corpus = corpus();
    let scratch = Scratch::new("model");
    scratch.create(PgPrecision::F32);
    let again = PostgresStore::create(
        &scratch.url,
        &scratch.table,
        &settings(&corpus.model),
        PgPrecision::F32,
    );
    assert!(
        matches!(again, Err(IndexError::Invalid(ref m)) if m.contains("already holds")),
        "{:?}",
        again.err()
    );

    let store = PostgresStore::open(&scratch.url, &scratch.table).expect("open");
    assert_eq!(store.settings().model, corpus.model);
    store.settings().check_model(&corpus.model).expect("the same model is accepted");
    let other = ModelIdentity {
        name: "all-minilm-l6-v2".into(),
        fingerprint: format!("{}-changed", corpus.model.fingerprint),
    };
    assert!(matches!(store.settings().check_model(&other), Err(IndexError::ModelMismatch(_))));
}

#[test]
fn bad_input_and_unknown_indexes_are_errors() {
    let scratch = Scratch::new("input");
    let mut store = scratch.create(PgPrecision::F32);
    let mut short = document(0, "short", 0);
    short.vector.truncate(100);
    assert!(matches!(store.upsert(&[short]), Err(IndexError::Invalid(_))));
    let twice = [document(1, "a", 1), document(1, "b", 2)];
    assert!(matches!(store.upsert(&twice), Err(IndexError::Invalid(_))));
    assert!(matches!(store.search(&[vec![0.0; 10]], K, None), Err(IndexError::Invalid(_))));
    assert_eq!(store.count().unwrap(), 0);

    let unknown = PostgresStore::open(&scratch.url, "test_never_created");
    assert!(
        matches!(unknown, Err(IndexError::Invalid(ref m)) if m.contains("no index named")),
        "{:?}",
        unknown.err()
    );
    assert!(matches!(PostgresStore::open(&scratch.url, "Bad-Name"), Err(IndexError::Invalid(_))));
    assert!(matches!(
        PostgresStore::open_tuned(&scratch.url, &scratch.table, Some(0)),
        Err(IndexError::Invalid(_))
    ));
    let tuned = PostgresStore::open_tuned(&scratch.url, &scratch.table, Some(1000))
        .expect("ef_search 1000");
    assert_eq!(tuned.count().unwrap(), 0);
    let refused = PostgresStore::open("postgres://sembase@127.0.0.1:1/sembase", &scratch.table);
    assert!(matches!(refused, Err(IndexError::Database(_))), "{:?}", refused.err());
}

/// Two writers (as two `sembase serve` replicas would be) rewrite the same 200
/// rows and add rows of their own, while two readers search and count through
/// a third connection: every write is seen whole or not at all.
#[test]
fn replicas_write_and_read_one_index_concurrently() {
    const BASE: usize = 200;
    const ROUNDS: usize = 8;
    const ADDED: usize = 50;
    let corpus = corpus();
    let scratch = Scratch::new("replicas");
    let mut seed = scratch.create(PgPrecision::F32);
    let base = |writer: &str, round: usize| -> Vec<Document> {
        (0..BASE)
            .map(|i| Document {
                id: format!("base{i:03}"),
                text: format!("{writer} {round}"),
                ..document(i, "", i)
            })
            .collect()
    };
    seed.upsert(&base("seed", 0)).expect("seed");
    let reader = PostgresStore::open(&scratch.url, &scratch.table).expect("open reader");
    let writing = AtomicBool::new(true);
    let (url, table) = (scratch.url.as_str(), scratch.table.as_str());

    std::thread::scope(|s| {
        let writers: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|writer| {
                s.spawn(move || {
                    let mut store = PostgresStore::open(url, table).expect("open writer");
                    for round in 0..ROUNDS {
                        let mut docs = base(writer, round);
                        docs.extend((0..ADDED).map(|j| Document {
                            id: format!("{writer}{round}_{j}"),
                            ..document(j, writer, (BASE + round * ADDED + j) % SENTENCES)
                        }));
                        store.upsert(&docs).expect("concurrent upsert");
                    }
                })
            })
            .collect();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut checks = 0;
                    while writing.load(Ordering::Relaxed) || checks == 0 {
                        let rows = reader.count().expect("concurrent count");
                        assert_eq!(
                            (rows - BASE) % ADDED,
                            0,
                            "a reader saw {rows} rows: half a write"
                        );
                        let hits = reader
                            .search(&corpus.queries[..5], K, None)
                            .expect("concurrent search");
                        for query_hits in &hits {
                            let base_texts: std::collections::BTreeSet<&str> = query_hits
                                .iter()
                                .filter(|h| h.id.starts_with("base"))
                                .map(|h| h.text.as_str())
                                .collect();
                            assert!(
                                base_texts.len() <= 1,
                                "one query saw the base rows of several writes: {base_texts:?}"
                            );
                        }
                        checks += 1;
                    }
                    checks
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("writer");
        }
        writing.store(false, Ordering::Relaxed);
        for reader in readers {
            assert!(reader.join().expect("reader") > 0);
        }
    });

    assert_eq!(reader.count().unwrap(), BASE + 2 * ROUNDS * ADDED);
    let mut client = postgres::Client::connect(&scratch.url, postgres::NoTls).unwrap();
    let texts: Vec<String> = client
        .query(
            &format!("SELECT DISTINCT text FROM \"{}\" WHERE id LIKE 'base%'", scratch.table),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let last = format!("a {}", ROUNDS - 1);
    assert!(
        texts == [last.clone()] || texts == [format!("b {}", ROUNDS - 1)],
        "base rows after both writers: {texts:?}"
    );
}

/// `index build --store postgres://` end to end through an index directory; a
/// build that fails after making its table removes it, and one that finds the
/// name taken leaves the other index alone.
#[test]
fn index_directories_build_into_postgres_and_failed_builds_clean_up() {
    let corpus = corpus();
    let scratch = Scratch::new("build");
    let spec = StoreSpec::Postgres {
        url: scratch.url.clone(),
        table: scratch.table.clone(),
        precision: PgPrecision::F32,
    };
    let docs = || -> Vec<CorpusDoc> {
        (0..100)
            .map(|i| CorpusDoc {
                id: i.to_string(),
                title: String::new(),
                text: corpus.texts[i].clone(),
                metadata: Metadata::new(),
            })
            .collect()
    };
    let vectors = || BuildVectors::Given(corpus.vectors[..100].to_vec());
    let root = std::env::temp_dir().join(format!("sembase-pg-build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);

    // The output directory is taken, so publishing fails after the table was filled.
    let taken = root.join("taken");
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::write(taken.join("other-file"), "not an index").unwrap();
    let failed =
        build_index(&taken, settings(&corpus.model), spec.clone(), docs(), vectors(), &|_| {});
    assert!(failed.is_err());
    assert!(
        matches!(PostgresStore::open(&scratch.url, &scratch.table), Err(IndexError::Invalid(_))),
        "the failed build left its table"
    );

    let dir = root.join("built");
    let index =
        build_index(&dir, settings(&corpus.model), spec.clone(), docs(), vectors(), &|_| {})
            .expect("build");
    assert_eq!(index.store().count().unwrap(), 100);
    let hits = Index::open(&dir, Access::Read)
        .unwrap()
        .store()
        .search(&corpus.vectors[7..8], 1, None)
        .unwrap();
    assert_eq!(hits[0][0].id, "7");

    // A second build under the same table name is refused and leaves the first intact.
    let again =
        build_index(&root.join("again"), settings(&corpus.model), spec, docs(), vectors(), &|_| {});
    assert!(
        matches!(again, Err(IndexError::Invalid(ref m)) if m.contains("already holds")),
        "{:?}",
        again.err()
    );
    assert_eq!(Index::open(&dir, Access::Read).unwrap().store().count().unwrap(), 100);
    std::fs::remove_dir_all(&root).unwrap();
}

/// A server drops its indexes on an async runtime thread as it shuts down.
#[test]
fn a_store_dropped_on_an_async_runtime_closes_quietly() {
    let scratch = Scratch::new("drop");
    let store = scratch.create(PgPrecision::F32);
    assert_eq!(store.count().unwrap(), 0);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async move { drop(store) });
}

/// Half vectors, and bits re-ranked on the full vectors, against exact f32
/// search on the same sentences: recall@10 printed and held to floors measured
/// on this data, and the bytes each keeps.
#[test]
fn halfvec_and_bit_stores_keep_the_exact_top_10() {
    let corpus = corpus();
    let truth: Truth = (0..SENTENCES)
        .map(|i| document(i, &corpus.texts[i], i))
        .map(|d| (d.id.clone(), d))
        .collect();
    let docs: Vec<Document> = truth.values().cloned().collect();
    let odd = Filter::new(metadata(json!({"parity": 1}))).unwrap();
    let mut usage = Vec::new();
    // (precision, score tolerance, recall@10 floor, filtered floor). Measured
    // here: f32 and f16 1.000 and 1.000, bit 0.960 and 0.993; pgvector draws HNSW
    // levels at random, so the floors leave a margin.
    for (precision, tolerance, floor, filtered_floor) in [
        (PgPrecision::F32, 1e-4, 0.98, 0.98),
        (PgPrecision::F16, 2e-3, 0.98, 0.98),
        (PgPrecision::Bit, 1e-4, 0.93, 0.95),
    ] {
        let scratch = Scratch::new(&format!("precision_{precision}"));
        scratch.create(precision).upsert(&docs).expect("upsert");
        let store = PostgresStore::open(&scratch.url, &scratch.table).expect("open");
        assert_eq!(store.precision(), precision);
        let recall = check_scores_within(&store, &truth, None, tolerance);
        let filtered = check_scores_within(&store, &truth, Some(&odd), tolerance);
        let bytes = store.disk_usage().unwrap();
        eprintln!(
            "{precision}: recall@10 {recall:.3} (filtered {filtered:.3}) against exact f32 search; \
             {:.0} table and {:.0} HNSW bytes per vector",
            bytes.table as f64 / SENTENCES as f64,
            bytes.vector_index as f64 / SENTENCES as f64
        );
        assert!(recall >= floor, "{precision}: recall@10 {recall} is below {floor}");
        assert!(filtered >= filtered_floor, "{precision}: filtered recall@10 {filtered}");
        usage.push(bytes);
    }
    let [f32, f16, bit] = usage[..] else { unreachable!() };
    assert!(f16.table < f32.table * 3 / 4, "halfvec rows: {f16:?}, vector rows: {f32:?}");
    assert!(f16.vector_index < f32.vector_index * 3 / 4, "{f16:?} against {f32:?}");
    assert!(bit.vector_index < f32.vector_index / 3, "bit graph: {bit:?}, vector graph: {f32:?}");
}

/// The queue without a model: a claim whose lease ran out and was claimed again
/// cannot apply its chunk, a chunk is applied once, readers see no index (or the
/// old one) until the swap, and a re-embedding build replaces the index whole.
#[test]
fn chunks_apply_once_and_builds_swap_in_whole() {
    use sembase_index::postgres::queue::{enqueue, Claim, Finish, State};
    use sembase_index::Queue;
    use std::time::Duration;

    let corpus = corpus();
    let scratch = Scratch::new("queue");
    let (url, table) = (scratch.url.as_str(), scratch.table.as_str());
    let docs: Vec<CorpusDoc> = (0..6)
        .map(|i| CorpusDoc {
            id: format!("q{i}"),
            title: String::new(),
            text: corpus.texts[i].clone(),
            metadata: Metadata::new(),
        })
        .collect();
    let old = settings(&corpus.model);
    let queued = enqueue(url, table, &old, PgPrecision::F32, &docs, 4, false).expect("enqueue");
    assert_eq!((queued.chunks, queued.rows), (2, 6));
    assert!(PostgresStore::open(url, table).is_err(), "an index is readable before its swap");
    let again = enqueue(url, table, &old, PgPrecision::F32, &docs, 4, false);
    assert!(matches!(again, Err(IndexError::Invalid(ref m)) if m.contains("unfinished")));
    let create = PostgresStore::create(url, table, &old, PgPrecision::F32);
    assert!(matches!(create, Err(IndexError::Invalid(ref m)) if m.contains("queued build")));

    let queue = Queue::open(url, table).expect("open the queue");
    // Vectors of sentence `offset + i` for document `qi`.
    let embedded = |claim: Claim, offset: usize| -> Vec<Document> {
        let docs = queue.chunk_docs(&claim).expect("chunk documents");
        docs.into_iter()
            .map(|d| {
                let i: usize = d.id[1..].parse().unwrap();
                d.into_document(corpus.vectors[offset + i].clone())
            })
            .collect()
    };
    let short = Duration::from_secs(1);
    let first = queue.claim("a", short).unwrap().expect("a chunk to claim");
    let second = queue.claim("b", short).unwrap().expect("a second chunk");
    assert_eq!((first.chunk, first.attempt, first.rows, second.rows), (0, 1, 4, 2));
    assert_eq!(queue.claim("c", short).unwrap(), None, "a chunk under a live lease was claimed");
    assert_eq!(queue.status().unwrap().chunks.claimed, 2);
    std::thread::sleep(Duration::from_millis(1300));
    let reclaimed = queue.claim("c", Duration::from_secs(60)).unwrap().expect("an expired lease");
    assert_eq!((reclaimed.chunk, reclaimed.attempt), (0, 2));
    assert!(!queue.renew(&first, short).unwrap(), "a lost claim renewed its lease");
    assert!(!queue.complete(&first, &embedded(first, 0)).unwrap(), "a lost claim applied");
    assert!(queue.complete(&reclaimed, &embedded(reclaimed, 0)).unwrap());
    assert!(!queue.complete(&reclaimed, &embedded(reclaimed, 0)).unwrap(), "applied twice");
    // b's lease ran out too, but nobody claimed its chunk again: its work still counts.
    assert!(queue.complete(&second, &embedded(second, 0)).unwrap());
    let status = queue.status().unwrap();
    assert_eq!(
        (status.state, status.rows, status.chunks.done, status.reclaimed),
        (State::Indexing, 6, 2, 1)
    );
    assert_eq!(queue.finish().unwrap(), Finish::Done);
    assert_eq!(queue.status().unwrap().state, State::Done);
    let store = PostgresStore::open(url, table).expect("the index is live");
    assert_eq!(store.count().unwrap(), 6);
    assert_eq!(store.search(&corpus.vectors[3..4], 1, None).unwrap()[0][0].id, "q3");

    // Re-embedding (another model, bits): the old index serves until the swap.
    let mut new = old.clone();
    new.model.fingerprint = format!("{}-retrained", old.model.fingerprint);
    let refused = enqueue(url, "test_nothing_to_replace", &new, PgPrecision::Bit, &docs, 2, true);
    assert!(matches!(refused, Err(IndexError::Invalid(ref m)) if m.contains("no index named")));
    let taken = enqueue(url, table, &new, PgPrecision::Bit, &docs, 2, false);
    assert!(matches!(taken, Err(IndexError::Invalid(ref m)) if m.contains("--replace")));
    enqueue(url, table, &new, PgPrecision::Bit, &docs[..5], 2, true).expect("re-embed");
    assert_eq!(queue.current().unwrap().settings, new);
    while let Some(claim) = queue.claim("d", short).unwrap() {
        assert!(queue.complete(&claim, &embedded(claim, 100)).unwrap());
        let reader = PostgresStore::open(url, table).expect("the old index during the build");
        assert_eq!((reader.settings(), reader.count().unwrap()), (&old, 6));
    }
    assert_eq!(queue.finish().unwrap(), Finish::Done);
    let store = PostgresStore::open(url, table).expect("the new index");
    assert_eq!(
        (store.settings(), store.precision(), store.count().unwrap()),
        (&new, PgPrecision::Bit, 5)
    );
    assert_eq!(store.search(&corpus.vectors[103..104], 1, None).unwrap()[0][0].id, "q3");

    PostgresStore::remove(url, table).expect("remove");
    assert_eq!(queue.build().unwrap(), None, "removing the index left its build");
}
