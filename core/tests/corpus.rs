//! Replays the committed fuzz corpora of core (config, endpoint, store_record, node_key,
//! known_servers) through the entry points cargo-fuzz uses.

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
        ssh_keys: Vec::new(),
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

#[test]
fn node_key_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/node_key");
    let n = alknet_proto::fuzzing::replay_corpus(&dir, alknet_core::fuzzing::fuzz_node_key)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(n >= 5);
    // The seeds reach both sides of the oracle: genuine keys load, other keys are refused.
    let load = |seed: &str| {
        let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::copy(dir.join(seed), data.path().join("node.key"))
            .unwrap_or_else(|e| panic!("{e}"));
        alknet_core::identity::tls::NodeKey::load_or_create(data.path()).map(|k| k.fingerprint())
    };
    let genuine = load("openssl-ed25519.pem").unwrap_or_else(|e| panic!("{e}"));
    for same in ["comment-before-key.pem", "crlf.pem", "two-keys.pem"] {
        assert_eq!(load(same).ok(), Some(genuine), "{same}");
    }
    for refused in [
        "p256-not-ed25519.pem",
        "x25519-not-ed25519.pem",
        "certificate-only.pem",
        "truncated.pem",
        "empty",
    ] {
        assert!(load(refused).is_err(), "{refused} loaded as a node key");
    }
}

#[test]
fn known_servers_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/known_servers");
    let n = alknet_proto::fuzzing::replay_corpus(&dir, alknet_core::fuzzing::fuzz_known_servers)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(n >= 5);
}
