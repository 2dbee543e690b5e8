//! DNS over QUIC under load (`cargo build --release -p alknet && cargo bench -p alknet-bench
//! --bench dns`): A queries for `www.gw.example.` (RFC 9250: one stream per query, message
//! ID 0), Alknet's DNS service (`alknet serve`, one worker, ALPN `doq`) beside hickory-dns 0.26
//! serving the same zone from memory on a current-thread tokio runtime
//! (`hickory-doq-server`), same run, alternating rounds.
//!
//! Each server runs pinned to CPU 0; the load generator (`alknet_bench::load::doq`, the rig of
//! `doq-load`) runs in this process on CPU 1: `CONNS` connections with `STREAMS` queries in
//! flight each, a second of warm-up, then `SECS` seconds measured. Reported per server, as
//! medians over the rounds: queries per second, p50/p99 latency, the server's CPU per query
//! (utime + stime from `/proc`, over the queries answered), and the ratios alknet/hickory.
//! The goal: Alknet answers ≥ 1.5× hickory's queries per second on one core.
//!
//! Knobs: `ALKNET_BENCH_DNS_SECS` (4), `ALKNET_BENCH_DNS_ROUNDS` (3),
//! `ALKNET_BENCH_DNS_CONNS` (16), `ALKNET_BENCH_DNS_STREAMS` (8),
//! `ALKNET_BENCH_DNS_PER_CONN` (queries per connection before the client replaces it, a
//! comma list of workloads, each a table; default `0,99`: unlimited, and hickory's limit),
//! `ALKNET_BENCH_DNS_SYSTEMS` (`alknet,hickory`), `ALKNET_BIN` (another `alknet` binary).
//! When `alknet` is missing, refuses the configuration or does not answer DoQ, the bench
//! says why and measures hickory alone.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use alknet_bench::load::doq::{self, DoqConfig, DoqReport};
use alknet_testkit::serve::{AlknetServe, release_alknet};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The key of Alknet's per-source query rate limit under `[services.dns]`; set far above
/// anything the load generator reaches. Change it here if the service names it otherwise.
const RATE_LIMIT_KEY: &str = "queries_per_second";
const RATE_LIMIT: u64 = 10_000_000;
/// The zone both servers answer for (`hickory-doq-server` has the same records built in).
const NAME: &str = "www.gw.example.";
const ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The goal: Alknet's queries per second over hickory's, one core each.
const GOAL: f64 = 1.5;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn alknet_config() -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nworkers = 1\n\
         [services.dns]\nenabled = true\nzone = \"gw.example.\"\n{RATE_LIMIT_KEY} = {RATE_LIMIT}\n\
         [[dns.records]]\nname = \"{NAME}\"\ntype = \"A\"\nvalue = \"{ADDR}\"\nttl = 300\n"
    )
}

/// A server under test: where it listens and which process to sample.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    pid: u32,
}

fn start_hickory() -> (Child, SocketAddr) {
    let bin = env!("CARGO_BIN_EXE_hickory-doq-server");
    alknet_bench::start_pinned_server(bin, &["--listen", "127.0.0.1:0"])
        .unwrap_or_else(|e| panic!("hickory-doq-server: {e}"))
}

/// `alknet serve` with the DNS service on CPU 0, or why not.
fn start_alknet(dir: &std::path::Path) -> Result<AlknetServe, String> {
    let alknet = release_alknet().map_err(|e| e.to_string())?;
    let server = AlknetServe::start_via(&["taskset", "-c", "0"], &alknet, dir, &alknet_config())
        .map_err(|e| format!("{e:#}"))?;
    let cfg = DoqConfig {
        server: server.addr(),
        expect: Some(ADDR),
        ..DoqConfig::default()
    };
    runtime()
        .block_on(doq::probe(&cfg))
        .map_err(|e| format!("it started but does not answer DoQ: {e:#}"))?;
    Ok(server)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn load(t: &Target, per_conn: u64) -> DoqReport {
    let cfg = DoqConfig {
        server: t.addr,
        connections: knob("ALKNET_BENCH_DNS_CONNS", 16) as usize,
        streams: knob("ALKNET_BENCH_DNS_STREAMS", 8) as usize,
        queries_per_connection: per_conn,
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(knob("ALKNET_BENCH_DNS_SECS", 4)),
        name: NAME.into(),
        expect: Some(ADDR),
        server_pid: Some(t.pid),
    };
    runtime().block_on(doq::run(&cfg)).unwrap()
}

/// CPU model, CPU count and kernel, for the figures' heading.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{model}, {cpus} CPUs, Linux {}, load average {}",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The medians of one server's rounds.
struct Row {
    name: &'static str,
    qps: f64,
    p50: f64,
    p99: f64,
    cpu_us: f64,
    cores: f64,
    client: f64,
    wait: f64,
    hs: f64,
    errors: u64,
    aborted: u64,
}

fn row(name: &'static str, runs: &[DoqReport]) -> Row {
    let m = |f: &dyn Fn(&DoqReport) -> f64| median(runs.iter().map(f).collect());
    Row {
        name,
        qps: m(&|r| r.qps()),
        p50: m(&|r| r.latency.value_at_quantile(0.5) as f64),
        p99: m(&|r| r.latency.value_at_quantile(0.99) as f64),
        cpu_us: m(&|r| r.server_cpu_us().unwrap_or(f64::NAN)),
        cores: m(&|r| r.server_cpu.unwrap_or(f64::NAN) / r.secs),
        client: m(&|r| r.client_cpu / r.secs),
        wait: m(&|r| r.server_wait.unwrap_or(f64::NAN) / r.secs),
        hs: m(&|r| r.handshakes as f64 / r.secs),
        errors: runs.iter().map(DoqReport::error_count).sum(),
        aborted: runs.iter().map(|r| r.aborted).sum(),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("dns: bench");
        return;
    }
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "dns: run with `cargo bench -p alknet-bench --bench dns` (after `cargo build --release -p alknet`)"
        );
        return;
    }
    // Before pinning: afterwards this process sees one CPU.
    let machine = machine();
    // The load generator on CPU 1, the servers on CPU 0.
    let _ = Command::new("taskset")
        .args(["-cp", "1", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
    let systems = list("ALKNET_BENCH_DNS_SYSTEMS", "alknet,hickory");
    let dir = tempfile::tempdir().unwrap();
    let alknet = if systems.iter().any(|s| s == "alknet") {
        match start_alknet(dir.path()) {
            Ok(s) => Some(s),
            Err(why) => {
                println!("skipping alknet: {why}");
                None
            }
        }
    } else {
        None
    };
    let hickory = systems.iter().any(|s| s == "hickory").then(start_hickory);
    let mut targets = Vec::new();
    if let Some(s) = &alknet {
        targets.push(Target {
            name: "alknet",
            addr: s.addr(),
            pid: s.pid(),
        });
    }
    if let Some((child, addr)) = &hickory {
        targets.push(Target {
            name: "hickory",
            addr: *addr,
            pid: child.id(),
        });
    }
    assert!(!targets.is_empty(), "no server to measure");
    let rounds = knob("ALKNET_BENCH_DNS_ROUNDS", 3).max(1);
    let workloads: Vec<u64> = list("ALKNET_BENCH_DNS_PER_CONN", "0,99")
        .iter()
        .map(|s| s.parse().expect("ALKNET_BENCH_DNS_PER_CONN: numbers"))
        .collect();
    let mut tables = Vec::new();
    for &per_conn in &workloads {
        let mut runs: Vec<Vec<DoqReport>> = targets.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            // Even rounds start with the first server, odd rounds with the last, so the
            // machine's other load falls on both alike.
            let mut order: Vec<usize> = (0..targets.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let t = &targets[i];
                let r = load(t, per_conn);
                eprintln!(
                    "per-connection {per_conn} round {round} {}: {:.0} q/s, p99 {} µs, {:.1} µs CPU/query, {:.2} server cores ({:.0} % waiting), {:.2} client cores, {} errors, {} aborted",
                    t.name,
                    r.qps(),
                    r.latency.value_at_quantile(0.99),
                    r.server_cpu_us().unwrap_or(f64::NAN),
                    r.server_cpu.unwrap_or(f64::NAN) / r.secs,
                    r.server_wait.unwrap_or(f64::NAN) / r.secs * 100.0,
                    r.client_cpu / r.secs,
                    r.error_count(),
                    r.aborted,
                );
                for (k, n) in &r.errors {
                    eprintln!("    {n} × {k}");
                }
                runs[i].push(r);
            }
        }
        let rows: Vec<Row> = targets
            .iter()
            .zip(&runs)
            .map(|(t, r)| row(t.name, r))
            .collect();
        tables.push((per_conn, rows));
    }
    println!("\nDNS over QUIC, A {NAME}, machine: {machine}");
    for (per_conn, rows) in &tables {
        let per = match per_conn {
            0 => "connections kept open".to_string(),
            n => format!("a new connection every {n} queries"),
        };
        println!(
            "\n{} conns x {} in flight, {per}, medians of {rounds} rounds of {} s",
            knob("ALKNET_BENCH_DNS_CONNS", 16),
            knob("ALKNET_BENCH_DNS_STREAMS", 8),
            knob("ALKNET_BENCH_DNS_SECS", 4)
        );
        println!(
            "{:<8} {:>9} {:>8} {:>8} {:>9} {:>6} {:>6} {:>7} {:>6} {:>7} {:>8} {:>6} {:>6}",
            "server",
            "q/s",
            "p50 µs",
            "p99 µs",
            "CPU µs/q",
            "cores",
            "wait",
            "client",
            "hs/s",
            "errors",
            "aborted",
            "q/s ×",
            "CPU ×"
        );
        let base = rows.iter().find(|r| r.name == "hickory");
        for r in rows {
            let (x, c) = base.map_or((f64::NAN, f64::NAN), |b| {
                (r.qps / b.qps, r.cpu_us / b.cpu_us)
            });
            println!(
                "{:<8} {:>9.0} {:>8.0} {:>8.0} {:>9.1} {:>6.2} {:>5.0}% {:>7.2} {:>6.0} {:>7} {:>8} {:>6.2} {:>6.2}",
                r.name,
                r.qps,
                r.p50,
                r.p99,
                r.cpu_us,
                r.cores,
                r.wait * 100.0,
                r.client,
                r.hs,
                r.errors,
                r.aborted,
                x,
                c
            );
        }
        let alk = rows.iter().find(|r| r.name == "alknet");
        match (alk, base) {
            (Some(a), Some(b)) => {
                let x = a.qps / b.qps;
                // Queries per CPU-second: what one core would answer with nothing else on it.
                let per_core = b.cpu_us / a.cpu_us;
                println!(
                    "goal: alknet ≥ {GOAL}× hickory's queries/s on one core: {} ({x:.2}×; \
                     queries per server CPU-second {per_core:.2}×)",
                    if x >= GOAL { "met" } else { "not met" },
                );
            }
            _ => println!("goal: alknet ≥ {GOAL}× hickory's queries/s on one core: not measured"),
        }
        if rows.iter().any(|r| r.wait > 0.1) {
            println!(
                "note: a server waited for its core over 10 % of the time (\"wait\"): other load \
                 shared CPU 0, so read CPU µs/query before queries per second"
            );
        } else if rows.iter().any(|r| r.cores < 0.9) {
            println!(
                "note: a server used under 0.9 of its core while its core was free: the client \
                 (\"client\" cores) or the protocol held it back; compare CPU µs/query"
            );
        }
    }
    drop(alknet);
    if let Some((mut child, _)) = hickory {
        let _ = child.kill();
        let _ = child.wait();
    }
}
