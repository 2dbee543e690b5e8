//! Replays the committed `call_session` fuzz corpus through the entry point cargo-fuzz uses.

use alknet_call::fuzzing::{fuzz_session, replay_corpus};
use std::path::Path;

#[test]
fn call_session_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/call_session");
    let n = replay_corpus(&dir, fuzz_session).unwrap_or_else(|e| panic!("{e}"));
    assert!(n >= 8, "only {n} seeds");
}

#[test]
fn fuzz_oracle_holds_on_edge_inputs() {
    fuzz_session(&[]);
    fuzz_session(&[0]);
    fuzz_session(&[0xff, 0xff]);
    fuzz_session(&[0xe0, 0, 0xc0, 3, 1, 2, 3]);
}
