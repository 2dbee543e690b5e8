//! The call service over real QUIC connections: an in-process server on loopback with two
//! shards; quinn speaking raw frames (concurrency on one stream, the garbage suite) and the
//! crate's own `CallClient` on a monoio runtime (server-to-client calls, abort cascade,
//! timeouts, scopes).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use alknet_call::{
    CallClient, CallError, CallOptions, ErrorCode, Limits, NoInput, Operations, ServiceList,
};
use alknet_core::config::{Config, DriverKind};
use alknet_core::identity::MemoryIdentities;
use alknet_core::identity::tls::{NodeKey, ServerTrust};
use alknet_core::{NoConfig, PeerEntry, Registry, ServerHandle};
use alknet_proto::Fingerprint;
use alknet_proto::call::{Body, CallId, Decoder, Message, Request, encode};
use alknet_testkit::{AnyServer, ClientKey, quinn_client_config};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize, JsonSchema)]
struct Sleep {
    ms: u64,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Count {
    n: u32,
}

fn server_ops() -> Operations {
    let mut ops = Operations::new();
    ops.unary(
        "/test/echo",
        "returns its input",
        None,
        |_c, v: Value| async move { Ok(v) },
    )
    .unwrap();
    ops.unary(
        "/test/sleep",
        "waits ms milliseconds",
        None,
        |_c, s: Sleep| async move {
            // Slow on purpose: the operation the timeout and abort tests stop.
            monoio::time::sleep(Duration::from_millis(s.ms)).await;
            Ok(s.ms)
        },
    )
    .unwrap();
    ops.streaming(
        "/test/count",
        "sends 0..n",
        None,
        |_c, c: Count, sink| async move {
            for i in 0..c.n {
                sink.send(&i).await?;
            }
            Ok(())
        },
    )
    .unwrap();
    ops.unary(
        "/test/secret",
        "needs scope secret",
        Some("secret"),
        |_c, _: NoInput| async { Ok("classified") },
    )
    .unwrap();
    ops.unary(
        "/test/whoami",
        "the caller's peer id",
        None,
        |c, _: NoInput| async move {
            Ok(c.auth()
                .and_then(|a| a.identity.as_ref())
                .map(|i| i.id.clone()))
        },
    )
    .unwrap();
    ops.unary(
        "/test/callback",
        "calls the caller's /client/greet",
        None,
        |c, v: Value| async move {
            let peer = c.peer()?;
            let out: String = peer.call_typed("/client/greet", &v).await?;
            Ok(format!("client said: {out}"))
        },
    )
    .unwrap();
    ops.unary("/test/panic", "panics", None, |_c, _: NoInput| async move {
        if std::hint::black_box(true) {
            panic!("operation panicked on purpose");
        }
        Ok(())
    })
    .unwrap();
    ops.unary(
        "/test/relay",
        "calls the caller's /client/hang",
        None,
        |c, _: NoInput| async move {
            let peer = c.peer()?;
            peer.call("/client/hang", Value::Null).await?;
            Ok(())
        },
    )
    .unwrap();
    ops
}

struct Node {
    handle: ServerHandle,
    fingerprint: Fingerprint,
}

impl Node {
    fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

fn peer(id: &str, fp: Fingerprint, scopes: &[&str]) -> PeerEntry {
    PeerEntry {
        peer_id: id.into(),
        fingerprints: vec![fp],
        auth_token_hash: None,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        resources: vec![],
        display_name: None,
        ssh_keys: Vec::new(),
        enabled: true,
    }
}

fn start(peers: Vec<PeerEntry>, call_timeout: Duration) -> Node {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        pin_workers: false,
        ..Config::default()
    };
    let key = NodeKey::generate();
    let fingerprint = key.fingerprint();
    let service = alknet_call::CallService::new()
        .with_operations(server_ops())
        .unwrap()
        .with_limits(Limits {
            call_timeout,
            ..Limits::default()
        });
    let mut registry = Registry::new();
    registry.register(service, NoConfig {}).unwrap();
    let handle = alknet_core::start(
        Arc::new(config),
        key,
        registry,
        Arc::new(MemoryIdentities::with_peers(peers)),
    )
    .unwrap();
    Node {
        handle,
        fingerprint,
    }
}

// ---- the crate's own client on a monoio runtime ----

/// Connects a `CallClient` with `key`, serving `ops` to the server, and runs `f` with it.
fn with_client<F, Fut>(node: &Node, key: &NodeKey, ops: Operations, f: F)
where
    F: FnOnce(CallClient) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let config = Arc::new(Config::default());
    let (cc, _seen) = alknet_core::net::endpoint::client_config(
        &config,
        key,
        alknet_call::ALPN,
        ServerTrust::Pinned(node.fingerprint),
    )
    .unwrap();
    let addr = node.addr();
    alknet_core::net::server::run_on_driver(DriverKind::Auto, 0, || async move {
        let ep = alknet_core::client::ClientEndpoint::new(config, key, addr).unwrap();
        let conn = ep.connect(cc, addr).unwrap();
        conn.connected().await.unwrap();
        let client = CallClient::new(conn.clone(), ops);
        f(client).await;
        conn.close(0, b"");
        ep.wait_idle(Duration::from_secs(1)).await;
    })
    .unwrap();
}

fn client_node() -> (NodeKey, Fingerprint) {
    let k = NodeKey::generate();
    let fp = k.fingerprint();
    (k, fp)
}

#[test]
fn calls_streams_builtins_and_scopes() {
    let (k1, fp1) = client_node();
    let (k2, fp2) = client_node();
    let node = start(
        vec![
            peer("p1", fp1, &["call"]),
            peer("p2", fp2, &["call", "secret", "admin"]),
        ],
        Duration::from_secs(30),
    );
    with_client(&node, &k1, Operations::new(), |c| async move {
        assert_eq!(
            c.call("/test/echo", json!({"x": [1, 2]})).await.unwrap(),
            vec![json!({"x": [1, 2]})]
        );
        assert_eq!(
            c.call("/test/count", json!({"n": 5})).await.unwrap(),
            (0..5).map(|i| json!(i)).collect::<Vec<_>>()
        );
        assert_eq!(
            c.call_typed::<_, Option<String>>("/test/whoami", &Value::Null)
                .await
                .unwrap(),
            Some("p1".into())
        );
        // Scope refusal, and discovery shows only what may be called.
        let e = c.call("/test/secret", Value::Null).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden, "{e}");
        let e = c.call("/node/sessions", Value::Null).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden, "{e}");
        let list: ServiceList = c.call_typed("/services/list", &Value::Null).await.unwrap();
        let ids: Vec<_> = list.operations.iter().map(|o| o.id.as_str()).collect();
        assert!(
            ids.contains(&"/node/info") && ids.contains(&"/test/echo"),
            "{ids:?}"
        );
        assert!(
            !ids.contains(&"/test/secret") && !ids.contains(&"/node/sessions"),
            "{ids:?}"
        );
        let e = c
            .call("/services/schema", json!({"operationId": "/test/secret"}))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        let schema = c
            .call("/services/schema", json!({"operationId": "/test/sleep"}))
            .await
            .unwrap();
        assert_eq!(schema[0]["input"]["properties"]["ms"]["type"], "integer");
        // Other errors.
        let e = c.call("/test/nope", Value::Null).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        let e = c.call("/test/sleep", json!({"ms": "x"})).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidInput);
        let info = c.call("/node/info", Value::Null).await.unwrap();
        assert_eq!(info[0]["workers"], 2);
        assert_eq!(info[0]["alpns"], json!(["alknet/call"]));
        assert!(
            info[0]["fingerprint"]
                .as_str()
                .unwrap()
                .starts_with("ed25519:")
        );
    });
    with_client(&node, &k2, Operations::new(), |c| async move {
        assert_eq!(
            c.call("/test/secret", Value::Null).await.unwrap(),
            vec![json!("classified")]
        );
        // This client's own session, read from the shards' boards.
        let sessions = c.call("/node/sessions", Value::Null).await.unwrap();
        assert_eq!(sessions[0][0]["peer"], "p2", "{sessions:?}");
        assert_eq!(sessions[0][0]["alpn"], "alknet/call", "{sessions:?}");
        let e = c
            .call("/services/list-peers", Value::Null)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable);
        let list: ServiceList = c.call_typed("/services/list", &Value::Null).await.unwrap();
        assert!(list.operations.iter().any(|o| o.id == "/test/secret"));
    });
}

#[test]
fn concurrent_calls_with_the_client_on_one_and_many_streams() {
    let (k, fp) = client_node();
    let node = start(vec![peer("p1", fp, &["call"])], Duration::from_secs(30));
    with_client(&node, &k, Operations::new(), |c| async move {
        // Shared stream: the slow call finishes last though it was sent first.
        let started = Instant::now();
        let (slow, fast, echo) = monoio::join!(
            c.call("/test/sleep", json!({"ms": 400})),
            c.call("/test/sleep", json!({"ms": 10})),
            c.call("/test/echo", json!("e"))
        );
        assert_eq!(slow.unwrap(), vec![json!(400)]);
        assert_eq!(fast.unwrap(), vec![json!(10)]);
        assert_eq!(echo.unwrap(), vec![json!("e")]);
        assert!(started.elapsed() < Duration::from_millis(1500));
        // Separate streams.
        let a = c.on_new_stream().await.unwrap();
        let b = c.on_new_stream().await.unwrap();
        let started = Instant::now();
        let (x, y) = monoio::join!(
            a.call("/test/sleep", json!({"ms": 300})),
            b.call("/test/sleep", json!({"ms": 300}))
        );
        assert_eq!(x.unwrap(), vec![json!(300)]);
        assert_eq!(y.unwrap(), vec![json!(300)]);
        assert!(started.elapsed() < Duration::from_millis(1500));
    });
}

#[test]
fn server_calls_the_client_back() {
    let (k, fp) = client_node();
    let node = start(vec![peer("p1", fp, &["call"])], Duration::from_secs(30));
    let mut ops = Operations::new();
    ops.unary(
        "/client/greet",
        "greets",
        None,
        |_c, name: String| async move { Ok(format!("hello {name}")) },
    )
    .unwrap();
    with_client(&node, &k, ops, |c| async move {
        assert_eq!(
            c.call("/test/callback", json!("server")).await.unwrap(),
            vec![json!("client said: hello server")]
        );
    });
}

#[test]
fn abort_cascades_to_calls_made_on_behalf() {
    let (k, fp) = client_node();
    let node = start(vec![peer("p1", fp, &["call"])], Duration::from_secs(30));
    // One message when the relayed call arrives, one when it is dropped.
    let (started, mut s) = tokio::sync::mpsc::channel::<()>(1);
    let (cancelled, mut x) = tokio::sync::mpsc::channel::<()>(1);
    struct Guard(tokio::sync::mpsc::Sender<()>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.try_send(());
        }
    }
    let mut ops = Operations::new();
    ops.unary(
        "/client/hang",
        "never answers",
        None,
        move |_c, _: NoInput| {
            let _ = started.try_send(());
            let guard = Guard(cancelled.clone());
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok(())
            }
        },
    )
    .unwrap();
    with_client(&node, &k, ops, |c| async move {
        let call = c
            .start("/test/relay", Value::Null, CallOptions::default())
            .await
            .unwrap();
        let arrived = monoio::time::timeout(Duration::from_secs(5), s.recv()).await;
        assert!(
            matches!(arrived, Ok(Some(()))),
            "the relayed call never arrived"
        );
        assert!(x.try_recv().is_err());
        call.abort();
        let dropped = monoio::time::timeout(Duration::from_secs(5), x.recv()).await;
        assert!(
            matches!(dropped, Ok(Some(()))),
            "the call made on behalf was not aborted"
        );
        // The connection still works.
        assert_eq!(
            c.call("/test/echo", json!(1)).await.unwrap(),
            vec![json!(1)]
        );
    });
}

#[test]
fn timeouts_on_both_sides() {
    let (k, fp) = client_node();
    let node = start(vec![peer("p1", fp, &["call"])], Duration::from_millis(500));
    with_client(&node, &k, Operations::new(), |c| async move {
        // The server's limit.
        let e: CallError = c
            .call("/test/sleep", json!({"ms": 5000}))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Timeout, "{e}");
        assert!(e.retryable);
        // The caller's own limit.
        let mut s = c
            .start(
                "/test/sleep",
                json!({"ms": 400}),
                CallOptions {
                    timeout: Some(Duration::from_millis(100)),
                    ..CallOptions::default()
                },
            )
            .await
            .unwrap();
        let e = s.next().await.unwrap().unwrap_err();
        assert_eq!(e.code, ErrorCode::Timeout);
        assert!(s.next().await.is_none());
        assert_eq!(
            c.call("/test/sleep", json!({"ms": 1})).await.unwrap(),
            vec![json!(1)]
        );
    });
}

// ---- raw frames from quinn ----

async fn quinn_connect(addr: SocketAddr, key: &ClientKey) -> (quinn::Endpoint, quinn::Connection) {
    let cfg = quinn_client_config(
        Some(key),
        alknet_call::ALPN,
        Arc::new(AnyServer::default()),
        quinn::TransportConfig::default(),
    )
    .unwrap();
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = ep.connect_with(cfg, addr, "alknet").unwrap().await.unwrap();
    (ep, conn)
}

fn request(id: CallId, op: &str, input: Value) -> Vec<u8> {
    encode(&Message {
        id,
        body: Body::Requested(Request {
            operation_id: op.into(),
            input,
            auth_token: None,
            forwarded_for: None,
        }),
    })
    .unwrap()
}

fn new_id() -> CallId {
    CallId::from_random(rand::random())
}

/// Reads frames until `done` says enough or the stream ends (bounded by a deadline).
async fn read_frames(
    recv: &mut quinn::RecvStream,
    mut done: impl FnMut(&[Message]) -> bool,
) -> Vec<Message> {
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(m) = dec.poll().expect("server sent a bad frame") {
            out.push(m);
        }
        if done(&out) {
            return out;
        }
        let mut buf = vec![0u8; 65536];
        match tokio::time::timeout_at(deadline, recv.read(&mut buf)).await {
            Ok(Ok(Some(n))) => dec.feed(&buf[..n]),
            Ok(_) => return out,
            Err(_) => panic!("no answer within 10 s; got {out:?}"),
        }
    }
}

fn finished(id: CallId) -> impl FnMut(&[Message]) -> bool {
    move |ms| {
        ms.iter().any(|m| {
            m.id == id && matches!(m.body, Body::Completed | Body::Error(_) | Body::Aborted)
        })
    }
}

async fn raw_call(conn: &quinn::Connection, op: &str, input: Value) -> Vec<Message> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let id = new_id();
    send.write_all(&request(id, op, input)).await.unwrap();
    let out = read_frames(&mut recv, finished(id)).await;
    let _ = send.finish();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_one_raw_stream() {
    let key = ClientKey::generate().unwrap();
    let node = start(
        vec![peer("p1", key.fingerprint.parse().unwrap(), &["call"])],
        Duration::from_secs(30),
    );
    let (_ep, conn) = quinn_connect(node.addr(), &key).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let (slow, fast, count) = (new_id(), new_id(), new_id());
    // Three requests in one write: many frames in one read on the server.
    let mut bytes = request(slow, "/test/sleep", json!({"ms": 300}));
    bytes.extend(request(fast, "/test/sleep", json!({"ms": 5})));
    bytes.extend(request(count, "/test/count", json!({"n": 3})));
    send.write_all(&bytes).await.unwrap();
    let all = read_frames(&mut recv, |ms| {
        [slow, fast, count]
            .iter()
            .all(|id| ms.iter().any(|m| m.id == *id && m.body == Body::Completed))
    })
    .await;
    let pos = |id: CallId| {
        all.iter()
            .position(|m| m.id == id && m.body == Body::Completed)
    };
    assert!(pos(fast) < pos(slow), "{all:?}");
    let outputs: Vec<_> = all
        .iter()
        .filter(|m| m.id == count)
        .filter_map(|m| match &m.body {
            Body::Responded { output } => Some(output.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(outputs, vec![json!(0), json!(1), json!(2)]);
    // The server finishes its side once ours is finished and its calls are answered.
    send.finish().unwrap();
    let rest = read_frames(&mut recv, |_| false).await;
    assert!(rest.is_empty(), "{rest:?}");

    // Across streams, at once.
    let calls = (0..8).map(|i| {
        let conn = conn.clone();
        async move { raw_call(&conn, "/test/sleep", json!({"ms": 100 + i})).await }
    });
    let results = futures_join_all(calls).await;
    for (i, ms) in results.into_iter().enumerate() {
        assert!(
            ms.iter().any(|m| m.body
                == Body::Responded {
                    output: json!(100 + i)
                }),
            "{ms:?}"
        );
    }
}

async fn futures_join_all<F: std::future::Future + Send + 'static>(
    fs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

fn error_of(ms: &[Message]) -> Option<(CallId, ErrorCode)> {
    ms.iter().find_map(|m| match &m.body {
        Body::Error(e) => Some((m.id, e.code)),
        _ => None,
    })
}

/// Sends `bytes` on a fresh stream and returns everything the server says before ending it.
async fn garbage(conn: &quinn::Connection, bytes: &[u8]) -> Vec<Message> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    read_frames(&mut recv, |_| false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_costs_only_its_stream_until_it_repeats() {
    let key = ClientKey::generate().unwrap();
    let node = start(
        vec![peer("p1", key.fingerprint.parse().unwrap(), &["call"])],
        Duration::from_secs(30),
    );
    let (_ep, conn) = quinn_connect(node.addr(), &key).await;
    // A call in flight on its own stream throughout.
    let (mut steady_send, mut steady_recv) = conn.open_bi().await.unwrap();
    let steady = new_id();
    steady_send
        .write_all(&request(steady, "/test/sleep", json!({"ms": 1500})))
        .await
        .unwrap();

    let frame = |body: &[u8]| {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    };
    let id = new_id();
    let cases: Vec<(&str, Vec<u8>, Option<CallId>)> = vec![
        ("zero length", vec![0, 0, 0, 0], None),
        (
            "0xFFFFFFFF length",
            vec![0xff, 0xff, 0xff, 0xff, b'{'],
            None,
        ),
        ("invalid UTF-8", frame(b"{\"type\":\xff}"), None),
        ("invalid JSON", frame(b"{\"type\":"), None),
        (
            "unknown type",
            frame(format!(r#"{{"type":"call.nope","id":"{id}","payload":{{}}}}"#).as_bytes()),
            Some(id),
        ),
        (
            "duplicate id",
            {
                let mut v = request(id, "/test/sleep", json!({"ms": 2000}));
                v.extend(request(id, "/test/echo", json!(1)));
                v
            },
            Some(id),
        ),
    ];
    for (name, bytes, want_id) in cases {
        let got = garbage(&conn, &bytes).await;
        let (eid, code) =
            error_of(&got).unwrap_or_else(|| panic!("{name}: no call.error in {got:?}"));
        assert_eq!(code, ErrorCode::InvalidInput, "{name}");
        assert_eq!(eid, want_id.unwrap_or(CallId::NIL), "{name}");
    }
    // The connection still serves calls, and the call in flight finished normally.
    let ok = raw_call(&conn, "/test/echo", json!("still here")).await;
    assert!(
        ok.iter().any(|m| m.body
            == Body::Responded {
                output: json!("still here")
            }),
        "{ok:?}"
    );
    let st = read_frames(&mut steady_recv, finished(steady)).await;
    assert!(
        st.iter()
            .any(|m| m.id == steady && m.body == Body::Completed),
        "{st:?}"
    );

    // Repeated violations (8 in all) close the connection with PROTOCOL_ERROR.
    let _ = garbage(&conn, &[0, 0, 0, 0]).await;
    let _ = garbage(&conn, &[0, 0, 0, 0]).await;
    let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("connection not closed");
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(
                c.error_code,
                quinn::VarInt::from_u32(alknet_core::close_code::PROTOCOL_ERROR)
            );
        }
        other => panic!("unexpected close: {other}"),
    }
    // Another connection of the same peer is unaffected.
    let (_ep2, conn2) = quinn_connect(node.addr(), &key).await;
    let ok = raw_call(&conn2, "/test/echo", json!(2)).await;
    assert!(
        ok.iter()
            .any(|m| m.body == Body::Responded { output: json!(2) })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_abort_stops_the_call() {
    let key = ClientKey::generate().unwrap();
    let node = start(
        vec![peer("p1", key.fingerprint.parse().unwrap(), &["call"])],
        Duration::from_secs(30),
    );
    let (_ep, conn) = quinn_connect(node.addr(), &key).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let id = new_id();
    send.write_all(&request(id, "/test/sleep", json!({"ms": 10_000})))
        .await
        .unwrap();
    // The server takes a stream's frames in order: once a later call is answered, the
    // sleeping one is running.
    let probe = new_id();
    send.write_all(&request(probe, "/test/echo", json!(0)))
        .await
        .unwrap();
    let got = read_frames(&mut recv, finished(probe)).await;
    assert!(
        got.iter()
            .any(|m| m.id == probe && m.body == Body::Responded { output: json!(0) }),
        "{got:?}"
    );
    send.write_all(
        &encode(&Message {
            id,
            body: Body::Aborted,
        })
        .unwrap(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let got = read_frames(&mut recv, finished(id)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(got.last().map(|m| &m.body), Some(&Body::Aborted), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_quote_peer_names_only_in_part() {
    let key = ClientKey::generate().unwrap();
    let node = start(
        vec![peer("p1", key.fingerprint.parse().unwrap(), &["call"])],
        Duration::from_secs(30),
    );
    let (_ep, conn) = quinn_connect(node.addr(), &key).await;
    // An unknown operation with a 100 KiB name: the answer quotes 64 bytes of it.
    let name = format!("/nope/{}\n{}", "x".repeat(10), "y".repeat(100 << 10));
    let got = raw_call(&conn, &name, Value::Null).await;
    let e = got
        .iter()
        .find_map(|m| match &m.body {
            Body::Error(e) => Some(e.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{got:?}"));
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(
        e.message.len() < 100,
        "error message of {} bytes echoes the peer's name (limit: 64 bytes quoted)",
        e.message.len()
    );
    assert!(e.message.contains("`/nope/xxxxxxxxxx\\ny"), "{}", e.message);
    // A serde message quoting a long input is cut too.
    let got = raw_call(&conn, "/test/sleep", json!({"ms": "z".repeat(100 << 10)})).await;
    let e = got
        .iter()
        .find_map(|m| match &m.body {
            Body::Error(e) => Some(e.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{got:?}"));
    assert_eq!(e.code, ErrorCode::InvalidInput);
    assert!(
        e.message.len() <= 512 + '…'.len_utf8(),
        "error message of {} bytes (limit 512)",
        e.message.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_operation_costs_only_its_call() {
    let key = ClientKey::generate().unwrap();
    let node = start(
        vec![peer("p1", key.fingerprint.parse().unwrap(), &["call"])],
        Duration::from_secs(30),
    );
    let (_ep, conn) = quinn_connect(node.addr(), &key).await;
    for _ in 0..3 {
        let got = raw_call(&conn, "/test/panic", Value::Null).await;
        assert_eq!(
            error_of(&got).map(|(_, c)| c),
            Some(ErrorCode::Internal),
            "{got:?}"
        );
    }
    // The connection, and the shard under it, still serve calls.
    let ok = raw_call(&conn, "/test/echo", json!("alive")).await;
    assert!(
        ok.iter().any(|m| m.body
            == Body::Responded {
                output: json!("alive")
            }),
        "{ok:?}"
    );
    let (_ep2, conn2) = quinn_connect(node.addr(), &key).await;
    let ok = raw_call(&conn2, "/test/echo", json!(1)).await;
    assert!(
        ok.iter()
            .any(|m| m.body == Body::Responded { output: json!(1) })
    );
}
