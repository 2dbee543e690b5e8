#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| alknet_core::identity::store::fuzz_records(data));
