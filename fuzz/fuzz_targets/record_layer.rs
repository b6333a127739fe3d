//! pop3sd's TLS record layer after a real handshake: any records, cut at
//! any byte, never panic.
#![no_main]

include!("../harness/record_layer.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));
