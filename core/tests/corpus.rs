//! Replays the committed fuzz corpora of core (config, endpoint, store_record) through the
//! entry points cargo-fuzz uses.

#[test]
fn config_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/config");
    let n = alknet_proto::fuzzing::replay_corpus(&dir, alknet_core::fuzzing::fuzz_config)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(n >= 5);
}

#[test]
fn endpoint_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/endpoint");
    let n = alknet_proto::fuzzing::replay_corpus(&dir, alknet_core::fuzzing::fuzz_endpoint)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(n >= 5);
}

#[test]
fn endpoint_harness_detects_a_dead_connection() {
    // The oracle must be able to fail: a connection the server closes stops carrying data.
    let mut pair = alknet_core::fuzzing::EndpointPair::connected().expect("handshake");
    assert!(pair.client_sends(b"before"));
    pair.close_server();
    for _ in 0..10 {
        pair.step();
    }
    assert!(!pair.server_alive());
    assert!(!pair.client_sends(b"after"));
}

#[test]
fn store_record_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/store_record");
    // Keep a genuine record among the seeds, written by the real encoder.
    let peer = alknet_core::PeerEntry {
        peer_id: "seed".into(),
        fingerprints: vec![alknet_proto::Fingerprint::from_key([3; 32])],
        auth_token_hash: Some([4; 32]),
        scopes: vec!["echo".into()],
        resources: vec!["tcp:127.0.0.1:22".into()],
        display_name: Some("seed peer".into()),
        enabled: true,
    };
    let genuine = alknet_core::fuzzing::encode_peer_record(&peer);
    let path = dir.join("peer-genuine");
    if std::fs::read(&path).ok().as_deref() != Some(&genuine[..]) {
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&path, &genuine).unwrap_or_else(|e| panic!("{e}"));
    }
    let n = alknet_proto::fuzzing::replay_corpus(&dir, alknet_core::fuzzing::fuzz_store_record)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(n >= 4);
}
