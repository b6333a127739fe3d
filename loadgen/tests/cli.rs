//! The command line as an operator reads it: `--help` must describe every
//! option on its own line, with nothing swallowed by clap's formatting.

use std::process::Command;

fn long_help() -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_pop3-loadgen"))
        .arg("--help")
        .output()
        .expect("run pop3-loadgen --help");
    assert!(o.status.success());
    String::from_utf8(o.stdout).expect("help is UTF-8")
}

/// The text under an option's heading, up to the next option.
fn section<'a>(help: &'a str, flag: &str) -> &'a str {
    let start = help
        .find(&format!("{flag} <"))
        .unwrap_or_else(|| panic!("{flag} missing from --help"));
    let rest = &help[start..];
    let end = rest[1..].find("\n      --").map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

#[test]
fn user_pattern_help_explains_the_placeholder() {
    let help = long_help();
    let s = section(&help, "--user-pattern");
    // clap replaces a literal "{n}" by a line break; the text must survive.
    assert!(
        s.contains("\"n\" in braces is replaced by 1..=--user-count"),
        "{s}"
    );
    let p = section(&help, "--password-pattern");
    assert!(p.contains("[default: password{n}]"), "{p}");
    let c = section(&help, "--user-count");
    assert!(c.contains("How many users --user-pattern makes"), "{c}");
}

#[test]
fn help_states_the_exit_statuses() {
    let help = long_help();
    for status in [
        "0 when every operation succeeded",
        "2 when some failed",
        "130 when Ctrl-C",
    ] {
        assert!(help.contains(status), "{status}: {help}");
    }
}

/// Shapes that would measure the load generator rather than the server are
/// refused before anything connects (the target here does not exist).
#[test]
fn shapes_that_cannot_measure_the_server_are_refused() {
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_pop3-loadgen"))
            .args(["--target", "127.0.0.1:9", "--insecure", "--quiet"])
            .args(["--user-pattern", "u{n}@example.com", "--user-count", "4"])
            .args(args)
            .output()
            .expect("run pop3-loadgen");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // More sessions at once than users: the extra ones would only meet
    // locked maildrops.
    let (code, err) = run(&["-s", "session", "-c", "8", "-d", "1"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("8 sessions at once need 8 users"), "{err}");
    assert!(err.contains("only 4 were given"), "{err}");
    let (_, err) = run(&["-s", "idle", "--connections", "5", "--hold", "1"]);
    assert!(err.contains("5 sessions at once need 5 users"), "{err}");
    // The retr scenario has no open loop.
    let (code, err) = run(&["-s", "retr", "--rate", "10", "-d", "1"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("no open-loop mode"), "{err}");
}
