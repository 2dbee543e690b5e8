//! The client side of `alknet/tunnel`: `alknet forward` (`-L`, `-R`, as with `ssh`) and
//! `alknet socks` (a local SOCKS5 proxy), over one Alknet connection that reconnects by
//! itself ([`link`]). Every forwarded TCP connection is a QUIC stream of its own, so a lost
//! packet stalls only the connection it belongs to.
//!
//! Everything runs on one monoio runtime: the QUIC driver of the connection, the local
//! listeners and every relay.

mod link;
mod relay;
mod remote;
mod socks;
pub mod spec;

use alknet_core::config::DriverKind;
use alknet_core::identity::tls::NodeKey;
use alknet_core::{RecvStream, SendStream};
use alknet_proto::Fingerprint;
use alknet_proto::tunnel::{Host, Request, Target, Verdict};
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures_util::future::{Either, select};
use link::{Link, LinkTarget};
use monoio::net::{TcpListener, TcpStream};
use remote::Remote;
use spec::ForwardSpec;
use std::cell::Cell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Forwarded connections (local and remote together) carried at once; more are closed as
/// they arrive.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long a new local connection waits for the gateway connection (while it reconnects)
/// and for the gateway's verdict.
const OPEN_WAIT: Duration = Duration::from_secs(30);

/// Time to dial a remote forward's destination.
const DIAL_WAIT: Duration = Duration::from_secs(10);

/// `alknet forward`: local and remote port forwards through a gateway's `alknet/tunnel`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("forwards").required(true).multiple(true).args(["local", "remote"])))]
pub struct ForwardArgs {
    /// The gateway: host:port, or the name of a server stored by `alknet join --as NAME`.
    pub server: String,
    /// Listen on BIND:PORT here (default BIND 127.0.0.1; `*` for every address) and carry
    /// each connection to HOST:HOSTPORT as the gateway sees it. Repeatable.
    #[arg(short = 'L', value_name = "[BIND:]PORT:HOST:HOSTPORT")]
    pub local: Vec<String>,
    /// Ask the gateway to listen on BIND:PORT (default BIND 127.0.0.1, its loopback; PORT 0
    /// for any free port) and carry each connection to HOST:HOSTPORT as this machine sees
    /// it. Repeatable.
    #[arg(short = 'R', value_name = "[BIND:]PORT:HOST:HOSTPORT")]
    pub remote: Vec<String>,
    /// Server pinning and the client key.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `alknet socks`: a local SOCKS5 proxy whose connections leave through a gateway.
#[derive(Debug, clap::Args)]
pub struct SocksArgs {
    /// The gateway: host:port, or the name of a server stored by `alknet join --as NAME`.
    pub server: String,
    /// Where the SOCKS5 proxy listens. No authentication is asked: bound anywhere but
    /// loopback, anyone who reaches the address can use the gateway as this client.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:1080")]
    pub listen: SocketAddr,
    /// Server pinning and the client key.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The options every tunnel client takes.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// Expected server key, `ed25519:<64 lowercase hex>` (else the stored server's key, else
    /// the known_servers file, trusting on first use).
    #[arg(long, value_name = "FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// File holding the vault passphrase, when the node key lives in a vault.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

/// Counts forwarded connections against [`MAX_CONNECTIONS`].
pub(crate) struct Active {
    now: Cell<usize>,
}

/// One counted connection; dropping it frees the slot.
pub(crate) struct Slot(Rc<Active>);

impl Active {
    fn new() -> Rc<Self> {
        Rc::new(Self { now: Cell::new(0) })
    }

    fn take(self: &Rc<Self>) -> Option<Slot> {
        if self.now.get() >= MAX_CONNECTIONS {
            return None;
        }
        self.now.set(self.now.get() + 1);
        Some(Slot(self.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.now.set(self.0.now.get().saturating_sub(1));
    }
}

thread_local! {
    /// The guarded spawn of the client's runtime thread.
    static SPAWNER: alknet_core::service::Spawner = alknet_core::service::Spawner::standalone();
}

/// Starts a task on the client's runtime through the guarded spawn: a task that panics
/// (one forwarded connection) is logged and ends alone.
fn spawn<F: std::future::Future<Output = ()> + 'static>(f: F) {
    SPAWNER.with(|s| s.spawn(f));
}

/// The verdict as words for a log line or an error.
fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Connected => "connected".into(),
        Verdict::Listening { port, .. } => format!("listening on port {port}"),
        Verdict::Refused(r) => format!("refused: {r}"),
        Verdict::Failed(f) => format!("failed: {f}"),
    }
}

/// Why a stream to the gateway was not opened.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("no connection to the gateway (reconnecting)")]
    NoLink,
    #[error("{0}")]
    Stream(String),
    #[error("{}", verdict_text(.0))]
    Verdict(Verdict),
}

/// Opens a tunnel stream on the current connection and sends `req`: on CONNECTED, the
/// stream and the bytes read past the verdict.
async fn open_tunnel(
    link: &Link,
    req: Request,
) -> Result<(SendStream, RecvStream, Bytes), OpenError> {
    let open = async {
        let conn = link.current(OPEN_WAIT).await.ok_or(OpenError::NoLink)?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| OpenError::Stream(e.to_string()))?;
        let head = req.encode().map_err(|e| OpenError::Stream(e.to_string()))?;
        send.write_all(&head)
            .await
            .map_err(|e| OpenError::Stream(e.to_string()))?;
        let (v, rest) = relay::read_verdict(&mut recv, OPEN_WAIT)
            .await
            .map_err(|e| OpenError::Stream(e.to_string()))?;
        match v {
            Verdict::Connected => Ok((send, recv, rest)),
            v => Err(OpenError::Verdict(v)),
        }
    };
    monoio::time::timeout(OPEN_WAIT * 2, open)
        .await
        .unwrap_or(Err(OpenError::Stream("timed out".into())))
}

/// The addresses of `t`, names resolved on a thread of their own (resolution blocks).
async fn resolve(t: &Target) -> std::io::Result<Vec<SocketAddr>> {
    match &t.host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, t.port)]),
        Host::Name(n) => {
            let (tx, rx) = flume::bounded(1);
            let q = (n.clone(), t.port);
            std::thread::spawn(move || {
                let _ = tx.send(q.to_socket_addrs().map(|a| a.collect::<Vec<_>>()));
            });
            rx.recv_async()
                .await
                .map_err(|_| std::io::Error::other("name resolution failed"))?
        }
    }
}

/// Connects to `t` (each of its addresses in turn), within [`DIAL_WAIT`].
async fn dial(t: &Target) -> std::io::Result<TcpStream> {
    let addrs = resolve(t).await?;
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address");
    for a in addrs {
        match monoio::time::timeout(DIAL_WAIT, TcpStream::connect_addr(a)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = e,
            Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
        }
    }
    Err(last)
}

/// Binds a listener for `what` on `host:port` (before the runtime: errors come first).
fn bind(host: &Host, port: u16, what: &str) -> Result<std::net::TcpListener> {
    let addrs: Vec<SocketAddr> = match host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        Host::Name(n) => (n.as_str(), port)
            .to_socket_addrs()
            .with_context(|| format!("{what}: cannot resolve {n}"))?
            .collect(),
    };
    let addr = addrs
        .first()
        .ok_or_else(|| anyhow!("{what}: {host} has no address"))?;
    let l = std::net::TcpListener::bind(addr).map_err(|e| {
        anyhow!("{what}: cannot listen on {addr}: {e}; choose another port or address")
    })?;
    l.set_nonblocking(true)?;
    if spec::exposed(host) {
        warn!(
            listen = %addr,
            "{what} listens on a non-loopback address: anyone who can reach it can use the gateway as this client"
        );
    }
    Ok(l)
}

fn parse_pin(f: Option<&str>) -> Result<Option<Fingerprint>> {
    alknet_core::client::parse_pin("--fingerprint", f).map_err(anyhow::Error::msg)
}

/// What one local listener does with its connections.
#[derive(Clone)]
enum Serve {
    Forward(Target),
    Socks,
}

async fn accept_loop(l: TcpListener, serve: Serve, link: Rc<Link>, active: Rc<Active>) {
    loop {
        let (tcp, from) = match l.accept().await {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = active.take() else {
            warn!(%from, "too many forwarded connections; one refused");
            relay::reset(tcp);
            continue;
        };
        let (serve, link) = (serve.clone(), link.clone());
        spawn(async move {
            match serve {
                Serve::Forward(to) => forward_one(tcp, to, &link).await,
                Serve::Socks => socks::serve(tcp, &link).await,
            }
            drop(slot);
        });
    }
}

async fn forward_one(tcp: TcpStream, to: Target, link: &Link) {
    match open_tunnel(link, Request::Connect(to.clone())).await {
        Ok((send, recv, early)) => {
            let r = relay::relay(tcp, send, recv, Bytes::new(), early).await;
            debug!(to = %to, up = r.up, down = r.down, error = r.error.as_deref().unwrap_or(""), "forwarded connection ended");
        }
        Err(e) => {
            warn!(port = to.port, reason = %e, "forwarded connection not carried");
            debug!(to = %to, "forward destination");
            relay::reset(tcp);
        }
    }
}

/// How a client run ended without an error.
pub enum Ended {
    /// Stopped by this signal (the connection was closed first).
    Signal(i32),
}

/// The runtime, the link and the listeners; returns on a fatal error or a stop signal.
fn run_client(
    data_dir: &Path,
    server: String,
    common: &CommonArgs,
    node_key: NodeKey,
    listeners: Vec<(std::net::TcpListener, Serve)>,
    remote: Vec<ForwardSpec>,
    stop: flume::Receiver<i32>,
) -> Result<Ended> {
    let pinned = parse_pin(common.fingerprint.as_deref())?;
    let target = LinkTarget {
        data_dir: data_dir.to_owned(),
        server,
        pinned,
        node_key,
    };
    let mut result: Result<Ended> = Err(anyhow!("the runtime did not run"));
    alknet_core::net::server::run_on_driver(DriverKind::Auto, 0, || async {
        result = async {
            let link = Link::new(target);
            let active = Active::new();
            for (l, serve) in listeners {
                let l = TcpListener::from_std(l).context("cannot register a listener")?;
                spawn(accept_loop(l, serve, link.clone(), active.clone()));
            }
            let remote = Remote::new(remote, active.clone());
            let stopped = async {
                match stop.recv_async().await {
                    Ok(sig) => sig,
                    Err(_) => std::future::pending().await,
                }
            };
            match select(pin!(link.clone().run(remote)), pin!(stopped)).await {
                Either::Left((r, _)) => {
                    r?;
                    bail!("the connection to the gateway ended")
                }
                Either::Right((sig, _)) => {
                    info!(signal = sig, "stopping");
                    link.close(b"client stopped").await;
                    Ok(Ended::Signal(sig))
                }
            }
        }
        .await;
    })
    .context("cannot start the runtime")?;
    result
}

/// Runs `alknet forward`: binds every `-L`, connects, asks for every `-R`, and carries
/// connections until a stop signal or an error that reconnecting cannot mend.
pub fn run_forward(
    args: ForwardArgs,
    data_dir: &Path,
    node_key: NodeKey,
    stop: flume::Receiver<i32>,
) -> Result<Ended> {
    let mut listeners = Vec::new();
    let mut locals = Vec::new();
    for text in &args.local {
        let s = spec::parse_forward(text, true).map_err(|e| anyhow!("-L {text:?}: {e}"))?;
        let l = bind(&s.listen.host, s.listen.port, &format!("-L {text}"))?;
        locals.push((s.clone(), l.local_addr()?));
        listeners.push((l, Serve::Forward(s.to)));
    }
    let mut remote = Vec::new();
    for text in &args.remote {
        remote.push(spec::parse_forward(text, true).map_err(|e| anyhow!("-R {text:?}: {e}"))?);
    }
    for (s, addr) in &locals {
        info!(listen = %addr, to = %s.to, "local forward listening");
    }
    run_client(
        data_dir,
        args.server,
        &args.common,
        node_key,
        listeners,
        remote,
        stop,
    )
}

/// Runs `alknet socks`.
pub fn run_socks(
    args: SocksArgs,
    data_dir: &Path,
    node_key: NodeKey,
    stop: flume::Receiver<i32>,
) -> Result<Ended> {
    let l = bind(
        &Host::Ip(args.listen.ip()),
        args.listen.port(),
        "the SOCKS proxy",
    )?;
    info!(listen = %l.local_addr()?, "SOCKS5 proxy listening");
    run_client(
        data_dir,
        args.server,
        &args.common,
        node_key,
        vec![(l, Serve::Socks)],
        Vec::new(),
        stop,
    )
}
