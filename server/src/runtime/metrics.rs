//! Per-core counters, written by one core only (relaxed atomics on the
//! core's own cache lines: no contention) and summed when read.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one core.
#[derive(Debug, Default)]
pub struct CoreMetrics {
    pub connections_total: AtomicU64,
    pub connections_tls: AtomicU64,
    pub connections_open: AtomicU64,
    pub handshakes_full: AtomicU64,
    pub handshakes_resumed: AtomicU64,
    pub logins_ok: AtomicU64,
    pub logins_failed: AtomicU64,
}

impl CoreMetrics {
    pub fn connection_opened(&self, tls: bool) {
        self.connections_total.fetch_add(1, Relaxed);
        self.connections_open.fetch_add(1, Relaxed);
        if tls {
            self.connections_tls.fetch_add(1, Relaxed);
        }
    }
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }
    pub fn handshake(&self, resumed: bool) {
        if resumed {
            self.handshakes_resumed.fetch_add(1, Relaxed);
        } else {
            self.handshakes_full.fetch_add(1, Relaxed);
        }
    }
    pub fn login(&self, ok: bool) {
        if ok {
            self.logins_ok.fetch_add(1, Relaxed);
        } else {
            self.logins_failed.fetch_add(1, Relaxed);
        }
    }
}
