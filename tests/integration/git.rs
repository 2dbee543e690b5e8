//! The git service with the real `git` binary: `git-remote-alknet` (a symlink to the
//! `alknet` binary) on the PATH, a real `alknet serve`, QUIC on loopback.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const GIT_ALPN: &[u8] = b"alknet/git";

/// A git client: its Alknet data directory (key), a PATH directory with the helper, and a
/// scratch directory for work trees.
struct GitClient {
    dir: tempfile::TempDir,
    fingerprint: String,
    server_fp: String,
    /// Set on every git command (e.g. `GIT_SSH_COMMAND`).
    env: Vec<(String, String)>,
}

impl GitClient {
    fn new(server_fp: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (code, fp, err) = run_cli(&["id"], &dir.path().join("alknet"), b"");
        assert_eq!(code, 0, "{err}");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(ALKNET, bin.join("git-remote-alknet")).unwrap();
        Self {
            dir,
            fingerprint: fp.trim().to_owned(),
            server_fp: server_fp.to_owned(),
            env: Vec::new(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `git ARGS` in `cwd` with the helper on the PATH and the client's key.
    fn git(&self, cwd: &Path, args: &[&str]) -> Output {
        self.git_env(cwd, args, &[])
    }

    fn git_env(&self, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new("git")
            .args(args)
            .current_dir(cwd)
            .env("PATH", path)
            .env("ALKNET_DATA_DIR", self.path("alknet"))
            .env("ALKNET_SERVER_FINGERPRINT", &self.server_fp)
            .env("HOME", self.dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.org")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.org")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    fn ok(&self, cwd: &Path, args: &[&str]) -> String {
        let out = self.git(cwd, args);
        assert!(
            out.status.success(),
            "git {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A work tree at `rel` with `n` commits on `main`, each adding a file.
    fn repo_with_commits(&self, rel: &str, n: usize) -> PathBuf {
        let wt = self.path(rel);
        std::fs::create_dir_all(&wt).unwrap();
        self.ok(&wt, &["init", "-q", "-b", "main"]);
        for i in 0..n {
            std::fs::write(wt.join(format!("f{i}.txt")), format!("commit {i}\n")).unwrap();
            self.ok(&wt, &["add", "."]);
            self.ok(&wt, &["commit", "-q", "-m", &format!("c{i}")]);
        }
        wt
    }
}

fn head(c: &GitClient, wt: &Path) -> String {
    c.ok(wt, &["rev-parse", "HEAD"]).trim().to_owned()
}

fn server_for(dev: &GitClient, reader: &GitClient) -> Server {
    Server::start(&format!(
        "[[peers]]\nid = \"dev\"\nfingerprints = [\"{}\"]\nscopes = [\"git\"]\n\
         [[peers]]\nid = \"reader\"\nfingerprints = [\"{}\"]\nscopes = [\"git\"]\n\
         [[git.allow]]\npeer = \"dev\"\nrepos = [\"org/*\"]\naccess = [\"read\", \"write\", \"create\"]\n\
         [[git.allow]]\npeer = \"reader\"\nrepos = [\"org/public\"]\naccess = [\"read\"]\n",
        dev.fingerprint, reader.fingerprint
    ))
}

/// Push creates the repository, clone gives the same history, fetch brings a later push,
/// a shallow clone has one commit, and both protocol versions work.
#[test]
fn push_clone_fetch_shallow_and_both_protocols() {
    let mut dev = GitClient::new("");
    let reader = GitClient::new("");
    let server = server_for(&dev, &reader);
    dev.server_fp = server.fingerprint.clone();
    let url = format!("alknet://{}/org/app.git", server.addr);

    let wt = dev.repo_with_commits("src", 3);
    dev.ok(&wt, &["push", "-q", &url, "main"]);
    assert!(server.data_dir().join("git/org/app.git/HEAD").is_file());

    let clone = dev.path("clone");
    dev.ok(
        dev.dir.path(),
        &["clone", "-q", &url, clone.to_str().unwrap()],
    );
    assert_eq!(head(&dev, &clone), head(&dev, &wt));
    assert!(clone.join("f2.txt").is_file());

    std::fs::write(wt.join("later.txt"), "later\n").unwrap();
    dev.ok(&wt, &["add", "."]);
    dev.ok(&wt, &["commit", "-q", "-m", "later"]);
    dev.ok(&wt, &["push", "-q", &url, "main"]);
    dev.ok(&clone, &["pull", "-q", "--ff-only"]);
    assert_eq!(head(&dev, &clone), head(&dev, &wt));

    let shallow = dev.path("shallow");
    dev.ok(
        dev.dir.path(),
        &[
            "clone",
            "-q",
            "--depth",
            "1",
            &url,
            shallow.to_str().unwrap(),
        ],
    );
    assert_eq!(
        dev.ok(&shallow, &["rev-list", "--count", "HEAD"]).trim(),
        "1"
    );
    assert_eq!(head(&dev, &shallow), head(&dev, &wt));

    // The server's answer shows the version: v2 starts with `version 2`, v0 with the refs.
    for (version, v2) in [("2", true), ("0", false)] {
        let out = dev.git_env(
            dev.dir.path(),
            &[
                "-c",
                &format!("protocol.version={version}"),
                "ls-remote",
                &url,
            ],
            &[("GIT_TRACE_PACKET", "1")],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("refs/heads/main"));
        assert_eq!(
            err.contains("< version 2"),
            v2,
            "protocol.version={version}: {err}"
        );
    }
    let fresh = dev.path("fresh-v0");
    dev.ok(
        dev.dir.path(),
        &[
            "-c",
            "protocol.version=0",
            "clone",
            "-q",
            &url,
            fresh.to_str().unwrap(),
        ],
    );
    assert_eq!(head(&dev, &fresh), head(&dev, &wt));
}

/// A peer without a rule for a repository cannot read it, and git shows the server's
/// reason; a read-only peer cannot push.
#[test]
fn reads_and_pushes_outside_the_rules_are_refused() {
    let mut dev = GitClient::new("");
    let mut reader = GitClient::new("");
    let server = server_for(&dev, &reader);
    dev.server_fp = server.fingerprint.clone();
    reader.server_fp = server.fingerprint.clone();
    let wt = dev.repo_with_commits("src", 1);
    for repo in ["org/app", "org/public"] {
        dev.ok(
            &wt,
            &[
                "push",
                "-q",
                &format!("alknet://{}/{repo}.git", server.addr),
                "main",
            ],
        );
    }

    let out = reader.git(
        reader.dir.path(),
        &[
            "clone",
            "-q",
            &format!("alknet://{}/org/app.git", server.addr),
            "x",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("remote error: access denied"), "{err}");
    assert!(!reader.path("x/.git").exists());

    let public = format!("alknet://{}/org/public.git", server.addr);
    reader.ok(reader.dir.path(), &["clone", "-q", &public, "p"]);
    let p = reader.path("p");
    std::fs::write(p.join("mine.txt"), "x\n").unwrap();
    reader.ok(&p, &["add", "."]);
    reader.ok(&p, &["commit", "-q", "-m", "mine"]);
    let out = reader.git(&p, &["push", "-q", &public, "HEAD:main"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("access denied"), "{err}");

    // Outside org/* even dev may not create.
    let out = dev.git(
        &wt,
        &[
            "push",
            "-q",
            &format!("alknet://{}/elsewhere.git", server.addr),
            "main",
        ],
    );
    assert!(!out.status.success());
    assert!(!server.data_dir().join("git/elsewhere.git").exists());
}

/// Hostile repository names sent as raw headers are refused with an ERR pkt-line, and
/// nothing is created or read outside (or inside) the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_repository_paths_are_refused_before_the_filesystem() {
    let key = ClientKey::generate().unwrap();
    let server = Server::start(&format!(
        "{}[[git.allow]]\nscope = \"git\"\nrepos = [\"**\"]\naccess = [\"read\", \"write\", \"create\"]\n",
        peer_toml("dev", &key, &["git"])
    ));
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "secret").unwrap();
    let root = server.data_dir().join("git");
    std::os::unix::fs::symlink(outside.path(), root.join("escape.git")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();
    let before = listing(server.data_dir().as_path());
    let ep = quinn_endpoint();
    let conn = connect(&ep, server.addr, Some(&key), GIT_ALPN)
        .await
        .unwrap();
    let outside_path = format!("{}/secret", outside.path().display());
    // (A newline would end the header line early: those names are the unit tests'.)
    let mut names: Vec<String> = alknet_git::name::HOSTILE_EXAMPLES
        .iter()
        .chain(EXTRA_HOSTILE)
        .filter(|s| !s.contains('\n'))
        .map(|s| s.to_string())
        .collect();
    names.extend([
        outside_path.clone(),
        "escape.git".into(),
        "escape".into(),
        "link/x.git".into(),
        "link/x".into(),
    ]);
    assert!(names.len() >= 50, "{}", names.len());
    for name in &names {
        for service in ["git-upload-pack", "git-receive-pack"] {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let mut header = format!("alknet-git/1 {service} ").into_bytes();
            header.extend_from_slice(name.as_bytes());
            header.push(b'\n');
            send.write_all(&header).await.unwrap();
            let _ = send.finish();
            let got = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(4096))
                .await
                .expect("an answer")
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&got);
            assert!(
                got.len() >= 8 && &got[4..8] == b"ERR ",
                "{service} {name:?} answered {text:?}"
            );
        }
    }
    assert_eq!(listing(server.data_dir().as_path()), before);
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
}

/// Every path below `dir` (not following symlinks), sorted, without the server's own
/// changing files (the store, the log, the control socket).
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(d: &Path, base: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            out.push(rel);
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&p, base, out);
            }
        }
    }
    walk(&dir.join("git"), dir, &mut out);
    out.sort();
    out
}

/// The crate's hostile names plus the ones only bytes on the wire can carry.
const EXTRA_HOSTILE: &[&str] = &[
    "a\u{1b}b",
    "\u{e9}",
    "a\u{202e}b",
    "x/ /y",
    "a\rb",
    "%00",
    "a%00b",
    "../../../../../../etc/shadow",
    "org/-rf",
    "a/../.git",
    "-",
];

/// Protected refs (the default: main, master, tags) move forward only and are never
/// deleted, with git's own rejection; other branches may be rewritten.
#[test]
fn protected_refs_refuse_force_pushes_and_deletion() {
    let mut dev = GitClient::new("");
    let reader = GitClient::new("");
    let server = server_for(&dev, &reader);
    dev.server_fp = server.fingerprint.clone();
    let url = format!("alknet://{}/org/app.git", server.addr);
    let wt = dev.repo_with_commits("src", 2);
    dev.ok(&wt, &["push", "-q", &url, "main", "main:topic"]);

    dev.ok(&wt, &["commit", "-q", "--amend", "-m", "rewritten"]);
    let out = dev.git(&wt, &["push", "--force", &url, "main"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("pre-receive hook declined"), "{err}");
    assert!(err.contains("refs/heads/main is protected"), "{err}");

    let out = dev.git(&wt, &["push", &url, ":main"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cannot be deleted"), "{err}");

    // An unprotected branch may be force-pushed and deleted.
    dev.ok(&wt, &["push", "-q", "--force", &url, "main:topic"]);
    dev.ok(&wt, &["push", "-q", &url, ":topic"]);
    let refs = dev.ok(&wt, &["ls-remote", &url]);
    assert!(
        refs.contains("refs/heads/main") && !refs.contains("refs/heads/topic"),
        "{refs}"
    );

    // A fast-forward of main goes through.
    dev.ok(&wt, &["fetch", "-q", &url, "main"]);
    dev.ok(&wt, &["reset", "-q", "--hard", "FETCH_HEAD"]);
    std::fs::write(wt.join("more.txt"), "more\n").unwrap();
    dev.ok(&wt, &["add", "."]);
    dev.ok(&wt, &["commit", "-q", "-m", "more"]);
    dev.ok(&wt, &["push", "-q", &url, "main"]);
}

/// `alknet git init` creates a bare repository under the server's root, and `alknet git
/// repos` shows each peer exactly what it may read.
#[test]
fn git_init_and_repos_list_per_peer() {
    let dev = GitClient::new("");
    let reader = GitClient::new("");
    let server = server_for(&dev, &reader);
    for name in ["org/app", "org/public", "other/x"] {
        let (code, out, err) = run_cli(&["git", "init", name], &server.data_dir(), b"");
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&format!("created {name}")), "{out}");
    }
    let (code, _, err) = run_cli(&["git", "init", "org/app"], &server.data_dir(), b"");
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = run_cli(&["git", "init", "../evil"], &server.data_dir(), b"");
    assert_ne!(code, 0);
    assert!(err.contains("repository"), "{err}");

    let list = |c: &GitClient| {
        let (code, out, err) = run_cli(
            &[
                "git",
                "repos",
                &server.addr.to_string(),
                "--fingerprint",
                &server.fingerprint,
                "--json",
            ],
            &c.path("alknet"),
            b"",
        );
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    assert_eq!(
        list(&dev),
        serde_json::json!([
            {"name": "org/app", "access": ["read", "write"]},
            {"name": "org/public", "access": ["read", "write"]},
        ])
    );
    assert_eq!(
        list(&reader),
        serde_json::json!([{"name": "org/public", "access": ["read"]}])
    );
}

/// Git over SSH: `git clone gw:org/app.git` through the ProxyCommand runs the same code path
/// and rules, for a peer holding only `git` (which gets no shell), protocol v2 included.
#[test]
fn git_over_ssh_for_a_git_only_peer() {
    let client = SshClient::new();
    let server = Server::start(&format!(
        "[services.ssh]\nenabled = true\n\
         [[peers]]\nid = \"gitonly\"\nfingerprints = [\"{}\"]\nscopes = [\"git\"]\n\
         [[git.allow]]\npeer = \"gitonly\"\nrepos = [\"org/*\"]\naccess = [\"read\", \"write\", \"create\"]\n",
        client.fingerprint
    ));
    client.paste_config(&server, "gw");
    let ssh = client.ssh(None);
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"));
    let ssh_command = std::iter::once(quote(ssh.get_program()))
        .chain(ssh.get_args().map(quote))
        .collect::<Vec<_>>()
        .join(" ");
    let mut git = GitClient::new("");
    git.env = vec![
        ("GIT_SSH_COMMAND".into(), ssh_command),
        ("GIT_SSH_VARIANT".into(), "ssh".into()),
    ];
    let home = git.dir.path();
    let wt = git.repo_with_commits("src", 1);
    git.ok(&wt, &["push", "-q", "gw:org/app.git", "main"]);
    assert!(server.data_dir().join("git/org/app.git/HEAD").is_file());

    git.ok(home, &["clone", "-q", "gw:org/app.git", "clone"]);
    assert_eq!(head(&git, &git.path("clone")), head(&git, &wt));
    let out = git.git_env(
        home,
        &["-c", "protocol.version=2", "ls-remote", "gw:org/app.git"],
        &[("GIT_TRACE_PACKET", "1")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("< version 2"), "{err}");

    // Refused by the rules, and no shell for a git-only peer.
    let out = git.git(home, &["clone", "-q", "gw:other/x.git", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("access denied"));
    let (code, out, _) = client.run(None, &[], "echo hi");
    assert_ne!(code, 0);
    assert!(!out.contains("hi"));
}

/// A 100 MB repository (incompressible blobs) pushed and cloned back byte for byte.
#[test]
fn a_hundred_megabyte_repository_round_trips() {
    let mut dev = GitClient::new("");
    let reader = GitClient::new("");
    let server = server_for(&dev, &reader);
    dev.server_fp = server.fingerprint.clone();
    let url = format!("alknet://{}/org/big.git", server.addr);
    let wt = dev.path("big");
    std::fs::create_dir_all(&wt).unwrap();
    dev.ok(&wt, &["init", "-q", "-b", "main"]);
    for i in 0..4u64 {
        for j in 0..25u64 {
            std::fs::write(
                wt.join(format!("blob-{i}-{j}.bin")),
                pattern(i * 100 + j, 1 << 20),
            )
            .unwrap();
        }
        dev.ok(&wt, &["add", "."]);
        dev.ok(&wt, &["commit", "-q", "-m", &format!("part {i}")]);
    }
    dev.ok(&wt, &["push", "-q", &url, "main"]);
    let clone = dev.path("big-clone");
    dev.ok(
        dev.dir.path(),
        &["clone", "-q", &url, clone.to_str().unwrap()],
    );
    assert_eq!(head(&dev, &clone), head(&dev, &wt));
    dev.ok(&clone, &["fsck", "--strict", "--no-progress"]);
    for name in ["blob-0-0.bin", "blob-3-24.bin"] {
        assert!(std::fs::read(clone.join(name)).unwrap() == std::fs::read(wt.join(name)).unwrap());
    }
}

/// Revoking a peer ends its running git operation: the connection closes and the
/// `git upload-pack` child is killed within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_kills_a_running_upload_pack() {
    let key = ClientKey::generate().unwrap();
    let server =
        Server::start("[[git.allow]]\nscope = \"git\"\nrepos = [\"**\"]\naccess = [\"read\"]\n");
    let (code, _, err) = run_cli(
        &[
            "peer",
            "add",
            "cloner",
            "--fingerprint",
            &key.fingerprint,
            "--scope",
            "git",
        ],
        &server.data_dir(),
        b"",
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_cli(&["git", "init", "org/app"], &server.data_dir(), b"");
    assert_eq!(code, 0, "{err}");
    let ep = quinn_endpoint();
    let conn = connect(&ep, server.addr, Some(&key), GIT_ALPN)
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"alknet-git/1 git-upload-pack org/app.git\n")
        .await
        .unwrap();
    // The advertisement arrives; upload-pack then waits for wants that never come.
    let mut first = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), recv.read_exact(&mut first))
        .await
        .expect("the advertisement")
        .unwrap();
    let marker = format!("{}/git-hooks upload-pack", server.data_dir().display());
    assert_eq!(pgrep(&marker).len(), 1, "one upload-pack runs");

    let (code, _, err) = run_cli(&["peer", "revoke", "cloner"], &server.data_dir(), b"");
    assert_eq!(code, 0, "{err}");
    tokio::time::timeout(Duration::from_secs(1), conn.closed())
        .await
        .expect("the revoked connection closed within a second");
    wait_for(
        Duration::from_secs(1),
        "the upload-pack child to be killed",
        || pgrep(&marker).is_empty(),
    )
    .await;
}

/// `[services.git]` limits: a peer's operations beyond `max_operations_per_peer` are refused
/// while the others run, an operation past `timeout` is killed, and a push larger than
/// `max_push_bytes` is refused by git itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operation_cap_time_limit_and_push_size_limit() {
    let key = ClientKey::generate().unwrap();
    let mut dev = GitClient::new("");
    let server = Server::start(&format!(
        "[services.git]\nmax_operations_per_peer = 2\ntimeout = \"2s\"\nmax_push_bytes = 200000\n\
         {}[[peers]]\nid = \"dev\"\nfingerprints = [\"{}\"]\nscopes = [\"git\"]\n\
         [[git.allow]]\nscope = \"git\"\nrepos = [\"**\"]\naccess = [\"read\", \"write\", \"create\"]\n",
        peer_toml("raw", &key, &["git"]),
        dev.fingerprint
    ));
    dev.server_fp = server.fingerprint.clone();
    let (code, _, err) = run_cli(&["git", "init", "org/app"], &server.data_dir(), b"");
    assert_eq!(code, 0, "{err}");
    let ep = quinn_endpoint();
    let conn = connect(&ep, server.addr, Some(&key), GIT_ALPN)
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"alknet-git/1 git-upload-pack org/app\n")
            .await
            .unwrap();
        let mut first = [0u8; 4];
        recv.read_exact(&mut first).await.unwrap();
        assert_ne!(&first, b"0000", "an advertisement, not a refusal");
        held.push((send, recv));
    }
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"alknet-git/1 git-upload-pack org/app\n")
        .await
        .unwrap();
    let _ = send.finish();
    let got = recv.read_to_end(4096).await.unwrap();
    assert!(
        String::from_utf8_lossy(&got).contains("ERR too many git operations"),
        "{got:?}"
    );
    // The two held operations hit the 2 s limit: killed, their streams end.
    for (_, mut recv) in held {
        let rest = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20))
            .await
            .expect("the time limit ends the operation");
        let _ = rest;
    }
    let marker = format!("{}/git-hooks upload-pack", server.data_dir().display());
    wait_for(
        Duration::from_secs(2),
        "the timed-out children to be gone",
        || pgrep(&marker).is_empty(),
    )
    .await;

    // 1 MiB of incompressible data is more than the 200 kB push limit.
    let wt = dev.path("src");
    std::fs::create_dir_all(&wt).unwrap();
    dev.ok(&wt, &["init", "-q", "-b", "main"]);
    std::fs::write(wt.join("big.bin"), pattern(9, 1 << 20)).unwrap();
    dev.ok(&wt, &["add", "."]);
    dev.ok(&wt, &["commit", "-q", "-m", "big"]);
    let url = format!("alknet://{}/org/app.git", server.addr);
    let out = dev.git(&wt, &["push", &url, "main"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("maximum allowed size"), "{err}");
}

/// The operator's hooks from `[services.git]` run (after the gateway's checks), never the
/// repository's own; a bad `[services.git]` value stops start-up naming file and key.
#[test]
fn operator_hooks_run_and_repository_hooks_do_not() {
    let mut dev = GitClient::new("");
    let hooks = tempfile::tempdir().unwrap();
    let pre = hooks.path().join("pre");
    let post = hooks.path().join("post");
    let marker = hooks.path().join("post-ran");
    std::fs::write(
        &pre,
        "#!/bin/sh\nwhile read old new ref; do\n  [ \"$ref\" = refs/heads/blocked ] && { echo \"policy: no blocked\"; exit 1; }\ndone\nexit 0\n",
    )
    .unwrap();
    std::fs::write(&post, format!("#!/bin/sh\ncat > {}\n", marker.display())).unwrap();
    for p in [&pre, &post] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let server = Server::start(&format!(
        "[services.git]\npre_receive = \"{}\"\npost_receive = \"{}\"\n\
         [[peers]]\nid = \"dev\"\nfingerprints = [\"{}\"]\nscopes = [\"git\"]\n\
         [[git.allow]]\npeer = \"dev\"\nrepos = [\"**\"]\naccess = [\"read\", \"write\", \"create\"]\n",
        pre.display(),
        post.display(),
        dev.fingerprint
    ));
    dev.server_fp = server.fingerprint.clone();
    let url = format!("alknet://{}/app.git", server.addr);
    let wt = dev.repo_with_commits("src", 1);
    dev.ok(&wt, &["push", "-q", &url, "main"]);
    let ran = std::fs::read_to_string(&marker).unwrap();
    assert!(ran.contains("refs/heads/main"), "{ran}");

    let out = dev.git(&wt, &["push", &url, "main:blocked"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("policy: no blocked"), "{err}");

    // A hook planted in the repository itself never runs.
    let planted = server.data_dir().join("git/app.git/hooks/pre-receive");
    std::fs::write(&planted, "#!/bin/sh\necho planted-hook-ran\nexit 1\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dev.ok(&wt, &["push", "-q", &url, "main:other"]);

    for (bad, key) in [
        ("timeout = \"0s\"", "timeout"),
        ("max_operations_per_peer = 0", "max_operations_per_peer"),
        ("default_branch = \"../x\"", "default_branch"),
        ("pre_receive = \"relative/hook\"", "pre_receive"),
    ] {
        let err = Server::try_start(&format!("[services.git]\n{bad}\n"))
            .err()
            .unwrap_or_default();
        assert!(err.contains("alknet.toml:"), "{bad}: {err}");
        assert!(err.contains(key), "{bad}: {err}");
    }
}

/// A device that joined with an invite clones by the stored server name, pinned by the join
/// (no fingerprint given); a wrong ALKNET_SERVER_FINGERPRINT is refused before any git byte.
#[test]
fn a_joined_device_uses_the_stored_server_name() {
    let server = Server::start(
        "[[git.allow]]\nscope = \"git\"\nrepos = [\"org/*\"]\naccess = [\"read\", \"write\", \"create\"]\n",
    );
    let (code, out, err) = run_cli(
        &[
            "invite",
            "--address",
            &server.addr.to_string(),
            "--name",
            "laptop",
            "--scope",
            "git",
        ],
        &server.data_dir(),
        b"",
    );
    assert_eq!(code, 0, "{err}");
    let invite = out.trim().to_owned();
    let mut dev = GitClient::new("");
    let (code, _, err) = run_cli(&["join", &invite, "--as", "gw"], &dev.path("alknet"), b"");
    assert_eq!(code, 0, "{err}");
    let wt = dev.repo_with_commits("src", 2);
    dev.ok(&wt, &["push", "-q", "alknet://gw/org/app.git", "main"]);
    dev.ok(
        dev.dir.path(),
        &["clone", "-q", "alknet://gw/org/app.git", "c"],
    );
    assert_eq!(head(&dev, &dev.path("c")), head(&dev, &wt));

    dev.server_fp = format!("ed25519:{}", "ab".repeat(32));
    let out = dev.git(dev.dir.path(), &["ls-remote", "alknet://gw/org/app.git"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("key"), "{err}");
}
