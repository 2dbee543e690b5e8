//! `alknet ssh host-key` and `alknet ssh-config`: what an OpenSSH client needs to reach this
//! node's SSH service, printed on the server, pasted on the client.
//!
//! The client learns the server's QUIC fingerprint from the printed `ProxyCommand`
//! (`alknet connect … --fingerprint …`, pinned: nothing is trusted on first use), and the SSH
//! host key from a `KnownHostsCommand` that prints the `known_hosts` line under the host's
//! alias, so one paste into `~/.ssh/config` is all `ssh NAME` needs.

use crate::node::LoadedKey;
use alknet_ssh::hostkey::PrivateKey;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::path::{Path, PathBuf};

/// `alknet ssh …`
#[derive(Debug, Subcommand)]
pub(crate) enum SshCmd {
    /// Print the SSH host key as a known_hosts line (`NAME ssh-ed25519 AAAA…`).
    ///
    /// The key comes from the vault (m/74'/0'/1'/0') when the data directory has one, else
    /// from the file ssh_host_ed25519_key there (created on first use, mode 0600).
    HostKey {
        /// Host name (or HostKeyAlias) the line is for; default: this machine's host name.
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        /// File holding the vault passphrase, when the keys live in a vault.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
        /// Print JSON (host, key, known_hosts line, SHA-256 fingerprint).
        #[arg(long)]
        json: bool,
    },
}

/// The SSH host key for the loaded node: from the vault seed, else the data-directory file.
pub(crate) fn host_key(data_dir: &Path, node: &LoadedKey) -> Result<PrivateKey> {
    match &node.ssh_host_seed {
        Some(seed) => Ok(alknet_ssh::hostkey::from_seed(seed)),
        None => alknet_ssh::hostkey::load_or_create(data_dir)
            .with_context(|| format!("SSH host key in {}", data_dir.display())),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

pub(crate) fn run(data_dir: &Path, cmd: SshCmd) -> Result<()> {
    match cmd {
        SshCmd::HostKey {
            host,
            passphrase_file,
            json,
        } => {
            let node = crate::node::load(data_dir, passphrase_file.as_deref())?;
            let key = host_key(data_dir, &node)?;
            let host = host.unwrap_or_else(hostname);
            check_name(&host, "--host")?;
            let line = alknet_ssh::hostkey::known_hosts_line(&host, &key);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "host": host,
                        "key": alknet_ssh::hostkey::public_line(&key),
                        "known_hosts": line,
                        "fingerprint": alknet_ssh::hostkey::fingerprint(&key),
                    })
                );
            } else {
                println!("{line}");
            }
            Ok(())
        }
    }
}

/// Options of `alknet ssh-config`.
pub(crate) struct ConfigArgs<'a> {
    pub(crate) target: &'a str,
    pub(crate) name: Option<&'a str>,
    pub(crate) client_data_dir: Option<&'a Path>,
    pub(crate) program: &'a str,
    pub(crate) passphrase_file: Option<&'a Path>,
}

/// A name safe in ssh_config and a known_hosts line: no spaces, quotes, `%` or patterns.
fn check_name(name: &str, flag: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    if !ok {
        bail!("{flag} {name:?}: use letters, digits, '.', '-', '_' or ':' only");
    }
    Ok(())
}

/// Splits `HOST[:PORT]` (`[v6]:PORT` for IPv6), the port defaulting to 4433.
fn split_target(target: &str) -> Result<(String, u16)> {
    let bad = || {
        anyhow::anyhow!(
            "{target:?}: write the server as HOST or HOST:PORT (an IPv6 address as [ADDR]:PORT)"
        )
    };
    let (host, port) = if let Some(rest) = target.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        (h.to_owned(), port)
    } else if target.matches(':').count() > 1 {
        // A bare IPv6 address without a port.
        (target.to_owned(), None)
    } else {
        match target.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (target.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
        None => 4433,
    };
    check_name(&host, "HOST")?;
    Ok((host, port))
}

/// Quotes a word for the shell OpenSSH runs a ProxyCommand with, when it needs it.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The `~/.ssh/config` block for this node.
pub(crate) fn config_block(data_dir: &Path, args: &ConfigArgs<'_>) -> Result<String> {
    let (host, port) = split_target(args.target)?;
    let name = args.name.map(str::to_owned).unwrap_or_else(|| host.clone());
    check_name(&name, "--name")?;
    if args.program.contains('%')
        || args
            .client_data_dir
            .is_some_and(|d| d.to_string_lossy().contains('%'))
    {
        bail!("--alknet and --client-data-dir cannot contain '%' (ssh_config expands it)");
    }
    let node = crate::node::load(data_dir, args.passphrase_file)?;
    let key = host_key(data_dir, &node)?;
    let fingerprint = node.key.fingerprint();
    let addr = if host.contains(':') {
        "[%h]:%p"
    } else {
        "%h:%p"
    };
    let data = args
        .client_data_dir
        .map(|d| format!(" --data-dir {}", shell_word(&d.to_string_lossy())))
        .unwrap_or_default();
    let alias = format!("alknet-{name}");
    let known = alknet_ssh::hostkey::known_hosts_line(&alias, &key);
    Ok(format!(
        "# Alknet SSH gateway {name}: paste into ~/.ssh/config, then `ssh {name}`.\n\
         # The QUIC server key is pinned by --fingerprint; the SSH host key is {ssh_fp}.\n\
         Host {name}\n\
         \x20   HostName {host}\n\
         \x20   Port {port}\n\
         \x20   ProxyCommand {program}{data} connect {addr} --alpn alknet/ssh --fingerprint {fingerprint}\n\
         \x20   HostKeyAlias {alias}\n\
         \x20   KnownHostsCommand /bin/echo {known}\n\
         \x20   ServerAliveInterval 30\n\
         # Without KnownHostsCommand (OpenSSH < 8.5), add this line to ~/.ssh/known_hosts:\n\
         # {known}\n",
        ssh_fp = alknet_ssh::hostkey::fingerprint(&key),
        program = shell_word(args.program),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split() {
        assert_eq!(
            split_target("gw.example").unwrap(),
            ("gw.example".into(), 4433)
        );
        assert_eq!(
            split_target("10.0.0.1:7000").unwrap(),
            ("10.0.0.1".into(), 7000)
        );
        assert_eq!(split_target("[::1]:7000").unwrap(), ("::1".into(), 7000));
        assert_eq!(split_target("::1").unwrap(), ("::1".into(), 4433));
        for bad in ["h:0", "h:x", "[::1", "bad host", "h%h"] {
            assert!(split_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(shell_word("/usr/bin/alknet"), "/usr/bin/alknet");
        assert_eq!(shell_word("/a b/it's"), "'/a b/it'\\''s'");
    }
}
