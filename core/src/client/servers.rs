//! Servers stored under a name (`alknet join CODE --as gw`), and how a client command turns
//! what the user typed into an address and a pinned key.
//!
//! The `servers` file in the data directory has one line per server:
//! `NAME ed25519:<hex> ADDR[,ADDR…]`, each address `host:port`. The last line for a name
//! wins, so joining again under a name replaces the entry without rewriting the file.
//! Lines are read one by one: a malformed line never hides the others.
//!
//! [`resolve_server`] is the one rule for every client command: an argument with a `:` is
//! `host:port` (its key pinned by `--fingerprint` or the known-servers file); one without
//! is a stored name, whose key is pinned from the entry. Not here: connecting
//! ([`super::connect_trusted`]).

use alknet_proto::Fingerprint;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// File in the data directory naming servers.
pub const SERVERS_FILE: &str = "servers";
/// Most bytes of the servers file read.
const MAX_SERVERS: u64 = 4 << 20;
/// Most addresses per stored server.
const MAX_ADDRS: usize = 8;

/// A server stored under a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerEntry {
    /// The name the user types.
    pub name: String,
    /// The server's key.
    pub fingerprint: Fingerprint,
    /// Where it listens, `host:port`, in the order to try.
    pub addresses: Vec<String>,
}

/// The servers file.
pub struct Servers {
    path: PathBuf,
}

impl Servers {
    /// The file in `data_dir`.
    pub fn in_dir(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(SERVERS_FILE),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The server stored as `name`, if any.
    pub fn get(&self, name: &str) -> Option<ServerEntry> {
        lookup(&self.read().ok()?, name)
    }

    /// Stores `entry` (replacing an earlier one of the same name).
    pub fn add(&self, entry: &ServerEntry) -> std::io::Result<()> {
        if !valid_name(&entry.name)
            || entry.addresses.is_empty()
            || entry.addresses.len() > MAX_ADDRS
            || entry
                .addresses
                .iter()
                .any(|a| a.is_empty() || a.contains(|c: char| c == ',' || c.is_whitespace()))
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a server name is 1..=64 letters, digits, `-`, `_` or `.`, with 1..=8 addresses",
            ));
        }
        let existing = match self.read() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let sep = if existing.is_empty() || existing.ends_with(b"\n") {
            ""
        } else {
            "\n"
        };
        let line = format!(
            "{sep}{} {} {}\n",
            entry.name,
            entry.fingerprint,
            entry.addresses.join(",")
        );
        crate::fsutil::append_private(&self.path, &line)
    }

    fn read(&self) -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let mut buf = Vec::new();
        std::fs::File::open(&self.path)?
            .take(MAX_SERVERS)
            .read_to_end(&mut buf)?;
        Ok(buf)
    }
}

/// A server name: what [`resolve_server`] reads as a name rather than `host:port`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The last well-formed entry for `name` in the file's bytes.
pub(crate) fn lookup(text: &[u8], name: &str) -> Option<ServerEntry> {
    text.split(|&b| b == b'\n').rev().find_map(|line| {
        let line = std::str::from_utf8(line).ok()?;
        let mut parts = line.split_whitespace();
        if parts.next()? != name {
            return None;
        }
        let fingerprint = parts.next()?.parse().ok()?;
        let addresses: Vec<String> = parts
            .next()?
            .split(',')
            .filter(|a| !a.is_empty())
            .take(MAX_ADDRS)
            .map(str::to_owned)
            .collect();
        (!addresses.is_empty() && parts.next().is_none()).then(|| ServerEntry {
            name: name.to_owned(),
            fingerprint,
            addresses,
        })
    })
}

/// Where a client command connects, and the key it expects.
#[derive(Clone, Debug)]
pub struct ResolvedServer {
    /// The server as the user wrote it (a name or `host:port`), for messages and the
    /// known-servers file.
    pub server_name: String,
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The key pinned by the stored entry, when the user gave a name.
    pub pinned: Option<Fingerprint>,
}

/// Why a server argument could not be resolved. `Display` says what to do.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// A name no entry has.
    #[error(
        "no server named `{name}` in {}; join one with `alknet join CODE --as {name}`, or write host:port",
        path.display()
    )]
    UnknownName {
        /// The name.
        name: String,
        /// The servers file.
        path: PathBuf,
    },
    /// No address resolved.
    #[error("cannot resolve {what}; write it as host:port")]
    Unresolvable {
        /// What was tried.
        what: String,
    },
}

/// Resolves what the user typed: `host:port`, or the name of a stored server (its first
/// address that resolves, its key pinned).
pub fn resolve_server(data_dir: &Path, arg: &str) -> Result<ResolvedServer, ResolveError> {
    if arg.contains(':') {
        let addr = first_addr(arg).ok_or_else(|| ResolveError::Unresolvable {
            what: format!("{arg:?}"),
        })?;
        return Ok(ResolvedServer {
            server_name: arg.to_owned(),
            addr,
            pinned: None,
        });
    }
    let servers = Servers::in_dir(data_dir);
    let entry = servers.get(arg).ok_or_else(|| ResolveError::UnknownName {
        name: arg.to_owned(),
        path: servers.path().to_owned(),
    })?;
    let addr = entry
        .addresses
        .iter()
        .find_map(|a| first_addr(a))
        .ok_or_else(|| ResolveError::Unresolvable {
            what: format!("any address of `{arg}` ({})", entry.addresses.join(", ")),
        })?;
    Ok(ResolvedServer {
        server_name: arg.to_owned(),
        addr,
        pinned: Some(entry.fingerprint),
    })
}

fn first_addr(s: &str) -> Option<SocketAddr> {
    s.to_socket_addrs().ok()?.next()
}

/// Arbitrary bytes as a servers file: looking names up never panics, and an entry stored
/// after them is the one found.
pub(crate) fn fuzz_servers(data: &[u8]) {
    for line in data.split(|&b| b == b'\n').take(64) {
        if let Some(name) = std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.split_whitespace().next())
        {
            let _ = lookup(data, name);
        }
    }
    let fp = Fingerprint::from_key([7; 32]);
    let mut text = data.to_vec();
    if !text.is_empty() && !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    text.extend_from_slice(format!("gw {fp} 192.0.2.1:4433,[::1]:4433\n").as_bytes());
    assert_eq!(lookup(&text, "gw").map(|e| e.fingerprint), Some(fp));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_their_last_entry_and_host_port_stays_as_it_was() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let servers = Servers::in_dir(dir.path());
        let fp = |b| Fingerprint::from_key([b; 32]);
        std::fs::write(servers.path(), b"\xff junk\ngw ed25519:zz 1.2.3.4:1\ngw")
            .unwrap_or_else(|e| panic!("{e}"));
        for (b, port) in [(1u8, 4433u16), (2, 4434)] {
            servers
                .add(&ServerEntry {
                    name: "gw".into(),
                    fingerprint: fp(b),
                    addresses: vec![format!("127.0.0.1:{port}")],
                })
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let r = resolve_server(dir.path(), "gw").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.pinned, Some(fp(2)));
        assert_eq!(r.addr.port(), 4434);
        let r = resolve_server(dir.path(), "127.0.0.1:9").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.pinned, r.addr.port()), (None, 9));
        let e = resolve_server(dir.path(), "nas")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("alknet join CODE --as nas"), "{e}");
        assert!(
            servers
                .add(&ServerEntry {
                    name: "bad name".into(),
                    fingerprint: fp(1),
                    addresses: vec!["127.0.0.1:1".into()],
                })
                .is_err()
        );
    }
}
