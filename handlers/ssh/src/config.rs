//! The keys of `[services.ssh]`, checked when the configuration is read, so a wrong value
//! is an error naming the file, line and key before the server starts.
//!
//! ```toml
//! [services.ssh]
//! enabled = true
//! auth = "peer"                 # or "peer+key"
//! login_user = "admin"          # default: the user the server runs as
//! sftp_root = "/srv/files"      # default: the login user's home
//! exec_allow = ["uptime", "systemctl status alknet"]
//! max_sessions_per_peer = 8
//! max_channels_per_connection = 8
//! idle_timeout = "15m"
//!
//! [[services.ssh.rules]]        # first matching rule wins
//! peer = "backup"               # or: scope = "ssh-exec"
//! login_user = "backup"
//! sftp_root = "/srv/backup"
//! ```

use crate::login::Account;
use alknet_core::config::ConfigDuration;
use russh::keys::{Algorithm, PrivateKey};
use russh::{Preferred, cipher, kex, mac};
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

/// How SSH authentication confirms the QUIC peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AuthMode {
    /// The QUIC peer's identity is enough: OpenSSH's `none` method succeeds.
    #[default]
    #[serde(rename = "peer")]
    Peer,
    /// The client must also sign with an SSH key registered to that same peer.
    #[serde(rename = "peer+key")]
    PeerKey,
}

/// A login account named in the config, checked against the passwd database and against the
/// user the server runs as (only root may run children as someone else).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginUser(pub(crate) Account);

impl LoginUser {
    /// The account's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }
}

impl<'de> Deserialize<'de> for LoginUser {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Account::usable(&name)
            .map(LoginUser)
            .map_err(serde::de::Error::custom)
    }
}

/// What a rule matches: one peer, or every peer holding a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// The peer with this id.
    Peer(String),
    /// Peers holding this scope.
    Scope(String),
}

/// One `[[services.ssh.rules]]` entry: overrides for the peers it matches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawRule")]
pub struct Rule {
    /// Whom it applies to.
    pub matches: Match,
    /// The login user for them.
    pub login_user: Option<LoginUser>,
    /// The SFTP root for them.
    pub sftp_root: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    peer: Option<String>,
    scope: Option<String>,
    login_user: Option<LoginUser>,
    sftp_root: Option<PathBuf>,
}

impl TryFrom<RawRule> for Rule {
    type Error = String;
    fn try_from(r: RawRule) -> Result<Self, String> {
        let matches = match (r.peer, r.scope) {
            (Some(p), None) => Match::Peer(p),
            (None, Some(s)) => Match::Scope(s),
            _ => {
                return Err(
                    "a rule names exactly one of `peer = \"ID\"` or `scope = \"SCOPE\"`".into(),
                );
            }
        };
        if let Some(root) = &r.sftp_root
            && !root.is_absolute()
        {
            return Err(format!(
                "sftp_root {} must be an absolute path",
                root.display()
            ));
        }
        Ok(Rule {
            matches,
            login_user: r.login_user,
            sftp_root: r.sftp_root,
        })
    }
}

/// The keys of `[services.ssh]` besides `enabled`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// How SSH authentication confirms the QUIC peer.
    pub auth: AuthMode,
    /// The account sessions run as; default: the user the server runs as.
    pub login_user: Option<LoginUser>,
    /// The directory SFTP clients see as `/`; default: the login user's home.
    #[serde(deserialize_with = "absolute_path")]
    pub sftp_root: Option<PathBuf>,
    /// Command lines a peer with only the `ssh-exec` scope may run. Matched exactly, byte
    /// for byte, against the whole command the client sends (no globbing, no argument
    /// splitting); the line then runs through the login user's shell, as sshd runs commands.
    pub exec_allow: Vec<String>,
    /// Per-peer or per-scope overrides; the first that matches wins.
    pub rules: Vec<Rule>,
    /// SSH connections one peer may hold at once, over all its QUIC connections.
    pub max_sessions_per_peer: u32,
    /// Channels (sessions, subsystems) one SSH connection may hold open at once.
    pub max_channels_per_connection: u32,
    /// An SSH connection the client sends nothing on for this long is closed.
    pub idle_timeout: ConfigDuration,
}

fn absolute_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let p = Option::<PathBuf>::deserialize(d)?;
    if let Some(p) = &p
        && !p.is_absolute()
    {
        return Err(serde::de::Error::custom(format!(
            "{} must be an absolute path",
            p.display()
        )));
    }
    Ok(p)
}

impl Default for SshConfig {
    fn default() -> Self {
        Self {
            auth: AuthMode::Peer,
            login_user: None,
            sftp_root: None,
            exec_allow: Vec::new(),
            rules: Vec::new(),
            max_sessions_per_peer: 8,
            max_channels_per_connection: 8,
            idle_timeout: ConfigDuration(Duration::from_secs(15 * 60)),
        }
    }
}

/// Key exchange: the ML-KEM hybrid and curve25519 only, plus the strict-kex marker (the
/// Terrapin countermeasure) and extension negotiation. No finite-field DH, no SHA-1.
pub const KEX: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

/// Ciphers: AEAD only (no CBC, no CTR with a separate MAC).
pub const CIPHERS: &[cipher::Name] = &[
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_GCM,
    cipher::AES_128_GCM,
];

/// MACs: never used with the AEAD ciphers above, listed because the negotiation needs one;
/// SHA-2 encrypt-then-MAC only.
pub const MACS: &[mac::Name] = &[mac::HMAC_SHA512_ETM, mac::HMAC_SHA256_ETM];

/// Largest SSH packet accepted and sent. 32 KiB is what OpenSSH uses; with the window below
/// it bounds what one channel can have in flight.
pub const MAX_PACKET: u32 = 32 * 1024;

/// Per-channel window: how much the client may send before the server has consumed it. 1 MiB
/// keeps a bulk transfer at full speed over a loopback-to-LAN path while bounding memory.
pub const WINDOW: u32 = 1 << 20;

/// Messages russh queues per channel before it stops reading the connection (backpressure):
/// 16 × [`MAX_PACKET`] = 512 KiB at most per channel.
pub const CHANNEL_QUEUE: usize = 16;

impl SshConfig {
    /// The russh server settings: host key, algorithms, limits, only `none` and
    /// `publickey` authentication.
    pub fn russh_config(&self, host_key: PrivateKey) -> russh::server::Config {
        use russh::MethodKind;
        let methods: &[MethodKind] = match self.auth {
            AuthMode::Peer => &[MethodKind::None],
            AuthMode::PeerKey => &[MethodKind::PublicKey],
        };
        russh::server::Config {
            server_id: russh::SshId::Standard(Cow::Borrowed("SSH-2.0-alknet")),
            methods: methods.into(),
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![host_key],
            window_size: WINDOW,
            maximum_packet_size: MAX_PACKET,
            channel_buffer_size: CHANNEL_QUEUE,
            event_buffer_size: CHANNEL_QUEUE,
            preferred: Preferred {
                kex: Cow::Borrowed(KEX),
                key: Cow::Borrowed(&[Algorithm::Ed25519]),
                host_key_certificates: Cow::Borrowed(&[]),
                cipher: Cow::Borrowed(CIPHERS),
                mac: Cow::Borrowed(MACS),
                compression: Cow::Borrowed(&[russh::compression::NONE]),
            },
            max_auth_attempts: 6,
            inactivity_timeout: Some(self.idle_timeout.0).filter(|d| !d.is_zero()),
            keepalive_interval: None,
            nodelay: true,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ssh;
    use alknet_core::Registry;
    use alknet_core::config::Config;
    use alknet_core::service::Offer;
    use std::path::Path;

    fn parse(text: &str) -> Result<SshConfig, String> {
        let config = Config::parse(text, Path::new("alknet.toml")).map_err(|e| e.to_string())?;
        Registry::from_config(&config, [Offer::new(Ssh::new(None))]).map_err(|e| e.to_string())?;
        config
            .service_section::<SshConfig>("ssh")
            .map(|s| s.config)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_modes() {
        let c = parse("[services.ssh]\nenabled = true\n").unwrap();
        assert_eq!(c.auth, AuthMode::Peer);
        assert_eq!(c.max_sessions_per_peer, 8);
        let c = parse("[services.ssh]\nenabled = true\nauth = \"peer+key\"\n").unwrap();
        assert_eq!(c.auth, AuthMode::PeerKey);
    }

    #[test]
    fn bad_keys_name_file_line_and_key() {
        let e = parse("[services.ssh]\nenabled = true\nauth = \"password\"\n").unwrap_err();
        assert!(
            e.starts_with("alknet.toml:3: key `services.ssh.auth`"),
            "{e}"
        );
        let e =
            parse("[services.ssh]\nenabled = true\nlogin_user = \"no-such-user-x\"\n").unwrap_err();
        assert!(e.contains("alknet.toml:3"), "{e}");
        assert!(e.contains("login_user"), "{e}");
        assert!(e.contains("no-such-user-x"), "{e}");
        let e = parse("[services.ssh]\nsftp_root = \"relative\"\n").unwrap_err();
        assert!(e.contains("absolute"), "{e}");
        let e =
            parse("[services.ssh]\n[[services.ssh.rules]]\nlogin_user = \"root\"\n").unwrap_err();
        assert!(e.contains("exactly one of"), "{e}");
    }

    #[test]
    fn rules_parse() {
        let c = parse(
            "[services.ssh]\nenabled = true\n[[services.ssh.rules]]\npeer = \"a\"\nsftp_root = \"/srv\"\n[[services.ssh.rules]]\nscope = \"ssh-exec\"\n",
        )
        .unwrap();
        assert_eq!(c.rules.len(), 2);
        assert_eq!(c.rules[0].matches, Match::Peer("a".into()));
        assert_eq!(c.rules[1].matches, Match::Scope("ssh-exec".into()));
    }
}
