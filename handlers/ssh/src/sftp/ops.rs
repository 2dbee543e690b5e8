//! The file-system side of each SFTP request: blocking calls, made on the blocking pool,
//! every path resolved beneath the session's root directory handle.
//!
//! Each function takes the root `Dir` (or an already open file) and returns the encoded
//! reply. Nothing here opens a path through the ambient file system: `cap_std::fs::Dir`
//! resolves every component with `openat2(RESOLVE_BENEATH)` (or its own component-wise walk
//! where the kernel lacks it), so `..`, absolute symlinks and symlinks swapped in during an
//! operation cannot reach outside the root. Errors become SFTP status codes here.

use super::path::{self, PathError};
use super::wire::{self, MAX_DATA};
use bytes::Bytes;
use cap_std::fs::{
    Dir, DirBuilder, DirBuilderExt, Metadata, MetadataExt, OpenOptions, OpenOptionsExt,
    Permissions, PermissionsExt, ReadDir,
};
use russh_sftp::protocol::{
    Attrs, ExtendedReply, File, FileAttributes, Name, OpenFlags, Packet, StatusCode,
};
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Entries per READDIR reply, as OpenSSH's `sftp-server` sends.
const READDIR_BATCH: usize = 100;

/// A reply for an I/O error, with the SFTP status code closest to its kind.
pub(crate) fn io_status(id: u32, e: &io::Error) -> Bytes {
    let code = match e.kind() {
        io::ErrorKind::NotFound => StatusCode::NoSuchFile,
        io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        io::ErrorKind::UnexpectedEof => StatusCode::Eof,
        io::ErrorKind::Unsupported => StatusCode::OpUnsupported,
        _ => StatusCode::Failure,
    };
    wire::status(id, code, &e.to_string())
}

fn ok(id: u32) -> Bytes {
    wire::status(id, StatusCode::Ok, "ok")
}

fn reply(id: u32, result: io::Result<Bytes>) -> Bytes {
    result.unwrap_or_else(|e| io_status(id, &e))
}

/// A client path beneath the root, or the status refusing it.
pub(crate) fn rel(path: &str) -> io::Result<PathBuf> {
    path::beneath(path).map_err(|e| match e {
        PathError::Nul => io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"),
    })
}

fn time32(secs: i64) -> u32 {
    secs.clamp(0, i64::from(u32::MAX)) as u32
}

/// SFTP attributes of a file, from confined metadata (or an open file's, see [`fstat`]).
pub(crate) fn attrs_of(md: &Metadata) -> FileAttributes {
    FileAttributes {
        size: Some(md.size()),
        uid: Some(md.uid()),
        user: None,
        gid: Some(md.gid()),
        group: None,
        permissions: Some(md.mode()),
        atime: Some(time32(md.atime())),
        mtime: Some(time32(md.mtime())),
    }
}

fn attrs_reply(id: u32, attrs: FileAttributes) -> Bytes {
    wire::encode(id, Packet::Attrs(Attrs { id, attrs }))
}

/// Options that never block on a FIFO and never hand the opened file to a child.
fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
    o
}

/// STAT (`follow`) or LSTAT.
pub(crate) fn stat(root: &Dir, id: u32, path: &str, follow: bool) -> Bytes {
    reply(
        id,
        (|| {
            let rel = rel(path)?;
            let md = if follow {
                root.metadata(&rel)?
            } else {
                root.symlink_metadata(&rel)?
            };
            Ok(attrs_reply(id, attrs_of(&md)))
        })(),
    )
}

/// FSTAT: the open file's metadata, read into cap-std's form so [`attrs_of`] serves both.
pub(crate) fn fstat(file: &std::fs::File, id: u32) -> Bytes {
    reply(
        id,
        file.metadata()
            .map(|md| attrs_reply(id, attrs_of(&Metadata::from_just_metadata(md)))),
    )
}

fn file_times(attrs: &FileAttributes) -> Option<std::fs::FileTimes> {
    let (atime, mtime) = (attrs.atime?, attrs.mtime?);
    let at = UNIX_EPOCH + Duration::from_secs(u64::from(atime));
    let mt = UNIX_EPOCH + Duration::from_secs(u64::from(mtime));
    Some(std::fs::FileTimes::new().set_accessed(at).set_modified(mt))
}

fn apply_attrs(file: &std::fs::File, attrs: &FileAttributes) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(size) = attrs.size {
        file.set_len(size)?;
    }
    if let Some(mode) = attrs.permissions {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
    }
    if attrs.uid.is_some() || attrs.gid.is_some() {
        std::os::unix::fs::fchown(file, attrs.uid, attrs.gid)?;
    }
    if let Some(times) = file_times(attrs) {
        file.set_times(times)?;
    }
    Ok(())
}

/// SETSTAT: size, mode, owner and times of a path (symlinks followed, beneath the root).
pub(crate) fn setstat(root: &Dir, id: u32, path: &str, attrs: &FileAttributes) -> Bytes {
    reply(
        id,
        (|| {
            let rel = rel(path)?;
            if let Some(mode) = attrs.permissions {
                root.set_permissions(&rel, Permissions::from_mode(mode & 0o7777))?;
            }
            let rest = FileAttributes {
                permissions: None,
                ..attrs.clone()
            };
            if rest.size.is_some()
                || rest.uid.is_some()
                || rest.gid.is_some()
                || file_times(&rest).is_some()
            {
                let file = if rest.size.is_some() {
                    root.open_with(&rel, options().write(true))?.into_std()
                } else if root.metadata(&rel)?.is_dir() {
                    root.open_dir(&rel)?.into_std_file()
                } else {
                    root.open_with(&rel, options().read(true))?.into_std()
                };
                apply_attrs(&file, &rest)?;
            }
            Ok(ok(id))
        })(),
    )
}

/// FSETSTAT.
pub(crate) fn fsetstat(file: &std::fs::File, id: u32, attrs: &FileAttributes) -> Bytes {
    reply(id, apply_attrs(file, attrs).map(|()| ok(id)))
}

/// OPEN: the file, opened beneath the root with the client's flags.
pub(crate) fn open(
    root: &Dir,
    path: &str,
    flags: OpenFlags,
    attrs: &FileAttributes,
) -> io::Result<std::fs::File> {
    let rel = rel(path)?;
    let mut o = options();
    let read = flags.contains(OpenFlags::READ);
    let write = flags.contains(OpenFlags::WRITE);
    o.read(read || !write)
        .write(write)
        .append(flags.contains(OpenFlags::APPEND));
    if flags.contains(OpenFlags::CREATE) {
        if flags.contains(OpenFlags::EXCLUDE) {
            o.create_new(true);
        } else {
            o.create(true);
        }
    }
    o.truncate(flags.contains(OpenFlags::TRUNCATE));
    o.mode(attrs.permissions.map_or(0o666, |m| m & 0o7777));
    Ok(root.open_with(&rel, &o)?.into_std())
}

/// READ: up to `len` bytes at `offset`, straight into the DATA reply; EOF when none.
pub(crate) fn read(file: &std::fs::File, id: u32, offset: u64, len: u32) -> Bytes {
    let len = len.min(MAX_DATA) as usize;
    let mut out = wire::data_buffer(len);
    out.resize(wire::DATA_HEADER + len, 0);
    let mut filled = 0;
    while filled < len {
        let Some(buf) = out.get_mut(wire::DATA_HEADER + filled..) else {
            break;
        };
        match file.read_at(buf, offset.saturating_add(filled as u64)) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if filled == 0 => return io_status(id, &e),
            Err(_) => break,
        }
    }
    if filled == 0 {
        return wire::status(id, StatusCode::Eof, "end of file");
    }
    out.truncate(wire::DATA_HEADER + filled);
    wire::finish_data(id, out)
}

/// WRITE: all of `data` at `offset`.
pub(crate) fn write(file: &std::fs::File, id: u32, offset: u64, data: &[u8]) -> Bytes {
    reply(id, file.write_all_at(data, offset).map(|()| ok(id)))
}

/// OPENDIR: the directory's entries, beneath the root.
pub(crate) fn opendir(root: &Dir, path: &str) -> io::Result<ReadDir> {
    root.read_dir(rel(path)?)
}

/// Owner and group names for `ls -l` lines, read once from the host's files.
#[derive(Debug, Default)]
pub(crate) struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    /// The names in `/etc/passwd` and `/etc/group` (none when unreadable).
    pub(crate) fn load() -> Self {
        Self {
            users: id_names(Path::new("/etc/passwd")),
            groups: id_names(Path::new("/etc/group")),
        }
    }
}

/// `name:x:id:…` lines of a bounded file, as id → name.
fn id_names(path: &Path) -> HashMap<u32, String> {
    use std::io::Read;
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(4 << 20).read_to_string(&mut text);
    }
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut parts = line.split(':');
        if let (Some(name), Some(_), Some(id)) = (parts.next(), parts.next(), parts.next()) {
            if let Ok(id) = id.parse() {
                out.entry(id).or_insert_with(|| name.to_owned());
            }
        }
    }
    out
}

/// READDIR: the next batch of entries with `ls -l` long names, EOF at the end.
pub(crate) fn readdir(dir: &mut ReadDir, id: u32, names: &Names, now: SystemTime) -> Bytes {
    let mut files = Vec::new();
    for entry in dir.by_ref() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if files.is_empty() => return io_status(id, &e),
            Err(_) => break,
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(md) = entry.metadata() else { continue };
        let attrs = attrs_of(&md);
        let longname = longname(&name, &md, names, now);
        files.push(File {
            filename: name,
            longname,
            attrs,
        });
        if files.len() >= READDIR_BATCH {
            break;
        }
    }
    if files.is_empty() {
        return wire::status(id, StatusCode::Eof, "no more entries");
    }
    wire::encode(id, Packet::Name(Name { id, files }))
}

/// One `ls -l` line, as OpenSSH's `sftp-server` writes it (times in UTC).
pub(crate) fn longname(name: &str, md: &Metadata, names: &Names, now: SystemTime) -> String {
    let mode = md.mode();
    let kind = match mode & 0o170000 {
        0o040000 => 'd',
        0o120000 => 'l',
        0o020000 => 'c',
        0o060000 => 'b',
        0o010000 => 'p',
        0o140000 => 's',
        _ => '-',
    };
    let bit = |mask: u32, c: char| if mode & mask != 0 { c } else { '-' };
    let special = |x: u32, s: u32, set: char, unset: char| match (mode & x != 0, mode & s != 0) {
        (true, true) => set,
        (false, true) => unset,
        (true, false) => 'x',
        (false, false) => '-',
    };
    let perms: String = [
        kind,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        special(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        special(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        special(0o001, 0o1000, 't', 'T'),
    ]
    .into_iter()
    .collect();
    let user = names
        .users
        .get(&md.uid())
        .cloned()
        .unwrap_or_else(|| md.uid().to_string());
    let group = names
        .groups
        .get(&md.gid())
        .cloned()
        .unwrap_or_else(|| md.gid().to_string());
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let date = ls_date(md.mtime(), now);
    format!(
        "{perms} {:>3} {user:<8} {group:<8} {:>8} {date} {name}",
        md.nlink(),
        md.size()
    )
}

/// `Mon dd HH:MM` within six months of `now`, else `Mon dd  YYYY`.
fn ls_date(t: i64, now: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mon = MONTHS
        .get((month - 1).clamp(0, 11) as usize)
        .copied()
        .unwrap_or("Jan");
    if (now - t).abs() < 182 * 86_400 {
        format!("{mon} {day:>2} {:02}:{:02}", secs / 3600, secs % 3600 / 60)
    } else {
        format!("{mon} {day:>2}  {year}")
    }
}

/// REMOVE.
pub(crate) fn remove(root: &Dir, id: u32, path: &str) -> Bytes {
    reply(
        id,
        rel(path).and_then(|p| root.remove_file(p)).map(|()| ok(id)),
    )
}

/// MKDIR, with the client's mode (umask applies).
pub(crate) fn mkdir(root: &Dir, id: u32, path: &str, attrs: &FileAttributes) -> Bytes {
    let mut b = DirBuilder::new();
    b.mode(attrs.permissions.map_or(0o777, |m| m & 0o7777));
    reply(
        id,
        rel(path)
            .and_then(|p| root.create_dir_with(p, &b))
            .map(|()| ok(id)),
    )
}

/// RMDIR.
pub(crate) fn rmdir(root: &Dir, id: u32, path: &str) -> Bytes {
    reply(
        id,
        rel(path).and_then(|p| root.remove_dir(p)).map(|()| ok(id)),
    )
}

/// The canonical form of `rel` beneath the root; a missing last component is kept as given.
fn canonical(root: &Dir, rel: &Path) -> io::Result<PathBuf> {
    match root.canonicalize(rel) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
                return Err(e);
            };
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            Ok(root.canonicalize(parent)?.join(name))
        }
        other => other,
    }
}

fn name_reply(id: u32, shown: String) -> Bytes {
    let file = File {
        longname: shown.clone(),
        filename: shown,
        attrs: FileAttributes::default(),
    };
    wire::encode(
        id,
        Packet::Name(Name {
            id,
            files: vec![file],
        }),
    )
}

/// REALPATH: the canonical path as the client sees it (`/` is the root).
pub(crate) fn realpath(root: &Dir, id: u32, path: &str) -> Bytes {
    reply(
        id,
        (|| {
            let rel = rel(path)?;
            Ok(name_reply(id, path::shown(&canonical(root, &rel)?)))
        })(),
    )
}

/// `expand-path@openssh.com`: `~` and `~/…` are the root, then as REALPATH.
pub(crate) fn expand_path(root: &Dir, id: u32, path: &str) -> Bytes {
    let path = if path == "~" {
        "/"
    } else if let Some(rest) = path.strip_prefix("~/") {
        rest
    } else if path.starts_with('~') {
        return wire::status(
            id,
            StatusCode::NoSuchFile,
            "only the session's own ~ is known",
        );
    } else {
        path
    };
    realpath(root, id, path)
}

/// RENAME (fails when the target exists, as SFTP v3 says) or `posix-rename@openssh.com`
/// (replaces it).
pub(crate) fn rename(root: &Dir, id: u32, from: &str, to: &str, replace: bool) -> Bytes {
    reply(
        id,
        (|| {
            let (from, to) = (rel(from)?, rel(to)?);
            if !replace && root.symlink_metadata(&to).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "target exists",
                ));
            }
            root.rename(&from, root, &to)?;
            Ok(ok(id))
        })(),
    )
}

/// READLINK: the target of a symlink whose target stays beneath the root.
pub(crate) fn readlink(root: &Dir, id: u32, path: &str) -> Bytes {
    reply(
        id,
        (|| {
            let target = root.read_link(rel(path)?)?;
            let text = target.to_string_lossy().into_owned();
            Ok(name_reply(id, text))
        })(),
    )
}

/// SYMLINK, in OpenSSH's argument order (target first, then the link's path). A target that
/// is absolute or climbs above the root is refused: see [`path::symlink_stays_inside`].
pub(crate) fn symlink(root: &Dir, id: u32, target: &str, link: &str) -> Bytes {
    if !path::symlink_stays_inside(link, target) {
        return wire::status(
            id,
            StatusCode::PermissionDenied,
            "symlink target leaves the sftp root",
        );
    }
    reply(
        id,
        rel(link)
            .and_then(|l| root.symlink(target, l))
            .map(|()| ok(id)),
    )
}

/// `hardlink@openssh.com`.
pub(crate) fn hardlink(root: &Dir, id: u32, from: &str, to: &str) -> Bytes {
    reply(
        id,
        (|| {
            root.hard_link(rel(from)?, root, rel(to)?)?;
            Ok(ok(id))
        })(),
    )
}

fn statvfs_reply(id: u32, fd: impl std::os::fd::AsFd) -> io::Result<Bytes> {
    use bytes::BufMut;
    let s = rustix::fs::fstatvfs(fd).map_err(io::Error::from)?;
    let mut data = Vec::with_capacity(11 * 8);
    let mut flags = 0u64;
    if s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
        flags |= 1;
    }
    if s.f_flag.contains(rustix::fs::StatVfsMountFlags::NOSUID) {
        flags |= 2;
    }
    for v in [
        s.f_bsize,
        s.f_frsize,
        s.f_blocks,
        s.f_bfree,
        s.f_bavail,
        s.f_files,
        s.f_ffree,
        s.f_favail,
        s.f_fsid,
        flags,
        s.f_namemax,
    ] {
        data.put_u64(v);
    }
    Ok(wire::encode(
        id,
        Packet::ExtendedReply(ExtendedReply { id, data }),
    ))
}

/// `statvfs@openssh.com`.
pub(crate) fn statvfs(root: &Dir, id: u32, path: &str) -> Bytes {
    reply(
        id,
        (|| {
            let rel = rel(path)?;
            match root.open_dir(&rel) {
                Ok(d) => statvfs_reply(id, d.into_std_file()),
                Err(_) => statvfs_reply(id, root.open_with(&rel, options().read(true))?.into_std()),
            }
        })(),
    )
}

/// `fstatvfs@openssh.com`.
pub(crate) fn fstatvfs(file: &std::fs::File, id: u32) -> Bytes {
    reply(id, statvfs_reply(id, file))
}

/// `fsync@openssh.com`.
pub(crate) fn fsync(file: &std::fs::File, id: u32) -> Bytes {
    reply(id, file.sync_all().map(|()| ok(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_dates_follow_ls() {
        // 2026-12-02 06:54:35 UTC, and one in 2020.
        assert_eq!(ls_date(1_796_194_475, 1_796_194_475), "Dec  2 06:54");
        assert_eq!(ls_date(1_590_000_000, 1_796_194_475), "May 20  2020");
        assert_eq!(ls_date(0, 1_796_194_475), "Jan  1  1970");
    }
}
