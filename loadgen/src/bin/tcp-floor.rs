//! `tcp-floor`: the server side of `pop3-loadgen -s tcp-floor`. It plays a
//! fixed exchange of zeros with each client, with neither TLS nor POP3, on
//! one io_uring runtime per thread with its own SO_REUSEPORT listener (as
//! pop3sd does), so that its CPU per connection is what the kernel and the
//! runtime alone cost a server for that exchange: this machine's floor
//! (see `pop3_loadgen::floor`).
//!
//! Prints one JSON line (`{"addr": ..., "threads": ..., "script": ...}`)
//! once every thread listens, then serves until killed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use clap::Parser;
use monoio::net::{ListenerOpts, TcpListener};
use pop3_loadgen::floor::{self, Script};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "tcp-floor",
    version,
    about = "Plain-TCP server playing a fixed exchange, to measure this machine's floor under a POP3S server's CPU per connection"
)]
struct Args {
    /// The exchange, as CLIENT:SERVER byte counts per turn, e.g.
    /// "234:770,64:182,28:64"; the load generator is given the same.
    #[arg(long)]
    script: Script,
    /// Address to listen on (loopback by default; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Threads (one io_uring runtime and listener each); 0 = one per CPU.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Listen backlog per listener (pop3sd's default).
    #[arg(long, default_value_t = 1024)]
    backlog: i32,
}

/// Connection errors are printed up to this many times, then only counted.
const ERRORS_SHOWN: u64 = 10;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let script = Arc::new(args.script.clone());
    let errors = Arc::new(AtomicU64::new(0));
    // Thread 0 binds first, so that a port of 0 is resolved once and the
    // others bind the same one.
    let mut addr = args.listen;
    for t in 0..threads {
        let (tx, rx) = mpsc::channel();
        let (script, errors, backlog) = (script.clone(), errors.clone(), args.backlog);
        let spawned = std::thread::Builder::new()
            .name(format!("floor-{t}"))
            .spawn(move || serve_thread(addr, backlog, script, errors, tx));
        if let Err(e) = spawned {
            eprintln!("tcp-floor: thread {t}: {e}");
            return std::process::ExitCode::FAILURE;
        }
        match rx.recv() {
            Ok(Ok(bound)) => addr = bound,
            Ok(Err(e)) => {
                eprintln!("tcp-floor: thread {t}: {e}");
                return std::process::ExitCode::FAILURE;
            }
            Err(_) => {
                eprintln!("tcp-floor: thread {t} ended before listening");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let line = serde_json::json!({
        "addr": addr.to_string(),
        "threads": threads,
        "script": script.to_string(),
    });
    println!("{line}");
    loop {
        std::thread::park();
    }
}

fn serve_thread(
    addr: SocketAddr,
    backlog: i32,
    script: Arc<Script>,
    errors: Arc<AtomicU64>,
    ready: mpsc::Sender<Result<SocketAddr, String>>,
) {
    let mut rt = match pop3_loadgen::ring::runtime(4096) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("io_uring unavailable: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let opts = ListenerOpts::new()
            .reuse_port(true)
            .reuse_addr(true)
            .backlog(backlog);
        let listener = match TcpListener::bind_with_config(addr, &opts)
            .and_then(|l| l.local_addr().map(|a| (l, a)))
        {
            Ok((l, a)) => {
                let _ = ready.send(Ok(a));
                l
            }
            Err(e) => {
                let _ = ready.send(Err(format!("listen on {addr}: {e}")));
                return;
            }
        };
        loop {
            let conn = match listener.accept().await {
                Ok((conn, _)) => conn,
                Err(e) => {
                    // EMFILE and friends: say so and go on.
                    report(&errors, &format!("accept: {e}"));
                    monoio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let (script, errors) = (script.clone(), errors.clone());
            monoio::spawn(async move {
                if let Err(e) = floor::serve(conn, &script).await {
                    report(&errors, &e.to_string());
                }
            });
        }
    });
}

fn report(errors: &AtomicU64, what: &str) {
    let n = errors.fetch_add(1, Ordering::Relaxed) + 1;
    if n <= ERRORS_SHOWN {
        eprintln!("tcp-floor: {what}");
    }
    if n == ERRORS_SHOWN {
        eprintln!("tcp-floor: further errors are not shown");
    }
}
