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
    let trust = trust_for(t.pinned, t.known, t.server_name);
    let (client_config, seen) =
        crate::net::endpoint::client_config(&t.config, t.node_key, t.alpn, trust.clone())?;
    let endpoint = ClientEndpoint::new(t.config.clone(), t.node_key, t.addr)?;
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
    Ok((endpoint, conn))
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
