//! Replays the committed `sftp` fuzz corpus through the entry point cargo-fuzz uses.

#[test]
fn sftp_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/sftp");
    let n = alknet_proto::fuzzing::replay_corpus(&dir, alknet_ssh::sftp::fuzzing::fuzz_sftp)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(n >= 30, "only {n} seeds");
}
