//! The handler API in-process: ALPN dispatch among several services, scopes, handler
//! panics, and both io drivers; quinn is the client.

use crate::support::*;
use alknet_core::config::{Config, DriverKind};
use alknet_core::identity::MemoryIdentities;
use alknet_core::service::FnFactory;
use alknet_core::{AuthContext, Connection, LocalBoxFuture, PeerEntry, ProtocolHandler, Registry};
use std::rc::Rc;
use std::sync::Arc;

/// Answers every stream with its name and the peer id it was given.
struct Named {
    alpn: &'static [u8],
    scope: Option<&'static str>,
    panics: bool,
}

/// Hands each stream to a task spawned through the connection; that task panics.
struct SpawnPanics;

impl ProtocolHandler for SpawnPanics {
    fn alpn(&self) -> &'static [u8] {
        b"test/spawn-panic"
    }
    fn scope(&self) -> Option<&str> {
        None
    }
    fn handle(self: Rc<Self>, conn: Connection, _auth: AuthContext) -> LocalBoxFuture<()> {
        Box::pin(async move {
            while let Ok((send, mut recv)) = conn.accept_bi().await {
                conn.spawn(async move {
                    let _keep = send;
                    let _ = recv.read_to_end(1024).await;
                    panic!("task bug");
                });
            }
        })
    }
}

impl ProtocolHandler for Named {
    fn alpn(&self) -> &'static [u8] {
        self.alpn
    }
    fn scope(&self) -> Option<&str> {
        self.scope
    }
    fn handle(self: Rc<Self>, conn: Connection, auth: AuthContext) -> LocalBoxFuture<()> {
        Box::pin(async move {
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
        })
    }
}

fn factory(
    alpn: &'static [u8],
    scope: Option<&'static str>,
    panics: bool,
) -> Arc<FnFactory<impl Fn(usize) -> Rc<dyn ProtocolHandler> + Send + Sync>> {
    Arc::new(FnFactory::new(alpn, false, move |_| {
        Rc::new(Named {
            alpn,
            scope,
            panics,
        }) as Rc<dyn ProtocolHandler>
    }))
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
    registry.register(factory(b"test/a", None, false)).unwrap();
    registry.register(factory(b"test/b", None, false)).unwrap();
    registry
        .register(factory(b"test/panic", None, true))
        .unwrap();
    registry
        .register(factory(b"test/scoped", Some("secret"), false))
        .unwrap();
    registry.register(alknet_core::echo::factory()).unwrap();
    registry
        .register(Arc::new(FnFactory::new(b"test/spawn-panic", false, |_| {
            Rc::new(SpawnPanics) as Rc<dyn ProtocolHandler>
        })))
        .unwrap();
    let ids = MemoryIdentities::with_peers([PeerEntry {
        peer_id: "p1".into(),
        fingerprints: vec![key.fingerprint.parse().unwrap()],
        auth_token_hash: None,
        scopes: vec!["echo".into()],
        resources: vec![],
        display_name: None,
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
