//! Peers managed at run time: `alknet peer` through the control socket, live revocation,
//! key wrappers, sessions, and per-source penalties.

use crate::support::*;
use std::time::{Duration, Instant};

const ECHO: &[u8] = b"alknet/echo";

fn add_peer(server: &Server, name: &str, key: &ClientKey) {
    let (code, out, err) = run_cli(
        &[
            "peer",
            "add",
            name,
            "--fingerprint",
            &key.fingerprint,
            "--scope",
            "echo",
        ],
        &server.data_dir(),
        b"",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("added peer {name}")), "{out}");
}

fn sessions(server: &Server) -> Vec<serde_json::Value> {
    let (code, out, err) = run_cli(&["sessions", "--json"], &server.data_dir(), b"");
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_cuts_live_sessions_within_a_second_and_only_that_peer() {
    let server = Server::start("workers = 2\n[services.echo]\nenabled = true\n");
    let (alice, bob) = (
        ClientKey::generate().unwrap(),
        ClientKey::generate().unwrap(),
    );
    add_peer(&server, "alice", &alice);
    add_peer(&server, "bob", &bob);
    let ep = quinn_endpoint();
    let mut a_conns = Vec::new();
    let mut b_conns = Vec::new();
    for _ in 0..20 {
        a_conns.push(connect(&ep, server.addr, Some(&alice), ECHO).await.unwrap());
        b_conns.push(connect(&ep, server.addr, Some(&bob), ECHO).await.unwrap());
    }
    for c in a_conns.iter().chain(&b_conns) {
        assert_eq!(echo(c, b"ping").await.unwrap(), b"ping");
    }
    let listed = sessions(&server);
    let count = |who: &str| listed.iter().filter(|s| s["peer"] == who).count();
    assert_eq!((count("alice"), count("bob")), (20, 20), "{listed:?}");

    let t0 = Instant::now();
    let (code, _, err) = run_cli(&["peer", "revoke", "alice"], &server.data_dir(), b"");
    assert_eq!(code, 0, "{err}");
    for c in &a_conns {
        let left = Duration::from_secs(1).saturating_sub(t0.elapsed());
        let reason = tokio::time::timeout(left, c.closed())
            .await
            .expect("a revoked session outlived the 1 s bound");
        match reason {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, quinn::VarInt::from_u32(5));
            }
            other => panic!("unexpected close {other:?}"),
        }
    }
    for c in &b_conns {
        assert!(c.close_reason().is_none());
        assert_eq!(echo(c, b"still").await.unwrap(), b"still");
    }
    // The revoked key cannot come back.
    let again = connect(&ep, server.addr, Some(&alice), ECHO).await.unwrap();
    assert!(echo(&again, b"x").await.is_err());
    match again.closed().await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(2));
        }
        other => panic!("unexpected close {other:?}"),
    }

    // Disabling works the same way and is reversible.
    let (code, _, err) = run_cli(&["peer", "disable", "bob"], &server.data_dir(), b"");
    assert_eq!(code, 0, "{err}");
    for c in &b_conns {
        tokio::time::timeout(Duration::from_secs(1), c.closed())
            .await
            .expect("a disabled session stayed open");
    }
    let (code, _, err) = run_cli(&["peer", "enable", "bob"], &server.data_dir(), b"");
    assert_eq!(code, 0, "{err}");
    let back = connect(&ep, server.addr, Some(&bob), ECHO).await.unwrap();
    assert_eq!(echo(&back, b"back").await.unwrap(), b"back");

    let (_, out, _) = run_cli(&["peer", "list", "--json"], &server.data_dir(), b"");
    let peers: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["bob"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_in_another_certificate_is_the_same_peer() {
    let server = Server::start("[services.echo]\nenabled = true\n");
    let key = ClientKey::generate().unwrap();
    add_peer(&server, "carol", &key);
    let other = key.rewrap().unwrap();
    assert_ne!(key.cert, other.cert);
    let ep = quinn_endpoint();
    let c1 = connect(&ep, server.addr, Some(&key), ECHO).await.unwrap();
    let c2 = connect(&ep, server.addr, Some(&other), ECHO).await.unwrap();
    assert_eq!(echo(&c1, b"1").await.unwrap(), b"1");
    assert_eq!(echo(&c2, b"2").await.unwrap(), b"2");
    let listed = sessions(&server);
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|s| s["peer"] == "carol"), "{listed:?}");
    // A different key never matches.
    let stranger = connect(
        &ep,
        server.addr,
        Some(&ClientKey::generate().unwrap()),
        ECHO,
    )
    .await
    .unwrap();
    assert!(echo(&stranger, b"x").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_penalise_only_their_source() {
    let server = Server::start("[services.echo]\nenabled = true\n");
    let key = ClientKey::generate().unwrap();
    add_peer(&server, "dave", &key);
    let attacker = quinn_endpoint_on("127.0.0.2");
    for _ in 0..6 {
        let c = connect(
            &attacker,
            server.addr,
            Some(&ClientKey::generate().unwrap()),
            ECHO,
        )
        .await
        .unwrap();
        let _ = c.closed().await;
    }
    // Now even a good key from that source gets no answer...
    let blocked = tokio::time::timeout(
        Duration::from_secs(2),
        connect(&attacker, server.addr, Some(&key), ECHO),
    )
    .await;
    assert!(blocked.is_err(), "a penalised source still got a handshake");
    assert!(server.counter("dropped_penalty") > 0);
    // ...while other sources are served.
    let good = connect(&quinn_endpoint(), server.addr, Some(&key), ECHO)
        .await
        .unwrap();
    assert_eq!(echo(&good, b"ok").await.unwrap(), b"ok");
    let log = server.stderr();
    assert!(log.contains("source penalised"), "{log}");
    assert!(log.matches("authentication failed").count() >= 6);
    assert!(log.contains("127.0.0.2"));
}

#[test]
fn peer_commands_work_on_the_store_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let key = ClientKey::generate().unwrap();
    let (code, _, err) = run_cli(
        &[
            "peer",
            "add",
            "erin",
            "--fingerprint",
            &key.fingerprint,
            "--scope",
            "echo",
        ],
        dir.path(),
        b"",
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run_cli(&["peer", "show", "erin"], dir.path(), b"");
    assert_eq!(code, 0);
    assert!(
        out.contains(&key.fingerprint) && out.contains("echo"),
        "{out}"
    );
    // Duplicate ids and keys are refused with a clear line.
    let (code, _, err) = run_cli(
        &["peer", "add", "erin", "--fingerprint", &key.fingerprint],
        dir.path(),
        b"",
    );
    assert_eq!(code, 1);
    assert!(err.contains("exists"), "{err}");
    let (code, _, err) = run_cli(
        &["peer", "add", "frank", "--fingerprint", &key.fingerprint],
        dir.path(),
        b"",
    );
    assert_eq!(code, 1);
    assert!(err.contains("already belongs to peer `erin`"), "{err}");
    // Tokens: shown once, listed by prefix only.
    let (code, token, err) = run_cli(
        &[
            "token",
            "create",
            "erin",
            "--scope",
            "call",
            "--expires-in",
            "30d",
        ],
        dir.path(),
        b"",
    );
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_owned();
    assert!(token.starts_with("alk_") && token.len() == 44, "{token}");
    let (_, list, _) = run_cli(&["token", "list"], dir.path(), b"");
    assert!(
        list.contains(&token[4..12]) && !list.contains(&token),
        "{list}"
    );
    let (code, _, err) = run_cli(&["peer", "revoke", "erin"], dir.path(), b"");
    assert_eq!(code, 0, "{err}");
    let (_, list, _) = run_cli(&["token", "list"], dir.path(), b"");
    assert!(
        !list.contains(&token[4..12]),
        "tokens outlived their peer: {list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail2ban_filter_matches_every_failed_authentication() {
    let server = Server::start("[services.echo]\nenabled = true\n");
    let ep = quinn_endpoint_on("127.0.0.3");
    for _ in 0..3 {
        let c = connect(
            &ep,
            server.addr,
            Some(&ClientKey::generate().unwrap()),
            ECHO,
        )
        .await
        .unwrap();
        let _ = c.closed().await;
    }
    let filter =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/fail2ban/alknet.conf");
    let out = std::process::Command::new("fail2ban-regex")
        .arg("--print-all-matched")
        .arg(&server.stderr_path)
        .arg(&filter)
        .output()
        .expect("fail2ban-regex (Debian package fail2ban; .ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 matched"), "{text}");
    assert!(text.contains("127.0.0.3"), "{text}");
}
