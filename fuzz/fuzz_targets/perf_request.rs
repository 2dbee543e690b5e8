#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| alknet_perf::fuzzing::fuzz_perf_request(data));
