//! Shared pieces of the integration tests: client keys, quinn clients, and `alknet serve`
//! run as a real process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const ALKNET: &str = env!("CARGO_BIN_EXE_alknet");

pub use alknet_testkit::ClientKey;

/// A quinn client configuration presenting `key` (or no certificate) and offering `alpn`.
pub fn quinn_client_config(key: Option<&ClientKey>, alpn: &[u8]) -> quinn::ClientConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(20).try_into().expect("idle")));
    alknet_testkit::quinn_client_config(
        key,
        alpn,
        Arc::new(alknet_testkit::AnyServer::default()),
        transport,
    )
    .expect("client config")
}

/// A quinn client endpoint on loopback.
pub fn quinn_endpoint() -> quinn::Endpoint {
    quinn_endpoint_on("127.0.0.1")
}

/// A quinn client endpoint on a given loopback address (e.g. 127.0.0.2).
pub fn quinn_endpoint_on(ip: &str) -> quinn::Endpoint {
    quinn::Endpoint::client(format!("{ip}:0").parse().expect("addr")).expect("client endpoint")
}

/// Connects and completes the handshake.
pub async fn connect(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    key: Option<&ClientKey>,
    alpn: &[u8],
) -> Result<quinn::Connection, quinn::ConnectionError> {
    ep.connect_with(quinn_client_config(key, alpn), addr, "alknet")
        .expect("connect call")
        .await
}

/// Connects a legitimate session that sends keep-alives, so it outlasts an abusive phase
/// longer than the idle timeout (building the abuse is slow on a loaded machine).
pub async fn connect_kept_alive(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    key: &ClientKey,
    alpn: &[u8],
) -> quinn::Connection {
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(20).try_into().expect("idle")));
    transport.keep_alive_interval(Some(Duration::from_secs(2)));
    let config = alknet_testkit::quinn_client_config(
        Some(key),
        alpn,
        Arc::new(alknet_testkit::AnyServer::default()),
        transport,
    )
    .expect("client config");
    ep.connect_with(config, addr, "alknet")
        .expect("connect call")
        .await
        .expect("live session")
}

/// Sends `data` on a new bidirectional stream and returns what comes back.
pub async fn echo(conn: &quinn::Connection, data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let (w, r) = tokio::join!(
        async {
            send.write_all(data).await?;
            send.finish()?;
            anyhow::Ok(())
        },
        recv.read_to_end(64 << 20)
    );
    w?;
    Ok(r?)
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `alknet serve` running as a child process.
pub struct Server {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub fingerprint: String,
    pub stderr_path: PathBuf,
    /// Disconnected when the child's stdout reaches its end: the process has exited.
    stdout_closed: std::sync::mpsc::Receiver<()>,
}

impl Server {
    /// Starts a server with this config (a `listen` line is added if absent).
    pub fn start(config: &str) -> Self {
        Self::try_start(config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Server::start`], returning why the server did not start instead of panicking.
    pub fn try_start(config: &str) -> Result<Self, String> {
        Self::try_start_in(tempfile::tempdir().expect("tempdir"), config)
    }

    /// Like [`Server::try_start`] in a directory of an earlier server (its data directory,
    /// node key and store kept), as a restart does.
    pub fn try_start_in(dir: tempfile::TempDir, config: &str) -> Result<Self, String> {
        Self::try_start_env(dir, config, &[])
    }

    /// Like [`Server::try_start_in`], with extra environment variables for the process.
    pub fn try_start_env(
        dir: tempfile::TempDir,
        config: &str,
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let mut text = String::new();
        if !config.contains("listen") {
            text.push_str("listen = \"127.0.0.1:0\"\n");
        }
        text.push_str(config);
        let cfg = dir.path().join("alknet.toml");
        std::fs::write(&cfg, text).expect("write config");
        let data = dir.path().join("data");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = Command::new(ALKNET)
            .args(["serve", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(&data)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn alknet serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let (stdout_open, stdout_closed) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            // Dropped at the end of stdout, which the server closes only by exiting.
            let _open = stdout_open;
            let mut lines = BufReader::new(stdout).lines();
            let mut addr = None;
            let mut fp = None;
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("alknet listening on ") {
                    addr = rest
                        .split(' ')
                        .next()
                        .and_then(|a| a.parse::<SocketAddr>().ok());
                }
                if let Some(rest) = line.strip_prefix("fingerprint ") {
                    fp = Some(rest.to_owned());
                }
                if line.starts_with("alpns ") {
                    break;
                }
            }
            let _ = tx.send((addr, fp));
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let (addr, fp) = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or((None, None));
        let (Some(addr), Some(fingerprint)) = (addr, fp) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "alknet serve did not start: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            ));
        };
        Ok(Self {
            child,
            dir,
            addr,
            fingerprint,
            stderr_path,
            stdout_closed,
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Takes this (exited) server's directory for a restart, leaving an empty one behind.
    pub fn take_dir(&mut self) -> tempfile::TempDir {
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    /// `alknet stats --json` of this server.
    pub fn stats(&self) -> serde_json::Value {
        alknet_core::ops::control::request(
            &self.data_dir(),
            &alknet_core::ops::control::Request::Stats,
        )
        .expect("stats request")
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.stats()["counters"][name].as_u64().expect("counter")
    }

    pub fn signal(&self, sig: i32) {
        // SIGTERM through the kill binary keeps the tests free of unsafe code.
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`: its stdout closing is the exit
    /// (only the kernel closes it), then `wait` collects the status.
    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        match self.stdout_closed.recv_timeout(limit) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => self.child.wait().ok(),
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

/// Waits until `cond` holds, at most `limit`, and panics naming `what` if it never does.
///
/// For what only a server process's counters show: the control socket answers requests but
/// sends no notifications, so this is the one place the integration tests poll (every
/// 20 ms). Everything with an event of its own (a datagram, a stream's bytes, a connection's
/// close, the process's exit) waits on that event instead.
pub async fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < until, "waited {limit:?} for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `[[peers]]` block granting `scopes` to `key`.
pub fn peer_toml(id: &str, key: &ClientKey, scopes: &[&str]) -> String {
    let scopes: Vec<String> = scopes.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[peers]]\nid = \"{id}\"\nfingerprints = [\"{}\"]\nscopes = [{}]\n",
        key.fingerprint,
        scopes.join(", ")
    )
}

/// Runs the alknet binary with arguments and stdin, returning (status, stdout, stderr).
pub fn run_cli(args: &[&str], data_dir: &Path, stdin: &[u8]) -> (i32, String, String) {
    let (code, out, err) = run_cli_raw(args, data_dir, stdin);
    (code, String::from_utf8_lossy(&out).into_owned(), err)
}

/// Like [`run_cli`], with stdout as bytes.
pub fn run_cli_raw(args: &[&str], data_dir: &Path, stdin: &[u8]) -> (i32, Vec<u8>, String) {
    use std::io::Write;
    let mut child = Command::new(ALKNET)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn alknet");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = feeder.join();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The test venv's Python, with the PyPI clients of `.ci/requirements.txt`.
pub fn test_python() -> String {
    std::env::var("ALKNET_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("ALKNET_TEST_PYTHON is unset: run .ci/test, which makes a venv with the Python clients (.ci/requirements.txt)")
    })
}

/// A loopback UDP port that is free now, for a server the test starts to bind.
pub fn free_udp_port() -> u16 {
    free_loopback_port(|port| std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok())
}

/// A loopback port for which `free` holds now, for a process the test starts to bind.
///
/// Chosen below the kernel's ephemeral range: a port from that range (a bind to port 0)
/// can be taken between this choice and the child's bind by any outgoing connection or
/// any socket another test binds to port 0, and the child then fails with "Address
/// already in use". Below the range only another such choice could collide, and one
/// counter (offset by the process id) keeps those apart.
pub fn free_loopback_port(free: impl Fn(u16) -> bool) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FLOOR: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = low.saturating_sub(FLOOR);
    let start = std::process::id().wrapping_mul(97) % span.max(1);
    for _ in 0..span.min(5_000) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        if let Ok(port) = u16::try_from(FLOOR + (start + n) % span) {
            if free(port) {
                return port;
            }
        }
    }
    panic!("no free loopback port in {FLOOR}..{low}")
}

/// An OpenSSH client set up as a user of `alknet ssh-config`: its own Alknet data directory
/// (its QUIC key), the config block printed by the server pasted into its config file, and
/// `ssh` run with `-F` on that file.
pub struct SshClient {
    pub dir: tempfile::TempDir,
    /// The client's Alknet key, `ed25519:…`.
    pub fingerprint: String,
    /// The pasted ssh config file.
    pub config: PathBuf,
}

impl SshClient {
    /// A client with a fresh Alknet key and no config yet.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (code, out, err) = run_cli(&["id"], &dir.path().join("alknet"), b"");
        assert_eq!(code, 0, "alknet id: {err}");
        let config = dir.path().join("ssh_config");
        Self {
            fingerprint: out.trim().to_owned(),
            dir,
            config,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("alknet")
    }

    /// Asks `server` for its `alknet ssh-config` block for `name` and pastes it, alone, into
    /// this client's config file. Returns the block.
    pub fn paste_config(&self, server: &Server, name: &str) -> String {
        let data = self.data_dir();
        let (code, block, err) = run_cli(
            &[
                "ssh-config",
                &server.addr.to_string(),
                "--name",
                name,
                "--alknet",
                ALKNET,
                "--client-data-dir",
                data.to_str().expect("utf-8 path"),
            ],
            &server.data_dir(),
            b"",
        );
        assert_eq!(code, 0, "alknet ssh-config: {err}");
        std::fs::write(&self.config, &block).expect("write ssh config");
        block
    }

    /// An `ssh` command for `host` with the pasted config: batch mode (no prompt), no agent,
    /// no keys but `identity` (if any), known hosts only from the config, this client's home
    /// untouched.
    pub fn ssh(&self, identity: Option<&Path>) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F")
            .arg(&self.config)
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.dir.path().join("known_hosts").display()
            ))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .env_remove("SSH_AUTH_SOCK")
            .env("RUST_LOG", "warn");
        match identity {
            Some(k) => cmd.arg("-i").arg(k),
            None => cmd.args(["-o", "IdentityFile=none"]),
        };
        cmd
    }

    /// Runs `ssh [extra…] gw COMMAND` with no stdin; returns (status, stdout, stderr).
    pub fn run(
        &self,
        identity: Option<&Path>,
        extra: &[&str],
        command: &str,
    ) -> (i32, String, String) {
        let out = self
            .ssh(identity)
            .args(extra)
            .arg("gw")
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .expect("ssh (Debian package openssh-client; .ci/test installs it)");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A new SSH key pair (ssh-keygen) in this client's directory; returns the private key's
    /// path and the public key line.
    pub fn keygen(&self, name: &str) -> (PathBuf, String) {
        let path = self.dir.path().join(name);
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test@alknet", "-f"])
            .arg(&path)
            .status()
            .expect("ssh-keygen (Debian package openssh-client)");
        assert!(status.success());
        let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
        (path, public.trim().to_owned())
    }
}

/// Process ids whose command line matches `pattern` exactly-ish (`pgrep -f`), for checking
/// that a session's children are gone.
pub fn pgrep(pattern: &str) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .expect("pgrep (Debian package procps)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}
