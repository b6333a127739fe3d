//! The Prometheus endpoint: scraped before and after real sessions and a
//! delivery, the right counters move.

mod common;

use common::Served;

#[test]
fn counters_move_with_sessions_and_deliveries() {
    let s = Served::start(|_| {});
    let metrics = s.info.metrics.clone().expect("demo serves metrics");
    let lmtp = s.info.lmtp.clone().expect("demo serves LMTP");
    let (user, pw) = s.user(0, 0);
    let out = s.python(&format!(
        r##"
import re, smtplib, urllib.request
def scrape():
    text = urllib.request.urlopen("http://{metrics}/metrics", timeout=5).read().decode()
    values = {{}}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            values[k] = float(v)
    return values
def delta(a, b, k):
    return b.get(k, 0) - a.get(k, 0)
before = scrape()
s_, f = tls(); f.readline()
cmd(s_, f, "USER {user}"); assert cmd(s_, f, "PASS {pw}").startswith(b"+OK")
assert cmd(s_, f, "RETR 1").startswith(b"+OK")
while f.readline() != b".\r\n":
    pass
assert cmd(s_, f, "QUIT").startswith(b"+OK")
s2, f2 = tls(); f2.readline()
cmd(s2, f2, "USER {user}"); assert cmd(s2, f2, "PASS wrong").startswith(b"-ERR")
f2.close(); s2.close()   # makefile() keeps the socket open until both are closed
h, p = "{lmtp}".rsplit(":", 1)
l = smtplib.LMTP(h, int(p)); l.sendmail("a@b.test", ["{user}"], b"Subject: m\r\n\r\nx\r\n"); l.quit()
# Connections and their commands are counted when the server has read the
# close, which a busy machine can take a while to get to.
deadline = time.time() + 10
while True:
    after = scrape()
    if after["pop3sd_connections_open"] == 0 or time.time() > deadline:
        break
    time.sleep(0.05)
assert delta(before, after, 'pop3sd_logins_total{{tenant="example.com",result="ok"}}') == 1
assert delta(before, after, 'pop3sd_logins_total{{tenant="example.com",result="failed"}}') == 1
assert delta(before, after, 'pop3sd_handshakes_total{{kind="full"}}') == 2
assert delta(before, after, 'pop3sd_deliveries_total{{tenant="example.com",result="ok"}}') == 1
assert delta(before, after, 'pop3sd_retr_bytes_total{{tenant="example.com"}}') > 0
assert delta(before, after, "pop3sd_commands_total") == 6
assert after["pop3sd_connections_open"] == 0
assert delta(before, after, "pop3sd_connections_total") == 3
assert after['pop3sd_login_latency_seconds_count{{tenant="example.com"}}'] >= 2
assert after["pop3sd_config_generation"] == 1
try:
    urllib.request.urlopen("http://{metrics}/other", timeout=5)
    raise AssertionError("served something other than /metrics")
except urllib.error.HTTPError as e:
    assert e.code == 404
print("ok")
"##
    ));
    assert!(out.contains("ok"));
}
