#![no_main]
//! See `portcullis_fuzz::targets::link_frame`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::targets::link_frame(data));
