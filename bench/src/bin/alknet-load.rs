//! `alknet-load`: a perf-protocol load generator (quinn client) for Alknet and the quinn
//! baseline, on loopback only. See `bench/PERF.md`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use alknet_bench::load::{self, LoadConfig, Mode, tls::ClientKey};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Opens many QUIC connections to a perf server on loopback, runs requests for a while, and
/// reports connections, handshakes/s, requests/s, goodput, latency percentiles, errors by kind,
/// and the server's CPU seconds and memory (with --server-pid).
#[derive(Parser, Debug)]
#[command(name = "alknet-load", version)]
struct Args {
    /// Server address (127.0.0.1 or ::1 only).
    #[arg(long, default_value = "127.0.0.1:4433")]
    server: SocketAddr,
    /// Connections (handshake mode: concurrent connect loops).
    #[arg(long, short = 'c', default_value_t = 1)]
    connections: usize,
    /// Concurrent requests per connection (closed loop).
    #[arg(long, short = 's', default_value_t = 1)]
    streams: usize,
    /// Request body bytes (suffix K, M, G for KiB, MiB, GiB).
    #[arg(long, default_value = "0", value_parser = parse_size)]
    request_size: u64,
    /// Response bytes per request (suffix K, M, G).
    #[arg(long, default_value = "0", value_parser = parse_size)]
    response_size: u64,
    /// Length of the measured phase, e.g. 10s, 500ms, 1m.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_dur)]
    duration: Duration,
    /// Request discipline.
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    mode: Mode,
    /// Total requests per second (open mode).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Connections per client UDP socket.
    #[arg(long, default_value_t = 500)]
    conns_per_socket: usize,
    /// Handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Keep-alive interval, e.g. 5s (idle mode sets 5s when absent).
    #[arg(long, value_parser = parse_dur)]
    keep_alive: Option<Duration>,
    /// ALPN to offer.
    #[arg(long, default_value = "perf")]
    alpn: String,
    /// Client key: an Ed25519 PKCS#8 PEM file. A fresh key is generated when absent.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Present no client key at all.
    #[arg(long, conflicts_with = "key_file")]
    no_key: bool,
    /// PID of the server under test, for CPU seconds and RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Client runtime threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the report as JSON on stdout (the progress lines stay on stderr).
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// No progress lines.
    #[arg(long, short = 'q')]
    quiet: bool,
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| e.to_string());
    }
    alknet_core::config::parse_duration(s)
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size; write e.g. 64, 16K, 1M, 1G"))?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(format!("`{s}`: unknown unit; use K, M or G")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let key = if args.no_key {
        None
    } else if let Some(p) = &args.key_file {
        Some(ClientKey::load(p)?)
    } else {
        Some(ClientKey::generate()?)
    };
    if let Some(k) = &key
        && !args.quiet
    {
        eprintln!("client key {}", k.fingerprint);
    }
    let keep_alive = args
        .keep_alive
        .or((args.mode == Mode::Idle).then_some(Duration::from_secs(5)));
    let cfg = LoadConfig {
        server: args.server,
        alpn: args.alpn.into_bytes(),
        connections: args.connections.max(1),
        streams: args.streams.max(1),
        request_size: args.request_size,
        response_size: args.response_size,
        duration: args.duration,
        mode: args.mode,
        rate: args.rate,
        conns_per_socket: args.conns_per_socket.max(1),
        connect_concurrency: args.connect_concurrency.max(1),
        keep_alive,
        server_pid: args.server_pid,
        progress: !args.quiet,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let report = rt.block_on(load::run(&cfg, key.as_ref()))?;
    rt.shutdown_timeout(Duration::from_secs(1));
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(p) = &args.json_out {
        std::fs::write(p, &json).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        if let Some(fp) = &report.server_fingerprint {
            println!("server {fp}");
        }
        print!("{}", report.markdown());
    }
    Ok(())
}
