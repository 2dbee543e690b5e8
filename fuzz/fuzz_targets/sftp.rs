#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| alknet_ssh::sftp::fuzzing::fuzz_sftp(data));
