//! Starting and stopping a server: sockets, worker threads, one shard per worker.
//!
//! The sockets are bound on the calling thread, so "address in use" and permission errors
//! come back from [`start`] before any thread exists. Each worker then builds its own monoio
//! runtime (io_uring, or epoll where io_uring is unavailable), pins itself to its core, and
//! runs its shard until shutdown.

use crate::config::{Config, DriverKind};
use crate::identity::IdentityProvider;
use crate::identity::tls::{NodeKey, TlsError};
use crate::net::udp::{UdpIo, bind_reuseport};
use crate::ops::stats::{ShardStats, StatsSnapshot};
use crate::service::Registry;
use crate::shard::ShardMsg;
use crate::shard::driver::Driver;
use crate::shard::state::{Role, ServerRole, ShardConfig, ShardState, WallClock};
use alknet_proto::Fingerprint;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use thiserror::Error;
use tracing::{error, info, warn};

/// Why a server could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The listen address is taken by another process.
    #[error(
        "{addr} is already in use by another process; stop it or choose another address with --listen"
    )]
    AddrInUse {
        /// The address.
        addr: SocketAddr,
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
    /// A worker could not start.
    #[error("worker {shard}: {message}")]
    Worker {
        /// The worker.
        shard: usize,
        /// What failed.
        message: String,
    },
}

/// A running server.
pub struct ServerHandle {
    memory: Arc<crate::ops::memory::MemoryGauge>,
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

    /// A cheap handle for the control plane (stats, closing a peer's connections).
    pub fn control(&self) -> ControlHandle {
        ControlHandle {
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

    /// Waits for every worker to exit.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
        self.tokio.shutdown();
        self.memory.stop();
    }

    /// The memory gauge: resident bytes, the budget, and whether the process is over it.
    pub fn memory(&self) -> &crate::ops::memory::MemoryGauge {
        &self.memory
    }
}

/// What the control socket needs from a running server.
#[derive(Clone)]
pub struct ControlHandle {
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

    /// The authenticated connections of every shard.
    pub fn sessions(&self) -> Vec<crate::shard::SessionInfo> {
        crate::shard::sessions_of(&self.boards)
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

    let alpns = registry.alpns();
    let boards: Vec<crate::shard::SessionBoard> = (0..workers).map(|_| Arc::default()).collect();
    // One tokio side runtime for the node, started only when a service first uses it.
    let tokio = Arc::new(crate::service::tokio_rt::SideRuntime::new(&config.tokio));
    let node_facts = Arc::new(crate::service::NodeFacts::new(
        node.fingerprint(),
        alpns.clone(),
        boards.clone(),
        registry.peer_store(),
    ));
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
                &node, &codec, i as u8,
            ))
        })
        .collect();

    let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers)
        .map(|_| flume::bounded::<ShardMsg>(4096))
        .unzip();
    // Forwarded datagrams waiting for a shard are bounded like those waiting in its socket.
    let forward_budget = crate::shard::ForwardBudget::new(workers, config.udp.recv_buffer);
    let stats: Vec<Arc<ShardStats>> = (0..workers).map(|_| Arc::default()).collect();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let penalties = Arc::new(std::sync::Mutex::new(
        crate::shard::penalty::PenaltyBox::new(),
    ));

    let mut threads = Vec::with_capacity(workers);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    for (shard, (socket, rx)) in sockets.into_iter().zip(receivers).enumerate() {
        let ctx = WorkerCtx {
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
        let t = std::thread::Builder::new()
            .name(format!("alknet-shard-{shard}"))
            .spawn(move || run_worker(ctx, ready))
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
        memory,
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
/// process already listens there (reuseport would silently share the port with it).
fn bind_group(addr: SocketAddr, workers: usize) -> Result<Vec<socket2::Socket>, ServeError> {
    let map = |source: std::io::Error, addr| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            ServeError::AddrInUse { addr }
        } else {
            ServeError::Bind { addr, source }
        }
    };
    if addr.port() != 0 {
        // A plain bind fails if anyone (reuseport or not) holds the port.
        let probe = std::net::UdpSocket::bind(addr).map_err(|e| map(e, addr))?;
        drop(probe);
    }
    let first = bind_reuseport(addr).map_err(|e| map(e, addr))?;
    let bound = first
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(addr);
    let mut sockets = vec![first];
    for _ in 1..workers {
        sockets.push(bind_reuseport(bound).map_err(|e| map(e, bound))?);
    }
    Ok(sockets)
}

struct WorkerCtx {
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
    penalties: Arc<std::sync::Mutex<crate::shard::penalty::PenaltyBox>>,
    board: crate::shard::SessionBoard,
    node: Arc<crate::service::NodeFacts>,
    tokio: Arc<crate::service::tokio_rt::SideRuntime>,
    pin: Option<usize>,
}

fn run_worker(ctx: WorkerCtx, ready: std::sync::mpsc::Sender<Result<(), String>>) {
    if let Some(cpu) = ctx.pin
        && let Err(e) = monoio::utils::bind_to_cpu_set([cpu])
    {
        warn!(shard = ctx.shard, cpu, error = %e, "cannot pin worker to its core");
    }
    let driver = ctx.config.driver;
    let shard_id = ctx.shard;
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
            .with_tokio(ctx.tokio),
        );
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
                penalties: ctx.penalties,
                board: ctx.board,
            })),
        });
        let driver = Driver::new(state, io, ctx.peers);
        monoio::spawn(driver.clone().run_receiver());
        monoio::spawn(driver.clone().run_inbox(ctx.rx));
        let _ = ready.send(Ok(()));
        driver.run_waker().await;
    });
    if let Err(e) = result {
        error!(shard = shard_id, error = %e, "worker failed");
    }
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
