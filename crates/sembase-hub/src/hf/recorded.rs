//! What the Hub records about each file of a commit, asked for with
//! `?blobs=true` on the revision API: `siblings[].size`, `.blobId` (the git blob
//! id) and, for files kept in LFS, `.lfs.sha256` and `.lfs.size`. For an LFS
//! file the blob id is that of its pointer, so only the LFS sha256 checks it.

use std::collections::HashMap;

use serde_json::Value;

use crate::verify::{hex_digest, Expect};

/// What each listed file must be, by repo path; a file the answer gives no
/// digest for maps to an [`Expect`] without one.
pub(crate) fn recorded(siblings: &[Value]) -> HashMap<String, Expect> {
    siblings
        .iter()
        .filter_map(|s| Some((s.get("rfilename")?.as_str()?.to_string(), expect_of(s))))
        .collect()
}

fn expect_of(sibling: &Value) -> Expect {
    let size = sibling.get("size").and_then(Value::as_u64);
    match sibling.get("lfs").filter(|l| l.is_object()) {
        Some(lfs) => Expect {
            size: lfs.get("size").and_then(Value::as_u64).or(size),
            sha256: lfs.get("sha256").and_then(Value::as_str).and_then(|h| hex_digest(h, 64)),
            git_sha1: None,
        },
        None => Expect {
            size,
            sha256: None,
            git_sha1: sibling.get("blobId").and_then(Value::as_str).and_then(|h| hex_digest(h, 40)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lfs_files_are_checked_by_sha256_others_by_blob_id() {
        let (sha, blob) = ("AB".repeat(32), "cd".repeat(20));
        let siblings = [
            json!({"rfilename": "model.safetensors", "size": 9, "blobId": blob,
                   "lfs": {"sha256": sha, "size": 9, "pointerSize": 134}}),
            json!({"rfilename": "config.json", "size": 5, "blobId": blob}),
            json!({"rfilename": "README.md"}),
            json!({"rfilename": "bad.json", "blobId": "not hex"}),
        ];
        let got = recorded(&siblings);
        let want = |size, sha256: Option<&str>, git_sha1: Option<&str>| Expect {
            size,
            sha256: sha256.map(str::to_string),
            git_sha1: git_sha1.map(str::to_string),
        };
        assert_eq!(got["model.safetensors"], want(Some(9), Some(&"ab".repeat(32)), None));
        assert_eq!(got["config.json"], want(Some(5), None, Some(&blob)));
        assert_eq!(got["README.md"], Expect::default());
        assert_eq!(got["bad.json"], Expect::default());
    }
}
