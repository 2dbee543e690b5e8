//! Small file-system helpers: the data directory and atomic private writes.
//!
//! Files written here are private (0600) whatever the umask, and a path is never followed
//! through a symlink someone else planted: temporary files are created new (`O_EXCL`) with
//! `O_NOFOLLOW` under an unpredictable name, and appends refuse a symlink.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The data directory: `--data-dir`, else `$ALKNET_DATA_DIR`, else the XDG data directory
/// (`$XDG_DATA_HOME/alknet`, `~/.local/share/alknet`), else `/var/lib/alknet` for a user
/// without a home.
pub fn resolve_data_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_owned();
    }
    if let Some(p) = std::env::var_os("ALKNET_DATA_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(p).join("alknet");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".local/share/alknet");
    }
    PathBuf::from("/var/lib/alknet")
}

/// Creates the data directory (mode 0700) if needed and checks that it is usable. An
/// existing directory that its group or others may enter gets a warning naming its mode
/// and the fix ([`loose_mode_warning`]).
pub fn ensure_data_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    if let Some(warning) = loose_mode_warning(dir, meta.permissions().mode()) {
        tracing::warn!(dir = %dir.display(), mode = format!("{:04o}", meta.permissions().mode() & 0o7777), "{warning}");
    }
    // Probe readability and writability now, so the error names the directory.
    std::fs::read_dir(dir)?;
    let probe = dir.join(".alknet-probe");
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)?;
    Ok(())
}

/// The warning for a data directory whose `mode` lets its group or others in, or `None`
/// when only the owner may (the directory holds the node key and the peer store).
pub fn loose_mode_warning(dir: &Path, mode: u32) -> Option<String> {
    (mode & 0o077 != 0).then(|| {
        format!(
            "data directory {} has mode {:04o}: its group or other users can reach the node key and the peer store; run `chmod 700 {}`",
            dir.display(),
            mode & 0o7777,
            dir.display()
        )
    })
}

/// Tries of a fresh temporary name before giving up (each collision is a file someone else
/// put there).
const TEMP_TRIES: usize = 8;

/// Writes `data` to `path` atomically with mode 0600: a new temporary file (never an
/// existing one, never through a symlink), fsync, rename, fsync of the directory. A crash
/// leaves either the old file or the new one.
pub fn write_private_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (tmp, mut f) = create_temp(dir, &name)?;
    let result = (|| {
        // The mode given at creation passes through the umask; set it exactly.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates `.NAME.tmp.PID.RANDOM` in `dir`: `O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600, so
/// a file or symlink planted at a predicted name is neither followed nor truncated.
pub(crate) fn create_temp(dir: &Path, name: &str) -> std::io::Result<(PathBuf, std::fs::File)> {
    let mut last = None;
    for _ in 0..TEMP_TRIES {
        let tmp = dir.join(format!(
            ".{name}.tmp.{}.{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no temporary name")))
}

/// Moves a file made by [`create_temp`] to `path` and syncs the directory, so a crash leaves
/// either no file at `path` or the whole one.
pub(crate) fn publish_temp(tmp: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::rename(tmp, path)?;
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// Appends a line to a file, creating it with mode 0600 (never through a symlink), and
/// syncs it.
pub(crate) fn append_private(path: &Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(line.as_bytes())?;
    f.sync_all()
}

/// Opens `path` for reading and writing, creating it, with mode 0600 whatever the umask
/// (an existing file is made 0600 too), never through a symlink. For files another library
/// then opens by path, such as the redb store.
pub fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_dir_wins() {
        assert_eq!(resolve_data_dir(Some(Path::new("/x"))), PathBuf::from("/x"));
    }

    #[test]
    fn a_symlink_at_a_temp_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap_or_else(|e| panic!("{e}"));
        let target = dir.path().join("f");
        // Plant symlinks at every name the old scheme (and a pid-only one) would use.
        for name in [
            format!(".f.tmp{}", std::process::id()),
            format!(".f.tmp.{}", std::process::id()),
        ] {
            std::os::unix::fs::symlink(&victim, dir.path().join(name))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        write_private_atomic(&target, b"new").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            std::fs::read(&victim).ok(),
            Some(b"keep".to_vec()),
            "the symlink was followed"
        );
        assert_eq!(std::fs::read(&target).ok(), Some(b"new".to_vec()));
        // A temp name that exists is never reused: create_new refuses it, even a symlink.
        let planted = dir.path().join("planted");
        std::os::unix::fs::symlink(&victim, &planted).unwrap_or_else(|e| panic!("{e}"));
        let err = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&planted)
            .err()
            .map(|e| e.kind());
        assert_eq!(err, Some(std::io::ErrorKind::AlreadyExists));
        // Appending refuses a symlink too.
        assert!(append_private(&planted, "x\n").is_err());
        assert_eq!(std::fs::read(&victim).ok(), Some(b"keep".to_vec()));
    }

    #[test]
    fn group_or_world_access_to_the_data_dir_is_named_with_the_fix() {
        let dir = Path::new("/srv/alk");
        assert_eq!(loose_mode_warning(dir, 0o40700), None);
        let w = loose_mode_warning(dir, 0o40750).unwrap_or_default();
        assert!(
            w.contains("0750") && w.contains("chmod 700 /srv/alk"),
            "{w}"
        );
        assert!(loose_mode_warning(dir, 0o40701).is_some());
        // ensure_data_dir leaves an existing directory's mode alone (it warns).
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        ensure_data_dir(t.path()).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn private_files_are_0600_whatever_the_existing_mode() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("db");
        std::fs::write(&p, b"").unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666))
            .unwrap_or_else(|e| panic!("{e}"));
        create_private(&p).unwrap_or_else(|e| panic!("{e}"));
        let mode = std::fs::metadata(&p)
            .map(|m| m.permissions().mode() & 0o777)
            .ok();
        assert_eq!(mode, Some(0o600));
    }

    #[test]
    fn atomic_write_is_private() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("f");
        write_private_atomic(&p, b"one").unwrap_or_else(|e| panic!("{e}"));
        write_private_atomic(&p, b"two").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(&p).ok(), Some(b"two".to_vec()));
        let mode = std::fs::metadata(&p)
            .map(|m| m.permissions().mode() & 0o777)
            .ok();
        assert_eq!(mode, Some(0o600));
        assert_eq!(
            std::fs::read_dir(dir.path()).map(|d| d.count()).ok(),
            Some(1)
        );
    }
}
