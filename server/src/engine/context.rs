//! What the driver tells the engine about a connection, and the policies
//! that shape responses (CAPA, EXPIRE, LOGIN-DELAY, timeouts).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use pop3sd_storage::{Address, Domain};

/// Retention policy advertised by EXPIRE (RFC 2449 section 6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expire {
    /// Mail stays until the client deletes it.
    #[default]
    Never,
    /// Mail may be deleted this many days after arrival; 0 means "deleted
    /// once retrieved", which the engine applies at QUIT.
    Days(u32),
}

/// Policy values for one user (or the tenant, before login).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    pub expire: Expire,
    /// Minimum seconds between logins (RFC 2449 section 6.8).
    pub login_delay: u32,
}

/// How CAPA describes policy before login (RFC 2449: "USER" marks values
/// that may differ per user once logged in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyHint {
    pub policy: Policy,
    /// The tenants' EXPIRE policies differ.
    pub expire_per_user: bool,
    /// The tenants' LOGIN-DELAY values differ.
    pub login_delay_per_user: bool,
}

/// Timers the engine enforces; the driver only reports the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Idle limit before login (short: an unauthenticated connection costs
    /// memory and invites slowloris).
    pub auth_timeout: Duration,
    /// Idle limit after login; RFC 1939 section 3 requires at least 10 minutes.
    pub idle_timeout: Duration,
    /// Invalid or unknown commands tolerated before the connection is closed.
    pub max_bad_commands: u32,
    /// Failed logins tolerated on one connection.
    pub max_auth_failures: u32,
    /// Response text queued before the engine stops reading commands.
    pub max_text_backlog: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            auth_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(600),
            max_bad_commands: 20,
            max_auth_failures: 3,
            max_text_backlog: 64 * 1024,
        }
    }
}

/// The identity a verified TLS client certificate maps to (for SASL EXTERNAL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdentity {
    pub address: Address,
}

/// Facts about the connection, fixed when the engine is made (and updated by
/// [`crate::engine::Engine::tls_started`] after STLS).
#[derive(Debug, Clone)]
pub struct SessionContext {
    /// True when TLS is active (implicit-TLS listener, or after STLS).
    pub tls: bool,
    /// True on a plain listener that offers STLS.
    pub stls_offered: bool,
    /// Whether any tenant on this listener allows login without TLS.
    pub cleartext_login: bool,
    /// Without TLS: the domains (aliases included) whose tenants refuse
    /// passwords without it. USER for one of them is refused at once,
    /// before the client sends the password in the clear only to have it
    /// refused.
    pub tls_required: Option<Arc<HashSet<Domain>>>,
    /// Domain for bare user names (the SNI tenant, if it allows them).
    pub default_domain: Option<Domain>,
    /// Set when a verified client certificate maps to a user.
    pub external: Option<ExternalIdentity>,
    /// APOP timestamp banner, present only when APOP is enabled here.
    pub apop_banner: Option<String>,
    /// Policy shown by CAPA before login.
    pub policy_hint: PolicyHint,
    /// Timers and thresholds.
    pub limits: Limits,
}

impl Default for SessionContext {
    fn default() -> Self {
        SessionContext {
            tls: true,
            stls_offered: false,
            cleartext_login: false,
            tls_required: None,
            default_domain: None,
            external: None,
            apop_banner: None,
            policy_hint: PolicyHint::default(),
            limits: Limits::default(),
        }
    }
}

/// What the driver learns from a TLS handshake begun by STLS.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub default_domain: Option<Domain>,
    pub external: Option<ExternalIdentity>,
    pub policy_hint: Option<PolicyHint>,
}
