//! The local control socket: a Unix socket in the data directory (mode 0600, owner only)
//! through which `alknet stats` and, later, peer management act on a running server.
//!
//! Protocol: one JSON request per line, one JSON response per line. Requests are bounded
//! (64 KiB) and connections time out, so a stuck client cannot hold the control plane.

use crate::identity::store::RedbStore;
use crate::net::server::ControlHandle;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// Socket file name inside the data directory.
pub const SOCKET_FILE: &str = "control.sock";
const MAX_REQUEST: u64 = 64 * 1024;
const MAX_RESPONSE: u64 = 64 << 20;

/// A control request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Counters summed over shards.
    Stats,
    /// Close every connection of a peer.
    ClosePeer {
        /// The peer id.
        peer: String,
    },
    /// Authenticated connections on every shard.
    Sessions,
    /// Peer and token management.
    Admin {
        /// The operation.
        admin: crate::ops::admin::AdminOp,
    },
}

/// A control response.
#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// What went wrong, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl Response {
    fn ok(result: Option<serde_json::Value>) -> Self {
        Self {
            ok: true,
            error: None,
            result,
        }
    }

    fn err(error: String) -> Self {
        Self {
            ok: false,
            error: Some(error),
            result: None,
        }
    }
}

/// Static facts about the server, reported with the stats.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Node fingerprint.
    pub fingerprint: String,
    /// Bound address.
    pub listen: String,
    /// Number of shards.
    pub workers: usize,
    /// ALPNs served.
    pub alpns: Vec<String>,
}

/// The path of the control socket in `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// Starts serving the control socket on a background thread.
pub fn serve(
    data_dir: &Path,
    handle: ControlHandle,
    info: ServerInfo,
    store: Option<Arc<RedbStore>>,
) -> std::io::Result<PathBuf> {
    let path = socket_path(data_dir);
    if path.exists() {
        // A live server answers; a stale file from a crash does not.
        if UnixStream::connect(&path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "{} belongs to a running server; stop it or use another --data-dir",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    // Created with a private umask-independent mode right after bind.
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let started = std::time::Instant::now();
    std::thread::Builder::new()
        .name("alknet-control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        if let Err(e) = serve_one(s, &handle, &info, store.as_deref(), started) {
                            debug!(error = %e, "control connection ended");
                        }
                    }
                    Err(e) => warn!(error = %e, "control socket accept failed"),
                }
            }
        })?;
    Ok(path)
}

fn serve_one(
    stream: UnixStream,
    handle: &ControlHandle,
    info: &ServerInfo,
    store: Option<&RedbStore>,
    started: std::time::Instant,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new((&stream).take(MAX_REQUEST));
    let mut writer = &stream;
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 {
        let response = match serde_json::from_str::<Request>(line.trim()) {
            Ok(Request::Stats) => {
                let (rss, budget, over) = handle.memory();
                let memory = serde_json::json!({
                    "rss_bytes": rss,
                    "budget_bytes": budget,
                    "over_budget": over,
                });
                Response::ok(Some(serde_json::json!({
                    "server": info,
                    "uptime_secs": started.elapsed().as_secs(),
                    "counters": handle.stats(),
                    "shards": handle.per_shard(),
                    "memory": memory,
                })))
            }
            Ok(Request::ClosePeer { peer }) => {
                handle.close_peer(&peer);
                Response::ok(None)
            }
            Ok(Request::Sessions) => Response::ok(serde_json::to_value(handle.sessions()).ok()),
            Ok(Request::Admin { admin }) => match store {
                None => Response::err("this server has no identity store".into()),
                Some(store) => match crate::ops::admin::execute(store, &admin, unix_now()) {
                    Ok(v) => {
                        // The index already refuses the peer; now cut its live sessions.
                        if let Some(peer) = admin.closes_peer() {
                            handle.close_peer(peer);
                        }
                        if let Some(peer) = admin.changes_peer() {
                            handle.recheck_peer(peer);
                        }
                        Response::ok(Some(v))
                    }
                    Err(e) => Response::err(e),
                },
            },
            Err(e) => Response::err(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
        out.push(b'\n');
        writer.write_all(&out)?;
        line.clear();
    }
    Ok(())
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// True when a server answers on `data_dir`'s control socket.
pub fn server_running(data_dir: &Path) -> bool {
    UnixStream::connect(socket_path(data_dir)).is_ok()
}

/// Sends one request to the server running on `data_dir`.
pub fn request(data_dir: &Path, req: &Request) -> Result<serde_json::Value, String> {
    let path = socket_path(data_dir);
    let stream = UnixStream::connect(&path).map_err(|e| {
        format!(
            "no running server answers on {} ({e}); start one with `alknet serve --data-dir {}`",
            path.display(),
            data_dir.display()
        )
    })?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new((&stream).take(MAX_RESPONSE));
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(|e| e.to_string())?;
    let resp: Response =
        serde_json::from_str(&answer).map_err(|e| format!("bad answer from server: {e}"))?;
    if resp.ok {
        Ok(resp.result.unwrap_or(serde_json::Value::Null))
    } else {
        Err(resp.error.unwrap_or_else(|| "request failed".into()))
    }
}
