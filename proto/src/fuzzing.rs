//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the corpus replay tests.
//!
//! Each function takes arbitrary bytes, must never panic, and asserts an oracle where one
//! exists (a round trip, a bound on the output).

use crate::cid::{CID_LEN, CidCodec, Handover, Route, route_datagram, screen_handover};
use crate::fingerprint::Fingerprint;

/// Decodes arbitrary bytes as a stream of call frames and checks the oracles: no panic;
/// whatever decodes re-encodes and decodes to the same message; feeding the bytes in
/// arbitrary pieces yields the same results as one read; the buffer stays bounded.
pub fn fuzz_call(data: &[u8]) {
    crate::call::fuzz_call(data);
}

/// Routes arbitrary datagrams under a fixed codec and checks the router's contract.
pub fn fuzz_route(data: &[u8]) {
    let codec = CidCodec::new(*b"alknet-fuzz-key!", 3);
    let shards = usize::from(data.first().copied().unwrap_or(1) % 8) + 1;
    for local in 0..shards {
        match route_datagram(&codec, data, local, shards) {
            Route::Forward(s) => assert!(s < shards && s != local),
            Route::Local | Route::Drop => {}
        }
    }
    // What is handed to another shard is never an Initial under 1 200 bytes.
    if screen_handover(data, &[1]) == Handover::Forward
        && data.first().is_some_and(|b| b & 0xb0 == 0x80)
    {
        assert!(data.len() >= crate::cid::MIN_INITIAL_SIZE);
    }
    if let Some(cid) = data.get(..CID_LEN)
        && let Some(f) = codec.decode(cid)
    {
        let nonce = [cid[4], cid[5], cid[6], cid[7], cid[8], cid[9]];
        assert_eq!(codec.encode(f.shard, nonce)[..], cid[..]);
    }
}

/// Parses arbitrary bytes as a fingerprint string, an SPKI and a certificate.
pub fn fuzz_fingerprint(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(fp) = s.parse::<Fingerprint>()
    {
        assert_eq!(fp.to_string(), s, "fingerprint text is not canonical");
    }
    if let Ok(fp) = Fingerprint::from_peer_der(data) {
        let again = fp.to_string().parse::<Fingerprint>();
        assert_eq!(again, Ok(fp));
    }
}

/// Decodes arbitrary bytes as a join request, a join answer and an invite code, and checks
/// that whatever decodes round-trips.
pub fn fuzz_join(data: &[u8]) {
    crate::join::fuzz_join(data);
}

/// Feeds every file of a committed corpus directory to `target`; returns how many files
/// there were. Fails when the directory is missing or empty, so a corpus cannot silently
/// vanish from the test suite. (Test support: the only file access in this crate.)
pub fn replay_corpus(dir: &std::path::Path, target: fn(&[u8])) -> Result<usize, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut n = 0;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_file() {
            let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            target(&data);
            n += 1;
        }
    }
    if n == 0 {
        return Err(format!("corpus {} is empty", dir.display()));
    }
    Ok(n)
}

/// Decodes arbitrary bytes as each `alknet/tunnel` header (request, verdict, accepted) and
/// checks the round trip, the size bound and that prefixes are incomplete.
pub fn fuzz_tunnel_header(data: &[u8]) {
    crate::tunnel::fuzz_tunnel_header(data);
}

/// Decodes arbitrary bytes as each SOCKS5 message (greeting, request, reply) and checks the
/// round trip, the size bound and that every failure has a reply code.
pub fn fuzz_socks5(data: &[u8]) {
    crate::socks5::fuzz_socks5(data);
}

/// Decodes arbitrary bytes as an `alknet/git` request header and checks the round trip, the
/// size bound and that prefixes are incomplete.
pub fn fuzz_git_header(data: &[u8]) {
    crate::git::fuzz_git_header(data);
}
