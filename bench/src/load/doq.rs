//! The DNS-over-QUIC load generator behind `doq-load` and `benches/dns.rs`: `connections`
//! quinn client connections (ALPN `doq`, no client certificate, any server certificate
//! accepted but its TLS 1.3 signature checked), `streams` queries in flight on each, closed
//! loop, on loopback.
//!
//! Each query is one bidirectional stream, as RFC 9250 §4.2 has it: the 2-byte length, a DNS
//! query with message ID 0, FIN; the client reads the stream to its end and checks that the
//! bytes are one length-prefixed DNS response with ID 0, rcode NOERROR and exactly one
//! answer (and, with `expect`, that the answer is that IPv4 address). Anything else is
//! counted as an error by kind.
//!
//! A connection carries at most `queries_per_connection` queries (0: no limit); then the
//! client waits for its answers, closes it with `DOQ_NO_ERROR` and opens the next. A
//! connection the server closes with `DOQ_NO_ERROR` (hickory does after 100 queries) is
//! replaced the same way; queries lost with it are counted as `aborted`, not as errors.
//!
//! The run is `warmup` then `duration`; only queries answered inside the measured window
//! count, and the server's CPU (utime + stime of `server_pid` from `/proc`) and this
//! process's are sampled at the window's edges. Every loop stops at the window's end;
//! queries still open then get [`GRACE`] and are abandoned. Handshakes are not timed as
//! queries, but their time is in the window, so reconnecting lowers queries per second.

use super::tls::{AnyServer, client_config};
use alknet_testkit::procstat::cpu_times;
use hdrhistogram::Histogram;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, RecordType};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The DoQ ALPN (RFC 9250 §4.1.1).
pub const ALPN: &[u8] = b"doq";
/// `DOQ_NO_ERROR` (RFC 9250 §4.3): how either side closes a connection it is done with.
const DOQ_NO_ERROR: u32 = 0;
/// Queries still open at the window's end get this long before the run gives up on them.
pub const GRACE: Duration = Duration::from_secs(5);
/// Time a handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest DoQ message: a 2-byte length and up to 65 535 bytes.
const MAX_RESPONSE: usize = 2 + 65_535;

/// What to run.
#[derive(Debug, Clone)]
pub struct DoqConfig {
    /// Server address (loopback only).
    pub server: SocketAddr,
    /// Connections open at once.
    pub connections: usize,
    /// Queries in flight on each connection.
    pub streams: usize,
    /// Queries per connection before the client closes it and opens another; 0: no limit.
    pub queries_per_connection: u64,
    /// Load before the measured window, not counted.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// The name queried (type A).
    pub name: String,
    /// The address the one answer must carry, if checked.
    pub expect: Option<Ipv4Addr>,
    /// Server process whose CPU is sampled.
    pub server_pid: Option<u32>,
}

impl Default for DoqConfig {
    fn default() -> Self {
        Self {
            server: SocketAddr::from(([127, 0, 0, 1], 853)),
            connections: 16,
            streams: 8,
            queries_per_connection: 0,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(4),
            name: "www.gw.example.".into(),
            expect: None,
            server_pid: None,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct DoqReport {
    /// Queries answered correctly inside the window.
    pub queries: u64,
    /// The window, seconds.
    pub secs: f64,
    /// Latency of those queries, µs, from opening the stream to reading its end.
    pub latency: Histogram<u64>,
    /// Failed queries and connections by kind (stage: error), inside the window.
    pub errors: BTreeMap<String, u64>,
    /// Queries lost because the server closed their connection with `DOQ_NO_ERROR`.
    pub aborted: u64,
    /// Handshakes completed inside the window.
    pub handshakes: u64,
    /// Server CPU seconds over the window (utime + stime), if a pid was given.
    pub server_cpu: Option<f64>,
    /// Seconds the server's threads spent runnable but waiting for a CPU over the window
    /// (the run delay of `/proc/PID/task/*/schedstat`): other load on its core.
    pub server_wait: Option<f64>,
    /// This process's CPU seconds over the window.
    pub client_cpu: f64,
}

/// The figures of a [`DoqReport`], for printing and JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DoqSummary {
    /// Queries answered correctly inside the window.
    pub queries: u64,
    /// Queries per second.
    pub qps: f64,
    /// Latency percentiles, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Failed queries and connections.
    pub errors: u64,
    /// The failures by kind.
    pub error_kinds: BTreeMap<String, u64>,
    /// Queries lost to a server's `DOQ_NO_ERROR` close.
    pub aborted: u64,
    /// Handshakes per second.
    pub handshakes_per_sec: f64,
    /// Server CPU µs per answered query.
    pub server_cpu_us_per_query: Option<f64>,
    /// Share of one core the server used.
    pub server_cores: Option<f64>,
    /// Share of the window the server was runnable but kept off its core by other load
    /// (near 0 on a quiet machine; when high, trust CPU per query over queries per second).
    pub server_wait_share: Option<f64>,
    /// Share of one core this client used (near 1.0: the client is the bottleneck).
    pub client_cores: f64,
}

impl DoqReport {
    /// Queries per second.
    pub fn qps(&self) -> f64 {
        self.queries as f64 / self.secs
    }

    /// Failed queries and connections.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Server CPU µs per answered query.
    pub fn server_cpu_us(&self) -> Option<f64> {
        self.server_cpu
            .map(|c| c * 1e6 / self.queries.max(1) as f64)
    }

    /// The figures.
    pub fn summary(&self) -> DoqSummary {
        DoqSummary {
            queries: self.queries,
            qps: self.qps(),
            p50_us: self.latency.value_at_quantile(0.5),
            p99_us: self.latency.value_at_quantile(0.99),
            p999_us: self.latency.value_at_quantile(0.999),
            errors: self.error_count(),
            error_kinds: self.errors.clone(),
            aborted: self.aborted,
            handshakes_per_sec: self.handshakes as f64 / self.secs,
            server_cpu_us_per_query: self.server_cpu_us(),
            server_cores: self.server_cpu.map(|c| c / self.secs),
            server_wait_share: self.server_wait.map(|w| w / self.secs),
            client_cores: self.client_cpu / self.secs,
        }
    }
}

/// The bytes of one DoQ query for `name` type A: the 2-byte length, then the message with
/// ID 0 (RFC 9250 §4.2.1: "the DNS Message ID MUST be set to 0") and no EDNS.
pub fn query_bytes(name: &str) -> anyhow::Result<Vec<u8>> {
    let mut m = Message::new(0, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_str(name)?, RecordType::A));
    let body = m.to_vec()?;
    let len = u16::try_from(body.len())?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks one stream's bytes: one length-prefixed response, ID 0, NOERROR, one answer (that
/// address, when `expect` is set).
pub fn check_response(data: &[u8], expect: Option<Ipv4Addr>) -> Result<(), String> {
    let (len, body) = match data {
        [a, b, body @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), body),
        _ => return Err(format!("response: {} bytes, no length", data.len())),
    };
    if len != body.len() {
        return Err(format!(
            "response: length {len}, {} bytes follow",
            body.len()
        ));
    }
    let m = Message::from_vec(body).map_err(|e| kind("response", &e))?;
    let h = &m.metadata;
    if h.message_type != MessageType::Response {
        return Err("response: not a response".into());
    }
    if h.id != 0 {
        return Err("response: message ID not 0".into());
    }
    if h.response_code != ResponseCode::NoError {
        return Err(format!("response: rcode {}", h.response_code));
    }
    if m.answers.len() != 1 {
        return Err(format!("response: {} answers", m.answers.len()));
    }
    match (expect, &m.answers[0].data) {
        (None, _) => Ok(()),
        (Some(want), RData::A(A(got))) if *got == want => Ok(()),
        (Some(_), other) => Err(format!("response: answer {other}")),
    }
}

/// A short, bounded error label: the stage and the error's first words.
fn kind(stage: &str, e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let cut: String = text.chars().take(48).collect();
    format!("{stage}: {cut}")
}

/// How one query ended.
enum Outcome {
    Answered,
    Failed(String),
    /// The server closed the connection with `DOQ_NO_ERROR`.
    Closed,
    /// The connection is gone for another reason (counted as an error).
    Lost(String),
}

fn classify(stage: &str, e: &quinn::ConnectionError) -> Outcome {
    match e {
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == quinn::VarInt::from_u32(DOQ_NO_ERROR) =>
        {
            Outcome::Closed
        }
        e => Outcome::Lost(kind(stage, e)),
    }
}

async fn query(conn: &quinn::Connection, q: &[u8], expect: Option<Ipv4Addr>) -> Outcome {
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return classify("open", &e),
    };
    match send.write_all(q).await {
        Ok(()) => {}
        Err(quinn::WriteError::ConnectionLost(e)) => return classify("write", &e),
        Err(e) => return Outcome::Failed(kind("write", &e)),
    }
    if let Err(e) = send.finish() {
        return Outcome::Failed(kind("finish", &e));
    }
    match recv.read_to_end(MAX_RESPONSE).await {
        Ok(data) => match check_response(&data, expect) {
            Ok(()) => Outcome::Answered,
            Err(e) => Outcome::Failed(e),
        },
        Err(quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(e))) => {
            classify("read", &e)
        }
        Err(e) => Outcome::Failed(kind("read", &e)),
    }
}

/// What one connection slot brings back.
struct Tally {
    latency: Histogram<u64>,
    queries: u64,
    errors: BTreeMap<String, u64>,
    aborted: u64,
    handshakes: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency: new_histogram(),
            queries: 0,
            errors: BTreeMap::new(),
            aborted: 0,
            handshakes: 0,
        }
    }
    fn error(&mut self, k: String) {
        *self.errors.entry(k).or_default() += 1;
    }
    fn merge(&mut self, o: Tally) {
        let _ = self.latency.add(&o.latency);
        self.queries += o.queries;
        self.aborted += o.aborted;
        self.handshakes += o.handshakes;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

#[allow(clippy::expect_used)]
fn new_histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 1 min, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds")
}

/// The measured window.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn holds(&self, t: Instant) -> bool {
        t >= self.start && t <= self.end
    }
}

/// `streams` query loops on one connection, until the window ends, the per-connection
/// budget is spent or the connection is gone.
async fn on_connection(
    conn: quinn::Connection,
    cfg: Arc<DoqConfig>,
    q: Arc<[u8]>,
    w: Window,
) -> Tally {
    let issued = Arc::new(AtomicU64::new(0));
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..cfg.streams.max(1) {
        let (conn, cfg, q, issued) = (conn.clone(), cfg.clone(), q.clone(), issued.clone());
        loops.spawn(async move {
            let mut t = Tally::new();
            loop {
                if Instant::now() >= w.end {
                    break;
                }
                let budget = cfg.queries_per_connection;
                if budget > 0 && issued.fetch_add(1, Ordering::Relaxed) >= budget {
                    break;
                }
                let t0 = Instant::now();
                let outcome = query(&conn, &q, cfg.expect).await;
                let done = Instant::now();
                let counted = w.holds(done);
                match outcome {
                    Outcome::Answered if counted => {
                        t.queries += 1;
                        let us = u64::try_from((done - t0).as_micros()).unwrap_or(u64::MAX);
                        let _ = t.latency.record(us.max(1));
                    }
                    Outcome::Answered => {}
                    Outcome::Failed(k) => {
                        if counted {
                            t.error(k);
                        }
                    }
                    Outcome::Closed => {
                        if counted {
                            t.aborted += 1;
                        }
                        break;
                    }
                    Outcome::Lost(k) => {
                        if counted {
                            t.error(k);
                        }
                        break;
                    }
                }
            }
            t
        });
    }
    let mut total = Tally::new();
    while let Some(r) = loops.join_next().await {
        if let Ok(t) = r {
            total.merge(t);
        }
    }
    conn.close(quinn::VarInt::from_u32(DOQ_NO_ERROR), b"");
    total
}

/// One connection slot: connect, run queries, replace the connection, until the window ends.
async fn slot(
    ep: quinn::Endpoint,
    cfg: Arc<DoqConfig>,
    client: quinn::ClientConfig,
    q: Arc<[u8]>,
    w: Window,
) -> Tally {
    let mut total = Tally::new();
    while Instant::now() < w.end {
        let connecting = match ep.connect_with(client.clone(), cfg.server, "localhost") {
            Ok(c) => c,
            Err(e) => {
                total.error(kind("connect", &e));
                break;
            }
        };
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                if w.holds(Instant::now()) {
                    total.error(kind("handshake", &e));
                }
                // A refused handshake is not retried in a tight loop.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(_) => {
                total.error("handshake: timed out".into());
                continue;
            }
        };
        if w.holds(Instant::now()) {
            total.handshakes += 1;
        }
        total.merge(on_connection(conn, cfg.clone(), q.clone(), w).await);
    }
    ep.wait_idle().await;
    total
}

/// A client endpoint on its own UDP socket, with the 4 MiB buffers the servers have.
fn endpoint() -> anyhow::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| anyhow::anyhow!("no async runtime found for quinn"))?;
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        sock.into(),
        runtime,
    )?)
}

/// Checks that the server completes a DoQ handshake and answers one query correctly.
/// The error says which step failed (for a server that does not offer `doq`, the handshake).
pub async fn probe(cfg: &DoqConfig) -> anyhow::Result<()> {
    check_loopback(cfg.server)?;
    let ep = endpoint()?;
    let client = client_config(None, ALPN, Arc::new(AnyServer::default()), None)?;
    let conn = tokio::time::timeout(
        CONNECT_TIMEOUT,
        ep.connect_with(client, cfg.server, "localhost")?,
    )
    .await
    .map_err(|_| anyhow::anyhow!("handshake with {} timed out", cfg.server))?
    .map_err(|e| anyhow::anyhow!("handshake with {}: {e}", cfg.server))?;
    let q = query_bytes(&cfg.name)?;
    let r = match query(&conn, &q, cfg.expect).await {
        Outcome::Answered => Ok(()),
        Outcome::Failed(k) | Outcome::Lost(k) => Err(anyhow::anyhow!(
            "the probe query for {} A failed: {k}",
            cfg.name
        )),
        Outcome::Closed => Err(anyhow::anyhow!(
            "the server closed the connection before answering the probe query"
        )),
    };
    conn.close(quinn::VarInt::from_u32(DOQ_NO_ERROR), b"");
    ep.wait_idle().await;
    r
}

/// Seconds the threads of `pid` have spent runnable but waiting for a CPU: the second field
/// of each `/proc/PID/task/TID/schedstat` (run delay, ns), summed. `None` without schedstats.
fn run_delay(pid: u32) -> Option<f64> {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let text = std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok()?;
        ns += text.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e9)
}

fn check_loopback(server: SocketAddr) -> anyhow::Result<()> {
    if !server.ip().is_loopback() {
        anyhow::bail!(
            "{server} is not a loopback address; the DoQ load only targets 127.0.0.1 or ::1"
        );
    }
    Ok(())
}

/// Runs one load test. Must be called inside a tokio runtime.
pub async fn run(cfg: &DoqConfig) -> anyhow::Result<DoqReport> {
    check_loopback(cfg.server)?;
    let q: Arc<[u8]> = query_bytes(&cfg.name)?.into();
    // No client key (the DNS service is anonymous); the client accepts no streams: DoQ
    // servers open none (RFC 9250 §4.2).
    let client = client_config(None, ALPN, Arc::new(AnyServer::default()), None)?;
    let cfg = Arc::new(cfg.clone());
    let start = Instant::now() + cfg.warmup;
    let w = Window {
        start,
        end: start + cfg.duration,
    };
    let mut slots = tokio::task::JoinSet::new();
    for _ in 0..cfg.connections.max(1) {
        slots.spawn(slot(endpoint()?, cfg.clone(), client.clone(), q.clone(), w));
    }
    // The CPU samples at the window's edges, off the query loops.
    let pid = cfg.server_pid;
    let me = std::process::id();
    let sample = move || {
        (
            pid.and_then(|p| cpu_times(p).ok()).map(|c| c.own()),
            pid.and_then(run_delay),
            cpu_times(me).map(|c| c.own()).unwrap_or(0.0),
        )
    };
    let edges = tokio::spawn(async move {
        tokio::time::sleep_until(w.start.into()).await;
        let a = (Instant::now(), sample());
        tokio::time::sleep_until(w.end.into()).await;
        let b = (Instant::now(), sample());
        (a, b)
    });
    let mut total = Tally::new();
    let collect = async {
        while let Some(r) = slots.join_next().await {
            if let Ok(t) = r {
                total.merge(t);
            }
        }
    };
    let limit = cfg.warmup + cfg.duration + GRACE + CONNECT_TIMEOUT;
    if tokio::time::timeout(limit, collect).await.is_err() {
        slots.abort_all();
        total.error("run: queries still open after the grace period".into());
    }
    let ((t0, (s0, d0, c0)), (t1, (s1, d1, c1))) = edges.await?;
    Ok(DoqReport {
        queries: total.queries,
        secs: (t1 - t0).as_secs_f64(),
        latency: total.latency,
        errors: total.errors,
        aborted: total.aborted,
        handshakes: total.handshakes,
        server_cpu: s0.zip(s1).map(|(a, b)| b - a),
        server_wait: d0.zip(d1).map(|(a, b)| b - a),
        client_cpu: c1 - c0,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn query_is_length_prefixed_with_id_zero() {
        let q = query_bytes("www.gw.example.").unwrap();
        let len = usize::from(u16::from_be_bytes([q[0], q[1]]));
        assert_eq!(len, q.len() - 2);
        // ID 0, no flags but opcode QUERY, one question.
        assert_eq!(&q[2..8], &[0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn a_query_is_not_a_response() {
        let q = query_bytes("www.gw.example.").unwrap();
        assert_eq!(
            check_response(&q, None).unwrap_err(),
            "response: not a response"
        );
        assert!(check_response(&q[..1], None).is_err());
        assert!(check_response(&q[..q.len() - 1], None).is_err());
    }

    #[test]
    fn one_answer_with_the_expected_address_passes() {
        let mut m = Message::new(0, MessageType::Response, OpCode::Query);
        let name = Name::from_str("www.gw.example.").unwrap();
        m.add_query(Query::query(name.clone(), RecordType::A));
        let ip = Ipv4Addr::new(192, 0, 2, 10);
        m.answers.push(hickory_proto::rr::Record::from_rdata(
            name,
            300,
            RData::A(A(ip)),
        ));
        let body = m.to_vec().unwrap();
        let mut data = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        data.extend_from_slice(&body);
        assert_eq!(check_response(&data, Some(ip)), Ok(()));
        assert!(check_response(&data, Some(Ipv4Addr::LOCALHOST)).is_err());
    }
}
