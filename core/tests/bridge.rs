//! The tokio bridge on a real server (two shards, io_uring, UDP on loopback) with quinn as the
//! client: data through the bridge both ways, close and reset mapped across, a panicking tokio
//! task, cancellation when the connection closes, and back-pressure from a tokio side that
//! does not read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use alknet_core::config::{Config, TokioConfig, TransportConfig};
use alknet_core::identity::MemoryIdentities;
use alknet_core::service::bridge::{ABANDONED, BridgedStream, serve_on_tokio};
use alknet_core::service::tokio_rt::SideRuntime;
use alknet_core::service::{Handler, NoConfig, Service, ServiceContext, ServiceInfo};
use alknet_core::{AuthContext, Connection, Registry};
use alknet_testkit::{AnyServer, quinn_client_config};
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};

/// Echoes the stream (`tokio::io::copy`), then shuts down.
const ECHO: &[u8] = b"bridge/echo";
/// Reads one byte, then panics.
const PANIC: &[u8] = b"bridge/panic";
/// Holds a drop guard and reads nothing until `Hooks::go`; then counts the bytes to the end
/// and answers their number.
const HOLD: &[u8] = b"bridge/hold";
/// Reads to the end and writes until an error, reporting how each ended.
const REPORT: &[u8] = b"bridge/report";
/// Reads one byte, writes a few, and drops the stream without `shutdown()`.
const DROP: &[u8] = b"bridge/drop";

/// What the tokio tasks saw, sent to the test.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    ReadEnd(Result<u64, io::ErrorKind>),
    WriteEnd(io::ErrorKind),
    /// A `HOLD` task started (and holds its guard).
    Held,
    Dropped,
}

struct Hooks {
    events: mpsc::UnboundedSender<Event>,
    go: Notify,
}

struct DropGuard(Arc<Hooks>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        let _ = self.0.events.send(Event::Dropped);
    }
}

#[derive(Clone)]
struct Bridged {
    alpn: &'static [u8],
    rt: Arc<SideRuntime>,
    hooks: Arc<Hooks>,
}

impl Service for Bridged {
    const NAME: &'static str = "bridged";
    type Config = NoConfig;
    type Handler = Bridged;
    fn info(&self, _: &NoConfig) -> ServiceInfo {
        ServiceInfo {
            alpn: self.alpn,
            scopes: &[],
            anonymous: true,
            uni_streams: false,
        }
    }
    fn build(&self, _ctx: &ServiceContext<'_, NoConfig>) -> Bridged {
        self.clone()
    }
}

impl Handler for Bridged {
    async fn handle(self: Rc<Self>, conn: Connection, _auth: AuthContext) {
        {
            while let Ok((send, recv)) = conn.accept_bi().await {
                let me = self.clone();
                let c = conn.clone();
                conn.spawn(async move {
                    let (alpn, hooks) = (me.alpn, me.hooks.clone());
                    let _ = serve_on_tokio(&me.rt, &c, send, recv, move |io| {
                        tokio_side(alpn, io, hooks)
                    })
                    .await;
                });
            }
        }
    }
}

async fn tokio_side(alpn: &'static [u8], io: BridgedStream, hooks: Arc<Hooks>) {
    match alpn {
        ECHO => {
            let (mut r, mut w) = tokio::io::split(io);
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        }
        PANIC => {
            let mut io = io;
            let mut b = [0u8; 1];
            let _ = io.read(&mut b).await;
            panic!("a tokio-side service fails");
        }
        HOLD => {
            let _guard = DropGuard(hooks.clone());
            let _ = hooks.events.send(Event::Held);
            let mut io = io;
            hooks.go.notified().await;
            let mut n = 0u64;
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(k) = io.read(&mut buf).await {
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
            let _ = io.write_all(&n.to_be_bytes()).await;
            let _ = io.shutdown().await;
        }
        REPORT => {
            let (mut r, mut w) = tokio::io::split(io);
            let reader = async {
                let mut n = 0u64;
                let mut buf = vec![0u8; 16 << 10];
                let end = loop {
                    match r.read(&mut buf).await {
                        Ok(0) => break Ok(n),
                        Ok(k) => n += k as u64,
                        Err(e) => break Err(e.kind()),
                    }
                };
                let _ = hooks.events.send(Event::ReadEnd(end));
            };
            let writer = async {
                let chunk = vec![7u8; 16 << 10];
                let kind = loop {
                    if let Err(e) = w.write_all(&chunk).await {
                        break e.kind();
                    }
                };
                let _ = hooks.events.send(Event::WriteEnd(kind));
            };
            tokio::join!(reader, writer);
        }
        DROP => {
            let mut io = io;
            let mut b = [0u8; 1];
            let _ = io.read(&mut b).await;
            let _ = io.write_all(b"partial answer").await;
            drop(io);
        }
        _ => {}
    }
}

/// A two-shard server serving every mode above through one side runtime, shared by the
/// shards through the factory.
fn start(
    rt: &Arc<SideRuntime>,
    transport: TransportConfig,
) -> (
    alknet_core::ServerHandle,
    Arc<Hooks>,
    mpsc::UnboundedReceiver<Event>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let hooks = Arc::new(Hooks {
        events: tx,
        go: Notify::new(),
    });
    let mut registry = Registry::new();
    for alpn in [ECHO, PANIC, HOLD, REPORT, DROP] {
        let (rt, hooks) = (rt.clone(), hooks.clone());
        registry
            .register(Bridged { alpn, rt, hooks }, NoConfig::default())
            .unwrap();
    }
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        pin_workers: false,
        transport,
        ..Config::default()
    };
    let server = alknet_core::start(
        Arc::new(config),
        alknet_core::identity::tls::NodeKey::generate(),
        registry,
        Arc::new(MemoryIdentities::with_peers([])),
    )
    .unwrap();
    (server, hooks, rx)
}

fn side_runtime(bridge_buffer: usize) -> Arc<SideRuntime> {
    Arc::new(SideRuntime::new(&TokioConfig {
        threads: 1,
        bridge_buffer,
    }))
}

async fn connect(
    server: &alknet_core::ServerHandle,
    alpn: &[u8],
) -> (quinn::Endpoint, quinn::Connection) {
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(20).try_into().unwrap()));
    let cfg = quinn_client_config(None, alpn, Arc::new(AnyServer::default()), transport).unwrap();
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = ep
        .connect_with(cfg, server.local_addr(), "alknet")
        .unwrap()
        .await
        .unwrap();
    (ep, conn)
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("no event from the tokio side within 20 s")
        .expect("event channel closed")
}

/// Deterministic bytes that differ at every offset (a shifted or dropped chunk shows).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn echo(conn: &quinn::Connection, data: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let writer = async {
        for piece in data.chunks(50_000) {
            send.write_all(piece).await.unwrap();
        }
        send.finish().unwrap();
    };
    let reader = async { recv.read_to_end(64 << 20).await.unwrap() };
    let ((), back) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("echo through the bridge timed out");
    back
}

#[tokio::test]
async fn echo_through_the_bridge_keeps_every_byte() {
    let rt = side_runtime(128 << 10);
    let (server, _hooks, _rx) = start(&rt, TransportConfig::default());
    assert!(!rt.is_started(), "nothing asked for tokio yet");
    let (_ep, a) = connect(&server, ECHO).await;
    let (_ep2, b) = connect(&server, ECHO).await;
    let big = pattern(6 << 20, 1);
    let small = pattern(1000, 2);
    let (x, y, z, e) = tokio::join!(
        echo(&a, &big),
        echo(&b, &big),
        echo(&a, &small),
        echo(&b, b"")
    );
    assert!(rt.is_started());
    assert_eq!(x.len(), big.len());
    assert!(x == big, "echo on connection a differs");
    assert!(y == big, "echo on connection b differs");
    assert_eq!(z, small);
    assert!(
        e.is_empty(),
        "an empty stream echoes as an empty stream (FIN both ways)"
    );
    a.close(0u32.into(), b"");
    b.close(0u32.into(), b"");
    server.shutdown();
    server.join();
}

#[tokio::test]
async fn fin_reset_and_stop_map_across() {
    let rt = side_runtime(64 << 10);
    let (server, _hooks, mut rx) = start(&rt, TransportConfig::default());
    let (_ep, conn) = connect(&server, REPORT).await;

    // FIN → EOF on the tokio read, after every byte.
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&pattern(300_000, 3)).await.unwrap();
    send.finish().unwrap();
    assert_eq!(next_event(&mut rx).await, Event::ReadEnd(Ok(300_000)));

    // Peer reset → ConnectionReset on the tokio read.
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(b"some bytes, then a reset").await.unwrap();
    send.reset(7u32.into()).unwrap();
    assert_eq!(
        next_event(&mut rx).await,
        Event::ReadEnd(Err(io::ErrorKind::ConnectionReset))
    );

    // Peer stops the stream → BrokenPipe on the tokio write.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"x").await.unwrap();
    recv.stop(9u32.into()).unwrap();
    // The writers of the first two streams are blocked by the client's flow control, so the
    // first writer to end is this stream's.
    assert_eq!(
        next_event(&mut rx).await,
        Event::WriteEnd(io::ErrorKind::BrokenPipe)
    );
    conn.close(0u32.into(), b"");
    server.shutdown();
    server.join();
}

#[tokio::test]
async fn tokio_side_dropped_without_shutdown_resets_the_stream() {
    let rt = side_runtime(64 << 10);
    let (server, _hooks, _rx) = start(&rt, TransportConfig::default());
    let (_ep, conn) = connect(&server, DROP).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"?").await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(20), recv.read_to_end(1 << 20))
        .await
        .expect("no answer");
    match r {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(code.into_inner(), u64::from(ABANDONED));
        }
        other => panic!("expected a reset with code {ABANDONED}, got {other:?}"),
    }
    // The connection lives on.
    assert!(conn.close_reason().is_none());
    server.shutdown();
    server.join();
}

#[tokio::test]
async fn tokio_panic_closes_only_its_connection_with_internal() {
    let rt = side_runtime(64 << 10);
    let (server, _hooks, _rx) = start(&rt, TransportConfig::default());
    let (_ep, bystander) = connect(&server, ECHO).await;
    let (_ep2, conn) = connect(&server, PANIC).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(b"!").await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), conn.closed())
        .await
        .expect("the connection was not closed");
    match err {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(
                c.error_code.into_inner(),
                u64::from(alknet_core::close_code::INTERNAL)
            );
        }
        other => panic!("expected an application close with INTERNAL, got {other}"),
    }
    assert_eq!(rt.panics(), 1);
    // Other connections, and new ones, are served.
    assert_eq!(echo(&bystander, b"still here").await, b"still here");
    let (_ep3, fresh) = connect(&server, ECHO).await;
    assert_eq!(echo(&fresh, b"and new ones").await, b"and new ones");
    server.shutdown();
    server.join();
}

#[tokio::test]
async fn closing_the_connection_cancels_the_tokio_task() {
    let rt = side_runtime(64 << 10);
    let (server, _hooks, mut rx) = start(&rt, TransportConfig::default());
    let (_ep, conn) = connect(&server, HOLD).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(b"held").await.unwrap();
    assert_eq!(next_event(&mut rx).await, Event::Held);
    conn.close(0u32.into(), b"bye");
    assert_eq!(next_event(&mut rx).await, Event::Dropped);
    let cancelled = tokio::time::timeout(Duration::from_secs(10), async {
        while rt.cancelled() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(cancelled.is_ok(), "the cancellation was not counted");
    server.shutdown();
    server.join();
}

#[tokio::test]
async fn tokio_side_that_reads_nothing_stalls_the_peer() {
    const WINDOW: u32 = 64 << 10;
    const BUFFER: usize = 64 << 10;
    let rt = side_runtime(BUFFER);
    let transport = TransportConfig {
        stream_receive_window: WINDOW,
        ..TransportConfig::default()
    };
    let (server, hooks, mut rx) = start(&rt, transport);
    let (_ep, conn) = connect(&server, HOLD).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"first").await.unwrap();
    assert_eq!(next_event(&mut rx).await, Event::Held);
    let mut accepted = 5usize;
    let chunk = vec![0x5au8; 4096];
    // Write until the stream stops taking data: the server holds what it has.
    loop {
        match tokio::time::timeout(Duration::from_secs(2), send.write(&chunk)).await {
            Ok(Ok(n)) => accepted += n,
            Ok(Err(e)) => panic!("write failed: {e}"),
            Err(_) => break,
        }
        assert!(
            accepted <= 16 << 20,
            "16 MiB accepted by a server whose tokio side reads nothing: unbounded"
        );
    }
    let bound = WINDOW as usize + BUFFER;
    eprintln!("accepted before the stall: {accepted} bytes (window + bridge buffer = {bound})");
    assert!(
        accepted >= WINDOW as usize,
        "only {accepted} bytes accepted"
    );
    assert!(
        accepted <= bound + 2 * chunk.len(),
        "{accepted} bytes accepted, more than window + bridge buffer ({bound})"
    );
    // Once the tokio side reads, the rest flows and nothing was lost.
    hooks.go.notify_one();
    let rest = 3 << 20;
    let writer = async {
        send.write_all(&vec![1u8; rest]).await.unwrap();
        send.finish().unwrap();
    };
    let reader = async { recv.read_to_end(8).await.unwrap() };
    let ((), answer) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("the stream did not resume");
    let got = u64::from_be_bytes(answer.try_into().unwrap());
    assert_eq!(got, (accepted + rest) as u64);
    assert_eq!(next_event(&mut rx).await, Event::Dropped);
    server.shutdown();
    server.join();
}
