//! `alknet serve` under a service manager: sd_notify datagrams on a socket the test listens
//! on (READY, STATUS, WATCHDOG pings at their period, the pings stopping while a shard hangs,
//! STOPPING at SIGTERM), and the shipped units judged by `systemd-analyze`.

use crate::support::*;
use alknet_core::ops::control::{self, Request};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

/// Datagrams received, with their arrival time.
fn recv_until(
    sock: &UnixDatagram,
    limit: Duration,
    mut done: impl FnMut(&str) -> bool,
) -> Vec<(Instant, String)> {
    let until = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return got;
        }
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let stop = done(&text);
                got.push((Instant::now(), text));
                if stop {
                    return got;
                }
            }
            Err(_) => return got,
        }
    }
}

#[test]
fn notify_ready_status_watchdog_and_stopping() {
    let key = ClientKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    // A 1 s watchdog: pings every 500 ms while every shard stamps its heartbeat.
    let mut server = Server::try_start_env(
        tempfile::tempdir().unwrap(),
        &format!(
            "workers = 2\n[services.echo]\nenabled = true\n{}",
            peer_toml("tester", &key, &["echo"])
        ),
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    )
    .unwrap();

    let first = recv_until(&sock, Duration::from_secs(30), |_| true);
    let ready = &first.first().expect("no notification at all").1;
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(
        ready.contains("STATUS=0 connections, 0 sessions; services ")
            && ready.contains("alknet/echo"),
        "{ready}"
    );

    // Pings at the period, and a refreshed status line within its 5 s.
    let mut pings = Vec::new();
    let mut status = false;
    let until = Instant::now() + Duration::from_secs(20);
    while (pings.len() < 8 || !status) && Instant::now() < until {
        for (at, text) in recv_until(&sock, until - Instant::now(), |_| true) {
            if text == "WATCHDOG=1" {
                pings.push(at);
            }
            status |= text.starts_with("STATUS=");
        }
    }
    assert!(pings.len() >= 8, "{} pings in 20 s", pings.len());
    assert!(status, "no STATUS refresh");
    let span = *pings.last().unwrap() - pings[0];
    let mean = span / (pings.len() as u32 - 1);
    assert!(
        mean >= Duration::from_millis(400) && mean <= Duration::from_millis(800),
        "pings every {mean:?}; half the 1 s period expected"
    );

    // Shard 1 hangs for 4 s: no ping while it does (systemd would restart the service
    // after 1 s), pings again once it turns.
    control::request(
        &server.data_dir(),
        &Request::DebugHangShard {
            shard: 1,
            millis: 4000,
        },
    )
    .unwrap();
    let asked = Instant::now();
    // Drain what was sent before the hang could be seen (at most one tick of 500 ms).
    let during = recv_until(&sock, Duration::from_millis(3500), |_| false);
    let late_pings = during
        .iter()
        .filter(|(at, t)| t == "WATCHDOG=1" && *at > asked + Duration::from_millis(1100))
        .count();
    assert_eq!(
        late_pings, 0,
        "pings went on while a shard hung: {during:?}"
    );
    let resumed = recv_until(&sock, Duration::from_secs(15), |t| t == "WATCHDOG=1");
    assert!(
        resumed.iter().any(|(_, t)| t == "WATCHDOG=1"),
        "pings did not resume after the hang"
    );
    assert!(
        server.stderr().contains("withholding watchdog pings"),
        "{}",
        server.stderr()
    );

    server.signal(15);
    let stopping = recv_until(&sock, Duration::from_secs(10), |t| {
        t.starts_with("STOPPING=1")
    });
    assert!(
        stopping.iter().any(|(_, t)| t.starts_with("STOPPING=1")),
        "no STOPPING=1 at SIGTERM: {stopping:?}"
    );
    let status = server.wait(Duration::from_secs(30)).expect("exit");
    assert!(status.success(), "{status:?}");
}

#[test]
fn abstract_notify_socket_gets_ready() {
    let name = format!("alknet-it-{}-{:?}", std::process::id(), Instant::now());
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            name.as_bytes(),
        )
        .unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    let _server = Server::try_start_env(
        tempfile::tempdir().unwrap(),
        "workers = 1\n",
        &[("NOTIFY_SOCKET", &format!("@{name}"))],
    )
    .unwrap();
    let got = recv_until(&sock, Duration::from_secs(30), |_| true);
    assert!(
        got.first()
            .is_some_and(|(_, t)| t.starts_with("READY=1\nSTATUS=")),
        "{got:?}"
    );
}

/// The exposure score `systemd-analyze security --offline=true` gives a unit.
fn exposure(unit: &Path) -> f64 {
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no score: {text}{}", String::from_utf8_lossy(&out.stderr)));
    line.split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in `{line}`"))
}

/// `systemd-analyze verify` on `unit` (and its drop-ins beside it) finds nothing to say.
fn verify(unit: &Path, what: &str) {
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.lines().any(|l| l.contains("alknet")),
        "systemd-analyze verify {what}: {err}"
    );
}

#[test]
fn shipped_units_verify_and_are_hardened() {
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!(
            "systemd-analyze is missing: install the `systemd` package (apt-get install systemd)"
        );
    }
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    // `verify` wants the ExecStart binary to exist: a copy of the unit pointing at this build.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(deploy.join("alknet.service")).unwrap();
    let unit = dir.path().join("alknet.service");
    std::fs::write(&unit, text.replace("/usr/local/bin/alknet", ALKNET)).unwrap();
    verify(&unit, "alknet.service");
    let score = exposure(&unit);
    assert!(
        score < 2.0,
        "alknet.service exposure {score}, must stay below 2.0"
    );
    let readme = std::fs::read_to_string(deploy.join("../README.md")).unwrap();
    assert!(
        readme.contains(&format!("deploy/alknet.service` is {score:.1}")),
        "the README states another exposure for alknet.service than the measured {score:.1}"
    );

    // With the ssh-login drop-in beside it, as `systemctl` would read it.
    let dropin_text =
        std::fs::read_to_string(deploy.join("alknet.service.d/ssh-login.conf")).unwrap();
    std::fs::create_dir(dir.path().join("alknet.service.d")).unwrap();
    std::fs::write(
        dir.path().join("alknet.service.d/ssh-login.conf"),
        &dropin_text,
    )
    .unwrap();
    verify(&unit, "alknet.service with ssh-login.conf");
    let with = exposure(&unit);
    assert!(with > score, "the drop-in did not apply: {with} <= {score}");
    // The cost the drop-in's own comment states is the one measured.
    assert!(
        dropin_text.contains(&format!("({with:.1} with this drop-in")),
        "ssh-login.conf states another exposure than the measured {with:.1}"
    );
}
