//! The `alknet/git` stream header: which git service a stream runs, on which repository,
//! and with which protocol version.
//!
//! Each bidirectional stream of an `alknet/git` connection carries one git operation. The
//! client (`git-remote-alknet`, run by stock git) sends one line first:
//!
//! ```text
//! alknet-git/1 SERVICE [REPO [PROTOCOL]]\n
//! ```
//!
//! - `SERVICE`: `git-upload-pack` (clone, fetch, ls-remote), `git-receive-pack` (push), or
//!   `list` (the repositories the caller may read; no `REPO`).
//! - `REPO`: the repository path as the client wrote it (`org/repo.git`), 1..=255 bytes of
//!   printable ASCII without spaces. What names are *valid* (no `..`, no absolute paths, …)
//!   is the server's decision, made before it touches the filesystem; this module only
//!   bounds the bytes.
//! - `PROTOCOL`: git's `GIT_PROTOCOL` value (`version=2`): `KEY=VALUE` pairs separated by
//!   `:`, keys and values of letters, digits and `._-`, 1..=128 bytes in all; absent means
//!   protocol v0.
//!
//! Fields are separated by one space. The line is at most [`MAX_HEADER_LEN`] bytes with its
//! newline; decoding reports [`Decoded::Incomplete`] until the newline is there and never
//! reads past it, so the bytes after it are git's pkt-line stream (or, for `list`, the
//! server's answer: one `NAME ACCESS` line per repository, `ACCESS` being `read`,
//! `read,write`, …).
//!
//! A refusal is git's own: the server answers with an `ERR <message>` pkt-line
//! ([`err_pkt_line`]), which stock git prints as `fatal: remote error: <message>`.
//!
//! This module does no I/O and decides nothing about access.

use std::fmt;
use thiserror::Error;

/// The first token of every header.
pub const MAGIC: &str = "alknet-git/1";

/// The longest header, newline included.
pub const MAX_HEADER_LEN: usize = 512;

/// The longest repository path.
pub const MAX_REPO_LEN: usize = 255;

/// The longest `PROTOCOL` value.
pub const MAX_PROTOCOL_LEN: usize = 128;

/// The git service a stream runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitService {
    /// `git-upload-pack`: clone, fetch, ls-remote.
    UploadPack,
    /// `git-receive-pack`: push.
    ReceivePack,
    /// The repositories the caller may read.
    List,
}

impl GitService {
    /// The name on the wire (and of git's own program, for the two packs).
    pub fn as_str(self) -> &'static str {
        match self {
            GitService::UploadPack => "git-upload-pack",
            GitService::ReceivePack => "git-receive-pack",
            GitService::List => "list",
        }
    }

    /// The service named `s` on the wire.
    pub fn from_wire(s: &str) -> Option<Self> {
        match s {
            "git-upload-pack" => Some(GitService::UploadPack),
            "git-receive-pack" => Some(GitService::ReceivePack),
            "list" => Some(GitService::List),
            _ => None,
        }
    }
}

impl fmt::Display for GitService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One decoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitRequest {
    /// What to run.
    pub service: GitService,
    /// The repository path as sent (empty for [`GitService::List`]).
    pub repo: String,
    /// `GIT_PROTOCOL`, if the client asked for one.
    pub protocol: Option<String>,
}

/// Why bytes are not a header.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GitHeaderError {
    /// No newline within [`MAX_HEADER_LEN`] bytes.
    #[error("request header longer than {MAX_HEADER_LEN} bytes")]
    TooLong,
    /// Not starting with [`MAGIC`].
    #[error("not an alknet/git request (expected `{MAGIC} SERVICE REPO`)")]
    NotAlknetGit,
    /// A service this version does not know.
    #[error("unknown git service (git-upload-pack, git-receive-pack or list)")]
    UnknownService,
    /// A pack service without a repository, or `list` with one.
    #[error("{0}")]
    Shape(&'static str),
    /// A repository path with bytes outside printable ASCII, or too long.
    #[error("repository path must be 1..={MAX_REPO_LEN} printable ASCII bytes without spaces")]
    BadRepo,
    /// A malformed `PROTOCOL` value.
    #[error(
        "protocol must be KEY=VALUE pairs separated by `:` (e.g. version=2), at most {MAX_PROTOCOL_LEN} bytes"
    )]
    BadProtocol,
}

/// The result of decoding the start of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole header, and how many bytes it took (newline included).
    Header(GitRequest, usize),
    /// More bytes are needed.
    Incomplete,
}

fn repo_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_REPO_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

/// `key=value` pairs separated by `:` (what git puts in `GIT_PROTOCOL`, e.g. `version=2`).
fn protocol_ok(s: &str) -> bool {
    let chars_ok = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    !s.is_empty()
        && s.len() <= MAX_PROTOCOL_LEN
        && s.split(':').all(|pair| {
            pair.split_once('=')
                .is_some_and(|(k, v)| chars_ok(k) && chars_ok(v))
        })
}

impl GitRequest {
    /// Encodes the header line. Fails on values [`decode`] would refuse.
    pub fn encode(&self) -> Result<Vec<u8>, GitHeaderError> {
        let mut line = format!("{MAGIC} {}", self.service);
        match self.service {
            GitService::List => {
                if !self.repo.is_empty() || self.protocol.is_some() {
                    return Err(GitHeaderError::Shape("list takes no repository"));
                }
            }
            _ => {
                if !repo_ok(&self.repo) {
                    return Err(GitHeaderError::BadRepo);
                }
                line.push(' ');
                line.push_str(&self.repo);
                if let Some(p) = &self.protocol {
                    if !protocol_ok(p) {
                        return Err(GitHeaderError::BadProtocol);
                    }
                    line.push(' ');
                    line.push_str(p);
                }
            }
        }
        line.push('\n');
        if line.len() > MAX_HEADER_LEN {
            return Err(GitHeaderError::TooLong);
        }
        Ok(line.into_bytes())
    }
}

/// Decodes a header from the start of `buf`.
pub fn decode(buf: &[u8]) -> Result<Decoded, GitHeaderError> {
    let window = buf.get(..buf.len().min(MAX_HEADER_LEN)).unwrap_or(buf);
    let Some(end) = window.iter().position(|&b| b == b'\n') else {
        // A prefix that cannot become a header is refused at once.
        let seen = window.len().min(MAGIC.len());
        if window.get(..seen) != MAGIC.as_bytes().get(..seen) {
            return Err(GitHeaderError::NotAlknetGit);
        }
        if buf.len() >= MAX_HEADER_LEN {
            return Err(GitHeaderError::TooLong);
        }
        return Ok(Decoded::Incomplete);
    };
    let line = window.get(..end).unwrap_or_default();
    let line = std::str::from_utf8(line).map_err(|_| GitHeaderError::NotAlknetGit)?;
    let mut fields = line.split(' ');
    if fields.next() != Some(MAGIC) {
        return Err(GitHeaderError::NotAlknetGit);
    }
    let service = fields
        .next()
        .and_then(GitService::from_wire)
        .ok_or(GitHeaderError::UnknownService)?;
    let repo = fields.next();
    let protocol = fields.next();
    if fields.next().is_some() {
        return Err(GitHeaderError::Shape(
            "too many fields in the request header",
        ));
    }
    let request = match service {
        GitService::List => {
            if repo.is_some() {
                return Err(GitHeaderError::Shape("list takes no repository"));
            }
            GitRequest {
                service,
                repo: String::new(),
                protocol: None,
            }
        }
        _ => {
            let repo = repo.ok_or(GitHeaderError::Shape("no repository path in the request"))?;
            if !repo_ok(repo) {
                return Err(GitHeaderError::BadRepo);
            }
            if let Some(p) = protocol
                && !protocol_ok(p)
            {
                return Err(GitHeaderError::BadProtocol);
            }
            GitRequest {
                service,
                repo: repo.to_owned(),
                protocol: protocol.map(str::to_owned),
            }
        }
    };
    Ok(Decoded::Header(request, end + 1))
}

/// A git `ERR` pkt-line carrying `message` (control characters replaced, cut to 200
/// bytes): what a git server sends instead of its advertisement to refuse a request.
pub fn err_pkt_line(message: &str) -> Vec<u8> {
    let mut text: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    let body = format!("ERR {text}\n");
    let mut out = format!("{:04x}", body.len() + 4).into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Fuzzing entry point: decodes arbitrary bytes and checks the invariants: a header never
/// claims more bytes than given or than the bound, re-encodes to the same bytes, and every
/// prefix of it is incomplete.
pub(crate) fn fuzz_git_header(data: &[u8]) {
    let Ok(Decoded::Header(request, used)) = decode(data) else {
        return;
    };
    assert!(used <= data.len() && used <= MAX_HEADER_LEN);
    match request.encode() {
        Ok(encoded) => assert_eq!(encoded.as_slice(), data.get(..used).unwrap_or_default()),
        Err(e) => panic!("a decoded header does not encode: {e}"),
    }
    for cut in 0..used {
        assert!(matches!(
            decode(data.get(..cut).unwrap_or_default()),
            Ok(Decoded::Incomplete) | Err(_)
        ));
    }
    assert!(err_pkt_line(&request.repo).len() <= 4 + 4 + 200 + 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(service: GitService, repo: &str, protocol: Option<&str>) -> GitRequest {
        GitRequest {
            service,
            repo: repo.into(),
            protocol: protocol.map(Into::into),
        }
    }

    #[test]
    fn round_trips_and_leaves_the_rest() {
        for r in [
            req(GitService::UploadPack, "org/repo.git", Some("version=2")),
            req(GitService::ReceivePack, "a", None),
            req(GitService::List, "", None),
        ] {
            let mut bytes = r.encode().unwrap();
            let n = bytes.len();
            bytes.extend_from_slice(b"0000");
            assert_eq!(decode(&bytes), Ok(Decoded::Header(r.clone(), n)));
            for cut in 0..n {
                assert_eq!(decode(&bytes[..cut]), Ok(Decoded::Incomplete), "{cut}");
            }
        }
    }

    #[test]
    fn refuses_what_is_not_a_header() {
        let bad: &[(&[u8], GitHeaderError)] = &[
            (b"GET / HTTP/1.1\r\n", GitHeaderError::NotAlknetGit),
            (b"alknet-git/2 list\n", GitHeaderError::NotAlknetGit),
            (
                b"alknet-git/1 git-upload-archive x\n",
                GitHeaderError::UnknownService,
            ),
            (
                b"alknet-git/1 git-upload-pack\n",
                GitHeaderError::Shape("no repository path in the request"),
            ),
            (
                b"alknet-git/1 list x\n",
                GitHeaderError::Shape("list takes no repository"),
            ),
            (
                b"alknet-git/1 git-upload-pack a b c\n",
                GitHeaderError::Shape("too many fields in the request header"),
            ),
            (b"alknet-git/1 git-upload-pack \n", GitHeaderError::BadRepo),
            (
                b"alknet-git/1 git-upload-pack a\x01b\n",
                GitHeaderError::BadRepo,
            ),
            (
                b"alknet-git/1 git-upload-pack a version=2;rm\n",
                GitHeaderError::BadProtocol,
            ),
            (
                b"alknet-git/1 git-upload-pack a  version=2\n",
                GitHeaderError::Shape("too many fields in the request header"),
            ),
            (
                b"alknet-git/1 git-upload-pack a \n",
                GitHeaderError::BadProtocol,
            ),
            (
                b"alknet-git/1 git-upload-pack a b\n",
                GitHeaderError::BadProtocol,
            ),
            (
                b"alknet-git/1 git-upload-pack a version=\n",
                GitHeaderError::BadProtocol,
            ),
            (
                b"alknet-git/1 git-upload-pack a version=2::\n",
                GitHeaderError::BadProtocol,
            ),
        ];
        for (bytes, want) in bad {
            assert_eq!(
                decode(bytes),
                Err(want.clone()),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert_eq!(
            decode(&[b'a'; MAX_HEADER_LEN]),
            Err(GitHeaderError::NotAlknetGit)
        );
        let mut long = format!("{MAGIC} git-upload-pack ").into_bytes();
        long.resize(MAX_HEADER_LEN, b'x');
        assert_eq!(decode(&long), Err(GitHeaderError::TooLong));
        assert!(
            req(GitService::UploadPack, &"x".repeat(256), None)
                .encode()
                .is_err()
        );
    }

    #[test]
    fn err_lines_are_pkt_lines() {
        assert_eq!(err_pkt_line("no"), b"000bERR no\n");
        let long = err_pkt_line(&"é\n".repeat(300));
        let len = usize::from_str_radix(std::str::from_utf8(&long[..4]).unwrap(), 16).unwrap();
        assert_eq!(len, long.len());
        assert!(!long[4..long.len() - 1].contains(&b'\n'));
    }
}
