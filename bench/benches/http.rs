//! The HTTP gateway under load (`cargo build --release -p alknet && cargo bench -p
//! alknet-bench --bench http`): `POST /api/call/node/info` with a bearer token, Alknet over
//! h2 (TCP+TLS) and over h3 (QUIC), beside an axum server on tokio doing the same work over
//! h2 (`axum-call-server`: token hash check, JSON in, node facts out; same TLS: rustls,
//! TLS 1.3, Ed25519), same run, alternating rounds.
//!
//! Each server runs pinned to CPU 0 (Alknet with one worker, axum on a current-thread
//! runtime); the load generator runs on CPU 1: `CONNS` connections with `STREAMS` requests in
//! flight each, for `SECS` seconds. Reported: requests per second, p50/p99 latency, and the
//! server's CPU per request (utime + stime from `/proc`, over the requests it answered), and
//! the ratios to axum over h2. Knobs: `ALKNET_BENCH_HTTP_SECS` (5), `ALKNET_BENCH_HTTP_ROUNDS`
//! (2), `ALKNET_BENCH_HTTP_CONNS` (4), `ALKNET_BENCH_HTTP_STREAMS` (16).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use alknet_testkit::procstat::cpu_times;
use alknet_testkit::serve::{AlknetServe, alknet_cli, release_alknet};
use alknet_testkit::{AnyServer, quinn_client_config, tls_client_config};
use bytes::{Buf, Bytes};
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    H2,
    H3,
}

struct Run {
    requests: u64,
    errors: u64,
    secs: f64,
    cpu: f64,
    hist: Histogram<u64>,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }
    fn cpu_us(&self) -> f64 {
        self.cpu * 1e6 / self.requests.max(1) as f64
    }
}

fn request(addr: SocketAddr, token: &str) -> http::Request<http_body_util::Full<Bytes>> {
    http::Request::post(format!("https://{addr}/api/call/node/info"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

async fn h2_worker(
    addr: SocketAddr,
    token: String,
    streams: u64,
    until: Instant,
    hist: Arc<Mutex<Histogram<u64>>>,
) -> (u64, u64) {
    let tls = tls_client_config(None, b"h2", Arc::new(AnyServer::default())).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let mut sender = sender.clone();
        let token = token.clone();
        let hist = hist.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut bad) = (0u64, 0u64);
            while Instant::now() < until {
                let t = Instant::now();
                let r = sender.send_request(request(addr, &token)).await;
                match r {
                    Ok(resp) if resp.status() == 200 => {
                        let _ = resp.into_body().collect().await;
                        hist.lock()
                            .unwrap()
                            .record(t.elapsed().as_micros() as u64)
                            .ok();
                        ok += 1;
                    }
                    _ => bad += 1,
                }
            }
            (ok, bad)
        }));
    }
    sum(tasks).await
}

async fn h3_worker(
    addr: SocketAddr,
    token: String,
    streams: u64,
    until: Instant,
    hist: Arc<Mutex<Histogram<u64>>>,
) -> (u64, u64) {
    let cfg = quinn_client_config(
        None,
        b"h3",
        Arc::new(AnyServer::default()),
        quinn::TransportConfig::default(),
    )
    .unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(cfg);
    let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let mut sender = sender.clone();
        let token = token.clone();
        let hist = hist.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut bad) = (0u64, 0u64);
            while Instant::now() < until {
                let t = Instant::now();
                let req = request(addr, &token).map(|_| ());
                let done = async {
                    let mut s = sender.send_request(req).await.ok()?;
                    s.send_data(Bytes::from_static(b"{}")).await.ok()?;
                    s.finish().await.ok()?;
                    let resp = s.recv_response().await.ok()?;
                    while let Some(mut d) = s.recv_data().await.ok()? {
                        d.advance(d.remaining());
                    }
                    Some(resp.status())
                }
                .await;
                if done == Some(http::StatusCode::OK) {
                    hist.lock()
                        .unwrap()
                        .record(t.elapsed().as_micros() as u64)
                        .ok();
                    ok += 1;
                } else {
                    bad += 1;
                }
            }
            (ok, bad)
        }));
    }
    let total = sum(tasks).await;
    ep.close(0u32.into(), b"");
    total
}

/// Answered and failed requests of `tasks`, added up.
async fn sum(tasks: Vec<tokio::task::JoinHandle<(u64, u64)>>) -> (u64, u64) {
    let mut total = (0, 0);
    for t in tasks {
        let (a, b) = t.await.unwrap();
        total.0 += a;
        total.1 += b;
    }
    total
}

fn load(proto: Proto, addr: SocketAddr, token: &str, pid: u32) -> Run {
    let secs = knob("ALKNET_BENCH_HTTP_SECS", 5);
    let conns = knob("ALKNET_BENCH_HTTP_CONNS", 4);
    let streams = knob("ALKNET_BENCH_HTTP_STREAMS", 16);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    // Warm-up: a second of the same load, not counted.
    let warm = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let run = |until: Instant, h: Arc<Mutex<Histogram<u64>>>| {
        rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..conns {
                let token = token.to_owned();
                let h = h.clone();
                tasks.push(tokio::spawn(async move {
                    match proto {
                        Proto::H2 => h2_worker(addr, token, streams, until, h).await,
                        Proto::H3 => h3_worker(addr, token, streams, until, h).await,
                    }
                }));
            }
            sum(tasks).await
        })
    };
    run(Instant::now() + Duration::from_secs(1), warm);
    let cpu0 = cpu_times(pid).unwrap().own();
    let t0 = Instant::now();
    let (requests, errors) = run(t0 + Duration::from_secs(secs), hist.clone());
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_times(pid).unwrap().own() - cpu0;
    let hist = hist.lock().unwrap().clone();
    Run {
        requests,
        errors,
        secs: elapsed,
        cpu,
        hist,
    }
}

fn start_axum(token: &str) -> (Child, SocketAddr) {
    let bin = env!("CARGO_BIN_EXE_axum-call-server");
    alknet_bench::start_pinned_server(bin, &["127.0.0.1:0", token])
        .unwrap_or_else(|e| panic!("axum-call-server: {e}"))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("http: bench");
        return;
    }
    // The load generator on CPU 1, the servers on CPU 0.
    let _ = Command::new("taskset")
        .args(["-cp", "1", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
    let alknet = release_alknet().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = "listen = \"127.0.0.1:0\"\nworkers = 1\n[admission]\nmax_connections_per_anonymous_source = 1000\n[services.http]\nenabled = true\nmax_requests_per_token = 100000\nmax_requests_per_connection = 1000\n";
    let server =
        AlknetServe::start_via(&["taskset", "-c", "0"], &alknet, dir.path(), config).unwrap();
    let data = server.data_dir();
    let key = alknet_testkit::ClientKey::generate().unwrap();
    alknet_cli(
        &alknet,
        &data,
        &[
            "peer",
            "add",
            "bench",
            "--fingerprint",
            &key.fingerprint,
            "--scope",
            "call",
        ],
    )
    .unwrap();
    let out = alknet_cli(
        &alknet,
        &data,
        &["token", "create", "bench", "--scope", "call"],
    )
    .unwrap();
    let token = out
        .split_whitespace()
        .find(|w| w.starts_with("alk_"))
        .unwrap()
        .to_owned();
    let (mut axum, axum_addr) = start_axum(&token);
    let rounds = knob("ALKNET_BENCH_HTTP_ROUNDS", 2);
    let mut results: Vec<(&str, Vec<Run>)> = vec![
        ("alknet h2", vec![]),
        ("alknet h3", vec![]),
        ("axum h2", vec![]),
    ];
    for round in 0..rounds {
        for (i, (name, runs)) in results.iter_mut().enumerate() {
            let r = match i {
                0 => load(Proto::H2, server.addr(), &token, server.pid()),
                1 => load(Proto::H3, server.addr(), &token, server.pid()),
                _ => load(Proto::H2, axum_addr, &token, axum.id()),
            };
            eprintln!(
                "round {round} {name}: {:.0} req/s, p99 {} µs, {:.1} µs CPU/request, {} errors",
                r.rps(),
                r.hist.value_at_quantile(0.99),
                r.cpu_us(),
                r.errors
            );
            runs.push(r);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let summary: Vec<(String, f64, f64, f64, f64)> = results
        .iter()
        .map(|(name, runs)| {
            let mut rps: Vec<f64> = runs.iter().map(Run::rps).collect();
            let mut cpu: Vec<f64> = runs.iter().map(Run::cpu_us).collect();
            let mut p50: Vec<f64> = runs
                .iter()
                .map(|r| r.hist.value_at_quantile(0.5) as f64)
                .collect();
            let mut p99: Vec<f64> = runs
                .iter()
                .map(|r| r.hist.value_at_quantile(0.99) as f64)
                .collect();
            (
                name.to_string(),
                median(&mut rps),
                median(&mut p50),
                median(&mut p99),
                median(&mut cpu),
            )
        })
        .collect();
    let base = summary.last().cloned().unwrap();
    println!(
        "\nPOST /api/call/node/info, {} conns x {} in flight, medians of {rounds} rounds",
        knob("ALKNET_BENCH_HTTP_CONNS", 4),
        knob("ALKNET_BENCH_HTTP_STREAMS", 16)
    );
    println!(
        "{:<10} {:>10} {:>9} {:>9} {:>12} {:>9} {:>9}",
        "server", "req/s", "p50 µs", "p99 µs", "CPU µs/req", "rps ×", "CPU ×"
    );
    for (name, rps, p50, p99, cpu) in &summary {
        println!(
            "{name:<10} {rps:>10.0} {p50:>9.0} {p99:>9.0} {cpu:>12.1} {:>9.2} {:>9.2}",
            rps / base.1,
            cpu / base.4
        );
    }
    let _ = axum.kill();
    let _ = axum.wait();
}
