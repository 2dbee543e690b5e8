//! Repository names, checked before anything touches the filesystem.
//!
//! A name is what the client asked for (`org/app.git`, `org/app`): 1..=8 segments separated
//! by `/`, each 1..=100 bytes of letters, digits and `._-`, none starting with `.` (so no
//! `..`, no `.git`, no hidden directories) or `-` (nothing that reads as an option) and none but the last ending in `.git` (no reaching
//! inside another repository); no leading `/` (no absolute paths), no empty segments. The
//! canonical name drops one trailing `.git`; on disk the repository is `ROOT/NAME.git`.
//! Symlinks are refused later, component by component, when the path is opened.

use alknet_core::config::repo_segment_char;

/// Most segments in a name.
pub const MAX_SEGMENTS: usize = 8;
/// Longest segment.
pub const MAX_SEGMENT: usize = 100;

/// A checked repository name, without its `.git` suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoName(String);

impl RepoName {
    /// Checks `raw` as sent by a client. The error is safe to show it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let bare = raw.strip_suffix(".git").unwrap_or(raw);
        if raw.starts_with('/') {
            return Err(format!(
                "repository {:?}: absolute paths are not served; name it relative to the \
                 gateway's git root, e.g. org/app.git",
                shown(raw)
            ));
        }
        let segs: Vec<&str> = bare.split('/').collect();
        if bare.is_empty() || segs.len() > MAX_SEGMENTS {
            return Err(format!(
                "repository {:?}: a name is 1 to {MAX_SEGMENTS} segments, e.g. org/app.git",
                shown(raw)
            ));
        }
        for seg in &segs {
            let ok = !seg.is_empty()
                && seg.len() <= MAX_SEGMENT
                && !seg.starts_with('.')
                && !seg.starts_with('-')
                && !seg.ends_with(".git")
                && seg.chars().all(repo_segment_char);
            if !ok {
                return Err(format!(
                    "repository {:?}: each segment is letters, digits and ._- (not starting \
                     with a dot or a dash, not ending in .git)",
                    shown(raw)
                ));
            }
        }
        Ok(RepoName(bare.to_owned()))
    }

    /// The canonical name (`org/app`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path under the root (`org/app.git`), as segments.
    pub fn segments(&self) -> Vec<String> {
        let mut segs: Vec<String> = self.0.split('/').map(str::to_owned).collect();
        if let Some(last) = segs.last_mut() {
            last.push_str(".git");
        }
        segs
    }
}

impl std::fmt::Display for RepoName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `raw` cut and stripped of anything unprintable, for messages.
fn shown(raw: &str) -> String {
    raw.chars().filter(|c| !c.is_control()).take(80).collect()
}

/// Names no repository may have (traversal, absolute paths, git-internal paths, option- and
/// shell-like strings, control characters, encodings): the unit tests check each is refused
/// here, the integration tests that the service answers each with an `ERR` line.
#[doc(hidden)]
pub const HOSTILE_EXAMPLES: &[&str] = &[
    "",
    "/",
    ".git",
    "..",
    "../x",
    "a/../../b",
    "a/./b",
    "/etc/passwd",
    "//x",
    "a//b",
    "a/",
    "./a",
    ".hidden/x",
    "a/.git/config",
    "a.git/config",
    "x.git/objects",
    "a/b.git/c",
    "a\\b",
    "a b",
    "a\tb",
    "a\nb",
    "a\0b",
    "~root",
    "$HOME/x",
    "a;id",
    "a|id",
    "`id`",
    "a*",
    "a?",
    "a[1]",
    "-u",
    "--upload-pack=id",
    "a:b",
    "a@b",
    "%2e%2e/x",
    "a/%2e%2e",
    "é",
    "a/b/c/d/e/f/g/h/i",
    "C:\\x",
    "\u{202e}x",
    "a/..",
    "..git",
    "a/.",
    "x/ /y",
    "....",
    ".../x",
    "a.git.git/x",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names() {
        assert_eq!(RepoName::parse("org/app.git").unwrap().as_str(), "org/app");
        assert_eq!(RepoName::parse("org/app").unwrap().as_str(), "org/app");
        assert_eq!(
            RepoName::parse("a/b-c_d.e").unwrap().segments(),
            vec!["a".to_owned(), "b-c_d.e.git".to_owned()]
        );
    }

    #[test]
    fn hostile_names_are_refused() {
        let long = "a".repeat(101);
        for raw in HOSTILE_EXAMPLES.iter().copied().chain([long.as_str()]) {
            let r = RepoName::parse(raw);
            assert!(r.is_err(), "{raw:?} was accepted as {r:?}");
        }
        assert!(HOSTILE_EXAMPLES.len() >= 45);
    }
}
