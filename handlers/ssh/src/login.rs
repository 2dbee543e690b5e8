//! The account a session's children run as: looked up in the passwd database, and the
//! switch to it in the child (groups, gid, uid) when the server runs as root.
//!
//! Not here: which account a peer gets ([`crate::policy`]).

use nix::unistd::{Gid, Uid, User};
use std::ffi::CString;
use std::path::PathBuf;

/// A passwd entry, with the supplementary groups `initgroups` would give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) groups: Vec<u32>,
    pub(crate) home: PathBuf,
    pub(crate) shell: PathBuf,
}

impl Account {
    fn from_user(u: User) -> Result<Self, String> {
        let name = u.name.clone();
        let groups = CString::new(name.clone())
            .map_err(|_| format!("user {name:?} has a NUL in its name"))
            .and_then(|c| {
                nix::unistd::getgrouplist(&c, u.gid)
                    .map_err(|e| format!("cannot read the groups of user {name}: {e}"))
            })?
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        let shell = if u.shell.as_os_str().is_empty() {
            PathBuf::from("/bin/sh")
        } else {
            u.shell
        };
        Ok(Self {
            name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            groups,
            home: u.dir,
            shell,
        })
    }

    /// The user the server runs as.
    pub(crate) fn current() -> Result<Self, String> {
        let uid = Uid::effective();
        match User::from_uid(uid) {
            Ok(Some(u)) => Self::from_user(u),
            Ok(None) => Err(format!("the server's uid {uid} has no passwd entry")),
            Err(e) => Err(format!("cannot read the passwd entry of uid {uid}: {e}")),
        }
    }

    /// `name`, if it exists and this server may run children as it: root may run them as
    /// anyone, any other user only as itself.
    pub(crate) fn usable(name: &str) -> Result<Self, String> {
        let acct = match User::from_name(name) {
            Ok(Some(u)) => Self::from_user(u)?,
            Ok(None) => {
                return Err(format!(
                    "no user {name:?} in the passwd database; create it or name another"
                ));
            }
            Err(e) => return Err(format!("cannot look up user {name:?}: {e}")),
        };
        let me = Uid::effective();
        if !me.is_root() && me.as_raw() != acct.uid {
            return Err(format!(
                "the server runs as uid {me}, not root, so it cannot run sessions as {name}; \
                 run it as root or remove the key"
            ));
        }
        Ok(acct)
    }

    /// Whether children need a user switch (the server runs as someone else).
    pub(crate) fn needs_switch(&self) -> bool {
        Uid::effective().as_raw() != self.uid
    }

    /// Prepares `cmd` to run as this account: the switch (when needed) and the login
    /// environment (HOME, USER, LOGNAME, SHELL, PATH) and working directory.
    pub(crate) fn apply(&self, cmd: &mut tokio::process::Command) {
        if self.needs_switch() {
            alknet_core::net::sys::switch_user_in_child(
                cmd.as_std_mut(),
                self.uid,
                self.gid,
                self.groups.clone(),
            );
        }
        let path = if self.uid == 0 {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        } else {
            "/usr/local/bin:/usr/bin:/bin"
        };
        cmd.env_clear()
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name)
            .env("SHELL", &self.shell)
            .env("PATH", path);
        if self.home.is_dir() {
            cmd.current_dir(&self.home);
        } else {
            cmd.current_dir("/");
        }
    }
}
