#![no_main]
//! See `portcullis_fuzz::targets::tokens`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::targets::tokens(data));
