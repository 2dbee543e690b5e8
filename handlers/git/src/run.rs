//! One `alknet/git` stream: the header, the checks, then git's own pack program with its
//! stdio bridged to the stream.

use crate::Gateway;
use crate::name::{MAX_SEGMENTS, RepoName};
use alknet_proto::git::{Decoded, GitRequest, GitService, MAX_HEADER_LEN, decode, err_pkt_line};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

/// Who runs an operation, from the shard's admission.
pub(crate) struct Caller {
    pub(crate) peer: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) remote: String,
}

/// Serves one stream: reads the header, then lists, clones, fetches or pushes.
pub(crate) async fn serve_stream<S>(gw: Arc<Gateway>, who: Caller, mut stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header = tokio::time::timeout(crate::HEADER_TIMEOUT, read_header(&mut stream)).await;
    let (request, rest) = match header {
        Ok(Ok(h)) => h,
        Ok(Err(msg)) => {
            refuse(stream, &who, "?", &msg).await;
            return;
        }
        Err(_) => {
            let msg = format!("no request header within {:?}", crate::HEADER_TIMEOUT);
            refuse(stream, &who, "?", &msg).await;
            return;
        }
    };
    match request.service {
        GitService::List => list(&gw, &who, stream).await,
        GitService::UploadPack | GitService::ReceivePack => {
            serve_pack(gw, who, request, rest, stream).await;
        }
    }
}

/// Reads the header line; returns it and whatever came after it in the same reads.
async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(GitRequest, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; MAX_HEADER_LEN];
    loop {
        match decode(&buf) {
            Ok(Decoded::Header(r, used)) => {
                let rest = buf.get(used..).unwrap_or_default().to_vec();
                return Ok((r, rest));
            }
            Ok(Decoded::Incomplete) => {}
            Err(e) => return Err(e.to_string()),
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the request: {e}"))?;
        if n == 0 {
            return Err("the stream ended inside the request header".into());
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// Answers with git's `ERR` line and ends the stream (always `false`: the operation failed).
async fn refuse<S: AsyncWrite + Unpin>(mut stream: S, who: &Caller, repo: &str, msg: &str) -> bool {
    warn!(
        peer = %who.peer,
        remote = %who.remote,
        repo = %repo,
        reason = %msg,
        "git request refused"
    );
    let _ = stream.write_all(&err_pkt_line(msg)).await;
    let _ = stream.shutdown().await;
    false
}

/// Where `name` lives under `root`, checked component by component: every existing one a
/// real directory (no symlink anywhere). `Ok(None)`: the repository does not exist (its
/// parents may not either).
fn locate(root: &Path, name: &RepoName) -> Result<Option<PathBuf>, String> {
    let mut path = root.to_path_buf();
    for seg in name.segments() {
        path.push(&seg);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "repository {name}: a symlink on its path is not followed"
                ));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("repository {name} is not a repository")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("repository {name}: {e}")),
        }
    }
    if !path.join("HEAD").is_file() || !path.join("objects").is_dir() {
        return Err(format!("repository {name} is not a bare git repository"));
    }
    Ok(Some(path))
}

/// Creates the bare repository `name` (and its missing parents), refusing symlinks.
async fn create(gw: &Gateway, name: &RepoName) -> Result<PathBuf, String> {
    let mut path = gw.root().to_path_buf();
    for seg in name.segments() {
        path.push(&seg);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() && !m.file_type().is_symlink() => {}
            Ok(_) => return Err(format!("repository {name}: its path is taken")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&path).map_err(|e| format!("creating {name}: {e}"))?;
            }
            Err(e) => return Err(format!("repository {name}: {e}")),
        }
    }
    let branch = gw.settings().default_branch;
    let status = git_command(gw, None)
        .args(["init", "--bare", "--quiet"])
        .arg(format!("--initial-branch={branch}"))
        .arg(".")
        .current_dir(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !status.status.success() {
        return Err(format!(
            "git init failed for {name}: {}",
            String::from_utf8_lossy(&status.stderr).trim()
        ));
    }
    Ok(path)
}

/// `git` with an environment built from scratch: no system or user config, the gateway's
/// hooks only, and `GIT_PROTOCOL` when the client asked for one.
fn git_command(gw: &Gateway, protocol: Option<&str>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("git");
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &gw.hooks)
        .env("LANG", "C")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .arg("-c")
        .arg(format!("core.hooksPath={}", gw.hooks.display()));
    if let Some(p) = protocol {
        cmd.env("GIT_PROTOCOL", p);
    }
    cmd
}

/// Kills the child's process group when the operation ends for any reason.
struct Group(Option<nix::unistd::Pid>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pg) = self.0 {
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Runs one upload-pack or receive-pack; whether it ended well.
pub(crate) async fn serve_pack<S>(
    gw: Arc<Gateway>,
    who: Caller,
    req: GitRequest,
    rest: Vec<u8>,
    stream: S,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let name = match RepoName::parse(&req.repo) {
        Ok(n) => n,
        Err(msg) => return refuse(stream, &who, &req.repo, &msg).await,
    };
    let access = gw.access(&who.peer, &who.scopes, &name);
    let push = req.service == GitService::ReceivePack;
    let denied = || {
        format!(
            "access denied: peer {} may not {} {name} (the gateway's [[git.allow]] rules decide)",
            who.peer,
            if push { "push to" } else { "read" }
        )
    };
    if !access.read && !(push && (access.write || access.create)) {
        return refuse(stream, &who, name.as_str(), &denied()).await;
    }
    let path = match locate(gw.root(), &name) {
        Ok(Some(p)) if !push || access.write => p,
        Ok(Some(_)) => return refuse(stream, &who, name.as_str(), &denied()).await,
        Ok(None) if push && access.create => match create(&gw, &name).await {
            Ok(p) => {
                info!(peer = %who.peer, repo = %name, "git repository created by push");
                p
            }
            Err(msg) => return refuse(stream, &who, name.as_str(), &msg).await,
        },
        Ok(None) => {
            let msg = format!("repository {name} does not exist");
            return refuse(stream, &who, name.as_str(), &msg).await;
        }
        Err(msg) => return refuse(stream, &who, name.as_str(), &msg).await,
    };
    let Some(_hold) = gw.hold(&who.peer) else {
        let msg = "too many git operations of this peer at once; try again when one ends";
        return refuse(stream, &who, name.as_str(), msg).await;
    };
    let settings = gw.settings();
    let mut cmd = git_command(&gw, req.protocol.as_deref());
    if push {
        if let Ok(bin) = std::env::current_exe() {
            cmd.env(crate::hook::ENV_BIN, bin);
        }
        cmd.env(crate::hook::ENV_PROTECT, gw.protect());
        if let Some(p) = &settings.pre_receive {
            cmd.env(crate::hook::ENV_PRE_RECEIVE, p);
        }
        if let Some(p) = &settings.post_receive {
            cmd.env(crate::hook::ENV_POST_RECEIVE, p);
        }
        cmd.arg("-c")
            .arg(format!("receive.maxInputSize={}", settings.max_push_bytes))
            .args(["receive-pack", "."]);
    } else {
        cmd.args(["upload-pack", "--strict", "."]);
    }
    cmd.current_dir(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("cannot run git on the gateway: {e}");
            return refuse(stream, &who, name.as_str(), &msg).await;
        }
    };
    let _group = Group(
        child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(nix::unistd::Pid::from_raw),
    );
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return false;
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let up = async move {
        let mut n = rest.len() as u64;
        if !rest.is_empty() && stdin.write_all(&rest).await.is_err() {
            return n;
        }
        if let Ok(m) = tokio::io::copy(&mut rd, &mut stdin).await {
            n += m;
        }
        drop(stdin);
        n
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0u64;
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(m) => {
                    if wr
                        .write_all(buf.get(..m).unwrap_or_default())
                        .await
                        .is_err()
                    {
                        return (n, false);
                    }
                    n += m as u64;
                }
            }
        }
        (n, wr.shutdown().await.is_ok())
    };
    let errors = async move {
        let mut text = Vec::new();
        let _ = (&mut stderr).take(4096).read_to_end(&mut text).await;
        text
    };
    let service = req.service.as_str();
    let work = async {
        let ((down_bytes, finished), _up_bytes, err) = tokio::join!(down, up, errors);
        let status = child.wait().await;
        (down_bytes, finished, err, status)
    };
    match tokio::time::timeout(settings.timeout.0, work).await {
        Ok((bytes, finished, err, status)) => {
            let ok = finished && status.as_ref().is_ok_and(|s| s.success());
            let err = String::from_utf8_lossy(&err);
            if ok {
                info!(peer = %who.peer, repo = %name, service, bytes, "git operation done");
                true
            } else {
                info!(
                    peer = %who.peer,
                    repo = %name,
                    service,
                    bytes,
                    status = ?status.ok(),
                    stderr = %err.trim(),
                    "git operation failed"
                );
                false
            }
        }
        Err(_) => {
            warn!(peer = %who.peer, repo = %name, service, "git operation hit the time limit; killed");
            false
        }
    }
}

/// Answers `list`: one `NAME ACCESS` line per repository the caller may read.
async fn list<S: AsyncWrite + Unpin>(gw: &Gateway, who: &Caller, mut stream: S) {
    let root = gw.root().to_path_buf();
    let found = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        walk(&root, String::new(), 0, &mut out);
        out.sort();
        out
    })
    .await
    .unwrap_or_default();
    let mut text = String::new();
    for name in found {
        let Ok(repo) = RepoName::parse(&name) else {
            continue;
        };
        let a = gw.access(&who.peer, &who.scopes, &repo);
        if !a.read {
            continue;
        }
        let mut rights = vec!["read"];
        if a.write {
            rights.push("write");
        }
        text.push_str(&format!("{repo} {}\n", rights.join(",")));
    }
    debug!(peer = %who.peer, "git repositories listed");
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Bare repositories (`NAME.git` directories) below `dir`, not following symlinks.
fn walk(dir: &Path, prefix: String, depth: usize, out: &mut Vec<String>) {
    if depth >= MAX_SEGMENTS || out.len() >= 10_000 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if !ft.is_dir() {
            continue;
        }
        let Some(fname) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let name = if prefix.is_empty() {
            fname.clone()
        } else {
            format!("{prefix}/{fname}")
        };
        if fname.ends_with(".git") {
            if e.path().join("HEAD").is_file() {
                out.push(name);
            }
        } else {
            walk(&e.path(), name, depth + 1, out);
        }
    }
}
