//! How a client command reaches a server it trusts: the pinned key, else the one remembered
//! in the known-servers file, else the one it presents (trust on first use, remembered after
//! the handshake), and the error that explains a mismatch.
//!
//! [`connect_trusted`] is the one client flow: `alknet connect`, `alknet call` and every later
//! client command call it instead of repeating pin / remember / explain. It does not resolve
//! names, parse `--fingerprint` or open streams; the command does.

use super::{ClientEndpoint, ClientError, KNOWN_SERVERS_FILE};
use crate::config::Config;
use crate::conn::Connection;
use crate::identity::tls::{NodeKey, ServerKeySeen, ServerTrust};
use alknet_proto::Fingerprint;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What [`connect_trusted`] needs: who we are, whom we call, and how to trust its key.
pub struct TrustedConnect<'a> {
    /// Transport and UDP settings of the client endpoint.
    pub config: Arc<Config>,
    /// The client's key, presented to the server.
    pub node_key: &'a NodeKey,
    /// The known-servers file, read for the remembered key and written on first use.
    pub known: &'a KnownServers,
    /// The server as the user wrote it (`host:port`): the known-servers entry and the name in
    /// messages.
    pub server_name: &'a str,
    /// The server's resolved address.
    pub addr: SocketAddr,
    /// The ALPN of the service to reach, e.g. `b"alknet/call"`.
    pub alpn: &'a [u8],
    /// The key given with `--fingerprint`, which wins over the known-servers file.
    pub pinned: Option<Fingerprint>,
}

/// Connects to a server and waits for the handshake, trusting its key as ssh does: the pinned
/// key, else the remembered one, else the presented one, which is then remembered in the
/// known-servers file with a line on stderr.
///
/// A handshake that fails because the key differs from the expected one is a
/// [`ClientError::KeyMismatch`] that names where the expectation came from and the fix. The
/// endpoint is returned with the connection: keep it alive as long as the connection, and
/// call [`ClientEndpoint::wait_idle`] after closing.
pub async fn connect_trusted(
    t: &TrustedConnect<'_>,
) -> Result<(ClientEndpoint, Connection), ClientError> {
    let endpoint = ClientEndpoint::new(t.config.clone(), t.node_key, t.addr)?;
    let conn = connect_trusted_on(&endpoint, t).await?;
    Ok((endpoint, conn))
}

/// [`connect_trusted`] on an endpoint the caller keeps, for clients that reconnect: each
/// attempt reuses its socket instead of leaving one behind. The endpoint must have been
/// opened for the address family of `t.addr`.
pub async fn connect_trusted_on(
    endpoint: &ClientEndpoint,
    t: &TrustedConnect<'_>,
) -> Result<Connection, ClientError> {
    let trust = trust_for(t.pinned, t.known, t.server_name);
    let (client_config, seen) =
        crate::net::endpoint::client_config(&t.config, t.node_key, t.alpn, trust.clone())?;
    let conn = endpoint.connect(client_config, t.addr)?;
    if let Err(e) = conn.connected().await {
        return Err(explain_failure(
            e,
            t.addr,
            t.server_name,
            &trust,
            &seen,
            t.pinned.is_some(),
            t.known,
        ));
    }
    if matches!(trust, ServerTrust::Observe)
        && let Some(fp) = seen.get()
    {
        t.known
            .add(t.server_name, &fp)
            .map_err(|error| ClientError::Remember {
                path: t.known.path().to_owned(),
                error,
            })?;
        eprintln!(
            "alknet: new server {} with key {fp}; remembered in {}",
            t.server_name,
            t.known.path().display()
        );
    }
    Ok(conn)
}

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

    /// The remembered key for `server`, if any (see [`lookup`]).
    pub fn get(&self, server: &str) -> Option<Fingerprint> {
        lookup(&self.read().ok()?, server)
    }

    /// Remembers `fp` for `server`.
    pub fn add(&self, server: &str, fp: &Fingerprint) -> std::io::Result<()> {
        let existing = match self.read() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        crate::fsutil::append_private(&self.path, &entry_line(&existing, server, fp))
    }

    /// The file's first [`MAX_KNOWN_SERVERS`] bytes.
    fn read(&self) -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let mut buf = Vec::new();
        std::fs::File::open(&self.path)?
            .take(MAX_KNOWN_SERVERS)
            .read_to_end(&mut buf)?;
        Ok(buf)
    }
}

/// Most bytes of the known-servers file read (about 50 000 servers): the file is the user's,
/// but a link to a device must not be read without end.
const MAX_KNOWN_SERVERS: u64 = 8 << 20;

/// The key remembered for `server` in the known-servers file's bytes: the last line
/// `server ed25519:…` that parses. Lines are read one by one, so a malformed line, or bytes
/// that are not UTF-8 elsewhere in the file, never make the other servers forgotten (which
/// would silently trust whatever key they present next).
pub(crate) fn lookup(text: &[u8], server: &str) -> Option<Fingerprint> {
    text.split(|&b| b == b'\n').rev().find_map(|line| {
        let line = std::str::from_utf8(line).ok()?;
        let mut parts = line.split_whitespace();
        let host = parts.next()?;
        let fp = parts.next()?;
        (host == server).then(|| fp.parse().ok()).flatten()
    })
}

/// The line that remembers `fp` for `server`, appended after `existing` bytes: it starts on a
/// line of its own even when the file's last line has no newline (a hand-edited file), so
/// the new entry is never glued to the end of another.
pub(crate) fn entry_line(existing: &[u8], server: &str, fp: &Fingerprint) -> String {
    let sep = if existing.is_empty() || existing.ends_with(b"\n") {
        ""
    } else {
        "\n"
    };
    format!("{sep}{server} {fp}\n")
}

/// Arbitrary bytes as a known-servers file: looking any of its names up never panics, and a
/// key remembered after them (as `add` writes it) is the one found.
pub(crate) fn fuzz_known_servers(data: &[u8]) {
    for line in data.split(|&b| b == b'\n').take(64) {
        if let Some(name) = std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.split_whitespace().next())
        {
            let _ = lookup(data, name);
        }
    }
    let fp = Fingerprint::from_key([7; 32]);
    for server in ["fuzz.example:4433", "[::1]:4433"] {
        let mut text = data.to_vec();
        text.extend_from_slice(entry_line(data, server, &fp).as_bytes());
        assert_eq!(
            lookup(&text, server),
            Some(fp),
            "a remembered key must be found"
        );
    }
}

/// How to trust the server for a connection: the pinned key, else the remembered one, else
/// whatever it presents (to be remembered after the handshake).
pub(crate) fn trust_for(
    pinned: Option<Fingerprint>,
    known: &KnownServers,
    server: &str,
) -> ServerTrust {
    match pinned.or_else(|| known.get(server)) {
        Some(fp) => ServerTrust::Pinned(fp),
        None => ServerTrust::Observe,
    }
}

/// Turns a failed handshake into a key-mismatch error when the key differed.
pub(crate) fn explain_failure(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(b: u8) -> Fingerprint {
        Fingerprint::from_key([b; 32])
    }

    #[test]
    fn bytes_not_utf8_forget_no_other_server() {
        let mut text = format!("a.example:4433 {}\n", fp(1)).into_bytes();
        text.extend_from_slice(b"\xff\xfe garbage\n");
        assert_eq!(lookup(&text, "a.example:4433"), Some(fp(1)));
    }

    #[test]
    fn a_last_line_without_newline_does_not_swallow_the_next_entry() {
        let existing = format!("a.example:4433 {}", fp(1)).into_bytes();
        let mut text = existing.clone();
        text.extend_from_slice(entry_line(&existing, "b.example:4433", &fp(2)).as_bytes());
        assert_eq!(lookup(&text, "b.example:4433"), Some(fp(2)));
        assert_eq!(lookup(&text, "a.example:4433"), Some(fp(1)));
    }

    #[test]
    fn the_last_entry_wins_and_malformed_lines_are_skipped() {
        let text = format!("s:1 {}\ns:1 {}\ns:1 ed25519:zz\n\n  \ns:1\n", fp(1), fp(2));
        assert_eq!(lookup(text.as_bytes(), "s:1"), Some(fp(2)));
        assert_eq!(lookup(text.as_bytes(), "s:2"), None);
    }

    #[test]
    fn known_servers_file_round_trip() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join(crate::client::KNOWN_SERVERS_FILE);
        // A line that is not UTF-8, and a last line without its newline (a hand edit).
        let mut text = b"\xff junk\n".to_vec();
        text.extend_from_slice(format!("a:1 {}", fp(1)).as_bytes());
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        let known = KnownServers::in_dir(dir.path());
        known.add("b:1", &fp(2)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(known.get("b:1"), Some(fp(2)));
        assert_eq!(known.get("a:1"), Some(fp(1)));
    }
}
