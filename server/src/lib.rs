//! pop3sd: a multi-tenant POP3S server.
//!
//! - [`engine`]: the POP3 session as a pure state machine (no I/O).
pub mod admin;
pub mod auth;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod engine;
pub mod lmtp;
pub mod log_format;
pub mod log_writer;
pub mod privileges;
pub mod proxy;
pub mod runtime;
pub mod startup;
pub mod tls;
pub mod tune;
