//! The POP3 session as a pure state machine (sans-IO).
//!
//! An [`Engine`] takes the client's bytes ([`Engine::receive`]) and the time,
//! and produces response bytes ([`Engine::next_output`]) and [`Action`]s for
//! its driver: authenticate this user, commit these deletions, start TLS,
//! close. It never touches a socket, a file or a clock, so every behaviour is
//! unit-tested and fuzzed directly; the network server is a thin loop around
//! it.
//!
//! Protocol: RFC 1939 (AUTHORIZATION, TRANSACTION, UPDATE), RFC 2449 (CAPA and
//! its capabilities), RFC 3206 response codes, RFC 5034 AUTH, RFC 2595 STLS.
//!
//! Message bodies are not copied: RETR and TOP queue references to the
//! mailbox's wire-form slices, resolved by the driver when it encrypts.

pub mod capa;
pub mod command;
pub mod context;
pub mod line;
pub mod login;
pub mod mailbox;
pub mod output;
pub mod sasl;

use std::collections::VecDeque;
use std::io::Write;
use std::time::Instant;

use pop3sd_storage::fetch::Extent;
use pop3sd_storage::{Address, LocalPart};

pub use context::{Expire, ExternalIdentity, Limits, Policy, PolicyHint, SessionContext, TlsInfo};
pub use login::{AuthOutcome, AuthRequest, Credentials, Mechanism, Secret};
pub use mailbox::{Mailbox, MailboxError, MemoryMailbox};

use command::{Command, LineCount, MsgArg, ParseError};
use line::{Line, LineBuffer};
use output::{Output, Piece};

/// Longest command line (RFC 2449 section 4: 255 octets with CRLF).
pub const MAX_COMMAND_LINE: usize = 255;
/// Longest SASL continuation line (base64 of [`sasl::MAX_SASL_DECODED`]).
pub const MAX_SASL_LINE: usize = sasl::MAX_SASL_DECODED * 4 / 3 + 8;
/// Input buffered before the engine asks the driver to stop reading.
const MAX_INPUT_BACKLOG: usize = 4096;

/// Something the driver must do for the engine.
#[derive(Debug)]
pub enum Action<M: Mailbox> {
    /// Verify these credentials and open the maildrop, then call
    /// [`Engine::auth_complete`]. No input is processed meanwhile.
    Authenticate(AuthRequest),
    /// Apply these deletions (snapshot indices) through the mailbox, then
    /// call [`Engine::commit_complete`]. The mailbox is handed over so the
    /// work can run off the connection's core; no message slice is queued.
    Commit { mailbox: M, expunge: Vec<usize> },
    /// Send the queued output in plaintext, then run a TLS handshake and call
    /// [`Engine::tls_started`] (STLS).
    StartTls,
    /// Send the queued output, then close (with close_notify under TLS)
    /// without waiting for the client.
    Close,
    /// Run this where waiting for the disk is allowed, give its result to
    /// the mailbox ([`Engine::mailbox_mut`]), then call
    /// [`Engine::fetch_complete`]: a RETR or TOP waits for it, so that the
    /// copy on the connection's core finds the message in memory. No input
    /// is processed meanwhile; answers queued before it stay ahead of its
    /// own.
    Fetch(M::Fetch),
}

/// A RETR or TOP waiting for its message to be read into memory.
#[derive(Debug, Clone, Copy)]
enum Deferred {
    Retr(usize),
    Top(usize, u64),
}

/// Per-session counters, for the logout log line (Dovecot's
/// pop3_logout_format figures) and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub commands: u32,
    pub top: u32,
    pub top_bytes: u64,
    pub retr: u32,
    pub retr_bytes: u64,
    pub dele: u32,
    pub expunged: u32,
    /// Messages and octets in the snapshot at login.
    pub messages: usize,
    pub size: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A set of message indices (DELE marks, retrieved messages).
#[derive(Debug, Clone, Default)]
struct Marks(Vec<u64>);

impl Marks {
    fn with_len(n: usize) -> Self {
        Marks(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn set(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }
    fn clear(&mut self) {
        self.0.iter_mut().for_each(|w| *w = 0);
    }
}

struct Transaction<M> {
    mailbox: M,
    deleted: Marks,
    retrieved: Marks,
    live_count: usize,
    live_size: u64,
    policy: Policy,
    login_time: i64,
}

impl<M: Mailbox> Transaction<M> {
    /// The deletions QUIT commits: DELE marks, plus what EXPIRE removes.
    fn expunge_set(&self) -> Vec<usize> {
        (0..self.mailbox.count())
            .filter(|&i| {
                self.deleted.get(i)
                    || match self.policy.expire {
                        Expire::Never => false,
                        Expire::Days(0) => self.retrieved.get(i),
                        // An arrival time too large to add to (only a damaged
                        // or hand-made file holds one) is not old mail.
                        Expire::Days(d) => self
                            .mailbox
                            .arrival(i)
                            .checked_add(i64::from(d) * 86_400)
                            .is_some_and(|t| t <= self.login_time),
                    }
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SaslMech {
    Plain,
    External,
}

enum State<M> {
    Authorization {
        user: Option<Vec<u8>>,
    },
    SaslWait(SaslMech),
    Authenticating,
    Transaction(Box<Transaction<M>>),
    /// QUIT received; waiting for queued message slices to drain.
    QuitPending(Box<Transaction<M>>),
    Committing,
    TlsPending,
    Closed,
}

/// Which numbered message a command addresses.
enum Lookup {
    Found(usize),
    Deleted,
    NoSuch,
    Invalid,
}

/// The authorization phase lasts at most this many authorization timeouts.
const AUTHORIZATION_TIMEOUTS: u32 = 5;

/// One POP3 session. `M` is the mailbox type a successful login yields.
pub struct Engine<M: Mailbox> {
    ctx: SessionContext,
    state: State<M>,
    input: LineBuffer,
    out: Output,
    actions: VecDeque<Action<M>>,
    deadline: Instant,
    /// The authorization phase ends by then, however active the client:
    /// commands such as CAPA would otherwise hold a connection forever
    /// without ever logging in.
    auth_until: Instant,
    bad_commands: u32,
    auth_failures: u32,
    stats: SessionStats,
    login: Option<(Address, Mechanism)>,
    /// Set while an [`Action::Fetch`] runs.
    fetching: Option<Deferred>,
}

impl<M: Mailbox> std::fmt::Debug for Engine<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("state", &self.state_name())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<M: Mailbox> Engine<M> {
    /// A new session; the greeting is queued at once.
    pub fn new(ctx: SessionContext, now: Instant) -> Self {
        let mut out = Output::default();
        match &ctx.apop_banner {
            Some(b) => {
                let _ = write!(out.writer(), "+OK pop3sd ready {b}\r\n");
            }
            None => out.text(b"+OK pop3sd ready.\r\n"),
        }
        let deadline = now + ctx.limits.auth_timeout;
        let auth_until = now + ctx.limits.auth_timeout * AUTHORIZATION_TIMEOUTS;
        Engine {
            ctx,
            state: State::Authorization { user: None },
            input: LineBuffer::default(),
            out,
            actions: VecDeque::new(),
            deadline,
            auth_until,
            bad_commands: 0,
            auth_failures: 0,
            stats: SessionStats::default(),
            login: None,
            fetching: None,
        }
    }

    /// A session that is refused before it starts (too many connections,
    /// shutting down): the client gets this `-ERR` line instead of the
    /// greeting, then the connection closes. `message` should carry a
    /// response code, e.g. `[SYS/TEMP] Too many connections`.
    pub fn refuse(ctx: SessionContext, message: &str, now: Instant) -> Self {
        let mut e = Self::new(ctx, now);
        e.out = Output::default();
        let _ = write!(e.out.writer(), "-ERR {message}\r\n");
        e.close();
        e
    }

    /// Ends a session from the server's side (shutdown deadline): the client
    /// is told why, nothing is committed, and the connection closes.
    pub fn abort(&mut self, message: &str) {
        if self.is_closed() {
            return;
        }
        if matches!(self.state, State::Committing) {
            return; // the commit finishes and answers QUIT itself
        }
        let _ = write!(self.out.writer(), "-ERR {message}\r\n");
        // Dropping the transaction releases the maildrop without committing.
        self.close();
    }

    /// Name of the current state, for logs.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Authorization { .. } | State::SaslWait(_) | State::Authenticating => {
                "AUTHORIZATION"
            }
            State::Transaction(_) | State::QuitPending(_) => "TRANSACTION",
            State::Committing => "UPDATE",
            State::TlsPending => "STLS",
            State::Closed => "CLOSED",
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Who logged in, and how (None before login).
    pub fn login(&self) -> Option<&(Address, Mechanism)> {
        self.login.as_ref()
    }

    /// The connection context (updated by STLS).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// True once the session is over (a Close action was issued).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Feeds bytes received from the client and processes every complete
    /// command that can be processed now (pipelining).
    pub fn receive(&mut self, data: &[u8], now: Instant) {
        if self.is_closed() || matches!(self.state, State::TlsPending) {
            return;
        }
        self.stats.bytes_in += data.len() as u64;
        self.input.extend(data);
        self.process(now);
    }

    /// True when the driver should read more from the client: the engine is
    /// not waiting on an action and neither input nor output is backed up.
    pub fn wants_input(&self) -> bool {
        matches!(
            self.state,
            State::Authorization { .. } | State::SaslWait(_) | State::Transaction(_)
        ) && self.input.pending() < MAX_INPUT_BACKLOG
            && self.out.backlog() < self.ctx.limits.max_text_backlog
            && self.fetching.is_none()
    }

    /// The next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<Action<M>> {
        self.actions.pop_front()
    }

    /// The next bytes to send, borrowed from the response buffer or from the
    /// mailbox's memory map. An error means a message could not be read
    /// after its status line went out: the driver must close the connection.
    pub fn next_output(&self) -> Result<Option<&[u8]>, MailboxError> {
        match self.out.front() {
            None => Ok(None),
            Some(Piece::Text { start, end }) => Ok(Some(self.out.text_of(start, end))),
            Some(Piece::Mail { msg, start, end }) => {
                let mailbox = match &self.state {
                    State::Transaction(t) | State::QuitPending(t) => &t.mailbox,
                    _ => return Err(MailboxError("message queued without a mailbox".into())),
                };
                let wire = mailbox.wire(msg)?;
                wire.get(start..end)
                    .map(Some)
                    .ok_or_else(|| MailboxError("message shorter than queued".into()))
            }
        }
    }

    /// True while output is queued.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Bytes of output queued.
    pub fn output_backlog(&self) -> usize {
        self.out.backlog()
    }

    /// Marks `n` bytes of [`Engine::next_output`] as sent, then resumes
    /// processing that waited for output to drain.
    pub fn advance_output(&mut self, n: usize, now: Instant) {
        self.out.advance(n);
        self.stats.bytes_out += n as u64;
        if self.out.is_empty() {
            self.input.shrink_if_idle();
        }
        if n > 0 && matches!(self.state, State::Transaction(_)) {
            // The client is reading: not idle.
            self.deadline = now + self.ctx.limits.idle_timeout;
        }
        self.process(now);
    }

    /// When the driver must call [`Engine::handle_timeout`], if a timer runs.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Authorization { .. }
            | State::SaslWait(_)
            | State::Transaction(_)
            | State::QuitPending(_) => Some(self.deadline),
            _ => None,
        }
    }

    /// Closes the session if its idle timer has run out. A session closed
    /// this way commits nothing (RFC 1939 section 6).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_deadline().is_some_and(|d| now >= d) {
            self.out.text(b"-ERR Disconnected for inactivity.\r\n");
            self.close();
        }
    }

    /// When an authorization-phase wait ends: the usual timeout, but never
    /// past the phase's own end.
    fn auth_deadline(&self, now: Instant) -> Instant {
        (now + self.ctx.limits.auth_timeout).min(self.auth_until)
    }

    /// Result of an [`Action::Authenticate`].
    pub fn auth_complete(&mut self, outcome: AuthOutcome<M>, now: Instant) {
        if !matches!(self.state, State::Authenticating) {
            return;
        }
        let pending = self.login.take();
        self.deadline = self.auth_deadline(now);
        match outcome {
            AuthOutcome::Success {
                mailbox,
                policy,
                unix_time,
            } => {
                let count = mailbox.count();
                let live_size = (0..count).map(|i| mailbox.size(i)).sum();
                self.stats.messages = count;
                self.stats.size = live_size;
                self.state = State::Transaction(Box::new(Transaction {
                    deleted: Marks::with_len(count),
                    retrieved: Marks::with_len(count),
                    mailbox,
                    live_count: count,
                    live_size,
                    policy,
                    login_time: unix_time,
                }));
                self.login = pending;
                self.deadline = now + self.ctx.limits.idle_timeout;
                self.out.text(b"+OK Logged in.\r\n");
            }
            AuthOutcome::Failed => self.auth_failed(b"-ERR [AUTH] Authentication failed.\r\n"),
            AuthOutcome::CleartextRefused => self.auth_failed(
                b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections.\r\n",
            ),
            AuthOutcome::InUse => self.back_to_authorization(
                b"-ERR [IN-USE] Maildrop is locked by another POP3 session; try again later.\r\n",
            ),
            AuthOutcome::TooManySessions => self.back_to_authorization(
                b"-ERR [IN-USE] Too many sessions for this user; try again later.\r\n",
            ),
            AuthOutcome::LoginDelay => self.back_to_authorization(
                b"-ERR [LOGIN-DELAY] Logged in too recently; try again later.\r\n",
            ),
            AuthOutcome::TempFail => self.back_to_authorization(
                b"-ERR [SYS/TEMP] Temporary server failure; try again later.\r\n",
            ),
            AuthOutcome::PermFail => self.back_to_authorization(
                b"-ERR [SYS/PERM] The maildrop cannot be opened; contact your provider.\r\n",
            ),
        }
        self.process(now);
    }

    /// The mailbox of a logged-in session, for the driver to hand it what
    /// an [`Action::Fetch`] made.
    pub fn mailbox_mut(&mut self) -> Option<&mut M> {
        match &mut self.state {
            State::Transaction(t) | State::QuitPending(t) => Some(&mut t.mailbox),
            _ => None,
        }
    }

    /// The [`Action::Fetch`] ran (whether or not it succeeded: a message it
    /// could not read in is read, or fails, on the core as without it).
    /// Answers the RETR or TOP that waited, then goes on with the input.
    pub fn fetch_complete(&mut self, now: Instant) {
        let Some(d) = self.fetching.take() else {
            return;
        };
        if let State::Transaction(t) = &mut self.state {
            match d {
                Deferred::Retr(i) => Self::retr(t, &mut self.out, &mut self.stats, i),
                Deferred::Top(i, n) => Self::top(t, &mut self.out, &mut self.stats, i, n),
            }
        }
        self.process(now);
    }

    /// Result of an [`Action::Commit`]; the session ends either way.
    pub fn commit_complete(&mut self, result: Result<usize, MailboxError>) {
        if !matches!(self.state, State::Committing) {
            return;
        }
        match result {
            Ok(n) => {
                self.stats.expunged = n as u32;
                if n > 0 {
                    self.out.text(b"+OK Logging out, messages deleted.\r\n");
                } else {
                    self.out.text(b"+OK Logging out.\r\n");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "expunge at QUIT failed");
                self.out.text(
                    b"-ERR [SYS/TEMP] Could not delete messages; they are still in the maildrop.\r\n",
                );
            }
        }
        self.close();
    }

    /// The TLS handshake begun by STLS finished; the session starts over in
    /// AUTHORIZATION with what TLS revealed (SNI tenant, client certificate).
    pub fn tls_started(&mut self, info: TlsInfo, now: Instant) {
        if !matches!(self.state, State::TlsPending) {
            return;
        }
        self.ctx.tls = true;
        self.ctx.default_domain = info.default_domain;
        self.ctx.external = info.external;
        if let Some(h) = info.policy_hint {
            self.ctx.policy_hint = h;
        }
        self.state = State::Authorization { user: None };
        self.deadline = self.auth_deadline(now);
        self.process(now);
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.input.clear();
        self.actions.push_back(Action::Close);
    }

    fn auth_failed(&mut self, msg: &[u8]) {
        self.auth_failures += 1;
        if self.auth_failures >= self.ctx.limits.max_auth_failures {
            self.last_answer(msg, b"Too many authentication failures; closing.");
            self.close();
        } else {
            self.out.text(msg);
            self.state = State::Authorization { user: None };
        }
    }

    /// The answer to a command after which the session ends, saying both:
    /// one response per command, so that a client reading the answer to
    /// the command it sent next finds the end of the connection, not a
    /// second `-ERR` it would take for that answer.
    fn last_answer(&mut self, msg: &[u8], why: &[u8]) {
        let line = msg.strip_suffix(b"\r\n").unwrap_or(msg);
        self.out.text(line);
        self.out.text(b" ");
        self.out.text(why);
        self.out.text(b"\r\n");
    }

    fn back_to_authorization(&mut self, msg: &[u8]) {
        self.out.text(msg);
        self.state = State::Authorization { user: None };
    }

    fn bad_command(&mut self, msg: &[u8]) {
        self.bad_commands += 1;
        if self.bad_commands > self.ctx.limits.max_bad_commands {
            self.last_answer(msg, b"Too many invalid commands; closing.");
            self.close();
        } else {
            self.out.text(msg);
        }
    }

    /// Processes buffered lines until blocked (action pending, output backed
    /// up, QUIT waiting for message output to drain) or out of input.
    fn process(&mut self, now: Instant) {
        let mut linebuf = [0u8; MAX_SASL_LINE];
        loop {
            if self.fetching.is_some() {
                return;
            }
            if let State::QuitPending(_) = self.state {
                if self.out.has_mail() {
                    return;
                }
                let State::QuitPending(t) = std::mem::replace(&mut self.state, State::Committing)
                else {
                    return;
                };
                self.commit(*t);
                return;
            }
            let limit = match self.state {
                State::Authorization { .. } | State::Transaction(_) => MAX_COMMAND_LINE,
                State::SaslWait(_) => MAX_SASL_LINE,
                _ => return,
            };
            if self.out.backlog() >= self.ctx.limits.max_text_backlog {
                return;
            }
            let len = match self.input.next_line(limit) {
                None => return,
                Some(Line::TooLong) => None,
                Some(Line::Complete(l)) => {
                    linebuf[..l.len()].copy_from_slice(l);
                    Some(l.len())
                }
            };
            self.deadline = if matches!(self.state, State::Transaction(_)) {
                now + self.ctx.limits.idle_timeout
            } else {
                self.auth_deadline(now)
            };
            match len {
                None => {
                    if let State::SaslWait(_) = self.state {
                        self.state = State::Authorization { user: None };
                        self.auth_failed(b"-ERR [AUTH] SASL response too long.\r\n");
                    } else {
                        self.bad_command(b"-ERR Line too long.\r\n");
                    }
                }
                Some(n) => {
                    let line = &linebuf[..n];
                    if let State::SaslWait(mech) = self.state {
                        self.sasl_response(mech, line);
                    } else {
                        self.stats.commands = self.stats.commands.saturating_add(1);
                        match command::parse(line) {
                            Ok(cmd) => self.dispatch(cmd),
                            Err(ParseError::Unknown) => {
                                self.bad_command(b"-ERR Unknown command.\r\n")
                            }
                            Err(ParseError::Syntax(why)) => {
                                let mut msg = Vec::with_capacity(64);
                                msg.extend_from_slice(b"-ERR Syntax error: ");
                                msg.extend_from_slice(why.as_bytes());
                                msg.extend_from_slice(b".\r\n");
                                self.bad_command(&msg);
                            }
                        }
                    }
                }
            }
        }
    }

    fn dispatch(&mut self, cmd: Command<'_>) {
        match cmd {
            Command::Capa => {
                let policy = match &self.state {
                    State::Transaction(t) => Some(t.policy),
                    _ => None,
                };
                capa::write(&mut self.out, &self.ctx, policy.as_ref());
            }
            Command::Quit => match std::mem::replace(&mut self.state, State::Closed) {
                State::Transaction(t) => {
                    // Commit once every queued message slice is sent.
                    self.state = State::QuitPending(t);
                }
                _ => {
                    self.out.text(b"+OK Logging out.\r\n");
                    self.close();
                }
            },
            Command::Stls => self.stls(),
            Command::User(name) => self.user(name),
            Command::Pass(pw) => self.pass(pw),
            Command::Apop { name, digest } => self.apop(name, digest),
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial),
            Command::Stat
            | Command::List(_)
            | Command::Retr(_)
            | Command::Dele(_)
            | Command::Noop
            | Command::Rset
            | Command::Top(..)
            | Command::Uidl(_) => {
                if let State::Transaction(_) = self.state {
                    self.transaction(cmd);
                } else {
                    self.bad_command(b"-ERR Not logged in.\r\n");
                }
            }
        }
    }

    fn in_authorization(&mut self) -> bool {
        match self.state {
            State::Authorization { .. } => true,
            _ => {
                self.bad_command(b"-ERR Already logged in.\r\n");
                false
            }
        }
    }

    fn stls(&mut self) {
        if self.ctx.tls {
            self.bad_command(b"-ERR TLS is already active.\r\n");
        } else if !self.ctx.stls_offered {
            self.bad_command(b"-ERR STLS is not available here.\r\n");
        } else if !matches!(self.state, State::Authorization { .. }) {
            self.bad_command(b"-ERR STLS is not permitted after login.\r\n");
        } else {
            self.out.text(b"+OK Begin TLS negotiation now.\r\n");
            // Plaintext pipelined after STLS must not be read as if it came
            // through TLS (RFC 2595 section 3.1).
            self.input.clear();
            self.state = State::TlsPending;
            self.actions.push_back(Action::StartTls);
        }
    }

    fn user(&mut self, name: &[u8]) {
        if !self.in_authorization() {
            return;
        }
        if !capa::password_login_allowed(&self.ctx) {
            self.out.text(
                b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections.\r\n",
            );
            return;
        }
        // Decided by the domain, as the refusal after PASS would be: it
        // tells nothing of which users exist. A name with no domain (none
        // is known before TLS) can never log in, and may be one a client
        // of such a tenant uses over TLS: it is refused too, before the
        // password is sent in the clear.
        let tls_required = !self.ctx.tls
            && self.ctx.tls_required.as_ref().is_some_and(|domains| {
                self.resolve(name)
                    .is_none_or(|a| domains.contains(&a.domain))
            });
        if tls_required {
            // Any name an earlier USER gave is dropped with this one.
            self.state = State::Authorization { user: None };
            self.out.text(
                b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections.\r\n",
            );
            return;
        }
        self.state = State::Authorization {
            user: Some(name.to_vec()),
        };
        self.out.text(b"+OK\r\n");
    }

    /// Turns a login name into an address: `user@domain`, or a bare user in
    /// the connection's default (SNI) tenant when that tenant allows it.
    fn resolve(&self, name: &[u8]) -> Option<Address> {
        if name.contains(&b'@') {
            return Address::parse(name).ok();
        }
        let domain = self.ctx.default_domain.clone()?;
        Some(Address::new(LocalPart::parse(name).ok()?, domain))
    }

    fn start_auth(&mut self, name: &[u8], credentials: Credentials, mechanism: Mechanism) {
        match self.resolve(name) {
            Some(address) => {
                self.login = Some((address.clone(), mechanism));
                self.state = State::Authenticating;
                self.actions.push_back(Action::Authenticate(AuthRequest {
                    address,
                    credentials,
                    mechanism,
                    secure: self.ctx.tls,
                }));
            }
            None => self.auth_failed(b"-ERR [AUTH] Authentication failed.\r\n"),
        }
    }

    fn pass(&mut self, pw: &[u8]) {
        if !self.in_authorization() {
            return;
        }
        let State::Authorization { user } = &mut self.state else {
            return;
        };
        match user.take() {
            None => self.bad_command(b"-ERR USER first.\r\n"),
            Some(name) => self.start_auth(
                &name,
                Credentials::Password(Secret::new(pw)),
                Mechanism::UserPass,
            ),
        }
    }

    fn apop(&mut self, name: &[u8], digest: &[u8]) {
        if !self.in_authorization() {
            return;
        }
        let Some(banner) = self.ctx.apop_banner.clone() else {
            self.bad_command(b"-ERR APOP is not enabled here.\r\n");
            return;
        };
        let mut d = [0u8; 16];
        let hex = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
        let ok = digest.len() == 32
            && d.iter_mut().zip(digest.chunks(2)).all(|(o, pair)| {
                match (hex(pair[0]), hex(pair[1])) {
                    (Some(h), Some(l)) => {
                        *o = h << 4 | l;
                        true
                    }
                    _ => false,
                }
            });
        if !ok {
            self.auth_failed(b"-ERR [AUTH] Authentication failed.\r\n");
            return;
        }
        self.start_auth(
            name,
            Credentials::Apop { banner, digest: d },
            Mechanism::Apop,
        );
    }

    fn auth(&mut self, mechanism: &[u8], initial: Option<&[u8]>) {
        if !self.in_authorization() {
            return;
        }
        if mechanism.is_empty() {
            self.out.text(b"+OK\r\n");
            for m in capa::sasl_mechanisms(&self.ctx) {
                self.out.text(m.as_bytes());
                self.out.text(b"\r\n");
            }
            self.out.text(b".\r\n");
            return;
        }
        let mech = if mechanism.eq_ignore_ascii_case(b"PLAIN") {
            SaslMech::Plain
        } else if mechanism.eq_ignore_ascii_case(b"EXTERNAL") {
            SaslMech::External
        } else {
            self.out
                .text(b"-ERR Unsupported authentication mechanism.\r\n");
            return;
        };
        let offered = capa::sasl_mechanisms(&self.ctx)
            .any(|m| m.as_bytes() == mechanism.to_ascii_uppercase());
        if !offered {
            match mech {
                SaslMech::Plain => self.out.text(
                    b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections.\r\n",
                ),
                SaslMech::External => self
                    .out
                    .text(b"-ERR [AUTH] No verified client certificate on this connection.\r\n"),
            }
            return;
        }
        match initial {
            Some(data) => self.sasl_response(mech, data),
            None => {
                self.out.text(b"+ \r\n");
                self.state = State::SaslWait(mech);
            }
        }
    }

    fn sasl_response(&mut self, mech: SaslMech, data: &[u8]) {
        self.state = State::Authorization { user: None };
        if data == b"*" {
            self.out.text(b"-ERR Authentication cancelled.\r\n");
            return;
        }
        let decoded = match sasl::decode_b64(data) {
            Ok(d) => d,
            Err(sasl::SaslError::TooLong) => {
                return self.auth_failed(b"-ERR [AUTH] SASL response too long.\r\n")
            }
            Err(_) => return self.auth_failed(b"-ERR [AUTH] Invalid base64 data.\r\n"),
        };
        if decoded.len() > sasl::MAX_SASL_DECODED {
            return self.auth_failed(b"-ERR [AUTH] SASL response too long.\r\n");
        }
        match mech {
            SaslMech::Plain => {
                let Ok(p) = sasl::parse_plain(&decoded) else {
                    return self.auth_failed(b"-ERR [AUTH] Invalid PLAIN response.\r\n");
                };
                if !p.authzid.is_empty() {
                    let same = match (self.resolve(p.authzid), self.resolve(p.authcid)) {
                        (Some(a), Some(b)) => a == b,
                        _ => false,
                    };
                    if !same {
                        return self
                            .auth_failed(b"-ERR [AUTH] Not authorized to act as that user.\r\n");
                    }
                }
                let creds = Credentials::Password(Secret::new(p.password));
                let authcid = p.authcid.to_vec();
                self.start_auth(&authcid, creds, Mechanism::Plain);
            }
            SaslMech::External => {
                let Some(ext) = self.ctx.external.clone() else {
                    return self.auth_failed(b"-ERR [AUTH] Authentication failed.\r\n");
                };
                if !decoded.is_empty() && self.resolve(&decoded).as_ref() != Some(&ext.address) {
                    return self
                        .auth_failed(b"-ERR [AUTH] Not authorized to act as that user.\r\n");
                }
                let name = ext.address.to_string().into_bytes();
                self.start_auth(&name, Credentials::External, Mechanism::External);
            }
        }
    }

    fn commit(&mut self, t: Transaction<M>) {
        let expunge = t.expunge_set();
        if expunge.is_empty() {
            // Nothing to change in storage: the mailbox (and its lock) is
            // released right here.
            drop(t);
            self.out.text(b"+OK Logging out.\r\n");
            self.close();
            return;
        }
        self.actions.push_back(Action::Commit {
            mailbox: t.mailbox,
            expunge,
        });
    }

    fn lookup(t: &Transaction<M>, arg: MsgArg) -> Lookup {
        match arg {
            MsgArg::Invalid => Lookup::Invalid,
            MsgArg::Number(n) => {
                if n == 0 || n > t.mailbox.count() as u64 {
                    Lookup::NoSuch
                } else if t.deleted.get(n as usize - 1) {
                    Lookup::Deleted
                } else {
                    Lookup::Found(n as usize - 1)
                }
            }
        }
    }

    fn lookup_error(out: &mut Output, l: Lookup) {
        match l {
            Lookup::Invalid => out.text(b"-ERR Invalid message number.\r\n"),
            Lookup::NoSuch => out.text(b"-ERR There is no such message.\r\n"),
            Lookup::Deleted => out.text(b"-ERR Message is deleted.\r\n"),
            Lookup::Found(_) => {}
        }
    }

    /// Answers RETR of message `i` (found, not deleted).
    fn retr(t: &mut Transaction<M>, out: &mut Output, stats: &mut SessionStats, i: usize) {
        match t.mailbox.wire(i) {
            Ok(wire) => {
                let len = wire.len();
                let _ = write!(out.writer(), "+OK {} octets\r\n", t.mailbox.size(i));
                out.mail(i, 0, len);
                t.retrieved.set(i);
                stats.retr += 1;
                stats.retr_bytes += len as u64;
            }
            Err(e) => {
                tracing::error!(error = %e, msg = i + 1, "cannot read message for RETR");
                out.text(b"-ERR [SYS/TEMP] Cannot read that message now.\r\n");
            }
        }
    }

    /// Answers TOP of message `i` (found, not deleted) with `n` lines.
    fn top(t: &mut Transaction<M>, out: &mut Output, stats: &mut SessionStats, i: usize, n: u64) {
        match t.mailbox.top(i, n) {
            Ok(head) => {
                let len = head.len();
                out.text(b"+OK\r\n");
                out.mail(i, 0, len);
                out.text(b".\r\n");
                stats.top += 1;
                stats.top_bytes += len as u64 + 3;
            }
            Err(e) => {
                tracing::error!(error = %e, msg = i + 1, "cannot read message for TOP");
                out.text(b"-ERR [SYS/TEMP] Cannot read that message now.\r\n");
            }
        }
    }

    fn transaction(&mut self, cmd: Command<'_>) {
        let State::Transaction(t) = &mut self.state else {
            return;
        };
        let out = &mut self.out;
        let stats = &mut self.stats;
        // A RETR or TOP of a message not in memory waits for its fetch.
        let mut defer = |d: Deferred, job: M::Fetch| {
            self.fetching = Some(d);
            self.actions.push_back(Action::Fetch(job));
        };
        match cmd {
            Command::Stat => {
                let _ = write!(out.writer(), "+OK {} {}\r\n", t.live_count, t.live_size);
            }
            Command::Noop => out.text(b"+OK\r\n"),
            Command::Rset => {
                t.deleted.clear();
                t.live_count = t.mailbox.count();
                t.live_size = (0..t.live_count).map(|i| t.mailbox.size(i)).sum();
                let _ = write!(
                    out.writer(),
                    "+OK maildrop has {} messages ({} octets)\r\n",
                    t.live_count,
                    t.live_size
                );
            }
            Command::List(None) => {
                let mut w = out.writer();
                let _ = write!(
                    w,
                    "+OK {} messages ({} octets)\r\n",
                    t.live_count, t.live_size
                );
                for i in 0..t.mailbox.count() {
                    if !t.deleted.get(i) {
                        let _ = write!(w, "{} {}\r\n", i + 1, t.mailbox.size(i));
                    }
                }
                let _ = w.write_all(b".\r\n");
            }
            Command::List(Some(arg)) => match Self::lookup(t, arg) {
                Lookup::Found(i) => {
                    let _ = write!(out.writer(), "+OK {} {}\r\n", i + 1, t.mailbox.size(i));
                }
                other => Self::lookup_error(out, other),
            },
            Command::Uidl(None) => {
                let mut w = out.writer();
                let _ = w.write_all(b"+OK\r\n");
                for i in 0..t.mailbox.count() {
                    if !t.deleted.get(i) {
                        let _ = write!(w, "{} ", i + 1);
                        let _ = w.write_all(t.mailbox.uidl(i).as_bytes());
                        let _ = w.write_all(b"\r\n");
                    }
                }
                let _ = w.write_all(b".\r\n");
            }
            Command::Uidl(Some(arg)) => match Self::lookup(t, arg) {
                Lookup::Found(i) => {
                    let mut w = out.writer();
                    let _ = write!(w, "+OK {} ", i + 1);
                    let _ = w.write_all(t.mailbox.uidl(i).as_bytes());
                    let _ = w.write_all(b"\r\n");
                }
                other => Self::lookup_error(out, other),
            },
            Command::Retr(arg) => match Self::lookup(t, arg) {
                Lookup::Found(i) => match t.mailbox.fetch_for(i, Extent::Whole) {
                    Some(job) => defer(Deferred::Retr(i), job),
                    None => Self::retr(t, out, stats, i),
                },
                other => Self::lookup_error(out, other),
            },
            Command::Top(arg, count) => match (Self::lookup(t, arg), count) {
                (Lookup::Found(_), LineCount::Invalid) => out.text(b"-ERR Invalid line count.\r\n"),
                (Lookup::Found(i), LineCount::Lines(n)) => {
                    match t.mailbox.fetch_for(i, Extent::Head) {
                        Some(job) => defer(Deferred::Top(i, n), job),
                        None => Self::top(t, out, stats, i, n),
                    }
                }
                (other, _) => Self::lookup_error(out, other),
            },
            Command::Dele(arg) => match Self::lookup(t, arg) {
                Lookup::Found(i) => {
                    t.deleted.set(i);
                    t.live_count -= 1;
                    t.live_size -= t.mailbox.size(i);
                    stats.dele += 1;
                    let _ = write!(out.writer(), "+OK Message {} deleted.\r\n", i + 1);
                }
                Lookup::Deleted => out.text(b"-ERR Message is already deleted.\r\n"),
                other => Self::lookup_error(out, other),
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
