#![no_main]
//! See `portcullis_fuzz::websocket`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis_fuzz::websocket::run(data);
});
