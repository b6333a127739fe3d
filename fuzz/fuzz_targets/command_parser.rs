//! Any line must parse to a command or a clean error, never panic.
#![no_main]

include!("../harness/command_parser.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));
