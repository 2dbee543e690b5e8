//! `[git]`: who may read, push to and create which repositories, and how protected refs
//! may move. Read by the git service (`alknet-git`), over `alknet/git` and over SSH alike.
//!
//! ```toml
//! [[git.allow]]
//! peer = "laptop"                 # or: scope = "dev"
//! repos = ["org/*"]
//! access = ["read", "write", "create"]
//!
//! [[git.protect]]                 # default: refs/heads/main, refs/heads/master, refs/tags/*
//! refs = ["refs/heads/main", "refs/heads/release/*"]
//! ```
//!
//! Repository patterns name repositories without their `.git` suffix (`org/app` is
//! `org/app.git` under the root): `*` matches within one path segment, a segment `**` any
//! number of segments. Protected refs take fast-forward updates only and cannot be deleted;
//! `[[git.protect]]` entries replace the default list. Patterns are checked when the file is
//! read, so a typo is an error naming its file, line and key.

use serde::Deserialize;

/// The `[git]` section.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitAccessConfig {
    /// The rules; with none, every repository is refused (default deny).
    pub allow: Vec<GitRule>,
    /// Ref patterns that only fast-forward and are never deleted.
    pub protect: Vec<ProtectRule>,
}

impl Default for GitAccessConfig {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            protect: vec![ProtectRule {
                refs: ["refs/heads/main", "refs/heads/master", "refs/tags/*"]
                    .into_iter()
                    .map(|r| RefPattern(r.to_owned()))
                    .collect(),
            }],
        }
    }
}

/// What a rule grants on the repositories it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GitAccess {
    /// Clone, fetch, ls-remote; listed by `alknet git repos`.
    Read,
    /// Push to an existing repository.
    Write,
    /// Create the repository by pushing to it.
    Create,
}

/// Who a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GitSubject {
    /// The peer with this id.
    Peer(String),
    /// Every peer holding this scope.
    Scope(String),
}

/// One `[[git.allow]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawRule")]
pub struct GitRule {
    /// Who it applies to.
    pub subject: GitSubject,
    /// The repositories it covers.
    pub repos: Vec<RepoPattern>,
    /// What it grants on them.
    pub access: Vec<GitAccess>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    peer: Option<String>,
    scope: Option<String>,
    repos: Vec<RepoPattern>,
    access: Vec<GitAccess>,
}

impl TryFrom<RawRule> for GitRule {
    type Error = String;
    fn try_from(r: RawRule) -> Result<Self, String> {
        let subject = match (r.peer, r.scope) {
            (Some(p), None) if !p.is_empty() => GitSubject::Peer(p),
            (None, Some(s)) if !s.is_empty() => GitSubject::Scope(s),
            _ => {
                return Err(
                    "a git rule names exactly one of `peer = \"ID\"` or `scope = \"SCOPE\"`".into(),
                );
            }
        };
        if r.repos.is_empty() {
            return Err("a git rule needs `repos = [\"PATTERN\", …]`".into());
        }
        if r.access.is_empty() {
            return Err(
                "a git rule needs `access = [\"read\", \"write\", \"create\"]` (some of them)"
                    .into(),
            );
        }
        Ok(GitRule {
            subject,
            repos: r.repos,
            access: r.access,
        })
    }
}

/// One `[[git.protect]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectRule {
    /// The protected refs.
    pub refs: Vec<RefPattern>,
}

/// The characters a repository path segment may hold (and, with `*`, a pattern segment).
pub fn repo_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// A repository pattern: `/`-separated segments of letters, digits, `._-` and `*`, or `**`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RepoPattern(pub String);

impl TryFrom<String> for RepoPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bare = s.strip_suffix(".git").unwrap_or(&s);
        let bad = || {
            format!(
                "repository pattern {s:?}: segments of letters, digits, `._-` and `*` (or `**`), \
                 separated by `/`, e.g. \"org/*\""
            )
        };
        if bare.is_empty() || bare.len() > 255 {
            return Err(bad());
        }
        for seg in bare.split('/') {
            let ok = seg == "**"
                || (!seg.is_empty()
                    && !seg.starts_with('.')
                    && seg.chars().all(|c| c == '*' || repo_segment_char(c)));
            if !ok {
                return Err(bad());
            }
        }
        Ok(RepoPattern(bare.to_owned()))
    }
}

impl RepoPattern {
    /// Whether the repository `name` (no `.git` suffix) matches.
    pub fn matches(&self, name: &str) -> bool {
        let pat: Vec<&str> = self.0.split('/').collect();
        let segs: Vec<&str> = name.split('/').collect();
        segments_match(&pat, &segs)
    }
}

fn segments_match(pat: &[&str], segs: &[&str]) -> bool {
    match pat.split_first() {
        None => segs.is_empty(),
        Some((&"**", rest)) => {
            (0..=segs.len()).any(|i| segments_match(rest, segs.get(i..).unwrap_or_default()))
        }
        Some((p, rest)) => match segs.split_first() {
            Some((s, more)) => glob(p.as_bytes(), s.as_bytes()) && segments_match(rest, more),
            None => false,
        },
    }
}

/// `*` matches any run of bytes (within the one segment it is given).
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, s.get(i..).unwrap_or_default())),
        Some((c, rest)) => s
            .split_first()
            .is_some_and(|(d, more)| c == d && glob(rest, more)),
    }
}

/// A ref pattern: a full ref name (`refs/heads/main`), or one ending in `/*` for every ref
/// below that prefix.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RefPattern(pub String);

impl TryFrom<String> for RefPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let body = s.strip_suffix("/*").unwrap_or(&s);
        let ok = body.starts_with("refs/")
            && body.len() <= 255
            && !body.contains("..")
            && body
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'));
        if ok {
            Ok(RefPattern(s))
        } else {
            Err(format!(
                "ref pattern {s:?}: a ref under refs/ (e.g. \"refs/heads/main\"), or a prefix \
                 ending in /* (\"refs/tags/*\")"
            ))
        }
    }
}

impl RefPattern {
    /// Whether `name` is covered.
    pub fn matches(&self, name: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => self.0 == name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> RepoPattern {
        RepoPattern::try_from(s.to_owned()).unwrap()
    }

    #[test]
    fn repo_patterns_match_by_segment() {
        assert!(pat("org/*").matches("org/app"));
        assert!(!pat("org/*").matches("org/team/app"));
        assert!(pat("org/**").matches("org/team/app"));
        assert!(pat("org/**").matches("org"));
        assert!(pat("**").matches("anything/at/all"));
        assert!(pat("org/app.git").matches("org/app"));
        assert!(pat("org/a*-cfg").matches("org/app-cfg"));
        assert!(!pat("org/a*-cfg").matches("org/app-cfg2"));
        for bad in [
            "",
            "/abs",
            "org//x",
            "org/../x",
            "org/.hidden",
            "org/a b",
            "org/\u{e9}",
        ] {
            assert!(RepoPattern::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn ref_patterns() {
        let main = RefPattern::try_from("refs/heads/main".to_owned()).unwrap();
        assert!(main.matches("refs/heads/main"));
        assert!(!main.matches("refs/heads/main2"));
        let tags = RefPattern::try_from("refs/tags/*".to_owned()).unwrap();
        assert!(tags.matches("refs/tags/v1"));
        assert!(!tags.matches("refs/heads/v1"));
        for bad in ["main", "refs/heads/../x", "refs/heads/a b", "refs/*x"] {
            assert!(RefPattern::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }
}
