//! Who is asking: a bearer token of the identity store, or the connection's client key.
//!
//! A token acts as its peer with the token's scopes, cut down to what the peer itself holds
//! (a token never widens a peer), and only while both the token is unexpired and the peer
//! enabled. A request without a token is its connection's peer, if the client presented a
//! known key in the TLS handshake. Everything is checked per request, so a revoked token or
//! peer stops at its next request.

use alknet_core::identity::{ApiKeyEntry, PeerEntry};
use alknet_core::{AuthContext, Identity, IdentityProvider};
use std::sync::Arc;

/// An authenticated caller.
pub(crate) struct Caller {
    /// What the operations see: the peer and the scopes of this request.
    pub(crate) auth: AuthContext,
    /// Whom the per-caller request cap counts: `token:PREFIX` or `peer:ID`.
    pub(crate) key: String,
    /// The token's prefix when the caller came with one.
    pub(crate) token: Option<String>,
}

/// Why a request is not served.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No credential, or one that does not authenticate (401). The flag says whether a
    /// credential was presented (a failed authentication, logged and penalised).
    Unauthenticated(String, bool),
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A token's scopes within its peer's.
fn effective_scopes(peer: &PeerEntry, key: &ApiKeyEntry) -> Vec<String> {
    if key.scopes.iter().any(|s| s == "*") {
        return peer.scopes.clone();
    }
    key.scopes
        .iter()
        .filter(|s| peer.has_scope(s))
        .cloned()
        .collect()
}

/// Authenticates one request from its `Authorization` header value (if any) and what its
/// connection proved.
pub(crate) fn authenticate(
    identities: &Arc<dyn IdentityProvider>,
    authorization: Option<&[u8]>,
    conn: &AuthContext,
) -> Result<Caller, Denied> {
    if let Some(value) = authorization {
        let token = std::str::from_utf8(value)
            .ok()
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .ok_or_else(|| {
                Denied::Unauthenticated(
                    "Authorization must be `Bearer alk_…` (an API token: `alknet token create PEER --scope call`)"
                        .into(),
                    true,
                )
            })?;
        let found = identities.by_token(token, now_unix()).map_err(|e| {
            tracing::warn!(error = %e, "token lookup failed");
            Denied::Unauthenticated("token lookup failed; retry".into(), false)
        })?;
        let Some((peer, key)) = found else {
            return Err(Denied::Unauthenticated(
                "the token is unknown, revoked or expired, or its peer is disabled".into(),
                true,
            ));
        };
        let scopes = effective_scopes(&peer, &key);
        return Ok(Caller {
            auth: AuthContext {
                identity: Some(Identity {
                    id: peer.peer_id.clone(),
                }),
                scopes: scopes.into(),
                ..conn.clone()
            },
            key: format!("token:{}", key.prefix),
            token: Some(key.prefix.clone()),
        });
    }
    // The connection's key, looked up again: a peer disabled since the handshake stops here.
    let peer = conn
        .tls_client_fingerprint
        .as_ref()
        .and_then(|fp| identities.by_fingerprint(fp).ok().flatten())
        .filter(|p| p.enabled);
    match peer {
        Some(p) => Ok(Caller {
            auth: AuthContext {
                identity: Some(Identity {
                    id: p.peer_id.clone(),
                }),
                scopes: p.scopes.clone().into(),
                ..conn.clone()
            },
            key: format!("peer:{}", p.peer_id),
            token: None,
        }),
        None => Err(Denied::Unauthenticated(
            "authentication required: send `Authorization: Bearer alk_…` or a known client key"
                .into(),
            conn.tls_client_fingerprint.is_some(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alknet_core::identity::MemoryIdentities;

    fn peer(scopes: &[&str]) -> PeerEntry {
        PeerEntry {
            peer_id: "ada".into(),
            fingerprints: vec![],
            auth_token_hash: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            resources: vec![],
            display_name: None,
            ssh_keys: vec![],
            enabled: true,
        }
    }

    fn key(scopes: &[&str]) -> ApiKeyEntry {
        ApiKeyEntry {
            prefix: "abcd1234".into(),
            hash: [0; 32],
            peer_id: "ada".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            description: String::new(),
            expires_at: None,
        }
    }

    #[test]
    fn a_token_never_widens_its_peer() {
        assert_eq!(
            effective_scopes(&peer(&["call"]), &key(&["call", "admin"])),
            vec!["call"]
        );
        assert_eq!(
            effective_scopes(&peer(&["*"]), &key(&["call"])),
            vec!["call"]
        );
        assert_eq!(
            effective_scopes(&peer(&["call", "ssh"]), &key(&["*"])),
            vec!["call", "ssh"]
        );
    }

    #[test]
    fn malformed_and_unknown_credentials_are_refused() {
        let ids: Arc<dyn IdentityProvider> = Arc::new(MemoryIdentities::new());
        let conn = AuthContext {
            identity: None,
            scopes: Arc::from(Vec::<String>::new()),
            alpn: b"h2",
            remote_addr: "127.0.0.1:1".parse().unwrap(),
            tls_client_fingerprint: None,
            forwarded_for: None,
        };
        for bad in [
            &b"Basic abc"[..],
            b"Bearer",
            b"\xff\xfe",
            b"Bearer alk_nope",
        ] {
            assert!(matches!(
                authenticate(&ids, Some(bad), &conn),
                Err(Denied::Unauthenticated(_, true))
            ));
        }
        assert!(matches!(
            authenticate(&ids, None, &conn),
            Err(Denied::Unauthenticated(_, false))
        ));
    }
}
