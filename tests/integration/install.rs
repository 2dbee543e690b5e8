//! `deploy/install.sh` staged into a temporary root (`--destdir`): every file with its mode
//! and content, the manifest's hashes, a second run changing nothing, an upgrade keeping an
//! edited config (new version beside it as `.new`) and replacing an unedited file, the
//! ssh-login drop-in kept across runs until `--no-ssh-login`, `--uninstall` removing exactly
//! what was installed and keeping the data directory, `--purge`, and usage errors.

use crate::support::ALKNET;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const PREFIX: &str = "/opt/alknet";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A copy of the parts of the source tree the installer reads (`deploy/`, `README.md`), so a
/// test can change what it ships without touching the real tree.
fn tree_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(repo().join("deploy"))
        .arg(repo().join("README.md"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

/// Runs the installer of `tree` with `args`: exit code, stdout, stderr.
fn install(tree: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("bash")
        .arg(tree.join("deploy/install.sh"))
        .args(args)
        .output()
        .expect("bash");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every regular file under `root`, by its path inside `root`, with its mode and content.
fn files(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let md = std::fs::symlink_metadata(&path).unwrap();
            if md.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = format!("/{}", path.strip_prefix(root).unwrap().display());
                let mode = md.permissions().mode() & 0o7777;
                out.insert(rel, (mode, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Every entry (files and directories) under `root`.
fn entries(root: &Path) -> Vec<String> {
    let out = Command::new("find")
        .arg(root)
        .arg("-mindepth")
        .arg("1")
        .output()
        .unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches(root.to_str().unwrap()).to_owned())
        .collect();
    v.sort();
    v
}

/// What the installer ships at each path, for the tree at `tree`.
fn expected(tree: &Path, ssh_login: bool) -> BTreeMap<String, (u32, Vec<u8>)> {
    let read = |p: &str| std::fs::read(tree.join(p)).unwrap();
    let unit = String::from_utf8(read("deploy/alknet.service"))
        .unwrap()
        .replace("/usr/local/bin/alknet", &format!("{PREFIX}/bin/alknet"))
        .replace(
            "file:///usr/share/doc/alknet/",
            &format!("file://{PREFIX}/share/doc/alknet/"),
        );
    let mut m = BTreeMap::new();
    m.insert(
        format!("{PREFIX}/bin/alknet"),
        (0o755, std::fs::read(ALKNET).unwrap()),
    );
    m.insert(
        "/etc/systemd/system/alknet.service".into(),
        (0o644, unit.into_bytes()),
    );
    m.insert(
        "/etc/alknet/alknet.toml".into(),
        (0o644, read("deploy/alknet.toml")),
    );
    m.insert(
        "/etc/sysctl.d/99-alknet.conf".into(),
        (0o644, read("deploy/99-alknet.conf")),
    );
    m.insert(
        "/etc/fail2ban/filter.d/alknet.conf".into(),
        (0o644, read("deploy/fail2ban/alknet.conf")),
    );
    m.insert(
        "/etc/fail2ban/jail.d/alknet.local".into(),
        (0o644, read("deploy/fail2ban/alknet.local")),
    );
    m.insert(
        format!("{PREFIX}/share/doc/alknet/README.md"),
        (0o644, read("README.md")),
    );
    m.insert(
        format!("{PREFIX}/share/doc/alknet/INSTALL.md"),
        (0o644, read("deploy/INSTALL.md")),
    );
    if ssh_login {
        m.insert(
            "/etc/systemd/system/alknet.service.d/ssh-login.conf".into(),
            (0o644, read("deploy/alknet.service.d/ssh-login.conf")),
        );
    }
    m
}

const MANIFEST: &str = "/opt/alknet/share/alknet/install.manifest";

/// Checks that `root` holds exactly `want` plus the manifest, and that the manifest lists
/// each of them with its hash and mode.
fn assert_installed(root: &Path, want: &BTreeMap<String, (u32, Vec<u8>)>) {
    let mut got = files(root);
    let (_, manifest) = got.remove(MANIFEST).expect("no manifest");
    let manifest = String::from_utf8(manifest).unwrap();
    // git's remote helper: a symlink to the binary beside it, listed as a link.
    let helper = format!("{PREFIX}/bin/git-remote-alknet");
    got.remove(&helper)
        .unwrap_or_else(|| panic!("{helper} was not installed"));
    let on_disk = root.join(helper.trim_start_matches('/'));
    assert_eq!(
        std::fs::read_link(&on_disk).unwrap(),
        Path::new("alknet"),
        "{helper} is not a symlink to alknet"
    );
    let line = format!("link alknet {helper}");
    assert!(
        manifest.lines().any(|l| l == line),
        "manifest lacks `{line}`:\n{manifest}"
    );
    for (path, (mode, content)) in want {
        let (got_mode, got_content) = got
            .remove(path)
            .unwrap_or_else(|| panic!("{path} was not installed"));
        assert_eq!(got_mode, *mode, "{path}: mode {got_mode:o}, want {mode:o}");
        assert!(got_content == *content, "{path}: content differs");
        let line = format!("file {} {:04o} {path}", sha256(content), mode);
        assert!(
            manifest.lines().any(|l| l == line),
            "manifest lacks `{line}`:\n{manifest}"
        );
    }
    assert!(got.is_empty(), "unexpected files: {:?}", got.keys());
}

#[test]
fn install_upgrade_and_uninstall_in_a_staging_root() {
    let tree = tree_copy();
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().to_str().unwrap();
    let args = ["--destdir", dest, "--prefix", PREFIX, "--bin", ALKNET];

    let (code, out, err) = install(tree.path(), &args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("systemctl enable --now alknet"), "{out}");
    let want = expected(tree.path(), false);
    assert_installed(root.path(), &want);
    let unit = String::from_utf8(want["/etc/systemd/system/alknet.service"].1.clone()).unwrap();
    assert!(
        unit.contains("ExecStart=/opt/alknet/bin/alknet serve") && !unit.contains("/usr/local"),
        "{unit}"
    );

    // Again: nothing to do.
    let (code, out, err) = install(tree.path(), &args);
    assert_eq!((code, out.trim()), (0, "nothing changed"), "{err}");
    assert_installed(root.path(), &want);

    // An upgrade: the operator edited the config; the new release changes the config and the
    // sysctl file. The edited config stays, the new one goes beside it; sysctl is replaced.
    let config = root.path().join("etc/alknet/alknet.toml");
    let mut edited = std::fs::read(&config).unwrap();
    edited.extend_from_slice(b"\n[[peers]]\nid = \"ops\"\n");
    std::fs::write(&config, &edited).unwrap();
    for f in ["deploy/alknet.toml", "deploy/99-alknet.conf"] {
        let p = tree.path().join(f);
        let mut text = std::fs::read(&p).unwrap();
        text.extend_from_slice(b"# next release\n");
        std::fs::write(&p, text).unwrap();
    }
    let (code, out, err) = install(tree.path(), &args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("kept {}", config.display())) && out.contains("alknet.toml.new"),
        "{out}"
    );
    let mut want = expected(tree.path(), false);
    let shipped = want.remove("/etc/alknet/alknet.toml").unwrap();
    want.insert("/etc/alknet/alknet.toml.new".into(), shipped.clone());
    want.insert("/etc/alknet/alknet.toml".into(), (0o644, edited.clone()));
    let mut got = files(root.path());
    assert_eq!(
        got["/etc/alknet/alknet.toml"].1, edited,
        "the edited config was replaced"
    );
    assert_eq!(got["/etc/alknet/alknet.toml.new"], shipped);
    assert_eq!(
        got["/etc/sysctl.d/99-alknet.conf"],
        want["/etc/sysctl.d/99-alknet.conf"]
    );
    got.remove(MANIFEST);
    assert!(
        got.remove(&format!("{PREFIX}/bin/git-remote-alknet"))
            .is_some()
    );
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    let (code, out, _) = install(tree.path(), &args);
    assert_eq!((code, out.trim()), (0, "nothing changed"));

    // The ssh-login drop-in: installed on request, kept by later runs, removed on request.
    let dropin = root
        .path()
        .join("etc/systemd/system/alknet.service.d/ssh-login.conf");
    let with = [&args[..], &["--ssh-login"]].concat();
    let (code, out, err) = install(tree.path(), &with);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        std::fs::read(&dropin).unwrap(),
        std::fs::read(tree.path().join("deploy/alknet.service.d/ssh-login.conf")).unwrap()
    );
    let (_, out, _) = install(tree.path(), &args);
    assert_eq!(out.trim(), "nothing changed");
    assert!(
        dropin.exists(),
        "a run without the flag removed the drop-in"
    );
    let without = [&args[..], &["--no-ssh-login"]].concat();
    let (code, out, _) = install(tree.path(), &without);
    assert_eq!(code, 0);
    assert!(out.contains("removed") && !dropin.exists(), "{out}");

    // Uninstall: everything installed goes, the edited config and the data dir stay.
    let data = root.path().join("var/lib/alknet");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("store.redb"), b"identities").unwrap();
    let (code, out, err) = install(
        tree.path(),
        &["--uninstall", "--destdir", dest, "--prefix", PREFIX],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("kept the data directory"), "{out}");
    let left: Vec<String> = files(root.path()).into_keys().collect();
    assert_eq!(
        left,
        [
            "/etc/alknet/alknet.toml",
            MANIFEST,
            "/var/lib/alknet/store.redb"
        ],
        "{out}"
    );
    assert_eq!(std::fs::read(&config).unwrap(), edited);

    // Purge: nothing at all is left, directories included.
    let (code, out, err) = install(
        tree.path(),
        &[
            "--uninstall",
            "--purge",
            "--destdir",
            dest,
            "--prefix",
            PREFIX,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let left = entries(root.path());
    assert!(
        left.iter().all(|e| e == "/var" || e == "/var/lib"),
        "left behind: {left:?}"
    );
    let (code, out, _) = install(
        tree.path(),
        &["--uninstall", "--destdir", dest, "--prefix", PREFIX],
    );
    assert_eq!(code, 0);
    assert!(out.contains("nothing to uninstall"), "{out}");
}

#[test]
fn installer_usage_errors() {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().to_str().unwrap();
    let tree = repo();
    for (args, says) in [
        (vec!["--frobnicate"], "unknown argument '--frobnicate'"),
        (vec!["--prefix"], "--prefix needs a value"),
        (
            vec!["--prefix", "usr/local", "--destdir", dest],
            "absolute path",
        ),
        (
            vec!["--purge", "--destdir", dest],
            "--purge goes with --uninstall",
        ),
        (
            vec!["--uninstall", "--bin", ALKNET, "--destdir", dest],
            "not --uninstall",
        ),
    ] {
        let (code, out, err) = install(&tree, &args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(
            err.contains(says) && err.contains("--help"),
            "{args:?}: {err}"
        );
    }
    let (code, _, err) = install(&tree, &["--destdir", dest, "--bin", "/nonexistent/alknet"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("/nonexistent/alknet is not an executable file"),
        "{err}"
    );
    assert!(
        files(root.path()).is_empty(),
        "a failed run installed something"
    );
    let (code, out, _) = install(&tree, &["--help"]);
    assert_eq!(code, 0);
    for word in [
        "--prefix",
        "--destdir",
        "--bin",
        "--ssh-login",
        "--uninstall",
        "--purge",
    ] {
        assert!(out.contains(word), "--help lacks {word}");
    }
}

#[test]
fn shipped_scripts_pass_shellcheck() {
    let scripts: Vec<PathBuf> = ["deploy/install.sh", ".ci/test", ".ci/run", "fuzz/run.sh"]
        .iter()
        .map(|s| repo().join(s))
        .filter(|p| p.exists())
        .collect();
    assert!(scripts.len() >= 3, "{scripts:?}");
    let out = Command::new("shellcheck")
        .args(&scripts)
        .output()
        .unwrap_or_else(|e| {
            panic!("shellcheck: {e}; install it (apt-get install shellcheck, or bash .ci/test)")
        });
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shipped jail and filter, as fail2ban itself reads them: a copy of the system's
/// fail2ban configuration with only Alknet's jail enabled passes `fail2ban-client -t`, and
/// the jail watches alknet.service's journal with the shipped filter on the UDP port.
#[test]
fn fail2ban_accepts_the_shipped_jail() {
    let system = Path::new("/etc/fail2ban");
    assert!(
        system.join("jail.conf").exists(),
        "fail2ban is not installed: apt-get install fail2ban (bash .ci/test installs it)"
    );
    let conf = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", system.display()))
        .arg(conf.path())
        .status()
        .unwrap();
    assert!(status.success());
    // Only Alknet's jail: the distribution's jail.d files enable jails for logs not here.
    for entry in std::fs::read_dir(conf.path().join("jail.d")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    std::fs::copy(
        repo().join("deploy/fail2ban/alknet.conf"),
        conf.path().join("filter.d/alknet.conf"),
    )
    .unwrap();
    std::fs::copy(
        repo().join("deploy/fail2ban/alknet.local"),
        conf.path().join("jail.d/alknet.local"),
    )
    .unwrap();
    let run = |flag: &str| {
        let out = Command::new("fail2ban-client")
            .arg("-c")
            .arg(conf.path())
            .arg(flag)
            .output()
            .expect("fail2ban-client (Debian package fail2ban)");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = run("-t");
    assert!(ok, "fail2ban-client -t: {text}");
    let (ok, dump) = run("-d");
    assert!(ok, "{dump}");
    for want in [
        "['add', 'alknet', 'systemd']",
        "['set', 'alknet', 'addjournalmatch', '_SYSTEMD_UNIT=alknet.service']",
        "['set', 'alknet', 'maxretry', 5]",
        "alknet::auth: authentication failed",
        "4433",
        "udp",
    ] {
        assert!(dump.contains(want), "the jail lacks {want}: {dump}");
    }
}

/// Installing into `/` without root is refused before anything is touched, saying what to do.
#[test]
fn installing_into_the_root_needs_root() {
    let script = std::fs::read(repo().join("deploy/install.sh")).unwrap();
    // As an unprivileged user: this process itself, or `nobody` when the tests run as root.
    let mut cmd = if runs_as_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "bash",
            "-s",
            "--",
        ]);
        c
    } else {
        let mut c = Command::new("bash");
        c.args(["-s", "--"]);
        c
    };
    let mut child = cmd
        .args(["--bin", ALKNET])
        .current_dir("/")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux) and bash");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&script).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "installing into / needs root: run it with sudo, or stage it with --destdir DIR"
        ),
        "{err}"
    );
}

/// Whether this process runs as root (read from /proc, no libc call needed).
fn runs_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0")
}
