//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the corpus replay test
//! (`tests/corpus.rs`): one `fuzz_<target>` per target, never a panic, an oracle asserted.

use crate::doq::parse_stream;
use crate::pkarr::{self, PkarrStore, PutError};
use crate::resolve::encode;
use hickory_proto::op::Message;

/// A whole DoQ client stream (length prefix, query, FIN) through the server's checks and
/// hickory's decoder. Oracles: what is accepted has ID 0 and re-encodes to a message that
/// decodes to the same questions; the answer the server would build encodes.
pub fn fuzz_doq_stream(data: &[u8]) {
    let Ok(m) = parse_stream(data) else {
        return;
    };
    assert_eq!(m.metadata.id, 0);
    // What the server accepted is within the framing's bounds.
    assert!(data.len() >= 2 + 12 && data.len() <= 2 + crate::resolve::MAX_QUERY);
    if let Ok(again) = m.to_vec() {
        match Message::from_vec(&again) {
            Ok(back) => assert_eq!(back.queries, m.queries),
            Err(e) => panic!("a re-encoded query does not decode: {e}"),
        }
    }
    let reply = crate::resolve::refused(&m);
    assert!(!encode(&reply).is_empty());
}

/// Arbitrary bytes as a pkarr relay PUT: the first 52 bytes the key's z-base-32 name, the
/// rest the payload. Oracles: nothing but a packet whose signature verifies under that
/// key is stored; a stored packet reads back byte for byte.
pub fn fuzz_pkarr_packet(data: &[u8]) {
    let (name, payload) = data.split_at(data.len().min(52));
    let Ok(name) = std::str::from_utf8(name) else {
        return;
    };
    let store = PkarrStore::in_memory(4);
    match store.put(name, payload) {
        Ok(_) => {
            let (Some(held), Some(key)) = (store.get(name), pkarr::parse_key(name)) else {
                panic!("a packet was taken but is not held under a valid key");
            };
            assert_eq!(held.payload.as_ref(), payload);
            assert!(::pkarr::SignedPacket::from_relay_payload(&key, &held.payload).is_ok());
        }
        Err(PutError::Invalid(_) | PutError::NotNewer | PutError::Full(_)) => {
            assert!(store.get(name).is_none());
        }
        Err(PutError::Storage(e)) => panic!("an in-memory store cannot fail to write: {e}"),
    }
}
