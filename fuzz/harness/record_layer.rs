// Records a fuzzer chooses, sealed with the client's real keys after a
// real in-memory handshake, opened by pop3sd's record layer read by read:
// no panic, plaintext within the record limit, and the layer still seals.
// Shared by the cargo-fuzz target and by the corpus regression test
// (server/tests/fuzz_corpus.rs), which runs every corpus file on stable.

#[allow(dead_code)]
pub fn run(data: &[u8]) {
    pop3sd::tls::record_layer::fuzzing::run(data);
}
