// Any message survives the trip to wire form and back.
// Shared by the cargo-fuzz target and by the corpus regression test
// (server/tests/fuzz_corpus.rs), which runs every corpus file on stable.
use pop3sd_storage::wire::{self, InputForm};

#[allow(dead_code)]
pub fn run(data: &[u8]) {
    let (w, s) = wire::encode(data, InputForm::Raw);
    let canonical = wire::canonical_crlf(data);
    assert_eq!(wire::decode(&w).unwrap(), canonical);
    assert_eq!(s.size as usize, canonical.len());
    let body = &w[..w.len() - 3];
    assert!(!body.windows(5).any(|x| x == b"\r\n.\r\n") && !body.starts_with(b".\r\n"));
    let (w2, _) = wire::encode(body, InputForm::Stuffed);
    assert_eq!(w2, w);
}
