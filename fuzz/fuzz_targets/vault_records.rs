#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| byok::fuzzing::fuzz_vault_records(data));
