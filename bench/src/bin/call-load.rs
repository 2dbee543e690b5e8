//! `call-load`: calls per second, latency and server CPU per call of Alknet's `alknet/call`
//! service beside a tonic (gRPC over HTTP/2 + TLS, tokio) unary echo server, in one run on
//! the same core. See `bench/CALL.md`.
//!
//! Each server runs in a child process (this binary re-run with `--serve`) pinned to one core
//! (`--server-core`, default 0); the clients run here on a tokio current-thread runtime pinned
//! to another (`--client-core`, default 1). The servers run one after the other:
//!
//! * `alknet`: `alknet_core::start` with one worker and the call service serving a unary
//!   `/bench/echo` (returns its input). The client is quinn speaking raw call frames; all calls
//!   of a connection share one bidirectional stream (the `CallClient` default).
//! * `alknet-stream`: the same server; the client opens one stream per call (as HTTP/2 does).
//! * `tonic`: a unary `Echo` (`bytes data = 1`) on tonic with rustls (ring), a self-signed
//!   Ed25519 certificate, tokio with one worker thread. The client is tonic's `Channel`.
//!
//! Scenarios: one connection with `--inflight` calls in flight (closed loop), then
//! `--connections` connections with `--inflight-many` each. Server CPU is the sum of the
//! child's threads' on-CPU time (`/proc/<pid>/task/*/schedstat`) over the measured window.
//! Every phase has a time limit; a child exits when this process closes its stdin or its
//! `--lifetime` passes. Loopback only.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use alknet_bench::load::sys;
use alknet_bench::load::tls::{AnyServer, ClientKey, client_config};
use alknet_proto::call::{Body, CallId, DEFAULT_MAX_FRAME, Decoder, Message, Request, encode_into};
use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ECHO_OP: &str = "/bench/echo";
const GRPC_PATH: &str = "/bench.Echo/Echo";
/// Calls in flight at the end of the window get this long to finish.
const GRACE: Duration = Duration::from_secs(3);
/// One read, write or handshake may take this long before the run is declared broken.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum System {
    /// Alknet, all calls of a connection on one stream.
    Alknet,
    /// Alknet, one stream per call.
    AlknetStream,
    /// tonic unary over HTTP/2 + TLS.
    Tonic,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Alknet => "alknet",
            System::AlknetStream => "alknet-stream",
            System::Tonic => "tonic",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ServeKind {
    Alknet,
    Tonic,
}

#[derive(Debug, Parser)]
#[command(about = "alknet/call against tonic: calls/s, latency, server CPU per call")]
struct Args {
    /// Seconds measured per scenario.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// 3-second scenarios.
    #[arg(long)]
    quick: bool,
    /// Seconds of load before each measured window.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Calls in flight on the single connection.
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// Connections of the second scenario.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Calls in flight per connection in the second scenario.
    #[arg(long, default_value_t = 1)]
    inflight_many: usize,
    /// Payload bytes (a JSON string for Alknet, a protobuf `bytes` field for gRPC).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Core of the servers.
    #[arg(long, default_value_t = 0)]
    server_core: usize,
    /// Core of the clients.
    #[arg(long, default_value_t = 1)]
    client_core: usize,
    /// Systems to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "alknet,alknet-stream,tonic"
    )]
    systems: Vec<System>,
    /// Also write the results as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,

    // ---- child mode ----
    /// Run a server (internal).
    #[arg(long, value_enum, hide = true)]
    serve: Option<ServeKind>,
    /// Fingerprint the Alknet server admits with scope `call` (internal).
    #[arg(long, hide = true)]
    peer: Option<String>,
    /// PEM certificate of the tonic server (internal).
    #[arg(long, hide = true)]
    cert: Option<PathBuf>,
    /// PEM key of the tonic server (internal).
    #[arg(long, hide = true)]
    key: Option<PathBuf>,
    /// Seconds after which a server exits on its own (internal).
    #[arg(long, hide = true, default_value_t = 300)]
    lifetime: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(kind) = args.serve {
        return serve(kind, &args);
    }
    run(args)
}

// ------------------------------------------------------------------------------------------
// Servers (child processes)

fn pin(core: usize) -> Result<()> {
    monoio::utils::bind_to_cpu_set([core]).map_err(|e| anyhow!("cannot pin to core {core}: {e}"))
}

/// Blocks until the parent closes our stdin or `lifetime` passes.
fn wait_for_parent(lifetime: Duration) {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(lifetime);
}

fn ready(port: u16) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {port}")?;
    out.flush()?;
    Ok(())
}

fn serve(kind: ServeKind, args: &Args) -> Result<()> {
    pin(args.server_core)?;
    let lifetime = Duration::from_secs(args.lifetime);
    match kind {
        ServeKind::Alknet => serve_alknet(args, lifetime),
        ServeKind::Tonic => serve_tonic(args, lifetime),
    }
}

fn serve_alknet(args: &Args, lifetime: Duration) -> Result<()> {
    use alknet_call::{CallService, Operations};
    use alknet_core::config::Config;
    use alknet_core::identity::MemoryIdentities;
    use alknet_core::identity::tls::NodeKey;
    use alknet_core::{PeerEntry, Registry};

    let peer: alknet_proto::Fingerprint = args
        .peer
        .as_deref()
        .context("--peer is required")?
        .parse()
        .map_err(|e| anyhow!("--peer: {e}"))?;
    let config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        workers: 1,
        // The whole process is pinned to the server core already.
        pin_workers: false,
        ..Config::default()
    };
    let mut ops = Operations::new();
    ops.unary(
        ECHO_OP,
        "returns its input",
        None,
        |_c, v: Value| async move { Ok(v) },
    )?;
    let key = NodeKey::generate();
    let mut registry = Registry::new();
    registry.register(
        CallService::new().with_operations(ops)?,
        alknet_core::NoConfig {},
    )?;
    let peers = [PeerEntry {
        peer_id: "call-load".into(),
        fingerprints: vec![peer],
        auth_token_hash: None,
        scopes: vec![alknet_call::SCOPE.into()],
        resources: vec![],
        display_name: None,
        ssh_keys: Vec::new(),
        enabled: true,
    }];
    let handle = alknet_core::start(
        Arc::new(config),
        key,
        registry,
        Arc::new(MemoryIdentities::with_peers(peers)),
    )?;
    ready(handle.local_addr().port())?;
    wait_for_parent(lifetime);
    handle.shutdown();
    Ok(())
}

/// The gRPC message: `message Echo { bytes data = 1; }`.
#[derive(Clone, PartialEq, prost::Message)]
struct EchoMsg {
    #[prost(bytes = "vec", tag = "1")]
    data: Vec<u8>,
}

type EchoCodec = tonic_prost::ProstCodec<EchoMsg, EchoMsg>;

/// The unary handler: returns its input.
struct EchoUnary;

impl tonic::server::UnaryService<EchoMsg> for EchoUnary {
    type Response = EchoMsg;
    type Future = std::future::Ready<Result<tonic::Response<EchoMsg>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<EchoMsg>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(request.into_inner())))
    }
}

/// What `tonic-build` would generate for `service Echo { rpc Echo(Echo) returns (Echo); }`,
/// written out so that no `protoc` is needed.
#[derive(Clone)]
struct EchoService;

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for EchoService {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() == GRPC_PATH {
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(EchoCodec::default());
                Ok(grpc.unary(EchoUnary, req).await)
            })
        } else {
            Box::pin(async move {
                let mut res = tonic::codegen::http::Response::new(tonic::body::Body::default());
                let h = res.headers_mut();
                h.insert("grpc-status", (tonic::Code::Unimplemented as i32).into());
                h.insert(
                    "content-type",
                    tonic::codegen::http::HeaderValue::from_static("application/grpc"),
                );
                Ok(res)
            })
        }
    }
}

fn serve_tonic(args: &Args, lifetime: Duration) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = std::fs::read(args.cert.as_ref().context("--cert is required")?)?;
    let key = std::fs::read(args.key.as_ref().context("--key is required")?)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        ready(listener.local_addr()?.port())?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            wait_for_parent(lifetime);
            let _ = tx.send(());
        });
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert, key));
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .tls_config(tls)?
            .serve_with_incoming_shutdown(EchoService, incoming, async move {
                let _ = rx.await;
            })
            .await?;
        Ok::<_, anyhow::Error>(())
    })?;
    // Connections still open must not hold the process.
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// A server child: killed (by its own pid) if it outlives its handle.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn spawn(kind: ServeKind, extra: &[String], core: usize, lifetime: u64) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let kind = match kind {
            ServeKind::Alknet => "alknet",
            ServeKind::Tonic => "tonic",
        };
        let mut child = Command::new(exe)
            .args(["--serve", kind, "--server-core", &core.to_string()])
            .args(["--lifetime", &lifetime.to_string()])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{kind} server did not start within 30 s");
            }
        };
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| anyhow!("{kind} server said {line:?}"))?;
        Ok(Self { child, port })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// On-CPU nanoseconds of every thread of `pid` (`schedstat`'s first field).
fn proc_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total += text.split_ascii_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

#[derive(Clone, Copy)]
struct CpuMark {
    server_ns: u64,
    server_stat_secs: f64,
    client_secs: f64,
    at: Instant,
}

fn mark(pid: u32) -> CpuMark {
    CpuMark {
        server_ns: proc_cpu_ns(pid).unwrap_or(0),
        server_stat_secs: sys::sample(&pid.to_string()).map_or(0.0, |s| s.cpu_secs),
        client_secs: sys::sample("self").map_or(0.0, |s| s.cpu_secs),
        at: Instant::now(),
    }
}

// ------------------------------------------------------------------------------------------
// Clients

/// The measured window: completions inside it count.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

struct Tally {
    hist: Histogram<u64>,
    calls: u64,
    errors: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds"),
            calls: 0,
            errors: 0,
        }
    }

    fn record(&mut self, w: &Window, started: Instant, done: Instant) {
        if w.contains(done) {
            self.calls += 1;
            let ns = done.duration_since(started).as_nanos();
            let _ = self
                .hist
                .record(u64::try_from(ns).unwrap_or(u64::MAX).max(1));
        }
    }

    fn merge(&mut self, o: Tally) {
        let _ = self.hist.add(&o.hist);
        self.calls += o.calls;
        self.errors += o.errors;
    }
}

/// A `call.requested` frame for `/bench/echo`, encoded once; each call patches in its id.
struct Template {
    bytes: Vec<u8>,
    id_at: usize,
}

impl Template {
    fn new(payload: usize) -> Result<Self> {
        let probe = CallId::from_random([0xab; 16]);
        let mut bytes = Vec::new();
        let input: String = (0..payload)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        encode_into(
            &Message {
                id: probe,
                body: Body::Requested(Request {
                    operation_id: ECHO_OP.into(),
                    input: Value::String(input),
                    auth_token: None,
                    forwarded_for: None,
                }),
            },
            DEFAULT_MAX_FRAME,
            &mut bytes,
        )?;
        let needle = probe.to_string();
        let id_at = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .context("id not found in the encoded frame")?;
        Ok(Self { bytes, id_at })
    }

    fn append(&self, id: CallId, out: &mut Vec<u8>) {
        let at = out.len() + self.id_at;
        out.extend_from_slice(&self.bytes);
        let mut text = [0u8; 36];
        let _ = write!(&mut text[..], "{id}");
        out[at..at + 36].copy_from_slice(&text);
    }
}

fn call_id(conn: usize, n: u64) -> CallId {
    CallId::from_random((((conn as u128) << 64) | u128::from(n)).to_be_bytes())
}

async fn timed<T, E: Into<anyhow::Error>>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => bail!("{what}: no progress within {} s", IO_TIMEOUT.as_secs()),
    }
}

/// All calls of one connection on one stream: `inflight` calls kept in flight by one task.
async fn alknet_shared(
    conn: quinn::Connection,
    index: usize,
    inflight: usize,
    tpl: Arc<Template>,
    w: Window,
) -> Result<Tally> {
    let mut tally = Tally::new();
    let (mut send, mut recv) = timed("open stream", conn.open_bi()).await?;
    let mut started: HashMap<CallId, Instant> = HashMap::with_capacity(inflight * 2);
    let mut n = 0u64;
    let mut out = Vec::new();
    let now = Instant::now();
    for _ in 0..inflight {
        let id = call_id(index, n);
        n += 1;
        tpl.append(id, &mut out);
        started.insert(id, now);
    }
    timed("write", send.write_all(&out)).await?;
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !started.is_empty() {
        let read = tokio::time::timeout_at((w.end + GRACE).into(), recv.read(&mut buf)).await;
        let got = match read {
            Ok(r) => r?.context("server finished the stream")?,
            Err(_) => {
                tally.errors += started.len() as u64;
                break;
            }
        };
        dec.feed(&buf[..got]);
        out.clear();
        let now = Instant::now();
        while let Some(m) = dec.poll()? {
            match m.body {
                Body::Responded { .. } => {}
                Body::Completed => {
                    let Some(t0) = started.remove(&m.id) else {
                        bail!("completion of an unknown call {}", m.id);
                    };
                    tally.record(&w, t0, now);
                    if now < w.end {
                        let id = call_id(index, n);
                        n += 1;
                        tpl.append(id, &mut out);
                        started.insert(id, now);
                    }
                }
                other => {
                    tally.errors += 1;
                    started.remove(&m.id);
                    if tally.errors > 100 {
                        bail!("call failed: {other:?}");
                    }
                }
            }
        }
        if !out.is_empty() {
            timed("write", send.write_all(&out)).await?;
        }
    }
    let _ = send.finish();
    Ok(tally)
}

/// One call per stream: `inflight` tasks each open a stream, send, finish, read to the end.
async fn alknet_streams(
    conn: quinn::Connection,
    index: usize,
    inflight: usize,
    tpl: Arc<Template>,
    w: Window,
) -> Result<Tally> {
    let mut tasks = Vec::new();
    for slot in 0..inflight {
        let conn = conn.clone();
        let tpl = tpl.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            let mut n = 0u64;
            let mut buf = vec![0u8; 16 * 1024];
            let mut out = Vec::new();
            while Instant::now() < w.end {
                let t0 = Instant::now();
                let id = call_id(index * 1024 + slot, n);
                n += 1;
                let (mut send, mut recv) = timed("open stream", conn.open_bi()).await?;
                out.clear();
                tpl.append(id, &mut out);
                timed("write", send.write_all(&out)).await?;
                send.finish()?;
                let mut dec = Decoder::new();
                let mut done = None;
                loop {
                    match timed("read", recv.read(&mut buf)).await? {
                        Some(k) => dec.feed(&buf[..k]),
                        None => break,
                    }
                    while let Some(m) = dec.poll()? {
                        match m.body {
                            Body::Responded { .. } => {}
                            Body::Completed => done = Some(Instant::now()),
                            other => bail!("call failed: {other:?}"),
                        }
                    }
                }
                match done {
                    Some(t) => tally.record(&w, t0, t),
                    None => tally.errors += 1,
                }
            }
            Ok::<_, anyhow::Error>(tally)
        }));
    }
    let mut tally = Tally::new();
    for t in tasks {
        tally.merge(t.await??);
    }
    Ok(tally)
}

async fn tonic_conn(
    channel: tonic::transport::Channel,
    inflight: usize,
    payload: usize,
    w: Window,
) -> Result<Tally> {
    let data: Vec<u8> = (0..payload).map(|i| b'a' + (i % 26) as u8).collect();
    let mut tasks = Vec::new();
    for _ in 0..inflight {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        let msg = EchoMsg { data: data.clone() };
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(GRPC_PATH);
            while Instant::now() < w.end {
                let t0 = Instant::now();
                timed("ready", grpc.ready()).await?;
                let res = timed(
                    "call",
                    grpc.unary(
                        tonic::Request::new(msg.clone()),
                        path.clone(),
                        EchoCodec::default(),
                    ),
                )
                .await;
                match res {
                    Ok(r) if r.get_ref().data.len() == msg.data.len() => {
                        tally.record(&w, t0, Instant::now())
                    }
                    _ => tally.errors += 1,
                }
            }
            Ok::<_, anyhow::Error>(tally)
        }));
    }
    let mut tally = Tally::new();
    for t in tasks {
        tally.merge(t.await??);
    }
    Ok(tally)
}

// ------------------------------------------------------------------------------------------
// Driver

struct Scenario {
    name: String,
    connections: usize,
    inflight: usize,
}

struct Outcome {
    system: System,
    scenario: String,
    connections: usize,
    inflight: usize,
    tally: Tally,
    secs: f64,
    server_cpu_secs: f64,
    server_stat_secs: f64,
    client_cpu_secs: f64,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.tally.calls as f64 / self.secs
    }
    fn q_us(&self, q: f64) -> f64 {
        self.tally.hist.value_at_quantile(q) as f64 / 1e3
    }
    fn server_us_per_call(&self) -> f64 {
        self.server_cpu_secs * 1e6 / self.tally.calls.max(1) as f64
    }
    fn client_us_per_call(&self) -> f64 {
        self.client_cpu_secs * 1e6 / self.tally.calls.max(1) as f64
    }
    fn json(&self) -> Value {
        json!({
            "system": self.system.name(),
            "scenario": self.scenario,
            "connections": self.connections,
            "inflight_per_connection": self.inflight,
            "calls": self.tally.calls,
            "errors": self.tally.errors,
            "seconds": self.secs,
            "calls_per_sec": self.rate(),
            "latency_us": {
                "p50": self.q_us(0.50),
                "p99": self.q_us(0.99),
                "p999": self.q_us(0.999),
                "max": self.tally.hist.max() as f64 / 1e3,
            },
            "server_cpu_secs": self.server_cpu_secs,
            "server_cpu_secs_proc_stat": self.server_stat_secs,
            "server_cpu_us_per_call": self.server_us_per_call(),
            "server_cpu_utilisation": self.server_cpu_secs / self.secs,
            "client_cpu_us_per_call": self.client_us_per_call(),
        })
    }
}

fn run(args: Args) -> Result<()> {
    let duration = Duration::from_secs(if args.quick { 3 } else { args.duration.max(1) });
    let warmup = Duration::from_secs(args.warmup);
    let scenarios = [
        Scenario {
            name: format!("1 conn × {}", args.inflight),
            connections: 1,
            inflight: args.inflight.max(1),
        },
        Scenario {
            name: format!("{} conns × {}", args.connections, args.inflight_many),
            connections: args.connections.max(1),
            inflight: args.inflight_many.max(1),
        },
    ];
    // Both scenarios, their connects and some slack, per server.
    let lifetime = 2 * (warmup + duration + GRACE).as_secs() + 120;
    pin(args.client_core)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let key = ClientKey::generate()?;
    let dir = tempfile::tempdir()?;
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])?.self_signed(&kp)?;
    let cert_pem = cert.pem();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, &cert_pem)?;
    std::fs::write(&key_path, kp.serialize_pem())?;
    let tpl = Arc::new(Template::new(args.payload)?);

    let mut outcomes = Vec::new();
    for &system in &args.systems {
        let server = match system {
            System::Alknet | System::AlknetStream => Server::spawn(
                ServeKind::Alknet,
                &["--peer".into(), key.fingerprint.clone()],
                args.server_core,
                lifetime,
            )?,
            System::Tonic => Server::spawn(
                ServeKind::Tonic,
                &[
                    "--cert".into(),
                    cert_path.display().to_string(),
                    "--key".into(),
                    key_path.display().to_string(),
                ],
                args.server_core,
                lifetime,
            )?,
        };
        for sc in &scenarios {
            eprintln!(
                "call-load: {} · {} · {} s",
                system.name(),
                sc.name,
                duration.as_secs()
            );
            let o = rt.block_on(scenario(
                system, &server, sc, &key, &cert_pem, &tpl, &args, warmup, duration,
            ))?;
            eprintln!(
                "  {:.0} calls/s, p50 {:.0} µs, p99 {:.0} µs, server {:.1} µs CPU/call ({:.0}% of a core), errors {}",
                o.rate(),
                o.q_us(0.5),
                o.q_us(0.99),
                o.server_us_per_call(),
                100.0 * o.server_cpu_secs / o.secs,
                o.tally.errors
            );
            outcomes.push(o);
        }
        drop(server);
    }
    print_report(&outcomes, &args, duration);
    if let Some(path) = &args.json {
        let doc = json!({
            "payload_bytes": args.payload,
            "duration_secs": duration.as_secs(),
            "server_core": args.server_core,
            "client_core": args.client_core,
            "results": outcomes.iter().map(Outcome::json).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&doc)?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text + "\n")?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn scenario(
    system: System,
    server: &Server,
    sc: &Scenario,
    key: &ClientKey,
    cert_pem: &str,
    tpl: &Arc<Template>,
    args: &Args,
    warmup: Duration,
    duration: Duration,
) -> Result<Outcome> {
    let addr = server.addr();
    let mut tasks = Vec::new();
    let quinn_ep;
    match system {
        System::Alknet | System::AlknetStream => {
            let cc = client_config(
                Some(key),
                alknet_call::ALPN,
                Arc::new(AnyServer::default()),
                None,
            )?;
            let ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            let mut conns = Vec::new();
            for _ in 0..sc.connections {
                let c = timed("handshake", ep.connect_with(cc.clone(), addr, "alknet")?).await?;
                conns.push(c);
            }
            let w = window(warmup, duration);
            for (i, c) in conns.into_iter().enumerate() {
                let tpl = tpl.clone();
                let inflight = sc.inflight;
                tasks.push(tokio::spawn(async move {
                    if system == System::Alknet {
                        alknet_shared(c, i, inflight, tpl, w).await
                    } else {
                        alknet_streams(c, i, inflight, tpl, w).await
                    }
                }));
            }
            quinn_ep = Some((ep, w));
        }
        System::Tonic => {
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(cert_pem))
                .domain_name("localhost");
            let endpoint = tonic::transport::Endpoint::from_shared(format!(
                "https://127.0.0.1:{}",
                addr.port()
            ))?
            .tls_config(tls)?
            .tcp_nodelay(true)
            .connect_timeout(IO_TIMEOUT);
            let mut channels = Vec::new();
            for _ in 0..sc.connections {
                channels.push(timed("connect", endpoint.connect()).await?);
            }
            let w = window(warmup, duration);
            for ch in channels {
                let (inflight, payload) = (sc.inflight, args.payload);
                tasks.push(tokio::spawn(async move {
                    tonic_conn(ch, inflight, payload, w).await
                }));
            }
            let (before, after) = measure(server.pid(), w).await;
            return finish(system, sc, tasks, before, after).await;
        }
    }
    let (ep, w) = quinn_ep.context("endpoint")?;
    let (before, after) = measure(server.pid(), w).await;
    let out = finish(system, sc, tasks, before, after).await;
    ep.close(0u32.into(), b"");
    let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
    out
}

fn window(warmup: Duration, duration: Duration) -> Window {
    let start = Instant::now() + warmup;
    Window {
        start,
        end: start + duration,
    }
}

async fn measure(pid: u32, w: Window) -> (CpuMark, CpuMark) {
    tokio::time::sleep_until(w.start.into()).await;
    let before = mark(pid);
    tokio::time::sleep_until(w.end.into()).await;
    (before, mark(pid))
}

async fn finish(
    system: System,
    sc: &Scenario,
    tasks: Vec<tokio::task::JoinHandle<Result<Tally>>>,
    before: CpuMark,
    after: CpuMark,
) -> Result<Outcome> {
    let mut tally = Tally::new();
    for t in tasks {
        tally.merge(t.await??);
    }
    Ok(Outcome {
        system,
        scenario: sc.name.clone(),
        connections: sc.connections,
        inflight: sc.inflight,
        tally,
        secs: after.at.duration_since(before.at).as_secs_f64(),
        server_cpu_secs: after.server_ns.saturating_sub(before.server_ns) as f64 / 1e9,
        server_stat_secs: after.server_stat_secs - before.server_stat_secs,
        client_cpu_secs: after.client_secs - before.client_secs,
    })
}

fn print_report(outcomes: &[Outcome], args: &Args, duration: Duration) {
    println!(
        "\n### call-load: {} B payloads, {} s per scenario, server on core {}, client on core {}\n",
        args.payload,
        duration.as_secs(),
        args.server_core,
        args.client_core
    );
    println!(
        "| system | scenario | calls/s | p50 µs | p99 µs | server CPU µs/call | server core busy | client CPU µs/call | errors |"
    );
    println!("|---|---|--:|--:|--:|--:|--:|--:|--:|");
    for o in outcomes {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0}% | {:.1} | {} |",
            o.system.name(),
            o.scenario,
            o.rate(),
            o.q_us(0.5),
            o.q_us(0.99),
            o.server_us_per_call(),
            100.0 * o.server_cpu_secs / o.secs,
            o.client_us_per_call(),
            o.tally.errors
        );
    }
    let base: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.system == System::Tonic)
        .collect();
    if base.is_empty() {
        return;
    }
    println!(
        "\nRatios against tonic (same scenario): calls/s higher is better, p99 and CPU/call lower is better.\n"
    );
    println!("| system | scenario | calls/s × tonic | p99 × tonic | server CPU/call × tonic |");
    println!("|---|---|--:|--:|--:|");
    for o in outcomes.iter().filter(|o| o.system != System::Tonic) {
        if let Some(b) = base.iter().find(|b| b.scenario == o.scenario) {
            println!(
                "| {} | {} | {:.2} | {:.2} | {:.2} |",
                o.system.name(),
                o.scenario,
                o.rate() / b.rate().max(f64::MIN_POSITIVE),
                o.q_us(0.99) / b.q_us(0.99).max(f64::MIN_POSITIVE),
                o.server_us_per_call() / b.server_us_per_call().max(f64::MIN_POSITIVE)
            );
        }
    }
}
