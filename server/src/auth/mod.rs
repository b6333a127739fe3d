//! Tenant authentication: passwd-files, hash schemes, the verification
//! cache, brute-force control and the login decision itself.

pub mod cache;
pub mod directory;
pub mod passwd;
pub mod scheme;
pub mod service;
pub mod throttle;

pub use cache::VerifyCache;
pub use directory::{Directory, Tenant, TenantPolicy};
pub use scheme::StoredHash;
pub use service::{Admission, Authenticator, Check, HashJob, HashResult, Refusal, Verified};
pub use throttle::ThrottleConfig;
