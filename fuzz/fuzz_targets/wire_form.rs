//! Any message survives the trip to wire form and back.
#![no_main]

include!("../harness/wire_form.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));
