#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| alknet_vault::fuzzing::fuzz_mnemonic(data));
