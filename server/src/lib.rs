//! pop3sd: a multi-tenant POP3S server.
//!
//! - [`engine`]: the POP3 session as a pure state machine (no I/O).
pub mod engine;
