// Arbitrary client bytes, in arbitrary chunks, against a whole engine over
// an in-memory mailbox: no panic, and memory stays bounded.
// Shared by the cargo-fuzz target and by the corpus regression test
// (server/tests/fuzz_corpus.rs), which runs every corpus file on stable.
use std::time::{Duration, Instant};
use pop3sd::engine::{Action, AuthOutcome, Credentials, Engine, MemoryMailbox, Policy, SessionContext};

#[allow(dead_code)]
pub fn run(data: &[u8]) {
    let Some((&shape, input)) = data.split_first() else {
        return;
    };
    let mut now = Instant::now();
    let ctx = SessionContext {
        tls: shape & 1 == 0,
        stls_offered: shape & 2 != 0,
        cleartext_login: shape & 4 != 0,
        ..SessionContext::default()
    };
    let limits = ctx.limits;
    let mut engine: Engine<MemoryMailbox> = Engine::new(ctx, now);
    let chunk = 1 + (shape as usize >> 3);
    for piece in input.chunks(chunk) {
        if engine.wants_input() {
            engine.receive(piece, now);
        }
        // Drain output the way a driver would.
        loop {
            let n = match engine.next_output() {
                Ok(Some(c)) => c.len(),
                Ok(None) => break,
                Err(_) => break,
            };
            engine.advance_output(n, now);
        }
        while let Some(a) = engine.poll_action() {
            match a {
                Action::Authenticate(req) => {
                    let ok = matches!(&req.credentials, Credentials::Password(p) if p.expose() == b"pw");
                    let outcome = if ok {
                        let mut mailbox =
                            MemoryMailbox::from_raw([&b"Subject: a\r\n\r\nbody\r\n.\r\n"[..], b"x", b""]);
                        // The first message is "not in memory": its RETR or
                        // TOP waits for a fetch.
                        mailbox.cold = vec![0];
                        AuthOutcome::Success {
                            mailbox,
                            policy: Policy::default(),
                            unix_time: 0,
                        }
                    } else {
                        AuthOutcome::Failed
                    };
                    engine.auth_complete(outcome, now);
                }
                Action::Commit { mut mailbox, expunge } => {
                    use pop3sd::engine::Mailbox;
                    let r = mailbox.expunge(&expunge).map(|_| expunge.len());
                    engine.commit_complete(r);
                }
                Action::StartTls => engine.tls_started(Default::default(), now),
                Action::Close => {}
                Action::Fetch(i) => {
                    if let Some(m) = engine.mailbox_mut() {
                        m.warm(i);
                    }
                    engine.fetch_complete(now);
                }
            }
        }
        assert!(engine.output_backlog() <= limits.max_text_backlog + 64 * 1024);
        now += Duration::from_millis(1);
    }
    engine.handle_timeout(now + Duration::from_secs(3600));
}
