//! `bridge-cost`: server CPU per GB received on a stream read on the shard, against the same
//! stream read by a task on the tokio side runtime through `alknet_core::service::bridge`,
//! in one run. See the "tokio bridge" section of `bench/README.md`.
//!
//! One process: an Alknet server (`alknet_core::start`, one worker pinned to core 0)
//! serving three ALPNs, and a quinn client on a tokio current-thread runtime pinned to
//! `--client-core`. For each ALPN in turn, `--repeat` times, the client sends `--mb` MiB on
//! one bidirectional stream and waits for the server's 8-byte count of what it read:
//!
//! * `shard`: the handler reads `RecvStream::read_chunk` on the shard (the baseline);
//! * `bridge`: `serve_on_tokio`, the tokio task reading with `AsyncRead` into a 64 KiB buffer
//!   (what russh or hyper do);
//! * `bridge-chunk`: the same, reading `BridgedStream::read_chunk` (no copy on the tokio side).
//!
//! Server CPU is the on-CPU time (`/proc/self/task/*/schedstat`) of the server's threads, the
//! shard (`alknet-shard-*`) and the side runtime (`alknet-tokio`), over each transfer; the
//! client's threads are not counted.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use alknet_core::config::{Config, TokioConfig};
use alknet_core::identity::MemoryIdentities;
use alknet_core::service::bridge::serve_on_tokio;
use alknet_core::service::tokio_rt::SideRuntime;
use alknet_core::service::{Handler, NoConfig, Service, ServiceContext, ServiceInfo};
use alknet_core::{AuthContext, Connection, Registry};
use alknet_testkit::{AnyServer, quinn_client_config};
use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use clap::Parser;
use serde_json::json;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SHARD: &[u8] = b"bench/shard";
const BRIDGE: &[u8] = b"bench/bridge";
const BRIDGE_CHUNK: &[u8] = b"bench/bridge-chunk";
const VARIANTS: [(&str, &[u8]); 3] = [
    ("shard", SHARD),
    ("bridge", BRIDGE),
    ("bridge-chunk", BRIDGE_CHUNK),
];

#[derive(Parser, Debug)]
#[command(about = "Server CPU per GB through the tokio bridge versus reading on the shard")]
struct Args {
    /// MiB sent per transfer.
    #[arg(long, default_value_t = 512)]
    mb: u64,
    /// Transfers per variant (interleaved: shard, bridge, bridge-chunk, shard, …).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Bytes each bridged stream buffers per direction (`[tokio] bridge_buffer`).
    #[arg(long, default_value_t = 128 << 10)]
    bridge_buffer: usize,
    /// Core of the client.
    #[arg(long, default_value_t = 1)]
    client_core: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone)]
struct Sink {
    alpn: &'static [u8],
    rt: Arc<SideRuntime>,
}

impl Service for Sink {
    const NAME: &'static str = "sink";
    type Config = NoConfig;
    type Handler = Sink;
    fn info(&self, _: &NoConfig) -> ServiceInfo {
        ServiceInfo {
            alpn: self.alpn,
            scopes: &[],
            anonymous: true,
            uni_streams: false,
        }
    }
    fn build(&self, _ctx: &ServiceContext<'_, NoConfig>) -> Sink {
        self.clone()
    }
}

impl Handler for Sink {
    async fn handle(self: Rc<Self>, conn: Connection, _auth: AuthContext) {
        {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let me = self.clone();
                let c = conn.clone();
                conn.spawn(async move {
                    match me.alpn {
                        SHARD => {
                            let mut n = 0u64;
                            while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX).await {
                                n += chunk.len() as u64;
                            }
                            let _ = send.write_all(&n.to_be_bytes()).await;
                            let _ = send.finish();
                        }
                        alpn => {
                            let chunks = alpn == BRIDGE_CHUNK;
                            let _ =
                                serve_on_tokio(&me.rt, &c, send, recv, move |mut io| async move {
                                    let mut n = 0u64;
                                    if chunks {
                                        while let Ok(Some(c)) = io.read_chunk().await {
                                            n += c.len() as u64;
                                        }
                                    } else {
                                        let mut buf = vec![0u8; 64 << 10];
                                        while let Ok(k) = io.read(&mut buf).await {
                                            if k == 0 {
                                                break;
                                            }
                                            n += k as u64;
                                        }
                                    }
                                    let _ = io.write_all(&n.to_be_bytes()).await;
                                    let _ = io.shutdown().await;
                                })
                                .await;
                        }
                    }
                });
            }
        }
    }
}

/// The server: one pinned shard, the three variants sharing one side runtime.
fn start(args: &Args) -> Result<(alknet_core::ServerHandle, Arc<SideRuntime>)> {
    let rt = Arc::new(SideRuntime::new(&TokioConfig {
        threads: 1,
        bridge_buffer: args.bridge_buffer,
    }));
    let mut registry = Registry::new();
    for (_, alpn) in VARIANTS {
        let rt = rt.clone();
        registry.register(Sink { alpn, rt }, NoConfig::default())?;
    }
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        workers: 1,
        pin_workers: true,
        ..Config::default()
    };
    let server = alknet_core::start(
        Arc::new(config),
        alknet_core::identity::tls::NodeKey::generate(),
        registry,
        Arc::new(MemoryIdentities::with_peers([])),
    )?;
    Ok((server, rt))
}

/// On-CPU nanoseconds of this process's server threads.
fn server_cpu_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .map(|c| c.starts_with("alknet-shard") || c.starts_with("alknet-tokio"))
                .unwrap_or(false)
        })
        .filter_map(|t| {
            let s = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            s.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

async fn transfer(conn: &quinn::Connection, bytes: u64) -> Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let block = Bytes::from(vec![0x3cu8; 1 << 20]);
    let writer = async {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            send.write_chunk(block.slice(..n)).await?;
            left -= n as u64;
        }
        send.finish()?;
        anyhow::Ok(())
    };
    let reader = async { Ok(recv.read_to_end(8).await?) };
    let ((), answer) = tokio::try_join!(writer, reader)?;
    let got = u64::from_be_bytes(
        answer
            .try_into()
            .map_err(|_| anyhow!("the server's answer is not an 8-byte count"))?,
    );
    anyhow::ensure!(got == bytes, "the server read {got} of {bytes} bytes");
    Ok(())
}

#[derive(Default)]
struct Runs {
    cpu_s_per_gb: Vec<f64>,
    gbit_s: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn run(args: &Args, addr: std::net::SocketAddr) -> Result<Vec<Runs>> {
    let mut conns = Vec::new();
    for (_, alpn) in VARIANTS {
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(Duration::from_secs(30).try_into()?));
        let cfg = quinn_client_config(None, alpn, Arc::new(AnyServer::default()), transport)?;
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        let conn = ep.connect_with(cfg, addr, "alknet")?.await?;
        conns.push((ep, conn));
    }
    let bytes = args.mb << 20;
    // Warm-up: connections, windows and congestion control opened on each variant.
    for (_, conn) in &conns {
        transfer(conn, bytes.min(64 << 20)).await?;
    }
    let mut runs: Vec<Runs> = VARIANTS.iter().map(|_| Runs::default()).collect();
    for _ in 0..args.repeat {
        for (i, (_, conn)) in conns.iter().enumerate() {
            let cpu0 = server_cpu_ns();
            let t0 = Instant::now();
            tokio::time::timeout(Duration::from_secs(300), transfer(conn, bytes))
                .await
                .context("transfer timed out")??;
            let wall = t0.elapsed().as_secs_f64();
            let cpu = server_cpu_ns().saturating_sub(cpu0) as f64 / 1e9;
            let gb = bytes as f64 / 1e9;
            if let Some(r) = runs.get_mut(i) {
                r.cpu_s_per_gb.push(cpu / gb);
                r.gbit_s.push(gb * 8.0 / wall);
            }
        }
    }
    for (_, conn) in &conns {
        conn.close(0u32.into(), b"");
    }
    Ok(runs)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (server, rt) = start(&args)?;
    monoio::utils::bind_to_cpu_set([args.client_core])
        .map_err(|e| anyhow!("cannot pin the client to core {}: {e}", args.client_core))?;
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let runs = client.block_on(run(&args, server.local_addr()))?;
    server.shutdown();
    server.join();
    rt.shutdown();

    let base = runs
        .first()
        .map(|r| median(&r.cpu_s_per_gb))
        .unwrap_or(f64::NAN);
    if args.json {
        let rows: Vec<_> = VARIANTS
            .iter()
            .zip(&runs)
            .map(|((name, _), r)| {
                json!({
                    "variant": name,
                    "cpu_s_per_gb": r.cpu_s_per_gb,
                    "median_cpu_s_per_gb": median(&r.cpu_s_per_gb),
                    "ratio_to_shard": median(&r.cpu_s_per_gb) / base,
                    "median_gbit_s": median(&r.gbit_s),
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "mb": args.mb, "repeat": args.repeat, "bridge_buffer": args.bridge_buffer, "variants": rows })
        );
        return Ok(());
    }
    println!(
        "{} MiB per transfer, {} transfers per variant, bridge buffer {} B",
        args.mb, args.repeat, args.bridge_buffer
    );
    println!(
        "{:<14} {:>18} {:>22} {:>10} {:>14}",
        "variant", "server CPU s/GB", "(min–max)", "× shard", "Gbit/s"
    );
    for ((name, _), r) in VARIANTS.iter().zip(&runs) {
        let min = r.cpu_s_per_gb.iter().copied().fold(f64::INFINITY, f64::min);
        let max = r.cpu_s_per_gb.iter().copied().fold(0.0, f64::max);
        println!(
            "{:<14} {:>18.3} {:>22} {:>10.2} {:>14.2}",
            name,
            median(&r.cpu_s_per_gb),
            format!("{min:.3}–{max:.3}"),
            median(&r.cpu_s_per_gb) / base,
            median(&r.gbit_s)
        );
    }
    Ok(())
}
