//! The figures of one load run, as JSON (serde) and as a markdown table.

use super::Mode;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl From<&Histogram<u64>> for Latency {
    fn from(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// What the server under test used, from `/proc/<pid>`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerUsage {
    /// CPU seconds (user + system, all threads) during the measured phase.
    pub cpu_secs: f64,
    /// CPU seconds during the connect phase.
    pub connect_cpu_secs: f64,
    /// Resident memory before the first connection, KiB.
    pub rss_start_kib: u64,
    /// Resident memory once every connection was open, KiB.
    pub rss_connected_kib: u64,
    /// Resident memory at the end of the measured phase, KiB.
    pub rss_end_kib: u64,
    /// Peak resident memory of the process so far (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
}

/// The result of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Request discipline.
    pub mode: Mode,
    /// Connections asked for.
    pub connections_target: usize,
    /// Concurrent request slots per connection.
    pub streams_per_connection: usize,
    /// Request body bytes.
    pub request_size: u64,
    /// Response bytes per request.
    pub response_size: u64,
    /// Client UDP sockets used.
    pub client_sockets: usize,
    /// Total requests per second offered (open loop).
    pub offered_rate: Option<f64>,
    /// Handshakes completed.
    pub connections_established: u64,
    /// Handshakes that failed or timed out.
    pub connections_failed: u64,
    /// Connections that closed while they should have stayed open (idle mode).
    pub connections_lost: u64,
    /// Length of the connect phase.
    pub connect_secs: f64,
    /// Handshakes per second (connect phase, or the whole run in handshake mode).
    pub handshakes_per_sec: f64,
    /// Length of the measured phase.
    pub duration_secs: f64,
    /// Requests completed in the measured phase.
    pub requests: u64,
    /// Requests per second.
    pub requests_per_sec: f64,
    /// Response bytes received.
    pub bytes_received: u64,
    /// Request bytes sent (headers included).
    pub bytes_sent: u64,
    /// Response bytes per second, in Mbit/s.
    pub goodput_mbit_per_sec: f64,
    /// Request latency (closed loop: from send; open loop: from the scheduled start).
    pub latency_us: Option<Latency>,
    /// Handshake latency.
    pub handshake_latency_us: Option<Latency>,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// The server process, when `--server-pid` was given.
    pub server: Option<ServerUsage>,
    /// Server CPU microseconds per request.
    pub server_cpu_us_per_request: Option<f64>,
    /// Server CPU seconds per GB (10^9 bytes) of response.
    pub server_cpu_secs_per_gb: Option<f64>,
    /// Server CPU microseconds per handshake (handshake mode).
    pub server_cpu_us_per_handshake: Option<f64>,
    /// Server memory growth per open connection, KiB (connected minus start, or end minus
    /// start in idle mode).
    pub server_rss_kib_per_connection: Option<f64>,
    /// CPU seconds of the load generator itself.
    pub client_cpu_secs: f64,
    /// The server's key, as seen in the handshake.
    pub server_fingerprint: Option<String>,
}

impl Default for Report {
    fn default() -> Self {
        Self {
            mode: Mode::Closed,
            connections_target: 0,
            streams_per_connection: 0,
            request_size: 0,
            response_size: 0,
            client_sockets: 0,
            offered_rate: None,
            connections_established: 0,
            connections_failed: 0,
            connections_lost: 0,
            connect_secs: 0.0,
            handshakes_per_sec: 0.0,
            duration_secs: 0.0,
            requests: 0,
            requests_per_sec: 0.0,
            bytes_received: 0,
            bytes_sent: 0,
            goodput_mbit_per_sec: 0.0,
            latency_us: None,
            handshake_latency_us: None,
            errors: BTreeMap::new(),
            server: None,
            server_cpu_us_per_request: None,
            server_cpu_secs_per_gb: None,
            server_cpu_us_per_handshake: None,
            server_rss_kib_per_connection: None,
            client_cpu_secs: 0.0,
            server_fingerprint: None,
        }
    }
}

impl Report {
    /// Fills the per-unit figures from the totals.
    pub fn derive(&mut self) {
        let Some(s) = self.server else { return };
        if self.requests > 0 {
            self.server_cpu_us_per_request = Some(s.cpu_secs * 1e6 / self.requests as f64);
        }
        if self.bytes_received > 0 {
            self.server_cpu_secs_per_gb = Some(s.cpu_secs / (self.bytes_received as f64 / 1e9));
        }
        if self.mode == Mode::Handshake && self.connections_established > 0 {
            self.server_cpu_us_per_handshake =
                Some(s.cpu_secs * 1e6 / self.connections_established as f64);
        }
        if self.mode != Mode::Handshake && self.connections_established > 0 {
            let grown = if self.mode == Mode::Idle {
                s.rss_end_kib
            } else {
                s.rss_connected_kib
            };
            self.server_rss_kib_per_connection =
                Some((grown as f64 - s.rss_start_kib as f64) / self.connections_established as f64);
        }
    }

    /// The figures as `(name, value)` rows, for tables and comparisons. Missing figures are
    /// left out.
    pub fn figures(&self) -> Vec<(&'static str, f64)> {
        let mut v = vec![
            (
                "connections established",
                self.connections_established as f64,
            ),
            ("connections failed", self.connections_failed as f64),
            ("connections lost", self.connections_lost as f64),
            ("handshakes/s", self.handshakes_per_sec),
            ("requests/s", self.requests_per_sec),
            ("goodput Mbit/s", self.goodput_mbit_per_sec),
        ];
        if let Some(l) = self.latency_us.filter(|l| l.count > 0) {
            v.push(("latency p50 µs", l.p50 as f64));
            v.push(("latency p99 µs", l.p99 as f64));
            v.push(("latency p99.9 µs", l.p999 as f64));
        }
        if let Some(l) = self.handshake_latency_us.filter(|l| l.count > 0) {
            v.push(("handshake p50 µs", l.p50 as f64));
            v.push(("handshake p99 µs", l.p99 as f64));
        }
        v.push(("errors", self.errors.values().sum::<u64>() as f64));
        if let Some(s) = self.server {
            v.push(("server CPU s", s.cpu_secs));
            v.push(("server peak RSS KiB", s.peak_rss_kib as f64));
        }
        if let Some(x) = self.server_cpu_us_per_request {
            v.push(("server CPU µs/request", x));
        }
        if let Some(x) = self.server_cpu_secs_per_gb {
            v.push(("server CPU s/GB", x));
        }
        if let Some(x) = self.server_cpu_us_per_handshake {
            v.push(("server CPU µs/handshake", x));
        }
        if let Some(x) = self.server_rss_kib_per_connection {
            v.push(("server RSS KiB/connection", x));
        }
        v.push(("client CPU s", self.client_cpu_secs));
        v
    }

    /// A two-column markdown table, errors by kind below it.
    pub fn markdown(&self) -> String {
        let mut out = String::from("| figure | value |\n| --- | ---: |\n");
        for (name, value) in self.figures() {
            let _ = writeln!(out, "| {name} | {} |", fmt_num(value));
        }
        for (k, n) in &self.errors {
            let _ = writeln!(out, "\nerror `{k}`: {n}");
        }
        out
    }
}

/// A number with sensible precision for a table.
pub fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 || (v.fract() == 0.0 && v.abs() < 1e15) {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}
