//! Replays the committed perf fuzz corpus through the entry point cargo-fuzz uses.

#[test]
fn perf_request_corpus() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/perf_request");
    let n = alknet_proto::fuzzing::replay_corpus(&dir, alknet_perf::fuzzing::fuzz_perf_request)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(n >= 5);
}
