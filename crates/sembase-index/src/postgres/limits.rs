//! The connection pool's limits, read from the database URL: the URL is where
//! every PostgreSQL setting of an index lives (`--store`, then `index.json`,
//! which `serve`, `search` and `index work` open), so a limit set there holds
//! for every process that opens the index.
//!
//! - `pool_max_conns`: connections one process keeps open at most (pgx's
//!   name for it); default 16. A caller that finds them all in use waits for one
//!   for up to the connect timeout.
//! - `connect_timeout`: seconds to wait for a connection (libpq's meaning; `0`
//!   waits forever); default 10.
//! - `statement_timeout`: PostgreSQL's setting in its own syntax (`60s`,
//!   `500ms`, `5min`; `0` turns it off), set on every connection; default `60s`.
//!   HNSW index builds are exempt: their time grows with the data, not a hang.
//!
//! Both URL forms are read: `postgres://...?pool_max_conns=8&statement_timeout=30s`
//! and `host=... pool_max_conns=8`.

use std::str::FromStr;
use std::time::Duration;

use postgres::Config;

use crate::error::{IndexError, Result};

/// Connections per process when the URL does not say.
pub const DEFAULT_MAX_CONNS: usize = 16;
/// How long to wait for a connection when the URL does not say.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a statement may run when the URL does not say.
pub const DEFAULT_STATEMENT_TIMEOUT: &str = "60s";

/// The parameters read here rather than by the driver.
const KEYS: [&str; 3] = ["pool_max_conns", "connect_timeout", "statement_timeout"];

/// How many connections, and how long to wait for one and for a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Connections kept open at most.
    pub(crate) max_conns: usize,
    /// How long to wait to connect, or for a free connection; `None`: forever.
    pub(crate) connect_timeout: Option<Duration>,
    /// `statement_timeout`, checked to be a number with an optional unit.
    pub(crate) statement_timeout: String,
}

/// Splits `url` into the driver's configuration (with the connect timeout
/// applied) and the pool's limits.
pub(crate) fn parse(url: &str) -> Result<(Config, Limits)> {
    let (rest, taken) = take_params(url);
    let bad = |key: &str, value: &str, want: &str| {
        IndexError::Database(format!("bad database URL: {key}={value:?} must be {want}"))
    };
    let mut limits = Limits {
        max_conns: DEFAULT_MAX_CONNS,
        connect_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
        statement_timeout: DEFAULT_STATEMENT_TIMEOUT.to_string(),
    };
    for (key, value) in &taken {
        match *key {
            "pool_max_conns" => {
                limits.max_conns = value
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| bad(key, value, "a whole number from 1 up"))?
            }
            "connect_timeout" => {
                let secs: u64 =
                    value.parse().map_err(|_| bad(key, value, "a whole number of seconds"))?;
                limits.connect_timeout = (secs > 0).then(|| Duration::from_secs(secs));
            }
            _ => {
                if !is_duration(value) {
                    return Err(bad(
                        key,
                        value,
                        "a number with an optional unit (us, ms, s, min, h, d)",
                    ));
                }
                limits.statement_timeout = value.clone();
            }
        }
    }
    let mut config = Config::from_str(&rest)
        .map_err(|e| IndexError::Database(format!("bad database URL: {e}")))?;
    if let Some(timeout) = limits.connect_timeout {
        config.connect_timeout(timeout);
    }
    Ok((config, limits))
}

/// `url` without the [`KEYS`] parameters, and their values (the last of each wins).
fn take_params(url: &str) -> (String, Vec<(&'static str, String)>) {
    let mut taken = Vec::new();
    let mut keep = |param: &str| {
        let ours =
            param.split_once('=').and_then(|(k, v)| Some((*KEYS.iter().find(|x| **x == k)?, v)));
        match ours {
            Some((key, value)) => {
                taken.push((key, value.to_string()));
                false
            }
            None => true,
        }
    };
    let rest = if url.contains("://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query.split('&').filter(|p| keep(p)).collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_string(),
        }
    } else {
        // key=value form: drop whole `key=value` words, leave the rest as written.
        let mut out = String::with_capacity(url.len());
        for word in url.split_inclusive(char::is_whitespace) {
            if keep(word.trim_end()) {
                out.push_str(word);
            }
        }
        out
    };
    (rest, taken)
}

/// True for PostgreSQL time values: digits, then an optional unit.
fn is_duration(value: &str) -> bool {
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && ["", "us", "ms", "s", "min", "h", "d"].contains(&&value[digits..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_url_parameters() {
        let (config, limits) = parse("postgres://u:pw@db.example:5433/x").unwrap();
        assert_eq!(limits.max_conns, 16);
        assert_eq!(limits.statement_timeout, "60s");
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(10)));
        assert_eq!(config.get_password(), Some(&b"pw"[..]));

        let (config, limits) = parse(
            "postgres://u@h/x?pool_max_conns=4&application_name=a&connect_timeout=0&statement_timeout=5min",
        )
        .unwrap();
        assert_eq!(
            limits,
            Limits { max_conns: 4, connect_timeout: None, statement_timeout: "5min".into() }
        );
        assert_eq!(config.get_connect_timeout(), None);
        assert_eq!(config.get_application_name(), Some("a"));

        let (config, limits) =
            parse("host=h user=u statement_timeout=0 dbname=x connect_timeout=3").unwrap();
        assert_eq!(limits.statement_timeout, "0");
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(config.get_dbname(), Some("x"));
    }

    #[test]
    fn bad_values_are_named() {
        for (url, want) in [
            ("postgres://h/x?pool_max_conns=0", "pool_max_conns=\"0\" must be a whole number from 1 up"),
            ("postgres://h/x?connect_timeout=1.5", "connect_timeout=\"1.5\" must be a whole number of seconds"),
            ("postgres://h/x?statement_timeout=1';DROP", "statement_timeout=\"1';DROP\" must be a number with an optional unit (us, ms, s, min, h, d)"),
            ("postgres://h/x?statement_timeout=ms", "statement_timeout=\"ms\" must be"),
        ] {
            let err = parse(url).unwrap_err().to_string();
            assert!(err.starts_with(&format!("database: bad database URL: {want}")), "{err}");
        }
    }
}
