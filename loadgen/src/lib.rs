//! What `pop3-loadgen` and its calibration server `tcp-floor` share: the
//! way each thread's io_uring runtime is built, and the plain-TCP exchange
//! that measures this machine's floor (see [`floor`]).

pub mod floor;
pub mod ring;
