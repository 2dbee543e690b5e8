//! The handler API in-process: ALPN dispatch among several services, scopes, handler
//! panics, and both io drivers; quinn is the client.

use crate::support::*;
use alknet_core::config::{Config, DriverKind};
use alknet_core::identity::MemoryIdentities;
use alknet_core::service::{Drain, Spawner};
use alknet_core::{
    AuthContext, Connection, Handler, NoConfig, PeerEntry, Registry, Service, ServiceContext,
    ServiceInfo,
};
use std::rc::Rc;
use std::sync::Arc;

/// Answers every stream with its name and the peer id it was given.
#[derive(Clone, Copy)]
struct Named {
    alpn: &'static [u8],
    scopes: &'static [&'static str],
    panics: bool,
}

impl Service for Named {
    const NAME: &'static str = "named";
    type Config = NoConfig;
    type Handler = Named;
    fn info(&self, _: &NoConfig) -> ServiceInfo {
        ServiceInfo {
            alpn: self.alpn,
            scopes: self.scopes,
            anonymous: false,
            uni_streams: false,
        }
    }
    fn build(&self, _ctx: &ServiceContext<'_, NoConfig>) -> Named {
        *self
    }
}

impl Handler for Named {
    async fn handle(self: Rc<Self>, conn: Connection, auth: AuthContext) {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let _ = recv.read_to_end(1024).await;
            if self.panics {
                panic!("handler bug");
            }
            let who = auth
                .identity
                .as_ref()
                .map(|i| i.id.clone())
                .unwrap_or_default();
            let reply = format!("{}:{who}", String::from_utf8_lossy(self.alpn));
            let _ = send.write_all(reply.as_bytes()).await;
            let _ = send.finish();
        }
    }
}

/// Hands each stream to a task; that task panics. Through the connection
/// (`test/spawn-panic`) or through the context's spawner (`test/ctx-spawn-panic`).
struct SpawnPanics {
    alpn: &'static [u8],
}

impl Service for SpawnPanics {
    const NAME: &'static str = "spawn-panics";
    type Config = NoConfig;
    type Handler = SpawnPanicsHandler;
    fn info(&self, _: &NoConfig) -> ServiceInfo {
        ServiceInfo {
            alpn: self.alpn,
            scopes: &[],
            anonymous: false,
            uni_streams: false,
        }
    }
    fn build(&self, ctx: &ServiceContext<'_, NoConfig>) -> SpawnPanicsHandler {
        SpawnPanicsHandler {
            through_ctx: (self.alpn == b"test/ctx-spawn-panic").then(|| ctx.spawner()),
        }
    }
}

struct SpawnPanicsHandler {
    through_ctx: Option<Spawner>,
}

impl Handler for SpawnPanicsHandler {
    async fn handle(self: Rc<Self>, conn: Connection, _auth: AuthContext) {
        while let Ok((send, mut recv)) = conn.accept_bi().await {
            let task = async move {
                let _keep = send;
                let _ = recv.read_to_end(1024).await;
                panic!("task bug");
            };
            match &self.through_ctx {
                Some(spawner) => spawner.spawn(task),
                None => conn.spawn(task),
            }
        }
    }
}

/// Answers a stream with whether the shard is draining, then closes the connection with
/// code 0x1d as soon as the drain signal fires.
struct DrainWatch;

impl Service for DrainWatch {
    const NAME: &'static str = "drain-watch";
    type Config = NoConfig;
    type Handler = DrainWatchHandler;
    fn info(&self, _: &NoConfig) -> ServiceInfo {
        ServiceInfo {
            alpn: b"test/drain",
            scopes: &[],
            anonymous: false,
            uni_streams: false,
        }
    }
    fn build(&self, ctx: &ServiceContext<'_, NoConfig>) -> DrainWatchHandler {
        DrainWatchHandler { drain: ctx.drain() }
    }
}

struct DrainWatchHandler {
    drain: Drain,
}

impl Handler for DrainWatchHandler {
    async fn handle(self: Rc<Self>, conn: Connection, _auth: AuthContext) {
        if let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let _ = recv.read_to_end(1024).await;
            let reply = format!("draining={}", self.drain.is_draining());
            let _ = send.write_all(reply.as_bytes()).await;
            let _ = send.finish();
        }
        self.drain.wait().await;
        conn.close(0x1d, b"drained");
    }
}

fn named(alpn: &'static [u8], scopes: &'static [&'static str], panics: bool) -> Named {
    Named {
        alpn,
        scopes,
        panics,
    }
}

fn start(driver: DriverKind, key: &ClientKey) -> alknet_core::ServerHandle {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        pin_workers: false,
        driver,
        ..Config::default()
    };
    let mut registry = Registry::new();
    let none = NoConfig {};
    registry
        .register(named(b"test/a", &[], false), none)
        .unwrap();
    registry
        .register(named(b"test/b", &[], false), none)
        .unwrap();
    registry
        .register(named(b"test/panic", &[], true), none)
        .unwrap();
    registry
        .register(named(b"test/scoped", &["secret"], false), none)
        .unwrap();
    registry.register(alknet_echo::Echo, none).unwrap();
    let spawn_panics = SpawnPanics {
        alpn: b"test/spawn-panic",
    };
    registry.register(spawn_panics, none).unwrap();
    let ctx_spawn_panics = SpawnPanics {
        alpn: b"test/ctx-spawn-panic",
    };
    registry.register(ctx_spawn_panics, none).unwrap();
    registry.register(DrainWatch, none).unwrap();
    let ids = MemoryIdentities::with_peers([PeerEntry {
        peer_id: "p1".into(),
        fingerprints: vec![key.fingerprint.parse().unwrap()],
        auth_token_hash: None,
        scopes: vec!["echo".into()],
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

async fn ask(
    ep: &quinn::Endpoint,
    addr: std::net::SocketAddr,
    key: &ClientKey,
    alpn: &[u8],
) -> anyhow::Result<String> {
    let conn = connect(ep, addr, Some(key), alpn).await?;
    let out = echo(&conn, b"?").await;
    let out = match out {
        Ok(v) => String::from_utf8(v)?,
        Err(e) => {
            let reason = conn.closed().await;
            anyhow::bail!("{e}; closed: {reason}");
        }
    };
    conn.close(0u32.into(), b"");
    Ok(out)
}

async fn dispatch_and_isolation(driver: DriverKind) {
    let key = ClientKey::generate().unwrap();
    let server = start(driver, &key);
    let addr = server.local_addr();
    let ep = quinn_endpoint();
    assert_eq!(ask(&ep, addr, &key, b"test/a").await.unwrap(), "test/a:p1");
    assert_eq!(ask(&ep, addr, &key, b"test/b").await.unwrap(), "test/b:p1");

    // A missing scope closes with FORBIDDEN before the handler runs.
    let err = ask(&ep, addr, &key, b"test/scoped")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("lacks scope `secret`"), "{err}");

    // A panicking handler closes its connection only.
    let steady = connect(&ep, addr, Some(&key), b"alknet/echo")
        .await
        .unwrap();
    let err = ask(&ep, addr, &key, b"test/panic")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("internal error"), "{err}");
    assert_eq!(echo(&steady, b"unaffected").await.unwrap(), b"unaffected");
    // So does a panic in a task the handler spawned for the connection.
    let err = ask(&ep, addr, &key, b"test/spawn-panic")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("internal error"), "{err}");
    assert_eq!(echo(&steady, b"still fine").await.unwrap(), b"still fine");
    let stats = server.stats();
    assert_eq!(stats.handler_panics, 2);
    assert_eq!(stats.auth_failures, 1);
    server.shutdown();
    server.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_dispatch_scopes_and_panics_io_uring() {
    dispatch_and_isolation(DriverKind::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_dispatch_scopes_and_panics_legacy_driver() {
    dispatch_and_isolation(DriverKind::Legacy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_a_task_started_through_the_context_closes_only_its_connection() {
    let key = ClientKey::generate().unwrap();
    let server = start(DriverKind::Auto, &key);
    let addr = server.local_addr();
    let ep = quinn_endpoint();
    let steady = connect(&ep, addr, Some(&key), b"alknet/echo")
        .await
        .unwrap();
    let err = ask(&ep, addr, &key, b"test/ctx-spawn-panic")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("internal error"), "{err}");
    assert_eq!(echo(&steady, b"unaffected").await.unwrap(), b"unaffected");
    assert_eq!(server.stats().handler_panics, 1);
    server.shutdown();
    server.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fires_the_drain_signal_of_services() {
    let key = ClientKey::generate().unwrap();
    let server = start(DriverKind::Auto, &key);
    let addr = server.local_addr();
    let ep = quinn_endpoint();
    let conn = connect(&ep, addr, Some(&key), b"test/drain").await.unwrap();
    assert_eq!(echo(&conn, b"?").await.unwrap(), b"draining=false");
    server.shutdown();
    // The service closes at the signal, well before the drain period (5 s) would end with
    // the shard's own SHUTDOWN close.
    match conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, quinn::VarInt::from_u32(0x1d), "{c:?}");
            assert_eq!(&c.reason[..], b"drained");
        }
        other => panic!("closed by {other:?}, not by the service"),
    }
    server.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_memory_budget_new_connections_and_streams_wait() {
    let key = ClientKey::generate().unwrap();
    let server = start(DriverKind::Auto, &key);
    let addr = server.local_addr();
    let ep = quinn_endpoint();
    let conn = connect(&ep, addr, Some(&key), b"alknet/echo")
        .await
        .unwrap();
    assert_eq!(echo(&conn, b"before").await.unwrap(), b"before");

    server.memory().set_budget(1);
    wait_for(
        std::time::Duration::from_secs(3),
        "the memory gauge over",
        || server.memory().over(),
    )
    .await;
    assert!(server.memory().over());

    // New connections are refused (after a Retry proves the address). The gauge's thread
    // sets the flag first and then tells the shards, so an attempt may reach a shard before
    // the news does: a refusal is the event that the shard has it.
    let mut refusal = None;
    for _ in 0..20 {
        match connect(&quinn_endpoint(), addr, Some(&key), b"alknet/echo").await {
            Ok(early) => early.close(0u32.into(), b""),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let err = refusal.expect("20 connections in a row were accepted over the budget");
    assert!(
        matches!(err, quinn::ConnectionError::ConnectionClosed(_)),
        "{err:?}"
    );
    assert!(server.stats().refused_memory >= 1);

    // The live connection gets no new stream credit: it can use what it has, then waits.
    let mut opened = 0;
    loop {
        let open =
            tokio::time::timeout(std::time::Duration::from_millis(300), conn.open_bi()).await;
        let Ok(Ok((mut send, mut recv))) = open else {
            break;
        };
        send.write_all(b"x").await.unwrap();
        send.finish().unwrap();
        assert_eq!(recv.read_to_end(16).await.unwrap(), b"x");
        opened += 1;
        // The credit granted before the pressure (100 concurrent streams) is all there is.
        assert!(opened <= 100, "stream credit kept growing under pressure");
    }

    // Back under the budget: streams and connections flow again.
    server.memory().set_budget(u64::MAX);
    let (mut send, mut recv) =
        tokio::time::timeout(std::time::Duration::from_secs(3), conn.open_bi())
            .await
            .expect("stream credit did not come back")
            .unwrap();
    send.write_all(b"after").await.unwrap();
    send.finish().unwrap();
    assert_eq!(recv.read_to_end(16).await.unwrap(), b"after");
    let fresh = connect(&quinn_endpoint(), addr, Some(&key), b"alknet/echo")
        .await
        .unwrap();
    assert_eq!(echo(&fresh, b"new").await.unwrap(), b"new");
    server.shutdown();
    server.join();
}
