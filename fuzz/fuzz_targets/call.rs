#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| alknet_proto::call::fuzz_call(data));
