//! Golden tests: sembase's embeddings against reference vectors made by
//! `tools/make_golden.py` (sentence-transformers; transformers for the XLM-R
//! model) on 320 real sentences. Every sentence must reach cosine >= 0.9999 and
//! see exactly the reference's token count.
//!
//! The models come from the store (`sembase model pull NAME`, under
//! `$SEMBASE_HOME`); the sentences from `../shared/data` (or `$SEMBASE_DATA`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sembase_core::cross_encoder::tokenizer_gives_segments;
use sembase_core::kernels::int8_linear::Int8Kernel;
use sembase_core::tokenize::TextTokenizer;
use sembase_core::vectors::cosine;
use sembase_core::{EmbedOptions, Embedder, LoadOptions, LocalEmbedder, Truncation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

const MIN_COSINE: f32 = 0.9999;
/// int8 weights and activations against the f32 reference (the bound).
const MIN_INT8_COSINE: f32 = 0.99;

#[derive(Deserialize)]
struct SentenceList {
    sentences: Vec<SentenceLocator>,
}

#[derive(Deserialize)]
struct SentenceLocator {
    source: String,
    parts: Vec<Part>,
    sha256: String,
}

#[derive(Deserialize)]
struct Part {
    row: usize,
    field: String,
}

#[derive(Deserialize)]
struct Golden {
    prefix: String,
    max_seq_length: usize,
    token_counts: Vec<usize>,
    token_ids_head: Vec<Vec<u32>>,
    embeddings: Vec<Vec<f32>>,
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn data_root() -> PathBuf {
    std::env::var_os("SEMBASE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"))
}

/// The text of a file in the shared data.
fn read_shared(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the shared data must sit at ../shared beside the repository)",
            path.display()
        )
    })
}

/// The directory of `name` in the model store, which the test suite fills.
fn pulled_model(name: &str) -> PathBuf {
    let store = sembase_hub::Store::from_env().unwrap();
    store.resolve(name).unwrap_or_else(|e| {
        panic!("{e}\n(the test suite pulls it: run `make test`, or `sembase model pull {name}`)")
    })
}

/// Rows of a data file as field maps: TSV with a header line, or JSONL.
fn load_rows(path: &Path) -> Vec<HashMap<String, String>> {
    let text = read_shared(path);
    if path.extension().is_some_and(|e| e == "jsonl") {
        return text
            .lines()
            .map(|line| {
                let obj: HashMap<String, serde_json::Value> = serde_json::from_str(line).unwrap();
                obj.into_iter()
                    .map(|(k, v)| {
                        (k, v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
                    })
                    .collect()
            })
            .collect();
    }
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header line").split('\t').collect();
    lines
        .map(|line| {
            header.iter().map(|h| h.to_string()).zip(line.split('\t').map(str::to_string)).collect()
        })
        .collect()
}

/// The 320 sentences, rebuilt from their locators and checked against their digests.
fn sentences() -> Vec<String> {
    let list: SentenceList =
        serde_json::from_slice(&std::fs::read(golden_dir().join("sentences.json")).unwrap())
            .unwrap();
    let mut files: HashMap<String, Vec<HashMap<String, String>>> = HashMap::new();
    list.sentences
        .iter()
        .map(|loc| {
            let rows = files
                .entry(loc.source.clone())
                .or_insert_with(|| load_rows(&data_root().join(&loc.source)));
            let text = loc
                .parts
                .iter()
                .map(|p| rows[p.row].get(&p.field).cloned().unwrap_or_default())
                .filter(|v| !v.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let digest: String =
                Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                digest,
                loc.sha256,
                "{} rows {:?}: the shared data differs from the fixture's",
                loc.source,
                loc.parts.iter().map(|p| p.row).collect::<Vec<_>>()
            );
            text
        })
        .collect()
}

/// Runs the golden sentences through `name` (int8 weights when `int8` names a kernel)
/// and asserts every vector reaches `min_cosine` to the reference.
fn check_model(name: &str, int8: Option<Int8Kernel>, min_cosine: f32) {
    let golden: Golden =
        serde_json::from_slice(&std::fs::read(golden_dir().join(format!("{name}.json"))).unwrap())
            .unwrap();
    let dir = pulled_model(name);
    // The device under test: SEMBASE_DEVICE (the CPU unless set; bench/gpu_check.sh runs these on CUDA).
    let device = sembase_core::device::from_env().expect("SEMBASE_DEVICE names a usable device");
    let model =
        LocalEmbedder::load(&dir, name, LoadOptions { device, int8, ..LoadOptions::default() })
            .unwrap();
    assert_eq!(model.max_tokens(), golden.max_seq_length, "token limit");
    let texts = sentences();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let prefix = (!golden.prefix.is_empty()).then(|| golden.prefix.clone());
    let prefixed: Vec<String> = texts.iter().map(|t| format!("{}{t}", golden.prefix)).collect();
    let head: Vec<&str> =
        prefixed.iter().take(golden.token_ids_head.len()).map(String::as_str).collect();
    let ours = model.tokenizer().encode_batch(&head, Truncation::Truncate).unwrap();
    for (i, (ours, reference)) in ours.iter().zip(&golden.token_ids_head).enumerate() {
        assert_eq!(ours, reference, "{name}: token ids of sentence {i}");
    }
    let embeddings = model.embed(&refs, &EmbedOptions { prefix, ..Default::default() }).unwrap();
    assert_eq!(embeddings.token_counts, golden.token_counts, "{name}: token counts");
    let mut worst = (1.0f32, 0usize);
    for (i, (ours, reference)) in embeddings.vectors.iter().zip(&golden.embeddings).enumerate() {
        let c = cosine(ours, reference);
        if c < worst.0 {
            worst = (c, i);
        }
    }
    eprintln!("{name} (int8: {int8:?}): lowest cosine {:.7} (sentence {})", worst.0, worst.1);
    assert!(
        worst.0 >= min_cosine,
        "{name}: sentence {} has cosine {} < {min_cosine}: {:?}",
        worst.1,
        worst.0,
        texts[worst.1]
    );
}

#[test]
fn all_minilm_l6_v2_matches_sentence_transformers() {
    check_model("all-minilm-l6-v2", None, MIN_COSINE);
}

#[test]
fn all_mpnet_base_v2_matches_sentence_transformers() {
    check_model("all-mpnet-base-v2", None, MIN_COSINE);
}

#[test]
fn multilingual_e5_small_matches_transformers_xlm_roberta() {
    check_model("multilingual-e5-small", None, MIN_COSINE);
}

/// int8 weights (`--quantize int8`) with this CPU's fastest kernel: every golden
/// sentence within cosine 0.99 of sentence-transformers' f32 vector.
#[test]
fn int8_quantised_models_stay_close() {
    for name in ["all-minilm-l6-v2", "all-mpnet-base-v2", "multilingual-e5-small"] {
        check_model(name, Some(Int8Kernel::detect()), MIN_INT8_COSINE);
    }
}

/// The kernels a CPU without AVX-512 VNNI takes (AVX2, and the portable loop for other
/// architectures), forced here: the same bound holds.
#[test]
fn int8_fallback_kernels_stay_close() {
    check_model(
        "all-minilm-l6-v2",
        Some(Int8Kernel::Avx2).filter(|k| k.supported()).or(Some(Int8Kernel::Portable)),
        MIN_INT8_COSINE,
    );
}

/// Texts are cut the way the tokenizers library cuts them (the text's own tokens, leaving
/// room for the special tokens): every golden sentence, at a 16-token limit where many
/// are cut, gives the ids of the library's own truncation, and a refused text reports
/// its untruncated length.
#[test]
fn truncation_matches_the_tokenizers_library() {
    const LIMIT: usize = 16;
    let texts = sentences();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for name in ["all-minilm-l6-v2", "all-mpnet-base-v2", "multilingual-e5-small"] {
        let dir = pulled_model(name);
        let path = dir.join("tokenizer.json");
        let ours = sembase_core::tokenize::TextTokenizer::load(&path, LIMIT).unwrap();
        let mut reference = tokenizers::Tokenizer::from_file(&path).unwrap();
        reference.with_padding(None);
        reference.with_truncation(None).unwrap();
        let whole: Vec<usize> =
            refs.iter().map(|t| reference.encode(*t, true).unwrap().len()).collect();
        reference
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: LIMIT,
                ..Default::default()
            }))
            .unwrap();
        let cut = ours.encode_batch(&refs, Truncation::Truncate).unwrap();
        let mut was_cut = 0;
        for (i, (ours, text)) in cut.iter().zip(&refs).enumerate() {
            let expected = reference.encode(*text, true).unwrap();
            assert_eq!(
                ours.as_slice(),
                expected.get_ids(),
                "{name}: truncated ids of sentence {i}"
            );
            was_cut += usize::from(whole[i] > LIMIT);
        }
        assert!(
            was_cut > refs.len() / 3,
            "{name}: only {was_cut} sentences were long enough to cut"
        );
        for (i, text) in refs.iter().enumerate().filter(|(i, _)| whole[*i] > LIMIT).take(20) {
            let refused = ours.encode_batch(&[text], Truncation::Refuse);
            assert!(
                matches!(refused, Err(sembase_core::Error::InputTooLong { index: 0, tokens, limit: LIMIT }) if tokens == whole[i]),
                "{name}: sentence {i} ({} tokens): {refused:?}",
                whole[i]
            );
            assert_eq!(
                ours.encode_full(text).unwrap().len(),
                whole[i],
                "{name}: untruncated length of sentence {i}"
            );
        }
    }
}

/// Lines of a text file in the shared data, `every`-th line from the first.
/// `pairs.json`: transformers' tokenization of (query, document) pairs, as a
/// sentence-transformers CrossEncoder tokenizes them (see tools/make_pair_golden.py).
#[derive(Deserialize)]
struct PairGolden {
    max_length: usize,
    pairs: Vec<(usize, usize)>,
    models: HashMap<String, PairModel>,
}

#[derive(Deserialize)]
struct PairModel {
    input_ids: Vec<Vec<u32>>,
    token_type_ids: Option<Vec<Vec<u32>>>,
}

/// Pairs are joined, cut (longest first) and given segment ids exactly as transformers
/// does for real tokenizers (WordPiece, Unigram, MPNet's), and sembase gives segment
/// ids to the models whose tokenizer class returns them, and only to those.
#[test]
fn pair_tokens_match_transformers() {
    let golden: PairGolden =
        serde_json::from_slice(&std::fs::read(golden_dir().join("pairs.json")).unwrap()).unwrap();
    let texts = sentences();
    let pairs: Vec<(&str, &str)> =
        golden.pairs.iter().map(|&(a, b)| (texts[a].as_str(), texts[b].as_str())).collect();
    for (name, expected) in &golden.models {
        let dir = pulled_model(name);
        let tokenizer =
            TextTokenizer::load(&dir.join("tokenizer.json"), golden.max_length).unwrap();
        let encoded = tokenizer.encode_pairs(&pairs, Truncation::Truncate).unwrap();
        for (i, (pair, ids)) in encoded.iter().zip(&expected.input_ids).enumerate() {
            assert_eq!(&pair.ids, ids, "{name}: ids of pair {i}");
            if let Some(types) = &expected.token_type_ids {
                assert_eq!(&pair.segments, &types[i], "{name}: segment ids of pair {i}");
            }
        }
        assert_eq!(
            tokenizer_gives_segments(&dir).unwrap(),
            expected.token_type_ids.is_some(),
            "{name}: whether the model is given segment ids"
        );
        let refused = tokenizer.encode_pairs(&pairs, Truncation::Refuse);
        let longest = expected.input_ids.iter().map(Vec::len).max().unwrap();
        assert_eq!(longest, golden.max_length, "the fixture cuts some pairs");
        assert!(matches!(refused, Err(sembase_core::Error::InputTooLong { .. })), "{name}");
    }
}

fn data_lines(file: &str, every: usize) -> Vec<String> {
    read_shared(&data_root().join(file)).lines().step_by(every).map(str::to_string).collect()
}

/// XLM-R's Unigram vocabulary runs on sembase's compact model: on English and Chinese
/// text, MS MARCO passages and odd inputs (unknown characters, control characters,
/// long runs, mixed scripts) it gives exactly the tokenizers library's ids.
#[test]
fn compact_unigram_gives_the_library_ids() {
    let name = "multilingual-e5-small";
    let dir = pulled_model(name);
    let path = dir.join("tokenizer.json");
    let ours = sembase_core::tokenize::TextTokenizer::load(&path, usize::MAX).unwrap();
    let mut reference = tokenizers::Tokenizer::from_file(&path).unwrap();
    reference.with_padding(None);
    reference.with_truncation(None).unwrap();
    let mut texts = data_lines("en/corpus/sentences.txt", 8);
    texts.extend(data_lines("zh/corpus/news-1998.txt", 2));
    texts.extend(data_lines("zh/corpus/atec-questions.txt", 8));
    texts.extend(
        load_rows(&data_root().join("en/retrieval/msmarco-5k/corpus.jsonl"))
            .into_iter()
            .step_by(5)
            .map(|row| row["text"].clone()),
    );
    let odd = [
        "",
        " ",
        "\t\n",
        "😀🙈 emoji",
        "𠀀𠀁𪚥 rare CJK",
        "a\u{0}b\u{7}c",
        "ｆｕｌｌｗｉｄｔｈ １２３",
        "ééééééééééééééééééééééééé",
        "Привет, мир",
        "مرحبا بالعالم",
        "<unk> <s> </s>",
        "x\u{200b}y",
    ];
    texts.extend(odd.map(String::from));
    texts.push("ab".repeat(3000));
    for (i, text) in texts.iter().enumerate() {
        let expected = reference.encode(text.as_str(), true).unwrap();
        assert_eq!(ours.encode_full(text).unwrap(), expected.get_ids(), "text {i}: {text:?}");
    }
    assert!(texts.len() > 20_000, "only {} texts", texts.len());
}
