// Arbitrary bytes, in arbitrary chunks, into an LMTP session with a
// directory that knows two users: no panic, bounded buffering, and every
// delivery it asks for is well-formed POP3 wire form. A piece starting
// with 0x7f sheds the message under way (as `lmtp.max_memory` does), which
// must let its memory go.
// Shared by the cargo-fuzz target and by the corpus regression test
// (server/tests/fuzz_corpus.rs), which runs every corpus file on stable.
use pop3sd::lmtp::{Action, DeliveryResult, RcptCheck, Recipients, Session};
use pop3sd_storage::Address;

struct Two;

impl Recipients for Two {
    fn check(&self, rcpt: &Address) -> RcptCheck {
        match rcpt.local.as_str() {
            "a" | "b" => RcptCheck::Accept {
                address: rcpt.clone(),
                size_limit: 4096,
            },
            "full" => RcptCheck::OverQuota { permanent: false },
            _ => RcptCheck::Unknown,
        }
    }
    fn max_size(&self) -> u64 {
        4096
    }
}

#[allow(dead_code)]
pub fn run(data: &[u8]) {
    let Some((&shape, input)) = data.split_first() else {
        return;
    };
    let mut s = Session::new("fuzz.test");
    let chunk = 1 + shape as usize;
    for piece in input.chunks(chunk) {
        if !s.wants_input() {
            break;
        }
        s.receive(piece, &Two);
        if piece.first() == Some(&0x7f) && s.shed_message(&Two) {
            assert!(s.memory() <= 4096, "a shed message still held");
        }
        let n = s.output().len();
        s.consumed(n);
        while let Some(a) = s.poll_action() {
            match a {
                Action::Deliver { recipients, wire, summary, received } => {
                    assert!(received <= 4096, "over the limit yet delivered");
                    assert!(wire.ends_with(b".\r\n"));
                    assert_eq!(summary.wire_len as usize, wire.len());
                    assert!(pop3sd_storage::wire::decode(&wire).is_ok());
                    let results = recipients.iter().map(|_| DeliveryResult::Delivered).collect();
                    s.delivered(results, &Two);
                }
                Action::Close => {}
            }
        }
    }
}
