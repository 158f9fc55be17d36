//! The flat and ann stores against a brute-force model of the same writes:
//! upserts, replacements, deletes, filters, reopening, precisions, locking.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sembase_index::graph::Graph;
use sembase_index::manifest::Manifest;
use sembase_index::{
    Access, AnnParams, Document, Filter, Index, IndexError, IndexSettings, Metadata, Metric,
    ModelIdentity, Precision, StoreSpec,
};
use serde_json::json;

const DIM: usize = 12;

fn settings() -> IndexSettings {
    IndexSettings {
        model: ModelIdentity { name: "test-model".into(), fingerprint: "f00d".into() },
        dimensions: DIM,
        query_prefix: Some("query: ".into()),
        document_prefix: Some("passage: ".into()),
        metric: Metric::Cosine,
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sembase-stores-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Deterministic pseudo-random unit vectors.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> Vec<f32> {
        let mut v: Vec<f32> = (0..DIM)
            .map(|_| {
                self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((self.0 >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }
}

fn doc(id: usize, vector: Vec<f32>, version: usize) -> Document {
    let mut metadata = Metadata::new();
    metadata.insert("group".into(), json!(id % 3));
    Document { id: format!("d{id:05}"), vector, text: format!("text {id} v{version}"), metadata }
}

/// What the index should hold: id -> document.
#[derive(Default)]
struct Model(BTreeMap<String, Document>);

impl Model {
    fn upsert(&mut self, docs: &[Document]) {
        for d in docs {
            self.0.insert(d.id.clone(), d.clone());
        }
    }

    fn delete(&mut self, ids: &[String]) {
        for id in ids {
            self.0.remove(id);
        }
    }

    /// Exact ids, best first, larger id first on ties.
    fn top(&self, q: &[f32], k: usize, filter: Option<&Filter>) -> Vec<String> {
        let mut all: Vec<(f32, &str)> = self
            .0
            .values()
            .filter(|d| filter.is_none_or(|f| f.matches(&d.metadata)))
            .map(|d| (sembase_index::exact::dot(q, &d.vector), d.id.as_str()))
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(a.1)));
        all.into_iter().take(k).map(|(_, id)| id.to_string()).collect()
    }
}

/// Runs the same writes on an index and the model.
fn write_history(index: &mut Index, model: &mut Model, rng: &mut Rng) {
    for batch in 0..3 {
        let docs: Vec<Document> =
            (batch * 2000..(batch + 1) * 2000).map(|i| doc(i, rng.unit(), 0)).collect();
        index.store_mut().upsert(&docs).unwrap();
        model.upsert(&docs);
    }
    let replaced: Vec<Document> = (0..6000).step_by(11).map(|i| doc(i, rng.unit(), 1)).collect();
    index.store_mut().upsert(&replaced).unwrap();
    model.upsert(&replaced);
    let gone: Vec<String> =
        (0..6000).step_by(17).map(|i| format!("d{i:05}")).chain(["missing".to_string()]).collect();
    let removed = index.store_mut().delete(&gone).unwrap();
    model.delete(&gone);
    assert_eq!(removed, gone.len() - 1, "unknown ids are not counted");
}

fn ids(hits: &[sembase_index::Hit]) -> Vec<String> {
    hits.iter().map(|h| h.id.clone()).collect()
}

fn recall(got: &[String], want: &[String]) -> f64 {
    got.iter().filter(|id| want.contains(id)).count() as f64 / want.len().max(1) as f64
}

#[test]
fn flat_is_exact_and_ann_close_after_upserts_replacements_and_deletes() {
    let mut rng = Rng(42);
    let queries: Vec<Vec<f32>> = (0..40).map(|_| rng.unit()).collect();
    for spec in [
        StoreSpec::Flat { precision: Precision::F32 },
        StoreSpec::Ann { precision: Precision::F32, params: AnnParams::default() },
    ] {
        let dir = temp_dir(spec.kind());
        let mut index = Index::create(&dir, settings(), spec.clone()).unwrap();
        let mut model = Model::default();
        write_history(&mut index, &mut model, &mut Rng(7));
        assert_eq!(index.store().count().unwrap(), model.0.len());
        if spec.kind() == "ann" {
            assert!(
                Manifest::read(&dir).unwrap().graph.is_some(),
                "6000 documents should have a graph"
            );
        }
        let results = index.store().search(&queries, 10, None).unwrap();
        let mut total = 0.0;
        for (q, hits) in queries.iter().zip(&results) {
            let want = model.top(q, 10, None);
            for h in hits {
                let stored = &model.0[&h.id];
                assert_eq!(h.text, stored.text, "{}: hit text is the current version", spec.kind());
                assert!((h.score - sembase_index::exact::dot(q, &stored.vector)).abs() < 1e-4);
            }
            total += recall(&ids(hits), &want);
            if spec.kind() == "flat" {
                assert_eq!(ids(hits), want);
            }
        }
        let mean = total / queries.len() as f64;
        assert!(mean >= 0.95, "{} recall@10 {mean}", spec.kind());

        // Reopening read-only gives the same answers.
        drop(index);
        let reopened = Index::open(&dir, Access::Read).unwrap();
        assert_eq!(reopened.store().count().unwrap(), model.0.len());
        let again = reopened.store().search(&queries, 10, None).unwrap();
        assert_eq!(
            again.iter().map(|h| ids(h)).collect::<Vec<_>>(),
            results.iter().map(|h| ids(h)).collect::<Vec<_>>()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn filters_keep_only_matching_documents() {
    let mut rng = Rng(3);
    let queries: Vec<Vec<f32>> = (0..10).map(|_| rng.unit()).collect();
    let filter = Filter::new(json!({"group": 2}).as_object().unwrap().clone()).unwrap();
    for spec in [
        StoreSpec::Flat { precision: Precision::F32 },
        StoreSpec::Ann { precision: Precision::F32, params: AnnParams::default() },
    ] {
        let dir = temp_dir(&format!("filter-{}", spec.kind()));
        let mut index = Index::create(&dir, settings(), spec.clone()).unwrap();
        let mut model = Model::default();
        write_history(&mut index, &mut model, &mut Rng(9));
        for (q, hits) in
            queries.iter().zip(index.store().search(&queries, 10, Some(&filter)).unwrap())
        {
            assert_eq!(hits.len(), 10);
            assert!(hits.iter().all(|h| h.metadata["group"] == 2), "{}", spec.kind());
            let want = model.top(q, 10, Some(&filter));
            assert!(recall(&ids(&hits), &want) >= 0.8, "{}", spec.kind());
            if spec.kind() == "flat" {
                assert_eq!(ids(&hits), want);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn lower_precisions_stay_close_to_exact() {
    let mut rng = Rng(5);
    let docs: Vec<Document> = (0..3000).map(|i| doc(i, rng.unit(), 0)).collect();
    let queries: Vec<Vec<f32>> = (0..30).map(|_| rng.unit()).collect();
    let mut model = Model::default();
    model.upsert(&docs);
    for precision in [Precision::F16, Precision::Int8] {
        let dir = temp_dir(precision.name());
        let mut index = Index::create(&dir, settings(), StoreSpec::Flat { precision }).unwrap();
        index.store_mut().upsert(&docs).unwrap();
        let hits = index.store().search(&queries, 10, None).unwrap();
        let mean: f64 = queries
            .iter()
            .zip(&hits)
            .map(|(q, h)| recall(&ids(h), &model.top(q, 10, None)))
            .sum::<f64>()
            / 30.0;
        assert!(mean >= 0.9, "{precision} recall@10 {mean}");
        let size: u64 =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert!(size < (3000 * DIM * 4) as u64 + 3000 * 64, "{precision}: {size} bytes");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn one_writer_at_a_time_and_readers_cannot_write() {
    let dir = temp_dir("lock");
    let mut writer =
        Index::create(&dir, settings(), StoreSpec::Flat { precision: Precision::F32 }).unwrap();
    let err = Index::open(&dir, Access::Write).unwrap_err();
    assert!(matches!(err, IndexError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("locked by another writer"), "{err}");
    let mut reader = Index::open(&dir, Access::Read).unwrap();
    assert!(reader.store_mut().upsert(&[doc(1, Rng(1).unit(), 0)]).is_err());
    writer.store_mut().upsert(&[doc(1, Rng(1).unit(), 0)]).unwrap();
    drop(writer);
    Index::open(&dir, Access::Write).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn many_small_writes_are_merged_and_stay_correct() {
    let dir = temp_dir("compact");
    let mut index =
        Index::create(&dir, settings(), StoreSpec::Flat { precision: Precision::F32 }).unwrap();
    let mut model = Model::default();
    let mut rng = Rng(11);
    for i in 0..40 {
        let docs = vec![doc(i % 25, rng.unit(), i)];
        index.store_mut().upsert(&docs).unwrap();
        model.upsert(&docs);
        if i % 7 == 6 {
            let gone = vec![format!("d{:05}", (i * 3) % 25)];
            index.store_mut().delete(&gone).unwrap();
            model.delete(&gone);
        }
    }
    let manifest = Manifest::read(&dir).unwrap();
    assert!(manifest.segments.len() <= 16, "{} segments", manifest.segments.len());
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("seg-"))
        .count();
    assert_eq!(files, manifest.segments.len(), "merged segments are removed");
    drop(index);
    let index = Index::open(&dir, Access::Read).unwrap();
    assert_eq!(index.store().count().unwrap(), model.0.len());
    let q = rng.unit();
    assert_eq!(
        ids(&index.store().search(std::slice::from_ref(&q), 100, None).unwrap()[0]),
        model.top(&q, 100, None)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_widths_and_duplicate_ids_are_refused_without_writing() {
    let dir = temp_dir("invalid");
    let mut index =
        Index::create(&dir, settings(), StoreSpec::Flat { precision: Precision::F32 }).unwrap();
    let generation = Manifest::read(&dir).unwrap().generation;
    assert!(index
        .store_mut()
        .upsert(&[Document { vector: vec![1.0; 3], ..doc(1, vec![], 0) }])
        .is_err());
    assert!(index
        .store_mut()
        .upsert(&[doc(1, Rng(1).unit(), 0), doc(1, Rng(2).unit(), 0)])
        .is_err());
    assert!(index.store().search(&[vec![1.0; 5]], 3, None).is_err());
    assert_eq!(Manifest::read(&dir).unwrap().generation, generation);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn queries_from_another_model_are_refused() {
    let other = ModelIdentity { name: "test-model".into(), fingerprint: "beef".into() };
    let err = settings().check_model(&other).unwrap_err();
    assert!(err.to_string().contains("not \"test-model\""), "{err}");
    settings()
        .check_model(&ModelIdentity { name: "renamed".into(), fingerprint: "f00d".into() })
        .unwrap();
}

#[test]
fn ann_finds_every_live_document_after_interleaved_writes() {
    let dir = temp_dir("interleaved");
    let params = AnnParams { delta_limit: 8, ..AnnParams::default() };
    let mut index =
        Index::create(&dir, settings(), StoreSpec::Ann { precision: Precision::F32, params })
            .unwrap();
    let mut model = Model::default();
    let mut rng = Rng(21);
    for round in 0..12 {
        let docs: Vec<Document> =
            (0..7).map(|i| doc((round * 5 + i) % 50, rng.unit(), round)).collect();
        index.store_mut().upsert(&docs).unwrap();
        model.upsert(&docs);
        let gone = vec![format!("d{:05}", (round * 13) % 50)];
        index.store_mut().delete(&gone).unwrap();
        model.delete(&gone);
    }
    assert!(Manifest::read(&dir).unwrap().graph.is_some());
    drop(index);
    let index = Index::open(&dir, Access::Read).unwrap();
    for d in model.0.values() {
        let hits = index.store().search(std::slice::from_ref(&d.vector), 1, None).unwrap();
        assert_eq!(hits[0][0].id, d.id, "every live document is its own nearest neighbour");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Regression: usearch's concurrent insertion could strand nodes that search
/// never reaches (usearch issue #735), most often among near-duplicate vectors
/// such as embeddings of similar sentences.
#[test]
fn every_vector_added_to_a_graph_is_reachable() {
    let mut rng = Rng(5);
    let centre = rng.unit();
    let items: Vec<(u64, Vec<f32>)> = (0..3000u64)
        .map(|key| {
            let mut v: Vec<f32> = centre.iter().zip(rng.unit()).map(|(c, n)| c + 0.3 * n).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            (key, v)
        })
        .collect();
    let graph = Graph::new(DIM, Precision::F32, AnnParams::default()).unwrap();
    graph.add_all(&items).unwrap();
    let unreachable: Vec<u64> = items
        .iter()
        .filter(|(key, v)| graph.search_all(v, 1).unwrap()[0].0 != *key)
        .map(|(key, _)| *key)
        .collect();
    assert!(
        unreachable.is_empty(),
        "{} of {} vectors are not their own nearest neighbour: {:?}",
        unreachable.len(),
        items.len(),
        &unreachable[..unreachable.len().min(10)]
    );
}

/// index.json can hold a database password (a postgres store's URL): only its
/// owner may read it. Every store kind writes it through the same function.
#[cfg(unix)]
#[test]
fn index_json_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("mode");
    Index::create(&dir, settings(), StoreSpec::Flat { precision: Precision::F32 }).unwrap();
    let mode = std::fs::metadata(dir.join("index.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    std::fs::remove_dir_all(&dir).unwrap();
}
