//! The CAPA response (RFC 2449 section 5): what is valid *now*.
//!
//! Before login the list depends on the connection: USER and SASL PLAIN only
//! where a password may be sent (TLS active, or cleartext explicitly allowed),
//! EXTERNAL only when a client certificate was verified and mapped, STLS only
//! on a plain listener before TLS. After login it shows the user's own
//! EXPIRE and LOGIN-DELAY values.

use std::io::Write;

use super::context::{Expire, Policy, SessionContext};
use super::output::Output;

/// SASL mechanisms offered now, in preference order.
pub fn sasl_mechanisms(ctx: &SessionContext) -> impl Iterator<Item = &'static str> {
    let plain = password_login_allowed(ctx).then_some("PLAIN");
    let external = ctx.external.is_some().then_some("EXTERNAL");
    plain.into_iter().chain(external)
}

/// True when a password may be sent on this connection.
pub fn password_login_allowed(ctx: &SessionContext) -> bool {
    ctx.tls || ctx.cleartext_login
}

fn write_expire(out: &mut Output, expire: Expire, per_user: bool) {
    let suffix = if per_user { " USER" } else { "" };
    let mut w = out.writer();
    // Writing into a Vec cannot fail.
    let _ = match expire {
        Expire::Never => write!(w, "EXPIRE NEVER{suffix}\r\n"),
        Expire::Days(d) => write!(w, "EXPIRE {d}{suffix}\r\n"),
    };
}

/// Writes the whole multi-line CAPA response. `logged_in` carries the
/// user's policy once in TRANSACTION state.
pub fn write(out: &mut Output, ctx: &SessionContext, logged_in: Option<&Policy>) {
    out.text(b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n");
    match logged_in {
        None => {
            if password_login_allowed(ctx) {
                out.text(b"USER\r\n");
            }
            let mut mechs = sasl_mechanisms(ctx).peekable();
            if mechs.peek().is_some() {
                out.text(b"SASL");
                for m in mechs {
                    out.text(b" ");
                    out.text(m.as_bytes());
                }
                out.text(b"\r\n");
            }
            if ctx.stls_offered && !ctx.tls {
                out.text(b"STLS\r\n");
            }
            let hint = ctx.policy_hint;
            write_expire(out, hint.policy.expire, hint.expire_per_user);
            if hint.policy.login_delay > 0 || hint.login_delay_per_user {
                let suffix = if hint.login_delay_per_user {
                    " USER"
                } else {
                    ""
                };
                let _ = write!(
                    out.writer(),
                    "LOGIN-DELAY {}{suffix}\r\n",
                    hint.policy.login_delay
                );
            }
        }
        Some(policy) => {
            write_expire(out, policy.expire, false);
            if policy.login_delay > 0 {
                let _ = write!(out.writer(), "LOGIN-DELAY {}\r\n", policy.login_delay);
            }
        }
    }
    out.text(b"IMPLEMENTATION pop3sd\r\n.\r\n");
}
