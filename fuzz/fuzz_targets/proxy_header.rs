//! Any bytes given to the PROXY protocol parser: no panic, consistent results.
#![no_main]

include!("../harness/proxy_header.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));
