//! The Prometheus endpoint: `GET /metrics` in the text exposition format (version 0.0.4),
//! from the same counters `alknet stats` reads, on a small HTTP/1.1 server of its own.
//!
//! Off unless `[metrics] listen` is set; the config refuses a non-loopback address without
//! `allow_remote = true` (the figures tell a scanner how busy the gateway is and which
//! services it runs).
//!
//! Bounds: at most [`MAX_CLIENTS`] clients at once, each on a thread of its own (more are
//! answered 503 and closed); a request head of at most [`MAX_REQUEST`] bytes, whole within
//! [`READ_DEADLINE`]; one request per connection (`Connection: close`). The request parser
//! ([`parse_request`]) is sans-IO and fuzzed (`fuzz/fuzz_targets/metrics_request.rs`).
//!
//! Not here: the counters themselves (`ops/stats.rs`, `ops/memory.rs`, the store's commit
//! histogram).

use crate::identity::store::RedbStore;
use crate::net::server::ControlHandle;
use crate::ops::control::ServerInfo;
use crate::ops::stats::{HistogramSnapshot, LATENCY_BUCKETS, StatsSnapshot};
use serde::Serialize;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest request head (request line and headers), in bytes.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Clients served at once; a scrape takes milliseconds.
pub const MAX_CLIENTS: usize = 4;
/// Time a client has to send its whole request head.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);
/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The method, as sent.
    pub method: String,
    /// The path, without a query string.
    pub path: String,
}

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// Not an HTTP/1.x request head (400).
    Malformed,
    /// Longer than [`MAX_REQUEST`] (431).
    TooLarge,
}

/// Parses a request head from the bytes received so far: `Ok(None)` while it is
/// incomplete. Only the request line is interpreted; header lines are checked for shape
/// (`name: value`) and otherwise ignored, and a body is never read.
pub fn parse_request(buf: &[u8]) -> Result<Option<HttpRequest>, HttpError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= MAX_REQUEST {
            Err(HttpError::TooLarge)
        } else {
            Ok(None)
        };
    };
    if end + 4 > MAX_REQUEST {
        return Err(HttpError::TooLarge);
    }
    let head = buf.get(..end).ok_or(HttpError::Malformed)?;
    let head = std::str::from_utf8(head).map_err(|_| HttpError::Malformed)?;
    let mut lines = head.split("\r\n");
    let line = lines.next().ok_or(HttpError::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed);
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Malformed);
    }
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Err(HttpError::Malformed);
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(HttpError::Malformed);
    }
    for header in lines {
        let Some((name, _)) = header.split_once(':') else {
            return Err(HttpError::Malformed);
        };
        if name.is_empty() || name.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(HttpError::Malformed);
        }
    }
    let path = target.split('?').next().unwrap_or(target);
    Ok(Some(HttpRequest {
        method: method.to_owned(),
        path: path.to_owned(),
    }))
}

/// The response to a parsed request (or a refusal): status line, headers and body. `body`
/// is called only for a scrape.
pub fn respond(request: Result<HttpRequest, HttpError>, body: impl FnOnce() -> String) -> Vec<u8> {
    let (status, content_type, text, head_only) = match request {
        Err(HttpError::Malformed) => (
            "400 Bad Request",
            "text/plain",
            "bad request\n".into(),
            false,
        ),
        Err(HttpError::TooLarge) => (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request head too large\n".into(),
            false,
        ),
        Ok(r) if r.path != "/metrics" => (
            "404 Not Found",
            "text/plain",
            "not found; metrics are at /metrics\n".into(),
            r.method == "HEAD",
        ),
        Ok(r) if r.method == "GET" || r.method == "HEAD" => {
            ("200 OK", CONTENT_TYPE, body(), r.method == "HEAD")
        }
        Ok(_) => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET and HEAD\n".into(),
            false,
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        text.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(text.as_bytes());
    }
    out
}

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// The full sample name (a histogram's carry `_bucket`, `_sum`, `_count`).
    pub name: String,
    /// Label pairs.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// A metric family: name, help, kind and its samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Family {
    /// The family name.
    pub name: &'static str,
    /// One line for people.
    pub help: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Its values.
    pub samples: Vec<Sample>,
}

impl Family {
    fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn with(mut self, labels: &[(&str, &str)], value: u64) -> Self {
        self.samples.push(Sample {
            name: self.name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value: value as f64,
        });
        self
    }

    fn one(name: &'static str, kind: Kind, help: &'static str, value: u64) -> Self {
        Self::new(name, kind, help).with(&[], value)
    }

    fn per_shard(
        name: &'static str,
        kind: Kind,
        help: &'static str,
        shards: &[StatsSnapshot],
        f: impl Fn(&StatsSnapshot) -> u64,
    ) -> Self {
        let mut fam = Self::new(name, kind, help);
        for (i, s) in shards.iter().enumerate() {
            fam = fam.with(&[("shard", &i.to_string())], f(s));
        }
        fam
    }

    fn histogram(name: &'static str, help: &'static str, h: &HistogramSnapshot) -> Self {
        let mut fam = Self::new(name, Kind::Histogram, help);
        let mut cumulative = 0u64;
        for (bound, n) in LATENCY_BUCKETS.iter().zip(h.buckets.iter()) {
            cumulative = cumulative.saturating_add(*n);
            fam.samples.push(Sample {
                name: format!("{name}_bucket"),
                labels: vec![("le".into(), format_float(*bound))],
                value: cumulative as f64,
            });
        }
        fam.samples.push(Sample {
            name: format!("{name}_bucket"),
            labels: vec![("le".into(), "+Inf".into())],
            value: h.count as f64,
        });
        fam.samples.push(Sample {
            name: format!("{name}_sum"),
            labels: Vec::new(),
            value: h.sum_seconds,
        });
        fam.samples.push(Sample {
            name: format!("{name}_count"),
            labels: Vec::new(),
            value: h.count as f64,
        });
        fam
    }
}

/// Everything the endpoint and `alknet stats` report, read now.
pub fn collect(
    handle: &ControlHandle,
    store: Option<&RedbStore>,
    info: &ServerInfo,
) -> Vec<Family> {
    let shards = handle.per_shard();
    let mut total = StatsSnapshot::default();
    for s in &shards {
        total.add(s);
    }
    let (rss, budget, over) = handle.memory();
    let sessions = handle.sessions();
    let commits = store
        .map(RedbStore::commit_latency)
        .unwrap_or_else(|| HistogramSnapshot {
            buckets: vec![0; LATENCY_BUCKETS.len()],
            ..HistogramSnapshot::default()
        });
    families(&Inputs {
        info,
        shards: &shards,
        total: &total,
        rss,
        budget,
        over,
        sessions: &sessions,
        commits: &commits,
    })
}

/// What [`families`] turns into metrics (apart from a server so it can be tested).
struct Inputs<'a> {
    info: &'a ServerInfo,
    shards: &'a [StatsSnapshot],
    total: &'a StatsSnapshot,
    rss: u64,
    budget: u64,
    over: bool,
    sessions: &'a [crate::shard::SessionInfo],
    commits: &'a HistogramSnapshot,
}

fn families(i: &Inputs<'_>) -> Vec<Family> {
    use Kind::{Counter, Gauge};
    let t = i.total;
    let mut by_alpn: std::collections::BTreeMap<(usize, &str), u64> = Default::default();
    for s in i.sessions {
        *by_alpn.entry((s.shard, s.alpn.as_str())).or_default() += 1;
    }
    for alpn in &i.info.alpns {
        for shard in 0..i.shards.len() {
            by_alpn.entry((shard, alpn.as_str())).or_default();
        }
    }
    let mut sessions = Family::new(
        "alknet_sessions",
        Gauge,
        "Authenticated connections being served, by shard and service ALPN.",
    );
    for ((shard, alpn), n) in &by_alpn {
        sessions = sessions.with(&[("shard", &shard.to_string()), ("alpn", alpn)], *n);
    }
    vec![
        Family::new("alknet_build_info", Gauge, "The running build; always 1.")
            .with(&[("version", env!("CARGO_PKG_VERSION"))], 1),
        Family::one("alknet_shards", Gauge, "Worker shards.", i.shards.len() as u64),
        Family::per_shard(
            "alknet_connections",
            Gauge,
            "QUIC connections held, by shard (handshakes included).",
            i.shards,
            |s| s.connections_open,
        ),
        sessions,
        Family::new("alknet_handshakes_total", Counter, "Incoming handshakes by outcome.")
            .with(&[("outcome", "accepted")], t.handshakes_accepted)
            .with(&[("outcome", "established")], t.connections_established)
            .with(&[("outcome", "abandoned")], t.handshakes_abandoned)
            .with(&[("outcome", "failed")], t.handshakes_failed)
            .with(&[("outcome", "timed_out")], t.handshake_timeouts),
        Family::one(
            "alknet_handshakes_in_flight",
            Gauge,
            "Handshakes in progress.",
            t.handshakes_in_flight,
        ),
        Family::new(
            "alknet_auth_failures_total",
            Counter,
            "Clients refused after the handshake, by reason.",
        )
        .with(&[("reason", "unknown_key")], t.auth_unknown_key)
        .with(&[("reason", "no_certificate")], t.auth_no_certificate)
        .with(&[("reason", "peer_disabled")], t.auth_peer_disabled)
        .with(&[("reason", "missing_scope")], t.auth_missing_scope)
        .with(&[("reason", "invite")], t.auth_invite)
        .with(&[("reason", "other")], t.auth_other),
        Family::one(
            "alknet_retries_sent_total",
            Counter,
            "Retry packets sent (handshake cap reached).",
            t.retries_sent,
        ),
        Family::new(
            "alknet_dropped_datagrams_total",
            Counter,
            "Datagrams ignored before QUIC processing, by reason (penalty: a source penalised for failed authentications).",
        )
        .with(&[("reason", "penalty")], t.dropped_penalty)
        .with(&[("reason", "malformed")], t.dropped_malformed)
        .with(&[("reason", "reflection")], t.dropped_reflection)
        .with(&[("reason", "source_cap")], t.dropped_source_cap)
        .with(&[("reason", "token_reuse")], t.dropped_token_reuse)
        .with(&[("reason", "unforwardable")], t.dropped_unforwardable)
        .with(&[("reason", "spoofed_migration")], t.migrations_refused),
        Family::new(
            "alknet_connections_refused_total",
            Counter,
            "Connections refused, by reason.",
        )
        .with(&[("reason", "shard_cap")], t.connections_refused)
        .with(&[("reason", "memory")], t.refused_memory)
        .with(&[("reason", "connection_cap")], t.refused_connection_cap),
        Family::new(
            "alknet_forwarded_datagrams_total",
            Counter,
            "Datagrams passed between shards: sent to, received from, or dropped for another shard.",
        )
        .with(&[("direction", "out")], t.forwarded_out)
        .with(&[("direction", "in")], t.forwarded_in)
        .with(&[("direction", "dropped")], t.forward_dropped),
        Family::per_shard(
            "alknet_received_bytes_total",
            Counter,
            "UDP payload bytes received, by shard.",
            i.shards,
            |s| s.bytes_in,
        ),
        Family::per_shard(
            "alknet_sent_bytes_total",
            Counter,
            "UDP payload bytes sent, by shard.",
            i.shards,
            |s| s.bytes_out,
        ),
        Family::per_shard(
            "alknet_received_datagrams_total",
            Counter,
            "UDP datagrams received, by shard.",
            i.shards,
            |s| s.datagrams_in,
        ),
        Family::per_shard(
            "alknet_sent_datagrams_total",
            Counter,
            "UDP datagrams sent, by shard.",
            i.shards,
            |s| s.datagrams_out,
        ),
        Family::new("alknet_send_stalls_total", Counter, "Sends that found the socket full or failed.")
            .with(&[("kind", "blocked")], t.send_blocked)
            .with(&[("kind", "error")], t.send_errors),
        Family::one(
            "alknet_handler_panics_total",
            Counter,
            "Service handlers that panicked (their connection was closed).",
            t.handler_panics,
        ),
        Family::histogram(
            "alknet_store_commit_duration_seconds",
            "Time to commit a write to the identity store, fsync included.",
            i.commits,
        ),
        Family::one(
            "alknet_memory_resident_bytes",
            Gauge,
            "Resident memory of the process at the last sample.",
            i.rss,
        ),
        Family::one(
            "alknet_memory_budget_bytes",
            Gauge,
            "The memory budget above which new connections are refused.",
            i.budget,
        ),
        Family::one(
            "alknet_memory_over_budget",
            Gauge,
            "1 while the process is over its memory budget.",
            u64::from(i.over),
        ),
    ]
}

/// A float as Prometheus writes it (shortest form that reads back the same).
fn format_float(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A label value escaped as the text format requires (`\`, `"`, newline).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The families in the text exposition format.
pub fn render(families: &[Family]) -> String {
    let mut out = String::with_capacity(8192);
    for f in families {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
        for s in &f.samples {
            out.push_str(&s.name);
            if !s.labels.is_empty() {
                out.push('{');
                for (n, (k, v)) in s.labels.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", format_float(s.value));
        }
    }
    out
}

/// What the endpoint reads on each scrape.
pub struct Source {
    /// The running server.
    pub handle: ControlHandle,
    /// Its store, for the commit histogram.
    pub store: Option<Arc<RedbStore>>,
    /// Its static facts.
    pub info: ServerInfo,
}

/// Binds `listen` and serves `/metrics` on a background thread; the bound address.
pub fn serve(listen: SocketAddr, source: Source) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen)?;
    let bound = listener.local_addr()?;
    let source = Arc::new(source);
    let clients = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("alknet-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                    clients.fetch_sub(1, Ordering::AcqRel);
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = (&stream).write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    continue;
                }
                let source = source.clone();
                let count = clients.clone();
                let spawned = std::thread::Builder::new()
                    .name("alknet-metrics-client".into())
                    .spawn(move || {
                        serve_one(stream, &source);
                        count.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    clients.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
    Ok(bound)
}

fn serve_one(mut stream: TcpStream, source: &Source) {
    let _ = stream.set_write_timeout(Some(READ_DEADLINE));
    let deadline = Instant::now() + READ_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let request = loop {
        match parse_request(&buf) {
            Ok(Some(r)) => break Ok(r),
            Err(e) => break Err(e),
            Ok(None) => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                let room = MAX_REQUEST.saturating_sub(buf.len());
                buf.extend_from_slice(chunk.get(..n.min(room)).unwrap_or(&[]));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    };
    let response = respond(request, || {
        render(&collect(
            &source.handle,
            source.store.as_deref(),
            &source.info,
        ))
    });
    let _ = stream.write_all(&response);
    let _ = stream.flush();
}

/// The oracle of the `metrics_request` fuzz target: any bytes, fed whole and in every
/// prefix, parse without panicking; a prefix of an incomplete head is incomplete too; a
/// parsed path starts with `/` and holds no control byte; the response is well formed.
pub(crate) fn fuzz_request(data: &[u8]) {
    let whole = parse_request(data);
    if let Ok(Some(r)) = &whole {
        assert!(r.path.starts_with('/'));
        assert!(!r.path.bytes().any(|b| b.is_ascii_control()));
    }
    if whole == Ok(None) {
        for cut in (0..data.len()).step_by(97) {
            assert_eq!(parse_request(data.get(..cut).unwrap_or(&[])), Ok(None));
        }
    }
    if let Ok(r) = whole.map(|r| r.ok_or(HttpError::Malformed)).and_then(|r| r) {
        let out = respond(Ok(r), || "x 1\n".into());
        assert!(out.starts_with(b"HTTP/1.1 "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_refusals_are_named() {
        let r = parse_request(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            r,
            Ok(Some(HttpRequest {
                method: "GET".into(),
                path: "/metrics".into()
            }))
        );
        assert_eq!(parse_request(b"GET /metrics HTTP/1.1\r\nHost"), Ok(None));
        assert_eq!(
            parse_request(b"GET metrics HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(
            parse_request(b"GET / HTTP/2\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nnocolon\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(
            parse_request(&vec![b'a'; MAX_REQUEST]),
            Err(HttpError::TooLarge)
        );
        let ok = String::from_utf8(respond(
            Ok(HttpRequest {
                method: "GET".into(),
                path: "/metrics".into(),
            }),
            || "a 1\n".into(),
        ))
        .unwrap_or_default();
        assert!(
            ok.starts_with("HTTP/1.1 200 OK\r\n")
                && ok.contains("Connection: close")
                && ok.ends_with("\r\n\r\na 1\n"),
            "{ok}"
        );
        let nf = String::from_utf8(respond(
            Ok(HttpRequest {
                method: "GET".into(),
                path: "/".into(),
            }),
            String::new,
        ))
        .unwrap_or_default();
        assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
        let na = String::from_utf8(respond(
            Ok(HttpRequest {
                method: "POST".into(),
                path: "/metrics".into(),
            }),
            String::new,
        ))
        .unwrap_or_default();
        assert!(na.starts_with("HTTP/1.1 405"), "{na}");
    }

    #[test]
    fn exposition_has_help_type_and_cumulative_buckets() {
        let info = ServerInfo {
            fingerprint: "f".into(),
            listen: "l".into(),
            workers: 2,
            alpns: vec!["alknet/echo".into()],
        };
        let a = StatsSnapshot {
            bytes_in: 10,
            auth_unknown_key: 3,
            ..StatsSnapshot::default()
        };
        let shards = [a, StatsSnapshot::default()];
        let commits = HistogramSnapshot {
            buckets: vec![1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            count: 4,
            sum_seconds: 3.5,
        };
        let text = render(&families(&Inputs {
            info: &info,
            shards: &shards,
            total: &a,
            rss: 5,
            budget: 6,
            over: false,
            sessions: &[],
            commits: &commits,
        }));
        for line in [
            "# TYPE alknet_received_bytes_total counter",
            "alknet_received_bytes_total{shard=\"0\"} 10",
            "alknet_received_bytes_total{shard=\"1\"} 0",
            "alknet_auth_failures_total{reason=\"unknown_key\"} 3",
            "alknet_sessions{shard=\"1\",alpn=\"alknet/echo\"} 0",
            "alknet_store_commit_duration_seconds_bucket{le=\"0.001\"} 3",
            "alknet_store_commit_duration_seconds_bucket{le=\"+Inf\"} 4",
            "alknet_store_commit_duration_seconds_sum 3.5",
            "# TYPE alknet_store_commit_duration_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn metrics_request_corpus() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/metrics_request");
        let n = alknet_proto::fuzzing::replay_corpus(&dir, crate::fuzzing::fuzz_metrics_request)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(n > 0, "the metrics_request corpus is empty");
    }
}
