//! `alknet serve` as a child process for the benchmarks: started with a config text in a
//! directory of its own, its address and fingerprint read from the lines it prints, killed
//! on drop. (The integration tests have their own `Server` with more knobs.)

use anyhow::{Context, Result, anyhow, bail};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long the server gets to print its address.
const START_LIMIT: Duration = Duration::from_secs(30);

/// A running `alknet serve`.
pub struct AlknetServe {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
    fingerprint: String,
}

impl AlknetServe {
    /// Writes `config` to `dir/alknet.toml` and runs `alknet serve` with the data directory
    /// `dir/data`; returns once it printed where it listens.
    pub fn start(alknet: &Path, dir: &Path, config: &str) -> Result<Self> {
        Self::start_via(&[], alknet, dir, config)
    }

    /// [`AlknetServe::start`] run through `prefix` (e.g. `ip netns exec NAME`, which execs
    /// the server in a network namespace: the pid is still the server's).
    pub fn start_via(prefix: &[&str], alknet: &Path, dir: &Path, config: &str) -> Result<Self> {
        let cfg = dir.join("alknet.toml");
        std::fs::write(&cfg, config)?;
        let log = std::fs::File::create(dir.join("serve.log"))?;
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(alknet);
                c
            }
            None => Command::new(alknet),
        };
        let mut child = cmd
            .args(["serve", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", alknet.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout pipe"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let (mut addr, mut fp) = (None, None);
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("alknet listening on ") {
                    addr = rest.split(' ').next().and_then(|a| a.parse().ok());
                }
                if let Some(rest) = line.strip_prefix("fingerprint ") {
                    fp = Some(rest.to_owned());
                }
                if line.starts_with("alpns ") {
                    break;
                }
            }
            let _ = tx.send((addr, fp));
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        match rx.recv_timeout(START_LIMIT) {
            Ok((Some(addr), Some(fingerprint))) => Ok(Self {
                child,
                dir: dir.to_owned(),
                addr,
                fingerprint,
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "alknet serve did not start: {}",
                    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
                )
            }
        }
    }

    /// Where it listens (UDP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its node key's fingerprint, `ed25519:…`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Its log (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }
}

impl Drop for AlknetServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `alknet ARGS --data-dir DATA` and returns its stdout, or its stderr as the error.
pub fn alknet_cli(alknet: &Path, data_dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(alknet)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", alknet.display()))?;
    if !out.status.success() {
        bail!(
            "alknet {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `ssh-ed25519 AAAA…` key in a `known_hosts` line such as `alknet ssh host-key`
/// prints (`HOST ssh-ed25519 AAAA…`).
pub fn host_key_of(known_hosts_line: &str) -> Option<String> {
    let mut words = known_hosts_line.split_whitespace();
    while let Some(w) = words.next() {
        if w.starts_with("ssh-") {
            return words.next().map(|k| format!("{w} {k}"));
        }
    }
    None
}

/// The `alknet` binary a bench measures: `ALKNET_BIN`, else `target/release/alknet` beside
/// the running bench (`target/release/deps/NAME-HASH`).
pub fn release_alknet() -> Result<PathBuf> {
    let path = match std::env::var_os("ALKNET_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("alknet"))
            .ok_or_else(|| anyhow!("cannot locate the target directory"))?,
    };
    if !path.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p alknet` (or set ALKNET_BIN)",
            path.display()
        );
    }
    Ok(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn host_key_is_found_after_any_host_field() {
        assert_eq!(
            host_key_of("gw ssh-ed25519 AAAAC3 comment").as_deref(),
            Some("ssh-ed25519 AAAAC3")
        );
        assert_eq!(
            host_key_of("[127.0.0.1]:4433 ssh-ed25519 AAAA\n").as_deref(),
            Some("ssh-ed25519 AAAA")
        );
        assert_eq!(host_key_of("ssh-ed25519"), None);
        assert_eq!(host_key_of(""), None);
    }
}
