//! Property tests: any message bytes survive the trip to wire form and back.

use pop3sd_storage::wire::{self, InputForm, WireEncoder};
use pop3sd_storage::{Address, PreparedMessage, Store, StoreOptions};
use proptest::prelude::*;

/// Messages built from the pieces that break POP3 servers: dot lines, bare
/// LF and CR, NUL, 8-bit bytes, missing final newline, empty bodies.
fn message() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b".".to_vec()),
        Just(b"..".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n.\n".to_vec()),
        Just(b"\r\n.\r\n".to_vec()),
        Just(b"\0".to_vec()),
        Just(vec![0xff, 0x80, 0xc3]),
        Just(b"Subject: x".to_vec()),
        Just(b"\n\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

/// Checks that wire bytes are well-formed POP3 multi-line data.
fn assert_well_formed(w: &[u8]) {
    assert!(w.ends_with(b".\r\n"));
    let body = &w[..w.len() - 3];
    for line in body.split_inclusive(|&b| b == b'\n') {
        assert!(line.ends_with(b"\r\n"), "line {line:?} not CRLF");
        let content = &line[..line.len() - 2];
        assert!(!content.contains(&b'\r') && !content.contains(&b'\n'));
        assert!(content != b".", "bare dot line inside the message");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn round_trip(input in message()) {
        let (w, s) = wire::encode(&input, InputForm::Raw);
        assert_well_formed(&w);
        let canonical = wire::canonical_crlf(&input);
        prop_assert_eq!(wire::decode(&w).unwrap(), canonical.clone());
        prop_assert_eq!(s.size, canonical.len() as u64);
        prop_assert_eq!(s.wire_len, w.len() as u64);
        prop_assert!(s.body_offset <= s.wire_len - 3);
    }

    #[test]
    fn chunking_never_changes_output(input in message(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let (whole, ws) = wire::encode(&input, InputForm::Raw);
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        points.sort_unstable();
        let mut out = Vec::new();
        let mut e = WireEncoder::new(InputForm::Raw);
        let mut prev = 0;
        for p in points {
            e.push(&input[prev..p], &mut out);
            prev = p;
        }
        e.push(&input[prev..], &mut out);
        let s = e.finish(&mut out);
        prop_assert_eq!(out, whole);
        prop_assert_eq!(s, ws);
    }

    #[test]
    fn stuffed_input_reencodes_to_the_same_message(input in message()) {
        // What an SMTP client would send for `input`, then stored from that.
        let (w, s) = wire::encode(&input, InputForm::Raw);
        let smtp_data = &w[..w.len() - 3];
        let (w2, s2) = wire::encode(smtp_data, InputForm::Stuffed);
        prop_assert_eq!(&w2, &w);
        prop_assert_eq!(s2.size, s.size);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn through_a_maildrop(msgs in proptest::collection::vec(message(), 1..5)) {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path(), StoreOptions::default()).unwrap();
        let md = store.create_maildrop(&Address::parse("p@t.example").unwrap()).unwrap();
        for m in &msgs {
            md.append(PreparedMessage::from_raw(m)).unwrap();
        }
        let session = md.open_session().unwrap();
        for (i, m) in msgs.iter().enumerate() {
            let w = session.snapshot().wire(i).unwrap();
            prop_assert_eq!(wire::decode(w).unwrap(), wire::canonical_crlf(m));
            prop_assert_eq!(session.snapshot().message(i).unwrap().size(), wire::canonical_crlf(m).len() as u64);
        }
    }
}

#[test]
fn twenty_mebibytes_round_trip() {
    let mut m = Vec::with_capacity(21 << 20);
    m.extend_from_slice(b"Subject: big\n\n");
    let mut i = 0u64;
    while m.len() < 20 << 20 {
        match i % 5 {
            0 => m.extend_from_slice(b".leading dot\n"),
            1 => m.extend_from_slice(b".\r\n"),
            2 => m.extend_from_slice(b"bare cr\r"),
            3 => m.extend_from_slice(&[0, 0xff, b'\n']),
            _ => m.extend_from_slice(&[b'x'; 997]),
        }
        i += 1;
    }
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path(), StoreOptions::default()).unwrap();
    let md = store
        .create_maildrop(&Address::parse("big@t.example").unwrap())
        .unwrap();
    let receipt = md.append(PreparedMessage::from_raw(&m)).unwrap();
    let canonical = wire::canonical_crlf(&m);
    assert_eq!(receipt.size, canonical.len() as u64);
    let session = md.open_session().unwrap();
    let w = session.snapshot().wire(0).unwrap();
    assert_well_formed(w);
    assert_eq!(wire::decode(w).unwrap(), canonical);
}
