//! The end of a run: a table for people, a JSON document for scripts, and
//! optionally an HDR interval log and a chart of throughput and p99 (SVG,
//! or PNG for places that show images but not SVG: chat, issue trackers,
//! some wikis).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::stats::Stats;
use crate::tls_stream::Negotiated;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// Values past the histogram's hour, recorded as an hour (so `max` is
    /// a floor when this is not 0).
    pub clamped: u64,
}

/// How far behind its schedule an open-loop run fell.
#[derive(Debug, Clone, Serialize)]
pub struct LateStarts {
    pub scheduled: u64,
    pub late: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Memory figures of the idle scenario (when the server's pid is known).
#[derive(Debug, Clone, Serialize)]
pub struct IdleMemory {
    pub connections: u64,
    /// "rss" of one process, or "pss" summed over processes.
    pub measure: String,
    pub server_memory_before_kib: u64,
    pub server_memory_after_kib: u64,
    pub bytes_per_connection: u64,
}

/// The JSON document a run produces.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub mode: String,
    pub threads: usize,
    pub concurrency: Option<usize>,
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub ops: u64,
    pub ops_per_s: f64,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub error_total: u64,
    pub bytes_in: u64,
    pub payload_bytes: u64,
    pub payload_mb_per_s: f64,
    pub handshakes: u64,
    /// Handshakes in which the client offered a session (ticket or id).
    pub resumption_attempts: u64,
    pub resumed: u64,
    /// Resumed handshakes over all handshakes.
    pub resumed_fraction: f64,
    /// Resumed handshakes over attempts: what the server is accountable for.
    pub attempts_resumed_fraction: f64,
    pub latency_us: Latency,
    pub tls_version: String,
    pub cipher_suite: String,
    /// The key exchange group, e.g. X25519.
    pub key_exchange: String,
    /// Whether and against what the server's certificate was verified.
    pub certificate: String,
    pub client_cpu_s: f64,
    pub client_cpu_us_per_op: f64,
    pub server_cpu_s: Option<f64>,
    pub server_cpu_us_per_op: Option<f64>,
    /// The server's own processes' CPU (/proc), when the figure above is
    /// machine-wide and the processes were named too.
    pub server_process_cpu_s: Option<f64>,
    pub server_process_cpu_us_per_op: Option<f64>,
    pub idle: Option<IdleMemory>,
    /// Open loop: operations that began after their intended start (the
    /// load generator fell behind; their latency counts from the intended
    /// start all the same), and how late.
    pub late_starts: Option<LateStarts>,
    /// A signal ended the run before its duration or count.
    pub interrupted: bool,
    /// `K/N` when the run used one share of the users (--user-share).
    pub user_share: Option<String>,
}

impl Report {
    /// Fills the derived figures from the totals.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        scenario: String,
        target: String,
        mode: String,
        threads: usize,
        concurrency: Option<usize>,
        rate: Option<f64>,
        elapsed_s: f64,
        total: &Stats,
        tls: Negotiated,
        certificate: String,
        client_cpu_s: f64,
        (server_cpu_s, server_process_cpu_s): (Option<f64>, Option<f64>),
        idle: Option<IdleMemory>,
    ) -> Self {
        let h = &total.hist;
        let ops = total.ops.max(1) as f64;
        Report {
            scenario,
            target,
            mode,
            threads,
            concurrency,
            rate,
            duration_s: elapsed_s,
            ops: total.ops,
            ops_per_s: total.ops as f64 / elapsed_s.max(1e-9),
            errors: total
                .errors
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            error_total: total.error_total(),
            bytes_in: total.bytes_in,
            payload_bytes: total.payload,
            payload_mb_per_s: total.payload as f64 / 1e6 / elapsed_s.max(1e-9),
            handshakes: total.handshakes,
            resumption_attempts: total.attempts,
            resumed: total.resumed,
            attempts_resumed_fraction: if total.attempts > 0 {
                total.resumed as f64 / total.attempts as f64
            } else {
                0.0
            },
            resumed_fraction: if total.handshakes > 0 {
                total.resumed as f64 / total.handshakes as f64
            } else {
                0.0
            },
            latency_us: Latency {
                mean: h.mean(),
                p50: h.value_at_quantile(0.5),
                p90: h.value_at_quantile(0.9),
                p99: h.value_at_quantile(0.99),
                p999: h.value_at_quantile(0.999),
                max: h.max(),
                clamped: total.clamped,
            },
            tls_version: tls.version,
            cipher_suite: tls.cipher_suite,
            key_exchange: tls.key_exchange,
            certificate,
            client_cpu_s,
            client_cpu_us_per_op: client_cpu_s * 1e6 / ops,
            server_cpu_s,
            server_cpu_us_per_op: server_cpu_s.map(|s| s * 1e6 / ops),
            server_process_cpu_s,
            server_process_cpu_us_per_op: server_process_cpu_s.map(|s| s * 1e6 / ops),
            idle,
            late_starts: (total.scheduled > 0).then(|| LateStarts {
                scheduled: total.scheduled,
                late: total.lag.len(),
                p50_us: total.lag.value_at_quantile(0.5),
                p99_us: total.lag.value_at_quantile(0.99),
                max_us: total.lag.max(),
            }),
            interrupted: false,
            user_share: None,
        }
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let l = &self.latency_us;
        let mut s = format!(
            "scenario {}  target {}  mode {}  threads {}\n\
             ops        {:>12}   ({:.1}/s over {:.1} s)\n\
             errors     {:>12}   {}\n\
             latency µs p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.0})\n\
             handshakes {:>12}   resumed {} ({:.1}%; {:.1}% of {} attempts)\n\
             payload    {:>12} B ({:.1} MB/s)\n\
             tls        {} {} {}, certificate {}\n\
             client CPU {:.3} s ({:.1} µs/op)",
            self.scenario,
            self.target,
            self.mode,
            self.threads,
            self.ops,
            self.ops_per_s,
            self.duration_s,
            self.error_total,
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            l.mean,
            self.handshakes,
            self.resumed,
            self.resumed_fraction * 100.0,
            self.attempts_resumed_fraction * 100.0,
            self.resumption_attempts,
            self.payload_bytes,
            self.payload_mb_per_s,
            self.tls_version,
            self.cipher_suite,
            self.key_exchange,
            self.certificate,
            self.client_cpu_s,
            self.client_cpu_us_per_op,
        );
        if let (Some(cpu), Some(per)) = (self.server_cpu_s, self.server_cpu_us_per_op) {
            s.push_str(&format!("\nserver CPU {cpu:.3} s ({per:.1} µs/op)"));
        }
        if let (Some(cpu), Some(per)) =
            (self.server_process_cpu_s, self.server_process_cpu_us_per_op)
        {
            s.push_str(&format!(
                "\nserver processes' own CPU {cpu:.3} s ({per:.1} µs/op)"
            ));
        }
        if let Some(l) = self.late_starts.as_ref().filter(|l| l.late > 0) {
            s.push_str(&format!(
                "\nlate starts {} of {} began after their intended start (by p50 {} µs, p99 {} µs, max {} µs; counted from the intended start)",
                l.late, l.scheduled, l.p50_us, l.p99_us, l.max_us
            ));
        }
        if l.clamped > 0 {
            s.push_str(&format!(
                "\nclamped    {} latencies over {} s were recorded as {} s: max and the top percentiles are floors",
                l.clamped,
                crate::stats::MAX_LATENCY_US / 1_000_000,
                crate::stats::MAX_LATENCY_US / 1_000_000
            ));
        }
        if self.interrupted {
            s.push_str("\ninterrupted: the run was stopped early by a signal");
        }
        if let Some(k_of_n) = &self.user_share {
            s.push_str(&format!("\nusers      share {k_of_n} of the list"));
        }
        if let Some(i) = &self.idle {
            s.push_str(&format!(
                "\nidle       {} connections held; server {} {} → {} KiB ({} bytes/connection)",
                i.connections,
                i.measure,
                i.server_memory_before_kib,
                i.server_memory_after_kib,
                i.bytes_per_connection
            ));
        }
        s
    }
}

/// One point of the time series (per reporting second).
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub t: f64,
    pub ops_per_s: f64,
    pub p99_ms: f64,
}

/// What `--chart` writes, from the file name's extension; a PNG carries
/// the fonts its text will be drawn with.
enum ChartFormat {
    Svg,
    Png(resvg::usvg::fontdb::Database),
}

/// Chart size in pixels (also the PNG's).
const CHART_SIZE: (u32, u32) = (900, 600);

/// Families tried, in order, for the chart's "sans-serif" text in a PNG.
const SANS_FAMILIES: &[&str] = &[
    "DejaVu Sans",
    "Liberation Sans",
    "Noto Sans",
    "FreeSans",
    "Arial",
    "Helvetica",
];

impl ChartFormat {
    /// Picks the format from the extension (and finds a PNG's font), so
    /// that a typo or a missing font is reported before the run.
    fn of(path: &Path) -> Result<Self, String> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("svg") => Ok(Self::Svg),
            Some("png") => Ok(Self::Png(png_fonts()?)),
            _ => Err(format!(
                "--chart {}: the file name must end in .svg or .png",
                path.display()
            )),
        }
    }
}

/// The fonts a PNG chart's text is drawn with: the system's, with a sans
/// family standing in for "sans-serif". An SVG names its font and leaves
/// drawing to the viewer, so only PNG needs one here.
fn png_fonts() -> Result<resvg::usvg::fontdb::Database, String> {
    let mut db = resvg::usvg::fontdb::Database::new();
    db.load_system_fonts();
    let all: Vec<String> = db
        .faces()
        .flat_map(|f| f.families.iter().map(|(name, _)| name.clone()))
        .collect();
    // Failing a known family, any other sans family (not a symbol or
    // emoji font, whose text would come out blank).
    let family = SANS_FAMILIES
        .iter()
        .find(|want| all.iter().any(|n| n == *want))
        .map(|s| s.to_string())
        .or_else(|| {
            all.iter()
                .find(|n| n.contains("Sans") && !n.contains("Symbol") && !n.contains("Emoji"))
                .cloned()
        });
    match family {
        Some(f) => {
            db.set_sans_serif_family(f);
            Ok(db)
        }
        None => Err(
            "a PNG chart needs a sans-serif TrueType or OpenType font on this machine \
             (e.g. apt-get install fonts-dejavu-core), or write the chart as .svg"
                .into(),
        ),
    }
}

/// The files a run writes at its end, created before it starts: a path
/// that cannot be written is then an error before the load, not the loss
/// of a long run's results after it.
pub struct Outputs {
    json: Option<Output>,
    chart: Option<(Output, ChartFormat)>,
    hdr_log: Option<Output>,
}

/// One output: standard output ("-", JSON only) or a file opened for
/// writing. An existing file is not emptied until the run has its results,
/// so a run stopped early leaves the previous results in place.
struct Output {
    path: PathBuf,
    file: Option<File>,
    /// Made by this run and not written yet: removed if the run fails.
    created_empty: bool,
}

impl Output {
    fn open(path: &Path, dash_is_stdout: bool) -> Result<Self, String> {
        if dash_is_stdout && path.as_os_str() == "-" {
            return Ok(Output {
                path: path.to_path_buf(),
                file: None,
                created_empty: false,
            });
        }
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Output {
            path: path.to_path_buf(),
            file: Some(file),
            created_empty: !existed,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.created_empty = false;
        let r = match &mut self.file {
            Some(f) => f
                .set_len(0)
                .and_then(|()| f.write_all(bytes))
                .and_then(|()| f.flush()),
            None => std::io::stdout()
                .write_all(bytes)
                .and_then(|()| std::io::stdout().flush()),
        };
        r.map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if self.created_empty {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Outputs {
    /// Checks the chart's format (and, for PNG, that a font exists) and
    /// creates every file.
    pub fn create(
        json: Option<&Path>,
        chart: Option<&Path>,
        hdr_log: Option<&Path>,
    ) -> Result<Self, String> {
        let named: Vec<(&str, &Path)> =
            [("--json", json), ("--chart", chart), ("--hdr-log", hdr_log)]
                .into_iter()
                .filter_map(|(flag, p)| Some((flag, p?)))
                .filter(|(_, p)| p.as_os_str() != "-")
                .collect();
        for (i, (a, pa)) in named.iter().enumerate() {
            for (b, pb) in &named[i + 1..] {
                if std::path::absolute(pa).ok() == std::path::absolute(pb).ok() {
                    return Err(format!("{a} and {b} name the same file, {}", pa.display()));
                }
            }
        }
        let chart = chart
            .map(|path| Ok::<_, String>((ChartFormat::of(path)?, path)))
            .transpose()?;
        // Any failure from here drops (and so removes) what was made.
        let json = json.map(|p| Output::open(p, true)).transpose()?;
        let hdr_log = hdr_log.map(|p| Output::open(p, false)).transpose()?;
        let chart = match chart {
            Some((format, path)) => Some((Output::open(path, false)?, format)),
            None => None,
        };
        Ok(Outputs {
            json,
            chart,
            hdr_log,
        })
    }

    /// Writes everything it can; one output failing does not cost the
    /// others. Errors are joined into one message.
    pub fn write(
        mut self,
        report: &Report,
        points: &[Point],
        start_unix: f64,
        intervals: &[(f64, f64, Stats)],
    ) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Some(out) = &mut self.json {
            let r = serde_json::to_string_pretty(report)
                .map_err(|e| e.to_string())
                .and_then(|mut text| {
                    text.push('\n');
                    out.write(text.as_bytes())
                });
            errors.extend(r.err());
        }
        if let Some((mut out, format)) = self.chart.take() {
            let r =
                chart_bytes(&report.scenario, points, format).and_then(|bytes| out.write(&bytes));
            errors.extend(r.err());
        }
        if let Some(out) = &mut self.hdr_log {
            let r = hdr_log_bytes(start_unix, intervals).and_then(|bytes| out.write(&bytes));
            errors.extend(r.err());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Throughput and p99 over time, as an SVG document or a PNG image.
fn chart_bytes(title: &str, points: &[Point], format: ChartFormat) -> Result<Vec<u8>, String> {
    let mut svg = String::new();
    draw_chart(&mut svg, title, points)?;
    match format {
        ChartFormat::Svg => Ok(svg.into_bytes()),
        ChartFormat::Png(fonts) => rasterize(&svg, fonts),
    }
}

/// SVG text to PNG bytes, text drawn with `fonts`.
fn rasterize(svg: &str, fonts: resvg::usvg::fontdb::Database) -> Result<Vec<u8>, String> {
    let mut opt = resvg::usvg::Options::default();
    *opt.fontdb_mut() = fonts;
    let tree = resvg::usvg::Tree::from_str(svg, &opt).map_err(|e| format!("chart: {e}"))?;
    let size = tree.size().to_int_size();
    let mut pixmap =
        resvg::tiny_skia::Pixmap::new(size.width(), size.height()).ok_or_else(|| {
            format!(
                "chart: cannot draw {}x{} pixels",
                size.width(),
                size.height()
            )
        })?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::identity(),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().map_err(|e| format!("chart: {e}"))
}

fn draw_chart(out: &mut String, title: &str, points: &[Point]) -> Result<(), String> {
    use plotters::prelude::*;
    let root = SVGBackend::with_string(out, CHART_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, bottom) = root.split_vertically(300);
    let t_max = points.last().map_or(1.0, |p| p.t).max(1.0);
    let ops_max = points.iter().map(|p| p.ops_per_s).fold(1.0, f64::max) * 1.1;
    let p99_max = points.iter().map(|p| p.p99_ms).fold(0.1, f64::max) * 1.1;
    let mut c = ChartBuilder::on(&top)
        .caption(
            format!("{title}: operations per second"),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..ops_max)
        .map_err(|e| e.to_string())?;
    c.configure_mesh()
        .x_desc("seconds")
        .draw()
        .map_err(|e| e.to_string())?;
    c.draw_series(LineSeries::new(
        points.iter().map(|p| (p.t, p.ops_per_s)),
        &BLUE,
    ))
    .map_err(|e| e.to_string())?;
    let mut c = ChartBuilder::on(&bottom)
        .caption("p99 latency (ms)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..p99_max)
        .map_err(|e| e.to_string())?;
    c.configure_mesh()
        .x_desc("seconds")
        .draw()
        .map_err(|e| e.to_string())?;
    c.draw_series(LineSeries::new(
        points.iter().map(|p| (p.t, p.p99_ms)),
        &RED,
    ))
    .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Interval histograms in HdrHistogram's interval-log format.
fn hdr_log_bytes(start_unix: f64, intervals: &[(f64, f64, Stats)]) -> Result<Vec<u8>, String> {
    use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
    use hdrhistogram::serialization::V2Serializer;
    let mut bytes = Vec::new();
    let mut ser = V2Serializer::new();
    let mut w = IntervalLogWriterBuilder::new()
        .with_base_time(std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(start_unix))
        .with_start_time(std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(start_unix))
        .begin_log_with(&mut bytes, &mut ser)
        .map_err(|e| e.to_string())?;
    for (t, dur, s) in intervals {
        w.write_histogram(
            &s.hist,
            std::time::Duration::from_secs_f64(*t),
            std::time::Duration::from_secs_f64(*dur),
            None,
        )
        .map_err(|e| format!("{e:?}"))?;
    }
    drop(w);
    Ok(bytes)
}
