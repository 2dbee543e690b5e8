//! The identity and credential store on redb: peers, API keys and encrypted blobs.
//!
//! One writer thread owns every write transaction; each commit is durable (fsync) before the
//! caller hears back. Reads never touch the disk: after each commit the writer swaps in a
//! new in-memory index, so a handshake looking up a key takes a read lock for the time of a
//! pointer clone. A failed commit makes the store refuse writes until it is reopened; reads
//! go on from the last committed state.
//!
//! Records are JSON behind a 3-byte tag and an 8-byte SHA-256 prefix of the JSON, so a
//! flipped bit in a value is an error at open, never a silently different peer. The schema
//! version lives in the `meta` table; [`SCHEMA_VERSION`] and `migrate` are the upgrade path.

use crate::identity::{
    ApiKeyEntry, CredentialStore, EncryptedBlob, IdentityError, IdentityProvider, IdentityStore,
    KeyIndex, PeerEntry, hashes_equal, token_hash, token_prefix,
};
use alknet_proto::Fingerprint;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};

/// File name of the store inside the data directory.
pub const STORE_FILE: &str = "identity.redb";
/// Current schema version.
pub const SCHEMA_VERSION: u64 = 2;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers");
const API_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_keys");
const CREDENTIALS: TableDefinition<&str, &[u8]> = TableDefinition::new("credentials");
/// Invites (schema 2): id -> [`InviteRecord`].
const INVITES: TableDefinition<&str, &[u8]> = TableDefinition::new("invites");

const RECORD_TAG: &[u8; 3] = b"AK1";
/// Largest record accepted from the file.
const MAX_RECORD: usize = 1 << 20;

/// One change; a list of them commits atomically.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Add or replace a peer.
    PutPeer(PeerEntry),
    /// Remove a peer and its API keys.
    RemovePeer(String),
    /// Add or replace an API key.
    PutApiKey(ApiKeyEntry),
    /// Remove an API key by prefix.
    RemoveApiKey(String),
    /// Store an encrypted blob.
    PutCredential(String, EncryptedBlob),
    /// Delete an encrypted blob.
    DeleteCredential(String),
    /// Add or replace an invite.
    PutInvite(InviteEntry),
    /// Remove an invite by id.
    RemoveInvite(String),
    /// Spend one use of an invite and add the peer it admits, in one commit. Refused
    /// (nothing changes) when the invite is gone, used up or expired at `now_unix`, or when
    /// the peer id or one of its keys is taken: two joins racing on the last use of an
    /// invite cannot both win.
    RedeemInvite {
        /// The invite.
        id: String,
        /// The time of the redemption, Unix seconds.
        now_unix: u64,
        /// The new peer.
        peer: PeerEntry,
    },
}

// ---- invites -------------------------------------------------------------------------

/// An invite as stored: never the secret, only its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteEntry {
    /// Short id naming the invite in `alknet invite list|revoke`: the first 5 bytes of the
    /// secret's hash, in hex.
    pub id: String,
    /// SHA-256 of the secret.
    pub hash: [u8; 32],
    /// Scopes the admitted peers get.
    pub scopes: Vec<String>,
    /// Peer id proposed for the admitted peer (else the client's proposal).
    pub name: Option<String>,
    /// Uses left.
    pub uses_left: u32,
    /// Uses the invite was created with.
    pub uses: u32,
    /// Created, Unix seconds.
    pub created_at: u64,
    /// Expiry, Unix seconds: refused from this second on.
    pub expires_at: u64,
    /// Peers admitted so far.
    pub admitted: Vec<String>,
}

/// The id of the invite whose secret hashes to `hash`.
pub fn invite_id(hash: &[u8; 32]) -> String {
    hex::encode(hash.get(..5).unwrap_or_default())
}

#[derive(Serialize, Deserialize)]
struct InviteRecord {
    id: String,
    hash: String,
    scopes: Vec<String>,
    name: Option<String>,
    uses_left: u32,
    uses: u32,
    created_at: u64,
    expires_at: u64,
    #[serde(default)]
    admitted: Vec<String>,
}

impl InviteRecord {
    fn from_entry(i: &InviteEntry) -> Self {
        Self {
            id: i.id.clone(),
            hash: hex::encode(i.hash),
            scopes: i.scopes.clone(),
            name: i.name.clone(),
            uses_left: i.uses_left,
            uses: i.uses,
            created_at: i.created_at,
            expires_at: i.expires_at,
            admitted: i.admitted.clone(),
        }
    }

    fn into_entry(self) -> Result<InviteEntry, IdentityError> {
        let hash = hex32(&self.hash)?;
        if invite_id(&hash) != self.id {
            return Err(ser("invite id does not match its hash"));
        }
        Ok(InviteEntry {
            id: self.id,
            hash,
            scopes: self.scopes,
            name: self.name,
            uses_left: self.uses_left,
            uses: self.uses,
            created_at: self.created_at,
            expires_at: self.expires_at,
            admitted: self.admitted,
        })
    }
}

impl Model {
    /// Checks and applies one redemption (see [`Mutation::RedeemInvite`]).
    fn redeem(&mut self, id: &str, now_unix: u64, peer: &PeerEntry) -> Result<(), IdentityError> {
        let invite = self.invites.get_mut(id).ok_or(IdentityError::NotFound)?;
        if invite.uses_left == 0 || invite.expires_at <= now_unix {
            return Err(IdentityError::NotFound);
        }
        if self.peers.contains_key(&peer.peer_id)
            || self
                .peers
                .values()
                .any(|p| p.fingerprints.iter().any(|f| peer.fingerprints.contains(f)))
        {
            return Err(IdentityError::Backend(format!(
                "peer `{}` or its key already exists",
                peer.peer_id
            )));
        }
        invite.uses_left -= 1;
        invite.admitted.push(peer.peer_id.clone());
        self.peers
            .insert(peer.peer_id.clone(), Arc::new(peer.clone()));
        Ok(())
    }
}

impl RedbStore {
    /// The invites, in id order.
    pub fn list_invites(&self) -> Vec<InviteEntry> {
        self.snap().model.invites.values().cloned().collect()
    }

    /// The invite whose secret hashes to `hash`, compared in constant time.
    pub fn invite_by_hash(&self, hash: &[u8; 32]) -> Option<InviteEntry> {
        let snap = self.snap();
        let invite = snap.model.invites.get(&invite_id(hash))?;
        hashes_equal(&invite.hash, hash).then(|| invite.clone())
    }
}

// ---- end of invites ------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct PeerRecord {
    peer_id: String,
    fingerprints: Vec<String>,
    #[serde(default)]
    auth_token_hash: Option<String>,
    scopes: Vec<String>,
    resources: Vec<String>,
    display_name: Option<String>,
    /// Absent in records written before SSH keys existed.
    #[serde(default)]
    ssh_keys: Vec<String>,
    enabled: bool,
}

#[derive(Serialize, Deserialize)]
struct ApiKeyRecord {
    prefix: String,
    hash: String,
    peer_id: String,
    scopes: Vec<String>,
    description: String,
    expires_at: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct BlobRecord {
    #[serde(default)]
    name: String,
    key_version: u32,
    salt: String,
    iv: String,
    data: String,
}

fn ser(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Serialization(e.to_string())
}

fn hex32(s: &str) -> Result<[u8; 32], IdentityError> {
    let v = hex::decode(s).map_err(ser)?;
    v.try_into().map_err(|_| ser("hash is not 32 bytes"))
}

impl PeerRecord {
    fn from_entry(p: &PeerEntry) -> Self {
        Self {
            peer_id: p.peer_id.clone(),
            fingerprints: p.fingerprints.iter().map(|f| f.to_string()).collect(),
            auth_token_hash: p.auth_token_hash.map(hex::encode),
            scopes: p.scopes.clone(),
            resources: p.resources.clone(),
            display_name: p.display_name.clone(),
            ssh_keys: p.ssh_keys.clone(),
            enabled: p.enabled,
        }
    }

    fn into_entry(self) -> Result<PeerEntry, IdentityError> {
        let fingerprints = self
            .fingerprints
            .iter()
            .map(|f| f.parse::<Fingerprint>().map_err(ser))
            .collect::<Result<_, _>>()?;
        Ok(PeerEntry {
            peer_id: self.peer_id,
            fingerprints,
            auth_token_hash: self.auth_token_hash.as_deref().map(hex32).transpose()?,
            scopes: self.scopes,
            resources: self.resources,
            display_name: self.display_name,
            ssh_keys: self.ssh_keys,
            enabled: self.enabled,
        })
    }
}

impl ApiKeyRecord {
    fn from_entry(k: &ApiKeyEntry) -> Self {
        Self {
            prefix: k.prefix.clone(),
            hash: hex::encode(k.hash),
            peer_id: k.peer_id.clone(),
            scopes: k.scopes.clone(),
            description: k.description.clone(),
            expires_at: k.expires_at,
        }
    }

    fn into_entry(self) -> Result<ApiKeyEntry, IdentityError> {
        Ok(ApiKeyEntry {
            hash: hex32(&self.hash)?,
            prefix: self.prefix,
            peer_id: self.peer_id,
            scopes: self.scopes,
            description: self.description,
            expires_at: self.expires_at,
        })
    }
}

impl BlobRecord {
    fn from_blob(name: &str, b: &EncryptedBlob) -> Self {
        Self {
            name: name.to_owned(),
            key_version: b.key_version,
            salt: hex::encode(&b.salt),
            iv: hex::encode(&b.iv),
            data: hex::encode(&b.data),
        }
    }

    fn into_blob(self) -> Result<(String, EncryptedBlob), IdentityError> {
        Ok((
            self.name,
            EncryptedBlob {
                key_version: self.key_version,
                salt: hex::decode(self.salt).map_err(ser)?,
                iv: hex::decode(self.iv).map_err(ser)?,
                data: hex::decode(self.data).map_err(ser)?,
            },
        ))
    }
}

/// Encodes a record: tag, checksum, JSON.
fn encode_record<T: Serialize>(value: &T) -> Result<Vec<u8>, IdentityError> {
    let json = serde_json::to_vec(value).map_err(ser)?;
    let sum = ring::digest::digest(&ring::digest::SHA256, &json);
    let mut out = Vec::with_capacity(11 + json.len());
    out.extend_from_slice(RECORD_TAG);
    out.extend_from_slice(sum.as_ref().get(..8).unwrap_or_default());
    out.extend_from_slice(&json);
    Ok(out)
}

/// Decodes a record, checking its tag and checksum before parsing.
pub fn decode_record<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, IdentityError> {
    if bytes.len() > MAX_RECORD {
        return Err(ser(format!("record of {} bytes is too large", bytes.len())));
    }
    let rest = bytes
        .strip_prefix(&RECORD_TAG[..])
        .ok_or_else(|| ser("record has an unknown tag"))?;
    let (sum, json) = rest
        .split_at_checked(8)
        .ok_or_else(|| ser("record is truncated"))?;
    let want = ring::digest::digest(&ring::digest::SHA256, json);
    if want.as_ref().get(..8) != Some(sum) {
        return Err(ser("record fails its checksum"));
    }
    serde_json::from_slice(json).map_err(ser)
}

/// Everything the store holds, as the readers see it.
#[derive(Default, Clone)]
struct Model {
    peers: BTreeMap<String, Arc<PeerEntry>>,
    api_keys: BTreeMap<String, ApiKeyEntry>,
    credentials: BTreeMap<String, EncryptedBlob>,
    invites: BTreeMap<String, InviteEntry>,
}

#[derive(Default)]
struct Snapshot {
    model: Model,
    keys: KeyIndex,
}

impl Snapshot {
    fn new(model: Model) -> Self {
        let keys = KeyIndex::build(model.peers.values());
        Self { model, keys }
    }
}

impl Model {
    fn apply(&mut self, m: &Mutation) -> Result<(), IdentityError> {
        match m {
            Mutation::PutPeer(p) => {
                self.peers.insert(p.peer_id.clone(), Arc::new(p.clone()));
            }
            Mutation::RemovePeer(id) => {
                self.peers.remove(id).ok_or(IdentityError::NotFound)?;
                self.api_keys.retain(|_, k| &k.peer_id != id);
            }
            Mutation::PutApiKey(k) => {
                if !self.peers.contains_key(&k.peer_id) {
                    return Err(IdentityError::NotFound);
                }
                self.api_keys.insert(k.prefix.clone(), k.clone());
            }
            Mutation::RemoveApiKey(prefix) => {
                self.api_keys
                    .remove(prefix)
                    .ok_or(IdentityError::NotFound)?;
            }
            Mutation::PutCredential(name, blob) => {
                self.credentials.insert(name.clone(), blob.clone());
            }
            Mutation::DeleteCredential(name) => {
                self.credentials
                    .remove(name)
                    .ok_or(IdentityError::NotFound)?;
            }
            Mutation::PutInvite(i) => {
                self.invites.insert(i.id.clone(), i.clone());
            }
            Mutation::RemoveInvite(id) => {
                self.invites.remove(id).ok_or(IdentityError::NotFound)?;
            }
            Mutation::RedeemInvite { id, now_unix, peer } => self.redeem(id, *now_unix, peer)?,
        }
        Ok(())
    }
}

type Reply = mpsc::Sender<Result<(), IdentityError>>;
type WriteRequest = (Vec<Mutation>, Reply);

/// The redb-backed store.
pub struct RedbStore {
    path: PathBuf,
    db: Arc<Database>,
    commit_latency: Arc<crate::ops::stats::Histogram>,
    writer: Mutex<Option<mpsc::Sender<WriteRequest>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    read_only: Arc<AtomicBool>,
    shared: Arc<RwLock<Arc<Snapshot>>>,
    file_peers: RwLock<Arc<[FilePeer]>>,
}

/// A peer of the config file's `[[peers]]`, which a server tells its store about so that
/// `alknet peer` can list and show it, refuse to give its keys to another peer, and send
/// the operator to the file to change it. Never written to the store.
#[derive(Clone, Debug)]
pub struct FilePeer {
    /// The peer as the file defines it.
    pub entry: Arc<PeerEntry>,
    /// Where: `path:line` of its `id`.
    pub origin: String,
}

fn backend(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Backend(e.to_string())
}

/// Runs `f`, turning a panic inside redb (possible on a damaged file) into an error.
fn guarded<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, IdentityError>,
) -> Result<T, IdentityError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(IdentityError::Backend(format!(
            "{what} failed on a damaged store file"
        ))),
    }
}

fn load_table<T, U>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
    name: &str,
    convert: impl Fn(T) -> Result<U, IdentityError>,
    mut put: impl FnMut(String, U) -> Result<(), IdentityError>,
) -> Result<(), IdentityError>
where
    T: for<'de> Deserialize<'de>,
{
    let t = match txn.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(backend(e)),
    };
    for row in t.iter().map_err(backend)? {
        let (k, v) = row.map_err(backend)?;
        let key = k.value().to_owned();
        let rec: T =
            decode_record(v.value()).map_err(|e| ser(format!("{name} record `{key}`: {e}")))?;
        put(key, convert(rec)?)?;
    }
    Ok(())
}

impl RedbStore {
    /// Opens (creating if needed) the store at `path`. A damaged file, a record failing its
    /// checksum or a schema from a newer version is an error naming the file.
    pub fn open(path: &Path) -> Result<Self, IdentityError> {
        let label = |e: IdentityError| match e {
            IdentityError::Backend(m)
                if m.contains("another process") || m.contains("newer than") =>
            {
                IdentityError::Backend(format!("{}: {m}", path.display()))
            }
            IdentityError::Backend(m) => IdentityError::Backend(format!(
                "{}: {m}; restore it from a backup or move it away to start empty",
                path.display()
            )),
            IdentityError::Serialization(m) => IdentityError::Serialization(format!(
                "{}: {m}; restore it from a backup or move it away to start empty",
                path.display()
            )),
            other => other,
        };
        let (db, model) = guarded("opening the store", || {
            // A new store is made under a temporary name and moved into place once its
            // schema is committed: a crash while redb writes its first header must not leave
            // a file that is not a database at the store's name. 0600 whatever the umask,
            // before redb opens it by path.
            let fresh = matches!(
                std::fs::symlink_metadata(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound
            );
            let creating = if fresh {
                let dir = path.parent().unwrap_or(Path::new("."));
                let (tmp, f) = crate::fsutil::create_temp(dir, STORE_FILE).map_err(backend)?;
                drop(f);
                Some(tmp)
            } else {
                drop(crate::fsutil::create_private(path).map_err(backend)?);
                None
            };
            let result = open_db(creating.as_deref().unwrap_or(path));
            match (&creating, &result) {
                (Some(tmp), Ok(_)) => crate::fsutil::publish_temp(tmp, path).map_err(backend)?,
                (Some(tmp), Err(_)) => drop(std::fs::remove_file(tmp)),
                (None, _) => {}
            }
            let db = Arc::new(result?);
            let mut model = Model::default();
            let txn = db.begin_read().map_err(backend)?;
            load_table(
                &txn,
                PEERS,
                "peer",
                PeerRecord::into_entry,
                |k, p: PeerEntry| {
                    if k != p.peer_id || k.is_empty() {
                        return Err(ser(format!("peer record `{k}` holds peer `{}`", p.peer_id)));
                    }
                    model.peers.insert(k, Arc::new(p));
                    Ok(())
                },
            )?;
            load_table(
                &txn,
                API_KEYS,
                "api key",
                ApiKeyRecord::into_entry,
                |k, a| {
                    if k != a.prefix {
                        return Err(ser(format!(
                            "api key record `{k}` holds key `{}`",
                            a.prefix
                        )));
                    }
                    model.api_keys.insert(k, a);
                    Ok(())
                },
            )?;
            load_table(
                &txn,
                CREDENTIALS,
                "credential",
                BlobRecord::into_blob,
                |k, (name, b)| {
                    if k != name {
                        return Err(ser(format!("credential record `{k}` holds `{name}`")));
                    }
                    model.credentials.insert(k, b);
                    Ok(())
                },
            )?;
            load_table(
                &txn,
                INVITES,
                "invite",
                InviteRecord::into_entry,
                |k, i: InviteEntry| {
                    if k != i.id {
                        return Err(ser(format!("invite record `{k}` holds invite `{}`", i.id)));
                    }
                    model.invites.insert(k, i);
                    Ok(())
                },
            )?;
            Ok((db, model))
        })
        .map_err(label)?;

        let shared = Arc::new(RwLock::new(Arc::new(Snapshot::new(model.clone()))));
        let read_only = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<(Vec<Mutation>, Reply)>();
        let w_shared = shared.clone();
        let w_ro = read_only.clone();
        let commit_latency = Arc::new(crate::ops::stats::Histogram::default());
        let w_db = db.clone();
        let w_latency = commit_latency.clone();
        let thread = std::thread::Builder::new()
            .name("alknet-store".into())
            .spawn(move || writer(w_db, model, rx, w_shared, w_ro, w_latency))
            .map_err(backend)?;
        Ok(Self {
            path: path.to_owned(),
            db,
            commit_latency,
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            read_only,
            shared,
            file_peers: RwLock::new(Arc::from(Vec::new())),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn snap(&self) -> Arc<Snapshot> {
        match self.shared.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Whether a failed commit has made the store refuse writes.
    pub fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::Acquire)
    }

    /// Commits `mutations` atomically and durably; returns once the commit is on disk.
    pub fn apply(&self, mutations: Vec<Mutation>) -> Result<(), IdentityError> {
        if self.is_read_only() {
            return Err(IdentityError::Backend(
                "the store refuses writes after a failed commit; restart alknet to reopen it"
                    .into(),
            ));
        }
        let (tx, rx) = mpsc::channel();
        {
            let w = match self.writer.lock() {
                Ok(w) => w,
                Err(p) => p.into_inner(),
            };
            w.as_ref()
                .ok_or_else(|| backend("store is closed"))?
                .send((mutations, tx))
                .map_err(|_| backend("store writer stopped"))?;
        }
        rx.recv().map_err(|_| backend("store writer stopped"))?
    }

    /// Every API key, by prefix.
    pub fn list_api_keys(&self) -> Vec<ApiKeyEntry> {
        self.snap().model.api_keys.values().cloned().collect()
    }

    /// Every peer id with a credential name list (names only).
    pub fn credential_names(&self) -> Vec<String> {
        self.snap().model.credentials.keys().cloned().collect()
    }

    /// One peer by id.
    pub fn peer(&self, peer_id: &str) -> Option<Arc<PeerEntry>> {
        self.snap().model.peers.get(peer_id).cloned()
    }

    /// Number of peers.
    pub fn peer_count(&self) -> usize {
        self.snap().model.peers.len()
    }

    /// Tells the store which peers the config file defines, after checking that no key
    /// authenticates two peers across the file and the store (nor within the store). The
    /// error names both peers and where each is written, and how to fix it.
    pub fn set_file_peers(&self, peers: Vec<FilePeer>) -> Result<(), IdentityError> {
        let store = self.path.display();
        let mut owners: BTreeMap<Fingerprint, String> = BTreeMap::new();
        for p in &peers {
            for f in &p.entry.fingerprints {
                owners
                    .entry(*f)
                    .or_insert_with(|| format!("peer `{}` ({})", p.entry.peer_id, p.origin));
            }
        }
        for p in self.snap().model.peers.values() {
            if let Some(f) = peers.iter().find(|f| f.entry.peer_id == p.peer_id) {
                return Err(IdentityError::DuplicateKey(format!(
                    "peer id `{}` is defined in {} and in the identity store {store}; rename one of them",
                    p.peer_id, f.origin
                )));
            }
            let here = format!("peer `{}` (identity store {store})", p.peer_id);
            for f in &p.fingerprints {
                if let Some(other) = owners.get(f) {
                    return Err(IdentityError::DuplicateKey(format!(
                        "key {f} authenticates {other} and {here}; a key authenticates one peer: remove it from one of them (`alknet peer update {} --remove-fingerprint {f}` with the server stopped, or edit the file)",
                        p.peer_id
                    )));
                }
            }
            for f in &p.fingerprints {
                owners.insert(*f, here.clone());
            }
        }
        let mut guard = match self.file_peers.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *guard = Arc::from(peers);
        Ok(())
    }

    /// How long commits take (each one an fsync), for the metrics.
    pub fn commit_latency(&self) -> crate::ops::stats::HistogramSnapshot {
        self.commit_latency.snapshot()
    }

    /// Writes a consistent copy of every table to `dest` (a new file, mode 0600, moved into
    /// place once complete) while the store stays open for reads and writes: the copy is
    /// one read transaction, so it holds exactly the commits acknowledged before it began.
    pub fn backup(&self, dest: &Path) -> Result<StoreSummary, IdentityError> {
        guarded("a backup", || backup_database(&self.db, dest))
    }

    /// The config file's peers, as the server gave them.
    pub fn file_peers(&self) -> Arc<[FilePeer]> {
        match self.file_peers.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

impl Drop for RedbStore {
    /// Stops the writer and waits until it has closed the file, so the store can be opened
    /// again (by this process or another) as soon as this returns.
    fn drop(&mut self) {
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
        if let Ok(mut t) = self.thread.lock()
            && let Some(t) = t.take()
        {
            let _ = t.join();
        }
    }
}

/// Opens (or creates) the redb file at `path` and brings its schema to this version.
fn open_db(path: &Path) -> Result<Database, IdentityError> {
    let db = Database::create(path).map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => IdentityError::Backend(
                    "the store is open in another process (a running server?); use the control socket or stop it"
                        .into(),
                ),
                other => backend(other),
            })?;
    let version = {
        let txn = db.begin_read().map_err(backend)?;
        match txn.open_table(META) {
            Ok(t) => t.get("schema_version").map_err(backend)?.map(|v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(backend(e)),
        }
    };
    match version {
        None => {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut meta = txn.open_table(META).map_err(backend)?;
                meta.insert("schema_version", SCHEMA_VERSION)
                    .map_err(backend)?;
                txn.open_table(PEERS).map_err(backend)?;
                txn.open_table(API_KEYS).map_err(backend)?;
                txn.open_table(CREDENTIALS).map_err(backend)?;
                txn.open_table(INVITES).map_err(backend)?;
            }
            txn.commit().map_err(backend)?;
        }
        Some(v) if v > SCHEMA_VERSION => {
            return Err(IdentityError::Backend(format!(
                "schema version {v} is newer than this Alknet ({SCHEMA_VERSION}); upgrade Alknet"
            )));
        }
        Some(v) => migrate(&db, v)?,
    }
    Ok(db)
}

/// Upgrades an older schema in place, one version per step, each step in its own commit.
/// Version 1 is the first; later versions add arms here.
fn migrate(db: &Database, from: u64) -> Result<(), IdentityError> {
    let mut version = from;
    while version < SCHEMA_VERSION {
        let txn = db.begin_write().map_err(backend)?;
        {
            match version {
                // 1 -> 2: the invites table.
                1 => drop(txn.open_table(INVITES).map_err(backend)?),
                other => {
                    return Err(IdentityError::Backend(format!(
                        "no migration from schema version {other}"
                    )));
                }
            }
            version += 1;
            txn.open_table(META)
                .map_err(backend)?
                .insert("schema_version", version)
                .map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        tracing::info!(version, "store schema upgraded");
    }
    Ok(())
}

fn writer(
    db: Arc<Database>,
    mut model: Model,
    rx: mpsc::Receiver<(Vec<Mutation>, Reply)>,
    shared: Arc<RwLock<Arc<Snapshot>>>,
    read_only: Arc<AtomicBool>,
    latency: Arc<crate::ops::stats::Histogram>,
) {
    while let Ok((mutations, reply)) = rx.recv() {
        if read_only.load(Ordering::Acquire) {
            let _ = reply.send(Err(backend(
                "the store refuses writes after a failed commit; restart alknet to reopen it",
            )));
            continue;
        }
        // Apply to a copy first: a mutation that makes no sense aborts the whole batch.
        let mut next = model.clone();
        if let Err(e) = mutations.iter().try_for_each(|m| next.apply(m)) {
            let _ = reply.send(Err(e));
            continue;
        }
        let started = std::time::Instant::now();
        let result = guarded("a store commit", || commit(&db, &mutations, &next));
        latency.observe(started.elapsed());
        match result {
            Ok(()) => {
                model = next;
                let snap = Arc::new(Snapshot::new(model.clone()));
                match shared.write() {
                    Ok(mut g) => *g = snap,
                    Err(p) => *p.into_inner() = snap,
                }
                let _ = reply.send(Ok(()));
            }
            Err(e) => {
                read_only.store(true, Ordering::Release);
                tracing::error!(error = %e, "store commit failed; refusing writes until restart");
                let _ = reply.send(Err(e));
            }
        }
    }
}

fn commit(db: &Database, mutations: &[Mutation], next: &Model) -> Result<(), IdentityError> {
    let txn = db.begin_write().map_err(backend)?;
    {
        let mut invites = txn.open_table(INVITES).map_err(backend)?;
        let mut peers = txn.open_table(PEERS).map_err(backend)?;
        let mut keys = txn.open_table(API_KEYS).map_err(backend)?;
        let mut creds = txn.open_table(CREDENTIALS).map_err(backend)?;
        for m in mutations {
            match m {
                Mutation::PutPeer(p) => {
                    let rec = encode_record(&PeerRecord::from_entry(p))?;
                    peers
                        .insert(p.peer_id.as_str(), rec.as_slice())
                        .map_err(backend)?;
                }
                Mutation::RemovePeer(id) => {
                    peers.remove(id.as_str()).map_err(backend)?;
                    let owned: Vec<String> = keys
                        .iter()
                        .map_err(backend)?
                        .filter_map(|row| {
                            let (k, v) = row.ok()?;
                            let rec: ApiKeyRecord = decode_record(v.value()).ok()?;
                            (&rec.peer_id == id).then(|| k.value().to_owned())
                        })
                        .collect();
                    for k in owned {
                        keys.remove(k.as_str()).map_err(backend)?;
                    }
                }
                Mutation::PutApiKey(k) => {
                    let rec = encode_record(&ApiKeyRecord::from_entry(k))?;
                    keys.insert(k.prefix.as_str(), rec.as_slice())
                        .map_err(backend)?;
                }
                Mutation::RemoveApiKey(prefix) => {
                    keys.remove(prefix.as_str()).map_err(backend)?;
                }
                Mutation::PutCredential(name, blob) => {
                    let rec = encode_record(&BlobRecord::from_blob(name, blob))?;
                    creds
                        .insert(name.as_str(), rec.as_slice())
                        .map_err(backend)?;
                }
                Mutation::DeleteCredential(name) => {
                    creds.remove(name.as_str()).map_err(backend)?;
                }
                Mutation::PutInvite(i) => {
                    let rec = encode_record(&InviteRecord::from_entry(i))?;
                    invites
                        .insert(i.id.as_str(), rec.as_slice())
                        .map_err(backend)?;
                }
                Mutation::RemoveInvite(id) => {
                    invites.remove(id.as_str()).map_err(backend)?;
                }
                Mutation::RedeemInvite { id, peer, .. } => {
                    // The model already checked and applied it: write what it now holds.
                    let invite = next
                        .invites
                        .get(id)
                        .ok_or_else(|| backend("a redeemed invite vanished"))?;
                    let rec = encode_record(&InviteRecord::from_entry(invite))?;
                    invites
                        .insert(id.as_str(), rec.as_slice())
                        .map_err(backend)?;
                    let rec = encode_record(&PeerRecord::from_entry(peer))?;
                    peers
                        .insert(peer.peer_id.as_str(), rec.as_slice())
                        .map_err(backend)?;
                }
            }
        }
    }
    txn.commit().map_err(backend)
}

impl IdentityProvider for RedbStore {
    fn by_fingerprint(&self, fp: &Fingerprint) -> Result<Option<Arc<PeerEntry>>, IdentityError> {
        Ok(self.snap().keys.by_key(fp))
    }

    fn by_token_hash(
        &self,
        token_sha256: &[u8; 32],
    ) -> Result<Option<Arc<PeerEntry>>, IdentityError> {
        Ok(self.snap().keys.by_token(token_sha256))
    }

    fn by_token(
        &self,
        token: &str,
        now_unix: u64,
    ) -> Result<Option<(Arc<PeerEntry>, ApiKeyEntry)>, IdentityError> {
        let Some(prefix) = token_prefix(token) else {
            return Ok(None);
        };
        let snap = self.snap();
        let Some(key) = snap.model.api_keys.get(prefix) else {
            return Ok(None);
        };
        if !hashes_equal(&key.hash, &token_hash(token)) {
            return Ok(None);
        }
        if key.expires_at.is_some_and(|t| t <= now_unix) {
            return Ok(None);
        }
        match snap.model.peers.get(&key.peer_id) {
            Some(p) if p.enabled => Ok(Some((p.clone(), key.clone()))),
            _ => Ok(None),
        }
    }
}

impl IdentityStore for RedbStore {
    fn put_peer(&self, peer: PeerEntry) -> Result<(), IdentityError> {
        self.apply(vec![Mutation::PutPeer(peer)])
    }

    fn remove_peer(&self, peer_id: &str) -> Result<PeerEntry, IdentityError> {
        let existing = self
            .peer(peer_id)
            .map(|p| (*p).clone())
            .ok_or(IdentityError::NotFound)?;
        self.apply(vec![Mutation::RemovePeer(peer_id.to_owned())])?;
        Ok(existing)
    }

    fn list_peers(&self) -> Result<Vec<Arc<PeerEntry>>, IdentityError> {
        Ok(self.snap().model.peers.values().cloned().collect())
    }
}

impl CredentialStore for RedbStore {
    fn get_credential(&self, name: &str) -> Result<Option<EncryptedBlob>, IdentityError> {
        Ok(self.snap().model.credentials.get(name).cloned())
    }

    fn put_credential(&self, name: &str, blob: EncryptedBlob) -> Result<(), IdentityError> {
        self.apply(vec![Mutation::PutCredential(name.to_owned(), blob)])
    }

    fn delete_credential(&self, name: &str) -> Result<(), IdentityError> {
        self.apply(vec![Mutation::DeleteCredential(name.to_owned())])
    }
}

/// The oracle behind [`crate::fuzzing::fuzz_store_record`], beside the private record types
/// it checks: arbitrary bytes as each kind of stored record; a record that decodes must
/// convert, re-encode and decode again to the same entry.
pub(crate) fn fuzz_records(data: &[u8]) {
    if let Ok(rec) = decode_record::<PeerRecord>(data)
        && let Ok(p) = rec.into_entry()
    {
        let again = encode_record(&PeerRecord::from_entry(&p))
            .and_then(|b| decode_record::<PeerRecord>(&b))
            .and_then(PeerRecord::into_entry);
        assert_eq!(again.as_ref(), Ok(&p));
    }
    if let Ok(rec) = decode_record::<ApiKeyRecord>(data)
        && let Ok(k) = rec.into_entry()
    {
        let again = encode_record(&ApiKeyRecord::from_entry(&k))
            .and_then(|b| decode_record::<ApiKeyRecord>(&b))
            .and_then(ApiKeyRecord::into_entry);
        assert_eq!(again.as_ref(), Ok(&k));
    }
    if let Ok(rec) = decode_record::<InviteRecord>(data)
        && let Ok(i) = rec.into_entry()
    {
        let again = encode_record(&InviteRecord::from_entry(&i))
            .and_then(|b| decode_record::<InviteRecord>(&b))
            .and_then(InviteRecord::into_entry);
        assert_eq!(again.as_ref(), Ok(&i));
    }
    if let Ok(rec) = decode_record::<BlobRecord>(data)
        && let Ok((name, b)) = rec.into_blob()
    {
        let again = encode_record(&BlobRecord::from_blob(&name, &b))
            .and_then(|x| decode_record::<BlobRecord>(&x))
            .and_then(BlobRecord::into_blob);
        assert_eq!(again.as_ref(), Ok(&(name, b)));
    }
}

/// Encodes a peer as stored, for seeding the fuzz corpus.
pub(crate) fn encode_peer_record(p: &PeerEntry) -> Vec<u8> {
    encode_record(&PeerRecord::from_entry(p)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn peer(id: &str, key: u8) -> PeerEntry {
        PeerEntry {
            peer_id: id.into(),
            fingerprints: vec![Fingerprint::from_key([key; 32])],
            auth_token_hash: None,
            scopes: vec!["echo".into()],
            resources: vec![],
            display_name: Some(format!("peer {id}")),
            ssh_keys: Vec::new(),
            enabled: true,
        }
    }

    #[test]
    fn round_trip_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        {
            let s = RedbStore::open(&path).unwrap();
            s.put_peer(peer("a", 1)).unwrap();
            s.put_peer(peer("b", 2)).unwrap();
            s.apply(vec![Mutation::PutCredential(
                "c".into(),
                EncryptedBlob {
                    key_version: 3,
                    salt: vec![1],
                    iv: vec![2; 12],
                    data: vec![9; 40],
                },
            )])
            .unwrap();
            s.remove_peer("b").unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.peer_count(), 1);
        let a = s
            .by_fingerprint(&Fingerprint::from_key([1; 32]))
            .unwrap()
            .unwrap();
        assert_eq!(*a, peer("a", 1));
        assert!(
            s.by_fingerprint(&Fingerprint::from_key([2; 32]))
                .unwrap()
                .is_none()
        );
        assert_eq!(
            s.get_credential("c").unwrap().map(|b| b.key_version),
            Some(3)
        );
    }

    #[test]
    fn a_failing_batch_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join(STORE_FILE)).unwrap();
        let r = s.apply(vec![
            Mutation::PutPeer(peer("a", 1)),
            Mutation::RemovePeer("missing".into()),
        ]);
        assert_eq!(r, Err(IdentityError::NotFound));
        assert_eq!(s.peer_count(), 0);
    }

    #[test]
    fn tokens_authenticate_until_expiry_or_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join(STORE_FILE)).unwrap();
        s.put_peer(peer("a", 1)).unwrap();
        let (token, prefix) = crate::identity::new_token();
        assert!(token.starts_with("alk_") && token.len() == 4 + 40);
        s.apply(vec![Mutation::PutApiKey(ApiKeyEntry {
            prefix: prefix.clone(),
            hash: token_hash(&token),
            peer_id: "a".into(),
            scopes: vec!["call".into()],
            description: "ci".into(),
            expires_at: Some(1000),
        })])
        .unwrap();
        assert!(s.by_token(&token, 999).unwrap().is_some());
        assert!(s.by_token(&token, 1000).unwrap().is_none(), "expired");
        let mut forged = token.to_string();
        forged.pop();
        forged.push(if token.ends_with('0') { '1' } else { '0' });
        assert!(s.by_token(&forged, 0).unwrap().is_none());
        s.remove_peer("a").unwrap();
        assert!(s.by_token(&token, 0).unwrap().is_none());
        assert!(s.list_api_keys().is_empty(), "keys go with their peer");
    }

    #[test]
    fn records_check_their_checksum() {
        let rec = encode_record(&PeerRecord::from_entry(&peer("a", 1))).unwrap();
        assert!(decode_record::<PeerRecord>(&rec).is_ok());
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x20;
            assert!(
                decode_record::<PeerRecord>(&bad).is_err(),
                "flip at {i} accepted"
            );
        }
        assert!(decode_record::<PeerRecord>(&rec[..rec.len() - 1]).is_err());
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        drop(RedbStore::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("schema_version", 99)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = RedbStore::open(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("newer than this Alknet"), "{err}");
    }

    fn invite(hash_byte: u8, uses: u32, expires_at: u64) -> InviteEntry {
        let hash = [hash_byte; 32];
        InviteEntry {
            id: invite_id(&hash),
            hash,
            scopes: vec!["*".into()],
            name: None,
            uses_left: uses,
            uses,
            created_at: 0,
            expires_at,
            admitted: vec![],
        }
    }

    fn redeem(id: &str, now: u64, p: PeerEntry) -> Mutation {
        Mutation::RedeemInvite {
            id: id.into(),
            now_unix: now,
            peer: p,
        }
    }

    #[test]
    fn a_schema_1_store_opens_and_gains_the_invites_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        {
            // A store exactly as schema 1 wrote it: no invites table.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("schema_version", 1)
                .unwrap();
            let rec = encode_record(&PeerRecord::from_entry(&peer("old", 1))).unwrap();
            txn.open_table(PEERS)
                .unwrap()
                .insert("old", rec.as_slice())
                .unwrap();
            txn.open_table(API_KEYS).unwrap();
            txn.open_table(CREDENTIALS).unwrap();
            txn.commit().unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.peer_count(), 1, "the old peer survives the upgrade");
        s.apply(vec![Mutation::PutInvite(invite(3, 1, 100))])
            .unwrap();
        drop(s);
        let db = Database::create(&path).unwrap();
        let v = db
            .begin_read()
            .unwrap()
            .open_table(META)
            .unwrap()
            .get("schema_version")
            .unwrap()
            .map(|v| v.value());
        assert_eq!(v, Some(SCHEMA_VERSION));
        drop(db);
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.list_invites().len(), 1);
    }

    #[test]
    fn invites_admit_their_uses_before_expiry_and_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        let s = RedbStore::open(&path).unwrap();
        let i = invite(9, 2, 100);
        s.apply(vec![Mutation::PutInvite(i.clone())]).unwrap();
        assert_eq!(s.invite_by_hash(&[9; 32]).map(|x| x.id), Some(i.id.clone()));
        assert!(s.invite_by_hash(&[8; 32]).is_none());
        assert_eq!(
            s.apply(vec![redeem(&i.id, 100, peer("late", 1))]),
            Err(IdentityError::NotFound),
            "expired at its expiry second"
        );
        s.apply(vec![redeem(&i.id, 99, peer("a", 1))]).unwrap();
        assert!(
            s.apply(vec![redeem(&i.id, 99, peer("a2", 1))]).is_err(),
            "a key joins once"
        );
        s.apply(vec![redeem(&i.id, 99, peer("b", 2))]).unwrap();
        assert_eq!(
            s.apply(vec![redeem(&i.id, 99, peer("c", 3))]),
            Err(IdentityError::NotFound),
            "used up"
        );
        drop(s);
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.peer_count(), 2);
        let left = s.list_invites();
        assert_eq!(
            left.first().map(|x| (x.uses_left, x.admitted.len())),
            Some((0, 2))
        );
        s.apply(vec![Mutation::RemoveInvite(i.id.clone())]).unwrap();
        assert!(s.list_invites().is_empty());
    }
}

/// What a store file holds: its schema version and the rows of each table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSummary {
    /// The `meta` table's schema version.
    pub schema_version: u64,
    /// Rows per table, by table name (`meta` included).
    pub tables: BTreeMap<String, u64>,
}

/// Copies every table of `db` as one read transaction into a new database at `dest`.
///
/// Tables are copied by name, whatever the set, so a table a later version adds is backed
/// up without a change here. Every table of the store maps a string to bytes, except
/// `meta` (string to integer); a table of another shape is an error naming it, never left
/// out silently.
fn backup_database(db: &Database, dest: &Path) -> Result<StoreSummary, IdentityError> {
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| STORE_FILE.to_owned());
    let (tmp, f) = crate::fsutil::create_temp(dir, &name).map_err(backend)?;
    drop(f);
    let result = (|| {
        let read = db.begin_read().map_err(backend)?;
        if read
            .list_multimap_tables()
            .map_err(backend)?
            .next()
            .is_some()
        {
            return Err(backend(
                "the store has a multimap table, which backup cannot copy",
            ));
        }
        let copy = Database::create(&tmp).map_err(backend)?;
        let txn = copy.begin_write().map_err(backend)?;
        let mut summary = StoreSummary {
            schema_version: 0,
            tables: BTreeMap::new(),
        };
        for handle in read.list_tables().map_err(backend)? {
            let table = redb::TableHandle::name(&handle).to_owned();
            let rows = copy_table(&read, &txn, &table)?;
            summary.tables.insert(table, rows);
        }
        {
            let meta = txn.open_table(META).map_err(backend)?;
            summary.schema_version = meta
                .get("schema_version")
                .map_err(backend)?
                .map(|v| v.value())
                .unwrap_or(0);
        }
        txn.commit().map_err(backend)?;
        drop(copy);
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(backend)?;
        crate::fsutil::publish_temp(&tmp, dest).map_err(backend)?;
        Ok(summary)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Copies one table by name; the number of rows copied.
fn copy_table(
    read: &redb::ReadTransaction,
    write: &redb::WriteTransaction,
    name: &str,
) -> Result<u64, IdentityError> {
    fn copy<K, V>(
        read: &redb::ReadTransaction,
        write: &redb::WriteTransaction,
        def: TableDefinition<K, V>,
    ) -> Result<u64, redb::TableError>
    where
        K: redb::Key + 'static,
        V: redb::Value + 'static,
        for<'a> K::SelfType<'a>: std::borrow::Borrow<K::SelfType<'a>>,
        for<'a> V::SelfType<'a>: std::borrow::Borrow<V::SelfType<'a>>,
    {
        let src = read.open_table(def)?;
        let mut dst = write.open_table(def)?;
        let mut n = 0;
        for row in src.iter().map_err(redb::TableError::Storage)? {
            let (k, v) = row.map_err(redb::TableError::Storage)?;
            dst.insert(k.value(), v.value())
                .map_err(redb::TableError::Storage)?;
            n += 1;
        }
        Ok(n)
    }
    match copy(read, write, TableDefinition::<&str, &[u8]>::new(name)) {
        Err(redb::TableError::TableTypeMismatch { .. }) => {
            copy(read, write, TableDefinition::<&str, u64>::new(name)).map_err(|e| {
                backend(format!(
                    "table `{name}` has a shape backup cannot copy: {e}"
                ))
            })
        }
        other => other.map_err(|e| backend(format!("table `{name}`: {e}"))),
    }
}

/// Opens a store file read-only (never creating or changing it) and counts its rows: the
/// check of a backup before and after it is restored.
pub fn inspect(path: &Path) -> Result<StoreSummary, IdentityError> {
    guarded("reading a store file", || {
        let db = Database::builder()
            .open_read_only(path)
            .map_err(|e| backend(format!("{}: {e}", path.display())))?;
        let read = db.begin_read().map_err(backend)?;
        let mut summary = StoreSummary {
            schema_version: 0,
            tables: BTreeMap::new(),
        };
        for handle in read.list_tables().map_err(backend)? {
            let name = redb::TableHandle::name(&handle).to_owned();
            let rows = match read.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
                Ok(t) => redb::ReadableTableMetadata::len(&t).map_err(backend)?,
                Err(redb::TableError::TableTypeMismatch { .. }) => {
                    let t = read
                        .open_table(TableDefinition::<&str, u64>::new(&name))
                        .map_err(backend)?;
                    redb::ReadableTableMetadata::len(&t).map_err(backend)?
                }
                Err(e) => return Err(backend(e)),
            };
            summary.tables.insert(name, rows);
        }
        summary.schema_version = match read.open_table(META) {
            Ok(t) => t
                .get("schema_version")
                .map_err(backend)?
                .map(|v| v.value())
                .unwrap_or(0),
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(backend(e)),
        };
        if summary.schema_version == 0 {
            return Err(backend(format!(
                "{} is not an Alknet store (no schema version)",
                path.display()
            )));
        }
        Ok(summary)
    })
}
