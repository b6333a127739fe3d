//! LMTP (RFC 2033) as a pure state machine: how mail reaches maildrops.
//!
//! Like the POP3 engine it takes bytes and gives back replies and actions;
//! the driver (a socket in the runtime, or a test) answers the one action,
//! `Deliver`, after the message is durable in every maildrop that accepted
//! it. Replies: one per command, and after DATA one per accepted recipient
//! (the LMTP difference from SMTP). Extensions: PIPELINING,
//! ENHANCEDSTATUSCODES, 8BITMIME, SIZE (the limit of the recipient's tenant).

pub mod data;

use std::collections::VecDeque;
use std::io::Write;

use pop3sd_storage::Address;

use data::{DataReceiver, Received};

/// Longest command line accepted (RFC 5321 section 4.5.3.1.4 says 512; some
/// MTAs send long parameter lists).
const MAX_LINE: usize = 2048;

/// What the directory says about a recipient at RCPT time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptCheck {
    /// Known; its canonical address and the tenant's size limit.
    Accept {
        address: Address,
        size_limit: u64,
    },
    Unknown,
    /// Already over quota (temporary unless the tenant says permanent).
    OverQuota {
        permanent: bool,
    },
}

/// Recipient lookup, provided by the driver (the tenant directory).
pub trait Recipients {
    fn check(&self, rcpt: &Address) -> RcptCheck;
    /// The largest size any tenant accepts (announced in LHLO).
    fn max_size(&self) -> u64;
}

/// How one recipient's delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryResult {
    Delivered,
    OverQuota { permanent: bool },
    TooBig,
    TempFail(String),
}

/// Work for the driver.
#[derive(Debug)]
pub enum Action {
    /// Append `wire` (already in POP3 wire form) to every recipient's
    /// maildrop durably, then call [`Session::delivered`] with one result
    /// per recipient, in order.
    Deliver {
        recipients: Vec<(Address, u64)>,
        wire: Vec<u8>,
        summary: pop3sd_storage::wire::WireSummary,
        /// The message's octets as the client sent them: what each
        /// recipient's size limit is held against, as SIZE and DATA's limit
        /// are (the stored form adds a Return-Path line and CRs).
        received: u64,
    },
    /// Send what is queued, then close.
    Close,
}

#[derive(Debug)]
enum State {
    Start,
    Ready,
    Mail {
        from: String,
        rcpts: Vec<(Address, u64)>,
    },
    Data {
        rcpts: Vec<(Address, u64)>,
        receiver: Box<DataReceiver>,
    },
    Delivering {
        rcpts: Vec<(Address, u64)>,
    },
    Closed,
}

/// One LMTP connection.
pub struct Session {
    hostname: String,
    state: State,
    input: Vec<u8>,
    out: Vec<u8>,
    actions: VecDeque<Action>,
    discarding: bool,
}

fn angle_addr(arg: &str) -> Option<&str> {
    let arg = arg.trim_start();
    let start = arg.find('<')?;
    let end = arg[start..].find('>')? + start;
    Some(&arg[start + 1..end])
}

fn params(arg: &str) -> impl Iterator<Item = (String, String)> + '_ {
    let after = arg.find('>').map_or("", |i| &arg[i + 1..]);
    after.split_whitespace().map(|p| match p.split_once('=') {
        Some((k, v)) => (k.to_ascii_uppercase(), v.to_string()),
        None => (p.to_ascii_uppercase(), String::new()),
    })
}

impl Session {
    /// A new session; the greeting is queued.
    pub fn new(hostname: &str) -> Self {
        let mut s = Session {
            hostname: hostname.to_string(),
            state: State::Start,
            input: Vec::new(),
            out: Vec::new(),
            actions: VecDeque::new(),
            discarding: false,
        };
        let _ = write!(s.out, "220 {hostname} LMTP pop3sd ready\r\n");
        s
    }

    /// Bytes to send (then call [`Session::consumed`]).
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Marks `n` output bytes as sent.
    pub fn consumed(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// True once the session is over.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// True between MAIL and the replies to its DATA: the transaction's
    /// recipients were checked against one directory, and its delivery
    /// must use the same one.
    pub fn in_transaction(&self) -> bool {
        matches!(
            self.state,
            State::Mail { .. } | State::Data { .. } | State::Delivering { .. }
        )
    }

    /// Ends the session between transactions because the server is
    /// shutting down (RFC 5321 section 3.8): the MTA takes its next
    /// message elsewhere or later, instead of having it cut mid-way.
    pub fn shut_down(&mut self) {
        if self.is_closed() {
            return;
        }
        let _ = write!(self.out, "421 4.3.2 {} shutting down\r\n", self.hostname);
        self.state = State::Closed;
        self.input.clear();
        self.actions.push_back(Action::Close);
    }

    /// True when more input can be taken (not waiting on a delivery).
    pub fn wants_input(&self) -> bool {
        !matches!(self.state, State::Delivering { .. } | State::Closed)
            && self.input.len() < 64 * 1024
    }

    /// Bytes of memory the session holds for a message: what the driver
    /// counts against `lmtp.max_memory`, since a message is held whole
    /// until every recipient has it. (Command input is bounded per
    /// connection, and the connections by `lmtp.max_connections`.)
    pub fn memory(&self) -> usize {
        let receiving = match &self.state {
            State::Data { receiver, .. } => receiver.memory(),
            _ => 0,
        };
        let queued: usize = self
            .actions
            .iter()
            .map(|a| match a {
                Action::Deliver { wire, .. } => wire.capacity(),
                Action::Close => 0,
            })
            .sum();
        receiving + queued
    }

    /// Gives up the message being received (or received and not yet taken
    /// for delivery) because LMTP connections together hold too much
    /// memory: each recipient is told `452 4.3.1` once the data has ended,
    /// and the MTA keeps the message queued and tries again. False when
    /// there is no such message (the memory is input, or a delivery's).
    pub fn shed_message(&mut self, dir: &dyn Recipients) -> bool {
        match &mut self.state {
            State::Data { receiver, .. } => {
                receiver.shed();
                true
            }
            State::Delivering { rcpts } => {
                let Some(at) = self
                    .actions
                    .iter()
                    .position(|a| matches!(a, Action::Deliver { .. }))
                else {
                    // Taken by the driver already: its delivery is under way.
                    return false;
                };
                self.actions.remove(at);
                let rcpts = std::mem::take(rcpts);
                self.state = State::Ready;
                self.refuse_shed(&rcpts);
                self.process(dir);
                true
            }
            _ => false,
        }
    }

    fn refuse_shed(&mut self, rcpts: &[(Address, u64)]) {
        for (a, _) in rcpts {
            let _ = write!(
                self.out,
                "452 4.3.1 <{a}> insufficient system storage, try again later\r\n"
            );
        }
    }

    /// Feeds received bytes; processes what it can.
    pub fn receive(&mut self, data: &[u8], dir: &dyn Recipients) {
        if self.is_closed() {
            return;
        }
        self.input.extend_from_slice(data);
        self.process(dir);
    }

    /// Result of an [`Action::Deliver`].
    pub fn delivered(&mut self, results: Vec<DeliveryResult>, dir: &dyn Recipients) {
        let State::Delivering { rcpts } = std::mem::replace(&mut self.state, State::Ready) else {
            return;
        };
        for (i, (addr, _)) in rcpts.iter().enumerate() {
            let r = results
                .get(i)
                .cloned()
                .unwrap_or(DeliveryResult::TempFail("no result".into()));
            let _ = match r {
                DeliveryResult::Delivered => write!(self.out, "250 2.0.0 <{addr}> delivered\r\n"),
                DeliveryResult::OverQuota { permanent: false } => {
                    write!(self.out, "452 4.2.2 <{addr}> mailbox is full\r\n")
                }
                DeliveryResult::OverQuota { permanent: true } => {
                    write!(self.out, "552 5.2.2 <{addr}> mailbox is full\r\n")
                }
                DeliveryResult::TooBig => write!(
                    self.out,
                    "552 5.3.4 <{addr}> message too big for this recipient\r\n"
                ),
                DeliveryResult::TempFail(why) => {
                    tracing::warn!(recipient = %addr, error = %why, "delivery failed");
                    write!(
                        self.out,
                        "451 4.3.0 <{addr}> temporary failure, try again\r\n"
                    )
                }
            };
        }
        self.process(dir);
    }

    fn reply(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn process(&mut self, dir: &dyn Recipients) {
        loop {
            match &mut self.state {
                State::Delivering { .. } | State::Closed => return,
                State::Data { receiver, rcpts } => {
                    let (used, done) = receiver.push(&self.input);
                    self.input.drain(..used);
                    let Some(received) = done else { return };
                    let rcpts = std::mem::take(rcpts);
                    match received {
                        Received::TooBig { received } => {
                            tracing::info!(received, "LMTP message over every size limit; refused");
                            for (a, _) in &rcpts {
                                let _ = write!(self.out, "552 5.3.4 <{a}> message too big\r\n");
                            }
                            self.state = State::Ready;
                        }
                        Received::Shed { .. } => {
                            self.refuse_shed(&rcpts);
                            self.state = State::Ready;
                        }
                        Received::Message {
                            wire,
                            summary,
                            received,
                        } => {
                            self.actions.push_back(Action::Deliver {
                                recipients: rcpts.clone(),
                                wire,
                                summary,
                                received,
                            });
                            self.state = State::Delivering { rcpts };
                            return;
                        }
                    }
                }
                _ => {
                    let Some(nl) = self.input.iter().position(|&b| b == b'\n') else {
                        if self.input.len() > MAX_LINE {
                            self.input.clear();
                            self.discarding = true;
                        }
                        return;
                    };
                    let raw: Vec<u8> = self.input.drain(..=nl).collect();
                    if std::mem::take(&mut self.discarding) || raw.len() > MAX_LINE {
                        self.reply("500 5.5.2 Line too long");
                        continue;
                    }
                    let line = String::from_utf8_lossy(&raw);
                    let line = line.trim_end_matches(['\r', '\n']);
                    self.command(line, dir);
                }
            }
        }
    }

    fn command(&mut self, line: &str, dir: &dyn Recipients) {
        // A CR or other control byte inside a command would reach the
        // stored message through Return-Path and forge header lines.
        if line.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return self.reply("501 5.5.2 Control characters are not allowed in commands");
        }
        let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
        let verb = verb.to_ascii_uppercase();
        match verb.as_str() {
            "LHLO" => {
                if arg.trim().is_empty() {
                    return self.reply("501 5.5.4 LHLO needs a host name");
                }
                let host = self.hostname.clone();
                let _ = write!(
                    self.out,
                    "250-{host}\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SIZE {}\r\n",
                    dir.max_size()
                );
                self.state = State::Ready;
            }
            "HELO" | "EHLO" => self.reply("500 5.5.1 This is LMTP: use LHLO"),
            "MAIL" => {
                if !matches!(self.state, State::Ready) {
                    return self.reply("503 5.5.1 LHLO first, or RSET");
                }
                let Some(rest) = arg
                    .get(..5)
                    .filter(|p| p.eq_ignore_ascii_case("FROM:"))
                    .map(|_| &arg[5..])
                else {
                    return self.reply("501 5.5.4 Syntax: MAIL FROM:<address>");
                };
                let Some(from) = angle_addr(rest) else {
                    return self.reply("501 5.5.4 Syntax: MAIL FROM:<address>");
                };
                for (k, v) in params(rest) {
                    match k.as_str() {
                        "SIZE" => match v.parse::<u64>() {
                            Ok(n) if n > dir.max_size() => {
                                return self.reply("552 5.3.4 Message too big");
                            }
                            Ok(_) => {}
                            Err(_) => return self.reply("501 5.5.4 Bad SIZE value"),
                        },
                        "BODY"
                            if v.eq_ignore_ascii_case("8BITMIME")
                                || v.eq_ignore_ascii_case("7BIT") => {}
                        _ => return self.reply("555 5.5.4 Unsupported parameter"),
                    }
                }
                self.state = State::Mail {
                    from: from.to_string(),
                    rcpts: Vec::new(),
                };
                self.reply("250 2.1.0 Sender OK");
            }
            "RCPT" => {
                let State::Mail { rcpts, .. } = &mut self.state else {
                    return self.reply("503 5.5.1 MAIL first");
                };
                let Some(rest) = arg
                    .get(..3)
                    .filter(|p| p.eq_ignore_ascii_case("TO:"))
                    .map(|_| &arg[3..])
                else {
                    return self.reply("501 5.5.4 Syntax: RCPT TO:<address>");
                };
                let Some(addr) = angle_addr(rest) else {
                    return self.reply("501 5.5.4 Syntax: RCPT TO:<address>");
                };
                let Ok(parsed) = Address::parse(addr.as_bytes()) else {
                    return self.reply("550 5.1.3 Bad recipient address syntax");
                };
                if rcpts.len() >= 1000 {
                    return self.reply("452 4.5.3 Too many recipients");
                }
                let shown = parsed.to_string();
                match dir.check(&parsed) {
                    RcptCheck::Accept {
                        address,
                        size_limit,
                    } => {
                        rcpts.push((address, size_limit));
                        self.reply("250 2.1.5 Recipient OK");
                    }
                    RcptCheck::Unknown => {
                        let _ = write!(self.out, "550 5.1.1 <{shown}> no such user here\r\n");
                    }
                    RcptCheck::OverQuota { permanent: false } => {
                        let _ = write!(self.out, "452 4.2.2 <{shown}> mailbox is full\r\n");
                    }
                    RcptCheck::OverQuota { permanent: true } => {
                        let _ = write!(self.out, "552 5.2.2 <{shown}> mailbox is full\r\n");
                    }
                }
            }
            "DATA" => {
                let State::Mail { from, rcpts } = &mut self.state else {
                    return self.reply("503 5.5.1 MAIL and RCPT first");
                };
                if rcpts.is_empty() {
                    // RFC 2033 section 4.2: 503, not SMTP's 554.
                    return self.reply("503 5.5.1 No valid recipients");
                }
                let limit = rcpts.iter().map(|(_, l)| *l).max().unwrap_or(0);
                let prefix = format!("Return-Path: <{from}>\r\n");
                let rcpts = std::mem::take(rcpts);
                self.state = State::Data {
                    rcpts,
                    receiver: Box::new(DataReceiver::new(prefix.as_bytes(), limit)),
                };
                self.reply("354 2.0.0 Start mail input; end with <CRLF>.<CRLF>");
            }
            "RSET" => {
                if !matches!(self.state, State::Start) {
                    self.state = State::Ready;
                }
                self.reply("250 2.0.0 OK");
            }
            "NOOP" => self.reply("250 2.0.0 OK"),
            "VRFY" => self.reply("252 2.5.2 Cannot verify, but will accept and attempt delivery"),
            "QUIT" => {
                let host = self.hostname.clone();
                let _ = write!(self.out, "221 2.0.0 {host} closing connection\r\n");
                self.state = State::Closed;
                self.actions.push_back(Action::Close);
            }
            _ => self.reply("500 5.5.2 Unknown command"),
        }
    }
}

#[cfg(test)]
mod tests;
