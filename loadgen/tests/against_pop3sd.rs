//! The load generator against a real pop3sd on loopback (started in this
//! process from the demo set-up), every scenario bounded in count and time,
//! checking that it reports what happened and that nothing failed.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pop3sd::demo::{self, DemoOptions, DemoScheme};

struct Server {
    json: PathBuf,
    _dir: tempfile::TempDir,
}

/// The servers of this file, all started at the first test's first use,
/// before any test makes load: a demo picks free ports and the server binds
/// them a moment later, and a burst of client connections in between could
/// take one as its own local port. (Their threads live as long as the
/// process.)
struct Servers {
    shared: Server,
    own: Server,
    users_file: Server,
    shares: Server,
}

fn servers() -> &'static Servers {
    static S: OnceLock<Servers> = OnceLock::new();
    S.get_or_init(|| Servers {
        shared: start_server(),
        own: start_server(),
        users_file: start_server(),
        shares: start_server(),
    })
}

/// The server for most tests.
fn server() -> &'static Server {
    &servers().shared
}

/// A second server, for sessions that must not meet the maildrops that
/// the idle scenario holds on the first (a held maildrop refuses a second
/// login with [IN-USE]).
fn own_server() -> &'static Server {
    &servers().own
}

/// A third, for the runs that name their user in a users file: on a
/// server that other tests' runs pick users from at random, that user
/// could be held by one of them (the idle scenario holds most of them).
fn users_file_server() -> &'static Server {
    &servers().users_file
}

fn start_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let opts = DemoOptions {
        dir: Some(dir.path().join("root")),
        port: 0,
        pop3_port: 0,
        external_port: 0,
        users: 20,
        messages: 4,
        scheme: DemoScheme::Plain,
        cores: 2,
        message_size: 0,
        maildir: None,
    };
    let (config, info) = demo::prepare(&opts).unwrap();
    let shared = pop3sd::startup::build(config, None).unwrap();
    let running = pop3sd::runtime::start(shared).unwrap();
    std::thread::spawn(move || running.join());
    let json = dir.path().join("demo.json");
    std::fs::write(&json, serde_json::to_string(&info).unwrap()).unwrap();
    Server { json, _dir: dir }
}

/// Runs the loadgen; every run is bounded by --count or a short --duration.
fn loadgen(args: &[&str], out: &Path) -> serde_json::Value {
    loadgen_on(server(), args, out)
}

fn loadgen_on(s: &Server, args: &[&str], out: &Path) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_pop3-loadgen"))
        .arg("--demo-json")
        .arg(&s.json)
        .args(["--quiet", "--threads", "2"])
        .args(args)
        .arg("--json")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "loadgen {args:?} failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

#[test]
fn every_scenario_runs_clean() {
    let d = tempfile::tempdir().unwrap();
    // The server runs in this process: its CPU is counted both machine-wide
    // and as this process's own.
    let pid = std::process::id().to_string();
    let r = loadgen(
        &[
            "-s",
            "handshake",
            "--count",
            "40",
            "--duration",
            "30",
            "-c",
            "4",
            "--server-cpu-from-system",
            "--server-pid",
            &pid,
        ],
        &d.path().join("h.json"),
    );
    assert_eq!(r["ops"], 40);
    assert_eq!(r["error_total"], 0);
    assert_eq!(r["resumed"], 0);
    for figure in ["server_cpu_us_per_op", "server_process_cpu_us_per_op"] {
        assert!(r[figure].as_f64().is_some_and(|v| v > 0.0), "{figure}: {r}");
    }

    let r = loadgen(
        &[
            "-s",
            "resume",
            "--count",
            "40",
            "--duration",
            "30",
            "-c",
            "4",
        ],
        &d.path().join("r.json"),
    );
    assert_eq!(r["error_total"], 0);
    // Every handshake in which the client offered a ticket resumed; only
    // handshakes without a ticket to offer (the first ones) were full.
    assert!(r["resumption_attempts"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["resumed"], r["resumption_attempts"], "{r}");
    assert!(r["resumed"].as_u64().unwrap() >= 40 - 4 * 2, "{r}");

    let r = loadgen(
        &[
            "-s", "session", "--count", "40", "-c", "4", "--login", "user",
        ],
        &d.path().join("s.json"),
    );
    assert_eq!(r["ops"], 40);
    assert_eq!(r["error_total"], 0);
    assert!(r["payload_bytes"].as_u64().unwrap() > 0);
    // Nothing asked, nothing reported.
    assert!(r["server_process_cpu_us_per_op"].is_null(), "{r}");
    assert!(r["latency_us"]["p99"].as_u64().unwrap() >= r["latency_us"]["p50"].as_u64().unwrap());

    let r = loadgen(
        &[
            "-s",
            "retr",
            "--count",
            "200",
            "--duration",
            "30",
            "-c",
            "4",
        ],
        &d.path().join("t.json"),
    );
    assert_eq!(r["ops"], 200);
    assert_eq!(r["error_total"], 0);
    assert!(r["payload_mb_per_s"].as_f64().unwrap() > 0.0);

    let r = loadgen(
        &[
            "-s",
            "mixed",
            "--count",
            "60",
            "--duration",
            "30",
            "-c",
            "4",
        ],
        &d.path().join("m.json"),
    );
    assert_eq!(r["error_total"], 0);
    assert_eq!(r["ops"], 60);

    let r = loadgen(
        // 25/s over 40 users: a session may take 1.6 s on a busy machine
        // before the open loop runs out of free users.
        &["-s", "session", "--rate", "25", "--duration", "4"],
        &d.path().join("o.json"),
    );
    assert_eq!(r["mode"], "open");
    assert_eq!(r["error_total"], 0);
    assert!(r["ops"].as_u64().unwrap() >= 80, "{r}");

    let r = loadgen(
        &[
            "-s",
            "idle",
            "--connections",
            "30",
            "--hold",
            "1",
            "--server-pid",
            &pid,
        ],
        &d.path().join("i.json"),
    );
    assert_eq!(r["error_total"], 0);
    assert_eq!(r["idle"]["connections"], 30);
}

#[test]
fn session_shape_can_leave_uidl_out_and_fix_the_message() {
    let d = tempfile::tempdir().unwrap();
    let run = |extra: &[&str], name: &str| {
        // Half the users; chosen_tls_parameters… runs on the other half of
        // the same server, perhaps at the same time.
        let mut args = vec![
            "-s",
            "session",
            "--count",
            "12",
            "-c",
            "1",
            "--message",
            "4",
            "--user-share",
            "1/2",
        ];
        args.extend_from_slice(extra);
        loadgen_on(own_server(), &args, &d.path().join(name))
    };
    let with = run(&[], "with.json");
    let without = run(&["--no-uidl"], "without.json");
    for r in [&with, &without] {
        assert_eq!(r["ops"], 12, "{r}");
        assert_eq!(r["error_total"], 0, "{r}");
        // The demo's fourth message is about 50 KiB (51,200 bytes and the
        // rest of its last line), and every session retrieved it.
        let per = r["payload_bytes"].as_u64().unwrap() / 12;
        assert!((51_200..51_300).contains(&per), "{per} bytes per RETR: {r}");
    }
    // Each UIDL listing (four lines and its terminator) is missing.
    let (a, b) = (
        with["bytes_in"].as_u64().unwrap(),
        without["bytes_in"].as_u64().unwrap(),
    );
    assert!(a > b + 12 * 4 * 10, "with UIDL {a} bytes, without {b}");
    // A message number past the maildrop's end retrieves its last message
    // rather than failing; 0 is refused before the run.
    let r = loadgen_on(
        own_server(),
        &[
            "-s",
            "session",
            "--count",
            "4",
            "-c",
            "1",
            "--message",
            "99",
            "--user-share",
            "1/2",
        ],
        &d.path().join("last.json"),
    );
    assert_eq!(r["error_total"], 0, "{r}");
    let o = Command::new(env!("CARGO_BIN_EXE_pop3-loadgen"))
        .arg("--demo-json")
        .arg(&own_server().json)
        .args(["-s", "session", "--count", "1", "--message", "0"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--message"));
}

#[test]
fn chosen_tls_parameters_are_used_and_reported() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        (
            ["1.3", "TLS13_AES_256_GCM_SHA384", "secp256r1"],
            ["TLSv1_3", "TLS13_AES_256_GCM_SHA384", "secp256r1"],
        ),
        (
            ["1.3", "TLS13_CHACHA20_POLY1305_SHA256", "x25519"],
            ["TLSv1_3", "TLS13_CHACHA20_POLY1305_SHA256", "X25519"],
        ),
        (
            ["1.2", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "x25519"],
            [
                "TLSv1_2",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "X25519",
            ],
        ),
    ];
    for ([version, cipher, kx], want) in cases {
        let r = loadgen_on(
            own_server(),
            &[
                "-s",
                "session",
                "--count",
                "4",
                "-c",
                "2",
                "--tls-version",
                version,
                "--cipher",
                cipher,
                "--kx",
                kx,
                // The half session_shape_… does not use.
                "--user-share",
                "2/2",
            ],
            &d.path().join("tls.json"),
        );
        assert_eq!(r["error_total"], 0, "{r}");
        let got = [&r["tls_version"], &r["cipher_suite"], &r["key_exchange"]];
        assert_eq!(got, want.map(serde_json::Value::from).each_ref(), "{r}");
    }
}

#[test]
fn a_wrong_password_is_counted_not_hidden() {
    let d = tempfile::tempdir().unwrap();
    let users = d.path().join("users");
    std::fs::write(&users, "alice@example.com not-the-password\n").unwrap();
    let s = server();
    let out = d.path().join("bad.json");
    let o = Command::new(env!("CARGO_BIN_EXE_pop3-loadgen"))
        .arg("--demo-json")
        .arg(&s.json)
        .arg("--users-file")
        .arg(&users)
        .args([
            "--quiet",
            "-s",
            "session",
            "--count",
            "2",
            "-c",
            "1",
            "--threads",
            "1",
            "--json",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "failed operations must make the exit status non-zero"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(r["errors"]["login"], 2);
}

/// `pop3-loadgen -s handshake` against the test server with `args`.
fn handshake_run(s: &Server, args: &[&OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pop3-loadgen"))
        .arg("--demo-json")
        .arg(&s.json)
        .args(["--quiet", "-s", "handshake"])
        .args(args)
        .output()
        .unwrap()
}

/// Two seconds of `-s handshake` with `--chart` and what follows it.
fn short_handshake_run(s: &Server, chart_and_more: &[&Path]) -> std::process::Output {
    let mut args: Vec<&OsStr> = ["--duration", "2", "-c", "2", "--chart"]
        .iter()
        .map(OsStr::new)
        .collect();
    args.extend(chart_and_more.iter().map(|p| p.as_os_str()));
    handshake_run(s, &args)
}

#[test]
fn chart_and_hdr_log_are_written() {
    let d = tempfile::tempdir().unwrap();
    let s = server();
    let chart = d.path().join("c.svg");
    let hdr = d.path().join("h.hlog");
    let o = short_handshake_run(s, &[&chart, "--hdr-log".as_ref(), &hdr]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read_to_string(&chart).unwrap().contains("<svg"));
    assert!(std::fs::read_to_string(&hdr)
        .unwrap()
        .contains("#[StartTime"));
}

#[test]
fn png_chart_has_its_text_drawn() {
    let d = tempfile::tempdir().unwrap();
    let s = server();
    let mut fonts = resvg::usvg::fontdb::Database::new();
    fonts.load_system_fonts();
    assert!(
        !fonts.is_empty(),
        "this test needs a system font: apt-get install fonts-dejavu-core (.ci/run does)"
    );
    let chart = d.path().join("c.png");
    let o = short_handshake_run(s, &[&chart]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = resvg::tiny_skia::Pixmap::load_png(&chart).expect("a PNG file");
    assert_eq!((png.width(), png.height()), (900, 600));
    // The caption band above the upper plot holds nothing but the title's
    // text: dark pixels there mean the font was found and used.
    let dark = (0..30)
        .flat_map(|y| (0..900).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let p = png.pixel(x, y).unwrap();
            p.red() < 128 && p.green() < 128 && p.blue() < 128
        })
        .count();
    assert!(dark > 200, "only {dark} dark pixels in the caption");
}

#[test]
fn unknown_chart_format_is_refused_before_the_run() {
    let d = tempfile::tempdir().unwrap();
    let s = server();
    let chart = d.path().join("c.jpg");
    let t = std::time::Instant::now();
    let args = [
        "--duration".as_ref(),
        "5".as_ref(),
        "--chart".as_ref(),
        chart.as_os_str(),
    ];
    let o = handshake_run(s, &args);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("must end in .svg or .png"), "{err}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "it ran first"
    );
    assert!(!chart.exists());
}

#[test]
fn unwritable_outputs_are_refused_before_the_run() {
    let d = tempfile::tempdir().unwrap();
    let s = server();
    let missing = d.path().join("no-such-dir");
    for (flag, file) in [
        ("--json", "r.json"),
        ("--hdr-log", "r.hlog"),
        ("--chart", "c.svg"),
    ] {
        let path = missing.join(file);
        let t = std::time::Instant::now();
        let args = [
            "--duration".as_ref(),
            "5".as_ref(),
            flag.as_ref(),
            path.as_os_str(),
        ];
        let o = handshake_run(s, &args);
        assert!(!o.status.success(), "{flag}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&*path.to_string_lossy()) && err.contains("No such file"),
            "{flag}: {err}"
        );
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{flag}: it ran first"
        );
    }
}

#[test]
fn json_report_goes_to_stdout_with_a_dash() {
    let s = server();
    let args = ["--count", "20", "-c", "2", "--json", "-"].map(OsStr::new);
    let o = handshake_run(s, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("stdout is the JSON report");
    assert_eq!(r["ops"], 20);
    assert_eq!(r["error_total"], 0);
}

/// The test server's POP3S address and a users file for alice, for runs
/// that do not take their target and CA from the demo's JSON.
fn target_and_users(dir: &Path) -> (String, PathBuf) {
    let s = users_file_server();
    let demo: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&s.json).unwrap()).unwrap();
    let users = dir.join("users");
    std::fs::write(&users, "alice@example.com alice-com-secret\n").unwrap();
    (demo["pop3s"].as_str().unwrap().to_string(), users)
}

fn run_without_demo(args: &[&OsStr]) -> (std::process::Output, serde_json::Value) {
    let d = tempfile::tempdir().unwrap();
    let (target, users) = target_and_users(d.path());
    let out = d.path().join("r.json");
    let o = Command::new(env!("CARGO_BIN_EXE_pop3-loadgen"))
        .args(["--quiet", "-s", "session", "--count", "4", "-c", "1"])
        .args(["--sni", "example.com", "--target", &target, "--users-file"])
        .arg(&users)
        .arg("--json")
        .arg(&out)
        .args(args)
        .output()
        .unwrap();
    let r = std::fs::read_to_string(&out)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    (o, r)
}

#[test]
fn certificates_are_checked_against_the_system_store_by_default() {
    assert!(
        !rustls_native_certs::load_native_certs().certs.is_empty(),
        "this test needs a system trust store: apt-get install ca-certificates (.ci/run does)"
    );
    // The demo's CA is in no system store: every handshake must fail, and
    // be counted.
    let (o, r) = run_without_demo(&[]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(r["errors"]["tls"], 4, "{r}");
    assert_eq!(r["ops"], 0);
    assert_eq!(
        r["certificate"], "verified against the system trust store",
        "{r}"
    );
}

#[test]
fn insecure_accepts_any_certificate_and_says_so() {
    let (o, r) = run_without_demo(&["--insecure".as_ref()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(r["ops"], 4);
    assert_eq!(r["error_total"], 0);
    assert_eq!(r["certificate"], "NOT verified (--insecure)");
    let (o, _) = run_without_demo(&["--insecure".as_ref(), "--ca".as_ref(), "/x.pem".as_ref()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot be used with"));
}

#[test]
fn count_is_exact_with_fewer_connections_than_threads() {
    let d = tempfile::tempdir().unwrap();
    let r = loadgen(
        &["-s", "handshake", "--count", "5", "-c", "1"],
        &d.path().join("c.json"),
    );
    assert_eq!(r["ops"], 5, "{r}");
    assert_eq!(r["threads"], 1);
}

/// Starts a 30 s handshake run writing `json`, and sends `signal` once it
/// is well under way.
fn signalled_run(json: &Path, signal: libc::c_int) -> (std::process::ExitStatus, Duration) {
    let s = server();
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pop3-loadgen"))
        .arg("--demo-json")
        .arg(&s.json)
        .args([
            "--quiet",
            "-s",
            "handshake",
            "-c",
            "2",
            "--duration",
            "30",
            "--json",
        ])
        .arg(json)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Well past start-up (a few milliseconds), so the outputs are open.
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on our own child's pid, which has not been reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    (child.wait().unwrap(), t.elapsed())
}

#[test]
fn a_killed_run_keeps_the_previous_report() {
    let d = tempfile::tempdir().unwrap();
    let json = d.path().join("r.json");
    std::fs::write(&json, "previous results\n").unwrap();
    let (status, _) = signalled_run(&json, libc::SIGKILL);
    assert!(!status.success());
    assert_eq!(
        std::fs::read_to_string(&json).unwrap(),
        "previous results\n"
    );
}

#[test]
fn ctrl_c_ends_the_run_early_with_its_report() {
    let d = tempfile::tempdir().unwrap();
    let json = d.path().join("r.json");
    let (status, took) = signalled_run(&json, libc::SIGINT);
    assert_eq!(status.code(), Some(130));
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["interrupted"], true, "{r}");
    assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["error_total"], 0, "{r}");
    assert!(r["duration_s"].as_f64().unwrap() < 15.0, "{r}");
}

#[test]
fn outputs_are_all_or_nothing_before_the_run() {
    let d = tempfile::tempdir().unwrap();
    let s = server();
    let json = d.path().join("new.json");
    let bad = d.path().join("no-such-dir").join("h.hlog");
    let args = [
        "--duration".as_ref(),
        "5".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
        "--hdr-log".as_ref(),
        bad.as_os_str(),
    ];
    let o = handshake_run(s, &args);
    assert!(!o.status.success());
    assert!(
        !json.exists(),
        "the JSON file made for the run was left behind"
    );
    let same = d.path().join("same");
    let args = [
        "--json".as_ref(),
        same.as_os_str(),
        "--hdr-log".as_ref(),
        same.as_os_str(),
    ];
    let o = handshake_run(s, &args);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--json and --hdr-log name the same file"),
        "{err}"
    );
    assert!(!same.exists());
}

/// Two load generators at once on one server, each on its share of the
/// users: neither meets the other's maildrops. Without shares they do.
#[test]
fn user_shares_keep_two_load_generators_apart() {
    let d = tempfile::tempdir().unwrap();
    let s = &servers().shares;
    let run = |share: Option<&str>, out: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pop3-loadgen"));
        c.arg("--demo-json")
            .arg(&s.json)
            .args(["--quiet", "--threads", "2", "-s", "session"])
            .args(["-c", "16", "--count", "300", "--duration", "60"])
            .arg("--json")
            .arg(out);
        if let Some(k) = share {
            c.args(["--user-share", k]);
        }
        c.spawn().unwrap()
    };
    let report = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    // The demo's 40 users: 20 for each share, 16 of them in use at once.
    let outs = [d.path().join("1.json"), d.path().join("2.json")];
    let mut a = run(Some("1/2"), &outs[0]);
    let mut b = run(Some("2/2"), &outs[1]);
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    for (p, k) in outs.iter().zip(["1/2", "2/2"]) {
        let r = report(p);
        assert_eq!(r["error_total"], 0, "{r}");
        assert_eq!(r["ops"], 300, "{r}");
        assert_eq!(r["user_share"], k, "{r}");
    }
    // The same two runs on the whole list: each holds 16 of 40 maildrops,
    // so the other's logins are refused [IN-USE] (300 sessions each make a
    // run without a single meeting beyond reach).
    let (mut a, mut b) = (run(None, &outs[0]), run(None, &outs[1]));
    let _ = (a.wait().unwrap(), b.wait().unwrap());
    let refused: u64 = outs
        .iter()
        .map(|p| report(p)["error_total"].as_u64().unwrap())
        .sum();
    assert!(refused > 0, "two unshared runs never met");
    // A share that leaves no users is refused before the run.
    let o = Command::new(env!("CARGO_BIN_EXE_pop3-loadgen"))
        .arg("--demo-json")
        .arg(&s.json)
        .args(["-s", "session", "--count", "1", "--user-share", "41/41"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("none for this share"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// With fewer users than threads, threads would share users and log in to
/// one maildrop at once ([IN-USE], an error the load generator made): the
/// threads are cut to the users instead.
#[test]
fn fewer_users_than_threads_do_not_collide() {
    let d = tempfile::tempdir().unwrap();
    let (_, users) = target_and_users(d.path());
    let out = d.path().join("r.json");
    let o = Command::new(env!("CARGO_BIN_EXE_pop3-loadgen"))
        .arg("--demo-json")
        .arg(&users_file_server().json)
        .arg("--users-file")
        .arg(&users)
        .args(["--quiet", "-s", "session", "--rate", "40", "--count", "30"])
        .args(["--duration", "30", "--threads", "4", "--json"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(r["threads"], 1, "{r}");
    assert_eq!(
        r["ops"].as_u64().unwrap() + r["error_total"].as_u64().unwrap(),
        30,
        "{r}"
    );
    assert!(r["errors"].get("login").is_none(), "{r}");
}
