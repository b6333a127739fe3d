//! Arbitrary client bytes, in arbitrary chunks, against a whole engine over
//! an in-memory mailbox: no panic, and memory stays bounded.
#![no_main]

include!("../harness/engine.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));
