#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| alknet_proto::fuzzing::fuzz_git_header(data));
