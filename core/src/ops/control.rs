//! The local control socket: a Unix socket in the data directory (mode 0600, owner only)
//! through which `alknet stats`, `peer`, `token` and `sessions` act on a running server.
//!
//! Protocol: one JSON request per line, one JSON response per line.
//!
//! Who may talk: the socket is created with mode 0600 from its first instant (bound inside a
//! fresh 0700 directory, then renamed into place, so no umask and no window is involved),
//! and every connection's `SO_PEERCRED` uid must be the server's own or root's.
//!
//! Bounds: each client is served on a thread of its own, at most [`MAX_CLIENTS`] at once
//! (more are told so and closed); a request must arrive whole within [`REQUEST_DEADLINE`]
//! of the previous answer (of the connection, for the first) and be at most
//! [`MAX_REQUEST`] bytes, else the client gets an error and is closed. So one slow or
//! silent client holds one thread for a few seconds, never the control plane.
//!
//! Not here: what requests do (`ops/admin.rs`, the [`ControlHandle`]).

use crate::identity::store::RedbStore;
use crate::net::server::ControlHandle;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Socket file name inside the data directory.
pub const SOCKET_FILE: &str = "control.sock";
/// Longest request line, in bytes (newline excluded).
pub const MAX_REQUEST: usize = 64 * 1024;
/// Clients served at once; a request is a few milliseconds of work, so this is generous.
pub const MAX_CLIENTS: usize = 16;
/// Time a client has to send each whole request line.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Name prefix of the snapshot a server writes into its data directory for `alknet backup`.
pub const BACKUP_PREFIX: &str = ".backup-";
/// Longest error message echoed back (serde errors may quote the request).
const MAX_ERROR: usize = 256;
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
    /// A consistent copy of the store, written into the data directory (the server may
    /// write nowhere else); the answer names the file, which `alknet backup` moves to where
    /// the operator asked, and counts its rows.
    Backup,
    /// Read the config file again and apply what can change live (as SIGHUP does); the
    /// answer says what changed, the error names the file, line and key.
    Reload,
    /// Debug builds only: blocks a shard's thread for `millis` milliseconds, as a stuck loop
    /// would, so tests can show that the watchdog pings stop.
    #[cfg(debug_assertions)]
    DebugHangShard {
        /// The shard.
        shard: usize,
        /// For how long.
        millis: u64,
    },
    /// Debug builds only: makes a shard's thread panic outside any guarded task, so tests
    /// can show that the process then exits non-zero. Absent from release builds, and only
    /// the server's own user reaches the socket.
    #[cfg(debug_assertions)]
    DebugPanicShard {
        /// The shard.
        shard: usize,
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
    serve_with_reload(data_dir, handle, info, store, None)
}

/// Like [`serve`], with the reloader `alknet reload` asks (without one, a reload request
/// is answered with an error).
pub fn serve_with_reload(
    data_dir: &Path,
    handle: ControlHandle,
    info: ServerInfo,
    store: Option<Arc<RedbStore>>,
    reloader: Option<Arc<crate::ops::reload::Reloader>>,
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
    let listener = bind_private(&path)?;
    let shared = Arc::new(Shared {
        handle,
        info,
        store,
        reloader,
        started: Instant::now(),
        uid: crate::net::sys::effective_uid(),
        clients: AtomicUsize::new(0),
    });
    std::thread::Builder::new()
        .name("alknet-control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => admit(s, &shared),
                    Err(e) => warn!(error = %e, "control socket accept failed"),
                }
            }
        })?;
    Ok(path)
}

/// Binds a Unix listener at `path` that is mode 0600 from its first instant: it is bound in
/// a new directory only the owner can enter, made 0600 there, and renamed into place. (A
/// umask around the bind would be process-wide while other threads create files.)
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let staging = dir.join(format!(
        ".control-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let result = (|| {
        // A umask can only take bits away from 0700; set it exactly anyway.
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))?;
        let inner = staging.join(SOCKET_FILE);
        let listener = UnixListener::bind(&inner)?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inner, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

struct Shared {
    handle: ControlHandle,
    info: ServerInfo,
    store: Option<Arc<RedbStore>>,
    reloader: Option<Arc<crate::ops::reload::Reloader>>,
    started: Instant,
    uid: u32,
    clients: AtomicUsize,
}

/// Whether a client of uid `peer` may use the control socket of a server running as
/// `server`: the same user, or root.
pub fn peer_allowed(peer: u32, server: u32) -> bool {
    peer == server || peer == 0
}

/// Checks a new client and serves it on a thread of its own, within the client cap.
fn admit(stream: UnixStream, shared: &Arc<Shared>) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    match crate::net::sys::peer_credentials(&stream) {
        Ok(cred) if peer_allowed(cred.uid, shared.uid) => {}
        Ok(cred) => {
            warn!(
                uid = cred.uid,
                pid = cred.pid,
                "control client of another user refused"
            );
            refuse(
                &stream,
                "the control socket serves only the server's own user and root",
            );
            return;
        }
        Err(e) => {
            warn!(error = %e, "control client without credentials refused");
            return;
        }
    }
    if shared.clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
        shared.clients.fetch_sub(1, Ordering::AcqRel);
        warn!(
            limit = MAX_CLIENTS,
            "too many control clients at once; one refused"
        );
        refuse(
            &stream,
            "too many control clients at once; retry in a moment",
        );
        return;
    }
    let worker = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("alknet-control-client".into())
        .spawn(move || {
            if let Err(e) = serve_one(stream, &worker) {
                debug!(error = %e, "control connection ended");
            }
            worker.clients.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        shared.clients.fetch_sub(1, Ordering::AcqRel);
        warn!(error = %e, "cannot start a control client thread");
    }
}

fn refuse(mut stream: &UnixStream, message: &str) {
    let _ = write_response(&mut stream, &Response::err(message.into()));
}

fn write_response(writer: &mut impl Write, response: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    writer.write_all(&out)
}

/// Splits a byte stream into request lines of at most [`MAX_REQUEST`] bytes, holding at
/// most [`LineBuf::CAP`] bytes (sans-IO: the caller feeds what it read).
#[derive(Debug, Default)]
pub struct LineBuf {
    buf: Vec<u8>,
    overflow: bool,
}

/// A line longer than [`MAX_REQUEST`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

impl LineBuf {
    /// Most bytes held: two whole requests (a client may send its next one early).
    pub const CAP: usize = 2 * (MAX_REQUEST + 1);

    /// Appends bytes read from the client; bytes beyond [`LineBuf::CAP`] are dropped, and
    /// the line they belonged to then reads as [`TooLong`].
    pub fn push(&mut self, data: &[u8]) {
        let room = Self::CAP.saturating_sub(self.buf.len());
        if data.len() > room {
            self.overflow = true;
        }
        self.buf
            .extend_from_slice(data.get(..data.len().min(room)).unwrap_or(&[]));
    }

    /// The next complete line (without its newline), `Ok(None)` when none is complete yet,
    /// or [`TooLong`] when the pending line is over the limit.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, TooLong> {
        match self.buf.iter().position(|&b| b == b'\n') {
            Some(i) if i <= MAX_REQUEST => {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                Ok(Some(line))
            }
            Some(_) => Err(TooLong),
            None if self.overflow || self.buf.len() > MAX_REQUEST => Err(TooLong),
            None => Ok(None),
        }
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Parses one request line; the error is short, lower-case, and says what is expected.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice::<Request>(line.trim_ascii()).map_err(|e| {
        let mut message = format!(
            "bad request: {e}; send one JSON object per line, such as {{\"cmd\":\"stats\"}}"
        );
        if message.len() > MAX_ERROR {
            let mut end = MAX_ERROR;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        message
    })
}

fn serve_one(stream: UnixStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_write_timeout(Some(REQUEST_DEADLINE))?;
    let mut reader = &stream;
    let mut writer = &stream;
    let mut lines = LineBuf::default();
    let mut chunk = [0u8; 4096];
    let mut deadline = Instant::now() + REQUEST_DEADLINE;
    loop {
        let line = match lines.next_line() {
            Ok(Some(line)) => line,
            Ok(None) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return write_response(
                        &mut writer,
                        &Response::err(format!(
                            "no whole request within {REQUEST_DEADLINE:?}; closing"
                        )),
                    );
                }
                stream.set_read_timeout(Some(left))?;
                match reader.read(&mut chunk) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        lines.push(chunk.get(..n).unwrap_or(&[]));
                        continue;
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(TooLong) => {
                return write_response(
                    &mut writer,
                    &Response::err(format!("request longer than {MAX_REQUEST} bytes; closing")),
                );
            }
        };
        let response = match parse_request(&line) {
            Ok(request) => execute(request, shared),
            Err(message) => Response::err(message),
        };
        write_response(&mut writer, &response)?;
        deadline = Instant::now() + REQUEST_DEADLINE;
    }
}

fn execute(request: Request, shared: &Shared) -> Response {
    let handle = &shared.handle;
    match request {
        Request::Stats => {
            let (rss, budget, over) = handle.memory();
            let memory = serde_json::json!({
                "rss_bytes": rss,
                "budget_bytes": budget,
                "over_budget": over,
            });
            Response::ok(Some(serde_json::json!({
                "server": shared.info,
                "uptime_secs": shared.started.elapsed().as_secs(),
                "counters": handle.stats(),
                "shards": handle.per_shard(),
                "memory": memory,
                "metrics": crate::ops::metrics::collect(handle, shared.store.as_deref(), &shared.info),
            })))
        }
        Request::ClosePeer { peer } => {
            handle.close_peer(&peer);
            Response::ok(None)
        }
        Request::Sessions => Response::ok(serde_json::to_value(handle.sessions()).ok()),
        Request::Admin { admin } => match shared.store.as_deref() {
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
        Request::Backup => match shared.store.as_deref() {
            None => Response::err("this server has no identity store".into()),
            Some(store) => {
                let dir = store.path().parent().unwrap_or(Path::new("."));
                let file = dir.join(format!(
                    "{BACKUP_PREFIX}{}-{:016x}.redb",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                match store.backup(&file) {
                    Ok(summary) => Response::ok(Some(serde_json::json!({
                        "file": file,
                        "summary": summary,
                    }))),
                    Err(e) => Response::err(format!("backup failed: {e}")),
                }
            }
        },
        Request::Reload => match &shared.reloader {
            None => Response::err("this server cannot reload its configuration".into()),
            Some(r) => match r.reload() {
                Ok(outcome) => Response::ok(serde_json::to_value(outcome).ok()),
                Err(e) => Response::err(e),
            },
        },
        #[cfg(debug_assertions)]
        Request::DebugHangShard { shard, millis } => {
            if handle.debug_hang_shard(shard, Duration::from_millis(millis.min(600_000))) {
                Response::ok(None)
            } else {
                Response::err(format!("no shard {shard}"))
            }
        }
        #[cfg(debug_assertions)]
        Request::DebugPanicShard { shard } => {
            if handle.debug_panic_shard(shard) {
                Response::ok(None)
            } else {
                Response::err(format!("no shard {shard}"))
            }
        }
    }
}

/// The oracle of the `control` fuzz target: arbitrary bytes as what a client sends, fed in
/// uneven pieces. The line buffer never holds more than [`LineBuf::CAP`], every line is at
/// most [`MAX_REQUEST`] bytes, an error message stays short, and a parsed request encodes
/// and parses back to the same request.
pub(crate) fn fuzz_client_bytes(data: &[u8]) {
    let mut lines = LineBuf::default();
    let mut rest = data;
    let mut step = 1usize;
    loop {
        let (piece, tail) = rest.split_at(rest.len().min(step));
        rest = tail;
        step = step % 7919 + 97;
        lines.push(piece);
        assert!(lines.len() <= LineBuf::CAP, "line buffer over its bound");
        loop {
            match lines.next_line() {
                Ok(Some(line)) => {
                    assert!(line.len() <= MAX_REQUEST, "line over the limit");
                    match parse_request(&line) {
                        Ok(request) => {
                            let again = serde_json::to_vec(&request)
                                .map_err(|e| e.to_string())
                                .and_then(|b| parse_request(&b));
                            assert_eq!(
                                again.map(|r| format!("{r:?}")),
                                Ok(format!("{request:?}")),
                                "a request re-encodes to itself"
                            );
                        }
                        Err(message) => assert!(message.len() <= MAX_ERROR + 4, "long error"),
                    }
                }
                Ok(None) => break,
                // The server answers and closes here.
                Err(TooLong) => return,
            }
        }
        if rest.is_empty() {
            return;
        }
    }
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
    // A server that refuses a client answers and closes without reading: the write may then
    // fail while the answer waits to be read, so read it either way.
    let written = (&stream).write_all(&line);
    let mut reader = BufReader::new((&stream).take(MAX_RESPONSE));
    let mut answer = String::new();
    let read = reader.read_line(&mut answer);
    if answer.is_empty() {
        written.map_err(|e| e.to_string())?;
        read.map_err(|e| e.to_string())?;
    }
    let resp: Response =
        serde_json::from_str(&answer).map_err(|e| format!("bad answer from server: {e}"))?;
    if resp.ok {
        Ok(resp.result.unwrap_or(serde_json::Value::Null))
    } else {
        Err(resp.error.unwrap_or_else(|| "request failed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_bounded_and_overlong_ones_refused() {
        let mut lines = LineBuf::default();
        lines.push(b"{\"cmd\":\"stats\"}\n{\"cmd\":");
        assert_eq!(lines.next_line(), Ok(Some(b"{\"cmd\":\"stats\"}".to_vec())));
        assert_eq!(lines.next_line(), Ok(None));
        lines.push(b"\"sessions\"}\n");
        assert_eq!(
            lines.next_line(),
            Ok(Some(b"{\"cmd\":\"sessions\"}".to_vec()))
        );
        assert!(lines.is_empty());

        // A line of exactly the limit passes; one byte more is refused before its newline.
        let mut lines = LineBuf::default();
        lines.push(&vec![b' '; MAX_REQUEST]);
        assert_eq!(lines.next_line(), Ok(None));
        lines.push(b"\n");
        assert_eq!(
            lines.next_line().map(|l| l.map(|l| l.len())),
            Ok(Some(MAX_REQUEST))
        );
        let mut lines = LineBuf::default();
        lines.push(&vec![b'x'; MAX_REQUEST + 1]);
        assert_eq!(lines.next_line(), Err(TooLong));

        // A flood without newlines is held up to the cap (MAX_REQUEST * 2 + 2 bytes), no more.
        let mut lines = LineBuf::default();
        for _ in 0..100 {
            lines.push(&[b'y'; 4096]);
        }
        assert!(lines.len() <= LineBuf::CAP);
        assert_eq!(lines.next_line(), Err(TooLong));
    }

    #[test]
    fn bad_requests_get_a_short_error_naming_the_expected_form() {
        let e = parse_request(b"garbage").err().unwrap_or_default();
        assert!(
            e.starts_with("bad request:") && e.contains("{\"cmd\":\"stats\"}"),
            "{e}"
        );
        let huge = format!("{{\"cmd\":\"{}\"}}", "z".repeat(60_000));
        let e = parse_request(huge.as_bytes()).err().unwrap_or_default();
        assert!(
            e.len() <= MAX_ERROR + 4,
            "an error echoes {} bytes of the request (limit {MAX_ERROR})",
            e.len()
        );
        assert!(parse_request(b" {\"cmd\":\"stats\"}\r").is_ok());
        assert!(parse_request(&[0xff, 0xfe, b'\n']).is_err());
    }

    #[test]
    fn only_the_servers_user_and_root_are_allowed() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(!peer_allowed(65534, 0));
    }

    #[test]
    fn the_socket_is_private_when_it_appears_and_no_staging_is_left() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join(SOCKET_FILE);
        let listener = bind_private(&path).unwrap_or_else(|e| panic!("{e}"));
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .ok();
        assert_eq!(mode, Some(0o600));
        // The listener still accepts at its new name.
        let _client = UnixStream::connect(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(listener.accept().is_ok());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert_eq!(names, vec![std::ffi::OsString::from(SOCKET_FILE)]);
    }

    #[test]
    fn mutated_requests_keep_the_oracle() {
        // A few thousand cheap mutations of the seeds, through the fuzz target's oracle.
        let seeds: [&[u8]; 4] = [
            b"{\"cmd\":\"stats\"}\n",
            b"{\"cmd\":\"close_peer\",\"peer\":\"a\"}\n{\"cmd\":\"sessions\"}\n",
            b"{\"cmd\":\"admin\",\"admin\":{\"op\":\"peer_show\",\"id\":\"x\"}}\n",
            b"{\"cmd\":\"debug_panic_shard\",\"shard\":99}\n",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..4000usize {
            let mut data = seeds[round % seeds.len()].to_vec();
            for _ in 0..(round % 5) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x as usize) % data.len().max(1);
                match x % 3 {
                    0 => data.insert(at, (x >> 8) as u8),
                    1 => {
                        data.remove(at.min(data.len().saturating_sub(1)));
                    }
                    _ => {
                        if let Some(b) = data.get_mut(at) {
                            *b = (x >> 16) as u8;
                        }
                    }
                }
                if data.is_empty() {
                    data.push(b'\n');
                }
            }
            fuzz_client_bytes(&data);
        }
    }

    #[test]
    fn control_corpus() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/control");
        let n = alknet_proto::fuzzing::replay_corpus(&dir, crate::fuzzing::fuzz_control_request)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(n > 0, "the control corpus is empty");
    }
}
