//! A checking POP3 client: every response is verified (+OK where it must
//! be, multi-line terminators, sizes agreeing with LIST) and every failure
//! is classified, never hidden.

use std::io;

use crate::tls_stream::TlsStream;

/// Why an operation failed; `kind()` names the counter it goes to.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("tls: {0}")]
    Tls(io::Error),
    #[error("i/o: {0}")]
    Io(io::Error),
    #[error("server closed the connection")]
    Eof,
    #[error("{command}: {response}")]
    Err {
        command: &'static str,
        response: String,
    },
    #[error("malformed response to {0}")]
    Malformed(&'static str),
    #[error("message {msg}: LIST said {listed} octets, RETR gave {got}")]
    SizeMismatch { msg: usize, listed: u64, got: u64 },
    #[error("operation timed out")]
    Timeout,
    #[error("login: {0}")]
    Login(String),
}

impl From<io::Error> for OpError {
    /// TLS protocol failures (see `tls_stream`) count as `tls`, a close in
    /// the middle of a handshake as `eof`, the rest as `io`.
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => OpError::Tls(e),
            io::ErrorKind::UnexpectedEof => OpError::Eof,
            _ => OpError::Io(e),
        }
    }
}

impl OpError {
    /// Counter name in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            OpError::Connect(_) => "connect",
            OpError::Tls(_) => "tls",
            OpError::Io(_) => "io",
            OpError::Eof => "eof",
            OpError::Err { .. } => "err_response",
            OpError::Malformed(_) => "malformed",
            OpError::SizeMismatch { .. } => "size_mismatch",
            OpError::Timeout => "timeout",
            OpError::Login(_) => "login",
        }
    }
}

/// How to log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoginMethod {
    /// USER and PASS.
    User,
    /// AUTH PLAIN with an initial response.
    Plain,
}

/// A POP3 session over TLS.
pub struct Pop3 {
    pub stream: TlsStream,
    pub bytes_in: u64,
}

impl Pop3 {
    pub fn new(stream: TlsStream) -> Self {
        Pop3 {
            stream,
            bytes_in: 0,
        }
    }

    /// One CRLF-terminated line (without CRLF).
    pub async fn line(&mut self) -> Result<Vec<u8>, OpError> {
        loop {
            let buf = self.stream.buffered();
            if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let mut line = buf[..i].to_vec();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.stream.consume(i + 1);
                self.bytes_in += i as u64 + 1;
                return Ok(line);
            }
            if buf.len() > 4096 {
                return Err(OpError::Malformed("line longer than 4096 octets"));
            }
            if !self.stream.fill().await? {
                return Err(OpError::Eof);
            }
        }
    }

    /// Reads a status line and requires +OK.
    pub async fn ok(&mut self, command: &'static str) -> Result<Vec<u8>, OpError> {
        let l = self.line().await?;
        if l.starts_with(b"+OK") {
            Ok(l)
        } else {
            Err(OpError::Err {
                command,
                response: String::from_utf8_lossy(&l).into_owned(),
            })
        }
    }

    /// Sends a command and requires +OK.
    pub async fn command(&mut self, command: &'static str, line: &str) -> Result<Vec<u8>, OpError> {
        self.stream.send(line.as_bytes()).await?;
        self.ok(command).await
    }

    /// Reads a multi-line body after its +OK, up to the "." line. Returns the
    /// unstuffed octet count (CRLF included) and, if asked, the lines.
    pub async fn body(&mut self, keep_lines: bool) -> Result<(u64, Vec<Vec<u8>>), OpError> {
        let mut octets = 0u64;
        let mut lines = Vec::new();
        loop {
            let buf = self.stream.buffered();
            let mut consumed = 0;
            let mut done = false;
            while let Some(i) = buf[consumed..].iter().position(|&b| b == b'\n') {
                let line = &buf[consumed..consumed + i + 1];
                consumed += i + 1;
                if line == b".\r\n" {
                    done = true;
                    break;
                }
                if !line.ends_with(b"\r\n") {
                    return Err(OpError::Malformed("bare LF in a multi-line response"));
                }
                let content = if line.first() == Some(&b'.') {
                    &line[1..]
                } else {
                    line
                };
                octets += content.len() as u64;
                if keep_lines {
                    lines.push(content[..content.len() - 2].to_vec());
                }
            }
            self.stream.consume(consumed);
            self.bytes_in += consumed as u64;
            if done {
                return Ok((octets, lines));
            }
            if !self.stream.fill().await? {
                return Err(OpError::Eof);
            }
        }
    }

    /// Reads the greeting.
    pub async fn greeting(&mut self) -> Result<(), OpError> {
        self.ok("greeting").await.map(|_| ())
    }

    /// Logs in.
    pub async fn login(
        &mut self,
        method: LoginMethod,
        user: &str,
        password: &str,
    ) -> Result<(), OpError> {
        let r = match method {
            LoginMethod::User => {
                self.command("USER", &format!("USER {user}\r\n")).await?;
                self.command("PASS", &format!("PASS {password}\r\n")).await
            }
            LoginMethod::Plain => {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD
                    .encode(format!("\0{user}\0{password}"));
                self.command("AUTH", &format!("AUTH PLAIN {b64}\r\n")).await
            }
        };
        r.map(|_| ()).map_err(|e| match e {
            OpError::Err { response, .. } => OpError::Login(response),
            other => other,
        })
    }

    /// STAT: (messages, octets).
    pub async fn stat(&mut self) -> Result<(usize, u64), OpError> {
        let l = self.command("STAT", "STAT\r\n").await?;
        let s = String::from_utf8_lossy(&l);
        let mut f = s.split_whitespace().skip(1);
        match (
            f.next().and_then(|x| x.parse().ok()),
            f.next().and_then(|x| x.parse().ok()),
        ) {
            (Some(n), Some(o)) => Ok((n, o)),
            _ => Err(OpError::Malformed("STAT")),
        }
    }

    /// LIST: sizes by message number (index 0 is message 1).
    pub async fn list(&mut self) -> Result<Vec<u64>, OpError> {
        self.command("LIST", "LIST\r\n").await?;
        let (_, lines) = self.body(true).await?;
        let mut sizes = Vec::with_capacity(lines.len());
        for (i, l) in lines.iter().enumerate() {
            let s = String::from_utf8_lossy(l);
            let mut f = s.split_whitespace();
            match (
                f.next().and_then(|x| x.parse::<usize>().ok()),
                f.next().and_then(|x| x.parse().ok()),
            ) {
                (Some(n), Some(size)) if n == i + 1 => sizes.push(size),
                _ => return Err(OpError::Malformed("LIST")),
            }
        }
        Ok(sizes)
    }

    /// UIDL: number of entries (see [`check_uidl_listing`]).
    pub async fn uidl(&mut self) -> Result<usize, OpError> {
        self.command("UIDL", "UIDL\r\n").await?;
        let (_, lines) = self.body(true).await?;
        check_uidl_listing(&lines)
    }

    /// RETR n, checking the octet count against LIST's size. Returns bytes.
    pub async fn retr(&mut self, n: usize, listed: u64) -> Result<u64, OpError> {
        self.stream.send(format!("RETR {n}\r\n").as_bytes()).await?;
        self.ok("RETR").await?;
        let (octets, _) = self.body(false).await?;
        if octets != listed {
            return Err(OpError::SizeMismatch {
                msg: n,
                listed,
                got: octets,
            });
        }
        Ok(octets)
    }

    /// QUIT, requiring +OK.
    pub async fn quit(&mut self) -> Result<(), OpError> {
        self.command("QUIT", "QUIT\r\n").await.map(|_| ())
    }
}

/// Checks a UIDL listing: "n uid" lines, each uid 1-70 octets of
/// 0x21-0x7E (RFC 1939), and no uid twice in one maildrop (a client keyed
/// on UIDs would lose mail). Numbered 1, 2, ... without gaps because the
/// load generator never deletes in the session (RFC 1939 leaves messages
/// marked deleted out of the listing).
pub fn check_uidl_listing(lines: &[Vec<u8>]) -> Result<usize, OpError> {
    let mut seen = std::collections::HashSet::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        let mut f = l.split(|&b| b == b' ');
        let n = f
            .next()
            .filter(|n| !n.is_empty() && n.iter().all(u8::is_ascii_digit))
            .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok());
        let uid = f.next().ok_or(OpError::Malformed("UIDL"))?;
        if n != Some(i + 1) || f.next().is_some() {
            return Err(OpError::Malformed("UIDL"));
        }
        if uid.is_empty() || uid.len() > 70 || !uid.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err(OpError::Malformed("UIDL value"));
        }
        if !seen.insert(uid) {
            return Err(OpError::Malformed("UIDL value repeated"));
        }
    }
    Ok(lines.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(lines: &[&str]) -> Vec<Vec<u8>> {
        lines.iter().map(|l| l.as_bytes().to_vec()).collect()
    }

    #[test]
    fn io_errors_are_counted_by_what_failed() {
        let kind = |k: io::ErrorKind| OpError::from(io::Error::new(k, "x")).kind();
        assert_eq!(kind(io::ErrorKind::InvalidData), "tls");
        assert_eq!(kind(io::ErrorKind::UnexpectedEof), "eof");
        assert_eq!(kind(io::ErrorKind::ConnectionReset), "io");
    }

    #[test]
    fn uidl_listings_are_checked() {
        assert_eq!(check_uidl_listing(&listing(&["1 a", "2 b"])).unwrap(), 2);
        assert_eq!(check_uidl_listing(&[]).unwrap(), 0);
        let long = format!("1 {}", "x".repeat(71));
        for (bad, why) in [
            (listing(&["1 a", "2 a"]), "UIDL value repeated"),
            (listing(&["2 a"]), "UIDL"),
            (listing(&["1 a", "3 b"]), "UIDL"),
            (listing(&["1"]), "UIDL"),
            (listing(&["1 a b"]), "UIDL"),
            (listing(&["x a"]), "UIDL"),
            (listing(&["+1 a"]), "UIDL"),
            (listing(&["1 \x7f"]), "UIDL value"),
            (listing(&[long.as_str()]), "UIDL value"),
        ] {
            match check_uidl_listing(&bad) {
                Err(OpError::Malformed(w)) => assert_eq!(w, why, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let max = format!("1 {}", "x".repeat(70));
        assert_eq!(check_uidl_listing(&listing(&[max.as_str()])).unwrap(), 1);
    }
}
