//! Whole-dialogue tests of the engine over an in-memory mailbox.

use std::time::{Duration, Instant};

use super::*;

const ALICE: &str = "alice@example.com";

fn messages() -> Vec<Vec<u8>> {
    vec![
        b"From: a@example.org\nSubject: one\n\nHello\n.hidden\n..two dots\nlast\n".to_vec(),
        b"Subject: two\r\n\r\nline1\r\nline2\r\nline3\r\n".to_vec(),
        b"Subject: three\n\n.\n".to_vec(),
    ]
}

/// A minimal driver: checks "secret" passwords, hands out a MemoryMailbox,
/// applies commits, and records what happened.
struct Harness {
    engine: Engine<MemoryMailbox>,
    now: Instant,
    mailbox: Option<MemoryMailbox>,
    policy: Policy,
    outcome_override: Option<fn() -> AuthOutcome<MemoryMailbox>>,
    auth_requests: Vec<AuthRequest>,
    commits: Vec<Vec<usize>>,
    closed: bool,
    tls_starts: u32,
    fail_commit: bool,
    fetches: Vec<usize>,
}

impl Harness {
    fn new(ctx: SessionContext) -> Self {
        let now = Instant::now();
        Harness {
            engine: Engine::new(ctx, now),
            now,
            mailbox: Some(MemoryMailbox::from_raw(messages())),
            policy: Policy::default(),
            outcome_override: None,
            auth_requests: Vec::new(),
            commits: Vec::new(),
            closed: false,
            tls_starts: 0,
            fail_commit: false,
            fetches: Vec::new(),
        }
    }

    fn tls() -> Self {
        Self::new(SessionContext::default())
    }

    /// Sends everything produced so far and returns it.
    fn drain(&mut self) -> String {
        let mut out = Vec::new();
        while let Some(c) = self.engine.next_output().unwrap() {
            let chunk = c.to_vec();
            out.extend_from_slice(&chunk);
            self.engine.advance_output(chunk.len(), self.now);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn run_actions(&mut self) -> String {
        let mut out = self.drain();
        while let Some(a) = self.engine.poll_action() {
            match a {
                Action::Authenticate(req) => {
                    let ok = match &req.credentials {
                        Credentials::Password(p) => p.expose() == b"secret",
                        Credentials::External => true,
                        Credentials::Apop { .. } => false,
                    } && req.address.to_string() == ALICE;
                    self.auth_requests.push(req);
                    let outcome = if let Some(f) = self.outcome_override {
                        f()
                    } else if ok {
                        AuthOutcome::Success {
                            mailbox: self.mailbox.take().expect("one login per test"),
                            policy: self.policy,
                            unix_time: 1_000_000,
                        }
                    } else {
                        AuthOutcome::Failed
                    };
                    self.engine.auth_complete(outcome, self.now);
                }
                Action::Commit {
                    mut mailbox,
                    expunge,
                } => {
                    if self.fail_commit {
                        mailbox.fail_expunge = Some("disk full".into());
                    }
                    let r = mailbox.expunge(&expunge).map(|_| expunge.len());
                    if r.is_ok() {
                        self.commits.push(expunge);
                    }
                    self.engine.commit_complete(r);
                }
                Action::StartTls => {
                    out.push_str(&self.drain());
                    self.tls_starts += 1;
                    out.push_str("<TLS>");
                    self.engine.tls_started(TlsInfo::default(), self.now);
                }
                Action::Close => self.closed = true,
                Action::Fetch(i) => {
                    self.fetches.push(i);
                    if let Some(m) = self.engine.mailbox_mut() {
                        m.warm(i);
                    }
                    self.engine.fetch_complete(self.now);
                }
            }
            out.push_str(&self.drain());
        }
        out
    }

    fn send(&mut self, input: &str) -> String {
        self.engine.receive(input.as_bytes(), self.now);
        self.run_actions()
    }

    fn login(&mut self) {
        let r = self.send("USER alice@example.com\r\nPASS secret\r\n");
        assert!(r.ends_with("+OK Logged in.\r\n"), "{r}");
    }
}

#[test]
fn greeting_then_rfc1939_session() {
    let mut h = Harness::tls();
    assert_eq!(h.drain(), "+OK pop3sd ready.\r\n");
    h.login();
    let m0 = wire::canonical_crlf(&messages()[0]);
    let m1 = wire::canonical_crlf(&messages()[1]);
    let m2 = wire::canonical_crlf(&messages()[2]);
    let total = m0.len() + m1.len() + m2.len();
    assert_eq!(h.send("STAT\r\n"), format!("+OK 3 {total}\r\n"));
    assert_eq!(
        h.send("LIST\r\n"),
        format!(
            "+OK 3 messages ({total} octets)\r\n1 {}\r\n2 {}\r\n3 {}\r\n.\r\n",
            m0.len(),
            m1.len(),
            m2.len()
        )
    );
    assert_eq!(
        h.send("RETR 1\r\n"),
        format!(
            "+OK {} octets\r\nFrom: a@example.org\r\nSubject: one\r\n\r\nHello\r\n..hidden\r\n...two dots\r\nlast\r\n.\r\n",
            m0.len()
        )
    );
    assert_eq!(h.send("DELE 1\r\n"), "+OK Message 1 deleted.\r\n");
    assert_eq!(h.send("RETR 1\r\n"), "-ERR Message is deleted.\r\n");
    assert_eq!(h.send("DELE 1\r\n"), "-ERR Message is already deleted.\r\n");
    assert_eq!(h.send("TOP 1 0\r\n"), "-ERR Message is deleted.\r\n");
    assert_eq!(
        h.send("STAT\r\n"),
        format!("+OK 2 {}\r\n", m1.len() + m2.len())
    );
    assert_eq!(
        h.send("LIST\r\n"),
        format!(
            "+OK 2 messages ({} octets)\r\n2 {}\r\n3 {}\r\n.\r\n",
            m1.len() + m2.len(),
            m1.len(),
            m2.len()
        )
    );
    assert_eq!(h.send("UIDL\r\n"), "+OK\r\n2 uid-2\r\n3 uid-3\r\n.\r\n");
    assert_eq!(h.send("NOOP\r\n"), "+OK\r\n");
    assert_eq!(h.send("QUIT\r\n"), "+OK Logging out, messages deleted.\r\n");
    assert!(h.closed);
    assert_eq!(h.commits, vec![vec![0]]);
}

#[test]
fn single_message_forms_are_single_line() {
    let mut h = Harness::tls();
    h.drain();
    h.login();
    let size1 = wire::canonical_crlf(&messages()[1]).len();
    assert_eq!(h.send("LIST 2\r\n"), format!("+OK 2 {size1}\r\n"));
    assert_eq!(h.send("UIDL 2\r\n"), "+OK 2 uid-2\r\n");
}

#[test]
fn top_counts_lines_and_zero_means_headers_only() {
    let mut h = Harness::tls();
    h.drain();
    h.login();
    assert_eq!(h.send("TOP 2 0\r\n"), "+OK\r\nSubject: two\r\n\r\n.\r\n");
    assert_eq!(
        h.send("TOP 2 2\r\n"),
        "+OK\r\nSubject: two\r\n\r\nline1\r\nline2\r\n.\r\n"
    );
    assert_eq!(
        h.send("TOP 2 99999999999999999999999\r\n"),
        "+OK\r\nSubject: two\r\n\r\nline1\r\nline2\r\nline3\r\n.\r\n"
    );
    // A body line that is just "." stays stuffed in TOP output.
    assert_eq!(
        h.send("TOP 3 1\r\n"),
        "+OK\r\nSubject: three\r\n\r\n..\r\n.\r\n"
    );
    assert_eq!(h.send("TOP 2 x\r\n"), "-ERR Invalid line count.\r\n");
    assert_eq!(h.send("TOP 9 1\r\n"), "-ERR There is no such message.\r\n");
}

#[test]
fn bad_message_numbers() {
    let mut h = Harness::tls();
    h.drain();
    h.login();
    for arg in ["0", "4", "18446744073709551615"] {
        assert_eq!(
            h.send(&format!("RETR {arg}\r\n")),
            "-ERR There is no such message.\r\n"
        );
    }
    for arg in ["-1", "18446744073709551616", "abc", "+1", "1x", "\u{00e9}"] {
        assert_eq!(
            h.send(&format!("RETR {arg}\r\n")),
            "-ERR Invalid message number.\r\n",
            "{arg}"
        );
        assert_eq!(
            h.send(&format!("DELE {arg}\r\n")),
            "-ERR Invalid message number.\r\n"
        );
        assert_eq!(
            h.send(&format!("LIST {arg}\r\n")),
            "-ERR Invalid message number.\r\n"
        );
    }
    assert_eq!(
        h.send("RETR\r\n"),
        "-ERR Syntax error: RETR takes one message number.\r\n"
    );
    assert_eq!(
        h.send("STAT 1\r\n"),
        "-ERR Syntax error: this command takes no arguments.\r\n"
    );
}

#[test]
fn rset_undeletes_and_dropped_connection_commits_nothing() {
    let mut h = Harness::tls();
    h.drain();
    h.login();
    h.send("DELE 1\r\nDELE 2\r\n");
    let total: usize = messages()
        .iter()
        .map(|m| wire::canonical_crlf(m).len())
        .sum();
    assert_eq!(
        h.send("RSET\r\n"),
        format!("+OK maildrop has 3 messages ({total} octets)\r\n")
    );
    h.send("DELE 3\r\n");
    // The connection drops: the engine goes away without QUIT.
    drop(h.engine);
    assert!(h.commits.is_empty());
}

#[test]
fn quit_reports_a_failed_commit() {
    let mut h = Harness::tls();
    h.drain();
    h.login();
    h.fail_commit = true;
    assert_eq!(
        h.send("DELE 1\r\nQUIT\r\n"),
        "+OK Message 1 deleted.\r\n-ERR [SYS/TEMP] Could not delete messages; they are still in the maildrop.\r\n"
    );
    assert!(h.closed);
}

#[test]
fn quit_before_login_just_closes() {
    let mut h = Harness::tls();
    h.drain();
    assert_eq!(h.send("QUIT\r\n"), "+OK Logging out.\r\n");
    assert!(h.closed);
    assert_eq!(h.send("NOOP\r\n"), "", "no input after close");
}

#[test]
fn auth_errors() {
    let mut h = Harness::tls();
    h.drain();
    assert_eq!(h.send("PASS secret\r\n"), "-ERR USER first.\r\n");
    assert_eq!(h.send("STAT\r\n"), "-ERR Not logged in.\r\n");
    assert_eq!(
        h.send("USER bob@example.com\r\nPASS secret\r\n"),
        "+OK\r\n-ERR [AUTH] Authentication failed.\r\n"
    );
    // Unknown user and wrong password give the very same answer.
    assert_eq!(
        h.send("USER alice@example.com\r\nPASS wrong\r\n"),
        "+OK\r\n-ERR [AUTH] Authentication failed.\r\n"
    );
    // The third failure closes the connection.
    assert_eq!(
        h.send("USER ../etc@example.com\r\nPASS x\r\n"),
        "+OK\r\n-ERR [AUTH] Authentication failed. Too many authentication failures; closing.\r\n"
    );
    assert!(h.closed);
    // The invalid name never reached the driver.
    assert_eq!(h.auth_requests.len(), 2);
}

#[test]
fn bare_user_needs_a_default_domain() {
    let mut h = Harness::tls();
    h.drain();
    assert_eq!(
        h.send("USER alice\r\nPASS secret\r\n"),
        "+OK\r\n-ERR [AUTH] Authentication failed.\r\n"
    );
    let mut h = Harness::new(SessionContext {
        default_domain: Some(pop3sd_storage::Domain::parse("example.com").unwrap()),
        ..SessionContext::default()
    });
    h.drain();
    assert_eq!(
        h.send("USER Alice\r\nPASS secret\r\n"),
        "+OK\r\n+OK Logged in.\r\n"
    );
}

#[test]
fn response_codes_from_the_driver() {
    type Outcome = fn() -> AuthOutcome<MemoryMailbox>;
    let cases: [(Outcome, &str); 6] = [
        (|| AuthOutcome::InUse, "-ERR [IN-USE]"),
        (|| AuthOutcome::TooManySessions, "-ERR [IN-USE]"),
        (|| AuthOutcome::LoginDelay, "-ERR [LOGIN-DELAY]"),
        (|| AuthOutcome::TempFail, "-ERR [SYS/TEMP]"),
        (|| AuthOutcome::PermFail, "-ERR [SYS/PERM]"),
        (|| AuthOutcome::CleartextRefused, "-ERR [AUTH]"),
    ];
    for (outcome, code) in cases {
        let mut h = Harness::tls();
        h.drain();
        h.outcome_override = Some(outcome);
        let r = h.send("USER alice@example.com\r\nPASS secret\r\n");
        assert!(r.starts_with(&format!("+OK\r\n{code} ")), "{r}");
        assert!(!h.closed);
    }
}

#[test]
fn sasl_plain() {
    use base64::Engine as _;
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let mut h = Harness::tls();
    h.drain();
    assert_eq!(h.send("AUTH\r\n"), "+OK\r\nPLAIN\r\n.\r\n");
    assert_eq!(
        h.send("AUTH CRAM-MD5\r\n"),
        "-ERR Unsupported authentication mechanism.\r\n"
    );
    assert_eq!(h.send("AUTH PLAIN\r\n"), "+ \r\n");
    assert_eq!(h.send("*\r\n"), "-ERR Authentication cancelled.\r\n");
    // Stray spaces neither hide the mechanism nor make an empty response.
    for line in ["AUTH  PLAIN\r\n", "AUTH PLAIN \r\n"] {
        assert_eq!(h.send(line), "+ \r\n", "{line:?}");
        assert_eq!(h.send("*\r\n"), "-ERR Authentication cancelled.\r\n");
    }
    assert_eq!(
        h.send("AUTH PLAIN !!!notbase64\r\n"),
        "-ERR [AUTH] Invalid base64 data.\r\n"
    );
    let foreign = b64(b"bob@example.com\0alice@example.com\0secret");
    assert_eq!(
        h.send(&format!("AUTH PLAIN {foreign}\r\n")),
        "-ERR [AUTH] Not authorized to act as that user.\r\n"
    );
    assert!(!h.closed);
    assert_eq!(
        h.send("AUTH PLAIN AGJvYgA=\r\n"),
        "-ERR [AUTH] Invalid PLAIN response. Too many authentication failures; closing.\r\n"
    );
    assert!(h.closed, "third failure closes");

    let mut h = Harness::tls();
    h.drain();
    let huge = "A".repeat(4000);
    assert_eq!(h.send("AUTH PLAIN\r\n"), "+ \r\n");
    assert_eq!(
        h.send(&format!("{huge}\r\n")),
        "-ERR [AUTH] SASL response too long.\r\n"
    );
    let same = b64(b"Alice@Example.com\0alice@example.com\0secret");
    assert_eq!(h.send("AUTH PLAIN\r\n"), "+ \r\n");
    assert_eq!(h.send(&format!("{same}\r\n")), "+OK Logged in.\r\n");
    assert_eq!(h.auth_requests[0].mechanism, Mechanism::Plain);
}

#[test]
fn sasl_external_only_with_a_certificate() {
    let mut h = Harness::tls();
    h.drain();
    assert_eq!(
        h.send("AUTH EXTERNAL =\r\n"),
        "-ERR [AUTH] No verified client certificate on this connection.\r\n"
    );
    let mut h = Harness::new(SessionContext {
        external: Some(ExternalIdentity {
            address: Address::parse(ALICE).unwrap(),
        }),
        ..SessionContext::default()
    });
    h.drain();
    let capa = h.send("CAPA\r\n");
    assert!(capa.contains("SASL PLAIN EXTERNAL\r\n"), "{capa}");
    assert_eq!(h.send("AUTH EXTERNAL\r\n"), "+ \r\n");
    assert_eq!(h.send("=\r\n"), "+OK Logged in.\r\n");
    assert_eq!(h.auth_requests[0].credentials, Credentials::External);
}

#[test]
fn sasl_external_refuses_another_identity() {
    use base64::Engine as _;
    let mut h = Harness::new(SessionContext {
        external: Some(ExternalIdentity {
            address: Address::parse(ALICE).unwrap(),
        }),
        ..SessionContext::default()
    });
    h.drain();
    let other = base64::engine::general_purpose::STANDARD.encode("bob@example.com");
    assert_eq!(
        h.send(&format!("AUTH EXTERNAL {other}\r\n")),
        "-ERR [AUTH] Not authorized to act as that user.\r\n"
    );
    let me = base64::engine::general_purpose::STANDARD.encode(ALICE);
    assert_eq!(
        h.send(&format!("AUTH EXTERNAL {me}\r\n")),
        "+OK Logged in.\r\n"
    );
}

#[test]
fn capa_changes_with_state() {
    let mut h = Harness::new(SessionContext {
        tls: false,
        stls_offered: true,
        policy_hint: PolicyHint {
            policy: Policy {
                expire: Expire::Days(30),
                login_delay: 60,
            },
            expire_per_user: true,
            login_delay_per_user: true,
        },
        ..SessionContext::default()
    });
    h.drain();
    let capa = h.send("CAPA\r\n");
    assert_eq!(
        capa,
        "+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n\
         STLS\r\nEXPIRE 30 USER\r\nLOGIN-DELAY 60 USER\r\nIMPLEMENTATION pop3sd\r\n.\r\n"
    );
    assert_eq!(
        h.send("USER alice@example.com\r\n"),
        "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections.\r\n"
    );
    assert!(h
        .send("AUTH PLAIN AGFAYgBj\r\n")
        .starts_with("-ERR [AUTH] Plaintext"));
    // STLS: pipelined plaintext after it is thrown away, not executed.
    assert_eq!(
        h.send("STLS\r\nUSER injected@example.com\r\n"),
        "+OK Begin TLS negotiation now.\r\n<TLS>"
    );
    assert_eq!(h.tls_starts, 1);
    let capa = h.send("CAPA\r\n");
    assert!(
        capa.contains("USER\r\nSASL PLAIN\r\n") && !capa.contains("STLS"),
        "{capa}"
    );
    assert_eq!(h.send("STLS\r\n"), "-ERR TLS is already active.\r\n");
    h.policy = Policy {
        expire: Expire::Never,
        login_delay: 0,
    };
    h.login();
    let capa = h.send("CAPA\r\n");
    assert!(capa.contains("EXPIRE NEVER\r\nIMPLEMENTATION"), "{capa}");
    assert!(
        !capa.contains("USER\r\n") && !capa.contains("SASL"),
        "{capa}"
    );
    assert_eq!(
        h.send("USER x@example.com\r\n"),
        "-ERR Already logged in.\r\n"
    );
    assert_eq!(h.send("STLS\r\n"), "-ERR TLS is already active.\r\n");
}

/// Without TLS, USER for a tenant that takes passwords only over TLS is
/// refused before the client sends its password in the clear.
#[test]
fn user_for_a_tls_only_tenant_is_refused_before_the_password() {
    const REFUSED: &str =
        "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections.\r\n";
    let ctx = || SessionContext {
        tls: false,
        stls_offered: true,
        cleartext_login: true,
        tls_required: Some(std::sync::Arc::new(
            [pop3sd_storage::Domain::parse("example.org").unwrap()]
                .into_iter()
                .collect(),
        )),
        ..SessionContext::default()
    };
    let mut h = Harness::new(ctx());
    h.drain();
    assert_eq!(h.send("USER bob@example.org\r\n"), REFUSED);
    // Not taken as a user: PASS has nothing to go with.
    assert_eq!(h.send("PASS secret\r\n"), "-ERR USER first.\r\n");
    assert!(h.auth_requests.is_empty());
    // Another tenant's user goes on as before.
    assert_eq!(h.send("USER alice@example.com\r\n"), "+OK\r\n");
    // A refused USER also drops the name an earlier one gave: PASS then has
    // nothing to go with, and alice's password is not tried.
    assert_eq!(h.send("USER bob@example.org\r\n"), REFUSED);
    assert_eq!(h.send("PASS secret\r\n"), "-ERR USER first.\r\n");
    assert!(h.auth_requests.is_empty());
    // A bare name (no tenant is known before TLS) could be one of the
    // TLS-only tenant's users, and could never log in here: refused too.
    assert_eq!(h.send("USER bob\r\n"), REFUSED);
    assert_eq!(h.send("PASS secret\r\n"), "-ERR USER first.\r\n");
    assert!(h.auth_requests.is_empty());
    // After STLS the same USER is taken.
    let mut h = Harness::new(ctx());
    h.drain();
    assert_eq!(
        h.send("STLS\r\n"),
        "+OK Begin TLS negotiation now.\r\n<TLS>"
    );
    assert_eq!(h.send("USER bob@example.org\r\n"), "+OK\r\n");
}

#[test]
fn stls_refused_where_not_offered_and_after_login() {
    let mut h = Harness::new(SessionContext {
        tls: false,
        stls_offered: true,
        cleartext_login: true,
        ..SessionContext::default()
    });
    h.drain();
    h.login();
    assert_eq!(
        h.send("STLS\r\n"),
        "-ERR STLS is not permitted after login.\r\n"
    );
    let mut h = Harness::tls();
    h.drain();
    assert_eq!(h.send("STLS\r\n"), "-ERR TLS is already active.\r\n");
}

#[test]
fn expire_zero_deletes_what_was_retrieved() {
    let mut h = Harness::tls();
    h.policy = Policy {
        expire: Expire::Days(0),
        login_delay: 0,
    };
    h.drain();
    h.login();
    h.send("RETR 2\r\nTOP 3 0\r\n");
    h.send("QUIT\r\n");
    assert_eq!(h.commits, vec![vec![1]]);
}

/// What QUIT commits under `EXPIRE days` for messages arriving at these
/// times (the harness logs in at 1,000,000).
fn expired_at_quit(days: u32, arrivals: [i64; 3]) -> Vec<Vec<usize>> {
    let mut h = Harness::tls();
    h.policy = Policy {
        expire: Expire::Days(days),
        login_delay: 0,
    };
    let mut mb = MemoryMailbox::from_raw(messages());
    for (i, t) in arrivals.into_iter().enumerate() {
        mb.set_arrival(i, t);
    }
    h.mailbox = Some(mb);
    h.drain();
    h.login();
    h.send("QUIT\r\n");
    h.commits
}

#[test]
fn expire_days_deletes_old_mail_at_quit() {
    let old = 1_000_000 - 2 * 86_400;
    assert_eq!(
        expired_at_quit(1, [old, 1_000_000 - 3_600, 1_000_000]),
        vec![vec![0]]
    );
}

#[test]
fn expire_days_keeps_mail_whose_arrival_cannot_be_added_to() {
    // Wrapping would make the first two look ancient and delete them unasked.
    let old = 1_000_000 - 31 * 86_400;
    assert_eq!(
        expired_at_quit(30, [i64::MAX, i64::MAX - 86_400, old]),
        vec![vec![2]]
    );
}

#[test]
fn long_lines_and_flooding() {
    let mut h = Harness::tls();
    h.drain();
    let long = "X".repeat(300);
    assert_eq!(
        h.send(&format!("{long}\r\nNOOP\r\n")),
        "-ERR Line too long.\r\n-ERR Not logged in.\r\n"
    );
    // A 1 MiB line, fed in pieces, is skipped with one error.
    for _ in 0..64 {
        assert_eq!(h.send(&"Y".repeat(16 * 1024)), "");
    }
    assert_eq!(h.send("\r\n"), "-ERR Line too long.\r\n");
    // One answer per command up to the limit, the last saying why the
    // connection ends, and nothing after it.
    let mut answers = Vec::new();
    for _ in 0..30 {
        answers.push(h.send("BOGUS\r\n"));
    }
    let limit = h.engine.ctx.limits.max_bad_commands as usize;
    // The two long lines and the NOOP above counted already.
    let answered = limit + 1 - 3;
    assert!(answers[..answered - 1]
        .iter()
        .all(|a| a == "-ERR Unknown command.\r\n"));
    assert_eq!(
        answers[answered - 1],
        "-ERR Unknown command. Too many invalid commands; closing.\r\n"
    );
    assert!(answers[answered..].iter().all(|a| a.is_empty()));
    assert!(h.closed);
}

#[test]
fn timeouts_close_without_commit() {
    let mut h = Harness::tls();
    h.drain();
    let d = h.engine.next_deadline().unwrap();
    assert_eq!(d - h.now, Limits::default().auth_timeout);
    h.login();
    h.send("DELE 1\r\n");
    let d = h.engine.next_deadline().unwrap();
    assert!(d - h.now >= Duration::from_secs(600), "RFC 1939 minimum");
    h.engine.handle_timeout(d - Duration::from_secs(1));
    assert!(!h.engine.is_closed());
    h.engine.handle_timeout(d);
    assert_eq!(h.run_actions(), "-ERR Disconnected for inactivity.\r\n");
    assert!(h.closed);
    assert!(h.commits.is_empty());
}

#[test]
fn non_utf8_and_nul_arguments_are_harmless() {
    let mut h = Harness::tls();
    h.drain();
    h.engine
        .receive(b"USER \xff\xfe\0@example.com\r\nPASS \0\xff\r\n", h.now);
    assert_eq!(
        h.run_actions(),
        "+OK\r\n-ERR [AUTH] Authentication failed.\r\n"
    );
    h.engine.receive(b"\0\0\0\r\nCAPA\xff\r\n", h.now);
    assert_eq!(
        h.run_actions(),
        "-ERR Unknown command.\r\n-ERR Unknown command.\r\n"
    );
}

#[test]
fn retr_output_borrows_the_mailbox_bytes() {
    let mut h = Harness::tls();
    h.drain();
    h.login();
    h.engine.receive(b"RETR 1\r\n", h.now);
    let status = h.engine.next_output().unwrap().unwrap().to_vec();
    assert!(status.starts_with(b"+OK "));
    h.engine.advance_output(status.len(), h.now);
    let body = h.engine.next_output().unwrap().unwrap();
    let State::Transaction(t) = &h.engine.state else {
        panic!("not in transaction")
    };
    let stored = t.mailbox.wire(0).unwrap();
    assert_eq!(
        body.as_ptr(),
        stored.as_ptr(),
        "RETR must hand out the stored slice itself"
    );
    assert_eq!(body.len(), stored.len());
}

/// A whole script, pipelined in one write and fed one byte at a time, must
/// give byte-identical output.
#[test]
fn pipelined_and_byte_at_a_time_agree() {
    let script = "CAPA\r\nUSER alice@example.com\r\nPASS secret\r\nSTAT\r\nLIST\r\nUIDL\r\nRETR 1\r\n\
                  TOP 2 1\r\nDELE 2\r\nLIST 2\r\nRSET\r\nDELE 3\r\nBOGUS\r\nRETR 0\r\nNOOP\r\nQUIT\r\n";
    let mut whole = Harness::tls();
    let mut a = whole.drain();
    a.push_str(&whole.send(script));
    let mut bytewise = Harness::tls();
    let mut b = bytewise.drain();
    for c in script.bytes() {
        bytewise.engine.receive(&[c], bytewise.now);
        b.push_str(&bytewise.run_actions());
    }
    assert_eq!(a, b);
    assert_eq!(whole.commits, vec![vec![2]]);
    assert_eq!(bytewise.commits, vec![vec![2]]);
    assert!(a.ends_with("+OK Logging out, messages deleted.\r\n"));
}

#[test]
fn quit_waits_for_queued_message_output() {
    let mut h = Harness::tls();
    h.drain();
    h.login();
    h.engine.receive(b"RETR 1\r\nQUIT\r\n", h.now);
    // Nothing drained yet: the commit must not take the mailbox away.
    assert!(h.engine.poll_action().is_none());
    let out = h.run_actions();
    assert!(out.ends_with(".\r\n+OK Logging out.\r\n"), "{out}");
}

#[test]
fn pipelined_flood_is_bounded_by_backpressure() {
    let mut h = Harness::tls();
    h.drain();
    h.login();
    let batch = "NOOP\r\n".repeat(1000);
    let mut fed = 0;
    // The driver only reads while the engine wants input.
    while fed < 100 && h.engine.wants_input() {
        h.engine.receive(batch.as_bytes(), h.now);
        fed += 1;
    }
    assert!(
        fed < 100,
        "engine kept asking for input without output draining"
    );
    assert!(h.engine.output_backlog() <= Limits::default().max_text_backlog + 64);
    let out = h.run_actions();
    assert_eq!(out.matches("+OK\r\n").count(), fed * 1000);
}

#[test]
fn apop_only_when_enabled() {
    let mut h = Harness::tls();
    h.drain();
    assert_eq!(
        h.send("APOP alice@example.com c4c9334bac560ecc979e58001b3e22fb\r\n"),
        "-ERR APOP is not enabled here.\r\n"
    );
    let mut h = Harness::new(SessionContext {
        apop_banner: Some("<1896.697170952@dbc.mtview.ca.us>".into()),
        ..SessionContext::default()
    });
    assert_eq!(
        h.drain(),
        "+OK pop3sd ready <1896.697170952@dbc.mtview.ca.us>\r\n"
    );
    h.send("APOP alice@example.com c4c9334bac560ecc979e58001b3e22fb\r\n");
    match &h.auth_requests[0].credentials {
        Credentials::Apop { banner, digest } => {
            assert_eq!(banner, "<1896.697170952@dbc.mtview.ca.us>");
            assert_eq!(digest[0], 0xc4);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.send("APOP alice@example.com nothex\r\n"),
        "-ERR [AUTH] Authentication failed.\r\n"
    );
}

use pop3sd_storage::wire;

#[test]
fn refused_and_aborted_sessions() {
    let now = Instant::now();
    let mut e: Engine<MemoryMailbox> = Engine::refuse(
        SessionContext::default(),
        "[SYS/TEMP] Too many connections.",
        now,
    );
    assert_eq!(
        e.next_output().unwrap().unwrap(),
        b"-ERR [SYS/TEMP] Too many connections.\r\n"
    );
    assert!(e.is_closed());
    assert!(matches!(e.poll_action(), Some(Action::Close)));

    let mut h = Harness::tls();
    h.drain();
    h.login();
    h.send("DELE 1\r\n");
    h.engine.abort("[SYS/TEMP] Server shutting down.");
    assert_eq!(h.run_actions(), "-ERR [SYS/TEMP] Server shutting down.\r\n");
    assert!(h.closed);
    assert!(h.commits.is_empty(), "an aborted session commits nothing");
}

#[test]
fn activity_without_logging_in_does_not_hold_the_connection_forever() {
    let mut h = Harness::tls();
    h.drain();
    let t = Limits::default().auth_timeout;
    let end = h.now + t * AUTHORIZATION_TIMEOUTS;
    let mut now = h.now;
    // CAPA every half timeout: each one resets the inactivity timer...
    while now + t / 2 < end {
        now += t / 2;
        h.engine.handle_timeout(now);
        assert!(!h.engine.is_closed());
        h.engine.receive(b"CAPA\r\n", now);
        assert!(h.run_actions().starts_with("+OK"));
    }
    // ...but not past the authorization phase's end.
    assert_eq!(h.engine.next_deadline(), Some(end));
    h.engine.handle_timeout(end);
    assert_eq!(h.run_actions(), "-ERR Disconnected for inactivity.\r\n");
    assert!(h.closed);
}

#[test]
fn retr_of_a_message_not_in_memory_waits_for_its_fetch_in_order() {
    let mut h = Harness::tls();
    h.drain();
    if let Some(m) = h.mailbox.as_mut() {
        m.cold = vec![0, 1];
    }
    h.login();
    let m0 = wire::canonical_crlf(&messages()[0]);
    // Pipelined: NOOP is answered, RETR 1 waits for its fetch, and STAT
    // after it is not answered before it.
    h.engine.receive(b"NOOP\r\nRETR 1\r\nSTAT\r\n", h.now);
    assert_eq!(h.drain(), "+OK\r\n");
    assert!(!h.engine.wants_input());
    let job = match h.engine.poll_action() {
        Some(Action::Fetch(i)) => i,
        other => panic!("expected a fetch, got {other:?}"),
    };
    assert_eq!(job, 0);
    assert!(h.engine.poll_action().is_none());
    // Input that arrives meanwhile waits too.
    h.engine.receive(b"NOOP\r\n", h.now);
    assert_eq!(h.drain(), "");
    h.engine.mailbox_mut().unwrap().warm(0);
    h.engine.fetch_complete(h.now);
    assert!(h.engine.wants_input());
    let total: usize = messages()
        .iter()
        .map(|m| wire::canonical_crlf(m).len())
        .sum();
    let expected = format!(
        "+OK {} octets\r\n{}+OK 3 {total}\r\n+OK\r\n",
        m0.len(),
        String::from_utf8_lossy(&wire::encode(&messages()[0], wire::InputForm::Raw).0)
    );
    assert_eq!(h.drain(), expected);
    // Once read in, the same message needs no second fetch; TOP of another
    // cold one does.
    let r = h.send("RETR 1\r\nTOP 2 1\r\nQUIT\r\n");
    assert_eq!(h.fetches, vec![1]);
    assert!(
        r.contains("+OK\r\nSubject: two\r\n\r\nline1\r\n.\r\n"),
        "{r}"
    );
    assert_eq!(h.engine.stats().retr, 2);
    assert_eq!(h.engine.stats().top, 1);
}

#[test]
fn a_fetch_that_read_nothing_in_still_answers() {
    let mut h = Harness::tls();
    h.drain();
    if let Some(m) = h.mailbox.as_mut() {
        m.cold = vec![2];
    }
    h.login();
    h.engine.receive(b"RETR 3\r\n", h.now);
    assert!(matches!(h.engine.poll_action(), Some(Action::Fetch(2))));
    // The driver's fetch failed: the message is read on the core anyway.
    h.engine.fetch_complete(h.now);
    let r = h.drain();
    assert!(r.starts_with("+OK "), "{r}");
    assert!(r.ends_with("..\r\n.\r\n"), "{r}");
    // A fetch_complete with nothing waiting changes nothing.
    h.engine.fetch_complete(h.now);
    assert_eq!(h.drain(), "");
}
