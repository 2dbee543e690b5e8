//! Replays the committed fuzz corpora through the same entry points cargo-fuzz uses.

use alknet_proto::fuzzing::{fuzz_call, fuzz_fingerprint, fuzz_route, replay_corpus};
use std::path::Path;

fn corpus(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(name)
}

#[test]
fn route_corpus() {
    let n = replay_corpus(&corpus("route"), fuzz_route).unwrap_or_else(|e| panic!("{e}"));
    assert!(n >= 5);
}

#[test]
fn call_corpus() {
    let n = replay_corpus(&corpus("call"), fuzz_call).unwrap_or_else(|e| panic!("{e}"));
    assert!(n >= 8, "only {n} seeds");
}

#[test]
fn fingerprint_corpus() {
    let n =
        replay_corpus(&corpus("fingerprint"), fuzz_fingerprint).unwrap_or_else(|e| panic!("{e}"));
    assert!(n >= 5);
}

#[test]
fn real_certificate_seed_yields_its_key() {
    let der = std::fs::read(corpus("fingerprint").join("x509-ed25519-self-signed"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(alknet_proto::Fingerprint::from_certificate(&der).is_ok());
    let p256 = std::fs::read(corpus("fingerprint").join("x509-p256-not-ed25519"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        alknet_proto::Fingerprint::from_certificate(&p256),
        Err(alknet_proto::FingerprintError::NotEd25519)
    );
}

#[test]
fn route_seeds_hold_valid_cids() {
    // The seeds must exercise the decode path, not only the rejections.
    let codec = alknet_proto::CidCodec::new(*b"alknet-fuzz-key!", 3);
    let seed = std::fs::read(corpus("route").join("short-header-own-cid-shard1"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(codec.decode(&seed[1..13]).map(|f| f.shard), Some(1));
}

#[test]
fn join_corpus() {
    let n = replay_corpus(&corpus("join"), alknet_proto::fuzzing::fuzz_join)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(n >= 5, "only {n} seeds");
}

#[test]
fn tunnel_header_corpus() {
    let n = replay_corpus(
        &corpus("tunnel_header"),
        alknet_proto::fuzzing::fuzz_tunnel_header,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(n >= 8, "only {n} seeds");
}

#[test]
fn socks5_corpus() {
    let n = replay_corpus(&corpus("socks5"), alknet_proto::fuzzing::fuzz_socks5)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(n >= 8, "only {n} seeds");
}

#[test]
fn git_header_corpus() {
    let n = replay_corpus(
        &corpus("git_header"),
        alknet_proto::fuzzing::fuzz_git_header,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(n >= 8, "only {n} seeds");
}
