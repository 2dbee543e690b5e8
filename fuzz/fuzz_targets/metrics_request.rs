#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| alknet_core::fuzzing::fuzz_metrics_request(data));
