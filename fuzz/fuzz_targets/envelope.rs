#![no_main]
//! See `portcullis_fuzz::targets::envelope`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::targets::envelope(data));
