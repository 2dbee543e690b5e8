//! The join service (`alknet/join`): a device holding an invite code becomes a peer.
//!
//! The client connects pinning the fingerprint from the code, presents its own key, sends
//! one [`JoinRequest`] carrying the invite's secret and reads one [`JoinResponse`]. The
//! server hashes the secret, finds the invite, and in one store commit spends a use and
//! records the client's key as a new peer with the invite's scopes. The store swaps its
//! index after the commit, so the peer is known on every shard at once.
//!
//! Why it may be anonymous and on by default: it must serve keys nobody knows yet, but it
//! admits nothing without a valid, unexpired, unspent invite. It requires a client key
//! ([`Service::requires_client_key`]), so turning it on leaves TLS client certificates
//! required and the other services still refuse unknown keys (the shard's authorisation is
//! per ALPN). Each connection carries one attempt; attempts per source are bounded
//! ([`AttemptLimiter`]), and every refused invite is reported as a failed authentication
//! ([`AuthFailures`]): logged on the `alknet::auth` target with the source address, as
//! fail2ban's filter expects, counted in `auth_failures`, and counted against the source's
//! penalty, so a source trying codes is dropped before its next handshake like one
//! presenting unknown keys.
//!
//! Not here: the invite code and messages (`alknet_proto::join`), creating and listing
//! invites (`ops::admin`), the client side (`alknet join`).

use crate::conn::Connection;
use crate::identity::store::{FilePeer, Mutation, RedbStore};
use crate::identity::{AuthContext, IdentityError, IdentityProvider, PeerEntry};
use crate::service::{
    AuthFailures, Handler, NoConfig, Service, ServiceContext, ServiceInfo, close_code,
};
use alknet_proto::Fingerprint;
use alknet_proto::join::{JoinRequest, JoinResponse, MAX_REQUEST, Refusal};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use alknet_proto::join::ALPN;

/// Join attempts one source may make per [`WINDOW`]: a person pasting a code needs one or
/// two; a guesser needs 2^128.
pub const ATTEMPTS_PER_WINDOW: u32 = 10;
/// The window of [`ATTEMPTS_PER_WINDOW`].
pub const WINDOW: Duration = Duration::from_secs(60);
/// Sources tracked at once; beyond this, new sources are refused until windows expire.
pub const MAX_SOURCES: usize = 4096;
/// Time a client has to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Tries at a free peer id (`laptop`, `laptop-2`, …).
const MAX_SUFFIX: u32 = 100;

/// The join service.
#[derive(Default)]
pub struct Join {
    limiter: Arc<Mutex<AttemptLimiter>>,
}

impl Join {
    /// The service, with its attempt limiter shared by every shard.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Service for Join {
    const NAME: &'static str = "join";
    type Config = NoConfig;
    type Handler = JoinHandler;

    fn info(&self, _config: &NoConfig) -> ServiceInfo {
        ServiceInfo {
            alpn: ALPN,
            scopes: &[],
            anonymous: true,
            uni_streams: false,
        }
    }

    fn build(&self, ctx: &ServiceContext<'_, NoConfig>) -> JoinHandler {
        JoinHandler {
            store: ctx.node().invites(),
            limiter: self.limiter.clone(),
            auth_failures: ctx.auth_failures(),
        }
    }

    fn enabled_by_default(&self, _config: &NoConfig) -> bool {
        true
    }

    fn requires_client_key(&self, _config: &NoConfig) -> bool {
        true
    }
}

/// The join service on one shard.
pub struct JoinHandler {
    store: Option<Arc<RedbStore>>,
    limiter: Arc<Mutex<AttemptLimiter>>,
    auth_failures: AuthFailures,
}

impl Handler for JoinHandler {
    async fn handle(self: Rc<Self>, conn: Connection, auth: AuthContext) {
        let remote = auth.remote_addr;
        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
            return;
        };
        let admitted = {
            let mut l = match self.limiter.lock() {
                Ok(l) => l,
                Err(p) => p.into_inner(),
            };
            l.admit(remote.ip(), Instant::now())
        };
        let answer = if !admitted {
            Err(Refusal::RateLimited)
        } else {
            match monoio::time::timeout(REQUEST_DEADLINE, recv.read_to_end(MAX_REQUEST)).await {
                Ok(Ok(bytes)) => match JoinRequest::decode(&bytes) {
                    Ok(req) => match (&self.store, auth.tls_client_fingerprint) {
                        (_, None) => Err(Refusal::NoKey),
                        (None, _) => Err(Refusal::ServerError),
                        (Some(store), Some(fp)) => {
                            redeem(store, &req, fp, crate::ops::control::unix_now())
                        }
                    },
                    Err(_) => Err(Refusal::BadRequest),
                },
                Ok(Err(_)) | Err(_) => Err(Refusal::BadRequest),
            }
        };
        let response = match answer {
            Ok((peer, scopes)) => {
                tracing::info!(
                    %remote,
                    %peer,
                    fingerprint = %auth.tls_client_fingerprint.map(|f| f.to_string()).unwrap_or_default(),
                    "peer joined with an invite"
                );
                JoinResponse::Admitted { peer, scopes }
            }
            Err(reason) => {
                if counts_as_failed_auth(reason) {
                    self.auth_failures.report(
                        remote,
                        "alknet/join",
                        auth.tls_client_fingerprint,
                        reason.log_reason(),
                    );
                } else {
                    tracing::info!(%remote, reason = reason.log_reason(), "join refused");
                }
                JoinResponse::Refused {
                    reason,
                    message: String::new(),
                }
            }
        };
        let ok = matches!(response, JoinResponse::Admitted { .. });
        if let Ok(bytes) = response.encode() {
            let _ = send.write_all(&bytes).await;
        }
        let _ = send.finish();
        // The client closes once it has read the answer; a client that never does is cut
        // by the idle timeout.
        let _ = monoio::time::timeout(REQUEST_DEADLINE, conn.closed()).await;
        if !ok {
            conn.close(close_code::UNAUTHORIZED, b"join refused");
        }
    }
}

/// Whether a refusal is a failed authentication (logged for fail2ban): a wrong, spent or
/// expired secret, garbage, or a source over its attempts. A known key or a store failure
/// is not the client's guess.
pub fn counts_as_failed_auth(reason: Refusal) -> bool {
    !matches!(reason, Refusal::KeyKnown | Refusal::ServerError)
}

/// Checks the request's secret against the store and, when it is good, records `fp` as a
/// new peer; returns the peer id and scopes.
pub fn redeem(
    store: &RedbStore,
    req: &JoinRequest,
    fp: Fingerprint,
    now_unix: u64,
) -> Result<(String, Vec<String>), Refusal> {
    let hash: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &req.secret)
        .as_ref()
        .try_into()
        .map_err(|_| Refusal::ServerError)?;
    let check = |store: &RedbStore| {
        let invite = store.invite_by_hash(&hash).ok_or(Refusal::Unknown)?;
        if invite.expires_at <= now_unix {
            return Err(Refusal::Expired);
        }
        if invite.uses_left == 0 {
            return Err(Refusal::UsedUp);
        }
        Ok(invite)
    };
    let invite = check(store)?;
    let file = store.file_peers();
    let known = matches!(store.by_fingerprint(&fp), Ok(Some(_)))
        || file.iter().any(|p| p.entry.fingerprints.contains(&fp));
    if known {
        return Err(Refusal::KeyKnown);
    }
    let base = invite
        .name
        .clone()
        .or_else(|| req.name.clone())
        .filter(|n| valid_id(n))
        .unwrap_or_else(|| "device".to_owned());
    let id = free_id(store, &file, &base).ok_or(Refusal::ServerError)?;
    let peer = PeerEntry {
        peer_id: id.clone(),
        fingerprints: vec![fp],
        auth_token_hash: None,
        scopes: invite.scopes.clone(),
        resources: Vec::new(),
        display_name: req.name.clone(),
        enabled: true,
        ssh_keys: Vec::new(),
    };
    match store.apply(vec![Mutation::RedeemInvite {
        id: invite.id.clone(),
        now_unix,
        peer,
    }]) {
        Ok(()) => Ok((id, invite.scopes)),
        // Another join spent the last use (or the invite was revoked) in between.
        Err(IdentityError::NotFound) => Err(check(store).err().unwrap_or(Refusal::UsedUp)),
        Err(e) => {
            tracing::error!(error = %e, "cannot record a joining peer");
            Err(Refusal::ServerError)
        }
    }
}

/// A peer id a person would type: 1..=64 of letters, digits, `-`, `_`, `.`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= alknet_proto::join::MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `base`, or `base-2`, `base-3`, … : the first id no peer (of the store or the file) has.
fn free_id(store: &RedbStore, file: &[FilePeer], base: &str) -> Option<String> {
    let taken = |id: &str| store.peer(id).is_some() || file.iter().any(|p| p.entry.peer_id == id);
    if !taken(base) {
        return Some(base.to_owned());
    }
    (2..=MAX_SUFFIX)
        .map(|n| format!("{base}-{n}"))
        .find(|id| !taken(id))
}

/// Join attempts per source (an IPv4 address, an IPv6 /64) in fixed windows, over a bounded
/// number of sources. Sans-IO: the caller passes the time.
#[derive(Debug, Default)]
pub struct AttemptLimiter {
    sources: HashMap<IpAddr, (Instant, u32)>,
}

impl AttemptLimiter {
    /// Counts one attempt from `ip` at `now`; false when it is over the bound.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> bool {
        let key = crate::net::source_of(ip);
        if !self.sources.contains_key(&key) && self.sources.len() >= MAX_SOURCES {
            self.sources
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < WINDOW);
            if self.sources.len() >= MAX_SOURCES {
                return false;
            }
        }
        let entry = self.sources.entry(key).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1 <= ATTEMPTS_PER_WINDOW
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::store::{InviteEntry, STORE_FILE, invite_id};

    #[test]
    fn attempts_are_bounded_per_source_and_window() {
        let mut l = AttemptLimiter::default();
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap_or_else(|e| panic!("{e}"));
        let b: IpAddr = "2001:db8::1".parse().unwrap_or_else(|e| panic!("{e}"));
        let b2: IpAddr = "2001:db8::2".parse().unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..ATTEMPTS_PER_WINDOW {
            assert!(l.admit(a, t0));
        }
        assert!(!l.admit(a, t0 + Duration::from_secs(59)));
        assert!(l.admit(b, t0), "another source is not affected");
        for _ in 1..ATTEMPTS_PER_WINDOW {
            assert!(l.admit(b2, t0));
        }
        assert!(!l.admit(b, t0), "one /64 is one source");
        assert!(l.admit(a, t0 + WINDOW), "a new window");
        // The table stays bounded.
        for i in 0..(MAX_SOURCES as u32 + 10) {
            let _ = l.admit(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)), t0);
        }
        assert!(l.sources.len() <= MAX_SOURCES);
    }

    fn store_with(uses: u32, expires_at: u64, secret: [u8; 16]) -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = RedbStore::open(&dir.path().join(STORE_FILE)).unwrap_or_else(|e| panic!("{e}"));
        let hash: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &secret)
            .as_ref()
            .try_into()
            .unwrap_or([0; 32]);
        store
            .apply(vec![Mutation::PutInvite(InviteEntry {
                id: invite_id(&hash),
                hash,
                scopes: vec!["echo".into()],
                name: None,
                uses_left: uses,
                uses,
                created_at: 0,
                expires_at,
                admitted: vec![],
            })])
            .unwrap_or_else(|e| panic!("{e}"));
        (dir, store)
    }

    #[test]
    fn redeeming_admits_dedupes_ids_and_refuses_with_the_reason() {
        let secret = [5u8; 16];
        let (_d, store) = store_with(2, 100, secret);
        let req = |name: &str| JoinRequest {
            secret,
            name: Some(name.into()),
        };
        let fp = |b| Fingerprint::from_key([b; 32]);
        assert_eq!(
            redeem(&store, &req("laptop"), fp(1), 99),
            Ok(("laptop".into(), vec!["echo".into()]))
        );
        assert_eq!(
            redeem(&store, &req("laptop"), fp(1), 99),
            Err(Refusal::KeyKnown)
        );
        assert_eq!(
            redeem(&store, &req("laptop"), fp(2), 99).map(|p| p.0),
            Ok("laptop-2".into())
        );
        assert_eq!(redeem(&store, &req("x"), fp(3), 99), Err(Refusal::UsedUp));
        let forged = JoinRequest {
            secret: [6; 16],
            name: None,
        };
        assert_eq!(redeem(&store, &forged, fp(4), 0), Err(Refusal::Unknown));
        let (_d2, store2) = store_with(1, 100, secret);
        assert_eq!(
            redeem(&store2, &req("a"), fp(1), 100),
            Err(Refusal::Expired)
        );
        // A name nobody would type falls back to `device`.
        assert_eq!(
            redeem(&store2, &req("a/../b"), fp(1), 1).map(|p| p.0),
            Ok("device".into())
        );
        assert!(store2.by_fingerprint(&fp(1)).ok().flatten().is_some());
    }
}
