//! Client paths to paths beneath the session root, as pure functions.
//!
//! The client sees the root as `/`. A path is split on `/`; empty and `.` components are
//! dropped, and a `..` that would climb above the root before any other component is
//! dropped too (as in a chroot, `/..` is `/`). Every other `..` is kept and left to the
//! kernel-enforced resolution beneath the root's directory handle (`cap_std::fs::Dir`), which
//! follows symlinks honestly and refuses any path that would leave the tree. This module does
//! no I/O; it only decides what is handed to that resolution.

use std::path::PathBuf;

/// Why a client path is refused before it reaches the file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathError {
    /// The path holds a NUL byte, which no file name can contain.
    Nul,
}

/// The client's `path` as a path relative to the root (`.` for the root itself).
pub(crate) fn beneath(path: &str) -> Result<PathBuf, PathError> {
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    let mut out = PathBuf::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if out.as_os_str().is_empty() => {}
            name => out.push(name),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    Ok(out)
}

/// A path relative to the root as the client sees it: `/` followed by it.
pub(crate) fn shown(rel: &std::path::Path) -> String {
    let text = rel.to_string_lossy();
    let text = text.trim_start_matches("./");
    if text.is_empty() || text == "." {
        "/".to_owned()
    } else {
        format!("/{text}")
    }
}

/// Whether a symlink at `link` (a client path) pointing to `target` stays inside the root
/// when read lexically from the link's directory: relative, and never climbing above the root.
///
/// Such a link could not be followed outside through this server anyway (resolution is
/// beneath the root), but other programs on the host follow links without that guard, so a
/// link that points out is never created.
pub(crate) fn symlink_stays_inside(link: &str, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return false;
    }
    let Ok(link) = beneath(link) else {
        return false;
    };
    let mut depth: isize = 0;
    let parts: Vec<_> = link.components().collect();
    // The link's own directory: every component but the last.
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        match part {
            std::path::Component::Normal(_) => depth += 1,
            std::path::Component::CurDir => {}
            // A `..` in the link's own path makes its depth unknown without I/O: refuse.
            _ => return false,
        }
    }
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(p: &str) -> String {
        beneath(p)
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    #[test]
    fn absolute_paths_are_relative_to_the_root() {
        assert_eq!(rel("/"), ".");
        assert_eq!(rel(""), ".");
        assert_eq!(rel("/a/b"), "a/b");
        assert_eq!(rel("a//./b/"), "a/b");
    }

    #[test]
    fn leading_dotdot_is_clamped_at_the_root() {
        assert_eq!(rel("/.."), ".");
        assert_eq!(rel("/../../etc/passwd"), "etc/passwd");
        assert_eq!(rel("../x"), "x");
    }

    #[test]
    fn inner_dotdot_is_left_to_the_confined_resolution() {
        assert_eq!(rel("a/../../etc"), "a/../../etc");
        assert_eq!(rel("a/b/.."), "a/b/..");
        assert_eq!(rel("a/b/../.."), "a/b/../..");
    }

    #[test]
    fn nul_is_refused() {
        assert_eq!(beneath("a\0b"), Err(PathError::Nul));
    }

    #[test]
    fn shown_paths_start_at_slash() {
        assert_eq!(shown(std::path::Path::new(".")), "/");
        assert_eq!(shown(std::path::Path::new("")), "/");
        assert_eq!(shown(std::path::Path::new("a/b")), "/a/b");
    }

    #[test]
    fn symlinks_pointing_out_are_refused() {
        assert!(symlink_stays_inside("/l", "f"));
        assert!(symlink_stays_inside("/d/l", "../f"));
        assert!(symlink_stays_inside("/d/e/l", "../../f"));
        assert!(!symlink_stays_inside("/l", "../f"));
        assert!(!symlink_stays_inside("/d/l", "../../etc/passwd"));
        assert!(!symlink_stays_inside("/l", "/etc/passwd"));
        assert!(!symlink_stays_inside("/d/../l", "f"));
        assert!(!symlink_stays_inside("/l", ""));
        assert!(!symlink_stays_inside("/d/l", "x/../../../f"));
    }
}
