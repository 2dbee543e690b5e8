//! The SSH service's russh server on plain TCP (no QUIC, no tokio bridge), for the SSH
//! bench's bridge-cost variant: `ssh-tcp-server ROOT [THREADS]` listens on a free loopback
//! port, prints `ADDR KEY` (the address, then the host key's public line) and serves until
//! killed.

use std::io::Write;
use std::path::PathBuf;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let Some(root) = args.next().map(PathBuf::from) else {
        eprintln!("usage: ssh-tcp-server ROOT [THREADS]");
        std::process::exit(2);
    };
    let threads = args
        .next()
        .and_then(|t| t.to_str().and_then(|t| t.parse().ok()))
        .unwrap_or(1);
    let result = std::net::TcpListener::bind("127.0.0.1:0").and_then(|listener| {
        let addr = listener.local_addr()?;
        alknet_ssh::bench::serve_tcp(listener, &root, "bench", threads, |key| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{addr} {key}");
            let _ = out.flush();
        })
    });
    if let Err(e) = result {
        eprintln!("ssh-tcp-server: {e}");
        std::process::exit(1);
    }
}
