//! The SSH service end to end: a real `alknet serve`, the real OpenSSH client with the
//! config block `alknet ssh-config` prints pasted as its only config, `alknet connect` as
//! its ProxyCommand.

use crate::support::{Server, SshClient, pgrep, run_cli, wait_for};
use std::process::{Command, Stdio};
use std::time::Duration;

fn peer(id: &str, fingerprint: &str, scopes: &[&str], ssh_keys: &[&str]) -> String {
    let q = |v: &[&str]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[[peers]]\nid = \"{id}\"\nfingerprints = [\"{fingerprint}\"]\nscopes = [{}]\nssh_keys = [{}]\n",
        q(scopes),
        q(ssh_keys)
    )
}

#[test]
fn exec_after_one_paste_gives_output_exit_code_and_eof() {
    let client = SshClient::new();
    let server = Server::start(&format!(
        "[services.ssh]\nenabled = true\n{}",
        peer("laptop", &client.fingerprint, &["ssh"], &[])
    ));
    let block = client.paste_config(&server, "gw");
    assert!(block.contains("Host gw\n"), "{block}");
    assert!(block.contains(&server.fingerprint), "{block}");

    let (code, out, err) = client.run(None, &[], "echo hi; exit 3");
    assert_eq!((code, out.as_str()), (3, "hi\n"), "{err}");

    // stderr apart from stdout; stdin to the command, then EOF reaches it.
    let (code, out, err) = client.run(None, &[], "echo to-stderr >&2; echo out");
    assert_eq!((code, out.as_str()), (0, "out\n"), "{err}");
    assert!(err.contains("to-stderr"), "{err}");
    let mut child = client
        .ssh(None)
        .args(["gw", "tr a-z A-Z; echo end"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh (Debian package openssh-client)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"abc\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ABC\nend\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A signal ending the command comes back as ssh's failure, not a clean exit.
    let (code, _, _) = client.run(None, &[], "kill -TERM $$");
    assert_ne!(code, 0);

    // The env allowlist: LC_* passes, others are dropped.
    let (code, out, err) = client.run(
        None,
        &["-o", "SetEnv=LC_ALKNET=yes SECRET_X=no"],
        "echo \"$LC_ALKNET:$SECRET_X\"",
    );
    assert_eq!((code, out.as_str()), (0, "yes:\n"), "{err}");

    // Agent forwarding is refused, so the session has no agent socket.
    let (code, out, _) = client.run(None, &["-A"], "echo \"agent=$SSH_AUTH_SOCK\"");
    assert_eq!((code, out.as_str()), (0, "agent=\n"));
}

#[test]
fn pty_shell_runs_a_command_and_sees_a_window_change() {
    let client = SshClient::new();
    let server = Server::start(&format!(
        "[services.ssh]\nenabled = true\n{}",
        peer("laptop", &client.fingerprint, &["ssh"], &[])
    ));
    client.paste_config(&server, "gw");
    let ssh = client.ssh(None);
    let mut line = vec![ssh.get_program().to_string_lossy().into_owned()];
    for a in ssh.get_args() {
        line.push(format!("'{}'", a.to_string_lossy()));
    }
    line.push("-tt".into());
    line.push("gw".into());
    let socket = format!("alknet-ssh-{}", std::process::id());
    let tmux = |args: &[&str]| {
        let out = Command::new("tmux")
            .args(["-L", &socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux (Debian package tmux; .ci/test installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    tmux(&[
        "new-session",
        "-d",
        "-x",
        "100",
        "-y",
        "30",
        "-s",
        "t",
        &line.join(" "),
    ]);
    tmux(&["set-option", "-g", "status", "off"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let seen = |want: &str| {
        let screen = tmux(&["capture-pane", "-p", "-t", "t"]);
        screen.contains(want)
    };
    tmux(&[
        "send-keys",
        "-t",
        "t",
        "echo pty-$((6*7)); stty size",
        "Enter",
    ]);
    rt.block_on(wait_for(
        Duration::from_secs(15),
        "the shell's answer",
        || seen("pty-42"),
    ));
    tmux(&["resize-window", "-t", "t", "-x", "120", "-y", "40"]);
    tmux(&["send-keys", "-t", "t", "clear; stty size", "Enter"]);
    rt.block_on(wait_for(Duration::from_secs(15), "the new size", || {
        seen("40 120")
    }));
    tmux(&["send-keys", "-t", "t", "exit", "Enter"]);
    tmux(&["kill-server"]);
}

#[test]
fn peer_key_mode_takes_only_the_peers_registered_key() {
    let client = SshClient::new();
    let other = SshClient::new();
    let (good, good_pub) = client.keygen("good");
    let (wrong, _) = client.keygen("wrong");
    let (others, others_pub) = client.keygen("others");
    let server = Server::start(&format!(
        "[services.ssh]\nenabled = true\nauth = \"peer+key\"\n{}{}",
        peer("laptop", &client.fingerprint, &["ssh"], &[&good_pub]),
        peer("phone", &other.fingerprint, &["ssh"], &[&others_pub]),
    ));
    client.paste_config(&server, "gw");
    let (code, out, err) = client.run(Some(&good), &[], "echo in");
    assert_eq!((code, out.as_str()), (0, "in\n"), "{err}");
    for (what, key) in [("a wrong key", &wrong), ("another peer's key", &others)] {
        let (code, out, err) = client.run(Some(key), &[], "echo in");
        assert_eq!(code, 255, "{what} let in: {out} {err}");
        assert!(
            err.contains("Permission denied (publickey)"),
            "{what}: {err}"
        );
    }
    // No key at all: password and keyboard-interactive are never offered.
    let (code, _, err) = client.run(
        None,
        &[
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        ],
        "true",
    );
    assert_eq!(code, 255, "{err}");
    assert!(!err.contains("password:"), "{err}");
    // Each refused key is a failed authentication logged for fail2ban.
    let filter =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/fail2ban/alknet.conf");
    let out = Command::new("fail2ban-regex")
        .arg(&server.stderr_path)
        .arg(&filter)
        .output()
        .expect("fail2ban-regex (Debian package fail2ban)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("127.0.0.1"), "{text}");
    assert!(!text.contains("| 0 matched"), "{text}");
}

#[test]
fn unknown_and_revoked_quic_peers_are_refused() {
    let client = SshClient::new();
    let stranger = SshClient::new();
    let server = Server::start("[services.ssh]\nenabled = true\n");
    let (code, _, err) = run_cli(
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
    assert_eq!(code, 0, "{err}");
    client.paste_config(&server, "gw");
    stranger.paste_config(&server, "gw");
    let (code, out, err) = client.run(None, &[], "echo in");
    assert_eq!((code, out.as_str()), (0, "in\n"), "{err}");
    // Refused by the shard before any SSH byte: ssh sees no banner (`alknet connect`
    // reports the close, or ssh's banner timeout fires first).
    let (code, out, err) = stranger.run(None, &[], "echo in");
    assert_eq!((code, out.as_str()), (255, ""), "{err}");
    assert!(!err.contains("SSH-2.0"), "{err}");

    // A running session is cut by the revocation, its child killed.
    let marker = format!("{}.{}", 100, std::process::id());
    let mut running = client
        .ssh(None)
        .args(["gw", &format!("echo started; exec sleep {marker}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh");
    {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(running.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "started");
    }
    let pattern = format!("^sleep {marker}$");
    assert_eq!(pgrep(&pattern).len(), 1, "the session's child runs");
    let (code, _, err) = run_cli(&["peer", "revoke", "laptop"], &server.data_dir(), b"");
    assert_eq!(code, 0, "{err}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(wait_for(
        Duration::from_secs(1),
        "the revoked session's child to be killed",
        || pgrep(&pattern).is_empty(),
    ));
    let status = running.wait().unwrap();
    assert!(!status.success());
    let (code, out, err) = client.run(None, &[], "echo in");
    assert_eq!((code, out.as_str()), (255, ""), "{err}");
}

#[test]
fn weak_algorithms_are_refused_and_strong_ones_negotiated() {
    let client = SshClient::new();
    // Each refused attempt holds a session until its QUIC connection times out (ssh kills
    // its ProxyCommand without a QUIC close), so the cap is raised above the attempts.
    let server = Server::start(&format!(
        "[services.ssh]\nenabled = true\nmax_sessions_per_peer = 32\n{}",
        peer("laptop", &client.fingerprint, &["ssh"], &[])
    ));
    client.paste_config(&server, "gw");
    let refused: &[&[&str]] = &[
        &["-o", "KexAlgorithms=diffie-hellman-group1-sha1"],
        &["-o", "KexAlgorithms=diffie-hellman-group14-sha1"],
        &["-o", "KexAlgorithms=diffie-hellman-group-exchange-sha1"],
        &["-o", "KexAlgorithms=diffie-hellman-group14-sha256"],
        &["-o", "KexAlgorithms=ecdh-sha2-nistp256"],
        &["-o", "Ciphers=aes128-cbc"],
        &["-o", "Ciphers=aes256-cbc"],
        &["-o", "Ciphers=3des-cbc"],
        &["-o", "Ciphers=aes128-ctr"],
        &["-o", "Ciphers=aes256-ctr", "-o", "MACs=hmac-sha1"],
        &["-o", "HostKeyAlgorithms=ssh-rsa"],
        &["-o", "HostKeyAlgorithms=rsa-sha2-256"],
        &["-o", "HostKeyAlgorithms=ecdsa-sha2-nistp256"],
    ];
    for opts in refused {
        let (code, out, err) = client.run(None, opts, "echo in");
        assert_eq!(code, 255, "{opts:?} accepted: {out}");
        assert!(
            err.contains("no matching") || err.contains("Bad SSH2"),
            "{opts:?}: {err}"
        );
    }
    let (code, _, err) = client.run(None, &["-vv"], "true");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("kex: algorithm: mlkem768x25519-sha256")
            || err.contains("kex: algorithm: curve25519-sha256"),
        "{err}"
    );
    assert!(
        err.contains("kex: host key algorithm: ssh-ed25519"),
        "{err}"
    );
    assert!(
        err.contains("cipher: chacha20-poly1305@openssh.com"),
        "{err}"
    );
    let (code, _, err) = client.run(
        None,
        &["-vv", "-o", "Ciphers=aes256-gcm@openssh.com"],
        "true",
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("cipher: aes256-gcm@openssh.com"), "{err}");
}

#[test]
fn exec_only_peer_runs_the_allowlist_and_nothing_else() {
    let client = SshClient::new();
    let server = Server::start(&format!(
        "[services.ssh]\nenabled = true\nexec_allow = [\"echo allowed\"]\n{}",
        peer("cron", &client.fingerprint, &["ssh-exec"], &[])
    ));
    client.paste_config(&server, "gw");
    let (code, out, err) = client.run(None, &[], "echo allowed");
    assert_eq!((code, out.as_str()), (0, "allowed\n"), "{err}");
    for cmd in ["echo allowed; id", "id", "echo  allowed"] {
        let (code, out, _) = client.run(None, &[], cmd);
        assert_ne!(code, 0, "{cmd:?} ran: {out}");
        assert!(out.is_empty(), "{cmd:?}: {out}");
    }
    // No shell and no PTY.
    let out = client
        .ssh(None)
        .args(["-tt", "gw"])
        .stdin(Stdio::null())
        .output()
        .expect("ssh");
    assert_ne!(out.status.code(), Some(0));
}

/// The server runs as root and sessions as another account: groups, uid, gid and the
/// environment come from that account's passwd entry.
#[test]
fn sessions_run_as_the_configured_login_user() {
    if !nix_is_root() {
        // Not root: the switch cannot happen, and asking for it must fail at start.
        let e = Server::try_start("[services.ssh]\nenabled = true\nlogin_user = \"root\"\n")
            .err()
            .expect("a non-root server must refuse another login user");
        assert!(e.contains("login_user"), "{e}");
        return;
    }
    let exists = Command::new("id")
        .arg("alknet-test")
        .output()
        .expect("id")
        .status
        .success();
    if !exists {
        let status = Command::new("useradd")
            .args(["--system", "-M", "-s", "/bin/sh", "alknet-test"])
            .status()
            .expect("useradd (Debian package passwd)");
        assert!(status.success(), "useradd alknet-test");
    }
    let client = SshClient::new();
    let server = Server::start(&format!(
        "[services.ssh]\nenabled = true\nlogin_user = \"alknet-test\"\n{}",
        peer("laptop", &client.fingerprint, &["ssh"], &[])
    ));
    client.paste_config(&server, "gw");
    let (code, out, err) = client.run(None, &[], "id -un; id -u; echo \"$USER:$LOGNAME:$SHELL\"");
    assert_eq!(code, 0, "{err}");
    let want_uid = String::from_utf8_lossy(
        &Command::new("id")
            .args(["-u", "alknet-test"])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_owned();
    assert_eq!(
        out,
        format!("alknet-test\n{want_uid}\nalknet-test:alknet-test:/bin/sh\n")
    );
    // Only root's groups would let it read this.
    let (code, _, _) = client.run(None, &[], "cat /etc/shadow");
    assert_ne!(code, 0, "the switched session read /etc/shadow");
}

fn nix_is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}
