//! The call engine's per-connection receiving side: frames across several streams.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    alknet_call::fuzzing::fuzz_session(data);
});
