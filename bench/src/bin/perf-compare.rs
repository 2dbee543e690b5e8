//! `perf-compare`: runs `alknet serve` and the quinn baseline (`quinn-perf-server`) through
//! the same perf scenarios, one server after the other, each server pinned to core 0 and the
//! load generator (`alknet-load`) to core 1 where the machine has two cores, and prints each
//! figure for both with the ratio, as a table and as JSON. See `bench/PERF.md`.
//!
//! It builds nothing: the binaries come from `--alknet` and from the directory of this
//! executable (`cargo build --release -p alknet-bench` puts them there). When the given
//! `alknet` binary does not offer the `perf` ALPN (a build without the `perf` feature, or
//! before the CLI registers the service), the runner serves alknet in a child process of its
//! own (`perf-compare serve-alknet`, the same `alknet_core::start` with the perf handler and
//! the same config file) and says so in the output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use alknet_bench::load::Report;
use alknet_bench::load::report::fmt_num;
use clap::{Parser, Subcommand};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "perf-compare", version)]
/// Compares alknet with quinn on the perf protocol: bulk download, small requests (closed and
/// open loop), handshakes, idle sessions, and alknet's 1- vs 2-worker scaling.
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// The alknet binary (e.g. target/release/alknet).
    #[arg(long, default_value = "target/release/alknet")]
    alknet: PathBuf,
    /// Short runs: every scenario in under two minutes.
    #[arg(long)]
    quick: bool,
    /// Seconds of each measured phase (default 10, quick 3).
    #[arg(long)]
    secs: Option<f64>,
    /// Seconds the idle sessions are held (default 10, quick 4; 60 for the real figure).
    #[arg(long)]
    idle_secs: Option<f64>,
    /// Idle sessions opened.
    #[arg(long, default_value_t = 5000)]
    idle_connections: usize,
    /// Scenarios to run, comma-separated: bulk,small,open,handshake,idle,scaling.
    #[arg(long, default_value = "bulk,small,open,handshake,idle,scaling")]
    scenarios: String,
    /// Run each alknet-vs-quinn scenario this many times, alternating which server goes
    /// first, and report the run with the median ratio of the scenario's target figure along
    /// with the lowest and highest ratio seen (a shared machine makes single runs noisy).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=25))]
    repeat: u32,
    /// Write the JSON result here too.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Show the load generator's progress lines.
    #[arg(long, short = 'v')]
    verbose: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// (internal) serve alknet with the perf service from this process.
    #[command(hide = true)]
    ServeAlknet {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// The load of the small-request scenarios: 100 connections x 8 streams, 64 B each way.
fn small_args(duration: &str) -> Vec<String> {
    s(&[
        "-c",
        "100",
        "-s",
        "8",
        "--request-size",
        "64",
        "--response-size",
        "64",
        "-d",
        duration,
    ])
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Cmd::ServeAlknet { config, data_dir }) = &args.cmd {
        return serve_alknet(config, data_dir);
    }
    run(args)
}

/// The alknet server, as `alknet serve` assembles it, with the perf service registered.
fn serve_alknet(config: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let config = alknet_core::config::Config::load(config)?;
    std::fs::create_dir_all(data_dir)?;
    let node = alknet_core::identity::tls::NodeKey::load_or_create(data_dir)?;
    let registry = alknet_core::Registry::from_config(
        &config,
        [alknet_core::service::Offer::new(alknet_perf::Perf)],
    )?;
    let identities = Arc::new(alknet_core::identity::MemoryIdentities::from_config(
        &config.peers,
    )?);
    let handle = alknet_core::start(Arc::new(config), node, registry, identities)?;
    let info = alknet_core::ops::control::ServerInfo {
        fingerprint: handle.fingerprint().to_string(),
        listen: handle.local_addr().to_string(),
        workers: handle.workers(),
        alpns: vec!["perf".into()],
    };
    alknet_core::ops::control::serve(data_dir, handle.control(), info, None)?;
    println!(
        "alknet listening on {} (udp), {} workers",
        handle.local_addr(),
        handle.workers()
    );
    println!("fingerprint {}", handle.fingerprint());
    println!("alpns perf");
    // Killed by the runner; a bounded life in case the runner dies first.
    std::thread::sleep(Duration::from_secs(3600));
    Ok(())
}

struct Server {
    child: Child,
    addr: SocketAddr,
    data_dir: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Alknet,
    Quinn,
}

struct Env {
    alknet: PathBuf,
    /// `None`: `alknet serve` lacks perf; serve it from this executable.
    alknet_cli_ok: bool,
    bin_dir: PathBuf,
    taskset: bool,
    cores: usize,
    verbose: bool,
}

/// `taskset -c <cpus> <program>` when pinning is possible, else the program itself.
fn pinned(env: &Env, cpus: Option<&str>, program: &Path) -> Command {
    match cpus {
        Some(c) if env.taskset && env.cores >= 2 => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c).arg(program);
            cmd
        }
        _ => Command::new(program),
    }
}

/// Starts a server and waits for its "listening on" and "alpns" lines (30 s at most).
fn start_server(env: &Env, kind: Kind, workers: usize, embedded: bool) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let cpus = if workers >= 2 { "0,1" } else { "0" };
    let mut data_dir = None;
    let mut cmd = match kind {
        Kind::Quinn => {
            let mut c = pinned(env, Some(cpus), &env.bin_dir.join("quinn-perf-server"));
            c.args(["--listen", "127.0.0.1:0", "--workers", &workers.to_string()]);
            c
        }
        Kind::Alknet => {
            let cfg = dir.path().join("alknet.toml");
            std::fs::write(
                &cfg,
                format!(
                    "listen = \"127.0.0.1:0\"\nworkers = {workers}\npin_workers = {}\n\n[services.perf]\nenabled = true\nanonymous = true\n",
                    // Pinned shards cannot step aside for the load generator: pin only when
                    // it has a core of its own (measured: 2 pinned shards sharing 2 cores
                    // with the client served 55 k requests/s at 12 µs, unpinned 88 k at 10.7).
                    env.cores > workers
                ),
            )?;
            let data = dir.path().join("data");
            data_dir = Some(data.clone());
            let mut c = if embedded {
                let mut c = pinned(env, Some(cpus), &std::env::current_exe()?);
                c.arg("serve-alknet");
                c
            } else {
                let mut c = pinned(env, Some(cpus), &env.alknet);
                c.arg("serve");
                c
            };
            c.arg("--config").arg(&cfg).arg("--data-dir").arg(&data);
            c
        }
    };
    let mut child = cmd
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {kind:?} server: {e}"))?;
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut addr = None;
        let mut alpns = None;
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if let Some((_, rest)) = line.split_once("listening on ") {
                addr = rest.split(' ').next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.strip_prefix("alpns ") {
                alpns = Some(rest.to_owned());
                break;
            }
        }
        let _ = tx.send((addr, alpns));
        for _ in lines {}
    });
    let (addr, alpns) = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or((None, None));
    let server = |addr| Server {
        child,
        addr,
        data_dir,
        _dir: dir,
    };
    match (addr, alpns) {
        (Some(a), Some(alpns)) if alpns.split(',').any(|x| x == "perf") => Ok(server(a)),
        (Some(a), _) => {
            drop(server(a));
            anyhow::bail!("{kind:?} server does not offer the perf ALPN")
        }
        _ => {
            child_kill(server(SocketAddr::from(([127, 0, 0, 1], 0))));
            anyhow::bail!("{kind:?} server did not start within 30 s")
        }
    }
}

fn child_kill(s: Server) {
    drop(s);
}

/// Runs `alknet-load` (pinned to core 1) against `server` and reads its JSON report.
fn load(env: &Env, server: &Server, pin_client: bool, args: &[String]) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("report.json");
    let mut cmd = pinned(
        env,
        pin_client.then_some("1"),
        &env.bin_dir.join("alknet-load"),
    );
    cmd.arg("--server")
        .arg(server.addr.to_string())
        .arg("--server-pid")
        .arg(server.pid().to_string())
        .arg("--json-out")
        .arg(&out)
        .args(args)
        .stdout(Stdio::null());
    if !env.verbose {
        cmd.arg("--quiet");
        cmd.stderr(Stdio::null());
    }
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run alknet-load: {e}"))?;
    if !status.success() {
        anyhow::bail!("alknet-load failed with {status}");
    }
    Ok(serde_json::from_slice(&std::fs::read(&out)?)?)
}

/// Forwarded and received datagram counters of an alknet server, from its control socket.
fn forward_counters(server: &Server) -> Option<(u64, u64)> {
    let dir = server.data_dir.as_ref()?;
    let v =
        alknet_core::ops::control::request(dir, &alknet_core::ops::control::Request::Stats).ok()?;
    let c = v.get("counters")?;
    Some((
        c.get("forwarded_out")?.as_u64()?,
        c.get("datagrams_in")?.as_u64()?,
    ))
}

struct Scenario {
    name: &'static str,
    args: Vec<String>,
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn run(args: Args) -> anyhow::Result<()> {
    let t_start = Instant::now();
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for b in ["alknet-load", "quinn-perf-server"] {
        if !bin_dir.join(b).exists() {
            anyhow::bail!(
                "{} is missing; build it with `cargo build --release -p alknet-bench`",
                bin_dir.join(b).display()
            );
        }
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let taskset = Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let mut env = Env {
        alknet: args.alknet.clone(),
        alknet_cli_ok: true,
        bin_dir,
        taskset,
        cores,
        verbose: args.verbose,
    };
    // Does `alknet serve` offer perf? Otherwise serve alknet from this executable.
    let mut alknet_server_kind = format!("{} serve", env.alknet.display());
    match start_server(&env, Kind::Alknet, 1, false) {
        Ok(_) => {}
        Err(e) => {
            eprintln!(
                "note: {} cannot serve perf ({e}); using the same server embedded in perf-compare",
                env.alknet.display()
            );
            env.alknet_cli_ok = false;
            alknet_server_kind =
                "perf-compare serve-alknet (alknet_core::start + alknet_perf)".into();
        }
    }
    let secs = args.secs.unwrap_or(if args.quick { 3.0 } else { 10.0 });
    let idle_secs = args
        .idle_secs
        .unwrap_or(if args.quick { 4.0 } else { 10.0 });
    let d = format!("{secs}");
    let wanted: Vec<&str> = args.scenarios.split(',').map(str::trim).collect();
    let pin_client = env.cores >= 2;
    eprintln!(
        "perf-compare: {} cores, taskset {}, server on core 0, client on {}",
        cores,
        if taskset { "yes" } else { "no" },
        if pin_client { "core 1" } else { "any core" }
    );

    let mut results = serde_json::Map::new();
    let mut rows: Vec<(String, String, f64, f64)> = Vec::new();
    let repeat = args.repeat as usize;
    let ratio = |a: Option<f64>, q: Option<f64>| match (a, q) {
        (Some(a), Some(q)) if q > 0.0 => Some(a / q),
        _ => None,
    };
    // Runs a scenario `repeat` times (alternating which server goes first) and keeps the
    // pair whose ratio of `key` is the median; returns every ratio seen too.
    let both = |env: &Env,
                sc: &Scenario,
                key: fn(&Report) -> Option<f64>|
     -> anyhow::Result<(Report, Report, Vec<f64>)> {
        let one = |kind: Kind| -> anyhow::Result<Report> {
            eprintln!(
                "scenario {}: {}",
                sc.name,
                if kind == Kind::Alknet {
                    "alknet"
                } else {
                    "quinn"
                }
            );
            let srv = start_server(env, kind, 1, kind == Kind::Alknet && !env.alknet_cli_ok)?;
            load(env, &srv, pin_client, &sc.args)
        };
        let mut pairs = Vec::with_capacity(repeat);
        for round in 0..repeat {
            let (a, q) = if round % 2 == 0 {
                let a = one(Kind::Alknet)?;
                (a, one(Kind::Quinn)?)
            } else {
                let q = one(Kind::Quinn)?;
                (one(Kind::Alknet)?, q)
            };
            pairs.push((a, q));
        }
        let mut ratios: Vec<(f64, usize)> = pairs
            .iter()
            .enumerate()
            .filter_map(|(i, (a, q))| ratio(key(a), key(q)).map(|r| (r, i)))
            .collect();
        ratios.sort_by(|x, y| x.0.total_cmp(&y.0));
        let pick = ratios
            .get(ratios.len() / 2)
            .map(|x| x.1)
            .unwrap_or(pairs.len() - 1);
        let seen = ratios.iter().map(|x| x.0).collect();
        let (a, q) = pairs.swap_remove(pick);
        Ok((a, q, seen))
    };
    let mut record = |name: &str, a: &Report, q: &Report, results: &mut serde_json::Map<_, _>| {
        let qf = q.figures();
        for (fig, av) in a.figures() {
            if let Some((_, qv)) = qf.iter().find(|(n, _)| *n == fig) {
                rows.push((name.to_owned(), fig.to_owned(), av, *qv));
            }
        }
        results.insert(name.to_owned(), json!({ "alknet": a, "quinn": q }));
    };

    let mut small_rates = None;
    let mut targets: Vec<(String, f64, String, bool)> = Vec::new();
    let mut spreads: Vec<(String, Vec<f64>)> = Vec::new();
    let mut target = |what: &str, v: Option<f64>, op: &str, limit: f64| {
        if let Some(v) = v {
            let ok = if op == "<=" { v <= limit } else { v >= limit };
            targets.push((what.to_owned(), v, format!("{op} {limit}"), ok));
        }
    };

    if wanted.contains(&"bulk") {
        let sc = Scenario {
            name: "bulk download (1 conn)",
            args: s(&["-c", "1", "-s", "1", "--response-size", "256M", "-d", &d]),
        };
        let (a, q, seen) = both(&env, &sc, |r| r.server_cpu_secs_per_gb)?;
        spreads.push(("bulk: server CPU/GB ratio".into(), seen));
        target(
            "bulk: server CPU/GB ratio",
            ratio(a.server_cpu_secs_per_gb, q.server_cpu_secs_per_gb),
            "<=",
            0.6,
        );
        target(
            "bulk: goodput ratio",
            ratio(Some(a.goodput_mbit_per_sec), Some(q.goodput_mbit_per_sec)),
            ">=",
            1.3,
        );
        record("bulk", &a, &q, &mut results);
    }
    if wanted.contains(&"small") || wanted.contains(&"open") {
        let sc = Scenario {
            name: "small requests closed loop (64 B/64 B, 100 conns x 8 streams)",
            args: small_args(&d),
        };
        let (a, q, seen) = both(&env, &sc, |r| r.server_cpu_us_per_request)?;
        spreads.push(("small: server CPU/request ratio".into(), seen));
        small_rates = Some(a.requests_per_sec.min(q.requests_per_sec));
        target(
            "small: server CPU/request ratio",
            ratio(a.server_cpu_us_per_request, q.server_cpu_us_per_request),
            "<=",
            0.5,
        );
        record("small_closed", &a, &q, &mut results);
    }
    if wanted.contains(&"open") {
        // The same offered load for both: half of the slower server's closed-loop rate.
        let rate = (small_rates.unwrap_or(10_000.0) * 0.5).max(100.0).round();
        let sc = Scenario {
            name: "small requests open loop",
            args: s(&[
                "--mode",
                "open",
                "--rate",
                &rate.to_string(),
                "-c",
                "100",
                "--request-size",
                "64",
                "--response-size",
                "64",
                "-d",
                &d,
            ]),
        };
        let (a, q, seen) = both(&env, &sc, |r| r.latency_us.map(|l| l.p99 as f64))?;
        spreads.push(("small open loop: p99 ratio".into(), seen));
        target(
            "small open loop: p99 ratio",
            ratio(
                a.latency_us.map(|l| l.p99 as f64),
                q.latency_us.map(|l| l.p99 as f64),
            ),
            "<=",
            0.7,
        );
        target(
            "small open loop: server CPU/request ratio",
            ratio(a.server_cpu_us_per_request, q.server_cpu_us_per_request),
            "<=",
            0.5,
        );
        record("small_open", &a, &q, &mut results);
    }
    if wanted.contains(&"handshake") {
        let sc = Scenario {
            name: "handshakes (32 concurrent connect loops)",
            args: s(&["--mode", "handshake", "-c", "32", "-d", &d]),
        };
        let (a, q, seen) = both(&env, &sc, |r| r.server_cpu_us_per_handshake)?;
        spreads.push(("handshakes: server CPU/handshake ratio".into(), seen));
        target(
            "handshakes: server CPU/handshake ratio",
            ratio(a.server_cpu_us_per_handshake, q.server_cpu_us_per_handshake),
            "<=",
            0.9,
        );
        record("handshake", &a, &q, &mut results);
    }
    if wanted.contains(&"idle") {
        let n = args.idle_connections.to_string();
        let sc = Scenario {
            name: "idle sessions",
            args: s(&["--mode", "idle", "-c", &n, "-d", &format!("{idle_secs}")]),
        };
        let (a, q, seen) = both(&env, &sc, |r| r.server_rss_kib_per_connection)?;
        spreads.push(("idle: RSS KiB/connection ratio".into(), seen));
        target(
            "idle: alknet failures (failed + lost)",
            Some((a.connections_failed + a.connections_lost) as f64),
            "<=",
            0.0,
        );
        target(
            "idle: alknet RSS growth KiB/connection",
            a.server_rss_kib_per_connection,
            "<=",
            32.0,
        );
        record("idle", &a, &q, &mut results);
    }
    let mut scaling_json = None;
    if wanted.contains(&"scaling") {
        // alknet only; the client cannot have a core of its own here, so it is unpinned in
        // both runs and the two runs are compared with each other.
        let args_small = small_args(&d);
        // `repeat` rounds of (1 worker, 2 workers), alternating the order; keep the round
        // with the median CPU/request ratio.
        let mut rounds = Vec::with_capacity(repeat);
        for round in 0..repeat {
            let mut out = Vec::new();
            let order: [usize; 2] = if round % 2 == 0 { [1, 2] } else { [2, 1] };
            for workers in order {
                eprintln!("scenario scaling: alknet, {workers} worker(s)");
                let srv = start_server(&env, Kind::Alknet, workers, !env.alknet_cli_ok)?;
                let r = load(&env, &srv, false, &args_small)?;
                let fw = forward_counters(&srv);
                out.push((workers, r, fw));
            }
            out.sort_by_key(|x| x.0);
            rounds.push(out);
        }
        let mut by_ratio: Vec<(f64, usize)> = rounds
            .iter()
            .enumerate()
            .filter_map(|(i, o)| {
                ratio(
                    o[1].1.server_cpu_us_per_request,
                    o[0].1.server_cpu_us_per_request,
                )
                .map(|r| (r, i))
            })
            .collect();
        by_ratio.sort_by(|x, y| x.0.total_cmp(&y.0));
        spreads.push((
            "scaling: CPU/request 2 workers / 1 worker".into(),
            by_ratio.iter().map(|x| x.0).collect(),
        ));
        let pick = by_ratio
            .get(by_ratio.len() / 2)
            .map(|x| x.1)
            .unwrap_or(rounds.len() - 1);
        let out = rounds.swap_remove(pick);
        let cpu1 = out[0].1.server_cpu_us_per_request;
        let cpu2 = out[1].1.server_cpu_us_per_request;
        let fwd_pct = out[1].2.map(|(f, d)| {
            if d > 0 {
                f as f64 * 100.0 / d as f64
            } else {
                0.0
            }
        });
        target(
            "scaling: CPU/request 2 workers / 1 worker",
            ratio(cpu2, cpu1),
            "<=",
            1.1,
        );
        target(
            "scaling: forwarded datagrams % (2 workers)",
            fwd_pct,
            "<=",
            0.1,
        );
        for (fig, v1) in out[0].1.figures() {
            if let Some((_, v2)) = out[1].1.figures().iter().find(|(n, _)| *n == fig) {
                rows.push(("scaling (2w vs 1w)".into(), fig.to_owned(), *v2, v1));
            }
        }
        if let Some(p) = fwd_pct {
            rows.push(("scaling (2w vs 1w)".into(), "forwarded %".into(), p, 0.0));
        }
        scaling_json = Some(json!({
            "one_worker": out[0].1, "two_workers": out[1].1,
            "two_workers_forwarded_out": out[1].2.map(|x| x.0),
            "two_workers_datagrams_in": out[1].2.map(|x| x.1),
            "forwarded_percent": fwd_pct,
        }));
    }
    if let Some(j) = scaling_json {
        results.insert("scaling".into(), j);
    }

    // Table.
    println!(
        "\nalknet server: {alknet_server_kind}\n\n| scenario | figure | alknet | quinn | ratio |\n| --- | --- | ---: | ---: | ---: |"
    );
    for (sc, fig, a, q) in &rows {
        let r = if *q != 0.0 {
            fmt_num(a / q)
        } else {
            "–".into()
        };
        println!("| {sc} | {fig} | {} | {} | {r} |", fmt_num(*a), fmt_num(*q));
    }
    println!(
        "\n(scaling rows: the alknet column is 2 workers, the quinn column is alknet with 1 worker)"
    );
    println!("\n| target | measured | wanted | met |\n| --- | ---: | --- | --- |");
    for (what, v, want, ok) in &targets {
        println!(
            "| {what} | {} | {want} | {} |",
            fmt_num(*v),
            if *ok { "yes" } else { "**no**" }
        );
    }
    if repeat > 1 {
        println!(
            "\n{repeat} runs per scenario; each table row above comes from the run whose target ratio was the median;\nthe ratios of all runs:\n\n| ratio | median | lowest | highest |\n| --- | ---: | ---: | ---: |"
        );
        for (what, seen) in &spreads {
            if let (Some(lo), Some(hi)) = (seen.first(), seen.last()) {
                let mid = seen.get(seen.len() / 2).copied().unwrap_or(*lo);
                println!(
                    "| {what} | {} | {} | {} |",
                    fmt_num(mid),
                    fmt_num(*lo),
                    fmt_num(*hi)
                );
            }
        }
    }
    let out = json!({
        "machine": { "cores": cores, "taskset": taskset },
        "alknet_server": alknet_server_kind,
        "quick": args.quick,
        "repeat": repeat,
        "ratio_spread": spreads.iter().map(|(w, seen)| json!({ "ratio": w, "seen": seen })).collect::<Vec<_>>(),
        "secs": secs,
        "idle_secs": idle_secs,
        "results": results,
        "rows": rows.iter().map(|(sc, f, a, q)| json!({
            "scenario": sc, "figure": f, "alknet": a, "quinn": q,
            "ratio": if *q != 0.0 { Some(a / q) } else { None },
        })).collect::<Vec<_>>(),
        "targets": targets.iter().map(|(w, v, want, ok)| json!({
            "target": w, "measured": v, "wanted": want, "met": ok,
        })).collect::<Vec<_>>(),
        "wall_secs": t_start.elapsed().as_secs_f64(),
    });
    let text = serde_json::to_string_pretty(&out)?;
    if let Some(p) = &args.json_out {
        std::fs::write(p, &text)?;
    }
    println!("\n```json\n{text}\n```");
    eprintln!(
        "perf-compare done in {:.0}s",
        t_start.elapsed().as_secs_f64()
    );
    Ok(())
}
