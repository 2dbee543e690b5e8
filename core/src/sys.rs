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
    fn gro_toggles_on_udp_socket() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        assert!(set_udp_gro(&s, true).is_ok());
        assert!(set_udp_gro(&s, false).is_ok());
        // A closed descriptor number fails instead of touching anything.
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        assert!(set_udp_gro(&t, true).is_err());
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
