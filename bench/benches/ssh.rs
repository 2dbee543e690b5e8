//! SSH through Alknet beside OpenSSH's own server, in the same run: an SFTP download and
//! upload of one file (1 GiB by default) and an interactive round trip (one keystroke
//! echoed back through a PTY), with the stock OpenSSH clients in both cases.
//!
//! | system | server | client path |
//! |---|---|---|
//! | `alknet` | `alknet serve` (release build next to this bench) with `[services.ssh]` | `ssh`/`sftp` → `alknet connect` as `ProxyCommand` → QUIC on loopback |
//! | `russh-tcp` | the same russh server and handler as `alknet`'s SSH service (`alknet_ssh::bench`, the `ssh-tcp-server` binary of this crate), on plain TCP: no QUIC, no tokio bridge, no proxy | `ssh`/`sftp` → TCP on loopback |
//! | `sshd` (**baseline**) | Debian's `/usr/sbin/sshd` on a free loopback port, started here | `ssh`/`sftp` → TCP on loopback |
//!
//! `alknet` over `russh-tcp` is what QUIC, the bridge and the `alknet connect` proxy cost.
//!
//! Rounds alternate which system goes first, so the machine's load falls on both alike.
//! Server CPU is `/proc/PID/stat` utime + stime (+ cutime + cstime) of `alknet serve`, and
//! of the `sshd` listener once it has reaped the session's processes (so it includes the
//! per-connection `sshd` and `sftp-server`). Client CPU is the `alknet connect` proxy's own
//! utime + stime, sampled every 10 ms while it runs. Ratios are Alknet's figure over sshd's.
//!
//! Environment: `ALKNET_BENCH_SSH_MB` (file size, default 1024), `ALKNET_BENCH_SSH_ROUNDS`
//! (default 3), `ALKNET_BENCH_SSH_KEYS` (keystrokes per round and system, default 500),
//! `ALKNET_BENCH_SSH_TRANSFERS` (`get,put,cat` by default: SFTP download, SFTP upload, and
//! `ssh HOST cat FILE` down an exec channel), `ALKNET_BENCH_SSH_SYSTEMS` (`alknet,russh-tcp,sshd` by default; `sshd` alone measures the baseline),
//! `ALKNET_BIN` (the `alknet` binary; default `target/release/alknet` beside this bench),
//! `ALKNET_BENCH_SSH_SERVER_CONFIG` (TOML put at the top of `alknet serve`'s config, e.g.
//! `[transport]` keys to compare).
//! Build the server first: `cargo build --release -p alknet`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use alknet_testkit::openssh::{
    PtyEcho, SshClient, SshTarget, Sshd, alknet_proxy_command, current_user, sha256_file,
    wait_child, write_pattern_file,
};
use alknet_testkit::procstat::{self, cpu_times};
use alknet_testkit::serve::{AlknetServe, alknet_cli, host_key_of};
use anyhow::{Result, anyhow, bail};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The longest one transfer may take (1 GiB at 10 MB/s on a loaded machine).
const TRANSFER_LIMIT: Duration = Duration::from_secs(300);
/// The longest one keystroke may take to come back.
const KEY_LIMIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Alknet,
    /// The service's russh server on plain TCP (the bridge-cost variant).
    RusshTcp,
    Sshd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Alknet => "alknet",
            System::RusshTcp => "russh-tcp",
            System::Sshd => "sshd",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Direction {
    /// `sftp -b` with one `get`.
    Download,
    /// `sftp -b` with one `put`.
    Upload,
    /// `ssh HOST cat FILE > LOCAL`: the file down an exec channel, no SFTP.
    Cat,
}

impl Direction {
    fn parse(list: &str) -> Result<Vec<Self>> {
        list.split(',')
            .map(|w| match w.trim() {
                "get" => Ok(Self::Download),
                "put" => Ok(Self::Upload),
                "cat" => Ok(Self::Cat),
                other => Err(anyhow!(
                    "ALKNET_BENCH_SSH_TRANSFERS: unknown transfer {other:?}; use get, put, cat"
                )),
            })
            .collect()
    }
}

/// One measured transfer.
#[derive(Clone, Copy, Debug)]
struct Transfer {
    secs: f64,
    server_cpu: f64,
    client_cpu: Option<f64>,
}

fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

fn alknet_bin() -> Result<PathBuf> {
    alknet_testkit::serve::release_alknet()
}

/// Both servers, their clients, and the files.
struct Rig {
    dir: tempfile::TempDir,
    src_hash: String,
    /// The systems measured (`ALKNET_BENCH_SSH_SYSTEMS`).
    systems: Vec<System>,
    /// Alknet's server and client, unless only the baseline is measured.
    alknet: Option<(AlknetServe, SshClient)>,
    /// The russh server on plain TCP and its client, when measured.
    tcp: Option<(TcpServer, SshClient)>,
    sshd: Sshd,
    sshd_client: SshClient,
    ak_root: PathBuf,
    sshd_root: PathBuf,
}

impl Rig {
    fn start(mb: u64, systems: Vec<System>) -> Result<Self> {
        // tmpfs where there is one: the disk is not what is measured.
        let dir = if Path::new("/dev/shm").is_dir() {
            tempfile::Builder::new()
                .prefix("alknet-bench-ssh")
                .tempdir_in("/dev/shm")?
        } else {
            tempfile::Builder::new()
                .prefix("alknet-bench-ssh")
                .tempdir()?
        };
        let d = dir.path();
        let ak_root = d.join("alknet-root");
        let sshd_root = d.join("sshd-root");
        for p in [
            &ak_root,
            &sshd_root,
            &d.join("local"),
            &d.join("serve"),
            &d.join("client"),
        ] {
            std::fs::create_dir_all(p)?;
        }
        let src = ak_root.join("src.bin");
        write_pattern_file(&src, 7, mb << 20)?;
        std::fs::hard_link(&src, sshd_root.join("src.bin"))?;
        std::fs::copy(&src, d.join("local/up.bin"))?;
        let src_hash = sha256_file(&src)?;

        let alknet = if systems.contains(&System::Alknet) {
            Some(Self::start_alknet(d, &ak_root)?)
        } else {
            None
        };

        let tcp = if systems.contains(&System::RusshTcp) {
            Some(TcpServer::start(d, &ak_root)?)
        } else {
            None
        };

        let sshd = Sshd::start()?;
        let sshd_dir = d.join("client/ssh-sshd");
        std::fs::create_dir_all(&sshd_dir)?;
        let sshd_client = sshd.client(&sshd_dir, "sshd-bench")?;

        let rig = Self {
            dir,
            src_hash,
            systems,
            alknet,
            tcp,
            sshd,
            sshd_client,
            ak_root,
            sshd_root,
        };
        for &s in &rig.systems {
            let (code, out, err) = rig.client(s).ssh("echo ready")?;
            if code != 0 || out != "ready\n" {
                bail!(
                    "{}: `ssh echo ready` gave {code}, {out:?}: {err}{}",
                    s.name(),
                    rig.log(s)
                );
            }
        }
        Ok(rig)
    }

    fn start_alknet(d: &Path, ak_root: &Path) -> Result<(AlknetServe, SshClient)> {
        let alknet_path = alknet_bin()?;
        let client_data = d.join("client/data");
        let fp = alknet_cli(&alknet_path, &client_data, &["id"])?
            .trim()
            .to_owned();
        let alknet = AlknetServe::start(
            &alknet_path,
            &d.join("serve"),
            &format!(
                "listen = \"127.0.0.1:0\"\n{}\n\
                 [services.ssh]\nenabled = true\nsftp_root = \"{}\"\n\
                 [[peers]]\nid = \"bench\"\nfingerprints = [\"{fp}\"]\nscopes = [\"ssh\"]\n",
                std::env::var("ALKNET_BENCH_SSH_SERVER_CONFIG").unwrap_or_default(),
                ak_root.display()
            ),
        )?;
        let line = alknet_cli(&alknet_path, &alknet.data_dir(), &["ssh", "host-key"])?;
        let host_key = host_key_of(&line)
            .ok_or_else(|| anyhow!("`alknet ssh host-key` printed no key: {line:?}"))?;
        let ak_dir = d.join("client/ssh-alknet");
        std::fs::create_dir_all(&ak_dir)?;
        let ak_client = SshClient::new(
            &ak_dir,
            SshTarget {
                alias: "alknet-bench".into(),
                host_name: alknet.addr().ip().to_string(),
                port: None,
                user: current_user()?,
                identity: None,
                known_host_key: host_key,
                proxy_command: Some(alknet_proxy_command(
                    &alknet_path,
                    alknet.addr(),
                    &client_data,
                    alknet.fingerprint(),
                )),
            },
        )?;
        Ok((alknet, ak_client))
    }

    fn alk(&self) -> &(AlknetServe, SshClient) {
        self.alknet.as_ref().expect("alknet is among the systems")
    }

    fn tcp(&self) -> &(TcpServer, SshClient) {
        self.tcp.as_ref().expect("russh-tcp is among the systems")
    }

    fn client(&self, s: System) -> &SshClient {
        match s {
            System::Alknet => &self.alk().1,
            System::RusshTcp => &self.tcp().1,
            System::Sshd => &self.sshd_client,
        }
    }

    fn log(&self, s: System) -> String {
        match s {
            System::Alknet => self.alk().0.log(),
            System::RusshTcp => String::new(),
            System::Sshd => self.sshd.log(),
        }
    }

    /// The server's CPU so far, once it has nothing of the last session left running.
    fn server_cpu(&self, s: System) -> Result<f64> {
        match s {
            System::Alknet => Ok(cpu_times(self.alk().0.pid())?.with_children()),
            System::RusshTcp => Ok(cpu_times(self.tcp().0.child.id())?.with_children()),
            System::Sshd => {
                if !procstat::wait_no_children(self.sshd.pid(), Duration::from_secs(10)) {
                    bail!("sshd's session processes still run 10 s after the client exited");
                }
                Ok(cpu_times(self.sshd.pid())?.with_children())
            }
        }
    }

    /// Where the file lives on the server side, and how the client names it.
    fn remote(&self, s: System, name: &str) -> (PathBuf, String) {
        match s {
            // Paths are shown to the client relative to `sftp_root`.
            System::Alknet | System::RusshTcp => (self.ak_root.join(name), name.to_owned()),
            System::Sshd => {
                let p = self.sshd_root.join(name);
                let shown = p.display().to_string();
                (p, shown)
            }
        }
    }

    fn transfer(&self, s: System, dir: Direction) -> Result<Transfer> {
        let local = self.dir.path().join("local");
        let (batch, check) = match dir {
            Direction::Download | Direction::Cat => {
                let dst = local.join("down.bin");
                let (_, shown) = self.remote(s, "src.bin");
                (format!("get {shown} {}\n", dst.display()), dst)
            }
            Direction::Upload => {
                let (on_server, shown) = self.remote(s, "up.bin");
                (
                    format!("put {} {shown}\n", local.join("up.bin").display()),
                    on_server,
                )
            }
        };
        let _ = std::fs::remove_file(&check);
        // Earlier transfers' files are written back now, not during this one.
        std::process::Command::new("sync").status()?;
        let cpu0 = self.server_cpu(s)?;
        let start = Instant::now();
        let mut child = if dir == Direction::Cat {
            let (on_server, _) = self.remote(s, "src.bin");
            self.client(s)
                .command("ssh")
                .arg(self.client(s).alias())
                .arg("--")
                .arg(format!("cat {}", on_server.display()))
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&check)?)
                .stderr(Stdio::piped())
                .spawn()?
        } else {
            self.client(s).sftp_batch(&batch, &local)?
        };
        let sampler = (s == System::Alknet).then(|| ProxySampler::start(child.id()));
        let status = wait_child(&mut child, TRANSFER_LIMIT, "sftp")?;
        let secs = start.elapsed().as_secs_f64();
        let client_cpu = sampler.map(ProxySampler::finish);
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        if !status.success() {
            bail!("{} {dir:?}: {status}: {err}{}", s.name(), self.log(s));
        }
        let cpu1 = self.server_cpu(s)?;
        let hash = sha256_file(&check)?;
        if hash != self.src_hash {
            bail!(
                "{} {dir:?}: {} differs from the source",
                s.name(),
                check.display()
            );
        }
        let _ = std::fs::remove_file(&check);
        Ok(Transfer {
            secs,
            server_cpu: cpu1 - cpu0,
            client_cpu,
        })
    }

    /// `keys` keystrokes, each written to `ssh -tt` and timed until `cat` on a raw PTY at
    /// the server echoes it back.
    fn keystrokes(&self, s: System, keys: u64, out: &mut Vec<Duration>) -> Result<()> {
        let mut pty = PtyEcho::start(self.client(s), Duration::from_secs(30))
            .map_err(|e| anyhow!("{} interactive: {e:#}{}", s.name(), self.log(s)))?;
        for i in 0..keys {
            let key = b'a' + (i % 26) as u8;
            let took = pty
                .round_trip(key, KEY_LIMIT)
                .map_err(|e| anyhow!("{} keystroke {i}: {e:#}{}", s.name(), self.log(s)))?;
            out.push(took);
        }
        Ok(())
    }

    /// Key exchange, host key and cipher the OpenSSH client reports (`ssh -v`).
    fn negotiated(&self, s: System) -> Result<String> {
        let out = self
            .client(s)
            .command("ssh")
            .arg("-v")
            .arg(self.client(s).alias())
            .arg("true")
            .stdin(Stdio::null())
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        let pick = |what: &str| {
            err.lines()
                .find_map(|l| l.split_once(what).map(|(_, v)| v.trim().to_owned()))
                .unwrap_or_else(|| "?".into())
        };
        Ok(format!(
            "kex {}, host key {}, cipher {}",
            pick("kex: algorithm:"),
            pick("kex: host key algorithm:"),
            pick("kex: server->client cipher:")
        ))
    }
}

/// `ssh-tcp-server`: the service's russh server on plain TCP, killed on drop.
struct TcpServer {
    child: std::process::Child,
}

impl TcpServer {
    fn start(d: &Path, root: &Path) -> Result<(Self, SshClient)> {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ssh-tcp-server"))
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
        }
        let server = Self { child };
        let (addr, key) = line
            .trim()
            .split_once(' ')
            .ok_or_else(|| anyhow!("ssh-tcp-server printed {line:?}, not `ADDR KEY`"))?;
        let addr: std::net::SocketAddr = addr.parse()?;
        let dir = d.join("client/ssh-tcp");
        std::fs::create_dir_all(&dir)?;
        let client = SshClient::new(
            &dir,
            SshTarget {
                alias: "russh-tcp-bench".into(),
                host_name: addr.ip().to_string(),
                port: Some(addr.port()),
                user: current_user()?,
                identity: None,
                known_host_key: key.to_owned(),
                proxy_command: None,
            },
        )?;
        Ok((server, client))
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CPU of the `alknet connect` process under an `sftp`/`ssh` client, sampled until
/// [`ProxySampler::finish`].
struct ProxySampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<f64>,
}

impl ProxySampler {
    fn start(root: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut pid = None;
            let mut cpu = 0.0f64;
            while !st.load(Ordering::Relaxed) {
                if pid.is_none() {
                    pid = find_descendant(root, "alknet");
                }
                if let Some(p) = pid
                    && let Ok(t) = cpu_times(p)
                {
                    cpu = cpu.max(t.own());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            cpu
        });
        Self { stop, handle }
    }

    fn finish(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(0.0)
    }
}

fn find_descendant(root: u32, name: &str) -> Option<u32> {
    let mut queue = vec![root];
    while let Some(p) = queue.pop() {
        for c in procstat::children(p) {
            if procstat::parent_and_name(c).is_some_and(|(_, n)| n == name) {
                return Some(c);
            }
            queue.push(c);
        }
    }
    None
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn run() -> Result<()> {
    let mb = env_u64("ALKNET_BENCH_SSH_MB", 1024)?.max(1);
    let rounds = env_u64("ALKNET_BENCH_SSH_ROUNDS", 3)?.max(1);
    let keys = env_u64("ALKNET_BENCH_SSH_KEYS", 500)?;
    println!("ssh: {mb} MiB transfers, {keys} keystrokes, {rounds} rounds");
    let systems = match std::env::var("ALKNET_BENCH_SSH_SYSTEMS") {
        Err(_) => vec![System::Alknet, System::RusshTcp, System::Sshd],
        Ok(v) => v
            .split(',')
            .map(|w| match w.trim() {
                "alknet" => Ok(System::Alknet),
                "russh-tcp" => Ok(System::RusshTcp),
                "sshd" => Ok(System::Sshd),
                other => Err(anyhow!(
                    "ALKNET_BENCH_SSH_SYSTEMS: unknown system {other:?}; use alknet, russh-tcp, sshd"
                )),
            })
            .collect::<Result<Vec<_>>>()?,
    };
    // Ratios are taken against sshd, for every other system measured.
    let compared: Vec<System> = if systems.contains(&System::Sshd) {
        systems
            .iter()
            .copied()
            .filter(|&s| s != System::Sshd)
            .collect()
    } else {
        Vec::new()
    };
    let transfers = Direction::parse(
        &std::env::var("ALKNET_BENCH_SSH_TRANSFERS").unwrap_or_else(|_| "get,put,cat".into()),
    )?;
    let rig = Rig::start(mb, systems.clone())?;
    for &s in &systems {
        println!("{}: {}", s.name(), rig.negotiated(s)?);
    }
    let mut results: Vec<(System, Direction, Transfer)> = Vec::new();
    let mut latency: Vec<(System, Vec<Duration>)> =
        systems.iter().map(|&s| (s, Vec::new())).collect();
    for round in 0..rounds {
        let mut order = systems.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for &dir in &transfers {
            for &s in &order {
                let t = rig.transfer(s, dir)?;
                println!(
                    "round {round} {:<6} {dir:<8?} {:>8.1} MB/s  server CPU {:.2} s/GB{}",
                    s.name(),
                    mb as f64 * 1.048_576 / t.secs,
                    t.server_cpu / gb(mb),
                    t.client_cpu
                        .map(|c| format!("  proxy CPU {:.2} s/GB", c / gb(mb)))
                        .unwrap_or_default()
                );
                results.push((s, dir, t));
            }
        }
        for &s in &order {
            let samples = &mut latency.iter_mut().find(|(x, _)| *x == s).expect("slot").1;
            rig.keystrokes(s, keys, samples)?;
        }
    }

    let pick = |s: System, d: Direction, f: &dyn Fn(&Transfer) -> f64| {
        median(
            results
                .iter()
                .filter(|(x, y, _)| *x == s && *y == d)
                .map(|(_, _, t)| f(t))
                .collect(),
        )
    };
    println!(
        "\nssh: {mb} MiB, median of {rounds} rounds; ratios are alknet / sshd\n\n\
         | transfer | system | MB/s | server CPU s/GB | proxy CPU s/GB |\n|---|---|--:|--:|--:|"
    );
    for &d in &transfers {
        for &s in &systems {
            let rate = pick(s, d, &|t| mb as f64 * 1.048_576 / t.secs);
            let cpu = pick(s, d, &|t| t.server_cpu / gb(mb));
            let proxy = if s == System::Alknet {
                format!(
                    "{:.2}",
                    pick(s, d, &|t| t.client_cpu.unwrap_or(f64::NAN) / gb(mb))
                )
            } else {
                "—".into()
            };
            println!("| {d:?} | {} | {rate:.1} | {cpu:.2} | {proxy} |", s.name());
        }
    }
    if !compared.is_empty() {
        println!(
            "\n| transfer | system | throughput × sshd | server CPU/GB × sshd |\n|---|---|--:|--:|"
        );
    }
    for &d in &transfers {
        for &s in &compared {
            let ratio = |f: &dyn Fn(&Transfer) -> f64| pick(s, d, f) / pick(System::Sshd, d, f);
            println!(
                "| {d:?} | {} | {:.2} | {:.2} |",
                s.name(),
                ratio(&|t| 1.0 / t.secs),
                ratio(&|t| t.server_cpu)
            );
        }
    }
    if keys > 0 {
        println!(
            "\nssh: interactive round trip (one keystroke through `ssh -tt` to `cat` on a raw \
             PTY), {} per system\n\n| system | p50 µs | p99 µs |\n|---|--:|--:|",
            keys * rounds
        );
        let mut p = Vec::new();
        for (s, v) in &mut latency {
            let s = *s;
            v.sort();
            let (p50, p99) = (percentile(v, 50), percentile(v, 99));
            println!(
                "| {} | {} | {} |",
                s.name(),
                p50.as_micros(),
                p99.as_micros()
            );
            p.push((s, p50, p99));
        }
        let base = p.iter().find(|(s, _, _)| *s == System::Sshd).copied();
        for &(s, p50, p99) in p.iter().filter(|(s, _, _)| compared.contains(s)) {
            if let Some((_, b50, b99)) = base {
                println!(
                    "| {} × sshd | {:.2} | {:.2} |",
                    s.name(),
                    p50.as_secs_f64() / b50.as_secs_f64(),
                    p99.as_secs_f64() / b99.as_secs_f64()
                );
            }
        }
    }
    Ok(())
}

fn gb(mb: u64) -> f64 {
    mb as f64 * 1.048_576 / 1000.0
}

fn main() {
    // `cargo test --benches` runs this without `--bench`: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("ssh bench: run it with `cargo bench -p alknet-bench --bench ssh`");
        return;
    }
    if let Err(e) = run() {
        eprintln!("ssh bench: {e:#}");
        std::process::exit(1);
    }
}
