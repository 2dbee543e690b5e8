//! `git-remote-alknet`: the remote helper stock git runs for `alknet://` URLs.
//!
//! git starts it as `git-remote-alknet REMOTE URL` (install it, or a symlink to `alknet`
//! named so, on the `PATH`) and speaks the remote-helper protocol on its stdin and stdout.
//! It offers one capability, `connect`: for `connect git-upload-pack` (clone, fetch) or
//! `connect git-receive-pack` (push) it opens one `alknet/git` stream to the server, sends
//! the request header ([`alknet_proto::git`]) with the repository path and the protocol
//! version, answers git's command with an empty line, and from then on pipes git's own
//! pkt-line stream both ways (as `alknet connect` does).
//!
//! `URL` is `alknet://HOST:PORT/org/repo.git`, or `alknet://NAME/org/repo.git` for a server
//! stored by `alknet join`. The server's key is pinned as for `alknet connect`: the stored
//! server's, a known server's, or `ALKNET_SERVER_FINGERPRINT`. The client key is the one in
//! `ALKNET_DATA_DIR` (else the default data directory); `ALKNET_PASSPHRASE_FILE` unlocks a
//! vault.
//!
//! Protocol: `GIT_PROTOCOL` when git (or the caller) set it, else `protocol.version` from
//! git's config, else version 2 for fetches (git's default); pushes use version 0, which is
//! all `receive-pack` speaks.

use alknet_proto::git::{GitRequest, GitService};
use anyhow::{Context, Result, anyhow, bail};
use std::io::{BufRead, Write};
use std::path::PathBuf;

/// The name git runs this helper by.
pub(crate) const HELPER_NAME: &str = "git-remote-alknet";

/// Whether this process was started as the remote helper.
pub(crate) fn invoked_as_helper() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == HELPER_NAME))
        .unwrap_or(false)
}

/// A parsed `alknet://SERVER/PATH` URL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Url {
    /// `HOST:PORT` or a stored server name.
    pub(crate) server: String,
    /// The repository path, without the leading `/`.
    pub(crate) repo: String,
}

pub(crate) fn parse_url(url: &str) -> Result<Url> {
    let rest = url.strip_prefix("alknet://").ok_or_else(|| {
        anyhow!("{url:?} is not an alknet URL; write alknet://HOST:PORT/org/repo.git")
    })?;
    let (server, repo) = match rest.find('/') {
        // IPv6 literal: alknet://[::1]:4433/repo
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => bail!("{url:?} names no repository; write alknet://{rest}/org/repo.git"),
    };
    if server.is_empty() {
        bail!("{url:?} names no server; write alknet://HOST:PORT/org/repo.git");
    }
    if repo.is_empty() {
        bail!("{url:?} names no repository; write alknet://{server}/org/repo.git");
    }
    Ok(Url {
        server: server.to_owned(),
        repo: repo.to_owned(),
    })
}

/// The protocol value to ask the server for.
fn protocol_for(service: GitService) -> Option<String> {
    if service == GitService::ReceivePack {
        return None;
    }
    if let Ok(p) = std::env::var("GIT_PROTOCOL")
        && !p.is_empty()
    {
        return Some(p);
    }
    let configured = std::process::Command::new("git")
        .args(["config", "--get", "protocol.version"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match configured.as_deref() {
        Some("0") => None,
        Some("1") => Some("version=1".into()),
        _ => Some("version=2".into()),
    }
}

/// Runs the helper: `args` are git's (`REMOTE URL`, or just `URL`).
pub(crate) fn run(args: &[String]) -> Result<()> {
    let url = match args {
        [_, url] | [url] => url.clone(),
        _ => bail!("{HELPER_NAME} is run by git: git clone alknet://HOST:PORT/org/repo.git"),
    };
    let url = parse_url(&url)?;
    let data_dir = alknet_core::fsutil::resolve_data_dir(None);
    let pin = std::env::var("ALKNET_SERVER_FINGERPRINT").ok();
    let pinned = alknet_core::client::parse_pin("ALKNET_SERVER_FINGERPRINT", pin.as_deref())
        .map_err(anyhow::Error::msg)?;
    let passphrase = std::env::var_os("ALKNET_PASSPHRASE_FILE").map(PathBuf::from);
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end_matches('\n');
        let mut out = std::io::stdout().lock();
        if cmd == "capabilities" {
            out.write_all(b"connect\n\n")?;
            out.flush()?;
        } else if let Some(service) = cmd.strip_prefix("connect ") {
            drop(out);
            let service = GitService::from_wire(service)
                .filter(|s| *s != GitService::List)
                .ok_or_else(|| {
                    anyhow!("git asked for service {service:?}, which alknet/git does not serve")
                })?;
            let header = GitRequest {
                service,
                repo: url.repo.clone(),
                protocol: protocol_for(service),
            }
            .encode()
            .map_err(|e| anyhow!("repository {:?}: {e}", url.repo))?;
            return crate::connect::pipe(
                &data_dir,
                &url.server,
                "alknet/git",
                pinned,
                passphrase.as_deref(),
                Some(bytes::Bytes::from(header)),
                &|| {
                    let mut out = std::io::stdout().lock();
                    out.write_all(b"\n")?;
                    out.flush()
                },
            )
            .with_context(|| format!("alknet/git on {}", url.server));
        } else if cmd.is_empty() {
            return Ok(());
        } else {
            // Anything else (`option …`) is not offered; git falls back or reports it.
            out.write_all(b"unsupported\n")?;
            out.flush()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("alknet://127.0.0.1:4433/org/repo.git").unwrap(),
            Url {
                server: "127.0.0.1:4433".into(),
                repo: "org/repo.git".into()
            }
        );
        assert_eq!(parse_url("alknet://gw/r").unwrap().server, "gw");
        assert_eq!(
            parse_url("alknet://[::1]:4433/r").unwrap().server,
            "[::1]:4433"
        );
        assert_eq!(parse_url("alknet://gw//etc/x").unwrap().repo, "/etc/x");
        for bad in ["ssh://gw/r", "alknet://gw", "alknet://gw/", "alknet:///r"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
