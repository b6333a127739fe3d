//! The `pop3sd` binary: serve, demo, and the operator commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pop3sd::config::Config;
use pop3sd::demo::{self, DemoOptions, DemoScheme};
use pop3sd::{runtime, startup};

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
    },
    /// Check a configuration file and name every problem in it.
    CheckConfig { config: PathBuf },
}

fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("POP3SD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,rustls=error"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn serve(shared: std::sync::Arc<runtime::Shared>) -> Result<runtime::Running, String> {
    runtime::signals::spawn(shared.clone(), startup::reload)
        .map_err(|e| format!("cannot handle signals: {e}"))?;
    runtime::start(shared).map_err(|e| e.to_string())
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve { config } => {
            let shared = startup::from_file(&config)?;
            serve(shared)?.join();
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
            let shared = startup::build(config, Some(info.config.clone())).map_err(|p| {
                p.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            let running = serve(shared)?;
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
            for w in cfg.warnings() {
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
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pop3sd: {e}");
            ExitCode::FAILURE
        }
    }
}
