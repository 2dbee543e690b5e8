//! The `poll_*` API of connections and streams, as a poll-based library (an h3 adapter)
//! would use it: a real server (`alknet_core::start` on loopback) whose test service is
//! written only with `poll_*` methods driven by `std::future::poll_fn`, and quinn as an
//! independent client.
//!
//! The service reads a one-byte command at the start of each bidirectional stream:
//! `E` echoes the rest of the stream, `P` probes the waker storage and cancelled reads and
//! answers with a report (`ok` or what failed), `O` opens a unidirectional stream to the
//! client, `X` resets the stream with a code beyond 32 bits. Datagrams are echoed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use alknet_core::config::Config;
use alknet_core::identity::MemoryIdentities;
use alknet_core::service::{Handler, NoConfig, Service, ServiceContext, ServiceInfo};
use alknet_core::{AuthContext, Connection, PeerEntry, RecvStream, Registry, SendStream, VarInt};
use alknet_testkit::{AnyServer, ClientKey, quinn_client_config};
use bytes::Bytes;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

const ALPN: &[u8] = b"alknet/streams-test";

/// Bounds every wait of the client on the server.
const WAIT: Duration = Duration::from_secs(30);

/// An HTTP/3-style reserved error code, beyond 32 bits.
fn big_code() -> VarInt {
    VarInt::from_u64(0x21 + 0x1f * (1 << 40)).unwrap()
}

/// Repeated polls in the waker probes.
const POLLS: usize = 1000;

/// The one place the test server is built: a registry holding [`PollService`], a peer
/// table knowing `known`, one shard on 127.0.0.1:0.
fn start_server(known: &ClientKey) -> alknet_core::ServerHandle {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        pin_workers: false,
        ..Config::default()
    };
    let mut registry = Registry::new();
    registry.register(PollService, NoConfig::default()).unwrap();
    let ids = MemoryIdentities::with_peers([PeerEntry {
        peer_id: "tester".into(),
        fingerprints: vec![known.fingerprint.parse().unwrap()],
        auth_token_hash: None,
        scopes: vec![],
        resources: vec![],
        display_name: None,
        ssh_keys: Vec::new(),
        enabled: true,
    }]);
    alknet_core::start(
        Arc::new(config),
        alknet_core::identity::tls::NodeKey::generate(),
        registry,
        Arc::new(ids),
    )
    .unwrap()
}

struct PollService;

impl Service for PollService {
    const NAME: &'static str = "poll";
    type Config = NoConfig;
    type Handler = PollService;
    fn info(&self, _: &NoConfig) -> ServiceInfo {
        ServiceInfo {
            alpn: ALPN,
            scopes: &[],
            anonymous: false,
            uni_streams: false,
        }
    }
    fn build(&self, _ctx: &ServiceContext<'_, NoConfig>) -> PollService {
        PollService
    }
}

impl Handler for PollService {
    async fn handle(self: Rc<Self>, conn: Connection, _auth: AuthContext) {
        serve(conn).await
    }
}

/// The accept loop, through `poll_accept_bi` only.
async fn serve(conn: Connection) {
    let datagrams = conn.clone();
    conn.spawn(async move {
        while let Ok(d) = poll_fn(|cx| datagrams.poll_read_datagram(cx)).await {
            let _ = datagrams.send_datagram(d);
        }
    });
    while let Ok((send, recv)) = poll_fn(|cx| conn.poll_accept_bi(cx)).await {
        conn.spawn(command(conn.clone(), send, recv));
    }
}

async fn command(conn: Connection, mut send: SendStream, mut recv: RecvStream) {
    let mut cmd = [0u8; 1];
    match poll_fn(|cx| recv.poll_read(cx, &mut cmd)).await {
        Ok(Some(1)) => {}
        _ => return,
    }
    match &cmd {
        b"E" => echo(send, recv).await,
        b"P" => {
            let report = match probe(&conn, &mut send, &mut recv).await {
                Ok(()) => "ok".to_string(),
                Err(e) => e,
            };
            let _ = write_all(&mut send, report.as_bytes()).await;
            let _ = poll_fn(|cx| send.poll_finish(cx)).await;
        }
        b"O" => {
            let Ok(mut uni) = poll_fn(|cx| conn.poll_open_uni(cx)).await else {
                return;
            };
            let mut chunk = Bytes::from_static(b"opened by the server");
            while !chunk.is_empty() {
                if poll_fn(|cx| uni.poll_write_chunk(cx, &mut chunk))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = poll_fn(|cx| uni.poll_finish(cx)).await;
            let _ = poll_fn(|cx| send.poll_finish(cx)).await;
        }
        b"X" => send.reset_with(big_code()),
        _ => send.reset(1),
    }
}

/// Echoes through `poll_read`/`poll_write` on even streams and through the zero-copy
/// `poll_read_chunk`/`poll_write_chunk` on odd ones, then waits in `poll_finish` until the
/// client acknowledged everything.
async fn echo(mut send: SendStream, mut recv: RecvStream) {
    let chunked = send.id().index() % 2 == 1;
    let mut buf = vec![0u8; 7000];
    loop {
        if chunked {
            match poll_fn(|cx| recv.poll_read_chunk(cx, 9000)).await {
                Ok(Some(mut chunk)) => {
                    while !chunk.is_empty() {
                        if poll_fn(|cx| send.poll_write_chunk(cx, &mut chunk))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => return send.reset(2),
            }
        } else {
            match poll_fn(|cx| recv.poll_read(cx, &mut buf)).await {
                Ok(Some(n)) => {
                    if write_all(&mut send, buf.get(..n).unwrap_or_default())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => return send.reset(2),
            }
        }
    }
    // `Ok` only once the client acknowledged every byte; it then reads the stream's end.
    if poll_fn(|cx| send.poll_finish(cx)).await.is_err() {
        // Unreachable for a client that reads to the end; the client sees no end then.
        send.reset(3);
    }
}

async fn write_all(send: &mut SendStream, mut buf: &[u8]) -> Result<(), alknet_core::StreamError> {
    while !buf.is_empty() {
        let n = poll_fn(|cx| send.poll_write(cx, buf)).await?;
        buf = buf.get(n..).unwrap_or_default();
    }
    Ok(())
}

/// A waker that counts its wake-ups and passes them on to `then`; `Arc::strong_count`
/// counts the clones stored by whatever it was polled against.
#[derive(Default)]
struct Probe {
    woken: AtomicUsize,
    then: Mutex<Option<Waker>>,
}

impl Wake for Probe {
    fn wake(self: Arc<Self>) {
        self.woken.fetch_add(1, Ordering::SeqCst);
        if let Some(w) = self.then.lock().unwrap().take() {
            w.wake();
        }
    }
}

/// Clones of the probe's waker stored by the connection (`waker` is the caller's own).
fn stored(probe: &Arc<Probe>) -> usize {
    Arc::strong_count(probe) - 2
}

fn check(what: &str, got: usize, want: usize) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: {got} wakers stored, expected {want}"))
    }
}

/// Polls `fut` `POLLS` times with `cx`, expecting it to stay pending.
fn poll_pending<F: Future>(fut: std::pin::Pin<&mut F>, cx: &mut Context<'_>) -> Result<(), String> {
    let mut fut = fut;
    for _ in 0..POLLS {
        if fut.as_mut().poll(cx).is_ready() {
            return Err("a wait expected to be pending was ready".into());
        }
    }
    Ok(())
}

/// The waker storage seen from a service, then a read cancelled after its data arrived.
async fn probe(
    conn: &Connection,
    send: &mut SendStream,
    recv: &mut RecvStream,
) -> Result<(), String> {
    let p = Arc::new(Probe::default());
    let waker = Waker::from(p.clone());
    let mut cx = Context::from_waker(&waker);
    let mut buf = [0u8; 64];

    // A read future polled many times keeps one waker; dropping it unfinished keeps none.
    {
        let read = pin!(recv.read_chunk(64));
        poll_pending(read, &mut cx)?;
        check("read future polled repeatedly", stored(&p), 1)?;
    }
    check("read future dropped", stored(&p), 0)?;
    // `poll_read` itself: one waker, until the stream is woken or polled from another task.
    for _ in 0..POLLS {
        if recv.poll_read(&mut cx, &mut buf).is_ready() {
            return Err("poll_read was ready before the client sent more".into());
        }
    }
    check("poll_read repeated", stored(&p), 1)?;
    // Accepts: the async form and the handle-keyed poll form.
    {
        let accept = pin!(conn.accept_bi());
        poll_pending(accept, &mut cx)?;
        check(
            "accept future polled repeatedly (plus the read)",
            stored(&p),
            2,
        )?;
    }
    check("accept future dropped (the read remains)", stored(&p), 1)?;
    {
        let other = conn.clone();
        for _ in 0..POLLS {
            if other.poll_accept_uni(&mut cx).is_ready() {
                return Err("poll_accept_uni was ready with no stream".into());
            }
        }
        check("poll_accept_uni repeated (plus the read)", stored(&p), 2)?;
    }
    check("handle dropped (the read remains)", stored(&p), 1)?;

    // A read polled once, then cancelled after the client's data arrived: the data is
    // still there for the next read.
    let cancelled = Arc::new(Probe::default());
    let cancelled_waker = Waker::from(cancelled.clone());
    {
        let mut read = pin!(recv.read_chunk(64));
        if read
            .as_mut()
            .poll(&mut Context::from_waker(&cancelled_waker))
            .is_ready()
        {
            return Err("the read to cancel was ready before the client sent".into());
        }
        check("the earlier poll_read's waker, replaced", stored(&p), 0)?;
        write_all(send, b"R").await.map_err(|e| e.to_string())?;
        // One thread runs the service and the shard, so nothing wakes between the check and
        // the registration.
        poll_fn(|cx| {
            if cancelled.woken.load(Ordering::SeqCst) > 0 {
                return Poll::Ready(());
            }
            *cancelled.then.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        // `read` is dropped here without being polled again.
    }
    check("cancelled read", Arc::strong_count(&cancelled) - 2, 0)?;
    let mut got = Vec::new();
    while let Some(n) = poll_fn(|cx| recv.poll_read(cx, &mut buf))
        .await
        .map_err(|e| e.to_string())?
    {
        got.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    if got != b"sent after the cancel" {
        return Err(format!(
            "the read after the cancel got {:?}",
            String::from_utf8_lossy(&got)
        ));
    }
    check("after the stream ended", stored(&p), 0)?;
    Ok(())
}

fn client_config(key: &ClientKey) -> quinn::ClientConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(20).try_into().unwrap()));
    quinn_client_config(Some(key), ALPN, Arc::new(AnyServer::default()), transport).unwrap()
}

async fn connect(addr: SocketAddr, key: &ClientKey) -> (quinn::Endpoint, quinn::Connection) {
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = ep
        .connect_with(client_config(key), addr, "alknet")
        .unwrap()
        .await
        .unwrap();
    (ep, conn)
}

async fn echo_request(conn: &quinn::Connection, body: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let writer = async {
        send.write_all(b"E").await?;
        send.write_all(&body).await?;
        send.finish()?;
        anyhow::Ok(())
    };
    let reader = async { anyhow::Ok(recv.read_to_end(body.len() + 1).await?) };
    let (w, r) = tokio::join!(writer, reader);
    w?;
    r
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn round_trip_through_poll_read_poll_write_and_poll_finish() {
    let key = ClientKey::generate().unwrap();
    let server = start_server(&key);
    let (_ep, conn) = connect(server.local_addr(), &key).await;
    // Sequential streams, each larger than the stream window, so writes block and resume.
    for (i, len) in [0usize, 1, 6999, 7001, 300_000].into_iter().enumerate() {
        let body = pattern(len, i as u8);
        let got = tokio::time::timeout(WAIT, echo_request(&conn, body.clone()))
            .await
            .expect("echo timed out")
            .unwrap();
        assert_eq!(got.len(), body.len(), "stream {i}");
        assert!(got == body, "stream {i}: the echo differs");
    }
    // Concurrent streams: the service's `poll_accept_bi` loop takes all of them.
    let mut tasks = Vec::new();
    for i in 0..24u8 {
        let c = conn.clone();
        tasks.push(tokio::spawn(async move {
            let body = pattern(20_000 + usize::from(i) * 1000, i);
            let got = echo_request(&c, body.clone()).await?;
            anyhow::ensure!(got == body, "concurrent stream {i}: the echo differs");
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        tokio::time::timeout(WAIT, t)
            .await
            .expect("concurrent echo timed out")
            .unwrap()
            .unwrap();
    }
    conn.close(0u32.into(), b"");
    server.shutdown();
    server.join();
}

#[tokio::test]
async fn repeated_polls_keep_one_waker_and_a_cancelled_read_loses_no_data() {
    let key = ClientKey::generate().unwrap();
    let server = start_server(&key);
    let (_ep, conn) = connect(server.local_addr(), &key).await;
    let run = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(b"P").await?;
        let mut ready = [0u8; 1];
        recv.read_exact(&mut ready).await?;
        if &ready != b"R" {
            // The probe failed before its go-ahead: what follows is its report.
            let rest = recv.read_to_end(4096).await?;
            let mut report = ready.to_vec();
            report.extend_from_slice(&rest);
            return anyhow::Ok(String::from_utf8_lossy(&report).into_owned());
        }
        send.write_all(b"sent after the cancel").await?;
        send.finish()?;
        let report = recv.read_to_end(4096).await?;
        anyhow::Ok(String::from_utf8_lossy(&report).into_owned())
    };
    let report = tokio::time::timeout(WAIT, run)
        .await
        .expect("probe timed out")
        .unwrap();
    assert_eq!(report, "ok");
    conn.close(0u32.into(), b"");
    server.shutdown();
    server.join();
}

#[tokio::test]
async fn poll_open_uni_and_poll_read_datagram() {
    let key = ClientKey::generate().unwrap();
    let server = start_server(&key);
    let (_ep, conn) = connect(server.local_addr(), &key).await;
    let run = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(b"O").await?;
        send.finish()?;
        let mut uni = conn.accept_uni().await?;
        let got = uni.read_to_end(1024).await?;
        anyhow::ensure!(got == b"opened by the server", "unexpected uni stream data");
        anyhow::ensure!(recv.read_to_end(16).await?.is_empty());
        // Datagrams may be lost even on loopback: send again until one echo returns.
        for attempt in 0u8..20 {
            conn.send_datagram(Bytes::from(vec![attempt; 100]))?;
            if let Ok(d) = tokio::time::timeout(Duration::from_secs(1), conn.read_datagram()).await
            {
                let d = d?;
                anyhow::ensure!(d.len() == 100, "datagram echo of {} bytes", d.len());
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("no datagram echo")
    };
    tokio::time::timeout(WAIT, run)
        .await
        .expect("timed out")
        .unwrap();
    conn.close(0u32.into(), b"");
    server.shutdown();
    server.join();
}

#[tokio::test]
async fn error_codes_beyond_32_bits_reach_the_peer() {
    let key = ClientKey::generate().unwrap();
    let server = start_server(&key);
    let (_ep, conn) = connect(server.local_addr(), &key).await;
    let run = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(b"X").await?;
        send.finish()?;
        anyhow::Ok(recv.read_to_end(16).await)
    };
    let got = tokio::time::timeout(WAIT, run)
        .await
        .expect("timed out")
        .unwrap();
    match got {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(code.into_inner(), big_code().into_inner())
        }
        other => panic!("expected a reset with the large code, got {other:?}"),
    }
    conn.close(0u32.into(), b"");
    server.shutdown();
    server.join();
}
