#![no_main]
//! See `portcullis_fuzz::kcp`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::kcp::run(data));
