//! Live reload of a real `alknet serve --config FILE`: the file edited, then SIGHUP or
//! `alknet reload`. Peers added get in, removed ones are cut, shrunk scopes and services
//! turned off cut exactly what went, and a malformed file changes nothing and is reported
//! with its file, line and key; the service manager hears RELOADING then READY.

use crate::support::*;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

const ECHO: &[u8] = b"alknet/echo";
const CALL: &[u8] = b"alknet/call";
/// Bound on every wait for an event (a close, a notification, a log line).
const BOUND: Duration = Duration::from_secs(15);

/// Close codes (`alknet_core::service::close_code`).
const UNAUTHORIZED: u32 = 0x2;
const FORBIDDEN: u32 = 0x3;
const REVOKED: u32 = 0x5;

/// Replaces the server's config file (the `listen` line it started with kept).
fn rewrite(server: &Server, body: &str) {
    let path = server.dir.path().join("alknet.toml");
    std::fs::write(path, format!("listen = \"127.0.0.1:0\"\n{body}")).unwrap();
}

/// The application close code a connection ends with, waited for at most [`BOUND`].
async fn close_code_of(conn: &quinn::Connection) -> u32 {
    let reason = tokio::time::timeout(BOUND, conn.closed())
        .await
        .expect("the session stayed open");
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner() as u32,
        other => panic!("unexpected close {other:?}"),
    }
}

/// The code a new connection of `key` to `alpn` is refused with (the handshake may end
/// first; the server closes right after it).
async fn refused_with(server: &Server, key: &ClientKey, alpn: &[u8]) -> u32 {
    let ep = quinn_endpoint();
    match connect(&ep, server.addr, Some(key), alpn).await {
        Ok(c) => close_code_of(&c).await,
        Err(quinn::ConnectionError::ApplicationClosed(c)) => c.error_code.into_inner() as u32,
        Err(other) => panic!("unexpected handshake error {other:?}"),
    }
}

/// A session that echoes, with its endpoint.
async fn echo_session(server: &Server, key: &ClientKey) -> (quinn::Endpoint, quinn::Connection) {
    let ep = quinn_endpoint();
    let conn = connect(&ep, server.addr, Some(key), ECHO)
        .await
        .expect("handshake of a granted session");
    assert_eq!(echo(&conn, b"up").await.unwrap(), b"up");
    (ep, conn)
}

/// A session on `alknet/call` that answered one request (`/node/info`).
async fn call_session(server: &Server, key: &ClientKey) -> (quinn::Endpoint, quinn::Connection) {
    let ep = quinn_endpoint();
    let conn = connect(&ep, server.addr, Some(key), CALL)
        .await
        .expect("handshake of a granted call session");
    (ep, conn)
}

/// `alknet reload --json`: (exit status, parsed answer or Null, stderr).
fn reload_cli(server: &Server) -> (i32, serde_json::Value, String) {
    let (code, out, err) = run_cli(&["reload", "--json"], &server.data_dir(), b"");
    let v = serde_json::from_str(out.trim()).unwrap_or(serde_json::Value::Null);
    (code, v, err)
}

fn names(v: &serde_json::Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Notifications until one starting with `prefix` arrives (bounded), all of them returned.
fn notifications_until(sock: &UnixDatagram, prefix: &str) -> Vec<String> {
    let until = Instant::now() + BOUND;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no `{prefix}` notification: {got:?}");
        sock.set_read_timeout(Some(left)).unwrap();
        let n = sock.recv(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = text.starts_with(prefix);
        got.push(text);
        if done {
            return got;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_peers_and_cuts_the_removed_peers_sessions() {
    let (alice, bob, carol) = (
        ClientKey::generate().unwrap(),
        ClientKey::generate().unwrap(),
        ClientKey::generate().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let body = |peers: &str| format!("workers = 2\n[services.echo]\nenabled = true\n{peers}");
    let server = Server::try_start_env(
        tempfile::tempdir().unwrap(),
        &body(&format!(
            "{}{}",
            peer_toml("alice", &alice, &["echo"]),
            peer_toml("bob", &bob, &["echo"])
        )),
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    )
    .unwrap();
    notifications_until(&notify, "READY=1");

    let bob_sessions = vec![
        echo_session(&server, &bob).await,
        echo_session(&server, &bob).await,
    ];
    assert_eq!(refused_with(&server, &carol, ECHO).await, UNAUTHORIZED);

    // Bob out, Carol in; SIGHUP.
    rewrite(
        &server,
        &body(&format!(
            "{}{}",
            peer_toml("alice", &alice, &["echo"]),
            peer_toml("carol", &carol, &["echo"])
        )),
    );
    server.signal(1);
    let seen = notifications_until(&notify, "READY=1");
    assert!(
        seen.iter()
            .any(|n| n.starts_with("RELOADING=1\nMONOTONIC_USEC=")),
        "RELOADING before READY: {seen:?}"
    );
    let ready = seen.last().unwrap();
    assert!(
        ready.contains("STATUS=") && !ready.contains("reload failed"),
        "{ready}"
    );

    // Bob's live sessions are cut as on revoke, on whichever shard they sit, and he is
    // refused from now on.
    for (_, c) in &bob_sessions {
        assert_eq!(close_code_of(c).await, REVOKED);
    }
    assert_eq!(refused_with(&server, &bob, ECHO).await, UNAUTHORIZED);
    // Carol gets in without a restart; Alice still does.
    let (_ep, carol_conn) = echo_session(&server, &carol).await;
    assert_eq!(echo(&carol_conn, b"hello").await.unwrap(), b"hello");
    let _alice = echo_session(&server, &alice).await;

    let log = server.stderr();
    assert!(
        log.contains("configuration reloaded")
            && log.contains("peers added carol")
            && log.contains("peers removed bob"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_file_is_refused_with_file_line_key_and_the_old_config_keeps_serving() {
    let (alice, carol) = (
        ClientKey::generate().unwrap(),
        ClientKey::generate().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let good = format!(
        "[services.echo]\nenabled = true\n{}",
        peer_toml("alice", &alice, &["echo"])
    );
    let server = Server::try_start_env(
        tempfile::tempdir().unwrap(),
        &good,
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    )
    .unwrap();
    notifications_until(&notify, "READY=1");
    let (_ep, alice_conn) = echo_session(&server, &alice).await;
    let file = server.dir.path().join("alknet.toml");

    // Line 4 (after the listen line): a key the transport section does not have, in a file
    // that would also add Carol.
    rewrite(
        &server,
        &format!(
            "[services.echo]\nenabled = true\n[transport]\nidle_timout = \"5s\"\n{}{}",
            peer_toml("alice", &alice, &["echo"]),
            peer_toml("carol", &carol, &["echo"])
        ),
    );
    let where_ = format!("{}:5: key `transport.idle_timout`", file.display());
    let (code, _, err) = reload_cli(&server);
    assert_ne!(code, 0, "a malformed file was accepted");
    assert!(err.contains(&where_), "{err}");
    assert!(err.contains("running configuration is unchanged"), "{err}");

    // SIGHUP: the same error, logged at error level; systemd hears READY with the failure.
    server.signal(1);
    let seen = notifications_until(&notify, "READY=1");
    let ready = seen.last().unwrap();
    assert!(ready.contains("STATUS=reload failed"), "{ready}");
    let log = server.stderr();
    assert!(
        log.contains("reload failed") && log.contains(&where_) && log.contains("ERROR"),
        "{log}"
    );

    // The old config keeps serving: Alice's session and new ones, and Carol stays out.
    assert!(alice_conn.close_reason().is_none());
    assert_eq!(echo(&alice_conn, b"still").await.unwrap(), b"still");
    let _again = echo_session(&server, &alice).await;
    assert_eq!(refused_with(&server, &carol, ECHO).await, UNAUTHORIZED);

    // A peer under two ids is refused too, naming where.
    rewrite(
        &server,
        &format!(
            "[services.echo]\nenabled = true\n{}{}",
            peer_toml("alice", &alice, &["echo"]),
            peer_toml("alias", &alice, &["echo"])
        ),
    );
    let (code, _, err) = reload_cli(&server);
    assert_ne!(code, 0);
    assert!(
        err.contains("key `peers.fingerprints`") && err.contains("peer `alice`"),
        "{err}"
    );

    // Fixed: `alknet reload` applies it and says what changed.
    rewrite(
        &server,
        &format!(
            "workers = 3\n[services.echo]\nenabled = true\n{}{}",
            peer_toml("alice", &alice, &["echo"]),
            peer_toml("carol", &carol, &["echo"])
        ),
    );
    let (code, v, err) = reload_cli(&server);
    assert_eq!(code, 0, "{err}");
    assert_eq!(names(&v, "peers_added"), ["carol"], "{v}");
    assert_eq!(names(&v, "needs_restart"), ["workers"], "{v}");
    let _carol = echo_session(&server, &carol).await;
    assert!(
        server.stderr().contains("needs a restart"),
        "{}",
        server.stderr()
    );
    // The text form names each change.
    let (code, out, err) = run_cli(&["reload"], &server.data_dir(), b"");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("nothing changed") || out.contains("needs a restart"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shrunk_scopes_and_a_service_turned_off_cut_only_what_went() {
    let alice = ClientKey::generate().unwrap();
    // One shard: a kept session and a cut one sit on it, so once the cut one is closed the
    // shard has applied the reload to the kept one too.
    let services = |echo: bool| {
        format!("workers = 1\n[services.echo]\nenabled = {echo}\n[services.call]\nenabled = true\n")
    };
    let server = Server::start(&format!(
        "{}{}",
        services(true),
        peer_toml("alice", &alice, &["echo", "call"])
    ));
    let (_e1, echo_conn) = echo_session(&server, &alice).await;
    let (_e2, call_conn) = call_session(&server, &alice).await;

    // Alice loses `call`: that session is cut as a handshake without the scope would be
    // refused; her echo session stays.
    rewrite(
        &server,
        &format!(
            "{}{}",
            services(true),
            peer_toml("alice", &alice, &["echo"])
        ),
    );
    let (code, v, err) = reload_cli(&server);
    assert_eq!(code, 0, "{err}");
    assert_eq!(names(&v, "peers_changed"), ["alice"], "{v}");
    assert_eq!(close_code_of(&call_conn).await, FORBIDDEN);
    assert!(
        echo_conn.close_reason().is_none(),
        "a granted session was cut"
    );
    assert_eq!(echo(&echo_conn, b"kept").await.unwrap(), b"kept");
    assert_eq!(refused_with(&server, &alice, CALL).await, FORBIDDEN);

    // The echo service turned off: its live session is closed, new ones refused.
    rewrite(
        &server,
        &format!(
            "{}{}",
            services(false),
            peer_toml("alice", &alice, &["echo", "call"])
        ),
    );
    let (code, v, err) = reload_cli(&server);
    assert_eq!(code, 0, "{err}");
    assert_eq!(names(&v, "services_disabled"), ["echo"], "{v}");
    assert_eq!(close_code_of(&echo_conn).await, REVOKED);
    assert_eq!(refused_with(&server, &alice, ECHO).await, FORBIDDEN);
    // Call is back for Alice (her scope returned with the same reload).
    let (_e3, call_again) = call_session(&server, &alice).await;
    assert!(call_again.close_reason().is_none());

    // And on again.
    rewrite(
        &server,
        &format!(
            "{}{}",
            services(true),
            peer_toml("alice", &alice, &["echo", "call"])
        ),
    );
    let (code, v, err) = reload_cli(&server);
    assert_eq!(code, 0, "{err}");
    assert_eq!(names(&v, "services_enabled"), ["echo"], "{v}");
    let _back = echo_session(&server, &alice).await;
    assert!(
        server.stderr().contains("service turned off"),
        "{}",
        server.stderr()
    );
}

#[test]
fn reload_without_a_config_file_says_there_is_nothing_to_reload() {
    // No --config: started as `alknet serve` with flags only.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = std::process::Command::new(ALKNET)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The `alpns` line comes once the control socket is up.
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    assert!(
        lines
            .by_ref()
            .any(|l| l.is_ok_and(|l| l.starts_with("alpns "))),
        "the server did not start"
    );
    let (code, _, err) = run_cli(&["reload"], &data, b"");
    let _ = child.kill();
    let _ = child.wait();
    assert_ne!(code, 0);
    assert!(err.contains("without --config"), "{err}");
}

#[test]
fn the_shipped_unit_reloads_with_sighup() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/alknet.service"),
    )
    .unwrap();
    let reload: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ExecReload="))
        .collect();
    assert_eq!(reload, ["/bin/kill -HUP $MAINPID"], "{unit}");
    // Type=notify: the RELOADING=1 … READY=1 the server sends around each reload shows in
    // `systemctl status`.
    assert!(unit.lines().any(|l| l.trim() == "Type=notify"), "{unit}");
}

#[test]
fn the_ssh_services_exec_allowlist_follows_a_reload() {
    let client = SshClient::new();
    let section = |allow: &str| {
        format!(
            "[services.ssh]\nenabled = true\nexec_allow = [\"{allow}\"]\n[[peers]]\nid = \"cron\"\nfingerprints = [\"{}\"]\nscopes = [\"ssh-exec\"]\n",
            client.fingerprint
        )
    };
    let server = Server::start(&section("echo first"));
    client.paste_config(&server, "gw");
    let (code, out, err) = client.run(None, &[], "echo first");
    assert_eq!((code, out.as_str()), (0, "first\n"), "{err}");
    let (code, out, _) = client.run(None, &[], "echo second");
    assert_ne!(code, 0, "a command off the allowlist ran: {out}");

    rewrite(&server, &section("echo second"));
    let (code, v, err) = reload_cli(&server);
    assert_eq!(code, 0, "{err}");
    assert_eq!(names(&v, "sections_reloaded"), ["ssh"], "{v}");
    // The next SSH connection runs under the new list, without a restart.
    let (code, out, err) = client.run(None, &[], "echo second");
    assert_eq!((code, out.as_str()), (0, "second\n"), "{err}");
    let (code, out, _) = client.run(None, &[], "echo first");
    assert_ne!(
        code, 0,
        "a command taken off the allowlist still ran: {out}"
    );
}

#[test]
fn reload_with_no_server_running_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run_cli(&["reload"], dir.path(), b"");
    assert_ne!(code, 0);
    assert!(
        err.contains("no server runs on") && err.contains("alknet serve --config"),
        "{err}"
    );
}
