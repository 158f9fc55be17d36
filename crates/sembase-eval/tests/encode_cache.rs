//! The encoder with the on-disk cache, and whole tasks run end to end with a
//! small deterministic embedder.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sembase_core::{EmbedOptions, Embedder, Embeddings};
use sembase_eval::cache::EmbeddingCache;
use sembase_eval::encode::{Encoder, EvalModel, Silent};
use sembase_eval::evaluate::{evaluate, Settings};
use sembase_eval::tasks::{Task, TaskSpec};

/// Counts letters a..h of the (prefixed) text: similar texts get similar vectors.
struct Letters {
    calls: Arc<AtomicUsize>,
    texts: Arc<AtomicUsize>,
}

impl Embedder for Letters {
    fn name(&self) -> &str {
        "letters"
    }
    fn dimension(&self) -> usize {
        8
    }
    fn max_tokens(&self) -> usize {
        512
    }
    fn embed(&self, texts: &[&str], options: &EmbedOptions) -> sembase_core::Result<Embeddings> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.texts.fetch_add(texts.len(), Ordering::SeqCst);
        let prefix = options.prefix.as_deref().unwrap_or("");
        let vectors = texts
            .iter()
            .map(|t| {
                let mut v = vec![0.01f32; 8];
                for c in format!("{prefix}{t}").chars() {
                    if ('a'..='h').contains(&c) {
                        v[c as usize - 'a' as usize] += 1.0;
                    }
                }
                if let Some(d) = options.dimensions {
                    sembase_core::vectors::truncate_dimensions(&mut v, d);
                }
                v
            })
            .collect::<Vec<_>>();
        Ok(Embeddings { token_counts: vec![1; vectors.len()], vectors })
    }
    fn embed_tokens(&self, _: &[Vec<u32>], _: &EmbedOptions) -> sembase_core::Result<Embeddings> {
        unimplemented!()
    }
    fn tokenize(&self, _: &str) -> sembase_core::Result<Vec<u32>> {
        unimplemented!()
    }
}

fn model(truncate_locally: bool) -> (EvalModel, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (calls, texts) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let embedder = Letters { calls: calls.clone(), texts: texts.clone() };
    (
        EvalModel { embedder: Box::new(embedder), cache_id: "letters-v1".into(), truncate_locally },
        calls,
        texts,
    )
}

fn scratch(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("sembase-eval-encode-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_second_run_skips_the_encoder() {
    let root = scratch("second");
    let cache = EmbeddingCache::at(root.join("cache"));
    let texts = ["abc", "bad", "abc", "cafe"];
    let (m, calls, embedded) = model(true);
    let first = Encoder::new(&m, Some(&cache), &Silent).encode(&texts, Some("q "), None).unwrap();
    assert_eq!(embedded.load(Ordering::SeqCst), 3, "repeated texts are embedded once");
    assert_eq!(first[0], first[2]);

    let (m2, calls2, _) = model(true);
    let encoder = Encoder::new(&m2, Some(&cache), &Silent);
    let second = encoder.encode(&texts, Some("q "), None).unwrap();
    assert_eq!(second, first);
    assert_eq!(calls2.load(Ordering::SeqCst), 0, "everything came from the cache");
    assert_eq!(encoder.counts(), (0, 3));

    // Another prefix is another namespace; one new text only is embedded.
    let (m3, _, embedded3) = model(true);
    Encoder::new(&m3, Some(&cache), &Silent).encode(&["abc"], Some("p "), None).unwrap();
    Encoder::new(&m3, Some(&cache), &Silent).encode(&["abc", "dead"], Some("q "), None).unwrap();
    assert_eq!(embedded3.load(Ordering::SeqCst), 2);
    assert!(calls.load(Ordering::SeqCst) >= 1);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn dimensions_truncate_locally_or_are_sent() {
    let (local, _, local_texts) = model(true);
    let encoder = Encoder::new(&local, None, &Silent);
    let full = encoder.encode(&["abcd"], None, None).unwrap();
    let narrow = encoder.encode(&["abcd"], None, Some(3)).unwrap();
    let mut want = full[0].clone();
    sembase_core::vectors::truncate_dimensions(&mut want, 3);
    assert_eq!(narrow[0], want);
    assert_eq!(local_texts.load(Ordering::SeqCst), 2);

    let (remote_like, _, _) = model(false);
    let sent = Encoder::new(&remote_like, None, &Silent).encode(&["abcd"], None, Some(3)).unwrap();
    assert_eq!(sent[0], want);
    let err = encoder.encode(&["x"], None, Some(9)).unwrap_err().to_string();
    assert!(err.contains("dimensions must be between 1 and 8, got 9"), "{err}");
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn tasks_run_end_to_end() {
    let dir = scratch("tasks");
    let sts = dir.join("sts.tsv");
    write(
        &sts,
        "sentence1\tsentence2\tscore\nabc\tabc\t5\nabc\tabd\t3\nabc\tfgh\t0\naaa\taab\t4\n",
    );
    let pairs = dir.join("pairs.tsv");
    write(
        &pairs,
        "sentence1\tsentence2\tlabel\nabc\tabc\t1\nabc\tfgh\t0\nbad\tdab\t1\nhhh\taaa\t0\n",
    );
    let beir = dir.join("beir");
    write(
        &beir.join("corpus.jsonl"),
        "{\"_id\":\"d1\",\"title\":\"\",\"text\":\"aaaa\"}\n{\"_id\":\"d2\",\"title\":\"bb\",\"text\":\"bb\"}\n{\"_id\":\"d3\",\"title\":\"\",\"text\":\"cccc\"}\n",
    );
    write(&beir.join("queries.jsonl"), "{\"_id\":\"q1\",\"text\":\"aa\"}\n{\"_id\":\"q2\",\"text\":\"bbb\"}\n{\"_id\":\"q3\",\"text\":\"hh\"}\n");
    write(
        &beir.join("qrels/test.tsv"),
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td9\t1\n",
    );

    let (m, _, _) = model(true);
    let encoder = Encoder::new(&m, None, &Silent);
    let settings = Settings::default();

    let task = Task::load(&format!("sts:{}", sts.display()).parse::<TaskSpec>().unwrap()).unwrap();
    let r = evaluate(&encoder, &task, &settings).unwrap();
    assert_eq!((r.kind.as_str(), r.dimensions, r.model.as_str()), ("sts", 8, "letters"));
    assert!(r.metrics.get("spearman").unwrap() > 90.0, "{:?}", r.metrics);

    let task =
        Task::load(&format!("pairs:{}", pairs.display()).parse::<TaskSpec>().unwrap()).unwrap();
    let r = evaluate(&encoder, &task, &Settings { dimensions: Some(4), ..Settings::default() })
        .unwrap();
    assert_eq!(r.dimensions, 4);
    assert_eq!(
        r.metrics.0.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["spearman", "accuracy", "f1", "ap"]
    );
    assert_eq!(r.metrics.get("accuracy"), Some(100.0));

    let task =
        Task::load(&format!("retrieval:{}", beir.display()).parse::<TaskSpec>().unwrap()).unwrap();
    assert_eq!(task.notes().len(), 2, "{:?}", task.notes());
    let r = evaluate(&encoder, &task, &settings).unwrap();
    // q1 finds d1 first (recall 1); q2 finds d2 first but d9 is not in the corpus (recall 1/2).
    assert_eq!(r.metrics.get("recall@1"), Some(75.0));
    assert_eq!(r.metrics.get("mrr@10"), Some(100.0));
    std::fs::remove_dir_all(&dir).unwrap();
}
