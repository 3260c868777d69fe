#![no_main]
//! See `portcullis_fuzz::xdp`. Needs root; exits at once with a message
//! without it.

use std::sync::Mutex;

use portcullis_fuzz::xdp::Xdp;

static XDP: Mutex<Option<Xdp>> = Mutex::new(None);

libfuzzer_sys::fuzz_target!(
    init: {
        *XDP.lock().unwrap() = Some(Xdp::init());
    },
    |data: &[u8]| {
        XDP.lock().unwrap().as_mut().expect("initialised").run(data)
    }
);
