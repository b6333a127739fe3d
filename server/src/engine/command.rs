//! Parsing one command line into a [`Command`].
//!
//! Keywords are case-insensitive (RFC 1939 section 3). An argument may be as
//! long as the line allows: RFC 2449 section 4 replaced RFC 1939's 40
//! characters per argument with 255 octets per command line, and a login
//! name such as `firstname.lastname@subsidiary.example.com` is longer than
//! 40. PASS takes the rest of the line as its one argument (RFC 1939 allows
//! spaces in passwords). Runs of spaces between words are tolerated, as some
//! clients send two. Message numbers are plain decimal: "0", "-1", "+1",
//! "1e3" or anything past 2^64 are not numbers of any message and are
//! refused by the engine with a clear -ERR.

/// Longest mechanism name SASL allows (RFC 4422 section 3.1).
const MAX_MECHANISM: usize = 20;

/// A parsed command. Borrowed arguments point into the input line.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Capa,
    Stls,
    User(&'a [u8]),
    Pass(&'a [u8]),
    Apop {
        name: &'a [u8],
        digest: &'a [u8],
    },
    Auth {
        mechanism: &'a [u8],
        initial: Option<&'a [u8]>,
    },
    Quit,
    Stat,
    List(Option<MsgArg>),
    Retr(MsgArg),
    Dele(MsgArg),
    Noop,
    Rset,
    Top(MsgArg, LineCount),
    Uidl(Option<MsgArg>),
}

/// A message-number argument as the client wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgArg {
    /// A decimal number that fits in u64 (may still be 0 or out of range).
    Number(u64),
    /// Not a plain decimal number (sign, letters, overflow...).
    Invalid,
}

/// The line count of TOP. A count too large for u64 means "all lines".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineCount {
    Lines(u64),
    Invalid,
}

/// Why a line is not a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    Unknown,
    /// The keyword is known but its arguments are wrong: this says how.
    Syntax(&'static str),
}

fn parse_msg(arg: &[u8]) -> MsgArg {
    if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
        return MsgArg::Invalid;
    }
    let mut n: u64 = 0;
    for &d in arg {
        n = match n
            .checked_mul(10)
            .and_then(|n| n.checked_add((d - b'0') as u64))
        {
            Some(v) => v,
            None => return MsgArg::Invalid,
        };
    }
    MsgArg::Number(n)
}

fn parse_count(arg: &[u8]) -> LineCount {
    if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
        return LineCount::Invalid;
    }
    let mut n: u64 = 0;
    for &d in arg {
        n = n.saturating_mul(10).saturating_add((d - b'0') as u64);
    }
    LineCount::Lines(n)
}

/// Splits the line into keyword and at most `max` space-separated args.
/// Runs of spaces are tolerated (some clients send two).
fn split_args(rest: &[u8]) -> impl Iterator<Item = &[u8]> {
    rest.split(|&b| b == b' ').filter(|a| !a.is_empty())
}

/// Parses one line (without its line ending).
pub fn parse(line: &[u8]) -> Result<Command<'_>, ParseError> {
    let (keyword, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[line.len()..]),
    };
    if keyword.len() > 4 || keyword.is_empty() {
        return Err(ParseError::Unknown);
    }
    let mut kw = [0u8; 4];
    for (d, s) in kw.iter_mut().zip(keyword) {
        *d = s.to_ascii_uppercase();
    }
    let kw = &kw[..keyword.len()];
    // At most three arguments are kept (no allocation per command); a fourth
    // only matters as "too many", which a slice of three cannot match.
    let mut argv: [&[u8]; 3] = [&[]; 3];
    let mut argc = 0;
    if kw != b"PASS" && kw != b"AUTH" {
        for a in split_args(rest) {
            if argc == argv.len() {
                return Err(ParseError::Syntax("too many arguments"));
            }
            argv[argc] = a;
            argc += 1;
        }
    }
    let args = &argv[..argc];
    let no_args = |c: Command<'static>| {
        if args.is_empty() {
            Ok(c)
        } else {
            Err(ParseError::Syntax("this command takes no arguments"))
        }
    };
    match kw {
        b"CAPA" => no_args(Command::Capa),
        b"STLS" => no_args(Command::Stls),
        b"QUIT" => no_args(Command::Quit),
        b"STAT" => no_args(Command::Stat),
        b"NOOP" => no_args(Command::Noop),
        b"RSET" => no_args(Command::Rset),
        b"USER" => match args {
            [name] => Ok(Command::User(name)),
            _ => Err(ParseError::Syntax("USER takes one argument")),
        },
        b"PASS" => {
            if rest.is_empty() {
                Err(ParseError::Syntax("PASS takes one argument"))
            } else {
                Ok(Command::Pass(rest))
            }
        }
        b"APOP" => match args {
            [name, digest] => Ok(Command::Apop { name, digest }),
            _ => Err(ParseError::Syntax("APOP takes a name and a digest")),
        },
        b"AUTH" => {
            // The mechanism, then the initial response if any: spaces around
            // either are not part of them ("AUTH  PLAIN" names PLAIN, and
            // "AUTH PLAIN " has no initial response).
            let rest = rest.trim_ascii();
            let (mechanism, initial) = match rest.iter().position(|&b| b == b' ') {
                Some(i) => (&rest[..i], Some(rest[i + 1..].trim_ascii())),
                None => (rest, None),
            };
            if mechanism.is_empty() {
                // Bare AUTH lists the mechanisms (RFC 1734 style, used by some clients).
                return Ok(Command::Auth {
                    mechanism,
                    initial: None,
                });
            }
            if mechanism.len() > MAX_MECHANISM {
                return Err(ParseError::Syntax("mechanism name too long"));
            }
            Ok(Command::Auth { mechanism, initial })
        }
        b"LIST" => match args {
            [] => Ok(Command::List(None)),
            [n] => Ok(Command::List(Some(parse_msg(n)))),
            _ => Err(ParseError::Syntax("LIST takes at most one argument")),
        },
        b"UIDL" => match args {
            [] => Ok(Command::Uidl(None)),
            [n] => Ok(Command::Uidl(Some(parse_msg(n)))),
            _ => Err(ParseError::Syntax("UIDL takes at most one argument")),
        },
        b"RETR" => match args {
            [n] => Ok(Command::Retr(parse_msg(n))),
            _ => Err(ParseError::Syntax("RETR takes one message number")),
        },
        b"DELE" => match args {
            [n] => Ok(Command::Dele(parse_msg(n))),
            _ => Err(ParseError::Syntax("DELE takes one message number")),
        },
        b"TOP" => match args {
            [n, l] => Ok(Command::Top(parse_msg(n), parse_count(l))),
            _ => Err(ParseError::Syntax(
                "TOP takes a message number and a line count",
            )),
        },
        _ => Err(ParseError::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_case_insensitive() {
        assert_eq!(parse(b"stat"), Ok(Command::Stat));
        assert_eq!(parse(b"StAt"), Ok(Command::Stat));
        assert_eq!(parse(b"list 3"), Ok(Command::List(Some(MsgArg::Number(3)))));
    }

    #[test]
    fn message_numbers() {
        assert_eq!(parse(b"RETR 0"), Ok(Command::Retr(MsgArg::Number(0))));
        for bad in ["-1", "+1", "1e3", "18446744073709551616", "x", "1.0"] {
            assert_eq!(
                parse(format!("RETR {bad}").as_bytes()),
                Ok(Command::Retr(MsgArg::Invalid)),
                "{bad}"
            );
        }
        assert_eq!(
            parse(b"TOP 1 99999999999999999999999"),
            Ok(Command::Top(MsgArg::Number(1), LineCount::Lines(u64::MAX)))
        );
    }

    #[test]
    fn pass_keeps_spaces() {
        assert_eq!(
            parse(b"PASS my secret  pw"),
            Ok(Command::Pass(b"my secret  pw"))
        );
        assert!(parse(b"PASS").is_err());
    }

    #[test]
    fn argument_rules() {
        assert!(matches!(parse(b"STAT 1"), Err(ParseError::Syntax(_))));
        assert!(matches!(parse(b"RETR"), Err(ParseError::Syntax(_))));
        // Longer than RFC 1939's 40 characters: RFC 2449 lifted that.
        let long = "firstname.lastname@subsidiary.example-company.com";
        assert_eq!(
            parse(format!("USER {long}").as_bytes()),
            Ok(Command::User(long.as_bytes()))
        );
        let digest = "c4c9334bac560ecc979e58001b3e22fb";
        assert_eq!(
            parse(format!("APOP {long} {digest}").as_bytes()),
            Ok(Command::Apop {
                name: long.as_bytes(),
                digest: digest.as_bytes()
            })
        );
        assert_eq!(parse(b"XYZZY"), Err(ParseError::Unknown));
        assert_eq!(parse(b""), Err(ParseError::Unknown));
        assert_eq!(parse(b"RETR  2"), Ok(Command::Retr(MsgArg::Number(2))));
    }

    #[test]
    fn auth_forms() {
        assert_eq!(
            parse(b"AUTH PLAIN AGFAYg=="),
            Ok(Command::Auth {
                mechanism: b"PLAIN",
                initial: Some(b"AGFAYg==")
            })
        );
        assert_eq!(
            parse(b"AUTH EXTERNAL"),
            Ok(Command::Auth {
                mechanism: b"EXTERNAL",
                initial: None
            })
        );
        assert_eq!(
            parse(b"AUTH"),
            Ok(Command::Auth {
                mechanism: b"",
                initial: None
            })
        );
        // Stray spaces: around the mechanism, or after it with no response.
        for line in ["AUTH  PLAIN", "AUTH PLAIN ", "AUTH   PLAIN   "] {
            assert_eq!(
                parse(line.as_bytes()),
                Ok(Command::Auth {
                    mechanism: b"PLAIN",
                    initial: None
                }),
                "{line:?}"
            );
        }
        assert_eq!(
            parse(b"AUTH  PLAIN  AGFAYg== "),
            Ok(Command::Auth {
                mechanism: b"PLAIN",
                initial: Some(b"AGFAYg==")
            })
        );
        assert!(matches!(
            parse(format!("AUTH {}", "X".repeat(21)).as_bytes()),
            Err(ParseError::Syntax(_))
        ));
    }
}
