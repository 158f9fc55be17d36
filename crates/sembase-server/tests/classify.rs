//! `POST /v1/classify`: task heads over the served models. On hand-made heads over the
//! fake model: prefixes, `dimensions`, shared forward passes, errors, start-up refusal,
//! OpenAPI. On all-minilm-l6-v2 (needs `sembase model pull all-minilm-l6-v2`): heads
//! trained on real sentences answer over HTTP exactly as the heads library does.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{FakeModel, Reply, TestServer};
use sembase_core::{EmbedOptions, Embedder, LoadOptions, LocalEmbedder};
use sembase_heads::{
    parse_tsv, train_head, BaseModel, ClassWeight, Classifier, Head, Kind, Prediction, TrainConfig,
};
use sembase_server::{Attachments, HeadSpec, ModelSpec, Server, ServerConfig, ServerError};
use serde_json::{json, Value};

/// A head over `model` with fixed, varied weights.
fn hand_made(
    model: &str,
    dim: usize,
    labels: &[&str],
    prefix: Option<&str>,
    dimensions: Option<usize>,
) -> Head {
    let classes = labels.len();
    let width = dimensions.unwrap_or(dim);
    let flat: Vec<f64> = (0..(if classes == 2 { 1 } else { classes }) * (width + 1))
        .map(|i| (i as f64 * 0.71).sin() * 3.0)
        .collect();
    let base = BaseModel {
        name: model.into(),
        dir_name: format!("{model}-dir"),
        config_hash: "0123456789abcdef".into(),
        dimensions: width,
        requested_dimensions: dimensions,
        prefix: prefix.map(str::to_string),
        normalized: true,
    };
    let labels = labels.iter().map(|l| l.to_string()).collect();
    Head::new(
        Classifier::from_flat(Kind::Logistic, width, classes, &flat),
        labels,
        1.0,
        ClassWeight::Balanced,
        base,
        None,
    )
}

fn heads(specs: Vec<(&str, Head)>) -> Attachments {
    Attachments {
        heads: specs.into_iter().map(|(name, head)| HeadSpec::new(name, head)).collect(),
        ..Attachments::default()
    }
}

/// Every head's answer for input `index` of a classify reply: (label, probabilities in label order).
fn answer(reply: &Value, index: usize, head: &str, labels: &[String]) -> (String, Vec<f32>) {
    let item = &reply["data"][index];
    assert_eq!(item["index"], index, "{reply}");
    assert_eq!(item["object"], "classification");
    let out = &item["heads"][head];
    let probabilities =
        out["probabilities"].as_object().unwrap_or_else(|| panic!("no head {head} in {item}"));
    assert_eq!(probabilities.len(), labels.len(), "{out}");
    let values = labels.iter().map(|l| probabilities[l].as_f64().unwrap() as f32).collect();
    (out["label"].as_str().unwrap().to_string(), values)
}

fn assert_same(
    reply: &Value,
    head_name: &str,
    head: &Head,
    expected: &[Prediction],
    tolerance: f32,
) {
    for (i, p) in expected.iter().enumerate() {
        let (label, probabilities) = answer(reply, i, head_name, head.labels());
        assert_eq!(label, p.label, "input {i}, head {head_name}");
        for (got, want) in probabilities.iter().zip(&p.probabilities) {
            assert!(
                (got - want).abs() <= tolerance,
                "input {i}, head {head_name}: {probabilities:?} != {:?}",
                p.probabilities
            );
        }
    }
}

#[test]
fn heads_share_a_pass_per_prefix_and_cut_dimensions_as_trained() {
    let model = FakeModel::new("fake", 16, 64);
    let plain = hand_made("fake", 16, &["a", "b", "c"], None, None);
    let short = hand_made("fake", 16, &["no", "yes"], None, Some(8));
    let query = hand_made("fake", 16, &["x", "y", "z"], Some("query: "), None);
    let server = TestServer::start_with(
        ServerConfig::default(),
        vec![ModelSpec::new(model.clone())],
        heads(vec![("plain", plain.clone()), ("short", short.clone()), ("query", query.clone())]),
    );
    let texts = ["the first text", "another one here", "x"];
    let expected = |head: &Head, prefix: &str, dims: Option<usize>| {
        let vectors: Vec<Vec<f32>> =
            texts.iter().map(|t| model.expected(&format!("{prefix}{t}"), dims)).collect();
        head.predict(&vectors).unwrap()
    };

    let before = model.inputs.load(std::sync::atomic::Ordering::SeqCst);
    let reply = server
        .post_json("/v1/classify", &json!({"input": texts, "heads": ["plain", "short", "query"]}));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"].as_array().unwrap().len(), 3);
    assert_same(&body, "plain", &plain, &expected(&plain, "", None), 1e-6);
    assert_same(&body, "short", &short, &expected(&short, "", Some(8)), 1e-6);
    assert_same(&body, "query", &query, &expected(&query, "query: ", None), 1e-6);
    // Two passes (no prefix; "query: "), each text once per pass.
    assert_eq!(model.inputs.load(std::sync::atomic::Ordering::SeqCst) - before, 2 * texts.len());
    let tokens: usize = texts
        .iter()
        .map(|t| FakeModel::ids(t).len() + FakeModel::ids(&format!("query: {t}")).len())
        .sum();
    assert_eq!(body["usage"], json!({"prompt_tokens": tokens, "total_tokens": tokens}));

    // Two heads on the same vectors: one pass; a repeated name counts once.
    let before = model.inputs.load(std::sync::atomic::Ordering::SeqCst);
    let reply = server
        .post_json("/v1/classify", &json!({"input": texts, "heads": ["short", "plain", "short"]}))
        .json();
    assert_eq!(model.inputs.load(std::sync::atomic::Ordering::SeqCst) - before, texts.len());
    assert_eq!(reply["data"][0]["heads"].as_object().unwrap().len(), 2);
    assert_eq!(
        server.metric("sembase_embedded_inputs_total{model=\"fake\"}"),
        Some(3.0 * texts.len() as f64)
    );

    // One string, one head name; no `heads`: every head.
    let reply = server.post_json("/v1/classify", &json!({"input": "x", "heads": "query"})).json();
    assert_eq!(reply["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        answer(&reply, 0, "query", query.labels()).0,
        expected(&query, "query: ", None)[2].label
    );
    let reply = server.post_json("/v1/classify", &json!({"input": ["x"]})).json();
    let mut names: Vec<&String> = reply["data"][0]["heads"].as_object().unwrap().keys().collect();
    names.sort();
    assert_eq!(names, ["plain", "query", "short"]);
}

#[test]
fn bad_requests_get_the_error_shape() {
    let model = FakeModel::new("fake", 16, 64);
    let config = ServerConfig { max_inputs: 3, ..ServerConfig::default() };
    let server = TestServer::start_with(
        config,
        vec![ModelSpec::new(model.clone())],
        heads(vec![("h", hand_made("fake", 16, &["a", "b"], None, None))]),
    );
    let post = |body: Value| server.post_json("/v1/classify", &body);
    let error = |reply: Reply, status: u16, param: &str, code: Option<&str>, context: &str| {
        reply.assert_error(status, "invalid_request_error", Some(param), code, context);
        reply.json()["error"]["message"].as_str().unwrap().to_string()
    };
    let m = error(
        post(json!({"input": "x", "heads": ["h", "nope"]})),
        404,
        "heads",
        Some("head_not_found"),
        "unknown head",
    );
    assert!(m.contains("`nope`") && m.contains("it serves: h"), "{m}");
    error(post(json!({"input": "x", "heads": []})), 400, "heads", None, "no heads");
    error(post(json!({"input": "x", "heads": 7})), 400, "heads", None, "heads type");
    error(post(json!({"input": ""})), 400, "input", None, "empty string");
    error(post(json!({"input": []})), 400, "input", None, "empty array");
    let m = error(post(json!({"input": ["a", ""]})), 400, "input", None, "empty item");
    assert_eq!(m, "input[1] is an empty string");
    error(post(json!({"input": [1, 2]})), 400, "input", None, "token ids");
    error(post(json!({"input": ["a", "b", "c", "d"]})), 400, "input", None, "too many");
    let reply = post(json!({"heads": "h"}));
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(reply.text().contains("missing field `input`"), "{}", reply.text());
    let reply = common::request(server.addr, "POST", "/v1/classify", &[], b"{\"input\": ");
    reply.assert_error(400, "invalid_request_error", None, Some("invalid_json"), "syntax");
    assert_eq!(
        model.calls.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no bad request reached the model"
    );

    let bare = TestServer::fake(ServerConfig::default(), &model);
    let m = error(
        bare.post_json("/v1/classify", &json!({"input": "x"})),
        404,
        "heads",
        Some("head_not_found"),
        "no heads served",
    );
    assert!(m.contains("serves no heads"), "{m}");

    let keyed = TestServer::start_with(
        ServerConfig { api_key: Some("k".into()), ..ServerConfig::default() },
        vec![ModelSpec::new(model.clone())],
        heads(vec![("h", hand_made("fake", 16, &["a", "b"], None, None))]),
    );
    keyed.post_json("/v1/classify", &json!({"input": "x"})).assert_error(
        401,
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
        "key",
    );
}

#[test]
fn a_head_that_does_not_fit_the_served_models_is_refused_at_start_up() {
    let refuse = |specs: Vec<(&str, Head)>| -> String {
        let server = Server::new(ServerConfig::default()).unwrap();
        let models = vec![
            ModelSpec::new(FakeModel::new("fake", 16, 64)),
            ModelSpec::new(FakeModel::new("other", 8, 64)),
        ];
        let error: ServerError = server.set_models_with(models, heads(specs)).unwrap_err();
        assert!(!server.is_ready(), "nothing is installed");
        let message = error.to_string();
        assert_eq!(message.lines().count(), 1, "{message}");
        message
    };
    assert_eq!(
        refuse(vec![("ok", hand_made("fake", 16, &["a", "b"], None, None)), ("zh", hand_made("multilingual-e5-small", 384, &["a", "b"], None, None))]),
        "head `zh` was trained on model `multilingual-e5-small`, which this server does not serve (it serves: fake, other)"
    );
    let m = refuse(vec![
        ("h", hand_made("fake", 16, &["a", "b"], None, None)),
        ("h", hand_made("other", 8, &["a", "b"], None, None)),
    ]);
    assert_eq!(m, "head `h`: two heads have this name; names must be unique");
    let m = refuse(vec![("wide", hand_made("other", 16, &["a", "b"], None, None))]);
    assert!(
        m.starts_with("head `wide`: it reads 16-dimensional vectors")
            && m.contains("model `other` (8 dimensions)"),
        "{m}"
    );
    let m = refuse(vec![("cut", hand_made("other", 16, &["a", "b"], None, Some(12)))]);
    assert!(m.starts_with("head `cut`: it reads 12-dimensional vectors"), "{m}");

    // A head names its model by the name it was loaded under, or by its directory's name.
    let server = Server::new(ServerConfig::default()).unwrap();
    let head = hand_made("all-minilm-l6-v2", 16, &["a", "b"], None, None);
    let model = FakeModel::new(&head.base_model().dir_name, 16, 64);
    server.set_models_with(vec![ModelSpec::new(model)], heads(vec![("h", head)])).unwrap();
    assert!(server.is_ready());
}

#[test]
fn openapi_describes_classify() {
    let server = TestServer::fake(ServerConfig::default(), &FakeModel::new("fake", 8, 16));
    let doc = server.get("/openapi.json").json();
    let op = &doc["paths"]["/v1/classify"]["post"];
    assert!(op.is_object(), "no POST /v1/classify");
    assert!(op["responses"]["404"].is_object());
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["ClassifyRequest"]["required"], json!(["input"]));
    assert!(schemas["ClassifyRequest"]["properties"]["heads"].is_object());
    assert_eq!(schemas["Strings"]["oneOf"].as_array().map(Vec::len), Some(2));
    for (schema, field) in [
        ("ClassifyResponse", "usage"),
        ("Classification", "heads"),
        ("HeadOutput", "probabilities"),
    ] {
        assert!(schemas[schema]["properties"][field].is_object(), "{schema}.{field}");
    }
}

/// The first `take` rows of each label of a classify set, after skipping `skip` of each.
fn rows_per_label(set: &str, skip: usize, take: usize) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/en/classify")
        .join(format!("{set}.tsv"));
    let content =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut out = String::from("text\tlabel\n");
    for line in content.lines().skip(1) {
        let label = line.rsplit('\t').next().unwrap().to_string();
        let n = seen.entry(label).or_default();
        *n += 1;
        if *n > skip && *n <= skip + take {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Trains a head on `set` (24 rows per label) with the given settings, saves and reloads it.
fn train(
    model: &LocalEmbedder,
    dir: &std::path::Path,
    set: &str,
    kind: Kind,
    dimensions: Option<usize>,
    out: &std::path::Path,
) -> Head {
    let data = parse_tsv(&rows_per_label(set, 0, 24), std::path::Path::new(set)).unwrap();
    let texts: Vec<&str> = data.texts.iter().map(String::as_str).collect();
    let vectors = model
        .embed(&texts, &EmbedOptions { dimensions, ..EmbedOptions::default() })
        .unwrap()
        .vectors;
    let width = vectors[0].len();
    let x: Vec<f32> = vectors.concat();
    let mut config = TrainConfig::new(kind);
    (config.folds, config.grid) = (2, vec![1.0]);
    let (classifier, report) = train_head(&x, width, &data.labels, &data.classes, &config).unwrap();
    let base = BaseModel::describe(model.name(), dir, width, dimensions, None, true);
    Head::new(classifier, data.classes, report.c, config.class_weight, base, None)
        .save(out)
        .unwrap();
    Head::load(out).unwrap()
}

#[test]
fn heads_on_minilm_answer_as_the_heads_library_in_one_forward_pass() {
    let name = "all-minilm-l6-v2";
    let store = sembase_hub::Store::from_env().expect("sembase store");
    let dir = store.resolve(name).unwrap_or_else(|e| {
        panic!("{name} is not in the store ({e}): run `sembase model pull {name}`")
    });
    let model = Arc::new(
        LocalEmbedder::load(&dir, name, LoadOptions::default()).expect("load all-minilm-l6-v2"),
    );
    let tmp = std::env::temp_dir().join(format!("sembase-classify-test-{}", std::process::id()));
    let sentiment = train(&model, &dir, "cr", Kind::Logistic, None, &tmp.join("sentiment"));
    let subjectivity =
        train(&model, &dir, "subj", Kind::Mlp { hidden: 8 }, Some(128), &tmp.join("subjectivity"));
    let _ = std::fs::remove_dir_all(&tmp);
    assert_eq!(subjectivity.dimensions(), 128);

    // Held-out sentences: 4 of each label of both sets.
    let held_out = format!(
        "{}{}",
        rows_per_label("cr", 24, 4),
        rows_per_label("subj", 24, 4).split_once('\n').unwrap().1
    );
    let held_out = parse_tsv(&held_out, std::path::Path::new("held-out")).unwrap();
    let texts: Vec<&str> = held_out.texts.iter().map(String::as_str).collect();
    assert_eq!(texts.len(), 16);
    let want_sentiment = sentiment.predict_texts(model.as_ref(), &texts).unwrap();
    let want_subjectivity = subjectivity.predict_texts(model.as_ref(), &texts).unwrap();
    // The trained heads are real classifiers, not constant answers.
    assert!(
        want_sentiment.iter().any(|p| p.label == "positive")
            && want_sentiment.iter().any(|p| p.label == "negative")
    );
    assert!(
        want_subjectivity.iter().any(|p| p.label == "objective")
            && want_subjectivity.iter().any(|p| p.label == "subjective")
    );

    let server = TestServer::start_with(
        ServerConfig::default(),
        vec![ModelSpec::new(model.clone())],
        heads(vec![("sentiment", sentiment.clone()), ("subjectivity", subjectivity.clone())]),
    );
    let inputs = format!("sembase_embedded_inputs_total{{model=\"{name}\"}}");
    let tokens = format!("sembase_embedded_tokens_total{{model=\"{name}\"}}");
    assert_eq!(server.metric(&inputs), Some(0.0));
    let reply = server.post_json(
        "/v1/classify",
        &json!({"input": texts, "heads": ["sentiment", "subjectivity"]}),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert_same(&body, "sentiment", &sentiment, &want_sentiment, 1e-5);
    assert_same(&body, "subjectivity", &subjectivity, &want_subjectivity, 1e-5);
    // Both heads read one forward pass: each text embedded once.
    assert_eq!(server.metric(&inputs), Some(texts.len() as f64));
    let used: usize = texts.iter().map(|t| model.tokenize(t).unwrap().len()).sum();
    assert_eq!(body["usage"]["prompt_tokens"], used);
    assert_eq!(server.metric(&tokens), Some(used as f64));
}
