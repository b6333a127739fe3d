// Any line must parse to a command or a clean error, never panic.
// Shared by the cargo-fuzz target and by the corpus regression test
// (server/tests/fuzz_corpus.rs), which runs every corpus file on stable.

#[allow(dead_code)]
pub fn run(data: &[u8]) {
    let _ = pop3sd::engine::command::parse(data);
    let mut lines = pop3sd::engine::line::LineBuffer::default();
    lines.extend(data);
    while let Some(line) = lines.next_line(255) {
        if let pop3sd::engine::line::Line::Complete(l) = line {
            assert!(l.len() <= 255);
            let _ = pop3sd::engine::command::parse(l);
        }
    }
    assert!(lines.pending() <= data.len());
}
