//! HTTP: one agent, redirects followed by hand (to keep the Hub's `X-Linked-*`
//! headers), resumable and verified downloads.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use ureq::tls::{RootCerts, TlsConfig};

use crate::error::{HubError, Result};
use crate::fsutil;
use crate::verify::{self, hex, hex_digest, Expect};
use crate::ProgressEvent;
use sembase_embed::durable;

/// How often a broken-off download is resumed within one call before giving up.
const ATTEMPTS: usize = 4;
/// How many redirects are followed.
const MAX_REDIRECTS: usize = 10;

/// A response after redirects, with the verification headers seen on the way.
struct Answer {
    url: String,
    response: ureq::http::Response<ureq::Body>,
    /// A 64-hex sha256 from `X-Linked-Etag` (any hop) or `ETag` (the last hop).
    sha256: Option<String>,
    /// `X-Linked-Size` from any hop.
    linked_size: Option<u64>,
}

/// An HTTP client for the Hub and package indexes.
pub(crate) struct Http {
    agent: ureq::Agent,
    /// `(url prefix, bearer token)`: the token is sent only to URLs under the prefix.
    auth: Option<(String, String)>,
}

impl Http {
    /// A client that trusts the platform's certificate store; `auth` is a URL
    /// prefix and a bearer token to send there.
    pub(crate) fn new(auth: Option<(String, String)>) -> Http {
        let tls = TlsConfig::builder().root_certs(RootCerts::PlatformVerifier).build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            .user_agent(concat!("sembase/", env!("CARGO_PKG_VERSION")))
            .build();
        Http { agent: config.new_agent(), auth }
    }

    /// GET `url` with `headers`, following redirects.
    fn get(&self, url: &str, headers: &[(&str, String)]) -> Result<Answer> {
        let mut url = url.to_string();
        let mut sha256 = None;
        let mut linked_size = None;
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.agent.get(&url);
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            if let Some((prefix, token)) = &self.auth {
                if url.starts_with(prefix.as_str()) {
                    req = req.header("Authorization", format!("Bearer {token}"));
                }
            }
            let response = req
                .call()
                .map_err(|e| HubError::Http { url: url.clone(), message: e.to_string() })?;
            let header = |name: &str| {
                response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
            };
            if let Some(tag) = header("x-linked-etag").and_then(|t| etag_sha256(&t)) {
                sha256 = Some(tag);
            }
            if let Some(size) = header("x-linked-size").and_then(|s| s.trim().parse().ok()) {
                linked_size = Some(size);
            }
            let status = response.status().as_u16();
            if (300..400).contains(&status) && status != 304 {
                let Some(location) = header("location") else {
                    return Err(HubError::HttpStatus { url, status });
                };
                url = join_url(&url, &location);
                continue;
            }
            if sha256.is_none() {
                sha256 = header("etag").and_then(|t| etag_sha256(&t));
            }
            return Ok(Answer { url, response, sha256, linked_size });
        }
        Err(HubError::Http { url, message: format!("more than {MAX_REDIRECTS} redirects") })
    }

    /// GET `url` and return its body (at most 64 MiB) if the status is 200;
    /// any other status is an [`HubError::HttpStatus`].
    pub(crate) fn get_bytes(
        &self,
        url: &str,
        headers: &[(&str, String)],
    ) -> Result<(String, Vec<u8>)> {
        let answer = self.get(url, headers)?;
        let status = answer.response.status().as_u16();
        if status != 200 {
            return Err(HubError::HttpStatus { url: answer.url, status });
        }
        let mut body = Vec::new();
        answer
            .response
            .into_body()
            .into_with_config()
            .limit(64 << 20)
            .reader()
            .read_to_end(&mut body)
            .map_err(|e| HubError::Http { url: answer.url.clone(), message: e.to_string() })?;
        Ok((answer.url, body))
    }

    /// Downloads `url` to `dest` (named `label` in errors and progress),
    /// resumably and verified.
    ///
    /// Bytes go to `dest` + `.part`; an existing `.part` is resumed with a
    /// `Range` request (kept only when the server answers 206), and a transfer
    /// that breaks off is resumed up to a few times. The size is checked against
    /// `expect.size`, `Content-Length`/`Content-Range` and `X-Linked-Size`; the
    /// content against `expect`'s digests, the sha256 falling back to a 64-hex
    /// `X-Linked-Etag`/`ETag`. With no digest at all the download is refused
    /// before its body is read ([`HubError::Unverifiable`]). On a mismatch the
    /// `.part` is deleted. Only a verified file is renamed to `dest`, so an
    /// existing `dest` is checked again and kept.
    pub(crate) fn download(
        &self,
        url: &str,
        dest: &Path,
        label: &str,
        expect: &Expect,
        progress: &dyn Fn(ProgressEvent),
    ) -> Result<()> {
        if dest.is_file() {
            if expect.has_digest() {
                return verify::check_file(dest, label, url, expect);
            }
            // Verified by a header last time: fetch it again to see the header.
            fsutil::remove_quietly(dest);
        }
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let part = dest.with_file_name(format!("{name}.part"));
        let mut last_err = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(100 * attempt as u64));
            }
            match self.attempt(url, &part, label, expect, progress) {
                Ok(()) => {
                    durable::rename(&part, dest)?;
                    return Ok(());
                }
                Err(Attempt::Retry(e)) => last_err = Some(e),
                Err(Attempt::Fail(e)) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| HubError::Http {
            url: url.to_string(),
            message: "download failed".into(),
        }))
    }

    /// One request: resume or restart `part`, stream the body into it, verify.
    fn attempt(
        &self,
        url: &str,
        part: &Path,
        label: &str,
        expect: &Expect,
        progress: &dyn Fn(ProgressEvent),
    ) -> std::result::Result<(), Attempt> {
        let mut offset = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if expect.size.is_some_and(|s| offset > s) {
            offset = 0;
        }
        if offset > 0 && expect.size == Some(offset) && expect.has_digest() {
            // Complete already (an earlier call stopped before the rename).
            return verify::check_file(part, label, url, expect).map_err(Attempt::Retry);
        }
        let headers: Vec<(&str, String)> =
            if offset > 0 { vec![("Range", format!("bytes={offset}-"))] } else { Vec::new() };
        let answer = self.get(url, &headers).map_err(Attempt::Retry)?;
        let status = answer.response.status().as_u16();
        let header = |name: &str| {
            answer.response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
        };
        let body_len = header("content-length").and_then(|s| s.trim().parse::<u64>().ok());
        let total = match status {
            206 => {
                let range = header("content-range").and_then(|r| parse_content_range(&r));
                match range {
                    Some((start, total)) if start == offset => total,
                    // The server resumed somewhere else: start again from scratch.
                    _ => {
                        fsutil::remove_quietly(part);
                        return Err(Attempt::Retry(HubError::Http {
                            url: answer.url,
                            message: "server resumed at an unexpected offset".into(),
                        }));
                    }
                }
            }
            200 => {
                offset = 0;
                body_len
            }
            416 if offset > 0 => {
                // The part is no prefix the server can continue: start again.
                fsutil::remove_quietly(part);
                return Err(Attempt::Retry(HubError::HttpStatus { url: answer.url, status }));
            }
            _ => {
                let err = HubError::HttpStatus { url: answer.url, status };
                return Err(if err.is_transient() {
                    Attempt::Retry(err)
                } else {
                    Attempt::Fail(err)
                });
            }
        };
        // Every statement of the size must agree.
        let total = [total, answer.linked_size, expect.size].into_iter().flatten().try_fold(
            None,
            |acc, s| match acc {
                Some(a) if a != s => Err(s),
                _ => Ok(Some(s)),
            },
        );
        let total = match total {
            Ok(t) => t,
            Err(other) => {
                fsutil::remove_quietly(part);
                let expected = expect.size.or(answer.linked_size).unwrap_or(other);
                return Err(Attempt::Fail(HubError::Size {
                    file: label.to_string(),
                    expected,
                    actual: other,
                }));
            }
        };
        let expect =
            Expect { sha256: expect.sha256.clone().or(answer.sha256.clone()), ..expect.clone() };
        if !expect.has_digest() {
            return Err(Attempt::Fail(HubError::Unverifiable {
                file: label.to_string(),
                url: answer.url,
            }));
        }

        // Hash what is kept, then append the body.
        let mut hasher = Sha256::new();
        let mut file = if offset > 0 {
            let mut f = fs::OpenOptions::new()
                .read(true)
                .append(true)
                .open(part)
                .map_err(|e| Attempt::Fail(HubError::io("open", part, e)))?;
            fsutil::pump(&mut (&mut f).take(offset), |b| {
                hasher.update(b);
                Ok(())
            })
            .map_err(|e| Attempt::Fail(HubError::io("read", part, e)))?;
            f
        } else {
            fs::File::create(part).map_err(|e| Attempt::Fail(HubError::io("create", part, e)))?
        };
        let mut done = offset;
        let mut since_report = 0u64;
        progress(ProgressEvent { file: label.to_string(), done, total });
        let mut reader = answer.response.into_body().into_reader();
        let copied = fsutil::pump(&mut reader, |b| {
            file.write_all(b)
                .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", part.display())))?;
            hasher.update(b);
            done += b.len() as u64;
            since_report += b.len() as u64;
            if since_report >= 4 << 20 {
                since_report = 0;
                progress(ProgressEvent { file: label.to_string(), done, total });
            }
            Ok(())
        });
        let flushed = file.flush().and_then(|_| file.sync_all());
        drop(file);
        if let Err(e) = copied.and(flushed.map(|_| 0)) {
            // Keep what arrived: the next attempt resumes from it.
            return Err(Attempt::Retry(HubError::Http { url: answer.url, message: e.to_string() }));
        }
        if let Some(total) = total {
            if done < total {
                return Err(Attempt::Retry(HubError::Http {
                    url: answer.url,
                    message: format!("connection closed after {done} of {total} bytes"),
                }));
            }
            if done > total {
                fsutil::remove_quietly(part);
                return Err(Attempt::Fail(HubError::Size {
                    file: label.to_string(),
                    expected: total,
                    actual: done,
                }));
            }
        }
        progress(ProgressEvent { file: label.to_string(), done, total: Some(done) });
        let sha256 = hex(&hasher.finalize());
        verify::check(part, label, &answer.url, &sha256, &expect).map_err(Attempt::Fail)
    }
}

/// How one download attempt failed.
enum Attempt {
    /// Worth another attempt (resuming from what arrived).
    Retry(HubError),
    /// Final.
    Fail(HubError),
}

/// The sha256 an entity tag stands for, if it is one: 64 hex digits, optionally
/// quoted and weak-prefixed (the Hub's tag for LFS files).
pub(crate) fn etag_sha256(tag: &str) -> Option<String> {
    let tag = tag.trim();
    hex_digest(tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"'), 64)
}

/// `bytes START-END/TOTAL` -> `(START, Some(TOTAL))` (`None` for `*`).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    let total = if total.trim() == "*" { None } else { Some(total.trim().parse().ok()?) };
    Some((start, total))
}

/// Resolves `reference` (absolute, scheme-relative, host-relative or relative,
/// as found in `Location` headers and index pages) against `base`; drops any fragment.
pub(crate) fn join_url(base: &str, reference: &str) -> String {
    let reference = reference.split('#').next().unwrap_or("");
    if reference.contains("://") {
        return reference.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    if let Some(r) = reference.strip_prefix("//") {
        return format!("{scheme}://{r}");
    }
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, base_path) = rest.split_at(authority_end);
    let base_path = base_path.split(['?', '#']).next().unwrap_or("");
    let joined = if reference.starts_with('/') {
        reference.to_string()
    } else {
        let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
        let dir = if dir.is_empty() { "/" } else { dir };
        format!("{dir}{reference}")
    };
    // Remove dot segments, keeping any query.
    let (path, query) = match joined.split_once('?') {
        Some((p, q)) => (p.to_string(), format!("?{q}")),
        None => (joined, String::new()),
    };
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("{scheme}://{authority}/{}{query}", out.join("/"))
}

/// Percent-encodes one URL path segment (keeps RFC 3986 unreserved characters).
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a `/`-separated path, segment by segment.
pub(crate) fn encode_path(s: &str) -> String {
    s.split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_join() {
        let base = "https://idx.example/simple/pkg/";
        assert_eq!(join_url(base, "https://f.example/a.whl#sha256=00"), "https://f.example/a.whl");
        assert_eq!(join_url(base, "//f.example/a.whl"), "https://f.example/a.whl");
        assert_eq!(join_url(base, "/files/a.whl"), "https://idx.example/files/a.whl");
        assert_eq!(join_url(base, "a.whl"), "https://idx.example/simple/pkg/a.whl");
        assert_eq!(
            join_url(base, "../../packages/x/a.whl"),
            "https://idx.example/packages/x/a.whl"
        );
        assert_eq!(
            join_url("http://h:8/o/n/resolve/main/x.json", "/api/c?x=1"),
            "http://h:8/api/c?x=1"
        );
        assert_eq!(join_url("http://h", "a"), "http://h/a");
    }

    #[test]
    fn etags_and_ranges() {
        let sha = "ab".repeat(32);
        assert_eq!(etag_sha256(&format!("\"{sha}\"")), Some(sha.clone()));
        assert_eq!(etag_sha256(&format!("W/\"{}\"", sha.to_uppercase())), Some(sha));
        assert_eq!(etag_sha256("\"0123abcd\""), None);
        assert_eq!(parse_content_range("bytes 10-19/20"), Some((10, Some(20))));
        assert_eq!(parse_content_range("bytes 10-19/*"), Some((10, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(encode_path("a b/c%"), "a%20b/c%25");
    }
}
