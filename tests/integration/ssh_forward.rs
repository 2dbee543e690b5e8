//! SSH port forwarding end to end: the real OpenSSH client (`-L`, `-R`, `-W`, `-D`) through
//! a real `alknet serve` and its `[tunnels]` policy, to real TCP servers on loopback, and
//! `curl` through `-D`. What the policy refuses is refused as a channel open failure.

use crate::support::{Server, SshClient, pattern};
use crate::tcp_kit::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn peer(id: &str, fingerprint: &str, scopes: &[&str]) -> String {
    let scopes: Vec<String> = scopes.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "[[peers]]\nid = \"{id}\"\nfingerprints = [\"{fingerprint}\"]\nscopes = [{}]\n",
        scopes.join(", ")
    )
}

fn gateway(client: &SshClient, rules: &str) -> Server {
    let server = Server::start(&format!(
        "listen = \"127.0.0.1:0\"\n[services.ssh]\nenabled = true\n{}{rules}",
        peer("laptop", &client.fingerprint, &["ssh"])
    ));
    client.paste_config(&server, "gw");
    server
}

fn ssh_w(client: &SshClient, target: &str, stdin: &[u8]) -> (i32, String, String) {
    let mut child = client
        .ssh(None)
        .args(["-W", target, "gw"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh (Debian package openssh-client)");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("ssh output");
    let _ = writer.join();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn local_forward_moves_100_mb_with_a_matching_checksum() {
    let client = SshClient::new();
    let target = hash_server();
    let greet = greeter();
    let server = gateway(
        &client,
        &format!(
            "[tunnels]\nmax_connections_per_peer = 2\n[[tunnels.allow]]\npeer = \"laptop\"\nto = [\"127.0.0.1:{target}\", \"127.0.0.1:{greet}\"]\n"
        ),
    );
    let local = free_tcp_port();
    let greet_local = free_tcp_port();
    let mut cmd = client.ssh(None);
    cmd.args(["-N", "-o", "ExitOnForwardFailure=yes", "-L"])
        .arg(format!("127.0.0.1:{local}:127.0.0.1:{target}"))
        .arg("-L")
        .arg(format!("127.0.0.1:{greet_local}:127.0.0.1:{greet}"))
        .arg("gw");
    let mut ssh = Bg::spawn(cmd, client.dir.path(), "ssh-L");
    ssh.wait_listening(local);
    ssh.wait_listening(greet_local);

    let data = pattern(15, 100 << 20);
    let answer = send_and_hash(local, &data);
    assert_eq!(
        answer.trim(),
        format!("{} {}", data.len(), sha256_hex(&data)),
        "{}",
        ssh.stderr()
    );

    // The per-peer cap (2): two connections held open, the third refused (its channel is
    // never opened, so ssh closes the local connection without a greeting).
    let mut held = Vec::new();
    let until = Instant::now() + LIMIT;
    while held.len() < 2 {
        // An earlier forward may still be counted for a moment after it ended.
        if let Some(s) = greeted(greet_local) {
            held.push(s);
        }
        assert!(
            Instant::now() < until,
            "two forwards never held: {}",
            ssh.stderr()
        );
    }
    assert!(
        greeted(greet_local).is_none(),
        "a third forward passed the cap"
    );
    drop(held);
    let until = Instant::now() + LIMIT;
    while greeted(greet_local).is_none() {
        assert!(
            Instant::now() < until,
            "the cap was not released: {}",
            ssh.stderr()
        );
    }
    assert!(
        server.stderr().contains("forward ended"),
        "each forward is logged at its end"
    );
    assert!(
        !server.stderr().contains(&format!("127.0.0.1:{target}")),
        "the destination is not logged at info"
    );
}

#[test]
fn remote_forward_exposes_a_client_port_through_the_gateway() {
    let client = SshClient::new();
    let laptop_service = hash_server();
    let exposed = free_tcp_port();
    let server = gateway(
        &client,
        &format!("[[tunnels.allow]]\npeer = \"laptop\"\nlisten = [\"127.0.0.1:{exposed}\"]\n"),
    );
    let mut cmd = client.ssh(None);
    cmd.args(["-N", "-o", "ExitOnForwardFailure=yes", "-R"])
        .arg(format!("{exposed}:127.0.0.1:{laptop_service}"))
        .arg("gw");
    let mut ssh = Bg::spawn(cmd, client.dir.path(), "ssh-R");
    ssh.wait_listening(exposed);
    let data = pattern(16, 4 << 20);
    assert_eq!(
        send_and_hash(exposed, &data).trim(),
        format!("{} {}", data.len(), sha256_hex(&data)),
        "{}",
        ssh.stderr()
    );
    // The session's end closes its listener.
    drop(ssh);
    let until = Instant::now() + LIMIT;
    while TcpStream::connect(("127.0.0.1", exposed)).is_ok() {
        assert!(Instant::now() < until, "the listener outlived its session");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A port the rules do not list is refused, and ssh says so.
    let other = free_tcp_port();
    let mut cmd = client.ssh(None);
    cmd.args(["-N", "-o", "ExitOnForwardFailure=yes", "-R"])
        .arg(format!("{other}:127.0.0.1:{laptop_service}"))
        .arg("gw");
    let mut ssh = Bg::spawn(cmd, client.dir.path(), "ssh-R-refused");
    let status = ssh.wait_exit();
    assert!(!status.success());
    assert!(
        ssh.stderr().contains("remote port forwarding failed"),
        "{}",
        ssh.stderr()
    );
    assert!(server.stderr().contains("SSH forward refused"));
}

#[test]
fn stdio_forward_and_dynamic_forward_carry_a_transfer_and_a_curl_fetch() {
    let client = SshClient::new();
    let target = hash_server();
    let web = http_server("hello through the gateway\n");
    let _server = gateway(
        &client,
        &format!(
            "[[tunnels.allow]]\npeer = \"laptop\"\nto = [\"127.0.0.1:{target}\", \"127.0.0.1:{web}\"]\n"
        ),
    );
    // -W: stdin to the target, its answer on stdout.
    let data = pattern(17, 1 << 20);
    let (code, out, err) = ssh_w(&client, &format!("127.0.0.1:{target}"), &data);
    assert_eq!(
        (code, out.trim()),
        (0, format!("{} {}", data.len(), sha256_hex(&data)).as_str()),
        "{err}"
    );

    // -D: curl resolves nothing itself; `localhost` is resolved on the gateway, and only
    // its 127.0.0.1 answer is allowed (by the address rule).
    let socks = free_tcp_port();
    let mut cmd = client.ssh(None);
    cmd.args(["-N", "-o", "ExitOnForwardFailure=yes", "-D"])
        .arg(format!("127.0.0.1:{socks}"))
        .arg("gw");
    let mut ssh = Bg::spawn(cmd, client.dir.path(), "ssh-D");
    ssh.wait_listening(socks);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--socks5-hostname"])
        .arg(format!("127.0.0.1:{socks}"))
        .arg(format!("http://localhost:{web}/"))
        .output()
        .expect("curl (Debian package curl; .ci/test installs it)");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello through the gateway\n",
        "curl: {} ssh: {}",
        String::from_utf8_lossy(&out.stderr),
        ssh.stderr()
    );
    // A name the rules do not open fails the fetch.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--socks5-hostname"])
        .arg(format!("127.0.0.1:{socks}"))
        .arg(format!("http://localhost:{target}/"))
        .output()
        .expect("curl");
    assert!(!out.status.success());
}

#[test]
fn forbidden_targets_are_refused_over_ssh() {
    let client = SshClient::new();
    let allowed = hash_server();
    // A live service the rules do not name: a refusal is the policy, not a closed port.
    let hidden = hash_server();
    let rules = format!(
        "[[tunnels.allow]]\npeer = \"laptop\"\nto = [\"*:*\", \"0.0.0.0/0:*\", \"[::/0]:*\", \"localhost:*\", \"127.0.0.1:{allowed}\"]\n"
    );
    let _server = gateway(&client, &rules);
    let mut forbidden: Vec<String> = [
        "127.0.0.1",
        "127.0.0.2",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "localhost",
        "0.0.0.0",
    ]
    .iter()
    .map(|h| format!("{h}:{hidden}"))
    .collect();
    forbidden.extend(
        [
            "169.254.169.254:80",
            "[fe80::1]:80",
            "[fd00::1]:80",
            "10.0.0.1:22",
            "172.16.0.1:80",
            "192.168.0.1:80",
            "100.64.0.1:80",
        ]
        .map(String::from),
    );
    if let Some(own) = own_address() {
        forbidden.push(format!("{own}:{hidden}"));
    }
    // One SSH connection, one -L per forbidden target: each connection to a local port
    // is refused at the gateway (ssh closes it without an answer and logs the failure).
    let mut cmd = client.ssh(None);
    cmd.args(["-N", "-o", "ExitOnForwardFailure=yes"]);
    let mut locals = Vec::new();
    for target in &forbidden {
        let local = free_tcp_port();
        cmd.arg("-L").arg(format!("127.0.0.1:{local}:{target}"));
        locals.push(local);
    }
    cmd.arg("gw");
    let mut ssh = Bg::spawn(cmd, client.dir.path(), "ssh-L-forbidden");
    for (target, local) in forbidden.iter().zip(&locals) {
        ssh.wait_listening(*local);
        assert_eq!(send_and_hash(*local, b"x"), "", "{target} was forwarded");
    }
    let until = Instant::now() + LIMIT;
    while ssh.stderr().matches("administratively prohibited").count() < 2 * forbidden.len() {
        // Each target: the probe of wait_listening and the attempt above.
        assert!(
            Instant::now() < until,
            "not every forbidden target was refused by the policy: {}",
            ssh.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = ssh.stderr();
    assert!(log.contains("loopback address"), "{log}");
    assert!(log.contains("unique-local address"), "{log}");
    assert!(log.contains("private address"), "{log}");
    drop(ssh);
    // The one named is allowed.
    let (code, out, err) = ssh_w(&client, &format!("127.0.0.1:{allowed}"), b"ok");
    assert_eq!(
        (code, out.trim()),
        (0, format!("2 {}", sha256_hex(b"ok")).as_str()),
        "{err}"
    );

    // Under the default policy, even that one is refused.
    let plain = SshClient::new();
    let _default = gateway(&plain, "");
    let (code, _, err) = ssh_w(&plain, &format!("127.0.0.1:{allowed}"), b"x");
    assert_ne!(code, 0);
    assert!(err.contains("administratively prohibited"), "{err}");

    // An ssh-exec peer may not forward, whatever the rules.
    let exec = SshClient::new();
    let server = Server::start(&format!(
        "[services.ssh]\nenabled = true\nexec_allow = [\"true\"]\n{}[[tunnels.allow]]\npeer = \"runner\"\nto = [\"127.0.0.1:{allowed}\"]\n",
        peer("runner", &exec.fingerprint, &["ssh-exec"])
    ));
    exec.paste_config(&server, "gw");
    let (code, _, err) = ssh_w(&exec, &format!("127.0.0.1:{allowed}"), b"x");
    assert_ne!(code, 0);
    assert!(err.contains("administratively prohibited"), "{err}");
}

/// Copies `from` to `to` until EOF or an error, then half-closes `to` with `done`.
fn pump(mut from: impl Read, mut to: impl Write, done: impl FnOnce()) {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                    break;
                }
            }
        }
    }
    done();
}

/// A TCP port on loopback whose every connection becomes an `alknet connect` to `server`'s
/// `alknet/ssh` (its stdin and stdout the TCP stream): a second SSH gateway that has no
/// `sshd` and no TCP port of its own, reachable over TCP for `ssh -W`. (Copied chunk by
/// chunk: `std::io::copy` between a socket and a pipe splices, and holds bytes back.)
fn alknet_connect_relay(server: &Server, client: &SshClient) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let addr = server.addr.to_string();
    let fingerprint = server.fingerprint.clone();
    let data = client.data_dir();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(tcp) = s else { continue };
            let child = Command::new(crate::support::ALKNET)
                .arg("--data-dir")
                .arg(&data)
                .args(["connect", &addr, "--alpn", "alknet/ssh", "--fingerprint"])
                .arg(&fingerprint)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn();
            let Ok(mut child) = child else { continue };
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                continue;
            };
            let Ok(tcp_in) = tcp.try_clone() else {
                continue;
            };
            std::thread::spawn(move || pump(tcp_in, stdin, || ()));
            std::thread::spawn(move || {
                pump(stdout, &tcp, || {
                    let _ = tcp.shutdown(Shutdown::Both);
                });
                let _ = child.kill();
                let _ = child.wait();
            });
        }
    });
    port
}

#[test]
fn proxyjump_reaches_a_second_gateway_through_the_first() {
    let client = SshClient::new();
    let inner = Server::start(&format!(
        "listen = \"127.0.0.1:0\"\n[services.ssh]\nenabled = true\n{}",
        peer("laptop", &client.fingerprint, &["ssh"])
    ));
    let relay = alknet_connect_relay(&inner, &client);
    let outer = gateway(
        &client,
        &format!("[[tunnels.allow]]\npeer = \"laptop\"\nto = [\"127.0.0.1:{relay}\"]\n"),
    );
    // The inner gateway's block, reached with ProxyJump through `gw` instead of its own
    // ProxyCommand; the options `ssh()` gives on its command line go into the file, where
    // the jump's own ssh reads them too.
    let data = client.data_dir();
    let (code, block, err) = crate::support::run_cli(
        &[
            "ssh-config",
            &inner.addr.to_string(),
            "--name",
            "inner",
            "--alknet",
            crate::support::ALKNET,
            "--client-data-dir",
            data.to_str().expect("utf-8 path"),
        ],
        &inner.data_dir(),
        b"",
    );
    assert_eq!(code, 0, "alknet ssh-config: {err}");
    let mut config = std::fs::read_to_string(&client.config).expect("gw block");
    for line in block.lines() {
        let t = line.trim_start();
        if t.starts_with("ProxyCommand") || t.starts_with("HostName") || t.starts_with("Port") {
            continue;
        }
        config.push_str(line);
        config.push('\n');
        if t.starts_with("Host ") {
            config.push_str(&format!(
                "    HostName 127.0.0.1\n    Port {relay}\n    ProxyJump gw\n"
            ));
        }
    }
    config.push_str(&format!(
        "Host *\n    BatchMode yes\n    IdentitiesOnly yes\n    IdentityFile none\n    StrictHostKeyChecking yes\n    UserKnownHostsFile {}\n    GlobalKnownHostsFile /dev/null\n",
        client.dir.path().join("known_hosts").display()
    ));
    std::fs::write(&client.config, config).expect("write config");
    let out = client
        .ssh(None)
        .args(["inner", "echo through two gateways"])
        .stdin(Stdio::null())
        .output()
        .expect("ssh");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "through two gateways\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The hop was a forward through the outer gateway, logged when it ended.
    let until = Instant::now() + LIMIT;
    while !outer.stderr().contains("forward ended") {
        assert!(Instant::now() < until, "{}", outer.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn revoking_the_peer_cuts_its_forwards_and_closes_its_listeners() {
    let client = SshClient::new();
    let (events_tx, events) = std::sync::mpsc::channel();
    let greet = greeter_telling(Some(events_tx));
    let exposed = free_tcp_port();
    let laptop_service = hash_server();
    let server = Server::start(&format!(
        "listen = \"127.0.0.1:0\"\n[services.ssh]\nenabled = true\n[[tunnels.allow]]\npeer = \"laptop\"\nto = [\"127.0.0.1:{greet}\"]\nlisten = [\"127.0.0.1:{exposed}\"]\n"
    ));
    let (code, _, err) = crate::support::run_cli(
        &[
            "peer",
            "add",
            "laptop",
            "--fingerprint",
            &client.fingerprint,
            "--scope",
            "ssh",
        ],
        &server.data_dir(),
        b"",
    );
    assert_eq!(code, 0, "peer add: {err}");
    client.paste_config(&server, "gw");
    let local = free_tcp_port();
    let mut cmd = client.ssh(None);
    cmd.args(["-N", "-o", "ExitOnForwardFailure=yes", "-L"])
        .arg(format!("127.0.0.1:{local}:127.0.0.1:{greet}"))
        .arg("-R")
        .arg(format!("{exposed}:127.0.0.1:{laptop_service}"))
        .arg("gw");
    let mut ssh = Bg::spawn(cmd, client.dir.path(), "ssh-revoked");
    ssh.wait_listening(local);
    ssh.wait_listening(exposed);
    let until = Instant::now() + LIMIT;
    let _held = loop {
        if let Some(s) = greeted(local) {
            break s;
        }
        assert!(Instant::now() < until, "no forward: {}", ssh.stderr());
    };

    let (code, _, err) =
        crate::support::run_cli(&["peer", "revoke", "laptop"], &server.data_dir(), b"");
    assert_eq!(code, 0, "peer revoke: {err}");
    // The gateway drops the forwarded connection to the target (while the client's local
    // end is still open: its ssh learns of the cut only later), and closes the listener:
    // every connection the target saw, the held one among them, has ended.
    let until = Instant::now() + LIMIT;
    let mut open = 0;
    loop {
        while let Ok(e) = events.try_recv() {
            open += e;
        }
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the forward outlived the revocation: {}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let until = Instant::now() + LIMIT;
    while TcpStream::connect(("127.0.0.1", exposed)).is_ok() {
        assert!(
            Instant::now() < until,
            "the listener outlived the revocation"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let until = Instant::now() + LIMIT;
    while !server.stderr().contains("forward ended") {
        assert!(Instant::now() < until, "{}", server.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}
