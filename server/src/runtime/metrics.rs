//! Metrics, kept per core and merged when scraped.
//!
//! Counters are relaxed atomics written by their own core only (no
//! contention). Per-tenant figures and latency histograms (HdrHistogram,
//! microseconds) sit behind a mutex per core that only that core and the
//! scraper ever take, so the hot path never waits on another core.
//! [`render`] produces the Prometheus text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency recorded (10 minutes, in µs).
const MAX_US: u64 = 600_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 2).expect("valid histogram bounds")
}

/// Per-tenant figures of one core.
#[derive(Debug, Clone)]
pub struct TenantMetrics {
    pub logins_ok: u64,
    pub logins_failed: u64,
    pub deliveries_ok: u64,
    pub deliveries_failed: u64,
    pub retr_bytes: u64,
    pub login_latency: Histogram<u64>,
    pub session_duration: Histogram<u64>,
    pub delivery_latency: Histogram<u64>,
}

impl Default for TenantMetrics {
    fn default() -> Self {
        TenantMetrics {
            logins_ok: 0,
            logins_failed: 0,
            deliveries_ok: 0,
            deliveries_failed: 0,
            retr_bytes: 0,
            login_latency: histogram(),
            session_duration: histogram(),
            delivery_latency: histogram(),
        }
    }
}

impl TenantMetrics {
    fn merge(&mut self, o: &TenantMetrics) {
        self.logins_ok += o.logins_ok;
        self.logins_failed += o.logins_failed;
        self.deliveries_ok += o.deliveries_ok;
        self.deliveries_failed += o.deliveries_failed;
        self.retr_bytes += o.retr_bytes;
        let _ = self.login_latency.add(&o.login_latency);
        let _ = self.session_duration.add(&o.session_duration);
        let _ = self.delivery_latency.add(&o.delivery_latency);
    }
}

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
    pub commands: AtomicU64,
    pub bytes_out: AtomicU64,
    pub connection_errors: AtomicU64,
    pub refused_by_limit: AtomicU64,
    /// RETRs and TOPs whose message was read into memory on the blocking
    /// pool first (not in the page cache).
    pub message_fetches: AtomicU64,
    tenants: Mutex<BTreeMap<String, TenantMetrics>>,
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_US)
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

    fn tenant(&self, tenant: &str, f: impl FnOnce(&mut TenantMetrics)) {
        let mut t = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        match t.get_mut(tenant) {
            Some(m) => f(m),
            None => {
                let mut m = TenantMetrics::default();
                f(&mut m);
                t.insert(tenant.to_string(), m);
            }
        }
    }

    /// A login attempt ended; `tenant` is the domain the name asked for.
    pub fn login(&self, tenant: &str, ok: bool, latency: Duration) {
        if ok {
            self.logins_ok.fetch_add(1, Relaxed);
        } else {
            self.logins_failed.fetch_add(1, Relaxed);
        }
        self.tenant(tenant, |m| {
            if ok {
                m.logins_ok += 1;
            } else {
                m.logins_failed += 1;
            }
            let _ = m.login_latency.record(micros(latency));
        });
    }

    /// A logged-in session ended.
    pub fn session_end(
        &self,
        tenant: &str,
        commands: u64,
        bytes_out: u64,
        retr_bytes: u64,
        duration: Duration,
    ) {
        self.commands.fetch_add(commands, Relaxed);
        self.bytes_out.fetch_add(bytes_out, Relaxed);
        self.tenant(tenant, |m| {
            m.retr_bytes += retr_bytes;
            let _ = m.session_duration.record(micros(duration));
        });
    }

    /// A connection that never logged in ended.
    pub fn anonymous_end(&self, commands: u64, bytes_out: u64) {
        self.commands.fetch_add(commands, Relaxed);
        self.bytes_out.fetch_add(bytes_out, Relaxed);
    }

    /// One recipient's delivery ended.
    pub fn delivery(&self, tenant: &str, ok: bool, latency: Duration) {
        self.tenant(tenant, |m| {
            if ok {
                m.deliveries_ok += 1;
            } else {
                m.deliveries_failed += 1;
            }
            let _ = m.delivery_latency.record(micros(latency));
        });
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn summary(
    out: &mut String,
    name: &str,
    help: &str,
    per: &BTreeMap<String, TenantMetrics>,
    pick: fn(&TenantMetrics) -> &Histogram<u64>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} summary");
    for (t, m) in per {
        let h = pick(m);
        if h.is_empty() {
            continue;
        }
        let t = escape(t);
        for q in [0.5, 0.9, 0.99] {
            let _ = writeln!(
                out,
                "{name}{{tenant=\"{t}\",quantile=\"{q}\"}} {}",
                h.value_at_quantile(q) as f64 / 1e6
            );
        }
        let sum: f64 = h
            .iter_recorded()
            .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
            .sum();
        let _ = writeln!(out, "{name}_sum{{tenant=\"{t}\"}} {}", sum / 1e6);
        let _ = writeln!(out, "{name}_count{{tenant=\"{t}\"}} {}", h.len());
    }
}

/// Merges every core's metrics into the Prometheus text format.
pub fn render(cores: &[std::sync::Arc<CoreMetrics>], extra: &[(&str, &str, u64)]) -> String {
    let sum =
        |f: fn(&CoreMetrics) -> &AtomicU64| cores.iter().map(|c| f(c).load(Relaxed)).sum::<u64>();
    let mut per: BTreeMap<String, TenantMetrics> = BTreeMap::new();
    for c in cores {
        let t = c.tenants.lock().unwrap_or_else(|p| p.into_inner());
        for (k, v) in t.iter() {
            per.entry(k.clone()).or_default().merge(v);
        }
    }
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, kind: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    };
    counter(
        "pop3sd_connections_total",
        "Connections accepted.",
        "counter",
        sum(|c| &c.connections_total),
    );
    counter(
        "pop3sd_connections_open",
        "Connections open now.",
        "gauge",
        sum(|c| &c.connections_open),
    );
    counter(
        "pop3sd_commands_total",
        "POP3 commands processed (counted when sessions end).",
        "counter",
        sum(|c| &c.commands),
    );
    counter(
        "pop3sd_bytes_out_total",
        "POP3 bytes sent, before TLS (counted when sessions end).",
        "counter",
        sum(|c| &c.bytes_out),
    );
    counter(
        "pop3sd_connection_errors_total",
        "Connections ended by an error (TLS, I/O, timeouts).",
        "counter",
        sum(|c| &c.connection_errors),
    );
    counter(
        "pop3sd_refused_by_limit_total",
        "Connections refused by a connection limit.",
        "counter",
        sum(|c| &c.refused_by_limit),
    );
    counter(
        "pop3sd_message_fetches_total",
        "RETR and TOP commands whose message was not in memory and was read in off the core first.",
        "counter",
        sum(|c| &c.message_fetches),
    );
    for (name, help, v) in extra {
        counter(name, help, "gauge", *v);
    }
    let _ = writeln!(out, "# HELP pop3sd_handshakes_total TLS handshakes completed.\n# TYPE pop3sd_handshakes_total counter");
    let _ = writeln!(
        out,
        "pop3sd_handshakes_total{{kind=\"full\"}} {}",
        sum(|c| &c.handshakes_full)
    );
    let _ = writeln!(
        out,
        "pop3sd_handshakes_total{{kind=\"resumed\"}} {}",
        sum(|c| &c.handshakes_resumed)
    );
    let _ = writeln!(out, "# HELP pop3sd_logins_total Login attempts by tenant and result.\n# TYPE pop3sd_logins_total counter");
    for (t, m) in &per {
        let t = escape(t);
        let _ = writeln!(
            out,
            "pop3sd_logins_total{{tenant=\"{t}\",result=\"ok\"}} {}",
            m.logins_ok
        );
        let _ = writeln!(
            out,
            "pop3sd_logins_total{{tenant=\"{t}\",result=\"failed\"}} {}",
            m.logins_failed
        );
    }
    let _ = writeln!(out, "# HELP pop3sd_deliveries_total Deliveries (per recipient) by tenant and result.\n# TYPE pop3sd_deliveries_total counter");
    for (t, m) in &per {
        let t = escape(t);
        let _ = writeln!(
            out,
            "pop3sd_deliveries_total{{tenant=\"{t}\",result=\"ok\"}} {}",
            m.deliveries_ok
        );
        let _ = writeln!(
            out,
            "pop3sd_deliveries_total{{tenant=\"{t}\",result=\"failed\"}} {}",
            m.deliveries_failed
        );
    }
    let _ = writeln!(out, "# HELP pop3sd_retr_bytes_total Message bytes sent by RETR and TOP, by tenant.\n# TYPE pop3sd_retr_bytes_total counter");
    for (t, m) in &per {
        let _ = writeln!(
            out,
            "pop3sd_retr_bytes_total{{tenant=\"{}\"}} {}",
            escape(t),
            m.retr_bytes
        );
    }
    summary(
        &mut out,
        "pop3sd_login_latency_seconds",
        "Time to answer a login, by tenant.",
        &per,
        |m| &m.login_latency,
    );
    summary(
        &mut out,
        "pop3sd_session_duration_seconds",
        "Duration of logged-in sessions, by tenant.",
        &per,
        |m| &m.session_duration,
    );
    summary(
        &mut out,
        "pop3sd_delivery_latency_seconds",
        "Time to deliver one recipient durably, by tenant.",
        &per,
        |m| &m.delivery_latency,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn merged_across_cores() {
        let a = Arc::new(CoreMetrics::default());
        let b = Arc::new(CoreMetrics::default());
        a.connection_opened(true);
        b.connection_opened(true);
        a.handshake(false);
        b.handshake(true);
        a.login("example.com", true, Duration::from_millis(2));
        b.login("example.com", false, Duration::from_millis(200));
        b.delivery("example.org", true, Duration::from_millis(5));
        let text = render(&[a, b], &[]);
        assert!(text.contains("pop3sd_connections_total 2"), "{text}");
        assert!(text.contains("pop3sd_handshakes_total{kind=\"resumed\"} 1"));
        assert!(text.contains("pop3sd_logins_total{tenant=\"example.com\",result=\"ok\"} 1"));
        assert!(text.contains("pop3sd_logins_total{tenant=\"example.com\",result=\"failed\"} 1"));
        assert!(text.contains("pop3sd_deliveries_total{tenant=\"example.org\",result=\"ok\"} 1"));
        assert!(text.contains("pop3sd_login_latency_seconds_count{tenant=\"example.com\"} 2"));
    }
}
