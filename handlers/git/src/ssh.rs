//! Git over SSH: `git clone gw:org/app.git` through the SSH service runs the exec
//! `git-upload-pack 'org/app.git'` (or `git-receive-pack …`), which the SSH service hands
//! here instead of to a shell: the same checks, the same child, the same rules as
//! `alknet/git`, never a login shell.

use crate::Gateway;
use crate::run::{Caller, serve_pack};
use alknet_proto::git::{GitRequest, GitService};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// The most bytes of an exec command read as a git request.
const MAX_COMMAND: usize = 1024;

/// The git service and repository an SSH exec command asks for, if it is one: `git-upload-pack
/// 'PATH'`, `git-receive-pack 'PATH'` (as git sends them, the path in single quotes with
/// `'\''` for a quote), or the `git upload-pack` spelling. A leading `/` is dropped (git
/// sends `gw:/org/app.git` that way), once.
pub fn parse_command(command: &[u8]) -> Option<(GitService, String)> {
    if command.len() > MAX_COMMAND {
        return None;
    }
    let text = std::str::from_utf8(command).ok()?;
    let (program, arg) = text.split_once(' ')?;
    let service = match program {
        "git-upload-pack" => GitService::UploadPack,
        "git-receive-pack" => GitService::ReceivePack,
        "git" => {
            let (sub, rest) = arg.split_once(' ')?;
            let service = match sub {
                "upload-pack" => GitService::UploadPack,
                "receive-pack" => GitService::ReceivePack,
                _ => return None,
            };
            return Some((service, unquote(rest)?));
        }
        _ => return None,
    };
    Some((service, unquote(arg)?))
}

/// One shell word: `'…'` with `'\''` inside, or a bare word of safe characters.
fn unquote(arg: &str) -> Option<String> {
    let arg = arg.trim();
    let word = if let Some(body) = arg.strip_prefix('\'') {
        let mut out = String::new();
        let mut rest = body;
        loop {
            let end = rest.find('\'')?;
            out.push_str(rest.get(..end)?);
            rest = rest.get(end + 1..)?;
            if rest.is_empty() {
                break;
            }
            rest = rest.strip_prefix("\\''")?;
            out.push('\'');
        }
        out
    } else if arg
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '~'))
    {
        arg.to_owned()
    } else {
        return None;
    };
    let word = word.strip_prefix('/').map(str::to_owned).unwrap_or(word);
    (!word.is_empty()).then_some(word)
}

/// Serves one git exec on an SSH channel's stream. `protocol` is the client's
/// `GIT_PROTOCOL` (an `env` request), used only if well-formed. Returns the exit status.
#[allow(clippy::too_many_arguments)]
pub async fn serve<S>(
    gateway: Arc<Gateway>,
    peer: String,
    scopes: Vec<String>,
    remote: String,
    service: GitService,
    repo: String,
    protocol: Option<String>,
    stream: S,
) -> u32
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let protocol = protocol.filter(|p| {
        GitRequest {
            service,
            repo: "x".into(),
            protocol: Some(p.clone()),
        }
        .encode()
        .is_ok()
    });
    let request = GitRequest {
        service,
        repo,
        protocol: if service == GitService::ReceivePack {
            None
        } else {
            protocol
        },
    };
    let caller = Caller {
        peer,
        scopes,
        remote,
    };
    if serve_pack(gateway, caller, request, Vec::new(), stream).await {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_as_git_sends_them() {
        assert_eq!(
            parse_command(b"git-upload-pack 'org/app.git'"),
            Some((GitService::UploadPack, "org/app.git".into()))
        );
        assert_eq!(
            parse_command(b"git-receive-pack '/org/app.git'"),
            Some((GitService::ReceivePack, "org/app.git".into()))
        );
        assert_eq!(
            parse_command(b"git upload-pack 'a'"),
            Some((GitService::UploadPack, "a".into()))
        );
        assert_eq!(
            parse_command(b"git-upload-pack 'it'\\''s'"),
            Some((GitService::UploadPack, "it's".into()))
        );
        assert_eq!(
            parse_command(b"git-upload-pack org/app.git"),
            Some((GitService::UploadPack, "org/app.git".into()))
        );
        for bad in [
            &b"git-upload-pack 'a'; id"[..],
            b"git-upload-pack a;id",
            b"git-upload-pack 'a",
            b"git-upload-archive 'a'",
            b"sh -c 'git-upload-pack a'",
            b"git-upload-pack",
            b"git-upload-pack ''",
            b"git-upload-pack $(id)",
        ] {
            assert_eq!(
                parse_command(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
