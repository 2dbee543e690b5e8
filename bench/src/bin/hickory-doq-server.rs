//! The baseline for the DNS-over-QUIC benchmark (`benches/dns.rs`): hickory-dns 0.26
//! (`hickory-server` with `quic-ring`) answering DoQ (RFC 9250, ALPN `doq`) from an in-memory
//! zone on a current-thread tokio runtime, one core like one Alknet shard.
//!
//! The zone is the one the bench gives Alknet: `gw.example.` with `www.gw.example. 300 IN A
//! 192.0.2.10`. hickory refuses a zone without an SOA, so this one has
//! `gw.example. SOA ns.gw.example. hostmaster.gw.example. 1 3600 600 86400 300` as well; a
//! query for `www` answers the A record alone either way. TLS is rustls with ring, TLS 1.3,
//! a self-signed Ed25519 certificate made at start, no client authentication: the same
//! handshake cost as Alknet's.
//!
//! What hickory does not let us change, and the bench therefore reports rather than hides:
//! its DoQ handler serves the streams of one connection one after the other (it awaits each
//! answer before accepting the next stream), and closes a connection after its 100th query
//! (`quic_handler.rs`, "TODO: we should make this configurable").
//!
//! Usage: `hickory-doq-server --listen 127.0.0.1:0`; prints `listening ADDR` once bound.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use anyhow::Context;
use clap::Parser;
use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// The zone both servers answer for, and its one record.
const ZONE: &str = "gw.example.";
const NAME: &str = "www.gw.example.";
const ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const TTL: u32 = 300;
/// How long hickory waits for a handshake, a stream or a request body before it drops the
/// connection (its `timeout` argument). Long enough not to fire under load.
const IDLE: Duration = Duration::from_secs(30);
/// Socket send and receive buffer, bytes.
const BUFFER: usize = 4 << 20;

/// hickory-dns serving DNS over QUIC from memory, for the benchmark.
#[derive(Parser)]
struct Args {
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

fn zone() -> anyhow::Result<Catalog> {
    let origin = Name::from_str(ZONE)?;
    let mut handler = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
    );
    let soa = SOA::new(
        Name::from_str("ns.gw.example.")?,
        Name::from_str("hostmaster.gw.example.")?,
        1,
        3600,
        600,
        86400,
        TTL,
    );
    let serial = 1;
    anyhow::ensure!(
        handler.upsert_mut(
            Record::from_rdata(origin.clone(), 3600, RData::SOA(soa)),
            serial
        ),
        "SOA not inserted"
    );
    anyhow::ensure!(
        handler.upsert_mut(
            Record::from_rdata(Name::from_str(NAME)?, TTL, RData::A(A(ADDR))),
            serial
        ),
        "A record not inserted"
    );
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![Arc::new(handler)]);
    Ok(catalog)
}

/// rustls with ring, TLS 1.3, a fresh self-signed Ed25519 certificate, ALPN `doq`.
fn tls() -> anyhow::Result<rustls::ServerConfig> {
    alknet_bench::baseline_tls(&[b"doq"])
}

/// The UDP socket, with the 4 MiB buffers Alknet gives its own (`[udp]` defaults), so
/// neither server drops a burst the other would have queued.
fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::UdpSocket> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = sock.set_recv_buffer_size(BUFFER);
    let _ = sock.set_send_buffer_size(BUFFER);
    sock.bind(&addr.into())
        .with_context(|| format!("cannot bind {addr}"))?;
    sock.set_nonblocking(true)?;
    Ok(tokio::net::UdpSocket::from_std(sock.into())?)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let catalog = zone()?;
    let tls = Arc::new(tls()?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let socket = bind(args.listen)?;
        let addr = socket.local_addr()?;
        let mut server = Server::new(catalog);
        server.register_quic_listener_and_tls_config(socket, IDLE, tls)?;
        println!("listening {addr}");
        server.block_until_done().await?;
        Ok(())
    })
}
