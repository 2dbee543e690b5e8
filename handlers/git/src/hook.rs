//! The gateway's own git hooks: the only ones that run (`core.hooksPath` points at their
//! directory; a repository's `hooks/` never runs).
//!
//! `pre-receive` runs `alknet git-hook pre-receive` (the server's own binary, passed to the
//! child as `ALKNET_BIN`), which refuses deleting a protected ref or moving it other than
//! forward ([`check_updates`]), then hands the same input to the operator's
//! `[services.git] pre_receive` command, if any. `post-receive` runs the operator's
//! `post_receive` command, if any. git prints a hook's output as `remote: …` and reports a
//! refused update as `[remote rejected] … (pre-receive hook declined)`.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

/// Environment: the server binary that runs the checks.
pub const ENV_BIN: &str = "ALKNET_BIN";
/// Environment: protected ref patterns, joined by `:` (a ref name never holds one).
pub const ENV_PROTECT: &str = "ALKNET_GIT_PROTECT";
/// Environment: the operator's pre-receive command.
pub const ENV_PRE_RECEIVE: &str = "ALKNET_GIT_PRE_RECEIVE";
/// Environment: the operator's post-receive command.
pub const ENV_POST_RECEIVE: &str = "ALKNET_GIT_POST_RECEIVE";

/// The most bytes of ref updates one push may announce to the hook.
const MAX_INPUT: u64 = 4 << 20;

const PRE_RECEIVE: &str = "#!/bin/sh\n# Written by alknet at start; edits are lost.\nexec \"$ALKNET_BIN\" git-hook pre-receive\n";
const POST_RECEIVE: &str = "#!/bin/sh\n# Written by alknet at start; edits are lost.\n[ -n \"$ALKNET_GIT_POST_RECEIVE\" ] && exec \"$ALKNET_GIT_POST_RECEIVE\"\nexit 0\n";

/// Writes the hook scripts into `dir` (replacing what is there).
pub(crate) fn install(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (name, text) in [("pre-receive", PRE_RECEIVE), ("post-receive", POST_RECEIVE)] {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

/// Whether `ancestor` is an ancestor of (or equal to) `commit` in the repository git runs
/// the hook in.
fn is_ancestor(ancestor: &str, commit: &str) -> bool {
    Command::new("git")
        .args(["merge-base", "--is-ancestor", ancestor, commit])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The refusals for the updates in `input` (git's `OLD NEW REF` lines) under `protect`
/// (ref patterns: a full name, or a prefix ending in `*`); empty when all may go.
pub fn check_updates(
    input: &str,
    protect: &[String],
    is_ancestor: &dyn Fn(&str, &str) -> bool,
) -> Vec<String> {
    let covered = |r: &str| {
        protect.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => r.starts_with(prefix),
            None => p == r,
        })
    };
    let mut refused = Vec::new();
    for line in input.lines() {
        let mut f = line.split(' ');
        let (Some(old), Some(new), Some(name), None) = (f.next(), f.next(), f.next(), f.next())
        else {
            refused.push("malformed ref update from git".to_owned());
            continue;
        };
        if !covered(name) {
            continue;
        }
        let zero = |h: &str| h.bytes().all(|b| b == b'0');
        if zero(new) {
            refused.push(format!("{name} is protected: it cannot be deleted"));
        } else if !zero(old) && !is_ancestor(old, new) {
            refused.push(format!(
                "{name} is protected: only fast-forward updates (merge or rebase onto it, then push without --force)"
            ));
        }
    }
    refused
}

/// `alknet git-hook pre-receive`: what the hook script runs. Returns the exit code.
pub fn pre_receive_main() -> i32 {
    let mut input = String::new();
    if std::io::stdin()
        .take(MAX_INPUT)
        .read_to_string(&mut input)
        .is_err()
    {
        eprintln!("alknet: unreadable ref updates");
        return 1;
    }
    let protect: Vec<String> = std::env::var(ENV_PROTECT)
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let refused = check_updates(&input, &protect, &is_ancestor);
    if !refused.is_empty() {
        for r in &refused {
            eprintln!("alknet: {r}");
        }
        return 1;
    }
    let Some(next) = std::env::var_os(ENV_PRE_RECEIVE).filter(|v| !v.is_empty()) else {
        return 0;
    };
    let child = Command::new(&next).stdin(Stdio::piped()).spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("alknet: cannot run the gateway's pre-receive hook: {e}");
            return 1;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    match child.wait() {
        Ok(s) => s.code().unwrap_or(1),
        Err(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZERO: &str = "0000000000000000000000000000000000000000";

    #[test]
    fn protected_refs_only_move_forward() {
        let protect = vec!["refs/heads/main".to_owned(), "refs/tags/*".to_owned()];
        let forward = |a: &str, b: &str| a == "aaaa" && b == "bbbb";
        let ok = format!("aaaa bbbb refs/heads/main\n{ZERO} cccc refs/heads/main\n");
        assert!(check_updates(&ok, &protect, &forward).is_empty());
        let topic = format!("cccc {ZERO} refs/heads/topic\ncccc dddd refs/heads/topic\n");
        assert!(check_updates(&topic, &protect, &forward).is_empty());
        let del = format!("aaaa {ZERO} refs/heads/main\n");
        assert_eq!(check_updates(&del, &protect, &forward).len(), 1);
        let force = "bbbb aaaa refs/tags/v1\n";
        let r = check_updates(force, &protect, &forward);
        assert!(r[0].contains("only fast-forward"), "{r:?}");
        assert_eq!(check_updates("garbage\n", &protect, &forward).len(), 1);
    }
}
