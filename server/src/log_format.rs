//! The text log line, written without the general formatter's detours.
//!
//! Every session logs a login and a logout line of a dozen fields each.
//! With `tracing-subscriber`'s own formatter those two lines were about 2 %
//! of a session's CPU (docs/benchmarks.md, "Log lines"): each field went
//! through styling wrappers that do nothing without colours, each number
//! through `fmt::Arguments`, and the timestamp was formatted field by field
//! on every line. This formatter writes the same line (timestamp, level,
//! target, message, then `name=value` fields) with numbers written
//! directly and the date part of the timestamp kept per thread for the
//! second it names. It also escapes control characters in every value, not
//! only in the message, so that no value a client chose (a user name in an
//! error, say) can start a line of its own in the log.
//!
//! It is used when the log does not go to a terminal; a terminal keeps the
//! coloured default.

use std::cell::RefCell;
use std::fmt::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The text format of `pop3sd serve` and `demo` when logging to a file, a
/// pipe or journald: the default's layout, without colours, cheaper.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainLine;

impl<S, N> FormatEvent<S, N> for PlainLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // An event from the `log` crate carries its real target and level
        // in `log.*` fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        write_timestamp(&mut w, SystemTime::now())?;
        w.write_str(level_label(meta.level()))?;
        // pop3sd's own code opens no spans; a library's are shown by name,
        // outermost first.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                w.write_str(span.name())?;
                w.write_char(':')?;
            }
            w.write_char(' ')?;
        }
        w.write_str(meta.target())?;
        w.write_str(": ")?;
        let mut fields = FieldWriter {
            w: &mut w,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        w.write_char('\n')
    }
}

/// The level as the default writes it: right-aligned in five columns,
/// between single spaces.
fn level_label(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => " ERROR ",
        Level::WARN => "  WARN ",
        Level::INFO => "  INFO ",
        Level::DEBUG => " DEBUG ",
        Level::TRACE => " TRACE ",
    }
}

thread_local! {
    /// The second last formatted on this thread, and its
    /// `YYYY-MM-DDTHH:MM:SS` text.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `2026-12-05T13:54:36.743304Z`: UTC, microseconds, as the default writes
/// it.
fn write_timestamp(w: &mut impl Write, now: SystemTime) -> fmt::Result {
    // A clock before 1970 is shown as the epoch rather than refused.
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            cached.1.clear();
            write_date_time(&mut cached.1, secs)?;
            cached.0 = secs;
        }
        w.write_str(&cached.1)
    })?;
    let micros = since.subsec_micros();
    let mut digits = [b'0'; 8];
    digits[0] = b'.';
    digits[7] = b'Z';
    let mut m = micros;
    for d in digits[1..7].iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    // The bytes written above are ASCII.
    w.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs` after the Unix epoch, in UTC.
fn write_date_time(w: &mut impl Write, secs: u64) -> fmt::Result {
    let days = secs / 86_400;
    let in_day = secs % 86_400;
    let (y, m, d) = civil_date(days);
    write!(
        w,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01. Counts in eras of
/// 400 years (146,097 days), whose years start on 1 March, so that the leap
/// day is the last day of a year and month lengths repeat from March on.
fn civil_date(days: u64) -> (u64, u64, u64) {
    // Day 0 of era 0 is 0000-03-01, 719,468 days before 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    // Years of 365 days, less the leap days before this one (one every 4
    // years, none every 100, one every 400).
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March: 31, 30, 31, 30, 31, 31, 30, 31, 30, 31, 31, 28/29,
    // which (153 * m + 2) / 5 counts exactly.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Writes an event's fields: the message first (as the macros record it),
/// then ` name=value` for the others.
struct FieldWriter<'a, 'b> {
    w: &'a mut Writer<'b>,
    first: bool,
    result: fmt::Result,
}

impl FieldWriter<'_, '_> {
    /// Starts a field: the separating space, and `name=` unless it is the
    /// message.
    fn start(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.w.write_char(' ')?;
        }
        let name = field.name();
        if name == "message" {
            return Ok(());
        }
        // `r#type = ...` names a field `type`.
        self.w.write_str(name.strip_prefix("r#").unwrap_or(name))?;
        self.w.write_char('=')
    }

    fn record(&mut self, field: &Field, value: impl FnOnce(&mut Self) -> fmt::Result) {
        // What a `log` record carries besides its message (target, module,
        // file, line) is in the line's target already, or left out, as
        // the default does.
        if self.result.is_ok() && !field.name().starts_with("log.") {
            self.result = self.start(field).and_then(|()| value(self));
        }
    }
}

impl Visit for FieldWriter<'_, '_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(field, |s| s.w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record(field, |s| s.w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record(field, |s| {
            s.w.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let message = field.name() == "message";
        self.record(field, |s| {
            if message {
                Escaped(&mut *s.w).write_str(value)
            } else {
                // Rust's quoting, as the default: it escapes every control
                // character.
                write!(s.w, "{value:?}")
            }
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let name = field.name();
        self.record(field, |s| {
            write!(Escaped(&mut *s.w), "{value}")?;
            // The causes, as the default lists them.
            if let Some(mut source) = value.source() {
                write!(s.w, " {name}.sources=[")?;
                let mut first = true;
                loop {
                    if !std::mem::take(&mut first) {
                        s.w.write_str(", ")?;
                    }
                    write!(Escaped(&mut *s.w), "{source}")?;
                    match source.source() {
                        Some(next) => source = next,
                        None => break,
                    }
                }
                s.w.write_char(']')?;
            }
            Ok(())
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, |s| write!(Escaped(&mut *s.w), "{value:?}"));
    }
}

/// Writes through, with control characters (a newline above all) and the
/// Unicode line and paragraph separators written as escapes, so that one
/// event stays one line.
struct Escaped<'a, W: Write>(&'a mut W);

fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

impl<W: Write> Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(i) = rest.find(needs_escape) {
            self.0.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().ok_or(fmt::Error)?;
            write_escape(self.0, c)?;
            rest = &rest[i + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// The escape of `c`: the terminal controls as the default formatter writes
/// them in messages (`\x1b`), the rest as Rust does.
fn write_escape(w: &mut impl Write, c: char) -> fmt::Result {
    match c {
        '\n' => w.write_str("\\n"),
        '\r' => w.write_str("\\r"),
        '\t' => w.write_str("\\t"),
        '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' => write!(w, "\\x{:02x}", c as u32),
        c => write!(w, "\\u{{{:x}}}", c as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    #[derive(Debug)]
    struct Outer(Inner);
    #[derive(Debug)]
    struct Inner;
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot open the index")
        }
    }
    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("permission denied")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    impl std::error::Error for Inner {}

    /// The events pop3sd logs, in each kind of field.
    fn log_samples() {
        let client: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        tracing::info!(
            session = 12u64,
            client = %client,
            user = %"alice@example.com",
            mech = "PLAIN",
            resumed = true,
            delay_ms = -3i64,
            "login"
        );
        tracing::warn!(core = 1usize, ratio = 0.5f64, "a warning, with \"quotes\"");
        tracing::error!(
            error = &Outer(Inner) as &(dyn std::error::Error + 'static),
            "failed"
        );
        tracing::info!(r#type = "fast", "raw name");
        tracing::debug!(list = ?vec![1, 2], "debugged");
        tracing::info!("message only");
    }

    /// The lines `log` writes at DEBUG and above through pop3sd's
    /// formatter (`ours`) or the default one.
    fn lines_of(ours: bool, log: impl FnOnce()) -> Vec<String> {
        let out = Captured::default();
        let fmt = tracing_subscriber::fmt()
            .with_max_level(Level::DEBUG)
            .with_ansi(false)
            .with_writer(out.clone());
        if ours {
            tracing::subscriber::with_default(fmt.event_format(PlainLine).finish(), log);
        } else {
            tracing::subscriber::with_default(fmt.finish(), log);
        }
        out.lines()
    }

    /// Everything after the timestamp, which differs between two runs.
    fn without_timestamps(lines: Vec<String>) -> Vec<String> {
        lines
            .into_iter()
            .map(|l| l.split_once(' ').unwrap().1.to_owned())
            .collect()
    }

    #[test]
    fn lines_match_the_default_formatter() {
        let (ours, default) = (lines_of(true, log_samples), lines_of(false, log_samples));
        assert_eq!(ours.len(), 6, "{ours:?}");
        // The timestamps have the same shape; what follows is identical.
        for (a, b) in ours.iter().zip(&default) {
            let (ta, tb) = (a.split(' ').next().unwrap(), b.split(' ').next().unwrap());
            assert_eq!(ta.len(), tb.len(), "{a} / {b}");
            assert_eq!(ta.find('T'), tb.find('T'), "{a} / {b}");
            assert!(ta.ends_with('Z') && tb.ends_with('Z'), "{a} / {b}");
        }
        assert_eq!(
            without_timestamps(ours.clone()),
            without_timestamps(default)
        );
        assert!(ours[0].ends_with(
            " INFO pop3sd::log_format::tests: login session=12 client=192.0.2.7 \
             user=alice@example.com mech=\"PLAIN\" resumed=true delay_ms=-3"
        ));
    }

    #[test]
    fn log_crate_records_name_their_own_target() {
        // As `init_logging` does (tracing-subscriber's `init` installs it).
        let _ = tracing_log::LogTracer::init();
        let lines = lines_of(true, || {
            log::warn!(target: "rustls::server::hs", "peer sent {}", "junk");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].ends_with("  WARN rustls::server::hs: peer sent junk"),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn control_characters_never_start_a_new_line() {
        let lines = lines_of(true, || {
            let user = "eve\r\nFAKE login\u{2028}";
            tracing::info!(user = %user, raw = user, dbg = ?user, "bad\nname\x1b[31m");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].ends_with(
                ": bad\\nname\\x1b[31m user=eve\\r\\nFAKE login\\u{2028} \
                 raw=\"eve\\r\\nFAKE login\\u{2028}\" dbg=\"eve\\r\\nFAKE login\\u{2028}\""
            ),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let at = |secs: u64, micros: u64| {
            let mut s = String::new();
            write_timestamp(
                &mut s,
                UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros),
            )
            .unwrap();
            s
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        // Checked with `date -u -d @...`.
        assert_eq!(at(1_764_942_876, 743_304), "2025-12-05T13:54:36.743304Z");
        assert_eq!(at(951_782_400, 1), "2000-02-29T00:00:00.000001Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
        // The same second again comes from the per-thread cache.
        assert_eq!(at(1_764_942_876, 5), "2025-12-05T13:54:36.000005Z");
        // A clock before the epoch shows the epoch.
        let mut s = String::new();
        write_timestamp(&mut s, UNIX_EPOCH - Duration::from_secs(5)).unwrap();
        assert_eq!(s, "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn every_day_of_four_centuries_follows_the_one_before() {
        // Walks day by day from 1970 to 2370 and checks each date against
        // the calendar's rules, independently of the era arithmetic.
        let leap = |y: u64| y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        let month_len = |y: u64, m: u64| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let mut expect = (1970u64, 1u64, 1u64);
        for days in 0..146_097 {
            assert_eq!(civil_date(days), expect, "day {days}");
            let (y, m, d) = expect;
            expect = if d < month_len(y, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
    }
}
