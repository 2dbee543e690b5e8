//! `quinn-perf-server`: the baseline Alknet is measured against. quinn on tokio serving the
//! same perf protocol with the same TLS and transport settings as `alknet serve`:
//!
//! * the rustls server configuration, QUIC transport limits, Retry token lifetime, incoming
//!   buffers and migration setting come from `alknet_core::net::endpoint::server_config` with the
//!   default `Config` (TLS 1.3 only, ring, an Ed25519 self-signed certificate, client keys
//!   requested and any Ed25519 key accepted; every transport limit as in `alknet serve`);
//! * the endpoint configuration (12-byte connection IDs, stateless reset key) comes from
//!   `alknet_core::net::endpoint::endpoint_config`, so packets have the same size;
//! * Initials without a token get a Retry above the same per-worker handshake cap;
//! * the UDP socket gets the same 4 MiB buffers, and quinn-udp uses GSO and GRO as alknet does;
//! * tokio runs as many worker threads as alknet runs shards;
//! * requests are parsed by the same sans-IO reader (`alknet_perf::request`) and answered from
//!   a static buffer in 64 KiB `Bytes` chunks, as the alknet handler does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use alknet_bench::load::quinn_server;
use alknet_core::config::Config;
use clap::Parser;
use std::net::SocketAddr;

/// Serves the QUIC perf protocol (ALPN `perf`) with quinn, configured like `alknet serve`.
#[derive(Parser, Debug)]
#[command(name = "quinn-perf-server", version)]
struct Args {
    /// UDP address to listen on (loopback for benchmarks).
    #[arg(long, default_value = "127.0.0.1:4434")]
    listen: SocketAddr,
    /// tokio worker threads (match alknet's `workers`).
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config {
        listen: args.listen,
        workers: args.workers.max(1),
        ..Config::default()
    };
    let node = alknet_core::identity::tls::NodeKey::generate();
    let (endpoint_config, server_config) = quinn_server::configs(&config, &node)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let domain = if args.listen.is_ipv6() {
            socket2::Domain::IPV6
        } else {
            socket2::Domain::IPV4
        };
        let sock =
            socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        let _ = sock.set_recv_buffer_size(config.udp.recv_buffer);
        let _ = sock.set_send_buffer_size(config.udp.send_buffer);
        sock.bind(&args.listen.into())?;
        let runtime = quinn::default_runtime().expect("tokio runtime");
        let ep = quinn::Endpoint::new(endpoint_config, Some(server_config), sock.into(), runtime)?;
        println!(
            "quinn-perf-server listening on {} (udp), {} workers",
            ep.local_addr()?,
            config.workers
        );
        println!("fingerprint {}", node.fingerprint());
        println!("alpns perf");
        let cap = config.transport.max_handshakes_per_shard * config.workers;
        quinn_server::serve(ep, cap).await;
        anyhow::Ok(())
    })
}
