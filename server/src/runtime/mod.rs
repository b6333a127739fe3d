//! Thread-per-core serving: one monoio io_uring runtime per core, each with
//! its own SO_REUSEPORT listener sockets, so the kernel spreads connections
//! and no lock is shared across cores on a connection's path.
//!
//! What the cores share is read-only or rarely touched: the configuration,
//! the tenant directory, the TLS configs (whose ticket keys and session cache
//! are shared on purpose), the storage root, and the blocking pool.

pub mod buffers;
pub mod conn;
pub mod metrics;
pub mod pool;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use monoio::net::{ListenerOpts, TcpListener};
use pop3sd_storage::Store;

use crate::auth::{Authenticator, VerifyCache};
use crate::config::{Config, Driver, ListenerKind};
use crate::engine::Limits;
use crate::tls::TlsContext;
use buffers::BufferPool;
use conn::{Conn, ListenerInfo};
use metrics::CoreMetrics;
pub use pool::BlockingPool;

/// State shared by every core.
pub struct Shared {
    pub config: Config,
    pub store: Arc<Store>,
    pub auth: Authenticator,
    pub tls: TlsContext,
    pub pool: BlockingPool,
    pub limits: Limits,
    pub hostname: String,
    pub handshake_timeout: Duration,
    pub write_timeout: Duration,
    pub stop: AtomicBool,
}

/// One core's private state (never crosses threads).
pub(crate) struct Core {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub auth_cache: RefCell<VerifyCache>,
    pub buffers: BufferPool,
    pub metrics: CoreMetrics,
    next_session: Cell<u64>,
}

impl Core {
    /// A process-unique session id: core number in the top bits.
    pub fn next_session_id(&self) -> u64 {
        let n = self.next_session.get() + 1;
        self.next_session.set(n);
        ((self.id as u64) << 48) | n
    }
}

/// Why serving could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("io_uring is not available on this system ({0}); pop3sd needs it (kernel 5.11+, io_uring not disabled by sysctl kernel.io_uring_disabled or seccomp). To run on epoll instead, set `driver = \"legacy\"` under [runtime].")]
    NoIoUring(String),
    #[error("core {core}: cannot bind {addr}: {source}")]
    Bind {
        core: usize,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start core thread: {0}")]
    Thread(std::io::Error),
    #[error("core {0} failed to start")]
    CoreFailed(usize),
}

/// Number of event-loop threads a config asks for.
pub fn core_count(config: &Config) -> usize {
    match config.runtime.cores {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Checks that io_uring can really be used, so that start-up fails with a
/// clear message instead of monoio silently choosing epoll.
pub fn check_io_uring(entries: u32) -> Result<(), StartError> {
    if !monoio::utils::detect_uring() {
        return Err(StartError::NoIoUring(
            "the kernel lacks the io_uring operations monoio needs, or MONOIO_FORCE_LEGACY_DRIVER is set".into(),
        ));
    }
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(entries)
        .build()
        .map(|_| ())
        .map_err(|e| StartError::NoIoUring(e.to_string()))
}

/// Handles to running cores.
pub struct Running {
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Bound addresses, in listener order (resolved ports for ":0").
    pub addresses: Vec<SocketAddr>,
}

impl Running {
    /// Waits for every core to finish (they run until the process stops).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Binds one listener socket of one core.
fn bind(addr: SocketAddr, backlog: i32) -> std::io::Result<TcpListener> {
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(backlog);
    TcpListener::bind_with_config(addr, &opts)
}

/// Raises the open-file limit to its hard maximum: every connection needs a
/// socket and a logged-in one a lock file too. Returns the limit in force.
pub fn raise_nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        // With CAP_SYS_RESOURCE (root before dropping privileges) the hard
        // limit itself can go up to fs.nr_open; otherwise the soft limit
        // goes up to the hard one.
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
            .unwrap_or(r.rlim_max);
        for max in [nr_open.max(r.rlim_max), r.rlim_max] {
            let wanted = libc::rlimit {
                rlim_cur: max,
                rlim_max: max,
            };
            if r.rlim_cur < max && libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                r = wanted;
                break;
            }
        }
    }
    r.rlim_cur
}

/// Starts the cores. Each binds every listener (ports of 0 are resolved by
/// core 0 first, then shared) and serves until the process ends.
pub fn start(shared: Arc<Shared>) -> Result<Running, StartError> {
    let cfg = &shared.config;
    if cfg.runtime.driver == Driver::IoUring {
        check_io_uring(cfg.runtime.ring_entries)?;
    } else {
        tracing::warn!(
            "runtime.driver = \"legacy\": serving with epoll, not io_uring, as configured"
        );
    }
    let nofile = raise_nofile_limit();
    tracing::info!(
        nofile,
        "open file limit (each logged-in connection uses two)"
    );
    let cores = core_count(cfg);
    let mut addresses: Vec<SocketAddr> = cfg.listeners.iter().map(|l| l.address).collect();
    let mut threads = Vec::new();
    for core_id in 0..cores {
        let (tx, rx) = std::sync::mpsc::channel::<Result<Vec<SocketAddr>, StartError>>();
        let shared = shared.clone();
        let addrs = addresses.clone();
        let t = std::thread::Builder::new()
            .name(format!("pop3sd-core-{core_id}"))
            .spawn(move || core_main(core_id, shared, addrs, tx))
            .map_err(StartError::Thread)?;
        match rx.recv() {
            Ok(Ok(bound)) => addresses = bound,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(StartError::CoreFailed(core_id)),
        }
        threads.push(t);
    }
    tracing::info!(
        cores,
        listeners = ?addresses,
        driver = ?shared.config.runtime.driver,
        "serving"
    );
    Ok(Running { threads, addresses })
}

fn core_main(
    core_id: usize,
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    ready: std::sync::mpsc::Sender<Result<Vec<SocketAddr>, StartError>>,
) {
    let cfg = &shared.config.runtime;
    if cfg.pin_cores {
        if let Err(e) = monoio::utils::bind_to_cpu_set([core_id]) {
            tracing::warn!(core = core_id, error = %e, "cannot pin thread to its CPU");
        }
    }
    let entries = cfg.ring_entries;
    let body = serve_core(core_id, shared.clone(), addrs, ready.clone());
    let result = match cfg.driver {
        Driver::IoUring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(entries)
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(body)),
        Driver::Legacy => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(body)),
    };
    if let Err(e) = result {
        let _ = ready.send(Err(StartError::NoIoUring(e.to_string())));
    }
}

async fn serve_core(
    core_id: usize,
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    ready: std::sync::mpsc::Sender<Result<Vec<SocketAddr>, StartError>>,
) {
    let cfg = &shared.config;
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        match bind(*addr, cfg.runtime.backlog) {
            Ok(l) => {
                let local = l.local_addr().unwrap_or(*addr);
                bound.push(local);
                let lc = &cfg.listeners[i];
                let info = Rc::new(ListenerInfo {
                    kind: lc.kind,
                    tls_config: shared.tls.for_listener(lc.client_certificates),
                    local,
                });
                listeners.push((l, info));
            }
            Err(source) => {
                let _ = ready.send(Err(StartError::Bind {
                    core: core_id,
                    addr: *addr,
                    source,
                }));
                return;
            }
        }
    }
    let core = Rc::new(Core {
        id: core_id,
        auth_cache: RefCell::new(VerifyCache::new(
            cfg.limits.auth_cache_size,
            Duration::from_secs(cfg.limits.auth_cache_ttl_secs),
        )),
        buffers: BufferPool::new(256),
        metrics: CoreMetrics::default(),
        next_session: Cell::new(0),
        shared: shared.clone(),
    });
    if ready.send(Ok(bound)).is_err() {
        return;
    }
    let mut tasks = Vec::new();
    for (listener, info) in listeners {
        let core = core.clone();
        tasks.push(monoio::spawn(accept_loop(core, listener, info)));
    }
    for t in tasks {
        t.await;
    }
}

async fn accept_loop(core: Rc<Core>, listener: TcpListener, info: Rc<ListenerInfo>) {
    loop {
        if core.shared.stop.load(Ordering::Relaxed) {
            return;
        }
        match listener.accept().await {
            Ok((stream, peer)) => {
                let core = core.clone();
                let info = info.clone();
                monoio::spawn(async move {
                    core.metrics
                        .connection_opened(info.kind == ListenerKind::Pop3s);
                    let mut conn = Conn::new(core.clone(), stream, peer, info);
                    let id = conn.id();
                    let result = {
                        use futures_util::FutureExt;
                        std::panic::AssertUnwindSafe(conn.run())
                            .catch_unwind()
                            .await
                    };
                    match result {
                        Ok(r) => conn.log_end(&r),
                        Err(_) => {
                            tracing::error!(session = id, client = %peer, "connection task panicked; closed")
                        }
                    }
                    core.metrics.connection_closed();
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(core = core.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
