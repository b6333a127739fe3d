//! Arbitrary bytes into an LMTP session: no panic, valid deliveries only.
#![no_main]

include!("../harness/lmtp_session.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));
