//! The SFTP server's confinement, spoken to in raw SFTP packets (russh-sftp's codec as the
//! client): path escapes by `..`, absolute paths, symlinks pointing out and a symlink swapped
//! in for a directory mid-operation are all refused, and nothing outside the root is read,
//! written or even touched. Also: pipelined requests answered in request order, the bounds.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use alknet_ssh::sftp::{SftpOptions, serve};
use bytes::Bytes;
use russh_sftp::protocol::{
    Close, Extended, FileAttributes, Init, Lstat, MkDir, Open, OpenDir, OpenFlags, Packet, Read,
    ReadDir, ReadLink, RealPath, Remove, Rename, RmDir, SetStat, Stat, StatusCode, Symlink, Write,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const SECRET: &[u8] = b"sentinel-secret-never-to-be-read-9d1c";

struct Client {
    io: DuplexStream,
    next: u32,
    /// Every byte the server sent, to check the secret never appears.
    seen: Vec<u8>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Client {
    async fn start(root: &Path) -> Self {
        let (io, server) = tokio::io::duplex(1 << 20);
        let opts = SftpOptions {
            root: root.to_owned(),
            peer: "test".into(),
        };
        let server = tokio::spawn(serve(server, opts));
        let mut c = Client {
            io,
            next: 1,
            seen: Vec::new(),
            server,
        };
        c.send(Packet::Init(Init::new())).await;
        match c.recv().await {
            Packet::Version(v) => {
                assert_eq!(v.version, 3);
                for ext in [
                    "posix-rename@openssh.com",
                    "limits@openssh.com",
                    "expand-path@openssh.com",
                ] {
                    assert!(v.extensions.contains_key(ext), "{ext} not advertised");
                }
            }
            other => panic!("expected VERSION, got {other:?}"),
        }
        c
    }

    fn id(&mut self) -> u32 {
        self.next += 1;
        self.next
    }

    async fn send(&mut self, p: Packet) {
        let bytes = Bytes::try_from(p).unwrap();
        self.io.write_all(&bytes).await.unwrap();
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    async fn recv(&mut self) -> Packet {
        let len = tokio::time::timeout(Duration::from_secs(30), self.io.read_u32())
            .await
            .expect("reply within 30 s")
            .expect("reply");
        let mut body = vec![0; len as usize];
        self.io.read_exact(&mut body).await.unwrap();
        self.seen.extend_from_slice(&body);
        Packet::try_from(&mut Bytes::from(body)).unwrap()
    }

    async fn call(&mut self, p: Packet) -> Packet {
        self.send(p).await;
        self.recv().await
    }

    async fn open(&mut self, path: &str, flags: OpenFlags) -> Result<String, StatusCode> {
        let id = self.id();
        let p = Open {
            id,
            filename: path.into(),
            pflags: flags,
            attrs: FileAttributes::default(),
        };
        match self.call(Packet::Open(p)).await {
            Packet::Handle(h) => Ok(h.handle),
            Packet::Status(s) => Err(s.status_code),
            other => panic!("{other:?}"),
        }
    }

    async fn status(&mut self, p: Packet) -> StatusCode {
        match self.call(p).await {
            Packet::Status(s) => s.status_code,
            Packet::Handle(_)
            | Packet::Attrs(_)
            | Packet::Name(_)
            | Packet::Data(_)
            | Packet::ExtendedReply(_) => StatusCode::Ok,
            other => panic!("{other:?}"),
        }
    }

    async fn extended(&mut self, request: &str, strings: &[&str]) -> Packet {
        let mut data = Vec::new();
        for s in strings {
            data.extend_from_slice(&(s.len() as u32).to_be_bytes());
            data.extend_from_slice(s.as_bytes());
        }
        let id = self.id();
        self.call(Packet::Extended(Extended {
            id,
            request: request.into(),
            data,
        }))
        .await
    }

    async fn read_all(&mut self, handle: &str) -> Result<Vec<u8>, StatusCode> {
        let mut out = Vec::new();
        loop {
            let id = self.id();
            let r = Read {
                id,
                handle: handle.into(),
                offset: out.len() as u64,
                len: 65536,
            };
            match self.call(Packet::Read(r)).await {
                Packet::Data(d) => out.extend_from_slice(&d.data),
                Packet::Status(s) if s.status_code == StatusCode::Eof => return Ok(out),
                Packet::Status(s) => return Err(s.status_code),
                other => panic!("{other:?}"),
            }
        }
    }

    async fn close(&mut self, handle: String) {
        let id = self.id();
        assert_eq!(
            self.status(Packet::Close(Close { id, handle })).await,
            StatusCode::Ok
        );
    }

    async fn finish(mut self) -> Vec<u8> {
        self.io.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = self.io.read_to_end(&mut rest).await;
        self.seen.extend_from_slice(&rest);
        let r = tokio::time::timeout(Duration::from_secs(30), self.server).await;
        r.expect("session ends")
            .expect("no panic")
            .expect("clean end");
        self.seen
    }
}

/// Every file and directory under `dir`: kind, length, mtime and contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (bool, u64, SystemTime, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let md = std::fs::symlink_metadata(&d).unwrap();
        out.insert(d.clone(), (true, 0, md.modified().unwrap(), Vec::new()));
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                todo.push(p);
            } else {
                let data = std::fs::read(&p).unwrap_or_default();
                out.insert(p, (false, md.len(), md.modified().unwrap(), data));
            }
        }
    }
    out
}

/// base/root is served; base/outside holds the secret and must not change.
fn layout() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    let outside = base.path().join("outside");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(outside.join("subdir")).unwrap();
    std::fs::write(outside.join("secret"), SECRET).unwrap();
    std::fs::write(outside.join("f"), SECRET).unwrap();
    std::fs::write(root.join("ok.txt"), b"inside").unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), root.join("out_file")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("out_dir")).unwrap();
    std::os::unix::fs::symlink("../outside/secret", root.join("rel_out")).unwrap();
    std::os::unix::fs::symlink("../../outside", root.join("sub/rel_dir")).unwrap();
    std::os::unix::fs::symlink("ok.txt", root.join("good_link")).unwrap();
    (base, root, outside)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_escapes_are_refused_and_nothing_outside_changes() {
    let (_base, root, outside) = layout();
    let before = snapshot(&outside);
    let host_secret = outside.join("secret").display().to_string();
    let mut c = Client::start(&root).await;
    let read = OpenFlags::READ;
    let create = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;

    // Reads through `..`, absolute paths and symlinks pointing out.
    let reads = [
        "../outside/secret",
        "/../../outside/secret",
        "../../../../../../etc/passwd",
        "/../../etc/passwd",
        host_secret.as_str(),
        "sub/../../outside/secret",
        "sub/./../../outside/secret",
        "out_file",
        "rel_out",
        "out_dir/secret",
        "sub/rel_dir/secret",
        "/sub/rel_dir/../outside/secret",
    ];
    for path in reads {
        let r = c.open(path, read).await;
        assert!(r.is_err(), "read of {path} was allowed");
    }
    // Writes and creations.
    for path in [
        "out_dir/new",
        "out_file",
        "rel_out",
        "sub/../../outside/new",
        "sub/rel_dir/new",
        "../outside/secret",
    ] {
        let r = c.open(path, create).await;
        // `../outside/secret` is clamped to the root: it may be created *inside*.
        if path == "../outside/secret" {
            assert_eq!(r, Err(StatusCode::NoSuchFile), "{path}");
        } else {
            assert!(r.is_err(), "write of {path} was allowed");
        }
    }
    let refused = |c: StatusCode, what: &str| assert_ne!(c, StatusCode::Ok, "{what} was allowed");
    let id = c.id();
    refused(
        c.status(Packet::Stat(Stat {
            id,
            path: "out_file".into(),
        }))
        .await,
        "stat out_file",
    );
    let id = c.id();
    refused(
        c.status(Packet::Stat(Stat {
            id,
            path: "out_dir/secret".into(),
        }))
        .await,
        "stat out_dir/secret",
    );
    let id = c.id();
    refused(
        c.status(Packet::Lstat(Lstat {
            id,
            path: "sub/../../outside/secret".into(),
        }))
        .await,
        "lstat ..",
    );
    let id = c.id();
    refused(
        c.status(Packet::OpenDir(OpenDir {
            id,
            path: "out_dir".into(),
        }))
        .await,
        "opendir out_dir",
    );
    let id = c.id();
    refused(
        c.status(Packet::OpenDir(OpenDir {
            id,
            path: "sub/../..".into(),
        }))
        .await,
        "opendir sub/../..",
    );
    let id = c.id();
    refused(
        c.status(Packet::OpenDir(OpenDir {
            id,
            path: "sub/rel_dir".into(),
        }))
        .await,
        "opendir rel_dir",
    );
    let id = c.id();
    let p = Rename {
        id,
        oldpath: "out_dir/secret".into(),
        newpath: "stolen".into(),
    };
    refused(c.status(Packet::Rename(p)).await, "rename source outside");
    let id = c.id();
    let p = Rename {
        id,
        oldpath: "ok.txt".into(),
        newpath: "out_dir/planted".into(),
    };
    refused(c.status(Packet::Rename(p)).await, "rename target outside");
    let id = c.id();
    let p = Rename {
        id,
        oldpath: "ok.txt".into(),
        newpath: "sub/../../outside/planted".into(),
    };
    refused(c.status(Packet::Rename(p)).await, "rename target ..");
    match c
        .extended(
            "posix-rename@openssh.com",
            &["ok.txt", "sub/rel_dir/planted"],
        )
        .await
    {
        Packet::Status(s) => refused(s.status_code, "posix-rename target outside"),
        other => panic!("{other:?}"),
    }
    let id = c.id();
    refused(
        c.status(Packet::Remove(Remove {
            id,
            filename: "out_dir/secret".into(),
        }))
        .await,
        "remove",
    );
    let id = c.id();
    refused(
        c.status(Packet::Remove(Remove {
            id,
            filename: "sub/../../outside/f".into(),
        }))
        .await,
        "remove ..",
    );
    let id = c.id();
    let p = MkDir {
        id,
        path: "out_dir/newdir".into(),
        attrs: FileAttributes::default(),
    };
    refused(c.status(Packet::MkDir(p)).await, "mkdir outside");
    let id = c.id();
    refused(
        c.status(Packet::RmDir(RmDir {
            id,
            path: "out_dir/subdir".into(),
        }))
        .await,
        "rmdir outside",
    );
    let id = c.id();
    let attrs = FileAttributes {
        permissions: Some(0o777),
        ..Default::default()
    };
    refused(
        c.status(Packet::SetStat(SetStat {
            id,
            path: "out_file".into(),
            attrs,
        }))
        .await,
        "chmod",
    );
    let id = c.id();
    let attrs = FileAttributes {
        size: Some(0),
        ..Default::default()
    };
    let p = SetStat {
        id,
        path: "out_dir/secret".into(),
        attrs,
    };
    refused(c.status(Packet::SetStat(p)).await, "truncate outside");
    let id = c.id();
    let attrs = FileAttributes {
        atime: Some(1),
        mtime: Some(1),
        ..Default::default()
    };
    let p = SetStat {
        id,
        path: "sub/rel_dir/subdir".into(),
        attrs,
    };
    refused(c.status(Packet::SetStat(p)).await, "utimes outside");
    // Symlinks pointing out are never created (OpenSSH order: target, then link).
    for (target, link) in [
        ("/etc/passwd", "evil"),
        ("../outside/secret", "evil2"),
        ("sub/../../x", "evil3"),
    ] {
        let id = c.id();
        let p = Symlink {
            id,
            linkpath: target.into(),
            targetpath: link.into(),
        };
        assert_eq!(
            c.status(Packet::Symlink(p)).await,
            StatusCode::PermissionDenied,
            "{link} -> {target}"
        );
        assert!(
            std::fs::symlink_metadata(root.join(link)).is_err(),
            "{link} created"
        );
    }
    match c
        .extended("hardlink@openssh.com", &["out_dir/secret", "hl"])
        .await
    {
        Packet::Status(s) => refused(s.status_code, "hardlink to outside"),
        other => panic!("{other:?}"),
    }
    match c.extended("statvfs@openssh.com", &["out_dir"]).await {
        Packet::Status(s) => refused(s.status_code, "statvfs outside"),
        other => panic!("{other:?}"),
    }
    let id = c.id();
    refused(
        c.status(Packet::RealPath(RealPath {
            id,
            path: "sub/../../outside".into(),
        }))
        .await,
        "realpath ..",
    );
    let id = c.id();
    refused(
        c.status(Packet::ReadLink(ReadLink {
            id,
            path: "out_file".into(),
        }))
        .await,
        "readlink out",
    );

    // `/..` is the root, as in a chroot; paths are shown relative to the root.
    for (asked, shown) in [
        ("/..", "/"),
        (".", "/"),
        ("/sub/..", "/"),
        ("sub/missing", "/sub/missing"),
    ] {
        let id = c.id();
        match c
            .call(Packet::RealPath(RealPath {
                id,
                path: asked.into(),
            }))
            .await
        {
            Packet::Name(n) => assert_eq!(n.files[0].filename, shown, "realpath {asked}"),
            other => panic!("realpath {asked}: {other:?}"),
        }
    }
    match c.extended("expand-path@openssh.com", &["~/sub"]).await {
        Packet::Name(n) => assert_eq!(n.files[0].filename, "/sub"),
        other => panic!("{other:?}"),
    }
    // Links that stay inside work.
    let h = c.open("good_link", read).await.expect("link inside");
    assert_eq!(c.read_all(&h).await.unwrap(), b"inside");
    c.close(h).await;
    let id = c.id();
    let p = Symlink {
        id,
        linkpath: "../ok.txt".into(),
        targetpath: "sub/up".into(),
    };
    assert_eq!(c.status(Packet::Symlink(p)).await, StatusCode::Ok);
    assert_eq!(
        std::fs::read_link(root.join("sub/up")).unwrap(),
        Path::new("../ok.txt")
    );

    let seen = c.finish().await;
    assert!(
        !seen.windows(SECRET.len()).any(|w| w == SECRET),
        "the secret reached the client"
    );
    assert_eq!(
        snapshot(&outside),
        before,
        "something outside the root changed"
    );
    for name in ["stolen", "hl", "planted"] {
        assert!(
            std::fs::symlink_metadata(root.join(name)).is_err(),
            "{name} exists in the root"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_swapped_in_for_a_directory_is_not_followed() {
    let (_base, root, outside) = layout();
    let before = snapshot(&outside);
    std::fs::create_dir(root.join("dir")).unwrap();
    std::fs::write(root.join("dir/f"), b"inside").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Swaps root/dir between a real directory and a symlink to the outside directory
    // (which holds `f` = the secret), as fast as it can, until the client is done.
    let swapper = {
        let (root, outside, stop, swaps) =
            (root.clone(), outside.clone(), stop.clone(), swaps.clone());
        std::thread::spawn(move || {
            let (dir, parked, link) = (root.join("dir"), root.join(".parked"), root.join(".link"));
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(&outside, &link).unwrap();
                std::fs::rename(&dir, &parked).unwrap();
                std::fs::rename(&link, &dir).unwrap();
                std::thread::yield_now();
                std::fs::rename(&dir, &link).unwrap();
                std::fs::rename(&parked, &dir).unwrap();
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut c = Client::start(&root).await;
    let (mut reads, mut writes) = (0, 0);
    for i in 0..400u32 {
        if let Ok(h) = c.open("dir/f", OpenFlags::READ).await {
            if let Ok(data) = c.read_all(&h).await {
                assert_eq!(data, b"inside", "read through the swapped symlink");
                reads += 1;
            }
            c.close(h).await;
        }
        let name = format!("dir/new{}", i % 8);
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        if let Ok(h) = c.open(&name, flags).await {
            let id = c.id();
            let w = Write {
                id,
                handle: h.clone(),
                offset: 0,
                data: b"planted".to_vec(),
            };
            c.status(Packet::Write(w)).await;
            c.close(h).await;
            writes += 1;
        }
        let id = c.id();
        let a = FileAttributes {
            permissions: Some(0o600),
            ..Default::default()
        };
        c.status(Packet::SetStat(SetStat {
            id,
            path: "dir/f".into(),
            attrs: a,
        }))
        .await;
        let id = c.id();
        c.status(Packet::Remove(Remove {
            id,
            filename: "dir/new7".into(),
        }))
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    let seen = c.finish().await;
    assert!(swaps.load(Ordering::Relaxed) > 10, "the swapper barely ran");
    assert!(
        reads > 0 && writes > 0,
        "no operation went through ({reads} reads, {writes} writes)"
    );
    assert!(
        !seen.windows(SECRET.len()).any(|w| w == SECRET),
        "the secret reached the client"
    );
    assert_eq!(
        snapshot(&outside),
        before,
        "something outside the root changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_all_answered() {
    let (_base, root, _outside) = layout();
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(root.join("big"), &data).unwrap();
    let mut c = Client::start(&root).await;
    let h = c.open("big", OpenFlags::READ).await.unwrap();
    // 64 reads of 64 KiB in flight at once, as OpenSSH's client keeps them.
    let block = 65536u32;
    let mut ids = BTreeMap::new();
    for i in 0..64u32 {
        let id = c.id();
        ids.insert(id, u64::from(i) * u64::from(block));
        let r = Read {
            id,
            handle: h.clone(),
            offset: u64::from(i) * u64::from(block),
            len: block,
        };
        c.send(Packet::Read(r)).await;
    }
    let mut got = vec![0u8; data.len()];
    for _ in 0..64 {
        match c.recv().await {
            Packet::Data(d) => {
                // In request order: OpenSSH's scp truncates its in-place copy at the first
                // reply that overtook an earlier one.
                let first = ids.keys().next().copied();
                assert_eq!(Some(d.id), first, "a reply overtook an earlier request's");
                let off = ids.remove(&d.id).expect("reply to a request sent") as usize;
                got[off..off + d.data.len()].copy_from_slice(&d.data);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(ids.is_empty());
    assert_eq!(got, data);
    // A read larger than the advertised limit is cut to it.
    let id = c.id();
    match c
        .call(Packet::Read(Read {
            id,
            handle: h.clone(),
            offset: 0,
            len: 1 << 20,
        }))
        .await
    {
        Packet::Data(d) => assert_eq!(d.data.len(), 256 * 1024 - 1024),
        other => panic!("{other:?}"),
    }
    c.close(h).await;
    // Directory listing with `ls -l` long names, in batches, then EOF.
    for i in 0..250 {
        std::fs::write(root.join(format!("sub/e{i:03}")), b"x").unwrap();
    }
    let id = c.id();
    let Packet::Handle(d) = c
        .call(Packet::OpenDir(OpenDir {
            id,
            path: "/sub".into(),
        }))
        .await
    else {
        panic!("opendir")
    };
    let mut names = Vec::new();
    loop {
        let id = c.id();
        match c
            .call(Packet::ReadDir(ReadDir {
                id,
                handle: d.handle.clone(),
            }))
            .await
        {
            Packet::Name(n) => {
                assert!(n.files.len() <= 100);
                for f in n.files {
                    assert!(f.longname.ends_with(&f.filename), "{}", f.longname);
                    if f.filename.starts_with('e') {
                        assert!(f.longname.starts_with("-rw"), "{}", f.longname);
                    }
                    names.push(f.filename);
                }
            }
            Packet::Status(s) => {
                assert_eq!(s.status_code, StatusCode::Eof);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(names.iter().filter(|n| n.starts_with('e')).count(), 250);
    c.close(d.handle).await;
    c.finish().await;
}

#[tokio::test]
async fn hostile_packets_get_errors_not_panics() {
    let (_base, root, _outside) = layout();
    let mut c = Client::start(&root).await;
    // A forged handle, an unknown request type, an unknown extension, a truncated body.
    let id = c.id();
    let forged = Read {
        id,
        handle: "0000deadbeefdeadbeef".into(),
        offset: 0,
        len: 10,
    };
    assert_eq!(c.status(Packet::Read(forged)).await, StatusCode::Failure);
    c.send_raw(&[0, 0, 0, 5, 99, 0, 0, 0, 7]).await;
    match c.recv().await {
        Packet::Status(s) => assert_eq!((s.id, s.status_code), (7, StatusCode::OpUnsupported)),
        other => panic!("{other:?}"),
    }
    match c.extended("copy-data@openssh.com", &[]).await {
        Packet::Status(s) => assert_eq!(s.status_code, StatusCode::OpUnsupported),
        other => panic!("{other:?}"),
    }
    c.send_raw(&[0, 0, 0, 6, 17, 0, 0, 0, 8, 0]).await;
    match c.recv().await {
        Packet::Status(s) => assert_eq!((s.id, s.status_code), (8, StatusCode::BadMessage)),
        other => panic!("{other:?}"),
    }
    // Handles are bounded.
    let mut handles = Vec::new();
    let err = loop {
        match c.open("ok.txt", OpenFlags::READ).await {
            Ok(h) => handles.push(h),
            Err(e) => break e,
        }
        assert!(handles.len() <= 256, "no handle limit");
    };
    assert_eq!((handles.len(), err), (256, StatusCode::Failure));
    for h in handles {
        c.close(h).await;
    }
    // An oversized packet closes the session with an error.
    c.send_raw(&(256 * 1024 + 1u32).to_be_bytes()).await;
    let server = c.server;
    let r = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert!(r.unwrap_err().to_string().contains("refused"));
}

#[tokio::test]
async fn a_request_before_init_closes_the_session() {
    let (_base, root, _outside) = layout();
    let (mut io, server) = tokio::io::duplex(4096);
    let opts = SftpOptions {
        root,
        peer: "test".into(),
    };
    let task = tokio::spawn(serve(server, opts));
    let stat = Bytes::try_from(Packet::Stat(Stat {
        id: 1,
        path: "/".into(),
    }))
    .unwrap();
    io.write_all(&stat).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert!(r.unwrap_err().to_string().contains("before SSH_FXP_INIT"));
    let mut rest = Vec::new();
    io.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}
