#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| alknet_dns::fuzzing::fuzz_doq_stream(data));
