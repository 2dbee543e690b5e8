//! Who may do what on which repository, decided from `[git]` alone (no I/O).
//!
//! Rules add up: a caller has every right of every rule naming it (by peer id, or by a scope
//! it holds) whose patterns match the repository. With no matching rule it has none; the
//! `*` scope (an administrator) has all.

use alknet_core::config::{GitAccess, GitAccessConfig, GitRule, GitSubject, RefPattern};

/// The rights a caller has on one repository.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Access {
    /// Clone and fetch.
    pub read: bool,
    /// Push to it when it exists.
    pub write: bool,
    /// Create it by pushing.
    pub create: bool,
}

/// The parsed `[git]` rules.
#[derive(Debug, Default)]
pub struct Rules {
    allow: Vec<GitRule>,
    protect: Vec<RefPattern>,
}

impl Rules {
    /// The rules of a config.
    pub fn new(config: &GitAccessConfig) -> Self {
        Self {
            allow: config.allow.clone(),
            protect: config
                .protect
                .iter()
                .flat_map(|p| p.refs.iter().cloned())
                .collect(),
        }
    }

    /// The rights of `peer` with `scopes` on the repository `name` (canonical, no `.git`).
    pub fn access(&self, peer: &str, scopes: &[String], name: &str) -> Access {
        if scopes.iter().any(|s| s == "*") {
            return Access {
                read: true,
                write: true,
                create: true,
            };
        }
        let mut a = Access::default();
        for rule in &self.allow {
            let applies = match &rule.subject {
                GitSubject::Peer(p) => p == peer,
                GitSubject::Scope(s) => scopes.iter().any(|x| x == s),
            };
            if !applies || !rule.repos.iter().any(|p| p.matches(name)) {
                continue;
            }
            for g in &rule.access {
                match g {
                    GitAccess::Read => a.read = true,
                    GitAccess::Write => a.write = true,
                    GitAccess::Create => a.create = true,
                }
            }
        }
        a
    }

    /// Whether `refname` is protected (fast-forward only, never deleted).
    pub fn protected(&self, refname: &str) -> bool {
        self.protect.iter().any(|p| p.matches(refname))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Rules {
        let c = alknet_core::config::Config::parse(text, std::path::Path::new("t.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        Rules::new(&c.git)
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn rules_add_up_per_peer_and_scope() {
        let r = rules(
            "[[git.allow]]\npeer = \"laptop\"\nrepos = [\"org/*\"]\naccess = [\"read\", \"write\"]\n\
             [[git.allow]]\nscope = \"dev\"\nrepos = [\"org/**\"]\naccess = [\"read\", \"create\"]\n",
        );
        let a = r.access("laptop", &s(&["git"]), "org/app");
        assert_eq!((a.read, a.write, a.create), (true, true, false));
        let a = r.access("laptop", &s(&["git", "dev"]), "org/app");
        assert_eq!((a.read, a.write, a.create), (true, true, true));
        let a = r.access("laptop", &s(&["git"]), "org/team/app");
        assert_eq!(a, Access::default());
        let a = r.access("other", &s(&["git"]), "org/app");
        assert_eq!(a, Access::default());
        let a = r.access("admin", &s(&["*"]), "any/thing");
        assert!(a.read && a.write && a.create);
        assert!(r.protected("refs/heads/main"));
        assert!(r.protected("refs/tags/v1"));
        assert!(!r.protected("refs/heads/topic"));
    }
}
