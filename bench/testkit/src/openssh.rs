//! The real OpenSSH binaries, for tests and benchmarks: `sshd` started on a free loopback
//! port as the current user ([`Sshd`]), and `ssh`/`sftp`/`scp` run with a generated `-F`
//! config ([`SshClient`]) that reaches either that `sshd` over TCP or an Alknet server
//! through `alknet connect` as its `ProxyCommand`.
//!
//! Nothing here reads `~/.ssh`: keys, `known_hosts` and configs live in temp directories,
//! and every client runs in batch mode, so a missing key or a changed host key is an error,
//! never a prompt.

use anyhow::{Context, Result, anyhow, bail};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's `sshd` (package `openssh-server`).
pub const SSHD: &str = "/usr/sbin/sshd";
/// Debian's SFTP server, run by `sshd` for the `sftp` subsystem.
pub const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

/// How long `sshd` gets to accept connections after it was started.
const READY_LIMIT: Duration = Duration::from_secs(10);

/// Generates an unencrypted Ed25519 key pair at `path` (and `path.pub`) with `ssh-keygen`.
pub fn generate_key(path: &Path, comment: &str) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow!("cannot run ssh-keygen ({e}); install openssh-client"))?;
    if !out.status.success() {
        bail!(
            "ssh-keygen -f {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The `type base64` part of a `.pub` file.
pub fn public_key(pub_path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(pub_path)
        .with_context(|| format!("cannot read {}", pub_path.display()))?;
    let mut parts = text.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(t), Some(k)) => Ok(format!("{t} {k}")),
        _ => bail!("{}: not an OpenSSH public key", pub_path.display()),
    }
}

/// The name of the user this process runs as (`id -un`).
pub fn current_user() -> Result<String> {
    let out = Command::new("id")
        .arg("-un")
        .output()
        .context("cannot run id -un")?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || name.is_empty() {
        bail!("id -un found no user name");
    }
    Ok(name)
}

/// An `sshd -D -e` on a free loopback port, as the current user, with a generated host key
/// and one authorised client key; killed (with its sessions) on drop.
pub struct Sshd {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    listen: std::net::IpAddr,
    host_key: String,
}

impl Sshd {
    /// Starts it and waits (at most 10 s) until its port accepts connections.
    pub fn start() -> Result<Self> {
        Self::start_via(&[], std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// [`Sshd::start`] run through `prefix` (e.g. `ip netns exec NAME`) and listening on
    /// `listen`; ready once its log says it listens (its port may not be reachable from
    /// here).
    pub fn start_via(prefix: &[&str], listen: std::net::IpAddr) -> Result<Self> {
        if !Path::new(SSHD).exists() {
            bail!("{SSHD} is missing; install openssh-server");
        }
        if !Path::new(SFTP_SERVER).exists() {
            bail!("{SFTP_SERVER} is missing; install openssh-sftp-server");
        }
        // sshd's privilege separation directory, which Debian's service unit normally makes.
        std::fs::create_dir_all("/run/sshd")
            .context("cannot create /run/sshd (sshd's privilege separation directory)")?;
        let dir = tempfile::Builder::new().prefix("alknet-sshd").tempdir()?;
        let host_key = dir.path().join("host_ed25519");
        generate_key(&host_key, "sshd-host")?;
        generate_key(&dir.path().join("client_ed25519"), "sshd-client")?;
        std::fs::write(
            dir.path().join("authorized_keys"),
            format!("{}\n", public_key(&dir.path().join("client_ed25519.pub"))?),
        )?;
        let host_pub = public_key(&dir.path().join("host_ed25519.pub"))?;
        // The port is free when picked and sshd binds it a moment later; another process may
        // take it in between, so a failed bind is retried on another port.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_tcp_port()?;
            match Self::launch(&dir, port, prefix, listen) {
                Ok(child) => {
                    return Ok(Self {
                        child,
                        dir,
                        port,
                        listen,
                        host_key: host_pub,
                    });
                }
                Err(e) => last = format!("{e:#}"),
            }
        }
        bail!("sshd did not start: {last}")
    }

    fn launch(
        dir: &tempfile::TempDir,
        port: u16,
        prefix: &[&str],
        listen: std::net::IpAddr,
    ) -> Result<Child> {
        let d = dir.path();
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\n\
                 ListenAddress {listen}\n\
                 HostKey {host}\n\
                 AuthorizedKeysFile {auth}\n\
                 PidFile {pid}\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PrintMotd no\n\
                 PrintLastLog no\n\
                 AcceptEnv LANG LC_* TERM\n\
                 Subsystem sftp {SFTP_SERVER}\n",
                host = d.join("host_ed25519").display(),
                auth = d.join("authorized_keys").display(),
                pid = d.join("sshd.pid").display(),
            ),
        )?;
        let log = std::fs::File::create(d.join("sshd.log"))?;
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(SSHD);
                c
            }
            None => Command::new(SSHD),
        };
        let mut child = cmd
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow!("cannot run {SSHD}: {e}"))?;
        let addr = SocketAddr::new(listen, port);
        let until = Instant::now() + READY_LIMIT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "sshd exited ({status}): {}",
                    std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
                );
            }
            let ready = if prefix.is_empty() {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            } else {
                std::fs::read_to_string(d.join("sshd.log"))
                    .unwrap_or_default()
                    .contains(&format!("Server listening on {listen} port {port}"))
            };
            if ready {
                return Ok(child);
            }
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                bail!("sshd did not accept on {addr} within {READY_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The listener's pid: its utime + stime + cutime + cstime, once the sessions' processes
    /// are reaped, is all the server's CPU (sshd's per-connection processes and
    /// `sftp-server` included).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The authorised client key (pass it as the identity of an [`SshClient`]).
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_ed25519")
    }

    /// Its temp directory (config, keys, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its `-e` log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// A client for this server: host `alias`, the current user, the authorised key, a
    /// `known_hosts` with this server's host key, its config files in `dir`.
    pub fn client(&self, dir: &Path, alias: &str) -> Result<SshClient> {
        SshClient::new(
            dir,
            SshTarget {
                alias: alias.to_owned(),
                host_name: self.listen.to_string(),
                port: Some(self.port),
                user: current_user()?,
                identity: Some(self.client_key()),
                known_host_key: self.host_key.clone(),
                proxy_command: None,
            },
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // The listener's SIGTERM/SIGKILL ends the listener only; its per-connection
        // processes notice the closed connection when their clients are gone.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where an [`SshClient`] connects and how.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// The `Host` name the client commands use.
    pub alias: String,
    /// `HostName`.
    pub host_name: String,
    /// `Port`, if not 22.
    pub port: Option<u16>,
    /// `User`.
    pub user: String,
    /// `IdentityFile`; without one, no key is offered.
    pub identity: Option<PathBuf>,
    /// The server's host key, `type base64`, written to `known_hosts` under the alias
    /// (`HostKeyAlias`).
    pub known_host_key: String,
    /// `ProxyCommand`, e.g. from [`alknet_proxy_command`].
    pub proxy_command: Option<String>,
}

/// `alknet connect` as an OpenSSH `ProxyCommand`: `alknet` binary, server address, the
/// client's data directory (its node key and `known_servers`) and the server's pinned
/// fingerprint.
pub fn alknet_proxy_command(
    alknet: &Path,
    server: SocketAddr,
    data_dir: &Path,
    fingerprint: &str,
) -> String {
    format!(
        "{} connect {server} --alpn alknet/ssh --data-dir {} --fingerprint {fingerprint}",
        alknet.display(),
        data_dir.display()
    )
}

/// `ssh`, `sftp` and `scp` with a generated `-F` config for one [`SshTarget`].
#[derive(Debug, Clone)]
pub struct SshClient {
    config: PathBuf,
    target: SshTarget,
}

impl SshClient {
    /// Writes `ssh_config` and `known_hosts` into `dir`.
    pub fn new(dir: &Path, target: SshTarget) -> Result<Self> {
        let known_hosts = dir.join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!("{} {}\n", target.alias, target.known_host_key),
        )?;
        let mut text = format!(
            "Host {alias}\n  HostName {host}\n  User {user}\n  HostKeyAlias {alias}\n  \
             UserKnownHostsFile {kh}\n  GlobalKnownHostsFile /dev/null\n  \
             StrictHostKeyChecking yes\n  UpdateHostKeys no\n  BatchMode yes\n  \
             IdentitiesOnly yes\n  PasswordAuthentication no\n  \
             KbdInteractiveAuthentication no\n  ControlMaster no\n  ControlPath none\n  \
             LogLevel ERROR\n",
            alias = target.alias,
            host = target.host_name,
            user = target.user,
            kh = known_hosts.display(),
        );
        if let Some(port) = target.port {
            text.push_str(&format!("  Port {port}\n"));
        }
        match &target.identity {
            Some(id) => text.push_str(&format!("  IdentityFile {}\n", id.display())),
            None => text.push_str("  IdentityFile none\n"),
        }
        if let Some(proxy) = &target.proxy_command {
            text.push_str(&format!("  ProxyCommand {proxy}\n"));
        }
        let config = dir.join("ssh_config");
        std::fs::write(&config, text)?;
        Ok(Self { config, target })
    }

    /// The host alias to name on the command line (`ALIAS`, `ALIAS:path`).
    pub fn alias(&self) -> &str {
        &self.target.alias
    }

    /// The generated config file.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// `program -F CONFIG` (`ssh`, `sftp`, `scp`), arguments still to add.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.arg("-F").arg(&self.config);
        c
    }

    /// `ssh ALIAS -- remote`: runs `remote` on the server, returning (exit code, stdout,
    /// stderr); a code of -1 is a signal.
    pub fn ssh(&self, remote: &str) -> Result<(i32, String, String)> {
        let out = self
            .command("ssh")
            .arg(self.alias())
            .arg("--")
            .arg(remote)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| anyhow!("cannot run ssh ({e}); install openssh-client"))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// `sftp -b BATCH ALIAS` with the batch commands in `batch` (one a line), started but
    /// not waited for.
    pub fn sftp_batch(&self, batch: &str, dir: &Path) -> Result<Child> {
        let file = dir.join("sftp.batch");
        std::fs::write(&file, batch)?;
        self.command("sftp")
            .arg("-q")
            .arg("-b")
            .arg(&file)
            .arg(self.alias())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow!("cannot run sftp ({e}); install openssh-client"))
    }

    /// `scp -q FROM TO` (each `path` or `ALIAS:path`), started but not waited for.
    pub fn scp(&self, from: &str, to: &str) -> Result<Child> {
        self.command("scp")
            .arg("-q")
            .arg(from)
            .arg(to)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow!("cannot run scp ({e}); install openssh-client"))
    }
}

/// An interactive session: `ssh -tt ALIAS` running `cat` on a raw PTY (`stty raw -echo`),
/// so each byte written comes back once, echoed by `cat` and not by the terminal; for
/// timing keystrokes. Killed on drop.
pub struct PtyEcho {
    child: Child,
    stdin: std::process::ChildStdin,
    echoed: std::sync::mpsc::Receiver<Vec<u8>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl PtyEcho {
    /// Starts the session and waits (at most `limit`) until the remote `cat` runs.
    pub fn start(client: &SshClient, limit: Duration) -> Result<Self> {
        let mut child = client
            .command("ssh")
            .arg("-tt")
            .arg(client.alias())
            .arg("stty raw -echo; echo READY; exec cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow!("cannot run ssh ({e}); install openssh-client"))?;
        let (Some(stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("ssh started without pipes");
        };
        let (tx, echoed) = std::sync::mpsc::channel::<Vec<u8>>();
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                match buf.get(..n) {
                    Some(data) if n > 0 => {
                        if tx.send(data.to_vec()).is_err() {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        });
        let session = Self {
            child,
            stdin,
            echoed,
            reader: Some(reader),
        };
        let until = Instant::now() + limit;
        let mut seen = Vec::new();
        while !seen.windows(5).any(|w| w == b"READY") {
            let left = until.saturating_duration_since(Instant::now());
            match session.echoed.recv_timeout(left) {
                Ok(chunk) => seen.extend_from_slice(&chunk),
                Err(_) => bail!(
                    "the remote shell did not print READY within {limit:?}: {:?}",
                    String::from_utf8_lossy(&seen)
                ),
            }
        }
        // READY's newline may come a moment later; it is not an echo.
        if !seen.ends_with(b"\n") {
            let _ = session.echoed.recv_timeout(limit);
        }
        Ok(session)
    }

    /// Writes `key` and waits (at most `limit`) until it comes back; the round trip time.
    pub fn round_trip(&mut self, key: u8, limit: Duration) -> Result<Duration> {
        use std::io::Write;
        let start = Instant::now();
        self.stdin.write_all(&[key])?;
        self.stdin.flush()?;
        let chunk = self
            .echoed
            .recv_timeout(limit)
            .map_err(|_| anyhow!("keystroke {key:#04x} did not come back within {limit:?}"))?;
        let took = start.elapsed();
        if chunk != [key] {
            bail!("sent {key:#04x}, got {chunk:?} back");
        }
        Ok(took)
    }
}

impl Drop for PtyEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A loopback TCP port that was free a moment ago.
pub fn free_tcp_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits for `child` at most `limit`; kills it and says so if it is still running then.
pub fn wait_child(
    child: &mut Child,
    limit: Duration,
    what: &str,
) -> Result<std::process::ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} still running after {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hex(ctx.finish().as_ref()))
}

/// Writes `len` bytes of deterministic pseudo-random data (incompressible) to `path`.
pub fn write_pattern_file(path: &Path, seed: u64, len: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut left = len;
    let mut block = vec![0u8; 1 << 16];
    while left > 0 {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let n = usize::try_from(left.min(block.len() as u64)).unwrap_or(block.len());
        f.write_all(block.get(..n).unwrap_or_default())?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The bench's baseline: the launcher really starts an sshd that serves commands and
    /// the SFTP subsystem with the generated client config.
    #[test]
    fn sshd_starts_and_serves_ssh_and_sftp() {
        let sshd = Sshd::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let client = sshd.client(dir.path(), "baseline").unwrap();
        let (code, out, err) = client.ssh("echo hi; exit 3").unwrap();
        assert_eq!((code, out.as_str()), (3, "hi\n"), "{err}\n{}", sshd.log());
        let (code, _, err) = client.ssh("true").unwrap();
        assert_eq!(code, 0, "{err}");

        let src = dir.path().join("src.bin");
        write_pattern_file(&src, 1, 1 << 20).unwrap();
        let dst = dir.path().join("dst.bin");
        let mut sftp = client
            .sftp_batch(
                &format!("get {} {}\n", src.display(), dst.display()),
                dir.path(),
            )
            .unwrap();
        let status = wait_child(&mut sftp, Duration::from_secs(30), "sftp").unwrap();
        assert!(status.success(), "{}", sshd.log());
        assert_eq!(sha256_file(&src).unwrap(), sha256_file(&dst).unwrap());

        // The session's processes are reaped by the listener, whose CPU then includes them.
        assert!(crate::procstat::wait_no_children(
            sshd.pid(),
            Duration::from_secs(10)
        ));
        assert!(
            crate::procstat::cpu_times(sshd.pid())
                .unwrap()
                .with_children()
                > 0.0
        );

        // One keystroke through a PTY, as the bench's interactive round trip measures it.
        let mut pty = PtyEcho::start(&client, Duration::from_secs(20)).unwrap();
        for key in [b'a', b'z', 0x03] {
            pty.round_trip(key, Duration::from_secs(10)).unwrap();
        }
        drop(pty);

        // A key that is not authorised is refused, not prompted for.
        let other = dir.path().join("other");
        generate_key(&other, "other").unwrap();
        let mut target = SshTarget {
            alias: "baseline".into(),
            host_name: "127.0.0.1".into(),
            port: Some(sshd.port()),
            user: current_user().unwrap(),
            identity: Some(other),
            known_host_key: public_key(&sshd.dir().join("host_ed25519.pub")).unwrap(),
            proxy_command: None,
        };
        let odir = tempfile::tempdir().unwrap();
        let (code, _, err) = SshClient::new(odir.path(), target.clone())
            .unwrap()
            .ssh("true")
            .unwrap();
        assert_eq!(code, 255, "{err}");
        assert!(err.contains("Permission denied"), "{err}");

        // A wrong host key is refused too.
        target.identity = Some(sshd.client_key());
        target.known_host_key = public_key(&dir.path().join("other.pub")).unwrap();
        let (code, _, err) = SshClient::new(odir.path(), target)
            .unwrap()
            .ssh("true")
            .unwrap();
        assert_eq!(code, 255, "{err}");
        assert!(
            err.contains("HOST IDENTIFICATION HAS CHANGED") || err.contains("verification failed"),
            "{err}"
        );
    }
}
