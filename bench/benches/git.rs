//! git through Alknet beside git over OpenSSH and beside `git daemon`, in the same run: a
//! clone and a fetch of one generated repository (10 000 commits, 200 MB of incompressible
//! blobs by default), with the stock `git` client every time.
//!
//! | system | server | client path |
//! |---|---|---|
//! | `alknet` | `alknet serve` (release build next to this bench), `alknet/git` | `git` → `git-remote-alknet` → QUIC on loopback |
//! | `sshd` (**baseline**) | Debian's `/usr/sbin/sshd` on a free loopback port, started here | `git` → `ssh` → TCP on loopback |
//! | `daemon` | `git daemon` on a free loopback port | `git` → `git://` on loopback (no encryption, no authentication) |
//!
//! Every system serves the same bare repository. A clone is `git clone --bare` (no checkout:
//! the work tree costs the same everywhere); a fetch is `git fetch` of the last 200 commits
//! into a clone of `main~200`. Rounds alternate which system goes first, and everything is
//! written back (`sync`) before each timed operation. Server CPU is `/proc/PID/stat` utime +
//! stime + cutime + cstime of the server process once it has reaped the operation's
//! processes (`git upload-pack` and what it runs, and for sshd its session processes).
//! Ratios are each system's figure over sshd's.
//!
//! Environment: `ALKNET_BENCH_GIT_COMMITS` (default 10000), `ALKNET_BENCH_GIT_BLOB_MB`
//! (default 200), `ALKNET_BENCH_GIT_ROUNDS` (default 3), `ALKNET_BENCH_GIT_SYSTEMS`
//! (`alknet,sshd,daemon`), `ALKNET_BIN` (default `target/release/alknet` beside this bench).
//! Build the server first: `cargo build --release -p alknet`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use alknet_testkit::openssh::{SshClient, Sshd, free_tcp_port};
use alknet_testkit::procstat::{self, cpu_times};
use alknet_testkit::serve::{AlknetServe, alknet_cli};
use anyhow::{Context, Result, anyhow, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Commits from the tip that a fetch brings.
const FETCH_COMMITS: usize = 200;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Alknet,
    Sshd,
    Daemon,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Alknet => "alknet",
            System::Sshd => "sshd",
            System::Daemon => "daemon",
        }
    }
}

fn env_num(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn alknet_bin() -> Result<PathBuf> {
    alknet_testkit::serve::release_alknet()
}

/// `git` with no system or user config.
fn git(home: &Path) -> Command {
    let mut c = Command::new("git");
    c.env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.org")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.org");
    c
}

fn run_ok(mut c: Command, what: &str) -> Result<()> {
    let out = c.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The bare repository at `path`: `commits` commits on `main`, each changing a small file,
/// and `blob_mb` incompressible 1 MiB blobs spread over them; `base` at `main~200`.
fn generate(home: &Path, path: &Path, commits: usize, blob_mb: usize) -> Result<()> {
    let mut init = git(home);
    init.args(["init", "--bare", "--quiet", "--initial-branch=main"])
        .arg(path);
    run_ok(init, "git init")?;
    let mut fi = git(home)
        .args(["fast-import", "--quiet"])
        .current_dir(path)
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot run git fast-import")?;
    {
        let mut w = std::io::BufWriter::new(fi.stdin.take().expect("stdin"));
        let every = (commits / blob_mb.max(1)).max(1);
        let mut blobs = 0;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..commits {
            writeln!(w, "commit refs/heads/main")?;
            writeln!(
                w,
                "committer bench <bench@example.org> {} +0000",
                1_700_000_000 + i
            )?;
            let msg = format!("commit {i}\n");
            write!(w, "data {}\n{msg}", msg.len())?;
            let body = format!("line {i}\n");
            write!(
                w,
                "M 100644 inline counter.txt\ndata {}\n{body}\n",
                body.len()
            )?;
            if i % every == 0 && blobs < blob_mb {
                writeln!(w, "M 100644 inline blobs/b{blobs}.bin\ndata {}", 1 << 20)?;
                let mut buf = vec![0u8; 1 << 20];
                for b in buf.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                w.write_all(&buf)?;
                writeln!(w)?;
                blobs += 1;
            }
        }
        w.flush()?;
    }
    if !fi.wait()?.success() {
        bail!("git fast-import failed");
    }
    let mut base = git(home);
    base.current_dir(path)
        .args(["branch", "base", &format!("main~{FETCH_COMMITS}")]);
    run_ok(base, "git branch base")?;
    Ok(())
}

struct Rig {
    dir: tempfile::TempDir,
    alknet: Option<(AlknetServe, PathBuf, PathBuf)>,
    sshd: Option<(Sshd, SshClient)>,
    daemon: Option<(Child, u16)>,
    repo: PathBuf,
}

impl Rig {
    fn url(&self, s: System) -> String {
        match s {
            System::Alknet => {
                let (serve, ..) = self.alknet.as_ref().expect("alknet");
                format!("alknet://{}/bench/big.git", serve.addr())
            }
            System::Sshd => {
                let (_, c) = self.sshd.as_ref().expect("sshd");
                format!("{}:{}", c.alias(), self.repo.display())
            }
            System::Daemon => {
                let (_, port) = self.daemon.as_ref().expect("daemon");
                format!("git://127.0.0.1:{port}/bench/big.git")
            }
        }
    }

    fn client(&self, s: System) -> Command {
        let mut c = git(self.dir.path());
        match s {
            System::Alknet => {
                let (serve, bin, data) = self.alknet.as_ref().expect("alknet");
                let path = format!(
                    "{}:{}",
                    bin.display(),
                    std::env::var("PATH").unwrap_or_default()
                );
                c.env("PATH", path)
                    .env("ALKNET_DATA_DIR", data)
                    .env("ALKNET_SERVER_FINGERPRINT", serve.fingerprint());
            }
            System::Sshd => {
                let (_, client) = self.sshd.as_ref().expect("sshd");
                c.env(
                    "GIT_SSH_COMMAND",
                    format!("ssh -F {}", client.config().display()),
                );
            }
            System::Daemon => {}
        }
        c
    }

    fn server_pid(&self, s: System) -> u32 {
        match s {
            System::Alknet => self.alknet.as_ref().expect("alknet").0.pid(),
            System::Sshd => self.sshd.as_ref().expect("sshd").0.pid(),
            System::Daemon => self.daemon.as_ref().expect("daemon").0.id(),
        }
    }

    fn server_cpu(&self, s: System) -> Result<f64> {
        let pid = self.server_pid(s);
        // upload-pack (and, for sshd, the session) counts once reaped.
        if !procstat::wait_no_children(pid, Duration::from_secs(10)) {
            bail!(
                "{}'s processes still run 10 s after the client exited",
                s.name()
            );
        }
        Ok(cpu_times(pid)?.with_children())
    }

    /// Runs `args` as the client of `s` in the rig's directory: (wall seconds, server CPU
    /// seconds).
    fn timed(&self, s: System, args: &[&str], cwd: &Path) -> Result<(f64, f64)> {
        run_ok(Command::new("sync"), "sync")?;
        let cpu0 = self.server_cpu(s)?;
        let start = Instant::now();
        let mut c = self.client(s);
        c.args(args).current_dir(cwd);
        run_ok(c, &format!("{} git {args:?}", s.name()))?;
        let secs = start.elapsed().as_secs_f64();
        Ok((secs, self.server_cpu(s)? - cpu0))
    }
}

fn main() {
    // `cargo test --benches` runs this without `--bench`: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("git bench: run it with `cargo bench -p alknet-bench --bench git`");
        return;
    }
    if let Err(e) = run() {
        eprintln!("git bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let commits = env_num("ALKNET_BENCH_GIT_COMMITS", 10_000)?;
    let blob_mb = env_num("ALKNET_BENCH_GIT_BLOB_MB", 200)?;
    let rounds = env_num("ALKNET_BENCH_GIT_ROUNDS", 3)?.max(1);
    let systems: Vec<System> = std::env::var("ALKNET_BENCH_GIT_SYSTEMS")
        .unwrap_or_else(|_| "alknet,sshd,daemon".into())
        .split(',')
        .map(|w| match w.trim() {
            "alknet" => Ok(System::Alknet),
            "sshd" => Ok(System::Sshd),
            "daemon" => Ok(System::Daemon),
            other => Err(anyhow!("unknown system {other:?} (alknet, sshd, daemon)")),
        })
        .collect::<Result<_>>()?;
    let dir = tempfile::Builder::new()
        .prefix("alknet-bench-git")
        .tempdir()?;

    // The alknet server first: the repository is generated inside its git root, and the
    // other servers serve that same directory.
    let alknet_path = alknet_bin()?;
    let client_data = dir.path().join("client/alknet");
    let fp = alknet_cli(&alknet_path, &client_data, &["id"])?
        .trim()
        .to_owned();
    let serve_dir = dir.path().join("serve");
    std::fs::create_dir_all(&serve_dir)?;
    let serve = AlknetServe::start(
        &alknet_path,
        &serve_dir,
        &format!(
            "listen = \"127.0.0.1:0\"\n\
             [[peers]]\nid = \"bench\"\nfingerprints = [\"{fp}\"]\nscopes = [\"git\"]\n\
             [[git.allow]]\nscope = \"git\"\nrepos = [\"**\"]\naccess = [\"read\"]\n"
        ),
    )?;
    let root = serve.data_dir().join("git");
    let repo = root.join("bench/big.git");
    std::fs::create_dir_all(repo.parent().expect("parent"))?;
    let t = Instant::now();
    generate(dir.path(), &repo, commits, blob_mb)?;
    let size = dir_size(&repo);
    println!(
        "git: {commits} commits, {blob_mb} MiB of blobs, repository {:.1} MB, generated in {:.1} s",
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let bin = dir.path().join("client/bin");
    std::fs::create_dir_all(&bin)?;
    std::os::unix::fs::symlink(&alknet_path, bin.join("git-remote-alknet"))?;
    let alknet = systems
        .contains(&System::Alknet)
        .then_some((serve, bin, client_data));
    let sshd = if systems.contains(&System::Sshd) {
        let sshd = Sshd::start()?;
        let client_dir = dir.path().join("client/ssh");
        std::fs::create_dir_all(&client_dir)?;
        let client = sshd.client(&client_dir, "sshd-bench")?;
        Some((sshd, client))
    } else {
        None
    };
    let daemon = if systems.contains(&System::Daemon) {
        let port = free_tcp_port()?;
        // git-daemon itself (`git daemon` would run it as a child of its own): its forks per
        // connection are then the server's children.
        let exec_path = git(dir.path()).arg("--exec-path").output()?;
        let exec_path = String::from_utf8_lossy(&exec_path.stdout).trim().to_owned();
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .env("HOME", dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .args(["--reuseaddr", "--listen=127.0.0.1", "--export-all"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", root.display()))
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run git daemon")?;
        // Ready once it accepts connections.
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > until {
                bail!("git daemon did not listen on port {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some((child, port))
    } else {
        None
    };
    let rig = Rig {
        dir,
        alknet,
        sshd,
        daemon,
        repo,
    };

    let work = rig.dir.path().join("work");
    let mut results: Vec<(System, &str, f64, f64)> = Vec::new();
    for round in 0..rounds {
        let mut order = systems.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for &s in &order {
            let _ = std::fs::remove_dir_all(&work);
            std::fs::create_dir_all(&work)?;
            let url = rig.url(s);
            let (secs, cpu) =
                rig.timed(s, &["clone", "--bare", "--quiet", &url, "clone.git"], &work)?;
            println!(
                "round {round} {:<7} clone {secs:>7.2} s  server CPU {cpu:.2} s",
                s.name()
            );
            results.push((s, "clone", secs, cpu));

            let mut base = rig.client(s);
            base.args([
                "clone",
                "--bare",
                "--quiet",
                "--single-branch",
                "--branch",
                "base",
            ])
            .arg(&url)
            .arg("old.git")
            .current_dir(&work);
            run_ok(base, "the clone of base")?;
            let old = work.join("old.git");
            let (secs, cpu) = rig.timed(s, &["fetch", "--quiet", &url, "main:main"], &old)?;
            println!(
                "round {round} {:<7} fetch {secs:>7.2} s  server CPU {cpu:.2} s",
                s.name()
            );
            results.push((s, "fetch", secs, cpu));
        }
    }

    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let pick = |s: System, op: &str, cpu: bool| {
        median(
            results
                .iter()
                .filter(|r| r.0 == s && r.1 == op)
                .map(|r| if cpu { r.3 } else { r.2 })
                .collect(),
        )
    };
    println!(
        "\ngit: median of {rounds} rounds; ratios are each system / sshd\n\n\
         | operation | system | wall s | server CPU s | wall × sshd | CPU × sshd |\n|---|---|--:|--:|--:|--:|"
    );
    for op in ["clone", "fetch"] {
        for &s in &systems {
            let (w, c) = (pick(s, op, false), pick(s, op, true));
            let (rw, rc) = if systems.contains(&System::Sshd) {
                (
                    format!("{:.2}", w / pick(System::Sshd, op, false)),
                    format!("{:.2}", c / pick(System::Sshd, op, true)),
                )
            } else {
                ("—".into(), "—".into())
            };
            println!("| {op} | {} | {w:.2} | {c:.2} | {rw} | {rc} |", s.name());
        }
    }
    if let Some((mut child, _)) = rig.daemon {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(())
}

fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => n += dir_size(&e.path()),
                Ok(_) => n += e.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    n
}
