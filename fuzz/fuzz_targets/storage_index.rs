//! The index and segment readers take any bytes without panicking, and what
//! they accept is consistent.
#![no_main]

include!("../harness/storage_index.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));
