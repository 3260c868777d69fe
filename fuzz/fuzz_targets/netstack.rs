#![no_main]
//! See `portcullis_fuzz::netstack`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::netstack::run(data));
