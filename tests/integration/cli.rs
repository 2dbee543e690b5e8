//! The CLI as people use it: `alknet serve` and `alknet connect` as processes, and the
//! errors they give.

use crate::support::*;

fn one_error_line(stderr: &str) -> &str {
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected one error line in {stderr:?}");
    errors[0]
}

#[test]
fn connect_pipes_stdin_through_echo_and_remembers_the_server() {
    let client = tempfile::tempdir().unwrap();
    let (code, fp, err) = run_cli(&["id"], client.path(), b"");
    assert_eq!(code, 0, "{err}");
    let fp = fp.trim().to_owned();
    assert!(fp.starts_with("ed25519:") && fp.len() == 8 + 64, "{fp}");
    let server = Server::start(&format!(
        "workers = 2\n[services.echo]\nenabled = true\n[[peers]]\nid = \"cli\"\nfingerprints = [\"{fp}\"]\nscopes = [\"echo\"]\n"
    ));
    let addr = server.addr.to_string();
    let input = pattern(3, 200_000);
    let (code, out, err) = run_cli_raw(
        &["connect", &addr, "--alpn", "alknet/echo"],
        client.path(),
        &input,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out == input,
        "echoed {} bytes, sent {}",
        out.len(),
        input.len()
    );
    assert!(err.contains("remembered"), "{err}");
    let known = std::fs::read_to_string(client.path().join("known_servers")).unwrap();
    assert_eq!(known.trim(), format!("{addr} {}", server.fingerprint));

    // Text payload: byte-exact comparison.
    let text = "hello through alknet\n".repeat(1000);
    let (code, out, err) = run_cli(
        &["connect", &addr, "--alpn", "alknet/echo"],
        client.path(),
        text.as_bytes(),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, text);
    assert!(
        !err.contains("remembered"),
        "second connection must not re-learn: {err}"
    );

    // Pinning the right key works too.
    let (code, out, err) = run_cli(
        &[
            "connect",
            &addr,
            "--alpn",
            "alknet/echo",
            "--fingerprint",
            &server.fingerprint,
        ],
        client.path(),
        b"pinned\n",
    );
    assert_eq!((code, out.as_str()), (0, "pinned\n"), "{err}");
}

#[test]
fn changed_server_key_is_a_loud_error() {
    let client = tempfile::tempdir().unwrap();
    let (_, fp, _) = run_cli(&["id"], client.path(), b"");
    let fp = fp.trim().to_owned();
    let server = Server::start(&format!(
        "[services.echo]\nenabled = true\n[[peers]]\nid = \"cli\"\nfingerprints = [\"{fp}\"]\nscopes = [\"echo\"]\n"
    ));
    let addr = server.addr.to_string();
    let stale = "ed25519:1111111111111111111111111111111111111111111111111111111111111111";
    std::fs::write(
        client.path().join("known_servers"),
        format!("{addr} {stale}\n"),
    )
    .unwrap();
    let (code, out, err) = run_cli(
        &["connect", &addr, "--alpn", "alknet/echo"],
        client.path(),
        b"x",
    );
    assert_ne!(code, 0);
    assert!(out.is_empty(), "data flowed despite the mismatch: {out:?}");
    assert!(err.contains("SERVER KEY MISMATCH"), "{err}");
    assert!(
        err.contains(stale) && err.contains(&server.fingerprint),
        "{err}"
    );

    // A wrong pin fails the same way.
    let (code, _, err) = run_cli(
        &[
            "connect",
            &addr,
            "--alpn",
            "alknet/echo",
            "--fingerprint",
            stale,
        ],
        tempfile::tempdir().unwrap().path(),
        b"x",
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("SERVER KEY MISMATCH") && err.contains("--fingerprint"),
        "{err}"
    );
}

#[test]
fn port_in_use_is_one_clear_line() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run_cli(&["serve", "--listen", &addr], dir.path(), b"");
    assert_eq!(code, 1);
    let line = one_error_line(&err);
    assert!(
        line.contains("already in use") && line.contains(&addr),
        "{line}"
    );
}

#[test]
fn unusable_data_dir_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"").unwrap();
    let bad = file.join("data");
    let (code, _, err) = run_cli(&["serve", "--listen", "127.0.0.1:0"], &bad, b"");
    assert_eq!(code, 1);
    let line = one_error_line(&err);
    assert!(
        line.contains("cannot use data directory") && line.contains("plain-file"),
        "{line}"
    );
}

#[test]
fn malformed_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\n[transport]\nidle_timeout = 30\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(
        &["serve", "--config", cfg.to_str().unwrap()],
        &dir.path().join("d"),
        b"",
    );
    assert_eq!(code, 1);
    let line = one_error_line(&err);
    assert!(
        line.contains("bad.toml:3: key `transport.idle_timeout`"),
        "{line}"
    );

    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nwrkers = 2\n").unwrap();
    let (code, _, err) = run_cli(
        &["serve", "--config", cfg.to_str().unwrap()],
        &dir.path().join("d"),
        b"",
    );
    assert_eq!(code, 1);
    let line = one_error_line(&err);
    assert!(line.contains("bad.toml:2: key `wrkers`"), "{line}");
}

#[test]
fn bad_fingerprint_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["ed25519:ZZ", "sha256:00", "ED25519:00"] {
        let (code, _, err) = run_cli(
            &[
                "connect",
                "127.0.0.1:9",
                "--alpn",
                "alknet/echo",
                "--fingerprint",
                bad,
            ],
            dir.path(),
            b"",
        );
        assert_eq!(code, 1);
        let line = one_error_line(&err);
        assert!(
            line.contains("--fingerprint") && line.contains("ed25519:"),
            "{line}"
        );
    }
}

#[test]
fn serve_without_arguments_creates_its_data_dir_and_says_what_it_serves_and_who_can_connect() {
    // No config: the default address may be taken on a shared machine, so only the data
    // directory and the first lines are checked, with --listen on a free port.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fresh");
    let mut child = std::process::Command::new(ALKNET)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines: Vec<String> = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .take(4)
        .map(|l| l.unwrap())
        .collect();
    // Secrets stay out of core dumps: the server turned them off for itself.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(
        core.split_whitespace().filter(|w| *w == "0").count() >= 2,
        "{core}"
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines[0].starts_with("alknet listening on 127.0.0.1:"),
        "{lines:?}"
    );
    assert!(lines[1].starts_with("fingerprint ed25519:"), "{lines:?}");
    // With no config every authenticated service of the build is on, and the join service
    // (which admits nothing without an invite); nobody can get in until a peer exists.
    let alpns: Vec<&str> = lines[2]
        .strip_prefix("alpns ")
        .unwrap_or_default()
        .split(',')
        .collect();
    for alpn in ["alknet/join", "alknet/echo", "alknet/call"] {
        assert!(alpns.contains(&alpn), "{lines:?}");
    }
    assert!(
        lines[3].starts_with("no peers yet: nobody can connect; run `alknet invite"),
        "{lines:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("node.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (_, id, _) = run_cli(&["id"], &data, b"");
    assert_eq!(format!("fingerprint {}", id.trim()), lines[1]);
}

#[test]
fn call_command_reaches_the_call_service() {
    let client = tempfile::tempdir().unwrap();
    let (_, fp, _) = run_cli(&["id"], client.path(), b"");
    let fp = fp.trim().to_owned();
    let server = Server::start(&format!(
        "workers = 2\n[services.call]\nenabled = true\n[[peers]]\nid = \"ops\"\nfingerprints = [\"{fp}\"]\nscopes = [\"call\"]\n"
    ));
    let addr = server.addr.to_string();
    let (code, out, err) = run_cli(&["call", &addr, "/node/info"], client.path(), b"");
    assert_eq!(code, 0, "{err}");
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        info["fingerprint"].as_str(),
        Some(server.fingerprint.as_str())
    );
    assert_eq!(info["workers"].as_u64(), Some(2));
    let (code, out, err) = run_cli(&["call", &addr, "--list"], client.path(), b"");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("/services/list") && !out.contains("/node/sessions"),
        "{out}"
    );
    // Admin operations need the admin scope.
    let (code, _, err) = run_cli(&["call", &addr, "/node/sessions"], client.path(), b"");
    assert_ne!(code, 0);
    assert!(err.contains("FORBIDDEN"), "{err}");
}
