//! Who a peer is: the peer model, the lookup traits, and the adapters that need no disk.
//!
//! A peer is known when the fingerprint of its TLS key maps to an enabled [`PeerEntry`]. The
//! identity handed to handlers is the stable `peer_id`, never the fingerprint: a peer may
//! carry several keys and replace them. Lookups happen during handshakes, so
//! [`IdentityProvider`] reads are synchronous and must not touch disk.

pub mod store;
pub mod tls;

use crate::config::PeerConfig;
use alknet_proto::Fingerprint;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use thiserror::Error;

/// A client allowed to use this node, and what it may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEntry {
    /// Stable id; the identity handlers see.
    pub peer_id: String,
    /// Keys that authenticate as this peer.
    pub fingerprints: Vec<Fingerprint>,
    /// SHA-256 of the peer's bearer token, if it has one.
    pub auth_token_hash: Option<[u8; 32]>,
    /// Service names (and finer scopes) this peer may use; `"*"` grants all.
    pub scopes: Vec<String>,
    /// Resources the peer may reach, interpreted by each service.
    pub resources: Vec<String>,
    /// A name for people.
    pub display_name: Option<String>,
    /// SSH public keys registered to the peer, normalised (`TYPE BASE64`, no comment; see
    /// [`normalize_ssh_key`]): under `auth = "peer+key"` the SSH service accepts only these.
    pub ssh_keys: Vec<String>,
    /// Disabled peers are refused.
    pub enabled: bool,
}

impl PeerEntry {
    /// True when the peer holds `scope` (or the wildcard `"*"`).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope || s == "*")
    }

    /// Builds an entry from a `[[peers]]` table of the config file (already checked).
    pub fn from_config(p: &PeerConfig) -> Result<Self, IdentityError> {
        let fingerprints = p
            .fingerprints
            .iter()
            .map(|f| {
                f.parse::<Fingerprint>()
                    .map_err(|e| IdentityError::Serialization(format!("peer {}: {e}", p.id)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            peer_id: p.id.clone(),
            fingerprints,
            auth_token_hash: None,
            scopes: p.scopes.clone(),
            resources: p.resources.clone(),
            display_name: p.display_name.clone(),
            ssh_keys: p
                .ssh_keys
                .iter()
                .map(|k| {
                    normalize_ssh_key(k)
                        .map_err(|e| IdentityError::Serialization(format!("peer {}: {e}", p.id)))
                })
                .collect::<Result<_, _>>()?,
            enabled: p.enabled,
        })
    }
}

/// SSH public key types accepted for peers.
const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "sk-ssh-ed25519@openssh.com",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
];

/// Longest SSH key line accepted (an RSA-16384 key is about 2.8 KB of base64).
const MAX_SSH_KEY_LINE: usize = 8192;

/// An SSH public key line as in `authorized_keys` (`TYPE BASE64 [comment]`, no options),
/// normalised to `TYPE BASE64`: the comment dropped, the type known, the base64 valid and
/// the key blob naming the same type.
pub fn normalize_ssh_key(line: &str) -> Result<String, String> {
    use base64ct::Encoding;
    let hint = "paste the whole line of a .pub file, e.g. `ssh-ed25519 AAAA… me@laptop`";
    if line.len() > MAX_SSH_KEY_LINE {
        return Err(format!(
            "SSH key longer than {MAX_SSH_KEY_LINE} bytes; {hint}"
        ));
    }
    let mut parts = line.split_whitespace();
    let (Some(kind), Some(b64)) = (parts.next(), parts.next()) else {
        return Err(format!("not an SSH public key; {hint}"));
    };
    if !SSH_KEY_TYPES.contains(&kind) {
        return Err(format!("unknown SSH key type {kind:?}; {hint}"));
    }
    let blob = base64ct::Base64::decode_vec(b64)
        .map_err(|_| format!("the key part of the {kind} key is not valid base64; {hint}"))?;
    let named = blob
        .get(..4)
        .and_then(|l| <[u8; 4]>::try_from(l).ok())
        .map(|l| u32::from_be_bytes(l) as usize)
        .and_then(|n| blob.get(4..4usize.checked_add(n)?));
    if named != Some(kind.as_bytes()) {
        return Err(format!("the key data is not a {kind} key; {hint}"));
    }
    Ok(format!("{kind} {b64}"))
}

/// An API key: a bearer token owned by a peer, with its own scopes and expiry. Only the
/// SHA-256 of the token is stored; the token itself is shown once, at creation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyEntry {
    /// The first characters of the token after `alk_`, to name it in lists.
    pub prefix: String,
    /// SHA-256 of the whole token.
    pub hash: [u8; 32],
    /// The peer the key acts as.
    pub peer_id: String,
    /// Scopes granted to this key (a subset of what the peer may do).
    pub scopes: Vec<String>,
    /// A note for people.
    pub description: String,
    /// Expiry, seconds since the Unix epoch; `None` never expires.
    pub expires_at: Option<u64>,
}

/// An encrypted secret held for a service: AES-256-GCM under the vault's storage key of
/// version `key_version`.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptedBlob {
    /// Version of the storage key (`m/74'/2'/0'/<version>'`).
    pub key_version: u32,
    /// Per-blob salt.
    pub salt: Vec<u8>,
    /// AES-GCM nonce.
    pub iv: Vec<u8>,
    /// Ciphertext with tag.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for EncryptedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedBlob")
            .field("key_version", &self.key_version)
            .field("len", &self.data.len())
            .finish_non_exhaustive()
    }
}

/// Encrypted blobs by name.
pub trait CredentialStore: Send + Sync {
    /// The blob stored under `name`.
    fn get_credential(&self, name: &str) -> Result<Option<EncryptedBlob>, IdentityError>;
    /// Stores or replaces a blob.
    fn put_credential(&self, name: &str, blob: EncryptedBlob) -> Result<(), IdentityError>;
    /// Deletes a blob; `NotFound` when absent.
    fn delete_credential(&self, name: &str) -> Result<(), IdentityError>;
}

/// Length of the random part of a token, in bytes (160 bits).
const TOKEN_BYTES: usize = 20;
/// Characters of a token (after `alk_`) that name it.
pub const TOKEN_PREFIX_LEN: usize = 8;

/// A new token: `alk_` and 160 random bits in lowercase hex. Returns the token and its
/// prefix; store only [`token_hash`] of it.
pub fn new_token() -> (zeroize::Zeroizing<String>, String) {
    let mut raw = zeroize::Zeroizing::new([0u8; TOKEN_BYTES]);
    rand::fill(&mut raw[..]);
    let token = zeroize::Zeroizing::new(format!("alk_{}", hex::encode(&raw[..])));
    let prefix = token
        .get(4..4 + TOKEN_PREFIX_LEN)
        .unwrap_or_default()
        .to_owned();
    (token, prefix)
}

/// SHA-256 of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Compares two hashes without an early exit.
pub fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The prefix naming a presented token, if it has the token shape.
pub fn token_prefix(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("alk_")?;
    if rest.len() != TOKEN_BYTES * 2 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    rest.get(..TOKEN_PREFIX_LEN)
}

/// Identity store failures.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityError {
    /// The storage backend failed.
    #[error("identity store failed: {0}")]
    Backend(String),
    /// No such peer.
    #[error("no such peer")]
    NotFound,
    /// A stored record could not be decoded or encoded.
    #[error("bad identity record: {0}")]
    Serialization(String),
    /// One key under two peers: which one a handshake finds would be a matter of order.
    #[error("{0}")]
    DuplicateKey(String),
}

/// Synchronous reads used at handshake time.
pub trait IdentityProvider: Send + Sync {
    /// The peer owning this key, if any (enabled or not).
    fn by_fingerprint(&self, fp: &Fingerprint) -> Result<Option<Arc<PeerEntry>>, IdentityError>;
    /// The peer whose token hashes to `token_sha256`, if any.
    fn by_token_hash(
        &self,
        token_sha256: &[u8; 32],
    ) -> Result<Option<Arc<PeerEntry>>, IdentityError>;
    /// The enabled peer and API key a presented token authenticates, checking expiry
    /// against `now_unix` (seconds) and comparing hashes in constant time. Providers
    /// without API keys answer `None`.
    fn by_token(
        &self,
        token: &str,
        now_unix: u64,
    ) -> Result<Option<(Arc<PeerEntry>, ApiKeyEntry)>, IdentityError> {
        let _ = (token, now_unix);
        Ok(None)
    }
}

/// Writes to the set of peers.
pub trait IdentityStore: IdentityProvider {
    /// Adds or replaces a peer.
    fn put_peer(&self, peer: PeerEntry) -> Result<(), IdentityError>;
    /// Removes a peer; `NotFound` when it does not exist.
    fn remove_peer(&self, peer_id: &str) -> Result<PeerEntry, IdentityError>;
    /// Every peer, in id order.
    fn list_peers(&self) -> Result<Vec<Arc<PeerEntry>>, IdentityError>;
}

/// Handshake-time lookups of a set of peers: by key and by token hash. Built whole from the
/// peers and replaced whole, by [`MemoryIdentities`] and the redb store alike.
#[derive(Default)]
pub(crate) struct KeyIndex {
    by_key: HashMap<Fingerprint, Arc<PeerEntry>>,
    by_token: HashMap<[u8; 32], Arc<PeerEntry>>,
}

impl KeyIndex {
    pub(crate) fn build<'a>(peers: impl IntoIterator<Item = &'a Arc<PeerEntry>>) -> Self {
        let mut index = Self::default();
        for p in peers {
            for f in &p.fingerprints {
                index.by_key.insert(*f, p.clone());
            }
            if let Some(h) = p.auth_token_hash {
                index.by_token.insert(h, p.clone());
            }
        }
        index
    }

    pub(crate) fn by_key(&self, fp: &Fingerprint) -> Option<Arc<PeerEntry>> {
        self.by_key.get(fp).cloned()
    }

    pub(crate) fn by_token(&self, hash: &[u8; 32]) -> Option<Arc<PeerEntry>> {
        self.by_token.get(hash).cloned()
    }
}

#[derive(Default)]
struct Index {
    peers: HashMap<String, Arc<PeerEntry>>,
    keys: KeyIndex,
}

impl Index {
    fn new(peers: HashMap<String, Arc<PeerEntry>>) -> Self {
        let keys = KeyIndex::build(peers.values());
        Self { peers, keys }
    }
}

/// Peers held in memory: the config file's `[[peers]]`, and tests.
///
/// Reads take a read lock on an index that writers replace whole, so a handshake never waits
/// for more than the swap of a pointer.
#[derive(Default)]
pub struct MemoryIdentities {
    index: RwLock<Arc<Index>>,
}

impl MemoryIdentities {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set holding `peers`.
    pub fn with_peers(peers: impl IntoIterator<Item = PeerEntry>) -> Self {
        let peers = peers
            .into_iter()
            .map(|p| (p.peer_id.clone(), Arc::new(p)))
            .collect();
        Self {
            index: RwLock::new(Arc::new(Index::new(peers))),
        }
    }

    /// The peers of a configuration file.
    pub fn from_config(peers: &[PeerConfig]) -> Result<Self, IdentityError> {
        let entries = peers
            .iter()
            .map(PeerEntry::from_config)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::with_peers(entries))
    }

    /// Replaces every peer at once (a reload of the config file's `[[peers]]`): a lookup
    /// sees the old set or the new one, never a mix.
    pub fn replace(&self, peers: impl IntoIterator<Item = PeerEntry>) {
        let peers = peers
            .into_iter()
            .map(|p| (p.peer_id.clone(), Arc::new(p)))
            .collect();
        let next = Arc::new(Index::new(peers));
        let mut guard = match self.index.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = next;
    }

    fn snapshot(&self) -> Arc<Index> {
        match self.index.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut HashMap<String, Arc<PeerEntry>>)) {
        let mut guard = match self.index.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut peers = guard.peers.clone();
        f(&mut peers);
        let next = Index::new(peers);
        *guard = Arc::new(next);
    }
}

impl IdentityProvider for MemoryIdentities {
    fn by_fingerprint(&self, fp: &Fingerprint) -> Result<Option<Arc<PeerEntry>>, IdentityError> {
        Ok(self.snapshot().keys.by_key(fp))
    }

    fn by_token_hash(
        &self,
        token_sha256: &[u8; 32],
    ) -> Result<Option<Arc<PeerEntry>>, IdentityError> {
        Ok(self.snapshot().keys.by_token(token_sha256))
    }
}

impl IdentityStore for MemoryIdentities {
    fn put_peer(&self, peer: PeerEntry) -> Result<(), IdentityError> {
        self.update(|peers| {
            peers.insert(peer.peer_id.clone(), Arc::new(peer));
        });
        Ok(())
    }

    fn remove_peer(&self, peer_id: &str) -> Result<PeerEntry, IdentityError> {
        let mut removed = None;
        self.update(|peers| removed = peers.remove(peer_id));
        removed.map(|p| (*p).clone()).ok_or(IdentityError::NotFound)
    }

    fn list_peers(&self) -> Result<Vec<Arc<PeerEntry>>, IdentityError> {
        let mut all: Vec<_> = self.snapshot().peers.values().cloned().collect();
        all.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        Ok(all)
    }
}

/// The config file's peers as the store is told about them ([`store::RedbStore::set_file_peers`]),
/// each with the file and line it is written at.
pub fn file_peers(config: &crate::config::Config) -> Result<Vec<store::FilePeer>, IdentityError> {
    config
        .peers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(store::FilePeer {
                entry: Arc::new(PeerEntry::from_config(p)?),
                origin: config.peer_origin(i),
            })
        })
        .collect()
}

/// Several providers asked in order; the first that knows a key or token answers. The
/// server puts the read-only config-file peers before the redb store.
pub struct LayeredIdentities {
    layers: Vec<Arc<dyn IdentityProvider>>,
}

impl LayeredIdentities {
    /// Providers in lookup order.
    pub fn new(layers: Vec<Arc<dyn IdentityProvider>>) -> Self {
        Self { layers }
    }
}

impl IdentityProvider for LayeredIdentities {
    fn by_fingerprint(&self, fp: &Fingerprint) -> Result<Option<Arc<PeerEntry>>, IdentityError> {
        for l in &self.layers {
            if let Some(p) = l.by_fingerprint(fp)? {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    fn by_token_hash(
        &self,
        token_sha256: &[u8; 32],
    ) -> Result<Option<Arc<PeerEntry>>, IdentityError> {
        for l in &self.layers {
            if let Some(p) = l.by_token_hash(token_sha256)? {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    fn by_token(
        &self,
        token: &str,
        now_unix: u64,
    ) -> Result<Option<(Arc<PeerEntry>, ApiKeyEntry)>, IdentityError> {
        for l in &self.layers {
            if let Some(p) = l.by_token(token, now_unix)? {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }
}

/// The authenticated identity handed to handlers: the peer id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The peer's stable id.
    pub id: String,
}

/// What a handler knows about who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct AuthContext {
    /// The peer, or `None` on an anonymous service for a client with an unknown key.
    pub identity: Option<Identity>,
    /// The peer's scopes (empty when anonymous).
    pub scopes: Arc<[String]>,
    /// The ALPN negotiated in the handshake.
    pub alpn: &'static [u8],
    /// Address the connection came from.
    pub remote_addr: SocketAddr,
    /// The key the client presented, if any.
    pub tls_client_fingerprint: Option<Fingerprint>,
    /// A client's claim of whom it forwards for: logged, never used for access control.
    pub forwarded_for: Option<String>,
}

impl AuthContext {
    /// True when the peer holds `scope` (or `"*"`); never for anonymous clients.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.identity.is_some() && self.scopes.iter().any(|s| s == scope || s == "*")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ssh_keys_are_normalised_and_garbage_refused() {
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        assert_eq!(
            normalize_ssh_key(&format!("{key} ada@laptop")).unwrap(),
            key
        );
        assert_eq!(normalize_ssh_key(&format!("  {key}\n")).unwrap(), key);
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-ed25519 !!!!",
            "no-such-type AAAA",
            // An ed25519 blob labelled as RSA.
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            "ssh-ed25519 AAAA",
        ] {
            let e = normalize_ssh_key(bad).unwrap_err();
            assert!(e.contains(".pub"), "{bad:?}: {e}");
        }
    }

    use super::*;

    fn peer(id: &str, key: u8) -> PeerEntry {
        PeerEntry {
            peer_id: id.into(),
            fingerprints: vec![Fingerprint::from_key([key; 32])],
            auth_token_hash: Some([key; 32]),
            scopes: vec!["echo".into()],
            resources: vec![],
            display_name: None,
            ssh_keys: Vec::new(),
            enabled: true,
        }
    }

    #[test]
    fn lookups_follow_writes() {
        let ids = MemoryIdentities::with_peers([peer("a", 1)]);
        let fp1 = Fingerprint::from_key([1; 32]);
        let fp2 = Fingerprint::from_key([2; 32]);
        assert_eq!(
            ids.by_fingerprint(&fp1)
                .ok()
                .flatten()
                .map(|p| p.peer_id.clone()),
            Some("a".into())
        );
        assert_eq!(ids.by_fingerprint(&fp2), Ok(None));
        assert!(ids.put_peer(peer("b", 2)).is_ok());
        assert!(ids.by_fingerprint(&fp2).ok().flatten().is_some());
        assert!(ids.by_token_hash(&[2; 32]).ok().flatten().is_some());
        assert!(ids.remove_peer("a").is_ok());
        assert_eq!(ids.by_fingerprint(&fp1), Ok(None));
        assert_eq!(ids.remove_peer("a"), Err(IdentityError::NotFound));
        assert_eq!(ids.list_peers().map(|v| v.len()), Ok(1));
    }

    #[test]
    fn scopes() {
        let mut p = peer("a", 1);
        assert!(p.has_scope("echo"));
        assert!(!p.has_scope("call"));
        p.scopes = vec!["*".into()];
        assert!(p.has_scope("call"));
    }
}
