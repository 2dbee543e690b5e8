//! Starting and stopping a server: sockets, worker threads, one shard per worker.
//!
//! The sockets are bound on the calling thread, so "address in use" and permission errors
//! come back from [`start`] before any thread exists. Each worker then builds its own monoio
//! runtime (io_uring, or epoll where io_uring is unavailable), pins itself to its core, and
//! runs its shard until shutdown.
//!
//! Restarts: a process that exits with a poll in flight on its io_uring instance leaves its
//! sockets to the kernel, which releases them a few milliseconds after the process is gone.
//! So a worker ends by cancelling its poll and closing its socket before its runtime goes,
//! [`ServerHandle::join`] returns only once the port is free again (bounded), and [`start`]
//! tells a live owner of the port (fails at once, naming it) from sockets being released
//! (waits for them, bounded by [`RELEASE_WAIT`], with a log line).
//!
//! A shard thread that ends other than by shutdown (a panic outside the guarded spawn) is
//! reported on [`ServerHandle::worker_exits`]: the kernel would keep steering clients to
//! its socket, so the binary exits non-zero for its supervisor to restart it.

use crate::config::{Config, DriverKind};
use crate::identity::IdentityProvider;
use crate::identity::tls::{NodeKey, TlsError};
use crate::net::udp::{PortHolder, PortMarker, UdpIo, bind_reuseport, port_holder};
use crate::ops::stats::{ShardStats, StatsSnapshot};
use crate::ops::systemd::Heartbeats;
use crate::service::Registry;
use crate::shard::ShardMsg;
use crate::shard::driver::Driver;
use crate::shard::state::{Role, ServerRole, ShardConfig, ShardState, WallClock};
use alknet_proto::Fingerprint;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;
use tracing::{error, info, warn};

/// Why a server could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The listen address is taken by another process.
    #[error(
        "{addr} is already in use by another process ({holder}); stop it or choose another address with --listen"
    )]
    AddrInUse {
        /// The address.
        addr: SocketAddr,
        /// Who holds it, as far as `/proc` tells.
        holder: PortHolder,
    },
    /// Binding failed for another reason.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS set-up failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A TCP listener a service asked for could not be set up.
    #[error("{0}")]
    Tcp(String),
    /// A worker could not start.
    #[error("worker {shard}: {message}")]
    Worker {
        /// The worker.
        shard: usize,
        /// What failed.
        message: String,
    },
}

/// How long [`start`] waits for the sockets of a process that has exited to be released,
/// and [`ServerHandle::join`] for its own. The kernel takes milliseconds; this bounds a
/// loaded machine. A supervisor's restart delay adds to it (`deploy/alknet.service`).
pub const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Between two bind attempts while old sockets are released.
const RELEASE_POLL: Duration = Duration::from_millis(10);

/// A shard thread that ended without a shutdown.
#[derive(Debug, Clone)]
pub struct WorkerExit {
    /// The shard.
    pub shard: usize,
    /// Why (the panic message).
    pub reason: String,
}

/// A running server.
pub struct ServerHandle {
    marker: Option<PortMarker>,
    exits: flume::Receiver<WorkerExit>,
    #[cfg(debug_assertions)]
    faults: Vec<flume::Sender<Fault>>,
    memory: Arc<crate::ops::memory::MemoryGauge>,
    beats: Arc<Heartbeats>,
    boards: Vec<crate::shard::SessionBoard>,
    senders: Vec<flume::Sender<ShardMsg>>,
    threads: Vec<JoinHandle<()>>,
    stats: Vec<Arc<ShardStats>>,
    local_addr: SocketAddr,
    fingerprint: Fingerprint,
    alpns: Vec<Vec<u8>>,
    tokio: Arc<crate::service::tokio_rt::SideRuntime>,
}

impl ServerHandle {
    /// The bound address (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The node fingerprint the server presents.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The ALPNs offered.
    pub fn alpns(&self) -> &[Vec<u8>] {
        &self.alpns
    }

    /// Number of shards.
    pub fn workers(&self) -> usize {
        self.senders.len()
    }

    /// Counters summed over shards.
    pub fn stats(&self) -> StatsSnapshot {
        self.control().stats()
    }

    /// Shard threads that end without a shutdown (a panic outside a guarded task) are
    /// reported here. Such a shard no longer serves the clients the kernel steers to its
    /// socket: the process should exit non-zero so its supervisor restarts it.
    pub fn worker_exits(&self) -> flume::Receiver<WorkerExit> {
        self.exits.clone()
    }

    /// Each shard's liveness stamp, for the watchdog.
    pub fn heartbeats(&self) -> Arc<Heartbeats> {
        self.beats.clone()
    }

    /// A cheap handle for the control plane (stats, closing a peer's connections).
    pub fn control(&self) -> ControlHandle {
        ControlHandle {
            #[cfg(debug_assertions)]
            faults: self.faults.clone(),
            memory: self.memory.clone(),
            senders: self.senders.clone(),
            stats: self.stats.clone(),
            boards: self.boards.clone(),
        }
    }

    /// Starts the graceful shutdown: refuse new connections, let existing ones finish for
    /// the drain period, then close them.
    pub fn shutdown(&self) {
        for tx in &self.senders {
            let _ = tx.send(ShardMsg::Shutdown);
        }
    }

    /// Waits for every worker to exit, then (bounded by [`RELEASE_WAIT`]) for the kernel to
    /// release the port, so a restart right after finds it free.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
        self.tokio.shutdown();
        self.memory.stop();
        wait_released(self.local_addr);
        drop(self.marker);
    }

    /// The memory gauge: resident bytes, the budget, and whether the process is over it.
    pub fn memory(&self) -> &crate::ops::memory::MemoryGauge {
        &self.memory
    }
}

/// What the control socket needs from a running server.
#[derive(Clone)]
pub struct ControlHandle {
    #[cfg(debug_assertions)]
    faults: Vec<flume::Sender<Fault>>,
    memory: Arc<crate::ops::memory::MemoryGauge>,
    senders: Vec<flume::Sender<ShardMsg>>,
    stats: Vec<Arc<ShardStats>>,
    boards: Vec<crate::shard::SessionBoard>,
}

impl ControlHandle {
    /// Counters summed over shards.
    pub fn stats(&self) -> StatsSnapshot {
        crate::ops::stats::sum(self.stats.iter().map(|s| s.as_ref()))
    }

    /// Resident bytes, budget, and whether the process is over it.
    pub fn memory(&self) -> (u64, u64, bool) {
        (self.memory.rss(), self.memory.budget(), self.memory.over())
    }

    /// Counters of each shard, in shard order.
    pub fn per_shard(&self) -> Vec<StatsSnapshot> {
        self.stats.iter().map(|s| s.snapshot()).collect()
    }

    /// Closes every connection of `peer` on every shard.
    pub fn close_peer(&self, peer: &str) {
        for tx in &self.senders {
            let _ = tx.send(ShardMsg::ClosePeer(peer.to_owned()));
        }
    }

    /// Has every shard check the live sessions of `peer` against its current record and
    /// close those it no longer authorises (after a key or scope was removed).
    pub fn recheck_peer(&self, peer: &str) {
        for tx in &self.senders {
            let _ = tx.send(ShardMsg::Recheck(peer.to_owned()));
        }
    }

    /// Hands every shard a reloaded configuration and the services now off
    /// ([`crate::ops::reload`]).
    pub fn reload_shards(&self, update: crate::shard::LiveUpdate) {
        let update = Arc::new(update);
        for tx in &self.senders {
            let _ = tx.send(ShardMsg::Reload(update.clone()));
        }
    }

    /// The authenticated connections of every shard.
    pub fn sessions(&self) -> Vec<crate::shard::SessionInfo> {
        crate::shard::sessions_of(&self.boards)
    }

    /// Debug builds only: makes shard `shard`'s thread panic outside any guarded task, to
    /// test that the process then exits. Returns false for an unknown shard.
    #[cfg(debug_assertions)]
    pub fn debug_panic_shard(&self, shard: usize) -> bool {
        self.faults
            .get(shard)
            .is_some_and(|tx| tx.try_send(Fault::Panic).is_ok())
    }

    /// Debug builds only: blocks shard `shard`'s thread for `duration`, as a stuck loop
    /// would, to test that the watchdog pings stop. Returns false for an unknown shard.
    #[cfg(debug_assertions)]
    pub fn debug_hang_shard(&self, shard: usize, duration: Duration) -> bool {
        self.faults
            .get(shard)
            .is_some_and(|tx| tx.try_send(Fault::Hang(duration)).is_ok())
    }
}

/// A fault injected into a shard by the debug-only control commands.
#[cfg(debug_assertions)]
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Panic outside any guarded task.
    Panic,
    /// Block the thread for this long.
    Hang(Duration),
}

/// Waits until `addr` can be bound by a plain socket (nothing holds it), at most
/// [`RELEASE_WAIT`].
fn wait_released(addr: SocketAddr) {
    if addr.port() == 0 {
        return;
    }
    let until = Instant::now() + RELEASE_WAIT;
    while std::net::UdpSocket::bind(addr).is_err() {
        if Instant::now() >= until {
            warn!(%addr, "the port is still held after the workers stopped");
            return;
        }
        std::thread::sleep(RELEASE_POLL);
    }
}

static URING_FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

/// Binds the sockets and starts one worker per shard.
pub fn start(
    config: Arc<Config>,
    node: NodeKey,
    registry: Registry,
    identities: Arc<dyn IdentityProvider>,
) -> Result<ServerHandle, ServeError> {
    let workers = config.worker_count();
    let addr = config.listen;
    let sockets = bind_group(addr, workers)?;
    if config.udp.steer_by_cid
        && workers > 1
        && let Some(first) = sockets.first()
        && let Err(e) = crate::net::sys::attach_reuseport_steering(first)
    {
        warn!(error = %e, "cannot attach the CID steering program; misrouted datagrams will be forwarded between shards");
    }
    let local_addr = sockets
        .first()
        .and_then(|s| s.local_addr().ok())
        .and_then(|a| a.as_socket())
        .unwrap_or(addr);

    let mut tcp_groups = crate::net::tcp::bind(local_addr, &node, &registry.tcp_offers(), workers)
        .map_err(ServeError::Tcp)?;
    let alpns = registry.alpns();
    let stats: Vec<Arc<ShardStats>> = (0..workers).map(|_| Arc::default()).collect();
    let boards: Vec<crate::shard::SessionBoard> = (0..workers).map(|_| Arc::default()).collect();
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers)
        .map(|_| flume::bounded::<ShardMsg>(4096))
        .unzip();
    // One tokio side runtime for the node, started only when a service first uses it.
    let tokio = Arc::new(crate::service::tokio_rt::SideRuntime::new(&config.tokio));
    let node_facts = Arc::new(
        crate::service::NodeFacts::new(
            node.fingerprint(),
            alpns.clone(),
            boards.clone(),
            registry.peer_store(),
        )
        .with_invites(registry.invite_store())
        .with_stats(stats.clone())
        .with_shards(senders.clone())
        .with_quic_addr(local_addr),
    );
    let server_config = Arc::new(crate::net::endpoint::server_config(
        &config,
        &node,
        alpns.clone(),
        !registry.any_anonymous(),
    )?);
    let codec = crate::net::endpoint::cid_codec(&node, config.server_id);
    let endpoint_configs: Vec<_> = (0..workers)
        .map(|i| {
            Arc::new(crate::net::endpoint::endpoint_config(
                &node,
                &codec,
                i as u8,
                config.transport.max_udp_payload,
            ))
        })
        .collect();

    // Forwarded datagrams waiting for a shard are bounded like those waiting in its socket.
    let forward_budget = crate::shard::ForwardBudget::new(workers, config.udp.recv_buffer);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let penalties = Arc::new(crate::shard::sources::SharedAdmission::new(
        std::time::Instant::now(),
        config.admission.failures_before_penalty,
    ));

    let marker = PortMarker::claim(local_addr.port());
    let (exit_tx, exits) = flume::bounded::<WorkerExit>(workers);
    #[cfg(debug_assertions)]
    let (faults, mut fault_rxs): (Vec<_>, Vec<_>) =
        (0..workers).map(|_| flume::bounded::<Fault>(1)).unzip();
    let beats = Arc::new(Heartbeats::new(
        workers,
        crate::ops::systemd::beat_interval(),
    ));
    let mut threads = Vec::with_capacity(workers);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    for (shard, (socket, rx)) in sockets.into_iter().zip(receivers).enumerate() {
        let tcp = tcp_groups
            .iter_mut()
            .filter_map(|g| Some((g.addr, g.listeners.pop()?, g.tls.clone())))
            .collect();
        let ctx = WorkerCtx {
            tcp,
            quic_addr: local_addr,
            #[cfg(debug_assertions)]
            fault: fault_rxs.remove(0),
            beats: beats.clone(),
            shard,
            shards: workers,
            socket,
            rx,
            peers: senders.clone(),
            forward_budget: forward_budget.clone(),
            stats: stats[shard].clone(),
            codec: codec.clone(),
            registry: registry.clone(),
            identities: identities.clone(),
            config: config.clone(),
            endpoint_config: endpoint_configs[shard].clone(),
            server_config: server_config.clone(),
            penalties: penalties.clone(),
            board: boards[shard].clone(),
            node: node_facts.clone(),
            tokio: tokio.clone(),
            pin: config.pin_workers.then_some(shard % cores),
        };
        let ready = ready_tx.clone();
        let exit = exit_tx.clone();
        let t = std::thread::Builder::new()
            .name(format!("alknet-shard-{shard}"))
            .spawn(move || run_worker_guarded(ctx, ready, exit))
            .map_err(|e| ServeError::Worker {
                shard,
                message: e.to_string(),
            })?;
        threads.push(t);
    }
    drop(ready_tx);
    for _ in 0..workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                for tx in &senders {
                    let _ = tx.send(ShardMsg::Shutdown);
                }
                return Err(ServeError::Worker { shard: 0, message });
            }
            Err(_) => {
                return Err(ServeError::Worker {
                    shard: 0,
                    message: "worker exited during start-up".into(),
                });
            }
        }
    }
    let memory = crate::ops::memory::start(
        crate::ops::memory::effective_budget(config.memory_budget),
        senders.clone(),
    );
    Ok(ServerHandle {
        marker,
        exits,
        #[cfg(debug_assertions)]
        faults,
        memory,
        beats,
        boards,
        senders,
        threads,
        stats,
        local_addr,
        fingerprint: node.fingerprint(),
        alpns,
        tokio,
    })
}

/// Binds `workers` sockets to one address with `SO_REUSEPORT`, after checking that no other
/// process already listens there (reuseport would silently share the port with it). When the
/// port is held by sockets being released (a process that just exited), waits for them,
/// bounded by [`RELEASE_WAIT`]; a live holder fails at once, named.
fn bind_group(addr: SocketAddr, workers: usize) -> Result<Vec<socket2::Socket>, ServeError> {
    let started = Instant::now();
    let mut logged = false;
    loop {
        match try_bind_group(addr, workers) {
            Ok(sockets) => {
                if logged {
                    info!(%addr, waited_ms = started.elapsed().as_millis() as u64, "the port is free");
                }
                return Ok(sockets);
            }
            Err(source) if source.kind() == std::io::ErrorKind::AddrInUse => {
                let holder = port_holder(addr);
                if holder != PortHolder::Releasing || started.elapsed() >= RELEASE_WAIT {
                    return Err(ServeError::AddrInUse { addr, holder });
                }
                if !logged {
                    logged = true;
                    warn!(%addr, limit = ?RELEASE_WAIT, "the port is held by sockets of a stopped process; waiting for the kernel to release them");
                }
                std::thread::sleep(RELEASE_POLL);
            }
            Err(source) => return Err(ServeError::Bind { addr, source }),
        }
    }
}

fn try_bind_group(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<socket2::Socket>> {
    if addr.port() != 0 {
        // A plain bind fails if anyone (reuseport or not) holds the port.
        drop(std::net::UdpSocket::bind(addr)?);
    }
    let first = bind_reuseport(addr)?;
    let bound = first
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(addr);
    let mut sockets = vec![first];
    for _ in 1..workers {
        sockets.push(bind_reuseport(bound)?);
    }
    Ok(sockets)
}

struct WorkerCtx {
    /// This shard's TCP listeners, with their address and TLS configuration.
    tcp: Vec<(SocketAddr, std::net::TcpListener, Arc<rustls::ServerConfig>)>,
    /// The QUIC socket's address (a TCP offer without an address of its own listens there).
    quic_addr: SocketAddr,
    #[cfg(debug_assertions)]
    fault: flume::Receiver<Fault>,
    beats: Arc<Heartbeats>,
    shard: usize,
    shards: usize,
    socket: socket2::Socket,
    rx: flume::Receiver<ShardMsg>,
    peers: Vec<flume::Sender<ShardMsg>>,
    forward_budget: crate::shard::ForwardBudget,
    stats: Arc<ShardStats>,
    codec: alknet_proto::CidCodec,
    registry: Registry,
    identities: Arc<dyn IdentityProvider>,
    config: Arc<Config>,
    endpoint_config: Arc<quinn_proto::EndpointConfig>,
    server_config: Arc<quinn_proto::ServerConfig>,
    penalties: Arc<crate::shard::sources::SharedAdmission>,
    board: crate::shard::SessionBoard,
    node: Arc<crate::service::NodeFacts>,
    tokio: Arc<crate::service::tokio_rt::SideRuntime>,
    pin: Option<usize>,
}

/// Runs a worker and reports its end on `exit` unless that end is a finished shutdown.
fn run_worker_guarded(
    ctx: WorkerCtx,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    exit: flume::Sender<WorkerExit>,
) {
    let shard = ctx.shard;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_worker(ctx, ready)));
    let reason = match outcome {
        Ok(true) => return,
        Ok(false) => "its runtime failed".to_owned(),
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into()),
    };
    error!(shard, %reason, "a shard thread ended without a shutdown");
    let _ = exit.try_send(WorkerExit { shard, reason });
}

/// Runs one worker; true when it ended by a finished shutdown.
fn run_worker(ctx: WorkerCtx, ready: std::sync::mpsc::Sender<Result<(), String>>) -> bool {
    if let Some(cpu) = ctx.pin
        && let Err(e) = monoio::utils::bind_to_cpu_set([cpu])
    {
        warn!(shard = ctx.shard, cpu, error = %e, "cannot pin worker to its core");
    }
    let driver = ctx.config.driver;
    let shard_id = ctx.shard;
    let finished = std::rc::Rc::new(std::cell::Cell::new(false));
    let done = finished.clone();
    let result = run_on_driver(driver, shard_id, move || async move {
        let shard_no = ctx.shard;
        let io = match UdpIo::new(ctx.socket, &ctx.config.udp) {
            Ok(io) => io,
            Err(e) => {
                let _ = ready.send(Err(format!("udp socket set-up: {e}")));
                return;
            }
        };
        let allow_mtud = !io.may_fragment();
        if shard_no == 0 {
            info!(
                gso = io.gso_enabled(),
                gro = ctx.config.udp.gro,
                ecn = ctx.config.udp.ecn,
                "udp path"
            );
        }
        let endpoint = quinn_proto::Endpoint::new(
            ctx.endpoint_config,
            Some(ctx.server_config.clone()),
            allow_mtud,
            None,
        );
        let router = ctx.registry.instantiate(
            &crate::service::ShardSetup::new(
                shard_no,
                ctx.identities.clone(),
                ctx.node,
                ctx.stats.clone(),
            )
            .with_tokio(ctx.tokio)
            .with_penalties(ctx.penalties.clone()),
        );
        if !ctx.tcp.is_empty() {
            let t = &ctx.config.transport;
            crate::net::tcp::start_shard(
                std::rc::Rc::new(crate::net::tcp::TcpShard {
                    routes: router.tcp_routes(),
                    identities: ctx.identities.clone(),
                    admission: ctx.penalties.clone(),
                    failures: crate::service::AuthFailures::new(
                        ctx.stats.clone(),
                        Some(ctx.penalties.clone()),
                    ),
                    spawner: crate::service::Spawner::new(ctx.stats.clone()),
                    drain: router.drain_signal(),
                    quic_addr: ctx.quic_addr,
                    handshake_timeout: t.handshake_timeout.0,
                    max_connections: t.max_connections_per_shard,
                    anonymous_cap: ctx.config.admission.max_connections_per_anonymous_source,
                    open: std::cell::Cell::new(0),
                }),
                ctx.tcp,
            );
        }
        let state = ShardState::new(ShardConfig {
            id: shard_no,
            shards: ctx.shards,
            endpoint,
            codec: ctx.codec,
            config: ctx.config,
            stats: ctx.stats,
            segments: io.segment_limit(),
            wall: WallClock {
                at: std::time::Instant::now(),
                unix: crate::ops::control::unix_now(),
            },
            forward_budget: ctx.forward_budget,
            role: Role::Server(Box::new(ServerRole {
                server_config: ctx.server_config,
                router,
                identities: ctx.identities,
                admission: ctx.penalties,
                board: ctx.board,
            })),
        });
        let driver = Driver::new(state, io, ctx.peers);
        let (stop, stopped) = flume::bounded::<()>(1);
        let receiver = monoio::spawn({
            let driver = driver.clone();
            async move {
                monoio::select! {
                    _ = driver.run_receiver() => {}
                    _ = stopped.recv_async() => {}
                }
            }
        });
        let inbox = monoio::spawn(driver.clone().run_inbox(ctx.rx));
        #[cfg(debug_assertions)]
        {
            let fault = ctx.fault;
            // Not through the guarded spawn on purpose: this is the panic it cannot catch.
            monoio::spawn(async move {
                while let Ok(f) = fault.recv_async().await {
                    match f {
                        Fault::Panic => {
                            panic!("shard {shard_no} was asked to panic (debug fault injection)")
                        }
                        Fault::Hang(d) => {
                            warn!(
                                shard = shard_no,
                                ?d,
                                "blocking the shard's thread (debug fault injection)"
                            );
                            std::thread::sleep(d);
                        }
                    }
                }
            });
        }
        // The liveness stamp the watchdog reads: it stops when this thread stops turning.
        let beats = ctx.beats;
        monoio::spawn(async move {
            loop {
                beats.beat(shard_no);
                monoio::time::sleep(beats.interval()).await;
            }
        });
        let _ = ready.send(Ok(()));
        driver.clone().run_waker().await;
        release_socket(driver, stop, receiver, inbox).await;
        done.set(true);
    });
    if let Err(e) = result {
        error!(shard = shard_id, error = %e, "worker failed");
    }
    finished.get()
}

/// Ends a drained shard's socket while its runtime still runs: the receiver's poll is
/// cancelled (dropping it queues the cancellation), the inbox finishes, the socket closes,
/// and one turn of the ring submits the cancellation and the close. Left to the runtime's
/// drop, the poll would stay in flight and the kernel would hold the socket until it tears
/// the ring down, after the process is gone.
async fn release_socket(
    driver: std::rc::Rc<Driver>,
    stop: flume::Sender<()>,
    receiver: monoio::task::JoinHandle<()>,
    inbox: monoio::task::JoinHandle<()>,
) {
    drop(stop);
    receiver.await;
    // The inbox ends when the shard has finished (the driver wakes it); bounded anyway.
    monoio::select! {
        _ = inbox => {}
        _ = monoio::time::sleep(Duration::from_millis(100)) => {}
    }
    drop(driver);
    monoio::time::sleep(Duration::from_millis(1)).await;
}

/// Runs a future on a new monoio runtime of the configured kind, on this thread.
pub fn run_on_driver<F, Fut>(driver: DriverKind, shard: usize, f: F) -> std::io::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let uring = match driver {
        DriverKind::Legacy => false,
        DriverKind::IoUring => true,
        DriverKind::Auto => {
            let ok = monoio::utils::detect_uring();
            if !ok && !URING_FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
                warn!(
                    shard,
                    "io_uring is unavailable here; using the epoll driver"
                );
            }
            ok
        }
    };
    if uring {
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(1024)
            .enable_timer()
            .build()?;
        rt.block_on(f());
    } else {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()?;
        rt.block_on(f());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket bound to a port and held only by the kernel (passed over a Unix socket and
    /// never received), as a killed server's io_uring holds its sockets; `release` frees it.
    fn orphan_socket() -> (SocketAddr, impl FnOnce()) {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = udp.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = std::os::unix::net::UnixStream::pair().unwrap_or_else(|e| panic!("{e}"));
        crate::net::sys::send_fd(&tx, &udp).unwrap_or_else(|e| panic!("{e}"));
        drop(udp);
        (addr, move || drop((tx, rx)))
    }

    #[test]
    fn a_port_held_by_no_live_process_reads_as_releasing() {
        let (addr, release) = orphan_socket();
        assert!(std::net::UdpSocket::bind(addr).is_err(), "the port is held");
        assert_eq!(port_holder(addr), PortHolder::Releasing);
        release();
        assert!(std::net::UdpSocket::bind(addr).is_ok(), "released");
    }

    #[test]
    fn binding_waits_for_sockets_being_released_and_names_a_live_holder_at_once() {
        let (addr, release) = orphan_socket();
        let released = std::thread::spawn(move || {
            // Let the bind find the port held first; the assertion below checks it did.
            std::thread::sleep(Duration::from_millis(300));
            release();
        });
        let t = Instant::now();
        let sockets = bind_group(addr, 2).unwrap_or_else(|e| panic!("bind while releasing: {e}"));
        let took = t.elapsed();
        assert_eq!(sockets.len(), 2);
        assert!(
            took >= Duration::from_millis(300) && took < RELEASE_WAIT,
            "bound after {took:?}: must wait for the release, at most {RELEASE_WAIT:?}"
        );
        let _ = released.join();

        // A live holder (this process) fails at once, named.
        let t = Instant::now();
        match bind_group(addr, 1) {
            Err(ServeError::AddrInUse {
                holder: PortHolder::Process { pid, .. },
                ..
            }) => assert_eq!(pid, std::process::id()),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("bound a port this process holds"),
        }
        assert!(
            t.elapsed() < RELEASE_WAIT / 5,
            "a live holder was waited for"
        );
    }
}
