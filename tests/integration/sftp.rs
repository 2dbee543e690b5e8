//! `alknet sftp-server --root DIR` driven by OpenSSH's real `sftp` client over stdio
//! (`sftp -D`), in batch mode: put, get, ls, rename, rm, mkdir and symlink with checksums, and
//! escape attempts (`..`, absolute paths, symlinks pointing out, placed or created) refused,
//! with nothing outside DIR read or written. The raw-packet confinement cases (a symlink
//! swapped in mid-operation, pipelining, bounds) are in `handlers/ssh/tests/sftp_confinement.rs`.

use crate::support::{ALKNET, pattern};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"outside-the-root-never-to-be-read-41c7";

struct Rig {
    _base: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    local: PathBuf,
    outside: PathBuf,
}

impl Rig {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let (root, local, outside) = (base.join("root"), base.join("local"), base.join("outside"));
        for d in [&root, &local, &outside] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(outside.join("secret"), SECRET).unwrap();
        Self {
            _base: dir,
            base,
            root,
            local,
            outside,
        }
    }

    /// Runs `sftp -b` with `batch` against `alknet sftp-server --root ROOT`, from `local`.
    fn sftp(&self, batch: &str) -> (bool, String) {
        let file = self.local.join("batch");
        std::fs::write(&file, batch).unwrap();
        let server = format!("{ALKNET} sftp-server --root {}", self.root.display());
        let mut child = Command::new("sftp")
            .arg("-b")
            .arg(&file)
            .arg("-D")
            .arg(&server)
            .current_dir(&self.local)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("OpenSSH's sftp client (openssh-client) is installed");
        let limit = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() > limit {
                let _ = child.kill();
                panic!("sftp did not finish within 60 s: {batch}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output().unwrap();
        let _ = std::fs::remove_file(&file);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Every path beside the root (not under it) with its content, or `dir`/`link -> T`.
    fn outside_state(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.base.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p == self.root || p.starts_with(&self.local) {
                    continue;
                }
                let md = std::fs::symlink_metadata(&p).unwrap();
                let v = if md.file_type().is_symlink() {
                    format!("link -> {}", std::fs::read_link(&p).unwrap().display()).into_bytes()
                } else if md.is_dir() {
                    stack.push(p.clone());
                    b"dir".to_vec()
                } else {
                    std::fs::read(&p).unwrap()
                };
                out.insert(p, v);
            }
        }
        out
    }
}

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

fn sha256_file(p: &Path) -> Vec<u8> {
    sha256(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

#[test]
fn sftp_client_put_get_ls_rename_rm_mkdir_symlink() {
    let rig = Rig::new();
    let data = pattern(11, 5 << 20);
    let want = sha256(&data);
    std::fs::write(rig.local.join("up.bin"), &data).unwrap();
    let before = rig.outside_state();

    let (ok, out) = rig.sftp(
        "mkdir incoming\n\
         put up.bin incoming/data.bin\n\
         ls -l incoming\n\
         rename incoming/data.bin incoming/renamed.bin\n\
         symlink renamed.bin incoming/link.bin\n\
         ls -l incoming\n\
         get incoming/link.bin via-link.bin\n\
         get /incoming/renamed.bin down.bin\n",
    );
    assert!(ok, "sftp batch failed:\n{out}");
    assert!(
        out.contains("data.bin"),
        "first ls shows the upload:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with('l') && l.ends_with("link.bin")),
        "second ls shows the symlink:\n{out}"
    );
    let on_server = rig.root.join("incoming/renamed.bin");
    assert_eq!(sha256_file(&on_server), want, "upload differs");
    assert!(
        !rig.root.join("incoming/data.bin").exists(),
        "rename left the old name"
    );
    assert_eq!(
        std::fs::read_link(rig.root.join("incoming/link.bin")).unwrap(),
        Path::new("renamed.bin")
    );
    assert_eq!(
        sha256_file(&rig.local.join("down.bin")),
        want,
        "download differs"
    );
    assert_eq!(
        sha256_file(&rig.local.join("via-link.bin")),
        want,
        "link download differs"
    );

    let (ok, out) = rig.sftp(
        "rm incoming/link.bin\n\
         rm incoming/renamed.bin\n\
         rmdir incoming\n\
         ls\n",
    );
    assert!(ok, "sftp cleanup batch failed:\n{out}");
    assert!(
        !rig.root.join("incoming").exists(),
        "rmdir left the directory"
    );
    assert_eq!(std::fs::read_dir(&rig.root).unwrap().count(), 0);
    assert_eq!(
        rig.outside_state(),
        before,
        "something outside the root changed"
    );
}

#[test]
fn sftp_client_escape_attempts_are_refused() {
    let rig = Rig::new();
    std::fs::write(rig.local.join("plant.txt"), b"planted").unwrap();
    std::fs::write(rig.root.join("inside.txt"), b"inside").unwrap();
    // Links a host user (or an earlier session of another tool) left in the root.
    std::os::unix::fs::symlink(rig.outside.join("secret"), rig.root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../outside/secret", rig.root.join("rel-link")).unwrap();
    std::os::unix::fs::symlink(&rig.outside, rig.root.join("dir-link")).unwrap();
    std::os::unix::fs::symlink("../outside", rig.root.join("rel-dir-link")).unwrap();
    let before = rig.outside_state();
    let secret = rig.outside.join("secret").display().to_string();
    let outside = rig.outside.display().to_string();

    // Each must fail: the client's batch stops with an error.
    let refused = [
        "get ../outside/secret got".to_owned(),
        format!("get ../../../../{secret} got"),
        format!("get {secret} got"),
        "get abs-link got".to_owned(),
        "get rel-link got".to_owned(),
        "get dir-link/secret got".to_owned(),
        "get rel-dir-link/secret got".to_owned(),
        "ls ../outside".to_owned(),
        format!("ls {outside}"),
        "put plant.txt ../outside/planted".to_owned(),
        format!("put plant.txt {outside}/planted"),
        "put plant.txt dir-link/planted".to_owned(),
        "put plant.txt rel-dir-link/planted".to_owned(),
        "put plant.txt abs-link".to_owned(),
        format!("symlink {secret} out-abs"),
        "symlink ../outside/secret out-rel".to_owned(),
        "symlink ../../../.. out-up".to_owned(),
        format!("rename inside.txt {outside}/moved"),
        "rename inside.txt dir-link/moved".to_owned(),
        "rm dir-link/secret".to_owned(),
        "rm ../outside/secret".to_owned(),
        "mkdir dir-link/newdir".to_owned(),
        format!("chmod 777 {secret}"),
        "chmod 777 abs-link".to_owned(),
    ];
    for cmd in &refused {
        let (ok, out) = rig.sftp(&format!("{cmd}\n"));
        assert!(!ok, "`{cmd}` succeeded:\n{out}");
        assert!(!out.contains(std::str::from_utf8(SECRET).unwrap()));
        assert!(
            !rig.local.join("got").exists(),
            "`{cmd}` wrote a local copy"
        );
        assert_eq!(rig.outside_state(), before, "`{cmd}` changed the outside");
    }
    // Listing a link that points out shows the link itself (its lstat), never what is
    // behind it.
    for cmd in ["ls dir-link", "ls -l rel-dir-link", "ls dir-link/"] {
        let (_, out) = rig.sftp(&format!("{cmd}\n"));
        assert!(
            !out.contains("secret"),
            "`{cmd}` listed the outside:\n{out}"
        );
    }
    for name in ["out-abs", "out-rel", "out-up", "planted"] {
        assert!(
            std::fs::symlink_metadata(rig.root.join(name)).is_err(),
            "{name} was created"
        );
    }
    assert_eq!(
        std::fs::read(rig.root.join("inside.txt")).unwrap(),
        b"inside"
    );

    // `..` and absolute paths are read beneath the root: these succeed, inside it.
    let (ok, out) = rig.sftp(&format!(
        "mkdir ../../escaped-dir\nput plant.txt {}/escaped-dir/p.txt\n",
        rig.base.display()
    ));
    assert!(
        !ok,
        "a path naming the real base is not beneath the root:\n{out}"
    );
    assert!(
        rig.root.join("escaped-dir").is_dir(),
        "mkdir ../../x lands in the root"
    );
    assert!(!rig.base.join("escaped-dir").exists());
    let (ok, out) = rig.sftp("put plant.txt ../../escaped-dir/p.txt\n");
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::read(rig.root.join("escaped-dir/p.txt")).unwrap(),
        b"planted"
    );
    assert_eq!(
        rig.outside_state(),
        before,
        "something outside the root changed"
    );
    assert_eq!(std::fs::read(rig.outside.join("secret")).unwrap(), SECRET);
}
