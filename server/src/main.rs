//! The `pop3sd` binary: serve, demo, and the operator commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pop3sd::config::Config;
use pop3sd::demo::{self, DemoOptions, DemoScheme};
use pop3sd::{admin, runtime, startup};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pop3sd",
    version,
    about = "Multi-tenant POP3S server on io_uring"
)]
struct Cli {
    /// Log format: "text" or "json".
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the tenants of a configuration file.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Create a complete demo installation (CA, tenants, users, mail) and serve it on loopback.
    Demo {
        /// Root directory for the demo (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// POP3S port (0 = any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Plain POP3 port offering STLS (0 = any free port).
        #[arg(long, default_value_t = 0)]
        pop3_port: u16,
        /// POP3S port that asks for client certificates (0 = any free port).
        #[arg(long, default_value_t = 0)]
        external_port: u16,
        /// Users per tenant.
        #[arg(long, default_value_t = 3)]
        users: usize,
        /// Messages per user.
        #[arg(long, default_value_t = 5)]
        messages: usize,
        /// Password scheme in the demo passwd-files.
        #[arg(long, value_enum, default_value_t = DemoScheme::Auto)]
        password_scheme: DemoScheme,
        /// Event-loop threads (0 = one per CPU).
        #[arg(long, default_value_t = 0)]
        cores: usize,
        /// Size of every message in bytes (0 = a mix of about 0.6, 3, 20 and 60 KB).
        #[arg(long, default_value_t = 0)]
        message_size: usize,
        /// Also write the same mail as Maildirs under DIR/<domain>/<user> (for comparisons with Dovecot).
        #[arg(long)]
        maildir: Option<PathBuf>,
        /// Print one line of JSON on stdout once ready (for scripts and tests).
        #[arg(long)]
        json: bool,
        /// Change a setting of the generated configuration, e.g.
        /// `--set runtime.sqpoll=true --set tls.record_size=4096` (repeatable).
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        set: Vec<String>,
    },
    /// Check a configuration file and name every problem in it.
    CheckConfig { config: PathBuf },
    /// Inspect this machine for what would limit the configured load (limits,
    /// sysctls, io_uring, kTLS, huge pages, CPU governor) and print the fix
    /// for each; exits non-zero when something would stop the load working.
    TuneCheck {
        /// Configuration to check against (default: the built-in defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Connections to plan for (default: limits.max_connections).
        #[arg(long)]
        connections: Option<usize>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Manage users (argon2id passwords in the tenant's passwd-file).
    User {
        #[command(subcommand)]
        action: UserCommand,
    },
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        action: TenantCommand,
    },
    /// Deliver one message from stdin to a user (like dovecot-lda). Exit
    /// codes follow sysexits.h: 67 unknown user, 68 unknown domain, 69
    /// refused, 64 bad address, 75 try again, 78 configuration error.
    Deliver {
        #[arg(long, short)]
        config: PathBuf,
        /// user@domain
        user: String,
    },
    /// Import a Maildir into a user's maildrop, keeping POP3 UIDLs.
    ImportMaildir {
        #[arg(long, short)]
        config: PathBuf,
        /// user@domain
        user: String,
        /// The Maildir (with cur/ and new/).
        maildir: PathBuf,
        /// Dovecot's pop3_uidl_format, used with the Maildir's dovecot-uidlist.
        #[arg(long, default_value = "%08Xu%08Xv")]
        uidl_format: String,
        /// A file of "filename uidl" lines instead of dovecot-uidlist.
        #[arg(long)]
        uidl_map: Option<PathBuf>,
        /// Ignore dovecot-uidlist: every message gets a UIDL new to clients (its Maildir unique name), so they download everything again.
        #[arg(long)]
        new_uidls: bool,
    },
    /// Per tenant: users, messages, bytes and quota use.
    Stats {
        #[arg(long, short)]
        config: PathBuf,
        /// Only this tenant.
        domain: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; the password is read from the first line of stdin.
    Add {
        #[arg(long, short)]
        config: PathBuf,
        user: String,
    },
    /// Set a user's password (first line of stdin).
    Passwd {
        #[arg(long, short)]
        config: PathBuf,
        user: String,
    },
    /// Remove a user and their mail.
    Del {
        #[arg(long, short)]
        config: PathBuf,
        user: String,
        /// Keep the maildrop on disk.
        #[arg(long)]
        keep_mail: bool,
    },
    /// List users.
    List {
        #[arg(long, short)]
        config: PathBuf,
        /// Only this tenant.
        domain: Option<String>,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Add a tenant to the configuration file.
    Add {
        #[arg(long, short)]
        config: PathBuf,
        domain: String,
        #[arg(long)]
        certificate: PathBuf,
        #[arg(long)]
        private_key: PathBuf,
        /// Where its passwd-file goes (default: passwd/<domain> beside the config).
        #[arg(long)]
        passwd_file: Option<PathBuf>,
        /// More domains for the same tenant.
        #[arg(long = "alias")]
        aliases: Vec<String>,
    },
    /// List tenants.
    List {
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Sets up logging to stderr. Long-running commands (`serve`, `demo`) hand
/// their lines to a background writer that batches them
/// ([`pop3sd::log_writer`]): a core thread that logs a login must not wait
/// for journald or a full pipe, nor wake another thread for every line.
/// Nothing is dropped (loggers wait when 16 MiB are queued), and lines still
/// queued are written when the returned guard drops at exit (which waits at
/// most 2 s for a sink that does not read). Short commands write directly,
/// in order with their own output.
fn init_logging(format: &str, background: bool) -> Option<pop3sd::log_writer::FlushGuard> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("POP3SD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,rustls=error"));
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let batched = if background {
        match pop3sd::log_writer::BatchedLog::spawn(std::io::stderr()) {
            Ok(pair) => Some(pair),
            Err(e) => {
                eprintln!("pop3sd: cannot start the log writer thread ({e}); logging directly");
                None
            }
        }
    } else {
        None
    };
    // Text to a file, a pipe or journald: pop3sd's own line writer, the
    // default's layout at less cost (log_format.rs); a terminal keeps the
    // default's colours.
    let plain = format != "json" && !ansi;
    match batched {
        Some((writer, guard)) => {
            let builder = builder.with_writer(writer);
            if format == "json" {
                builder.json().init();
            } else if plain {
                builder.event_format(pop3sd::log_format::PlainLine).init();
            } else {
                builder.init();
            }
            Some(guard)
        }
        None => {
            let builder = builder.with_writer(std::io::stderr);
            if format == "json" {
                builder.json().init();
            } else if plain {
                builder.event_format(pop3sd::log_format::PlainLine).init();
            } else {
                builder.init();
            }
            None
        }
    }
}

fn take_signals() -> Result<signal_hook::iterator::Signals, String> {
    runtime::signals::register().map_err(|e| format!("cannot handle signals: {e}"))
}

fn serve(
    signals: signal_hook::iterator::Signals,
    shared: std::sync::Arc<runtime::Shared>,
) -> Result<runtime::Running, String> {
    runtime::signals::spawn(signals, shared.clone(), startup::reload)
        .map_err(|e| format!("cannot handle signals: {e}"))?;
    runtime::start(shared).map_err(|e| e.to_string())
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve { config } => {
            let signals = take_signals()?;
            let shared = startup::from_file(&config)?;
            serve(signals, shared)?.join();
            Ok(())
        }
        Command::Demo {
            dir,
            port,
            pop3_port,
            external_port,
            users,
            messages,
            password_scheme,
            cores,
            message_size,
            maildir,
            json,
            set,
        } => {
            let opts = DemoOptions {
                dir,
                port,
                pop3_port,
                external_port,
                users: users.max(1),
                messages,
                scheme: password_scheme,
                cores,
                message_size,
                maildir,
            };
            let (config, info) =
                demo::prepare(&opts).map_err(|e| format!("demo set-up failed: {e}"))?;
            let config = if set.is_empty() {
                config
            } else {
                let c = config
                    .with_overrides(&set)
                    .map_err(|e| format!("--set: {e}"))?;
                let problems = c.check();
                if !problems.is_empty() {
                    return Err(problems
                        .iter()
                        .map(|p| format!("--set: {p}"))
                        .collect::<Vec<_>>()
                        .join("\n"));
                }
                std::fs::write(&info.config, c.to_toml())
                    .map_err(|e| format!("{}: {e}", info.config.display()))?;
                c
            };
            // Taken after the (interruptible) preparation of the demo.
            let signals = take_signals()?;
            let shared = startup::build(config, Some(info.config.clone())).map_err(|p| {
                p.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            let running = serve(signals, shared)?;
            // SAFETY: mi_collect has no preconditions; it frees what this
            // thread's heap no longer uses (the generated mail and keys).
            unsafe { libmimalloc_sys::mi_collect(true) };
            if json {
                let line = serde_json::to_string(&info).map_err(|e| e.to_string())?;
                println!("{line}");
            } else {
                println!("{}", demo::banner(&info));
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
            running.join();
            Ok(())
        }
        Command::CheckConfig { config } => {
            let cfg = Config::parse_file(&config).map_err(|e| e.to_string())?;
            for w in startup::check_warnings(&cfg) {
                eprintln!("pop3sd: warning: {w}");
            }
            let problems = startup::check(&cfg);
            if problems.is_empty() {
                println!(
                    "{}: OK ({} listener(s), {} tenant(s))",
                    config.display(),
                    cfg.listeners.len(),
                    cfg.tenants.len()
                );
                Ok(())
            } else {
                Err(format!(
                    "{} has {} problem(s):\n{}",
                    config.display(),
                    problems.len(),
                    problems
                        .iter()
                        .map(|p| format!("  - {p}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ))
            }
        }
        Command::TuneCheck {
            config,
            connections,
            json,
        } => {
            use pop3sd::tune;
            let target = match config {
                Some(path) => {
                    let cfg = Config::parse_file(&path).map_err(|e| e.to_string())?;
                    tune::Target::from_config(&cfg, connections)
                }
                None => tune::Target::defaults(connections),
            };
            let sys = tune::LiveSystem {
                runtime: &target.runtime,
            };
            let findings = tune::check(&target, &sys);
            if json {
                let text = serde_json::to_string_pretty(&findings).map_err(|e| e.to_string())?;
                println!("{text}");
            } else {
                print!("{}", tune::render(&target, &findings));
            }
            let blockers = findings
                .iter()
                .filter(|f| f.level == tune::Level::Blocker)
                .count();
            if blockers > 0 {
                return Err(format!(
                    "{blockers} blocker(s): the configured load cannot work on this machine until they are fixed"
                ));
            }
            Ok(())
        }
        // Operator commands are dispatched by `main` (they have their own exit codes).
        Command::User { .. }
        | Command::Tenant { .. }
        | Command::Deliver { .. }
        | Command::ImportMaildir { .. }
        | Command::Stats { .. } => Err("operator commands are handled before `run`".into()),
    }
}

/// Runs an operator command; its errors carry their own exit codes.
fn admin(command: Command) -> Result<Vec<String>, admin::AdminError> {
    use pop3sd::admin as a;
    Ok(match command {
        Command::User { action } => match action {
            UserCommand::Add { config, user } => {
                vec![a::user_add(&config, &user, &a::read_password_stdin()?)?]
            }
            UserCommand::Passwd { config, user } => {
                vec![a::user_passwd(&config, &user, &a::read_password_stdin()?)?]
            }
            UserCommand::Del {
                config,
                user,
                keep_mail,
            } => vec![a::user_del(&config, &user, keep_mail)?],
            UserCommand::List { config, domain } => a::user_list(&config, domain.as_deref())?,
        },
        Command::Tenant { action } => match action {
            TenantCommand::Add {
                config,
                domain,
                certificate,
                private_key,
                passwd_file,
                aliases,
            } => vec![a::tenant_add(
                &config,
                &domain,
                &certificate,
                &private_key,
                passwd_file.as_deref(),
                &aliases,
            )?],
            TenantCommand::List { config } => a::tenant_list(&config)?,
        },
        Command::Deliver { config, user } => {
            vec![a::deliver(&config, &user, &mut std::io::stdin().lock())?]
        }
        Command::ImportMaildir {
            config,
            user,
            maildir,
            uidl_format,
            uidl_map,
            new_uidls,
        } => {
            let source = match (uidl_map, new_uidls) {
                (Some(m), _) => pop3sd_storage::maildir::UidlSource::MapFile(m),
                (None, true) => pop3sd_storage::maildir::UidlSource::Native,
                (None, false) => pop3sd_storage::maildir::UidlSource::Dovecot {
                    format: uidl_format,
                },
            };
            vec![a::import(&config, &user, &maildir, &source)?]
        }
        Command::Stats {
            config,
            domain,
            json,
        } => {
            let s = a::stats(&config, domain.as_deref())?;
            if json {
                vec![serde_json::to_string_pretty(&s).unwrap_or_default()]
            } else {
                let mut out = vec![format!(
                    "{:<30} {:>8} {:>10} {:>14} {:>22}",
                    "tenant", "users", "messages", "bytes", "tenant quota (msg/B)"
                )];
                for t in s {
                    out.push(format!(
                        "{:<30} {:>8} {:>10} {:>14} {:>22}",
                        t.domain,
                        t.users,
                        t.messages,
                        t.bytes,
                        // 0 is "no quota" in the configuration.
                        match (t.quota_messages, t.quota_bytes) {
                            (0, 0) => "unlimited".to_string(),
                            (m, b) => format!(
                                "{}/{}",
                                if m == 0 {
                                    "-".to_string()
                                } else {
                                    m.to_string()
                                },
                                if b == 0 {
                                    "-".to_string()
                                } else {
                                    b.to_string()
                                }
                            ),
                        }
                    ));
                    for u in t.users_near_quota {
                        out.push(format!("  near quota: {u}"));
                    }
                }
                out
            }
        }
        _ => Vec::new(),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let background = matches!(cli.command, Command::Serve { .. } | Command::Demo { .. });
    let log_writer = init_logging(&cli.log_format, background);
    if matches!(
        cli.command,
        Command::User { .. }
            | Command::Tenant { .. }
            | Command::Deliver { .. }
            | Command::ImportMaildir { .. }
            | Command::Stats { .. }
    ) {
        return match admin(cli.command) {
            Ok(lines) => {
                for l in lines {
                    println!("{l}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pop3sd: {e}");
                ExitCode::from(e.exit_code())
            }
        };
    }
    let result = run(cli);
    // Queued log lines first, then the final error, in that order.
    drop(log_writer);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pop3sd: {e}");
            ExitCode::FAILURE
        }
    }
}
