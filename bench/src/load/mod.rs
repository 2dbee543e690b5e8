//! The load generator behind `alknet-load`: many quinn client connections, spread over several
//! UDP sockets, speaking the perf protocol (8-byte big-endian response size, request body,
//! finish; the server answers with that many bytes) to a server on loopback.
//!
//! A run has two phases. The *connect* phase opens every connection (a bounded number of
//! handshakes at once) and samples the server's memory before and after. The *measured* phase
//! runs for the configured duration in one [`Mode`]: closed loop (each stream slot sends its
//! next request when the last one completes), open loop (requests start on a fixed schedule
//! whatever the server does, and latency counts from the scheduled start, so a slow server
//! cannot hide its queueing), handshake-only (connect, close, repeat), or idle (hold the
//! connections open and send nothing). Server CPU seconds are the difference of
//! `/proc/<pid>/stat` over the measured phase.
//!
//! Every loop is bounded by the deadline; requests still in flight at the deadline get a grace
//! period and are then abandoned, and the whole run has a hard ceiling, so a stuck server
//! cannot hang the generator. Only loopback addresses are accepted.

pub mod doq;
pub mod quinn_server;
pub mod report;
pub mod sys;
pub mod tls;

use bytes::Bytes;
use hdrhistogram::Histogram;
pub use report::{Latency, Report, ServerUsage};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tls::{AnyServer, ClientKey};
use tokio::sync::Semaphore;

/// How requests are issued in the measured phase.
#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Each stream slot sends its next request when its last one completes.
    Closed,
    /// Requests start at a fixed total rate (`rate`), whether or not earlier ones finished.
    Open,
    /// Connect, complete the handshake, close; repeat. No requests.
    Handshake,
    /// Open the connections and hold them without traffic (keep-alives only).
    Idle,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Server address (loopback only).
    pub server: SocketAddr,
    /// ALPN offered.
    pub alpn: Vec<u8>,
    /// Connections (for `handshake`: concurrent connect loops).
    pub connections: usize,
    /// Concurrent request slots per connection (closed loop).
    pub streams: usize,
    /// Request body bytes after the 8-byte header.
    pub request_size: u64,
    /// Response bytes asked for.
    pub response_size: u64,
    /// Length of the measured phase.
    pub duration: Duration,
    /// Request discipline.
    pub mode: Mode,
    /// Total requests per second in open-loop mode.
    pub rate: f64,
    /// Connections per client UDP socket.
    pub conns_per_socket: usize,
    /// Handshakes in flight at once during the connect phase.
    pub connect_concurrency: usize,
    /// Keep-alive interval (idle mode needs one when the hold exceeds the idle timeout).
    pub keep_alive: Option<Duration>,
    /// Server process to sample for CPU and memory.
    pub server_pid: Option<u32>,
    /// Print a progress line to stderr every second.
    pub progress: bool,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            server: SocketAddr::from(([127, 0, 0, 1], 4433)),
            alpn: b"perf".to_vec(),
            connections: 1,
            streams: 1,
            request_size: 0,
            response_size: 0,
            duration: Duration::from_secs(10),
            mode: Mode::Closed,
            rate: 1000.0,
            conns_per_socket: 500,
            connect_concurrency: 128,
            keep_alive: None,
            server_pid: None,
            progress: true,
        }
    }
}

/// Requests still in flight at the deadline get this long to finish before they are dropped.
const GRACE: Duration = Duration::from_secs(5);
/// Time a single handshake may take in the connect phase.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Open-loop requests in flight per connection above which new ones are skipped (and counted
/// as `overload` errors) instead of piling up without bound.
const OPEN_MAX_IN_FLIGHT: usize = 1024;

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Live counters shared by the workers and the progress line.
#[derive(Default)]
struct Live {
    requests: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    errors: AtomicU64,
    established: AtomicU64,
    failed: AtomicU64,
}

/// What one worker brings back.
struct Tally {
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency: new_histogram(),
            errors: BTreeMap::new(),
        }
    }
    fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }
    fn merge(&mut self, o: Tally) {
        let _ = self.latency.add(&o.latency);
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

// The bounds are constants hdrhistogram accepts; construction cannot fail.
#[allow(clippy::expect_used)]
fn new_histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// A short, bounded error label: the stage and the error's first words.
fn kind(stage: &str, e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let cut: String = text.chars().take(48).collect();
    format!("{stage}: {cut}")
}

/// Client endpoints, one UDP socket each, with large socket buffers.
fn endpoints(n: usize) -> anyhow::Result<Vec<quinn::Endpoint>> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| anyhow::anyhow!("no async runtime found for quinn"))?;
    (0..n)
        .map(|_| {
            let sock = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )?;
            let _ = sock.set_recv_buffer_size(4 << 20);
            let _ = sock.set_send_buffer_size(4 << 20);
            sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
            let ep = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                sock.into(),
                runtime.clone(),
            )?;
            Ok(ep)
        })
        .collect()
}

/// One perf request; returns the response bytes received.
async fn request(
    conn: &quinn::Connection,
    request_size: u64,
    response_size: u64,
    live: &Live,
) -> Result<u64, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| kind("open", &e))?;
    send.write_all(&response_size.to_be_bytes())
        .await
        .map_err(|e| kind("write", &e))?;
    let mut left = request_size;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(ZEROS.len());
        send.write_chunk(Bytes::from_static(&ZEROS[..n]))
            .await
            .map_err(|e| kind("write", &e))?;
        left -= n as u64;
    }
    live.bytes_out
        .fetch_add(request_size + 8, Ordering::Relaxed);
    send.finish().map_err(|e| kind("finish", &e))?;
    let mut got = 0u64;
    while let Some(chunk) = recv
        .read_chunk(usize::MAX, true)
        .await
        .map_err(|e| kind("read", &e))?
    {
        got += chunk.bytes.len() as u64;
        live.bytes_in
            .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
    }
    if got != response_size {
        return Err(format!("response: {got} bytes instead of {response_size}"));
    }
    Ok(got)
}

fn progress_task(
    live: Arc<Live>,
    started: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = (0u64, 0u64, Instant::now());
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        // Bounded: the run's hard ceiling aborts this task, and `stop` ends it sooner.
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let now = Instant::now();
            let req = live.requests.load(Ordering::Relaxed);
            let bytes = live.bytes_in.load(Ordering::Relaxed);
            let dt = now.duration_since(last.2).as_secs_f64().max(1e-6);
            eprintln!(
                "[{:>6.1}s] conns {} ok / {} failed | requests {} ({:.0}/s) | {:.1} Mbit/s in | errors {}",
                now.duration_since(started).as_secs_f64(),
                live.established.load(Ordering::Relaxed),
                live.failed.load(Ordering::Relaxed),
                req,
                (req - last.0) as f64 / dt,
                (bytes - last.1) as f64 * 8.0 / dt / 1e6,
                live.errors.load(Ordering::Relaxed),
            );
            last = (req, bytes, now);
        }
    })
}

/// Runs one load test. Must be called inside a tokio runtime.
pub async fn run(cfg: &LoadConfig, key: Option<&ClientKey>) -> anyhow::Result<Report> {
    if !cfg.server.ip().is_loopback() {
        anyhow::bail!(
            "{} is not a loopback address; alknet-load only targets 127.0.0.1 or ::1",
            cfg.server
        );
    }
    let hard_limit = cfg.duration + CONNECT_TIMEOUT * 4 + GRACE * 2 + Duration::from_secs(60);
    match tokio::time::timeout(hard_limit, run_inner(cfg, key)).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!("load run exceeded its hard limit of {hard_limit:?}"),
    }
}

async fn run_inner(cfg: &LoadConfig, key: Option<&ClientKey>) -> anyhow::Result<Report> {
    let verifier = Arc::new(AnyServer::default());
    let client_cfg = tls::client_config(key, &cfg.alpn, verifier.clone(), cfg.keep_alive)?;
    let n_sockets = cfg.connections.div_ceil(cfg.conns_per_socket.max(1)).max(1);
    let mut eps = endpoints(n_sockets)?;
    for ep in &mut eps {
        ep.set_default_client_config(client_cfg.clone());
    }
    let pid = cfg.server_pid.map(|p| p.to_string());
    let sample = || pid.as_deref().and_then(sys::sample);
    let self_start = sys::sample("self");
    let live = Arc::new(Live::default());
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let progress = cfg
        .progress
        .then(|| progress_task(live.clone(), started, stop.clone()));

    let before_connect = sample();
    let mut report = Report {
        mode: cfg.mode,
        connections_target: cfg.connections,
        streams_per_connection: cfg.streams,
        request_size: cfg.request_size,
        response_size: cfg.response_size,
        client_sockets: n_sockets,
        ..Report::default()
    };
    let mut tally = Tally::new();

    if cfg.mode == Mode::Handshake {
        let t0 = Instant::now();
        let deadline = t0 + cfg.duration;
        let mut tasks = Vec::with_capacity(cfg.connections);
        for i in 0..cfg.connections {
            let ep = eps[i % eps.len()].clone();
            let live = live.clone();
            let server = cfg.server;
            tasks.push(tokio::spawn(async move {
                let mut t = Tally::new();
                while Instant::now() < deadline {
                    let h0 = Instant::now();
                    match connect(&ep, server).await {
                        Ok(conn) => {
                            let _ = t.latency.record(micros(h0.elapsed()));
                            live.established.fetch_add(1, Ordering::Relaxed);
                            conn.close(0u32.into(), b"");
                        }
                        Err(e) => {
                            live.failed.fetch_add(1, Ordering::Relaxed);
                            live.errors.fetch_add(1, Ordering::Relaxed);
                            t.error(e);
                        }
                    }
                }
                t
            }));
        }
        let cpu0 = before_connect;
        collect(tasks, deadline, &mut tally).await;
        let elapsed = t0.elapsed();
        let after = sample();
        report.duration_secs = elapsed.as_secs_f64();
        report.connections_established = live.established.load(Ordering::Relaxed);
        report.connections_failed = live.failed.load(Ordering::Relaxed);
        report.handshakes_per_sec =
            report.connections_established as f64 / report.duration_secs.max(1e-9);
        report.handshake_latency_us = Some(Latency::from(&tally.latency));
        report.server = usage(cpu0, cpu0, after);
    } else {
        // Connect phase.
        let t0 = Instant::now();
        let gate = Arc::new(Semaphore::new(cfg.connect_concurrency.max(1)));
        let mut tasks = Vec::with_capacity(cfg.connections);
        for i in 0..cfg.connections {
            let ep = eps[i % eps.len()].clone();
            let gate = gate.clone();
            let live = live.clone();
            let server = cfg.server;
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.ok();
                let h0 = Instant::now();
                let r = connect(&ep, server).await;
                match &r {
                    Ok(_) => live.established.fetch_add(1, Ordering::Relaxed),
                    Err(_) => live.failed.fetch_add(1, Ordering::Relaxed),
                };
                r.map(|c| (c, h0.elapsed()))
            }));
        }
        let mut conns = Vec::with_capacity(cfg.connections);
        let mut hs = new_histogram();
        for t in tasks {
            match t.await {
                Ok(Ok((c, d))) => {
                    let _ = hs.record(micros(d));
                    conns.push(c);
                }
                Ok(Err(e)) => tally.error(e),
                Err(e) => tally.error(kind("task", &e)),
            }
        }
        let connect_secs = t0.elapsed().as_secs_f64();
        report.connect_secs = connect_secs;
        report.connections_established = conns.len() as u64;
        report.connections_failed = live.failed.load(Ordering::Relaxed);
        report.handshakes_per_sec = conns.len() as f64 / connect_secs.max(1e-9);
        report.handshake_latency_us = Some(Latency::from(&hs));
        let connected = sample();

        // Measured phase.
        let m0 = Instant::now();
        let deadline = m0 + cfg.duration;
        match cfg.mode {
            Mode::Idle => {
                while Instant::now() < deadline {
                    tokio::time::sleep(
                        deadline
                            .saturating_duration_since(Instant::now())
                            .min(Duration::from_millis(500)),
                    )
                    .await;
                }
                for c in &conns {
                    if let Some(reason) = c.close_reason() {
                        report.connections_lost += 1;
                        tally.error(kind("lost while idle", &reason));
                    }
                }
            }
            Mode::Closed => {
                let mut tasks = Vec::new();
                for c in &conns {
                    for _ in 0..cfg.streams.max(1) {
                        tasks.push(tokio::spawn(closed_worker(
                            c.clone(),
                            cfg.request_size,
                            cfg.response_size,
                            deadline,
                            live.clone(),
                        )));
                    }
                }
                collect(tasks, deadline, &mut tally).await;
            }
            Mode::Open => {
                let per_conn = cfg.rate / conns.len().max(1) as f64;
                report.offered_rate = Some(cfg.rate);
                let mut tasks = Vec::new();
                for (i, c) in conns.iter().enumerate() {
                    tasks.push(tokio::spawn(open_worker(
                        c.clone(),
                        cfg.request_size,
                        cfg.response_size,
                        per_conn,
                        // Spread the connections' schedules over one interval.
                        i as f64 / conns.len().max(1) as f64,
                        m0,
                        deadline,
                        live.clone(),
                    )));
                }
                collect(tasks, deadline, &mut tally).await;
            }
            Mode::Handshake => {}
        }
        let elapsed = m0.elapsed();
        let after = sample();
        report.duration_secs = elapsed.as_secs_f64();
        report.server = usage(before_connect, connected, after);
        for c in &conns {
            c.close(0u32.into(), b"");
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        p.abort();
    }
    report.requests = live.requests.load(Ordering::Relaxed);
    report.requests_per_sec = report.requests as f64 / report.duration_secs.max(1e-9);
    report.bytes_received = live.bytes_in.load(Ordering::Relaxed);
    report.bytes_sent = live.bytes_out.load(Ordering::Relaxed);
    report.goodput_mbit_per_sec =
        report.bytes_received as f64 * 8.0 / report.duration_secs.max(1e-9) / 1e6;
    if cfg.mode != Mode::Handshake {
        report.latency_us = Some(Latency::from(&tally.latency));
    }
    report.errors = tally.errors;
    report.server_fingerprint = verifier.seen.lock().ok().and_then(|g| g.clone());
    if let (Some(a), Some(b)) = (self_start, sys::sample("self")) {
        report.client_cpu_secs = b.cpu_secs - a.cpu_secs;
    }
    report.derive();
    // Let the close frames leave; bounded.
    for ep in &eps {
        let _ = tokio::time::timeout(Duration::from_millis(500), ep.wait_idle()).await;
    }
    Ok(report)
}

async fn connect(ep: &quinn::Endpoint, server: SocketAddr) -> Result<quinn::Connection, String> {
    let connecting = ep
        .connect(server, "alknet")
        .map_err(|e| kind("connect", &e))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(kind("handshake", &e)),
        Err(_) => Err("handshake: no answer within 15s".into()),
    }
}

fn usage(
    start: Option<sys::ProcSample>,
    measured_from: Option<sys::ProcSample>,
    end: Option<sys::ProcSample>,
) -> Option<ServerUsage> {
    let (s, m, e) = (start?, measured_from?, end?);
    Some(ServerUsage {
        cpu_secs: e.cpu_secs - m.cpu_secs,
        connect_cpu_secs: m.cpu_secs - s.cpu_secs,
        rss_start_kib: s.rss_kib,
        rss_connected_kib: m.rss_kib,
        rss_end_kib: e.rss_kib,
        peak_rss_kib: e.peak_rss_kib,
    })
}

/// Waits for the workers until the deadline plus the grace period, then abandons the rest.
async fn collect(tasks: Vec<tokio::task::JoinHandle<Tally>>, deadline: Instant, into: &mut Tally) {
    let until = tokio::time::Instant::from_std(deadline + GRACE);
    for t in tasks {
        let abort = t.abort_handle();
        match tokio::time::timeout_at(until, t).await {
            Ok(Ok(tally)) => into.merge(tally),
            Ok(Err(e)) if e.is_cancelled() => {}
            Ok(Err(e)) => into.error(kind("task", &e)),
            Err(_) => {
                abort.abort();
                into.error("abandoned after grace period".into());
            }
        }
    }
}

async fn closed_worker(
    conn: quinn::Connection,
    request_size: u64,
    response_size: u64,
    deadline: Instant,
    live: Arc<Live>,
) -> Tally {
    let mut t = Tally::new();
    while Instant::now() < deadline {
        let r0 = Instant::now();
        match request(&conn, request_size, response_size, &live).await {
            Ok(_) => {
                let _ = t.latency.record(micros(r0.elapsed()));
                live.requests.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                live.errors.fetch_add(1, Ordering::Relaxed);
                t.error(e);
                if conn.close_reason().is_some() {
                    break;
                }
            }
        }
    }
    t
}

#[allow(clippy::too_many_arguments)]
async fn open_worker(
    conn: quinn::Connection,
    request_size: u64,
    response_size: u64,
    rate: f64,
    phase: f64,
    start: Instant,
    deadline: Instant,
    live: Arc<Live>,
) -> Tally {
    let mut t = Tally::new();
    if rate <= 0.0 {
        return t;
    }
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next = start + interval.mul_f64(phase);
    let mut inflight: tokio::task::JoinSet<Result<Duration, String>> = tokio::task::JoinSet::new();
    while next < deadline {
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {
                let scheduled = next;
                next += interval;
                if inflight.len() >= OPEN_MAX_IN_FLIGHT {
                    live.errors.fetch_add(1, Ordering::Relaxed);
                    t.error("overload: too many requests in flight".into());
                    continue;
                }
                let conn = conn.clone();
                let live = live.clone();
                inflight.spawn(async move {
                    request(&conn, request_size, response_size, &live).await?;
                    // Latency from the scheduled start: queueing behind a slow server counts.
                    Ok(scheduled.elapsed())
                });
            }
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                finish_open(done, &mut t, &live);
            }
        }
    }
    let until = tokio::time::Instant::from_std(deadline + GRACE);
    while let Ok(Some(done)) = tokio::time::timeout_at(until, inflight.join_next()).await {
        finish_open(done, &mut t, &live);
    }
    if !inflight.is_empty() {
        t.error("abandoned after grace period".into());
        inflight.abort_all();
    }
    t
}

fn finish_open(
    done: Result<Result<Duration, String>, tokio::task::JoinError>,
    t: &mut Tally,
    live: &Live,
) {
    match done {
        Ok(Ok(d)) => {
            let _ = t.latency.record(micros(d));
            live.requests.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(e)) => {
            live.errors.fetch_add(1, Ordering::Relaxed);
            t.error(e);
        }
        Err(e) => t.error(kind("task", &e)),
    }
}
