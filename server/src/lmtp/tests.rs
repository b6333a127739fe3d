//! LMTP dialogues against the engine, with a fake directory.

use super::*;

struct Dir;

impl Recipients for Dir {
    fn check(&self, rcpt: &Address) -> RcptCheck {
        match rcpt.to_string().as_str() {
            "alice@example.com" | "bob@example.com" => RcptCheck::Accept {
                address: rcpt.clone(),
                size_limit: 10_000,
            },
            "small@example.com" => RcptCheck::Accept {
                address: rcpt.clone(),
                size_limit: 100,
            },
            "full@example.com" => RcptCheck::OverQuota { permanent: false },
            _ => RcptCheck::Unknown,
        }
    }
    fn max_size(&self) -> u64 {
        10_000
    }
}

/// Recipients and wire bytes of one delivery.
type Delivery = (Vec<String>, Vec<u8>);

/// Runs input through a session, answering deliveries with `results`.
fn run(input: &[&[u8]], results: &[DeliveryResult]) -> (String, Vec<Delivery>) {
    let mut s = Session::new("mx.test");
    let mut out = String::new();
    let mut deliveries = Vec::new();
    let drain = |s: &mut Session, out: &mut String| {
        out.push_str(&String::from_utf8_lossy(s.output()));
        let n = s.output().len();
        s.consumed(n);
    };
    drain(&mut s, &mut out);
    for chunk in input {
        s.receive(chunk, &Dir);
        loop {
            drain(&mut s, &mut out);
            match s.poll_action() {
                Some(Action::Deliver {
                    recipients, wire, ..
                }) => {
                    deliveries.push((
                        recipients.iter().map(|(a, _)| a.to_string()).collect(),
                        wire,
                    ));
                    s.delivered(results[..recipients.len()].to_vec(), &Dir);
                }
                Some(Action::Close) | None => break,
            }
        }
    }
    (out, deliveries)
}

#[test]
fn a_transaction_with_one_reply_per_recipient() {
    let script: &[u8] = b"LHLO mx.example\r\nMAIL FROM:<sender@example.org> SIZE=100 BODY=8BITMIME\r\n\
        RCPT TO:<alice@example.com>\r\nRCPT TO:<nobody@example.com>\r\nRCPT TO:<Bob@Example.COM>\r\n\
        DATA\r\nSubject: hi\r\n\r\n..dotted\r\nbody\r\n.\r\nQUIT\r\n";
    let (out, deliveries) = run(
        &[script],
        &[
            DeliveryResult::Delivered,
            DeliveryResult::OverQuota { permanent: false },
        ],
    );
    assert_eq!(
        out,
        "220 mx.test LMTP pop3sd ready\r\n\
         250-mx.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SIZE 10000\r\n\
         250 2.1.0 Sender OK\r\n\
         250 2.1.5 Recipient OK\r\n\
         550 5.1.1 <nobody@example.com> no such user here\r\n\
         250 2.1.5 Recipient OK\r\n\
         354 2.0.0 Start mail input; end with <CRLF>.<CRLF>\r\n\
         250 2.0.0 <alice@example.com> delivered\r\n\
         452 4.2.2 <bob@example.com> mailbox is full\r\n\
         221 2.0.0 mx.test closing connection\r\n"
    );
    assert_eq!(deliveries.len(), 1);
    assert_eq!(
        deliveries[0].0,
        vec!["alice@example.com", "bob@example.com"]
    );
    assert_eq!(
        deliveries[0].1,
        b"Return-Path: <sender@example.org>\r\nSubject: hi\r\n\r\n..dotted\r\nbody\r\n.\r\n"
    );
}

#[test]
fn byte_at_a_time_gives_the_same_dialogue() {
    let script: &[u8] = b"LHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\na\r\n.\r\nRSET\r\nQUIT\r\n";
    let whole = run(&[script], &[DeliveryResult::Delivered]);
    let bytes: Vec<&[u8]> = script.chunks(1).collect();
    let split = run(&bytes, &[DeliveryResult::Delivered]);
    assert_eq!(whole, split);
}

#[test]
fn control_bytes_in_a_command_are_refused() {
    let (out, _) = run(
        &[b"LHLO x\r\nMAIL FROM:<a\rX-Injected: 1>\r\nMAIL FROM:<a\x00b@c>\r\nMAIL FROM:<a@b>\r\n"],
        &[],
    );
    let codes: Vec<&str> = out.lines().map(|l| &l[..3]).collect();
    assert_eq!(
        codes,
        ["220", "250", "250", "250", "250", "250", "501", "501", "250"],
        "{out}"
    );
    assert!(!out.contains("X-Injected"), "{out}");
}

#[test]
fn order_and_syntax_errors() {
    let (out, _) = run(
        &[b"MAIL FROM:<a@b>\r\nHELO x\r\nLHLO\r\nLHLO x\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n\
            MAIL FROM:a@b\r\nMAIL FROM:<a@b> SIZE=999999\r\nMAIL FROM:<a@b> X=1\r\nMAIL FROM:<a@b>\r\n\
            RCPT TO:<../etc@example.com>\r\nRCPT TO:<full@example.com>\r\nDATA\r\nBOGUS\r\nNOOP\r\n"],
        &[],
    );
    let codes: Vec<&str> = out.lines().map(|l| &l[..3]).collect();
    assert_eq!(
        codes,
        [
            "220", "503", "500", "501", "250", "250", "250", "250", "250", "503", "503", "501",
            "552", "555", "250", "550", "452", "503", "500", "250"
        ]
    );
}

#[test]
fn size_limits_per_recipient_and_overall() {
    let mut big = b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.com>\r\nRCPT TO:<small@example.com>\r\nDATA\r\n".to_vec();
    big.extend_from_slice(&[b'x'; 500]);
    big.extend_from_slice(b"\r\n.\r\n");
    // The driver refuses the small recipient; the engine relays what it says.
    let (out, d) = run(
        &[&big],
        &[DeliveryResult::Delivered, DeliveryResult::TooBig],
    );
    assert!(
        out.contains("250 2.0.0 <alice@example.com> delivered"),
        "{out}"
    );
    assert!(
        out.contains("552 5.3.4 <small@example.com> message too big"),
        "{out}"
    );
    assert_eq!(d.len(), 1);
    // Over every limit: nothing is kept or delivered.
    let mut huge = b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n".to_vec();
    for _ in 0..200 {
        huge.extend_from_slice(&[b'y'; 98]);
        huge.extend_from_slice(b"\r\n");
    }
    huge.extend_from_slice(b".\r\nNOOP\r\n");
    let (out, d) = run(&[&huge], &[]);
    assert!(
        out.contains("552 5.3.4 <alice@example.com> message too big\r\n250 2.0.0 OK"),
        "{out}"
    );
    assert!(d.is_empty());
}

#[test]
fn long_command_lines_are_refused_without_buffering() {
    let mut s = Session::new("mx");
    let long = vec![b'A'; 100_000];
    s.receive(&long, &Dir);
    assert!(s.input.len() <= MAX_LINE + 1, "buffered {}", s.input.len());
    s.receive(b"\r\nNOOP\r\n", &Dir);
    let out = String::from_utf8_lossy(s.output()).into_owned();
    assert!(
        out.ends_with("500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n"),
        "{out}"
    );
}

#[test]
fn a_shutdown_between_transactions_says_421_and_a_transaction_is_seen_through() {
    let mut s = Session::new("mx.test");
    assert!(!s.in_transaction());
    s.receive(
        b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.com>\r\n",
        &Dir,
    );
    assert!(s.in_transaction(), "between MAIL and the replies to DATA");
    s.receive(b"DATA\r\nx\r\n.\r\n", &Dir);
    assert!(matches!(
        s.poll_action(),
        Some(Action::Deliver { received: 3, .. })
    ));
    assert!(s.in_transaction(), "delivering");
    s.delivered(vec![DeliveryResult::Delivered], &Dir);
    assert!(!s.in_transaction());
    let n = s.output().len();
    s.consumed(n);
    s.shut_down();
    assert_eq!(s.output(), b"421 4.3.2 mx.test shutting down\r\n");
    assert!(s.is_closed());
    assert!(matches!(s.poll_action(), Some(Action::Close)));
    // Nothing after it is taken.
    s.receive(b"MAIL FROM:<a@b>\r\n", &Dir);
    assert_eq!(s.output(), b"421 4.3.2 mx.test shutting down\r\n");
}

fn take_output(s: &mut Session) -> String {
    let out = String::from_utf8_lossy(s.output()).into_owned();
    let n = s.output().len();
    s.consumed(n);
    out
}

#[test]
fn a_message_shed_while_it_arrives_is_refused_for_now_and_the_next_is_taken() {
    let mut s = Session::new("mx.test");
    s.receive(
        b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n",
        &Dir,
    );
    s.receive(&b"0123456789abcdef\r\n".repeat(200), &Dir);
    let before = s.memory();
    assert!(before >= 3600, "the message so far is counted: {before}");
    take_output(&mut s);
    assert!(s.shed_message(&Dir));
    assert!(s.memory() < before, "the message is let go");
    // The rest is read to its end and kept nowhere.
    s.receive(&b"more\r\n".repeat(100), &Dir);
    assert!(s.memory() < before);
    assert_eq!(take_output(&mut s), "");
    s.receive(
        b".\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\nnext\r\n.\r\n",
        &Dir,
    );
    assert!(
        matches!(s.poll_action(), Some(Action::Deliver { received: 6, .. })),
        "the next transaction is delivered"
    );
    let out = take_output(&mut s);
    assert!(
        out.starts_with(
            "452 4.3.1 <alice@example.com> insufficient system storage, try again later\r\n\
             452 4.3.1 <bob@example.com> insufficient system storage, try again later\r\n\
             250 2.1.0 Sender OK\r\n"
        ),
        "{out}"
    );
}

#[test]
fn a_message_shed_once_complete_is_refused_and_pipelined_commands_go_on() {
    let mut s = Session::new("mx.test");
    s.receive(
        b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\nbody\r\n.\r\nNOOP\r\n",
        &Dir,
    );
    assert!(s.memory() >= "Return-Path: <a@b>\r\nbody\r\n".len());
    take_output(&mut s);
    assert!(s.shed_message(&Dir));
    assert!(s.poll_action().is_none(), "the delivery is withdrawn");
    assert!(!s.shed_message(&Dir), "nothing left to shed");
    assert!(!s.in_transaction());
    assert_eq!(
        take_output(&mut s),
        "452 4.3.1 <alice@example.com> insufficient system storage, try again later\r\n\
         250 2.0.0 OK\r\n"
    );
}

#[test]
fn a_shed_message_over_the_size_limit_is_refused_for_good() {
    let mut s = Session::new("mx.test");
    s.receive(
        b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<small@example.com>\r\nDATA\r\n",
        &Dir,
    );
    take_output(&mut s);
    assert!(s.shed_message(&Dir));
    s.receive(&b"0123456789\r\n".repeat(20), &Dir);
    s.receive(b".\r\n", &Dir);
    assert_eq!(
        take_output(&mut s),
        "552 5.3.4 <small@example.com> message too big\r\n"
    );
}
