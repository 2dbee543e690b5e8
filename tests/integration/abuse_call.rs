//! Abuse of the call service by an authenticated peer, against a real `alknet serve`: a peer
//! that floods calls and never reads the answers, streams that announce huge frames and
//! send nothing more, and peer text that tries to forge the log line fail2ban bans on.
//! Memory is read from the server process (`/proc/PID/status`), before and after.

use crate::support::*;
use alknet_proto::call::{Body, CallId, DEFAULT_MAX_FRAME, Decoder, Message, Request, encode};
use serde_json::{Value, json};
use std::time::Duration;

const CALL: &[u8] = b"alknet/call";
/// Growth of the server's resident and committed memory the attacks may cause. What they
/// may hold by design: the connection's send queue (4 MiB), QUIC's windows (4 MiB each way),
/// the calls in flight and the allocator's slack.
const MEMORY_BOUND_KIB: u64 = 40 << 10;

fn call_server(key: &ClientKey) -> Server {
    Server::start(&format!(
        "workers = 1\n[services.call]\nenabled = true\n{}",
        peer_toml("flooder", key, &["call"])
    ))
}

/// A field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    text.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .strip_suffix(" kB")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

struct Memory {
    rss: u64,
    data: u64,
}

fn memory(server: &Server) -> Memory {
    let pid = server.child.id();
    Memory {
        rss: status_kib(pid, "VmRSS"),
        data: status_kib(pid, "VmData"),
    }
}

/// A fresh call id (a counter: ids only need to differ).
fn new_id() -> CallId {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    CallId::from_random(bytes)
}

fn request(op: &str) -> Vec<u8> {
    encode(&Message {
        id: new_id(),
        body: Body::Requested(Request {
            operation_id: op.into(),
            input: Value::Null,
            auth_token: None,
            forwarded_for: None,
        }),
    })
    .unwrap()
}

/// Reads frames from `recv` until one ends a call (bounded by a deadline).
async fn until_call_ends(recv: &mut quinn::RecvStream) -> Vec<Message> {
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        while let Some(m) = dec.poll().expect("server sent a bad frame") {
            let end = matches!(m.body, Body::Completed | Body::Error(_) | Body::Aborted);
            out.push(m);
            if end {
                return out;
            }
        }
        match tokio::time::timeout_at(deadline, recv.read(&mut buf)).await {
            Ok(Ok(Some(n))) => dec.feed(&buf[..n]),
            other => panic!("call not answered ({other:?}); got {out:?}"),
        }
    }
}

/// One call on a fresh stream of `conn`, answered.
async fn one_call(conn: &quinn::Connection, op: &str) -> Vec<Message> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&request(op)).await.unwrap();
    let out = until_call_ends(&mut recv).await;
    let _ = send.finish();
    out
}

fn answered(ms: &[Message]) -> bool {
    ms.iter().any(|m| matches!(m.body, Body::Responded { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_peer_that_never_reads_cannot_grow_server_memory() {
    let key = ClientKey::generate().unwrap();
    let server = call_server(&key);
    let ep = quinn_endpoint();
    let conn = connect(&ep, server.addr, Some(&key), CALL).await.unwrap();
    assert!(answered(&one_call(&conn, "/services/list").await));
    let before = memory(&server);

    // Each batch: an unknown operation with a long name, and calls that fill the calls in
    // flight and are then refused as over the limit. Written on four streams, never read.
    // Every call has an id of its own (a repeated id in flight is a protocol violation).
    let unknown_op = format!("/nope/{}", "x".repeat(1000));
    let batch = move || {
        let mut batch = Vec::new();
        while batch.len() < 64 << 10 {
            batch.extend(request(&unknown_op));
            for _ in 0..8 {
                batch.extend(request("/services/list"));
            }
        }
        batch
    };
    const PER_STREAM: usize = 16 << 20;
    let mut writers = Vec::new();
    for _ in 0..4 {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        let batch = batch.clone();
        writers.push(tokio::spawn(async move {
            let mut written = 0;
            // Until the budget is spent, or the server stops reading (a write makes no
            // progress for 3 s: flow control holds it).
            while written < PER_STREAM {
                let batch = batch();
                match tokio::time::timeout(Duration::from_secs(3), send.write_all(&batch)).await {
                    Ok(Ok(())) => written += batch.len(),
                    Ok(Err(e)) => panic!("write failed: {e}"),
                    Err(_) => break,
                }
            }
            (written, send, recv)
        }));
    }
    let mut total = 0;
    let mut streams = Vec::new();
    for w in writers {
        let (n, send, recv) = w.await.unwrap();
        total += n;
        streams.push((send, recv));
    }
    let after = memory(&server);
    eprintln!(
        "never-reading peer wrote {} KiB of calls; server VmRSS {} -> {} KiB, VmData {} -> {} KiB",
        total >> 10,
        before.rss,
        after.rss,
        before.data,
        after.data
    );
    assert!(
        after.rss.saturating_sub(before.rss) < MEMORY_BOUND_KIB,
        "server RSS grew {} KiB (bound {MEMORY_BOUND_KIB} KiB: the send queue and QUIC windows)",
        after.rss - before.rss
    );
    assert!(
        after.data.saturating_sub(before.data) < MEMORY_BOUND_KIB,
        "server VmData grew {} KiB (bound {MEMORY_BOUND_KIB} KiB)",
        after.data - before.data
    );
    assert!(
        total < 4 * PER_STREAM,
        "the server read all {total} bytes of calls whose answers were never read"
    );
    // Everyone else is still served.
    let other = connect(&ep, server.addr, Some(&key), CALL).await.unwrap();
    assert!(answered(&one_call(&other, "/node/info").await));
    drop(streams);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_streams_announcing_16_mib_frames_cost_no_memory() {
    let key = ClientKey::generate().unwrap();
    let server = call_server(&key);
    let ep = quinn_endpoint();
    let warm = connect(&ep, server.addr, Some(&key), CALL).await.unwrap();
    assert!(answered(&one_call(&warm, "/node/info").await));
    let before = memory(&server);
    // A connection of its own, so all 100 streams it may open are the attack's.
    let conn = connect(&ep, server.addr, Some(&key), CALL).await.unwrap();

    // A call, then the header of a frame as long as the limit allows, and nothing more. The
    // call's answer shows the server read the header too (both came in one write, and the
    // stream's reader polls the rest before it next waits).
    let header = u32::try_from(DEFAULT_MAX_FRAME).unwrap().to_be_bytes();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .unwrap_or_else(|e| panic!("stream {i}: {e}; server log:\n{}", server.stderr()));
        tasks.push(tokio::spawn(async move {
            let mut bytes = request("/node/info");
            bytes.extend_from_slice(&header);
            send.write_all(&bytes).await.unwrap();
            let got = until_call_ends(&mut recv).await;
            assert!(answered(&got), "{got:?}");
            (send, recv)
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap());
    }
    let after = memory(&server);
    eprintln!(
        "100 streams with a 16 MiB header each: server VmRSS {} -> {} KiB, VmData {} -> {} KiB",
        before.rss, after.rss, before.data, after.data
    );
    assert!(
        after.data.saturating_sub(before.data) < MEMORY_BOUND_KIB,
        "server VmData grew {} KiB for 100 announced frames (bound {MEMORY_BOUND_KIB} KiB: \
         nothing is reserved before the bytes arrive)",
        after.data - before.data
    );
    assert!(
        after.rss.saturating_sub(before.rss) < MEMORY_BOUND_KIB,
        "server RSS grew {} KiB (bound {MEMORY_BOUND_KIB} KiB)",
        after.rss - before.rss
    );
    assert!(answered(&one_call(&warm, "/node/info").await));
    drop(held);
}

/// `fail2ban-regex` with the shipped filter on `log`: the addresses it would ban.
fn banned(log: &std::path::Path) -> String {
    let filter =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/fail2ban/alknet.conf");
    let out = std::process::Command::new("fail2ban-regex")
        .arg("--print-all-matched")
        .arg(log)
        .arg(&filter)
        .output()
        .expect("fail2ban-regex (Debian package fail2ban; .ci/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    // The matched lines only (the report lists the missed ones too).
    let matched = text
        .split("|- Matched line(s):")
        .nth(1)
        .and_then(|rest| rest.split("`-").next())
        .unwrap_or_default();
    format!(
        "{}\nmatched:\n{matched}",
        text.lines()
            .find(|l| l.starts_with("Lines:"))
            .unwrap_or_default()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_text_cannot_forge_a_failed_authentication_line() {
    let key = ClientKey::generate().unwrap();
    let server = call_server(&key);
    let ep = quinn_endpoint();
    let conn = connect(&ep, server.addr, Some(&key), CALL).await.unwrap();
    // Message types are logged with the protocol violation they are (at most 64 bytes).
    let forgeries = [
        // A line of its own after a newline (the date is optional to fail2ban).
        "x\n  WARN alknet::auth: authentication failed remote=6.6.6.6:1",
        "x\r\n WARN alknet::auth: authentication failed remote=6.6.6.7:1",
        // The pattern inside the line.
        "alknet::auth: authentication failed remote=7.7.7.7:1",
    ];
    for ty in forgeries {
        let body = json!({"type": ty, "id": new_id(), "payload": {}}).to_string();
        let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        frame.extend_from_slice(body.as_bytes());
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&frame).await.unwrap();
        // The violation is logged before it is answered.
        let got = until_call_ends(&mut recv).await;
        assert!(
            matches!(got.last().map(|m| &m.body), Some(Body::Error(_))),
            "{got:?}"
        );
    }
    // A genuine failure: an unknown key from 127.0.0.4.
    let stranger = quinn_endpoint_on("127.0.0.4");
    let c = connect(
        &stranger,
        server.addr,
        Some(&ClientKey::generate().unwrap()),
        CALL,
    )
    .await
    .unwrap();
    let _ = c.closed().await;

    let log = server.stderr();
    assert!(log.contains("6.6.6.6") && log.contains("7.7.7.7"), "{log}");
    let result = banned(&server.stderr_path);
    assert!(
        result.contains("127.0.0.4"),
        "genuine failure not matched: {result}"
    );
    for forged in ["6.6.6.6", "6.6.6.7", "7.7.7.7"] {
        assert!(
            !result.contains(forged),
            "the filter would ban {forged}, an address a peer wrote into the log:\n{result}\n{log}"
        );
    }
    assert!(result.contains("1 matched"), "{result}");
}
