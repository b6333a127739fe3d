//! Tenant (domain) and user (local part) names.
//!
//! Every byte a client sends that ends up naming a directory passes through
//! [`Domain::parse`] or [`LocalPart::parse`] first. The rules are strict on
//! purpose: a name that is accepted can never address anything outside its own
//! directory, because it contains no separator, no dot-only component, no
//! leading dot and no control byte.
//!
//! Normalization:
//! - domains are ASCII, lowercased, one trailing dot (FQDN form) is dropped;
//!   labels are 1 to 63 of `a-z 0-9 -`, not starting or ending with `-`; the
//!   whole name is at most 253 octets. Internationalized domains are accepted
//!   in their A-label (`xn--`) form only.
//! - local parts are ASCII, lowercased (pop3sd treats them case-insensitively,
//!   as most operators configure Dovecot with `%Lu`), 1 to 64 octets of RFC 5322
//!   `atext` without `/`, plus `.` between other characters (no leading,
//!   trailing or doubled dot).

use std::fmt;

/// Why a name was refused. Each variant names the rule that was broken, so a
/// log line or CLI error can say exactly what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {len} octets, longer than the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("byte 0x{byte:02x} at position {at} is not allowed")]
    Forbidden { byte: u8, at: usize },
    #[error("name starts with a dot")]
    LeadingDot,
    #[error("name ends with a dot")]
    TrailingDot,
    #[error("name contains an empty component (\"..\")")]
    EmptyComponent,
    #[error("domain label is longer than 63 octets")]
    LabelTooLong,
    #[error("domain label starts or ends with a hyphen")]
    LabelHyphen,
    #[error("address has no '@'")]
    MissingAt,
}

/// Maximum length of a domain name (RFC 1035 presentation form without the root dot).
pub const MAX_DOMAIN: usize = 253;
/// Maximum length of a local part (RFC 5321 section 4.5.3.1.1).
pub const MAX_LOCAL: usize = 64;

/// A validated, normalized tenant domain; safe to use as one path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

/// A validated, normalized user name within a tenant; safe to use as one path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalPart(String);

/// A full login or delivery address: the pair that names one maildrop.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    pub local: LocalPart,
    pub domain: Domain,
}

impl Domain {
    /// Validates and normalizes a domain given as client bytes.
    pub fn parse(input: impl AsRef<[u8]>) -> Result<Self, NameError> {
        let mut bytes = input.as_ref();
        if let Some(stripped) = bytes.strip_suffix(b".") {
            // One trailing dot is the FQDN spelling of the same name.
            if !stripped.is_empty() {
                bytes = stripped;
            }
        }
        if bytes.is_empty() {
            return Err(NameError::Empty);
        }
        if bytes.len() > MAX_DOMAIN {
            return Err(NameError::TooLong {
                len: bytes.len(),
                max: MAX_DOMAIN,
            });
        }
        for (at, &b) in bytes.iter().enumerate() {
            if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
                return Err(NameError::Forbidden { byte: b, at });
            }
        }
        if bytes[0] == b'.' {
            return Err(NameError::LeadingDot);
        }
        if bytes[bytes.len() - 1] == b'.' {
            return Err(NameError::TrailingDot);
        }
        for label in bytes.split(|&b| b == b'.') {
            if label.is_empty() {
                return Err(NameError::EmptyComponent);
            }
            if label.len() > 63 {
                return Err(NameError::LabelTooLong);
            }
            if label[0] == b'-' || label[label.len() - 1] == b'-' {
                return Err(NameError::LabelHyphen);
            }
        }
        // All bytes are ASCII, checked above.
        let s: String = bytes
            .iter()
            .map(|b| b.to_ascii_lowercase() as char)
            .collect();
        Ok(Domain(s))
    }

    /// The normalized name, also its directory name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_local_byte(b: u8) -> bool {
    // RFC 5322 atext without '/', plus '.' (checked for position separately).
    b.is_ascii_alphanumeric() || b"!#$%&'*+-=?^_`{|}~.".contains(&b)
}

impl LocalPart {
    /// Validates and normalizes a local part given as client bytes.
    pub fn parse(input: impl AsRef<[u8]>) -> Result<Self, NameError> {
        let bytes = input.as_ref();
        if bytes.is_empty() {
            return Err(NameError::Empty);
        }
        if bytes.len() > MAX_LOCAL {
            return Err(NameError::TooLong {
                len: bytes.len(),
                max: MAX_LOCAL,
            });
        }
        for (at, &b) in bytes.iter().enumerate() {
            if !is_local_byte(b) {
                return Err(NameError::Forbidden { byte: b, at });
            }
        }
        if bytes[0] == b'.' {
            return Err(NameError::LeadingDot);
        }
        if bytes[bytes.len() - 1] == b'.' {
            return Err(NameError::TrailingDot);
        }
        if bytes.windows(2).any(|w| w == b"..") {
            return Err(NameError::EmptyComponent);
        }
        let s: String = bytes
            .iter()
            .map(|b| b.to_ascii_lowercase() as char)
            .collect();
        Ok(LocalPart(s))
    }

    /// The normalized name, also its directory name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Address {
    /// Parses `local@domain`; the last `@` separates the two (local parts may
    /// not contain `@` under our rules, so there is only one).
    pub fn parse(input: impl AsRef<[u8]>) -> Result<Self, NameError> {
        let bytes = input.as_ref();
        let at = bytes
            .iter()
            .rposition(|&b| b == b'@')
            .ok_or(NameError::MissingAt)?;
        Ok(Address {
            local: LocalPart::parse(&bytes[..at])?,
            domain: Domain::parse(&bytes[at + 1..])?,
        })
    }

    /// Builds an address from parts already validated.
    pub fn new(local: LocalPart, domain: Domain) -> Self {
        Address { local, domain }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for LocalPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_normalize() {
        assert_eq!(
            Domain::parse("Example.COM").unwrap().as_str(),
            "example.com"
        );
        assert_eq!(
            Domain::parse("example.com.").unwrap().as_str(),
            "example.com"
        );
        assert_eq!(
            Domain::parse("xn--bcher-kva.example").unwrap().as_str(),
            "xn--bcher-kva.example"
        );
        assert_eq!(Domain::parse("localhost").unwrap().as_str(), "localhost");
    }

    #[test]
    fn local_parts_normalize() {
        assert_eq!(LocalPart::parse("Alice").unwrap().as_str(), "alice");
        assert_eq!(LocalPart::parse("a.b+tag").unwrap().as_str(), "a.b+tag");
    }

    #[test]
    fn addresses_split_on_at() {
        let a = Address::parse("Bob@Example.org").unwrap();
        assert_eq!(a.to_string(), "bob@example.org");
        assert_eq!(Address::parse("bob"), Err(NameError::MissingAt));
        assert!(Address::parse("a@b@c").is_err());
    }

    #[test]
    fn hostile_names_are_rejected() {
        let hostile: &[&[u8]] = &[
            b"",
            b".",
            b"..",
            b"../etc",
            b"a/b",
            b"a\\b",
            b"/abs",
            b"a\0b",
            b"a\nb",
            b"a\rb",
            b"\x7f",
            b".hidden",
            b"trailing.",
            b"a..b",
            b"caf\xc3\xa9",
            b"\xff\xfe",
            b"a b",
            b"a@b",
        ];
        for name in hostile {
            assert!(
                LocalPart::parse(name).is_err(),
                "local part {name:?} accepted"
            );
            // "trailing." is the FQDN spelling of a valid domain, normalized.
            if *name != b"trailing." {
                assert!(Domain::parse(name).is_err(), "domain {name:?} accepted");
            }
        }
        assert!(LocalPart::parse([b'a'; 65]).is_err());
        assert!(Domain::parse([b'a'; 64]).is_err());
        let long = vec!["abcdefghi"; 30].join(".");
        assert!(Domain::parse(long).is_err());
        assert_eq!(Domain::parse("-a.com"), Err(NameError::LabelHyphen));
    }
}
