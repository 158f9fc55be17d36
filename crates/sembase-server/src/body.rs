//! Reading request bodies under a size limit, a deadline and a minimum transfer rate.
//!
//! A client that trickles its body a byte at a time would otherwise hold its connection
//! (and, before the body was read ahead of the concurrency slot, a compute slot) for as
//! long as it likes: that is the slowloris attack on bodies. Headers are bounded by the
//! connection's header-read timer (see `connections`).

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use http_body_util::BodyExt;

use crate::error::ApiError;
use crate::handlers::AppResult;

/// How long a body may take to arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BodyTimeouts {
    /// The whole body must be in within this.
    pub total: Duration,
    /// Past `grace`, a body arriving slower than this on average (bytes per second) is cut.
    pub min_rate: u64,
    /// How long a body may arrive at any rate before the minimum rate applies (a slow
    /// start, a small body sent late).
    pub grace: Duration,
}

impl Default for BodyTimeouts {
    fn default() -> Self {
        Self { total: Duration::from_secs(60), min_rate: 1024, grace: Duration::from_secs(5) }
    }
}

/// How often a stalled body is checked against the minimum rate.
const RATE_CHECK: Duration = Duration::from_millis(500);

/// Reads the whole body, refusing more than `limit` bytes with 413 (early, when
/// `Content-Length` already says so) and a body that is too slow with 408.
pub(crate) async fn read(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeouts: BodyTimeouts,
) -> AppResult<Bytes> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let started = Instant::now();
    let mut body = body;
    let mut bytes = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    loop {
        let frame = match tokio::time::timeout(RATE_CHECK, body.frame()).await {
            Err(_) => None,
            Ok(None) => return Ok(Bytes::from(bytes)),
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad_request(format!("could not read the request body: {e}")))
            }
            Ok(Some(Ok(frame))) => Some(frame),
        };
        if let Some(data) = frame.and_then(|f| f.into_data().ok()) {
            if bytes.len() + data.len() > limit {
                return Err(ApiError::too_large(limit));
            }
            bytes.extend_from_slice(&data);
        }
        check_pace(started.elapsed(), bytes.len(), timeouts)?;
    }
}

/// 408 when the body has taken longer than allowed, or (past the grace period) arrives
/// slower than the minimum rate.
fn check_pace(elapsed: Duration, received: usize, timeouts: BodyTimeouts) -> AppResult<()> {
    if elapsed > timeouts.total {
        return Err(ApiError::body_timeout(format!(
            "the request body did not arrive within {} s",
            timeouts.total.as_secs_f64()
        )));
    }
    let rate = received as f64 / elapsed.as_secs_f64().max(1e-3);
    if elapsed > timeouts.grace && rate < timeouts.min_rate as f64 {
        return Err(ApiError::body_timeout(format!(
            "the request body arrived at {rate:.0} bytes/s, below the minimum of {} bytes/s",
            timeouts.min_rate
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: BodyTimeouts = BodyTimeouts {
        total: Duration::from_secs(60),
        min_rate: 1000,
        grace: Duration::from_secs(5),
    };

    #[test]
    fn a_slow_body_is_allowed_during_the_grace_period_then_cut() {
        assert!(check_pace(Duration::from_secs(4), 10, RULES).is_ok());
        assert!(check_pace(Duration::from_secs(6), 10_000, RULES).is_ok());
        let slow = check_pace(Duration::from_secs(6), 100, RULES).unwrap_err();
        assert_eq!(slow.status.as_u16(), 408);
        let late = check_pace(Duration::from_secs(61), 1 << 30, RULES).unwrap_err();
        assert_eq!(late.body.code.as_deref(), Some("body_timeout"));
    }
}
