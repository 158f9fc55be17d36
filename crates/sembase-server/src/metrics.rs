//! Counters, gauges and histograms, written in the Prometheus text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Latency buckets in seconds.
const SECONDS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Batch sizes in sequences.
const SEQUENCES: &[f64] =
    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];
/// Batch sizes in tokens.
const TOKENS: &[f64] =
    &[16.0, 64.0, 256.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0, 131072.0];

/// A histogram with fixed upper bounds.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// What one model's queue and worker record.
#[derive(Debug)]
pub struct ModelMetrics {
    /// Requests waiting for the worker.
    pub queue_depth: AtomicUsize,
    /// Tokens those requests hold.
    pub queue_tokens: AtomicUsize,
    tokens_total: AtomicU64,
    inputs_total: AtomicU64,
    dropped_total: AtomicU64,
    queue_timeouts_total: AtomicU64,
    queue_full_total: AtomicU64,
    reranks_total: AtomicU64,
    pairs_total: AtomicU64,
    histograms: Mutex<ModelHistograms>,
}

#[derive(Debug)]
struct ModelHistograms {
    batch_sequences: Histogram,
    batch_tokens: Histogram,
    batch_requests: Histogram,
    forward_seconds: Histogram,
    queue_seconds: Histogram,
}

impl Default for ModelMetrics {
    fn default() -> Self {
        Self {
            queue_depth: AtomicUsize::new(0),
            queue_tokens: AtomicUsize::new(0),
            tokens_total: AtomicU64::new(0),
            inputs_total: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            queue_timeouts_total: AtomicU64::new(0),
            queue_full_total: AtomicU64::new(0),
            reranks_total: AtomicU64::new(0),
            pairs_total: AtomicU64::new(0),
            histograms: Mutex::new(ModelHistograms {
                batch_sequences: Histogram::new(SEQUENCES),
                batch_tokens: Histogram::new(TOKENS),
                batch_requests: Histogram::new(SEQUENCES),
                forward_seconds: Histogram::new(SECONDS),
                queue_seconds: Histogram::new(SECONDS),
            }),
        }
    }
}

impl ModelMetrics {
    /// One merged batch went through the model.
    pub fn record_batch(&self, requests: usize, sequences: usize, tokens: usize, seconds: f64) {
        self.tokens_total.fetch_add(tokens as u64, Ordering::Relaxed);
        self.inputs_total.fetch_add(sequences as u64, Ordering::Relaxed);
        let mut h = self.histograms.lock().unwrap_or_else(|p| p.into_inner());
        h.batch_requests.observe(requests as f64);
        h.batch_sequences.observe(sequences as f64);
        h.batch_tokens.observe(tokens as f64);
        h.forward_seconds.observe(seconds);
    }

    /// A request waited this long in the queue before its batch started.
    pub fn record_wait(&self, seconds: f64) {
        self.histograms.lock().unwrap_or_else(|p| p.into_inner()).queue_seconds.observe(seconds);
    }

    /// A queued request was dropped because its client went away.
    pub fn record_dropped(&self) {
        self.dropped_total.fetch_add(1, Ordering::Relaxed);
    }

    /// A queued request waited past the queue timeout.
    pub fn record_queue_timeout(&self) {
        self.queue_timeouts_total.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was refused because the queue was full.
    pub fn record_queue_full(&self) {
        self.queue_full_total.fetch_add(1, Ordering::Relaxed);
    }

    /// A rerank (of any route) asked the model to score this many (query, document) pairs.
    pub fn record_rerank(&self, pairs: usize) {
        self.reranks_total.fetch_add(1, Ordering::Relaxed);
        self.pairs_total.fetch_add(pairs as u64, Ordering::Relaxed);
    }

    /// Requests dropped so far because their client went away.
    pub fn dropped(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }
}

/// All of the server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    models: Mutex<BTreeMap<String, Arc<ModelMetrics>>>,
    /// Requests inside the concurrency limit right now.
    pub in_flight: AtomicUsize,
}

impl Metrics {
    /// The metrics of the model named `name`, created on first use.
    pub fn model(&self, name: &str) -> Arc<ModelMetrics> {
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        models.entry(name.to_string()).or_insert_with(|| Arc::new(ModelMetrics::default())).clone()
    }

    /// One HTTP request finished (`status` is `499` when the client left first).
    pub fn record_request(&self, route: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((route.to_string(), status.to_string()))
            .or_insert(0) += 1;
        self.latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(SECONDS))
            .observe(seconds);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "sembase_http_requests_total",
            "counter",
            "HTTP requests by route and status (499: the client left first).",
        );
        for ((route, status), n) in self.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(
                out,
                "sembase_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        header(
            &mut out,
            "sembase_http_request_duration_seconds",
            "histogram",
            "Time from request to response, by route.",
        );
        for (route, h) in self.latency.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            h.write(
                &mut out,
                "sembase_http_request_duration_seconds",
                &format!("route=\"{}\"", escape(route)),
            );
        }
        header(
            &mut out,
            "sembase_requests_in_flight",
            "gauge",
            "Requests being handled inside the concurrency limit.",
        );
        let _ =
            writeln!(out, "sembase_requests_in_flight {}", self.in_flight.load(Ordering::Relaxed));

        let models = self.models.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let labels: Vec<(String, &Arc<ModelMetrics>)> =
            models.iter().map(|(name, m)| (format!("model=\"{}\"", escape(name)), m)).collect();
        type Read = fn(&ModelMetrics) -> u64;
        let scalars: [(&str, &str, &str, Read); 9] = [
            ("sembase_queue_depth", "gauge", "Requests waiting for the model.", |m| {
                m.queue_depth.load(Ordering::Relaxed) as u64
            }),
            (
                "sembase_queue_tokens",
                "gauge",
                "Tokens of the requests waiting for the model.",
                |m| m.queue_tokens.load(Ordering::Relaxed) as u64,
            ),
            (
                "sembase_embedded_tokens_total",
                "counter",
                "Tokens embedded, or read by a reranker in its pairs (after truncation, special tokens included).",
                |m| m.tokens_total.load(Ordering::Relaxed),
            ),
            (
                "sembase_embedded_inputs_total",
                "counter",
                "Inputs embedded, or pairs scored by a reranker.",
                |m| m.inputs_total.load(Ordering::Relaxed),
            ),
            (
                "sembase_rerank_requests_total",
                "counter",
                "Rerank requests (POST /v1/rerank, POST /rerank, and searches with a rerank stage).",
                |m| m.reranks_total.load(Ordering::Relaxed),
            ),
            (
                "sembase_rerank_pairs_total",
                "counter",
                "(query, document) pairs those requests asked the reranker to score.",
                |m| m.pairs_total.load(Ordering::Relaxed),
            ),
            (
                "sembase_dropped_requests_total",
                "counter",
                "Queued requests dropped because the client disconnected.",
                |m| m.dropped_total.load(Ordering::Relaxed),
            ),
            (
                "sembase_queue_timeouts_total",
                "counter",
                "Queued requests answered 503 because they waited past the queue timeout.",
                |m| m.queue_timeouts_total.load(Ordering::Relaxed),
            ),
            (
                "sembase_queue_full_total",
                "counter",
                "Requests refused with 503 because the queue held its limit of tokens.",
                |m| m.queue_full_total.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, read) in scalars {
            header(&mut out, name, kind, help);
            for (label, m) in &labels {
                let _ = writeln!(out, "{name}{{{label}}} {}", read(m));
            }
        }
        type Pick = fn(&ModelHistograms) -> &Histogram;
        let histograms: [(&str, &str, Pick); 5] = [
            ("sembase_batch_sequences", "Inputs per merged batch.", |h| &h.batch_sequences),
            ("sembase_batch_tokens", "Tokens per merged batch.", |h| &h.batch_tokens),
            ("sembase_batch_requests", "Requests merged into one batch.", |h| &h.batch_requests),
            ("sembase_batch_seconds", "Model time per merged batch.", |h| &h.forward_seconds),
            (
                "sembase_queue_wait_seconds",
                "Time a request waited before its batch started.",
                |h| &h.queue_seconds,
            ),
        ];
        for (name, help, pick) in histograms {
            header(&mut out, name, "histogram", help);
            for (label, m) in &labels {
                let h = m.histograms.lock().unwrap_or_else(|p| p.into_inner());
                pick(&h).write(&mut out, name, label);
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 1.5, 7.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.write(&mut out, "x", "a=\"b\"");
        assert_eq!(
            out,
            "x_bucket{a=\"b\",le=\"1\"} 1\nx_bucket{a=\"b\",le=\"2\"} 3\nx_bucket{a=\"b\",le=\"+Inf\"} 4\nx_sum{a=\"b\"} 10.5\nx_count{a=\"b\"} 4\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.model("a\"b\\c\nd");
        assert!(m.render().contains("sembase_queue_depth{model=\"a\\\"b\\\\c\\nd\"} 0"));
    }
}
