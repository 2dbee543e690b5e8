//! Peer and token management: the operations behind `alknet peer …` and `alknet token …`.
//!
//! They run inside a live server (through the control socket, which then also closes the
//! connections of disabled or revoked peers) or directly on the store file when no server
//! runs. Requests and answers are serde types so both paths share one definition.
//!
//! Peers of the config file's `[[peers]]` are listed and shown, and their keys are never
//! given to another peer, but they are changed only in the file: the file is what the
//! operator (or their configuration management) declared, the server only reads it, and a
//! change made at run time would be undone by the next restart, silently re-admitting a
//! peer someone disabled. So `peer disable`/`update`/`revoke` of such a peer say where it is
//! written and what to edit.

use crate::identity::store::{FilePeer, InviteEntry, Mutation, RedbStore, invite_id};
use crate::identity::{
    ApiKeyEntry, IdentityError, IdentityProvider, IdentityStore, PeerEntry, new_token, token_hash,
};
use alknet_proto::Fingerprint;
use serde::{Deserialize, Serialize};

/// Longest peer id, scope or resource name.
const MAX_NAME: usize = 128;
/// Most fingerprints, scopes or resources per peer.
const MAX_ITEMS: usize = 64;

/// A management operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminOp {
    /// Add a new peer.
    PeerAdd {
        /// Peer id.
        id: String,
        /// Keys, `ed25519:…`.
        fingerprints: Vec<String>,
        /// Scopes.
        scopes: Vec<String>,
        /// Resources.
        #[serde(default)]
        resources: Vec<String>,
        /// Display name.
        #[serde(default)]
        display_name: Option<String>,
    },
    /// List peers.
    PeerList,
    /// Show one peer.
    PeerShow {
        /// Peer id.
        id: String,
    },
    /// Change a peer.
    PeerUpdate {
        /// Peer id.
        id: String,
        /// Keys to add.
        #[serde(default)]
        add_fingerprints: Vec<String>,
        /// Keys to remove.
        #[serde(default)]
        remove_fingerprints: Vec<String>,
        /// Scopes to add.
        #[serde(default)]
        add_scopes: Vec<String>,
        /// Scopes to remove.
        #[serde(default)]
        remove_scopes: Vec<String>,
        /// SSH public keys to register (`ssh-ed25519 AAAA… [comment]`).
        #[serde(default)]
        add_ssh_keys: Vec<String>,
        /// SSH public keys to remove (compared without their comment).
        #[serde(default)]
        remove_ssh_keys: Vec<String>,
        /// New display name.
        #[serde(default)]
        display_name: Option<String>,
    },
    /// Refuse the peer until enabled again.
    PeerDisable {
        /// Peer id.
        id: String,
    },
    /// Accept the peer again.
    PeerEnable {
        /// Peer id.
        id: String,
    },
    /// Remove the peer and its tokens for good.
    PeerRevoke {
        /// Peer id.
        id: String,
    },
    /// Create an API token for a peer.
    TokenCreate {
        /// Peer id.
        peer: String,
        /// Scopes of the token.
        scopes: Vec<String>,
        /// Note.
        #[serde(default)]
        description: String,
        /// Expiry, Unix seconds.
        #[serde(default)]
        expires_at: Option<u64>,
    },
    /// Revoke a token by its prefix.
    TokenRevoke {
        /// The token prefix.
        prefix: String,
    },
    /// List tokens (prefixes only).
    TokenList,
    /// Create an invite. The caller made the secret and sends only its SHA-256, so the
    /// secret never reaches the server's memory or the control socket.
    InviteCreate {
        /// SHA-256 of the secret, hex.
        hash: String,
        /// Scopes the admitted peers get.
        scopes: Vec<String>,
        /// Peer id for the admitted device (else the one it proposes).
        #[serde(default)]
        name: Option<String>,
        /// Devices the invite admits (1..=1000).
        uses: u32,
        /// Expiry, Unix seconds.
        expires_at: u64,
    },
    /// List invites (never their secrets).
    InviteList,
    /// Revoke an invite by id.
    InviteRevoke {
        /// The invite id.
        id: String,
    },
}

/// Most devices one invite admits.
pub const MAX_INVITE_USES: u32 = 1000;
/// Invites whose expiry is this far past are dropped when the next one is made.
const INVITE_KEPT_AFTER_EXPIRY: u64 = 7 * 86_400;

/// An invite as shown to operators.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InviteView {
    /// Id naming it in `alknet invite revoke`.
    pub id: String,
    /// Scopes the admitted peers get.
    pub scopes: Vec<String>,
    /// Peer id given to the admitted device.
    pub name: Option<String>,
    /// Devices it admits in all.
    pub uses: u32,
    /// Devices it still admits.
    pub uses_left: u32,
    /// Created, Unix seconds.
    pub created_at: u64,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// Peers it admitted.
    pub admitted: Vec<String>,
}

impl From<&InviteEntry> for InviteView {
    fn from(i: &InviteEntry) -> Self {
        Self {
            id: i.id.clone(),
            scopes: i.scopes.clone(),
            name: i.name.clone(),
            uses: i.uses,
            uses_left: i.uses_left,
            created_at: i.created_at,
            expires_at: i.expires_at,
            admitted: i.admitted.clone(),
        }
    }
}

/// A new invite secret (128 random bits), wiped from memory when dropped.
pub fn new_invite_secret() -> zeroize::Zeroizing<[u8; alknet_proto::join::SECRET_LEN]> {
    let mut s = zeroize::Zeroizing::new([0u8; alknet_proto::join::SECRET_LEN]);
    rand::fill(&mut s[..]);
    s
}

/// The SHA-256 of an invite secret, as the store keeps it.
pub fn invite_secret_hash(secret: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl AdminOp {
    /// The peer whose live connections must close after this operation succeeds.
    pub fn closes_peer(&self) -> Option<&str> {
        match self {
            AdminOp::PeerDisable { id } | AdminOp::PeerRevoke { id } => Some(id),
            _ => None,
        }
    }

    /// The peer whose record this operation changes: after it succeeds, each live session
    /// of that peer is checked against the new record (a removed key or scope cuts the
    /// sessions that depended on it).
    pub fn changes_peer(&self) -> Option<&str> {
        match self {
            AdminOp::PeerUpdate { id, .. }
            | AdminOp::PeerDisable { id }
            | AdminOp::PeerEnable { id }
            | AdminOp::PeerRevoke { id } => Some(id),
            _ => None,
        }
    }
}

/// A peer as shown to operators.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerView {
    /// Peer id.
    pub id: String,
    /// Keys.
    pub fingerprints: Vec<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Resources.
    pub resources: Vec<String>,
    /// Display name.
    pub display_name: Option<String>,
    /// SSH public keys, normalised.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Enabled.
    pub enabled: bool,
    /// Where the peer is written when the config file defines it (`path:line`); such a
    /// peer is changed in that file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

impl From<&PeerEntry> for PeerView {
    fn from(p: &PeerEntry) -> Self {
        Self {
            id: p.peer_id.clone(),
            fingerprints: p.fingerprints.iter().map(|f| f.to_string()).collect(),
            scopes: p.scopes.clone(),
            resources: p.resources.clone(),
            display_name: p.display_name.clone(),
            ssh_keys: p.ssh_keys.clone(),
            enabled: p.enabled,
            config: None,
        }
    }
}

impl From<&FilePeer> for PeerView {
    fn from(p: &FilePeer) -> Self {
        Self {
            config: Some(p.origin.clone()),
            ..Self::from(&*p.entry)
        }
    }
}

/// A token as shown to operators (never the token itself, except once at creation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenView {
    /// Prefix naming the token.
    pub prefix: String,
    /// Owner.
    pub peer: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Note.
    pub description: String,
    /// Expiry, Unix seconds.
    pub expires_at: Option<u64>,
    /// The token, only in the answer to `token create`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

fn check_name(kind: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_NAME || s.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "{kind} `{s}` must be 1..={MAX_NAME} characters without spaces or control characters"
        ));
    }
    Ok(())
}

fn parse_fps(list: &[String]) -> Result<Vec<Fingerprint>, String> {
    list.iter()
        .map(|f| f.parse::<Fingerprint>().map_err(|e| format!("{f:?}: {e}")))
        .collect()
}

fn check_list(kind: &str, list: &[String]) -> Result<(), String> {
    if list.len() > MAX_ITEMS {
        return Err(format!("at most {MAX_ITEMS} {kind}s per peer"));
    }
    list.iter().try_for_each(|s| check_name(kind, s))
}

fn store_err(e: IdentityError, what: &str) -> String {
    match e {
        IdentityError::NotFound => format!("{what} not found"),
        other => other.to_string(),
    }
}

fn file_peer(store: &RedbStore, id: &str) -> Option<FilePeer> {
    store
        .file_peers()
        .iter()
        .find(|p| p.entry.peer_id == id)
        .cloned()
}

/// The refusal to change a peer of the config file, saying where it is and what to edit.
fn written_in_file(p: &FilePeer) -> String {
    format!(
        "peer `{}` is defined in {}, which the server only reads; edit it there (`enabled = false` refuses it, or change its `fingerprints` or `scopes`, or delete its [[peers]] table) and restart alknet (`systemctl restart alknet`)",
        p.entry.peer_id, p.origin
    )
}

/// A peer of the store, to change; a peer of the config file is refused with where to
/// change it instead.
fn get_peer(store: &RedbStore, id: &str) -> Result<PeerEntry, String> {
    if let Some(p) = file_peer(store, id) {
        return Err(written_in_file(&p));
    }
    store.peer(id).map(|p| (*p).clone()).ok_or_else(|| {
        format!(
            "peer `{id}` not found; `alknet peer list` shows the peers (those of a config file's [[peers]] only while the server runs)"
        )
    })
}

/// Which peer, of the store or the config file, already owns one of these keys, other than
/// `except`.
fn key_owner(
    store: &RedbStore,
    fps: &[Fingerprint],
    except: &str,
) -> Result<Option<String>, String> {
    let file = store.file_peers();
    for fp in fps {
        if let Some(p) = file
            .iter()
            .find(|p| p.entry.peer_id != except && p.entry.fingerprints.contains(fp))
        {
            return Ok(Some(format!("peer `{}` ({})", p.entry.peer_id, p.origin)));
        }
        if let Some(p) = store.by_fingerprint(fp).map_err(|e| e.to_string())?
            && p.peer_id != except
        {
            return Ok(Some(format!("peer `{}`", p.peer_id)));
        }
    }
    Ok(None)
}

fn json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// Runs one operation against the store and returns its answer as JSON.
pub fn execute(
    store: &RedbStore,
    op: &AdminOp,
    now_unix: u64,
) -> Result<serde_json::Value, String> {
    match op {
        AdminOp::PeerAdd {
            id,
            fingerprints,
            scopes,
            resources,
            display_name,
        } => {
            check_name("peer id", id)?;
            check_list("scope", scopes)?;
            check_list("resource", resources)?;
            if fingerprints.is_empty() || fingerprints.len() > MAX_ITEMS {
                return Err("give 1..=64 --fingerprint ed25519:… keys".into());
            }
            let fps = parse_fps(fingerprints)?;
            if let Some(p) = file_peer(store, id) {
                return Err(format!(
                    "peer `{id}` exists in {}; choose another id",
                    p.origin
                ));
            }
            if get_peer(store, id).is_ok() {
                return Err(format!(
                    "peer `{id}` exists; change it with `alknet peer update`"
                ));
            }
            if let Some(owner) = key_owner(store, &fps, id)? {
                return Err(format!(
                    "that key already belongs to {owner}; a key authenticates one peer: remove it from that peer first"
                ));
            }
            let peer = PeerEntry {
                peer_id: id.clone(),
                fingerprints: fps,
                auth_token_hash: None,
                scopes: scopes.clone(),
                resources: resources.clone(),
                display_name: display_name.clone(),
                ssh_keys: Vec::new(),
                enabled: true,
            };
            store.put_peer(peer.clone()).map_err(|e| e.to_string())?;
            Ok(json(&PeerView::from(&peer)))
        }
        AdminOp::PeerList => {
            let mut peers: Vec<PeerView> = store
                .list_peers()
                .map_err(|e| e.to_string())?
                .iter()
                .map(|p| PeerView::from(&**p))
                .chain(store.file_peers().iter().map(PeerView::from))
                .collect();
            peers.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(json(&peers))
        }
        AdminOp::PeerShow { id } => match file_peer(store, id) {
            Some(p) => Ok(json(&PeerView::from(&p))),
            None => Ok(json(&PeerView::from(&get_peer(store, id)?))),
        },
        AdminOp::PeerUpdate {
            id,
            add_fingerprints,
            remove_fingerprints,
            add_scopes,
            remove_scopes,
            add_ssh_keys,
            remove_ssh_keys,
            display_name,
        } => {
            let mut p = get_peer(store, id)?;
            let add_ssh = add_ssh_keys
                .iter()
                .map(|k| crate::identity::normalize_ssh_key(k))
                .collect::<Result<Vec<_>, _>>()?;
            let remove_ssh = remove_ssh_keys
                .iter()
                .map(|k| crate::identity::normalize_ssh_key(k))
                .collect::<Result<Vec<_>, _>>()?;
            let add = parse_fps(add_fingerprints)?;
            let remove = parse_fps(remove_fingerprints)?;
            if let Some(owner) = key_owner(store, &add, id)? {
                return Err(format!(
                    "that key already belongs to {owner}; a key authenticates one peer: remove it from that peer first"
                ));
            }
            check_list("scope", add_scopes)?;
            p.fingerprints.retain(|f| !remove.contains(f));
            for f in add {
                if !p.fingerprints.contains(&f) {
                    p.fingerprints.push(f);
                }
            }
            p.scopes.retain(|s| !remove_scopes.contains(s));
            for s in add_scopes {
                if !p.scopes.contains(s) {
                    p.scopes.push(s.clone());
                }
            }
            p.ssh_keys.retain(|k| !remove_ssh.contains(k));
            for k in add_ssh {
                if !p.ssh_keys.contains(&k) {
                    p.ssh_keys.push(k);
                }
            }
            if p.fingerprints.len() > MAX_ITEMS
                || p.scopes.len() > MAX_ITEMS
                || p.ssh_keys.len() > MAX_ITEMS
            {
                return Err(format!(
                    "at most {MAX_ITEMS} keys, SSH keys and scopes per peer"
                ));
            }
            if let Some(d) = display_name {
                p.display_name = Some(d.clone());
            }
            store.put_peer(p.clone()).map_err(|e| e.to_string())?;
            Ok(json(&PeerView::from(&p)))
        }
        AdminOp::PeerDisable { id } | AdminOp::PeerEnable { id } => {
            let mut p = get_peer(store, id)?;
            p.enabled = matches!(op, AdminOp::PeerEnable { .. });
            store.put_peer(p.clone()).map_err(|e| e.to_string())?;
            Ok(json(&PeerView::from(&p)))
        }
        AdminOp::PeerRevoke { id } => {
            if let Some(p) = file_peer(store, id) {
                return Err(written_in_file(&p));
            }
            let p = store
                .remove_peer(id)
                .map_err(|e| store_err(e, &format!("peer `{id}`")))?;
            Ok(json(&PeerView::from(&p)))
        }
        AdminOp::TokenCreate {
            peer,
            scopes,
            description,
            expires_at,
        } => {
            get_peer(store, peer)?;
            check_list("scope", scopes)?;
            if description.len() > 1024 {
                return Err("description is limited to 1024 bytes".into());
            }
            if expires_at.is_some_and(|t| t <= now_unix) {
                return Err("expiry is in the past".into());
            }
            let (token, prefix) = new_token();
            let entry = ApiKeyEntry {
                prefix: prefix.clone(),
                hash: token_hash(&token),
                peer_id: peer.clone(),
                scopes: scopes.clone(),
                description: description.clone(),
                expires_at: *expires_at,
            };
            store
                .apply(vec![Mutation::PutApiKey(entry)])
                .map_err(|e| e.to_string())?;
            Ok(json(&TokenView {
                prefix,
                peer: peer.clone(),
                scopes: scopes.clone(),
                description: description.clone(),
                expires_at: *expires_at,
                token: Some(token.to_string()),
            }))
        }
        AdminOp::TokenRevoke { prefix } => {
            store
                .apply(vec![Mutation::RemoveApiKey(prefix.clone())])
                .map_err(|e| store_err(e, &format!("token `{prefix}`")))?;
            Ok(serde_json::json!({ "revoked": prefix }))
        }
        AdminOp::TokenList => {
            let list: Vec<TokenView> = store
                .list_api_keys()
                .into_iter()
                .map(|k| TokenView {
                    prefix: k.prefix,
                    peer: k.peer_id,
                    scopes: k.scopes,
                    description: k.description,
                    expires_at: k.expires_at,
                    token: None,
                })
                .collect();
            Ok(json(&list))
        }
        AdminOp::InviteCreate {
            hash,
            scopes,
            name,
            uses,
            expires_at,
        } => {
            let hash: [u8; 32] = hex::decode(hash)
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or("the invite hash must be 64 hex digits")?;
            check_list("scope", scopes)?;
            if scopes.is_empty() {
                return Err("an invite needs at least one --scope".into());
            }
            if let Some(n) = name
                && !crate::ops::join::valid_id(n)
            {
                return Err(format!(
                    "--name `{n}` must be 1..=64 letters, digits, `-`, `_` or `.`"
                ));
            }
            if *uses == 0 || *uses > MAX_INVITE_USES {
                return Err(format!("--uses must be 1..={MAX_INVITE_USES}"));
            }
            if *expires_at <= now_unix {
                return Err("the invite's expiry is in the past".into());
            }
            let entry = InviteEntry {
                id: invite_id(&hash),
                hash,
                scopes: scopes.clone(),
                name: name.clone(),
                uses_left: *uses,
                uses: *uses,
                created_at: now_unix,
                expires_at: *expires_at,
                admitted: Vec::new(),
            };
            let mut batch: Vec<Mutation> = store
                .list_invites()
                .into_iter()
                .filter(|i| i.expires_at.saturating_add(INVITE_KEPT_AFTER_EXPIRY) < now_unix)
                .map(|i| Mutation::RemoveInvite(i.id))
                .collect();
            batch.push(Mutation::PutInvite(entry.clone()));
            store.apply(batch).map_err(|e| e.to_string())?;
            Ok(json(&InviteView::from(&entry)))
        }
        AdminOp::InviteList => {
            let list: Vec<InviteView> = store.list_invites().iter().map(InviteView::from).collect();
            Ok(json(&list))
        }
        AdminOp::InviteRevoke { id } => {
            store
                .apply(vec![Mutation::RemoveInvite(id.clone())])
                .map_err(|e| match e {
                    IdentityError::NotFound => {
                        format!("invite `{id}` not found; `alknet invite list` shows the invites")
                    }
                    other => other.to_string(),
                })?;
            Ok(serde_json::json!({ "revoked": id }))
        }
    }
}
