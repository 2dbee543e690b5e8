//! Criterion suite for the core paths (`cargo bench -p alknet-bench --bench core`):
//!
//! * `cid`: connection-ID encode and decode, and `route_datagram` on short- and long-header
//!   packets, as every received datagram goes through it;
//! * `identity`: `MemoryIdentities::by_fingerprint` over 100 000 peers (hit and miss), as
//!   every handshake does;
//! * `stream`: one perf request end to end on loopback through the handler API (alknet, one
//!   shard, real TLS and crypto) and, in the same run, through quinn on tokio with the same
//!   settings: 64 B round trips and 1 MiB downloads. Ratios between the two groups are the
//!   figure to read; absolute times include the client.
//!
//! Packet handling through one shard's endpoint without sockets is `benches/endpoint.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use alknet_bench::load::quinn_server;
use alknet_bench::load::tls::{AnyServer, ClientKey, client_config};
use alknet_core::config::Config;
use alknet_core::identity::MemoryIdentities;
use alknet_core::{IdentityProvider, PeerEntry, Registry};
use alknet_proto::{CID_LEN, CidCodec, Fingerprint, route_datagram};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

fn cid(c: &mut Criterion) {
    let codec = CidCodec::new(*b"0123456789abcdef", 7);
    let mut g = c.benchmark_group("cid");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| {
        let mut n = 0u8;
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(codec.encode(black_box(3), [n, 1, 2, 3, 4, 5]))
        })
    });
    let cid = codec.encode(3, [9, 8, 7, 6, 5, 4]);
    g.bench_function("decode", |b| {
        b.iter(|| black_box(codec.decode(black_box(&cid))))
    });
    let mut short = vec![0x40u8];
    short.extend_from_slice(&cid);
    short.resize(1200, 0xaa);
    g.bench_function("route_short_header", |b| {
        b.iter(|| black_box(route_datagram(&codec, black_box(&short), 0, 4)))
    });
    // A client's first Initial: a random 8-byte DCID, hashed to a shard.
    let mut long = vec![0xc0u8, 0, 0, 0, 1, 8];
    long.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    long.resize(1200, 0);
    g.bench_function("route_initial", |b| {
        b.iter(|| black_box(route_datagram(&codec, black_box(&long), 0, 4)))
    });
    assert_eq!(cid.len(), CID_LEN);
    g.finish();
}

fn identity(c: &mut Criterion) {
    let n = 100_000u32;
    let key = |i: u32| {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_le_bytes());
        k[31] = 1;
        Fingerprint::from_key(k)
    };
    let peer = |i: u32| PeerEntry {
        peer_id: format!("peer-{i}"),
        fingerprints: vec![key(i)],
        auth_token_hash: None,
        scopes: vec!["perf".into()],
        resources: vec![],
        display_name: None,
        ssh_keys: Vec::new(),
        enabled: true,
    };
    let ids = MemoryIdentities::with_peers((0..n).map(peer));
    // The default store: 100 000 peers committed to a real redb file, read at handshake
    // time from its in-memory index.
    let dir = tempfile::tempdir().unwrap();
    let store =
        alknet_core::identity::store::RedbStore::open(&dir.path().join("identity.redb")).unwrap();
    store
        .apply(
            (0..n)
                .map(|i| alknet_core::identity::store::Mutation::PutPeer(peer(i)))
                .collect(),
        )
        .unwrap();
    let mut g = c.benchmark_group("identity");
    g.throughput(Throughput::Elements(1));
    let hit = key(n / 2);
    g.bench_function("by_fingerprint_hit_100k", |b| {
        b.iter(|| black_box(ids.by_fingerprint(black_box(&hit))))
    });
    let miss = key(n + 7);
    g.bench_function("by_fingerprint_miss_100k", |b| {
        b.iter(|| black_box(ids.by_fingerprint(black_box(&miss))))
    });
    g.bench_function("redb_store_by_fingerprint_hit_100k", |b| {
        b.iter(|| black_box(store.by_fingerprint(black_box(&hit))))
    });
    g.bench_function("redb_store_by_fingerprint_miss_100k", |b| {
        b.iter(|| black_box(store.by_fingerprint(black_box(&miss))))
    });
    g.finish();
}

async fn perf_request(conn: &quinn::Connection, want: u64, body: &[u8]) -> u64 {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&want.to_be_bytes()).await.unwrap();
    send.write_all(body).await.unwrap();
    send.finish().unwrap();
    let mut got = 0;
    while let Some(c) = recv.read_chunk(usize::MAX, true).await.unwrap() {
        got += c.bytes.len() as u64;
    }
    assert_eq!(got, want);
    got
}

fn stream(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        pin_workers: false,
        ..Config::default()
    };
    // alknet, in-process, one shard.
    let mut registry = Registry::new();
    registry
        .register(
            alknet_perf::Perf,
            alknet_perf::PerfConfig { anonymous: true },
        )
        .unwrap();
    let alknet = alknet_core::start(
        Arc::new(config.clone()),
        alknet_core::identity::tls::NodeKey::generate(),
        registry,
        Arc::new(MemoryIdentities::new()),
    )
    .unwrap();
    // quinn with the same settings, on a runtime thread of its own (as alknet's shard is), so
    // neither server shares a thread with the client.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let quinn_addr: SocketAddr = server_rt.block_on(async {
        let node = alknet_core::identity::tls::NodeKey::generate();
        let (ec, sc) = quinn_server::configs(&config, &node).unwrap();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let ep =
            quinn::Endpoint::new(ec, Some(sc), sock, quinn::default_runtime().unwrap()).unwrap();
        let addr = ep.local_addr().unwrap();
        tokio::spawn(quinn_server::serve(ep, 256));
        addr
    });
    let key = ClientKey::generate().unwrap();
    let cc = client_config(Some(&key), b"perf", Arc::new(AnyServer::default()), None).unwrap();
    let client = rt.block_on(async {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(cc);
        ep
    });
    for (name, addr) in [("alknet", alknet.local_addr()), ("quinn", quinn_addr)] {
        let conn = rt.block_on(async { client.connect(addr, "alknet").unwrap().await.unwrap() });
        let mut g = c.benchmark_group(format!("stream/{name}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("request", "64B_64B"), |b| {
            b.iter(|| rt.block_on(perf_request(&conn, 64, &[7u8; 64])))
        });
        g.throughput(Throughput::Bytes(1 << 20));
        g.sample_size(20);
        g.bench_function(BenchmarkId::new("download", "1MiB"), |b| {
            b.iter(|| rt.block_on(perf_request(&conn, 1 << 20, &[])))
        });
        g.finish();
        conn.close(0u32.into(), b"");
    }
    alknet.shutdown();
    alknet.join();
    server_rt.shutdown_background();
}

criterion_group!(benches, cid, identity, stream);
criterion_main!(benches);
