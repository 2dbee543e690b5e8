//! The vault file on disk: bounded reads and atomic, durable replacement.
//!
//! A write goes to a fresh temporary file in the same directory (mode 0600, created
//! exclusively), is fsynced, renamed over the vault file, and the directory is fsynced. A crash
//! or `kill -9` at any instant leaves either the old or the new file under the vault name,
//! never a mix; at worst a stale `.vault.bin.tmp-*` file remains, which the next write removes.
//! This module does not know the format; `format` does.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::Error;
use crate::format::MAX_FILE_SIZE;

/// File name of the vault inside the data directory.
pub const VAULT_FILE_NAME: &str = "vault.bin";
const TMP_PREFIX: &str = ".vault.bin.tmp-";

/// The path of the vault file in a data directory: `<data_dir>/vault.bin`.
pub fn vault_path(data_dir: &Path) -> PathBuf {
    data_dir.join(VAULT_FILE_NAME)
}

/// Reads the vault file, refusing files larger than [`MAX_FILE_SIZE`] before reading them.
pub(crate) fn read(data_dir: &Path) -> Result<Vec<u8>, Error> {
    let path = vault_path(data_dir);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NotFound { path }),
        Err(e) => return Err(Error::io("reading", path, e)),
    };
    let mut buf = Vec::new();
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("reading", &path, e))?;
    if buf.len() as u64 > MAX_FILE_SIZE {
        let size = fs::metadata(&path).map_or(buf.len() as u64, |m| m.len());
        return Err(Error::FileTooLarge {
            path,
            size,
            max: MAX_FILE_SIZE,
        });
    }
    Ok(buf)
}

/// Creates the data directory (mode 0700) if it does not exist.
pub(crate) fn ensure_dir(data_dir: &Path) -> Result<(), Error> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|e| Error::io("creating", data_dir, e))
}

/// Atomically replaces (or creates) the vault file with `bytes`, mode 0600.
pub(crate) fn write_atomic(data_dir: &Path, bytes: &[u8]) -> Result<(), Error> {
    ensure_dir(data_dir)?;
    remove_stale_temps(data_dir);
    let mut suffix = [0u8; 8];
    crate::random_bytes(&mut suffix)?;
    let tmp = data_dir.join(format!("{TMP_PREFIX}{}", hex::encode(suffix)));
    let result = write_then_rename(&tmp, &vault_path(data_dir), data_dir, bytes);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_then_rename(tmp: &Path, target: &Path, dir: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| Error::io("creating", tmp, e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io("writing", tmp, e))?;
    f.sync_all().map_err(|e| Error::io("syncing", tmp, e))?;
    drop(f);
    fs::rename(tmp, target).map_err(|e| Error::io("renaming into", target, e))?;
    // The rename is durable only once the directory entry is on disk.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing", dir, e))
}

/// Removes temporary files left by an interrupted write. Best effort: a failure here does not
/// stop the write that follows.
fn remove_stale_temps(data_dir: &Path) {
    let Ok(entries) = fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Writes a new file that must not exist yet, mode 0600, fsynced: for a secret handed to the
/// operator once, such as the words of a new mnemonic.
pub fn write_new_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("creating", path, e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io("writing", path, e))?;
    f.sync_all().map_err(|e| Error::io("syncing", path, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_creates_0600_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        write_atomic(&d, b"one").unwrap();
        assert_eq!(read(&d).unwrap(), b"one");
        let mode = fs::metadata(vault_path(&d)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = fs::metadata(&d).unwrap().permissions().mode();
        assert_eq!(dmode & 0o777, 0o700);
        fs::write(d.join(format!("{TMP_PREFIX}stale")), b"x").unwrap();
        write_atomic(&d, b"two").unwrap();
        assert_eq!(read(&d).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(VAULT_FILE_NAME)]);
    }

    #[test]
    fn oversized_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            vault_path(dir.path()),
            vec![0u8; MAX_FILE_SIZE as usize + 1],
        )
        .unwrap();
        assert!(matches!(read(dir.path()), Err(Error::FileTooLarge { .. })));
    }

    #[test]
    fn missing_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read(dir.path()), Err(Error::NotFound { .. })));
    }
}
