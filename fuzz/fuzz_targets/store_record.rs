#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| alknet_core::store::fuzz_records(data));
