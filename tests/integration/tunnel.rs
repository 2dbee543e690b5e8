//! The tunnel service (`alknet/tunnel`) end to end with its own clients: `alknet forward
//! -L/-R` and `alknet socks` as people run them, through a real `alknet serve` and its
//! `[tunnels]` policy, to real TCP servers on loopback, with `curl` through the SOCKS
//! proxy. Covered: checksums through both directions, 100 concurrent connections, the policy
//! over this transport (each refusal seen as the SOCKS reply a client gets), caps, a client
//! without the scope, reconnection after the gateway restarts, and a source-port change
//! under eight transfers at once.

use crate::support::{ALKNET, Server, free_udp_port, pattern, run_cli};
use crate::tcp_kit::*;
use alknet_testkit::relay::UdpRelay;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// A client machine: its own data directory (its key).
struct Client {
    dir: tempfile::TempDir,
    fingerprint: String,
}

impl Client {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (code, fp, err) = run_cli(&["id"], dir.path(), b"");
        assert_eq!(code, 0, "alknet id: {err}");
        Self {
            dir,
            fingerprint: fp.trim().to_owned(),
        }
    }

    fn peer(&self, id: &str, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| format!("{s:?}")).collect();
        format!(
            "[[peers]]\nid = \"{id}\"\nfingerprints = [\"{}\"]\nscopes = [{}]\n",
            self.fingerprint,
            scopes.join(", ")
        )
    }

    /// `alknet <cmd> SERVER --fingerprint FP ARGS…` in the background.
    fn spawn(&self, cmd: &str, server: SocketAddr, fingerprint: &str, args: &[String]) -> Bg {
        let mut c = Command::new(ALKNET);
        c.arg("--data-dir")
            .arg(self.dir.path())
            .args([cmd, &server.to_string(), "--fingerprint", fingerprint])
            .args(args)
            .env("RUST_LOG", "info,alknet_tunnel=debug");
        Bg::spawn(c, self.dir.path(), cmd)
    }
}

fn gateway(client: &Client, rules: &str) -> Server {
    Server::start(&format!(
        "listen = \"127.0.0.1:0\"\n{}{rules}",
        client.peer("laptop", &["tunnel"])
    ))
}

fn expect_hash(port: u16, data: &[u8], bg: &Bg) {
    assert_eq!(
        send_and_hash(port, data).trim(),
        format!("{} {}", data.len(), sha256_hex(data)),
        "{}",
        bg.stderr()
    );
}

/// A SOCKS5 CONNECT to `target` (`host`, `port`) through the proxy at `socks`: the reply
/// code, and the open connection when it is 0.
fn socks_connect(socks: u16, host: &str, port: u16) -> (u8, Option<TcpStream>) {
    let mut s = TcpStream::connect(("127.0.0.1", socks)).expect("connect to the proxy");
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    s.write_all(&[5, 1, 0]).expect("greeting");
    let mut m = [0u8; 2];
    s.read_exact(&mut m).expect("method");
    assert_eq!(m, [5, 0], "no authentication on loopback");
    let mut req = vec![5, 1, 0];
    match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        Ok(std::net::IpAddr::V4(a)) => {
            req.push(1);
            req.extend_from_slice(&a.octets());
        }
        Ok(std::net::IpAddr::V6(a)) => {
            req.push(4);
            req.extend_from_slice(&a.octets());
        }
        Err(_) => {
            req.push(3);
            req.push(host.len() as u8);
            req.extend_from_slice(host.as_bytes());
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).expect("request");
    let mut head = [0u8; 4];
    if s.read_exact(&mut head).is_err() {
        return (0xff, None);
    }
    assert_eq!(head[0], 5);
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        other => panic!("reply address type {other}"),
    };
    let mut bound = vec![0u8; rest];
    s.read_exact(&mut bound).expect("bound address");
    (head[1], (head[1] == 0).then_some(s))
}

/// `alknet forward` with one `-L LOCAL -> 127.0.0.1:TARGET` and one `-R EXPOSED ->
/// 127.0.0.1:SERVICE`, once both listen.
fn forward_both(
    client: &Client,
    server: &Server,
    (local, target): (u16, u16),
    (exposed, service): (u16, u16),
) -> Bg {
    let mut fwd = client.spawn(
        "forward",
        server.addr,
        &server.fingerprint,
        &[
            "-L".into(),
            format!("127.0.0.1:{local}:127.0.0.1:{target}"),
            "-R".into(),
            format!("{exposed}:127.0.0.1:{service}"),
        ],
    );
    fwd.wait_listening(local);
    // The gateway's port listens once the remote forward is confirmed.
    fwd.wait_listening(exposed);
    fwd
}

/// `n` connections to `port` at once, connection `i` sending `len(i)` bytes of its own
/// pattern: each one's answer and the answer it should be.
fn hash_in_parallel(port: u16, n: u64, seed: u64, len: fn(u64) -> usize) -> Vec<(String, String)> {
    let threads: Vec<_> = (0..n)
        .map(|i| {
            std::thread::spawn(move || {
                let data = pattern(seed + i, len(i));
                let answer = send_and_hash(port, &data);
                (answer, format!("{} {}", data.len(), sha256_hex(&data)))
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect()
}

/// Polls `cond` until it holds, failing with `what` (and `log`) after [`LIMIT`].
fn wait_until(what: &str, log: impl Fn() -> String, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < until, "{what}: {}", log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn local_and_remote_forwards_carry_data_with_matching_checksums() {
    let client = Client::new();
    let target = hash_server();
    let laptop_service = hash_server();
    let exposed = free_tcp_port();
    let server = gateway(
        &client,
        &format!(
            "[[tunnels.allow]]\npeer = \"laptop\"\nto = [\"127.0.0.1:{target}\"]\nlisten = [\"127.0.0.1:{exposed}\"]\n"
        ),
    );
    let local = free_tcp_port();
    let mut fwd = forward_both(&client, &server, (local, target), (exposed, laptop_service));

    let data = pattern(31, 100 << 20);
    expect_hash(local, &data, &fwd);
    let data = pattern(32, 16 << 20);
    expect_hash(exposed, &data, &fwd);

    // The gateway logs each forward at its end, without the destination at info.
    wait_until(
        "the gateway logs forwards",
        || server.stderr(),
        || server.stderr().contains("kind=\"tunnel\"") && server.stderr().contains("tunnel-remote"),
    );
    assert!(
        !server.stderr().contains(&format!("127.0.0.1:{target}")),
        "the destination is not logged at info"
    );

    // SIGTERM: the client closes its connection and exits with 128 + 15; the gateway
    // closes the remote forward's listener at once.
    let status = Command::new("kill")
        .arg(fwd.child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let status = fwd.wait_exit();
    assert_eq!(status.code(), Some(143), "{}", fwd.stderr());
    wait_until(
        "the listener closes with the client",
        || server.stderr(),
        || TcpStream::connect(("127.0.0.1", exposed)).is_err(),
    );
}

#[test]
fn a_hundred_concurrent_connections_each_keep_their_checksum() {
    let client = Client::new();
    let target = hash_server();
    let server = gateway(
        &client,
        &format!("[[tunnels.allow]]\npeer = \"laptop\"\nto = [\"127.0.0.1:{target}\"]\n"),
    );
    let local = free_tcp_port();
    let mut fwd = client.spawn(
        "forward",
        server.addr,
        &server.fingerprint,
        &["-L".into(), format!("{local}:127.0.0.1:{target}")],
    );
    fwd.wait_listening(local);
    let results = hash_in_parallel(local, 100, 1000, |i| (256 << 10) + i as usize * 977);
    for (i, (got, want)) in results.iter().enumerate() {
        assert_eq!(got.trim(), want, "connection {i}: {}", fwd.stderr());
    }
}

#[test]
fn socks_carries_curl_and_the_policy_refuses_what_it_does_not_name() {
    let client = Client::new();
    let web = http_server("hello through the tunnel\n");
    let greet = greeter();
    // A live service the rules do not name: a refusal is the policy, not a closed port.
    let hidden = hash_server();
    let rules = format!(
        "[tunnels]\nmax_connections_per_peer = 2\n[[tunnels.allow]]\npeer = \"laptop\"\nto = [\"*:*\", \"0.0.0.0/0:*\", \"[::/0]:*\", \"localhost:*\", \"127.0.0.1:{web}\", \"127.0.0.1:{greet}\"]\n"
    );
    let server = gateway(&client, &rules);
    let socks = free_tcp_port();
    let mut proxy = client.spawn(
        "socks",
        server.addr,
        &server.fingerprint,
        &["--listen".into(), format!("127.0.0.1:{socks}")],
    );
    proxy.wait_listening(socks);

    // curl resolves nothing itself: `localhost` is resolved on the gateway, and only its
    // 127.0.0.1 answer is allowed (by the address rule).
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--socks5-hostname"])
        .arg(format!("127.0.0.1:{socks}"))
        .arg(format!("http://localhost:{web}/"))
        .output()
        .expect("curl (Debian package curl; .ci/test installs it)");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello through the tunnel\n",
        "curl: {} socks: {}",
        String::from_utf8_lossy(&out.stderr),
        proxy.stderr()
    );

    // Every protected target is refused as "not allowed by ruleset" (reply 2), however
    // broad the rules, unless a rule names it.
    let mut forbidden: Vec<(String, u16)> = [
        "127.0.0.1",
        "127.0.0.2",
        "::1",
        "::ffff:127.0.0.1",
        "localhost",
        "0.0.0.0",
        "::",
    ]
    .iter()
    .map(|h| (h.to_string(), hidden))
    .collect();
    forbidden.extend(
        [
            ("169.254.169.254", 80),
            ("fe80::1", 80),
            ("fd00::1", 80),
            ("10.0.0.1", 22),
            ("172.16.0.1", 80),
            ("192.168.0.1", 80),
            ("100.64.0.1", 80),
            ("127.255.255.254", 80),
            ("169.254.0.1", 443),
            ("fe80::abcd", 22),
            ("fc00::1", 80),
            ("fd12:3456::1", 443),
            ("10.255.255.254", 80),
            ("172.31.255.254", 22),
            ("192.168.255.254", 80),
            ("100.127.255.254", 80),
            ("::ffff:192.168.1.1", 80),
            ("::ffff:169.254.169.254", 80),
        ]
        .map(|(h, p)| (h.to_string(), p)),
    );
    if let Some(own) = own_address() {
        forbidden.push((own, hidden));
    }
    assert!(forbidden.len() >= 25);
    for (host, port) in &forbidden {
        let (code, _) = socks_connect(socks, host, *port);
        assert_eq!(code, 2, "{host}:{port} was not refused by the policy");
    }
    let log = server.stderr();
    assert!(log.contains("loopback address"), "{log}");
    assert!(log.contains("unique-local address"), "{log}");
    assert!(log.contains("private address"), "{log}");

    // The per-peer cap (2): two connections held, the third refused.
    let mut held = Vec::new();
    wait_until(
        "two connections held",
        || proxy.stderr(),
        || {
            if let (0, Some(mut s)) = socks_connect(socks, "127.0.0.1", greet) {
                let mut hi = [0u8; 3];
                if s.read_exact(&mut hi).is_ok() && &hi == b"hi\n" {
                    held.push(s);
                }
            }
            held.len() == 2
        },
    );
    let (code, _) = socks_connect(socks, "127.0.0.1", greet);
    assert_eq!(code, 1, "a third connection passed the cap");
    drop(held);
    wait_until(
        "the cap is released",
        || proxy.stderr(),
        || socks_connect(socks, "127.0.0.1", greet).0 == 0,
    );

    // Under the default policy even a named-nowhere loopback service is refused.
    let plain = Client::new();
    let default = gateway(&plain, "");
    let socks2 = free_tcp_port();
    let mut proxy2 = plain.spawn(
        "socks",
        default.addr,
        &default.fingerprint,
        &["--listen".into(), format!("127.0.0.1:{socks2}")],
    );
    proxy2.wait_listening(socks2);
    assert_eq!(socks_connect(socks2, "127.0.0.1", web).0, 2);
    assert_eq!(socks_connect(socks2, "example.invalid", 80).0, 2);
}

#[test]
fn a_client_the_gateway_does_not_serve_is_told_what_to_ask_for() {
    let client = Client::new();
    let target = hash_server();
    // A peer with another scope only.
    let server = Server::start(&format!(
        "listen = \"127.0.0.1:0\"\n[services.echo]\nenabled = true\n{}[[tunnels.allow]]\npeer = \"laptop\"\nto = [\"127.0.0.1:{target}\"]\n",
        client.peer("laptop", &["echo"])
    ));
    let local = free_tcp_port();
    let mut fwd = client.spawn(
        "forward",
        server.addr,
        &server.fingerprint,
        &[
            "-L".into(),
            format!("{local}:127.0.0.1:{target}"),
            "-R".into(),
            format!("0:127.0.0.1:{target}"),
        ],
    );
    let status = fwd.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", fwd.stderr());
    let err = fwd.stderr();
    assert!(
        err.contains("does not give this client the tunnel service"),
        "{err}"
    );
    assert!(err.contains("--add-scope tunnel"), "{err}");

    // A key the gateway does not know.
    let stranger = Client::new();
    let mut fwd = stranger.spawn(
        "socks",
        server.addr,
        &server.fingerprint,
        &["--listen".into(), format!("127.0.0.1:{}", free_tcp_port())],
    );
    assert_eq!(fwd.wait_exit().code(), Some(1));
    assert!(
        fwd.stderr().contains("does not know this client's key"),
        "{}",
        fwd.stderr()
    );

    // A wrong pinned key: refused before anything is sent, with both keys named.
    let other = Server::start("listen = \"127.0.0.1:0\"\n");
    let mut fwd = client.spawn(
        "forward",
        server.addr,
        &other.fingerprint,
        &[
            "-L".into(),
            format!("{}:127.0.0.1:{target}", free_tcp_port()),
        ],
    );
    assert_eq!(fwd.wait_exit().code(), Some(1));
    assert!(
        fwd.stderr().contains("SERVER KEY MISMATCH"),
        "{}",
        fwd.stderr()
    );

    // Usage errors name the flag and the expected shape.
    let (code, _, err) = run_cli(
        &["forward", &server.addr.to_string(), "-L", "8080"],
        client.dir.path(),
        b"",
    );
    assert_eq!(code, 1);
    assert!(err.contains("expected [BIND:]PORT:HOST:HOSTPORT"), "{err}");
}

#[test]
fn forwards_come_back_after_the_gateway_restarts() {
    let client = Client::new();
    let target = hash_server();
    let laptop_service = hash_server();
    let exposed = free_tcp_port();
    let port = free_udp_port();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\n{}[[tunnels.allow]]\npeer = \"laptop\"\nto = [\"127.0.0.1:{target}\"]\nlisten = [\"127.0.0.1:{exposed}\"]\n",
        client.peer("laptop", &["tunnel"])
    );
    let mut server = Server::start(&config);
    let local = free_tcp_port();
    let mut fwd = forward_both(&client, &server, (local, target), (exposed, laptop_service));
    let data = pattern(41, 1 << 20);
    expect_hash(local, &data, &fwd);

    for round in ["kill -9", "SIGTERM"] {
        if round == "kill -9" {
            let _ = server.child.kill();
        } else {
            server.signal(15);
        }
        assert!(
            server.wait(LIMIT).is_some(),
            "{round}: the gateway did not exit"
        );
        let dir = server.take_dir();
        server = Server::try_start_in(dir, &config).unwrap_or_else(|e| panic!("{round}: {e}"));
        // The client reconnects by itself: the local forward carries again, and the remote
        // forward listens on the new gateway process.
        wait_until(
            &format!("{round}: the local forward carries again"),
            || fwd.stderr(),
            || {
                send_and_hash(local, &data).trim()
                    == format!("{} {}", data.len(), sha256_hex(&data))
            },
        );
        wait_until(
            &format!("{round}: the remote forward listens again"),
            || fwd.stderr(),
            || TcpStream::connect(("127.0.0.1", exposed)).is_ok(),
        );
        expect_hash(exposed, &data, &fwd);
    }
    assert!(
        fwd.stderr()
            .contains("connection to the gateway lost; reconnecting"),
        "{}",
        fwd.stderr()
    );
    assert!(
        fwd.child.try_wait().expect("status").is_none(),
        "the client kept running"
    );
}

#[test]
fn a_source_port_change_keeps_every_forwarded_connection() {
    const EACH: usize = 8 << 20;
    let client = Client::new();
    let target = hash_server();
    let server = gateway(
        &client,
        &format!("[[tunnels.allow]]\npeer = \"laptop\"\nto = [\"127.0.0.1:{target}\"]\n"),
    );
    let relay = UdpRelay::start(server.addr).expect("relay");
    let local = free_tcp_port();
    let mut fwd = client.spawn(
        "forward",
        relay.addr(),
        &server.fingerprint,
        &["-L".into(), format!("{local}:127.0.0.1:{target}")],
    );
    fwd.wait_listening(local);
    let transfers = std::thread::spawn(move || hash_in_parallel(local, 8, 2000, |_| EACH));
    // Switch once a quarter of the upload went through.
    wait_until(
        "the transfers are under way",
        || fwd.stderr(),
        || relay.paths()[0].to_server_bytes >= (8 * EACH as u64) / 4,
    );
    let switched = relay.switch().expect("switch");
    let results = transfers.join().expect("transfers");
    for (i, (got, want)) in results.iter().enumerate() {
        assert_eq!(got.trim(), want, "connection {i}: {}", fwd.stderr());
    }
    let paths = relay.paths();
    assert_eq!(paths.len(), 2);
    assert!(
        paths[1].to_server_bytes >= (8 * EACH as u64) / 4,
        "most of the upload took the new path: {paths:?}"
    );
    assert_eq!(
        paths[0].to_server_datagrams, switched.old_at_switch.to_server_datagrams,
        "nothing took the old path after the switch"
    );
    assert!(
        !fwd.stderr().contains("reconnecting"),
        "the connection survived: {}",
        fwd.stderr()
    );
}
