//! Revocation that is complete: removing a key or a scope from a peer cuts exactly the live
//! sessions that depended on it, and one key never authenticates two peers.

use crate::support::*;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ECHO: &[u8] = b"alknet/echo";
const CALL: &[u8] = b"alknet/call";
/// How long a cut session may outlive the `peer update` that removed its grant.
const CUT_WITHIN: Duration = Duration::from_secs(2);
/// Sessions opened at most while looking for one on every shard.
const MAX_TRIES: usize = 24;

const TWO_SERVICES: &str =
    "workers = 2\n[services.echo]\nenabled = true\n[services.call]\nenabled = true\n";

fn cli_ok(server: &Server, args: &[&str]) -> String {
    let (code, out, err) = run_cli(args, &server.data_dir(), b"");
    assert_eq!(code, 0, "alknet {args:?}: {err}");
    out
}

/// The shard holding the session that came from `local`. The client's handshake can end
/// before the server has read its last flight, so the session appears on the board a
/// moment later: waited for, bounded.
async fn shard_of(server: &Server, local: std::net::SocketAddr) -> u64 {
    let list = || {
        alknet_core::ops::control::request(
            &server.data_dir(),
            &alknet_core::ops::control::Request::Sessions,
        )
        .expect("sessions request")
    };
    let find = |v: &serde_json::Value| {
        v.as_array().and_then(|l| {
            l.iter()
                .find(|s| s["remote"] == local.to_string())
                .and_then(|s| s["shard"].as_u64())
        })
    };
    wait_for(Duration::from_secs(5), "the session on the board", || {
        find(&list()).is_some()
    })
    .await;
    find(&list()).unwrap_or_else(|| panic!("no session from {local}"))
}

/// One session from its own UDP port (so `alknet sessions` tells it apart), and its shard.
async fn session(
    server: &Server,
    key: &ClientKey,
    alpn: &[u8],
) -> (quinn::Endpoint, quinn::Connection, u64) {
    let ep = quinn_endpoint();
    let conn = connect(&ep, server.addr, Some(key), alpn)
        .await
        .expect("handshake of a granted session");
    if alpn == ECHO {
        assert_eq!(echo(&conn, b"up").await.unwrap(), b"up");
    }
    let local = ep.local_addr().expect("local addr");
    let shard = shard_of(server, local).await;
    (ep, conn, shard)
}

/// Sessions to be cut, opened until they sit on every shard a kept session sits on: once
/// each of them is closed, every shard holding a kept session has rechecked it.
async fn sessions_covering(
    server: &Server,
    key: &ClientKey,
    alpn: &[u8],
    shards: &BTreeSet<u64>,
) -> Vec<(quinn::Endpoint, quinn::Connection)> {
    let mut out = Vec::new();
    let mut covered = BTreeSet::new();
    for _ in 0..MAX_TRIES {
        let (ep, conn, shard) = session(server, key, alpn).await;
        covered.insert(shard);
        out.push((ep, conn));
        if shards.is_subset(&covered) && out.len() >= 2 {
            return out;
        }
    }
    panic!("{MAX_TRIES} sessions never reached shards {shards:?} (got {covered:?})");
}

async fn assert_cut(conns: &[(quinn::Endpoint, quinn::Connection)], code: u32, what: &str) {
    let t0 = Instant::now();
    for (_, c) in conns {
        let left = CUT_WITHIN.saturating_sub(t0.elapsed());
        let reason = tokio::time::timeout(left, c.closed())
            .await
            .unwrap_or_else(|_| panic!("a session {what} outlived the {CUT_WITHIN:?} bound"));
        match reason {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, quinn::VarInt::from_u32(code), "{what}");
            }
            other => panic!("{what}: unexpected close {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_update_remove_scope_cuts_the_sessions_of_that_service_only() {
    let server = Server::start(TWO_SERVICES);
    let alice = ClientKey::generate().unwrap();
    cli_ok(
        &server,
        &[
            "peer",
            "add",
            "alice",
            "--fingerprint",
            &alice.fingerprint,
            "--scope",
            "echo",
            "--scope",
            "call",
        ],
    );
    let mut kept = Vec::new();
    let mut shards = BTreeSet::new();
    for _ in 0..2 {
        let (ep, conn, shard) = session(&server, &alice, ECHO).await;
        shards.insert(shard);
        kept.push((ep, conn));
    }
    let cut = sessions_covering(&server, &alice, CALL, &shards).await;

    cli_ok(
        &server,
        &["peer", "update", "alice", "--remove-scope", "call"],
    );
    // FORBIDDEN (3), as a handshake lacking the scope is refused.
    assert_cut(&cut, 3, "on a removed scope").await;
    for (_, c) in &kept {
        assert!(c.close_reason().is_none(), "a granted session was cut");
        assert_eq!(echo(c, b"still").await.unwrap(), b"still");
    }
    let log = server.stderr();
    assert!(
        log.contains("authorization withdrawn") && log.contains("missing scope"),
        "{log}"
    );
    // Withdrawn grants are the operator's doing: not a line fail2ban bans on.
    assert!(!log.contains("authentication failed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_update_remove_fingerprint_cuts_the_sessions_of_that_key_only() {
    let server = Server::start(TWO_SERVICES);
    let (old, new) = (
        ClientKey::generate().unwrap(),
        ClientKey::generate().unwrap(),
    );
    cli_ok(
        &server,
        &[
            "peer",
            "add",
            "alice",
            "--fingerprint",
            &old.fingerprint,
            "--fingerprint",
            &new.fingerprint,
            "--scope",
            "echo",
        ],
    );
    let mut kept = Vec::new();
    let mut shards = BTreeSet::new();
    for _ in 0..2 {
        let (ep, conn, shard) = session(&server, &new, ECHO).await;
        shards.insert(shard);
        kept.push((ep, conn));
    }
    let cut = sessions_covering(&server, &old, ECHO, &shards).await;

    cli_ok(
        &server,
        &[
            "peer",
            "update",
            "alice",
            "--remove-fingerprint",
            &old.fingerprint,
        ],
    );
    // UNAUTHORIZED (2), as a handshake with an unknown key is refused.
    assert_cut(&cut, 2, "with a removed key").await;
    for (_, c) in &kept {
        assert!(
            c.close_reason().is_none(),
            "a session of a kept key was cut"
        );
        assert_eq!(echo(c, b"still").await.unwrap(), b"still");
    }
    assert!(server.stderr().contains("unknown key"));
}

/// Runs `alknet serve` on `data`, expecting it to refuse to start (bounded: a server that
/// starts is killed and fails the test); returns the config path and stderr.
fn serve_refused(dir: &std::path::Path, data: &std::path::Path, config: &str) -> (String, String) {
    let cfg = dir.join("alknet.toml");
    std::fs::write(&cfg, format!("listen = \"127.0.0.1:0\"\n{config}")).unwrap();
    let child = Command::new(ALKNET)
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(Ok(output)) = rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        panic!("alknet serve started with one key under two peers");
    };
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "serve exited 0: {err}");
    (cfg.display().to_string(), err)
}

#[test]
fn one_key_under_two_config_peers_is_a_start_up_error_naming_both() {
    let key = ClientKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[services.echo]\nenabled = true\n{}{}",
        peer_toml("laptop", &key, &["echo"]),
        peer_toml("phone", &key, &["*"]),
    );
    let (cfg, err) = serve_refused(dir.path(), &dir.path().join("data"), &config);
    assert!(
        err.contains("peer `laptop` (line 6) and peer `phone`"),
        "both peers named: {err}"
    );
    assert!(err.contains(&key.fingerprint), "{err}");
    // listen, [services.echo], enabled, then laptop on 4..=7 and phone from 8: its key on 10.
    assert!(
        err.contains(&format!("{cfg}:10: key `peers.fingerprints`")),
        "file and line of the second peer: {err}"
    );
}

#[test]
fn one_key_in_the_config_and_the_store_is_a_start_up_error_naming_both() {
    let key = ClientKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, _, err) = run_cli(
        &["peer", "add", "stored", "--fingerprint", &key.fingerprint],
        &data,
        b"",
    );
    assert_eq!(code, 0, "{err}");
    let config = format!(
        "[services.echo]\nenabled = true\n{}",
        peer_toml("filed", &key, &["echo"])
    );
    let (cfg, err) = serve_refused(dir.path(), &data, &config);
    assert!(
        err.contains(&format!("peer `filed` ({cfg}:5)"))
            && err.contains("peer `stored` (identity store")
            && err.contains(&key.fingerprint),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_a_config_peer_is_refused_at_peer_add_and_update() {
    let key = ClientKey::generate().unwrap();
    let server = Server::start(&format!(
        "[services.echo]\nenabled = true\n{}",
        peer_toml("laptop", &key, &["echo"])
    ));
    let (code, _, err) = run_cli(
        &["peer", "add", "thief", "--fingerprint", &key.fingerprint],
        &server.data_dir(),
        b"",
    );
    assert_eq!(code, 1, "a second peer got a config peer's key");
    assert!(err.contains("already belongs to peer `laptop`"), "{err}");
    let other = ClientKey::generate().unwrap();
    cli_ok(
        &server,
        &["peer", "add", "erin", "--fingerprint", &other.fingerprint],
    );
    let (code, _, err) = run_cli(
        &[
            "peer",
            "update",
            "erin",
            "--add-fingerprint",
            &key.fingerprint,
        ],
        &server.data_dir(),
        b"",
    );
    assert_eq!(code, 1, "a second peer got a config peer's key");
    assert!(err.contains("already belongs to peer `laptop`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_peers_cannot_be_changed_at_run_time_and_the_cli_says_where_they_are() {
    let key = ClientKey::generate().unwrap();
    let server = Server::start(&format!(
        "[services.echo]\nenabled = true\n{}",
        peer_toml("laptop", &key, &["echo"])
    ));
    let cfg = server.dir.path().join("alknet.toml");
    for args in [
        &["peer", "disable", "laptop"][..],
        &["peer", "revoke", "laptop"][..],
        &["peer", "update", "laptop", "--remove-scope", "echo"][..],
    ] {
        let (code, _, err) = run_cli(args, &server.data_dir(), b"");
        assert_eq!(code, 1, "{args:?} changed a config peer");
        assert!(
            err.contains(&format!("{}:5", cfg.display())) && err.contains("enabled = false"),
            "{args:?}: {err}"
        );
    }
    // Listed and shown all the same, marked as the file's.
    let out = cli_ok(&server, &["peer", "show", "laptop"]);
    assert!(out.contains(&key.fingerprint), "{out}");
    let out = cli_ok(&server, &["peer", "list"]);
    assert!(out.contains("laptop"), "{out}");
    // Its session is untouched.
    let ep = quinn_endpoint();
    let c = connect(&ep, server.addr, Some(&key), ECHO).await.unwrap();
    assert_eq!(echo(&c, b"ok").await.unwrap(), b"ok");
}
