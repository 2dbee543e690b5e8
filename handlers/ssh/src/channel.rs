//! One session channel: its requests (PTY, env, exec, shell, subsystem) checked against the
//! peer's access, then one child process (or the in-process SFTP server) wired to it.
//!
//! A child runs in its own process group (its own session, with a PTY); the group is killed
//! with SIGKILL when the channel ends for any reason, including this task being aborted
//! with its connection, and tokio reaps the child. Output reaches the client through
//! russh's channel writers, which wait for the client's window, so a client that stops
//! reading stops the child (its pipe fills) instead of growing a buffer.

use crate::login::Account;
use crate::policy::{Access, Placement, Policy};
use crate::sftp;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelMsg, Sig};
use std::ffi::OsStr;
use std::io;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

/// What a channel task needs from its connection.
pub(crate) struct ChannelCtx {
    pub(crate) handle: Handle,
    pub(crate) access: Access,
    pub(crate) placement: Placement,
    pub(crate) policy: Arc<Policy>,
    pub(crate) peer: String,
    pub(crate) remote: SocketAddr,
    pub(crate) scopes: Arc<[String]>,
    pub(crate) git: Option<Arc<alknet_git::Gateway>>,
}

/// Environment variables a client may set: `LANG`, `LC_*`, `TERM`, and `GIT_PROTOCOL` (read
/// by the git path only, checked there; never passed to a shell).
pub(crate) fn env_allowed(name: &str) -> bool {
    name == "LANG" || name == "TERM" || name.starts_with("LC_") || name == "GIT_PROTOCOL"
}

/// Most `env` requests kept per channel, and the longest value.
const MAX_ENV: usize = 32;
const MAX_ENV_VALUE: usize = 1024;

/// Largest command line accepted in an exec request.
const MAX_COMMAND: usize = 64 * 1024;

#[derive(Clone, Copy)]
struct Size {
    rows: u16,
    cols: u16,
}

impl Size {
    fn new(rows: u32, cols: u32) -> Self {
        let clamp = |v: u32, d: u16| match u16::try_from(v) {
            Ok(0) | Err(_) => d,
            Ok(v) => v,
        };
        Self {
            rows: clamp(rows, 24),
            cols: clamp(cols, 80),
        }
    }
}

struct PtyReq {
    term: String,
    size: Size,
}

enum Start {
    Exec(Vec<u8>),
    Git(alknet_proto::git::GitService, String),
    Shell,
    Sftp,
}

/// Serves one session channel until it closes.
pub(crate) async fn run(mut ch: Channel<Msg>, ctx: ChannelCtx) {
    let id = ch.id();
    let mut pty: Option<PtyReq> = None;
    let mut env: Vec<(String, String)> = Vec::new();
    let start = loop {
        let Some(msg) = ch.wait().await else {
            return;
        };
        let ok = match msg {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                ..
            } => {
                let ok = ctx.access == Access::Full && pty.is_none() && term.len() <= 64;
                if ok {
                    pty = Some(PtyReq {
                        term,
                        size: Size::new(row_height, col_width),
                    });
                }
                ok
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            } => {
                if let Some(p) = &mut pty {
                    p.size = Size::new(row_height, col_width);
                }
                continue;
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } => {
                let ok = env_allowed(&variable_name)
                    && env.len() < MAX_ENV
                    && variable_value.len() <= MAX_ENV_VALUE
                    && !variable_value.contains('\0');
                if ok {
                    env.push((variable_name, variable_value));
                }
                ok
            }
            ChannelMsg::Exec { command, .. } => {
                let git_allowed =
                    ctx.access == Access::Full || ctx.scopes.iter().any(|s| s == "git");
                if let (Some(_), true, Some((service, repo))) = (
                    &ctx.git,
                    git_allowed && pty.is_none(),
                    alknet_git::ssh::parse_command(&command),
                ) {
                    reply(&ctx.handle, id, true).await;
                    break Start::Git(service, repo);
                }
                if command.len() <= MAX_COMMAND && ctx.policy.may_exec(ctx.access, &command) {
                    reply(&ctx.handle, id, true).await;
                    break Start::Exec(command);
                }
                warn!(
                    peer = %ctx.peer,
                    remote = %ctx.remote,
                    access = ?ctx.access,
                    "exec refused: not allowed for the peer's scopes"
                );
                false
            }
            ChannelMsg::RequestShell { .. } => {
                if ctx.access == Access::Full {
                    reply(&ctx.handle, id, true).await;
                    break Start::Shell;
                }
                false
            }
            ChannelMsg::RequestSubsystem { name, .. } => {
                if ctx.access == Access::Full && name == "sftp" {
                    reply(&ctx.handle, id, true).await;
                    break Start::Sftp;
                }
                false
            }
            // russh answers agent forwarding itself (refused: the handler's default).
            ChannelMsg::AgentForward { .. } => continue,
            ChannelMsg::RequestX11 { .. } => false,
            ChannelMsg::Eof | ChannelMsg::Close => return,
            _ => continue,
        };
        reply(&ctx.handle, id, ok).await;
    };
    if let (Start::Git(service, repo), Some(gw)) = (&start, ctx.git.clone()) {
        let protocol = env
            .iter()
            .find(|(k, _)| k == "GIT_PROTOCOL")
            .map(|(_, v)| v.clone());
        // git's output goes out through the channel's own writer, so the exit status, EOF
        // and close sent after it on the same channel cannot overtake it; the client's data
        // comes in through a bounded pipe fed from the channel's messages.
        let (mut to_git, from_client) = tokio::io::duplex(256 * 1024);
        let stream = tokio::io::join(from_client, ch.make_writer());
        let serve = alknet_git::ssh::serve(
            gw,
            ctx.peer.clone(),
            ctx.scopes.to_vec(),
            ctx.remote.to_string(),
            *service,
            repo.clone(),
            protocol,
            stream,
        );
        // Fed while git runs (both are polled together, so a full pipe never stalls git).
        let feed = async {
            while let Some(msg) = ch.wait().await {
                match msg {
                    ChannelMsg::Data { data } if to_git.write_all(&data).await.is_err() => break,
                    ChannelMsg::Eof | ChannelMsg::Close => break,
                    _ => {}
                }
            }
            let _ = to_git.shutdown().await;
            std::future::pending::<()>().await
        };
        let code = tokio::select! {
            code = serve => code,
            () = feed => 1,
        };
        let _ = ch.exit_status(code).await;
        let _ = ch.eof().await;
        let _ = ch.close().await;
        return;
    }
    let account = &ctx.placement.account;
    let result = match start {
        // Served above (a git exec is only accepted with the git gateway present).
        Start::Git(..) => return,
        Start::Sftp if !account.needs_switch() => {
            info!(peer = %ctx.peer, root = %ctx.placement.sftp_root.display(), "SFTP session");
            let opts = sftp::SftpOptions {
                root: ctx.placement.sftp_root.clone(),
                peer: ctx.peer.clone(),
            };
            let handle = ctx.handle.clone();
            let code = match sftp::serve(ch.into_stream(), opts).await {
                Ok(()) => 0,
                Err(e) => {
                    warn!(peer = %ctx.peer, error = %e, "SFTP session failed");
                    1
                }
            };
            let _ = handle.exit_status_request(id, code).await;
            let _ = handle.eof(id).await;
            let _ = handle.close(id).await;
            return;
        }
        Start::Sftp => {
            // Another account: the SFTP server runs as a child under it, so the kernel
            // checks every file access as that user.
            let exe = match std::env::current_exe() {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "cannot find this program to run the SFTP server");
                    let _ = ch.close().await;
                    return;
                }
            };
            let mut cmd = tokio::process::Command::new(exe);
            account.apply(&mut cmd);
            cmd.arg("sftp-server")
                .arg("--root")
                .arg(&ctx.placement.sftp_root);
            run_piped(&mut ch, &ctx, cmd).await
        }
        Start::Exec(command) => {
            info!(peer = %ctx.peer, user = %account.name, pty = pty.is_some(), "exec");
            let cmd = shell_command(account, Some(&command), &env, pty.as_ref());
            match &pty {
                Some(p) => run_pty(&mut ch, &ctx, cmd, p.size).await,
                None => run_piped(&mut ch, &ctx, cmd).await,
            }
        }
        Start::Shell => {
            info!(peer = %ctx.peer, user = %account.name, pty = pty.is_some(), "shell");
            let cmd = shell_command(account, None, &env, pty.as_ref());
            match &pty {
                Some(p) => run_pty(&mut ch, &ctx, cmd, p.size).await,
                None => run_piped(&mut ch, &ctx, cmd).await,
            }
        }
    };
    match result {
        Ok(status) => {
            if let Some(code) = status.code() {
                let _ = ch.exit_status(code as u32).await;
            } else if let Some(sig) = status.signal() {
                let _ = ctx
                    .handle
                    .exit_signal_request(
                        id,
                        sig_of(sig),
                        status.core_dumped(),
                        String::new(),
                        String::new(),
                    )
                    .await;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => return,
        Err(e) => {
            warn!(peer = %ctx.peer, error = %e, "cannot run the session's command");
            let _ = ch
                .extended_data(
                    1,
                    &format!("alknet: cannot start the command: {e}\r\n").into_bytes()[..],
                )
                .await;
            let _ = ch.exit_status(127).await;
        }
    }
    let _ = ch.eof().await;
    let _ = ch.close().await;
}

async fn reply(handle: &Handle, id: ChannelId, ok: bool) {
    let _ = if ok {
        handle.channel_success(id).await
    } else {
        handle.channel_failure(id).await
    };
}

/// The login shell, or the shell running `command`, as sshd starts them.
fn shell_command(
    account: &Account,
    command: Option<&[u8]>,
    env: &[(String, String)],
    pty: Option<&PtyReq>,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&account.shell);
    account.apply(&mut cmd);
    match command {
        Some(c) => {
            cmd.arg("-c").arg(OsStr::from_bytes(c));
        }
        None => {
            let name = account
                .shell
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "sh".into());
            cmd.arg0(format!("-{name}"));
        }
    }
    for (k, v) in env.iter().filter(|(k, _)| k != "GIT_PROTOCOL") {
        cmd.env(k, v);
    }
    if let Some(p) = pty {
        cmd.env("TERM", &p.term);
    }
    cmd
}

/// Kills a process group when dropped.
struct Group(Option<Pid>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

fn signal_of(sig: &Sig) -> Option<Signal> {
    Some(match sig {
        Sig::ABRT => Signal::SIGABRT,
        Sig::ALRM => Signal::SIGALRM,
        Sig::FPE => Signal::SIGFPE,
        Sig::HUP => Signal::SIGHUP,
        Sig::ILL => Signal::SIGILL,
        Sig::INT => Signal::SIGINT,
        Sig::KILL => Signal::SIGKILL,
        Sig::PIPE => Signal::SIGPIPE,
        Sig::QUIT => Signal::SIGQUIT,
        Sig::SEGV => Signal::SIGSEGV,
        Sig::TERM => Signal::SIGTERM,
        Sig::USR1 => Signal::SIGUSR1,
        Sig::Custom(name) => match name.as_str() {
            "USR2" => Signal::SIGUSR2,
            _ => return None,
        },
    })
}

fn sig_of(sig: i32) -> Sig {
    match Signal::try_from(sig) {
        Ok(Signal::SIGABRT) => Sig::ABRT,
        Ok(Signal::SIGALRM) => Sig::ALRM,
        Ok(Signal::SIGFPE) => Sig::FPE,
        Ok(Signal::SIGHUP) => Sig::HUP,
        Ok(Signal::SIGILL) => Sig::ILL,
        Ok(Signal::SIGINT) => Sig::INT,
        Ok(Signal::SIGKILL) => Sig::KILL,
        Ok(Signal::SIGPIPE) => Sig::PIPE,
        Ok(Signal::SIGQUIT) => Sig::QUIT,
        Ok(Signal::SIGSEGV) => Sig::SEGV,
        Ok(Signal::SIGTERM) => Sig::TERM,
        Ok(Signal::SIGUSR1) => Sig::USR1,
        Ok(s) => Sig::Custom(s.as_str().trim_start_matches("SIG").to_owned()),
        Err(_) => Sig::Custom(format!("{sig}")),
    }
}

/// Bytes read from a child's output at once: a full pipe (64 KiB) in one read, which the
/// channel writer sends as packets of the client's maximum size (OpenSSH: 32 KiB), where
/// `tokio::io::copy`'s 8 KiB would make four times as many reads and channel messages.
const OUTPUT_READ: usize = 64 * 1024;

/// Copies `from` to the channel writer `to` until EOF (or an error: a PTY reads as EIO once
/// the last process holding it has gone).
async fn pump_out<R, W>(mut from: R, mut to: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; OUTPUT_READ];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                debug!(error = %e, "session output ended");
                break;
            }
        };
        if let Err(e) = to.write_all(buf.get(..n).unwrap_or_default()).await {
            debug!(error = %e, "session output ended");
            break;
        }
    }
    let _ = to.flush().await;
}

/// Runs `cmd` with pipes: stdin from the channel, stdout and stderr to it.
async fn run_piped(
    ch: &mut Channel<Msg>,
    ctx: &ChannelCtx,
    mut cmd: tokio::process::Command,
) -> io::Result<std::process::ExitStatus> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let _group = Group(child.id().map(|p| Pid::from_raw(p as i32)));
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out = pump_opt(stdout, ch.make_writer());
    let err = pump_opt(stderr, ch.make_writer_ext(Some(1)));
    let mut out = std::pin::pin!(out);
    let mut err = std::pin::pin!(err);
    let (mut out_done, mut err_done) = (false, false);
    let mut status = None;
    loop {
        if status.is_some() && out_done && err_done {
            break;
        }
        tokio::select! {
            msg = ch.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(&data).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Some(ChannelMsg::Eof) => stdin = None,
                Some(ChannelMsg::Signal { signal }) => {
                    if let (Some(pg), Some(sig)) = (pgid, signal_of(&signal)) {
                        let _ = killpg(pg, sig);
                    }
                }
                Some(ChannelMsg::Close) | None => {
                    // The client is gone: the group is killed on return.
                    return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "channel closed"));
                }
                Some(_) => {}
            },
            s = child.wait(), if status.is_none() => status = Some(s?),
            () = &mut out, if !out_done => out_done = true,
            () = &mut err, if !err_done => err_done = true,
        }
    }
    let _ = ctx;
    status.ok_or_else(|| io::Error::other("no exit status"))
}

async fn pump_opt<R, W>(from: Option<R>, to: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if let Some(r) = from {
        pump_out(r, to).await;
    }
}

/// Runs `cmd` on a new PTY (its own session, the PTY its controlling terminal).
async fn run_pty(
    ch: &mut Channel<Msg>,
    _ctx: &ChannelCtx,
    cmd: tokio::process::Command,
    size: Size,
) -> io::Result<std::process::ExitStatus> {
    let (pty, pts) = pty_process::open().map_err(io::Error::other)?;
    pty.resize(pty_process::Size::new(size.rows, size.cols))
        .map_err(io::Error::other)?;
    let mut child = pty_process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn(pts)
        .map_err(io::Error::other)?;
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    let _group = Group(pgid);
    let (reader, mut writer) = pty.into_split();
    let out = pump_out(reader, ch.make_writer());
    let mut out = std::pin::pin!(out);
    let mut out_done = false;
    let mut status = None;
    loop {
        if status.is_some() && out_done {
            break;
        }
        tokio::select! {
            msg = ch.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    let _ = writer.write_all(&data).await;
                }
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    let s = Size::new(row_height, col_width);
                    let _ = writer.resize(pty_process::Size::new(s.rows, s.cols));
                }
                Some(ChannelMsg::Signal { signal }) => {
                    if let (Some(pg), Some(sig)) = (pgid, signal_of(&signal)) {
                        let _ = killpg(pg, sig);
                    }
                }
                // A terminal has no half-close: EOF from the client changes nothing.
                Some(ChannelMsg::Eof) => {}
                Some(ChannelMsg::Close) | None => {
                    return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "channel closed"));
                }
                Some(_) => {}
            },
            s = child.wait(), if status.is_none() => status = Some(s?),
            () = &mut out, if !out_done => out_done = true,
        }
    }
    status.ok_or_else(|| io::Error::other("no exit status"))
}
