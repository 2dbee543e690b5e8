//! `doq-load`: a DNS-over-QUIC load generator (quinn client, ALPN `doq`) for Alknet's DNS
//! service and the hickory-dns baseline, on loopback only. The rig is
//! `alknet_bench::load::doq`; `benches/dns.rs` runs the same code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use alknet_bench::load::doq::{self, DoqConfig};
use clap::Parser;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Sends A queries over DNS over QUIC (RFC 9250: one stream per query, message ID 0) from
/// many connections with several queries in flight on each, checks every answer, and reports
/// queries/s, latency percentiles, errors by kind and the server's CPU per query (with
/// --server-pid).
#[derive(Parser, Debug)]
#[command(name = "doq-load", version)]
struct Args {
    /// Server address (127.0.0.1 or ::1 only).
    #[arg(long, default_value = "127.0.0.1:853")]
    server: SocketAddr,
    /// Connections open at once.
    #[arg(long, short = 'c', default_value_t = 16)]
    connections: usize,
    /// Queries in flight on each connection.
    #[arg(long, short = 's', default_value_t = 8)]
    streams: usize,
    /// Queries per connection before it is closed and replaced (0: no limit).
    #[arg(long, default_value_t = 0)]
    per_connection: u64,
    /// Load before the measured window, seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// The measured window, seconds.
    #[arg(long, short = 'd', default_value_t = 4.0)]
    duration: f64,
    /// Name queried (type A).
    #[arg(long, default_value = "www.gw.example.")]
    name: String,
    /// The IPv4 address the one answer must carry.
    #[arg(long)]
    expect: Option<Ipv4Addr>,
    /// PID of the server under test, for its CPU from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let secs = |s: f64| Duration::try_from_secs_f64(s).map_err(|e| anyhow::anyhow!("{e}"));
    let cfg = DoqConfig {
        server: a.server,
        connections: a.connections,
        streams: a.streams,
        queries_per_connection: a.per_connection,
        warmup: secs(a.warmup)?,
        duration: secs(a.duration)?,
        name: a.name,
        expect: a.expect,
        server_pid: a.server_pid,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        doq::probe(&cfg).await?;
        doq::run(&cfg).await
    })?;
    let s = report.summary();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "{} conns x {} in flight, {} queries/connection, {:.1} s",
        cfg.connections,
        cfg.streams,
        match cfg.queries_per_connection {
            0 => "unlimited".to_string(),
            n => n.to_string(),
        },
        report.secs
    );
    println!("queries/s        {:.0}", s.qps);
    println!(
        "latency µs       p50 {} p99 {} p99.9 {}",
        s.p50_us, s.p99_us, s.p999_us
    );
    println!("handshakes/s     {:.0}", s.handshakes_per_sec);
    println!("aborted          {}", s.aborted);
    println!("errors           {}", s.errors);
    for (k, n) in &s.error_kinds {
        println!("  {n:>8}  {k}");
    }
    if let (Some(us), Some(cores)) = (s.server_cpu_us_per_query, s.server_cores) {
        println!("server CPU       {us:.1} µs/query ({cores:.2} cores)");
    }
    if let Some(w) = s.server_wait_share {
        println!("server CPU-wait  {:.0} % of the window", w * 100.0);
    }
    println!("client CPU       {:.2} cores", s.client_cores);
    Ok(())
}
