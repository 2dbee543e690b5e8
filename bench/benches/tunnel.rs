//! Port forwarding over a lossy wire: 8 parallel bulk downloads and one small request flow
//! beside them, through three forwarders, in the same run:
//!
//! | system | client | server |
//! |---|---|---|
//! | `alknet-tunnel` | `alknet forward -L` (one QUIC stream per TCP connection) | `alknet serve`, `alknet/tunnel` |
//! | `alknet-ssh` | `ssh -N -L` with `alknet connect` as `ProxyCommand` (every channel in one QUIC stream) | `alknet serve`, `alknet/ssh` |
//! | `sshd` (**baseline**) | `ssh -N -L` over TCP (every channel in one TCP connection) | Debian's `/usr/sbin/sshd` |
//!
//! The servers and the targets (a sink streaming bytes, an echo) run in a network namespace
//! made here, the forwarders and the measuring driver in another; the veth pair between them
//! loses 1 % of packets each way and is rate-limited ([`alknet_testkit::netns`]: `tc netem`
//! where the kernel has it, nftables drops and `tbf` otherwise). The bulk flows and the
//! request flow share one forwarder connection, as they would for a user.
//!
//! Reported per system: the bulk flows' aggregate throughput, and the request flow's p50 and
//! p99 round trip (64 bytes each way, one request every 10 ms). A lost packet stalls every
//! channel of an SSH connection (one ordered byte stream), but only its own stream in
//! `alknet/tunnel`: the request flow's p99 shows it. Ratios are Alknet's figure over sshd's.
//!
//! Needs root (namespaces), iproute2 (and nftables on a kernel without netem), OpenSSH's
//! `ssh` and `sshd`, and a release build: `cargo build --release -p alknet`.
//! Environment: `ALKNET_BENCH_TUNNEL_SECS` (measuring time per system and round, default
//! 10), `ALKNET_BENCH_TUNNEL_ROUNDS` (default 2), `ALKNET_BENCH_TUNNEL_LOSS` (percent,
//! default 1), `ALKNET_BENCH_TUNNEL_MBIT` (rate each way, default 200),
//! `ALKNET_BENCH_TUNNEL_CONGESTION` (the gateway's `[transport] congestion`, default
//! `cubic`), `ALKNET_BIN`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use alknet_testkit::netns::{Side, Wire};
use alknet_testkit::openssh::{SshClient, SshTarget, Sshd, alknet_proxy_command, current_user};
use alknet_testkit::serve::{AlknetServe, alknet_cli, host_key_of};
use anyhow::{Context, Result, anyhow, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const ROLE: &str = "ALKNET_BENCH_TUNNEL_ROLE";
const BULK_FLOWS: usize = 8;
const REQUEST: usize = 64;
const REQUEST_GAP: Duration = Duration::from_millis(10);
/// Time before measuring: connections opened, congestion windows grown.
const WARMUP: Duration = Duration::from_secs(2);
/// How long the forwarder may take to carry its first request.
const READY_LIMIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Tunnel,
    Ssh,
    Sshd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Tunnel => "alknet-tunnel",
            System::Ssh => "alknet-ssh",
            System::Sshd => "sshd",
        }
    }
}

fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

fn alknet_bin() -> Result<PathBuf> {
    alknet_testkit::serve::release_alknet()
}

// ---- roles run inside the namespaces (this same binary, started with ROLE set) ----

/// In the gateway's namespace: a sink streaming bytes to each connection and a 64-byte
/// echo, on loopback; prints `ports SINK ECHO` and serves until stdin closes.
fn role_targets() -> Result<()> {
    let sink = TcpListener::bind("127.0.0.1:0")?;
    let echo = TcpListener::bind("127.0.0.1:0")?;
    println!(
        "ports {} {}",
        sink.local_addr()?.port(),
        echo.local_addr()?.port()
    );
    std::io::stdout().flush()?;
    std::thread::spawn(move || {
        for s in sink.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let block = vec![0x5au8; 64 << 10];
                while s.write_all(&block).is_ok() {}
            });
        }
    });
    std::thread::spawn(move || {
        for s in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut s = s;
                let mut buf = [0u8; REQUEST];
                while s.read_exact(&mut buf).is_ok() && s.write_all(&buf).is_ok() {}
            });
        }
    });
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    Ok(())
}

fn connect_when_ready(port: u16, until: Instant) -> Result<TcpStream> {
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= until => bail!("port {port} never listened: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// In the client's namespace: waits for the forwarder, runs the bulk flows and the request
/// flow for warm-up + SECS, prints one JSON line of results.
fn role_driver() -> Result<()> {
    let bulk_port: u16 = std::env::var("BULK_PORT")?.parse()?;
    let echo_port: u16 = std::env::var("ECHO_PORT")?.parse()?;
    let secs = env_u64("SECS", 10)?;
    let until = Instant::now() + READY_LIMIT;
    // The first request through proves the whole path is up.
    let mut echo = loop {
        let mut s = connect_when_ready(echo_port, until)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_nodelay(true)?;
        let mut buf = [7u8; REQUEST];
        if s.write_all(&buf).is_ok() && s.read_exact(&mut buf).is_ok() {
            break s;
        }
        if Instant::now() >= until {
            bail!("the forwarder never carried a request");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    echo.set_read_timeout(Some(Duration::from_secs(30)))?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut flows = Vec::new();
    for _ in 0..BULK_FLOWS {
        let mut s = connect_when_ready(bulk_port, until)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let (received, stop) = (received.clone(), stop.clone());
        flows.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            while !stop.load(Ordering::Relaxed) {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => {
                        received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
            true
        }));
    }
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + Duration::from_secs(secs);
    let mut base = None;
    let mut rtts: Vec<u64> = Vec::new();
    let mut buf = [1u8; REQUEST];
    while Instant::now() < end {
        let now = Instant::now();
        if base.is_none() && now >= measure_from {
            base = Some((received.load(Ordering::Relaxed), now));
        }
        let t = Instant::now();
        echo.write_all(&buf).context("request")?;
        echo.read_exact(&mut buf).context("answer")?;
        if base.is_some() {
            rtts.push(t.elapsed().as_micros() as u64);
        }
        std::thread::sleep(REQUEST_GAP);
    }
    let (b0, t0) = base.ok_or_else(|| anyhow!("the run ended before measuring"))?;
    let bytes = received.load(Ordering::Relaxed) - b0;
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let alive = flows.len();
    drop(flows);
    rtts.sort_unstable();
    let pct = |p: usize| {
        rtts.get((rtts.len() * p / 100).min(rtts.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{}",
        serde_json::json!({
            "bytes": bytes,
            "secs": elapsed,
            "requests": rtts.len(),
            "p50_us": pct(50),
            "p99_us": pct(99),
            "max_us": rtts.last().copied().unwrap_or(0),
            "flows": alive,
        })
    );
    Ok(())
}

// ---- the bench proper, outside the namespaces ----

struct Targets {
    child: Child,
    sink: u16,
    echo: u16,
}

impl Targets {
    fn start(wire: &Wire) -> Result<Self> {
        let [a, b, c, d] = wire.exec(Side::Gw);
        let mut child = Command::new(a)
            .args([b, c, d])
            .arg(std::env::current_exe()?)
            .env(ROLE, "targets")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?)
            .read_line(&mut line)?;
        let mut w = line.split_whitespace().skip(1);
        let (Some(sink), Some(echo)) = (w.next(), w.next()) else {
            bail!("the targets did not start: {line:?}");
        };
        Ok(Self {
            child,
            sink: sink.parse()?,
            echo: echo.parse()?,
        })
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    alknet: PathBuf,
    client_data: PathBuf,
    serve: AlknetServe,
    sshd: Sshd,
    ak_ssh: SshClient,
    sshd_client: SshClient,
    targets: Targets,
    // Last: the namespaces go after everything running in them.
    wire: Wire,
}

struct Figures {
    mb_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Rig {
    fn start(loss: f64, mbit: u32, congestion: &str) -> Result<Self> {
        let wire = Wire::create(loss, mbit, 5)?;
        let alknet = alknet_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("alknet-bench-tunnel")
            .tempdir()?;
        let d = dir.path();
        for p in ["serve", "client", "ssh-alknet", "ssh-sshd"] {
            std::fs::create_dir_all(d.join(p))?;
        }
        let targets = Targets::start(&wire)?;
        let client_data = d.join("client/data");
        let fp = alknet_cli(&alknet, &client_data, &["id"])?
            .trim()
            .to_owned();
        let gw_ip = wire.addr(Side::Gw);
        let serve = AlknetServe::start_via(
            &wire.exec(Side::Gw),
            &alknet,
            &d.join("serve"),
            &format!(
                "listen = \"{gw_ip}:4433\"\n[transport]\ncongestion = \"{congestion}\"\n\
                 [services.ssh]\nenabled = true\n\
                 [[peers]]\nid = \"bench\"\nfingerprints = [\"{fp}\"]\nscopes = [\"ssh\", \"tunnel\"]\n\
                 [[tunnels.allow]]\npeer = \"bench\"\nto = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n",
                targets.sink, targets.echo
            ),
        )?;
        let line = alknet_cli(&alknet, &serve.data_dir(), &["ssh", "host-key"])?;
        let host_key = host_key_of(&line)
            .ok_or_else(|| anyhow!("`alknet ssh host-key` printed no key: {line:?}"))?;
        let ak_ssh = SshClient::new(
            &d.join("ssh-alknet"),
            SshTarget {
                alias: "alknet-bench".into(),
                host_name: gw_ip.to_string(),
                port: None,
                user: current_user()?,
                identity: None,
                known_host_key: host_key,
                proxy_command: Some(alknet_proxy_command(
                    &alknet,
                    serve.addr(),
                    &client_data,
                    serve.fingerprint(),
                )),
            },
        )?;
        let sshd = Sshd::start_via(&wire.exec(Side::Gw), gw_ip)?;
        let sshd_client = sshd.client(&d.join("ssh-sshd"), "sshd-bench")?;
        Ok(Self {
            _dir: dir,
            alknet,
            client_data,
            serve,
            sshd,
            ak_ssh,
            sshd_client,
            targets,
            wire,
        })
    }

    /// The forwarder of `system` in the client's namespace, forwarding `bulk` and `echo`.
    fn forwarder(&self, system: System, bulk: u16, echo: u16) -> Result<Child> {
        let l_bulk = format!("127.0.0.1:{bulk}:127.0.0.1:{}", self.targets.sink);
        let l_echo = format!("127.0.0.1:{echo}:127.0.0.1:{}", self.targets.echo);
        let [a, b, c, d] = self.wire.exec(Side::Client);
        let mut cmd = Command::new(a);
        cmd.args([b, c, d]);
        match system {
            System::Tunnel => {
                cmd.arg(&self.alknet)
                    .arg("--data-dir")
                    .arg(&self.client_data)
                    .args(["forward", &self.serve.addr().to_string()])
                    .args(["--fingerprint", self.serve.fingerprint()])
                    .args(["-L", &l_bulk, "-L", &l_echo])
                    .env("RUST_LOG", "warn");
            }
            System::Ssh | System::Sshd => {
                let client = if system == System::Ssh {
                    &self.ak_ssh
                } else {
                    &self.sshd_client
                };
                cmd.arg("ssh")
                    .arg("-F")
                    .arg(client.config())
                    .args(["-N", "-o", "ExitOnForwardFailure=yes"])
                    .args(["-L", &l_bulk, "-L", &l_echo, client.alias()]);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start the {} forwarder", system.name()))
    }

    fn measure(&self, system: System, round: usize, secs: u64) -> Result<Figures> {
        let base = 20000 + (round * 10 + system as usize) as u16 * 2;
        let mut fwd = self.forwarder(system, base, base + 1)?;
        let [a, b, c, d] = self.wire.exec(Side::Client);
        let out = Command::new(a)
            .args([b, c, d])
            .arg(std::env::current_exe()?)
            .env(ROLE, "driver")
            .env("BULK_PORT", base.to_string())
            .env("ECHO_PORT", (base + 1).to_string())
            .env("SECS", secs.to_string())
            .stdin(Stdio::null())
            .output()?;
        let _ = fwd.kill();
        let _ = fwd.wait();
        if !out.status.success() {
            bail!(
                "{}: the driver failed: {}\nserver log: {}\nsshd log: {}",
                system.name(),
                String::from_utf8_lossy(&out.stderr),
                self.serve.log(),
                self.sshd.log()
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("driver output {:?}", String::from_utf8_lossy(&out.stdout)))?;
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        Ok(Figures {
            mb_s: f("bytes") / f("secs") / 1e6,
            p50_ms: f("p50_us") / 1e3,
            p99_ms: f("p99_us") / 1e3,
            max_ms: f("max_us") / 1e3,
        })
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn run() -> Result<()> {
    let secs = env_u64("ALKNET_BENCH_TUNNEL_SECS", 10)?;
    let rounds = env_u64("ALKNET_BENCH_TUNNEL_ROUNDS", 2)? as usize;
    let loss: f64 = std::env::var("ALKNET_BENCH_TUNNEL_LOSS")
        .ok()
        .map(|v| v.parse())
        .transpose()
        .map_err(|_| anyhow!("ALKNET_BENCH_TUNNEL_LOSS must be a number (percent)"))?
        .unwrap_or(1.0);
    let mbit = env_u64("ALKNET_BENCH_TUNNEL_MBIT", 200)? as u32;
    if alknet_core::net::sys::effective_uid() != 0 {
        bail!("this bench makes network namespaces: run it as root");
    }
    let congestion =
        std::env::var("ALKNET_BENCH_TUNNEL_CONGESTION").unwrap_or_else(|_| "cubic".into());
    let rig = Rig::start(loss, mbit, &congestion)?;
    println!("wire: {}", rig.wire.shaping());
    println!("alknet serve: [transport] congestion = \"{congestion}\"");
    println!(
        "{BULK_FLOWS} bulk downloads + 1 request flow ({REQUEST} B, every {REQUEST_GAP:?}), {secs} s per system and round, {rounds} rounds"
    );
    let systems = [System::Tunnel, System::Ssh, System::Sshd];
    let mut all: Vec<Vec<Figures>> = systems.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..systems.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let f = rig.measure(systems[i], round, secs)?;
            println!(
                "round {round} {:<14} {:>8.2} MB/s  request p50 {:>7.2} ms  p99 {:>8.2} ms  max {:>8.2} ms",
                systems[i].name(),
                f.mb_s,
                f.p50_ms,
                f.p99_ms,
                f.max_ms
            );
            all[i].push(f);
        }
    }
    let med = |i: usize, g: fn(&Figures) -> f64| median(all[i].iter().map(g).collect());
    println!(
        "\nmedians | aggregate MB/s | request p50 ms | request p99 ms | MB/s vs sshd | p99 vs sshd"
    );
    let base_mb = med(2, |f| f.mb_s);
    let base_p99 = med(2, |f| f.p99_ms);
    for (i, s) in systems.iter().enumerate() {
        let (mb, p50, p99) = (
            med(i, |f| f.mb_s),
            med(i, |f| f.p50_ms),
            med(i, |f| f.p99_ms),
        );
        println!(
            "{:<14} | {mb:>8.2} | {p50:>7.2} | {p99:>8.2} | {:>5.2}x | {:>5.2}x",
            s.name(),
            mb / base_mb,
            p99 / base_p99
        );
    }
    Ok(())
}

fn main() {
    let result = match std::env::var(ROLE).as_deref() {
        Ok("targets") => role_targets(),
        Ok("driver") => role_driver(),
        _ => {
            // `cargo bench` passes `--bench`; a filter naming another bench skips this one.
            let args: Vec<String> = std::env::args().skip(1).collect();
            if args
                .iter()
                .any(|a| !a.starts_with('-') && !"tunnel".contains(a.as_str()))
            {
                return;
            }
            run()
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
