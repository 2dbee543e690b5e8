//! Who may do what in an SSH session, decided from the peer's scopes and the config alone
//! (no I/O, so it is tested as a table).
//!
//! - `ssh` (or `*`): shells, exec, PTYs, the SFTP subsystem.
//! - `ssh-exec` only: exec of a command line listed in `exec_allow` (exact match), no shell,
//!   no PTY, no subsystem.
//! - `git` only: nothing yet (git over SSH is its own service's business); admitted so it
//!   can be.
//!
//! Agent and X11 forwarding are refused to everyone. TCP port forwarding is open to `ssh`
//! peers only, under the gateway's `[tunnels]` rules (the `forward` module).

use crate::config::{AuthMode, Match, SshConfig};
use crate::login::Account;
use std::path::PathBuf;

/// What a peer's scopes allow in a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Everything a session offers.
    Full,
    /// Exec of the allowlist only.
    ExecOnly,
    /// Nothing a session offers (git over SSH only).
    GitOnly,
}

impl Access {
    /// The access `scopes` give.
    pub fn of(scopes: &[String]) -> Self {
        if scopes.iter().any(|s| s == "ssh" || s == "*") {
            Access::Full
        } else if scopes.iter().any(|s| s == "ssh-exec") {
            Access::ExecOnly
        } else {
            Access::GitOnly
        }
    }
}

/// The service's decisions, built once per shard from the config.
#[derive(Debug)]
pub struct Policy {
    pub(crate) auth: AuthMode,
    default_login: Result<Account, String>,
    sftp_root: Option<PathBuf>,
    exec_allow: Vec<String>,
    rules: Vec<crate::config::Rule>,
    pub(crate) max_channels: u32,
}

/// Where one peer's sessions run.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    pub(crate) account: Account,
    pub(crate) sftp_root: PathBuf,
}

impl Policy {
    /// The policy of a config.
    pub fn new(config: &SshConfig) -> Self {
        Self {
            auth: config.auth,
            default_login: match &config.login_user {
                Some(u) => Ok(u.0.clone()),
                None => Account::current(),
            },
            sftp_root: config.sftp_root.clone(),
            exec_allow: config.exec_allow.clone(),
            rules: config.rules.clone(),
            max_channels: config.max_channels_per_connection,
        }
    }

    /// Whether `access` may run `command` with exec.
    pub fn may_exec(&self, access: Access, command: &[u8]) -> bool {
        match access {
            Access::Full => true,
            Access::ExecOnly => self.exec_allow.iter().any(|c| c.as_bytes() == command),
            Access::GitOnly => false,
        }
    }

    /// The account and SFTP root of `peer`: the first matching rule's, else the defaults.
    pub(crate) fn placement(&self, peer: &str, scopes: &[String]) -> Result<Placement, String> {
        let rule = self.rules.iter().find(|r| match &r.matches {
            Match::Peer(p) => p == peer,
            Match::Scope(s) => scopes.iter().any(|x| x == s),
        });
        let account = match rule.and_then(|r| r.login_user.as_ref()) {
            Some(u) => u.0.clone(),
            None => self.default_login.clone()?,
        };
        let sftp_root = rule
            .and_then(|r| r.sftp_root.clone())
            .or_else(|| self.sftp_root.clone())
            .unwrap_or_else(|| account.home.clone());
        Ok(Placement { account, sftp_root })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn scopes_map_to_access() {
        assert_eq!(Access::of(&scopes(&["ssh"])), Access::Full);
        assert_eq!(Access::of(&scopes(&["*"])), Access::Full);
        assert_eq!(Access::of(&scopes(&["ssh-exec", "echo"])), Access::ExecOnly);
        assert_eq!(Access::of(&scopes(&["git"])), Access::GitOnly);
    }

    #[test]
    fn exec_allowlist_is_exact() {
        let config = SshConfig {
            exec_allow: vec!["uptime".into(), "echo allowed".into()],
            ..SshConfig::default()
        };
        let p = Policy::new(&config);
        assert!(p.may_exec(Access::ExecOnly, b"uptime"));
        assert!(p.may_exec(Access::ExecOnly, b"echo allowed"));
        assert!(!p.may_exec(Access::ExecOnly, b"uptime "));
        assert!(!p.may_exec(Access::ExecOnly, b"uptime; id"));
        assert!(!p.may_exec(Access::ExecOnly, b"echo"));
        assert!(!p.may_exec(Access::GitOnly, b"uptime"));
        assert!(p.may_exec(Access::Full, b"anything at all"));
    }

    #[test]
    fn rules_pick_placement() {
        let me = Account::current().unwrap();
        let config = SshConfig {
            sftp_root: Some("/srv".into()),
            rules: vec![crate::config::Rule {
                matches: Match::Scope("ssh-exec".into()),
                login_user: None,
                sftp_root: Some("/srv/exec".into()),
            }],
            ..SshConfig::default()
        };
        let p = Policy::new(&config);
        let a = p.placement("a", &scopes(&["ssh"])).unwrap();
        assert_eq!(a.sftp_root, PathBuf::from("/srv"));
        assert_eq!(a.account, me);
        let b = p.placement("b", &scopes(&["ssh-exec"])).unwrap();
        assert_eq!(b.sftp_root, PathBuf::from("/srv/exec"));
    }
}
