//! Which server key a client trusts: the pinned one, else the one remembered in the
//! known-servers file, else the one it presents (trust on first use), and the error that
//! explains a mismatch.

use super::{ClientError, KNOWN_SERVERS_FILE};
use crate::identity::tls::{ServerKeySeen, ServerTrust};
use alknet_proto::Fingerprint;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The known-servers file: one `host:port ed25519:…` line per server.
pub struct KnownServers {
    path: PathBuf,
}

impl KnownServers {
    /// The file in `data_dir`.
    pub fn in_dir(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(KNOWN_SERVERS_FILE),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The remembered key for `server`, if any. Malformed lines are skipped.
    pub fn get(&self, server: &str) -> Option<Fingerprint> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        text.lines().rev().find_map(|line| {
            let mut parts = line.split_whitespace();
            let host = parts.next()?;
            let fp = parts.next()?;
            (host == server).then(|| fp.parse().ok()).flatten()
        })
    }

    /// Remembers `fp` for `server`.
    pub fn add(&self, server: &str, fp: &Fingerprint) -> std::io::Result<()> {
        crate::fsutil::append_private(&self.path, &format!("{server} {fp}\n"))
    }
}

/// How to trust the server for a connection: the pinned key, else the remembered one, else
/// whatever it presents (to be remembered after the handshake).
pub fn trust_for(pinned: Option<Fingerprint>, known: &KnownServers, server: &str) -> ServerTrust {
    match pinned.or_else(|| known.get(server)) {
        Some(fp) => ServerTrust::Pinned(fp),
        None => ServerTrust::Observe,
    }
}

/// Turns a failed handshake into a key-mismatch error when the key differed.
pub fn explain_failure(
    err: quinn_proto::ConnectionError,
    addr: SocketAddr,
    server: &str,
    trust: &ServerTrust,
    seen: &ServerKeySeen,
    pinned: bool,
    known: &KnownServers,
) -> ClientError {
    if let (ServerTrust::Pinned(expected), Some(got)) = (trust, seen.get())
        && *expected != got
    {
        return ClientError::KeyMismatch {
            addr: server.to_owned(),
            got: Box::new(got),
            expected: Box::new(*expected),
            source_desc: if pinned {
                "--fingerprint".to_owned()
            } else {
                known.path().display().to_string()
            },
            fix: if pinned {
                format!("If the change is expected, pass --fingerprint {got}.")
            } else {
                format!(
                    "If the change is expected, remove the line for {server} from {} (or pass --fingerprint {got}).",
                    known.path().display()
                )
            },
        };
    }
    ClientError::Failed { addr, reason: err }
}
