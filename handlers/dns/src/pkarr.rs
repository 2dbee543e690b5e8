//! pkarr: DNS records signed by an Ed25519 key and named by it (`<z32 key>.`), stored by
//! the gateway's relay (`GET`/`PUT /<z32>` through the HTTP service) and answered over DoQ.
//!
//! A packet is taken only after its signature verifies against the key in its name, and
//! only if it is newer than the one held (pkarr's timestamps, microseconds); it is kept in
//! `pkarr.redb` in the data directory (durable before the PUT is acknowledged) and checked
//! again when the file is read at start, so a damaged or forged row is dropped, never
//! served. The node's own packet (`alknet dns publish`) is signed with a key derived from
//! the vault at `m/74'/0'/2'/0'`.

use crate::zone::{NodeRecords, key_of};
use bytes::Bytes;
use hickory_proto::op::Message;
use hickory_proto::rr::{Name, Record, RecordType};
use pkarr::{Keypair, PublicKey, SignedPacket};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

/// The relay store's file in the data directory.
pub const STORE_FILE: &str = "pkarr.redb";

/// Largest relay payload: signature (64), timestamp (8) and a 1000-byte DNS packet.
pub const MAX_PAYLOAD: usize = 1072;

const PACKETS: TableDefinition<&str, &[u8]> = TableDefinition::new("pkarr_packets");

/// A verified packet.
#[derive(Debug)]
pub struct Stored {
    /// pkarr's timestamp (microseconds since the epoch).
    pub timestamp: u64,
    /// The relay payload (signature, timestamp, packet).
    pub payload: Bytes,
    /// Its records, decoded.
    pub records: Vec<Record>,
}

/// Why a packet was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// Not a z-base-32 key, not a valid signed packet, or a bad signature.
    #[error("{0}")]
    Invalid(String),
    /// Older than (or as old as, but different from) the packet held.
    #[error("a newer packet is held for this key")]
    NotNewer,
    /// The store holds its maximum of keys.
    #[error("the relay holds its maximum of {0} keys")]
    Full(usize),
    /// The file could not be written.
    #[error("storage: {0}")]
    Storage(String),
}

/// The key of a `<z32>` label: exactly 52 characters of z-base-32.
pub fn parse_key(z32: &str) -> Option<PublicKey> {
    let ok = z32.len() == 52
        && z32
            .bytes()
            .all(|b| b"ybndrfg8ejkmcpqxot1uwisza345h769".contains(&b));
    if !ok {
        return None;
    }
    z32.parse().ok()
}

/// Verifies `payload` as `z32`'s signed packet and decodes its records.
pub fn verify(z32: &str, payload: &[u8]) -> Result<Stored, PutError> {
    let key = parse_key(z32)
        .ok_or_else(|| PutError::Invalid("the name is not a 52-character z-base-32 key".into()))?;
    if payload.len() > MAX_PAYLOAD {
        return Err(PutError::Invalid(format!(
            "{} bytes; a signed packet is at most {MAX_PAYLOAD}",
            payload.len()
        )));
    }
    let payload = Bytes::copy_from_slice(payload);
    let packet = SignedPacket::from_relay_payload(&key, &payload)
        .map_err(|e| PutError::Invalid(format!("not a valid signed packet: {e}")))?;
    let message = Message::from_vec(&packet.encoded_packet())
        .map_err(|e| PutError::Invalid(format!("the packet does not decode: {e}")))?;
    let records = message.answers;
    Ok(Stored {
        timestamp: packet.timestamp().as_u64(),
        payload,
        records,
    })
}

impl Stored {
    /// The records at `qname` of `qtype` (a CNAME there answers any type).
    pub fn answer(&self, qname: &Name, qtype: RecordType) -> Vec<Record> {
        let key = key_of(qname);
        let at: Vec<&Record> = self
            .records
            .iter()
            .filter(|r| key_of(&r.name) == key)
            .collect();
        if let Some(c) = at.iter().find(|r| r.record_type() == RecordType::CNAME)
            && qtype != RecordType::CNAME
        {
            return vec![(*c).clone()];
        }
        at.into_iter()
            .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
            .cloned()
            .collect()
    }

    /// Whether any record is at `qname` (for NODATA against NXDOMAIN).
    pub fn has_name(&self, qname: &Name) -> bool {
        let key = key_of(qname);
        self.records.iter().any(|r| key_of(&r.name) == key)
    }
}

/// The relay's packets: in memory for answers, in redb for restarts.
pub struct PkarrStore {
    db: Option<Database>,
    /// Serialises writers, so the newer-than check and the write are one step.
    write: Mutex<()>,
    packets: RwLock<HashMap<String, Arc<Stored>>>,
    max: usize,
}

impl PkarrStore {
    /// A store that forgets on restart (tests, and nodes without a data directory).
    pub fn in_memory(max: usize) -> Self {
        Self {
            db: None,
            write: Mutex::new(()),
            packets: RwLock::new(HashMap::new()),
            max,
        }
    }

    /// Opens (creating) the store at `path`, verifying every packet in it again.
    pub fn open(path: &Path, max: usize) -> Result<Self, String> {
        let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let db = Database::create(path).map_err(|e| at(&e))?;
        let mut packets = HashMap::new();
        {
            let txn = db.begin_read().map_err(|e| at(&e))?;
            match txn.open_table(PACKETS) {
                Ok(t) => {
                    for row in t.iter().map_err(|e| at(&e))? {
                        let (k, v) = row.map_err(|e| at(&e))?;
                        match verify(k.value(), v.value()) {
                            Ok(s) => {
                                packets.insert(k.value().to_owned(), Arc::new(s));
                            }
                            Err(e) => tracing::warn!(
                                key = k.value(),
                                error = %e,
                                "pkarr store: a stored packet no longer verifies and is not served"
                            ),
                        }
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(at(&e)),
            }
        }
        Ok(Self {
            db: Some(db),
            write: Mutex::new(()),
            packets: RwLock::new(packets),
            max,
        })
    }

    /// The packet held for `z32`.
    pub fn get(&self, z32: &str) -> Option<Arc<Stored>> {
        self.packets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(z32)
            .cloned()
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.packets.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Verifies and keeps `payload` for `z32`; `Ok(false)` when it is the packet already
    /// held.
    pub fn put(&self, z32: &str, payload: &[u8]) -> Result<bool, PutError> {
        let stored = verify(z32, payload)?;
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        match self.get(z32) {
            Some(held) if held.payload == stored.payload => return Ok(false),
            Some(held) if held.timestamp >= stored.timestamp => return Err(PutError::NotNewer),
            Some(_) => {}
            None if self.len() >= self.max => return Err(PutError::Full(self.max)),
            None => {}
        }
        if let Some(db) = &self.db {
            let txn = db
                .begin_write()
                .map_err(|e| PutError::Storage(e.to_string()))?;
            {
                let mut t = txn
                    .open_table(PACKETS)
                    .map_err(|e| PutError::Storage(e.to_string()))?;
                t.insert(z32, stored.payload.as_ref())
                    .map_err(|e| PutError::Storage(e.to_string()))?;
            }
            txn.commit().map_err(|e| PutError::Storage(e.to_string()))?;
        }
        self.packets
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(z32.to_owned(), Arc::new(stored));
        Ok(true)
    }
}

/// A pkarr timestamp (microseconds) as an HTTP date, for `Last-Modified`.
pub fn http_date(timestamp: u64) -> String {
    pkarr::Timestamp::from(timestamp).format_http_date()
}

/// The node's pkarr key pair from its 32-byte seed.
pub fn keypair(seed: &[u8; 32]) -> Keypair {
    Keypair::from_secret_key(seed)
}

/// The node's own signed packet: `_alknet` TXT (`fp=…`) and SVCB (port, ALPNs) and, for
/// each of `addresses`, an A or AAAA at the key's apex.
pub fn node_packet(
    keypair: &Keypair,
    node: &NodeRecords,
    addresses: &[std::net::IpAddr],
) -> Result<SignedPacket, String> {
    use pkarr::dns::rdata::SVCB;
    use pkarr::dns::{CharacterString, Name as PName};
    let owner = PName::new("_alknet").map_err(|e| e.to_string())?;
    let fp = format!("fp={}", node.fingerprint);
    let txt = pkarr::dns::rdata::TXT::new()
        .with_string(&fp)
        .map_err(|e| e.to_string())?;
    let mut svcb = SVCB::new(1, PName::new(".").map_err(|e| e.to_string())?);
    let alpns: Vec<CharacterString<'_>> = node
        .alpns
        .iter()
        .filter_map(|a| CharacterString::new(a.as_bytes()).ok())
        .collect();
    if !alpns.is_empty() {
        svcb.set_alpn(&alpns);
    }
    svcb.set_port(node.port);
    let mut b = SignedPacket::builder()
        .txt(owner.clone(), txt, 300)
        .svcb(owner, svcb, 300);
    for a in addresses {
        b = b.address(PName::new(".").map_err(|e| e.to_string())?, *a, 300);
    }
    b.sign(keypair).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeRecords {
        NodeRecords {
            fingerprint: "ed25519:abc".into(),
            port: 4433,
            alpns: vec!["doq".into(), "h3".into()],
        }
    }

    #[test]
    fn a_signed_packet_is_taken_answered_and_kept_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let kp = keypair(&[7u8; 32]);
        let z32 = kp.public_key().to_z32();
        let packet = node_packet(&kp, &node(), &["192.0.2.5".parse().unwrap()]).unwrap();
        let payload = packet.to_relay_payload();
        let store = PkarrStore::open(&dir.path().join(STORE_FILE), 10).unwrap();
        assert!(store.put(&z32, &payload).unwrap());
        assert!(!store.put(&z32, &payload).unwrap(), "the same packet again");
        let held = store.get(&z32).unwrap();
        let apex = Name::from_ascii(format!("{z32}.")).unwrap();
        assert_eq!(held.answer(&apex, RecordType::A).len(), 1);
        let owner = Name::from_ascii(format!("_alknet.{z32}.")).unwrap();
        let txt = held.answer(&owner, RecordType::TXT);
        assert!(
            txt[0].data.to_string().contains("fp=ed25519:abc"),
            "{txt:?}"
        );
        assert_eq!(held.answer(&owner, RecordType::SVCB).len(), 1);
        drop(store);
        let again = PkarrStore::open(&dir.path().join(STORE_FILE), 10).unwrap();
        assert_eq!(again.get(&z32).unwrap().payload, payload);
    }

    #[test]
    fn forged_stale_and_misnamed_packets_are_refused() {
        let kp = keypair(&[7u8; 32]);
        let z32 = kp.public_key().to_z32();
        let store = PkarrStore::in_memory(1);
        let newest = node_packet(&kp, &node(), &["192.0.2.9".parse().unwrap()]).unwrap();
        // A packet of the same key stamped a second before it.
        let earlier = pkarr::Timestamp::from(newest.timestamp().as_u64() - 1_000_000);
        let newer = SignedPacket::builder()
            .txt(
                pkarr::dns::Name::new("_alknet").unwrap(),
                pkarr::dns::rdata::TXT::new().with_string("old").unwrap(),
                300,
            )
            .timestamp(earlier)
            .sign(&kp)
            .unwrap();
        store.put(&z32, &newest.to_relay_payload()).unwrap();
        assert!(matches!(
            store.put(&z32, &newer.to_relay_payload()),
            Err(PutError::NotNewer)
        ));
        // One flipped byte in the records: the signature no longer covers them.
        let mut forged = newest.to_relay_payload().to_vec();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(matches!(
            store.put(&z32, &forged),
            Err(PutError::Invalid(_))
        ));
        // A valid packet under someone else's name.
        let other = keypair(&[8u8; 32]).public_key().to_z32();
        assert!(matches!(
            store.put(&other, &newest.to_relay_payload()),
            Err(PutError::Invalid(_))
        ));
        assert!(matches!(
            store.put("not-a-key", b"x"),
            Err(PutError::Invalid(_))
        ));
        let third = keypair(&[9u8; 32]);
        let p = node_packet(&third, &node(), &[]).unwrap();
        assert!(matches!(
            store.put(&third.public_key().to_z32(), &p.to_relay_payload()),
            Err(PutError::Full(1))
        ));
        assert_eq!(store.len(), 1);
    }
}
