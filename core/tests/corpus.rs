//! Replays the committed config fuzz corpus through the fuzz entry point.

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
