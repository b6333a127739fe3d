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
