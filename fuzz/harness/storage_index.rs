// The index and segment readers take any bytes without panicking, and what
// they accept is consistent.
// Shared by the cargo-fuzz target and by the corpus regression test
// (server/tests/fuzz_corpus.rs), which runs every corpus file on stable.
use pop3sd_storage::{index, segment};

#[allow(dead_code)]
pub fn run(data: &[u8]) {
    if let Ok(p) = index::parse(data) {
        assert!(p.valid_len as usize <= data.len());
        let mut prev = 0;
        for r in &p.records {
            assert!(r.uid > prev);
            prev = r.uid;
            assert!(r.wire_len >= 3 && r.body_offset <= r.wire_len - 3 && r.size <= r.wire_len);
            // Re-encoding a record read from bytes gives those bytes back.
            let again = pop3sd_storage::record::Record::decode(&r.encode()).unwrap();
            assert_eq!(&again, r);
        }
        assert!(p.next_uid() > prev);
        // A cut tail only ever moves the next uid forward, and not at all
        // when nothing is cut.
        assert!(p.next_uid_past_tail() >= p.next_uid());
        assert_eq!(p.len, data.len() as u64);
        if !p.torn_tail {
            assert_eq!(p.next_uid_past_tail(), p.next_uid());
        }
        let rewritten = index::encode(&p.header, &p.records);
        assert_eq!(index::parse(&rewritten).unwrap().records, p.records);
    }
    let _ = segment::check_header(data, 1);
}
