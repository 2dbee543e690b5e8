//! A UDP relay between one client and one server on loopback that can change the source
//! port it forwards from, so the server sees the client's address change mid-connection
//! exactly as after a NAT rebinding or a move to another network.
//!
//! The client sends to [`UdpRelay::addr`]. The relay forwards each datagram to the server
//! from its current upstream socket and forwards the server's answers on that socket back to
//! the client. [`UdpRelay::switch`] opens a new upstream socket (a new source port) and sends
//! everything after that from it; the old socket keeps forwarding the server's answers for
//! [`OLD_PATH_GRACE`], as a NAT keeps a mapping alive for a while. Every path counts its
//! datagrams and bytes both ways, so a test can assert that the switch happened and that
//! traffic moved to the new path.
//!
//! It does not drop, delay or reorder anything, and it serves one client (the last address
//! the listening socket heard from).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a replaced upstream socket still forwards the server's answers.
pub const OLD_PATH_GRACE: Duration = Duration::from_secs(2);

/// How often blocked reads look at the stop flag and their path's retirement.
const POLL: Duration = Duration::from_millis(50);

/// Socket buffers: a QUIC sender's burst fits without loss while a relay thread waits for
/// its core (the kernel caps this at `net.core.rmem_max`).
const SOCKET_BUFFER: usize = 4 << 20;

/// Large enough for any UDP datagram.
const MAX_DATAGRAM: usize = 65_536;

/// What [`UdpRelay::switch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switched {
    /// The source port the server sees from now on.
    pub new_port: u16,
    /// The replaced path's counters at the switch: its client-to-server counts never grow
    /// after it.
    pub old_at_switch: PathStats,
}

/// Counters of one upstream path, as [`UdpRelay::paths`] returns them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStats {
    /// The source port the server sees for this path.
    pub local_port: u16,
    /// Datagrams forwarded from the client to the server on this path.
    pub to_server_datagrams: u64,
    /// Their bytes.
    pub to_server_bytes: u64,
    /// Datagrams the server sent to this path that the relay forwarded to the client.
    pub from_server_datagrams: u64,
    /// Their bytes.
    pub from_server_bytes: u64,
}

struct Path {
    socket: UdpSocket,
    local_port: u16,
    to_server_datagrams: AtomicU64,
    to_server_bytes: AtomicU64,
    from_server_datagrams: AtomicU64,
    from_server_bytes: AtomicU64,
    /// Set when a newer path replaced this one: its reader stops at this instant.
    retire_at: Mutex<Option<Instant>>,
}

impl Path {
    fn open(server: SocketAddr) -> std::io::Result<Self> {
        let socket = bound_socket()?;
        socket.connect(server)?;
        let local_port = socket.local_addr()?.port();
        Ok(Self {
            socket,
            local_port,
            to_server_datagrams: AtomicU64::new(0),
            to_server_bytes: AtomicU64::new(0),
            from_server_datagrams: AtomicU64::new(0),
            from_server_bytes: AtomicU64::new(0),
            retire_at: Mutex::new(None),
        })
    }

    fn stats(&self) -> PathStats {
        PathStats {
            local_port: self.local_port,
            to_server_datagrams: self.to_server_datagrams.load(Ordering::Relaxed),
            to_server_bytes: self.to_server_bytes.load(Ordering::Relaxed),
            from_server_datagrams: self.from_server_datagrams.load(Ordering::Relaxed),
            from_server_bytes: self.from_server_bytes.load(Ordering::Relaxed),
        }
    }

    fn retired(&self, now: Instant) -> bool {
        lock(&self.retire_at).is_some_and(|at| now >= at)
    }
}

struct Shared {
    listen: UdpSocket,
    server: SocketAddr,
    client: Mutex<Option<SocketAddr>>,
    /// The path client datagrams take now.
    current: RwLock<Arc<Path>>,
    /// Every path opened, oldest first; the last is `current`.
    paths: Mutex<Vec<Arc<Path>>>,
    stop: AtomicBool,
}

/// The relay; its threads stop when it is dropped.
pub struct UdpRelay {
    shared: Arc<Shared>,
    addr: SocketAddr,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl UdpRelay {
    /// A relay on a free loopback port forwarding to `server`.
    pub fn start(server: SocketAddr) -> std::io::Result<Self> {
        let listen = bound_socket()?;
        let addr = listen.local_addr()?;
        let first = Arc::new(Path::open(server)?);
        let shared = Arc::new(Shared {
            listen,
            server,
            client: Mutex::new(None),
            current: RwLock::new(first.clone()),
            paths: Mutex::new(vec![first.clone()]),
            stop: AtomicBool::new(false),
        });
        let relay = Self {
            shared,
            addr,
            threads: Mutex::new(Vec::new()),
        };
        let s = relay.shared.clone();
        relay.spawn(move || client_to_server(&s))?;
        relay.spawn_reader(first)?;
        Ok(relay)
    }

    /// Where the client sends.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Moves the client's traffic to a new upstream socket with a new source port. The old
    /// path keeps forwarding the server's answers for [`OLD_PATH_GRACE`].
    ///
    /// The client datagram being forwarded when this is called goes out first on the old
    /// path; every later one takes the new path, so the old path's count in the returned
    /// [`Switched`] is exactly what it carried from the client.
    pub fn switch(&self) -> std::io::Result<Switched> {
        let path = Arc::new(Path::open(self.shared.server)?);
        let new_port = path.local_port;
        self.spawn_reader(path.clone())?;
        lock(&self.shared.paths).push(path.clone());
        let (old, old_at_switch) = {
            // The forwarding thread holds the read side while it counts and sends.
            let mut current = self
                .shared
                .current
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let stats = current.stats();
            (std::mem::replace(&mut *current, path), stats)
        };
        *lock(&old.retire_at) = Some(Instant::now() + OLD_PATH_GRACE);
        Ok(Switched {
            new_port,
            old_at_switch,
        })
    }

    /// Counters of every path so far, oldest first; the last one is the current path.
    pub fn paths(&self) -> Vec<PathStats> {
        lock(&self.shared.paths).iter().map(|p| p.stats()).collect()
    }

    fn spawn_reader(&self, path: Arc<Path>) -> std::io::Result<()> {
        let s = self.shared.clone();
        self.spawn(move || server_to_client(&s, &path))
    }

    fn spawn(&self, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        let handle = std::thread::Builder::new()
            .name("udp-relay".into())
            .spawn(f)?;
        lock(&self.threads).push(handle);
        Ok(())
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
    }
}

fn client_to_server(s: &Shared) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !s.stop.load(Ordering::Relaxed) {
        let (n, from) = match s.listen.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if is_timeout(&e) => continue,
            Err(_) => continue,
        };
        *lock(&s.client) = Some(from);
        // Held while counting and sending, so a switch never splits the two.
        let path = s.current.read().unwrap_or_else(|p| p.into_inner());
        let Some(data) = buf.get(..n) else { continue };
        // A full send buffer or an unreachable server is loss, which QUIC recovers from.
        path.to_server_datagrams.fetch_add(1, Ordering::Relaxed);
        path.to_server_bytes.fetch_add(n as u64, Ordering::Relaxed);
        if path.socket.send(data).is_err() {
            path.to_server_datagrams.fetch_sub(1, Ordering::Relaxed);
            path.to_server_bytes.fetch_sub(n as u64, Ordering::Relaxed);
        }
    }
}

fn server_to_client(s: &Shared, path: &Path) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !s.stop.load(Ordering::Relaxed) && !path.retired(Instant::now()) {
        let n = match path.socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(_) => continue,
        };
        let Some(client) = *lock(&s.client) else {
            continue;
        };
        let Some(data) = buf.get(..n) else { continue };
        // Counted before it is sent, so a reader that saw the datagram arrive also sees it
        // counted; taken back if the send fails.
        path.from_server_datagrams.fetch_add(1, Ordering::Relaxed);
        path.from_server_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
        if s.listen.send_to(data, client).is_err() {
            path.from_server_datagrams.fetch_sub(1, Ordering::Relaxed);
            path.from_server_bytes
                .fetch_sub(n as u64, Ordering::Relaxed);
        }
    }
}

fn bound_socket() -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    // Best effort: without the larger buffers a burst is lost and QUIC resends it.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(POLL))?;
    Ok(socket)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A loopback echo server on its own thread, answering to whatever address sent.
    fn echo_server() -> (SocketAddr, Arc<AtomicBool>) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(POLL)).unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut seen = Vec::new();
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    if !seen.contains(&from) {
                        seen.push(from);
                    }
                    // Answers carry the sender's port so the client can see the path.
                    let mut out = buf[..n].to_vec();
                    out.extend_from_slice(&from.port().to_be_bytes());
                    let _ = sock.send_to(&out, from);
                }
            }
        });
        (addr, stop)
    }

    fn round_trip(client: &UdpSocket, relay: SocketAddr, msg: &[u8]) -> u16 {
        client.send_to(msg, relay).unwrap();
        let mut buf = [0u8; 2048];
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n - 2], msg);
        u16::from_be_bytes([buf[n - 2], buf[n - 1]])
    }

    #[test]
    fn switch_moves_traffic_to_a_new_source_port() {
        let (server, stop) = echo_server();
        let relay = UdpRelay::start(server).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let first = round_trip(&client, relay.addr(), b"one");
        assert_eq!(round_trip(&client, relay.addr(), b"two"), first);
        let switched = relay.switch().unwrap();
        let new_port = switched.new_port;
        assert_ne!(new_port, first);
        assert_eq!(switched.old_at_switch.to_server_datagrams, 2);
        assert_eq!(round_trip(&client, relay.addr(), b"three"), new_port);
        let paths = relay.paths();
        assert_eq!(paths.len(), 2);
        assert_eq!(paths[0].local_port, first);
        assert_eq!(
            (paths[0].to_server_datagrams, paths[0].from_server_datagrams),
            (2, 2)
        );
        assert_eq!(paths[0].to_server_bytes, 6);
        assert_eq!(
            (paths[1].to_server_datagrams, paths[1].from_server_datagrams),
            (1, 1)
        );
        assert_eq!(paths[1].from_server_bytes, 5 + 2);
        stop.store(true, Ordering::Relaxed);
    }
}
