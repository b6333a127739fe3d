//! The authentication request the engine hands to the driver, and the answer.
//!
//! The engine decides *when* to authenticate and what to answer; verifying a
//! password, mapping a certificate and opening the maildrop are the driver's
//! (they are slow or touch files), done off the connection's core.

use std::fmt;

use pop3sd_storage::Address;

use super::context::Policy;

/// A secret that never shows up in logs or Debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps secret bytes.
    pub fn new(bytes: &[u8]) -> Self {
        Secret(bytes.to_vec())
    }
    /// The bytes, for verification.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort: do not leave passwords in freed memory.
        for b in self.0.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// How the client proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// USER/PASS or SASL PLAIN.
    Password(Secret),
    /// APOP: MD5 over the banner and the shared secret (RFC 1939 section 7).
    Apop { banner: String, digest: [u8; 16] },
    /// SASL EXTERNAL: the TLS client certificate already verified.
    External,
}

/// Which command carried the credentials (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    UserPass,
    Plain,
    Apop,
    External,
}

impl Mechanism {
    /// Name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::UserPass => "USER",
            Mechanism::Plain => "PLAIN",
            Mechanism::Apop => "APOP",
            Mechanism::External => "EXTERNAL",
        }
    }
}

/// A login attempt for the driver to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    pub address: Address,
    pub credentials: Credentials,
    pub mechanism: Mechanism,
    /// False on a plain connection before STLS: the tenant must allow it.
    pub secure: bool,
}

/// The driver's answer to an [`AuthRequest`].
#[derive(Debug)]
pub enum AuthOutcome<M> {
    /// Logged in; the maildrop is locked and its snapshot fixed.
    Success {
        mailbox: M,
        policy: Policy,
        /// Wall-clock time of the login (Unix seconds), for EXPIRE.
        unix_time: i64,
    },
    /// Unknown user, wrong password, certificate not mapped: one answer for all.
    Failed,
    /// The maildrop is in another session.
    InUse,
    /// The user already has as many connections as allowed.
    TooManySessions,
    /// Logged in again sooner than the tenant's LOGIN-DELAY allows.
    LoginDelay,
    /// Cleartext login refused by the tenant's policy.
    CleartextRefused,
    /// A temporary server-side problem (storage I/O, overload).
    TempFail,
    /// A permanent server-side problem (corrupt maildrop).
    PermFail,
}
