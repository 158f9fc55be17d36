//! What a downloaded file must be (its size and digests) and the checks that it
//! is. sembase installs verified files only: a file with no digest to check it
//! against is refused, since a size alone does not catch altered content.

use std::fs;
use std::path::Path;

use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::error::{HubError, Result};
use crate::fsutil;

/// What a download must be.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Expect {
    /// The exact size, when known beforehand.
    pub size: Option<u64>,
    /// The sha256 (lower-case hex): a pin, or what the Hub records for an LFS file.
    pub sha256: Option<String>,
    /// The git blob id (lower-case hex SHA-1 of `blob <len>\0` + content): what
    /// the Hub records for a file kept in git itself rather than LFS.
    pub git_sha1: Option<String>,
}

impl Expect {
    /// True when a digest is known, so that the content itself can be checked.
    pub(crate) fn has_digest(&self) -> bool {
        self.sha256.is_some() || self.git_sha1.is_some()
    }
}

/// Checks `path` (complete, named `label` in errors) against `sha256` (its
/// digest, already computed) and `expect`; a file that fails is deleted. A
/// file with no digest to check is refused with [`HubError::Unverifiable`].
pub(crate) fn check(
    path: &Path,
    label: &str,
    url: &str,
    sha256: &str,
    expect: &Expect,
) -> Result<()> {
    if !expect.has_digest() {
        fsutil::remove_quietly(path);
        return Err(HubError::Unverifiable { file: label.to_string(), url: url.to_string() });
    }
    let size = fs::metadata(path).map_err(|e| HubError::io("read", path, e))?.len();
    let mismatch = if let Some(expected) = expect.size.filter(|&s| s != size) {
        Some(HubError::Size { file: label.to_string(), expected, actual: size })
    } else if let Some(expected) = expect.sha256.as_ref().filter(|s| *s != sha256) {
        Some(checksum(label, "sha256", expected, sha256))
    } else if let Some(expected) = &expect.git_sha1 {
        let actual = git_blob_sha1_file(path)?;
        (*expected != actual).then(|| checksum(label, "git blob sha1", expected, &actual))
    } else {
        None
    };
    match mismatch {
        Some(err) => {
            fsutil::remove_quietly(path);
            Err(err)
        }
        None => Ok(()),
    }
}

/// [`check`] for a file on disk whose sha256 is not known yet.
pub(crate) fn check_file(path: &Path, label: &str, url: &str, expect: &Expect) -> Result<()> {
    check(path, label, url, &sha256_file(path)?, expect)
}

fn checksum(label: &str, kind: &'static str, expected: &str, actual: &str) -> HubError {
    HubError::Checksum {
        file: label.to_string(),
        kind,
        expected: expected.to_string(),
        actual: actual.to_string(),
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `s` in lower case when it is `len` hex digits (a digest), else `None`.
pub(crate) fn hex_digest(s: &str, len: usize) -> Option<String> {
    (s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// The sha256 of a file, as lower-case hex.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    hash_file(path, |b| hasher.update(b))?;
    Ok(hex(&hasher.finalize()))
}

/// The git blob id of a file: SHA-1 of `blob <len>\0` followed by the content.
pub(crate) fn git_blob_sha1_file(path: &Path) -> Result<String> {
    let len = fs::metadata(path).map_err(|e| HubError::io("read", path, e))?.len();
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {len}\0"));
    hash_file(path, |b| hasher.update(b))?;
    Ok(hex(&hasher.finalize()))
}

/// Feeds the bytes of `path` to `update`.
fn hash_file(path: &Path, mut update: impl FnMut(&[u8])) -> Result<()> {
    let mut f = fs::File::open(path).map_err(|e| HubError::io("open", path, e))?;
    fsutil::pump(&mut f, |b| {
        update(b);
        Ok(())
    })
    .map(|_| ())
    .map_err(|e| HubError::io("read", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_ids_match_git() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        // `printf 'hello\n' | git hash-object --stdin` and `git hash-object /dev/null`.
        fs::write(&file, b"hello\n").unwrap();
        assert_eq!(git_blob_sha1_file(&file).unwrap(), "ce013625030ba8dba906f756967f9e9ca394464a");
        fs::write(&file, b"").unwrap();
        assert_eq!(git_blob_sha1_file(&file).unwrap(), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
    }

    #[test]
    fn mismatches_and_missing_digests_are_refused_and_the_file_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        let body = b"hello\n";
        let git = "ce013625030ba8dba906f756967f9e9ca394464a".to_string();
        let cases: [(Expect, Option<&str>); 5] = [
            (Expect { size: Some(6), git_sha1: Some(git.clone()), ..Expect::default() }, None),
            (
                Expect { git_sha1: Some("0".repeat(40)), ..Expect::default() },
                Some(&format!("config.json: git blob sha1 {git} does not match the expected {}; the download was discarded", "0".repeat(40))),
            ),
            (
                Expect { size: Some(7), git_sha1: Some(git.clone()), ..Expect::default() },
                Some("config.json: 6 bytes where 7 were expected"),
            ),
            (
                Expect { sha256: Some("1".repeat(64)), ..Expect::default() },
                Some("config.json: sha256 5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03 does not match the expected 1111111111111111111111111111111111111111111111111111111111111111; the download was discarded"),
            ),
            (
                Expect { size: Some(6), ..Expect::default() },
                Some("config.json: http://h/config.json gives no sha256 or git blob id to check the file against; sembase installs verified files only (pull the model from a local directory you trust instead)"),
            ),
        ];
        for (expect, want) in cases {
            fs::write(&file, body).unwrap();
            let got = check_file(&file, "config.json", "http://h/config.json", &expect);
            match want {
                None => {
                    got.unwrap();
                    assert!(file.exists());
                }
                Some(want) => {
                    assert_eq!(got.unwrap_err().to_string(), want);
                    assert!(!file.exists());
                }
            }
        }
    }
}
