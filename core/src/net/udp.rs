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
        let gro = cfg.gro && state.gro_segments() > 1;
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
        let slot = if gro { SLOT } else { 2048 };
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
