//! Authentication and authorisation of a finished handshake, as one pure decision.
//!
//! [`authorize`] takes what the handshake and the identity provider showed (the peer found
//! for the client key, the key itself) and what the service declared (its scope, whether it
//! serves strangers), and answers with the peer to serve, anonymous access, or one
//! [`AuthFailure`]. The failure carries everything each audience needs: the close code the
//! client's stack sees, the remedy text sent as the close reason, the short reason logged
//! for operators (fail2ban matches the log line). Looking the peer up, penalising the
//! source and closing the connection are the state machine's job.

use crate::identity::PeerEntry;
use crate::service::close_code;
use alknet_proto::Fingerprint;
use thiserror::Error;

/// What a service requires of a client, as it declared it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServiceRule<'a> {
    /// The ALPN, for messages.
    pub(crate) alpn: &'a str,
    /// The scopes that admit a peer (any one of them); empty lets any known peer in.
    pub(crate) scopes: &'a [&'a str],
    /// Strangers (unknown or disabled keys, no key) are served anonymously.
    pub(crate) anonymous: bool,
}

/// Why a client was refused after its handshake. `Display` is the remedy text.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthFailure {
    /// The client key belongs to no peer.
    #[error("unknown client key {fingerprint}; add it to [[peers]] in the server config")]
    UnknownKey {
        /// The key presented.
        fingerprint: Fingerprint,
    },
    /// The client presented no key, and the service needs one.
    #[error("client certificate required")]
    NoCertificate,
    /// The peer exists but is disabled.
    #[error("peer {peer} is disabled")]
    Disabled {
        /// The peer id.
        peer: String,
    },
    /// The peer lacks the service's scope.
    #[error("peer {peer} lacks scope `{scope}` for {alpn}")]
    MissingScope {
        /// The peer id.
        peer: String,
        /// The scope needed (several joined as `` a` or `b ``, so the message reads
        /// "lacks scope `a` or `b`").
        scope: String,
        /// The service.
        alpn: String,
    },
    /// The peer, or the anonymous source, already holds its cap of connections.
    #[error("{who} already holds {limit} connections; close some and retry")]
    ConnectionLimit {
        /// `peer <id>` or `source <address>`.
        who: String,
        /// The cap.
        limit: u32,
    },
}

impl AuthFailure {
    /// The application close code the client sees.
    pub fn close_code(&self) -> u32 {
        match self {
            AuthFailure::UnknownKey { .. }
            | AuthFailure::NoCertificate
            | AuthFailure::Disabled { .. } => close_code::UNAUTHORIZED,
            AuthFailure::MissingScope { .. } => close_code::FORBIDDEN,
            AuthFailure::ConnectionLimit { .. } => close_code::CONNECTION_LIMIT,
        }
    }

    /// The short reason logged with the failed authentication.
    pub fn log_reason(&self) -> &'static str {
        match self {
            AuthFailure::UnknownKey { .. } => "unknown key",
            AuthFailure::NoCertificate => "no certificate",
            AuthFailure::Disabled { .. } => "peer disabled",
            AuthFailure::MissingScope { .. } => "missing scope",
            AuthFailure::ConnectionLimit { .. } => "connection limit",
        }
    }

    /// The text sent as the close reason: what happened and what to do about it.
    pub fn remedy(&self) -> String {
        self.to_string()
    }

    /// Whether the failure counts towards the source's penalty (a key problem, which a
    /// scanner produces; a known peer lacking a scope is a configuration matter).
    pub fn penalises(&self) -> bool {
        self.close_code() == close_code::UNAUTHORIZED
    }
}

/// Decides whom a connection serves: `Ok(Some(peer))` for an authenticated peer,
/// `Ok(None)` for anonymous access to a service that allows it, or why not.
pub(crate) fn authorize<'p>(
    peer: Option<&'p PeerEntry>,
    fingerprint: Option<Fingerprint>,
    service: ServiceRule<'_>,
) -> Result<Option<&'p PeerEntry>, AuthFailure> {
    match peer {
        Some(p) if p.enabled => {
            if service.scopes.is_empty() || service.scopes.iter().any(|s| p.has_scope(s)) {
                Ok(Some(p))
            } else {
                Err(AuthFailure::MissingScope {
                    peer: p.peer_id.clone(),
                    scope: service.scopes.join("` or `"),
                    alpn: service.alpn.to_owned(),
                })
            }
        }
        _ if service.anonymous => Ok(None),
        Some(p) => Err(AuthFailure::Disabled {
            peer: p.peer_id.clone(),
        }),
        None => Err(match fingerprint {
            Some(fingerprint) => AuthFailure::UnknownKey { fingerprint },
            None => AuthFailure::NoCertificate,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(b: u8) -> Fingerprint {
        Fingerprint::from_key([b; 32])
    }

    fn peer(enabled: bool, scopes: &[&str]) -> PeerEntry {
        PeerEntry {
            peer_id: "alice".into(),
            fingerprints: vec![fp(1)],
            auth_token_hash: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            resources: Vec::new(),
            display_name: None,
            ssh_keys: Vec::new(),
            enabled,
        }
    }

    const OPEN: ServiceRule<'static> = ServiceRule {
        alpn: "alknet/echo",
        scopes: &[],
        anonymous: false,
    };
    const SCOPED: ServiceRule<'static> = ServiceRule {
        alpn: "alknet/call",
        scopes: &["call"],
        anonymous: false,
    };
    const ANON: ServiceRule<'static> = ServiceRule {
        alpn: "perf",
        scopes: &["perf"],
        anonymous: true,
    };

    #[test]
    fn decision_table() {
        let known = peer(true, &["call"]);
        let wildcard = peer(true, &["*"]);
        let unscoped = peer(true, &[]);
        let disabled = peer(false, &["*"]);
        let id =
            |r: Result<Option<&PeerEntry>, AuthFailure>| r.map(|p| p.map(|p| p.peer_id.clone()));
        let alice = Ok(Some("alice".to_owned()));
        assert_eq!(id(authorize(Some(&known), Some(fp(1)), OPEN)), alice);
        assert_eq!(id(authorize(Some(&known), Some(fp(1)), SCOPED)), alice);
        assert_eq!(id(authorize(Some(&wildcard), Some(fp(1)), SCOPED)), alice);
        assert_eq!(
            id(authorize(Some(&unscoped), Some(fp(1)), SCOPED)),
            Err(AuthFailure::MissingScope {
                peer: "alice".into(),
                scope: "call".into(),
                alpn: "alknet/call".into()
            })
        );
        assert_eq!(
            id(authorize(Some(&disabled), Some(fp(1)), OPEN)),
            Err(AuthFailure::Disabled {
                peer: "alice".into()
            })
        );
        assert_eq!(
            id(authorize(None, Some(fp(9)), OPEN)),
            Err(AuthFailure::UnknownKey { fingerprint: fp(9) })
        );
        assert_eq!(
            id(authorize(None, None, OPEN)),
            Err(AuthFailure::NoCertificate)
        );
        // An anonymous service serves strangers and disabled peers anonymously, but a
        // known peer without its scope is still refused rather than downgraded.
        assert_eq!(id(authorize(None, None, ANON)), Ok(None));
        assert_eq!(id(authorize(None, Some(fp(9)), ANON)), Ok(None));
        assert_eq!(id(authorize(Some(&disabled), Some(fp(1)), ANON)), Ok(None));
        assert!(matches!(
            authorize(Some(&unscoped), Some(fp(1)), ANON),
            Err(AuthFailure::MissingScope { .. })
        ));
    }

    #[test]
    fn any_of_several_scopes_admits() {
        const SSH: ServiceRule<'static> = ServiceRule {
            alpn: "alknet/ssh",
            scopes: &["ssh", "ssh-exec", "git"],
            anonymous: false,
        };
        for s in ["ssh", "ssh-exec", "git", "*"] {
            assert!(
                authorize(Some(&peer(true, &[s])), Some(fp(1)), SSH).is_ok(),
                "{s}"
            );
        }
        let e = authorize(Some(&peer(true, &["echo"])), Some(fp(1)), SSH).unwrap_err();
        assert_eq!(
            e.remedy(),
            "peer alice lacks scope `ssh` or `ssh-exec` or `git` for alknet/ssh"
        );
    }

    #[test]
    fn failures_map_to_code_reason_and_remedy() {
        let unknown = AuthFailure::UnknownKey { fingerprint: fp(9) };
        assert_eq!(unknown.close_code(), close_code::UNAUTHORIZED);
        assert_eq!(unknown.log_reason(), "unknown key");
        assert!(unknown.remedy().contains(&fp(9).to_string()));
        assert!(unknown.remedy().contains("[[peers]]"));
        assert!(unknown.penalises());
        let scope = AuthFailure::MissingScope {
            peer: "alice".into(),
            scope: "call".into(),
            alpn: "alknet/call".into(),
        };
        assert_eq!(scope.close_code(), close_code::FORBIDDEN);
        assert_eq!(scope.log_reason(), "missing scope");
        assert_eq!(
            scope.remedy(),
            "peer alice lacks scope `call` for alknet/call"
        );
        assert!(!scope.penalises());
        let limit = AuthFailure::ConnectionLimit {
            who: "peer alice".into(),
            limit: 2,
        };
        assert_eq!(limit.close_code(), close_code::CONNECTION_LIMIT);
        assert!(!limit.penalises(), "a cap is not an authentication failure");
        assert_eq!(
            limit.remedy(),
            "peer alice already holds 2 connections; close some and retry"
        );
        assert_eq!(
            AuthFailure::NoCertificate.close_code(),
            close_code::UNAUTHORIZED
        );
        assert_eq!(
            AuthFailure::Disabled {
                peer: "alice".into()
            }
            .close_code(),
            close_code::UNAUTHORIZED
        );
    }
}
