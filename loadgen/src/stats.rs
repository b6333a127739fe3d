//! Counting what happened: latency histograms (HDR, microseconds), errors
//! by kind, bytes, resumptions. Each worker thread keeps its own and sends
//! an interval snapshot to the main thread every reporting tick, so no lock
//! is taken per operation.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

/// Largest latency recorded (one hour, in µs); larger values are clamped
/// to it, and counted ([`Stats::clamped`]) so that the report says so.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Counters of one interval or of the whole run.
#[derive(Debug, Clone)]
pub struct Stats {
    pub hist: Histogram<u64>,
    pub ops: u64,
    pub errors: BTreeMap<&'static str, u64>,
    /// Bytes read from the server (plaintext).
    pub bytes_in: u64,
    /// Message payload octets retrieved (RETR).
    pub payload: u64,
    /// Handshakes, and how many of them resumed.
    pub handshakes: u64,
    /// Handshakes in which the client offered a session to resume.
    pub attempts: u64,
    pub resumed: u64,
    /// Connections held open (idle scenario).
    pub held: u64,
    /// Open loop: how late operations began after their intended start
    /// (µs; the client falling behind), and how many were scheduled.
    pub lag: Histogram<u64>,
    pub scheduled: u64,
    /// Latencies (or lateness) past [`MAX_LATENCY_US`], recorded as it.
    pub clamped: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds"),
            ops: 0,
            errors: BTreeMap::new(),
            bytes_in: 0,
            payload: 0,
            handshakes: 0,
            attempts: 0,
            resumed: 0,
            held: 0,
            lag: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds"),
            scheduled: 0,
            clamped: 0,
        }
    }
}

impl Stats {
    /// Records one successful operation.
    pub fn op(&mut self, latency_us: u64) {
        self.ops += 1;
        self.clamped += u64::from(latency_us > MAX_LATENCY_US);
        let _ = self.hist.record(latency_us.clamp(1, MAX_LATENCY_US));
    }

    /// Records when a scheduled operation began, `late_us` after its
    /// intended start (0 when on time or early).
    pub fn began(&mut self, late_us: u64) {
        self.scheduled += 1;
        if late_us > 0 {
            self.clamped += u64::from(late_us > MAX_LATENCY_US);
            let _ = self.lag.record(late_us.min(MAX_LATENCY_US));
        }
    }

    /// Records one failed operation.
    pub fn error(&mut self, kind: &'static str) {
        *self.errors.entry(kind).or_insert(0) += 1;
    }

    /// Total errors.
    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds another's counts into this one.
    pub fn merge(&mut self, other: &Stats) {
        let _ = self.hist.add(&other.hist);
        self.ops += other.ops;
        for (k, v) in &other.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
        self.bytes_in += other.bytes_in;
        self.payload += other.payload;
        self.handshakes += other.handshakes;
        self.attempts += other.attempts;
        self.resumed += other.resumed;
        self.held += other.held;
        let _ = self.lag.add(&other.lag);
        self.scheduled += other.scheduled;
        self.clamped += other.clamped;
    }

    /// Takes the counts, leaving this empty (for interval snapshots).
    pub fn take(&mut self) -> Stats {
        std::mem::take(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_take() {
        let mut a = Stats::default();
        a.op(100);
        a.error("io");
        let mut b = Stats::default();
        b.op(300);
        b.error("io");
        b.error("tls");
        a.began(0);
        b.began(2_000);
        a.merge(&b);
        assert_eq!((a.scheduled, a.lag.len(), a.lag.max()), (2, 1, 2_000));
        assert_eq!(a.ops, 2);
        assert_eq!(a.error_total(), 3);
        assert_eq!(a.errors["io"], 2);
        assert_eq!(a.hist.max(), 300);
        let t = a.take();
        assert_eq!(t.ops, 2);
        assert_eq!(a.ops, 0);
    }

    #[test]
    fn latencies_past_the_histogram_are_counted_not_hidden() {
        let mut a = Stats::default();
        a.op(90_000_000); // 90 s: recorded as it is
        a.op(MAX_LATENCY_US + 1);
        a.began(MAX_LATENCY_US * 2);
        assert!(a.hist.max() >= 89_000_000);
        let mut b = Stats::default();
        b.merge(&a);
        assert_eq!(b.clamped, 2);
    }
}
