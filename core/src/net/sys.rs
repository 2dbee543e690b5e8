//! The only module of alknet-core allowed to use `unsafe`: socket options and process
//! settings that neither std, socket2 nor quinn-udp expose.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

/// Turns UDP generic receive offload on or off on a socket.
pub fn set_udp_gro(socket: &impl AsRawFd, on: bool) -> io::Result<()> {
    let val: libc::c_int = i32::from(on);
    // SAFETY: `socket` is an open socket for the duration of the call; the option value is a
    // plain int on the stack whose size we pass.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Grows the pipe `fd` to hold `bytes` (Linux's `F_SETPIPE_SZ`; an unprivileged process
/// gets up to `/proc/sys/fs/pipe-max-size`, 1 MiB by default). Returns the size the kernel
/// set; fails with `EBADF` on anything that is not a pipe. A bigger pipe lets a writer hand
/// over a whole batch in one write and its reader take it in one read, instead of the two
/// taking turns through 64 KiB.
pub fn set_pipe_size(fd: std::os::fd::BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: fcntl(F_SETPIPE_SZ) takes an int and touches no memory of ours; `fd` is a
    // borrowed, open descriptor for the duration of the call.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// Makes closing the TCP socket `fd` send a reset (`SO_LINGER` with a zero timeout) instead of
/// a FIN: how a relay passes on a connection reset from the other side. The caller keeps the
/// socket open for the duration of the call.
pub fn set_linger_zero(fd: std::os::fd::RawFd) -> io::Result<()> {
    let val = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from a `linger` on the stack; a
    // stale descriptor only makes the call fail with EBADF or ENOTSOCK.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&val as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic value; libc exports it for Android only).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

const fn insn(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The classic BPF program that makes the kernel steer each datagram of a reuseport group
/// to the socket of the shard named in its destination connection ID.
///
/// The program sees the UDP payload (the kernel pulls the UDP header first). For a short
/// header it reads the CID at offset 1, for a long header the DCID length at 5 and the CID at
/// 6; when the CID starts with Alknet's first octet, it returns the shard byte as the socket
/// index. Anything else returns an index past the group, and the kernel falls back to its
/// usual 4-tuple hash (first Initials, other protocols). Reads past the end of a datagram
/// return 0: short garbage lands on shard 0, which drops it.
pub fn reuseport_steering_program() -> [libc::sock_filter; 13] {
    use libc::{BPF_A, BPF_ABS, BPF_B, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET};
    let first = u32::from(alknet_proto::cid::FIRST_OCTET);
    let shard = alknet_proto::cid::SHARD_OFFSET as u32;
    let ldb = BPF_LD | BPF_B | BPF_ABS;
    [
        insn(ldb, 0, 0, 0),                           // 0: A = byte 0
        insn(BPF_JMP | BPF_JSET | BPF_K, 4, 0, 0x80), // 1: long header? -> 6
        insn(ldb, 0, 0, 1),                           // 2: A = CID byte 0
        insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 8, first), // 3: not ours -> 12
        insn(ldb, 0, 0, 1 + shard),                   // 4: A = shard
        insn(BPF_RET | BPF_A, 0, 0, 0),               // 5: socket = shard
        insn(ldb, 0, 0, 5),                           // 6: A = DCID length
        insn(
            BPF_JMP | BPF_JEQ | BPF_K,
            0,
            4,
            alknet_proto::CID_LEN as u32,
        ), // 7: -> 12
        insn(ldb, 0, 0, 6),                           // 8: A = DCID byte 0
        insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 2, first), // 9: not ours -> 12
        insn(ldb, 0, 0, 6 + shard),                   // 10: A = shard
        insn(BPF_RET | BPF_A, 0, 0, 0),               // 11: socket = shard
        insn(BPF_RET | BPF_K, 0, 0, u32::MAX),        // 12: kernel's own choice
    ]
}

/// Attaches [`reuseport_steering_program`] to the reuseport group of `socket`. Sockets must
/// have joined the group in shard order (socket index = shard).
pub fn attach_reuseport_steering(socket: &impl AsRawFd) -> io::Result<()> {
    let mut program = reuseport_steering_program();
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points to `program`, which outlives the call; the kernel copies the
    // instructions during setsockopt and keeps no pointer to them.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Keeps secrets out of core dumps and other processes: no core files, no ptrace attach by
/// non-root users (`PR_SET_DUMPABLE` 0).
pub fn harden_process() -> io::Result<()> {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads a valid rlimit struct from the stack.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: PR_SET_DUMPABLE takes an integer argument; the unused arguments are zero.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// True when `PR_SET_DUMPABLE` is off for this process.
pub fn is_dumpable() -> bool {
    // SAFETY: PR_GET_DUMPABLE takes no argument and returns an int.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) > 0 }
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no argument, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

/// The credentials of the process at the other end of a connected Unix stream socket
/// (`SO_PEERCRED`: the peer's pid and effective uid when it connected).
pub fn peer_credentials(socket: &impl AsRawFd) -> io::Result<PeerCredentials> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `socket` is an open descriptor for the duration of the call; `cred` is a
    // writable ucred on the stack and `len` holds its size, which the kernel does not exceed.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::other("short SO_PEERCRED answer"));
    }
    Ok(PeerCredentials {
        pid: u32::try_from(cred.pid).unwrap_or(0),
        uid: cred.uid,
    })
}

/// Who is at the other end of a Unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Process id (0 when the kernel could not name it, e.g. another pid namespace).
    pub pid: u32,
    /// Effective user id.
    pub uid: u32,
}

/// Test support: passes a copy of `fd` over a connected Unix socket (`SCM_RIGHTS`) and
/// leaves it unread, so the kernel holds a reference to the file that no process's
/// descriptor table shows: the state of a socket an exited process's io_uring still holds.
/// Makes the child `cmd` spawns run as `uid`/`gid` with exactly `groups` as its
/// supplementary groups (what `initgroups` would set), switched just before `exec`.
///
/// std's `CommandExt::uid`/`gid` cannot set supplementary groups (and, when given a uid,
/// clear them), so the whole switch happens here, in order: `setgroups`, `setgid`, `setuid`
/// (groups and gid while still privileged). Leave the command's own `uid`/`gid` unset.
pub fn switch_user_in_child(cmd: &mut std::process::Command, uid: u32, gid: u32, groups: Vec<u32>) {
    use std::os::unix::process::CommandExt;
    let groups: Vec<libc::gid_t> = groups;
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: it makes three raw syscalls and, on failure, reads errno
    // (`last_os_error` allocates nothing). The group list was allocated here, before the
    // fork, and is only read in the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
pub(crate) fn send_fd(via: &impl AsRawFd, fd: &impl AsRawFd) -> io::Result<()> {
    let raw: libc::c_int = fd.as_raw_fd();
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    if space > std::mem::size_of_val(&control) {
        return Err(io::Error::other("control buffer too small"));
    }
    // SAFETY: a zeroed msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points to `control`, which has room for one cmsghdr carrying one int
    // (checked above), so CMSG_FIRSTHDR is non-null and CMSG_DATA points inside `control`;
    // sendmsg reads `iov` and `control`, both alive for the call.
    let rc = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(io::Error::other("no room for the control message"));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), raw);
        libc::sendmsg(via.as_raw_fd(), &msg, 0)
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Copies `src` into the start of a monoio buffer and marks that many bytes initialised;
/// returns the number of bytes copied (at most the buffer's capacity).
pub fn copy_into_iobuf<T: monoio::buf::IoBufMut>(buf: &mut T, src: &[u8]) -> usize {
    let n = src.len().min(buf.bytes_total());
    // SAFETY: `write_ptr` points to a buffer of `bytes_total()` writable bytes owned by `buf`,
    // we write `n <= bytes_total()` bytes from `src`, which cannot overlap a uniquely borrowed
    // buffer, and only then declare those `n` bytes initialised.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), buf.write_ptr(), n);
        buf.set_init(n);
    }
    n
}

/// The initialised bytes of a monoio buffer.
pub fn iobuf_slice<T: monoio::buf::IoBuf>(buf: &T) -> &[u8] {
    // SAFETY: an `IoBuf` guarantees `read_ptr` points to `bytes_init()` initialised bytes that
    // stay valid and unmodified while the buffer is borrowed.
    unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_grow_and_other_files_are_left_alone() {
        use std::os::fd::AsFd;
        let (rd, wr) = std::io::pipe().unwrap();
        let got = set_pipe_size(wr.as_fd(), 1 << 20).unwrap();
        assert!(got >= 1 << 20, "{got}");
        assert_eq!(set_pipe_size(rd.as_fd(), 1 << 20).unwrap(), got, "one pipe");
        let file = tempfile::tempfile().unwrap();
        assert!(set_pipe_size(file.as_fd(), 1 << 20).is_err());
    }

    #[test]
    fn gro_toggles_on_udp_socket() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        assert!(set_udp_gro(&s, true).is_ok());
        assert!(set_udp_gro(&s, false).is_ok());
        // A closed descriptor number fails instead of touching anything.
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        assert!(set_udp_gro(&t, true).is_err());
    }

    #[test]
    fn steering_program_attaches_to_a_reuseport_group() {
        let a = crate::net::udp::bind_reuseport(
            "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(attach_reuseport_steering(&a).is_ok());
        // A plain socket has no group to steer.
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        assert!(attach_reuseport_steering(&plain).is_err());
    }

    #[test]
    fn peer_credentials_name_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap_or_else(|e| panic!("{e}"));
        let cred = peer_credentials(&a).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cred.uid, effective_uid());
        assert_eq!(cred.pid, std::process::id());
    }

    #[test]
    fn copy_into_iobuf_respects_capacity() {
        let mut v: Vec<u8> = Vec::with_capacity(4);
        assert_eq!(copy_into_iobuf(&mut v, b"abcdef"), 4);
        assert_eq!(v, b"abcd");
        let mut v: Vec<u8> = Vec::with_capacity(16);
        assert_eq!(copy_into_iobuf(&mut v, b"xy"), 2);
        assert_eq!(v, b"xy");
    }
}
