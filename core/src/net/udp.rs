//! One shard's UDP socket: readiness from the ring, batched I/O through quinn-udp.
//!
//! Why this split: monoio's `recv_from`/`send_to` cost one ring operation per datagram and
//! cannot carry control messages, so GSO, GRO, ECN and PKTINFO are out of reach through
//! them. quinn-udp does all four and `recvmmsg` batching with plain non-blocking syscalls.
//! So the ring only tells us when the socket is readable or writable (one poll operation),
//! and quinn-udp moves the bytes. `bench/` measures both paths (`udp_path`).
//!
//! The socket is opened with `SO_REUSEPORT` so every shard binds the same address; the
//! kernel spreads flows over the shards and the CID router fixes what it gets wrong.

use crate::config::UdpConfig;
use socket2::{Domain, Protocol, Socket, Type};
use std::cell::RefCell;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

/// Largest UDP payload (IPv4 limit); quinn-udp reports an oversized GSO batch as success,
/// so batches are capped to this many bytes.
pub const MAX_GSO_BYTES: usize = 65_507;

/// Receive slot size: one GRO-coalesced datagram is at most 64 KiB.
const SLOT: usize = 64 * 1024;

/// A received datagram's metadata (one GRO batch: `len` bytes in segments of `stride`).
pub type RecvMeta = quinn_udp::RecvMeta;

/// How many datagrams one transmit (a GSO batch) may carry on a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentLimit {
    max: usize,
}

impl SegmentLimit {
    /// No GSO: one datagram per transmit.
    pub const ONE: SegmentLimit = SegmentLimit { max: 1 };

    /// At most `max` segments per transmit (1 turns GSO off).
    pub fn new(max: usize) -> Self {
        Self { max: max.max(1) }
    }

    /// Segments per transmit for `segment`-byte datagrams, within [`MAX_GSO_BYTES`].
    pub fn for_segment(&self, segment: usize) -> usize {
        if self.max <= 1 || segment == 0 {
            return 1;
        }
        self.max.min(MAX_GSO_BYTES / segment).max(1)
    }
}

/// A bound UDP socket with its quinn-udp state and a ring-pollable twin.
pub struct UdpIo {
    socket: Socket,
    ring: monoio::net::udp::UdpSocket,
    state: quinn_udp::UdpSocketState,
    gso: bool,
    gso_segments: usize,
    ecn: bool,
    /// Bound to one address: the kernel sources from it, so no `IP_PKTINFO` per send.
    fixed_source: bool,
    slots: usize,
    bufs: RefCell<Vec<Box<[u8]>>>,
    meta: RefCell<Vec<RecvMeta>>,
}

/// Creates a non-blocking UDP socket bound to `addr` with `SO_REUSEPORT` (not yet registered
/// with a runtime, so it can be made on one thread and used on another).
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // `[::]` serves IPv4 too, through mapped addresses.
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

impl UdpIo {
    /// Wraps a bound socket; must run on the monoio runtime that will poll it.
    pub fn new(socket: Socket, cfg: &UdpConfig) -> io::Result<Self> {
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        if cfg.recv_buffer > 0 {
            let _ = state.set_recv_buffer_size((&socket).into(), cfg.recv_buffer);
        }
        if cfg.send_buffer > 0 {
            let _ = state.set_send_buffer_size((&socket).into(), cfg.send_buffer);
        }
        if !cfg.gro {
            // quinn-udp turns GRO on where it can; honour the switch.
            let _ = crate::net::sys::set_udp_gro(&socket, false);
        }
        let fixed_source = socket
            .local_addr()?
            .as_socket()
            .is_some_and(|a| !a.ip().is_unspecified());
        let twin = socket.try_clone()?;
        let ring = monoio::net::udp::UdpSocket::from_std(std::net::UdpSocket::from(twin))?;
        let slots = quinn_udp::BATCH_SIZE.max(1);
        // One GRO batch, or without GRO the largest datagram a peer may send
        // (`[transport] max_udp_payload`, up to 64 KiB).
        let slot = SLOT;
        Ok(Self {
            socket,
            ring,
            gso: cfg.gso && state.max_gso_segments() > 1,
            gso_segments: cfg.gso_segments.clamp(1, 64),
            ecn: cfg.ecn,
            fixed_source,
            state,
            slots,
            bufs: RefCell::new(
                (0..slots)
                    .map(|_| vec![0u8; slot].into_boxed_slice())
                    .collect(),
            ),
            meta: RefCell::new(vec![RecvMeta::default(); slots]),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an inet socket"))
    }

    /// Receive slots per batch (`recvmmsg` vector length).
    pub fn batch_slots(&self) -> usize {
        self.slots.min(quinn_udp::BATCH_SIZE)
    }

    /// How many datagrams one transmit may carry for a given segment size.
    pub fn max_segments(&self, segment: usize) -> usize {
        self.segment_limit().for_segment(segment)
    }

    /// This socket's GSO limit, for a state machine that builds transmits for it.
    pub fn segment_limit(&self) -> SegmentLimit {
        SegmentLimit {
            max: if self.gso {
                self.state.max_gso_segments().min(self.gso_segments)
            } else {
                1
            },
        }
    }

    /// Waits until the socket is readable.
    pub async fn readable(&self) -> io::Result<()> {
        self.ring.readable(false).await
    }

    /// Waits until the socket is writable.
    pub async fn writable(&self) -> io::Result<()> {
        self.ring.writable(false).await
    }

    /// Reads one batch without blocking and calls `f(meta, bytes)` for every GRO batch
    /// received (`bytes` holds `meta.len` bytes in segments of `meta.stride`). Returns the
    /// number of batches, or `WouldBlock`.
    pub fn recv_batch(&self, mut f: impl FnMut(&RecvMeta, &[u8])) -> io::Result<usize> {
        let mut bufs = self.bufs.borrow_mut();
        let mut meta = self.meta.borrow_mut();
        let n = {
            // On the stack: no allocation per receive syscall.
            let mut it = bufs.iter_mut();
            let mut slices: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] = std::array::from_fn(|_| {
                IoSliceMut::new(it.next().map(|b| &mut b[..]).unwrap_or(&mut []))
            });
            let len = self.slots.min(slices.len());
            self.state
                .recv((&self.socket).into(), &mut slices[..len], &mut meta[..len])?
        };
        for (meta, buf) in meta.iter().zip(bufs.iter()).take(n) {
            if let Some(bytes) = buf.get(..meta.len) {
                f(meta, bytes);
            }
        }
        Ok(n)
    }

    /// Sends one transmit (possibly a GSO batch). `WouldBlock` means the socket buffer is
    /// full: keep the bytes and wait for [`UdpIo::writable`]. Other errors are logged by
    /// quinn-udp and reported as success, as UDP loss is recovered by QUIC.
    pub fn send(
        &self,
        destination: SocketAddr,
        ecn: Option<quinn_proto::EcnCodepoint>,
        contents: &[u8],
        segment_size: Option<usize>,
        src_ip: Option<std::net::IpAddr>,
    ) -> io::Result<()> {
        let ecn = if self.ecn {
            ecn.and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8))
        } else {
            None
        };
        let t = quinn_udp::Transmit {
            destination,
            ecn,
            contents,
            segment_size: segment_size.filter(|&s| s < contents.len()),
            // A control message the kernel copies and parses on every send for nothing.
            src_ip: if self.fixed_source { None } else { src_ip },
        };
        self.state.send((&self.socket).into(), &t)
    }

    /// Whether GSO is in use on this socket.
    pub fn gso_enabled(&self) -> bool {
        self.gso
    }

    /// Whether the kernel may fragment outgoing datagrams (then path MTU discovery is off).
    pub fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }
}

/// What holds a UDP port that a bind found in use, as far as `/proc` shows.
///
/// A process that exits with sockets in flight on an io_uring instance (a poll waiting for
/// readability) leaves them to the kernel, which releases them a few milliseconds after the
/// process is gone: a restart in that window finds the port "in use" by nobody. Telling that
/// apart from a live owner is what lets `start` wait for the first and fail at once for the
/// second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortHolder {
    /// A live process holds the port: an Alknet server (its port marker, see
    /// [`PortMarker`]) or a process whose descriptors hold a socket bound there.
    Process {
        /// Its process id.
        pid: u32,
        /// Its command name (`/proc/PID/comm`).
        name: String,
    },
    /// The sockets belong to another user, whose processes this one cannot inspect.
    OtherUser {
        /// Their uid.
        uid: u32,
    },
    /// No live process is seen holding the sockets: they are being torn down (or held by a
    /// process of this user that hides its descriptors and is no Alknet server).
    Releasing,
}

impl std::fmt::Display for PortHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortHolder::Process { pid, name } => write!(f, "process {pid} ({name})"),
            PortHolder::OtherUser { uid } => write!(f, "a process of uid {uid}"),
            // Shown only once the release wait is over.
            PortHolder::Releasing => {
                f.write_str("no process this user can inspect, and not released in time")
            }
        }
    }
}

/// A bound Unix socket in the abstract namespace named for the UDP port this server holds
/// and its pid (`@alknet/udp/PORT/PID`, listed in `/proc/net/unix`). It disappears with the
/// process at once (no io_uring holds it), so a starting server that finds the port taken
/// can name a live Alknet server even where that server's descriptors are unreadable (it is
/// not dumpable).
pub struct PortMarker {
    _socket: std::os::unix::net::UnixDatagram,
}

const MARKER_PREFIX: &str = "alknet/udp/";

impl PortMarker {
    /// Claims the marker of `port` for this process; `None` (logged at debug) where the
    /// abstract namespace is unavailable.
    pub fn claim(port: u16) -> Option<Self> {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("{MARKER_PREFIX}{port}/{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?;
        match std::os::unix::net::UnixDatagram::bind_addr(&addr) {
            Ok(socket) => Some(Self { _socket: socket }),
            Err(e) => {
                tracing::debug!(error = %e, port, "cannot claim the port marker");
                None
            }
        }
    }
}

/// The pids named by port markers of `port` in a `/proc/net/unix` table.
fn marker_pids(table: &str, port: u16) -> Vec<u32> {
    let prefix = format!("@{MARKER_PREFIX}{port}/");
    table
        .lines()
        .filter_map(|line| line.split_whitespace().nth(7))
        .filter_map(|path| path.strip_prefix(prefix.as_str()))
        .filter_map(|pid| pid.parse().ok())
        .collect()
}

/// One socket of a `/proc/net/udp{,6}` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcSocket {
    uid: u32,
    inode: u64,
}

/// The sockets of a `/proc/net/udp` or `/proc/net/udp6` table whose local address would
/// make a bind of `addr` fail (same port; the same address, or either is a wildcard).
fn sockets_on(table: &str, addr: SocketAddr) -> Vec<ProcSocket> {
    let ours = addr.ip().to_canonical();
    let mut out = Vec::new();
    for line in table.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(uid), Some(inode)) = (fields.get(1), fields.get(7), fields.get(9))
        else {
            continue;
        };
        let Some((ip, port)) = local.split_once(':') else {
            continue;
        };
        let (Some(ip), Ok(port)) = (parse_proc_ip(ip), u16::from_str_radix(port, 16)) else {
            continue;
        };
        let (Ok(uid), Ok(inode)) = (uid.parse(), inode.parse()) else {
            continue;
        };
        let theirs = ip.to_canonical();
        if port == addr.port()
            && (ours.is_unspecified() || theirs.is_unspecified() || ours == theirs)
        {
            out.push(ProcSocket { uid, inode });
        }
    }
    out
}

/// An address as `/proc/net/udp{,6}` prints it: the raw network-order bytes read as
/// native-endian 32-bit words, each printed as 8 hex digits.
fn parse_proc_ip(hex: &str) -> Option<std::net::IpAddr> {
    let mut bytes = [0u8; 16];
    let words = hex.len() / 8;
    if hex.len() % 8 != 0 || !(words == 1 || words == 4) {
        return None;
    }
    for i in 0..words {
        let word = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        bytes
            .get_mut(i * 4..i * 4 + 4)?
            .copy_from_slice(&word.to_ne_bytes());
    }
    Some(if words == 1 {
        std::net::IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        std::net::IpAddr::from(bytes)
    })
}

fn proc_comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

/// True while `pid` runs (exists and is neither a zombie nor dead).
fn is_live(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) S ...`: the state follows the last `)`.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Finds what holds `addr`'s port after a bind failed with "address in use".
pub fn port_holder(addr: SocketAddr) -> PortHolder {
    if let Ok(table) = std::fs::read_to_string("/proc/net/unix")
        && let Some(pid) = marker_pids(&table, addr.port())
            .into_iter()
            .find(|&p| is_live(p))
    {
        return PortHolder::Process {
            pid,
            name: proc_comm(pid),
        };
    }
    let mut sockets = Vec::new();
    for path in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(table) = std::fs::read_to_string(path) {
            sockets.extend(sockets_on(&table, addr));
        }
    }
    if sockets.is_empty() {
        return PortHolder::Releasing;
    }
    let wanted: Vec<String> = sockets
        .iter()
        .map(|s| format!("socket:[{}]", s.inode))
        .collect();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // Unreadable descriptors (another user, or not dumpable) are skipped.
            let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            let holds = fds.flatten().any(|fd| {
                std::fs::read_link(fd.path())
                    .ok()
                    .and_then(|l| l.to_str().map(|l| wanted.iter().any(|w| w == l)))
                    .unwrap_or(false)
            });
            if holds && is_live(pid) {
                return PortHolder::Process {
                    pid,
                    name: proc_comm(pid),
                };
            }
        }
    }
    let me = crate::net::sys::effective_uid();
    if me != 0
        && let Some(s) = sockets.iter().find(|s| s.uid != me)
    {
        return PortHolder::OtherUser { uid: s.uid };
    }
    PortHolder::Releasing
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  712: 0100007F:B8CF 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 4242 2 0000000000000000 0
  713: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 77 2 0000000000000000 0
  714: 0200007F:B8D0 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 78 2 0000000000000000 0
";
    const UDP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000000000000000000000000000:B8CF 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 900 2 0000000000000000 0
  101: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 901 2 0000000000000000 0
";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn proc_tables_give_the_sockets_a_bind_would_collide_with() {
        // 0100007F:B8CF is 127.0.0.1:47311 on a little-endian machine.
        if cfg!(target_endian = "little") {
            assert_eq!(
                sockets_on(UDP, addr("127.0.0.1:47311")),
                vec![ProcSocket {
                    uid: 1000,
                    inode: 4242
                }]
            );
            // Another loopback address on the same port does not collide; a wildcard does.
            assert!(sockets_on(UDP, addr("127.0.0.2:47311")).is_empty());
            assert_eq!(sockets_on(UDP, addr("0.0.0.0:47311")).len(), 1);
            // A wildcard IPv6 socket collides with every address of its port.
            assert_eq!(
                sockets_on(UDP6, addr("127.0.0.1:47311")),
                vec![ProcSocket { uid: 0, inode: 900 }]
            );
            assert_eq!(
                parse_proc_ip("00000000000000000000000001000000"),
                Some("::1".parse().unwrap_or_else(|e| panic!("{e}")))
            );
        }
        assert!(sockets_on(UDP, addr("127.0.0.1:9")).is_empty());
        assert!(sockets_on("garbage\n1: zz:zz\n", addr("127.0.0.1:9")).is_empty());
        assert_eq!(parse_proc_ip("123"), None);
    }

    #[test]
    fn markers_are_read_from_the_unix_table() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00000000 0002 01 5501 @alknet/udp/4433/812
0000000000000000: 00000002 00000000 00000000 0002 01 5502 @alknet/udp/44330/9
0000000000000000: 00000002 00000000 00000000 0001 01 5503 /run/other.sock
";
        assert_eq!(marker_pids(table, 4433), vec![812]);
        assert!(marker_pids(table, 53).is_empty());
    }

    #[test]
    fn a_live_socket_of_this_process_is_named() {
        let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let a = held.local_addr().unwrap_or_else(|e| panic!("{e}"));
        match port_holder(a) {
            PortHolder::Process { pid, .. } => assert_eq!(pid, std::process::id()),
            other => panic!("the test's own socket was not found: {other:?}"),
        }
        drop(held);
        assert_eq!(port_holder(a), PortHolder::Releasing);
    }

    #[test]
    fn a_marker_names_its_process() {
        let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = held.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
        drop(held);
        let marker = PortMarker::claim(port);
        assert!(marker.is_some(), "abstract unix sockets are available");
        match port_holder(addr(&format!("127.0.0.1:{port}"))) {
            PortHolder::Process { pid, .. } => assert_eq!(pid, std::process::id()),
            other => panic!("the marker was not found: {other:?}"),
        }
        drop(marker);
    }
}
