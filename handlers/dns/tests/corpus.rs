//! Replays the committed DNS fuzz corpora through the entry points cargo-fuzz uses.

fn replay(name: &str, f: fn(&[u8]), at_least: usize) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(name);
    let n = alknet_proto::fuzzing::replay_corpus(&dir, f).unwrap_or_else(|e| panic!("{e}"));
    assert!(n >= at_least, "{name}: {n} inputs");
}

#[test]
fn doq_stream_corpus() {
    replay("doq_stream", alknet_dns::fuzzing::fuzz_doq_stream, 8);
}

#[test]
fn pkarr_packet_corpus() {
    replay("pkarr_packet", alknet_dns::fuzzing::fuzz_pkarr_packet, 5);
}
