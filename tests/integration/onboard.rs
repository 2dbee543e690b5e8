//! A new user's first minutes: `alknet serve` with no config file, `alknet invite`,
//! `alknet join` from another data directory, then `alknet call gw …` and
//! `alknet connect gw …` by name; and every way an invite is refused (reused, expired,
//! revoked, forged, mistyped), each refusal a failed-authentication line fail2ban matches.

use crate::support::{ALKNET, free_udp_port, run_cli, wait_for};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `alknet serve` with no config file (only `--listen`, for a free loopback port).
struct Gateway {
    child: Child,
    _dir: tempfile::TempDir,
    data: PathBuf,
    stderr: PathBuf,
    fingerprint: String,
    port: u16,
    /// What it printed up to and including its "who can connect" line.
    banner: Vec<String>,
}

impl Gateway {
    fn start(dir: tempfile::TempDir, port: u16) -> Self {
        let data = dir.path().join("gw");
        let stderr = dir.path().join("serve.log");
        let log = std::fs::File::create(&stderr).expect("log file");
        let mut child = Command::new(ALKNET)
            .args(["serve", "--workers", "2", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn alknet serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut banner = Vec::new();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                let last = line.starts_with("no peers yet") || line.starts_with("peers ");
                banner.push(line);
                if last {
                    break;
                }
            }
            let _ = tx.send(banner);
            for _ in lines {}
        });
        let banner = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let fingerprint = banner
            .iter()
            .find_map(|l| l.strip_prefix("fingerprint "))
            .map(str::to_owned)
            .unwrap_or_else(|| {
                panic!(
                    "alknet serve did not start: {banner:?} {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                )
            });
        Self {
            child,
            _dir: dir,
            data,
            stderr,
            fingerprint,
            port,
            banner,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// `alknet invite ARGS --json` on this gateway: (code, invite id, expiry).
    fn invite(&self, args: &[&str]) -> (String, String, u64) {
        let mut all = vec!["invite", "--json"];
        all.extend_from_slice(args);
        let (code, out, err) = run_cli(&all, &self.data, b"");
        assert_eq!(code, 0, "alknet invite {args:?}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("invite json");
        (
            v["code"].as_str().expect("code").to_owned(),
            v["invite"]["id"].as_str().expect("id").to_owned(),
            v["invite"]["expires_at"].as_u64().expect("expiry"),
        )
    }

    /// Waits until the log has a failed authentication from loopback with `reason`.
    async fn wait_failed_auth(&self, reason: &str) {
        let want = format!("reason=\"{reason}\"");
        wait_for(
            Duration::from_secs(10),
            &format!("failed auth `{reason}`"),
            || {
                self.log().lines().any(|l| {
                    l.contains("alknet::auth: authentication failed remote=127.0.0.1:")
                        && l.contains("alpn=\"alknet/join\"")
                        && l.contains(&want)
                })
            },
        )
        .await;
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `alknet join CODE --as gw` from `device`: (exit code, stdout, stderr).
fn join(device: &Path, code: &str) -> (i32, String, String) {
    run_cli(&["join", code, "--as", "gw"], device, b"")
}

/// A device's data directory.
fn device(root: &tempfile::TempDir, name: &str) -> PathBuf {
    root.path().join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_serves_with_no_config_invites_and_joins_by_name() {
    let root = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    // An invite made before the server runs (on the store file), for the address it will
    // listen on.
    let gw_dir = tempfile::tempdir().expect("tempdir");
    let (code, out, err) = run_cli(
        &[
            "invite",
            "--address",
            &format!("127.0.0.1:{port}"),
            "--name",
            "laptop",
        ],
        &gw_dir.path().join("gw"),
        b"",
    );
    assert_eq!(code, 0, "{err}");
    let offline_code = out.trim().to_owned();
    assert!(offline_code.starts_with("alkinv1_"), "{out}");
    assert!(err.contains("alknet join"), "{err}");

    let gw = Gateway::start(gw_dir, port);
    // Every authenticated service and the join service are served; nobody can connect yet.
    let alpns = gw
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("alpns "))
        .unwrap_or_default()
        .to_owned();
    for alpn in ["alknet/echo", "alknet/call", "alknet/join"] {
        assert!(alpns.split(',').any(|a| a == alpn), "{alpn} not in {alpns}");
    }
    let who = gw.banner.last().cloned().unwrap_or_default();
    assert!(
        who.starts_with("no peers yet: nobody can connect; run `alknet invite"),
        "{who}"
    );

    // The first device joins with the code made while the server was stopped.
    let laptop = device(&root, "laptop");
    let (c, out, err) = join(&laptop, &offline_code);
    assert_eq!(c, 0, "{err}");
    assert!(out.contains("as peer `laptop`"), "{out}");

    // It reaches the services by name, pinned to the gateway's key.
    let (c, out, err) = run_cli(&["call", "gw", "/node/info"], &laptop, b"");
    assert_eq!(c, 0, "{err}");
    let info: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(info["fingerprint"], gw.fingerprint.as_str());
    let (c, out, err) = run_cli(
        &["connect", "gw", "--alpn", "alknet/echo"],
        &laptop,
        b"hello gateway",
    );
    assert_eq!((c, out.as_str()), (0, "hello gateway"), "{err}");
    // host:port works too, pinned by the join (no "new server" trust on first use).
    let (c, _, err) = run_cli(
        &[
            "connect",
            &format!("127.0.0.1:{port}"),
            "--alpn",
            "alknet/echo",
        ],
        &laptop,
        b"x",
    );
    assert_eq!(c, 0, "{err}");
    assert!(!err.contains("new server"), "{err}");

    // The same code again, from another device: refused, logged as a failed auth.
    let phone = device(&root, "phone");
    let (c, _, err) = join(&phone, &offline_code);
    assert_ne!(c, 0);
    assert!(err.contains("already used"), "{err}");
    gw.wait_failed_auth("invite used up").await;
    // And the refused device got in nowhere.
    let (c, _, err) = run_cli(&["call", "gw", "/node/info"], &phone, b"");
    assert_ne!(c, 0);
    assert!(err.contains("no server named `gw`"), "{err}");

    // Made on the running server: `--uses 2` admits two devices, then no more.
    let (two, id, _) = gw.invite(&["--uses", "2", "--scope", "echo"]);
    for d in ["tablet", "desktop"] {
        let (c, out, err) = run_cli(
            &["join", &two, "--as", "gw", "--peer-name", "dev"],
            &device(&root, d),
            b"",
        );
        assert_eq!(c, 0, "{d}: {err}");
        assert!(out.contains("with scopes echo"), "{out}");
    }
    let (c, _, err) = join(&device(&root, "third"), &two);
    assert_ne!(c, 0);
    assert!(err.contains("already used"), "{err}");
    // The second got a deduplicated id, and the scope limits it: echo yes, call no.
    let (_, peers, _) = run_cli(&["peer", "list"], &gw.data, b"");
    assert!(peers.contains("dev ") && peers.contains("dev-2"), "{peers}");
    let desktop = device(&root, "desktop");
    let (c, out, _) = run_cli(&["connect", "gw", "--alpn", "alknet/echo"], &desktop, b"e");
    assert_eq!((c, out.as_str()), (0, "e"));
    let (c, _, err) = run_cli(&["call", "gw", "/node/info"], &desktop, b"");
    assert_ne!(c, 0, "a device with scope echo called: {err}");
    let (_, list, _) = run_cli(&["invite", "list"], &gw.data, b"");
    assert!(list.contains(&id) && list.contains("0/2"), "{list}");
    assert!(!list.contains("alkinv1_"), "codes never listed: {list}");

    assert!(gw.log().contains("peer joined with an invite"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_revoked_forged_and_mistyped_codes_are_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start(tempfile::tempdir().expect("tempdir"), free_udp_port());

    // Expired: a one-second invite, waited out (bounded) against the wall clock.
    let (short, _, expires_at) = gw.invite(&["--expires-in", "1s"]);
    wait_for(Duration::from_secs(5), "the invite's expiry", || {
        alknet_core::ops::control::unix_now() >= expires_at
    })
    .await;
    let (c, _, err) = join(&device(&root, "a"), &short);
    assert_ne!(c, 0);
    assert!(err.contains("expired"), "{err}");
    gw.wait_failed_auth("expired invite").await;

    // Revoked.
    let (code, id, _) = gw.invite(&[]);
    let (c, out, err) = run_cli(&["invite", "revoke", &id], &gw.data, b"");
    assert_eq!(c, 0, "{err}");
    assert!(out.contains(&id));
    let (c, _, err) = join(&device(&root, "b"), &code);
    assert_ne!(c, 0);
    assert!(err.contains("knows no such invite"), "{err}");
    gw.wait_failed_auth("unknown invite").await;

    // Forged: the gateway's real key and address with a secret it never made, in a code
    // whose checksum is right.
    let forged = alknet_proto::join::encode_invite(&alknet_proto::join::Invite {
        fingerprint: gw.fingerprint.parse().expect("fingerprint"),
        secret: [0x5a; 16],
        addresses: vec![alknet_proto::join::InviteAddress::Ip(
            format!("127.0.0.1:{}", gw.port).parse().expect("addr"),
        )],
    })
    .expect("code");
    let (c, _, err) = join(&device(&root, "c"), &forged);
    assert_ne!(c, 0);
    assert!(err.contains("knows no such invite"), "{err}");

    // Mistyped: refused by the checksum before anything is sent.
    let (good, _, _) = gw.invite(&[]);
    let mut typo: Vec<char> = good.chars().collect();
    let at = typo.len() / 2;
    typo[at] = if typo[at] == 'q' { 'r' } else { 'q' };
    let typo: String = typo.into_iter().collect();
    let (c, _, err) = join(&device(&root, "d"), &typo);
    assert_ne!(c, 0);
    assert!(
        err.contains("checksum") || err.contains("malformed"),
        "{err}"
    );
    // The good code still works after all that (one source made few attempts).
    let (c, _, err) = join(&device(&root, "d"), &good);
    assert_eq!(c, 0, "{err}");

    // fail2ban's shipped filter matches every refused join.
    let filter = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/fail2ban/alknet.conf");
    let out = Command::new("fail2ban-regex")
        .arg(&gw.stderr)
        .arg(&filter)
        .output()
        .expect("fail2ban-regex (Debian package fail2ban; .ci/test installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    let failed = gw
        .log()
        .lines()
        .filter(|l| l.contains("authentication failed"))
        .count();
    assert!(failed >= 3, "{failed} failed-auth lines");
    let matched = report
        .lines()
        .find(|l| l.starts_with("Lines:"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        matched.contains(&format!("{failed} matched")),
        "fail2ban matched {matched:?}, the log has {failed} failed authentications"
    );
}
