//! `pop3-loadgen`: drives a POP3S server (pop3sd, Dovecot or any other) with
//! checked, bounded load and reports rates, latency percentiles (HDR),
//! errors by kind, and client (and, given its pid, server) CPU time.
//!
//! One monoio io_uring runtime per thread, like the server. Closed-loop mode
//! keeps a fixed number of operations in flight; open-loop mode starts
//! operations at a fixed rate and measures latency from each operation's
//! intended start, so a slow server cannot hide behind a slow client
//! (no coordinated omission); how far the client itself fell behind is
//! reported beside it. Every run is bounded by --duration and/or --count.

mod interrupt;
mod pop3;
mod report;
mod scenario;
mod stats;
mod tls_stream;
mod trust;
mod users;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Parser;
use rustls::ClientConfig;

use pop3::LoginMethod;
use report::{IdleMemory, Point, Report};
use scenario::{Op, Rng, Scenario, Target};
use stats::Stats;
use trust::Trust;
use users::User;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "pop3-loadgen",
    version,
    about = "Load generator for POP3S servers",
    after_help = "Exit status: 0 when every operation succeeded, 2 when some failed, \
                  130 when Ctrl-C or SIGTERM ended the run early (its report is still written), \
                  1 when the run could not start."
)]
struct Args {
    /// Scenario to run.
    #[arg(long, short, value_enum, default_value_t = Scenario::Session)]
    scenario: Scenario,
    /// Read target, CA and users from the JSON line of `pop3sd demo --json` (saved to a file).
    #[arg(long)]
    demo_json: Option<PathBuf>,
    /// Server address (IP:port); default from --demo-json.
    #[arg(long)]
    target: Option<SocketAddr>,
    /// CA file to verify the server's certificate; default from
    /// --demo-json, else the system's trust store.
    #[arg(long, conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Accept any server certificate (test servers with throwaway
    /// certificates). The handshake's signature is still checked, so the
    /// client's TLS work stays the same; the report says it was not verified.
    #[arg(long, short = 'k')]
    insecure: bool,
    /// SNI name to send; default: each user's domain.
    #[arg(long)]
    sni: Option<String>,
    /// Users as "user password" lines.
    #[arg(long)]
    users_file: Option<PathBuf>,
    // clap turns a literal `{n}` in help text into a line break, so the
    // placeholder is described in words here.
    /// Users from a pattern: "n" in braces is replaced by 1..=--user-count,
    /// as in --password-pattern's default.
    #[arg(long)]
    user_pattern: Option<String>,
    /// Password pattern for --user-pattern ("n" in braces allowed, as in
    /// the default).
    #[arg(long, default_value = "password{n}")]
    password_pattern: String,
    /// How many users --user-pattern makes.
    #[arg(long, default_value_t = 100)]
    user_count: usize,
    /// Use only share K of N of the users (every Nth, from the Kth): N load
    /// generators given 1/N to N/N never log in to the same maildrop at
    /// once, where they would be refused [IN-USE].
    #[arg(long, value_name = "K/N")]
    user_share: Option<users::Share>,
    /// Login command.
    #[arg(long, value_enum, default_value_t = LoginMethod::Plain)]
    login: LoginMethod,
    /// Worker threads (one io_uring runtime each); 0 = one per CPU. A
    /// closed-loop run uses at most --concurrency of them, and a run that
    /// logs in at most one per user (threads split the users).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Closed loop: operations in flight at once.
    #[arg(long, short, default_value_t = 16)]
    concurrency: usize,
    /// Open loop: operations started per second (overrides --concurrency).
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: most operations in flight before new ones count as "overload".
    #[arg(long, default_value_t = 10_000)]
    max_inflight: usize,
    /// Run for this long (seconds).
    #[arg(long, short, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many operations in total.
    #[arg(long)]
    count: Option<u64>,
    /// Per-operation timeout (seconds).
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// retr and session: always retrieve this message number instead of a
    /// random one (a maildrop with fewer messages gets its last).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    message: Option<u64>,
    /// session: resume TLS sessions (default: full handshakes).
    #[arg(long)]
    resume: bool,
    /// session: leave UIDL out, for the shape "login, STAT, LIST, RETR,
    /// QUIT" that some published session figures use.
    #[arg(long)]
    no_uidl: bool,
    /// tcp-floor: the exchange, as CLIENT:SERVER byte counts per turn
    /// (e.g. "234:770,64:182,28:64"), the same as given to `tcp-floor`.
    #[arg(long)]
    floor_script: Option<pop3_loadgen::floor::Script>,
    /// mixed: weights, e.g. "handshake=20,resume=10,session=70".
    #[arg(long, default_value = "handshake=20,resume=10,session=70")]
    mix: String,
    /// idle: connections to hold.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// idle: how long to hold them (seconds).
    #[arg(long, default_value_t = 10.0)]
    hold: f64,
    /// TLS version to offer: "1.2", "1.3" or "any".
    #[arg(long, default_value = "any")]
    tls_version: String,
    /// Only this cipher suite (rustls name, e.g. TLS13_AES_128_GCM_SHA256).
    #[arg(long)]
    cipher: Option<String>,
    /// Only this key exchange group: x25519, secp256r1, secp384r1.
    #[arg(long)]
    kx: Option<String>,
    /// Server process id: report its CPU time per operation (and memory per
    /// idle connection). With --server-cpu-from-system, its own CPU is
    /// reported as well, beside the machine-wide figure.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Server processes by name (comma-separated /proc comm values, e.g.
    /// "dovecot,pop3-login,pop3,auth"): CPU of the live ones, memory as PSS.
    /// With --server-cpu-from-system, reported as well, as with --server-pid.
    #[arg(long)]
    server_comm: Option<String>,
    /// Server CPU = all CPU time used on this machine minus this process's
    /// (for servers that fork short-lived processes; needs an otherwise idle machine).
    #[arg(long)]
    server_cpu_from_system: bool,
    /// Write the JSON report here ("-" for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an HDR histogram interval log here.
    #[arg(long)]
    hdr_log: Option<PathBuf>,
    /// Draw throughput and p99 over time into this file: .svg, or .png
    /// (needs a system font, e.g. fonts-dejavu-core).
    #[arg(long)]
    chart: Option<PathBuf>,
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
}

enum Msg {
    Interval(Box<Stats>),
    Tls(tls_stream::Negotiated),
}

fn build_config(args: &Args, trust: &Trust, resume: bool) -> Result<Arc<ClientConfig>, String> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(name) = &args.cipher {
        provider
            .cipher_suites
            .retain(|s| format!("{:?}", s.suite()).eq_ignore_ascii_case(name));
        if provider.cipher_suites.is_empty() {
            return Err(format!("unknown cipher suite {name}"));
        }
    }
    if let Some(kx) = &args.kx {
        provider
            .kx_groups
            .retain(|g| format!("{:?}", g.name()).eq_ignore_ascii_case(kx));
        if provider.kx_groups.is_empty() {
            return Err(format!(
                "unknown key exchange group {kx} (x25519, secp256r1, secp384r1)"
            ));
        }
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match args.tls_version.as_str() {
        "1.2" => &[&rustls::version::TLS12],
        "1.3" => &[&rustls::version::TLS13],
        "any" => &[&rustls::version::TLS13, &rustls::version::TLS12],
        other => return Err(format!("--tls-version {other}: use 1.2, 1.3 or any")),
    };
    let provider = Arc::new(provider);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let mut cfg = match trust {
        Trust::Roots { roots, .. } => builder.with_root_certificates(roots.clone()),
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(trust::AnyCertificate::new(provider))),
    }
    .with_no_client_auth();
    cfg.resumption = if resume {
        rustls::client::Resumption::store(tls_stream::CountingStore::new(4096))
    } else {
        rustls::client::Resumption::disabled()
    };
    Ok(Arc::new(cfg))
}

fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            // Root may raise the hard limit too; otherwise up to the hard limit.
            let big: libc::rlim_t = 1 << 20;
            for max in [big, r.rlim_max] {
                let want = libc::rlimit {
                    rlim_cur: max,
                    rlim_max: max,
                };
                if r.rlim_cur < max && libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                    break;
                }
            }
        }
    }
}

fn own_cpu_seconds() -> f64 {
    // SAFETY: rusage is plain integers and timevals: all zeros is a valid
    // value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only the struct we pass, which we own and
    // which outlives the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64).max(1.0)
}

fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name in parentheses; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn proc_pss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    s.lines()
        .find(|l| l.starts_with("Pss:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn pids_by_comm(names: &[String]) -> Vec<u32> {
    let mut pids = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
                if names.iter().any(|n| n == comm.trim()) {
                    pids.push(pid);
                }
            }
        }
    }
    pids
}

fn system_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?;
    let f: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...; steal is time the
    // hypervisor gave to another machine, not work done here.
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?;
    Some(busy / clock_ticks())
}

/// How the server's CPU time and memory are observed.
enum ServerProbe {
    None,
    Pid(u32),
    Comm(Vec<String>),
    System,
}

impl ServerProbe {
    fn from_args(args: &Args) -> Self {
        if args.server_cpu_from_system {
            ServerProbe::System
        } else {
            Self::processes(args)
        }
    }

    /// The server's own processes, from --server-comm or --server-pid.
    fn processes(args: &Args) -> Self {
        if let Some(c) = &args.server_comm {
            ServerProbe::Comm(
                c.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            )
        } else if let Some(p) = args.server_pid {
            ServerProbe::Pid(p)
        } else {
            ServerProbe::None
        }
    }

    /// CPU seconds so far (for System: everything but this process).
    fn cpu(&self) -> Option<f64> {
        match self {
            ServerProbe::None => None,
            ServerProbe::Pid(p) => proc_cpu_seconds(*p),
            ServerProbe::Comm(names) => Some(
                pids_by_comm(names)
                    .into_iter()
                    .filter_map(proc_cpu_seconds)
                    .sum(),
            ),
            ServerProbe::System => Some(system_busy_seconds()? - own_cpu_seconds()),
        }
    }

    /// Resident memory in KiB (PSS summed over processes for Comm).
    fn memory_kib(&self) -> Option<u64> {
        match self {
            ServerProbe::Pid(p) => proc_status_kib(*p, "VmRSS:"),
            ServerProbe::Comm(names) => Some(
                pids_by_comm(names)
                    .into_iter()
                    .filter_map(proc_pss_kib)
                    .sum(),
            ),
            _ => None,
        }
    }
}

struct Shared {
    args: Args,
    users: Vec<User>,
    addr: SocketAddr,
    trust: Trust,
    mix: Vec<(Op, u32)>,
    idle_ready: AtomicUsize,
    idle_held: AtomicUsize,
    idle_release: AtomicBool,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("pop3-loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether the run logs in (so each session needs a maildrop of its own).
fn logs_in(args: &Args, mix: &[(Op, u32)]) -> bool {
    match args.scenario {
        Scenario::Session | Scenario::Retr | Scenario::Idle => true,
        Scenario::Mixed => mix.iter().any(|(op, w)| *op == Op::Session && *w > 0),
        Scenario::Handshake | Scenario::Resume | Scenario::TcpFloor => false,
    }
}

/// Refuses what would measure the load generator instead of the server: a
/// closed loop (or idle set) with more sessions at once than users, whose
/// extra sessions would only meet locked maildrops (`[IN-USE]`), and an
/// open-loop retr run, which this generator does not implement (it would
/// run whole sessions and label them retr).
fn check_shape(args: &Args, mix: &[(Op, u32)], users: usize) -> Result<(), String> {
    if args.scenario == Scenario::Retr && args.rate.is_some() {
        return Err("-s retr measures RETRs on held connections (closed loop, -c); it has no open-loop mode (--rate): use -s session --rate".into());
    }
    if (args.scenario == Scenario::TcpFloor) != args.floor_script.is_some() {
        return Err(
            "-s tcp-floor and --floor-script go together: the script is the exchange to play with a `tcp-floor` server"
                .into(),
        );
    }
    let logs_in = logs_in(args, mix);
    let at_once = match (args.scenario, args.rate) {
        (Scenario::Idle, _) => args.connections,
        (_, None) => args.concurrency,
        // The open loop reports sessions that find no free user as errors.
        (_, Some(_)) => 0,
    };
    if logs_in && users < at_once {
        return Err(format!(
            "{at_once} sessions at once need {at_once} users (each logs in to a maildrop of its own; a second session on one is refused with [IN-USE]), but only {users} were given: create more (pop3sd demo --users N) or lower -c/--connections"
        ));
    }
    Ok(())
}

/// Runs the whole load test. The exit status: 0 when every operation
/// succeeded, 2 when some failed, 130 when a signal ended the run early
/// (its report is written all the same).
fn run() -> Result<u8, String> {
    let args = Args::parse();
    raise_nofile();
    let demo = args
        .demo_json
        .as_deref()
        .map(users::from_demo_json)
        .transpose()?;
    let addr = match (args.target, &demo) {
        (Some(a), _) => a,
        (None, Some(d)) => d
            .pop3s
            .parse()
            .map_err(|e| format!("demo pop3s address: {e}"))?,
        (None, None) => return Err("give --target or --demo-json".into()),
    };
    let floor = args.scenario == Scenario::TcpFloor;
    let trust = match (&args.ca, &demo) {
        // No TLS at all: nothing to verify.
        _ if args.insecure || floor => Trust::Insecure,
        (Some(c), _) => Trust::ca_file(c)?,
        (None, Some(d)) => Trust::ca_file(std::path::Path::new(&d.ca_file))?,
        (None, None) => Trust::system()?,
    };
    let certificate = if floor {
        "none (plain TCP, no TLS)".to_string()
    } else {
        trust.describe()
    };
    let users = if let Some(f) = &args.users_file {
        users::from_file(f)?
    } else if let Some(p) = &args.user_pattern {
        users::from_pattern(p, &args.password_pattern, args.user_count)
    } else if let Some(d) = &demo {
        d.users.clone()
    } else if floor {
        Vec::new()
    } else {
        return Err("give --users-file, --user-pattern or --demo-json".into());
    };
    let users = match args.user_share {
        Some(s) => users::share(users, s)?,
        None => users,
    };
    let mix = scenario::parse_mix(&args.mix)?;
    check_shape(&args, &mix, users.len())?;
    // Build the configs once here to report errors before starting threads.
    build_config(&args, &trust, false)?;
    // Output files that cannot be written are reported now, not after the run.
    let outputs = report::Outputs::create(
        args.json.as_deref(),
        args.chart.as_deref(),
        args.hdr_log.as_deref(),
    )?;
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // In closed loop a thread without a connection of its own would hold
    // its share of --count and never use it.
    let threads = match (args.scenario, args.rate) {
        (Scenario::Idle, _) | (_, Some(_)) => threads,
        (_, None) => threads.min(args.concurrency.max(1)),
    };
    // Threads split the users among them; with fewer users than threads
    // they would share them, and two logins to one maildrop at once meet
    // [IN-USE], an error the load generator made, not the server.
    let threads = if logs_in(&args, &mix) {
        threads.min(users.len().max(1))
    } else {
        threads
    };
    let shared = Arc::new(Shared {
        args: args.clone(),
        users,
        addr,
        trust,
        mix,
        idle_ready: AtomicUsize::new(0),
        idle_held: AtomicUsize::new(0),
        idle_release: AtomicBool::new(false),
    });
    let (tx, rx) = mpsc::channel::<Msg>();
    let probe = ServerProbe::from_args(&args);
    // Machine-wide CPU charges the server the kernel's work in any context
    // (softirqs, other tasks); its processes' own CPU is what /proc counts
    // for them. With both asked for, both are reported.
    let processes = match probe {
        ServerProbe::System => ServerProbe::processes(&args),
        _ => ServerProbe::None,
    };
    let process_cpu_before = processes.cpu();
    let server_cpu_before = probe.cpu();
    let rss_before = probe.memory_kib();
    let cpu_before = own_cpu_seconds();
    let start = Instant::now();
    let start_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut handles = Vec::new();
    interrupt::install();
    interrupt::with_signals_blocked(|| -> Result<(), String> {
        for w in 0..threads {
            let shared = shared.clone();
            let tx = tx.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("loadgen-{w}"))
                    .spawn(move || worker_thread(w, threads, shared, tx))
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(())
    })?;
    drop(tx);

    let progress = if args.quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(Duration::from_millis(250));
        pb
    };
    let mut total = Stats::default();
    let mut second = Stats::default();
    let mut second_start = 0.0f64;
    let mut points = Vec::new();
    let mut intervals: Vec<(f64, f64, Stats)> = Vec::new();
    let mut tls = tls_stream::Negotiated::default();
    let mut idle_mem = None;
    let mut idle_measured = false;
    let idle_deadline = Duration::from_secs_f64(args.hold);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Msg::Interval(s)) => {
                total.merge(&s);
                second.merge(&s);
            }
            Ok(Msg::Tls(n)) => tls = n,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if interrupt::requested() && !shared.idle_release.load(Ordering::Acquire) {
            // Workers stop taking new operations; idle ones let go now.
            progress.set_message("interrupted: finishing operations in flight");
            shared.idle_release.store(true, Ordering::Release);
        }
        let now = start.elapsed().as_secs_f64();
        if now - second_start >= 1.0 {
            let dur = now - second_start;
            points.push(Point {
                t: now,
                ops_per_s: second.ops as f64 / dur,
                p99_ms: second.hist.value_at_quantile(0.99) as f64 / 1000.0,
            });
            progress.set_message(format!(
                "{:.0} ops/s  p99 {:.2} ms  errors {}  total {}",
                second.ops as f64 / dur,
                second.hist.value_at_quantile(0.99) as f64 / 1000.0,
                total.error_total(),
                total.ops
            ));
            intervals.push((second_start, dur, second.take()));
            second_start = now;
        }
        if args.scenario == Scenario::Idle
            && !idle_measured
            && shared.idle_ready.load(Ordering::Acquire) == threads
        {
            // All connections are up and logged in: let the server settle, measure.
            idle_measured = true;
            std::thread::sleep(Duration::from_secs(1));
            let held = shared.idle_held.load(Ordering::Acquire) as u64;
            let after = probe.memory_kib();
            if let (Some(b), Some(a)) = (rss_before, after) {
                idle_mem = Some(IdleMemory {
                    connections: held,
                    measure: if matches!(probe, ServerProbe::Comm(_)) {
                        "pss"
                    } else {
                        "rss"
                    }
                    .into(),
                    server_memory_before_kib: b,
                    server_memory_after_kib: a,
                    bytes_per_connection: a.saturating_sub(b) * 1024 / held.max(1),
                });
            }
            progress.set_message(format!("{held} connections held"));
            let until = Instant::now() + idle_deadline.saturating_sub(Duration::from_secs(1));
            while Instant::now() < until && !interrupt::requested() {
                std::thread::sleep(Duration::from_millis(50));
            }
            shared.idle_release.store(true, Ordering::Release);
        }
    }
    for h in handles {
        let _ = h.join();
    }
    progress.finish_and_clear();
    if second.ops > 0 || second.error_total() > 0 {
        let now = start.elapsed().as_secs_f64();
        intervals.push((second_start, now - second_start, second.take()));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let client_cpu = own_cpu_seconds() - cpu_before;
    let server_cpu = match (server_cpu_before, probe.cpu()) {
        (Some(b), Some(a)) => Some(a - b),
        _ => None,
    };
    let server_process_cpu = match (process_cpu_before, processes.cpu()) {
        (Some(b), Some(a)) => Some(a - b),
        _ => None,
    };
    let (mode, concurrency, rate) = match args.rate {
        Some(r) => ("open".to_string(), None, Some(r)),
        None => ("closed".to_string(), Some(args.concurrency), None),
    };
    let mut report = Report::new(
        clap::ValueEnum::to_possible_value(&args.scenario).map_or_else(
            || format!("{:?}", args.scenario),
            |v| v.get_name().to_string(),
        ),
        addr.to_string(),
        mode,
        threads,
        concurrency,
        rate,
        elapsed,
        &total,
        tls,
        certificate,
        client_cpu,
        (server_cpu, server_process_cpu),
        idle_mem,
    );
    report.interrupted = interrupt::requested();
    report.user_share = args.user_share.map(|s| s.to_string());
    eprintln!("{}", report.table());
    outputs.write(&report, &points, start_unix, &intervals)?;
    Ok(if report.interrupted {
        130
    } else if report.error_total == 0 && report.ops > 0 {
        0
    } else {
        2
    })
}

fn worker_thread(w: usize, threads: usize, shared: Arc<Shared>, tx: mpsc::Sender<Msg>) {
    let mut rt = match pop3_loadgen::ring::runtime(4096) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pop3-loadgen: worker {w}: io_uring unavailable: {e}");
            let mut s = Stats::default();
            s.error("io_uring");
            let _ = tx.send(Msg::Interval(Box::new(s)));
            shared.idle_ready.fetch_add(1, Ordering::AcqRel);
            return;
        }
    };
    rt.block_on(worker(w, threads, shared, tx));
}

/// Splits `total` over `parts`, giving part `i` its share.
fn share(total: usize, parts: usize, i: usize) -> usize {
    total / parts + usize::from(i < total % parts)
}

async fn worker(w: usize, threads: usize, shared: Arc<Shared>, tx: mpsc::Sender<Msg>) {
    let args = &shared.args;
    let target = match (
        build_config(args, &shared.trust, false),
        build_config(args, &shared.trust, true),
    ) {
        (Ok(full), Ok(resuming)) => Rc::new(Target {
            addr: shared.addr,
            sni: args.sni.clone(),
            full,
            resuming,
            login: args.login,
            timeout: Duration::from_secs_f64(args.timeout),
            floor: args.floor_script.clone(),
        }),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("pop3-loadgen: {e}");
            return;
        }
    };
    let stats = Rc::new(RefCell::new(Stats::default()));
    let stop = Rc::new(Stop::default());
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration);
    let budget = Rc::new(std::cell::Cell::new(
        args.count
            .map_or(u64::MAX, |c| share(c as usize, threads, w) as u64),
    ));

    // Reporter: ship this thread's counts every 250 ms, and the last ones
    // as soon as the operations are over (so that the run's duration ends
    // with its last operation, not up to a period later).
    let reporter = {
        let stats = stats.clone();
        let stop = stop.clone();
        let tx = tx.clone();
        monoio::spawn(async move {
            loop {
                let stopped = monoio::select! {
                    _ = monoio::time::sleep(Duration::from_millis(250)) => false,
                    _ = Stopped(&stop) => true,
                };
                let s = stats.borrow_mut().take();
                if tx.send(Msg::Interval(Box::new(s))).is_err() || stopped {
                    return;
                }
            }
        })
    };

    // One TLS description for the report.
    if w == 0 && target.floor.is_some() {
        let _ = tx.send(Msg::Tls(tls_stream::Negotiated {
            version: "none (plain TCP)".into(),
            cipher_suite: "-".into(),
            key_exchange: "-".into(),
        }));
    } else if w == 0 {
        if let Some(u) = shared.users.first() {
            let mut out = scenario::Outcome::default();
            if let Ok(Ok(p)) =
                monoio::time::timeout(target.timeout, target.connect(u, false, &mut out)).await
            {
                let _ = tx.send(Msg::Tls(p.stream.describe()));
            }
        }
    }

    match (args.scenario, args.rate) {
        (Scenario::Idle, _) => idle(w, threads, &shared, &target, &stats).await,
        (_, Some(rate)) => {
            open_loop(
                w, threads, &shared, &target, &stats, deadline, &budget, rate,
            )
            .await
        }
        (_, None) => {
            let n = share(args.concurrency.max(1), threads, w);
            let pool = Rc::new(UserPool::new(&shared, w, threads));
            let mut tasks = Vec::new();
            for i in 0..n {
                let (shared, target, stats, budget, pool) = (
                    shared.clone(),
                    target.clone(),
                    stats.clone(),
                    budget.clone(),
                    pool.clone(),
                );
                tasks.push(monoio::spawn(async move {
                    closed_loop_task(
                        w * 10_000 + i,
                        pool,
                        shared,
                        target,
                        stats,
                        deadline,
                        budget,
                    )
                    .await
                }));
            }
            for t in tasks {
                t.await;
            }
        }
    }
    stop.fire();
    reporter.await;
}

/// Tells a worker's reporter that the operations are over.
#[derive(Default)]
struct Stop {
    fired: std::cell::Cell<bool>,
    waker: RefCell<Option<std::task::Waker>>,
}

impl Stop {
    fn fire(&self) {
        self.fired.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Resolves once [`Stop::fire`] was called.
struct Stopped<'a>(&'a Stop);

impl std::future::Future for Stopped<'_> {
    type Output = ();
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0.fired.get() {
            return std::task::Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        std::task::Poll::Pending
    }
}

/// This thread's users, handed out so that no two of its operations use the
/// same maildrop at once (a second session would rightly get [IN-USE]).
/// Users are split across threads the same way, so threads do not collide.
struct UserPool {
    free: RefCell<std::collections::VecDeque<usize>>,
}

impl UserPool {
    fn new(shared: &Shared, w: usize, threads: usize) -> Self {
        let n = shared.users.len();
        let mine: std::collections::VecDeque<usize> = if n >= threads {
            (w..n).step_by(threads).collect()
        } else {
            (0..n).collect()
        };
        UserPool {
            free: RefCell::new(mine),
        }
    }

    /// A user no other operation of this thread is using, if there is one.
    fn take(&self, rng: &mut Rng) -> Option<usize> {
        let mut free = self.free.borrow_mut();
        if free.is_empty() {
            return None;
        }
        let i = rng.below(free.len());
        free.swap_remove_back(i)
    }

    /// Returns a user [`UserPool::take`] gave out.
    fn give_back(&self, u: usize) {
        self.free.borrow_mut().push_back(u);
    }
}

/// Runs one operation of the scenario and records it.
async fn one_op(
    shared: &Shared,
    pool: &UserPool,
    target: &Target,
    stats: &RefCell<Stats>,
    rng: &mut Rng,
    started: Instant,
) {
    // tcp-floor (the only scenario with a script): no user, no TLS.
    if let Some(script) = &target.floor {
        let result = monoio::time::timeout(
            target.timeout,
            pop3_loadgen::floor::exchange(target.addr, script),
        )
        .await;
        let result = match result {
            Ok(Ok(bytes_in)) => Ok(scenario::Outcome {
                bytes_in,
                ..Default::default()
            }),
            Ok(Err(e)) => Err(e.kind()),
            Err(_) => Err("timeout"),
        };
        record(stats, started, result);
        return;
    }
    let op = match shared.args.scenario {
        Scenario::Handshake => Op::Handshake,
        Scenario::Resume => Op::Resume,
        Scenario::Mixed => scenario::pick(&shared.mix, rng),
        _ => Op::Session,
    };
    // A session needs a maildrop nobody else holds; a handshake only needs
    // a name to offer.
    let taken = pool.take(rng);
    let ui = match taken {
        Some(u) => u,
        None if op != Op::Session => rng.below(shared.users.len()),
        None => {
            stats.borrow_mut().error("no-free-user");
            return;
        }
    };
    let user = &shared.users[ui];
    let fut = async {
        match op {
            Op::Handshake => scenario::handshake(target, user, false).await,
            Op::Resume => scenario::handshake(target, user, true).await,
            Op::Session => {
                let shape = scenario::SessionShape {
                    resume: shared.args.resume,
                    uidl: !shared.args.no_uidl,
                    message: shared.args.message.map(|m| m as usize),
                };
                scenario::session(target, user, shape, rng).await
            }
        }
    };
    let result = match monoio::time::timeout(target.timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(pop3::OpError::Timeout),
    };
    if let Some(u) = taken {
        pool.give_back(u);
    }
    record(stats, started, result.map_err(|e| e.kind()));
}

/// Counts one operation: its latency and what it reports, or its error by
/// kind.
fn record(
    stats: &RefCell<Stats>,
    started: Instant,
    result: Result<scenario::Outcome, &'static str>,
) {
    let mut s = stats.borrow_mut();
    match result {
        Ok(out) => {
            s.op(started.elapsed().as_micros() as u64);
            s.bytes_in += out.bytes_in;
            s.payload += out.payload;
            s.handshakes += out.handshakes;
            s.attempts += out.attempts;
            s.resumed += out.resumed;
        }
        Err(kind) => s.error(kind),
    }
}

fn take_budget(budget: &std::cell::Cell<u64>) -> bool {
    if interrupt::requested() {
        return false;
    }
    match budget.get() {
        0 => false,
        n => {
            budget.set(n - 1);
            true
        }
    }
}

async fn closed_loop_task(
    seed: usize,
    pool: Rc<UserPool>,
    shared: Arc<Shared>,
    target: Rc<Target>,
    stats: Rc<RefCell<Stats>>,
    deadline: Instant,
    budget: Rc<std::cell::Cell<u64>>,
) {
    let mut rng = Rng::new(seed as u64 * 0x9e37_79b9 + 1);
    if shared.args.scenario == Scenario::Retr {
        retr_loop(&shared, &pool, &target, &stats, deadline, &budget, &mut rng).await;
        return;
    }
    while Instant::now() < deadline && take_budget(&budget) {
        one_op(&shared, &pool, &target, &stats, &mut rng, Instant::now()).await;
    }
}

async fn retr_loop(
    shared: &Shared,
    pool: &UserPool,
    target: &Target,
    stats: &RefCell<Stats>,
    deadline: Instant,
    budget: &std::cell::Cell<u64>,
    rng: &mut Rng,
) {
    let mut conn = None;
    // A retr connection keeps its user for its whole life.
    let Some(ui) = pool.take(rng) else {
        stats.borrow_mut().error("no-free-user");
        return;
    };
    let user = &shared.users[ui];
    while Instant::now() < deadline && take_budget(budget) {
        if conn.is_none() {
            match monoio::time::timeout(target.timeout, scenario::retr_open(target, user)).await {
                Ok(Ok((c, out))) => {
                    let mut s = stats.borrow_mut();
                    s.handshakes += out.handshakes;
                    s.attempts += out.attempts;
                    s.resumed += out.resumed;
                    conn = Some(c);
                }
                Ok(Err(e)) => {
                    stats.borrow_mut().error(e.kind());
                    continue;
                }
                Err(_) => {
                    stats.borrow_mut().error("timeout");
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let t = Instant::now();
        match monoio::time::timeout(
            target.timeout,
            scenario::retr_one(c, rng, shared.args.message.map(|m| m as usize)),
        )
        .await
        {
            Ok(Ok(out)) => {
                let mut s = stats.borrow_mut();
                s.op(t.elapsed().as_micros() as u64);
                s.bytes_in += out.bytes_in;
                s.payload += out.payload;
            }
            Ok(Err(e)) => {
                stats.borrow_mut().error(e.kind());
                conn = None;
            }
            Err(_) => {
                stats.borrow_mut().error("timeout");
                conn = None;
            }
        }
    }
    if let Some(mut c) = conn {
        // Counted as the idle scenario counts it: a server that fails at
        // QUIT after many RETRs must not pass as error-free.
        match monoio::time::timeout(target.timeout, c.pop.quit()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => stats.borrow_mut().error(e.kind()),
            Err(_) => stats.borrow_mut().error("timeout"),
        }
    }
    pool.give_back(ui);
}

/// How late monoio's timer may wake: it rounds a deadline up to the end of
/// its millisecond, then sleeps whole milliseconds counted from the start
/// of the current one, so a wake-up lands up to 2 ms after the deadline.
const TIMER_SLACK: Duration = Duration::from_millis(2);

#[allow(clippy::too_many_arguments)]
async fn open_loop(
    w: usize,
    threads: usize,
    shared: &Arc<Shared>,
    target: &Rc<Target>,
    stats: &Rc<RefCell<Stats>>,
    deadline: Instant,
    budget: &Rc<std::cell::Cell<u64>>,
    rate: f64,
) {
    let per_thread = (rate / threads as f64).max(1e-3);
    let period = Duration::from_secs_f64(1.0 / per_thread);
    // Stagger the threads' schedules within one period.
    let first = Instant::now() + period.mul_f64(w as f64 / threads as f64);
    let inflight = Rc::new(std::cell::Cell::new(0usize));
    let pool = Rc::new(UserPool::new(shared, w, threads));
    let max = share(shared.args.max_inflight.max(1), threads, w).max(1);
    let mut k = 0u64;
    let mut tasks = Vec::new();
    loop {
        let intended = first + period.mul_f64(k as f64);
        k += 1;
        if intended >= deadline || !take_budget(budget) {
            break;
        }
        // monoio's timer wakes up to 2 ms after a deadline (it counts whole
        // milliseconds): waking that much early and timing an early start
        // from when it really began keeps the slack out of the server's
        // latency, while a start that is late because this client fell
        // behind still counts from its intended time.
        let wake = intended.checked_sub(TIMER_SLACK).unwrap_or(intended);
        monoio::time::sleep_until(monoio::time::Instant::from_std(wake)).await;
        let began = Instant::now();
        stats
            .borrow_mut()
            .began(began.saturating_duration_since(intended).as_micros() as u64);
        let origin = began.min(intended);
        if inflight.get() >= max {
            stats.borrow_mut().error("overload");
            continue;
        }
        inflight.set(inflight.get() + 1);
        let (shared, target, stats, inflight, pool) = (
            shared.clone(),
            target.clone(),
            stats.clone(),
            inflight.clone(),
            pool.clone(),
        );
        tasks.push(monoio::spawn(async move {
            let mut rng = Rng::new(k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ w as u64);
            // Latency counts from the intended start, not from when we got to it.
            one_op(&shared, &pool, &target, &stats, &mut rng, origin).await;
            inflight.set(inflight.get() - 1);
        }));
        if tasks.len() > 4096 {
            tasks.retain(|t: &monoio::task::JoinHandle<()>| !t.is_finished());
        }
    }
    for t in tasks {
        t.await;
    }
}

async fn idle(
    w: usize,
    threads: usize,
    shared: &Arc<Shared>,
    target: &Rc<Target>,
    stats: &Rc<RefCell<Stats>>,
) {
    let n = share(shared.args.connections, threads, w);
    let conns: Rc<RefCell<Vec<pop3::Pop3>>> = Rc::new(RefCell::new(Vec::with_capacity(n)));
    let pool = Rc::new(UserPool::new(shared, w, threads));
    // Open them 64 at a time.
    let mut opened = 0;
    while opened < n {
        let batch = (n - opened).min(64);
        let mut tasks = Vec::new();
        for i in 0..batch {
            let (shared, target, stats, conns, pool) = (
                shared.clone(),
                target.clone(),
                stats.clone(),
                conns.clone(),
                pool.clone(),
            );
            let seed = (w * 1_000_000 + opened + i) as u64;
            tasks.push(monoio::spawn(async move {
                let mut rng = Rng::new(seed);
                // Held connections keep their user: an idle test needs at least as many users.
                let Some(ui) = pool.take(&mut rng) else {
                    stats.borrow_mut().error("no-free-user");
                    return;
                };
                let user = shared.users[ui].clone();
                let t = Instant::now();
                let mut out = scenario::Outcome::default();
                let r = monoio::time::timeout(target.timeout, async {
                    let mut p = target.connect(&user, false, &mut out).await?;
                    p.login(target.login, &user.name, &user.password).await?;
                    p.stat().await?;
                    Ok::<_, pop3::OpError>(p)
                })
                .await;
                let mut s = stats.borrow_mut();
                match r {
                    Ok(Ok(p)) => {
                        s.op(t.elapsed().as_micros() as u64);
                        s.handshakes += out.handshakes;
                        s.held += 1;
                        shared.idle_held.fetch_add(1, Ordering::AcqRel);
                        conns.borrow_mut().push(p);
                    }
                    Ok(Err(e)) => s.error(e.kind()),
                    Err(_) => s.error("timeout"),
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        opened += batch;
    }
    shared.idle_ready.fetch_add(1, Ordering::AcqRel);
    let hold_until = Instant::now() + Duration::from_secs_f64(shared.args.hold + 30.0);
    while !shared.idle_release.load(Ordering::Acquire) && Instant::now() < hold_until {
        monoio::time::sleep(Duration::from_millis(100)).await;
    }
    let all: Vec<pop3::Pop3> = std::mem::take(&mut *conns.borrow_mut());
    let mut tasks = Vec::new();
    for mut p in all {
        let timeout = target.timeout;
        let stats = stats.clone();
        tasks.push(monoio::spawn(async move {
            if !matches!(monoio::time::timeout(timeout, p.quit()).await, Ok(Ok(()))) {
                stats.borrow_mut().error("quit");
            }
        }));
        if tasks.len() >= 256 {
            for t in tasks.drain(..) {
                t.await;
            }
        }
    }
    for t in tasks {
        t.await;
    }
}
