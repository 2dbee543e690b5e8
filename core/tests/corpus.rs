//! Replays the committed config fuzz corpus through the fuzz entry point.

#[test]
fn config_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/config");
    let n = alknet_proto::fuzzing::replay_corpus(&dir, alknet_core::fuzzing::fuzz_config)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(n >= 5);
}
