// Any bytes given to the PROXY protocol parser: no panic, and a header it
// accepts lies within the bytes it was given.
// Shared by the cargo-fuzz target and by the corpus regression test
// (server/tests/fuzz_corpus.rs), which runs every corpus file on stable.

#[allow(dead_code)]
pub fn run(data: &[u8]) {
    match pop3sd::proxy::parse(data) {
        Ok(pop3sd::proxy::Parse::Complete(h)) => {
            assert!(h.len <= data.len());
            assert!(h.len >= 15);
            // The same header followed by more bytes parses the same.
            let mut more = data[..h.len].to_vec();
            more.extend_from_slice(b"+OK trailing");
            assert_eq!(pop3sd::proxy::parse(&more), Ok(pop3sd::proxy::Parse::Complete(h)));
        }
        Ok(pop3sd::proxy::Parse::Incomplete) => assert!(data.len() < 16 + 1024),
        Err(_) => {}
    }
}
